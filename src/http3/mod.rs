//! HTTP/3 (`[listeners.quic]`): QUIC on a TLS listener's address over UDP, with the
//! listener's certificates, each request stream handed to the same Pingora proxy as TCP
//! connections' requests (a custom downstream session, [`session::H3Session`]).
//!
//! Stack: quinn (QUIC) with rustls on ring (TLS 1.3, the only version QUIC has) and the h3
//! crate (HTTP/3 framing, QPACK). Pure Rust: nothing is added to the build but crates, no
//! second TLS library linked beside OpenSSL's symbols (tokio-quiche needs BoringSSL), and
//! quinn exposes what an edge needs per incoming connection: the source address, whether
//! it is validated, Retry, refuse, 0-RTT, migration (docs/http3.md).
//!
//! Admission, before any state is kept for a connection: the gateway's connection caps
//! (`[limits] max_connections`, `max_connections_per_ip`) count QUIC connections too;
//! handshakes in progress are bounded in all (`max_handshakes`) and per source IP
//! (`max_handshakes_per_ip`); above `retry_above` in progress, a source must first echo a
//! Retry token (a stateless round trip a spoofed source cannot complete).

pub(crate) mod session;

use crate::config::bounds;
use crate::config::file::QuicSection;
use crate::config::Problem;
use crate::connection::ConnectionTracker;
use crate::proxy::Proxy;
use crate::tls::CertSlot;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::Digest;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntCounterVec};
use session::{Connection, H3Session};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a connection whose requests are done waits, at most and at least, for its last
/// responses to be delivered (or for the client to close it) before closing: four round
/// trips within these bounds.
const CLOSE_DRAIN_MIN: Duration = Duration::from_millis(200);
const CLOSE_DRAIN_MAX: Duration = Duration::from_secs(2);

/// A compiled `[listeners.quic]`.
#[derive(Debug, Clone)]
pub(crate) struct QuicListener {
    /// The listener's address (the UDP socket binds the same).
    pub address: SocketAddr,
    /// `Alt-Svc` on this listener's responses, unless advertising is off.
    pub alt_svc: Option<http::HeaderValue>,
    pub max_concurrent_streams: u64,
    pub idle_timeout: Duration,
    pub max_header_list_size: u64,
    pub early_data: bool,
    pub max_handshakes_per_ip: u64,
    pub retry_above: u64,
    pub max_handshakes: u64,
}

impl QuicListener {
    /// `listeners[i].quic`, for a listener at `address`; `tls`: it has `[listeners.tls]`.
    pub(crate) fn from_config(
        at: &str,
        q: &QuicSection,
        address: &str,
        tls: bool,
        max_header_bytes: u64,
        problems: &mut Vec<Problem>,
    ) -> Option<QuicListener> {
        let QuicSection {
            alt_svc_max_age,
            max_concurrent_streams,
            idle_timeout,
            max_header_list_size,
            early_data,
            max_handshakes_per_ip,
            retry_above,
            max_handshakes,
        } = q;
        let before = problems.len();
        if !tls {
            problems.push(Problem::new(
                at,
                "HTTP/3 needs the listener's certificates: add [listeners.tls] (QUIC is TLS 1.3 only)",
            ));
        }
        let key = |k: &str| format!("{at}.{k}");
        bounds::QUIC_ALT_SVC_MAX_AGE.check(&key("alt_svc_max_age"), *alt_svc_max_age, problems);
        bounds::QUIC_MAX_CONCURRENT_STREAMS.check(
            &key("max_concurrent_streams"),
            *max_concurrent_streams,
            problems,
        );
        bounds::QUIC_IDLE_TIMEOUT.check(&key("idle_timeout"), *idle_timeout, problems);
        if let Some(size) = max_header_list_size {
            bounds::QUIC_MAX_HEADER_LIST_SIZE.check(&key("max_header_list_size"), *size, problems);
        }
        bounds::QUIC_MAX_HANDSHAKES_PER_IP.check(
            &key("max_handshakes_per_ip"),
            *max_handshakes_per_ip,
            problems,
        );
        bounds::QUIC_RETRY_ABOVE.check(&key("retry_above"), *retry_above, problems);
        bounds::QUIC_MAX_HANDSHAKES.check(&key("max_handshakes"), *max_handshakes, problems);
        let address = match address.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                problems.push(Problem::new(
                    at,
                    format!(
                        "HTTP/3 needs an IP address and port to bind over UDP, not `{address}`"
                    ),
                ));
                return None;
            }
        };
        if problems.len() > before {
            return None;
        }
        let max_age = alt_svc_max_age.0.as_secs();
        let alt_svc = (max_age > 0).then(|| {
            http::HeaderValue::from_str(&format!("h3=\":{}\"; ma={max_age}", address.port()))
                .unwrap_or_else(|_| http::HeaderValue::from_static("clear"))
        });
        Some(QuicListener {
            address,
            alt_svc,
            max_concurrent_streams: *max_concurrent_streams,
            idle_timeout: idle_timeout.0,
            max_header_list_size: max_header_list_size.map_or(max_header_bytes, |s| s.0),
            early_data: *early_data,
            max_handshakes_per_ip: *max_handshakes_per_ip,
            retry_above: *retry_above,
            max_handshakes: *max_handshakes,
        })
    }
}

