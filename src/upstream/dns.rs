//! Target discovery: IP targets as written, and `host:port` targets resolved through an
//! optional hosts file (checked first, like `/etc/hosts`) and then the system resolver,
//! re-resolved on an interval by the group's `LoadBalancer` background service. The target
//! list itself may come from a watched file (`targets_file`, JSON or TOML, as consul-template,
//! confd or a mounted ConfigMap write it): re-read when it changes, checked every
//! [`FILE_POLL`]; a file that does not parse keeps the last good list, and says so.
//!
//! Per-target state (in-flight count, breaker) is kept per address across re-resolutions, so
//! a target that stays in the answer keeps its counters. A name that fails to resolve keeps
//! its last good addresses rather than emptying the group on a transient DNS failure.

use super::breaker::BreakerSettings;
use super::TargetState;
use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::Backend;
use pingora::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest wait for one name's resolution.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a targets file is checked for a change (a stat; read only when it changed).
pub(crate) const FILE_POLL: Duration = Duration::from_millis(250);

/// A target as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub host: String,
    pub port: u16,
    pub weight: usize,
}

impl TargetSpec {
    /// Parse `IP:PORT`, `[IPv6]:PORT` or `NAME:PORT`.
    pub fn parse(address: &str, weight: usize) -> Result<Self, String> {
        if let Ok(sa) = address.parse::<SocketAddr>() {
            return Ok(TargetSpec {
                host: sa.ip().to_string(),
                port: sa.port(),
                weight,
            });
        }
        let bad = || {
            format!("invalid target address {address:?}; write IP:PORT or NAME:PORT, e.g. \"10.0.0.5:8080\" or \"users.internal:8080\"")
        };
        let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid || port == 0 {
            return Err(bad());
        }
        Ok(TargetSpec {
            host: host.to_ascii_lowercase(),
            port,
            weight,
        })
    }

    pub fn is_name(&self) -> bool {
        self.host.parse::<IpAddr>().is_err()
    }
}

/// The discovery of one upstream group.
pub struct Discovery {
    /// The targets as configured, or the last good list of the targets file.
    targets: Mutex<Vec<TargetSpec>>,
    file: Option<TargetsFile>,
    hosts_file: Option<PathBuf>,
    breaker: Option<BreakerSettings>,
    /// How often names are resolved again.
    dns_refresh: Duration,
    /// State per address, and the last good answer per name.
    known: Mutex<Known>,
    /// What `/health` says about where the targets came from.
    pub(crate) status: Arc<Mutex<SourceStatus>>,
    /// The targets are an SRV record's.
    srv: Option<SrvSource>,
    /// Resolves `NAME:PORT` targets (after the hosts file); `None`: the system's
    /// `getaddrinfo` (when `[resolver]` could not be set up).
    resolver: Option<Arc<Resolver>>,
    /// The targets are the instances under an etcd prefix.
    pub(crate) etcd: Option<Arc<super::etcd::EtcdSource>>,
}

/// A DNS SRV name whose records are the targets: priority, weight and port from each.
struct SrvSource {
    name: String,
    resolver: Arc<Resolver>,
    /// Until when the last answer holds (its TTL within the resolver's bounds).
    fresh_until: Mutex<Option<std::time::Instant>>,
}

/// The DNS resolver of a generation (hickory): `/etc/resolv.conf` or the configured name
/// servers; answers hold for their TTL, bounded by `min_ttl` and `max_ttl`. A resolver is
/// built for each refresh (they are rare, one per TTL), so none outlives the runtime that
/// ran it (the first resolution runs on a throwaway runtime at start-up).
pub(crate) struct Resolver {
    nameservers: Vec<SocketAddr>,
    pub(crate) min_ttl: Duration,
    max_ttl: Duration,
}

impl Resolver {
    /// `nameservers`: empty for the system's configuration.
    pub(crate) fn new(
        nameservers: Vec<SocketAddr>,
        min_ttl: Duration,
        max_ttl: Duration,
    ) -> Result<Resolver, String> {
        // Built at each refresh, so a broken `/etc/resolv.conf` shows in `/health` then.
        Ok(Resolver {
            nameservers,
            min_ttl,
            max_ttl,
        })
    }

