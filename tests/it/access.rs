//! Access policy through the real gateway: API keys (plain and hashed), roles, spoofed
//! identity headers, IP allow/deny with and without trusted proxies, and CORS.
#![allow(clippy::unwrap_used)]

use crate::common::*;

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

fn keys_gateway(backend: &Backend) -> Gateway {
    Gateway::start(&format!(
        r#"
[consumers.mobile]
keys = ["mobile-key-0123456789"]
roles = ["reader"]

[consumers.batch]
key_hashes = ["sha256:{batch}"]
roles = ["reader", "admin"]

[upstreams.app]
targets = [{{ address = "{addr}" }}]

[[routes]]
name = "public"
path_prefix = "/public"
upstream = "app"

[[routes]]
name = "keyed"
path_prefix = "/keyed"
upstream = "app"
auth = ["api_key"]

[[routes]]
name = "admin"
path_prefix = "/admin"
upstream = "app"
auth = ["api_key"]
roles = ["admin"]
"#,
        batch = sha256_hex("hashed-key-for-batch-jobs"),
        addr = backend.addr
    ))
}

#[test]
fn api_keys_map_to_consumers_and_roles() {
    let backend = Backend::echo("app");
    let gw = keys_gateway(&backend);
    let c = client();
    // (path, key, status, consumer seen upstream)
    let cases: &[(&str, Option<&str>, u16, Option<&str>)] = &[
        ("/public/x", None, 200, None),
        ("/keyed/x", None, 401, None),
        ("/keyed/x", Some("wrong-key-0123456789"), 401, None),
        (
            "/keyed/x",
            Some("mobile-key-0123456789"),
            200,
            Some("mobile"),
        ),
        (
            "/keyed/x",
            Some("hashed-key-for-batch-jobs"),
            200,
            Some("batch"),
        ),
        ("/admin/x", Some("mobile-key-0123456789"), 403, None),
        (
            "/admin/x",
            Some("hashed-key-for-batch-jobs"),
            200,
            Some("batch"),
        ),
    ];
    for (path, key, status, consumer) in cases {
        let before = backend.hits();
        let mut req = c.get(gw.url(path));
        if let Some(k) = key {
            req = req.header("x-api-key", *k);
        }
        let resp = req.send().unwrap();
        assert_eq!(resp.status().as_u16(), *status, "{path} {key:?}");
        let headers = resp.headers().clone();
        let text = resp.text().unwrap();
        if *status == 401 {
            assert!(
                headers.contains_key("www-authenticate"),
                "{path}: 401 carries a challenge"
            );
            assert!(
                !text.contains("key-0123456789"),
                "never echo key material: {text}"
            );
            let body: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(body["request_id"].is_string());
        }
        if *status == 200 {
            assert_eq!(
                backend.last_request().header("x-consumer"),
                *consumer,
                "{path}"
            );
        } else {
            assert_eq!(
                backend.hits(),
                before,
                "{path}: refused requests never reach upstream"
            );
        }
    }
    let metrics = c
        .get(gw.admin_url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(
        metric(
            &metrics,
            "tollgate_auth_failures_total",
            &[("route", "keyed"), ("reason", "missing_credentials")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "tollgate_auth_failures_total",
            &[("route", "keyed"), ("reason", "invalid_api_key")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "tollgate_auth_failures_total",
            &[("route", "admin"), ("reason", "missing_role")]
        ),
        Some(1.0)
    );
}

#[test]
fn spoofed_identity_headers_are_stripped() {
    let backend = Backend::echo("app");
    let gw = keys_gateway(&backend);
    let c = client();
    for path in ["/public/x", "/keyed/x"] {
        c.get(gw.url(path))
            .header("x-api-key", "mobile-key-0123456789")
            .header("x-user-id", "root")
            .header("x-user-roles", "admin")
            .header("x-consumer", "batch")
            .send()
            .unwrap();
        let seen = backend.last_request();
        assert_eq!(seen.header("x-user-id"), None, "{path}");
        if path == "/public/x" {
            assert_eq!(seen.header("x-consumer"), None);
            assert_eq!(seen.header("x-user-roles"), None);
        } else {
            assert_eq!(seen.header("x-consumer"), Some("mobile"));
            assert_eq!(seen.header("x-user-roles"), Some("reader"));
        }
    }
}

fn ip_gateway(backend: &Backend, limits: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[limits]
{limits}

[upstreams.app]
targets = [{{ address = "{}" }}]

[[routes]]
name = "internal"
path_prefix = "/internal"
upstream = "app"
ip_allow = ["10.0.0.0/8"]

[[routes]]
name = "open"
path_prefix = "/"
upstream = "app"
ip_deny = ["203.0.113.0/24"]
"#,
        backend.addr
    ))
}

#[test]
fn ip_rules_without_trusted_proxies_use_the_peer() {
    let backend = Backend::echo("app");
    let gw = ip_gateway(&backend, "");
    let c = client();
    // The peer is 127.0.0.1, not in 10/8; a forged X-Forwarded-For changes nothing.
    let r = c
        .get(gw.url("/internal/x"))
        .header("x-forwarded-for", "10.1.2.3")
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(gw.url("/x"))
        .header("x-forwarded-for", "203.0.113.5")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        backend.last_request().header("x-forwarded-for"),
        Some("127.0.0.1")
    );
}

