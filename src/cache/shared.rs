//! `[cache.shared]`: Redis as a second tier behind the in-memory cache, shared by a fleet.
//!
//! - A miss in memory looks in Redis (`GET PREFIX{<hash>}`) before going upstream; a hit
//!   there is copied into memory (admitted to its LRU like any entry) and served.
//! - A response stored in memory is also written to Redis (`SET .. PX ttl`, in the
//!   background so the client never waits), when its body is within `max_object_size`; the
//!   TTL is its freshness plus its stale-while-revalidate and stale-if-error windows, at most
//!   `max_ttl`. The value is the entry's serialized `CacheMeta` (creation time, freshness,
//!   validators, headers: `Age` and revalidation work as for a memory entry) and its body.
//! - The purge index: before an entry is written, its path and hash are added to its host's
//!   index (`PREFIXix:{HOST}`, a sorted set whose members `PATH\n<hash>` all score 0, so that
//!   a path or a path prefix is one `ZRANGEBYLEX`; and `PREFIXix:{HOST}:exp`, the same members
//!   scored by when their entry expires, so that expired members are dropped as new ones
//!   come and the index expires with its last entry), and the host to `PREFIXhosts` (scored
//!   likewise) for purges of every host. A purge finds the Redis entries there, whichever
//!   instances still hold them in memory. Each index is one key under one `{hash tag}`, and
//!   an entry and its lock share one, so every script and pipeline touches one slot of a
//!   Redis Cluster.
//! - Fleet-wide fill lock: the instance whose lookup misses first takes
//!   `PREFIX{<hash>}:lock` (`SET NX PX lock_timeout`) and fetches; the others, on any
//!   instance, wait until it stored the entry or gave up, then serve it (or fetch
//!   themselves). The lock holds a token per fetch and is deleted only while it still holds
//!   the releasing fetch's own (one script, which also publishes the hash on
//!   `PREFIXfilled`), so a fetch that outlived `lock_timeout` cannot delete the lock another
//!   fetch took since. Waiters are woken by that message, received on the instance's one
//!   subscription (the purge subscriber's); they look in Redis every 500 ms only in case a
//!   message was lost, and every 20 ms while the subscription is down.
//! - Purges: an admin purge deletes the Redis entries under it (through the index) and
//!   then publishes the purge (`PUBLISH PREFIXpurge`); every instance drops its matching
//!   memory entries.
//! - Redis down: every call is bounded by `timeout`, and after a failure Redis is skipped
//!   for a second: the cache is memory-only meanwhile, without waiting on Redis per request
//!   (`tollgate_cache_shared_degraded`, `tollgate_cache_shared_errors_total`). An admin
//!   purge tries Redis even then, and says when it could not.
//! - A Redis Cluster: `redis` lists its seed nodes, comma-separated. Commands go through
//!   redis-rs's cluster client; the subscription is to one node (a cluster forwards every
//!   `PUBLISH` to every node).

use crate::redis_conn::{self, Conn};
use bytes::Bytes;
use prometheus::{IntCounter, IntGauge};
use redis::AsyncCommands;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// How long Redis is skipped after a failure.
const BACKOFF: Duration = Duration::from_secs(1);
/// Deletes a fill lock only while it still holds the token of the fetch releasing it (a
/// fetch that outlived `lock_timeout` must not delete the lock another fetch took since),
/// and tells the waiters of every instance that the fetch is over.
const RELEASE: &str = "local n = 0 \
    if redis.call('GET', KEYS[1]) == ARGV[1] then n = redis.call('DEL', KEYS[1]) end \
    redis.call('PUBLISH', ARGV[2], ARGV[3]) return n";
