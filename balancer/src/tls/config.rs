//! [`ClientTlsConfig`] and the PEM material it is built from.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A CA certificate (or several), PEM-encoded.
#[derive(Clone, Debug)]
pub struct Certificate {
    pub(crate) pem: Vec<u8>,
}

impl Certificate {
    /// From PEM text (one or more `CERTIFICATE` blocks).
    pub fn from_pem(pem: impl AsRef<[u8]>) -> Certificate {
        Certificate {
            pem: pem.as_ref().to_vec(),
        }
    }
}

/// A certificate chain and its private key, PEM-encoded: a client's
/// identity, or a server's.
#[derive(Clone)]
pub struct Identity {
    pub(crate) cert: Vec<u8>,
    pub(crate) key: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity { .. }")
    }
}

impl Identity {
    /// From a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1
    /// or SEC1).
    pub fn from_pem(cert: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Identity {
        Identity {
            cert: cert.as_ref().to_vec(),
            key: key.as_ref().to_vec(),
        }
    }
}

/// Why TLS material could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// PEM text holds no usable certificate or key, or a bad one.
    #[error("{what}: {message}")]
    Pem {
        /// Which material (`CA certificates`, `client certificate`, …).
        what: &'static str,
        /// Why.
        message: String,
    },
    /// A server configuration has no certificate and key.
    #[error("no server identity: add a certificate and key")]
    NoIdentity,
    /// No root of trust was given.
    #[error("no CA certificates: add one, or native or webpki roots")]
    NoRoots,
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Rustls(String),
    /// The name to verify is not a valid DNS name or IP address.
    #[error("{0:?} is not a name a server certificate can be verified for")]
    ServerName(String),
}

/// Where the material comes from.
#[derive(Clone, Debug)]
pub(crate) enum Material {
    /// Given in code.
    Static {
        cas: Vec<Certificate>,
        identity: Option<Identity>,
    },
    /// PEM files, re-read every `refresh`.
    Files {
        ca: PathBuf,
        identity: Option<(PathBuf, PathBuf)>,
        refresh: Duration,
    },
}

/// A channel's TLS settings; give it to
/// [`ChannelBuilder::tls`](crate::ChannelBuilder::tls). See the
/// [module docs](crate::tls).
#[derive(Clone, Debug)]
pub struct ClientTlsConfig {
    pub(crate) material: Material,
    pub(crate) native_roots: bool,
    pub(crate) webpki_roots: bool,
    pub(crate) domain_name: Option<String>,
    pub(crate) alpn: Vec<Vec<u8>>,
}

impl Default for ClientTlsConfig {
    fn default() -> Self {
        ClientTlsConfig::new()
    }
}

/// How often [`ClientTlsConfig::from_files`] re-reads its files by default
/// (gRFC A29's default refresh interval).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(600);

impl ClientTlsConfig {
    /// No roots yet: add [`ClientTlsConfig::ca_certificate`], or native or
    /// webpki roots.
    pub fn new() -> ClientTlsConfig {
        ClientTlsConfig {
            material: Material::Static {
                cas: Vec::new(),
                identity: None,
            },
            native_roots: false,
            webpki_roots: false,
            domain_name: None,
            alpn: vec![b"h2".to_vec()],
        }
    }

    /// Material from PEM files, re-read every [`DEFAULT_REFRESH`] (see
    /// [`ClientTlsConfig::refresh_interval`]): the CA certificates, and
    /// optionally a client certificate chain and key.
    pub fn from_files(
        ca: impl Into<PathBuf>,
        identity: Option<(PathBuf, PathBuf)>,
    ) -> ClientTlsConfig {
        ClientTlsConfig {
            material: Material::Files {
                ca: ca.into(),
                identity,
                refresh: DEFAULT_REFRESH,
            },
            ..ClientTlsConfig::new()
        }
    }

    /// How often [`ClientTlsConfig::from_files`] material is re-read (no
    /// effect on material given in code).
    pub fn refresh_interval(mut self, every: Duration) -> Self {
        if let Material::Files { refresh, .. } = &mut self.material {
            *refresh = every.max(Duration::from_millis(10));
        }
        self
    }

    /// Trusts this CA (material given in code only; files name their own).
    pub fn ca_certificate(mut self, certificate: Certificate) -> Self {
        if let Material::Static { cas, .. } = &mut self.material {
            cas.push(certificate);
        }
        self
    }

