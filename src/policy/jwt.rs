//! JWT verification for `[auth.jwt.NAME]` providers, with `jsonwebtoken`.
//!
//! A token is first checked for shape, before anything is decoded: at most
//! [`MAX_TOKEN_BYTES`], exactly three dot-separated base64url segments. Then its header: the
//! `alg` must be in the provider's list (`none` never is), and `crit` extensions are refused.
//! Algorithms are pinned twice: by that list, and by key: a key only verifies algorithms of its
//! own family (an HS secret never verifies an RS token, an RSA public key is never used as an
//! HMAC secret), an EC key only its curve's algorithm, a JWK only its own `alg` when it names
//! one. `exp` is required (a token without it would be valid forever, and could not bound the
//! verification cache); `exp` and `nbf` are checked with the configured leeway, and must be
//! numbers (a string `exp` is refused); `iss` must equal `issuer` when configured; `aud` must
//! name one of `audience` when configured (and must then be present).
//!
//! Keys: an HS secret from an environment variable or a file (never inline; at least 32 bytes;
//! never a PEM key), PEM public keys (RSA, EC P-256/P-384, Ed25519; private keys refused), a
//! JWKS file, and a JWKS URL. A token's `kid` is only a map key; `jku`, `x5u` and `jwk` header
//! fields are never used. A token whose `kid` matches no key is tried against the keys without
//! a `kid` (secret, PEM keys); a token without `kid` against every key of its algorithm, at
//! most [`MAX_KEYS_TRIED`].
//!
//! The JWKS URL is not fetched by [`JwtProvider::from_config`]: `tollgate -t` and start-up must not
//! depend on the identity provider being up. The provider starts with no URL keys; the
//! background service from [`JwtProvider::refresher`] fetches at start and every
//! `jwks_refresh`, and a request that finds no key (unknown `kid`, or nothing fetched yet)
//! triggers a fetch, at most one per `jwks_min_refresh`, shared by concurrent requests, and
//! waits for it (at most 3 s) before verifying (the `jwks` submodule).
//!
//! Verified tokens are cached when `cache_entries > 0`: keyed by a keyed 64-bit hash of the
//! token with the full token compared on a hit, bounded, each entry kept no later than the
//! token's `exp` and at most [`CACHE_TTL_MAX`], and dropped when a JWKS fetch changes the keys.
//! The crypto backend is `rust_crypto` (pure Rust: no C toolchain for aws-lc); `compile` signs
//! and verifies a token as a self-test, so a missing backend fails at start-up, not on the
//! first request. [`JwtError::reason`] never contains token or key material.

mod claims;
mod jwks;
mod keys;

pub(crate) use jwks::JwksRefresher;

use crate::config::file::JwtSection;
use crate::config::fingerprint::{Carried, Fingerprint};
use crate::config::types::Header;
use crate::config::types::JwtAlgorithm;
use crate::config::FromConfig;
use crate::config::{bounds, Problem};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use claims::{ClaimMap, ClaimPath};
use http::{HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation};
use jwks::JwksSource;
use keys::{jwks_keys, pem_key, secret_key, Key, KeySet};
use pingora_memory_cache::MemoryCache;
use serde_json::Value;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest token accepted; longer ones are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest a verified token stays cached (and never past its `exp`).
pub(crate) const CACHE_TTL_MAX: Duration = Duration::from_secs(60);
/// Most keys one token is tried against.
pub(crate) const MAX_KEYS_TRIED: usize = 8;

/// Headers a claim may never set: framing, hop-by-hop, routing and credentials.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "connection",
    "content-length",
    "cookie",
    "expect",
    "forwarded",
    "host",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-request-id",
];

/// Why a token was refused; `reason()` is the `auth_failures_total` label and the JSON
/// error text, and never contains token or key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url segments, bad JSON, a claim of the wrong type (string `exp`), a
    /// `crit` header.
    Malformed,
    /// Longer than [`MAX_TOKEN_BYTES`].
    TooLarge,
    /// `alg` not in the provider's list (`none` never is).
    AlgorithmNotAllowed,
    /// No configured key can verify this token's algorithm and `kid`.
    UnknownKey,
    /// No key verified the signature.
    BadSignature,
    /// `exp` passed.
    Expired,
    /// `nbf` not reached.
    NotYetValid,
    /// `iss` is not the provider's issuer.
    WrongIssuer,
    /// `aud` names none of the provider's audiences.
    WrongAudience,
    /// `exp`, or `iss`/`aud` when the provider checks them, is absent.
    MissingClaim,
}

impl JwtError {
    /// The `reason` label of metrics and logs.
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
            JwtError::MissingClaim => "missing_claim",
        }
    }
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// What a verified token says about the caller.
///
/// Shared, not copied: a token found in the verification cache becomes the request's
/// identity with three reference-count increments.
#[derive(Debug, Clone, Default)]
pub struct VerifiedToken {
    /// `sub`, when it is a string that is safe as a header value.
    pub subject: Option<Arc<str>>,
    /// Roles from the roles claim; values unsafe as header values or containing a comma are
    /// dropped.
    pub roles: Arc<[String]>,
    /// Headers to set upstream (subject, roles, mapped claims).
    pub headers: Arc<[(HeaderName, HeaderValue)]>,
}

/// A cache entry: the token it was verified from, the JWKS generation it was verified
/// against, and what it said.
struct CachedToken {
    token: Box<str>,
    generation: u64,
    verified: VerifiedToken,
}

