//! JWT authentication through the real gateway, table-driven: every algorithm family with
//! keys generated at test time, time and claim checks, algorithm confusion, malformed and
//! oversized tokens, JWKS rotation with a rate-limited refresh, and the verification cache.
#![allow(clippy::unwrap_used)]

mod common;
use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Key material made for this test run.
struct Keys {
    dir: tempfile::TempDir,
    rsa_private: Vec<u8>,
    rsa_public: Vec<u8>,
    rsa2: Rsa<openssl::pkey::Private>,
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

    fn jwk(&self, kid: &str) -> serde_json::Value {
        serde_json::json!({
            "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": b64(&self.rsa2.n().to_vec()), "e": b64(&self.rsa2.e().to_vec()),
        })
    }

    fn sign_rsa2(&self, kid: &str, claims: &serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.into());
        let key = EncodingKey::from_rsa_pem(&self.rsa2.private_key_to_pem().unwrap()).unwrap();
        jsonwebtoken::encode(&h, claims, &key).unwrap()
    }
}

fn claims(extra: serde_json::Value) -> serde_json::Value {
    let mut c = serde_json::json!({ "sub": "user-7", "roles": ["reader"], "iss": "tollgate-tests", "aud": "api", "exp": now() + 600 });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn sign(keys: &Keys, alg: Algorithm, c: &serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), c, &keys.encoding(alg)).unwrap()
}

/// A token with a hand-made header (for `alg: none` and similar).
fn raw_token(header: &str, c: &serde_json::Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        b64(header.as_bytes()),
        b64(c.to_string().as_bytes()),
        signature
    )
}

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

fn jwks_server(doc: Arc<Mutex<serde_json::Value>>) -> Backend {
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
fn jwt_table() {
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
            "malformed_token",
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
            "malformed_token",
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
