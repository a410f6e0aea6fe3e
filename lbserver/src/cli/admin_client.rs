//! `waypost drain` and `waypost status`: clients of the admin endpoint.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::EXIT_FAILURE;

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
}

/// Arguments of `waypost status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The balancer's admin address.
    #[arg(long, value_name = "ADDR")]
    pub admin: String,
}

/// One HTTP/1.1 request; returns (status code, body).
async fn request(admin: &str, method: &str, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(admin)
            .await
            .map_err(|e| format!("cannot reach {admin}: {e}"))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        stream
            .take(16 * 1024 * 1024)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or("malformed HTTP response")?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or("malformed status line")?;
        Ok((code, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("{admin} did not answer in 10 s"))?
}

/// Runs `waypost drain`.
pub async fn drain(args: DrainArgs, out: &mut impl std::io::Write) -> u8 {
    let path = format!(
        "/drain?service={}&backend={}{}",
        args.service,
        args.backend,
        if args.undo { "&undo=true" } else { "" }
    );
    match request(&args.admin, "POST", &path).await {
        Ok((200, body)) => {
            let _ = write!(out, "{body}");
            0
        }
        Ok((_, body)) => {
            eprintln!("waypost drain: {}", body.trim());
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
    let body = match request(&args.admin, "GET", "/status").await {
        Ok((200, body)) => body,
        Ok((code, body)) => {
            eprintln!("waypost status: HTTP {code}: {}", body.trim());
            return EXIT_FAILURE;
        }
        Err(e) => {
            eprintln!("waypost status: {e}");
            return EXIT_FAILURE;
        }
    };
    let Ok(status) = serde_json::from_str::<serde_json::Value>(&body) else {
        eprintln!("waypost status: the answer is not JSON");
        return EXIT_FAILURE;
    };
    let _ = writeln!(
        out,
        "{:<20} {:<24} {:<8} {:<9} {:<7} {:<17} {:>7}",
        "SERVICE", "BACKEND", "HEALTHY", "DRAINING", "WEIGHT", "TOKEN", "CLIENTS"
    );
    for service in status["services"].as_array().into_iter().flatten() {
        let name = service["name"].as_str().unwrap_or("?");
        let clients = service["clients"].as_u64().unwrap_or(0);
        let backends = service["backends"].as_array().cloned().unwrap_or_default();
        if backends.is_empty() {
            let _ = writeln!(
                out,
                "{name:<20} {:<24} {:<8} {:<9} {:<7} {:<17} {clients:>7}",
                "-", "-", "-", "-", "-"
            );
        }
        for b in backends {
            let _ = writeln!(
                out,
                "{name:<20} {:<24} {:<8} {:<9} {:<7} {:<17} {clients:>7}",
                b["addr"].as_str().unwrap_or("?"),
                b["healthy"].as_bool().unwrap_or(false),
                b["draining"].as_bool().unwrap_or(false),
                b["weight"].as_u64().unwrap_or(0),
                b["token"].as_str().unwrap_or("?"),
            );
        }
    }
    0
}
