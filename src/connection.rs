//! Client connections, below HTTP: caps on open connections (global and per IP), the exact
//! open-connection gauge, and for HTTP/1 a total deadline and a size cap on each request head.
//!
//! NOTE(pingora-0.9): pingora-core/src/protocols/http/v1/server.rs `read_request` has no overall deadline.
//! Pingora reads the request head before any proxy hook runs and only bounds each single read
//! (a client sending one byte every few seconds can hold a connection for minutes). So the
//! proxy's [`ServerApp`] is wrapped: every accepted stream is wrapped in a [`GuardedStream`]
//! that watches the bytes of each request head, answers 408 when the head is not complete in
//! `header_timeout` and 431 when it grows past `max_header_bytes`, then closes. On HTTP/2
//! connections (ALPN `h2` or the h2c preface) the frame headers are walked: the client
//! preface and every header block (HEADERS and CONTINUATION until END_HEADERS) must arrive
//! within `header_timeout` of their first byte, or the connection is closed. Request bodies,
//! routing and everything above are left to the gateway.

use async_trait::async_trait;
use http::StatusCode;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN, IO,
};
use pingora::protocols::{SocketDigest, TimingDigest};
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Whether a connection whose local address is `local` came in on the listener configured
/// as `listener` (which may be bound to the unspecified address, `0.0.0.0:443`).
pub(crate) fn arrived_on(listener: &std::net::SocketAddr, local: std::net::SocketAddr) -> bool {
    listener.port() == local.port()
        && (listener.ip() == local.ip() || listener.ip().is_unspecified())
}

/// Limits applied per connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimits {
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    /// 0: unlimited.
    pub max_connections: usize,
    /// 0: unlimited.
    pub max_connections_per_ip: usize,
}

/// Open-connection accounting shared by every listener of one gateway.
pub(crate) struct ConnectionTracker {
    /// Replaced by a reload; each new connection reads the current limits.
    limits: arc_swap::ArcSwap<ConnectionLimits>,
    total: Mutex<(usize, HashMap<IpAddr, usize>)>,
    gauge: IntGauge,
    refused: IntCounter,
}

impl ConnectionTracker {
    pub(crate) fn new(limits: ConnectionLimits, gauge: IntGauge, refused: IntCounter) -> Arc<Self> {
        Arc::new(ConnectionTracker {
            limits: arc_swap::ArcSwap::from_pointee(limits),
            total: Mutex::new((0, HashMap::new())),
            gauge,
            refused,
        })
    }

    /// Limits for the connections accepted from now on.
    pub(crate) fn set_limits(&self, limits: ConnectionLimits) {
        self.limits.store(Arc::new(limits));
    }

    /// The time a new connection has for its head, and for its TLS handshake.
    pub(crate) fn header_timeout(&self) -> Duration {
        self.limits.load().header_timeout
    }

    /// Take a connection slot for `ip`, or `None` when a cap is reached.
    pub(crate) fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Option<Slot> {
        let mut guard = self.total.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *guard;
        let l = self.limits.load();
        if l.max_connections > 0 && *total >= l.max_connections {
            self.refused.inc();
            return None;
        }
        if let Some(ip) = ip {
            let n = per_ip.entry(ip).or_insert(0);
            if l.max_connections_per_ip > 0 && *n >= l.max_connections_per_ip {
                if *n == 0 {
                    per_ip.remove(&ip);
                }
                self.refused.inc();
                return None;
            }
            *n += 1;
        }
        *total += 1;
        self.gauge.inc();
        Some(Slot {
            tracker: self.clone(),
            ip,
        })
    }
}

/// One admitted connection; releases its slot when dropped.
pub(crate) struct Slot {
    tracker: Arc<ConnectionTracker>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut guard = self.tracker.total.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *guard;
        *total = total.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let Some(n) = per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        self.tracker.gauge.dec();
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot({:?})", self.ip)
    }
}

/// A [`ServerApp`] that admits and wraps connections before handing them to `inner`.
pub(crate) struct Guarded<A> {
    inner: Arc<A>,
    tracker: Arc<ConnectionTracker>,
}

impl<A> Guarded<A> {
    pub(crate) fn new(inner: A, tracker: Arc<ConnectionTracker>) -> Self {
        Guarded {
            inner: Arc::new(inner),
            tracker,
        }
    }
}

