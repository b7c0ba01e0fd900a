//! Every number in the configuration has a range (`src/config/bounds.rs`, documented in
//! `docs/configuration-ranges.md`), and the ranges are right in both directions:
//!
//! - `tollgate -t` refuses a value just outside either end of every range, with exit status
//!   1, the exact key path and the documented range in the message
//!   ([`out_of_range_values_are_refused_with_the_key_and_the_range`]);
//! - every value inside the ranges is accepted by `-t`, and a gateway started on it comes up,
//!   proxies a request and neither panics nor aborts
//!   ([`in_range_extremes_are_accepted_and_start`]).
//!
//! Both tests build their configurations from one template, [`TEMPLATE`], that sets every
//! numeric key; a test fails if the template misses a key of `bounds::RANGES`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tollgate::config::bounds::{self, Limit, Range};

/// A configuration that sets every numeric key. `@KEY@` is replaced by the value chosen for
/// the key pattern KEY; `$PORT` by the test backend's port, `$HOSTS` by a hosts file naming
/// `backend.test`; `{dir}`, `{listen}` and `{admin}` are the harness's placeholders.
///
/// Where values go: `upstreams.*` is `upstreams.extreme`, `auth.jwt.*` is `auth.jwt.idp`,
/// `consumers.*` is `consumers.alice`; route keys are on `routes[1]` ("extreme", proxied to
/// the extreme group), except `respond.status` (`routes[2]`) and the aggregate part timeout
/// (`routes[3]`). `routes[0]` ("ok", to the `app` group) has no numeric key of its own, so a
/// request to it works whatever the extremes are (the global `[server]`, `[limits]` ... keys
/// still apply to it).
const TEMPLATE: &str = r#"
[server]
threads = @server.threads@
pid_file = "{dir}/tollgate.pid"
upgrade_sock = "{dir}/upgrade.sock"
grace_period = @server.grace_period@
graceful_shutdown_timeout = @server.graceful_shutdown_timeout@
upstream_keepalive_pool_size = @server.upstream_keepalive_pool_size@
client_read_buffer = @server.client_read_buffer@

[[listeners]]
address = "{listen}"

[[listeners]]
address = "127.0.0.1:$QUIC_PORT"
[listeners.tls]
certificates = [{ cert = "$CERT", key = "$KEY" }]
[listeners.quic]
alt_svc_max_age = @listeners[].quic.alt_svc_max_age@
max_concurrent_streams = @listeners[].quic.max_concurrent_streams@
idle_timeout = @listeners[].quic.idle_timeout@
max_header_list_size = @listeners[].quic.max_header_list_size@
max_handshakes_per_ip = @listeners[].quic.max_handshakes_per_ip@
retry_above = @listeners[].quic.retry_above@
max_handshakes = @listeners[].quic.max_handshakes@

[admin]
address = "{admin}"

[tracing]
endpoint = "http://127.0.0.1:9/v1/traces"
sample_ratio = @tracing.sample_ratio@
queue_size = @tracing.queue_size@
batch_size = @tracing.batch_size@
flush_interval = @tracing.flush_interval@
export_timeout = @tracing.export_timeout@

[access_log]
target = "{dir}/access.log"
buffer_lines = @access_log.buffer_lines@

[resolver]
hosts_file = "$HOSTS"
min_ttl = @resolver.min_ttl@
max_ttl = @resolver.max_ttl@

[limits]
max_header_bytes = @limits.max_header_bytes@
max_headers = @limits.max_headers@
max_body_size = @limits.max_body_size@
header_timeout = @limits.header_timeout@
body_timeout = @limits.body_timeout@
max_connections = @limits.max_connections@
max_connections_per_ip = @limits.max_connections_per_ip@
keepalive_timeout = @limits.keepalive_timeout@
h2_idle_timeout = @limits.h2_idle_timeout@
max_informational_responses = @limits.max_informational_responses@

[rate_limit]
redis_timeout = @rate_limit.redis_timeout@
sync_interval = @rate_limit.sync_interval@

[cache]
max_size = @cache.max_size@
max_object_size = @cache.max_object_size@
lock_timeout = @cache.lock_timeout@
[cache.shared]
redis = "redis://127.0.0.1:9/0"
max_object_size = @cache.shared.max_object_size@
max_ttl = @cache.shared.max_ttl@
timeout = @cache.shared.timeout@

