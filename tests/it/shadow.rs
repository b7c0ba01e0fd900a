//! Shadow mode (`shadow = [...]` on a route): each named refusing policy is evaluated and
//! counted (`tollgate_shadow_refusals_total{route,policy,reason}`, `shadow_refusal` in the
//! access log) and never refuses; the same policies without it refuse.
#![allow(clippy::unwrap_used)]

use crate::common::*;

const SECRET: &str = "shadow-test-secret-0123456789abcdef";

fn token(sub: &str, roles: &[&str]) -> String {
    hs256_token(
        SECRET.as_bytes(),
        serde_json::json!({ "sub": sub, "roles": roles }),
    )
}

const ORDERS: &str = r#"
openapi: "3.0.3"
info: { title: orders, version: "1" }
paths:
  /orders/{id}:
    get:
      parameters:
        - { name: id, in: path, required: true, schema: { type: integer } }
      responses: { "200": { description: ok } }
"#;

/// Two routes with the same policies (JWT with a role, 1 request a minute, 127.0.0.1
/// denied, request validation): `/enforced/...` and `/shadow/...`, the second with every
/// policy in shadow mode.
fn gateway(backend: &Backend) -> Gateway {
    let route = |name: &str, shadow: &str| {
        format!(
            r#"
[[routes]]
name = "{name}"
path_prefix = "/{name}"
rewrite_prefix = "/orders"
upstream = "app"
auth = ["jwt:main"]
roles = ["admin"]
ip_deny = ["127.0.0.1/32"]
openapi = "orders.yaml"
validate = "request"
{shadow}
[[routes.rate_limits]]
key = "ip"
limit = 1
window = "1m"
"#
        )
    };
    let body = format!(
        r#"
[auth.jwt.main]
algorithms = ["HS256"]
secret_file = "{{dir}}/jwt.secret"

[upstreams.app]
targets = [{{ address = "{}" }}]
{}
{}
"#,
        backend.addr,
        route("enforced", ""),
        route(
            "shadow",
            r#"shadow = ["auth", "roles", "rate_limits", "ip", "validate"]"#
        ),
    );
    Gateway::start_written(&format!("{PREAMBLE}\n{body}"), |dir, text| {
        std::fs::write(dir.join("jwt.secret"), SECRET)?;
        std::fs::write(dir.join("orders.yaml"), ORDERS)?;
        let path = dir.join("tollgate.toml");
        std::fs::write(&path, text).map(|_| path)
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn shadow_count(gw: &Gateway, policy: &str, reason: &str) -> f64 {
    metric(
        &gw.metrics(),
        "tollgate_shadow_refusals_total",
        &[("route", "shadow"), ("policy", policy), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

#[test]
fn the_same_policies_refuse_without_shadow_mode() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend);
    // The IP rule is the first to refuse.
    let resp = client().get(gw.url("/enforced/1")).send().unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(backend.hits(), 0);
}

#[test]
fn every_policy_in_shadow_mode_is_counted_and_logged_but_never_refuses() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend);
    // No token, a denied IP, a path parameter that is not an integer: all refusals, all
    // shadowed.
    let resp = client().get(gw.url("/shadow/abc")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(backend.last_request().path, "/orders/abc");
    assert!(resp.headers().get("ratelimit-limit").is_none());
    let line = gw.wait_access_log(|l| l["path"] == "/shadow/abc");
    let noted = line["shadow_refusal"].as_str().unwrap();
    for expected in [
        "ip:ip_denied",
        "auth:missing_credentials",
        "validate:request_invalid",
    ] {
        assert!(noted.contains(expected), "{noted}");
    }
    assert_eq!(shadow_count(&gw, "ip", "ip_denied"), 1.0);
    assert_eq!(shadow_count(&gw, "auth", "missing_credentials"), 1.0);
    assert_eq!(shadow_count(&gw, "validate", "request_invalid"), 1.0);

    // A token without the role: the caller is still identified upstream.
    let resp = client()
        .get(gw.url("/shadow/2"))
        .bearer_auth(token("u-9", &["reader"]))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(backend.last_request().header("x-user-id"), Some("u-9"));
    assert_eq!(shadow_count(&gw, "roles", "missing_role"), 1.0);
    // Over the limit (1 a minute; this is the third request): counted, not refused.
    let line = gw.wait_access_log(|l| l["path"] == "/shadow/2");
    assert!(
        line["shadow_refusal"]
            .as_str()
            .unwrap()
            .contains("rate_limits:"),
        "{line}"
    );
    let limited = gw
        .metrics()
        .lines()
        .filter(|l| {
            l.starts_with("tollgate_shadow_refusals_total") && l.contains("policy=\"rate_limits\"")
        })
        .count();
    assert_eq!(limited, 1, "{}", gw.metrics());
    // Refusals in shadow mode are not refusals: the enforced counters did not move.
    assert!(metric(
        &gw.metrics(),
        "tollgate_rate_limited_total",
        &[("route", "shadow")]
    )
    .is_none());
}

#[test]
fn shadow_naming_a_policy_the_route_lacks_fails_the_config_check() {
    let (code, out) = check_config(&format!(
        "{PREAMBLE}\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\n\
         respond = {{ status = 200 }}\nshadow = [\"roles\"]\n"
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("routes[0].shadow[0]"), "{out}");
}

#[test]
fn explain_says_which_policies_in_shadow_mode_would_have_refused() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend);
    let out = std::process::Command::new(tollgate_bin())
        .args(["explain", "-c"])
        .arg(&gw.config_path)
        .args(["GET", "http://localhost/shadow/abc", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("shadow mode: would have refused"),
        "{report:#}"
    );
    for policy in [
        "ip:ip_denied",
        "auth:missing_credentials",
        "validate:request_invalid",
    ] {
        assert!(notes.contains(policy), "{policy}: {report:#}");
    }
    // The enforced twin is refused by its first policy.
    let out = std::process::Command::new(tollgate_bin())
        .args(["explain", "-c"])
        .arg(&gw.config_path)
        .args(["GET", "http://localhost/enforced/1", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"]["status"], 403, "{report:#}");
}
