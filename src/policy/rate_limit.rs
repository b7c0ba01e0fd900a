//! Rate limiting: fixed windows counted by `pingora_limits` count-min estimates locally, or
//! shared through Redis.
//!
//! STUB: interface only; the implementation is being written. See the task description.

use crate::config::file::{RateLimitBackendSection, RateLimitSection};
use crate::config::Problem;
use http::{HeaderName, HeaderValue};
use std::net::IpAddr;
use std::sync::Arc;

/// Who a request counts against.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub route: &'a str,
    pub consumer: Option<&'a str>,
    pub client_ip: Option<IpAddr>,
}

/// The outcome of a check: whether to admit, and the numbers of the most restrictive window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window that decided resets.
    pub reset_secs: u64,
}

impl RateDecision {
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`, and `Retry-After` when refused.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        Vec::new()
    }

    /// The more restrictive of two decisions (refused beats admitted; then fewer remaining).
    pub fn tighter(self, other: RateDecision) -> RateDecision {
        if self.allowed != other.allowed {
            return if self.allowed { other } else { self };
        }
        if other.remaining < self.remaining {
            other
        } else {
            self
        }
    }
}

/// Where counters live: this process, or Redis with a failure policy. One per gateway.
pub struct RateLimitStore {}

impl RateLimitStore {
    pub fn validate(_section: &RateLimitBackendSection) -> Vec<Problem> {
        Vec::new()
    }

    pub fn compile(_section: &RateLimitBackendSection) -> Result<Arc<Self>, Vec<Problem>> {
        Ok(Arc::new(RateLimitStore {}))
    }
}

/// The windows of one route or one consumer.
pub struct RateLimits {}

impl RateLimits {
    /// Problems in a list of windows, located under `at` (e.g. `routes[2].rate_limits`).
    pub fn validate(_at: &str, _sections: &[RateLimitSection]) -> Vec<Problem> {
        Vec::new()
    }

    /// `scope` names what owns the windows (route or consumer name) in counter keys.
    pub fn compile(
        _scope: &str,
        _sections: &[RateLimitSection],
        _store: &Arc<RateLimitStore>,
    ) -> Result<Self, Vec<Problem>> {
        Ok(RateLimits {})
    }

    /// Count this request in every window; refused if any window is over its limit.
    pub async fn check(&self, _subject: &Subject<'_>) -> RateDecision {
        RateDecision {
            allowed: true,
            limit: 0,
            remaining: 0,
            reset_secs: 0,
        }
    }
}
