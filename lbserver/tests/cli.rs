//! The `waypost` binary's `resolve` and `register` commands, run as real
//! processes against the harness's DNS server and a real etcd.

mod support;

use std::net::Ipv4Addr;

use serde_json::{Value, json};
use support::*;
use tokio::process::Command;
use waypost_integration::dns::{DnsServer, SrvTarget};
use waypost_integration::etcd::EtcdServer;

#[tokio::test]
async fn resolve_prints_one_update_and_exits() {
    let (lines, code) = run(&["resolve", "ipv4:127.0.0.1:1,127.0.0.2"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        lines,
        vec![json!({
            "endpoints": [{"addr":"127.0.0.1:1","metadata":null},{"addr":"127.0.0.2:443","metadata":null}],
            "service_config": null,
            "balancer_addresses": [],
        })]
    );
}

#[tokio::test]
async fn resolve_reports_errors_as_json_and_fails() {
    // Malformed targets are usage errors, as for the other subcommands.
    for target in ["dns:///orders:", "unix://host/x.sock", "ipv4:nope"] {
        let (lines, code) = run(&["resolve", target]).await;
        assert_eq!(code, 64, "{target}");
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0]["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{target}: {lines:?}"
        );
    }
    let (_, code) = run(&["resolve"]).await;
    assert_eq!(code, 64, "a missing argument is a usage error");
}

#[tokio::test]
async fn resolve_dns_prints_endpoints_config_and_balancers() {
    let dns = DnsServer::start("test.").await.unwrap();
    dns.set_a("orders.test.", &[Ipv4Addr::new(127, 0, 0, 1)], 60)
        .await
        .unwrap();
    dns.set_a("lb.test.", &[Ipv4Addr::new(127, 0, 0, 2)], 60)
        .await
        .unwrap();
    dns.set_srv(
        "_grpclb._tcp.orders.test.",
        &[SrvTarget {
            priority: 0,
            weight: 0,
            port: 7000,
            target: "lb.test.".into(),
        }],
        60,
    )
    .await
    .unwrap();
    dns.set_txt(
        "_grpc_config.orders.test.",
        r#"grpc_config=[{"serviceConfig":{"loadBalancingPolicy":"round_robin"}}]"#,
        60,
    )
    .await
    .unwrap();
    let target = format!("dns://{}/orders.test:50051", dns.addr());
    let (lines, code) = run(&["resolve", &target]).await;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(
        lines,
        vec![json!({
            "endpoints": [{"addr":"127.0.0.1:50051","metadata":null}],
            "service_config": {"loadBalancingPolicy":"round_robin"},
            "balancer_addresses": ["127.0.0.2:7000"],
        })]
    );
}

#[tokio::test]
async fn resolve_watch_follows_etcd_and_register_comes_and_goes() {
    let etcd = EtcdServer::start().await.unwrap();
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();

    let (mut watcher, mut updates) = spawn(&[
        "resolve",
        "etcd:///movies",
        "--etcd",
        &etcd.addr(),
        "--watch",
    ]);
    assert_eq!(next_json(&mut updates).await["endpoints"], json!([]));

    let (mut registrant, mut out) = spawn(&[
        "register",
        "--etcd",
        &etcd.addr(),
        "--service",
        "movies",
        "--addr",
        "127.0.0.1:7001",
        "--ttl",
        "5",
        "--metadata",
        r#"{"zone":"a"}"#,
    ]);
    let registered = next_json(&mut out).await;
    assert_eq!(registered["registered"], "movies/127.0.0.1:7001");
    let got = client.get("movies/127.0.0.1:7001", None).await.unwrap();
    let value: Value = serde_json::from_slice(got.kvs()[0].value()).unwrap();
    assert_eq!(
        value,
        json!({"Op":0,"Addr":"127.0.0.1:7001","Metadata":{"zone":"a"}})
    );
    assert_eq!(
        next_json(&mut updates).await["endpoints"],
        json!([{"addr":"127.0.0.1:7001","metadata":{"zone":"a"}}])
    );

    assert_eq!(terminate(&mut registrant).await, 0);
    assert_eq!(
        next_json(&mut out).await["deregistered"],
        "movies/127.0.0.1:7001"
    );
    assert_eq!(next_json(&mut updates).await["endpoints"], json!([]));
    assert!(
        client
            .get("movies/127.0.0.1:7001", None)
            .await
            .unwrap()
            .kvs()
            .is_empty()
    );

    assert_eq!(terminate(&mut watcher).await, 0);
}

