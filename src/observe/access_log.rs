//! The JSON access log: one line per request, formatted on the worker and written by a
//! background service every 50 ms, so that a slow disk or terminal never stalls request
//! handling and no request pays for waking the writer. When the writer falls behind by more
//! than the configured buffer, lines are dropped and counted (`access_log_dropped_total`)
//! instead of blocking.

use crate::config::Problem;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounter;
use serde::Serialize;
use std::borrow::Cow;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// How often queued lines are written out.
const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Where lines go (`off` never reaches the writer).
pub(crate) use crate::config::types::LogTarget as Target;

/// One request, as logged. Every field is named in `FIELDS`, which
/// `access_log.fields` chooses from.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// When the request ended.
    pub time: Time,
    /// `X-Request-Id`.
    pub request_id: &'a str,
    /// The W3C trace id, on traced requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The client's address.
    pub client_ip: Option<IpAddr>,
    /// The `Host` (or HTTP/2 `:authority`) the client asked for.
    pub host: Option<&'a str>,
    /// The request's method.
    pub method: &'a str,
    /// The canonical path: what routing and policy saw.
    pub path: &'a str,
    /// The query string, with the values of `access_log.redact_query` parameters hidden.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<Cow<'a, str>>,
    /// The request target as the client sent it, when normalization changed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received: Option<&'a str>,
    /// The path sent upstream, when a strip or rewrite changed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarded: Option<&'a str>,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// `TLSv1.3`, `TLSv1.2` on TLS listeners.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<&'a str>,
    /// `User-Agent`.
    pub user_agent: Option<&'a str>,
    /// The matched route's name.
    pub route: &'a str,
    /// The API-key consumer or the token's subject, on authenticated routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<&'a str>,
    /// The status the client got.
    pub status: u16,
    /// The upstream group of the route.
    pub upstream: Option<&'a str>,
    /// The last target tried (`address:port`).
    pub target: Option<&'a str>,
    /// The status the upstream answered with (the last attempt's), when it answered.
    pub upstream_status: Option<u16>,
    /// Upstream attempts made (0 when none was: refused before proxying, cached, ...).
    pub attempts: usize,
    /// Why each retry was made, in order (`connect`, `timeout`, `reset`, `5xx`,
    /// `unavailable`, `stale_connection`).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub retries: &'a [&'static str],
    /// Request start to the end of the response, in microseconds.
    pub duration_us: u64,
    /// Sending upstream to the end of its response, in microseconds.
    pub upstream_us: Option<u64>,
    /// Request body bytes read.
    pub bytes_in: usize,
    /// Response body bytes sent.
    pub bytes_out: usize,
    /// `HIT`, `MISS`, `BYPASS` or `STALE` on caching routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
    /// Why the gateway refused, answered itself, failed or bypassed the cache, as one word
    /// of the reason vocabulary (`token_expired`, `rate_limited:5/10s`,
    /// `cache_bypass:set_cookie`; `docs/observability.md`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// What policies in shadow mode would have refused, `policy:reason` each, joined by
    /// `,` (`auth:missing_credentials,rate_limits:rate_limited`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_refusal: Option<&'a str>,
    /// Why the request failed, in words (`connect refused`, `upstream timeout after 5s`,
    /// `upstream closed before response`, `no healthy target`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The connection was upgraded (WebSocket): duration and bytes cover its whole life.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub upgraded: bool,
    /// A gRPC call's status (from the trailers, or a trailers-only head), and a transcoded
    /// call's upstream status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u8>,
}

/// When a request was logged: RFC 3339 in UTC, to the millisecond.
#[derive(Debug, Clone, Copy)]
pub struct Time(pub std::time::SystemTime);

impl std::fmt::Display for Time {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        humantime::format_rfc3339_millis(self.0).fmt(f)
    }
}

