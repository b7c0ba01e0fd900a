//! The process side of a configuration: Pingora's `ServerConf`, the listeners with their TLS
//! settings, the admin and demo listeners, connection limits, and the keys a reload cannot
//! apply in place (they need an upgrade, `-u`).

use crate::config::file::{
    AccessLogSection, AdminSection, ConfigFile, DemoSection, LimitsSection, ListenerSection,
    ServerSection,
};
use crate::config::types::{LogTarget, TlsVersion};
use crate::config::FromConfig;
use crate::config::{bounds, Problem};
use crate::connection::ConnectionLimits;
use crate::policy::normalize::Underscores;
use crate::tls::TlsListener;
use pingora::server::configuration::ServerConf;
use sha2::Digest;
use std::time::Duration;

/// A listener to open.
pub(crate) struct ListenerPlan {
    pub address: String,
    pub(crate) tls: Option<TlsListener>,
    /// Overrides `limits.underscore_headers` on this listener.
    pub underscores: Option<Underscores>,
    /// Read the client's address from a PROXY protocol header.
    pub(crate) proxy_protocol: Option<crate::proxy_protocol::ProxyProtocol>,
    /// HTTP/2 with prior knowledge beside HTTP/1 (plain listeners only).
    pub h2c: bool,
    /// HTTP/3 on the same address over UDP (TLS listeners only).
    pub(crate) quic: Option<crate::http3::QuicListener>,
}

/// Everything about the process that one configuration file sets.
pub(crate) struct ServerPlan {
    pub conf: ServerConf,
    pub listeners: Vec<ListenerPlan>,
    pub admin: Option<String>,
    pub demo: Vec<(String, String)>,
    pub connection_limits: ConnectionLimits,
    /// Read buffer size of each client connection.
    pub client_read_buffer: usize,
    /// Idle HTTP/2 client connections (no open stream) close after this.
    pub h2_idle_timeout: Duration,
    pub access_log: Option<(LogTarget, usize)>,
    /// `[tracing]`, when present.
    pub(crate) tracing: Option<crate::observe::trace::Settings>,
    /// The value of every key a reload cannot change, as text, by key path.
    pub restart_keys: Vec<(String, String)>,
}

/// Build the process side of `file`, collecting every problem.
pub(crate) fn plan(file: &ConfigFile, problems: &mut Vec<Problem>) -> ServerPlan {
    let ConfigFile {
        server,
        listeners,
        admin,
        access_log,
        tracing,
        demo,
        limits,
        ..
    } = file;
    let conf = server_conf(server, problems);
    if listeners.is_empty() {
        problems.push(Problem::new(
            "listeners",
            "at least one [[listeners]] entry with an address is required",
        ));
    }
    let listeners: Vec<ListenerPlan> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let ListenerSection {
                address,
                tls,
                underscore_headers,
                proxy_protocol,
                h2c,
                quic,
            } = l;
            if *h2c && tls.is_some() {
                problems.push(Problem::new(
                    format!("listeners[{i}].h2c"),
                    "is HTTP/2 without TLS; a TLS listener offers HTTP/2 by ALPN (tls.h2)",
                ));
            }
            let tls = tls.as_ref().and_then(|t| {
                TlsListener::from_config(&format!("listeners[{i}].tls"), t, &(), problems)
            });
            let quic = quic.as_ref().and_then(|q| {
                let at = format!("listeners[{i}].quic");
                for (file, why) in tls.iter().flat_map(|t| t.certs.quic_problems()) {
                    problems.push(Problem::new(&at, format!("{file}: {why}")));
                }
                crate::http3::QuicListener::from_config(
                    &at,
                    q,
                    address,
                    l.tls.is_some(),
                    limits.max_header_bytes.0,
                    problems,
                )
            });
            ListenerPlan {
                h2c: *h2c,
                address: address.clone(),
                tls,
                quic,
                underscores: *underscore_headers,
                proxy_protocol: proxy_protocol.as_ref().and_then(|p| {
                    crate::proxy_protocol::ProxyProtocol::from_config(
                        &format!("listeners[{i}].proxy_protocol"),
                        p,
                        &limits.header_timeout.0,
                        problems,
                    )
                }),
            }
        })
        .collect();
    let AdminSection { address, enabled } = admin;
    let AccessLogSection {
        target,
        buffer_lines,
        // The line's shape is reloadable: built with the generation.
        fields: _,
        redact_query: _,
    } = access_log;
    bounds::ACCESS_LOG_BUFFER_LINES.check("access_log.buffer_lines", *buffer_lines, problems);
    if let LogTarget::File(path) = target {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !dir.is_dir() {
                problems.push(Problem::new(
                    "access_log.target",
                    format!("directory {} does not exist", dir.display()),
                ));
            }
        }
    }
    let tracing = tracing.as_ref().map(|t| tracing_settings(t, problems));
    let restart_keys = restart_keys(file);
    ServerPlan {
        tracing,
        conf,
        admin: enabled.then(|| address.clone()),
        demo: demo
            .iter()
            .map(|DemoSection { name, address }| (name.clone(), address.clone()))
            .collect(),
        connection_limits: connection_limits(limits),
        client_read_buffer: server.client_read_buffer.0 as usize,
        h2_idle_timeout: limits.h2_idle_timeout.0,
        access_log: (*target != LogTarget::Off).then(|| (target.clone(), *buffer_lines)),
        listeners,
        restart_keys,
    }
}