#[tokio::test]
async fn register_rejects_bad_input() {
    let (lines, code) = run(&[
        "register",
        "--etcd",
        "127.0.0.1:1",
        "--service",
        "s",
        "--addr",
        "127.0.0.1:1",
        "--metadata",
        "{",
    ])
    .await;
    assert_eq!(code, 64);
    assert!(lines[0]["error"].as_str().unwrap().contains("--metadata"));
}

#[tokio::test]
async fn serve_status_and_drain_work_together_and_sigterm_stops_serve() {
    let (mut server, mut out) = spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--service",
        "movies=127.0.0.1:9,127.0.0.1:10",
    ]);
    let started = next_json(&mut out).await;
    let admin = started["admin"].as_str().unwrap().to_owned();
    assert_eq!(started["services"], "movies");

    let (mut status, mut table) = spawn(&["status", "--admin", &admin]);
    let header = table.next_line().await.unwrap().unwrap();
    assert!(header.starts_with("SERVICE"), "{header}");
    let first = table.next_line().await.unwrap().unwrap();
    let second = table.next_line().await.unwrap().unwrap();
    assert!(
        first.starts_with("movies") && first.contains("127.0.0.1:9 "),
        "{first}"
    );
    assert!(
        second.starts_with("movies") && second.contains("127.0.0.1:10 "),
        "{second}"
    );
    assert_eq!(status.wait().await.unwrap().code(), Some(0));

    let (lines, code) = run(&[
        "drain",
        "--admin",
        &admin,
        "--service",
        "movies",
        "--backend",
        "127.0.0.1:9",
    ])
    .await;
    assert_eq!(code, 0);
    assert_eq!(lines[0]["draining"], true);
    let (_, code) = run(&[
        "drain",
        "--admin",
        &admin,
        "--service",
        "movies",
        "--backend",
        "127.0.0.1:99",
    ])
    .await;
    assert_eq!(code, 1, "an unknown backend is an error");

    assert_eq!(terminate(&mut server).await, 0);
    assert_eq!(next_json(&mut out).await["stopped"], true);
}

#[tokio::test]
async fn resolve_prints_endpoints_and_a_txt_error_together_every_time() {
    let dns = DnsServer::start("test.").await.unwrap();
    dns.set_a("orders.test.", &[Ipv4Addr::new(127, 0, 0, 1)], 60)
        .await
        .unwrap();
    dns.set_txt("_grpc_config.orders.test.", "grpc_config=[{", 60)
        .await
        .unwrap();
    let target = format!("dns://{}/orders.test:50051", dns.addr());
    for _ in 0..10 {
        let (lines, code) = run(&["resolve", &target]).await;
        assert_eq!(code, 0, "endpoints were resolved: {lines:?}");
        assert_eq!(lines.len(), 1);
        assert_eq!(
            lines[0]["endpoints"],
            json!([{"addr":"127.0.0.1:50051","metadata":null}])
        );
        assert!(
            lines[0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("service config")),
            "{lines:?}"
        );
    }
}

#[tokio::test]
async fn resolve_fails_when_standard_output_cannot_be_written() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    // `output()` would capture standard output; spawn with it on the file.
    let output = Command::new(WAYPOST)
        .args(["resolve", "ipv4:127.0.0.1:1"])
        .stdout(full)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot write"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn resolve_errors_are_plain_and_cut_short() {
    let dns = DnsServer::start("test.").await.unwrap();
    let target = format!("dns://{}/missing.test:1", dns.addr());
    let (lines, code) = run(&["resolve", &target, "--timeout", "10"]).await;
    assert_eq!(code, 1);
    let error = lines[0]["error"].as_str().unwrap();
    assert!(
        !error.contains("Query {") && !error.contains("Name("),
        "{error}"
    );

    let long = format!("dns:///{}:1:2", "a".repeat(100_000));
    let (lines, code) = run(&["resolve", &long]).await;
    assert_eq!(code, 64);
    let error = lines[0]["error"].as_str().unwrap();
    assert!(error.len() < 400, "{} bytes", error.len());
}

#[tokio::test]
async fn register_rejects_a_ttl_or_address_out_of_range() {
    for args in [
        ["--ttl", "9223372036854775808", "--addr", "127.0.0.1:1"],
        ["--ttl", "10", "--addr", "garbage"],
    ] {
        let mut all = vec!["register", "--etcd", "127.0.0.1:1", "--service", "s"];
        all.extend(args);
        let (lines, code) = run(&all).await;
        assert_eq!(code, 64, "{args:?}: {lines:?}");
    }
}