/// Where in `data` the blank line ending a request head ends (`\r\n\r\n` or `\n\n`), with
/// `tail` the three bytes read before `data`. Only the line feeds are looked at (memchr), so
/// a head costs a few instructions per line rather than per byte.
fn head_end(tail: [u8; 3], data: &[u8]) -> Option<usize> {
    let at = |j: usize, back: usize| -> u8 {
        match j.checked_sub(back) {
            Some(k) => data[k],
            None => tail[3 + j - back],
        }
    };
    memchr::memchr_iter(b'\n', data).find(|&i| {
        let p1 = at(i, 1);
        p1 == b'\n' || (p1 == b'\r' && at(i, 2) == b'\n' && at(i, 3) == b'\r')
    })
}

/// The last three bytes of `tail` followed by `data`.
fn last_three(tail: [u8; 3], data: &[u8]) -> [u8; 3] {
    match data.len() {
        0 => tail,
        1 => [tail[1], tail[2], data[0]],
        2 => [tail[2], data[0], data[1]],
        n => [data[n - 3], data[n - 2], data[n - 1]],
    }
}

/// A complete JSON error response written below HTTP (no session exists yet), with a fresh
/// request id, closing the connection.
fn canned(status: http::StatusCode, message: &str) -> Vec<u8> {
    let request_id = crate::forward::new_request_id();
    let id = request_id.to_str().unwrap_or("");
    let body = crate::error::json_body(message, &crate::error::reason_of(message), id);
    // Every answer carries `Date` (RFC 9110 §6.6.1), these written below HTTP too.
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ndate: {date}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncache-control: no-store\r\nx-request-id: {id}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let already_guarded = {
            let io: &dyn IO = &*stream;
            io.as_any().is::<GuardedStream>()
        };
        let stream = if already_guarded {
            stream
        } else {
            let ip = stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet().map(|a| a.ip())));
            let h2 = stream.selected_alpn_proto() == Some(ALPN::H2);
            let Some(slot) = self.tracker.admit(ip) else {
                if !h2 {
                    let mut stream = stream;
                    use tokio::io::AsyncWriteExt;
                    let busy = canned(StatusCode::SERVICE_UNAVAILABLE, "too many connections");
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), stream.write_all(&busy)).await;
                    let _ = tokio::time::timeout(Duration::from_secs(1), stream.flush()).await;
                }
                return None;
            };
            let limits = self.tracker.limits.load();
            Box::new(GuardedStream::new(stream, slot, &limits, h2))
        };
        self.inner.process_new(stream, shutdown).await
    }

    /// Called when the service stops listening (shutdown or socket handoff). Deliberately
    /// not forwarded: Pingora's proxy would then drop every idle keep-alive connection at
    /// once, racing clients that are sending their next request on it (a reset they cannot
    /// retry safely). Instead those connections stay open through the grace period; their
    /// next request is answered with `Connection: close` (the gateway's drain flag), and
    /// whatever is still idle when the grace period ends closes with the process.
    async fn cleanup(&self) {}
}

/// Where the stream is in the HTTP/1 exchange.
#[derive(Debug)]
enum Phase {
    /// Between requests: no deadline (Pingora's keep-alive timeout applies).
    Idle,
    /// Part of a request head has arrived.
    Head {
        bytes: usize,
        tail: [u8; 3],
    },
    /// The head is complete; body bytes and the response follow.
    Body,
    /// After a 101: another protocol's bytes, nothing is watched.
    Passthrough,
    /// HTTP/2: the preface and each header block must arrive within `header_timeout`.
    H2(H2Reader),
    /// Sending a canned error before closing.
    Rejecting {
        response: Vec<u8>,
        written: usize,
    },
    Closed,
}

/// The client side of an HTTP/2 connection, frame by frame (RFC 9113 §3.4, §4.1): only
/// where the preface and header blocks (HEADERS 0x1 / CONTINUATION 0x9 until END_HEADERS
/// 0x4) start and end; payloads are skipped, not read.
#[derive(Debug)]
struct H2Reader {
    /// Bytes of the client preface still to come.
    preface_left: u8,
    head: [u8; 9],
    head_len: u8,
    payload_left: u32,
    /// The frame whose payload is being skipped ends a header block.
    ends_block: bool,
    /// A header block is open (HEADERS without END_HEADERS, or within its frame).
    in_block: bool,
}

impl H2Reader {
    fn new() -> Self {
        H2Reader {
            preface_left: 24,
            head: [0; 9],
            head_len: 0,
            payload_left: 0,
            ends_block: false,
            in_block: false,
        }
    }

