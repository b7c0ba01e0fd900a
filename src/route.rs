//! The compiled route table and request matching.
//!
//! Precedence, most specific first: an exact host beats a `*.wildcard` (longer suffix first),
//! which beats a route with no host; within those, an exact path beats a prefix, a longer
//! prefix beats a shorter one, a route with methods or headers beats one without, and config
//! order breaks the remaining ties. What a route does once matched is left to the gateway.

use crate::config::file::{RegexRewriteSection, RouteSection};
use crate::config::{bounds, FromConfig, Problem};
use crate::transform::{HeaderTransform, JsonRename};
use crate::upstream::UpstreamGroup;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How a route matches the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Any path.
    Any,
    /// Segment-aware prefix: `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`.
    Prefix(String),
    /// Exactly this path.
    Exact(String),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => match path.strip_prefix(p.as_str()) {
                Some(rest) => rest.is_empty() || p.ends_with('/') || rest.starts_with('/'),
                None => false,
            },
        }
    }

    /// Higher is more specific.
    fn rank(&self) -> (u8, usize) {
        match self {
            PathMatch::Exact(p) => (2, p.len()),
            PathMatch::Prefix(p) => (1, p.len()),
            PathMatch::Any => (0, 0),
        }
    }
}

pub use crate::config::types::HostPattern;

use crate::config::types::header_pairs;
pub(crate) use crate::error::DirectResponse;

/// How the request path changes before it goes upstream.
#[derive(Debug, Clone)]
pub(crate) enum PathRewrite {
    None,
    /// Replace the first `len` bytes of the path (the matched prefix) with `with`.
    Prefix {
        len: usize,
        with: String,
    },
    /// Replace the first match of `re` with `with` (`$1`, `${name}` expand captures).
    Regex {
        re: regex::Regex,
        with: String,
    },
}

impl PathRewrite {
    /// The upstream path and query for a canonical `path`, or `None` when it is unchanged.
    /// The result is canonical again (dot segments of a regex replacement resolved), and a
    /// rewrite that would climb above `/` is refused.
    pub(crate) fn apply(
        &self,
        path: &str,
        query: Option<&str>,
        merge_slashes: bool,
    ) -> Result<Option<String>, &'static str> {
        let rewritten = match self {
            PathRewrite::None => return Ok(None),
            PathRewrite::Regex { re, with } => {
                if !re.is_match(path) {
                    return Ok(None);
                }
                let mut out = re.replace(path, with.as_str()).into_owned();
                if !out.starts_with('/') {
                    out.insert(0, '/');
                }
                out
            }
            PathRewrite::Prefix { len, with } => {
                let rest = path.get(*len..).unwrap_or("");
                let mut out = String::with_capacity(with.len() + rest.len() + 1);
                out.push_str(with);
                if rest.is_empty() {
                    if out.is_empty() {
                        out.push('/');
                    }
                } else if out.ends_with('/') && rest.starts_with('/') {
                    out.push_str(&rest[1..]);
                } else {
                    if !rest.starts_with('/') && !out.ends_with('/') {
                        out.push('/');
                    }
                    out.push_str(rest);
                }
                if !out.starts_with('/') {
                    out.insert(0, '/');
                }
                out
            }
        };
        let canonical =
            crate::policy::normalize::canonical_path(rewritten.as_bytes(), merge_slashes)?;
        let mut out = canonical.path.into_owned();
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        Ok(Some(out))
    }
}

/// A route's transforms, compiled.
#[derive(Debug, Default)]
pub(crate) struct RouteTransform {
    pub request: crate::transform::HeaderTransform,
    pub response: crate::transform::HeaderTransform,
    /// Security headers added to responses that lack them.
    pub security: Vec<(pingora::http::SpelledName, HeaderValue)>,
    pub json_request: crate::transform::JsonRename,
    pub json_response: crate::transform::JsonRename,
}

