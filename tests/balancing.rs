//! Load balancing and active health checks through the real gateway: weighted round robin,
//! least connections, consistent hashing, targets leaving and rejoining on health, and a
//! fast 503 when every target is down.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn route(upstream_body: &str) -> String {
    format!(
        r#"
{upstream_body}

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
"#
    )
}

fn backend_of(resp: reqwest::blocking::Response) -> String {
    resp.headers()["x-backend"].to_str().unwrap().to_string()
}

#[test]
fn weighted_round_robin_within_five_percent_over_10000_requests() {
    let (a, b, c) = (Backend::echo("a"), Backend::echo("b"), Backend::echo("c"));
    let gw = Gateway::start(&route(&format!(
        r#"
[upstreams.app]
targets = [
  {{ address = "{}", weight = 5 }},
  {{ address = "{}", weight = 3 }},
  {{ address = "{}", weight = 2 }},
]"#,
        a.addr, b.addr, c.addr
    )));
    let url = gw.url("/w");
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
    // Each target's share within 5% of its expected share (relative).
    for (backend, weight) in [(&a, 5.0), (&b, 3.0), (&c, 2.0)] {
        let expected = total * weight / 10.0;
        let got = backend.hits() as f64;
        assert!(
            (got - expected).abs() <= expected * 0.05,
            "{}: {got} requests, expected {expected}",
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
    let gw = Gateway::start(&route(&format!(
        r#"
[upstreams.app]
policy = "least_connections"
targets = [{{ address = "{}" }}, {{ address = "{}" }}]"#,
        a.addr, b.addr
    )));
    let hold_url = gw.url("/hold");
    let holder = std::thread::spawn(move || backend_of(client().get(&hold_url).send().unwrap()));
    let busy = wait_for(Duration::from_secs(10), || {
        if a.hits() == 1 {
            Some("a")
        } else if b.hits() == 1 {
            Some("b")
        } else {
            None
        }
    })
    .expect("the held request reached a backend");
    let idle = if busy == "a" { "b" } else { "a" };
    let c = client();
    for _ in 0..10 {
        assert_eq!(backend_of(c.get(gw.url("/fast")).send().unwrap()), idle);
    }
    assert_eq!(holder.join().unwrap(), busy);
    // With both idle again, traffic spreads over both.
    let mut seen = HashMap::new();
    for _ in 0..10 {
        *seen
            .entry(backend_of(c.get(gw.url("/fast")).send().unwrap()))
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[test]
fn consistent_hash_sticks_by_header_and_cookie() {
    let (a, b) = (Backend::echo("a"), Backend::echo("b"));
    for hash_on in ["header:X-User", "cookie:session"] {
        let gw = Gateway::start(&route(&format!(
            r#"
[upstreams.app]
policy = "consistent_hash"
hash_on = "{hash_on}"
targets = [{{ address = "{}" }}, {{ address = "{}" }}]"#,
            a.addr, b.addr
        )));
        let c = client();
        let send = |user: &str| {
            let req = c.get(gw.url("/h"));
            let req = if hash_on.starts_with("header") {
                req.header("x-user", user)
            } else {
                req.header("cookie", format!("theme=dark; session={user}"))
            };
            backend_of(req.send().unwrap())
        };
        let mut spread = HashMap::new();
        for i in 0..50 {
            let user = format!("user-{i}");
            let first = send(&user);
            for _ in 0..3 {
                assert_eq!(send(&user), first, "{hash_on}: {user} moved");
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
    let gw = Gateway::start(&route(&format!(
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
    )));
    let c = client();
    let health_of = |addr: &str| {
        let h: serde_json::Value = c
            .get(gw.admin_url("/health"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        h["upstreams"]["app"]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["address"] == addr)
            .map(|t| t["healthy"].as_bool().unwrap())
            .unwrap()
    };
    a.set_healthy(false);
    let started = Instant::now();
    // interval x threshold = 400 ms; allow generous slack for a loaded machine.
    wait_for(Duration::from_secs(5), || {
        (!health_of(&a.addr.to_string())).then_some(())
    })
    .expect("a marked unhealthy");
    let detected = started.elapsed();
    let before = a.hits();
    for _ in 0..50 {
        assert_eq!(backend_of(c.get(gw.url("/x")).send().unwrap()), "b");
    }
    assert_eq!(a.hits(), before, "no traffic to the unhealthy target");
    assert!(detected < Duration::from_secs(5), "took {detected:?}");

    a.set_healthy(true);
    wait_for(Duration::from_secs(5), || {
        health_of(&a.addr.to_string()).then_some(())
    })
    .expect("a healthy again");
    let rejoined = wait_for(Duration::from_secs(5), || {
        c.get(gw.url("/x")).send().unwrap();
        (a.hits() > before).then_some(())
    });
    assert!(rejoined.is_some(), "a receives traffic again");
}

#[test]
fn tcp_health_check_takes_out_a_closed_port() {
    let a = Backend::echo("a");
    let gw = Gateway::start(&route(&format!(
        r#"
[upstreams.app]
targets = [{{ address = "{}" }}, {{ address = "127.0.0.1:{}" }}]
[upstreams.app.health_check]
kind = "tcp"
interval = "100ms"
timeout = "100ms"
unhealthy_threshold = 1"#,
        a.addr,
        free_port()
    )));
    let c = client();
    let down = wait_for(Duration::from_secs(5), || {
        let h: serde_json::Value = c
            .get(gw.admin_url("/health"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        (h["upstreams"]["app"]["healthy_targets"] == 1).then_some(())
    });
    assert!(down.is_some());
    for _ in 0..20 {
        assert_eq!(c.get(gw.url("/x")).send().unwrap().status(), 200);
    }
}

#[test]
fn all_targets_down_is_a_fast_503() {
    let (a, b) = (Backend::echo("a"), Backend::echo("b"));
    let gw = Gateway::start(&route(&format!(
        r#"
[upstreams.app]
targets = [{{ address = "{}" }}, {{ address = "{}" }}]
connect_timeout = "5s"
[upstreams.app.health_check]
interval = "100ms"
timeout = "100ms"
unhealthy_threshold = 1"#,
        a.addr, b.addr
    )));
    a.set_healthy(false);
    b.set_healthy(false);
    let c = client();
    let got = wait_for(Duration::from_secs(5), || {
        let started = Instant::now();
        let r = c
            .get(gw.url("/x"))
            .header("x-request-id", "down-1")
            .send()
            .unwrap();
        (r.status() == 503).then(|| (started.elapsed(), r.json::<serde_json::Value>().unwrap()))
    });
    let (took, body) = got.expect("503 once every target is unhealthy");
    assert!(
        took < Duration::from_secs(2),
        "no waiting for a timeout: {took:?}"
    );
    assert_eq!(body["request_id"], "down-1");
    assert!(body["error"].as_str().unwrap().contains("healthy"));
    let health = c.get(gw.admin_url("/health")).send().unwrap();
    assert_eq!(health.status(), 503);
    let h: serde_json::Value = health.json().unwrap();
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["upstreams"]["app"]["status"], "down");
}

#[test]
fn unreachable_targets_without_health_checks_give_502() {
    let gw = Gateway::start(&route(&format!(
        r#"
[upstreams.app]
targets = [{{ address = "127.0.0.1:{}" }}, {{ address = "127.0.0.1:{}" }}]
connect_timeout = "2s""#,
        free_port(),
        free_port()
    )));
    let started = Instant::now();
    let r = client().get(gw.url("/x")).send().unwrap();
    assert_eq!(r.status(), 502);
    assert!(started.elapsed() < Duration::from_secs(4));
    let body: serde_json::Value = r.json().unwrap();
    assert!(body["request_id"].is_string());
}
