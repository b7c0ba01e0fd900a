//! Response caching through `pingora-cache`'s proxy hooks.
//!
//! What is Tollgate's: which requests may use the cache (per route; authenticated ones only
//! when the route says shared or per consumer), the key (route, method, host, path and query,
//! consumer), which responses are stored and for how long (`Cache-Control`, `Expires`, the
//! route's TTL), `Vary`, the `X-Cache` verdict and purges. What is Pingora's: lookups, the
//! stampede lock, serving hits (ranges, conditional requests, `HEAD`), revalidation and
//! serving stale. Storage is [`store::MemoryStore`], bounded by Pingora's LRU eviction
//! manager.

pub(crate) mod freshness;
pub(crate) mod shared;
pub(crate) mod store;

use crate::config::fingerprint::Reloaded;
use crate::config::fingerprint::{carry, Carried, Fingerprint};
use http::header::{CONTENT_LENGTH, SET_COOKIE, VARY};
use http::Method;
use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora::cache::eviction::{lru, EvictionManager};
use pingora::cache::key::HashBinary;
use pingora::cache::lock::CacheLock;
use pingora::cache::{CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, NoCacheReason};
use pingora::cache::{RespCacheable, VarianceBuilder};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use std::time::{Duration, SystemTime};
use store::MemoryStore;

/// NOTE(pingora-0.9): pingora-lru/src/lib.rs evicts from the longer of two random shards.
/// Eviction shards. Pingora's sharded LRU evicts from the longer of two random shards, so
/// with several shards a small cache can evict the entry it just admitted; one shard gives
/// exact least-recently-used order behind one short lock per hit, like nginx's keys zone.
const SHARDS: usize = 1;

/// The gateway's response cache: storage, eviction and the stampede lock, shared by every
/// route that caches.
pub struct ResponseCache {
    storage: &'static MemoryStore,
    eviction: &'static lru::Manager<SHARDS>,
    lock: &'static CacheLock,
    lock_timeout: Duration,
    /// Targeted cache-control fields, first wins (RFC 9213).
    targeted: Vec<http::HeaderName>,
    /// What it was built from: an unchanged `[cache]` keeps the cache and its entries.
    fingerprint: Fingerprint,
}

