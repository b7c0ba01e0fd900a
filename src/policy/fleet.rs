//! `[rate_limit] backend = "sync"`: limits that hold across a fleet of gateways with no Redis
//! call on the request path.
//!
//! Each instance counts every admitted request in an exact local table, keyed by window,
//! subject and window index (windows are fixed and aligned to the Unix epoch, so every
//! instance agrees on them). Every `sync_interval` a background task pushes the counts
//! admitted since the last sync (`INCRBY`) and reads back the fleet's totals in one
//! pipeline per rate-limited scope (a route or a consumer): every key of one scope shares
//! the hash tag `{rl:SCOPE}`, so the pipeline touches one Redis Cluster slot, and the scopes'
//! pipelines run concurrently. A request is admitted while `fleet total seen + own counts
//! not yet pushed < limit`.
//!
//! Error bound: between two syncs no instance sees the others' admissions, so with N
//! instances each admitting at rate r, a window can admit up to about N x r x (interval +
//! one round trip) requests over its limit, and only around the moment the limit is reached.
//!
//! Replicas: each sync also refreshes this instance's heartbeat (a member of the sorted set
//! `tollgate:{fleet}:instances` scored with its time; members older than five intervals, at
//! least a second, are removed) and reads how many are live. While Redis cannot be reached
//! each instance admits `ceil(limit / live replicas last seen)` per window from its own
//! counts (not the full limit on every instance, not nothing), logs it once, shows it in
//! `tollgate_rate_limit_sync_degraded`, and pushes what it admitted meanwhile once Redis is
//! back.

use crate::redis_conn::{Client, Conn};
use prometheus::{IntCounter, IntGauge};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SHARDS: usize = 64;
const HEARTBEATS: &str = "tollgate:{fleet}:instances";

/// The fleet's state as this instance knows it. One per rate-limit store; it survives reloads
/// that keep `[rate_limit]` as it is.
pub(crate) struct Fleet {
    client: Client,
    interval: Duration,
    timeout: Duration,
    /// This instance in the heartbeat set.
    id: String,
    /// By the hash of (window, subject).
    shards: Box<[Mutex<HashMap<EntryKey, Entry>>]>,
    /// Keyed, so clients cannot choose subjects that collide.
    hasher: std::collections::hash_map::RandomState,
    replicas: AtomicU64,
    degraded: AtomicBool,
    /// One sync at a time: two would push the same counts twice (the outgoing and the
    /// incoming generation's services overlap for a moment during a reload).
    syncing: tokio::sync::Mutex<()>,
    metrics: FleetMetrics,
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

struct Entry {
    /// The Redis key, and the hash tag of its scope.
    key: String,
    tag: Arc<str>,
    window_ms: u64,
    index: u64,
    /// Checked since the last sync: its total is worth reading even with nothing to push.
    touched: bool,
    /// The fleet's total at the last sync (this instance's pushed counts included).
    fleet: u64,
    /// Admitted here since the last successful push.
    pending: u64,
    /// Admitted here in this window, pushed or not (the fallback counts these).
    own: u64,
}

/// What one sync pushes for an entry: its shard, key in the table, Redis key, the count
/// admitted since the last push, and the expiry in milliseconds.
type Push = (usize, EntryKey, String, u64, u64);

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
    pub name: &'a dyn Fn() -> String,
}

/// What a check found: the count each window would have with this request, the first
/// window over its limit, and the limit that applied to it.
pub(crate) struct Checked {
    pub counts: Vec<u64>,
    pub over: Option<usize>,
    pub limits: Vec<u64>,
    pub wall_ms: u64,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
            replicas: AtomicU64::new(1),
            degraded: AtomicBool::new(false),
            syncing: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    /// A keyed hash of a window and its subject.
    pub(crate) fn subject_hash(&self, subject: &(impl std::hash::Hash + ?Sized)) -> u64 {
        self.hasher.hash_one(subject)
    }

