//! What an operator sees: `/metrics` names and series (prefix, process and build metrics,
//! certificate expiry, series of removed routes and targets), access-log fields and the
//! causes of failed requests, the diagnostic log's JSON form with request ids, and the
//! access-log file reopened on SIGUSR1.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::time::Duration;

fn app_route(backend: &Backend) -> String {
    format!(
        r#"
[upstreams.app]
targets = [{{ address = "{}" }}]

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
"#,
        backend.addr
    )
}

#[test]
fn every_metric_is_prefixed_and_the_build_and_process_are_described() {
    let a = Backend::echo("a");
    let gw = Gateway::start(&app_route(&a));
    let c = client();
    c.post(gw.url("/x")).body("12345").send().unwrap();
    c.get(gw.url("/y")).send().unwrap();
    let text = gw.metrics();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let name = line
            .trim_start_matches("# HELP ")
            .trim_start_matches("# TYPE ");
        assert!(
            name.starts_with("tollgate_") || name.starts_with("process_"),
            "unprefixed: {line}"
        );
    }
    let build = text
        .lines()
        .find(|l| l.starts_with("tollgate_build_info{"))
        .unwrap();
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{build}"
    );
    assert!(build.contains("pingora=\"0."), "{build}");
    assert!(build.contains("tls=\"OpenSSL"), "{build}");
    assert!(build.ends_with(" 1"), "{build}");
    assert!(metric(&text, "process_cpu_seconds_total", &[]).is_some());
    assert!(metric(&text, "process_resident_memory_bytes", &[]).unwrap() > 0.0);
    assert!(metric(&text, "process_open_fds", &[]).unwrap() > 0.0);
    assert_eq!(
        metric(
            &text,
            "tollgate_upstream_responses_total",
            &[("upstream", "app"), ("status", "200")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, "tollgate_request_bytes_total", &[("route", "app")]),
        Some(5.0)
    );
    assert!(metric(&text, "tollgate_response_bytes_total", &[("route", "app")]).unwrap() > 0.0);
    assert_eq!(
        metric(
            &text,
            "tollgate_request_duration_seconds_count",
            &[("route", "app"), ("status_class", "2xx")]
        ),
        Some(2.0)
    );
}

#[test]
fn request_duration_is_labelled_with_the_status_class() {
    let a = Backend::start("a", |r| {
        Reply::status(if r.path == "/fail" { 503 } else { 200 })
    });
    let gw = Gateway::start(&app_route(&a));
    let c = client();
    c.get(gw.url("/ok")).send().unwrap();
    c.get(gw.url("/fail")).send().unwrap();
    c.get(gw.url("/fail")).send().unwrap();
    let text = wait_for(Duration::from_secs(5), || {
        let t = gw.metrics();
        metric(
            &t,
            "tollgate_request_duration_seconds_count",
            &[("status_class", "5xx")],
        )
        .is_some()
        .then_some(t)
    })
    .unwrap();
    let count = |class| {
        metric(
            &text,
            "tollgate_request_duration_seconds_count",
            &[("route", "app"), ("status_class", class)],
        )
    };
    assert_eq!(count("2xx"), Some(1.0));
    assert_eq!(count("5xx"), Some(2.0));
    assert_eq!(
        metric(
            &text,
            "tollgate_upstream_responses_total",
            &[("upstream", "app"), ("status", "503")]
        ),
        Some(2.0)
    );
}

#[test]
fn certificate_expiry_is_exported_per_certificate_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["tls.test".to_string()]).unwrap();
    let not_after = 1_900_000_000i64; // 2030-03-17
    params.not_after = rcgen::date_time_ymd(2030, 3, 17);
    let cert = params.self_signed(&key).unwrap();
    let (crt, k) = (dir.path().join("api.crt"), dir.path().join("api.key"));
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let a = Backend::echo("a");
    let gw =
        Gateway::start_full(&format!("{}\n{}", tls_preamble(&crt, &k), app_route(&a))).unwrap();
    let text = gw.metrics();
    let expiry = metric(
        &text,
        "tollgate_tls_certificate_expiry_timestamp_seconds",
        &[("name", &crt.display().to_string())],
    )
    .unwrap_or_else(|| panic!("no expiry series: {text}"));
    // rcgen's date is midnight UTC of that day.
    let midnight = not_after - not_after % 86_400;
    assert_eq!(expiry as i64, midnight, "{expiry}");
}

