//! What every proxied request and response carries across the gateway: the request id,
//! `X-Forwarded-*` headers, and the removal of hop-by-hop headers (RFC 9110 section 7.6.1).
//! Route-specific transforms are left to their own modules.

use crate::error::X_REQUEST_ID;
use http::header::{self, HeaderName};
use http::HeaderValue;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::net::IpAddr;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers removed in both directions. `Transfer-Encoding` is left to Pingora,
/// which owns message framing; `Upgrade` is kept for upgrade requests.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::PROXY_AUTHORIZATION,
];

/// Longest client-supplied request id that is kept.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The client's `X-Request-ID` when it is sane (1-128 of `A-Za-z0-9-_.:`), else a new one.
pub fn request_id(req: &RequestHeader) -> HeaderValue {
    if let Some(v) = req.headers.get(X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= MAX_REQUEST_ID_LEN
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
        {
            return v.clone();
        }
    }
    new_request_id()
}

/// 128 random bits as 32 lower-case hex digits.
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; 32];
    let n = fastrand::u128(..);
    for (i, b) in buf.iter_mut().enumerate() {
        let nibble = ((n >> ((31 - i) * 4)) & 0xf) as u8;
        *b = if nibble < 10 {
            b'0' + nibble
        } else {
            b'a' + nibble - 10
        };
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The request's host: the URI authority (HTTP/2, absolute-form) or the `Host` header.
pub fn host(req: &RequestHeader) -> Option<&str> {
    req.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
}

/// The request's `Content-Length`, when present and valid.
pub fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The hop-by-hop headers present in `headers`, including those the `Connection` header
/// names; `Upgrade` is kept when `keep_upgrade`. Allocates nothing when there are none.
fn hop_by_hop(headers: &http::HeaderMap, keep_upgrade: bool) -> Vec<HeaderName> {
    let mut found: Vec<HeaderName> = HOP_BY_HOP
        .iter()
        .filter(|n| headers.contains_key(*n))
        .cloned()
        .collect();
    if !keep_upgrade && headers.contains_key(header::UPGRADE) {
        found.push(header::UPGRADE);
    }
    let listed = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE) && headers.contains_key(n));
    found.extend(listed);
    found
}

/// What the forwarding headers are built from: the client's request and connection.
pub struct Downstream<'a> {
    pub req: &'a RequestHeader,
    /// The TCP peer (after a PROXY protocol header, the client it names).
    pub peer: Option<IpAddr>,
    pub tls: bool,
    pub upgrade: bool,
}

impl<'a> Downstream<'a> {
    pub fn of(session: &'a Session) -> Downstream<'a> {
        Downstream {
            req: session.req_header(),
            peer: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            tls: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
            upgrade: session.is_upgrade_req(),
        }
    }
}

/// Set the forwarding headers on the upstream request and strip hop-by-hop ones.
pub fn prepare_upstream_request(
    down: &Downstream<'_>,
    upstream: &mut RequestHeader,
    client_ip: Option<IpAddr>,
    peer_trusted: bool,
    request_id: &HeaderValue,
) -> Result<()> {
    let upgrade = down.upgrade;
    for name in hop_by_hop(&upstream.headers, upgrade) {
        upstream.remove_header(&name);
    }
    if upgrade {
        upstream.insert_header(header::CONNECTION, "upgrade")?;
    }
    // A trusted proxy's X-Forwarded-For chain is extended with the peer; anyone else's is
    // replaced by the peer address, the only one we can vouch for.
    let peer = down.peer;
    let chain = if peer_trusted {
        let prior: Vec<&str> = down
            .req
            .headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let mut chain = prior.join(", ");
        if let Some(p) = peer {
            if !chain.is_empty() {
                chain.push_str(", ");
            }
            chain.push_str(&p.to_string());
        }
        Some(chain)
    } else {
        peer.or(client_ip).map(|ip| ip.to_string())
    };
    match chain {
        Some(c) if !c.is_empty() => upstream.insert_header(X_FORWARDED_FOR, c)?,
        _ => {
            upstream.remove_header(&X_FORWARDED_FOR);
        }
    }
    upstream.insert_header(X_FORWARDED_PROTO, if down.tls { "https" } else { "http" })?;
    if let Some(h) = host(down.req) {
        let h = HeaderValue::from_str(h).or_err(ErrorType::HTTPStatus(400), "invalid host")?;
        upstream.insert_header(X_FORWARDED_HOST, h)?;
    }
    upstream.insert_header(X_REQUEST_ID, request_id.clone())?;
    Ok(())
}

/// Strip hop-by-hop headers from an upstream response (Pingora sets its own framing).
pub fn prepare_response(resp: &mut ResponseHeader) {
    let upgrade = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
    for name in hop_by_hop(&resp.headers, upgrade) {
        if upgrade && name == header::CONNECTION {
            continue;
        }
        resp.remove_header(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_kept_only_when_sane() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-request-id", "abc-123.x:y").unwrap();
        assert_eq!(request_id(&req), "abc-123.x:y");
        req.insert_header("x-request-id", "bad id with spaces")
            .unwrap();
        let generated = request_id(&req);
        assert_eq!(generated.len(), 32);
        assert!(generated
            .to_str()
            .unwrap()
            .bytes()
            .all(|b| b.is_ascii_hexdigit()));
        req.insert_header("x-request-id", "a".repeat(129)).unwrap();
        assert_eq!(request_id(&req).len(), 32);
    }

    #[test]
    fn hop_by_hop_includes_connection_listed() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, X-Secret-Hop".parse().unwrap(),
        );
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        let removed = hop_by_hop(&h, false);
        assert!(removed.contains(&HeaderName::from_static("x-secret-hop")));
        assert!(removed.contains(&header::UPGRADE));
        assert!(removed.contains(&header::CONNECTION));
        assert!(!hop_by_hop(&h, true).contains(&header::UPGRADE));
        assert!(hop_by_hop(&http::HeaderMap::new(), false).is_empty());
    }
}
