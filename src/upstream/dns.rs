//! Target discovery: IP targets as written, and `host:port` targets resolved through an
//! optional hosts file (checked first, like `/etc/hosts`) and then the system resolver,
//! re-resolved on an interval by the group's `LoadBalancer` background service.
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
    targets: Vec<TargetSpec>,
    hosts_file: Option<PathBuf>,
    breaker: Option<BreakerSettings>,
    /// State per address, and the last good answer per name.
    known: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    states: HashMap<SocketAddr, Arc<TargetState>>,
    last_good: HashMap<String, Vec<IpAddr>>,
}

impl Discovery {
    pub fn new(
        targets: Vec<TargetSpec>,
        hosts_file: Option<PathBuf>,
        breaker: Option<BreakerSettings>,
    ) -> Self {
        Discovery {
            targets,
            hosts_file,
            breaker,
            known: Mutex::new(Known::default()),
        }
    }

    /// Start from the states of a previous group's targets, so that the addresses that stay
    /// keep their in-flight counts and breakers.
    pub(crate) fn keep_states(&self, states: Vec<Arc<TargetState>>) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.states.extend(states.into_iter().map(|s| (s.addr, s)));
    }

    /// Whether any target needs resolving (and so periodic re-resolution).
    pub fn has_names(&self) -> bool {
        self.targets.iter().any(TargetSpec::is_name)
    }

    async fn resolve(&self, spec: &TargetSpec) -> Option<Vec<IpAddr>> {
        if let Ok(ip) = spec.host.parse::<IpAddr>() {
            return Some(vec![ip]);
        }
        if let Some(path) = &self.hosts_file {
            match tokio::fs::read_to_string(path).await {
                Ok(text) => {
                    let ips = hosts_lookup(&text, &spec.host);
                    if !ips.is_empty() {
                        return Some(ips);
                    }
                }
                Err(e) => log::warn!("cannot read hosts file {}: {e}", path.display()),
            }
        }
        let lookup = tokio::net::lookup_host((spec.host.as_str(), spec.port));
        match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
            Ok(Ok(addrs)) => {
                let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                ips.sort();
                ips.dedup();
                (!ips.is_empty()).then_some(ips)
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
        let mut answers = Vec::with_capacity(self.targets.len());
        for spec in &self.targets {
            answers.push(self.resolve(spec).await);
        }
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let mut backends = BTreeSet::new();
        let mut live = HashMap::new();
        for (spec, answer) in self.targets.iter().zip(answers) {
            let ips = match answer {
                Some(ips) => {
                    if spec.is_name() {
                        known.last_good.insert(spec.host.clone(), ips.clone());
                    }
                    ips
                }
                None => known.last_good.get(&spec.host).cloned().unwrap_or_default(),
            };
            for ip in ips {
                let addr = SocketAddr::new(ip, spec.port);
                let state = known
                    .states
                    .entry(addr)
                    .or_insert_with(|| Arc::new(TargetState::new(addr, self.breaker)))
                    .clone();
                live.insert(addr, state.clone());
                backends.insert(super::backend_with_state(addr, spec.weight, state));
            }
        }
        known.states = live;
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
