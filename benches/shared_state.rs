//! The state worker threads share and write on every request of the full policy chain
//! (JWT auth, rate limit, metrics), updated from 1, 2, 4 and 8 threads at once: how each
//! piece's cost per request grows as threads are added. On many cores, writes to one cache
//! line from many threads (atomic read-modify-writes, locks) are what stop a gateway
//! scaling; a piece that only its own thread writes should cost the same at every count.
//!
//! Each benchmark `PIECE/T` starts T threads, lines them up on a barrier, and has each make
//! `iters` requests' worth of that piece's updates; the time is from the barrier's release
//! to the last thread done, so one iteration is T requests, one per thread. Criterion's
//! "time" is thus per round of T concurrent requests, and its throughput (elements) is
//! requests per second over all threads. Each thread makes one untimed request before the
//! barrier, so first-touch costs (a thread's shard, a lazy table) are not timed.
//!
//! The pieces:
//! - `metrics_prometheus`: what the gateway recorded per request before the per-thread
//!   shards, with the `prometheus` crate's types: `requests_total` inc, two histogram
//!   observations (request and upstream duration, `DURATION_BUCKETS` of
//!   `src/observe/metrics.rs`), `upstream_responses_total` inc and `response_bytes_total`
//!   inc_by, and the old in-flight guard (`IntGauge` inc and clone, then dec and drop).
//!   Every thread shares one series of each, as every request of a route does.
//! - `metrics_sharded`: the same updates through `src/observe/shard.rs` (the in-flight gauge
//!   is now an inc and a dec, with no clone). The file is compiled into this bench as a
//!   module (`#[path]`): making its types public through `tollgate::internals` would make
//!   `missing_docs` require documentation of methods it does not have.
//! - `rate_limit_same_key`, `rate_limit_per_thread_key`: what `RateLimits::check_local`
//!   (`src/policy/rate_limit.rs`) does for a route with one window keyed by `consumer`, as
//!   `benches/conf/gateway.toml.in` has, and a limit nothing reaches: the subject's lock (one
//!   of 64 `Mutex<()>`, by a hash of address and consumer), the window's
//!   `WindowCounts::observe` (its shard's `Mutex` and hash table) and `reset_secs`. The lock
//!   shards and the decision are mirrored here (reaching `check_local` would take a dozen
//!   crate-private types made public); `WindowCounts` is `src/policy/window_counts.rs`
//!   compiled in. All threads on one subject, or each thread its own; the per-thread
//!   subjects are picked so no two share a lock (neither the 64 nor the 16 shards), which
//!   leaves only what distinct subjects cannot avoid.
//! - `jwt_cache_hit`: `JwtProvider::verify` of one HS256 token served from the verification
//!   cache (`cache_entries = 1000`), as `benches/jwt.rs` builds it.
//! - `shared_atomic`, `per_thread_atomic` (reference): one `AtomicU64::fetch_add` per request
//!   on one shared counter, or on the thread's own `CachePadded` counter: what one contended
//!   and one uncontended locked write cost here. (The round-robin choice of an upstream
//!   target is one shared `fetch_add`, `src/upstream/select.rs`.)
//!
//! On this 2-core machine T=4 and T=8 time-slice: those rows show contention plus
//! oversubscription (a thread preempted holding a lock makes the others wait). Read how the
//! cost per request grows from 1 to 2 threads, and the gap between the shared and
//! per-thread variants.
//!
//! Run (nothing else compiling or running): `cargo bench --bench shared_state`.
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam_utils::CachePadded;
use std::future::Future;
use std::hash::BuildHasher;
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tollgate::config::file::JwtSection;
use tollgate::config::FromConfig;
use tollgate::internals::JwtProvider;

// Compiled in whole; `cargo bench` sets `cfg(test)`, which brings in their test modules
// without their tests. What clippy says of these files it says of the library.
#[path = "../src/observe/shard.rs"]
#[allow(dead_code, unused_imports, clippy::type_complexity)]
mod shard;

#[path = "../src/policy/window_counts.rs"]
#[allow(dead_code, unused_imports)]
mod window_counts;

use window_counts::{key_of, WindowCounts};

const THREADS: [usize; 4] = [1, 2, 4, 8];

/// `DURATION_BUCKETS` of `src/observe/metrics.rs`.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The request's and the upstream's durations, and the response body bytes, recorded per
/// request (a fast proxied request).
const ELAPSED: f64 = 0.0012;
const UPSTREAM: f64 = 0.0009;
const BYTES_OUT: u64 = 1024;

