//! `waypost resolve TARGET [--watch] [--etcd ENDPOINTS]`: prints resolver
//! updates as JSON lines.

use std::time::Duration;

use serde_json::json;
use waypost_resolver::{ResolverRegistry, ResolverUpdate};

use super::{EXIT_FAILURE, emit, etcd_endpoints, shutdown_signal};

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
    match (&update.error, &update.state) {
        (Some(error), _) => json!({ "error": error.to_string() }),
        (None, Some(state)) => state.to_json(),
        (None, None) => json!({ "error": "the resolver ended without an answer" }),
    }
}

/// Runs `waypost resolve`; returns the exit code.
pub async fn resolve(args: ResolveArgs, out: &mut impl std::io::Write) -> u8 {
    let registry = ResolverRegistry::new();
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
            emit(out, &json!({ "error": e.to_string() }));
            return EXIT_FAILURE;
        }
    };

    if !args.watch {
        let timeout = Duration::from_secs(args.timeout);
        let Ok(update) = tokio::time::timeout(timeout, resolution.first()).await else {
            emit(
                out,
                &json!({ "error": format!("no answer within {}s", args.timeout) }),
            );
            return EXIT_FAILURE;
        };
        emit(out, &update_json(&update));
        return if update.error.is_none() && update.state.is_some() {
            0
        } else {
            EXIT_FAILURE
        };
    }

    let first = resolution.first().await;
    emit(out, &update_json(&first));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return 0,
            changed = resolution.changed() => match changed {
                Ok(update) => emit(out, &update_json(&update)),
                // A static resolver has said all it will.
                Err(_) => return 0,
            },
        }
    }
}
