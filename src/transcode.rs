//! HTTP/JSON to gRPC transcoding (`[routes.transcode]`): a JSON client calls a gRPC method
//! by plain HTTP. Bindings come from the service's descriptor set (`protoc --include_imports
//! --descriptor_set_out`, loaded with `prost-reflect`): the methods' `google.api.http` rules,
//! and the route's explicit `[[routes.transcode.methods]]` table for methods without one.
//!
//! A call: the path template's `{captures}`, the query string and the JSON body (all of it,
//! or one field, as the binding's `body` says) become the request message by the proto3 JSON
//! mapping (an unknown field or a malformed value is a 400 naming it); it goes to a target of
//! the route's group as a gRPC call over HTTP/2; the reply message comes back as JSON, a
//! server stream as newline-delimited JSON (one message per line, flushed as it arrives), and
//! a gRPC error status as the matching HTTP status with `{"error", "code", "request_id"}`.

use crate::config::file::{TranscodeMethodSection, TranscodeSection};
use crate::config::FromConfig;
use crate::config::Problem;
use crate::grpc::{self, Code, Frame};
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, MethodDescriptor,
    SerializeOptions, Value,
};
use serde_json::{Map, Value as Json};

/// Largest gRPC reply message read (the client's body is bounded by `max_body_size`).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    /// `{field}` or `{field=*}`: one segment into the field; `*`: one segment, unbound.
    One(Option<String>),
    /// `{field=**}`: the rest of the path; `**`: the rest, unbound.
    Rest(Option<String>),
}

/// A path template (`/v1/shelves/{shelf}/books/{id}`).
#[derive(Debug, Clone)]
struct Template {
    segments: Vec<Segment>,
    /// `:verb` after the last segment.
    verb: Option<String>,
}

impl Template {
    fn parse(t: &str) -> Result<Template, String> {
        let path = t
            .strip_prefix('/')
            .ok_or_else(|| format!("template {t:?} must start with '/'"))?;
        let (path, verb) = match path.rsplit_once(':') {
            Some((p, v)) if !v.contains('/') && !v.contains('}') => (p, Some(v.to_string())),
            _ => (path, None),
        };
        let mut segments = Vec::new();
        for seg in path.split('/') {
            let s = match seg {
                "" => return Err(format!("template {t:?} has an empty segment")),
                "*" => Segment::One(None),
                "**" => Segment::Rest(None),
                s if s.starts_with('{') && s.ends_with('}') => {
                    let inner = &s[1..s.len() - 1];
                    let (field, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
                    let field = Some(field.to_string());
                    match pattern {
                        "*" => Segment::One(field),
                        "**" => Segment::Rest(field),
                        p => {
                            return Err(format!(
                                "template {t:?}: the pattern {p:?} of a variable is not \
                                 supported (only `*` and `**`)"
                            ))
                        }
                    }
                }
                s if s.contains(['{', '}', '*']) => {
                    return Err(format!("template {t:?}: malformed segment {s:?}"))
                }
                s => Segment::Literal(s.to_string()),
            };
            segments.push(s);
        }
        if let Some(i) = segments.iter().position(|s| matches!(s, Segment::Rest(_))) {
            if i + 1 != segments.len() {
                return Err(format!("template {t:?}: `**` must be the last segment"));
            }
        }
        Ok(Template { segments, verb })
    }

    /// The captured fields when `path` matches, `None` otherwise.
    fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(v) => path.strip_suffix(v.as_str())?.strip_suffix(':')?,
            None => path,
        };
        let parts: Vec<&str> = path.split('/').collect();
        let mut caps = Vec::new();
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Literal(l) => {
                    if parts.get(i)? != l {
                        return None;
                    }
                }
                Segment::One(field) => {
                    let p = parts.get(i).filter(|p| !p.is_empty())?;
                    if let Some(f) = field {
                        caps.push((f.clone(), decode(p)?));
                    }
                }
                Segment::Rest(field) => {
                    let rest = parts.get(i..)?.join("/");
                    if let Some(f) = field {
                        caps.push((f.clone(), decode(&rest)?));
                    }
                    return Some(caps);
                }
            }
        }
        (parts.len() == self.segments.len()).then_some(caps)
    }

    /// Literal segments count first: `/books/latest` wins over `/books/{id}`.
    fn specificity(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count()
    }
}

