//! `waypost serve` as an xDS management server, used by real xDS clients:
//! gRPC C-core (Python grpcio, `xds:///movies` with its bootstrap pointing
//! at the balancer) and waypost's own `xds:///` channel, against the same
//! tonic backends. Spread, drains, health, drops, weights, zones,
//! priorities and ring_hash; every response ACKed, none NACKed.

mod lbserve;
use lbserve::fast_serve_options;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use waypost_integration::backend::{Backend, start_backends};
use waypost_integration::etcd::EtcdServer;
use waypost_integration::grpcio::python_with_grpcio;
use waypost_lbserver::config::Config;
use waypost_lbserver::server::{Running, start};
use waypost_lbserver::xds::ResourceType;
use waypost_proto::movies::v1::MovieId;
use waypost_proto::movies::v1::movies_service_client::MoviesServiceClient;

/// `waypost serve` with `services` (TOML `[[service]]` tables).
async fn serve(services: &str) -> Running {
    let text = format!("listen = \"127.0.0.1:0\"\n{services}");
    start(
        Config::parse(&text, "xds.toml").unwrap(),
        fast_serve_options(),
    )
    .await
    .unwrap()
}

fn static_service(name: &str, backends: &[&Backend], extra: &str) -> String {
    let source: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    format!(
        "[[service]]\nname = \"{name}\"\nsource = \"{}\"\nhealth_service = \"\"\n{extra}\n",
        source.join(",")
    )
}

fn bootstrap(lb: &Running, node: &str) -> String {
    format!(
        r#"{{"xds_servers": [{{"server_uri": "{}", "channel_creds": [{{"type": "insecure"}}]}}], "node": {{"id": "{node}"}}}}"#,
        lb.listen
    )
}