#[test]
fn ip_rules_with_a_trusted_proxy_use_forwarded_for() {
    let backend = Backend::echo("app");
    let gw = ip_gateway(&backend, "trusted_proxies = [\"127.0.0.1/32\"]");
    let c = client();
    let cases = [
        ("/internal/x", "10.1.2.3", 200),
        ("/internal/x", "192.0.2.1", 403),
        ("/x", "203.0.113.5", 403),
        ("/x", "198.51.100.1", 200),
    ];
    for (path, xff, status) in cases {
        let r = c
            .get(gw.url(path))
            .header("x-forwarded-for", xff)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path} from {xff}");
    }
    // The chain is extended with the trusted peer.
    assert_eq!(
        backend.last_request().header("x-forwarded-for"),
        Some("198.51.100.1, 127.0.0.1")
    );
    let log = gw.wait_access_log(|l| l["path"] == "/x" && l["status"] == 200);
    assert_eq!(log["client_ip"], "198.51.100.1");
}

#[test]
fn global_deny_list() {
    let backend = Backend::echo("app");
    let gw = ip_gateway(&backend, "ip_deny = [\"127.0.0.0/8\"]");
    let r = client().get(gw.url("/x")).send().unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(backend.hits(), 0);
}

#[test]
fn cors_preflight_and_actual_requests() {
    let backend = Backend::echo("app");
    let gw = Gateway::start(&format!(
        r#"
[upstreams.app]
targets = [{{ address = "{}" }}]

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "app"
[routes.cors]
allow_origins = ["https://app.example"]
allow_methods = ["GET", "PUT"]
allow_headers = ["X-Token"]
expose_headers = ["X-Total"]
allow_credentials = true
max_age = "10m"

[[routes]]
name = "open"
path_prefix = "/open"
upstream = "app"
[routes.cors]
allow_origins = ["*"]
"#,
        backend.addr
    ));
    let c = client();
    let preflight = |origin: &str, method: &str, headers: Option<&str>| {
        let mut r = c
            .request(reqwest::Method::OPTIONS, gw.url("/api/items"))
            .header("origin", origin)
            .header("access-control-request-method", method);
        if let Some(h) = headers {
            r = r.header("access-control-request-headers", h);
        }
        r.send().unwrap()
    };
    let ok = preflight("https://app.example", "PUT", Some("x-token"));
    assert_eq!(ok.status(), 204);
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-allow-methods"], "GET, PUT");
    assert_eq!(h["access-control-max-age"], "600");
    assert!(h.get_all("vary").iter().any(|v| v == "Origin"));
    // RFC 9110 §8.6: a 204 carries no Content-Length (httplint flagged `Content-Length: 0`).
    assert!(h.get("content-length").is_none(), "{h:?}");
    assert_eq!(preflight("https://evil.example", "PUT", None).status(), 403);
    assert_eq!(
        preflight("https://app.example", "DELETE", None).status(),
        403
    );
    assert_eq!(
        preflight("https://app.example", "GET", Some("x-other")).status(),
        403
    );
    assert_eq!(backend.hits(), 0, "preflights are answered at the gateway");

    let actual = c
        .get(gw.url("/api/items"))
        .header("origin", "https://app.example")
        .send()
        .unwrap();
    assert_eq!(actual.status(), 200);
    assert_eq!(
        actual.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(actual.headers()["access-control-expose-headers"], "X-Total");
    let foreign = c
        .get(gw.url("/api/items"))
        .header("origin", "https://evil.example")
        .send()
        .unwrap();
    assert!(foreign
        .headers()
        .get("access-control-allow-origin")
        .is_none());

    // Wildcard without credentials: "*" and never Allow-Credentials.
    let open = c
        .get(gw.url("/open"))
        .header("origin", "https://any.example")
        .send()
        .unwrap();
    assert_eq!(open.headers()["access-control-allow-origin"], "*");
    assert!(open
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
}

#[test]
fn cors_star_with_credentials_is_a_config_error() {
    let (code, out) = check_config(
        r#"
[[listeners]]
address = "127.0.0.1:1"
[[routes]]
name = "x"
[routes.respond]
status = 200
[routes.cors]
allow_origins = ["*"]
allow_credentials = true
"#,
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("routes[0].cors"), "{out}");
    assert!(out.contains("allow_credentials"), "{out}");
}

/// Regression: the gateway's own 401 and 403 (and its other answers on a CORS route)
/// carried no `Access-Control-Allow-Origin`, no `Vary: Origin` and no security headers, so
/// a browser app read them as CORS failures.
#[test]
fn gateway_made_401_carried_no_cors_headers() {
    let backend = Backend::echo("app");
    let dead = free_port();
    let cors = r#"
[routes.cors]
allow_origins = ["https://app.example"]
allow_credentials = true
"#;
    let gw = Gateway::start(&format!(
        r#"
[consumers.reader]
keys = ["reader-key-0123456789"]
roles = ["reader"]

[upstreams.app]
targets = [{{ address = "{app}" }}]

[upstreams.dead]
targets = [{{ address = "127.0.0.1:{dead}" }}]

[[routes]]
name = "secure"
path_prefix = "/secure"
upstream = "app"
auth = ["api_key"]
roles = ["admin"]
max_body_size = "16B"
{cors}
[[routes]]
name = "limited"
path_prefix = "/limited"
upstream = "app"
rate_limits = [{{ limit = 1, window = "1m", key = "ip" }}]
{cors}
[[routes]]
name = "walled"
path_prefix = "/walled"
upstream = "app"
ip_deny = ["127.0.0.0/8"]
{cors}
[[routes]]
name = "down"
path_prefix = "/down"
upstream = "dead"
{cors}
[[routes]]
name = "fixed"
path_prefix = "/fixed"
respond = {{ status = 503, body = "maintenance" }}
{cors}"#,
        app = backend.addr,
    ));
    let c = client();
    let send = |method: reqwest::Method, path: &str, key: Option<&str>, body: &str| {
        let mut r = c
            .request(method, gw.url(path))
            .header("origin", "https://app.example");
        if let Some(k) = key {
            r = r.header("x-api-key", k);
        }
        if !body.is_empty() {
            r = r.body(body.to_string());
        }
        r.send().unwrap()
    };
    let cases = [
        (reqwest::Method::GET, "/secure/x", None, "", 401),
        (
            reqwest::Method::GET,
            "/secure/x",
            Some("reader-key-0123456789"),
            "",
            403,
        ),
        (
            reqwest::Method::POST,
            "/secure/x",
            Some("reader-key-0123456789"),
            "a body of more than sixteen bytes",
            413,
        ),
        (reqwest::Method::GET, "/walled/x", None, "", 403),
        (reqwest::Method::GET, "/down/x", None, "", 502),
        (reqwest::Method::GET, "/fixed", None, "", 503),
    ];
    for (method, path, key, body, status) in cases {
        let r = send(method.clone(), path, key, body);
        assert_eq!(r.status(), status, "{method} {path}");
        let h = r.headers();
        assert_eq!(
            h.get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap()),
            Some("https://app.example"),
            "{method} {path} {status}: {h:?}"
        );
        assert_eq!(h["access-control-allow-credentials"], "true", "{path}");
        assert!(
            h.get_all("vary").iter().any(|v| v == "Origin"),
            "{method} {path} {status}: {h:?}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff", "{path} {status}");
        assert_eq!(h["x-frame-options"], "DENY", "{path} {status}");
    }
    // The rate limit's own 429, and a request without Origin still says Vary: Origin.
    assert_eq!(
        send(reqwest::Method::GET, "/limited", None, "").status(),
        200
    );
    let limited = send(reqwest::Method::GET, "/limited", None, "");
    assert_eq!(limited.status(), 429);
    assert_eq!(
        limited.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let plain = c.get(gw.url("/fixed")).send().unwrap();
    assert!(plain
        .headers()
        .get_all("vary")
        .iter()
        .any(|v| v == "Origin"));
    assert!(plain.headers().get("access-control-allow-origin").is_none());
    assert_eq!(
        backend.hits(),
        1,
        "only the first /limited request was proxied"
    );
}

/// A real browser (headless Chromium) on a page of the allowed origin reads the gateway's
/// 401 (status and JSON body) through `fetch(..., {credentials: "include"})`.
#[test]
fn a_browser_app_reads_the_gateways_401() {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("chromium is installed by scripts/setup.sh");
    let backend = Backend::echo("app");
    let gw_port = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(0));
    let port_for_page = gw_port.clone();
    let page = Backend::start("page", move |_| {
        let gw = port_for_page.load(std::sync::atomic::Ordering::Relaxed);
        Reply::status(200)
            .header("content-type", "text/html")
            .body(format!(
                r#"<!doctype html><html><body><pre id="out">pending</pre><script>
fetch("http://127.0.0.1:{gw}/secure/x", {{credentials: "include"}})
  .then(async r => {{ document.getElementById("out").textContent =
      "status=" + r.status + " body=" + await r.text(); }})
  .catch(e => {{ document.getElementById("out").textContent = "failed: " + e; }});
</script></body></html>"#
            ))
    });
    let gw = Gateway::start(&format!(
        r#"
[consumers.reader]
keys = ["reader-key-0123456789"]

[upstreams.app]
targets = [{{ address = "{app}" }}]

[[routes]]
name = "secure"
path_prefix = "/secure"
upstream = "app"
auth = ["api_key"]
[routes.cors]
allow_origins = ["http://127.0.0.1:{page_port}"]
allow_credentials = true
"#,
        app = backend.addr,
        page_port = page.addr.port(),
    ));
    gw_port.store(gw.addr.port(), std::sync::atomic::Ordering::Relaxed);
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("http://{}/", page.addr))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("status=401 body={\"error\":"),
        "the page read: {dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dom.contains("request_id"), "{dom}");
}
