//! JWT verification per algorithm, with the verification cache off and on: what a request
//! with a bearer token costs in `JwtProvider::verify` (shape check, header, signature, claims,
//! identity headers), and what a repeated token costs when it is served from the cache.
//!
//! Run: `cargo bench --bench jwt -- --quick`.
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use std::future::Future;
use std::hint::black_box;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tollgate::config::file::JwtSection;
use tollgate::config::FromConfig;
use tollgate::internals::{JwtError, JwtProvider, VerifiedToken};

fn provider(alg: &str, key_line: &str, cache: usize) -> JwtProvider {
    let section: JwtSection = toml::from_str(&format!(
        "algorithms = [\"{alg}\"]\n{key_line}\ncache_entries = {cache}\nissuer = \"bench\""
    ))
    .unwrap();
    JwtProvider::from_config("auth.jwt.bench", &section, "bench", &mut Vec::new()).unwrap()
}

/// `verify` with fixed keys never waits on anything: poll it once, without a runtime, so
/// the figures hold no executor overhead.
fn verify_now(p: &JwtProvider, token: &str) -> Result<VerifiedToken, JwtError> {
    let mut fut = std::pin::pin!(p.verify(token));
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => panic!("verify waited with fixed keys"),
    }
}

fn verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let secret = "bench-secret-0123456789abcdef0123";
    std::fs::write(dir.path().join("secret"), secret).unwrap();
    let rsa = Rsa::generate(2048).unwrap();
    std::fs::write(dir.path().join("rsa.pem"), rsa.public_key_to_pem().unwrap()).unwrap();
    let rsa_enc = || EncodingKey::from_rsa_pem(&rsa.private_key_to_pem().unwrap()).unwrap();
    let ec = |nid, file: &str| {
        let key =
            PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(nid).unwrap()).unwrap())
                .unwrap();
        std::fs::write(dir.path().join(file), key.public_key_to_pem().unwrap()).unwrap();
        EncodingKey::from_ec_pem(&key.private_key_to_pem_pkcs8().unwrap()).unwrap()
    };
    let ed = PKey::generate_ed25519().unwrap();
    std::fs::write(dir.path().join("ed.pem"), ed.public_key_to_pem().unwrap()).unwrap();
    let claims = serde_json::json!({
        "sub": "user-42", "roles": ["user", "reader"], "iss": "bench",
        "exp": 4_102_444_800u64, "iat": 1_700_000_000u64,
    });
    let p = |f: &str| dir.path().join(f).display().to_string();
    let secret_line = format!("secret_file = \"{}\"", p("secret"));
    let pem_line = |f: &str| format!("public_key_files = [\"{}\"]", p(f));
    let cases = [
        (
            Algorithm::HS256,
            secret_line.clone(),
            EncodingKey::from_secret(secret.as_bytes()),
        ),
        (
            Algorithm::HS512,
            secret_line,
            EncodingKey::from_secret(secret.as_bytes()),
        ),
        (Algorithm::RS256, pem_line("rsa.pem"), rsa_enc()),
        (Algorithm::PS256, pem_line("rsa.pem"), rsa_enc()),
        (
            Algorithm::ES256,
            pem_line("ec256.pem"),
            ec(Nid::X9_62_PRIME256V1, "ec256.pem"),
        ),
        (
            Algorithm::ES384,
            pem_line("ec384.pem"),
            ec(Nid::SECP384R1, "ec384.pem"),
        ),
        (
            Algorithm::EdDSA,
            pem_line("ed.pem"),
            EncodingKey::from_ed_pem(&ed.private_key_to_pem_pkcs8().unwrap()).unwrap(),
        ),
    ];
    let mut g = c.benchmark_group("jwt_verify");
    for (alg, key_line, enc) in cases {
        let name = format!("{alg:?}");
        let token = jsonwebtoken::encode(&Header::new(alg), &claims, &enc).unwrap();
        for (label, cache) in [("no_cache", 0), ("cached", 1000)] {
            let provider = provider(&name, &key_line, cache);
            assert!(verify_now(&provider, &token).is_ok());
            g.bench_function(format!("{name}/{label}"), |b| {
                b.iter(|| black_box(verify_now(&provider, black_box(&token)).unwrap()))
            });
        }
    }
    // What a refused token costs before any crypto: too large, and malformed.
    let provider = provider("HS256", &format!("secret_file = \"{}\"", p("secret")), 0);
    let huge = "a".repeat(64 * 1024);
    g.bench_function("refused/too_large", |b| {
        b.iter(|| black_box(verify_now(&provider, black_box(&huge)).is_err()))
    });
    g.bench_function("refused/alg_none", |b| {
        let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.";
        b.iter(|| black_box(verify_now(&provider, black_box(none)).is_err()))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = verify
}
criterion_main!(benches);
