//! Response compression for routes with `[routes.compression]`: gzip, brotli or zstd, chosen
//! by the client's `Accept-Encoding` (RFC 9110 §12.5.3, q-values included) among the codings
//! the route offers, the route's order breaking ties.
//!
//! The encoders are Pingora's (`pingora::protocols::http::compression`); the decision is made
//! NOTE(pingora-0.9): pingora-core/src/protocols/http/compression/mod.rs picks the first coding.
//! here because Pingora's module takes the first listed coding, ignores q-values and has a
//! fixed size and type list. A response is left as it is when it is already encoded, is a
//! range (`206` or `Content-Range`), says `Cache-Control: no-transform` (or the request does),
//! is smaller than `min_size`, or is not of a listed media type. Every response that could
//! have been compressed says `Vary: Accept-Encoding`, whatever this client accepted, so that
//! a cache in front never hands a compressed body to a client that cannot read it. Each body
//! chunk is compressed and flushed as it arrives (the vendored encoders flush per chunk), so
//! a streamed response is not held back.

use crate::config::file::{CompressionSection, ContentCoding};
use crate::config::FromConfig;
use crate::config::Problem;
use bytes::Bytes;
use http::header::{
    HeaderValue, ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_RANGE, CONTENT_TYPE, ETAG, VARY,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::compression::{Algorithm, Encode};

/// A route's compression policy.
#[derive(Debug, Clone)]
pub(crate) struct Compression {
    /// Preference order.
    codings: Vec<ContentCoding>,
    min_size: u64,
    types: Vec<MediaRange>,
}

/// `type/subtype` or `type/*`, lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MediaRange {
    Exact(String),
    Family(String),
}

impl MediaRange {
    fn matches(&self, essence: &str) -> bool {
        match self {
            MediaRange::Exact(t) => essence == t,
            MediaRange::Family(f) => essence
                .split_once('/')
                .is_some_and(|(family, _)| family == f),
        }
    }
}

/// The level each coding runs at: their usual defaults for dynamic content (nginx's gzip 6,
/// brotli's 4 and zstd's 3 keep a core at tens of MB/s).
fn level(c: ContentCoding) -> u32 {
    match c {
        ContentCoding::Gzip => 6,
        ContentCoding::Brotli => 4,
        ContentCoding::Zstd => 3,
    }
}

fn token(c: ContentCoding) -> &'static str {
    match c {
        ContentCoding::Gzip => "gzip",
        ContentCoding::Brotli => "br",
        ContentCoding::Zstd => "zstd",
    }
}

impl FromConfig for Compression {
    type Section = CompressionSection;

    fn from_config(
        at: &str,
        s: &CompressionSection,
        _cx: &(),
        problems: &mut Vec<Problem>,
    ) -> Option<Compression> {
        let CompressionSection {
            algorithms,
            min_size,
            content_types,
        } = s;
        let before = problems.len();
        crate::config::bounds::COMPRESSION_MIN_SIZE.check(
            &format!("{at}.min_size"),
            *min_size,
            problems,
        );
        if algorithms.is_empty() {
            problems.push(Problem::new(
                format!("{at}.algorithms"),
                "list at least one of \"zstd\", \"br\", \"gzip\" (or remove [compression])",
            ));
        }
        let mut codings = Vec::new();
        for (i, c) in algorithms.iter().enumerate() {
            if codings.contains(c) {
                problems.push(Problem::new(
                    format!("{at}.algorithms[{i}]"),
                    format!("{:?} is listed twice", token(*c)),
                ));
            }
            codings.push(*c);
        }
        let mut types = Vec::new();
        for (i, t) in content_types.iter().enumerate() {
            let lower = t.trim().to_ascii_lowercase();
            let valid = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
            };
            match lower.split_once('/') {
                Some((family, "*")) if valid(family) => {
                    types.push(MediaRange::Family(family.to_string()))
                }
                Some((family, sub)) if valid(family) && valid(sub) => {
                    types.push(MediaRange::Exact(lower))
                }
                _ => problems.push(Problem::new(
                    format!("{at}.content_types[{i}]"),
                    format!(
                        "{t:?} is not a media type; write \"type/subtype\" or \"type/*\", \
                         e.g. \"application/json\""
                    ),
                )),
            }
        }
        (problems.len() == before).then_some(Compression {
            codings,
            min_size: min_size.0,
            types,
        })
    }
}

