//! Targets from etcd v3 (`[upstreams.NAME.etcd]`): every key under a prefix is one instance,
//! its value JSON `{"address": "IP:PORT", "weight": 2}`. A background task of the serving
//! generation reads the prefix, then watches it from the next revision (no polling): puts
//! add or change an instance, deletes (and lease expiries, which etcd turns into deletes)
//! remove it. When etcd cannot be reached the last known set keeps serving; the task tries
//! the endpoints in turn with back-off (100 ms doubling to 5 s) and reads the prefix again
//! once one answers, so nothing missed while it was away stays missed.
//!
//! It speaks etcd's own HTTP/JSON API (the gRPC gateway every etcd v3 serves at `/v3/`) with
//! reqwest, already in the build: etcd's Rust gRPC client would bring `protoc` into every
//! build for three calls.

use super::{lock, SourceStatus};
use crate::upstream::target::{parse_target_value, TargetSpec};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One group's etcd prefix and what is known under it.
pub(crate) struct EtcdSource {
    endpoints: Vec<String>,
    prefix: String,
    client: reqwest::Client,
    known: Mutex<Known>,
    status: Arc<Mutex<SourceStatus>>,
}

#[derive(Default)]
struct Known {
    /// Instance by key.
    instances: BTreeMap<String, TargetSpec>,
    /// Set once the prefix was read.
    loaded: bool,
}