    /// Walk `data`: whether a preface or header block was completed in it, and whether one
    /// is still open after it.
    fn feed(&mut self, mut data: &[u8]) -> (bool, bool) {
        let mut done = false;
        while !data.is_empty() {
            if self.preface_left > 0 {
                let n = data.len().min(usize::from(self.preface_left));
                self.preface_left -= n as u8;
                data = &data[n..];
                done |= self.preface_left == 0;
                continue;
            }
            if self.payload_left > 0 {
                let n = data.len().min(self.payload_left as usize);
                self.payload_left -= n as u32;
                data = &data[n..];
                if self.payload_left == 0 && self.ends_block {
                    self.in_block = false;
                    done = true;
                }
                continue;
            }
            let have = usize::from(self.head_len);
            let n = data.len().min(9 - have);
            self.head[have..have + n].copy_from_slice(&data[..n]);
            self.head_len += n as u8;
            data = &data[n..];
            if self.head_len < 9 {
                break;
            }
            self.head_len = 0;
            let [l0, l1, l2, kind, flags, ..] = self.head;
            self.payload_left = u32::from_be_bytes([0, l0, l1, l2]);
            let header_frame = matches!(kind, 0x1 | 0x9);
            self.ends_block = header_frame && flags & 0x4 != 0;
            self.in_block |= header_frame;
            if self.payload_left == 0 && self.ends_block {
                self.in_block = false;
                done = true;
            }
        }
        (done, self.preface_left > 0 || self.in_block)
    }
}

/// A client stream watched by [`Guarded`].
pub(crate) struct GuardedStream {
    inner: Stream,
    phase: Phase,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    header_timeout: Duration,
    max_header_bytes: usize,
    _slot: Slot,
}

impl std::fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream")
            .field("phase", &self.phase)
            .finish()
    }
}

impl GuardedStream {
    fn new(inner: Stream, slot: Slot, limits: &ConnectionLimits, h2: bool) -> Self {
        // An HTTP/2 client sends its preface first (RFC 9113 §3.4): the clock runs from
        // the handshake.
        GuardedStream {
            inner,
            phase: if h2 {
                Phase::H2(H2Reader::new())
            } else {
                Phase::Idle
            },
            deadline: h2.then(|| Box::pin(tokio::time::sleep(limits.header_timeout))),
            header_timeout: limits.header_timeout,
            max_header_bytes: limits.max_header_bytes,
            _slot: slot,
        }
    }

    /// Account freshly read bytes against the head being received.
    fn observe(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if let Phase::Idle = self.phase {
            // h2c prior knowledge: the connection is HTTP/2 from here on.
            if data.starts_with(b"PRI * HTTP/2.0") {
                self.phase = Phase::H2(H2Reader::new());
            }
        }
        if let Phase::H2(reader) = &mut self.phase {
            let (done, open) = reader.feed(data);
            // Each completed block restarts the clock; one left open starts it.
            if done {
                self.deadline = None;
            }
            if open && self.deadline.is_none() {
                self.deadline = Some(Box::pin(tokio::time::sleep(self.header_timeout)));
            }
            return;
        }
        let (mut bytes, mut tail) = match self.phase {
            Phase::Idle => (0usize, [0u8; 3]),
            Phase::Head { bytes, tail } => (bytes, tail),
            _ => return,
        };
        if let Some(i) = head_end(tail, data) {
            self.phase = Phase::Body;
            self.deadline = None;
            if bytes + i + 1 > self.max_header_bytes {
                self.reject(canned(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request header too large",
                ));
            }
            return;
        }
        bytes += data.len();
        tail = last_three(tail, data);
        if bytes > self.max_header_bytes {
            self.reject(canned(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request header too large",
            ));
            return;
        }
        if self.deadline.is_none() {
            self.deadline = Some(Box::pin(tokio::time::sleep(self.header_timeout)));
        }
        self.phase = Phase::Head { bytes, tail };
    }

    fn reject(&mut self, response: Vec<u8>) {
        self.deadline = None;
        self.phase = Phase::Rejecting {
            response,
            written: 0,
        };
    }

