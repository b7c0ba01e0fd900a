//! Per-request state ([`Ctx`]), grouped by what each part is about, and the first hook that
//! fills it: who the client is, the request id, the trace, the gRPC deadline.

use super::Gateway;
use crate::cache::Verdict;
use crate::forward;
use crate::grpc;
use crate::observe::trace::Trace;
use crate::policy::auth::Identity;
use crate::route::{ProxyAction, Route};
use crate::transform::BodyBuffer;
use crate::upstream::retry::Failure;
use crate::upstream::{InflightGuard, UpstreamGroup};
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::prelude::*;
use pingora::proxy::Session;
use prometheus::IntGauge;
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per-request state: one part per concern, each filled by the hooks that own it.
#[derive(Default)]
pub(crate) struct Ctx {
    /// Who asked, and since when.
    pub(super) client: Client,
    /// The matched route; its action is read through [`Ctx::proxy`].
    pub(super) route: Option<Arc<Route>>,
    /// The request target as received and as forwarded.
    pub(super) target: Target,
    /// Who authentication said the caller is.
    pub(super) identity: Option<Identity>,
    /// The attempts at the upstream.
    pub(super) upstream: Upstream,
    /// What the gateway answered or adds to the answer.
    pub(super) reply: Reply,
    /// Request body accounting and the body rewriters of both directions.
    pub(super) body: Body,
    /// What the cache did, on caching routes.
    pub(super) cache: CacheState,
    /// The request speaks gRPC.
    pub(super) grpc: Option<GrpcCall>,
    /// The request's trace context and spans, with `[tracing]`.
    pub(super) trace: Option<Trace>,
}

/// Who asked, and since when.
pub(super) struct Client {
    pub(super) start: Instant,
    /// `X-Request-Id`: the client's when it sent a safe one, else a new one.
    pub(super) request_id: forward::RequestId,
    /// The peer, or the address a trusted proxy named.
    pub(super) ip: Option<IpAddr>,
    /// The peer is a trusted proxy (its `X-Forwarded-For` is extended, not replaced).
    pub(super) trusted_peer: bool,
    /// Counted in `requests_in_flight` (by `begin`), until [`Gateway::release`].
    pub(super) inflight: bool,
}

impl Default for Client {
    fn default() -> Self {
        Client {
            start: Instant::now(),
            request_id: forward::RequestId::default(),
            ip: None,
            trusted_peer: false,
            inflight: false,
        }
    }
}

/// The request target as received and as forwarded, when either differs from the one
/// the route saw.
#[derive(Default)]
pub(super) struct Target {
    /// The target as received, when normalization changed it.
    pub(super) received: Option<String>,
    /// The path sent upstream, when a rewrite changed it.
    pub(super) forwarded: Option<String>,
    /// The path holds `%2F` or `%5C` (allowed only on routes that accept them).
    pub(super) encoded_slash: bool,
}

/// What the gateway answered itself, or adds to the upstream's answer.
#[derive(Default)]
pub(super) struct Reply {
    /// The status the gateway itself sent, when it answered without proxying.
    pub(super) answered: Option<StatusCode>,
    /// Headers added to the response: CORS and rate-limit state.
    pub(super) headers: Vec<(HeaderName, HeaderValue)>,
    /// Why the gateway refused, answered itself, failed or bypassed the cache, in the
    /// reason vocabulary (`docs/observability.md`).
    pub(super) reason: Option<Cow<'static, str>>,
    /// Counts this connection in `upgraded_connections` while it is upgraded.
    pub(super) upgraded: Option<GaugeGuard>,
    /// The upstream's gRPC status, once its trailers (or a transcoded call) said it.
    pub(super) grpc_status: Option<grpc::Code>,
    /// What policies in shadow mode would have refused: `policy:reason`, joined by `,`.
    pub(super) shadow_refusal: Option<String>,
}

