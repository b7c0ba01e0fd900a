//! Metrics every request writes, kept per thread and summed when scraped.
//!
//! A Prometheus counter from the `prometheus` crate is one atomic word: every worker's
//! `inc` is a locked read-modify-write of the same cache line, which moves between cores
//! on every request (its histogram is four of them). Here each thread that records owns a
//! shard on a cache line of its own (`thread_local::ThreadLocal`, padded by
//! `crossbeam_utils::CachePadded`) and updates it with a plain load and store: only that
//! thread ever writes it, so nothing is locked and no line is shared. A scrape reads every
//! shard and adds them up, and presents the families exactly as the `prometheus` crate's
//! own types would (same names, help, labels, buckets, text format), through the
//! [`Collector`] trait, so they live in the same registry as the rest.
//!
//! A shard's value can be negative for a gauge (raised on one thread, lowered on another);
//! the sum is exact. A scrape concurrent with recording sees each shard's last store, so a
//! histogram's `_sum` may miss an observation its buckets have (or the reverse) for one
//! scrape; its `_count` is the sum of its buckets, so the two always agree.

use crossbeam_utils::CachePadded;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use thread_local::ThreadLocal;

/// Adds `n` to a word only the calling thread writes: a load and a store, not a locked
/// read-modify-write (a concurrent scrape reads either value, never a torn one).
#[inline]
fn bump(word: &AtomicU64, n: u64) {
    word.store(word.load(Relaxed).wrapping_add(n), Relaxed);
}

/// One word per thread, added to by its thread alone; read as the wrapping sum of all.
#[derive(Default)]
struct Words(ThreadLocal<CachePadded<AtomicU64>>);

impl Words {
    #[inline]
    fn add(&self, n: u64) {
        bump(self.0.get_or_default(), n);
    }

    fn sum(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |sum, w| sum.wrapping_add(w.load(Relaxed)))
    }
}

/// A monotonic counter.
#[derive(Default)]
pub(crate) struct Counter(Words);

impl Counter {
    #[inline]
    pub(crate) fn inc_by(&self, n: u64) {
        self.0.add(n);
    }

    #[inline]
    pub(crate) fn inc(&self) {
        self.inc_by(1);
    }

    /// The sum over every thread.
    pub(crate) fn get(&self) -> u64 {
        self.0.sum()
    }
}

/// A gauge moved up and down, possibly from different threads: a thread's word may go
/// "below zero" (two's complement), the sum is exact.
#[derive(Default)]
pub(crate) struct Gauge(Words);

impl Gauge {
    #[inline]
    pub(crate) fn inc(&self) {
        self.0.add(1);
    }

    #[inline]
    pub(crate) fn dec(&self) {
        self.0.add(u64::MAX);
    }

    /// The sum over every thread.
    pub(crate) fn get(&self) -> i64 {
        self.0.sum() as i64
    }
}

/// One thread's observations: a count per bucket (not cumulative; the last is `+Inf`) and
/// the sum, as `f64` bits.
struct HistogramShard {
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// A histogram with fixed upper bounds, shared by the histograms of one family.
pub(crate) struct Histogram {
    bounds: Arc<[f64]>,
    shards: ThreadLocal<CachePadded<HistogramShard>>,
}

impl Histogram {
    fn new(bounds: Arc<[f64]>) -> Self {
        Histogram {
            bounds,
            shards: ThreadLocal::new(),
        }
    }

