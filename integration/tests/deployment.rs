//! The documented production deployment (`deploy/waypost-serve.toml`) run
//! for real: two `waypost serve` replicas from that file (loopback
//! addresses and generated certificates substituted), TLS backends
//! registered in etcd and found in DNS, and a waypost mTLS client that
//! finds the replicas through DNS SRV, verifies each as its SRV target, and
//! keeps working when one replica stops.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::json;
use waypost_balancer::Channel;
use waypost_balancer::{Certificate, ClientTlsConfig, Identity};
use waypost_integration::dns::{DnsServer, SrvTarget};
use waypost_integration::etcd::EtcdServer;
use waypost_integration::pki::{Pem, TestPki};
use waypost_integration::tls_backend::TlsBackend;
use waypost_lbserver::config::Config;
use waypost_lbserver::registry::ListSnapshot;
use waypost_lbserver::server::{Running, ServeOptions, start};
use waypost_proto::grpc::lb::v1::load_balance_response::LoadBalanceResponseType;
use waypost_proto::movies::v1::MovieId;
use waypost_proto::movies::v1::movies_service_client::MoviesServiceClient;
use waypost_resolver::ResolverRegistry;
use waypost_resolver::backoff::BackoffConfig;
use waypost_resolver::dns::{DnsOptions, DnsResolverBuilder};
use waypost_resolver::etcd::{Registration, RegistrationOptions};

/// The documented file with test addresses: every substitution must hit,
/// so the documentation and this test cannot drift apart.
fn deployment_config(
    etcd: &str,
    dns: std::net::SocketAddr,
    ratings_port: u16,
    tls: &Material,
) -> Config {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/waypost-serve.toml");
    let mut text = std::fs::read_to_string(path).unwrap();
    let file = |name: &str| format!("\"{}\"", tls.dir.path().join(name).display());
    for (from, to) in [
        ("\"/etc/waypost/tls/waypost.pem\"", file("waypost.pem")),
        ("\"/etc/waypost/tls/waypost.key\"", file("waypost.key")),
        ("\"/etc/waypost/tls/clients-ca.pem\"", file("ca.pem")),
        ("\"/etc/waypost/tls/backends-ca.pem\"", file("ca.pem")),
        (
            "listen = \"0.0.0.0:50050\"",
            "listen = \"127.0.0.1:0\"".to_owned(),
        ),
        (
            "admin = \"127.0.0.1:50051\"",
            "admin = \"127.0.0.1:0\"".to_owned(),
        ),
        (
            "etcd = [\"etcd-1.internal:2379\", \"etcd-2.internal:2379\", \"etcd-3.internal:2379\"]",
            format!("etcd = [\"{etcd}\"]"),
        ),
        (
            "\"dns:///ratings.internal:50061\"",
            format!("\"dns://{dns}/ratings.internal:{ratings_port}\""),
        ),
    ] {
        assert!(
            text.contains(from),
            "deploy/waypost-serve.toml lost {from:?}"
        );
        text = text.replace(from, &to);
    }
    Config::parse(&text, "deploy/waypost-serve.toml").unwrap()
}

/// The deployment's certificates: one CA for the balancers (named as
/// both SRV targets), the backends and the client.
struct Material {
    pki: TestPki,
    client: Pem,
    dir: tempfile::TempDir,
}

impl Material {
    fn new() -> Material {
        let pki = TestPki::new("deployment CA");
        let dir = tempfile::tempdir().unwrap();
        let lb = pki.server(&["lb1.internal", "lb2.internal"]);
        std::fs::write(dir.path().join("waypost.pem"), &lb.cert_pem).unwrap();
        std::fs::write(dir.path().join("waypost.key"), &lb.key_pem).unwrap();
        std::fs::write(dir.path().join("ca.pem"), pki.ca_pem()).unwrap();
        let client = pki.client("movies-client");
        Material { pki, client, dir }
    }
}

fn fast() -> BackoffConfig {
    BackoffConfig {
        base: Duration::from_millis(100),
        multiplier: 1.6,
        jitter: 0.2,
        max: Duration::from_millis(500),
    }
}

async fn replica(config: Config) -> Running {
    let mut options = ServeOptions::default();
    options.probe.backoff = fast();
    options.balance.debounce = Duration::from_millis(10);
    start(config, options).await.unwrap()
}

fn client(
    dns: &DnsServer,
    service: &str,
    port: u16,
    tls: &Material,
) -> MoviesServiceClient<Channel> {
    let resolvers = ResolverRegistry::new();
    resolvers.register(DnsResolverBuilder::new(
        DnsOptions::default()
            .ttl_bounds(Duration::from_millis(500), Duration::from_secs(60))
            .lookups(true, false),
    ));
    let channel = Channel::builder(format!("dns://{}/{service}.internal:{port}", dns.addr()))
        .resolvers(resolvers)
        .default_service_config(
            json!({"loadBalancingConfig": [{"grpclb": {"serviceName": service}}]}),
        )
        .connect_backoff(fast())
        .tls(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(tls.pki.ca_pem()))
                .identity(Identity::from_pem(
                    &tls.client.cert_pem,
                    &tls.client.key_pem,
                )),
        )
        .build()
        .unwrap();
    MoviesServiceClient::new(channel)
}

