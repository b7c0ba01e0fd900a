//! `[rate_limit] backend = "sync"`: limits shared by a fleet of gateways through leased
//! budget, so the fleet never admits more than a limit, with no Redis call on the request
//! path while an instance holds budget.
//!
//! **Leases.** Windows are fixed and aligned to the Unix epoch, so every instance agrees on
//! them. For each window and subject Redis keeps how much of the window's budget has been
//! *granted* to instances (`tollgate:{rl:SCOPE}:NAME:INDEX`; every key of a scope shares the
//! hash tag `{rl:SCOPE}`, so it lives in one Redis Cluster slot). An instance takes a lease
//! with one atomic script ([`LEASE`]: `grant = min(ask, limit - granted); granted += grant`;
//! the key expires a second after the window's end) and then admits from it with no Redis
//! call. Only granted budget is spent, so the fleet's admitted total never exceeds the limit.
//! Once Redis answers that nothing is left, the instance refuses the subject locally for the
//! rest of the window.
//!
//! **Sizes.** The first lease of a window is `ceil(limit / (4 x live replicas))`, or less
//! when the previous window showed this instance slower than that per `sync_interval`. Each
//! next lease is what this instance admitted over the last lease period (`sync_interval`),
//! measured since its previous request for a lease: at least 1, at most four times what it
//! admitted since then (a burst does not take the whole budget), at most what is left. So a
//! hot instance takes large leases and an idle one small ones. The next lease is fetched in
//! the background when the budget in hand is half spent: at a steady rate `r` an instance
//! asks once per `T = sync_interval` and holds between `r x T` and `2 x r x T`. A request that
//! finds no budget waits for the lease on its way (one request per window and subject at a
//! time, all others wait for it; at most about twice `redis_timeout`): it is never admitted
//! without budget.
//!
//! **Under-admission.** Budget leased but not spent by the end of a window is lost: when
//! demand exceeds the limit the fleet admits at least `limit - sum of outstanding leases`,
//! each at most `max(ceil(limit / (4 x replicas)), 2 x r_i x sync_interval)`, and only
//! instances whose traffic stopped while holding budget leave any.
//!
//! **Cost.** A lease is two Redis commands (`EVALSHA`, `INCRBY`), a heartbeat two (`ZADD`,
//! `ZCOUNT`; every tenth also prunes): with N instances busy on one subject, about
//! `N x (2 / T + 2.2 / max(T, 1s))` commands a second whatever the request rate (67 at the
//! defaults and N = 3: 0.0067 a request at 10,000 requests/s). A subject slower than one
//! request per `T` on an instance takes leases of one, fetched ahead of its requests.
//! `docs/configuration.md` has the measured figures.
//!
//! **Replicas and outages.** A background task refreshes this instance's heartbeat every
//! `sync_interval`, at most once a second (a member of the sorted set
//! `tollgate:{fleet}:instances` scored with its time; members older than five beats do not
//! count), and reads how many are live. When a lease or a heartbeat fails, each instance
//! admits, per window, `ceil(limit / live replicas last seen)` from its own counts (what it
//! admitted from leases included; budget it still holds is spent first), logs it once, shows
//! it in `tollgate_rate_limit_sync_degraded` and in `/health` ([`Fleet::health`]), and asks
//! Redis nothing on the request path. The task probes Redis every `sync_interval`; once the
//! heartbeat and every scope that failed answer, it adds what was admitted without a lease
//! to the window's granted count (`INCRBY`, so later leases account for it) and leasing
//! resumes. A Redis that loses its data mid-window (a restart without persistence) forgets
//! what it had granted before: the fleet may then admit that much again.

use crate::redis_conn::Client;
use futures::future::{FutureExt, Shared};
use prometheus::{IntCounter, IntGauge};
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

