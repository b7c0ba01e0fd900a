//! The hooks of one configuration generation: per-request state ([`Ctx`]) and each hook's
//! body, a short sequence of calls into the modules that own the concern (routing, upstream
//! selection, forwarding headers, errors, observability). `crate::proxy` implements
//! `ProxyHttp` and hands every hook to the generation the request began on.

pub(crate) mod explain;
mod request;
mod transcoded;

use request::Step;

use crate::cache::{self, Lookup, ResponseCache, Verdict};
use crate::error::{self, Reject};
use crate::forward;
use crate::grpc;
use crate::observe::access_log::{AccessLog, Entry, Time};
use crate::observe::metrics::{Metrics, Served, NO_ROUTE};
use crate::observe::trace::{self, Trace};
use crate::policy::auth::Identity;
use crate::policy::cors::CorsOutcome;
use crate::policy::GatewayPolicy;
use crate::route::{ProxyAction, Route, RouteAction, RouteTable};
use crate::transform::{BodyBuffer, JsonRename};
use crate::upstream::breaker::Outcome;
use crate::upstream::retry::{self, Attempt, Decision, Failure};
use crate::upstream::{InflightGuard, UpstreamGroup};
use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderName;
use http::{HeaderValue, StatusCode};
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, NoCacheReason, RespCacheable};
use pingora::connectors::http::Connector;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::Peer;
use pingora::RetryType;
use prometheus::IntGauge;
use std::borrow::Cow;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

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
const NO_HEALTHY_TARGET: ErrorType = ErrorType::new_code("no healthy upstream target", 503);
/// Connecting failed on every target that could take the request.
const ALL_CONNECTS_FAILED: ErrorType =
    ErrorType::new_code("every candidate target failed to connect", 502);
/// A 5xx that `retry_on = ["5xx"]` retries on another target.
const RETRY_5XX: ErrorType = ErrorType::new_code("upstream answered 5xx", 502);
/// A gRPC upstream answered `UNAVAILABLE` before any message: tried on another target.
const RETRY_UNAVAILABLE: ErrorType = ErrorType::new_code("upstream answered UNAVAILABLE", 503);
/// The client's `grpc-timeout` passed before an upstream could be asked.
const DEADLINE_PASSED: ErrorType = ErrorType::new_code("deadline exceeded", 504);

/// One generation of the gateway: everything a request reads, built from one configuration
/// file. A reload builds the next one beside it; every request runs start to end on the
/// generation it began with.
pub struct Gateway {
    pub(crate) routes: RouteTable,
    pub(crate) upstreams: Vec<Arc<UpstreamGroup>>,
    pub(crate) groups: crate::upstream::Groups,
    pub(crate) providers: crate::policy::jwt::Providers,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) access_log: Option<AccessLog>,
    /// The fields and redactions of its lines.
    pub(crate) access_format: crate::observe::access_log::Format,
    /// W3C trace context and spans, with `[tracing]`.
    pub(crate) tracer: Option<Arc<crate::observe::trace::Tracer>>,
    pub(crate) policy: GatewayPolicy,
    /// Pooled upstream connections for aggregation parts.
    pub(crate) connector: Arc<Connector>,
    /// Set once the server starts shutting down or handing over to a new instance: responses
    /// then say `Connection: close`, so keep-alive clients move to the new instance between
    /// requests instead of having an idle connection closed under them.
    pub(crate) draining: Arc<AtomicBool>,
    /// The response cache, when some route caches.
    pub(crate) cache: Option<Arc<ResponseCache>>,
    pub(crate) generation: Generation,
    /// Each listener's certificates (TLS listeners only), swapped in by a reload.
    pub(crate) listener_certs: Vec<Option<Arc<crate::tls::CertStore>>>,
    pub(crate) connection_limits: crate::connection::ConnectionLimits,
}

/// Which configuration a generation was built from, and when.
#[derive(Debug, Clone)]
pub struct Generation {
    /// 1 for the configuration the process started with, one more per successful reload.
    pub number: u64,
    /// SHA-256 of the file's text, hex.
    pub sha256: String,
    pub loaded_at: std::time::SystemTime,
}

