//! Upstream groups: their targets, target selection, active health checks and per-target
//! state (in-flight counts, the operator's drain).
//!
//! Health checking and the selector swap are Pingora's `LoadBalancer`; selection is
//! [`select::Selector`]. The gateway asks a group for a target with [`UpstreamGroup::select`]
//! and holds the returned [`InflightGuard`] for as long as the request uses that target.

pub(crate) mod breaker;
pub(crate) mod discovery;
pub(crate) mod health;
pub(crate) mod retry;
pub(crate) mod select;
pub(crate) mod target;

use crate::config::file::{
    BalancePolicy, CircuitBreakerSection, RetryBudgetSection, UpstreamSection, UpstreamTlsSection,
};
use crate::config::fingerprint::{carry, Carried, Fingerprint};
use crate::config::{bounds, FromConfig, Problem};
use breaker::{Breaker, BreakerSettings, Outcome, Permit};
use crossbeam_utils::CachePadded;
use discovery::dns::Resolver;
use discovery::etcd::{EtcdSource, EtcdWatch};
use discovery::file::{parse_targets_file, FILE_POLL};
use discovery::{Discovery, SourceStatus};
use health::HealthCheckSpec;
use pingora::lb::{Backend, Backends, HealthCheckService, HealthRegistry, LoadBalancer};
use pingora::services::background::BackgroundService;
use select::{Policy, Selector};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use target::TargetSpec;
use thread_local::ThreadLocal;

pub(crate) use crate::config::types::HashOn;

/// State shared by every request that uses one target, attached to its `Backend`.
#[derive(Debug)]
pub(crate) struct TargetState {
    pub addr: SocketAddr,
    /// `addr` as text, built once for logs and metric labels.
    pub label: Arc<str>,
    inflight: AtomicUsize,
    pub breaker: Option<Breaker>,
    /// SRV priority: the lowest tier with a usable target takes the traffic.
    priority: std::sync::atomic::AtomicU16,
    // NOTE(pingora-0.9): pingora-load-balancing/src/health_check.rs (`Health::default`): a new
    // target starts healthy ("TODO: allow to start with unhealthy"), so `new_targets =
    // "after_check"` is kept here, noted by the check (`health::Noting`) and required by
    // `select` and `health`.
    /// One of this target's health checks passed.
    checked: std::sync::atomic::AtomicBool,
    /// Drained by the operator (`POST /upstreams/NAME/targets/ADDR/drain`): selection skips
    /// it, requests already on it finish. Kept over a reload while the address stays in the
    /// group ([`UpstreamGroup::keep_drained`]); forgotten when it leaves.
    drained: std::sync::atomic::AtomicBool,
}

impl TargetState {
    pub(crate) fn new(addr: SocketAddr, breaker: Option<BreakerSettings>) -> Self {
        TargetState {
            addr,
            label: addr.to_string().into(),
            inflight: AtomicUsize::new(0),
            breaker: breaker.map(Breaker::new),
            priority: std::sync::atomic::AtomicU16::new(0),
            checked: std::sync::atomic::AtomicBool::new(false),
            drained: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the operator drained this target (one relaxed load: checked per candidate).
    pub(crate) fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Drain (`true`) or enable (`false`) this target; whether it was drained before.
    pub(crate) fn set_drained(&self, drained: bool) -> bool {
        self.drained.swap(drained, Ordering::Relaxed)
    }

    pub(crate) fn note_check_passed(&self) {
        self.checked.store(true, Ordering::Relaxed);
    }

    pub(crate) fn check_passed(&self) -> bool {
        self.checked.load(Ordering::Relaxed)
    }

    pub(crate) fn priority(&self) -> u16 {
        self.priority.load(Ordering::Relaxed)
    }

    pub(crate) fn set_priority(&self, p: u16) {
        self.priority.store(p, Ordering::Relaxed);
    }

    pub(crate) fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }
}

/// One request's use of a target: counts it in flight until dropped, and carries the
/// breaker permit whose outcome the gateway reports once.
#[derive(Debug)]
pub(crate) struct InflightGuard {
    state: Arc<TargetState>,
    permit: Option<Permit>,
}

impl InflightGuard {
    pub(crate) fn new(state: Arc<TargetState>, permit: Option<Permit>) -> Self {
        state.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard { state, permit }
    }

    pub(crate) fn target(&self) -> &Arc<TargetState> {
        &self.state
    }

    /// Report how the attempt went to the target's breaker (first report wins).
    pub(crate) fn record(&mut self, outcome: Outcome) {
        if let (Some(permit), Some(b)) = (self.permit.take(), &self.state.breaker) {
            b.record(outcome, permit);
        }
    }