const SHARDS: usize = 64;
const HEARTBEATS: &str = "tollgate:{fleet}:instances";
/// Heartbeats go every `sync_interval`, but at most this often.
const MIN_BEAT: Duration = Duration::from_secs(1);
/// A replica is live while its last heartbeat is younger than this many beats.
const LIVE_BEATS: u64 = 5;
/// Every this many heartbeats, members no longer live are removed and the set's expiry
/// renewed (the other beats are two commands).
const PRUNE_EVERY: u64 = 10;
/// A window's key outlives the window by this much, for clocks that differ slightly.
const KEY_GRACE_MS: u64 = 1000;
/// Times one check may wait for a lease before it refuses.
const MAX_ROUNDS: usize = 8;
/// A lease is at most this many times what was admitted since the last ask.
const GROWTH: u64 = 4;

/// The lease: `KEYS[1]` the window's granted count; `ARGV` the limit, the ask, what was
/// admitted without a lease (added unconditionally) and the key's time to live in ms.
/// Returns the grant and the granted count after it. `INCRBY` first and `DECRBY` only when
/// the budget runs out: two commands a lease (with `EVALSHA`) in the common case.
const LEASE: &str = r#"
local limit = tonumber(ARGV[1])
local ask = tonumber(ARGV[2])
local delta = ask + tonumber(ARGV[3])
local granted = redis.call('INCRBY', KEYS[1], delta)
if granted == delta then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
local grant = ask
if granted > limit then
  grant = math.max(0, ask - (granted - limit))
  if grant < ask then
    redis.call('DECRBY', KEYS[1], ask - grant)
    granted = granted - (ask - grant)
  end
end
return {grant, granted}
"#;

/// The fleet's state as this instance knows it. One per rate-limit store; it survives reloads
/// that keep `[rate_limit]` as it is.
pub(crate) struct Fleet {
    client: Client,
    /// `sync_interval`: the lease period, and how often the background task runs.
    interval: Duration,
    /// `redis_timeout`: the longest a lease may take.
    timeout: Duration,
    /// This instance in the heartbeat set.
    id: String,
    /// By the hash of (window, subject).
    shards: Box<[Mutex<HashMap<EntryKey, Entry>>]>,
    /// Keyed, so clients cannot choose subjects that collide.
    hasher: std::collections::hash_map::RandomState,
    script: redis::Script,
    replicas: AtomicU64,
    degraded: AtomicBool,
    outage: Mutex<Outage>,
    /// Heartbeats sent, and when the next is due.
    beats: AtomicU64,
    next_beat: Mutex<Option<Instant>>,
    metrics: FleetMetrics,
}

/// What failed, while degraded.
#[derive(Default)]
struct Outage {
    /// Scopes whose lease failed: probed until they answer.
    tags: HashSet<Arc<str>>,
    why: String,
    since: Option<SystemTime>,
}

/// `tollgate_rate_limit_sync_*`.
#[derive(Clone)]
pub(crate) struct FleetMetrics {
    pub degraded: IntGauge,
    pub replicas: IntGauge,
    pub failures: IntCounter,
}

/// (hash of window and subject, window index).
type EntryKey = (u64, u64);

/// Resolves (with an error, its sender dropped) when a lease request is done.
type Waiter = Shared<oneshot::Receiver<()>>;

/// One window of one subject in one window index.
struct Entry {
    /// The Redis key, and the hash tag of its scope.
    key: String,
    tag: Arc<str>,
    limit: u64,
    window_ms: u64,
    index: u64,
    /// Leased budget not yet spent.
    lease: u64,
    /// `lease` when the last lease arrived: the next is fetched when half of it is spent.
    size: u64,
    /// The fleet's granted count at the last answer.
    granted: u64,
    /// Redis said nothing is left: refused here for the rest of the window.
    exhausted: bool,
    /// When the last lease was asked for (`None`: not yet in this window).
    asked_at: Option<Instant>,
    /// Admitted here since then.
    since: u64,
    /// Admitted per second, as measured at the last ask.
    rate: f64,
    /// The rate of the previous window, for the first lease of this one.
    hint: Option<f64>,
    /// Admitted here in this window, leased or not (the outage rule counts these).
    own: u64,
    /// Admitted without a lease (while degraded), not yet added in Redis.
    unleased: u64,
    /// The lease request on its way, if any, and when it was sent.
    inflight: Option<(Waiter, Instant)>,
}

