//! Verification keys of a JWT provider: the HS secret, PEM public keys and JWKS documents,
//! each tagged with the only algorithms it may verify.
//!
//! A key verifies algorithms of its own family only (an HS secret never verifies an RS token;
//! an RSA public key is never an HMAC secret), narrowed further by the curve of an EC key and
//! by a JWK's own `alg`. Reading files and fetching URLs is the provider's and the fetcher's
//! job; this module turns bytes into keys.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::str::FromStr;

/// Shortest HS secret accepted: 256 bits, the HS256 output size (RFC 7518 section 3.2).
pub(super) const MIN_SECRET_BYTES: usize = 32;
/// Most keys taken from one JWKS document; the rest are skipped.
pub(super) const MAX_JWKS_KEYS: usize = 100;

/// One verification key and the algorithms it may verify.
pub(super) struct Key {
    pub(super) key: DecodingKey,
    family: AlgorithmFamily,
    /// The one algorithm this key verifies, when its curve or its JWK `alg` says.
    only: Option<Algorithm>,
}

impl Key {
    fn new(key: DecodingKey, only: Option<Algorithm>) -> Key {
        Key {
            family: key.family(),
            key,
            only,
        }
    }

    /// Whether this key may verify a token signed with `alg`.
    pub(super) fn verifies(&self, alg: Algorithm) -> bool {
        self.family == alg.family() && self.only.is_none_or(|a| a == alg)
    }

    pub(super) fn family(&self) -> AlgorithmFamily {
        self.family
    }
}

/// A provider's keys: those a `kid` names, and those without one (the secret, PEM keys and
/// kid-less JWKs).
#[derive(Default)]
pub(super) struct KeySet {
    pub(super) by_kid: HashMap<String, Vec<Key>>,
    pub(super) anonymous: Vec<Key>,
    /// Changes whenever the key material changes, so cached verifications can be dropped.
    pub(super) fingerprint: u64,
}

impl KeySet {
    pub(super) fn is_empty(&self) -> bool {
        self.by_kid.is_empty() && self.anonymous.is_empty()
    }

    /// Whether `kid` names a key that verifies `alg`.
    pub(super) fn knows(&self, kid: &str, alg: Algorithm) -> bool {
        self.by_kid
            .get(kid)
            .is_some_and(|keys| keys.iter().any(|k| k.verifies(alg)))
    }

    pub(super) fn extend(&mut self, other: KeySet) {
        for (kid, keys) in other.by_kid {
            self.by_kid.entry(kid).or_default().extend(keys);
        }
        self.anonymous.extend(other.anonymous);
    }
}

/// Why an HS secret was refused. Never carries the secret itself.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SecretError {
    Empty,
    TooShort(usize),
    LooksLikePem,
}

impl std::fmt::Display for SecretError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretError::Empty => write!(f, "is empty"),
            SecretError::TooShort(n) => write!(
                f,
                "is {n} bytes; HS secrets must be at least {MIN_SECRET_BYTES} random bytes"
            ),
            SecretError::LooksLikePem => write!(
                f,
                "holds a PEM key; an HS secret must be random bytes, and a public key must \
                 never be used as an HMAC secret (use public_key_files for RS/PS/ES/EdDSA)"
            ),
        }
    }
}

/// The HS secret as a key, once its bytes pass the checks.
pub(super) fn secret_key(secret: &[u8]) -> Result<Key, SecretError> {
    let trimmed = secret.trim_ascii_start();
    if secret.is_empty() {
        return Err(SecretError::Empty);
    }
    if trimmed.starts_with(b"-----BEGIN") {
        return Err(SecretError::LooksLikePem);
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(SecretError::TooShort(secret.len()));
    }
    Ok(Key::new(DecodingKey::from_secret(secret), None))
}

/// One PEM public key of any supported type (RSA, EC P-256/P-384, Ed25519).
pub(super) fn pem_key(pem: &[u8]) -> Result<Key, String> {
    if pem.windows(16).any(|w| w == b"PRIVATE KEY-----") {
        return Err("holds a private key; give the gateway the public key only".into());
    }
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok(Key::new(k, None));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        // The key is the uncompressed point: its length gives the curve.
        let only = match k.try_get_as_bytes().map(<[u8]>::len) {
            Ok(65) => Algorithm::ES256,
            Ok(97) => Algorithm::ES384,
            _ => return Err("unsupported EC curve; use P-256 (ES256) or P-384 (ES384)".into()),
        };
        return Ok(Key::new(k, Some(only)));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        return Ok(Key::new(k, None));
    }
    Err("not a PEM RSA, EC (P-256/P-384) or Ed25519 public key".into())
}

