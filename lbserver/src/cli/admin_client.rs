//! `waypost drain` and `waypost status`: clients of the admin endpoint.

use std::time::Duration;

use std::path::PathBuf;

use super::{EXIT_FAILURE, EXIT_USAGE};

/// Arguments of `waypost drain`.
#[derive(Debug, Clone, clap::Args)]
pub struct DrainArgs {
    /// The balancer's admin address.
    #[arg(long, value_name = "ADDR")]
    pub admin: String,
    /// The service.
    #[arg(long)]
    pub service: String,
    /// The backend to drain (`ip:port`).
    #[arg(long, value_name = "ADDR")]
    pub backend: String,
    /// Put it back in the lists.
    #[arg(long)]
    pub undo: bool,
    /// A file holding the admin token (else `$WAYPOST_ADMIN_TOKEN`, if set).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// TLS to the admin port.
    #[command(flatten)]
    pub tls: AdminTlsArgs,
}

/// How `waypost drain` and `waypost status` speak TLS to a balancer with
/// `[tls]`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AdminTlsArgs {
    /// Speak TLS to the admin port, trusting this CA (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Present this client certificate (PEM, with --tls-key); with the
    /// balancer's `client_ca_file` it stands in for the admin token.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The name the balancer's certificate is verified for (default: the
    /// host of --admin).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}

impl AdminTlsArgs {
    /// A dialer for the admin port at `addr`, when TLS was asked for.
    fn dialer(
        &self,
        addr: std::net::SocketAddr,
    ) -> Result<Option<waypost_balancer::tls::TlsDialer>, String> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let identity = self.tls_cert.clone().zip(self.tls_key.clone());
        let config = waypost_balancer::ClientTlsConfig::from_files(ca, identity)
            .alpn_protocols(&["http/1.1"]);
        let name = self
            .tls_server_name
            .clone()
            .unwrap_or_else(|| addr.ip().to_string());
        waypost_balancer::tls::TlsDialer::new(&config, &name)
            .map(Some)
            .map_err(|e| format!("TLS: {e}"))
    }
}

/// Arguments of `waypost status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The balancer's admin address.
    #[arg(long, value_name = "ADDR")]
    pub admin: String,
    /// A file holding the admin token, for a balancer with
    /// `admin_auth_reads` (else `$WAYPOST_ADMIN_TOKEN`, if set).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// TLS to the admin port.
    #[command(flatten)]
    pub tls: AdminTlsArgs,
}

/// The token from `file`, else from `$WAYPOST_ADMIN_TOKEN`, else none.
fn admin_token(file: Option<&std::path::Path>) -> Result<Option<String>, String> {
    match file {
        Some(path) => crate::admin::read_token(path)
            .map(Some)
            .map_err(|e| format!("--admin-token-file {}: {e}", path.display())),
        None => match std::env::var("WAYPOST_ADMIN_TOKEN") {
            Ok(token) if !token.trim().is_empty() => crate::admin::parse_token(&token)
                .map(Some)
                .map_err(|e| format!("WAYPOST_ADMIN_TOKEN: {e}")),
            _ => Ok(None),
        },
    }
}

/// The most of an answer's body read (a status of many services is large,
/// but not this large).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// One HTTP/1.1 request through hyper's client; returns (status code,
/// body). `path_and_query` must already be percent-encoded (see
/// [`drain_path`]); the address must be a socket address.
async fn request(
    admin: &str,
    tls: &AdminTlsArgs,
    method: http::Method,
    path_and_query: &str,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    use http_body_util::BodyExt as _;
    let addr: std::net::SocketAddr = admin
        .parse()
        .map_err(|e| format!("--admin {}: {e}", crate::config::quote(admin)))?;
    let dialer = tls.dialer(addr)?;
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(http::header::HOST, addr.to_string());
    if let Some(token) = token {
        builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = builder
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot reach {addr}: {e}"))?;
        let stream: waypost_balancer::BoxedIo = match &dialer {
            Some(dialer) => Box::pin(
                dialer
                    .connect(tcp)
                    .await
                    .map_err(|e| format!("{addr}: {e}"))?,
            ),
            None => Box::pin(tcp),
        };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
        let _connection = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(connection));
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let code = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("{addr}: reading the answer: {e}"))?
            .to_bytes();
        Ok((code, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("{admin} did not answer in 10 s"))?
}

/// The drain request's path and query, percent-encoded (a service name
/// with `&`, spaces or line breaks stays one parameter).
fn drain_path(service: &str, backend: &str, undo: bool) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("service", service);
    query.append_pair("backend", backend);
    if undo {
        query.append_pair("undo", "true");
    }
    format!("/drain?{}", query.finish())
}

/// Runs `waypost drain`.
pub async fn drain(args: DrainArgs, out: &mut impl std::io::Write) -> u8 {
    let token = match admin_token(args.admin_token_file.as_deref()) {
        Ok(token) => token,
        Err(e) => {
            eprintln!("waypost drain: {e}");
            return EXIT_USAGE;
        }
    };
    let path = drain_path(&args.service, &args.backend, args.undo);
    match request(
        &args.admin,
        &args.tls,
        http::Method::POST,
        &path,
        token.as_deref(),
    )
    .await
    {
        Ok((200, body)) => {
            let _ = write!(out, "{body}");
            0
        }
        Ok((code, body)) => {
            eprintln!("waypost drain: HTTP {code}: {}", printable(body.trim()));
            EXIT_FAILURE
        }
        Err(e) => {
            eprintln!("waypost drain: {e}");
            EXIT_FAILURE
        }
    }
}

