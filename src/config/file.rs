//! What the user writes: the serde model of `tollgate.toml`.
//!
//! Every struct rejects unknown keys, and every default lives in one named function in
//! [`defaults`] so that `Default` impls and serde agree. Nothing here is checked beyond its
//! type (strings that mean something are the typed values of [`super::types`]); what the
//! values mean is checked where each feature builds its runtime form (`crate::assemble`).

use super::types::{
    AuthRef, CacheSharing, HashOn, Header, HeaderText, HostPattern, JwtAlgorithm, LogFormat,
    LogTarget, MethodName, RateKey, TlsVersion,
};
pub use super::types::{HumanDuration, HumanSize};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The whole configuration file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub listeners: Vec<ListenerSection>,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub access_log: AccessLogSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub tracing: Option<TracingSection>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSection>,
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    #[serde(default)]
    pub demo: Vec<DemoSection>,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub consumers: BTreeMap<String, ConsumerSection>,
    #[serde(default)]
    pub rate_limit: RateLimitBackendSection,
    #[serde(default)]
    pub security_headers: SecurityHeadersSection,
    #[serde(default)]
    pub resolver: ResolverSection,
    #[serde(default)]
    pub cache: CacheSection,
}

/// `[cache]`: the response cache shared by the routes that have a `[routes.cache]`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Most bytes held (bodies, headers and keys); least recently used entries go first.
    #[serde(default = "defaults::cache_max_size")]
    pub max_size: HumanSize,
    /// Largest response body stored; larger responses pass through uncached.
    #[serde(default = "defaults::cache_max_object_size")]
    pub max_object_size: HumanSize,
    /// How long requests for a key being fetched wait for that fetch before going upstream
    /// themselves.
    #[serde(default = "defaults::cache_lock_timeout")]
    pub lock_timeout: HumanDuration,
    /// A cache-control field meant for this gateway alone (RFC 9213 syntax): it takes
    /// precedence over `CDN-Cache-Control`, which takes precedence over `Cache-Control`.
    /// Both are removed from responses.
    #[serde(default = "defaults::cache_targeted_field")]
    pub targeted_field: Header,
    /// A second tier in Redis, shared by the fleet (`[cache.shared]`).
    #[serde(default)]
    pub shared: Option<SharedCacheSection>,
}

/// `[cache.shared]`: Redis behind the in-memory cache, with a fleet-wide fill lock and purges.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SharedCacheSection {
    /// `redis://HOST:PORT/DB`.
    pub redis: String,
    /// Prefix of every key (entries, locks, the purge channel).
    #[serde(default = "defaults::shared_cache_prefix")]
    pub key_prefix: String,
    /// Largest body written to Redis.
    #[serde(default = "defaults::shared_cache_max_object")]
    pub max_object_size: HumanSize,
    /// Longest an entry stays in Redis, whatever its freshness.
    #[serde(default = "defaults::shared_cache_max_ttl")]
    pub max_ttl: HumanDuration,
    /// Longest wait for one Redis call; after a failure Redis is skipped for a second.
    #[serde(default = "defaults::shared_cache_timeout")]
    pub timeout: HumanDuration,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            max_size: defaults::cache_max_size(),
            max_object_size: defaults::cache_max_object_size(),
            lock_timeout: defaults::cache_lock_timeout(),
            targeted_field: defaults::cache_targeted_field(),
            shared: None,
        }
    }
}

/// `[routes.cache]`: cache this route's GET and HEAD responses.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheSection {
    /// Freshness of responses that carry no `max-age`, `s-maxage` or `Expires` (for the
    /// statuses RFC 9110 calls heuristically cacheable). Absent: only what the origin
    /// allows is stored.
    #[serde(default)]
    pub ttl: Option<HumanDuration>,
    /// Requests with credentials: `"bypass"` (default), `"shared"` (one entry for every
    /// caller) or `"per_consumer"` (entries keyed by the authenticated consumer).
    #[serde(default)]
    pub authenticated: CacheSharing,
    /// Serve a stale entry while one request refreshes it (a response's own
    /// `stale-while-revalidate` wins).
    #[serde(default)]
    pub stale_while_revalidate: Option<HumanDuration>,
    /// Serve a stale entry when the upstream fails (a response's own `stale-if-error` wins).
    #[serde(default)]
    pub stale_if_error: Option<HumanDuration>,
}

/// `[resolver]`: how `NAME:PORT` targets and SRV names are resolved.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolverSection {
    /// A hosts file (`IP name...` lines) consulted before the system resolver.
    #[serde(default)]
    pub hosts_file: Option<String>,
    /// Name servers for `NAME:PORT` targets and SRV names (`IP` or `IP:PORT`); empty:
    /// `/etc/resolv.conf`.
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// A DNS answer is asked again after its TTL, but never sooner than this.
    #[serde(default = "defaults::min_ttl")]
    pub min_ttl: HumanDuration,
    /// ... and never later than this.
    #[serde(default = "defaults::max_ttl")]
    pub max_ttl: HumanDuration,
}

impl Default for ResolverSection {
    fn default() -> Self {
        ResolverSection {
            hosts_file: None,
            nameservers: Vec::new(),
            min_ttl: defaults::min_ttl(),
            max_ttl: defaults::max_ttl(),
        }
    }
}

/// `[security_headers]`: defaults added to every response unless the upstream set them.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityHeadersSection {
    /// `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`,
    /// `Referrer-Policy: strict-origin-when-cross-origin`.
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
    /// `Strict-Transport-Security` value, e.g. `"max-age=31536000; includeSubDomains"`; off when unset.
    #[serde(default)]
    pub hsts: Option<HeaderText>,
}

impl Default for SecurityHeadersSection {
    fn default() -> Self {
        SecurityHeadersSection {
            enabled: defaults::enabled(),
            hsts: None,
        }
    }
}

/// Header edits for one direction.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderEditsSection {
    /// Replace (or add) these headers.
    #[serde(default)]
    pub set: BTreeMap<Header, HeaderText>,
    /// Add these values, keeping existing ones.
    #[serde(default)]
    pub append: BTreeMap<Header, HeaderText>,
    #[serde(default)]
    pub remove: Vec<Header>,
    /// Old name to new name.
    #[serde(default)]
    pub rename: BTreeMap<Header, Header>,
}

/// `rewrite_regex = { pattern = "^/users/(\\d+)$", replace = "/v2/users/$1" }`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegexRewriteSection {
    pub pattern: String,
    pub replace: String,
}