/// The signing keys of a JWKS document, and how many keys were skipped (encryption keys,
/// symmetric `oct` keys, unsupported curves or algorithms, keys that do not parse, keys past
/// [`MAX_JWKS_KEYS`]). Only a document that is not a JWKS at all is an error.
pub(super) fn jwks_keys(text: &str) -> Result<(KeySet, usize), String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<Value>,
    }
    let doc: Document = serde_json::from_str(text)
        .map_err(|e| format!("not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
    let mut set = KeySet::default();
    let mut skipped = doc.keys.len().saturating_sub(MAX_JWKS_KEYS);
    let mut hasher = DefaultHasher::new();
    for value in doc.keys.iter().take(MAX_JWKS_KEYS) {
        match jwk_key(value) {
            Some((kid, key)) => {
                value.to_string().hash(&mut hasher);
                match kid {
                    Some(kid) => set.by_kid.entry(kid).or_default().push(key),
                    None => set.anonymous.push(key),
                }
            }
            None => skipped += 1,
        }
    }
    set.fingerprint = hasher.finish();
    Ok((set, skipped))
}

/// One JWK as a verification key, if it is a signing key we support.
fn jwk_key(value: &Value) -> Option<(Option<String>, Key)> {
    // Read `use`, `key_ops` and `alg` from the JSON itself: jsonwebtoken's enums reject
    // values they do not know, and an unknown value must skip the key, not accept it.
    if value.get("use").is_some_and(|u| u != "sig") {
        return None;
    }
    if let Some(ops) = value.get("key_ops") {
        let verify = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op == "verify"));
        if !verify {
            return None;
        }
    }
    let alg = match value.get("alg") {
        None => None,
        Some(Value::String(name)) => Some(Algorithm::from_str(name).ok()?),
        Some(_) => return None,
    };
    let kid = match value.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return None,
    };
    let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
    let (family, curve_alg) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, None),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => (AlgorithmFamily::Ec, Some(Algorithm::ES256)),
            EllipticCurve::P384 => (AlgorithmFamily::Ec, Some(Algorithm::ES384)),
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => (AlgorithmFamily::Ed, None),
            _ => return None,
        },
        // Symmetric (`oct`) keys have no place in a JWKS: a published HMAC key is no secret.
        _ => return None,
    };
    if let Some(a) = alg {
        if a.family() != family || curve_alg.is_some_and(|c| c != a) {
            return None;
        }
    }
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    if key.family() != family {
        return None;
    }
    // An EC point whose length does not match its curve would never verify anything.
    if let Some(c) = curve_alg {
        let expected = if c == Algorithm::ES256 { 65 } else { 97 };
        if key.try_get_as_bytes().map(<[u8]>::len).ok() != Some(expected) {
            return None;
        }
    }
    Some((kid, Key::new(key, alg.or(curve_alg))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_checked_without_echoing_them() {
        assert_eq!(secret_key(b"").err(), Some(SecretError::Empty));
        assert_eq!(secret_key(b"short").err(), Some(SecretError::TooShort(5)));
        let pem = b"-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----\n";
        assert_eq!(secret_key(pem).err(), Some(SecretError::LooksLikePem));
        let key = secret_key(&[7u8; 32]).map_err(|e| e.to_string()).unwrap();
        assert!(key.verifies(Algorithm::HS256) && key.verifies(Algorithm::HS512));
        assert!(!key.verifies(Algorithm::RS256));
        for e in [SecretError::TooShort(5), SecretError::LooksLikePem] {
            assert!(!e.to_string().contains("MIIB"));
        }
    }

    #[test]
    fn private_and_unknown_pem_are_refused() {
        let private = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(pem_key(private).err().unwrap().contains("private key"));
        assert!(pem_key(b"hello").is_err());
    }

    #[test]
    fn jwks_skips_what_cannot_verify_signatures() {
        let doc = serde_json::json!({ "keys": [
            // usable: EC P-256 pinned to ES256 by its curve
            { "kty": "EC", "crv": "P-256", "kid": "ec",
              "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
              "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0" },
            // encryption key
            { "kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc",
              "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
              "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0" },
            // alg of another family than its kty
            { "kty": "EC", "crv": "P-256", "kid": "mismatch", "alg": "RS256",
              "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
              "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0" },
            // symmetric
            { "kty": "oct", "kid": "hmac", "k": "c2VjcmV0" },
            // key_ops without verify
            { "kty": "OKP", "crv": "Ed25519", "kid": "ops", "key_ops": ["sign"],
              "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" },
            // usable, no kid
            { "kty": "OKP", "crv": "Ed25519",
              "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" },
            // unknown kty
            { "kty": "XYZ", "kid": "odd" }
        ]});
        let (set, skipped) = jwks_keys(&doc.to_string()).unwrap();
        assert_eq!(skipped, 5);
        assert!(set.knows("ec", Algorithm::ES256));
        assert!(!set.knows("ec", Algorithm::ES384));
        assert!(!set.knows("hmac", Algorithm::HS256));
        assert_eq!(set.anonymous.len(), 1);
        assert!(set.anonymous[0].verifies(Algorithm::EdDSA));
        assert!(jwks_keys("{\"nokeys\": 1}").is_err());
        let (again, _) = jwks_keys(&doc.to_string()).unwrap();
        assert_eq!(again.fingerprint, set.fingerprint);
    }
}
