//! Serving a transcoded route: the JSON call read whole, one gRPC call to a target of the
//! route's group over HTTP/2 (its selection, health, breaker, TLS and timeouts apply), and
//! the reply written as JSON or, for a server stream, as NDJSON line by line.

use super::{Ctx, Gateway};
use crate::error;
use crate::grpc::{self, Code};
use crate::route::ProxyAction;
use crate::transcode::{error_body, Call, Deframer, Transcoder};
use crate::upstream::breaker::Outcome;
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use std::time::Duration;

/// How long an idle connection to a target stays pooled.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// Why a call produced no reply.
enum Failed {
    /// The gateway's own error: status and message.
    Gateway(StatusCode, String),
    /// The upstream's gRPC status.
    Status(Code, String),
}

/// What the upstream answered, as far as the client is concerned.
enum Reply {
    /// A unary call's message, as JSON.
    One(Bytes),
    /// A server stream already written to the client.
    Streamed,
}

impl Gateway {
    /// Answer the request on `session` through `t`; `Ok(true)`: answered.
    pub(super) async fn serve_transcoded(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        action: &ProxyAction,
        t: &Transcoder,
    ) -> Result<bool> {
        let max_body = ctx.route.as_ref().map_or(0, |r| r.policy.max_body);
        let mut body = BytesMut::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() as u64 > max_body {
                        let f = Failed::Gateway(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "request body exceeds max_body_size".into(),
                        );
                        return self.transcode_failed(session, ctx, f).await;
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(e),
            }
        }
        let req = session.req_header();
        let call = match t.call(&req.method, req.uri.path(), req.uri.query(), &body) {
            Ok(c) => c,
            Err(r) => {
                let f = Failed::Gateway(r.status, r.message);
                return self.transcode_failed(session, ctx, f).await;
            }
        };
        let extra = super::request::calls_carry(ctx);
        let authority = crate::forward::host(req).unwrap_or("localhost").to_string();
        match self
            .grpc_exchange(session, ctx, action, &call, &authority, &extra)
            .await
        {
            Ok(Reply::One(json)) => {
                ctx.reply.answered = Some(StatusCode::OK);
                let mut headers = vec![(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )];
                headers.extend(ctx.reply.headers.iter().cloned());
                error::respond(
                    session,
                    StatusCode::OK,
                    &headers,
                    json,
                    &ctx.client.request_id,
                )
                .await?;
                Ok(true)
            }
            Ok(Reply::Streamed) => Ok(true),
            Err(f) => self.transcode_failed(session, ctx, f).await,
        }
    }

    async fn transcode_failed(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        f: Failed,
    ) -> Result<bool> {
        let (status, code, message) = match f {
            Failed::Gateway(status, m) => (status, Code::for_gateway_status(status), m),
            Failed::Status(code, m) => (code.http_status(), code, m),
        };
        ctx.reply.answered = Some(status);
        let mut headers = vec![
            (
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            ),
        ];
        headers.extend(ctx.reply.headers.iter().cloned());
        let id = ctx.client.request_id.as_str();
        let body = error_body(code, &message, id);
        error::respond(session, status, &headers, body, &ctx.client.request_id).await?;
        Ok(true)
    }

    /// The gRPC call itself. A server stream is written to the client as it arrives.
    async fn grpc_exchange(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        action: &ProxyAction,
        call: &Call,
        authority: &str,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<Reply, Failed> {
        let group = &action.upstream;
        let Some(mut target) = group.select(&[], &[]) else {
            return Err(Failed::Gateway(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream target".into(),
            ));
        };
        let mut peer = group.peer(target.target().addr);
        let o = &mut peer.options;
        o.connection_timeout = Some(action.connect_timeout);
        o.total_connection_timeout = Some(action.connect_timeout);
        o.read_timeout = Some(action.read_timeout);
        o.write_timeout = Some(action.read_timeout);
        let (up, _) = match self.connector.get_http_session(&peer).await {
            Ok(s) => s,
            Err(e) => {
                target.record(Outcome::Failure);
                return Err(transport(e));
            }
        };
        let HttpSession::H2(mut h2) = up else {
            target.record(Outcome::Failure);
            return Err(Failed::Gateway(
                StatusCode::BAD_GATEWAY,
                "upstream did not speak HTTP/2".into(),
            ));
        };
        let req = call
            .request(authority, extra)
            .map_err(|_| Failed::Gateway(StatusCode::BAD_REQUEST, "bad request".into()))?;
        ctx.upstream.sent_at = Some(std::time::Instant::now());
        let outcome = exchange(session, ctx, &mut h2, req, call).await;
        match &outcome {
            Ok(Reply::One(_)) => ctx.reply.grpc_status = Some(Code::Ok),
            Err(Failed::Status(code, _)) => ctx.reply.grpc_status = Some(*code),
            // A stream's status was noted as it ended.
            Ok(Reply::Streamed) | Err(Failed::Gateway(..)) => {}
        }
        match &outcome {
            Ok(_) | Err(Failed::Status(..)) => {
                let unavailable = matches!(outcome, Err(Failed::Status(Code::Unavailable, _)));
                target.record(if unavailable {
                    Outcome::Failure
                } else {
                    Outcome::Success
                });
                if outcome.is_ok() {
                    self.connector
                        .release_http_session(HttpSession::H2(h2), &peer, Some(POOL_IDLE))
                        .await;
                }
            }
            Err(Failed::Gateway(..)) => target.record(Outcome::Failure),
        }
        outcome
    }
}