/// `[tracing]`, checked.
fn tracing_settings(
    t: &crate::config::file::TracingSection,
    problems: &mut Vec<Problem>,
) -> crate::observe::trace::Settings {
    let crate::config::file::TracingSection {
        endpoint,
        sample_ratio,
        service_name,
        queue_size,
        batch_size,
        flush_interval,
        export_timeout,
        headers,
    } = t;
    match http::Uri::try_from(endpoint.as_str()) {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
        _ => problems.push(Problem::new(
            "tracing.endpoint",
            format!("`{endpoint}` is not an http:// or https:// URL (the collector's OTLP/HTTP traces URL, e.g. http://127.0.0.1:4318/v1/traces)"),
        )),
    }
    bounds::TRACING_SAMPLE_RATIO.check("tracing.sample_ratio", *sample_ratio, problems);
    bounds::TRACING_QUEUE_SIZE.check("tracing.queue_size", *queue_size, problems);
    bounds::TRACING_BATCH_SIZE.check("tracing.batch_size", *batch_size, problems);
    bounds::TRACING_FLUSH_INTERVAL.check("tracing.flush_interval", *flush_interval, problems);
    bounds::TRACING_EXPORT_TIMEOUT.check("tracing.export_timeout", *export_timeout, problems);
    crate::observe::trace::Settings {
        endpoint: endpoint.clone(),
        sample_ratio: *sample_ratio,
        service_name: service_name.clone(),
        queue_size: *queue_size,
        batch_size: *batch_size,
        flush_interval: flush_interval.0,
        export_timeout: export_timeout.0,
        headers: crate::config::types::header_pairs("tracing.headers", headers, problems),
    }
}

/// The per-connection limits of `[limits]` (checked with the rest of the section in
/// `GatewayPolicy::from_config`).
pub(crate) fn connection_limits(limits: &LimitsSection) -> ConnectionLimits {
    ConnectionLimits {
        header_timeout: limits.header_timeout.0,
        max_header_bytes: limits.max_header_bytes.0 as usize,
        max_connections: limits.max_connections,
        max_connections_per_ip: limits.max_connections_per_ip,
    }
}

fn server_conf(s: &ServerSection, problems: &mut Vec<Problem>) -> ServerConf {
    let ServerSection {
        threads,
        work_stealing,
        pid_file,
        upgrade_sock,
        error_log,
        grace_period,
        graceful_shutdown_timeout,
        upstream_keepalive_pool_size,
        client_read_buffer,
        // Per generation: assemble/mod.rs.
        request_id_header: _,
    } = s;
    bounds::SERVER_THREADS.check("server.threads", *threads, problems);
    bounds::SERVER_GRACE_PERIOD.check("server.grace_period", *grace_period, problems);
    bounds::SERVER_GRACEFUL_SHUTDOWN_TIMEOUT.check(
        "server.graceful_shutdown_timeout",
        *graceful_shutdown_timeout,
        problems,
    );
    bounds::SERVER_UPSTREAM_KEEPALIVE_POOL_SIZE.check(
        "server.upstream_keepalive_pool_size",
        *upstream_keepalive_pool_size,
        problems,
    );
    bounds::SERVER_CLIENT_READ_BUFFER.check(
        "server.client_read_buffer",
        *client_read_buffer,
        problems,
    );
    if pid_file.is_empty() {
        problems.push(Problem::new("server.pid_file", "must not be empty"));
    }
    if upgrade_sock.is_empty() {
        problems.push(Problem::new("server.upgrade_sock", "must not be empty"));
    }
    ServerConf {
        threads: *threads,
        work_stealing: *work_stealing,
        pid_file: pid_file.clone(),
        upgrade_sock: upgrade_sock.clone(),
        error_log: error_log.clone(),
        grace_period_seconds: Some(grace_period.0.as_secs()),
        graceful_shutdown_timeout_seconds: Some(graceful_shutdown_timeout.0.as_secs()),
        upstream_keepalive_pool_size: *upstream_keepalive_pool_size,
        ..ServerConf::default()
    }
}

