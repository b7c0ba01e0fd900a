//! The upstream side of a request: which target takes the attempt and with which timeouts,
//! what the upstream is sent, and the bounds on what it answers before its final head.

use super::{Ctx, Gateway};
use crate::forward;
use crate::grpc;
use crate::observe::trace;
use crate::route::Route;
use crate::transform::{BodyBuffer, JsonRename};
use crate::upstream::retry::Failure;
use http::StatusCode;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::time::Instant;

/// A rewrite that would leave the route's prefix or is not a valid target.
const BAD_REWRITE: ErrorType = ErrorType::new_code("path rewrite refused", 400);
/// The upstream sent more informational responses than `max_informational_responses`.
const TOO_MANY_1XX: ErrorType =
    ErrorType::new_code("upstream sent too many informational responses", 502);
/// The upstream switched protocols on a request that did not ask to upgrade.
const UNASKED_101: ErrorType = ErrorType::new_code("upstream switched protocols unasked", 502);
/// The upstream sent 1xx responses past the read timeout without a final one.
const NO_FINAL_RESPONSE: ErrorType = ErrorType::new_code("upstream timed out", 504);
/// Every target is unhealthy or has its breaker open.
pub(super) const NO_HEALTHY_TARGET: ErrorType =
    ErrorType::new_code("no healthy upstream target", 503);
/// Connecting failed on every target that could take the request.
pub(super) const ALL_CONNECTS_FAILED: ErrorType =
    ErrorType::new_code("every candidate target failed to connect", 502);

/// The client's `grpc-timeout` passed before an upstream could be asked.
const DEADLINE_PASSED: ErrorType = ErrorType::new_code("deadline exceeded", 504);

impl Gateway {
    /// The target of this attempt (another one on a retry) and its timeouts, bounded by a
    /// gRPC deadline.
    pub(crate) fn choose_peer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<Box<HttpPeer>> {
        // The route's field alone is borrowed: the attempt's state changes below.
        let Some(action) = ctx.route.as_deref().and_then(Route::proxy) else {
            return Error::e_explain(ErrorType::HTTPStatus(500), "route has no upstream");
        };
        let group = &action.upstream;
        let mut key_buf = [0u8; 16];
        let key = group.hash_key(session.req_header(), ctx.client.ip, &mut key_buf);
        if ctx.upstream.attempts == 0 {
            group.retry_budget.note_request();
        }
        // A retry goes to another target; after a timeout, reset or 5xx the same one may
        // take it when no other can (a target that refused a connection is never retried).
        let selected =
            group
                .select(key, &ctx.upstream.tried)
                .or_else(|| match ctx.upstream.last_failure {
                    Some(Failure::Connect) | None => None,
                    Some(_) => group.select(key, &[]),
                });
        let Some(guard) = selected else {
            ctx.upstream.target = None;
            ctx.upstream.no_target = ctx.upstream.tried.is_empty();
            let etype = if ctx.upstream.tried.is_empty() {
                NO_HEALTHY_TARGET
            } else {
                ALL_CONNECTS_FAILED
            };
            return Error::e_explain(etype, format!("upstream {}", group.name));
        };
        if let Some(reason) = ctx.upstream.pending_retry.take() {
            ctx.upstream.retried.push(reason);
        }
        ctx.upstream.last_target = Some(guard.target().label.clone());
        if let Some(t) = ctx.trace.as_mut() {
            t.call(trace::UPSTREAM, Some(guard.target().label.clone()));
        }
        let mut peer = group.peer(guard.target().addr);
        peer.options.connection_timeout = Some(action.connect_timeout);
        peer.options.total_connection_timeout = Some(action.connect_timeout);
        // An upgraded connection is idle between messages, not waiting for an answer: its
        // own timeout, both ways (the handshake's 101 is read within it too).
        let idle = if session.is_upgrade_req() {
            session.set_read_timeout(Some(action.websocket_idle));
            action.websocket_idle
        } else {
            action.read_timeout
        };
        peer.options.read_timeout = Some(idle);
        peer.options.write_timeout = Some(idle);
        // A gRPC deadline bounds every wait of this attempt.
        if let Some(left) = ctx.grpc.as_ref().and_then(|g| g.remaining()) {
            if left.is_zero() {
                return Error::e_explain(DEADLINE_PASSED, "grpc-timeout");
            }
            let o = &mut peer.options;
            for t in [
                &mut o.connection_timeout,
                &mut o.total_connection_timeout,
                &mut o.read_timeout,
                &mut o.write_timeout,
            ] {
                *t = t.map(|t| t.min(left));
            }
        }
        ctx.upstream.attempts += 1;
        ctx.upstream.target = Some(guard);
        Ok(Box::new(peer))
    }

