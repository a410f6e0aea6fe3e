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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_client_files_are_used_by_new_connections_and_no_call_fails() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let pki = TestPki::new("test CA");
    // The backend recycles connections every 300 ms, so new ones keep
    // being made while the files change.
    let backend = TlsBackend::start_recycling(
        "t0",
        &pki.server(&["movies.test"]),
        Some(pki.ca_pem()),
        Some(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("client.pem"),
        dir.path().join("client.key"),
    );
    let alice = pki.client("alice");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    std::fs::write(&cert, &alice.cert_pem).unwrap();
    std::fs::write(&key, &alice.key_pem).unwrap();
    let config = ClientTlsConfig::from_files(&ca, Some((cert.clone(), key.clone())))
        .refresh_interval(Duration::from_millis(50))
        .domain_name("movies.test");
    let channel = builder(&format!("ipv4:{}", backend.addr()))
        .tls(config)
        .default_service_config(round_robin())
        .build()
        .unwrap();
    let client = Client::new(channel.clone());

    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::new();
    for _ in 0..8 {
        let (mut client, stop, failed) = (client.clone(), stop.clone(), failed.clone());
        callers.push(tokio::spawn(async move {
            let mut first = None;
            for _ in 0..50_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Err(status) = call(&mut client, false, Duration::from_secs(5)).await {
                    first.get_or_insert(status);
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            first
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    // A half-written certificate first: kept out, counted, nothing fails.
    replace(&cert, "-----BEGIN CERTIFICATE-----\nMIIB");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while channel.stats().tls_reload_failures == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            channel.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Then the new identity: key first, then certificate.
    let bob = pki.client("bob");
    replace(&key, &bob.key_pem);
    replace(&cert, &bob.cert_pem);
    while !backend
        .callers()
        .iter()
        .any(|c| c.as_deref() == Some("bob"))
    {
        assert!(tokio::time::Instant::now() < deadline, "bob never called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        let first = caller.await.unwrap();
        assert!(first.is_none(), "{first:?}");
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    let callers = backend.callers();
    // Before the change alice, after it bob; the last calls are all bob's.
    assert_eq!(callers.first().unwrap().as_deref(), Some("alice"));
    assert_eq!(callers.last().unwrap().as_deref(), Some("bob"));
    assert!(channel.stats().tls_reloads >= 1, "{:?}", channel.stats());
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
