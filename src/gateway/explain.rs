//! `tollgate explain`: what the gateway would do with one request, without any network.
//!
//! The request runs through the same policy chain as a served one ([`request::admit`] in
//! [`Mode::Explain`]), then the same upstream-request and response builders
//! ([`Gateway::rewrite_request`], [`Gateway::decorate_response`]); only the steps with side
//! effects are described instead of run: rate limits are listed, not counted, and an
//! aggregate's calls are listed, not made. `tests/it/explain.rs` compares the answer with what
//! the running gateway does for the same requests.

use super::request::{self, Facts, Mode, Step, StepName};
use super::{Ctx, Gateway};
use crate::cache::Lookup;
use crate::forward;
use crate::policy::auth::AuthMethod;
use crate::route::{Route, RouteAction};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use pingora::cache::RespCacheable;
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Serialize;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// One request to explain.
#[derive(Debug, Clone)]
pub struct Query {
    /// The request's method.
    pub method: String,
    /// `http://host/path?query`, `https://...`, or an origin-form `/path` (host from `-H`).
    pub url: String,
    /// `Name: value` lines.
    pub headers: Vec<String>,
    /// The TCP peer the request comes from.
    pub client: IpAddr,
    /// The listener it arrives on; default: the first TLS listener for `https`, else the
    /// first plain one.
    pub listener: Option<String>,
    /// `Name: value` lines of the upstream's 200 response, for the cache decision (default:
    /// none).
    pub upstream_headers: Vec<String>,
    /// The request comes over HTTP/3 (to a listener with `[listeners.quic]`).
    pub http3: bool,
}