#[test]
fn series_of_a_route_removed_by_a_reload_disappear() {
    let a = Backend::echo("a");
    let two = format!(
        r#"
[upstreams.app]
targets = [{{ address = "{addr}" }}]
[upstreams.old]
targets = [{{ address = "{addr}" }}]

[[routes]]
name = "gone"
path_prefix = "/gone"
upstream = "old"

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
"#,
        addr = a.addr
    );
    let gw = Gateway::start(&two);
    let c = client();
    c.get(gw.url("/gone/x")).send().unwrap();
    c.get(gw.url("/y")).send().unwrap();
    let before = gw.metrics();
    let series = |t: &str, label: &str| t.lines().any(|l| !l.starts_with('#') && l.contains(label));
    assert!(series(&before, "route=\"gone\""), "{before}");
    assert!(series(&before, "upstream=\"old\""), "{before}");
    gw.rewrite_config(&app_route(&a));
    let (status, body) = gw.reload();
    assert_eq!(status, 200, "{body}");
    let after = gw.metrics();
    assert!(!series(&after, "route=\"gone\""), "{after}");
    assert!(!series(&after, "upstream=\"old\""), "{after}");
    assert!(series(&after, "route=\"app\""), "{after}");
}

#[test]
fn targets_dns_no_longer_returns_disappear_from_metrics() {
    let a = Backend::echo("a");
    let b = Backend::echo_on("b", "127.0.0.2", a.addr.port());
    let hosts = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        hosts.path(),
        "127.0.0.1 app.internal\n127.0.0.2 app.internal\n",
    )
    .unwrap();
    let gw = Gateway::start(&format!(
        r#"
[resolver]
hosts_file = "{hosts}"

[upstreams.app]
targets = [{{ address = "app.internal:{port}" }}]
dns_refresh = "1s"
[upstreams.app.health_check]
kind = "tcp"
interval = "200ms"

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
"#,
        hosts = hosts.path().display(),
        port = a.addr.port()
    ));
    let gone = format!("127.0.0.2:{}", a.addr.port());
    let target_series = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("tollgate_upstream_target_healthy{"))
            .filter(|l| l.contains(&format!("target=\"{gone}\"")))
            .count()
    };
    let both = wait_for(Duration::from_secs(10), || {
        (target_series(&gw.metrics()) == 1).then_some(())
    });
    assert!(both.is_some(), "{}", gw.metrics());
    std::fs::write(hosts.path(), "127.0.0.1 app.internal\n").unwrap();
    let dropped = wait_for(Duration::from_secs(10), || {
        (target_series(&gw.metrics()) == 0).then_some(())
    });
    assert!(dropped.is_some(), "{}", gw.metrics());
    assert!(client()
        .get(gw.url("/x"))
        .send()
        .unwrap()
        .status()
        .is_success());
    drop(b);
}

