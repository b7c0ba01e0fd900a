//! The ordered policy chain `request_filter` runs. Each step answers in one shape
//! ([`Step`]): go on, refuse with a JSON error, or answer here. The order is the contract
//! (see `docs/` and the README's request flow); the line above each step says why it stands
//! where it does.

use super::{Ctx, Gateway};
use crate::aggregate::Forwarded;
use crate::error::{Reject, X_REQUEST_ID};
use crate::forward;
use crate::observe::trace;
use crate::policy::auth;
use crate::policy::cors::CorsOutcome;
use crate::policy::rate_limit::{RateDecision, Subject};
use crate::policy::{framing, normalize};
use crate::route::{Route, RouteAction};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use std::net::SocketAddr;

/// What a step decided.
#[derive(Clone)]
pub(crate) enum Step {
    /// On to the next step.
    Next,
    /// Refuse: the JSON error body with the request id.
    Reject(Reject),
    /// Answer here (a CORS preflight, a direct response, an aggregate).
    Answer {
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    },
}

/// The chain's steps, by the names `tollgate explain` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepName {
    Framing,
    Normalize,
    GlobalIp,
    Route,
    RouteIp,
    Cors,
    BodySize,
    Auth,
    RateLimit,
    Answer,
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
    step!(mode, Route, route_step(gw, req, ctx));
    let Some(route) = ctx.route.clone() else {
        return Step::Reject(Reject::new(StatusCode::NOT_FOUND, "no route"));
    };
    step!(mode, RouteIp, ip_step(&route.policy.ip, ctx));
    // Preflights carry no credentials, so they are answered before authentication.
    step!(mode, Cors, cors_step(&route, req, ctx));
    // A body announced too large is refused before anyone verifies who sends it.
    step!(mode, BodySize, body_size_step(&route, req));
    // Who is calling, and may they: rate limits below can key on the identity. An auth
    // service is not asked by `tollgate explain`, which works without any network.
    if !(mode.explaining() && route.policy.auth.asks_a_service()) {
        step!(mode, Auth, auth_step(gw, &route, req, ctx).await);
    }
    if !mode.explaining() {
        step!(mode, RateLimit, rate_limit_step(gw, &route, ctx).await);
    }
    // Routes that answer at the gateway, once every policy admitted the request.
    let answer = if mode.explaining() && matches!(route.action, RouteAction::Aggregate(_)) {
        Step::Answer {
            status: StatusCode::OK,
            headers: ctx.response_headers.clone(),
            body: Bytes::new(),
        }
    } else {
        answer_step(gw, &route, req, ctx).await
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
            ctx.received_target = n.received;
            ctx.encoded_slash = n.encoded_slash;
            Step::Next
        }
        Err(why) => Step::Reject(Reject::new(StatusCode::BAD_REQUEST, why)),
    }
}

fn ip_step(rules: &crate::policy::ip::IpRules, ctx: &Ctx) -> Step {
    if rules.admits(ctx.client_ip) {
        Step::Next
    } else {
        Step::Reject(Reject::new(StatusCode::FORBIDDEN, "forbidden").because("ip_denied"))
    }
}

fn route_step(gw: &Gateway, req: &RequestHeader, ctx: &mut Ctx) -> Step {
    let host = forward::host(req);
    let Some(route) = gw
        .routes
        .find(host, req.uri.path(), &req.method, &req.headers)
    else {
        return Step::Reject(Reject::new(StatusCode::NOT_FOUND, "no route"));
    };
    ctx.route = Some(route.clone());
    if ctx.encoded_slash && !route.allow_encoded_slashes {
        return Step::Reject(Reject::new(
            StatusCode::BAD_REQUEST,
            "encoded slash in path",
        ));
    }
    Step::Next
}

fn cors_step(route: &Route, req: &RequestHeader, ctx: &mut Ctx) -> Step {
    let Some(cors) = &route.policy.cors else {
        return Step::Next;
    };
    match cors.evaluate(&req.method, &req.headers) {
        Ok(CorsOutcome::Actual(h)) => {
            ctx.response_headers.extend(h);
            Step::Next
        }
        Ok(CorsOutcome::Preflight(headers)) => Step::Answer {
            status: StatusCode::NO_CONTENT,
            headers,
            body: Bytes::new(),
        },
        Err(reject) => Step::Reject(reject),
    }
}

fn body_size_step(route: &Route, req: &RequestHeader) -> Step {
    if forward::content_length(req).is_some_and(|n| n > route.policy.max_body) {
        Step::Reject(Reject::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        ))
    } else {
        Step::Next
    }
}

async fn auth_step(gw: &Gateway, route: &Route, req: &RequestHeader, ctx: &mut Ctx) -> Step {
    let policy = &route.policy;
    let request = crate::policy::external::AuthRequest {
        method: &req.method,
        uri: &req.uri,
        headers: &req.headers,
        host: forward::host(req),
        client_ip: ctx.client_ip,
        request_id: &ctx.request_id,
    };
    match auth::authenticate(&policy.auth, &request, &gw.policy.api_keys).await {
        Ok(identity) => {
            ctx.identity = identity;
            Step::Next
        }
        Err(failure) => {
            gw.metrics
                .auth_failures
                .with_label_values(&[&*route.name, failure.reason()])
                .inc();
            Step::Reject(failure.reject(&policy.auth))
        }
    }
}

/// Count the request against the route's and the consumer's windows.
async fn rate_limit_step(gw: &Gateway, route: &Route, ctx: &mut Ctx) -> Step {
    let subject = Subject {
        route: &route.name,
        consumer: ctx.identity.as_ref().and_then(|i| i.principal()),
        client_ip: ctx.client_ip,
    };
    let mut decision: Option<RateDecision> = match &route.policy.rate_limits {
        Some(limits) => Some(limits.check(&subject).await),
        None => None,
    };
    let consumer_limits = ctx
        .identity
        .as_ref()
        .and_then(|i| i.consumer.as_ref())
        .and_then(|c| c.rate_limits.as_ref());
    if let Some(limits) = consumer_limits {
        let d = limits.check(&subject).await;
        decision = Some(decision.map_or(d, |prev| prev.tighter(d)));
    }
    let Some(decision) = decision else {
        return Step::Next;
    };
    ctx.response_headers.extend(decision.headers());
    if decision.allowed {
        return Step::Next;
    }
    gw.metrics
        .rate_limited
        .with_label_values(&[&*route.name])
        .inc();
    let mut reject = Reject::new(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded")
        .because(decision.reason());
    reject.headers = std::mem::take(&mut ctx.response_headers);
    Step::Reject(reject)
}

async fn answer_step(gw: &Gateway, route: &Route, req: &RequestHeader, ctx: &mut Ctx) -> Step {
    match &route.action {
        RouteAction::Proxy(_) => Step::Next,
        RouteAction::Respond(direct) => {
            let mut headers = direct.headers.clone();
            headers.extend(ctx.response_headers.iter().cloned());
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
            headers.extend(ctx.response_headers.iter().cloned());
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
    out.push((X_REQUEST_ID.name().clone(), ctx.request_id.clone()));
    // One CLIENT span covers the calls; each callee's span is its child.
    if let Some(t) = ctx.trace.as_mut() {
        out.push((trace::TRACEPARENT, t.call(trace::CALLS, None)));
        if let Some(state) = t.state() {
            out.push((trace::TRACESTATE, state.clone()));
        }
    }
    if let Some(ip) = ctx.client_ip {
        if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
            out.push((HeaderName::from_static("x-forwarded-for"), v));
        }
    }
    out
}
