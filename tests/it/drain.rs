//! Draining a target at runtime on the admin listener (`POST
//! /upstreams/NAME/targets/ADDR/drain` and `/enable`), like HAProxy's `set server state
//! drain`: no new request in any balancing policy, requests in flight finish, a fast 503 when
//! every target is drained, the state in `/health` and `/metrics`, kept by a reload for the
//! targets that stay, forgotten by a target that leaves its targets file.
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// `[upstreams.app]` over `backends` (with `extra` keys), and a catch-all route to it.
fn config(backends: &[&Backend], extra: &str) -> String {
    let targets: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address = \"{}\" }}", b.addr))
        .collect();
    format!(
        r#"
[upstreams.app]
targets = [{}]
{extra}

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
"#,
        targets.join(", ")
    )
}

/// `POST /upstreams/{upstream}/targets/{target}/{action}`: the status and the JSON answer.
fn set_state(gw: &Gateway, upstream: &str, target: &str, action: &str) -> (u16, serde_json::Value) {
    let r = client()
        .post(gw.admin_url(&format!("/upstreams/{upstream}/targets/{target}/{action}")))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    assert_eq!(r.headers()["content-type"], "application/json");
    (status, r.json().unwrap())
}

fn drain(gw: &Gateway, b: &Backend) {
    let target = b.addr.to_string();
    let (status, body) = set_state(gw, "app", &target, "drain");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["upstream"], "app");
    assert_eq!(body["target"], target.as_str());
    assert_eq!(body["state"], "drain");
}

fn enable(gw: &Gateway, b: &Backend) {
    let (status, body) = set_state(gw, "app", &b.addr.to_string(), "enable");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "ready");
}

fn backend_of(r: reqwest::blocking::Response) -> String {
    assert_eq!(r.status(), 200, "proxied request failed");
    r.headers()["x-backend"].to_str().unwrap().to_string()
}

/// The `/health` entry of target `b` in group `app`.
fn target_health(gw: &Gateway, b: &Backend) -> serde_json::Value {
    let h = gw.health();
    h["upstreams"]["app"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["address"] == b.addr.to_string().as_str())
        .unwrap_or_else(|| panic!("{} not in /health: {h}", b.addr))
        .clone()
}