/// Where a proxied route sends its requests.
pub(crate) struct ProxyAction {
    pub upstream: Arc<UpstreamGroup>,
    pub rewrite: PathRewrite,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub retries: usize,
    /// Retry non-idempotent requests too when connecting failed.
    pub retry_unsent: bool,
    /// The failures retried on another target.
    pub retry_on: crate::upstream::retry::RetryOn,
    /// Idle time allowed on an upgraded connection.
    pub websocket_idle: Duration,
    /// Bridge gRPC-Web requests to gRPC.
    pub grpc_web: bool,
    /// Answer HTTP/JSON calls with gRPC calls to the group.
    pub transcode: Option<Arc<crate::transcode::Transcoder>>,
}

pub(crate) enum RouteAction {
    Proxy(ProxyAction),
    Respond(DirectResponse),
    Aggregate(crate::aggregate::Aggregate),
}

/// A compiled route.
pub struct Route {
    pub(crate) name: Arc<str>,
    pub(crate) hosts: Vec<HostPattern>,
    pub(crate) path: PathMatch,
    pub(crate) methods: Vec<Method>,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) action: RouteAction,
    pub(crate) policy: crate::policy::RoutePolicy,
    pub(crate) transform: RouteTransform,
    /// Response caching, when the route has `[routes.cache]`.
    pub(crate) cache: Option<crate::cache::RouteCache>,
    /// Response compression, when the route has `[routes.compression]`.
    pub(crate) compression: Option<crate::compress::Compression>,
    /// Metric handles of this route.
    pub(crate) stats: crate::observe::metrics::RouteStats,
    /// `%2F` and `%5C` in the path are accepted (and passed on encoded).
    pub(crate) allow_encoded_slashes: bool,
    /// Position in the config file, the last tie-breaker.
    pub(crate) order: usize,
}

/// What a route is built against: the rest of the generation being assembled.
pub(crate) struct RouteContext<'a> {
    pub groups: &'a crate::upstream::Groups,
    pub policy: crate::policy::PolicyContext<'a>,
    /// The gateway-wide security headers (`[security_headers]`).
    pub security: &'a [(pingora::http::SpelledName, HeaderValue)],
}

/// The rewrite of a proxied route: strip or replace the matched prefix, or a regex.
fn path_rewrite(
    at: &str,
    (strip, with, regex): (bool, &Option<String>, &Option<RegexRewriteSection>),
    path_match: &PathMatch,
    problems: &mut Vec<Problem>,
) -> PathRewrite {
    let matched_len = match path_match {
        PathMatch::Prefix(p) | PathMatch::Exact(p) => p.trim_end_matches('/').len(),
        PathMatch::Any => 0,
    };
    match (strip, with, regex) {
        (strip, with, Some(rx)) => {
            if strip || with.is_some() {
                problems.push(Problem::new(
                    format!("{at}.rewrite_regex"),
                    "set either rewrite_regex or strip_prefix/rewrite_prefix, not both",
                ));
            }
            match regex::Regex::new(&rx.pattern) {
                Ok(re) => PathRewrite::Regex {
                    re,
                    with: rx.replace.clone(),
                },
                Err(e) => {
                    problems.push(Problem::new(
                        format!("{at}.rewrite_regex.pattern"),
                        format!("invalid regex: {e}"),
                    ));
                    PathRewrite::None
                }
            }
        }
        (true, Some(_), None) => {
            problems.push(Problem::new(
                format!("{at}.rewrite_prefix"),
                "set either strip_prefix or rewrite_prefix, not both",
            ));
            PathRewrite::None
        }
        (true, None, None) => {
            if !matches!(path_match, PathMatch::Prefix(_)) {
                problems.push(Problem::new(
                    format!("{at}.strip_prefix"),
                    "needs path_prefix",
                ));
            }
            PathRewrite::Prefix {
                len: matched_len,
                with: String::new(),
            }
        }
        (false, Some(with), None) => {
            let key = format!("{at}.rewrite_prefix");
            canonical(&key, with, problems);
            if matches!(path_match, PathMatch::Any) {
                problems.push(Problem::new(key, "needs path_prefix or path"));
            }
            PathRewrite::Prefix {
                len: matched_len,
                with: with.clone(),
            }
        }
        (false, None, None) => PathRewrite::None,
    }
}

