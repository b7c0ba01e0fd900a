//! Turns a validated [`ConfigFile`] into the runtime form: the route table, upstream groups
//! with their selectors and health checks, metrics and the access log, plus the server
//! settings `lib.rs` needs to start listening. Header names and values are parsed here, once;
//! nothing on the request path parses configuration text again.

use super::file::*;
use super::Problem;
use crate::aggregate::{Aggregate, Part};
use crate::cache::{ResponseCache, RouteCache, Sharing};
use crate::connection::ConnectionLimits;
use crate::gateway::Gateway;
use crate::observe::access_log::{self, AccessLogWriter};
use crate::observe::metrics::Metrics;
use crate::policy::api_key::{digest, parse_key_hash, ApiKeys, Consumer};
use crate::policy::auth::{AuthMethod, RouteAuth};
use crate::policy::cors::CorsPolicy;
use crate::policy::framing::HeadLimits;
use crate::policy::ip::{parse_net, IpRules, TrustedProxies};
use crate::policy::jwt::JwtProvider;
use crate::policy::rate_limit::{RateLimitStore, RateLimits};
use crate::policy::{GatewayPolicy, RoutePolicy};
use crate::route::{
    DirectResponse, HostPattern, PathMatch, PathRewrite, ProxyAction, Route, RouteAction,
    RouteTable, RouteTransform,
};
use crate::transform::{self, HeaderTransform, JsonRename};
use crate::upstream::breaker::BreakerSettings;
use crate::upstream::dns::{Discovery, TargetSpec};
use crate::upstream::health::{HealthCheckSpec, Kind};
use crate::upstream::select::{Policy, Selector};
use crate::upstream::{GroupSettings, HashOn, RetryBudget, UpstreamGroup, UpstreamTls};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use pingora::lb::{Backends, LoadBalancer};
use pingora::server::configuration::ServerConf;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A listener to open: its address, and TLS settings when it terminates TLS.
pub struct Listener {
    pub address: String,
    pub tls: Option<TlsListener>,
}

/// A compiled `[listeners.tls]`.
pub struct TlsListener {
    pub certs: Arc<crate::tls::CertStore>,
    pub tls13_only: bool,
    pub h2: bool,
}

/// Everything needed to run a gateway.
pub struct Compiled {
    pub gateway: Gateway,
    pub server_conf: ServerConf,
    pub listeners: Vec<Listener>,
    pub admin: Option<String>,
    pub access_log_writer: Option<AccessLogWriter>,
    pub demo: Vec<(String, String)>,
    pub connection_limits: ConnectionLimits,
    /// Read buffer size of each client connection.
    pub client_read_buffer: usize,
    /// Idle HTTP/2 client connections (no open stream) close after this.
    pub h2_idle_timeout: std::time::Duration,
}

/// Parse `hash_on`: `"header:NAME"`, `"cookie:NAME"` or `"client_ip"`.
pub fn parse_hash_on(s: &str) -> Result<HashOn, String> {
    if s == "client_ip" {
        return Ok(HashOn::ClientIp);
    }
    match s.split_once(':') {
        Some(("header", name)) => HeaderName::from_bytes(name.trim().as_bytes())
            .map(HashOn::Header)
            .map_err(|_| format!("invalid header name {name:?}")),
        Some(("cookie", name)) if !name.trim().is_empty() => {
            Ok(HashOn::Cookie(name.trim().to_string()))
        }
        _ => Err(format!(
            "invalid hash_on {s:?}; write \"header:NAME\", \"cookie:NAME\" or \"client_ip\""
        )),
    }
}

/// Parse a host pattern: an exact name or `*.suffix`.
pub fn parse_host_pattern(s: &str) -> Result<HostPattern, String> {
    let lower = s.trim_end_matches('.').to_ascii_lowercase();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    if let Some(suffix) = lower.strip_prefix("*.") {
        if valid_name(suffix) {
            return Ok(HostPattern::Suffix(format!(".{suffix}")));
        }
    } else if valid_name(&lower) || lower.parse::<std::net::IpAddr>().is_ok() {
        return Ok(HostPattern::Exact(lower));
    }
    Err(format!(
        "invalid host {s:?}; write a name like \"api.example.com\" or a wildcard like \"*.example.com\""
    ))
}