/// `[server]`: process-wide settings, turned into Pingora's `ServerConf`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    #[serde(default = "defaults::threads")]
    pub threads: usize,
    #[serde(default = "defaults::work_stealing")]
    pub work_stealing: bool,
    #[serde(default = "defaults::pid_file")]
    pub pid_file: String,
    #[serde(default = "defaults::upgrade_sock")]
    pub upgrade_sock: String,
    /// Where the daemon's stderr goes when running with `-d`.
    #[serde(default)]
    pub error_log: Option<String>,
    /// How long an old instance keeps serving in-flight requests after handing over its
    /// sockets or receiving SIGTERM.
    #[serde(default = "defaults::grace_period")]
    pub grace_period: HumanDuration,
    /// How long services get to stop after the grace period.
    #[serde(default = "defaults::graceful_shutdown_timeout")]
    pub graceful_shutdown_timeout: HumanDuration,
    #[serde(default = "defaults::upstream_keepalive_pool_size")]
    pub upstream_keepalive_pool_size: usize,
    /// Read buffer of each TLS client connection, so OpenSSL reads a record in one read.
    /// Pingora's default is 64 KiB, held by every connection. Plain connections have none:
    /// they read straight into the request parser.
    #[serde(default = "defaults::client_read_buffer")]
    pub client_read_buffer: HumanSize,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            threads: defaults::threads(),
            work_stealing: defaults::work_stealing(),
            pid_file: defaults::pid_file(),
            upgrade_sock: defaults::upgrade_sock(),
            error_log: None,
            grace_period: defaults::grace_period(),
            graceful_shutdown_timeout: defaults::graceful_shutdown_timeout(),
            upstream_keepalive_pool_size: defaults::upstream_keepalive_pool_size(),
            client_read_buffer: defaults::client_read_buffer(),
        }
    }
}

/// `[[listeners]]`: an HTTP listener, TLS when it has a `[listeners.tls]` section.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub address: String,
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// Overrides `limits.underscore_headers` for this listener.
    #[serde(default)]
    pub underscore_headers: Option<UnderscoreHeaders>,
    /// Read the client's address from a PROXY protocol header (v1 or v2) sent by the L4
    /// balancer in front, before TLS.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocolSection>,
    /// Accept HTTP/2 with prior knowledge (h2c) on this plain listener, beside HTTP/1:
    /// gRPC clients without TLS speak it.
    #[serde(default)]
    pub h2c: bool,
}

/// `[listeners.proxy_protocol]`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocolSection {
    /// The balancers: CIDRs whose connections may carry a header. A header from any other
    /// peer is never believed.
    pub from: Vec<String>,
    /// Refuse connections without a header, and connections from peers outside `from`.
    /// `false`: serve those as direct clients (their own address), e.g. for health checks
    /// that bypass the balancer.
    #[serde(default = "defaults::enabled")]
    pub required: bool,
}

/// A failure that `retry_on` lists.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetryCondition {
    Connect,
    Timeout,
    Reset,
    #[serde(rename = "5xx")]
    Status5xx,
}

/// What to do with request header names that contain `_`.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnderscoreHeaders {
    /// Remove them before anything reads the request (nginx and Envoy do this).
    #[default]
    Drop,
    /// Refuse the request with 400.
    Reject,
    /// Keep them.
    Allow,
}

/// `[listeners.tls]`: TLS termination.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Certificates, chosen by SNI; the first is the default for unknown or absent names.
    pub certificates: Vec<CertificateSection>,
    /// `"1.2"` (TLS 1.2 and 1.3) or `"1.3"` (1.3 only).
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Offer HTTP/2 by ALPN.
    #[serde(default = "defaults::enabled")]
    pub h2: bool,
}

/// One certificate of a TLS listener.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateSection {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// Server names it serves (exact or `*.example.com`).
    #[serde(default)]
    pub names: Vec<HostPattern>,
}

/// `[admin]`: the operator listener serving `/health` and `/metrics`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    #[serde(default = "defaults::admin_address")]
    pub address: String,
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            address: defaults::admin_address(),
            enabled: defaults::enabled(),
        }
    }
}

/// `[log]`: the diagnostic log (stderr, or `server.error_log`).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `"text"` (one line per event) or `"json"` (one JSON object per line).
    #[serde(default)]
    pub format: LogFormat,
}

/// `[tracing]`: W3C trace context and OpenTelemetry spans exported over OTLP/HTTP
/// (protobuf). Without the section the gateway passes `traceparent` through untouched.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingSection {
    /// The collector's OTLP/HTTP traces URL, e.g. `"http://127.0.0.1:4318/v1/traces"`.
    pub endpoint: String,
    /// Share of new traces recorded (0.0 to 1.0); a request that arrives with a
    /// `traceparent` follows its sampled flag.
    #[serde(default = "defaults::sample_ratio")]
    pub sample_ratio: f64,
    /// `service.name` of the exported spans.
    #[serde(default = "defaults::service_name")]
    pub service_name: String,
    /// Spans waiting for export; when full, new spans are dropped and counted.
    #[serde(default = "defaults::tracing_queue")]
    pub queue_size: usize,
    /// Most spans in one export request.
    #[serde(default = "defaults::tracing_batch")]
    pub batch_size: usize,
    /// How often queued spans are exported.
    #[serde(default = "defaults::tracing_flush")]
    pub flush_interval: HumanDuration,
    /// How long one export request may take.
    #[serde(default = "defaults::tracing_timeout")]
    pub export_timeout: HumanDuration,
    /// Headers sent with each export request (a collector's API key, say).
    #[serde(default)]
    pub headers: BTreeMap<Header, HeaderText>,
}

/// `[access_log]`: one JSON line per request.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    /// `"stdout"`, `"off"`, or a file path (appended to).
    #[serde(default = "defaults::access_log_target")]
    pub target: LogTarget,
    /// Lines queued for the writer before new ones are dropped (and counted).
    #[serde(default = "defaults::access_log_buffer")]
    pub buffer_lines: usize,
    /// The fields each line carries (default: all of them), e.g.
    /// `["time", "request_id", "route", "status", "duration_us"]`.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// Query parameters whose values the `query` field shows as `REDACTED` (names compared
    /// without case).
    #[serde(default = "defaults::redact_query")]
    pub redact_query: Vec<String>,
}

