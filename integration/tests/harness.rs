//! Proves each harness server works, with real clients: tonic for the
//! backends, etcd-client for etcd, hickory-resolver for DNS.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};
use waypost_integration::backend::{Backend, MOVIES_SERVICE, start_backends};
use waypost_integration::dns::{DnsServer, SrvTarget};
use waypost_integration::etcd::EtcdServer;
use waypost_proto::grpc::health::v1::HealthCheckRequest;
use waypost_proto::grpc::health::v1::health_check_response::ServingStatus;
use waypost_proto::grpc::health::v1::health_client::HealthClient;
use waypost_proto::movies::v1::movies_service_client::MoviesServiceClient;
use waypost_proto::movies::v1::{MovieId, MovieQuery};

async fn channel_to(backend: &Backend) -> Channel {
    Endpoint::from_shared(format!("http://{}", backend.addr()))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn backends_name_themselves_and_serve_both_methods() {
    let backends = start_backends(3).await.unwrap();
    for backend in &backends {
        let mut client = MoviesServiceClient::new(channel_to(backend).await);
        let mut request = tonic::Request::new(MovieId { mid: 1 });
        request
            .metadata_mut()
            .insert("lb-token", "tok-1".parse().unwrap());
        let response = client.get_movie(request).await.unwrap();
        assert_eq!(
            response.metadata().get("x-served-by").unwrap(),
            backend.name()
        );
        assert_eq!(response.get_ref().served_by, backend.name());
        assert_eq!(response.get_ref().movie_name, "Alien");

        let stream = client
            .query_movies(MovieQuery {
                query: "space".into(),
                limit: 2,
            })
            .await
            .unwrap()
            .into_inner();
        let movies: Vec<_> = stream.collect::<Result<Vec<_>, _>>().await.unwrap();
        assert_eq!(movies.len(), 2);
        assert!(movies.iter().all(|m| m.served_by == backend.name()));

        let missing = client.get_movie(MovieId { mid: 999 }).await.unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);

        assert_eq!(backend.calls(), 3);
        assert_eq!(backend.tokens_seen().get("tok-1"), Some(&1));
    }
}

