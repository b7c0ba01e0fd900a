//! Checks that a parsed configuration means something runnable, collecting every problem
//! (not just the first) with its key path. Compilation relies on these checks.

use super::bounds::{self, Limit, Range};
use super::file::*;
use super::Problem;
use crate::policy::cors::CorsPolicy;
use crate::policy::ip::parse_net;
use crate::policy::jwt::JwtProvider;
use crate::policy::rate_limit::{RateLimitStore, RateLimits};
use http::{HeaderName, HeaderValue, Method};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;

pub use super::bounds::{MAX_RETRIES, MAX_WEIGHT};

/// Every problem found in `file`; empty when it is valid.
pub fn validate(file: &ConfigFile) -> Vec<Problem> {
    let mut v = Validator::default();
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
    v.cache(cache);
    if let Some(path) = &resolver.hosts_file {
        if path.is_empty() {
            v.problem("resolver.hosts_file", "must not be empty");
        }
    }
    if let Some(h) = &security_headers.hsts {
        if HeaderValue::from_str(h).is_err() {
            v.problem("security_headers.hsts", "invalid header value");
        }
    }
    v.limits(limits);
    v.auth(auth);
    for (name, c) in consumers {
        v.consumer(name, c);
    }
    v.problems.extend(RateLimitStore::validate(rate_limit));
    v.server(server);
    v.listeners(listeners);
    v.admin(admin);
    v.access_log(access_log);
    for (name, up) in upstreams {
        v.upstream(name, up);
    }
    let mut names = HashMap::new();
    for (i, route) in routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if let Some(&first) = names.get(route.name.as_str()) {
            v.problem(
                format!("{at}.name"),
                format!(
                    "duplicate route name {:?}; routes[{first}] already uses it",
                    route.name
                ),
            );
        } else {
            names.insert(route.name.as_str(), i);
        }
        v.route(&at, route, upstreams);
        v.route_policy(&at, route, auth, consumers);
    }
    let mut demo_names = HashSet::new();
    for (i, d) in demo.iter().enumerate() {
        if !demo_names.insert(d.name.as_str()) {
            v.problem(
                format!("demo[{i}].name"),
                format!("duplicate demo name {:?}", d.name),
            );
        }
        v.listen_address(&format!("demo[{i}].address"), &d.address);
    }
    v.problems
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
    /// Addresses bound so far, with the key that bound them.
    bound: BTreeMap<SocketAddr, String>,
}

impl Validator {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    /// Check one number against its range (see `bounds.rs`); whether it is in range.
    fn range(&mut self, range: &Range, at: impl AsRef<str>, value: impl Into<Limit>) -> bool {
        range.check(at.as_ref(), value, &mut self.problems)
    }

    fn server(&mut self, s: &ServerSection) {
        self.range(&bounds::SERVER_THREADS, "server.threads", s.threads);
        self.range(
            &bounds::SERVER_GRACE_PERIOD,
            "server.grace_period",
            s.grace_period,
        );
        self.range(
            &bounds::SERVER_GRACEFUL_SHUTDOWN_TIMEOUT,
            "server.graceful_shutdown_timeout",
            s.graceful_shutdown_timeout,
        );
        self.range(
            &bounds::SERVER_UPSTREAM_KEEPALIVE_POOL_SIZE,
            "server.upstream_keepalive_pool_size",
            s.upstream_keepalive_pool_size,
        );
        self.range(
            &bounds::SERVER_CLIENT_READ_BUFFER,
            "server.client_read_buffer",
            s.client_read_buffer,
        );
        if s.pid_file.is_empty() {
            self.problem("server.pid_file", "must not be empty");
        }
        if s.upgrade_sock.is_empty() {
            self.problem("server.upgrade_sock", "must not be empty");
        }
    }

    fn listeners(&mut self, listeners: &[ListenerSection]) {
        if listeners.is_empty() {
            self.problem(
                "listeners",
                "at least one [[listeners]] entry with an address is required",
            );
        }
        for (i, l) in listeners.iter().enumerate() {
            self.listen_address(&format!("listeners[{i}].address"), &l.address);
            if let Some(tls) = &l.tls {
                self.tls(&format!("listeners[{i}].tls"), tls);
            }
        }
    }