/// The certificate for a QUIC handshake, from the listener's slot (a reload swaps it).
struct QuicCerts(CertSlot);

impl std::fmt::Debug for QuicCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuicCerts")
    }
}

impl rustls::server::ResolvesServerCert for QuicCerts {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.load().select(hello.server_name()).quic_key()
    }
}

/// quinn's server configuration for `l`, its certificates read from `certs`.
pub(crate) fn server_config(
    l: &QuicListener,
    certs: CertSlot,
) -> Result<quinn::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(QuicCerts(certs)));
    tls.alpn_protocols = vec![b"h3".to_vec()];
    if l.early_data {
        // QUIC's one allowed value (RFC 9001 section 4.6.1). rustls allows early data only
        // with stateful resumption: tickets name sessions kept here, each resumable with
        // 0-RTT once (a replayed ticket finds nothing).
        tls.max_early_data_size = u32::MAX;
        tls.session_storage = rustls::server::ServerSessionMemoryCache::new(16_384);
    }
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(
            quinn::VarInt::from_u64(l.max_concurrent_streams)
                .unwrap_or(quinn::VarInt::from_u32(100)),
        )
        // The client's control and two QPACK streams, and some slack.
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(8))
        .max_idle_timeout(quinn::IdleTimeout::try_from(l.idle_timeout).ok());
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config
        .transport_config(Arc::new(transport))
        .migration(true)
        // Unanswered incoming connections quinn holds (each a few KB), and the 0-RTT data
        // buffered for them.
        .max_incoming(l.max_handshakes as usize)
        .incoming_buffer_size(64 * 1024)
        .incoming_buffer_size_total(16 * 1024 * 1024);
    Ok(config)
}

/// Handshakes in progress, in all and per source IP.
#[derive(Default)]
struct Handshakes {
    state: Mutex<(u64, HashMap<IpAddr, u64>)>,
}

/// One handshake in progress; released when dropped.
struct Handshake {
    of: Arc<Handshakes>,
    ip: IpAddr,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut s = self.of.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 = s.0.saturating_sub(1);
        if let Some(n) = s.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.1.remove(&self.ip);
            }
        }
    }
}

/// What [`admit`] decided for an incoming connection.
enum Admission {
    /// Go on with the handshake, counted in progress until the guard is dropped.
    Accept(Handshake),
    Retry,
    RefusedBusy,
    RefusedPerIp,
}

impl Admission {
    /// Its `outcome` in `tollgate_quic_connections_total`.
    fn label(&self) -> &'static str {
        match self {
            Admission::Accept(_) => "accepted",
            Admission::Retry => "retry",
            Admission::RefusedBusy => "refused_busy",
            Admission::RefusedPerIp => "refused_per_ip",
        }
    }
}

/// Admit a handshake from `ip`: its address validated by a Retry token or not, and whether
/// a Retry may still be asked of it (not when it has just answered one).
fn admit(
    l: &QuicListener,
    handshakes: &Arc<Handshakes>,
    ip: IpAddr,
    validated: bool,
    may_retry: bool,
) -> Admission {
    let mut s = handshakes.state.lock().unwrap_or_else(|p| p.into_inner());
    let (total, per_ip) = &mut *s;
    if *total >= l.max_handshakes {
        return Admission::RefusedBusy;
    }
    if !validated && *total >= l.retry_above {
        return if may_retry {
            Admission::Retry
        } else {
            Admission::RefusedBusy
        };
    }
    let n = per_ip.entry(ip).or_insert(0);
    if *n >= l.max_handshakes_per_ip {
        return Admission::RefusedPerIp;
    }
    *n += 1;
    *total += 1;
    Admission::Accept(Handshake {
        of: handshakes.clone(),
        ip,
    })
}

