//! TLS termination with certificates generated at test time: the right certificate per SNI
//! name, TLS 1.1 refused, ALPN h2 giving HTTP/2 responses, HTTPS in X-Forwarded-Proto, and
//! clear `tollgate -t` errors for unreadable or mismatched files.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::io::{Read, Write};
use std::net::TcpStream;

/// A CA and leaf certificates signed by it, written to a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
}

impl Pki {
    fn new(leaves: &[(&str, &[&str])]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Tollgate Test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        for (file, names) in leaves {
            let mut params =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, names[0]);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.path().join(format!("{file}.crt")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{file}.key")), key.serialize_pem()).unwrap();
        }
        let ca_pem = ca_cert.pem();
        std::fs::write(dir.path().join("ca.crt"), &ca_pem).unwrap();
        Pki { dir, ca_pem }
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }
}

fn tls_gateway(pki: &Pki, backend: &Backend) -> Gateway {
    let config = format!(
        r#"
[server]
threads = 2
pid_file = "{{dir}}/tollgate.pid"
upgrade_sock = "{{dir}}/upgrade.sock"

[[listeners]]
address = "{{listen}}"
[listeners.tls]
certificates = [
  {{ cert = "{a}", key = "{ak}", names = ["a.test"] }},
  {{ cert = "{b}", key = "{bk}", names = ["*.b.test"] }},
]

[admin]
address = "{{admin}}"

[access_log]
target = "off"

[upstreams.app]
targets = [{{ address = "{app}" }}]

[[routes]]
name = "app"
upstream = "app"
"#,
        a = pki.path("a.crt"),
        ak = pki.path("a.key"),
        b = pki.path("b.crt"),
        bk = pki.path("b.key"),
        app = backend.addr
    );
    Gateway::start_full(&config).unwrap()
}

