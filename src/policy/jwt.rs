//! JWT verification for `[auth.jwt.NAME]` providers, with `jsonwebtoken`.
//!
//! Algorithms are pinned twice: a token's `alg` must be in the provider's list, and a key only
//! verifies algorithms of its own family (an HS secret never verifies an RS token, and an RSA
//! public key is never used as an HMAC secret). `alg: none` cannot pass either check. `exp` is
//! required; `exp` and `nbf` are checked with the configured leeway, then `iss` and `aud`.
//! Tokens over 8 KiB or without exactly three segments are refused before any decoding.
//!
//! Keys: an HS secret from an environment variable or a file, PEM public keys (RSA, EC,
//! Ed25519), a JWKS file, and a JWKS URL. The URL is fetched by a background service (at start
//! and every `jwks_refresh`); a token whose `kid` is unknown triggers one more fetch, at most
//! once per `jwks_min_refresh`, shared by concurrent requests, and waits for it (bounded).
//! `kid` is only a map key; `jku` and `x5u` are never followed. JWKS symmetric (`oct`) keys
//! are ignored: JWKS is for public keys.
//!
//! Verified tokens are cached (bounded, never past `exp`, at most a minute) so a repeated
//! token skips the signature check. The crypto backend is `rust_crypto` (pure Rust: no
//! C toolchain for aws-lc), and a token is signed and verified at start-up as a self-test,
//! so a missing backend fails at start instead of on the first request.

use crate::config::file::JwtSection;
use crate::config::Problem;
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora_memory_cache::MemoryCache;
use serde_json::Value;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest token accepted.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest a verified token stays cached.
const CACHE_TTL_MAX: Duration = Duration::from_secs(60);
/// Longest a request waits for a JWKS refresh triggered by an unknown `kid`.
const KID_REFRESH_WAIT: Duration = Duration::from_secs(3);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a token was refused; `reason()` is the `auth_failures_total` label and the JSON
/// error text, and never contains token or key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    Malformed,
    TooLarge,
    AlgorithmNotAllowed,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
}

impl JwtError {
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Malformed => "malformed_token",
            JwtError::TooLarge => "token_too_large",
            JwtError::AlgorithmNotAllowed => "algorithm_not_allowed",
            JwtError::UnknownKey => "unknown_key",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "token_expired",
            JwtError::NotYetValid => "token_not_yet_valid",
            JwtError::WrongIssuer => "wrong_issuer",
            JwtError::WrongAudience => "wrong_audience",
        }
    }
}

/// What a verified token says about the caller.
#[derive(Debug, Clone, Default)]
pub struct VerifiedToken {
    pub subject: Option<String>,
    pub roles: Vec<String>,
    /// Headers to set upstream (subject, roles, mapped claims).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Key families, as `jsonwebtoken` groups algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(alg: Algorithm) -> Family {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
        Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
        Algorithm::EdDSA => Family::Ed,
        _ => Family::Rsa,
    }
}

/// One verification key.
#[derive(Clone)]
struct Key {
    key: DecodingKey,
    family: Family,
    /// The only algorithm a JWK allows, when it says.
    only: Option<Algorithm>,
}

impl Key {
    fn verifies(&self, alg: Algorithm) -> bool {
        self.family == family(alg) && self.only.is_none_or(|a| a == alg)
    }
}

/// The keys a provider verifies with: by `kid`, and without one.
#[derive(Clone, Default)]
struct KeySet {
    by_kid: HashMap<String, Key>,
    anonymous: Vec<Key>,
}

/// A compiled JWT provider.
pub struct JwtProvider {
    pub name: Arc<str>,
    algorithms: Vec<Algorithm>,
    /// Keys from the secret, PEM files and the JWKS file: fixed at start.
    fixed: KeySet,
    /// Keys from the JWKS URL: replaced by each fetch.
    fetched: RwLock<Arc<KeySet>>,
    jwks_url: Option<String>,
    jwks_refresh: Duration,
    jwks_min_refresh: Duration,
    /// When the JWKS was last fetched; the lock also makes concurrent misses share one fetch.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    http: Option<reqwest::Client>,
    leeway: u64,
    issuer: Option<String>,
    audience: Vec<String>,
    roles_claim: Vec<String>,
    subject_header: HeaderName,
    roles_header: HeaderName,
    claim_headers: Vec<(String, HeaderName)>,
    mapped_headers: Vec<HeaderName>,
    /// Verified tokens by token; the token is kept with its entry and compared on a hit,
    /// since the cache itself keys by a 64-bit hash.
    cache: Option<MemoryCache<String, CachedToken>>,
}

