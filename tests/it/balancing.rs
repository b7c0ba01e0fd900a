//! Load balancing and active health checks through the real gateway: weighted round robin,
//! least connections, consistent hashing, targets leaving and rejoining on health, and a
//! fast 503 when every target is down.
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// `upstream_body` (which defines `[upstreams.app]`) plus one catch-all route to it.
/// `route_extra` goes into the route, e.g. `retries = 0`.
fn config(upstream_body: &str, route_extra: &str) -> String {
    format!(
        r#"
{upstream_body}

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
{route_extra}
"#
    )
}

fn backend_of(resp: reqwest::blocking::Response) -> String {
    assert_eq!(resp.status(), 200, "proxied request failed");
    resp.headers()["x-backend"].to_str().unwrap().to_string()
}

/// The `/health` document of the admin listener.
fn health(gw: &Gateway) -> serde_json::Value {
    client()
        .get(gw.admin_url("/health"))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// The `healthy` flag `/health` reports for target `addr` of group `app`.
fn target_healthy(gw: &Gateway, addr: &str) -> bool {
    let h = health(gw);
    let targets = h["upstreams"]["app"]["targets"].as_array().unwrap();
    let t = targets
        .iter()
        .find(|t| t["address"] == addr)
        .unwrap_or_else(|| panic!("{addr} not in /health: {h}"));
    t["healthy"].as_bool().unwrap()
}

#[test]
fn weighted_round_robin_within_five_percent_over_10000_requests() {
    let (a, b, c) = (Backend::echo("a"), Backend::echo("b"), Backend::echo("c"));
    let gw = Gateway::start(&config(
        &format!(
            r#"
[upstreams.app]
targets = [
  {{ address = "{}", weight = 5 }},
  {{ address = "{}", weight = 3 }},
  {{ address = "{}", weight = 2 }},
]"#,
            a.addr, b.addr, c.addr
        ),
        "",
    ));
    let url = gw.url("/w");
    // Four keep-alive clients in parallel: 4 x 2,500 requests.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let client = client();
                for _ in 0..2500 {
                    assert_eq!(client.get(&url).send().unwrap().status(), 200);
                }
            });
        }
    });
    let total = (a.hits() + b.hits() + c.hits()) as f64;
    assert_eq!(total, 10_000.0);
    // Tolerance is relative: each target's count is within 5% of its own expected count
    // (5,000 +- 250, 3,000 +- 150, 2,000 +- 100). The sequence is exact per cycle of 10
    // picks, so only the picks in flight at the end of the run can skew it.
    for (backend, weight) in [(&a, 5.0), (&b, 3.0), (&c, 2.0)] {
        let expected = total * weight / 10.0;
        let got = backend.hits() as f64;
        assert!(
            (got - expected).abs() <= expected * 0.05,
            "{}: {got} requests, expected {expected} +- 5%",
            backend.name()
        );
    }
}

#[test]
fn least_connections_prefers_the_idle_target() {
    let slow = |name: &'static str| {
        Backend::start(name, move |r| {
            let reply = common::backend::echo_reply(name, r);
            if r.path == "/hold" {
                reply.delay(Duration::from_secs(2))
            } else {
                reply
            }
        })
    };
    let (a, b) = (slow("a"), slow("b"));
    let gw = Gateway::start(&config(
        &format!(
            r#"
[upstreams.app]
policy = "least_connections"
targets = [{{ address = "{}" }}, {{ address = "{}" }}]"#,
            a.addr, b.addr
        ),
        "",
    ));
    let hold_url = gw.url("/hold");
    let holder = std::thread::spawn(move || backend_of(client().get(&hold_url).send().unwrap()));
    let busy = wait_for(Duration::from_secs(10), || match (a.hits(), b.hits()) {
        (1, 0) => Some("a"),
        (0, 1) => Some("b"),
        _ => None,
    })
    .expect("the held request reached a backend");
    let idle = if busy == "a" { "b" } else { "a" };
    let c = client();
    for i in 0..10 {
        assert_eq!(
            backend_of(c.get(gw.url("/fast")).send().unwrap()),
            idle,
            "fast request {i} went to the busy target"
        );
    }
    assert_eq!(holder.join().unwrap(), busy);
    // With both idle again, traffic spreads over both.
    let mut seen = HashMap::new();
    for _ in 0..20 {
        *seen
            .entry(backend_of(c.get(gw.url("/fast")).send().unwrap()))
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both targets serve again: {seen:?}");
}