/// The metrics this module keeps.
#[derive(Clone)]
pub(crate) struct Http3Metrics {
    /// `tollgate_quic_connections_total{outcome}`.
    pub connections: IntCounterVec,
    /// `tollgate_http3_requests_total`.
    pub requests: IntCounter,
}

/// What every QUIC listener of the process hands its connections to.
#[derive(Clone)]
pub(crate) struct Parts {
    pub proxy: Arc<HttpProxy<Proxy>>,
    pub tracker: Arc<ConnectionTracker>,
    pub metrics: Http3Metrics,
}

/// The HTTP/3 listeners of one process: a background service of Pingora's server, on a
/// runtime of `[server] threads` threads.
pub(crate) struct Http3Service {
    pub listeners: Vec<(QuicListener, CertSlot)>,
    pub parts: Parts,
    pub report: pingora::services::listening::ListenReport,
    /// Started by `-u`, taking over from a running instance.
    pub upgrade: bool,
}

/// Why a listener's endpoint could not be opened.
struct OpenError {
    /// The UDP port is held by another socket (the old instance's, in an upgrade).
    in_use: bool,
    message: String,
}

/// The endpoint of listener `l` on its UDP address, bound now. Not `SO_REUSEPORT`: the
/// kernel would spread a connection's packets over two instances' sockets by address hash,
/// and QUIC connections are addressed by connection id; one instance holds the port at a
/// time.
fn open(l: &QuicListener, certs: &CertSlot) -> Result<quinn::Endpoint, OpenError> {
    let failed = |in_use: bool, e: &dyn std::fmt::Display| OpenError {
        in_use,
        message: format!("UDP {}: {e}", l.address),
    };
    let bind = || -> std::io::Result<std::net::UdpSocket> {
        let addr = l.address;
        let domain = socket2::Domain::for_address(addr);
        let socket =
            socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        Ok(socket.into())
    };
    let socket = bind().map_err(|e| failed(e.kind() == std::io::ErrorKind::AddrInUse, &e))?;
    let config = server_config(l, certs.clone()).map_err(|e| failed(false, &e))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| failed(false, &e))
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Http3Service {
    async fn start(&self, shutdown: ShutdownWatch) {
        let mut running = Vec::new();
        let mut waiting = Vec::new();
        for (l, certs) in &self.listeners {
            match open(l, certs) {
                Ok(endpoint) => running.push(tokio::spawn(
                    Listener::new(l.clone(), endpoint, self.parts.clone()).run(shutdown.clone()),
                )),
                // Taking over from a running instance (`-u`): it holds the UDP port until it
                // has stopped taking QUIC connections and finished those it has.
                Err(e) if e.in_use && self.upgrade => {
                    log::info!(
                        "HTTP/3 on {}: the old instance still holds the UDP port; bound when it lets go",
                        l.address
                    );
                    waiting.push((l.clone(), certs.clone()));
                }
                Err(e) => {
                    log::error!("HTTP/3 listener {}", e.message);
                    (self.report)(Err(format!("HTTP/3 listener {}", e.message)));
                    return;
                }
            }
        }
        (self.report)(Ok(()));
        for (l, certs) in waiting {
            let parts = self.parts.clone();
            let mut shutdown = shutdown.clone();
            running.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = shutdown.changed() => return,
                    }
                    match open(&l, &certs) {
                        Ok(endpoint) => {
                            log::info!("HTTP/3 on {}: serving", l.address);
                            return Listener::new(l, endpoint, parts).run(shutdown).await;
                        }
                        Err(e) if e.in_use => {}
                        Err(e) => {
                            log::error!("HTTP/3 listener {}", e.message);
                            return;
                        }
                    }
                }
            }));
        }
        for t in running {
            let _ = t.await;
        }
    }
}

struct Listener {
    l: Arc<QuicListener>,
    endpoint: quinn::Endpoint,
    parts: Parts,
    handshakes: Arc<Handshakes>,
}