/// A cache entry: the token it was verified from, and what it said.
type CachedToken = Arc<(Box<str>, VerifiedToken)>;

fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, (usize, String)> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            Algorithm::from_str(n).map_err(|_| {
                (
                    i,
                    format!("unknown algorithm {n:?}; use HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA"),
                )
            })
        })
        .collect()
}

/// Load one PEM public key of any supported type.
fn pem_key(pem: &[u8]) -> Result<Key, String> {
    let key = |key, family| Key {
        key,
        family,
        only: None,
    };
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok(key(k, Family::Rsa));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Ok(key(k, Family::Ec));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        return Ok(key(k, Family::Ed));
    }
    Err("not a PEM RSA, EC or Ed25519 public key".into())
}

/// The public keys of a JWKS document.
fn jwks_keys(text: &str) -> Result<KeySet, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = KeySet::default();
    for jwk in &set.keys {
        let fam = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(_) => Family::Ec,
            AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
            // Symmetric or unknown keys have no place in a JWKS we fetch.
            _ => continue,
        };
        let Ok(decoding) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        // A JWK may pin its algorithm; keys for encryption algorithms are not for us.
        let only = match jwk.common.key_algorithm {
            Some(a) => match Algorithm::from_str(&format!("{a:?}")) {
                Ok(alg) => Some(alg),
                Err(_) => continue,
            },
            None => None,
        };
        let key = Key {
            key: decoding,
            family: fam,
            only,
        };
        match &jwk.common.key_id {
            Some(kid) => {
                keys.by_kid.insert(kid.clone(), key);
            }
            None => keys.anonymous.push(key),
        }
    }
    Ok(keys)
}

fn header_name(at: &str, key: &str, name: &str) -> Result<HeaderName, Problem> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        Problem::new(
            format!("{at}.{key}"),
            format!("invalid header name {name:?}"),
        )
    })
}

