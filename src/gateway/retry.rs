//! Retries, decided in one place ([`Gateway::retry_after`]) for the three moments a try can
//! fail: connecting ([`Gateway::connect_failed`]), proxying ([`Gateway::proxy_failed`]), and an
//! answer the route retries ([`Gateway::retry_answer`]: a 5xx, a gRPC `UNAVAILABLE`).

use super::log::error_cause;
use super::{Ctx, Gateway};
use crate::grpc;
use crate::upstream::breaker::Outcome;
use crate::upstream::retry::{self, Attempt, Decision, Failure};
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::upstreams::peer::Peer;
use pingora::RetryType;

/// A 5xx that `retry_on = ["5xx"]` retries on another target.
const RETRY_5XX: ErrorType = ErrorType::new_code("upstream answered 5xx", 502);
/// A gRPC upstream answered `UNAVAILABLE` before any message: tried on another target.
const RETRY_UNAVAILABLE: ErrorType = ErrorType::new_code("upstream answered UNAVAILABLE", 503);

impl Gateway {
    /// Whether to try again after `failure`: the route lists it, sending again is safe
    /// ([`retry::decide`]), and it fits the route's retries and the group's budget. Every
    /// retry of every kind is decided here.
    fn retry_after(&self, session: &Session, ctx: &mut Ctx, failure: Failure) -> bool {
        ctx.upstream.last_failure = Some(failure);
        let Some(action) = ctx.proxy() else {
            return false;
        };
        let mut attempt = Attempt {
            idempotent: session.req_header().method.is_idempotent(),
            retry_unsent: action.retry_unsent,
            body_truncated: session.as_ref().retry_buffer_truncated(),
        };
        // gRPC's own rule: a call is tried again only when it provably was not processed
        // (no connection, or `UNAVAILABLE` before any message), whatever `retry_on` says.
        let on = if ctx.grpc.is_some() {
            attempt.idempotent = true;
            retry::RetryOn::GRPC
        } else {
            action.retry_on
        };
        let skipped = match retry::decide(on, failure, attempt) {
            Decision::Retry if ctx.upstream.attempts > action.retries => return false,
            Decision::Retry if action.upstream.retry_budget.try_retry() => None,
            Decision::Retry => Some("budget"),
            Decision::BodyTooLarge => Some("body_too_large"),
            Decision::NotListed | Decision::NotIdempotent => return false,
        };
        if let Some(reason) = skipped {
            self.metrics
                .retries_skipped
                .with_label_values(&[ctx.route_name(), reason])
                .inc();
            log::info!(
                "request {:?}: retry skipped ({reason})",
                ctx.client.request_id.as_str()
            );
            return false;
        }
        self.metrics
            .retries
            .with_label_values(&[ctx.route_name()])
            .inc();
        ctx.upstream.pending_retry = Some(failure.label());
        true
    }

    /// A failed attempt: the breaker counts it, and the target is not tried again.
    fn attempt_failed(peer: &HttpPeer, ctx: &mut Ctx) {
        if let Some(t) = ctx.upstream.target.as_mut() {
            t.record(Outcome::Failure);
        }
        if let Some(addr) = peer.address().as_inet() {
            ctx.upstream.tried.push(*addr);
        }
    }

    /// The cause of a failed attempt, for the access log and the trace.
    fn note_cause(ctx: &mut Ctx, e: &Error) {
        let cause = error_cause(e, ctx);
        if let Some(t) = ctx.trace.as_mut() {
            t.call_failed(cause.clone());
        }
        ctx.upstream.last_cause = Some(cause);
    }

    /// Connecting to `peer` failed: retried when the route allows.
    pub(crate) fn connect_failed(
        &self,
        session: &Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        Self::attempt_failed(peer, ctx);
        Self::note_cause(ctx, &e);
        let retry = self.retry_after(session, ctx, Failure::Connect);
        e.set_retry(retry);
        e
    }

    /// The exchange with `peer` failed after connecting: a stale pooled connection gets one
    /// free retry; anything else is retried when the route allows.
    pub(crate) fn proxy_failed(
        &self,
        peer: &HttpPeer,
        session: &Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let group = ctx.group().map_or("-", |g| &*g.name);
        let mut e = e.more_context(format!("upstream {group}/{}", peer.address()));
        Self::note_cause(ctx, &e);
        if e.etype() == &RETRY_5XX || e.etype() == &RETRY_UNAVAILABLE {
            // Decided (and counted) by `retry_answer` when the answer arrived.
            return e;
        }
        let idempotent = session.req_header().method.is_idempotent();
        let truncated = session.as_ref().retry_buffer_truncated();
        // A pooled connection the upstream had already closed: no fault of the target, and
        // NOTE(pingora-0.9): pingora-proxy/src/lib.rs retries `ReusedOnly` errors up to `max_retries`.
        // one retry for free. Only one: Pingora would retry every further pooled connection
        // the upstream closes (up to 16 attempts); after the first they count as resets
        // against the route's `retries` and the budget.
        let mut stale = e.retry;
        stale.decide_reuse(client_reused);
        if matches!(e.retry, RetryType::ReusedOnly)
            && stale.retry()
            && idempotent
            && !truncated
            && !ctx.upstream.stale_retried
        {
            ctx.upstream.stale_retried = true;
            ctx.upstream.pending_retry = Some("stale_connection");
            e.set_retry(true);
            return e;
        }
        Self::attempt_failed(peer, ctx);
        // An upgrade that reached the upstream is never sent again: the upstream may have
        // acted on it, and a retried handshake would be a second connection.
        let retry = !session.is_upgrade_req() && self.retry_after(session, ctx, Failure::of(&e));
        e.set_retry(retry);
        e
    }

    /// An upstream answer the route retries instead of relaying: a 5xx under
    /// `retry_on = ["5xx"]`, or a gRPC trailers-only `UNAVAILABLE` (the upstream did not
    /// take the call). The error asks Pingora for another attempt, on another target.
    pub(super) fn retry_answer(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let (failure, etype, what) = if ctx.grpc.is_some() {
            if grpc::status_of(&resp.headers) != Some(grpc::Code::Unavailable) {
                return Ok(());
            }
            (
                Failure::Unavailable,
                RETRY_UNAVAILABLE,
                "UNAVAILABLE".into(),
            )
        } else if resp.status.is_server_error() {
            (Failure::Status5xx, RETRY_5XX, resp.status.to_string())
        } else {
            return Ok(());
        };
        if !self.retry_after(session, ctx, failure) {
            return Ok(());
        }
        if let Some(addr) = ctx.upstream.target.as_ref().map(|t| t.target().addr) {
            ctx.upstream.tried.push(addr);
        }
        let mut e = Error::explain(etype, format!("{what}, retrying"));
        e.set_retry(true);
        Err(e)
    }
}
