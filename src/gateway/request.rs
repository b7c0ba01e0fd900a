//! The ordered policy chain `request_filter` runs. Each step answers in one shape
//! ([`Step`]): go on, refuse with a JSON error, or answer here. The order is the contract
//! (see `docs/` and the README's request flow); the line above each step says why it stands
//! where it does.

use super::{Ctx, Gateway};
use crate::aggregate::Forwarded;
use crate::config::file::{CallerKind, ShadowPolicy};
use crate::error::{self, Reject};
use crate::forward;
use crate::observe::trace;
use crate::policy::auth;
use crate::policy::rate_limit::{RateDecision, Subject};
use crate::policy::{framing, normalize};
use crate::route::{Route, RouteAction};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use std::net::SocketAddr;

/// The status message of a gRPC call refused for a message over `max_body_size`.
const GRPC_MESSAGE_TOO_LARGE: &str = "message larger than max_body_size";

pub(crate) use crate::policy::Step;

/// The chain's steps, by the names `tollgate explain` prints: the fixed ones, and the
/// route's checks by their own names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepName {
    Framing,
    Normalize,
    GlobalIp,
    Route,
    /// One of the route's checks (`RouteCheck::name`).
    Check(&'static str),
    Auth,
    RateLimit,
    Validate,
    Answer,
}

impl StepName {
    pub fn as_str(&self) -> &'static str {
        match self {
            StepName::Framing => "framing",
            StepName::Normalize => "normalize",
            StepName::GlobalIp => "global_ip",
            StepName::Route => "route",
            StepName::Check(name) => name,
            StepName::Auth => "auth",
            StepName::RateLimit => "rate_limit",
            StepName::Validate => "validate",
            StepName::Answer => "answer",
        }
    }
}

impl serde::Serialize for StepName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Facts about the connection the chain needs besides the request head.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Facts {
    /// The listener's address (a listener may override header normalization).
    pub local: Option<SocketAddr>,
    /// The raw HTTP/1 head carried `Content-Length` beside `Transfer-Encoding` (Pingora
    /// drops it from the parsed head).
    pub raw_content_length: bool,
}

impl Facts {
    pub(crate) fn of(session: &Session) -> Facts {
        let req = session.req_header();
        Facts {
            local: session.server_addr().and_then(|a| a.as_inet()).copied(),
            raw_content_length: req.headers.contains_key(http::header::TRANSFER_ENCODING)
                && session
                    .as_http1()
                    .is_some_and(|h1| framing::raw_has_content_length(&h1.get_headers_raw_bytes())),
        }
    }
}

/// How the chain runs: serving a request, or describing what it would do
/// (`tollgate explain`), which records each step and changes no state: rate limits are not
/// counted and aggregates are not called.
pub(crate) enum Mode<'a> {
    Serve,
    Explain(&'a mut Vec<(StepName, Step)>),
}

impl Mode<'_> {
    fn explaining(&self) -> bool {
        matches!(self, Mode::Explain(_))
    }
}

/// Return the step's decision unless it is [`Step::Next`], recording it when explaining.
macro_rules! step {
    ($mode:expr, $name:expr, $e:expr) => {{
        let decided = $e;
        if let Mode::Explain(trace) = &mut $mode {
            trace.push(($name, decided.clone()));
        }
        match decided {
            Step::Next => {}
            other => return other,
        }
    }};
}

