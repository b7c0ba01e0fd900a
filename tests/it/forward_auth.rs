//! Forward auth and OAuth 2.0 token introspection against real auth servers written here:
//! admit, deny and login redirects; identity headers from the answer (client-sent copies
//! stripped) feeding roles and rate limits; the decision cache (one subrequest for 100
//! concurrent requests, negative entries, expiry at the token's `exp`, purges); the service
//! down with fail closed and fail open; introspection of inactive, wrong-audience and expired
//! tokens.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The auth service: `Bearer NAME` for alice, bob and slow; no credentials: a login
/// redirect; anything else: 401 with a body the client must not see.
fn auth_server() -> Backend {
    Backend::start("auth", |r| {
        let user = |id: &str, roles: &str| {
            Reply::status(200)
                .header("x-user-id", id)
                .header("x-user-roles", roles)
                .header("x-user-email", &format!("{id}@example.test"))
                .header("x-internal", "not for the upstream")
        };
        match r.header("authorization") {
            Some("Bearer alice") => user("alice", "admin, reader"),
            Some("Bearer bob") => user("bob", "reader"),
            Some("Bearer slow") => user("slow", "reader").delay(Duration::from_millis(400)),
            Some("Bearer nocache") => user("nc", "reader").header("cache-control", "no-store"),
            None => Reply::status(302)
                .header("location", "https://login.example.test/?rd=back")
                .body("internal login page"),
            Some(_) => Reply::status(401)
                .header("www-authenticate", "Bearer realm=\"users\"")
                .body("secret internals of the auth service"),
        }
    })
}

/// The authorization server's introspection endpoint (client `gateway`, secret `s3cret`).
fn idp(soon: u64) -> Backend {
    Backend::start("idp", move |r| {
        let basic = format!(
            "Basic {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "gateway:s3cret")
        );
        if r.header("authorization") != Some(basic.as_str()) || r.method != "POST" {
            return Reply::status(401);
        }
        let form: std::collections::HashMap<String, String> =
            form_urlencoded::parse(&r.body).into_owned().collect();
        let hour = now() + 3600;
        let doc = match form.get("token").map(String::as_str) {
            Some("good") => serde_json::json!({
                "active": true, "sub": "carol", "scope": "read write", "aud": ["api", "other"],
                "iss": "https://idp.test", "exp": hour
            }),
            Some("soon") => serde_json::json!({
                "active": true, "sub": "dave", "scope": "read", "aud": "api",
                "iss": "https://idp.test", "exp": soon
            }),
            Some("wrongaud") => serde_json::json!({
                "active": true, "sub": "erin", "aud": "other", "iss": "https://idp.test", "exp": hour
            }),
            Some("expired") => serde_json::json!({
                "active": true, "sub": "frank", "aud": "api", "iss": "https://idp.test",
                "exp": now() - 10
            }),
            _ => serde_json::json!({ "active": false }),
        };
        Reply::status(200)
            .header("content-type", "application/json")
            .body(doc.to_string())
    })
}

struct Setup {
    gw: Gateway,
    auth: Backend,
    idp: Backend,
    app: Backend,
}

fn setup(soon: u64) -> Setup {
    let auth = auth_server();
    let idp = idp(soon);
    let app = Backend::echo("app");
    let body = format!(
        r#"
[upstreams.app]
targets = [{{ address = "{app}" }}]
[upstreams.auth]
targets = [{{ address = "{auth}" }}]
[upstreams.idp]
targets = [{{ address = "{idp}" }}]
[upstreams.down]
targets = [{{ address = "127.0.0.1:1" }}]
connect_timeout = "200ms"

[auth.forward.users]
upstream = "auth"
path = "/verify"
identity_headers = ["x-user-email"]
subject_header = "x-user-id"
roles_header = "x-user-roles"
decision_per_path = false
[auth.forward.users.cache]
ttl = "60s"
negative_ttl = "60s"

[auth.forward.uncached]
upstream = "auth"
path = "/verify?fresh=1"
subject_header = "x-user-id"

[auth.forward.closed]
upstream = "down"
timeout = "500ms"

[auth.forward.open]
upstream = "down"
timeout = "500ms"
on_error = "allow"

[auth.introspection.idp]
upstream = "idp"
path = "/oauth2/introspect"
client_id = "gateway"
client_secret_file = "{{dir}}/idp.secret"
audience = "api"
issuer = "https://idp.test"
claims = {{ "sub" = "x-user-id", "scope" = "x-scope" }}
[auth.introspection.idp.cache]
ttl = "60s"

[[routes]]
name = "fa"
path_prefix = "/fa"
upstream = "app"
auth = ["forward:users"]

[[routes]]
name = "fa-admin"
path_prefix = "/admin"
upstream = "app"
auth = ["forward:users"]
roles = ["admin"]

[[routes]]
name = "fa-limited"
path_prefix = "/limited"
upstream = "app"
auth = ["forward:users"]
rate_limits = [{{ limit = 1, window = "60s", key = "consumer" }}]

[[routes]]
name = "uncached"
path_prefix = "/uncached"
upstream = "app"
auth = ["forward:uncached"]

[[routes]]
name = "closed"
path_prefix = "/closed"
upstream = "app"
auth = ["forward:closed"]

[[routes]]
name = "open"
path_prefix = "/open"
upstream = "app"
auth = ["forward:open"]

[[routes]]
name = "intro"
path_prefix = "/intro"
upstream = "app"
auth = ["introspection:idp"]

[[routes]]
name = "public"
path_prefix = "/public"
upstream = "app"
"#,
        app = app.addr,
        auth = auth.addr,
        idp = idp.addr,
    );
    let gw = Gateway::start_written(&format!("{PREAMBLE}\n{body}"), |dir, text| {
        std::fs::write(dir.join("idp.secret"), "s3cret\n")?;
        let path = dir.join("tollgate.toml");
        std::fs::write(&path, text).map(|_| path)
    })
    .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    Setup { gw, auth, idp, app }
}

fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> reqwest::blocking::Response {
    let c = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut req = c.get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().unwrap()
}

fn decisions(gw: &Gateway, provider: &str, result: &str) -> f64 {
    metric(
        &gw.metrics(),
        "tollgate_auth_decisions_total",
        &[("provider", provider), ("result", result)],
    )
    .unwrap_or(0.0)
}

#[test]
fn forward_auth_admits_denies_and_redirects() {
    let s = setup(now() + 3600);
    let resp = get(
        &s.gw,
        "/fa/x?q=1",
        &[
            ("authorization", "Bearer alice"),
            ("x-user-id", "mallory"),
            ("x-user-email", "mallory@evil.test"),
            ("x-request-id", "fa-trace-0123456789abcdef"),
        ],
    );
    assert_eq!(resp.status(), 200);
    let seen = s.app.last_request();
    assert_eq!(seen.header("x-user-id"), Some("alice"));
    assert_eq!(seen.header("x-user-roles"), Some("admin, reader"));
    assert_eq!(seen.header("x-user-email"), Some("alice@example.test"));
    assert_eq!(seen.header("x-internal"), None, "only listed headers pass");
    // What the auth service was asked.
    let check = s.auth.last_request();
    assert_eq!(check.method, "GET");
    assert_eq!(check.path, "/verify");
    assert_eq!(check.header("authorization"), Some("Bearer alice"));
    assert_eq!(check.header("x-forwarded-method"), Some("GET"));
    assert_eq!(check.header("x-forwarded-uri"), Some("/fa/x?q=1"));
    assert_eq!(check.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        check.header("x-request-id"),
        Some("fa-trace-0123456789abcdef")
    );
    assert_eq!(
        check.header("x-user-id"),
        None,
        "client identity headers are not copied"
    );

    // A refusal: the service's status and challenge, not its body.
    let resp = get(&s.gw, "/fa/x", &[("authorization", "Bearer nobody")]);
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer realm=\"users\"");
    let body = resp.text().unwrap();
    assert!(!body.contains("secret internals"), "{body}");
    assert!(body.contains("\"error\":\"unauthorized\""), "{body}");
    // No credentials: the login redirect.
    let resp = get(&s.gw, "/fa/x", &[]);
    assert_eq!(resp.status(), 302);
    assert_eq!(
        resp.headers()["location"],
        "https://login.example.test/?rd=back"
    );
    assert!(!resp.text().unwrap().contains("internal login page"));
    assert_eq!(s.app.hits(), 1, "refused requests never reach the upstream");

    // Identity headers sent by a client are stripped on routes without auth too.
    get(
        &s.gw,
        "/public/x",
        &[("x-user-id", "mallory"), ("x-user-email", "m@evil.test")],
    );
    let seen = s.app.last_request();
    assert_eq!(seen.header("x-user-id"), None);
    assert_eq!(seen.header("x-user-email"), None);
}

