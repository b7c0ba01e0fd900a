//! A route's `allow_content_types`: a request that carries a body must say it is one of the
//! media types the route takes, or it is refused with 415 before anyone verifies who sends
//! it (an upstream parsing an unexpected format is a classic injection path). A request
//! without a body passes; so does every request of a route without the key.

use super::{Asked, PolicyContext, RouteCheck, Step};
use crate::config::file::RouteSection;
use crate::config::{FromConfig, Problem};
use crate::error::Reject;
use http::{HeaderName, HeaderValue, StatusCode};

/// The media types a route takes, lower case: `type/subtype`, or `type/*` for any subtype.
pub(crate) struct ContentTypes(Vec<String>);

impl FromConfig<PolicyContext<'_>> for ContentTypes {
    type Section = RouteSection;

    fn from_config(
        at: &str,
        r: &RouteSection,
        _cx: &PolicyContext<'_>,
        problems: &mut Vec<Problem>,
    ) -> Option<Self> {
        Self::of(at, &r.allow_content_types, problems)
    }
}

impl ContentTypes {
    /// The route's list, each entry checked; `None` for an empty list.
    fn of(at: &str, list: &[String], problems: &mut Vec<Problem>) -> Option<Self> {
        if list.is_empty() {
            return None;
        }
        let before = problems.len();
        let mut types = Vec::with_capacity(list.len());
        for (i, t) in list.iter().enumerate() {
            let t = t.trim().to_ascii_lowercase();
            let valid = t.split_once('/').is_some_and(|(ty, sub)| {
                let token = |s: &str| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
                };
                token(ty) && (sub == "*" || token(sub))
            });
            if !valid {
                problems.push(Problem::new(
                    format!("{at}.allow_content_types[{i}]"),
                    format!(
                        "{t:?} is not a media type; write e.g. \"application/json\" or \"text/*\""
                    ),
                ));
            }
            types.push(t);
        }
        (problems.len() == before).then_some(ContentTypes(types))
    }

    /// Whether the media type of `value` (parameters ignored, any case) is one the route takes.
    fn takes(&self, value: &HeaderValue) -> bool {
        let Ok(text) = value.to_str() else {
            return false;
        };
        let media = text.split(';').next().unwrap_or("").trim();
        self.0.iter().any(|t| match t.strip_suffix("/*") {
            Some(ty) => media
                .split_once('/')
                .is_some_and(|(m, _)| m.eq_ignore_ascii_case(ty)),
            None => media.eq_ignore_ascii_case(t),
        })
    }
}

/// Whether the request carries a body: a `Content-Length` other than 0, or any
/// `Transfer-Encoding` (framing was checked before routing).
fn has_body(asked: &Asked<'_>) -> bool {
    let h = &asked.req.headers;
    h.contains_key(http::header::TRANSFER_ENCODING)
        || crate::forward::content_length(asked.req).is_some_and(|n| n > 0)
}

impl RouteCheck for ContentTypes {
    fn name(&self) -> &'static str {
        "content_type"
    }

    fn check(&self, asked: &Asked<'_>, _headers: &mut Vec<(HeaderName, HeaderValue)>) -> Step {
        if !has_body(asked) {
            return Step::Next;
        }
        match asked.req.headers.get(http::header::CONTENT_TYPE) {
            Some(v) if self.takes(v) => Step::Next,
            _ => Step::Reject(Reject::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported media type",
            )),
        }
    }

    fn explain(&self, asked: &Asked<'_>, decided: &Step) -> String {
        let list = self.0.join(", ");
        match decided {
            Step::Reject(r) => format!("{} {} (takes {list})", r.status.as_u16(), r.message),
            _ if !has_body(asked) => format!("no body (takes {list})"),
            _ => format!("a media type of {list}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use pingora::http::RequestHeader;

    /// The route's key as read from TOML, built.
    fn policy(types: &[&str]) -> (Option<ContentTypes>, Vec<Problem>) {
        let list: Vec<String> = types.iter().map(|t| format!("{t:?}")).collect();
        let text = format!(
            "name = \"r\"\nupstream = \"u\"\nallow_content_types = [{}]",
            list.join(", ")
        );
        let r: RouteSection = toml::from_str(&text).unwrap();
        let mut problems = Vec::new();
        let built = ContentTypes::of("routes[0]", &r.allow_content_types, &mut problems);
        (built, problems)
    }

    fn decide(p: &ContentTypes, headers: &[(&str, &str)]) -> Option<u16> {
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        for (k, v) in headers {
            req.insert_header(k.to_string(), *v).unwrap();
        }
        let asked = Asked {
            req: &req,
            client_ip: None,
        };
        match p.check(&asked, &mut Vec::new()) {
            Step::Reject(r) => Some(r.status.as_u16()),
            _ => None,
        }
    }

    #[test]
    fn bodies_of_other_media_types_are_refused_with_415() {
        let (p, problems) = policy(&["application/json", "text/*"]);
        assert!(problems.is_empty(), "{problems:?}");
        let p = p.unwrap();
        let json = [
            ("content-length", "2"),
            ("content-type", "Application/JSON; charset=utf-8"),
        ];
        assert_eq!(decide(&p, &json), None);
        assert_eq!(
            decide(&p, &[("content-length", "2"), ("content-type", "text/csv")]),
            None
        );
        let xml = [("content-length", "2"), ("content-type", "application/xml")];
        assert_eq!(decide(&p, &xml), Some(415));
        assert_eq!(
            decide(&p, &[("transfer-encoding", "chunked")]),
            Some(415),
            "no type"
        );
        assert_eq!(decide(&p, &[("content-length", "0")]), None, "no body");
        assert_eq!(decide(&p, &[]), None, "no body");
    }

    #[test]
    fn a_list_entry_that_is_no_media_type_is_a_problem_at_its_index() {
        let (p, problems) = policy(&["application/json", "json", "*/x"]);
        assert!(p.is_none());
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].allow_content_types[1]",
                "routes[0].allow_content_types[2]"
            ]
        );
    }

    #[test]
    fn a_route_without_the_key_has_no_check() {
        let (p, problems) = policy(&[]);
        assert!(p.is_none() && problems.is_empty());
    }
}
