//! Authentication delegated to a service the gateway asks: forward auth (`[auth.forward.NAME]`,
//! Traefik's ForwardAuth, Envoy's ext_authz) and OAuth 2.0 token introspection (RFC 7662,
//! `[auth.introspection.NAME]`), with a decision cache.
//!
//! Each check is a subrequest through an upstream group, so the group's balancing, health
//! checks, breaker and TLS apply. A decision is cached under a SHA-256 of exactly what it
//! depends on: the copied headers (and the method and path when `decision_per_path`), or the
//! token. An admission lives `min(ttl, the token's exp, the answer's Cache-Control max-age)`;
//! a refusal `negative_ttl`; a failure is never cached. Concurrent requests for one key share
//! one subrequest (single flight). Purges on the admin listener drop one subject's decisions
//! or all of them.

use crate::config::file::{
    AuthErrorPolicy, DecisionCacheSection, ForwardAuthSection, IntrospectionSection,
};
use crate::config::fingerprint::{carry, Carried, Fingerprint};
use crate::config::types::Header;
use crate::config::{bounds, Problem};
use crate::upstream::UpstreamGroup;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora_memory_cache::MemoryCache;
use prometheus::IntCounterVec;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Largest answer read from an auth service.
const MAX_ANSWER: usize = 64 * 1024;

/// The bearer token of an `Authorization` header, if it carries one. Here rather than in the
/// `auth` module (which re-exports it) because `auth` builds on this one: both read the
/// token, and the imports run one way.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// What a check is built from: the client's request.
pub(crate) struct AuthRequest<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub host: Option<&'a str>,
    pub client_ip: Option<IpAddr>,
    pub request_id: &'a crate::error::RequestId,
}

/// An admission.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub subject: Option<String>,
    pub roles: Vec<String>,
    /// Identity headers for the upstream.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// A refusal, as the client gets it.
#[derive(Debug)]
pub(crate) struct Denied {
    pub status: StatusCode,
    /// The `error` of the gateway's JSON answer (`auth_denied`, `inactive_token`, ...).
    pub reason: &'static str,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The auth service's own body, where the configuration passes it on.
    pub body: Option<Bytes>,
}

#[derive(Debug, Clone)]
pub(crate) enum Decision {
    Admit(Arc<Admitted>),
    Deny(Arc<Denied>),
}

/// The answer to one request.
#[derive(Debug, Clone)]
pub(crate) enum Verdict {
    Decided(Decision),
    /// The service failed, timed out or answered something else: `on_error` applies.
    Unavailable,
    /// Nothing to check (introspection without a bearer token).
    NoCredentials,
}

enum Kind {
    Forward {
        method: Method,
        path: String,
        copy: Vec<HeaderName>,
        per_path: bool,
        /// The answer headers passed upstream: the listed identity headers, the subject
        /// header and the roles header.
        upstream_headers: Vec<HeaderName>,
        subject: Option<HeaderName>,
        roles: Option<HeaderName>,
        client: Vec<HeaderName>,
        pass_body: bool,
    },
    Introspect {
        path: String,
        basic: HeaderValue,
        audience: Option<String>,
        issuer: Option<String>,
        roles_claim: String,
        claims: Vec<(String, HeaderName)>,
    },
}

/// One auth service, compiled.
pub(crate) struct ExternalAuth {
    pub name: Arc<str>,
    kind: Kind,
    group: Arc<UpstreamGroup>,
    connector: Arc<Connector>,
    timeout: Duration,
    pub on_error: AuthErrorPolicy,
    cache: Option<Arc<DecisionCache>>,
    /// `auth_decisions_total{provider, result}` for `hit`, `miss`, `coalesced`, `error`,
    /// looked up once here rather than per request.
    counters: [prometheus::IntCounter; 4],
    /// What it was built from (section and secret file): an unchanged one keeps its
    /// decision cache across reloads.
    fingerprint: Fingerprint,
}

impl Carried for ExternalAuth {
    fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

struct Cached {
    decision: Decision,
    subject: Option<String>,
    at: Instant,
}

type Key = [u8; 32];

struct DecisionCache {
    entries: MemoryCache<Key, Arc<Cached>>,
    ttl: Duration,
    negative_ttl: Duration,
    /// Checks in progress: later requests for the key wait for the first one's answer.
    inflight: Mutex<HashMap<Key, Arc<tokio::sync::OnceCell<Verdict>>>>,
    /// Part of every key; a purge of everything moves it on.
    epoch: AtomicU64,
    /// Subjects purged, and when: their older decisions are not served.
    purged: Mutex<HashMap<String, Instant>>,
}

fn header_names(at: &str, names: &[Header], problems: &mut Vec<Problem>) -> Vec<HeaderName> {
    names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.get(&format!("{at}[{i}]"), problems).cloned())
        .collect()
}

