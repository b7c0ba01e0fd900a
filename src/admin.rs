//! The admin listener (loopback by default): `GET /health`, `/livez`, `/readyz`, `/metrics`,
//! `POST /cache/purge` and `POST /config/reload`.
//!
//! `/health` answers 200 while some upstream group has a healthy target (`"degraded"` when
//! others have none) and 503 when none has, with per-group and per-target detail and the
//! serving configuration's generation; `/livez` and `/readyz` are the probes for
//! orchestrators: alive while the process serves, ready once the health checks ran their
//! first round and until a shutdown or handoff begins. Everything it reports comes from the serving generation; it owns none of its
//! own state.

use crate::cache::Purge;
use crate::observe::metrics::{GroupSample, Scrape, TargetSample};
use crate::reload::{Current, ReloadHandle};
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

pub(crate) struct Admin {
    pub current: Current,
    pub reload: ReloadHandle,
    /// The first configuration finished starting (health checks ran their first round).
    pub ready: Arc<AtomicBool>,
    /// Whether every listener accepts.
    pub listening: Arc<Listening>,
}

impl Admin {
    /// `POST /config/reload`: 200 with the new generation, or 400 with every problem (the
    /// running configuration keeps serving).
    async fn reload(&self) -> (StatusCode, serde_json::Value) {
        match self.reload.reload().await {
            Ok(r) => (
                StatusCode::OK,
                json!({"status": "reloaded", "generation": r.generation, "sha256": r.sha256}),
            ),
            Err(e) => {
                let problems: Vec<_> = e
                    .problems
                    .iter()
                    .map(|p| json!({"key": p.path, "problem": p.message}))
                    .collect();
                (
                    StatusCode::BAD_REQUEST,
                    json!({
                        "error": "configuration refused; the running one keeps serving",
                        "file": e.file.display().to_string(),
                        "problems": problems,
                    }),
                )
            }
        }
    }

    /// `POST /cache/purge?host=H&path=/p?q` or `?prefix=/p`: drop matching cache entries.
    fn purge(&self, query: Option<&str>) -> (StatusCode, serde_json::Value) {
        let gw = self.current.load();
        let Some(cache) = &gw.cache else {
            return (
                StatusCode::NOT_FOUND,
                json!({"error": "no route caches responses"}),
            );
        };
        match Purge::from_query(query.unwrap_or("")) {
            Ok(purge) => {
                let purged = cache.purge(&purge);
                cache.announce(query.unwrap_or(""));
                log::info!("cache purge {purge:?}: {purged} entries removed");
                (StatusCode::OK, json!({ "purged": purged }))
            }
            Err(e) => (StatusCode::BAD_REQUEST, json!({ "error": e })),
        }
    }