    /// `[resolver]`'s name servers and TTL bounds; `None` with problems.
    pub(crate) fn from_config(
        r: &crate::config::file::ResolverSection,
        problems: &mut Vec<crate::config::Problem>,
    ) -> Option<Arc<Resolver>> {
        use crate::config::{bounds, Problem};
        let before = problems.len();
        bounds::RESOLVER_MIN_TTL.check("resolver.min_ttl", r.min_ttl, problems);
        bounds::RESOLVER_MAX_TTL.check("resolver.max_ttl", r.max_ttl, problems);
        let servers: Vec<SocketAddr> = r
            .nameservers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let parsed = s
                    .parse::<SocketAddr>()
                    .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
                match parsed {
                    Ok(a) => Some(a),
                    Err(_) => {
                        problems.push(Problem::new(
                            format!("resolver.nameservers[{i}]"),
                            format!("{s:?} is not IP or IP:PORT"),
                        ));
                        None
                    }
                }
            })
            .collect();
        if problems.len() > before {
            return None;
        }
        match Resolver::new(servers, r.min_ttl.0, r.max_ttl.0) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                problems.push(Problem::new("resolver", format!("cannot set up DNS: {e}")));
                None
            }
        }
    }

    fn build(&self) -> Result<hickory_resolver::TokioResolver, String> {
        use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
        use hickory_resolver::net::runtime::TokioRuntimeProvider;
        let mut builder = if self.nameservers.is_empty() {
            hickory_resolver::TokioResolver::builder_tokio().map_err(|e| e.to_string())?
        } else {
            let servers = self
                .nameservers
                .iter()
                .map(|a| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = a.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = a.port();
                    NameServerConfig::new(a.ip(), true, vec![udp, tcp])
                })
                .collect();
            let config = ResolverConfig::from_parts(None, Vec::new(), servers);
            hickory_resolver::TokioResolver::builder_with_config(
                config,
                TokioRuntimeProvider::default(),
            )
        };
        let opts = builder.options_mut();
        opts.timeout = RESOLVE_TIMEOUT;
        opts.attempts = 1;
        builder.build().map_err(|e| e.to_string())
    }

    /// The addresses of `host`, and until when they hold.
    async fn ips(
        &self,
        r: &hickory_resolver::TokioResolver,
        host: &str,
    ) -> Result<(Vec<IpAddr>, std::time::Instant), String> {
        let answer = r.lookup_ip(host).await.map_err(|e| e.to_string())?;
        let mut ips: Vec<IpAddr> = answer.iter().collect();
        ips.sort();
        ips.dedup();
        Ok((ips, self.bounded(answer.valid_until())))
    }

    fn bounded(&self, until: std::time::Instant) -> std::time::Instant {
        let now = std::time::Instant::now();
        let ttl = until.saturating_duration_since(now);
        // `min_ttl` wins where the two cross.
        now + ttl.min(self.max_ttl).max(self.min_ttl)
    }

    /// The SRV records of `name`, each target resolved: (address, weight, priority), and
    /// until when the answer holds.
    async fn srv(
        &self,
        name: &str,
    ) -> Result<(Vec<(SocketAddr, usize, u16)>, std::time::Instant), String> {
        use hickory_resolver::proto::rr::RData;
        let r = self.build()?;
        let lookup = r.srv_lookup(name).await.map_err(|e| e.to_string())?;
        let mut until = self.bounded(lookup.valid_until());
        let mut out = Vec::new();
        for record in lookup.answers() {
            let RData::SRV(srv) = &record.data else {
                continue;
            };
            let target = srv.target.to_utf8();
            let target = target.trim_end_matches('.');
            // A "." target means the service is not offered here (RFC 2782).
            if target.is_empty() {
                continue;
            }
            let (ips, ip_until) = self.ips(&r, target).await?;
            until = until.min(ip_until);
            // Weight 0 is the smallest share, not none (RFC 2782).
            let weight = usize::from(srv.weight).max(1);
            for ip in ips {
                out.push((SocketAddr::new(ip, srv.port), weight, srv.priority));
            }
        }
        if out.is_empty() {
            return Err(format!("{name}: no SRV target"));
        }
        out.sort();
        out.dedup();
        Ok((out, until))
    }
}

