//! gRPC-Web to gRPC, on routes with `grpc_web = true`: browsers send `application/grpc-web`
//! (binary frames) or `application/grpc-web-text` (the same, base64) over HTTP/1.1 or HTTP/2,
//! and the upstream sees plain gRPC over HTTP/2. Pingora's bridge
//! (`pingora::protocols::http::bridge::grpc_web`) rewrites the heads and turns the upstream's
//! trailers into the trailer frame at the end of the body; this adds the base64 of the text
//! flavor around it, streaming (a chunk is encoded as it passes, three bytes at a time, so
//! server streams are not held back).

use crate::grpc::Flavor;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::bridge::grpc_web::GrpcWebCtx;

/// Standard base64, padding optional (a last unpadded quantum is accepted).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One gRPC-Web call being bridged.
pub(crate) struct Bridge {
    ctx: GrpcWebCtx,
    /// The text flavor's base64 state.
    text: Option<Text>,
}

/// Base64 both ways, across chunk boundaries.
#[derive(Default)]
struct Text {
    /// Request characters not yet decoded (an incomplete quantum).
    decode_rest: Vec<u8>,
    /// Response bytes not yet encoded (fewer than three).
    encode_rest: Vec<u8>,
}

impl Bridge {
    /// Start bridging a `flavor` request whose upstream copy is `upstream`; `None` for plain
    /// gRPC, which needs no bridge.
    pub(crate) fn start(flavor: Flavor, upstream: &mut RequestHeader) -> Result<Option<Bridge>> {
        let text = match flavor {
            Flavor::Grpc => return Ok(None),
            Flavor::Web => None,
            Flavor::WebText => {
                // NOTE(pingora-0.9): pingora-core/src/modules/http/grpc_web.rs bridges `application/grpc-web` only.
                // Pingora's bridge knows the binary flavor: hand it that, and decode here.
                let ct = upstream
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_ascii_lowercase()
                    .replacen("application/grpc-web-text", "application/grpc-web", 1);
                upstream.insert_header(http::header::CONTENT_TYPE, ct)?;
                upstream.remove_header(&http::header::CONTENT_LENGTH);
                Some(Text::default())
            }
        };
        let mut ctx = GrpcWebCtx::default();
        ctx.init();
        ctx.request_header_filter(upstream);
        // Browser-only headers mean nothing to a gRPC server.
        upstream.remove_header("x-grpc-web");
        Ok(Some(Bridge { ctx, text }))
    }

    /// Decode a text request body as it arrives.
    pub(crate) fn request_body(&mut self, body: &mut Option<Bytes>, end: bool) -> Result<()> {
        let Some(text) = self.text.as_mut() else {
            return Ok(());
        };
        let mut input = std::mem::take(&mut text.decode_rest);
        if let Some(b) = body.as_ref() {
            input.extend(b.iter().filter(|c| !c.is_ascii_whitespace()));
        }
        let whole = if end {
            input.len()
        } else {
            input.len() / 4 * 4
        };
        let mut out = Vec::with_capacity(whole / 4 * 3);
        // Each message may be encoded on its own, padding included: decode segment by
        // segment, a segment ending at each quantum that carries padding.
        let mut from = 0;
        for (i, quantum) in input[..whole].chunks(4).enumerate() {
            let to = ((i + 1) * 4).min(whole);
            if quantum.contains(&b'=') || to == whole {
                LENIENT
                    .decode_vec(&input[from..to], &mut out)
                    .or_err(ErrorType::HTTPStatus(400), "malformed grpc-web-text body")?;
                from = to;
            }
        }
        text.decode_rest = input[whole..].to_vec();
        *body = (!out.is_empty() || end).then(|| Bytes::from(out));
        Ok(())
    }

    /// The response head: gRPC-Web content type, chunked.
    pub(crate) fn response_header(&mut self, resp: &mut ResponseHeader) -> Result<()> {
        self.ctx.response_header_filter(resp);
        if self.text.is_some() {
            let ct = resp
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .filter(|ct| ct.starts_with("application/grpc-web"))
                .map(|ct| ct.replacen("application/grpc-web", "application/grpc-web-text", 1));
            if let Some(ct) = ct {
                resp.insert_header(http::header::CONTENT_TYPE, ct)?;
                resp.remove_header(&http::header::CONTENT_LENGTH);
            }
        }
        Ok(())
    }

    /// Encode a text response body as it passes.
    pub(crate) fn response_body(&mut self, body: &mut Option<Bytes>, end: bool) {
        if let Some(text) = self.text.as_mut() {
            *body = text.encode(body.as_deref().unwrap_or_default(), end);
        }
    }

    /// The upstream's trailers as the gRPC-Web trailer frame, the body's last bytes.
    pub(crate) fn trailers(&mut self, trailers: &mut HeaderMap) -> Result<Option<Bytes>> {
        let frame = self.ctx.response_trailer_filter(trailers)?;
        Ok(match (self.text.as_mut(), frame) {
            (Some(text), Some(frame)) => text.encode(&frame, true),
            (_, frame) => frame,
        })
    }
}

impl Text {
    fn encode(&mut self, chunk: &[u8], end: bool) -> Option<Bytes> {
        let mut input = std::mem::take(&mut self.encode_rest);
        input.extend_from_slice(chunk);
        let whole = if end {
            input.len()
        } else {
            input.len() / 3 * 3
        };
        let mut out = BytesMut::new();
        out.resize(whole.div_ceil(3) * 4, 0);
        let n = STANDARD
            .encode_slice(&input[..whole], &mut out)
            .unwrap_or_default();
        out.truncate(n);
        self.encode_rest = input[whole..].to_vec();
        (!out.is_empty() || end).then(|| out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_encoding_streams_without_padding_between_chunks() {
        let mut t = Text::default();
        let mut out = Vec::new();
        for chunk in [&b"he"[..], b"llo ", b"wor", b"ld"] {
            out.extend_from_slice(&t.encode(chunk, false).unwrap_or_default());
        }
        out.extend_from_slice(&t.encode(b"", true).unwrap_or_default());
        assert_eq!(out, STANDARD.encode("hello world").as_bytes());
    }

    #[test]
    fn text_decoding_takes_separately_padded_messages_in_any_chunks() {
        let mut b = Bridge {
            ctx: GrpcWebCtx::default(),
            text: Some(Text::default()),
        };
        let wire = format!("{}{}", STANDARD.encode("ab"), STANDARD.encode("cdefg"));
        let mut got = Vec::new();
        let bytes = wire.as_bytes();
        for (i, piece) in bytes.chunks(3).enumerate() {
            let end = (i + 1) * 3 >= bytes.len();
            let mut body = Some(Bytes::copy_from_slice(piece));
            b.request_body(&mut body, end).unwrap();
            got.extend_from_slice(&body.unwrap_or_default());
        }
        assert_eq!(got, b"abcdefg");
        let mut bad = Some(Bytes::from_static(b"!!!!"));
        assert!(b.request_body(&mut bad, true).is_err());
    }
}