/// A compiled JWT provider.
pub struct JwtProvider {
    /// The provider's name (`[auth.jwt.NAME]`).
    pub name: Arc<str>,
    /// One validation per accepted algorithm, built once.
    validations: Vec<(Algorithm, Validation)>,
    issuer: Option<String>,
    /// Keys from the secret, PEM files and the JWKS file: fixed at start.
    fixed: KeySet,
    /// Keys from the JWKS URL.
    jwks: Option<Arc<JwksSource>>,
    claims: ClaimMap,
    mapped_headers: Vec<HeaderName>,
    cache: Option<MemoryCache<String, Arc<CachedToken>>>,
    /// What it was built from (section and key files), to keep it across reloads that
    /// change neither.
    fingerprint: Fingerprint,
}

impl Carried for JwtProvider {
    fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

/// The JWT providers of a generation, by name.
pub(crate) type Providers = crate::names::Named<JwtProvider>;

/// The listed algorithms, each once; a repeated one is a problem.
fn distinct_algorithms(at: &str, listed: &[JwtAlgorithm], p: &mut Vec<Problem>) -> Vec<Algorithm> {
    let mut algs: Vec<Algorithm> = Vec::with_capacity(listed.len());
    for (i, JwtAlgorithm(a)) in listed.iter().enumerate() {
        if algs.contains(a) {
            p.push(Problem::new(
                format!("{at}.algorithms[{i}]"),
                format!("{a:?} is listed twice"),
            ));
        } else {
            algs.push(*a);
        }
    }
    algs
}

fn header_name(at: &str, key: &str, name: &Header, p: &mut Vec<Problem>) -> Option<HeaderName> {
    let at = format!("{at}.{key}");
    let h = name.get(&at, p)?;
    if RESERVED_HEADERS.contains(&h.as_str()) {
        p.push(Problem::new(
            at,
            format!("{name} cannot carry a claim: the gateway or the protocol owns it"),
        ));
        return None;
    }
    Some(h.clone())
}

/// A TOML key as it appears in a key path: bare when it can be, quoted otherwise.
fn key_segment(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

/// Whether a JWKS URL is acceptable: HTTPS, or plain HTTP to a loopback address (a JWKS
/// fetched in clear text could be replaced by anyone on the path).
fn jwks_url_problem(url: &str) -> Option<String> {
    let parsed = match reqwest::Url::parse(url) {
        Ok(u) => u,
        Err(e) => return Some(format!("not a URL: {e}")),
    };
    let host = parsed.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" if !host.is_empty() => None,
        "http" if loopback => None,
        "http" => Some("must be https:// (http:// only to a loopback address)".into()),
        _ => Some("must be an https:// URL".into()),
    }
}

impl FromConfig<str> for JwtProvider {
    type Section = JwtSection;

    /// `[auth.jwt.NAME]` (`name` is NAME): validate, load the keys (secret, PEM files, JWKS
    /// file) and build the provider. Every problem found names the key and the file or
    /// variable concerned. The JWKS URL is not fetched here (see the module doc): register
    /// [`JwtProvider::refresher`].
    fn from_config(
        at: &str,
        s: &JwtSection,
        name: &str,
        problems: &mut Vec<Problem>,
    ) -> Option<Self> {
        Self::build(name, s, at)
            .map_err(|p| problems.extend(p))
            .ok()
    }
}

impl JwtProvider {
    /// Whether keys come from a JWKS URL.
    pub(crate) fn has_jwks_url(&self) -> bool {
        self.jwks.is_some()
    }

    /// Never fetch the JWKS URL (`tollgate explain`).
    pub(crate) fn go_offline(&self) {
        if let Some(j) = &self.jwks {
            j.go_offline();
        }
    }

