//! `waypost register --etcd ENDPOINTS --service NAME --addr HOST:PORT`:
//! registers an endpoint in etcd until SIGINT or SIGTERM, then removes it.

use std::time::Duration;

use serde_json::json;
use waypost_resolver::etcd::{Registration, RegistrationOptions};

use super::{EXIT_FAILURE, EXIT_USAGE, emit, etcd_endpoints, shutdown_signal};

/// Arguments of `waypost register`.
#[derive(Debug, Clone, clap::Args)]
pub struct RegisterArgs {
    /// etcd endpoints (`host:port,…`).
    #[arg(long, value_name = "ENDPOINTS")]
    pub etcd: String,
    /// The service name (the key prefix).
    #[arg(long)]
    pub service: String,
    /// The address clients should dial.
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: String,
    /// The lease TTL in seconds (at least 2).
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub ttl: u64,
    /// JSON metadata for the value's `Metadata` field.
    #[arg(long, value_name = "JSON")]
    pub metadata: Option<String>,
}

/// Runs `waypost register`; returns the exit code.
pub async fn register(args: RegisterArgs, out: &mut impl std::io::Write) -> u8 {
    // Before anything is printed: a signal right after "registered" must
    // deregister, not kill the process.
    let shutdown = shutdown_signal();
    let mut options =
        RegistrationOptions::new(&args.service, &args.addr).ttl(Duration::from_secs(args.ttl));
    if let Some(text) = &args.metadata {
        match serde_json::from_str(text) {
            Ok(metadata) => options = options.metadata(metadata),
            Err(e) => {
                emit(
                    out,
                    &json!({ "error": format!("--metadata is not valid JSON: {e}") }),
                );
                return EXIT_USAGE;
            }
        }
    }
    let client = match waypost_resolver::etcd::connect(&etcd_endpoints(&args.etcd)).await {
        Ok(client) => client,
        Err(e) => {
            emit(
                out,
                &json!({ "error": format!("cannot connect to etcd at {}: {e}", args.etcd) }),
            );
            return EXIT_FAILURE;
        }
    };
    let registration = match Registration::register(client, options).await {
        Ok(registration) => registration,
        Err(e) => {
            let code = if matches!(e, waypost_resolver::etcd::RegisterError::Invalid(_)) {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            };
            emit(out, &json!({ "error": e.to_string() }));
            return code;
        }
    };
    let key = registration.key().to_owned();
    emit(
        out,
        &json!({ "registered": key, "lease_id": registration.status().borrow().lease_id }),
    );
    shutdown.await;
    match registration.shutdown().await {
        Ok(()) => {
            emit(out, &json!({ "deregistered": key }));
            0
        }
        Err(e) => {
            emit(
                out,
                &json!({ "error": format!("deregistering {key}: {e}") }),
            );
            EXIT_FAILURE
        }
    }
}
