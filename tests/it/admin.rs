//! The admin listener and observability: `/health`, the `/livez` and `/readyz` probes,
//! `/metrics` values that match the traffic sent, the JSON access log, and admin paths not
//! leaking onto the proxy listener.
#![allow(clippy::unwrap_used)]

use crate::common::*;
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

/// `/health` answered 503 as soon as one group was down, so as a probe it would take every
/// gateway out because one backend is sick: it stays 200 ("degraded") while another group
/// serves, and is 503 only when none can.
#[test]
fn health_reports_per_target_and_is_503_only_when_no_group_can_serve() {
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
        let status = r.status();
        let doc = r.json::<serde_json::Value>().unwrap();
        (doc["status"] == "degraded").then_some((status, doc))
    })
    .expect("degraded once the checked group has no healthy target");
    let (status, degraded) = degraded;
    assert_eq!(status, 200, "another group still serves");
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
            "tollgate_upstream_target_healthy",
            &[("upstream", "checked")]
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "tollgate_upstream_target_healthy",
            &[("upstream", "app")]
        ),
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
        let done = metric(
            &t,
            "tollgate_request_duration_seconds_count",
            &[("route", "-")],
        ) == Some(1.0)
            && metric(
                &t,
                "tollgate_request_duration_seconds_count",
                &[("route", "app")],
            ) == Some(4.0);
        done.then_some(t)
    })
    .expect("all five requests recorded");
    let get = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels);
    assert_eq!(
        get(
            "tollgate_requests_total",
            &[("route", "app"), ("method", "GET"), ("status", "200")]
        ),
        Some(3.0)
    );
    assert_eq!(
        get(
            "tollgate_requests_total",
            &[("route", "app"), ("method", "POST"), ("status", "200")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            "tollgate_requests_total",
            &[("route", "-"), ("method", "GET"), ("status", "404")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            "tollgate_request_duration_seconds_count",
            &[("route", "app")]
        ),
        Some(4.0)
    );
    assert_eq!(
        get(
            "tollgate_upstream_duration_seconds_count",
            &[("upstream", "app")]
        ),
        Some(4.0)
    );
    assert!(get("tollgate_requests_in_flight", &[]).is_some());
    assert!(get("tollgate_downstream_connections", &[]).is_some());
    assert!(text.contains("# TYPE tollgate_request_duration_seconds histogram"));
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
    assert_eq!(line["upstream"], "app");
    assert_eq!(line["target"], a.addr.to_string());
    assert_eq!(line["upstream_status"], 200);
    assert_eq!(line["attempts"], 1);
    assert_eq!(line["query"], "x=1");
    assert_eq!(line["protocol"], "HTTP/1.1");
    assert_eq!(line["host"], gw.addr.to_string());
    assert!(
        line["user_agent"].is_null(),
        "the test client sends none: {line}"
    );
    assert_eq!(line["bytes_in"], 5);
    assert!(line["bytes_out"].as_u64().unwrap() > 0);
    assert!(line["duration_us"].as_u64().unwrap() > 0, "{line}");
    assert!(line["upstream_us"].as_u64().unwrap() > 0, "{line}");
    assert!(line.get("retries").is_none(), "{line}");
    assert!(line.get("error").is_none(), "{line}");
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

#[test]
fn health_is_503_when_no_group_can_serve() {
    let checked = Backend::echo("checked");
    let gw = Gateway::start(&format!(
        r#"
[upstreams.checked]
targets = [{{ address = "{}" }}]
[upstreams.checked.health_check]
interval = "100ms"
timeout = "100ms"
healthy_threshold = 1
unhealthy_threshold = 1

[[routes]]
name = "checked"
upstream = "checked"
"#,
        checked.addr
    ));
    checked.set_healthy(false);
    let down = wait_for(Duration::from_secs(5), || {
        let r = client().get(gw.admin_url("/health")).send().unwrap();
        (r.status() == 503).then(|| r.json::<serde_json::Value>().unwrap())
    })
    .expect("503 once no group can serve");
    assert_eq!(down["status"], "down");
}

/// A target whose health check takes 3 s to fail: `/readyz` says starting until that first
/// round is done, `/livez` says alive all along.
#[test]
fn readyz_waits_for_the_first_health_check_round_and_livez_does_not() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let slow = silent.local_addr().unwrap();
    let gw = Gateway::start(&format!(
        r#"
[upstreams.slow]
targets = [{{ address = "{slow}" }}]
[upstreams.slow.health_check]
interval = "10s"
timeout = "3s"

[[routes]]
name = "slow"
upstream = "slow"
"#
    ));
    let get = |path: &str| {
        let r = client().get(gw.admin_url(path)).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().unwrap())
    };
    assert_eq!(get("/livez"), (200, serde_json::json!({"status": "alive"})));
    assert_eq!(
        get("/readyz"),
        (
            503,
            serde_json::json!({"status": "starting", "waiting": "health_checks"})
        )
    );
    wait_for(Duration::from_secs(10), || {
        (get("/readyz").0 == 200).then_some(())
    })
    .expect("ready after the first round");
    assert_eq!(get("/readyz").1["status"], "ready");
    assert_eq!(get("/livez").0, 200);
    drop(silent);
}

