//! TLS termination for `[[listeners]]` with a `[listeners.tls]` section: several certificates
//! chosen by SNI (exact names and `*.` wildcards, the first certificate as the default),
//! TLS 1.2 and 1.3 only with Mozilla's intermediate cipher suites, and ALPN `h2` /
//! `http/1.1` so clients get HTTP/2.
//!
//! Backend: Pingora's OpenSSL one (Debian's libssl). Pingora labels its rustls backend highly
//! experimental, and the asynchronous per-connection certificate callback used here for SNI
//! exists only for OpenSSL/BoringSSL. Certificates are read when the configuration is
//! built, so `tollgate -t` reports unreadable or mismatched files; a reload re-reads them
//! and swaps the listener's store in place, so renewed certificates are served without a
//! restart.

use crate::config::file::{CertificateSection, TlsSection};
use crate::config::types::{HostPattern, TlsVersion};
use crate::config::FromConfig;
use crate::config::Problem;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{NameType, SslRef, SslVersion};
use openssl::x509::X509;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use std::collections::HashMap;
use std::sync::Arc;

/// One certificate chain and its key.
pub(crate) struct Certificate {
    leaf: X509,
    chain: Vec<X509>,
    key: PKey<Private>,
    /// The certificate file: its name in `tollgate_tls_certificate_expiry_timestamp_seconds`.
    path: String,
    /// The same chain and key for rustls (HTTP/3's QUIC handshakes), made the first time a
    /// QUIC listener asks; `Err`: ring cannot sign with this key.
    quic: std::sync::OnceLock<Result<Arc<rustls::sign::CertifiedKey>, String>>,
}

/// Load a PEM chain and key, checking that the key belongs to the leaf certificate.
pub(crate) fn load_certificate(
    cert_path: &str,
    key_path: &str,
) -> Result<Certificate, (bool, String)> {
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
        path: cert_path.to_string(),
        quic: std::sync::OnceLock::new(),
    })
}

/// The chain and key as rustls signs with them (DER, the key as PKCS#8).
fn rustls_key(
    leaf: &X509,
    chain: &[X509],
    key: &PKey<Private>,
) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let der = std::iter::once(leaf)
        .chain(chain)
        .map(|c| c.to_der().map(rustls::pki_types::CertificateDer::from))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let pkcs8 = key.private_key_to_pkcs8().map_err(|e| e.to_string())?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(pkcs8.into());
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("this key cannot sign QUIC handshakes: {e}"))?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(der, signer)))
}

impl Certificate {
    /// The leaf's `notAfter`, in seconds since the epoch.
    pub(crate) fn not_after(&self) -> Option<i64> {
        let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
        let d = epoch.diff(self.leaf.not_after()).ok()?;
        Some(i64::from(d.days) * 86_400 + i64::from(d.secs))
    }

    /// The chain and key for a QUIC handshake.
    pub(crate) fn quic_key(&self) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.quic_converted().as_ref().ok().cloned()
    }

    fn quic_converted(&self) -> &Result<Arc<rustls::sign::CertifiedKey>, String> {
        self.quic
            .get_or_init(|| rustls_key(&self.leaf, &self.chain, &self.key))
    }

    /// As Pingora's client certificate type (leaf first, then the chain).
    pub(crate) fn into_cert_key(self) -> pingora::utils::tls::CertKey {
        let mut certs = vec![self.leaf];
        certs.extend(self.chain);
        pingora::utils::tls::CertKey::new(certs, self.key)
    }
}

/// A compiled `[listeners.tls]`.
pub(crate) struct TlsListener {
    pub certs: Arc<CertStore>,
    pub min_version: TlsVersion,
    pub h2: bool,
}

impl FromConfig for TlsListener {
    type Section = TlsSection;