#[derive(Default)]
struct Known {
    states: HashMap<SocketAddr, Arc<TargetState>>,
    last_good: HashMap<String, Vec<IpAddr>>,
    /// Until when each name's last answer holds (its TTL, bounded; `dns_refresh` at most).
    name_until: HashMap<String, std::time::Instant>,
    /// When names were last resolved, and the backends that gave.
    resolved: Option<(std::time::Instant, BTreeSet<Backend>)>,
}

impl Known {
    /// The backends for `targets` (address, weight, SRV priority): an address seen before
    /// keeps its state (in-flight count, breaker, checks); states of addresses gone are
    /// dropped.
    fn backends(
        &mut self,
        targets: impl IntoIterator<Item = (SocketAddr, usize, u16)>,
        breaker: Option<BreakerSettings>,
    ) -> BTreeSet<Backend> {
        let mut live = HashMap::new();
        let mut backends = BTreeSet::new();
        for (addr, weight, priority) in targets {
            let state = self
                .states
                .entry(addr)
                .or_insert_with(|| Arc::new(TargetState::new(addr, breaker)))
                .clone();
            state.set_priority(priority);
            live.insert(addr, state.clone());
            backends.insert(super::backend_with_state(addr, weight, state));
        }
        self.states = live;
        backends
    }
}

/// Where a group's targets come from, and how the last update went.
#[derive(Debug, Clone, Default)]
pub(crate) struct SourceStatus {
    /// `static`, `dns` or `file`.
    pub provider: &'static str,
    /// The file, for `file`.
    pub source: Option<String>,
    /// When the target set last changed.
    pub updated: Option<std::time::SystemTime>,
    pub targets: usize,
    /// Why the last read of the source failed (the last good set is serving).
    pub error: Option<String>,
}

/// A watched targets file.
struct TargetsFile {
    path: PathBuf,
    /// What the file looked like when last read: a change of any of these reads it again.
    stamp: Mutex<Option<FileStamp>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
        }
    }
}

/// One entry of a targets file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTarget {
    address: String,
    #[serde(default = "one")]
    weight: usize,
    /// Free-form, for the tools that write the file; not read.
    #[serde(default)]
    #[allow(dead_code)]
    metadata: Option<serde_json::Value>,
}

fn one() -> usize {
    1
}

/// One target as a JSON document (`{"address": ..., "weight": ...}`): an etcd value.
pub(crate) fn parse_target_value(text: &str) -> Result<TargetSpec, String> {
    let t: FileTarget = serde_json::from_str(text).map_err(|e| e.to_string())?;
    t.spec()
}

impl FileTarget {
    /// The target, its weight within the range `targets` have.
    fn spec(&self) -> Result<TargetSpec, String> {
        use crate::config::bounds::{MAX_WEIGHT, TARGET_WEIGHT};
        if !TARGET_WEIGHT.contains(self.weight) {
            return Err(format!("weight must be 1 to {MAX_WEIGHT}"));
        }
        TargetSpec::parse(&self.address, self.weight)
    }
}

/// A targets file: a JSON array of targets or `{"targets": [...]}`; TOML `[[targets]]`.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum FileTargets {
    List(Vec<FileTarget>),
    Table { targets: Vec<FileTarget> },
}

/// Parse a targets file's text (`path` decides JSON or TOML by its extension; any other
/// is tried as JSON, then TOML).
pub(crate) fn parse_targets_file(
    path: &std::path::Path,
    text: &str,
) -> Result<Vec<TargetSpec>, String> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let parsed: FileTargets = match ext {
        "toml" => toml::from_str(text).map_err(|e| e.to_string())?,
        "json" => serde_json::from_str(text).map_err(|e| e.to_string())?,
        _ => serde_json::from_str(text)
            .or_else(|_| toml::from_str(text))
            .map_err(|e: toml::de::Error| e.to_string())?,
    };
    let (FileTargets::List(list) | FileTargets::Table { targets: list }) = parsed;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let spec = t.spec().map_err(|e| format!("targets[{i}]: {e}"))?;
        if !seen.insert((spec.host.clone(), spec.port)) {
            return Err(format!("targets[{i}]: duplicate target {}", t.address));
        }
        out.push(spec);
    }
    if out.is_empty() {
        return Err("lists no target".into());
    }
    Ok(out)
}

