//! The admin listener (loopback by default): `GET /health`, `GET /metrics` and
//! `POST /cache/purge`.
//!
//! `/health` answers 200 when every upstream group has at least one healthy target and 503
//! otherwise, with per-group and per-target detail. Everything it reports comes from the
//! compiled gateway's shared state; it owns none of its own.

use crate::cache::{Purge, ResponseCache};
use crate::observe::metrics::Metrics;
use crate::upstream::UpstreamGroup;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;

pub struct Admin {
    pub upstreams: Vec<Arc<UpstreamGroup>>,
    pub metrics: Arc<Metrics>,
    pub cache: Option<Arc<ResponseCache>>,
}

impl Admin {
    /// `POST /cache/purge?host=H&path=/p?q` or `?prefix=/p`: drop matching cache entries.
    fn purge(&self, query: Option<&str>) -> (StatusCode, serde_json::Value) {
        let Some(cache) = &self.cache else {
            return (
                StatusCode::NOT_FOUND,
                json!({"error": "no route caches responses"}),
            );
        };
        match Purge::from_query(query.unwrap_or("")) {
            Ok(purge) => {
                let purged = cache.purge(&purge);
                log::info!("cache purge {purge:?}: {purged} entries removed");
                (StatusCode::OK, json!({ "purged": purged }))
            }
            Err(e) => (StatusCode::BAD_REQUEST, json!({ "error": e })),
        }
    }

    /// The `/health` document and whether the gateway is fully serviceable.
    pub fn health(&self) -> (bool, serde_json::Value) {
        let mut all_ok = true;
        let groups: serde_json::Map<String, serde_json::Value> = self
            .upstreams
            .iter()
            .map(|g| {
                let targets = g.health();
                let open = |t: &&crate::upstream::TargetHealth| {
                    t.circuit == Some(crate::upstream::breaker::State::Open)
                };
                let healthy = targets.iter().filter(|t| t.healthy && !open(t)).count();
                all_ok &= healthy > 0;
                let detail: Vec<_> = targets
                    .iter()
                    .map(|t| {
                        json!({
                            "address": &*t.target.label,
                            "weight": t.weight,
                            "healthy": t.healthy,
                            "in_flight": t.target.inflight(),
                            "circuit": t.circuit.map(|c| c.as_str()),
                        })
                    })
                    .collect();
                let status = if healthy > 0 { "up" } else { "down" };
                (
                    g.name.to_string(),
                    json!({
                        "status": status,
                        "healthy_targets": healthy,
                        "health_checked": g.health_checked,
                        "targets": detail,
                    }),
                )
            })
            .collect();
        let doc = json!({
            "status": if all_ok { "ok" } else { "degraded" },
            "version": env!("CARGO_PKG_VERSION"),
            "upstreams": groups,
        });
        (all_ok, doc)
    }
}

fn response(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let get = req.method == http::Method::GET || req.method == http::Method::HEAD;
        if req.uri.path() == "/cache/purge" {
            let (status, doc) = if req.method == http::Method::POST {
                self.purge(req.uri.query())
            } else {
                (
                    StatusCode::METHOD_NOT_ALLOWED,
                    json!({"error": "method not allowed; use POST"}),
                )
            };
            return response(status, "application/json", doc.to_string().into_bytes());
        }
        match (get, req.uri.path()) {
            (true, "/health") => {
                let (ok, doc) = self.health();
                let status = if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                response(status, "application/json", doc.to_string().into_bytes())
            }
            (true, "/metrics") => response(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(&self.upstreams, self.cache.as_deref()),
            ),
            (false, "/health" | "/metrics") => response(
                StatusCode::METHOD_NOT_ALLOWED,
                "application/json",
                br#"{"error":"method not allowed"}"#.to_vec(),
            ),
            _ => response(
                StatusCode::NOT_FOUND,
                "application/json",
                br#"{"error":"not found; try /health, /metrics or POST /cache/purge"}"#.to_vec(),
            ),
        }
    }
}