/// Every key that only a new process can apply: the process and its listening sockets.
fn restart_keys(file: &ConfigFile) -> Vec<(String, String)> {
    let mut keys = Vec::new();
    let mut key = |k: String, v: String| keys.push((k, v));
    let s = &file.server;
    key("server.threads".into(), s.threads.to_string());
    key("server.work_stealing".into(), s.work_stealing.to_string());
    key("server.pid_file".into(), s.pid_file.clone());
    key("server.upgrade_sock".into(), s.upgrade_sock.clone());
    key("server.error_log".into(), format!("{:?}", s.error_log));
    key("log.format".into(), format!("{:?}", file.log.format));
    // The exporter and its queue live as long as the process.
    // (Header values may be credentials: only their names are compared in the clear.)
    let tracing = file.tracing.as_ref().map(|t| {
        let headers: Vec<String> = t
            .headers
            .iter()
            .map(|(k, v)| format!("{k}#{:x}", sha2::Sha256::digest(v.text().as_bytes())))
            .collect();
        format!(
            "{} {} {} {} {} {} {} {headers:?}",
            t.endpoint,
            t.sample_ratio,
            t.service_name,
            t.queue_size,
            t.batch_size,
            t.flush_interval.0.as_millis(),
            t.export_timeout.0.as_millis()
        )
    });
    key("tracing".into(), format!("{tracing:?}"));
    key("server.grace_period".into(), s.grace_period.to_string());
    key(
        "server.graceful_shutdown_timeout".into(),
        s.graceful_shutdown_timeout.to_string(),
    );
    key(
        "server.upstream_keepalive_pool_size".into(),
        s.upstream_keepalive_pool_size.to_string(),
    );
    key(
        "server.client_read_buffer".into(),
        s.client_read_buffer.0.to_string(),
    );
    key(
        "listeners".into(),
        format!("{} listeners", file.listeners.len()),
    );
    for (i, l) in file.listeners.iter().enumerate() {
        key(format!("listeners[{i}].address"), l.address.clone());
        key(format!("listeners[{i}].tls"), l.tls.is_some().to_string());
        key(format!("listeners[{i}].h2c"), l.h2c.to_string());
        // The QUIC endpoint's settings live with its socket; `Alt-Svc` is the generation's.
        let quic = l.quic.as_ref().map(|q| crate::config::file::QuicSection {
            alt_svc_max_age: crate::config::types::HumanDuration(std::time::Duration::ZERO),
            ..q.clone()
        });
        key(format!("listeners[{i}].quic"), format!("{quic:?}"));
        key(
            format!("listeners[{i}].proxy_protocol"),
            format!("{:?}", l.proxy_protocol),
        );
        if let Some(t) = &l.tls {
            let v = match t.min_version {
                TlsVersion::V1_2 => "1.2",
                TlsVersion::V1_3 => "1.3",
            };
            key(format!("listeners[{i}].tls.min_version"), v.into());
            key(format!("listeners[{i}].tls.h2"), t.h2.to_string());
        }
    }
    key("admin.enabled".into(), file.admin.enabled.to_string());
    key("admin.address".into(), file.admin.address.clone());
    key(
        "access_log.target".into(),
        format!("{:?}", file.access_log.target),
    );
    key(
        "access_log.buffer_lines".into(),
        file.access_log.buffer_lines.to_string(),
    );
    key("demo".into(), format!("{:?}", file.demo));
    key(
        "limits.h2_idle_timeout".into(),
        file.limits.h2_idle_timeout.to_string(),
    );
    keys
}

/// The restart-only keys whose value differs between two plans' `restart_keys`.
pub(crate) fn changed_restart_keys(
    old: &[(String, String)],
    new: &[(String, String)],
) -> Vec<String> {
    let old: std::collections::BTreeMap<&str, &str> =
        old.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut changed: Vec<String> = new
        .iter()
        .filter(|(k, v)| old.get(k.as_str()) != Some(&v.as_str()))
        .map(|(k, _)| k.clone())
        .collect();
    let new_keys: std::collections::BTreeSet<&str> = new.iter().map(|(k, _)| k.as_str()).collect();
    changed.extend(
        old.keys()
            .filter(|k| !new_keys.contains(*k))
            .map(|k| k.to_string()),
    );
    changed
}
