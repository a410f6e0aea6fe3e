//! A real `etcd` server (Debian's `etcd-server`) on free loopback ports with
//! a temporary data directory.
//!
//! The process is started under a tiny `sh` watchdog that holds a pipe from
//! the test process: when the test process exits for any reason (including
//! a panic or SIGKILL) the pipe closes and the watchdog stops etcd, so no
//! etcd outlives its test. [`EtcdServer::stop`] and [`EtcdServer::restart`]
//! stop and start it again on the same ports and data directory, for fault
//! tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), waypost_integration::HarnessError> {
//! use waypost_integration::etcd::EtcdServer;
//!
//! let mut etcd = EtcdServer::start().await?;
//! println!("etcd at {}", etcd.endpoint());
//! etcd.stop();
//! etcd.restart().await?; // same data, same port
//! # Ok(()) }
//! ```

use std::net::{Ipv4Addr, TcpListener as StdTcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::HarnessError;

/// How long etcd may take to report healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The watchdog: runs etcd in the background, stops it when our stdin closes,
/// and exits when etcd exits.
const WATCHDOG: &str = r#"exec 3<&0
"$0" "$@" </dev/null &
pid=$!
(read -r _ <&3; kill "$pid" 2>/dev/null) &
wait "$pid""#;

/// A running etcd; stopped when dropped.
#[derive(Debug)]
pub struct EtcdServer {
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts etcd on free ports with a fresh data directory and waits until
    /// it reports healthy.
    pub async fn start() -> Result<EtcdServer, HarnessError> {
        let binary = etcd_binary()?;
        let mut last = None;
        // A port picked free can be taken before etcd binds it; try again.
        for _ in 0..5 {
            let dir = tempfile::Builder::new().prefix("waypost-etcd-").tempdir()?;
            let mut server = EtcdServer {
                dir,
                client_port: free_port()?,
                peer_port: free_port()?,
                child: None,
            };
            match server.spawn(&binary).await {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("the loop ran at least once"))
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The client address, e.g. `127.0.0.1:40123`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The temporary directory holding etcd's data and log; removed when
    /// the server is dropped.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Whether the etcd process is running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops etcd (SIGTERM) and waits for it to exit. Data is kept.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Closing the watchdog's stdin makes it kill etcd and exit.
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data directory.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        let binary = etcd_binary()?;
        self.spawn(&binary).await
    }

    /// The end of etcd's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let start = log.len().saturating_sub(2000);
        let start = (start..=log.len())
            .find(|i| log.is_char_boundary(*i))
            .unwrap_or(log.len());
        log[start..].to_owned()
    }

    async fn spawn(&mut self, binary: &PathBuf) -> Result<(), HarnessError> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg(binary)
            .args(["--name", "waypost-test"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .arg("--initial-cluster")
            .arg(format!("waypost-test={peer}"))
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if !self.is_running() {
                self.stop();
                return Err(HarnessError::Etcd(format!(
                    "etcd exited during start-up; log tail:\n{}",
                    self.log_tail()
                )));
            }
            if health_ok(self.client_port).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(HarnessError::Etcd(format!(
                    "etcd not healthy after {START_TIMEOUT:?}; log tail:\n{}",
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Finds the etcd binary: `$WAYPOST_ETCD`, then `etcd` on `PATH`.
fn etcd_binary() -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os("WAYPOST_ETCD") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            HarnessError::Etcd(
                "no `etcd` binary on PATH: install Debian's etcd-server (`apt-get install etcd-server`) \
                 or set WAYPOST_ETCD"
                    .into(),
            )
        })
}

/// A port that was free a moment ago.
pub(crate) fn free_port() -> Result<u16, HarnessError> {
    Ok(StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Whether `GET /health` on the client port answers healthy.
async fn health_ok(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.ok()?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut body = Vec::new();
        stream.take(64 * 1024).read_to_end(&mut body).await.ok()?;
        let text = String::from_utf8_lossy(&body);
        Some(text.starts_with("HTTP/1.1 200") && text.contains("\"health\":\"true\""))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
