//! Request normalization: the one canonical form of the request target, the host and the
//! headers, decided once before routing. Routing, every policy, the cache key and the upstream
//! all see that one form, so a request cannot be authorized as one resource and acted on as
//! another (the Traefik bypasses CVE-2025-32431 and CVE-2025-66490 are this class of bug).
//!
//! - Path: unreserved characters are percent-decoded, other escapes upper-cased, `.` and `..`
//!   segments resolved (RFC 3986 section 5.2.4) with a path that climbs above `/` refused,
//!   repeated slashes merged (optional). Raw control characters, backslashes, encoded control
//!   characters and malformed escapes are refused; encoded `/` and `\` (`%2F`, `%5C`) are kept
//!   encoded and flagged, so the matched route can refuse them (the default) or opt in.
//! - Host: RFC 3986 reg-name restricted to letters, digits, `-`, `_` and `.` (the names DNS
//!   and virtual hosts use), or a bracketed IPv6 literal, with an optional port; lower-cased,
//!   one trailing dot stripped, anything else refused.
//! - Headers: a repeated `Authorization` or API-key header is refused; header names with an
//!   underscore are dropped, refused or kept (CGI-style upstreams read `X_User_ID` and
//!   `X-User-ID` as the same variable).
//!
//! What is refused is answered 400 by the caller; this module knows nothing about hooks.

use http::header::{AUTHORIZATION, HOST};
use http::{HeaderName, HeaderValue, Uri};
use pingora::http::RequestHeader;
use std::borrow::Cow;
use std::net::Ipv6Addr;

/// What to do with request header names that contain `_` (`limits.underscore_headers`).
pub(crate) use crate::config::file::UnderscoreHeaders as Underscores;

/// Normalization settings, from `[limits]` and the listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub merge_slashes: bool,
    pub underscores: Underscores,
}

/// The outcome for a request that was admitted.
#[derive(Debug, Default)]
pub(crate) struct Normalized {
    /// The request target as the client sent it, when the canonical one differs.
    pub received: Option<String>,
    /// The path carries `%2F` or `%5C`: only routes that opt in accept it.
    pub encoded_slash: bool,
}

/// A canonical path (no query), and whether it holds an encoded slash or backslash.
#[derive(Debug, PartialEq, Eq)]
pub struct CanonicalPath<'a> {
    pub path: Cow<'a, str>,
    pub encoded_slash: bool,
}

/// Bytes kept as they are in a path: unreserved, sub-delims, `:`, `@` and `/`.
const PATH_CHARS: [bool; 256] = table(b"-._~!$&'()*+,;=:@/");
/// Bytes kept as they are in a query: the path's, `?` and `%`.
const QUERY_CHARS: [bool; 256] = table(b"-._~!$&'()*+,;=:@/?%");

