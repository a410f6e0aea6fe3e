//! The subcommands of the `waypost` binary. Each takes its parsed
//! arguments and a writer for its JSON lines, and returns an exit code.

mod admin_client;
mod register;
mod resolve;
mod serve;

pub use admin_client::{DrainArgs, StatusArgs, drain, status};
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
/// supervisor restarts the process with the new one).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut term, mut hup) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(hup)) => (term, hup),
            _ => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Writes one JSON value as a line and flushes, so watchers see it at once.
pub(crate) fn emit(out: &mut impl std::io::Write, value: &serde_json::Value) {
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}
