//! Transforms visible at the upstream and at the client: header edits, regex path rewrite,
//! default security headers, JSON field renames (and untouched streaming otherwise).
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::common::*;

fn gateway(backend: &Backend) -> Gateway {
    Gateway::start(&format!(
        r#"
[upstreams.app]
targets = [{{ address = "{}" }}]

[[routes]]
name = "edit"
path_prefix = "/edit"
upstream = "app"
[routes.request_headers]
set = {{ "x-env" = "prod" }}
append = {{ "x-tag" = "edge" }}
remove = ["x-debug"]
rename = {{ "x-old" = "x-new" }}
[routes.response_headers]
set = {{ "cache-control" = "no-store" }}
remove = ["x-backend"]
rename = {{ "x-internal" = "x-public" }}

[[routes]]
name = "users"
path_prefix = "/users"
upstream = "app"
rewrite_regex = {{ pattern = '^/users/(?P<id>\d+)/profile$', replace = "/v2/accounts/${{id}}" }}
security_headers = false

[[routes]]
name = "bridge"
path_prefix = "/bridge"
upstream = "app"
json_rename_request = {{ "user_name" = "userName" }}
json_rename_response = {{ "backend" = "served_by" }}
"#,
        backend.addr
    ))
}

#[test]
fn header_edits_reach_upstream_and_client() {
    let backend = Backend::start("app", |r| {
        common::backend::echo_reply("app", r).header("x-internal", "42")
    });
    let gw = gateway(&backend);
    let resp = client()
        .get(gw.url("/edit/x"))
        .header("x-env", "dev")
        .header("x-tag", "client")
        .header("x-debug", "1")
        .header("x-old", "v")
        .send()
        .unwrap();
    let seen = backend.last_request();
    assert_eq!(seen.header("x-env"), Some("prod"));
    assert_eq!(seen.header("x-tag"), Some("client, edge"));
    assert_eq!(seen.header("x-debug"), None);
    assert_eq!(seen.header("x-old"), None);
    assert_eq!(seen.header("x-new"), Some("v"));
    let h = resp.headers();
    assert_eq!(h["cache-control"], "no-store");
    assert!(h.get("x-backend").is_none());
    assert!(h.get("x-internal").is_none());
    assert_eq!(h["x-public"], "42");
    // Security headers are on by default.
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert!(h.contains_key("referrer-policy"));
}

#[test]
fn regex_rewrite_and_security_headers_off() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend);
    let resp = client()
        .get(gw.url("/users/42/profile?full=1"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("x-frame-options").is_none(),
        "turned off for this route"
    );
    assert_eq!(backend.last_request().path, "/v2/accounts/42?full=1");
    // No match: the path passes unchanged.
    client().get(gw.url("/users/me")).send().unwrap();
    assert_eq!(backend.last_request().path, "/users/me");
}

#[test]
fn json_field_renames_bridge_versions() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend);
    let resp = client()
        .post(gw.url("/bridge/x"))
        .header("content-type", "application/json")
        .body(r#"{"user_name":"ada","id":7}"#)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = backend.last_request();
    let sent: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(sent, serde_json::json!({"userName": "ada", "id": 7}));
    let got: serde_json::Value = resp.json().unwrap();
    assert_eq!(got["served_by"], "app");
    assert!(got.get("backend").is_none());

    // Not JSON: streams through untouched, byte for byte.
    let blob = vec![b'z'; 300_000];
    let resp = client()
        .post(gw.url("/bridge/blob"))
        .header("content-type", "application/octet-stream")
        .body(blob.clone())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(backend.last_request().body, blob);
}
