//! JWT authentication, table-driven, with keys generated at test time.
//!
//! The first half drives [`JwtProvider`] directly: every algorithm family, time and claim
//! checks, algorithm confusion, malformed and oversized tokens, claim-to-header mapping, JWKS
//! rotation from a real HTTP server with a rate-limited refresh, the background refresher, and
//! the verification cache. The second half runs the same kinds of token through the real
//! gateway binary (status, `WWW-Authenticate`, JSON reason, what the upstream receives).
#![allow(clippy::unwrap_used)]

use crate::common::*;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tollgate::config::file::JwtSection;
use tollgate::config::FromConfig;
use tollgate::internals::{JwtError, JwtProvider, MAX_TOKEN_BYTES};

const SECRET: &str = "test-secret-0123456789abcdef0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Key material made for this test run, public halves written to a temporary directory.
struct Keys {
    dir: tempfile::TempDir,
    rsa_private: Vec<u8>,
    rsa_public: Vec<u8>,
    /// Two more RSA keys, published through JWKS only.
    rsa2: Rsa<openssl::pkey::Private>,
    rsa3: Rsa<openssl::pkey::Private>,
    ec256_private: Vec<u8>,
    ec384_private: Vec<u8>,
    ed_private: Vec<u8>,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let rsa = Rsa::generate(2048).unwrap();
        let rsa_private = rsa.private_key_to_pem().unwrap();
        let rsa_public = rsa.public_key_to_pem().unwrap();
        let ec = |nid| {
            let key = EcKey::generate(&EcGroup::from_curve_name(nid).unwrap()).unwrap();
            let pkey = PKey::from_ec_key(key).unwrap();
            (
                pkey.private_key_to_pem_pkcs8().unwrap(),
                pkey.public_key_to_pem().unwrap(),
            )
        };
        let (ec256_private, ec256_public) = ec(Nid::X9_62_PRIME256V1);
        let (ec384_private, ec384_public) = ec(Nid::SECP384R1);
        let ed = PKey::generate_ed25519().unwrap();
        let ed_private = ed.private_key_to_pem_pkcs8().unwrap();
        let ed_public = ed.public_key_to_pem().unwrap();
        for (name, bytes) in [
            ("secret", SECRET.as_bytes().to_vec()),
            ("rsa.pem", rsa_public.clone()),
            ("rsa-private.pem", rsa_private.clone()),
            ("ec256.pem", ec256_public),
            ("ec384.pem", ec384_public),
            ("ed.pem", ed_public),
        ] {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        Keys {
            dir,
            rsa_private,
            rsa_public,
            rsa2: Rsa::generate(2048).unwrap(),
            rsa3: Rsa::generate(2048).unwrap(),
            ec256_private,
            ec384_private,
            ed_private,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn encoding(&self, alg: Algorithm) -> EncodingKey {
        match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                EncodingKey::from_secret(SECRET.as_bytes())
            }
            Algorithm::ES256 => EncodingKey::from_ec_pem(&self.ec256_private).unwrap(),
            Algorithm::ES384 => EncodingKey::from_ec_pem(&self.ec384_private).unwrap(),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&self.ed_private).unwrap(),
            _ => EncodingKey::from_rsa_pem(&self.rsa_private).unwrap(),
        }
    }

    fn jwk_of(rsa: &Rsa<openssl::pkey::Private>, kid: &str) -> Value {
        json!({
            "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec()),
        })
    }

    /// The JWK of `rsa2`.
    fn jwk(&self, kid: &str) -> Value {
        Self::jwk_of(&self.rsa2, kid)
    }

    fn sign_by(rsa: &Rsa<openssl::pkey::Private>, kid: &str, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.into());
        let key = EncodingKey::from_rsa_pem(&rsa.private_key_to_pem().unwrap()).unwrap();
        jsonwebtoken::encode(&h, claims, &key).unwrap()
    }

    /// An RS256 token signed by `rsa2`, naming `kid`.
    fn sign_rsa2(&self, kid: &str, claims: &Value) -> String {
        Self::sign_by(&self.rsa2, kid, claims)
    }
}

/// The standard claims, with `extra` merged in (`null` removes a claim).
fn claims(extra: Value) -> Value {
    let mut c = json!({ "sub": "user-7", "roles": ["reader"], "iss": "tollgate-tests", "aud": "api", "exp": now() + 600 });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn sign(keys: &Keys, alg: Algorithm, c: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), c, &keys.encoding(alg)).unwrap()
}

/// A token with a hand-made header (for `alg: none` and similar).
fn raw_token(header: &str, c: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        b64(header.as_bytes()),
        b64(c.to_string().as_bytes()),
        signature
    )
}

/// `token` with the first character of its signature changed.
fn tampered(token: &str) -> String {
    let (head, sig) = token.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    format!("{head}.{flipped}{}", &sig[1..])
}

