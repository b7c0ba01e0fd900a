//! From verified claims to the caller's identity: `sub` to the subject header, the roles claim
//! to the roles header, and `claim_headers` to further headers.
//!
//! Only values that are safe as header values reach the upstream: visible ASCII and inner
//! spaces, no control characters, no leading or trailing whitespace. A role is also refused if
//! it contains a comma, since the roles header is comma-joined and `"reader,admin"` must not
//! turn into two roles upstream. Refused values are skipped, and skipped consistently: a role
//! the upstream cannot see is not a role the gateway authorizes with either.

use super::VerifiedToken;
use http::{HeaderName, HeaderValue};
use serde_json::Value;

/// Where a claim is found: a top-level name, or a dotted path through objects. The literal
/// name wins when both exist, so namespaced claims such as `https://example.com/roles` work.
#[derive(Debug, Clone)]
pub(super) struct ClaimPath {
    literal: String,
    steps: Vec<String>,
}

impl ClaimPath {
    pub(super) fn new(path: &str) -> ClaimPath {
        ClaimPath {
            literal: path.to_string(),
            steps: path.split('.').map(String::from).collect(),
        }
    }

    /// As written in the configuration (`tenant`, `org.id`).
    pub(super) fn literal(&self) -> &str {
        &self.literal
    }

    fn find<'a>(&self, claims: &'a Value) -> Option<&'a Value> {
        if let Some(v) = claims.get(&self.literal) {
            return Some(v);
        }
        if self.steps.len() < 2 {
            return None;
        }
        self.steps
            .iter()
            .try_fold(claims, |node, step| node.get(step))
    }
}

/// The compiled claim-to-header mapping of one provider.
pub(super) struct ClaimMap {
    pub(super) subject_header: HeaderName,
    pub(super) roles_header: HeaderName,
    pub(super) roles_claim: ClaimPath,
    pub(super) claim_headers: Vec<(ClaimPath, HeaderName)>,
}

impl ClaimMap {
    /// Every header name this mapping can set, without repeats.
    pub(super) fn header_names(&self) -> Vec<HeaderName> {
        let mut names = vec![self.subject_header.clone(), self.roles_header.clone()];
        for (_, h) in &self.claim_headers {
            if !names.contains(h) {
                names.push(h.clone());
            }
        }
        names
    }

    /// The identity a verified token's claims describe.
    pub(super) fn identity(&self, claims: &Value) -> VerifiedToken {
        let mut headers = Vec::with_capacity(2 + self.claim_headers.len());
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .and_then(|s| safe_value(s).map(|v| (s, v)))
            .map(|(s, v)| {
                headers.push((self.subject_header.clone(), v));
                s.to_string()
            });
        let roles: Vec<String> = match self.roles_claim.find(claims) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .filter(|r| is_role(r))
                .map(String::from)
                .collect(),
            Some(Value::String(s)) => s
                .split_ascii_whitespace()
                .filter(|r| is_role(r))
                .map(String::from)
                .collect(),
            _ => Vec::new(),
        };
        if !roles.is_empty() {
            if let Some(v) = safe_value(&roles.join(",")) {
                headers.push((self.roles_header.clone(), v));
            }
        }
        for (path, header) in &self.claim_headers {
            let value = match path.find(claims) {
                Some(Value::String(s)) => safe_value(s),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => safe_value(&v.to_string()),
                _ => None,
            };
            if let Some(v) = value {
                headers.push((header.clone(), v));
            }
        }
        VerifiedToken {
            subject: subject.map(Into::into),
            roles: roles.into(),
            headers: headers.into(),
        }
    }
}

/// A header value for `s`, if `s` is non-empty visible ASCII with inner spaces only.
fn safe_value(s: &str) -> Option<HeaderValue> {
    let bytes = s.as_bytes();
    let visible = |b: &u8| (0x21..=0x7e).contains(b);
    let ok = bytes.first().is_some_and(visible)
        && bytes.last().is_some_and(visible)
        && bytes.iter().all(|b| *b == b' ' || visible(b));
    if ok {
        HeaderValue::from_str(s).ok()
    } else {
        None
    }
}

