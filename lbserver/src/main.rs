//! The `waypost` command: run the standalone balancer, drain backends and
//! read its status, resolve targets, register endpoints in etcd.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use waypost_lbserver::cli;

/// `waypost --version`: the crate version and the git commit built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WAYPOST_GIT_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "waypost",
    version = VERSION,
    about = "gRPC name resolution and load balancing"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the grpc.lb.v1 balancer (the embedded default registry without arguments).
    Serve(cli::ServeArgs),
    /// Take a backend out of new server lists (or put it back with --undo).
    Drain(cli::DrainArgs),
    /// Print a balancer's services and backends.
    Status(cli::StatusArgs),
    /// Print resolver updates for a target as JSON lines.
    Resolve(cli::ResolveArgs),
    /// Register an endpoint in etcd until interrupted, then remove it.
    Register(cli::RegisterArgs),
    /// Print a shell completion script (e.g. `waypost completions bash >
    /// /etc/bash_completion.d/waypost`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WAYPOST_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let parsed = match Cli::try_parse() {
        Ok(parsed) => parsed,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(cli::EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let mut out = std::io::stdout();
    let code = match parsed.command {
        Command::Serve(args) => cli::serve(args, &mut out).await,
        Command::Drain(args) => cli::drain(args, &mut out).await,
        Command::Status(args) => cli::status(args, &mut out).await,
        Command::Resolve(args) => cli::resolve(args, &mut out).await,
        Command::Register(args) => cli::register(args, &mut out).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "waypost", &mut out);
            0
        }
    };
    ExitCode::from(code)
}