fn header_name(at: &str, n: &Option<Header>, problems: &mut Vec<Problem>) -> Option<HeaderName> {
    n.as_ref()?.get(at, problems).cloned()
}

fn cache_of(
    at: &str,
    c: &Option<DecisionCacheSection>,
    problems: &mut Vec<Problem>,
) -> Option<DecisionCache> {
    let c = c.as_ref()?;
    bounds::DECISION_TTL.check(&format!("{at}.cache.ttl"), c.ttl, problems);
    bounds::DECISION_TTL.check(
        &format!("{at}.cache.negative_ttl"),
        c.negative_ttl,
        problems,
    );
    bounds::DECISION_MAX_ENTRIES.check(&format!("{at}.cache.max_entries"), c.max_entries, problems);
    Some(DecisionCache {
        entries: MemoryCache::new(c.max_entries.max(1)),
        ttl: c.ttl.0,
        negative_ttl: c.negative_ttl.0,
        inflight: Mutex::new(HashMap::new()),
        epoch: AtomicU64::new(0),
        purged: Mutex::new(HashMap::new()),
    })
}

fn path_of(at: &str, path: &str, problems: &mut Vec<Problem>) -> String {
    if !path.starts_with('/') || path.parse::<Uri>().is_err() {
        problems.push(Problem::new(
            format!("{at}.path"),
            format!("{path:?} is not a path; write it like \"/verify\""),
        ));
    }
    path.to_string()
}

/// The `result` label of `auth_decisions_total`, indexing [`ExternalAuth::counters`].
#[derive(Clone, Copy)]
enum Counted {
    Hit,
    Miss,
    Coalesced,
    Error,
}

fn counters(v: &IntCounterVec, name: &str) -> [prometheus::IntCounter; 4] {
    // In the order of `Counted`.
    ["hit", "miss", "coalesced", "error"].map(|r| v.with_label_values(&[name, r]))
}

/// The keys both sections have.
struct Shared<'a> {
    upstream: &'a str,
    timeout: &'a crate::config::file::HumanDuration,
    on_error: AuthErrorPolicy,
    cache: &'a Option<DecisionCacheSection>,
}

/// Named auth services of one kind.
pub(crate) type Services = crate::names::Named<ExternalAuth>;

/// What the assembler hands every auth service it builds.
pub(crate) struct ExternalContext<'a> {
    pub groups: &'a crate::upstream::Groups,
    pub connector: &'a Arc<Connector>,
    pub decisions: &'a IntCounterVec,
}

impl ExternalAuth {
    /// `[auth.forward.NAME]`. An unchanged section keeps `previous`'s decision cache.
    pub(crate) fn forward(
        name: &str,
        s: &ForwardAuthSection,
        cx: &ExternalContext<'_>,
        previous: Option<&Arc<ExternalAuth>>,
        problems: &mut Vec<Problem>,
    ) -> Option<Arc<ExternalAuth>> {
        let at = format!("auth.forward.{name}");
        let fingerprint = Fingerprint::of(s, []);
        let ForwardAuthSection {
            upstream,
            path,
            method,
            copy_headers,
            decision_per_path,
            identity_headers,
            subject_header,
            roles_header,
            client_headers,
            forward_denial_body,
            timeout,
            on_error,
            cache,
        } = s;
        let before = problems.len();
        let method = method
            .get(&format!("{at}.method"), problems)
            .cloned()
            .unwrap_or(Method::GET);
        let path = path_of(&at, path, problems);
        let subject = header_name(&format!("{at}.subject_header"), subject_header, problems);
        let roles = header_name(&format!("{at}.roles_header"), roles_header, problems);
        let mut upstream_headers = header_names(
            &format!("{at}.identity_headers"),
            identity_headers,
            problems,
        );
        upstream_headers.extend(subject.iter().chain(roles.iter()).cloned());
        let kind = Kind::Forward {
            method,
            path,
            copy: header_names(&format!("{at}.copy_headers"), copy_headers, problems),
            per_path: *decision_per_path,
            upstream_headers,
            subject,
            roles,
            client: header_names(&format!("{at}.client_headers"), client_headers, problems),
            pass_body: *forward_denial_body,
        };
        let shared = Shared {
            upstream,
            timeout,
            on_error: *on_error,
            cache,
        };
        Self::finish(
            name,
            kind,
            shared,
            (fingerprint, previous),
            cx,
            before,
            problems,
        )
    }

