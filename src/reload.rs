//! Reload in place: the configuration file is read and built completely beside the serving
//! generation, then swapped in atomically; a file with any problem changes nothing.
//!
//! Triggers: `SIGHUP`, `POST /config/reload` on the admin listener, and `tollgate -s reload`
//! (which sends `SIGHUP`). Reloads run one at a time, in a background service that also owns
//! each generation's periodic work (health checks, DNS, JWKS refresh): the new generation's
//! work starts before the swap and the old one's stops right after it. Requests in flight
//! finish on the generation they started with; open connections are not touched. What a new
//! generation keeps from the old one is decided in `crate::assemble`. Keys only a new process can
//! apply (`assemble::server`'s restart keys) make the reload fail, naming them.

use crate::assemble::{self, Background, Shared};
use crate::config::{self, ConfigError, Problem};
use crate::connection::ConnectionTracker;
use crate::gateway::Gateway;
use crate::tls::CertSlot;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};

/// The generation serving now.
pub(crate) type Current = Arc<ArcSwap<Gateway>>;

/// A successful reload.
#[derive(Debug, Clone)]
pub(crate) struct Reloaded {
    pub generation: u64,
    pub sha256: String,
}

type Outcome = Result<Reloaded, ConfigError>;

/// One reload to run, and where to say how it went (none for a signal).
struct Request(Option<oneshot::Sender<Outcome>>);

/// Asks the running server to reload (cheap to clone).
#[derive(Clone)]
pub(crate) struct ReloadHandle(mpsc::UnboundedSender<Request>);

impl ReloadHandle {
    /// Reload and wait for the outcome.
    pub(crate) async fn reload(&self) -> Outcome {
        let (tx, rx) = oneshot::channel();
        let stopped = || ConfigError {
            file: PathBuf::new(),
            problems: vec![Problem::new("", "the server is shutting down")],
        };
        self.0.send(Request(Some(tx))).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Reload without waiting (a signal).
    fn trigger(&self) {
        let _ = self.0.send(Request(None));
    }
}

/// What a reload swaps, and what decides whether it may.
pub(crate) struct Reloader {
    path: PathBuf,
    shared: Arc<Shared>,
    current: Current,
    /// The restart-only keys of the serving configuration.
    restart_keys: Mutex<Vec<(String, String)>>,
    certs: Vec<Option<CertSlot>>,
    tracker: Arc<ConnectionTracker>,
    /// Stops the serving generation's background work.
    running: Mutex<Option<watch::Sender<bool>>>,
    /// The first generation's background work, started with the service.
    first: Mutex<Vec<Background>>,
    requests: Mutex<Option<mpsc::UnboundedReceiver<Request>>>,
    handle: ReloadHandle,
    /// Set once the first generation's background work is ready (every health check has
    /// run its first round); `/readyz` waits for it.
    ready: Arc<AtomicBool>,
}

impl Reloader {
    pub(crate) fn new(
        path: PathBuf,
        shared: Arc<Shared>,
        current: Current,
        restart_keys: Vec<(String, String)>,
        certs: Vec<Option<CertSlot>>,
        tracker: Arc<ConnectionTracker>,
        first: Vec<Background>,
    ) -> Arc<Reloader> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(Reloader {
            path,
            shared,
            current,
            restart_keys: Mutex::new(restart_keys),
            certs,
            tracker,
            running: Mutex::new(None),
            first: Mutex::new(first),
            requests: Mutex::new(Some(rx)),
            handle: ReloadHandle(tx),
            ready: Arc::new(AtomicBool::new(false)),
        })
    }

    pub(crate) fn handle(&self) -> ReloadHandle {
        self.handle.clone()
    }

