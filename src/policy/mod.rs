//! Per-request policy, applied by the gateway's `request_filter` in this fixed order:
//!
//! 1. [`framing`]: requests that are ambiguous to frame, or too large in head, are refused
//!    (400/431) before routing;
//! 2. [`normalize`]: the one canonical path, host and header set that everything after
//!    sees, or 400;
//! 3. [`ip`]: the global CIDR allow/deny lists (403) on the client IP (`X-Forwarded-For`
//!    trusted only from configured proxies), the cheapest refusal, before any routing work;
//! 4. routing (in `route.rs`), then encoded slashes refused unless the route accepts them;
//! 5. the route's checks ([`RouteCheck`]), in the order [`RoutePolicy::from_config`]
//!    registers them: [`ip`] (the route's allow/deny lists, 403), [`cors`] (preflights
//!    answered at the gateway), [`body_size`] (`Content-Length` over `max_body_size`, 413;
//!    chunked bodies are counted while streaming), [`content_type`] (a body of a media type
//!    the route does not take, 415);
//! 6. [`auth`]: authentication ([`jwt`], [`api_key`], forward auth and introspection in
//!    [`external`]) and role authorization (401/403);
//! 7. [`rate_limit`]: every window of the route and of the consumer (429).
//!
//! Each step returns a [`Step`] the hook acts on and knows nothing about which hook called
//! it.
//!
//! # Adding a route policy
//!
//! A policy that decides on the request head is one file here: its builder
//! ([`FromConfig`] from the route's section, against [`PolicyContext`]), its
//! [`RouteCheck`], and its unit tests; its key on `RouteSection` (`config/file.rs`, whose
//! doc comment is the schema's description); one line in [`RoutePolicy::from_config`]; a
//! row in `docs/configuration.md`.

pub(crate) mod api_key;
pub(crate) mod auth;
pub(crate) mod body_size;
pub(crate) mod content_type;
pub(crate) mod cors;
pub(crate) mod external;
pub(crate) mod fleet;
pub(crate) mod framing;
pub(crate) mod ip;
pub(crate) mod jwt;
pub(crate) mod normalize;
pub(crate) mod rate_limit;
pub(crate) mod validate;
pub(crate) mod window_counts;

use crate::config::file::{AuthSection, ConfigFile, LimitsSection, RouteSection, ShadowPolicy};
use crate::config::{bounds, FromConfig, Problem};
use crate::error::Reject;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::RequestHeader;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// What a step of the chain decided.
#[derive(Clone)]
pub(crate) enum Step {
    /// On to the next step.
    Next,
    /// Refuse: the JSON error body with the request id.
    Reject(Reject),
    /// Answer here (a CORS preflight, a direct response, an aggregate).
    Answer {
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    },
}

/// The request as a route's checks see it.
pub(crate) struct Asked<'a> {
    pub req: &'a RequestHeader,
    /// The client: the peer, or the address a trusted proxy named.
    pub client_ip: Option<IpAddr>,
}

/// A route policy that decides on the request head alone, after routing and before
/// authentication. Built with [`FromConfig`] from the route's section, registered in
/// [`RoutePolicy::from_config`] (which fixes the order the checks run in), described by
/// `tollgate explain`.
pub(crate) trait RouteCheck: Send + Sync {
    /// The step's name in `tollgate explain` (snake_case).
    fn name(&self) -> &'static str;