/// Request body accounting and the body rewriters of both directions.
#[derive(Default)]
pub(super) struct Body {
    /// Request body bytes received (not on gRPC streams, counted per message).
    pub(super) received: u64,
    /// The request body being collected for a JSON rename.
    pub(super) request_json: Option<BodyBuffer>,
    /// The response body being collected for a JSON rename.
    pub(super) response_json: Option<BodyBuffer>,
    /// Compresses the response body, when the route and the client agreed on a coding.
    pub(super) compressor: Option<crate::compress::Encoder>,
    /// The OpenAPI operation the request matched, on a route that validates requests.
    pub(super) operation: Option<crate::policy::validate::Matched>,
}

/// What the cache did for this request.
#[derive(Default)]
pub(super) struct CacheState {
    /// The consumer a per-consumer cache entry belongs to.
    pub(super) consumer: Option<String>,
    /// Hit, miss, stale, bypass..., on caching routes.
    pub(super) verdict: Option<Verdict>,
}

/// What the gateway keeps about a gRPC request.
pub(super) struct GrpcCall {
    pub(super) flavor: grpc::Flavor,
    /// From the client's `grpc-timeout`: the upstream must answer by then.
    pub(super) deadline: Option<Instant>,
    /// The request's messages, each limited by `max_body_size`.
    pub(super) messages: grpc::Messages,
    /// A gRPC-Web call bridged to gRPC on this attempt.
    pub(super) web: Option<crate::grpc_web::Bridge>,
}

impl GrpcCall {
    fn of(req: &RequestHeader, start: Instant) -> Option<GrpcCall> {
        let flavor = grpc::Flavor::of(req)?;
        let deadline = req
            .headers
            .get(grpc::GRPC_TIMEOUT)
            .and_then(grpc::parse_timeout)
            .and_then(|t| start.checked_add(t));
        Some(GrpcCall {
            flavor,
            deadline,
            messages: grpc::Messages::default(),
            web: None,
        })
    }

    /// Time left before the deadline, when there is one.
    pub(super) fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// Upstream-side state, filled once a route proxies.
#[derive(Default)]
pub(super) struct Upstream {
    pub(super) target: Option<InflightGuard>,
    /// Targets that failed to connect for this request.
    pub(super) tried: Vec<SocketAddr>,
    pub(super) attempts: usize,
    pub(super) sent_at: Option<Instant>,
    /// No target was available (all unhealthy or their breakers open).
    pub(super) no_target: bool,
    /// Informational (1xx) responses relayed so far.
    pub(super) informational: usize,
    /// Why the last attempt failed, when one did.
    pub(super) last_failure: Option<Failure>,
    /// The one retry a pooled connection closed by the upstream gets for free was taken.
    pub(super) stale_retried: bool,
    /// The status of the last upstream response head (not 1xx).
    pub(super) status: Option<StatusCode>,
    /// Why each retry was made, for the access log.
    pub(super) retried: Vec<&'static str>,
    /// Why the next attempt will be made, once a retry is decided.
    pub(super) pending_retry: Option<&'static str>,
    /// The last target chosen (`address:port`).
    pub(super) last_target: Option<Arc<str>>,
    /// What went wrong with the last failed attempt, in words.
    pub(super) last_cause: Option<String>,
}

impl Ctx {
    /// A refusal `policy`, in shadow mode, would have made: counted in
    /// `tollgate_shadow_refusals_total` and kept for the access log and the span.
    pub(super) fn shadow_refusal(
        &mut self,
        gw: &super::Gateway,
        route: &crate::route::Route,
        policy: crate::config::file::ShadowPolicy,
        reason: &str,
    ) {
        gw.metrics
            .shadow_refusals
            .with_label_values(&[&*route.name, policy.as_str(), reason])
            .inc();
        let noted = self.reply.shadow_refusal.get_or_insert_with(String::new);
        if !noted.is_empty() {
            noted.push(',');
        }
        noted.push_str(policy.as_str());
        noted.push(':');
        noted.push_str(reason);
    }

    /// The request's id (under `[server] request_id_header`, the client's when it sent a
    /// safe one).
    pub(crate) fn request_id(&self) -> &HeaderValue {
        &self.client.request_id.value
    }