impl JwtProvider {
    /// Problems in a provider's section, located under `at` (e.g. `auth.jwt.main`).
    pub fn validate(at: &str, s: &JwtSection) -> Vec<Problem> {
        let mut p = Vec::new();
        let algs = match parse_algorithms(&s.algorithms) {
            Ok(a) => a,
            Err((i, msg)) => {
                p.push(Problem::new(format!("{at}.algorithms[{i}]"), msg));
                return p;
            }
        };
        if algs.is_empty() {
            p.push(Problem::new(
                format!("{at}.algorithms"),
                "list at least one algorithm",
            ));
        }
        let has_secret = s.secret_env.is_some() || s.secret_file.is_some();
        let has_public =
            !s.public_key_files.is_empty() || s.jwks_file.is_some() || s.jwks_url.is_some();
        if s.secret_env.is_some() && s.secret_file.is_some() {
            p.push(Problem::new(
                format!("{at}.secret_file"),
                "set either secret_env or secret_file, not both",
            ));
        }
        for (i, alg) in algs.iter().enumerate() {
            let hmac = family(*alg) == Family::Hmac;
            if hmac && !has_secret {
                p.push(Problem::new(
                    format!("{at}.algorithms[{i}]"),
                    format!("{alg:?} needs secret_env or secret_file"),
                ));
            }
            if !hmac && !has_public {
                p.push(Problem::new(
                    format!("{at}.algorithms[{i}]"),
                    format!("{alg:?} needs public_key_files, jwks_file or jwks_url"),
                ));
            }
        }
        if has_secret && !algs.iter().any(|a| family(*a) == Family::Hmac) {
            p.push(Problem::new(
                format!("{at}.algorithms"),
                "a secret is configured but no HS algorithm is listed",
            ));
        }
        if let Some(url) = &s.jwks_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                p.push(Problem::new(
                    format!("{at}.jwks_url"),
                    "must be an http:// or https:// URL",
                ));
            }
        }
        if s.jwks_min_refresh.0 < Duration::from_secs(1) {
            p.push(Problem::new(
                format!("{at}.jwks_min_refresh"),
                "must be at least 1s",
            ));
        }
        if s.jwks_refresh.0 < s.jwks_min_refresh.0 {
            p.push(Problem::new(
                format!("{at}.jwks_refresh"),
                "must not be shorter than jwks_min_refresh",
            ));
        }
        for (key, name) in [
            ("subject_header", &s.subject_header),
            ("roles_header", &s.roles_header),
        ] {
            if let Err(e) = header_name(at, key, name) {
                p.push(e);
            }
        }
        for (claim, name) in &s.claim_headers {
            if let Err(e) = header_name(at, &format!("claim_headers.{claim}"), name) {
                p.push(e);
            }
        }
        p
    }

    /// Load keys and build the provider.
    pub fn compile(name: &str, s: &JwtSection, at: &str) -> Result<Self, Vec<Problem>> {
        let JwtSection {
            algorithms,
            secret_env,
            secret_file,
            public_key_files,
            jwks_file,
            jwks_url,
            jwks_refresh,
            jwks_min_refresh,
            issuer,
            audience,
            leeway,
            roles_claim,
            subject_header,
            roles_header,
            claim_headers,
            cache_entries,
        } = s;
        let one = |key: &str, msg: String| vec![Problem::new(format!("{at}.{key}"), msg)];
        let algorithms =
            parse_algorithms(algorithms).map_err(|(i, m)| one(&format!("algorithms[{i}]"), m))?;
        let mut fixed = KeySet::default();
        let secret = match (secret_env, secret_file) {
            (Some(var), _) => Some(
                std::env::var(var)
                    .map_err(|_| {
                        one(
                            "secret_env",
                            format!("environment variable {var} is not set"),
                        )
                    })?
                    .into_bytes(),
            ),
            (None, Some(path)) => {
                let text = std::fs::read(path)
                    .map_err(|e| one("secret_file", format!("cannot read {path}: {e}")))?;
                let trimmed = text.strip_suffix(b"\n").unwrap_or(&text);
                let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
                Some(trimmed.to_vec())
            }
            (None, None) => None,
        };
        if let Some(secret) = secret {
            if secret.len() < 32 {
                let key = if secret_env.is_some() {
                    "secret_env"
                } else {
                    "secret_file"
                };
                return Err(one(key, "the HS secret must be at least 32 bytes".into()));
            }
            fixed.anonymous.push(Key {
                key: DecodingKey::from_secret(&secret),
                family: Family::Hmac,
                only: None,
            });
        }
        for (i, path) in public_key_files.iter().enumerate() {
            let pem = std::fs::read(path).map_err(|e| {
                one(
                    &format!("public_key_files[{i}]"),
                    format!("cannot read {path}: {e}"),
                )
            })?;
            let key = pem_key(&pem)
                .map_err(|e| one(&format!("public_key_files[{i}]"), format!("{path}: {e}")))?;
            fixed.anonymous.push(key);
        }
        if let Some(path) = jwks_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| one("jwks_file", format!("cannot read {path}: {e}")))?;
            let keys = jwks_keys(&text).map_err(|e| one("jwks_file", format!("{path}: {e}")))?;
            fixed.by_kid.extend(keys.by_kid);
            fixed.anonymous.extend(keys.anonymous);
        }
        let header = |key: &str, n: &str| header_name(at, key, n).map_err(|p| vec![p]);
        let subject_header = header("subject_header", subject_header)?;
        let roles_header = header("roles_header", roles_header)?;
        let claim_headers = claim_headers
            .iter()
            .map(|(claim, n)| Ok((claim.clone(), header(&format!("claim_headers.{claim}"), n)?)))
            .collect::<Result<Vec<_>, Vec<Problem>>>()?;
        let mut mapped_headers = vec![subject_header.clone(), roles_header.clone()];
        mapped_headers.extend(claim_headers.iter().map(|(_, h)| h.clone()));
        let http = match jwks_url {
            Some(_) => Some(
                reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| one("jwks_url", format!("HTTP client: {e}")))?,
            ),
            None => None,
        };
        self_test().map_err(|e| {
            vec![Problem::new(
                at,
                format!("JWT crypto self-test failed: {e}"),
            )]
        })?;
        Ok(JwtProvider {
            name: name.into(),
            algorithms,
            fixed,
            fetched: RwLock::new(Arc::new(KeySet::default())),
            jwks_url: jwks_url.clone(),
            jwks_refresh: jwks_refresh.0,
            jwks_min_refresh: jwks_min_refresh.0,
            last_fetch: tokio::sync::Mutex::new(None),
            http,
            leeway: leeway.0.as_secs(),
            issuer: issuer.clone(),
            audience: audience.clone(),
            roles_claim: roles_claim.split('.').map(String::from).collect(),
            subject_header,
            roles_header,
            claim_headers,
            mapped_headers,
            cache: (*cache_entries > 0).then(|| MemoryCache::new(*cache_entries)),
        })
    }

    /// Header names this provider sets upstream; always stripped from client requests.
    pub fn mapped_headers(&self) -> &[HeaderName] {
        &self.mapped_headers
    }

    /// The background service that keeps the JWKS URL's keys fresh, if there is a URL.
    pub fn refresher(self: &Arc<Self>) -> Option<JwksRefresher> {
        self.jwks_url.as_ref().map(|_| JwksRefresher {
            provider: self.clone(),
        })
    }

    /// Verify a bearer token (the part after `Bearer `).
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLarge);
        }
        if token.bytes().filter(|b| *b == b'.').count() != 2 {
            return Err(JwtError::Malformed);
        }
        if let Some(cache) = &self.cache {
            if let (Some(hit), _) = cache.get(token) {
                if &*hit.0 == token {
                    return Ok(hit.1.clone());
                }
            }
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            // `alg: none` (or any name jsonwebtoken does not know) fails to parse.
            JwtError::AlgorithmNotAllowed
        })?;
        let alg = header.alg;
        if !self.algorithms.contains(&alg) {
            return Err(JwtError::AlgorithmNotAllowed);
        }
        let mut candidates = self.candidates(header.kid.as_deref(), alg);
        if candidates.is_empty() {
            if let Some(kid) = header.kid.as_deref() {
                self.refresh_for_unknown_kid().await;
                candidates = self.candidates(Some(kid), alg);
            }
        }
        if candidates.is_empty() {
            return Err(JwtError::UnknownKey);
        }
        let validation = self.validation(alg);
        let mut last = JwtError::BadSignature;
        for key in &candidates {
            match jsonwebtoken::decode::<Value>(token, &key.key, &validation) {
                Ok(data) => {
                    let verified = self.identity(&data.claims);
                    if let Some(cache) = &self.cache {
                        if let Some(ttl) = cache_ttl(&data.claims) {
                            cache.put(token, Arc::new((token.into(), verified.clone())), Some(ttl));
                        }
                    }
                    return Ok(verified);
                }
                // This key does not fit the token (wrong curve, wrong key): try the next one.
                Err(e) if is_key_mismatch(e.kind()) => last = JwtError::BadSignature,
                // The signature was good and the claims are not: no other key helps.
                Err(e) => return Err(map_error(e.kind())),
            }
        }
        Err(last)
    }

    fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<Key> {
        let fetched = self
            .fetched
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let sets = [&self.fixed, fetched.as_ref()];
        match kid {
            Some(kid) => sets
                .iter()
                .filter_map(|s| s.by_kid.get(kid))
                .filter(|k| k.verifies(alg))
                .cloned()
                .collect(),
            // Without a kid: every key of the family (PEM keys, the secret, kid-less JWKs).
            None => sets
                .iter()
                .flat_map(|s| s.anonymous.iter().chain(s.by_kid.values()))
                .filter(|k| k.verifies(alg))
                .cloned()
                .collect(),
        }
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            v.set_required_spec_claims(&["exp", "iss"]);
        }
        if self.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audience);
        }
        v
    }

    fn identity(&self, claims: &Value) -> VerifiedToken {
        let subject = claims.get("sub").and_then(Value::as_str).map(String::from);
        let mut node = Some(claims);
        for step in &self.roles_claim {
            node = node.and_then(|n| n.get(step));
        }
        let roles: Vec<String> = match node {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
            Some(Value::String(s)) => s.split_whitespace().map(String::from).collect(),
            _ => Vec::new(),
        };
        let mut headers = Vec::new();
        let mut push = |name: &HeaderName, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.push((name.clone(), v));
            }
        };
        if let Some(sub) = &subject {
            push(&self.subject_header, sub);
        }
        if !roles.is_empty() {
            push(&self.roles_header, &roles.join(","));
        }
        for (claim, header) in &self.claim_headers {
            match claims.get(claim) {
                Some(Value::String(s)) => push(header, s),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => push(header, &v.to_string()),
                _ => {}
            }
        }
        VerifiedToken {
            subject,
            roles,
            headers,
        }
    }

    /// Fetch the JWKS now unless it was fetched within `jwks_min_refresh`; concurrent callers
    /// wait for one fetch.
    async fn refresh_for_unknown_kid(&self) {
        if self.jwks_url.is_none() {
            return;
        }
        let Ok(mut last) = tokio::time::timeout(KID_REFRESH_WAIT, self.last_fetch.lock()).await
        else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < self.jwks_min_refresh) {
            return;
        }
        *last = Some(Instant::now());
        let _ = tokio::time::timeout(KID_REFRESH_WAIT, self.fetch_jwks()).await;
    }

    /// Fetch the JWKS URL and replace the fetched keys; keeps the old keys on failure.
    pub async fn fetch_jwks(&self) -> bool {
        let (Some(url), Some(http)) = (&self.jwks_url, &self.http) else {
            return false;
        };
        let body = match http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
        {
            Ok(resp) => resp.text().await,
            Err(e) => Err(e),
        };
        match body.map_err(|e| e.to_string()).and_then(|t| jwks_keys(&t)) {
            Ok(keys) => {
                *self.fetched.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
                true
            }
            Err(e) => {
                log::warn!("JWT provider {}: fetching {url} failed: {e}", self.name);
                false
            }
        }
    }
}

