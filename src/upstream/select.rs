//! Target selection plugged into `pingora-load-balancing` as a [`BackendSelection`].
//!
//! Pingora's own `Weighted` honours weights only on the first pick and falls back uniformly,
//! and it has no least-connections policy. [`Selector`] provides:
//!
//! - weighted round robin over a smooth-interleaved table, where every pick (first or
//!   fallback) takes the next ticket from one shared cursor, so skipping an unhealthy target
//!   leaves the others in exact weight proportion;
//! - least connections, ordered by in-flight requests per unit of weight, counts kept in
//!   [`TargetState`] that travel with each `Backend` and so survive selector rebuilds;
//! - consistent hashing by Pingora's Ketama ring.
//!
//! Health and "already tried" filtering stay with the caller through `select_with`.

// NOTE(pingora-0.9): pingora-load-balancing/src/selection/weighted.rs (`Weighted`): weights
// count on the first pick only, fallbacks are uniform, and there is no least-connections
// policy; `Selector` replaces it.

use super::TargetState;
use pingora::lb::selection::consistent::{KetamaHashing, OwnedNodeIterator};
use pingora::lb::selection::{BackendIter, BackendSelection};
use pingora::lb::Backend;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Which selection a group uses; the `Config` of [`Selector`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Policy {
    #[default]
    RoundRobin,
    LeastConnections,
    ConsistentHash,
}

pub(crate) enum Selector {
    RoundRobin(WeightedTable),
    LeastConnections(LeastConnections),
    ConsistentHash(Arc<KetamaHashing>),
}

impl BackendSelection for Selector {
    type Iter = SelectorIter;
    type Config = Policy;

    fn build_with_config(backends: &BTreeSet<Backend>, policy: &Policy) -> Self {
        match policy {
            Policy::RoundRobin => Selector::RoundRobin(WeightedTable::new(backends)),
            Policy::LeastConnections => Selector::LeastConnections(LeastConnections {
                backends: backends.iter().cloned().collect(),
                rotate: AtomicUsize::new(0),
            }),
            Policy::ConsistentHash => {
                Selector::ConsistentHash(Arc::new(KetamaHashing::build(backends)))
            }
        }
    }

    fn build(backends: &BTreeSet<Backend>) -> Self {
        Self::build_with_config(backends, &Policy::default())
    }

    fn iter(self: &Arc<Self>, key: &[u8]) -> SelectorIter {
        match self.as_ref() {
            Selector::RoundRobin(_) => SelectorIter::RoundRobin(self.clone()),
            Selector::LeastConnections(lc) => SelectorIter::Ordered {
                order: lc.order(),
                pos: 0,
                selector: self.clone(),
            },
            Selector::ConsistentHash(ring) => SelectorIter::Hash(ring.iter(key)),
        }
    }
}

/// Weighted round robin: each target appears `weight` times, spread out evenly
/// (nginx's smooth weighted sequence), read through one shared cursor.
pub(crate) struct WeightedTable {
    backends: Box<[Backend]>,
    sequence: Box<[u32]>,
    cursor: AtomicUsize,
}

impl WeightedTable {
    fn new(backends: &BTreeSet<Backend>) -> Self {
        let backends: Box<[Backend]> = backends.iter().cloned().collect();
        let weights: Vec<i64> = backends.iter().map(|b| b.weight.max(1) as i64).collect();
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        let mut sequence = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for i in 0..weights.len() {
                current[i] += weights[i];
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            sequence.push(best as u32);
        }
        WeightedTable {
            backends,
            sequence: sequence.into(),
            cursor: AtomicUsize::new(fastrand::usize(..total.max(1) as usize)),
        }
    }

    fn next(&self) -> Option<&Backend> {
        if self.sequence.is_empty() {
            return None;
        }
        let ticket = self.cursor.fetch_add(1, Ordering::Relaxed) % self.sequence.len();
        self.backends.get(self.sequence[ticket] as usize)
    }

    /// Steps a full search needs to see every target at least once.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.sequence.len()
    }
}

/// Least connections: targets ordered by in-flight requests divided by weight; ties are
/// rotated so equal targets share the load.
pub(crate) struct LeastConnections {
    backends: Box<[Backend]>,
    rotate: AtomicUsize,
}

impl LeastConnections {
    fn order(&self) -> Vec<u32> {
        let n = self.backends.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.rotate.fetch_add(1, Ordering::Relaxed) % n;
        let mut order: Vec<u32> = (0..n).map(|i| ((start + i) % n) as u32).collect();
        // Compare inflight_a / weight_a with inflight_b / weight_b without division.
        let load = |i: u32| {
            let b = &self.backends[i as usize];
            let inflight = b.ext.get::<Arc<TargetState>>().map_or(0, |s| s.inflight());
            (inflight as u128, b.weight.max(1) as u128)
        };
        order.sort_by(|a, b| {
            let (ia, wa) = load(*a);
            let (ib, wb) = load(*b);
            (ia * wb).cmp(&(ib * wa))
        });
        order
    }
}

pub(crate) enum SelectorIter {
    RoundRobin(Arc<Selector>),
    Ordered {
        order: Vec<u32>,
        pos: usize,
        selector: Arc<Selector>,
    },
    Hash(OwnedNodeIterator),
}

impl BackendIter for SelectorIter {
    fn next(&mut self) -> Option<&Backend> {
        match self {
            SelectorIter::RoundRobin(sel) => match &**sel {
                Selector::RoundRobin(t) => t.next(),
                _ => None,
            },
            SelectorIter::Ordered {
                order,
                pos,
                selector,
            } => {
                let i = *order.get(*pos)?;
                *pos += 1;
                match &**selector {
                    Selector::LeastConnections(lc) => lc.backends.get(i as usize),
                    _ => None,
                }
            }
            SelectorIter::Hash(it) => it.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(weights: &[usize]) -> BTreeSet<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Backend::new_with_weight(&format!("127.0.0.1:{}", 1000 + i), *w).unwrap())
            .collect()
    }

    #[test]
    fn smooth_sequence_is_exact_per_cycle() {
        let t = WeightedTable::new(&backends(&[5, 1, 1]));
        assert_eq!(t.len(), 7);
        let mut counts = [0; 3];
        for _ in 0..700 {
            let b = t.next().unwrap();
            counts[(b.addr.as_inet().unwrap().port() - 1000) as usize] += 1;
        }
        assert_eq!(counts, [500, 100, 100]);
    }

    #[test]
    fn fallback_keeps_weights_of_the_rest() {
        // Target 0 is skipped; 1 and 2 (weights 2 and 1) must keep a 2:1 ratio.
        let sel = Arc::new(Selector::build_with_config(
            &backends(&[1, 2, 1]),
            &Policy::RoundRobin,
        ));
        let mut counts = [0; 3];
        for _ in 0..3000 {
            let mut it = sel.iter(b"");
            loop {
                let b = it.next().unwrap();
                let i = (b.addr.as_inet().unwrap().port() - 1000) as usize;
                if i != 0 {
                    counts[i] += 1;
                    break;
                }
            }
        }
        assert_eq!(counts[0], 0);
        assert_eq!(counts[1], 2000);
        assert_eq!(counts[2], 1000);
    }
}