    /// The matched route's proxy action, when it proxies.
    pub(super) fn proxy(&self) -> Option<&ProxyAction> {
        self.route.as_deref()?.proxy()
    }

    /// The upstream group the matched route proxies to.
    pub(super) fn group(&self) -> Option<&Arc<UpstreamGroup>> {
        self.proxy().map(|a| &a.upstream)
    }

    /// The matched route's name, or the metrics' name for no route.
    pub(super) fn route_name(&self) -> &str {
        self.route
            .as_ref()
            .map_or(crate::observe::metrics::NO_ROUTE, |r| &*r.name)
    }

    /// The gRPC-Web bridge of this attempt, if the call is bridged.
    pub(super) fn bridge(&mut self) -> Option<&mut crate::grpc_web::Bridge> {
        self.grpc.as_mut()?.web.as_mut()
    }
}

/// Increments a gauge now and decrements it when dropped.
pub(super) struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub(super) fn new(g: &IntGauge) -> Self {
        g.inc();
        GaugeGuard(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Gateway {
    /// The request's context is going away (`proxy::Ctx`'s drop, whatever way the request
    /// ended): it leaves `requests_in_flight`. The gauge is per-thread sharded and the
    /// generation is already held, so this writes no shared cache line and clones nothing.
    pub(crate) fn release(&self, ctx: &Ctx) {
        if ctx.client.inflight {
            self.metrics.inflight.dec();
        }
    }

    /// Who the client is: the peer, or the address a trusted proxy put in `X-Forwarded-For`.
    pub(super) fn identify_client(&self, peer: Option<IpAddr>, req: &RequestHeader, ctx: &mut Ctx) {
        let trusted = &self.policy.trusted_proxies;
        ctx.client.trusted_peer = peer.is_some_and(|p| trusted.trusts(p));
        ctx.client.ip = if ctx.client.trusted_peer {
            let xff = req.headers.get_all("x-forwarded-for");
            trusted.client_ip(peer, xff.iter().map(|v| v.as_bytes()))
        } else {
            peer
        };
    }

    /// The connection's keep-alive and read timeout, and the request's id, trace, gRPC
    /// deadline and client address, before any policy runs.
    pub(crate) fn begin(&self, session: &mut Session, ctx: &mut Ctx) {
        if self.draining.load(Ordering::Acquire) {
            session.set_keepalive(None);
        } else {
            // NOTE(pingora-0.9): pingora-core/src/protocols/http/v1/server.rs `KeepaliveStatus::Infinite`.
            // Pingora keeps an idle HTTP/1.1 connection forever by default, or as long as the
            // client's own `Keep-Alive: timeout=` asks.
            session.set_keepalive(Some(self.policy.keepalive_secs));
        }
        session.set_pipelining_enabled(true);
        self.metrics.inflight.inc();
        ctx.client.inflight = true;
        ctx.client.request_id =
            forward::RequestId::read(session.req_header(), self.request_id_header);
        ctx.trace = self
            .tracer
            .as_ref()
            .map(|t| t.start(&session.req_header().headers));
        ctx.grpc = GrpcCall::of(session.req_header(), ctx.client.start);
        session.set_read_timeout(Some(self.policy.body_timeout));
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        self.identify_client(peer, session.req_header(), ctx);
        if !self.alt_svc.is_empty() {
            let local = session.server_addr().and_then(|a| a.as_inet()).copied();
            self.advertise_http3(local, ctx);
        }
    }

    /// `Alt-Svc: h3=...` on every answer of a listener (at `local`) that has HTTP/3
    /// (proxied, cached or the gateway's own).
    #[cold]
    pub(crate) fn advertise_http3(&self, local: Option<std::net::SocketAddr>, ctx: &mut Ctx) {
        let Some(local) = local else {
            return;
        };
        let listener = self
            .alt_svc
            .iter()
            .find(|(addr, _)| crate::connection::arrived_on(addr, local));
        if let Some((_, value)) = listener {
            ctx.reply
                .headers
                .push((http::header::ALT_SVC, value.clone()));
        }
    }
}