[auth.jwt.idp]
algorithms = ["RS256"]
jwks_url = "http://127.0.0.1:$PORT/jwks"
jwks_refresh = @auth.jwt.*.jwks_refresh@
jwks_min_refresh = @auth.jwt.*.jwks_min_refresh@
leeway = @auth.jwt.*.leeway@
cache_entries = @auth.jwt.*.cache_entries@

[auth.forward.fa]
upstream = "app"
timeout = @auth.forward.*.timeout@

[auth.forward.fa.cache]
ttl = @auth.forward.*.cache.ttl@
negative_ttl = @auth.forward.*.cache.negative_ttl@
max_entries = @auth.forward.*.cache.max_entries@

[auth.introspection.ti]
upstream = "app"
path = "/introspect"
client_id = "gateway"
client_secret_env = "PATH"
timeout = @auth.introspection.*.timeout@

[auth.introspection.ti.cache]
ttl = @auth.introspection.*.cache.ttl@
negative_ttl = @auth.introspection.*.cache.negative_ttl@
max_entries = @auth.introspection.*.cache.max_entries@

[consumers.alice]
keys = ["alice-key-0123456789abcdef"]
rate_limits = [{ limit = @consumers.*.rate_limits[].limit@, window = @consumers.*.rate_limits[].window@ }]

[upstreams.app]
targets = [{ address = "127.0.0.1:$PORT" }]

[upstreams.extreme]
targets = [
  { address = "127.0.0.1:$PORT", weight = @upstreams.*.targets[].weight@ },
  { address = "backend.test:$PORT" },
]
connect_timeout = @upstreams.*.connect_timeout@
read_timeout = @upstreams.*.read_timeout@
dns_refresh = @upstreams.*.dns_refresh@

[upstreams.extreme.health_check]
expected_status = @upstreams.*.health_check.expected_status@
interval = @upstreams.*.health_check.interval@
timeout = @upstreams.*.health_check.timeout@
healthy_threshold = @upstreams.*.health_check.healthy_threshold@
unhealthy_threshold = @upstreams.*.health_check.unhealthy_threshold@

[upstreams.extreme.circuit_breaker]
consecutive_failures = @upstreams.*.circuit_breaker.consecutive_failures@
cooldown = @upstreams.*.circuit_breaker.cooldown@

[upstreams.extreme.retry_budget]
ratio = @upstreams.*.retry_budget.ratio@
min_per_second = @upstreams.*.retry_budget.min_per_second@

[upstreams.extreme.fallback]
status = @upstreams.*.fallback.status@

[[routes]]
name = "ok"
path_prefix = "/ok"
upstream = "app"

[[routes]]
name = "extreme"
path_prefix = "/x"
upstream = "extreme"
connect_timeout = @routes[].connect_timeout@
read_timeout = @routes[].read_timeout@
retries = @routes[].retries@
websocket_idle_timeout = @routes[].websocket_idle_timeout@
max_body_size = @routes[].max_body_size@
rate_limits = [{ limit = @routes[].rate_limits[].limit@, window = @routes[].rate_limits[].window@ }]

[routes.cache]
ttl = @routes[].cache.ttl@
stale_while_revalidate = @routes[].cache.stale_while_revalidate@
stale_if_error = @routes[].cache.stale_if_error@

[routes.cors]
allow_origins = ["https://app.example"]
max_age = @routes[].cors.max_age@

[routes.compression]
min_size = @routes[].compression.min_size@

[[routes]]
name = "respond"
path = "/r"

[routes.respond]
status = @routes[].respond.status@

[[routes]]
name = "aggregate"
path = "/agg"

[routes.aggregate]

[[routes.aggregate.parts]]
name = "a"
upstream = "app"
path = "/part"
timeout = @routes[].aggregate.parts[].timeout@
"#;

/// The concrete key path where [`TEMPLATE`] puts the value of `pattern`.
fn concrete(pattern: &str) -> String {
    let route = if pattern.starts_with("routes[].respond.") {
        "routes[2]"
    } else if pattern.starts_with("routes[].aggregate.") {
        "routes[3]"
    } else {
        "routes[1]"
    };
    pattern
        .replacen("routes[]", route, 1)
        .replace("upstreams.*", "upstreams.extreme")
        .replace("auth.jwt.*", "auth.jwt.idp")
        .replace("auth.forward.*", "auth.forward.fa")
        .replace("auth.introspection.*", "auth.introspection.ti")
        .replace("consumers.*", "consumers.alice")
        .replace("listeners[]", "listeners[1]")
        .replace("[]", "[0]")
}

