//! The allowed range of every number in `tollgate.toml`, in one table.
//!
//! Each [`Range`] names the key path patterns it covers (`[]` stands for any list index, `*`
//! for any name) and its inclusive minimum and maximum. Validation checks every numeric value
//! with [`Range::check`], which reports `must be between MIN and MAX, got VALUE` at the exact
//! key path. `RANGES` lists them all; `docs/configuration-ranges.md` documents each one
//! with the reason for its ends, and a test below keeps the two identical.
//!
//! Why ranges at all: a value of the right type can still panic or abort at start (`threads =
//! 18446744073709551615` overflowed a capacity, a huge keepalive pool asked for exabytes),
//! overflow `Instant + duration` in a background loop, or be silently ignored by Pingora
//! (more than 256 request headers). The ends are chosen so that nothing in that list can
//! happen, and so that an operator never needs more.
//!
//! The checks run where each section is built (the features' `from_config`, called by the
//! assembler), with the constants of this table.
//!
//! A new numeric key gets a `pub(crate) const` here, an entry in `RANGES`, a row in the document
//! and a [`Range::check`] call where its section is built; the tests here (and `tests/it/config_bounds.rs`)
//! fail until they agree.

use super::types::{HumanDuration, HumanSize};
use super::Problem;
use std::cmp::Ordering;
use std::fmt;
use std::time::Duration;

/// One end of a range, or a value checked against one, in the unit of the key's type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// A plain integer.
    Int(u64),
    /// A size in bytes, written like `"64KiB"` or as a number of bytes.
    Size(u64),
    /// A duration, written like `"250ms"`, `"5s"`, `"1d"`.
    Time(Duration),
    /// A floating-point number.
    Float(f64),
}

impl Limit {
    /// The order of two values of the same kind; `None` for different kinds or NaN.
    fn compare(&self, other: &Limit) -> Option<Ordering> {
        match (self, other) {
            (Limit::Int(a), Limit::Int(b)) | (Limit::Size(a), Limit::Size(b)) => Some(a.cmp(b)),
            (Limit::Time(a), Limit::Time(b)) => Some(a.cmp(b)),
            (Limit::Float(a), Limit::Float(b)) => a.partial_cmp(b),
            _ => None,
        }
    }

    /// The kind's name, as the document's "type" column writes it.
    pub fn kind(&self) -> &'static str {
        match self {
            Limit::Int(_) => "integer",
            Limit::Size(_) => "size",
            Limit::Time(_) => "duration",
            Limit::Float(_) => "float",
        }
    }
}

/// Written the way the configuration file accepts it: sizes in the largest binary unit that
/// divides them (`"1MiB"`, else bytes: `"1B"`), durations in the largest unit that divides
/// them (`"1d"`, `"5m"`, `"100ms"`, `"0s"`; else humantime's form), floats with their
/// decimal point (`"10.0"`).
impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Int(n) => write!(f, "{n}"),
            // `{:?}` keeps the decimal point (`10.0`), which TOML needs for a float.
            Limit::Float(x) => write!(f, "{x:?}"),
            Limit::Size(n) => {
                const UNITS: [(&str, u64); 4] = [
                    ("TiB", 1 << 40),
                    ("GiB", 1 << 30),
                    ("MiB", 1 << 20),
                    ("KiB", 1 << 10),
                ];
                match UNITS.iter().find(|(_, u)| *n > 0 && n % u == 0) {
                    Some((name, u)) => write!(f, "{}{name}", n / u),
                    None => write!(f, "{n}B"),
                }
            }
            Limit::Time(d) => {
                const UNITS: [(&str, u128); 5] = [
                    ("d", 86_400_000),
                    ("h", 3_600_000),
                    ("m", 60_000),
                    ("s", 1_000),
                    ("ms", 1),
                ];
                if d.is_zero() {
                    return write!(f, "0s");
                }
                if d.subsec_nanos() % 1_000_000 == 0 {
                    let ms = d.as_millis();
                    if let Some((name, u)) = UNITS.iter().find(|(_, u)| ms % u == 0) {
                        return write!(f, "{}{name}", ms / u);
                    }
                }
                write!(f, "{}", humantime::format_duration(*d))
            }
        }
    }
}

impl From<u64> for Limit {
    fn from(n: u64) -> Self {
        Limit::Int(n)
    }
}