    /// Problems in what a provider's section says (`at` is e.g. `auth.jwt.main`), before
    /// any file or variable is read; `algs` are its algorithms, each once.
    fn check_section(at: &str, s: &JwtSection, algs: &[Algorithm]) -> Vec<Problem> {
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
        let mut p = Vec::new();
        let problem = |p: &mut Vec<Problem>, key: &str, msg: String| {
            p.push(Problem::new(format!("{at}.{key}"), msg));
        };
        if algorithms.is_empty() {
            problem(
                &mut p,
                "algorithms",
                "list at least one algorithm, e.g. [\"RS256\"]".into(),
            );
        }
        let has_secret = secret_env.is_some() || secret_file.is_some();
        let has_public = !public_key_files.is_empty() || jwks_file.is_some() || jwks_url.is_some();
        if secret_env.is_some() && secret_file.is_some() {
            problem(
                &mut p,
                "secret_file",
                "set either secret_env or secret_file, not both".into(),
            );
        }
        if secret_env.as_deref() == Some("") {
            problem(
                &mut p,
                "secret_env",
                "name the environment variable holding the secret".into(),
            );
        }
        for (i, JwtAlgorithm(alg)) in algorithms.iter().enumerate() {
            let name = format!("{alg:?}");
            let hmac = alg.family() == AlgorithmFamily::Hmac;
            if hmac && !has_secret {
                problem(
                    &mut p,
                    &format!("algorithms[{i}]"),
                    format!("{name} needs secret_env or secret_file"),
                );
            }
            if !hmac && !has_public {
                problem(
                    &mut p,
                    &format!("algorithms[{i}]"),
                    format!("{name} needs public_key_files, jwks_file or jwks_url"),
                );
            }
        }
        if has_secret && !algs.iter().any(|a| a.family() == AlgorithmFamily::Hmac) {
            problem(
                &mut p,
                "algorithms",
                "a secret is configured but no HS algorithm is listed".into(),
            );
        }
        if has_public && !algs.iter().any(|a| a.family() != AlgorithmFamily::Hmac) {
            problem(
                &mut p,
                "algorithms",
                "public keys are configured but no RS/PS/ES/EdDSA algorithm is listed".into(),
            );
        }
        if let Some(url) = jwks_url {
            if let Some(msg) = jwks_url_problem(url) {
                problem(&mut p, "jwks_url", msg);
            }
        }
        // Ranges in `config/bounds.rs`; the order of the two is checked only when both are
        // in range.
        let min_ok = bounds::JWT_JWKS_MIN_REFRESH.check(
            &format!("{at}.jwks_min_refresh"),
            *jwks_min_refresh,
            &mut p,
        );
        let refresh_ok =
            bounds::JWT_JWKS_REFRESH.check(&format!("{at}.jwks_refresh"), *jwks_refresh, &mut p);
        if min_ok && refresh_ok && jwks_refresh.0 < jwks_min_refresh.0 {
            problem(
                &mut p,
                "jwks_refresh",
                format!("must not be shorter than jwks_min_refresh ({jwks_min_refresh})"),
            );
        }
        // More clock skew than the range allows needs fixing (NTP), not tolerating.
        bounds::JWT_LEEWAY.check(&format!("{at}.leeway"), *leeway, &mut p);
        if issuer.as_deref() == Some("") {
            problem(
                &mut p,
                "issuer",
                "must not be empty; leave it out to accept any issuer".into(),
            );
        }
        for (i, a) in audience.iter().enumerate() {
            if a.is_empty() {
                problem(
                    &mut p,
                    &format!("audience[{i}]"),
                    "must not be empty".into(),
                );
            }
        }
        if roles_claim.is_empty() || roles_claim.split('.').any(str::is_empty) {
            problem(
                &mut p,
                "roles_claim",
                format!("{roles_claim:?} is not a claim name or dotted path"),
            );
        }
        let mut names = Vec::new();
        for (key, name) in [
            ("subject_header".to_string(), subject_header),
            ("roles_header".to_string(), roles_header),
        ]
        .into_iter()
        .chain(
            claim_headers
                .iter()
                .map(|(c, h)| (format!("claim_headers.{}", key_segment(c)), h)),
        ) {
            if let Some(h) = header_name(at, &key, name, &mut p) {
                if names.contains(&h) {
                    problem(
                        &mut p,
                        &key,
                        format!("{name} is already set from another claim"),
                    );
                }
                names.push(h);
            }
        }
        if claim_headers.keys().any(String::is_empty) {
            problem(
                &mut p,
                "claim_headers",
                "claim names must not be empty".into(),
            );
        }
        bounds::JWT_CACHE_ENTRIES.check(&format!("{at}.cache_entries"), *cache_entries, &mut p);
        p
    }

    /// [`FromConfig::from_config`]'s body: the provider, or every problem found.
    fn build(name: &str, s: &JwtSection, at: &str) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let algorithms_checked = distinct_algorithms(at, &s.algorithms, &mut problems);
        problems.extend(Self::check_section(at, s, &algorithms_checked));
        if !problems.is_empty() {
            return Err(problems);
        }
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
        let _ = algorithms;
        let algorithms = algorithms_checked;
        let mut p = Vec::new();
        let mut fixed = KeySet::default();

        if let Some(var) = secret_env {
            match std::env::var_os(var) {
                None => p.push(Problem::new(
                    format!("{at}.secret_env"),
                    format!("environment variable {var} is not set"),
                )),
                Some(value) => match secret_key(&value.into_encoded_bytes()) {
                    Ok(k) => fixed.anonymous.push(k),
                    Err(e) => p.push(Problem::new(
                        format!("{at}.secret_env"),
                        format!("environment variable {var} {e}"),
                    )),
                },
            }
        }
        if let Some(path) = secret_file {
            match std::fs::read(path) {
                Err(e) => p.push(Problem::new(
                    format!("{at}.secret_file"),
                    format!("cannot read {path}: {e}"),
                )),
                Ok(bytes) => {
                    let secret = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
                    let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
                    match secret_key(secret) {
                        Ok(k) => fixed.anonymous.push(k),
                        Err(e) => p.push(Problem::new(
                            format!("{at}.secret_file"),
                            format!("{path} {e}"),
                        )),
                    }
                }
            }
        }
        for (i, path) in public_key_files.iter().enumerate() {
            let key = std::fs::read(path)
                .map_err(|e| format!("cannot read {path}: {e}"))
                .and_then(|pem| pem_key(&pem).map_err(|e| format!("{path}: {e}")));
            match key {
                Ok(k) => fixed.anonymous.push(k),
                Err(e) => p.push(Problem::new(format!("{at}.public_key_files[{i}]"), e)),
            }
        }
        if let Some(path) = jwks_file {
            let keys = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {path}: {e}"))
                .and_then(|text| jwks_keys(&text).map_err(|e| format!("{path}: {e}")));
            match keys {
                Ok((set, _)) if set.is_empty() => p.push(Problem::new(
                    format!("{at}.jwks_file"),
                    format!("{path} holds no signing key this gateway can use"),
                )),
                Ok((set, skipped)) => {
                    if skipped > 0 {
                        log::warn!("{at}.jwks_file: {path}: {skipped} key(s) skipped (encryption, symmetric or unsupported keys)");
                    }
                    fixed.extend(set);
                }
                Err(e) => p.push(Problem::new(format!("{at}.jwks_file"), e)),
            }
        }
        // Every listed algorithm must have a key, unless the JWKS URL may bring one.
        if p.is_empty() && jwks_url.is_none() {
            for (i, alg) in algorithms.iter().enumerate() {
                let any = fixed
                    .anonymous
                    .iter()
                    .chain(fixed.by_kid.values().flatten())
                    .any(|k| k.verifies(*alg));
                if !any {
                    p.push(Problem::new(
                        format!("{at}.algorithms[{i}]"),
                        format!("no configured key verifies {alg:?}"),
                    ));
                }
            }
        }

