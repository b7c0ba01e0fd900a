//! The spec's platform, end to end: the real binary on `conf/platform.toml` (its ports moved
//! to free ones, its pid file, socket and access log into the test's directory, nothing else
//! changed), with the five built-in demo backends standing in for the services. Each test
//! walks one behaviour of the spec through real sockets: routes reaching each service under
//! its own path, JWT everywhere but `/api/v1/auth/*`, the payments role, limits by kind of
//! caller, the correlation id, identity, security and CORS headers, the product cache,
//! `/health` per service and `/metrics`, and the routing table and OpenAPI document.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use reqwest::blocking::{RequestBuilder, Response};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The five services: (upstream group, demo backend name, public prefix, upstream prefix).
const SERVICES: [(&str, &str, &str, &str); 5] = [
    ("users", "users-service", "/api/v1/users", "/users"),
    ("orders", "orders-service", "/api/v1/orders", "/orders"),
    (
        "products",
        "products-service",
        "/api/v1/products",
        "/products",
    ),
    (
        "payments",
        "payments-service",
        "/api/v1/payments",
        "/payments",
    ),
    (
        "notifications",
        "notifications-service",
        "/api/v1/notifications",
        "/notifications",
    ),
];

/// The demo keys of `conf/platform.toml`'s consumers (their digests are in the file).
const BILLING_KEY: &str = "billing-worker-key-0123456789abcdef";
const PARTNER_KEY: &str = "partner-shop-key-0123456789abcdef";
const APP_ORIGIN: &str = "https://app.example.test";

fn conf_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conf")
}

/// `s` with `from` replaced by `to`; panics when `from` is not there, so a change of the
/// shipped file that this rewrite no longer matches fails here, not as a confusing refusal.
fn replace_once(s: &str, from: &str, to: &str) -> String {
    assert!(
        s.contains(from),
        "conf/platform.toml no longer has {from:?}; update tests/it/platform.rs"
    );
    s.replace(from, to)
}

/// `conf/platform.toml` with every address moved to a free loopback port and the files it
/// writes moved into the test directory (placeholders `{dir}`, `{listen}`, `{admin}`).
fn platform_config() -> String {
    let mut text = std::fs::read_to_string(conf_dir().join("platform.toml")).unwrap();
    text = replace_once(&text, "\"127.0.0.1:8088\"", "\"{listen}\"");
    text = replace_once(&text, "\"127.0.0.1:9098\"", "\"{admin}\"");
    // Each demo backend's port appears twice: its [[demo]] address and its group's target.
    for port in 18101..=18105 {
        text = replace_once(
            &text,
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{}", free_port()),
        );
    }
    text = replace_once(
        &text,
        "\"/tmp/tollgate-platform.pid\"",
        "\"{dir}/tollgate.pid\"",
    );
    text = replace_once(
        &text,
        "\"/tmp/tollgate-platform-upgrade.sock\"",
        "\"{dir}/upgrade.sock\"",
    );
    replace_once(
        &text,
        "[access_log]\ntarget = \"stdout\"",
        "[access_log]\ntarget = \"{dir}/access.log\"",
    )
}

/// Copy `from` into `to`, directories included (the OpenAPI files beside the config).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// The platform gateway, started and past its first round of health checks.
fn start_platform() -> Gateway {
    let gw = Gateway::start_written(&platform_config(), |dir, text| {
        // The files the config names relative to itself: the JWT secret and the services'
        // OpenAPI descriptions.
        std::fs::copy(
            conf_dir().join("demo-jwt.secret"),
            dir.join("demo-jwt.secret"),
        )?;
        let openapi = conf_dir().join("openapi");
        if openapi.is_dir() {
            copy_tree(&openapi, &dir.join("openapi"))?;
        }
        let path = dir.join("platform.toml");
        std::fs::write(&path, text).map(|_| path)
    })
    .unwrap_or_else(|e| panic!("the gateway did not start on conf/platform.toml: {e}"));
    let ready = wait_for(Duration::from_secs(20), || {
        let r = client().get(gw.admin_url("/readyz")).send().ok()?;
        (r.status() == 200).then_some(())
    });
    assert!(ready.is_some(), "/readyz never 200: {}", gw.stderr());
    gw
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token as the users service would issue it: HS256 with the demo secret, the platform's
/// issuer and audience, valid for an hour.
fn token(sub: &str, roles: &[&str]) -> String {
    token_with(json!({
        "sub": sub,
        "roles": roles,
        "email": format!("{sub}@example.test"),
        "iss": "platform-auth",
        "aud": "platform-api",
        "exp": now() + 3600,
    }))
}

fn token_with(claims: Value) -> String {
    let secret = std::fs::read(conf_dir().join("demo-jwt.secret")).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )
    .unwrap()
}