/// What the gateway would do.
#[derive(Debug, Serialize)]
pub struct Explanation {
    /// The request as the gateway sees it after normalization.
    pub request: RequestFacts,
    /// What happens to it: refused, answered here, or proxied.
    pub outcome: Outcome,
    /// Each step of the policy chain and what it decided.
    pub steps: Vec<StepReport>,
    /// Routes that do not take this request, nearest first, and why.
    pub other_routes: Vec<Candidate>,
    /// Where it would be proxied, and what the upstream would be sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamReport>,
    /// What the cache would do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// The live gateway's `X-Cache` for this request on a miss, given the upstream's
    /// response: `MISS` (stored) or `BYPASS`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_verdict: Option<&'static str>,
    /// The reason word of a `BYPASS` (`cache_bypass:...`), as the access log says it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_reason: Option<String>,
    /// What the response would be compressed with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// Headers the gateway adds to the response (the upstream's own come on top).
    pub response_headers: Vec<(String, String)>,
    /// Anything else worth knowing.
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RequestFacts {
    pub method: String,
    pub target: String,
    /// The canonical target routing and the upstream see, when it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalized: Option<String>,
    pub host: Option<String>,
    pub client_ip: Option<String>,
    pub listener: Option<String>,
    /// `HTTP/1.1` or `HTTP/3`.
    pub protocol: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Proxied to an upstream group.
    Proxy { route: String, group: String },
    /// Answered by the gateway (direct response, preflight, aggregate).
    Answer { route: Option<String>, status: u16 },
    /// Refused with a JSON error.
    Refuse {
        route: Option<String>,
        status: u16,
        error: String,
    },
}

#[derive(Debug, Serialize)]
pub struct StepReport {
    pub step: StepName,
    /// `pass`, `refuse`, `answer` or `described` (not run by explain).
    pub result: &'static str,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Candidate {
    pub route: String,
    pub matches: String,
    pub why_not: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct UpstreamReport {
    pub group: serde_json::Value,
    pub connect_timeout: String,
    pub read_timeout: String,
    pub retries: usize,
    pub retry_on: String,
    pub method: String,
    /// Path and query sent upstream.
    pub path: String,
    pub headers: Vec<(String, String)>,
}

fn pairs<'a>(
    h: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) -> Vec<(String, String)> {
    h.into_iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn dur(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The request head `q` describes, and the listener it arrives on.
/// A `Name: value` line of the command line.
fn header_line(line: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| format!("header {line:?}: write it as 'Name: value'"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("invalid header name {:?}", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("invalid value for header {name}"))?;
    Ok((name, value))
}

fn request_of(q: &Query) -> Result<(RequestHeader, bool), String> {
    let method = Method::from_bytes(q.method.as_bytes())
        .ok()
        .filter(|m| m.as_str().bytes().all(|b| b.is_ascii_uppercase()))
        .ok_or_else(|| {
            format!(
                "invalid method {:?}; write it upper-case, e.g. GET",
                q.method
            )
        })?;
    let (tls, authority, target) = if q.url.starts_with('/') {
        (false, None, q.url.clone())
    } else {
        let (scheme, rest) = q
            .url
            .split_once("://")
            .ok_or_else(|| format!("{:?}: write a URL like http://api.example.com/path", q.url))?;
        let tls = match scheme {
            "http" => false,
            "https" => true,
            other => return Err(format!("scheme {other:?}: only http and https")),
        };
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        (tls, Some(authority.to_string()), target)
    };
    let mut req = RequestHeader::build(method, target.as_bytes(), None)
        .map_err(|e| format!("invalid request target {target:?}: {e}"))?;
    let mut has_host = false;
    for line in &q.headers {
        let (name, value) = header_line(line)?;
        has_host |= name == http::header::HOST;
        req.append_header(name, value).map_err(|e| e.to_string())?;
    }
    if let (Some(a), false) = (authority, has_host) {
        let v = HeaderValue::from_str(&a).map_err(|_| format!("invalid host {a:?}"))?;
        req.insert_header(http::header::HOST, v)
            .map_err(|e| e.to_string())?;
    }
    Ok((req, tls))
}

/// One configured listener as explain sees it.
#[derive(Debug, Clone)]
pub(crate) struct ListenerFacts {
    pub address: String,
    pub tls: bool,
    /// It has `[listeners.quic]`.
    pub http3: bool,
}

/// Explain `q` against the generation `gw`. `listeners` are the configured listeners.
pub(crate) fn explain(
    gw: &Gateway,
    listeners: &[ListenerFacts],
    q: &Query,
) -> Result<Explanation, String> {
    let (mut req, tls_url) = request_of(q)?;
    if q.http3 {
        if !tls_url && !q.url.starts_with('/') {
            return Err(format!("{:?}: HTTP/3 is https only", q.url));
        }
        req.set_version(http::Version::HTTP_3);
    }
    let listener = match &q.listener {
        Some(l) => {
            let found = listeners
                .iter()
                .find(|f| &f.address == l)
                .ok_or_else(|| format!("no [[listeners]] entry has address {l:?}"))?;
            if q.http3 && !found.http3 {
                return Err(format!("listener {l:?} has no [listeners.quic] (HTTP/3)"));
            }
            Some(found)
        }
        None if q.http3 => Some(
            listeners
                .iter()
                .find(|f| f.http3)
                .ok_or("no listener has [listeners.quic] (HTTP/3)")?,
        ),
        None => listeners
            .iter()
            .find(|f| f.tls == tls_url)
            .or(listeners.first()),
    }
    .map(|f| (f.address.clone(), f.tls || f.http3));
    let tls = listener.as_ref().is_some_and(|(_, t)| *t);
    let facts = Facts {
        local: listener
            .as_ref()
            .and_then(|(a, _)| a.parse::<SocketAddr>().ok()),
        raw_content_length: false,
    };
    let received = String::from_utf8_lossy(req.raw_path()).into_owned();
    for p in &gw.policy.jwt_providers {
        p.go_offline();
    }
    let mut ctx = Ctx::default();
    ctx.client.request_id = forward::RequestId::read(&req, gw.request_id_header);
    gw.identify_client(Some(q.client), &req, &mut ctx);
    gw.advertise_http3(facts.local, &mut ctx);
    let original = req.clone();
    let mut trace = Vec::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let decided = runtime.block_on(request::admit(
        gw,
        &mut req,
        facts,
        &mut ctx,
        Mode::Explain(&mut trace),
    ));
    let route = ctx.route.clone();
    let route_name = route.as_ref().map(|r| r.name().to_string());
    let host = forward::host(&req).map(str::to_string);
    let mut notes = Vec::new();

    let mut steps: Vec<StepReport> = trace
        .iter()
        .map(|(name, step)| StepReport {
            step: *name,
            result: match step {
                Step::Next => "pass",
                Step::Reject(_) => "refuse",
                Step::Answer { .. } => "answer",
            },
            detail: detail(gw, *name, step, route.as_deref(), &ctx, &req, &received),
        })
        .collect();
    // A route that asks an auth service: described, not asked (no network).
    if let Some(r) = route.as_ref().filter(|r| r.policy.auth.asks_a_service()) {
        if matches!(decided, Step::Next | Step::Answer { .. }) {
            let at = steps
                .iter()
                .position(|s| s.step == StepName::Answer)
                .unwrap_or(steps.len());
            let mut detail = detail(
                gw,
                StepName::Auth,
                &Step::Next,
                Some(r),
                &ctx,
                &req,
                &received,
            );
            detail.push_str(" (the auth service is not asked by explain; shown as admitted)");
            steps.insert(
                at,
                StepReport {
                    step: StepName::Auth,
                    result: "described",
                    detail,
                },
            );
        }
    }
    // Rate limits are listed after auth, where the chain counts them.
    if let Some(r) = &route {
        if matches!(decided, Step::Next | Step::Answer { .. }) {
            let mut windows = r
                .policy
                .rate_limits
                .as_ref()
                .map_or_else(Vec::new, |l| l.describe());
            if let Some(g) = &gw.policy.rate_limits {
                windows.extend(
                    g.describe()
                        .into_iter()
                        .map(|w| format!("{w} (every route)")),
                );
            }
            if let Some(c) = ctx
                .identity
                .as_ref()
                .and_then(|i| i.consumer.as_ref())
                .and_then(|c| c.rate_limits.as_ref().map(|l| (c.name.clone(), l)))
            {
                windows.extend(
                    c.1.describe()
                        .into_iter()
                        .map(|w| format!("{w} (consumer {})", c.0)),
                );
            }
            let at = steps
                .iter()
                .position(|s| matches!(s.step, StepName::Validate | StepName::Answer))
                .unwrap_or(steps.len());
            steps.insert(
                at,
                StepReport {
                    step: StepName::RateLimit,
                    result: "described",
                    detail: if windows.is_empty() {
                        "no rate limits".into()
                    } else {
                        format!(
                            "every window must admit (not counted by explain): {}",
                            windows.join("; ")
                        )
                    },
                },
            );
        }
    }

    let outcome = match &decided {
        Step::Reject(r) => Outcome::Refuse {
            route: route_name.clone(),
            status: r.status.as_u16(),
            error: r.message.to_string(),
        },
        Step::Answer { status, .. } => Outcome::Answer {
            route: route_name.clone(),
            status: status.as_u16(),
        },
        Step::Next => match route
            .as_deref()
            .and_then(Route::proxy)
            .map(|a| (a, &a.upstream))
        {
            Some((_, group)) => Outcome::Proxy {
                route: route_name.clone().unwrap_or_default(),
                group: group.name.to_string(),
            },
            None => Outcome::Refuse {
                route: route_name.clone(),
                status: 404,
                error: "no route".into(),
            },
        },
    };

    let path = req.uri.path().to_string();
    let other_routes = candidates(gw, route.as_deref(), host.as_deref(), &path, &req);

    let mut upstream = None;
    if let (Step::Next, Some((action, group))) = (
        &decided,
        route
            .as_deref()
            .and_then(Route::proxy)
            .map(|a| (a, &a.upstream)),
    ) {
        let mut up = req.clone();
        forward::strip_hop_by_hop_request(&mut up);
        let down = forward::Downstream {
            req: &req,
            peer: Some(q.client),
            tls,
        };
        gw.rewrite_request(&down, &mut up, &mut ctx)
            .map_err(|e| format!("building the upstream request: {e}"))?;
        let retry_on = action.retry_on.describe();
        upstream = Some(UpstreamReport {
            group: group.describe(),
            connect_timeout: dur(action.connect_timeout),
            read_timeout: dur(action.read_timeout),
            retries: action.retries,
            retry_on,
            method: up.method.to_string(),
            path: up
                .uri
                .path_and_query()
                .map_or_else(|| up.uri.path().to_string(), |p| p.to_string()),
            headers: pairs(up.headers.iter()),
        });
    }

    // The cache decision, by the functions the proxy calls: the lookup
    // (`request_cache_filter`), then the store decision on the upstream's response
    // (`response_cache_filter`: RFC 9111, with §3.5 for requests with Authorization).
    let mut upstream_resp =
        ResponseHeader::build(StatusCode::OK, None).map_err(|e| e.to_string())?;
    for line in &q.upstream_headers {
        let (name, value) = header_line(line)?;
        upstream_resp
            .append_header(name, value)
            .map_err(|e| e.to_string())?;
    }
    let mut cache_verdict = None;
    let mut cache_reason = None;
    let cache = match (route.as_ref().and_then(|r| r.cache.as_ref()), &gw.cache) {
        (Some(_), _) if !matches!(decided, Step::Next) => {
            Some("not consulted: the gateway answers this request itself".to_string())
        }
        (Some(rc), Some(store)) => {
            let authenticated =
                ctx.identity.is_some() || req.headers.contains_key(http::header::AUTHORIZATION);
            let principal = ctx.identity.as_ref().and_then(|i| i.principal());
            Some(match rc.lookup(&req.method, authenticated, principal) {
                Lookup::Bypass(reason) => {
                    cache_verdict = Some("BYPASS");
                    cache_reason = Some(reason.to_string());
                    format!("not looked up: X-Cache: BYPASS, reason {reason}")
                }
                Lookup::Use(consumer) => {
                    let name = route.as_ref().map_or("", |r| r.name());
                    let key =
                        crate::cache::key(name, &req, forward::host(&req), consumer.as_deref());
                    let primary = key.primary_key_str().unwrap_or("").replace('\n', " | ");
                    let shared = crate::cache::shared_authorized(consumer.as_deref(), &req);
                    let stored = match rc.response_meta(
                        &upstream_resp,
                        store.max_object(),
                        shared,
                        store.targeted(),
                    ) {
                        RespCacheable::Cacheable(meta) => {
                            cache_verdict = Some("MISS");
                            let ttl = meta
                                .fresh_until()
                                .duration_since(meta.created())
                                .unwrap_or_default();
                            format!("stored for {}", dur(ttl))
                        }
                        RespCacheable::Uncacheable(why) => {
                            cache_verdict = Some("BYPASS");
                            let reason = crate::cache::bypass_reason(
                                pingora::cache::CachePhase::Disabled(why),
                            );
                            let text = format!("not stored: X-Cache: BYPASS, reason {reason}");
                            cache_reason = Some(reason);
                            text
                        }
                    };
                    let given = if q.upstream_headers.is_empty() {
                        "a 200 without caching headers".to_string()
                    } else {
                        format!("a 200 with {}", q.upstream_headers.join("; "))
                    };
                    format!(
                        "looked up; key [{primary}] plus the headers the response's Vary names; \
                         on a miss, {given} is {stored}{}",
                        if shared {
                            " (the request carries Authorization and the entry is shared: \
                             RFC 9111 §3.5 stores only public, s-maxage or must-revalidate answers)"
                        } else {
                            ""
                        }
                    )
                }
            })
        }
        _ => None,
    };

    let compression = route
        .as_ref()
        .and_then(|r| r.compression.as_ref())
        .map(|c| {
            let coding = c.negotiate(req.headers.get(http::header::ACCEPT_ENCODING));
            c.describe(coding)
        });

    let mut response_headers = Vec::new();
    if !matches!(decided, Step::Reject(_)) {
        let mut resp = ResponseHeader::build(StatusCode::OK, None).map_err(|e| e.to_string())?;
        match &decided {
            // The gateway's own answers carry their headers and the request id only
            // (`error::respond`), not the proxied responses' edits.
            Step::Answer { headers, .. } => {
                for (n, v) in headers {
                    let _ = resp.append_header(n.clone(), v.clone());
                }
                let (name, id) = ctx.client.request_id.pair();
                let _ = resp.insert_header(name, id);
            }
            _ => {
                gw.decorate_response(&original, false, &mut resp, &mut ctx)
                    .map_err(|e| e.to_string())?;
                for (n, v) in &ctx.reply.headers {
                    let _ = resp.append_header(n.clone(), v.clone());
                }
            }
        }
        response_headers = pairs(resp.headers.iter());
        if route.as_ref().is_some_and(|r| r.cache.is_some()) {
            response_headers.push(("x-cache".into(), "HIT | MISS | BYPASS | STALE".into()));
        }
        if route
            .as_ref()
            .is_some_and(|r| r.policy.rate_limits.is_some())
        {
            notes.push(
                "responses also carry RateLimit-Limit, RateLimit-Remaining and RateLimit-Reset"
                    .into(),
            );
        }
    }
    if route
        .as_ref()
        .is_some_and(|r| matches!(r.action, RouteAction::Aggregate(_)))
    {
        notes.push("aggregate parts are listed, not called".into());
    }
    if let Some(s) = &ctx.reply.shadow_refusal {
        notes.push(format!(
            "shadow mode: would have refused ({s}); counted and logged, not enforced"
        ));
    }
    if gw.policy.jwt_providers.iter().any(|p| p.has_jwks_url()) {
        notes.push(
            "keys from a JWKS URL are not fetched by explain: tokens signed with them show as \
             unknown keys"
                .into(),
        );
    }

    let normalized = req
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .filter(|t| *t != received);
    Ok(Explanation {
        request: RequestFacts {
            method: req.method.to_string(),
            target: received,
            normalized,
            host,
            client_ip: ctx.client.ip.map(|ip| ip.to_string()),
            listener: listener.map(|(a, _)| a),
            protocol: if q.http3 { "HTTP/3" } else { "HTTP/1.1" },
        },
        outcome,
        steps,
        other_routes,
        upstream,
        cache,
        cache_verdict,
        cache_reason,
        compression,
        response_headers,
        notes,
    })
}

fn detail(
    gw: &Gateway,
    name: StepName,
    step: &Step,
    route: Option<&Route>,
    ctx: &Ctx,
    req: &RequestHeader,
    received: &str,
) -> String {
    let refused = match step {
        Step::Reject(r) => Some(format!("{} {}", r.status.as_u16(), r.message)),
        _ => None,
    };
    let asked = crate::policy::Asked {
        req,
        client_ip: ctx.client.ip,
    };
    match name {
        StepName::Framing => refused
            .unwrap_or_else(|| format!("{} header lines; framing unambiguous", req.headers.len())),
        StepName::Normalize => refused.unwrap_or_else(|| {
            let now = req.uri.path_and_query().map_or("", |p| p.as_str());
            if now == received {
                "already canonical".into()
            } else {
                format!("{received} becomes {now}")
            }
        }),
        StepName::GlobalIp => crate::policy::ip::explain(&gw.policy.ip, &asked, step),
        StepName::Route => match (route, refused) {
            (Some(r), None) => format!("`{}` matches: {}", r.name(), r.describe_match()),
            (Some(r), Some(why)) => format!("`{}`: {why}", r.name()),
            (None, why) => why.unwrap_or_else(|| "no route".into()),
        },
        StepName::Check(check) => route
            .and_then(|r| r.policy.checks.iter().find(|c| c.name() == check))
            .map_or_else(String::new, |c| c.explain(&asked, step)),
        StepName::Auth => {
            let Some(r) = route else { return String::new() };
            let auth = &r.policy.auth;
            if auth.is_public() {
                return "public route".into();
            }
            let methods: Vec<String> = auth
                .methods
                .iter()
                .map(|m| match m {
                    AuthMethod::Jwt(p) => format!("jwt:{}", p.name),
                    AuthMethod::ApiKey => "api_key".into(),
                    AuthMethod::External(s) => format!("{}:{}", s.kind_name(), s.name),
                })
                .collect();
            let mut s = format!("accepts {}", methods.join(" or "));
            if !auth.roles.is_empty() {
                let _ = write!(s, "; needs a role of {}", auth.roles.join(", "));
            }
            match (refused, &ctx.identity) {
                (Some(why), _) => format!("{s}: {why}"),
                (None, Some(i)) => {
                    let who = i
                        .consumer
                        .as_ref()
                        .map(|c| format!("consumer {}", c.name))
                        .or(i.subject.as_ref().map(|s| format!("subject {s}")))
                        .unwrap_or_else(|| "caller".into());
                    format!(
                        "{s}: authenticated as {who}, roles [{}]",
                        i.roles.join(", ")
                    )
                }
                (None, None) => s,
            }
        }
        StepName::RateLimit => String::new(),
        StepName::Validate => match (
            route.and_then(|r| r.policy.validator.as_ref()),
            ctx.body.operation,
        ) {
            (Some(v), Some(m)) => {
                let body = if v.checks_body(m) {
                    "; its JSON body is checked once read"
                } else {
                    ""
                };
                format!("matches {}{body}", v.describe(m))
            }
            _ => refused.unwrap_or_default(),
        },
        StepName::Answer => match (route.map(|r| &r.action), step) {
            (Some(RouteAction::Proxy(p)), Step::Next) => match &p.transcode {
                Some(t) => format!("transcoded to gRPC ({})", t.describe().join(", ")),
                None => "proxied".into(),
            },
            (Some(RouteAction::Respond(d)), _) => {
                format!(
                    "direct response {} ({} bytes)",
                    d.status.as_u16(),
                    d.body.len()
                )
            }
            (Some(RouteAction::Aggregate(a)), _) => {
                let parts: Vec<String> = a
                    .parts
                    .iter()
                    .map(|p| format!("{} from {}", p.name, p.describe()))
                    .collect();
                format!("aggregate of {}", parts.join(", "))
            }
            _ => refused.unwrap_or_default(),
        },
    }
}

/// The routes that do not take this request, nearest first: fewest reasons, then most
/// specific. A route that matches as well as the chosen one says why it loses.
fn candidates(
    gw: &Gateway,
    chosen: Option<&Route>,
    host: Option<&str>,
    path: &str,
    req: &RequestHeader,
) -> Vec<Candidate> {
    let mut out: Vec<(usize, usize, Candidate)> = gw
        .routes
        .routes()
        .iter()
        .filter(|r| chosen.is_none_or(|c| c.name() != r.name()))
        .map(|r| {
            let mut why = r.mismatches(host, path, &req.method, &req.headers);
            if why.is_empty() {
                if let Some(c) = chosen {
                    why.push(format!(
                        "matches too, but `{}` wins: {}",
                        c.name(),
                        c.precedence_over(r, host)
                    ));
                }
            }
            (
                why.len(),
                r.order,
                Candidate {
                    route: r.name().to_string(),
                    matches: r.describe_match(),
                    why_not: why,
                },
            )
        })
        .collect();
    out.sort_by_key(|(n, order, _)| (*n, *order));
    out.into_iter().take(5).map(|(_, _, c)| c).collect()
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.request;
        writeln!(
            f,
            "{} {}{} (host {}, client {}, listener {})",
            r.method,
            r.target,
            if r.protocol == "HTTP/3" {
                " over HTTP/3"
            } else {
                ""
            },
            r.host.as_deref().unwrap_or("none"),
            r.client_ip.as_deref().unwrap_or("unknown"),
            r.listener.as_deref().unwrap_or("none")
        )?;
        if let Some(n) = &r.normalized {
            writeln!(f, "  normalized to {n}")?;
        }
        match &self.outcome {
            Outcome::Proxy { route, group } => {
                writeln!(f, "=> route `{route}`, proxied to upstream group `{group}`")?
            }
            Outcome::Answer { route, status } => writeln!(
                f,
                "=> answered {status} by the gateway{}",
                route
                    .as_ref()
                    .map_or(String::new(), |r| format!(" (route `{r}`)"))
            )?,
            Outcome::Refuse {
                route,
                status,
                error,
            } => writeln!(
                f,
                "=> refused {status} {{\"error\": \"{error}\"}}{}",
                route
                    .as_ref()
                    .map_or(String::new(), |r| format!(" (route `{r}`)"))
            )?,
        }
        writeln!(f, "\nsteps:")?;
        // As wide as the longest step name: a route check names its own step.
        let width = self
            .steps
            .iter()
            .map(|s| s.step.as_str().len())
            .max()
            .unwrap_or(0);
        for s in &self.steps {
            writeln!(
                f,
                "  {:<width$} {:<9} {}",
                s.step.as_str(),
                s.result,
                s.detail
            )?;
        }
        if !self.other_routes.is_empty() {
            writeln!(f, "\nother routes:")?;
            for c in &self.other_routes {
                writeln!(
                    f,
                    "  `{}` ({}): {}",
                    c.route,
                    c.matches,
                    c.why_not.join("; ")
                )?;
            }
        }
        if let Some(u) = &self.upstream {
            let g = &u.group;
            writeln!(
                f,
                "\nupstream group `{}`: {}",
                g["name"].as_str().unwrap_or(""),
                g["policy"].as_str().unwrap_or("")
            )?;
            if let Some(t) = g["targets"].as_array() {
                for t in t {
                    writeln!(
                        f,
                        "  target {} weight {}",
                        t["address"].as_str().unwrap_or(""),
                        t["weight"]
                    )?;
                }
            }
            for key in ["health_check", "circuit_breaker", "tls"] {
                if let Some(v) = g[key].as_str() {
                    writeln!(f, "  {key}: {v}")?;
                }
            }
            writeln!(
                f,
                "  connect timeout {}, read timeout {}, {} retries on {}",
                u.connect_timeout, u.read_timeout, u.retries, u.retry_on
            )?;
            writeln!(f, "  sends: {} {}", u.method, u.path)?;
            for (n, v) in &u.headers {
                writeln!(f, "    {n}: {v}")?;
            }
        }
        if let Some(c) = &self.cache {
            writeln!(f, "\ncache: {c}")?;
        }
        if let Some(c) = &self.compression {
            writeln!(f, "\ncompression: {c}")?;
        }
        if !self.response_headers.is_empty() {
            writeln!(f, "\nresponse headers added:")?;
            for (n, v) in &self.response_headers {
                writeln!(f, "  {n}: {v}")?;
            }
        }
        for n in &self.notes {
            writeln!(f, "\nnote: {n}")?;
        }
        Ok(())
    }
}
