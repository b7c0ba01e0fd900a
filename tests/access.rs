//! Access policy through the real gateway: API keys (plain and hashed), roles, spoofed
//! identity headers, IP allow/deny with and without trusted proxies, and CORS.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

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