/// Build the runtime form. `file` must have passed validation; anything that still fails is
/// reported as a problem rather than a panic.
pub fn compile(file: &ConfigFile) -> Result<Compiled, Vec<Problem>> {
    let ConfigFile {
        server,
        listeners,
        admin,
        access_log,
        upstreams,
        routes,
        demo,
        limits,
        auth,
        consumers,
        rate_limit,
        security_headers,
        resolver,
        cache,
    } = file;
    let hosts_file = resolver.hosts_file.as_ref().map(std::path::PathBuf::from);
    let mut problems = Vec::new();
    let security = if security_headers.enabled {
        let hsts = security_headers
            .hsts
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| {
                vec![Problem::new(
                    "security_headers.hsts",
                    "invalid header value",
                )]
            })?;
        transform::security_headers(hsts.as_ref())
    } else {
        Vec::new()
    };
    let metrics =
        Arc::new(Metrics::new().map_err(|e| vec![Problem::new("", format!("metrics: {e}"))])?);
    let mut policy = compile_policy(
        limits,
        auth,
        consumers,
        rate_limit,
        metrics.rate_limit_redis_errors.clone(),
    )?;

    policy.listener_underscores = listeners
        .iter()
        .filter_map(|l| Some((l.address.parse().ok()?, l.underscore_headers?)))
        .collect();

    let mut groups = Vec::new();
    let mut group_index = BTreeMap::new();
    for (name, up) in upstreams {
        match compile_upstream(name, up, hosts_file.clone()) {
            Ok(g) => {
                group_index.insert(name.as_str(), groups.len());
                groups.push(Arc::new(g));
            }
            Err(p) => problems.push(p),
        }
    }

    let mut compiled_routes = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let ctx = RouteContext {
            upstreams,
            group_index: &group_index,
            gateway: &policy,
            default_max_body: limits.max_body_size.0,
            security: &security,
        };
        match compile_route(i, r, &ctx) {
            Ok(route) => compiled_routes.push(route),
            Err(p) => problems.push(p),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    let (access_log, access_log_writer) = match access_log.target.as_str() {
        "off" => (None, None),
        target => {
            let target = if target == "stdout" {
                access_log::Target::Stdout
            } else {
                access_log::Target::File(target.into())
            };
            let (log, writer) = access_log::channel(
                target,
                access_log.buffer_lines,
                metrics.access_log_dropped.clone(),
            );
            (Some(log), Some(writer))
        }
    };

    Ok(Compiled {
        gateway: Gateway {
            routes: RouteTable::new(compiled_routes),
            upstreams: groups,
            metrics,
            access_log,
            policy,
            connector: pingora::connectors::http::Connector::new(None),
            cache: routes.iter().any(|r| r.cache.is_some()).then(|| {
                Arc::new(ResponseCache::new(
                    cache.max_size.0 as usize,
                    cache.max_object_size.0 as usize,
                    cache.lock_timeout.0,
                ))
            }),
            draining: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        },
        server_conf: server_conf(server),
        listeners: listeners
            .iter()
            .enumerate()
            .map(|(i, l)| compile_listener(i, l))
            .collect::<Result<_, _>>()?,
        admin: admin.enabled.then(|| admin.address.clone()),
        access_log_writer,
        demo: demo
            .iter()
            .map(|d| (d.name.clone(), d.address.clone()))
            .collect(),
        client_read_buffer: server.client_read_buffer.0 as usize,
        h2_idle_timeout: limits.h2_idle_timeout.0,
        connection_limits: ConnectionLimits {
            header_timeout: limits.header_timeout.0,
            max_header_bytes: limits.max_header_bytes.0 as usize,
            max_connections: limits.max_connections,
            max_connections_per_ip: limits.max_connections_per_ip,
        },
    })
}

