//! CORS per route: preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
//! are answered at the gateway, and allowed origins get the CORS response headers on actual
//! requests. `*` is never combined with credentials (refused at config validation), and
//! `Vary: Origin` is always sent when the answer depends on the origin.

use super::{Asked, PolicyContext, RouteCheck, Step};
use crate::config::file::{CorsSection, RouteSection};
use crate::config::types::{Header, MethodName};
use crate::config::{FromConfig, Problem};
use crate::error::Reject;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};

/// A compiled `[routes.cors]`.
#[derive(Debug)]
pub(crate) struct CorsPolicy {
    any_origin: bool,
    origins: Vec<HeaderValue>,
    methods: Vec<Method>,
    allow_methods: HeaderValue,
    /// Lower-case header names allowed in requests.
    headers: Vec<HeaderName>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

/// What a request means to CORS.
#[derive(Debug)]
pub(crate) enum CorsOutcome {
    /// A preflight the gateway answers itself (204) with these headers.
    Preflight(Vec<(HeaderName, HeaderValue)>),
    /// An actual cross-origin request: add these headers to the response.
    Actual(Vec<(HeaderName, HeaderValue)>),
}

const VARY_ORIGIN: HeaderValue = HeaderValue::from_static("Origin");

/// A route's CORS: the policy of its `[routes.cors]`, or none (then the step says so in
/// `tollgate explain` and does nothing).
pub(crate) struct RouteCors(Option<CorsPolicy>);

impl FromConfig<PolicyContext<'_>> for RouteCors {
    type Section = RouteSection;

    /// `[routes.cors]`, problems at the field under `at.cors`.
    fn from_config(
        at: &str,
        r: &RouteSection,
        _cx: &PolicyContext<'_>,
        problems: &mut Vec<Problem>,
    ) -> Option<RouteCors> {
        match &r.cors {
            None => Some(RouteCors(None)),
            Some(c) => CorsPolicy::from_section(&format!("{at}.cors"), c, problems)
                .map(|p| RouteCors(Some(p))),
        }
    }
}