        let name: Arc<str> = name.into();
        let jwks = match jwks_url {
            None => None,
            Some(url) => match reqwest::Url::parse(url)
                .map_err(|e| e.to_string())
                .and_then(|u| JwksSource::new(name.clone(), u, jwks_refresh.0, jwks_min_refresh.0))
            {
                Ok(source) => Some(Arc::new(source)),
                Err(e) => {
                    p.push(Problem::new(format!("{at}.jwks_url"), e));
                    None
                }
            },
        };

        let mut hp = Vec::new();
        let subject_header = header_name(at, "subject_header", subject_header, &mut hp);
        let roles_header = header_name(at, "roles_header", roles_header, &mut hp);
        let mapped: Vec<(ClaimPath, HeaderName)> = claim_headers
            .iter()
            .filter_map(|(claim, h)| {
                header_name(
                    at,
                    &format!("claim_headers.{}", key_segment(claim)),
                    h,
                    &mut hp,
                )
                .map(|h| (ClaimPath::new(claim), h))
            })
            .collect();
        p.extend(hp);
        if let Err(e) = self_test() {
            p.push(Problem::new(
                at,
                format!("JWT crypto self-test failed: {e}"),
            ));
        }
        let (Some(subject_header), Some(roles_header), true) =
            (subject_header, roles_header, p.is_empty())
        else {
            return Err(p);
        };