    /// `[auth.introspection.NAME]`.
    pub(crate) fn introspection(
        name: &str,
        s: &IntrospectionSection,
        cx: &ExternalContext<'_>,
        previous: Option<&Arc<ExternalAuth>>,
        problems: &mut Vec<Problem>,
    ) -> Option<Arc<ExternalAuth>> {
        let at = format!("auth.introspection.{name}");
        let fingerprint = Fingerprint::of(s, s.files());
        let IntrospectionSection {
            upstream,
            path,
            client_id,
            client_secret_env,
            client_secret_file,
            audience,
            issuer,
            roles_claim,
            claims,
            timeout,
            on_error,
            cache,
        } = s;
        let before = problems.len();
        let path = path_of(&at, path, problems);
        let secret = match (client_secret_env, client_secret_file) {
            (Some(var), None) => {
                std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))
            }
            (None, Some(file)) => std::fs::read_to_string(file)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| format!("cannot read {file}: {e}")),
            _ => Err("set exactly one of client_secret_env and client_secret_file".into()),
        };
        let secret = secret
            .map_err(|e| problems.push(Problem::new(format!("{at}.client_secret_env"), e)))
            .unwrap_or_default();
        if client_id.is_empty() || client_id.contains(':') {
            problems.push(Problem::new(
                format!("{at}.client_id"),
                "must be non-empty and without ':' (HTTP Basic)",
            ));
        }
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}"));
        let basic = HeaderValue::from_str(&format!("Basic {basic}"))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        let mut mapped = Vec::new();
        for (claim, header) in claims {
            if let Some(h) = header.get(&format!("{at}.claims.{claim}"), problems) {
                mapped.push((claim.clone(), h.clone()));
            }
        }
        let kind = Kind::Introspect {
            path,
            basic,
            audience: audience.clone(),
            issuer: issuer.clone(),
            roles_claim: roles_claim.clone(),
            claims: mapped,
        };
        let shared = Shared {
            upstream,
            timeout,
            on_error: *on_error,
            cache,
        };
        Self::finish(
            name,
            kind,
            shared,
            (fingerprint, previous),
            cx,
            before,
            problems,
        )
    }

    /// What both kinds share: the group, the timeout, the failure policy, the cache.
    fn finish(
        name: &str,
        kind: Kind,
        s: Shared<'_>,
        (fingerprint, previous): (Fingerprint, Option<&Arc<ExternalAuth>>),
        cx: &ExternalContext<'_>,
        before: usize,
        problems: &mut Vec<Problem>,
    ) -> Option<Arc<ExternalAuth>> {
        let at = &match kind {
            Kind::Forward { .. } => format!("auth.forward.{name}"),
            Kind::Introspect { .. } => format!("auth.introspection.{name}"),
        };
        let group = cx
            .groups
            .get(&format!("{at}.upstream"), s.upstream, problems);
        bounds::AUTH_TIMEOUT.check(&format!("{at}.timeout"), *s.timeout, problems);
        let cache = cache_of(at, s.cache, problems).map(Arc::new);
        // The group is always this generation's (its targets may have changed); the
        // decision cache is kept when nothing it was built from changed.
        let cache = match carry(previous, fingerprint) {
            Some(p) => p.cache.clone(),
            None => cache,
        };
        if problems.len() > before {
            return None;
        }
        Some(Arc::new(ExternalAuth {
            name: name.into(),
            kind,
            group: group?,
            connector: cx.connector.clone(),
            timeout: s.timeout.0,
            on_error: s.on_error,
            cache,
            counters: counters(cx.decisions, name),
            fingerprint,
        }))
    }

    /// Headers this service sets upstream: removed from every client request.
    pub(crate) fn mapped_headers(&self) -> Vec<HeaderName> {
        match &self.kind {
            Kind::Forward {
                upstream_headers, ..
            } => upstream_headers.clone(),
            Kind::Introspect { claims, .. } => claims.iter().map(|(_, h)| h.clone()).collect(),
        }
    }

    /// `forward` or `introspection`, for the route's auth step in words.
    pub(crate) fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Forward { .. } => "forward",
            Kind::Introspect { .. } => "introspection",
        }
    }

    fn count(&self, result: Counted) {
        self.counters[result as usize].inc();
    }

    /// Drop the cached decisions of `subject`, or all of them.
    pub(crate) fn purge(&self, subject: Option<&str>) {
        let Some(cache) = &self.cache else { return };
        match subject {
            None => {
                cache.epoch.fetch_add(1, Ordering::Relaxed);
            }
            Some(s) => {
                let mut purged = cache.purged.lock().unwrap_or_else(|p| p.into_inner());
                purged.insert(s.to_string(), Instant::now());
            }
        }
    }

    /// The decision for one request: from the cache, from a check in progress for the same
    /// inputs, or from a new check.
    pub(crate) async fn decide(&self, r: &AuthRequest<'_>) -> Verdict {
        let Some(key) = self.key(r) else {
            return Verdict::NoCredentials;
        };
        let Some(cache) = &self.cache else {
            self.count(Counted::Miss);
            return self.ask(r).await.0;
        };
        if let Some(d) = cache.get(&key) {
            self.count(Counted::Hit);
            return Verdict::Decided(d);
        }
        let (cell, first) = {
            let mut inflight = cache.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight.get(&key) {
                Some(c) => (c.clone(), false),
                None => {
                    let c = Arc::new(tokio::sync::OnceCell::new());
                    inflight.insert(key, c.clone());
                    (c, true)
                }
            }
        };
        self.count(if first {
            Counted::Miss
        } else {
            Counted::Coalesced
        });
        cell.get_or_init(|| async {
            let (verdict, ttl) = self.ask(r).await;
            if let (Verdict::Decided(d), Some(ttl)) = (&verdict, ttl) {
                cache.put(&key, d.clone(), ttl);
            }
            cache
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            verdict
        })
        .await
        .clone()
    }

    /// The cache key of a request: a digest of exactly what the decision depends on. `None`
    /// when there is nothing to check.
    fn key(&self, r: &AuthRequest<'_>) -> Option<Key> {
        let mut h = Sha256::new();
        h.update(self.name.as_bytes());
        h.update([0]);
        if let Some(c) = &self.cache {
            h.update(c.epoch.load(Ordering::Relaxed).to_le_bytes());
        }
        match &self.kind {
            Kind::Forward { copy, per_path, .. } => {
                for name in copy {
                    h.update(name.as_str().as_bytes());
                    for v in r.headers.get_all(name) {
                        h.update([0]);
                        h.update(v.as_bytes());
                    }
                    h.update([1]);
                }
                if *per_path {
                    h.update(r.method.as_str().as_bytes());
                    h.update([0]);
                    h.update(r.uri.path_and_query().map_or("", |p| p.as_str()).as_bytes());
                }
            }
            Kind::Introspect { .. } => h.update(bearer(r.headers)?.as_bytes()),
        }
        Some(h.finalize().into())
    }

    /// Ask the service: the verdict, and how long it may be cached.
    async fn ask(&self, r: &AuthRequest<'_>) -> (Verdict, Option<Duration>) {
        let (req, body) = match self.check_request(r) {
            Ok(x) => x,
            Err(e) => {
                log::warn!("auth service {}: cannot build the check: {e}", self.name);
                return (Verdict::Unavailable, None);
            }
        };
        let answer = crate::subrequest::call(
            &self.group,
            &self.connector,
            req,
            body,
            MAX_ANSWER,
            self.timeout,
        )
        .await;
        let (head, body) = match answer {
            Ok(a) => a,
            Err(e) => {
                self.count(Counted::Error);
                log::warn!("auth service {}: {e}", self.name);
                return (Verdict::Unavailable, None);
            }
        };
        let max_age = crate::cache::freshness::max_age_for_client(&head.headers);
        let cache = self.cache.as_ref();
        let cap = |ttl: Option<Duration>, exp: Option<u64>| -> Option<Duration> {
            let mut ttl = ttl?;
            if let Some(m) = max_age {
                ttl = ttl.min(m?);
            }
            if let Some(exp) = exp {
                ttl = ttl.min(until(exp)?);
            }
            (!ttl.is_zero()).then_some(ttl)
        };
        match &self.kind {
            Kind::Forward {
                upstream_headers,
                subject,
                roles,
                client,
                pass_body,
                ..
            } => {
                let status = head.status;
                if status.is_success() {
                    let get = |n: &HeaderName| {
                        head.headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let admitted = Admitted {
                        subject: subject.as_ref().and_then(get),
                        roles: roles
                            .as_ref()
                            .and_then(get)
                            .map(|r| {
                                r.split(',')
                                    .map(|s| s.trim().to_string())
                                    .filter(|s| !s.is_empty())
                                    .collect()
                            })
                            .unwrap_or_default(),
                        headers: upstream_headers
                            .iter()
                            .filter_map(|n| Some((n.clone(), head.headers.get(n)?.clone())))
                            .collect(),
                    };
                    let exp = bearer(r.headers).and_then(jwt_exp);
                    let ttl = cap(cache.map(|c| c.ttl), exp);
                    (Verdict::Decided(Decision::Admit(Arc::new(admitted))), ttl)
                } else if matches!(status.as_u16(), 401 | 403) || status.is_redirection() {
                    let mut headers: Vec<(HeaderName, HeaderValue)> = client
                        .iter()
                        .flat_map(|n| {
                            head.headers
                                .get_all(n)
                                .iter()
                                .map(|v| (n.clone(), v.clone()))
                                .collect::<Vec<_>>()
                        })
                        .collect();
                    let body = pass_body.then(|| {
                        if let Some(ct) = head.headers.get(http::header::CONTENT_TYPE) {
                            headers.push((http::header::CONTENT_TYPE, ct.clone()));
                        }
                        body.clone()
                    });
                    let denied = Denied {
                        status,
                        reason: match status.as_u16() {
                            401 => "unauthorized",
                            403 => "forbidden",
                            _ => "login_required",
                        },
                        headers,
                        body,
                    };
                    let ttl = cap(cache.map(|c| c.negative_ttl), None);
                    (Verdict::Decided(Decision::Deny(Arc::new(denied))), ttl)
                } else {
                    self.count(Counted::Error);
                    log::warn!("auth service {}: answered {status}", self.name);
                    (Verdict::Unavailable, None)
                }
            }
            Kind::Introspect {
                audience,
                issuer,
                roles_claim,
                claims,
                ..
            } => {
                if head.status != StatusCode::OK {
                    self.count(Counted::Error);
                    log::warn!("introspection {}: answered {}", self.name, head.status);
                    return (Verdict::Unavailable, None);
                }
                let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&body) else {
                    self.count(Counted::Error);
                    log::warn!("introspection {}: the answer is not JSON", self.name);
                    return (Verdict::Unavailable, None);
                };
                let exp = doc.get("exp").and_then(serde_json::Value::as_u64);
                let refuse = |reason: &'static str| {
                    let denied = Denied {
                        status: StatusCode::UNAUTHORIZED,
                        reason,
                        headers: vec![(
                            http::header::WWW_AUTHENTICATE,
                            HeaderValue::from_static("Bearer error=\"invalid_token\""),
                        )],
                        body: None,
                    };
                    (
                        Verdict::Decided(Decision::Deny(Arc::new(denied))),
                        cap(cache.map(|c| c.negative_ttl), None),
                    )
                };
                if doc.get("active") != Some(&serde_json::Value::Bool(true)) {
                    return refuse("inactive_token");
                }
                if exp.is_some_and(|e| until(e).is_none()) {
                    return refuse("token_expired");
                }
                if let Some(want) = audience {
                    let ok = match doc.get("aud") {
                        Some(serde_json::Value::String(a)) => a == want,
                        Some(serde_json::Value::Array(list)) => {
                            list.iter().any(|a| a.as_str() == Some(want))
                        }
                        _ => false,
                    };
                    if !ok {
                        return refuse("wrong_audience");
                    }
                }
                if let Some(want) = issuer {
                    if doc.get("iss").and_then(|i| i.as_str()) != Some(want.as_str()) {
                        return refuse("wrong_issuer");
                    }
                }
                let text = |v: &serde_json::Value| match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Array(a) => Some(
                        a.iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(" "),
                    ),
                    serde_json::Value::Null => None,
                    other => Some(other.to_string()),
                };
                let roles = match doc.get(roles_claim) {
                    Some(serde_json::Value::String(s)) => {
                        s.split_whitespace().map(str::to_string).collect()
                    }
                    Some(serde_json::Value::Array(a)) => a
                        .iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect(),
                    _ => Vec::new(),
                };
                let headers = claims
                    .iter()
                    .filter_map(|(claim, h)| {
                        let v = text(doc.get(claim)?)?;
                        Some((h.clone(), HeaderValue::from_str(&v).ok()?))
                    })
                    .collect();
                let admitted = Admitted {
                    subject: doc.get("sub").and_then(|s| s.as_str()).map(str::to_string),
                    roles,
                    headers,
                };
                (
                    Verdict::Decided(Decision::Admit(Arc::new(admitted))),
                    cap(cache.map(|c| c.ttl), exp),
                )
            }
        }
    }

    /// The check sent to the service.
    fn check_request(
        &self,
        r: &AuthRequest<'_>,
    ) -> Result<(RequestHeader, Option<Bytes>), Box<pingora::Error>> {
        let host = self.group.name.to_string();
        match &self.kind {
            Kind::Forward {
                method, path, copy, ..
            } => {
                let mut req = RequestHeader::build(method.clone(), path.as_bytes(), None)?;
                req.insert_header(http::header::HOST, host)?;
                for name in copy {
                    for v in r.headers.get_all(name) {
                        req.append_header(name.clone(), v.clone())?;
                    }
                }
                req.insert_header("x-forwarded-method", r.method.as_str())?;
                let uri = r.uri.path_and_query().map_or("/", |p| p.as_str());
                req.insert_header("x-forwarded-uri", uri)?;
                if let Some(h) = r.host {
                    req.insert_header("x-forwarded-host", h)?;
                }
                if let Some(ip) = r.client_ip {
                    req.insert_header("x-forwarded-for", ip.to_string())?;
                }
                req.insert_header(r.request_id.header, r.request_id.value.clone())?;
                if *method != Method::GET && *method != Method::HEAD {
                    req.insert_header(http::header::CONTENT_LENGTH, "0")?;
                }
                Ok((req, None))
            }
            Kind::Introspect { path, basic, .. } => {
                let token = bearer(r.headers).unwrap_or("");
                let body: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("token", token)
                    .append_pair("token_type_hint", "access_token")
                    .finish();
                let mut req = RequestHeader::build(Method::POST, path.as_bytes(), None)?;
                req.insert_header(http::header::HOST, host)?;
                req.insert_header(http::header::AUTHORIZATION, basic.clone())?;
                req.insert_header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )?;
                req.insert_header(http::header::ACCEPT, "application/json")?;
                req.insert_header(http::header::CONTENT_LENGTH, body.len())?;
                req.insert_header(r.request_id.header, r.request_id.value.clone())?;
                Ok((req, Some(Bytes::from(body))))
            }
        }
    }
}

