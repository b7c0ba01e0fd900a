//! API keys: a header value mapped to a named consumer with roles and rate limits.
//!
//! Keys are held only as SHA-256 digests (plain keys in the config are hashed at start-up).
//! A presented key is hashed and looked up by digest: the map probe can leak timing only
//! about the digest of the guess, never about a stored key, and the final comparison is
//! constant-time.

use crate::config::file::ConsumerSection;
use crate::config::FromConfig;
use crate::config::Problem;
use crate::policy::rate_limit::{RateLimitStore, RateLimits};
use http::{HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// A compiled `[consumers.NAME]`.
pub(crate) struct Consumer {
    pub name: Arc<str>,
    pub roles: Arc<[String]>,
    /// Identity headers set upstream for this consumer (name, roles).
    pub headers: Arc<[(HeaderName, HeaderValue)]>,
    pub rate_limits: Option<RateLimits>,
}

/// Every consumer's keys, by digest.
#[derive(Default)]
pub(crate) struct ApiKeys {
    pub header: Option<HeaderName>,
    by_digest: HashMap<[u8; 32], Arc<Consumer>>,
}

/// Parse `sha256:HEX` (64 hex digits).
pub(crate) fn parse_key_hash(s: &str) -> Result<[u8; 32], String> {
    let hex_digits = s.strip_prefix("sha256:").ok_or_else(|| {
        "key hashes are written \"sha256:HEX\" (printf %s KEY | sha256sum)".to_string()
    })?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut out)
        .map_err(|_| "expected 64 hex digits after \"sha256:\"".to_string())?;
    Ok(out)
}

pub(crate) fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// What the consumers' keys are read with: the header carrying a key, the header naming
/// the consumer upstream, and where their rate limits count.
pub(crate) struct KeyHeaders<'a> {
    pub header: &'a HeaderName,
    pub consumer_header: &'a HeaderName,
    pub rate_store: &'a Arc<RateLimitStore>,
}

impl FromConfig<KeyHeaders<'_>> for ApiKeys {
    type Section = BTreeMap<String, ConsumerSection>;

    /// Every `[consumers.NAME]`, its keys hashed; problems under `consumers.NAME`.
    fn from_config(
        at: &str,
        consumers: &BTreeMap<String, ConsumerSection>,
        cx: &KeyHeaders<'_>,
        problems: &mut Vec<Problem>,
    ) -> Option<ApiKeys> {
        let KeyHeaders {
            header,
            consumer_header,
            rate_store,
        } = *cx;
        let mut api_keys = ApiKeys::new(header.clone());
        for (name, c) in consumers {
            let ConsumerSection {
                keys,
                key_hashes,
                roles,
                rate_limits,
            } = c;
            let at = format!("{at}.{name}");
            if keys.is_empty() && key_hashes.is_empty() {
                problems.push(Problem::new(
                    &at,
                    "needs at least one entry in keys or key_hashes",
                ));
            }
            let mut headers = vec![];
            match HeaderValue::from_str(name) {
                Ok(v) => headers.push((consumer_header.clone(), v)),
                Err(_) => problems.push(Problem::new(
                    &at,
                    "consumer names must be valid header values",
                )),
            }
            if !roles.is_empty() {
                match HeaderValue::from_str(&roles.join(",")) {
                    Ok(v) => headers.push((HeaderName::from_static("x-user-roles"), v)),
                    Err(_) => problems.push(Problem::new(
                        format!("{at}.roles"),
                        "roles must be valid header values",
                    )),
                }
            }
            // A consumer is an API key: no claims to count by.
            let scope = super::rate_limit::Scope {
                name,
                store: rate_store,
                jwt: None,
            };
            let limits = RateLimits::from_config(
                &format!("{at}.rate_limits"),
                &rate_limits[..],
                &scope,
                problems,
            );
            let consumer = Arc::new(Consumer {
                name: name.as_str().into(),
                roles: roles.as_slice().into(),
                headers: headers.into(),
                rate_limits: limits,
            });
            let plain = keys.iter().enumerate().map(|(i, k)| {
                let at = format!("{at}.keys[{i}]");
                if k.len() < 16 {
                    Err((at, "API keys must be at least 16 characters".to_string()))
                } else {
                    Ok((at, digest(k.as_bytes())))
                }
            });
            let hashed = key_hashes.iter().enumerate().map(|(i, h)| {
                let at = format!("{at}.key_hashes[{i}]");
                parse_key_hash(h)
                    .map(|d| (at.clone(), d))
                    .map_err(|e| (at, e))
            });
            for d in plain.chain(hashed) {
                match d {
                    Ok((key_at, d)) => {
                        if !api_keys.insert(d, consumer.clone()) {
                            problems.push(Problem::new(
                                key_at,
                                "this key already belongs to another consumer",
                            ));
                        }
                    }
                    Err((key_at, e)) => problems.push(Problem::new(key_at, e)),
                }
            }
        }
        Some(api_keys)
    }
}

impl ApiKeys {
    pub(crate) fn new(header: HeaderName) -> Self {
        ApiKeys {
            header: Some(header),
            by_digest: HashMap::new(),
        }
    }

    /// Register a key digest; `false` when another consumer already holds it.
    pub(crate) fn insert(&mut self, digest: [u8; 32], consumer: Arc<Consumer>) -> bool {
        match self.by_digest.entry(digest) {
            std::collections::hash_map::Entry::Occupied(e) => Arc::ptr_eq(e.get(), &consumer),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(consumer);
                true
            }
        }
    }

    /// The consumer holding `presented`, if any.
    pub(crate) fn lookup(&self, presented: &[u8]) -> Option<&Arc<Consumer>> {
        let d = digest(presented);
        let (stored, consumer) = self.by_digest.get_key_value(&d)?;
        bool::from(stored.ct_eq(&d)).then_some(consumer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_and_plain_keys_find_the_consumer() {
        let c = Arc::new(Consumer {
            name: "mobile".into(),
            roles: Arc::from([]),
            headers: Arc::from([]),
            rate_limits: None,
        });
        let mut keys = ApiKeys::new(HeaderName::from_static("x-api-key"));
        keys.insert(digest(b"plain-key"), c.clone());
        let hashed = parse_key_hash(
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        )
        .unwrap();
        keys.insert(hashed, c);
        assert_eq!(keys.lookup(b"plain-key").map(|c| &*c.name), Some("mobile"));
        assert_eq!(
            keys.lookup(b"").map(|c| &*c.name),
            Some("mobile"),
            "sha256 of the empty string"
        );
        assert!(keys.lookup(b"wrong").is_none());
        assert!(parse_key_hash("md5:abc").is_err());
        assert!(parse_key_hash("sha256:zz").is_err());
    }
}