fn is_role(r: &str) -> bool {
    !r.contains(',') && safe_value(r).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(roles_claim: &str, extra: &[(&str, &str)]) -> ClaimMap {
        ClaimMap {
            subject_header: HeaderName::from_static("x-user-id"),
            roles_header: HeaderName::from_static("x-user-roles"),
            roles_claim: ClaimPath::new(roles_claim),
            claim_headers: extra
                .iter()
                .map(|(c, h)| {
                    (
                        ClaimPath::new(c),
                        HeaderName::from_bytes(h.as_bytes()).unwrap(),
                    )
                })
                .collect(),
        }
    }

    fn header<'a>(t: &'a VerifiedToken, name: &str) -> Option<&'a str> {
        t.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.to_str().ok())
    }

    #[test]
    fn roles_from_array_space_separated_string_and_nested_path() {
        let rows = [
            (
                "roles",
                json!({"roles": ["admin", "ops"]}),
                vec!["admin", "ops"],
            ),
            (
                "scope",
                json!({"scope": "read  write"}),
                vec!["read", "write"],
            ),
            (
                "realm_access.roles",
                json!({"realm_access": {"roles": ["a", "b"]}}),
                vec!["a", "b"],
            ),
            (
                "https://example.com/roles",
                json!({"https://example.com/roles": ["ns"]}),
                vec!["ns"],
            ),
            (
                "roles",
                json!({"roles": [1, true, "x", {"y": 1}]}),
                vec!["x"],
            ),
            ("roles", json!({"roles": 7}), vec![]),
            (
                "realm_access.roles",
                json!({"realm_access": "flat"}),
                vec![],
            ),
            ("roles", json!({}), vec![]),
        ];
        for (claim, claims, want) in rows {
            let t = map(claim, &[]).identity(&claims);
            assert_eq!(*t.roles, *want, "{claim} in {claims}");
            let joined = want.join(",");
            assert_eq!(
                header(&t, "x-user-roles"),
                (!want.is_empty()).then_some(joined.as_str()),
                "{claim}"
            );
        }
    }

    #[test]
    fn unsafe_values_are_skipped_everywhere() {
        let m = map("roles", &[("email", "X-User-Email"), ("n", "X-N")]);
        let t = m.identity(&json!({
            "sub": "alice\r\nx-admin: 1",
            "roles": ["reader,admin", "ok", " padded", "tab\there", "é"],
            "email": "bob\u{0}@example.com",
            "n": 42,
        }));
        assert_eq!(t.subject, None);
        assert_eq!(header(&t, "x-user-id"), None);
        assert_eq!(*t.roles, ["ok"]);
        assert_eq!(header(&t, "x-user-roles"), Some("ok"));
        assert_eq!(header(&t, "x-user-email"), None);
        assert_eq!(header(&t, "x-n"), Some("42"));
    }

    #[test]
    fn claim_headers_map_strings_numbers_and_bools_only() {
        let m = map(
            "roles",
            &[
                ("email", "X-User-Email"),
                ("tenant.id", "X-Tenant"),
                ("admin", "X-Admin"),
                ("groups", "X-Groups"),
                ("missing", "X-Missing"),
            ],
        );
        let t = m.identity(&json!({
            "sub": "user-1", "email": "a@b.example", "tenant": {"id": 9},
            "admin": false, "groups": ["g"],
        }));
        assert_eq!(t.subject.as_deref(), Some("user-1"));
        assert_eq!(header(&t, "x-user-id"), Some("user-1"));
        assert_eq!(header(&t, "x-user-email"), Some("a@b.example"));
        assert_eq!(header(&t, "x-tenant"), Some("9"));
        assert_eq!(header(&t, "x-admin"), Some("false"));
        assert_eq!(header(&t, "x-groups"), None);
        assert_eq!(header(&t, "x-missing"), None);
        assert_eq!(
            m.header_names(),
            [
                "x-user-id",
                "x-user-roles",
                "x-user-email",
                "x-tenant",
                "x-admin",
                "x-groups",
                "x-missing"
            ]
        );
    }
}
