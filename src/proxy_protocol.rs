//! The PROXY protocol (v1 text and v2 binary, HAProxy's spec) on listeners with
//! `[listeners.proxy_protocol]`: an L4 balancer in front says who the client is before the
//! first byte of TLS or HTTP. The header is parsed by the `ppp` crate; this module reads it
//! off the connection (Pingora's pre-TLS hook, which the vendored pingora-core also runs on
//! plain listeners and per listener) and makes the client's address the connection's peer
//! address, so IP rules, rate limits, connection caps, `X-Forwarded-For` and the access log all
//! see the client and not the balancer.
//!
//! Only peers in `from` may send a header. With `required` (the default) every other
//! connection, and a trusted one without a header, is closed before anything is read from it;
//! otherwise they are served as direct clients. A v2 `LOCAL` header (the balancer's own health
//! check) and v1 `UNKNOWN` keep the balancer's address. The header must arrive within
//! `limits.header_timeout`.

use crate::config::file::ProxyProtocolSection;
use crate::config::FromConfig;
use crate::config::Problem;
use async_trait::async_trait;
use ipnet::IpNet;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use pingora::{Error, ErrorType, Result};
use ppp::PartialResult;
use prometheus::IntCounterVec;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;
use tokio::io::AsyncReadExt;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// v1 is at most 107 bytes; v2 carries TLVs, which balancers keep small (AWS NLB, GCP and
/// HAProxy send well under 1 KiB). Longer headers are refused.
const MAX_HEADER: usize = 4096;

/// The compiled `[listeners.proxy_protocol]` of one listener.
#[derive(Debug, Clone)]
pub(crate) struct ProxyProtocol {
    from: Vec<IpNet>,
    required: bool,
    timeout: Duration,
    refused: Option<IntCounterVec>,
}

/// What a connection's first bytes turned out to be.
#[derive(Debug, PartialEq, Eq)]
enum Preamble {
    /// A header naming the client.
    Client(std::net::SocketAddr),
    /// A header that names nobody (v2 `LOCAL`, v1 `UNKNOWN`, a non-IP family).
    Local,
    /// No header: the connection starts with something else.
    Absent,
}

impl FromConfig<Duration> for ProxyProtocol {
    type Section = ProxyProtocolSection;

    fn from_config(
        at: &str,
        s: &ProxyProtocolSection,
        header_timeout: &Duration,
        problems: &mut Vec<Problem>,
    ) -> Option<ProxyProtocol> {
        let ProxyProtocolSection { from, required } = s;
        let before = problems.len();
        if from.is_empty() {
            problems.push(Problem::new(
                format!("{at}.from"),
                "list the addresses of the balancers that send the header, e.g. \
                 [\"10.0.0.0/8\"]; a header from anyone else must not be believed",
            ));
        }
        let from = crate::policy::ip::nets(&format!("{at}.from"), from, problems);
        (problems.len() == before).then_some(ProxyProtocol {
            from,
            required: *required,
            timeout: *header_timeout,
            refused: None,
        })
    }
}

impl ProxyProtocol {
    /// Count refused connections in `counter` (`reason` label).
    pub(crate) fn with_metric(mut self, counter: IntCounterVec) -> Self {
        self.refused = Some(counter);
        self
    }

    fn refuse(&self, reason: &'static str, peer: Option<IpAddr>, detail: &str) -> Box<Error> {
        if let Some(c) = &self.refused {
            c.with_label_values(&[reason]).inc();
        }
        let peer = peer.map_or_else(|| "unknown peer".to_string(), |p| p.to_string());
        log::info!("PROXY protocol: closed connection from {peer}: {detail}");
        Error::explain(
            ErrorType::HandshakeError,
            format!("PROXY protocol: {detail}"),
        )
    }

    fn trusts(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|p| {
            let p = p.to_canonical();
            self.from.iter().any(|n| n.contains(&p))
        })
    }
}

#[async_trait]
impl PreTlsProcess for ProxyProtocol {
    async fn process(&self, stream: &mut L4Stream) -> Result<()> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        if !self.trusts(peer) {
            if self.required {
                return Err(self.refuse(
                    "untrusted_peer",
                    peer,
                    "peer is not in proxy_protocol.from",
                ));
            }
            return Ok(());
        }
        let preamble = match tokio::time::timeout(self.timeout, read_preamble(stream)).await {
            Ok(Ok(p)) => p,
            Ok(Err((reason, detail))) => return Err(self.refuse(reason, peer, &detail)),
            Err(_) => return Err(self.refuse("timeout", peer, "no header in time")),
        };
        match preamble {
            Preamble::Client(client) => {
                let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
                let _ = digest.peer_addr.set(Some(SocketAddr::Inet(client)));
                stream.set_socket_digest(digest);
                Ok(())
            }
            Preamble::Local => Ok(()),
            Preamble::Absent if self.required => Err(self.refuse(
                "missing",
                peer,
                "connection did not start with a PROXY header",
            )),
            Preamble::Absent => Ok(()),
        }
    }
}