    #[inline]
    pub(crate) fn observe(&self, v: f64) {
        let s = self.shards.get_or(|| {
            CachePadded::new(HistogramShard {
                buckets: (0..=self.bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum: AtomicU64::new(0f64.to_bits()),
            })
        });
        // `v <= bound`, as Prometheus buckets are; NaN lands in `+Inf`.
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        bump(&s.buckets[i], 1);
        s.sum
            .store((f64::from_bits(s.sum.load(Relaxed)) + v).to_bits(), Relaxed);
    }

    /// Cumulative counts per bound (the last is `+Inf`, the sample count) and the sum.
    pub(crate) fn snapshot(&self) -> (Vec<u64>, f64) {
        let mut counts = vec![0u64; self.bounds.len() + 1];
        let mut sum = 0.0;
        for s in self.shards.iter() {
            for (c, b) in counts.iter_mut().zip(s.buckets.iter()) {
                *c += b.load(Relaxed);
            }
            sum += f64::from_bits(s.sum.load(Relaxed));
        }
        let mut running = 0;
        for c in &mut counts {
            running += *c;
            *c = running;
        }
        (counts, sum)
    }

    fn proto(&self) -> proto::Histogram {
        let (counts, sum) = self.snapshot();
        let mut h = proto::Histogram::default();
        h.set_sample_count(counts.last().copied().unwrap_or(0));
        h.set_sample_sum(sum);
        h.set_bucket(
            self.bounds
                .iter()
                .zip(&counts)
                .map(|(bound, count)| {
                    let mut b = proto::Bucket::default();
                    b.set_upper_bound(*bound);
                    b.set_cumulative_count(*count);
                    b
                })
                .collect(),
        );
        h
    }
}

/// What a family's series are: how one is made and how it is written out.
pub(crate) trait Series: Send + Sync {
    const TYPE: MetricType;
    /// What every series of the family shares (a histogram's bounds).
    type Shape: Clone + Send + Sync;
    fn new(shape: &Self::Shape) -> Self;
    fn fill(&self, m: &mut proto::Metric);
}

impl Series for Counter {
    const TYPE: MetricType = MetricType::COUNTER;
    type Shape = ();
    fn new(_: &()) -> Self {
        Counter::default()
    }
    fn fill(&self, m: &mut proto::Metric) {
        let mut c = proto::Counter::default();
        c.set_value(self.get() as f64);
        m.set_counter(c);
    }
}

impl Series for Gauge {
    const TYPE: MetricType = MetricType::GAUGE;
    type Shape = ();
    fn new(_: &()) -> Self {
        Gauge::default()
    }
    fn fill(&self, m: &mut proto::Metric) {
        let mut g = proto::Gauge::default();
        g.set_value(self.get() as f64);
        m.set_gauge(g);
    }
}

impl Series for Histogram {
    const TYPE: MetricType = MetricType::HISTOGRAM;
    type Shape = Arc<[f64]>;
    fn new(bounds: &Arc<[f64]>) -> Self {
        Histogram::new(bounds.clone())
    }
    fn fill(&self, m: &mut proto::Metric) {
        m.set_histogram(self.proto());
    }
}

/// A family of series by label values, like the `prometheus` crate's `MetricVec` (and,
/// like it, a handle: clones share the series). Resolving a series takes a read lock and
/// one hash of the values; the per-request paths resolve theirs once and keep the `Arc`
/// (`RouteStats`). Label values come from the configuration, never from a client, so the
/// hash needs no seed.
pub(crate) struct Family<S: Series>(Arc<FamilyInner<S>>);

struct FamilyInner<S: Series> {
    desc: Desc,
    shape: S::Shape,
    /// By the hash of the label values.
    series: RwLock<HashMap<u64, Colliding<S>>>,
}

/// The series of one hash, each with its label values to tell collisions apart.
type Colliding<S> = Vec<(Box<[String]>, Arc<S>)>;

impl<S: Series> Clone for Family<S> {
    fn clone(&self) -> Self {
        Family(self.0.clone())
    }
}

pub(crate) type CounterVec = Family<Counter>;
pub(crate) type HistogramVec = Family<Histogram>;

fn hash_values(values: &[&str]) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = foldhash::fast::FixedState::with_seed(0).build_hasher();
    for v in values {
        v.hash(&mut h);
    }
    h.finish()
}

fn same(key: &[String], values: &[&str]) -> bool {
    key.iter().map(String::as_str).eq(values.iter().copied())
}

impl<S: Series> Family<S> {
    fn with_shape(
        name: &str,
        help: &str,
        labels: &[&str],
        shape: S::Shape,
    ) -> prometheus::Result<Self> {
        Ok(Family(Arc::new(FamilyInner {
            desc: Desc::new(
                name.into(),
                help.into(),
                labels.iter().map(|l| (*l).into()).collect(),
                HashMap::new(),
            )?,
            shape,
            series: RwLock::new(HashMap::new()),
        })))
    }