    /// Presents this client certificate (material given in code only).
    pub fn identity(mut self, id: Identity) -> Self {
        if let Material::Static { identity, .. } = &mut self.material {
            *identity = Some(id);
        }
        self
    }

    /// Verifies the server, and sends SNI, for this name instead of the
    /// channel's authority host.
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain_name = Some(name.into());
        self
    }

    /// The ALPN protocols offered (default `h2`, what gRPC needs; the
    /// server must select one of them). For other protocols over the same
    /// material, as `waypost::rpc` does.
    pub fn alpn_protocols(mut self, protocols: &[&str]) -> Self {
        self.alpn = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        self
    }

    /// Also trusts the operating system's root certificates.
    pub fn with_native_roots(mut self) -> Self {
        self.native_roots = true;
        self
    }

    /// Also trusts the Mozilla roots compiled into `webpki-roots`.
    pub fn with_webpki_roots(mut self) -> Self {
        self.webpki_roots = true;
        self
    }

    /// The rustls configuration for the material as it is now (files are
    /// read), for clients built on rustls directly.
    pub fn rustls_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        self.load()
    }

    /// The rustls configuration for the material as it is now (files are
    /// read).
    pub(crate) fn load(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let (cas, identity) = match &self.material {
            Material::Static { cas, identity } => (cas.clone(), identity.clone()),
            Material::Files { ca, identity, .. } => {
                let ca = Certificate::from_pem(read(ca)?);
                let identity = match identity {
                    Some((cert, key)) => Some(Identity::from_pem(read(cert)?, read(key)?)),
                    None => None,
                };
                (vec![ca], identity)
            }
        };
        let mut config = build(
            &cas,
            identity.as_ref(),
            self.native_roots,
            self.webpki_roots,
        )?;
        Arc::make_mut(&mut config).alpn_protocols = self.alpn.clone();
        Ok(config)
    }
}

impl super::files::Source for ClientTlsConfig {
    type Loaded = rustls::ClientConfig;

    fn load(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        ClientTlsConfig::load(self)
    }

    fn watched(&self) -> Option<(Vec<PathBuf>, Duration)> {
        match &self.material {
            Material::Static { .. } => None,
            Material::Files {
                ca,
                identity,
                refresh,
            } => {
                let mut files = vec![ca.clone()];
                if let Some((cert, key)) = identity {
                    files.extend([cert.clone(), key.clone()]);
                }
                Some((files, *refresh))
            }
        }
    }
}

/// The whole of a PEM file.
pub(crate) fn read(path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Every certificate in `pem`, at least one.
pub(crate) fn certificates(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            message: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// The private key in `pem`.
pub(crate) fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        what: "private key",
        message: e.to_string(),
    })
}

/// A rustls client configuration: these roots, this identity, ALPN `h2`.
fn build(
    cas: &[Certificate],
    identity: Option<&Identity>,
    native: bool,
    webpki: bool,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for cert in certificates(&ca.pem, "CA certificates")? {
            roots.add(cert).map_err(|e| TlsError::Pem {
                what: "CA certificates",
                message: e.to_string(),
            })?;
        }
    }
    if webpki {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if native {
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            // A system store may hold certificates rustls cannot use; the
            // rest still count.
            let _ = roots.add(cert);
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(
                certificates(&identity.cert, "client certificate")?,
                private_key(&identity.key)?,
            )
            .map_err(|e| TlsError::Rustls(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (String, rcgen::CertifiedKey<rcgen::KeyPair>) {
        let key = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        (key.cert.pem(), key)
    }

    #[test]
    fn material_in_code_builds_a_config_with_alpn_h2() {
        let (pem, _) = ca();
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pem))
            .load()
            .unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
    }

    #[test]
    fn bad_material_is_a_typed_error() {
        assert_eq!(
            ClientTlsConfig::new().load().unwrap_err(),
            TlsError::NoRoots
        );
        let garbage = ClientTlsConfig::new().ca_certificate(Certificate::from_pem("nope"));
        assert!(matches!(garbage.load(), Err(TlsError::Pem { .. })));
        let (pem, _) = ca();
        let bad_key = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pem))
            .identity(Identity::from_pem(&pem, "not a key"));
        assert!(matches!(
            bad_key.load(),
            Err(TlsError::Pem {
                what: "private key",
                ..
            })
        ));
        let missing = ClientTlsConfig::from_files("/nonexistent/ca.pem", None);
        assert!(matches!(missing.load(), Err(TlsError::Read { .. })));
    }
}