/// A gateway whose three routes fail in three ways: nothing listening, an upstream slower
/// than the read timeout, an upstream that closes without answering.
#[test]
fn a_502_says_in_the_access_log_whether_connect_timeout_or_close_caused_it() {
    let slow = Backend::start("slow", |_| Reply::status(200).delay(Duration::from_secs(3)));
    let closer = Backend::start("closer", |_| Reply::status(200).cut_after(0));
    let gw = Gateway::start(&format!(
        r#"
[upstreams.refused]
targets = [{{ address = "127.0.0.1:{dead}" }}]
[upstreams.slow]
targets = [{{ address = "{slow}" }}]
read_timeout = "300ms"
[upstreams.closer]
targets = [{{ address = "{closer}" }}]

[[routes]]
name = "refused"
path_prefix = "/refused"
upstream = "refused"
[[routes]]
name = "slow"
path_prefix = "/slow"
upstream = "slow"
retry_on = []
[[routes]]
name = "closer"
path_prefix = "/closer"
upstream = "closer"
retry_on = []
"#,
        dead = free_port(),
        slow = slow.addr,
        closer = closer.addr
    ));
    let c = client();
    for (path, id) in [
        ("/refused", "e-refused"),
        ("/slow", "e-slow"),
        ("/closer", "e-closer"),
    ] {
        let r = c
            .get(gw.url(path))
            .header("x-request-id", id)
            .send()
            .unwrap();
        assert!(r.status().is_server_error(), "{path}: {}", r.status());
    }
    let line = |id: &str| gw.wait_access_log(|l| l["request_id"] == id);
    let refused = line("e-refused");
    assert_eq!(refused["error"], "connect refused", "{refused}");
    assert_eq!(refused["status"], 502, "{refused}");
    assert_eq!(refused["upstream"], "refused", "{refused}");
    assert!(
        refused["target"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{refused}"
    );
    assert_eq!(refused["attempts"], 1, "{refused}");
    assert!(refused["upstream_status"].is_null(), "{refused}");
    let slow = line("e-slow");
    assert_eq!(slow["error"], "upstream timeout after 300ms", "{slow}");
    assert_eq!(slow["status"], 504, "{slow}");
    let closer = line("e-closer");
    assert_eq!(
        closer["error"], "upstream closed before response",
        "{closer}"
    );
    assert_eq!(closer["status"], 502, "{closer}");
    for l in [&refused, &slow, &closer] {
        assert!(l["duration_us"].is_u64(), "{l}");
    }
}

#[test]
fn a_retried_request_lists_its_attempts_and_reasons() {
    let a = Backend::start("a", |_| Reply::status(503));
    let b = Backend::start("b", |_| Reply::status(503));
    let gw = Gateway::start(&format!(
        r#"
[upstreams.app]
targets = [{{ address = "{a}" }}, {{ address = "{b}" }}]

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
retries = 1
retry_on = ["5xx"]
"#,
        a = a.addr,
        b = b.addr
    ));
    let r = client()
        .get(gw.url("/x"))
        .header("x-request-id", "retried-1")
        .send()
        .unwrap();
    // The last attempt's answer is relayed.
    assert_eq!(r.status(), 503);
    let l = gw.wait_access_log(|l| l["request_id"] == "retried-1");
    assert_eq!(l["attempts"], 2, "{l}");
    assert_eq!(l["retries"], serde_json::json!(["5xx"]), "{l}");
    assert_eq!(l["upstream_status"], 503, "{l}");
    assert_eq!(a.hits() + b.hits(), 2);
}

#[test]
fn access_log_redacts_listed_query_values_and_keeps_only_listed_fields() {
    let a = Backend::echo("a");
    let gw = Gateway::start_full(&format!(
        r#"
[server]
threads = 1
pid_file = "{{dir}}/tollgate.pid"
upgrade_sock = "{{dir}}/upgrade.sock"

[[listeners]]
address = "{{listen}}"

[admin]
address = "{{admin}}"

[access_log]
target = "{{dir}}/access.log"
redact_query = ["signature", "Token"]
fields = ["request_id", "query", "status", "duration_us", "consumer"]
{}"#,
        app_route(&a)
    ))
    .unwrap();
    client()
        .get(gw.url("/x?a=1&token=s3cret&SIGNATURE=abc&b=&api_key=k"))
        .header("x-request-id", "redact-1")
        .send()
        .unwrap();
    let l = gw.wait_access_log(|l| l["request_id"] == "redact-1");
    assert_eq!(
        l["query"], "a=1&token=REDACTED&SIGNATURE=REDACTED&b=&api_key=k",
        "{l}"
    );
    let keys: Vec<&str> = l.as_object().unwrap().keys().map(String::as_str).collect();
    // `consumer` is listed but absent on an unauthenticated route.
    assert_eq!(
        keys,
        ["request_id", "query", "status", "duration_us"],
        "{l}"
    );
}

#[test]
fn access_log_fields_are_checked_with_a_suggestion() {
    let (code, err) = check_config(&format!(
        "{PREAMBLE}\nfields = [\"status\", \"duration_ms\"]\n"
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("access_log.fields[1]") && err.contains("did you mean `duration_us`"),
        "{err}"
    );
}

#[test]
fn sigusr1_reopens_the_access_log_and_loses_no_line() {
    let a = Backend::echo("a");
    let gw = Gateway::start(&app_route(&a));
    let c = client();
    let log = gw.dir.path().join("access.log");
    let rotated = gw.dir.path().join("access.log.1");
    for i in 0..20 {
        c.get(gw.url(&format!("/before/{i}")))
            .header("x-request-id", format!("before-{i}"))
            .send()
            .unwrap();
    }
    gw.wait_access_log(|l| l["request_id"] == "before-19");
    // logrotate without copytruncate: move the file, then signal.
    std::fs::rename(&log, &rotated).unwrap();
    for i in 0..5 {
        c.get(gw.url(&format!("/between/{i}")))
            .header("x-request-id", format!("between-{i}"))
            .send()
            .unwrap();
    }
    let status = std::process::Command::new(tollgate_bin())
        .args(["-c", gw.config_path.to_str().unwrap(), "-s", "reopen"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let reopened = wait_for(Duration::from_secs(5), || log.exists().then_some(()));
    assert!(reopened.is_some(), "the file was not created again");
    for i in 0..20 {
        c.get(gw.url(&format!("/after/{i}")))
            .header("x-request-id", format!("after-{i}"))
            .send()
            .unwrap();
    }
    gw.wait_access_log(|l| l["request_id"] == "after-19");
    let ids = |p: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let (old, new) = (ids(&rotated), ids(&log));
    for i in 0..20 {
        assert!(
            old.contains(&format!("before-{i}")),
            "before-{i} in {old:?}"
        );
        assert!(new.contains(&format!("after-{i}")), "after-{i} in {new:?}");
    }
    // Lines written around the signal land in one file or the other, once.
    for i in 0..5 {
        let id = format!("between-{i}");
        let n = old.iter().chain(&new).filter(|x| **x == id).count();
        assert_eq!(n, 1, "{id}: {old:?} {new:?}");
    }
    assert_eq!(old.len() + new.len(), 45);
}

#[test]
fn json_diagnostic_log_carries_the_request_id_and_the_start_up_line() {
    let auth = Backend::start("auth", |_| Reply::status(500));
    let a = Backend::echo("a");
    let gw = Gateway::start_full_env(
        &format!(
            r#"{PREAMBLE}
[log]
format = "json"

[upstreams.auth]
targets = [{{ address = "{auth}" }}]
[upstreams.app]
targets = [{{ address = "{app}" }}]

[auth.forward.users]
upstream = "auth"
path = "/verify"

[[routes]]
name = "fa"
path_prefix = "/"
upstream = "app"
auth = ["forward:users"]
"#,
            auth = auth.addr,
            app = a.addr
        ),
        &[("RUST_LOG", "info")],
    )
    .unwrap();
    let r = client()
        .get(gw.url("/x"))
        .header("x-request-id", "diag-1")
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    let lines = || -> Vec<serde_json::Value> {
        gw.stderr()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let auth_line = wait_for(Duration::from_secs(5), || {
        lines().into_iter().find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("auth service users"))
        })
    })
    .unwrap_or_else(|| panic!("no auth line: {}", gw.stderr()));
    assert_eq!(auth_line["request_id"], "diag-1", "{auth_line}");
    assert_eq!(auth_line["level"], "WARN", "{auth_line}");
    assert!(
        auth_line["time"].as_str().unwrap().ends_with('Z'),
        "{auth_line}"
    );
    let start = lines()
        .into_iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("tollgate ") && m.contains("starting:"))
        })
        .unwrap_or_else(|| panic!("no start-up line: {}", gw.stderr()));
    let m = start["message"].as_str().unwrap();
    assert!(m.contains(env!("CARGO_PKG_VERSION")), "{m}");
    assert!(m.contains(&gw.config_path.display().to_string()), "{m}");
    assert!(m.contains("sha256 "), "{m}");
    assert!(m.contains(&format!("{} (http)", gw.addr)), "{m}");
    assert!(start.get("request_id").is_none(), "{start}");
}

