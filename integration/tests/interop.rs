//! Real gRPC clients other than ours against `waypost serve`, each running
//! its own `grpclb` policy and calling the backends the balancer lists with
//! their `lb-token`s:
//!
//! - gRPC C-core (through Python's `grpcio`) finds the balancer by DNS SRV
//!   `_grpclb._tcp`;
//! - grpc-go (Debian's `golang-google-grpc-dev`, built here in GOPATH mode)
//!   is handed the balancer's address by its resolver.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use waypost_integration::backend::{Backend, start_backends};
use waypost_integration::dns::DnsServer;
use waypost_integration::grpcio::python_with_grpcio;
mod tls_balancer;
use tls_balancer::{TlsBalanced, tls_balanced};
use waypost_lbserver::config::Config;
use waypost_lbserver::server::{Running, ServeOptions, start};

const SERVICE: &str = "movies.test";

/// Three backends and a `waypost serve` balancing them as [`SERVICE`],
/// probing each one's whole-server health, with ClientStats every 100 ms.
async fn balanced_backends() -> (Vec<Backend>, Running) {
    let backends = start_backends(3).await.unwrap();
    let source: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[[service]]\nname = \"{SERVICE}\"\nsource = \"{}\"\nhealth_service = \"\"\nclient_stats_interval = \"100ms\"\n",
        source.join(",")
    );
    let lb = start(
        Config::parse(&text, "interop.toml").unwrap(),
        ServeOptions::default(),
    )
    .await
    .unwrap();
    (backends, lb)
}

/// DNS for the C-core clients: `movies.test` and `lb.test` → 127.0.0.1,
/// `_grpclb._tcp.movies.test` → `lb.test:<lb_port>`; and a port where
/// nothing listens for the target, so a call can only succeed through the
/// balancer's list, never by falling back to the name's own address.
async fn grpclb_dns(lb_port: u16) -> (DnsServer, u16) {
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dns = DnsServer::start("test.").await.unwrap();
    for name in ["movies.test.", "lb.test."] {
        dns.set_a(name, &[Ipv4Addr::LOCALHOST], 1).await.unwrap();
    }
    dns.set_grpclb_balancer(&format!("{SERVICE}."), "lb.test.", lb_port, 1)
        .await
        .unwrap();
    (dns, unused)
}

/// Starts a client program and reads its lines until `done` (at most
/// 60 s; on time out, fails with what it printed on both outputs).
async fn run_client(mut client: tokio::process::Command) -> (tokio::process::Child, Vec<String>) {
    let mut child = client
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut outcomes = Vec::new();
    let finished = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line == "done" {
                return;
            }
            outcomes.push(line);
        }
    })
    .await;
    if finished.is_err() {
        drop(child.stdin.take());
        let mut stderr = String::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            child.stderr.take().unwrap().read_to_string(&mut stderr),
        )
        .await;
        panic!("the client made its calls within 60 s: {outcomes:?}\n{stderr}");
    }
    (child, outcomes)
}