/// Run the chain on a request; [`Step::Next`] means proxy it.
pub(crate) async fn admit(
    gw: &Gateway,
    req: &mut RequestHeader,
    facts: Facts,
    ctx: &mut Ctx,
    mut mode: Mode<'_>,
) -> Step {
    use StepName::*;
    // Before anything reads the head: a request two parsers could frame differently is
    // refused whatever its route.
    step!(mode, Framing, framing_step(gw, req, facts));
    // Everything after sees the one canonical path, host and header set.
    step!(mode, Normalize, normalize_step(gw, req, facts, ctx));
    // The cheapest refusal, before any routing work.
    step!(mode, GlobalIp, ip_step(&gw.policy.ip, ctx));
    // The route decides every policy below.
    // The route as the generation holds it: borrowed for the chain, since an `Arc` clone
    // is a write every worker makes to its shared count (`ctx.route` holds the one clone).
    let mut found = None;
    step!(mode, Route, route_step(gw, req, ctx, &mut found));
    let Some(route) = found else {
        return Step::Reject(Reject::new(StatusCode::NOT_FOUND, "no route"));
    };
    // The route's checks on the request head, in their registered order (IP rules, CORS,
    // body size...): before anyone verifies who sends the request.
    let asked = crate::policy::Asked {
        req,
        client_ip: ctx.client.ip,
    };
    for check in &route.policy.checks {
        let mut decided = check.check(&asked, &mut ctx.reply.headers);
        if let (Step::Reject(refusal), Some(p)) = (&decided, check.shadow_as()) {
            if route.policy.shadow.has(p) {
                ctx.shadow_refusal(gw, route, p, &refusal.reason);
                decided = Step::Next;
            }
        }
        step!(mode, Check(check.name()), decided);
    }
    // Who is calling, and may they: rate limits below can key on the identity. An auth
    // service is not asked by `tollgate explain`, which works without any network.
    if !(mode.explaining() && route.policy.auth.asks_a_service()) {
        step!(mode, Auth, auth_step(gw, route, req, ctx).await);
    }
    if !mode.explaining() {
        step!(
            mode,
            RateLimit,
            rate_limit_step(gw, route, &req.headers, ctx).await
        );
    }
    // What the upstream documents it takes, once the caller may call it at all (an unknown
    // caller learns nothing of the API's shape); the body is checked once admitted.
    if let Some(v) = &route.policy.validator {
        let decided = validate_step(gw, route, v, req, ctx);
        step!(mode, Validate, decided);
    }
    // Routes that answer at the gateway, once every policy admitted the request.
    let answer = if mode.explaining() && matches!(route.action, RouteAction::Aggregate(_)) {
        Step::Answer {
            status: StatusCode::OK,
            headers: ctx.reply.headers.clone(),
            body: Bytes::new(),
        }
    } else {
        answer_step(gw, route, req, ctx).await
    };
    if let Mode::Explain(trace) = &mut mode {
        trace.push((Answer, answer.clone()));
    }
    answer
}

fn framing_step(gw: &Gateway, req: &RequestHeader, facts: Facts) -> Step {
    match framing::check(req, gw.policy.head, facts.raw_content_length) {
        Ok(()) => Step::Next,
        Err(reject) => Step::Reject(reject),
    }
}

fn normalize_step(gw: &Gateway, req: &mut RequestHeader, facts: Facts, ctx: &mut Ctx) -> Step {
    let opts = gw.policy.normalize_for(facts.local);
    let key_header = gw.policy.api_keys.header.as_ref();
    match normalize::normalize(req, opts, key_header) {
        Ok(n) => {
            ctx.target.received = n.received;
            ctx.target.encoded_slash = n.encoded_slash;
            Step::Next
        }
        Err(why) => Step::Reject(Reject::new(StatusCode::BAD_REQUEST, why)),
    }
}

fn ip_step(rules: &crate::policy::ip::IpRules, ctx: &Ctx) -> Step {
    if rules.admits(ctx.client.ip) {
        Step::Next
    } else {
        Step::Reject(crate::policy::ip::refused())
    }
}

fn route_step<'g>(
    gw: &'g Gateway,
    req: &RequestHeader,
    ctx: &mut Ctx,
    found: &mut Option<&'g std::sync::Arc<Route>>,
) -> Step {
    let host = forward::host(req);
    let Some(route) = gw
        .routes
        .find(host, req.uri.path(), &req.method, &req.headers)
    else {
        return Step::Reject(Reject::new(StatusCode::NOT_FOUND, "no route"));
    };
    ctx.route = Some(route.clone());
    *found = Some(route);
    if ctx.target.encoded_slash && !route.allow_encoded_slashes {
        return Step::Reject(Reject::new(
            StatusCode::BAD_REQUEST,
            "encoded slash in path",
        ));
    }
    Step::Next
}

