//! The compiled route table and request matching.
//!
//! Precedence, most specific first: an exact host beats a `*.wildcard` (longer suffix first),
//! which beats a route with no host; within those, an exact path beats a prefix, a longer
//! prefix beats a shorter one, a route with methods or headers beats one without, and config
//! order breaks the remaining ties. What a route does once matched is left to the gateway.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How a route matches the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Any,
    /// Segment-aware prefix: `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`.
    Prefix(String),
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

/// A host pattern as written in `hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Lower-case host name.
    Exact(String),
    /// `*.example.com` stored as `.example.com`: matches any name ending in it.
    Suffix(String),
}

/// A fixed response served without an upstream.
#[derive(Debug)]
pub struct DirectResponse {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// How the request path changes before it goes upstream.
#[derive(Debug, Clone)]
pub enum PathRewrite {
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
    pub fn apply(
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
pub struct RouteTransform {
    pub request: crate::transform::HeaderTransform,
    pub response: crate::transform::HeaderTransform,
    /// Security headers added to responses that lack them.
    pub security: Vec<(HeaderName, HeaderValue)>,
    pub json_request: crate::transform::JsonRename,
    pub json_response: crate::transform::JsonRename,
}

/// Where a proxied route sends its requests.
#[derive(Debug)]
pub struct ProxyAction {
    /// Index into the gateway's upstream groups.
    pub upstream: usize,
    pub rewrite: PathRewrite,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub retries: usize,
    /// Retry non-idempotent requests too when connecting failed.
    pub retry_unsent: bool,
    /// The failures retried on another target.
    pub retry_on: crate::upstream::retry::RetryOn,
}

#[derive(Debug)]
pub enum RouteAction {
    Proxy(ProxyAction),
    Respond(DirectResponse),
    Aggregate(crate::aggregate::Aggregate),
}

/// A compiled route.
pub struct Route {
    pub name: Arc<str>,
    pub hosts: Vec<HostPattern>,
    pub path: PathMatch,
    pub methods: Vec<Method>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub action: RouteAction,
    pub policy: crate::policy::RoutePolicy,
    pub transform: RouteTransform,
    /// Response caching, when the route has `[routes.cache]`.
    pub cache: Option<crate::cache::RouteCache>,
    /// Metric handles of this route.
    pub stats: crate::observe::metrics::RouteStats,
    /// `%2F` and `%5C` in the path are accepted (and passed on encoded).
    pub allow_encoded_slashes: bool,
    /// Position in the config file, the last tie-breaker.
    pub order: usize,
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
        Route {
            name: name.into(),
            hosts: hosts.to_vec(),
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
            stats: Default::default(),
            allow_encoded_slashes: false,
            order,
        }
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
