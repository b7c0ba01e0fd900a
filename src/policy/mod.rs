//! Per-request policy, applied by the gateway's `request_filter` in this fixed order:
//!
//! 1. [`framing`]: requests that are ambiguous to frame, or too large in head, are refused
//!    (400/431) before routing;
//! 2. [`normalize`]: the one canonical path, host and header set that everything after
//!    sees, or 400;
//! 3. [`ip`]: the global CIDR allow/deny lists (403) on the client IP (`X-Forwarded-For`
//!    trusted only from configured proxies), the cheapest refusal, before any routing work;
//! 4. routing (in `route.rs`), then encoded slashes refused unless the route accepts them;
//! 5. [`ip`] again: the route's allow/deny lists (403);
//! 6. [`cors`]: preflights answered at the gateway;
//! 7. body size limit by `Content-Length` (413; chunked bodies are counted while streaming);
//! 8. [`auth`]: authentication ([`jwt`], [`api_key`], forward auth and introspection in
//!    [`external`]) and role authorization (401/403);
//! 9. [`rate_limit`]: every window of the route and of the consumer (429).
//!
//! Each step returns a decision the hook acts on and knows nothing about which hook called it.

pub mod api_key;
pub mod auth;
pub mod cors;
pub mod external;
pub(crate) mod fleet;
pub mod framing;
pub mod ip;
pub mod jwt;
pub mod normalize;
pub mod rate_limit;

use crate::config::file::{
    AuthSection, ConsumerSection, CorsSection, HumanSize, LimitsSection, RateLimitSection,
};
use crate::config::types::AuthRef;
use crate::config::{bounds, Problem};
use http::HeaderName;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What a route's policy is built against.
/// The generation's token verifiers and auth services.
pub(crate) struct AuthServices<'a> {
    pub jwt: &'a jwt::Providers,
    pub external: Vec<Arc<external::ExternalAuth>>,
}

pub(crate) struct PolicyContext<'a> {
    pub jwt: &'a jwt::Providers,
    pub forward: &'a external::Services,
    pub introspection: &'a external::Services,
    /// Whether any consumer (API key) is configured.
    pub has_consumers: bool,
    pub rate_store: &'a Arc<rate_limit::RateLimitStore>,
    pub default_max_body: u64,
}

/// The policy keys of one `[[routes]]` entry.
pub(crate) struct RoutePolicySection<'a> {
    pub name: &'a str,
    pub auth: &'a [AuthRef],
    pub roles: &'a [String],
    pub rate_limits: &'a [RateLimitSection],
    pub ip_allow: &'a [String],
    pub ip_deny: &'a [String],
    pub cors: Option<&'a CorsSection>,
    pub max_body_size: Option<HumanSize>,
}

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

