//! `tollgate explain` says what the running gateway does: for a table of requests, its JSON
//! answer (outcome, route, the request the upstream gets, the response headers added) is
//! compared with what the real gateway and a real upstream see for the same bytes.
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::common::*;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

fn config(backend: &Backend) -> String {
    format!(
        r#"
[upstreams.app]
targets = [{{ address = "{}" }}]
read_timeout = "5s"

[consumers.reporting]
keys = ["report-key-0123456789"]
roles = ["reader"]

[[routes]]
name = "hello"
path = "/"
[routes.respond]
body = "hello"

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "app"
strip_prefix = true
rate_limits = [{{ limit = 1000, window = "60s", key = "ip" }}]
[routes.request_headers]
set = {{ "x-env" = "prod" }}
remove = ["x-debug"]
[routes.response_headers]
set = {{ "cache-control" = "no-store" }}
[routes.compression]

[[routes]]
name = "api-v2"
path_prefix = "/api/v2"
methods = ["GET"]
upstream = "app"
rewrite_prefix = "/v2"

[[routes]]
name = "admin"
hosts = ["admin.test"]
path_prefix = "/"
upstream = "app"
ip_allow = ["10.0.0.0/8"]

[[routes]]
name = "reports"
path_prefix = "/reports"
upstream = "app"
auth = ["api_key"]
roles = ["reader"]

[[routes]]
name = "browser"
path_prefix = "/browser"
upstream = "app"
[routes.cors]
allow_origins = ["https://app.example.test"]
allow_methods = ["GET", "POST"]
"#,
        backend.addr
    )
}

