//! `waypost serve` with `[tls]`: BalanceLoad and admin over TLS, mTLS
//! refusing clients without a certificate, a client certificate standing
//! in for the admin token, and certificate files that rotate under open
//! streams.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;
use tokio_stream::wrappers::ReceiverStream;
use waypost_balancer::{Certificate, Channel, ClientTlsConfig, Identity};
use waypost_integration::backend::start_backends;
use waypost_integration::pki::{Pem, TestPki};
use waypost_lbserver::cli::{AdminTlsArgs, DrainArgs, drain};
use waypost_proto::grpc::lb::v1::load_balance_response::LoadBalanceResponseType;
use waypost_proto::grpc::lb::v1::load_balancer_client::LoadBalancerClient;

/// The balancer's name in its certificate.
const LB_NAME: &str = "lb.test";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    // Written beside and renamed, as a certificate manager does: a reader
    // never sees half a file.
    let part = dir.join(format!("{name}.part"));
    std::fs::write(&part, text).unwrap();
    std::fs::rename(&part, &path).unwrap();
    path
}

/// A CA, the balancer's identity (for [`LB_NAME`] and 127.0.0.1) and an
/// operator's client certificate, all as files in `dir`.
struct Mtls {
    pki: TestPki,
    operator: Pem,
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Mtls {
    fn new() -> Mtls {
        let pki = TestPki::new("waypost CA");
        let server = pki.server(&[LB_NAME, "127.0.0.1"]);
        let operator = pki.client("operator");
        let dir = tempfile::tempdir().unwrap();
        Mtls {
            cert: write(dir.path(), "cert.pem", &server.cert_pem),
            key: write(dir.path(), "key.pem", &server.key_pem),
            ca: write(dir.path(), "ca.pem", pki.ca_pem()),
            client_cert: write(dir.path(), "client.pem", &operator.cert_pem),
            client_key: write(dir.path(), "client-key.pem", &operator.key_pem),
            pki,
            operator,
            dir,
        }
    }
}

/// `waypost serve` with `top` (top-level lines), `[tls]` over `cert` and
/// `key` plus `tls_extra` (more lines of the table), and one service
/// `movies` over `source`, probed for whole-server health.
async fn serve_tls(
    top: &str,
    cert: &Path,
    key: &Path,
    tls_extra: &str,
    source: &str,
) -> waypost_lbserver::server::Running {
    serve(&format!(
        "{top}[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{tls_extra}[[service]]\nname = \"movies\"\nsource = \"{source}\"\nhealth_service = \"\"\n",
        cert.display(),
        key.display(),
    ))
    .await
}

/// A BalanceLoad stream over a waypost TLS channel trusting `ca`, with a
/// client certificate when given.
async fn open_tls(
    lb: std::net::SocketAddr,
    ca: &str,
    identity: Option<&Pem>,
) -> Result<Stream, tonic::Status> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(LB_NAME);
    if let Some(pem) = identity {
        tls = tls.identity(Identity::from_pem(&pem.cert_pem, &pem.key_pem));
    }
    let channel = Channel::builder(format!("passthrough:///{lb}"))
        .tls(tls)
        .build()
        .unwrap();
    let mut client = LoadBalancerClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(initial("movies")).await.unwrap();
    let rx = tokio::time::timeout(
        Duration::from_secs(10),
        client.balance_load(ReceiverStream::new(rx)),
    )
    .await
    .expect("an answer within 10 s")?
    .into_inner();
    Ok(Stream { tx, rx })
}