impl Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The names of [`Entry`]'s fields, in line order.
pub(crate) const FIELDS: &[&str] = &[
    "time",
    "request_id",
    "trace_id",
    "client_ip",
    "host",
    "method",
    "path",
    "query",
    "received",
    "forwarded",
    "protocol",
    "tls_version",
    "user_agent",
    "route",
    "consumer",
    "status",
    "upstream",
    "target",
    "upstream_status",
    "attempts",
    "retries",
    "duration_us",
    "upstream_us",
    "bytes_in",
    "bytes_out",
    "cache",
    "reason",
    "shadow_refusal",
    "error",
    "upgraded",
    "grpc_status",
];

/// How lines are shaped (reloadable): which fields, which query values are hidden.
#[derive(Debug, Default)]
pub struct Format {
    /// The fields kept, when `access_log.fields` lists them; all of them otherwise.
    fields: Option<Vec<&'static str>>,
    /// Lower-cased parameter names.
    redact: Vec<String>,
}

impl crate::config::FromConfig for Format {
    type Section = crate::config::file::AccessLogSection;

    /// `[access_log]`'s `fields` and `redact_query`, every unknown field a problem.
    fn from_config(
        at: &str,
        s: &crate::config::file::AccessLogSection,
        _cx: &(),
        problems: &mut Vec<Problem>,
    ) -> Option<Format> {
        Some(Format::of(
            at,
            s.fields.as_deref(),
            &s.redact_query,
            problems,
        ))
    }
}

impl Format {
    fn of(
        at: &str,
        fields: Option<&[String]>,
        redact: &[String],
        problems: &mut Vec<Problem>,
    ) -> Format {
        let fields = fields.map(|list| {
            list.iter()
                .enumerate()
                .filter_map(|(i, f)| match FIELDS.iter().find(|k| **k == f) {
                    Some(k) => Some(*k),
                    None => {
                        problems.push(Problem::unknown(
                            format!("{at}.fields[{i}]"),
                            "access-log field",
                            f,
                            FIELDS,
                        ));
                        None
                    }
                })
                .collect()
        });
        Format {
            fields,
            redact: redact.iter().map(|r| r.to_ascii_lowercase()).collect(),
        }
    }

    /// `query` with the values of redacted parameters replaced by `REDACTED`.
    pub(crate) fn query<'q>(&self, query: &'q str) -> Cow<'q, str> {
        let hidden = |pair: &str| {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n);
            self.redact.iter().any(|r| r.eq_ignore_ascii_case(name))
        };
        if !query.split('&').any(hidden) {
            return Cow::Borrowed(query);
        }
        let parts: Vec<Cow<'_, str>> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if hidden(pair) => Cow::Owned(format!("{name}=REDACTED")),
                _ => Cow::Borrowed(pair),
            })
            .collect();
        Cow::Owned(parts.join("&"))
    }

    /// The entry as one JSON line, the same bytes serde_json writes for it (a unit test
    /// compares the two). With every field kept, the line is written here: the keys are
    /// constants that need no escaping, and only string values go through sonic-rs's escaper,
    /// which checks 32 bytes at a time. Serializing the whole entry through serde was 5,600
    /// of the full chain's instructions per request, half of it escaping the keys
    /// (`docs/performance.md`).
    pub fn line(&self, entry: &Entry<'_>) -> Vec<u8> {
        let Some(keep) = &self.fields else {
            return entry_line(entry);
        };
        let text = serde_json::to_value(entry).and_then(|v| {
            let mut map = match v {
                serde_json::Value::Object(m) => m,
                _ => serde_json::Map::new(),
            };
            map.retain(|k, _| keep.contains(&k.as_str()));
            serde_json::to_string(&map)
        });
        let mut line = text.unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        line.push('\n');
        line.into_bytes()
    }
}