/// A byte table of the ASCII letters and digits and `extra`.
const fn table(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

fn is_path_char(b: u8) -> bool {
    PATH_CHARS[usize::from(b)]
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escaped(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
}

/// Whether `path` is canonical already: only plain bytes, no dot segments, and no empty
/// segments when slashes are merged. Most requests take this path and allocate nothing.
fn already_canonical(path: &[u8], merge_slashes: bool) -> bool {
    if path.first() != Some(&b'/') || !path.iter().all(|b| is_path_char(*b)) {
        return false;
    }
    let mut segments = path[1..].split(|b| *b == b'/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if seg == b"." || seg == b".." || (seg.is_empty() && merge_slashes && !last) {
            return false;
        }
    }
    true
}

/// The canonical form of a raw path (the request target before `?`), or why it is refused.
pub fn canonical_path(raw: &[u8], merge_slashes: bool) -> Result<CanonicalPath<'_>, &'static str> {
    if already_canonical(raw, merge_slashes) {
        // Plain bytes are ASCII.
        let path = std::str::from_utf8(raw).map_err(|_| "invalid path")?;
        return Ok(CanonicalPath {
            path: Cow::Borrowed(path),
            encoded_slash: false,
        });
    }
    if raw == b"*" {
        return Ok(CanonicalPath {
            path: Cow::Borrowed("*"),
            encoded_slash: false,
        });
    }
    if raw.first() != Some(&b'/') {
        return Err("path must start with /");
    }
    // Pass 1: decode unreserved escapes, normalize the others, refuse what is never valid.
    let mut decoded = Vec::with_capacity(raw.len());
    let mut encoded_slash = false;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    raw.get(i + 1).copied().and_then(hex),
                    raw.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err("malformed percent-encoding in path");
                };
                let v = hi << 4 | lo;
                if is_control(v) {
                    return Err("encoded control character in path");
                }
                if v == b'/' || v == b'\\' {
                    encoded_slash = true;
                }
                if is_unreserved(v) {
                    decoded.push(v);
                } else {
                    push_escaped(&mut decoded, v);
                }
                i += 3;
                continue;
            }
            b'\\' => return Err("backslash in path"),
            b if is_control(b) => return Err("control character in path"),
            b if is_path_char(b) => decoded.push(b),
            // Non-ASCII and characters a URI may not hold raw are sent escaped.
            b => push_escaped(&mut decoded, b),
        }
        i += 1;
    }
    // Pass 2: resolve dot segments and (optionally) merge slashes.
    let mut stack: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    let mut segments = decoded[1..].split(|b| *b == b'/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        trailing_slash = false;
        match seg {
            b"." => trailing_slash = true,
            b".." => {
                if stack.pop().is_none() {
                    return Err("path climbs above the root");
                }
                trailing_slash = true;
            }
            b"" if last => trailing_slash = true,
            b"" if merge_slashes => {}
            seg => stack.push(seg),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for seg in &stack {
        out.push('/');
        // Every byte left is ASCII: plain bytes and `%XX` escapes.
        out.push_str(std::str::from_utf8(seg).map_err(|_| "invalid path")?);
    }
    if stack.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(CanonicalPath {
        path: Cow::Owned(out),
        encoded_slash,
    })
}

/// A query kept as sent, except that control characters are refused and bytes a URI may not
/// hold raw are escaped.
fn canonical_query(raw: &[u8]) -> Result<Cow<'_, str>, &'static str> {
    let plain = |b: u8| QUERY_CHARS[usize::from(b)];
    if raw.iter().all(|b| plain(*b)) {
        return std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|_| "invalid query");
    }
    if raw.iter().any(|b| is_control(*b)) {
        return Err("control character in query");
    }
    let mut out = Vec::with_capacity(raw.len() + 8);
    for b in raw {
        if plain(*b) {
            out.push(*b);
        } else {
            push_escaped(&mut out, *b);
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| "invalid query")
}

/// Whether `host` is canonical already: lower-case labels of `a-z 0-9 - _`, no empty label,
/// no trailing dot, an optional port of digits. One pass, no allocation: most requests.
fn host_already_canonical(host: &[u8]) -> bool {
    let (name, port) = match host.iter().position(|b| *b == b':') {
        Some(i) => (&host[..i], &host[i + 1..]),
        None => (host, &b""[..]),
    };
    let mut label = 0usize;
    for &b in name {
        match b {
            b'.' if label == 0 => return false,
            b'.' => label = 0,
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => {
                label += 1;
                if label > 63 {
                    return false;
                }
            }
            _ => return false,
        }
    }
    // Five digits compare as numbers do when compared as text.
    let port_ok = host.len() == name.len()
        || (!port.is_empty()
            && port.iter().all(u8::is_ascii_digit)
            && (port.len() < 5 || (port.len() == 5 && port <= &b"65535"[..])));
    label > 0 && name.len() <= 253 && port_ok
}

/// The canonical host (with its port, if any), or why it is refused.
pub fn canonical_host(host: &str) -> Result<Cow<'_, str>, &'static str> {
    if host_already_canonical(host.as_bytes()) {
        return Ok(Cow::Borrowed(host));
    }
    const BAD: &str = "invalid Host";
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or(BAD)?;
        ip.parse::<Ipv6Addr>().map_err(|_| BAD)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(BAD)?),
        };
        (&host[..ip.len() + 2], port)
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BAD);
        }
        if p.parse::<u32>().map_err(|_| BAD)? > 65535 {
            return Err(BAD);
        }
    }
    let mut trimmed = false;
    let name = if name.starts_with('[') {
        name
    } else {
        let n = match name.strip_suffix('.') {
            Some(n) => {
                trimmed = true;
                n
            }
            None => name,
        };
        if n.is_empty() || n.len() > 253 {
            return Err(BAD);
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !n.split('.').all(label_ok) {
            return Err(BAD);
        }
        n
    };
    let upper = name.bytes().any(|b| b.is_ascii_uppercase());
    if !upper && !trimmed {
        return Ok(Cow::Borrowed(host));
    }
    let mut out = name.to_ascii_lowercase();
    if let Some(p) = port {
        out.push(':');
        out.push_str(p);
    }
    Ok(Cow::Owned(out))
}

