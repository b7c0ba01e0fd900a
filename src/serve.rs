//! Running the gateway: the listen-address pre-check, the Pingora server with every
//! service registered ([`build_server`]), and how it stops (signals, a listener that could
//! not be built, the admin listener that outlives the drain).

use crate::admin::{self, Listening};
use crate::assemble::{self, Assembled, Runtime};
use crate::config;
use crate::connection::{ConnectionTracker, Guarded};
use crate::demo;
use crate::gateway;
use crate::proxy;
use crate::reload;
use crate::tls;
use pingora::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::server::configuration::Opt;
use pingora::server::Server;
use pingora::services::background::GenBackgroundService;
use pingora::services::listening::Service;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use tokio::sync::watch;

/// How the process was started, from the command line.
#[derive(Debug, Default, Clone, Copy)]
pub struct StartMode {
    /// Fork into the background (`-d`).
    pub daemon: bool,
    /// Take over the listening sockets of a running instance (`-u`).
    pub upgrade: bool,
}

/// Bind every address the server will listen on (proxy listeners, admin, demo backends) and
/// let go again, so that an address in use or not local stops the start with a message
/// naming its key, instead of a server that runs without listening. An address in use is
/// tried a few times, as nginx does, in case a previous instance is still letting go of it.
///
/// NOTE(pingora-0.9): pingora-core/src/listeners/l4.rs and services/listening.rs: Pingora
/// retries a bind that finds the address in use for 30 s, then panics inside
/// the service's task, and the process lives on without that listener (pingora-core 0.9,
/// `listeners/l4.rs` `bind_tcp` and `services/listening.rs` `start_service`). Not needed
/// with `-u`, where the sockets come from the running instance.
pub fn check_listen_addresses(file: &config::ConfigFile) -> Vec<config::Problem> {
    let mut problems = Vec::new();
    // Held until every address is tried: two addresses of the file that cannot be bound
    // together fail here, not later in a retry loop that never ends.
    let mut held = Vec::new();
    for (path, addr) in assemble::refs::listen_addresses(file) {
        let mut tries = 0;
        let bound = loop {
            match std::net::TcpListener::bind(addr) {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 4 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                other => break other,
            }
        };
        match bound {
            Ok(l) => held.push(l),
            Err(e) => problems.push(config::Problem::new(
                path,
                format!("cannot listen on {addr}: {e}"),
            )),
        }
    }
    // HTTP/3's UDP sockets, on the same addresses.
    let mut held_udp = Vec::new();
    for (i, l) in file.listeners.iter().enumerate() {
        let Some(addr) = l
            .quic
            .as_ref()
            .and_then(|_| l.address.parse::<std::net::SocketAddr>().ok())
        else {
            continue;
        };
        match std::net::UdpSocket::bind(addr) {
            Ok(s) => held_udp.push(s),
            Err(e) => problems.push(config::Problem::new(
                format!("listeners[{i}].quic"),
                format!("cannot listen on {addr} over UDP: {e}"),
            )),
        }
    }
    problems
}

/// The shutdown signals Pingora watches (`SIGQUIT` upgrade, `SIGTERM` graceful, `SIGINT`
/// fast), and a listener that could not be built: a fast shutdown, so that the start fails
/// instead of a process that runs without that listener.
struct Signals(watch::Receiver<Option<String>>);

#[async_trait::async_trait]
impl pingora::server::ShutdownSignalWatch for Signals {
    async fn recv(&self) -> pingora::server::ShutdownSignal {
        use pingora::server::ShutdownSignal;
        use tokio::signal::unix::{signal, SignalKind};
        let mut failed = self.0.clone();
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot watch the shutdown signals");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = failed.wait_for(Option::is_some) => ShutdownSignal::FastShutdown,
        }
    }
}

/// Keeps the admin listener accepting through a graceful shutdown, so that `/readyz`
/// answers `draining` and `/livez` and `/metrics` answer until the process exits; after a
/// socket handoff (`SIGQUIT`) it stops with the proxy listeners, so probes reach the new
/// instance, which shares the socket.
struct AdminStop {
    phases: Mutex<Option<tokio::sync::broadcast::Receiver<pingora::server::ExecutionPhase>>>,
    stop: watch::Sender<bool>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for AdminStop {
    async fn start(&self, _shutdown: pingora::server::ShutdownWatch) {
        use pingora::server::ExecutionPhase as Phase;
        use tokio::sync::broadcast::error::RecvError;
        let taken = self.phases.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut phases) = taken else {
            return;
        };
        let mut handing_over = false;
        loop {
            match phases.recv().await {
                Ok(Phase::GracefulUpgradeTransferringFds | Phase::GracefulUpgradeCloseTimeout) => {
                    handing_over = true;
                }
                Ok(Phase::ShutdownStarted) if handing_over => break,
                Ok(Phase::ShutdownRuntimes | Phase::Terminated) | Err(RecvError::Closed) => break,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
            }
        }
        let _ = self.stop.send(true);
    }
}

