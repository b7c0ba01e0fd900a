//! TLS termination for `[[listeners]]` with a `[listeners.tls]` section: several certificates
//! chosen by SNI (exact names and `*.` wildcards, the first certificate as the default),
//! TLS 1.2 and 1.3 only with Mozilla's intermediate cipher suites, and ALPN `h2` /
//! `http/1.1` so clients get HTTP/2.
//!
//! Backend: Pingora's OpenSSL one (Debian's libssl). Pingora labels its rustls backend highly
//! experimental, and the asynchronous per-connection certificate callback used here for SNI
//! exists only for OpenSSL/BoringSSL. Certificates are read when the configuration is
//! compiled, so `tollgate -t` reports unreadable or mismatched files, and an upgrade (`-u`)
//! picks up renewed certificates.

use async_trait::async_trait;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{NameType, SslRef, SslVersion};
use openssl::x509::X509;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use std::collections::HashMap;
use std::sync::Arc;

/// One certificate chain and its key.
pub struct Certificate {
    leaf: X509,
    chain: Vec<X509>,
    key: PKey<Private>,
}

/// Load a PEM chain and key, checking that the key belongs to the leaf certificate.
pub fn load_certificate(cert_path: &str, key_path: &str) -> Result<Certificate, (bool, String)> {
    let pem =
        std::fs::read(cert_path).map_err(|e| (false, format!("cannot read {cert_path}: {e}")))?;
    let mut certs = X509::stack_from_pem(&pem)
        .map_err(|_| (false, format!("{cert_path} is not a PEM certificate")))?;
    if certs.is_empty() {
        return Err((
            false,
            format!("{cert_path} is not a PEM certificate (no CERTIFICATE block)"),
        ));
    }
    let leaf = certs.remove(0);
    let key_pem =
        std::fs::read(key_path).map_err(|e| (true, format!("cannot read {key_path}: {e}")))?;
    let key = PKey::private_key_from_pem(&key_pem)
        .map_err(|_| (true, format!("{key_path} is not a PEM private key")))?;
    let matches = leaf
        .public_key()
        .map(|public| public.public_eq(&key))
        .unwrap_or(false);
    if !matches {
        return Err((
            true,
            format!("{key_path} is not the private key of {cert_path}"),
        ));
    }
    Ok(Certificate {
        leaf,
        chain: certs,
        key,
    })
}

impl Certificate {
    /// As Pingora's client certificate type (leaf first, then the chain).
    pub fn into_cert_key(self) -> pingora::utils::tls::CertKey {
        let mut certs = vec![self.leaf];
        certs.extend(self.chain);
        pingora::utils::tls::CertKey::new(certs, self.key)
    }
}

/// Certificates by server name.
pub struct CertStore {
    default: Arc<Certificate>,
    exact: HashMap<String, Arc<Certificate>>,
    /// `(".example.com", cert)`, longest suffix first.
    wildcard: Vec<(String, Arc<Certificate>)>,
}

impl CertStore {
    /// `certs[0]` is the default; each comes with the names it serves.
    pub fn new(certs: Vec<(Certificate, Vec<String>)>) -> Option<Self> {
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        let mut default = None;
        for (cert, names) in certs {
            let cert = Arc::new(cert);
            default.get_or_insert_with(|| cert.clone());
            for name in names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix('*') {
                    Some(suffix) => wildcard.push((suffix.to_string(), cert.clone())),
                    None => {
                        exact.insert(name, cert.clone());
                    }
                }
            }
        }
        wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        Some(CertStore {
            default: default?,
            exact,
            wildcard,
        })
    }

    /// The certificate for an SNI name (or the default).
    pub fn select(&self, server_name: Option<&str>) -> &Arc<Certificate> {
        let Some(name) = server_name.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
            return &self.default;
        };
        if let Some(c) = self.exact.get(&name) {
            return c;
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map_or(&self.default, |(_, c)| c)
    }
}

struct SniCallback(Arc<CertStore>);

#[async_trait]
impl TlsAccept for SniCallback {
    async fn certificate_callback(&self, ssl: &mut SslRef) {
        let cert = self.0.select(ssl.servername(NameType::HOST_NAME)).clone();
        let outcome = pingora::tls::ext::ssl_use_certificate(ssl, &cert.leaf)
            .and_then(|_| pingora::tls::ext::ssl_use_private_key(ssl, &cert.key))
            .and_then(|_| {
                cert.chain
                    .iter()
                    .try_for_each(|c| pingora::tls::ext::ssl_add_chain_cert(ssl, c))
            });
        if let Err(e) = outcome {
            log::error!("TLS: could not set the certificate: {e}");
        }
    }
}

/// Pingora TLS settings for a listener.
pub fn settings(store: Arc<CertStore>, tls13_only: bool, h2: bool) -> pingora::Result<TlsSettings> {
    let mut settings = TlsSettings::with_callbacks(Box::new(SniCallback(store)))?;
    let min = if tls13_only {
        SslVersion::TLS1_3
    } else {
        SslVersion::TLS1_2
    };
    let tls_err = |e: openssl::error::ErrorStack| {
        pingora::Error::because(
            pingora::ErrorType::InternalError,
            "TLS protocol versions",
            e,
        )
    };
    settings.set_min_proto_version(Some(min)).map_err(tls_err)?;
    settings
        .set_max_proto_version(Some(SslVersion::TLS1_3))
        .map_err(tls_err)?;
    if h2 {
        settings.enable_h2();
    }
    Ok(settings)
}