/// A path in the config must be in the canonical form requests are matched in, or it
/// could never match (or, as a rewrite, leave its prefix).
fn canonical(at: &str, path: &str, problems: &mut Vec<Problem>) {
    if !path.starts_with('/') {
        problems.push(Problem::new(at, "must start with '/'"));
        return;
    }
    match crate::policy::normalize::canonical_path(path.as_bytes(), true) {
        Ok(c) if c.path == path => {}
        Ok(c) => problems.push(Problem::new(
            at,
            format!("write the path in canonical form: {:?}", c.path),
        )),
        Err(why) => problems.push(Problem::new(at, format!("invalid path: {why}"))),
    }
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("order", &self.order)
            .finish()
    }
}

impl Route {
    /// A route that answers 200 with an empty body, for benches of matching.
    pub fn direct(name: &str, hosts: Vec<HostPattern>, path: PathMatch, order: usize) -> Route {
        Route {
            name: name.into(),
            hosts,
            path,
            methods: vec![],
            headers: vec![],
            action: RouteAction::Respond(DirectResponse {
                status: StatusCode::OK,
                headers: vec![],
                body: Bytes::new(),
            }),
            policy: Default::default(),
            transform: Default::default(),
            cache: None,
            compression: None,
            stats: Default::default(),
            allow_encoded_slashes: false,
            order,
        }
    }

    /// The route's name (the `route` label of metrics and logs).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The proxy action, when the route proxies.
    pub(crate) fn proxy(&self) -> Option<&ProxyAction> {
        match &self.action {
            RouteAction::Proxy(action) => Some(action),
            _ => None,
        }
    }

    /// The proxy action and its transcoder, when the route transcodes HTTP/JSON to gRPC.
    pub(crate) fn transcoding(&self) -> Option<(&ProxyAction, &crate::transcode::Transcoder)> {
        let action = self.proxy()?;
        Some((action, action.transcode.as_deref()?))
    }

    /// Its position in the file, the last tie-breaker (the assembler sets it).
    pub(crate) fn at_position(mut self, order: usize) -> Route {
        self.order = order;
        self
    }
}