#[test]
fn roles_and_rate_limits_key_on_the_forwarded_subject() {
    let s = setup(now() + 3600);
    assert_eq!(
        get(&s.gw, "/admin/x", &[("authorization", "Bearer alice")]).status(),
        200
    );
    let resp = get(&s.gw, "/admin/x", &[("authorization", "Bearer bob")]);
    assert_eq!(resp.status(), 403);
    assert!(resp.text().unwrap().contains("missing_role"));
    assert_eq!(
        get(&s.gw, "/limited/x", &[("authorization", "Bearer alice")]).status(),
        200
    );
    assert_eq!(
        get(&s.gw, "/limited/x", &[("authorization", "Bearer alice")]).status(),
        429
    );
    assert_eq!(
        get(&s.gw, "/limited/x", &[("authorization", "Bearer bob")]).status(),
        200
    );
}

#[test]
fn one_subrequest_for_100_concurrent_requests_with_one_token() {
    let s = setup(now() + 3600);
    let gw = &s.gw;
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..100)
            .map(|_| {
                scope.spawn(|| {
                    get(gw, "/fa/x", &[("authorization", "Bearer slow")])
                        .status()
                        .as_u16()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(s.auth.hits(), 1, "one subrequest for one token");
    assert_eq!(decisions(gw, "users", "miss"), 1.0);
    assert_eq!(
        decisions(gw, "users", "hit") + decisions(gw, "users", "coalesced"),
        99.0
    );
    assert!(
        decisions(gw, "users", "coalesced") >= 1.0,
        "{}",
        gw.metrics()
    );
    // A route without a cache asks for every request.
    for _ in 0..3 {
        assert_eq!(
            get(gw, "/uncached/x", &[("authorization", "Bearer bob")]).status(),
            200
        );
    }
    assert_eq!(s.auth.hits(), 4);
    // An answer that says no-store is not kept.
    for _ in 0..2 {
        assert_eq!(
            get(gw, "/fa/x", &[("authorization", "Bearer nocache")]).status(),
            200
        );
    }
    assert_eq!(s.auth.hits(), 6);
}

#[test]
fn refusals_are_cached_and_purges_drop_decisions() {
    let s = setup(now() + 3600);
    for _ in 0..3 {
        assert_eq!(
            get(&s.gw, "/fa/x", &[("authorization", "Bearer nobody")]).status(),
            401
        );
    }
    assert_eq!(s.auth.hits(), 1, "a refusal is cached for negative_ttl");
    assert_eq!(
        get(&s.gw, "/fa/x", &[("authorization", "Bearer alice")]).status(),
        200
    );
    assert_eq!(
        get(&s.gw, "/fa/y", &[("authorization", "Bearer alice")]).status(),
        200
    );
    assert_eq!(
        s.auth.hits(),
        2,
        "decision_per_path = false: one decision for both paths"
    );
    // Purge alice: her next request asks again; bob's cached refusal... bob was never asked.
    let c = client();
    let purge = |q: &str| {
        let r = c
            .post(s.gw.admin_url(&format!("/auth/purge?{q}")))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let (code, body) = purge("provider=users&subject=alice");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        get(&s.gw, "/fa/x", &[("authorization", "Bearer alice")]).status(),
        200
    );
    assert_eq!(s.auth.hits(), 3);
    assert_eq!(
        get(&s.gw, "/fa/x", &[("authorization", "Bearer alice")]).status(),
        200
    );
    assert_eq!(s.auth.hits(), 3, "cached again");
    // Purge everything: the cached refusal goes too.
    assert_eq!(purge("provider=users").0, 200);
    assert_eq!(
        get(&s.gw, "/fa/x", &[("authorization", "Bearer nobody")]).status(),
        401
    );
    assert_eq!(s.auth.hits(), 4);
    assert_eq!(purge("provider=nope").0, 404);
    assert_eq!(purge("bogus=1").0, 400);
}

#[test]
fn auth_service_down_fails_closed_or_open_as_configured() {
    let s = setup(now() + 3600);
    let resp = get(&s.gw, "/closed/x", &[("authorization", "Bearer alice")]);
    assert_eq!(resp.status(), 503);
    assert!(resp.text().unwrap().contains("auth_unavailable"));
    assert_eq!(s.app.hits(), 0);
    let resp = get(&s.gw, "/open/x", &[("authorization", "Bearer alice")]);
    assert_eq!(resp.status(), 200);
    assert_eq!(s.app.last_request().header("x-user-id"), None);
    assert!(decisions(&s.gw, "closed", "error") >= 1.0);
}

#[test]
fn introspection_checks_active_audience_issuer_and_expiry() {
    let s = setup(now() + 3600);
    assert_eq!(
        get(&s.gw, "/intro/x", &[("authorization", "Bearer good")]).status(),
        200
    );
    let seen = s.app.last_request();
    assert_eq!(seen.header("x-user-id"), Some("carol"));
    assert_eq!(seen.header("x-scope"), Some("read write"));
    let asked = s.idp.last_request();
    assert_eq!(asked.method, "POST");
    assert_eq!(asked.path, "/oauth2/introspect");
    assert_eq!(
        asked.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert!(String::from_utf8_lossy(&asked.body).contains("token=good"));
    for (token, reason) in [
        ("inactive", "inactive_token"),
        ("wrongaud", "wrong_audience"),
        ("expired", "token_expired"),
    ] {
        let resp = get(
            &s.gw,
            "/intro/x",
            &[("authorization", &format!("Bearer {token}"))],
        );
        assert_eq!(resp.status(), 401, "{token}");
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
        assert!(resp.text().unwrap().contains(reason), "{token}");
    }
    // No token: refused without asking.
    let before = s.idp.hits();
    assert_eq!(get(&s.gw, "/intro/x", &[]).status(), 401);
    assert_eq!(s.idp.hits(), before);
}

#[test]
fn a_cached_decision_ends_at_the_token_exp() {
    let exp = now() + 2;
    let s = setup(exp);
    let bearer = [("authorization", "Bearer soon")];
    assert_eq!(get(&s.gw, "/intro/x", &bearer).status(), 200);
    assert_eq!(get(&s.gw, "/intro/x", &bearer).status(), 200);
    assert_eq!(s.idp.hits(), 1, "cached while the token lives");
    // Once exp has passed the decision is gone, though the cache ttl is 60 s.
    wait_for(Duration::from_secs(10), || (now() > exp).then_some(())).unwrap();
    let resp = get(&s.gw, "/intro/x", &bearer);
    assert_eq!(resp.status(), 401);
    assert!(resp.text().unwrap().contains("token_expired"));
    assert_eq!(s.idp.hits(), 2);
}

#[test]
fn forward_auth_config_mistakes() {
    let (code, out) = check_config(
        r#"
[[listeners]]
address = "127.0.0.1:0"
[auth.forward.users]
upstream = "nowhere"
path = "verify"
method = "get"
[auth.introspection.idp]
upstream = "nowhere"
path = "/i"
client_id = "gw"
[[routes]]
name = "r"
path = "/"
auth = ["forward:user"]
[routes.respond]
body = "x"
"#,
    );
    assert_ne!(code, 0, "{out}");
    for expected in [
        "auth.forward.users.upstream: upstream \"nowhere\" is not defined",
        "auth.forward.users.path: \"verify\" is not a path",
        "auth.forward.users.method: invalid method \"get\"",
        "auth.introspection.idp.client_secret_env: set exactly one of client_secret_env and client_secret_file",
        "routes[0].auth[0]: forward-auth service \"user\" is not defined",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}

#[test]
fn explain_describes_forward_auth_without_asking_the_service() {
    let s = setup(now() + 3600);
    let out = std::process::Command::new(tollgate_bin())
        .args(["explain", "--json", "-c"])
        .arg(&s.gw.config_path)
        .args([
            "GET",
            "http://app.test/admin/x",
            "-H",
            "Authorization: Bearer alice",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let auth = e["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["step"] == "auth")
        .unwrap();
    assert_eq!(auth["result"], "described");
    assert!(
        auth["detail"]
            .as_str()
            .unwrap()
            .starts_with("accepts forward:users; needs a role of admin"),
        "{auth}"
    );
    assert_eq!(s.auth.hits(), 0, "explain works without any network");
}

/// Regression: an introspection `client_secret_file` rewritten behind the same path was not
/// read by a reload: the service (and its decision cache) built from the old secret was
/// kept. Now the reload builds it anew: a wrong secret is what the IdP sees at once, and
/// the right one works again after the next reload.
#[test]
fn a_rotated_client_secret_file_was_kept_after_reload() {
    let s = setup(now() + 3600);
    let intro = || get(&s.gw, "/intro/x", &[("authorization", "Bearer good")]).status();
    assert_eq!(intro(), 200);
    let secret = s.gw.dir.path().join("idp.secret");
    std::fs::write(&secret, "not-the-secret\n").unwrap();
    assert_eq!(s.gw.reload().0, 200);
    let asked = s.idp.hits();
    assert_ne!(intro(), 200, "the IdP refuses the new (wrong) secret");
    assert!(
        s.idp.hits() > asked,
        "the decision was not served from the old cache"
    );
    std::fs::write(&secret, "s3cret\n").unwrap();
    assert_eq!(s.gw.reload().0, 200);
    assert_eq!(intro(), 200);
}
