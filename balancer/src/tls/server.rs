//! [`ServerTlsConfig`] and [`TlsAcceptor`]: the server side of the same
//! material — a certificate and key, optionally client CAs (mTLS), given in
//! code or as files that rotate.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::WebPkiClientVerifier;

use super::config::{
    Certificate, DEFAULT_REFRESH, Identity, TlsError, certificates, private_key, read,
};
use super::files::{Current, Reloader, Source, TlsStats};

/// Where a server's material comes from.
#[derive(Clone, Debug)]
enum Material {
    Static {
        identity: Option<Identity>,
        client_cas: Vec<Certificate>,
    },
    Files {
        cert: PathBuf,
        key: PathBuf,
        client_ca: Option<PathBuf>,
        refresh: Duration,
    },
}

/// A server's TLS settings, named and shaped like tonic's: its certificate
/// and key, and — for mutual TLS — the CAs client certificates must chain
/// to. Turned into a [`TlsAcceptor`].
///
/// ```
/// use waypost_balancer::tls::{Certificate, Identity, ServerTlsConfig};
///
/// # fn demo(cert: &[u8], key: &[u8], clients_ca: &[u8]) {
/// // mTLS: clients without a certificate from `clients_ca` are refused.
/// let tls = ServerTlsConfig::new()
///     .identity(Identity::from_pem(cert, key))
///     .client_ca_root(Certificate::from_pem(clients_ca));
/// # let _ = tls; }
/// // The same from files, re-read every minute when they change.
/// let tls = ServerTlsConfig::from_files("/etc/tls/cert.pem", "/etc/tls/key.pem", Some("/etc/tls/clients-ca.pem".into()))
///     .refresh_interval(std::time::Duration::from_secs(60));
/// ```
#[derive(Clone, Debug)]
pub struct ServerTlsConfig {
    material: Material,
    client_auth_optional: bool,
    alpn: Vec<Vec<u8>>,
}

impl Default for ServerTlsConfig {
    fn default() -> Self {
        ServerTlsConfig::new()
    }
}

impl ServerTlsConfig {
    /// No identity yet: add [`ServerTlsConfig::identity`]. ALPN `h2`.
    pub fn new() -> ServerTlsConfig {
        ServerTlsConfig {
            material: Material::Static {
                identity: None,
                client_cas: Vec::new(),
            },
            client_auth_optional: false,
            alpn: vec![b"h2".to_vec()],
        }
    }

    /// Material from PEM files, re-read every [`DEFAULT_REFRESH`] and put
    /// in force for new connections when they change: the certificate
    /// chain, its key, and optionally the CAs client certificates must
    /// chain to (mTLS).
    pub fn from_files(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> ServerTlsConfig {
        ServerTlsConfig {
            material: Material::Files {
                cert: cert.into(),
                key: key.into(),
                client_ca,
                refresh: DEFAULT_REFRESH,
            },
            ..ServerTlsConfig::new()
        }
    }

    /// How often [`ServerTlsConfig::from_files`] material is re-read.
    pub fn refresh_interval(mut self, every: Duration) -> Self {
        if let Material::Files { refresh, .. } = &mut self.material {
            *refresh = every.max(Duration::from_millis(10));
        }
        self
    }

    /// The server's certificate chain and key (material given in code).
    pub fn identity(mut self, id: Identity) -> Self {
        if let Material::Static { identity, .. } = &mut self.material {
            *identity = Some(id);
        }
        self
    }

    /// Requires client certificates chaining to this CA (material given in
    /// code; files name their own).
    pub fn client_ca_root(mut self, ca: Certificate) -> Self {
        if let Material::Static { client_cas, .. } = &mut self.material {
            client_cas.push(ca);
        }
        self
    }

    /// With client CAs: also accept clients that send no certificate (one
    /// that is sent must still verify). Default: refused.
    pub fn client_auth_optional(mut self, optional: bool) -> Self {
        self.client_auth_optional = optional;
        self
    }

    /// The ALPN protocols offered, in preference order (default `h2`). A
    /// client offering none of them is refused; one offering no ALPN at
    /// all is accepted.
    pub fn alpn_protocols(mut self, protocols: &[&str]) -> Self {
        self.alpn = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        self
    }

    /// Whether client certificates are asked for.
    pub fn requests_client_certificates(&self) -> bool {
        match &self.material {
            Material::Static { client_cas, .. } => !client_cas.is_empty(),
            Material::Files { client_ca, .. } => client_ca.is_some(),
        }
    }

    /// The rustls configuration for the material as it is now (files are
    /// read).
    pub fn rustls_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let (identity, client_cas) = match &self.material {
            Material::Static {
                identity,
                client_cas,
            } => (
                identity.clone().ok_or(TlsError::NoIdentity)?,
                client_cas.clone(),
            ),
            Material::Files {
                cert,
                key,
                client_ca,
                ..
            } => (
                Identity::from_pem(read(cert)?, read(key)?),
                match client_ca {
                    Some(path) => vec![Certificate::from_pem(read(path)?)],
                    None => Vec::new(),
                },
            ),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let builder = if client_cas.is_empty() {
            builder.with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            for ca in &client_cas {
                for cert in certificates(&ca.pem, "client CA certificates")? {
                    roots.add(cert).map_err(|e| TlsError::Pem {
                        what: "client CA certificates",
                        message: e.to_string(),
                    })?;
                }
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if self.client_auth_optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::Rustls(e.to_string()))?,
            )
        };
        let mut config = builder
            .with_single_cert(
                certificates(&identity.cert, "server certificate")?,
                private_key(&identity.key)?,
            )
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        config.alpn_protocols = self.alpn.clone();
        Ok(Arc::new(config))
    }
}