/// A C-core client on `xds:///TARGET`, taking commands (see
/// `interop/xds_client.py`).
struct CCore {
    _child: Child,
    _bootstrap: tempfile::NamedTempFile,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl CCore {
    /// Starts the client with nothing but a bootstrap file
    /// (`GRPC_XDS_BOOTSTRAP`) pointing at `lb`.
    async fn start(lb: &Running, target: &str, node: &str) -> CCore {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/xds_client.py");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bootstrap(lb, node)).unwrap();
        let mut child = tokio::process::Command::new(python_with_grpcio().unwrap())
            .arg(script)
            .arg(target)
            .env("GRPC_XDS_BOOTSTRAP", file.path())
            .env_remove("GRPC_XDS_BOOTSTRAP_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("C-core made its first call within 60 s")
            .unwrap();
        assert_eq!(ready.as_deref(), Some("ready"));
        CCore {
            stdin: child.stdin.take().unwrap(),
            _child: child,
            _bootstrap: file,
            lines,
        }
    }

    /// Runs `command`; the lines it printed before `ok`.
    async fn run(&mut self, command: &str) -> Vec<String> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                if line == "ok" {
                    return;
                }
                out.push(line);
            }
            panic!("C-core ended: {out:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("C-core answered {command:?} within 60 s: {out:?}"));
        out
    }

    /// `n` rounds of 100 calls: calls per backend name (and `dropped`,
    /// `failed`), summed.
    async fn calls(&mut self, n: usize) -> BTreeMap<String, usize> {
        let mut total = BTreeMap::new();
        for line in self.run(&format!("rounds {n}")).await {
            if !line.starts_with("round ") {
                continue;
            }
            for pair in line.split(' ').skip(2) {
                let (name, count) = pair.split_once('=').unwrap();
                *total.entry(name.to_owned()).or_insert(0) += count.parse::<usize>().unwrap();
            }
        }
        total
    }
}

/// A waypost channel on `xds:///TARGET` using `lb` as its management
/// server.
fn waypost_client(
    lb: &Running,
    target: &str,
    node: &str,
) -> MoviesServiceClient<waypost_balancer::Channel> {
    let bootstrap = waypost_xds::bootstrap::Bootstrap::from_json(&bootstrap(lb, node)).unwrap();
    let resolvers = waypost_resolver::ResolverRegistry::new();
    resolvers.register(waypost_xds::resolver::XdsResolverBuilder::with_bootstrap(
        bootstrap,
    ));
    let channel = waypost_balancer::Channel::builder(format!("xds:///{target}"))
        .resolvers(resolvers)
        .build()
        .unwrap();
    MoviesServiceClient::new(channel)
}

/// `n` fail-fast calls (after one wait-for-ready call that may be
/// dropped): calls per backend name, `dropped` and `failed`.
async fn waypost_calls(
    client: &mut MoviesServiceClient<waypost_balancer::Channel>,
    n: usize,
) -> BTreeMap<String, usize> {
    let mut served = BTreeMap::new();
    for _ in 0..n {
        let mut request = tonic::Request::new(MovieId { mid: 1 });
        request.set_timeout(Duration::from_secs(10));
        let name = match client.get_movie(request).await {
            Ok(reply) => reply.into_inner().served_by,
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    && status.message().contains("EDS-configured drop") =>
            {
                "dropped".into()
            }
            Err(_) => "failed".into(),
        };
        *served.entry(name).or_insert(0) += 1;
    }
    served
}

/// Waits (wait-for-ready) until `client` can call at all.
async fn waypost_ready(client: &mut MoviesServiceClient<waypost_balancer::Channel>) {
    for _ in 0..50 {
        let mut request = tonic::Request::new(MovieId { mid: 1 });
        request.set_timeout(Duration::from_secs(30));
        request
            .extensions_mut()
            .insert(waypost_balancer::WaitForReady(true));
        match client.get_movie(request).await {
            Ok(_) => return,
            Err(status) if status.message().contains("EDS-configured drop") => {}
            Err(status) => panic!("waypost's first call: {status}"),
        }
    }
    panic!("every first call was dropped");
}

fn count(calls: &BTreeMap<String, usize>, name: &str) -> usize {
    calls.get(name).copied().unwrap_or(0)
}

/// Both clients: an even spread over three backends; a drained backend and
/// then a NOT_SERVING one get no calls within 2 s; every response ACKed and
/// none NACKed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_core_and_waypost_balance_by_waypost_serve_and_follow_drains_and_health() {
    let backends = start_backends(3).await.unwrap();
    let refs: Vec<&Backend> = backends.iter().collect();
    let lb = serve(&static_service("movies", &refs, "")).await;
    let mut c_core = CCore::start(&lb, "xds:///movies", "c-core-1").await;
    let mut waypost = waypost_client(&lb, "movies", "waypost-1");
    waypost_ready(&mut waypost).await;

    let c = c_core.calls(3).await;
    let w = waypost_calls(&mut waypost, 300).await;
    eprintln!("C-core {c:?}\nwaypost {w:?}");
    for backend in &backends {
        for calls in [&c, &w] {
            assert!(
                (80..=120).contains(&count(calls, backend.name())),
                "C-core {c:?} waypost {w:?}"
            );
        }
    }

    // Drained: out of both clients' calls within 2 s.
    let service = lb.registry.find("movies").unwrap();
    service.set_draining(backends[0].addr(), true);
    assert_gone(&mut c_core, &mut waypost, &backends[0]).await;
    // NOT_SERVING: the probe takes it out, and the clients follow.
    backends[1].set_serving(false);
    assert_gone(&mut c_core, &mut waypost, &backends[1]).await;

    // Every response was ACKed by both; nothing NACKed.
    let records = lb.registry.xds_clients().snapshot();
    assert_eq!(records.len(), 2, "{records:?}");
    for record in &records {
        assert!(
            ["c-core-1", "waypost-1"].contains(&record.node_id.as_str()),
            "{record:?}"
        );
        assert!(record.subscribes("movies"));
        for ty in [
            ResourceType::Listener,
            ResourceType::Cluster,
            ResourceType::Endpoints,
        ] {
            assert!(record.acked(ty).is_some(), "{record:?} acked no {ty:?}");
        }
        assert_eq!(record.last_nack, None);
    }
    for ty in ResourceType::ALL {
        let counters = lb.registry.xds_clients().counters(ty);
        assert_eq!(counters.nacks.load(std::sync::atomic::Ordering::Relaxed), 0);
    }
    // /status shows them.
    let status = waypost_lbserver::admin::status(&lb.registry);
    let clients = &status["services"][0]["xds_clients"];
    assert_eq!(clients.as_array().unwrap().len(), 2, "{status}");
}

