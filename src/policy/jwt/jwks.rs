//! A provider's JWKS URL: fetching it, holding the keys it returned, and refreshing them, on a
//! schedule ([`JwksRefresher`], a Pingora background service) and when a token names an
//! unknown `kid` (rate-limited to one fetch per `jwks_min_refresh`, shared by concurrent
//! requests, each waiting at most [`MISS_WAIT`]).
//!
//! Fetches are short (connect 2 s, whole exchange 3 s), never follow redirects, read at most
//! [`MAX_JWKS_BYTES`], and keep the previous keys on any failure. The URL comes only from the
//! config: `jku`/`x5u` in a token header are never looked at.

use super::keys::{jwks_keys, KeySet};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Largest JWKS document read.
pub(super) const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Longest a request waits for a refresh triggered by an unknown `kid`.
pub(super) const MISS_WAIT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a fetch failed; keeps no response body.
#[derive(Debug)]
pub(super) enum FetchError {
    Http(reqwest::Error),
    Status(u16),
    TooLarge,
    Document(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Http(e) => write!(f, "{e}"),
            FetchError::Status(s) => write!(f, "HTTP status {s}"),
            FetchError::TooLarge => write!(f, "document larger than {MAX_JWKS_BYTES} bytes"),
            FetchError::Document(e) => write!(f, "{e}"),
        }
    }
}

/// The keys behind one JWKS URL.
pub(super) struct JwksSource {
    provider: Arc<str>,
    url: reqwest::Url,
    http: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    /// Set by the first successful fetch.
    loaded: AtomicBool,
    /// Bumped whenever a fetch changes the key material; cached verifications of an older
    /// generation are not served.
    generation: AtomicU64,
    refresh: Duration,
    min_refresh: Duration,
    /// When the last fetch started. Held for the whole fetch, so requests missing a `kid`
    /// meanwhile wait for that fetch instead of starting their own.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// Never fetch (`tollgate explain`, which works without any network).
    offline: AtomicBool,
}

impl JwksSource {
    pub(super) fn new(
        provider: Arc<str>,
        url: reqwest::Url,
        refresh: Duration,
        min_refresh: Duration,
    ) -> Result<JwksSource, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            // Fetches are rare and may run on any of Pingora's runtimes: a pooled connection
            // would tie one runtime's connection task to another's requests.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(JwksSource {
            provider,
            url,
            http,
            keys: RwLock::new(Arc::new(KeySet::default())),
            loaded: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            refresh,
            min_refresh,
            last_fetch: tokio::sync::Mutex::new(None),
            offline: AtomicBool::new(false),
        })
    }

    pub(super) fn keys(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Fetch the document and install its keys; returns how many keys it holds.
    async fn fetch(&self) -> Result<usize, FetchError> {
        let mut resp = self
            .http
            .get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| FetchError::Http(e.without_url()))?;
        if !resp.status().is_success() {
            return Err(FetchError::Status(resp.status().as_u16()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(FetchError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| FetchError::Http(e.without_url()))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let text = std::str::from_utf8(&body)
            .map_err(|_| FetchError::Document("document is not UTF-8".into()))?;
        let (set, skipped) = jwks_keys(text).map_err(FetchError::Document)?;
        if skipped > 0 {
            log::info!(
                "JWT provider {}: JWKS has {skipped} key(s) that cannot verify signatures here; skipped",
                self.provider
            );
        }
        let count = set.by_kid.values().map(Vec::len).sum::<usize>() + set.anonymous.len();
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if keys.fingerprint != set.fingerprint || !self.loaded() {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        *keys = Arc::new(set);
        self.loaded.store(true, Ordering::Release);
        Ok(count)
    }

    /// Fetch now and log the outcome.
    async fn fetch_logged(&self, why: &str) -> bool {
        match self.fetch().await {
            Ok(n) => {
                log::debug!(
                    "JWT provider {}: JWKS fetched ({why}): {n} key(s)",
                    self.provider
                );
                true
            }
            Err(e) => {
                log::warn!(
                    "JWT provider {}: JWKS fetch ({why}) failed, keeping the previous keys: {e}",
                    self.provider
                );
                false
            }
        }
    }

    /// A token named a `kid` we do not have: fetch again unless a fetch started within
    /// `jwks_min_refresh`, and wait (at most [`MISS_WAIT`]) for the fetch in progress.
    pub(super) async fn refresh_on_miss(self: &Arc<Self>) {
        if self.offline.load(Ordering::Relaxed) {
            return;
        }
        let wait = async {
            let mut last = self.last_fetch.lock().await;
            if last.is_some_and(|t| t.elapsed() < self.min_refresh) {
                return;
            }
            *last = Some(Instant::now());
            // Spawned, so a request that gives up (timeout, client gone) does not cancel a
            // fetch that other requests are waiting for.
            let source = self.clone();
            let _ = tokio::spawn(async move { source.fetch_logged("unknown kid").await }).await;
        };
        let _ = tokio::time::timeout(MISS_WAIT, wait).await;
    }

    /// Never fetch from now on.
    pub(super) fn go_offline(&self) {
        self.offline.store(true, Ordering::Relaxed);
    }

    /// A scheduled fetch, counted against the rate limit like any other.
    async fn scheduled_fetch(&self) -> bool {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch_logged("scheduled").await
    }
}

/// Keeps one provider's JWKS URL keys fresh: fetches at start, then every `jwks_refresh`;
/// after a failed fetch, retries sooner (from `jwks_min_refresh`, doubling up to
/// `jwks_refresh`). Register it with `GenBackgroundService`.
pub struct JwksRefresher {
    pub(super) source: Arc<JwksSource>,
}

#[async_trait]
impl BackgroundService for JwksRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let source = &self.source;
        let mut retry = source.min_refresh;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let wait = if source.scheduled_fetch().await {
                retry = source.min_refresh;
                source.refresh
            } else {
                let wait = retry;
                retry = (retry * 2).min(source.refresh);
                wait
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