impl Entry {
    fn new(w: &Window<'_>, index: u64, hint: Option<f64>) -> Entry {
        Entry {
            key: format!("tollgate:{}:{}:{index}", w.tag, (w.name)()),
            tag: w.tag.clone(),
            limit: w.limit,
            window_ms: w.window_ms.max(1),
            index,
            lease: 0,
            size: 0,
            granted: 0,
            exhausted: false,
            asked_at: None,
            since: 0,
            rate: 0.0,
            hint,
            own: 0,
            unleased: 0,
            inflight: None,
        }
    }

    /// The lease request on its way, if any. Its task ends it within `timeout`; one older
    /// than twice that was dropped (with its runtime) and is not waited for.
    fn waiter(&self, timeout: Duration) -> Option<&Waiter> {
        self.inflight
            .as_ref()
            .filter(|(_, sent)| sent.elapsed() < timeout * 2)
            .map(|(w, _)| w)
    }

    /// Admitted per second, for the first lease of the next window.
    fn rate_hint(&self) -> f64 {
        let per_window = self.own as f64 * 1000.0 / self.window_ms as f64;
        self.rate.max(per_window)
    }

    /// Milliseconds from `now_ms` to the key's expiry.
    fn ttl_ms(&self, now_ms: u64) -> u64 {
        (self.window_ms * (self.index + 1)).saturating_sub(now_ms) + KEY_GRACE_MS
    }
}

/// A request to Redis for one entry: a lease (`ask > 0`), and what was admitted without one.
struct Job {
    shard: usize,
    at: EntryKey,
    key: String,
    tag: Arc<str>,
    limit: u64,
    ask: u64,
    add: u64,
    ttl_ms: u64,
    /// Dropped when the job is done: wakes the requests waiting for the lease.
    done: Option<oneshot::Sender<()>>,
}

/// One window of a check, as [`Fleet::check`] needs it.
pub(crate) struct Window<'a> {
    pub limit: u64,
    pub window_ms: u64,
    /// [`Fleet::subject_hash`] of the window's definition and what it counts by.
    pub subject: u64,
    /// `{rl:SCOPE}`, shared by every key of the scope.
    pub tag: &'a Arc<str>,
    /// The window's definition and the subject, as the Redis key spells them (built only
    /// when the window first sees the subject).
    pub name: &'a (dyn Fn() -> String + std::marker::Sync),
}

/// What a check found: the count each window would have with this request (for leased
/// budget, the fleet's granted count less what this instance still holds), the first window
/// over its limit, and the limit that applied to it.
pub(crate) struct Checked {
    pub counts: Vec<u64>,
    pub over: Option<usize>,
    pub limits: Vec<u64>,
    pub wall_ms: u64,
}

/// How a window takes a request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// From the budget in hand.
    Lease,
    /// From the outage share (degraded).
    Local,
    /// Refused: the count it would have, and the limit that applied.
    Over(u64, u64),
    /// No budget in hand: a lease is needed.
    Need,
}