impl RoutePolicy {
    /// A route's policy keys, problems under `at` (`routes[N]`).
    pub(crate) fn from_config(
        at: &str,
        s: RoutePolicySection<'_>,
        cx: &PolicyContext<'_>,
        problems: &mut Vec<Problem>,
    ) -> Option<RoutePolicy> {
        let RoutePolicySection {
            name,
            auth,
            roles,
            rate_limits,
            ip_allow,
            ip_deny,
            cors,
            max_body_size,
        } = s;
        let before = problems.len();
        let mut methods = Vec::with_capacity(auth.len());
        for (i, m) in auth.iter().enumerate() {
            let path = format!("{at}.auth[{i}]");
            match m {
                AuthRef::ApiKey => {
                    if !cx.has_consumers {
                        problems.push(Problem::new(
                            path,
                            "api_key needs at least one [consumers.NAME] with keys",
                        ));
                    }
                    methods.push(auth::AuthMethod::ApiKey);
                }
                AuthRef::Jwt(provider) => {
                    if let Some(p) = cx.jwt.get(&path, provider, problems) {
                        methods.push(auth::AuthMethod::Jwt(p));
                    }
                }
                AuthRef::Forward(name) => {
                    if let Some(p) = cx.forward.get(&path, name, problems) {
                        methods.push(auth::AuthMethod::External(p));
                    }
                }
                AuthRef::Introspection(name) => {
                    if let Some(p) = cx.introspection.get(&path, name, problems) {
                        methods.push(auth::AuthMethod::External(p));
                    }
                }
            }
        }
        if !roles.is_empty() && auth.is_empty() {
            problems.push(Problem::new(
                format!("{at}.roles"),
                "roles need auth methods on the route",
            ));
        }
        let limits = rate_limit::RateLimits::from_config(
            &format!("{at}.rate_limits"),
            name,
            rate_limits,
            cx.rate_store,
            problems,
        );
        let allow = ip::nets(&format!("{at}.ip_allow"), ip_allow, problems);
        let deny = ip::nets(&format!("{at}.ip_deny"), ip_deny, problems);
        let cors =
            cors.and_then(|c| cors::CorsPolicy::from_config(&format!("{at}.cors"), c, problems));
        if let Some(size) = max_body_size {
            bounds::MAX_BODY_SIZE.check(&format!("{at}.max_body_size"), size, problems);
        }
        (problems.len() == before).then(|| RoutePolicy {
            auth: auth::RouteAuth {
                methods,
                roles: roles.to_vec(),
            },
            ip: ip::IpRules::new(allow, deny),
            cors,
            rate_limits: limits,
            max_body: max_body_size.map_or(cx.default_max_body, |s| s.0),
        })
    }
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
    /// Forward-auth and introspection services (for purges on the admin listener).
    pub external: Vec<Arc<external::ExternalAuth>>,
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
    /// `[limits]` (what is checked per request), `[auth]` and `[consumers]`, in one pass.
    /// `providers` are the generation's JWT providers, whose mapped headers are stripped
    /// from client requests too.
    pub(crate) fn from_config(
        limits: &LimitsSection,
        auth: &AuthSection,
        consumers: &BTreeMap<String, ConsumerSection>,
        rate_store: &Arc<rate_limit::RateLimitStore>,
        services: AuthServices<'_>,
        listener_underscores: Vec<(SocketAddr, normalize::Underscores)>,
        problems: &mut Vec<Problem>,
    ) -> Option<GatewayPolicy> {
        let LimitsSection {
            max_header_bytes,
            max_headers,
            max_body_size,
            header_timeout,
            body_timeout,
            max_connections,
            max_connections_per_ip,
            trusted_proxies,
            ip_allow,
            ip_deny,
            merge_slashes,
            underscore_headers,
            keepalive_timeout,
            h2_idle_timeout,
            max_informational_responses,
        } = limits;
        let AuthSection {
            jwt: _,
            forward: _,
            introspection: _,
            api_key,
            strip_headers,
        } = auth;
        let AuthServices {
            jwt: providers,
            external,
        } = services;
        let before = problems.len();
        bounds::LIMITS_MAX_HEADER_BYTES.check(
            "limits.max_header_bytes",
            *max_header_bytes,
            problems,
        );
        bounds::LIMITS_MAX_HEADERS.check("limits.max_headers", *max_headers, problems);
        bounds::MAX_BODY_SIZE.check("limits.max_body_size", *max_body_size, problems);
        bounds::LIMITS_HEADER_TIMEOUT.check("limits.header_timeout", *header_timeout, problems);
        bounds::LIMITS_BODY_TIMEOUT.check("limits.body_timeout", *body_timeout, problems);
        bounds::LIMITS_MAX_CONNECTIONS.check("limits.max_connections", *max_connections, problems);
        bounds::LIMITS_MAX_CONNECTIONS.check(
            "limits.max_connections_per_ip",
            *max_connections_per_ip,
            problems,
        );
        bounds::LIMITS_KEEPALIVE_TIMEOUT.check(
            "limits.keepalive_timeout",
            *keepalive_timeout,
            problems,
        );
        bounds::LIMITS_H2_IDLE_TIMEOUT.check("limits.h2_idle_timeout", *h2_idle_timeout, problems);
        bounds::LIMITS_MAX_INFORMATIONAL.check(
            "limits.max_informational_responses",
            *max_informational_responses,
            problems,
        );
        let trusted = ip::nets("limits.trusted_proxies", trusted_proxies, problems);
        let allow = ip::nets("limits.ip_allow", ip_allow, problems);
        let deny = ip::nets("limits.ip_deny", ip_deny, problems);
        let header = |key: &str, name: &str, problems: &mut Vec<Problem>| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| {
                    problems.push(Problem::new(key, format!("invalid header name {name:?}")))
                })
                .ok()
        };
        let key_header = header("auth.api_key.header", &api_key.header, problems);
        let consumer_header = header(
            "auth.api_key.consumer_header",
            &api_key.consumer_header,
            problems,
        );
        let mut strip: Vec<HeaderName> = strip_headers
            .iter()
            .enumerate()
            .filter_map(|(i, h)| header(&format!("auth.strip_headers[{i}]"), h, problems))
            .collect();
        strip.extend(consumer_header.clone());
        strip.push(HeaderName::from_static("x-user-roles"));
        for p in providers.all() {
            strip.extend(p.mapped_headers().iter().cloned());
        }
        for s in &external {
            strip.extend(s.mapped_headers());
        }
        strip.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        strip.dedup();
        let (Some(key_header), Some(consumer_header)) = (key_header, consumer_header) else {
            return None;
        };
        let api_keys = api_key::ApiKeys::from_config(
            key_header,
            &consumer_header,
            consumers,
            rate_store,
            problems,
        );
        (problems.len() == before).then(|| GatewayPolicy {
            head: framing::HeadLimits {
                max_headers: *max_headers,
                max_header_bytes: max_header_bytes.0 as usize,
            },
            body_timeout: body_timeout.0,
            trusted_proxies: ip::TrustedProxies::new(trusted),
            ip: ip::IpRules::new(allow, deny),
            api_keys,
            strip_headers: strip,
            rate_store: rate_store.clone(),
            jwt_providers: providers.all().cloned().collect(),
            external,
            normalize: normalize::Options {
                merge_slashes: *merge_slashes,
                underscores: *underscore_headers,
            },
            listener_underscores,
            keepalive_secs: keepalive_timeout.0.as_secs().max(1),
            max_informational: *max_informational_responses,
        })
    }

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