impl Discovery {
    pub fn new(
        targets: Vec<TargetSpec>,
        hosts_file: Option<PathBuf>,
        breaker: Option<BreakerSettings>,
        dns_refresh: Duration,
        resolver: Option<Arc<Resolver>>,
    ) -> Self {
        let provider = if targets.iter().any(TargetSpec::is_name) {
            "dns"
        } else {
            "static"
        };
        Discovery {
            status: Arc::new(Mutex::new(SourceStatus {
                provider,
                ..SourceStatus::default()
            })),
            targets: Mutex::new(targets),
            file: None,
            hosts_file,
            breaker,
            dns_refresh,
            known: Mutex::new(Known::default()),
            srv: None,
            resolver,
            etcd: None,
        }
    }

    /// Targets from the SRV records of `name`.
    pub(crate) fn asking_srv(mut self, name: String, resolver: Arc<Resolver>) -> Self {
        {
            let mut status = lock(&self.status);
            status.provider = "srv";
            status.source = Some(name.clone());
        }
        self.srv = Some(SrvSource {
            name,
            resolver,
            fresh_until: Mutex::new(None),
        });
        self
    }

    /// Query the SRV name when its last answer expired: the backends, or `None` to keep
    /// the last ones.
    async fn srv_backends(&self, srv: &SrvSource) -> Option<BTreeSet<Backend>> {
        let now = std::time::Instant::now();
        let cached = lock(&self.known).resolved.clone();
        if let (Some(until), Some((_, backends))) = (*lock(&srv.fresh_until), &cached) {
            if now < until {
                return Some(backends.clone());
            }
        }
        match srv.resolver.srv(&srv.name).await {
            Ok((targets, until)) => {
                *lock(&srv.fresh_until) = Some(until);
                lock(&self.status).error = None;
                Some(lock(&self.known).backends(targets, self.breaker))
            }
            Err(e) => {
                // Retry soon, not at once: the last good set keeps serving meanwhile.
                *lock(&srv.fresh_until) = Some(now + srv.resolver.min_ttl);
                let why = format!("SRV {}: {e}", srv.name);
                let mut status = lock(&self.status);
                if status.error.as_deref() != Some(why.as_str()) {
                    log::warn!("{why}; the last good targets keep serving");
                }
                status.error = Some(why);
                cached.map(|(_, b)| b)
            }
        }
    }

    /// Targets from the file at `path`, whose first good read is `first`.
    pub(crate) fn watching(mut self, path: PathBuf, first: Vec<TargetSpec>) -> Self {
        {
            let mut status = lock(&self.status);
            status.provider = "file";
            status.source = Some(path.display().to_string());
        }
        let stamp = std::fs::metadata(&path).ok().map(|m| FileStamp::of(&m));
        self.targets = Mutex::new(first);
        self.file = Some(TargetsFile {
            path,
            stamp: Mutex::new(stamp),
        });
        self
    }

    /// Targets from the instances under `prefix` in etcd.
    pub(crate) fn watching_etcd(
        mut self,
        endpoints: Vec<String>,
        prefix: String,
    ) -> Result<Self, String> {
        {
            let mut status = lock(&self.status);
            status.provider = "etcd";
            status.source = Some(format!("{} {prefix}", endpoints.join(",")));
        }
        let source = super::etcd::EtcdSource::new(endpoints, prefix, self.status.clone())?;
        self.etcd = Some(Arc::new(source));
        Ok(self)
    }

    /// Whether the target set can change while serving (names to re-resolve, a file, SRV,
    /// etcd).
    pub fn is_dynamic(&self) -> bool {
        self.file.is_some() || self.srv.is_some() || self.etcd.is_some() || self.has_names()
    }

