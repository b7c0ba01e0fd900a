//! The integration tests: one test crate, with one module per capability (`proxy`,
//! `reload`, `jwt`, ...) and the harness they share in `common`. One crate makes one test
//! binary, which links the gateway's dependencies (Pingora and the rest) once, where a crate
//! per file made one binary per file, each linking all of them.
//!
//! Every module's tests run as threads of this one process: nothing here may assume a
//! process of its own (the environment, the working directory, a port or a file taken
//! for the whole process).
//!
//! Run one module, or one test by its full path:
//!
//! ```text
//! cargo test --test it proxy::
//! cargo test --test it grpc::grpc_interop_cases_give_the_same_result_through_the_gateway -- --exact
//! ```

// Test code: helpers may panic on a broken fixture, and `pub` items of its modules are for
// each other, not an API.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    unreachable_pub,
    missing_docs
)]

mod common;

mod access;
mod admin;
mod aggregate;
mod balancing;
mod cache;
mod cache_rfc;
mod compression;
mod config_bounds;
mod config_check;
mod credentials;
mod discovery;
mod dns;
mod docs;
mod drain;
mod etcd;
mod explain;
mod fleet;
mod forward_auth;
mod framing;
mod grpc;
mod hardening;
mod http3;
mod jwt;
mod keepalive;
mod loadtest;
mod monitoring;
mod observability;
mod openapi;
mod platform;
mod proxy;
mod proxy_protocol;
mod rate_limit;
mod reload;
mod request_id;
mod resilience;
mod routing;
mod shadow;
mod shared_cache;
mod srv;
mod sse;
mod systemd_unit;
mod tls;
mod tracing;
mod transcode;
mod transform;
mod upgrade;
mod validation;
mod websocket;
