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
    pub time: String,
    pub request_id: &'a str,
    /// The W3C trace id, on traced requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub client_ip: Option<IpAddr>,
    /// The `Host` (or HTTP/2 `:authority`) the client asked for.
    pub host: Option<&'a str>,
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
    pub user_agent: Option<&'a str>,
    pub route: &'a str,
    /// The API-key consumer or the token's subject, on authenticated routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<&'a str>,
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
    pub bytes_in: usize,
    pub bytes_out: usize,
    /// `HIT`, `MISS`, `BYPASS` or `STALE` on caching routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
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

impl Format {
    /// `[access_log]`'s `fields` and `redact_query`, every unknown field a problem.
    pub(crate) fn from_config(
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
                            format!("access_log.fields[{i}]"),
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

    /// The entry as one JSON line. Every field goes through sonic-rs, whose string escaping
    /// checks 32 bytes at a time: serde_json's byte-by-byte escaping of the keys and values
    /// was 3,900 of the full chain's instructions per request (`docs/performance.md`).
    pub fn line(&self, entry: &Entry<'_>) -> String {
        let text = match &self.fields {
            None => sonic_rs::to_string(entry).map_err(|e| e.to_string()),
            Some(keep) => serde_json::to_value(entry)
                .and_then(|v| {
                    let mut map = match v {
                        serde_json::Value::Object(m) => m,
                        _ => serde_json::Map::new(),
                    };
                    map.retain(|k, _| keep.contains(&k.as_str()));
                    serde_json::to_string(&map)
                })
                .map_err(|e| e.to_string()),
        };
        let mut line = text.unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        line.push('\n');
        line
    }
}

/// The worker side: cheap to call, never blocks.
#[derive(Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<String>,
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
pub struct AccessLogWriter {
    target: Target,
    rx: Mutex<Option<mpsc::Receiver<String>>>,
    /// Set by `SIGUSR1`: reopen the file (after logrotate moved it away).
    reopen: Arc<AtomicBool>,
}

/// A connected logger and its writer.
pub fn channel(target: Target, buffer: usize, dropped: IntCounter) -> (AccessLog, AccessLogWriter) {
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

fn write_batch(out: &mut impl Write, batch: &mut Vec<String>) {
    for line in batch.drain(..) {
        if let Err(e) = out.write_all(line.as_bytes()) {
            log::error!("writing access log failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(path: &'a str, user_agent: &'a str) -> Entry<'a> {
        Entry {
            time: "2026-12-06T18:00:00.123Z".into(),
            request_id: "0123abcd",
            trace_id: None,
            client_ip: Some("2001:db8::1".parse().expect("an address")),
            host: Some("api.example"),
            method: "GET",
            path,
            query: Some(Cow::Borrowed("a=1&b=\"2\"")),
            received: None,
            forwarded: Some("/v2/x"),
            protocol: "HTTP/1.1",
            tls_version: None,
            user_agent: Some(user_agent),
            route: "api",
            consumer: None,
            status: 200,
            upstream: Some("backend"),
            target: None,
            upstream_status: Some(200),
            attempts: 1,
            retries: &["connect"],
            duration_us: 1234,
            upstream_us: None,
            bytes_in: 0,
            bytes_out: 2,
            cache: None,
            error: Some("upstream closed mid-response".into()),
            upgraded: false,
            grpc_status: None,
        }
    }

    /// The line is what serde_json writes for the same entry: the same fields in the same
    /// order, and every string escaped the same way (quotes, backslashes, control bytes,
    /// non-ASCII).
    #[test]
    fn lines_are_exactly_what_serde_json_writes() {
        let format = Format::default();
        for (path, agent) in [
            ("/plain", "h2load nghttp2/1.52.0"),
            ("/q\"uo\\te", "tab\there\r\nnew line \u{1} \u{1f}"),
            ("/ünï/cødé/日本", "emoji \u{1F600} and \u{7f} and \u{2028}"),
            ("", ""),
        ] {
            let e = entry(path, agent);
            let want = serde_json::to_string(&e).expect("serde_json") + "\n";
            assert_eq!(format.line(&e), want);
            let parsed: serde_json::Value = serde_json::from_str(&want).expect("valid JSON");
            assert_eq!(parsed["path"], path);
            assert_eq!(parsed["user_agent"], agent);
        }
    }
}