#[test]
fn consistent_hash_sticks_by_header_and_cookie() {
    let (a, b) = (Backend::echo("a"), Backend::echo("b"));
    for hash_on in ["header:X-User", "cookie:session"] {
        let gw = Gateway::start(&config(
            &format!(
                r#"
[upstreams.app]
policy = "consistent_hash"
hash_on = "{hash_on}"
targets = [{{ address = "{}" }}, {{ address = "{}" }}]"#,
                a.addr, b.addr
            ),
            "",
        ));
        let c = client();
        // `round` varies everything but the hashed value: another header or another
        // cookie, so only the configured key can decide the target.
        let send = |user: &str, round: usize| {
            let req = c.get(gw.url(&format!("/h/{round}")));
            let req = if hash_on.starts_with("header") {
                req.header("x-user", user)
                    .header("x-other", round.to_string())
            } else {
                req.header(
                    "cookie",
                    format!("theme={round}; session={user}; z={round}"),
                )
            };
            backend_of(req.send().unwrap())
        };
        let mut spread = HashMap::new();
        for i in 0..50 {
            let user = format!("user-{i}");
            let first = send(&user, 0);
            for round in 1..5 {
                assert_eq!(send(&user, round), first, "{hash_on}: {user} moved");
            }
            *spread.entry(first).or_insert(0) += 1;
        }
        assert_eq!(
            spread.len(),
            2,
            "{hash_on}: 50 users spread over both targets: {spread:?}"
        );
    }
}

#[test]
fn unhealthy_target_leaves_and_rejoins() {
    let (a, b) = (Backend::echo("a"), Backend::echo("b"));
    let gw = Gateway::start(&config(
        &format!(
            r#"
[upstreams.app]
targets = [{{ address = "{}" }}, {{ address = "{}" }}]
[upstreams.app.health_check]
path = "/healthz"
interval = "200ms"
timeout = "200ms"
healthy_threshold = 2
unhealthy_threshold = 2"#,
            a.addr, b.addr
        ),
        "",
    ));
    let c = client();
    let a_addr = a.addr.to_string();
    wait_for(Duration::from_secs(5), || {
        (a.health_hits() > 0).then_some(())
    })
    .expect("health checks run");
    assert!(target_healthy(&gw, &a_addr));

    a.set_healthy(false);
    // interval x threshold = 400 ms; poll up to 5 s for a loaded machine.
    wait_for(Duration::from_secs(5), || {
        (!target_healthy(&gw, &a_addr)).then_some(())
    })
    .expect("a marked unhealthy in /health within 5s");
    let before = a.hits();
    for i in 0..50 {
        assert_eq!(
            backend_of(c.get(gw.url("/x")).send().unwrap()),
            "b",
            "request {i}"
        );
    }
    assert_eq!(a.hits(), before, "no traffic to the unhealthy target");

    a.set_healthy(true);
    wait_for(Duration::from_secs(5), || {
        target_healthy(&gw, &a_addr).then_some(())
    })
    .expect("a healthy again in /health within 5s");
    let rejoined = wait_for(Duration::from_secs(5), || {
        backend_of(c.get(gw.url("/x")).send().unwrap());
        (a.hits() > before).then_some(())
    });
    assert!(rejoined.is_some(), "a receives traffic again");
}

