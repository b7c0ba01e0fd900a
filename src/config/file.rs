//! What the user writes: the serde model of `tollgate.toml`.
//!
//! Every struct rejects unknown keys, and every default lives in one named function in
//! `defaults` so that `Default` impls and serde agree. Nothing here is checked beyond its
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
    /// `[server]`: the process.
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub(crate) listeners: Vec<ListenerSection>,
    #[serde(default)]
    pub(crate) admin: AdminSection,
    #[serde(default)]
    pub(crate) access_log: AccessLogSection,
    /// `[log]`: the diagnostic log.
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub(crate) tracing: Option<TracingSection>,
    #[serde(default)]
    pub(crate) upstreams: BTreeMap<String, UpstreamSection>,
    #[serde(default)]
    pub(crate) routes: Vec<RouteSection>,
    #[serde(default)]
    pub(crate) demo: Vec<DemoSection>,
    #[serde(default)]
    pub(crate) limits: LimitsSection,
    #[serde(default)]
    pub(crate) auth: AuthSection,
    #[serde(default)]
    pub(crate) consumers: BTreeMap<String, ConsumerSection>,
    #[serde(default)]
    pub(crate) rate_limit: RateLimitBackendSection,
    /// `[[rate_limits]]`: windows every route applies, counted across all of them unless a
    /// window names a `scope` (the platform's "1000 per hour per user, 100 per hour per
    /// unauthenticated IP, 10000 per hour per API key" is three of these, each with its
    /// `applies_to`).
    #[serde(default)]
    pub(crate) rate_limits: Vec<RateLimitSection>,
    #[serde(default)]
    pub(crate) security_headers: SecurityHeadersSection,
    #[serde(default)]
    pub(crate) resolver: ResolverSection,
    #[serde(default)]
    pub(crate) cache: CacheSection,
    /// `[openapi]`: the `info` and `servers` of the OpenAPI document the gateway publishes
    /// (`tollgate openapi`, the admin listener's `/openapi.json`).
    #[serde(default)]
    pub(crate) openapi: OpenApiSection,
}

/// `[openapi]`: what the published OpenAPI document says about itself; its paths, security
/// and responses come from the routes.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenApiSection {
    /// `info.title` of the document.
    #[serde(default = "defaults::openapi_title")]
    pub(crate) title: String,
    /// `info.version`: the version of the published API (not Tollgate's).
    #[serde(default = "defaults::openapi_version")]
    pub(crate) version: String,
    /// `info.description` (Markdown).
    #[serde(default)]
    pub(crate) description: Option<String>,
    /// The base URLs clients call, e.g. `["https://api.example.com"]`; empty: none is named
    /// (paths are relative to wherever the document is served from).
    #[serde(default)]
    pub(crate) servers: Vec<String>,
}

impl Default for OpenApiSection {
    fn default() -> Self {
        OpenApiSection {
            title: defaults::openapi_title(),
            version: defaults::openapi_version(),
            description: None,
            servers: Vec::new(),
        }
    }
}

/// `[cache]`: the response cache shared by the routes that have a `[routes.cache]`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Most bytes held (bodies, headers and keys); least recently used entries go first.
    #[serde(default = "defaults::cache_max_size")]
    pub(crate) max_size: HumanSize,
    /// Largest response body stored; larger responses pass through uncached.
    #[serde(default = "defaults::cache_max_object_size")]
    pub(crate) max_object_size: HumanSize,
    /// How long requests for a key being fetched wait for that fetch before going upstream
    /// themselves.
    #[serde(default = "defaults::cache_lock_timeout")]
    pub(crate) lock_timeout: HumanDuration,
    /// A cache-control field meant for this gateway alone (RFC 9213 syntax): it takes
    /// precedence over `CDN-Cache-Control`, which takes precedence over `Cache-Control`.
    /// Both are removed from responses.
    #[serde(default = "defaults::cache_targeted_field")]
    pub(crate) targeted_field: Header,
    /// A second tier in Redis, shared by the fleet (`[cache.shared]`).
    #[serde(default)]
    pub(crate) shared: Option<SharedCacheSection>,
}

/// `[cache.shared]`: Redis behind the in-memory cache, with a fleet-wide fill lock and purges.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SharedCacheSection {
    /// `redis://HOST:PORT/DB`.
    #[serde(default)]
    pub(crate) redis: Option<String>,
    /// Instead of `redis`: seed nodes of a Redis Cluster (`redis://HOST:PORT` each).
    #[serde(default)]
    pub(crate) redis_cluster: Vec<String>,
    /// Prefix of every key (entries, locks, the purge channel).
    #[serde(default = "defaults::shared_cache_prefix")]
    pub(crate) key_prefix: String,
    /// Largest body written to Redis.
    #[serde(default = "defaults::shared_cache_max_object")]
    pub(crate) max_object_size: HumanSize,
    /// Longest an entry stays in Redis, whatever its freshness.
    #[serde(default = "defaults::shared_cache_max_ttl")]
    pub(crate) max_ttl: HumanDuration,
    /// Longest wait for one Redis call; after a failure Redis is skipped for a second.
    #[serde(default = "defaults::shared_cache_timeout")]
    pub(crate) timeout: HumanDuration,
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
    pub(crate) ttl: Option<HumanDuration>,
    /// Requests with credentials: `"bypass"` (default), `"shared"` (one entry for every
    /// caller) or `"per_consumer"` (entries keyed by the authenticated consumer).
    #[serde(default)]
    pub(crate) authenticated: CacheSharing,
    /// Serve a stale entry while one request refreshes it (a response's own
    /// `stale-while-revalidate` wins).
    #[serde(default)]
    pub(crate) stale_while_revalidate: Option<HumanDuration>,
    /// Serve a stale entry when the upstream fails (a response's own `stale-if-error` wins).
    #[serde(default)]
    pub(crate) stale_if_error: Option<HumanDuration>,
}

/// `[resolver]`: how `NAME:PORT` targets and SRV names are resolved.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolverSection {
    /// A hosts file (`IP name...` lines) consulted before the system resolver.
    #[serde(default)]
    pub(crate) hosts_file: Option<String>,
    /// Name servers for `NAME:PORT` targets and SRV names (`IP` or `IP:PORT`); empty:
    /// `/etc/resolv.conf`.
    #[serde(default)]
    pub(crate) nameservers: Vec<String>,
    /// A DNS answer is asked again after its TTL, but never sooner than this.
    #[serde(default = "defaults::min_ttl")]
    pub(crate) min_ttl: HumanDuration,
    /// ... and never later than this.
    #[serde(default = "defaults::max_ttl")]
    pub(crate) max_ttl: HumanDuration,
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
    pub(crate) enabled: bool,
    /// `Strict-Transport-Security` value, e.g. `"max-age=31536000; includeSubDomains"`; off when unset.
    #[serde(default)]
    pub(crate) hsts: Option<HeaderText>,
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
    pub(crate) set: BTreeMap<Header, HeaderText>,
    /// Add these values, keeping existing ones.
    #[serde(default)]
    pub(crate) append: BTreeMap<Header, HeaderText>,
    #[serde(default)]
    pub(crate) remove: Vec<Header>,
    /// Old name to new name.
    #[serde(default)]
    pub(crate) rename: BTreeMap<Header, Header>,
}

