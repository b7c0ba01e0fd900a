//! What the upstream gets of the credentials a route verified (`credentials`): forwarded by
//! default (Kong's and Traefik's behaviour), stripped with `credentials = "strip"` (Envoy
//! `jwt_authn`'s), the identity headers set either way.
#![allow(clippy::unwrap_used)]

use crate::common::*;

const SECRET: &str = "credentials-test-secret-0123456789ab";
const KEY: &str = "machine-key-0123456789abcdef";

fn token(sub: &str) -> String {
    hs256_token(SECRET.as_bytes(), serde_json::json!({ "sub": sub }))
}

/// Routes `/forward` (the default) and `/strip` (`credentials = "strip"`), both taking a
/// JWT or an API key.
fn gateway(backend: &Backend) -> Gateway {
    let body = format!(
        r#"
[auth.jwt.main]
algorithms = ["HS256"]
secret_file = "{{dir}}/jwt.secret"

[consumers.machine]
keys = ["{KEY}"]

[upstreams.app]
targets = [{{ address = "{}" }}]

[[routes]]
name = "forward"
path_prefix = "/forward"
upstream = "app"
auth = ["jwt:main", "api_key"]

[[routes]]
name = "strip"
path_prefix = "/strip"
upstream = "app"
auth = ["jwt:main", "api_key"]
credentials = "strip"
"#,
        backend.addr
    );
    Gateway::start_written(&format!("{PREAMBLE}\n{body}"), |dir, text| {
        std::fs::write(dir.join("jwt.secret"), SECRET)?;
        let path = dir.join("tollgate.toml");
        std::fs::write(&path, text).map(|_| path)
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn verified_credentials_are_forwarded_by_default() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend);
    let t = token("user-1");
    let resp = client()
        .get(gw.url("/forward/a"))
        .bearer_auth(&t)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = backend.last_request();
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {t}").as_str())
    );
    assert_eq!(got.header("x-user-id"), Some("user-1"));
    let resp = client()
        .get(gw.url("/forward/b"))
        .header("X-API-Key", KEY)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(backend.last_request().header("x-api-key"), Some(KEY));
}

#[test]
fn strip_removes_the_verified_token_and_api_key_from_the_upstream_request() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend);
    let resp = client()
        .get(gw.url("/strip/a"))
        .bearer_auth(token("user-2"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = backend.last_request();
    assert_eq!(got.header("authorization"), None, "{:?}", got.headers);
    assert_eq!(got.header("x-user-id"), Some("user-2"));
    let resp = client()
        .get(gw.url("/strip/b"))
        .header("X-API-Key", KEY)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = backend.last_request();
    assert_eq!(got.header("x-api-key"), None, "{:?}", got.headers);
    assert_eq!(
        got.header("x-consumer"),
        Some("machine"),
        "{:?}",
        got.headers
    );
    // Refused credentials never reach an upstream at all.
    let before = backend.hits();
    let resp = client()
        .get(gw.url("/strip/c"))
        .bearer_auth("not.a.token")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(backend.hits(), before);
}

#[test]
fn strip_on_a_route_without_auth_fails_the_config_check() {
    let (code, out) = check_config(&format!(
        "{PREAMBLE}\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\n\
         respond = {{ status = 200 }}\ncredentials = \"strip\"\n"
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("routes[0].credentials"), "{out}");
}