fn bearer(req: RequestBuilder, token: &str) -> RequestBuilder {
    req.header("Authorization", format!("Bearer {token}"))
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

/// The status, the headers and the body as JSON (`Null` if it is not JSON).
fn send(req: RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().unwrap();
    (
        status,
        headers,
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

#[test]
fn each_service_is_reached_under_api_v1_with_its_own_path() {
    let gw = start_platform();
    let c = client();
    let alice = token("alice", &["customer", "payments"]);
    let login = json!({"email": "alice@example.test", "password": "correct horse"});
    for (method, path, backend, uri) in [
        ("POST", "/api/v1/auth/login", "users-service", "/auth/login"),
        (
            "POST",
            "/api/v1/auth/register",
            "users-service",
            "/auth/register",
        ),
        ("GET", "/api/v1/users/42", "users-service", "/users/42"),
        ("GET", "/api/v1/orders", "orders-service", "/orders"),
        (
            "GET",
            "/api/v1/products?page=2",
            "products-service",
            "/products?page=2",
        ),
        ("GET", "/api/v1/payments", "payments-service", "/payments"),
        (
            "GET",
            "/api/v1/notifications",
            "notifications-service",
            "/notifications",
        ),
    ] {
        let req = c.request(method.parse().unwrap(), gw.url(path));
        let req = if path.starts_with("/api/v1/auth/") {
            req.json(&login)
        } else {
            bearer(req, &alice)
        };
        let (status, _, body) = send(req);
        assert_eq!(status, 200, "{method} {path}: {body}");
        assert_eq!(body["backend"], backend, "{method} {path} reached {body}");
        assert_eq!(body["uri"], uri, "{method} {path} arrived as {body}");
        assert_eq!(body["method"], method);
    }
    // Prefixes match by segment, and nothing outside the routes is proxied.
    for path in ["/api/v1/ordersx", "/api/v2/orders", "/orders", "/api/v1"] {
        let (status, _, body) = send(bearer(c.get(gw.url(path)), &alice));
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["reason"], "no_route", "{path}: {body}");
    }
}

#[test]
fn every_route_but_auth_answers_401_without_a_valid_token_or_key() {
    let gw = start_platform();
    let c = client();
    for (_, _, prefix, _) in SERVICES {
        let (status, headers, body) = send(c.get(gw.url(prefix)));
        assert_eq!(status, 401, "{prefix} without credentials: {body}");
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"),
            "{prefix}: {headers:?}"
        );
        assert_eq!(body["reason"], "missing_credentials", "{prefix}: {body}");
    }
    // Tokens the platform did not issue, or no longer accepts.
    let wrong_secret = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "eve", "iss": "platform-auth", "aud": "platform-api", "exp": now() + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-platform-secret-0123456789abcdef"),
    )
    .unwrap();
    let expired = token_with(json!({
        "sub": "alice", "iss": "platform-auth", "aud": "platform-api", "exp": now() - 600,
    }));
    let other_audience = token_with(json!({
        "sub": "alice", "iss": "platform-auth", "aud": "another-api", "exp": now() + 3600,
    }));
    let other_issuer = token_with(json!({
        "sub": "alice", "iss": "someone-else", "aud": "platform-api", "exp": now() + 3600,
    }));
    for (what, t) in [
        ("wrong secret", &wrong_secret),
        ("expired", &expired),
        ("other audience", &other_audience),
        ("other issuer", &other_issuer),
    ] {
        let (status, _, body) = send(bearer(c.get(gw.url("/api/v1/orders")), t));
        assert_eq!(status, 401, "{what}: {body}");
    }
    let (status, _, _) = send(
        c.get(gw.url("/api/v1/orders"))
            .header("X-API-Key", "not-a-key-of-this-platform-0123"),
    );
    assert_eq!(status, 401, "an unknown API key");
    // Valid credentials of either kind pass.
    let (status, _, _) = send(bearer(
        c.get(gw.url("/api/v1/orders")),
        &token("alice", &[]),
    ));
    assert_eq!(status, 200, "a platform JWT");
    let (status, _, _) = send(
        c.get(gw.url("/api/v1/orders"))
            .header("X-API-Key", PARTNER_KEY),
    );
    assert_eq!(status, 200, "a consumer's API key");
    // Sign-up and login are public.
    for path in ["/api/v1/auth/login", "/api/v1/auth/register"] {
        let (status, _, body) = send(
            c.post(gw.url(path))
                .json(&json!({"email": "a@example.test"})),
        );
        assert_eq!(status, 200, "{path} without a token: {body}");
    }
}

