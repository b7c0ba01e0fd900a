//! The JSON access log: one line per request, formatted on the worker and written by a
//! background service every 50 ms, so that a slow disk or terminal never stalls request
//! handling and no request pays for waking the writer. When the writer falls behind by more
//! than the configured buffer, lines are dropped and counted (`access_log_dropped_total`)
//! instead of blocking.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounter;
use serde::Serialize;
use std::io::Write;
use std::net::IpAddr;
use std::sync::Mutex;
use tokio::sync::mpsc;

/// How often queued lines are written out.
const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Where lines go (`off` never reaches the writer).
pub(crate) use crate::config::types::LogTarget as Target;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub client_ip: Option<IpAddr>,
    pub route: &'a str,
    pub method: &'a str,
    /// The canonical path: what routing and policy saw.
    pub path: &'a str,
    /// The request target as the client sent it, when normalization changed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received: Option<&'a str>,
    /// The path sent upstream, when a strip or rewrite changed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarded: Option<&'a str>,
    pub status: u16,
    pub upstream: Option<&'a str>,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub bytes_in: usize,
    pub bytes_out: usize,
    /// `HIT`, `MISS`, `BYPASS` or `STALE` on caching routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
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

impl Entry<'_> {
    pub fn to_line(&self) -> String {
        let mut line =
            serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
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
    pub fn log(&self, entry: &Entry<'_>) {
        if self.tx.try_send(entry.to_line()).is_err() {
            self.dropped.inc();
        }
    }
}

/// The writer side, run as a Pingora background service.
pub struct AccessLogWriter {
    target: Target,
    rx: Mutex<Option<mpsc::Receiver<String>>>,
}

/// A connected logger and its writer.
pub fn channel(target: Target, buffer: usize, dropped: IntCounter) -> (AccessLog, AccessLogWriter) {
    let (tx, rx) = mpsc::channel(buffer.max(1));
    (
        AccessLog { tx, dropped },
        AccessLogWriter {
            target,
            rx: Mutex::new(Some(rx)),
        },
    )
}

impl AccessLogWriter {
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
