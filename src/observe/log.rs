//! The diagnostic log (stderr, or `server.error_log`): one line per event, as text or as
//! JSON (`[log] format`). A line written while a request is being handled carries its
//! request id: the proxy runs each hook that may log inside `within`, which keeps the id
//! in a task-local that follows the request's task across worker threads. Pingora's own
//! per-request lines ("Fail to proxy: ...") name the request through
//! `ProxyHttp::request_summary`, which says the id too.

use http::HeaderValue;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

pub(crate) use crate::config::types::LogFormat as Format;

/// Lines are JSON (set once the configuration is read; text before).
static JSON: AtomicBool = AtomicBool::new(false);

tokio::task_local! {
    static REQUEST_ID: HeaderValue;
}

/// Install the logger: level from `RUST_LOG` (default `info`), shape from [`set_format`].
pub fn init() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        // NOTE(pingora-0.9): pingora-cache/src/meta.rs warns "no header compression
        // dictionary loaded" at the first cache store. The dictionary only shrinks stored
        // heads; no operator can act on the line, so that module logs errors only.
        .filter_module("pingora_cache::meta", log::LevelFilter::Error)
        .format(|out, record| {
            let id = REQUEST_ID
                .try_with(|id| id.to_str().unwrap_or("").to_owned())
                .ok();
            let time = humantime::format_rfc3339_millis(std::time::SystemTime::now());
            if JSON.load(Ordering::Relaxed) {
                let mut line = serde_json::json!({
                    "time": time.to_string(),
                    "level": record.level().as_str(),
                    "target": record.target(),
                    "message": record.args().to_string(),
                });
                if let Some(id) = id {
                    line["request_id"] = id.into();
                }
                writeln!(out, "{line}")
            } else {
                match id {
                    Some(id) => writeln!(
                        out,
                        "{time} {:<5} {} [{id}] {}",
                        record.level(),
                        record.target(),
                        record.args()
                    ),
                    None => writeln!(
                        out,
                        "{time} {:<5} {} {}",
                        record.level(),
                        record.target(),
                        record.args()
                    ),
                }
            }
        })
        .init();
}

/// Switch the line shape (`[log] format`).
pub fn set_format(format: Format) {
    JSON.store(format == Format::Json, Ordering::Relaxed);
}

/// Run `f` with `id` as the request id of the lines it logs.
pub(crate) async fn within<F: std::future::Future>(id: HeaderValue, f: F) -> F::Output {
    REQUEST_ID.scope(id, f).await
}

/// [`within`], for the synchronous hooks.
pub(crate) fn within_sync<R>(id: HeaderValue, f: impl FnOnce() -> R) -> R {
    REQUEST_ID.sync_scope(id, f)
}