impl FromConfig<RouteContext<'_>> for Route {
    type Section = RouteSection;

    /// `routes[N]`, built in one pass: every key of the section is read here or by the
    /// route's policies ([`crate::policy::RoutePolicy`]), and every problem collected under
    /// `at`.
    fn from_config(
        at: &str,
        r: &RouteSection,
        cx: &RouteContext<'_>,
        problems: &mut Vec<Problem>,
    ) -> Option<Route> {
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
            request_headers,
            response_headers,
            rewrite_regex,
            security_headers,
            json_rename_request,
            json_rename_response,
            cache,
            compression,
            websocket_idle_timeout,
            grpc_web,
            transcode,
            // The policy keys (`auth`, `roles`, `rate_limits`, `ip_allow`, `ip_deny`, `cors`,
            // `max_body_size`...) are read by the policies themselves (`RoutePolicy`).
            ..
        } = r;
        let at = at.to_string();
        let before = problems.len();
        let path_match = match (path_prefix, path) {
            (Some(_), Some(_)) => {
                problems.push(Problem::new(
                    format!("{at}.path"),
                    "set either path (exact) or path_prefix, not both",
                ));
                PathMatch::Any
            }
            (Some(p), None) => {
                canonical(&format!("{at}.path_prefix"), p, problems);
                PathMatch::Prefix(p.clone())
            }
            (None, Some(p)) => {
                canonical(&format!("{at}.path"), p, problems);
                PathMatch::Exact(p.clone())
            }
            (None, None) => PathMatch::Any,
        };
        let methods = methods
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.get(&format!("{at}.methods[{i}]"), problems).cloned())
            .collect();
        let headers = header_pairs(&format!("{at}.headers"), headers, problems);
        bounds::ROUTE_RETRIES.check(&format!("{at}.retries"), *retries, problems);
        bounds::WEBSOCKET_IDLE_TIMEOUT.check(
            &format!("{at}.websocket_idle_timeout"),
            *websocket_idle_timeout,
            problems,
        );
        for (key, d) in [
            ("connect_timeout", connect_timeout),
            ("read_timeout", read_timeout),
        ] {
            if let Some(d) = d {
                let range = if key == "connect_timeout" {
                    &bounds::CONNECT_TIMEOUT
                } else {
                    &bounds::READ_TIMEOUT
                };
                range.check(&format!("{at}.{key}"), *d, problems);
            }
        }
        let proxied = upstream.is_some();
        if !proxied {
            if *strip_prefix || rewrite_prefix.is_some() {
                problems.push(Problem::new(
                    &at,
                    "strip_prefix and rewrite_prefix apply only to proxied routes",
                ));
            }
            if rewrite_regex.is_some() {
                problems.push(Problem::new(
                    format!("{at}.rewrite_regex"),
                    "applies only to proxied routes",
                ));
            }
            for (key, on) in [("grpc_web", *grpc_web), ("transcode", transcode.is_some())] {
                if on {
                    problems.push(Problem::new(
                        format!("{at}.{key}"),
                        "applies only to proxied routes",
                    ));
                }
            }
        }
        let action = match (upstream, respond, aggregate) {
            (Some(up), None, None) => {
                let keys = (*strip_prefix, rewrite_prefix, rewrite_regex);
                let rewrite = path_rewrite(&at, keys, &path_match, problems);
                cx.groups
                    .get(&format!("{at}.upstream"), up, problems)
                    .and_then(|group| {
                        for (key, on) in
                            [("grpc_web", *grpc_web), ("transcode", transcode.is_some())]
                        {
                            if on && !group.h2 {
                                problems.push(Problem::new(
                                    format!("{at}.{key}"),
                                    format!(
                                        "calls gRPC over HTTP/2: set h2 = true on upstream {up:?}"
                                    ),
                                ));
                                return None;
                            }
                        }
                        let transcode = match transcode {
                            Some(t) => Some(Arc::new(crate::transcode::Transcoder::from_config(
                                &format!("{at}.transcode"),
                                t,
                                &(),
                                problems,
                            )?)),
                            None => None,
                        };
                        Some(RouteAction::Proxy(ProxyAction {
                            rewrite,
                            connect_timeout: connect_timeout.map_or(group.connect_timeout, |d| d.0),
                            read_timeout: read_timeout.map_or(group.read_timeout, |d| d.0),
                            retries: *retries,
                            retry_unsent: *retry_unsent,
                            retry_on: crate::upstream::retry::RetryOn::of(retry_on),
                            websocket_idle: websocket_idle_timeout.0,
                            grpc_web: *grpc_web,
                            transcode,
                            upstream: group,
                        }))
                    })
            }
            (None, Some(resp), None) => {
                DirectResponse::from_config(&format!("{at}.respond"), resp, &(), problems)
                    .map(RouteAction::Respond)
            }
            (None, None, Some(agg)) => crate::aggregate::Aggregate::from_config(
                &format!("{at}.aggregate"),
                agg,
                cx.groups,
                problems,
            )
            .map(RouteAction::Aggregate),
            (None, None, None) => {
                problems.push(Problem::new(
                    &at,
                    "needs an upstream to proxy to, a [respond] section or an [aggregate] section",
                ));
                None
            }
            _ => {
                problems.push(Problem::new(
                    &at,
                    "set only one of upstream, [respond] and [aggregate]",
                ));
                None
            }
        };
        let policy = crate::policy::RoutePolicy::from_config(&at, r, &cx.policy, problems);
        let transform = RouteTransform {
            request: HeaderTransform::from_config(
                &format!("{at}.request_headers"),
                request_headers,
                &(),
                problems,
            )
            .unwrap_or_default(),
            response: HeaderTransform::from_config(
                &format!("{at}.response_headers"),
                response_headers,
                &(),
                problems,
            )
            .unwrap_or_default(),
            security: match security_headers {
                Some(false) => Vec::new(),
                Some(true) if cx.security.is_empty() => crate::transform::security_headers(None),
                _ => cx.security.to_vec(),
            },
            json_request: JsonRename::from_config(
                &format!("{at}.json_rename_request"),
                json_rename_request,
                &(),
                problems,
            )
            .unwrap_or_default(),
            json_response: JsonRename::from_config(
                &format!("{at}.json_rename_response"),
                json_rename_response,
                &(),
                problems,
            )
            .unwrap_or_default(),
        };
        let cache = cache.as_ref().and_then(|c| {
            let facts = crate::cache::RouteFacts {
                proxied,
                authenticates: !r.auth.is_empty(),
            };
            crate::cache::RouteCache::from_config(&format!("{at}.cache"), c, &facts, problems)
        });
        let compression = compression.as_ref().and_then(|c| {
            let at = format!("{at}.compression");
            if !proxied {
                problems.push(Problem::new(&at, "applies only to proxied routes"));
            }
            crate::compress::Compression::from_config(&at, c, &(), problems)
        });
        if problems.len() > before {
            return None;
        }
        Some(Route {
            name: name.as_str().into(),
            hosts: hosts.clone(),
            path: path_match,
            methods,
            headers,
            action: action?,
            policy: policy?,
            transform,
            cache,
            compression,
            stats: Default::default(),
            allow_encoded_slashes: *allow_encoded_slashes,
            order: 0,
        })
    }
}