    /// The request the upstream gets: the route's rewrite and header edits, identity
    /// headers, forwarding headers. `upstream` starts as a copy of the client's request.
    pub(super) fn rewrite_request(
        &self,
        down: &forward::Downstream<'_>,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // One grow of the cloned header maps for everything added below.
        let identity = ctx.identity.as_ref().map_or(0, |i| i.headers.len());
        upstream.reserve(forward::FORWARDING_HEADERS + identity);
        if let Some(action) = ctx.proxy() {
            let uri = &down.req.uri;
            let merge = self.policy.normalize.merge_slashes;
            match action.rewrite.apply(uri.path(), uri.query(), merge) {
                Ok(None) => {}
                Ok(Some(new_path)) => {
                    // An HTTP/2 request's URI carries its scheme and authority, which an
                    // HTTP/2 upstream needs (`:scheme`, `:authority`): only the path changes.
                    let uri = match (uri.scheme(), uri.authority()) {
                        (Some(scheme), Some(authority)) => http::Uri::builder()
                            .scheme(scheme.clone())
                            .authority(authority.clone())
                            .path_and_query(new_path.as_str())
                            .build()
                            .ok(),
                        _ => new_path.parse::<http::Uri>().ok(),
                    }
                    .or_err(BAD_REWRITE, "rewritten path is not a valid URI")?;
                    ctx.target.forwarded = Some(uri.path().to_string());
                    upstream.set_uri(uri);
                }
                Err(why) => return Error::e_explain(BAD_REWRITE, why),
            }
        }
        for name in &self.policy.strip_headers {
            upstream.remove_header(name);
        }
        if let Some(route) = ctx.route.as_deref() {
            let t = &route.transform;
            t.request.apply(upstream)?;
            if !t.json_request.is_empty()
                && JsonRename::applies_to(upstream.headers.get(http::header::CONTENT_TYPE))
            {
                // The renamed body has another length: Pingora frames it as chunked.
                upstream.remove_header(&http::header::CONTENT_LENGTH);
                ctx.body.request_json = Some(BodyBuffer::default());
            }
        }
        if let Some(identity) = &ctx.identity {
            for (name, value) in identity.headers.iter() {
                upstream.insert_header(name.clone(), value.clone())?;
            }
            // `credentials = "strip"`: the upstream trusts the identity headers instead.
            if ctx
                .route
                .as_ref()
                .is_some_and(|r| r.policy.auth.strip_credentials)
            {
                upstream.remove_header(&http::header::AUTHORIZATION);
                if let Some(h) = &self.policy.api_keys.header {
                    upstream.remove_header(h);
                }
            }
        }
        forward::prepare_upstream_request(
            down,
            upstream,
            ctx.client.ip,
            ctx.client.trusted_peer,
            &ctx.client.request_id,
        )
    }

    /// What this attempt sends: the rewritten request, the gRPC-Web bridge, the deadline
    /// left, the trace context.
    pub(crate) fn upstream_request(
        &self,
        session: &Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.rewrite_request(&forward::Downstream::of(session), upstream, ctx)?;
        // Every attempt bridges afresh (a retry replays the body from the start).
        let grpc_web = ctx.proxy().is_some_and(|a| a.grpc_web);
        if let Some(call) = ctx.grpc.as_mut() {
            call.web = None;
            if grpc_web {
                call.web = crate::grpc_web::Bridge::start(call.flavor, upstream)?;
            }
        }
        // The upstream gets the deadline that is left, so it can stop work nobody awaits.
        if let Some(left) = ctx.grpc.as_ref().and_then(|g| g.remaining()) {
            upstream.insert_header(grpc::GRPC_TIMEOUT, grpc::format_timeout(left))?;
        }
        if let Some(t) = &ctx.trace {
            upstream.insert_header(trace::TRACEPARENT, t.current())?;
            match t.state() {
                Some(state) => upstream.insert_header(trace::TRACESTATE, state.clone())?,
                None => {
                    upstream.remove_header(&trace::TRACESTATE);
                }
            }
        }
        ctx.upstream.sent_at = Some(Instant::now());
        Ok(())
    }
    /// The upstream's answer head: a 101 nobody asked for and endless 1xx are refused; a
    /// final head is counted (breaker, metrics, trace) and may be retried.
    pub(crate) fn upstream_response(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = resp.status;
        if status == StatusCode::SWITCHING_PROTOCOLS && !session.is_upgrade_req() {
            return Error::e_explain(UNASKED_101, "101 on a request without Upgrade");
        }
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // NOTE(pingora-0.9): pingora-proxy/src/proxy_h1.rs relays each 1xx with a fresh read timeout.
            // Pingora relays every 1xx and restarts the read timeout on each: bound both.
            ctx.upstream.informational += 1;
            if ctx.upstream.informational > self.policy.max_informational {
                return Error::e_explain(TOO_MANY_1XX, format!("{status}"));
            }
            let read_timeout = ctx.proxy().map(|a| a.read_timeout);
            let waited = ctx.upstream.sent_at.map(|t| t.elapsed());
            if let (Some(limit), Some(waited)) = (read_timeout, waited) {
                if waited >= limit {
                    return Error::e_explain(NO_FINAL_RESPONSE, "1xx past the read timeout");
                }
            }
            return Ok(());
        }
        if let Some(t) = ctx.upstream.target.as_mut() {
            t.record_status(status.as_u16());
        }
        ctx.upstream.status = Some(status);
        if let Some(t) = ctx.trace.as_mut() {
            t.call_status(status.as_u16());
        }
        if let Some(group) = ctx.group() {
            let stats = ctx.route.as_ref().map(|r| &r.stats);
            self.metrics.upstream_response(stats, &group.name, status);
        }
        self.retry_answer(session, resp, ctx)
    }
}
