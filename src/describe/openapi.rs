//! The OpenAPI 3.1 document of the gateway's public surface, made from the configuration.
//!
//! Each route gives its paths: `{prefix}/{path}` for a prefix route (one path parameter for
//! the rest of the path), its exact path, or, with `openapi = "FILE"`, the service's own
//! paths moved under the route's public prefix: the route's `strip_prefix` or
//! `rewrite_prefix` is undone, and service paths no request to the route can reach are left
//! out. The methods are the route's (`get`, `post`, `put`, `patch`, `delete` when it takes
//! any). Every operation says the security the route asks for (its `auth` methods as
//! alternatives, each with the route's roles), and the answers the gateway gives itself
//! with their JSON error schema: 400, 404 and 413 always, 401 where the route authenticates,
//! 403 where roles, IP lists or an auth service can refuse, 415 where content types are
//! restricted, 429 with `Retry-After` and the `RateLimit-*` headers where limits apply, and
//! 502/503/504 where an upstream answers. Every response names the request-id header.
//!
//! A service's `components` are merged with each name prefixed by its route's name and a
//! dot (`orders.Order`), and its `$ref`s rewritten to match, so two services cannot collide.
//! A service's OpenAPI 3.0 schemas are turned into 3.1's (`nullable`, boolean
//! `exclusiveMinimum`). Each operation carries `x-tollgate-route` with its route's name:
//! [`operations`] finds a route's operations by it.

use crate::config::file::{CallerKind, ConfigFile, RateLimitSection, RouteSection, ShadowPolicy};
use crate::config::types::AuthRef;
use crate::config::Problem;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

/// The path-item keys that are operations, as OpenAPI 3.1 spells them.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];
/// The methods documented for a route that matches any method.
const ANY_METHOD: [&str; 5] = ["get", "post", "put", "patch", "delete"];
/// The extension naming the route that serves an operation.
pub(crate) const ROUTE_KEY: &str = "x-tollgate-route";
/// The request-id header when `[server] request_id_header` is not set.
const DEFAULT_REQUEST_ID_HEADER: &str = "X-Request-ID";

/// One operation of the document, as request validation needs it.
#[derive(Debug, Clone)]
pub(crate) struct Operation {
    /// Upper case, as in requests: `GET`.
    pub(crate) method: String,
    /// The public path template: `/api/v1/orders/{id}`.
    pub(crate) template: String,
    /// The operation: its `parameters` (the path item's merged in) and `requestBody` with
    /// `$ref`s resolved; schemas inside them may still `$ref` the document's components.
    pub(crate) op: Value,
}

/// The operations of route `route` in `doc` (made by [`document`]), in the document's order.
pub(crate) fn operations(doc: &Value, route: &str) -> Vec<Operation> {
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (template, item) in paths {
        let item = deref(doc, item);
        for method in METHODS {
            let Some(op) = item.get(method) else {
                continue;
            };
            if op.get(ROUTE_KEY).and_then(Value::as_str) != Some(route) {
                continue;
            }
            let mut op = op.clone();
            let own = op.get("parameters").and_then(Value::as_array);
            let mut params: Vec<Value> = own
                .into_iter()
                .flatten()
                .map(|p| deref(doc, p).clone())
                .collect();
            let key = |p: &Value| (p.get("name").cloned(), p.get("in").cloned());
            for p in item
                .get("parameters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let p = deref(doc, p).clone();
                if !params.iter().any(|q| key(q) == key(&p)) {
                    params.push(p);
                }
            }
            if let Some(o) = op.as_object_mut() {
                if !params.is_empty() {
                    o.insert("parameters".into(), params.into());
                }
                if let Some(body) = o.get("requestBody").map(|b| deref(doc, b).clone()) {
                    o.insert("requestBody".into(), body);
                }
            }
            out.push(Operation {
                method: method.to_ascii_uppercase(),
                template: template.clone(),
                op,
            });
        }
    }
    out
}

/// `v`, or what its local `$ref` points at (followed a few times).
pub(crate) fn deref<'d>(doc: &'d Value, mut v: &'d Value) -> &'d Value {
    for _ in 0..8 {
        let Some(target) = v
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|pointer| doc.pointer(pointer))
        else {
            break;
        };
        v = target;
    }
    v
}

/// The gateway's own answers, by status: the component under `#/components/responses` and
/// what it says.
const ANSWERS: [(&str, &str, &str); 10] = [
    (
        "400",
        "BadRequest",
        "Refused by the gateway: a malformed request, a path it refuses, or (with `validate`) \
         a request that does not match this operation.",
    ),
    (
        "401",
        "Unauthorized",
        "Refused by the gateway: no credentials, or credentials it could not verify.",
    ),
    (
        "403",
        "Forbidden",
        "Refused by the gateway: the caller lacks a role the route needs, its address is not \
         allowed, or the auth service refused it.",
    ),
    (
        "404",
        "NotFound",
        "No route matches the request (its host, path, method or headers).",
    ),
    (
        "413",
        "PayloadTooLarge",
        "The request body is larger than the route allows.",
    ),
    (
        "415",
        "UnsupportedMediaType",
        "The request body's media type is not one the route accepts.",
    ),
    (
        "429",
        "TooManyRequests",
        "A rate limit of the route or the consumer refused the request; retry after \
         `Retry-After` seconds.",
    ),
    (
        "502",
        "BadGateway",
        "The upstream could not be reached or failed to answer.",
    ),
    (
        "503",
        "ServiceUnavailable",
        "No healthy upstream target (or the auth service is unavailable).",
    ),
    (
        "504",
        "GatewayTimeout",
        "The upstream did not answer in time.",
    ),
];

/// The rate-limit headers: `(name, component, description)`.
const RATE_HEADERS: [(&str, &str, &str); 3] = [
    (
        "RateLimit-Limit",
        "RateLimitLimit",
        "Requests the most restrictive window admits.",
    ),
    (
        "RateLimit-Remaining",
        "RateLimitRemaining",
        "Requests left in that window.",
    ),
    (
        "RateLimit-Reset",
        "RateLimitReset",
        "Seconds until that window resets.",
    ),
];

/// What the document needs to know about one route.
struct Facts<'f> {
    route: &'f RouteSection,
    /// Security requirements, any of which admits; empty for a public route.
    security: Vec<Value>,
    /// The gateway's answers this route can give, as in [`ANSWERS`].
    answers: Vec<&'static str>,
    limited: bool,
    /// What the gateway does with the route, in words, for the operations' descriptions.
    summary: String,
}