fn drain_args(
    admin: std::net::SocketAddr,
    backend: std::net::SocketAddr,
    tls: AdminTlsArgs,
) -> DrainArgs {
    DrainArgs {
        admin: admin.to_string(),
        service: "movies".into(),
        backend: backend.to_string(),
        undo: false,
        admin_token_file: None,
        tls,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_clients_without_a_certificate_and_a_certificate_stands_in_for_the_admin_token()
 {
    let backends = start_backends(2).await.unwrap();
    let Mtls {
        pki,
        operator,
        dir,
        cert,
        key,
        ca,
        client_cert,
        client_key,
    } = Mtls::new();
    let token = write(dir.path(), "token", "s3cret-admin-token\n");
    let lb = serve_tls(
        &format!(
            "admin = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\n",
            token.display()
        ),
        &cert,
        &key,
        &format!("client_ca_file = \"{}\"\n", ca.display()),
        &listing(&backends.iter().collect::<Vec<_>>()),
    )
    .await;

    // With a certificate from the client CA: the full list.
    let mut stream = open_tls(lb.listen, pki.ca_pem(), Some(&operator))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut stream).await,
        LoadBalanceResponseType::InitialResponse(_)
    ));
    let list = list_where(&mut stream, |s| s.len() == 2).await;
    assert_eq!(list.len(), 2);

    // Without one: refused, and the reason says so.
    let refused = open_tls(lb.listen, pki.ca_pem(), None).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("client certificate"),
        "{refused:?}"
    );
    // With one from another CA: refused too.
    let stranger = TestPki::new("someone else's CA").client("intruder");
    let refused = open_tls(lb.listen, pki.ca_pem(), Some(&stranger))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    // In plaintext: nothing answers gRPC.
    assert!(open(lb.listen, initial("movies")).await.is_err());

    // Admin over TLS without the token or a certificate: 401, nothing drained.
    let admin = lb.admin.unwrap();
    let victim = backends[0].addr();
    let server_only = AdminTlsArgs {
        tls_ca: Some(ca.clone()),
        ..AdminTlsArgs::default()
    };
    let mut out = Vec::new();
    assert_eq!(
        drain(drain_args(admin, victim, server_only), &mut out).await,
        1,
        "refused without the token or a certificate"
    );
    let service = lb.registry.find("movies").unwrap();
    let draining = |service: &waypost_lbserver::registry::Service| {
        service
            .views()
            .iter()
            .find(|b| b.addr == victim)
            .unwrap()
            .draining
    };
    assert!(!draining(&service));

    // With the operator's certificate and no token: drained.
    let with_certificate = AdminTlsArgs {
        tls_ca: Some(ca.clone()),
        tls_cert: Some(client_cert),
        tls_key: Some(client_key),
        tls_server_name: Some(LB_NAME.into()),
    };
    let mut out = Vec::new();
    assert_eq!(
        drain(drain_args(admin, victim, with_certificate), &mut out).await,
        0,
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(draining(&service));
    let list = list_where(&mut stream, |s| ports(s).len() == 1).await;
    assert_eq!(ports(&list), [backends[1].addr().port()]);

    // The admin port speaks no plaintext.
    let plain = http(admin, "GET", "/healthz").await;
    assert!(!plain.contains("200 OK"), "{plain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificate_files_apply_to_new_connections_while_open_streams_keep_going() {
    let backends = start_backends(2).await.unwrap();
    let old_ca = TestPki::new("old CA");
    let new_ca = TestPki::new("new CA");
    let old = old_ca.server(&[LB_NAME]);
    let new = new_ca.server(&[LB_NAME]);
    let files = old_ca.files(&old).unwrap();
    let lb = serve_tls(
        "",
        &files.cert,
        &files.key,
        "reload_interval = \"50ms\"\n",
        &listing(&backends.iter().collect::<Vec<_>>()),
    )
    .await;

    // Eight clients trusting the old CA, each with a list.
    let mut streams = Vec::new();
    for _ in 0..8 {
        let mut stream = open_tls(lb.listen, old_ca.ca_pem(), None).await.unwrap();
        list_where(&mut stream, |s| s.len() == 2).await;
        streams.push(stream);
    }
    // A client trusting only the new CA cannot connect yet.
    let early = open_tls(lb.listen, new_ca.ca_pem(), None)
        .await
        .unwrap_err();
    assert!(early.message().contains("unknown issuer"), "{early:?}");

    // A half-written certificate is kept out and counted; the old one
    // still serves new connections.
    let dir = files.cert.parent().unwrap();
    write(dir, "cert.pem", "-----BEGIN CERTIFICATE-----\nMIIB");
    let stats = lb.tls.clone().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stats
        .reload_failures
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reload failure counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut during = open_tls(lb.listen, old_ca.ca_pem(), None).await.unwrap();
    list_where(&mut during, |s| s.len() == 2).await;
    streams.push(during);

    // The files are replaced; new connections get the new certificate.
    write(dir, "key.pem", &new.key_pem);
    write(dir, "cert.pem", &new.cert_pem);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut fresh = loop {
        match open_tls(lb.listen, new_ca.ca_pem(), None).await {
            Ok(stream) => break stream,
            Err(error) => assert!(
                tokio::time::Instant::now() < deadline,
                "the new certificate was not served within 10 s: {error:?}"
            ),
        }
    };
    list_where(&mut fresh, |s| s.len() == 2).await;
    assert!(stats.reloads.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    let late = open_tls(lb.listen, old_ca.ca_pem(), None)
        .await
        .unwrap_err();
    assert!(late.message().contains("unknown issuer"), "{late:?}");

    // The connections made before the change are untouched: every stream
    // gets the next list.
    let service = lb.registry.find("movies").unwrap();
    assert!(service.set_draining(backends[0].addr(), true));
    for stream in &mut streams {
        let list = list_where(stream, |s| ports(s).len() == 1).await;
        assert_eq!(ports(&list), [backends[1].addr().port()]);
    }
}

#[tokio::test]
async fn unusable_tls_material_is_a_config_error_at_start() {
    let text = "listen = \"127.0.0.1:0\"\n[tls]\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n";
    let error = waypost_lbserver::server::start(
        waypost_lbserver::config::Config::parse(text, "t.toml").unwrap(),
        options(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, waypost_lbserver::server::ServeError::Tls(_)),
        "{error}"
    );
    assert!(error.is_config());
    assert!(
        error.to_string().contains("/nonexistent/cert.pem"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_mid_handshake_holds_up_no_one_and_is_closed_at_the_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let backends = start_backends(1).await.unwrap();
    let pki = TestPki::new("waypost CA");
    let files = pki.files(&pki.server(&[LB_NAME])).unwrap();
    let lb = serve_tls(
        "handshake_timeout = \"300ms\"\n",
        &files.cert,
        &files.key,
        "",
        &backends[0].addr().to_string(),
    )
    .await;

    // The first bytes of a ClientHello record, then nothing.
    let mut stalled = tokio::net::TcpStream::connect(lb.listen).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02]).await.unwrap();
    let started = tokio::time::Instant::now();

    // Meanwhile a real client is served at once.
    let mut stream = open_tls(lb.listen, pki.ca_pem(), None).await.unwrap();
    list_where(&mut stream, |s| s.len() == 1).await;

    // And the stalled one is closed once the handshake timeout passes.
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf))
        .await
        .expect("closed within 5 s");
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "the server sent {closed:?} to a stalled handshake"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn the_tls_flags_of_serve_status_and_drain() {
    let Mtls {
        pki,
        operator,
        dir: _dir,
        cert,
        key,
        ca,
        client_cert,
        client_key,
    } = Mtls::new();
    let path = |p: &PathBuf| p.display().to_string();

    // A certificate without its key is a usage error.
    let (_, code) = run(&["serve", "--tls-cert", &path(&cert)]).await;
    assert_eq!(code, 64);

    let (mut serve, mut out) = spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--service",
        "movies=127.0.0.1:9",
        "--tls-cert",
        &path(&cert),
        "--tls-key",
        &path(&key),
        "--tls-client-ca",
        &path(&ca),
    ]);
    let started = next_json(&mut out).await;
    assert_eq!(started["tls"], true);
    let admin = started["admin"].as_str().unwrap().to_owned();
    let listen: std::net::SocketAddr = started["listening"].as_str().unwrap().parse().unwrap();

    // BalanceLoad over mTLS.
    let mut stream = open_tls(listen, pki.ca_pem(), Some(&operator))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut stream).await,
        LoadBalanceResponseType::InitialResponse(_)
    ));

    let tls_args = |with_certificate: bool| {
        let mut args = vec![
            "--admin".to_owned(),
            admin.clone(),
            "--tls-ca".to_owned(),
            path(&ca),
            "--tls-server-name".to_owned(),
            LB_NAME.to_owned(),
        ];
        if with_certificate {
            args.extend([
                "--tls-cert".to_owned(),
                path(&client_cert),
                "--tls-key".to_owned(),
                path(&client_key),
            ]);
        }
        args
    };
    let command = |name: &str, with_certificate: bool, extra: &[&str]| {
        let mut command = tokio::process::Command::new(WAYPOST);
        command
            .arg(name)
            .args(tls_args(with_certificate))
            .args(extra);
        command
    };
    // status reads over TLS (reads need no credentials).
    let status = command("status", false, &[]).output().await.unwrap();
    assert_eq!(status.status.code(), Some(0), "{status:?}");
    let table = String::from_utf8(status.stdout).unwrap();
    assert!(table.contains("127.0.0.1:9 "), "{table}");
    // drain needs the certificate (there is no token).
    let drain = ["--service", "movies", "--backend", "127.0.0.1:9"];
    let refused = command("drain", false, &drain).output().await.unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{refused:?}"
    );
    let drained = command("drain", true, &drain).output().await.unwrap();
    assert_eq!(drained.status.code(), Some(0), "{drained:?}");
    assert!(String::from_utf8_lossy(&drained.stdout).contains("\"draining\":true"));

    assert_eq!(terminate(&mut serve).await, 0);
}