fn compile_listener(i: usize, l: &ListenerSection) -> Result<Listener, Vec<Problem>> {
    let ListenerSection {
        address,
        tls,
        underscore_headers: _,
    } = l;
    let tls = match tls {
        None => None,
        Some(TlsSection {
            certificates,
            min_version,
            h2,
        }) => {
            let mut certs = Vec::new();
            for (j, c) in certificates.iter().enumerate() {
                let CertificateSection { cert, key, names } = c;
                let loaded =
                    crate::tls::load_certificate(cert, key).map_err(|(key_side, msg)| {
                        let field = if key_side { "key" } else { "cert" };
                        vec![Problem::new(
                            format!("listeners[{i}].tls.certificates[{j}].{field}"),
                            msg,
                        )]
                    })?;
                certs.push((loaded, names.clone()));
            }
            let store = crate::tls::CertStore::new(certs).ok_or_else(|| {
                vec![Problem::new(
                    format!("listeners[{i}].tls.certificates"),
                    "list at least one certificate",
                )]
            })?;
            Some(TlsListener {
                certs: Arc::new(store),
                tls13_only: min_version == "1.3",
                h2: *h2,
            })
        }
    };
    Ok(Listener {
        address: address.clone(),
        tls,
    })
}

fn server_conf(s: &ServerSection) -> ServerConf {
    let ServerSection {
        threads,
        work_stealing,
        pid_file,
        upgrade_sock,
        error_log,
        grace_period,
        graceful_shutdown_timeout,
        upstream_keepalive_pool_size,
        client_read_buffer: _,
    } = s;
    ServerConf {
        threads: *threads,
        work_stealing: *work_stealing,
        pid_file: pid_file.clone(),
        upgrade_sock: upgrade_sock.clone(),
        error_log: error_log.clone(),
        grace_period_seconds: Some(grace_period.0.as_secs()),
        graceful_shutdown_timeout_seconds: Some(graceful_shutdown_timeout.0.as_secs()),
        upstream_keepalive_pool_size: *upstream_keepalive_pool_size,
        ..ServerConf::default()
    }
}

fn compile_upstream(
    name: &str,
    up: &UpstreamSection,
    hosts_file: Option<std::path::PathBuf>,
) -> Result<UpstreamGroup, Problem> {
    let UpstreamSection {
        policy,
        hash_on,
        targets,
        health_check,
        connect_timeout,
        read_timeout,
        circuit_breaker,
        fallback,
        retry_budget,
        dns_refresh,
        tls,
        h2,
    } = up;
    let upstream_tls = tls
        .as_ref()
        .map(|t| compile_upstream_tls(&format!("upstreams.{name}.tls"), t))
        .transpose()?;
    let at = format!("upstreams.{name}");
    let fail = |msg: String| Problem::new(&at, msg);
    let breaker = circuit_breaker.as_ref().map(|b| BreakerSettings {
        failures: b.consecutive_failures,
        cooldown: b.cooldown.0,
        on_5xx: b.on_5xx,
    });
    let specs = targets
        .iter()
        .map(|t| TargetSpec::parse(&t.address, t.weight))
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    let discovery = Discovery::new(specs, hosts_file, breaker);
    let resolves_names = discovery.has_names();
    let fallback = fallback
        .as_ref()
        .map(|f| direct_response(f).map_err(|e| Problem::new(format!("{at}.fallback"), e)))
        .transpose()?;
    let policy = match policy {
        BalancePolicy::RoundRobin => Policy::RoundRobin,
        BalancePolicy::LeastConnections => Policy::LeastConnections,
        BalancePolicy::ConsistentHash => Policy::ConsistentHash,
    };
    let hash_on = hash_on
        .as_deref()
        .map(parse_hash_on)
        .transpose()
        .map_err(fail)?;

    let mut view = Backends::new(Box::new(discovery));
    let spec = health_check.as_ref().map(health_spec);
    if let Some(spec) = &spec {
        let hc = spec
            .build(upstream_tls.as_ref())
            .map_err(|e| fail(format!("health check: {e}")))?;
        view.set_health_check(hc);
    }
    let mut lb = LoadBalancer::<Selector>::from_backends_with_config(view, Some(policy));
    // First resolution at start-up; a throwaway runtime drives it once.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("building targets: {e}")))?
        .block_on(lb.update())
        .map_err(|e| fail(format!("building targets: {e}")))?;
    if let Some(spec) = &spec {
        lb.health_check_frequency = Some(spec.interval);
        lb.parallel_health_check = true;
    }
    if resolves_names {
        lb.update_frequency = Some(dns_refresh.0);
    }
    Ok(UpstreamGroup::new(
        name,
        lb,
        GroupSettings {
            policy,
            hash_on,
            connect_timeout: connect_timeout.0,
            read_timeout: read_timeout.0,
            health_checked: spec.is_some(),
            resolves_names,
            fallback,
            retry_budget: RetryBudget::new(retry_budget.ratio, retry_budget.min_per_second),
            tls: upstream_tls,
            h2: *h2,
        },
    ))
}

