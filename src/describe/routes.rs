//! The routing table: one row per route of the file, in its order, saying what the route
//! matches (hosts, path, methods, headers), what it does (upstream, fixed answer,
//! aggregation), what it asks of the caller (auth, roles, limits, IP lists) and what it
//! changes (transforms, cache, credentials). JSON for `GET /routes`; [`text`] renders the same
//! rows as the aligned table `tollgate routes` prints, so the two cannot disagree.

use crate::config::file::{
    CallerKind, ConfigFile, Credentials, HeaderEditsSection, RateLimitSection, RouteSection,
    Validate,
};
use crate::config::types::{CacheSharing, HostPattern};
use serde_json::{json, Map, Value};

/// A host pattern as written in the file (`api.example.com`, `*.example.com`).
pub(crate) fn host(h: &HostPattern) -> String {
    match h {
        HostPattern::Exact(name) => name.clone(),
        HostPattern::Suffix(suffix) => format!("*{suffix}"),
    }
}

fn caller_kind(k: CallerKind) -> &'static str {
    match k {
        CallerKind::Unauthenticated => "unauthenticated",
        CallerKind::Jwt => "jwt",
        CallerKind::ApiKey => "api_key",
    }
}

/// A window, `from` the route or the gateway (`[[rate_limits]]`, every route).
fn rate_limit(l: &RateLimitSection, from: &str) -> Value {
    json!({
        "from": from,
        "limit": l.limit,
        "window": l.window.to_string(),
        "key": l.key.text(),
        "applies_to": l.applies_to.iter().map(|k| caller_kind(*k)).collect::<Vec<_>>(),
        "scope": l.scope,
    })
}

fn header_edits(e: &HeaderEditsSection) -> Value {
    fn pairs<V: std::fmt::Display>(
        m: &std::collections::BTreeMap<crate::config::types::Header, V>,
    ) -> Map<String, Value> {
        m.iter()
            .map(|(k, v)| (k.text().to_string(), v.to_string().into()))
            .collect()
    }
    json!({
        "set": pairs(&e.set),
        "append": pairs(&e.append),
        "remove": e.remove.iter().map(|h| h.text()).collect::<Vec<_>>(),
        "rename": pairs(&e.rename),
    })
}

/// The row of one route.
fn row(r: &RouteSection, gateway_limits: &[RateLimitSection]) -> Value {
    let (path, matching) = match (&r.path_prefix, &r.path) {
        (Some(p), _) => (Some(p), "prefix"),
        (None, Some(p)) => (Some(p), "exact"),
        (None, None) => (None, "any"),
    };
    let action = if r.respond.is_some() {
        "respond"
    } else if r.aggregate.is_some() {
        "aggregate"
    } else {
        "proxy"
    };
    let headers: Map<String, Value> = r
        .headers
        .iter()
        .map(|(k, v)| (k.text().to_string(), v.text().into()))
        .collect();
    let cache = r.cache.as_ref().map(|c| {
        json!({
            "ttl": c.ttl.map(|t| t.to_string()),
            "authenticated": match c.authenticated {
                CacheSharing::Bypass => "bypass",
                CacheSharing::Shared => "shared",
                CacheSharing::PerConsumer => "per_consumer",
            },
        })
    });
    json!({
        "name": r.name,
        "hosts": r.hosts.iter().map(host).collect::<Vec<_>>(),
        "path": path,
        "match": matching,
        "methods": r.methods.iter().map(|m| m.text()).collect::<Vec<_>>(),
        "headers": headers,
        "action": action,
        "upstream": r.upstream,
        "respond": r.respond.as_ref().map(|d| json!({"status": d.status})),
        "aggregate": r.aggregate.as_ref().map(|a| json!({
            "parts": a.parts.iter().map(|p| json!({
                "name": p.name, "upstream": p.upstream, "path": p.path,
            })).collect::<Vec<_>>(),
        })),
        "auth": r.auth.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "roles": r.roles,
        "rate_limits": r
            .rate_limits
            .iter()
            .map(|l| rate_limit(l, "route"))
            .chain(gateway_limits.iter().map(|l| rate_limit(l, "gateway")))
            .collect::<Vec<_>>(),
        "ip_allow": r.ip_allow,
        "ip_deny": r.ip_deny,
        "cache": cache,
        "transforms": {
            "strip_prefix": r.strip_prefix,
            "rewrite_prefix": r.rewrite_prefix,
            "rewrite_regex": r.rewrite_regex.as_ref().map(|x| json!({
                "pattern": x.pattern, "replace": x.replace,
            })),
            "request_headers": header_edits(&r.request_headers),
            "response_headers": header_edits(&r.response_headers),
            "json_rename_request": r.json_rename_request,
            "json_rename_response": r.json_rename_response,
        },
        "credentials": match r.credentials {
            Credentials::Forward => "forward",
            Credentials::Strip => "strip",
        },
        "validate": r.validate.map(|v| match v {
            Validate::Request => "request",
        }),
        "shadow": r.shadow.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "openapi": r.openapi,
    })
}

