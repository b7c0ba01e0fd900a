//! The admin listener (loopback by default): `GET /health`, `/livez`, `/readyz`, `/metrics`,
//! `/routes` (the routing table), `/openapi.json` (the published OpenAPI document),
//! `POST /cache/purge`, `POST /config/reload` and `POST /upstreams/NAME/targets/ADDR/drain`
//! (or `/enable`).
//!
//! `/health` answers 200 while some upstream group has a healthy target not drained
//! (`"degraded"` when others have none) and 503 when none has, with per-group and per-target detail and the
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

    /// `POST /cache/purge?host=H&path=/p?q` or `?prefix=/p`: drop matching cache entries;
    /// with `[cache.shared]`, answered once Redis confirmed (`purged_shared`), else 503.
    async fn purge(&self, query: Option<&str>) -> (StatusCode, serde_json::Value) {
        let Some(cache) = self.current.load().cache.clone() else {
            return (
                StatusCode::NOT_FOUND,
                json!({"error": "no route caches responses"}),
            );
        };
        match Purge::from_query(query.unwrap_or("")) {
            Ok(purge) => {
                let done = cache.purge_fleet(&purge, query.unwrap_or("")).await;
                let purged = done.memory;
                log::info!(
                    "cache purge {purge:?}: {purged} entries removed, Redis: {:?}",
                    done.shared
                );
                match done.shared {
                    None => (StatusCode::OK, json!({ "purged": purged })),
                    Some(Ok(shared)) => (
                        StatusCode::OK,
                        json!({ "purged": purged, "purged_shared": shared }),
                    ),
                    Some(Err(e)) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({ "error": e, "purged": purged }),
                    ),
                }
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

    /// `POST /upstreams/NAME/targets/ADDR/drain` (`drain`) or `.../enable`: the target of the
    /// serving generation takes no new request, or takes them again; requests on it finish.
    fn drain(&self, name: &str, addr: &str, drain: bool) -> (StatusCode, serde_json::Value) {
        let gw = self.current.load();
        let Some(group) = gw.upstreams.iter().find(|g| *g.name == *name) else {
            let defined: Vec<&str> = gw.upstreams.iter().map(|g| &*g.name).collect();
            return (
                StatusCode::NOT_FOUND,
                json!({"error": format!("no upstream {name:?}"), "upstreams": defined}),
            );
        };
        let addr = percent_encoding::percent_decode_str(addr).decode_utf8_lossy();
        let Some(target) = addr
            .parse::<std::net::SocketAddr>()
            .ok()
            .and_then(|a| group.target(a))
        else {
            return (
                StatusCode::NOT_FOUND,
                json!({
                    "error": format!("no target {addr:?} in upstream {name:?}"),
                    "targets": group.target_labels().iter().map(|l| &**l).collect::<Vec<_>>(),
                }),
            );
        };
        let was = target.set_drained(drain);
        let state = if drain { "drain" } else { "ready" };
        if was != drain {
            log::info!(
                "upstream {name}: target {} set to {state} by the admin listener ({} in flight)",
                target.label,
                target.inflight()
            );
        }
        (
            StatusCode::OK,
            json!({
                "upstream": name,
                "target": &*target.label,
                "state": state,
                "in_flight": target.inflight(),
            }),
        )
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
                let drained = targets.iter().filter(|t| t.drained).count();
                // Drained targets take no new request: they do not make a group up.
                let serving = targets
                    .iter()
                    .filter(|t| t.healthy && !open(t) && !t.drained)
                    .count();
                all_ok &= serving > 0;
                any_ok |= serving > 0;
                let detail: Vec<_> = targets
                    .iter()
                    .map(|t| {
                        json!({
                            "address": &*t.target.label,
                            "weight": t.weight,
                            "healthy": t.healthy,
                            "in_flight": t.target.inflight(),
                            "circuit": t.circuit.map(|c| c.as_str()),
                            "admin_state": if t.drained { "drain" } else { "ready" },
                        })
                    })
                    .collect();
                let status = match (serving, healthy) {
                    (1.., _) => "up",
                    (0, 1..) => "drained",
                    (0, 0) => "down",
                };
                (
                    g.name.to_string(),
                    json!({
                        "status": status,
                        "healthy_targets": healthy,
                        "drained_targets": drained,
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
        let mut doc = json!({
            "status": status,
            "version": env!("CARGO_PKG_VERSION"),
            "config": {
                "generation": g.number,
                "sha256": g.sha256,
                "loaded_at": humantime::format_rfc3339_seconds(g.loaded_at).to_string(),
            },
            "upstreams": groups,
        });
        // `backend = "sync"`: leasing fleet-wide budget, or each instance's share while
        // Redis is away (`policy::fleet`).
        if let Some(fleet) = gw.policy.rate_store.fleet() {
            doc["rate_limit"] = fleet.health();
        }
        let code = if any_ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (code, doc)
    }
}

/// `/upstreams/NAME/targets/ADDR/drain` (`true`) or `/enable` (`false`): the group, the
/// target's address (as `/health` lists it, percent-encoded or not) and the action.
fn target_action(path: &str) -> Option<(&str, &str, bool)> {
    let (name, rest) = path.strip_prefix("/upstreams/")?.split_once("/targets/")?;
    let (addr, action) = rest.rsplit_once('/')?;
    let drain = match action {
        "drain" => true,
        "enable" => false,
        _ => return None,
    };
    (!name.is_empty() && !name.contains('/') && !addr.is_empty() && !addr.contains('/'))
        .then_some((name, addr, drain))
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
                self.purge(req.uri.query()).await
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
        if let Some((name, addr, drain)) = target_action(req.uri.path()) {
            let (status, doc) = if req.method == http::Method::POST {
                self.drain(name, addr, drain)
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
            // Made once, when the generation was assembled.
            (true, "/routes") => {
                let gw = self.current.load();
                let body = gw.described.routes_json().as_bytes().to_vec();
                response(StatusCode::OK, "application/json", body)
            }
            (true, "/openapi.json") => {
                let gw = self.current.load();
                let body = gw.described.openapi_json().as_bytes().to_vec();
                response(StatusCode::OK, "application/json", body)
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
                            drained: t.drained,
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
            (
                false,
                "/health" | "/metrics" | "/livez" | "/readyz" | "/routes" | "/openapi.json",
            ) => response(
                StatusCode::METHOD_NOT_ALLOWED,
                "application/json",
                br#"{"error":"method not allowed"}"#.to_vec(),
            ),
            _ => response(
                StatusCode::NOT_FOUND,
                "application/json",
                br#"{"error":"not found; try /health, /livez, /readyz, /metrics, /routes, /openapi.json, POST /cache/purge, POST /auth/purge, POST /config/reload or POST /upstreams/NAME/targets/ADDR/drain (or /enable)"}"#.to_vec(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_paths_name_the_group_the_address_and_the_action() {
        assert_eq!(
            target_action("/upstreams/app/targets/127.0.0.1:8081/drain"),
            Some(("app", "127.0.0.1:8081", true))
        );
        assert_eq!(
            target_action("/upstreams/app/targets/%5B::1%5D:8081/enable"),
            Some(("app", "%5B::1%5D:8081", false))
        );
        for other in [
            "/upstreams/app/targets/127.0.0.1:8081/pause",
            "/upstreams/app/targets//drain",
            "/upstreams//targets/127.0.0.1:8081/drain",
            "/upstreams/a/b/targets/127.0.0.1:8081/drain",
            "/upstreams/app/targets/127.0.0.1:8081",
            "/upstreams/app",
        ] {
            assert_eq!(target_action(other), None, "{other}");
        }
    }
}