impl Listener {
    fn new(l: QuicListener, endpoint: quinn::Endpoint, parts: Parts) -> Listener {
        Listener {
            l: Arc::new(l),
            endpoint,
            parts,
            handshakes: Arc::new(Handshakes::default()),
        }
    }

    async fn run(self, mut shutdown: ShutdownWatch) {
        let this = Arc::new(self);
        loop {
            let incoming = tokio::select! {
                i = this.endpoint.accept() => i,
                _ = shutdown.changed() => None,
            };
            let Some(incoming) = incoming else { break };
            let peer = incoming.remote_address();
            let admission = admit(
                &this.l,
                &this.handshakes,
                peer.ip(),
                incoming.remote_address_validated(),
                incoming.may_retry(),
            );
            let mut outcome = admission.label();
            match admission {
                Admission::Accept(handshake) => match this.parts.tracker.admit(Some(peer.ip())) {
                    Some(slot) => {
                        let this = this.clone();
                        let shutdown = shutdown.clone();
                        tokio::spawn(async move {
                            this.connection(incoming, handshake, slot, shutdown).await;
                        });
                    }
                    None => {
                        outcome = "refused_connections";
                        incoming.refuse();
                    }
                },
                Admission::Retry => {
                    let _ = incoming.retry();
                }
                Admission::RefusedBusy | Admission::RefusedPerIp => incoming.refuse(),
            }
            this.count(outcome);
        }
        // Stop taking connections; those open get GOAWAY from their own tasks and finish
        // what they have.
        this.endpoint.set_server_config(None);
        this.endpoint.wait_idle().await;
    }

    fn count(&self, outcome: &str) {
        self.parts
            .metrics
            .connections
            .with_label_values(&[outcome])
            .inc();
    }

