//! DNS for discovery: the hickory [`Resolver`] of a generation (`[resolver]`), the
//! resolution of the `NAME:PORT` targets of a target list ([`NameLookup`]: an optional hosts
//! file first, like `/etc/hosts`, then DNS, else the system's `getaddrinfo`), and the SRV
//! source ([`SrvSource`]: `srv`, a DNS SRV name whose records are the targets, with their
//! priorities and weights).

use super::{lock, Known, SourceStatus};
use crate::upstream::breaker::BreakerSettings;
use crate::upstream::target::TargetSpec;
use pingora::lb::Backend;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest wait for one name's resolution.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The DNS resolver of a generation (hickory): `/etc/resolv.conf` or the configured name
/// servers; answers hold for their TTL, bounded by `min_ttl` and `max_ttl`. A resolver is
/// built for each refresh (they are rare, one per TTL), so none outlives the runtime that
/// ran it (the first resolution runs on a throwaway runtime at start-up).
pub(crate) struct Resolver {
    nameservers: Vec<SocketAddr>,
    pub(crate) min_ttl: Duration,
    max_ttl: Duration,
}

impl crate::config::FromConfig for Resolver {
    type Section = crate::config::file::ResolverSection;

    /// `[resolver]`'s name servers and TTL bounds; `None` with problems.
    fn from_config(
        at: &str,
        r: &crate::config::file::ResolverSection,
        _cx: &(),
        problems: &mut Vec<crate::config::Problem>,
    ) -> Option<Resolver> {
        use crate::config::{bounds, Problem};
        let before = problems.len();
        bounds::RESOLVER_MIN_TTL.check(&format!("{at}.min_ttl"), r.min_ttl, problems);
        bounds::RESOLVER_MAX_TTL.check(&format!("{at}.max_ttl"), r.max_ttl, problems);
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
                            format!("{at}.nameservers[{i}]"),
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
            Ok(r) => Some(r),
            Err(e) => {
                problems.push(Problem::new(at, format!("cannot set up DNS: {e}")));
                None
            }
        }
    }
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

/// How the names of a target list (configured, from a targets file or from etcd) are
/// resolved.
pub(super) struct NameLookup {
    pub(super) hosts_file: Option<PathBuf>,
    /// Resolves `NAME:PORT` targets (after the hosts file); `None`: the system's
    /// `getaddrinfo` (when `[resolver]` could not be set up).
    pub(super) resolver: Option<Arc<Resolver>>,
    /// How often names are resolved again.
    pub(super) dns_refresh: Duration,
}

impl NameLookup {
    /// The addresses of `spec`, and until when they hold: an IP as it is; a name from the
    /// hosts file (for `dns_refresh`), else from DNS (its TTL, within the resolver's bounds
    /// and `dns_refresh`). `None` keeps the last good answer.
    pub(super) async fn resolve(
        &self,
        spec: &TargetSpec,
    ) -> Option<(Vec<IpAddr>, std::time::Instant)> {
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

/// A DNS SRV name whose records are the targets: priority, weight and port from each.
pub(super) struct SrvSource {
    name: String,
    resolver: Arc<Resolver>,
    /// Until when the last answer holds (its TTL within the resolver's bounds).
    fresh_until: Mutex<Option<std::time::Instant>>,
}

impl SrvSource {
    /// The SRV name `name` (without its trailing dot), asked through `resolver`.
    pub(super) fn new(name: String, resolver: Arc<Resolver>) -> SrvSource {
        SrvSource {
            name,
            resolver,
            fresh_until: Mutex::new(None),
        }
    }

    /// Query the SRV name when its last answer expired: the backends, or `None` to keep
    /// the last ones.
    pub(super) async fn backends(
        &self,
        known: &Mutex<Known>,
        status: &Mutex<SourceStatus>,
        breaker: Option<BreakerSettings>,
    ) -> Option<BTreeSet<Backend>> {
        let now = std::time::Instant::now();
        let cached = lock(known).resolved.clone();
        // NOTE(pingora-0.9): pingora-load-balancing/src/background.rs (`LoadBalancer::run`):
        // discovery runs every fixed `update_frequency`; it cannot be scheduled by an answer's
        // TTL. So it runs often, and the name is asked again only once its last answer
        // expired: until then the backends of that answer are served as they are.
        if let (Some(until), Some((_, backends))) = (*lock(&self.fresh_until), &cached) {
            if now < until {
                return Some(backends.clone());
            }
        }
        match self.resolver.srv(&self.name).await {
            Ok((targets, until)) => {
                *lock(&self.fresh_until) = Some(until);
                lock(status).error = None;
                Some(lock(known).backends(targets, breaker))
            }
            Err(e) => {
                // Retry soon, not at once: the last good set keeps serving meanwhile.
                *lock(&self.fresh_until) = Some(now + self.resolver.min_ttl);
                let why = format!("SRV {}: {e}", self.name);
                let mut status = lock(status);
                if status.error.as_deref() != Some(why.as_str()) {
                    log::warn!("{why}; the last good targets keep serving");
                }
                status.error = Some(why);
                cached.map(|(_, b)| b)
            }
        }
    }
}

/// Addresses for `name` in hosts-file text (`IP name [aliases...]`, `#` comments).
pub(crate) fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let ip: IpAddr = fields.next()?.parse().ok()?;
            fields.any(|n| n.eq_ignore_ascii_case(name)).then_some(ip)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_lookup() {
        let text = "127.0.0.1 localhost\n# comment\n10.0.0.7  api.test api # trailing\n10.0.0.8 api.test\n";
        let want: Vec<IpAddr> = vec!["10.0.0.7".parse().unwrap(), "10.0.0.8".parse().unwrap()];
        assert_eq!(hosts_lookup(text, "API.test"), want);
        assert!(hosts_lookup(text, "other").is_empty());
    }
}