/// Regression: on SIGTERM the admin listener closed at once with the proxy listeners, so
/// during the whole grace period `/readyz` refused connections (never saying `draining`)
/// and a liveness probe could kill a draining pod. Now the admin listener answers until the
/// process exits: `/readyz` 503 draining, `/livez` 200, `/metrics` scrapeable, and the
/// request in flight finishes.
#[test]
fn sigterm_closed_the_admin_listener_at_once() {
    let backend = Backend::start("slow", |_| {
        Reply::status(200)
            .body("done")
            .delay(Duration::from_millis(1500))
    });
    let mut gw = Gateway::start_full(&format!(
        r#"
[server]
threads = 2
pid_file = "{{dir}}/tollgate.pid"
upgrade_sock = "{{dir}}/upgrade.sock"
grace_period = "3s"
graceful_shutdown_timeout = "1s"

[[listeners]]
address = "{{listen}}"

[admin]
address = "{{admin}}"

[upstreams.slow]
targets = [{{ address = "{}" }}]

[[routes]]
name = "slow"
upstream = "slow"
"#,
        backend.addr
    ))
    .unwrap();
    let url = gw.url("/x");
    let in_flight = std::thread::spawn(move || {
        let r = client().get(url).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    });
    wait_for(Duration::from_secs(5), || {
        (backend.hits() > 0).then_some(())
    })
    .expect("the request reached the upstream");
    gw.signal("TERM");
    // Fresh connections, as a kubelet's probes are.
    let probe = |path: &str| {
        let fresh = reqwest::blocking::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        fresh
            .get(gw.admin_url(path))
            .send()
            .map(|r| (r.status().as_u16(), r.text().unwrap_or_default()))
            .map_err(|e| e.to_string())
    };
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_millis(2000);
    while std::time::Instant::now() < deadline {
        seen.push(probe("/readyz"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let livez = probe("/livez");
    let metrics = probe("/metrics");
    eprintln!("/readyz during the drain: {seen:?}");
    // A probe sent before the signal landed may still say ready; from the first `draining`
    // on, every probe is answered, and says so.
    let draining: Vec<_> = seen
        .iter()
        .skip_while(|r| matches!(r, Ok((200, _))))
        .collect();
    assert!(draining.len() >= 10, "{seen:?}");
    assert!(
        draining
            .iter()
            .all(|r| matches!(r, Ok((503, body)) if body.contains("draining"))),
        "every probe in the grace period answered 503 draining: {seen:?}"
    );
    assert_eq!(livez.as_ref().map(|r| r.0), Ok(200), "{livez:?}");
    assert!(
        metrics
            .as_ref()
            .is_ok_and(|(s, b)| *s == 200 && b.contains("tollgate_requests_total")),
        "{metrics:?}"
    );
    assert_eq!(in_flight.join().unwrap(), (200, "done".to_string()));
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
}
