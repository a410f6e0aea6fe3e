//! Certificates for TLS tests, generated with rcgen: a CA, server
//! certificates for chosen names (or already expired), and client
//! certificates with a common name, all as PEM.
//!
//! ```
//! use waypost_integration::pki::TestPki;
//!
//! let pki = TestPki::new("waypost test CA");
//! let server = pki.server(&["movies.test", "127.0.0.1"]);
//! let client = pki.client("alice");
//! assert!(pki.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
//! assert!(server.key_pem.contains("PRIVATE KEY") && client.cert_pem.contains("CERTIFICATE"));
//! ```

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Pem {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// A test certificate authority.
pub struct TestPki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestPki")
    }
}

impl TestPki {
    /// A new CA with this common name.
    pub fn new(name: &str) -> TestPki {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("a CA certificate");
        TestPki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A server certificate for these DNS names and IP addresses.
    pub fn server(&self, names: &[&str]) -> Pem {
        self.issue(server_params(names))
    }

    /// A server certificate for `names` that expired yesterday.
    pub fn expired_server(&self, names: &[&str]) -> Pem {
        let mut params = server_params(names);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(30);
        params.not_after = now - time::Duration::days(1);
        self.issue(params)
    }

    /// A client certificate with common name `name`.
    pub fn client(&self, name: &str) -> Pem {
        let mut params =
            CertificateParams::new(vec![format!("{name}.clients.test")]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Pem {
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("a certificate");
        Pem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A CA certificate and one identity as PEM files in a temporary
/// directory (removed when dropped), for configurations that name files.
#[derive(Debug)]
pub struct PemFiles {
    /// The CA certificate.
    pub ca: std::path::PathBuf,
    /// The identity's certificate.
    pub cert: std::path::PathBuf,
    /// The identity's private key.
    pub key: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TestPki {
    /// This CA's certificate and `identity` as files.
    pub fn files(&self, identity: &Pem) -> std::io::Result<PemFiles> {
        let dir = tempfile::tempdir()?;
        let (ca, cert, key) = (
            dir.path().join("ca.pem"),
            dir.path().join("cert.pem"),
            dir.path().join("key.pem"),
        );
        std::fs::write(&ca, self.ca_pem())?;
        std::fs::write(&cert, &identity.cert_pem)?;
        std::fs::write(&key, &identity.key_pem)?;
        Ok(PemFiles {
            ca,
            cert,
            key,
            _dir: dir,
        })
    }
}

fn server_params(names: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    for name in names {
        params.subject_alt_names.push(match name.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName((*name).try_into().expect("a DNS name")),
        });
    }
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("server"),
    );
    params
}

/// The common name of a DER certificate's subject, if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}