#[test]
fn payments_needs_the_payments_role_from_the_token_or_the_consumer() {
    let gw = start_platform();
    let c = client();
    let url = gw.url("/api/v1/payments/p-1");
    let (status, _, body) = send(bearer(c.get(&url), &token("bob", &["customer"])));
    assert_eq!(status, 403, "a JWT without the role: {body}");
    assert_eq!(body["reason"], "missing_role", "{body}");
    let (status, _, _) = send(bearer(c.get(&url), &token("bob", &[])));
    assert_eq!(status, 403, "a JWT without roles");
    let (status, _, body) = send(bearer(
        c.get(&url),
        &token("carol", &["customer", "payments"]),
    ));
    assert_eq!(status, 200, "a JWT with the role: {body}");
    assert_eq!(body["headers"]["x-user-roles"], "customer,payments");
    let (status, _, _) = send(c.get(&url).header("X-API-Key", PARTNER_KEY));
    assert_eq!(status, 403, "a consumer without the role");
    let (status, _, body) = send(c.get(&url).header("X-API-Key", BILLING_KEY));
    assert_eq!(status, 200, "a consumer with the role: {body}");
    assert_eq!(body["headers"]["x-consumer"], "billing-worker");
    // The role is needed on payments only.
    let (status, _, _) = send(bearer(
        c.get(gw.url("/api/v1/orders")),
        &token("bob", &["customer"]),
    ));
    assert_eq!(status, 200, "orders needs no role");
}

