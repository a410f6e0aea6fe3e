//! `waypost serve`: runs the balancer until SIGINT or SIGTERM.

use std::path::PathBuf;

use serde_json::json;

use super::{EXIT_FAILURE, EXIT_USAGE, emit, shutdown_signal};
use crate::config::{Config, ConfigError, quote};
use crate::server::{ServeOptions, start};

/// Arguments of `waypost serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// A TOML configuration file (see the `config` module docs).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["service"])]
    pub config: Option<PathBuf>,
    /// The BalanceLoad address (overrides the file's).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// The admin HTTP address (overrides the file's).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// A service as NAME=SOURCE (repeatable); SOURCE is `ip:port,…` or a
    /// resolver target. Without --config or --service, the embedded default
    /// registry is served.
    #[arg(long, value_name = "NAME=SOURCE")]
    pub service: Vec<String>,
    /// etcd endpoints for `etcd:///` sources.
    #[arg(long, value_name = "ENDPOINTS")]
    pub etcd: Option<String>,
    /// A file holding the token admin mutations need (`Authorization:
    /// Bearer <token>`); overrides the file's `admin_token_file`.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// TLS on both listeners with this certificate chain (PEM; with
    /// --tls-key); overrides the file's `[tls]`.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// mTLS: BalanceLoad clients need a certificate from this CA (PEM); on
    /// the admin port one stands in for the admin token.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Check this configuration file — its syntax, values, targets and the
    /// files it names — and exit (0: fine; 64: not, saying where), without
    /// serving: for operators' CI.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["config", "service"])]
    pub check_config: Option<PathBuf>,
}

fn flag_error(field: &str, message: String) -> ConfigError {
    ConfigError {
        file: "<flags>".into(),
        line: 0,
        field: field.into(),
        message,
    }
}

fn config_from(args: &ServeArgs) -> Result<Config, ConfigError> {
    let mut config = match (&args.config, args.service.is_empty()) {
        (Some(path), _) => Config::load(path)?,
        (None, true) => Config::embedded_default(),
        (None, false) => Config::from_service_flags(&args.service, args.etcd.is_some())?,
    };
    if let Some(listen) = &args.listen {
        config.listen = listen
            .parse()
            .map_err(|e| flag_error("--listen", format!("{}: {e}", quote(listen))))?;
    }
    if let Some(admin) = &args.admin {
        config.admin = Some(
            admin
                .parse()
                .map_err(|e| flag_error("--admin", format!("{}: {e}", quote(admin))))?,
        );
    }
    if let Some(etcd) = &args.etcd {
        config.etcd = super::etcd_endpoints(etcd);
    }
    if let Some(path) = &args.admin_token_file {
        config.admin_auth.token_file = Some(path.clone());
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let reload = config.tls.as_ref().map(|t| t.reload_interval);
        let mut tls = crate::config::ListenerTls::new(cert, key, args.tls_client_ca.clone());
        if let Some(every) = reload {
            tls.reload_interval = every;
        }
        config.tls = Some(tls);
    }
    Ok(config)
}

/// `waypost serve --check-config FILE`: one JSON line, `{"config": FILE,
/// "ok": true, "services": N}` or `{"config": FILE, "ok": false, "error":
/// …}` (also on standard error); exit 0 or 64.
fn check_config(path: &std::path::Path, out: &mut impl std::io::Write) -> u8 {
    let checked = Config::load(path)
        .map_err(|e| e.to_string())
        .and_then(|config| {
            crate::server::check(&config)
                .map(|()| config.services.len())
                .map_err(|e| e.to_string())
        });
    let file = path.display().to_string();
    match checked {
        Ok(services) => {
            emit(
                out,
                &json!({"config": file, "ok": true, "services": services}),
            );
            0
        }
        Err(error) => {
            eprintln!("waypost serve --check-config: {error}");
            emit(out, &json!({"config": file, "ok": false, "error": error}));
            EXIT_USAGE
        }
    }
}

/// Runs `waypost serve`; returns the exit code.
pub async fn serve(args: ServeArgs, out: &mut impl std::io::Write) -> u8 {
    if let Some(path) = &args.check_config {
        return check_config(path, out);
    }
    // Before anything is printed, so a signal right after "listening"
    // shuts down gracefully.
    let shutdown = shutdown_signal();
    let config = match config_from(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("waypost serve: {error}");
            return EXIT_USAGE;
        }
    };
    let services: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    let services = services.join(",");
    let tls = config.tls.is_some();
    let running = match start(config, ServeOptions::default()).await {
        Ok(running) => running,
        Err(error) => {
            eprintln!("waypost serve: {error}");
            return if error.is_config() {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            };
        }
    };
    emit(
        out,
        &json!({
            "listening": running.listen.to_string(),
            "admin": running.admin.map(|a| a.to_string()),
            "services": services,
            "tls": tls,
        }),
    );
    shutdown.await;
    running.shutdown().await;
    emit(out, &json!({"stopped": true}));
    0
}