    /// `POST /auth/purge?provider=NAME[&subject=SUB]`: drop the cached decisions of one
    /// subject, or all of one service's (`provider` omitted: every service's).
    fn auth_purge(&self, query: Option<&str>) -> (StatusCode, serde_json::Value) {
        let gw = self.current.load();
        let (mut provider, mut subject) = (None, None);
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "provider" => provider = Some(v.into_owned()),
                "subject" => subject = Some(v.into_owned()),
                other => {
                    return (
                        StatusCode::BAD_REQUEST,
                        json!({"error": format!("unknown parameter {other:?}; use provider and subject")}),
                    )
                }
            }
        }
        let services: Vec<_> = gw
            .policy
            .external
            .iter()
            .filter(|s| provider.as_deref().is_none_or(|p| *s.name == *p))
            .collect();
        if services.is_empty() {
            return (
                StatusCode::NOT_FOUND,
                json!({"error": "no forward-auth or introspection service by that name"}),
            );
        }
        for s in &services {
            s.purge(subject.as_deref());
        }
        let names: Vec<&str> = services.iter().map(|s| &*s.name).collect();
        log::info!("auth decision purge: services {names:?}, subject {subject:?}");
        (StatusCode::OK, json!({"purged": names, "subject": subject}))
    }

    /// `/readyz`: whether to send this instance traffic, and why not.
    fn readiness(&self) -> (StatusCode, serde_json::Value) {
        let gw = self.current.load();
        if gw.draining.load(Ordering::Acquire) {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "draining"}),
            )
        } else if !self.listening.all_up() {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "starting", "waiting": "listeners"}),
            )
        } else if !self.ready.load(Ordering::Acquire) {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "starting", "waiting": "health_checks"}),
            )
        } else {
            (StatusCode::OK, json!({"status": "ready"}))
        }
    }

    /// The `/health` document and its status: 200 while some upstream group can serve (its
    /// `"status"` says `"degraded"` when others cannot), 503 when none can.
    pub(crate) fn health(&self) -> (StatusCode, serde_json::Value) {
        let gw = self.current.load();
        let mut all_ok = true;
        let mut any_ok = gw.upstreams.is_empty();
        let groups: serde_json::Map<String, serde_json::Value> = gw
            .upstreams
            .iter()
            .map(|g| {
                let targets = g.health();
                let open = |t: &&crate::upstream::TargetHealth| {
                    t.circuit == Some(crate::upstream::breaker::State::Open)
                };
                let healthy = targets.iter().filter(|t| t.healthy && !open(t)).count();
                all_ok &= healthy > 0;
                any_ok |= healthy > 0;
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
                        "health_checked": g.health_checked(),
                        "discovery": g.discovery(),
                        "targets": detail,
                    }),
                )
            })
            .collect();
        let g = &gw.generation;
        let status = match (all_ok, any_ok) {
            (true, _) => "ok",
            (false, true) => "degraded",
            (false, false) => "down",
        };
        let doc = json!({
            "status": status,
            "version": env!("CARGO_PKG_VERSION"),
            "config": {
                "generation": g.number,
                "sha256": g.sha256,
                "loaded_at": humantime::format_rfc3339_seconds(g.loaded_at).to_string(),
            },
            "upstreams": groups,
        });
        let code = if any_ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (code, doc)
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
        if req.uri.path() == "/auth/purge" {
            let (status, doc) = if req.method == http::Method::POST {
                self.auth_purge(req.uri.query())
            } else {
                (
                    StatusCode::METHOD_NOT_ALLOWED,
                    json!({"error": "method not allowed; use POST"}),
                )
            };
            return response(status, "application/json", doc.to_string().into_bytes());
        }
        if req.uri.path() == "/config/reload" {
            let (status, doc) = if req.method == http::Method::POST {
                self.reload().await
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
                let (status, doc) = self.health();
                response(status, "application/json", doc.to_string().into_bytes())
            }
            (true, "/livez") => response(
                StatusCode::OK,
                "application/json",
                br#"{"status":"alive"}"#.to_vec(),
            ),
            (true, "/readyz") => {
                let (status, doc) = self.readiness();
                response(status, "application/json", doc.to_string().into_bytes())
            }
            (true, "/metrics") => {
                let gw = self.current.load();
                let health: Vec<_> = gw.upstreams.iter().map(|g| (g, g.health())).collect();
                let samples: Vec<TargetSample<'_>> = health
                    .iter()
                    .flat_map(|(g, targets)| {
                        targets.iter().map(|t| TargetSample {
                            group: &g.name,
                            target: &t.target.label,
                            healthy: t.healthy,
                            circuit: t.circuit.map(|c| c as i64),
                        })
                    })
                    .collect();
                let sources: Vec<_> = gw.upstreams.iter().map(|g| (g, g.source())).collect();
                let groups: Vec<GroupSample<'_>> = sources
                    .iter()
                    .map(|(g, s)| GroupSample {
                        group: &g.name,
                        provider: s.provider,
                        targets: s.targets,
                        updated: s.updated.and_then(|t| {
                            t.duration_since(std::time::UNIX_EPOCH)
                                .ok()
                                .map(|d| d.as_secs_f64())
                        }),
                        failing: s.error.is_some(),
                    })
                    .collect();
                let routes: Vec<&str> = gw.routes.routes().iter().map(|r| r.name()).collect();
                let certificates: Vec<(&str, i64)> = gw
                    .listener_certs
                    .iter()
                    .flatten()
                    .flat_map(|store| store.expiries())
                    .collect();
                response(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    gw.metrics.render(&Scrape {
                        targets: &samples,
                        groups: &groups,
                        cache: gw.cache.as_deref(),
                        routes: &routes,
                        certificates: &certificates,
                    }),
                )
            }
            (false, "/health" | "/metrics" | "/livez" | "/readyz") => response(
                StatusCode::METHOD_NOT_ALLOWED,
                "application/json",
                br#"{"error":"method not allowed"}"#.to_vec(),
            ),
            _ => response(
                StatusCode::NOT_FOUND,
                "application/json",
                br#"{"error":"not found; try /health, /livez, /readyz, /metrics, POST /cache/purge, POST /auth/purge or POST /config/reload"}"#.to_vec(),
            ),
        }
    }
}

/// Whether every listening service accepts (`/readyz`), and the first that could not bind.
pub(crate) struct Listening {
    expected: usize,
    up: AtomicUsize,
    pub(crate) failed: watch::Sender<Option<String>>,
}

impl Listening {
    pub(crate) fn new(expected: usize) -> Arc<Listening> {
        Arc::new(Listening {
            expected,
            up: AtomicUsize::new(0),
            failed: watch::channel(None).0,
        })
    }

    /// Every listening service built its listeners and accepts.
    pub(crate) fn all_up(&self) -> bool {
        self.up.load(Ordering::Acquire) >= self.expected
    }

    /// What a listening service reports once its listeners are built, or could not be.
    pub(crate) fn report(self: &Arc<Self>) -> pingora::services::listening::ListenReport {
        let this = self.clone();
        Arc::new(move |built| match built {
            Ok(()) => {
                this.up.fetch_add(1, Ordering::AcqRel);
            }
            Err(e) => {
                // The first failure is the one reported.
                this.failed.send_if_modified(|f| {
                    let first = f.is_none();
                    if first {
                        *f = Some(e);
                    }
                    first
                });
            }
        })
    }
}