    fn tls(&mut self, at: &str, tls: &TlsSection) {
        if tls.certificates.is_empty() {
            self.problem(
                format!("{at}.certificates"),
                "list at least one certificate",
            );
        }
        if !matches!(tls.min_version.as_str(), "1.2" | "1.3") {
            self.problem(format!("{at}.min_version"), "must be \"1.2\" or \"1.3\"");
        }
        for (i, c) in tls.certificates.iter().enumerate() {
            let cat = format!("{at}.certificates[{i}]");
            if let Err((key_side, msg)) = crate::tls::load_certificate(&c.cert, &c.key) {
                let field = if key_side { "key" } else { "cert" };
                self.problem(format!("{cat}.{field}"), msg);
            }
            for (j, n) in c.names.iter().enumerate() {
                if let Err(e) = super::compile::parse_host_pattern(n) {
                    self.problem(format!("{cat}.names[{j}]"), e);
                }
            }
        }
    }

    fn admin(&mut self, a: &AdminSection) {
        if a.enabled {
            self.listen_address("admin.address", &a.address);
        }
    }

    fn access_log(&mut self, a: &AccessLogSection) {
        match a.target.as_str() {
            "stdout" | "off" => {}
            "" => self.problem(
                "access_log.target",
                "must be \"stdout\", \"off\" or a file path",
            ),
            path => {
                let parent = std::path::Path::new(path)
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty());
                if let Some(dir) = parent {
                    if !dir.is_dir() {
                        self.problem(
                            "access_log.target",
                            format!("directory {} does not exist", dir.display()),
                        );
                    }
                }
            }
        }
        self.range(
            &bounds::ACCESS_LOG_BUFFER_LINES,
            "access_log.buffer_lines",
            a.buffer_lines,
        );
    }

    fn listen_address(&mut self, path: &str, address: &str) {
        match address.parse::<SocketAddr>() {
            Ok(addr) => {
                if let Some(other) = self.bound.insert(addr, path.to_string()) {
                    self.problem(
                        path,
                        format!("address {address} is already used by {other}"),
                    );
                }
            }
            Err(_) => self.problem(
                path,
                format!("invalid listen address {address:?}; write IP:PORT, e.g. \"0.0.0.0:8080\""),
            ),
        }
    }

    fn upstream(&mut self, name: &str, up: &UpstreamSection) {
        let at = format!("upstreams.{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            self.problem(
                &at,
                "upstream names may use only letters, digits, '-', '_' and '.'",
            );
        }
        if up.targets.is_empty() {
            self.problem(format!("{at}.targets"), "must list at least one target");
        }
        let mut seen = HashSet::new();
        for (i, t) in up.targets.iter().enumerate() {
            let path = format!("{at}.targets[{i}]");
            match crate::upstream::dns::TargetSpec::parse(&t.address, t.weight) {
                Ok(spec) => {
                    if !seen.insert((spec.host, spec.port)) {
                        self.problem(
                            format!("{path}.address"),
                            format!("duplicate target {}", t.address),
                        );
                    }
                }
                Err(e) => self.problem(format!("{path}.address"), e),
            }
            self.range(&bounds::TARGET_WEIGHT, format!("{path}.weight"), t.weight);
        }
        match (up.policy, &up.hash_on) {
            (BalancePolicy::ConsistentHash, None) => self.problem(
                format!("{at}.hash_on"),
                "consistent_hash needs hash_on: \"header:NAME\", \"cookie:NAME\" or \"client_ip\"",
            ),
            (BalancePolicy::ConsistentHash, Some(h)) => {
                if let Err(e) = super::compile::parse_hash_on(h) {
                    self.problem(format!("{at}.hash_on"), e);
                }
            }
            (_, Some(_)) => self.problem(
                format!("{at}.hash_on"),
                "only used with policy = \"consistent_hash\"",
            ),
            (_, None) => {}
        }
        self.range(
            &bounds::CONNECT_TIMEOUT,
            format!("{at}.connect_timeout"),
            up.connect_timeout,
        );
        self.range(
            &bounds::READ_TIMEOUT,
            format!("{at}.read_timeout"),
            up.read_timeout,
        );
        self.range(
            &bounds::DNS_REFRESH,
            format!("{at}.dns_refresh"),
            up.dns_refresh,
        );
        if let Some(hc) = &up.health_check {
            self.health_check(&format!("{at}.health_check"), hc);
        }
        if let Some(t) = &up.tls {
            if let Err(p) = super::compile::compile_upstream_tls(&format!("{at}.tls"), t) {
                self.problems.push(p);
            }
        }
        if let Some(cb) = &up.circuit_breaker {
            self.range(
                &bounds::BREAKER_CONSECUTIVE_FAILURES,
                format!("{at}.circuit_breaker.consecutive_failures"),
                cb.consecutive_failures,
            );
            self.range(
                &bounds::BREAKER_COOLDOWN,
                format!("{at}.circuit_breaker.cooldown"),
                cb.cooldown,
            );
        }
        if let Some(f) = &up.fallback {
            self.respond(&format!("{at}.fallback"), f);
        }
        self.range(
            &bounds::RETRY_BUDGET_RATIO,
            format!("{at}.retry_budget.ratio"),
            up.retry_budget.ratio,
        );
        self.range(
            &bounds::RETRY_BUDGET_MIN_PER_SECOND,
            format!("{at}.retry_budget.min_per_second"),
            up.retry_budget.min_per_second,
        );
    }

    fn health_check(&mut self, at: &str, hc: &HealthCheckSection) {
        self.range(
            &bounds::HEALTH_INTERVAL,
            format!("{at}.interval"),
            hc.interval,
        );
        self.range(&bounds::HEALTH_TIMEOUT, format!("{at}.timeout"), hc.timeout);
        self.range(
            &bounds::HEALTH_THRESHOLD,
            format!("{at}.healthy_threshold"),
            hc.healthy_threshold,
        );
        self.range(
            &bounds::HEALTH_THRESHOLD,
            format!("{at}.unhealthy_threshold"),
            hc.unhealthy_threshold,
        );
        // Checked for TCP checks too, which ignore it: every number has its range.
        self.range(
            &bounds::HEALTH_EXPECTED_STATUS,
            format!("{at}.expected_status"),
            hc.expected_status,
        );
        if hc.kind == HealthCheckKind::Http {
            if !hc.path.starts_with('/') {
                self.problem(format!("{at}.path"), "must start with '/'");
            }
            if HeaderValue::from_str(&hc.host).is_err() {
                self.problem(format!("{at}.host"), "is not a valid Host header value");
            }
        }
    }

    /// A path in the config must be in the canonical form requests are matched in, or it
    /// could never match (or, as a rewrite, leave its prefix).
    fn canonical(&mut self, at: &str, path: &str) {
        match crate::policy::normalize::canonical_path(path.as_bytes(), true) {
            Ok(c) if c.path == path => {}
            Ok(c) => self.problem(
                at,
                format!("write the path in canonical form: {:?}", c.path),
            ),
            Err(why) => self.problem(at, format!("invalid path: {why}")),
        }
    }

    fn route(&mut self, at: &str, r: &RouteSection, upstreams: &BTreeMap<String, UpstreamSection>) {
        if r.name.is_empty() {
            self.problem(format!("{at}.name"), "must not be empty");
        }
        for (i, h) in r.hosts.iter().enumerate() {
            if let Err(e) = super::compile::parse_host_pattern(h) {
                self.problem(format!("{at}.hosts[{i}]"), e);
            }
        }
        match (&r.path_prefix, &r.path) {
            (Some(_), Some(_)) => self.problem(
                format!("{at}.path"),
                "set either path (exact) or path_prefix, not both",
            ),
            (Some(p), None) if !p.starts_with('/') => {
                self.problem(format!("{at}.path_prefix"), "must start with '/'")
            }
            (None, Some(p)) if !p.starts_with('/') => {
                self.problem(format!("{at}.path"), "must start with '/'")
            }
            (Some(p), None) => self.canonical(&format!("{at}.path_prefix"), p),
            (None, Some(p)) => self.canonical(&format!("{at}.path"), p),
            _ => {}
        }
        for (i, m) in r.methods.iter().enumerate() {
            if m.is_empty()
                || m.to_ascii_uppercase() != *m
                || Method::from_bytes(m.as_bytes()).is_err()
            {
                self.problem(
                    format!("{at}.methods[{i}]"),
                    format!("invalid method {m:?}; write it upper-case, e.g. \"GET\""),
                );
            }
        }
        for (name, value) in &r.headers {
            self.header(&format!("{at}.headers.{name}"), name, value);
        }
        self.range(&bounds::ROUTE_RETRIES, format!("{at}.retries"), r.retries);
        if let Some(d) = r.connect_timeout {
            self.range(&bounds::CONNECT_TIMEOUT, format!("{at}.connect_timeout"), d);
        }
        if let Some(d) = r.read_timeout {
            self.range(&bounds::READ_TIMEOUT, format!("{at}.read_timeout"), d);
        }
        if let Some(s) = r.max_body_size {
            self.range(&bounds::MAX_BODY_SIZE, format!("{at}.max_body_size"), s);
        }
        let actions = [
            r.upstream.is_some(),
            r.respond.is_some(),
            r.aggregate.is_some(),
        ];
        match actions.iter().filter(|a| **a).count() {
            0 => self.problem(
                at,
                "needs an upstream to proxy to, a [respond] section or an [aggregate] section",
            ),
            1 => {}
            _ => self.problem(at, "set only one of upstream, [respond] and [aggregate]"),
        }
        if let Some(agg) = &r.aggregate {
            self.aggregate(&format!("{at}.aggregate"), agg, upstreams);
        }
        if let Some(c) = &r.cache {
            self.route_cache(&format!("{at}.cache"), c, r);
        }
        match (&r.upstream, &r.respond) {
            (Some(_), Some(_)) | (None, None) => {}
            (Some(name), None) => {
                if !upstreams.contains_key(name) {
                    let defined: Vec<&str> = upstreams.keys().map(String::as_str).collect();
                    let defined = if defined.is_empty() {
                        "none".to_string()
                    } else {
                        defined.join(", ")
                    };
                    self.problem(
                        format!("{at}.upstream"),
                        format!("upstream {name:?} is not defined; defined: {defined}"),
                    );
                }
                self.rewrite(at, r);
            }
            (None, Some(resp)) => {
                if r.strip_prefix || r.rewrite_prefix.is_some() {
                    self.problem(
                        at,
                        "strip_prefix and rewrite_prefix apply only to proxied routes",
                    );
                }
                self.respond(&format!("{at}.respond"), resp);
            }
        }
    }

    fn cache(&mut self, c: &CacheSection) {
        let max_size = self.range(&bounds::CACHE_MAX_SIZE, "cache.max_size", c.max_size);
        let max_object = self.range(
            &bounds::CACHE_MAX_OBJECT_SIZE,
            "cache.max_object_size",
            c.max_object_size,
        );
        if max_size && max_object && c.max_object_size.0 > c.max_size.0 {
            self.problem(
                "cache.max_object_size",
                format!(
                    "must be at most cache.max_size ({}), got {}",
                    Limit::from(c.max_size),
                    Limit::from(c.max_object_size)
                ),
            );
        }
        self.range(
            &bounds::CACHE_LOCK_TIMEOUT,
            "cache.lock_timeout",
            c.lock_timeout,
        );
    }

    fn route_cache(&mut self, at: &str, c: &RouteCacheSection, r: &RouteSection) {
        if r.upstream.is_none() {
            self.problem(at, "caching applies only to routes with an upstream");
        }
        self.range(&bounds::CACHE_TTL, format!("{at}.ttl"), c.ttl);
        for (key, d) in [
            ("stale_while_revalidate", c.stale_while_revalidate),
            ("stale_if_error", c.stale_if_error),
        ] {
            if let Some(d) = d {
                self.range(&bounds::CACHE_STALE, format!("{at}.{key}"), d);
            }
        }
        match c.authenticated.as_str() {
            "bypass" | "shared" => {}
            "per_consumer" if r.auth.is_empty() => self.problem(
                format!("{at}.authenticated"),
                "per_consumer needs the route to authenticate (set auth)",
            ),
            "per_consumer" => {}
            other => self.problem(
                format!("{at}.authenticated"),
                format!(
                    "invalid value {other:?}; write \"bypass\", \"shared\" or \"per_consumer\""
                ),
            ),
        }
    }

    fn aggregate(
        &mut self,
        at: &str,
        agg: &AggregateSection,
        upstreams: &BTreeMap<String, UpstreamSection>,
    ) {
        if let Some(c) = &agg.capture {
            if let Err(e) = regex::Regex::new(c) {
                self.problem(format!("{at}.capture"), format!("invalid regex: {e}"));
            }
        }
        if agg.parts.is_empty() {
            self.problem(format!("{at}.parts"), "must list at least one part");
        }
        let mut names = HashSet::new();
        for (i, p) in agg.parts.iter().enumerate() {
            let pat = format!("{at}.parts[{i}]");
            if p.name.is_empty() || p.name == "errors" || !names.insert(p.name.as_str()) {
                self.problem(
                    format!("{pat}.name"),
                    format!(
                        "part names must be unique, non-empty and not \"errors\"; got {:?}",
                        p.name
                    ),
                );
            }
            if !upstreams.contains_key(&p.upstream) {
                let defined: Vec<&str> = upstreams.keys().map(String::as_str).collect();
                self.problem(
                    format!("{pat}.upstream"),
                    format!(
                        "upstream {:?} is not defined; defined: {}",
                        p.upstream,
                        defined.join(", ")
                    ),
                );
            }
            if !p.path.starts_with('/') {
                self.problem(format!("{pat}.path"), "must start with '/'");
            }
            self.range(
                &bounds::AGGREGATE_PART_TIMEOUT,
                format!("{pat}.timeout"),
                p.timeout,
            );
        }
    }

    fn respond(&mut self, at: &str, resp: &RespondSection) {
        self.range(&bounds::RESPOND_STATUS, format!("{at}.status"), resp.status);
        for (name, value) in &resp.headers {
            self.header(&format!("{at}.headers.{name}"), name, value);
        }
    }

    fn rewrite(&mut self, at: &str, r: &RouteSection) {
        if r.strip_prefix && r.rewrite_prefix.is_some() {
            self.problem(
                format!("{at}.rewrite_prefix"),
                "set either strip_prefix or rewrite_prefix, not both",
            );
        }
        if r.strip_prefix && r.path_prefix.is_none() {
            self.problem(format!("{at}.strip_prefix"), "needs path_prefix");
        }
        if let Some(p) = &r.rewrite_prefix {
            if !p.starts_with('/') {
                self.problem(format!("{at}.rewrite_prefix"), "must start with '/'");
            } else {
                self.canonical(&format!("{at}.rewrite_prefix"), p);
            }
            if r.path_prefix.is_none() && r.path.is_none() {
                self.problem(format!("{at}.rewrite_prefix"), "needs path_prefix or path");
            }
        }
    }

    fn cidrs(&mut self, at: &str, list: &[String]) {
        for (i, c) in list.iter().enumerate() {
            if let Err(e) = parse_net(c) {
                self.problem(format!("{at}[{i}]"), e);
            }
        }
    }

    fn header_name(&mut self, path: &str, name: &str) {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            self.problem(path, format!("invalid header name {name:?}"));
        }
    }

    fn limits(&mut self, l: &LimitsSection) {
        self.range(
            &bounds::LIMITS_MAX_HEADER_BYTES,
            "limits.max_header_bytes",
            l.max_header_bytes,
        );
        self.range(
            &bounds::LIMITS_MAX_HEADERS,
            "limits.max_headers",
            l.max_headers,
        );
        self.range(
            &bounds::MAX_BODY_SIZE,
            "limits.max_body_size",
            l.max_body_size,
        );
        self.range(
            &bounds::LIMITS_HEADER_TIMEOUT,
            "limits.header_timeout",
            l.header_timeout,
        );
        self.range(
            &bounds::LIMITS_BODY_TIMEOUT,
            "limits.body_timeout",
            l.body_timeout,
        );
        self.range(
            &bounds::LIMITS_MAX_CONNECTIONS,
            "limits.max_connections",
            l.max_connections,
        );
        self.range(
            &bounds::LIMITS_MAX_CONNECTIONS,
            "limits.max_connections_per_ip",
            l.max_connections_per_ip,
        );
        self.range(
            &bounds::LIMITS_KEEPALIVE_TIMEOUT,
            "limits.keepalive_timeout",
            l.keepalive_timeout,
        );
        self.range(
            &bounds::LIMITS_H2_IDLE_TIMEOUT,
            "limits.h2_idle_timeout",
            l.h2_idle_timeout,
        );
        self.range(
            &bounds::LIMITS_MAX_INFORMATIONAL,
            "limits.max_informational_responses",
            l.max_informational_responses,
        );
        self.cidrs("limits.trusted_proxies", &l.trusted_proxies);
        self.cidrs("limits.ip_allow", &l.ip_allow);
        self.cidrs("limits.ip_deny", &l.ip_deny);
    }

    fn auth(&mut self, a: &AuthSection) {
        for (name, jwt) in &a.jwt {
            let at = format!("auth.jwt.{name}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                self.problem(
                    &at,
                    "provider names may use only letters, digits, '-', '_' and '.'",
                );
            }
            self.problems.extend(JwtProvider::validate(&at, jwt));
        }
        self.header_name("auth.api_key.header", &a.api_key.header);
        self.header_name("auth.api_key.consumer_header", &a.api_key.consumer_header);
        for (i, h) in a.strip_headers.iter().enumerate() {
            self.header_name(&format!("auth.strip_headers[{i}]"), h);
        }
    }

    fn consumer(&mut self, name: &str, c: &ConsumerSection) {
        let at = format!("consumers.{name}");
        if c.keys.is_empty() && c.key_hashes.is_empty() {
            self.problem(&at, "needs at least one entry in keys or key_hashes");
        }
        for (i, k) in c.keys.iter().enumerate() {
            if k.len() < 16 {
                self.problem(
                    format!("{at}.keys[{i}]"),
                    "API keys must be at least 16 characters",
                );
            }
        }
        for (i, h) in c.key_hashes.iter().enumerate() {
            if let Err(e) = crate::policy::api_key::parse_key_hash(h) {
                self.problem(format!("{at}.key_hashes[{i}]"), e);
            }
        }
        self.problems.extend(RateLimits::validate(
            &format!("{at}.rate_limits"),
            &c.rate_limits,
        ));
    }

    fn route_policy(
        &mut self,
        at: &str,
        r: &RouteSection,
        auth: &AuthSection,
        consumers: &BTreeMap<String, ConsumerSection>,
    ) {
        for (i, m) in r.auth.iter().enumerate() {
            let path = format!("{at}.auth[{i}]");
            match m.split_once(':') {
                None if m == "api_key" => {
                    if consumers.is_empty() {
                        self.problem(
                            path,
                            "api_key needs at least one [consumers.NAME] with keys",
                        );
                    }
                }
                Some(("jwt", provider)) => {
                    if !auth.jwt.contains_key(provider) {
                        let defined: Vec<&str> = auth.jwt.keys().map(String::as_str).collect();
                        let defined = if defined.is_empty() {
                            "none".into()
                        } else {
                            defined.join(", ")
                        };
                        self.problem(
                            path,
                            format!("JWT provider {provider:?} is not defined; defined: {defined}"),
                        );
                    }
                }
                _ => self.problem(
                    path,
                    format!("unknown auth method {m:?}; use \"api_key\" or \"jwt:PROVIDER\""),
                ),
            }
        }
        if !r.roles.is_empty() && r.auth.is_empty() {
            self.problem(
                format!("{at}.roles"),
                "roles need auth methods on the route",
            );
        }
        self.problems.extend(RateLimits::validate(
            &format!("{at}.rate_limits"),
            &r.rate_limits,
        ));
        self.cidrs(&format!("{at}.ip_allow"), &r.ip_allow);
        self.cidrs(&format!("{at}.ip_deny"), &r.ip_deny);
        if let Some(c) = &r.cors {
            if let Some(d) = c.max_age {
                self.range(&bounds::CORS_MAX_AGE, format!("{at}.cors.max_age"), d);
            }
            if let Err(e) = CorsPolicy::new(
                &c.allow_origins,
                &c.allow_methods,
                &c.allow_headers,
                &c.expose_headers,
                c.allow_credentials,
                c.max_age.map(|d| d.0),
            ) {
                let (field, message) = e;
                let path = match field.as_str() {
                    "" => format!("{at}.cors"),
                    f => format!("{at}.cors.{f}"),
                };
                self.problem(path, message);
            }
        }
        for (key, e) in [
            ("request_headers", &r.request_headers),
            ("response_headers", &r.response_headers),
        ] {
            if let Err(msg) =
                crate::transform::HeaderTransform::compile(&e.set, &e.append, &e.remove, &e.rename)
            {
                self.problem(format!("{at}.{key}"), msg);
            }
        }
        if let Some(rx) = &r.rewrite_regex {
            if let Err(e) = regex::Regex::new(&rx.pattern) {
                self.problem(
                    format!("{at}.rewrite_regex.pattern"),
                    format!("invalid regex: {e}"),
                );
            }
            if r.strip_prefix || r.rewrite_prefix.is_some() {
                self.problem(
                    format!("{at}.rewrite_regex"),
                    "set either rewrite_regex or strip_prefix/rewrite_prefix, not both",
                );
            }
            if r.upstream.is_none() {
                self.problem(
                    format!("{at}.rewrite_regex"),
                    "applies only to proxied routes",
                );
            }
        }
    }

    fn header(&mut self, path: &str, name: &str, value: &str) {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            self.problem(path, format!("invalid header name {name:?}"));
        }
        if HeaderValue::from_str(value).is_err() {
            self.problem(path, "invalid header value");
        }
    }
}