/// A value as TOML: the ends in the spelling the document uses (`"1KiB"`, `"1d"`), other
/// sizes as a number of bytes and other durations in nanoseconds.
fn toml_value(v: Limit, spelled: bool) -> String {
    match v {
        Limit::Int(n) => n.to_string(),
        Limit::Float(x) => format!("{x:?}"),
        Limit::Size(_) | Limit::Time(_) if spelled => format!("\"{v}\""),
        Limit::Size(n) => n.to_string(),
        Limit::Time(d) => format!("\"{}ns\"", d.as_nanos()),
    }
}

/// The files and ports a configuration refers to.
struct Env {
    port: u16,
    /// The TLS listener with HTTP/3 (`listeners[1]`).
    quic_port: u16,
    hosts: tempfile::TempDir,
}

impl Env {
    fn new(port: u16) -> Env {
        let hosts = tempfile::tempdir().unwrap();
        // 127.0.0.2 refuses connections (the backend listens on 127.0.0.1 only): a second,
        // failing target for the extreme group, found through DNS refresh.
        std::fs::write(hosts.path().join("hosts"), "127.0.0.2 backend.test\n").unwrap();
        self_signed(hosts.path(), "bounds");
        Env {
            port,
            quic_port: free_port(),
            hosts,
        }
    }