/// Within 2 s of a change, rounds of calls from both clients stop
/// reaching `gone`; then one more round of each reaches it not at all.
async fn assert_gone(
    c_core: &mut CCore,
    waypost: &mut MoviesServiceClient<waypost_balancer::Channel>,
    gone: &Backend,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let c = c_core.calls(1).await;
        let w = waypost_calls(waypost, 50).await;
        if count(&c, gone.name()) == 0 && count(&w, gone.name()) == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} still called 2 s on: C-core {c:?} waypost {w:?}",
            gone.name()
        );
    }
    let before = gone.calls();
    let c = c_core.calls(1).await;
    let w = waypost_calls(waypost, 100).await;
    assert_eq!(gone.calls(), before, "C-core {c:?} waypost {w:?}");
    assert_eq!(
        count(&c, "failed") + count(&w, "failed"),
        0,
        "C-core {c:?} waypost {w:?}"
    );
}

/// `drop_fraction = 0.25`: both clients drop a quarter of 400 calls
/// (each call is an independent draw: 100 ± 8.7 is one standard deviation,
/// so the bounds are ±4σ, far from 0 % and 50 %), UNAVAILABLE with
/// C-core's "EDS-configured drop" message naming the category.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_core_and_waypost_drop_the_configured_share() {
    let backends = start_backends(2).await.unwrap();
    let refs: Vec<&Backend> = backends.iter().collect();
    let lb = serve(&static_service("movies", &refs, "drop_fraction = 0.25")).await;
    let mut c_core = CCore::start(&lb, "xds:///movies", "c-core-drops").await;
    let mut waypost = waypost_client(&lb, "movies", "waypost-drops");
    waypost_ready(&mut waypost).await;

    let lines = c_core.run("rounds 4").await;
    let message = lines
        .iter()
        .find_map(|l| l.strip_prefix("drop-message "))
        .expect("C-core dropped a call");
    assert!(
        message.contains("EDS-configured drop: waypost"),
        "{message}"
    );
    let c = c_core.calls(4).await;
    let w = waypost_calls(&mut waypost, 400).await;
    eprintln!("C-core {c:?}\nwaypost {w:?}");
    for calls in [&c, &w] {
        assert!(
            (65..=135).contains(&count(calls, "dropped")),
            "C-core {c:?} waypost {w:?}"
        );
        assert_eq!(count(calls, "failed"), 0, "C-core {c:?} waypost {w:?}");
    }
}