impl<'f> Facts<'f> {
    fn of(file: &ConfigFile, r: &'f RouteSection) -> Facts<'f> {
        let consumer_limits = file.consumers.values().flat_map(|c| &c.rate_limits);
        let limited = r
            .rate_limits
            .iter()
            .chain(&file.rate_limits)
            .any(|w| counts_on(w, r))
            || (r.auth.contains(&AuthRef::ApiKey) && consumer_limits.into_iter().next().is_some());
        let forward = r.auth.iter().any(|a| matches!(a, AuthRef::Forward(_)));
        let external = forward
            || r.auth
                .iter()
                .any(|a| matches!(a, AuthRef::Introspection(_)));
        let ip_rules = !r.ip_allow.is_empty()
            || !r.ip_deny.is_empty()
            || !file.limits.ip_allow.is_empty()
            || !file.limits.ip_deny.is_empty();
        let proxied = r.respond.is_none() && r.aggregate.is_none();
        let mut answers = vec!["400"];
        if !r.auth.is_empty() {
            answers.push("401");
        }
        if !r.roles.is_empty() || ip_rules || forward {
            answers.push("403");
        }
        answers.extend(["404", "413"]);
        if !r.allow_content_types.is_empty() {
            answers.push("415");
        }
        if limited {
            answers.push("429");
        }
        if proxied {
            answers.extend(["502", "503", "504"]);
        } else if external {
            answers.push("503");
        }
        let mut schemes: Vec<String> = Vec::new();
        for a in &r.auth {
            let name = scheme_name(a);
            if !schemes.contains(&name) {
                schemes.push(name);
            }
        }
        let mut security = Vec::new();
        for s in &schemes {
            if r.roles.is_empty() {
                security.push(json!({ s: [] }));
            } else {
                // OpenAPI lists the roles a requirement needs all of; the route needs any one.
                security.extend(r.roles.iter().map(|role| json!({ s: [role] })));
            }
        }
        Facts {
            route: r,
            security,
            answers,
            limited,
            summary: summary(r),
        }
    }
}

/// Whether window `w` can count requests to route `r`: it counts every caller, or a kind
/// of caller the route admits (an unauthenticated one only where the route has no `auth`,
/// or shadows it).
fn counts_on(w: &RateLimitSection, r: &RouteSection) -> bool {
    let token = r.auth.iter().any(|a| !matches!(a, AuthRef::ApiKey));
    w.applies_to.is_empty()
        || w.applies_to.iter().any(|kind| match kind {
            CallerKind::Unauthenticated => {
                r.auth.is_empty() || r.shadow.contains(&ShadowPolicy::Auth)
            }
            CallerKind::Jwt => token,
            CallerKind::ApiKey => r.auth.contains(&AuthRef::ApiKey),
        })
}

/// The security scheme an auth method of a route stands for.
fn scheme_name(a: &AuthRef) -> String {
    match a {
        AuthRef::Jwt(_) => "jwt".into(),
        AuthRef::ApiKey => "api_key".into(),
        AuthRef::Introspection(_) => "introspection".into(),
        AuthRef::Forward(name) => format!("forward.{name}"),
    }
}

/// `components.securitySchemes` for what the file configures.
fn security_schemes(file: &ConfigFile) -> Map<String, Value> {
    let mut schemes = Map::new();
    if !file.auth.jwt.is_empty() {
        schemes.insert(
            "jwt".into(),
            json!({
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "A JWT of a configured issuer, as `Authorization: Bearer TOKEN`.",
            }),
        );
    }
    let api_key_routes = file
        .routes
        .iter()
        .any(|r| r.auth.contains(&AuthRef::ApiKey));
    if !file.consumers.is_empty() || api_key_routes {
        schemes.insert(
            "api_key".into(),
            json!({
                "type": "apiKey",
                "in": "header",
                "name": file.auth.api_key.header.text(),
                "description": "A consumer's API key.",
            }),
        );
    }
    if !file.auth.introspection.is_empty() {
        schemes.insert(
            "introspection".into(),
            json!({
                "type": "http",
                "scheme": "bearer",
                "description": "An opaque access token, checked at the authorization server \
                                (RFC 7662 introspection).",
            }),
        );
    }
    for (name, f) in &file.auth.forward {
        let header = f
            .copy_headers
            .iter()
            .map(|h| h.text())
            .find(|h| !h.eq_ignore_ascii_case("cookie"))
            .unwrap_or("Authorization");
        schemes.insert(
            format!("forward.{name}"),
            json!({
                "type": "apiKey",
                "in": "header",
                "name": header,
                "description": format!(
                    "Credentials the auth service `{name}` checks (forward authentication)."
                ),
            }),
        );
    }
    schemes
}

/// What the gateway does with a route, in a sentence or two.
fn summary(r: &RouteSection) -> String {
    let mut s = format!("Route `{}`", r.name);
    if let Some(up) = &r.upstream {
        s.push_str(&format!(": proxied to upstream `{up}`"));
        let matched = r
            .path_prefix
            .as_deref()
            .or(r.path.as_deref())
            .unwrap_or("/");
        if r.strip_prefix {
            s.push_str(&format!(" without the prefix `{matched}`"));
        } else if let Some(with) = &r.rewrite_prefix {
            s.push_str(&format!(", `{matched}` replaced by `{with}`"));
        }
    } else if let Some(d) = &r.respond {
        s.push_str(&format!(": answered by the gateway with {}", d.status));
    } else if let Some(a) = &r.aggregate {
        let parts: Vec<&str> = a.parts.iter().map(|p| p.name.as_str()).collect();
        s.push_str(&format!(": the JSON of {} merged", parts.join(", ")));
    }
    s.push('.');
    if !r.hosts.is_empty() {
        let hosts: Vec<String> = r.hosts.iter().map(super::routes::host).collect();
        s.push_str(&format!(" Hosts: {}.", hosts.join(", ")));
    }
    if !r.auth.is_empty() {
        let auth: Vec<String> = r.auth.iter().map(|a| format!("`{a}`")).collect();
        s.push_str(&format!(" Authentication: {}", auth.join(" or ")));
        if !r.roles.is_empty() {
            s.push_str(&format!("; roles (any one): {}", r.roles.join(", ")));
        }
        s.push('.');
    }
    if !r.rate_limits.is_empty() {
        let limits: Vec<String> = r
            .rate_limits
            .iter()
            .map(|l| format!("{} per {}", l.limit, l.window))
            .collect();
        s.push_str(&format!(" Rate limits: {}.", limits.join(", ")));
    }
    s
}

/// A gateway answer: its description, the error schema and the request-id header.
fn answer(description: &str, request_id: &str, extra: &[(&str, &str)]) -> Value {
    let mut headers = Map::new();
    headers.insert(
        request_id.into(),
        json!({"$ref": "#/components/headers/RequestId"}),
    );
    for (name, component) in extra {
        headers.insert(
            (*name).into(),
            json!({ "$ref": format!("#/components/headers/{component}") }),
        );
    }
    json!({
        "description": description,
        "headers": headers,
        "content": {
            "application/json": { "schema": { "$ref": "#/components/schemas/Error" } },
        },
    })
}

/// The headers a 429 carries: `Retry-After` and the `RateLimit-*` ones.
fn refusal_headers() -> Vec<(&'static str, &'static str)> {
    let mut h = vec![("Retry-After", "RetryAfter")];
    h.extend(RATE_HEADERS.iter().map(|(n, c, _)| (*n, *c)));
    h
}

/// The gateway's own components: the error schema, its answers and their headers.
fn base_components(file: &ConfigFile, request_id: &str) -> Map<String, Value> {
    let mut headers = Map::new();
    headers.insert(
        "RequestId".into(),
        json!({
            "description": "The request's id: the client's when it sent a valid one, else one \
                            the gateway made. The upstream gets the same one.",
            "schema": { "type": "string" },
        }),
    );
    headers.insert(
        "RetryAfter".into(),
        json!({
            "description": "Seconds to wait before retrying.",
            "schema": { "type": "integer", "minimum": 1 },
        }),
    );
    for (_, component, description) in RATE_HEADERS {
        headers.insert(
            component.into(),
            json!({ "description": description, "schema": { "type": "integer", "minimum": 0 } }),
        );
    }
    let mut responses = Map::new();
    for (status, component, description) in ANSWERS {
        let extra = if status == "429" {
            refusal_headers()
        } else {
            Vec::new()
        };
        responses.insert(component.into(), answer(description, request_id, &extra));
    }
    let mut components = Map::new();
    components.insert(
        "schemas".into(),
        json!({
            "Error": {
                "type": "object",
                "description": "The body of every answer the gateway gives itself.",
                "required": ["error", "reason", "request_id"],
                "properties": {
                    "error": { "type": "string", "description": "What went wrong, in words." },
                    "reason": {
                        "type": "string",
                        "description": "Why, as one word (`no_route`, `token_expired`, \
                                        `rate_limited:5/10s`, `request_invalid`...).",
                    },
                    "request_id": { "type": "string", "description": "The request's id." },
                    "field": {
                        "type": "string",
                        "description": "With `request_invalid`: the part of the request that \
                                        is invalid.",
                    },
                    "rule": {
                        "type": "string",
                        "description": "With `request_invalid`: the rule it breaks.",
                    },
                },
            },
        }),
    );
    components.insert("responses".into(), responses.into());
    components.insert("headers".into(), headers.into());
    let schemes = security_schemes(file);
    if !schemes.is_empty() {
        components.insert("securitySchemes".into(), schemes.into());
    }
    components
}

/// The document being made.
struct Builder {
    request_id: String,
    paths: Map<String, Value>,
    components: Map<String, Value>,
    operation_ids: BTreeSet<String>,
}

/// The OpenAPI 3.1 document of `file`; each service file that cannot be read or used is a
/// problem at its `routes[N].openapi`.
pub(crate) fn document(file: &ConfigFile, problems: &mut Vec<Problem>) -> Value {
    // As the file spells it: the gateway sends it under that spelling.
    let request_id = file
        .server
        .request_id_header
        .as_ref()
        .map_or(DEFAULT_REQUEST_ID_HEADER, |h| h.text())
        .to_string();
    let mut b = Builder {
        components: base_components(file, &request_id),
        request_id,
        paths: Map::new(),
        operation_ids: BTreeSet::new(),
    };
    for (i, r) in file.routes.iter().enumerate() {
        let facts = Facts::of(file, r);
        match &r.openapi {
            Some(path) => {
                let at = format!("routes[{i}].openapi");
                if let Some(service) = read_service(&at, path, problems) {
                    b.merge_service(&at, &facts, service, problems);
                }
            }
            None => b.add_route(&facts),
        }
    }
    let o = &file.openapi;
    let mut info = Map::new();
    info.insert("title".into(), o.title.clone().into());
    info.insert("version".into(), o.version.clone().into());
    if let Some(d) = &o.description {
        info.insert("description".into(), d.clone().into());
    }
    let mut doc = Map::new();
    doc.insert("openapi".into(), "3.1.0".into());
    doc.insert("info".into(), info.into());
    if !o.servers.is_empty() {
        let servers: Vec<Value> = o.servers.iter().map(|s| json!({ "url": s })).collect();
        doc.insert("servers".into(), servers.into());
    }
    doc.insert("paths".into(), b.paths.into());
    doc.insert("components".into(), b.components.into());
    doc.into()
}

/// The methods a route takes, as path-item keys (methods OpenAPI cannot name are left out).
fn route_methods(r: &RouteSection) -> Vec<String> {
    if r.methods.is_empty() {
        return ANY_METHOD.map(String::from).to_vec();
    }
    r.methods
        .iter()
        .map(|m| m.text().to_ascii_lowercase())
        .filter(|m| METHODS.contains(&m.as_str()))
        .collect()
}

impl Builder {
    /// A unique `operationId`: `wanted`, else prefixed with the route's name, else numbered.
    fn operation_id(&mut self, route: &str, wanted: &str) -> String {
        let mut id = wanted.to_string();
        if self.operation_ids.contains(&id) {
            id = format!("{route}.{wanted}");
        }
        let base = id.clone();
        let mut n = 2;
        while self.operation_ids.contains(&id) {
            id = format!("{base}{n}");
            n += 1;
        }
        self.operation_ids.insert(id.clone());
        id
    }