#[test]
fn health_check_flips_name_the_group_and_address_not_a_debug_dump() {
    let a = Backend::echo("a");
    let gw = Gateway::start_full_env(
        &format!(
            r#"{PREAMBLE}
[upstreams.app]
targets = [{{ address = "{a}" }}]
[upstreams.app.health_check]
path = "/healthz"
interval = "100ms"
unhealthy_threshold = 1

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
"#,
            a = a.addr
        ),
        &[("RUST_LOG", "warn")],
    )
    .unwrap();
    a.set_healthy(false);
    let line = wait_for(Duration::from_secs(10), || {
        gw.stderr()
            .lines()
            .find(|l| l.contains("becomes unhealthy"))
            .map(String::from)
    })
    .unwrap_or_else(|| panic!("no health line: {}", gw.stderr()));
    assert!(line.contains(&format!("upstream app/{}", a.addr)), "{line}");
    assert!(!line.contains("Backend {"), "{line}");
}

#[test]
fn sigusr1_without_an_access_log_file_does_not_stop_the_gateway() {
    let a = Backend::echo("a");
    let gw = Gateway::start_full(&format!(
        "{}\n{}",
        PREAMBLE.replace("target = \"{dir}/access.log\"", "target = \"off\""),
        app_route(&a)
    ))
    .unwrap();
    let out = std::process::Command::new(tollgate_bin())
        .args(["-c", gw.config_path.to_str().unwrap(), "-s", "reopen"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(client()
        .get(gw.url("/x"))
        .send()
        .unwrap()
        .status()
        .is_success());
}

/// Regression: expired, wrong-issuer and malformed tokens, a bad API key and a missing role
/// gave identical 401/403 access-log lines; a 429 did not say which window refused; a cache
/// `BYPASS` had no reason. Each now carries its reason word in the access log, the JSON
/// body and `tollgate_reasons_total`.
#[test]
fn the_access_log_could_not_explain_a_refusal() {
    const SECRET: &[u8] = b"reason-secret-0123456789abcdef0123456789";
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let backend = Backend::start("app", |r| {
        let reply = Reply::status(200).body("ok");
        if r.path.starts_with("/cookie") {
            reply
                .header("set-cookie", "s=1")
                .header("cache-control", "max-age=60")
        } else {
            reply.header("cache-control", "max-age=60")
        }
    });
    let gw = Gateway::start(&format!(
        r#"
[auth.jwt.main]
algorithms = ["HS256"]
secret_file = "{secret}"
issuer = "tollgate-tests"

[consumers.reader]
keys = ["reader-key-0123456789"]
roles = ["reader"]

[upstreams.app]
targets = [{{ address = "{app}" }}]

[[routes]]
name = "jwt"
path_prefix = "/jwt"
upstream = "app"
auth = ["jwt:main"]

[[routes]]
name = "admin"
path_prefix = "/admin"
upstream = "app"
auth = ["api_key"]
roles = ["admin"]

[[routes]]
name = "limited"
path_prefix = "/limited"
upstream = "app"
rate_limits = [{{ limit = 1, window = "10s", key = "ip" }}]

[[routes]]
name = "cached"
path_prefix = "/"
upstream = "app"
[routes.cache]
"#,
        secret = secret.display(),
        app = backend.addr,
    ));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    };
    let expired =
        token(serde_json::json!({ "sub": "u", "iss": "tollgate-tests", "exp": now - 3600 }));
    let foreign = token(serde_json::json!({ "sub": "u", "iss": "someone-else", "exp": now + 600 }));
    let bearer = |t: &str| ("authorization", format!("Bearer {t}"));
    let key = |k: &str| ("x-api-key", k.to_string());
    type Case<'a> = (&'a str, &'a str, Option<(&'a str, String)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/jwt/x",
            Some(bearer(&expired)),
            401,
            "token_expired",
        ),
        ("GET", "/jwt/x", Some(bearer(&foreign)), 401, "wrong_issuer"),
        (
            "GET",
            "/jwt/x",
            Some(bearer("not.a.token")),
            401,
            "malformed_token",
        ),
        ("GET", "/jwt/x", None, 401, "missing_credentials"),
        (
            "GET",
            "/admin/x",
            Some(key("wrong-key-0123456789")),
            401,
            "invalid_api_key",
        ),
        (
            "GET",
            "/admin/x",
            Some(key("reader-key-0123456789")),
            403,
            "missing_role",
        ),
        ("GET", "/limited", None, 200, ""),
        ("GET", "/limited", None, 429, "rate_limited:1/10s"),
        ("POST", "/plain", None, 200, "cache_bypass:method"),
        ("GET", "/cookie", None, 200, "cache_bypass:set_cookie"),
        ("GET", "/nowhere/../..%2f", None, 400, ""),
    ];
    let c = client();
    for (i, (method, path, header, status, reason)) in cases.iter().enumerate() {
        let id = format!("reason-{i}");
        let mut r = c
            .request(method.parse().unwrap(), gw.url(path))
            .header("x-request-id", &id);
        if let Some((name, value)) = header {
            r = r.header(*name, value);
        }
        let r = r.send().unwrap();
        assert_eq!(r.status().as_u16(), *status, "{method} {path}");
        let body = r.text().unwrap();
        let line = gw.wait_access_log(|l| l["request_id"] == id.as_str());
        if reason.is_empty() {
            if *status == 200 {
                assert!(line.get("reason").is_none(), "{line}");
            } else {
                assert!(line["reason"].is_string(), "{method} {path}: {line}");
            }
            continue;
        }
        assert_eq!(line["reason"], *reason, "{method} {path}: {line}");
        if *status >= 400 {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(json["reason"], *reason, "{body}");
        }
    }
    let metrics = gw.metrics();
    for (route, status, reason) in [
        ("jwt", "401", "token_expired"),
        ("admin", "403", "missing_role"),
        ("limited", "429", "rate_limited:1/10s"),
        ("cached", "200", "cache_bypass:set_cookie"),
    ] {
        assert_eq!(
            metric(
                &metrics,
                "tollgate_reasons_total",
                &[("route", route), ("status", status), ("reason", reason)]
            ),
            Some(1.0),
            "{route} {reason}"
        );
    }
}

