//! The admin listener and observability: `/health`, `/metrics` values that match the traffic
//! sent, the JSON access log, and admin paths not leaking onto the proxy listener.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::time::Duration;

fn gateway(a: &Backend, b: &Backend) -> Gateway {
    Gateway::start(&format!(
        r#"
[upstreams.app]
targets = [{{ address = "{}" }}]

[upstreams.checked]
targets = [{{ address = "{}" }}]
[upstreams.checked.health_check]
interval = "100ms"
timeout = "100ms"
healthy_threshold = 1
unhealthy_threshold = 1

[[routes]]
name = "app"
path_prefix = "/app"
upstream = "app"

[[routes]]
name = "checked"
path_prefix = "/checked"
upstream = "checked"
"#,
        a.addr, b.addr
    ))
}

#[test]
fn health_reports_per_target_and_turns_503_when_a_group_is_down() {
    let (a, b) = (Backend::echo("a"), Backend::echo("b"));
    let gw = gateway(&a, &b);
    let c = client();
    let r = c.get(gw.admin_url("/health")).send().unwrap();
    assert_eq!(r.status(), 200);
    let h: serde_json::Value = r.json().unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        h["upstreams"]["app"]["targets"][0]["address"],
        a.addr.to_string()
    );
    assert_eq!(h["upstreams"]["app"]["targets"][0]["healthy"], true);
    assert_eq!(h["upstreams"]["checked"]["health_checked"], true);

    b.set_healthy(false);
    let degraded = wait_for(Duration::from_secs(5), || {
        let r = c.get(gw.admin_url("/health")).send().unwrap();
        (r.status() == 503).then(|| r.json::<serde_json::Value>().unwrap())
    })
    .expect("503 once the checked group has no healthy target");
    assert_eq!(degraded["status"], "degraded");
    assert_eq!(degraded["upstreams"]["checked"]["status"], "down");
    assert_eq!(degraded["upstreams"]["app"]["status"], "up");
    let metrics = c
        .get(gw.admin_url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(
        metric(
            &metrics,
            "upstream_target_healthy",
            &[("upstream", "checked")]
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(&metrics, "upstream_target_healthy", &[("upstream", "app")]),
        Some(1.0)
    );
}

#[test]
fn metrics_count_exactly_the_traffic_sent() {
    let (a, b) = (Backend::echo("a"), Backend::echo("b"));
    let gw = gateway(&a, &b);
    let c = client();
    for _ in 0..3 {
        assert_eq!(c.get(gw.url("/app/x")).send().unwrap().status(), 200);
    }
    c.post(gw.url("/app/x")).body("1").send().unwrap();
    assert_eq!(c.get(gw.url("/nowhere")).send().unwrap().status(), 404);
    // Metrics are recorded in the logging phase, just after the response: poll until the
    // last request shows, then every count must be exact.
    let text = wait_for(Duration::from_secs(5), || {
        let t = c
            .get(gw.admin_url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        let done = metric(&t, "request_duration_seconds_count", &[("route", "-")]) == Some(1.0)
            && metric(&t, "request_duration_seconds_count", &[("route", "app")]) == Some(4.0);
        done.then_some(t)
    })
    .expect("all five requests recorded");
    let get = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels);
    assert_eq!(
        get(
            "requests_total",
            &[("route", "app"), ("method", "GET"), ("status", "200")]
        ),
        Some(3.0)
    );
    assert_eq!(
        get(
            "requests_total",
            &[("route", "app"), ("method", "POST"), ("status", "200")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            "requests_total",
            &[("route", "-"), ("method", "GET"), ("status", "404")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get("request_duration_seconds_count", &[("route", "app")]),
        Some(4.0)
    );
    assert_eq!(
        get("upstream_duration_seconds_count", &[("upstream", "app")]),
        Some(4.0)
    );
    assert!(get("requests_in_flight", &[]).is_some());
    assert!(get("downstream_connections", &[]).is_some());
    assert!(text.contains("# TYPE request_duration_seconds histogram"));
}

#[test]
fn access_log_has_one_json_line_per_request() {
    let (a, b) = (Backend::echo("a"), Backend::echo("b"));
    let gw = gateway(&a, &b);
    client()
        .post(gw.url("/app/orders?x=1"))
        .header("x-request-id", "log-check-1")
        .body("hello")
        .send()
        .unwrap();
    let line = gw.wait_access_log(|l| l["request_id"] == "log-check-1");
    assert_eq!(line["route"], "app");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/app/orders");
    assert_eq!(line["status"], 200);
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert_eq!(line["upstream"], a.addr.to_string());
    assert_eq!(line["bytes_in"], 5);
    assert!(line["bytes_out"].as_u64().unwrap() > 0);
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(line["upstream_ms"].as_f64().unwrap() > 0.0);
    assert!(line["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        gw.access_log()
            .iter()
            .filter(|l| l["request_id"] == "log-check-1")
            .count(),
        1
    );
}

#[test]
fn admin_paths_and_methods() {
    let (a, b) = (Backend::echo("a"), Backend::echo("b"));
    let gw = gateway(&a, &b);
    let c = client();
    assert_eq!(c.get(gw.admin_url("/nope")).send().unwrap().status(), 404);
    assert_eq!(
        c.post(gw.admin_url("/metrics")).send().unwrap().status(),
        405
    );
    // The proxy listener routes /metrics like any path: no route here, so 404 JSON.
    let r = c.get(gw.url("/metrics")).send().unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<serde_json::Value>().unwrap()["error"], "no route");
}
