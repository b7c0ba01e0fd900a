//! The gateway's Prometheus metrics, owned by the compiled runtime (never a global registry,
//! so several gateways can live in one process and an upgrade starts clean). Every name
//! carries the `tollgate_` prefix (the registry adds it), except the `process_*` metrics,
//! whose names are Prometheus's own convention.
//!
//! Label values come from the configuration (route, upstream group, target, certificate
//! file) or from small fixed sets (method, status code, status class, reason, result): no
//! label takes a value from the client, so cardinality is bounded by the configuration.
//! Series of routes, groups and targets the serving generation no longer has are removed at
//! the next scrape.

use super::shard::{self, CounterVec, Family, HistogramVec, Series};
use crate::cache::{ResponseCache, Verdict};
use prometheus::core::{MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The `method` label values; anything else is `OTHER`.
const METHODS: [http::Method; 9] = [
    http::Method::GET,
    http::Method::POST,
    http::Method::PUT,
    http::Method::DELETE,
    http::Method::PATCH,
    http::Method::HEAD,
    http::Method::OPTIONS,
    http::Method::CONNECT,
    http::Method::TRACE,
];

/// The `status_class` label values, by `status / 100 - 1`.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A route's metric handles, resolved on first use: the common requests skip the label
/// hashing and the family's lock of `with_label_values`. Every one is a per-thread sharded
/// series ([`shard`]): recording a request writes no cache line another worker writes.
#[derive(Default)]
pub(crate) struct RouteStats {
    /// `request_duration_seconds`, by status class.
    duration: [OnceLock<Arc<shard::Histogram>>; STATUS_CLASSES.len()],
    upstream_duration: OnceLock<Arc<shard::Histogram>>,
    /// `upstream_responses_total` with status 200 (a route has one upstream group).
    upstream_ok: OnceLock<Arc<shard::Counter>>,
    request_bytes: OnceLock<Arc<shard::Counter>>,
    response_bytes: OnceLock<Arc<shard::Counter>>,
    /// `requests_total` with status 200, by index in [`METHODS`].
    ok: [OnceLock<Arc<shard::Counter>>; METHODS.len()],
    /// `cache_requests_total`, by [`Verdict`].
    cache: [OnceLock<Arc<shard::Counter>>; Verdict::ALL.len()],
}

/// What [`Metrics::record`] counts for one request.
pub(crate) struct Served<'a> {
    pub route: &'a str,
    pub stats: Option<&'a RouteStats>,
    pub method: &'a http::Method,
    pub status: http::StatusCode,
    pub elapsed: Duration,
    /// The upstream group and the time from sending upstream to the end of the response.
    pub upstream: Option<(&'a str, Duration)>,
    /// Body bytes received from the client and sent to it.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// What the cache did, on caching routes.
    pub cache: Option<Verdict>,
}

/// The series in `cell` (resolved from `family` on first use), or `family`'s without a cell.
fn handle<'a, S: Series>(
    cell: Option<&'a OnceLock<Arc<S>>>,
    family: &Family<S>,
    labels: &[&str],
) -> std::borrow::Cow<'a, Arc<S>> {
    match cell {
        Some(c) => std::borrow::Cow::Borrowed(c.get_or_init(|| family.with_label_values(labels))),
        None => std::borrow::Cow::Owned(family.with_label_values(labels)),
    }
}

/// Request duration buckets, in seconds: 0.5 ms to 30 s.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// One target's health, as `/metrics` reports it.
pub(crate) struct TargetSample<'a> {
    pub group: &'a str,
    pub target: &'a str,
    pub healthy: bool,
    /// `circuit_state`: 0 closed, 1 open, 2 half-open; `None` without a breaker.
    pub circuit: Option<i64>,
    /// Drained by the operator (`upstream_target_drained`).
    pub drained: bool,
}

/// Where one group's targets come from, for the discovery gauges.
pub(crate) struct GroupSample<'a> {
    pub group: &'a str,
    pub provider: &'a str,
    pub targets: usize,
    /// When the target set last changed, seconds since the epoch.
    pub updated: Option<f64>,
    /// The last read of the source failed (the last good set is serving).
    pub failing: bool,
}

/// Route label used for requests that matched no route.
pub(crate) const NO_ROUTE: &str = "-";

