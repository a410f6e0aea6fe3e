//! One DNS TXT service config, read by gRPC C-core (Python grpcio) and by
//! waypost: a record written for C-core — `clientHostname`, gRFC A2's
//! spelling and the only one C-core accepts, beside a field neither knows —
//! must choose the same policy in both, by this machine's host name.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use waypost_balancer::Channel;
use waypost_integration::dns::DnsServer;
use waypost_integration::grpcio::{GrpcioBackends, python_with_grpcio};
use waypost_proto::movies::v1::MovieId;
use waypost_proto::movies::v1::movies_service_client::MoviesServiceClient;
use waypost_resolver::dns::system_host_name;

const CALLS: usize = 30;

/// The backends that served `CALLS` calls from C-core.
async fn c_core_spread(target: &str) -> BTreeSet<String> {
    let python = python_with_grpcio().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/py/txt_client.py");
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(python)
            .arg(script)
            .arg(target)
            .arg(CALLS.to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the C-core client finished within 60 s")
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let names: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(names.len(), CALLS);
    names.into_iter().collect()
}

/// The backends that served `CALLS` calls from a waypost channel.
async fn waypost_spread(target: &str) -> BTreeSet<String> {
    let channel = Channel::builder(target).build().unwrap();
    let mut client = MoviesServiceClient::new(channel);
    let mut served = BTreeSet::new();
    for _ in 0..CALLS {
        let mut request = tonic::Request::new(MovieId { mid: 1 });
        request.set_timeout(Duration::from_secs(10));
        request
            .extensions_mut()
            .insert(waypost_balancer::WaitForReady(true));
        served.insert(
            client
                .get_movie(request)
                .await
                .unwrap()
                .into_inner()
                .served_by,
        );
    }
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_core_and_waypost_choose_the_same_config_from_one_txt_record() {
    let host = system_host_name().expect("this machine has a host name");
    // Three grpcio servers on one port of three loopback addresses: the
    // three A records of one name.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let at = |last: u8| SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), port));
    let _backends = GrpcioBackends::start_at(&[("g1", at(1)), ("g2", at(2)), ("g3", at(3))], &[])
        .await
        .unwrap();
    let dns = DnsServer::start("test.").await.unwrap();
    let ips: Vec<Ipv4Addr> = (1..=3).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    // The choice for this host says round_robin (calls spread over the
    // three); anyone else gets pick_first (calls stick to one).
    let record = |hosts: &str| {
        format!(
            r#"grpc_config=[{{"clientHostname":[{hosts}],"canaryGroup":"b","serviceConfig":{{"loadBalancingConfig":[{{"round_robin":{{}}}}]}}}},{{"serviceConfig":{{"loadBalancingConfig":[{{"pick_first":{{}}}}]}}}}]"#
        )
    };
    for (name, hosts, spread) in [
        ("here.test.", format!("{host:?}"), 3),
        ("elsewhere.test.", "\"some-other-host\"".to_owned(), 1),
    ] {
        dns.set_a(name, &ips, 60).await.unwrap();
        dns.set_txt(&format!("_grpc_config.{name}"), &record(&hosts), 60)
            .await
            .unwrap();
        let target = format!("dns://{}/{}:{port}", dns.addr(), name.trim_end_matches('.'));
        let c_core = c_core_spread(&target).await;
        let waypost = waypost_spread(&target).await;
        assert_eq!(c_core.len(), spread, "C-core, {name}: {c_core:?}");
        assert_eq!(waypost.len(), spread, "waypost, {name}: {waypost:?}");
    }
}
