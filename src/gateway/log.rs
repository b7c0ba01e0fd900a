//! The end of every request: metrics, the reason counter, the access log line and the
//! request span, with the cause of a failure in words.

use super::upstream::{ALL_CONNECTS_FAILED, NO_HEALTHY_TARGET};
use super::{Ctx, Gateway};
use crate::cache::Verdict;
use crate::forward;
use crate::grpc;
use crate::observe::access_log::{Entry, Time};
use crate::observe::metrics::{Served, NO_ROUTE};
use crate::observe::trace::{self, Trace};
use crate::route::Route;
use http::StatusCode;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::borrow::Cow;
use std::time::{Duration, Instant};

/// A duration in whole microseconds, as the access log gives it.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The client closed its connection, or reset its stream, before the exchange ended.
pub(super) fn client_went_away(e: &Error) -> bool {
    use pingora::ErrorType::*;
    e.esource() == &pingora::ErrorSource::Downstream
        && matches!(
            e.etype(),
            ConnectionClosed | ReadError | WriteError | H2Error
        )
}

/// Why a request failed, in the words a person debugging a 502 needs: which side, what
/// happened, and the limit that ran out.
pub(super) fn error_cause(e: &Error, ctx: &Ctx) -> String {
    use pingora::ErrorType::*;
    let action = ctx.proxy();
    let after = |limit: Option<Duration>| {
        limit.map_or(String::new(), |d| {
            format!(" after {}", humantime::format_duration(d))
        })
    };
    let client = matches!(e.esource(), pingora::ErrorSource::Downstream);
    let answered = ctx.upstream.status.is_some();
    let gave_up = e.etype() == &ALL_CONNECTS_FAILED || e.etype() == &NO_HEALTHY_TARGET;
    match e.etype() {
        _ if ctx.upstream.no_target => "no healthy target".into(),
        // Out of targets after failed attempts: the last attempt's cause says why.
        _ if gave_up && ctx.upstream.last_cause.is_some() => {
            ctx.upstream.last_cause.clone().unwrap_or_default()
        }
        ConnectRefused => "connect refused".into(),
        ConnectTimedout => format!(
            "connect timeout{}",
            after(action.map(|a| a.connect_timeout))
        ),
        ConnectNoRoute => "no route to upstream".into(),
        TLSHandshakeFailure => "upstream TLS handshake failed".into(),
        TLSHandshakeTimedout => "upstream TLS handshake timeout".into(),
        ConnectError => "connect failed".into(),
        ReadTimedout | WriteTimedout if client => "client timeout".into(),
        _ if client_went_away(e) => "client closed connection".into(),
        ReadTimedout => format!("upstream timeout{}", after(action.map(|a| a.read_timeout))),
        WriteTimedout => format!(
            "upstream write timeout{}",
            after(action.map(|a| a.read_timeout))
        ),
        ConnectionClosed | ReadError | WriteError if answered => {
            "upstream closed mid-response".into()
        }
        ConnectionClosed | ReadError | WriteError => "upstream closed before response".into(),
        H2Error => "upstream HTTP/2 error".into(),
        InvalidHTTPHeader => "invalid upstream response".into(),
        other => match &e.context {
            Some(c) => format!("{}: {c}", other.as_str()),
            None => other.as_str().into(),
        },
    }
}