/// Bring `req` to its canonical form in place, or say why it is refused. `api_key_header` is
/// the configured API-key header, which may appear at most once.
pub(crate) fn normalize(
    req: &mut RequestHeader,
    opts: Options,
    api_key_header: Option<&HeaderName>,
) -> Result<Normalized, &'static str> {
    let mut out = Normalized::default();
    check_headers(req, opts.underscores, api_key_header)?;

    // The target as sent: origin-form bytes, or the parsed path of an absolute-form or
    // HTTP/2 target (whose raw bytes carry the scheme and authority first).
    let raw = req.raw_path();
    // Origin-form bytes are checked byte by byte below; other forms here.
    // `*` is the target of a server-wide OPTIONS only (RFC 9112 §3.2.4).
    if raw == b"*" && req.method != http::Method::OPTIONS {
        return Err("asterisk-form target on a method other than OPTIONS");
    }
    let (raw_path, raw_query) = if raw.first() == Some(&b'/') || raw == b"*" {
        match raw.iter().position(|b| *b == b'?') {
            Some(q) => (&raw[..q], Some(&raw[q + 1..])),
            None => (raw, None),
        }
    } else {
        if raw.iter().any(|b| is_control(*b)) {
            return Err("control character in request target");
        }
        // Absolute-form carries a scheme; anything else (`abc`, `x/y`, `%00/admin`, `?x=1`)
        // parses as a bare authority whose path is `/`, and must not become a request for
        // the root.
        let absolute = |scheme: &[u8]| {
            raw.get(..scheme.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
        };
        if !absolute(b"http://") && !absolute(b"https://") {
            return Err("request target is not origin-form or absolute-form");
        }
        let uri = &req.uri;
        (uri.path().as_bytes(), uri.query().map(|q| q.as_bytes()))
    };
    let path = canonical_path(raw_path, opts.merge_slashes)?;
    out.encoded_slash = path.encoded_slash;
    let query = raw_query.map(canonical_query).transpose()?;
    let path_changed = !matches!(path.path, Cow::Borrowed(_))
        || !matches!(query, None | Some(Cow::Borrowed(_)))
        || raw.first() != Some(&b'/') && raw != b"*";

    // The host, from the authority (HTTP/2, absolute-form) or the Host header.
    let host = match (req.uri.authority(), req.headers.get(HOST)) {
        (Some(a), _) => Some(a.as_str()),
        (None, Some(v)) => Some(v.to_str().map_err(|_| "invalid Host")?),
        (None, None) => None,
    };
    let host = host.map(canonical_host).transpose()?.map(Cow::into_owned);
    let authority_changed = match (&host, req.uri.authority()) {
        (Some(h), Some(a)) => h != a.as_str(),
        _ => false,
    };
    let header_changed = match (&host, req.headers.get(HOST)) {
        (Some(h), Some(v)) => h.as_bytes() != v.as_bytes(),
        _ => false,
    };

    if path_changed || authority_changed {
        out.received = Some(String::from_utf8_lossy(raw).into_owned());
        let mut target =
            String::with_capacity(path.path.len() + 1 + query.as_ref().map_or(0, |q| q.len()));
        target.push_str(&path.path);
        if let Some(q) = &query {
            target.push('?');
            target.push_str(q);
        }
        let mut uri = Uri::builder();
        if let (Some(scheme), Some(h)) = (req.uri.scheme(), &host) {
            uri = uri.scheme(scheme.clone()).authority(h.as_str());
        }
        let uri = uri
            .path_and_query(target)
            .build()
            .map_err(|_| "invalid request target")?;
        req.set_uri(uri);
    }
    if header_changed {
        if let Some(h) = &host {
            let v = HeaderValue::from_str(h).map_err(|_| "invalid Host")?;
            req.insert_header(HOST, v).map_err(|_| "invalid Host")?;
        }
    }
    Ok(out)
}