/// Send `n` requests (a header `x-user` varying, for consistent hashing) and return which
/// backend answered each.
fn spread(gw: &Gateway, n: usize) -> Vec<String> {
    let c = client();
    (0..n)
        .map(|i| {
            backend_of(
                c.get(gw.url(&format!("/x/{i}")))
                    .header("x-user", format!("user-{i}"))
                    .send()
                    .unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_drained_target_gets_no_new_requests_while_the_other_serves_them() {
    let (a, b) = (Backend::echo("a"), Backend::echo("b"));
    let gw = Gateway::start(&config(&[&a, &b], ""));
    assert!(
        spread(&gw, 10).contains(&"a".to_string()),
        "a serves before"
    );
    drain(&gw, &a);
    let before = a.hits();
    assert!(spread(&gw, 30).iter().all(|s| s == "b"));
    assert_eq!(a.hits(), before, "nothing sent to the drained target");
    // Draining twice is the same state.
    drain(&gw, &a);
    assert_eq!(a.hits(), before);
}

#[test]
fn every_balancing_policy_skips_a_drained_target() {
    for policy in [
        "policy = \"round_robin\"",
        "policy = \"least_connections\"",
        "policy = \"consistent_hash\"\nhash_on = \"header:X-User\"",
    ] {
        let (a, b, c) = (Backend::echo("a"), Backend::echo("b"), Backend::echo("c"));
        let gw = Gateway::start(&config(&[&a, &b, &c], policy));
        let served = spread(&gw, 60);
        assert!(
            served.contains(&"a".to_string()),
            "{policy}: a serves before"
        );
        drain(&gw, &a);
        let before = a.hits();
        let after = spread(&gw, 60);
        assert_eq!(
            a.hits(),
            before,
            "{policy}: a drained target was sent a request"
        );
        for other in ["b", "c"] {
            assert!(
                after.iter().any(|s| s == other),
                "{policy}: {other} serves: {after:?}"
            );
        }
        if policy.contains("consistent_hash") {
            // Only the drained target's users move.
            for (was, now) in served.iter().zip(&after) {
                if was != "a" {
                    assert_eq!(was, now, "{policy}: a user of a target still in moved");
                }
            }
        }
    }
}

#[test]
fn a_request_in_flight_on_a_target_being_drained_completes() {
    let slow = |name: &'static str| {
        Backend::start(name, move |r| {
            let reply = common::backend::echo_reply(name, r);
            if r.path == "/slow" {
                reply.delay(Duration::from_millis(1500))
            } else {
                reply
            }
        })
    };
    let (a, b) = (slow("a"), slow("b"));
    let gw = Gateway::start(&config(&[&a, &b], ""));
    let url = gw.url("/slow");
    let held = std::thread::spawn(move || backend_of(client().get(&url).send().unwrap()));
    let busy = wait_for(Duration::from_secs(10), || match (a.hits(), b.hits()) {
        (1, 0) => Some(&a),
        (0, 1) => Some(&b),
        _ => None,
    })
    .expect("the slow request reached a backend");
    let (status, body) = set_state(&gw, "app", &busy.addr.to_string(), "drain");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["in_flight"], 1,
        "the slow request is still on it: {body}"
    );
    assert_eq!(
        held.join().unwrap(),
        busy.name(),
        "the request in flight finished with 200"
    );
    let before = busy.hits();
    let other = if busy.name() == "a" { "b" } else { "a" };
    assert!(spread(&gw, 10).iter().all(|s| s == other));
    assert_eq!(busy.hits(), before);
    assert_eq!(target_health(&gw, busy)["in_flight"], 0);
}

#[test]
fn an_enabled_target_takes_requests_again() {
    let (a, b) = (Backend::echo("a"), Backend::echo("b"));
    let gw = Gateway::start(&config(&[&a, &b], ""));
    drain(&gw, &a);
    assert!(spread(&gw, 10).iter().all(|s| s == "b"));
    enable(&gw, &a);
    let served = spread(&gw, 10);
    assert_eq!(served.iter().filter(|s| *s == "a").count(), 5, "{served:?}");
    assert_eq!(target_health(&gw, &a)["admin_state"], "ready");
}

#[test]
fn with_every_target_drained_the_group_answers_a_fast_503() {
    let (a, b) = (Backend::echo("a"), Backend::echo("b"));
    let gw = Gateway::start(&config(&[&a, &b], "connect_timeout = \"5s\""));
    drain(&gw, &a);
    drain(&gw, &b);
    let hits = a.hits() + b.hits();
    let c = client();
    for i in 0..5 {
        let started = Instant::now();
        let r = c
            .get(gw.url("/x"))
            .header("x-request-id", format!("drained-{i}"))
            .send()
            .unwrap();
        let took = started.elapsed();
        assert_eq!(r.status(), 503);
        assert!(took < Duration::from_secs(2), "answered at once: {took:?}");
        assert_eq!(r.headers()["content-type"], "application/json");
        let body: serde_json::Value = r.json().unwrap();
        assert_eq!(body["request_id"], format!("drained-{i}"));
        assert!(
            body["error"].as_str().unwrap().contains("healthy"),
            "the same answer as every target down: {body}"
        );
    }
    assert_eq!(
        a.hits() + b.hits(),
        hits,
        "nothing sent to a drained target"
    );
    let health = c.get(gw.admin_url("/health")).send().unwrap();
    assert_eq!(health.status(), 503, "no group can serve");
    let h: serde_json::Value = health.json().unwrap();
    assert_eq!(h["upstreams"]["app"]["status"], "drained");
    assert_eq!(h["upstreams"]["app"]["healthy_targets"], 2);
    assert_eq!(h["upstreams"]["app"]["drained_targets"], 2);
    enable(&gw, &b);
    assert_eq!(spread(&gw, 3), ["b", "b", "b"]);
}

#[test]
fn health_and_metrics_show_which_targets_are_drained() {
    let (a, b) = (Backend::echo("a"), Backend::echo("b"));
    let gw = Gateway::start(&config(&[&a, &b], ""));
    let gauge = |m: &str, backend: &Backend| {
        metric(
            m,
            "tollgate_upstream_target_drained",
            &[("upstream", "app"), ("target", &backend.addr.to_string())],
        )
    };
    let m = gw.metrics();
    assert_eq!((gauge(&m, &a), gauge(&m, &b)), (Some(0.0), Some(0.0)));
    assert_eq!(target_health(&gw, &a)["admin_state"], "ready");

    drain(&gw, &a);
    let a_health = target_health(&gw, &a);
    assert_eq!(a_health["admin_state"], "drain");
    assert_eq!(a_health["healthy"], true, "drained is not unhealthy");
    assert_eq!(target_health(&gw, &b)["admin_state"], "ready");
    let h = gw.health();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["upstreams"]["app"]["status"], "up");
    assert_eq!(h["upstreams"]["app"]["drained_targets"], 1);
    let m = gw.metrics();
    assert_eq!((gauge(&m, &a), gauge(&m, &b)), (Some(1.0), Some(0.0)));

    enable(&gw, &a);
    assert_eq!(target_health(&gw, &a)["admin_state"], "ready");
    assert_eq!(gauge(&gw.metrics(), &a), Some(0.0));
}

#[test]
fn a_reload_keeps_the_drain_of_targets_that_stay_and_forgets_targets_removed() {
    let (a, b, c) = (Backend::echo("a"), Backend::echo("b"), Backend::echo("c"));
    let gw = Gateway::start(&config(&[&a, &b, &c], ""));
    drain(&gw, &a);
    drain(&gw, &c);
    // The same group (its target states carried whole).
    let (code, body) = gw.reload();
    assert_eq!(code, 200, "{body}");
    assert_eq!(target_health(&gw, &a)["admin_state"], "drain");
    assert!(spread(&gw, 10).iter().all(|s| s == "b"));
    // A new breaker (new target states): the drain is copied; c leaves the group.
    gw.rewrite_config(&config(
        &[&a, &b],
        "[upstreams.app.circuit_breaker]\nconsecutive_failures = 5",
    ));
    let (code, body) = gw.reload();
    assert_eq!(code, 200, "{body}");
    assert_eq!(target_health(&gw, &a)["admin_state"], "drain");
    assert_eq!(target_health(&gw, &b)["admin_state"], "ready");
    assert!(spread(&gw, 10).iter().all(|s| s == "b"));
    assert_eq!(
        metric(
            &gw.metrics(),
            "tollgate_upstream_target_drained",
            &[("target", &a.addr.to_string())]
        ),
        Some(1.0)
    );
    // c comes back: as a new target, ready.
    gw.rewrite_config(&config(&[&a, &b, &c], ""));
    let (code, body) = gw.reload();
    assert_eq!(code, 200, "{body}");
    assert_eq!(target_health(&gw, &c)["admin_state"], "ready");
    assert_eq!(target_health(&gw, &a)["admin_state"], "drain");
    let served = spread(&gw, 10);
    assert!(served.iter().any(|s| s == "c"), "{served:?}");
    assert!(!served.iter().any(|s| s == "a"), "{served:?}");
}

/// Write `backends` to the targets file at `path` (a rename, as config tools do).
fn write_targets(path: &Path, backends: &[&Backend]) {
    let list: Vec<_> = backends
        .iter()
        .map(|b| serde_json::json!({"address": b.addr.to_string()}))
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::Value::Array(list).to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_target_from_a_targets_file_is_drained_while_present_and_forgotten_once_gone() {
    let (a, b) = (Backend::echo("a"), Backend::echo("b"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.json");
    write_targets(&file, &[&a, &b]);
    let gw = Gateway::start(&format!(
        r#"
[upstreams.app]
targets_file = "{}"

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
"#,
        file.display()
    ));
    drain(&gw, &a);
    assert!(spread(&gw, 10).iter().all(|s| s == "b"));
    let targets = |gw: &Gateway| {
        gw.health()["upstreams"]["app"]["targets"]
            .as_array()
            .unwrap()
            .len()
    };
    write_targets(&file, &[&b]);
    wait_for(Duration::from_secs(10), || {
        (targets(&gw) == 1).then_some(())
    })
    .expect("a left the group");
    let (status, _) = set_state(&gw, "app", &a.addr.to_string(), "enable");
    assert_eq!(status, 404, "a target no longer present is unknown");
    write_targets(&file, &[&a, &b]);
    wait_for(Duration::from_secs(10), || {
        (targets(&gw) == 2).then_some(())
    })
    .expect("a came back");
    assert_eq!(target_health(&gw, &a)["admin_state"], "ready");
    assert!(spread(&gw, 10).iter().any(|s| s == "a"));
}

#[test]
fn an_unknown_upstream_or_target_is_a_404() {
    let a = Backend::echo("a");
    let gw = Gateway::start(&config(&[&a], ""));
    let (status, body) = set_state(&gw, "nope", &a.addr.to_string(), "drain");
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("nope"), "{body}");
    assert_eq!(body["upstreams"], serde_json::json!(["app"]));
    for target in ["127.0.0.1:1", "backend.internal:8080"] {
        let (status, body) = set_state(&gw, "app", target, "drain");
        assert_eq!(status, 404, "{target}: {body}");
        assert_eq!(body["targets"], serde_json::json!([a.addr.to_string()]));
    }
    // Nothing was drained on the way.
    assert_eq!(target_health(&gw, &a)["admin_state"], "ready");
}

#[test]
fn drain_and_enable_answer_405_to_other_methods() {
    let a = Backend::echo("a");
    let gw = Gateway::start(&config(&[&a], ""));
    let c = client();
    for action in ["drain", "enable"] {
        let url = gw.admin_url(&format!("/upstreams/app/targets/{}/{action}", a.addr));
        for r in [c.get(&url).send().unwrap(), c.put(&url).send().unwrap()] {
            assert_eq!(r.status(), 405, "{action}");
        }
    }
    assert_eq!(target_health(&gw, &a)["admin_state"], "ready");
    assert_eq!(spread(&gw, 2), ["a", "a"]);
}