    /// Count the request in every window if none would go over its limit; no network.
    pub(crate) fn check(&self, windows: &[Window<'_>]) -> Checked {
        let now = wall_ms();
        let degraded = self.degraded.load(Ordering::Relaxed);
        let replicas = self.replicas.load(Ordering::Relaxed).max(1);
        // Every shard the windows live in, locked in order: the check and the counting are
        // one step for concurrent requests of the same subjects.
        let shard_of = |w: &Window<'_>| w.subject as usize % SHARDS;
        let mut order: Vec<usize> = windows.iter().map(shard_of).collect();
        order.sort_unstable();
        order.dedup();
        let mut guards: Vec<_> = order
            .iter()
            .map(|i| self.shards[*i].lock().unwrap_or_else(|p| p.into_inner()))
            .collect();
        let at = |w: &Window<'_>| order.binary_search(&shard_of(w)).unwrap_or(0);
        let mut counts = Vec::with_capacity(windows.len());
        let mut limits = Vec::with_capacity(windows.len());
        let mut over = None;
        for (i, w) in windows.iter().enumerate() {
            let index = now / w.window_ms.max(1);
            let entry = guards[at(w)]
                .entry((w.subject, index))
                .or_insert_with(|| Entry {
                    key: format!("tollgate:{}:{}:{index}", w.tag, (w.name)()),
                    tag: w.tag.clone(),
                    window_ms: w.window_ms.max(1),
                    index,
                    touched: false,
                    fleet: 0,
                    pending: 0,
                    own: 0,
                });
            let (seen, limit) = if degraded {
                (entry.own, w.limit.div_ceil(replicas))
            } else {
                (entry.fleet + entry.pending, w.limit)
            };
            entry.touched = true;
            counts.push(seen + 1);
            limits.push(limit);
            if over.is_none() && seen + 1 > limit {
                over = Some(i);
            }
        }
        if over.is_none() {
            for w in windows {
                let index = now / w.window_ms.max(1);
                if let Some(e) = guards[at(w)].get_mut(&(w.subject, index)) {
                    e.pending += 1;
                    e.own += 1;
                }
            }
        }
        Checked {
            counts,
            over,
            limits,
            wall_ms: now,
        }
    }

    /// One sync: push every window's new counts, read the fleet's totals, beat the heart.
    async fn sync(&self) {
        let _one = self.syncing.lock().await;
        let now = wall_ms();
        // What to send, by scope; entries of past windows are dropped here.
        let mut by_tag: HashMap<Arc<str>, Vec<Push>> = HashMap::new();
        for (s, shard) in self.shards.iter().enumerate() {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, e| now < e.window_ms * (e.index + 1));
            // Subjects idle here since the last sync are not asked about: their totals are
            // read again at the first sync after they come back.
            for (k, e) in map.iter_mut().filter(|(_, e)| e.touched || e.pending > 0) {
                e.touched = false;
                by_tag.entry(e.tag.clone()).or_default().push((
                    s,
                    *k,
                    e.key.clone(),
                    e.pending,
                    e.window_ms * 2,
                ));
            }
        }
        let live_ms = (self.interval.as_millis() as u64 * 5).max(1000);
        let work = async {
            let conn = self.client.conn().await?;
            let mut calls = Vec::with_capacity(by_tag.len() + 1);
            for entries in by_tag.values() {
                let mut p = redis::pipe();
                for (_, _, key, delta, ttl) in entries {
                    p.cmd("INCRBY").arg(key).arg(*delta);
                    p.cmd("PEXPIRE").arg(key).arg(*ttl).ignore();
                }
                let mut c: Conn = conn.clone();
                calls.push(async move { p.query_async::<Vec<u64>>(&mut c).await });
            }
            let mut beat = redis::pipe();
            beat.cmd("ZADD")
                .arg(HEARTBEATS)
                .arg(now)
                .arg(&self.id)
                .ignore();
            beat.cmd("ZREMRANGEBYSCORE")
                .arg(HEARTBEATS)
                .arg("-inf")
                .arg(now.saturating_sub(live_ms))
                .ignore();
            beat.cmd("ZCARD").arg(HEARTBEATS);
            beat.cmd("PEXPIRE")
                .arg(HEARTBEATS)
                .arg(live_ms * 4)
                .ignore();
            let mut c = conn.clone();
            let (totals, live) = futures::join!(futures::future::join_all(calls), async move {
                beat.query_async::<(u64,)>(&mut c).await
            });
            let totals: Vec<Vec<u64>> = totals.into_iter().collect::<Result<_, _>>()?;
            Ok::<_, redis::RedisError>((totals, live?.0))
        };
        match tokio::time::timeout(self.timeout.max(self.interval), work).await {
            Ok(Ok((totals, live))) => {
                for (entries, totals) in by_tag.values().zip(totals) {
                    for ((s, k, _, delta, _), total) in entries.iter().zip(totals) {
                        let mut map = self.shards[*s].lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(e) = map.get_mut(k) {
                            e.pending = e.pending.saturating_sub(*delta);
                            e.fleet = total;
                        }
                    }
                }
                self.replicas.store(live.max(1), Ordering::Relaxed);
                self.metrics.replicas.set(live as i64);
                if self.degraded.swap(false, Ordering::Relaxed) {
                    self.metrics.degraded.set(0);
                    log::warn!("rate limit sync: Redis is back, fleet-wide counting resumed");
                }
            }
            outcome => {
                self.metrics.failures.inc();
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    self.metrics.degraded.set(1);
                    let why = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer in {:?}", self.timeout.max(self.interval)),
                    };
                    log::warn!(
                        "rate limit sync: Redis failed ({why}); each instance admits limit / {} \
                         locally until it is back",
                        self.replicas.load(Ordering::Relaxed).max(1)
                    );
                }
            }
        }
    }
}

/// The sync loop, a background service of each generation that has the store.
pub(crate) struct Sync(pub Arc<Fleet>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Sync {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(self.0.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.0.sync().await,
                _ = shutdown.changed() => return,
            }
        }
    }
}