/// Load `[upstreams.NAME.tls]`: the CA bundle and the client certificate.
pub fn compile_upstream_tls(at: &str, t: &UpstreamTlsSection) -> Result<UpstreamTls, Problem> {
    let UpstreamTlsSection {
        sni,
        ca_file,
        verify,
        client_cert,
        client_key,
    } = t;
    let ca = match ca_file {
        None => None,
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                Problem::new(format!("{at}.ca_file"), format!("cannot read {path}: {e}"))
            })?;
            let certs = openssl::x509::X509::stack_from_pem(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    Problem::new(
                        format!("{at}.ca_file"),
                        format!("{path} is not a PEM certificate bundle"),
                    )
                })?;
            Some(Arc::new(certs.into_boxed_slice()))
        }
    };
    let client = match (client_cert, client_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let loaded = crate::tls::load_certificate(cert, key).map_err(|(key_side, msg)| {
                Problem::new(
                    format!(
                        "{at}.{}",
                        if key_side {
                            "client_key"
                        } else {
                            "client_cert"
                        }
                    ),
                    msg,
                )
            })?;
            Some(Arc::new(loaded.into_cert_key()))
        }
        _ => {
            return Err(Problem::new(
                at,
                "set both client_cert and client_key, or neither",
            ))
        }
    };
    Ok(UpstreamTls {
        sni: sni.clone().unwrap_or_default(),
        ca,
        verify: *verify,
        client,
    })
}

fn compile_aggregate(
    agg: &AggregateSection,
    group_index: &BTreeMap<&str, usize>,
) -> Result<Aggregate, String> {
    let AggregateSection { capture, parts } = agg;
    Ok(Aggregate {
        capture: capture
            .as_deref()
            .map(regex::Regex::new)
            .transpose()
            .map_err(|e| format!("aggregate.capture: {e}"))?,
        parts: parts
            .iter()
            .map(|p| {
                let AggregatePartSection {
                    name,
                    upstream,
                    path,
                    timeout,
                } = p;
                Ok(Part {
                    name: name.clone(),
                    upstream: *group_index
                        .get(upstream.as_str())
                        .ok_or_else(|| format!("upstream {upstream:?} is not defined"))?,
                    path: path.clone(),
                    timeout: timeout.0,
                })
            })
            .collect::<Result<_, String>>()?,
    })
}

fn direct_response(r: &RespondSection) -> Result<DirectResponse, String> {
    let RespondSection {
        status,
        headers,
        body,
    } = r;
    Ok(DirectResponse {
        status: StatusCode::from_u16(*status).map_err(|_| format!("invalid status {status}"))?,
        headers: header_pairs(headers)?,
        body: Bytes::from(body.clone()),
    })
}

fn health_spec(hc: &HealthCheckSection) -> HealthCheckSpec {
    let HealthCheckSection {
        kind,
        path,
        host,
        expected_status,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
    } = hc;
    HealthCheckSpec {
        kind: match kind {
            HealthCheckKind::Tcp => Kind::Tcp,
            HealthCheckKind::Http => Kind::Http {
                path: path.clone(),
                host: host.clone(),
                expected_status: *expected_status,
            },
        },
        interval: interval.0,
        timeout: timeout.0,
        rise: *healthy_threshold,
        fall: *unhealthy_threshold,
    }
}