/// Adds `PATH\n<hash>` (ARGV[1]) to a host's index for ARGV[2] ms: KEYS[1] by path (every
/// score 0), KEYS[2] by expiry (Redis's clock, so that the instances' clocks do not
/// matter). Drops a few expired members, and keeps both keys until their last member
/// expires.
const INDEX: &str = "local t = redis.call('TIME') \
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
    local ttl = tonumber(ARGV[2]) \
    redis.call('ZADD', KEYS[1], 0, ARGV[1]) \
    redis.call('ZADD', KEYS[2], now + ttl, ARGV[1]) \
    local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 64) \
    if #old > 0 then redis.call('ZREM', KEYS[1], unpack(old)) redis.call('ZREM', KEYS[2], unpack(old)) end \
    if redis.call('PTTL', KEYS[2]) < ttl then \
      redis.call('PEXPIRE', KEYS[1], ttl) redis.call('PEXPIRE', KEYS[2], ttl) end \
    return 0";
/// Keeps host ARGV[1] in the hosts' set (KEYS[1]) for at least ARGV[2] ms, and drops the
/// hosts whose entries have all expired.
const HOSTS: &str = "local t = redis.call('TIME') \
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
    local ttl = tonumber(ARGV[2]) \
    local s = redis.call('ZSCORE', KEYS[1], ARGV[1]) \
    if not s or tonumber(s) < now + ttl then redis.call('ZADD', KEYS[1], now + ttl, ARGV[1]) end \
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) \
    if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end \
    return 0";
/// An index member outlives its entry by this much: the index is written (and its clock
/// read) just before the entry.
const INDEX_SLACK: Duration = Duration::from_secs(2);
/// Index members a purge takes (and entries it deletes) per round trip.
const BATCH: usize = 500;
/// Hosts a purge of every host works on at once.
const HOSTS_AT_ONCE: usize = 16;

/// How often a waiter looks for the entry another instance is fetching, when the message
/// saying it is there may have been lost.
const FALLBACK: Duration = Duration::from_millis(500);
/// The same while this instance's subscription is down (no message can come).
const POLL: Duration = Duration::from_millis(20);

/// The metrics of the shared tier.
#[derive(Clone)]
pub(crate) struct SharedMetrics {
    pub degraded: IntGauge,
    pub errors: IntCounter,
}

pub(crate) struct SharedTier {
    client: redis_conn::Client,
    /// Where the subscription connects: the server, or each seed node in turn.
    pubsub: Vec<redis::Client>,
    prefix: String,
    pub(crate) max_object: usize,
    max_ttl: Duration,
    timeout: Duration,
    lock_timeout: Duration,
    /// Milliseconds since `epoch` until which Redis is skipped.
    down_until_ms: AtomicU64,
    epoch: Instant,
    /// The lock's value: which instance holds it, and which of its fetches.
    id: String,
    fetches: AtomicU64,
    /// Requests of this instance waiting for another's fetch, by hash: a `PREFIXfilled`
    /// message bumps the hash's counter.
    waiting: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Subscriptions up (one, but two for a moment while a reload hands over).
    subscriptions: AtomicUsize,
    metrics: SharedMetrics,
}

/// What taking the fill lock found.
pub(crate) enum Lock<'a> {
    /// This instance fetches; the lock holds this token until released.
    Taken(String),
    /// Another fetch holds it: wait with this (registered before the lock was tried, so no
    /// message is missed).
    Held(Waiter<'a>),
    /// Redis cannot say: fetch without it.
    Unavailable,
}

/// A request waiting for the fetch of one hash; deregisters when dropped.
pub(crate) struct Waiter<'a> {
    tier: &'a SharedTier,
    hash: String,
    woken: Option<watch::Receiver<u64>>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        // Receivers are dropped under the lock, so the count read here is exact.
        let mut waiting = self.tier.waiting();
        self.woken = None;
        if waiting
            .get(&self.hash)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            waiting.remove(&self.hash);
        }
    }
}

/// Counts a subscription as up while it lives.
struct Subscribed<'a>(&'a SharedTier);

impl<'a> Subscribed<'a> {
    fn new(tier: &'a SharedTier) -> Self {
        tier.subscriptions.fetch_add(1, Ordering::Relaxed);
        // Messages sent while no subscription was up are lost: every waiter looks again.
        for tx in tier.waiting().values() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
        Subscribed(tier)
    }
}