impl Default for AccessLogSection {
    fn default() -> Self {
        AccessLogSection {
            target: defaults::access_log_target(),
            buffer_lines: defaults::access_log_buffer(),
            fields: None,
            redact_query: defaults::redact_query(),
        }
    }
}

/// `[upstreams.NAME]`: a group of interchangeable targets.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    #[serde(default)]
    pub policy: BalancePolicy,
    /// For `consistent_hash`: `"header:NAME"`, `"cookie:NAME"` or `"client_ip"`.
    #[serde(default)]
    pub hash_on: Option<HashOn>,
    /// The targets; or none, with `targets_file`.
    #[serde(default)]
    pub targets: Vec<TargetSection>,
    /// Take the targets from this file (JSON or TOML, `address`, `weight`, `metadata`),
    /// re-read within a second of a change; a broken file keeps the last good targets.
    #[serde(default)]
    pub targets_file: Option<String>,
    /// Take the targets from this DNS SRV name (`_http._tcp.orders.service.consul`):
    /// address and port from each record, its weight, and its priority (the lowest
    /// priority with a healthy target takes the traffic).
    #[serde(default)]
    pub srv: Option<String>,
    /// Take the targets from the keys under a prefix in etcd v3, watched.
    #[serde(default)]
    pub etcd: Option<EtcdSection>,
    #[serde(default)]
    pub health_check: Option<HealthCheckSection>,
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: HumanDuration,
    #[serde(default = "defaults::read_timeout")]
    pub read_timeout: HumanDuration,
    /// Passive health: open a target's breaker after consecutive failures.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerSection>,
    /// Answer with this when no target is available, instead of a 503 error.
    #[serde(default)]
    pub fallback: Option<RespondSection>,
    /// Retries may add at most this share of the group's requests (plus a floor).
    #[serde(default)]
    pub retry_budget: RetryBudgetSection,
    /// The longest a `NAME:PORT` answer is used before it is asked again (its DNS TTL may
    /// make that sooner).
    #[serde(default = "defaults::dns_refresh")]
    pub dns_refresh: HumanDuration,
    /// Connect to the targets over TLS.
    #[serde(default)]
    pub tls: Option<UpstreamTlsSection>,
    /// Speak HTTP/2 to the targets (ALPN over TLS, prior knowledge without).
    #[serde(default)]
    pub h2: bool,
}

/// `[upstreams.NAME.etcd]`: targets registered in etcd, one key per instance with a JSON
/// value `{"address": "IP:PORT", "weight": 1}`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    /// Client URLs of the etcd cluster, tried in turn: `["http://10.0.0.5:2379"]`.
    pub endpoints: Vec<String>,
    /// The key prefix of the service's instances: `"/services/orders/"`.
    pub prefix: String,
}

/// `[upstreams.NAME.tls]`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSection {
    /// Server name sent and verified; defaults to none (then only the CA chain is checked
    /// when `verify_hostname` is off) - set it.
    #[serde(default)]
    pub sni: Option<String>,
    /// PEM bundle of CAs trusted for the targets (default: the system's).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Verify the target's certificate chain and name. Turn off only for testing.
    #[serde(default = "defaults::enabled")]
    pub verify: bool,
    /// Client certificate (PEM chain) and key for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
}

/// `[upstreams.NAME.circuit_breaker]`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerSection {
    /// Consecutive failures that open the breaker.
    #[serde(default = "defaults::breaker_failures")]
    pub consecutive_failures: u32,
    /// How long an open breaker keeps the target out before one probe request.
    #[serde(default = "defaults::breaker_cooldown")]
    pub cooldown: HumanDuration,
    /// Whether 5xx responses count as failures (connect errors and timeouts always do).
    #[serde(default = "defaults::enabled")]
    pub on_5xx: bool,
}

/// `[upstreams.NAME.retry_budget]`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetSection {
    /// Retries per second may reach this fraction of requests per second...
    #[serde(default = "defaults::retry_ratio")]
    pub ratio: f64,
    /// ...or this many, whichever is more.
    #[serde(default = "defaults::retry_min_per_second")]
    pub min_per_second: u64,
}

impl Default for RetryBudgetSection {
    fn default() -> Self {
        RetryBudgetSection {
            ratio: defaults::retry_ratio(),
            min_per_second: defaults::retry_min_per_second(),
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BalancePolicy {
    #[default]
    RoundRobin,
    LeastConnections,
    ConsistentHash,
}

/// One upstream instance.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// `IP:PORT`, or `NAME:PORT` resolved through DNS (every `dns_refresh`).
    pub address: String,
    #[serde(default = "defaults::weight")]
    pub weight: usize,
}

/// `[upstreams.NAME.health_check]`: active checks run in the background.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    #[serde(default)]
    pub kind: HealthCheckKind,
    /// HTTP only: the path requested.
    #[serde(default = "defaults::health_path")]
    pub path: String,
    /// HTTP and gRPC: the `Host` header (HTTP/2 `:authority`) sent.
    #[serde(default = "defaults::health_host")]
    pub host: String,
    /// HTTP only: the status that counts as healthy.
    #[serde(default = "defaults::health_status")]
    pub expected_status: u16,
    /// gRPC only: the service asked about in `grpc.health.v1.Health/Check`; empty: the
    /// server as a whole.
    #[serde(default)]
    pub service: String,
    #[serde(default = "defaults::health_interval")]
    pub interval: HumanDuration,
    #[serde(default = "defaults::health_timeout")]
    pub timeout: HumanDuration,
    /// Consecutive successes that bring an unhealthy target back (HAProxy's `rise`).
    #[serde(default = "defaults::healthy_threshold")]
    pub healthy_threshold: usize,
    /// Consecutive failures that take a healthy target out (HAProxy's `fall`).
    #[serde(default = "defaults::unhealthy_threshold")]
    pub unhealthy_threshold: usize,
    /// A target that appears (at start-up, or from discovery): `healthy` serves it until a
    /// check says otherwise; `after_check` only once one of its checks passed.
    #[serde(default)]
    pub new_targets: NewTargets,
}

/// How a target the health checks have not seen yet is treated.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NewTargets {
    #[default]
    Healthy,
    AfterCheck,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    #[default]
    Http,
    Tcp,
    /// The standard `grpc.health.v1.Health/Check` over HTTP/2 (the group needs `h2`):
    /// healthy when it answers `SERVING`.
    Grpc,
}