impl RouteCheck for RouteCors {
    fn name(&self) -> &'static str {
        "cors"
    }

    /// Preflights carry no credentials, so they are answered before authentication.
    fn check(&self, asked: &Asked<'_>, headers: &mut Vec<(HeaderName, HeaderValue)>) -> Step {
        let Some(cors) = &self.0 else {
            return Step::Next;
        };
        match cors.evaluate(&asked.req.method, &asked.req.headers) {
            Ok(CorsOutcome::Actual(h)) => {
                headers.extend(h);
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

    /// A refusal before this check ran (an IP rule) still carries the CORS headers of an
    /// allowed origin, with `Vary: Origin`: without them a browser app reads a 401 as a
    /// CORS failure and cannot send its user to log in.
    fn own_answer(&self, asked: &Asked<'_>, already: &mut Vec<(HeaderName, HeaderValue)>) {
        let Some(cors) = &self.0 else {
            return;
        };
        let said = already
            .iter()
            .any(|(n, v)| n == header::VARY && v.as_bytes().eq_ignore_ascii_case(b"origin"));
        // A preflight (answered or refused) needs nothing more.
        if !said {
            if let Ok(CorsOutcome::Actual(h)) = cors.evaluate(&asked.req.method, &asked.req.headers)
            {
                already.extend(h);
            }
        }
    }

    fn explain(&self, asked: &Asked<'_>, decided: &Step) -> String {
        if self.0.is_none() {
            return "no CORS policy".into();
        }
        match decided {
            Step::Answer { .. } => "a preflight: answered 204 by the gateway".into(),
            Step::Reject(r) => format!("{} {}", r.status.as_u16(), r.message),
            Step::Next if !asked.req.headers.contains_key(header::ORIGIN) => {
                "not a cross-origin request (no Origin): Vary: Origin added".into()
            }
            Step::Next => "cross-origin request: CORS headers added".into(),
        }
    }
}

impl CorsPolicy {
    /// `[routes.cors]`, problems at the field under `at` (`routes[N].cors`).
    fn from_section(at: &str, c: &CorsSection, problems: &mut Vec<Problem>) -> Option<CorsPolicy> {
        let CorsSection {
            allow_origins,
            allow_methods,
            allow_headers,
            expose_headers,
            allow_credentials,
            max_age,
        } = c;
        let before = problems.len();
        if let Some(m) = max_age {
            crate::config::bounds::CORS_MAX_AGE.check(&format!("{at}.max_age"), *m, problems);
        }
        let built = Self::new(
            allow_origins,
            allow_methods,
            allow_headers,
            expose_headers,
            *allow_credentials,
            max_age.map(|d| d.0),
        );
        match built {
            Ok(p) if problems.len() == before => Some(p),
            Ok(_) => None,
            Err((field, message)) => {
                let path = match field.as_str() {
                    "" => at.to_string(),
                    f => format!("{at}.{f}"),
                };
                problems.push(Problem::new(path, message));
                None
            }
        }
    }

    /// The policy, or the field (relative to the `cors` section, e.g. `allow_headers[0]`)
    /// that is wrong and why.
    pub(crate) fn new(
        origins: &[String],
        methods: &[MethodName],
        headers: &[Header],
        expose: &[Header],
        credentials: bool,
        max_age: Option<std::time::Duration>,
    ) -> Result<Self, (String, String)> {
        let any_origin = origins.iter().any(|o| o == "*");
        if any_origin && credentials {
            return Err((
                "allow_credentials".into(),
                "cannot be combined with allow_origins = [\"*\"]; list the origins".into(),
            ));
        }
        let at = |field: &str, i: usize| format!("{field}[{i}]");
        let origins = origins
            .iter()
            .enumerate()
            .filter(|(_, o)| *o != "*")
            .map(|(i, o)| {
                HeaderValue::from_str(o.trim_end_matches('/'))
                    .map_err(|_| (at("allow_origins", i), format!("invalid origin {o:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let methods = methods
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.value()
                    .cloned()
                    .map_err(|e| (at("allow_methods", i), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let headers = headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                h.value()
                    .cloned()
                    .map_err(|e| (at("allow_headers", i), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (i, e) in expose.iter().enumerate() {
            e.value()
                .map_err(|why| (at("expose_headers", i), why.to_string()))?;
        }
        let join = |items: Vec<&str>| -> Result<Option<HeaderValue>, (String, String)> {
            if items.is_empty() {
                return Ok(None);
            }
            HeaderValue::from_str(&items.join(", "))
                .map(Some)
                .map_err(|e| (String::new(), e.to_string()))
        };
        Ok(CorsPolicy {
            any_origin,
            origins,
            allow_methods: join(methods.iter().map(Method::as_str).collect())?
                .unwrap_or(HeaderValue::from_static("GET, HEAD, POST")),
            methods,
            allow_headers: join(headers.iter().map(HeaderName::as_str).collect())?,
            headers,
            expose_headers: join(expose.iter().map(Header::text).collect())?,
            credentials,
            max_age: max_age.map(|d| HeaderValue::from(d.as_secs())),
        })
    }

    fn allowed_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self
            .origins
            .iter()
            .any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
        {
            Some(origin.clone())
        } else if self.any_origin {
            Some(HeaderValue::from_static("*"))
        } else {
            None
        }
    }

    fn common(&self, allow_origin: HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
        let mut h = vec![(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin)];
        if self.credentials {
            h.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        h.push((header::VARY, VARY_ORIGIN));
        h
    }

    /// Classify a request; a refused preflight is a 403.
    pub(crate) fn evaluate(
        &self,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<CorsOutcome, Reject> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            // Not cross-origin, but a shared cache must not hand this answer (without
            // `Access-Control-Allow-Origin`) to a cross-origin request: `Vary: Origin`.
            return Ok(CorsOutcome::Actual(vec![(header::VARY, VARY_ORIGIN)]));
        };
        let refused = || Reject::new(StatusCode::FORBIDDEN, "CORS request not allowed");
        let preflight = *method == Method::OPTIONS
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let allow_origin = self.allowed_origin(origin);
        if !preflight {
            return Ok(match allow_origin {
                Some(o) => {
                    let mut h = self.common(o);
                    if let Some(e) = &self.expose_headers {
                        h.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone()));
                    }
                    CorsOutcome::Actual(h)
                }
                // Not allowed: no CORS headers, the browser withholds the response.
                None => CorsOutcome::Actual(vec![(header::VARY, VARY_ORIGIN)]),
            });
        }
        let allow_origin = allow_origin.ok_or_else(refused)?;
        let requested = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .ok_or_else(refused)?;
        if !self.methods.contains(&requested) {
            return Err(refused());
        }
        for v in headers.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            let list = v.to_str().map_err(|_| refused())?;
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if !self
                    .headers
                    .iter()
                    .any(|h| h.as_str().eq_ignore_ascii_case(name))
                {
                    return Err(refused());
                }
            }
        }
        let mut h = self.common(allow_origin);
        h.push((
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.allow_methods.clone(),
        ));
        if let Some(a) = &self.allow_headers {
            h.push((header::ACCESS_CONTROL_ALLOW_HEADERS, a.clone()));
        }
        if let Some(m) = &self.max_age {
            h.push((header::ACCESS_CONTROL_MAX_AGE, m.clone()));
        }
        h.push((
            header::VARY,
            HeaderValue::from_static(
                "Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        ));
        Ok(CorsOutcome::Preflight(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], credentials: bool) -> Result<CorsPolicy, String> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        CorsPolicy::new(
            &s(origins),
            &[MethodName::new("GET"), MethodName::new("PUT")],
            &[Header::new("X-Token")],
            &[Header::new("X-Total")],
            credentials,
            Some(std::time::Duration::from_secs(600)),
        )
        .map_err(|(_, message)| message)
    }

    fn req(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn star_with_credentials_is_refused() {
        assert!(policy(&["*"], true).is_err());
        assert!(policy(&["*"], false).is_ok());
    }

    #[test]
    fn preflight_table() {
        let p = policy(&["https://app.example"], true).unwrap();
        let o = ("origin", "https://app.example");
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<u16>);
        let cases: &[Case] = &[
            (&[o, ("access-control-request-method", "PUT")], None),
            (
                &[
                    o,
                    ("access-control-request-method", "PUT"),
                    ("access-control-request-headers", "x-token"),
                ],
                None,
            ),
            (&[o, ("access-control-request-method", "DELETE")], Some(403)),
            (
                &[
                    o,
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "x-other"),
                ],
                Some(403),
            ),
            (
                &[
                    ("origin", "https://evil.example"),
                    ("access-control-request-method", "GET"),
                ],
                Some(403),
            ),
        ];
        for (headers, want) in cases {
            let got = p.evaluate(&Method::OPTIONS, &req(headers));
            assert_eq!(
                got.as_ref().err().map(|r| r.status.as_u16()),
                *want,
                "{headers:?}"
            );
            if let Ok(CorsOutcome::Preflight(h)) = got {
                assert!(h.contains(&(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("https://app.example")
                )));
                assert!(h.contains(&(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true")
                )));
            }
        }
    }

    #[test]
    fn actual_requests() {
        let p = policy(&["*"], false).unwrap();
        match p
            .evaluate(&Method::GET, &req(&[("origin", "https://x.example")]))
            .unwrap()
        {
            CorsOutcome::Actual(h) => {
                assert!(h.contains(&(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*")
                )));
                assert!(!h
                    .iter()
                    .any(|(k, _)| k == header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
            }
            other => panic!("{other:?}"),
        }
        match p.evaluate(&Method::GET, &HeaderMap::new()).unwrap() {
            CorsOutcome::Actual(h) => assert_eq!(h, vec![(header::VARY, VARY_ORIGIN)]),
            other => panic!("{other:?}"),
        }
    }
}