/// Who served `n` calls.
async fn served_by(client: &mut MoviesServiceClient<Channel>, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let mut request = tonic::Request::new(MovieId { mid: 1 });
        request.set_timeout(Duration::from_secs(10));
        request
            .extensions_mut()
            .insert(waypost_balancer::WaitForReady(true));
        let movie = client.get_movie(request).await.unwrap().into_inner();
        seen.insert(movie.served_by);
    }
    seen
}

#[tokio::test]
async fn the_documented_deployment_serves_through_two_replicas_found_by_srv() {
    let etcd = EtcdServer::start().await.unwrap();
    let dns = DnsServer::start("internal.").await.unwrap();

    let tls = Material::new();
    // movies: two TLS backends that register themselves in etcd.
    let movies_identity = tls.pki.server(&["movies.internal"]);
    let m1 = TlsBackend::start("movies-1", &movies_identity, None)
        .await
        .unwrap();
    let m2 = TlsBackend::start("movies-2", &movies_identity, None)
        .await
        .unwrap();
    let etcd_client = waypost_resolver::etcd::connect(&[etcd.addr()])
        .await
        .unwrap();
    let mut registrations = Vec::new();
    for b in [&m1, &m2] {
        registrations.push(
            Registration::register(
                etcd_client.clone(),
                RegistrationOptions::new("movies", b.addr().to_string())
                    .ttl(Duration::from_secs(5)),
            )
            .await
            .unwrap(),
        );
    }
    // ratings: one TLS backend behind ratings.internal.
    let r1 = TlsBackend::start("ratings-1", &tls.pki.server(&["ratings.internal"]), None)
        .await
        .unwrap();
    dns.set_a("ratings.internal.", &[Ipv4Addr::LOCALHOST], 1)
        .await
        .unwrap();

    // Two replicas of the documented configuration.
    let config = || deployment_config(&etcd.addr(), dns.addr(), r1.addr().port(), &tls);
    let lb1 = replica(config()).await;
    let lb2 = replica(config()).await;

    // Clients find the replicas through SRV (and fall back to the A record).
    for host in ["lb1.internal.", "lb2.internal.", "movies.internal."] {
        dns.set_a(host, &[Ipv4Addr::LOCALHOST], 1).await.unwrap();
    }
    for service in ["movies", "ratings"] {
        dns.set_srv(
            &format!("_grpclb._tcp.{service}.internal."),
            &[
                SrvTarget {
                    priority: 0,
                    weight: 0,
                    port: lb1.listen.port(),
                    target: "lb1.internal.".into(),
                },
                SrvTarget {
                    priority: 0,
                    weight: 0,
                    port: lb2.listen.port(),
                    target: "lb2.internal.".into(),
                },
            ],
            1,
        )
        .await
        .unwrap();
    }

    let mut movies = client(&dns, "movies", m1.addr().port(), &tls);
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        seen.extend(served_by(&mut movies, 10).await);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from(["movies-1".to_owned(), "movies-2".to_owned()]),
        "calls spread over both etcd-registered backends"
    );
    let mut ratings = client(&dns, "ratings", r1.addr().port(), &tls);
    assert_eq!(
        served_by(&mut ratings, 5).await,
        BTreeSet::from(["ratings-1".to_owned()]),
        "the DNS-sourced service is served too"
    );

    // Both replicas hand out the same backends (once their probes agree).
    let listed = |snapshot: &ListSnapshot| -> BTreeSet<String> {
        match &snapshot.response.load_balance_response_type {
            Some(LoadBalanceResponseType::ServerList(list)) => list
                .servers
                .iter()
                .filter(|s| !s.drop)
                .map(|s| {
                    let ip: [u8; 4] = s.ip_address[..].try_into().unwrap_or([0; 4]);
                    format!("{}:{}", Ipv4Addr::from(ip), s.port)
                })
                .collect(),
            _ => BTreeSet::new(),
        }
    };
    let want = BTreeSet::from([m1.addr().to_string(), m2.addr().to_string()]);
    for lb in [&lb1, &lb2] {
        let mut lists = lb.registry.find("movies").expect("configured").subscribe();
        tokio::time::timeout(
            Duration::from_secs(10),
            lists.wait_for(|snapshot| listed(snapshot) == want),
        )
        .await
        .expect("both backends listed")
        .unwrap();
    }

    // One replica goes away: clients keep being served through the other.
    lb1.shutdown().await;
    let after = served_by(&mut movies, 20).await;
    assert!(!after.is_empty());
    assert!(after.iter().all(|s| s.starts_with("movies-")), "{after:?}");
    drop(registrations);
    lb2.shutdown().await;
}