/// `,"name":`, the text that opens a field after the first.
macro_rules! k {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

/// Every field of `entry`, in [`FIELDS`] order, as `Serialize` writes them: the fields marked
/// `skip_serializing_if` are left out when empty, the others are `null` when empty.
fn entry_line(e: &Entry<'_>) -> Vec<u8> {
    let mut w = JsonLine(Vec::with_capacity(512));
    w.0.extend_from_slice(b"{\"time\":");
    w.display(&e.time);
    w.str(k!("request_id"), e.request_id);
    if let Some(t) = &e.trace_id {
        w.str(k!("trace_id"), t);
    }
    match e.client_ip {
        Some(ip) => {
            w.key(k!("client_ip"));
            w.ip(ip);
        }
        None => w.null(k!("client_ip")),
    }
    w.opt_str(k!("host"), e.host);
    w.str(k!("method"), e.method);
    w.str(k!("path"), e.path);
    if let Some(q) = &e.query {
        w.str(k!("query"), q);
    }
    if let Some(r) = e.received {
        w.str(k!("received"), r);
    }
    if let Some(f) = e.forwarded {
        w.str(k!("forwarded"), f);
    }
    w.str(k!("protocol"), e.protocol);
    if let Some(v) = e.tls_version {
        w.str(k!("tls_version"), v);
    }
    w.opt_str(k!("user_agent"), e.user_agent);
    w.str(k!("route"), e.route);
    if let Some(c) = e.consumer {
        w.str(k!("consumer"), c);
    }
    w.num(k!("status"), e.status);
    w.opt_str(k!("upstream"), e.upstream);
    w.opt_str(k!("target"), e.target);
    w.opt_num(k!("upstream_status"), e.upstream_status);
    w.num(k!("attempts"), e.attempts);
    if !e.retries.is_empty() {
        w.strs(k!("retries"), e.retries);
    }
    w.num(k!("duration_us"), e.duration_us);
    w.opt_num(k!("upstream_us"), e.upstream_us);
    w.num(k!("bytes_in"), e.bytes_in);
    w.num(k!("bytes_out"), e.bytes_out);
    if let Some(c) = e.cache {
        w.str(k!("cache"), c);
    }
    if let Some(r) = e.reason {
        w.str(k!("reason"), r);
    }
    if let Some(r) = e.shadow_refusal {
        w.str(k!("shadow_refusal"), r);
    }
    if let Some(err) = &e.error {
        w.str(k!("error"), err);
    }
    if e.upgraded {
        w.key(k!("upgraded"));
        w.0.extend_from_slice(b"true");
    }
    if let Some(g) = e.grpc_status {
        w.num(k!("grpc_status"), g);
    }
    w.finish()
}

/// A JSON object written field by field. Each key is `k!` of a name in [`FIELDS`]: plain
/// ASCII, nothing to escape.
struct JsonLine(Vec<u8>);

impl JsonLine {
    fn key(&mut self, key: &'static str) {
        self.0.extend_from_slice(key.as_bytes());
    }

    fn str(&mut self, key: &'static str, value: &str) {
        self.key(key);
        self.string(value);
    }

    fn string(&mut self, value: &str) {
        use sonic_rs::format::Formatter;
        // Writing into a Vec cannot fail.
        let _ = sonic_rs::format::CompactFormatter.write_string_fast(&mut self.0, value, true);
    }

    fn opt_str(&mut self, key: &'static str, value: Option<&str>) {
        match value {
            Some(v) => self.str(key, v),
            None => self.null(key),
        }
    }

    fn strs(&mut self, key: &'static str, values: &[&str]) {
        self.key(key);
        self.0.push(b'[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.0.push(b',');
            }
            self.string(v);
        }
        self.0.push(b']');
    }

    fn num(&mut self, key: &'static str, value: impl itoa::Integer) {
        self.key(key);
        self.int(value);
    }

    fn int(&mut self, value: impl itoa::Integer) {
        self.0
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn opt_num(&mut self, key: &'static str, value: Option<impl itoa::Integer>) {
        match value {
            Some(v) => self.num(key, v),
            None => self.null(key),
        }
    }

    fn null(&mut self, key: &'static str) {
        self.key(key);
        self.0.extend_from_slice(b"null");
    }

    /// An address, quoted. IPv4 is written octet by octet, as serde does: `Display` pads
    /// and formats each octet through `fmt`, which cost more than the rest of the line's
    /// numbers together.
    fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                self.0.push(b'"');
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.0.push(b'.');
                    }
                    self.int(octet);
                }
                self.0.push(b'"');
            }
            IpAddr::V6(v6) => self.display(&v6),
        }
    }

    /// A value whose text needs no escaping (an IPv6 address, a timestamp), quoted.
    fn display(&mut self, value: &impl std::fmt::Display) {
        use std::fmt::Write as _;
        self.0.push(b'"');
        let _ = write!(self, "{value}");
        self.0.push(b'"');
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(b"}\n");
        self.0
    }
}

