//! `waypost resolve TARGET [--watch] [--etcd ENDPOINTS]`: prints resolver
//! updates as JSON lines.
//!
//! `xds:///NAME` targets read the xDS bootstrap from `GRPC_XDS_BOOTSTRAP`
//! or `GRPC_XDS_BOOTSTRAP_CONFIG`; their lines carry the endpoints of the
//! cluster the listener routes to and a service config naming the cluster,
//! its drops and circuit breaker, and its endpoint-picking policy.
//!
//! Each line carries what the resolver said in one update: the endpoints
//! (`endpoints`, `service_config`, `balancer_addresses`) when it has them,
//! and `error` when something went wrong — both at once when it resolved
//! with a problem (a skipped etcd value, an invalid TXT record). Without
//! `--watch` the exit code is 0 when endpoints were resolved (even with an
//! `error` beside them), 1 when nothing was, 64 for a malformed target, and
//! 1 when standard output cannot be written.

use std::time::Duration;

use serde_json::json;
use waypost_resolver::{ResolveError, ResolverRegistry, ResolverUpdate};

use super::{EXIT_FAILURE, EXIT_USAGE, emit, etcd_endpoints, shutdown_signal};

/// Arguments of `waypost resolve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ResolveArgs {
    /// The target URI, e.g. `dns:///orders.internal:50051` or `etcd:///orders`.
    pub target: String,
    /// Keep printing updates until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// etcd endpoints (`host:port,…`) for `etcd:///service` targets.
    #[arg(long, value_name = "ENDPOINTS")]
    pub etcd: Option<String>,
    /// Without --watch: give up after this many seconds without an answer.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub timeout: u64,
}

fn update_json(update: &ResolverUpdate) -> serde_json::Value {
    let mut line = match &update.state {
        Some(state) => state.to_json(),
        None => json!({}),
    };
    let error = match (&update.error, &update.state) {
        (Some(error), _) => Some(error.to_string()),
        (None, Some(_)) => None,
        (None, None) => Some("the resolver ended without an answer".to_owned()),
    };
    if let (Some(error), Some(fields)) = (error, line.as_object_mut()) {
        fields.insert("error".into(), error.into());
    }
    line
}

/// Runs `waypost resolve`; returns the exit code.
pub async fn resolve(args: ResolveArgs, out: &mut impl std::io::Write) -> u8 {
    let registry = ResolverRegistry::new();
    // `xds:///NAME`, with the bootstrap gRPC's variables name.
    registry.register(waypost_xds::resolver::XdsResolverBuilder::new());
    if let Some(list) = &args.etcd {
        match waypost_resolver::etcd::connect(&etcd_endpoints(list)).await {
            Ok(client) => {
                registry.register(waypost_resolver::etcd::EtcdResolverBuilder::new(client))
            }
            Err(e) => {
                emit(
                    out,
                    &json!({ "error": format!("cannot connect to etcd at {list}: {e}") }),
                );
                return EXIT_FAILURE;
            }
        }
    }
    let mut resolution = match registry.resolve(&args.target) {
        Ok(resolution) => resolution,
        Err(e) => {
            let code = match e {
                // The target itself is malformed: a usage error.
                ResolveError::Target(_) | ResolveError::Unsupported { .. } => EXIT_USAGE,
                _ => EXIT_FAILURE,
            };
            return finish(out, &json!({ "error": e.to_string() }), code);
        }
    };

    if !args.watch {
        let timeout = Duration::from_secs(args.timeout);
        let Ok(update) = tokio::time::timeout(timeout, resolution.first()).await else {
            let line = json!({ "error": format!("no answer within {}s", args.timeout) });
            return finish(out, &line, EXIT_FAILURE);
        };
        let code = if update.state.is_some() {
            0
        } else {
            EXIT_FAILURE
        };
        return finish(out, &update_json(&update), code);
    }

    let first = resolution.first().await;
    if let Err(code) = print(out, &update_json(&first)) {
        return code;
    }
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return 0,
            changed = resolution.changed() => match changed {
                Ok(update) => {
                    if let Err(code) = print(out, &update_json(&update)) {
                        return code;
                    }
                }
                // A static resolver has said all it will.
                Err(_) => return 0,
            },
        }
    }
}

/// Writes one JSON line; `Err(1)` (after saying why on standard error)
/// when standard output cannot take it, so `resolve > /dev/full` fails.
fn print(out: &mut impl std::io::Write, line: &serde_json::Value) -> Result<(), u8> {
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| {
            eprintln!("waypost resolve: cannot write the answer: {e}");
            EXIT_FAILURE
        })
}

/// Writes the last line and returns `code`, or a failure if the line could
/// not be written.
fn finish(out: &mut impl std::io::Write, line: &serde_json::Value, code: u8) -> u8 {
    match print(out, line) {
        Ok(()) => code,
        Err(failed) => failed.max(code),
    }
}
