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
/// certificate with common name `client_cn`, as the shared TLS
/// configurations (the server requires a client certificate signed by the
/// CA).
pub fn tls_pair(client_cn: &str) -> (waypost_rpc::ServerTlsConfig, waypost_rpc::ClientTlsConfig) {
    use waypost_rpc::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
    let pki = waypost_integration::pki::TestPki::new("waypost test CA");
    let server = pki.server(&["localhost"]);
    let client = pki.client(client_cn);
    (
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&server.cert_pem, &server.key_pem))
            .client_ca_root(Certificate::from_pem(pki.ca_pem())),
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pki.ca_pem()))
            .identity(Identity::from_pem(&client.cert_pem, &client.key_pem))
            .domain_name("localhost"),
    )
}