/// One row per route of `file`, in its order.
pub(crate) fn rows(file: &ConfigFile) -> Vec<Value> {
    file.routes
        .iter()
        .map(|r| row(r, &file.rate_limits))
        .collect()
}

/// The strings of a JSON array.
fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// `-` for an empty cell.
fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// A window as the table writes it: `100/1m by ip+consumer for jwt @global`.
fn window_text(l: &Value) -> String {
    let mut cell = format!(
        "{}/{} by {}",
        l["limit"],
        l["window"].as_str().unwrap_or(""),
        l["key"].as_str().unwrap_or("")
    );
    let kinds = strings(&l["applies_to"]);
    if !kinds.is_empty() {
        cell.push_str(&format!(" for {}", kinds.join("+")));
    }
    if let Some(scope) = l["scope"].as_str() {
        cell.push_str(&format!(" @{scope}"));
    }
    cell
}

/// The windows of a row that come `from` the route or the gateway, as text.
fn windows(row: &Value, from: &str) -> String {
    let all = row["rate_limits"].as_array().into_iter().flatten();
    let texts: Vec<String> = all.filter(|l| l["from"] == from).map(window_text).collect();
    texts.join("; ")
}

/// The cells of one row of the text table.
fn cells(row: &Value) -> Vec<String> {
    let s = |key: &str| row.get(key).and_then(Value::as_str).unwrap_or("");
    let path = match (s("match"), s("path")) {
        ("prefix", p) if p.ends_with('/') => format!("{p}*"),
        ("prefix", p) => format!("{p}/*"),
        ("exact", p) => p.to_string(),
        _ => "*".to_string(),
    };
    let joined = |key: &str, sep: &str, any: &str| {
        let v = strings(&row[key]);
        if v.is_empty() {
            any.to_string()
        } else {
            v.join(sep)
        }
    };
    let action = match s("action") {
        "respond" => format!("respond {}", row["respond"]["status"]),
        "aggregate" => {
            let parts: Vec<String> = row["aggregate"]["parts"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| p["upstream"].as_str().unwrap_or("").to_string())
                        .collect()
                })
                .unwrap_or_default();
            format!("aggregate {}", parts.join("+"))
        }
        _ => s("upstream").to_string(),
    };
    let limits = windows(row, "route");
    let cache = match &row["cache"] {
        Value::Null => String::new(),
        c => match c["ttl"].as_str() {
            Some(ttl) => format!("ttl {ttl}"),
            None => "on".into(),
        },
    };
    let t = &row["transforms"];
    let mut transforms = Vec::new();
    if t["strip_prefix"] == true {
        transforms.push("strip_prefix".to_string());
    }
    if let Some(p) = t["rewrite_prefix"].as_str() {
        transforms.push(format!("rewrite_prefix {p}"));
    }
    if let Some(x) = t["rewrite_regex"].as_object() {
        let part = |k: &str| x.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        transforms.push(format!(
            "rewrite_regex {} -> {}",
            part("pattern"),
            part("replace")
        ));
    }
    let edited = |v: &Value| {
        v.as_object().is_some_and(|m| {
            m.values().any(|e| {
                !e.as_object().is_some_and(Map::is_empty)
                    && !e.as_array().is_some_and(Vec::is_empty)
            })
        })
    };
    if edited(&t["request_headers"]) {
        transforms.push("request_headers".into());
    }
    if edited(&t["response_headers"]) {
        transforms.push("response_headers".into());
    }
    for key in ["json_rename_request", "json_rename_response"] {
        if t[key].as_object().is_some_and(|m| !m.is_empty()) {
            transforms.push(key.into());
        }
    }
    let mut other = Vec::new();
    if let Some(h) = row["headers"].as_object().filter(|h| !h.is_empty()) {
        let pairs: Vec<String> = h
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        other.push(format!("headers {}", pairs.join(",")));
    }
    for key in ["ip_allow", "ip_deny"] {
        let v = strings(&row[key]);
        if !v.is_empty() {
            other.push(format!("{key} {}", v.join(",")));
        }
    }
    if s("credentials") == "strip" {
        other.push("credentials strip".into());
    }
    if let Some(v) = row["validate"].as_str() {
        other.push(format!("validate {v}"));
    }
    let shadow = strings(&row["shadow"]);
    if !shadow.is_empty() {
        other.push(format!("shadow {}", shadow.join("+")));
    }
    if row["openapi"].is_string() {
        other.push("openapi".into());
    }
    vec![
        s("name").to_string(),
        joined("hosts", ",", "*"),
        path,
        joined("methods", ",", "*"),
        or_dash(action),
        joined("auth", "|", "-"),
        joined("roles", ",", "-"),
        or_dash(limits),
        or_dash(cache),
        or_dash(transforms.join(", ")),
        or_dash(other.join(", ")),
    ]
}

