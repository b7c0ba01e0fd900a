//! Aggregation routes: three parts merged under their names; a failing or slow part becomes
//! `null` with its error listed, within the part timeout; identity and request id reach every
//! part.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::time::{Duration, Instant};

fn json_backend(name: &str) -> Backend {
    let n = name.to_string();
    Backend::start(name, move |r| {
        Reply::status(200)
            .header("content-type", "application/json")
            .body(serde_json::json!({ "from": n, "path": r.path }).to_string())
    })
}

fn config(profile: &Backend, orders: &Backend, recs: &Backend) -> String {
    format!(
        r#"
[consumers.app]
keys = ["app-key-0123456789abcdef"]
roles = ["user"]

[upstreams.profile]
targets = [{{ address = "{}" }}]
[upstreams.orders]
targets = [{{ address = "{}" }}]
[upstreams.recs]
targets = [{{ address = "{}" }}]

[[routes]]
name = "dashboard"
path_prefix = "/dashboard"
auth = ["api_key"]
[routes.aggregate]
capture = '^/dashboard/(?P<user>[^/]+)$'
[[routes.aggregate.parts]]
name = "profile"
upstream = "profile"
path = "/users/${{user}}"
[[routes.aggregate.parts]]
name = "orders"
upstream = "orders"
path = "/orders?user=$1"
[[routes.aggregate.parts]]
name = "recommendations"
upstream = "recs"
path = "/recs/${{user}}"
timeout = "300ms"
"#,
        profile.addr, orders.addr, recs.addr
    )
}

fn get(gw: &Gateway, path: &str) -> (u16, serde_json::Value, Duration) {
    let started = Instant::now();
    let r = client()
        .get(gw.url(path))
        .header("x-api-key", "app-key-0123456789abcdef")
        .header("x-request-id", "agg-req-1")
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap(), started.elapsed())
}

#[test]
fn three_parts_merge_and_carry_identity() {
    let (p, o, r) = (
        json_backend("profile"),
        json_backend("orders"),
        json_backend("recs"),
    );
    let gw = Gateway::start(&config(&p, &o, &r));
    let (status, body, _) = get(&gw, "/dashboard/ada");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["profile"],
        serde_json::json!({"from": "profile", "path": "/users/ada"})
    );
    assert_eq!(body["orders"]["path"], "/orders?user=ada");
    assert_eq!(body["recommendations"]["from"], "recs");
    assert_eq!(body["errors"], serde_json::json!([]));
    for b in [&p, &o, &r] {
        let seen = b.last_request();
        assert_eq!(seen.header("x-request-id"), Some("agg-req-1"));
        assert_eq!(seen.header("x-consumer"), Some("app"));
        assert_eq!(seen.header("x-user-roles"), Some("user"));
        assert!(
            seen.header("x-api-key").is_none(),
            "credentials are not forwarded to parts"
        );
    }
}

#[test]
fn failed_and_slow_parts_become_null_with_errors() {
    let p = json_backend("profile");
    let o = Backend::start("orders", |_| Reply::status(500).body("boom"));
    let r = Backend::start("recs", |_| {
        Reply::status(200)
            .header("content-type", "application/json")
            .body("{}")
            .delay(Duration::from_secs(3))
    });
    let gw = Gateway::start(&config(&p, &o, &r));
    let (status, body, took) = get(&gw, "/dashboard/ada");
    assert_eq!(status, 200);
    assert_eq!(body["profile"]["from"], "profile");
    assert!(body["orders"].is_null());
    assert!(body["recommendations"].is_null());
    let errors = body["errors"].as_array().unwrap();
    let error_of = |part: &str| {
        errors
            .iter()
            .find(|e| e["part"] == part)
            .map(|e| e["error"].as_str().unwrap().to_string())
    };
    assert_eq!(error_of("orders").as_deref(), Some("upstream answered 500"));
    assert!(error_of("recommendations").unwrap().contains("timed out"));
    assert!(
        took < Duration::from_secs(2),
        "the slow part is cut at its 300ms timeout, took {took:?}"
    );
}

#[test]
fn all_parts_failing_is_502_and_auth_still_applies() {
    let gw = Gateway::start(&format!(
        r#"
[consumers.app]
keys = ["app-key-0123456789abcdef"]
[upstreams.dead]
targets = [{{ address = "127.0.0.1:{}" }}]
[[routes]]
name = "dashboard"
path_prefix = "/dashboard"
auth = ["api_key"]
[routes.aggregate]
parts = [{{ name = "a", upstream = "dead", path = "/a" }}]
"#,
        free_port()
    ));
    let (status, body, _) = get(&gw, "/dashboard/x");
    assert_eq!(status, 502);
    assert!(body["a"].is_null());
    assert_eq!(
        client()
            .get(gw.url("/dashboard/x"))
            .send()
            .unwrap()
            .status(),
        401
    );
}
