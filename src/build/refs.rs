//! Cross-references between sections: names that must exist (an upstream a route proxies
//! to, a JWT provider it accepts) and names or addresses that must be unique. Everything
//! else about a section is checked where it is built, in one pass.

use crate::config::file::ConfigFile;
use crate::config::Problem;
use crate::policy::jwt::JwtProvider;
use crate::upstream::UpstreamGroup;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

/// Named things of one kind, as built; `configured` also holds the names whose section had
/// problems, so a reference to them is not reported a second time as undefined.
pub(crate) struct Named<T> {
    kind: &'static str,
    built: BTreeMap<String, Arc<T>>,
    configured: BTreeSet<String>,
}

/// The upstream groups of a generation, by name.
pub(crate) type Groups = Named<UpstreamGroup>;
/// The JWT providers of a generation, by name.
pub(crate) type Providers = Named<JwtProvider>;

impl<T> Named<T> {
    pub(crate) fn new(kind: &'static str, configured: impl IntoIterator<Item = String>) -> Self {
        Named {
            kind,
            built: BTreeMap::new(),
            configured: configured.into_iter().collect(),
        }
    }

    pub(crate) fn insert(&mut self, name: &str, value: Arc<T>) {
        self.built.insert(name.to_string(), value);
    }

    /// The built `name`, or a problem at `at` when no section defines it.
    pub(crate) fn get(&self, at: &str, name: &str, problems: &mut Vec<Problem>) -> Option<Arc<T>> {
        if let Some(v) = self.built.get(name) {
            return Some(v.clone());
        }
        if !self.configured.contains(name) {
            let defined: Vec<&str> = self.configured.iter().map(String::as_str).collect();
            let defined = if defined.is_empty() {
                "none".to_string()
            } else {
                defined.join(", ")
            };
            problems.push(Problem::new(
                at,
                format!("{} {name:?} is not defined; defined: {defined}", self.kind),
            ));
        }
        None
    }

    /// The built one named `name`, if any (no problem when missing).
    pub(crate) fn find(&self, name: &str) -> Option<&Arc<T>> {
        self.built.get(name)
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<T>> {
        self.built.values()
    }
}

/// Names and addresses that must be unique: route names, demo names, and every address the
/// process listens on (listeners, admin, demo backends).
pub(crate) fn duplicates(file: &ConfigFile, problems: &mut Vec<Problem>) {
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
