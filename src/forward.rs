//! What every proxied request and response carries across the gateway: the request id,
//! `X-Forwarded-*` headers, and the removal of hop-by-hop headers (RFC 9110 section 7.6.1).
//! Route-specific transforms are left to their own modules.

use http::header::{self, HeaderName};
use http::HeaderValue;
use pingora::http::SpelledName;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::net::IpAddr;

/// `X-Request-ID`, with its spelling: inserted on every request, it then allocates nothing.
/// Here with [`RequestId`] and [`new_request_id`]; the `error` module re-exports it.
pub(crate) const X_REQUEST_ID: SpelledName = SpelledName::from_static("x-request-id");

/// [`X_REQUEST_ID`] at one address, for requests to hold a `&'static` to.
pub(crate) static DEFAULT_REQUEST_ID_HEADER: SpelledName = X_REQUEST_ID;

// With their spelling, so that inserting them on every request allocates nothing.
const X_FORWARDED_FOR: SpelledName = SpelledName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: SpelledName = SpelledName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: SpelledName = SpelledName::from_static("x-forwarded-host");
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

/// One request's id and the header that carries it (`[server] request_id_header`, by
/// default `X-Request-ID`): read from the client, sent upstream, returned to the client, in
/// every JSON error body, the access log and the trace, under that one name.
#[derive(Debug, Clone)]
pub(crate) struct RequestId {
    pub(crate) header: &'static SpelledName,
    pub(crate) value: HeaderValue,
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId {
            header: &DEFAULT_REQUEST_ID_HEADER,
            value: HeaderValue::from_static(""),
        }
    }
}

impl RequestId {
    /// The client's id under `header` when it is sane (1-128 of `A-Za-z0-9-_.:`), else a
    /// new one.
    pub(crate) fn read(req: &RequestHeader, header: &'static SpelledName) -> RequestId {
        let value = match req.headers.get(header.name()) {
            Some(v) if sane_request_id(v.as_bytes()) => v.clone(),
            _ => new_request_id(),
        };
        RequestId { header, value }
    }

    /// The id as text (always ASCII).
    pub(crate) fn as_str(&self) -> &str {
        self.value.to_str().unwrap_or("")
    }

    /// The id as a header to insert.
    pub(crate) fn pair(&self) -> (&'static SpelledName, HeaderValue) {
        (self.header, self.value.clone())
    }
}

fn sane_request_id(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= MAX_REQUEST_ID_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
}

/// The header named `spelling`, made once per distinct name for the life of the process,
/// so each request holds a `&'static` to it and a reload that changes the name cannot free
/// one a request in flight still uses. Unknown names are few (one per configured
/// spelling), so they are never freed.
pub(crate) fn request_id_header(spelling: &str) -> Result<&'static SpelledName, String> {
    static MADE: std::sync::Mutex<Vec<(&'static str, &'static SpelledName)>> =
        std::sync::Mutex::new(Vec::new());
    if spelling.eq_ignore_ascii_case(X_REQUEST_ID.name().as_str()) {
        return Ok(&DEFAULT_REQUEST_ID_HEADER);
    }
    let mut made = MADE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, h)) = made.iter().find(|(s, _)| *s == spelling) {
        return Ok(h);
    }
    let text: &'static str = Box::leak(spelling.to_owned().into_boxed_str());
    let header = SpelledName::from_spelling(text).map_err(|e| e.to_string())?;
    let header: &'static SpelledName = Box::leak(Box::new(header));
    made.push((text, header));
    Ok(header)
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
pub(crate) fn host(req: &RequestHeader) -> Option<&str> {
    req.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
}

