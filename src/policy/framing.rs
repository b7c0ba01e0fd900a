//! Strict request framing, checked before routing: requests that two HTTP parsers could read
//! differently (the raw material of request smuggling) are refused with 400, and heads that
//! are too large with 431. Pingora 0.9 forwards all of these at default settings.

use crate::error::Reject;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{StatusCode, Version};
use pingora::http::RequestHeader;

/// Head limits, from `[limits]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadLimits {
    pub max_headers: usize,
    pub max_header_bytes: usize,
}

/// Whether a raw HTTP/1 head has a `Content-Length` field line.
///
/// NOTE(pingora-0.9): pingora-core/src/protocols/http/v1/server.rs drops it while parsing.
/// Pingora drops `Content-Length` from the parsed head when `Transfer-Encoding` is also
/// present, so the conflict is only visible in the bytes the client sent.
pub(crate) fn raw_has_content_length(raw_head: &[u8]) -> bool {
    raw_head
        .split(|b| *b == b'\n')
        .skip(1)
        .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
}

/// Refuse a request whose framing is ambiguous or whose head is too large. `raw_cl` says
/// whether the raw head carried `Content-Length` (see [`raw_has_content_length`]).
pub(crate) fn check(req: &RequestHeader, limits: HeadLimits, raw_cl: bool) -> Result<(), Reject> {
    let headers = &req.headers;
    if headers.len() > limits.max_headers {
        return Err(Reject::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many request headers",
        ));
    }
    // The parsed head; HTTP/1 heads are also capped on the wire by the connection guard.
    let size = req.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + req.uri.authority().map_or(0, |a| a.as_str().len())
        + req.method.as_str().len()
        + 12
        + headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if size > limits.max_header_bytes {
        return Err(Reject::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request header too large",
        ));
    }
    let bad = |m| Err(Reject::new(StatusCode::BAD_REQUEST, m));
    // A name that is a framing header to a lenient parser (`Transfer_Encoding`,
    // `Transfer---Encoding`, `Content.Length`): forwarded as an ordinary header, an upstream
    // that folds such names would frame the body differently than the gateway did.
    // (Names are lower-case; most are ruled out by their length or first byte.)
    for name in headers.keys() {
        let n = name.as_str().as_bytes();
        if n.len() >= 13
            && matches!(n[0], b't' | b'c')
            && name != TRANSFER_ENCODING
            && name != CONTENT_LENGTH
            && looks_like_framing(name.as_str())
        {
            return bad("header name resembling Transfer-Encoding or Content-Length");
        }
    }
    let te = headers.get_all(TRANSFER_ENCODING);
    let has_te = te.iter().next().is_some();
    let mut cl = headers.get_all(CONTENT_LENGTH).iter();
    let first_cl = cl.next();
    if has_te && (first_cl.is_some() || raw_cl) {
        return bad("both Content-Length and Transfer-Encoding");
    }
    if let Some(v) = first_cl {
        if cl.next().is_some() {
            return bad("repeated Content-Length");
        }
        let digits = v.as_bytes();
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return bad("invalid Content-Length");
        }
    }
    // A HEAD has no use for a body; an upstream that does not read one would take it for
    // the next request.
    if req.method == http::Method::HEAD
        && (has_te || first_cl.is_some_and(|v| v.as_bytes() != b"0"))
    {
        return bad("a body on a HEAD request");
    }
    if has_te {
        if te.iter().nth(1).is_some() {
            // RFC 9112 allows a list split over lines; a repeated line is how one parser is
            // told "chunked" and another "something else".
            return bad("repeated Transfer-Encoding");
        }
        if req.version == Version::HTTP_10 {
            return bad("Transfer-Encoding in an HTTP/1.0 request");
        }
        // The codings, in one pass: how many, and the last.
        let (codings, last) = te
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .fold((0, None), |(n, _), t| (n + 1, Some(t)));
        // The final coding must be chunked, or the body length is unknowable (RFC 9112 6.3).
        if !last.is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            return bad("invalid Transfer-Encoding");
        }
        // A coding before `chunked` (`gzip, chunked`): the body would be de-chunked and sent
        // on as `chunked` alone, still gzip-coded but no longer labelled. The gateway
        // decodes no transfer coding but chunked, so it refuses (RFC 9112 §6.1: 501).
        if codings > 1 {
            return Err(Reject::new(
                StatusCode::NOT_IMPLEMENTED,
                "transfer coding other than chunked",
            ));
        }
    }
    if req.version == Version::HTTP_11 {
        let mut hosts = headers.get_all(HOST).iter();
        match (hosts.next(), hosts.next()) {
            (None, _) => return bad("missing Host header"),
            (Some(_), Some(_)) => return bad("repeated Host header"),
            (Some(h), None) if h.is_empty() => return bad("empty Host header"),
            _ => {}
        }
    }
    Ok(())
}

/// Whether `name`, with every byte but letters and digits left out, is a framing header's.
fn looks_like_framing(name: &str) -> bool {
    let mut squashed = [0u8; 16];
    let mut n = 0;
    for b in name.bytes().filter(u8::is_ascii_alphanumeric) {
        if n == squashed.len() {
            return false;
        }
        squashed[n] = b.to_ascii_lowercase();
        n += 1;
    }
    matches!(&squashed[..n], b"transferencoding" | b"contentlength")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_headers: 10,
        max_header_bytes: 1024,
    };

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn framing_table() {
        let big = "x".repeat(2000);
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<u16>);
        let cases: &[Case] = &[
            (&[("host", "a")], None),
            (&[("host", "a"), ("content-length", "5")], None),
            (&[("host", "a"), ("transfer-encoding", "chunked")], None),
            (
                &[("host", "a"), ("transfer-encoding", "gzip, chunked")],
                Some(501),
            ),
            (&[], Some(400)),
            (&[("host", "a"), ("host", "b")], Some(400)),
            (
                &[
                    ("host", "a"),
                    ("content-length", "5"),
                    ("transfer-encoding", "chunked"),
                ],
                Some(400),
            ),
            (
                &[
                    ("host", "a"),
                    ("content-length", "5"),
                    ("content-length", "5"),
                ],
                Some(400),
            ),
            (&[("host", "a"), ("content-length", "5, 5")], Some(400)),
            (&[("host", "a"), ("content-length", "-1")], Some(400)),
            (
                &[("host", "a"), ("transfer-encoding", "chunked, gzip")],
                Some(400),
            ),
            (&[("host", "a"), ("x-big", &big)], Some(431)),
            (
                &[
                    ("host", "a"),
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                Some(400),
            ),
        ];
        for (headers, want) in cases {
            let got = check(&req(headers), LIMITS, false)
                .err()
                .map(|r| r.status.as_u16());
            assert_eq!(got, *want, "{headers:?}");
        }
        let many: Vec<(String, String)> = (0..11).map(|i| (format!("x-{i}"), "1".into())).collect();
        let mut r = req(&[("host", "a")]);
        for (k, v) in &many {
            r.append_header(k.clone(), v.as_str()).unwrap();
        }
        assert_eq!(
            check(&r, LIMITS, false).err().map(|r| r.status.as_u16()),
            Some(431)
        );
        let te = req(&[("host", "a"), ("transfer-encoding", "chunked")]);
        assert_eq!(
            check(&te, LIMITS, true).err().map(|r| r.status.as_u16()),
            Some(400)
        );
        assert!(raw_has_content_length(
            b"POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 4\r\n\r\n"
        ));
        assert!(!raw_has_content_length(
            b"POST / HTTP/1.1\r\nX-Content-Length: 4\r\n\r\n"
        ));
    }
}