/// `[[routes]]`: what to match and what to do with a match.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub name: String,
    /// Exact host names or `*.suffix` wildcards; empty matches any host.
    #[serde(default)]
    pub hosts: Vec<HostPattern>,
    /// Matches this path and everything below it (segment-aware: `/api` does not match `/apix`).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Matches only this exact path.
    #[serde(default)]
    pub path: Option<String>,
    /// Empty matches any method.
    #[serde(default)]
    pub methods: Vec<MethodName>,
    /// Header name to exact value; all must match.
    #[serde(default)]
    pub headers: BTreeMap<Header, HeaderText>,
    /// The upstream group to proxy to (exclusive with `respond`).
    #[serde(default)]
    pub upstream: Option<String>,
    /// Remove the matched `path_prefix` before proxying.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the matched `path_prefix` (or exact `path`) with this before proxying.
    #[serde(default)]
    pub rewrite_prefix: Option<String>,
    /// Overrides the upstream group's connect timeout.
    #[serde(default)]
    pub connect_timeout: Option<HumanDuration>,
    /// Overrides the upstream group's read timeout.
    #[serde(default)]
    pub read_timeout: Option<HumanDuration>,
    /// Extra attempts on another target, for the failures in `retry_on` (idempotent
    /// methods only, unless `retry_unsent` and the request never left the gateway).
    #[serde(default = "defaults::retries")]
    pub retries: usize,
    /// Also retry non-idempotent requests when connecting failed (the request never left
    /// the gateway).
    #[serde(default)]
    pub retry_unsent: bool,
    /// Which failures are retried: `"connect"` (no connection), `"timeout"` (no answer
    /// within the read timeout), `"reset"` (connection closed before an answer), `"5xx"`.
    #[serde(default = "defaults::retry_on")]
    pub retry_on: Vec<RetryCondition>,
    /// Accept `%2F` and `%5C` in the path and pass them on encoded (refused with 400
    /// otherwise). Only for upstreams that do not decode them into separators.
    #[serde(default)]
    pub allow_encoded_slashes: bool,
    /// Answer directly, without an upstream.
    #[serde(default)]
    pub respond: Option<RespondSection>,
    /// Fan out to several upstream calls and merge their JSON (exclusive with `upstream`
    /// and `respond`).
    #[serde(default)]
    pub aggregate: Option<AggregateSection>,
    /// Accepted authentication methods: `"jwt:PROVIDER"` or `"api_key"`; any one suffices.
    /// Empty: the route is public.
    #[serde(default)]
    pub auth: Vec<AuthRef>,
    /// Roles of which the caller needs at least one (any-of). Needs `auth`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Rate limits of this route; every one must admit the request.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitSection>,
    /// CIDR allow list for this route (added to the global one).
    #[serde(default)]
    pub ip_allow: Vec<String>,
    /// CIDR deny list for this route (added to the global one).
    #[serde(default)]
    pub ip_deny: Vec<String>,
    /// CORS policy; absent: no CORS headers and preflights are proxied like any request.
    #[serde(default)]
    pub cors: Option<CorsSection>,
    /// Overrides `limits.max_body_size` for this route.
    #[serde(default)]
    pub max_body_size: Option<HumanSize>,
    /// Edits to the request sent upstream.
    #[serde(default)]
    pub request_headers: HeaderEditsSection,
    /// Edits to the response sent to the client.
    #[serde(default)]
    pub response_headers: HeaderEditsSection,
    /// Rewrite the path with a regex (captures as `$1`, `${name}`); exclusive with
    /// `strip_prefix`/`rewrite_prefix`.
    #[serde(default)]
    pub rewrite_regex: Option<RegexRewriteSection>,
    /// Overrides `[security_headers] enabled` for this route.
    #[serde(default)]
    pub security_headers: Option<bool>,
    /// Rename top-level JSON fields of request bodies: old name to new name.
    #[serde(default)]
    pub json_rename_request: BTreeMap<String, String>,
    /// Rename top-level JSON fields of response bodies.
    #[serde(default)]
    pub json_rename_response: BTreeMap<String, String>,
    /// Cache GET/HEAD responses (proxied routes only).
    #[serde(default)]
    pub cache: Option<RouteCacheSection>,
    /// Compress responses for clients that accept it (gzip, brotli, zstd).
    #[serde(default)]
    pub compression: Option<CompressionSection>,
    /// How long an upgraded (WebSocket) connection may stay silent in both directions
    /// before it is closed; `read_timeout` applies to requests, not to these.
    #[serde(default = "defaults::websocket_idle_timeout")]
    pub websocket_idle_timeout: HumanDuration,
    /// Bridge gRPC-Web (`application/grpc-web`, `application/grpc-web-text`) from browsers
    /// to the upstream's plain gRPC over HTTP/2 (the group needs `h2`).
    #[serde(default)]
    pub grpc_web: bool,
    /// Answer HTTP/JSON calls by calling the upstream's gRPC methods.
    #[serde(default)]
    pub transcode: Option<TranscodeSection>,
}

/// `[routes.transcode]`: HTTP/JSON to gRPC.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TranscodeSection {
    /// The services' descriptor set (`protoc --include_imports --descriptor_set_out=FILE`).
    pub descriptor: String,
    /// The services whose `google.api.http` rules bind; empty: every service in the set.
    #[serde(default)]
    pub services: Vec<String>,
    /// Bindings for methods without a `google.api.http` rule.
    #[serde(default)]
    pub methods: Vec<TranscodeMethodSection>,
}

/// `[[routes.transcode.methods]]`: one HTTP method and path template to one gRPC method.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TranscodeMethodSection {
    /// The HTTP method, upper-case.
    pub method: String,
    /// A path template: `/v1/shelves/{shelf}/books/{id}`; `{field}` captures one segment,
    /// `{field=**}` the rest.
    pub path: String,
    /// `package.Service/Method`.
    pub grpc: String,
    /// Where the JSON body goes: `"*"` the whole request message, a field name that field,
    /// `""` nowhere (fields come from the path and query).
    #[serde(default)]
    pub body: String,
}

/// `[routes.compression]`: compress this route's responses by the client's `Accept-Encoding`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompressionSection {
    /// The codings offered, the gateway's preference first (it breaks ties between
    /// codings the client weighs equally).
    #[serde(default = "defaults::compression_algorithms")]
    pub algorithms: Vec<ContentCoding>,
    /// Responses whose `Content-Length` is below this are sent as they are.
    #[serde(default = "defaults::compression_min_size")]
    pub min_size: HumanSize,
    /// Media types compressed: exact (`application/json`) or a whole family (`text/*`).
    #[serde(default = "defaults::compression_content_types")]
    pub content_types: Vec<String>,
}