/// What compiling a route needs from the rest of the configuration.
struct RouteContext<'a> {
    upstreams: &'a BTreeMap<String, UpstreamSection>,
    group_index: &'a BTreeMap<&'a str, usize>,
    gateway: &'a GatewayPolicy,
    default_max_body: u64,
    /// The global security headers (empty when off).
    security: &'a [(HeaderName, HeaderValue)],
}

fn compile_route(order: usize, r: &RouteSection, cx: &RouteContext<'_>) -> Result<Route, Problem> {
    let RouteContext {
        upstreams,
        group_index,
        gateway,
        default_max_body,
        security,
    } = cx;
    let RouteSection {
        name,
        hosts,
        path_prefix,
        path,
        methods,
        headers,
        upstream,
        strip_prefix,
        rewrite_prefix,
        connect_timeout,
        read_timeout,
        retries,
        retry_unsent,
        retry_on,
        allow_encoded_slashes,
        respond,
        aggregate,
        auth,
        roles,
        rate_limits,
        ip_allow,
        ip_deny,
        cors,
        max_body_size,
        request_headers,
        response_headers,
        rewrite_regex,
        security_headers,
        json_rename_request,
        json_rename_response,
        cache,
    } = r;
    let at = format!("routes[{order}]");
    let fail = |msg: String| Problem::new(&at, msg);
    let hosts = hosts
        .iter()
        .map(|h| parse_host_pattern(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    let path_match = match (path_prefix, path) {
        (Some(p), _) => PathMatch::Prefix(p.clone()),
        (None, Some(p)) => PathMatch::Exact(p.clone()),
        (None, None) => PathMatch::Any,
    };
    let methods = methods
        .iter()
        .map(|m| {
            Method::from_bytes(m.as_bytes()).map_err(|_| fail(format!("invalid method {m:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let headers = header_pairs(headers).map_err(fail)?;

    let action = match (upstream, respond) {
        (None, None) if aggregate.is_some() => {
            let agg = aggregate
                .as_ref()
                .ok_or_else(|| fail("missing aggregate".into()))?;
            RouteAction::Aggregate(compile_aggregate(agg, group_index).map_err(fail)?)
        }
        (Some(up_name), None) => {
            let index = *group_index
                .get(up_name.as_str())
                .ok_or_else(|| fail(format!("upstream {up_name:?} is not defined")))?;
            let group = upstreams
                .get(up_name)
                .ok_or_else(|| fail(format!("upstream {up_name:?} is not defined")))?;
            let matched_len = match &path_match {
                PathMatch::Prefix(p) | PathMatch::Exact(p) => p.trim_end_matches('/').len(),
                PathMatch::Any => 0,
            };
            let rewrite = match (strip_prefix, rewrite_prefix, rewrite_regex) {
                (_, _, Some(rx)) => PathRewrite::Regex {
                    re: regex::Regex::new(&rx.pattern)
                        .map_err(|e| fail(format!("rewrite_regex: {e}")))?,
                    with: rx.replace.clone(),
                },
                (true, _, None) => PathRewrite::Prefix {
                    len: matched_len,
                    with: String::new(),
                },
                (false, Some(with), None) => PathRewrite::Prefix {
                    len: matched_len,
                    with: with.clone(),
                },
                (false, None, None) => PathRewrite::None,
            };
            RouteAction::Proxy(ProxyAction {
                upstream: index,
                rewrite,
                connect_timeout: connect_timeout.unwrap_or(group.connect_timeout).0,
                read_timeout: read_timeout.unwrap_or(group.read_timeout).0,
                retries: *retries,
                retry_unsent: *retry_unsent,
                retry_on: crate::upstream::retry::RetryOn::of(retry_on),
            })
        }
        (None, Some(resp)) => RouteAction::Respond(direct_response(resp).map_err(fail)?),
        _ => return Err(fail("needs exactly one of upstream or [respond]".into())),
    };
    let policy = RoutePolicy {
        auth: RouteAuth {
            methods: auth
                .iter()
                .map(|m| match m.split_once(':') {
                    Some(("jwt", p)) => gateway
                        .jwt_providers
                        .iter()
                        .find(|j| &*j.name == p)
                        .cloned()
                        .map(AuthMethod::Jwt)
                        .ok_or_else(|| fail(format!("JWT provider {p:?} is not defined"))),
                    _ => Ok(AuthMethod::ApiKey),
                })
                .collect::<Result<_, _>>()?,
            roles: roles.clone(),
        },
        ip: IpRules::new(nets(ip_allow).map_err(fail)?, nets(ip_deny).map_err(fail)?),
        cors: cors
            .as_ref()
            .map(|c| {
                CorsPolicy::new(
                    &c.allow_origins,
                    &c.allow_methods,
                    &c.allow_headers,
                    &c.expose_headers,
                    c.allow_credentials,
                    c.max_age.map(|d| d.0),
                )
            })
            .transpose()
            .map_err(|(_, message)| fail(message))?,
        rate_limits: if rate_limits.is_empty() {
            None
        } else {
            Some(
                RateLimits::compile(name, rate_limits, &gateway.rate_store)
                    .map_err(|p| first(p, &at))?,
            )
        },
        max_body: max_body_size.map_or(*default_max_body, |s| s.0),
    };
    let edits =
        |e: &HeaderEditsSection| HeaderTransform::compile(&e.set, &e.append, &e.remove, &e.rename);
    let renames = |m: &BTreeMap<String, String>| JsonRename {
        fields: m.iter().map(|(a, b)| (a.clone(), b.clone())).collect(),
    };
    let transform = RouteTransform {
        request: edits(request_headers).map_err(fail)?,
        response: edits(response_headers).map_err(fail)?,
        security: match security_headers {
            Some(false) => Vec::new(),
            Some(true) if security.is_empty() => transform::security_headers(None),
            _ => security.to_vec(),
        },
        json_request: renames(json_rename_request),
        json_response: renames(json_rename_response),
    };
    Ok(Route {
        name: name.as_str().into(),
        hosts,
        path: path_match,
        methods,
        headers,
        action,
        policy,
        transform,
        cache: cache.as_ref().map(|c| RouteCache {
            ttl: c.ttl.0,
            authenticated: match c.authenticated.as_str() {
                "shared" => Sharing::Shared,
                "per_consumer" => Sharing::PerConsumer,
                _ => Sharing::Bypass,
            },
            stale_while_revalidate: c.stale_while_revalidate.map_or(Duration::ZERO, |d| d.0),
            stale_if_error: c.stale_if_error.map_or(Duration::ZERO, |d| d.0),
        }),
        stats: Default::default(),
        allow_encoded_slashes: *allow_encoded_slashes,
        order,
    })
}

fn nets(list: &[String]) -> Result<Vec<ipnet::IpNet>, String> {
    list.iter().map(|s| parse_net(s)).collect()
}

/// The first of a list of problems (compile-time problems are rare: validation ran first).
fn first(mut problems: Vec<Problem>, at: &str) -> Problem {
    if problems.is_empty() {
        Problem::new(at, "invalid")
    } else {
        problems.swap_remove(0)
    }
}

fn compile_policy(
    limits: &LimitsSection,
    auth: &AuthSection,
    consumers: &BTreeMap<String, ConsumerSection>,
    rate_limit: &RateLimitBackendSection,
    redis_errors: prometheus::IntCounter,
) -> Result<GatewayPolicy, Vec<Problem>> {
    let LimitsSection {
        max_header_bytes,
        max_headers,
        max_body_size: _,
        header_timeout: _,
        body_timeout,
        max_connections: _,
        max_connections_per_ip: _,
        trusted_proxies,
        ip_allow,
        ip_deny,
        merge_slashes,
        underscore_headers,
        keepalive_timeout,
        h2_idle_timeout: _,
        max_informational_responses,
    } = limits;
    let AuthSection {
        jwt,
        api_key,
        strip_headers,
    } = auth;
    let one = |at: &str, e: String| vec![Problem::new(at, e)];
    let rate_store = RateLimitStore::compile(rate_limit, redis_errors)?;
    let mut problems = Vec::new();
    let mut jwt_providers = Vec::new();
    for (name, section) in jwt {
        match JwtProvider::compile(name, section, &format!("auth.jwt.{name}")) {
            Ok(p) => jwt_providers.push(Arc::new(p)),
            Err(p) => problems.extend(p),
        }
    }
    let key_header = HeaderName::from_bytes(api_key.header.as_bytes())
        .map_err(|_| one("auth.api_key.header", "invalid header name".into()))?;
    let consumer_header = HeaderName::from_bytes(api_key.consumer_header.as_bytes())
        .map_err(|_| one("auth.api_key.consumer_header", "invalid header name".into()))?;
    let mut strip: Vec<HeaderName> = strip_headers
        .iter()
        .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
        .collect();
    strip.push(consumer_header.clone());
    strip.push(HeaderName::from_static("x-user-roles"));
    for p in &jwt_providers {
        strip.extend(p.mapped_headers().iter().cloned());
    }
    strip.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    strip.dedup();

    let mut api_keys = ApiKeys::new(key_header);
    for (name, c) in consumers {
        let ConsumerSection {
            keys,
            key_hashes,
            roles,
            rate_limits,
        } = c;
        let at = format!("consumers.{name}");
        let mut headers = vec![];
        match HeaderValue::from_str(name) {
            Ok(v) => headers.push((consumer_header.clone(), v)),
            Err(_) => problems.push(Problem::new(
                &at,
                "consumer names must be valid header values",
            )),
        }
        if !roles.is_empty() {
            match HeaderValue::from_str(&roles.join(",")) {
                Ok(v) => headers.push((HeaderName::from_static("x-user-roles"), v)),
                Err(_) => problems.push(Problem::new(
                    format!("{at}.roles"),
                    "roles must be valid header values",
                )),
            }
        }
        let limits = if rate_limits.is_empty() {
            None
        } else {
            match RateLimits::compile(name, rate_limits, &rate_store) {
                Ok(l) => Some(l),
                Err(p) => {
                    problems.extend(p);
                    None
                }
            }
        };
        let consumer = Arc::new(Consumer {
            name: name.as_str().into(),
            roles: roles.clone(),
            headers,
            rate_limits: limits,
        });
        let digests = keys
            .iter()
            .map(|k| Ok(digest(k.as_bytes())))
            .chain(key_hashes.iter().map(|h| parse_key_hash(h)));
        for (i, d) in digests.enumerate() {
            match d {
                Ok(d) => {
                    if !api_keys.insert(d, consumer.clone()) {
                        problems.push(Problem::new(
                            format!("{at}.keys[{i}]"),
                            "this key already belongs to another consumer",
                        ));
                    }
                }
                Err(e) => problems.push(Problem::new(format!("{at}.key_hashes"), e)),
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(GatewayPolicy {
        head: HeadLimits {
            max_headers: *max_headers,
            max_header_bytes: max_header_bytes.0 as usize,
        },
        body_timeout: body_timeout.0,
        trusted_proxies: TrustedProxies::new(
            nets(trusted_proxies).map_err(|e| one("limits.trusted_proxies", e))?,
        ),
        ip: IpRules::new(
            nets(ip_allow).map_err(|e| one("limits.ip_allow", e))?,
            nets(ip_deny).map_err(|e| one("limits.ip_deny", e))?,
        ),
        api_keys,
        strip_headers: strip,
        rate_store,
        jwt_providers,
        normalize: crate::policy::normalize::Options {
            merge_slashes: *merge_slashes,
            underscores: *underscore_headers,
        },
        listener_underscores: Vec::new(),
        keepalive_secs: keepalive_timeout.0.as_secs().max(1),
        max_informational: *max_informational_responses,
    })
}

fn header_pairs(map: &BTreeMap<String, String>) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    map.iter()
        .map(|(k, v)| {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("invalid header name {k:?}"))?;
            let value =
                HeaderValue::from_str(v).map_err(|_| format!("invalid value for header {k:?}"))?;
            Ok((name, value))
        })
        .collect()
}