/// The proxy action and upstream group of a matched route, if it proxies.
fn proxy_of(route: Option<&Arc<Route>>) -> Option<(&ProxyAction, &Arc<UpstreamGroup>)> {
    let RouteAction::Proxy(action) = &route?.action else {
        return None;
    };
    Some((action, &action.upstream))
}

/// An answer the route retries (a 5xx, a gRPC `UNAVAILABLE`): the target is marked tried
/// and the error asks Pingora for another attempt.
fn retry_elsewhere(ctx: &mut Ctx, etype: ErrorType, what: String) -> Box<Error> {
    if let Some(addr) = ctx.upstream.target.as_ref().map(|t| t.target().addr) {
        ctx.upstream.tried.push(addr);
    }
    let mut e = Error::explain(etype, format!("{what}, retrying"));
    e.set_retry(true);
    e
}

/// A duration in whole microseconds, as the access log gives it.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The client closed its connection, or reset its stream, before the exchange ended.
fn client_went_away(e: &Error) -> bool {
    use pingora::ErrorType::*;
    e.esource() == &pingora::ErrorSource::Downstream
        && matches!(
            e.etype(),
            ConnectionClosed | ReadError | WriteError | H2Error
        )
}

/// Why a request failed, in the words a person debugging a 502 needs: which side, what
/// happened, and the limit that ran out.
fn error_cause(e: &Error, ctx: &Ctx) -> String {
    use pingora::ErrorType::*;
    let action = proxy_of(ctx.route.as_ref()).map(|(a, _)| a);
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

/// The body a filter rewrites has no length known in advance: HTTP/1 sends it chunked.
fn body_length_unknown(h2: bool, resp: &mut ResponseHeader) -> Result<()> {
    resp.remove_header(&http::header::CONTENT_LENGTH);
    if !h2 {
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// Flips [`Gateway::draining`] when the server's shutdown begins (a background service).
pub struct DrainWatch(pub Arc<AtomicBool>);

#[async_trait]
impl pingora::services::background::BackgroundService for DrainWatch {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        self.0.store(true, Ordering::Release);
    }
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    request_id: HeaderValue,
    client_ip: Option<IpAddr>,
    route: Option<Arc<Route>>,
    upstream: Upstream,
    /// The response status the gateway itself sent, when it answered without proxying.
    answered: Option<StatusCode>,
    /// Counts this request in `requests_in_flight` until dropped.
    _inflight: Option<GaugeGuard>,
    /// Whether the peer is a trusted proxy (its `X-Forwarded-For` is extended, not replaced).
    peer_trusted: bool,
    identity: Option<Identity>,
    /// Headers added to the response: CORS and rate-limit state.
    response_headers: Vec<(HeaderName, HeaderValue)>,
    body_bytes: u64,
    /// Bodies being collected for a JSON rename.
    request_json: Option<BodyBuffer>,
    response_json: Option<BodyBuffer>,
    /// The consumer a per-consumer cache entry belongs to.
    cache_consumer: Option<String>,
    /// What the cache did, on caching routes.
    cache_verdict: Option<Verdict>,
    /// Why the gateway refused, answered itself, failed or bypassed the cache, in the
    /// reason vocabulary (`docs/observability.md`).
    reason: Option<Cow<'static, str>>,
    /// The request target as received, when normalization changed it.
    received_target: Option<String>,
    /// The path sent upstream, when a rewrite changed it.
    forwarded_path: Option<String>,
    /// The path holds `%2F` or `%5C` (allowed only on routes that accept them).
    encoded_slash: bool,
    /// Compresses the response body, when the route and the client agreed on a coding.
    compressor: Option<crate::compress::Encoder>,
    /// Counts this connection in `upgraded_connections` while it is upgraded.
    upgraded: Option<GaugeGuard>,
    /// The request speaks gRPC.
    grpc: Option<GrpcCall>,
    /// A gRPC-Web call bridged to gRPC on this attempt.
    grpc_web: Option<crate::grpc_web::Bridge>,
    /// The upstream's gRPC status, once its trailers (or a transcoded call) said it.
    grpc_status: Option<grpc::Code>,
    /// The request's trace context and spans, with `[tracing]`.
    trace: Option<Trace>,
}

impl Ctx {
    /// The request's id (`X-Request-Id`, the client's when it sent a safe one).
    pub(crate) fn request_id(&self) -> &HeaderValue {
        &self.request_id
    }
}

/// What the gateway keeps about a gRPC request.
#[derive(Debug, Clone, Copy)]
struct GrpcCall {
    flavor: grpc::Flavor,
    /// From the client's `grpc-timeout`: the upstream must answer by then.
    deadline: Option<Instant>,
    /// The request's messages, each limited by `max_body_size`.
    messages: grpc::Messages,
}

/// The status message of a gRPC call refused for a message over `max_body_size`.
const GRPC_MESSAGE_TOO_LARGE: &str = "message larger than max_body_size";

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
        })
    }

    /// Time left before the deadline, when there is one.
    fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// Upstream-side state, filled once a route proxies.