    /// Go on, refuse, or answer. `headers` collects what the answer to this request carries
    /// whatever it is (proxied, or the gateway's own).
    fn check(&self, asked: &Asked<'_>, headers: &mut Vec<(HeaderName, HeaderValue)>) -> Step;

    /// What a gateway answer carries from this policy when the refusal came before the
    /// check ran (an IP refusal still carries CORS headers). `already` is what it carries.
    fn own_answer(&self, _asked: &Asked<'_>, _already: &mut Vec<(HeaderName, HeaderValue)>) {}

    /// What `tollgate explain` says the check did.
    fn explain(&self, asked: &Asked<'_>, decided: &Step) -> String;

    /// The name a route's `shadow` list gives this check, when it can run in shadow mode.
    fn shadow_as(&self) -> Option<ShadowPolicy> {
        None
    }
}

/// The route's refusing policies that run in shadow mode (`shadow`): evaluated, counted and
/// logged, never refusing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shadow(u8);

impl Shadow {
    /// The set `list` names.
    pub(crate) fn of(list: &[ShadowPolicy]) -> Shadow {
        Shadow(list.iter().fold(0, |set, p| set | 1 << *p as u8))
    }

    /// Whether `policy` runs in shadow mode.
    pub(crate) fn has(self, policy: ShadowPolicy) -> bool {
        self.0 & (1 << policy as u8) != 0
    }
}

/// The generation's token verifiers and auth services.
pub(crate) struct AuthServices<'a> {
    pub jwt: &'a jwt::Providers,
    pub external: Vec<Arc<external::ExternalAuth>>,
}

/// What a route's policy is built against: the rest of the generation being assembled.
pub(crate) struct PolicyContext<'a> {
    pub jwt: &'a jwt::Providers,
    pub forward: &'a external::Services,
    pub introspection: &'a external::Services,
    /// Whether any consumer (API key) is configured.
    pub has_consumers: bool,
    pub rate_store: &'a Arc<rate_limit::RateLimitStore>,
    pub default_max_body: u64,
    /// The published OpenAPI document (`crate::describe`), for request validation.
    pub openapi: Option<&'a serde_json::Value>,
}

/// The policy of one route, compiled.
#[derive(Default)]
pub(crate) struct RoutePolicy {
    /// The checks on the request head, in the order they run.
    pub(crate) checks: Vec<Box<dyn RouteCheck>>,
    pub auth: auth::RouteAuth,
    pub rate_limits: Option<rate_limit::RateLimits>,
    /// Largest request body (also counted while it streams).
    pub max_body: u64,
    /// The policies that run in shadow mode.
    pub shadow: Shadow,
    /// Request validation against the route's OpenAPI operations (`validate`).
    pub validator: Option<validate::Validator>,
}

/// Build `C` from the route's section and add it to `checks` when the route has it.
fn add<'a, C>(
    checks: &mut Vec<Box<dyn RouteCheck>>,
    at: &str,
    r: &RouteSection,
    cx: &PolicyContext<'a>,
    problems: &mut Vec<Problem>,
) where
    C: RouteCheck + FromConfig<PolicyContext<'a>, Section = RouteSection> + 'static,
{
    if let Some(c) = C::from_config(at, r, cx, problems) {
        checks.push(Box::new(c));
    }
}

impl<'a> FromConfig<PolicyContext<'a>> for RoutePolicy {
    type Section = RouteSection;

    /// A route's policy keys, problems under `at` (`routes[N]`).
    fn from_config(
        at: &str,
        r: &RouteSection,
        cx: &PolicyContext<'a>,
        problems: &mut Vec<Problem>,
    ) -> Option<RoutePolicy> {
        let before = problems.len();
        // The route's checks, in the order they run.
        let mut checks = Vec::new();
        add::<ip::RouteIp>(&mut checks, at, r, cx, problems);
        add::<cors::RouteCors>(&mut checks, at, r, cx, problems);
        let body = body_size::BodySize::from_config(at, r, cx, problems);
        let max_body = body.as_ref().map_or(cx.default_max_body, |b| b.max);
        checks.extend(body.map(|b| Box::new(b) as Box<dyn RouteCheck>));
        add::<content_type::ContentTypes>(&mut checks, at, r, cx, problems);

        let auth = auth::RouteAuth::from_config(at, r, cx, problems);
        let rate_limits = rate_limit::RateLimits::from_config(at, r, cx, problems);
        let shadow = shadow_of(at, r, problems);
        let validator = validator_of(at, r, cx, problems);
        (problems.len() == before).then(|| RoutePolicy {
            checks,
            auth: auth.unwrap_or_default(),
            rate_limits,
            max_body,
            shadow,
            validator,
        })
    }
}

/// A route's `validate`, compiled from its operations in the published document.
fn validator_of(
    at: &str,
    r: &RouteSection,
    cx: &PolicyContext<'_>,
    problems: &mut Vec<Problem>,
) -> Option<validate::Validator> {
    r.validate?;
    let at = format!("{at}.validate");
    if r.openapi.is_none() {
        problems.push(Problem::new(
            at,
            "validating requests needs the route's openapi file (openapi = \"FILE\")",
        ));
        return None;
    }
    // Without a document, the problem that lost it is reported already.
    validate::Validator::build(&at, cx.openapi?, &r.name, problems)
}