impl Drop for Subscribed<'_> {
    fn drop(&mut self) {
        self.0.subscriptions.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) struct Settings {
    /// `redis://HOST:PORT/DB`, or a Redis Cluster's seed nodes.
    pub urls: Vec<String>,
    /// `urls` are a cluster's seed nodes (even just one).
    pub cluster: bool,
    pub prefix: String,
    pub max_object: usize,
    pub max_ttl: Duration,
    pub timeout: Duration,
    pub lock_timeout: Duration,
}

impl SharedTier {
    pub(crate) fn new(s: Settings, metrics: SharedMetrics) -> Result<SharedTier, String> {
        let urls = s.urls;
        let client = match urls.as_slice() {
            [] => return Err("give redis://HOST:PORT/DB, or a cluster's seed nodes".into()),
            [one] if !s.cluster => redis_conn::Client::new(Some(one), &[], s.timeout)?,
            nodes => redis_conn::Client::new(None, nodes, s.timeout)?,
        };
        let pubsub = urls
            .iter()
            .map(|u| {
                redis::Client::open(u.as_str())
                    .map_err(|_| format!("invalid Redis URL {u:?}; write redis://HOST:PORT/DB"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SharedTier {
            client,
            pubsub,
            prefix: s.prefix,
            max_object: s.max_object,
            max_ttl: s.max_ttl,
            timeout: s.timeout,
            lock_timeout: s.lock_timeout,
            down_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            id: format!("{:016x}", fastrand::u64(..)),
            fetches: AtomicU64::new(0),
            waiting: Mutex::new(HashMap::new()),
            subscriptions: AtomicUsize::new(0),
            metrics,
        })
    }

    /// The entry of `hash`; its lock is `KEY:lock`, in the same slot.
    fn key(&self, hash: &str) -> String {
        format!("{}{{{hash}}}", self.prefix)
    }

    /// The index of `host`'s entries by path, and the same by expiry: one hash tag, never
    /// empty (an empty `{}` would hash the whole key).
    fn index(&self, host: &str) -> (String, String) {
        let by_path = format!("{}ix:{{h:{host}}}", self.prefix);
        let by_expiry = format!("{by_path}:exp");
        (by_path, by_expiry)
    }

    fn hosts(&self) -> String {
        format!("{}hosts", self.prefix)
    }

    fn channel(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Run `f` on the connection within `timeout`, unless Redis is being skipped; a failure
    /// starts the skip and is counted.
    async fn call<T, F, Fut>(&self, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.attempt(false, f).await.ok()
    }

    /// [`Self::call`], also while Redis is skipped when `force`; the error says why.
    async fn attempt<T, F, Fut>(&self, force: bool, f: F) -> Result<T, String>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let now = self.epoch.elapsed().as_millis() as u64;
        if !force && now < self.down_until_ms.load(Ordering::Relaxed) {
            return Err("Redis failed less than a second ago".into());
        }
        let result = tokio::time::timeout(self.timeout, async {
            let conn = self.client.conn().await?;
            f(conn).await
        })
        .await;
        match result {
            Ok(Ok(v)) => {
                if self.metrics.degraded.get() != 0 {
                    self.metrics.degraded.set(0);
                    log::warn!("shared cache: Redis is back");
                }
                Ok(v)
            }
            failed => {
                self.metrics.errors.inc();
                self.down_until_ms
                    .store(now + BACKOFF.as_millis() as u64, Ordering::Relaxed);
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer in {:?}", self.timeout),
                };
                if self.metrics.degraded.get() == 0 {
                    self.metrics.degraded.set(1);
                    log::warn!("shared cache: Redis failed ({why}); memory only until it is back");
                }
                Err(why)
            }
        }
    }

    /// The stored value of `hash`, when Redis has it.
    pub(crate) async fn get(&self, hash: &str) -> Option<Bytes> {
        let key = self.key(hash);
        let v: Option<Vec<u8>> = self
            .call(|mut c| async move { c.get(key).await })
            .await
            .flatten();
        v.map(Bytes::from)
    }

    /// Take the fill lock of `hash`.
    pub(crate) async fn lock(&self, hash: &str) -> Lock<'_> {
        let key = format!("{}:lock", self.key(hash));
        let token = format!(
            "{}:{}",
            self.id,
            self.fetches.fetch_add(1, Ordering::Relaxed)
        );
        // Registered first: the holder's message may come as soon as the lock is refused.
        let waiter = self.waiter(hash);
        let id = token.clone();
        let ms = self.lock_timeout.as_millis() as u64;
        let taken: Option<Option<String>> = self
            .call(|mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(id)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms.max(1))
                    .query_async(&mut c)
                    .await
            })
            .await;
        match taken {
            Some(Some(_)) => Lock::Taken(token),
            Some(None) => Lock::Held(waiter),
            None => Lock::Unavailable,
        }
    }

    /// Wait for the fetch holding the lock `waiter` found to store its entry; `None` when
    /// the lock went away without an entry, Redis failed, or `lock_timeout` passed.
    pub(crate) async fn wait(&self, mut waiter: Waiter<'_>) -> Option<Bytes> {
        let deadline = Instant::now() + self.lock_timeout;
        let key = self.key(&waiter.hash);
        let lock = format!("{key}:lock");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let every = if self.subscriptions.load(Ordering::Relaxed) > 0 {
                FALLBACK
            } else {
                POLL
            };
            let woken = async {
                let changed = match waiter.woken.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => false,
                };
                if !changed {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(every.min(left)) => {}
            }
            let (k, l) = (key.clone(), lock.clone());
            let (value, locked): (Option<Vec<u8>>, bool) = self
                .call(|mut c| async move {
                    redis::pipe()
                        .cmd("GET")
                        .arg(k)
                        .cmd("EXISTS")
                        .arg(l)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if let Some(v) = value {
                return Some(Bytes::from(v));
            }
            if !locked {
                return None;
            }
        }
    }

    /// A request of this instance waiting for `hash`, woken by [`Self::wake`].
    fn waiter(&self, hash: &str) -> Waiter<'_> {
        let woken = self
            .waiting()
            .entry(hash.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Waiter {
            tier: self,
            hash: hash.to_string(),
            woken: Some(woken),
        }
    }

    /// A `PREFIXfilled` message: wake this instance's waiters of `hash`.
    fn wake(&self, hash: &str) {
        if let Some(tx) = self.waiting().get(hash) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Store an entry (in the background) and release its lock if this fetch held it.
    /// `target` is the entry's host and path (`HOST\nPATH`), under which it is indexed
    /// first: an entry a purge could not find is not written.
    pub(crate) fn put(
        &'static self,
        hash: String,
        target: &str,
        value: Vec<u8>,
        ttl: Duration,
        locked: Option<String>,
    ) {
        let ttl = ttl.min(self.max_ttl);
        if ttl.is_zero() || value.len() > self.max_object + 64 * 1024 {
            if let Some(token) = locked {
                self.unlock(hash, token);
            }
            return;
        }
        let (host, path) = target.split_once('\n').unwrap_or(("", target));
        let (host, member) = (host.to_string(), format!("{path}\n{hash}"));
        tokio::spawn(async move {
            let key = self.key(&hash);
            let ms = ttl.as_millis() as u64;
            let indexed = (ttl + INDEX_SLACK).as_millis() as u64;
            let (by_path, by_expiry) = self.index(&host);
            let hosts = self.hosts();
            let index = self.call(|mut c| async move {
                redis::cmd("EVAL")
                    .arg(INDEX)
                    .arg(2)
                    .arg(by_path)
                    .arg(by_expiry)
                    .arg(member)
                    .arg(indexed)
                    .query_async::<()>(&mut c)
                    .await
            });
            let host_listed = self.call(|mut c| async move {
                redis::cmd("EVAL")
                    .arg(HOSTS)
                    .arg(1)
                    .arg(hosts)
                    .arg(host)
                    .arg(indexed)
                    .query_async::<()>(&mut c)
                    .await
            });
            let (index, host_listed) = futures::join!(index, host_listed);
            let (channel, filled) = (self.channel("filled"), hash.clone());
            self.call(|mut c| async move {
                let mut p = redis::pipe();
                if index.is_some() && host_listed.is_some() {
                    p.cmd("SET")
                        .arg(&key)
                        .arg(value)
                        .arg("PX")
                        .arg(ms.max(1))
                        .ignore();
                }
                if let Some(token) = locked {
                    p.cmd("EVAL")
                        .arg(RELEASE)
                        .arg(1)
                        .arg(format!("{key}:lock"))
                        .arg(token)
                        .arg(channel)
                        .arg(filled)
                        .ignore();
                }
                if p.cmd_iter().next().is_none() {
                    return Ok(());
                }
                p.query_async::<()>(&mut c).await
            })
            .await;
        });
    }

    /// Release the fill lock of `hash` that `token` took (in the background).
    pub(crate) fn release(&'static self, hash: String, token: String) {
        self.unlock(hash, token);
    }

    fn unlock(&'static self, hash: String, token: String) {
        tokio::spawn(async move {
            let lock = format!("{}:lock", self.key(&hash));
            let channel = self.channel("filled");
            self.call(|mut c| async move {
                redis::cmd("EVAL")
                    .arg(RELEASE)
                    .arg(1)
                    .arg(lock)
                    .arg(token)
                    .arg(channel)
                    .arg(hash)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
        });
    }

    /// Delete the Redis copies of `hashes` (in the background).
    pub(crate) fn delete(&'static self, hashes: Vec<String>) {
        if hashes.is_empty() {
            return;
        }
        tokio::spawn(async move {
            let keys: Vec<String> = hashes.iter().map(|h| self.key(h)).collect();
            self.call(|mut c| async move { c.del::<_, ()>(keys).await })
                .await;
        });
    }

    /// Delete the Redis entries of `path` (exactly, or every path under it when `prefix`)
    /// on `host` (any host when `None`), found through the index; how many were deleted.
    /// `force`: tried even while Redis is skipped after a failure (an admin purge). The
    /// error says what failed.
    pub(crate) async fn purge(
        &self,
        host: Option<&str>,
        path: &str,
        prefix: bool,
        force: bool,
    ) -> Result<usize, String> {
        use futures::{StreamExt, TryStreamExt};
        let hosts: Vec<String> = match host {
            Some(h) => vec![h.to_string()],
            None => {
                let key = self.hosts();
                self.attempt(force, |mut c| async move {
                    c.zrange::<_, Vec<String>>(key, 0, -1).await
                })
                .await?
            }
        };
        // Members are `PATH\n<hash>`, ordered byte by byte: a path and its variants, or a
        // prefix and every path under it, are one range.
        let mut from = b"[".to_vec();
        from.extend_from_slice(path.as_bytes());
        if !prefix {
            from.push(b'\n');
        }
        let mut to = from.clone();
        to.push(0xff);
        let (from, to) = (&from, &to);
        futures::stream::iter(hosts)
            .map(|h| async move { self.purge_host(&h, from, to, force).await })
            .buffer_unordered(HOSTS_AT_ONCE)
            .try_fold(0, |sum, n| async move { Ok(sum + n) })
            .await
    }

    /// One host's part of [`Self::purge`]: the members in `[from, to]`, a batch at a time:
    /// their entries deleted, then the members (so that a failure leaves them findable).
    async fn purge_host(
        &self,
        host: &str,
        from: &[u8],
        to: &[u8],
        force: bool,
    ) -> Result<usize, String> {
        let (by_path, by_expiry) = self.index(host);
        let mut deleted = 0;
        loop {
            let (index, (from, to)) = (by_path.clone(), (from.to_vec(), to.to_vec()));
            let members: Vec<Vec<u8>> = self
                .attempt(force, |mut c| async move {
                    redis::cmd("ZRANGEBYLEX")
                        .arg(index)
                        .arg(from)
                        .arg(to)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(BATCH)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            let Some(last) = members.len().checked_sub(1) else {
                return Ok(deleted);
            };
            let keys: Vec<String> = members
                .iter()
                .filter_map(|m| {
                    let at = m.iter().rposition(|b| *b == b'\n')?;
                    Some(self.key(std::str::from_utf8(&m[at + 1..]).ok()?))
                })
                .collect();
            if !keys.is_empty() {
                // A command of its own: on a cluster it is split by slot.
                deleted += self
                    .attempt(force, |mut c| async move { c.del::<_, usize>(keys).await })
                    .await?;
            }
            let (a, b, m) = (by_path.clone(), by_expiry.clone(), members);
            self.attempt(force, |mut c| async move {
                redis::pipe()
                    .cmd("ZREM")
                    .arg(a)
                    .arg(&m)
                    .ignore()
                    .cmd("ZREM")
                    .arg(b)
                    .arg(&m)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await?;
            if last + 1 < BATCH {
                return Ok(deleted);
            }
        }
    }

    /// Tell every instance to run `purge` (a `POST /cache/purge` query); `force` as for
    /// [`Self::purge`]. The error says why Redis did not take it.
    pub(crate) async fn publish(&self, purge: &str, force: bool) -> Result<(), String> {
        let channel = self.channel("purge");
        let message = purge.to_string();
        self.attempt(force, |mut c| async move {
            c.publish::<_, _, ()>(channel, message).await
        })
        .await
    }

    /// Purge queries published by any instance, until the shutdown, and the fill messages
    /// that wake this instance's waiters; reconnects after a failure (to the next seed node
    /// of a cluster).
    pub(crate) async fn subscribe(
        &self,
        mut on_purge: impl FnMut(&str),
        mut shutdown: pingora::server::ShutdownWatch,
    ) {
        use futures::StreamExt;
        let (purge, filled) = (self.channel("purge"), self.channel("filled"));
        let connect_within = self.timeout.max(Duration::from_secs(1));
        for attempt in 0usize.. {
            let client = &self.pubsub[attempt % self.pubsub.len()];
            let pubsub = async {
                let mut p = client.get_async_pubsub().await?;
                p.subscribe(&[&purge, &filled]).await?;
                Ok::<_, redis::RedisError>(p)
            };
            let mut pubsub = tokio::select! {
                p = tokio::time::timeout(connect_within, pubsub) => p.ok().and_then(Result::ok),
                _ = shutdown.changed() => return,
            };
            if let Some(p) = pubsub.as_mut() {
                let _up = Subscribed::new(self);
                let mut messages = p.on_message();
                loop {
                    tokio::select! {
                        m = messages.next() => match m {
                            Some(m) => {
                                let Ok(text) = m.get_payload::<String>() else { continue };
                                if m.get_channel_name() == filled {
                                    self.wake(&text);
                                } else {
                                    on_purge(&text);
                                }
                            }
                            None => break,
                        },
                        _ = shutdown.changed() => return,
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(BACKOFF) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// How long Redis keeps an entry: its freshness and the stale windows it may be served in.
pub(crate) fn ttl_of(meta: &pingora::cache::CacheMeta) -> Duration {
    let fresh = meta
        .fresh_until()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let stale = u64::from(
        meta.stale_while_revalidate_sec()
            .max(meta.stale_if_error_sec()),
    );
    fresh + Duration::from_secs(stale)
}

/// `CacheMeta::serialize()`'s two parts.
pub(crate) type Meta = (Vec<u8>, Vec<u8>);

/// `[len meta0][meta0][len meta1][meta1][body]`, lengths as 4-byte big-endian.
pub(crate) fn encode(meta: &Meta, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + meta.0.len() + meta.1.len() + body.len());
    for part in [&meta.0, &meta.1] {
        v.extend_from_slice(&(part.len() as u32).to_be_bytes());
        v.extend_from_slice(part);
    }
    v.extend_from_slice(body);
    v
}

/// The parts of [`encode`]'s output; `None` for anything else.
pub(crate) fn decode(v: &Bytes) -> Option<(Meta, Bytes)> {
    let mut at = 0usize;
    let mut part = || -> Option<Vec<u8>> {
        let len = u32::from_be_bytes(v.get(at..at + 4)?.try_into().ok()?) as usize;
        let p = v.get(at + 4..at + 4 + len)?.to_vec();
        at += 4 + len;
        Some(p)
    };
    let (m0, m1) = (part()?, part()?);
    Some(((m0, m1), v.slice(at..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(urls: &[&str]) -> SharedTier {
        let metrics = SharedMetrics {
            degraded: IntGauge::new("degraded", "test").unwrap(),
            errors: IntCounter::new("errors", "test").unwrap(),
        };
        let settings = Settings {
            urls: urls.iter().map(|u| u.to_string()).collect(),
            cluster: urls.len() > 1,
            prefix: "p:".into(),
            max_object: 1024,
            max_ttl: Duration::from_secs(60),
            timeout: Duration::from_millis(50),
            lock_timeout: Duration::from_secs(1),
        };
        SharedTier::new(settings, metrics).unwrap()
    }

    /// The hash tag Redis Cluster places a key by (the whole key without one).
    fn tag(key: &str) -> &str {
        key.find('{')
            .and_then(|a| Some((a, key[a + 1..].find('}')? + a + 1)))
            .filter(|(a, b)| b > &(a + 1))
            .map_or(key, |(a, b)| &key[a + 1..b])
    }

    #[test]
    fn each_script_and_pipeline_touches_one_slot() {
        let t = tier(&["redis://127.0.0.1:1/0"]);
        let entry = t.key("ab12");
        assert_eq!(entry, "p:{ab12}");
        assert_eq!(tag(&entry), tag(&format!("{entry}:lock")));
        for host in ["api.test", "", "we}ird{"] {
            let (by_path, by_expiry) = t.index(host);
            assert_eq!(tag(&by_path), tag(&by_expiry), "{host:?}");
            assert_ne!(tag(&by_path), by_path, "{host:?} has a tag");
        }
        assert_ne!(tag(&t.index("a.test").0), tag(&t.index("b.test").0));
    }

    #[test]
    fn a_list_of_urls_is_a_cluster_and_garbage_is_refused() {
        let one = tier(&["redis://127.0.0.1:1/0"]);
        assert_eq!(one.pubsub.len(), 1);
        let cluster = tier(&["redis://127.0.0.1:1", "redis://127.0.0.1:2"]);
        assert_eq!(cluster.pubsub.len(), 2);
        let metrics = SharedMetrics {
            degraded: IntGauge::new("d", "t").unwrap(),
            errors: IntCounter::new("e", "t").unwrap(),
        };
        let settings = |url: &str| Settings {
            urls: vec![url.to_string()]
                .into_iter()
                .filter(|u| !u.trim().is_empty())
                .collect(),
            cluster: false,
            prefix: "p:".into(),
            max_object: 1,
            max_ttl: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            lock_timeout: Duration::from_secs(1),
        };
        assert!(SharedTier::new(settings(" "), metrics.clone()).is_err());
        assert!(SharedTier::new(settings("http://x"), metrics).is_err());
    }

    #[tokio::test]
    async fn a_fill_message_wakes_every_waiter_of_its_hash_and_waiters_clean_up() {
        let t = tier(&["redis://127.0.0.1:1/0"]);
        let (mut a, mut b, mut other) = (t.waiter("h"), t.waiter("h"), t.waiter("o"));
        t.wake("h");
        for w in [&mut a, &mut b] {
            let rx = w.woken.as_mut().unwrap();
            tokio::time::timeout(Duration::from_secs(1), rx.changed())
                .await
                .unwrap()
                .unwrap();
        }
        let rx = other.woken.as_mut().unwrap();
        assert!(
            !rx.has_changed().unwrap(),
            "another hash's waiter sleeps on"
        );
        drop(a);
        assert!(t.waiting().contains_key("h"), "b still waits");
        drop((b, other));
        assert!(t.waiting().is_empty());
        // A message for nobody is dropped.
        t.wake("h");
        assert!(t.waiting().is_empty());
    }

    #[test]
    fn entries_round_trip_and_garbage_is_refused() {
        let meta = (b"internal".to_vec(), b"HTTP/1.1 200 OK\r\n".to_vec());
        let v = Bytes::from(encode(&meta, b"body"));
        let (m, body) = decode(&v).unwrap();
        assert_eq!(m, meta);
        assert_eq!(&body[..], b"body");
        assert!(decode(&Bytes::from_static(b"\xff\xff\xff\xffxx")).is_none());
        assert!(decode(&Bytes::new()).is_none());
    }
}