/// A content coding the gateway can compress with.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContentCoding {
    Gzip,
    #[serde(rename = "br")]
    Brotli,
    Zstd,
}

/// `[routes.aggregate]`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateSection {
    /// Regex over the request path whose captures (`$1`, `${name}`) fill part paths.
    #[serde(default)]
    pub capture: Option<String>,
    pub parts: Vec<AggregatePartSection>,
}

/// `[[routes.aggregate.parts]]`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregatePartSection {
    /// Key of this part in the merged document.
    pub name: String,
    pub upstream: String,
    /// Path and query sent upstream, e.g. `"/users/${user}"`.
    pub path: String,
    #[serde(default = "defaults::part_timeout")]
    pub timeout: HumanDuration,
}

/// `[routes.respond]`: a fixed response.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RespondSection {
    #[serde(default = "defaults::respond_status")]
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<Header, HeaderText>,
    #[serde(default)]
    pub body: String,
}

/// `[[demo]]`: a built-in backend the binary starts itself, so the example configuration
/// shows proxying, balancing and health checks with nothing else running.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DemoSection {
    pub name: String,
    pub address: String,
}

/// `[limits]`: protection for the listener, applied before routing.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Largest request head (request line plus headers); more is refused with 431.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: HumanSize,
    /// Most request headers; more is refused with 431.
    #[serde(default = "defaults::max_headers")]
    pub max_headers: usize,
    /// Largest request body, by Content-Length or counted while streaming (413).
    #[serde(default = "defaults::max_body_size")]
    pub max_body_size: HumanSize,
    /// Total time a client gets to send the request head (408); also an HTTP/2 preface or
    /// header block, and the TLS handshake (closed).
    #[serde(default = "defaults::header_timeout")]
    pub header_timeout: HumanDuration,
    /// Longest pause between two reads of the request body (408).
    #[serde(default = "defaults::body_timeout")]
    pub body_timeout: HumanDuration,
    /// Most open client connections in all; 0: unlimited.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Most open client connections from one IP; 0: unlimited.
    #[serde(default = "defaults::max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Peers whose `X-Forwarded-For` is believed (CIDRs).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Global CIDR allow list; empty: everyone not denied.
    #[serde(default)]
    pub ip_allow: Vec<String>,
    /// Global CIDR deny list.
    #[serde(default)]
    pub ip_deny: Vec<String>,
    /// Merge repeated slashes in the path (`/a//b` is `/a/b`) before routing.
    #[serde(default = "defaults::enabled")]
    pub merge_slashes: bool,
    /// Request header names with `_`: `"drop"`, `"reject"` (400) or `"allow"`.
    #[serde(default)]
    pub underscore_headers: UnderscoreHeaders,
    /// How long an idle HTTP/1 client connection is kept open between requests.
    #[serde(default = "defaults::keepalive_timeout")]
    pub keepalive_timeout: HumanDuration,
    /// How long an HTTP/2 client connection with no open stream is kept (an unfinished
    /// header block is closed sooner, by `header_timeout`).
    #[serde(default = "defaults::h2_idle_timeout")]
    pub h2_idle_timeout: HumanDuration,
    /// Informational (1xx) responses relayed per request; an upstream that sends more is a
    /// 502.
    #[serde(default = "defaults::max_informational_responses")]
    pub max_informational_responses: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_header_bytes: defaults::max_header_bytes(),
            max_headers: defaults::max_headers(),
            max_body_size: defaults::max_body_size(),
            header_timeout: defaults::header_timeout(),
            body_timeout: defaults::body_timeout(),
            max_connections: defaults::max_connections(),
            max_connections_per_ip: defaults::max_connections_per_ip(),
            trusted_proxies: Vec::new(),
            ip_allow: Vec::new(),
            ip_deny: Vec::new(),
            merge_slashes: defaults::enabled(),
            underscore_headers: UnderscoreHeaders::default(),
            keepalive_timeout: defaults::keepalive_timeout(),
            h2_idle_timeout: defaults::h2_idle_timeout(),
            max_informational_responses: defaults::max_informational_responses(),
        }
    }
}

/// `[auth]`: authentication providers routes refer to.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Named JWT providers: `[auth.jwt.NAME]`, referred to as `"jwt:NAME"`.
    #[serde(default)]
    pub jwt: BTreeMap<String, JwtSection>,
    #[serde(default)]
    pub api_key: ApiKeySection,
    /// Named auth services the gateway asks: `[auth.forward.NAME]`, referred to as
    /// `"forward:NAME"`.
    #[serde(default)]
    pub forward: BTreeMap<String, ForwardAuthSection>,
    /// Named OAuth 2.0 introspection endpoints (RFC 7662): `[auth.introspection.NAME]`,
    /// referred to as `"introspection:NAME"`.
    #[serde(default)]
    pub introspection: BTreeMap<String, IntrospectionSection>,
    /// Client-sent headers always removed before the gateway sets its own identity headers,
    /// in addition to every header an auth provider maps.
    #[serde(default = "defaults::identity_headers")]
    pub strip_headers: Vec<Header>,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            jwt: BTreeMap::new(),
            api_key: ApiKeySection::default(),
            forward: BTreeMap::new(),
            introspection: BTreeMap::new(),
            strip_headers: defaults::identity_headers(),
        }
    }
}

/// `[auth.forward.NAME]`: an auth service asked about each request (Traefik's ForwardAuth,
/// Envoy's ext_authz).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthSection {
    /// The upstream group of the auth service (balancing, health checks, breaker, TLS).
    pub upstream: String,
    /// Path (and query) of the check on the auth service.
    #[serde(default = "defaults::forward_auth_path")]
    pub path: String,
    /// Method of the check.
    #[serde(default = "defaults::forward_auth_method")]
    pub method: MethodName,
    /// Client request headers copied to the check; the decision is cached by exactly these.
    #[serde(default = "defaults::forward_auth_copy_headers")]
    pub copy_headers: Vec<Header>,
    /// Whether the decision depends on the client's method and path (sent as
    /// `X-Forwarded-Method` and `X-Forwarded-Uri`): then they are part of the cache key.
    #[serde(default = "defaults::enabled")]
    pub decision_per_path: bool,
    /// Headers of a 2xx answer passed to the upstream as identity headers (client-sent
    /// copies are removed from every request).
    #[serde(default)]
    pub identity_headers: Vec<Header>,
    /// The answer header naming the caller: the subject roles, rate limits and purges use.
    #[serde(default)]
    pub subject_header: Option<Header>,
    /// The answer header listing the caller's roles, comma-separated.
    #[serde(default)]
    pub roles_header: Option<Header>,
    /// Headers of a 401, 403 or 3xx answer passed to the client with its status.
    #[serde(default = "defaults::forward_auth_client_headers")]
    pub client_headers: Vec<Header>,
    /// Pass the body of a 401, 403 or 3xx answer to the client (otherwise the gateway's own
    /// JSON error, so nothing of the auth service leaks).
    #[serde(default)]
    pub forward_denial_body: bool,
    /// How long the check may take.
    #[serde(default = "defaults::forward_auth_timeout")]
    pub timeout: HumanDuration,
    /// When the service fails or answers anything else: `"deny"` (503, the default) or
    /// `"allow"` (admit without an identity).
    #[serde(default)]
    pub on_error: AuthErrorPolicy,
    /// Cache decisions; absent: ask for every request.
    #[serde(default)]
    pub cache: Option<DecisionCacheSection>,
}

