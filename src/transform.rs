//! Request and response transforms configured per route: header set/append/remove/rename,
//! default security headers, and JSON body field renames for bridging API versions.
//!
//! Header transforms are applied in a fixed order: remove, rename, set, append. Body renames
//! buffer the body only on routes that configure them and only for JSON content; every
//! other body streams through untouched.

use crate::config::types::header_pairs;
use crate::config::FromConfig;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::SpelledName;
use std::collections::BTreeMap;

/// One direction's header edits, compiled.
#[derive(Debug, Default, Clone)]
pub struct HeaderTransform {
    /// Headers removed.
    pub remove: Vec<HeaderName>,
    /// Headers renamed, old name to new.
    pub rename: Vec<(HeaderName, HeaderName)>,
    /// Headers set, replacing any value.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Values appended to what is there.
    pub append: Vec<(HeaderName, HeaderValue)>,
}

impl FromConfig for HeaderTransform {
    type Section = crate::config::file::HeaderEditsSection;

    /// `[routes.request_headers]` / `[routes.response_headers]`, problems at `at.KEY.NAME`.
    fn from_config(
        at: &str,
        e: &crate::config::file::HeaderEditsSection,
        _cx: &(),
        problems: &mut Vec<crate::config::Problem>,
    ) -> Option<HeaderTransform> {
        let crate::config::file::HeaderEditsSection {
            set,
            append,
            remove,
            rename,
        } = e;
        let before = problems.len();
        let remove = remove
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.get(&format!("{at}.remove[{i}]"), problems).cloned())
            .collect();
        let rename = rename
            .iter()
            .filter_map(|(from, to)| {
                let at = format!("{at}.rename.{from}");
                Some((
                    from.get(&at, problems)?.clone(),
                    to.get(&at, problems)?.clone(),
                ))
            })
            .collect();
        let transform = HeaderTransform {
            remove,
            rename,
            set: header_pairs(&format!("{at}.set"), set, problems),
            append: header_pairs(&format!("{at}.append"), append, problems),
        };
        (problems.len() == before).then_some(transform)
    }
}

impl HeaderTransform {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.append.is_empty()
    }

    /// Apply to a request or response head, in the order remove, rename, set, append.
    pub fn apply<H: HeaderEdit>(&self, head: &mut H) -> pingora::Result<()> {
        for name in &self.remove {
            head.remove(name);
        }
        for (from, to) in &self.rename {
            let values: Vec<HeaderValue> = head.headers().get_all(from).iter().cloned().collect();
            if values.is_empty() {
                continue;
            }
            head.remove(from);
            for v in values {
                head.append(to.clone(), v)?;
            }
        }
        for (name, value) in &self.set {
            head.insert(name.clone(), value.clone())?;
        }
        for (name, value) in &self.append {
            head.append(name.clone(), value.clone())?;
        }
        Ok(())
    }
}

/// Header edits on Pingora's request and response heads (which keep header case, so they
/// are edited through their own methods rather than the raw map).
pub trait HeaderEdit {
    fn headers(&self) -> &HeaderMap;
    fn remove(&mut self, name: &HeaderName);
    fn insert(&mut self, name: HeaderName, value: HeaderValue) -> pingora::Result<()>;
    fn append(&mut self, name: HeaderName, value: HeaderValue) -> pingora::Result<()>;
}

macro_rules! header_edit {
    ($t:ty) => {
        impl HeaderEdit for $t {
            fn headers(&self) -> &HeaderMap {
                &self.headers
            }
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            fn insert(&mut self, name: HeaderName, value: HeaderValue) -> pingora::Result<()> {
                self.insert_header(name, value)
            }
            fn append(&mut self, name: HeaderName, value: HeaderValue) -> pingora::Result<()> {
                self.append_header(name, value).map(|_| ())
            }
        }
    };
}

header_edit!(pingora::http::RequestHeader);
header_edit!(pingora::http::ResponseHeader);

/// The default security headers (on unless a route turns them off); an upstream's own value
/// wins over the default.
///
/// Each name is held with its spelling, so adding it to a response allocates nothing.
pub(crate) fn security_headers(hsts: Option<&HeaderValue>) -> Vec<(SpelledName, HeaderValue)> {
    let mut h = vec![
        (
            SpelledName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        ),
        (
            SpelledName::from_static("x-frame-options"),
            HeaderValue::from_static("DENY"),
        ),
        (
            SpelledName::from_static("referrer-policy"),
            HeaderValue::from_static("strict-origin-when-cross-origin"),
        ),
    ];
    if let Some(v) = hsts {
        h.push((
            SpelledName::from_static("strict-transport-security"),
            v.clone(),
        ));
    }
    h
}

/// Top-level JSON field renames (`{"user_name": ...}` to `{"userName": ...}`), applied to an
/// object or to each object of an array.
#[derive(Debug, Default, Clone)]
pub(crate) struct JsonRename {
    pub fields: Vec<(String, String)>,
}

impl FromConfig for JsonRename {
    type Section = BTreeMap<String, String>;