    /// Report an upstream response status: 5xx is a failure where the breaker counts it.
    pub(crate) fn record_status(&mut self, status: u16) {
        let failed = status >= 500 && self.state.breaker.as_ref().is_some_and(|b| b.counts_5xx());
        self.record(if failed {
            Outcome::Failure
        } else {
            Outcome::Success
        });
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.state.inflight.fetch_sub(1, Ordering::Relaxed);
        if let (Some(permit), Some(b)) = (self.permit.take(), &self.state.breaker) {
            b.release(permit);
        }
    }
}

/// Caps retries to a share of requests, so that retries cannot multiply load during an
/// outage: per one-second window, `max(min_per_second, ratio * requests)`.
///
/// Every proxied request is counted, so requests are counted per worker thread, each on a
/// cache line of its own written with a plain store (as `observe::shard` does for metrics),
/// and added up only when a retry asks. Retries, rare, share one counter.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    ratio: f64,
    min_per_second: u64,
    epoch: Instant,
    /// Per thread: the second of its window (high 32 bits) and its requests in it (low 32).
    requests: ThreadLocal<CachePadded<AtomicU64>>,
    /// Second of the retries' window, and the retries taken in it.
    window: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    pub(crate) fn new(ratio: f64, min_per_second: u64) -> Self {
        RetryBudget {
            ratio,
            min_per_second,
            epoch: Instant::now(),
            requests: ThreadLocal::new(),
            window: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    fn second(&self) -> u64 {
        self.epoch.elapsed().as_secs() & u64::from(u32::MAX)
    }

    pub(crate) fn note_request(&self) {
        let now = self.second();
        let mine = self.requests.get_or_default();
        // Only this thread writes its word: a load and a store, no locked instruction.
        let packed = mine.load(Ordering::Relaxed);
        let next = if packed >> 32 == now {
            packed + u64::from((packed as u32) < u32::MAX)
        } else {
            (now << 32) | 1
        };
        mine.store(next, Ordering::Relaxed);
    }

    /// Requests counted in the current second, over every thread.
    fn requests_now(&self, now: u64) -> u64 {
        self.requests
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .filter(|packed| packed >> 32 == now)
            .map(|packed| packed & u64::from(u32::MAX))
            .sum()
    }

    /// Take one retry from the budget, if any is left.
    pub(crate) fn try_retry(&self) -> bool {
        let now = self.second();
        let w = self.window.load(Ordering::Acquire);
        if now != w
            && self
                .window
                .compare_exchange(w, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.retries.store(0, Ordering::Release);
        }
        let allowed = ((self.requests_now(now) as f64) * self.ratio) as u64;
        let allowed = allowed.max(self.min_per_second);
        let taken = self.retries.fetch_add(1, Ordering::AcqRel);
        if taken >= allowed {
            self.retries.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }
}

/// How a generation resolves names: the `[resolver]` hosts file, and the DNS resolver for
/// SRV names (`None` when `[resolver]` has problems).
pub(crate) struct Names {
    pub hosts_file: Option<std::path::PathBuf>,
    pub resolver: Option<Arc<Resolver>>,
}

/// The upstream groups of a generation, by name.
pub(crate) type Groups = crate::names::Named<UpstreamGroup>;

/// A compiled upstream group.
pub(crate) struct UpstreamGroup {
    pub name: Arc<str>,
    pub policy: Policy,
    pub hash_on: Option<HashOn>,
    pub lb: Arc<LoadBalancer<Selector>>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Whether targets are re-resolved from DNS names.
    pub resolves_names: bool,
    /// Targets come in SRV priority tiers.
    tiered: bool,
    /// Answered when no target is available.
    pub fallback: Option<crate::error::DirectResponse>,
    pub retry_budget: RetryBudget,
    /// TLS to the targets, if any.
    pub tls: Option<UpstreamTls>,
    /// HTTP/2 to the targets.
    pub h2: bool,
    /// Steps a selection may take before giving up.
    max_steps: usize,
    /// Health of every target, shared with the next generation's group of the same name
    /// when its health check is unchanged, so a reload keeps what the checks learned.
    registry: Arc<HealthRegistry>,
    /// The health check and TLS sections this registry's checks were built from.
    /// What its health check was built from (the check and the TLS section with its files).
    health_fingerprint: Fingerprint,
    health: Option<HealthCheckSpec>,
    breaker: Option<BreakerSettings>,
    /// Where the targets come from and how the last update went.
    source: Arc<std::sync::Mutex<SourceStatus>>,
    /// The etcd prefix the targets come from, watched by the generation's background work.
    etcd: Option<Arc<EtcdSource>>,
}

/// A group carries its health registry over a reload by this fingerprint.
impl Carried for UpstreamGroup {
    fn fingerprint(&self) -> Fingerprint {
        self.health_fingerprint
    }
}

/// Compiled `[upstreams.NAME.tls]`.
#[derive(Clone)]
pub(crate) struct UpstreamTls {
    pub sni: String,
    pub ca: Option<Arc<Box<[openssl::x509::X509]>>>,
    pub verify: bool,
    pub client: Option<Arc<pingora::utils::tls::CertKey>>,
}

impl FromConfig for UpstreamTls {
    type Section = UpstreamTlsSection;

    /// Load `[upstreams.NAME.tls]`: the CA bundle and the client certificate.
    fn from_config(
        at: &str,
        t: &UpstreamTlsSection,
        _cx: &(),
        problems: &mut Vec<Problem>,
    ) -> Option<UpstreamTls> {
        let UpstreamTlsSection {
            sni,
            ca_file,
            verify,
            client_cert,
            client_key,
        } = t;
        let before = problems.len();
        let ca = ca_file.as_ref().and_then(|path| {
            let loaded = std::fs::read(path)
                .map_err(|e| format!("cannot read {path}: {e}"))
                .and_then(|pem| {
                    openssl::x509::X509::stack_from_pem(&pem)
                        .ok()
                        .filter(|c| !c.is_empty())
                        .ok_or_else(|| format!("{path} is not a PEM certificate bundle"))
                });
            match loaded {
                Ok(certs) => Some(Arc::new(certs.into_boxed_slice())),
                Err(e) => {
                    problems.push(Problem::new(format!("{at}.ca_file"), e));
                    None
                }
            }
        });
        let client = match (client_cert, client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => match crate::tls::load_certificate(cert, key) {
                Ok(loaded) => Some(Arc::new(loaded.into_cert_key())),
                Err((key_side, msg)) => {
                    let field = if key_side {
                        "client_key"
                    } else {
                        "client_cert"
                    };
                    problems.push(Problem::new(format!("{at}.{field}"), msg));
                    None
                }
            },
            _ => {
                problems.push(Problem::new(
                    at,
                    "set both client_cert and client_key, or neither",
                ));
                None
            }
        };
        (problems.len() == before).then(|| UpstreamTls {
            sni: sni.clone().unwrap_or_default(),
            ca,
            verify: *verify,
            client,
        })
    }
}

impl UpstreamTls {
    /// Apply to a peer about to be connected.
    pub(crate) fn configure(&self, peer: &mut pingora::upstreams::peer::HttpPeer, h2: bool) {
        peer.options.verify_cert = self.verify;
        peer.options.verify_hostname = self.verify;
        peer.options.ca = self.ca.clone();
        peer.client_cert_key = self.client.clone();
        if h2 {
            peer.options.alpn = pingora::protocols::ALPN::H2H1;
        }
    }
}

/// Health of one target as reported by `/health` and the metrics.
#[derive(Debug, Clone)]
pub(crate) struct TargetHealth {
    pub target: Arc<TargetState>,
    pub weight: usize,
    pub healthy: bool,
    pub circuit: Option<breaker::State>,
    /// Drained by the operator: takes no new request.
    pub drained: bool,
}

/// What a group is built against: its name, how the generation resolves names, and the
/// same-named group of the running generation.
pub(crate) struct GroupContext<'a> {
    pub name: &'a str,
    pub names: &'a Names,
    pub previous: Option<&'a UpstreamGroup>,
}

impl FromConfig<GroupContext<'_>> for UpstreamGroup {
    type Section = UpstreamSection;

    /// Build `[upstreams.NAME]` in one pass, collecting every problem under `upstreams.NAME`.
    /// The context's `previous` is the same-named group of the running generation: targets
    /// that stay keep their in-flight counts and breakers (when the breaker settings are
    /// unchanged) and their health (when the health check is unchanged).
    fn from_config(
        at: &str,
        section: &UpstreamSection,
        cx: &GroupContext<'_>,
        problems: &mut Vec<Problem>,
    ) -> Option<UpstreamGroup> {
        let GroupContext {
            name,
            names,
            previous,
        } = *cx;
        let UpstreamSection {
            policy,
            hash_on,
            targets,
            targets_file,
            srv,
            etcd,
            health_check,
            connect_timeout,
            read_timeout,
            circuit_breaker,
            fallback,
            retry_budget,
            dns_refresh,
            tls,
            h2,
        } = section;
        let before = problems.len();
        crate::names::check_name(at, "upstream", name, problems);
        let sources = [
            !targets.is_empty(),
            targets_file.is_some(),
            srv.is_some(),
            etcd.is_some(),
        ];
        match sources.iter().filter(|s| **s).count() {
            0 => problems.push(Problem::new(
                format!("{at}.targets"),
                "must list at least one target (or name a targets_file, an srv name or an [etcd] prefix)",
            )),
            1 => {}
            _ => problems.push(Problem::new(
                at,
                "set one of targets, targets_file, srv and [etcd], not several",
            )),
        }
        if let Some(e) = etcd {
            if e.endpoints.is_empty() {
                problems.push(Problem::new(
                    format!("{at}.etcd.endpoints"),
                    "must list at least one endpoint, e.g. \"http://127.0.0.1:2379\"",
                ));
            }
            for (i, ep) in e.endpoints.iter().enumerate() {
                if !(ep.starts_with("http://") || ep.starts_with("https://"))
                    || ep.parse::<http::Uri>().is_err()
                {
                    problems.push(Problem::new(
                        format!("{at}.etcd.endpoints[{i}]"),
                        format!("{ep:?} is not an http:// or https:// URL"),
                    ));
                }
            }
            if e.prefix.is_empty() {
                problems.push(Problem::new(
                    format!("{at}.etcd.prefix"),
                    "must not be empty (it would take every key in etcd)",
                ));
            }
        }
        if let Some(name) = srv {
            let host = name.trim_end_matches('.');
            if TargetSpec::parse(&format!("{}:1", host.replace('_', "u")), 1).is_err() {
                problems.push(Problem::new(
                    format!("{at}.srv"),
                    format!(
                        "{name:?} is not a DNS name, e.g. \"_http._tcp.orders.service.consul\""
                    ),
                ));
            }
        }
        let from_file = match (targets.is_empty(), targets_file) {
            (_, None) | (false, Some(_)) => None,
            (true, Some(path)) => {
                let path = std::path::PathBuf::from(path);
                match std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|text| parse_targets_file(&path, &text))
                {
                    Ok(specs) => Some((path, specs)),
                    Err(e) => {
                        problems.push(Problem::new(
                            format!("{at}.targets_file"),
                            format!("{}: {e}", path.display()),
                        ));
                        None
                    }
                }
            }
        };
        let mut seen = HashSet::new();
        let mut specs = Vec::with_capacity(targets.len());
        for (i, t) in targets.iter().enumerate() {
            let path = format!("{at}.targets[{i}]");
            bounds::TARGET_WEIGHT.check(&format!("{path}.weight"), t.weight, problems);
            match TargetSpec::parse(&t.address, t.weight) {
                Ok(spec) => {
                    if !seen.insert((spec.host.clone(), spec.port)) {
                        problems.push(Problem::new(
                            format!("{path}.address"),
                            format!("duplicate target {}", t.address),
                        ));
                    }
                    specs.push(spec);
                }
                Err(e) => problems.push(Problem::new(format!("{path}.address"), e)),
            }
        }
        let policy = match policy {
            BalancePolicy::RoundRobin => Policy::RoundRobin,
            BalancePolicy::LeastConnections => Policy::LeastConnections,
            BalancePolicy::ConsistentHash => Policy::ConsistentHash,
        };
        match (policy, hash_on) {
            (Policy::ConsistentHash, None) => problems.push(Problem::new(
                format!("{at}.hash_on"),
                "consistent_hash needs hash_on: \"header:NAME\", \"cookie:NAME\" or \"client_ip\"",
            )),
            (Policy::ConsistentHash, Some(_)) | (_, None) => {}
            (_, Some(_)) => problems.push(Problem::new(
                format!("{at}.hash_on"),
                "only used with policy = \"consistent_hash\"",
            )),
        }
        bounds::CONNECT_TIMEOUT.check(&format!("{at}.connect_timeout"), *connect_timeout, problems);
        bounds::READ_TIMEOUT.check(&format!("{at}.read_timeout"), *read_timeout, problems);
        bounds::DNS_REFRESH.check(&format!("{at}.dns_refresh"), *dns_refresh, problems);
        let upstream_tls = tls
            .as_ref()
            .and_then(|t| UpstreamTls::from_config(&format!("{at}.tls"), t, &(), problems));
        let health = health_check.as_ref().and_then(|hc| {
            HealthCheckSpec::from_config(&format!("{at}.health_check"), hc, &(), problems)
        });
        let breaker = circuit_breaker.as_ref().map(|b| {
            let CircuitBreakerSection {
                consecutive_failures,
                cooldown,
                on_5xx,
            } = b;
            let cb = format!("{at}.circuit_breaker");
            bounds::BREAKER_CONSECUTIVE_FAILURES.check(
                &format!("{cb}.consecutive_failures"),
                *consecutive_failures,
                problems,
            );
            bounds::BREAKER_COOLDOWN.check(&format!("{cb}.cooldown"), *cooldown, problems);
            BreakerSettings {
                failures: *consecutive_failures,
                cooldown: cooldown.0,
                on_5xx: *on_5xx,
            }
        });
        let fallback = fallback.as_ref().and_then(|f| {
            crate::error::DirectResponse::from_config(&format!("{at}.fallback"), f, &(), problems)
        });
        let RetryBudgetSection {
            ratio,
            min_per_second,
        } = retry_budget;
        bounds::RETRY_BUDGET_RATIO.check(&format!("{at}.retry_budget.ratio"), *ratio, problems);
        bounds::RETRY_BUDGET_MIN_PER_SECOND.check(
            &format!("{at}.retry_budget.min_per_second"),
            *min_per_second,
            problems,
        );
        if problems.len() > before {
            return None;
        }

        if health
            .as_ref()
            .is_some_and(|h| matches!(h.kind, health::Kind::Grpc { .. }))
            && !*h2
        {
            problems.push(Problem::new(
                format!("{at}.health_check.kind"),
                "\"grpc\" checks speak HTTP/2: set h2 = true on the group",
            ));
            return None;
        }
        let Names {
            hosts_file,
            resolver,
        } = names;
        let hosts_file = hosts_file.clone();
        let mut discovery =
            Discovery::new(specs, hosts_file, breaker, dns_refresh.0, resolver.clone());
        if let Some((path, first)) = from_file {
            discovery = discovery.watching(path, first);
        }
        if let Some(e) = etcd.as_ref().filter(|_| problems.len() == before) {
            match discovery.watching_etcd(e.endpoints.clone(), e.prefix.clone()) {
                Ok(d) => discovery = d,
                Err(why) => {
                    problems.push(Problem::new(format!("{at}.etcd"), why));
                    return None;
                }
            }
        }
        let etcd_source = discovery.etcd();
        let mut srv_poll = None;
        if let (Some(name), Some(resolver)) = (srv, &resolver) {
            srv_poll = Some(
                resolver
                    .min_ttl
                    .clamp(Duration::from_millis(250), Duration::from_secs(5)),
            );
            discovery =
                discovery.asking_srv(name.trim_end_matches('.').to_string(), resolver.clone());
        }
        let source = discovery.status.clone();
        let watches_file = targets_file.is_some() || etcd.is_some();
        if let Some(prev) = previous.filter(|p| p.breaker == breaker) {
            discovery.keep_states(prev.target_states());
        }
        let resolves_names = discovery.is_dynamic();
        // Health is shared with the previous generation when nothing that decides it changed.
        let health_fingerprint = Fingerprint::of(
            &(health_check, tls),
            tls.iter().flat_map(UpstreamTlsSection::files),
        );
        let reused = carry(previous, health_fingerprint).map(|p| p.registry.clone());
        let registry = match reused {
            Some(r) => r,
            None => {
                let r = Arc::new(HealthRegistry::new());
                if let Some(spec) = &health {
                    match spec.build(name, upstream_tls.as_ref()) {
                        Ok(hc) => r.set_health_check(hc),
                        Err(e) => {
                            problems.push(Problem::new(
                                format!("{at}.health_check"),
                                format!("cannot build the health check: {e}"),
                            ));
                            return None;
                        }
                    }
                }
                r
            }
        };
        let view = Backends::new_with_health_registry(Box::new(discovery), registry.clone());
        let mut lb = LoadBalancer::<Selector>::from_backends_with_config(view, Some(policy));
        // The first resolution; a throwaway runtime drives it once.
        // NOTE(pingora-0.9): pingora-load-balancing/src/lib.rs (`Backends::new_inner`,
        // `LoadBalancer::update`): a new load balancer has no backend until `update()` runs
        // discovery, which its background service does only once the generation serves; run
        // here, the group has its targets (or its problem) when it is built. Hence the
        // resolver built per refresh (`discovery::dns::Resolver`): none outlives this runtime.
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(lb.update()).map_err(|e| e.to_string()));
        if let Err(e) = first {
            problems.push(Problem::new(at, format!("building targets: {e}")));
            return None;
        }
        if let Some(every) = srv_poll {
            // Each check asks DNS only when the last answer's TTL ran out.
            lb.update_frequency = Some(every);
        } else if watches_file {
            lb.update_frequency = Some(FILE_POLL);
        } else if resolves_names {
            // Each check asks again only the names whose answer expired (TTL, at most
            // `dns_refresh`).
            lb.update_frequency = Some(dns_refresh.0.min(Duration::from_secs(1)));
        }
        let mut group = UpstreamGroup {
            name: name.into(),
            policy,
            hash_on: hash_on.clone(),
            lb: Arc::new(lb),
            connect_timeout: connect_timeout.0,
            read_timeout: read_timeout.0,
            resolves_names,
            tiered: srv.is_some(),
            fallback,
            retry_budget: RetryBudget::new(*ratio, *min_per_second),
            tls: upstream_tls,
            h2: *h2,
            max_steps: 0,
            registry,
            health_fingerprint,
            health,
            breaker,
            source,
            etcd: etcd_source,
        };
        group.max_steps = group.steps_now();
        if let Some(prev) = previous {
            group.keep_drained(prev);
        }
        Some(group)
    }
}