impl Carried for ResponseCache {
    fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

/// A cache no generation uses any more gives its entries back (pingora-cache holds the
/// storage for 'static, so only the small shells stay).
impl Drop for ResponseCache {
    fn drop(&mut self) {
        self.storage.purge_where(self.eviction, |_| true);
    }
}

impl crate::config::FromConfig<Reloaded<'_, std::sync::Arc<ResponseCache>, shared::SharedMetrics>>
    for std::sync::Arc<ResponseCache>
{
    type Section = crate::config::file::CacheSection;

    /// `[cache]`, when some route caches. The running generation's cache is kept (entries
    /// and all) when the section is unchanged.
    fn from_config(
        at: &str,
        section: &crate::config::file::CacheSection,
        cx: &Reloaded<'_, std::sync::Arc<ResponseCache>, shared::SharedMetrics>,
        problems: &mut Vec<crate::config::Problem>,
    ) -> Option<Self> {
        let Reloaded {
            previous,
            with: ref metrics,
        } = *cx;
        use crate::config::{bounds, Problem};
        let crate::config::file::CacheSection {
            max_size,
            max_object_size,
            lock_timeout,
            targeted_field,
            shared: shared_section,
        } = section;
        let before = problems.len();
        let size_ok = bounds::CACHE_MAX_SIZE.check(&format!("{at}.max_size"), *max_size, problems);
        let object_ok = bounds::CACHE_MAX_OBJECT_SIZE.check(
            &format!("{at}.max_object_size"),
            *max_object_size,
            problems,
        );
        if size_ok && object_ok && max_object_size.0 > max_size.0 {
            problems.push(Problem::new(
                format!("{at}.max_object_size"),
                format!("must be at most cache.max_size ({} bytes)", max_size.0),
            ));
        }
        bounds::CACHE_LOCK_TIMEOUT.check(&format!("{at}.lock_timeout"), *lock_timeout, problems);
        let targeted = match targeted_field.value() {
            Ok(h) if h != http::header::CACHE_CONTROL => Some(h.clone()),
            _ => {
                problems.push(Problem::new(
                    format!("{at}.targeted_field"),
                    format!(
                        "{:?} is not a header name other than Cache-Control",
                        targeted_field.text()
                    ),
                ));
                None
            }
        };
        let tier = shared_section.as_ref().and_then(|sh| {
            let crate::config::file::SharedCacheSection {
                redis,
                redis_cluster,
                key_prefix,
                max_object_size,
                max_ttl,
                timeout,
            } = sh;
            bounds::SHARED_CACHE_MAX_OBJECT.check(
                &format!("{at}.shared.max_object_size"),
                *max_object_size,
                problems,
            );
            bounds::SHARED_CACHE_MAX_TTL.check(&format!("{at}.shared.max_ttl"), *max_ttl, problems);
            bounds::SHARED_CACHE_TIMEOUT.check(&format!("{at}.shared.timeout"), *timeout, problems);
            let urls = match (redis, &redis_cluster[..]) {
                (Some(one), []) => vec![one.clone()],
                (None, nodes) if !nodes.is_empty() => nodes.to_vec(),
                _ => {
                    problems.push(Problem::new(
                        format!("{at}.shared.redis"),
                        "set exactly one of redis (one server) and redis_cluster (seed nodes)",
                    ));
                    return None;
                }
            };
            let settings = shared::Settings {
                cluster: redis.is_none(),
                urls,
                prefix: key_prefix.clone(),
                max_object: max_object_size.0 as usize,
                max_ttl: max_ttl.0,
                timeout: timeout.0,
                lock_timeout: lock_timeout.0,
            };
            shared::SharedTier::new(settings, metrics.clone())
                .map_err(|e| problems.push(Problem::new(format!("{at}.shared.redis"), e)))
                .ok()
        });
        if problems.len() > before {
            return None;
        }
        let fingerprint = Fingerprint::of(section, []);
        if let Some(prev) = carry(previous, fingerprint) {
            return Some(prev.clone());
        }
        let mut cache = ResponseCache::new(
            max_size.0 as usize,
            max_object_size.0 as usize,
            lock_timeout.0,
        );
        cache.fingerprint = fingerprint;
        if let Some(tier) = tier {
            // Like the storage, the tier is borrowed for 'static by pingora-cache's hooks.
            let tier: &'static shared::SharedTier = Box::leak(Box::new(tier));
            cache.storage.share(tier, cache.eviction);
        }
        cache.targeted = targeted
            .into_iter()
            .chain([freshness::CDN_CACHE_CONTROL])
            .collect();
        Some(std::sync::Arc::new(cache))
    }
}

impl ResponseCache {
    /// `max_size` bounds the bytes held (bodies, headers, keys); `max_object` is the largest
    /// body stored; a request waits at most `lock_timeout` for another to fetch its key.
    pub fn new(max_size: usize, max_object: usize, lock_timeout: Duration) -> Self {
        // pingora-cache borrows its storage, eviction manager and lock for 'static; a
        // gateway builds one cache at start-up, so leaking them once is the intended use.
        ResponseCache {
            storage: Box::leak(Box::new(MemoryStore::new(max_object))),
            eviction: Box::leak(Box::new(lru::Manager::with_capacity(max_size, 256))),
            lock: Box::leak(CacheLock::new_boxed(lock_timeout)),
            lock_timeout,
            targeted: vec![freshness::CDN_CACHE_CONTROL],
            fingerprint: Fingerprint::default(),
        }
    }