        let claims = ClaimMap {
            subject_header,
            roles_header,
            roles_claim: ClaimPath::new(roles_claim),
            claim_headers: mapped,
        };
        let validations = algorithms
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.leeway = leeway.0.as_secs();
                v.validate_exp = true;
                v.validate_nbf = true;
                let mut required = vec!["exp"];
                if let Some(iss) = issuer {
                    v.set_issuer(&[iss]);
                    required.push("iss");
                }
                if audience.is_empty() {
                    v.validate_aud = false;
                } else {
                    v.set_audience(audience);
                    required.push("aud");
                }
                v.set_required_spec_claims(&required);
                (*alg, v)
            })
            .collect();
        Ok(JwtProvider {
            name,
            validations,
            issuer: issuer.clone(),
            fixed,
            jwks,
            mapped_headers: claims.header_names(),
            claims,
            cache: (*cache_entries > 0).then(|| MemoryCache::new(*cache_entries)),
            fingerprint: Fingerprint::default(),
        })
    }

    /// Record what the provider was built from, so that a reload with the same section and
    /// key files keeps this provider, its fetched keys and its verified-token cache.
    pub(crate) fn set_fingerprint(&mut self, fingerprint: Fingerprint) {
        self.fingerprint = fingerprint;
    }

    /// The header this provider maps `claim` to (`claim_headers`), which carries the
    /// claim's value in the caller's identity.
    pub(crate) fn claim_header(&self, claim: &str) -> Option<&HeaderName> {
        self.claims
            .claim_headers
            .iter()
            .find(|(path, _)| path.literal() == claim)
            .map(|(_, h)| h)
    }

    /// Header names this provider sets upstream; always stripped from client requests.
    pub fn mapped_headers(&self) -> &[HeaderName] {
        &self.mapped_headers
    }

    /// The background service that keeps the JWKS URL's keys fresh, if there is a URL.
    /// Register it with `GenBackgroundService`; without it, keys are still fetched when a
    /// request finds none, but never refreshed on a schedule.
    pub fn refresher(self: &Arc<Self>) -> Option<JwksRefresher> {
        self.jwks.as_ref().map(|source| JwksRefresher {
            source: source.clone(),
        })
    }

    /// Verify a bearer token (the part after `Bearer `).
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLarge);
        }
        let mut generation = self.generation();
        // A cached token is byte for byte one that passed every check below, its shape
        // included: the shape is checked on a miss only (180 bytes walked per request).
        if let Some(hit) = self.cached(token, generation) {
            return Ok(hit);
        }
        check_shape(token)?;
        let header = TokenHeader::parse(token)?;
        let alg = header.alg;
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or(JwtError::AlgorithmNotAllowed)?;
        let kid = header.kid.as_deref();
        let mut fetched = self.fetched();
        if let Some(source) = &self.jwks {
            if self.needs_fetch(source, kid, alg, &fetched) {
                source.refresh_on_miss().await;
                // Generation first: an entry must never claim newer keys than it used.
                generation = self.generation();
                fetched = self.fetched();
            }
        }
        let claims = self.check(token, alg, kid, &fetched, validation)?;
        if let Some(iss) = &self.issuer {
            // jsonwebtoken also accepts an array `iss` naming ours; one issuer means one.
            if claims.get("iss").and_then(Value::as_str) != Some(iss.as_str()) {
                return Err(JwtError::WrongIssuer);
            }
        }
        let verified = self.claims.identity(&claims);
        self.remember(token, generation, &claims, &verified);
        Ok(verified)
    }

    fn generation(&self) -> u64 {
        self.jwks.as_ref().map_or(0, |s| s.generation())
    }

    fn fetched(&self) -> Arc<KeySet> {
        match &self.jwks {
            Some(source) => source.keys(),
            None => Arc::new(KeySet::default()),
        }
    }

    /// Whether to fetch the JWKS before verifying: the token names a `kid` no key has, or
    /// nothing was fetched yet and no fixed key could verify it.
    fn needs_fetch(
        &self,
        source: &JwksSource,
        kid: Option<&str>,
        alg: Algorithm,
        fetched: &KeySet,
    ) -> bool {
        match kid {
            Some(kid) => !self.fixed.knows(kid, alg) && !fetched.knows(kid, alg),
            None => {
                !source.loaded()
                    && !self
                        .fixed
                        .anonymous
                        .iter()
                        .chain(self.fixed.by_kid.values().flatten())
                        .any(|k| k.verifies(alg))
            }
        }
    }

    /// The keys to try, in order: those the `kid` names; else the keys without a `kid`, and
    /// for a token without `kid` every key of the algorithm. At most [`MAX_KEYS_TRIED`].
    fn candidates<'a>(
        &'a self,
        kid: Option<&str>,
        alg: Algorithm,
        fetched: &'a KeySet,
    ) -> Vec<&'a Key> {
        let sets = [&self.fixed, fetched];
        let mut out: Vec<&Key> = Vec::new();
        if let Some(kid) = kid {
            out.extend(
                sets.iter()
                    .filter_map(|s| s.by_kid.get(kid))
                    .flatten()
                    .filter(|k| k.verifies(alg)),
            );
            if !out.is_empty() {
                return out;
            }
        }
        out.extend(
            sets.iter()
                .flat_map(|s| s.anonymous.iter())
                .filter(|k| k.verifies(alg)),
        );
        if kid.is_none() {
            out.extend(
                sets.iter()
                    .flat_map(|s| s.by_kid.values().flatten())
                    .filter(|k| k.verifies(alg)),
            );
        }
        out.truncate(MAX_KEYS_TRIED);
        out
    }

    /// Verify signature and claims against the candidate keys.
    fn check(
        &self,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
        fetched: &KeySet,
        validation: &Validation,
    ) -> Result<Value, JwtError> {
        let mut outcome = Err(JwtError::UnknownKey);
        for key in self.candidates(kid, alg, fetched) {
            debug_assert!(key.family() == alg.family());
            match jsonwebtoken::decode::<Value>(token, &key.key, validation) {
                Ok(data) => return Ok(data.claims),
                // Not this key (another key of the family, a key that does not parse): next.
                Err(e) if is_key_mismatch(e.kind()) => outcome = Err(JwtError::BadSignature),
                // A required claim that is there but not a number or string (a string `exp`)
                // is malformed, not missing. The signature was checked before the claims.
                Err(e) if matches!(e.kind(), ErrorKind::MissingRequiredClaim(_)) => {
                    return Err(missing_or_malformed(token, e.kind()))
                }
                // Signature good, claims not (or the token is broken): no other key helps.
                Err(e) => return Err(map_error(e.kind())),
            }
        }
        outcome
    }

    fn cached(&self, token: &str, generation: u64) -> Option<VerifiedToken> {
        let (hit, _) = self.cache.as_ref()?.get(token);
        let hit = hit?;
        (hit.generation == generation && *hit.token == *token).then(|| hit.verified.clone())
    }

    fn remember(&self, token: &str, generation: u64, claims: &Value, verified: &VerifiedToken) {
        let (Some(cache), Some(ttl)) = (&self.cache, cache_ttl(claims, SystemTime::now())) else {
            return;
        };
        let entry = CachedToken {
            token: token.into(),
            generation,
            verified: verified.clone(),
        };
        cache.put(token, Arc::new(entry), Some(ttl));
    }
}

const DOT: u8 = 1;
const INVALID: u8 = 2;

/// Each byte's class in a compact JWS: base64url (0), the segment separator, or anything else.
const SHAPE: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' {
            t[b] = 0;
        }
        b += 1;
    }
    t[b'.' as usize] = DOT;
    t
};

/// Size and shape, before any decoding: at most [`MAX_TOKEN_BYTES`], base64url characters in
/// exactly three segments, the first two non-empty (the signature may be empty, so that
/// `alg: none` is reported as such).
fn check_shape(token: &str) -> Result<(), JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLarge);
    }
    // One table load per byte, no branch: this runs on every authenticated request.
    let (mut invalid, mut dots) = (0u8, 0usize);
    for &b in token.as_bytes() {
        let class = SHAPE[usize::from(b)];
        invalid |= class & INVALID;
        dots += usize::from(class & DOT);
    }
    if invalid != 0 {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p)) = (parts.next(), parts.next()) else {
        return Err(JwtError::Malformed);
    };
    if dots != 2 || h.is_empty() || p.is_empty() {
        return Err(JwtError::Malformed);
    }
    Ok(())
}

/// The header fields we use. Everything else (`typ`, `jku`, `x5u`, `jwk`, ...) is ignored.
struct TokenHeader {
    alg: Algorithm,
    kid: Option<String>,
}