fn decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// Where the request body goes in the request message.
#[derive(Debug, Clone, PartialEq)]
enum BodyTarget {
    /// No body: fields come from the path and query.
    None,
    /// `body: "*"`: the whole message.
    Whole,
    /// `body: "field"`: that field.
    Field(String),
}

/// One HTTP method and path template bound to a gRPC method.
#[derive(Debug, Clone)]
struct Binding {
    http_method: Method,
    template: Template,
    body: BodyTarget,
    method: MethodDescriptor,
}

/// A compiled `[routes.transcode]`.
pub(crate) struct Transcoder {
    bindings: Vec<Binding>,
}

impl std::fmt::Debug for Transcoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcoder")
            .field("bindings", &self.bindings.len())
            .finish()
    }
}

/// What one HTTP request maps to.
pub(crate) struct Call {
    /// `/package.Service/Method`.
    pub path: String,
    /// The request message, framed.
    pub body: Bytes,
    pub server_streaming: bool,
    output: MessageDescriptor,
}

/// A request that cannot be transcoded, said to the client.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    fn bad(message: String) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            message,
        }
    }
}

impl FromConfig for Transcoder {
    type Section = TranscodeSection;

    /// `[routes.transcode]`, problems at `at`.
    fn from_config(
        at: &str,
        t: &TranscodeSection,
        _cx: &(),
        problems: &mut Vec<Problem>,
    ) -> Option<Transcoder> {
        let TranscodeSection {
            descriptor,
            services,
            methods,
        } = t;
        let pool = match std::fs::read(descriptor)
            .map_err(|e| e.to_string())
            .and_then(|b| DescriptorPool::decode(b.as_slice()).map_err(|e| e.to_string()))
        {
            Ok(p) => p,
            Err(e) => {
                problems.push(Problem::new(
                    format!("{at}.descriptor"),
                    format!("cannot load the descriptor set {descriptor}: {e}"),
                ));
                return None;
            }
        };
        let before = problems.len();
        let chosen: Vec<_> = if services.is_empty() {
            pool.services().collect()
        } else {
            services
                .iter()
                .enumerate()
                .filter_map(|(i, name)| {
                    let s = pool.get_service_by_name(name);
                    if s.is_none() {
                        problems.push(Problem::new(
                            format!("{at}.services[{i}]"),
                            format!("no service {name:?} in {descriptor}"),
                        ));
                    }
                    s
                })
                .collect()
        };
        let mut bindings = Vec::new();
        if let Some(ext) = pool.get_extension_by_name("google.api.http") {
            for method in chosen.iter().flat_map(|s| s.methods()) {
                let options = method.options();
                if !options.has_extension(&ext) {
                    continue;
                }
                if let Value::Message(rule) = options.get_extension(&ext).as_ref() {
                    let name = method.full_name().to_string();
                    rule_bindings(at, &name, rule, &method, &mut bindings, problems);
                }
            }
        }
        for (i, m) in methods.iter().enumerate() {
            let at = format!("{at}.methods[{i}]");
            if let Some(b) = explicit_binding(&at, m, &pool, problems) {
                bindings.push(b);
            }
        }
        if bindings.is_empty() && problems.len() == before {
            problems.push(Problem::new(
                at,
                "binds no method: none has a google.api.http rule (is the descriptor set \
                 built with --include_imports?) and [[routes.transcode.methods]] is empty",
            ));
        }
        // The most literal template first; equal ones keep their order.
        bindings.sort_by_key(|b| std::cmp::Reverse(b.template.specificity()));
        (problems.len() == before).then_some(Transcoder { bindings })
    }
}