    /// Take the instances the etcd watch holds (reading the prefix once if it never was:
    /// at start-up, before the watch runs); `true` when the list changed.
    async fn take_etcd(&self, etcd: &super::etcd::EtcdSource) -> bool {
        let (mut specs, mut loaded) = etcd.current();
        if !loaded {
            if let Some(first) = etcd.endpoints().first() {
                if etcd.read(first).await.is_ok() {
                    (specs, loaded) = etcd.current();
                }
            }
        }
        if !loaded {
            return false;
        }
        let mut targets = lock(&self.targets);
        let changed = *targets != specs;
        *targets = specs;
        changed
    }

    /// Read the targets file again if it changed; `true` when the list changed.
    async fn reread(&self) -> bool {
        if let Some(etcd) = &self.etcd {
            return self.take_etcd(etcd).await;
        }
        let Some(file) = &self.file else {
            return false;
        };
        let meta = match tokio::fs::metadata(&file.path).await {
            Ok(m) => m,
            Err(e) => {
                self.failed(format!("cannot read {}: {e}", file.path.display()));
                return false;
            }
        };
        let stamp = FileStamp::of(&meta);
        if lock(&file.stamp).as_ref() == Some(&stamp) {
            return false;
        }
        let parsed = match tokio::fs::read_to_string(&file.path).await {
            Ok(text) => parse_targets_file(&file.path, &text),
            Err(e) => Err(e.to_string()),
        };
        *lock(&file.stamp) = Some(stamp);
        match parsed {
            Ok(specs) => {
                lock(&self.status).error = None;
                let mut targets = lock(&self.targets);
                let changed = *targets != specs;
                *targets = specs;
                changed
            }
            Err(e) => {
                self.failed(format!("{}: {e}", file.path.display()));
                false
            }
        }
    }

    /// Remember the current backends; a different set is an update for `/health`.
    fn note(&self, backends: &BTreeSet<Backend>) {
        let mut known = lock(&self.known);
        let same = known
            .resolved
            .as_ref()
            .is_some_and(|(_, before)| before == backends);
        known.resolved = Some((std::time::Instant::now(), backends.clone()));
        drop(known);
        if !same {
            let mut status = lock(&self.status);
            status.updated = Some(std::time::SystemTime::now());
            status.targets = backends.len();
        }
    }

    fn failed(&self, why: String) {
        let mut status = lock(&self.status);
        if status.error.as_deref() != Some(why.as_str()) {
            log::warn!("targets file: {why}; the last good targets keep serving");
        }
        status.error = Some(why);
    }

    /// Start from the states of a previous group's targets, so that the addresses that stay
    /// keep their in-flight counts and breakers.
    pub(crate) fn keep_states(&self, states: Vec<Arc<TargetState>>) {
        let mut known = lock(&self.known);
        known.states.extend(states.into_iter().map(|s| (s.addr, s)));
    }

    /// Whether any target needs resolving (and so periodic re-resolution).
    pub fn has_names(&self) -> bool {
        lock(&self.targets).iter().any(TargetSpec::is_name)
    }

