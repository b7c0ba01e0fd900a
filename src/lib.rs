//! Tollgate: an edge API gateway on Cloudflare's Pingora.
//!
//! A small facade over the modules: [`config`] reads `tollgate.toml`; [`load`] builds it
//! into a runtime (or reports every problem in it) with the one assembler; [`explain`] says
//! what that runtime would do with one request; [`build_server`] (in `serve`) turns it into
//! a Pingora server with the proxy, admin, demo, reload and background services
//! registered. The binary is a command line over these.

// Crate-private unless a bench, a test or `main` needs the module.
pub(crate) mod admin;
pub(crate) mod aggregate;
pub(crate) mod assemble;
pub mod cache;
pub(crate) mod compress;
pub mod config;
pub(crate) mod connection;
pub(crate) mod demo;
pub(crate) mod error;
pub mod forward;
pub(crate) mod gateway;
pub(crate) mod grpc;
pub(crate) mod grpc_web;
pub(crate) mod names;
pub mod observe;
pub mod policy;
pub(crate) mod proxy;
pub(crate) mod proxy_protocol;
pub(crate) mod redis_conn;
pub(crate) mod reload;
pub mod route;
pub(crate) mod serve;
pub(crate) mod subrequest;
pub(crate) mod tls;
pub(crate) mod transcode;
pub mod transform;
pub(crate) mod upstream;

pub use assemble::{explain, load, Assembled};
pub use gateway::explain::{Explanation, Query as ExplainQuery};
pub use serve::{build_server, check_listen_addresses, Prepared, StartMode};
