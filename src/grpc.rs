//! gRPC at the gateway: recognising a gRPC request, answering the gateway's own refusals as
//! gRPC statuses (a gRPC client reads `grpc-status`, not the HTTP status), the `grpc-timeout`
//! deadline, and the mapping between gRPC codes and HTTP statuses in both directions
//! (<https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md>, with the
//! gateway's own 429 and 504 read as `RESOURCE_EXHAUSTED` and `DEADLINE_EXCEEDED`, which is
//! what they mean here).

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use pingora::http::RequestHeader;
use std::time::Duration;

pub(crate) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub(crate) const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub(crate) const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// How a request speaks gRPC, by its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// `application/grpc`, `application/grpc+proto`, ...: HTTP/2 with trailers.
    Grpc,
    /// `application/grpc-web` (binary frames), trailers in the body.
    Web,
    /// `application/grpc-web-text`: the same frames, base64.
    WebText,
}

impl Flavor {
    pub(crate) fn of(req: &RequestHeader) -> Option<Flavor> {
        let ct = req.headers.get(http::header::CONTENT_TYPE)?.as_bytes();
        let rest = ct.strip_prefix(b"application/grpc")?;
        // The subtype ends here or at `+codec` / `;params`; `application/grpcfoo` is not gRPC.
        let (flavor, rest) = if let Some(r) = rest.strip_prefix(b"-web-text") {
            (Flavor::WebText, r)
        } else if let Some(r) = rest.strip_prefix(b"-web") {
            (Flavor::Web, r)
        } else {
            (Flavor::Grpc, rest)
        };
        matches!(rest.first(), None | Some(b'+' | b';')).then_some(flavor)
    }

    /// The content type of a response without messages in this flavor.
    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Flavor::Grpc => "application/grpc",
            Flavor::Web => "application/grpc-web+proto",
            Flavor::WebText => "application/grpc-web-text+proto",
        })
    }
}

