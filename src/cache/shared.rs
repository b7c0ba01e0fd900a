//! `[cache.shared]`: Redis as a second tier behind the in-memory cache, shared by a fleet.
//!
//! - A miss in memory looks in Redis (`GET PREFIX<hash>`) before going upstream; a hit there
//!   is copied into memory (admitted to its LRU like any entry) and served.
//! - A response stored in memory is also written to Redis (`SET .. PX ttl`, in the
//!   background so the client never waits), when its body is within `max_object_size`; the
//!   TTL is its freshness plus its stale-while-revalidate and stale-if-error windows, at most
//!   `max_ttl`. The value is the entry's serialized `CacheMeta` (creation time, freshness,
//!   validators, headers: `Age` and revalidation work as for a memory entry) and its body.
//! - Fleet-wide fill lock: the instance whose lookup misses first takes `PREFIX<hash>:lock`
//!   (`SET NX PX lock_timeout`) and fetches; the others, on any instance, poll Redis for the
//!   entry until the lock is gone or `lock_timeout` passes, then serve it (or fetch
//!   themselves). A fetch that ends uncacheable or fails releases the lock when its
//!   request ends. The lock holds a token per fetch and is deleted only while it still holds
//!   the releasing fetch's own (one script), so a fetch that outlived `lock_timeout` cannot
//!   delete the lock another fetch took since.
//! - Purges on any instance's admin listener are published (`PUBLISH PREFIXpurge`); every
//!   instance drops its matching memory entries and deletes their Redis copies.
//! - Redis down: every call is bounded by `timeout`, and after a failure Redis is skipped
//!   for a second: the cache is memory-only meanwhile, without waiting on Redis per request
//!   (`tollgate_cache_shared_degraded`, `tollgate_cache_shared_errors_total`).

use bytes::Bytes;
use prometheus::{IntCounter, IntGauge};
use redis::AsyncCommands;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// How long Redis is skipped after a failure.
const BACKOFF: Duration = Duration::from_secs(1);
/// Deletes a fill lock only while it still holds the token of the fetch releasing it: a
/// fetch that outlived `lock_timeout` must not delete the lock another fetch took since.
const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// How often a waiter looks for the entry another instance is fetching.
const POLL: Duration = Duration::from_millis(20);

/// The metrics of the shared tier.
#[derive(Clone)]
pub(crate) struct SharedMetrics {
    pub degraded: IntGauge,
    pub errors: IntCounter,
}

pub(crate) struct SharedTier {
    client: redis::Client,
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
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
    metrics: SharedMetrics,
}

/// What taking the fill lock found.
pub(crate) enum Lock {
    /// This instance fetches; the lock holds this token until released.
    Taken(String),
    /// Another instance is fetching.
    Held,
    /// Redis cannot say: fetch without it.
    Unavailable,
}

pub(crate) struct Settings {
    pub url: String,
    pub prefix: String,
    pub max_object: usize,
    pub max_ttl: Duration,
    pub timeout: Duration,
    pub lock_timeout: Duration,
}

impl SharedTier {
    pub(crate) fn new(s: Settings, metrics: SharedMetrics) -> Result<SharedTier, String> {
        let client = redis::Client::open(s.url.as_str())
            .map_err(|_| format!("invalid Redis URL {:?}; write redis://HOST:PORT/DB", s.url))?;
        Ok(SharedTier {
            client,
            conn: tokio::sync::OnceCell::new(),
            prefix: s.prefix,
            max_object: s.max_object,
            max_ttl: s.max_ttl,
            timeout: s.timeout,
            lock_timeout: s.lock_timeout,
            down_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            id: format!("{:016x}", fastrand::u64(..)),
            fetches: AtomicU64::new(0),
            metrics,
        })
    }

    fn key(&self, hash: &str) -> String {
        format!("{}{hash}", self.prefix)
    }