    /// RFC 9111 §4.4: a non-error response to an unsafe method (anything but GET, HEAD,
    /// OPTIONS and TRACE) invalidates the stored entries of its target URI, and of the
    /// `Location` and `Content-Location` it names on the same host. Returns entries dropped.
    pub fn invalidate_after(
        &self,
        req: &RequestHeader,
        host: Option<&str>,
        resp: &ResponseHeader,
    ) -> usize {
        let safe = [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE];
        if safe.contains(&req.method) || !(200..400).contains(&resp.status.as_u16()) {
            return 0;
        }
        let host = host.map(|h| strip_port(h).to_ascii_lowercase());
        let mut targets: Vec<String> = req
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .into_iter()
            .collect();
        for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
            let Some(uri) = resp
                .headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<http::Uri>().ok())
            else {
                continue;
            };
            let same_host = match uri.host() {
                None => true,
                Some(h) => host.as_deref() == Some(h.to_ascii_lowercase().as_str()),
            };
            if let (true, Some(pq)) = (same_host, uri.path_and_query()) {
                if pq.as_str().starts_with('/') {
                    targets.push(pq.as_str().to_string());
                }
            }
        }
        targets.sort();
        targets.dedup();
        targets
            .into_iter()
            .map(|path| {
                let purge = Purge {
                    host: host.clone(),
                    path: PurgePath::Exact(path),
                };
                let dropped = self.purge(&purge);
                // The fleet too, in the background: the Redis entries, then every
                // instance's memory (this one's again, once Redis cannot hand it back).
                if let Some(tier) = self.storage.shared() {
                    tokio::spawn(async move {
                        let (path, prefix) = purge.path.parts();
                        let _ = tier.purge(purge.host.as_deref(), path, prefix, false).await;
                        let _ = tier.publish(&purge.to_query(), false).await;
                    });
                }
                dropped
            })
            .sum()
    }

    /// The targeted cache-control fields, in order of precedence.
    pub fn targeted(&self) -> &[http::HeaderName] {
        &self.targeted
    }

    /// Turn the cache on for this request (before the key callback runs).
    pub fn enable(&self, session: &mut Session) {
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(self.lock_timeout);
        session.cache.enable(
            self.storage,
            Some(self.eviction),
            None,
            Some(self.lock),
            Some(overrides),
        );
    }

    /// Remove the entries `purge` selects from this instance's memory; returns how many.
    pub fn purge(&self, purge: &Purge) -> usize {
        let removed = match (&purge.host, &purge.path) {
            (Some(host), PurgePath::Exact(path)) => {
                self.storage.purge_target(self.eviction, host, path)
            }
            _ => self
                .storage
                .purge_where(self.eviction, |primary| purge.matches(primary)),
        };
        removed.len()
    }

    /// An admin purge (`POST /cache/purge`). With `[cache.shared]`: first the Redis entries
    /// `purge` selects, found through the index whichever instance stored them (awaited,
    /// and tried even while Redis is skipped after a failure), then this instance's memory,
    /// then the announcement (`query`) that empties every instance's memory. Redis goes
    /// first so that no instance copies a purged entry back from it. When Redis does not
    /// confirm, this instance's memory is purged all the same and the error says what was
    /// not done.
    pub async fn purge_fleet(&self, purge: &Purge, query: &str) -> Purged {
        let Some(tier) = self.storage.shared() else {
            return Purged {
                memory: self.purge(purge),
                shared: None,
            };
        };
        let (path, prefix) = purge.path.parts();
        let deleted = tier.purge(purge.host.as_deref(), path, prefix, true).await;
        let memory = self.purge(purge);
        let shared = match deleted {
            Ok(n) => tier.publish(query, true).await.map(|()| n).map_err(|e| {
                format!(
                    "the shared cache (Redis) deleted {n} entries, but the purge could not be \
                     announced to the other instances ({e}); retry"
                )
            }),
            Err(e) => Err(format!(
                "the shared cache (Redis) did not confirm the purge ({e}): its entries and \
                 the other instances' memory are not purged, this instance's memory is; retry"
            )),
        };
        Purged {
            memory,
            shared: Some(shared),
        }
    }

    /// The request is over: a fill lock it took but did not use for a stored response
    /// (the response was uncacheable, or the fetch failed) is released.
    pub fn finish(&self, session: &Session) {
        if self.storage.shared().is_none() {
            return;
        }
        if let Some(key) = session.cache.maybe_cache_key() {
            self.storage.abandon(key);
        }
    }

    /// The purge subscriber, with `[cache.shared]`.
    pub(crate) fn subscriber(
        self: &std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn pingora::services::background::BackgroundService + Send + Sync>>
    {
        self.storage.shared()?;
        Some(std::sync::Arc::new(PurgeSubscriber(self.clone())))
    }

    /// Bytes and entries held, as the eviction manager counts them.
    pub fn usage(&self) -> (usize, usize) {
        (self.eviction.total_size(), self.eviction.total_items())
    }

    /// Entries evicted to stay within `max_size`.
    pub fn evicted(&self) -> usize {
        self.eviction.evicted_items()
    }

    /// Largest body stored, in bytes.
    pub fn max_object(&self) -> usize {
        self.storage.max_object()
    }
}