impl From<usize> for Limit {
    fn from(n: usize) -> Self {
        Limit::Int(u64::try_from(n).unwrap_or(u64::MAX))
    }
}

impl From<u32> for Limit {
    fn from(n: u32) -> Self {
        Limit::Int(n.into())
    }
}

impl From<u16> for Limit {
    fn from(n: u16) -> Self {
        Limit::Int(n.into())
    }
}

impl From<f64> for Limit {
    fn from(x: f64) -> Self {
        Limit::Float(x)
    }
}

impl From<HumanSize> for Limit {
    fn from(s: HumanSize) -> Self {
        Limit::Size(s.0)
    }
}

impl From<HumanDuration> for Limit {
    fn from(d: HumanDuration) -> Self {
        Limit::Time(d.0)
    }
}

impl From<Duration> for Limit {
    fn from(d: Duration) -> Self {
        Limit::Time(d)
    }
}

/// The inclusive range of one or more keys.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    /// Key path patterns it applies to: `[]` is any list index, `*` any name.
    pub keys: &'static [&'static str],
    /// The smallest value allowed.
    pub min: Limit,
    /// The largest value allowed.
    pub max: Limit,
}

impl Range {
    /// Whether `value` lies within the range (NaN and a value of another kind never do).
    pub fn contains(&self, value: impl Into<Limit>) -> bool {
        let v = value.into();
        matches!(
            v.compare(&self.min),
            Some(Ordering::Greater | Ordering::Equal)
        ) && matches!(v.compare(&self.max), Some(Ordering::Less | Ordering::Equal))
    }

    /// Push a problem at `at` (the concrete key path, e.g. `routes[2].retries`) when `value`
    /// is out of range. Returns whether it was in range, for checks that relate two keys.
    pub fn check(&self, at: &str, value: impl Into<Limit>, problems: &mut Vec<Problem>) -> bool {
        let v = value.into();
        let ok = self.contains(v);
        if !ok {
            problems.push(Problem::new(at, self.message(v)));
        }
        ok
    }

    /// `must be between MIN and MAX, got VALUE`.
    pub fn message(&self, value: Limit) -> String {
        format!("must be between {} and {}, got {value}", self.min, self.max)
    }
}

const fn int(min: u64, max: u64, keys: &'static [&'static str]) -> Range {
    Range {
        keys,
        min: Limit::Int(min),
        max: Limit::Int(max),
    }
}

const fn size(min: u64, max: u64, keys: &'static [&'static str]) -> Range {
    Range {
        keys,
        min: Limit::Size(min),
        max: Limit::Size(max),
    }
}