impl UpstreamGroup {
    /// The selection policy, targets and checks, in words (`tollgate explain`).
    pub(crate) fn describe(&self) -> serde_json::Value {
        let policy = match self.policy {
            Policy::RoundRobin => "round_robin".to_string(),
            Policy::LeastConnections => "least_connections".to_string(),
            Policy::ConsistentHash => match &self.hash_on {
                Some(HashOn::Header(h)) => format!("consistent_hash on header {h}"),
                Some(HashOn::Cookie(c)) => format!("consistent_hash on cookie {c}"),
                Some(HashOn::ClientIp) | None => "consistent_hash on client_ip".to_string(),
            },
        };
        let targets: Vec<serde_json::Value> = self
            .lb
            .backends()
            .get_backend()
            .iter()
            .map(|b| serde_json::json!({"address": b.addr.to_string(), "weight": b.weight}))
            .collect();
        let health = self.health.as_ref().map(|h| {
            let what = match &h.kind {
                health::Kind::Tcp => "tcp connect".to_string(),
                health::Kind::Grpc { service, .. } => {
                    format!("grpc.health.v1.Health/Check {service:?} expecting SERVING")
                }
                health::Kind::Http {
                    path,
                    expected_status,
                    ..
                } => format!("GET {path} expecting {expected_status}"),
            };
            format!(
                "{what} every {}, out after {} failures, back after {} successes",
                humantime::format_duration(h.interval),
                h.fall,
                h.rise
            )
        });
        let breaker = self.breaker.as_ref().map(|b| {
            format!(
                "open after {} consecutive failures{}, for {}",
                b.failures,
                if b.on_5xx { " (5xx count)" } else { "" },
                humantime::format_duration(b.cooldown)
            )
        });
        serde_json::json!({
            "name": &*self.name,
            "policy": policy,
            "targets": targets,
            "re_resolved_from_dns": self.resolves_names,
            "tls": self.tls.as_ref().map(|t| t.sni.clone()),
            "h2": self.h2,
            "health_check": health,
            "circuit_breaker": breaker,
        })
    }