/// Registers `addr` for `service` in etcd with `metadata`.
async fn register(
    etcd: &mut etcd_client::Client,
    service: &str,
    backend: &Backend,
    metadata: &str,
) {
    let addr = backend.addr();
    etcd.put(
        format!("{service}/{addr}"),
        format!(r#"{{"Op":0,"Addr":"{addr}","Metadata":{metadata}}}"#),
        None,
    )
    .await
    .unwrap();
}

/// From etcd metadata: `weighted` weights 3:1 → calls ~75/25; zones → the
/// lone backend of zone a gets as much as each of zone b's two (locality
/// weights are the sum of their endpoints'), not half; priorities → all
/// calls to priority 0 until it is NOT_SERVING, then priority 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_zones_and_priorities_from_etcd_metadata_reach_both_clients() {
    let etcd_server = EtcdServer::start().await.unwrap();
    let backends = start_backends(3).await.unwrap();
    let mut etcd = waypost_resolver::etcd::connect(&[etcd_server.addr()])
        .await
        .unwrap();
    register(&mut etcd, "weighted", &backends[0], r#"{"weight":3}"#).await;
    register(&mut etcd, "weighted", &backends[1], r#"{"weight":1}"#).await;
    register(
        &mut etcd,
        "zoned",
        &backends[0],
        r#"{"region":"r","zone":"a"}"#,
    )
    .await;
    register(
        &mut etcd,
        "zoned",
        &backends[1],
        r#"{"region":"r","zone":"b"}"#,
    )
    .await;
    register(
        &mut etcd,
        "zoned",
        &backends[2],
        r#"{"region":"r","zone":"b"}"#,
    )
    .await;
    register(&mut etcd, "tiered", &backends[0], r#"{"priority":0}"#).await;
    register(&mut etcd, "tiered", &backends[1], r#"{"priority":1}"#).await;
    let service = |name: &str, extra: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nsource = \"etcd:///{name}\"\nhealth_service = \"\"\n{extra}\n"
        )
    };
    let lb = serve(&format!(
        "etcd = [\"{}\"]\n{}{}{}",
        etcd_server.addr(),
        service("weighted", "policy = \"weighted\""),
        service("zoned", ""),
        service("tiered", ""),
    ))
    .await;

    let mut c_weighted = CCore::start(&lb, "xds:///weighted", "c-core-w").await;
    let mut w_weighted = waypost_client(&lb, "weighted", "waypost-w");
    waypost_ready(&mut w_weighted).await;
    let c = c_weighted.calls(4).await;
    let w = waypost_calls(&mut w_weighted, 400).await;
    eprintln!("weighted: C-core {c:?}\nwaypost {w:?}");
    for calls in [&c, &w] {
        // 75 % ± 10 of 400
        assert!(
            (260..=340).contains(&count(calls, "b0")),
            "C-core {c:?} waypost {w:?}"
        );
        assert_eq!(count(calls, "b0") + count(calls, "b1"), 400);
    }
    drop(c_weighted);

    let mut c_zoned = CCore::start(&lb, "xds:///zoned", "c-core-z").await;
    let mut w_zoned = waypost_client(&lb, "zoned", "waypost-z");
    waypost_ready(&mut w_zoned).await;
    let c = c_zoned.calls(3).await;
    let w = waypost_calls(&mut w_zoned, 300).await;
    eprintln!("zoned: C-core {c:?}\nwaypost {w:?}");
    for calls in [&c, &w] {
        for backend in &backends {
            assert!(
                (70..=130).contains(&count(calls, backend.name())),
                "C-core {c:?} waypost {w:?}"
            );
        }
    }
    drop(c_zoned);

    let mut c_tiered = CCore::start(&lb, "xds:///tiered", "c-core-t").await;
    let mut w_tiered = waypost_client(&lb, "tiered", "waypost-t");
    waypost_ready(&mut w_tiered).await;
    let c = c_tiered.calls(1).await;
    let w = waypost_calls(&mut w_tiered, 100).await;
    assert_eq!(
        (count(&c, "b0"), count(&w, "b0")),
        (100, 100),
        "C-core {c:?} waypost {w:?}"
    );
    backends[0].set_serving(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let c = c_tiered.calls(1).await;
        let w = waypost_calls(&mut w_tiered, 100).await;
        if count(&c, "b1") == 100 && count(&w, "b1") == 100 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "priority 1 not used 5 s after priority 0 failed: C-core {c:?} waypost {w:?}"
        );
    }
}

/// `ring_hash` with `hash_header`: each key sticks to one backend in both
/// clients, and the keys spread over more than one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_services_stick_each_key_to_one_backend() {
    let backends = start_backends(3).await.unwrap();
    let refs: Vec<&Backend> = backends.iter().collect();
    let lb = serve(&static_service(
        "movies",
        &refs,
        "policy = \"ring_hash\"\nhash_header = \"x-user\"",
    ))
    .await;
    let keys: Vec<String> = (0..20).map(|i| format!("user-{i}")).collect();
    let mut c_core = CCore::start(&lb, "xds:///movies", "c-core-ring").await;
    let lines = c_core.run(&format!("keys x-user {}", keys.join(" "))).await;
    let c_placed: BTreeMap<&str, &str> = lines
        .iter()
        .filter_map(|l| l.split_once(' '))
        .inspect(|(k, v)| assert!(!v.starts_with("MIXED"), "C-core: {k} {v}"))
        .collect();
    assert_eq!(c_placed.len(), keys.len(), "{lines:?}");
    let used: std::collections::BTreeSet<&&str> = c_placed.values().collect();
    assert!(
        used.len() >= 2,
        "C-core put every key on one backend: {c_placed:?}"
    );

    let mut waypost = waypost_client(&lb, "movies", "waypost-ring");
    waypost_ready(&mut waypost).await;
    let mut used = std::collections::BTreeSet::new();
    for key in &keys {
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..5 {
            let mut request = tonic::Request::new(MovieId { mid: 1 });
            request.set_timeout(Duration::from_secs(10));
            request
                .metadata_mut()
                .insert("x-user", key.parse().unwrap());
            names.insert(
                waypost
                    .get_movie(request)
                    .await
                    .unwrap()
                    .into_inner()
                    .served_by,
            );
        }
        assert_eq!(names.len(), 1, "waypost: {key} went to {names:?}");
        used.extend(names);
    }
    assert!(used.len() >= 2, "waypost put every key on one backend");
}

