//! Aggregation routes (backend-for-frontend): one client request fans out to several upstream
//! calls in parallel, and their JSON bodies are merged under named keys. A part that fails,
//! answers non-2xx or non-JSON, or outlives its timeout becomes `null` and is listed under
//! `errors`; the client always gets an answer (200 when any part succeeded, 502 when none did).
//!
//! Parts use the same upstream groups, target selection, health and breakers as proxied
//! routes, and Pingora's pooled HTTP connector. Identity headers and the request id travel to
//! every part.

use crate::config::FromConfig;
use crate::upstream::UpstreamGroup;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::connectors::http::Connector;
use pingora::prelude::*;
use regex::Regex;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// Largest part body read.
const MAX_PART_BODY: usize = 4 * 1024 * 1024;

/// One upstream call of an aggregate.
pub(crate) struct Part {
    pub name: String,
    pub upstream: Arc<UpstreamGroup>,
    /// Path and query, with `$1` / `${name}` expanded from the route's `capture`.
    pub path: String,
    pub timeout: Duration,
}

impl Part {
    /// `GROUP PATH within TIMEOUT` (`tollgate explain`).
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} {} within {}",
            self.upstream.name,
            self.path,
            humantime::format_duration(self.timeout)
        )
    }
}

/// A compiled `[routes.aggregate]`.
pub(crate) struct Aggregate {
    pub capture: Option<Regex>,
    pub parts: Vec<Part>,
}

impl std::fmt::Debug for Aggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregate")
            .field(
                "parts",
                &self.parts.iter().map(|p| &p.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Expand each path template with the captures of `capture` over `client_path`.
fn expand<'a>(
    capture: Option<&Regex>,
    templates: impl Iterator<Item = &'a str>,
    client_path: &str,
) -> Vec<String> {
    let caps = capture.and_then(|re| re.captures(client_path));
    templates
        .map(|t| match &caps {
            Some(c) => {
                let mut out = String::new();
                c.expand(t, &mut out);
                out
            }
            None => t.to_string(),
        })
        .collect()
}

/// What every part request carries from the client request.
pub(crate) struct Forwarded<'a> {
    pub path: &'a str,
    pub host: Option<&'a str>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl FromConfig<crate::upstream::Groups> for Aggregate {
    type Section = crate::config::file::AggregateSection;

    /// `[routes.aggregate]`; part upstreams are looked up in `groups`.
    fn from_config(
        at: &str,
        agg: &crate::config::file::AggregateSection,
        groups: &crate::upstream::Groups,
        problems: &mut Vec<crate::config::Problem>,
    ) -> Option<Aggregate> {
        use crate::config::{bounds, Problem};
        let crate::config::file::AggregateSection { capture, parts } = agg;
        let before = problems.len();
        let capture = capture.as_deref().and_then(|c| match Regex::new(c) {
            Ok(re) => Some(re),
            Err(e) => {
                problems.push(Problem::new(
                    format!("{at}.capture"),
                    format!("invalid regex: {e}"),
                ));
                None
            }
        });
        if parts.is_empty() {
            problems.push(Problem::new(
                format!("{at}.parts"),
                "must list at least one part",
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut built = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let crate::config::file::AggregatePartSection {
                name,
                upstream,
                path,
                timeout,
            } = p;
            let pat = format!("{at}.parts[{i}]");
            if name.is_empty() || name == "errors" || !names.insert(name.as_str()) {
                problems.push(Problem::new(
                    format!("{pat}.name"),
                    format!(
                        "part names must be unique, non-empty and not \"errors\"; got {name:?}"
                    ),
                ));
            }
            if !path.starts_with('/') {
                problems.push(Problem::new(format!("{pat}.path"), "must start with '/'"));
            }
            bounds::AGGREGATE_PART_TIMEOUT.check(&format!("{pat}.timeout"), *timeout, problems);
            if let Some(group) = groups.get(&format!("{pat}.upstream"), upstream, problems) {
                built.push(Part {
                    name: name.clone(),
                    upstream: group,
                    path: path.clone(),
                    timeout: timeout.0,
                });
            }
        }
        (problems.len() == before).then_some(Aggregate {
            capture,
            parts: built,
        })
    }
}

impl Aggregate {
    /// The part paths for a client path (captures expanded).
    pub(crate) fn part_paths(&self, client_path: &str) -> Vec<String> {
        expand(
            self.capture.as_ref(),
            self.parts.iter().map(|p| p.path.as_str()),
            client_path,
        )
    }

    /// Call every part in parallel and merge the answers.
    pub(crate) async fn run(
        &self,
        connector: &Connector,
        fwd: &Forwarded<'_>,
    ) -> (StatusCode, Bytes) {
        let paths = self.part_paths(fwd.path);
        let calls = self.parts.iter().zip(paths).map(|(part, path)| async move {
            let result = fetch(&part.upstream, connector, &path, fwd, part.timeout).await;
            (part.name.as_str(), result)
        });
        let results = futures::future::join_all(calls).await;
        let mut merged = Map::new();
        let mut errors = Vec::new();
        for (name, result) in results {
            match result {
                Ok(v) => {
                    merged.insert(name.to_string(), v);
                }
                Err(e) => {
                    merged.insert(name.to_string(), Value::Null);
                    errors.push(json!({ "part": name, "error": e }));
                }
            }
        }
        let status = if errors.len() == self.parts.len() && !self.parts.is_empty() {
            StatusCode::BAD_GATEWAY
        } else {
            StatusCode::OK
        };
        merged.insert("errors".to_string(), Value::Array(errors));
        (status, Bytes::from(Value::Object(merged).to_string()))
    }
}

/// One part: send GET to a target of the group, read a JSON body.
async fn fetch(
    group: &UpstreamGroup,
    connector: &Connector,
    path: &str,
    fwd: &Forwarded<'_>,
    timeout: Duration,
) -> Result<Value, String> {
    let text = |e: Box<Error>| e.etype().as_str().to_string();
    let mut req =
        RequestHeader::build("GET", path.as_bytes(), Some(fwd.headers.len() + 2)).map_err(text)?;
    if let Some(host) = fwd.host {
        req.insert_header(http::header::HOST, host).map_err(text)?;
    }
    req.insert_header(http::header::ACCEPT, "application/json")
        .map_err(text)?;
    for (name, value) in &fwd.headers {
        req.insert_header(name.clone(), value.clone())
            .map_err(text)?;
    }
    let (head, body) =
        crate::subrequest::call(group, connector, req, None, MAX_PART_BODY, timeout).await?;
    let status = head.status.as_u16();
    if !(200..300).contains(&status) {
        return Err(format!("upstream answered {status}"));
    }
    serde_json::from_slice(&body).map_err(|_| "upstream answer is not JSON".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_expand_into_part_paths() {
        let capture = Regex::new(r"^/dashboard/(?P<user>[^/]+)$").unwrap();
        let templates = ["/users/${user}", "/orders?user=$1"];
        assert_eq!(
            expand(Some(&capture), templates.into_iter(), "/dashboard/ada"),
            ["/users/ada", "/orders?user=ada"]
        );
        assert_eq!(
            expand(None, templates.into_iter(), "/dashboard/ada"),
            templates
        );
    }
}