    async fn connection(
        self: Arc<Self>,
        incoming: quinn::Incoming,
        handshake: Handshake,
        _slot: crate::connection::Slot,
        mut shutdown: ShutdownWatch,
    ) {
        let connecting = match incoming.accept() {
            Ok(c) => c,
            Err(e) => {
                log::debug!("HTTP/3: handshake refused: {e}");
                self.count("failed");
                return;
            }
        };
        // With 0-RTT, requests may arrive before the handshake completes (RFC 8470: they
        // are early data): `accepted` resolves when it has.
        let mut handshake = Some(handshake);
        let handshaken = |connecting: quinn::Connecting| async {
            connecting
                .await
                .inspect_err(|e| {
                    log::debug!("HTTP/3: handshake failed: {e}");
                    self.count("failed");
                })
                .ok()
        };
        let (quic, mut accepted) = if self.l.early_data {
            match connecting.into_0rtt() {
                Ok((quic, accepted)) => (quic, Some(accepted)),
                Err(connecting) => match handshaken(connecting).await {
                    Some(q) => (q, None),
                    None => return,
                },
            }
        } else {
            match handshaken(connecting).await {
                Some(q) => (q, None),
                None => return,
            }
        };
        if accepted.is_none() {
            handshake = None;
        }
        let (confirm, confirmed) = tokio::sync::watch::channel(accepted.is_none());
        let conn = Arc::new(Connection {
            local: PingoraAddr::Inet(self.l.address),
            digest: Digest {
                ssl_digest: Some(Arc::new(SslDigest::new(
                    "",
                    "TLSv1.3",
                    None,
                    None,
                    Vec::new(),
                ))),
                ..Default::default()
            },
            quic: quic.clone(),
        });
        let built = h3::server::builder()
            .max_field_section_size(self.l.max_header_list_size)
            .build::<_, bytes::Bytes>(h3_quinn::Connection::new(quic))
            .await;
        let mut h3conn = match built {
            Ok(c) => c,
            Err(e) => {
                log::debug!("HTTP/3: connection setup failed: {e}");
                return;
            }
        };
        // Each request task holds a clone of `alive`; `all_done` ends when the last is gone.
        let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
        enum Event<T> {
            Confirmed,
            Stream(T),
            Closing,
        }
        let mut closing = *shutdown.borrow();
        while !closing {
            // Biased, the handshake first: quinn reports it complete before the streams that
            // came in the same datagram, so a stream is early exactly when it is accepted
            // before `accepted` resolves.
            let event = tokio::select! {
                biased;
                _ = std::future::poll_fn(|cx| match accepted.as_mut() {
                    Some(a) => std::future::Future::poll(std::pin::Pin::new(a), cx),
                    None => std::task::Poll::Pending,
                }) => Event::Confirmed,
                a = h3conn.accept() => Event::Stream(a),
                _ = shutdown.changed() => Event::Closing,
            };
            let accepted_stream = match event {
                Event::Confirmed => {
                    accepted = None;
                    handshake = None;
                    confirm.send_replace(true);
                    continue;
                }
                Event::Closing => {
                    closing = true;
                    continue;
                }
                Event::Stream(a) => a,
            };
            let resolver = match accepted_stream {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    log::debug!("HTTP/3: connection ended: {e}");
                    return;
                }
            };
            let this = self.clone();
            let conn = conn.clone();
            let confirmed = confirmed.clone();
            let early = !*confirmed.borrow();
            let shutdown = shutdown.clone();
            let alive = alive.clone();
            tokio::spawn(async move {
                this.request(resolver, conn, early, confirmed, shutdown)
                    .await;
                drop(alive);
            });
        }
        drop(handshake);
        if closing {
            // GOAWAY naming the stream after the last one accepted (h3 counts from the last
            // accepted): every accepted request is served, newer ones go elsewhere. Then the
            // requests finish and the connection closes with H3_NO_ERROR. `h3conn` is not
            // polled again (its own final GOAWAY would name the last request as unprocessed)
            // but stays alive: its control stream must not end before the connection.
            let _ = h3conn.shutdown(1).await;
        }
        drop(alive);
        let _ = all_done.recv().await;
        // `close` discards what the connection has not sent yet, and a response just
        // finished may still be queued (under load it was: a request in flight across a
        // binary upgrade lost its answer). The last responses get a few round trips to leave
        // and be acknowledged; a client done with the connection usually closes it first.
        let drain = (conn.quic.rtt() * 4).clamp(CLOSE_DRAIN_MIN, CLOSE_DRAIN_MAX);
        let _ = tokio::time::timeout(drain, conn.quic.closed()).await;
        conn.quic.close(
            quinn::VarInt::from_u32(h3::error::Code::H3_NO_ERROR.value() as u32),
            b"",
        );
        drop(h3conn);
    }

    async fn request(
        &self,
        resolver: h3::server::RequestResolver<h3_quinn::Connection, bytes::Bytes>,
        conn: Arc<Connection>,
        mut early: bool,
        mut confirmed: tokio::sync::watch::Receiver<bool>,
        shutdown: ShutdownWatch,
    ) {
        // `[limits] header_timeout`: the head must arrive this soon after the stream opens.
        let resolved = tokio::time::timeout(
            self.parts.tracker.header_timeout(),
            resolver.resolve_request(),
        )
        .await;
        let (req, mut stream) = match resolved {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                log::debug!("HTTP/3: request refused: {e}");
                return;
            }
            Err(_) => {
                log::debug!("HTTP/3: no request head within header_timeout");
                return;
            }
        };
        self.parts.metrics.requests.inc();
        // Before the handshake completes, the request came in 0-RTT data, which an attacker
        // can replay. A safe method goes on at once, marked `Early-Data: 1` for the upstream
        // (which may answer 425 Too Early: relayed, and the client retries after the
        // handshake); any other method waits for the handshake (RFC 8470 section 3), which a
        // replayed flight never completes.
        if early && !session::safe_early(req.method()) {
            let waited = tokio::time::timeout(
                self.parts.tracker.header_timeout(),
                confirmed.wait_for(|done| *done),
            )
            .await;
            if !matches!(waited, Ok(Ok(_))) {
                stream.stop_stream(h3::error::Code::H3_REQUEST_REJECTED);
                return;
            }
            early = false;
        }
        let head = match H3Session::head(req, early) {
            Ok(head) => head,
            Err(e) => {
                log::debug!("HTTP/3: malformed request: {e}");
                stream.stop_stream(h3::error::Code::H3_MESSAGE_ERROR);
                return;
            }
        };
        let session = H3Session::new(head, stream, conn);
        let session = ServerSession::new_custom(Box::new(session));
        use pingora::apps::HttpServerApp;
        let _ = self.parts.proxy.process_new_http(session, &shutdown).await;
    }
}
