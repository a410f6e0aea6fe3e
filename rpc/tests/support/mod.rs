//! Shared helpers for waypost-rpc's tests.
#![allow(dead_code, unreachable_pub)]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use waypost_resolver::Address;
use waypost_rpc::{Client, ConnSettings, DataHandler, Listener, Running, Server};

/// Fast timers so fault tests finish quickly.
pub fn fast_settings() -> ConnSettings {
    ConnSettings {
        heartbeat_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(1000),
        ..ConnSettings::default()
    }
}

/// A TCP server on 127.0.0.1 with `handler` for data connections.
pub async fn data_server(handler: impl DataHandler, settings: ConnSettings) -> Running {
    Server::builder()
        .data(handler)
        .conn_settings(settings)
        .serve(Listener::tcp("127.0.0.1:0").await.unwrap())
        .unwrap()
}

/// The `ipv4:` target of a TCP server.
pub fn target(running: &Running) -> String {
    match running.address() {
        Address::Tcp(addr) => format!("ipv4:{addr}"),
        Address::Unix(path) => format!("unix:{}", path.display()),
        other => panic!("unexpected address {other}"),
    }
}

/// The socket address of a TCP server.
pub fn socket_addr(running: &Running) -> std::net::SocketAddr {
    match running.address() {
        Address::Tcp(addr) => *addr,
        other => panic!("not TCP: {other}"),
    }
}

/// A client of `running` with `settings`.
pub fn client_of(running: &Running, settings: ConnSettings) -> Client {
    Client::builder(target(running))
        .conn_settings(settings)
        .pick_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Deterministic bytes: byte `i` is `(i * 7 + i / 4093) as u8`.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(7) + i / 4093) as u8)
        .collect()
}

/// A reader that yields `ok` bytes of zeros and then fails.
pub struct FailingReader {
    pub ok: usize,
}

impl AsyncRead for FailingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.ok == 0 {
            return Poll::Ready(Err(io::Error::other("disk on fire")));
        }
        let n = self.ok.min(buf.remaining()).min(64 * 1024);
        buf.put_slice(&vec![0u8; n]);
        self.ok -= n;
        Poll::Ready(Ok(()))
    }
}

/// A reader that never ends (zeros) and fires `dropped` when dropped.
#[derive(Default)]
pub struct EndlessReader {
    pub dropped: tokio_util::sync::CancellationToken,
}

impl AsyncRead for EndlessReader {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = buf.remaining().min(64 * 1024);
        buf.put_slice(&vec![0u8; n]);
        Poll::Ready(Ok(()))
    }
}

impl Drop for EndlessReader {
    fn drop(&mut self) {
        self.dropped.cancel();
    }
}

/// Peak resident memory of this process (VmHWM), in MiB.
pub fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

/// A test CA, a server certificate for `localhost` and a client
/// certificate with common name `client_cn`, as waypost-rpc TLS settings
/// (the server requires a client certificate signed by the CA).
pub fn tls_pair(client_cn: &str) -> (waypost_rpc::ServerTls, waypost_rpc::ClientTls) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use std::sync::Arc;
    use waypost_rpc::rustls;
    use waypost_rpc::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "waypost test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params =
        CertificateParams::new(vec![format!("{client_cn}.clients.test")]).unwrap();
    client_params
        .distinguished_name
        .push(DnType::CommonName, client_cn);
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let roots = Arc::new(roots);
    let verifier = rustls::server::WebPkiClientVerifier::builder(roots.clone())
        .build()
        .unwrap();
    let server = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .unwrap();
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![client_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(client_key.serialize_der())),
        )
        .unwrap();
    (
        waypost_rpc::ServerTls::new(Arc::new(server)),
        waypost_rpc::ClientTls::new(Arc::new(client), "localhost").unwrap(),
    )
}