/// `[auth.introspection.NAME]`: opaque bearer tokens checked at an RFC 7662 endpoint.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionSection {
    /// The upstream group of the authorization server.
    pub upstream: String,
    /// Path of the introspection endpoint.
    pub path: String,
    /// The gateway's client credentials (HTTP Basic).
    pub client_id: String,
    /// The client secret is read from this environment variable...
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// ...or from this file (trailing newline trimmed). Never inline.
    #[serde(default)]
    pub client_secret_file: Option<String>,
    /// Required in `aud` (a string or a list), when set.
    #[serde(default)]
    pub audience: Option<String>,
    /// Required as `iss`, when set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// The claim holding the caller's roles (a space-separated string or a list).
    #[serde(default = "defaults::introspection_roles_claim")]
    pub roles_claim: String,
    /// Claims passed upstream: claim name to header name.
    #[serde(default)]
    pub claims: BTreeMap<String, Header>,
    /// How long the check may take.
    #[serde(default = "defaults::forward_auth_timeout")]
    pub timeout: HumanDuration,
    /// When the server fails: `"deny"` (503, the default) or `"allow"`.
    #[serde(default)]
    pub on_error: AuthErrorPolicy,
    /// Cache decisions; absent: ask for every request.
    #[serde(default)]
    pub cache: Option<DecisionCacheSection>,
}

/// What a route does when its auth service cannot answer.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthErrorPolicy {
    /// 503: nobody gets in while the service is down.
    #[default]
    Deny,
    /// Admitted without an identity (a route's `roles` still refuse it).
    Allow,
}

/// `[auth.forward.NAME.cache]`, `[auth.introspection.NAME.cache]`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionCacheSection {
    /// Longest life of an admitted decision; shorter when the token's `exp` or the
    /// answer's `Cache-Control: max-age` says so.
    #[serde(default = "defaults::decision_ttl")]
    pub ttl: HumanDuration,
    /// Life of a refused decision (401/403).
    #[serde(default = "defaults::decision_negative_ttl")]
    pub negative_ttl: HumanDuration,
    /// Decisions kept, least recently used first out.
    #[serde(default = "defaults::decision_max_entries")]
    pub max_entries: usize,
}

/// `[auth.jwt.NAME]`: one token issuer and how to verify its tokens.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtSection {
    /// Accepted algorithms, pinned: `HS256`, `RS256`, `PS256`, `ES256`, `EdDSA`, ...
    pub algorithms: Vec<JwtAlgorithm>,
    /// HS*: the secret is read from this environment variable...
    #[serde(default)]
    pub secret_env: Option<String>,
    /// ...or from this file (trailing newline trimmed). Never inline.
    #[serde(default)]
    pub secret_file: Option<String>,
    /// PEM public keys (RSA, EC or Ed25519), tried in order when the token has no `kid`.
    #[serde(default)]
    pub public_key_files: Vec<String>,
    /// A JWKS document on disk.
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// A JWKS URL, fetched at start and refreshed in the background.
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default = "defaults::jwks_refresh")]
    pub jwks_refresh: HumanDuration,
    /// Least time between two refreshes triggered by an unknown `kid`.
    #[serde(default = "defaults::jwks_min_refresh")]
    pub jwks_min_refresh: HumanDuration,
    /// Required `iss`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted `aud` values (any one).
    #[serde(default)]
    pub audience: Vec<String>,
    /// Clock skew allowed for `exp` and `nbf`.
    #[serde(default = "defaults::jwt_leeway")]
    pub leeway: HumanDuration,
    /// Claim holding roles (array or space-separated string); dots walk objects.
    #[serde(default = "defaults::roles_claim")]
    pub roles_claim: String,
    /// Header set upstream from `sub`.
    #[serde(default = "defaults::subject_header")]
    pub subject_header: Header,
    /// Header set upstream from the roles claim (comma-separated).
    #[serde(default = "defaults::roles_header")]
    pub roles_header: Header,
    /// Further claims copied to upstream headers: claim name to header name.
    #[serde(default)]
    pub claim_headers: BTreeMap<String, Header>,
    /// Verified tokens remembered (bounded, never past `exp`); 0 turns the cache off.
    #[serde(default = "defaults::jwt_cache_entries")]
    pub cache_entries: usize,
}

/// `[auth.api_key]`: where API keys are read from.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySection {
    #[serde(default = "defaults::api_key_header")]
    pub header: Header,
    /// Header set upstream to the consumer's name.
    #[serde(default = "defaults::consumer_header")]
    pub consumer_header: Header,
}

impl Default for ApiKeySection {
    fn default() -> Self {
        ApiKeySection {
            header: defaults::api_key_header(),
            consumer_header: defaults::consumer_header(),
        }
    }
}

/// `[consumers.NAME]`: an API client identified by key.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSection {
    /// Plain keys (prefer `key_hashes`).
    #[serde(default)]
    pub keys: Vec<String>,
    /// `sha256:HEX` digests of keys (`printf %s KEY | sha256sum`).
    #[serde(default)]
    pub key_hashes: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Limits for this consumer on every route it calls.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitSection>,
}

/// One rate-limit window.
#[derive(Debug, Deserialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Requests admitted per window.
    pub limit: u64,
    /// Window length, e.g. `"1s"`, `"1m"`, `"1h"`.
    pub window: HumanDuration,
    /// What is counted separately, `+`-joined: `consumer`, `ip`, `route` (default `ip`).
    #[serde(default = "defaults::rate_key")]
    pub key: RateKey,
}

