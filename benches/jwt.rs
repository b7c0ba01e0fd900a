//! JWT verification per algorithm, with the verification cache off and on.
#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use std::hint::black_box;
use tollgate::config::file::JwtSection;
use tollgate::policy::jwt::JwtProvider;

fn provider(alg: &str, key_line: &str, cache: usize) -> JwtProvider {
    let section: JwtSection = toml::from_str(&format!(
        "algorithms = [\"{alg}\"]\n{key_line}\ncache_entries = {cache}"
    ))
    .unwrap();
    JwtProvider::compile("bench", &section, "auth.jwt.bench").unwrap()
}

fn verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let secret = "bench-secret-0123456789abcdef0123";
    std::fs::write(dir.path().join("secret"), secret).unwrap();
    let rsa = Rsa::generate(2048).unwrap();
    std::fs::write(dir.path().join("rsa.pem"), rsa.public_key_to_pem().unwrap()).unwrap();
    let ec = PKey::from_ec_key(
        EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("ec.pem"), ec.public_key_to_pem().unwrap()).unwrap();
    let ed = PKey::generate_ed25519().unwrap();
    std::fs::write(dir.path().join("ed.pem"), ed.public_key_to_pem().unwrap()).unwrap();
    let claims = serde_json::json!({ "sub": "user-42", "roles": ["user"], "iss": "bench", "exp": 4_102_444_800u64 });
    let p = |f: &str| dir.path().join(f).display().to_string();
    let cases = [
        (
            "HS256",
            format!("secret_file = \"{}\"", p("secret")),
            EncodingKey::from_secret(secret.as_bytes()),
            Algorithm::HS256,
        ),
        (
            "RS256",
            format!("public_key_files = [\"{}\"]", p("rsa.pem")),
            EncodingKey::from_rsa_pem(&rsa.private_key_to_pem().unwrap()).unwrap(),
            Algorithm::RS256,
        ),
        (
            "ES256",
            format!("public_key_files = [\"{}\"]", p("ec.pem")),
            EncodingKey::from_ec_pem(&ec.private_key_to_pem_pkcs8().unwrap()).unwrap(),
            Algorithm::ES256,
        ),
        (
            "EdDSA",
            format!("public_key_files = [\"{}\"]", p("ed.pem")),
            EncodingKey::from_ed_pem(&ed.private_key_to_pem_pkcs8().unwrap()).unwrap(),
            Algorithm::EdDSA,
        ),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("jwt_verify");
    for (name, key_line, enc, alg) in cases {
        let token = jsonwebtoken::encode(&Header::new(alg), &claims, &enc).unwrap();
        for (label, cache) in [("no_cache", 0), ("cached", 1000)] {
            let provider = provider(name, &key_line, cache);
            g.bench_function(format!("{name}/{label}"), |b| {
                b.iter(|| black_box(rt.block_on(provider.verify(black_box(&token))).unwrap()))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
