//! Checks that a parsed configuration means something runnable, collecting every problem
//! (not just the first) with its key path. Compilation relies on these checks.

use super::file::*;
use super::Problem;
use crate::policy::cors::CorsPolicy;
use crate::policy::ip::parse_net;
use crate::policy::jwt::JwtProvider;
use crate::policy::rate_limit::{RateLimitStore, RateLimits};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;

/// Most retries a route may ask for; more only multiplies load during an outage.
pub const MAX_RETRIES: usize = 10;
/// Largest weight of one target.
pub const MAX_WEIGHT: usize = 1000;

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

    fn server(&mut self, s: &ServerSection) {
        if s.threads == 0 {
            self.problem("server.threads", "must be at least 1");
        }
        if s.client_read_buffer.0 < 1024 || s.client_read_buffer.0 > 1024 * 1024 {
            self.problem("server.client_read_buffer", "must be between 1KiB and 1MiB");
        }
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
        if a.buffer_lines == 0 {
            self.problem("access_log.buffer_lines", "must be at least 1");
        }
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
            if t.weight == 0 || t.weight > MAX_WEIGHT {
                self.problem(
                    format!("{path}.weight"),
                    format!("must be between 1 and {MAX_WEIGHT}, got {}", t.weight),
                );
            }
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
        if up.connect_timeout.0.is_zero() {
            self.problem(format!("{at}.connect_timeout"), "must be greater than zero");
        }
        if up.dns_refresh.0 < std::time::Duration::from_secs(1) {
            self.problem(format!("{at}.dns_refresh"), "must be at least 1s");
        }
        if up.read_timeout.0.is_zero() {
            self.problem(format!("{at}.read_timeout"), "must be greater than zero");
        }
        if let Some(hc) = &up.health_check {
            self.health_check(&format!("{at}.health_check"), hc);
        }
        if let Some(t) = &up.tls {
            if let Err(p) = super::compile::compile_upstream_tls(&format!("{at}.tls"), t) {
                self.problems.push(p);
            }
        }
        if let Some(cb) = &up.circuit_breaker {
            if cb.consecutive_failures == 0 {
                self.problem(
                    format!("{at}.circuit_breaker.consecutive_failures"),
                    "must be at least 1",
                );
            }
            if cb.cooldown.0.is_zero() {
                self.problem(
                    format!("{at}.circuit_breaker.cooldown"),
                    "must be greater than zero",
                );
            }
        }
        if let Some(f) = &up.fallback {
            self.respond(&format!("{at}.fallback"), f);
        }
        if !(0.0..=10.0).contains(&up.retry_budget.ratio) {
            self.problem(
                format!("{at}.retry_budget.ratio"),
                "must be between 0 and 10",
            );
        }
    }

    fn health_check(&mut self, at: &str, hc: &HealthCheckSection) {
        if hc.interval.0.is_zero() {
            self.problem(format!("{at}.interval"), "must be greater than zero");
        }
        if hc.timeout.0.is_zero() {
            self.problem(format!("{at}.timeout"), "must be greater than zero");
        }
        if hc.healthy_threshold == 0 {
            self.problem(format!("{at}.healthy_threshold"), "must be at least 1");
        }
        if hc.unhealthy_threshold == 0 {
            self.problem(format!("{at}.unhealthy_threshold"), "must be at least 1");
        }
        if hc.kind == HealthCheckKind::Http {
            if !hc.path.starts_with('/') {
                self.problem(format!("{at}.path"), "must start with '/'");
            }
            if StatusCode::from_u16(hc.expected_status).is_err() {
                self.problem(
                    format!("{at}.expected_status"),
                    format!("{} is not an HTTP status code", hc.expected_status),
                );
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
        if r.retries > MAX_RETRIES {
            self.problem(
                format!("{at}.retries"),
                format!("must be at most {MAX_RETRIES}, got {}", r.retries),
            );
        }
        for (key, d) in [
            ("connect_timeout", &r.connect_timeout),
            ("read_timeout", &r.read_timeout),
        ] {
            if d.is_some_and(|d| d.0.is_zero()) {
                self.problem(format!("{at}.{key}"), "must be greater than zero");
            }
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
        if c.max_size.0 == 0 {
            self.problem("cache.max_size", "must be greater than zero");
        }
        if c.max_object_size.0 == 0 || c.max_object_size.0 > c.max_size.0 {
            self.problem(
                "cache.max_object_size",
                format!(
                    "must be greater than zero and at most cache.max_size ({} bytes)",
                    c.max_size.0
                ),
            );
        }
        if c.lock_timeout.0.is_zero() {
            self.problem("cache.lock_timeout", "must be greater than zero");
        }
    }

    fn route_cache(&mut self, at: &str, c: &RouteCacheSection, r: &RouteSection) {
        if r.upstream.is_none() {
            self.problem(at, "caching applies only to routes with an upstream");
        }
        if c.ttl.0.is_zero() {
            self.problem(format!("{at}.ttl"), "must be greater than zero");
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
            if p.timeout.0.is_zero() {
                self.problem(format!("{pat}.timeout"), "must be greater than zero");
            }
        }
    }

    fn respond(&mut self, at: &str, resp: &RespondSection) {
        if StatusCode::from_u16(resp.status).is_err() || resp.status < 200 {
            self.problem(
                format!("{at}.status"),
                format!("{} is not a final HTTP status code (200-599)", resp.status),
            );
        }
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
        if l.max_headers == 0 {
            self.problem("limits.max_headers", "must be at least 1");
        }
        if l.max_header_bytes.0 < 1024 {
            self.problem("limits.max_header_bytes", "must be at least 1KiB");
        }
        if l.max_body_size.0 == 0 {
            self.problem("limits.max_body_size", "must be greater than zero");
        }
        if l.header_timeout.0.is_zero() {
            self.problem("limits.header_timeout", "must be greater than zero");
        }
        if l.keepalive_timeout.0 < std::time::Duration::from_secs(1) {
            self.problem("limits.keepalive_timeout", "must be at least 1s");
        }
        if l.h2_idle_timeout.0.is_zero() {
            self.problem("limits.h2_idle_timeout", "must be greater than zero");
        }
        if l.body_timeout.0.is_zero() {
            self.problem("limits.body_timeout", "must be greater than zero");
        }
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
        if r.max_body_size.is_some_and(|s| s.0 == 0) {
            self.problem(format!("{at}.max_body_size"), "must be greater than zero");
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