fn explain(gw: &Gateway, method: &str, url: &str, headers: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(tollgate_bin());
    cmd.arg("explain")
        .arg("-c")
        .arg(&gw.config_path)
        .arg(method)
        .arg(url)
        .arg("--json");
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Reply {
    status: u16,
    headers: BTreeMap<String, Vec<String>>,
}

fn send(gw: &Gateway, method: &str, host: &str, target: &str, headers: &[&str]) -> Reply {
    let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    for h in headers {
        raw.push_str(h);
        raw.push_str("\r\n");
    }
    raw.push_str("Connection: close\r\n\r\n");
    let text = raw_request(gw.addr, raw.as_bytes(), Duration::from_secs(10));
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in lines.take_while(|l| !l.is_empty()) {
        let (n, v) = l.split_once(':').unwrap();
        map.entry(n.trim().to_ascii_lowercase())
            .or_default()
            .push(v.trim().to_string());
    }
    Reply {
        status,
        headers: map,
    }
}

#[test]
fn explain_agrees_with_the_running_gateway() {
    let backend = Backend::echo("app");
    let gw = Gateway::start(&config(&backend));
    let key = "X-Api-Key: report-key-0123456789";
    let cases: Vec<(&str, &str, &str, Vec<&str>)> = vec![
        ("GET", "app.test", "/", vec![]),
        (
            "GET",
            "app.test",
            "/api/users/7?x=1",
            vec!["X-Debug: 1", "Accept-Encoding: gzip"],
        ),
        ("GET", "app.test", "/api/v2/items", vec![]),
        // The v2 route takes only GET: a POST falls to the shorter prefix.
        (
            "POST",
            "app.test",
            "/api/v2/items",
            vec!["Content-Length: 0"],
        ),
        ("GET", "app.test", "/api/a/./b/../c//d", vec![]),
        ("GET", "app.test", "/api/../../etc/passwd", vec![]),
        ("GET", "APP.test.", "/nothing-here", vec![]),
        ("GET", "admin.test", "/settings", vec![]),
        ("GET", "app.test", "/reports/daily", vec![]),
        ("GET", "app.test", "/reports/daily", vec![key]),
        (
            "GET",
            "app.test",
            "/reports/daily",
            vec!["X-Api-Key: wrong-key-0000000000"],
        ),
        (
            "OPTIONS",
            "app.test",
            "/browser/x",
            vec![
                "Origin: https://app.example.test",
                "Access-Control-Request-Method: POST",
            ],
        ),
        (
            "GET",
            "app.test",
            "/browser/x",
            vec!["Origin: https://app.example.test"],
        ),
        (
            "GET",
            "app.test",
            "/browser/x",
            vec![
                "Origin: https://evil.test",
                "Access-Control-Request-Method: GET",
            ],
        ),
    ];
    for (i, (method, host, target, headers)) in cases.into_iter().enumerate() {
        let id = format!("explain-case-{i:02}-0123456789abcdef");
        let id_header = format!("X-Request-Id: {id}");
        let mut all = headers.clone();
        all.push(&id_header);
        let what = format!("case {i}: {method} {host}{target} {headers:?}");
        let e = explain(&gw, method, &format!("http://{host}{target}"), &all);
        let hits_before = backend.hits();
        let real = send(&gw, method, host, target, &all);
        let outcome = &e["outcome"];
        match outcome["kind"].as_str().unwrap() {
            "proxy" => {
                assert_eq!(real.status, 200, "{what}: {e:#}");
                assert_eq!(backend.hits(), hits_before + 1, "{what}");
                let seen = backend.last_request();
                let up = &e["upstream"];
                let (path, query) = up["path"]
                    .as_str()
                    .unwrap()
                    .split_once('?')
                    .map_or((up["path"].as_str().unwrap(), None), |(p, q)| (p, Some(q)));
                let seen_path = seen.path.split('?').next().unwrap().to_string();
                assert_eq!(seen_path, path, "{what}");
                if let Some(q) = query {
                    assert!(seen.path.ends_with(q), "{what}: {}", seen.path);
                }
                assert_eq!(seen.method, up["method"], "{what}");
                for pair in up["headers"].as_array().unwrap() {
                    let (n, v) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
                    assert_eq!(
                        seen.header(n),
                        Some(v),
                        "{what}: upstream header {n}: {e:#}"
                    );
                }
                // Nothing the explanation leaves out reached the upstream either.
                for n in ["x-debug", "x-api-key"] {
                    let listed = up["headers"].as_array().unwrap().iter().any(|p| p[0] == n);
                    assert_eq!(seen.header(n).is_some(), listed, "{what}: {n}");
                }
            }
            "answer" | "refuse" => {
                assert_eq!(
                    real.status as u64,
                    outcome["status"].as_u64().unwrap(),
                    "{what}: {e:#}"
                );
                assert_eq!(backend.hits(), hits_before, "{what}: reached the upstream");
            }
            other => panic!("{what}: outcome {other}"),
        }
        // The route the access log names is the one explain named.
        let entry = gw.wait_access_log(|l| l["request_id"] == id.as_str());
        let route = outcome["route"].as_str().unwrap_or("-");
        let logged = entry["route"].as_str().unwrap_or("-");
        assert_eq!(logged, route, "{what}: {entry}");
        // Every response header explain says is added is on the real response.
        if outcome["kind"] != "refuse" {
            for pair in e["response_headers"].as_array().unwrap() {
                let (n, v) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
                if n == "x-cache" {
                    continue;
                }
                let got = real.headers.get(n).cloned().unwrap_or_default();
                assert!(
                    got.iter().any(|g| g == v),
                    "{what}: response header {n}: {v} not in {got:?}"
                );
            }
        }
    }
}

#[test]
fn explain_names_the_nearest_routes_and_why_they_lose() {
    let backend = Backend::echo("app");
    let gw = Gateway::start(&config(&backend));
    let e = explain(&gw, "POST", "http://app.test/api/v2/items", &[]);
    assert_eq!(e["outcome"]["route"], "api");
    let v2 = e["other_routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["route"] == "api-v2")
        .unwrap();
    assert_eq!(v2["why_not"][0], "method POST is not GET");
    // A route that matches too says why the chosen one wins.
    let e = explain(&gw, "GET", "http://app.test/api/v2/items", &[]);
    assert_eq!(e["outcome"]["route"], "api-v2");
    let api = e["other_routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["route"] == "api")
        .unwrap();
    assert_eq!(
        api["why_not"][0],
        "matches too, but `api-v2` wins: a longer path prefix wins"
    );
    // The steps: IP rules, auth with roles, rate limits described, not counted.
    let e = explain(
        &gw,
        "GET",
        "http://app.test/reports/x",
        &["X-Api-Key: report-key-0123456789"],
    );
    let auth = e["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "auth")
        .unwrap();
    assert_eq!(
        auth["detail"],
        "accepts api_key; needs a role of reader: authenticated as consumer reporting, roles [reader]"
    );
    let e = explain(
        &gw,
        "GET",
        "http://app.test/api/x",
        &["Accept-Encoding: br;q=0.5, gzip"],
    );
    let rl = e["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "rate_limit")
        .unwrap();
    assert_eq!(rl["result"], "described");
    assert!(
        rl["detail"].as_str().unwrap().contains("1000 per 1m by ip"),
        "{rl}"
    );
    assert!(
        e["compression"]
            .as_str()
            .unwrap()
            .ends_with("this client gets gzip"),
        "{e:#}"
    );
    assert_eq!(e["upstream"]["group"]["policy"], "round_robin");
    // The text form names the same things.
    let out = Command::new(tollgate_bin())
        .args(["explain", "-c"])
        .arg(&gw.config_path)
        .args(["GET", "http://admin.test/x"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("=> refused 403"), "{text}");
    assert!(
        text.contains("client 127.0.0.1: 403 forbidden (allow 10.0.0.0/8)"),
        "{text}"
    );
    // Bad input is an error with a message, not a guess.
    let out = Command::new(tollgate_bin())
        .args(["explain", "-c"])
        .arg(&gw.config_path)
        .args(["get", "ftp://x/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid method"),
        "{out:?}"
    );
}

/// Regression: for a GET with `Authorization` on a route with `authenticated = "shared"`
/// whose origin sends only `max-age`, `explain` said "stored on a miss" while the gateway
/// answered `X-Cache: BYPASS` (RFC 9111 §3.5). The cache decision now comes from the
/// functions the proxy calls, given the upstream's response headers (`-R`): for each
/// request, explain's verdict and reason equal the live `X-Cache` and the access log's.
#[test]
fn explain_said_stored_where_the_gateway_bypassed() {
    let backend = Backend::start("app", |r| {
        let p = r.path.split('?').next().unwrap_or("");
        let reply = common::Reply::status(200).body("x");
        match p.rsplit('/').next().unwrap_or("") {
            "max-age" => reply.header("cache-control", "max-age=60"),
            "public" => reply.header("cache-control", "public, max-age=60"),
            "nostore" => reply.header("cache-control", "no-store"),
            "cookie" => reply
                .header("cache-control", "max-age=60")
                .header("set-cookie", "s=1"),
            _ => reply,
        }
    });
    let gw = Gateway::start(&format!(
        r#"
[upstreams.app]
targets = [{{ address = "{}" }}]

[[routes]]
name = "shared"
path_prefix = "/shared"
upstream = "app"
[routes.cache]
authenticated = "shared"

[[routes]]
name = "own"
path_prefix = "/own"
upstream = "app"
[routes.cache]
"#,
        backend.addr
    ));
    let auth = "Authorization: Bearer some-token";
    let cases: Vec<(&str, &str, Vec<&str>, Vec<&str>)> = vec![
        (
            "GET",
            "/shared/max-age",
            vec![auth],
            vec!["Cache-Control: max-age=60"],
        ),
        (
            "GET",
            "/shared/public",
            vec![auth],
            vec!["Cache-Control: public, max-age=60"],
        ),
        (
            "GET",
            "/shared/max-age",
            vec![],
            vec!["Cache-Control: max-age=60"],
        ),
        (
            "GET",
            "/shared/nostore",
            vec![],
            vec!["Cache-Control: no-store"],
        ),
        (
            "GET",
            "/shared/cookie",
            vec![],
            vec!["Cache-Control: max-age=60", "Set-Cookie: s=1"],
        ),
        (
            "POST",
            "/shared/max-age",
            vec!["Content-Length: 0"],
            vec!["Cache-Control: max-age=60"],
        ),
        (
            "GET",
            "/own/max-age",
            vec![auth],
            vec!["Cache-Control: max-age=60"],
        ),
    ];
    for (i, (method, path, headers, upstream)) in cases.into_iter().enumerate() {
        let target = format!("{path}?case={i}");
        let id = format!("explain-cache-{i:02}-0123456789abcdef");
        let id_header = format!("X-Request-Id: {id}");
        let mut all = headers.clone();
        all.push(&id_header);
        let mut cmd = Command::new(tollgate_bin());
        cmd.args(["explain", "--json", "-c"])
            .arg(&gw.config_path)
            .arg(method)
            .arg(format!("http://app.test{target}"));
        for h in &all {
            cmd.arg("-H").arg(h);
        }
        for h in &upstream {
            cmd.arg("-R").arg(h);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let real = send(&gw, method, "app.test", &target, &all);
        let what = format!("case {i}: {method} {target} {headers:?} upstream {upstream:?}");
        let live = real.headers.get("x-cache").map(|v| v[0].clone());
        assert_eq!(
            live.as_deref(),
            e["cache_verdict"].as_str(),
            "{what}: {e:#}"
        );
        let line = gw.wait_access_log(|l| l["request_id"] == id.as_str());
        assert_eq!(line["reason"], e["cache_reason"], "{what}: {line} {e:#}");
    }
}

/// Proves: `explain --http3` explains a request arriving over HTTP/3: on the listener with
/// `[listeners.quic]` (not the plain one), with the listener's `Alt-Svc` among the response
/// headers; an `http://` URL or a listener without HTTP/3 is an error (exit 2).
#[test]
fn explain_http3_uses_the_quic_listener_and_shows_its_alt_svc() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "explain");
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[listeners]]
address = "127.0.0.1:18080"
[[listeners]]
address = "127.0.0.1:18443"
[listeners.tls]
certificates = [{{ cert = "{}", key = "{}" }}]
[listeners.quic]
alt_svc_max_age = "1h"
[[routes]]
name = "hello"
path = "/"
[routes.respond]
body = "hello"
"#,
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let explain = |args: &[&str]| {
        Command::new(tollgate_bin())
            .args(["explain", "-c"])
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    let out = explain(&["--http3", "--json", "GET", "https://tls.test/"]);
    assert!(out.status.success(), "{out:?}");
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["request"]["protocol"], "HTTP/3", "{e:#}");
    assert_eq!(e["request"]["listener"], "127.0.0.1:18443", "{e:#}");
    assert!(
        e["response_headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "alt-svc" && h[1] == "h3=\":18443\"; ma=3600"),
        "{e:#}"
    );
    let text = String::from_utf8(explain(&["--http3", "GET", "https://tls.test/"]).stdout).unwrap();
    assert!(text.starts_with("GET / over HTTP/3"), "{text}");
    // The plain listener's answers carry no Alt-Svc.
    let plain = explain(&["--json", "GET", "http://tls.test/"]);
    let e: serde_json::Value = serde_json::from_slice(&plain.stdout).unwrap();
    assert_eq!(e["request"]["protocol"], "HTTP/1.1");
    assert!(!plain.stdout.windows(7).any(|w| w == b"alt-svc"), "{e:#}");
    for bad in [
        vec!["--http3", "GET", "http://tls.test/"],
        vec![
            "--http3",
            "--listener",
            "127.0.0.1:18080",
            "GET",
            "https://tls.test/",
        ],
    ] {
        let out = explain(&bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{bad:?}");
    }
}