fn is_key_mismatch(kind: &ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat
    )
}

fn map_error(kind: &ErrorKind) -> JwtError {
    match kind {
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
        ErrorKind::InvalidAudience => JwtError::WrongAudience,
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::InvalidAlgorithm => JwtError::AlgorithmNotAllowed,
        _ => JwtError::Malformed,
    }
}

/// How long a verified token may be served from cache: until `exp`, at most a minute.
fn cache_ttl(claims: &Value) -> Option<Duration> {
    let exp = claims.get("exp")?.as_u64()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    let left = exp.checked_sub(now)?;
    (left > 0).then(|| Duration::from_secs(left).min(CACHE_TTL_MAX))
}

/// Sign and verify one token with a throwaway key, so a missing crypto backend shows at start.
fn self_test() -> Result<(), String> {
    let secret = b"tollgate-self-test-secret-0123456789";
    let claims = serde_json::json!({ "sub": "self-test", "exp": 4_102_444_800u64 });
    let outcome = std::panic::catch_unwind(|| {
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .map_err(|e| e.to_string())?;
        jsonwebtoken::decode::<Value>(
            &token,
            &DecodingKey::from_secret(secret),
            &Validation::new(Algorithm::HS256),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    });
    outcome.unwrap_or_else(|_| Err("the crypto backend panicked".into()))
}

/// Keeps a provider's JWKS URL keys fresh: fetches at start, then every `jwks_refresh`.
pub struct JwksRefresher {
    provider: Arc<JwtProvider>,
}

#[async_trait]
impl BackgroundService for JwksRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            {
                let mut last = self.provider.last_fetch.lock().await;
                *last = Some(Instant::now());
                self.provider.fetch_jwks().await;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.provider.jwks_refresh) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_test_passes_with_the_configured_backend() {
        assert_eq!(self_test(), Ok(()));
    }

    #[test]
    fn roles_from_array_string_and_nested_claims() {
        let section: JwtSection = toml::from_str(
            "algorithms = [\"HS256\"]\nsecret_env = \"TOLLGATE_UNIT_SECRET\"\nroles_claim = \"realm.roles\"\nclaim_headers = { email = \"X-User-Email\" }",
        )
        .unwrap();
        std::env::set_var("TOLLGATE_UNIT_SECRET", "0123456789abcdef0123456789abcdef");
        let p = JwtProvider::compile("t", &section, "auth.jwt.t").unwrap();
        let id = p.identity(
            &serde_json::json!({"sub": "u1", "email": "a@b", "realm": {"roles": ["admin", "ops"]}}),
        );
        assert_eq!(id.roles, ["admin", "ops"]);
        assert!(id
            .headers
            .iter()
            .any(|(k, v)| k == "x-user-email" && v == "a@b"));
        assert!(id
            .headers
            .iter()
            .any(|(k, v)| k == "x-user-roles" && v == "admin,ops"));
        let mut flat = p.roles_claim.clone();
        flat.clear();
        flat.push("scope".into());
        let p2 = JwtProvider {
            roles_claim: flat,
            ..p
        };
        assert_eq!(
            p2.identity(&serde_json::json!({"scope": "read write"}))
                .roles,
            ["read", "write"]
        );
    }

    #[test]
    fn validation_needs_keys_for_each_family() {
        let section: JwtSection =
            toml::from_str("algorithms = [\"RS256\", \"HS256\", \"XX1\"]").unwrap();
        let p = JwtProvider::validate("auth.jwt.m", &section);
        assert_eq!(p[0].path, "auth.jwt.m.algorithms[2]");
        let section: JwtSection = toml::from_str("algorithms = [\"RS256\", \"HS256\"]").unwrap();
        let paths: Vec<String> = JwtProvider::validate("auth.jwt.m", &section)
            .into_iter()
            .map(|p| p.path)
            .collect();
        assert_eq!(
            paths,
            ["auth.jwt.m.algorithms[0]", "auth.jwt.m.algorithms[1]"]
        );
    }
}