const fn time(min: Duration, max: Duration, keys: &'static [&'static str]) -> Range {
    Range {
        keys,
        min: Limit::Time(min),
        max: Limit::Time(max),
    }
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;
const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
const fn minutes(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}
const fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// Most retries a route may ask for; more only multiplies load during an outage.
pub(crate) const MAX_RETRIES: usize = 10;
/// Largest weight of one target (the round-robin table holds a target `weight` times).
pub(crate) const MAX_WEIGHT: usize = 1000;
/// NOTE(pingora-0.9): pingora-core/src/protocols/http/v1/common.rs `MAX_HEADERS`.
/// Most request headers Pingora's HTTP/1 parser accepts (`MAX_HEADERS` in pingora-core).
pub(crate) const PINGORA_MAX_HEADERS: u64 = 256;

/// Most worker threads per service.
pub use super::types::MAX_THREADS;

// [server]
pub(crate) const SERVER_THREADS: Range = int(1, MAX_THREADS as u64, &["server.threads"]);
pub(crate) const SERVER_GRACE_PERIOD: Range = time(Duration::ZERO, HOUR, &["server.grace_period"]);
pub(crate) const SERVER_GRACEFUL_SHUTDOWN_TIMEOUT: Range =
    time(Duration::ZERO, HOUR, &["server.graceful_shutdown_timeout"]);
pub(crate) const SERVER_UPSTREAM_KEEPALIVE_POOL_SIZE: Range =
    int(0, 10_000, &["server.upstream_keepalive_pool_size"]);
pub(crate) const SERVER_CLIENT_READ_BUFFER: Range = size(KIB, MIB, &["server.client_read_buffer"]);

// [access_log]
pub(crate) const ACCESS_LOG_BUFFER_LINES: Range = int(1, 1_000_000, &["access_log.buffer_lines"]);

// [tracing]
pub(crate) const TRACING_SAMPLE_RATIO: Range = Range {
    keys: &["tracing.sample_ratio"],
    min: Limit::Float(0.0),
    max: Limit::Float(1.0),
};
pub(crate) const TRACING_QUEUE_SIZE: Range = int(1, 1_000_000, &["tracing.queue_size"]);
pub(crate) const TRACING_BATCH_SIZE: Range = int(1, 10_000, &["tracing.batch_size"]);
pub(crate) const TRACING_FLUSH_INTERVAL: Range = time(
    Duration::from_millis(10),
    minutes(1),
    &["tracing.flush_interval"],
);
pub(crate) const TRACING_EXPORT_TIMEOUT: Range = time(
    Duration::from_millis(100),
    minutes(1),
    &["tracing.export_timeout"],
);

// [upstreams.NAME] and the route overrides of its timeouts
pub(crate) const TARGET_WEIGHT: Range =
    int(1, MAX_WEIGHT as u64, &["upstreams.*.targets[].weight"]);
pub(crate) const CONNECT_TIMEOUT: Range = time(
    MS,
    minutes(5),
    &["upstreams.*.connect_timeout", "routes[].connect_timeout"],
);
pub(crate) const READ_TIMEOUT: Range = time(
    MS,
    DAY,
    &["upstreams.*.read_timeout", "routes[].read_timeout"],
);
pub(crate) const DNS_REFRESH: Range = time(SECOND, DAY, &["upstreams.*.dns_refresh"]);
pub(crate) const RESOLVER_MIN_TTL: Range =
    time(Duration::from_millis(100), HOUR, &["resolver.min_ttl"]);
pub(crate) const RESOLVER_MAX_TTL: Range = time(SECOND, DAY, &["resolver.max_ttl"]);
pub(crate) const HEALTH_EXPECTED_STATUS: Range =
    int(200, 599, &["upstreams.*.health_check.expected_status"]);
pub(crate) const HEALTH_INTERVAL: Range = time(
    Duration::from_millis(100),
    DAY,
    &["upstreams.*.health_check.interval"],
);
pub(crate) const HEALTH_TIMEOUT: Range =
    time(MS, minutes(5), &["upstreams.*.health_check.timeout"]);
pub(crate) const HEALTH_THRESHOLD: Range = int(
    1,
    100,
    &[
        "upstreams.*.health_check.healthy_threshold",
        "upstreams.*.health_check.unhealthy_threshold",
    ],
);
pub(crate) const BREAKER_CONSECUTIVE_FAILURES: Range = int(
    1,
    1000,
    &["upstreams.*.circuit_breaker.consecutive_failures"],
);
pub(crate) const BREAKER_COOLDOWN: Range = time(MS, DAY, &["upstreams.*.circuit_breaker.cooldown"]);
pub(crate) const RETRY_BUDGET_RATIO: Range = Range {
    keys: &["upstreams.*.retry_budget.ratio"],
    min: Limit::Float(0.0),
    max: Limit::Float(10.0),
};
pub(crate) const RETRY_BUDGET_MIN_PER_SECOND: Range =
    int(0, 1_000_000, &["upstreams.*.retry_budget.min_per_second"]);
/// A fixed response's status: final responses only (1xx cannot end an exchange).
pub(crate) const RESPOND_STATUS: Range = int(
    200,
    599,
    &["upstreams.*.fallback.status", "routes[].respond.status"],
);

// [[routes]]
pub(crate) const ROUTE_RETRIES: Range = int(0, MAX_RETRIES as u64, &["routes[].retries"]);
pub(crate) const MAX_BODY_SIZE: Range =
    size(1, TIB, &["limits.max_body_size", "routes[].max_body_size"]);
pub(crate) const AGGREGATE_PART_TIMEOUT: Range =
    time(MS, minutes(5), &["routes[].aggregate.parts[].timeout"]);
pub(crate) const RATE_LIMIT_LIMIT: Range = int(
    1,
    1_000_000_000,
    &[
        "routes[].rate_limits[].limit",
        "consumers.*.rate_limits[].limit",
    ],
);
pub(crate) const RATE_LIMIT_WINDOW: Range = time(
    SECOND,
    DAY,
    &[
        "routes[].rate_limits[].window",
        "consumers.*.rate_limits[].window",
    ],
);
pub(crate) const CACHE_TTL: Range = time(SECOND, days(365), &["routes[].cache.ttl"]);
pub(crate) const CACHE_STALE: Range = time(
    Duration::ZERO,
    days(365),
    &[
        "routes[].cache.stale_while_revalidate",
        "routes[].cache.stale_if_error",
    ],
);
pub(crate) const CORS_MAX_AGE: Range = time(Duration::ZERO, DAY, &["routes[].cors.max_age"]);
pub(crate) const AUTH_TIMEOUT: Range = time(
    MS,
    minutes(1),
    &["auth.forward.*.timeout", "auth.introspection.*.timeout"],
);
pub(crate) const DECISION_TTL: Range = time(
    Duration::ZERO,
    DAY,
    &[
        "auth.forward.*.cache.ttl",
        "auth.forward.*.cache.negative_ttl",
        "auth.introspection.*.cache.ttl",
        "auth.introspection.*.cache.negative_ttl",
    ],
);
pub(crate) const DECISION_MAX_ENTRIES: Range = int(
    1,
    1_000_000,
    &[
        "auth.forward.*.cache.max_entries",
        "auth.introspection.*.cache.max_entries",
    ],
);
pub(crate) const WEBSOCKET_IDLE_TIMEOUT: Range =
    time(SECOND, DAY, &["routes[].websocket_idle_timeout"]);
pub(crate) const COMPRESSION_MIN_SIZE: Range = size(0, GIB, &["routes[].compression.min_size"]);

// [listeners.quic]
pub(crate) const QUIC_ALT_SVC_MAX_AGE: Range = time(
    Duration::ZERO,
    days(365),
    &["listeners[].quic.alt_svc_max_age"],
);
pub(crate) const QUIC_MAX_CONCURRENT_STREAMS: Range =
    int(1, 10_000, &["listeners[].quic.max_concurrent_streams"]);
pub(crate) const QUIC_IDLE_TIMEOUT: Range = time(SECOND, HOUR, &["listeners[].quic.idle_timeout"]);
pub(crate) const QUIC_MAX_HEADER_LIST_SIZE: Range =
    size(KIB, 512 * KIB, &["listeners[].quic.max_header_list_size"]);
pub(crate) const QUIC_MAX_HANDSHAKES_PER_IP: Range =
    int(1, 100_000, &["listeners[].quic.max_handshakes_per_ip"]);
pub(crate) const QUIC_RETRY_ABOVE: Range = int(0, 1_000_000, &["listeners[].quic.retry_above"]);
pub(crate) const QUIC_MAX_HANDSHAKES: Range =
    int(1, 1_000_000, &["listeners[].quic.max_handshakes"]);

// [limits]
pub(crate) const LIMITS_MAX_HEADER_BYTES: Range =
    size(KIB, 512 * KIB, &["limits.max_header_bytes"]);
pub(crate) const LIMITS_MAX_HEADERS: Range = int(1, PINGORA_MAX_HEADERS, &["limits.max_headers"]);
pub(crate) const LIMITS_HEADER_TIMEOUT: Range = time(MS, HOUR, &["limits.header_timeout"]);
pub(crate) const LIMITS_BODY_TIMEOUT: Range = time(MS, HOUR, &["limits.body_timeout"]);
pub(crate) const LIMITS_MAX_CONNECTIONS: Range = int(
    0,
    10_000_000,
    &["limits.max_connections", "limits.max_connections_per_ip"],
);
pub(crate) const LIMITS_KEEPALIVE_TIMEOUT: Range =
    time(SECOND, HOUR, &["limits.keepalive_timeout"]);
pub(crate) const LIMITS_H2_IDLE_TIMEOUT: Range = time(SECOND, DAY, &["limits.h2_idle_timeout"]);
pub(crate) const LIMITS_MAX_INFORMATIONAL: Range =
    int(0, 1000, &["limits.max_informational_responses"]);

// [auth.jwt.NAME]
pub(crate) const JWT_JWKS_REFRESH: Range = time(SECOND, DAY, &["auth.jwt.*.jwks_refresh"]);
pub(crate) const JWT_JWKS_MIN_REFRESH: Range = time(SECOND, HOUR, &["auth.jwt.*.jwks_min_refresh"]);
pub(crate) const JWT_LEEWAY: Range = time(Duration::ZERO, minutes(5), &["auth.jwt.*.leeway"]);
pub(crate) const JWT_CACHE_ENTRIES: Range = int(0, 1_000_000, &["auth.jwt.*.cache_entries"]);

// [rate_limit]
pub(crate) const REDIS_TIMEOUT: Range =
    time(MS, Duration::from_secs(5), &["rate_limit.redis_timeout"]);
pub(crate) const SYNC_INTERVAL: Range = time(
    Duration::from_millis(10),
    Duration::from_secs(10),
    &["rate_limit.sync_interval"],
);

// [cache]
pub(crate) const CACHE_MAX_SIZE: Range = size(KIB, 256 * GIB, &["cache.max_size"]);
pub(crate) const CACHE_MAX_OBJECT_SIZE: Range = size(1, GIB, &["cache.max_object_size"]);
pub(crate) const CACHE_LOCK_TIMEOUT: Range = time(MS, minutes(5), &["cache.lock_timeout"]);
pub(crate) const SHARED_CACHE_MAX_OBJECT: Range =
    size(KIB, 512 * MIB, &["cache.shared.max_object_size"]);
pub(crate) const SHARED_CACHE_MAX_TTL: Range = time(SECOND, days(30), &["cache.shared.max_ttl"]);
pub(crate) const SHARED_CACHE_TIMEOUT: Range =
    time(MS, Duration::from_secs(5), &["cache.shared.timeout"]);

/// Every range, in the document's order.
pub(crate) const RANGES: &[Range] = &[
    SERVER_THREADS,
    SERVER_GRACE_PERIOD,
    SERVER_GRACEFUL_SHUTDOWN_TIMEOUT,
    SERVER_UPSTREAM_KEEPALIVE_POOL_SIZE,
    SERVER_CLIENT_READ_BUFFER,
    ACCESS_LOG_BUFFER_LINES,
    TRACING_SAMPLE_RATIO,
    TRACING_QUEUE_SIZE,
    TRACING_BATCH_SIZE,
    TRACING_FLUSH_INTERVAL,
    TRACING_EXPORT_TIMEOUT,
    TARGET_WEIGHT,
    CONNECT_TIMEOUT,
    READ_TIMEOUT,
    DNS_REFRESH,
    RESOLVER_MIN_TTL,
    RESOLVER_MAX_TTL,
    HEALTH_EXPECTED_STATUS,
    HEALTH_INTERVAL,
    HEALTH_TIMEOUT,
    HEALTH_THRESHOLD,
    BREAKER_CONSECUTIVE_FAILURES,
    BREAKER_COOLDOWN,
    RETRY_BUDGET_RATIO,
    RETRY_BUDGET_MIN_PER_SECOND,
    RESPOND_STATUS,
    ROUTE_RETRIES,
    MAX_BODY_SIZE,
    AGGREGATE_PART_TIMEOUT,
    RATE_LIMIT_LIMIT,
    RATE_LIMIT_WINDOW,
    CACHE_TTL,
    COMPRESSION_MIN_SIZE,
    WEBSOCKET_IDLE_TIMEOUT,
    AUTH_TIMEOUT,
    DECISION_TTL,
    DECISION_MAX_ENTRIES,
    CACHE_STALE,
    CORS_MAX_AGE,
    LIMITS_MAX_HEADER_BYTES,
    LIMITS_MAX_HEADERS,
    LIMITS_HEADER_TIMEOUT,
    LIMITS_BODY_TIMEOUT,
    LIMITS_MAX_CONNECTIONS,
    LIMITS_KEEPALIVE_TIMEOUT,
    LIMITS_H2_IDLE_TIMEOUT,
    QUIC_ALT_SVC_MAX_AGE,
    QUIC_MAX_CONCURRENT_STREAMS,
    QUIC_IDLE_TIMEOUT,
    QUIC_MAX_HEADER_LIST_SIZE,
    QUIC_MAX_HANDSHAKES_PER_IP,
    QUIC_RETRY_ABOVE,
    QUIC_MAX_HANDSHAKES,
    LIMITS_MAX_INFORMATIONAL,
    JWT_JWKS_REFRESH,
    JWT_JWKS_MIN_REFRESH,
    JWT_LEEWAY,
    JWT_CACHE_ENTRIES,
    REDIS_TIMEOUT,
    SYNC_INTERVAL,
    CACHE_MAX_SIZE,
    CACHE_MAX_OBJECT_SIZE,
    CACHE_LOCK_TIMEOUT,
    SHARED_CACHE_MAX_OBJECT,
    SHARED_CACHE_MAX_TTL,
    SHARED_CACHE_TIMEOUT,
];

/// Every (key pattern, range) pair, one per documented row.
pub fn rows() -> impl Iterator<Item = (&'static str, &'static Range)> {
    RANGES
        .iter()
        .flat_map(|r| r.keys.iter().map(move |k| (*k, r)))
}

/// The range of the key pattern `key`, if it has one.
pub fn range_of(key: &str) -> Option<&'static Range> {
    rows().find(|(k, _)| *k == key).map(|(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    const DOC: &str = include_str!("../../docs/configuration-ranges.md");

    /// The rows of the document's tables: key to (type, min, max).
    fn doc_rows() -> BTreeMap<String, (String, String, String)> {
        let mut rows = BTreeMap::new();
        for line in DOC.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<String> = line
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect();
            assert!(cells.len() >= 6, "a row needs 6 cells: {line}");
            let previous = rows.insert(
                cells[0].clone(),
                (cells[1].clone(), cells[3].clone(), cells[4].clone()),
            );
            assert!(previous.is_none(), "{} is documented twice", cells[0]);
        }
        rows
    }

    /// Parse a documented end the way the configuration file would.
    fn parse_like_the_file(kind: &Limit, text: &str) -> Limit {
        let toml = match kind {
            Limit::Int(_) | Limit::Float(_) => format!("v = {text}"),
            Limit::Size(_) | Limit::Time(_) => format!("v = {text:?}"),
        };
        #[derive(serde::Deserialize)]
        struct V<T> {
            v: T,
        }
        match kind {
            Limit::Int(_) => Limit::Int(toml::from_str::<V<u64>>(&toml).unwrap().v),
            Limit::Float(_) => Limit::Float(toml::from_str::<V<f64>>(&toml).unwrap().v),
            Limit::Size(_) => toml::from_str::<V<HumanSize>>(&toml).unwrap().v.into(),
            Limit::Time(_) => toml::from_str::<V<HumanDuration>>(&toml).unwrap().v.into(),
        }
    }

    #[test]
    fn the_document_has_every_range_with_the_same_ends() {
        let doc = doc_rows();
        let mut keys = BTreeSet::new();
        for (key, range) in rows() {
            assert!(keys.insert(key), "{key} is in two ranges");
            let Some((kind, min, max)) = doc.get(key) else {
                panic!("{key} is not in docs/configuration-ranges.md");
            };
            assert_eq!(kind, range.min.kind(), "{key}: type");
            assert_eq!(min, &range.min.to_string(), "{key}: min");
            assert_eq!(max, &range.max.to_string(), "{key}: max");
            // What the document says can be written in the file, and means the same.
            assert_eq!(parse_like_the_file(&range.min, min), range.min, "{key}");
            assert_eq!(parse_like_the_file(&range.max, max), range.max, "{key}");
        }
        let extra: Vec<&String> = doc.keys().filter(|k| !keys.contains(k.as_str())).collect();
        assert!(
            extra.is_empty(),
            "documented but not in bounds::RANGES: {extra:?}"
        );
    }

    #[test]
    fn every_range_is_well_formed() {
        for r in RANGES {
            assert!(!r.keys.is_empty());
            assert_eq!(r.min.kind(), r.max.kind(), "{:?}", r.keys);
            assert!(
                matches!(
                    r.min.compare(&r.max),
                    Some(Ordering::Less | Ordering::Equal)
                ),
                "{:?}: min above max",
                r.keys
            );
            assert!(r.contains(r.min) && r.contains(r.max), "{:?}", r.keys);
        }
    }

    /// Where each struct of `file.rs` sits in the file, as key path prefixes. A struct with a
    /// numeric field must be listed here, and each of its numeric fields must have a range
    /// at every prefix.
    const PLACES: &[(&str, &[&str])] = &[
        ("ServerSection", &["server"]),
        ("QuicSection", &["listeners[].quic"]),
        ("ResolverSection", &["resolver"]),
        ("AccessLogSection", &["access_log"]),
        ("TracingSection", &["tracing"]),
        ("SharedCacheSection", &["cache.shared"]),
        ("UpstreamSection", &["upstreams.*"]),
        ("TargetSection", &["upstreams.*.targets[]"]),
        ("HealthCheckSection", &["upstreams.*.health_check"]),
        ("CircuitBreakerSection", &["upstreams.*.circuit_breaker"]),
        ("RetryBudgetSection", &["upstreams.*.retry_budget"]),
        (
            "RespondSection",
            &["upstreams.*.fallback", "routes[].respond"],
        ),
        ("RouteSection", &["routes[]"]),
        ("AggregatePartSection", &["routes[].aggregate.parts[]"]),
        (
            "RateLimitSection",
            &["routes[].rate_limits[]", "consumers.*.rate_limits[]"],
        ),
        ("RouteCacheSection", &["routes[].cache"]),
        ("CompressionSection", &["routes[].compression"]),
        ("ForwardAuthSection", &["auth.forward.*"]),
        ("IntrospectionSection", &["auth.introspection.*"]),
        (
            "DecisionCacheSection",
            &["auth.forward.*.cache", "auth.introspection.*.cache"],
        ),
        ("CorsSection", &["routes[].cors"]),
        ("LimitsSection", &["limits"]),
        ("JwtSection", &["auth.jwt.*"]),
        ("RateLimitBackendSection", &["rate_limit"]),
        ("CacheSection", &["cache"]),
    ];

    /// Whether a field type written in `file.rs` is a number.
    fn numeric(ty: &str) -> bool {
        let ty = ty
            .trim_end_matches(',')
            .trim_start_matches("Option<")
            .trim_end_matches('>');
        matches!(
            ty,
            "u8" | "u16"
                | "u32"
                | "u64"
                | "usize"
                | "i8"
                | "i16"
                | "i32"
                | "i64"
                | "isize"
                | "f32"
                | "f64"
                | "HumanSize"
                | "HumanDuration"
        )
    }

    #[test]
    fn every_numeric_field_of_the_file_model_has_a_range() {
        let source = include_str!("file.rs");
        let mut current: Option<&str> = None;
        let mut found = 0;
        for line in source.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("pub struct ") {
                current = rest.split([' ', '(', '{', '<']).next();
                continue;
            }
            if line.starts_with('}') {
                current = None;
                continue;
            }
            let field = line
                .strip_prefix("pub(crate) ")
                .or_else(|| line.strip_prefix("pub "));
            let (Some(strukt), Some(field)) = (current, field) else {
                continue;
            };
            let Some((name, ty)) = field.split_once(':') else {
                continue;
            };
            if !numeric(ty.trim()) {
                continue;
            }
            found += 1;
            let places = PLACES
                .iter()
                .find(|(s, _)| *s == strukt)
                .map(|(_, p)| *p)
                .unwrap_or_else(|| {
                    panic!("{strukt}.{name} is numeric: add {strukt} to PLACES and give it a range")
                });
            for place in places {
                let key = format!("{place}.{}", name.trim());
                assert!(
                    range_of(&key).is_some(),
                    "{key} ({strukt}.{name}: {}) has no range in bounds::RANGES",
                    ty.trim().trim_end_matches(',')
                );
            }
        }
        assert!(found > 40, "only {found} numeric fields found in file.rs");
    }

    #[test]
    fn messages_name_both_ends_and_the_value() {
        let mut p = Vec::new();
        assert!(!SERVER_THREADS.check("server.threads", usize::MAX, &mut p));
        assert!(SERVER_THREADS.check("server.threads", 4usize, &mut p));
        assert!(!RATE_LIMIT_WINDOW.check(
            "routes[0].rate_limits[1].window",
            Duration::from_secs(2 * 86_400),
            &mut p
        ));
        assert!(!SERVER_CLIENT_READ_BUFFER.check(
            "server.client_read_buffer",
            HumanSize(512),
            &mut p
        ));
        assert!(!RETRY_BUDGET_RATIO.check("upstreams.u.retry_budget.ratio", f64::NAN, &mut p));
        assert!(!CONNECT_TIMEOUT.check(
            "routes[0].connect_timeout",
            Duration::from_micros(500),
            &mut p
        ));
        let lines: Vec<String> = p
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect();
        assert_eq!(
            lines,
            [
                "server.threads: must be between 1 and 1024, got 18446744073709551615",
                "routes[0].rate_limits[1].window: must be between 1s and 1d, got 2d",
                "server.client_read_buffer: must be between 1KiB and 1MiB, got 512B",
                "upstreams.u.retry_budget.ratio: must be between 0.0 and 10.0, got NaN",
                "routes[0].connect_timeout: must be between 1ms and 5m, got 500us",
            ]
        );
    }
}