impl Compression {
    /// The coding for a client's `Accept-Encoding`: the highest q among the offered codings
    /// (an unlisted one takes `*`'s q), ties to the route's order. None when the client sent
    /// no `Accept-Encoding` (RFC 9110 allows any coding then, but clients that omit it are
    /// mostly tools that would not decode) or accepts none of them.
    pub(crate) fn negotiate(&self, accept: Option<&HeaderValue>) -> Option<ContentCoding> {
        let accept = accept?.to_str().ok()?;
        let weights = parse_accept_encoding(accept);
        let q_of = |name: &str| {
            weights
                .iter()
                .find(|(n, _)| n == name || (name == "gzip" && n == "x-gzip"))
                .or_else(|| weights.iter().find(|(n, _)| n == "*"))
                .map_or(0, |(_, q)| *q)
        };
        let mut best: Option<(ContentCoding, u16)> = None;
        for c in &self.codings {
            let q = q_of(token(*c));
            if q > 0 && best.is_none_or(|(_, b)| q > b) {
                best = Some((*c, q));
            }
        }
        best.map(|(c, _)| c)
    }

    /// The policy and what this client would get (`tollgate explain`).
    pub(crate) fn describe(&self, coding: Option<ContentCoding>) -> String {
        let offered: Vec<&str> = self.codings.iter().map(|c| token(*c)).collect();
        let types: Vec<String> = self
            .types
            .iter()
            .map(|t| match t {
                MediaRange::Exact(e) => e.clone(),
                MediaRange::Family(f) => format!("{f}/*"),
            })
            .collect();
        let this = match coding {
            Some(c) => format!("this client gets {}", token(c)),
            None => "this client's Accept-Encoding takes none of them: identity".into(),
        };
        format!(
            "offers {} for {} of at least {} bytes; {this}",
            offered.join(", "),
            types.join(", "),
            self.min_size
        )
    }

    /// Whether this response is one the route compresses: the answer is the same for every
    /// client, so it also decides `Vary: Accept-Encoding`.
    fn eligible(&self, req: &RequestHeader, resp: &ResponseHeader) -> bool {
        let status = resp.status.as_u16();
        if req.method == http::Method::HEAD
            || resp.status.is_informational()
            || matches!(status, 204 | 206 | 304)
            || resp.headers.contains_key(CONTENT_RANGE)
            || no_transform(req.headers.get_all(CACHE_CONTROL))
            || no_transform(resp.headers.get_all(CACHE_CONTROL))
        {
            return false;
        }
        if let Some(ce) = resp.headers.get(CONTENT_ENCODING) {
            if !ce.as_bytes().eq_ignore_ascii_case(b"identity") {
                return false;
            }
        }
        let length = resp
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if length.is_some_and(|n| n < self.min_size) {
            return false;
        }
        let Some(essence) = resp
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
        else {
            return false;
        };
        self.types.iter().any(|t| t.matches(&essence))
    }

    /// Decide for one response: adds `Vary`, and when compressing rewrites the framing
    /// headers and returns the encoder for the body.
    pub(crate) fn start(
        &self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
    ) -> pingora::Result<Option<Encoder>> {
        if !self.eligible(req, resp) {
            return Ok(None);
        }
        add_vary_accept_encoding(resp)?;
        let Some(coding) = self.negotiate(req.headers.get(ACCEPT_ENCODING)) else {
            return Ok(None);
        };
        let algorithm = match coding {
            ContentCoding::Gzip => Algorithm::Gzip,
            ContentCoding::Brotli => Algorithm::Brotli,
            ContentCoding::Zstd => Algorithm::Zstd,
        };
        let Some(encoder) = algorithm.compressor(level(coding)) else {
            return Ok(None);
        };
        resp.insert_header(CONTENT_ENCODING, token(coding))?;
        resp.remove_header(&CONTENT_LENGTH);
        resp.remove_header(&ACCEPT_RANGES);
        // The bytes change, so a strong validator would lie (RFC 9110 §8.8.1); nginx does the
        // same.
        if let Some(etag) = resp.headers.get(ETAG).cloned() {
            let e = etag.as_bytes();
            if e.starts_with(b"\"") {
                let weak = HeaderValue::from_bytes(&[b"W/", e].concat())
                    .unwrap_or(HeaderValue::from_static(""));
                resp.insert_header(ETAG, weak)?;
            } else if !e.starts_with(b"W/") {
                resp.remove_header(&ETAG);
            }
        }
        Ok(Some(Encoder(encoder)))
    }
}

/// The body encoder of one response.
pub(crate) struct Encoder(Box<dyn Encode + Send + Sync>);