/// A failed exchange with the upstream, as the client hears it.
fn transport(e: Box<Error>) -> Failed {
    let (status, message) =
        error::classify(&e.into_up()).unwrap_or((StatusCode::BAD_GATEWAY, "upstream unavailable"));
    Failed::Gateway(status, message.into())
}

/// Send the call on `h2` and read the answer.
async fn exchange(
    session: &mut Session,
    ctx: &mut Ctx,
    h2: &mut pingora::protocols::http::v2::client::Http2Session,
    req: pingora::http::RequestHeader,
    call: &Call,
) -> Result<Reply, Failed> {
    let malformed = |why: String| {
        log::warn!("transcoding: {why}");
        Failed::Gateway(StatusCode::BAD_GATEWAY, "malformed gRPC reply".into())
    };
    h2.write_request_header(Box::new(req), false)
        .map_err(transport)?;
    h2.write_request_body(call.body.clone(), true)
        .await
        .map_err(transport)?;
    h2.read_response_header().await.map_err(transport)?;
    let head = h2
        .response_header()
        .cloned()
        .ok_or_else(|| malformed("no response header".into()))?;
    if head.status != StatusCode::OK {
        return Err(malformed(format!("HTTP status {}", head.status)));
    }
    let status_of = |h: &http::HeaderMap| {
        grpc::status_of(h).map(|code| {
            let message = h
                .get(grpc::GRPC_MESSAGE)
                .map(grpc::message_text)
                .unwrap_or_default();
            (code, message)
        })
    };
    // Trailers-only: the status is in the head and no message follows.
    if let Some((code, message)) = status_of(&head.headers) {
        if code != Code::Ok {
            return Err(Failed::Status(code, message));
        }
    }
    let mut frames = Deframer::default();
    let mut replies: Vec<Bytes> = Vec::new();
    let mut streamed = false;
    while let Some(chunk) = h2.read_response_body().await.map_err(transport)? {
        for msg in frames.push(&chunk).map_err(malformed)? {
            let json = call.reply_json(&msg).map_err(malformed)?;
            if !call.server_streaming {
                replies.push(json);
                continue;
            }
            if !streamed {
                start_stream(session, ctx).await.map_err(transport)?;
                streamed = true;
            }
            let mut line = BytesMut::with_capacity(json.len() + 1);
            line.extend_from_slice(&json);
            line.extend_from_slice(b"\n");
            session
                .write_response_body(Some(line.freeze()), false)
                .await
                .map_err(transport)?;
        }
    }
    if !frames.is_empty() {
        return Err(malformed("reply ends inside a message".into()));
    }
    let trailers = h2.read_trailers().await.map_err(transport)?;
    let status = trailers
        .as_ref()
        .and_then(status_of)
        .or_else(|| status_of(&head.headers));
    let (code, message) = status.unwrap_or((Code::Unknown, "no grpc-status".into()));
    if call.server_streaming {
        ctx.reply.grpc_status = Some(code);
        if code != Code::Ok && !streamed {
            return Err(Failed::Status(code, message));
        }
        if !streamed {
            start_stream(session, ctx).await.map_err(transport)?;
        }
        // A stream that failed after messages ends with the error as its last line.
        let last = if code == Code::Ok {
            Bytes::new()
        } else {
            let id = ctx.client.request_id.as_str();
            let mut line = BytesMut::from(&error_body(code, &message, id)[..]);
            line.extend_from_slice(b"\n");
            line.freeze()
        };
        session
            .write_response_body(Some(last), true)
            .await
            .map_err(transport)?;
        return Ok(Reply::Streamed);
    }
    if code != Code::Ok {
        return Err(Failed::Status(code, message));
    }
    match <[Bytes; 1]>::try_from(replies) {
        Ok([one]) => Ok(Reply::One(one)),
        Err(v) => Err(malformed(format!(
            "{} reply messages to a unary call",
            v.len()
        ))),
    }
}

/// The head of an NDJSON stream.
async fn start_stream(session: &mut Session, ctx: &mut Ctx) -> Result<()> {
    ctx.reply.answered = Some(StatusCode::OK);
    let mut resp = ResponseHeader::build(StatusCode::OK, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/x-ndjson")?;
    if !session.is_http2() {
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    let (name, id) = ctx.client.request_id.pair();
    resp.insert_header(name, id)?;
    for (k, v) in &ctx.reply.headers {
        resp.append_header(k.clone(), v.clone())?;
    }
    session.write_response_header(Box::new(resp), false).await
}
