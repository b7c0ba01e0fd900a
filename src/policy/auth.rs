//! Authentication and authorization for a route: which methods it accepts (JWT providers,
//! API keys), who the caller is, and whether the caller holds one of the required roles.
//! Verifying tokens is [`super::jwt`]'s job and looking up keys [`super::api_key`]'s; this
//! module only decides.

use super::api_key::{ApiKeys, Consumer};
// `bearer` lives in `external` (which this module builds on), so the two import one way;
// re-exported so `auth::bearer` stays a path.
pub(crate) use super::external::bearer;
use super::external::{AuthRequest, Decision, Denied, ExternalAuth, Verdict};
use super::jwt::JwtProvider;
use super::PolicyContext;
use crate::config::file::{AuthErrorPolicy, Credentials, RouteSection};
use crate::config::types::AuthRef;
use crate::config::{FromConfig, Problem};
use crate::error::Reject;
use http::header::WWW_AUTHENTICATE;
use http::{HeaderName, HeaderValue, StatusCode};
use std::sync::Arc;

pub(crate) enum AuthMethod {
    Jwt(Arc<JwtProvider>),
    ApiKey,
    /// Forward auth or token introspection: a service the gateway asks.
    External(Arc<ExternalAuth>),
}

/// A route's `auth` and `roles`.
#[derive(Default)]
pub(crate) struct RouteAuth {
    pub methods: Vec<AuthMethod>,
    /// Any one of these suffices; empty: any authenticated caller.
    pub roles: Vec<String>,
    /// Remove the verified credentials from the upstream request (`credentials = "strip"`).
    pub strip_credentials: bool,
}

impl FromConfig<PolicyContext<'_>> for RouteAuth {
    type Section = RouteSection;

    /// A route's `auth` methods (each a provider, service or API keys the file defines)
    /// and its `roles`.
    fn from_config(
        at: &str,
        r: &RouteSection,
        cx: &PolicyContext<'_>,
        problems: &mut Vec<Problem>,
    ) -> Option<RouteAuth> {
        let before = problems.len();
        let mut methods = Vec::with_capacity(r.auth.len());
        for (i, m) in r.auth.iter().enumerate() {
            let path = format!("{at}.auth[{i}]");
            match m {
                AuthRef::ApiKey => {
                    if !cx.has_consumers {
                        problems.push(Problem::new(
                            path,
                            "api_key needs at least one [consumers.NAME] with keys",
                        ));
                    }
                    methods.push(AuthMethod::ApiKey);
                }
                AuthRef::Jwt(provider) => {
                    if let Some(p) = cx.jwt.get(&path, provider, problems) {
                        methods.push(AuthMethod::Jwt(p));
                    }
                }
                AuthRef::Forward(name) => {
                    if let Some(p) = cx.forward.get(&path, name, problems) {
                        methods.push(AuthMethod::External(p));
                    }
                }
                AuthRef::Introspection(name) => {
                    if let Some(p) = cx.introspection.get(&path, name, problems) {
                        methods.push(AuthMethod::External(p));
                    }
                }
            }
        }
        if !r.roles.is_empty() && r.auth.is_empty() {
            problems.push(Problem::new(
                format!("{at}.roles"),
                "roles need auth methods on the route",
            ));
        }
        let strip_credentials = r.credentials == Credentials::Strip;
        if strip_credentials && r.auth.is_empty() {
            problems.push(Problem::new(
                format!("{at}.credentials"),
                "\"strip\" needs auth methods on the route: there are no verified credentials to strip",
            ));
        }
        (problems.len() == before).then(|| RouteAuth {
            methods,
            roles: r.roles.clone(),
            strip_credentials,
        })
    }
}

impl RouteAuth {
    pub(crate) fn is_public(&self) -> bool {
        self.methods.is_empty()
    }

    fn accepts_bearer(&self) -> bool {
        self.methods.iter().any(|m| matches!(m, AuthMethod::Jwt(_)))
    }

    /// Whether a service is asked (`tollgate explain` describes those instead).
    pub(crate) fn asks_a_service(&self) -> bool {
        self.methods
            .iter()
            .any(|m| matches!(m, AuthMethod::External(_)))
    }
}

/// Who the caller is.
#[derive(Default)]
pub(crate) struct Identity {
    pub consumer: Option<Arc<Consumer>>,
    /// The token's `sub`, for JWT callers.
    pub subject: Option<Arc<str>>,
    pub roles: Arc<[String]>,
    /// Identity headers to set upstream.
    pub headers: Arc<[(HeaderName, HeaderValue)]>,
}

impl Identity {
    /// Whom rate limits keyed by `consumer` count against: the API-key consumer's name, or
    /// the JWT subject.
    pub(crate) fn principal(&self) -> Option<&str> {
        self.consumer
            .as_ref()
            .map(|c| &*c.name)
            .or(self.subject.as_deref())
    }
}