impl Route {
    /// What this route matches, in words (`tollgate explain`).
    pub(crate) fn describe_match(&self) -> String {
        let mut parts = Vec::new();
        if !self.hosts.is_empty() {
            let hosts: Vec<String> = self.hosts.iter().map(host_pattern_text).collect();
            parts.push(format!("host {}", hosts.join(" or ")));
        }
        parts.push(match &self.path {
            PathMatch::Any => "any path".to_string(),
            PathMatch::Exact(p) => format!("path {p} exactly"),
            PathMatch::Prefix(p) => format!("path {p} and below"),
        });
        if !self.methods.is_empty() {
            let m: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
            parts.push(format!("method {}", m.join(" or ")));
        }
        for (name, value) in &self.headers {
            parts.push(format!("header {name}: {}", value.to_str().unwrap_or("?")));
        }
        parts.join(", ")
    }

    /// Why this route does not take a request (empty: it matches), with the same tests as
    /// [`RouteTable::find`].
    pub(crate) fn mismatches(
        &self,
        host: Option<&str>,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Vec<String> {
        let mut why = Vec::new();
        if !self.hosts.is_empty() {
            let host = host.map(normalize_host);
            let hit = host.as_deref().is_some_and(|h| {
                self.hosts.iter().any(|p| match p {
                    HostPattern::Exact(e) => h == e,
                    HostPattern::Suffix(s) => h.len() > s.len() && h.ends_with(s.as_str()),
                })
            });
            if !hit {
                let hosts: Vec<String> = self.hosts.iter().map(host_pattern_text).collect();
                why.push(format!(
                    "host {} is not {}",
                    host.as_deref().unwrap_or("(none)"),
                    hosts.join(" or ")
                ));
            }
        }
        if !self.path.matches(path) {
            why.push(match &self.path {
                PathMatch::Exact(p) => format!("path is not exactly {p}"),
                PathMatch::Prefix(p) => format!("path is not {p} or below it"),
                PathMatch::Any => unreachable!("any path matches"),
            });
        }
        if !self.methods.is_empty() && !self.methods.contains(method) {
            let m: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
            why.push(format!("method {method} is not {}", m.join(" or ")));
        }
        for (name, value) in &self.headers {
            if !headers.get_all(name).iter().any(|v| v == value) {
                why.push(format!(
                    "header {name} is not {:?}",
                    value.to_str().unwrap_or("?")
                ));
            }
        }
        why
    }

    /// Why `self` (the route [`RouteTable::find`] chose) wins over `other`, which matches too.
    pub(crate) fn precedence_over(&self, other: &Route, host: Option<&str>) -> &'static str {
        let host = host.map(normalize_host);
        let host_kind = |r: &Route| -> u8 {
            let Some(h) = host.as_deref() else { return 0 };
            if r.hosts
                .iter()
                .any(|p| matches!(p, HostPattern::Exact(e) if e == h))
            {
                2
            } else if r.hosts.is_empty() {
                0
            } else {
                1
            }
        };
        let (a, b) = (host_kind(self), host_kind(other));
        if a != b {
            return if a == 2 {
                "an exact host beats a wildcard or no host"
            } else {
                "a host wildcard beats no host"
            };
        }
        let (ka, la) = self.path.rank();
        let (kb, lb) = other.path.rank();
        if ka != kb {
            return "an exact path beats a prefix";
        }
        if la != lb {
            return "a longer path prefix wins";
        }
        if self.methods.is_empty() != other.methods.is_empty()
            || self.headers.len() != other.headers.len()
        {
            return "a route with methods or headers to match beats one without";
        }
        "it comes first in the file"
    }