/// Runs a client program that warms up until it has reached every backend
/// (`warm NAME` lines), then makes `calls` calls and prints `ok NAME` (the
/// backend that served it) or the failure for each, then `done`, and holds
/// its channel open until its standard input ends. Checks that all `calls`
/// succeeded, spread round robin over the backends, that every call carried
/// its backend's own `lb-token`, and that the client's ClientStats reports
/// reached the balancer's totals.
async fn assert_balanced(
    client: tokio::process::Command,
    calls: u64,
    backends: &[Backend],
    lb: &Running,
) {
    let (mut child, outcomes) = run_client(client).await;
    let count = |prefix: &str, name: Option<&str>| {
        outcomes
            .iter()
            .filter(|l| {
                l.split_once(' ')
                    .is_some_and(|(p, n)| p == prefix && name.is_none_or(|name| n == name))
            })
            .count() as u64
    };
    let warm = count("warm", None);
    assert_eq!(
        count("ok", None),
        calls,
        "every call succeeds: {outcomes:?}"
    );

    for backend in backends {
        let served = count("ok", Some(backend.name()));
        assert!(
            (calls / 3 - 1..=calls / 3 + 1).contains(&served),
            "{} served {served} of {calls}: {outcomes:?}",
            backend.name()
        );
        assert_eq!(
            backend.calls(),
            served + count("warm", Some(backend.name())),
            "{} counted the calls the client saw it serve",
            backend.name()
        );
        let token = waypost_lbserver::assign::token(SERVICE, backend.addr());
        let tokens = backend.tokens_seen();
        assert_eq!(
            tokens.get(&token).copied(),
            Some(backend.calls()),
            "{} saw tokens {tokens:?}",
            backend.name()
        );
    }

    // The client's grpclb policy reports every call it made (every 100 ms,
    // as the initial response told it).
    let service = lb.registry.find(SERVICE).unwrap();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let total = warm + calls;
    while load(&service.stats.finished) < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ClientStats reports did not arrive: {} calls finished reported",
            load(&service.stats.finished)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(load(&service.stats.started), total);
    assert_eq!(load(&service.stats.finished), total);
    assert_eq!(load(&service.stats.known_received), total);

    drop(child.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the client exited once its input ended")
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(status.success(), "client failed: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_core_clients_balance_through_waypost_serve() {
    let python = python_with_grpcio().unwrap();
    let (backends, lb) = balanced_backends().await;

    let (dns, unused) = grpclb_dns(lb.listen.port()).await;

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/grpclb_client.py"
    );
    let target = format!("dns://{}/{SERVICE}:{unused}", dns.addr());
    let calls = 30;
    let mut client = tokio::process::Command::new(&python);
    client
        .arg(script)
        .arg(&target)
        .arg(backends.len().to_string())
        .arg(calls.to_string());
    assert_balanced(client, calls, &backends, &lb).await;
}

/// The `go` toolchain and grpc-go's sources in Debian's GOPATH
/// (`golang-go`, `golang-google-grpc-dev`), or a message saying how to get
/// them.
fn go_with_grpc() -> Result<(), String> {
    let grpclb = std::path::Path::new(GOPATH).join("src/google.golang.org/grpc/balancer/grpclb");
    let go = std::process::Command::new("go").arg("version").output();
    match go {
        Ok(output) if output.status.success() && grpclb.is_dir() => Ok(()),
        _ => Err(format!(
            "the grpc-go interop test needs `go` and grpc-go under {GOPATH} \
             (apt-get install golang-go golang-google-grpc-dev; ./scripts/test does)"
        )),
    }
}

const GOPATH: &str = "/usr/share/gocode";

/// Builds the grpc-go client into the test's scratch directory.
async fn build_go_client() -> std::path::PathBuf {
    go_with_grpc().unwrap();
    let scratch = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-go");
    std::fs::create_dir_all(&scratch).unwrap();
    let binary = scratch.join("grpclb_client_go");
    let source = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/grpclb_client_go/main.go"
    );
    let output = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new("go")
            .arg("build")
            .arg("-o")
            .arg(&binary)
            .arg(source)
            .env("GO111MODULE", "off")
            .env("GOPATH", GOPATH)
            .env("GOFLAGS", "")
            .env("GOCACHE", scratch.join("cache"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("go build finished within 300 s")
    .unwrap();
    assert!(
        output.status.success(),
        "go build failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    binary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_go_clients_balance_through_waypost_serve() {
    let binary = build_go_client().await;
    let (backends, lb) = balanced_backends().await;
    let calls = 30;
    let mut client = tokio::process::Command::new(&binary);
    client
        .arg(lb.listen.to_string())
        .arg(SERVICE)
        .arg(backends.len().to_string())
        .arg(calls.to_string());
    assert_balanced(client, calls, &backends, &lb).await;
}

/// gRPC C-core over TLS end to end: its grpclb policy reaches `waypost
/// serve` by TLS, verifying it as the SRV record's target (`lb.test`), and
/// the TLS grpcio backends as the target's host (`movies.test`); the
/// balancer's probes verify the backends too. Calls spread evenly, each
/// carrying its backend's own lb-token (the backends echo what they got).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_core_clients_balance_through_waypost_serve_over_tls() {
    let python = python_with_grpcio().unwrap();
    let TlsBalanced {
        backends,
        lb,
        files,
        ..
    } = tls_balanced(
        SERVICE,
        &["tls-a", "tls-b", "tls-c"],
        "client_stats_interval = \"100ms\"\n",
        ServeOptions::default(),
    )
    .await;

    let (dns, unused) = grpclb_dns(lb.listen.port()).await;

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/grpclb_client.py"
    );
    let calls: usize = 30;
    let mut client = tokio::process::Command::new(&python);
    client
        .arg(script)
        .arg(format!("dns://{}/{SERVICE}:{unused}", dns.addr()))
        .arg("3")
        .arg(calls.to_string())
        .arg("--tls")
        .arg(&files.ca);
    let (mut child, outcomes) = run_client(client).await;
    let ok: Vec<(&str, &str)> = outcomes
        .iter()
        .filter_map(|l| l.strip_prefix("ok "))
        .map(|rest| rest.split_once(' ').unwrap_or((rest, "")))
        .collect();
    assert_eq!(ok.len(), calls, "every call succeeds: {outcomes:?}");
    for (name, addr) in backends.names().iter().zip(backends.addrs()) {
        let served: Vec<_> = ok.iter().filter(|(n, _)| n == name).collect();
        assert!(
            (calls / 3 - 1..=calls / 3 + 1).contains(&served.len()),
            "{name} served {} of {calls}: {outcomes:?}",
            served.len()
        );
        let token = waypost_lbserver::assign::token(SERVICE, addr);
        assert!(
            served.iter().all(|(_, t)| *t == token),
            "{name} saw other tokens than its own {token}: {outcomes:?}"
        );
    }
    // The client's grpclb policy reports its calls over the TLS stream.
    let service = lb.registry.find(SERVICE).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while service.stats.finished.load(Ordering::Relaxed) < calls as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ClientStats reports did not arrive over TLS"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(child.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the client exited once its input ended")
        .unwrap();
    assert!(status.success());
}
