//! Request validation against a route's OpenAPI operations (`validate = "request"`): the
//! path matches an operation of the route's published document (its `openapi` file merged
//! under the route's public prefix), its path, query and header parameters hold, and a JSON
//! body matches the operation's schema. A violation is a 400 whose JSON body names the field
//! and the rule, before the upstream is called.
//!
//! Built once per generation from the published document (`crate::describe`): every schema
//! is compiled when the configuration loads, so a request pays a match on its path and the
//! schema checks, nothing else. The head is checked in the chain; the body, when the
//! operation has a JSON schema for it, is read whole before the upstream is called (at most
//! [`MAX_VALIDATED_BODY`] bytes, the body Pingora can replay to the upstream).

use crate::config::Problem;
use crate::describe::openapi;
use crate::error::Reject;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use jsonschema::Validator as Schema;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// Largest body a validated operation reads before calling the upstream: Pingora's replay
/// buffer (`BODY_BUF_LIMIT`), from which the body is sent on.
/// NOTE(pingora-0.9): pingora-core/src/protocols/http/v1/common.rs `BODY_BUF_LIMIT`.
pub(crate) const MAX_VALIDATED_BODY: usize = 64 * 1024;

/// What the operation says about each request, compiled.
pub(crate) struct Validator {
    operations: Vec<Operation>,
}

struct Operation {
    method: Method,
    /// The public path template, split at `/`.
    segments: Vec<Segment>,
    /// Number of literal segments, so the most literal template wins (OpenAPI: concrete
    /// paths before templated ones).
    literals: usize,
    /// As the document writes it (`/api/v1/orders/{id}`), for messages.
    template: String,
    params: Vec<Param>,
    body: Option<Body>,
}

enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum In {
    Path,
    Query,
    Header,
}

impl In {
    fn as_str(self) -> &'static str {
        match self {
            In::Path => "path",
            In::Query => "query",
            In::Header => "header",
        }
    }
}

struct Param {
    name: String,
    at: In,
    required: bool,
    /// The schema's `type`, to read the text as: `integer`, `number`, `boolean`, `array`
    /// (of the items' type), or a string.
    shape: Shape,
    schema: Option<Schema>,
}

#[derive(Clone, Copy)]
enum Shape {
    Text,
    Integer,
    Number,
    Boolean,
    Array(Scalar),
}

#[derive(Clone, Copy)]
enum Scalar {
    Text,
    Integer,
    Number,
    Boolean,
}

struct Body {
    required: bool,
    /// The JSON schema of an `application/json` body; `None`: any JSON.
    schema: Option<Schema>,
    /// The operation takes JSON only: any other media type is refused.
    json_only: bool,
}

/// One operation a request matched, by its index.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Matched(usize);

/// Why a request is refused: the field and the rule, in the JSON error body.
#[derive(Debug, Clone)]
pub(crate) struct Violation {
    pub status: StatusCode,
    pub field: String,
    pub rule: String,
}

impl Violation {
    fn bad(field: impl Into<String>, rule: impl Into<String>) -> Violation {
        Violation {
            status: StatusCode::BAD_REQUEST,
            field: field.into(),
            rule: rule.into(),
        }
    }

    /// The reason word (`docs/observability.md`): `request_invalid`, `no_operation`,
    /// `method_not_documented`, `body_too_large_to_validate`.
    pub(crate) fn reason(&self) -> &'static str {
        match self.status {
            StatusCode::NOT_FOUND => "no_operation",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_documented",
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large_to_validate",
            _ => "request_invalid",
        }
    }

    /// The refusal: `{"error", "reason", "field", "rule", "request_id"}`.
    pub(crate) fn reject(&self, request_id: &str) -> Reject {
        let message = match self.status {
            StatusCode::NOT_FOUND => "no such operation",
            StatusCode::METHOD_NOT_ALLOWED => "method not documented",
            StatusCode::PAYLOAD_TOO_LARGE => "request body too large to validate",
            _ => "request invalid",
        };
        let reason = self.reason();
        let mut r = Reject::new(self.status, message).because(reason);
        let body = serde_json::json!({
            "error": message,
            "reason": reason,
            "field": self.field,
            "rule": self.rule,
            "request_id": request_id,
        });
        r.headers.push((
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ));
        r.body = Some(bytes::Bytes::from(body.to_string()));
        r
    }
}

