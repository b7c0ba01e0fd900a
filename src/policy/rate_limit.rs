//! Rate limiting: fixed windows per key, counted locally (exactly per key, see
//! [`super::window_counts`]), or shared by a fleet through Redis.
//!
//! Semantics: a request is counted in every window of its route (or consumer) and admitted
//! only if no window is then over its limit; a refused request is taken back out of every
//! window it was counted in, so a burst refused by a 10/s window does not eat a 1000/h
//! budget. No window admits more than `limit`: counts are exact, and estimated (over, never
//! under) only past a window's bound on distinct keys.
//!
//! Memory: each window of each route and consumer has its own counts, a table entry (about
//! 17 bytes) per key seen in the current window, at most `MAX_EXACT_KEYS` keys, emptied when
//! the window turns.
//!
//! Redis: one atomic Lua script per check counts all windows of one subject; window keys are
//! aligned to the epoch (`tollgate:{SUBJECT}:wMS:INDEX`), share a `{hash tag}` so the script
//! touches one Redis Cluster slot, and expire after two windows. Every call is bounded by
//! `redis_timeout`; after a failure Redis is skipped for a second (no timeout per request
//! while it is down) and the configured policy decides: count locally, admit, or refuse.
//!
//! Sync (`backend = "sync"`, `policy::fleet`): each instance leases part of a window's
//! budget from Redis and admits from it locally, so the fleet never admits more than the
//! limit, with no Redis call per request while it holds budget.

use super::fleet::{self, Fleet, FleetMetrics};
use super::window_counts::{key_of, WindowCounts};
use crate::config::file::{
    CallerKind, RateLimitBackend, RateLimitBackendSection, RateLimitSection, RedisFailurePolicy,
};
use crate::config::fingerprint::{carry, Carried, Fingerprint, Reloaded};
use crate::config::types::{RateKey, Who};
use crate::config::{bounds, FromConfig, Problem};
use http::{HeaderName, HeaderValue};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long Redis is skipped after a failure.
const REDIS_BACKOFF: Duration = Duration::from_secs(1);

/// Who a request counts against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subject<'a> {
    pub route: &'a str,
    /// The principal: the API-key consumer, or the JWT subject (`consumer` keys).
    pub consumer: Option<&'a str>,
    /// The JWT (or auth service's) subject only (`subject` keys).
    pub subject: Option<&'a str>,
    /// The API-key consumer only (`api_key` keys).
    pub api_key: Option<&'a str>,
    /// The request's headers (`header:NAME` keys).
    pub headers: Option<&'a http::HeaderMap>,
    /// The identity headers the caller's token mapped (`claim:NAME` keys).
    pub identity_headers: &'a [(HeaderName, HeaderValue)],
    pub client_ip: Option<IpAddr>,
    /// Which windows count it (`applies_to`).
    pub kind: CallerKind,
}

/// The bit of a kind of caller in a window's `applies` mask.
fn bit(kind: CallerKind) -> u8 {
    match kind {
        CallerKind::Unauthenticated => 1,
        CallerKind::Jwt => 2,
        CallerKind::ApiKey => 4,
    }
}

/// The outcome of a check: whether to admit, and the numbers of the most restrictive window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateDecision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window that decided resets.
    pub reset_secs: u64,
    /// The window that decided; none when no window counted (the store was unreachable).
    pub window: Option<Duration>,
}

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