    /// Where the targets come from and how the last update went.
    pub(crate) fn source(&self) -> SourceStatus {
        self.source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// [`Self::source`] for `/health`.
    pub(crate) fn discovery(&self) -> serde_json::Value {
        let s = self.source();
        serde_json::json!({
            "provider": s.provider,
            "source": s.source,
            "updated_at": s.updated.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            "targets": s.targets,
            "error": s.error,
        })
    }

    /// Whether active health checks run (shown in `/health`).
    pub(crate) fn health_checked(&self) -> bool {
        self.health.is_some()
    }

    /// The periodic work this group needs while its generation serves: health checks and
    /// DNS re-resolution.
    pub(crate) fn background(&self) -> Vec<(String, Arc<dyn BackgroundService + Send + Sync>)> {
        let mut work: Vec<(String, Arc<dyn BackgroundService + Send + Sync>)> = Vec::new();
        if let Some(spec) = &self.health {
            let mut hc = HealthCheckService::new(self.registry.clone());
            hc.health_check_frequency = Some(spec.interval);
            hc.parallel_health_check = true;
            work.push((format!("health checks of {}", self.name), Arc::new(hc)));
        }
        if self.resolves_names {
            work.push((format!("targets of {}", self.name), self.lb.clone()));
        }
        if let Some(source) = &self.etcd {
            work.push((
                format!("etcd watch of {}", self.name),
                Arc::new(EtcdWatch(source.clone())),
            ));
        }
        work
    }

    /// The state of every current target, by address.
    fn target_states(&self) -> Vec<Arc<TargetState>> {
        self.lb
            .backends()
            .get_backend()
            .iter()
            .filter_map(state_of)
            .cloned()
            .collect()
    }

    /// The state of the current target at `addr`, if the group has one now.
    pub(crate) fn target(&self, addr: SocketAddr) -> Option<Arc<TargetState>> {
        self.lb
            .backends()
            .get_backend()
            .iter()
            .filter_map(state_of)
            .find(|s| s.addr == addr)
            .cloned()
    }

    /// The addresses of the current targets, as `/health` lists them.
    pub(crate) fn target_labels(&self) -> Vec<Arc<str>> {
        self.target_states()
            .into_iter()
            .map(|s| s.label.clone())
            .collect()
    }

    /// Drain the targets of this (new) group that `previous` had drained: the operator's
    /// choice outlives a reload for the addresses that stay. A no-op for states the groups
    /// share (`Discovery::keep_states`), needed when the breaker settings changed.
    fn keep_drained(&self, previous: &UpstreamGroup) {
        let drained: Vec<SocketAddr> = previous
            .target_states()
            .into_iter()
            .filter(|s| s.is_drained())
            .map(|s| s.addr)
            .collect();
        if drained.is_empty() {
            return;
        }
        for s in self.target_states() {
            if drained.contains(&s.addr) {
                s.set_drained(true);
            }
        }
    }

    /// A peer for one of this group's targets, with its TLS and protocol settings.
    pub(crate) fn peer(&self, addr: SocketAddr) -> pingora::upstreams::peer::HttpPeer {
        let sni = self
            .tls
            .as_ref()
            .map_or_else(String::new, |t| t.sni.clone());
        let mut peer = pingora::upstreams::peer::HttpPeer::new(addr, self.tls.is_some(), sni);
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        match &self.tls {
            Some(tls) => tls.configure(&mut peer, self.h2),
            None if self.h2 => peer.options.set_http_version(2, 2),
            None => {}
        }
        peer
    }

    /// Pick a healthy target, not drained, not in `exclude`, whose breaker admits a request.
    /// `key` feeds consistent hashing.
    pub(crate) fn select(&self, key: &[u8], exclude: &[SocketAddr]) -> Option<InflightGuard> {
        let mut lost: Vec<SocketAddr> = Vec::new();
        let steps = if self.resolves_names {
            self.steps_now()
        } else {
            self.max_steps
        };
        loop {
            let check_first = self.health.as_ref().is_some_and(|h| h.check_first);
            let usable = |s: &TargetState| {
                !s.is_drained()
                    && (!check_first || s.check_passed())
                    && !exclude.contains(&s.addr)
                    && !lost.contains(&s.addr)
                    && s.breaker.as_ref().is_none_or(Breaker::admits)
            };
            // SRV priorities: only the lowest tier that has a usable target.
            let tier = self.tiered.then(|| self.lowest_tier(&usable)).flatten();
            // The target's state, not a clone of its `Backend` (which copies the map the
            // state is kept in).
            let state = self
                .lb
                .select_map(
                    key,
                    steps,
                    |b, healthy| {
                        healthy
                            && state_of(b).is_some_and(|s| {
                                usable(s) && tier.is_none_or(|t| s.priority() == t)
                            })
                    },
                    |b| state_of(b).cloned(),
                )
                .flatten()?;
            let permit = match &state.breaker {
                None => None,
                Some(b) => match b.try_acquire() {
                    Some(permit) => Some(permit),
                    // Another request took the half-open probe first.
                    None => {
                        lost.push(state.addr);
                        continue;
                    }
                },
            };
            return Some(InflightGuard::new(state, permit));
        }
    }

    /// The lowest priority among healthy targets that `usable` admits.
    fn lowest_tier(&self, usable: &dyn Fn(&TargetState) -> bool) -> Option<u16> {
        let backends = self.lb.backends();
        backends
            .get_backend()
            .iter()
            .filter(|b| backends.ready(b))
            .filter_map(state_of)
            .filter(|s| usable(s))
            .map(|s| s.priority())
            .min()
    }

    /// Selection steps for the current target set (DNS answers change it): a full cycle of
    /// the weighted sequence sees every target; walking the Ketama ring revisits targets.
    fn steps_now(&self) -> usize {
        let backends = self.lb.backends().get_backend();
        match self.policy {
            Policy::RoundRobin => backends.iter().map(|b| b.weight.max(1)).sum::<usize>() + 1,
            Policy::LeastConnections => backends.len() + 1,
            Policy::ConsistentHash => backends.len() * 160 + 1,
        }
    }

    /// Every target with its current health.
    pub(crate) fn health(&self) -> Vec<TargetHealth> {
        let backends = self.lb.backends();
        backends
            .get_backend()
            .iter()
            .filter_map(|b| {
                let check_first = self.health.as_ref().is_some_and(|h| h.check_first);
                Some(TargetHealth {
                    target: state_of(b)?.clone(),
                    weight: b.weight,
                    healthy: backends.ready(b) && (!check_first || state_of(b)?.check_passed()),
                    circuit: state_of(b)?.breaker.as_ref().map(Breaker::state),
                    drained: state_of(b)?.is_drained(),
                })
            })
            .collect()
    }

    /// The bytes a consistent-hash group hashes for a request.
    pub(crate) fn hash_key<'a>(
        &self,
        req: &'a http::request::Parts,
        client_ip: Option<IpAddr>,
        buf: &'a mut [u8; 16],
    ) -> &'a [u8] {
        let from_ip = |buf: &'a mut [u8; 16]| -> &'a [u8] {
            match client_ip {
                Some(IpAddr::V4(v4)) => {
                    buf[..4].copy_from_slice(&v4.octets());
                    &buf[..4]
                }
                Some(IpAddr::V6(v6)) => {
                    *buf = v6.octets();
                    &buf[..]
                }
                None => &[],
            }
        };
        match &self.hash_on {
            None => &[],
            Some(HashOn::ClientIp) => from_ip(buf),
            Some(HashOn::Header(name)) => match req.headers.get(name) {
                Some(v) => v.as_bytes(),
                None => from_ip(buf),
            },
            Some(HashOn::Cookie(name)) => match cookie_value(&req.headers, name) {
                Some(v) => v,
                None => from_ip(buf),
            },
        }
    }
}