/// What one look at the windows decided.
enum Step {
    Done(Checked, Vec<Job>),
    Wait(Vec<Waiter>, Vec<Job>),
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The size of the next lease, and the rate it was sized to. The first of a window is
/// `ceil(limit / (4 x replicas))`, or what the previous window's rate (`hint`) admits in one
/// `period` if less; the next ones what `since` requests admitted since `asked_at` make in
/// one `period`, at least 1, at most `GROWTH` times `since`, at most the limit.
fn next_ask(
    limit: u64,
    replicas: u64,
    period: Duration,
    last: Option<(Instant, u64)>,
    hint: Option<f64>,
    now: Instant,
) -> (u64, f64) {
    let per_period = |rate: f64| (rate * period.as_secs_f64()).ceil().max(1.0) as u64;
    match last {
        None => {
            let base = limit.div_ceil(4 * replicas.max(1)).max(1);
            match hint {
                Some(r) => (per_period(r).min(base), r),
                None => (base, 0.0),
            }
        }
        Some((asked_at, since)) => {
            let elapsed = now
                .saturating_duration_since(asked_at)
                .max(Duration::from_millis(1));
            let rate = since as f64 / elapsed.as_secs_f64();
            let ask = per_period(rate)
                .min(GROWTH * since.max(1))
                .min(limit)
                .max(1);
            (ask, rate)
        }
    }
}

impl Fleet {
    pub(crate) fn new(
        client: Client,
        interval: Duration,
        timeout: Duration,
        metrics: FleetMetrics,
    ) -> Fleet {
        Fleet {
            client,
            interval,
            timeout,
            id: format!("{:016x}-{}", fastrand::u64(..), std::process::id()),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            script: redis::Script::new(LEASE),
            replicas: AtomicU64::new(1),
            degraded: AtomicBool::new(false),
            outage: Mutex::new(Outage::default()),
            beats: AtomicU64::new(0),
            next_beat: Mutex::new(None),
            metrics,
        }
    }

    /// A keyed hash of a window and its subject.
    pub(crate) fn subject_hash(&self, subject: &(impl std::hash::Hash + ?Sized)) -> u64 {
        self.hasher.hash_one(subject)
    }