impl std::fmt::Write for JsonLine {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The worker side: cheap to call, never blocks.
#[derive(Clone)]
pub(crate) struct AccessLog {
    tx: mpsc::Sender<Vec<u8>>,
    dropped: IntCounter,
}

impl AccessLog {
    pub(crate) fn log(&self, format: &Format, entry: &Entry<'_>) {
        if self.tx.try_send(format.line(entry)).is_err() {
            self.dropped.inc();
        }
    }
}

/// The writer side, run as a Pingora background service.
pub(crate) struct AccessLogWriter {
    target: Target,
    rx: Mutex<Option<mpsc::Receiver<Vec<u8>>>>,
    /// Set by `SIGUSR1`: reopen the file (after logrotate moved it away).
    reopen: Arc<AtomicBool>,
}

/// A connected logger and its writer.
pub(crate) fn channel(
    target: Target,
    buffer: usize,
    dropped: IntCounter,
) -> (AccessLog, AccessLogWriter) {
    let (tx, rx) = mpsc::channel(buffer.max(1));
    let reopen = Arc::new(AtomicBool::new(false));
    (
        AccessLog { tx, dropped },
        AccessLogWriter {
            target,
            rx: Mutex::new(Some(rx)),
            reopen,
        },
    )
}

impl AccessLogWriter {
    /// The flag `SIGUSR1` sets to have the file reopened (the server registers it).
    pub(crate) fn reopen_flag(&self) -> Arc<AtomicBool> {
        self.reopen.clone()
    }

    fn open(&self) -> std::io::Result<Box<dyn Write + Send>> {
        Ok(match &self.target {
            Target::Stdout | Target::Off => Box::new(std::io::stdout()),
            Target::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        })
    }
}

#[async_trait]
impl BackgroundService for AccessLogWriter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let rx = self.rx.lock().ok().and_then(|mut rx| rx.take());
        let Some(mut rx) = rx else {
            return;
        };
        let out = match self.open() {
            Ok(out) => out,
            Err(e) => {
                log::error!("cannot open access log {:?}: {e}", self.target);
                return;
            }
        };
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
        let mut batch = Vec::with_capacity(1024);
        // The writer wakes on a timer and drains whatever queued up, instead of waiting on
        // the channel: a waiting receiver would be woken (a cross-thread wake-up) for every
        // request, which cost about a quarter of the gateway's CPU per request when measured.
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            while let Ok(line) = rx.try_recv() {
                batch.push(line);
            }
            if !batch.is_empty() {
                write_batch(&mut out, &mut batch);
                let _ = out.flush();
            }
            // What was queued before the signal went to the old file; what follows goes to
            // the new one. A file that cannot be opened keeps the old one (lines still land).
            if self.reopen.swap(false, Ordering::AcqRel) && matches!(self.target, Target::File(_)) {
                match self.open() {
                    Ok(new) => {
                        out = std::io::BufWriter::with_capacity(64 * 1024, new);
                        log::info!("access log reopened: {:?}", self.target);
                    }
                    Err(e) => log::error!("cannot reopen access log {:?}: {e}", self.target),
                }
            }
        }
        while let Ok(line) = rx.try_recv() {
            batch.push(line);
        }
        write_batch(&mut out, &mut batch);
        let _ = out.flush();
    }
}