/// The request's `Content-Length`, when present and valid.
pub(crate) fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The hop-by-hop headers present in `headers`, including those the `Connection` header
/// names; `Upgrade` is kept when `keep_upgrade`. One pass over the names present (a response
/// carries a handful) rather than a lookup per hop-by-hop name; allocates nothing when there
/// are none.
fn hop_by_hop(headers: &http::HeaderMap, keep_upgrade: bool) -> Vec<HeaderName> {
    let mut found: Vec<HeaderName> = headers
        .keys()
        .filter(|n| HOP_BY_HOP.contains(n) || (!keep_upgrade && *n == header::UPGRADE))
        .cloned()
        .collect();
    // Only a `Connection` header names more, and it is one of HOP_BY_HOP.
    if found.is_empty() {
        return found;
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

/// Appends `ip` as text: IPv4 by hand (the per-request common case; `Display` goes through
/// the formatter), IPv6 through `Display`.
fn push_ip(out: &mut String, ip: IpAddr) {
    out.reserve(if ip.is_ipv4() { 15 } else { 39 });
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            // Writing to a String cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

/// How many headers [prepare_upstream_request] adds at most, for `RequestHeader::reserve`.
pub(crate) const FORWARDING_HEADERS: usize = 4;

/// What the forwarding headers are built from: the client's request and connection.
pub(crate) struct Downstream<'a> {
    pub req: &'a RequestHeader,
    /// The TCP peer (after a PROXY protocol header, the client it names).
    pub peer: Option<IpAddr>,
    pub tls: bool,
}

impl<'a> Downstream<'a> {
    pub(crate) fn of(session: &'a Session) -> Downstream<'a> {
        Downstream {
            req: session.req_header(),
            peer: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            tls: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
        }
    }
}

/// Set the forwarding headers on the upstream request. Hop-by-hop request headers, those the
/// `Connection` header names, and upgrade fields other than a WebSocket handshake's are
/// already gone: Pingora strips them before `upstream_request_filter` runs (its default
/// `HttpUpstreamRequestPolicy`, which Tollgate keeps).
pub(crate) fn prepare_upstream_request(
    down: &Downstream<'_>,
    upstream: &mut RequestHeader,
    client_ip: Option<IpAddr>,
    peer_trusted: bool,
    request_id: &RequestId,
) -> Result<()> {
    // A trusted proxy's X-Forwarded-For chain is extended with the peer; anyone else's is
    // replaced by the peer address, the only one we can vouch for.
    let mut chain = String::new();
    if peer_trusted {
        for prior in down.req.headers.get_all(X_FORWARDED_FOR.name()) {
            if let Ok(prior) = prior.to_str() {
                if !chain.is_empty() {
                    chain.push_str(", ");
                }
                chain.push_str(prior);
            }
        }
        if let Some(p) = down.peer {
            if !chain.is_empty() {
                chain.push_str(", ");
            }
            push_ip(&mut chain, p);
        }
    } else if let Some(ip) = down.peer.or(client_ip) {
        push_ip(&mut chain, ip);
    }
    if chain.is_empty() {
        upstream.remove_header(X_FORWARDED_FOR.name());
    } else {
        upstream.insert_header(&X_FORWARDED_FOR, chain)?;
    }
    upstream.insert_header(&X_FORWARDED_PROTO, if down.tls { "https" } else { "http" })?;
    if let Some(h) = forwarded_host(down.req)? {
        upstream.insert_header(&X_FORWARDED_HOST, h)?;
    }
    upstream.insert_header(request_id.header, request_id.value.clone())?;
    Ok(())
}

/// [host] as a header value: the `Host` header itself when that is where it came from.
fn forwarded_host(req: &RequestHeader) -> Result<Option<HeaderValue>> {
    if let Some(a) = req.uri.authority() {
        let h = HeaderValue::from_str(a.as_str());
        return h
            .or_err(ErrorType::HTTPStatus(400), "invalid host")
            .map(Some);
    }
    Ok(req
        .headers
        .get(header::HOST)
        .filter(|h| h.to_str().is_ok())
        .cloned())
}

/// NOTE(pingora-0.9): mirrors pingora-proxy/src/proxy_h1.rs, for requests that skip it.
/// What Pingora's request sanitizer does before `upstream_request_filter`, for a request that
/// does not pass through Pingora (`tollgate explain`): strip the hop-by-hop headers, those the
/// `Connection` header names, and upgrade fields.
pub(crate) fn strip_hop_by_hop_request(req: &mut RequestHeader) {
    for name in hop_by_hop(&req.headers, false) {
        req.remove_header(&name);
    }
}

/// Strip hop-by-hop headers from an upstream response (Pingora sets its own framing).
pub(crate) fn prepare_response(resp: &mut ResponseHeader) {
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
        let request_id =
            |req: &RequestHeader| RequestId::read(req, &DEFAULT_REQUEST_ID_HEADER).value;
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
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_ne!(new_request_id(), new_request_id());
        req.insert_header("x-request-id", "a".repeat(129)).unwrap();
        assert_eq!(request_id(&req).len(), 32);
    }

    #[test]
    fn push_ip_writes_what_display_writes() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "203.0.113.255",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::from("x, ");
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x, {ip}"));
        }
    }

    /// Headers added by their `HeaderName` after a `reserve` keep the value map and Pingora's
    /// case map in step (its wire writer asserts they are) and are written as named.
    #[test]
    fn forwarding_headers_reach_the_wire_after_reserve() {
        let mut down = RequestHeader::build("GET", b"/a", Some(1)).unwrap();
        down.insert_header("Host", "shop.example.test").unwrap();
        let mut up = down.clone();
        up.reserve(FORWARDING_HEADERS);
        let d = Downstream {
            req: &down,
            peer: Some("192.0.2.7".parse().unwrap()),
            tls: true,
        };
        let id = RequestId {
            value: HeaderValue::from_static("id1"),
            ..RequestId::default()
        };
        prepare_upstream_request(&d, &mut up, None, false, &id).unwrap();
        let mut wire = Vec::new();
        up.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        for line in [
            "Host: shop.example.test\r\n",
            "x-forwarded-for: 192.0.2.7\r\n",
            "x-forwarded-proto: https\r\n",
            "x-forwarded-host: shop.example.test\r\n",
            "x-request-id: id1\r\n",
        ] {
            assert!(wire.contains(line), "{line:?} missing from {wire:?}");
        }
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
