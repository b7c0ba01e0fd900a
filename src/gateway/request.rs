//! The ordered policy chain `request_filter` runs. Each step answers in one shape
//! ([`Step`]): go on, refuse with a JSON error, or answer here. The order is the contract
//! (see `docs/` and the README's request flow); the line above each step says why it stands
//! where it does.

use super::{Ctx, Gateway};
use crate::aggregate::Forwarded;
use crate::error::{Reject, X_REQUEST_ID};
use crate::forward;
use crate::policy::auth;
use crate::policy::cors::CorsOutcome;
use crate::policy::rate_limit::{RateDecision, Subject};
use crate::policy::{framing, normalize};
use crate::route::{Route, RouteAction};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::proxy::Session;

/// What a step decided.
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

/// Return the step's decision unless it is [`Step::Next`].
macro_rules! step {
    ($e:expr) => {
        match $e {
            Step::Next => {}
            other => return other,
        }
    };
}

/// Run the chain on a request; [`Step::Next`] means proxy it.
pub(crate) async fn admit(gw: &Gateway, session: &mut Session, ctx: &mut Ctx) -> Step {
    // Before anything reads the head: a request two parsers could frame differently is
    // refused whatever its route.
    step!(framing_step(gw, session));
    // Everything after sees the one canonical path, host and header set.
    step!(normalize_step(gw, session, ctx));
    // The cheapest refusal, before any routing work.
    step!(ip_step(&gw.policy.ip, ctx));
    // The route decides every policy below.
    step!(route_step(gw, session, ctx));
    let Some(route) = ctx.route.clone() else {
        return Step::Reject(Reject::new(StatusCode::NOT_FOUND, "no route"));
    };
    step!(ip_step(&route.policy.ip, ctx));
    // Preflights carry no credentials, so they are answered before authentication.
    step!(cors_step(&route, session, ctx));
    // A body announced too large is refused before anyone verifies who sends it.
    step!(body_size_step(&route, session));
    // Who is calling, and may they: rate limits below can key on the identity.
    step!(auth_step(gw, &route, session, ctx).await);
    step!(rate_limit_step(gw, &route, ctx).await);
    // Routes that answer at the gateway, once every policy admitted the request.
    answer_step(gw, &route, session, ctx).await
}

fn framing_step(gw: &Gateway, session: &Session) -> Step {
    let req = session.req_header();
    // Pingora drops `Content-Length` from the parsed head when `Transfer-Encoding` is also
    // present; only the raw bytes show the conflict.
    let raw_cl = req.headers.contains_key(http::header::TRANSFER_ENCODING)
        && session
            .as_http1()
            .is_some_and(|h1| framing::raw_has_content_length(&h1.get_headers_raw_bytes()));
    match framing::check(req, gw.policy.head, raw_cl) {
        Ok(()) => Step::Next,
        Err(reject) => Step::Reject(reject),
    }
}

fn normalize_step(gw: &Gateway, session: &mut Session, ctx: &mut Ctx) -> Step {
    let local = session.server_addr().and_then(|a| a.as_inet()).copied();
    let opts = gw.policy.normalize_for(local);
    let key_header = gw.policy.api_keys.header.as_ref();
    match normalize::normalize(session.req_header_mut(), opts, key_header) {
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
        Step::Reject(Reject::new(StatusCode::FORBIDDEN, "forbidden"))
    }
}

fn route_step(gw: &Gateway, session: &Session, ctx: &mut Ctx) -> Step {
    let req = session.req_header();
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

fn cors_step(route: &Route, session: &Session, ctx: &mut Ctx) -> Step {
    let Some(cors) = &route.policy.cors else {
        return Step::Next;
    };
    let req = session.req_header();
    match cors.evaluate(&req.method, &req.headers) {
        Ok(CorsOutcome::None) => Step::Next,
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

fn body_size_step(route: &Route, session: &Session) -> Step {
    if forward::content_length(session.req_header()).is_some_and(|n| n > route.policy.max_body) {
        Step::Reject(Reject::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        ))
    } else {
        Step::Next
    }
}

async fn auth_step(gw: &Gateway, route: &Route, session: &Session, ctx: &mut Ctx) -> Step {
    let policy = &route.policy;
    let headers = &session.req_header().headers;
    match auth::authenticate(&policy.auth, headers, &gw.policy.api_keys).await {
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
    let mut reject = Reject::new(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
    reject.headers = std::mem::take(&mut ctx.response_headers);
    Step::Reject(reject)
}

async fn answer_step(gw: &Gateway, route: &Route, session: &Session, ctx: &Ctx) -> Step {
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
            let mut forwarded: Vec<(HeaderName, HeaderValue)> = ctx
                .identity
                .as_ref()
                .map_or_else(Vec::new, |i| i.headers.clone());
            forwarded.push((X_REQUEST_ID, ctx.request_id.clone()));
            if let Some(ip) = ctx.client_ip {
                if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
                    forwarded.push((HeaderName::from_static("x-forwarded-for"), v));
                }
            }
            let req = session.req_header();
            let fwd = Forwarded {
                path: req.uri.path(),
                host: forward::host(req),
                headers: forwarded,
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