#[test]
fn each_kind_of_caller_gets_its_own_hourly_limit_shared_by_every_route() {
    let gw = start_platform();
    let c = client();
    let limit = |h: &reqwest::header::HeaderMap| -> (String, String) {
        (
            h["ratelimit-limit"].to_str().unwrap().to_string(),
            h["ratelimit-remaining"].to_str().unwrap().to_string(),
        )
    };
    // A user with a JWT: 1000 an hour, counted across routes (scope = "global").
    let dave = token("dave", &["customer"]);
    let (status, h, _) = send(bearer(c.get(gw.url("/api/v1/orders")), &dave));
    assert_eq!(status, 200);
    assert_eq!(
        limit(&h),
        ("1000".into(), "999".into()),
        "a JWT caller on orders"
    );
    let (_, h, _) = send(bearer(c.get(gw.url("/api/v1/notifications")), &dave));
    assert_eq!(
        limit(&h),
        ("1000".into(), "998".into()),
        "the same user on notifications"
    );
    // Another user has a budget of their own.
    let (_, h, _) = send(bearer(c.get(gw.url("/api/v1/orders")), &token("erin", &[])));
    assert_eq!(limit(&h), ("1000".into(), "999".into()), "another user");
    // An anonymous client on the public route: 100 an hour per IP.
    let (status, h, _) = send(c.post(gw.url("/api/v1/auth/login")).json(&json!({})));
    assert_eq!(status, 200);
    assert_eq!(
        limit(&h),
        ("100".into(), "99".into()),
        "an anonymous caller"
    );
    let (_, h, _) = send(c.post(gw.url("/api/v1/auth/register")).json(&json!({})));
    assert_eq!(limit(&h), ("100".into(), "98".into()), "the same IP again");
    // A machine client with an API key: 10000 an hour per consumer.
    let (status, h, _) = send(
        c.get(gw.url("/api/v1/orders"))
            .header("X-API-Key", PARTNER_KEY),
    );
    assert_eq!(status, 200);
    assert_eq!(limit(&h), ("10000".into(), "9999".into()), "an API key");
    let (_, h, _) = send(
        c.get(gw.url("/api/v1/users/1"))
            .header("X-API-Key", PARTNER_KEY),
    );
    assert_eq!(
        limit(&h),
        ("10000".into(), "9998".into()),
        "the same key on users"
    );
    // The reset is at most the hour.
    let reset: u64 = h["ratelimit-reset"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&reset), "RateLimit-Reset {reset}");
}

#[test]
fn the_correlation_id_is_generated_when_absent_and_a_clients_own_is_kept() {
    let gw = start_platform();
    let c = client();
    let alice = token("alice", &["customer"]);

    // None sent: the gateway makes one, gives it to the service and returns it.
    let r = bearer(c.get(gw.url("/api/v1/orders")), &alice)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let generated = header(&r, "x-correlation-id")
        .expect("X-Correlation-ID on the response")
        .to_string();
    assert!(!generated.is_empty());
    assert!(
        header(&r, "x-request-id").is_none(),
        "the id goes back under the configured name only: {:?}",
        r.headers()
    );
    let body: Value = r.json().unwrap();
    assert_eq!(body["headers"]["x-correlation-id"], generated.as_str());
    assert!(
        body["headers"].get("x-request-id").is_none(),
        "the service gets no X-Request-ID: {body}"
    );

    // A client's valid id is passed on and returned unchanged.
    let r = bearer(c.get(gw.url("/api/v1/orders")), &alice)
        .header("X-Correlation-ID", "checkout-7f3a9c")
        .send()
        .unwrap();
    assert_eq!(header(&r, "x-correlation-id"), Some("checkout-7f3a9c"));
    let body: Value = r.json().unwrap();
    assert_eq!(body["headers"]["x-correlation-id"], "checkout-7f3a9c");

    // An invalid one (a space, a quote) is replaced by a generated one.
    let r = bearer(c.get(gw.url("/api/v1/orders")), &alice)
        .header("X-Correlation-ID", "not \"valid\"")
        .send()
        .unwrap();
    let replaced = header(&r, "x-correlation-id").unwrap().to_string();
    assert_ne!(replaced, "not \"valid\"");
    let body: Value = r.json().unwrap();
    assert_eq!(body["headers"]["x-correlation-id"], replaced.as_str());

    // A client's X-Request-ID is not the correlation id: it is not taken as the id.
    let r = bearer(c.get(gw.url("/api/v1/orders")), &alice)
        .header("X-Request-ID", "legacy-id-1")
        .send()
        .unwrap();
    assert_ne!(header(&r, "x-correlation-id"), Some("legacy-id-1"));

    // The gateway's own errors carry it, in the header and the JSON body.
    let r = c
        .get(gw.url("/api/v1/orders"))
        .header("X-Correlation-ID", "no-token-1")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "x-correlation-id"), Some("no-token-1"));
    assert_eq!(r.json::<Value>().unwrap()["request_id"], "no-token-1");

    // And the access log, as request_id.
    let line = gw.wait_access_log(|l| l["request_id"] == "checkout-7f3a9c");
    assert_eq!(line["route"], "orders");
    gw.wait_access_log(|l| l["request_id"] == generated.as_str());
}