/// Read a PROXY header if the connection starts with one, putting back every byte after it
/// (or every byte read, when there is none). Errors are (metric reason, detail).
async fn read_preamble(
    stream: &mut L4Stream,
) -> std::result::Result<Preamble, (&'static str, String)> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| ("closed", format!("read failed: {e}")))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                ("closed", "connection closed before sending anything".into())
            } else {
                ("malformed", "connection closed inside the header".into())
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        match classify(&buf) {
            Ok(Some((preamble, used))) => {
                stream.rewind(&buf[used..]);
                return Ok(preamble);
            }
            Ok(None) if buf.len() < MAX_HEADER => continue,
            Ok(None) => {
                return Err((
                    "malformed",
                    format!("header longer than {MAX_HEADER} bytes"),
                ))
            }
            Err(e) => return Err(("malformed", e)),
        }
    }
}

/// `Ok(None)`: need more bytes. `Ok(Some((preamble, bytes used)))`: decided.
fn classify(buf: &[u8]) -> std::result::Result<Option<(Preamble, usize)>, String> {
    let could_be = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    };
    if !could_be(V1_PREFIX) && !could_be(V2_SIGNATURE) {
        return Ok(Some((Preamble::Absent, 0)));
    }
    if could_be(V1_PREFIX) {
        // Decided only once the line has ended (CR LF) or cannot anymore (107 bytes): ppp
        // reports some prefixes of a valid line (one ending in a space, say) as invalid.
        let ended = memchr::memmem::find(buf, b"\r\n").is_some();
        if !ended && buf.len() < 107 {
            return Ok(None);
        }
        let h = ppp::v1::Header::try_from(buf).map_err(|e| format!("malformed v1 header: {e}"))?;
        let preamble = match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Preamble::Client((a.source_address, a.source_port).into())
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Preamble::Client((a.source_address, a.source_port).into())
            }
            ppp::v1::Addresses::Unknown => Preamble::Local,
        };
        return Ok(Some((preamble, h.header.len())));
    }
    let parsed = ppp::v2::Header::try_from(buf);
    if parsed.is_incomplete() {
        return Ok(None);
    }
    let h = parsed.map_err(|e| format!("malformed v2 header: {e}"))?;
    let preamble = match (h.command, h.addresses) {
        (ppp::v2::Command::Local, _) => Preamble::Local,
        (_, ppp::v2::Addresses::IPv4(a)) => {
            Preamble::Client((a.source_address, a.source_port).into())
        }
        (_, ppp::v2::Addresses::IPv6(a)) => {
            Preamble::Client((a.source_address, a.source_port).into())
        }
        _ => Preamble::Local,
    };
    Ok(Some((preamble, h.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(s: &str) -> Preamble {
        Preamble::Client(s.parse().expect("address"))
    }

    #[test]
    fn v1_headers_and_what_follows() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        let (p, used) = classify(h).expect("valid").expect("complete");
        assert_eq!(p, client("203.0.113.7:51234"));
        assert_eq!(&h[used..], b"GET / HTTP/1.1\r\n");
        let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 80\r\n";
        assert_eq!(
            classify(h).expect("valid").expect("complete").0,
            client("[2001:db8::1]:4000")
        );
        let h = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            classify(h).expect("valid").expect("complete").0,
            Preamble::Local
        );
        // Every strict prefix asks for more bytes.
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n";
        for n in 1..h.len() {
            assert_eq!(classify(&h[..n]), Ok(None), "prefix of {n} bytes");
        }
        assert!(classify(b"PROXY TCP4 999.0.0.1 10.0.0.1 1 2\r\n").is_err());
        // A line that has ended is decided, even where ppp would wait for more.
        assert!(classify(b"PROXY TCP4 1.2.3.4 nonsense\r\nGET / HTTP/1.1\r\n").is_err());
        assert!(classify(b"PROXY TCP4 1.2.3.4\r\n").is_err());
        assert!(classify(&[b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat()).is_err());
        // A bare LF does not end the line; what follows it then makes the line invalid.
        assert_eq!(classify(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), Ok(None));
        assert!(classify(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\nGET / HTTP/1.1\r\n").is_err());
    }

    #[test]
    fn v2_headers() {
        let src: std::net::SocketAddr = "198.51.100.9:40000".parse().expect("addr");
        let dst: std::net::SocketAddr = "10.0.0.1:443".parse().expect("addr");
        let mut h = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (src, dst),
        )
        .build()
        .expect("header");
        let len = h.len();
        h.extend_from_slice(b"\x16\x03\x01");
        let (p, used) = classify(&h).expect("valid").expect("complete");
        assert_eq!((p, used), (Preamble::Client(src), len));
        for n in 1..len {
            assert_eq!(classify(&h[..n]), Ok(None), "prefix of {n} bytes");
        }
        let local = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        .expect("header");
        assert_eq!(
            classify(&local).expect("valid").expect("complete").0,
            Preamble::Local
        );
    }

    #[test]
    fn other_first_bytes_are_not_a_header() {
        for start in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"P",
            b"PRI * HTTP/2.0",
        ] {
            let decided = classify(start).expect("valid");
            match decided {
                Some((Preamble::Absent, 0)) => {}
                // "P" and "PRI" could still begin "PROXY "... until they cannot.
                None => assert!(b"PROXY ".starts_with(start)),
                other => panic!("{start:?}: {other:?}"),
            }
        }
    }
}
