//! The subcommands of the `waypost` binary. Each takes its parsed
//! arguments and a writer for its JSON lines, and returns an exit code.

mod admin_client;
mod register;
mod resolve;
mod serve;

pub use admin_client::{AdminTlsArgs, DrainArgs, StatusArgs, drain, status};
pub use register::{RegisterArgs, register};
pub use resolve::{ResolveArgs, resolve};
pub use serve::{ServeArgs, serve};

/// Exit code for bad command-line input (BSD `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// Exit code when the work failed (resolution error, etcd unreachable).
pub const EXIT_FAILURE: u8 = 1;

/// Splits `a,b,c` into etcd endpoints.
pub(crate) fn etcd_endpoints(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Resolves on SIGINT, SIGTERM or SIGHUP: `waypost serve` shuts down
/// gracefully on each (SIGHUP does not reload the configuration; a
/// supervisor restarts the process with the new one). The handlers are
/// installed when this is called, not when it is first awaited, so a
/// signal that arrives in between is not lost (nor kills the process).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let signals: Vec<_> = [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::hangup(),
        ]
        .into_iter()
        .filter_map(|kind| signal(kind).ok())
        .collect();
        async move {
            if signals.is_empty() {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
            let waits = signals.into_iter().map(|mut s| {
                Box::pin(async move {
                    s.recv().await;
                })
            });
            futures_util::future::select_all(waits).await;
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Writes one JSON value as a line and flushes, so watchers see it at once.
pub(crate) fn emit(out: &mut impl std::io::Write, value: &serde_json::Value) {
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}