/// `rewrite_regex = { pattern = "^/users/(\\d+)$", replace = "/v2/users/$1" }`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegexRewriteSection {
    pub(crate) pattern: String,
    pub(crate) replace: String,
}

/// `[server]`: process-wide settings, turned into Pingora's `ServerConf`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    #[serde(default = "defaults::threads")]
    pub(crate) threads: usize,
    #[serde(default = "defaults::work_stealing")]
    pub(crate) work_stealing: bool,
    /// Where the pid is written (with `-d`).
    #[serde(default = "defaults::pid_file")]
    pub pid_file: String,
    #[serde(default = "defaults::upgrade_sock")]
    pub(crate) upgrade_sock: String,
    /// Where the daemon's stderr goes when running with `-d`.
    #[serde(default)]
    pub(crate) error_log: Option<String>,
    /// How long an old instance keeps serving in-flight requests after handing over its
    /// sockets or receiving SIGTERM.
    #[serde(default = "defaults::grace_period")]
    pub(crate) grace_period: HumanDuration,
    /// How long services get to stop after the grace period.
    #[serde(default = "defaults::graceful_shutdown_timeout")]
    pub(crate) graceful_shutdown_timeout: HumanDuration,
    #[serde(default = "defaults::upstream_keepalive_pool_size")]
    pub(crate) upstream_keepalive_pool_size: usize,
    /// Read buffer of each TLS client connection, so OpenSSL reads a record in one read.
    /// Pingora's default is 64 KiB, held by every connection. Plain connections have none:
    /// they read straight into the request parser.
    #[serde(default = "defaults::client_read_buffer")]
    pub(crate) client_read_buffer: HumanSize,
    /// The header that carries each request's id (`X-Correlation-ID`, say; default
    /// `X-Request-ID`): a client's sane id (1-128 of `A-Za-z0-9-_.:`) under this name is kept,
    /// otherwise one is made; it goes to the upstream and back to the client under this name
    /// only, and is in every JSON error body, access-log line and trace span.
    #[serde(default)]
    pub(crate) request_id_header: Option<Header>,
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
            request_id_header: None,
        }
    }
}

/// `[[listeners]]`: an HTTP listener, TLS when it has a `[listeners.tls]` section.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub(crate) address: String,
    #[serde(default)]
    pub(crate) tls: Option<TlsSection>,
    /// Overrides `limits.underscore_headers` for this listener.
    #[serde(default)]
    pub(crate) underscore_headers: Option<UnderscoreHeaders>,
    /// Read the client's address from a PROXY protocol header (v1 or v2) sent by the L4
    /// balancer in front, before TLS.
    #[serde(default)]
    pub(crate) proxy_protocol: Option<ProxyProtocolSection>,
    /// Accept HTTP/2 with prior knowledge (h2c) on this plain listener, beside HTTP/1:
    /// gRPC clients without TLS speak it.
    #[serde(default)]
    pub(crate) h2c: bool,
    /// HTTP/3 over QUIC on the same address and port over UDP, with the same certificates
    /// (TLS listeners only).
    #[serde(default)]
    pub(crate) quic: Option<QuicSection>,
}

/// `[listeners.quic]`: HTTP/3 beside the listener's HTTP/1 and HTTP/2.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuicSection {
    /// `Alt-Svc: h3=":PORT"; ma=SECONDS` on this listener's responses (TCP and QUIC), so
    /// that clients move to HTTP/3; `"0s"`: not advertised.
    #[serde(default = "defaults::alt_svc_max_age")]
    pub(crate) alt_svc_max_age: HumanDuration,
    /// Request streams open at once on one connection.
    #[serde(default = "defaults::quic_max_concurrent_streams")]
    pub(crate) max_concurrent_streams: u64,
    /// A connection with nothing sent or received for this long is closed.
    #[serde(default = "defaults::quic_idle_timeout")]
    pub(crate) idle_timeout: HumanDuration,
    /// Largest request header section (QPACK-decoded, as HTTP/3 counts it); a larger one
    /// is refused. Default: `limits.max_header_bytes`.
    #[serde(default)]
    pub(crate) max_header_list_size: Option<HumanSize>,
    /// Accept 0-RTT (TLS early data) for safe methods, marked `Early-Data: 1` upstream;
    /// other methods sent early wait for the handshake to complete.
    #[serde(default)]
    pub(crate) early_data: bool,
    /// Handshakes in progress from one IP; more are refused.
    #[serde(default = "defaults::quic_max_handshakes_per_ip")]
    pub(crate) max_handshakes_per_ip: u64,
    /// Handshakes in progress above which a new client must prove its address with a
    /// Retry round trip first; 0: always.
    #[serde(default = "defaults::quic_retry_above")]
    pub(crate) retry_above: u64,
    /// Handshakes in progress in all; more are refused.
    #[serde(default = "defaults::quic_max_handshakes")]
    pub(crate) max_handshakes: u64,
}

/// `[listeners.proxy_protocol]`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocolSection {
    /// The balancers: CIDRs whose connections may carry a header. A header from any other
    /// peer is never believed.
    pub(crate) from: Vec<String>,
    /// Refuse connections without a header, and connections from peers outside `from`.
    /// `false`: serve those as direct clients (their own address), e.g. for health checks
    /// that bypass the balancer.
    #[serde(default = "defaults::enabled")]
    pub(crate) required: bool,
}

/// A failure that `retry_on` lists.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetryCondition {
    /// No connection could be made (the request never left).
    Connect,
    /// No answer within the read timeout.
    Timeout,
    /// The connection closed before an answer.
    Reset,
    /// The upstream answered 5xx.
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
    pub(crate) certificates: Vec<CertificateSection>,
    /// `"1.2"` (TLS 1.2 and 1.3) or `"1.3"` (1.3 only).
    #[serde(default)]
    pub(crate) min_version: TlsVersion,
    /// Offer HTTP/2 by ALPN.
    #[serde(default = "defaults::enabled")]
    pub(crate) h2: bool,
}

/// One certificate of a TLS listener.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateSection {
    /// PEM certificate chain, leaf first.
    pub(crate) cert: String,
    /// PEM private key.
    pub(crate) key: String,
    /// Server names it serves (exact or `*.example.com`).
    #[serde(default)]
    pub(crate) names: Vec<HostPattern>,
}

/// `[admin]`: the operator listener serving `/health` and `/metrics`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    #[serde(default = "defaults::admin_address")]
    pub(crate) address: String,
    #[serde(default = "defaults::enabled")]
    pub(crate) enabled: bool,
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
    pub(crate) endpoint: String,
    /// Share of new traces recorded (0.0 to 1.0); a request that arrives with a
    /// `traceparent` follows its sampled flag.
    #[serde(default = "defaults::sample_ratio")]
    pub(crate) sample_ratio: f64,
    /// `service.name` of the exported spans.
    #[serde(default = "defaults::service_name")]
    pub(crate) service_name: String,
    /// Spans waiting for export; when full, new spans are dropped and counted.
    #[serde(default = "defaults::tracing_queue")]
    pub(crate) queue_size: usize,
    /// Most spans in one export request.
    #[serde(default = "defaults::tracing_batch")]
    pub(crate) batch_size: usize,
    /// How often queued spans are exported.
    #[serde(default = "defaults::tracing_flush")]
    pub(crate) flush_interval: HumanDuration,
    /// How long one export request may take.
    #[serde(default = "defaults::tracing_timeout")]
    pub(crate) export_timeout: HumanDuration,
    /// Headers sent with each export request (a collector's API key, say).
    #[serde(default)]
    pub(crate) headers: BTreeMap<Header, HeaderText>,
}

