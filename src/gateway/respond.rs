//! What the client is sent: the upstream's response head and body with the route's edits,
//! the gateway's own answers (refusals, fallbacks, proxy failures) with the headers a proxied
//! answer would carry, and gRPC trailers.

use super::context::GaugeGuard;
use super::{Ctx, Gateway};
use crate::error::{self, Reject};
use crate::forward;
use crate::grpc;
use crate::transform::{BodyBuffer, JsonRename};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, Session};
use std::borrow::Cow;

/// The body a filter rewrites has no length known in advance: HTTP/1 sends it chunked.
fn body_length_unknown(h2: bool, resp: &mut ResponseHeader) -> Result<()> {
    resp.remove_header(&http::header::CONTENT_LENGTH);
    if !h2 {
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

impl Gateway {
    /// The route's response edits, security headers, body rewriters and the gateway's own
    /// headers, on a final response to `req`.
    pub(super) fn decorate_response(
        &self,
        req: &RequestHeader,
        h2: bool,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Borrowed, not cloned: an `Arc` clone is a write every worker makes to the route's
        // shared count (benches/atomics-per-request.sh).
        if let Some(route) = ctx.route.as_deref() {
            let t = &route.transform;
            for (name, value) in &t.security {
                if !resp.headers.contains_key(name.name()) {
                    resp.insert_header(name, value.clone())?;
                }
            }
            t.response.apply(resp)?;
            let has_body =
                req.method != http::Method::HEAD && !matches!(resp.status.as_u16(), 204 | 304);
            if has_body
                && !t.json_response.is_empty()
                && JsonRename::applies_to(resp.headers.get(http::header::CONTENT_TYPE))
            {
                body_length_unknown(h2, resp)?;
                ctx.body.response_json = Some(BodyBuffer::default());
            }
            if let Some(c) = &route.compression {
                ctx.body.compressor = c.start(req, resp)?;
                if ctx.body.compressor.is_some() {
                    body_length_unknown(h2, resp)?;
                }
            }
        }
        // Never indexed in HTTP/2's HPACK table: a value that is new on every response only
        // evicts entries that could be reused (RFC 7541 section 6.2.3). HTTP/1 ignores it.
        let mut id = ctx.client.request_id.value.clone();
        id.set_sensitive(true);
        resp.insert_header(ctx.client.request_id.header, id)?;
        Ok(())
    }

    /// Refuse with the JSON error, carrying the headers the route's answers carry.
    pub(super) async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        mut reject: Reject,
    ) -> Result<bool> {
        ctx.reply.answered = Some(reject.status);
        ctx.reply.reason = Some(reject.reason.clone());
        own_answer_headers(session.req_header(), ctx, &mut reject.headers);
        error::respond_error(session, &reject, &ctx.client.request_id).await?;
        Ok(true)
    }

    /// The final response head the client gets (1xx are relayed as they came): the route's
    /// edits, the gateway's headers, the cache's verdict, the headers policies asked for.
    pub(crate) fn response_head(
        &self,
        session: &Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if resp.status.is_informational() && resp.status != StatusCode::SWITCHING_PROTOCOLS {
            // Relayed as the upstream sent it (Pingora strips hop-by-hop framing).
            return Ok(());
        }
        forward::prepare_response(resp);
        // One grow of the parsed map (it has no spare room) for what is added from here on:
        // X-Request-ID, the route's security headers, the headers policies asked for, and the
        // two Pingora adds as it writes the head (Date, Connection).
        let security = ctx.route.as_ref().map_or(0, |r| r.transform.security.len());
        resp.reserve(3 + security + ctx.reply.headers.len());
        if let Some(bridge) = ctx.bridge() {
            bridge.response_header(resp)?;
        }
        if resp.status == StatusCode::SWITCHING_PROTOCOLS && session.is_upgrade_req() {
            ctx.reply.upgraded = Some(GaugeGuard::new(&self.metrics.upgraded));
        }
        let h2 = resp.version == http::Version::HTTP_2 || session.is_http2();
        self.decorate_response(session.req_header(), h2, resp, ctx)?;
        self.cache_response_head(session, resp, ctx)?;
        for (name, value) in &ctx.reply.headers {
            resp.append_header(name.clone(), value.clone())?;
        }
        Ok(())
    }

    /// Each response body chunk through the route's rewriters: JSON rename, compression,
    /// the gRPC-Web bridge.
    pub(crate) fn response_body(body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut Ctx) {
        if let (Some(buffer), Some(route)) = (ctx.body.response_json.as_mut(), ctx.route.as_ref()) {
            *body = buffer.feed(body.take(), end_of_stream, &route.transform.json_response);
        }
        if let Some(encoder) = ctx.body.compressor.as_mut() {
            encoder.encode(body, end_of_stream);
        }
        if let Some(bridge) = ctx.bridge() {
            bridge.response_body(body, end_of_stream);
        }
    }

    /// The upstream's trailers: a gRPC call's status, for the log.
    pub(crate) fn upstream_trailers(trailers: &http::HeaderMap, ctx: &mut Ctx) {
        if ctx.grpc.is_some() {
            if let Some(code) = grpc::status_of(trailers) {
                ctx.reply.grpc_status = Some(code);
            }
        }
    }

    /// A bridged gRPC-Web call ends with its trailers as the last frame of the body.
    pub(crate) fn response_trailers(
        trailers: &mut http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<Option<Bytes>> {
        match ctx.bridge() {
            Some(bridge) => bridge.trailers(trailers),
            None => Ok(None),
        }
    }

    /// A request that could not be proxied: the group's fallback when no target was
    /// healthy, else the JSON error (or, mid-way through a gRPC answer, its trailers).
    pub(crate) async fn proxy_failure(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Ctx,
    ) -> FailToProxy {
        if ctx.upstream.no_target && session.response_written().is_none() {
            session.set_keepalive(None);
            let fallback = ctx
                .group()
                .and_then(|g| g.fallback.as_ref())
                .map(|f| (f.status, f.headers.clone(), f.body.clone()));
            if let Some((status, mut headers, body)) = fallback {
                ctx.reply.answered = Some(status);
                ctx.reply.reason = Some(Cow::Borrowed("no_healthy_target_fallback"));
                own_answer_headers(session.req_header(), ctx, &mut headers);
                if let Err(write_err) =
                    error::respond(session, status, &headers, body, &ctx.client.request_id).await
                {
                    log::debug!("could not send fallback response: {write_err}");
                }
                return FailToProxy {
                    error_code: status.as_u16(),
                    can_reuse_downstream: false,
                };
            }
        }
        let Some((status, message)) = error::classify(e) else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let mut reject = Reject::new(status, message);
        ctx.reply.answered = Some(status);
        ctx.reply.reason = Some(reject.reason.clone());
        // The connection is not reused after a proxy failure: say so, so that clients do not
        // send their next request into a closing connection.
        session.set_keepalive(None);
        // Nothing final was sent yet: no header, or only informational ones.
        let final_sent = session.response_written().is_some_and(|r| {
            !r.status.is_informational() || r.status == StatusCode::SWITCHING_PROTOCOLS
        });
        if !final_sent {
            own_answer_headers(session.req_header(), ctx, &mut reject.headers);
            if let Err(write_err) =
                error::respond_error(session, &reject, &ctx.client.request_id).await
            {
                log::debug!("could not send error response: {write_err}");
            }
        } else if ctx.grpc.is_some() && session.is_http2() {
            // A gRPC response already under way still ends with a status the client reads
            // (a reset stream would reach it as a bare protocol error).
            let code = grpc::Code::for_gateway_status(status);
            let trailers = grpc::status_trailers(code, message);
            if let Err(write_err) = session.write_response_trailers(trailers).await {
                log::debug!("could not send gRPC trailers: {write_err}");
            }
        }
        FailToProxy {
            error_code: status.as_u16(),
            can_reuse_downstream: false,
        }
    }
}

/// What the gateway's own answers on a route (refusals, direct responses, fallbacks, proxy
/// failures) carry as proxied responses do: the headers the policies asked for (CORS for an
/// allowed origin with `Vary: Origin`, rate-limit state), CORS even when the refusal came
/// before the CORS step ran, and the route's security headers. Without them a browser app
/// reads a 401 as a CORS failure and cannot send its user to log in.
pub(super) fn own_answer_headers(
    req: &RequestHeader,
    ctx: &mut Ctx,
    headers: &mut Vec<(HeaderName, HeaderValue)>,
) {
    for h in std::mem::take(&mut ctx.reply.headers) {
        if !headers.contains(&h) {
            headers.push(h);
        }
    }
    let Some(route) = ctx.route.as_ref() else {
        return;
    };
    let asked = crate::policy::Asked {
        req,
        client_ip: ctx.client.ip,
    };
    for check in &route.policy.checks {
        check.own_answer(&asked, headers);
    }
    for (name, value) in &route.transform.security {
        if !headers.iter().any(|(n, _)| n == name.name()) {
            headers.push((name.name().clone(), value.clone()));
        }
    }
}
