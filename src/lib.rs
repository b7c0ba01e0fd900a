//! Tollgate: an edge API gateway on Cloudflare's Pingora.
//!
//! [`config`] reads and compiles `tollgate.toml`; [`build_server`] turns the compiled form into
//! a Pingora [`Server`] with the proxy, admin, demo and background services registered, so the
//! binary and in-process tests start exactly the same thing.

pub mod admin;
pub mod aggregate;
pub mod cache;
pub mod config;
pub mod connection;
pub mod demo;
pub mod error;
pub mod forward;
pub mod gateway;
pub mod observe;
pub mod policy;
pub mod route;
pub mod tls;
pub mod transform;
pub mod upstream;

use config::compile::Compiled;
use connection::{ConnectionTracker, Guarded};
use pingora::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::server::configuration::Opt;
use pingora::server::Server;
use pingora::services::background::GenBackgroundService;
use pingora::services::listening::Service;
use std::sync::Arc;

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
/// NOTE: Pingora retries a bind that finds the address in use for 30 s, then panics inside
/// the service's task, and the process lives on without that listener (pingora-core 0.9,
/// `listeners/l4.rs` `bind_tcp` and `services/listening.rs` `start_service`). Not needed
/// with `-u`, where the sockets come from the running instance.
pub fn check_listen_addresses(compiled: &Compiled) -> Vec<config::Problem> {
    let listeners = compiled.listeners.iter().enumerate();
    let admin = compiled.admin.iter();
    let demo = compiled.demo.iter().enumerate();
    let addresses = listeners
        .map(|(i, l)| (format!("listeners[{i}].address"), &l.address))
        .chain(admin.map(|a| ("admin.address".to_string(), a)))
        .chain(demo.map(|(i, (_, a))| (format!("demo[{i}].address"), a)));
    let mut problems = Vec::new();
    for (path, addr) in addresses {
        let mut tries = 0;
        let bound = loop {
            match std::net::TcpListener::bind(addr.as_str()) {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 4 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                other => break other,
            }
        };
        if let Err(e) = bound {
            problems.push(config::Problem::new(
                path,
                format!("cannot listen on {addr}: {e}"),
            ));
        }
    }
    problems
}

/// A server with every Tollgate service registered, ready for `run`.
pub fn build_server(compiled: Compiled, mode: StartMode) -> Server {
    let Compiled {
        gateway,
        mut server_conf,
        listeners,
        admin,
        access_log_writer,
        demo,
        connection_limits,
        client_read_buffer,
        h2_idle_timeout,
    } = compiled;
    server_conf.daemon = mode.daemon;
    let opt = Opt {
        upgrade: mode.upgrade,
        daemon: mode.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();

    let upstreams = gateway.upstreams.clone();
    server.add_service(GenBackgroundService::new(
        "drain watch".into(),
        Arc::new(gateway::DrainWatch(gateway.draining.clone())),
    ));
    for refresher in gateway
        .policy
        .jwt_providers
        .iter()
        .filter_map(|p| p.refresher())
    {
        server.add_service(GenBackgroundService::new(
            "jwks refresh".into(),
            Arc::new(refresher),
        ));
    }
    let metrics = gateway.metrics.clone();
    let cache = gateway.cache.clone();
    for group in upstreams.iter().filter(|g| g.needs_background()) {
        let name = format!("upstream {}", group.name);
        server.add_service(GenBackgroundService::new(name, group.lb.clone()));
    }
    if let Some(writer) = access_log_writer {
        server.add_service(GenBackgroundService::new(
            "access log".into(),
            Arc::new(writer),
        ));
    }

    let tracker = ConnectionTracker::new(
        connection_limits,
        metrics.connections.clone(),
        metrics.connections_refused.clone(),
    );
    let mut http = pingora::proxy::http_proxy(&server.configuration, gateway);
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2_idle_timeout = Some(h2_idle_timeout);
    http.server_options = Some(options);
    let proxy = Guarded::new(http, tracker);
    let mut proxy = Service::new("tollgate".into(), proxy);
    let buffers = L4BufferSettings::new(client_read_buffer, DEFAULT_L4_WRITE_BUFFER_SIZE);
    for listener in listeners {
        let mut config = ListenerConfig::tcp(listener.address.as_str()).l4_buffer(buffers);
        if let Some(tls) = listener.tls {
            match tls::settings(tls.certs, tls.tls13_only, tls.h2) {
                Ok(settings) => config = config.tls(settings),
                Err(e) => {
                    log::error!(
                        "TLS listener {}: {e}; not listening there",
                        listener.address
                    );
                    continue;
                }
            }
        }
        proxy.add_listener(config);
    }
    server.add_service(proxy);

    if let Some(addr) = admin {
        let mut svc = Service::new(
            "admin".into(),
            admin::Admin {
                upstreams,
                metrics,
                cache,
            },
        );
        svc.add_tcp(&addr);
        server.add_service(svc);
    }
    for (name, addr) in demo {
        let mut svc = Service::new(format!("demo {name}"), demo::DemoBackend { name });
        svc.add_tcp(&addr);
        server.add_service(svc);
    }
    server
}
