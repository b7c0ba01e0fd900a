//! Distributed tracing (`[tracing]`): W3C trace context and OpenTelemetry spans.
//!
//! A request continues the trace of a valid incoming `traceparent` (keeping its
//! `tracestate`) or starts one. The gateway's SERVER span covers the request; each upstream
//! attempt (and the calls of an aggregation or transcoding route) is a CLIENT span under it,
//! and the upstream gets that span as its parent in `traceparent`. Spans use the
//! OpenTelemetry HTTP semantic conventions.
//!
//! The request path only fills a plain struct and offers it to a bounded queue
//! (`try_send`: a full queue drops the span and counts it in
//! `tollgate_tracing_spans_dropped_total`); the exporter, a background service, turns
//! batches into OTLP protobuf and POSTs them to the collector. Sampling: a request with a
//! parent follows the parent's sampled flag; a new trace is sampled when the low 64 bits of
//! its id fall under `sample_ratio` (OpenTelemetry's `TraceIdRatioBased` rule, so every
//! service using that rule agrees on a trace). Unsampled requests still propagate context.

use async_trait::async_trait;
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounter;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The request side: sampling and the queue.
pub(crate) struct Tracer {
    /// New traces whose low 64 id bits are below this are sampled.
    threshold: u64,
    always: bool,
    tx: mpsc::Sender<Finished>,
    dropped: IntCounter,
}

/// The export side, a background service.
pub(crate) struct Exporter {
    rx: Mutex<Option<mpsc::Receiver<Finished>>>,
    endpoint: String,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    batch_size: usize,
    flush: Duration,
    timeout: Duration,
    resource: Resource,
    dropped: IntCounter,
}

/// What `[tracing]` asks for.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub endpoint: String,
    pub sample_ratio: f64,
    pub service_name: String,
    pub queue_size: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub export_timeout: Duration,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// A connected tracer and its exporter.
pub(crate) fn channel(s: Settings, dropped: IntCounter) -> (Tracer, Exporter) {
    let (tx, rx) = mpsc::channel(s.queue_size.max(1));
    let ratio = s.sample_ratio.clamp(0.0, 1.0);
    let tracer = Tracer {
        // `u64::MAX as f64` rounds up to 2^64; the cast back saturates.
        threshold: (ratio * u64::MAX as f64) as u64,
        always: ratio >= 1.0,
        tx,
        dropped: dropped.clone(),
    };
    let resource = Resource {
        attributes: vec![
            attr("service.name", s.service_name),
            attr("service.version", env!("CARGO_PKG_VERSION")),
            attr("telemetry.sdk.name", "tollgate"),
            attr("telemetry.sdk.language", "rust"),
        ],
        ..Default::default()
    };
    let exporter = Exporter {
        rx: Mutex::new(Some(rx)),
        endpoint: s.endpoint,
        headers: s.headers,
        batch_size: s.batch_size.max(1),
        flush: s.flush_interval,
        timeout: s.export_timeout,
        resource,
        dropped,
    };
    (tracer, exporter)
}

/// One request's trace context and what its spans will say.
#[derive(Debug)]
pub(crate) struct Trace {
    trace_id: [u8; 16],
    /// The gateway's SERVER span.
    span_id: [u8; 8],
    /// The caller's span, when the request came with a `traceparent`.
    parent: Option<[u8; 8]>,
    sampled: bool,
    state: Option<HeaderValue>,
    start: SystemTime,
    calls: Vec<Call>,
}

/// One CLIENT span: an upstream attempt, or the calls of an aggregation or transcoding.
#[derive(Debug)]
struct Call {
    span_id: [u8; 8],
    name: &'static str,
    start: SystemTime,
    end: Option<SystemTime>,
    peer: Option<Arc<str>>,
    status: Option<u16>,
    error: Option<String>,
}

/// What the SERVER span says about the request, filled at the end.
pub(crate) struct Served<'a> {
    pub method: &'a str,
    pub route: &'a str,
    pub path: &'a str,
    pub scheme: &'static str,
    pub host: Option<&'a str>,
    pub client: Option<IpAddr>,
    pub protocol: &'static str,
    pub user_agent: Option<&'a str>,
    pub status: u16,
    pub request_id: &'a str,
    pub upstream: Option<&'a str>,
    /// The reason word (`docs/observability.md`), as `tollgate.reason`.
    pub reason: Option<&'a str>,
    /// What policies in shadow mode would have refused, as `tollgate.shadow_refusal`.
    pub shadow_refusal: Option<&'a str>,
    pub error: Option<String>,
}

