//! Resilience: circuit breakers, retries on another target with a budget, no retry of a POST
//! whose bytes reached the upstream, and the fallback response.
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn dead_port() -> u16 {
    free_port()
}

#[test]
fn breaker_opens_sheds_half_opens_and_closes() {
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let a = Backend::start("a", move |r| {
        if f.load(Ordering::SeqCst) {
            Reply::status(500).header("x-backend", "a")
        } else {
            common::backend::echo_reply("a", r)
        }
    });
    let b = Backend::echo("b");
    let gw = Gateway::start(&format!(
        r#"
[upstreams.app]
targets = [{{ address = "{}" }}, {{ address = "{}" }}]
[upstreams.app.circuit_breaker]
consecutive_failures = 3
cooldown = "1s"

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
"#,
        a.addr, b.addr
    ));
    let c = client();
    // Round robin alternates, so a sees its 3rd consecutive failure within ~6 requests.
    for _ in 0..8 {
        c.get(gw.url("/x")).send().unwrap();
    }
    assert_eq!(
        a.hits(),
        3,
        "a stops getting traffic once its breaker opens"
    );
    let health: serde_json::Value = c
        .get(gw.admin_url("/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let targets = health["upstreams"]["app"]["targets"].as_array().unwrap();
    let a_state = targets
        .iter()
        .find(|t| t["address"] == a.addr.to_string())
        .unwrap();
    assert_eq!(a_state["circuit"], "open");
    let metrics = c
        .get(gw.admin_url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(
        metric(
            &metrics,
            "tollgate_circuit_state",
            &[("target", &a.addr.to_string())]
        ),
        Some(1.0)
    );
    let b_before = b.hits();
    for _ in 0..10 {
        assert_eq!(c.get(gw.url("/x")).send().unwrap().status(), 200);
    }
    assert_eq!(
        b.hits(),
        b_before + 10,
        "all traffic shed to the healthy target"
    );
    assert_eq!(a.hits(), 3);

    // a recovers; after the cool-down one probe half-opens the breaker and its success closes it.
    failing.store(false, Ordering::SeqCst);
    let probed = wait_for(Duration::from_secs(10), || {
        c.get(gw.url("/x")).send().unwrap();
        (a.hits() > 3).then_some(())
    });
    assert!(
        probed.is_some(),
        "a probe request reached a after the cool-down"
    );
    let a_before = a.hits();
    for _ in 0..10 {
        c.get(gw.url("/x")).send().unwrap();
    }
    assert!(
        a.hits() >= a_before + 4,
        "closed again: a shares traffic ({} -> {})",
        a_before,
        a.hits()
    );
}

#[test]
fn idempotent_requests_retry_on_another_target_post_never_after_sending() {
    // `reset` reads each request, then closes without answering.
    let reset = Backend::start("reset", |_| Reply::status(200).cut_after(0));
    let ok = Backend::echo("ok");
    let gw = Gateway::start(&format!(
        r#"
[upstreams.app]
targets = [{{ address = "{}" }}, {{ address = "{}" }}]

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
retries = 1
retry_on = ["connect", "reset"]
"#,
        reset.addr, ok.addr
    ));
    let c = client();
    for _ in 0..6 {
        assert_eq!(c.get(gw.url("/g")).send().unwrap().status(), 200);
    }
    assert_eq!(ok.hits(), 6, "every GET answered by the healthy target");
    let reset_gets = reset.hits();
    assert!(reset_gets >= 1);

    let mut failed = 0;
    for _ in 0..6 {
        let r = c.post(gw.url("/p")).body("payload").send().unwrap();
        if r.status() == 502 {
            failed += 1;
        } else {
            assert_eq!(r.status(), 200);
        }
    }
    let posts_at_reset = reset.hits() - reset_gets;
    assert!(
        posts_at_reset >= 1,
        "some POSTs reached the resetting target"
    );
    assert_eq!(
        failed, posts_at_reset,
        "a POST that reached an upstream is never retried"
    );
    assert_eq!(
        ok.hits() - 6,
        6 - failed,
        "the other POSTs were answered once each"
    );
}

#[test]
fn retry_budget_caps_retries() {
    let ok = Backend::echo("ok");
    let gw = Gateway::start(&format!(
        r#"
[upstreams.app]
targets = [{{ address = "127.0.0.1:{}" }}, {{ address = "{}" }}]
[upstreams.app.retry_budget]
ratio = 0.0
min_per_second = 1

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
retries = 1
"#,
        dead_port(),
        ok.addr
    ));
    let c = client();
    let statuses: Vec<u16> = (0..8)
        .map(|_| c.get(gw.url("/x")).send().unwrap().status().as_u16())
        .collect();
    let failures = statuses.iter().filter(|s| **s == 502).count();
    assert!(
        failures >= 1,
        "with one retry per second, some connect failures are not retried: {statuses:?}"
    );
    let metrics = c
        .get(gw.admin_url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let skipped = metric(
        &metrics,
        "tollgate_upstream_retries_skipped_total",
        &[("route", "app"), ("reason", "budget")],
    )
    .unwrap();
    assert_eq!(skipped as usize, failures, "{metrics}");
}

#[test]
fn fallback_answers_when_no_target_is_available() {
    let gw = Gateway::start(&format!(
        r#"
[upstreams.app]
targets = [{{ address = "127.0.0.1:{}" }}]
[upstreams.app.health_check]
kind = "tcp"
interval = "100ms"
timeout = "100ms"
unhealthy_threshold = 1
[upstreams.app.fallback]
status = 503
headers = {{ "content-type" = "application/json", "retry-after" = "30" }}
body = '{{"error":"app is resting"}}'

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
"#,
        dead_port()
    ));
    let c = client();
    let got = wait_for(Duration::from_secs(10), || {
        let r = c.get(gw.url("/x")).send().unwrap();
        (r.headers().get("retry-after").is_some()).then(|| (r.status(), r.text().unwrap()))
    });
    let (status, body) = got.expect("the fallback response is served once the target is down");
    assert_eq!(status, 503);
    assert_eq!(body, r#"{"error":"app is resting"}"#);
}

/// The stale-connection bug: when the upstream closed every pooled connection without
/// answering, Pingora retried each one as "stale" uncounted, so one GET reached the origin up
/// to 16 times (8 were seen). Now one free retry, then the route's `retries`.
#[test]
fn a_get_reaches_an_origin_closing_pooled_connections_at_most_retries_plus_two_times() {
    let broken = Arc::new(AtomicBool::new(false));
    let b = broken.clone();
    let backend = Backend::start("app", move |_| {
        if b.load(Ordering::SeqCst) {
            Reply::status(200).cut_after(0)
        } else {
            Reply::status(200)
                .body("ok")
                .delay(Duration::from_millis(200))
        }
    });
    let gw = Gateway::start(&format!(
        r#"
[upstreams.app]
targets = [{{ address = "{}" }}]

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
retries = 1
"#,
        backend.addr
    ));
    // Eight concurrent slow requests leave eight idle connections in the pool.
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| assert_eq!(client().get(gw.url("/warm")).send().unwrap().status(), 200));
        }
    });
    broken.store(true, Ordering::SeqCst);
    let before = backend.hits();
    let resp = client().get(gw.url("/once")).send().unwrap();
    let attempts = backend.hits() - before;
    assert_eq!(resp.status(), 502);
    assert!(
        resp.text()
            .unwrap()
            .contains("upstream closed the connection"),
        "the 502 says what happened"
    );
    assert!(
        attempts <= 1 + 2,
        "one GET reached the origin {attempts} times"
    );
    assert!(
        attempts >= 2,
        "the free retry on a stale pooled connection is kept"
    );
}
