//! Channels over TLS to real TLS servers (tonic's own TLS, mTLS), and
//! every usual handshake failure explained: the subchannel's reason names
//! the cause, fail-fast calls fail UNAVAILABLE with it, a wait-for-ready
//! call waits until its deadline and then names it.

mod support;

use std::time::Duration;

use support::*;
use waypost_balancer::tls::{Certificate, ClientTlsConfig, Identity};
use waypost_integration::backend::Backend;
use waypost_integration::pki::{Pem, TestPki};
use waypost_integration::tls_backend::TlsBackend;

/// CA + identity for `client`, verifying the server as `movies.test`.
fn tls(pki: &TestPki, client: Option<&Pem>) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca_pem()))
        .domain_name("movies.test");
    if let Some(client) = client {
        config = config.identity(Identity::from_pem(&client.cert_pem, &client.key_pem));
    }
    config
}

fn channel_to(addr: std::net::SocketAddr, tls: Option<ClientTlsConfig>) -> Client {
    let mut builder = builder(&format!("ipv4:{addr}")).min_connect_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    Client::new(builder.build().unwrap())
}

/// A fail-fast call's error once the channel has given up connecting.
async fn fail_fast_error(client: &mut Client) -> tonic::Status {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match call(client, false, Duration::from_secs(5)).await {
            Err(status) if status.code() == tonic::Code::Unavailable => return status,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "still no UNAVAILABLE: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_to_a_tonic_tls_backend_and_the_backend_sees_the_client() {
    let pki = TestPki::new("test CA");
    let backend = TlsBackend::start("t0", &pki.server(&["movies.test"]), Some(pki.ca_pem()))
        .await
        .unwrap();
    let alice = pki.client("alice");
    let mut client = channel_to(backend.addr(), Some(tls(&pki, Some(&alice))));
    for _ in 0..5 {
        assert_eq!(
            call(&mut client, true, Duration::from_secs(5))
                .await
                .unwrap(),
            "t0"
        );
    }
    assert_eq!(backend.callers(), vec![Some("alice".to_owned()); 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_name_verified_is_the_authority_host_unless_overridden() {
    let pki = TestPki::new("test CA");
    // A certificate for the IP: the channel's authority host verifies it.
    let backend = TlsBackend::start("t0", &pki.server(&["127.0.0.1"]), None)
        .await
        .unwrap();
    let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pki.ca_pem()));
    let mut client = channel_to(backend.addr(), Some(config.clone()));
    call(&mut client, true, Duration::from_secs(5))
        .await
        .unwrap();
    // Overridden with a name the certificate does not carry: refused.
    let mut wrong = channel_to(backend.addr(), Some(config.domain_name("movies.test")));
    let status = fail_fast_error(&mut wrong).await;
    assert!(status.message().contains("name mismatch"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_handshake_failure_names_its_cause() {
    let pki = TestPki::new("test CA");
    let other_pki = TestPki::new("someone else's CA");
    let server = pki.server(&["movies.test"]);
    let plain = TlsBackend::start("t0", &server, None).await.unwrap();
    let mutual = TlsBackend::start("t1", &server, Some(pki.ca_pem()))
        .await
        .unwrap();
    let expired = TlsBackend::start("t2", &pki.expired_server(&["movies.test"]), None)
        .await
        .unwrap();
    let plaintext = Backend::start("p0").await.unwrap();

    let cases = [
        (plain.addr(), Some(tls(&other_pki, None)), "unknown issuer"),
        (
            plain.addr(),
            Some(tls(&pki, None).domain_name("other.test")),
            "name mismatch",
        ),
        (expired.addr(), Some(tls(&pki, None)), "expired"),
        (mutual.addr(), Some(tls(&pki, None)), "client certificate"),
        (plaintext.addr(), Some(tls(&pki, None)), "plaintext"),
        (plain.addr(), None, "speaks TLS"),
    ];
    for (addr, config, cause) in cases {
        let mut client = channel_to(addr, config);
        let status = fail_fast_error(&mut client).await;
        assert!(
            status.message().contains(cause),
            "{cause}: {}",
            status.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_ready_call_on_a_wrong_ca_ends_at_its_deadline_naming_the_problem() {
    let pki = TestPki::new("test CA");
    let backend = TlsBackend::start("t0", &pki.server(&["movies.test"]), None)
        .await
        .unwrap();
    let mut client = channel_to(backend.addr(), Some(tls(&TestPki::new("other CA"), None)));
    let started = tokio::time::Instant::now();
    let status = call(&mut client, true, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("unknown issuer"), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_select_alpn_h2_is_refused_saying_so() {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let pki = TestPki::new("test CA");
    let server = pki.server(&["movies.test"]);
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    // No ALPN protocols: the handshake succeeds, selecting none.
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..100 {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            if let Ok(tls) = acceptor.accept(socket).await {
                held.push(tls);
            }
        }
    });
    let mut client = channel_to(addr, Some(tls(&pki, None)));
    let status = fail_fast_error(&mut client).await;
    assert!(status.message().contains("ALPN h2"), "{status:?}");
    accepting.abort();
}

/// Replaces `path`'s content at once (write aside, then rename), as
/// certificate rotation tools do.
fn replace(path: &std::path::Path, content: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, content).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// A backend whose TLS is waypost's own rotating `TlsAcceptor` (server
/// certificate files re-read every 50 ms, clients must present a
/// certificate from the CA), recycling connections every 300 ms so new
/// ones keep being made. Handshakes run in their own tasks.
fn rotating_backend(
    listener: tokio::net::TcpListener,
    config: waypost_balancer::tls::ServerTlsConfig,
) -> TlsBackend {
    use tokio_stream::StreamExt as _;
    let addr = listener.local_addr().unwrap();
    let acceptor = waypost_balancer::tls::TlsAcceptor::new(&config).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let _ = socket.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let handshake =
                    acceptor.accept(waypost_integration::linger::LingeringStream::new(socket));
                if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), handshake).await {
                    let _ = tx.send(tls).await;
                }
            });
        }
    });
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::io::Error>);
    TlsBackend::serve("t0", addr, incoming, Some(Duration::from_millis(300)))
}

