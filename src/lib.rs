//! Tollgate: an edge API gateway on Cloudflare's Pingora.
//!
//! A small facade over the modules: [`config`] reads `tollgate.toml`; [`load`] builds it
//! into a runtime (or reports every problem in it) with the one assembler; [`explain`] says
//! what that runtime would do with one request; [`build_server`] (in `serve`) turns it into
//! a Pingora server with the proxy, admin, demo, reload and background services
//! registered. The binary is a command line over these.

// Crate-private but for the configuration model; what `main` needs is re-exported below,
// what the benches and integration tests reach into is in `internals`.
pub(crate) mod admin;
pub(crate) mod aggregate;
pub(crate) mod assemble;
pub(crate) mod cache;
pub(crate) mod compress;
pub mod config;
pub(crate) mod connection;
pub(crate) mod demo;
pub(crate) mod describe;
pub(crate) mod error;
pub(crate) mod forward;
pub(crate) mod gateway;
pub(crate) mod grpc;
pub(crate) mod grpc_web;
pub(crate) mod http3;
pub(crate) mod names;
pub(crate) mod observe;
pub(crate) mod policy;
pub(crate) mod proxy;
pub(crate) mod proxy_protocol;
pub(crate) mod redis_conn;
pub(crate) mod reload;
pub(crate) mod route;
pub(crate) mod serve;
pub(crate) mod subrequest;
pub(crate) mod tls;
pub(crate) mod transcode;
pub(crate) mod transform;
pub(crate) mod upstream;

pub use assemble::{explain, load, openapi, routes, Assembled};
pub use gateway::explain::{Explanation, Query as ExplainQuery};
pub use observe::log::{init as init_logging, set_format as set_log_format};
pub use serve::{build_server, check_listen_addresses, Prepared, StartMode};

/// What the benches and integration tests reach into. Not an API: nothing here is
/// documented or kept stable.
#[doc(hidden)]
pub mod internals {
    pub use crate::cache::key as cache_key;
    pub use crate::forward::new_request_id;
    pub use crate::observe::access_log::{Entry, Format, Time};
    pub use crate::policy::jwt::{JwtError, JwtProvider, VerifiedToken, MAX_TOKEN_BYTES};
    pub use crate::policy::normalize::{canonical_host, canonical_path};
    pub use crate::route::{HostPattern, PathMatch, Route, RouteTable};
    pub use crate::transform::HeaderTransform;
}
