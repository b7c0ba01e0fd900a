//! Per-request policy, applied by the gateway's `request_filter` in this fixed order:
//!
//! 1. [`framing`]: requests that are ambiguous to frame, or too large in head, are refused
//!    (400/431) before routing;
//! 2. [`normalize`]: the one canonical path, host and header set that everything after
//!    sees, or 400;
//! 3. routing (in `route.rs`), then encoded slashes refused unless the route accepts them;
//! 4. [`ip`]: client IP (trusting `X-Forwarded-For` only from configured proxies), then the
//!    global and per-route CIDR allow/deny lists (403);
//! 5. [`cors`]: preflights answered at the gateway;
//! 6. body size limit by `Content-Length` (413; chunked bodies are counted while streaming);
//! 7. [`auth`]: authentication ([`jwt`], [`api_key`]) and role authorization (401/403);
//! 8. [`rate_limit`]: every window of the route and of the consumer (429).
//!
//! Each step returns a decision the hook acts on and knows nothing about which hook called it.

pub mod api_key;
pub mod auth;
pub mod cors;
pub mod framing;
pub mod ip;
pub mod jwt;
pub mod normalize;
pub mod rate_limit;

use http::HeaderName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The policy of one route, compiled.
#[derive(Default)]
pub struct RoutePolicy {
    pub auth: auth::RouteAuth,
    pub ip: ip::IpRules,
    pub cors: Option<cors::CorsPolicy>,
    pub rate_limits: Option<rate_limit::RateLimits>,
    /// Largest request body.
    pub max_body: u64,
}

/// Policy shared by every route, compiled from `[limits]`, `[auth]` and `[consumers]`.
pub struct GatewayPolicy {
    pub head: framing::HeadLimits,
    pub body_timeout: Duration,
    pub trusted_proxies: ip::TrustedProxies,
    pub ip: ip::IpRules,
    pub api_keys: api_key::ApiKeys,
    /// Client-sent identity headers removed from every request.
    pub strip_headers: Vec<HeaderName>,
    pub rate_store: Arc<rate_limit::RateLimitStore>,
    pub jwt_providers: Vec<Arc<jwt::JwtProvider>>,
    /// Path and header normalization (the listener may override `underscores`).
    pub normalize: normalize::Options,
    /// Listeners whose `underscore_headers` differs from the global one.
    pub listener_underscores: Vec<(SocketAddr, normalize::Underscores)>,
    /// Idle time allowed between two HTTP/1 requests on one connection, in seconds.
    pub keepalive_secs: u64,
    /// Informational responses relayed per request.
    pub max_informational: usize,
}

impl GatewayPolicy {
    /// The normalization options for a request that arrived on `local` (the listener's
    /// address as the socket reports it).
    pub fn normalize_for(&self, local: Option<SocketAddr>) -> normalize::Options {
        let mut opts = self.normalize;
        if let Some(local) = local {
            let listener = self.listener_underscores.iter().find(|(addr, _)| {
                addr.port() == local.port()
                    && (addr.ip() == local.ip() || addr.ip().is_unspecified())
            });
            if let Some((_, u)) = listener {
                opts.underscores = *u;
            }
        }
        opts
    }
}