/// Who may share a cached response to an authenticated request: bypass (the default),
/// shared by every caller, or per consumer.
pub(crate) use crate::config::types::CacheSharing as Sharing;

/// A route's `[routes.cache]`, compiled.
#[derive(Debug, Clone)]
pub(crate) struct RouteCache {
    /// Freshness when the response carries no `max-age`, `s-maxage` or `Expires`; `None`:
    /// only what the origin allows.
    pub ttl: Option<Duration>,
    pub authenticated: Sharing,
    /// Serve a stale entry while one request refreshes it (unless the response says otherwise).
    pub stale_while_revalidate: Duration,
    /// Serve a stale entry when the upstream fails (unless the response says otherwise).
    pub stale_if_error: Duration,
}

const BYPASS_METHOD: &str = "cache_bypass:method";
const BYPASS_AUTHENTICATED: &str = "cache_bypass:authenticated";

/// The reason of a `BYPASS` decided by the response or the cache (`cache_bypass:set_cookie`,
/// `cache_bypass:no_store`, `cache_bypass:origin_not_cache`, ...), from Pingora's phase.
pub(crate) fn bypass_reason(phase: CachePhase) -> String {
    let word = match phase {
        CachePhase::Disabled(r) | CachePhase::RevalidatedNoCache(r) => match r {
            NoCacheReason::Custom(why) => crate::error::reason_of(why).into_owned(),
            other => {
                // `OriginNotCache` is `origin_not_cache`.
                let mut w = String::new();
                for (i, c) in other.as_str().chars().enumerate() {
                    if c.is_ascii_uppercase() && i > 0 {
                        w.push('_');
                    }
                    w.push(c.to_ascii_lowercase());
                }
                w
            }
        },
        _ => "request".into(),
    };
    format!("cache_bypass:{word}")
}

/// Whether a response is stored for more than the caller who asked, for a request that
/// carried `Authorization` (RFC 9111 §3.5): entries keyed per consumer are not shared.
pub(crate) fn shared_authorized(consumer: Option<&str>, req: &RequestHeader) -> bool {
    consumer.is_none() && req.headers.contains_key(http::header::AUTHORIZATION)
}

/// How a request uses the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Not looked up; the reason (`cache_bypass:method`, `cache_bypass:authenticated`).
    Bypass(&'static str),
    /// Look up and store; `Some(consumer)` keys the entry to that consumer.
    Use(Option<String>),
}

/// What a route does, which decides whether and how it may cache.
pub(crate) struct RouteFacts {
    /// The route has an upstream.
    pub proxied: bool,
    /// The route authenticates its callers.
    pub authenticates: bool,
}

impl crate::config::FromConfig<RouteFacts> for RouteCache {
    type Section = crate::config::file::RouteCacheSection;