fn write_batch(out: &mut impl Write, batch: &mut Vec<Vec<u8>>) {
    for line in batch.drain(..) {
        if let Err(e) = out.write_all(&line) {
            log::error!("writing access log failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry with every field set, each string field to `text`.
    fn full(text: &str) -> Entry<'_> {
        Entry {
            time: Time(std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_796_580_000_123)),
            request_id: text,
            trace_id: Some(format!("{text}-trace")),
            client_ip: Some("2001:db8::1".parse().expect("an address")),
            host: Some(text),
            method: text,
            path: text,
            query: Some(Cow::Borrowed(text)),
            received: Some(text),
            forwarded: Some(text),
            protocol: "HTTP/1.1",
            tls_version: Some(text),
            user_agent: Some(text),
            route: text,
            consumer: Some(text),
            status: 200,
            upstream: Some(text),
            target: Some(text),
            upstream_status: Some(503),
            attempts: 2,
            retries: &["connect", "5xx"],
            duration_us: u64::MAX,
            upstream_us: Some(0),
            bytes_in: 7,
            bytes_out: usize::MAX,
            cache: Some("HIT"),
            reason: Some(text),
            shadow_refusal: Some(text),
            error: Some(format!("{text} failed")),
            upgraded: true,
            grpc_status: Some(14),
        }
    }

    /// An entry with every optional field empty.
    fn empty(text: &str) -> Entry<'_> {
        Entry {
            time: Time(std::time::UNIX_EPOCH),
            request_id: text,
            trace_id: None,
            client_ip: None,
            host: None,
            method: text,
            path: text,
            query: None,
            received: None,
            forwarded: None,
            protocol: "HTTP/2",
            tls_version: None,
            user_agent: None,
            route: text,
            consumer: None,
            status: 0,
            upstream: None,
            target: None,
            upstream_status: None,
            attempts: 0,
            retries: &[],
            duration_us: 0,
            upstream_us: None,
            bytes_in: 0,
            bytes_out: 0,
            cache: None,
            reason: None,
            shadow_refusal: None,
            error: None,
            upgraded: false,
            grpc_status: None,
        }
    }

    /// The hand-written line is what serde_json writes for the same entry: the same fields in
    /// the same order, the same ones left out or `null`, and every string escaped the same
    /// way (quotes, backslashes, control bytes, non-ASCII). A field added to `Entry` but not
    /// to `entry_line` fails here.
    #[test]
    fn lines_are_exactly_what_serde_json_writes() {
        let format = Format::default();
        for text in [
            "h2load nghttp2/1.52.0",
            "/q\"uo\\te",
            "tab\there\r\nnew line \u{1} \u{1f}",
            "/ünï/cødé/日本 \u{1F600} and \u{7f} and \u{2028}",
            "",
        ] {
            let mut entries = vec![full(text), empty(text)];
            for ip in [
                "203.0.113.7",
                "0.0.0.0",
                "255.255.255.255",
                "::ffff:10.0.0.1",
            ] {
                let mut e = full(text);
                e.client_ip = Some(ip.parse().expect("an address"));
                entries.push(e);
            }
            for e in entries {
                let want = serde_json::to_string(&e).expect("serde_json") + "\n";
                assert_eq!(String::from_utf8_lossy(&format.line(&e)), want);
                let parsed: serde_json::Value = serde_json::from_str(&want).expect("valid JSON");
                assert_eq!(parsed["path"], text);
            }
        }
        let line = format.line(&full("x"));
        let parsed: serde_json::Value = serde_json::from_slice(&line).expect("valid JSON");
        let keys: Vec<&str> = parsed
            .as_object()
            .expect("an object")
            .keys()
            .map(|k| &**k)
            .collect();
        assert_eq!(
            keys, FIELDS,
            "a full entry carries every field, in FIELDS order"
        );
        assert_eq!(parsed["time"], "2026-12-06T18:00:00.123Z");
    }

    /// With `fields`, only those are kept, in line order.
    #[test]
    fn fields_trims_the_line() {
        let mut problems = Vec::new();
        let keep = ["status".to_string(), "path".to_string()];
        let format = Format::of("access_log", Some(&keep), &[], &mut problems);
        assert!(problems.is_empty());
        let line = format.line(&full("/a"));
        assert_eq!(
            String::from_utf8_lossy(&line),
            "{\"path\":\"/a\",\"status\":200}\n"
        );
    }
}
