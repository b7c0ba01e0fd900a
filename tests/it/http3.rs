//! HTTP/3 over QUIC (`[listeners.quic]`), driven by clients written by others: aioquic
//! (`tests/conformance/h3_client.py`, and `h3_flood.py` for handshakes that never finish) and
//! niquests (`tests/conformance/h3_niquests.py`, QUIC by qh3). Routes and policies as over
//! TCP (proxying with X-Forwarded-Proto, a 5 MiB body, JWT, rate limits, the cache), 100
//! streams at once on one connection, a client moving to another port, Alt-Svc over TCP and
//! QUIC, the access log and metrics, Retry, the per-IP handshake cap, an Initial flood,
//! 0-RTT, the header-size limit and `tollgate -t`; a reload under an open connection (new
//! routes for its next request, the new certificate for the next handshake), a binary
//! upgrade handing HTTP/3 to the new instance, and gRPC-Web to a gRPC upstream.
//!
//! Every client checks the gateway's certificate against a CA made for the test, for the name
//! `tls.test`.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::{json, Value};
use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

const H3_CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/conformance/h3_client.py"
);
const H3_FLOOD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance/h3_flood.py");
const H3_NIQUESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/conformance/h3_niquests.py"
);

const SECRET: &str = "h3-test-secret-0123456789abcdef0123";