    fn matches_rest(&self, path: &str, method: &Method, headers: &HeaderMap) -> bool {
        self.path.matches(path)
            && (self.methods.is_empty() || self.methods.contains(method))
            && self
                .headers
                .iter()
                .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }

    fn rank(&self) -> impl Ord {
        let (kind, len) = self.path.rank();
        (
            kind,
            len,
            !self.methods.is_empty(),
            self.headers.len(),
            std::cmp::Reverse(self.order),
        )
    }
}

/// Routes indexed by host, each bucket ordered most specific first.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    exact: HashMap<String, Vec<usize>>,
    /// (suffix, bucket), longest suffix first.
    wildcard: Vec<(String, Vec<usize>)>,
    any_host: Vec<usize>,
}

impl RouteTable {
    /// The table of `routes`, most specific first.
    pub fn new(routes: Vec<Route>) -> Self {
        let routes: Vec<Arc<Route>> = routes.into_iter().map(Arc::new).collect();
        let mut table = RouteTable::default();
        let mut wildcard: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, r) in routes.iter().enumerate() {
            if r.hosts.is_empty() {
                table.any_host.push(i);
            }
            for h in &r.hosts {
                match h {
                    HostPattern::Exact(name) => {
                        table.exact.entry(name.clone()).or_default().push(i)
                    }
                    HostPattern::Suffix(s) => wildcard.entry(s.clone()).or_default().push(i),
                }
            }
        }
        table.wildcard = wildcard.into_iter().collect();
        table
            .wildcard
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        let sort = |bucket: &mut Vec<usize>| {
            bucket.sort_by(|a, b| routes[*b].rank().cmp(&routes[*a].rank()));
            bucket.dedup();
        };
        table.exact.values_mut().for_each(sort);
        table.wildcard.iter_mut().for_each(|(_, b)| sort(b));
        sort(&mut table.any_host);
        table.routes = routes;
        table
    }

    /// The routes, in matching order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The most specific route for a request. `host` may carry a port and any case.
    pub fn find(
        &self,
        host: Option<&str>,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<&Arc<Route>> {
        let first = |bucket: &[usize]| {
            bucket
                .iter()
                .map(|i| &self.routes[*i])
                .find(|r| r.matches_rest(path, method, headers))
        };
        if let Some(host) = host.map(normalize_host) {
            let host = host.as_ref();
            if let Some(r) = self.exact.get(host).and_then(|b| first(b)) {
                return Some(r);
            }
            for (suffix, bucket) in &self.wildcard {
                if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                    if let Some(r) = first(bucket) {
                        return Some(r);
                    }
                }
            }
        }
        first(&self.any_host)
    }
}

fn host_pattern_text(p: &HostPattern) -> String {
    match p {
        HostPattern::Exact(h) => h.clone(),
        HostPattern::Suffix(s) => format!("*{s}"),
    }
}

