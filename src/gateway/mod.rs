//! One configuration generation ([`Gateway`]) and what each `ProxyHttp` hook does on it,
//! split by topic. `crate::proxy` is the one `ProxyHttp` implementation: each of its hooks
//! pins the request to the generation it began on and calls one function here.
//!
//! - [`context`]: per-request state ([`Ctx`]) and the first hook (client, id, trace);
//! - [`request`]: the ordered policy chain, and the request body's limits and rewriters;
//! - [`upstream`]: target choice, what the upstream is sent, bounds on what it answers;
//! - [`retry`]: every retry decision;
//! - [`respond`]: the response head and body, the gateway's own answers, proxy failures;
//! - [`cache`]: the response cache's hooks;
//! - [`log`]: metrics, the access log and the request span at the end;
//! - [`transcoded`] and [`explain`]: JSON-to-gRPC routes, and `tollgate explain`.

mod cache;
mod context;
pub(crate) mod explain;
mod log;
mod request;
mod respond;
mod retry;
mod transcoded;
mod upstream;

pub(crate) use context::Ctx;

use crate::cache::ResponseCache;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::Metrics;
use crate::policy::GatewayPolicy;
use crate::route::RouteTable;
use crate::upstream::UpstreamGroup;
use async_trait::async_trait;
use pingora::connectors::http::Connector;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// One generation of the gateway: everything a request reads, built from one configuration
/// file. A reload builds the next one beside it; every request runs start to end on the
/// generation it began with.
pub(crate) struct Gateway {
    pub(crate) routes: RouteTable,
    pub(crate) upstreams: Vec<Arc<UpstreamGroup>>,
    pub(crate) groups: crate::upstream::Groups,
    pub(crate) providers: crate::policy::jwt::Providers,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) access_log: Option<AccessLog>,
    /// The fields and redactions of its lines.
    pub(crate) access_format: crate::observe::access_log::Format,
    /// W3C trace context and spans, with `[tracing]`.
    pub(crate) tracer: Option<Arc<crate::observe::trace::Tracer>>,
    pub(crate) policy: GatewayPolicy,
    /// Pooled upstream connections for aggregation parts.
    pub(crate) connector: Arc<Connector>,
    /// Set once the server starts shutting down or handing over to a new instance: responses
    /// then say `Connection: close`, so keep-alive clients move to the new instance between
    /// requests instead of having an idle connection closed under them.
    pub(crate) draining: Arc<AtomicBool>,
    /// The response cache, when some route caches.
    pub(crate) cache: Option<Arc<ResponseCache>>,
    pub(crate) generation: Generation,
    /// Each listener's certificates (TLS listeners only), swapped in by a reload.
    pub(crate) listener_certs: Vec<Option<Arc<crate::tls::CertStore>>>,
    pub(crate) connection_limits: crate::connection::ConnectionLimits,
    /// The routing table and the OpenAPI document (`GET /routes`, `GET /openapi.json`).
    pub(crate) described: crate::describe::Described,
    /// `Alt-Svc` by listener address, for TLS listeners with HTTP/3 (`[listeners.quic]`).
    pub(crate) alt_svc: Vec<(std::net::SocketAddr, http::HeaderValue)>,
    /// The header carrying the request id (`[server] request_id_header`).
    pub(crate) request_id_header: &'static pingora::http::SpelledName,
}

/// Which configuration a generation was built from, and when.
#[derive(Debug, Clone)]
pub(crate) struct Generation {
    /// 1 for the configuration the process started with, one more per successful reload.
    pub number: u64,
    /// SHA-256 of the file's text, hex.
    pub sha256: String,
    pub loaded_at: std::time::SystemTime,
}
/// Flips [`Gateway::draining`] when the server's shutdown begins (a background service).
pub(crate) struct DrainWatch(pub Arc<AtomicBool>);

#[async_trait]
impl pingora::services::background::BackgroundService for DrainWatch {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        self.0.store(true, Ordering::Release);
    }
}