/// Why a request was refused.
#[derive(Debug, Clone)]
pub(crate) enum AuthFailure {
    /// No credentials of an accepted kind (401, `invalid_request`).
    Missing,
    /// Credentials were presented and refused; the reason is a fixed label (401, `invalid_token`).
    Invalid(&'static str),
    /// Authenticated, but without a required role (403).
    Forbidden,
    /// An auth service refused, with the status and headers it chose.
    Denied(Arc<Denied>),
    /// An auth service could not answer, and it fails closed (503).
    Unavailable,
}

impl AuthFailure {
    /// The `auth_failures_total{reason}` label.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing_credentials",
            AuthFailure::Invalid(r) => r,
            AuthFailure::Forbidden => "missing_role",
            AuthFailure::Denied(d) => d.reason,
            AuthFailure::Unavailable => "auth_unavailable",
        }
    }

    /// The response: 401 with `WWW-Authenticate`, or 403.
    pub(crate) fn reject(&self, auth: &RouteAuth) -> Reject {
        let (status, message, challenge) = match self {
            AuthFailure::Missing => (
                StatusCode::UNAUTHORIZED,
                "missing_credentials",
                "Bearer error=\"invalid_request\"",
            ),
            AuthFailure::Invalid(reason) => (
                StatusCode::UNAUTHORIZED,
                *reason,
                "Bearer error=\"invalid_token\"",
            ),
            AuthFailure::Forbidden => return Reject::new(StatusCode::FORBIDDEN, "missing_role"),
            AuthFailure::Denied(d) => {
                let mut r = Reject::new(d.status, d.reason);
                r.headers = d.headers.clone();
                r.body = d.body.clone();
                return r;
            }
            AuthFailure::Unavailable => {
                return Reject::new(StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable")
            }
        };
        let mut r = Reject::new(status, message);
        let challenge = if auth.accepts_bearer() {
            challenge
        } else {
            "ApiKey"
        };
        r.headers
            .push((WWW_AUTHENTICATE, HeaderValue::from_static(challenge)));
        r
    }
}

/// Who is calling a route, by its auth methods. `Ok(None)`: the route is public. Roles are
/// checked apart ([`authorize`]), so each can run in shadow mode on its own.
pub(crate) async fn authenticate(
    auth: &RouteAuth,
    request: &AuthRequest<'_>,
    keys: &ApiKeys,
) -> Result<Option<Identity>, AuthFailure> {
    if auth.is_public() {
        return Ok(None);
    }
    identify(auth, request, keys).await.map(Some)
}

/// Whether `identity` holds one of the route's roles (any, when it names none).
pub(crate) fn authorize(auth: &RouteAuth, identity: &Identity) -> Result<(), AuthFailure> {
    if !auth.roles.is_empty() && !identity.roles.iter().any(|r| auth.roles.contains(r)) {
        return Err(AuthFailure::Forbidden);
    }
    Ok(())
}

async fn identify(
    auth: &RouteAuth,
    request: &AuthRequest<'_>,
    keys: &ApiKeys,
) -> Result<Identity, AuthFailure> {
    let headers = request.headers;
    let token = bearer(headers).filter(|_| auth.accepts_bearer());
    let key = keys
        .header
        .as_ref()
        .and_then(|h| headers.get(h))
        .filter(|_| auth.methods.iter().any(|m| matches!(m, AuthMethod::ApiKey)));
    let mut failure = None;
    if let Some(token) = token {
        for m in &auth.methods {
            let AuthMethod::Jwt(provider) = m else {
                continue;
            };
            match provider.verify(token).await {
                Ok(t) => {
                    return Ok(Identity {
                        consumer: None,
                        subject: t.subject,
                        roles: t.roles,
                        headers: t.headers,
                    })
                }
                Err(e) => {
                    failure.get_or_insert(AuthFailure::Invalid(e.reason()));
                }
            }
        }
    }
    if let Some(key) = key {
        match keys.lookup(key.as_bytes()) {
            Some(c) => {
                return Ok(Identity {
                    consumer: Some(c.clone()),
                    subject: None,
                    roles: c.roles.clone(),
                    headers: c.headers.clone(),
                })
            }
            None => {
                failure.get_or_insert(AuthFailure::Invalid("invalid_api_key"));
            }
        }
    }
    for m in &auth.methods {
        let AuthMethod::External(service) = m else {
            continue;
        };
        match service.decide(request).await {
            Verdict::Decided(Decision::Admit(a)) => {
                return Ok(Identity {
                    consumer: None,
                    subject: a.subject.as_deref().map(Into::into),
                    roles: a.roles.as_slice().into(),
                    headers: a.headers.as_slice().into(),
                })
            }
            Verdict::Decided(Decision::Deny(d)) => {
                failure.get_or_insert(AuthFailure::Denied(d));
            }
            Verdict::Unavailable if service.on_error == AuthErrorPolicy::Allow => {
                // Fails open: admitted without an identity (required roles still refuse).
                return Ok(Identity::default());
            }
            Verdict::Unavailable => {
                failure.get_or_insert(AuthFailure::Unavailable);
            }
            Verdict::NoCredentials => {}
        }
    }
    Err(failure.unwrap_or(AuthFailure::Missing))
}
