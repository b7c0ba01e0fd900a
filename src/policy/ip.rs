//! Client addresses and CIDR rules: who the client is (the peer, or the address a trusted
//! proxy put in `X-Forwarded-For`) and whether it may pass the global and per-route
//! allow/deny lists. Deny wins over allow; an empty allow list admits everyone not denied.

use super::{Asked, PolicyContext, RouteCheck, Step};
use crate::config::file::RouteSection;
use crate::config::file::ShadowPolicy;
use crate::config::{FromConfig, Problem};
use crate::error::Reject;
use http::{HeaderName, HeaderValue, StatusCode};
use ipnet::IpNet;
use std::net::IpAddr;

/// Parse a CIDR or a bare address (`10.0.0.0/8`, `::1`, `192.0.2.7`).
pub(crate) fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("invalid CIDR {s:?}; write e.g. \"10.0.0.0/8\" or \"2001:db8::/32\""))
}

/// Parse every CIDR of a list, each problem at `at[i]`.
pub(crate) fn nets(
    at: &str,
    list: &[String],
    problems: &mut Vec<crate::config::Problem>,
) -> Vec<IpNet> {
    list.iter()
        .enumerate()
        .filter_map(|(i, s)| match parse_net(s) {
            Ok(n) => Some(n),
            Err(e) => {
                problems.push(crate::config::Problem::new(format!("{at}[{i}]"), e));
                None
            }
        })
        .collect()
}

/// A compiled allow/deny pair.
#[derive(Debug, Clone, Default)]
pub(crate) struct IpRules {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl IpRules {
    pub(crate) fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        IpRules { allow, deny }
    }

    /// The lists, in words (`tollgate explain`).
    pub(crate) fn describe(&self) -> String {
        let list = |l: &[IpNet]| {
            l.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (self.allow.is_empty(), self.deny.is_empty()) {
            (true, true) => "no rules".into(),
            (false, true) => format!("allow {}", list(&self.allow)),
            (true, false) => format!("deny {}", list(&self.deny)),
            (false, false) => format!("allow {}; deny {}", list(&self.allow), list(&self.deny)),
        }
    }

    /// Whether `ip` may pass. An unknown address passes only when no allow list is set.
    pub(crate) fn admits(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip.map(canonical) else {
            return self.allow.is_empty();
        };
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

/// The refusal of a client the rules do not admit.
pub(crate) fn refused() -> Reject {
    Reject::new(StatusCode::FORBIDDEN, "forbidden").because("ip_denied")
}

/// What `tollgate explain` says of `rules` for the client of `asked`.
pub(crate) fn explain(rules: &IpRules, asked: &Asked<'_>, decided: &Step) -> String {
    let client = asked
        .client_ip
        .map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
    let rules = rules.describe();
    match decided {
        Step::Reject(r) => format!(
            "client {client}: {} {} ({rules})",
            r.status.as_u16(),
            r.message
        ),
        _ => format!("client {client} admitted ({rules})"),
    }
}

/// A route's `ip_allow` and `ip_deny` (added to the global lists, checked before routing).
pub(crate) struct RouteIp(IpRules);

impl FromConfig<PolicyContext<'_>> for RouteIp {
    type Section = RouteSection;

    fn from_config(
        at: &str,
        r: &RouteSection,
        _cx: &PolicyContext<'_>,
        problems: &mut Vec<Problem>,
    ) -> Option<Self> {
        let allow = nets(&format!("{at}.ip_allow"), &r.ip_allow, problems);
        let deny = nets(&format!("{at}.ip_deny"), &r.ip_deny, problems);
        Some(RouteIp(IpRules::new(allow, deny)))
    }
}

impl RouteCheck for RouteIp {
    fn name(&self) -> &'static str {
        "route_ip"
    }

    fn shadow_as(&self) -> Option<ShadowPolicy> {
        Some(ShadowPolicy::Ip)
    }

    fn check(&self, asked: &Asked<'_>, _headers: &mut Vec<(HeaderName, HeaderValue)>) -> Step {
        if self.0.admits(asked.client_ip) {
            Step::Next
        } else {
            Step::Reject(refused())
        }
    }

    fn explain(&self, asked: &Asked<'_>, decided: &Step) -> String {
        explain(&self.0, asked, decided)
    }
}

/// Peers allowed to tell us the client address.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub(crate) fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets)
    }

    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client address: walking `X-Forwarded-For` from the right, the first hop that is
    /// not a trusted proxy, provided the peer itself is trusted; otherwise the peer.
    pub(crate) fn client_ip<'a>(
        &self,
        peer: Option<IpAddr>,
        xff: impl Iterator<Item = &'a [u8]>,
    ) -> Option<IpAddr> {
        let peer = peer?;
        if !self.trusts(peer) {
            return Some(peer);
        }
        let hops: Vec<&[u8]> = xff.flat_map(|v| v.split(|b| *b == b',')).collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = std::str::from_utf8(hop)
                .ok()
                .and_then(|s| s.trim().parse::<IpAddr>().ok())
            else {
                // A garbled entry: stop at the last address we could vouch for.
                break;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        Some(client)
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| parse_net(s).unwrap()).collect()
    }

    #[test]
    fn rules_table() {
        let r = IpRules::new(
            nets(&["10.0.0.0/8", "2001:db8::/32"]),
            nets(&["10.1.0.0/16"]),
        );
        let cases = [
            ("10.2.3.4", true),
            ("10.1.2.3", false),
            ("192.0.2.1", false),
            ("2001:db8::1", true),
            ("::ffff:10.2.3.4", true),
        ];
        for (ip, want) in cases {
            assert_eq!(r.admits(Some(ip.parse().unwrap())), want, "{ip}");
        }
        let deny_only = IpRules::new(vec![], nets(&["192.0.2.0/24"]));
        assert!(deny_only.admits(Some("198.51.100.1".parse().unwrap())));
        assert!(!deny_only.admits(Some("192.0.2.9".parse().unwrap())));
    }

    #[test]
    fn forwarded_for_only_from_trusted() {
        let t = TrustedProxies::new(nets(&["127.0.0.1", "10.0.0.0/8"]));
        let xff: &[&[u8]] = &[b"203.0.113.9, 10.0.0.2"];
        let client = |peer: &str| t.client_ip(Some(peer.parse().unwrap()), xff.iter().copied());
        assert_eq!(client("127.0.0.1"), Some("203.0.113.9".parse().unwrap()));
        assert_eq!(
            client("198.51.100.7"),
            Some("198.51.100.7".parse().unwrap())
        );
        let spoof: &[&[u8]] = &[b"garbage, 203.0.113.9"];
        assert_eq!(
            t.client_ip(Some("127.0.0.1".parse().unwrap()), spoof.iter().copied()),
            Some("203.0.113.9".parse().unwrap())
        );
    }
}