/// Lower-case host without port; borrows when nothing changes.
fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let host = if host.starts_with('[') {
        // IPv6 literal: keep the brackets, drop the port.
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, hosts: &[HostPattern], path: PathMatch, order: usize) -> Route {
        Route::direct(name, hosts.to_vec(), path, order)
    }

    fn find<'a>(t: &'a RouteTable, host: &str, path: &str) -> Option<&'a str> {
        t.find(Some(host), path, &Method::GET, &HeaderMap::new())
            .map(|r| &*r.name)
    }

    #[test]
    fn precedence_table() {
        let t = RouteTable::new(vec![
            route("any", &[], PathMatch::Prefix("/".into()), 0),
            route(
                "wild",
                &[HostPattern::Suffix(".example.com".into())],
                PathMatch::Any,
                1,
            ),
            route(
                "deep-wild",
                &[HostPattern::Suffix(".api.example.com".into())],
                PathMatch::Any,
                2,
            ),
            route(
                "exact",
                &[HostPattern::Exact("www.example.com".into())],
                PathMatch::Prefix("/a".into()),
                3,
            ),
            route(
                "exact-longer",
                &[HostPattern::Exact("www.example.com".into())],
                PathMatch::Prefix("/a/b".into()),
                4,
            ),
            route(
                "exact-path",
                &[HostPattern::Exact("www.example.com".into())],
                PathMatch::Exact("/a/b".into()),
                5,
            ),
        ]);
        let cases = [
            ("www.example.com", "/a/x", Some("exact")),
            ("www.example.com", "/a/b/c", Some("exact-longer")),
            ("www.example.com", "/a/b", Some("exact-path")),
            ("WWW.Example.com:8080", "/a", Some("exact")),
            ("www.example.com", "/ab", Some("wild")),
            ("x.example.com", "/a", Some("wild")),
            ("v1.api.example.com", "/", Some("deep-wild")),
            ("example.com", "/", Some("any")),
            ("other.org", "/zzz", Some("any")),
        ];
        for (host, path, want) in cases {
            assert_eq!(find(&t, host, path), want, "{host}{path}");
        }
    }

    #[test]
    fn prefix_is_segment_aware() {
        let p = PathMatch::Prefix("/api".into());
        assert!(p.matches("/api"));
        assert!(p.matches("/api/users"));
        assert!(!p.matches("/apix"));
        assert!(PathMatch::Prefix("/api/".into()).matches("/api/x"));
    }

    #[test]
    fn rewrite_table() {
        let strip = PathRewrite::Prefix {
            len: 4,
            with: String::new(),
        };
        let swap = PathRewrite::Prefix {
            len: 4,
            with: "/v2".into(),
        };
        let cases = [
            (&strip, "/api/users", None, "/users"),
            (&strip, "/api", None, "/"),
            (&strip, "/api/", Some("a=1"), "/?a=1"),
            (&swap, "/api/users", Some("x=y"), "/v2/users?x=y"),
            (&swap, "/api", None, "/v2"),
        ];
        for (rw, path, q, want) in cases {
            assert_eq!(
                rw.apply(path, q, true).unwrap().as_deref(),
                Some(want),
                "{path}"
            );
        }
        assert_eq!(PathRewrite::None.apply("/a", None, true), Ok(None));
        let re = PathRewrite::Regex {
            re: regex::Regex::new(r"^/users/(?P<id>\d+)$").unwrap(),
            with: "/v2/accounts/${id}".into(),
        };
        assert_eq!(
            re.apply("/users/42", Some("a=1"), true).unwrap().as_deref(),
            Some("/v2/accounts/42?a=1")
        );
        assert_eq!(re.apply("/users/x", None, true), Ok(None));
        // A replacement cannot take the path above the root or keep dot segments.
        let up = PathRewrite::Regex {
            re: regex::Regex::new(r"^/u/(.*)$").unwrap(),
            with: "/../$1".into(),
        };
        assert!(up.apply("/u/x", None, true).is_err());
        let dots = PathRewrite::Regex {
            re: regex::Regex::new(r"^/u/(.*)$").unwrap(),
            with: "/a/./b/../$1".into(),
        };
        assert_eq!(
            dots.apply("/u/x", None, true).unwrap().as_deref(),
            Some("/a/x")
        );
    }
}
