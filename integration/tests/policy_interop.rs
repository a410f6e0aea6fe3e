//! The same service configs given to gRPC C-core (Python grpcio) and to a
//! waypost channel, against the same backends, behave alike.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::json;
use waypost_balancer::Channel;
use waypost_integration::backend::{Backend, assert_shares, ipv4_target};
use waypost_integration::grpcio::python_with_grpcio;
use waypost_proto::movies::v1::MovieId;
use waypost_proto::movies::v1::movies_service_client::MoviesServiceClient;

/// Runs `policy_client.py TARGET CONFIG ARGS…` (C-core) to its end; its
/// standard output, which must end with `done`.
async fn c_core(target: &str, config: &serde_json::Value, args: &[String]) -> String {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/policy_client.py"
    );
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(python_with_grpcio().unwrap())
            .arg(script)
            .arg(target)
            .arg(config.to_string())
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the C-core client finished within 60 s")
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        text.lines().last() == Some("done"),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

/// C-core's backend for each key (5 calls each must agree).
async fn c_core_placement(
    target: &str,
    config: &serde_json::Value,
    keys: &[String],
) -> BTreeMap<String, String> {
    let mut args = vec!["x-user".to_owned()];
    args.extend(keys.iter().cloned());
    let text = c_core(target, config, &args).await;
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| {
            assert!(!v.starts_with("MIXED"), "C-core: {k} {v}");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// waypost's backend for each key (5 calls each must agree).
async fn waypost_placement(
    target: &str,
    config: &serde_json::Value,
    keys: &[String],
) -> BTreeMap<String, String> {
    let channel = Channel::builder(target)
        .default_service_config(config.clone())
        .build()
        .unwrap();
    let mut client = MoviesServiceClient::new(channel);
    let mut placed = BTreeMap::new();
    for key in keys {
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..5 {
            let mut request = tonic::Request::new(MovieId { mid: 1 });
            request.set_timeout(Duration::from_secs(10));
            request
                .metadata_mut()
                .insert("x-user", key.parse().unwrap());
            request
                .extensions_mut()
                .insert(waypost_balancer::WaitForReady(true));
            names.insert(
                client
                    .get_movie(request)
                    .await
                    .unwrap()
                    .into_inner()
                    .served_by,
            );
        }
        assert_eq!(names.len(), 1, "waypost: {key} went to {names:?}");
        placed.insert(key.clone(), names.pop_first().unwrap());
    }
    placed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_places_every_key_where_c_core_does() {
    // Three backends on 127.0.0.2-4, one port: the addresses hashed onto
    // the ring are the same strings for both clients.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut backends = Vec::new();
    for last in 2..=4u8 {
        let addr = SocketAddr::new(Ipv4Addr::new(127, 0, 0, last).into(), port);
        backends.push(Backend::start_at(&format!("b{last}"), addr).await.unwrap());
    }
    let target = format!("ipv4:127.0.0.2:{port},127.0.0.3:{port},127.0.0.4:{port}");
    let config = json!({"loadBalancingConfig": [
        {"ring_hash_experimental": {"requestHashHeader": "x-user"}}]});
    let keys: Vec<String> = (0..60).map(|k| format!("user-{k}")).collect();
    let c_core = c_core_placement(&target, &config, &keys).await;
    let waypost = waypost_placement(&target, &config, &keys).await;
    let used: std::collections::BTreeSet<_> = c_core.values().collect();
    assert_eq!(used.len(), 3, "C-core used {used:?}");
    let agree = keys.iter().filter(|k| c_core[*k] == waypost[*k]).count();
    assert_eq!(agree, keys.len(), "C-core {c_core:?}\nwaypost {waypost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_the_failing_backend_in_c_core_as_in_waypost() {
    let backends = waypost_integration::backend::start_backends(4)
        .await
        .unwrap();
    backends[0].set_failing(80);
    let target = ipv4_target(&backends);
    // The same config the waypost test (balancer/tests/outlier_detection.rs)
    // uses.
    let config = json!({"loadBalancingConfig": [{"outlier_detection_experimental": {
        "interval": "0.2s", "baseEjectionTime": "1s", "maxEjectionPercent": 50,
        "failurePercentageEjection": {"threshold": 50, "minimumHosts": 4, "requestVolume": 10},
        "childPolicy": [{"round_robin": {}}]}}]});
    let text = c_core(&target, &config, &["--rounds".to_owned(), "30".to_owned()]).await;
    let rounds: Vec<&str> = text.lines().filter(|l| l.starts_with("round")).collect();
    assert_eq!(rounds.len(), 30, "{text}");
    let failing = backends[0].name();
    // C-core, too, stops sending to the failing backend: some round has
    // no call to it at all.
    let clean = rounds
        .iter()
        .position(|r| !r.contains(&format!(" {failing}=")))
        .unwrap_or_else(|| panic!("C-core never ejected {failing}:\n{text}"));
    assert!(clean < 20, "ejected only at round {clean}:\n{text}");
}

/// Three backends reporting ORCA utilizations 0.2, 0.4, 0.8 at 100 qps
/// (per-call reports on or off), and their `ipv4:` target.
async fn orca_backends(per_call: bool) -> (Vec<Backend>, String) {
    let backends = waypost_integration::backend::start_backends(3)
        .await
        .unwrap();
    for (backend, utilization) in backends.iter().zip([0.2, 0.4, 0.8]) {
        backend.orca().set_cpu_utilization(utilization).unwrap();
        backend.orca().set_qps(100.0).unwrap();
        backend.set_orca_per_call(per_call);
    }
    let target = ipv4_target(&backends);
    (backends, target)
}

/// How long both clients call before the calls that count: the blackout
/// (1 s) and a few weight updates, whatever the machine's speed.
const WARM_UP: Duration = Duration::from_secs(3);

/// Calls per backend over C-core's 10 rounds of 100 after the warm-up.
async fn c_core_late_spread(target: &str, config: &serde_json::Value) -> BTreeMap<String, usize> {
    let warm_up = WARM_UP.as_secs().to_string();
    let args = ["--rounds".to_owned(), "10".to_owned(), warm_up];
    let text = c_core(target, config, &args).await;
    let rounds: Vec<&str> = text.lines().filter(|l| l.starts_with("round")).collect();
    assert_eq!(rounds.len(), 10, "{text}");
    let mut served = BTreeMap::new();
    for round in &rounds {
        for (name, count) in round.split(' ').skip(2).filter_map(|f| f.split_once('=')) {
            *served.entry(name.to_owned()).or_insert(0) += count.parse::<usize>().unwrap();
        }
    }
    served
}

/// One waypost call; the backend that served it.
async fn served_by(client: &mut MoviesServiceClient<Channel>) -> String {
    let mut request = tonic::Request::new(MovieId { mid: 1 });
    request.set_timeout(Duration::from_secs(10));
    request
        .extensions_mut()
        .insert(waypost_balancer::WaitForReady(true));
    client
        .get_movie(request)
        .await
        .unwrap()
        .into_inner()
        .served_by
}

/// Calls per backend over 1,000 waypost calls after the warm-up.
async fn waypost_late_spread(target: &str, config: &serde_json::Value) -> BTreeMap<String, usize> {
    let channel = Channel::builder(target)
        .default_service_config(config.clone())
        .build()
        .unwrap();
    let mut client = MoviesServiceClient::new(channel);
    let warm = tokio::time::Instant::now() + WARM_UP;
    while tokio::time::Instant::now() < warm {
        served_by(&mut client).await;
    }
    let mut served = BTreeMap::new();
    for _ in 0..1000 {
        *served.entry(served_by(&mut client).await).or_insert(0) += 1;
    }
    served
}

fn assert_four_two_one(who: &str, served: &BTreeMap<String, usize>) {
    assert_shares(who, served, &[("b0", 4.0), ("b1", 2.0), ("b2", 1.0)], 0.25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_with_per_call_orca_splits_like_c_core() {
    let (_backends, target) = orca_backends(true).await;
    let config = json!({"loadBalancingConfig": [{"weighted_round_robin": {
        "blackoutPeriod": "1s", "weightUpdatePeriod": "0.1s"}}]});
    let c_core = c_core_late_spread(&target, &config).await;
    let waypost = waypost_late_spread(&target, &config).await;
    eprintln!("per-call ORCA: C-core {c_core:?}, waypost {waypost:?}");
    assert_four_two_one("C-core", &c_core);
    assert_four_two_one("waypost", &waypost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_with_out_of_band_orca_splits_like_c_core() {
    // No per-call reports: C-core's weights come from our OpenRcaService.
    let (_backends, target) = orca_backends(false).await;
    let config = json!({"loadBalancingConfig": [{"weighted_round_robin": {
        "enableOobLoadReport": true, "oobReportingPeriod": "0.1s",
        "blackoutPeriod": "1s", "weightUpdatePeriod": "0.1s"}}]});
    let c_core = c_core_late_spread(&target, &config).await;
    let waypost = waypost_late_spread(&target, &config).await;
    eprintln!("out-of-band ORCA: C-core {c_core:?}, waypost {waypost:?}");
    assert_four_two_one("C-core", &c_core);
    assert_four_two_one("waypost", &waypost);
}