#[tokio::test]
async fn resolve_xds_prints_the_clusters_endpoints_and_policy() {
    use waypost_integration::ads::AdsServer;
    use waypost_integration::ads::build::{
        CLUSTER, ENDPOINTS, LISTENER, api_listener, assignment, eds_cluster, response,
    };
    let server = AdsServer::start().await.unwrap();
    server.set(response(
        LISTENER,
        "1",
        &[api_listener("orders", "orders-cluster")],
    ));
    server.set(response(CLUSTER, "1", &[eds_cluster("orders-cluster")]));
    let addrs: Vec<std::net::SocketAddr> = vec![
        "127.0.0.1:7001".parse().unwrap(),
        "127.0.0.2:7002".parse().unwrap(),
    ];
    server.set(response(
        ENDPOINTS,
        "1",
        &[assignment("orders-cluster", &addrs)],
    ));
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        Command::new(WAYPOST)
            .args(["resolve", "xds:///orders"])
            .env("GRPC_XDS_BOOTSTRAP_CONFIG", server.bootstrap_json("cli"))
            .env_remove("GRPC_XDS_BOOTSTRAP")
            .output(),
    )
    .await
    .expect("finished within 30 s")
    .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8(output.stdout).unwrap().trim()).unwrap();
    let endpoints: Vec<&str> = line["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["addr"].as_str().unwrap())
        .collect();
    assert_eq!(endpoints, ["127.0.0.1:7001", "127.0.0.2:7002"]);
    let top = &line["service_config"]["loadBalancingConfig"][0]["xds_cluster_impl_experimental"];
    assert_eq!(top["cluster"], "orders-cluster");
    assert_eq!(top["childPolicy"][0], json!({"round_robin": {}}));
    // Without a bootstrap: a clear error, not a hang.
    let output = Command::new(WAYPOST)
        .args(["resolve", "xds:///orders"])
        .env_remove("GRPC_XDS_BOOTSTRAP_CONFIG")
        .env_remove("GRPC_XDS_BOOTSTRAP")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stdout).contains("GRPC_XDS_BOOTSTRAP"));
}

#[test]
fn version_names_the_commit_and_completions_cover_the_subcommands() {
    let output = std::process::Command::new(support::WAYPOST)
        .arg("--version")
        .output()
        .unwrap();
    assert!(output.status.success());
    let version = String::from_utf8(output.stdout).unwrap();
    let commit = version
        .trim()
        .strip_prefix(concat!("waypost ", env!("CARGO_PKG_VERSION"), " (commit "))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{version}"));
    let hex = commit.strip_suffix("-modified").unwrap_or(commit);
    assert!(
        commit == "unknown" || (hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_hexdigit())),
        "{version}"
    );

    let output = std::process::Command::new(support::WAYPOST)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let script = String::from_utf8(output.stdout).unwrap();
    for word in [
        "_waypost",
        "serve",
        "--check-config",
        "drain",
        "status",
        "resolve",
    ] {
        assert!(script.contains(word), "no {word} in the bash completions");
    }
}

#[tokio::test]
async fn check_config_validates_a_file_without_serving() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "listen = \"127.0.0.1:1\"\n[[service]]\nname = \"movies\"\nsource = \"127.0.0.1:9,127.0.0.1:10\"\npolicy = \"ring_hash\"\nhash_header = \"x-user\"\n",
    )
    .unwrap();
    let (lines, code) = run(&["serve", "--check-config", good.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines[0]["ok"], true);
    assert_eq!(lines[0]["services"], 1);

    // A wrong value: the line and the field.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"127.0.0.1:1\"\n[[service]]\nname = \"movies\"\nsource = \"127.0.0.1:9\"\npolicy = \"fastest\"\n",
    )
    .unwrap();
    let (lines, code) = run(&["serve", "--check-config", bad.to_str().unwrap()]).await;
    assert_eq!(code, 64);
    assert_eq!(lines[0]["ok"], false);
    let error = lines[0]["error"].as_str().unwrap();
    assert!(error.contains("bad.toml:5: service[0].policy"), "{error}");

    // A file it names that does not load: caught too, without binding.
    let tls = dir.path().join("tls.toml");
    std::fs::write(
        &tls,
        format!(
            "listen = \"127.0.0.1:1\"\n[tls]\ncert_file = \"{0}/missing.pem\"\nkey_file = \"{0}/missing.key\"\n[[service]]\nname = \"movies\"\nsource = \"127.0.0.1:9\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let (lines, code) = run(&["serve", "--check-config", tls.to_str().unwrap()]).await;
    assert_eq!(code, 64);
    assert!(
        lines[0]["error"].as_str().unwrap().contains("missing.pem"),
        "{lines:?}"
    );
}
