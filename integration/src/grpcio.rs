//! gRPC C-core peers through Python's `grpcio`: the interpreter that has
//! it, and grpcio backends serving `movies.v1.MoviesService/GetMovie`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), waypost_integration::HarnessError> {
//! use waypost_integration::grpcio::GrpcioBackends;
//!
//! // Three grpcio servers that recycle every connection after 300 ms.
//! let backends = GrpcioBackends::start(
//!     &["g0", "g1", "g2"],
//!     &[("grpc.max_connection_age_ms", 300)],
//! )
//! .await?;
//! println!("{:?}", backends.addrs());
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::HarnessError;

/// A Python with `grpcio` importable (`$WAYPOST_PYTHON`, which
/// `./scripts/test` sets, or `python3`), or a message saying how to get it.
pub fn python_with_grpcio() -> Result<String, HarnessError> {
    let python = std::env::var("WAYPOST_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = std::process::Command::new(&python)
        .args(["-c", "import grpc; print(grpc.__version__)"])
        .output()
        .map_err(|e| HarnessError::Peer(format!("{python}: {e}")))?;
    if output.status.success() {
        Ok(python)
    } else {
        Err(HarnessError::Peer(format!(
            "{python} cannot import grpc (install it with `python3 -m pip install grpcio`; ./scripts/test does): {}",
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// grpcio servers in one Python process, one per name, each answering
/// `GetMovie` with its name in `served_by`. Stopped when dropped.
#[derive(Debug)]
pub struct GrpcioBackends {
    servers: Vec<(String, SocketAddr)>,
    _process: Child,
    /// Files the servers read (TLS material), removed with them.
    _files: Option<tempfile::TempDir>,
}

impl GrpcioBackends {
    /// Starts one server per name, each given `options` as grpcio channel
    /// arguments (e.g. `("grpc.max_connection_age_ms", 300)`). Returns once
    /// every one listens.
    pub async fn start(names: &[&str], options: &[(&str, i64)]) -> Result<Self, HarnessError> {
        Self::spawn(names.iter().map(|name| name.to_string()), options).await
    }

    /// Starts one server per `(name, address)` on that address (any
    /// `127.x.y.z`; port 0 picks one), e.g. several loopback addresses on
    /// one port for a DNS name's A records.
    pub async fn start_at(
        servers: &[(&str, SocketAddr)],
        options: &[(&str, i64)],
    ) -> Result<Self, HarnessError> {
        Self::spawn(
            servers.iter().map(|(name, addr)| format!("{name}@{addr}")),
            options,
        )
        .await
    }

    /// Servers speaking TLS with `identity` (`grpc.ssl_server_credentials`);
    /// with `client_ca`, requiring a client certificate signed by it.
    pub async fn start_tls(
        names: &[&str],
        identity: &crate::pki::Pem,
        client_ca: Option<&str>,
    ) -> Result<Self, HarnessError> {
        let dir = tempfile::tempdir()?;
        let (cert, key, ca) = (
            dir.path().join("server.pem"),
            dir.path().join("server.key"),
            dir.path().join("ca.pem"),
        );
        std::fs::write(&cert, &identity.cert_pem)?;
        std::fs::write(&key, &identity.key_pem)?;
        let mut extra = vec![
            "--tls".to_owned(),
            cert.display().to_string(),
            key.display().to_string(),
        ];
        if let Some(pem) = client_ca {
            std::fs::write(&ca, pem)?;
            extra.extend(["--client-ca".to_owned(), ca.display().to_string()]);
        }
        let mut backends =
            Self::spawn(names.iter().map(|name| name.to_string()).chain(extra), &[]).await?;
        backends._files = Some(dir);
        Ok(backends)
    }

    async fn spawn(
        specs: impl Iterator<Item = String>,
        options: &[(&str, i64)],
    ) -> Result<Self, HarnessError> {
        let python = python_with_grpcio()?;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/py/movies_backend.py");
        let mut command = Command::new(python);
        command.arg(script).args(specs);
        for (key, value) in options {
            command.arg("--option").arg(format!("{key}={value}"));
        }
        let mut process = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = process.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let mut servers = Vec::new();
        let started = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if line == "ready" {
                    return Ok(true);
                }
                let mut words = line.split(' ');
                if let (Some("listening"), Some(name), Some(addr)) =
                    (words.next(), words.next(), words.next())
                {
                    let addr: SocketAddr = addr.parse().map_err(|_| {
                        HarnessError::Peer(format!("grpcio backend printed {line:?}"))
                    })?;
                    servers.push((name.to_owned(), addr));
                }
            }
            Ok::<_, HarnessError>(false)
        })
        .await;
        match started {
            Ok(Ok(true)) => Ok(GrpcioBackends {
                servers,
                _process: process,
                _files: None,
            }),
            Ok(Ok(false)) => Err(HarnessError::Peer(
                "the grpcio backends exited before they were ready".into(),
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(HarnessError::Peer(
                "the grpcio backends were not ready within 30 s".into(),
            )),
        }
    }

    /// The servers' addresses, in the order of their names.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(|(_, addr)| *addr).collect()
    }

    /// The servers' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.servers.iter().map(|(name, _)| name.as_str()).collect()
    }
}