impl Transcoder {
    /// `GET /v1/...` -> `package.Service/Method` lines (`tollgate explain`, docs).
    pub(crate) fn describe(&self) -> Vec<String> {
        self.bindings
            .iter()
            .map(|b| format!("{} -> {}", b.http_method, b.method.full_name()))
            .collect()
    }

    /// The gRPC call for an HTTP request, its body already read.
    pub(crate) fn call(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Call, Refusal> {
        let found = self.bindings.iter().find_map(|b| {
            (b.http_method == *method)
                .then(|| b.template.matches(path))
                .flatten()
                .map(|caps| (b, caps))
        });
        let Some((b, caps)) = found else {
            return Err(Refusal {
                status: StatusCode::NOT_FOUND,
                message: format!("no gRPC method is bound to {method} {path}"),
            });
        };
        let input = b.method.input();
        let mut json = match &b.body {
            BodyTarget::None => Json::Object(Map::new()),
            BodyTarget::Whole => parse_body(body)?,
            BodyTarget::Field(f) => {
                let mut m = Map::new();
                m.insert(f.clone(), parse_body(body)?);
                Json::Object(m)
            }
        };
        for (field, value) in caps {
            set_path(&mut json, &input, &field, &value, false)
                .map_err(|e| Refusal::bad(format!("path parameter {field}: {e}")))?;
        }
        if b.body != BodyTarget::Whole {
            for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
                set_path(&mut json, &input, &k, &v, true)
                    .map_err(|e| Refusal::bad(format!("query parameter {k}: {e}")))?;
            }
        }
        let options = DeserializeOptions::new().deny_unknown_fields(true);
        let msg = DynamicMessage::deserialize_with_options(input, json, &options)
            .map_err(|e| Refusal::bad(format!("invalid request: {e}")))?;
        Ok(Call {
            path: format!(
                "/{}/{}",
                b.method.parent_service().full_name(),
                b.method.name()
            ),
            body: grpc::frame(&prost::Message::encode_to_vec(&msg)),
            server_streaming: b.method.is_server_streaming(),
            output: b.method.output(),
        })
    }
}

fn parse_body(body: &[u8]) -> Result<Json, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Json::Object(Map::new()));
    }
    serde_json::from_slice(body).map_err(|e| Refusal::bad(format!("malformed JSON body: {e}")))
}

/// Put the text `value` at the dotted field path `path` of `json`, as the JSON the field's
/// type takes; repeated fields collect every value when `append`.
fn set_path(
    json: &mut Json,
    desc: &MessageDescriptor,
    path: &str,
    value: &str,
    append: bool,
) -> Result<(), String> {
    let mut desc = desc.clone();
    let mut at = json;
    let names: Vec<&str> = path.split('.').collect();
    for (i, name) in names.iter().enumerate() {
        let field = desc
            .get_field_by_name(name)
            .or_else(|| desc.get_field_by_json_name(name))
            .ok_or_else(|| format!("unknown field {name:?} in {}", desc.full_name()))?;
        let Json::Object(obj) = at else {
            return Err(format!("{name:?} is not inside a message"));
        };
        if i + 1 < names.len() {
            let Kind::Message(inner) = field.kind() else {
                return Err(format!("{name:?} is not a message"));
            };
            desc = inner;
            at = obj
                .entry(field.name().to_string())
                .or_insert_with(|| Json::Object(Map::new()));
            continue;
        }
        let v = scalar(&field.kind(), value)?;
        if field.is_list() {
            let list = obj
                .entry(field.name().to_string())
                .or_insert_with(|| Json::Array(Vec::new()));
            match list {
                Json::Array(a) if append => a.push(v),
                _ => *list = Json::Array(vec![v]),
            }
        } else {
            obj.insert(field.name().to_string(), v);
        }
        return Ok(());
    }
    Ok(())
}