/// A finished request's spans, as queued for export.
struct Finished {
    trace: Trace,
    method: String,
    end: SystemTime,
    attributes: Vec<KeyValue>,
    name: String,
    status: u16,
    error: Option<String>,
}

impl Tracer {
    /// The trace a request belongs to: its parent's, when it sent a valid `traceparent`.
    pub(crate) fn start(&self, headers: &HeaderMap) -> Trace {
        let parent = headers
            .get(&TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()));
        let (trace_id, parent, sampled) = match parent {
            Some((trace, span, sampled)) => (trace, Some(span), sampled),
            None => {
                let id = nonzero_u128().to_be_bytes();
                let low = u64::from_be_bytes(id[8..].try_into().unwrap_or_default());
                (id, None, self.always || low < self.threshold)
            }
        };
        Trace {
            trace_id,
            span_id: nonzero_u64().to_be_bytes(),
            parent,
            sampled,
            state: parent
                .and_then(|_| headers.get(&TRACESTATE))
                .filter(|v| v.len() <= 512)
                .cloned(),
            start: SystemTime::now(),
            calls: Vec::new(),
        }
    }

    /// Queue the request's spans (sampled ones only); never blocks.
    pub(crate) fn finish(&self, trace: Trace, served: &Served<'_>) {
        if !trace.sampled {
            return;
        }
        let mut attributes = vec![
            attr("http.request.method", served.method),
            attr("url.path", served.path),
            attr("url.scheme", served.scheme),
            attr("http.route", served.route),
            attr("http.response.status_code", i64::from(served.status)),
            attr("network.protocol.version", served.protocol),
            attr("tollgate.request_id", served.request_id),
        ];
        if let Some(h) = served.host {
            attributes.push(attr("server.address", h));
        }
        if let Some(ip) = served.client {
            attributes.push(attr("client.address", ip.to_string()));
        }
        if let Some(ua) = served.user_agent {
            attributes.push(attr("user_agent.original", ua));
        }
        if let Some(u) = served.upstream {
            attributes.push(attr("tollgate.upstream", u));
        }
        if let Some(r) = served.reason {
            attributes.push(attr("tollgate.reason", r));
        }
        if let Some(r) = served.shadow_refusal {
            attributes.push(attr("tollgate.shadow_refusal", r));
        }
        let retries = trace.calls.len().saturating_sub(1);
        if retries > 0 {
            attributes.push(attr("tollgate.retries", retries as i64));
        }
        let finished = Finished {
            end: SystemTime::now(),
            name: format!("{} {}", served.method, served.route),
            method: served.method.into(),
            status: served.status,
            error: served.error.clone(),
            attributes,
            trace,
        };
        if self.tx.try_send(finished).is_err() {
            self.dropped.inc();
        }
    }
}

impl Trace {
    /// The trace id, as the access log and `traceparent` write it.
    pub(crate) fn trace_id(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// Begin a CLIENT span (ending the previous one), and return the `traceparent` that
    /// names it as the parent of what the callee does.
    pub(crate) fn call(&mut self, name: &'static str, peer: Option<Arc<str>>) -> HeaderValue {
        let now = SystemTime::now();
        if let Some(last) = self.calls.last_mut() {
            last.end.get_or_insert(now);
        }
        let span_id = nonzero_u64().to_be_bytes();
        self.calls.push(Call {
            span_id,
            name,
            start: now,
            end: None,
            peer,
            status: None,
            error: None,
        });
        self.traceparent(span_id)
    }

    /// The `traceparent` of the current CLIENT span (the server span before any).
    pub(crate) fn current(&self) -> HeaderValue {
        self.traceparent(self.calls.last().map_or(self.span_id, |c| c.span_id))
    }

    /// The caller's `tracestate`, passed on unchanged.
    pub(crate) fn state(&self) -> Option<&HeaderValue> {
        self.state.as_ref()
    }

    /// The current call's response status.
    pub(crate) fn call_status(&mut self, status: u16) {
        if let Some(c) = self.calls.last_mut() {
            c.status = Some(status);
        }
    }

    /// The current call failed.
    pub(crate) fn call_failed(&mut self, error: String) {
        if let Some(c) = self.calls.last_mut() {
            c.error = Some(error);
            c.end.get_or_insert_with(SystemTime::now);
        }
    }

    /// `00-TRACE-SPAN-FLAGS`, written straight into its 55 bytes (this runs for every
    /// upstream attempt, sampled or not).
    fn traceparent(&self, span: [u8; 8]) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        for (i, b) in self.trace_id.iter().chain(span.iter()).enumerate() {
            // The span's digits start after the trace id's 32 and a dash.
            let at = 3 + 2 * i + usize::from(i >= 16);
            out[at] = HEX[usize::from(b >> 4)];
            out[at + 1] = HEX[usize::from(b & 15)];
        }
        out[35] = b'-';
        out[52] = b'-';
        out[53] = b'0';
        out[54] = if self.sampled { b'1' } else { b'0' };
        HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// `version-traceid-parentid-flags` (W3C Trace Context level 1): the trace id, the parent
/// span id and the sampled flag; `None` for anything invalid (all-zero ids, bad hex, version
/// `ff`, a version-00 value with extra fields).
fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], bool)> {
    let text = std::str::from_utf8(v).ok()?.trim();
    let mut parts = text.split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if version.len() != 2 || !lower_hex(version) || version == "ff" {
        return None;
    }
    // Later versions may add fields; version 00 has exactly four.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    if !(lower_hex(trace) && lower_hex(span) && lower_hex(flags)) {
        return None;
    }
    let mut t = [0u8; 16];
    let mut s = [0u8; 8];
    hex::decode_to_slice(trace, &mut t).ok()?;
    hex::decode_to_slice(span, &mut s).ok()?;
    if t == [0; 16] || s == [0; 8] {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((t, s, flags & 1 == 1))
}