/// The rows as an aligned text table, one line per route under a header line.
pub(crate) fn text(rows: &Value) -> String {
    let header = [
        "ROUTE",
        "HOSTS",
        "PATH",
        "METHODS",
        "UPSTREAM",
        "AUTH",
        "ROLES",
        "LIMITS",
        "CACHE",
        "TRANSFORMS",
        "OTHER",
    ]
    .map(String::from)
    .to_vec();
    let mut lines = vec![header];
    lines.extend(rows.as_array().into_iter().flatten().map(cells));
    let mut widths = vec![0; lines[0].len()];
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let mut text = String::new();
        for (cell, w) in line.iter().zip(&widths) {
            text.push_str(cell);
            text.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 2));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    // The gateway's own windows (`[[rate_limits]]`) apply to every route: said once.
    if let Some(first) = rows.as_array().and_then(|r| r.first()) {
        let every = windows(first, "gateway");
        if !every.is_empty() {
            out.push_str(&format!("\nLIMITS of every route: {every}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_route_with_its_parts() {
        let file = crate::config::parse(
            r#"
[[rate_limits]]
limit = 100
window = "1h"
applies_to = ["unauthenticated"]

[[routes]]
name = "orders"
hosts = ["api.example.com", "*.example.org"]
path_prefix = "/api/v1/orders"
methods = ["GET", "POST"]
upstream = "orders"
rewrite_prefix = "/orders"
auth = ["jwt:main", "api_key"]
roles = ["admin"]
rate_limits = [{ limit = 100, window = "1m", key = "ip+consumer", applies_to = ["jwt"] }]
credentials = "strip"
shadow = ["auth"]
[routes.cache]
ttl = "30s"
[routes.request_headers]
set = { "X-Env" = "prod" }

[[routes]]
name = "ping"
path = "/ping"
[routes.respond]
status = 204
"#,
        )
        .unwrap();
        let rows = Value::Array(rows(&file));
        assert_eq!(rows[0]["path"], "/api/v1/orders");
        assert_eq!(rows[0]["match"], "prefix");
        assert_eq!(
            rows[0]["hosts"],
            json!(["api.example.com", "*.example.org"])
        );
        assert_eq!(rows[0]["auth"], json!(["jwt:main", "api_key"]));
        assert_eq!(rows[0]["rate_limits"][0]["key"], "ip+consumer");
        assert_eq!(rows[0]["rate_limits"][0]["from"], "route");
        assert_eq!(rows[0]["rate_limits"][1]["from"], "gateway");
        assert_eq!(rows[1]["rate_limits"][0]["from"], "gateway");
        assert_eq!(rows[0]["rate_limits"][0]["window"], "1m");
        assert_eq!(rows[0]["cache"]["ttl"], "30s");
        assert_eq!(rows[0]["transforms"]["rewrite_prefix"], "/orders");
        assert_eq!(rows[0]["credentials"], "strip");
        assert_eq!(rows[0]["shadow"], json!(["auth"]));
        assert_eq!(rows[1]["action"], "respond");
        assert_eq!(rows[1]["respond"]["status"], 204);
        let table = text(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert_eq!(
            lines[4],
            "LIMITS of every route: 100/1h by ip for unauthenticated"
        );
        assert!(lines[0].starts_with("ROUTE "), "{table}");
        assert!(lines[1].contains("/api/v1/orders/*"), "{table}");
        assert!(lines[1].contains("jwt:main|api_key"), "{table}");
        assert!(
            lines[1].contains("100/1m by ip+consumer for jwt"),
            "{table}"
        );
        assert!(
            lines[1].contains("rewrite_prefix /orders, request_headers"),
            "{table}"
        );
        assert!(
            lines[1].contains("credentials strip, shadow auth"),
            "{table}"
        );
        assert!(lines[2].contains("respond 204"), "{table}");
        // Aligned: every column starts at the same offset on every line.
        let col = lines[0].find("PATH").unwrap();
        assert_eq!(lines[2].find("/ping"), Some(col), "{table}");
    }
}
