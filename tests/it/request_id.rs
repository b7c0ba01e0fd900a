//! The request id under a configured header name (`[server] request_id_header`, the
//! platform's `X-Correlation-ID`): made when absent or invalid, passed upstream and back
//! under that name only, in the JSON errors, the access log, and Pingora's own early 400s.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::time::Duration;

fn correlated(backend: &Backend, name: &str) -> Gateway {
    let config = format!(
        "{}\n[upstreams.app]\ntargets = [{{ address = \"{}\" }}]\n\n\
         [[routes]]\nname = \"app\"\npath_prefix = \"/app\"\nupstream = \"app\"\n",
        PREAMBLE.replace(
            "[server]\n",
            &format!("[server]\nrequest_id_header = \"{name}\"\n")
        ),
        backend.addr
    );
    Gateway::start_full(&config).unwrap_or_else(|e| panic!("{e}"))
}

fn is_generated(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn an_absent_correlation_id_is_made_and_sent_under_the_configured_name_only() {
    let backend = Backend::echo("app");
    let gw = correlated(&backend, "X-Correlation-ID");
    let resp = client().get(gw.url("/app/x")).send().unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-correlation-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(is_generated(&id), "{id}");
    assert!(resp.headers().get("x-request-id").is_none());
    let got = backend.last_request();
    assert_eq!(got.header("x-correlation-id"), Some(id.as_str()));
    assert_eq!(got.header("x-request-id"), None, "{:?}", got.headers);
    let line = gw.wait_access_log(|l| l["path"] == "/app/x");
    assert_eq!(line["request_id"], id.as_str());
}

#[test]
fn a_clients_correlation_id_reaches_the_upstream_and_comes_back() {
    let backend = Backend::echo("app");
    let gw = correlated(&backend, "X-Correlation-ID");
    let resp = client()
        .get(gw.url("/app/x"))
        .header("X-Correlation-ID", "order-42.retry:1")
        .send()
        .unwrap();
    assert_eq!(resp.headers()["x-correlation-id"], "order-42.retry:1");
    assert_eq!(
        backend.last_request().header("x-correlation-id"),
        Some("order-42.retry:1")
    );
    // An id under the default name is just a header of the client's now: it is not read.
    let resp = client()
        .get(gw.url("/app/y"))
        .header("X-Request-ID", "not-the-id")
        .send()
        .unwrap();
    let id = resp.headers()["x-correlation-id"].to_str().unwrap();
    assert!(is_generated(id), "{id}");
}

#[test]
fn an_invalid_correlation_id_is_replaced() {
    let backend = Backend::echo("app");
    let gw = correlated(&backend, "X-Correlation-ID");
    for bad in ["has space", &"a".repeat(129), "semi;colon"] {
        let resp = client()
            .get(gw.url("/app/x"))
            .header("X-Correlation-ID", bad)
            .send()
            .unwrap();
        let id = resp.headers()["x-correlation-id"].to_str().unwrap();
        assert!(is_generated(id), "{bad:?} kept as {id}");
        assert_eq!(backend.last_request().header("x-correlation-id"), Some(id));
    }
}

#[test]
fn the_gateways_own_errors_carry_the_correlation_id_in_header_and_body() {
    let backend = Backend::echo("app");
    let gw = correlated(&backend, "X-Correlation-ID");
    let resp = client()
        .get(gw.url("/nowhere"))
        .header("X-Correlation-ID", "c-404")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-correlation-id"], "c-404");
    assert!(resp.headers().get("x-request-id").is_none());
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["request_id"], "c-404");
    // A head Pingora's parser refuses, before any hook: the same header, spelled as
    // configured.
    let raw = gw.raw(
        b"GET /app HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(raw.contains("X-Correlation-ID: "), "{raw}");
    assert!(!raw.to_ascii_lowercase().contains("x-request-id"), "{raw}");
}

#[test]
fn a_reload_changes_the_request_id_header() {
    let backend = Backend::echo("app");
    let gw = correlated(&backend, "X-Correlation-ID");
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(
        &gw.config_path,
        config.replace("X-Correlation-ID", "X-Trace-Token"),
    )
    .unwrap();
    let (status, body) = gw.reload();
    assert_eq!(status, 200, "{body}");
    let resp = client().get(gw.url("/app/x")).send().unwrap();
    assert!(resp.headers().get("x-trace-token").is_some());
    assert!(resp.headers().get("x-correlation-id").is_none());
    assert!(backend.last_request().header("x-trace-token").is_some());
}

#[test]
fn an_invalid_request_id_header_name_fails_the_config_check() {
    let (code, out) = check_config(&PREAMBLE.replace(
        "[server]\n",
        "[server]\nrequest_id_header = \"X Correlation\"\n",
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("server.request_id_header"), "{out}");
}