impl DecisionCache {
    fn get(&self, key: &Key) -> Option<Decision> {
        let (hit, _) = self.entries.get(key);
        let hit = hit?;
        if let Some(s) = &hit.subject {
            let purged = self.purged.lock().unwrap_or_else(|p| p.into_inner());
            if purged.get(s).is_some_and(|at| *at >= hit.at) {
                return None;
            }
        }
        Some(hit.decision.clone())
    }

    fn put(&self, key: &Key, decision: Decision, ttl: Duration) {
        let subject = match &decision {
            Decision::Admit(a) => a.subject.clone(),
            Decision::Deny(_) => None,
        };
        let cached = Cached {
            decision,
            subject,
            at: Instant::now(),
        };
        self.entries.put(key, Arc::new(cached), Some(ttl));
    }
}

/// Time left until the Unix time `exp`; `None` when it has passed.
fn until(exp: u64) -> Option<Duration> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    Duration::from_secs(exp)
        .checked_sub(now)
        .filter(|d| !d.is_zero())
}

/// The `exp` of a bearer token that is a JWT, read without verifying it: it only shortens
/// how long the auth service's decision is kept, never lengthens it.
fn jwt_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_decides_how_long_a_decision_lives() {
        let mut h = HeaderMap::new();
        assert_eq!(crate::cache::freshness::max_age_for_client(&h), None);
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=30"),
        );
        assert_eq!(
            crate::cache::freshness::max_age_for_client(&h),
            Some(Some(Duration::from_secs(30)))
        );
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        assert_eq!(crate::cache::freshness::max_age_for_client(&h), Some(None));
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=0"),
        );
        assert_eq!(crate::cache::freshness::max_age_for_client(&h), Some(None));
    }

    #[test]
    fn jwt_exp_is_read_without_verification_and_past_exp_is_gone() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"a","exp":4102444800}"#);
        assert_eq!(jwt_exp(&format!("x.{payload}.y")), Some(4102444800));
        assert_eq!(jwt_exp("opaque-token"), None);
        assert!(until(1).is_none());
        assert!(until(4102444800).is_some());
    }
}