/// A server ready to run: [`build_server`]'s Pingora server and what its listeners report.
pub struct Prepared {
    server: Server,
    listening: Arc<Listening>,
}

impl Prepared {
    /// Run until the process is told to stop. `Err` names a listener that could not be
    /// bound (the start failed; the other services were stopped at once).
    pub fn run(self) -> Result<(), String> {
        let signals = Signals(self.listening.failed.subscribe());
        self.server.run(pingora::server::RunArgs {
            shutdown_signal: Box::new(signals),
        });
        match self.listening.failed.borrow().clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// A server with every Tollgate service registered, ready for `run`. `config_path` is the
/// file a reload reads. `Err`: a TLS listener OpenSSL refused.
pub fn build_server(
    assembled: Assembled,
    config_path: PathBuf,
    mode: StartMode,
) -> Result<Prepared, String> {
    let Assembled {
        file: _,
        warnings: _,
        runtime,
        shared,
        writers,
    } = assembled;
    let Runtime {
        gateway,
        plan,
        background,
    } = runtime;
    let shared = Arc::new(shared);
    let assemble::ServerPlan {
        conf: mut server_conf,
        listeners,
        admin: admin_address,
        demo,
        connection_limits,
        client_read_buffer,
        h2_idle_timeout,
        access_log: _,
        tracing: _,
        restart_keys,
    } = plan;
    server_conf.daemon = mode.daemon;
    let opt = Opt {
        upgrade: mode.upgrade,
        daemon: mode.daemon,
        ..Opt::default()
    };
    // A bind that finds its address in use is tried for 3 s (the start already checked every
    // address); while taking over sockets in an upgrade, until the old instance has let go.
    let bind_tries = if mode.upgrade {
        server_conf.grace_period_seconds.unwrap_or(60)
            + server_conf.graceful_shutdown_timeout_seconds.unwrap_or(5)
            + 5
    } else {
        3
    };
    pingora::listeners::set_tcp_bind_tries(bind_tries as usize);
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();
    let admin_phases = server.watch_execution_phase();
    log::info!(
        "tollgate {} (pingora {}, {}) starting: config {} (sha256 {}), listeners {}, admin {}",
        env!("CARGO_PKG_VERSION"),
        env!("TOLLGATE_PINGORA_VERSION"),
        openssl::version::version(),
        config_path.display(),
        gateway.generation.sha256,
        listeners
            .iter()
            .map(|l| {
                let kind = match (&l.tls, l.h2c) {
                    (Some(_), _) if l.quic.is_some() => "tls, http3",
                    (Some(_), _) => "tls",
                    (None, true) => "h2c",
                    (None, false) => "http",
                };
                format!("{} ({kind})", l.address)
            })
            .collect::<Vec<_>>()
            .join(", "),
        admin_address.as_deref().unwrap_or("off"),
    );

    server.add_service(GenBackgroundService::new(
        "drain watch".into(),
        Arc::new(gateway::DrainWatch(shared.draining.clone())),
    ));
    // `SIGUSR1` (`-s reopen`) reopens the access-log file; registered before the server runs,
    // and without a file too, since the signal's default action ends the process.
    let reopen = writers.access_log.as_ref().map_or_else(
        || Arc::new(std::sync::atomic::AtomicBool::new(false)),
        |w| w.reopen_flag(),
    );
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGUSR1, reopen) {
        log::error!("cannot handle SIGUSR1 (access-log reopen): {e}");
    }
    if let Some(writer) = writers.access_log {
        server.add_service(GenBackgroundService::new(
            "access log".into(),
            Arc::new(writer),
        ));
    }
    if let Some(exporter) = writers.traces {
        server.add_service(GenBackgroundService::new(
            "trace export".into(),
            Arc::new(exporter),
        ));
    }

    let tracker = ConnectionTracker::new(
        connection_limits,
        shared.metrics.connections.clone(),
        shared.metrics.connections_refused.clone(),
    );
    let cert_slots: Vec<Option<tls::CertSlot>> = gateway
        .listener_certs
        .iter()
        .map(|c| {
            c.as_ref()
                .map(|c| Arc::new(arc_swap::ArcSwap::new(c.clone())))
        })
        .collect();
    let current: reload::Current = Arc::new(arc_swap::ArcSwap::from_pointee(gateway));
    let h2c_service = listeners.iter().any(|l| l.h2c);
    let quic: Vec<_> = listeners
        .iter()
        .zip(&cert_slots)
        .filter_map(|(l, slot)| Some((l.quic.clone()?, slot.clone()?)))
        .collect();
    let listening = Listening::new(
        1 + usize::from(h2c_service)
            + usize::from(!quic.is_empty())
            + usize::from(admin_address.is_some())
            + demo.len(),
    );
    // NOTE(pingora-0.9): pingora-core/src/apps/mod.rs reads `h2c` from the app's `HttpServerOptions`.
    // One service per kind of listener: Pingora reads `h2c` from the application, not from
    // the listener. The h2c one exists only when a listener asks for it.
    let app = |h2c: bool| {
        let mut http = pingora::proxy::http_proxy(
            &server.configuration,
            proxy::Proxy {
                current: current.clone(),
            },
        );
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2_idle_timeout = Some(h2_idle_timeout);
        options.h2c = h2c;
        http.server_options = Some(options);
        let name = if h2c { "tollgate h2c" } else { "tollgate" };
        let mut svc = Service::new(name.into(), Guarded::new(http, tracker.clone()));
        svc.set_listen_report(listening.report());
        // A TLS handshake (and a PROXY protocol header) gets `header_timeout`, read at each
        // connection so that a reload changes it. A PROXY header's own wait, also
        // `header_timeout`, is bounded first (it names its reason, `timeout`, in the metric):
        // this outer bound gets a moment more, or the two timers race and a late header is
        // sometimes dropped uncounted.
        let t = tracker.clone();
        svc.set_handshake_timeout(Arc::new(move || {
            t.header_timeout() + std::time::Duration::from_millis(250)
        }));
        svc
    };
    let mut proxy = app(false);
    let mut proxy_h2c = h2c_service.then(|| app(true));
    // A read buffer under TLS lets OpenSSL read a record's header and body in one read. A
    // plain connection reads straight into the request parser: a buffer there only adds a
    // copy, and every idle keep-alive connection would hold it.
    let tls_buffers = L4BufferSettings::new(client_read_buffer, DEFAULT_L4_WRITE_BUFFER_SIZE);
    let plain_buffers = L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE);
    for (listener, slot) in listeners.iter().zip(&cert_slots) {
        let buffers = if listener.tls.is_some() {
            tls_buffers
        } else {
            plain_buffers
        };
        let mut config = ListenerConfig::tcp(listener.address.as_str()).l4_buffer(buffers);
        if let (Some(tls), Some(slot)) = (&listener.tls, slot) {
            // Built and checked by `tollgate -t`; only OpenSSL itself can refuse here.
            match tls::settings(slot.clone(), tls.min_version, tls.h2) {
                Ok(settings) => config = config.tls(settings),
                Err(e) => return Err(format!("TLS listener {}: {e}", listener.address)),
            }
        }
        if let Some(pp) = &listener.proxy_protocol {
            let pp = pp
                .clone()
                .with_metric(shared.metrics.proxy_protocol_refused.clone());
            config = config.pre_tls_callback(Arc::new(pp));
        }
        match proxy_h2c.as_mut() {
            Some(svc) if listener.h2c => svc.add_listener(config),
            _ => proxy.add_listener(config),
        }
    }
    server.add_service(proxy);
    if let Some(svc) = proxy_h2c {
        server.add_service(svc);
    }
    if !quic.is_empty() {
        // HTTP/3 streams go to a proxy of their own (the same hooks and generations; custom
        // sessions need no listener of Pingora's).
        let proxy = pingora::proxy::http_proxy(
            &server.configuration,
            proxy::Proxy {
                current: current.clone(),
            },
        );
        let mut svc = GenBackgroundService::new(
            "tollgate http3".into(),
            Arc::new(crate::http3::Http3Service {
                listeners: quic,
                parts: crate::http3::Parts {
                    proxy: Arc::new(proxy),
                    tracker: tracker.clone(),
                    metrics: shared.metrics.http3.clone(),
                },
                report: listening.report(),
                upgrade: mode.upgrade,
            }),
        );
        svc.threads = Some(server.configuration.threads);
        server.add_service(svc);
    }