fn nonzero_u128() -> u128 {
    fastrand::u128(1..)
}

fn nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// An OTLP attribute.
fn attr(key: &str, value: impl Into<Attr>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(match value.into() {
                Attr::S(s) => any_value::Value::StringValue(s),
                Attr::I(i) => any_value::Value::IntValue(i),
            }),
        }),
        ..Default::default()
    }
}

enum Attr {
    S(String),
    I(i64),
}

impl From<&str> for Attr {
    fn from(s: &str) -> Self {
        Attr::S(s.into())
    }
}

impl From<String> for Attr {
    fn from(s: String) -> Self {
        Attr::S(s)
    }
}

impl From<i64> for Attr {
    fn from(i: i64) -> Self {
        Attr::I(i)
    }
}

/// OTLP status: ERROR for 5xx on a SERVER span (4xx is the client's doing), for 4xx and 5xx
/// on a CLIENT span, and for a failure without a status.
fn span_status(status: Option<u16>, error: Option<&str>, server: bool) -> Option<Status> {
    let bad = match status {
        Some(s) if server => s >= 500,
        Some(s) => s >= 400,
        None => error.is_some(),
    };
    bad.then(|| Status {
        code: status::StatusCode::Error as i32,
        message: error.unwrap_or_default().into(),
    })
}

impl Finished {
    /// The SERVER span and its CLIENT spans.
    fn into_spans(self) -> Vec<Span> {
        let Finished {
            trace,
            method,
            end,
            mut attributes,
            name,
            status,
            error,
        } = self;
        if let Some(e) = &error {
            attributes.push(attr("error.type", e.as_str()));
        }
        let mut spans = Vec::with_capacity(1 + trace.calls.len());
        let trace_state = trace
            .state
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        // Trace flags (sampled) and whether the parent is remote (OTLP `SpanFlags`).
        let flags = 0x101 | u32::from(trace.parent.is_some()) << 9;
        spans.push(Span {
            trace_id: trace.trace_id.to_vec(),
            span_id: trace.span_id.to_vec(),
            parent_span_id: trace.parent.map_or_else(Vec::new, |p| p.to_vec()),
            trace_state: trace_state.clone(),
            flags,
            name,
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: nanos(trace.start),
            end_time_unix_nano: nanos(end),
            attributes,
            status: span_status(Some(status), error.as_deref(), true),
            ..Default::default()
        });
        for (i, c) in trace.calls.into_iter().enumerate() {
            let mut attributes = vec![attr("http.request.method", method.as_str())];
            if let Some(peer) = &c.peer {
                let (addr, port) = peer.rsplit_once(':').unwrap_or((peer, ""));
                attributes.push(attr("server.address", addr.trim_matches(['[', ']'])));
                if let Ok(p) = port.parse::<i64>() {
                    attributes.push(attr("server.port", p));
                }
                attributes.push(attr("network.peer.address", addr.trim_matches(['[', ']'])));
            }
            if let Some(s) = c.status {
                attributes.push(attr("http.response.status_code", i64::from(s)));
            }
            if i > 0 && c.name == UPSTREAM {
                attributes.push(attr("http.request.resend_count", i as i64));
            }
            if let Some(e) = &c.error {
                attributes.push(attr("error.type", e.as_str()));
            }
            spans.push(Span {
                trace_id: trace.trace_id.to_vec(),
                span_id: c.span_id.to_vec(),
                parent_span_id: trace.span_id.to_vec(),
                trace_state: trace_state.clone(),
                flags: 0x101,
                name: c.name.into(),
                kind: span::SpanKind::Client as i32,
                start_time_unix_nano: nanos(c.start),
                end_time_unix_nano: nanos(c.end.unwrap_or(end)),
                attributes,
                status: span_status(c.status, c.error.as_deref(), false),
                ..Default::default()
            });
        }
        spans
    }
}