#[test]
fn tcp_health_check_takes_out_a_closed_port() {
    let a = Backend::echo("a");
    let closed = format!("127.0.0.1:{}", free_port());
    // `retries = 0`: a request sent to the closed port would fail instead of being
    // retried on `a`, so a 200 proves the closed target was never picked.
    let gw = Gateway::start(&config(
        &format!(
            r#"
[upstreams.app]
targets = [{{ address = "{}" }}, {{ address = "{closed}" }}]
[upstreams.app.health_check]
kind = "tcp"
interval = "100ms"
timeout = "100ms"
unhealthy_threshold = 2"#,
            a.addr
        ),
        "retries = 0",
    ));
    wait_for(Duration::from_secs(5), || {
        (!target_healthy(&gw, &closed)).then_some(())
    })
    .expect("the closed port marked unhealthy within 5s");
    assert!(target_healthy(&gw, &a.addr.to_string()));
    assert_eq!(health(&gw)["upstreams"]["app"]["healthy_targets"], 1);
    let c = client();
    for i in 0..20 {
        assert_eq!(
            c.get(gw.url("/x")).send().unwrap().status(),
            200,
            "request {i}"
        );
    }
    assert_eq!(a.hits(), 20);
    assert_eq!(a.health_hits(), 0, "a TCP check sends no HTTP request");
}

#[test]
fn all_targets_down_is_a_fast_503() {
    let (a, b) = (Backend::echo("a"), Backend::echo("b"));
    let gw = Gateway::start(&config(
        &format!(
            r#"
[upstreams.app]
targets = [{{ address = "{}" }}, {{ address = "{}" }}]
connect_timeout = "5s"
[upstreams.app.health_check]
interval = "100ms"
timeout = "100ms"
unhealthy_threshold = 1"#,
            a.addr, b.addr
        ),
        "",
    ));
    a.set_healthy(false);
    b.set_healthy(false);
    wait_for(Duration::from_secs(5), || {
        (health(&gw)["upstreams"]["app"]["healthy_targets"] == 0).then_some(())
    })
    .expect("both targets marked unhealthy within 5s");
    let hits = a.hits() + b.hits();
    let c = client();
    for i in 0..5 {
        let id = format!("down-{i}");
        let started = Instant::now();
        let r = c
            .get(gw.url("/x"))
            .header("x-request-id", &id)
            .send()
            .unwrap();
        let took = started.elapsed();
        assert_eq!(r.status(), 503);
        assert!(
            took < Duration::from_secs(2),
            "no waiting for the 5s connect timeout: {took:?}"
        );
        assert_eq!(r.headers()["content-type"], "application/json");
        let body: serde_json::Value = r.json().unwrap();
        assert_eq!(body["request_id"], id.as_str());
        assert!(
            body["error"].as_str().unwrap().contains("healthy"),
            "{body}"
        );
    }
    assert_eq!(a.hits() + b.hits(), hits, "nothing sent to a down target");
    let health = c.get(gw.admin_url("/health")).send().unwrap();
    assert_eq!(health.status(), 503);
    let h: serde_json::Value = health.json().unwrap();
    assert_eq!(h["status"], "down", "no group can serve");
    assert_eq!(h["upstreams"]["app"]["status"], "down");
}

#[test]
fn unreachable_targets_without_health_checks_give_502() {
    let gw = Gateway::start(&config(
        &format!(
            r#"
[upstreams.app]
targets = [{{ address = "127.0.0.1:{}" }}, {{ address = "127.0.0.1:{}" }}]
connect_timeout = "5s""#,
            free_port(),
            free_port()
        ),
        "",
    ));
    let started = Instant::now();
    let r = client()
        .get(gw.url("/x"))
        .header("x-request-id", "unreachable-1")
        .send()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 502);
    // A refused connection fails at once: well inside the connect timeout even with the
    // retry on the second target.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["request_id"], "unreachable-1");
    assert!(body["error"].is_string(), "{body}");
}