/// The request metrics are kept per worker thread and added up at each scrape: requests
/// spread over two worker threads and many connections are each counted once, in every
/// family, and a histogram's `_count` is its `+Inf` bucket.
#[test]
fn counts_recorded_on_every_worker_thread_add_up_exactly() {
    let a = Backend::echo("a");
    let gw = Gateway::start(&app_route(&a));
    let url = gw.url("/x");
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                // A client of its own: a connection of its own, on whichever worker takes it.
                let c = client();
                for _ in 0..25 {
                    let r = c.post(&url).body("abcd").send().unwrap();
                    assert_eq!(r.status(), 200);
                }
            });
        }
    });
    let route = [("route", "app")];
    let text = wait_for(Duration::from_secs(5), || {
        let t = gw.metrics();
        let n = metric(
            &t,
            "tollgate_requests_total",
            &[("route", "app"), ("status", "200")],
        );
        (n == Some(200.0)).then_some(t)
    })
    .unwrap_or_else(|| panic!("not 200 requests counted:\n{}", gw.metrics()));
    let count = metric(&text, "tollgate_request_duration_seconds_count", &route).unwrap();
    let inf = metric(
        &text,
        "tollgate_request_duration_seconds_bucket",
        &[("route", "app"), ("le", "+Inf")],
    );
    assert_eq!(count, 200.0);
    assert_eq!(inf, Some(200.0));
    assert!(metric(&text, "tollgate_request_duration_seconds_sum", &route).unwrap() > 0.0);
    assert_eq!(
        metric(&text, "tollgate_request_bytes_total", &route),
        Some(800.0)
    );
    assert_eq!(
        metric(
            &text,
            "tollgate_upstream_duration_seconds_count",
            &[("upstream", "app")]
        ),
        Some(200.0)
    );
    assert_eq!(
        metric(
            &text,
            "tollgate_upstream_responses_total",
            &[("upstream", "app"), ("status", "200")]
        ),
        Some(200.0)
    );
}