    /// Drive a pending canned response; `Ready(Err)` once it is sent (or cannot be).
    fn poll_reject(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        loop {
            let Phase::Rejecting { response, written } = &mut self.phase else {
                return Poll::Ready(closed_error());
            };
            if *written >= response.len() {
                let _ = Pin::new(&mut self.inner).poll_flush(cx);
                self.phase = Phase::Closed;
                return Poll::Ready(closed_error());
            }
            match Pin::new(&mut self.inner).poll_write(cx, &response[*written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.phase = Phase::Closed;
                    return Poll::Ready(closed_error());
                }
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

fn closed_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "request head refused by the gateway",
    )
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.phase {
                Phase::Rejecting { .. } | Phase::Closed => return this.poll_reject(cx).map(Err),
                Phase::Passthrough => return Pin::new(&mut this.inner).poll_read(cx, buf),
                _ => {}
            }
            let before = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {
                    this.observe(buf.filled().get(before..).unwrap_or(&[]));
                    if matches!(this.phase, Phase::Rejecting { .. }) {
                        buf.set_filled(before);
                        continue;
                    }
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if let Some(deadline) = this.deadline.as_mut() {
                        if deadline.as_mut().poll(cx).is_ready() {
                            if let Phase::H2(_) = this.phase {
                                // No HTTP/1 answer fits mid-frame: the connection is closed
                                // (h2 sees a read error and drops it).
                                this.deadline = None;
                                this.phase = Phase::Closed;
                                return Poll::Ready(Err(std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    "HTTP/2 preface or header block not finished within header_timeout",
                                )));
                            }
                            this.reject(canned(StatusCode::REQUEST_TIMEOUT, "request timed out"));
                            continue;
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match this.phase {
            Phase::Rejecting { .. } | Phase::Closed => return Poll::Ready(Err(closed_error())),
            // A final response is going out: the next bytes read start a new request head.
            // A 1xx leaves the request (and its body) in progress; after a 101 the bytes
            // are another protocol's.
            Phase::Body | Phase::Head { .. } => {
                this.deadline = None;
                match data.get(..10) {
                    Some(b"HTTP/1.1 1") if data.get(9..12) == Some(b"101") => {
                        this.phase = Phase::Passthrough
                    }
                    Some(b"HTTP/1.1 1") => this.phase = Phase::Body,
                    _ => this.phase = Phase::Idle,
                }
            }
            _ => {}
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }

    async fn starts_with(&mut self, prefix: &[u8]) -> std::io::Result<Option<bool>> {
        self.inner.starts_with(prefix).await
    }

    /// Between requests Pingora waits here instead of in a session (see `patches/README.md`);
    /// a canned answer still to send counts as readable, so the next read sends it.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        match self.phase {
            Phase::Rejecting { .. } | Phase::Closed => Poll::Ready(Ok(true)),
            _ => self.inner.poll_readable(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 1];
        f.extend_from_slice(payload);
        f
    }

    /// The preface and header blocks are found wherever the reads split them; DATA and
    /// other frames never hold the clock.
    #[test]
    fn h2_header_blocks_across_every_split() {
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        wire.extend(frame(0x4, 0, &[0; 6])); // SETTINGS
        wire.extend(frame(0x1, 0, &[1; 10])); // HEADERS, no END_HEADERS
        let open_block = wire.len();
        wire.extend(frame(0x9, 0x4, &[2; 5])); // CONTINUATION, END_HEADERS
        wire.extend(frame(0x0, 0x1, &[3; 20])); // DATA
        let mut r = H2Reader::new();
        assert_eq!(r.feed(&wire[..open_block]), (true, true));
        assert_eq!(r.feed(&wire[open_block..]), (true, false));
        for split in 0..wire.len() {
            let mut r = H2Reader::new();
            let (done1, _) = r.feed(&wire[..split]);
            let (done2, open) = r.feed(&wire[split..]);
            assert!(done1 || done2, "split at {split}");
            assert!(!open, "split at {split}: nothing is left open");
        }
        let mut r = H2Reader::new();
        assert_eq!(r.feed(&wire[..10]), (false, true), "half a preface is open");
    }

    /// The end of a head is found wherever the reads split it.
    #[test]
    fn head_end_across_every_split() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY"[..],
            b"GET / HTTP/1.1\nHost: a\n\nBODY",
        ] {
            let end = head.len() - 4;
            for split in 0..=head.len() {
                let (first, second) = head.split_at(split);
                let found = match head_end([0; 3], first) {
                    Some(i) => i + 1,
                    None => split + head_end(last_three([0; 3], first), second).unwrap() + 1,
                };
                assert_eq!(found, end, "split at {split}");
            }
        }
        assert_eq!(head_end([0; 3], b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        // Split in three: the tail carries across reads shorter than three bytes.
        let t = last_three(last_three([0; 3], b"a\r\n"), b"\r");
        assert_eq!(head_end(t, b"\nX"), Some(0));
    }
}
