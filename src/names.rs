//! Things of one kind by the name the configuration gives them (upstream groups, JWT
//! providers), as one generation built them; a reference to a name no section defines is a
//! problem located at the referring key.

use crate::config::Problem;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Problem unless `name` is a usable configured name: letters, digits, `-`, `_` and `.`.
pub(crate) fn check_name(at: &str, kind: &str, name: &str, problems: &mut Vec<Problem>) {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid {
        problems.push(Problem::new(
            at,
            format!("{kind} names may use only letters, digits, '-', '_' and '.'"),
        ));
    }
}

/// Named things of one kind, as built; `configured` also holds the names whose section had
/// problems, so a reference to them is not reported a second time as undefined.
pub(crate) struct Named<T> {
    kind: &'static str,
    built: BTreeMap<String, Arc<T>>,
    configured: BTreeSet<String>,
}

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
            let hint = crate::config::closest(name, self.configured.iter().map(String::as_str))
                .map(|c| format!(" did you mean {c:?}?"))
                .unwrap_or_default();
            problems.push(Problem::new(
                at,
                format!(
                    "{} {name:?} is not defined;{hint} defined: {defined}",
                    self.kind
                ),
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