impl Validator {
    /// The operations of `route` in the published document `doc` (tagged
    /// `x-tollgate-route`), problems under `at` (`routes[N].validate`).
    pub(crate) fn build(
        at: &str,
        doc: &Value,
        route: &str,
        problems: &mut Vec<Problem>,
    ) -> Option<Validator> {
        let before = problems.len();
        let components = doc.get("components").cloned().unwrap_or(Value::Null);
        let mut operations = Vec::new();
        // The route's operations as the published document has them: the path item's
        // parameters merged in, parameters and bodies with their `$ref`s followed.
        for found in openapi::operations(doc, route) {
            let Ok(method) = found.method.parse::<Method>() else {
                continue;
            };
            let template = found.template;
            let at = format!("{at} ({method} {template})");
            let cx = Compile {
                at: &at,
                doc,
                components: &components,
            };
            let params = found
                .op
                .get("parameters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| cx.param(p, problems))
                .collect();
            let body = found
                .op
                .get("requestBody")
                .and_then(|b| cx.body(b, problems));
            let segments: Vec<Segment> = template
                .split('/')
                .skip(1)
                .map(
                    |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                        Some(name) => Segment::Param(name.to_string()),
                        None => Segment::Literal(s.to_string()),
                    },
                )
                .collect();
            let literals = segments
                .iter()
                .filter(|s| matches!(s, Segment::Literal(_)))
                .count();
            operations.push(Operation {
                method,
                segments,
                literals,
                template,
                params,
                body,
            });
        }
        if operations.is_empty() && problems.len() == before {
            problems.push(Problem::new(
                at,
                "the route's openapi document has no operation to validate against",
            ));
        }
        // The most literal template first, so `/orders/search` wins over `/orders/{id}`.
        operations.sort_by_key(|o| std::cmp::Reverse(o.literals));
        (problems.len() == before).then_some(Validator { operations })
    }