#[derive(Default)]
struct Upstream {
    target: Option<InflightGuard>,
    /// Targets that failed to connect for this request.
    tried: Vec<SocketAddr>,
    attempts: usize,
    sent_at: Option<Instant>,
    /// No target was available (all unhealthy or their breakers open).
    no_target: bool,
    /// Informational (1xx) responses relayed so far.
    informational: usize,
    /// Why the last attempt failed, when one did.
    last_failure: Option<Failure>,
    /// The one retry a pooled connection closed by the upstream gets for free was taken.
    stale_retried: bool,
    /// The status of the last upstream response head (not 1xx).
    status: Option<StatusCode>,
    /// Why each retry was made, for the access log.
    retried: Vec<&'static str>,
    /// Why the next attempt will be made, once a retry is decided.
    pending_retry: Option<&'static str>,
    /// The last target chosen (`address:port`).
    last_target: Option<Arc<str>>,
    /// What went wrong with the last failed attempt, in words.
    last_cause: Option<String>,
}

/// Increments a gauge now and decrements it when dropped.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    fn new(g: &IntGauge) -> Self {
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
    /// [`ProxyHttp::request_filter`]'s body.
    async fn run_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let facts = request::Facts::of(session);
        let req = session.req_header_mut();
        match request::admit(self, req, facts, ctx, request::Mode::Serve).await {
            Step::Next => {
                // A transcoding route answers here, with a gRPC call of its own.
                let route = ctx.route.clone();
                let transcoding = proxy_of(route.as_ref())
                    .and_then(|(action, _)| Some((action, action.transcode.as_deref()?)));
                match transcoding {
                    Some((action, t)) => self.serve_transcoded(session, ctx, action, t).await,
                    None => Ok(false),
                }
            }
            Step::Reject(reject) => self.reject(session, ctx, reject).await,
            Step::Answer {
                status,
                mut headers,
                body,
            } => {
                ctx.answered = Some(status);
                own_answer_headers(session.req_header(), ctx, &mut headers);
                error::respond(session, status, &headers, body, &ctx.request_id).await?;
                Ok(true)
            }
        }
    }

    /// Whether to try again after `failure`: the route lists it, sending again is safe
    /// ([`retry::decide`]), and it fits the route's retries and the group's budget.
    fn should_retry(&self, session: &Session, ctx: &mut Ctx, failure: Failure) -> bool {
        ctx.upstream.last_failure = Some(failure);
        let Some((action, _)) = proxy_of(ctx.route.as_ref()) else {
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
        match retry::decide(on, failure, attempt) {
            Decision::Retry => {
                let retry = self.take_retry(ctx);
                if retry {
                    ctx.upstream.pending_retry = Some(failure.label());
                }
                retry
            }
            Decision::BodyTooLarge => {
                self.count_skipped_retry(ctx, "body_too_large");
                false
            }
            Decision::NotListed | Decision::NotIdempotent => false,
        }
    }

    /// Whether another attempt is allowed: within the route's retries and the group's budget.
    fn take_retry(&self, ctx: &Ctx) -> bool {
        let Some((action, group)) = proxy_of(ctx.route.as_ref()) else {
            return false;
        };
        if ctx.upstream.attempts > action.retries {
            return false;
        }
        if !group.retry_budget.try_retry() {
            self.count_skipped_retry(ctx, "budget");
            return false;
        }
        if let Some(route) = &ctx.route {
            self.metrics
                .retries
                .with_label_values(&[&*route.name])
                .inc();
        }
        true
    }

    fn count_skipped_retry(&self, ctx: &Ctx, reason: &str) {
        let route = ctx.route.as_ref().map_or(NO_ROUTE, |r| &*r.name);
        self.metrics
            .retries_skipped
            .with_label_values(&[route, reason])
            .inc();
        log::info!("request {:?}: retry skipped ({reason})", ctx.request_id);
    }

    /// The request the upstream gets: the route's rewrite and header edits, identity
    /// headers, forwarding headers. `upstream` starts as a copy of the client's request.
    fn upstream_request(
        &self,
        down: &forward::Downstream<'_>,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // One grow of the cloned header maps for everything added below.
        let identity = ctx.identity.as_ref().map_or(0, |i| i.headers.len());
        upstream.reserve(forward::FORWARDING_HEADERS + identity);
        if let Some((action, _)) = proxy_of(ctx.route.as_ref()) {
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
                    ctx.forwarded_path = Some(uri.path().to_string());
                    upstream.set_uri(uri);
                }
                Err(why) => return Error::e_explain(BAD_REWRITE, why),
            }
        }
        for name in &self.policy.strip_headers {
            upstream.remove_header(name);
        }
        if let Some(route) = ctx.route.clone() {
            let t = &route.transform;
            t.request.apply(upstream)?;
            if !t.json_request.is_empty()
                && JsonRename::applies_to(upstream.headers.get(http::header::CONTENT_TYPE))
            {
                // The renamed body has another length: Pingora frames it as chunked.
                upstream.remove_header(&http::header::CONTENT_LENGTH);
                ctx.request_json = Some(BodyBuffer::default());
            }
        }
        if let Some(identity) = &ctx.identity {
            for (name, value) in identity.headers.iter() {
                upstream.insert_header(name.clone(), value.clone())?;
            }
        }
        forward::prepare_upstream_request(
            down,
            upstream,
            ctx.client_ip,
            ctx.peer_trusted,
            &ctx.request_id,
        )
    }

    /// Who the client is: the peer, or the address a trusted proxy put in `X-Forwarded-For`.
    fn identify_client(&self, peer: Option<IpAddr>, req: &RequestHeader, ctx: &mut Ctx) {
        let trusted = &self.policy.trusted_proxies;
        ctx.peer_trusted = peer.is_some_and(|p| trusted.trusts(p));
        ctx.client_ip = if ctx.peer_trusted {
            let xff = req.headers.get_all("x-forwarded-for");
            trusted.client_ip(peer, xff.iter().map(|v| v.as_bytes()))
        } else {
            peer
        };
    }

    /// The route's response edits, security headers, body rewriters and the gateway's own
    /// headers, on a final response to `req`.
    fn decorate_response(
        &self,
        req: &RequestHeader,
        h2: bool,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(route) = ctx.route.clone() {
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
                ctx.response_json = Some(BodyBuffer::default());
            }
            if let Some(c) = &route.compression {
                ctx.compressor = c.start(req, resp)?;
                if ctx.compressor.is_some() {
                    body_length_unknown(h2, resp)?;
                }
            }
        }
        // Never indexed in HTTP/2's HPACK table: a value that is new on every response only
        // evicts entries that could be reused (RFC 7541 section 6.2.3). HTTP/1 ignores it.
        let mut id = ctx.request_id.clone();
        id.set_sensitive(true);
        resp.insert_header(&error::X_REQUEST_ID, id)?;
        Ok(())
    }

    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        mut reject: Reject,
    ) -> Result<bool> {
        ctx.answered = Some(reject.status);
        ctx.reason = Some(reject.reason.clone());
        own_answer_headers(session.req_header(), ctx, &mut reject.headers);
        error::respond_error(session, &reject, &ctx.request_id).await?;
        Ok(true)
    }
}