/// `[rate_limit]`: where counters live.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitBackendSection {
    #[serde(default)]
    pub backend: RateLimitBackend,
    /// For `backend = "redis"` and `"sync"`: `redis://HOST:PORT/DB`.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Instead of `redis_url`: seed nodes of a Redis Cluster (`redis://HOST:PORT` each).
    #[serde(default)]
    pub redis_cluster: Vec<String>,
    /// For `backend = "sync"`: how often this instance pushes its counts to Redis and pulls
    /// the fleet's.
    #[serde(default = "defaults::sync_interval")]
    pub sync_interval: HumanDuration,
    /// Longest wait for Redis before the failure policy applies.
    #[serde(default = "defaults::redis_timeout")]
    pub redis_timeout: HumanDuration,
    /// When Redis is unreachable or slow: `local` (count in this instance), `allow`, `deny`.
    #[serde(default)]
    pub on_redis_error: RedisFailurePolicy,
}

impl Default for RateLimitBackendSection {
    fn default() -> Self {
        RateLimitBackendSection {
            backend: RateLimitBackend::default(),
            redis_url: None,
            redis_cluster: Vec::new(),
            sync_interval: defaults::sync_interval(),
            redis_timeout: defaults::redis_timeout(),
            on_redis_error: RedisFailurePolicy::default(),
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitBackend {
    #[default]
    Local,
    Redis,
    /// Counted locally, synchronized with the fleet through Redis every `sync_interval`.
    Sync,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RedisFailurePolicy {
    #[default]
    Local,
    Allow,
    Deny,
}

/// `[routes.cors]`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsSection {
    /// Exact origins (`https://app.example.com`) or `"*"`.
    pub allow_origins: Vec<String>,
    #[serde(default = "defaults::cors_methods")]
    pub allow_methods: Vec<MethodName>,
    #[serde(default)]
    pub allow_headers: Vec<Header>,
    #[serde(default)]
    pub expose_headers: Vec<Header>,
    #[serde(default)]
    pub allow_credentials: bool,
    #[serde(default)]
    pub max_age: Option<HumanDuration>,
}

/// The files a section names, read when the runtime is built from it: a reload that finds
/// one of them changed builds that part anew (`crate::assemble::carry`).
impl JwtSection {
    pub fn files(&self) -> impl Iterator<Item = &str> {
        let JwtSection {
            secret_file,
            public_key_files,
            jwks_file,
            ..
        } = self;
        secret_file
            .iter()
            .chain(public_key_files)
            .chain(jwks_file)
            .map(String::as_str)
    }
}

impl IntrospectionSection {
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.client_secret_file.iter().map(String::as_str)
    }
}

impl UpstreamTlsSection {
    pub fn files(&self) -> impl Iterator<Item = &str> {
        let UpstreamTlsSection {
            ca_file,
            client_cert,
            client_key,
            ..
        } = self;
        ca_file
            .iter()
            .chain(client_cert)
            .chain(client_key)
            .map(String::as_str)
    }
}

impl ConfigFile {
    /// Every file path the configuration holds, to resolve a relative one against the
    /// configuration file's directory ([`ConfigFile::resolve_paths`]).
    fn paths_mut(&mut self) -> Vec<&mut String> {
        let mut paths: Vec<&mut String> = Vec::new();
        let ServerSection {
            pid_file,
            upgrade_sock,
            error_log,
            ..
        } = &mut self.server;
        paths.extend([pid_file, upgrade_sock]);
        paths.extend(error_log.as_mut());
        for l in &mut self.listeners {
            for c in l.tls.iter_mut().flat_map(|t| &mut t.certificates) {
                paths.extend([&mut c.cert, &mut c.key]);
            }
        }
        paths.extend(self.resolver.hosts_file.as_mut());
        for u in self.upstreams.values_mut() {
            paths.extend(u.targets_file.as_mut());
            if let Some(t) = &mut u.tls {
                let UpstreamTlsSection {
                    ca_file,
                    client_cert,
                    client_key,
                    ..
                } = t;
                paths.extend(ca_file.iter_mut().chain(client_cert).chain(client_key));
            }
        }
        for r in &mut self.routes {
            paths.extend(r.transcode.as_mut().map(|t| &mut t.descriptor));
        }
        for j in self.auth.jwt.values_mut() {
            let JwtSection {
                secret_file,
                public_key_files,
                jwks_file,
                ..
            } = j;
            paths.extend(
                secret_file
                    .iter_mut()
                    .chain(public_key_files)
                    .chain(jwks_file),
            );
        }
        for i in self.auth.introspection.values_mut() {
            paths.extend(i.client_secret_file.as_mut());
        }
        paths
    }

    /// Make every relative file path relative to `base`, the directory of the
    /// configuration file, so `tollgate -c /etc/tollgate/tollgate.toml` reads the same
    /// files from any working directory.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        for p in self.paths_mut() {
            if !p.is_empty() && std::path::Path::new(p.as_str()).is_relative() {
                *p = base.join(p.as_str()).display().to_string();
            }
        }
        if let AccessLogSection {
            target: crate::config::types::LogTarget::File(f),
            ..
        } = &mut self.access_log
        {
            if f.is_relative() {
                *f = base.join(&*f);
            }
        }
    }
}

/// The defaults, each in one place.
pub mod defaults {
    use super::{HumanDuration, HumanSize};
    use std::time::Duration;

    /// The number of CPUs, within `server.threads`' range.
    pub fn threads() -> usize {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(super::super::types::MAX_THREADS)
    }
    pub fn work_stealing() -> bool {
        true
    }
    pub fn pid_file() -> String {
        "/tmp/tollgate.pid".into()
    }
    pub fn upgrade_sock() -> String {
        "/tmp/tollgate_upgrade.sock".into()
    }
    pub fn grace_period() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub fn graceful_shutdown_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    pub fn upstream_keepalive_pool_size() -> usize {
        128
    }
    pub fn client_read_buffer() -> HumanSize {
        HumanSize(16 * 1024)
    }
    pub fn admin_address() -> String {
        "127.0.0.1:9090".into()
    }
    pub fn enabled() -> bool {
        true
    }
    pub fn shared_cache_prefix() -> String {
        "tollgate:cache:".into()
    }

    pub fn shared_cache_max_object() -> HumanSize {
        HumanSize(1 << 20)
    }