/// The key after every key that starts with `prefix` (etcd's `range_end`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdSource {
    pub(crate) fn new(
        endpoints: Vec<String>,
        prefix: String,
        status: Arc<Mutex<SourceStatus>>,
    ) -> Result<EtcdSource, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(EtcdSource {
            endpoints,
            prefix,
            client,
            known: Mutex::new(Known::default()),
            status,
        })
    }

    pub(crate) fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The instances now, and whether the prefix was ever read.
    pub(crate) fn current(&self) -> (Vec<TargetSpec>, bool) {
        let k = lock(&self.known);
        (k.instances.values().cloned().collect(), k.loaded)
    }

    // NOTE(pingora-0.9): pingora-load-balancing/src/discovery.rs (`ServiceDiscovery`):
    // discovery is pulled (`discover()`, every `update_frequency`), while etcd pushes through a
    // watch. The watch runs as its own background service (`EtcdWatch`) into `known`, and
    // each `discover()` takes what it holds; the first `discover()` (the group's build, before
    // any background service runs) reads the prefix itself.
    /// Take the instances the watch holds into `targets` (reading the prefix once if it never
    /// was: at start-up, before the watch runs); `true` when the list changed.
    pub(super) async fn take(&self, targets: &Mutex<Vec<TargetSpec>>) -> bool {
        let (mut specs, mut loaded) = self.current();
        if !loaded {
            if let Some(first) = self.endpoints().first() {
                if self.read(first).await.is_ok() {
                    (specs, loaded) = self.current();
                }
            }
        }
        if !loaded {
            return false;
        }
        let mut targets = lock(targets);
        let changed = *targets != specs;
        *targets = specs;
        changed
    }

    fn range_body(&self, start_revision: Option<i64>) -> serde_json::Value {
        let key = B64.encode(self.prefix.as_bytes());
        let range_end = B64.encode(prefix_end(self.prefix.as_bytes()));
        match start_revision {
            None => serde_json::json!({ "key": key, "range_end": range_end }),
            Some(rev) => serde_json::json!({ "create_request": {
                "key": key, "range_end": range_end, "start_revision": rev.to_string(),
            }}),
        }
    }

    /// Read every instance under the prefix from `endpoint`; the revision read at.
    pub(crate) async fn read(&self, endpoint: &str) -> Result<i64, String> {
        let resp = self
            .client
            .post(format!("{}/v3/kv/range", endpoint.trim_end_matches('/')))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(self.range_body(None).to_string())
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("{endpoint}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{endpoint}: HTTP {}", resp.status()));
        }
        let body = resp.bytes().await.map_err(|e| format!("{endpoint}: {e}"))?;
        let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let revision = revision_of(&doc["header"]).ok_or("answer without a revision")?;
        let mut instances = BTreeMap::new();
        for kv in doc["kvs"].as_array().into_iter().flatten() {
            if let Some((key, spec)) = self.instance(kv) {
                instances.insert(key, spec);
            }
        }
        let mut k = lock(&self.known);
        k.instances = instances;
        k.loaded = true;
        Ok(revision)
    }

    /// A key-value as an instance; a value that is not a target is logged and skipped.
    fn instance(&self, kv: &serde_json::Value) -> Option<(String, TargetSpec)> {
        let key = decode(&kv["key"])?;
        let value = decode(&kv["value"]).unwrap_or_default();
        match parse_target_value(&value) {
            Ok(spec) => Some((key, spec)),
            Err(e) => {
                log::warn!("etcd {key}: {e}; the instance is left out");
                None
            }
        }
    }

    /// Watch the prefix from `revision` on `endpoint` until the stream breaks.
    async fn watch(&self, endpoint: &str, revision: i64) -> Result<(), String> {
        let mut resp = self
            .client
            .post(format!("{}/v3/watch", endpoint.trim_end_matches('/')))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(self.range_body(Some(revision)).to_string())
            .send()
            .await
            .map_err(|e| format!("{endpoint}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{endpoint}: HTTP {}", resp.status()));
        }
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = resp
                .chunk()
                .await
                .map_err(|e| format!("{endpoint}: watch broke: {e}"))?
                .ok_or_else(|| format!("{endpoint}: watch ended"))?;
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let doc: serde_json::Value = serde_json::from_slice(&line)
                    .map_err(|e| format!("{endpoint}: malformed watch event: {e}"))?;
                let result = &doc["result"];
                if result["canceled"].as_bool() == Some(true) || doc.get("error").is_some() {
                    return Err(format!("{endpoint}: watch canceled ({doc})"));
                }
                self.apply(result["events"].as_array().map_or(&[][..], |v| v));
            }
        }
    }

    fn apply(&self, events: &[serde_json::Value]) {
        if events.is_empty() {
            return;
        }
        let mut k = lock(&self.known);
        for ev in events {
            let kv = &ev["kv"];
            if ev["type"].as_str() == Some("DELETE") {
                if let Some(key) = decode(&kv["key"]) {
                    k.instances.remove(&key);
                }
            } else if let Some((key, spec)) = self.instance(kv) {
                k.instances.insert(key, spec);
            }
        }
    }

    fn failed(&self, why: String) {
        let mut s = lock(&self.status);
        if s.error.as_deref() != Some(why.as_str()) {
            log::warn!(
                "etcd {}: {why}; the last known targets keep serving",
                self.prefix
            );
        }
        s.error = Some(why);
    }
}

fn decode(v: &serde_json::Value) -> Option<String> {
    let bytes = B64.decode(v.as_str()?).ok()?;
    String::from_utf8(bytes).ok()
}

fn revision_of(header: &serde_json::Value) -> Option<i64> {
    header["revision"].as_str()?.parse().ok()
}

/// The watch, run as the serving generation's background work.
pub(crate) struct EtcdWatch(pub Arc<EtcdSource>);

#[async_trait]
impl BackgroundService for EtcdWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let source = &self.0;
        let mut backoff = BACKOFF_FIRST;
        let mut next = 0usize;
        loop {
            let endpoint = source.endpoints[next % source.endpoints.len()].clone();
            let mut read_ok = false;
            let round = async {
                let revision = source.read(&endpoint).await?;
                read_ok = true;
                lock(&source.status).error = None;
                source.watch(&endpoint, revision + 1).await
            };
            let outcome = tokio::select! {
                r = round => r,
                _ = shutdown.changed() => return,
            };
            if read_ok {
                // etcd answered: a broken watch is retried soon, on the same endpoint.
                backoff = BACKOFF_FIRST;
            } else {
                next += 1;
            }
            if let Err(e) = outcome {
                source.failed(e);
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            if !read_ok {
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}