impl Encoder {
    /// Replace `body` with its compressed form; at the end, the coding's trailer. An empty
    /// output that is not the end becomes `None`, which HTTP/1 would otherwise write as the
    /// terminating chunk.
    pub(crate) fn encode(&mut self, body: &mut Option<Bytes>, end: bool) {
        let input = body.take().unwrap_or_default();
        match self.0.encode(&input, end) {
            Ok(out) if out.is_empty() && !end => *body = None,
            Ok(out) => *body = Some(out),
            Err(e) => {
                // Pingora's encoders write to memory and do not fail on input; if one ever
                // did, sending the rest uncompressed would corrupt the body, so stop here.
                log::error!("compression failed: {e}");
                *body = None;
            }
        }
    }
}

/// `Cache-Control: no-transform` in any of the field lines.
fn no_transform<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> bool {
    values.into_iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
        })
    })
}

fn add_vary_accept_encoding(resp: &mut ResponseHeader) -> pingora::Result<()> {
    let present = resp.headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|f| {
                let f = f.trim();
                f == "*" || f.eq_ignore_ascii_case("accept-encoding")
            })
        })
    });
    if !present {
        resp.append_header(VARY, "Accept-Encoding")?;
    }
    Ok(())
}

/// `Accept-Encoding` as (lower-case coding, q in thousandths). Elements with a malformed q
/// are dropped (RFC 9110 §12.4.2 weights are 0 to 1 with at most three decimals).
fn parse_accept_encoding(value: &str) -> Vec<(String, u16)> {
    value
        .split(',')
        .filter_map(|element| {
            let mut parts = element.split(';');
            let name = parts.next()?.trim().to_ascii_lowercase();
            if name.is_empty() {
                return None;
            }
            let mut q = 1000;
            for param in parts {
                let (k, v) = param.split_once('=')?;
                if k.trim().eq_ignore_ascii_case("q") {
                    q = parse_qvalue(v.trim())?;
                }
            }
            Some((name, q))
        })
        .collect()
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
fn parse_qvalue(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::defaults;

    fn policy(codings: Vec<ContentCoding>) -> Compression {
        let s = CompressionSection {
            algorithms: codings,
            min_size: defaults::compression_min_size(),
            content_types: defaults::compression_content_types(),
        };
        let mut problems = Vec::new();
        Compression::from_config("routes[0].compression", &s, &(), &mut problems)
            .expect("valid section")
    }

    fn pick(p: &Compression, ae: &str) -> Option<&'static str> {
        p.negotiate(Some(&HeaderValue::from_str(ae).expect("header")))
            .map(token)
    }

    #[test]
    fn q_values_decide_and_route_order_breaks_ties() {
        use ContentCoding::*;
        let p = policy(vec![Zstd, Brotli, Gzip]);
        assert_eq!(pick(&p, "gzip, br, zstd"), Some("zstd"));
        assert_eq!(pick(&p, "gzip;q=1, br;q=0.9"), Some("gzip"));
        assert_eq!(pick(&p, "br;q=0.5, gzip;q=0.8"), Some("gzip"));
        assert_eq!(pick(&p, "zstd;q=0, br;q=0, gzip;q=0"), None);
        assert_eq!(pick(&p, "*;q=0.1, zstd;q=0"), Some("br"));
        assert_eq!(pick(&p, "identity"), None);
        assert_eq!(pick(&p, "x-gzip"), Some("gzip"));
        assert_eq!(pick(&p, "GZIP ; Q=0.5"), Some("gzip"));
        // A malformed weight drops only its element.
        assert_eq!(pick(&p, "br;q=2, gzip"), Some("gzip"));
        assert_eq!(pick(&p, "br;q=0.0001, gzip;q=0.001"), Some("gzip"));
        let gzip_only = policy(vec![Gzip]);
        assert_eq!(pick(&gzip_only, "br, zstd"), None);
        assert_eq!(gzip_only.negotiate(None), None);
    }

    #[test]
    fn bad_sections_name_the_key() {
        let s = CompressionSection {
            algorithms: vec![ContentCoding::Gzip, ContentCoding::Gzip],
            min_size: defaults::compression_min_size(),
            content_types: vec!["json".into(), "text/*".into()],
        };
        let mut problems = Vec::new();
        assert!(Compression::from_config("r.compression", &s, &(), &mut problems).is_none());
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "r.compression.algorithms[1]",
                "r.compression.content_types[0]"
            ]
        );
    }
}