/// `[access_log]`: one JSON line per request.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    /// `"stdout"`, `"off"`, or a file path (appended to).
    #[serde(default = "defaults::access_log_target")]
    pub(crate) target: LogTarget,
    /// Lines queued for the writer before new ones are dropped (and counted).
    #[serde(default = "defaults::access_log_buffer")]
    pub(crate) buffer_lines: usize,
    /// The fields each line carries (default: all of them), e.g.
    /// `["time", "request_id", "route", "status", "duration_us"]`.
    #[serde(default)]
    pub(crate) fields: Option<Vec<String>>,
    /// Query parameters whose values the `query` field shows as `REDACTED` (names compared
    /// without case).
    #[serde(default = "defaults::redact_query")]
    pub(crate) redact_query: Vec<String>,
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
    pub(crate) policy: BalancePolicy,
    /// For `consistent_hash`: `"header:NAME"`, `"cookie:NAME"` or `"client_ip"`.
    #[serde(default)]
    pub(crate) hash_on: Option<HashOn>,
    /// The targets; or none, with `targets_file`.
    #[serde(default)]
    pub(crate) targets: Vec<TargetSection>,
    /// Take the targets from this file (JSON or TOML, `address`, `weight`, `metadata`),
    /// re-read within a second of a change; a broken file keeps the last good targets.
    #[serde(default)]
    pub(crate) targets_file: Option<String>,
    /// Take the targets from this DNS SRV name (`_http._tcp.orders.service.consul`):
    /// address and port from each record, its weight, and its priority (the lowest
    /// priority with a healthy target takes the traffic).
    #[serde(default)]
    pub(crate) srv: Option<String>,
    /// Take the targets from the keys under a prefix in etcd v3, watched.
    #[serde(default)]
    pub(crate) etcd: Option<EtcdSection>,
    #[serde(default)]
    pub(crate) health_check: Option<HealthCheckSection>,
    #[serde(default = "defaults::connect_timeout")]
    pub(crate) connect_timeout: HumanDuration,
    #[serde(default = "defaults::read_timeout")]
    pub(crate) read_timeout: HumanDuration,
    /// Passive health: open a target's breaker after consecutive failures.
    #[serde(default)]
    pub(crate) circuit_breaker: Option<CircuitBreakerSection>,
    /// Answer with this when no target is available, instead of a 503 error.
    #[serde(default)]
    pub(crate) fallback: Option<RespondSection>,
    /// Retries may add at most this share of the group's requests (plus a floor).
    #[serde(default)]
    pub(crate) retry_budget: RetryBudgetSection,
    /// The longest a `NAME:PORT` answer is used before it is asked again (its DNS TTL may
    /// make that sooner).
    #[serde(default = "defaults::dns_refresh")]
    pub(crate) dns_refresh: HumanDuration,
    /// Connect to the targets over TLS.
    #[serde(default)]
    pub(crate) tls: Option<UpstreamTlsSection>,
    /// Speak HTTP/2 to the targets (ALPN over TLS, prior knowledge without).
    #[serde(default)]
    pub(crate) h2: bool,
}

/// `[upstreams.NAME.etcd]`: targets registered in etcd, one key per instance with a JSON
/// value `{"address": "IP:PORT", "weight": 1}`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    /// Client URLs of the etcd cluster, tried in turn: `["http://10.0.0.5:2379"]`.
    pub(crate) endpoints: Vec<String>,
    /// The key prefix of the service's instances: `"/services/orders/"`.
    pub(crate) prefix: String,
}

/// `[upstreams.NAME.tls]`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSection {
    /// Server name sent and verified; defaults to none (then only the CA chain is checked
    /// when `verify_hostname` is off) - set it.
    #[serde(default)]
    pub(crate) sni: Option<String>,
    /// PEM bundle of CAs trusted for the targets (default: the system's).
    #[serde(default)]
    pub(crate) ca_file: Option<String>,
    /// Verify the target's certificate chain and name. Turn off only for testing.
    #[serde(default = "defaults::enabled")]
    pub(crate) verify: bool,
    /// Client certificate (PEM chain) and key for mutual TLS.
    #[serde(default)]
    pub(crate) client_cert: Option<String>,
    #[serde(default)]
    pub(crate) client_key: Option<String>,
}

/// `[upstreams.NAME.circuit_breaker]`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerSection {
    /// Consecutive failures that open the breaker.
    #[serde(default = "defaults::breaker_failures")]
    pub(crate) consecutive_failures: u32,
    /// How long an open breaker keeps the target out before one probe request.
    #[serde(default = "defaults::breaker_cooldown")]
    pub(crate) cooldown: HumanDuration,
    /// Whether 5xx responses count as failures (connect errors and timeouts always do).
    #[serde(default = "defaults::enabled")]
    pub(crate) on_5xx: bool,
}

/// `[upstreams.NAME.retry_budget]`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetSection {
    /// Retries per second may reach this fraction of requests per second...
    #[serde(default = "defaults::retry_ratio")]
    pub(crate) ratio: f64,
    /// ...or this many, whichever is more.
    #[serde(default = "defaults::retry_min_per_second")]
    pub(crate) min_per_second: u64,
}

impl Default for RetryBudgetSection {
    fn default() -> Self {
        RetryBudgetSection {
            ratio: defaults::retry_ratio(),
            min_per_second: defaults::retry_min_per_second(),
        }
    }
}

/// How a group picks a target.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BalancePolicy {
    /// In turn, by weight.
    #[default]
    RoundRobin,
    /// The target with the fewest requests in flight.
    LeastConnections,
    /// By a hash of the request (`hash_on`), so one key keeps its target.
    ConsistentHash,
}

/// One upstream instance.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// `IP:PORT`, or `NAME:PORT` resolved through DNS (every `dns_refresh`).
    pub(crate) address: String,
    #[serde(default = "defaults::weight")]
    pub(crate) weight: usize,
}

/// `[upstreams.NAME.health_check]`: active checks run in the background.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    #[serde(default)]
    pub(crate) kind: HealthCheckKind,
    /// HTTP only: the path requested.
    #[serde(default = "defaults::health_path")]
    pub(crate) path: String,
    /// HTTP and gRPC: the `Host` header (HTTP/2 `:authority`) sent.
    #[serde(default = "defaults::health_host")]
    pub(crate) host: String,
    /// HTTP only: the status that counts as healthy.
    #[serde(default = "defaults::health_status")]
    pub(crate) expected_status: u16,
    /// gRPC only: the service asked about in `grpc.health.v1.Health/Check`; empty: the
    /// server as a whole.
    #[serde(default)]
    pub(crate) service: String,
    #[serde(default = "defaults::health_interval")]
    pub(crate) interval: HumanDuration,
    #[serde(default = "defaults::health_timeout")]
    pub(crate) timeout: HumanDuration,
    /// Consecutive successes that bring an unhealthy target back (HAProxy's `rise`).
    #[serde(default = "defaults::healthy_threshold")]
    pub(crate) healthy_threshold: usize,
    /// Consecutive failures that take a healthy target out (HAProxy's `fall`).
    #[serde(default = "defaults::unhealthy_threshold")]
    pub(crate) unhealthy_threshold: usize,
    /// A target that appears (at start-up, or from discovery): `healthy` serves it until a
    /// check says otherwise; `after_check` only once one of its checks passed.
    #[serde(default)]
    pub(crate) new_targets: NewTargets,
}