async fn auth_step(gw: &Gateway, route: &Route, req: &RequestHeader, ctx: &mut Ctx) -> Step {
    let policy = &route.policy;
    let request = crate::policy::external::AuthRequest {
        method: &req.method,
        uri: &req.uri,
        headers: &req.headers,
        host: forward::host(req),
        client_ip: ctx.client.ip,
        request_id: &ctx.client.request_id,
    };
    let refused = |ctx: &mut Ctx, failure: auth::AuthFailure, shadow_as| {
        if policy.shadow.has(shadow_as) {
            ctx.shadow_refusal(gw, route, shadow_as, failure.reason());
            return Step::Next;
        }
        gw.metrics
            .auth_failures
            .with_label_values(&[&*route.name, failure.reason()])
            .inc();
        Step::Reject(failure.reject(&policy.auth))
    };
    // An authentication failure in shadow mode goes on as an unauthenticated caller, whose
    // roles there is nothing to check against.
    let identity = match auth::authenticate(&policy.auth, &request, &gw.policy.api_keys).await {
        Ok(identity) => identity,
        Err(failure) => return refused(ctx, failure, ShadowPolicy::Auth),
    };
    if let Some(Err(failure)) = identity.as_ref().map(|i| auth::authorize(&policy.auth, i)) {
        let step = refused(ctx, failure, ShadowPolicy::Roles);
        if !matches!(step, Step::Next) {
            return step;
        }
    }
    ctx.identity = identity;
    Step::Next
}

