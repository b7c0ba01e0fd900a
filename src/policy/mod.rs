//! Per-request policy, applied by the gateway's `request_filter` in this fixed order:
//!
//! 1. [`framing`]: requests that are ambiguous to frame, or too large in head, are refused
//!    (400/431) before routing;
//! 2. routing (in `route.rs`);
//! 3. [`ip`]: client IP (trusting `X-Forwarded-For` only from configured proxies), then the
//!    global and per-route CIDR allow/deny lists (403);
//! 4. [`cors`]: preflights answered at the gateway;
//! 5. body size limit by `Content-Length` (413; chunked bodies are counted while streaming);
//! 6. [`auth`]: authentication ([`jwt`], [`api_key`]) and role authorization (401/403);
//! 7. [`rate_limit`]: every window of the route and of the consumer (429).
//!
//! Each step returns a decision the hook acts on and knows nothing about which hook called it.

pub mod api_key;
pub mod auth;
pub mod cors;
pub mod framing;
pub mod ip;
pub mod jwt;
pub mod rate_limit;

use http::HeaderName;
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
}