    /// Put `op` at `path` `method`, unless a route before already documents that (the first
    /// route in the file is kept, as the one a reader looks for first).
    fn insert(&mut self, path: &str, method: &str, op: Value) {
        let item = self
            .paths
            .entry(path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(item) = item.as_object_mut() {
            item.entry(method.to_string()).or_insert(op);
        }
    }

    /// Whether `path` `method` is documented already.
    fn taken(&self, path: &str, method: &str) -> bool {
        self.paths.get(path).and_then(|i| i.get(method)).is_some()
    }

    /// The operations of a route without a service file.
    fn add_route(&mut self, facts: &Facts<'_>) {
        let r = facts.route;
        let rest = json!({
            "name": "path",
            "in": "path",
            "required": true,
            "description": "The rest of the path, passed on to the upstream (may hold `/`).",
            "schema": { "type": "string" },
        });
        let (template, mut parameters) = match (&r.path_prefix, &r.path) {
            (Some(p), _) => (format!("{}/{{path}}", p.trim_end_matches('/')), vec![rest]),
            (None, Some(p)) => (p.clone(), Vec::new()),
            (None, None) => ("/{path}".to_string(), vec![rest]),
        };
        // A route that matches on headers needs them.
        for (name, value) in &r.headers {
            parameters.push(json!({
                "name": name.text(),
                "in": "header",
                "required": true,
                "description": "The route matches only requests with this value.",
                "schema": { "type": "string", "enum": [value.text()] },
            }));
        }
        let mut responses = Map::new();
        if let Some(d) = &r.respond {
            let mut fixed = json!({ "description": "The route's fixed answer." });
            let content_type = d
                .headers
                .iter()
                .find(|(k, _)| k.text().eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.text());
            if let Some(ct) = content_type {
                fixed["content"] = json!({ ct: {} });
            }
            responses.insert(d.status.to_string(), fixed);
        } else if let Some(a) = &r.aggregate {
            let mut properties = Map::new();
            for p in &a.parts {
                properties.insert(
                    p.name.clone(),
                    json!({ "description": format!("The JSON of `{}{}` (null when it failed).", p.upstream, p.path) }),
                );
            }
            properties.insert(
                "errors".into(),
                json!({
                    "type": "array",
                    "description": "The parts that failed.",
                    "items": {
                        "type": "object",
                        "properties": {
                            "part": { "type": "string" },
                            "error": { "type": "string" },
                        },
                    },
                }),
            );
            let merged = json!({
                "type": "object",
                "required": ["errors"],
                "properties": properties,
            });
            for (status, description) in [
                ("200", "The parts' JSON, one key per part."),
                ("502", "Every part failed."),
            ] {
                responses.insert(
                    status.into(),
                    json!({
                        "description": description,
                        "content": { "application/json": { "schema": merged } },
                    }),
                );
            }
        } else {
            responses.insert(
                "default".into(),
                json!({ "description": "The upstream's answer." }),
            );
        }
        for method in route_methods(r) {
            if self.taken(&template, &method) {
                continue;
            }
            let mut op = Map::new();
            op.insert(
                "operationId".into(),
                self.operation_id(&r.name, &format!("{}_{method}", r.name))
                    .into(),
            );
            op.insert("tags".into(), json!([r.name]));
            op.insert("description".into(), facts.summary.clone().into());
            if !parameters.is_empty() {
                op.insert("parameters".into(), parameters.clone().into());
            }
            let mut responses = responses.clone();
            self.gateway_answers(facts, &mut responses);
            op.insert("responses".into(), responses.into());
            if !facts.security.is_empty() {
                op.insert("security".into(), facts.security.clone().into());
            }
            op.insert(ROUTE_KEY.into(), r.name.clone().into());
            self.insert(&template, &method, op.into());
        }
    }

    /// The request-id header (and the rate-limit ones, where limits apply) on each answer the
    /// operation documents, then the gateway's own answers.
    fn gateway_answers(&self, facts: &Facts<'_>, responses: &mut Map<String, Value>) {
        for (status, response) in responses.iter_mut() {
            if let Some(target) = self.component_ref(response) {
                *response = target;
            }
            let Some(r) = response.as_object_mut() else {
                continue;
            };
            let headers = r
                .entry("headers")
                .or_insert_with(|| Value::Object(Map::new()));
            let Some(headers) = headers.as_object_mut() else {
                continue;
            };
            let mut add = |name: &str, component: &str| {
                if !headers.keys().any(|k| k.eq_ignore_ascii_case(name)) {
                    headers.insert(
                        name.into(),
                        json!({ "$ref": format!("#/components/headers/{component}") }),
                    );
                }
            };
            add(&self.request_id, "RequestId");
            if facts.limited {
                for (name, component, _) in RATE_HEADERS {
                    add(name, component);
                }
                if status == "429" {
                    add("Retry-After", "RetryAfter");
                }
            }
        }
        for status in &facts.answers {
            let Some((_, component, _)) = ANSWERS.iter().find(|(s, _, _)| s == status) else {
                continue;
            };
            match responses.get_mut(*status) {
                None => {
                    responses.insert(
                        (*status).into(),
                        json!({ "$ref": format!("#/components/responses/{component}") }),
                    );
                }
                // The service answers this status too: either body may come.
                Some(own) => {
                    let error = json!({ "$ref": "#/components/schemas/Error" });
                    let content = own
                        .as_object_mut()
                        .map(|o| {
                            o.entry("content")
                                .or_insert_with(|| Value::Object(Map::new()))
                        })
                        .and_then(Value::as_object_mut);
                    let Some(content) = content else {
                        continue;
                    };
                    match content.get_mut("application/json") {
                        Some(media) => {
                            let schema = media.get("schema").cloned();
                            media["schema"] = match schema {
                                Some(s) => json!({ "anyOf": [s, error] }),
                                None => error,
                            };
                        }
                        None => {
                            content.insert("application/json".into(), json!({ "schema": error }));
                        }
                    }
                }
            }
        }
    }

    /// What a local `$ref` to the document's components points at, cloned.
    fn component_ref(&self, v: &Value) -> Option<Value> {
        let r = v.get("$ref")?.as_str()?;
        let rest = r.strip_prefix("#/components/")?;
        let (kind, name) = rest.split_once('/')?;
        let name = name.replace("~1", "/").replace("~0", "~");
        self.components.get(kind)?.get(&name).cloned()
    }

    /// Merge a service's document under `facts`' route.
    fn merge_service(
        &mut self,
        at: &str,
        facts: &Facts<'_>,
        mut service: Value,
        problems: &mut Vec<Problem>,
    ) {
        let r = facts.route;
        if r.rewrite_regex.is_some() {
            problems.push(Problem::new(
                at,
                "cannot be combined with rewrite_regex: the public paths of the service's \
                 cannot be derived from a regex rewrite; use strip_prefix or rewrite_prefix",
            ));
            return;
        }
        let version = service
            .get("openapi")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if version.starts_with("3.0") {
            upgrade_30(&mut service);
        }
        // Path items that are references are used as what they point at.
        let resolved: Vec<(String, Value)> = service
            .get("paths")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(p, item)| (p.clone(), deref(&service, item).clone()))
            .collect();
        if let Some(paths) = service.get_mut("paths").and_then(Value::as_object_mut) {
            for (p, item) in resolved {
                paths.insert(p, item);
            }
        }
        let ns = format!("{}.", namespace(&r.name));
        let mut outside = Vec::new();
        rewrite_refs(&mut service, &ns, false, &mut outside);
        if let Some(bad) = outside.first() {
            problems.push(Problem::new(
                at,
                format!(
                    "`$ref: {bad}` points outside the components of the file; only local \
                     references (`#/components/...`) can be merged"
                ),
            ));
            return;
        }
        // The service's own security holds where the gateway asks for none.
        let keep_security = facts.security.is_empty();
        if let Some(components) = service.get("components").and_then(Value::as_object) {
            for (kind, named) in components {
                if kind == "securitySchemes" && !keep_security {
                    continue;
                }
                let Some(named) = named.as_object() else {
                    continue;
                };
                let merged = self
                    .components
                    .entry(kind.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                let Some(merged) = merged.as_object_mut() else {
                    continue;
                };
                for (name, v) in named {
                    let key = format!("{ns}{name}");
                    if merged.contains_key(&key) {
                        problems.push(Problem::new(
                            at,
                            format!(
                                "components.{kind}.{key} is defined by another route's file too"
                            ),
                        ));
                        continue;
                    }
                    merged.insert(key, v.clone());
                }
            }
        }
        let namespaced = |requirements: &Value| -> Value {
            let list: Vec<Value> = requirements
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_object)
                .map(|req| {
                    req.iter()
                        .map(|(k, v)| (format!("{ns}{k}"), v.clone()))
                        .collect::<Map<String, Value>>()
                        .into()
                })
                .collect();
            list.into()
        };
        let default_security = service.get("security").map(namespaced);
        let allowed = route_methods(r);
        let paths = service
            .get("paths")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (service_path, item) in &paths {
            let Some(public) = public_path(r, service_path) else {
                continue;
            };
            let shared: Vec<Value> = item
                .get("parameters")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for method in METHODS {
                let Some(op) = item.get(method).and_then(Value::as_object) else {
                    continue;
                };
                if !allowed.iter().any(|m| m == method) || self.taken(&public, method) {
                    continue;
                }
                let mut op = op.clone();
                op.remove("servers");
                // The path item's parameters, on the operation: path items of two routes may
                // share a public path.
                let mut params: Vec<Value> = op
                    .get("parameters")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for p in &shared {
                    let key = |p: &Value| {
                        let p = self.component_ref(p).unwrap_or_else(|| p.clone());
                        (p.get("name").cloned(), p.get("in").cloned())
                    };
                    if !params.iter().any(|q| key(q) == key(p)) {
                        params.push(p.clone());
                    }
                }
                if !params.is_empty() {
                    op.insert("parameters".into(), params.into());
                }
                let wanted = op
                    .get("operationId")
                    .and_then(Value::as_str)
                    .map(String::from)
                    .unwrap_or_else(|| format!("{}_{method}", r.name));
                op.insert(
                    "operationId".into(),
                    self.operation_id(&r.name, &wanted).into(),
                );
                if !op.contains_key("tags") {
                    op.insert("tags".into(), json!([r.name]));
                }
                let description = match op.get("description").and_then(Value::as_str) {
                    Some(d) => format!("{d}\n\n{}", facts.summary),
                    None => facts.summary.clone(),
                };
                op.insert("description".into(), description.into());
                if keep_security {
                    match op.get("security").map(namespaced) {
                        Some(s) => {
                            op.insert("security".into(), s);
                        }
                        None => {
                            if let Some(s) = &default_security {
                                op.insert("security".into(), s.clone());
                            }
                        }
                    }
                } else {
                    op.insert("security".into(), facts.security.clone().into());
                }
                let mut responses = op
                    .get("responses")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                self.gateway_answers(facts, &mut responses);
                op.insert("responses".into(), responses.into());
                op.insert(ROUTE_KEY.into(), r.name.clone().into());
                self.insert(&public, method, op.into());
            }
        }
    }
}

/// A route's name as a component-name prefix (OpenAPI allows `A-Za-z0-9._-`).
fn namespace(route: &str) -> String {
    route
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The public path of the service's path `service` behind route `r`, or `None` when no
/// request to the route reaches it: the route's rewrite of the matched prefix, undone.
fn public_path(r: &RouteSection, service: &str) -> Option<String> {
    let matched = r.path_prefix.as_deref().or(r.path.as_deref());
    let exact = r.path_prefix.is_none() && r.path.is_some();
    let replaced = if r.strip_prefix {
        Some("")
    } else {
        r.rewrite_prefix.as_deref()
    };
    match replaced {
        Some(with) => {
            let with = with.trim_end_matches('/');
            let rest = if service == with || (with.is_empty() && service == "/") {
                ""
            } else {
                service.strip_prefix(with).filter(|r| r.starts_with('/'))?
            };
            if exact && !rest.is_empty() {
                return None;
            }
            let mut public = format!("{}{rest}", matched.unwrap_or("").trim_end_matches('/'));
            if public.is_empty() {
                public.push('/');
            }
            Some(public)
        }
        None => {
            let reached = match (&r.path_prefix, &r.path) {
                (Some(p), _) => service.strip_prefix(p.as_str()).is_some_and(|rest| {
                    rest.is_empty() || p.ends_with('/') || rest.starts_with('/')
                }),
                (None, Some(p)) => service == p,
                (None, None) => true,
            };
            reached.then(|| service.to_string())
        }
    }
}

/// Read a service's OpenAPI 3.0 or 3.1 document (YAML or JSON).
fn read_service(at: &str, path: &str, problems: &mut Vec<Problem>) -> Option<Value> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            problems.push(Problem::new(at, format!("cannot read {path}: {e}")));
            return None;
        }
    };
    let parsed = if text.trim_start().starts_with('{') {
        serde_json::from_str::<Value>(&text).map_err(|e| format!("invalid JSON: {e}"))
    } else {
        serde_yaml::from_str::<serde_yaml::Value>(&text)
            .map_err(|e| format!("invalid YAML: {e}"))
            .map(|mut v| {
                let _ = v.apply_merge();
                yaml_to_json(v)
            })
    };
    let doc = match parsed {
        Ok(d) => d,
        Err(e) => {
            problems.push(Problem::new(at, format!("{path}: {e}")));
            return None;
        }
    };
    let version = doc.get("openapi").and_then(Value::as_str).unwrap_or("");
    if !(version.starts_with("3.0") || version.starts_with("3.1")) {
        problems.push(Problem::new(
            at,
            format!("{path}: not an OpenAPI 3.0 or 3.1 document (no `openapi: 3.0.x` or `3.1.x`)"),
        ));
        return None;
    }
    if doc.get("paths").is_some_and(|p| !p.is_object()) {
        problems.push(Problem::new(at, format!("{path}: `paths` is not a map")));
        return None;
    }
    Some(doc)
}