    /// `json_rename_request` / `json_rename_response`: old name to new name.
    fn from_config(
        _at: &str,
        map: &BTreeMap<String, String>,
        _cx: &(),
        _problems: &mut Vec<crate::config::Problem>,
    ) -> Option<JsonRename> {
        Some(JsonRename {
            fields: map.iter().map(|(a, b)| (a.clone(), b.clone())).collect(),
        })
    }
}

impl JsonRename {
    pub(crate) fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Whether a `Content-Type` is JSON (`application/json`, `application/*+json`).
    pub(crate) fn applies_to(content_type: Option<&HeaderValue>) -> bool {
        let Some(ct) = content_type.and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
    }

    /// The renamed document, or `None` when `body` is not valid JSON (then it passes as is).
    pub(crate) fn apply(&self, body: &[u8]) -> Option<Bytes> {
        let mut doc: serde_json::Value = serde_json::from_slice(body).ok()?;
        let rename = |obj: &mut serde_json::Map<String, serde_json::Value>| {
            for (from, to) in &self.fields {
                if let Some(v) = obj.remove(from) {
                    obj.insert(to.clone(), v);
                }
            }
        };
        match &mut doc {
            serde_json::Value::Object(obj) => rename(obj),
            serde_json::Value::Array(items) => items.iter_mut().for_each(|i| {
                if let serde_json::Value::Object(obj) = i {
                    rename(obj)
                }
            }),
            _ => {}
        }
        serde_json::to_vec(&doc).ok().map(Bytes::from)
    }
}

/// Collects a body that is being transformed, bounded so a huge body cannot exhaust memory.
#[derive(Debug, Default)]
pub(crate) struct BodyBuffer {
    buf: BytesMut,
    /// Set once the body outgrew the limit: it then streams through untransformed.
    pub overflowed: bool,
}

impl BodyBuffer {
    /// Largest body a JSON rename buffers.
    pub(crate) const LIMIT: usize = 8 * 1024 * 1024;

    /// Feed a chunk; returns what to send on now (nothing while buffering).
    pub(crate) fn feed(
        &mut self,
        chunk: Option<Bytes>,
        end: bool,
        rename: &JsonRename,
    ) -> Option<Bytes> {
        if self.overflowed {
            return chunk;
        }
        if let Some(c) = chunk {
            self.buf.extend_from_slice(&c);
        }
        if self.buf.len() > Self::LIMIT {
            self.overflowed = true;
            return Some(std::mem::take(&mut self.buf).freeze());
        }
        if !end {
            return None;
        }
        let whole = std::mem::take(&mut self.buf).freeze();
        Some(rename.apply(&whole).unwrap_or(whole))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_edits_in_order() {
        let section: crate::config::file::HeaderEditsSection = toml::from_str(
            r#"
set = { x-env = "prod" }
append = { x-tag = "edge" }
remove = ["x-debug"]
rename = { x-old = "x-new" }
"#,
        )
        .unwrap();
        let t = HeaderTransform::from_config("t", &section, &(), &mut Vec::new()).unwrap();
        let mut req = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-debug", "1").unwrap();
        req.insert_header("x-old", "v").unwrap();
        req.insert_header("x-env", "dev").unwrap();
        req.insert_header("x-tag", "client").unwrap();
        t.apply(&mut req).unwrap();
        let h = &req.headers;
        assert!(h.get("x-debug").is_none());
        assert!(h.get("x-old").is_none());
        assert_eq!(h["x-new"], "v");
        assert_eq!(h["x-env"], "prod");
        let tags: Vec<_> = h.get_all("x-tag").iter().collect();
        assert_eq!(tags, ["client", "edge"]);
    }

    #[test]
    fn json_rename_objects_and_arrays() {
        let r = JsonRename {
            fields: vec![("user_name".into(), "userName".into())],
        };
        assert_eq!(
            r.apply(br#"{"user_name":"a","id":1}"#).unwrap(),
            Bytes::from(r#"{"id":1,"userName":"a"}"#)
        );
        assert_eq!(
            r.apply(br#"[{"user_name":"a"},2]"#).unwrap(),
            Bytes::from(r#"[{"userName":"a"},2]"#)
        );
        assert!(r.apply(b"not json").is_none());
        assert!(JsonRename::applies_to(Some(&HeaderValue::from_static(
            "application/json; charset=utf-8"
        ))));
        assert!(JsonRename::applies_to(Some(&HeaderValue::from_static(
            "application/problem+json"
        ))));
        assert!(!JsonRename::applies_to(Some(&HeaderValue::from_static(
            "text/html"
        ))));
    }

    #[test]
    fn buffer_withholds_until_end() {
        let r = JsonRename {
            fields: vec![("a".into(), "b".into())],
        };
        let mut buf = BodyBuffer::default();
        assert_eq!(
            buf.feed(Some(Bytes::from_static(b"{\"a\"")), false, &r),
            None
        );
        assert_eq!(
            buf.feed(Some(Bytes::from_static(b":1}")), true, &r),
            Some(Bytes::from_static(b"{\"b\":1}"))
        );
    }
}