/// A path or query value as the JSON the proto3 mapping accepts for `kind`.
fn scalar(kind: &Kind, v: &str) -> Result<Json, String> {
    Ok(match kind {
        Kind::Bool => match v {
            "true" => Json::Bool(true),
            "false" => Json::Bool(false),
            _ => return Err(format!("{v:?} is not true or false")),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 => v
            .parse::<i64>()
            .map(Json::from)
            .map_err(|_| format!("{v:?} is not an integer"))?,
        Kind::Float | Kind::Double => match v.parse::<f64>() {
            Ok(f) if f.is_finite() => Json::from(f),
            _ => Json::String(v.to_string()),
        },
        Kind::Message(m) => {
            return Err(format!("{} cannot be set from text", m.full_name()));
        }
        // 64-bit integers, enums, strings and bytes take a JSON string.
        _ => Json::String(v.to_string()),
    })
}

fn rule_bindings(
    at: &str,
    name: &str,
    rule: &DynamicMessage,
    method: &MethodDescriptor,
    out: &mut Vec<Binding>,
    problems: &mut Vec<Problem>,
) {
    let text = |f: &str| -> String {
        rule.get_field_by_name(f)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let pattern = ["get", "put", "post", "delete", "patch"]
        .iter()
        .find(|m| rule.has_field_by_name(m))
        .map(|m| (m.to_ascii_uppercase(), text(m)))
        .or_else(|| {
            let custom = rule.get_field_by_name("custom")?;
            let c = custom.as_message()?;
            let kind = c.get_field_by_name("kind")?.as_str()?.to_string();
            let path = c.get_field_by_name("path")?.as_str()?.to_string();
            Some((kind, path))
        });
    if let Some((verb, path)) = pattern {
        let where_ = format!("{at}: google.api.http of {name}");
        if let Some(b) = binding(&where_, &verb, &path, &text("body"), method, problems) {
            out.push(b);
        }
    }
    if let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").as_deref() {
        for r in more {
            if let Some(m) = r.as_message() {
                rule_bindings(at, name, m, method, out, problems);
            }
        }
    }
}

fn explicit_binding(
    at: &str,
    m: &TranscodeMethodSection,
    pool: &DescriptorPool,
    problems: &mut Vec<Problem>,
) -> Option<Binding> {
    let TranscodeMethodSection {
        method,
        path,
        grpc,
        body,
    } = m;
    let found = grpc.split_once('/').and_then(|(svc, name)| {
        pool.get_service_by_name(svc)?
            .methods()
            .find(|m| m.name() == name)
    });
    let Some(target) = found else {
        problems.push(Problem::new(
            format!("{at}.grpc"),
            format!("no method {grpc:?} in the descriptor set (write it package.Service/Method)"),
        ));
        return None;
    };
    binding(at, method, path, body, &target, problems)
}

fn binding(
    at: &str,
    verb: &str,
    path: &str,
    body: &str,
    method: &MethodDescriptor,
    problems: &mut Vec<Problem>,
) -> Option<Binding> {
    let before = problems.len();
    let http_method = Method::from_bytes(verb.as_bytes())
        .ok()
        .filter(|_| verb.to_ascii_uppercase() == verb);
    if http_method.is_none() {
        problems.push(Problem::new(at, format!("invalid HTTP method {verb:?}")));
    }
    let template = Template::parse(path)
        .map_err(|e| problems.push(Problem::new(at, e)))
        .ok();
    let input = method.input();
    let body = match body {
        "" => BodyTarget::None,
        "*" => BodyTarget::Whole,
        f => {
            if input.get_field_by_name(f).is_none() {
                problems.push(Problem::new(
                    at,
                    format!("body field {f:?} is not a field of {}", input.full_name()),
                ));
            }
            BodyTarget::Field(f.to_string())
        }
    };
    if let Some(t) = &template {
        for seg in &t.segments {
            if let Segment::One(Some(f)) | Segment::Rest(Some(f)) = seg {
                let top = f.split('.').next().unwrap_or(f);
                if input.get_field_by_name(top).is_none() {
                    problems.push(Problem::new(
                        at,
                        format!(
                            "path variable {f:?} is not a field of {}",
                            input.full_name()
                        ),
                    ));
                }
            }
        }
    }
    match (http_method, template) {
        (Some(http_method), Some(template)) if problems.len() == before => Some(Binding {
            http_method,
            template,
            body,
            method: method.clone(),
        }),
        _ => None,
    }
}

impl Call {
    /// The request head of the gRPC call.
    pub(crate) fn request(
        &self,
        authority: &str,
        extra: &[(HeaderName, HeaderValue)],
    ) -> pingora::prelude::Result<pingora::http::RequestHeader> {
        let mut req = pingora::http::RequestHeader::build("POST", self.path.as_bytes(), None)?;
        req.insert_header(http::header::HOST, authority)?;
        req.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
        req.insert_header(http::header::TE, "trailers")?;
        for (k, v) in extra {
            req.insert_header(k.clone(), v.clone())?;
        }
        Ok(req)
    }

    /// One reply message as a JSON document.
    pub(crate) fn reply_json(&self, msg: &[u8]) -> Result<Bytes, String> {
        let msg = DynamicMessage::decode(self.output.clone(), msg)
            .map_err(|e| format!("malformed reply: {e}"))?;
        let mut out = Vec::new();
        let mut ser = serde_json::Serializer::new(&mut out);
        msg.serialize_with_options(&mut ser, &SerializeOptions::new())
            .map_err(|e| format!("reply not representable as JSON: {e}"))?;
        Ok(Bytes::from(out))
    }
}

/// Pulls whole frames out of a gRPC response body as it arrives.
#[derive(Default)]
pub(crate) struct Deframer {
    buf: BytesMut,
}

impl Deframer {
    /// Add a chunk; the complete messages so far.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<Vec<Bytes>, String> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                if len as usize > MAX_MESSAGE {
                    return Err(format!("reply message of {len} bytes is too large"));
                }
            }
            let Some((frame, rest)) = grpc::next_frame(&self.buf) else {
                return Ok(out);
            };
            let used = self.buf.len() - rest.len();
            match frame {
                Frame::Message(m) => out.push(Bytes::copy_from_slice(m)),
                Frame::Compressed => {
                    return Err("compressed reply messages are not supported".into())
                }
            }
            let _ = self.buf.split_to(used);
        }
    }

    /// Bytes left that do not make a whole frame.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// The JSON error body for a gRPC status.