/// Handshake with `sni` and return the peer certificate's common name and the ALPN result.
fn handshake(
    gw: &Gateway,
    sni: &str,
    max: Option<SslVersion>,
    alpn: &[u8],
) -> Result<(String, Option<Vec<u8>>), String> {
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    if let Some(v) = max {
        b.set_min_proto_version(Some(SslVersion::TLS1)).unwrap();
        b.set_max_proto_version(Some(v)).unwrap();
        b.set_security_level(0);
        let _ = b.set_cipher_list("ALL:@SECLEVEL=0");
    }
    if !alpn.is_empty() {
        b.set_alpn_protos(alpn).unwrap();
    }
    let connector = b.build();
    let tcp = TcpStream::connect(gw.addr).unwrap();
    let mut tls = connector.connect(sni, tcp).map_err(|e| e.to_string())?;
    let cn = tls
        .ssl()
        .peer_certificate()
        .unwrap()
        .subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .unwrap()
        .data()
        .to_string()
        .unwrap();
    let proto = tls.ssl().selected_alpn_protocol().map(|p| p.to_vec());
    // Prove the connection works end to end over HTTP/1.1 when that was negotiated.
    if proto.as_deref() != Some(b"h2") {
        tls.write_all(
            format!("GET /x HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut out = String::new();
        let _ = tls.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
    Ok((cn, proto))
}

#[test]
fn sni_picks_the_certificate_and_old_tls_is_refused() {
    let pki = Pki::new(&[("a", &["a.test"]), ("b", &["api.b.test", "*.b.test"])]);
    let backend = Backend::echo("app");
    let gw = tls_gateway(&pki, &backend);
    let cases = [
        ("a.test", "a.test"),
        ("api.b.test", "api.b.test"),
        ("x.b.test", "api.b.test"),
        ("unknown.test", "a.test"),
    ];
    for (sni, cn) in cases {
        let (got, _) = handshake(&gw, sni, None, b"").unwrap();
        assert_eq!(got, cn, "SNI {sni}");
    }
    let old = handshake(&gw, "a.test", Some(SslVersion::TLS1_1), b"");
    assert!(old.is_err(), "TLS 1.1 must be refused: {old:?}");
    let seen = backend.last_request();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
}

#[test]
fn alpn_h2_serves_http2() {
    let pki = Pki::new(&[("a", &["a.test"]), ("b", &["*.b.test"])]);
    let backend = Backend::echo("app");
    let gw = tls_gateway(&pki, &backend);
    let (_, proto) = handshake(&gw, "a.test", None, b"\x02h2\x08http/1.1").unwrap();
    assert_eq!(proto.as_deref(), Some(&b"h2"[..]));

    let ca = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap();
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .resolve("a.test", gw.addr)
        .build()
        .unwrap();
    let resp = client
        .get(format!("https://a.test:{}/h2", gw.addr.port()))
        .send()
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(backend.last_request().path, "/h2");
    // X-Request-ID goes out never-indexed in HPACK (a new value on every response): each
    // response on the one connection still carries its own.
    let ids: Vec<String> = (0..3)
        .map(|_| {
            let r = client
                .get(format!("https://a.test:{}/h2", gw.addr.port()))
                .send()
                .unwrap();
            assert_eq!(r.version(), reqwest::Version::HTTP_2);
            r.headers()["x-request-id"].to_str().unwrap().to_string()
        })
        .collect();
    assert!(ids.iter().all(|id| id.len() == 32), "{ids:?}");
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
}

#[test]
fn bad_certificates_are_config_errors() {
    let pki = Pki::new(&[("a", &["a.test"]), ("b", &["b.test"])]);
    let config = |cert: &str, key: &str| {
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:1\"\n[listeners.tls]\ncertificates = [{{ cert = \"{cert}\", key = \"{key}\" }}]\n[[routes]]\nname = \"r\"\n[routes.respond]\nstatus = 200"
        )
    };
    let cases = [
        (
            config("/nonexistent.crt", &pki.path("a.key")),
            "listeners[0].tls.certificates[0].cert",
            "cannot read",
        ),
        (
            config(&pki.path("a.crt"), &pki.path("b.key")),
            "listeners[0].tls.certificates[0].key",
            "is not the private key",
        ),
        (
            config(&pki.path("a.key"), &pki.path("a.key")),
            "listeners[0].tls.certificates[0].cert",
            "not a PEM certificate",
        ),
    ];
    for (text, path, fragment) in cases {
        let (code, out) = check_config(&text);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains(&format!("{path}: ")) && out.contains(fragment),
            "{out}"
        );
    }
    let (code, out) = check_config(&config(&pki.path("a.crt"), &pki.path("a.key")));
    assert_eq!(code, 0, "{out}");
}

/// A TLS upstream: another real gateway with a TLS listener answering directly.
fn tls_upstream(pki: &Pki) -> Gateway {
    let config = format!(
        r#"
[server]
threads = 1
pid_file = "{{dir}}/tollgate.pid"
upgrade_sock = "{{dir}}/upgrade.sock"

[[listeners]]
address = "{{listen}}"
[listeners.tls]
certificates = [{{ cert = "{a}", key = "{ak}", names = ["a.test"] }}]

[admin]
address = "{{admin}}"

[access_log]
target = "off"

[[routes]]
name = "hello"
[routes.respond]
status = 200
headers = {{ "x-served-by" = "tls-upstream" }}
body = "secure hello"
"#,
        a = pki.path("a.crt"),
        ak = pki.path("a.key"),
    );
    Gateway::start_full(&config).unwrap()
}

fn proxy_to(upstream: &Gateway, tls_section: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[upstreams.secure]
targets = [{{ address = "{}" }}]
connect_timeout = "2s"
{tls_section}

[[routes]]
name = "secure"
upstream = "secure"
retries = 0
"#,
        upstream.addr
    ))
}

#[test]
fn upstream_tls_verifies_against_the_configured_ca() {
    let pki = Pki::new(&[("a", &["a.test"]), ("b", &["b.test"])]);
    let other = Pki::new(&[("x", &["x.test"])]);
    let upstream = tls_upstream(&pki);

    let trusted = proxy_to(
        &upstream,
        &format!(
            "[upstreams.secure.tls]\nsni = \"a.test\"\nca_file = \"{}\"",
            pki.path("ca.crt")
        ),
    );
    let r = client().get(trusted.url("/x")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-served-by"], "tls-upstream");
    assert_eq!(r.text().unwrap(), "secure hello");

    // A CA that did not sign the upstream's certificate: the handshake fails, 502.
    let untrusted = proxy_to(
        &upstream,
        &format!(
            "[upstreams.secure.tls]\nsni = \"a.test\"\nca_file = \"{}\"",
            other.path("ca.crt")
        ),
    );
    let r = client().get(untrusted.url("/x")).send().unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.json::<serde_json::Value>().unwrap()["request_id"].is_string());

    // The right CA but the wrong name: refused as well.
    let wrong_name = proxy_to(
        &upstream,
        &format!(
            "[upstreams.secure.tls]\nsni = \"b.test\"\nca_file = \"{}\"",
            pki.path("ca.crt")
        ),
    );
    assert_eq!(
        client().get(wrong_name.url("/x")).send().unwrap().status(),
        502
    );
}