/// A CA and a leaf for `tls.test` signed by it (`ca.crt`, `leaf.crt`, `leaf.key`), and the
/// JWT secret (`secret`), in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Tollgate HTTP/3 Test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        std::fs::write(dir.path().join("ca.crt"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        let pki = Pki { dir, issuer };
        pki.issue_leaf("tls.test");
        pki
    }

    /// (Re)write `leaf.crt` and `leaf.key`: a new key and a certificate for `tls.test` with
    /// common name `cn`, signed by the CA.
    fn issue_leaf(&self, cn: &str) {
        let mut params = CertificateParams::new(vec!["tls.test".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(self.dir.path().join("leaf.crt"), cert.pem()).unwrap();
        std::fs::write(self.dir.path().join("leaf.key"), key.serialize_pem()).unwrap();
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }
}

/// The whole config of an HTTP/3 gateway: `@QUIC@` is the body of `[listeners.quic]`,
/// `@REST@` the upstreams and routes; `{dir}`, `{listen}`, `{admin}` as in `common`.
const TEMPLATE: &str = r#"
[server]
threads = 2
pid_file = "{dir}/tollgate.pid"
upgrade_sock = "{dir}/upgrade.sock"
grace_period = "1s"
graceful_shutdown_timeout = "1s"

[[listeners]]
address = "{listen}"
[listeners.tls]
certificates = [{ cert = "@CERT@", key = "@KEY@" }]
[listeners.quic]
@QUIC@

[admin]
address = "{admin}"

[access_log]
target = "{dir}/access.log"

@REST@
"#;

fn config(pki: &Pki, quic: &str, rest: &str) -> String {
    TEMPLATE
        .replace("@CERT@", &pki.path("leaf.crt"))
        .replace("@KEY@", &pki.path("leaf.key"))
        .replace("@QUIC@", quic)
        .replace("@REST@", rest)
}

/// Start a gateway with HTTP/3 on its listener and wait until it holds the UDP port too.
fn start(pki: &Pki, quic: &str, rest: &str) -> Gateway {
    let gw = Gateway::start_full(&config(pki, quic, rest))
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    // Bound when this side can no longer bind it (no SO_REUSEPORT here).
    let bound = wait_for(Duration::from_secs(20), || {
        UdpSocket::bind(gw.addr).is_err().then_some(())
    });
    assert!(
        bound.is_some(),
        "the gateway never bound UDP {}: {}",
        gw.addr,
        gw.stderr()
    );
    gw
}

/// The `app` upstream (`backend`) and one route to it under `prefix`.
fn app_at(backend: &Backend, prefix: &str) -> String {
    format!(
        "[upstreams.app]\ntargets = [{{ address = \"{}\" }}]\n[[routes]]\nname = \"app\"\npath_prefix = \"{prefix}\"\nupstream = \"app\"\n",
        backend.addr
    )
}

/// An h3_client.py job for `gw`, verifying its certificate for `tls.test`.
fn job(gw: &Gateway, pki: &Pki, requests: Value) -> Value {
    json!({
        "host": "127.0.0.1",
        "port": gw.addr.port(),
        "server_name": "tls.test",
        "ca": pki.path("ca.crt"),
        "requests": requests,
        "connect_timeout": 10,
        "timeout": 60,
    })
}

fn python(script: &str, job: &Value) -> std::process::Output {
    Command::new("python3")
        .arg(script)
        .arg(job.to_string())
        .output()
        .expect("python3 with aioquic and niquests (scripts/setup.sh installs them)")
}

/// Run h3_client.py; Err(its stderr) when it could not connect.
fn try_h3(job: &Value) -> Result<Value, String> {
    let out = python(H3_CLIENT, job);
    if !out.status.success() {
        return Err(format!(
            "{} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "{e}: {} / {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Run h3_client.py, which must connect.
fn h3(gw: &Gateway, job: &Value) -> Value {
    try_h3(job).unwrap_or_else(|e| panic!("h3_client.py: {e}\ngateway stderr:\n{}", gw.stderr()))
}

/// The `i`th answer of an h3_client.py result, which must be complete.
fn response(result: &Value, i: usize) -> &Value {
    let r = &result["responses"][i];
    assert!(r["error"].is_null(), "request {i} failed: {r}\nin {result}");
    r
}

fn status(result: &Value, i: usize) -> u64 {
    response(result, i)["status"].as_u64().unwrap()
}

/// A response header (lower-case name) of an h3_client.py answer.
fn header<'a>(response: &'a Value, name: &str) -> Option<&'a str> {
    response["headers"]
        .as_array()?
        .iter()
        .find(|kv| kv[0] == name)
        .and_then(|kv| kv[1].as_str())
}

/// h3_client.py's body pattern: byte i is `a` + (7 * (i % 4096) + i / 4096) % 26.
fn pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| b'a' + ((7 * (i % 4096) + i / 4096) % 26) as u8)
        .collect()
}

/// `tollgate_quic_connections_total{outcome}`, 0 when not there yet.
fn quic_outcome(gw: &Gateway, outcome: &str) -> f64 {
    metric(
        &gw.metrics(),
        "tollgate_quic_connections_total",
        &[("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

/// A blocking HTTPS client over TCP trusting the test CA, `tls.test` resolving to `gw`.
fn tcp_client(gw: &Gateway, pki: &Pki) -> reqwest::blocking::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.path("ca.crt")).unwrap()).unwrap();
    reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .resolve("tls.test", gw.addr)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn tcp_url(gw: &Gateway, path: &str) -> String {
    format!("https://tls.test:{}{path}", gw.addr.port())
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn get_over_http3_reaches_the_upstream_with_host_and_forwarded_proto() {
    let pki = Pki::new();
    let backend = Backend::echo("app");
    let gw = start(&pki, "", &app_at(&backend, "/"));
    let result = h3(
        &gw,
        &job(&gw, &pki, json!([{"method": "GET", "path": "/hello?x=1"}])),
    );
    assert_eq!(result["alpn"], "h3", "{result}");
    assert_eq!(status(&result, 0), 200, "{result}");
    let r = response(&result, 0);
    assert_eq!(header(r, "x-backend"), Some("app"), "{r}");
    let echoed: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["path"], "/hello?x=1");
    let seen = backend.last_request();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path, "/hello?x=1");
    assert_eq!(
        seen.header("host"),
        Some("tls.test"),
        "the :authority as Host: {seen:?}"
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"), "{seen:?}");
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "{seen:?}"
    );
}

#[test]
fn post_bodies_reach_the_upstream_whole() {
    let pki = Pki::new();
    // Answers with the length only, so the answer stays small.
    let backend = Backend::start("app", |r| Reply::status(200).body(r.body.len().to_string()));
    let gw = start(&pki, "", &app_at(&backend, "/"));
    const BIG: usize = 5 * 1024 * 1024;
    const STREAMED: usize = 1024 * 1024 + 7;
    let result = h3(
        &gw,
        &job(
            &gw,
            &pki,
            json!([
                {"method": "POST", "path": "/big", "body_size": BIG},
                // No content-length: the body's size is known only at its end.
                {"method": "POST", "path": "/streamed", "body_size": STREAMED, "content_length": false},
            ]),
        ),
    );
    assert_eq!(status(&result, 0), 200, "{result}");
    assert_eq!(response(&result, 0)["body"], BIG.to_string());
    assert_eq!(status(&result, 1), 200, "{result}");
    assert_eq!(response(&result, 1)["body"], STREAMED.to_string());
    let requests = backend.requests();
    let big = requests.iter().find(|r| r.path == "/big").unwrap();
    assert_eq!(big.body.len(), BIG);
    assert!(big.body == pattern(BIG), "the 5 MiB body arrived changed");
    assert_eq!(big.header("content-length"), Some(BIG.to_string().as_str()));
    let streamed = requests.iter().find(|r| r.path == "/streamed").unwrap();
    assert!(
        streamed.body == pattern(STREAMED),
        "the body without content-length arrived changed ({} bytes)",
        streamed.body.len()
    );
}

#[test]
fn jwt_route_answers_401_without_a_token_and_200_with_one() {
    let pki = Pki::new();
    let backend = Backend::echo("app");
    let gw = start(
        &pki,
        "",
        &format!(
            r#"
[auth.jwt.hs]
algorithms = ["HS256"]
secret_file = "{secret}"

[upstreams.app]
targets = [{{ address = "{app}" }}]

[[routes]]
name = "hs"
path_prefix = "/hs"
upstream = "app"
auth = ["jwt:hs"]
"#,
            secret = pki.path("secret"),
            app = backend.addr
        ),
    );
    let token = hs256_token(SECRET.as_bytes(), json!({"sub": "user-7"}));
    let result = h3(
        &gw,
        &job(
            &gw,
            &pki,
            json!([
                {"path": "/hs/x"},
                {"path": "/hs/x", "headers": [["authorization", "Bearer not-a-token"]]},
                {"path": "/hs/y", "headers": [["authorization", format!("Bearer {token}")]]},
            ]),
        ),
    );
    assert_eq!(status(&result, 0), 401, "{result}");
    assert!(
        header(response(&result, 0), "www-authenticate").is_some_and(|v| v.starts_with("Bearer")),
        "{result}"
    );
    assert_eq!(status(&result, 1), 401, "{result}");
    assert_eq!(status(&result, 2), 200, "{result}");
    assert_eq!(
        backend.hits(),
        1,
        "refused requests never reach the upstream"
    );
    assert_eq!(backend.last_request().path, "/hs/y");
}

#[test]
fn rate_limited_route_answers_429_after_the_limit() {
    let pki = Pki::new();
    let backend = Backend::echo("app");
    let gw = start(
        &pki,
        "",
        &format!(
            r#"
[upstreams.app]
targets = [{{ address = "{}" }}]
[[routes]]
name = "limited"
path_prefix = "/"
upstream = "app"
rate_limits = [{{ limit = 3, window = "60s", key = "ip" }}]
"#,
            backend.addr
        ),
    );
    let requests: Vec<Value> = (0..5).map(|_| json!({"path": "/x"})).collect();
    let result = h3(&gw, &job(&gw, &pki, json!(requests)));
    for (i, remaining) in ["2", "1", "0"].iter().enumerate() {
        assert_eq!(status(&result, i), 200, "{result}");
        assert_eq!(
            header(response(&result, i), "ratelimit-remaining"),
            Some(*remaining)
        );
    }
    for i in 3..5 {
        assert_eq!(status(&result, i), 429, "{result}");
        assert!(
            header(response(&result, i), "retry-after").is_some(),
            "{result}"
        );
    }
    assert_eq!(backend.hits(), 3);
    // The same client over TCP shares the count (one key: its IP).
    let r = tcp_client(&gw, &pki)
        .get(tcp_url(&gw, "/x"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 429);
}

#[test]
fn cache_hit_over_http3_calls_the_upstream_once() {
    let pki = Pki::new();
    let backend = Backend::echo("app");
    let gw = start(
        &pki,
        "",
        &format!(
            r#"
[cache]
max_size = "1MiB"

[upstreams.app]
targets = [{{ address = "{}" }}]

[[routes]]
name = "cached"
path_prefix = "/cached"
upstream = "app"
[routes.cache]
ttl = "60s"
"#,
            backend.addr
        ),
    );
    let result = h3(
        &gw,
        &job(
            &gw,
            &pki,
            json!([{"path": "/cached/a"}, {"path": "/cached/a"}]),
        ),
    );
    assert_eq!(status(&result, 0), 200, "{result}");
    assert_eq!(
        header(response(&result, 0), "x-cache"),
        Some("MISS"),
        "{result}"
    );
    assert_eq!(status(&result, 1), 200, "{result}");
    assert_eq!(
        header(response(&result, 1), "x-cache"),
        Some("HIT"),
        "{result}"
    );
    assert_eq!(
        response(&result, 0)["body_sha256"],
        response(&result, 1)["body_sha256"],
        "a hit serves the stored body"
    );
    assert_eq!(backend.hits(), 1);
    // One cache for every protocol: TCP gets the entry HTTP/3 stored.
    let r = tcp_client(&gw, &pki)
        .get(tcp_url(&gw, "/cached/a"))
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(backend.hits(), 1);
}

#[test]
fn hundred_concurrent_streams_on_one_connection_all_answer_200() {
    let pki = Pki::new();
    let backend = Backend::echo("app");
    let gw = start(&pki, "max_concurrent_streams = 100", &app_at(&backend, "/"));
    let requests: Vec<Value> = (0..100)
        .map(|i| json!({"path": format!("/s/{i}")}))
        .collect();
    let mut j = job(&gw, &pki, json!(requests));
    j["concurrency"] = json!("all");
    let result = h3(&gw, &j);
    for i in 0..100 {
        assert_eq!(status(&result, i), 200, "request {i}: {result}");
        let echoed: Value =
            serde_json::from_str(response(&result, i)["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            echoed["path"],
            format!("/s/{i}"),
            "each stream its own answer"
        );
    }
    assert_eq!(backend.hits(), 100);
    assert!(
        quic_outcome(&gw, "accepted") == 1.0,
        "one connection: {}",
        gw.metrics()
    );
}

#[test]
fn more_requests_than_max_concurrent_streams_wait_for_stream_credit() {
    let pki = Pki::new();
    let backend = Backend::start("app", |r| {
        Reply::status(200)
            .body(r.path.clone())
            .delay(Duration::from_millis(50))
    });
    let gw = start(&pki, "max_concurrent_streams = 10", &app_at(&backend, "/"));
    let requests: Vec<Value> = (0..50)
        .map(|i| json!({"path": format!("/w/{i}")}))
        .collect();
    let mut j = job(&gw, &pki, json!(requests));
    j["concurrency"] = json!("all");
    let result = h3(&gw, &j);
    for i in 0..50 {
        assert_eq!(status(&result, i), 200, "request {i}: {result}");
        assert_eq!(response(&result, i)["body"], format!("/w/{i}"));
    }
    assert_eq!(backend.hits(), 50);
}

#[test]
fn client_moving_to_another_port_keeps_its_connection() {
    let pki = Pki::new();
    let backend = Backend::echo("app");
    let gw = start(&pki, "", &app_at(&backend, "/"));
    let requests: Vec<Value> = (0..6).map(|i| json!({"path": format!("/m/{i}")})).collect();
    let mut j = job(&gw, &pki, json!(requests));
    j["migrate_after"] = json!(3);
    let result = h3(&gw, &j);
    for i in 0..6 {
        assert_eq!(status(&result, i), 200, "request {i}: {result}");
    }
    let ports = result["local_ports"].as_array().unwrap();
    assert_eq!(ports.len(), 2, "{result}");
    assert_ne!(ports[0], ports[1], "the client did move: {result}");
    assert_eq!(result["migrated"], true, "{result}");
    assert_eq!(backend.hits(), 6);
    // Still the one connection.
    assert_eq!(quic_outcome(&gw, "accepted"), 1.0, "{}", gw.metrics());
}

#[test]
fn alt_svc_advertises_http3_over_tcp_and_http3() {
    let pki = Pki::new();
    let backend = Backend::echo("app");
    let rest = app_at(&backend, "/app");
    let gw = start(&pki, "", &rest);
    let expected = format!("h3=\":{}\"; ma=86400", gw.addr.port());
    let tcp = tcp_client(&gw, &pki);
    let r = tcp.get(tcp_url(&gw, "/app/x")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers().get("alt-svc").map(|v| v.to_str().unwrap()),
        Some(expected.as_str()),
        "proxied over TCP"
    );
    // The gateway's own answers advertise it too (no route: 404).
    let r = tcp.get(tcp_url(&gw, "/nowhere")).send().unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.headers().get("alt-svc").map(|v| v.to_str().unwrap()),
        Some(expected.as_str()),
        "a 404 over TCP"
    );
    let result = h3(
        &gw,
        &job(&gw, &pki, json!([{"path": "/app/x"}, {"path": "/nowhere"}])),
    );
    assert_eq!(status(&result, 0), 200);
    assert_eq!(
        header(response(&result, 0), "alt-svc"),
        Some(expected.as_str()),
        "{result}"
    );
    assert_eq!(status(&result, 1), 404);
    assert_eq!(
        header(response(&result, 1), "alt-svc"),
        Some(expected.as_str()),
        "{result}"
    );

    // "0s": not advertised, on either.
    let quiet = start(&pki, "alt_svc_max_age = \"0s\"", &rest);
    let r = tcp_client(&quiet, &pki)
        .get(tcp_url(&quiet, "/app/x"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("alt-svc").is_none(), "{:?}", r.headers());
    let result = h3(&quiet, &job(&quiet, &pki, json!([{"path": "/app/x"}])));
    assert_eq!(status(&result, 0), 200);
    assert_eq!(header(response(&result, 0), "alt-svc"), None, "{result}");
}

#[test]
fn access_log_and_metrics_count_http3_requests() {
    let pki = Pki::new();
    let backend = Backend::echo("app");
    let gw = start(&pki, "", &app_at(&backend, "/"));
    let requests: Vec<Value> = (0..3)
        .map(|i| json!({"path": format!("/logged/{i}"), "headers": [["x-request-id", format!("h3-log-{i}")]]}))
        .collect();
    let result = h3(&gw, &job(&gw, &pki, json!(requests)));
    for i in 0..3 {
        assert_eq!(status(&result, i), 200, "{result}");
    }
    for i in 0..3 {
        let line = gw.wait_access_log(|l| l["path"] == format!("/logged/{i}"));
        assert_eq!(line["protocol"], "HTTP/3", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["route"], "app", "{line}");
        assert_eq!(line["client_ip"], "127.0.0.1", "{line}");
    }
    // A request over TCP is not counted as HTTP/3.
    let r = tcp_client(&gw, &pki)
        .get(tcp_url(&gw, "/tcp"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let line = gw.wait_access_log(|l| l["path"] == "/tcp");
    assert_ne!(line["protocol"], "HTTP/3", "{line}");
    let counted = wait_for(Duration::from_secs(10), || {
        let m = gw.metrics();
        (metric(&m, "tollgate_http3_requests_total", &[]).unwrap_or(0.0) == 3.0).then_some(m)
    });
    let m = gw.metrics();
    assert!(
        counted.is_some(),
        "tollgate_http3_requests_total is {} (want 3):\n{m}",
        metric(&m, "tollgate_http3_requests_total", &[]).unwrap_or(0.0)
    );
    assert_eq!(
        metric(
            &m,
            "tollgate_quic_connections_total",
            &[("outcome", "accepted")]
        ),
        Some(1.0),
        "{m}"
    );
}

#[test]
fn retry_above_zero_makes_every_client_prove_its_address() {
    let pki = Pki::new();
    let backend = Backend::echo("app");
    let gw = start(&pki, "retry_above = 0", &app_at(&backend, "/"));
    let result = h3(&gw, &job(&gw, &pki, json!([{"path": "/r"}])));
    assert_eq!(result["retry"], true, "aioquic saw a Retry: {result}");
    assert_eq!(status(&result, 0), 200, "{result}");
    let m = gw.metrics();
    assert!(quic_outcome(&gw, "retry") >= 1.0, "{m}");
    assert_eq!(quic_outcome(&gw, "accepted"), 1.0, "{m}");
}

/// Run h3_flood.py: `count` handshakes from sockets of their own, `batch` at a time, that
/// never complete; its report of what the gateway answered.
fn flood(gw: &Gateway, count: u64, batch: u64, wait: f64) -> Value {
    let out = python(
        H3_FLOOD,
        &json!({"host": "127.0.0.1", "port": gw.addr.port(), "count": count, "batch": batch, "wait": wait}),
    );
    assert!(
        out.status.success(),
        "h3_flood.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Retry `j` until a client gets in (each attempt waits 3 s for its handshake).
fn eventually_h3(gw: &Gateway, j: &Value, within: Duration) -> Value {
    let mut j = j.clone();
    j["connect_timeout"] = json!(3);
    let mut last = String::new();
    wait_for(within, || match try_h3(&j) {
        Ok(r) => Some(r),
        Err(e) => {
            last = e;
            None
        }
    })
    .unwrap_or_else(|| {
        panic!(
            "no client got in within {within:?}; last: {last}\n{}\nstderr: {}",
            gw.metrics(),
            gw.stderr()
        )
    })
}

#[test]
fn handshakes_per_ip_are_capped_and_freed_by_the_idle_timeout() {
    let pki = Pki::new();
    let backend = Backend::echo("app");
    let gw = start(
        &pki,
        "max_handshakes_per_ip = 2\nidle_timeout = \"3s\"",
        &app_at(&backend, "/"),
    );
    // A handshake that completes gives its slot back: more clients in a row than the cap.
    for i in 0..4 {
        let result = h3(
            &gw,
            &job(&gw, &pki, json!([{"path": format!("/before/{i}")}])),
        );
        assert_eq!(status(&result, 0), 200, "{result}");
    }
    let report = flood(&gw, 10, 10, 2.0);
    assert!(
        report["handshake"].as_u64().unwrap() <= 2,
        "at most 2 handshakes from one IP go on: {report}"
    );
    assert!(
        report["refused"].as_u64().unwrap() >= 1,
        "the others are refused with CONNECTION_REFUSED: {report}"
    );
    let refused = wait_for(Duration::from_secs(10), || {
        let n = quic_outcome(&gw, "refused_per_ip");
        (n > 0.0).then_some(n)
    });
    assert!(refused.is_some(), "{report}\n{}", gw.metrics());
    // While the flood's handshakes hold the slots, a real client from that IP is refused
    // too...
    let mut j = job(&gw, &pki, json!([{"path": "/after-flood"}]));
    j["connect_timeout"] = json!(2);
    let during = try_h3(&j);
    assert!(
        during
            .as_ref()
            .is_err_and(|e| e.contains("CONNECTION_REFUSED")),
        "a client while the slots are held: {during:?}"
    );
    // ...until the idle timeout (3 s) ends them; then it gets in.
    let result = eventually_h3(&gw, &j, Duration::from_secs(40));
    assert_eq!(status(&result, 0), 200, "{result}");
}

#[test]
fn handshakes_in_all_are_capped() {
    let pki = Pki::new();
    let backend = Backend::echo("app");
    let gw = start(
        &pki,
        "max_handshakes = 3\nmax_handshakes_per_ip = 100\nidle_timeout = \"3s\"",
        &app_at(&backend, "/"),
    );
    let report = flood(&gw, 10, 10, 2.0);
    assert!(
        report["handshake"].as_u64().unwrap() <= 3,
        "at most 3 handshakes go on: {report}"
    );
    assert!(report["refused"].as_u64().unwrap() >= 1, "{report}");
    let busy = wait_for(Duration::from_secs(10), || {
        let n = quic_outcome(&gw, "refused_busy");
        (n > 0.0).then_some(n)
    });
    assert!(busy.is_some(), "{report}\n{}", gw.metrics());
    let result = eventually_h3(
        &gw,
        &job(&gw, &pki, json!([{"path": "/after-flood"}])),
        Duration::from_secs(40),
    );
    assert_eq!(status(&result, 0), 200, "{result}");
}

/// Above `retry_above` handshakes in progress, a new client is sent a Retry first: a flood
/// that never answers fills the slots up to there and no further, and a real client, which
/// answers its Retry, still gets in while the flood's handshakes last.
#[test]
fn above_retry_above_new_clients_prove_their_address_and_get_in() {
    let pki = Pki::new();
    let backend = Backend::echo("app");
    let gw = start(&pki, "retry_above = 2", &app_at(&backend, "/"));
    let report = flood(&gw, 10, 10, 2.0);
    assert!(
        report["handshake"].as_u64().unwrap() <= 2,
        "handshakes without a Retry stop at retry_above: {report}"
    );
    assert!(report["retry"].as_u64().unwrap() >= 1, "{report}");
    // The flood's handshakes are in progress for the idle timeout (30 s).
    let result = h3(&gw, &job(&gw, &pki, json!([{"path": "/under-load"}])));
    assert_eq!(result["retry"], true, "{result}");
    assert_eq!(status(&result, 0), 200, "{result}");
    assert!(quic_outcome(&gw, "retry") >= 2.0, "{}", gw.metrics());
}

#[test]
fn initial_flood_with_retry_gets_retries_and_the_gateway_keeps_serving() {
    let pki = Pki::new();
    let backend = Backend::echo("app");
    let mut gw = start(&pki, "retry_above = 0", &app_at(&backend, "/"));
    // One served request first, so that what serving takes is in the baseline.
    let warm = h3(&gw, &job(&gw, &pki, json!([{"path": "/warm"}])));
    assert_eq!(status(&warm, 0), 200, "{warm}");
    let before = rss_kib(gw.pid());
    const N: u64 = 2000;
    let report = flood(&gw, N, 50, 1.0);
    assert!(gw.is_running(), "the gateway died: {}", gw.stderr());
    // Loopback may drop a datagram under load; nearly all must have had their Retry.
    assert!(
        report["retry"].as_u64().unwrap() >= N * 95 / 100,
        "Initials answered with a Retry: {report}"
    );
    assert_eq!(
        report["handshake"], 0,
        "no handshake state for a flood: {report}"
    );
    let retries = wait_for(Duration::from_secs(10), || {
        let n = quic_outcome(&gw, "retry");
        (n >= (N * 95 / 100) as f64).then_some(n)
    });
    assert!(retries.is_some(), "{report}\n{}", gw.metrics());
    let result = h3(&gw, &job(&gw, &pki, json!([{"path": "/still-serving"}])));
    assert_eq!(status(&result, 0), 200, "{result}");
    let after = rss_kib(gw.pid());
    let growth = after.saturating_sub(before);
    assert!(
        growth < 64 * 1024,
        "RSS grew by {growth} KiB ({before} -> {after} KiB) over {N} Initials"
    );
    eprintln!("Initial flood: {report}; RSS {before} -> {after} KiB");
}

#[test]
fn zero_rtt_serves_safe_methods_early_and_never_others() {
    let pki = Pki::new();
    let backend = Backend::echo("app");
    let gw = start(&pki, "early_data = true", &app_at(&backend, "/"));
    let tickets = tempfile::tempdir().unwrap();
    let ticket = |n: u32| {
        tickets
            .path()
            .join(format!("t{n}.pkl"))
            .display()
            .to_string()
    };
    // A first connection gets a ticket.
    let mut j = job(&gw, &pki, json!([{"path": "/first"}]));
    j["session_ticket_out"] = json!(ticket(1));
    let result = h3(&gw, &j);
    assert_eq!(status(&result, 0), 200, "{result}");
    assert_eq!(result["session_ticket_saved"], true, "{result}");
    assert_eq!(result["early_data_accepted"], false, "{result}");

    // Resumed with it: a GET in 0-RTT is served, the upstream told it came early.
    let mut j = job(
        &gw,
        &pki,
        json!([{"path": "/early-get"}, {"path": "/later-get"}]),
    );
    j["session_ticket_in"] = json!(ticket(1));
    j["session_ticket_out"] = json!(ticket(2));
    let result = h3(&gw, &j);
    assert_eq!(result["session_resumed"], true, "{result}");
    assert_eq!(
        result["early_data_sent"], true,
        "the gateway's session ticket allows no 0-RTT (no early_data extension): {result}"
    );
    assert_eq!(result["early_data_accepted"], true, "{result}");
    assert_eq!(status(&result, 0), 200, "{result}");
    assert_eq!(status(&result, 1), 200, "{result}");
    let requests = backend.requests();
    let early = requests.iter().find(|r| r.path == "/early-get").unwrap();
    assert_eq!(early.header("early-data"), Some("1"), "{early:?}");
    let later = requests.iter().find(|r| r.path == "/later-get").unwrap();
    assert_eq!(
        later.header("early-data"),
        None,
        "sent after the handshake: {later:?}"
    );

    // A POST in 0-RTT is never served as early data: either 425 Too Early and not sent
    // upstream, or held until the handshake completes (RFC 8470 section 3) and sent
    // upstream without `Early-Data`. The same POST after the handshake goes through.
    let mut j = job(
        &gw,
        &pki,
        json!([
            {"method": "POST", "path": "/early-post", "body": "x"},
            {"method": "POST", "path": "/later-post", "body": "x"},
        ]),
    );
    j["session_ticket_in"] = json!(ticket(2));
    let result = h3(&gw, &j);
    assert_eq!(result["early_data_accepted"], true, "{result}");
    let requests = backend.requests();
    let early_post = requests.iter().find(|r| r.path == "/early-post");
    match status(&result, 0) {
        425 => assert!(early_post.is_none(), "a 425 went upstream: {early_post:?}"),
        200 => assert_eq!(
            early_post.unwrap().header("early-data"),
            None,
            "a POST held for the handshake is no early data"
        ),
        other => panic!("POST in 0-RTT: {other}: {result}"),
    }
    assert_eq!(status(&result, 1), 200, "{result}");
    let later = requests.iter().find(|r| r.path == "/later-post").unwrap();
    assert_eq!(later.header("early-data"), None);
}

/// With `early_data = true`, a request that was not sent in 0-RTT is no early data, even
/// the first one of a connection, sent in the client's datagram with its Finished (the
/// moment the server learns the handshake is complete).
#[test]
fn requests_after_a_full_handshake_are_never_early() {
    let pki = Pki::new();
    let backend = Backend::echo("app");
    let gw = start(&pki, "early_data = true", &app_at(&backend, "/"));
    for n in 0..6 {
        let mut j = job(
            &gw,
            &pki,
            // Even connections start with a GET, odd ones with a POST.
            if n % 2 == 0 {
                json!([{"path": format!("/get/{n}")}, {"method": "POST", "path": format!("/post/{n}"), "body": "x"}])
            } else {
                json!([{"method": "POST", "path": format!("/post/{n}"), "body": "x"}, {"path": format!("/get/{n}")}])
            },
        );
        j["eager"] = json!(true);
        let result = h3(&gw, &j);
        assert_eq!(
            result["early_data_sent"], false,
            "no ticket, no 0-RTT: {result}"
        );
        for i in 0..2 {
            assert_eq!(
                status(&result, i),
                200,
                "connection {n}, request {i}: sent in 1-RTT, not Too Early: {result}"
            );
        }
    }
    for r in backend.requests() {
        assert_eq!(
            r.header("early-data"),
            None,
            "{} was sent in 1-RTT after a full handshake, yet went upstream as early data",
            r.path
        );
    }
    assert_eq!(backend.hits(), 12);
}

#[test]
fn without_early_data_a_resumed_client_sends_nothing_early() {
    let pki = Pki::new();
    let backend = Backend::echo("app");
    let gw = start(&pki, "", &app_at(&backend, "/"));
    let tickets = tempfile::tempdir().unwrap();
    let ticket = tickets.path().join("t.pkl").display().to_string();
    let mut j = job(&gw, &pki, json!([{"path": "/first"}]));
    j["session_ticket_out"] = json!(ticket);
    let result = h3(&gw, &j);
    assert_eq!(status(&result, 0), 200, "{result}");
    if result["session_ticket_saved"] != true {
        // No ticket, no resumption: nothing more to check.
        return;
    }
    let mut j = job(&gw, &pki, json!([{"path": "/resumed"}]));
    j["session_ticket_in"] = json!(ticket);
    let result = h3(&gw, &j);
    assert_eq!(status(&result, 0), 200, "{result}");
    assert_eq!(result["early_data_accepted"], false, "{result}");
    assert_eq!(
        result["early_data_sent"], false,
        "the ticket allows no 0-RTT: {result}"
    );
    assert_eq!(backend.last_request().header("early-data"), None);
}

#[test]
fn oversized_request_headers_are_refused_and_the_connection_goes_on() {
    let pki = Pki::new();
    let backend = Backend::echo("app");
    let gw = start(
        &pki,
        "max_header_list_size = \"1KiB\"",
        &app_at(&backend, "/"),
    );
    let big = "b".repeat(4096);
    let result = h3(
        &gw,
        &job(
            &gw,
            &pki,
            json!([
                {"path": "/big-headers", "headers": [["x-big", big]]},
                {"path": "/small-headers"},
            ]),
        ),
    );
    let first = &result["responses"][0];
    assert!(
        first["status"] == 431 || first["error"].is_string(),
        "a 4 KiB header over a 1 KiB limit is refused: {result}"
    );
    assert_eq!(
        status(&result, 1),
        200,
        "the connection serves on: {result}"
    );
    assert!(!backend.requests().iter().any(|r| r.path == "/big-headers"));
}

#[test]
fn quic_without_tls_is_a_config_error() {
    let pki = Pki::new();
    let routes = "[[routes]]\nname = \"r\"\n[routes.respond]\nstatus = 200\n";
    let (code, out) = check_config(&format!(
        "[[listeners]]\naddress = \"127.0.0.1:18443\"\n[listeners.quic]\n{routes}"
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("listeners[0].quic"), "{out}");
    let (code, out) = check_config(&format!(
        "[[listeners]]\naddress = \"127.0.0.1:18443\"\n[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n[listeners.quic]\nalt_svc_max_age = \"1h\"\n{routes}",
        pki.path("leaf.crt"),
        pki.path("leaf.key")
    ));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn niquests_speaks_http3_to_the_gateway() {
    let pki = Pki::new();
    let backend = Backend::echo("app");
    let gw = start(&pki, "", &app_at(&backend, "/"));
    let run = |preseed: bool, count: u32| -> Vec<Value> {
        let out = python(
            H3_NIQUESTS,
            &json!({
                "url": tcp_url(&gw, "/niquests"),
                "resolve": {"tls.test": "127.0.0.1"},
                "ca": pki.path("ca.crt"),
                "preseed": preseed,
                "count": count,
            }),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // Told up front that the origin speaks HTTP/3.
    let told = run(true, 2);
    for r in &told {
        assert_eq!(r["status"], 200, "{told:?}");
        assert_eq!(r["http_version"], 30, "{told:?}\nstderr: {}", gw.stderr());
    }
    // Learning it from Alt-Svc: the first request goes over TCP, a later one over HTTP/3.
    let learned = run(false, 4);
    assert!(learned.iter().all(|r| r["status"] == 200), "{learned:?}");
    assert_ne!(learned[0]["http_version"], 30, "{learned:?}");
    assert!(
        learned.iter().any(|r| r["http_version"] == 30),
        "niquests never moved to HTTP/3: {learned:?}"
    );
    let h3_lines = wait_for(Duration::from_secs(10), || {
        let n = gw
            .access_log()
            .iter()
            .filter(|l| l["path"] == "/niquests" && l["protocol"] == "HTTP/3")
            .count();
        (n >= 3).then_some(n)
    });
    assert!(h3_lines.is_some(), "{:?}", gw.access_log());
}

/// Start h3_client.py on `j` in a thread of its own, pausing after request `k` until the test
/// creates the resume file; returns the thread and (paused marker, resume file), in `dir`.
fn paused_client(
    mut j: Value,
    k: usize,
    dir: &std::path::Path,
) -> (
    std::thread::JoinHandle<Result<Value, String>>,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let (paused, resume) = (dir.join("paused"), dir.join("resume"));
    j["pause_after"] = json!(k);
    j["paused_file"] = json!(paused.display().to_string());
    j["resume_file"] = json!(resume.display().to_string());
    (std::thread::spawn(move || try_h3(&j)), paused, resume)
}

#[test]
fn a_reload_keeps_open_quic_connections_and_the_next_request_sees_the_new_routes() {
    let pki = Pki::new();
    let backend = Backend::echo("app");
    let before = app_at(&backend, "/app");
    let after = format!(
        "{before}\n[[routes]]\nname = \"added\"\npath_prefix = \"/added\"\nupstream = \"app\"\n"
    );
    let gw = start(&pki, "", &before);
    let marks = tempfile::tempdir().unwrap();
    let (client, paused, resume) = paused_client(
        job(
            &gw,
            &pki,
            json!([{"path": "/added/first"}, {"path": "/added/second"}]),
        ),
        1,
        marks.path(),
    );
    // Paused after request 1 (or finished early, which the join below reports).
    wait_for(Duration::from_secs(60), || {
        (paused.exists() || client.is_finished()).then_some(())
    })
    .unwrap_or_else(|| panic!("h3_client.py never paused\n{}", gw.stderr()));
    assert!(
        paused.exists(),
        "h3_client.py ended before pausing: {:?}\n{}",
        client.join(),
        gw.stderr()
    );
    assert_eq!(backend.hits(), 0, "no route yet: the gateway's own 404");
    assert_eq!(quic_outcome(&gw, "accepted"), 1.0, "{}", gw.metrics());

    // A new route and a renewed certificate, while the connection is open.
    pki.issue_leaf("tls.test renewed");
    gw.rewrite_config_full(&config(&pki, "", &after));
    let (code, body) = gw.reload();
    assert_eq!(code, 200, "{body}");
    std::fs::write(&resume, "").unwrap();
    let result = client
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("h3_client.py: {e}\ngateway stderr:\n{}", gw.stderr()));

    assert_eq!(status(&result, 0), 404, "before the reload: {result}");
    assert_eq!(
        status(&result, 1),
        200,
        "after the reload, same connection: {result}"
    );
    let r = response(&result, 1);
    assert_eq!(header(r, "x-backend"), Some("app"), "{r}");
    let echoed: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["path"], "/added/second");
    assert!(result["connection_error"].is_null(), "{result}");
    assert_eq!(
        result["local_ports"].as_array().unwrap().len(),
        1,
        "one socket throughout: {result}"
    );
    assert_eq!(
        result["peer_certificate_cn"], "tls.test",
        "the connection keeps the certificate of its handshake: {result}"
    );
    assert_eq!(backend.hits(), 1);
    let m = gw.metrics();
    assert_eq!(
        quic_outcome(&gw, "accepted"),
        1.0,
        "no second connection: {m}"
    );
    assert_eq!(
        metric(&m, "tollgate_http3_requests_total", &[]).unwrap_or(0.0),
        2.0,
        "{m}"
    );

    // The next new connection gets the renewed certificate.
    let fresh = h3(&gw, &job(&gw, &pki, json!([{"path": "/added/fresh"}])));
    assert_eq!(status(&fresh, 0), 200, "{fresh}");
    assert_eq!(fresh["peer_certificate_cn"], "tls.test renewed", "{fresh}");
    assert_eq!(quic_outcome(&gw, "accepted"), 2.0, "{}", gw.metrics());
}

/// A process the test started, killed by its pid when dropped.
struct Started(std::process::Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_binary_upgrade_hands_http3_to_the_new_instance() {
    let pki = Pki::new();
    // In flight across the upgrade's start, and done well within the old instance's grace
    // period (1 s): when it ends, the old instance's runtimes are shut down.
    let slow = Backend::start("slow", |r| {
        crate::common::backend::echo_reply("slow", r).delay(Duration::from_millis(600))
    });
    let rest = |version: &str| {
        format!(
            r#"
[upstreams.slow]
targets = [{{ address = "{}" }}]
[[routes]]
name = "slow"
path_prefix = "/slow"
upstream = "slow"

[[routes]]
name = "version"
path_prefix = "/version"
[routes.respond]
status = 200
body = "{version}"
"#,
            slow.addr
        )
    };
    let mut old = start(&pki, "", &rest("v1"));
    let before = h3(&old, &job(&old, &pki, json!([{"path": "/version"}])));
    assert_eq!(status(&before, 0), 200, "{before}");
    assert_eq!(response(&before, 0)["body"], "v1", "{before}");

    old.rewrite_config_full(&config(&pki, "", &rest("v2")));
    let new_stderr = old.dir.path().join("new-stderr.log");
    let new = Started(
        Command::new(tollgate_bin())
            .arg("-u")
            .arg("-c")
            .arg(&old.config_path)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&new_stderr).unwrap())
            .spawn()
            .unwrap(),
    );
    let new_log = || std::fs::read_to_string(&new_stderr).unwrap_or_default();
    wait_for(Duration::from_secs(20), || {
        old.dir.path().join("upgrade.sock").exists().then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the new instance never waited for the sockets: {}",
            new_log()
        )
    });

    // A request in flight on the old instance when the upgrade starts.
    let j = job(&old, &pki, json!([{"path": "/slow/in-flight"}]));
    let in_flight = std::thread::spawn(move || try_h3(&j));
    wait_for(Duration::from_secs(30), || {
        (slow.hits() == 1 || in_flight.is_finished()).then_some(())
    })
    .expect("the slow request reaches the upstream");
    let quit = std::time::Instant::now();
    old.signal("QUIT");

    // Fresh clients until one is answered by the new instance.
    let mut seen = Vec::new();
    let mut j = job(&old, &pki, json!([{"path": "/version"}]));
    j["connect_timeout"] = json!(2);
    j["timeout"] = json!(10);
    let took = wait_for(Duration::from_secs(30), || {
        let outcome = match try_h3(&j) {
            Ok(r) if r["responses"][0]["status"] == 200 => r["responses"][0]["body"]
                .as_str()
                .unwrap_or("?")
                .to_string(),
            Ok(r) => format!("answer {r}"),
            Err(e) => format!("no connection: {}", e.trim()),
        };
        let done = outcome == "v2";
        seen.push(outcome);
        done.then(|| quit.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "no HTTP/3 answer from the new instance 30 s after SIGQUIT; clients saw {seen:?}\n\
             old stderr:\n{}\nnew stderr:\n{}",
            old.stderr(),
            new_log()
        )
    });
    eprintln!("HTTP/3 served by the new instance {took:?} after SIGQUIT; clients saw {seen:?}");
    assert!(
        took < Duration::from_secs(10),
        "the new instance took {took:?} to serve HTTP/3 (grace period 1 s, shutdown timeout 1 s)"
    );

    let result = in_flight
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("the in-flight client: {e}\nold stderr:\n{}", old.stderr()));
    assert_eq!(
        status(&result, 0),
        200,
        "the request in flight completes: {result}\nold stderr:\n{}",
        old.stderr()
    );
    let echoed: Value =
        serde_json::from_str(response(&result, 0)["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["path"], "/slow/in-flight", "{result}");
    assert_eq!(
        old.wait_exit(Duration::from_secs(15)),
        Some(0),
        "the old instance exits: {}",
        old.stderr()
    );
    // Still the new instance, once the old one is gone.
    let after = h3(&old, &job(&old, &pki, json!([{"path": "/version"}])));
    assert_eq!(response(&after, 0)["body"], "v2", "{after}");
    drop(new);

    // The hand-over told the in-flight connection GOAWAY, and a GOAWAY carrying stream id N
    // says requests on streams N and above were not and will not be processed (RFC 9114
    // section 5.2): N must be above the request it went on to answer.
    let goaway = result["goaway"].as_array().unwrap();
    assert!(
        !goaway.is_empty(),
        "no GOAWAY on the connection open through the upgrade: {result}"
    );
    let stream = response(&result, 0)["stream_id"].as_u64().unwrap();
    for id in goaway {
        assert!(
            id.as_u64().unwrap() > stream,
            "GOAWAY {id} rejects the request on stream {stream}, which was being served \
             (and was answered): {result}\nold stderr:\n{}",
            old.stderr()
        );
    }
}

#[test]
fn grpc_web_over_http3_reaches_a_grpc_upstream() {
    use base64::Engine;
    use prost::Message;
    use tollgate_grpc_fixtures::proto::{EchoReply, EchoRequest};
    let b64 = base64::engine::general_purpose::STANDARD;
    let pki = Pki::new();
    let server = tollgate_grpc_fixtures::Server::start(None);
    let gw = start(
        &pki,
        "",
        &format!(
            r#"
[upstreams.grpc]
targets = [{{ address = "{}" }}]
h2 = true

[[routes]]
name = "grpc"
path_prefix = "/"
upstream = "grpc"
grpc_web = true
"#,
            server.addr
        ),
    );
    let unary = EchoRequest {
        message: "over http/3".into(),
        ..Default::default()
    };
    let stream = EchoRequest {
        message: "n".into(),
        count: 3,
        ..Default::default()
    };
    // Each call in both content types, on one connection.
    let mut requests = Vec::new();
    for (path, req) in [
        ("/tollgate.test.Echo/Unary", &unary),
        ("/tollgate.test.Echo/ServerStream", &stream),
    ] {
        let body = crate::grpc::frame(0, &req.encode_to_vec());
        for text in [false, true] {
            let (ct, body) = if text {
                ("application/grpc-web-text", b64.encode(b64.encode(&body)))
            } else {
                ("application/grpc-web+proto", b64.encode(&body))
            };
            requests.push(json!({
                "method": "POST",
                "path": path,
                "headers": [["content-type", ct], ["x-grpc-web", "1"]],
                "body_base64": body,
            }));
        }
    }
    let result = h3(&gw, &job(&gw, &pki, json!(requests)));
    for (i, (want_messages, text)) in [
        (vec!["over http/3"], false),
        (vec!["over http/3"], true),
        (vec!["n 0", "n 1", "n 2"], false),
        (vec!["n 0", "n 1", "n 2"], true),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(status(&result, i), 200, "call {i}: {result}");
        let r = response(&result, i);
        let ct = header(r, "content-type").unwrap_or_default();
        let want_ct = if text {
            "application/grpc-web-text"
        } else {
            "application/grpc-web"
        };
        assert!(ct.starts_with(want_ct), "call {i}: {ct}: {r}");
        let mut body = b64.decode(r["body_base64"].as_str().unwrap()).unwrap();
        if text {
            body = b64.decode(body).unwrap();
        }
        let frames = crate::grpc::frames(&body);
        assert_eq!(
            frames.len(),
            want_messages.len() + 1,
            "call {i}: the messages and the trailer frame: {r}"
        );
        let messages: Vec<String> = frames[..want_messages.len()]
            .iter()
            .map(|(flag, m)| {
                assert_eq!(*flag, 0, "call {i}");
                EchoReply::decode(&m[..]).unwrap().message
            })
            .collect();
        assert_eq!(messages, want_messages, "call {i}");
        let (flag, trailer) = frames.last().unwrap();
        assert_eq!(*flag, 0x80, "call {i}: {r}");
        let trailer = String::from_utf8(trailer.clone()).unwrap();
        assert!(
            trailer.contains("grpc-status:0"),
            "call {i}: {trailer:?}: {r}"
        );
    }
    let line = gw.wait_access_log(|l| l["path"] == "/tollgate.test.Echo/ServerStream");
    assert_eq!(line["protocol"], "HTTP/3", "{line}");
}

/// `conf/tollgate.toml` with every address moved to a free port, every file made absolute and
/// the pid file, upgrade socket and access log put in the gateway's directory: the example
/// configuration as shipped, runnable beside other tests.
fn example_config() -> String {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf");
    let text = std::fs::read_to_string(format!("{conf}/tollgate.toml")).unwrap();
    let mut out = text
        .replace("\"127.0.0.1:8080\"", "\"{listen}\"")
        .replace("\"127.0.0.1:9090\"", "\"{admin}\"")
        .replace("\"/tmp/tollgate.pid\"", "\"{dir}/tollgate.pid\"")
        .replace("\"/tmp/tollgate_upgrade.sock\"", "\"{dir}/upgrade.sock\"")
        .replace("target = \"stdout\"", "target = \"{dir}/access.log\"")
        .replace("\"dev-tls/", &format!("\"{conf}/dev-tls/"))
        .replace(
            "\"demo-jwt.secret\"",
            &format!("\"{conf}/demo-jwt.secret\""),
        );
    for port in ["8443", "9101", "9102", "9103"] {
        out = out.replace(
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{}", free_port()),
        );
    }
    assert!(
        !out.contains("8080") && !out.contains("9090") && !out.contains("/tmp/"),
        "conf/tollgate.toml changed: adapt example_config()\n{out}"
    );
    out
}

/// Proves: a client that speaks only HTTP/3 (aioquic) gets the same answers as an HTTP/1.1
/// client over TLS for a request on every route of the example configuration, and its
/// features work over HTTP/3: direct answers, proxying, compression, the cache (a HIT),
/// method rules, host routing, JWT and API keys with roles, CORS preflights, aggregation,
/// JSON renames, the maintenance answer, 404.
#[test]
fn every_route_of_the_example_config_answers_over_http3_as_over_tcp() {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf");
    let gw = Gateway::start_full(&example_config()).unwrap();
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    let port: u16 = config
        .split("[listeners.tls]")
        .next()
        .and_then(|head| head.rsplit("address = \"127.0.0.1:").next())
        .and_then(|rest| rest.split('"').next())
        .and_then(|p| p.parse().ok())
        .expect("the TLS listener's port");
    let secret = std::fs::read(format!("{conf}/demo-jwt.secret")).unwrap();
    let token = hs256_token(
        String::from_utf8_lossy(&secret).trim().as_bytes(),
        json!({"iss": "tollgate-demo", "sub": "alice", "roles": ["reader"]}),
    );
    let bearer = format!("Bearer {token}");
    // (method, path, headers), each sent once over HTTP/1.1 and once over HTTP/3.
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        ("GET", "/", vec![]),
        ("GET", "/api/items", vec![("accept-encoding", "gzip")]),
        ("GET", "/cached/a", vec![]),
        ("GET", "/v2/items", vec![]),
        ("POST", "/v2/items", vec![]),
        ("GET", "/least/x", vec![]),
        ("GET", "/sticky/x", vec![("x-user", "alice")]),
        ("GET", "/secure/x", vec![]),
        (
            "GET",
            "/secure/x",
            vec![("x-api-key", "demo-key-0123456789abcdef")],
        ),
        ("GET", "/secure/x", vec![("authorization", &bearer)]),
        (
            "OPTIONS",
            "/browser/x",
            vec![
                ("origin", "https://app.example.test"),
                ("access-control-request-method", "POST"),
            ],
        ),
        ("GET", "/dashboard/alice", vec![]),
        ("GET", "/bridge/x", vec![]),
        ("GET", "/maintenance", vec![]),
        ("GET", "/no/such/route", vec![]),
    ];
    let tcp = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let compared = [
        "content-type",
        "content-encoding",
        "access-control-allow-origin",
        "retry-after",
        "www-authenticate",
        "allow",
        "alt-svc",
    ];
    let requests: Vec<Value> = cases
        .iter()
        .map(|(method, path, headers)| {
            let mut headers: Vec<Value> = headers.iter().map(|(k, v)| json!([k, v])).collect();
            headers.push(json!(["user-agent", "example-test"]));
            json!({"method": method, "path": path, "headers": headers})
        })
        .collect();
    let over_h3 = h3(
        &gw,
        &json!({
            "host": "127.0.0.1",
            "port": port,
            "server_name": "localhost",
            "ca": format!("{conf}/dev-tls/localhost.crt"),
            "requests": requests,
            "concurrency": 1,
            "connect_timeout": 10,
            "timeout": 60,
        }),
    );
    assert_eq!(over_h3["alpn"], "h3", "{over_h3}");
    for (i, (method, path, headers)) in cases.iter().enumerate() {
        let mut req = tcp.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("https://localhost:{port}{path}"),
        );
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let tcp_resp = req.header("user-agent", "example-test").send().unwrap();
        let h3_resp = response(&over_h3, i);
        let what = format!("{method} {path} {headers:?}");
        assert_eq!(
            h3_resp["status"].as_u64().unwrap(),
            u64::from(tcp_resp.status().as_u16()),
            "{what}: HTTP/3 {h3_resp}"
        );
        for name in compared {
            assert_eq!(
                header(h3_resp, name),
                tcp_resp.headers().get(name).and_then(|v| v.to_str().ok()),
                "{what}: {name}"
            );
        }
    }
    let status_of = |i: usize| status(&over_h3, i);
    assert_eq!(status_of(0), 200);
    assert_eq!(
        header(response(&over_h3, 1), "content-encoding"),
        Some("gzip")
    );
    assert_eq!(status_of(4), 404, "no route takes POST under /v2");
    assert_eq!(status_of(7), 401);
    assert_eq!(status_of(8), 200, "API key with the reader role");
    assert_eq!(status_of(9), 200, "JWT with the reader role");
    assert_eq!(status_of(10), 204, "CORS preflight");
    let dashboard = response(&over_h3, 11)["body"].as_str().unwrap();
    assert!(
        dashboard.contains("profile") && dashboard.contains("orders"),
        "{dashboard}"
    );
    assert!(
        response(&over_h3, 12)["body"]
            .as_str()
            .unwrap()
            .contains("servedBy"),
        "JSON rename over HTTP/3"
    );
    assert_eq!(status_of(13), 503);
    assert_eq!(status_of(14), 404);
    // Host routing: `:authority` over HTTP/3, `Host` over HTTP/1.1.
    let admin_host = h3(
        &gw,
        &json!({
            "host": "127.0.0.1",
            "port": port,
            "server_name": "localhost",
            "authority": "admin.example.test",
            "ca": format!("{conf}/dev-tls/localhost.crt"),
            "requests": [{"method": "GET", "path": "/"}],
        }),
    );
    let tcp_admin = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve(
            "admin.example.test",
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        )
        .build()
        .unwrap()
        .get(format!("https://admin.example.test:{port}/"))
        .send()
        .unwrap();
    assert_eq!(
        status(&admin_host, 0),
        u64::from(tcp_admin.status().as_u16())
    );
    assert_ne!(
        response(&admin_host, 0)["body"],
        response(&over_h3, 0)["body"],
        "admin.example.test is routed to its own route, not `hello`"
    );
    // The cache: stored by the first request (over HTTP/3), a HIT for the next, over HTTP/3.
    let again = h3(
        &gw,
        &json!({
            "host": "127.0.0.1",
            "port": port,
            "server_name": "localhost",
            "ca": format!("{conf}/dev-tls/localhost.crt"),
            "requests": [{"method": "GET", "path": "/cached/b"}, {"method": "GET", "path": "/cached/b"}],
            "concurrency": 1,
        }),
    );
    assert_eq!(
        header(response(&again, 1), "x-cache"),
        Some("HIT"),
        "{again}"
    );
}

/// Proves: a request whose `Host` disagrees with its `:authority` is malformed (RFC 9114
/// section 4.3.1): its stream is reset, nothing reaches the upstream, and the connection goes
/// on.
#[test]
fn a_host_header_that_disagrees_with_the_authority_is_refused() {
    let pki = Pki::new();
    let backend = Backend::echo("app");
    let gw = start(&pki, "", &app_at(&backend, "/"));
    let result = h3(
        &gw,
        &job(
            &gw,
            &pki,
            json!([
                {"method": "GET", "path": "/app/a", "headers": [["host", "other.test"]]},
                {"method": "GET", "path": "/app/b"},
            ]),
        ),
    );
    assert!(
        !result["responses"][0]["error"].is_null(),
        "the mismatched request is refused: {result}"
    );
    assert_eq!(status(&result, 1), 200, "{result}");
    assert_eq!(
        backend.hits(),
        1,
        "only the second request reached the upstream"
    );
}