pub(crate) struct Metrics {
    /// Everything of the gateway's own, named `tollgate_*`.
    registry: Registry,
    /// `process_*`: CPU, memory, file descriptors, threads, start time.
    process: Registry,
    /// `upstream_responses_total{upstream, status}`.
    upstream_responses: CounterVec,
    /// `request_bytes_total{route}`, `response_bytes_total{route}`: body bytes.
    request_bytes: CounterVec,
    response_bytes: CounterVec,
    /// `tls_certificate_expiry_timestamp_seconds{name}`, rebuilt at each scrape.
    cert_expiry: IntGaugeVec,
    /// `tracing_spans_dropped_total`: spans not exported because the queue was full.
    pub tracing_spans_dropped: IntCounter,
    requests: CounterVec,
    duration: HistogramVec,
    upstream_duration: HistogramVec,
    pub target_healthy: IntGaugeVec,
    /// `upstream_target_drained{upstream,target}`: 1 while the operator drains the target.
    target_drained: IntGaugeVec,
    /// `requests_in_flight`: raised in `begin`, lowered when the request's context drops.
    pub inflight: Arc<shard::Gauge>,
    pub connections: IntGauge,
    pub retries: IntCounterVec,
    pub access_log_dropped: IntCounter,
    pub auth_failures: IntCounterVec,
    pub rate_limited: IntCounterVec,
    /// `shadow_refusals_total{route, policy, reason}`: refusals a policy in shadow mode
    /// would have made (the request went on).
    pub shadow_refusals: IntCounterVec,
    /// `reasons_total{route, status, reason}`: responses the gateway refused, answered
    /// itself, failed or did not cache, by reason (`docs/observability.md`).
    pub reasons: IntCounterVec,
    pub connections_refused: IntCounter,
    /// `tollgate_proxy_protocol_refused_total{reason}`: connections closed before HTTP on a
    /// listener with `[listeners.proxy_protocol]`.
    pub proxy_protocol_refused: IntCounterVec,
    /// `tollgate_quic_connections_total{outcome}` and `tollgate_http3_requests_total`.
    pub http3: crate::http3::Http3Metrics,
    /// `upgraded_connections`: client connections upgraded (WebSocket) and still open.
    pub upgraded: IntGauge,
    /// `auth_decisions_total{provider, result}`: forward-auth and introspection decisions
    /// (`hit`, `miss`, `coalesced`, `error`).
    pub auth_decisions: IntCounterVec,
    pub retries_skipped: IntCounterVec,
    pub circuit_state: IntGaugeVec,
    /// `upstream_targets{upstream,provider}`, `upstream_targets_updated_timestamp_seconds`,
    /// `upstream_discovery_failing`: rebuilt at each scrape from the serving generation.
    discovery_targets: IntGaugeVec,
    discovery_updated: prometheus::GaugeVec,
    discovery_failing: IntGaugeVec,
    pub rate_limit_redis_errors: IntCounter,
    /// `cache_shared_degraded`, `cache_shared_errors_total`.
    cache_shared: crate::cache::shared::SharedMetrics,
    /// `rate_limit_sync_degraded`, `rate_limit_sync_replicas`, `rate_limit_sync_failures_total`.
    rate_limit_sync: crate::policy::fleet::FleetMetrics,
    cache_requests: CounterVec,
    cache_size: IntGauge,
    cache_entries: IntGauge,
    cache_evictions: IntCounter,
    /// `tollgate_config_reloads_total{result="ok"|"error"}`.
    pub config_reloads: IntCounterVec,
    /// `tollgate_config_generation`: the number of the generation serving.
    pub config_generation: IntGauge,
    /// `tollgate_config_last_reload_success_timestamp_seconds`.
    pub config_last_success: prometheus::Gauge,
}