#[tokio::test]
async fn backend_health_flips_are_streamed_to_watchers() {
    let backend = Backend::start("h").await.unwrap();
    let mut health = HealthClient::new(channel_to(&backend).await);
    let request = HealthCheckRequest {
        service: MOVIES_SERVICE.into(),
    };
    let mut watch = health.watch(request.clone()).await.unwrap().into_inner();
    let status = |r: Option<
        Result<waypost_proto::grpc::health::v1::HealthCheckResponse, tonic::Status>,
    >| { r.unwrap().unwrap().status() };
    assert_eq!(status(watch.next().await), ServingStatus::Serving);

    backend.set_serving(false);
    assert_eq!(status(watch.next().await), ServingStatus::NotServing);
    let checked = health.check(request.clone()).await.unwrap().into_inner();
    assert_eq!(checked.status(), ServingStatus::NotServing);

    backend.set_serving(true);
    assert_eq!(status(watch.next().await), ServingStatus::Serving);

    let unknown = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn backend_stops_and_restarts_on_the_same_port() {
    let backend = Backend::start("r").await.unwrap();
    let addr = backend.addr();
    let mut client = MoviesServiceClient::new(channel_to(&backend).await);
    client.get_movie(MovieId { mid: 2 }).await.unwrap();

    backend.stop().await;
    assert!(!backend.is_running().await);
    // The existing connection is gone and the port refuses new ones.
    let err = client.get_movie(MovieId { mid: 2 }).await.unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);
    let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    backend.restart().await.unwrap();
    assert_eq!(backend.addr(), addr);
    let mut client = MoviesServiceClient::new(channel_to(&backend).await);
    let movie = client
        .get_movie(MovieId { mid: 2 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(movie.served_by, "r");
}

#[tokio::test]
async fn hanging_backend_accepts_tcp_but_answers_nothing() {
    let backend = Backend::start("hang").await.unwrap();
    let mut client = MoviesServiceClient::new(channel_to(&backend).await);
    client.get_movie(MovieId { mid: 3 }).await.unwrap();

    backend.set_hanging(true);
    // An established connection gets no reply.
    let mut request = tonic::Request::new(MovieId { mid: 3 });
    request.set_timeout(Duration::from_millis(300));
    let err = client.get_movie(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Cancelled, "{err:?}");
    // A new TCP connection is accepted, but no HTTP/2 SETTINGS ever arrive.
    let mut raw = tokio::net::TcpStream::connect(backend.addr())
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_millis(300),
        tokio::io::AsyncReadExt::read(&mut raw, &mut buf),
    )
    .await;
    assert!(read.is_err(), "a hanging backend must not write anything");

    backend.set_hanging(false);
    let movie = client
        .get_movie(MovieId { mid: 3 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(movie.served_by, "hang");
}

#[tokio::test]
async fn backend_delay_header_delays_the_reply() {
    let backend = Backend::start("slow").await.unwrap();
    let mut client = MoviesServiceClient::new(channel_to(&backend).await);
    let mut request = tonic::Request::new(MovieId { mid: 1 });
    request
        .metadata_mut()
        .insert("x-delay-ms", "5000".parse().unwrap());
    request.set_timeout(Duration::from_millis(200));
    let err = client.get_movie(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Cancelled, "{err:?}");
}

#[tokio::test]
async fn etcd_serves_survives_restart_and_dies_with_its_owner() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    client
        .put(
            "orders/127.0.0.1:1",
            r#"{"Op":0,"Addr":"127.0.0.1:1"}"#,
            None,
        )
        .await
        .unwrap();
    let got = client
        .get(
            "orders/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(got.kvs().len(), 1);

    etcd.stop();
    assert!(!etcd.is_running());
    let refused = tokio::net::TcpStream::connect(etcd.addr())
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    etcd.restart().await.unwrap();
    assert!(etcd.is_running());
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let got = client.get("orders/127.0.0.1:1", None).await.unwrap();
    assert_eq!(
        got.kvs()[0].value_str().unwrap(),
        r#"{"Op":0,"Addr":"127.0.0.1:1"}"#
    );

    let addr = etcd.addr();
    drop(etcd);
    let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

fn resolver_for(dns: &DnsServer) -> TokioResolver {
    let mut ns = NameServerConfig::udp_and_tcp(dns.addr().ip());
    for connection in &mut ns.connections {
        connection.port = dns.addr().port();
    }
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.timeout = Duration::from_millis(300);
    opts.attempts = 1;
    Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()
    .unwrap()
}

#[tokio::test]
async fn dns_serves_records_the_test_changes() {
    let dns = DnsServer::start("test.").await.unwrap();
    let resolver = resolver_for(&dns);

    dns.set_a(
        "orders.test.",
        &[Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)],
        7,
    )
    .await
    .unwrap();
    dns.set_aaaa("orders.test.", &[Ipv6Addr::LOCALHOST], 7)
        .await
        .unwrap();
    let ips = resolver.lookup_ip("orders.test.").await.unwrap();
    let mut got: Vec<IpAddr> = ips.iter().collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from([127, 0, 0, 2]),
            IpAddr::from(Ipv6Addr::LOCALHOST),
        ]
    );
    let a = resolver
        .lookup("orders.test.", RecordType::A)
        .await
        .unwrap();
    assert!(
        a.answers().iter().all(|r| r.ttl == 7),
        "TTLs are the test's"
    );

    // Replacing the set replaces it (not an append).
    dns.set_a("orders.test.", &[Ipv4Addr::new(127, 0, 0, 9)], 3)
        .await
        .unwrap();
    let a = resolver
        .lookup("orders.test.", RecordType::A)
        .await
        .unwrap();
    let ips: Vec<_> = a
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    assert_eq!(ips, vec![Ipv4Addr::new(127, 0, 0, 9)]);
    assert!(dns.queries("orders.test.", RecordType::A) >= 3);

    dns.set_srv(
        "_grpclb._tcp.orders.test.",
        &[SrvTarget {
            priority: 0,
            weight: 5,
            port: 9000,
            target: "lb.test.".into(),
        }],
        30,
    )
    .await
    .unwrap();
    let srv = resolver
        .lookup("_grpclb._tcp.orders.test.", RecordType::SRV)
        .await
        .unwrap();
    match &srv.answers()[0].data {
        RData::SRV(srv) => {
            assert_eq!((srv.port, srv.weight), (9000, 5));
            assert_eq!(srv.target.to_ascii(), "lb.test.");
        }
        other => panic!("expected SRV, got {other:?}"),
    }

    // A TXT longer than 255 bytes arrives as several strings that concatenate back.
    let config = format!(
        "grpc_config=[{{\"serviceConfig\":{{\"x\":\"{}\"}}}}]",
        "y".repeat(400)
    );
    dns.set_txt("_grpc_config.orders.test.", &config, 30)
        .await
        .unwrap();
    let txt = resolver
        .lookup("_grpc_config.orders.test.", RecordType::TXT)
        .await
        .unwrap();
    match &txt.answers()[0].data {
        RData::TXT(txt) => {
            assert!(txt.txt_data.len() > 1);
            let joined: Vec<u8> = txt
                .txt_data
                .iter()
                .flat_map(|s| s.iter().copied())
                .collect();
            assert_eq!(String::from_utf8(joined).unwrap(), config);
        }
        other => panic!("expected TXT, got {other:?}"),
    }

    dns.remove("orders.test.", RecordType::A).await.unwrap();
    assert!(
        resolver
            .lookup("orders.test.", RecordType::A)
            .await
            .is_err()
    );
    assert!(
        resolver
            .lookup("missing.test.", RecordType::A)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn silent_dns_server_times_clients_out() {
    let dns = DnsServer::start("test.").await.unwrap();
    dns.set_a("quiet.test.", &[Ipv4Addr::LOCALHOST], 5)
        .await
        .unwrap();
    let resolver = resolver_for(&dns);
    resolver.lookup("quiet.test.", RecordType::A).await.unwrap();

    dns.set_silent(true);
    let before = dns.queries("quiet.test.", RecordType::A);
    let err = resolver
        .lookup("quiet.test.", RecordType::A)
        .await
        .unwrap_err();
    let message = err.to_string().to_lowercase();
    assert!(
        message.contains("timed out") || message.contains("timeout"),
        "expected a timeout, got {err}"
    );
    assert!(
        dns.queries("quiet.test.", RecordType::A) > before,
        "the query reached the server"
    );

    dns.set_silent(false);
    resolver.lookup("quiet.test.", RecordType::A).await.unwrap();
}

#[test]
fn etcd_is_stopped_when_its_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let etcd = runtime.block_on(EtcdServer::start()).unwrap();
        tx.send(etcd.addr()).unwrap();
        panic!("a test failing while it owns etcd");
    });
    let addr = rx.recv().unwrap();
    assert!(thread.join().is_err(), "the thread panicked");
    let refused = std::net::TcpStream::connect(&addr).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

/// Helper mode for the next test: when run with `WAYPOST_ETCD_ORPHAN_HELPER`
/// set, start etcd, print its address, and wait to be killed.
#[tokio::test]
async fn etcd_orphan_helper() {
    if std::env::var_os("WAYPOST_ETCD_ORPHAN_HELPER").is_none() {
        return;
    }
    let etcd = EtcdServer::start().await.unwrap();
    println!("ETCD_DIR={}", etcd.dir().display());
    println!("ETCD_ADDR={}", etcd.addr());
    std::future::pending::<()>().await;
}

#[test]
fn etcd_is_stopped_when_its_test_process_is_killed() {
    use std::io::BufRead;
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "etcd_orphan_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WAYPOST_ETCD_ORPHAN_HELPER", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(helper.stdout.take().unwrap());
    let mut lines = stdout.lines().map_while(Result::ok);
    let mut printed = |key: &str| {
        lines
            .find_map(|line| line.split_once(key).map(|(_, v)| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("the helper printed {key}"))
    };
    // The killed helper cannot remove its data directory; this test does.
    let dir = std::path::PathBuf::from(printed("ETCD_DIR="));
    let addr = printed("ETCD_ADDR=");
    std::net::TcpStream::connect(&addr).expect("etcd is up while its owner lives");

    helper.kill().unwrap(); // SIGKILL: no destructor runs.
    helper.wait().unwrap();
    // The watchdog notices its pipe close and stops etcd; wait for the port
    // to close (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match std::net::TcpStream::connect(&addr) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ if std::time::Instant::now() > deadline => panic!("etcd outlived its killed owner"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    assert!(dir.starts_with(std::env::temp_dir()) && dir.join("etcd.log").is_file());
    // etcd may still be closing files as its port closes: retry briefly.
    let mut removed = std::fs::remove_dir_all(&dir);
    for _ in 0..20 {
        if removed.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        removed = std::fs::remove_dir_all(&dir);
    }
    removed.expect("the killed helper's etcd directory is removed");
}