/// How a target the health checks have not seen yet is treated.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NewTargets {
    /// Serving at once.
    #[default]
    Healthy,
    /// Serving after its first passed health check.
    AfterCheck,
}

/// What a health check asks.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// An HTTP request, answered 2xx.
    #[default]
    Http,
    /// A TCP connection.
    Tcp,
    /// The standard `grpc.health.v1.Health/Check` over HTTP/2 (the group needs `h2`):
    /// healthy when it answers `SERVING`.
    Grpc,
}

/// `[[routes]]`: what to match and what to do with a match.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub(crate) name: String,
    /// Exact host names or `*.suffix` wildcards; empty matches any host.
    #[serde(default)]
    pub(crate) hosts: Vec<HostPattern>,
    /// Matches this path and everything below it (segment-aware: `/api` does not match `/apix`).
    #[serde(default)]
    pub(crate) path_prefix: Option<String>,
    /// Matches only this exact path.
    #[serde(default)]
    pub(crate) path: Option<String>,
    /// Empty matches any method.
    #[serde(default)]
    pub(crate) methods: Vec<MethodName>,
    /// Header name to exact value; all must match.
    #[serde(default)]
    pub(crate) headers: BTreeMap<Header, HeaderText>,
    /// The upstream group to proxy to (exclusive with `respond`).
    #[serde(default)]
    pub(crate) upstream: Option<String>,
    /// Remove the matched `path_prefix` before proxying.
    #[serde(default)]
    pub(crate) strip_prefix: bool,
    /// Replace the matched `path_prefix` (or exact `path`) with this before proxying.
    #[serde(default)]
    pub(crate) rewrite_prefix: Option<String>,
    /// Overrides the upstream group's connect timeout.
    #[serde(default)]
    pub(crate) connect_timeout: Option<HumanDuration>,
    /// Overrides the upstream group's read timeout.
    #[serde(default)]
    pub(crate) read_timeout: Option<HumanDuration>,
    /// Extra attempts on another target, for the failures in `retry_on` (idempotent
    /// methods only, unless `retry_unsent` and the request never left the gateway).
    #[serde(default = "defaults::retries")]
    pub(crate) retries: usize,
    /// Also retry non-idempotent requests when connecting failed (the request never left
    /// the gateway).
    #[serde(default)]
    pub(crate) retry_unsent: bool,
    /// Which failures are retried: `"connect"` (no connection), `"timeout"` (no answer
    /// within the read timeout), `"reset"` (connection closed before an answer), `"5xx"`.
    #[serde(default = "defaults::retry_on")]
    pub(crate) retry_on: Vec<RetryCondition>,
    /// Accept `%2F` and `%5C` in the path and pass them on encoded (refused with 400
    /// otherwise). Only for upstreams that do not decode them into separators.
    #[serde(default)]
    pub(crate) allow_encoded_slashes: bool,
    /// Answer directly, without an upstream.
    #[serde(default)]
    pub(crate) respond: Option<RespondSection>,
    /// Fan out to several upstream calls and merge their JSON (exclusive with `upstream`
    /// and `respond`).
    #[serde(default)]
    pub(crate) aggregate: Option<AggregateSection>,
    /// Accepted authentication methods: `"jwt:PROVIDER"` or `"api_key"`; any one suffices.
    /// Empty: the route is public.
    #[serde(default)]
    pub(crate) auth: Vec<AuthRef>,
    /// Roles of which the caller needs at least one (any-of). Needs `auth`.
    #[serde(default)]
    pub(crate) roles: Vec<String>,
    /// Rate limits of this route; every one must admit the request.
    #[serde(default)]
    pub(crate) rate_limits: Vec<RateLimitSection>,
    /// CIDR allow list for this route (added to the global one).
    #[serde(default)]
    pub(crate) ip_allow: Vec<String>,
    /// CIDR deny list for this route (added to the global one).
    #[serde(default)]
    pub(crate) ip_deny: Vec<String>,
    /// CORS policy; absent: no CORS headers and preflights are proxied like any request.
    #[serde(default)]
    pub(crate) cors: Option<CorsSection>,
    /// Overrides `limits.max_body_size` for this route.
    #[serde(default)]
    pub(crate) max_body_size: Option<HumanSize>,
    /// Media types a request body may have (`"application/json"`, `"text/*"`); a body of
    /// another type, or without `Content-Type`, is refused with 415. Empty: any.
    #[serde(default)]
    pub(crate) allow_content_types: Vec<String>,
    /// Edits to the request sent upstream.
    #[serde(default)]
    pub(crate) request_headers: HeaderEditsSection,
    /// Edits to the response sent to the client.
    #[serde(default)]
    pub(crate) response_headers: HeaderEditsSection,
    /// Rewrite the path with a regex (captures as `$1`, `${name}`); exclusive with
    /// `strip_prefix`/`rewrite_prefix`.
    #[serde(default)]
    pub(crate) rewrite_regex: Option<RegexRewriteSection>,
    /// Overrides `[security_headers] enabled` for this route.
    #[serde(default)]
    pub(crate) security_headers: Option<bool>,
    /// Rename top-level JSON fields of request bodies: old name to new name.
    #[serde(default)]
    pub(crate) json_rename_request: BTreeMap<String, String>,
    /// Rename top-level JSON fields of response bodies.
    #[serde(default)]
    pub(crate) json_rename_response: BTreeMap<String, String>,
    /// Cache GET/HEAD responses (proxied routes only).
    #[serde(default)]
    pub(crate) cache: Option<RouteCacheSection>,
    /// Compress responses for clients that accept it (gzip, brotli, zstd).
    #[serde(default)]
    pub(crate) compression: Option<CompressionSection>,
    /// How long an upgraded (WebSocket) connection may stay silent in both directions
    /// before it is closed; `read_timeout` applies to requests, not to these.
    #[serde(default = "defaults::websocket_idle_timeout")]
    pub(crate) websocket_idle_timeout: HumanDuration,
    /// Bridge gRPC-Web (`application/grpc-web`, `application/grpc-web-text`) from browsers
    /// to the upstream's plain gRPC over HTTP/2 (the group needs `h2`).
    #[serde(default)]
    pub(crate) grpc_web: bool,
    /// Answer HTTP/JSON calls by calling the upstream's gRPC methods.
    #[serde(default)]
    pub(crate) transcode: Option<TranscodeSection>,
    /// The service's own OpenAPI 3.0 or 3.1 document (YAML or JSON; relative to this file's
    /// directory): its paths are published under the route's public prefix (the route's
    /// `strip_prefix` or `rewrite_prefix` undone), with the gateway's security and answers.
    #[serde(default)]
    pub(crate) openapi: Option<String>,
    /// What the upstream gets of the credentials the route verified: `forward` (the
    /// default, as Kong and Traefik do: the client's `Authorization` and API-key header go
    /// upstream unchanged) or `strip` (as Envoy's `jwt_authn` does: both are removed once
    /// the caller is verified; the upstream sees only the identity headers).
    #[serde(default)]
    pub(crate) credentials: Credentials,
    /// `request`: check each request against the route's operation in its `openapi` file
    /// (path and query parameters, required headers, the JSON body) and refuse a violation
    /// with 400 before the upstream is called.
    #[serde(default)]
    pub(crate) validate: Option<Validate>,
    /// Refusing policies of this route that run in shadow mode: evaluated, counted
    /// (`tollgate_shadow_refusals_total{route,policy,reason}`) and logged (`shadow_refusal`),
    /// never refusing. `auth` covers every authentication method of the route (JWT, API key,
    /// forward auth, introspection).
    #[serde(default)]
    pub(crate) shadow: Vec<ShadowPolicy>,
}