impl Gateway {
    /// Count and log the request once it ended, answered or not.
    pub(crate) fn finish(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        // A client that went away before any answer is logged as nginx does, 499 (client
        // closed request): a 500 would blame the gateway or the upstream for a cancel.
        let unanswered = if e.is_some_and(client_went_away) {
            if ctx.reply.reason.is_none() {
                ctx.reply.reason = Some(Cow::Borrowed("client_closed_request"));
            }
            // nginx's 499, client closed request (a valid code, so no fallback is taken).
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        let status = session
            .response_written()
            .map(|r| r.status)
            .or(ctx.reply.answered)
            .unwrap_or(unanswered);
        self.cache_finish(session, ctx);
        let req = session.req_header();
        // The route's field alone is borrowed: the trace is taken from `ctx` below.
        let route_name = ctx.route.as_ref().map_or(NO_ROUTE, |r| &*r.name);
        // One clock read for both durations.
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(ctx.client.start);
        let m = &self.metrics;
        let upstream_elapsed = ctx
            .upstream
            .sent_at
            .map(|t| now.saturating_duration_since(t));
        let group = ctx
            .route
            .as_deref()
            .and_then(Route::proxy)
            .map(|a| &*a.upstream.name);
        let cause = e.map(|e| error_cause(e, ctx));
        if let Some(reason) = &ctx.reply.reason {
            m.reason(route_name, status, reason);
        }
        m.record(&Served {
            route: route_name,
            stats: ctx.route.as_ref().map(|r| &r.stats),
            method: &req.method,
            status,
            elapsed,
            upstream: group.zip(upstream_elapsed),
            bytes_in: session.body_bytes_read() as u64,
            bytes_out: session.body_bytes_sent() as u64,
            cache: ctx.cache.verdict,
        });
        // What the access log and the request span both say of the request, read only when
        // one of them is on.
        let (host, user_agent, protocol) = if self.access_log.is_some() || self.tracer.is_some() {
            let user_agent = req
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok());
            let protocol = match req.version {
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_3 => "HTTP/3",
                _ => "HTTP/1.1",
            };
            (forward::host(req), user_agent, protocol)
        } else {
            (None, None, "")
        };
        if let Some(log) = &self.access_log {
            let tls_version = session
                .digest()
                .and_then(|d| d.ssl_digest.as_ref())
                .map(|d| &*d.version);
            let format = &self.access_format;
            log.log(
                format,
                &Entry {
                    time: Time(std::time::SystemTime::now()),
                    request_id: ctx.client.request_id.as_str(),
                    trace_id: ctx.trace.as_ref().map(Trace::trace_id),
                    client_ip: ctx.client.ip,
                    host,
                    method: req.method.as_str(),
                    path: req.uri.path(),
                    query: req.uri.query().map(|q| format.query(q)),
                    received: ctx.target.received.as_deref(),
                    forwarded: ctx.target.forwarded.as_deref(),
                    protocol,
                    tls_version,
                    user_agent,
                    route: route_name,
                    consumer: ctx.identity.as_ref().and_then(|i| i.principal()),
                    status: status.as_u16(),
                    upstream: group,
                    target: ctx.upstream.last_target.as_deref(),
                    upstream_status: ctx.upstream.status.map(|s| s.as_u16()),
                    attempts: ctx.upstream.attempts,
                    retries: &ctx.upstream.retried,
                    duration_us: micros(elapsed),
                    upstream_us: upstream_elapsed.map(micros),
                    bytes_in: session.body_bytes_read(),
                    bytes_out: session.body_bytes_sent(),
                    cache: ctx.cache.verdict.map(Verdict::header),
                    reason: ctx.reply.reason.as_deref(),
                    shadow_refusal: ctx.reply.shadow_refusal.as_deref(),
                    error: cause.clone(),
                    upgraded: ctx.reply.upgraded.is_some(),
                    grpc_status: ctx
                        .reply
                        .grpc_status
                        .or_else(|| {
                            let head = session.response_written().filter(|_| ctx.grpc.is_some())?;
                            grpc::status_of(&head.headers)
                        })
                        .map(|c| c as u8),
                },
            );
        }
        if let (Some(tracer), Some(t)) = (&self.tracer, ctx.trace.take()) {
            let scheme = if session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
                "https"
            } else {
                "http"
            };
            tracer.finish(
                t,
                &trace::Served {
                    method: req.method.as_str(),
                    route: route_name,
                    path: req.uri.path(),
                    scheme,
                    host,
                    client: ctx.client.ip,
                    protocol: protocol.trim_start_matches("HTTP/"),
                    user_agent,
                    status: status.as_u16(),
                    request_id: ctx.client.request_id.as_str(),
                    upstream: group,
                    reason: ctx.reply.reason.as_deref(),
                    shadow_refusal: ctx.reply.shadow_refusal.as_deref(),
                    error: cause,
                },
            );
        }
    }
}
