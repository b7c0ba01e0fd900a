//! Cross-references between sections: names and addresses that must be unique. Names that
//! must exist (an upstream a route proxies to, a JWT provider it accepts) are resolved
//! through [`crate::names::Named`] where they are used. Everything else about a section is
//! checked where it is built, in one pass.

use crate::config::file::ConfigFile;
use crate::config::Problem;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

/// Names, matches and addresses that must be unique: route names, what a route matches (a
/// second route with the same match could never be reached), demo names, and every address
/// the process listens on (listeners, admin, demo backends).
pub(crate) fn duplicates(file: &ConfigFile, problems: &mut Vec<Problem>) {
    let mut matches: HashMap<String, usize> = HashMap::new();
    for (i, r) in file.routes.iter().enumerate() {
        let mut hosts: Vec<String> = r.hosts.iter().map(|h| format!("{h:?}")).collect();
        hosts.sort();
        let mut methods = r.methods.clone();
        methods.sort();
        let key = format!(
            "{hosts:?} {:?} {:?} {methods:?} {:?}",
            r.path_prefix, r.path, r.headers
        );
        match matches.get(&key) {
            Some(&first) => problems.push(Problem::new(
                format!("routes[{i}]"),
                format!(
                    "matches exactly what routes[{first}] ({:?}) matches, so it could never be reached; change its hosts, path, methods or headers, or remove it",
                    file.routes[first].name
                ),
            )),
            None => {
                matches.insert(key, i);
            }
        }
    }
    let mut names = HashMap::new();
    for (i, route) in file.routes.iter().enumerate() {
        if let Some(first) = names.insert(route.name.as_str(), i) {
            names.insert(route.name.as_str(), first);
            problems.push(Problem::new(
                format!("routes[{i}].name"),
                format!(
                    "duplicate route name {:?}; routes[{first}] already uses it",
                    route.name
                ),
            ));
        }
    }
    let mut demo = BTreeSet::new();
    for (i, d) in file.demo.iter().enumerate() {
        if !demo.insert(d.name.as_str()) {
            problems.push(Problem::new(
                format!("demo[{i}].name"),
                format!("duplicate demo name {:?}", d.name),
            ));
        }
    }
    let mut bound: BTreeMap<SocketAddr, String> = BTreeMap::new();
    for (key, address) in listen_addresses(file) {
        match address.parse::<SocketAddr>() {
            Ok(addr) => {
                if let Some(other) = bound.insert(addr, key.clone()) {
                    problems.push(Problem::new(
                        &key,
                        format!("address {address} is already used by {other}"),
                    ));
                }
            }
            Err(_) => problems.push(Problem::new(
                key,
                format!("invalid listen address {address:?}; write IP:PORT, e.g. \"0.0.0.0:8080\""),
            )),
        }
    }
}

/// What is valid but probably not what was meant: CIDRs with host bits set
/// (`203.0.113.5/24` means `203.0.113.0/24`). Reported as warnings; nothing is refused.
pub(crate) fn warnings(file: &ConfigFile) -> Vec<Problem> {
    let l = &file.limits;
    let mut lists: Vec<(String, &[String])> = vec![
        ("limits.trusted_proxies".into(), &l.trusted_proxies),
        ("limits.ip_allow".into(), &l.ip_allow),
        ("limits.ip_deny".into(), &l.ip_deny),
    ];
    for (i, l) in file.listeners.iter().enumerate() {
        if let Some(p) = &l.proxy_protocol {
            lists.push((format!("listeners[{i}].proxy_protocol.from"), &p.from));
        }
    }
    for (i, r) in file.routes.iter().enumerate() {
        lists.push((format!("routes[{i}].ip_allow"), &r.ip_allow));
        lists.push((format!("routes[{i}].ip_deny"), &r.ip_deny));
    }
    let mut warnings = Vec::new();
    for (at, list) in lists {
        for (i, cidr) in list.iter().enumerate() {
            if let Ok(net) = cidr.parse::<ipnet::IpNet>() {
                if net != net.trunc() {
                    warnings.push(Problem::new(
                        format!("{at}[{i}]"),
                        format!(
                            "{cidr} has host bits set and means {}; write that",
                            net.trunc()
                        ),
                    ));
                }
            }
        }
    }
    warnings
}

/// Every address the process listens on, with its key path.
pub(crate) fn listen_addresses(file: &ConfigFile) -> Vec<(String, &str)> {
    let listeners = file
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("listeners[{i}].address"), l.address.as_str()));
    let admin = file
        .admin
        .enabled
        .then(|| ("admin.address".to_string(), file.admin.address.as_str()));
    let demo = file
        .demo
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("demo[{i}].address"), d.address.as_str()));
    listeners.chain(admin).chain(demo).collect()
}

/// Listen addresses that cannot all be bound by one process: the same address twice, or a
/// wildcard (`0.0.0.0`, `[::]`) and another address of the same family on the same port.
/// The later one is named, with the earlier one it collides with.
pub(crate) fn listen_conflicts(file: &ConfigFile, problems: &mut Vec<Problem>) {
    let parsed: Vec<(String, std::net::SocketAddr)> = listen_addresses(file)
        .into_iter()
        .filter_map(|(path, a)| Some((path, a.parse().ok()?)))
        .collect();
    for (j, (path, b)) in parsed.iter().enumerate() {
        let earlier = parsed[..j].iter().find(|(_, a)| {
            a.port() == b.port()
                && a.is_ipv4() == b.is_ipv4()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        });
        if let Some((other, a)) = earlier {
            let why = if a.ip() == b.ip() {
                "the same address twice"
            } else {
                "a wildcard address covers every address of its family on that port"
            };
            problems.push(Problem::new(
                path,
                format!("{b} collides with {other} ({a}): {why}; one process cannot bind both"),
            ));
        }
    }
}