/// `[routes.transcode]`: HTTP/JSON to gRPC.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TranscodeSection {
    /// The services' descriptor set (`protoc --include_imports --descriptor_set_out=FILE`).
    pub(crate) descriptor: String,
    /// The services whose `google.api.http` rules bind; empty: every service in the set.
    #[serde(default)]
    pub(crate) services: Vec<String>,
    /// Bindings for methods without a `google.api.http` rule.
    #[serde(default)]
    pub(crate) methods: Vec<TranscodeMethodSection>,
}

/// `[[routes.transcode.methods]]`: one HTTP method and path template to one gRPC method.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TranscodeMethodSection {
    /// The HTTP method, upper-case.
    pub(crate) method: String,
    /// A path template: `/v1/shelves/{shelf}/books/{id}`; `{field}` captures one segment,
    /// `{field=**}` the rest.
    pub(crate) path: String,
    /// `package.Service/Method`.
    pub(crate) grpc: String,
    /// Where the JSON body goes: `"*"` the whole request message, a field name that field,
    /// `""` nowhere (fields come from the path and query).
    #[serde(default)]
    pub(crate) body: String,
}

/// `[routes.compression]`: compress this route's responses by the client's `Accept-Encoding`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompressionSection {
    /// The codings offered, the gateway's preference first (it breaks ties between
    /// codings the client weighs equally).
    #[serde(default = "defaults::compression_algorithms")]
    pub(crate) algorithms: Vec<ContentCoding>,
    /// Responses whose `Content-Length` is below this are sent as they are.
    #[serde(default = "defaults::compression_min_size")]
    pub(crate) min_size: HumanSize,
    /// Media types compressed: exact (`application/json`) or a whole family (`text/*`).
    #[serde(default = "defaults::compression_content_types")]
    pub(crate) content_types: Vec<String>,
}

/// A content coding the gateway can compress with.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContentCoding {
    /// gzip (RFC 1952).
    Gzip,
    /// Brotli (RFC 7932).
    #[serde(rename = "br")]
    Brotli,
    /// Zstandard (RFC 8878).
    Zstd,
}

/// `[routes.aggregate]`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateSection {
    /// Regex over the request path whose captures (`$1`, `${name}`) fill part paths.
    #[serde(default)]
    pub(crate) capture: Option<String>,
    pub(crate) parts: Vec<AggregatePartSection>,
}

/// `[[routes.aggregate.parts]]`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregatePartSection {
    /// Key of this part in the merged document.
    pub(crate) name: String,
    pub(crate) upstream: String,
    /// Path and query sent upstream, e.g. `"/users/${user}"`.
    pub(crate) path: String,
    #[serde(default = "defaults::part_timeout")]
    pub(crate) timeout: HumanDuration,
}

/// `[routes.respond]`: a fixed response.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RespondSection {
    #[serde(default = "defaults::respond_status")]
    pub(crate) status: u16,
    #[serde(default)]
    pub(crate) headers: BTreeMap<Header, HeaderText>,
    #[serde(default)]
    pub(crate) body: String,
}

/// `[[demo]]`: a built-in backend the binary starts itself, so the example configuration
/// shows proxying, balancing and health checks with nothing else running.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DemoSection {
    pub(crate) name: String,
    pub(crate) address: String,
}

/// `[limits]`: protection for the listener, applied before routing.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Largest request head (request line plus headers); more is refused with 431.
    #[serde(default = "defaults::max_header_bytes")]
    pub(crate) max_header_bytes: HumanSize,
    /// Most request headers; more is refused with 431.
    #[serde(default = "defaults::max_headers")]
    pub(crate) max_headers: usize,
    /// Largest request body, by Content-Length or counted while streaming (413).
    #[serde(default = "defaults::max_body_size")]
    pub(crate) max_body_size: HumanSize,
    /// Total time a client gets to send the request head (408); also an HTTP/2 preface or
    /// header block, and the TLS handshake (closed).
    #[serde(default = "defaults::header_timeout")]
    pub(crate) header_timeout: HumanDuration,
    /// Longest pause between two reads of the request body (408).
    #[serde(default = "defaults::body_timeout")]
    pub(crate) body_timeout: HumanDuration,
    /// Most open client connections in all; 0: unlimited.
    #[serde(default = "defaults::max_connections")]
    pub(crate) max_connections: usize,
    /// Most open client connections from one IP; 0: unlimited.
    #[serde(default = "defaults::max_connections_per_ip")]
    pub(crate) max_connections_per_ip: usize,
    /// Peers whose `X-Forwarded-For` is believed (CIDRs).
    #[serde(default)]
    pub(crate) trusted_proxies: Vec<String>,
    /// Global CIDR allow list; empty: everyone not denied.
    #[serde(default)]
    pub(crate) ip_allow: Vec<String>,
    /// Global CIDR deny list.
    #[serde(default)]
    pub(crate) ip_deny: Vec<String>,
    /// Merge repeated slashes in the path (`/a//b` is `/a/b`) before routing.
    #[serde(default = "defaults::enabled")]
    pub(crate) merge_slashes: bool,
    /// Request header names with `_`: `"drop"`, `"reject"` (400) or `"allow"`.
    #[serde(default)]
    pub(crate) underscore_headers: UnderscoreHeaders,
    /// How long an idle HTTP/1 client connection is kept open between requests.
    #[serde(default = "defaults::keepalive_timeout")]
    pub(crate) keepalive_timeout: HumanDuration,
    /// How long an HTTP/2 client connection with no open stream is kept (an unfinished
    /// header block is closed sooner, by `header_timeout`).
    #[serde(default = "defaults::h2_idle_timeout")]
    pub(crate) h2_idle_timeout: HumanDuration,
    /// Informational (1xx) responses relayed per request; an upstream that sends more is a
    /// 502.
    #[serde(default = "defaults::max_informational_responses")]
    pub(crate) max_informational_responses: usize,
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
    pub(crate) jwt: BTreeMap<String, JwtSection>,
    #[serde(default)]
    pub(crate) api_key: ApiKeySection,
    /// Named auth services the gateway asks: `[auth.forward.NAME]`, referred to as
    /// `"forward:NAME"`.
    #[serde(default)]
    pub(crate) forward: BTreeMap<String, ForwardAuthSection>,
    /// Named OAuth 2.0 introspection endpoints (RFC 7662): `[auth.introspection.NAME]`,
    /// referred to as `"introspection:NAME"`.
    #[serde(default)]
    pub(crate) introspection: BTreeMap<String, IntrospectionSection>,
    /// Client-sent headers always removed before the gateway sets its own identity headers,
    /// in addition to every header an auth provider maps.
    #[serde(default = "defaults::identity_headers")]
    pub(crate) strip_headers: Vec<Header>,
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
    pub(crate) upstream: String,
    /// Path (and query) of the check on the auth service.
    #[serde(default = "defaults::forward_auth_path")]
    pub(crate) path: String,
    /// Method of the check.
    #[serde(default = "defaults::forward_auth_method")]
    pub(crate) method: MethodName,
    /// Client request headers copied to the check; the decision is cached by exactly these.
    #[serde(default = "defaults::forward_auth_copy_headers")]
    pub(crate) copy_headers: Vec<Header>,
    /// Whether the decision depends on the client's method and path (sent as
    /// `X-Forwarded-Method` and `X-Forwarded-Uri`): then they are part of the cache key.
    #[serde(default = "defaults::enabled")]
    pub(crate) decision_per_path: bool,
    /// Headers of a 2xx answer passed to the upstream as identity headers (client-sent
    /// copies are removed from every request).
    #[serde(default)]
    pub(crate) identity_headers: Vec<Header>,
    /// The answer header naming the caller: the subject roles, rate limits and purges use.
    #[serde(default)]
    pub(crate) subject_header: Option<Header>,
    /// The answer header listing the caller's roles, comma-separated.
    #[serde(default)]
    pub(crate) roles_header: Option<Header>,
    /// Headers of a 401, 403 or 3xx answer passed to the client with its status.
    #[serde(default = "defaults::forward_auth_client_headers")]
    pub(crate) client_headers: Vec<Header>,
    /// Pass the body of a 401, 403 or 3xx answer to the client (otherwise the gateway's own
    /// JSON error, so nothing of the auth service leaks).
    #[serde(default)]
    pub(crate) forward_denial_body: bool,
    /// How long the check may take.
    #[serde(default = "defaults::forward_auth_timeout")]
    pub(crate) timeout: HumanDuration,
    /// When the service fails or answers anything else: `"deny"` (503, the default) or
    /// `"allow"` (admit without an identity).
    #[serde(default)]
    pub(crate) on_error: AuthErrorPolicy,
    /// Cache decisions; absent: ask for every request.
    #[serde(default)]
    pub(crate) cache: Option<DecisionCacheSection>,
}