fn compile(toml_text: &str) -> Result<JwtProvider, String> {
    let section: JwtSection = toml::from_str(toml_text).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    JwtProvider::from_config("auth.jwt.t", &section, "t", &mut problems).ok_or_else(|| {
        problems
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

fn provider(toml_text: &str) -> JwtProvider {
    compile(toml_text).unwrap_or_else(|e| panic!("{e}"))
}

/// The providers of the table, by name.
fn providers(keys: &Keys) -> HashMap<&'static str, JwtProvider> {
    let secret = keys.path("secret");
    HashMap::from([
        (
            "hs",
            provider(&format!(
                "algorithms = [\"HS256\", \"HS384\", \"HS512\"]\nsecret_file = \"{secret}\""
            )),
        ),
        (
            "pub",
            provider(&format!(
                "algorithms = [\"RS256\", \"RS384\", \"RS512\", \"PS256\", \"PS384\", \"PS512\", \"ES256\", \"ES384\", \"EdDSA\"]\n\
                 public_key_files = [\"{}\", \"{}\", \"{}\", \"{}\"]",
                keys.path("rsa.pem"),
                keys.path("ec256.pem"),
                keys.path("ec384.pem"),
                keys.path("ed.pem"),
            )),
        ),
        (
            // A secret and an RSA key side by side: each verifies only its own family.
            "mixed",
            provider(&format!(
                "algorithms = [\"HS256\", \"RS256\"]\nsecret_file = \"{secret}\"\npublic_key_files = [\"{}\"]",
                keys.path("rsa.pem")
            )),
        ),
        (
            "strict",
            provider(&format!(
                "algorithms = [\"HS256\"]\nsecret_file = \"{secret}\"\nissuer = \"tollgate-tests\"\naudience = [\"api\", \"admin-api\"]\nleeway = \"5s\""
            )),
        ),
        (
            "scope",
            provider(&format!(
                "algorithms = [\"HS256\"]\nsecret_file = \"{secret}\"\nroles_claim = \"scope\""
            )),
        ),
        (
            "keycloak",
            provider(&format!(
                "algorithms = [\"HS256\"]\nsecret_file = \"{secret}\"\nroles_claim = \"realm_access.roles\"\n\
                 subject_header = \"X-Sub\"\nroles_header = \"X-Roles\"\n\
                 claim_headers = {{ email = \"X-User-Email\", \"tenant.id\" = \"X-Tenant\", admin = \"X-Admin\", groups = \"X-Groups\" }}"
            )),
        ),
    ])
}

/// One row: which provider, which token, and either the roles and headers expected or the
/// error.
struct Row {
    name: &'static str,
    provider: &'static str,
    token: String,
    want: Result<Expect, JwtError>,
}

#[derive(Default)]
struct Expect {
    roles: &'static [&'static str],
    headers: &'static [(&'static str, &'static str)],
}

fn ok() -> Result<Expect, JwtError> {
    Ok(Expect {
        roles: &["reader"],
        headers: &[("x-user-id", "user-7"), ("x-user-roles", "reader")],
    })
}

fn row(
    name: &'static str,
    provider: &'static str,
    token: String,
    want: Result<Expect, JwtError>,
) -> Row {
    Row {
        name,
        provider,
        token,
        want,
    }
}

#[tokio::test]
async fn provider_table() {
    let keys = Keys::new();
    let providers = providers(&keys);
    let ok_claims = claims(json!({}));
    let hs = |c: Value| sign(&keys, Algorithm::HS256, &c);
    let rs_token = sign(&keys, Algorithm::RS256, &ok_claims);
    // The classic confusion attack: the RSA public key PEM used as an HMAC secret.
    let rsa_pem_as_secret = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &ok_claims,
        &EncodingKey::from_secret(&keys.rsa_public),
    )
    .unwrap();
    // An RS256 token whose header was rewritten to HS256, signature kept.
    let relabelled = {
        let (_, rest) = rs_token.split_once('.').unwrap();
        format!("{}.{rest}", b64(br#"{"alg":"HS256","typ":"JWT"}"#))
    };
    // An ES384 token signed with the P-256 key.
    let wrong_curve = {
        let key = EncodingKey::from_ec_pem(&keys.ec256_private).unwrap();
        let header = raw_token(r#"{"alg":"ES384"}"#, &ok_claims, "");
        let message = header.trim_end_matches('.');
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::ES256).unwrap();
        format!("{message}.{sig}")
    };
    let t = now();
    let mut rows = Vec::new();
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        rows.push(row("valid HS", "hs", sign(&keys, alg, &ok_claims), ok()));
    }
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ] {
        rows.push(row(
            "valid public key",
            "pub",
            sign(&keys, alg, &ok_claims),
            ok(),
        ));
    }
    rows.extend([
        row(
            "HS256 next to an RSA key",
            "mixed",
            hs(claims(json!({}))),
            ok(),
        ),
        row("RS256 next to a secret", "mixed", rs_token.clone(), ok()),
        row(
            "expired",
            "strict",
            hs(claims(json!({"exp": t - 3600}))),
            Err(JwtError::Expired),
        ),
        row(
            "expired within leeway",
            "strict",
            hs(claims(json!({"exp": t - 2}))),
            ok(),
        ),
        row(
            "nbf in the future",
            "strict",
            hs(claims(json!({"nbf": t + 3600}))),
            Err(JwtError::NotYetValid),
        ),
        row(
            "nbf within leeway",
            "strict",
            hs(claims(json!({"nbf": t + 2}))),
            ok(),
        ),
        row(
            "wrong issuer",
            "strict",
            hs(claims(json!({"iss": "evil"}))),
            Err(JwtError::WrongIssuer),
        ),
        row(
            "issuer list naming ours",
            "strict",
            hs(claims(json!({"iss": ["evil", "tollgate-tests"]}))),
            Err(JwtError::WrongIssuer),
        ),
        row(
            "missing issuer",
            "strict",
            hs(claims(json!({"iss": null}))),
            Err(JwtError::MissingClaim),
        ),
        row(
            "wrong audience",
            "strict",
            hs(claims(json!({"aud": "other"}))),
            Err(JwtError::WrongAudience),
        ),
        row(
            "audience list with one of ours",
            "strict",
            hs(claims(json!({"aud": ["other", "admin-api"]}))),
            ok(),
        ),
        row(
            "missing audience",
            "strict",
            hs(claims(json!({"aud": null}))),
            Err(JwtError::MissingClaim),
        ),
        row(
            "no exp",
            "hs",
            hs(claims(json!({"exp": null}))),
            Err(JwtError::MissingClaim),
        ),
        row(
            "string exp",
            "hs",
            hs(claims(json!({"exp": (t + 600).to_string()}))),
            Err(JwtError::Malformed),
        ),
        row(
            "string exp in the past",
            "hs",
            hs(claims(json!({"exp": (t - 600).to_string()}))),
            Err(JwtError::Malformed),
        ),
        row(
            "bad signature",
            "hs",
            tampered(&hs(claims(json!({})))),
            Err(JwtError::BadSignature),
        ),
        row(
            "bad RSA signature",
            "pub",
            tampered(&rs_token),
            Err(JwtError::BadSignature),
        ),
        row(
            "alg none",
            "hs",
            raw_token(r#"{"alg":"none","typ":"JWT"}"#, &ok_claims, ""),
            Err(JwtError::AlgorithmNotAllowed),
        ),
        row(
            "alg None",
            "pub",
            raw_token(r#"{"alg":"None"}"#, &ok_claims, ""),
            Err(JwtError::AlgorithmNotAllowed),
        ),
        row(
            "HS256 signed with the RSA public key PEM, RS-only provider",
            "pub",
            rsa_pem_as_secret.clone(),
            Err(JwtError::AlgorithmNotAllowed),
        ),
        row(
            "HS256 signed with the RSA public key PEM, provider with both",
            "mixed",
            rsa_pem_as_secret,
            Err(JwtError::BadSignature),
        ),
        row(
            "RS256 token relabelled HS256",
            "mixed",
            relabelled,
            Err(JwtError::BadSignature),
        ),
        row(
            "ES384 signed with a P-256 key",
            "pub",
            wrong_curve,
            Err(JwtError::BadSignature),
        ),
        row(
            "algorithm outside the pinned list",
            "strict",
            sign(&keys, Algorithm::HS384, &ok_claims),
            Err(JwtError::AlgorithmNotAllowed),
        ),
        row(
            "RS token to an HS provider",
            "hs",
            rs_token.clone(),
            Err(JwtError::AlgorithmNotAllowed),
        ),
        row(
            "jku is never followed",
            "pub",
            {
                let mut h = Header::new(Algorithm::RS256);
                h.jku = Some("http://127.0.0.1:9/evil.json".into());
                h.kid = Some("evil".into());
                let other = Rsa::generate(2048).unwrap();
                let key = EncodingKey::from_rsa_pem(&other.private_key_to_pem().unwrap()).unwrap();
                jsonwebtoken::encode(&h, &ok_claims, &key).unwrap()
            },
            Err(JwtError::BadSignature),
        ),
        row(
            "truncated",
            "hs",
            hs(claims(json!({})))[..40].to_string(),
            Err(JwtError::Malformed),
        ),
        row(
            "short signature",
            "hs",
            {
                let t = hs(claims(json!({})));
                let (message, _) = t.rsplit_once('.').unwrap();
                format!("{message}.{}", b64(&[0u8; 16]))
            },
            Err(JwtError::BadSignature),
        ),
        row(
            "garbage",
            "hs",
            "not-a-token-at-all".into(),
            Err(JwtError::Malformed),
        ),
        row(
            "garbage in three segments",
            "hs",
            "aaaa.bbbb.cccc".into(),
            Err(JwtError::Malformed),
        ),
        row("empty", "hs", String::new(), Err(JwtError::Malformed)),
        row(
            "64 KiB token",
            "hs",
            format!(
                "{}.{}.{}",
                "a".repeat(32 * 1024),
                "b".repeat(32 * 1024),
                "c"
            ),
            Err(JwtError::TooLarge),
        ),
        row(
            "just over 8 KiB, otherwise valid",
            "hs",
            hs(claims(json!({"pad": "x".repeat(MAX_TOKEN_BYTES)}))),
            Err(JwtError::TooLarge),
        ),
        row(
            "roles as a space-separated string",
            "scope",
            hs(claims(json!({"scope": "read write"}))),
            Ok(Expect {
                roles: &["read", "write"],
                headers: &[("x-user-id", "user-7"), ("x-user-roles", "read,write")],
            }),
        ),
        row(
            "nested roles claim and claim headers",
            "keycloak",
            hs(claims(json!({
                "realm_access": {"roles": ["admin", "ops"]},
                "email": "ann@example.com", "tenant": {"id": 42}, "admin": true, "groups": ["g"],
            }))),
            Ok(Expect {
                roles: &["admin", "ops"],
                headers: &[
                    ("x-sub", "user-7"),
                    ("x-roles", "admin,ops"),
                    ("x-admin", "true"),
                    ("x-user-email", "ann@example.com"),
                    ("x-tenant", "42"),
                ],
            }),
        ),
        row(
            "header injection in claims is dropped",
            "keycloak",
            hs(claims(json!({
                "sub": "eve\r\nX-Admin: true",
                "realm_access": {"roles": ["reader,admin", "ops"]},
                "email": "a\u{7f}b",
            }))),
            Ok(Expect {
                roles: &["ops"],
                headers: &[("x-roles", "ops")],
            }),
        ),
    ]);
    for r in rows {
        let p = &providers[r.provider];
        let got = p.verify(&r.token).await;
        match (&got, &r.want) {
            (Ok(t), Ok(want)) => {
                assert_eq!(*t.roles, *want.roles, "{}: roles", r.name);
                let mut got_headers: Vec<(&str, &str)> = t
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
                    .collect();
                got_headers.sort();
                let mut want_headers = want.headers.to_vec();
                want_headers.sort();
                assert_eq!(got_headers, want_headers, "{}: headers", r.name);
                let sub = want_headers
                    .iter()
                    .find(|(k, _)| *k == "x-user-id" || *k == "x-sub")
                    .map(|(_, v)| v.to_string());
                assert_eq!(t.subject.as_deref(), sub.as_deref(), "{}: subject", r.name);
            }
            (Err(e), Err(want)) => {
                assert_eq!(e, want, "{}", r.name);
                assert!(
                    !e.reason().contains('.') && e.reason().len() < 32,
                    "{}: no token material in the reason",
                    r.name
                );
            }
            (got, want) => panic!(
                "{}: got {:?}, want {:?}",
                r.name,
                got.as_ref().map(|t| &t.subject),
                want.as_ref().map(|_| "ok")
            ),
        }
    }
}

#[test]
fn config_time_key_checks() {
    let keys = Keys::new();
    let rows = [
        (
            format!(
                "algorithms = [\"ES384\"]\npublic_key_files = [\"{}\"]",
                keys.path("ec256.pem")
            ),
            "auth.jwt.t.algorithms[0]: no configured key verifies ES384",
        ),
        (
            format!(
                "algorithms = [\"RS256\"]\npublic_key_files = [\"{}\"]",
                keys.path("rsa-private.pem")
            ),
            "auth.jwt.t.public_key_files[0]",
        ),
        (
            format!(
                "algorithms = [\"HS256\"]\nsecret_file = \"{}\"",
                keys.path("rsa.pem")
            ),
            "auth.jwt.t.secret_file",
        ),
        (
            format!(
                "algorithms = [\"RS256\", \"EdDSA\"]\npublic_key_files = [\"{}\"]",
                keys.path("rsa.pem")
            ),
            "auth.jwt.t.algorithms[1]: no configured key verifies EdDSA",
        ),
        (
            format!(
                "algorithms = [\"HS256\"]\npublic_key_files = [\"{}\"]",
                keys.path("rsa.pem")
            ),
            "auth.jwt.t.algorithms[0]: HS256 needs secret_env or secret_file",
        ),
    ];
    for (text, want) in rows {
        let err = compile(&text).err().unwrap_or_default();
        assert!(err.contains(want), "{text}\n=> {err}");
        assert!(!err.contains("MII"), "no key material in {err}");
    }
}

/// A JWKS endpoint whose document, status and delay the test changes.
struct Jwks {
    backend: Backend,
    doc: Arc<Mutex<(u16, String)>>,
    delay_ms: Arc<AtomicU64>,
}

impl Jwks {
    fn start(doc: Value) -> Jwks {
        let doc = Arc::new(Mutex::new((200, doc.to_string())));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (d, ms) = (doc.clone(), delay_ms.clone());
        let backend = Backend::start("jwks", move |_| {
            let (status, body) = d.lock().unwrap().clone();
            Reply::status(status)
                .header("content-type", "application/json")
                .body(body)
                .delay(Duration::from_millis(ms.load(Ordering::SeqCst)))
        });
        Jwks {
            backend,
            doc,
            delay_ms,
        }
    }

    fn serve(&self, status: u16, body: impl Into<String>) {
        *self.doc.lock().unwrap() = (status, body.into());
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.backend.addr)
    }

    fn fetches(&self) -> usize {
        self.backend.hits()
    }
}

/// Poll `f` until it returns `Some`, for at most `timeout`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    timeout: Duration,
    mut f: impl FnMut() -> F,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation_with_rate_limited_refresh() {
    let keys = Keys::new();
    let jwks = Jwks::start(json!({ "keys": [Keys::jwk_of(&keys.rsa2, "k1")] }));
    let p = Arc::new(provider(&format!(
        "algorithms = [\"RS256\"]\njwks_url = \"{}\"\njwks_min_refresh = \"1s\"\njwks_refresh = \"1h\"",
        jwks.url()
    )));
    let c = claims(json!({}));
    let k1 = Keys::sign_by(&keys.rsa2, "k1", &c);
    let k2 = Keys::sign_by(&keys.rsa3, "k2", &c);

    // Nothing fetched at compile time; the first token fetches, and waits for the keys.
    assert_eq!(jwks.fetches(), 0);
    assert_eq!(
        p.verify(&k1).await.unwrap().subject.as_deref(),
        Some("user-7")
    );
    assert_eq!(jwks.fetches(), 1);

    // The IdP rotates to k2. Within jwks_min_refresh of the last fetch, k2 is not fetched.
    jwks.serve(
        200,
        json!({ "keys": [Keys::jwk_of(&keys.rsa3, "k2")] }).to_string(),
    );
    let rotated = Instant::now();
    assert_eq!(p.verify(&k2).await.err(), Some(JwtError::UnknownKey));
    assert_eq!(jwks.fetches(), 1, "rate-limited");
    // Once the interval has passed, the next unknown kid fetches again and k2 verifies.
    let verified = eventually(Duration::from_secs(10), || async {
        p.verify(&k2).await.ok()
    })
    .await;
    assert!(verified.is_some(), "the rotated key verifies");
    assert_eq!(jwks.fetches(), 2, "one fetch per interval");
    assert!(rotated.elapsed() < Duration::from_secs(3));
    // k1 left the key set: its token is no longer accepted, even though it was cached.
    assert_eq!(p.verify(&k1).await.err(), Some(JwtError::UnknownKey));

    // A burst of unknown kids while the JWKS answers slowly: they all wait for one fetch.
    let last = Instant::now();
    jwks.delay_ms.store(300, Ordering::SeqCst);
    let before = jwks.fetches();
    // Signed first: signing is slow enough in a debug build to spread the burst.
    let tokens: Vec<String> = (0..50)
        .map(|i| Keys::sign_by(&keys.rsa3, &format!("unknown-{i}"), &c))
        .collect();
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(last.elapsed())).await;
    let burst = Instant::now();
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            let p = p.clone();
            tokio::spawn(async move { p.verify(&token).await.err() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Some(JwtError::UnknownKey));
    }
    let fetches = jwks.fetches() - before;
    let took = burst.elapsed();
    if took < Duration::from_secs(1) {
        assert_eq!(fetches, 1, "50 concurrent misses, one fetch");
    } else {
        // A very loaded machine: still never more than one fetch per interval.
        assert!(
            fetches as u64 <= 1 + took.as_secs(),
            "{fetches} fetches in {took:?}"
        );
    }
    // ... and the known key still verifies meanwhile.
    assert!(p.verify(&k2).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_failures_keep_the_previous_keys() {
    let keys = Keys::new();
    let jwks = Jwks::start(json!({ "keys": [keys.jwk("k1")] }));
    let p = provider(&format!(
        "algorithms = [\"RS256\"]\njwks_url = \"{}\"\njwks_min_refresh = \"1s\"\njwks_refresh = \"1h\"\ncache_entries = 0",
        jwks.url()
    ));
    let c = claims(json!({}));
    let k1 = keys.sign_rsa2("k1", &c);
    assert!(p.verify(&k1).await.is_ok());
    let big = format!(
        "{{\"keys\": [], \"pad\": \"{}\"}}",
        "x".repeat(1024 * 1024 + 1)
    );
    for (status, body) in [
        (500, "oops".to_string()),
        (200, "not json".to_string()),
        (200, big),
    ] {
        jwks.serve(status, body);
        let before = jwks.fetches();
        // An unknown kid forces a fetch once the interval has passed.
        let fetched = eventually(Duration::from_secs(5), || async {
            let _ = p.verify(&keys.sign_rsa2("nope", &c)).await;
            (jwks.fetches() > before).then_some(())
        })
        .await;
        assert!(fetched.is_some(), "status {status}: fetched");
        assert!(p.verify(&k1).await.is_ok(), "status {status}: keys kept");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresher_fetches_at_start_retries_and_stops_on_shutdown() {
    use pingora::services::background::BackgroundService;
    let keys = Keys::new();
    let jwks = Jwks::start(json!({}));
    jwks.serve(503, "starting");
    let p = Arc::new(provider(&format!(
        "algorithms = [\"RS256\"]\njwks_url = \"{}\"\njwks_min_refresh = \"1s\"\njwks_refresh = \"1h\"",
        jwks.url()
    )));
    let refresher = p.refresher().expect("a JWKS URL has a refresher");
    let (stop, watch) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move { refresher.start(watch).await });
    let first = eventually(Duration::from_secs(5), || async {
        (jwks.fetches() >= 1).then_some(())
    })
    .await;
    assert!(first.is_some(), "fetched at start");
    // The first fetch failed: the refresher tries again after jwks_min_refresh, not 1h.
    jwks.serve(200, json!({ "keys": [keys.jwk("k1")] }).to_string());
    let second = eventually(Duration::from_secs(5), || async {
        (jwks.fetches() >= 2).then_some(())
    })
    .await;
    assert!(second.is_some(), "retried");
    assert!(p
        .verify(&keys.sign_rsa2("k1", &claims(json!({}))))
        .await
        .is_ok());
    assert_eq!(jwks.fetches(), 2, "the key was there: no extra fetch");
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the refresher stops on shutdown")
        .unwrap();

    let no_url = provider(&format!(
        "algorithms = [\"HS256\"]\nsecret_file = \"{}\"",
        keys.path("secret")
    ));
    assert!(Arc::new(no_url).refresher().is_none());
}

#[tokio::test]
async fn cache_serves_the_same_identity_and_never_past_exp() {
    let keys = Keys::new();
    let p = provider(&format!(
        "algorithms = [\"HS256\"]\nsecret_file = \"{}\"\nleeway = \"0s\"\ncache_entries = 100",
        keys.path("secret")
    ));
    let long = sign(&keys, Algorithm::HS256, &claims(json!({})));
    let first = p.verify(&long).await.unwrap();
    for _ in 0..3 {
        let again = p.verify(&long).await.unwrap();
        assert_eq!(again.subject, first.subject);
        assert_eq!(again.roles, first.roles);
        assert_eq!(again.headers, first.headers);
    }
    // A different token for the same subject is verified on its own (a tampered copy of a
    // cached token is not a hit).
    assert_eq!(
        p.verify(&tampered(&long)).await.err(),
        Some(JwtError::BadSignature)
    );

    let short = sign(&keys, Algorithm::HS256, &claims(json!({"exp": now() + 1})));
    assert!(p.verify(&short).await.is_ok());
    assert!(p.verify(&short).await.is_ok(), "from cache");
    let refused = eventually(Duration::from_secs(5), || async {
        p.verify(&short).await.err()
    })
    .await;
    assert_eq!(
        refused,
        Some(JwtError::Expired),
        "an expired token is not served from cache"
    );
}

// ---------------------------------------------------------------------------------------
// Through the gateway.

fn gateway(keys: &Keys, backend: &Backend, jwks: &Backend) -> Gateway {
    Gateway::start(&format!(
        r#"
[limits]
max_header_bytes = "128KiB"

[auth.jwt.hs]
algorithms = ["HS256", "HS384", "HS512"]
secret_file = "{secret}"

[auth.jwt.pub]
algorithms = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]
public_key_files = ["{rsa}", "{ec256}", "{ec384}", "{ed}"]

[auth.jwt.strict]
algorithms = ["HS256"]
secret_file = "{secret}"
issuer = "tollgate-tests"
audience = ["api"]
leeway = "5s"

[auth.jwt.short]
algorithms = ["HS256"]
secret_file = "{secret}"
leeway = "0s"

[auth.jwt.jwks]
algorithms = ["RS256"]
jwks_url = "http://{jwks}/jwks.json"
jwks_min_refresh = "1s"
jwks_refresh = "1h"

[upstreams.app]
targets = [{{ address = "{app}" }}]

[[routes]]
name = "hs"
path_prefix = "/hs"
upstream = "app"
auth = ["jwt:hs"]

[[routes]]
name = "pub"
path_prefix = "/pub"
upstream = "app"
auth = ["jwt:pub"]

[[routes]]
name = "strict"
path_prefix = "/strict"
upstream = "app"
auth = ["jwt:strict"]
roles = ["reader"]

[[routes]]
name = "admin"
path_prefix = "/admin"
upstream = "app"
auth = ["jwt:strict"]
roles = ["admin"]

[[routes]]
name = "short"
path_prefix = "/short"
upstream = "app"
auth = ["jwt:short"]

[[routes]]
name = "jwks"
path_prefix = "/jwks"
upstream = "app"
auth = ["jwt:jwks"]
"#,
        secret = keys.path("secret"),
        rsa = keys.path("rsa.pem"),
        ec256 = keys.path("ec256.pem"),
        ec384 = keys.path("ec384.pem"),
        ed = keys.path("ed.pem"),
        jwks = jwks.addr,
        app = backend.addr,
    ))
}

fn jwks_server(doc: Arc<Mutex<Value>>) -> Backend {
    Backend::start("jwks", move |_| {
        Reply::status(200)
            .header("content-type", "application/json")
            .body(doc.lock().unwrap().to_string())
    })
}

fn call(gw: &Gateway, path: &str, token: Option<&str>) -> (u16, String, Option<String>) {
    let mut req = client().get(gw.url(path));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body = r.text().unwrap();
    let reason = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(String::from))
        .unwrap_or_default();
    (status, reason, challenge)
}

#[test]
fn gateway_jwt_table() {
    let keys = Keys::new();
    let app = Backend::echo("app");
    let jwks = jwks_server(Arc::new(Mutex::new(serde_json::json!({ "keys": [] }))));
    let gw = gateway(&keys, &app, &jwks);
    let ok = claims(serde_json::json!({}));
    let rsa_public_as_secret = {
        let key = EncodingKey::from_secret(&keys.rsa_public);
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &ok, &key).unwrap()
    };
    let tampered = {
        let t = sign(&keys, Algorithm::HS256, &ok);
        let (head, sig) = t.rsplit_once('.').unwrap();
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        format!("{head}.{flipped}{}", &sig[1..])
    };
    let rows: Vec<(&str, &str, Option<String>, u16, &str)> = vec![
        (
            "HS256",
            "/hs",
            Some(sign(&keys, Algorithm::HS256, &ok)),
            200,
            "",
        ),
        (
            "HS384",
            "/hs",
            Some(sign(&keys, Algorithm::HS384, &ok)),
            200,
            "",
        ),
        (
            "HS512",
            "/hs",
            Some(sign(&keys, Algorithm::HS512, &ok)),
            200,
            "",
        ),
        (
            "RS256",
            "/pub",
            Some(sign(&keys, Algorithm::RS256, &ok)),
            200,
            "",
        ),
        (
            "RS384",
            "/pub",
            Some(sign(&keys, Algorithm::RS384, &ok)),
            200,
            "",
        ),
        (
            "RS512",
            "/pub",
            Some(sign(&keys, Algorithm::RS512, &ok)),
            200,
            "",
        ),
        (
            "PS256",
            "/pub",
            Some(sign(&keys, Algorithm::PS256, &ok)),
            200,
            "",
        ),
        (
            "ES256",
            "/pub",
            Some(sign(&keys, Algorithm::ES256, &ok)),
            200,
            "",
        ),
        (
            "ES384",
            "/pub",
            Some(sign(&keys, Algorithm::ES384, &ok)),
            200,
            "",
        ),
        (
            "EdDSA",
            "/pub",
            Some(sign(&keys, Algorithm::EdDSA, &ok)),
            200,
            "",
        ),
        ("no token", "/hs", None, 401, "missing_credentials"),
        (
            "expired",
            "/strict",
            Some(sign(
                &keys,
                Algorithm::HS256,
                &claims(serde_json::json!({"exp": now() - 3600})),
            )),
            401,
            "token_expired",
        ),
        (
            "expired within leeway",
            "/strict",
            Some(sign(
                &keys,
                Algorithm::HS256,
                &claims(serde_json::json!({"exp": now() - 2})),
            )),
            200,
            "",
        ),
        (
            "not yet valid",
            "/strict",
            Some(sign(
                &keys,
                Algorithm::HS256,
                &claims(serde_json::json!({"nbf": now() + 3600})),
            )),
            401,
            "token_not_yet_valid",
        ),
        (
            "wrong issuer",
            "/strict",
            Some(sign(
                &keys,
                Algorithm::HS256,
                &claims(serde_json::json!({"iss": "evil"})),
            )),
            401,
            "wrong_issuer",
        ),
        (
            "missing issuer",
            "/strict",
            Some(sign(
                &keys,
                Algorithm::HS256,
                &claims(serde_json::json!({"iss": null})),
            )),
            401,
            "missing_claim",
        ),
        (
            "wrong audience",
            "/strict",
            Some(sign(
                &keys,
                Algorithm::HS256,
                &claims(serde_json::json!({"aud": "other"})),
            )),
            401,
            "wrong_audience",
        ),
        ("bad signature", "/hs", Some(tampered), 401, "bad_signature"),
        (
            "alg none",
            "/hs",
            Some(raw_token(r#"{"alg":"none","typ":"JWT"}"#, &ok, "")),
            401,
            "algorithm_not_allowed",
        ),
        (
            "HS256 signed with the RSA public key",
            "/pub",
            Some(rsa_public_as_secret),
            401,
            "algorithm_not_allowed",
        ),
        (
            "algorithm outside the pinned list",
            "/strict",
            Some(sign(&keys, Algorithm::HS384, &ok)),
            401,
            "algorithm_not_allowed",
        ),
        (
            "no exp",
            "/hs",
            Some(sign(
                &keys,
                Algorithm::HS256,
                &claims(serde_json::json!({"exp": null})),
            )),
            401,
            "missing_claim",
        ),
        (
            "string exp",
            "/hs",
            Some(sign(
                &keys,
                Algorithm::HS256,
                &claims(serde_json::json!({"exp": (now() + 600).to_string()})),
            )),
            401,
            "malformed_token",
        ),
        (
            "truncated",
            "/hs",
            Some(sign(&keys, Algorithm::HS256, &ok)[..40].to_string()),
            401,
            "malformed_token",
        ),
        (
            "garbage",
            "/hs",
            Some("not-a-token-at-all".to_string()),
            401,
            "malformed_token",
        ),
        (
            "64 KiB token",
            "/hs",
            Some(format!(
                "{}.{}.{}",
                "a".repeat(32 * 1024),
                "b".repeat(32 * 1024),
                "c"
            )),
            401,
            "token_too_large",
        ),
        (
            "role present",
            "/strict",
            Some(sign(&keys, Algorithm::HS256, &ok)),
            200,
            "",
        ),
        (
            "role missing",
            "/admin",
            Some(sign(&keys, Algorithm::HS256, &ok)),
            403,
            "missing_role",
        ),
    ];
    for (name, path, token, status, reason) in rows {
        let before = app.hits();
        let (got, got_reason, challenge) = call(&gw, path, token.as_deref());
        assert_eq!(got, status, "{name}: {got_reason}");
        if status == 200 {
            let seen = app.last_request();
            assert_eq!(seen.header("x-user-id"), Some("user-7"), "{name}");
            assert_eq!(seen.header("x-user-roles"), Some("reader"), "{name}");
        } else {
            assert_eq!(got_reason, reason, "{name}");
            assert_eq!(
                app.hits(),
                before,
                "{name}: refused requests never reach the upstream"
            );
            if let Some(t) = &token {
                assert!(
                    !got_reason.contains(&t[..t.len().min(20)]),
                    "{name}: no token material in the reason"
                );
            }
        }
        if status == 401 {
            let want = if token.is_some() {
                "Bearer error=\"invalid_token\""
            } else {
                "Bearer error=\"invalid_request\""
            };
            assert_eq!(challenge.as_deref(), Some(want), "{name}");
        }
    }
}

#[test]
fn unknown_kid_refreshes_jwks_at_most_once_per_interval() {
    let keys = Keys::new();
    let app = Backend::echo("app");
    let doc = Arc::new(Mutex::new(serde_json::json!({ "keys": [] })));
    let jwks = jwks_server(doc.clone());
    let gw = gateway(&keys, &app, &jwks);
    // The background fetch at start-up.
    wait_for(Duration::from_secs(10), || (jwks.hits() >= 1).then_some(()))
        .expect("JWKS fetched at start");
    let token = keys.sign_rsa2("k2", &claims(serde_json::json!({})));
    assert_eq!(call(&gw, "/jwks/x", Some(&token)).0, 401);

    // Rotate: the IdP now publishes k2. A burst of requests triggers at most one fetch per
    // second, and the new key is picked up without a restart.
    *doc.lock().unwrap() = serde_json::json!({ "keys": [keys.jwk("k2")] });
    let fetches_before = jwks.hits();
    let started = std::time::Instant::now();
    let admitted = wait_for(Duration::from_secs(10), || {
        (call(&gw, "/jwks/x", Some(&token)).0 == 200).then_some(())
    });
    assert!(admitted.is_some(), "the rotated key verifies");
    let burst = keys.sign_rsa2("k9-unknown", &claims(serde_json::json!({})));
    for _ in 0..20 {
        assert_eq!(call(&gw, "/jwks/x", Some(&burst)).0, 401);
    }
    let fetches = jwks.hits() - fetches_before;
    let allowed = started.elapsed().as_secs() + 2;
    assert!(
        fetches as u64 <= allowed,
        "{fetches} fetches in {:?}",
        started.elapsed()
    );
}

#[test]
fn cached_tokens_never_outlive_exp() {
    let keys = Keys::new();
    let app = Backend::echo("app");
    let jwks = jwks_server(Arc::new(Mutex::new(serde_json::json!({ "keys": [] }))));
    let gw = gateway(&keys, &app, &jwks);
    let token = sign(
        &keys,
        Algorithm::HS256,
        &claims(serde_json::json!({"exp": now() + 2})),
    );
    for _ in 0..3 {
        assert_eq!(
            call(&gw, "/short", Some(&token)).0,
            200,
            "served (from cache after the first)"
        );
    }
    let expired = wait_for(Duration::from_secs(6), || {
        (call(&gw, "/short", Some(&token)).0 == 401).then_some(())
    });
    assert!(
        expired.is_some(),
        "an expired token is refused even though it was cached"
    );
    assert_eq!(call(&gw, "/short", Some(&token)).1, "token_expired");
}

/// Regression: a key file replaced behind the same path kept verifying after a reload (and
/// the new key failed) until a restart, because what survived a reload was decided by the
/// section's text alone. For each kind of key file: the new key verifies after the reload,
/// a fresh token signed with the old key is refused.
#[test]
fn a_rotated_key_file_keeps_verifying_after_reload() {
    let keys = Keys::new();
    let app = Backend::echo("app");
    let jwks_doc = |rsa: &Rsa<openssl::pkey::Private>, kid: &str| {
        json!({ "keys": [Keys::jwk_of(rsa, kid)] }).to_string()
    };
    std::fs::write(keys.path("jwks.json"), jwks_doc(&keys.rsa2, "old")).unwrap();
    let gw = Gateway::start(&format!(
        r#"
[auth.jwt.hs]
algorithms = ["HS256"]
secret_file = "{secret}"

[auth.jwt.pem]
algorithms = ["RS256"]
public_key_files = ["{rsa}"]

[auth.jwt.jwks]
algorithms = ["RS256"]
jwks_file = "{jwks}"

[upstreams.app]
targets = [{{ address = "{app}" }}]

[[routes]]
name = "hs"
path_prefix = "/hs"
upstream = "app"
auth = ["jwt:hs"]

[[routes]]
name = "pem"
path_prefix = "/pem"
upstream = "app"
auth = ["jwt:pem"]

[[routes]]
name = "jwks"
path_prefix = "/jwks"
upstream = "app"
auth = ["jwt:jwks"]
"#,
        secret = keys.path("secret"),
        rsa = keys.path("rsa.pem"),
        jwks = keys.path("jwks.json"),
        app = app.addr,
    ));
    // Each token distinct (its own `jti`), so no verified-token cache can answer for it.
    let serial = AtomicU64::new(0);
    let fresh = || claims(json!({ "jti": serial.fetch_add(1, Ordering::Relaxed).to_string() }));
    const NEW_SECRET: &[u8] = b"rotated-secret-0123456789abcdef0123456789";
    let hs = |secret: &[u8], c: &Value| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            c,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    let pem = |rsa: &Rsa<openssl::pkey::Private>, c: &Value| {
        let key = EncodingKey::from_rsa_pem(&rsa.private_key_to_pem().unwrap()).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), c, &key).unwrap()
    };
    let old_rsa = Rsa::private_key_from_pem(&keys.rsa_private).unwrap();
    let old = |route: &str, c: &Value| match route {
        "/hs/x" => hs(SECRET.as_bytes(), c),
        "/pem/x" => pem(&old_rsa, c),
        _ => Keys::sign_by(&keys.rsa2, "old", c),
    };
    let new = |route: &str, c: &Value| match route {
        "/hs/x" => hs(NEW_SECRET, c),
        "/pem/x" => pem(&keys.rsa3, c),
        _ => Keys::sign_by(&keys.rsa3, "new", c),
    };
    let routes = ["/hs/x", "/pem/x", "/jwks/x"];
    for route in routes {
        assert_eq!(
            call(&gw, route, Some(&old(route, &fresh()))).0,
            200,
            "{route}"
        );
        assert_eq!(
            call(&gw, route, Some(&new(route, &fresh()))).0,
            401,
            "{route}"
        );
    }

    std::fs::write(keys.path("secret"), [NEW_SECRET, b"\n"].concat()).unwrap();
    std::fs::write(keys.path("rsa.pem"), keys.rsa3.public_key_to_pem().unwrap()).unwrap();
    std::fs::write(keys.path("jwks.json"), jwks_doc(&keys.rsa3, "new")).unwrap();
    let (status, answer) = gw.reload();
    assert_eq!(status, 200, "{answer}");

    for route in routes {
        assert_eq!(
            call(&gw, route, Some(&new(route, &fresh()))).0,
            200,
            "{route}: the new key verifies after the reload"
        );
        assert_eq!(
            call(&gw, route, Some(&old(route, &fresh()))).0,
            401,
            "{route}: the old key no longer verifies after the reload"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Published vectors: the RFCs' JOSE examples and Wycheproof's signature vectors.

/// The RFCs' JWS examples, written here from RFC 7515 Appendix A, RFC 7520 §4.4 and RFC
/// 8037 Appendix A.4, through the verifier the gateway uses: each verifies, and its
/// tampered form (one signature character changed) does not. The two JWT examples also go
/// through a provider built from their JWK: the signature passes and the 2011 `exp` is
/// what refuses them (`token_expired`), while the tampered one is `bad_signature`.
#[tokio::test]
async fn rfc_jose_examples_verify_and_their_tampered_forms_fail() {
    use jsonwebtoken::crypto::verify;
    use jsonwebtoken::DecodingKey;
    let b64 = |s: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .unwrap()
    };
    // RFC 7515 A.1 (HS256), A.3 (ES256); RFC 7520 §4.4 (HS256 over a text payload); RFC 8037
    // A.4 (EdDSA).
    let a1 = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let a1_key =
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
    let a3 = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
    let (a3_x, a3_y) = (
        "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
    );
    let r7520 = "eyJhbGciOiJIUzI1NiIsImtpZCI6IjAxOGMwYWU1LTRkOWItNDcxYi1iZmQ2LWVlZjMxNGJjNzAzNyJ9.SXTigJlzIGEgZGFuZ2Vyb3VzIGJ1c2luZXNzLCBGcm9kbywgZ29pbmcgb3V0IHlvdXIgZG9vci4gWW91IHN0ZXAgb250byB0aGUgcm9hZCwgYW5kIGlmIHlvdSBkb24ndCBrZWVwIHlvdXIgZmVldCwgdGhlcmXigJlzIG5vIGtub3dpbmcgd2hlcmUgeW91IG1pZ2h0IGJlIHN3ZXB0IG9mZiB0by4.s0h6KThzkfBBBkLspW1h84VsJZFTsPPqMDA7g1Md7p0";
    let r7520_key = "hJtXIZ2uSN5kbQfbtTNWbpdmhkV8FJG-Onbc6mxCcYg";
    let r8037 = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
    let r8037_x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    let cases: Vec<(&str, &str, DecodingKey, Algorithm)> = vec![
        (
            "RFC 7515 A.1",
            a1,
            DecodingKey::from_secret(&b64(a1_key)),
            Algorithm::HS256,
        ),
        (
            "RFC 7515 A.3",
            a3,
            DecodingKey::from_ec_components(a3_x, a3_y).unwrap(),
            Algorithm::ES256,
        ),
        (
            "RFC 7520 4.4",
            r7520,
            DecodingKey::from_secret(&b64(r7520_key)),
            Algorithm::HS256,
        ),
        (
            "RFC 8037 A.4",
            r8037,
            DecodingKey::from_ed_components(r8037_x).unwrap(),
            Algorithm::EdDSA,
        ),
    ];
    for (name, token, key, alg) in &cases {
        let (input, sig) = token.rsplit_once('.').unwrap();
        assert!(verify(sig, input.as_bytes(), key, *alg).unwrap(), "{name}");
        let t = tampered(token);
        let (_, bad) = t.rsplit_once('.').unwrap();
        assert!(
            !verify(bad, input.as_bytes(), key, *alg).unwrap_or(false),
            "{name} tampered"
        );
    }

    // The JWT examples through providers: the HMAC key as a secret file, the EC key as a
    // JWKS file.
    let dir = tempfile::tempdir().unwrap();
    let (secret, jwks) = (dir.path().join("secret"), dir.path().join("jwks.json"));
    std::fs::write(&secret, b64(a1_key)).unwrap();
    std::fs::write(
        &jwks,
        json!({ "keys": [{ "kty": "EC", "crv": "P-256", "x": a3_x, "y": a3_y, "alg": "ES256" }] })
            .to_string(),
    )
    .unwrap();
    let hs = provider(&format!(
        "algorithms = [\"HS256\"]\nsecret_file = \"{}\"\n",
        secret.display()
    ));
    let es = provider(&format!(
        "algorithms = [\"ES256\"]\njwks_file = \"{}\"\n",
        jwks.display()
    ));
    for (name, p, token) in [("RFC 7515 A.1", &hs, a1), ("RFC 7515 A.3", &es, a3)] {
        assert_eq!(
            p.verify(token).await.err(),
            Some(JwtError::Expired),
            "{name}"
        );
        assert_eq!(
            p.verify(&tampered(token)).await.err(),
            Some(JwtError::BadSignature),
            "{name} tampered"
        );
    }
}

/// Wycheproof's signature vectors (the `wycheproof` crate) for every algorithm family the
/// gateway accepts, through the verifier it uses (jsonwebtoken on RustCrypto): every
/// `valid` vector verifies and every `invalid` one fails (`acceptable` ones may go either
/// way). HMAC vectors with truncated tags are left out: a JWS tag is never truncated.
#[test]
fn wycheproof_signature_vectors() {
    use jsonwebtoken::crypto::verify;
    use jsonwebtoken::DecodingKey;
    use wycheproof::TestResult;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let mut counts = std::collections::BTreeMap::<&str, (usize, usize)>::new();
    let mut check = |family: &'static str, result: TestResult, ok: bool, id: String| {
        let c = counts.entry(family).or_default();
        match result {
            TestResult::Valid => assert!(ok, "{family} {id}: a valid vector failed"),
            TestResult::Invalid => assert!(!ok, "{family} {id}: an invalid vector verified"),
            TestResult::Acceptable => {}
        }
        c.0 += 1;
        c.1 += usize::from(ok);
    };

    use wycheproof::ecdsa::{TestName as Ec, TestSet as EcSet};
    for (name, alg, size) in [
        (Ec::EcdsaSecp256r1Sha256P1363, Algorithm::ES256, 32usize),
        (Ec::EcdsaSecp384r1Sha384P1363, Algorithm::ES384, 48),
    ] {
        for g in EcSet::load(name).unwrap().test_groups {
            // Coordinates as fixed-size big-endian octets (RFC 7518 §6.2.1.2).
            let fixed = |v: &[u8]| {
                let v = v.strip_prefix(&[0]).unwrap_or(v);
                let mut out = vec![0u8; size.saturating_sub(v.len())];
                out.extend_from_slice(v);
                out
            };
            let Ok(key) = DecodingKey::from_ec_components(
                &b64(&fixed(&g.key.affine_x)),
                &b64(&fixed(&g.key.affine_y)),
            ) else {
                continue;
            };
            for t in g.tests {
                let ok = verify(&b64(&t.sig), &t.msg, &key, alg).unwrap_or(false);
                check("ECDSA", t.result, ok, format!("{name:?} #{}", t.tc_id));
            }
        }
    }

    use wycheproof::rsa_pkcs1_verify::{TestName as Rsa, TestSet as RsaSet};
    for (name, alg) in [
        (Rsa::Rsa2048Sha256, Algorithm::RS256),
        (Rsa::Rsa3072Sha384, Algorithm::RS384),
        (Rsa::Rsa4096Sha512, Algorithm::RS512),
    ] {
        for g in RsaSet::load(name).unwrap().test_groups {
            let key = DecodingKey::from_rsa_raw_components(&g.key.n, &g.key.e);
            for t in g.tests {
                let ok = verify(&b64(&t.sig), &t.msg, &key, alg).unwrap_or(false);
                check("RSA PKCS#1", t.result, ok, format!("{name:?} #{}", t.tc_id));
            }
        }
    }

    use wycheproof::rsa_pss_verify::{TestName as Pss, TestSet as PssSet};
    for g in PssSet::load(Pss::RsaPss2048Sha256Mgf1SaltLen32)
        .unwrap()
        .test_groups
    {
        let key = DecodingKey::from_rsa_raw_components(&g.key.n, &g.key.e);
        for t in g.tests {
            let ok = verify(&b64(&t.sig), &t.msg, &key, Algorithm::PS256).unwrap_or(false);
            check("RSA-PSS", t.result, ok, format!("#{}", t.tc_id));
        }
    }

    use wycheproof::eddsa::{TestName as Ed, TestSet as EdSet};
    for g in EdSet::load(Ed::Ed25519).unwrap().test_groups {
        let Ok(key) = DecodingKey::from_ed_components(&b64(&g.key.pk)) else {
            continue;
        };
        for t in g.tests {
            let ok = verify(&b64(&t.sig), &t.msg, &key, Algorithm::EdDSA).unwrap_or(false);
            check("EdDSA", t.result, ok, format!("#{}", t.tc_id));
        }
    }

    use wycheproof::mac::{TestName as Mac, TestSet as MacSet};
    for (name, alg, bits) in [
        (Mac::HmacSha256, Algorithm::HS256, 256),
        (Mac::HmacSha384, Algorithm::HS384, 384),
        (Mac::HmacSha512, Algorithm::HS512, 512),
    ] {
        for g in MacSet::load(name).unwrap().test_groups {
            if g.tag_size != bits {
                continue;
            }
            for t in g.tests {
                let key = DecodingKey::from_secret(&t.key);
                let ok = verify(&b64(&t.tag), &t.msg, &key, alg).unwrap_or(false);
                check("HMAC", t.result, ok, format!("{name:?} #{}", t.tc_id));
            }
        }
    }
    eprintln!("Wycheproof vectors (run, verified): {counts:?}");
    for family in ["ECDSA", "RSA PKCS#1", "RSA-PSS", "EdDSA", "HMAC"] {
        assert!(
            counts.get(family).is_some_and(|c| c.0 > 50),
            "{family}: {counts:?}"
        );
    }
}