impl Source for ServerTlsConfig {
    type Loaded = rustls::ServerConfig;

    fn load(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        self.rustls_config()
    }

    fn watched(&self) -> Option<(Vec<PathBuf>, Duration)> {
        match &self.material {
            Material::Static { .. } => None,
            Material::Files {
                cert,
                key,
                client_ca,
                refresh,
            } => {
                let mut files = vec![cert.clone(), key.clone()];
                files.extend(client_ca.iter().cloned());
                Some((files, *refresh))
            }
        }
    }
}

/// Accepts TLS connections with a [`ServerTlsConfig`]'s material as it is
/// when each handshake starts (files re-read in a task that ends with the
/// acceptor). Cheap to clone.
///
/// ```no_run
/// use waypost_balancer::tls::{PeerIdentity, ServerTlsConfig, TlsAcceptor};
///
/// # async fn demo(listener: tokio::net::TcpListener) -> Result<(), Box<dyn std::error::Error>> {
/// let acceptor = TlsAcceptor::new(&ServerTlsConfig::from_files("cert.pem", "key.pem", None))?;
/// let (tcp, _) = listener.accept().await?;
/// let tls = acceptor.accept(tcp).await?;
/// let client: Option<PeerIdentity> = PeerIdentity::of(&tls);
/// # let _ = client; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct TlsAcceptor {
    current: Arc<Current<rustls::ServerConfig>>,
    _reloader: Option<Arc<Reloader>>,
}

/// A server-side TLS connection.
pub type ServerTlsStream<IO> = tokio_rustls::server::TlsStream<IO>;

impl TlsAcceptor {
    /// Loads the material now (an error if it cannot be used); files are
    /// then re-read, so this must run inside a tokio runtime for them.
    pub fn new(config: &ServerTlsConfig) -> Result<TlsAcceptor, TlsError> {
        let super::files::Watched { current, reloader } = super::files::start(config)?;
        Ok(TlsAcceptor {
            current,
            _reloader: reloader,
        })
    }

    /// The handshake on `io` (no timeout: callers bound it).
    pub async fn accept<IO>(&self, io: IO) -> io::Result<ServerTlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        tokio_rustls::TlsAcceptor::from(self.current.config.load_full())
            .accept(io)
            .await
            .map_err(|error| {
                match error
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<rustls::Error>())
                {
                    Some(tls) => io::Error::new(error.kind(), super::explain::describe_server(tls)),
                    None => error,
                }
            })
    }

    /// How its material's reloads went.
    pub fn stats(&self) -> Arc<TlsStats> {
        self.current.stats.clone()
    }
}

/// Who a verified client certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject's common name.
    pub common_name: Option<String>,
    /// The subject alternative DNS names.
    pub dns_names: Vec<String>,
    /// The certificate (DER).
    pub certificate: Vec<u8>,
}

impl PeerIdentity {
    /// The client certificate a TLS connection's peer presented (verified
    /// by the handshake against the client CAs), if it sent one.
    pub fn of<IO>(stream: &ServerTlsStream<IO>) -> Option<PeerIdentity> {
        stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|cert| PeerIdentity::from_der(cert.as_ref()))
    }

    /// Reads the subject CN and DNS names of a DER certificate (empty when
    /// it cannot be parsed).
    pub fn from_der(der: &[u8]) -> PeerIdentity {
        use x509_parser::prelude::*;
        let mut identity = PeerIdentity {
            common_name: None,
            dns_names: Vec::new(),
            certificate: der.to_vec(),
        };
        if let Ok((_, cert)) = X509Certificate::from_der(der) {
            identity.common_name = cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned);
            if let Ok(Some(san)) = cert.subject_alternative_name() {
                for name in &san.value.general_names {
                    if let GeneralName::DNSName(dns) = name {
                        identity.dns_names.push((*dns).to_owned());
                    }
                }
            }
        }
        identity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_needs_an_identity() {
        assert_eq!(
            ServerTlsConfig::new().rustls_config().unwrap_err(),
            TlsError::NoIdentity
        );
        let missing = ServerTlsConfig::from_files("/nonexistent/c.pem", "/nonexistent/k.pem", None);
        assert!(matches!(
            missing.rustls_config(),
            Err(TlsError::Read { .. })
        ));
    }

    #[test]
    fn material_builds_with_and_without_client_cas() {
        let server = rcgen::generate_simple_self_signed(vec!["server.test".into()]).unwrap();
        let identity = Identity::from_pem(server.cert.pem(), server.signing_key.serialize_pem());
        let plain = ServerTlsConfig::new().identity(identity.clone());
        assert!(!plain.requests_client_certificates());
        assert_eq!(
            plain.rustls_config().unwrap().alpn_protocols,
            vec![b"h2".to_vec()]
        );
        let mutual = plain
            .client_ca_root(Certificate::from_pem(server.cert.pem()))
            .alpn_protocols(&["http/1.1"]);
        assert!(mutual.requests_client_certificates());
        assert_eq!(
            mutual.rustls_config().unwrap().alpn_protocols,
            vec![b"http/1.1".to_vec()]
        );
        let bad_ca = ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(Certificate::from_pem("garbage"));
        assert!(matches!(bad_ca.rustls_config(), Err(TlsError::Pem { .. })));
    }
}