    /// [`TEMPLATE`] with `values` (key pattern to TOML text) filled in.
    fn render(&self, values: &BTreeMap<&str, String>) -> String {
        let mut out = String::new();
        let mut rest = TEMPLATE;
        while let Some(start) = rest.find('@') {
            let end = start + 1 + rest[start + 1..].find('@').unwrap();
            let key = &rest[start + 1..end];
            let value = values
                .get(key)
                .unwrap_or_else(|| panic!("no value for {key}: not a key of bounds::RANGES?"));
            out.push_str(&rest[..start]);
            out.push_str(value);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        let file = |name: &str| self.hosts.path().join(name).display().to_string();
        out.replace("$QUIC_PORT", &self.quic_port.to_string())
            .replace("$PORT", &self.port.to_string())
            .replace("$HOSTS", &file("hosts"))
            .replace("$CERT", &file("c.crt"))
            .replace("$KEY", &file("c.key"))
    }
}

/// `{listen}` and `{admin}` for `-t`, which binds nothing.
fn for_check(config: &str) -> String {
    config
        .replace("{listen}", "127.0.0.1:18080")
        .replace("{admin}", "127.0.0.1:19090")
}

/// The documented (min, max) of every key of `docs/configuration-ranges.md`.
fn documented() -> BTreeMap<String, (String, String)> {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration-ranges.md"),
    )
    .unwrap();
    doc.lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`'))
                .collect();
            (cells[0].to_string(), (cells[3].into(), cells[4].into()))
        })
        .collect()
}

/// Every key pattern with a value at its minimum: in range, and together valid (minima
/// satisfy the rules between keys).
fn minima() -> BTreeMap<&'static str, String> {
    bounds::rows()
        .map(|(k, r)| (k, toml_value(r.min, true)))
        .collect()
}

#[test]
fn the_template_sets_every_key_of_the_ranges() {
    for (key, _) in bounds::rows() {
        assert!(
            TEMPLATE.contains(&format!("@{key}@")),
            "{key} is not set by TEMPLATE"
        );
    }
}

/// Just below the minimum and just above the maximum of `r`, where the type can hold them.
fn outside(r: &Range) -> Vec<Limit> {
    let mut v = Vec::new();
    match (r.min, r.max) {
        (Limit::Int(min), Limit::Int(max)) => {
            v.extend(min.checked_sub(1).map(Limit::Int));
            v.push(Limit::Int(max + 1));
        }
        (Limit::Size(min), Limit::Size(max)) => {
            v.extend(min.checked_sub(1).map(Limit::Size));
            v.push(Limit::Size(max + 1));
        }
        (Limit::Time(min), Limit::Time(max)) => {
            v.extend(min.checked_sub(Duration::from_nanos(1)).map(Limit::Time));
            v.push(Limit::Time(max + Duration::from_nanos(1)));
        }
        (Limit::Float(min), Limit::Float(max)) => {
            v.push(Limit::Float(min - 0.001));
            v.push(Limit::Float(max + 0.001));
        }
        other => panic!("mixed range {other:?}"),
    }
    v
}

/// Run `-t` on `config` and return the problem lines (file name stripped).
fn refused(config: &str, what: &str) -> Vec<String> {
    let (code, out) = check_config(&for_check(config));
    assert_eq!(code, 1, "{what}: exit status; output:\n{out}");
    // The location the line ends with (`(line 3, column 11)`, with the route's name for a
    // route) is left out: the ranges are what these tests are about.
    out.lines()
        .map(|l| {
            let rest = l.split_once(".toml: ").map_or(l, |(_, rest)| rest);
            match rest.rfind(" (") {
                Some(i) if rest.ends_with(')') && rest[i..].contains("line ") => &rest[..i],
                _ => rest,
            }
            .to_string()
        })
        .collect()
}

/// Proves: below the minimum and above the maximum of every range, `-t` exits 1 with one
/// line naming the exact key path and the documented range; the two values reported to
/// start-crash the gateway are among them; NaN and infinite floats are refused too.
#[test]
fn out_of_range_values_are_refused_with_the_key_and_the_range() {
    let env = Env::new(9);
    let doc = documented();
    let base = minima();
    let (code, out) = check_config(&for_check(&env.render(&base)));
    assert_eq!(code, 0, "the base (every minimum) is valid: {out}");

    let mut cases = 0;
    for (key, range) in bounds::rows() {
        let (min, max) = doc
            .get(key)
            .unwrap_or_else(|| panic!("{key} is not in docs/configuration-ranges.md"));
        let path = concrete(key);
        for value in outside(range) {
            let mut values = base.clone();
            values.insert(key, toml_value(value, false));
            let what = format!("{key} = {value}");
            let lines = refused(&env.render(&values), &what);
            let want = format!("{path}: must be between {min} and {max}, got ");
            assert!(
                lines.len() == 1 && lines[0].starts_with(&want),
                "{what}: expected one line starting {want:?}; got {lines:#?}"
            );
            cases += 1;
        }
    }
    assert!(cases > 80, "{cases} cases");

    // Exact messages, including the two values that used to pass `-t` and then crash the
    // start (capacity overflow; an allocation of 4.9 EB).
    let exact: &[(&str, &str, &str)] = &[
        (
            "server.threads",
            "18446744073709551615",
            "server.threads: must be between 1 and 1024, got 18446744073709551615",
        ),
        (
            "server.upstream_keepalive_pool_size",
            "1000000000000000000",
            "server.upstream_keepalive_pool_size: must be between 0 and 10000, got 1000000000000000000",
        ),
        (
            "routes[].retries",
            "11",
            "routes[1].retries: must be between 0 and 10, got 11",
        ),
        (
            "routes[].rate_limits[].window",
            "\"2d\"",
            "routes[1].rate_limits[0].window: must be between 1s and 1d, got 2d",
        ),
        (
            "upstreams.*.health_check.interval",
            "\"0s\"",
            "upstreams.extreme.health_check.interval: must be between 100ms and 1d, got 0s",
        ),
        (
            "limits.max_headers",
            "257",
            "limits.max_headers: must be between 1 and 256, got 257",
        ),
        (
            "server.client_read_buffer",
            "\"2MiB\"",
            "server.client_read_buffer: must be between 1KiB and 1MiB, got 2MiB",
        ),
        (
            "upstreams.*.retry_budget.ratio",
            "nan",
            "upstreams.extreme.retry_budget.ratio: must be between 0.0 and 10.0, got NaN",
        ),
        (
            "upstreams.*.retry_budget.ratio",
            "inf",
            "upstreams.extreme.retry_budget.ratio: must be between 0.0 and 10.0, got inf",
        ),
        (
            "routes[].respond.status",
            "999",
            "routes[2].respond.status: must be between 200 and 599, got 999",
        ),
    ];
    for (key, value, message) in exact {
        let mut values = base.clone();
        values.insert(key, value.to_string());
        let lines = refused(&env.render(&values), &format!("{key} = {value}"));
        assert_eq!(lines, [message.to_string()], "{key} = {value}");
    }
}

/// How a run chooses each key's value.
#[derive(Debug, Clone, Copy)]
enum Draw {
    Minima,
    Maxima,
    /// Per key: the minimum, the maximum or a value between, from this seed.
    Seed(u64),
}

/// A value of `r` chosen by `draw`.
fn pick(r: &Range, draw: Draw, rng: &mut fastrand::Rng) -> Limit {
    let choice = match draw {
        Draw::Minima => 0,
        Draw::Maxima => 1,
        Draw::Seed(_) => rng.u8(0..3),
    };
    match (choice, r.min, r.max) {
        (0, min, _) => min,
        (1, _, max) => max,
        (_, Limit::Int(a), Limit::Int(b)) => Limit::Int(rng.u64(a..=b)),
        (_, Limit::Size(a), Limit::Size(b)) => Limit::Size(rng.u64(a..=b)),
        (_, Limit::Time(a), Limit::Time(b)) => {
            let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap();
            Limit::Time(Duration::from_nanos(rng.u64(nanos(a)..=nanos(b))))
        }
        (_, Limit::Float(a), Limit::Float(b)) => Limit::Float(a + rng.f64() * (b - a)),
        other => panic!("mixed range {other:?}"),
    }
}

/// Values for every key, in range, respecting the rules between keys.
fn draw_values(draw: Draw) -> BTreeMap<&'static str, Limit> {
    let mut rng = fastrand::Rng::with_seed(match draw {
        Draw::Seed(s) => s,
        _ => 0,
    });
    let mut v: BTreeMap<&'static str, Limit> = bounds::rows()
        .map(|(k, r)| (k, pick(r, draw, &mut rng)))
        .collect();
    // The two rules between keys (docs/configuration-ranges.md, "Rules between keys").
    if let (Limit::Size(object), Limit::Size(total)) =
        (v["cache.max_object_size"], v["cache.max_size"])
    {
        if object > total {
            v.insert("cache.max_object_size", Limit::Size(total));
        }
    }
    if let (Limit::Time(refresh), Limit::Time(min)) = (
        v["auth.jwt.*.jwks_refresh"],
        v["auth.jwt.*.jwks_min_refresh"],
    ) {
        if refresh < min {
            v.insert("auth.jwt.*.jwks_refresh", Limit::Time(min));
        }
    }
    v
}

/// The same values, adjusted for a gateway started in this test: these keys apply to the
/// request the test sends, or cost the test machine, so their extremes stay in `-t` (which
/// accepts them all) and the started instance gets a value that serves one plain GET.
fn for_start(mut v: BTreeMap<&'static str, Limit>) -> BTreeMap<&'static str, Limit> {
    let clamp_min = |v: &mut BTreeMap<&'static str, Limit>, key, min: Limit| {
        let below = match (v[key], min) {
            (Limit::Int(a), Limit::Int(b)) => a < b,
            (Limit::Time(a), Limit::Time(b)) => a < b,
            other => panic!("{key}: {other:?}"),
        };
        if below {
            v.insert(key, min);
        }
    };
    // A started server runs at most 4 worker threads (the machine has 2 cores; `-t`
    // accepted the documented maximum of 1024 above, and the range's own reason, thread
    // and pool memory, is measured in the docs rather than on a test machine).
    if let Limit::Int(n) = v["server.threads"] {
        v.insert("server.threads", Limit::Int(n.min(4)));
    }
    // The request carries a few headers and must get a connection slot while the harness's
    // readiness probe may still hold one; a 1ms head or body deadline could fire on a busy
    // machine.
    clamp_min(&mut v, "limits.max_headers", Limit::Int(16));
    if v["limits.max_connections"] != Limit::Int(0) {
        clamp_min(&mut v, "limits.max_connections", Limit::Int(64));
    }
    if v["limits.max_connections_per_ip"] != Limit::Int(0) {
        clamp_min(&mut v, "limits.max_connections_per_ip", Limit::Int(64));
    }
    clamp_min(
        &mut v,
        "limits.header_timeout",
        Limit::Time(Duration::from_secs(2)),
    );
    clamp_min(
        &mut v,
        "limits.body_timeout",
        Limit::Time(Duration::from_secs(2)),
    );
    v
}

fn as_toml(v: &BTreeMap<&'static str, Limit>) -> BTreeMap<&'static str, String> {
    v.iter()
        .map(|(k, l)| {
            let r = bounds::range_of(k).unwrap();
            (*k, toml_value(*l, *l == r.min || *l == r.max))
        })
        .collect()
}

/// Proves, for all minima, all maxima and six seeded mixes of minimum, maximum and values
/// between (per key): `-t` accepts every in-range value, up to each documented maximum; and
/// a gateway started on the same values (with the few request-path adjustments of
/// [`for_start`]) comes up, proxies a request to a real backend on the route whose timeouts
/// are sane, answers the fixed-response route with the drawn status, takes requests on the
/// routes carrying the extremes without dying, and after its background loops ran (health
/// checks, DNS refresh, JWKS refresh, access log) is still running with no panic in stderr.
#[test]
fn in_range_extremes_are_accepted_and_start() {
    let backend = Backend::echo("app");
    let env = Env::new(backend.addr.port());
    let draws = [
        Draw::Minima,
        Draw::Maxima,
        Draw::Seed(1),
        Draw::Seed(2),
        Draw::Seed(3),
        Draw::Seed(4),
        Draw::Seed(5),
        Draw::Seed(6),
    ];
    let quick = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for draw in draws {
        let values = draw_values(draw);

        // Accepted by `-t`, at the full documented ranges.
        let config = env.render(&as_toml(&values));
        let (code, out) = check_config(&for_check(&config));
        assert_eq!(
            code, 0,
            "{draw:?}: -t refused in-range values: {out}\n{config}"
        );
        assert!(out.contains("configuration is valid"), "{draw:?}: {out}");

        // Started: comes up and serves.
        let started = for_start(values);
        let (health_before, seen_before) = (backend.health_hits(), backend.requests().len());
        let config = env.render(&as_toml(&started));
        let mut gw = Gateway::start_full(&config)
            .unwrap_or_else(|e| panic!("{draw:?}: did not start: {e}\n{config}"));
        let resp = client()
            .get(gw.url("/ok/hello"))
            .send()
            .unwrap_or_else(|e| panic!("{draw:?}: /ok: {e}; stderr: {}", gw.stderr()));
        assert_eq!(resp.status(), 200, "{draw:?}: /ok; stderr: {}", gw.stderr());
        let body: serde_json::Value = resp.json().unwrap();
        assert_eq!(body["backend"], "app", "{draw:?}: {body}");

        let Limit::Int(status) = started["routes[].respond.status"] else {
            panic!("status is an integer");
        };
        let resp = client().get(gw.url("/r")).send().unwrap();
        assert_eq!(u64::from(resp.status().as_u16()), status, "{draw:?}: /r");

        // The routes carrying the extremes: any answer (timeouts of 1ms may fail them), or
        // none within 5s; what matters is the process afterwards.
        for path in ["/x/a", "/x/a", "/agg"] {
            let _ = quick.get(gw.url(path)).send().and_then(|r| r.bytes());
        }
        // Background loops: health checks (every 100ms at the least), DNS refresh and
        // JWKS retries (1s at the least) schedule their next run right after the first.
        std::thread::sleep(Duration::from_millis(1200));
        assert!(
            gw.is_running(),
            "{draw:?}: the gateway exited; stderr: {}",
            gw.stderr()
        );
        let stderr = gw.stderr();
        assert!(
            !stderr.contains("panicked") && !stderr.contains("memory allocation"),
            "{draw:?}: {stderr}"
        );
        // The loops did run with these values: the JWKS refresher fetched at start, and the
        // health check ran (asserted when its timeout leaves room to get the request out).
        assert!(
            backend.requests()[seen_before..]
                .iter()
                .any(|r| r.path == "/jwks"),
            "{draw:?}: no JWKS fetch; stderr: {stderr}"
        );
        if matches!(
            started["upstreams.*.health_check.timeout"],
            Limit::Time(d) if d >= Duration::from_millis(100)
        ) {
            assert!(
                backend.health_hits() > health_before,
                "{draw:?}: no health check; stderr: {stderr}"
            );
        }
        let resp = client().get(gw.url("/ok/again")).send().unwrap();
        assert_eq!(resp.status(), 200, "{draw:?}: /ok after the extremes");
    }
    drop(backend);
}
