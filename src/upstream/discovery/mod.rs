//! Target discovery of an upstream group: [`Discovery`], the `ServiceDiscovery` its
//! `LoadBalancer` polls, with exactly one `Source` of targets, and what every source
//! shares: the per-address state kept across updates (`Known`) and what `/health` says
//! about the source ([`SourceStatus`]).
//!
//! The sources, one file each: the targets as configured; a watched targets file
//! ([`file`]); the records of a DNS SRV name ([`dns`]); the instances under an etcd prefix
//! ([`etcd`]). A target list (configured, from the file or from etcd) is resolved the same
//! way whichever source gave it (`dns::NameLookup`): IP targets as written, `host:port`
//! targets through an optional hosts file (checked first, like `/etc/hosts`) and then DNS,
//! each name asked again when its answer expired (its TTL, at most `dns_refresh`).
//!
//! Per-target state (in-flight count, breaker) is kept per address across re-resolutions, so
//! a target that stays in the answer keeps its counters. A name that fails to resolve keeps
//! its last good addresses rather than emptying the group on a transient DNS failure.
//!
//! A new source is a file here, a `Source` variant (its arms in [`Discovery`]'s `discover`,
//! `is_dynamic` and `etcd`, and a builder), and its config key.

pub(crate) mod dns;
pub(crate) mod etcd;
pub(crate) mod file;

use super::breaker::BreakerSettings;
use super::target::TargetSpec;
use super::TargetState;
use async_trait::async_trait;
use dns::{NameLookup, Resolver, SrvSource};
use etcd::EtcdSource;
use file::TargetsFile;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::Backend;
use pingora::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where a group's targets come from: one source (the configuration refuses a group that
/// names several).
enum Source {
    /// The targets as configured: IPs as written, names resolved (`static` or `dns`).
    Static,
    /// A watched targets file: its last good list, names resolved.
    File(TargetsFile),
    /// The records of a DNS SRV name, resolved whole.
    Srv(SrvSource),
    /// The instances under an etcd prefix, kept by the generation's watch; names resolved.
    Etcd(Arc<EtcdSource>),
}

/// The discovery of one upstream group.
pub(crate) struct Discovery {
    /// Where the targets come from.
    source: Source,
    /// The target list to resolve: as configured, the last good list of the targets file, or
    /// the etcd instances (unused for SRV).
    targets: Mutex<Vec<TargetSpec>>,
    /// How the names of `targets` are resolved.
    names: NameLookup,
    breaker: Option<BreakerSettings>,
    /// State per address, and the last good answer per name.
    known: Mutex<Known>,
    /// What `/health` says about where the targets came from.
    pub(crate) status: Arc<Mutex<SourceStatus>>,
}

/// What discovery learned so far, whatever the source.
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
    // NOTE(pingora-0.9): pingora-load-balancing/src/lib.rs (`Backend`, `Backends::do_update`):
    // `ext`, where a target's state rides, is not part of a `Backend`'s equality or hash, and
    // the set is swapped only when its membership changes; a fresh state per update would be
    // ignored while membership holds, then replace the live one (in-flight count, breaker)
    // when it changes. So states are kept here by address and the same one attached again.
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
    /// `static`, `dns`, `file`, `srv` or `etcd`.
    pub provider: &'static str,
    /// The file for `file`, the name for `srv`, the endpoints and prefix for `etcd`.
    pub source: Option<String>,
    /// When the target set last changed.
    pub updated: Option<std::time::SystemTime>,
    pub targets: usize,
    /// Why the last read of the source failed (the last good set is serving).
    pub error: Option<String>,
}

impl Discovery {
    /// The targets as configured (`static`, or `dns` when one is a name); the builders below
    /// put another source in their place.
    pub(crate) fn new(
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
            source: Source::Static,
            status: Arc::new(Mutex::new(SourceStatus {
                provider,
                ..SourceStatus::default()
            })),
            targets: Mutex::new(targets),
            names: NameLookup {
                hosts_file,
                resolver,
                dns_refresh,
            },
            breaker,
            known: Mutex::new(Known::default()),
        }
    }

    /// Targets from the SRV records of `name`.
    pub(crate) fn asking_srv(mut self, name: String, resolver: Arc<Resolver>) -> Self {
        {
            let mut status = lock(&self.status);
            status.provider = "srv";
            status.source = Some(name.clone());
        }
        self.source = Source::Srv(SrvSource::new(name, resolver));
        self
    }

    /// Targets from the file at `path`, whose first good read is `first`.
    pub(crate) fn watching(mut self, path: PathBuf, first: Vec<TargetSpec>) -> Self {
        {
            let mut status = lock(&self.status);
            status.provider = "file";
            status.source = Some(path.display().to_string());
        }
        self.targets = Mutex::new(first);
        self.source = Source::File(TargetsFile::new(path));
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
        let source = EtcdSource::new(endpoints, prefix, self.status.clone())?;
        self.source = Source::Etcd(Arc::new(source));
        Ok(self)
    }

    /// The etcd prefix the targets come from, if they do: its watch is the generation's
    /// background work.
    pub(crate) fn etcd(&self) -> Option<Arc<EtcdSource>> {
        match &self.source {
            Source::Etcd(source) => Some(source.clone()),
            Source::Static | Source::File(_) | Source::Srv(_) => None,
        }
    }

    /// Whether the target set can change while serving (names to re-resolve, a file, SRV,
    /// etcd).
    pub(crate) fn is_dynamic(&self) -> bool {
        match &self.source {
            Source::Static => self.has_names(),
            Source::File(_) | Source::Srv(_) | Source::Etcd(_) => true,
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

    /// Start from the states of a previous group's targets, so that the addresses that stay
    /// keep their in-flight counts and breakers.
    pub(crate) fn keep_states(&self, states: Vec<Arc<TargetState>>) {
        let mut known = lock(&self.known);
        known.states.extend(states.into_iter().map(|s| (s.addr, s)));
    }

    /// Whether any target needs resolving (and so periodic re-resolution).
    pub(crate) fn has_names(&self) -> bool {
        lock(&self.targets).iter().any(TargetSpec::is_name)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl ServiceDiscovery for Discovery {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        // The source first: SRV answers with the backends; the others update the target list
        // (`true` when it changed), whose names are resolved below.
        let changed = match &self.source {
            Source::Srv(srv) => {
                let backends = srv
                    .backends(&self.known, &self.status, self.breaker)
                    .await
                    .unwrap_or_default();
                self.note(&backends);
                return Ok((backends, HashMap::new()));
            }
            Source::Static => false,
            Source::File(file) => file.reread(&self.targets, &self.status).await,
            Source::Etcd(etcd) => etcd.take(&self.targets).await,
        };
        let targets = lock(&self.targets).clone();
        // A name is asked again when its last answer expired, not at every check.
        // NOTE(pingora-0.9): pingora-load-balancing/src/background.rs (`LoadBalancer::run`):
        // discovery runs every fixed `update_frequency`; it cannot be scheduled by each
        // answer's TTL. So it runs often and asks only the names whose answer expired, and
        // answers with the last backends when none did.
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
            answers.push(if due {
                self.names.resolve(spec).await
            } else {
                None
            });
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