    /// `[listeners.tls]`: every certificate read and checked against its key now.
    fn from_config(
        at: &str,
        t: &TlsSection,
        _cx: &(),
        problems: &mut Vec<Problem>,
    ) -> Option<TlsListener> {
        let TlsSection {
            certificates,
            min_version,
            h2,
        } = t;
        let before = problems.len();
        let mut certs = Vec::new();
        for (j, c) in certificates.iter().enumerate() {
            let CertificateSection { cert, key, names } = c;
            match load_certificate(cert, key) {
                Ok(loaded) => certs.push((loaded, names.clone())),
                Err((key_side, msg)) => {
                    let field = if key_side { "key" } else { "cert" };
                    problems.push(Problem::new(format!("{at}.certificates[{j}].{field}"), msg));
                }
            }
        }
        if certificates.is_empty() {
            problems.push(Problem::new(
                format!("{at}.certificates"),
                "list at least one certificate",
            ));
        }
        if problems.len() > before {
            return None;
        }
        let listener = CertStore::new(certs).map(|store| TlsListener {
            certs: Arc::new(store),
            min_version: *min_version,
            h2: *h2,
        })?;
        // The settings the listener will be opened with, built once now so that nothing
        // can fail when the server starts.
        let slot = Arc::new(ArcSwap::new(listener.certs.clone()));
        if let Err(e) = settings(slot, listener.min_version, listener.h2) {
            problems.push(Problem::new(at, format!("TLS settings: {e}")));
            return None;
        }
        Some(listener)
    }
}

/// Certificates by server name.
pub(crate) struct CertStore {
    /// Every certificate once, in configuration order.
    all: Vec<Arc<Certificate>>,
    default: Arc<Certificate>,
    exact: HashMap<String, Arc<Certificate>>,
    /// `(".example.com", cert)`, longest suffix first.
    wildcard: Vec<(String, Arc<Certificate>)>,
}

impl CertStore {
    /// `certs[0]` is the default; each comes with the names it serves.
    pub(crate) fn new(certs: Vec<(Certificate, Vec<HostPattern>)>) -> Option<Self> {
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        let mut default = None;
        let mut all = Vec::new();
        for (cert, names) in certs {
            let cert = Arc::new(cert);
            default.get_or_insert_with(|| cert.clone());
            all.push(cert.clone());
            for name in names {
                match name {
                    HostPattern::Suffix(suffix) => wildcard.push((suffix, cert.clone())),
                    HostPattern::Exact(name) => {
                        exact.insert(name, cert.clone());
                    }
                }
            }
        }
        wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        Some(CertStore {
            all,
            default: default?,
            exact,
            wildcard,
        })
    }

    /// Each certificate's file, and why it cannot serve QUIC handshakes, for those that
    /// cannot.
    pub(crate) fn quic_problems(&self) -> impl Iterator<Item = (&str, &str)> {
        self.all
            .iter()
            .filter_map(|c| Some((c.path.as_str(), c.quic_converted().as_ref().err()?.as_str())))
    }

    /// Each certificate's file and `notAfter` (seconds since the epoch).
    pub(crate) fn expiries(&self) -> impl Iterator<Item = (&str, i64)> {
        self.all
            .iter()
            .filter_map(|c| Some((c.path.as_str(), c.not_after()?)))
    }

    /// The certificate for an SNI name (or the default).
    pub(crate) fn select(&self, server_name: Option<&str>) -> &Arc<Certificate> {
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

/// The certificates a listener serves now; a reload stores new ones.
pub(crate) type CertSlot = Arc<ArcSwap<CertStore>>;

struct SniCallback(CertSlot);

#[async_trait]
impl TlsAccept for SniCallback {
    async fn certificate_callback(&self, ssl: &mut SslRef) {
        let cert = self
            .0
            .load()
            .select(ssl.servername(NameType::HOST_NAME))
            .clone();
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

/// Pingora TLS settings for a listener whose certificates are read from `slot`.
pub(crate) fn settings(
    slot: CertSlot,
    min_version: TlsVersion,
    h2: bool,
) -> pingora::Result<TlsSettings> {
    let mut settings = TlsSettings::with_callbacks(Box::new(SniCallback(slot)))?;
    let min = match min_version {
        TlsVersion::V1_3 => SslVersion::TLS1_3,
        TlsVersion::V1_2 => SslVersion::TLS1_2,
    };
    let tls_err = |e: openssl::error::ErrorStack| {
        pingora::Error::because(
            pingora::ErrorType::InternalError,
            "TLS protocol versions",
            e,
        )
    };
    // OpenSSL keeps a connection's read and write buffers (about 34 KB) for its whole life;
    // with RELEASE_BUFFERS it frees them whenever they are empty, so an idle keep-alive
    // connection holds none (nginx sets the same mode).
    settings.set_mode(openssl::ssl::SslMode::RELEASE_BUFFERS);
    settings.set_min_proto_version(Some(min)).map_err(tls_err)?;
    settings
        .set_max_proto_version(Some(SslVersion::TLS1_3))
        .map_err(tls_err)?;
    if h2 {
        settings.enable_h2();
    }
    Ok(settings)
}