    /// Whether the serving configuration finished starting (see `/readyz`).
    pub(crate) fn readiness(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// NOTE(pingora-0.9): pingora-core/src/server/mod.rs handles SIGQUIT, SIGTERM, SIGINT only.
    /// Turn `SIGHUP` into reloads, from a thread of its own (Pingora leaves `SIGHUP` alone,
    /// whose default action would end the process).
    pub(crate) fn listen_for_sighup(&self) -> std::io::Result<()> {
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
        let handle = self.handle();
        std::thread::Builder::new()
            .name("sighup".into())
            .spawn(move || {
                for _ in signals.forever() {
                    log::info!("SIGHUP: reloading the configuration");
                    handle.trigger();
                }
            })?;
        Ok(())
    }

    /// Start `work`, returning the switch that stops it; `ready` is set once every service
    /// said it is ready (a health check after its first round).
    fn start(work: Vec<Background>, ready: Option<Arc<AtomicBool>>) -> watch::Sender<bool> {
        let (stop, watch) = watch::channel(false);
        let mut pending = Vec::with_capacity(work.len());
        for (name, service) in work {
            let watch: ShutdownWatch = watch.clone();
            let (notify, readiness) = watch::channel(false);
            pending.push(readiness);
            tokio::spawn(async move {
                log::debug!("starting {name}");
                let notifier = pingora::services::ServiceReadyNotifier::new(notify);
                service.start_with_ready_notifier(watch, notifier).await;
            });
        }
        if let Some(ready) = ready {
            tokio::spawn(async move {
                for mut r in pending {
                    let _ = r.wait_for(|v| *v).await;
                }
                ready.store(true, Ordering::Release);
            });
        }
        stop
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Read, build and swap in the configuration file; on any problem nothing changes.
    async fn reload(&self) -> Outcome {
        let path = self.path.clone();
        let shared = self.shared.clone();
        let previous = self.current.load_full();
        // Building reads files and resolves targets, with a runtime of its own.
        let built = tokio::task::spawn_blocking(move || {
            let (file, source) = config::load(&path)?;
            for w in assemble::refs::warnings(&file) {
                log::warn!("{}: {}: {}", path.display(), w.path, w.message);
            }
            assemble::build(
                &file,
                assemble::Planned::of(&file),
                &source.sha256,
                &shared,
                Some(&previous),
            )
            .map_err(|mut problems| {
                source.locate(&mut problems);
                ConfigError {
                    file: path.clone(),
                    problems,
                }
            })
        })
        .await
        .map_err(|e| ConfigError {
            file: self.path.clone(),
            problems: vec![Problem::new("", format!("building failed: {e}"))],
        })??;
        let changed = {
            let keys = Self::lock(&self.restart_keys);
            assemble::server::changed_restart_keys(&keys, &built.plan.restart_keys)
        };
        if !changed.is_empty() {
            return Err(ConfigError {
                file: self.path.clone(),
                problems: changed
                    .into_iter()
                    .map(|key| {
                        Problem::new(
                            key,
                            "cannot be changed by a reload; apply it with an upgrade (tollgate -u)",
                        )
                    })
                    .collect(),
            });
        }
        let assemble::Runtime {
            gateway,
            plan,
            background,
        } = built;
        for (slot, certs) in self.certs.iter().zip(&gateway.listener_certs) {
            if let (Some(slot), Some(certs)) = (slot, certs) {
                slot.store(certs.clone());
            }
        }
        self.tracker.set_limits(gateway.connection_limits.clone());
        let reloaded = Reloaded {
            generation: gateway.generation.number,
            sha256: gateway.generation.sha256.clone(),
        };
        let stop = Self::start(background, None);
        self.current.store(Arc::new(gateway));
        if let Some(old) = Self::lock(&self.running).replace(stop) {
            let _ = old.send(true);
        }
        *Self::lock(&self.restart_keys) = plan.restart_keys;
        Ok(reloaded)
    }

    fn record(&self, outcome: &Outcome) {
        let m = &self.shared.metrics;
        match outcome {
            Ok(r) => {
                m.config_reloads.with_label_values(&["ok"]).inc();
                m.config_generation
                    .set(i64::try_from(r.generation).unwrap_or(i64::MAX));
                m.config_last_success.set(now_seconds());
                log::info!(
                    "configuration reloaded: generation {} (sha256 {})",
                    r.generation,
                    r.sha256
                );
            }
            Err(e) => {
                m.config_reloads.with_label_values(&["error"]).inc();
                log::error!("configuration reload refused, the running one keeps serving:\n{e}");
            }
        }
    }
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The service that runs reloads and the serving generation's background work.
pub(crate) struct ReloadService(pub(crate) Arc<Reloader>);

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let r = &self.0;
        let first = std::mem::take(&mut *Reloader::lock(&r.first));
        *Reloader::lock(&r.running) = Some(Reloader::start(first, Some(r.ready.clone())));
        let generation = r.current.load().generation.number;
        r.shared
            .metrics
            .config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        r.shared.metrics.config_last_success.set(now_seconds());
        let Some(mut requests) = Reloader::lock(&r.requests).take() else {
            return;
        };
        loop {
            tokio::select! {
                request = requests.recv() => {
                    let Some(Request(reply)) = request else { break };
                    let outcome = r.reload().await;
                    r.record(&outcome);
                    if let Some(reply) = reply {
                        let _ = reply.send(outcome);
                    }
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        if let Some(stop) = Reloader::lock(&r.running).take() {
            let _ = stop.send(true);
        }
    }
}