    /// The addresses of `spec`, and until when they hold: an IP as it is; a name from the
    /// hosts file (for `dns_refresh`), else from DNS (its TTL, within the resolver's bounds
    /// and `dns_refresh`). `None` keeps the last good answer.
    async fn resolve(&self, spec: &TargetSpec) -> Option<(Vec<IpAddr>, std::time::Instant)> {
        let refresh = std::time::Instant::now() + self.dns_refresh;
        if let Ok(ip) = spec.host.parse::<IpAddr>() {
            return Some((vec![ip], refresh));
        }
        if let Some(path) = &self.hosts_file {
            match tokio::fs::read_to_string(path).await {
                Ok(text) => {
                    let ips = hosts_lookup(&text, &spec.host);
                    if !ips.is_empty() {
                        return Some((ips, refresh));
                    }
                }
                Err(e) => log::warn!("cannot read hosts file {}: {e}", path.display()),
            }
        }
        // Through hickory when it can be set up (no runtime thread blocks, TTLs honoured);
        // the system's getaddrinfo otherwise (say, a resolv.conf without name servers).
        if let Some(r) = &self.resolver {
            match r.build() {
                Ok(client) => {
                    return match r.ips(&client, &spec.host).await {
                        Ok((ips, until)) if !ips.is_empty() => Some((ips, until.min(refresh))),
                        Ok(_) => {
                            log::warn!("resolving {}: no address", spec.host);
                            None
                        }
                        Err(e) => {
                            log::warn!("resolving {}: {e}", spec.host);
                            None
                        }
                    };
                }
                Err(e) => log::debug!("DNS resolver unavailable ({e}); using getaddrinfo"),
            }
        }
        let lookup = tokio::net::lookup_host((spec.host.as_str(), spec.port));
        match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
            Ok(Ok(addrs)) => {
                let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                ips.sort();
                ips.dedup();
                (!ips.is_empty()).then_some((ips, refresh))
            }
            Ok(Err(e)) => {
                log::warn!("resolving {}: {e}", spec.host);
                None
            }
            Err(_) => {
                log::warn!("resolving {}: timed out", spec.host);
                None
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Addresses for `name` in hosts-file text (`IP name [aliases...]`, `#` comments).
pub fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let ip: IpAddr = fields.next()?.parse().ok()?;
            fields.any(|n| n.eq_ignore_ascii_case(name)).then_some(ip)
        })
        .collect()
}

#[async_trait]
impl ServiceDiscovery for Discovery {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        if let Some(srv) = &self.srv {
            let backends = self.srv_backends(srv).await.unwrap_or_default();
            self.note(&backends);
            return Ok((backends, HashMap::new()));
        }
        let changed = self.reread().await;
        let targets = lock(&self.targets).clone();
        // A name is asked again when its last answer expired, not at every check.
        let now = std::time::Instant::now();
        let expired = |k: &Known, spec: &TargetSpec| {
            spec.is_name() && k.name_until.get(&spec.host).is_none_or(|u| now >= *u)
        };
        if !changed {
            let known = lock(&self.known);
            if let Some((_, backends)) = &known.resolved {
                if !targets.iter().any(|t| expired(&known, t)) {
                    return Ok((backends.clone(), HashMap::new()));
                }
            }
        }
        let mut answers = Vec::with_capacity(targets.len());
        for spec in &targets {
            let due = changed || expired(&lock(&self.known), spec) || !spec.is_name();
            answers.push(if due { self.resolve(spec).await } else { None });
        }
        let mut known = lock(&self.known);
        let mut addrs = Vec::with_capacity(targets.len());
        for (spec, answer) in targets.iter().zip(answers) {
            let ips = match answer {
                Some((ips, until)) => {
                    if spec.is_name() {
                        known.last_good.insert(spec.host.clone(), ips.clone());
                        known.name_until.insert(spec.host.clone(), until);
                    }
                    ips
                }
                None => known.last_good.get(&spec.host).cloned().unwrap_or_default(),
            };
            addrs.extend(
                ips.into_iter()
                    .map(|ip| (SocketAddr::new(ip, spec.port), spec.weight, 0)),
            );
        }
        let backends = known.backends(addrs, self.breaker);
        drop(known);
        self.note(&backends);
        Ok((backends, HashMap::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_specs() {
        assert_eq!(
            TargetSpec::parse("10.0.0.1:80", 1).unwrap().host,
            "10.0.0.1"
        );
        assert!(!TargetSpec::parse("[::1]:80", 1).unwrap().is_name());
        assert!(TargetSpec::parse("Users.Internal:8080", 2)
            .unwrap()
            .is_name());
        assert_eq!(
            TargetSpec::parse("Users.Internal:8080", 2).unwrap().host,
            "users.internal"
        );
        for bad in ["nope", "a:b", "host:0", "bad_name:80", ":80"] {
            assert!(TargetSpec::parse(bad, 1).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_file_lookup() {
        let text = "127.0.0.1 localhost\n# comment\n10.0.0.7  api.test api # trailing\n10.0.0.8 api.test\n";
        let want: Vec<IpAddr> = vec!["10.0.0.7".parse().unwrap(), "10.0.0.8".parse().unwrap()];
        assert_eq!(hosts_lookup(text, "API.test"), want);
        assert!(hosts_lookup(text, "other").is_empty());
    }
}