/// The CLIENT span name of an upstream attempt.
pub(crate) const UPSTREAM: &str = "upstream";
/// The CLIENT span name of an aggregation's or a transcoding's calls.
pub(crate) const CALLS: &str = "calls";

impl Exporter {
    async fn export(&self, client: &reqwest::Client, batch: Vec<Finished>, failing: &mut bool) {
        let count: usize = batch.iter().map(|f| 1 + f.trace.calls.len()).sum();
        let spans: Vec<Span> = batch.into_iter().flat_map(Finished::into_spans).collect();
        let body = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "tollgate".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let mut req = client
            .post(&self.endpoint)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(prost::Message::encode_to_vec(&body));
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let outcome = match req.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("collector answered {}", r.status())),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => {
                if std::mem::take(failing) {
                    log::info!("tracing: exporting to {} again", self.endpoint);
                }
            }
            Err(e) => {
                // Spans are not kept for a retry: a collector that is down would otherwise
                // hold the queue full and drop the newest spans instead of the oldest.
                self.dropped.inc_by(count as u64);
                if !std::mem::replace(failing, true) {
                    log::warn!("tracing: export to {} failed: {e}", self.endpoint);
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Exporter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let rx = self.rx.lock().ok().and_then(|mut rx| rx.take());
        let Some(mut rx) = rx else {
            return;
        };
        let client = match reqwest::Client::builder().timeout(self.timeout).build() {
            Ok(c) => c,
            Err(e) => {
                log::error!("tracing: cannot build the export client: {e}");
                return;
            }
        };
        let mut failing = false;
        let mut tick = tokio::time::interval(self.flush);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut done = false;
        while !done {
            // Like the access log, the exporter wakes on a timer instead of on every span.
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => done = true,
            }
            loop {
                let mut batch = Vec::new();
                while batch.len() < self.batch_size {
                    match rx.try_recv() {
                        Ok(f) => batch.push(f),
                        Err(_) => break,
                    }
                }
                if batch.is_empty() {
                    break;
                }
                let full = batch.len() == self.batch_size;
                self.export(&client, batch, &mut failing).await;
                if !full {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_by_the_w3c_rules() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, s, sampled) = parse_traceparent(good).unwrap();
        assert_eq!(hex::encode(t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(s), "00f067aa0ba902b7");
        assert!(sampled);
        assert!(
            !parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .unwrap()
                .2
        );
        // A later version may carry more fields.
        assert!(parse_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        )
        .is_some());
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"garbage",
            b"",
        ] {
            assert!(
                parse_traceparent(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn traceparent_is_written_as_parsed() {
        let t = Trace {
            trace_id: [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36,
            ],
            span_id: [1; 8],
            parent: None,
            sampled: true,
            state: None,
            start: SystemTime::now(),
            calls: Vec::new(),
        };
        let v = t.traceparent([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(v, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let (trace, span, sampled) = parse_traceparent(v.as_bytes()).unwrap();
        assert_eq!(
            (trace, span, sampled),
            (
                t.trace_id,
                [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
                true
            )
        );
    }

    #[test]
    fn ratio_sampling_keeps_about_the_asked_share() {
        let counter = IntCounter::new("d", "d").unwrap();
        let settings = |ratio| Settings {
            endpoint: String::new(),
            sample_ratio: ratio,
            service_name: "t".into(),
            queue_size: 1,
            batch_size: 1,
            flush_interval: Duration::from_secs(1),
            export_timeout: Duration::from_secs(1),
            headers: Vec::new(),
        };
        let none = HeaderMap::new();
        for (ratio, low, high) in [(0.0, 0, 0), (1.0, 10_000, 10_000), (0.25, 2_300, 2_700)] {
            let (t, _e) = channel(settings(ratio), counter.clone());
            let n = (0..10_000).filter(|_| t.start(&none).sampled).count();
            assert!((low..=high).contains(&n), "ratio {ratio}: {n} of 10000");
        }
        // A parent's decision wins over the ratio.
        let (t, _e) = channel(settings(0.0), counter);
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert!(t.start(&h).sampled);
    }
}