/// The gRPC status codes the gateway produces or maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// A `grpc-status` value; anything unparseable or out of range is `UNKNOWN`.
    pub(crate) fn parse(v: &[u8]) -> Code {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .and_then(|n| Code::ALL.get(n).copied())
            .unwrap_or(Code::Unknown)
    }

    /// What a gRPC client should read for a response the gateway answers with `status`.
    pub(crate) fn for_gateway_status(status: StatusCode) -> Code {
        match status.as_u16() {
            200..=299 => Code::Ok,
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 | 405 => Code::Unimplemented,
            408 | 504 => Code::DeadlineExceeded,
            413 | 429 | 431 => Code::ResourceExhausted,
            502 | 503 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }

    /// The HTTP status a JSON client gets for this code (transcoding), as Google's API
    /// design guide and Envoy's transcoder map them.
    pub(crate) fn http_status(self) -> StatusCode {
        match self {
            Code::Ok => StatusCode::OK,
            Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                StatusCode::BAD_REQUEST
            }
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The canonical name (`NOT_FOUND`), for JSON error bodies.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    fn value(self) -> HeaderValue {
        HeaderValue::from(self as u16)
    }
}

/// `grpc-message` is percent-encoded: everything outside printable ASCII, and `%`.
const MESSAGE_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// The `grpc-status` in `headers` (a trailers-only head, or trailers), when there is one.
pub(crate) fn status_of(headers: &HeaderMap) -> Option<Code> {
    headers.get(GRPC_STATUS).map(|v| Code::parse(v.as_bytes()))
}

/// A `grpc-message` as text.
pub(crate) fn message_text(v: &HeaderValue) -> String {
    percent_encoding::percent_decode(v.as_bytes())
        .decode_utf8_lossy()
        .into_owned()
}

fn message_value(message: &str) -> HeaderValue {
    let encoded = percent_encoding::utf8_percent_encode(message, MESSAGE_ESCAPES).to_string();
    HeaderValue::from_str(&encoded).unwrap_or(HeaderValue::from_static("error"))
}

/// The headers of a trailers-only gRPC response saying `code` and `message` (HTTP status 200,
/// no body): what the gateway answers instead of its JSON error on a gRPC request.
pub(crate) fn status_headers(
    flavor: Flavor,
    code: Code,
    message: &str,
) -> Vec<(HeaderName, HeaderValue)> {
    vec![
        (http::header::CONTENT_TYPE, flavor.content_type()),
        (GRPC_STATUS, code.value()),
        (GRPC_MESSAGE, message_value(message)),
    ]
}

/// The trailers that end a gRPC response whose upstream failed after it began.
pub(crate) fn status_trailers(code: Code, message: &str) -> HeaderMap {
    let mut t = HeaderMap::with_capacity(2);
    t.insert(GRPC_STATUS, code.value());
    t.insert(GRPC_MESSAGE, message_value(message));
    t
}

/// One uncompressed message as a length-prefixed gRPC frame.
pub(crate) fn frame(msg: &[u8]) -> bytes::Bytes {
    let mut out = bytes::BytesMut::with_capacity(5 + msg.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out.freeze()
}

/// The message of a body holding exactly one uncompressed frame.
pub(crate) fn unframe(body: &[u8]) -> Option<&[u8]> {
    match next_frame(body)? {
        (Frame::Message(m), []) => Some(m),
        _ => None,
    }
}

/// A frame read from a gRPC body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    Message(&'a [u8]),
    /// A compressed message (flag 1): the gateway does not decompress.
    Compressed,
}

/// The first complete length-prefixed frame of `buf` and what follows it; `None` until one
/// is complete.
pub(crate) fn next_frame(buf: &[u8]) -> Option<(Frame<'_>, &[u8])> {
    let (head, rest) = buf.split_at_checked(5)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let (msg, rest) = rest.split_at_checked(len)?;
    let frame = if head[0] & 1 == 1 {
        Frame::Compressed
    } else {
        Frame::Message(msg)
    };
    Some((frame, rest))
}

/// `grpc-timeout`: at most 8 digits and a unit (`H M S m u n`).
pub(crate) fn parse_timeout(v: &HeaderValue) -> Option<Duration> {
    let b = v.as_bytes();
    let (&unit, digits) = b.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `d` as a `grpc-timeout` value, in the finest unit that fits 8 digits (rounded down, at
/// least 1 ns: an expired deadline is answered by the gateway, never forwarded).
pub(crate) fn format_timeout(d: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos().max(1);
    let (n, unit) = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
    ]
    .iter()
    .map(|&(per, unit)| (nanos / per, unit))
    .find(|&(n, _)| n <= MAX)
    .unwrap_or(((nanos / 3_600_000_000_000).min(MAX), 'H'));
    HeaderValue::from_str(&format!("{n}{unit}")).unwrap_or(HeaderValue::from_static("1n"))
}

/// Where a gRPC request body is in its length-prefixed messages (a flag byte and a 4-byte
/// big-endian length, then the message): so that a stream is limited per message, as gRPC's
/// own maximum message size is, and not by the bytes of the whole call.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Messages {
    /// Bytes of the next prefix read so far.
    prefix: [u8; 5],
    prefix_len: u8,
    /// Bytes of the current message still to come.
    left: u64,
}

impl Messages {
    /// Walk `chunk`; `Err(length)` for the first message longer than `max`.
    pub(crate) fn feed(&mut self, mut chunk: &[u8], max: u64) -> Result<(), u64> {
        while !chunk.is_empty() {
            if self.left > 0 {
                let n = chunk
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                self.left -= n as u64;
                chunk = &chunk[n..];
                continue;
            }
            let have = usize::from(self.prefix_len);
            let n = chunk.len().min(5 - have);
            self.prefix[have..have + n].copy_from_slice(&chunk[..n]);
            self.prefix_len += n as u8;
            chunk = &chunk[n..];
            if self.prefix_len < 5 {
                break;
            }
            self.prefix_len = 0;
            let [_, a, b, c, d] = self.prefix;
            let length = u64::from(u32::from_be_bytes([a, b, c, d]));
            if length > max {
                return Err(length);
            }
            self.left = length;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_limited_one_by_one_wherever_the_chunks_split() {
        let message = |n: usize| {
            let mut m = vec![0u8];
            m.extend((n as u32).to_be_bytes());
            m.extend(vec![7u8; n]);
            m
        };
        let mut stream = Vec::new();
        for _ in 0..12 {
            stream.extend(message(1000));
        }
        for split in [1, 3, 5, 999, 1005, 4096] {
            let mut m = Messages::default();
            for chunk in stream.chunks(split) {
                assert_eq!(m.feed(chunk, 1000), Ok(()), "chunks of {split}");
            }
        }
        let mut m = Messages::default();
        let mut big = message(10);
        big.extend(message(1001));
        assert_eq!(m.feed(&big, 1000), Err(1001));
    }

    fn req(ct: &str) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/pkg.Svc/Method", None).expect("request");
        r.insert_header("content-type", ct).expect("header");
        r
    }

    #[test]
    fn flavor_by_content_type() {
        assert_eq!(Flavor::of(&req("application/grpc")), Some(Flavor::Grpc));
        assert_eq!(
            Flavor::of(&req("application/grpc+proto")),
            Some(Flavor::Grpc)
        );
        assert_eq!(Flavor::of(&req("application/grpc-web")), Some(Flavor::Web));
        assert_eq!(
            Flavor::of(&req("application/grpc-web+proto")),
            Some(Flavor::Web)
        );
        assert_eq!(
            Flavor::of(&req("application/grpc-web-text")),
            Some(Flavor::WebText)
        );
        assert_eq!(Flavor::of(&req("application/grpcx")), None);
        assert_eq!(Flavor::of(&req("application/json")), None);
    }

    #[test]
    fn timeouts_parse_and_format() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(parse_timeout(&v("300m")), Some(Duration::from_millis(300)));
        assert_eq!(parse_timeout(&v("2S")), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout(&v("1H")), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(&v("123456789m")), None, "9 digits");
        assert_eq!(parse_timeout(&v("m")), None);
        assert_eq!(parse_timeout(&v("10x")), None);
        assert_eq!(parse_timeout(&v("-1m")), None);
        for d in [
            Duration::from_nanos(5),
            Duration::from_millis(250),
            Duration::from_secs(7200),
        ] {
            let back = parse_timeout(&format_timeout(d)).expect("parses");
            assert!(back <= d && d - back < Duration::from_millis(1), "{d:?}");
        }
    }

    #[test]
    fn gateway_statuses_map_to_the_codes_clients_expect() {
        let c = |s: u16| Code::for_gateway_status(StatusCode::from_u16(s).expect("status"));
        assert_eq!(c(401), Code::Unauthenticated);
        assert_eq!(c(403), Code::PermissionDenied);
        assert_eq!(c(429), Code::ResourceExhausted);
        assert_eq!(c(404), Code::Unimplemented);
        assert_eq!(c(503), Code::Unavailable);
        assert_eq!(c(504), Code::DeadlineExceeded);
        assert_eq!(Code::parse(b"5"), Code::NotFound);
        assert_eq!(Code::parse(b"99"), Code::Unknown);
        assert_eq!(Code::NotFound.http_status(), StatusCode::NOT_FOUND);
        assert_eq!(Code::InvalidArgument.http_status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            message_value("50% off\n").to_str().ok(),
            Some("50%25 off%0A")
        );
    }
}