/// `[auth.introspection.NAME]`: opaque bearer tokens checked at an RFC 7662 endpoint.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionSection {
    /// The upstream group of the authorization server.
    pub(crate) upstream: String,
    /// Path of the introspection endpoint.
    pub(crate) path: String,
    /// The gateway's client credentials (HTTP Basic).
    pub(crate) client_id: String,
    /// The client secret is read from this environment variable...
    #[serde(default)]
    pub(crate) client_secret_env: Option<String>,
    /// ...or from this file (trailing newline trimmed). Never inline.
    #[serde(default)]
    pub(crate) client_secret_file: Option<String>,
    /// Required in `aud` (a string or a list), when set.
    #[serde(default)]
    pub(crate) audience: Option<String>,
    /// Required as `iss`, when set.
    #[serde(default)]
    pub(crate) issuer: Option<String>,
    /// The claim holding the caller's roles (a space-separated string or a list).
    #[serde(default = "defaults::introspection_roles_claim")]
    pub(crate) roles_claim: String,
    /// Claims passed upstream: claim name to header name.
    #[serde(default)]
    pub(crate) claims: BTreeMap<String, Header>,
    /// How long the check may take.
    #[serde(default = "defaults::forward_auth_timeout")]
    pub(crate) timeout: HumanDuration,
    /// When the server fails: `"deny"` (503, the default) or `"allow"`.
    #[serde(default)]
    pub(crate) on_error: AuthErrorPolicy,
    /// Cache decisions; absent: ask for every request.
    #[serde(default)]
    pub(crate) cache: Option<DecisionCacheSection>,
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
    pub(crate) ttl: HumanDuration,
    /// Life of a refused decision (401/403).
    #[serde(default = "defaults::decision_negative_ttl")]
    pub(crate) negative_ttl: HumanDuration,
    /// Decisions kept, least recently used first out.
    #[serde(default = "defaults::decision_max_entries")]
    pub(crate) max_entries: usize,
}

/// `[auth.jwt.NAME]`: one token issuer and how to verify its tokens.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtSection {
    /// Accepted algorithms, pinned: `HS256`, `RS256`, `PS256`, `ES256`, `EdDSA`, ...
    pub(crate) algorithms: Vec<JwtAlgorithm>,
    /// HS*: the secret is read from this environment variable...
    #[serde(default)]
    pub(crate) secret_env: Option<String>,
    /// ...or from this file (trailing newline trimmed). Never inline.
    #[serde(default)]
    pub(crate) secret_file: Option<String>,
    /// PEM public keys (RSA, EC or Ed25519), tried in order when the token has no `kid`.
    #[serde(default)]
    pub(crate) public_key_files: Vec<String>,
    /// A JWKS document on disk.
    #[serde(default)]
    pub(crate) jwks_file: Option<String>,
    /// A JWKS URL, fetched at start and refreshed in the background.
    #[serde(default)]
    pub(crate) jwks_url: Option<String>,
    #[serde(default = "defaults::jwks_refresh")]
    pub(crate) jwks_refresh: HumanDuration,
    /// Least time between two refreshes triggered by an unknown `kid`.
    #[serde(default = "defaults::jwks_min_refresh")]
    pub(crate) jwks_min_refresh: HumanDuration,
    /// Required `iss`.
    #[serde(default)]
    pub(crate) issuer: Option<String>,
    /// Accepted `aud` values (any one).
    #[serde(default)]
    pub(crate) audience: Vec<String>,
    /// Clock skew allowed for `exp` and `nbf`.
    #[serde(default = "defaults::jwt_leeway")]
    pub(crate) leeway: HumanDuration,
    /// Claim holding roles (array or space-separated string); dots walk objects.
    #[serde(default = "defaults::roles_claim")]
    pub(crate) roles_claim: String,
    /// Header set upstream from `sub`.
    #[serde(default = "defaults::subject_header")]
    pub(crate) subject_header: Header,
    /// Header set upstream from the roles claim (comma-separated).
    #[serde(default = "defaults::roles_header")]
    pub(crate) roles_header: Header,
    /// Further claims copied to upstream headers: claim name to header name.
    #[serde(default)]
    pub(crate) claim_headers: BTreeMap<String, Header>,
    /// Verified tokens remembered (bounded, never past `exp`); 0 turns the cache off.
    #[serde(default = "defaults::jwt_cache_entries")]
    pub(crate) cache_entries: usize,
}