/// A route's `shadow` list: each policy it names must be one the route has.
fn shadow_of(at: &str, r: &RouteSection, problems: &mut Vec<Problem>) -> Shadow {
    for (i, p) in r.shadow.iter().enumerate() {
        let missing = match p {
            ShadowPolicy::Auth => r.auth.is_empty().then_some("auth"),
            ShadowPolicy::Roles => r.roles.is_empty().then_some("roles"),
            ShadowPolicy::RateLimits => None,
            ShadowPolicy::Ip => {
                (r.ip_allow.is_empty() && r.ip_deny.is_empty()).then_some("ip_allow or ip_deny")
            }
            ShadowPolicy::Validate => r.validate.is_none().then_some("validate"),
        };
        if let Some(key) = missing {
            problems.push(Problem::new(
                format!("{at}.shadow[{i}]"),
                format!(
                    "\"{}\" runs in shadow mode, but the route has no {key}",
                    p.as_str()
                ),
            ));
        }
    }
    Shadow::of(&r.shadow)
}

/// Policy shared by every route, compiled from `[limits]`, `[auth]` and `[consumers]`.
pub(crate) struct GatewayPolicy {
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
    /// `[[rate_limits]]`: windows every route applies.
    pub rate_limits: Option<rate_limit::RateLimits>,
}

/// What the gateway-wide policy is built against: the generation's rate-limit store, token
/// verifiers and auth services, and the listeners that override header normalization.
pub(crate) struct GatewayContext<'a> {
    pub rate_store: &'a Arc<rate_limit::RateLimitStore>,
    pub services: AuthServices<'a>,
    pub listener_underscores: Vec<(SocketAddr, normalize::Underscores)>,
}

impl FromConfig<GatewayContext<'_>> for GatewayPolicy {
    type Section = ConfigFile;

    /// `[limits]` (what is checked per request), `[auth]` and `[consumers]`, in one pass.
    /// The JWT providers' and auth services' mapped headers are stripped from client
    /// requests too.
    fn from_config(
        _at: &str,
        file: &ConfigFile,
        cx: &GatewayContext<'_>,
        problems: &mut Vec<Problem>,
    ) -> Option<GatewayPolicy> {
        let ConfigFile {
            limits,
            auth,
            consumers,
            rate_limits,
            ..
        } = file;
        let GatewayContext {
            rate_store,
            services,
            listener_underscores,
        } = cx;
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
        let external = external.clone();
        let listener_underscores = listener_underscores.clone();
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
        let key_header = api_key.header.get("auth.api_key.header", problems).cloned();
        let consumer_header = api_key
            .consumer_header
            .get("auth.api_key.consumer_header", problems)
            .cloned();
        let mut strip: Vec<HeaderName> = strip_headers
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                h.get(&format!("auth.strip_headers[{i}]"), problems)
                    .cloned()
            })
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
        let keys = api_key::KeyHeaders {
            header: &key_header,
            consumer_header: &consumer_header,
            rate_store,
        };
        let api_keys = api_key::ApiKeys::from_config("consumers", consumers, &keys, problems)?;
        // Gateway-wide windows: their scope is every route unless one names its own.
        let every_route = rate_limit::Scope {
            name: rate_limit::GLOBAL_SCOPE,
            store: rate_store,
            jwt: Some(providers),
        };
        let rate_limits = rate_limit::RateLimits::from_config(
            "rate_limits",
            &rate_limits[..],
            &every_route,
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
            rate_store: Arc::clone(rate_store),
            jwt_providers: providers.all().cloned().collect(),
            external,
            normalize: normalize::Options {
                merge_slashes: *merge_slashes,
                underscores: *underscore_headers,
            },
            listener_underscores,
            keepalive_secs: keepalive_timeout.0.as_secs().max(1),
            max_informational: *max_informational_responses,
            rate_limits,
        })
    }
}

impl GatewayPolicy {
    /// The normalization options for a request that arrived on `local` (the listener's
    /// address as the socket reports it).
    pub(crate) fn normalize_for(&self, local: Option<SocketAddr>) -> normalize::Options {
        let mut opts = self.normalize;
        if let Some(local) = local {
            let listener = self
                .listener_underscores
                .iter()
                .find(|(addr, _)| crate::connection::arrived_on(addr, local));
            if let Some((_, u)) = listener {
                opts.underscores = *u;
            }
        }
        opts
    }
}