/// Count the request against the route's and the consumer's windows.
async fn rate_limit_step(
    gw: &Gateway,
    route: &Route,
    headers: &http::HeaderMap,
    ctx: &mut Ctx,
) -> Step {
    let identity = ctx.identity.as_ref();
    let kind = match identity {
        Some(i) if i.consumer.is_some() => CallerKind::ApiKey,
        Some(_) => CallerKind::Jwt,
        None => CallerKind::Unauthenticated,
    };
    let subject = Subject {
        route: &route.name,
        consumer: identity.and_then(|i| i.principal()),
        subject: identity.and_then(|i| i.subject.as_deref()),
        api_key: identity.and_then(|i| i.consumer.as_ref()).map(|c| &*c.name),
        headers: Some(headers),
        identity_headers: identity.map_or(&[][..], |i| &i.headers[..]),
        client_ip: ctx.client.ip,
        kind,
    };
    // The route's windows, the gateway-wide ones and the consumer's all count the request;
    // the tightest decision stands.
    let consumer_limits = identity
        .and_then(|i| i.consumer.as_ref())
        .and_then(|c| c.rate_limits.as_ref());
    let lists = [
        route.policy.rate_limits.as_ref(),
        gw.policy.rate_limits.as_ref(),
        consumer_limits,
    ];
    let mut decision: Option<RateDecision> = None;
    for limits in lists.into_iter().flatten() {
        if let Some(d) = limits.check(&subject).await {
            decision = Some(decision.map_or(d, |prev| prev.tighter(d)));
        }
    }
    let Some(decision) = decision else {
        return Step::Next;
    };
    // Limits in shadow mode count, but tell the client nothing: headers announcing a limit
    // before it is enforced would already change how clients behave.
    if route.policy.shadow.has(ShadowPolicy::RateLimits) {
        if !decision.allowed {
            ctx.shadow_refusal(gw, route, ShadowPolicy::RateLimits, &decision.reason());
        }
        return Step::Next;
    }
    ctx.reply.headers.extend(decision.headers());
    if decision.allowed {
        return Step::Next;
    }
    gw.metrics
        .rate_limited
        .with_label_values(&[&*route.name])
        .inc();
    let mut reject = Reject::new(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded")
        .because(decision.reason());
    reject.headers = std::mem::take(&mut ctx.reply.headers);
    Step::Reject(reject)
}

fn validate_step(
    gw: &Gateway,
    route: &Route,
    v: &crate::policy::validate::Validator,
    req: &RequestHeader,
    ctx: &mut Ctx,
) -> Step {
    match v.check_head(&req.method, req.uri.path(), req.uri.query(), &req.headers) {
        Ok(m) => {
            ctx.body.operation = Some(m);
            Step::Next
        }
        Err(violation) => validation_refused(gw, route, ctx, violation),
    }
}

/// A request its route's operation does not allow: refused, or in shadow mode counted.
fn validation_refused(
    gw: &Gateway,
    route: &Route,
    ctx: &mut Ctx,
    violation: crate::policy::validate::Violation,
) -> Step {
    if route.policy.shadow.has(ShadowPolicy::Validate) {
        ctx.shadow_refusal(gw, route, ShadowPolicy::Validate, violation.reason());
        return Step::Next;
    }
    Step::Reject(violation.reject(ctx.client.request_id.as_str()))
}

async fn answer_step(gw: &Gateway, route: &Route, req: &RequestHeader, ctx: &mut Ctx) -> Step {
    match &route.action {
        RouteAction::Proxy(_) => Step::Next,
        RouteAction::Respond(direct) => {
            let mut headers = direct.headers.clone();
            headers.extend(ctx.reply.headers.iter().cloned());
            Step::Answer {
                status: direct.status,
                headers,
                body: direct.body.clone(),
            }
        }
        RouteAction::Aggregate(agg) => {
            let fwd = Forwarded {
                path: req.uri.path(),
                host: forward::host(req),
                headers: calls_carry(ctx),
            };
            let (status, body) = agg.run(&gw.connector, &fwd).await;
            let mut headers = vec![(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )];
            headers.extend(ctx.reply.headers.iter().cloned());
            Step::Answer {
                status,
                headers,
                body,
            }
        }
    }
}

/// What every call the gateway makes for a client request carries from it (aggregate parts,
/// transcoded gRPC calls): the identity headers, the request id and the client's address.
pub(super) fn calls_carry(ctx: &mut Ctx) -> Vec<(HeaderName, HeaderValue)> {
    let mut out: Vec<(HeaderName, HeaderValue)> = ctx
        .identity
        .as_ref()
        .map_or_else(Vec::new, |i| i.headers.to_vec());
    out.push((
        ctx.client.request_id.header.name().clone(),
        ctx.client.request_id.value.clone(),
    ));
    // One CLIENT span covers the calls; each callee's span is its child.
    if let Some(t) = ctx.trace.as_mut() {
        out.push((trace::TRACEPARENT, t.call(trace::CALLS, None)));
        if let Some(state) = t.state() {
            out.push((trace::TRACESTATE, state.clone()));
        }
    }
    if let Some(ip) = ctx.client.ip {
        if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
            out.push((HeaderName::from_static("x-forwarded-for"), v));
        }
    }
    out
}