fn state_of(b: &Backend) -> Option<&Arc<TargetState>> {
    b.ext.get::<Arc<TargetState>>()
}

/// Build the `Backend` for a target whose state already exists (kept across re-resolution).
pub(crate) fn backend_with_state(
    addr: SocketAddr,
    weight: usize,
    state: Arc<TargetState>,
) -> Backend {
    let mut b = Backend {
        addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
        weight,
        ext: Default::default(),
    };
    b.ext.insert(state);
    b
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii_start();
            let (k, v) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
            (k == name.as_bytes()).then(|| &v[1..])
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Requests are counted per thread; a retry's allowance adds up every thread's count
    /// of the current second.
    #[test]
    fn retry_budget_counts_requests_from_every_thread() {
        for _ in 0..3 {
            let b = RetryBudget::new(0.5, 0);
            let start = b.second();
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| (0..10).for_each(|_| b.note_request()));
                }
            });
            let granted = (0..30).filter(|_| b.try_retry()).count();
            if b.second() == start {
                // 40 requests at 0.5: 20 retries, then none.
                assert_eq!(granted, 20);
                return;
            }
            // A second boundary passed mid-test: its window started afresh. Again.
        }
        panic!("three second boundaries in three tries");
    }

    #[test]
    fn cookie_lookup() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            "a=1; session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_value(&h, "session"), Some(&b"abc"[..]));
        assert_eq!(cookie_value(&h, "sess"), None);
    }
    /// A group `app` of loopback targets (never connected to: selection only).
    fn group(toml_text: &str, previous: Option<&UpstreamGroup>) -> UpstreamGroup {
        let section: UpstreamSection = toml::from_str(toml_text).unwrap();
        let names = Names {
            hosts_file: None,
            resolver: None,
        };
        let cx = GroupContext {
            name: "app",
            names: &names,
            previous,
        };
        let mut problems = Vec::new();
        UpstreamGroup::from_config("upstreams.app", &section, &cx, &mut problems)
            .unwrap_or_else(|| panic!("{problems:?}"))
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    const THREE_TARGETS: &str = r#"targets = [
        { address = "127.0.0.1:1001", weight = 2 },
        { address = "127.0.0.1:1002" },
        { address = "127.0.0.1:1003" },
    ]"#;

    fn every_policy() -> [(&'static str, String); 3] {
        [
            ("round_robin", THREE_TARGETS.to_string()),
            (
                "least_connections",
                format!("policy = \"least_connections\"\n{THREE_TARGETS}"),
            ),
            (
                "consistent_hash",
                format!("policy = \"consistent_hash\"\nhash_on = \"client_ip\"\n{THREE_TARGETS}"),
            ),
        ]
    }

    /// The target `key` is sent to now (the guard dropped at once).
    fn pick(g: &UpstreamGroup, key: &[u8]) -> Option<SocketAddr> {
        g.select(key, &[]).map(|guard| guard.target().addr)
    }

    #[test]
    fn a_drained_target_is_skipped_by_every_policy_and_the_others_share_its_load() {
        for (policy, text) in every_policy() {
            let g = group(&text, None);
            let keys: Vec<[u8; 4]> = (0u32..300).map(u32::to_be_bytes).collect();
            let before: Vec<_> = keys.iter().map(|k| pick(&g, k).unwrap()).collect();
            assert!(before.contains(&addr(1001)), "{policy}: 1001 serves before");
            assert!(!g.target(addr(1001)).unwrap().set_drained(true));
            let mut counts = HashMap::new();
            for (k, was) in keys.iter().zip(&before) {
                let now = pick(&g, k).unwrap();
                assert_ne!(now, addr(1001), "{policy}: a drained target was selected");
                if policy == "consistent_hash" && *was != addr(1001) {
                    assert_eq!(now, *was, "{policy}: a key of a target still in moved");
                }
                *counts.entry(now).or_insert(0) += 1;
            }
            for other in [1002, 1003] {
                let n = counts.get(&addr(other)).copied().unwrap_or(0);
                assert!(n >= 60, "{policy}: {other} took {n} of 300: {counts:?}");
            }
        }
    }

    #[test]
    fn an_enabled_target_is_selected_again() {
        for (policy, text) in every_policy() {
            let g = group(&text, None);
            let t = g.target(addr(1001)).unwrap();
            t.set_drained(true);
            assert!(t.set_drained(false), "{policy}: it was drained");
            let keys: Vec<[u8; 4]> = (0u32..300).map(u32::to_be_bytes).collect();
            assert!(
                keys.iter().any(|k| pick(&g, k) == Some(addr(1001))),
                "{policy}: 1001 takes requests again"
            );
        }
    }

    #[test]
    fn with_every_target_drained_nothing_is_selected() {
        for (policy, text) in every_policy() {
            let g = group(&text, None);
            for port in [1001, 1002, 1003] {
                g.target(addr(port)).unwrap().set_drained(true);
            }
            assert!(pick(&g, b"k").is_none(), "{policy}");
            assert!(
                g.health().iter().all(|t| t.drained && t.healthy),
                "{policy}"
            );
            g.target(addr(1003)).unwrap().set_drained(false);
            assert_eq!(pick(&g, b"k"), Some(addr(1003)), "{policy}");
        }
    }

    #[test]
    fn a_rebuilt_group_keeps_the_drain_of_targets_that_stay_and_forgets_those_that_left() {
        let two = r#"targets = [{ address = "127.0.0.1:1001" }, { address = "127.0.0.1:1002" }]"#;
        let first = group(two, None);
        first.target(addr(1001)).unwrap().set_drained(true);
        let drained = |g: &UpstreamGroup, port| g.target(addr(port)).unwrap().is_drained();
        // Same breaker settings: the states themselves are carried.
        let same = group(two, Some(&first));
        assert!(drained(&same, 1001) && !drained(&same, 1002));
        // Another breaker: new states, the drain copied onto them.
        let with_breaker = format!("{two}\n[circuit_breaker]\nconsecutive_failures = 3");
        let rebuilt = group(&with_breaker, Some(&same));
        assert!(!Arc::ptr_eq(
            &rebuilt.target(addr(1001)).unwrap(),
            &same.target(addr(1001)).unwrap()
        ));
        assert!(drained(&rebuilt, 1001) && !drained(&rebuilt, 1002));
        // 1001 leaves the group, then comes back: enabled.
        let without = group(
            r#"targets = [{ address = "127.0.0.1:1002" }]"#,
            Some(&rebuilt),
        );
        assert!(without.target(addr(1001)).is_none());
        let back = group(two, Some(&without));
        assert!(!drained(&back, 1001));
    }
}