    /// The operation `method path` is, and whether its path, query and headers hold.
    pub(crate) fn check_head(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Matched, Violation> {
        let mut path_found = false;
        let mut allowed: Vec<&str> = Vec::new();
        for (i, op) in self.operations.iter().enumerate() {
            let Some(values) = op.matches(path) else {
                continue;
            };
            path_found = true;
            if op.method != *method {
                allowed.push(op.method.as_str());
                continue;
            }
            op.check_params(&values, query, headers)?;
            return Ok(Matched(i));
        }
        if path_found {
            allowed.sort_unstable();
            allowed.dedup();
            return Err(Violation {
                status: StatusCode::METHOD_NOT_ALLOWED,
                field: "method".into(),
                rule: format!(
                    "{method} is not documented here; documented: {}",
                    allowed.join(", ")
                ),
            });
        }
        Err(Violation {
            status: StatusCode::NOT_FOUND,
            field: "path".into(),
            rule: format!("{path} matches no documented operation"),
        })
    }

    /// Whether the matched operation reads the body before the upstream is called.
    pub(crate) fn checks_body(&self, m: Matched) -> bool {
        self.operations[m.0].body.is_some()
    }

    /// Whether `body` (of media type `content_type`) is what the operation takes.
    pub(crate) fn check_body(
        &self,
        m: Matched,
        content_type: Option<&HeaderValue>,
        body: &[u8],
    ) -> Result<(), Violation> {
        let Some(spec) = &self.operations[m.0].body else {
            return Ok(());
        };
        if body.is_empty() {
            return if spec.required {
                Err(Violation::bad("body", "required"))
            } else {
                Ok(())
            };
        }
        let json = content_type
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .is_some_and(|t| t == "application/json" || t.ends_with("+json"));
        if !json {
            if spec.json_only {
                return Err(Violation::bad(
                    "content-type",
                    "the operation takes application/json",
                ));
            }
            return Ok(());
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| Violation::bad("body", format!("not JSON: {e}")))?;
        if let Some(schema) = &spec.schema {
            if let Err(e) = schema.validate(&value) {
                let at = e.instance_path().to_string();
                let field = if at.is_empty() {
                    "body".to_string()
                } else {
                    format!("body{at}")
                };
                return Err(Violation::bad(field, e.to_string()));
            }
        }
        Ok(())
    }

    /// How `tollgate explain` names the operation matched.
    pub(crate) fn describe(&self, m: Matched) -> String {
        let op = &self.operations[m.0];
        format!("{} {}", op.method, op.template)
    }
}

impl Operation {
    /// The path parameters' values when `path` fits the template.
    fn matches<'p>(&self, path: &'p str) -> Option<Vec<(&str, &'p str)>> {
        let mut parts = path.split('/').skip(1);
        let mut values = Vec::new();
        for seg in &self.segments {
            let part = parts.next()?;
            match seg {
                Segment::Literal(l) => {
                    if l != part {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    if part.is_empty() {
                        return None;
                    }
                    values.push((name.as_str(), part));
                }
            }
        }
        parts.next().is_none().then_some(values)
    }

    fn check_params(
        &self,
        path_values: &[(&str, &str)],
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<(), Violation> {
        let pairs: Vec<(Cow<'_, str>, Cow<'_, str>)> = query
            .map(|q| form_urlencoded::parse(q.as_bytes()).collect())
            .unwrap_or_default();
        for p in &self.params {
            let texts: Vec<Cow<'_, str>> = match p.at {
                In::Path => path_values
                    .iter()
                    .filter(|(n, _)| *n == p.name)
                    .map(|(_, v)| percent_encoding::percent_decode_str(v).decode_utf8_lossy())
                    .collect(),
                In::Query => pairs
                    .iter()
                    .filter(|(n, _)| *n == p.name)
                    .map(|(_, v)| v.clone())
                    .collect(),
                In::Header => headers
                    .get_all(p.name.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(Cow::Borrowed)
                    .collect(),
            };
            let field = format!("{}.{}", p.at.as_str(), p.name);
            if texts.is_empty() {
                if p.required {
                    return Err(Violation::bad(field, "required"));
                }
                continue;
            }
            let value = p
                .shape
                .read(&texts)
                .map_err(|rule| Violation::bad(&field, rule))?;
            if let Some(schema) = &p.schema {
                if let Err(e) = schema.validate(&value) {
                    return Err(Violation::bad(field, e.to_string()));
                }
            }
        }
        Ok(())
    }
}

impl Shape {
    fn of(schema: &Value) -> Shape {
        match schema.get("type").and_then(Value::as_str) {
            Some("integer") => Shape::Integer,
            Some("number") => Shape::Number,
            Some("boolean") => Shape::Boolean,
            Some("array") => Shape::Array(
                match schema
                    .get("items")
                    .and_then(|i| i.get("type"))
                    .and_then(Value::as_str)
                {
                    Some("integer") => Scalar::Integer,
                    Some("number") => Scalar::Number,
                    Some("boolean") => Scalar::Boolean,
                    _ => Scalar::Text,
                },
            ),
            _ => Shape::Text,
        }
    }

    /// The JSON value the parameter's text means (OpenAPI's default styles: `form` with
    /// `explode` for query arrays, `simple` for path and header arrays).
    fn read(self, texts: &[Cow<'_, str>]) -> Result<Value, String> {
        let scalar = |s: Scalar, t: &str| -> Result<Value, String> {
            match s {
                Scalar::Text => Ok(Value::String(t.to_string())),
                Scalar::Integer => t
                    .parse::<i64>()
                    .map(Value::from)
                    .map_err(|_| format!("{t:?} is not an integer")),
                Scalar::Number => t
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .ok_or_else(|| format!("{t:?} is not a number")),
                Scalar::Boolean => match t {
                    "true" => Ok(Value::Bool(true)),
                    "false" => Ok(Value::Bool(false)),
                    _ => Err(format!("{t:?} is not a boolean")),
                },
            }
        };
        let first = texts.first().map_or("", |t| t.as_ref());
        match self {
            Shape::Text => Ok(Value::String(first.to_string())),
            Shape::Integer => scalar(Scalar::Integer, first),
            Shape::Number => scalar(Scalar::Number, first),
            Shape::Boolean => scalar(Scalar::Boolean, first),
            Shape::Array(s) => {
                let items: Vec<&str> = if texts.len() > 1 {
                    texts.iter().map(|t| t.as_ref()).collect()
                } else {
                    first.split(',').collect()
                };
                items
                    .into_iter()
                    .map(|t| scalar(s, t))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array)
            }
        }
    }
}

/// What compiling one operation needs.
struct Compile<'a> {
    at: &'a str,
    doc: &'a Value,
    components: &'a Value,
}

impl<'a> Compile<'a> {
    fn schema(&self, schema: &Value, problems: &mut Vec<Problem>) -> Option<Schema> {
        // The document's components ride along, so `#/components/schemas/...` resolves.
        let mut root = match schema {
            Value::Object(m) => m.clone(),
            Value::Bool(true) => return None,
            other => {
                let mut m = Map::new();
                m.insert("allOf".into(), Value::Array(vec![other.clone()]));
                m
            }
        };
        if !self.components.is_null() {
            root.insert("components".into(), self.components.clone());
        }
        let root = Value::Object(root);
        // The published document is OpenAPI 3.1, whose schemas are JSON Schema 2020-12
        // (`crate::describe` converts a service's 3.0 schemas when it merges them).
        match jsonschema::draft202012::options().build(&root) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(Problem::new(
                    self.at,
                    format!("schema does not compile: {e}"),
                ));
                None
            }
        }
    }

    /// A parameter ([`openapi::operations`] followed its `$ref`).
    fn param(&self, p: &Value, problems: &mut Vec<Problem>) -> Option<Param> {
        let at = match p.get("in").and_then(Value::as_str)? {
            "path" => In::Path,
            "query" => In::Query,
            "header" => In::Header,
            _ => return None, // cookies are not checked
        };
        let name = p.get("name").and_then(Value::as_str)?;
        let name = if at == In::Header {
            name.to_ascii_lowercase()
        } else {
            name.to_string()
        };
        let schema = p.get("schema").map(|s| openapi::deref(self.doc, s));
        Some(Param {
            required: at == In::Path || p.get("required").and_then(Value::as_bool).unwrap_or(false),
            shape: schema.map_or(Shape::Text, Shape::of),
            schema: schema.and_then(|s| self.schema(s, problems)),
            name,
            at,
        })
    }

    /// A request body ([`openapi::operations`] followed its `$ref`).
    fn body(&self, b: &Value, problems: &mut Vec<Problem>) -> Option<Body> {
        let content = b.get("content")?.as_object()?;
        let json = content
            .iter()
            .find(|(t, _)| *t == "application/json" || t.ends_with("+json"))
            .map(|(_, m)| m);
        let json_only = content
            .keys()
            .all(|t| t == "application/json" || t.ends_with("+json"));
        let json = json?;
        Some(Body {
            required: b.get("required").and_then(Value::as_bool).unwrap_or(false),
            schema: json.get("schema").and_then(|s| self.schema(s, problems)),
            json_only,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "openapi": "3.1.0",
            "paths": {
                "/api/orders": {
                    "post": {
                        "x-tollgate-route": "orders",
                        "parameters": [{"name": "X-Tenant", "in": "header", "required": true, "schema": {"type": "string"}}],
                        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/orders.NewOrder"}}}}
                    },
                    "get": {
                        "x-tollgate-route": "orders",
                        "parameters": [
                            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                            {"name": "status", "in": "query", "schema": {"type": "array", "items": {"type": "string", "enum": ["open", "paid"]}}}
                        ]
                    }
                },
                "/api/orders/{id}": {
                    "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 1}}],
                    "get": {"x-tollgate-route": "orders"}
                },
                "/api/orders/search": {"get": {"x-tollgate-route": "orders"}},
                "/other": {"get": {"x-tollgate-route": "other"}}
            },
            "components": {"schemas": {"orders.NewOrder": {
                "type": "object",
                "required": ["sku", "quantity"],
                "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}}
            }}}
        })
    }

    fn validator() -> Validator {
        let mut problems = Vec::new();
        let v = Validator::build("routes[0].validate", &doc(), "orders", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        v.unwrap()
    }

    fn head(v: &Validator, m: &str, path: &str, q: Option<&str>) -> Result<Matched, Violation> {
        let mut h = HeaderMap::new();
        h.insert("x-tenant", HeaderValue::from_static("t1"));
        v.check_head(&m.parse().unwrap(), path, q, &h)
    }

    #[test]
    fn parameters_are_read_as_their_schema_types() {
        let v = validator();
        assert!(head(
            &v,
            "GET",
            "/api/orders",
            Some("limit=10&status=open&status=paid")
        )
        .is_ok());
        let e = head(&v, "GET", "/api/orders", Some("limit=0")).unwrap_err();
        assert_eq!(e.field, "query.limit");
        let e = head(&v, "GET", "/api/orders", Some("limit=ten")).unwrap_err();
        assert!(e.rule.contains("not an integer"), "{}", e.rule);
        let e = head(&v, "GET", "/api/orders", Some("status=lost")).unwrap_err();
        assert_eq!(e.field, "query.status");
        assert!(head(&v, "GET", "/api/orders/7", None).is_ok());
        let e = head(&v, "GET", "/api/orders/0", None).unwrap_err();
        assert_eq!(e.field, "path.id");
    }

    #[test]
    fn a_literal_template_wins_over_a_templated_one() {
        let v = validator();
        let m = head(&v, "GET", "/api/orders/search", None).unwrap();
        assert_eq!(v.describe(m), "GET /api/orders/search");
    }

    #[test]
    fn unknown_paths_and_methods_are_refused_with_what_is_documented() {
        let v = validator();
        assert_eq!(head(&v, "GET", "/api/nope", None).unwrap_err().status, 404);
        assert_eq!(head(&v, "GET", "/other", None).unwrap_err().status, 404);
        let e = head(&v, "DELETE", "/api/orders", None).unwrap_err();
        assert_eq!(e.status, 405);
        assert!(e.rule.contains("GET, POST"), "{}", e.rule);
    }

    #[test]
    fn required_headers_and_bodies_against_referenced_schemas() {
        let v = validator();
        let e = v
            .check_head(&Method::POST, "/api/orders", None, &HeaderMap::new())
            .unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.rule.as_str()),
            ("header.x-tenant", "required")
        );
        let m = head(&v, "POST", "/api/orders", None).unwrap();
        assert!(v.checks_body(m));
        let json = HeaderValue::from_static("application/json");
        assert!(v
            .check_body(m, Some(&json), br#"{"sku":"a","quantity":2}"#)
            .is_ok());
        let e = v
            .check_body(m, Some(&json), br#"{"sku":"a","quantity":0}"#)
            .unwrap_err();
        assert_eq!(e.field, "body/quantity");
        let e = v.check_body(m, Some(&json), br#"{"sku":"a"}"#).unwrap_err();
        assert_eq!(e.field, "body");
        assert!(e.rule.contains("quantity"), "{}", e.rule);
        assert_eq!(
            v.check_body(m, Some(&json), b"").unwrap_err().rule,
            "required"
        );
        assert!(v
            .check_body(m, Some(&json), b"{")
            .unwrap_err()
            .rule
            .starts_with("not JSON"));
        let text = HeaderValue::from_static("text/plain");
        assert_eq!(
            v.check_body(m, Some(&text), b"x").unwrap_err().field,
            "content-type"
        );
    }

    #[test]
    fn a_route_without_operations_is_a_problem() {
        let mut problems = Vec::new();
        assert!(Validator::build("routes[1].validate", &doc(), "none", &mut problems).is_none());
        assert_eq!(problems.len(), 1);
    }
}