/// The certificate a fresh TLS connection to `addr` is shown.
async fn served_certificate(addr: std::net::SocketAddr, pki: &TestPki, client: &Pem) -> Vec<u8> {
    let config = tls(pki, Some(client)).rustls_config().unwrap();
    let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("movies.test").unwrap();
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, socket)
        .await
        .unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_backends_and_the_clients_files_under_load_fails_no_call() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let pki = TestPki::new("test CA");
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let (ca, cert, key, server_cert, server_key) = (
        path("ca.pem"),
        path("client.pem"),
        path("client.key"),
        path("server.pem"),
        path("server.key"),
    );
    let (alice, old_server) = (pki.client("alice"), pki.server(&["movies.test"]));
    for (file, text) in [
        (&ca, pki.ca_pem()),
        (&cert, alice.cert_pem.as_str()),
        (&key, alice.key_pem.as_str()),
        (&server_cert, old_server.cert_pem.as_str()),
        (&server_key, old_server.key_pem.as_str()),
    ] {
        std::fs::write(file, text).unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = rotating_backend(
        listener,
        waypost_balancer::tls::ServerTlsConfig::from_files(
            &server_cert,
            &server_key,
            Some(ca.clone()),
        )
        .refresh_interval(Duration::from_millis(50)),
    );
    assert_eq!(
        served_certificate(backend.addr(), &pki, &alice).await,
        der(&old_server.cert_pem)
    );

    let config = ClientTlsConfig::from_files(&ca, Some((cert.clone(), key.clone())))
        .refresh_interval(Duration::from_millis(50))
        .domain_name("movies.test");
    let channel = builder(&format!("ipv4:{}", backend.addr()))
        .tls(config)
        .default_service_config(round_robin())
        .build()
        .unwrap();
    let client = Client::new(channel.clone());

    // Eight callers for 10 s.
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = tokio::time::Instant::now();
    let mut callers = Vec::new();
    for _ in 0..8 {
        let (mut client, stop) = (client.clone(), stop.clone());
        let (calls, failed) = (calls.clone(), failed.clone());
        callers.push(tokio::spawn(async move {
            let mut first = None;
            for _ in 0..1_000_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                calls.fetch_add(1, Ordering::Relaxed);
                if let Err(status) = call(&mut client, false, Duration::from_secs(5)).await {
                    first.get_or_insert(status);
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            first
        }));
    }
    let until = |at: u64| tokio::time::sleep_until(started + Duration::from_millis(at));

    // At 2 s, a half-written client certificate: kept out and counted.
    until(2_000).await;
    replace(&cert, "-----BEGIN CERTIFICATE-----\nMIIB");
    // At 3 s the client's new identity (key first, then certificate).
    until(3_000).await;
    let bob = pki.client("bob");
    replace(&key, &bob.key_pem);
    replace(&cert, &bob.cert_pem);
    // At 6 s the backend's new certificate (key first, then certificate:
    // in between the pair does not match and the old one is kept).
    until(6_000).await;
    let new_server = pki.server(&["movies.test"]);
    replace(&server_key, &new_server.key_pem);
    replace(&server_cert, &new_server.cert_pem);
    until(10_000).await;
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        let first = caller.await.unwrap();
        assert!(first.is_none(), "{first:?}");
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(
        calls.load(Ordering::Relaxed) > 1_000,
        "the callers kept calling"
    );

    // Connections made after the change were shown the new certificate…
    assert_eq!(
        served_certificate(backend.addr(), &pki, &bob).await,
        der(&new_server.cert_pem)
    );
    // …and showed the new client certificate: alice first, bob last.
    let seen = backend.callers();
    assert_eq!(seen.first().unwrap().as_deref(), Some("alice"));
    assert_eq!(seen.last().unwrap().as_deref(), Some("bob"));
    let stats = channel.stats();
    assert!(stats.tls_reloads >= 1, "{stats:?}");
    assert!(stats.tls_reload_failures >= 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_to_grpc_core_tls_backends_spreads_and_a_client_without_a_certificate_is_refused() {
    use waypost_integration::grpcio::GrpcioBackends;

    let pki = TestPki::new("test CA");
    let backends = GrpcioBackends::start_tls(
        &["g0", "g1"],
        &pki.server(&["movies.test"]),
        Some(pki.ca_pem()),
    )
    .await
    .unwrap();
    let target = |config| {
        let list: Vec<String> = backends.addrs().iter().map(ToString::to_string).collect();
        Client::new(
            builder(&format!("ipv4:{}", list.join(",")))
                .min_connect_timeout(Duration::from_secs(5))
                .default_service_config(round_robin())
                .tls(config)
                .build()
                .unwrap(),
        )
    };
    let alice = pki.client("alice");
    let mut client = target(tls(&pki, Some(&alice)));
    until_all_serve(&mut client, &["g0", "g1"]).await;

    let mut without = target(tls(&pki, None));
    let status = fail_fast_error(&mut without).await;
    assert!(
        status.message().contains("client certificate"),
        "{status:?}"
    );
}