impl TokenHeader {
    fn parse(token: &str) -> Result<TokenHeader, JwtError> {
        #[derive(serde::Deserialize)]
        struct Raw {
            alg: String,
            #[serde(default)]
            kid: Option<String>,
            #[serde(default)]
            crit: Option<serde::de::IgnoredAny>,
        }
        let segment = token.split('.').next().unwrap_or_default();
        let bytes = URL_SAFE_NO_PAD
            .decode(segment)
            .map_err(|_| JwtError::Malformed)?;
        let raw: Raw = serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)?;
        // RFC 7515 4.1.11: extensions we do not understand make the token invalid.
        if raw.crit.is_some() {
            return Err(JwtError::Malformed);
        }
        let alg = Algorithm::from_str(&raw.alg).map_err(|_| JwtError::AlgorithmNotAllowed)?;
        Ok(TokenHeader { alg, kid: raw.kid })
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

/// `MissingRequiredClaim` also covers a claim present with the wrong type; tell them apart.
fn missing_or_malformed(token: &str, kind: &ErrorKind) -> JwtError {
    let ErrorKind::MissingRequiredClaim(claim) = kind else {
        return map_error(kind);
    };
    match jsonwebtoken::dangerous::insecure_decode_claims::<Value>(token) {
        Ok(claims) if claims.get(claim).is_some() => JwtError::Malformed,
        Ok(_) => JwtError::MissingClaim,
        Err(_) => JwtError::Malformed,
    }
}

fn map_error(kind: &ErrorKind) -> JwtError {
    match kind {
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
        ErrorKind::InvalidAudience => JwtError::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) => JwtError::MissingClaim,
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => JwtError::AlgorithmNotAllowed,
        _ => JwtError::Malformed,
    }
}