    pub fn shared_cache_max_ttl() -> HumanDuration {
        HumanDuration(std::time::Duration::from_secs(3600))
    }

    pub fn shared_cache_timeout() -> HumanDuration {
        HumanDuration(std::time::Duration::from_millis(50))
    }

    pub fn sync_interval() -> HumanDuration {
        HumanDuration(std::time::Duration::from_millis(100))
    }

    pub fn sample_ratio() -> f64 {
        1.0
    }

    pub fn service_name() -> String {
        "tollgate".into()
    }

    pub fn tracing_queue() -> usize {
        4096
    }

    pub fn tracing_batch() -> usize {
        512
    }

    pub fn tracing_flush() -> HumanDuration {
        HumanDuration(std::time::Duration::from_secs(1))
    }

    pub fn tracing_timeout() -> HumanDuration {
        HumanDuration(std::time::Duration::from_secs(5))
    }

    pub fn redact_query() -> Vec<String> {
        [
            "access_token",
            "api_key",
            "apikey",
            "key",
            "password",
            "secret",
            "token",
        ]
        .map(String::from)
        .to_vec()
    }

    pub fn access_log_target() -> super::LogTarget {
        super::LogTarget::Stdout
    }
    pub fn access_log_buffer() -> usize {
        16 * 1024
    }
    pub fn connect_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(2))
    }
    pub fn read_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub fn weight() -> usize {
        1
    }
    pub fn health_path() -> String {
        "/healthz".into()
    }
    pub fn health_host() -> String {
        "localhost".into()
    }
    pub fn health_status() -> u16 {
        200
    }
    pub fn health_interval() -> HumanDuration {
        HumanDuration(Duration::from_secs(5))
    }
    pub fn health_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(1))
    }
    pub fn healthy_threshold() -> usize {
        2
    }
    pub fn unhealthy_threshold() -> usize {
        3
    }
    pub fn retries() -> usize {
        1
    }
    pub fn retry_on() -> Vec<super::RetryCondition> {
        vec![super::RetryCondition::Connect]
    }
    pub fn websocket_idle_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(300))
    }
    pub fn cache_targeted_field() -> super::Header {
        super::Header::new("Tollgate-Cache-Control")
    }
    pub fn forward_auth_path() -> String {
        "/".into()
    }
    pub fn forward_auth_method() -> super::MethodName {
        super::MethodName::new("GET")
    }
    pub fn forward_auth_copy_headers() -> Vec<super::Header> {
        ["authorization", "cookie"].map(super::Header::new).to_vec()
    }
    pub fn forward_auth_client_headers() -> Vec<super::Header> {
        ["www-authenticate", "location"]
            .map(super::Header::new)
            .to_vec()
    }
    pub fn forward_auth_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(2))
    }
    pub fn introspection_roles_claim() -> String {
        "scope".into()
    }
    pub fn decision_ttl() -> HumanDuration {
        HumanDuration(Duration::from_secs(60))
    }
    pub fn decision_negative_ttl() -> HumanDuration {
        HumanDuration(Duration::from_secs(5))
    }
    pub fn decision_max_entries() -> usize {
        10_000
    }
    /// zstd and brotli beat gzip at the levels used; gzip is what every client has.
    pub fn compression_algorithms() -> Vec<super::ContentCoding> {
        use super::ContentCoding::*;
        vec![Zstd, Brotli, Gzip]
    }
    /// Below this the coding's framing eats most of the gain.
    pub fn compression_min_size() -> HumanSize {
        HumanSize(256)
    }
    /// Text formats; images, video and archives are compressed already.
    pub fn compression_content_types() -> Vec<String> {
        [
            "text/*",
            "application/json",
            "application/javascript",
            "application/xml",
            "application/problem+json",
            "application/x-ndjson",
            "image/svg+xml",
        ]
        .map(String::from)
        .to_vec()
    }
    pub fn keepalive_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(60))
    }
    pub fn h2_idle_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(60))
    }
    pub fn max_informational_responses() -> usize {
        10
    }
    pub fn respond_status() -> u16 {
        200
    }
    pub fn part_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(2))
    }
    pub fn dns_refresh() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub fn min_ttl() -> HumanDuration {
        HumanDuration(Duration::from_secs(1))
    }
    pub fn max_ttl() -> HumanDuration {
        HumanDuration(Duration::from_secs(300))
    }
    pub fn breaker_failures() -> u32 {
        5
    }
    pub fn breaker_cooldown() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    pub fn retry_ratio() -> f64 {
        0.2
    }
    pub fn retry_min_per_second() -> u64 {
        10
    }
    pub fn max_header_bytes() -> HumanSize {
        HumanSize(32 * 1024)
    }
    pub fn max_headers() -> usize {
        100
    }
    pub fn max_body_size() -> HumanSize {
        HumanSize(10 * 1024 * 1024)
    }
    pub fn header_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    pub fn cache_max_size() -> HumanSize {
        HumanSize(64 * 1024 * 1024)
    }
    pub fn cache_max_object_size() -> HumanSize {
        HumanSize(1024 * 1024)
    }
    pub fn cache_lock_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(5))
    }
    pub fn body_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub fn max_connections() -> usize {
        0
    }
    pub fn max_connections_per_ip() -> usize {
        0
    }
    pub fn identity_headers() -> Vec<super::Header> {
        ["X-User-ID", "X-User-Roles", "X-Consumer"]
            .map(super::Header::new)
            .to_vec()
    }
    pub fn jwks_refresh() -> HumanDuration {
        HumanDuration(Duration::from_secs(300))
    }
    pub fn jwks_min_refresh() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    pub fn jwt_leeway() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub fn roles_claim() -> String {
        "roles".into()
    }
    pub fn subject_header() -> super::Header {
        super::Header::new("X-User-ID")
    }
    pub fn roles_header() -> super::Header {
        super::Header::new("X-User-Roles")
    }
    pub fn jwt_cache_entries() -> usize {
        10_000
    }
    pub fn api_key_header() -> super::Header {
        super::Header::new("X-API-Key")
    }
    pub fn consumer_header() -> super::Header {
        super::Header::new("X-Consumer")
    }
    pub fn rate_key() -> super::RateKey {
        super::RateKey::IP
    }
    pub fn redis_timeout() -> HumanDuration {
        HumanDuration(Duration::from_millis(50))
    }
    pub fn cors_methods() -> Vec<super::MethodName> {
        ["GET", "HEAD", "POST"].map(super::MethodName::new).to_vec()
    }
}