/// Refuse repeated credentials and handle underscored names, in one pass over the headers.
fn check_headers(
    req: &mut RequestHeader,
    underscores: Underscores,
    api_key_header: Option<&HeaderName>,
) -> Result<(), &'static str> {
    let (mut authorization, mut api_key, mut underscored) = (0, 0, false);
    for name in req.headers.iter().map(|(name, _)| name) {
        if *name == AUTHORIZATION {
            authorization += 1;
        } else if api_key_header == Some(name) {
            api_key += 1;
        } else if !underscored && name.as_str().as_bytes().contains(&b'_') {
            underscored = true;
        }
    }
    if authorization > 1 {
        return Err("repeated Authorization header");
    }
    if api_key > 1 {
        return Err("repeated API key header");
    }
    if !underscored || underscores == Underscores::Allow {
        return Ok(());
    }
    if underscores == Underscores::Reject {
        return Err("header name with an underscore");
    }
    let names: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|n| n.as_str().as_bytes().contains(&b'_'))
        .cloned()
        .collect();
    for name in &names {
        req.remove_header(name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(raw: &str) -> Result<(String, bool), &'static str> {
        canonical_path(raw.as_bytes(), true).map(|p| (p.path.into_owned(), p.encoded_slash))
    }

    #[test]
    fn path_table() {
        // (client path, canonical path or None when refused)
        let cases: &[(&str, Option<&str>)] = &[
            ("/", Some("/")),
            ("/a/b", Some("/a/b")),
            ("/a/b/", Some("/a/b/")),
            ("/public/../secure/x", Some("/secure/x")),
            ("/public/%2e%2e/secure/x", Some("/secure/x")),
            ("/public/%2E%2E/secure/x", Some("/secure/x")),
            ("/public/.%2e/secure/x", Some("/secure/x")),
            ("/public/./../secure/x", Some("/secure/x")),
            ("/public/x/../../secure/x", Some("/secure/x")),
            ("/public/x%00/../../secure/x", None),
            ("/public/..\\secure\\x", None),
            ("//secure/x", Some("/secure/x")),
            ("/./secure/x", Some("/secure/x")),
            ("/%73ecure/x", Some("/secure/x")),
            ("/a//b///c", Some("/a/b/c")),
            ("/a/b/..", Some("/a/")),
            ("/a/.", Some("/a/")),
            ("/..", None),
            ("/a/../..", None),
            ("/v2/../../admin", None),
            ("/a\u{1}b", None),
            ("/a%7fb", None),
            ("/a%zz", None),
            ("/a%2", None),
            ("/a%41", Some("/aA")),
            ("/a%7e", Some("/a~")),
            ("/a%3a", Some("/a%3A")),
            ("/a%25", Some("/a%25")),
            ("/caf\u{e9}", Some("/caf%C3%A9")),
            ("/a\"b", Some("/a%22b")),
            ("*", Some("*")),
            ("a/b", None),
        ];
        for (raw, want) in cases {
            let got = path(raw).ok().map(|(p, _)| p);
            assert_eq!(got.as_deref(), *want, "{raw:?}");
        }
    }

    #[test]
    fn encoded_slashes_are_kept_and_flagged() {
        assert_eq!(path("/a%2Fb"), Ok(("/a%2Fb".into(), true)));
        assert_eq!(path("/a%2fb"), Ok(("/a%2Fb".into(), true)));
        assert_eq!(path("/a%5cb"), Ok(("/a%5Cb".into(), true)));
        // An encoded slash is not a separator: no dot segment forms across it.
        assert_eq!(path("/a%2F..%2Fb"), Ok(("/a%2F..%2Fb".into(), true)));
        assert_eq!(path("/a/b"), Ok(("/a/b".into(), false)));
    }

    #[test]
    fn slashes_kept_when_not_merging() {
        let p = canonical_path(b"/a//b", false).unwrap();
        assert_eq!(p.path, "/a//b");
        assert!(matches!(p.path, Cow::Borrowed(_)));
        assert_eq!(canonical_path(b"/a//../b", false).unwrap().path, "/a/b");
    }

    #[test]
    fn canonical_paths_borrow() {
        assert!(matches!(
            canonical_path(b"/api/v1/users", true).unwrap().path,
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn host_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("a.example", Some("a.example")),
            ("A.Example", Some("a.example")),
            ("a.example.", Some("a.example")),
            ("a.example.:8080", Some("a.example:8080")),
            ("A.example:8080", Some("a.example:8080")),
            ("admin.test..", None),
            ("a..b", None),
            (".a", None),
            ("a b", None),
            ("a/b", None),
            ("a\u{80}", None),
            ("a,b", None),
            ("a\"b", None),
            ("a:", None),
            ("a:99999", None),
            ("a:8x", None),
            ("a:1:2", None),
            ("127.0.0.1:80", Some("127.0.0.1:80")),
            ("[::1]:80", Some("[::1]:80")),
            ("[::1]", Some("[::1]")),
            ("[::G]", None),
            ("[::1]x", None),
            ("127.0.0.1:18480", Some("127.0.0.1:18480")),
            ("a:65535", Some("a:65535")),
            ("a:65536", None),
            ("under_score.internal", Some("under_score.internal")),
            ("", None),
        ];
        for (raw, want) in cases {
            let got = canonical_host(raw).ok();
            assert_eq!(got.as_deref(), *want, "{raw:?}");
        }
    }

    fn req(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    const OPTS: Options = Options {
        merge_slashes: true,
        underscores: Underscores::Drop,
    };

    #[test]
    fn request_is_rewritten_in_place() {
        let mut r = req("/a/../b?x=1", &[("host", "A.Example.")]);
        let n = normalize(&mut r, OPTS, None).unwrap();
        assert_eq!(r.uri.path(), "/b");
        assert_eq!(r.uri.query(), Some("x=1"));
        assert_eq!(r.headers["host"], "a.example");
        assert_eq!(n.received.as_deref(), Some("/a/../b?x=1"));
        let mut plain = req("/b?x=1", &[("host", "a.example")]);
        assert!(normalize(&mut plain, OPTS, None)
            .unwrap()
            .received
            .is_none());
    }

    #[test]
    fn credentials_once_and_underscores() {
        let key = HeaderName::from_static("x-api-key");
        let mut two_auth = req("/", &[("authorization", "a"), ("authorization", "b")]);
        assert!(normalize(&mut two_auth, OPTS, Some(&key)).is_err());
        let mut two_keys = req("/", &[("x-api-key", "a"), ("x-api-key", "b")]);
        assert!(normalize(&mut two_keys, OPTS, Some(&key)).is_err());
        let mut under = req("/", &[("x_user_id", "root"), ("x-ok", "1")]);
        normalize(&mut under, OPTS, None).unwrap();
        assert!(!under.headers.contains_key("x_user_id"));
        assert!(under.headers.contains_key("x-ok"));
        let reject = Options {
            underscores: Underscores::Reject,
            ..OPTS
        };
        let mut under = req("/", &[("x_user_id", "root")]);
        assert!(normalize(&mut under, reject, None).is_err());
        let allow = Options {
            underscores: Underscores::Allow,
            ..OPTS
        };
        let mut under = req("/", &[("x_user_id", "root")]);
        normalize(&mut under, allow, None).unwrap();
        assert!(under.headers.contains_key("x_user_id"));
    }
}