    let reloader = reload::Reloader::new(
        config_path,
        shared,
        current.clone(),
        restart_keys,
        cert_slots,
        tracker,
        background,
    );
    if let Err(e) = reloader.listen_for_sighup() {
        log::error!("cannot handle SIGHUP: {e}; reload with POST /config/reload instead");
    }
    let reload_handle = reloader.handle();
    let ready = reloader.readiness();
    server.add_service(GenBackgroundService::new(
        "configuration".into(),
        Arc::new(reload::ReloadService(reloader)),
    ));

    if let Some(addr) = admin_address {
        let mut svc = Service::new(
            "admin".into(),
            admin::Admin {
                current,
                reload: reload_handle,
                ready,
                listening: listening.clone(),
            },
        );
        svc.add_tcp(&addr);
        svc.set_listen_report(listening.report());
        let (stop, until) = watch::channel(false);
        svc.set_accept_until(until);
        server.add_service(GenBackgroundService::new(
            "admin drain".into(),
            Arc::new(AdminStop {
                phases: Mutex::new(Some(admin_phases)),
                stop,
            }),
        ));
        server.add_service(svc);
    }
    for (name, addr) in demo {
        let mut svc = Service::new(format!("demo {name}"), demo::DemoBackend { name });
        svc.add_tcp(&addr);
        svc.set_listen_report(listening.report());
        server.add_service(svc);
    }
    Ok(Prepared { server, listening })
}