    /// `[routes.cache]`, for a route that does what `facts` say.
    fn from_config(
        at: &str,
        c: &crate::config::file::RouteCacheSection,
        facts: &RouteFacts,
        problems: &mut Vec<crate::config::Problem>,
    ) -> Option<RouteCache> {
        let RouteFacts {
            proxied,
            authenticates,
        } = *facts;
        use crate::config::{bounds, Problem};
        let crate::config::file::RouteCacheSection {
            ttl,
            authenticated,
            stale_while_revalidate,
            stale_if_error,
        } = c;
        let before = problems.len();
        if !proxied {
            problems.push(Problem::new(
                at,
                "caching applies only to routes with an upstream",
            ));
        }
        if let Some(ttl) = ttl {
            bounds::CACHE_TTL.check(&format!("{at}.ttl"), *ttl, problems);
        }
        for (key, d) in [
            ("stale_while_revalidate", stale_while_revalidate),
            ("stale_if_error", stale_if_error),
        ] {
            if let Some(d) = d {
                bounds::CACHE_STALE.check(&format!("{at}.{key}"), *d, problems);
            }
        }
        if *authenticated == Sharing::PerConsumer && !authenticates {
            problems.push(Problem::new(
                format!("{at}.authenticated"),
                "per_consumer needs the route to authenticate (set auth)",
            ));
        }
        (problems.len() == before).then(|| RouteCache {
            ttl: ttl.map(|t| t.0),
            authenticated: *authenticated,
            stale_while_revalidate: stale_while_revalidate.map_or(Duration::ZERO, |d| d.0),
            stale_if_error: stale_if_error.map_or(Duration::ZERO, |d| d.0),
        })
    }
}

impl RouteCache {
    /// Whether and how the request uses the cache. `authenticated`: the request carried an
    /// identity or an `Authorization` header; `principal`: who it identified.
    pub(crate) fn lookup(
        &self,
        method: &Method,
        authenticated: bool,
        principal: Option<&str>,
    ) -> Lookup {
        if method != Method::GET && method != Method::HEAD {
            return Lookup::Bypass(BYPASS_METHOD);
        }
        if !authenticated {
            return Lookup::Use(None);
        }
        match (self.authenticated, principal) {
            (Sharing::Shared, _) => Lookup::Use(None),
            (Sharing::PerConsumer, Some(p)) => Lookup::Use(Some(p.to_string())),
            _ => Lookup::Bypass(BYPASS_AUTHENTICATED),
        }
    }

    /// Whether `resp` may be stored, and its metadata if so (RFC 9111 and 9213, in
    /// `cache::freshness`). `shared_authorized`: the request carried `Authorization` and the
    /// entry is shared between callers.
    pub(crate) fn response_meta(
        &self,
        resp: &ResponseHeader,
        max_object: usize,
        shared_authorized: bool,
        targeted: &[http::HeaderName],
    ) -> RespCacheable {
        use RespCacheable::Uncacheable;
        // A shared cache must not hand one caller's cookie to another.
        if resp.headers.contains_key(SET_COOKIE) {
            return Uncacheable(NoCacheReason::Custom("set-cookie"));
        }
        if vary_names(resp).any(|n| n == "*") {
            return Uncacheable(NoCacheReason::Custom("vary-star"));
        }
        let length = resp
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if length.is_some_and(|n| n > max_object) {
            return Uncacheable(NoCacheReason::ResponseTooLarge);
        }
        let rules = freshness::Rules {
            ttl: self.ttl,
            shared_authorized,
            targeted,
        };
        let (fresh_until, created, swr, sie) =
            match freshness::evaluate(resp, &rules, SystemTime::now()) {
                freshness::Verdict::DontStore(why) => {
                    return Uncacheable(NoCacheReason::Custom(why))
                }
                freshness::Verdict::Store {
                    fresh_until,
                    created,
                    stale_while_revalidate,
                    stale_if_error,
                } => (fresh_until, created, stale_while_revalidate, stale_if_error),
            };
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let swr = swr.map_or(secs(self.stale_while_revalidate), |s| {
            u32::try_from(s).unwrap_or(u32::MAX)
        });
        let sie = sie.map_or(secs(self.stale_if_error), |s| {
            u32::try_from(s).unwrap_or(u32::MAX)
        });
        let mut header = resp.clone();
        if let Some(c) = CacheControl::from_resp_headers(resp) {
            c.strip_private_headers(&mut header);
        }
        RespCacheable::Cacheable(CacheMeta::new(fresh_until, created, swr, sie, header))
    }
}