/// Runs `waypost status`: the admin `/status` as a table.
pub async fn status(args: StatusArgs, out: &mut impl std::io::Write) -> u8 {
    let token = match admin_token(args.admin_token_file.as_deref()) {
        Ok(token) => token,
        Err(e) => {
            eprintln!("waypost status: {e}");
            return EXIT_USAGE;
        }
    };
    let body = match request(
        &args.admin,
        &args.tls,
        http::Method::GET,
        "/status",
        token.as_deref(),
    )
    .await
    {
        Ok((200, body)) => body,
        Ok((code, body)) => {
            eprintln!("waypost status: HTTP {code}: {}", printable(body.trim()));
            return EXIT_FAILURE;
        }
        Err(e) => {
            eprintln!("waypost status: {e}");
            return EXIT_FAILURE;
        }
    };
    let status: StatusDoc = match serde_json::from_str(&body) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("waypost status: the answer is not the status document: {e}");
            return EXIT_FAILURE;
        }
    };
    let _ = writeln!(
        out,
        "{:<20} {:<24} {:<8} {:<9} {:<7} {:<17} {:>7}",
        "SERVICE", "BACKEND", "HEALTHY", "DRAINING", "WEIGHT", "TOKEN", "CLIENTS"
    );
    for service in &status.services {
        let name = printable(&service.name);
        let clients = service.clients;
        if service.backends.is_empty() {
            let _ = writeln!(
                out,
                "{name:<20} {:<24} {:<8} {:<9} {:<7} {:<17} {clients:>7}",
                "-", "-", "-", "-", "-"
            );
        }
        for b in &service.backends {
            let _ = writeln!(
                out,
                "{name:<20} {:<24} {:<8} {:<9} {:<7} {:<17} {clients:>7}",
                printable(&b.addr),
                b.healthy,
                b.draining,
                b.weight,
                printable(&b.token),
            );
        }
    }
    xds_clients(&status, out);
    0
}

/// The parts of `/status` the table shows (other fields are ignored).
#[derive(Debug, serde::Deserialize)]
struct StatusDoc {
    #[serde(default)]
    services: Vec<ServiceDoc>,
}

#[derive(Debug, serde::Deserialize)]
struct ServiceDoc {
    name: String,
    #[serde(default)]
    clients: u64,
    #[serde(default)]
    backends: Vec<BackendDoc>,
    #[serde(default)]
    xds_clients: Vec<XdsClientDoc>,
    #[serde(default)]
    xds_clients_total: u64,
}

#[derive(Debug, serde::Deserialize)]
struct BackendDoc {
    addr: String,
    #[serde(default)]
    healthy: bool,
    #[serde(default)]
    draining: bool,
    #[serde(default)]
    weight: u64,
    #[serde(default)]
    token: String,
}

#[derive(Debug, serde::Deserialize)]
struct XdsClientDoc {
    #[serde(default)]
    node_id: String,
    #[serde(default)]
    acked: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    last_nack: Option<NackDoc>,
}

#[derive(Debug, serde::Deserialize)]
struct NackDoc {
    #[serde(rename = "type")]
    kind: String,
    error: String,
}

/// The xDS clients per service (when any is connected): node id, the
/// version of each type it ACKed (first 8 digits), its last NACK.
fn xds_clients(status: &StatusDoc, out: &mut impl std::io::Write) {
    if !status.services.iter().any(|s| s.xds_clients_total > 0) {
        return;
    }
    let _ = writeln!(
        out,
        "\n{:<20} {:<24} {:<8} {:<8} {:<8} {:<8} LAST NACK",
        "SERVICE", "XDS NODE", "LDS", "RDS", "CDS", "EDS"
    );
    for service in &status.services {
        let name = printable(&service.name);
        for client in &service.xds_clients {
            let acked = |ty: &str| {
                let version = client.acked.get(ty).map_or("-", String::as_str);
                printable(&version.chars().take(8).collect::<String>())
            };
            let nack = match &client.last_nack {
                Some(nack) => printable(&format!("{}: {}", nack.kind, nack.error)),
                None => "-".into(),
            };
            let node = if client.node_id.is_empty() {
                "(no node id)"
            } else {
                client.node_id.as_str()
            };
            let _ = writeln!(
                out,
                "{name:<20} {:<24} {:<8} {:<8} {:<8} {:<8} {nack}",
                printable(node),
                acked("lds"),
                acked("rds"),
                acked("cds"),
                acked("eds"),
            );
        }
        let shown = service.xds_clients.len() as u64;
        if service.xds_clients_total > shown {
            let _ = writeln!(
                out,
                "{name:<20} … and {} more",
                service.xds_clients_total - shown
            );
        }
    }
}

/// `text` with control characters escaped (`\n`, `\u{1b}`), so a service
/// name cannot move the terminal's cursor or forge table rows.
fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_parameters_are_encoded() {
        assert_eq!(
            drain_path("a b&c=d\r\nHost: x", "127.0.0.1:1", true),
            "/drain?service=a+b%26c%3Dd%0D%0AHost%3A+x&backend=127.0.0.1%3A1&undo=true"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("movies"), "movies");
        assert_eq!(printable("a\u{1b}[2Jb\nc"), "a\\u{1b}[2Jb\\nc");
    }
}