    /// The series of these label values (one per label name, in order), made on first use.
    pub(crate) fn with_label_values(&self, values: &[&str]) -> Arc<S> {
        debug_assert_eq!(values.len(), self.0.desc.variable_labels.len());
        let hash = hash_values(values);
        {
            let series = self.0.series.read().unwrap_or_else(|p| p.into_inner());
            let found = series
                .get(&hash)
                .and_then(|b| b.iter().find(|(k, _)| same(k, values)));
            if let Some((_, s)) = found {
                return s.clone();
            }
        }
        let mut series = self.0.series.write().unwrap_or_else(|p| p.into_inner());
        let bucket = series.entry(hash).or_default();
        if let Some((_, s)) = bucket.iter().find(|(k, _)| same(k, values)) {
            return s.clone();
        }
        let s = Arc::new(S::new(&self.0.shape));
        bucket.push((values.iter().map(|v| (*v).to_owned()).collect(), s.clone()));
        s
    }

    /// Drops the series whose value of `label` is not in `live` (a route or group a reload
    /// removed). A handle kept elsewhere still counts, unreported.
    pub(crate) fn retain(&self, label: &str, live: &HashSet<&str>) {
        let labels = &self.0.desc.variable_labels;
        let Some(i) = labels.iter().position(|l| l == label) else {
            return;
        };
        let mut series = self.0.series.write().unwrap_or_else(|p| p.into_inner());
        for bucket in series.values_mut() {
            bucket.retain(|(k, _)| live.contains(k[i].as_str()));
        }
        series.retain(|_, b| !b.is_empty());
    }
}

impl Family<Counter> {
    pub(crate) fn counter(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self> {
        Self::with_shape(name, help, labels, ())
    }
}

impl Family<Gauge> {
    pub(crate) fn gauge(name: &str, help: &str) -> prometheus::Result<Self> {
        Self::with_shape(name, help, &[], ())
    }
}

impl Family<Histogram> {
    pub(crate) fn histogram(
        name: &str,
        help: &str,
        labels: &[&str],
        bounds: &[f64],
    ) -> prometheus::Result<Self> {
        Self::with_shape(name, help, labels, bounds.into())
    }
}

impl<S: Series> Collector for Family<S> {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let desc = &self.0.desc;
        let series = self.0.series.read().unwrap_or_else(|p| p.into_inner());
        let mut family = MetricFamily::default();
        family.set_name(desc.fq_name.clone());
        family.set_help(desc.help.clone());
        family.set_field_type(S::TYPE);
        family.set_metric(
            series
                .values()
                .flatten()
                .map(|(values, s)| {
                    let mut m = proto::Metric::default();
                    m.set_label(label_pairs(&desc.variable_labels, values));
                    s.fill(&mut m);
                    m
                })
                .collect(),
        );
        vec![family]
    }
}

/// The label pairs of one series, sorted by name as the `prometheus` crate sorts them.
fn label_pairs(names: &[String], values: &[String]) -> Vec<LabelPair> {
    let mut pairs: Vec<LabelPair> = names
        .iter()
        .zip(values)
        .map(|(n, v)| {
            let mut p = LabelPair::default();
            p.set_name(n.clone());
            p.set_value(v.clone());
            p
        })
        .collect();
    pairs.sort_by(|a, b| a.name().cmp(b.name()));
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, Registry, TextEncoder};

    const BOUNDS: &[f64] = &[0.001, 0.01, 0.1, 1.0];