/// The primary key: route, method (`HEAD` shares `GET`'s entries, as Pingora fetches `GET`
/// for both), host without port, path and query, consumer. Newline-separated: none of the
/// parts can contain one.
pub fn key(
    route: &str,
    req: &RequestHeader,
    host: Option<&str>,
    consumer: Option<&str>,
) -> CacheKey {
    let method = if req.method == Method::HEAD {
        "GET"
    } else {
        req.method.as_str()
    };
    let host = host.map_or(String::new(), |h| strip_port(h).to_ascii_lowercase());
    let path = req
        .uri
        .path_and_query()
        .map_or(req.uri.path(), |pq| pq.as_str());
    let primary = format!(
        "{route}\n{method}\n{host}\n{path}\n{}",
        consumer.unwrap_or("")
    );
    CacheKey::new(primary, "")
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn vary_names(resp: &ResponseHeader) -> impl Iterator<Item = String> + '_ {
    resp.headers
        .get_all(VARY)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
}

/// The variance of a stored response for this request: the request's values of the headers
/// the response's `Vary` names. `None` when the response does not vary.
pub(crate) fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let mut builder = VarianceBuilder::new();
    for name in vary_names(meta.response_header()) {
        let mut value = Vec::new();
        for (i, v) in req.headers.get_all(name.as_str()).iter().enumerate() {
            if i > 0 {
                value.push(b',');
            }
            value.extend_from_slice(v.as_bytes());
        }
        builder.add_owned_name_value(name, value);
    }
    builder.finalize()
}

/// What the cache did for a request: the `X-Cache` header and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Hit,
    Miss,
    Bypass,
    Stale,
}

impl Verdict {
    pub(crate) const ALL: [Verdict; 4] =
        [Verdict::Hit, Verdict::Miss, Verdict::Bypass, Verdict::Stale];

    /// The verdict for a request on a caching route, from Pingora's cache phase.
    pub(crate) fn of(phase: CachePhase) -> Option<Verdict> {
        match phase {
            CachePhase::Hit | CachePhase::Revalidated => Some(Verdict::Hit),
            CachePhase::Stale | CachePhase::StaleUpdating => Some(Verdict::Stale),
            CachePhase::Miss | CachePhase::Expired => Some(Verdict::Miss),
            CachePhase::Disabled(_) | CachePhase::Bypass | CachePhase::RevalidatedNoCache(_) => {
                Some(Verdict::Bypass)
            }
            CachePhase::Uninit | CachePhase::CacheKey => None,
        }
    }

    pub(crate) fn header(self) -> &'static str {
        match self {
            Verdict::Hit => "HIT",
            Verdict::Miss => "MISS",
            Verdict::Bypass => "BYPASS",
            Verdict::Stale => "STALE",
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Verdict::Hit => "hit",
            Verdict::Miss => "miss",
            Verdict::Bypass => "bypass",
            Verdict::Stale => "stale",
        }
    }
}

/// A purge request: entries of one host (or any), one exact path and query or every path
/// under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    pub host: Option<String>,
    pub path: PurgePath,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgePath {
    /// Path and query, exactly as requested.
    Exact(String),
    /// Every path starting with this.
    Prefix(String),
}

impl PurgePath {
    /// The path, and whether it is a prefix.
    fn parts(&self) -> (&str, bool) {
        match self {
            PurgePath::Exact(p) => (p, false),
            PurgePath::Prefix(p) => (p, true),
        }
    }
}

