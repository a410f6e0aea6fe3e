//! Real gRPC clients other than ours against `waypost serve`: gRPC C-core
//! (through Python's `grpcio`) finds the balancer by DNS SRV
//! `_grpclb._tcp`, runs its own `grpclb` policy against it, and calls the
//! backends it lists with their `lb-token`s.

use std::net::Ipv4Addr;
use std::time::Duration;

use waypost_integration::backend::start_backends;
use waypost_integration::dns::{DnsServer, SrvTarget};
use waypost_lbserver::config::Config;
use waypost_lbserver::server::{ServeOptions, start};

const SERVICE: &str = "movies.test";

/// A Python with `grpcio` importable (`$WAYPOST_PYTHON`, which
/// `./scripts/test` sets, or `python3`), or a message saying how to get it.
fn python_with_grpcio() -> Result<String, String> {
    let python = std::env::var("WAYPOST_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = std::process::Command::new(&python)
        .args(["-c", "import grpc; print(grpc.__version__)"])
        .output()
        .map_err(|e| format!("{python}: {e}"))?;
    if output.status.success() {
        Ok(python)
    } else {
        Err(format!(
            "{python} cannot import grpc (install it with `python3 -m pip install grpcio`; ./scripts/test does): {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_core_clients_balance_through_waypost_serve() {
    let python = python_with_grpcio().unwrap();
    let backends = start_backends(3).await.unwrap();
    let source: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[[service]]\nname = \"{SERVICE}\"\nsource = \"{}\"\nhealth_service = \"\"\n",
        source.join(",")
    );
    let lb = start(
        Config::parse(&text, "interop.toml").unwrap(),
        ServeOptions::default(),
    )
    .await
    .unwrap();

    // movies.test → 127.0.0.1 on a port where nothing listens, so a call
    // can only succeed through the balancer's list, never by falling back
    // to the name's own address.
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dns = DnsServer::start("test.").await.unwrap();
    dns.set_a("movies.test.", &[Ipv4Addr::LOCALHOST], 1)
        .await
        .unwrap();
    dns.set_a("lb.test.", &[Ipv4Addr::LOCALHOST], 1)
        .await
        .unwrap();
    dns.set_srv(
        &format!("_grpclb._tcp.{SERVICE}."),
        &[SrvTarget {
            priority: 0,
            weight: 0,
            port: lb.listen.port(),
            target: "lb.test.".into(),
        }],
        1,
    )
    .await
    .unwrap();

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/grpclb_client.py"
    );
    let target = format!("dns://{}/{SERVICE}:{unused}", dns.addr());
    let calls = 30;
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&python)
            .arg(script)
            .arg(&target)
            .arg(calls.to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the grpcio client finished within 60 s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "client failed: {stdout}\n{stderr}");
    let ok = stdout.lines().filter(|l| *l == "ok").count();
    assert_eq!(ok, calls, "every call succeeds: {stdout}\n{stderr}");

    // Round robin over the balancer's list, each call carrying the
    // backend's own lb-token.
    for backend in &backends {
        let served = backend.calls();
        assert!(
            (5..=15).contains(&served),
            "{} served {served} of {calls}",
            backend.name()
        );
        let token = waypost_lbserver::assign::token(SERVICE, backend.addr());
        let tokens = backend.tokens_seen();
        assert_eq!(
            tokens.get(&token).copied(),
            Some(served),
            "{} saw tokens {tokens:?}",
            backend.name()
        );
    }
}