/// Replicas on one etcd serve the same versions for the same content, so a
/// client moved from one to the other — the first stopped, the second
/// started on its address — keeps calling without a failure, and NACKs
/// nothing: what it ACKed at the first is what the second serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_move_between_replicas_without_a_nack_or_a_failed_call() {
    let etcd_server = EtcdServer::start().await.unwrap();
    let backends = start_backends(2).await.unwrap();
    let mut etcd = waypost_resolver::etcd::connect(&[etcd_server.addr()])
        .await
        .unwrap();
    register(&mut etcd, "movies", &backends[0], r#"{"zone":"a"}"#).await;
    register(&mut etcd, "movies", &backends[1], r#"{"zone":"b"}"#).await;
    let config = |listen: &str| {
        let text = format!(
            "listen = \"{listen}\"\netcd = [\"{}\"]\n[[service]]\nname = \"movies\"\nsource = \"etcd:///movies\"\nhealth_service = \"\"\n",
            etcd_server.addr()
        );
        Config::parse(&text, "replica.toml").unwrap()
    };
    let first = start(config("127.0.0.1:0"), fast_serve_options())
        .await
        .unwrap();
    let listen = first.listen;
    let mut c_core = CCore::start(&first, "xds:///movies", "c-core-move").await;
    let mut waypost = waypost_client(&first, "movies", "waypost-move");
    waypost_ready(&mut waypost).await;
    for calls in [
        c_core.calls(1).await,
        waypost_calls(&mut waypost, 100).await,
    ] {
        assert_eq!(count(&calls, "b0") + count(&calls, "b1"), 100, "{calls:?}");
        assert!(
            count(&calls, "b0") > 0 && count(&calls, "b1") > 0,
            "{calls:?}"
        );
    }
    let acked_at = |lb: &Running| -> Vec<(String, Option<_>)> {
        let mut acked: Vec<_> = lb
            .registry
            .xds_clients()
            .snapshot()
            .into_iter()
            .map(|r| (r.node_id.clone(), r.acked(ResourceType::Endpoints)))
            .collect();
        acked.sort();
        acked
    };
    let before = acked_at(&first);
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(before.iter().all(|(_, v)| v.is_some()), "{before:?}");

    // The first replica goes; the second comes up on its address.
    first.shutdown().await;
    let second = start(config(&listen.to_string()), fast_serve_options())
        .await
        .unwrap();
    // Calls go on throughout (the data plane does not depend on the ADS
    // stream), and once both clients are back they hold what they held.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = c_core.calls(1).await;
        let w = waypost_calls(&mut waypost, 100).await;
        assert_eq!(
            count(&c, "failed") + count(&w, "failed"),
            0,
            "C-core {c:?} waypost {w:?}"
        );
        if acked_at(&second) == before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "clients not back at the same versions: {:?} vs {before:?}",
            acked_at(&second)
        );
    }
    for record in second.registry.xds_clients().snapshot() {
        assert_eq!(record.last_nack, None, "{record:?}");
    }
}