/// `requests_in_flight` counts requests from their start to their end, whichever way they
/// end: answered, or the client gone while the upstream still works. It is raised and
/// lowered per worker thread and added up at the scrape, so it must come back to 0.
#[test]
fn requests_in_flight_rises_while_requests_wait_and_returns_to_zero() {
    let slow = Backend::start("slow", |_| {
        Reply::status(200)
            .body("done")
            .delay(Duration::from_millis(1500))
    });
    let gw = Gateway::start(&app_route(&slow));
    let in_flight = |gw: &Gateway| metric(&gw.metrics(), "tollgate_requests_in_flight", &[]);
    assert_eq!(in_flight(&gw), Some(0.0));
    let url = gw.url("/wait");
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| assert_eq!(client().get(&url).send().unwrap().status(), 200));
        }
        // A fifth client sends its request and goes away before the answer.
        let mut gone = std::net::TcpStream::connect(gw.addr).unwrap();
        std::io::Write::write_all(&mut gone, b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        wait_for(Duration::from_secs(5), || {
            (in_flight(&gw) == Some(5.0)).then_some(())
        })
        .unwrap_or_else(|| panic!("in flight: {:?}", in_flight(&gw)));
        drop(gone);
    });
    wait_for(Duration::from_secs(10), || {
        (in_flight(&gw) == Some(0.0)).then_some(())
    })
    .unwrap_or_else(|| panic!("in flight after the end: {:?}", in_flight(&gw)));
}