impl Metrics {
    pub(crate) fn new() -> prometheus::Result<Self> {
        let registry = Registry::new_custom(Some("tollgate".into()), None)?;
        let process = Registry::new();
        #[cfg(target_os = "linux")]
        process.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "build_info",
                "Always 1: the version, the Pingora version and the TLS library",
            ),
            &["version", "pingora", "tls"],
        )?;
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                env!("TOLLGATE_PINGORA_VERSION"),
                openssl::version::version(),
            ])
            .set(1);
        registry.register(Box::new(build_info))?;
        let upstream_responses = CounterVec::counter(
            "upstream_responses_total",
            "Responses from upstream groups, by group and status code (retried attempts included)",
            &["upstream", "status"],
        )?;
        let request_bytes = CounterVec::counter(
            "request_bytes_total",
            "Request body bytes received, by route",
            &["route"],
        )?;
        let response_bytes = CounterVec::counter(
            "response_bytes_total",
            "Response body bytes sent, by route",
            &["route"],
        )?;
        let cert_expiry = IntGaugeVec::new(
            Opts::new(
                "tls_certificate_expiry_timestamp_seconds",
                "When each served certificate expires (its notAfter), by certificate file",
            ),
            &["name"],
        )?;
        let tracing_spans_dropped = IntCounter::new(
            "tracing_spans_dropped_total",
            "Spans not exported because the export queue was full",
        )?;
        registry.register(Box::new(upstream_responses.clone()))?;
        registry.register(Box::new(request_bytes.clone()))?;
        registry.register(Box::new(response_bytes.clone()))?;
        registry.register(Box::new(cert_expiry.clone()))?;
        registry.register(Box::new(tracing_spans_dropped.clone()))?;
        let requests = CounterVec::counter(
            "requests_total",
            "Requests answered, by route, method and status code",
            &["route", "method", "status"],
        )?;
        let duration = HistogramVec::histogram(
            "request_duration_seconds",
            "Time from request start to the end of the response, by route and status class",
            &["route", "status_class"],
            DURATION_BUCKETS,
        )?;
        let upstream_duration = HistogramVec::histogram(
            "upstream_duration_seconds",
            "Time from sending the request upstream to the end of its response, by upstream group",
            &["upstream"],
            DURATION_BUCKETS,
        )?;
        let target_healthy = IntGaugeVec::new(
            Opts::new(
                "upstream_target_healthy",
                "1 when the target passes its health checks",
            ),
            &["upstream", "target"],
        )?;
        let target_drained = IntGaugeVec::new(
            Opts::new(
                "upstream_target_drained",
                "1 while the target is drained by the operator (no new requests), else 0",
            ),
            &["upstream", "target"],
        )?;
        let discovery_targets = IntGaugeVec::new(
            Opts::new(
                "upstream_targets",
                "Targets of the group, by where they come from (static, dns, file, srv)",
            ),
            &["upstream", "provider"],
        )?;
        let discovery_updated = prometheus::GaugeVec::new(
            Opts::new(
                "upstream_targets_updated_timestamp_seconds",
                "When the group's target set last changed",
            ),
            &["upstream"],
        )?;
        let discovery_failing = IntGaugeVec::new(
            Opts::new(
                "upstream_discovery_failing",
                "1 while the group's target source cannot be read (the last good set serves)",
            ),
            &["upstream"],
        )?;
        let inflight_family =
            Family::<shard::Gauge>::gauge("requests_in_flight", "Requests being handled now")?;
        let inflight = inflight_family.with_label_values(&[]);
        registry.register(Box::new(inflight_family))?;
        let connections = IntGauge::new("downstream_connections", "Open client connections")?;
        let retries = IntCounterVec::new(
            Opts::new(
                "upstream_retries_total",
                "Attempts repeated on another target, by route",
            ),
            &["route"],
        )?;
        let access_log_dropped = IntCounter::new(
            "access_log_dropped_total",
            "Access-log lines dropped because the writer fell behind",
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "auth_failures_total",
                "Requests refused by authentication or authorization",
            ),
            &["route", "reason"],
        )?;
        let rate_limited = IntCounterVec::new(
            Opts::new("rate_limited_total", "Requests refused by a rate limit"),
            &["route"],
        )?;
        let shadow_refusals = IntCounterVec::new(
            Opts::new(
                "shadow_refusals_total",
                "Refusals a policy in shadow mode would have made; the requests went on",
            ),
            &["route", "policy", "reason"],
        )?;
        let reasons = IntCounterVec::new(
            Opts::new(
                "reasons_total",
                "Responses the gateway refused, answered itself, failed or did not cache, by reason",
            ),
            &["route", "status", "reason"],
        )?;
        let connections_refused = IntCounter::new(
            "connections_refused_total",
            "Client connections closed at once because a connection cap was reached",
        )?;
        let proxy_protocol_refused = IntCounterVec::new(
            Opts::new(
                "proxy_protocol_refused_total",
                "Connections closed on a PROXY protocol listener: untrusted peer, missing, \
                 malformed or late header",
            ),
            &["reason"],
        )?;
        let http3 = crate::http3::Http3Metrics {
            connections: IntCounterVec::new(
                Opts::new(
                    "quic_connections_total",
                    "QUIC connections offered to HTTP/3 listeners: accepted, sent a Retry, \
                     refused (busy, per IP, connection caps) or failed in the handshake",
                ),
                &["outcome"],
            )?,
            requests: IntCounter::new("http3_requests_total", "Requests received over HTTP/3")?,
        };
        let upgraded = IntGauge::new(
            "upgraded_connections",
            "Client connections upgraded (WebSocket) and still open",
        )?;
        let auth_decisions = IntCounterVec::new(
            Opts::new(
                "auth_decisions_total",
                "Forward-auth and introspection decisions: from the cache (hit), a new check \
                 (miss), another request's check (coalesced), or a failed check (error)",
            ),
            &["provider", "result"],
        )?;
        let retries_skipped = IntCounterVec::new(
            Opts::new(
                "upstream_retries_skipped_total",
                "Retries not made: budget spent, or body too large to replay",
            ),
            &["route", "reason"],
        )?;
        let circuit_state = IntGaugeVec::new(
            Opts::new(
                "circuit_state",
                "Circuit breaker per target: 0 closed, 1 open, 2 half-open",
            ),
            &["upstream", "target"],
        )?;
        let rate_limit_redis_errors = IntCounter::new(
            "rate_limit_redis_errors_total",
            "Redis rate-limit calls that failed or timed out (the failure policy then applied)",
        )?;
        let cache_requests = CounterVec::counter(
            "cache_requests_total",
            "Requests on caching routes, by route and result (hit, miss, bypass, stale)",
            &["route", "result"],
        )?;
        let cache_size = IntGauge::new(
            "cache_size_bytes",
            "Bytes held by the response cache (bodies, headers, keys)",
        )?;
        let cache_entries = IntGauge::new("cache_entries", "Responses held by the cache")?;
        let cache_evictions = IntCounter::new(
            "cache_evictions_total",
            "Cached responses evicted to stay within cache.max_size",
        )?;
        registry.register(Box::new(cache_requests.clone()))?;
        registry.register(Box::new(cache_size.clone()))?;
        registry.register(Box::new(cache_entries.clone()))?;
        registry.register(Box::new(cache_evictions.clone()))?;
        registry.register(Box::new(rate_limit_redis_errors.clone()))?;
        let rate_limit_sync = crate::policy::fleet::FleetMetrics {
            degraded: IntGauge::new(
                "rate_limit_sync_degraded",
                "1 while sync rate limits cannot reach Redis (each instance admits limit / replicas)",
            )?,
            replicas: IntGauge::new(
                "rate_limit_sync_replicas",
                "Gateway instances with a live heartbeat at the last sync",
            )?,
            failures: IntCounter::new(
                "rate_limit_sync_failures_total",
                "Rate-limit lease and heartbeat calls to Redis that failed or timed out",
            )?,
        };
        registry.register(Box::new(rate_limit_sync.degraded.clone()))?;
        registry.register(Box::new(rate_limit_sync.replicas.clone()))?;
        registry.register(Box::new(rate_limit_sync.failures.clone()))?;
        let cache_shared = crate::cache::shared::SharedMetrics {
            degraded: IntGauge::new(
                "cache_shared_degraded",
                "1 while the shared cache cannot reach Redis (the cache is memory-only)",
            )?,
            errors: IntCounter::new(
                "cache_shared_errors_total",
                "Shared-cache Redis calls that failed or timed out",
            )?,
        };
        registry.register(Box::new(cache_shared.degraded.clone()))?;
        registry.register(Box::new(cache_shared.errors.clone()))?;
        registry.register(Box::new(retries_skipped.clone()))?;
        registry.register(Box::new(circuit_state.clone()))?;
        registry.register(Box::new(discovery_targets.clone()))?;
        registry.register(Box::new(discovery_updated.clone()))?;
        registry.register(Box::new(discovery_failing.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(shadow_refusals.clone()))?;
        registry.register(Box::new(reasons.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(proxy_protocol_refused.clone()))?;
        registry.register(Box::new(http3.connections.clone()))?;
        registry.register(Box::new(http3.requests.clone()))?;
        registry.register(Box::new(auth_decisions.clone()))?;
        registry.register(Box::new(upgraded.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(target_healthy.clone()))?;
        registry.register(Box::new(target_drained.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        let config_reloads = IntCounterVec::new(
            Opts::new("config_reloads_total", "Configuration reloads, by result"),
            &["result"],
        )?;
        let config_generation = IntGauge::new(
            "config_generation",
            "Generation of the configuration serving (1 at start, +1 per reload)",
        )?;
        let config_last_success = prometheus::Gauge::new(
            "config_last_reload_success_timestamp_seconds",
            "When the serving configuration was loaded, in seconds since the epoch",
        )?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(config_generation.clone()))?;
        registry.register(Box::new(config_last_success.clone()))?;
        for result in ["ok", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        Ok(Metrics {
            registry,
            process,
            upstream_responses,
            request_bytes,
            response_bytes,
            cert_expiry,
            tracing_spans_dropped,
            requests,
            duration,
            upstream_duration,
            target_healthy,
            target_drained,
            inflight,
            connections,
            retries,
            access_log_dropped,
            auth_failures,
            rate_limited,
            shadow_refusals,
            reasons,
            connections_refused,
            proxy_protocol_refused,
            http3,
            auth_decisions,
            upgraded,
            retries_skipped,
            circuit_state,
            discovery_targets,
            discovery_updated,
            discovery_failing,
            rate_limit_redis_errors,
            rate_limit_sync,
            cache_shared,
            cache_requests,
            cache_size,
            cache_entries,
            cache_evictions,
            config_reloads,
            config_generation,
            config_last_success,
        })
    }

    /// Count one answered request: `requests_total`, `request_duration_seconds`,
    /// `upstream_duration_seconds`, `upstream_responses_total`, the byte counters and
    /// `cache_requests_total`.
    /// Count a response by its reason (`reasons_total`).
    pub(crate) fn reason(&self, route: &str, status: http::StatusCode, reason: &str) {
        self.reasons
            .with_label_values(&[route, status.as_str(), reason])
            .inc();
    }

    pub(crate) fn record(&self, o: &Served<'_>) {
        let method = METHODS.iter().position(|m| m == o.method);
        let method_label = method.map_or("OTHER", |i| METHODS[i].as_str());
        let ok_cell = match (o.stats, method) {
            (Some(stats), Some(i)) if o.status == http::StatusCode::OK => Some(&stats.ok[i]),
            _ => None,
        };
        handle(
            ok_cell,
            &self.requests,
            &[o.route, method_label, o.status.as_str()],
        )
        .inc();
        let class = usize::from(o.status.as_u16() / 100).clamp(1, STATUS_CLASSES.len()) - 1;
        handle(
            o.stats.map(|s| &s.duration[class]),
            &self.duration,
            &[o.route, STATUS_CLASSES[class]],
        )
        .observe(o.elapsed.as_secs_f64());
        if o.bytes_in > 0 {
            handle(
                o.stats.map(|s| &s.request_bytes),
                &self.request_bytes,
                &[o.route],
            )
            .inc_by(o.bytes_in);
        }
        if o.bytes_out > 0 {
            handle(
                o.stats.map(|s| &s.response_bytes),
                &self.response_bytes,
                &[o.route],
            )
            .inc_by(o.bytes_out);
        }
        if let Some((group, d)) = o.upstream {
            handle(
                o.stats.map(|s| &s.upstream_duration),
                &self.upstream_duration,
                &[group],
            )
            .observe(d.as_secs_f64());
        }
        if let Some(v) = o.cache {
            handle(
                o.stats.map(|s| &s.cache[v as usize]),
                &self.cache_requests,
                &[o.route, v.label()],
            )
            .inc();
        }
    }

    /// What the shared cache tier counts in.
    pub(crate) fn shared_cache(&self) -> crate::cache::shared::SharedMetrics {
        self.cache_shared.clone()
    }

    /// What a rate-limit store counts in.
    pub(crate) fn rate_limit_store(&self) -> crate::policy::rate_limit::StoreMetrics {
        crate::policy::rate_limit::StoreMetrics {
            redis_errors: self.rate_limit_redis_errors.clone(),
            sync: self.rate_limit_sync.clone(),
        }
    }

    /// Count one response head from an upstream group (each attempt's, retried ones too).
    pub(crate) fn upstream_response(
        &self,
        stats: Option<&RouteStats>,
        group: &str,
        status: http::StatusCode,
    ) {
        let cell = stats.filter(|_| status == http::StatusCode::OK);
        handle(
            cell.map(|s| &s.upstream_ok),
            &self.upstream_responses,
            &[group, status.as_str()],
        )
        .inc();
    }

    /// The Prometheus text exposition, with the gauges of the serving generation (targets,
    /// groups, certificates, cache) set afresh and the series of routes and groups it no
    /// longer has removed.
    pub(crate) fn render(&self, scrape: &Scrape<'_>) -> Vec<u8> {
        if let Some(cache) = scrape.cache {
            let (bytes, entries) = cache.usage();
            self.cache_size
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            self.cache_entries
                .set(i64::try_from(entries).unwrap_or(i64::MAX));
            let evicted = cache.evicted() as u64;
            let counted = self.cache_evictions.get();
            if evicted > counted {
                self.cache_evictions.inc_by(evicted - counted);
            }
        }
        self.target_healthy.reset();
        self.target_drained.reset();
        self.circuit_state.reset();
        for t in scrape.targets {
            self.target_healthy
                .with_label_values(&[t.group, t.target])
                .set(i64::from(t.healthy));
            self.target_drained
                .with_label_values(&[t.group, t.target])
                .set(i64::from(t.drained));
            if let Some(state) = t.circuit {
                self.circuit_state
                    .with_label_values(&[t.group, t.target])
                    .set(state);
            }
        }
        self.discovery_targets.reset();
        self.discovery_updated.reset();
        self.discovery_failing.reset();
        for g in scrape.groups {
            self.discovery_targets
                .with_label_values(&[g.group, g.provider])
                .set(i64::try_from(g.targets).unwrap_or(i64::MAX));
            if let Some(t) = g.updated {
                self.discovery_updated.with_label_values(&[g.group]).set(t);
            }
            self.discovery_failing
                .with_label_values(&[g.group])
                .set(i64::from(g.failing));
        }
        self.cert_expiry.reset();
        for (name, not_after) in scrape.certificates {
            self.cert_expiry.with_label_values(&[name]).set(*not_after);
        }
        let mut routes: HashSet<&str> = scrape.routes.iter().copied().collect();
        routes.insert(NO_ROUTE);
        self.requests.retain("route", &routes);
        self.duration.retain("route", &routes);
        prune(&self.retries, "route", &routes);
        prune(&self.retries_skipped, "route", &routes);
        prune(&self.auth_failures, "route", &routes);
        prune(&self.rate_limited, "route", &routes);
        prune(&self.shadow_refusals, "route", &routes);
        prune(&self.reasons, "route", &routes);
        self.cache_requests.retain("route", &routes);
        self.request_bytes.retain("route", &routes);
        self.response_bytes.retain("route", &routes);
        let groups: HashSet<&str> = scrape.groups.iter().map(|g| g.group).collect();
        self.upstream_duration.retain("upstream", &groups);
        self.upstream_responses.retain("upstream", &groups);

        let mut out = Vec::with_capacity(8 * 1024);
        let mut families = self.process.gather();
        families.extend(self.registry.gather());
        // Encoding into a Vec cannot fail for well-formed metric families.
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            log::error!("encoding metrics failed: {e}");
        }
        out
    }
}

/// What a scrape reports from the serving generation.
pub(crate) struct Scrape<'a> {
    pub targets: &'a [TargetSample<'a>],
    pub groups: &'a [GroupSample<'a>],
    pub cache: Option<&'a ResponseCache>,
    /// The names of its routes.
    pub routes: &'a [&'a str],
    /// Each served certificate's file and `notAfter`, in seconds since the epoch.
    pub certificates: &'a [(&'a str, i64)],
}

/// Remove the series of `vec` whose `label` is not in `live`: routes and groups a reload
/// took away stop being reported.
fn prune<B: MetricVecBuilder>(vec: &MetricVec<B>, label: &str, live: &HashSet<&str>) {
    let families = prometheus::core::Collector::collect(vec);
    for m in families.iter().flat_map(|f| f.get_metric()) {
        let labels: HashMap<&str, &str> = m
            .get_label()
            .iter()
            .map(|l| (l.name(), l.value()))
            .collect();
        if labels.get(label).is_some_and(|v| !live.contains(v)) {
            let _ = vec.remove(&labels);
        }
    }
}