    /// Run `f` on the connection within `timeout`, unless Redis is being skipped; a failure
    /// starts the skip and is counted.
    async fn call<T, F, Fut>(&self, f: F) -> Option<T>
    where
        F: FnOnce(redis::aio::ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let now = self.epoch.elapsed().as_millis() as u64;
        if now < self.down_until_ms.load(Ordering::Relaxed) {
            return None;
        }
        let result = tokio::time::timeout(self.timeout, async {
            let conn = self
                .conn
                .get_or_try_init(|| crate::redis_conn::manager(&self.client, self.timeout))
                .await?
                .clone();
            f(conn).await
        })
        .await;
        match result {
            Ok(Ok(v)) => {
                if self.metrics.degraded.get() != 0 {
                    self.metrics.degraded.set(0);
                    log::warn!("shared cache: Redis is back");
                }
                Some(v)
            }
            failed => {
                self.metrics.errors.inc();
                self.down_until_ms
                    .store(now + BACKOFF.as_millis() as u64, Ordering::Relaxed);
                if self.metrics.degraded.get() == 0 {
                    self.metrics.degraded.set(1);
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer in {:?}", self.timeout),
                    };
                    log::warn!("shared cache: Redis failed ({why}); memory only until it is back");
                }
                None
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
    pub(crate) async fn lock(&self, hash: &str) -> Lock {
        let key = format!("{}:lock", self.key(hash));
        let token = format!(
            "{}:{}",
            self.id,
            self.fetches.fetch_add(1, Ordering::Relaxed)
        );
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
            Some(None) => Lock::Held,
            None => Lock::Unavailable,
        }
    }

    /// Wait for the instance holding the lock of `hash` to store it; `None` when the lock
    /// went away without an entry, Redis failed, or `lock_timeout` passed.
    pub(crate) async fn wait(&self, hash: &str) -> Option<Bytes> {
        let deadline = Instant::now() + self.lock_timeout;
        let (key, lock) = (self.key(hash), format!("{}:lock", self.key(hash)));
        while Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
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
        None
    }

    /// Store an entry (in the background) and release its lock if this fetch held it.
    pub(crate) fn put(
        &'static self,
        hash: String,
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
        tokio::spawn(async move {
            let key = self.key(&hash);
            let ms = ttl.as_millis() as u64;
            self.call(|mut c| async move {
                let mut p = redis::pipe();
                p.cmd("SET")
                    .arg(&key)
                    .arg(value)
                    .arg("PX")
                    .arg(ms.max(1))
                    .ignore();
                if let Some(token) = locked {
                    p.cmd("EVAL")
                        .arg(RELEASE)
                        .arg(1)
                        .arg(format!("{key}:lock"))
                        .arg(token)
                        .ignore();
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
            self.call(|mut c| async move {
                redis::cmd("EVAL")
                    .arg(RELEASE)
                    .arg(1)
                    .arg(lock)
                    .arg(token)
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

    /// Tell every instance to run `purge` (a `POST /cache/purge` query).
    pub(crate) async fn publish(&self, purge: &str) {
        let channel = format!("{}purge", self.prefix);
        let message = purge.to_string();
        self.call(|mut c| async move { c.publish::<_, _, ()>(channel, message).await })
            .await;
    }

    /// Purge queries published by any instance, until the shutdown; reconnects after a
    /// failure.
    pub(crate) async fn subscribe(
        &self,
        mut on_purge: impl FnMut(&str),
        mut shutdown: pingora::server::ShutdownWatch,
    ) {
        use futures::StreamExt;
        let channel = format!("{}purge", self.prefix);
        loop {
            let pubsub = async {
                let mut p = self.client.get_async_pubsub().await?;
                p.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(p)
            };
            let mut pubsub = tokio::select! {
                p = pubsub => p.ok(),
                _ = shutdown.changed() => return,
            };
            if let Some(p) = pubsub.as_mut() {
                let mut messages = p.on_message();
                loop {
                    tokio::select! {
                        m = messages.next() => match m {
                            Some(m) => {
                                if let Ok(text) = m.get_payload::<String>() {
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