/// What the gateway's own answers on a route (refusals, direct responses, fallbacks, proxy
/// failures) carry as proxied responses do: the headers the policies asked for (CORS for an
/// allowed origin with `Vary: Origin`, rate-limit state), CORS even when the refusal came
/// before the CORS step ran, and the route's security headers. Without them a browser app
/// reads a 401 as a CORS failure and cannot send its user to log in.
fn own_answer_headers(
    req: &RequestHeader,
    ctx: &mut Ctx,
    headers: &mut Vec<(HeaderName, HeaderValue)>,
) {
    for h in std::mem::take(&mut ctx.response_headers) {
        if !headers.contains(&h) {
            headers.push(h);
        }
    }
    let Some(route) = ctx.route.as_ref() else {
        return;
    };
    if let Some(cors) = &route.policy.cors {
        let said = headers
            .iter()
            .any(|(n, v)| n == http::header::VARY && v.as_bytes().eq_ignore_ascii_case(b"origin"));
        // A preflight (answered or refused) needs nothing more.
        if !said {
            if let Ok(CorsOutcome::Actual(h)) = cors.evaluate(&req.method, &req.headers) {
                headers.extend(h);
            }
        }
    }
    for (name, value) in &route.transform.security {
        if !headers.iter().any(|(n, _)| n == name.name()) {
            headers.push((name.name().clone(), value.clone()));
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {
        // None: Pingora's default is a disabled compression module, whose per-request
        // context and filter calls cost CPU for nothing.
    }

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            request_id: HeaderValue::from_static(""),
            client_ip: None,
            route: None,
            upstream: Upstream::default(),
            answered: None,
            _inflight: None,
            peer_trusted: false,
            identity: None,
            response_headers: Vec::new(),
            body_bytes: 0,
            request_json: None,
            response_json: None,
            cache_consumer: None,
            cache_verdict: None,
            reason: None,
            received_target: None,
            forwarded_path: None,
            encoded_slash: false,
            compressor: None,
            upgraded: None,
            grpc: None,
            grpc_web: None,
            grpc_status: None,
            trace: None,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        if self.draining.load(Ordering::Acquire) {
            session.set_keepalive(None);
        } else {
            // Pingora keeps an idle HTTP/1.1 connection forever by default, or as long as the
            // client's own `Keep-Alive: timeout=` asks.
            session.set_keepalive(Some(self.policy.keepalive_secs));
        }
        session.set_pipelining_enabled(true);
        ctx._inflight = Some(GaugeGuard::new(&self.metrics.inflight));
        ctx.request_id = forward::request_id(session.req_header());
        ctx.trace = self
            .tracer
            .as_ref()
            .map(|t| t.start(&session.req_header().headers));
        ctx.grpc = GrpcCall::of(session.req_header(), ctx.start);
        session.set_read_timeout(Some(self.policy.body_timeout));
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        self.identify_client(peer, session.req_header(), ctx);
        Ok(())
    }

    /// The policy chain ([`request::admit`]), then refuse, answer, or go on to proxy: written
    /// out instead of through `async_trait`, whose `Box::pin` copies the chain's whole future
    /// (several hundred bytes) into its box on every request; this builds it in the box.
    fn request_filter<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        session: &'life1 mut Session,
        ctx: &'life2 mut Ctx,
    ) -> Pin<Box<dyn Future<Output = Result<bool>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        pingora::proxy::box_in_place(move || self.run_request_filter(session, ctx))
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let Some(cache) = &self.cache else {
            return Ok(());
        };
        let Some(rc) = ctx.route.as_ref().and_then(|r| r.cache.as_ref()) else {
            return Ok(());
        };
        let req = session.req_header();
        let authenticated =
            ctx.identity.is_some() || req.headers.contains_key(http::header::AUTHORIZATION);
        let principal = ctx.identity.as_ref().and_then(|i| i.principal());
        match rc.lookup(&req.method, authenticated, principal) {
            Lookup::Use(consumer) => {
                ctx.cache_consumer = consumer;
                cache.enable(session);
            }
            Lookup::Bypass(why) => ctx.reason = Some(Cow::Borrowed(why)),
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        let route = ctx.route.as_ref().map_or(NO_ROUTE, |r| &*r.name);
        let req = session.req_header();
        Ok(cache::key(
            route,
            req,
            forward::host(req),
            ctx.cache_consumer.as_deref(),
        ))
    }

    /// Stale entries: inside `stale-while-revalidate` (Pingora asks with no error only
    /// within an entry's window; one request refreshes it in the background), and on an
    /// upstream failure within `stale-if-error`.
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
        error: Option<&Error>,
    ) -> bool {
        match error {
            None => ctx.route.as_ref().is_some_and(|r| r.cache.is_some()),
            Some(e) => e.esource() == &pingora::ErrorSource::Upstream,
        }
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<RespCacheable> {
        let rc = ctx.route.as_ref().and_then(|r| r.cache.as_ref());
        Ok(match (rc, &self.cache) {
            (Some(rc), Some(cache)) => {
                // Entries keyed per consumer are not shared; `shared` ones are (RFC 9111 §3.5).
                let shared_authorized =
                    cache::shared_authorized(ctx.cache_consumer.as_deref(), session.req_header());
                rc.response_meta(
                    resp,
                    cache.max_object(),
                    shared_authorized,
                    cache.targeted(),
                )
            }
            _ => RespCacheable::Uncacheable(NoCacheReason::NeverEnabled),
        })
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        cache::variance(meta, req)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(route) = ctx.route.as_ref() else {
            return Ok(());
        };
        // Every refusal here is the client's doing, and marked so: Pingora's HTTP/2 upstream
        // path takes an unmarked error for a failed upstream write and waits for an answer
        // the upstream will never send (the body it expects stopped).
        // `max_body_size` bounds a request body; a gRPC stream per message (as gRPC's own
        // maximum message size does), and bytes after an upgrade (WebSocket) not at all:
        // they are no request body.
        if let (Some(chunk), None) = (body.as_ref(), ctx.upgraded.as_ref()) {
            let max = route.policy.max_body;
            match (ctx.grpc.as_mut(), ctx.grpc_web.is_none()) {
                (Some(call), true) => {
                    if call.messages.feed(chunk, max).is_err() {
                        return Err(Error::explain(
                            ErrorType::CustomCode(GRPC_MESSAGE_TOO_LARGE, 413),
                            "a gRPC message exceeds max_body_size",
                        )
                        .into_down());
                    }
                }
                _ => {
                    ctx.body_bytes += chunk.len() as u64;
                    if ctx.body_bytes > max {
                        return Err(Error::explain(
                            ErrorType::HTTPStatus(413),
                            "request body exceeds max_body_size",
                        )
                        .into_down());
                    }
                }
            }
        }
        if let Some(buffer) = ctx.request_json.as_mut() {
            *body = buffer.feed(body.take(), end_of_stream, &route.transform.json_request);
        }
        if let Some(bridge) = ctx.grpc_web.as_mut() {
            bridge
                .request_body(body, end_of_stream)
                .map_err(|e| e.into_down())?;
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some((action, group)) = proxy_of(ctx.route.as_ref()) else {
            return Error::e_explain(ErrorType::HTTPStatus(500), "route has no upstream");
        };
        let mut key_buf = [0u8; 16];
        let key = group.hash_key(session.req_header(), ctx.client_ip, &mut key_buf);
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
        if let Some(left) = ctx.grpc.and_then(|g| g.remaining()) {
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

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(t) = ctx.upstream.target.as_mut() {
            t.record(Outcome::Failure);
        }
        if let Some(addr) = peer.address().as_inet() {
            ctx.upstream.tried.push(*addr);
        }
        let cause = error_cause(&e, ctx);
        if let Some(t) = ctx.trace.as_mut() {
            t.call_failed(cause.clone());
        }
        ctx.upstream.last_cause = Some(cause);
        let retry = self.should_retry(session, ctx, Failure::Connect);
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let group = proxy_of(ctx.route.as_ref()).map_or("-", |(_, g)| &*g.name);
        let mut e = e.more_context(format!("upstream {group}/{}", peer.address()));
        let cause = error_cause(&e, ctx);
        if let Some(t) = ctx.trace.as_mut() {
            t.call_failed(cause.clone());
        }
        ctx.upstream.last_cause = Some(cause);
        if e.etype() == &RETRY_5XX || e.etype() == &RETRY_UNAVAILABLE {
            // Decided (and counted) when the 5xx arrived.
            return e;
        }
        let idempotent = session.req_header().method.is_idempotent();
        let truncated = session.as_ref().retry_buffer_truncated();
        // A pooled connection the upstream had already closed: no fault of the target, and
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
        if let Some(t) = ctx.upstream.target.as_mut() {
            t.record(Outcome::Failure);
        }
        if let Some(addr) = peer.address().as_inet() {
            ctx.upstream.tried.push(*addr);
        }
        // An upgrade that reached the upstream is never sent again: the upstream may have
        // acted on it, and a retried handshake would be a second connection.
        let retry = !session.is_upgrade_req() && self.should_retry(session, ctx, Failure::of(&e));
        e.set_retry(retry);
        e
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = resp.status;
        if status == StatusCode::SWITCHING_PROTOCOLS && !session.is_upgrade_req() {
            return Error::e_explain(UNASKED_101, "101 on a request without Upgrade");
        }
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // Pingora relays every 1xx and restarts the read timeout on each: bound both.
            ctx.upstream.informational += 1;
            if ctx.upstream.informational > self.policy.max_informational {
                return Error::e_explain(TOO_MANY_1XX, format!("{status}"));
            }
            let read_timeout = proxy_of(ctx.route.as_ref()).map(|(a, _)| a.read_timeout);
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
        if let Some((_, group)) = proxy_of(ctx.route.as_ref()) {
            let stats = ctx.route.as_ref().map(|r| &r.stats);
            self.metrics.upstream_response(stats, &group.name, status);
        }
        if ctx.grpc.is_some() {
            // A trailers-only `UNAVAILABLE`: the upstream did not take the call.
            let unavailable = grpc::status_of(&resp.headers) == Some(grpc::Code::Unavailable);
            if unavailable && self.should_retry(session, ctx, Failure::Unavailable) {
                return Err(retry_elsewhere(
                    ctx,
                    RETRY_UNAVAILABLE,
                    "UNAVAILABLE".into(),
                ));
            }
            return Ok(());
        }
        if status.is_server_error() && self.should_retry(session, ctx, Failure::Status5xx) {
            return Err(retry_elsewhere(ctx, RETRY_5XX, status.to_string()));
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.upstream_request(&forward::Downstream::of(session), upstream, ctx)?;
        // Every attempt bridges afresh (a retry replays the body from the start).
        ctx.grpc_web = None;
        if let (Some(call), Some((action, _))) = (ctx.grpc, proxy_of(ctx.route.as_ref())) {
            if action.grpc_web {
                ctx.grpc_web = crate::grpc_web::Bridge::start(call.flavor, upstream)?;
            }
        }
        // The upstream gets the deadline that is left, so it can stop work nobody awaits.
        if let Some(left) = ctx.grpc.and_then(|g| g.remaining()) {
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

    async fn response_filter(
        &self,
        session: &mut Session,
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
        resp.reserve(3 + security + ctx.response_headers.len());
        if let Some(bridge) = ctx.grpc_web.as_mut() {
            bridge.response_header(resp)?;
        }
        if resp.status == StatusCode::SWITCHING_PROTOCOLS && session.is_upgrade_req() {
            ctx.upgraded = Some(GaugeGuard::new(&self.metrics.upgraded));
        }
        let h2 = resp.version == http::Version::HTTP_2 || session.is_http2();
        self.decorate_response(session.req_header(), h2, resp, ctx)?;
        if let (true, Some(cache)) = (
            ctx.route.as_ref().is_some_and(|r| r.cache.is_some()),
            &self.cache,
        ) {
            // Targeted cache-control fields are for this cache, not the client (RFC 9213).
            for name in cache.targeted() {
                resp.remove_header(name);
            }
            let req = session.req_header();
            let dropped = cache.invalidate_after(req, forward::host(req), resp);
            if dropped > 0 {
                log::debug!(
                    "{} {}: {dropped} cache entries invalidated",
                    req.method,
                    req.uri
                );
            }
            ctx.cache_verdict = Verdict::of(session.cache.phase());
            if let Some(v) = ctx.cache_verdict {
                resp.insert_header(X_CACHE, v.header())?;
            }
        }
        for (name, value) in &ctx.response_headers {
            resp.append_header(name.clone(), value.clone())?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if let (Some(buffer), Some(route)) = (ctx.response_json.as_mut(), ctx.route.as_ref()) {
            *body = buffer.feed(body.take(), end_of_stream, &route.transform.json_response);
        }
        if let Some(encoder) = ctx.compressor.as_mut() {
            encoder.encode(body, end_of_stream);
        }
        if let Some(bridge) = ctx.grpc_web.as_mut() {
            bridge.response_body(body, end_of_stream);
        }
        Ok(None)
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.grpc.is_some() {
            if let Some(code) = grpc::status_of(trailers) {
                ctx.grpc_status = Some(code);
            }
        }
        Ok(())
    }

    /// A bridged gRPC-Web call ends with its trailers as the last frame of the body.
    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<Option<Bytes>> {
        match ctx.grpc_web.as_mut() {
            Some(bridge) => bridge.trailers(trailers),
            None => Ok(None),
        }
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if ctx.upstream.no_target && session.response_written().is_none() {
            session.set_keepalive(None);
            let fallback = proxy_of(ctx.route.as_ref())
                .and_then(|(_, g)| g.fallback.as_ref())
                .map(|f| (f.status, f.headers.clone(), f.body.clone()));
            if let Some((status, mut headers, body)) = fallback {
                ctx.answered = Some(status);
                ctx.reason = Some(Cow::Borrowed("no_healthy_target_fallback"));
                own_answer_headers(session.req_header(), ctx, &mut headers);
                if let Err(write_err) =
                    error::respond(session, status, &headers, body, &ctx.request_id).await
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
        ctx.answered = Some(status);
        ctx.reason = Some(reject.reason.clone());
        // The connection is not reused after a proxy failure: say so, so that clients do not
        // send their next request into a closing connection.
        session.set_keepalive(None);
        // Nothing final was sent yet: no header, or only informational ones.
        let final_sent = session.response_written().is_some_and(|r| {
            !r.status.is_informational() || r.status == StatusCode::SWITCHING_PROTOCOLS
        });
        if !final_sent {
            own_answer_headers(session.req_header(), ctx, &mut reject.headers);
            if let Err(write_err) = error::respond_error(session, &reject, &ctx.request_id).await {
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

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        // A client that went away before any answer is logged as nginx does, 499 (client
        // closed request): a 500 would blame the gateway or the upstream for a cancel.
        let unanswered = if e.is_some_and(client_went_away) {
            if ctx.reason.is_none() {
                ctx.reason = Some(Cow::Borrowed("client_closed_request"));
            }
            // nginx's 499, client closed request (a valid code, so no fallback is taken).
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        let status = session
            .response_written()
            .map(|r| r.status)
            .or(ctx.answered)
            .unwrap_or(unanswered);
        let req = session.req_header();
        let route_name = ctx.route.as_ref().map_or(NO_ROUTE, |r| &*r.name);
        // One clock read for both durations.
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(ctx.start);
        let m = &self.metrics;
        let upstream_elapsed = ctx
            .upstream
            .sent_at
            .map(|t| now.saturating_duration_since(t));
        let group = proxy_of(ctx.route.as_ref()).map(|(_, g)| &*g.name);
        let cause = e.map(|e| error_cause(e, ctx));
        if ctx.reason.is_none() && ctx.cache_verdict == Some(Verdict::Bypass) {
            ctx.reason = Some(Cow::Owned(cache::bypass_reason(session.cache.phase())));
        }
        if let Some(cache) = &self.cache {
            cache.finish(session);
        }
        if let Some(reason) = &ctx.reason {
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
            cache: ctx.cache_verdict,
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
                    request_id: ctx.request_id.to_str().unwrap_or(""),
                    trace_id: ctx.trace.as_ref().map(Trace::trace_id),
                    client_ip: ctx.client_ip,
                    host,
                    method: req.method.as_str(),
                    path: req.uri.path(),
                    query: req.uri.query().map(|q| format.query(q)),
                    received: ctx.received_target.as_deref(),
                    forwarded: ctx.forwarded_path.as_deref(),
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
                    cache: ctx.cache_verdict.map(Verdict::header),
                    reason: ctx.reason.as_deref(),
                    error: cause.clone(),
                    upgraded: ctx.upgraded.is_some(),
                    grpc_status: ctx
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
                    client: ctx.client_ip,
                    protocol: protocol.trim_start_matches("HTTP/"),
                    user_agent,
                    status: status.as_u16(),
                    request_id: ctx.request_id.to_str().unwrap_or(""),
                    upstream: group,
                    reason: ctx.reason.as_deref(),
                    error: cause,
                },
            );
        }
    }
}
