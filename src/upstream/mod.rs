//! Upstream groups: their targets, target selection, active health checks and per-target
//! state (in-flight counts).
//!
//! Health checking and the selector swap are Pingora's `LoadBalancer`; selection is
//! [`select::Selector`]. The gateway asks a group for a target with [`UpstreamGroup::select`]
//! and holds the returned [`InflightGuard`] for as long as the request uses that target.

pub mod health;
pub mod select;

use pingora::lb::{Backend, LoadBalancer};
use select::{Policy, Selector};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a consistent-hash group hashes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Header(http::HeaderName),
    Cookie(String),
    ClientIp,
}

/// State shared by every request that uses one target, attached to its `Backend`.
#[derive(Debug)]
pub struct TargetState {
    pub addr: SocketAddr,
    /// `addr` as text, built once for logs and metric labels.
    pub label: Arc<str>,
    inflight: AtomicUsize,
}

impl TargetState {
    pub fn new(addr: SocketAddr) -> Self {
        TargetState {
            addr,
            label: addr.to_string().into(),
            inflight: AtomicUsize::new(0),
        }
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }
}

/// Counts one request in flight on a target until dropped.
#[derive(Debug)]
pub struct InflightGuard(Arc<TargetState>);

impl InflightGuard {
    pub fn new(state: Arc<TargetState>) -> Self {
        state.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(state)
    }

    pub fn target(&self) -> &Arc<TargetState> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A compiled upstream group.
pub struct UpstreamGroup {
    pub name: Arc<str>,
    pub policy: Policy,
    pub hash_on: Option<HashOn>,
    pub lb: Arc<LoadBalancer<Selector>>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Whether active health checks run (shown in `/health`).
    pub health_checked: bool,
    /// Steps a selection may take before giving up.
    max_steps: usize,
}

/// Health of one target as reported by `/health` and the metrics.
#[derive(Debug, Clone)]
pub struct TargetHealth {
    pub target: Arc<TargetState>,
    pub weight: usize,
    pub healthy: bool,
}

impl UpstreamGroup {
    pub fn new(
        name: &str,
        policy: Policy,
        hash_on: Option<HashOn>,
        lb: LoadBalancer<Selector>,
        connect_timeout: Duration,
        read_timeout: Duration,
        health_checked: bool,
    ) -> Self {
        let backends = lb.backends().get_backend();
        let max_steps = match policy {
            // A full cycle of the weighted sequence sees every target.
            Policy::RoundRobin => backends.iter().map(|b| b.weight.max(1)).sum::<usize>() + 1,
            Policy::LeastConnections => backends.len() + 1,
            // Walking the Ketama ring revisits targets; give it room.
            Policy::ConsistentHash => backends.len() * 160 + 1,
        };
        UpstreamGroup {
            name: name.into(),
            policy,
            hash_on,
            lb: Arc::new(lb),
            connect_timeout,
            read_timeout,
            health_checked,
            max_steps,
        }
    }

    /// Pick a healthy target not in `exclude`. `key` feeds consistent hashing.
    pub fn select(&self, key: &[u8], exclude: &[SocketAddr]) -> Option<InflightGuard> {
        let backend = self.lb.select_with(key, self.max_steps, |b, healthy| {
            healthy
                && state_of(b).is_some_and(|s| !exclude.contains(&s.addr))
        })?;
        state_of(&backend).map(|s| InflightGuard::new(s.clone()))
    }

    /// Every target with its current health.
    pub fn health(&self) -> Vec<TargetHealth> {
        let backends = self.lb.backends();
        backends
            .get_backend()
            .iter()
            .filter_map(|b| {
                Some(TargetHealth {
                    target: state_of(b)?.clone(),
                    weight: b.weight,
                    healthy: backends.ready(b),
                })
            })
            .collect()
    }

    /// The bytes a consistent-hash group hashes for a request.
    pub fn hash_key<'a>(
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

/// Build the `Backend` for a target, carrying its [`TargetState`].
pub fn backend(addr: SocketAddr, weight: usize) -> Backend {
    let mut b = Backend {
        addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
        weight,
        ext: Default::default(),
    };
    b.ext.insert(Arc::new(TargetState::new(addr)));
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

    #[test]
    fn cookie_lookup() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::COOKIE, "a=1; session=abc; b=2".parse().unwrap());
        assert_eq!(cookie_value(&h, "session"), Some(&b"abc"[..]));
        assert_eq!(cookie_value(&h, "sess"), None);
    }
}