/// `[auth.api_key]`: where API keys are read from.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySection {
    #[serde(default = "defaults::api_key_header")]
    pub(crate) header: Header,
    /// Header set upstream to the consumer's name.
    #[serde(default = "defaults::consumer_header")]
    pub(crate) consumer_header: Header,
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
    pub(crate) keys: Vec<String>,
    /// `sha256:HEX` digests of keys (`printf %s KEY | sha256sum`).
    #[serde(default)]
    pub(crate) key_hashes: Vec<String>,
    #[serde(default)]
    pub(crate) roles: Vec<String>,
    /// Limits for this consumer on every route it calls.
    #[serde(default)]
    pub(crate) rate_limits: Vec<RateLimitSection>,
}

/// One rate-limit window.
#[derive(Debug, Deserialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Requests admitted per window.
    pub(crate) limit: u64,
    /// Window length, e.g. `"1s"`, `"1m"`, `"1h"`.
    pub(crate) window: HumanDuration,
    /// What is counted separately, `+`-joined: `consumer`, `ip`, `route` (default `ip`).
    #[serde(default = "defaults::rate_key")]
    pub(crate) key: RateKey,
    /// The kinds of caller the window counts (`unauthenticated`, `jwt`, `api_key`); others
    /// pass it. Empty: every caller.
    #[serde(default)]
    pub(crate) applies_to: Vec<CallerKind>,
    /// Where the window is shared: absent, this route (or consumer) only; `"global"`, every
    /// route with the same window; any other name, the routes naming that group.
    #[serde(default)]
    pub(crate) scope: Option<String>,
}

/// A kind of caller, for `applies_to`.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallerKind {
    /// No credentials (or a route without `auth`).
    Unauthenticated,
    /// Authenticated by a token: a JWT, or a forward-auth or introspection service.
    Jwt,
    /// Authenticated by an API key of a `[consumers.NAME]`.
    ApiKey,
}

/// What the upstream gets of verified credentials (`credentials`).
#[derive(Debug, Deserialize, Clone, Copy, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Credentials {
    /// `Authorization` and the API-key header go upstream as the client sent them.
    #[default]
    Forward,
    /// Both are removed from the upstream request once the route's auth verified them.
    Strip,
}

/// What a route validates against its OpenAPI operation (`validate`).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Validate {
    /// Path and query parameters, required headers and the JSON body of each request.
    Request,
}

/// A refusing route policy that can run in shadow mode (`shadow`).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShadowPolicy {
    /// Authentication, by every method of the route's `auth`.
    Auth,
    /// The route's `roles`.
    Roles,
    /// The route's and the consumer's rate limits.
    RateLimits,
    /// The route's `ip_allow` / `ip_deny`.
    Ip,
    /// Request validation (`validate`).
    Validate,
}

impl ShadowPolicy {
    /// Its name in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ShadowPolicy::Auth => "auth",
            ShadowPolicy::Roles => "roles",
            ShadowPolicy::RateLimits => "rate_limits",
            ShadowPolicy::Ip => "ip",
            ShadowPolicy::Validate => "validate",
        }
    }
}

/// `[rate_limit]`: where counters live.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitBackendSection {
    #[serde(default)]
    pub(crate) backend: RateLimitBackend,
    /// For `backend = "redis"` and `"sync"`: `redis://HOST:PORT/DB`.
    #[serde(default)]
    pub(crate) redis_url: Option<String>,
    /// Instead of `redis_url`: seed nodes of a Redis Cluster (`redis://HOST:PORT` each).
    #[serde(default)]
    pub(crate) redis_cluster: Vec<String>,
    /// For `backend = "sync"`: the lease period (a lease is sized to what this instance
    /// admitted over the last one) and the heartbeat interval (at most once a second).
    #[serde(default = "defaults::sync_interval")]
    pub(crate) sync_interval: HumanDuration,
    /// Longest wait for Redis before the failure policy applies.
    #[serde(default = "defaults::redis_timeout")]
    pub(crate) redis_timeout: HumanDuration,
    /// When Redis is unreachable or slow: `local` (count in this instance), `allow`, `deny`.
    #[serde(default)]
    pub(crate) on_redis_error: RedisFailurePolicy,
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

/// Where rate-limit windows are counted.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitBackend {
    /// In this process only.
    #[default]
    Local,
    /// In Redis, on every request.
    Redis,
    /// Admitted locally from budget leased from Redis (one script per lease): the fleet
    /// never admits more than the limit, and makes no Redis call per request.
    Sync,
}

/// What a request gets when Redis cannot be asked.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RedisFailurePolicy {
    /// Counted locally meanwhile.
    #[default]
    Local,
    /// Admitted.
    Allow,
    /// Refused (429).
    Deny,
}

/// `[routes.cors]`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsSection {
    /// Exact origins (`https://app.example.com`) or `"*"`.
    pub(crate) allow_origins: Vec<String>,
    #[serde(default = "defaults::cors_methods")]
    pub(crate) allow_methods: Vec<MethodName>,
    #[serde(default)]
    pub(crate) allow_headers: Vec<Header>,
    #[serde(default)]
    pub(crate) expose_headers: Vec<Header>,
    #[serde(default)]
    pub(crate) allow_credentials: bool,
    #[serde(default)]
    pub(crate) max_age: Option<HumanDuration>,
}

