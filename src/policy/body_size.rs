//! A route's `max_body_size`: a request that announces a larger body (`Content-Length`) is
//! refused with 413 before anyone verifies who sends it; a body without a length is
//! counted while it streams (the gateway's `request_body` hook).

use super::{Asked, PolicyContext, RouteCheck, Step};
use crate::config::file::RouteSection;
use crate::config::{bounds, FromConfig, Problem};
use crate::error::Reject;
use crate::forward;
use http::{HeaderName, HeaderValue, StatusCode};

/// The largest request body a route takes.
pub(crate) struct BodySize {
    /// In bytes: the route's `max_body_size`, else `limits.max_body_size`.
    pub max: u64,
}

impl FromConfig<PolicyContext<'_>> for BodySize {
    type Section = RouteSection;

    fn from_config(
        at: &str,
        r: &RouteSection,
        cx: &PolicyContext<'_>,
        problems: &mut Vec<Problem>,
    ) -> Option<Self> {
        if let Some(size) = r.max_body_size {
            bounds::MAX_BODY_SIZE.check(&format!("{at}.max_body_size"), size, problems);
        }
        Some(BodySize {
            max: r.max_body_size.map_or(cx.default_max_body, |s| s.0),
        })
    }
}

impl RouteCheck for BodySize {
    fn name(&self) -> &'static str {
        "body_size"
    }

    fn check(&self, asked: &Asked<'_>, _headers: &mut Vec<(HeaderName, HeaderValue)>) -> Step {
        if forward::content_length(asked.req).is_some_and(|n| n > self.max) {
            Step::Reject(Reject::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
            ))
        } else {
            Step::Next
        }
    }

    fn explain(&self, asked: &Asked<'_>, decided: &Step) -> String {
        let max = self.max;
        match decided {
            Step::Reject(r) => format!("{} {}", r.status.as_u16(), r.message),
            _ => match forward::content_length(asked.req) {
                Some(n) => format!("Content-Length {n} within {max} bytes"),
                None => format!("no Content-Length; a body past {max} bytes is refused (413)"),
            },
        }
    }
}