#[test]
fn identity_headers_reach_the_service_and_client_sent_ones_are_stripped() {
    let gw = start_platform();
    let c = client();
    let spoofed = |req: RequestBuilder| {
        req.header("X-User-ID", "mallory")
            .header("X-User-Roles", "admin,payments")
            .header("X-User-Email", "mallory@example.test")
            .header("X-Consumer", "billing-worker")
    };
    // A JWT caller: sub, roles and email from the token only.
    let (status, _, body) = send(spoofed(bearer(
        c.get(gw.url("/api/v1/users/me")),
        &token("alice", &["customer"]),
    )));
    assert_eq!(status, 200, "{body}");
    let h = &body["headers"];
    assert_eq!(h["x-user-id"], "alice", "{body}");
    assert_eq!(h["x-user-roles"], "customer", "{body}");
    assert_eq!(h["x-user-email"], "alice@example.test", "{body}");
    assert!(h.get("x-consumer").is_none(), "{body}");
    // credentials = "strip": the verified token does not travel on.
    assert!(
        h.get("authorization").is_none(),
        "the service got the token: {body}"
    );

    // An API-key caller: the consumer's name and roles.
    let (_, _, body) = send(spoofed(
        c.get(gw.url("/api/v1/orders"))
            .header("X-API-Key", PARTNER_KEY),
    ));
    let h = &body["headers"];
    assert_eq!(h["x-consumer"], "partner-shop", "{body}");
    assert_eq!(h["x-user-roles"], "partner", "{body}");
    assert!(h.get("x-user-id").is_none(), "{body}");
    assert!(h.get("x-user-email").is_none(), "{body}");
    assert!(
        h.get("x-api-key").is_none(),
        "the service got the key: {body}"
    );

    // On the public route nobody is identified, and nothing a client says passes for it.
    let (_, _, body) = send(spoofed(
        c.post(gw.url("/api/v1/auth/login")).json(&json!({})),
    ));
    let h = &body["headers"];
    for name in ["x-user-id", "x-user-roles", "x-user-email", "x-consumer"] {
        assert!(h.get(name).is_none(), "{name} reached the service: {body}");
    }
    // The gateway's forwarding headers are there.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
}

#[test]
fn responses_carry_the_security_headers_proxied_or_refused() {
    let gw = start_platform();
    let c = client();
    let alice = token("alice", &["customer"]);
    for (what, req) in [
        ("proxied", bearer(c.get(gw.url("/api/v1/orders")), &alice)),
        (
            "public",
            c.post(gw.url("/api/v1/auth/login")).json(&json!({})),
        ),
        ("401", c.get(gw.url("/api/v1/orders"))),
        ("403", bearer(c.get(gw.url("/api/v1/payments")), &alice)),
    ] {
        let r = req.send().unwrap();
        assert_eq!(
            header(&r, "x-content-type-options"),
            Some("nosniff"),
            "{what}"
        );
        assert_eq!(header(&r, "x-frame-options"), Some("DENY"), "{what}");
        assert_eq!(
            header(&r, "referrer-policy"),
            Some("strict-origin-when-cross-origin"),
            "{what}"
        );
        assert_eq!(
            header(&r, "strict-transport-security"),
            Some("max-age=31536000; includeSubDomains"),
            "{what}"
        );
    }
}