/// How long a verified token may be served from cache: until its `exp` (to the sub-second),
/// at most [`CACHE_TTL_MAX`]; not at all past `exp` (a token inside its leeway).
fn cache_ttl(claims: &Value, now: SystemTime) -> Option<Duration> {
    let exp = claims.get("exp")?.as_u64()?;
    let now = now.duration_since(UNIX_EPOCH).ok()?;
    let left = Duration::from_secs(exp).checked_sub(now)?;
    (!left.is_zero()).then_some(left.min(CACHE_TTL_MAX))
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
            &jsonwebtoken::DecodingKey::from_secret(secret),
            &Validation::new(Algorithm::HS256),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    });
    outcome.unwrap_or_else(|_| Err("the crypto backend panicked".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"unit-test-secret-0123456789abcdef";

    fn section(toml_text: &str) -> JwtSection {
        toml::from_str(toml_text).unwrap()
    }

    fn paths(p: &[Problem]) -> Vec<&str> {
        p.iter().map(|p| p.path.as_str()).collect()
    }

    fn secret_file() -> (tempfile::NamedTempFile, String) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), [SECRET, b"\n"].concat()).unwrap();
        let path = f.path().display().to_string();
        (f, path)
    }

    fn hs_provider(extra: &str) -> (tempfile::NamedTempFile, JwtProvider) {
        let (f, path) = secret_file();
        let s = section(&format!(
            "algorithms = [\"HS256\"]\nsecret_file = \"{path}\"\n{extra}"
        ));
        let p = JwtProvider::build("t", &s, "auth.jwt.t")
            .map_err(|p| format!("{p:?}"))
            .unwrap();
        (f, p)
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs(claims: &Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn self_test_passes_with_the_configured_backend() {
        assert_eq!(self_test(), Ok(()));
    }

    #[test]
    fn validation_locates_every_problem() {
        let rows: &[(&str, &[&str])] = &[
            (
                "algorithms = [\"RS256\", \"HS256\"]",
                &["auth.jwt.m.algorithms[0]", "auth.jwt.m.algorithms[1]"],
            ),
            ("algorithms = []", &["auth.jwt.m.algorithms"]),
            (
                "algorithms = [\"HS256\", \"HS256\"]\nsecret_env = \"S\"",
                &["auth.jwt.m.algorithms[1]"],
            ),
            (
                "algorithms = [\"HS256\"]\nsecret_env = \"S\"\nsecret_file = \"/f\"",
                &["auth.jwt.m.secret_file"],
            ),
            (
                "algorithms = [\"RS256\"]\nsecret_env = \"S\"\npublic_key_files = [\"/k\"]",
                &["auth.jwt.m.algorithms"],
            ),
            (
                "algorithms = [\"HS256\"]\nsecret_env = \"S\"\npublic_key_files = [\"/k\"]",
                &["auth.jwt.m.algorithms"],
            ),
            (
                "algorithms = [\"RS256\"]\njwks_url = \"http://idp.example/jwks\"",
                &["auth.jwt.m.jwks_url"],
            ),
            ("algorithms = [\"RS256\"]\njwks_url = \"http://127.0.0.1:9/jwks\"", &[]),
            ("algorithms = [\"RS256\"]\njwks_url = \"http://[::1]:9/jwks\"", &[]),
            ("algorithms = [\"RS256\"]\njwks_url = \"https://idp.example/jwks\"", &[]),
            (
                "algorithms = [\"RS256\"]\njwks_url = \"ftp://idp.example/jwks\"",
                &["auth.jwt.m.jwks_url"],
            ),
            (
                "algorithms = [\"RS256\"]\njwks_file = \"/j\"\njwks_min_refresh = \"10ms\"\njwks_refresh = \"5ms\"",
                &["auth.jwt.m.jwks_min_refresh", "auth.jwt.m.jwks_refresh"],
            ),
            (
                "algorithms = [\"HS256\"]\nsecret_env = \"S\"\nleeway = \"1h\"\nissuer = \"\"\naudience = [\"\"]",
                &["auth.jwt.m.leeway", "auth.jwt.m.issuer", "auth.jwt.m.audience[0]"],
            ),
            (
                "algorithms = [\"HS256\"]\nsecret_env = \"S\"\nroles_claim = \"a..b\"",
                &["auth.jwt.m.roles_claim"],
            ),
            (
                "algorithms = [\"HS256\"]\nsecret_env = \"S\"\nclaim_headers = { email = \"Bad Header\", \"t.id\" = \"Content-Length\", sub2 = \"X-User-ID\" }",
                &[
                    "auth.jwt.m.claim_headers.email",
                    "auth.jwt.m.claim_headers.sub2",
                    "auth.jwt.m.claim_headers.\"t.id\"",
                ],
            ),
            (
                "algorithms = [\"HS256\"]\nsecret_env = \"S\"\ncache_entries = 100000000",
                &["auth.jwt.m.cache_entries"],
            ),
        ];
        for (text, want) in rows {
            let s = section(text);
            let mut got = Vec::new();
            let algs = distinct_algorithms("auth.jwt.m", &s.algorithms, &mut got);
            got.extend(JwtProvider::check_section("auth.jwt.m", &s, &algs));
            assert_eq!(paths(&got), *want, "{text}: {got:?}");
        }
    }

    #[test]
    fn compile_names_the_variable_or_file_never_the_secret() {
        std::env::set_var("TOLLGATE_UNIT_SHORT", "tiny-secret");
        std::env::set_var("TOLLGATE_UNIT_EMPTY", "");
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("public.pem");
        std::fs::write(
            &pem,
            "-----BEGIN PUBLIC KEY-----\nMIIBIjAN\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let pem = pem.display().to_string();
        let rows = [
            (
                "secret_env = \"TOLLGATE_UNIT_UNSET_VAR\"".to_string(),
                "auth.jwt.m.secret_env",
                "environment variable TOLLGATE_UNIT_UNSET_VAR is not set",
            ),
            (
                "secret_env = \"TOLLGATE_UNIT_SHORT\"".to_string(),
                "auth.jwt.m.secret_env",
                "environment variable TOLLGATE_UNIT_SHORT is 11 bytes",
            ),
            (
                "secret_env = \"TOLLGATE_UNIT_EMPTY\"".to_string(),
                "auth.jwt.m.secret_env",
                "environment variable TOLLGATE_UNIT_EMPTY is empty",
            ),
            (
                "secret_file = \"/nonexistent/secret\"".to_string(),
                "auth.jwt.m.secret_file",
                "cannot read /nonexistent/secret",
            ),
            (
                format!("secret_file = \"{pem}\""),
                "auth.jwt.m.secret_file",
                "holds a PEM key",
            ),
        ];
        for (line, path, message) in rows {
            let s = section(&format!("algorithms = [\"HS256\"]\n{line}"));
            let problems = JwtProvider::build("m", &s, "auth.jwt.m").err().unwrap();
            assert_eq!(paths(&problems), [path], "{line}");
            assert!(problems[0].message.contains(message), "{problems:?}");
            assert!(!problems[0].message.contains("tiny-secret"));
            assert!(!problems[0].message.contains("MIIB"));
        }
    }

    #[test]
    fn compile_reports_keys_that_cannot_verify_a_listed_algorithm() {
        let (_f, path) = secret_file();
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).unwrap();
        let s = section(&format!(
            "algorithms = [\"HS256\", \"ES256\"]\nsecret_file = \"{path}\"\njwks_file = \"{}\"",
            jwks.display()
        ));
        let problems = JwtProvider::build("m", &s, "auth.jwt.m").err().unwrap();
        assert_eq!(paths(&problems), ["auth.jwt.m.jwks_file"]);
        let s = section(&format!(
            "algorithms = [\"HS256\", \"EdDSA\"]\nsecret_file = \"{path}\"\npublic_key_files = [\"/nonexistent.pem\"]"
        ));
        let problems = JwtProvider::build("m", &s, "auth.jwt.m").err().unwrap();
        assert_eq!(paths(&problems), ["auth.jwt.m.public_key_files[0]"]);
    }

    #[test]
    fn shape_is_checked_before_decoding() {
        let rows = [
            ("", JwtError::Malformed),
            ("abc", JwtError::Malformed),
            ("a.b", JwtError::Malformed),
            ("a.b.c.d", JwtError::Malformed),
            (".b.c", JwtError::Malformed),
            ("a..c", JwtError::Malformed),
            ("a.b.c d", JwtError::Malformed),
            ("a.b.c=", JwtError::Malformed),
        ];
        for (token, want) in rows {
            assert_eq!(check_shape(token), Err(want), "{token:?}");
        }
        assert_eq!(check_shape("a.b."), Ok(()));
        assert_eq!(check_shape("a.b.c"), Ok(()));
        let big = format!("{}.b.c", "a".repeat(MAX_TOKEN_BYTES));
        assert_eq!(check_shape(&big), Err(JwtError::TooLarge));
    }

    #[test]
    fn header_alg_none_crit_and_garbage() {
        let tok = |h: &str| format!("{}.e30.sig", URL_SAFE_NO_PAD.encode(h));
        let rows = [
            (r#"{"alg":"none"}"#, Err(JwtError::AlgorithmNotAllowed)),
            (r#"{"alg":"HS1024"}"#, Err(JwtError::AlgorithmNotAllowed)),
            (r#"{"typ":"JWT"}"#, Err(JwtError::Malformed)),
            (
                r#"{"alg":"HS256","crit":["exp"]}"#,
                Err(JwtError::Malformed),
            ),
            (r#"{"alg":"HS256","alg":"RS256"}"#, Err(JwtError::Malformed)),
            (r#"{"alg":"HS256","kid":7}"#, Err(JwtError::Malformed)),
            ("not json", Err(JwtError::Malformed)),
            (
                r#"{"alg":"RS256","kid":"k1","jku":"https://evil.example/jwks"}"#,
                Ok((Algorithm::RS256, Some("k1"))),
            ),
        ];
        for (header, want) in rows {
            let got = TokenHeader::parse(&tok(header));
            let got = got
                .as_ref()
                .map(|h| (h.alg, h.kid.as_deref()))
                .map_err(|e| *e);
            assert_eq!(got, want, "{header}");
        }
    }

    #[test]
    fn errors_map_to_reasons() {
        let (_f, p) =
            hs_provider("issuer = \"me\"\naudience = [\"api\", \"web\"]\nleeway = \"0s\"");
        let t = now();
        let ok = json!({"sub": "u", "iss": "me", "aud": "web", "exp": t + 60});
        let with = |patch: Value| {
            let mut c = ok.clone();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    c.as_object_mut().unwrap().remove(k);
                } else {
                    c[k] = v.clone();
                }
            }
            hs(&c)
        };
        let rows = [
            (with(json!({})), Ok(())),
            (with(json!({"aud": ["x", "api"]})), Ok(())),
            (with(json!({"exp": t - 10})), Err(JwtError::Expired)),
            (with(json!({"nbf": t + 60})), Err(JwtError::NotYetValid)),
            (with(json!({"iss": "you"})), Err(JwtError::WrongIssuer)),
            (
                with(json!({"iss": ["you", "me"]})),
                Err(JwtError::WrongIssuer),
            ),
            (with(json!({"aud": "other"})), Err(JwtError::WrongAudience)),
            (with(json!({"aud": null})), Err(JwtError::MissingClaim)),
            (with(json!({"iss": null})), Err(JwtError::MissingClaim)),
            (with(json!({"exp": null})), Err(JwtError::MissingClaim)),
            (
                with(json!({"exp": (t + 60).to_string()})),
                Err(JwtError::Malformed),
            ),
            (with(json!({"nbf": "0"})), Err(JwtError::Malformed)),
        ];
        run(async {
            for (token, want) in rows {
                let got = p.verify(&token).await.map(|_| ());
                assert_eq!(got, want, "{}", token);
            }
        });
    }

    #[test]
    fn cache_ttl_never_passes_exp() {
        let at = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
        let c = |exp: u64| json!({ "exp": exp });
        assert_eq!(
            cache_ttl(&c(1000), at(990, 0)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            cache_ttl(&c(1000), at(999, 900_000_000)),
            Some(Duration::from_millis(100))
        );
        assert_eq!(cache_ttl(&c(1000), at(1000, 0)), None);
        assert_eq!(cache_ttl(&c(1000), at(1001, 0)), None);
        assert_eq!(cache_ttl(&c(100_000), at(0, 0)), Some(CACHE_TTL_MAX));
        assert_eq!(cache_ttl(&json!({ "exp": 1.5e3 }), at(0, 0)), None);
    }

    #[test]
    fn cached_entries_are_per_token_and_per_key_generation() {
        let (_f, p) = hs_provider("cache_entries = 10");
        let a = hs(&json!({"sub": "a", "exp": now() + 60}));
        let b = hs(&json!({"sub": "b", "exp": now() + 60}));
        run(async {
            assert_eq!(p.verify(&a).await.unwrap().subject.as_deref(), Some("a"));
            assert!(p.cached(&a, 0).is_some());
            assert!(p.cached(&a, 1).is_none(), "another key generation");
            assert!(p.cached(&b, 0).is_none());
            assert_eq!(p.verify(&b).await.unwrap().subject.as_deref(), Some("b"));
        });
    }

    #[test]
    fn with_a_cache_the_shape_is_still_checked_before_verifying() {
        let (_f, p) = hs_provider("cache_entries = 10");
        let good = hs(&json!({"sub": "a", "exp": now() + 60}));
        run(async {
            assert!(p.verify(&good).await.is_ok());
            // Cached now; a token that differs by one byte is not, and its shape is checked.
            let bad = format!("{good}!");
            assert_eq!(p.verify(&bad).await.err(), Some(JwtError::Malformed));
            let big = "a".repeat(MAX_TOKEN_BYTES + 1);
            assert_eq!(p.verify(&big).await.err(), Some(JwtError::TooLarge));
            assert!(p.verify(&good).await.is_ok());
        });
    }

    #[test]
    fn mapped_headers_lists_every_header_the_provider_sets() {
        let (_f, p) = hs_provider(
            "subject_header = \"X-Sub\"\nroles_header = \"X-Roles\"\nclaim_headers = { email = \"X-Email\", tenant = \"X-Tenant\" }",
        );
        let names: Vec<&str> = p.mapped_headers().iter().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-sub", "x-roles", "x-email", "x-tenant"]);
    }

    #[test]
    fn reasons_never_carry_material() {
        for e in [
            JwtError::Malformed,
            JwtError::TooLarge,
            JwtError::AlgorithmNotAllowed,
            JwtError::UnknownKey,
            JwtError::BadSignature,
            JwtError::Expired,
            JwtError::NotYetValid,
            JwtError::WrongIssuer,
            JwtError::WrongAudience,
            JwtError::MissingClaim,
        ] {
            assert!(e
                .reason()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert_eq!(e.to_string(), e.reason());
        }
    }
}