    /// Count the request in every window if each has budget for it: from the leases in
    /// hand (no network), after waiting for a lease when one has none, or from the outage
    /// share while Redis is away. Never admits without budget.
    pub(crate) async fn check(self: &Arc<Self>, windows: &[Window<'_>]) -> Checked {
        // A lease is bounded by the timeout; a request may wait for one already on its way
        // and then, behind a crowd that emptied it, for the next.
        let deadline = tokio::time::Instant::now() + self.timeout * 2 + Duration::from_millis(20);
        for round in 0..=MAX_ROUNDS {
            let may_wait = round < MAX_ROUNDS && tokio::time::Instant::now() < deadline;
            match self.step(windows, may_wait) {
                Step::Done(checked, jobs) => {
                    self.spawn(jobs);
                    return checked;
                }
                Step::Wait(waits, jobs) => {
                    self.spawn(jobs);
                    let all = futures::future::join_all(waits);
                    let _ = tokio::time::timeout_at(deadline, all).await;
                }
            }
        }
        // Not reached: the last round may not wait.
        Checked {
            counts: windows.iter().map(|w| w.limit + 1).collect(),
            over: (!windows.is_empty()).then_some(0),
            limits: windows.iter().map(|w| w.limit).collect(),
            wall_ms: wall_ms(),
        }
    }

    fn spawn(self: &Arc<Self>, jobs: Vec<Job>) {
        for job in jobs {
            tokio::spawn(self.clone().run(job));
        }
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, HashMap<EntryKey, Entry>> {
        self.shards[shard].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One look at the windows, under their shards' locks: admit, refuse, or say which
    /// leases to wait for (asking for them when none is on its way).
    fn step(&self, windows: &[Window<'_>], may_wait: bool) -> Step {
        let now = wall_ms();
        let at = Instant::now();
        let degraded = self.degraded.load(Ordering::Relaxed);
        let replicas = self.replicas.load(Ordering::Relaxed).max(1);
        // Every shard the windows live in, locked in order: the check and the counting are
        // one step for concurrent requests of the same subjects.
        let shard_of = |w: &Window<'_>| w.subject as usize % SHARDS;
        let mut order: Vec<usize> = windows.iter().map(shard_of).collect();
        order.sort_unstable();
        order.dedup();
        let mut guards: Vec<_> = order.iter().map(|i| self.lock(*i)).collect();
        let pos = |w: &Window<'_>| order.binary_search(&shard_of(w)).unwrap_or(0);
        let keys: Vec<EntryKey> = windows
            .iter()
            .map(|w| (w.subject, now / w.window_ms.max(1)))
            .collect();
        let mut via = Vec::with_capacity(windows.len());
        for (w, k) in windows.iter().zip(&keys) {
            let map = &mut guards[pos(w)];
            if !map.contains_key(k) {
                let hint = map.get(&(k.0, k.1.wrapping_sub(1))).map(Entry::rate_hint);
                map.insert(*k, Entry::new(w, k.1, hint));
            }
            let e = map.entry(*k).or_insert_with(|| Entry::new(w, k.1, None));
            let share = w.limit.div_ceil(replicas);
            via.push(if e.lease > 0 {
                Via::Lease
            } else if e.exhausted {
                Via::Over(w.limit + 1, w.limit)
            } else if degraded {
                if e.own < share {
                    Via::Local
                } else {
                    Via::Over(e.own + 1, share)
                }
            } else if may_wait {
                Via::Need
            } else {
                // No budget came in time: refused, never admitted without budget.
                Via::Over(w.limit + 1, w.limit)
            });
        }
        let estimate = |e: &Entry, w: &Window<'_>| (e.granted.saturating_sub(e.lease), w.limit);
        if let Some(over) = via.iter().position(|v| matches!(v, Via::Over(..))) {
            let (counts, limits) = windows
                .iter()
                .zip(&keys)
                .zip(&via)
                .map(|((w, k), v)| match v {
                    Via::Over(count, limit) => (*count, *limit),
                    _ => guards[pos(w)]
                        .get(k)
                        .map_or((0, w.limit), |e| estimate(e, w)),
                })
                .unzip();
            return Step::Done(
                Checked {
                    counts,
                    over: Some(over),
                    limits,
                    wall_ms: now,
                },
                Vec::new(),
            );
        }
        if via.contains(&Via::Need) {
            let mut waits = Vec::new();
            let mut jobs = Vec::new();
            for ((w, k), v) in windows.iter().zip(&keys).zip(&via) {
                if *v != Via::Need {
                    continue;
                }
                let shard = shard_of(w);
                let Some(e) = guards[pos(w)].get_mut(k) else {
                    continue;
                };
                match e.waiter(self.timeout) {
                    Some(f) => waits.push(f.clone()),
                    None => {
                        let (job, wait) = self.lease_job(shard, *k, e, at, replicas, now);
                        waits.push(wait);
                        jobs.push(job);
                    }
                }
            }
            return Step::Wait(waits, jobs);
        }
        // Every window has budget: spend it.
        let mut counts = Vec::with_capacity(windows.len());
        let mut limits = Vec::with_capacity(windows.len());
        let mut jobs = Vec::new();
        for ((w, k), v) in windows.iter().zip(&keys).zip(&via) {
            let shard = shard_of(w);
            let e = guards[pos(w)]
                .entry(*k)
                .or_insert_with(|| Entry::new(w, k.1, None));
            e.own += 1;
            e.since += 1;
            if *v == Via::Lease {
                e.lease -= 1;
                let (count, limit) = estimate(e, w);
                counts.push(count);
                limits.push(limit);
            } else {
                e.unleased += 1;
                counts.push(e.own);
                limits.push(w.limit.div_ceil(replicas));
            }
            // Half spent: the next lease, in the background.
            let idle = e.waiter(self.timeout).is_none();
            if !degraded && !e.exhausted && idle && e.lease * 2 <= e.size {
                let (job, _) = self.lease_job(shard, *k, e, at, replicas, now);
                jobs.push(job);
            }
        }
        Step::Done(
            Checked {
                counts,
                over: None,
                limits,
                wall_ms: now,
            },
            jobs,
        )
    }

    /// A lease request for `e`, sized to its recent rate, with what it admitted without a
    /// lease; `e` records it as on its way.
    fn lease_job(
        &self,
        shard: usize,
        at: EntryKey,
        e: &mut Entry,
        now: Instant,
        replicas: u64,
        now_ms: u64,
    ) -> (Job, Waiter) {
        let last = e.asked_at.map(|t| (t, e.since));
        let (ask, rate) = next_ask(e.limit, replicas, self.interval, last, e.hint, now);
        e.rate = rate;
        e.asked_at = Some(now);
        e.since = 0;
        let (done, wait) = oneshot::channel();
        let wait = wait.shared();
        e.inflight = Some((wait.clone(), now));
        let job = Job {
            shard,
            at,
            key: e.key.clone(),
            tag: e.tag.clone(),
            limit: e.limit,
            ask,
            add: std::mem::take(&mut e.unleased),
            ttl_ms: e.ttl_ms(now_ms),
            done: Some(done),
        };
        (job, wait)
    }

    /// Send one job; its grant goes to the budget in hand. Whether Redis answered.
    async fn run(self: Arc<Self>, job: Job) -> bool {
        let answer = tokio::time::timeout(self.timeout, async {
            let mut conn = self.client.conn().await?;
            self.script
                .key(&job.key)
                .arg(job.limit)
                .arg(job.ask)
                .arg(job.add)
                .arg(job.ttl_ms)
                .invoke_async::<(u64, u64)>(&mut conn)
                .await
        })
        .await;
        let answer = match answer {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer in {:?}", self.timeout)),
        };
        {
            let mut map = self.lock(job.shard);
            if let Some(e) = map.get_mut(&job.at) {
                match answer {
                    Ok((grant, granted)) => {
                        e.lease += grant;
                        e.size = e.lease;
                        e.granted = e.granted.max(granted);
                        e.exhausted |= granted >= e.limit;
                    }
                    // Still to be added, by the next lease or the sync task.
                    Err(_) => e.unleased += job.add,
                }
                if job.done.is_some() {
                    e.inflight = None;
                }
            }
        }
        let ok = answer.is_ok();
        if let Err(why) = answer {
            // Before the waiting requests wake: they take the outage share.
            self.failed(Some(&job.tag), why);
        }
        drop(job.done);
        ok
    }

    /// Redis failed: degraded until the sync task sees it answer again.
    fn failed(&self, tag: Option<&Arc<str>>, why: String) {
        self.metrics.failures.inc();
        let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tag) = tag {
            outage.tags.insert(tag.clone());
        }
        if !self.degraded.swap(true, Ordering::SeqCst) {
            self.metrics.degraded.set(1);
            log::warn!(
                "rate limit sync: Redis failed ({why}); each instance admits ceil(limit / {}) \
                 per window from its own counts until it is back",
                self.replicas.load(Ordering::Relaxed).max(1)
            );
            outage.why = why;
            outage.since = Some(SystemTime::now());
        }
    }

    /// How often the heartbeat goes.
    fn beat_period(&self) -> Duration {
        self.interval.max(MIN_BEAT)
    }

    /// Whether a heartbeat is due now (and, if so, when the next is).
    fn beat_due(&self) -> bool {
        let now = Instant::now();
        let mut next = self.next_beat.lock().unwrap_or_else(|p| p.into_inner());
        if next.is_some_and(|t| now < t) {
            return false;
        }
        *next = Some(now + self.beat_period() - self.interval.min(self.beat_period()) / 2);
        true
    }

    /// Refresh the heartbeat and read how many replicas are live.
    async fn beat(&self) -> bool {
        let now = wall_ms();
        let n = self.beats.fetch_add(1, Ordering::Relaxed);
        let live_ms = self.beat_period().as_millis() as u64 * LIVE_BEATS;
        let mut p = redis::pipe();
        p.cmd("ZADD")
            .arg(HEARTBEATS)
            .arg(now)
            .arg(&self.id)
            .ignore();
        p.cmd("ZCOUNT")
            .arg(HEARTBEATS)
            .arg(now.saturating_sub(live_ms))
            .arg("+inf");
        if n % PRUNE_EVERY == 0 {
            p.cmd("ZREMRANGEBYSCORE")
                .arg(HEARTBEATS)
                .arg("-inf")
                .arg(now.saturating_sub(live_ms))
                .ignore();
            p.cmd("PEXPIRE").arg(HEARTBEATS).arg(live_ms * 4).ignore();
        }
        let limit = self.timeout.max(self.interval);
        let answer = tokio::time::timeout(limit, async {
            let mut conn = self.client.conn().await?;
            p.query_async::<(u64,)>(&mut conn).await
        })
        .await;
        match answer {
            Ok(Ok((live,))) => {
                self.replicas.store(live.max(1), Ordering::Relaxed);
                self.metrics.replicas.set(live as i64);
                true
            }
            Ok(Err(e)) => {
                self.failed(None, e.to_string());
                false
            }
            Err(_) => {
                self.failed(None, format!("no answer in {limit:?}"));
                false
            }
        }
    }

    /// Whether the slot of a scope whose lease failed answers again.
    async fn probe(&self, tag: &str) -> bool {
        let limit = self.timeout.max(self.interval);
        let answer = tokio::time::timeout(limit, async {
            let mut conn = self.client.conn().await?;
            redis::cmd("EXISTS")
                .arg(format!("tollgate:{tag}:probe"))
                .query_async::<u64>(&mut conn)
                .await
        })
        .await;
        matches!(answer, Ok(Ok(_)))
    }

    /// One run of the background task: forget past windows, beat the heart when due, add
    /// what was admitted without a lease; while degraded, first probe Redis (the heartbeat
    /// and every scope that failed), and resume leasing once all of it answered.
    async fn tick(self: &Arc<Self>) {
        let degraded = self.degraded.load(Ordering::SeqCst);
        let beaten = if degraded {
            let tags: Vec<Arc<str>> = {
                let outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
                outage.tags.iter().cloned().collect()
            };
            let (beaten, probed) = futures::join!(
                self.beat(),
                futures::future::join_all(tags.iter().map(|t| self.probe(t))),
            );
            if !(beaten && probed.iter().all(|ok| *ok)) {
                // Still away: nothing else is sent, and past windows are still forgotten.
                self.reconciliations(false);
                return;
            }
            true
        } else {
            !self.beat_due() || self.beat().await
        };
        let jobs = self.reconciliations(true);
        let added = futures::future::join_all(jobs.into_iter().map(|j| self.clone().run(j))).await;
        if degraded && beaten && added.iter().all(|ok| *ok) {
            let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
            *outage = Outage::default();
            if self.degraded.swap(false, Ordering::SeqCst) {
                self.metrics.degraded.set(0);
                log::warn!("rate limit sync: Redis is back, leasing fleet-wide budget resumed");
            }
        }
    }

    /// Forget windows before the previous one (kept for the rate its successor's first
    /// lease uses) and, if `take`, what each current window admitted without a lease, as
    /// jobs that add it in Redis.
    fn reconciliations(&self, take: bool) -> Vec<Job> {
        let now = wall_ms();
        let mut jobs = Vec::new();
        for s in 0..SHARDS {
            let mut map = self.lock(s);
            map.retain(|_, e| now < e.window_ms * (e.index + 2));
            if !take {
                continue;
            }
            for (k, e) in map.iter_mut() {
                if e.unleased > 0 && now < e.window_ms * (e.index + 1) {
                    jobs.push(Job {
                        shard: s,
                        at: *k,
                        key: e.key.clone(),
                        tag: e.tag.clone(),
                        limit: e.limit,
                        ask: 0,
                        add: std::mem::take(&mut e.unleased),
                        ttl_ms: e.ttl_ms(now),
                        done: None,
                    });
                }
            }
        }
        jobs
    }

    /// This backend's state, for `/health`: `"leased"`, or `"local_share"` while Redis is
    /// away (with why, since when, and the share each instance admits).
    pub(crate) fn health(&self) -> serde_json::Value {
        let degraded = self.degraded.load(Ordering::Relaxed);
        let replicas = self.replicas.load(Ordering::Relaxed).max(1);
        let mut doc = serde_json::json!({
            "backend": "sync",
            "mode": if degraded { "local_share" } else { "leased" },
            "degraded": degraded,
            "replicas": replicas,
        });
        if degraded {
            let outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
            doc["share"] = format!("ceil(limit / {replicas}) per window").into();
            doc["reason"] = outage.why.clone().into();
            if let Some(since) = outage.since {
                doc["since"] = humantime::format_rfc3339_seconds(since).to_string().into();
            }
        }
        doc
    }
}

/// The sync task, a background service of each generation that has the store: heartbeats,
/// outage probes, and adding what was admitted without a lease.
pub(crate) struct Sync(pub Arc<Fleet>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Sync {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(self.0.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.0.tick().await,
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(100);

    #[test]
    fn the_first_lease_is_a_quarter_of_a_replicas_share_or_less_for_a_slow_instance() {
        let now = Instant::now();
        assert_eq!(next_ask(300, 3, T, None, None, now).0, 25);
        assert_eq!(next_ask(1, 3, T, None, None, now).0, 1);
        // 50 requests a second make 5 a period: less than 25.
        assert_eq!(next_ask(300, 3, T, None, Some(50.0), now).0, 5);
        assert_eq!(next_ask(300, 3, T, None, Some(5000.0), now).0, 25);
    }

    #[test]
    fn next_leases_follow_the_rate_and_grow_at_most_fourfold() {
        let now = Instant::now();
        let ago = |ms| now - Duration::from_millis(ms);
        // 100 in 100 ms: 1,000 a second, 100 a period.
        assert_eq!(
            next_ask(10_000, 3, T, Some((ago(100), 100)), None, now).0,
            100
        );
        // 20 in 1 ms is 20,000 a second, but a lease grows at most fourfold.
        assert_eq!(next_ask(10_000, 3, T, Some((ago(1), 20)), None, now).0, 80);
        // An idle instance asks for one.
        assert_eq!(
            next_ask(10_000, 3, T, Some((ago(60_000), 1)), None, now).0,
            1
        );
        assert_eq!(next_ask(10_000, 3, T, Some((ago(100), 0)), None, now).0, 1);
        // Never more than the limit.
        assert_eq!(next_ask(50, 3, T, Some((ago(100), 100)), None, now).0, 50);
    }

    fn unreachable_fleet() -> Arc<Fleet> {
        let client = Client::new(
            Some("redis://127.0.0.1:1/0"),
            &[],
            Duration::from_millis(200),
        )
        .unwrap();
        let metrics = FleetMetrics {
            degraded: IntGauge::new("d", "d").unwrap(),
            replicas: IntGauge::new("r", "r").unwrap(),
            failures: IntCounter::new("f", "f").unwrap(),
        };
        Arc::new(Fleet::new(client, T, Duration::from_millis(200), metrics))
    }

    #[tokio::test]
    async fn without_redis_each_instance_admits_its_share_and_keeps_it_to_add_later() {
        let fleet = unreachable_fleet();
        fleet.replicas.store(3, Ordering::Relaxed);
        let tag: Arc<str> = "{rl:r}".into();
        let name = || "w1000l10kr:||r".to_string();
        let window = Window {
            limit: 10,
            window_ms: 3_600_000,
            subject: 7,
            tag: &tag,
            name: &name,
        };
        let mut admitted = 0;
        for _ in 0..10 {
            let checked = fleet.check(std::slice::from_ref(&window)).await;
            if checked.over.is_none() {
                admitted += 1;
            } else {
                assert_eq!(checked.limits, [4], "the share applied");
            }
        }
        assert_eq!(admitted, 4, "ceil(10 / 3)");
        assert!(fleet.degraded.load(Ordering::Relaxed));
        assert_eq!(fleet.metrics.degraded.get(), 1);
        let health = fleet.health();
        assert_eq!(health["mode"], "local_share");
        assert_eq!(health["share"], "ceil(limit / 3) per window");
        let unleased: u64 = (0..SHARDS)
            .flat_map(|s| {
                fleet
                    .lock(s)
                    .values()
                    .map(|e| e.unleased)
                    .collect::<Vec<_>>()
            })
            .sum();
        assert_eq!(unleased, 4, "to be added once Redis answers");
    }
}
