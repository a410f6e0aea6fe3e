//! `waypost serve` as a process: configuration errors at start, signals,
//! the admin token from the CLI, and running out of file descriptors.

mod support;

use std::time::Duration;

use support::*;
use tokio::process::Command;

async fn serve_exit_code(args: &[&str]) -> (Option<i32>, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(WAYPOST).arg("serve").args(args).output(),
    )
    .await
    .expect("serve exited within 30 s")
    .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn sources_that_can_never_resolve_are_config_errors() {
    for service in [
        "movies=127.0.0.1:5006l",
        "movies=!!not a target!!",
        "movies=etcd:///a",
        "=127.0.0.1:1",
    ] {
        let (code, stderr) =
            serve_exit_code(&["--listen", "127.0.0.1:0", "--service", service]).await;
        assert_eq!(code, Some(64), "{service}: {stderr}");
        assert!(stderr.contains("--service[0]"), "{service}: {stderr}");
    }
    // The shape is a target, but its resolver refuses it when built.
    let (code, stderr) = serve_exit_code(&[
        "--listen",
        "127.0.0.1:0",
        "--service",
        "movies=unix://host/sock",
    ])
    .await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("movies"), "{stderr}");

    // In a file: the error names the file, the line and the field.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let two = "listen = \"127.0.0.1:0\"\n[[service]]\nname = \"a\"\nsource = \"127.0.0.1:1\"\n";
    for (text, at) in [
        (
            format!("{two}drop_fraction = 2.0\n"),
            "5: service[0].drop_fraction",
        ),
        (
            format!("{two}\n[[service]]\nname = \"b\"\nsource = \"etcd:///b\"\n"),
            "8: service[1].source",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let (code, stderr) = serve_exit_code(&["--config", path.to_str().unwrap()]).await;
        assert_eq!(code, Some(64), "{stderr}");
        assert!(
            stderr.contains(&format!("{}:{at}:", path.display())),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn sighup_shuts_down_gracefully() {
    let (mut server, mut out) = spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--service",
        "movies=127.0.0.1:9",
    ]);
    next_json(&mut out).await;
    let pid = server.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(20), server.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(next_json(&mut out).await["stopped"], true);
}

#[tokio::test]
async fn drain_sends_the_token_from_a_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let token = token.to_str().unwrap();
    let (_server, mut out) = spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--service",
        "movies=127.0.0.1:9,127.0.0.1:10",
        "--admin-token-file",
        token,
    ]);
    let admin = next_json(&mut out).await["admin"]
        .as_str()
        .unwrap()
        .to_owned();
    let drain = [
        "drain",
        "--admin",
        &admin,
        "--service",
        "movies",
        "--backend",
        "127.0.0.1:9",
    ];
    let (_, code) = run(&drain).await;
    assert_eq!(code, 1, "refused without the token");
    let mut with_file = drain.to_vec();
    with_file.extend(["--admin-token-file", token]);
    let (lines, code) = run(&with_file).await;
    assert_eq!((code, &lines[0]["draining"]), (0, &serde_json::json!(true)));

    let output = Command::new(WAYPOST)
        .args(drain)
        .arg("--undo")
        .env("WAYPOST_ADMIN_TOKEN", "t0ken")
        .output()
        .await
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which ends with the last ')').
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_server_idles_and_recovers() {
    let mut prlimit = Command::new("prlimit");
    prlimit.args([
        "--nofile=128",
        "--",
        WAYPOST,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--service",
        "movies=127.0.0.1:9",
    ]);
    let (server, mut out) = spawn_command(prlimit);
    let started = next_json(&mut out).await;
    let listen: std::net::SocketAddr = started["listening"].as_str().unwrap().parse().unwrap();
    let admin: std::net::SocketAddr = started["admin"].as_str().unwrap().parse().unwrap();
    let pid = server.id().unwrap();

    // 200 connections: more than the 128 descriptors the process may open.
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(tokio::net::TcpStream::connect(listen).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks(pid);
    let window = Duration::from_secs(2);
    tokio::time::sleep(window).await;
    let used = cpu_ticks(pid) - before;
    // Clock ticks are 1/100 s on Linux: < 30 % of one core over 2 s.
    assert!(
        used < 60,
        "{used} ticks of CPU in {window:?} while out of descriptors"
    );

    drop(clients);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let answer =
            tokio::time::timeout(Duration::from_secs(2), http(admin, "GET", "/healthz")).await;
        if matches!(&answer, Ok(text) if text.ends_with("ok\n")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/healthz never answered: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
