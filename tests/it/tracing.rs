//! `[tracing]`: W3C trace context continued or started, passed to upstreams (each attempt
//! its own span) and to aggregation parts, and spans exported as OTLP/HTTP protobuf to a
//! receiver that decodes them with the `opentelemetry-proto` types.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use prost::Message;
use std::time::Duration;

/// The collector: answers 200 to every export and keeps what it got.
fn collector() -> Backend {
    Backend::start("otlp", |_| Reply::status(200))
}

/// Every span exported so far, with the resource's `service.name`.
fn spans(c: &Backend) -> Vec<(String, Span)> {
    c.requests()
        .iter()
        .filter(|r| r.path == "/v1/traces")
        .flat_map(|r| {
            assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
            let req = ExportTraceServiceRequest::decode(&r.body[..]).unwrap();
            req.resource_spans
                .into_iter()
                .flat_map(|rs| {
                    let service = rs
                        .resource
                        .as_ref()
                        .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                            Value::StringValue(s) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    rs.scope_spans
                        .into_iter()
                        .flat_map(|ss| ss.spans)
                        .map(move |s| (service.clone(), s))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
}

fn text(s: &Span, key: &str) -> String {
    match attr(s, key) {
        Some(Value::StringValue(v)) => v.clone(),
        other => panic!("{key}: {other:?} in {s:?}"),
    }
}

fn int(s: &Span, key: &str) -> i64 {
    match attr(s, key) {
        Some(Value::IntValue(v)) => *v,
        other => panic!("{key}: {other:?} in {s:?}"),
    }
}

fn tracing_section(collector: &Backend, ratio: f64) -> String {
    format!(
        r#"
[tracing]
endpoint = "http://{}/v1/traces"
sample_ratio = {ratio:?}
service_name = "edge"
flush_interval = "50ms"
headers = {{ "x-api-key" = "collector-key" }}
"#,
        collector.addr
    )
}

/// `traceparent` split into trace id, span id, flags.
fn parts(tp: &str) -> (String, String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    assert_eq!(p[0], "00", "{tp}");
    (p[1].into(), p[2].into(), p[3].into())
}

fn wait_spans(c: &Backend, n: usize) -> Vec<(String, Span)> {
    wait_for(Duration::from_secs(10), || {
        let s = spans(c);
        (s.len() >= n).then_some(s)
    })
    .unwrap_or_else(|| panic!("fewer than {n} spans: {:?}", spans(c)))
}

#[test]
fn an_incoming_trace_is_continued_and_the_upstream_gets_a_child_span() {
    let otlp = collector();
    let app = Backend::echo("app");
    let gw = Gateway::start(&format!(
        r#"{}
[upstreams.app]
targets = [{{ address = "{}" }}]

[[routes]]
name = "orders"
path_prefix = "/orders"
upstream = "app"
"#,
        tracing_section(&otlp, 1.0),
        app.addr
    ));
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = client()
        .get(gw.url("/orders/7?x=1"))
        .header("traceparent", incoming)
        .header("tracestate", "vendor=abc")
        .header("x-request-id", "traced-1")
        .header("user-agent", "trace-test/1")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let up = app.last_request();
    let (trace, parent, flags) = parts(up.header("traceparent").unwrap());
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(
        parent, "00f067aa0ba902b7",
        "the upstream's parent is the gateway's span"
    );
    assert_eq!(flags, "01");
    assert_eq!(up.header("tracestate"), Some("vendor=abc"));

    let all = wait_spans(&otlp, 2);
    assert!(all.iter().all(|(svc, _)| svc == "edge"));
    let server = &all
        .iter()
        .find(|(_, s)| s.kind == SpanKind::Server as i32)
        .unwrap()
        .1;
    let client_span = &all
        .iter()
        .find(|(_, s)| s.kind == SpanKind::Client as i32)
        .unwrap()
        .1;
    assert_eq!(hex::encode(&server.trace_id), trace);
    assert_eq!(hex::encode(&server.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(server.trace_state, "vendor=abc");
    assert_eq!(server.name, "GET orders");
    assert_eq!(text(server, "http.request.method"), "GET");
    assert_eq!(text(server, "http.route"), "orders");
    assert_eq!(text(server, "url.path"), "/orders/7");
    assert_eq!(text(server, "url.scheme"), "http");
    assert_eq!(int(server, "http.response.status_code"), 200);
    assert_eq!(text(server, "user_agent.original"), "trace-test/1");
    assert_eq!(text(server, "tollgate.request_id"), "traced-1");
    assert_eq!(text(server, "client.address"), "127.0.0.1");
    assert!(server.end_time_unix_nano >= server.start_time_unix_nano);

    assert_eq!(client_span.trace_id, server.trace_id);
    assert_eq!(client_span.parent_span_id, server.span_id);
    assert_eq!(
        hex::encode(&client_span.span_id),
        parent,
        "the id the upstream got"
    );
    assert_eq!(text(client_span, "server.address"), "127.0.0.1");
    assert_eq!(int(client_span, "server.port"), i64::from(app.addr.port()));
    assert_eq!(int(client_span, "http.response.status_code"), 200);
    assert!(client_span.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(client_span.end_time_unix_nano <= server.end_time_unix_nano);

    // The exporter sends the configured headers; the access log carries the trace id.
    let export = otlp.requests().into_iter().next().unwrap();
    assert_eq!(export.header("x-api-key"), Some("collector-key"));
    let line = gw.wait_access_log(|l| l["request_id"] == "traced-1");
    assert_eq!(line["trace_id"], trace, "{line}");
}

#[test]
fn a_request_without_context_starts_a_trace_and_each_retry_is_its_own_span() {
    let otlp = collector();
    let bad = Backend::start("bad", |_| Reply::status(503));
    let good = Backend::echo("good");
    let gw = Gateway::start(&format!(
        r#"{}
[upstreams.app]
targets = [{{ address = "{}" }}, {{ address = "{}" }}]
policy = "round_robin"

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
retries = 1
retry_on = ["5xx"]
"#,
        tracing_section(&otlp, 1.0),
        bad.addr,
        good.addr
    ));
    // Round robin: one of the two requests starts on the failing target and is retried.
    for i in 0..2 {
        let r = client()
            .get(gw.url("/x"))
            .header("x-request-id", format!("r-{i}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let all = wait_spans(&otlp, 5);
    let servers: Vec<&Span> = all
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(servers.len(), 2);
    for s in &servers {
        assert!(s.parent_span_id.is_empty(), "a new trace has no parent");
        assert_eq!(s.trace_id.len(), 16);
        assert_ne!(s.trace_id, vec![0; 16]);
    }
    assert_ne!(servers[0].trace_id, servers[1].trace_id);
    let retried = servers
        .iter()
        .find(|s| attr(s, "tollgate.retries").is_some())
        .expect("one request was retried");
    assert_eq!(int(retried, "tollgate.retries"), 1);
    let attempts: Vec<&Span> = all
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.kind == SpanKind::Client as i32 && s.parent_span_id == retried.span_id)
        .collect();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(int(attempts[0], "http.response.status_code"), 503);
    assert_eq!(
        attempts[0].status.as_ref().map(|s| s.code),
        Some(2),
        "ERROR"
    );
    assert_eq!(int(attempts[1], "http.response.status_code"), 200);
    assert_eq!(int(attempts[1], "http.request.resend_count"), 1);
    assert_ne!(attempts[0].span_id, attempts[1].span_id);
    // Each attempt told its upstream its own span.
    let sent: Vec<String> = bad
        .requests()
        .iter()
        .chain(good.requests().iter())
        .map(|r| parts(r.header("traceparent").unwrap()).1)
        .collect();
    for a in &attempts {
        assert!(sent.contains(&hex::encode(&a.span_id)), "{sent:?}");
    }
}

#[test]
fn unsampled_requests_propagate_context_but_export_nothing() {
    let otlp = collector();
    let app = Backend::echo("app");
    let gw = Gateway::start(&format!(
        r#"{}
[upstreams.app]
targets = [{{ address = "{}" }}]

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
"#,
        tracing_section(&otlp, 0.0),
        app.addr
    ));
    for _ in 0..5 {
        client().get(gw.url("/x")).send().unwrap();
    }
    let (_, _, flags) = parts(app.last_request().header("traceparent").unwrap());
    assert_eq!(flags, "00");
    // A sampled parent wins over the ratio.
    client()
        .get(gw.url("/y"))
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .send()
        .unwrap();
    let all = wait_spans(&otlp, 2);
    assert!(all
        .iter()
        .all(|(_, s)| hex::encode(&s.trace_id) == "0af7651916cd43dd8448eb211c80319c"));
    // A malformed `traceparent` starts a new (here unsampled) trace instead.
    client()
        .get(gw.url("/z"))
        .header("traceparent", "00-zzzz-b7ad6b7169203331-01")
        .send()
        .unwrap();
    let (trace, _, flags) = parts(app.last_request().header("traceparent").unwrap());
    assert_ne!(trace, "zzzz");
    assert_eq!(flags, "00");
}

#[test]
fn aggregation_parts_get_a_child_span_of_the_request() {
    let otlp = collector();
    let users = Backend::echo("users");
    let orders = Backend::echo("orders");
    let gw = Gateway::start(&format!(
        r#"{}
[upstreams.users]
targets = [{{ address = "{}" }}]
[upstreams.orders]
targets = [{{ address = "{}" }}]

[[routes]]
name = "dash"
path_prefix = "/dash"
[routes.aggregate]
parts = [
  {{ name = "user", upstream = "users", path = "/u" }},
  {{ name = "orders", upstream = "orders", path = "/o" }},
]
"#,
        tracing_section(&otlp, 1.0),
        users.addr,
        orders.addr
    ));
    let r = client()
        .get(gw.url("/dash"))
        .header(
            "traceparent",
            "00-11111111111111111111111111111111-2222222222222222-01",
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let (t1, s1, _) = parts(users.last_request().header("traceparent").unwrap());
    let (t2, s2, _) = parts(orders.last_request().header("traceparent").unwrap());
    assert_eq!(t1, "11111111111111111111111111111111");
    assert_eq!(t2, t1);
    let all = wait_spans(&otlp, 2);
    let server = &all
        .iter()
        .find(|(_, s)| s.kind == SpanKind::Server as i32)
        .unwrap()
        .1;
    let calls = &all
        .iter()
        .find(|(_, s)| s.kind == SpanKind::Client as i32)
        .unwrap()
        .1;
    assert_eq!(calls.name, "calls");
    assert_eq!(calls.parent_span_id, server.span_id);
    assert_eq!(hex::encode(&calls.span_id), s1);
    assert_eq!(s2, s1);
}

#[test]
fn a_collector_that_is_down_costs_requests_nothing_and_drops_are_counted() {
    let gone = free_port();
    let app = Backend::echo("app");
    let gw = Gateway::start(&format!(
        r#"
[tracing]
endpoint = "http://127.0.0.1:{gone}/v1/traces"
flush_interval = "50ms"
export_timeout = "200ms"

[upstreams.app]
targets = [{{ address = "{}" }}]

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
"#,
        app.addr
    ));
    for _ in 0..10 {
        assert_eq!(client().get(gw.url("/x")).send().unwrap().status(), 200);
    }
    let dropped = wait_for(Duration::from_secs(10), || {
        let d = metric(&gw.metrics(), "tollgate_tracing_spans_dropped_total", &[])?;
        (d >= 20.0).then_some(d)
    });
    assert!(dropped.is_some(), "{}", gw.metrics());
    let warned = gw
        .stderr()
        .lines()
        .filter(|l| l.contains("tracing: export to"))
        .count();
    assert_eq!(warned, 1, "logged once per outage: {}", gw.stderr());
}

#[test]
fn bad_tracing_settings_are_refused() {
    let (code, out) = check_config(&format!(
        "{PREAMBLE}\n[tracing]\nendpoint = \"localhost:4318\"\nsample_ratio = 1.5\n"
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("tracing.endpoint"), "{out}");
    assert!(out.contains("tracing.sample_ratio"), "{out}");
}