    fn text(registry: &Registry) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The same observations through the `prometheus` crate's types and through the
    /// sharded ones, from four threads, give the same exposition text.
    #[test]
    fn sharded_families_expose_what_the_prometheus_types_would() {
        let theirs = Registry::new_custom(Some("tg".into()), None).unwrap();
        let ours = Registry::new_custom(Some("tg".into()), None).unwrap();
        let c1 = prometheus::IntCounterVec::new(
            prometheus::Opts::new("requests_total", "Requests"),
            &["route", "method"],
        )
        .unwrap();
        let h1 = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new("duration_seconds", "Durations")
                .buckets(BOUNDS.to_vec()),
            &["route"],
        )
        .unwrap();
        let g1 = prometheus::IntGauge::new("in_flight", "In flight").unwrap();
        theirs.register(Box::new(c1.clone())).unwrap();
        theirs.register(Box::new(h1.clone())).unwrap();
        theirs.register(Box::new(g1.clone())).unwrap();
        let c2 = CounterVec::counter("requests_total", "Requests", &["route", "method"]).unwrap();
        let h2 =
            HistogramVec::histogram("duration_seconds", "Durations", &["route"], BOUNDS).unwrap();
        let g2 = Family::<Gauge>::gauge("in_flight", "In flight").unwrap();
        ours.register(Box::new(c2.clone())).unwrap();
        ours.register(Box::new(h2.clone())).unwrap();
        ours.register(Box::new(g2.clone())).unwrap();

        std::thread::scope(|scope| {
            for t in 0..4u32 {
                let (c1, h1, g1) = (&c1, &h1, &g1);
                let (c2, h2, g2) = (&c2, &h2, &g2);
                scope.spawn(move || {
                    let ours = c2.with_label_values(&["a", "GET"]);
                    let g = g2.with_label_values(&[]);
                    for i in 0..1000u32 {
                        // Multiples of 2^-10: every sum is exact in any order of addition.
                        let v = f64::from(i % 7 + t) / 1024.0;
                        let route = if i % 3 == 0 { "b" } else { "a" };
                        c1.with_label_values(&["a", "GET"]).inc();
                        ours.inc();
                        if i % 5 == 0 {
                            c1.with_label_values(&[route, "POST"]).inc_by(2);
                            c2.with_label_values(&[route, "POST"]).inc_by(2);
                        }
                        h1.with_label_values(&[route]).observe(v);
                        h2.with_label_values(&[route]).observe(v);
                        // Raised here, lowered on another thread's shard below.
                        g1.inc();
                        g.inc();
                    }
                });
            }
        });
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for _ in 0..1500 {
                    g1.dec();
                    g2.with_label_values(&[]).dec();
                }
            });
        });
        let expected = text(&theirs);
        assert!(expected.contains("tg_requests_total{method=\"GET\",route=\"a\"} 4000"));
        assert!(expected.contains("tg_in_flight 2500"));
        assert_eq!(text(&ours), expected);
    }

    #[test]
    fn retain_drops_the_series_of_labels_no_longer_live() {
        let c = CounterVec::counter("requests_total", "Requests", &["route", "method"]).unwrap();
        c.with_label_values(&["kept", "GET"]).inc();
        let gone = c.with_label_values(&["gone", "GET"]);
        gone.inc();
        c.retain("route", &HashSet::from(["kept"]));
        let families = c.collect();
        assert_eq!(families[0].get_metric().len(), 1);
        assert_eq!(families[0].get_metric()[0].get_label()[1].value(), "kept");
        // A handle kept by someone still counts, unreported; asking again starts afresh.
        gone.inc();
        assert_eq!(c.with_label_values(&["gone", "GET"]).get(), 0);
    }

    #[test]
    fn a_histogram_counts_nan_and_values_above_every_bound_in_inf() {
        let h = Histogram::new(BOUNDS.into());
        h.observe(5.0);
        h.observe(f64::NAN);
        h.observe(0.001);
        let (counts, _) = h.snapshot();
        assert_eq!(counts, vec![1, 1, 1, 1, 3]);
    }
}