impl RateDecision {
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`, and `Retry-After` when refused.
    /// An iterator, so that adding them to a response allocates no list of its own.
    pub(crate) fn headers(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> {
        let retry_after = (!self.allowed).then(|| {
            (
                http::header::RETRY_AFTER,
                HeaderValue::from(self.reset_secs.max(1)),
            )
        });
        [
            (RATELIMIT_LIMIT, HeaderValue::from(self.limit)),
            (RATELIMIT_REMAINING, HeaderValue::from(self.remaining)),
            (RATELIMIT_RESET, HeaderValue::from(self.reset_secs)),
        ]
        .into_iter()
        .chain(retry_after)
    }

    /// The more restrictive of two decisions (refused beats admitted; then fewer remaining).
    /// The reason of a refusal: `rate_limited:LIMIT/WINDOW` (`rate_limited:5/10s`), or
    /// `rate_limit_store_unavailable` when Redis was down and `on_redis_error = "deny"`.
    pub(crate) fn reason(&self) -> String {
        match self.window {
            Some(w) => format!(
                "rate_limited:{}/{}",
                self.limit,
                humantime::format_duration(w)
            ),
            None => "rate_limit_store_unavailable".into(),
        }
    }

    pub(crate) fn tighter(self, other: RateDecision) -> RateDecision {
        if self.allowed != other.allowed {
            return if self.allowed { other } else { self };
        }
        if other.remaining < self.remaining {
            other
        } else {
            self
        }
    }
}

/// The counter key parts of a subject for window `w`: its address, and what identifies the
/// caller. A caller the window cannot identify (an anonymous request on a `consumer` window,
/// a request without the header of a `header:NAME` one) is counted by its client address,
/// so such callers cannot share one unlimited bucket.
fn key_parts<'a>(w: &Window, s: &Subject<'a>) -> (Option<IpAddr>, Option<&'a str>) {
    let who = match &w.key.who {
        None => None,
        Some(Who::Consumer) => s.consumer,
        Some(Who::Subject) => s.subject,
        Some(Who::ApiKey) => s.api_key,
        Some(Who::Header(h)) => s
            .headers
            .and_then(|m| m.get(h))
            .and_then(|v| v.to_str().ok()),
        Some(Who::Claim(_)) => w.claim_header.as_ref().and_then(|h| {
            s.identity_headers
                .iter()
                .find(|(n, _)| n == h)
                .and_then(|(_, v)| v.to_str().ok())
        }),
    };
    let ip = if w.key.ip || (w.key.who.is_some() && who.is_none()) {
        s.client_ip
    } else {
        None
    };
    (ip, who)
}

/// The metrics a store counts in.
#[derive(Clone)]
pub(crate) struct StoreMetrics {
    /// `tollgate_rate_limit_redis_errors_total`.
    pub redis_errors: prometheus::IntCounter,
    pub sync: FleetMetrics,
}

impl StoreMetrics {
    /// Counters registered nowhere (unit tests).
    #[cfg(test)]
    pub(crate) fn detached() -> StoreMetrics {
        StoreMetrics {
            redis_errors: prometheus::IntCounter::new("e", "e").unwrap(),
            sync: FleetMetrics {
                degraded: prometheus::IntGauge::new("d", "d").unwrap(),
                replicas: prometheus::IntGauge::new("r", "r").unwrap(),
                failures: prometheus::IntCounter::new("f", "f").unwrap(),
            },
        }
    }
}

/// Where counters live: this process, or Redis with a failure policy. One per gateway.
pub struct RateLimitStore {
    /// The counts of each window, by its salt: a reload keeps an unchanged window's counts.
    /// Weak: the windows of the generations that use them hold them.
    counts: Mutex<HashMap<u64, std::sync::Weak<WindowCounts>>>,
    redis: Option<RedisStore>,
    fleet: Option<Arc<Fleet>>,
    /// Redis calls that failed or timed out (`rate_limit_redis_errors_total`).
    redis_errors: prometheus::IntCounter,
    /// What it was built from: an unchanged `[rate_limit]` keeps the store and its windows.
    fingerprint: Fingerprint,
}

impl Carried for RateLimitStore {
    fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

struct RedisStore {
    client: crate::redis_conn::Client,
    timeout: Duration,
    on_error: RedisFailurePolicy,
    script: redis::Script,
    /// Milliseconds since `epoch` until which Redis is skipped.
    down_until_ms: AtomicU64,
    epoch: Instant,
}

const SCRIPT: &str = r#"
local n = #KEYS
local counts = {}
local over = 0
for i = 1, n do
  local c = redis.call('INCR', KEYS[i])
  if c == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[i]) end
  counts[i] = c
  if over == 0 and c > tonumber(ARGV[n + i]) then over = i end
end
if over > 0 then
  for i = 1, n do redis.call('DECR', KEYS[i]) end
end
counts[n + 1] = over
return counts
"#;

impl FromConfig<Reloaded<'_, Arc<RateLimitStore>, StoreMetrics>> for Arc<RateLimitStore> {
    type Section = RateLimitBackendSection;

    /// `[rate_limit]`, in one pass. With the running generation's store, local counters
    /// are always kept (windows whose definition is unchanged keep counting), and the Redis
    /// client and its connection too when the section is unchanged.
    fn from_config(
        at: &str,
        section: &RateLimitBackendSection,
        cx: &Reloaded<'_, Arc<RateLimitStore>, StoreMetrics>,
        problems: &mut Vec<Problem>,
    ) -> Option<Self> {
        let Reloaded {
            previous,
            with: ref metrics,
        } = *cx;
        let RateLimitBackendSection {
            backend,
            redis_url,
            redis_cluster,
            sync_interval,
            redis_timeout,
            on_redis_error,
        } = section;
        let before = problems.len();
        bounds::REDIS_TIMEOUT.check(&format!("{at}.redis_timeout"), *redis_timeout, problems);
        bounds::SYNC_INTERVAL.check(&format!("{at}.sync_interval"), *sync_interval, problems);
        let fingerprint = Fingerprint::of(section, []);
        if let Some(prev) = carry(previous, fingerprint) {
            return (problems.len() == before).then(|| prev.clone());
        }
        let client = match backend {
            RateLimitBackend::Local => None,
            RateLimitBackend::Redis | RateLimitBackend::Sync => {
                let timeout = match backend {
                    RateLimitBackend::Sync => redis_timeout.0.max(sync_interval.0),
                    _ => redis_timeout.0,
                };
                match crate::redis_conn::Client::new(redis_url.as_deref(), redis_cluster, timeout) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        let at = if redis_cluster.is_empty() {
                            format!("{at}.redis_url")
                        } else {
                            format!("{at}.redis_cluster")
                        };
                        problems.push(Problem::new(at, format!("backend = {backend:?}: {e}")));
                        None
                    }
                }
            }
        };
        let (redis, fleet) = match (backend, client) {
            (RateLimitBackend::Redis, Some(client)) => (
                Some(RedisStore {
                    client,
                    timeout: redis_timeout.0,
                    on_error: *on_redis_error,
                    script: redis::Script::new(SCRIPT),
                    down_until_ms: AtomicU64::new(0),
                    epoch: Instant::now(),
                }),
                None,
            ),
            (RateLimitBackend::Sync, Some(client)) => (
                None,
                Some(Arc::new(Fleet::new(
                    client,
                    sync_interval.0,
                    redis_timeout.0,
                    metrics.sync.clone(),
                ))),
            ),
            _ => (None, None),
        };
        let counts = previous.map_or_else(HashMap::new, |p| {
            p.counts.lock().unwrap_or_else(|e| e.into_inner()).clone()
        });
        (problems.len() == before).then(|| {
            Arc::new(RateLimitStore {
                counts: Mutex::new(counts),
                redis,
                fleet,
                redis_errors: metrics.redis_errors.clone(),
                fingerprint,
            })
        })
    }
}

impl RateLimitStore {
    /// The `sync` backend's fleet state, whose sync loop each generation runs.
    pub(crate) fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    /// The counts of the window `salt` names: the running generation's when it has that
    /// window, else new ones. Windows no generation holds any more are forgotten here.
    fn counts(&self, salt: u64, window: Duration) -> Arc<WindowCounts> {
        let mut all = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kept) = all.get(&salt).and_then(std::sync::Weak::upgrade) {
            return kept;
        }
        all.retain(|_, w| w.strong_count() > 0);
        let made = Arc::new(WindowCounts::new(window));
        all.insert(salt, Arc::downgrade(&made));
        made
    }
}

struct Window {
    limit: u64,
    window: Duration,
    key: RateKey,
    /// The kinds of caller it counts, as [`bit`]s.
    applies: u8,
    /// Where it is shared: the route or consumer, `global`, or `group:NAME`.
    scope: Arc<str>,
    /// `{rl:SCOPE}`: the hash tag of its `sync` keys.
    tag: Arc<str>,
    counts: Arc<WindowCounts>,
    /// Names the window: its scope, limit, length and key.
    salt: u64,
    /// The identity header carrying the claim of a `claim:NAME` key.
    claim_header: Option<HeaderName>,
    /// `w{ms}l{limit}k{ip,consumer,route}`: the window's part of its `sync` Redis key.
    sync_name: String,
}

impl Window {
    fn counts_for(&self, kind: CallerKind) -> bool {
        self.applies & bit(kind) != 0
    }
}

/// The windows of one route or one consumer.
pub(crate) struct RateLimits {
    windows: Vec<Window>,
    store: Arc<RateLimitStore>,
    /// Local checks of one subject run one at a time (its shard's lock): a request counted
    /// in every window and then taken back out of all of them when one refused is one step
    /// for the others of that subject, and a key past a window's exact bound is estimated by
    /// a count-min sketch, where two racing increments can leave the same minimum for both.
    shards: Box<[std::sync::Mutex<()>]>,
}

/// Lock shards of one list of windows: enough that unrelated subjects rarely wait.
const LOCAL_SHARDS: usize = 64;

/// The scope of windows shared by every route (`scope = "global"`, and `[[rate_limits]]`).
pub(crate) const GLOBAL_SCOPE: &str = "global";

/// Whose windows a list of rate limits is: a route's, a consumer's or the gateway's
/// (`[[rate_limits]]`, named [`GLOBAL_SCOPE`]), counted in `store`.
pub(crate) struct Scope<'a> {
    /// The route or consumer name.
    pub name: &'a str,
    pub store: &'a Arc<RateLimitStore>,
    /// The JWT providers, whose `claim_headers` carry the claims `claim:NAME` keys count.
    pub jwt: Option<&'a super::jwt::Providers>,
}

impl FromConfig<super::PolicyContext<'_>> for RateLimits {
    type Section = crate::config::file::RouteSection;

    /// A route's `rate_limits`.
    fn from_config(
        at: &str,
        r: &Self::Section,
        cx: &super::PolicyContext<'_>,
        problems: &mut Vec<Problem>,
    ) -> Option<Self> {
        let scope = Scope {
            name: &r.name,
            store: cx.rate_store,
            jwt: Some(cx.jwt),
        };
        <Self as FromConfig<Scope<'_>>>::from_config(
            &format!("{at}.rate_limits"),
            &r.rate_limits[..],
            &scope,
            problems,
        )
    }
}

impl FromConfig<Scope<'_>> for RateLimits {
    type Section = [RateLimitSection];

    /// A list of windows (`routes[N].rate_limits`, `consumers.NAME.rate_limits`), problems
    /// under `at`; `None` when the list is empty or wrong. The scope's name and each
    /// window's definition identify its counters, so a window that is unchanged across a
    /// reload keeps counting and a changed one starts afresh.
    fn from_config(
        at: &str,
        sections: &[RateLimitSection],
        scope: &Scope<'_>,
        problems: &mut Vec<Problem>,
    ) -> Option<Self> {
        let Scope {
            name: owner,
            store,
            jwt,
        } = *scope;
        let before = problems.len();
        let mut windows: Vec<Window> = Vec::with_capacity(sections.len());
        for (i, s) in sections.iter().enumerate() {
            let RateLimitSection {
                limit,
                window,
                key,
                applies_to,
                scope,
            } = s;
            let scope: Arc<str> = match scope.as_deref() {
                None => owner.into(),
                Some(GLOBAL_SCOPE) => GLOBAL_SCOPE.into(),
                Some(group) => {
                    crate::names::check_name(
                        &format!("{at}[{i}].scope"),
                        "rate-limit group",
                        group,
                        problems,
                    );
                    format!("group:{group}").into()
                }
            };
            let applies = if applies_to.is_empty() {
                7
            } else {
                applies_to.iter().fold(0, |m, k| m | bit(*k))
            };
            bounds::RATE_LIMIT_LIMIT.check(&format!("{at}[{i}].limit"), *limit, problems);
            let window_ok =
                bounds::RATE_LIMIT_WINDOW.check(&format!("{at}[{i}].window"), *window, problems);
            if windows.iter().any(|w| {
                w.key == *key
                    && w.window == window.0
                    && w.applies & applies != 0
                    && w.scope == scope
            }) {
                problems.push(Problem::new(
                    format!("{at}[{i}]"),
                    "duplicate window for the same key",
                ));
            }
            if !window_ok {
                continue;
            }
            let claim_header = match &key.who {
                Some(Who::Claim(claim)) => {
                    let h = jwt.and_then(|p| p.all().find_map(|p| p.claim_header(claim).cloned()));
                    if h.is_none() {
                        problems.push(Problem::new(
                            format!("{at}[{i}].key"),
                            format!(
                                "claim:{claim} needs a JWT provider that maps the claim to a \
                                 header (claim_headers = {{ \"{claim}\" = \"X-...\" }})"
                            ),
                        ));
                        continue;
                    }
                    h
                }
                _ => None,
            };
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&*scope, limit, window.0, key, applies).hash(&mut h);
            // One letter per part (`icr` as before), a name after the kinds that carry one.
            let mut kinds = String::new();
            if key.ip {
                kinds.push('i');
            }
            match &key.who {
                None => {}
                Some(Who::Consumer) => kinds.push('c'),
                Some(Who::Subject) => kinds.push('s'),
                Some(Who::ApiKey) => kinds.push('a'),
                Some(Who::Header(name)) => kinds.push_str(&format!("h-{name}-")),
                Some(Who::Claim(name)) => kinds.push_str(&format!("j-{name}-")),
            }
            if key.route {
                kinds.push('r');
            }
            let salt = h.finish();
            windows.push(Window {
                claim_header,
                limit: *limit,
                window: window.0,
                key: key.clone(),
                applies,
                tag: format!("{{rl:{scope}}}").into(),
                scope,
                counts: store.counts(salt, window.0),
                salt,
                sync_name: format!("w{}l{limit}k{kinds}", window.0.as_millis()),
            });
        }
        if windows.is_empty() || problems.len() > before {
            return None;
        }
        Some(RateLimits {
            windows,
            store: store.clone(),
            shards: (0..LOCAL_SHARDS)
                .map(|_| std::sync::Mutex::new(()))
                .collect(),
        })
    }
}

impl RateLimits {
    /// Each window in words, e.g. `100 per 60s by ip+route` (`tollgate explain`).
    pub(crate) fn describe(&self) -> Vec<String> {
        self.windows
            .iter()
            .map(|w| {
                let mut text = format!(
                    "{} per {} by {}",
                    w.limit,
                    humantime::format_duration(w.window),
                    w.key.text()
                );
                if w.applies != 7 {
                    let kinds: Vec<&str> = [
                        (CallerKind::Unauthenticated, "unauthenticated"),
                        (CallerKind::Jwt, "jwt"),
                        (CallerKind::ApiKey, "api_key"),
                    ]
                    .iter()
                    .filter(|(k, _)| w.counts_for(*k))
                    .map(|(_, n)| *n)
                    .collect();
                    text.push_str(&format!(" for {} callers", kinds.join(" and ")));
                }
                if &*w.scope == "global" {
                    text.push_str(", shared by every route");
                } else if let Some(group) = w.scope.strip_prefix("group:") {
                    text.push_str(&format!(", shared by group {group}"));
                }
                text
            })
            .collect()
    }

    /// Count this request in every window that counts its kind of caller; refused if any is
    /// then over its limit. `None` when no window counts this caller.
    pub(crate) async fn check(&self, subject: &Subject<'_>) -> Option<RateDecision> {
        if !self.windows.iter().any(|w| w.counts_for(subject.kind)) {
            return None;
        }
        Some(self.count(subject).await)
    }

    async fn count(&self, subject: &Subject<'_>) -> RateDecision {
        if let Some(fleet) = &self.store.fleet {
            return self.check_sync(fleet, subject).await;
        }
        if let Some(redis) = &self.store.redis {
            match self.check_redis(redis, subject).await {
                Ok(d) => return d,
                Err(()) => match redis.on_error {
                    RedisFailurePolicy::Local => {}
                    RedisFailurePolicy::Allow => return self.unlimited(true),
                    RedisFailurePolicy::Deny => return self.unlimited(false),
                },
            }
        }
        self.check_local(subject)
    }

    /// Count against the budget this instance leased from the fleet ([`super::fleet`]).
    async fn check_sync(&self, fleet: &Arc<Fleet>, subject: &Subject<'_>) -> RateDecision {
        let index = self.counting(subject.kind);
        let parts: Vec<_> = index
            .iter()
            .map(|i| &self.windows[*i])
            .map(|w| {
                let (ip, consumer) = key_parts(w, subject);
                let route = w.key.route.then_some(subject.route);
                (w, ip, consumer, route)
            })
            .collect();
        let names: Vec<_> = parts
            .iter()
            .map(|(w, ip, consumer, route)| {
                move || {
                    format!(
                        "{}:{}|{}|{}",
                        w.sync_name,
                        ip.map(|i| i.to_string()).unwrap_or_default(),
                        consumer.unwrap_or(""),
                        route.unwrap_or("")
                    )
                }
            })
            .collect();
        let windows: Vec<fleet::Window<'_>> = parts
            .iter()
            .zip(&names)
            .map(|((w, ip, consumer, route), name)| fleet::Window {
                limit: w.limit,
                window_ms: w.window.as_millis() as u64,
                subject: fleet.subject_hash(&(w.salt, ip, consumer, route)),
                tag: &w.tag,
                name,
            })
            .collect();
        let checked = fleet.check(&windows).await;
        let wall_ms = checked.wall_ms;
        let reset = |w: &Window| {
            let window_ms = (w.window.as_millis() as u64).max(1);
            (window_ms - wall_ms % window_ms).div_ceil(1000).max(1)
        };
        let (counts, over) = self.spread(&index, &checked.counts, checked.over);
        let mut d = self.decide(&counts, over, subject.kind, reset);
        // The limit that applied (a share of it while Redis is away).
        if let Some(i) = checked.over {
            d.limit = checked.limits[i];
        }
        d
    }

    /// A decision made without counting (Redis down with `allow` or `deny`).
    fn unlimited(&self, allowed: bool) -> RateDecision {
        let w = self.windows.first();
        RateDecision {
            allowed,
            limit: w.map_or(0, |w| w.limit),
            remaining: if allowed { w.map_or(0, |w| w.limit) } else { 0 },
            reset_secs: 1,
            window: None,
        }
    }

    fn local_key(&self, w: &Window, subject: &Subject<'_>) -> u64 {
        let (ip, consumer) = key_parts(w, subject);
        key_of((w.salt, ip, consumer))
    }

    /// Count locally.
    pub(crate) fn check_local(&self, subject: &Subject<'_>) -> RateDecision {
        let shard = {
            use std::hash::BuildHasher;
            // A fast fixed hash: the shard needs spreading, not resistance to attack (a
            // subject can only make itself wait).
            let h = foldhash::fast::FixedState::default()
                .hash_one((subject.client_ip, subject.consumer));
            h as usize % self.shards.len()
        };
        let _one_at_a_time = self.shards[shard].lock().unwrap_or_else(|p| p.into_inner());
        let mut counts = Vec::with_capacity(self.windows.len());
        let mut over = None;
        let mut keys = [0u64; 8];
        for (i, w) in self.windows.iter().enumerate() {
            if !w.counts_for(subject.kind) {
                counts.push(0);
                continue;
            }
            let key = self.local_key(w, subject);
            if let Some(k) = keys.get_mut(i) {
                *k = key;
            }
            let count = w.counts.observe(key, 1);
            counts.push(count);
            if over.is_none() && count > w.limit {
                over = Some(i);
            }
        }
        if over.is_some() {
            for (i, w) in self.windows.iter().enumerate() {
                if !w.counts_for(subject.kind) {
                    continue;
                }
                let key = keys
                    .get(i)
                    .copied()
                    .unwrap_or_else(|| self.local_key(w, subject));
                w.counts.observe(key, -1);
            }
        }
        self.decide(&counts, over, subject.kind, |w: &Window| {
            w.counts.reset_secs()
        })
    }

    /// The positions in `self.windows` of the windows that count `kind`: the order the
    /// Redis and sync checks send them in, which [`Self::spread`] maps back.
    fn counting(&self, kind: CallerKind) -> Vec<usize> {
        (0..self.windows.len())
            .filter(|i| self.windows[*i].counts_for(kind))
            .collect()
    }

    /// Counts (and the refusing window) of the windows `index` names, spread back over all
    /// of `self.windows` (0 for the others).
    fn spread(
        &self,
        index: &[usize],
        counts: &[u64],
        over: Option<usize>,
    ) -> (Vec<u64>, Option<usize>) {
        let mut all = vec![0; self.windows.len()];
        for (i, c) in index.iter().zip(counts) {
            all[*i] = *c;
        }
        (all, over.and_then(|o| index.get(o).copied()))
    }

    /// The decision from each window's count: refused by the first over its limit, else
    /// admitted with the numbers of the window closest to refusing, among those that count
    /// this kind of caller.
    fn decide(
        &self,
        counts: &[u64],
        over: Option<usize>,
        kind: CallerKind,
        reset: impl Fn(&Window) -> u64,
    ) -> RateDecision {
        if let Some(i) = over {
            let w = &self.windows[i];
            return RateDecision {
                allowed: false,
                limit: w.limit,
                remaining: 0,
                reset_secs: reset(w),
                window: Some(w.window),
            };
        }
        let tightest = self
            .windows
            .iter()
            .zip(counts)
            .filter(|(w, _)| w.counts_for(kind))
            .min_by_key(|(w, c)| w.limit.saturating_sub(**c));
        match tightest {
            Some((w, c)) => RateDecision {
                allowed: true,
                limit: w.limit,
                remaining: w.limit.saturating_sub(*c),
                reset_secs: reset(w),
                window: Some(w.window),
            },
            None => RateDecision {
                allowed: true,
                limit: 0,
                remaining: 0,
                reset_secs: 0,
                window: None,
            },
        }
    }

    async fn check_redis(
        &self,
        redis: &RedisStore,
        subject: &Subject<'_>,
    ) -> Result<RateDecision, ()> {
        let now_ms = redis.epoch.elapsed().as_millis() as u64;
        if now_ms < redis.down_until_ms.load(Ordering::Relaxed) {
            return Err(());
        }
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut invocation = redis.script.prepare_invoke();
        let index = self.counting(subject.kind);
        let windows = || index.iter().map(|i| &self.windows[*i]);
        for w in windows() {
            let window_ms = w.window.as_millis() as u64;
            let (ip, consumer) = key_parts(w, subject);
            let tag = format!(
                "{}|{}|{}|{}",
                w.scope,
                if w.key.route { subject.route } else { "" },
                ip.map(|i| i.to_string()).unwrap_or_default(),
                consumer.unwrap_or("")
            );
            invocation.key(format!(
                "tollgate:{{{tag}}}:w{window_ms}l{}:{}",
                w.limit,
                wall_ms / window_ms.max(1)
            ));
        }
        for w in windows() {
            invocation.arg(w.window.as_millis() as u64 * 2);
        }
        for w in windows() {
            invocation.arg(w.limit);
        }
        let result = tokio::time::timeout(redis.timeout, async {
            let mut conn = redis.client.conn().await?;
            invocation.invoke_async::<Vec<i64>>(&mut conn).await
        })
        .await;
        let values = match result {
            Ok(Ok(v)) if v.len() == index.len() + 1 => v,
            other => {
                if let Ok(Err(e)) = &other {
                    log::warn!("rate limit: Redis failed: {e}");
                } else {
                    log::warn!("rate limit: Redis did not answer in {:?}", redis.timeout);
                }
                self.store.redis_errors.inc();
                redis
                    .down_until_ms
                    .store(now_ms + REDIS_BACKOFF.as_millis() as u64, Ordering::Relaxed);
                return Err(());
            }
        };
        let counts: Vec<u64> = values[..index.len()]
            .iter()
            .map(|c| (*c).max(0) as u64)
            .collect();
        let over = usize::try_from(values[index.len()])
            .ok()
            .filter(|i| *i > 0)
            .map(|i| i - 1);
        let (counts, over) = self.spread(&index, &counts, over);
        let reset = |w: &Window| {
            let window_ms = (w.window.as_millis() as u64).max(1);
            let left = window_ms - wall_ms % window_ms;
            left.div_ceil(1000).max(1)
        };
        Ok(self.decide(&counts, over, subject.kind, reset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::HumanDuration;

    /// The store of `section`, kept from `previous` when unchanged.
    fn build_store(
        section: &RateLimitBackendSection,
        previous: Option<&Arc<RateLimitStore>>,
        metrics: StoreMetrics,
        p: &mut Vec<Problem>,
    ) -> Option<Arc<RateLimitStore>> {
        let cx = Reloaded {
            previous,
            with: metrics,
        };
        Arc::<RateLimitStore>::from_config("rate_limit", section, &cx, p)
    }

    /// The windows of `sections`, scoped to `name`.
    fn build(
        at: &str,
        name: &str,
        sections: &[RateLimitSection],
        store: &Arc<RateLimitStore>,
        p: &mut Vec<Problem>,
    ) -> Option<RateLimits> {
        let scope = Scope {
            name,
            store,
            jwt: None,
        };
        RateLimits::from_config(at, sections, &scope, p)
    }

    fn limits(windows: &[(u64, u64, &str)]) -> RateLimits {
        let counter = StoreMetrics::detached();
        let mut p = Vec::new();
        let store =
            build_store(&RateLimitBackendSection::default(), None, counter, &mut p).unwrap();
        let sections: Vec<RateLimitSection> = windows
            .iter()
            .map(|(limit, secs, key)| RateLimitSection {
                limit: *limit,
                window: HumanDuration(Duration::from_secs(*secs)),
                key: RateKey::try_from(key.to_string()).unwrap(),
                applies_to: Vec::new(),
                scope: None,
            })
            .collect();
        build("rate_limits", "r", &sections, &store, &mut p).unwrap()
    }

    fn subject(ip: &str) -> Subject<'static> {
        Subject {
            kind: CallerKind::Unauthenticated,
            route: "r",
            consumer: None,
            subject: None,
            api_key: None,
            headers: None,
            identity_headers: &[],
            client_ip: Some(ip.parse().unwrap()),
        }
    }

    #[test]
    fn subject_api_key_and_header_keys_count_what_they_name() {
        let l = limits(&[(1, 60, "subject")]);
        let by = |sub| Subject {
            subject: sub,
            ..subject("10.0.0.1")
        };
        assert!(l.check_local(&by(Some("u1"))).allowed);
        assert!(!l.check_local(&by(Some("u1"))).allowed);
        assert!(l.check_local(&by(Some("u2"))).allowed, "per subject");
        // An API-key caller has no subject: counted by its address, apart from subjects.
        let keyed = Subject {
            api_key: Some("app"),
            consumer: Some("app"),
            ..subject("10.0.0.1")
        };
        assert!(l.check_local(&keyed).allowed);
        assert!(!l.check_local(&keyed).allowed);

        let l = limits(&[(1, 60, "api_key")]);
        let jwt = Subject {
            subject: Some("app"),
            consumer: Some("app"),
            ..subject("10.0.0.2")
        };
        let key = Subject {
            api_key: Some("app"),
            consumer: Some("app"),
            ..subject("10.0.0.3")
        };
        assert!(l.check_local(&key).allowed);
        assert!(
            l.check_local(&jwt).allowed,
            "a subject named like a consumer is not that consumer"
        );
        assert!(!l.check_local(&key).allowed);

        let l = limits(&[(1, 60, "header:x-tenant")]);
        let mut t1 = http::HeaderMap::new();
        t1.insert("x-tenant", HeaderValue::from_static("t1"));
        let mut t2 = http::HeaderMap::new();
        t2.insert("x-tenant", HeaderValue::from_static("t2"));
        let tenant = |h, ip| Subject {
            headers: Some(h),
            ..subject(ip)
        };
        assert!(l.check_local(&tenant(&t1, "10.0.0.4")).allowed);
        assert!(
            !l.check_local(&tenant(&t1, "10.0.0.5")).allowed,
            "one budget per tenant, whatever the address"
        );
        assert!(l.check_local(&tenant(&t2, "10.0.0.4")).allowed);
    }

    #[test]
    fn a_key_counts_one_kind_of_caller() {
        for bad in [
            "consumer+subject",
            "header:x-a+api_key",
            "claim:",
            "header:bad name",
            "who",
        ] {
            assert!(RateKey::try_from(bad.to_string()).is_err(), "{bad}");
        }
        let k = RateKey::try_from("route+claim:tenant+ip".to_string()).unwrap();
        assert_eq!(k.text(), "ip+route+claim:tenant");
    }

    #[test]
    fn exactly_limit_then_refused_with_headers() {
        let l = limits(&[(3, 60, "ip")]);
        let s = subject("10.0.0.1");
        for i in 0..3 {
            let d = l.check_local(&s);
            assert!(d.allowed);
            assert_eq!(d.remaining, 2 - i);
        }
        let d = l.check_local(&s);
        assert!(!d.allowed);
        assert_eq!((d.limit, d.remaining), (3, 0));
        let h: Vec<_> = d.headers().collect();
        assert_eq!(h.len(), 4);
        assert!(h.iter().any(|(k, _)| k == http::header::RETRY_AFTER));
        assert_eq!(l.check_local(&subject("10.0.0.9")).headers().count(), 3);
        assert!(d.reset_secs >= 1 && d.reset_secs <= 60);
        // Another key is unaffected.
        assert!(l.check_local(&subject("10.0.0.2")).allowed);
    }

    #[test]
    fn refused_requests_do_not_consume_other_windows() {
        let l = limits(&[(2, 60, "ip"), (5, 3600, "ip")]);
        let s = subject("10.0.0.3");
        let admitted = (0..10).filter(|_| l.check_local(&s).allowed).count();
        assert_eq!(admitted, 2);
        // The hour window counted only the two admitted requests.
        let hour = &l.windows[1];
        assert_eq!(hour.counts.observe(l.local_key(hour, &s), 0), 2);
    }

    #[test]
    fn consumer_keys_fall_back_to_ip() {
        let l = limits(&[(1, 60, "consumer")]);
        let a = Subject {
            consumer: Some("a"),
            ..subject("10.0.0.9")
        };
        let b = Subject {
            consumer: Some("b"),
            ..subject("10.0.0.9")
        };
        assert!(l.check_local(&a).allowed);
        assert!(!l.check_local(&a).allowed);
        assert!(l.check_local(&b).allowed, "consumers are isolated");
        assert!(
            l.check_local(&subject("10.0.0.9")).allowed,
            "anonymous falls back to the IP"
        );
        assert!(!l.check_local(&subject("10.0.0.9")).allowed);
    }

    #[test]
    fn concurrent_checks_never_admit_more_than_the_limit() {
        let l = Arc::new(limits(&[(100, 60, "route")]));
        let admitted = Arc::new(AtomicU64::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                let (l, admitted) = (l.clone(), admitted.clone());
                s.spawn(move || {
                    for _ in 0..100 {
                        if l.check_local(&subject("10.1.1.1")).allowed {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn every_problem_is_located() {
        let s = |limit, ms, key: &str| RateLimitSection {
            limit,
            window: HumanDuration(Duration::from_millis(ms)),
            key: RateKey::try_from(key.to_string()).unwrap(),
            applies_to: Vec::new(),
            scope: None,
        };
        let counter = StoreMetrics::detached();
        let mut p = Vec::new();
        let store =
            build_store(&RateLimitBackendSection::default(), None, counter, &mut p).unwrap();
        let built = build(
            "routes[0].rate_limits",
            "r",
            &[s(0, 1000, "ip"), s(1, 10, "ip"), s(2, 1000, "ip")],
            &store,
            &mut p,
        );
        assert!(built.is_none());
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].rate_limits[0].limit",
                "routes[0].rate_limits[1].window",
                "routes[0].rate_limits[2]"
            ]
        );
    }

    /// A reload builds new windows over the same store: an unchanged window keeps its
    /// count, a changed one starts afresh.
    #[test]
    fn unchanged_windows_keep_counting_across_a_rebuild() {
        let counter = StoreMetrics::detached();
        let mut p = Vec::new();
        let section = RateLimitBackendSection::default();
        let store = build_store(&section, None, counter.clone(), &mut p).unwrap();
        let window = |limit| RateLimitSection {
            limit,
            window: HumanDuration(Duration::from_secs(60)),
            key: RateKey::IP,
            applies_to: Vec::new(),
            scope: None,
        };
        let first = build("x", "r", &[window(2)], &store, &mut p).unwrap();
        let s = subject("10.9.9.9");
        assert!(first.check_local(&s).allowed);
        assert!(first.check_local(&s).allowed);
        assert!(!first.check_local(&s).allowed);
        let again = build_store(&section, Some(&store), counter, &mut p).unwrap();
        assert!(Arc::ptr_eq(&again, &store));
        let same = build("x", "r", &[window(2)], &again, &mut p).unwrap();
        assert!(!same.check_local(&s).allowed, "still limited");
        let changed = build("x", "r", &[window(3)], &again, &mut p).unwrap();
        assert!(changed.check_local(&s).allowed, "a new limit starts afresh");
        assert!(p.is_empty(), "{p:?}");
    }

    /// The spec's three limits as three lines: each kind of caller is counted by its own
    /// window and not capped by the others', and a `global` window is one count for every
    /// route that has it.
    #[test]
    fn limits_by_kind_of_caller_and_a_global_scope() {
        let counter = StoreMetrics::detached();
        let mut p = Vec::new();
        let store =
            build_store(&RateLimitBackendSection::default(), None, counter, &mut p).unwrap();
        let sections: Vec<RateLimitSection> = toml::from_str::<toml::Table>(
            r#"w = [
  { limit = 2, window = "1h", key = "ip", applies_to = ["unauthenticated"], scope = "global" },
  { limit = 3, window = "1h", key = "consumer", applies_to = ["jwt"], scope = "global" },
  { limit = 5, window = "1h", key = "consumer", applies_to = ["api_key"], scope = "global" },
]"#,
        )
        .unwrap()["w"]
            .clone()
            .try_into()
            .unwrap();
        let a = build("routes[0].rate_limits", "a", &sections, &store, &mut p).unwrap();
        let b = build("routes[1].rate_limits", "b", &sections, &store, &mut p).unwrap();
        assert!(p.is_empty(), "{p:?}");
        let who = |kind, consumer| Subject {
            kind,
            route: "a",
            consumer,
            subject: None,
            api_key: None,
            headers: None,
            identity_headers: &[],
            client_ip: Some("10.0.0.1".parse().unwrap()),
        };
        let admitted = |kind, consumer: Option<&'static str>| {
            (0..10)
                .filter(|i| {
                    let l = if i % 2 == 0 { &a } else { &b };
                    l.check_local(&who(kind, consumer)).allowed
                })
                .count()
        };
        assert_eq!(
            admitted(CallerKind::Unauthenticated, None),
            2,
            "over both routes"
        );
        assert_eq!(admitted(CallerKind::Jwt, Some("user-1")), 3);
        assert_eq!(
            admitted(CallerKind::ApiKey, Some("app-1")),
            5,
            "not capped by 2 or 3"
        );
        let d = a.check_local(&who(CallerKind::ApiKey, Some("app-2")));
        assert_eq!(
            (d.limit, d.remaining),
            (5, 4),
            "the headers name the caller's own window"
        );
    }
}