/// The files a section names, read when the runtime is built from it: a reload that finds
/// one of them changed builds that part anew (`crate::assemble::carry`).
impl JwtSection {
    pub(crate) fn files(&self) -> impl Iterator<Item = &str> {
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
    pub(crate) fn files(&self) -> impl Iterator<Item = &str> {
        self.client_secret_file.iter().map(String::as_str)
    }
}

impl UpstreamTlsSection {
    pub(crate) fn files(&self) -> impl Iterator<Item = &str> {
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
            paths.extend(r.openapi.as_mut());
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
pub(crate) mod defaults {
    use super::{HumanDuration, HumanSize};
    use std::time::Duration;

    /// The number of CPUs, within `server.threads`' range.
    pub(crate) fn threads() -> usize {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(super::super::types::MAX_THREADS)
    }
    pub(crate) fn work_stealing() -> bool {
        true
    }
    pub(crate) fn pid_file() -> String {
        "/tmp/tollgate.pid".into()
    }
    pub(crate) fn upgrade_sock() -> String {
        "/tmp/tollgate_upgrade.sock".into()
    }
    pub(crate) fn grace_period() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub(crate) fn graceful_shutdown_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    pub(crate) fn upstream_keepalive_pool_size() -> usize {
        128
    }
    pub(crate) fn client_read_buffer() -> HumanSize {
        HumanSize(16 * 1024)
    }
    pub(crate) fn admin_address() -> String {
        "127.0.0.1:9090".into()
    }
    pub(crate) fn enabled() -> bool {
        true
    }
    pub(crate) fn shared_cache_prefix() -> String {
        "tollgate:cache:".into()
    }

    pub(crate) fn shared_cache_max_object() -> HumanSize {
        HumanSize(1 << 20)
    }

    pub(crate) fn shared_cache_max_ttl() -> HumanDuration {
        HumanDuration(std::time::Duration::from_secs(3600))
    }

    pub(crate) fn shared_cache_timeout() -> HumanDuration {
        HumanDuration(std::time::Duration::from_millis(50))
    }

    pub(crate) fn sync_interval() -> HumanDuration {
        HumanDuration(std::time::Duration::from_millis(100))
    }

    pub(crate) fn sample_ratio() -> f64 {
        1.0
    }

    pub(crate) fn service_name() -> String {
        "tollgate".into()
    }

    pub(crate) fn tracing_queue() -> usize {
        4096
    }

    pub(crate) fn tracing_batch() -> usize {
        512
    }

    pub(crate) fn tracing_flush() -> HumanDuration {
        HumanDuration(std::time::Duration::from_secs(1))
    }

    pub(crate) fn tracing_timeout() -> HumanDuration {
        HumanDuration(std::time::Duration::from_secs(5))
    }

    pub(crate) fn redact_query() -> Vec<String> {
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

    pub(crate) fn access_log_target() -> super::LogTarget {
        super::LogTarget::Stdout
    }
    pub(crate) fn access_log_buffer() -> usize {
        16 * 1024
    }
    pub(crate) fn connect_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(2))
    }
    pub(crate) fn read_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub(crate) fn weight() -> usize {
        1
    }
    pub(crate) fn health_path() -> String {
        "/healthz".into()
    }
    pub(crate) fn health_host() -> String {
        "localhost".into()
    }
    pub(crate) fn health_status() -> u16 {
        200
    }
    pub(crate) fn health_interval() -> HumanDuration {
        HumanDuration(Duration::from_secs(5))
    }
    pub(crate) fn health_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(1))
    }
    pub(crate) fn healthy_threshold() -> usize {
        2
    }
    pub(crate) fn unhealthy_threshold() -> usize {
        3
    }
    pub(crate) fn retries() -> usize {
        1
    }
    pub(crate) fn retry_on() -> Vec<super::RetryCondition> {
        vec![super::RetryCondition::Connect]
    }
    pub(crate) fn websocket_idle_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(300))
    }
    pub(crate) fn cache_targeted_field() -> super::Header {
        super::Header::new("Tollgate-Cache-Control")
    }
    pub(crate) fn forward_auth_path() -> String {
        "/".into()
    }
    pub(crate) fn forward_auth_method() -> super::MethodName {
        super::MethodName::new("GET")
    }
    pub(crate) fn forward_auth_copy_headers() -> Vec<super::Header> {
        ["authorization", "cookie"].map(super::Header::new).to_vec()
    }
    pub(crate) fn forward_auth_client_headers() -> Vec<super::Header> {
        ["www-authenticate", "location"]
            .map(super::Header::new)
            .to_vec()
    }
    pub(crate) fn forward_auth_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(2))
    }
    pub(crate) fn introspection_roles_claim() -> String {
        "scope".into()
    }
    pub(crate) fn decision_ttl() -> HumanDuration {
        HumanDuration(Duration::from_secs(60))
    }
    pub(crate) fn decision_negative_ttl() -> HumanDuration {
        HumanDuration(Duration::from_secs(5))
    }
    pub(crate) fn decision_max_entries() -> usize {
        10_000
    }
    /// zstd and brotli beat gzip at the levels used; gzip is what every client has.
    pub(crate) fn compression_algorithms() -> Vec<super::ContentCoding> {
        use super::ContentCoding::*;
        vec![Zstd, Brotli, Gzip]
    }
    /// Below this the coding's framing eats most of the gain.
    pub(crate) fn compression_min_size() -> HumanSize {
        HumanSize(256)
    }
    /// Text formats; images, video and archives are compressed already.
    pub(crate) fn compression_content_types() -> Vec<String> {
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
    pub(crate) fn keepalive_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(60))
    }
    pub(crate) fn alt_svc_max_age() -> HumanDuration {
        HumanDuration(Duration::from_secs(86_400))
    }
    pub(crate) fn quic_max_concurrent_streams() -> u64 {
        100
    }
    pub(crate) fn quic_idle_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub(crate) fn quic_max_handshakes_per_ip() -> u64 {
        32
    }
    pub(crate) fn quic_retry_above() -> u64 {
        64
    }
    pub(crate) fn quic_max_handshakes() -> u64 {
        4096
    }
    pub(crate) fn h2_idle_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(60))
    }
    pub(crate) fn max_informational_responses() -> usize {
        10
    }
    pub(crate) fn respond_status() -> u16 {
        200
    }
    pub(crate) fn part_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(2))
    }
    pub(crate) fn dns_refresh() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub(crate) fn min_ttl() -> HumanDuration {
        HumanDuration(Duration::from_secs(1))
    }
    pub(crate) fn max_ttl() -> HumanDuration {
        HumanDuration(Duration::from_secs(300))
    }
    pub(crate) fn breaker_failures() -> u32 {
        5
    }
    pub(crate) fn breaker_cooldown() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    pub(crate) fn retry_ratio() -> f64 {
        0.2
    }
    pub(crate) fn retry_min_per_second() -> u64 {
        10
    }
    pub(crate) fn max_header_bytes() -> HumanSize {
        HumanSize(32 * 1024)
    }
    pub(crate) fn max_headers() -> usize {
        100
    }
    pub(crate) fn max_body_size() -> HumanSize {
        HumanSize(10 * 1024 * 1024)
    }
    pub(crate) fn header_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    pub(crate) fn cache_max_size() -> HumanSize {
        HumanSize(64 * 1024 * 1024)
    }
    pub(crate) fn cache_max_object_size() -> HumanSize {
        HumanSize(1024 * 1024)
    }
    pub(crate) fn cache_lock_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(5))
    }
    pub(crate) fn body_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub(crate) fn max_connections() -> usize {
        0
    }
    pub(crate) fn max_connections_per_ip() -> usize {
        0
    }
    pub(crate) fn identity_headers() -> Vec<super::Header> {
        ["X-User-ID", "X-User-Roles", "X-Consumer"]
            .map(super::Header::new)
            .to_vec()
    }
    pub(crate) fn jwks_refresh() -> HumanDuration {
        HumanDuration(Duration::from_secs(300))
    }
    pub(crate) fn jwks_min_refresh() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    pub(crate) fn jwt_leeway() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub(crate) fn roles_claim() -> String {
        "roles".into()
    }
    pub(crate) fn subject_header() -> super::Header {
        super::Header::new("X-User-ID")
    }
    pub(crate) fn roles_header() -> super::Header {
        super::Header::new("X-User-Roles")
    }
    pub(crate) fn jwt_cache_entries() -> usize {
        10_000
    }
    pub(crate) fn api_key_header() -> super::Header {
        super::Header::new("X-API-Key")
    }
    pub(crate) fn consumer_header() -> super::Header {
        super::Header::new("X-Consumer")
    }
    pub(crate) fn rate_key() -> super::RateKey {
        super::RateKey::IP
    }
    pub(crate) fn redis_timeout() -> HumanDuration {
        HumanDuration(Duration::from_millis(50))
    }
    pub(crate) fn openapi_title() -> String {
        "Tollgate API".into()
    }
    pub(crate) fn openapi_version() -> String {
        "1.0.0".into()
    }
    pub(crate) fn cors_methods() -> Vec<super::MethodName> {
        ["GET", "HEAD", "POST"].map(super::MethodName::new).to_vec()
    }
}