pub(crate) fn error_body(code: Code, message: &str, request_id: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "error": message,
            "code": code.name(),
            "request_id": request_id,
        })
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_and_capture() {
        let t = Template::parse("/v1/shelves/{shelf}/books/{id}").unwrap();
        assert_eq!(
            t.matches("/v1/shelves/fiction/books/7"),
            Some(vec![
                ("shelf".into(), "fiction".into()),
                ("id".into(), "7".into())
            ])
        );
        assert_eq!(t.matches("/v1/shelves/fiction/books"), None);
        assert_eq!(t.matches("/v1/shelves/fiction/books/7/x"), None);
        let rest = Template::parse("/v1/{name=**}").unwrap();
        assert_eq!(
            rest.matches("/v1/a/b%20c"),
            Some(vec![("name".into(), "a/b c".into())])
        );
        let verb = Template::parse("/v1/books/{id}:archive").unwrap();
        assert_eq!(
            verb.matches("/v1/books/3:archive"),
            Some(vec![("id".into(), "3".into())])
        );
        assert!(Template::parse("v1/x").is_err());
        assert!(Template::parse("/v1/{name=shelves/*}").is_err());
        assert!(Template::parse("/v1/**/x").is_err());
    }

    #[test]
    fn deframer_reassembles_split_frames() {
        let mut d = Deframer::default();
        let mut wire = grpc::frame(b"one").to_vec();
        wire.extend_from_slice(&grpc::frame(b"two"));
        let (a, b) = wire.split_at(6);
        assert_eq!(d.push(a).unwrap(), Vec::<Bytes>::new());
        assert_eq!(
            d.push(b).unwrap(),
            vec![Bytes::from("one"), Bytes::from("two")]
        );
        assert!(d.is_empty());
    }
}