#[test]
fn the_browser_app_gets_preflights_and_cors_headers_on_every_answer() {
    let gw = start_platform();
    let c = client();
    let preflight = |origin: &str, method: &str, headers: &str| {
        c.request(reqwest::Method::OPTIONS, gw.url("/api/v1/orders"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", method)
            .header("Access-Control-Request-Headers", headers)
            .send()
            .unwrap()
    };
    // Answered at the gateway, before authentication (a preflight carries no token).
    let r = preflight(
        APP_ORIGIN,
        "POST",
        "authorization,content-type,x-correlation-id",
    );
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP_ORIGIN));
    assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
    assert_eq!(header(&r, "access-control-max-age"), Some("600"));
    let methods = header(&r, "access-control-allow-methods")
        .unwrap()
        .to_ascii_uppercase();
    assert!(methods.contains("POST"), "{methods}");
    let allowed = header(&r, "access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    for h in ["authorization", "content-type", "x-correlation-id"] {
        assert!(allowed.contains(h), "{h} not in {allowed}");
    }
    assert_eq!(
        preflight("https://evil.example", "POST", "authorization").status(),
        403
    );
    assert_eq!(preflight(APP_ORIGIN, "POST", "x-not-allowed").status(), 403);

    // The app's actual requests, answered or refused, are readable by it.
    let alice = token("alice", &["customer"]);
    for (what, req, status) in [
        ("200", bearer(c.get(gw.url("/api/v1/orders")), &alice), 200),
        ("401", c.get(gw.url("/api/v1/orders")), 401),
        (
            "403",
            bearer(c.get(gw.url("/api/v1/payments")), &alice),
            403,
        ),
    ] {
        let r = req.header("Origin", APP_ORIGIN).send().unwrap();
        assert_eq!(r.status(), status, "{what}");
        assert_eq!(
            header(&r, "access-control-allow-origin"),
            Some(APP_ORIGIN),
            "{what}"
        );
        assert_eq!(
            header(&r, "access-control-allow-credentials"),
            Some("true"),
            "{what}"
        );
        let exposed = header(&r, "access-control-expose-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(exposed.contains("x-correlation-id"), "{what}: {exposed}");
    }
    // Another origin gets no CORS grant.
    let r = bearer(c.get(gw.url("/api/v1/orders")), &alice)
        .header("Origin", "https://evil.example")
        .send()
        .unwrap();
    assert!(header(&r, "access-control-allow-origin").is_none());
}

#[test]
fn products_are_cached_for_30_seconds_per_caller() {
    let gw = start_platform();
    let c = client();
    let alice = token("alice", &["customer"]);
    let get = |t: &str, path: &str| {
        let r = bearer(c.get(gw.url(path)), t).send().unwrap();
        assert_eq!(r.status(), 200);
        let cache = header(&r, "x-cache").unwrap_or("none").to_string();
        (cache, r.text().unwrap())
    };
    let (first, body) = get(&alice, "/api/v1/products/sku-1");
    assert_eq!(first, "MISS");
    let (second, cached) = get(&alice, "/api/v1/products/sku-1");
    assert_eq!(second, "HIT");
    assert_eq!(cached, body, "the stored answer");
    // Another user has entries of their own (the echo shows who asked).
    let (other, other_body) = get(&token("bob", &["customer"]), "/api/v1/products/sku-1");
    assert_eq!(
        other, "MISS",
        "per_consumer: bob does not get alice's entry"
    );
    assert!(other_body.contains("\"x-user-id\":\"bob\""), "{other_body}");
    // The freshness is the route's 30 s: the entry's age is below it and counted up.
    let r = bearer(c.get(gw.url("/api/v1/products/sku-1")), &alice)
        .send()
        .unwrap();
    assert_eq!(header(&r, "x-cache"), Some("HIT"));
    let age: u64 = header(&r, "age").map_or(0, |a| a.parse().unwrap());
    assert!(age < 30, "Age {age}");
    // Writes are never cached; other routes have no cache.
    let r = bearer(c.post(gw.url("/api/v1/products")), &alice)
        .json(&json!({"sku": "sku-2"}))
        .send()
        .unwrap();
    assert_eq!(header(&r, "x-cache"), Some("BYPASS"));
    let r = bearer(c.get(gw.url("/api/v1/orders")), &alice)
        .send()
        .unwrap();
    assert!(
        header(&r, "x-cache").is_none(),
        "orders is not a caching route"
    );
    let m = gw.metrics();
    assert!(
        metric(&m, "tollgate_cache_requests_total", &[("result", "hit")]).unwrap_or(0.0) >= 2.0,
        "{m}"
    );
}

#[test]
fn orders_requests_are_validated_against_the_orders_openapi_file() {
    let gw = start_platform();
    let c = client();
    let alice = token("alice", &["customer"]);
    // A JSON string is no order document, whatever the schema's fields are.
    let (status, _, body) = send(
        bearer(c.post(gw.url("/api/v1/orders")), &alice)
            .header("Content-Type", "application/json")
            .body("\"not an order\""),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["reason"], "request_invalid", "{body}");
    assert!(
        body.get("field").is_some() && body.get("rule").is_some(),
        "{body}"
    );
    // A valid read goes through.
    let (status, _, body) = send(bearer(c.get(gw.url("/api/v1/orders")), &alice));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn health_shows_every_service_and_metrics_count_the_requests() {
    let gw = start_platform();
    let c = client();
    let h = gw.health();
    assert_eq!(h["status"], "ok", "{h}");
    for (group, _, prefix, _) in SERVICES {
        let g = &h["upstreams"][group];
        assert_eq!(g["status"], "up", "{group}: {h}");
        assert_eq!(g["health_checked"], true, "{group}: {h}");
        assert_eq!(g["targets"][0]["healthy"], true, "{group}: {h}");
        // One request per route, for the metrics below.
        let _ = bearer(c.get(gw.url(prefix)), &token("alice", &["payments"]))
            .send()
            .unwrap();
    }
    let _ = c.get(gw.url("/api/v1/orders")).send().unwrap(); // 401
    let m = wait_for(Duration::from_secs(10), || {
        let m = gw.metrics();
        metric(&m, "tollgate_requests_total", &[("route", "notifications")]).map(|_| m)
    })
    .expect("tollgate_requests_total for the last route");
    for (route, _, _, _) in SERVICES {
        let n = metric(
            &m,
            "tollgate_requests_total",
            &[("route", route), ("method", "GET"), ("status", "200")],
        );
        assert!(n.unwrap_or(0.0) >= 1.0, "{route}: {m}");
    }
    assert!(
        metric(
            &m,
            "tollgate_requests_total",
            &[("route", "orders"), ("status", "401")]
        )
        .is_some(),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "tollgate_upstream_target_healthy",
            &[("upstream", "payments")]
        ) == Some(1.0),
        "{m}"
    );
}

#[test]
fn the_routing_table_and_the_openapi_document_describe_the_platform() {
    let gw = start_platform();
    let c = client();
    let routes = c.get(gw.admin_url("/routes")).send().unwrap();
    assert_eq!(routes.status(), 200);
    let routes = routes.text().unwrap();
    for name in [
        "auth",
        "users",
        "orders",
        "products",
        "payments",
        "notifications",
    ] {
        assert!(
            routes.contains(&format!("\"{name}\"")),
            "{name} in {routes}"
        );
    }
    for prefix in ["/api/v1/auth", "/api/v1/orders", "/api/v1/payments"] {
        assert!(routes.contains(prefix), "{prefix} in {routes}");
    }
    let doc: Value = c
        .get(gw.admin_url("/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.1"),
        "{doc}"
    );
    assert_eq!(doc["info"]["title"], "Platform API");
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    for (_, _, prefix, _) in SERVICES {
        assert!(
            paths.iter().any(|p| p.starts_with(prefix)),
            "no path under {prefix} in {paths:?}"
        );
    }
    assert!(
        paths.iter().any(|p| p.starts_with("/api/v1/auth/")),
        "the public auth paths: {paths:?}"
    );
    assert!(
        !paths.iter().any(|p| p.starts_with("/orders")),
        "services' own paths are published under the public prefix only: {paths:?}"
    );
}