/// Runs `request(thread)` `iters` times on each of `threads` threads started together; the
/// time from the barrier's release to the last thread's end.
fn concurrently<F: Fn(usize) + Sync>(threads: usize, iters: u64, request: F) -> Duration {
    let barrier = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, request) = (&barrier, &request);
                s.spawn(move || {
                    request(t);
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        request(t);
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let start = spans.iter().map(|s| s.0).min().unwrap();
    let end = spans.iter().map(|s| s.1).max().unwrap();
    end - start
}

/// One series of each metric a request writes, with the `prometheus` crate's types.
struct PrometheusMetrics {
    requests: prometheus::IntCounter,
    duration: prometheus::Histogram,
    upstream_duration: prometheus::Histogram,
    upstream_responses: prometheus::IntCounter,
    response_bytes: prometheus::IntCounter,
    inflight: prometheus::IntGauge,
}

impl PrometheusMetrics {
    fn new() -> Self {
        let vec = |name: &str, labels: &[&str]| {
            prometheus::IntCounterVec::new(prometheus::Opts::new(name, "help"), labels).unwrap()
        };
        let histogram = |name: &str, labels: &[&str]| {
            prometheus::HistogramVec::new(
                prometheus::HistogramOpts::new(name, "help").buckets(DURATION_BUCKETS.to_vec()),
                labels,
            )
            .unwrap()
        };
        PrometheusMetrics {
            requests: vec("requests_total", &["route", "method", "status"])
                .with_label_values(&["r", "GET", "200"]),
            duration: histogram("request_duration_seconds", &["route", "status_class"])
                .with_label_values(&["r", "2xx"]),
            upstream_duration: histogram("upstream_duration_seconds", &["upstream"])
                .with_label_values(&["u"]),
            upstream_responses: vec("upstream_responses_total", &["upstream", "status"])
                .with_label_values(&["u", "200"]),
            response_bytes: vec("response_bytes_total", &["route"]).with_label_values(&["r"]),
            inflight: prometheus::IntGauge::new("requests_in_flight", "help").unwrap(),
        }
    }

    /// A request, in the order the gateway wrote them: the in-flight guard (`begin`), the
    /// upstream's response head, `Metrics::record` (`logging`), the guard's drop.
    fn request(&self) {
        self.inflight.inc();
        let guard = self.inflight.clone();
        self.upstream_responses.inc();
        self.requests.inc();
        self.duration.observe(black_box(ELAPSED));
        self.response_bytes.inc_by(black_box(BYTES_OUT));
        self.upstream_duration.observe(black_box(UPSTREAM));
        guard.dec();
        drop(guard);
    }
}

/// The same series through the per-thread shards, resolved once as `RouteStats` keeps them.
struct ShardedMetrics {
    requests: Arc<shard::Counter>,
    duration: Arc<shard::Histogram>,
    upstream_duration: Arc<shard::Histogram>,
    upstream_responses: Arc<shard::Counter>,
    response_bytes: Arc<shard::Counter>,
    inflight: Arc<shard::Gauge>,
}

impl ShardedMetrics {
    fn new() -> Self {
        let counter =
            |name: &str, labels: &[&str]| shard::CounterVec::counter(name, "help", labels).unwrap();
        let histogram = |name: &str, labels: &[&str]| {
            shard::HistogramVec::histogram(name, "help", labels, DURATION_BUCKETS).unwrap()
        };
        ShardedMetrics {
            requests: counter("requests_total", &["route", "method", "status"])
                .with_label_values(&["r", "GET", "200"]),
            duration: histogram("request_duration_seconds", &["route", "status_class"])
                .with_label_values(&["r", "2xx"]),
            upstream_duration: histogram("upstream_duration_seconds", &["upstream"])
                .with_label_values(&["u"]),
            upstream_responses: counter("upstream_responses_total", &["upstream", "status"])
                .with_label_values(&["u", "200"]),
            response_bytes: counter("response_bytes_total", &["route"]).with_label_values(&["r"]),
            inflight: shard::Family::<shard::Gauge>::gauge("requests_in_flight", "help")
                .unwrap()
                .with_label_values(&[]),
        }
    }

    /// A request: `begin`'s inc, the upstream's response head, `record`, `release`'s dec.
    fn request(&self) {
        self.inflight.inc();
        self.upstream_responses.inc();
        self.requests.inc();
        self.duration.observe(black_box(ELAPSED));
        self.response_bytes.inc_by(black_box(BYTES_OUT));
        self.upstream_duration.observe(black_box(UPSTREAM));
        self.inflight.dec();
    }
}

/// Subject lock shards of one list of windows (`LOCAL_SHARDS` of `rate_limit.rs`).
const LOCAL_SHARDS: usize = 64;
/// Table shards of a `WindowCounts` (`SHARDS` of `window_counts.rs`).
const COUNT_SHARDS: u64 = 16;

/// A route's rate limits with one `consumer`-keyed window: `check_local`'s locks and counts.
struct LocalLimit {
    /// `RateLimits::shards`.
    shards: Box<[Mutex<()>]>,
    counts: WindowCounts,
    salt: u64,
    limit: u64,
}

impl LocalLimit {
    fn new() -> Self {
        LocalLimit {
            shards: (0..LOCAL_SHARDS).map(|_| Mutex::new(())).collect(),
            counts: WindowCounts::new(Duration::from_secs(60)),
            salt: 0x5eed,
            limit: u64::MAX,
        }
    }

    /// `check_local`'s lock shard for a subject.
    fn lock_shard(ip: Option<IpAddr>, consumer: Option<&str>) -> usize {
        foldhash::fast::FixedState::default().hash_one((ip, consumer)) as usize % LOCAL_SHARDS
    }

    /// The window's key: a `consumer` key of a caller with a consumer leaves out the address.
    fn key(&self, consumer: Option<&str>) -> u64 {
        key_of((self.salt, None::<IpAddr>, consumer))
    }

    /// `check_local` for one window that admits: (admitted, remaining, reset seconds).
    fn check(&self, ip: Option<IpAddr>, consumer: Option<&str>) -> (bool, u64, u64) {
        let _one_at_a_time = self.shards[Self::lock_shard(ip, consumer)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let count = self.counts.observe(self.key(consumer), 1);
        assert!(count <= self.limit, "the limit is never reached");
        (
            true,
            self.limit.saturating_sub(count),
            self.counts.reset_secs(),
        )
    }

    /// Consumers, one per thread, whose subject locks and count shards are all distinct.
    fn distinct_subjects(&self, ip: Option<IpAddr>, n: usize) -> Vec<String> {
        let (mut locks, mut tables, mut names) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0.. {
            let name = format!("user-{i}");
            let lock = Self::lock_shard(ip, Some(&name));
            let table = (self.key(Some(&name)) >> 60) % COUNT_SHARDS;
            if !locks.contains(&lock) && !tables.contains(&table) {
                locks.push(lock);
                tables.push(table);
                names.push(name);
                if names.len() == n {
                    break;
                }
            }
        }
        names
    }
}

fn jwt_provider(dir: &std::path::Path) -> (JwtProvider, String) {
    let secret = "bench-secret-0123456789abcdef0123";
    let file = dir.join("secret");
    std::fs::write(&file, secret).unwrap();
    let section: JwtSection = toml::from_str(&format!(
        "algorithms = [\"HS256\"]\nsecret_file = \"{}\"\ncache_entries = 1000\nissuer = \"bench\"",
        file.display()
    ))
    .unwrap();
    let provider =
        JwtProvider::from_config("auth.jwt.bench", &section, "bench", &mut Vec::new()).unwrap();
    let claims = serde_json::json!({
        "sub": "user-42", "roles": ["user", "reader"], "iss": "bench",
        "exp": 4_102_444_800u64, "iat": 1_700_000_000u64,
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    (provider, token)
}

/// `verify` with a fixed key never waits: poll it once, without a runtime.
fn verify_now(p: &JwtProvider, token: &str) -> bool {
    let mut fut = std::pin::pin!(p.verify(token));
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r.is_ok(),
        Poll::Pending => panic!("verify waited with a fixed key"),
    }
}

fn shared_state(c: &mut Criterion) {
    let prometheus = PrometheusMetrics::new();
    let sharded = ShardedMetrics::new();
    let limit = LocalLimit::new();
    let ip: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
    let most = *THREADS.iter().max().unwrap();
    let own = limit.distinct_subjects(ip, most);
    let dir = tempfile::tempdir().unwrap();
    let (jwt, token) = jwt_provider(dir.path());
    assert!(verify_now(&jwt, &token));
    let shared_counter = AtomicU64::new(0);
    let own_counters: Vec<CachePadded<AtomicU64>> =
        (0..most).map(|_| CachePadded::default()).collect();

    let pieces: [(&str, &(dyn Fn(usize) + Sync)); 7] = [
        ("metrics_prometheus", &|_| prometheus.request()),
        ("metrics_sharded", &|_| sharded.request()),
        ("rate_limit_same_key", &|_| {
            black_box(limit.check(black_box(ip), black_box(Some("user-42"))));
        }),
        ("rate_limit_per_thread_key", &|t| {
            black_box(limit.check(black_box(ip), black_box(Some(own[t].as_str()))));
        }),
        ("jwt_cache_hit", &|_| {
            assert!(verify_now(&jwt, black_box(&token)))
        }),
        ("shared_atomic", &|_| {
            shared_counter.fetch_add(1, Ordering::Relaxed);
        }),
        ("per_thread_atomic", &|t| {
            own_counters[t].fetch_add(1, Ordering::Relaxed);
        }),
    ];

    let mut g = c.benchmark_group("shared_state");
    for (piece, request) in pieces {
        for threads in THREADS {
            g.throughput(Throughput::Elements(threads as u64));
            g.bench_with_input(BenchmarkId::new(piece, threads), &threads, |b, &threads| {
                b.iter_custom(|iters| concurrently(threads, iters, request))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = shared_state
}
criterion_main!(benches);