impl Gateway {
    /// The policy chain ([`admit`]), then refuse, answer, or go on to proxy (`false`).
    pub(crate) async fn admit_request(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let facts = Facts::of(session);
        let req = session.req_header_mut();
        let mut admitted = admit(self, req, facts, ctx, Mode::Serve).await;
        if matches!(admitted, Step::Next) {
            admitted = self.validate_body(session, ctx).await?;
        }
        match admitted {
            Step::Next => {
                // A transcoding route answers here, with a gRPC call of its own. The route's
                // `Arc` is cloned only then (a clone is a write to its shared count).
                let route = ctx
                    .route
                    .as_ref()
                    .filter(|r| r.transcoding().is_some())
                    .cloned();
                match route.as_deref().and_then(Route::transcoding) {
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
                ctx.reply.answered = Some(status);
                super::respond::own_answer_headers(session.req_header(), ctx, &mut headers);
                error::respond(session, status, &headers, body, &ctx.client.request_id).await?;
                Ok(true)
            }
        }
    }

    /// A body the route's operation has a JSON schema for, read whole and checked before the
    /// upstream is called; Pingora's replay buffer then sends it on (the way it replays a
    /// body to a retried upstream).
    async fn validate_body(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Step> {
        use crate::policy::validate::MAX_VALIDATED_BODY;
        let Some(m) = ctx.body.operation else {
            return Ok(Step::Next);
        };
        let Some(route) = ctx.route.clone() else {
            return Ok(Step::Next);
        };
        let Some(v) = route.policy.validator.as_ref().filter(|v| v.checks_body(m)) else {
            return Ok(Step::Next);
        };
        let limit =
            MAX_VALIDATED_BODY.min(usize::try_from(route.policy.max_body).unwrap_or(usize::MAX));
        let declared = forward::content_length(session.req_header());
        let shadow = route.policy.shadow.has(ShadowPolicy::Validate);
        if declared.is_some_and(|n| n > limit as u64)
            || (shadow && declared.is_none() && !session.is_body_empty())
        {
            // Refused unread when it is too large; in shadow mode a body of unknown length
            // is not read ahead (it could outgrow the replay buffer) and goes on unchecked.
            if shadow {
                return Ok(Step::Next);
            }
            return Ok(too_large(ctx, limit, &route));
        }
        session.as_mut().enable_retry_buffering();
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = session.read_request_body().await? {
            body.extend_from_slice(&chunk);
            if body.len() > limit {
                return Ok(too_large(ctx, limit, &route));
            }
        }
        let ct = session.req_header().headers.get(http::header::CONTENT_TYPE);
        Ok(match v.check_body(m, ct, &body) {
            Ok(()) => Step::Next,
            Err(violation) => validation_refused(self, &route, ctx, violation),
        })
    }

    /// Each request body chunk: `max_body_size` (per message on gRPC, not at all after an
    /// upgrade), then the JSON rename and the gRPC-Web bridge.
    pub(crate) fn request_body(
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(route) = ctx.route.as_ref() else {
            return Ok(());
        };
        // NOTE(pingora-0.9): pingora-proxy/src/proxy_h2.rs reads an unmarked error as an upstream one.
        // Every refusal here is the client's doing, and marked so: Pingora's HTTP/2 upstream
        // path takes an unmarked error for a failed upstream write and waits for an answer
        // the upstream will never send (the body it expects stopped).
        // `max_body_size` bounds a request body; a gRPC stream per message (as gRPC's own
        // maximum message size does), and bytes after an upgrade (WebSocket) not at all:
        // they are no request body.
        if let (Some(chunk), None) = (body.as_ref(), ctx.reply.upgraded.as_ref()) {
            let max = route.policy.max_body;
            match ctx.grpc.as_mut().filter(|call| call.web.is_none()) {
                Some(call) => {
                    if call.messages.feed(chunk, max).is_err() {
                        return Err(Error::explain(
                            ErrorType::CustomCode(GRPC_MESSAGE_TOO_LARGE, 413),
                            "a gRPC message exceeds max_body_size",
                        )
                        .into_down());
                    }
                }
                None => {
                    ctx.body.received += chunk.len() as u64;
                    if ctx.body.received > max {
                        return Err(Error::explain(
                            ErrorType::HTTPStatus(413),
                            "request body exceeds max_body_size",
                        )
                        .into_down());
                    }
                }
            }
        }
        if let Some(buffer) = ctx.body.request_json.as_mut() {
            *body = buffer.feed(body.take(), end_of_stream, &route.transform.json_request);
        }
        if let Some(bridge) = ctx.bridge() {
            bridge
                .request_body(body, end_of_stream)
                .map_err(|e| e.into_down())?;
        }
        Ok(())
    }
}

/// A body over what a validated operation reads ahead: `max_body_size`'s 413, or the
/// validator's when its own bound is the smaller.
fn too_large(ctx: &Ctx, limit: usize, route: &Route) -> Step {
    if limit as u64 >= route.policy.max_body {
        return Step::Reject(Reject::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        ));
    }
    let v = crate::policy::validate::Violation {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        field: "body".into(),
        rule: format!(
            "a validated body is read whole before the upstream is called: at most {limit} bytes"
        ),
    };
    Step::Reject(v.reject(ctx.client.request_id.as_str()))
}