/// YAML as JSON: keys that are not strings (`200:` in `responses`) become their text.
fn yaml_to_json(v: serde_yaml::Value) -> Value {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => b.into(),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into()
            } else if let Some(u) = n.as_u64() {
                u.into()
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            }
        }
        Y::String(s) => s.into(),
        Y::Sequence(items) => items.into_iter().map(yaml_to_json).collect(),
        Y::Mapping(m) => m
            .into_iter()
            .map(|(k, v)| {
                let key = match k {
                    Y::String(s) => s,
                    Y::Bool(b) => b.to_string(),
                    Y::Number(n) => n.to_string(),
                    Y::Null => "null".into(),
                    other => serde_yaml::to_string(&other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                (key, yaml_to_json(v))
            })
            .collect::<Map<String, Value>>()
            .into(),
        Y::Tagged(t) => yaml_to_json(t.value),
    }
}

/// Prefix every `#/components/KIND/NAME` reference (and discriminator mapping) with `ns`;
/// references elsewhere are collected in `outside`. `schemas` says `v` is a map of schemas
/// by name (`properties`), whose keys mean nothing.
fn rewrite_refs(v: &mut Value, ns: &str, schemas: bool, outside: &mut Vec<String>) {
    match v {
        Value::Object(m) if schemas => {
            for child in m.values_mut() {
                rewrite_refs(child, ns, false, outside);
            }
        }
        Value::Object(m) => {
            for (key, child) in m.iter_mut() {
                match key.as_str() {
                    "$ref" => {
                        if let Value::String(r) = child {
                            match rewritten(r, ns) {
                                Some(n) => *r = n,
                                None => outside.push(r.clone()),
                            }
                        }
                    }
                    // Example values are data.
                    "example" => {}
                    "examples" => {
                        if let Value::Object(named) = child {
                            for e in named.values_mut() {
                                if let Value::Object(e) = e {
                                    for (k, part) in e.iter_mut() {
                                        if k != "value" {
                                            rewrite_refs(part, ns, false, outside);
                                        }
                                    }
                                }
                            }
                        }
                    }
                    "properties" | "patternProperties" | "$defs" => {
                        rewrite_refs(child, ns, true, outside)
                    }
                    "discriminator" => {
                        if let Some(Value::Object(mapping)) = child.get_mut("mapping") {
                            for target in mapping.values_mut() {
                                if let Value::String(t) = target {
                                    *t = rewritten(t, ns).unwrap_or_else(|| format!("{ns}{t}"));
                                }
                            }
                        }
                    }
                    _ => rewrite_refs(child, ns, false, outside),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite_refs(item, ns, false, outside);
            }
        }
        _ => {}
    }
}

/// `#/components/KIND/NAME` as `#/components/KIND/{ns}NAME`; `None` for any other reference.
fn rewritten(r: &str, ns: &str) -> Option<String> {
    let rest = r.strip_prefix("#/components/")?;
    let (kind, name) = rest.split_once('/')?;
    Some(format!("#/components/{kind}/{ns}{name}"))
}

/// OpenAPI 3.0 schemas as 3.1's: `nullable` as a `null` type, boolean `exclusiveMinimum`
/// and `exclusiveMaximum` as numbers.
fn upgrade_30(doc: &mut Value) {
    if let Some(Value::Object(schemas)) = doc.pointer_mut("/components/schemas") {
        schemas.values_mut().for_each(upgrade_schema);
    }
    upgrade_schemas_in(doc);
}

/// Every `schema` under `v` (parameters, media types, headers).
fn upgrade_schemas_in(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (key, child) in m.iter_mut() {
                match key.as_str() {
                    "schema" => upgrade_schema(child),
                    // Data, and the schemas done by `upgrade_30`.
                    "example" | "examples" | "schemas" => {}
                    _ => upgrade_schemas_in(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(upgrade_schemas_in),
        _ => {}
    }
}

fn upgrade_schema(v: &mut Value) {
    let Value::Object(m) = v else {
        return;
    };
    for (flag, bound) in [
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ] {
        if let Some(Value::Bool(on)) = m.get(flag).cloned() {
            m.remove(flag);
            if on {
                if let Some(n) = m.remove(bound) {
                    m.insert(flag.into(), n);
                }
            }
        }
    }
    for key in ["properties", "patternProperties"] {
        if let Some(Value::Object(p)) = m.get_mut(key) {
            p.values_mut().for_each(upgrade_schema);
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(child) = m.get_mut(key) {
            upgrade_schema(child);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(all)) = m.get_mut(key) {
            all.iter_mut().for_each(upgrade_schema);
        }
    }
    if m.remove("nullable") == Some(Value::Bool(true)) {
        if let Some(Value::Array(e)) = m.get_mut("enum") {
            if !e.contains(&Value::Null) {
                e.push(Value::Null);
            }
        }
        match m.get("type").cloned() {
            Some(Value::String(t)) => {
                m.insert("type".into(), json!([t, "null"]));
            }
            _ => {
                let inner = std::mem::take(m);
                m.insert("anyOf".into(), json!([inner, { "type": "null" }]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The orders service of `conf/openapi/`, as the platform's services ship it.
    fn fixture(name: &str) -> String {
        format!("{}/conf/openapi/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn doc(text: &str) -> (Value, Vec<Problem>) {
        let file = crate::config::parse(text).unwrap();
        let mut problems = Vec::new();
        let doc = document(&file, &mut problems);
        (doc, problems)
    }

    fn ok(text: &str) -> Value {
        let (doc, problems) = doc(text);
        assert!(problems.is_empty(), "{problems:?}");
        doc
    }

    #[test]
    fn a_route_without_a_file_is_its_prefix_and_a_path_parameter() {
        let d = ok(r#"
[openapi]
title = "Shop"
servers = ["https://api.example.com"]
[[routes]]
name = "api"
path_prefix = "/api"
upstream = "u"
[[routes]]
name = "health"
path = "/health"
methods = ["GET", "HEAD", "PURGE"]
[routes.respond]
status = 204
"#);
        assert_eq!(d["openapi"], "3.1.0");
        assert_eq!(d["info"]["title"], "Shop");
        assert_eq!(d["info"]["version"], "1.0.0");
        assert_eq!(d["servers"][0]["url"], "https://api.example.com");
        let api = &d["paths"]["/api/{path}"];
        let methods: Vec<&String> = api.as_object().unwrap().keys().collect();
        assert_eq!(methods, ["get", "post", "put", "patch", "delete"]);
        assert_eq!(api["get"]["parameters"][0]["name"], "path");
        assert_eq!(api["get"]["parameters"][0]["in"], "path");
        assert_eq!(api["get"][ROUTE_KEY], "api");
        for status in ["default", "400", "404", "413", "502", "503", "504"] {
            assert!(api["get"]["responses"].get(status).is_some(), "{status}");
        }
        for status in ["401", "403", "429"] {
            assert!(api["get"]["responses"].get(status).is_none(), "{status}");
        }
        assert!(api["get"].get("security").is_none());
        // Methods OpenAPI cannot name are left out; a fixed answer has no upstream errors.
        let health = &d["paths"]["/health"];
        assert_eq!(health.as_object().unwrap().len(), 2, "{health}");
        assert!(health["get"]["responses"].get("204").is_some());
        assert!(health["get"]["responses"].get("502").is_none());
        // The gateway's answers share the error schema and name the request id header.
        let not_found = &d["components"]["responses"]["NotFound"];
        assert_eq!(
            not_found["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Error"
        );
        assert!(not_found["headers"].get("X-Request-ID").is_some());
        let error = &d["components"]["schemas"]["Error"];
        assert_eq!(error["required"], json!(["error", "reason", "request_id"]));
    }

    #[test]
    fn the_request_id_header_has_its_configured_name() {
        let d = ok(r#"
[server]
request_id_header = "X-Correlation-ID"
[[routes]]
name = "api"
path_prefix = "/api"
upstream = "u"
"#);
        let headers = &d["components"]["responses"]["BadRequest"]["headers"];
        assert!(headers.get("X-Correlation-ID").is_some(), "{headers}");
        assert!(headers.get("X-Request-ID").is_none(), "{headers}");
        let default = &d["paths"]["/api/{path}"]["get"]["responses"]["default"];
        assert!(default["headers"].get("X-Correlation-ID").is_some());
    }

    #[test]
    fn security_follows_each_routes_auth_and_roles() {
        let d = ok(r#"
[auth.jwt.main]
algorithms = ["HS256"]
secret_env = "S"
[auth.api_key]
header = "X-Key"
[consumers.reporting]
keys = ["k"]
[[routes]]
name = "public"
path_prefix = "/public"
upstream = "u"
[[routes]]
name = "either"
path_prefix = "/either"
upstream = "u"
auth = ["jwt:main", "api_key"]
[[routes]]
name = "admin"
path_prefix = "/admin"
upstream = "u"
auth = ["jwt:main"]
roles = ["admin", "ops"]
"#);
        let schemes = &d["components"]["securitySchemes"];
        assert_eq!(schemes["jwt"]["scheme"], "bearer");
        assert_eq!(schemes["jwt"]["bearerFormat"], "JWT");
        assert_eq!(schemes["api_key"]["in"], "header");
        assert_eq!(schemes["api_key"]["name"], "X-Key");
        let op = |p: &str| d["paths"][p]["get"].clone();
        assert!(op("/public/{path}").get("security").is_none());
        assert!(op("/public/{path}")["responses"].get("401").is_none());
        assert_eq!(
            op("/either/{path}")["security"],
            json!([{"jwt": []}, {"api_key": []}])
        );
        assert!(op("/either/{path}")["responses"].get("401").is_some());
        assert!(op("/either/{path}")["responses"].get("403").is_none());
        // Any one role: one requirement per role.
        assert_eq!(
            op("/admin/{path}")["security"],
            json!([{"jwt": ["admin"]}, {"jwt": ["ops"]}])
        );
        assert!(op("/admin/{path}")["responses"].get("403").is_some());
    }

    #[test]
    fn no_security_scheme_without_providers_or_consumers() {
        let d = ok("[[routes]]\nname = \"a\"\npath = \"/a\"\n[routes.respond]\n");
        assert!(d["components"].get("securitySchemes").is_none());
    }

    #[test]
    fn rate_limit_headers_only_where_limits_apply() {
        let d = ok(r#"
[consumers.c]
keys = ["k"]
rate_limits = [{ limit = 5, window = "1s" }]
[[routes]]
name = "limited"
path_prefix = "/limited"
upstream = "u"
rate_limits = [{ limit = 10, window = "1m" }]
[[routes]]
name = "free"
path_prefix = "/free"
upstream = "u"
[[routes]]
name = "keyed"
path_prefix = "/keyed"
upstream = "u"
auth = ["api_key"]
"#);
        let responses = |p: &str| d["paths"][p]["get"]["responses"].clone();
        let limited = responses("/limited/{path}");
        assert_eq!(
            limited["429"]["$ref"],
            "#/components/responses/TooManyRequests"
        );
        let headers = limited["default"]["headers"].as_object().unwrap();
        for h in ["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"] {
            assert!(headers.contains_key(h), "{h}");
        }
        let too_many = &d["components"]["responses"]["TooManyRequests"]["headers"];
        for h in [
            "Retry-After",
            "RateLimit-Limit",
            "RateLimit-Remaining",
            "RateLimit-Reset",
        ] {
            assert!(too_many.get(h).is_some(), "{h}");
        }
        let free = responses("/free/{path}");
        assert!(free.get("429").is_none());
        assert!(free["default"]["headers"].get("RateLimit-Limit").is_none());
        // A consumer's own limits apply on every route it calls with its key.
        assert!(responses("/keyed/{path}").get("429").is_some());
    }

    #[test]
    fn gateway_wide_limits_apply_where_they_count_the_routes_callers() {
        let d = ok(r#"
[auth.jwt.main]
algorithms = ["HS256"]
secret_env = "S"
[[rate_limits]]
limit = 100
window = "1h"
applies_to = ["unauthenticated"]
[[routes]]
name = "public"
path_prefix = "/public"
upstream = "u"
[[routes]]
name = "private"
path_prefix = "/private"
upstream = "u"
auth = ["jwt:main"]
[[routes]]
name = "rollout"
path_prefix = "/rollout"
upstream = "u"
auth = ["jwt:main"]
shadow = ["auth"]
"#);
        let limited = |p: &str| d["paths"][p]["get"]["responses"].get("429").is_some();
        assert!(limited("/public/{path}"));
        // Authenticated first: no unauthenticated caller gets as far as the window.
        assert!(!limited("/private/{path}"));
        assert!(limited("/rollout/{path}"));
    }

    #[test]
    fn a_service_is_merged_under_a_stripped_prefix() {
        let d = ok(&format!(
            r#"
[auth.jwt.main]
algorithms = ["HS256"]
secret_env = "S"
[[routes]]
name = "orders"
path_prefix = "/api/v1/orders-svc"
upstream = "u"
strip_prefix = true
auth = ["jwt:main"]
openapi = "{}"
"#,
            fixture("orders.yaml")
        ));
        let paths = d["paths"].as_object().unwrap();
        let keys: Vec<&String> = paths.keys().collect();
        assert_eq!(
            keys,
            [
                "/api/v1/orders-svc/orders",
                "/api/v1/orders-svc/orders/{id}"
            ]
        );
        let create = &paths["/api/v1/orders-svc/orders"]["post"];
        assert_eq!(create["operationId"], "createOrder");
        assert_eq!(create[ROUTE_KEY], "orders");
        // The service's own security is replaced by the route's.
        assert_eq!(create["security"], json!([{"jwt": []}]));
        assert_eq!(
            create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/orders.NewOrder"
        );
        // The path item's parameter is on the operation.
        let get = &paths["/api/v1/orders-svc/orders/{id}"]["get"];
        assert_eq!(get["parameters"][0]["name"], "id");
        // The service's 404 and the gateway's: either body may come.
        let any = &get["responses"]["404"]["content"]["application/json"]["schema"]["anyOf"];
        assert_eq!(any[0]["$ref"], "#/components/schemas/orders.Error");
        assert_eq!(any[1]["$ref"], "#/components/schemas/Error");
        // A referenced response is inlined to carry the request id.
        let invalid = &create["responses"]["400"];
        assert_eq!(invalid["description"], "The order was refused");
        assert!(invalid["headers"].get("X-Request-ID").is_some());
        assert!(d["components"]["securitySchemes"]
            .get("orders.bearerAuth")
            .is_none());
        // The service's servers are internal.
        assert!(d.get("servers").is_none());
    }

    #[test]
    fn a_service_is_merged_under_a_rewritten_prefix_and_unreachable_paths_left_out() {
        let d = ok(&format!(
            r#"
[[routes]]
name = "users"
path_prefix = "/api/v1/users"
upstream = "u"
rewrite_prefix = "/users"
openapi = "{f}"
[[routes]]
name = "auth"
path_prefix = "/api/v1/auth"
upstream = "u"
rewrite_prefix = "/auth"
methods = ["POST"]
openapi = "{f}"
"#,
            f = fixture("users.yaml")
        ));
        let keys: Vec<&String> = d["paths"].as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "/api/v1/users/{id}",
                "/api/v1/auth/login",
                "/api/v1/auth/register"
            ]
        );
        // One file behind two routes: its components twice, once per route.
        let schemas = d["components"]["schemas"].as_object().unwrap();
        assert!(schemas.contains_key("users.User"));
        assert!(schemas.contains_key("auth.User"));
        assert_eq!(
            d["paths"]["/api/v1/auth/login"]["post"]["responses"]["200"]["content"]
                ["application/json"]["schema"]["$ref"],
            "#/components/schemas/auth.Token"
        );
        // Without a transform the service's paths must be under the route's own prefix.
        let d = ok(&format!(
            r#"
[[routes]]
name = "orders"
path_prefix = "/orders"
upstream = "u"
openapi = "{}"
"#,
            fixture("orders.yaml")
        ));
        let keys: Vec<&String> = d["paths"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["/orders", "/orders/{id}"]);
    }

    #[test]
    fn public_paths_undo_the_routes_rewrite() {
        let route = |extra: &str| {
            let text = format!("[[routes]]\nname = \"r\"\nupstream = \"u\"\n{extra}");
            crate::config::parse(&text).unwrap().routes.remove(0)
        };
        let strip = route("path_prefix = \"/api/v1/orders\"\nstrip_prefix = true");
        assert_eq!(public_path(&strip, "/").as_deref(), Some("/api/v1/orders"));
        assert_eq!(
            public_path(&strip, "/{id}").as_deref(),
            Some("/api/v1/orders/{id}")
        );
        let rewrite = route("path_prefix = \"/api/v1/orders\"\nrewrite_prefix = \"/orders\"");
        assert_eq!(
            public_path(&rewrite, "/orders").as_deref(),
            Some("/api/v1/orders")
        );
        assert_eq!(
            public_path(&rewrite, "/orders/{id}/items").as_deref(),
            Some("/api/v1/orders/{id}/items")
        );
        assert_eq!(public_path(&rewrite, "/ordersx"), None);
        assert_eq!(public_path(&rewrite, "/products"), None);
        let root = route("path_prefix = \"/\"\nrewrite_prefix = \"/v2\"");
        assert_eq!(public_path(&root, "/v2/a").as_deref(), Some("/a"));
        assert_eq!(public_path(&root, "/v2").as_deref(), Some("/"));
        let exact = route("path = \"/me\"\nrewrite_prefix = \"/users/me\"");
        assert_eq!(public_path(&exact, "/users/me").as_deref(), Some("/me"));
        assert_eq!(public_path(&exact, "/users/me/x"), None);
        let plain = route("path_prefix = \"/api\"");
        assert_eq!(public_path(&plain, "/api/x").as_deref(), Some("/api/x"));
        assert_eq!(public_path(&plain, "/apix"), None);
    }

    #[test]
    fn components_are_namespaced_per_route_and_refs_follow() {
        let d = ok(&format!(
            r#"
[[routes]]
name = "orders"
path_prefix = "/api/v1/orders"
upstream = "u"
rewrite_prefix = "/orders"
openapi = "{}"
[[routes]]
name = "payments"
path_prefix = "/api/v1/payments"
upstream = "u"
rewrite_prefix = "/payments"
openapi = "{}"
"#,
            fixture("orders.yaml"),
            fixture("payments.yaml")
        ));
        let schemas = &d["components"]["schemas"];
        // Both services define `Error`; neither replaces the other, nor the gateway's.
        assert_eq!(schemas["orders.Error"]["required"], json!(["message"]));
        assert_eq!(schemas["payments.Error"]["required"], json!(["code"]));
        assert_eq!(schemas["Error"]["required"][0], "error");
        assert_eq!(
            schemas["orders.Order"]["allOf"][0]["$ref"],
            "#/components/schemas/orders.NewOrder"
        );
        assert_eq!(
            d["components"]["parameters"]["orders.Limit"]["name"],
            "limit"
        );
        let list = &d["paths"]["/api/v1/orders"]["get"];
        assert_eq!(
            list["parameters"][0]["$ref"],
            "#/components/parameters/orders.Limit"
        );
        // 3.0 schemas become 3.1's.
        assert_eq!(
            schemas["orders.NewOrder"]["properties"]["note"]["type"],
            json!(["string", "null"])
        );
        let amount = &schemas["payments.NewPayment"]["properties"]["amount"];
        assert_eq!(amount["exclusiveMinimum"], 0);
        assert!(amount.get("minimum").is_none(), "{amount}");
        // Every `$ref` in the document resolves.
        fn refs<'v>(v: &'v Value, out: &mut Vec<&'v str>) {
            match v {
                Value::Object(m) => {
                    for (k, c) in m {
                        match (k.as_str(), c) {
                            ("$ref", Value::String(r)) => out.push(r),
                            _ => refs(c, out),
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|c| refs(c, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&d, &mut all);
        assert!(all.len() > 20);
        for r in all {
            assert!(d.pointer(&r[1..]).is_some(), "{r} does not resolve");
        }
    }

    #[test]
    fn a_service_keeps_its_security_where_the_route_asks_for_none() {
        let d = ok(&format!(
            "[[routes]]\nname = \"orders\"\npath_prefix = \"/orders\"\nupstream = \"u\"\nopenapi = \"{}\"\n",
            fixture("orders.yaml")
        ));
        assert_eq!(
            d["paths"]["/orders"]["get"]["security"],
            json!([{"orders.bearerAuth": []}])
        );
        assert_eq!(
            d["components"]["securitySchemes"]["orders.bearerAuth"]["scheme"],
            "bearer"
        );
    }

    #[test]
    fn operations_of_a_route_have_their_parameters_and_body_resolved() {
        let d = ok(&format!(
            r#"
[[routes]]
name = "orders"
path_prefix = "/api/v1/orders"
upstream = "u"
rewrite_prefix = "/orders"
openapi = "{}"
[[routes]]
name = "other"
path_prefix = "/other"
upstream = "u"
"#,
            fixture("orders.yaml")
        ));
        let ops = operations(&d, "orders");
        let names: Vec<String> = ops
            .iter()
            .map(|o| format!("{} {}", o.method, o.template))
            .collect();
        assert_eq!(
            names,
            [
                "GET /api/v1/orders",
                "POST /api/v1/orders",
                "GET /api/v1/orders/{id}"
            ]
        );
        // `$ref`ed parameters are resolved; schemas still refer to the components.
        assert_eq!(ops[0].op["parameters"][0]["name"], "limit");
        assert_eq!(
            ops[0].op["parameters"][1]["schema"]["$ref"],
            "#/components/schemas/orders.OrderStatus"
        );
        assert_eq!(ops[2].op["parameters"][0]["in"], "path");
        let body = &ops[1].op["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(body["$ref"], "#/components/schemas/orders.NewOrder");
        assert!(d.pointer("/components/schemas/orders.NewOrder").is_some());
        assert_eq!(operations(&d, "other").len(), 5);
        assert!(operations(&d, "nothing").is_empty());
    }

    #[test]
    fn a_missing_or_unusable_file_is_a_problem_at_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let route = |file: &str, extra: &str| {
            format!(
                "[[routes]]\nname = \"ok\"\npath = \"/ok\"\n[routes.respond]\n\n[[routes]]\nname = \"r\"\npath_prefix = \"/r\"\nupstream = \"u\"\nopenapi = \"{file}\"\n{extra}"
            )
        };
        let missing = dir.path().join("missing.yaml").display().to_string();
        let cases = [
            (route(&missing, ""), "cannot read"),
            (route(&write("bad.yaml", "paths: [\n"), ""), "invalid YAML"),
            (route(&write("bad.json", "{\"openapi\": "), ""), "invalid JSON"),
            (
                route(&write("swagger.yaml", "swagger: '2.0'\npaths: {}\n"), ""),
                "not an OpenAPI 3.0 or 3.1 document",
            ),
            (
                route(
                    &write(
                        "external.yaml",
                        "openapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths:\n  /x:\n    get:\n      responses:\n        '200': {$ref: 'other.yaml#/R'}\n",
                    ),
                    "",
                ),
                "points outside the components",
            ),
            (
                route(&fixture("orders.yaml"), "rewrite_regex = { pattern = \"^/r\", replace = \"/\" }"),
                "rewrite_regex",
            ),
        ];
        for (text, fragment) in cases {
            let (_, problems) = doc(&text);
            assert_eq!(problems.len(), 1, "{text}: {problems:?}");
            assert_eq!(problems[0].path, "routes[1].openapi");
            assert!(
                problems[0].message.contains(fragment),
                "{fragment}: {}",
                problems[0].message
            );
        }
        // JSON files are read as such, and 3.1 files as they are.
        let json = write(
            "svc.json",
            r#"{"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
                "paths": {"/r/x": {"get": {"responses": {"200": {"description": "ok"}}}}}}"#,
        );
        let (d, problems) = doc(&route(&json, ""));
        assert!(problems.is_empty(), "{problems:?}");
        assert!(d["paths"]["/r/x"]["get"]["responses"].get("200").is_some());
    }
}