/// What an admin purge did ([`ResponseCache::purge_fleet`]).
#[derive(Debug)]
pub struct Purged {
    /// Entries removed from this instance's memory.
    pub memory: usize,
    /// With `[cache.shared]`: the Redis entries deleted, or why Redis did not confirm.
    pub shared: Option<Result<usize, String>>,
}

impl Purge {
    /// Parse the admin query string: `host=H` (optional) and exactly one of `path=/p?q` or
    /// `prefix=/p`.
    pub fn from_query(query: &str) -> Result<Purge, String> {
        let mut host = None;
        let mut path = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let v = v.into_owned();
            let slot_was_empty = match &*k {
                "host" => host.replace(strip_port(&v).to_ascii_lowercase()).is_none(),
                "path" => path.replace(PurgePath::Exact(v)).is_none(),
                "prefix" => path.replace(PurgePath::Prefix(v)).is_none(),
                other => return Err(format!("unknown parameter {other:?}")),
            };
            if !slot_was_empty {
                return Err(format!("parameter {k:?} given twice (or path with prefix)"));
            }
        }
        let path = path.ok_or("give path=/exact/path?query or prefix=/path/prefix")?;
        let p = match &path {
            PurgePath::Exact(p) | PurgePath::Prefix(p) => p,
        };
        if !p.starts_with('/') {
            return Err(format!("path {p:?} must start with /"));
        }
        Ok(Purge { host, path })
    }

    /// The query [`Purge::from_query`] reads back.
    fn to_query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(h) = &self.host {
            query.append_pair("host", h);
        }
        match &self.path {
            PurgePath::Exact(p) => query.append_pair("path", p),
            PurgePath::Prefix(p) => query.append_pair("prefix", p),
        };
        query.finish()
    }

    fn matches(&self, primary: &str) -> bool {
        let mut parts = primary.split('\n').skip(2);
        let (Some(host), Some(path)) = (parts.next(), parts.next()) else {
            return false;
        };
        if self.host.as_deref().is_some_and(|h| h != host) {
            return false;
        }
        match &self.path {
            PurgePath::Exact(p) => path == p,
            PurgePath::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

/// Applies the purges the instances publish (to memory: the publisher deleted the Redis
/// entries), and wakes this instance's fill-lock waiters, on one subscription.
struct PurgeSubscriber(std::sync::Arc<ResponseCache>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for PurgeSubscriber {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        let Some(tier) = self.0.storage.shared() else {
            return;
        };
        let cache = &self.0;
        tier.subscribe(
            |query| match Purge::from_query(query) {
                Ok(p) => {
                    let n = cache.purge(&p);
                    log::info!("cache purge from the fleet {p:?}: {n} entries removed");
                }
                Err(e) => log::warn!("shared cache: ignored purge {query:?}: {e}"),
            },
            shutdown,
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str) -> RequestHeader {
        RequestHeader::build(method, uri.as_bytes(), None).unwrap()
    }

    #[test]
    fn key_has_host_path_query_and_consumer() {
        let a = key("r", &req("GET", "/a?x=1"), Some("Example.COM:8080"), None);
        assert_eq!(a.primary_key_str(), Some("r\nGET\nexample.com\n/a?x=1\n"));
        let head = key("r", &req("HEAD", "/a?x=1"), Some("example.com"), None);
        assert_eq!(head.primary_key_str(), a.primary_key_str());
        let other_host = key("r", &req("GET", "/a?x=1"), Some("other.com"), None);
        assert_ne!(other_host.primary_key_str(), a.primary_key_str());
        let alice = key(
            "r",
            &req("GET", "/a?x=1"),
            Some("example.com"),
            Some("alice"),
        );
        assert_eq!(
            alice.primary_key_str(),
            Some("r\nGET\nexample.com\n/a?x=1\nalice")
        );
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }

    #[test]
    fn purge_matches_host_and_path() {
        let exact = Purge::from_query("host=example.com&path=%2Fa%3Fx%3D1").unwrap();
        assert!(exact.matches("r\nGET\nexample.com\n/a?x=1\n"));
        assert!(!exact.matches("r\nGET\nexample.com\n/a\n"));
        assert!(!exact.matches("r\nGET\nother.com\n/a?x=1\n"));
        let prefix = Purge::from_query("prefix=/a").unwrap();
        assert!(prefix.matches("r\nGET\nany.com\n/a/b\nbob"));
        assert!(!prefix.matches("r\nGET\nany.com\n/b\n"));
        assert!(Purge::from_query("").is_err());
        assert!(Purge::from_query("path=/a&prefix=/b").is_err());
        assert!(Purge::from_query("path=a").is_err());
        assert!(Purge::from_query("bogus=1&path=/a").is_err());
        // What an invalidation announces reads back as the same purge.
        for q in [
            "host=example.com&path=%2Fa%3Fx%3D1%26y",
            "prefix=/a b",
            "path=/",
        ] {
            let p = Purge::from_query(q).unwrap();
            assert_eq!(Purge::from_query(&p.to_query()).unwrap(), p, "{q}");
        }
    }

    /// Issue 35: a route's default `stale_while_revalidate` / `stale_if_error` applied
    /// whenever the response named no stale directive, also when the origin forbade stale
    /// answers (RFC 9111 §4.2.4). One case per directive that forbids them.
    #[test]
    fn route_stale_defaults_overrode_the_origins_revalidation_directives() {
        let rc = RouteCache {
            ttl: Some(Duration::from_secs(60)),
            authenticated: Sharing::Bypass,
            stale_while_revalidate: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(300),
        };
        let stale_of = |cache_control: &str| {
            let mut resp = ResponseHeader::build(200, None).unwrap();
            resp.insert_header("cache-control", cache_control).unwrap();
            match rc.response_meta(&resp, 1 << 20, false, &[]) {
                RespCacheable::Cacheable(meta) => {
                    (meta.stale_while_revalidate_sec(), meta.stale_if_error_sec())
                }
                RespCacheable::Uncacheable(why) => panic!("{cache_control}: {why:?}"),
            }
        };
        assert_eq!(
            stale_of("max-age=60"),
            (30, 300),
            "the route's defaults apply"
        );
        assert_eq!(
            stale_of("max-age=60, stale-if-error=5"),
            (30, 5),
            "the origin's own directive wins"
        );
        for forbids in [
            "max-age=60, must-revalidate",
            "max-age=60, proxy-revalidate",
            "s-maxage=60",
            "max-age=60, no-cache",
            "max-age=60, must-revalidate, stale-while-revalidate=10, stale-if-error=10",
        ] {
            assert_eq!(stale_of(forbids), (0, 0), "{forbids}");
        }
    }

    #[test]
    fn lookup_respects_sharing() {
        let mut rc = RouteCache {
            ttl: Some(Duration::from_secs(1)),
            authenticated: Sharing::Bypass,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
        };
        assert_eq!(rc.lookup(&Method::GET, false, None), Lookup::Use(None));
        assert_eq!(
            rc.lookup(&Method::POST, false, None),
            Lookup::Bypass(BYPASS_METHOD)
        );
        assert_eq!(
            rc.lookup(&Method::GET, true, Some("a")),
            Lookup::Bypass(BYPASS_AUTHENTICATED)
        );
        rc.authenticated = Sharing::Shared;
        assert_eq!(rc.lookup(&Method::GET, true, Some("a")), Lookup::Use(None));
        rc.authenticated = Sharing::PerConsumer;
        assert_eq!(
            rc.lookup(&Method::HEAD, true, Some("a")),
            Lookup::Use(Some("a".into()))
        );
        assert_eq!(
            rc.lookup(&Method::GET, true, None),
            Lookup::Bypass(BYPASS_AUTHENTICATED)
        );
    }
}
