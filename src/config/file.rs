//! What the user writes: the serde model of `tollgate.toml`.
//!
//! Every struct rejects unknown keys, and every default lives in one named function in
//! [`defaults`] so that `Default` impls and serde agree. Nothing here is validated beyond its
//! type; `validate.rs` checks meaning and `compile.rs` builds the runtime form.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The whole configuration file.
#[derive(Debug, Deserialize)]
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
    pub upstreams: BTreeMap<String, UpstreamSection>,
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    #[serde(default)]
    pub demo: Vec<DemoSection>,
}

/// `[server]`: process-wide settings, turned into Pingora's `ServerConf`.
#[derive(Debug, Deserialize)]
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
        }
    }
}

/// `[[listeners]]`: a plain-text HTTP listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub address: String,
}

/// `[admin]`: the operator listener serving `/health` and `/metrics`.
#[derive(Debug, Deserialize)]
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

/// `[access_log]`: one JSON line per request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    /// `"stdout"`, `"off"`, or a file path (appended to).
    #[serde(default = "defaults::access_log_target")]
    pub target: String,
    /// Lines queued for the writer before new ones are dropped (and counted).
    #[serde(default = "defaults::access_log_buffer")]
    pub buffer_lines: usize,
}

impl Default for AccessLogSection {
    fn default() -> Self {
        AccessLogSection {
            target: defaults::access_log_target(),
            buffer_lines: defaults::access_log_buffer(),
        }
    }
}

/// `[upstreams.NAME]`: a group of interchangeable targets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    #[serde(default)]
    pub policy: BalancePolicy,
    /// For `consistent_hash`: `"header:NAME"`, `"cookie:NAME"` or `"client_ip"`.
    #[serde(default)]
    pub hash_on: Option<String>,
    pub targets: Vec<TargetSection>,
    #[serde(default)]
    pub health_check: Option<HealthCheckSection>,
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: HumanDuration,
    #[serde(default = "defaults::read_timeout")]
    pub read_timeout: HumanDuration,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BalancePolicy {
    #[default]
    RoundRobin,
    LeastConnections,
    ConsistentHash,
}

/// One upstream instance.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// `IP:PORT`.
    pub address: String,
    #[serde(default = "defaults::weight")]
    pub weight: usize,
}

/// `[upstreams.NAME.health_check]`: active checks run in the background.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    #[serde(default)]
    pub kind: HealthCheckKind,
    /// HTTP only: the path requested.
    #[serde(default = "defaults::health_path")]
    pub path: String,
    /// HTTP only: the `Host` header sent.
    #[serde(default = "defaults::health_host")]
    pub host: String,
    /// HTTP only: the status that counts as healthy.
    #[serde(default = "defaults::health_status")]
    pub expected_status: u16,
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
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    #[default]
    Http,
    Tcp,
}

/// `[[routes]]`: what to match and what to do with a match.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub name: String,
    /// Exact host names or `*.suffix` wildcards; empty matches any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Matches this path and everything below it (segment-aware: `/api` does not match `/apix`).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Matches only this exact path.
    #[serde(default)]
    pub path: Option<String>,
    /// Empty matches any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Header name to exact value; all must match.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
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
    /// Extra attempts on another target when connecting fails (idempotent methods only).
    #[serde(default = "defaults::retries")]
    pub retries: usize,
    /// Answer directly, without an upstream.
    #[serde(default)]
    pub respond: Option<RespondSection>,
}

/// `[routes.respond]`: a fixed response.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondSection {
    #[serde(default = "defaults::respond_status")]
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
}

/// `[[demo]]`: a built-in backend the binary starts itself, so the example configuration
/// shows proxying, balancing and health checks with nothing else running.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoSection {
    pub name: String,
    pub address: String,
}

/// A duration written as `"250ms"`, `"5s"`, `"1m 30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HumanDuration(pub Duration);

impl TryFrom<String> for HumanDuration {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| format!("invalid duration {s:?} ({e}); write e.g. \"500ms\", \"5s\", \"2m\""))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// The defaults, each in one place.
pub mod defaults {
    use super::HumanDuration;
    use std::time::Duration;

    pub fn threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
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
    pub fn admin_address() -> String {
        "127.0.0.1:9090".into()
    }
    pub fn enabled() -> bool {
        true
    }
    pub fn access_log_target() -> String {
        "stdout".into()
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
    pub fn respond_status() -> u16 {
        200
    }
}
