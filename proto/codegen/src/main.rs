//! Regenerates the checked-in Rust code in `proto/src/generated/` from the
//! `.proto` files in `proto/proto/`, with protox (pure Rust, no system protoc).
//!
//! ```text
//! cargo run -p waypost-codegen            # rewrite
//! cargo run -p waypost-codegen -- --check # fail on drift
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The protos we compile, relative to `proto/proto/`.
const PROTOS: &[&str] = &[
    "grpc/lb/v1/load_balancer.proto",
    "grpc/health/v1/health.proto",
    "movies/v1/movies.proto",
];

fn main() -> ExitCode {
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(other) => {
            eprintln!("codegen: unknown argument {other:?} (expected nothing or --check)");
            return ExitCode::from(64);
        }
    };
    match run(check) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("codegen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Generates into a temporary directory, then either copies the result over
/// `src/generated/` or compares the two. Returns whether the tree is clean.
fn run(check: bool) -> Result<bool, Box<dyn std::error::Error>> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("codegen lives in proto/codegen");
    let proto_dir = crate_dir.join("proto");
    let generated_dir = crate_dir.join("src/generated");

    let files: Vec<PathBuf> = PROTOS.iter().map(|p| proto_dir.join(p)).collect();
    let fds = protox::compile(&files, [&proto_dir])?;

    let scratch = std::env::temp_dir().join(format!("waypost-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .out_dir(&scratch)
        .compile_fds(fds)?;

    let mut fresh: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(&scratch)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        fresh.push((name, std::fs::read(entry.path())?));
    }
    fresh.sort();
    std::fs::remove_dir_all(&scratch)?;

    if check {
        let mut clean = true;
        for (name, bytes) in &fresh {
            let path = generated_dir.join(name);
            if std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
                eprintln!(
                    "codegen: {} is stale; run `cargo run -p waypost-codegen`",
                    path.display()
                );
                clean = false;
            }
        }
        for entry in std::fs::read_dir(&generated_dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if !fresh.iter().any(|(n, _)| *n == name) {
                eprintln!("codegen: src/generated/{name} is no longer generated; delete it");
                clean = false;
            }
        }
        if clean {
            println!(
                "codegen: src/generated/ is up to date ({} files)",
                fresh.len()
            );
        }
        Ok(clean)
    } else {
        std::fs::create_dir_all(&generated_dir)?;
        for (name, bytes) in &fresh {
            std::fs::write(generated_dir.join(name), bytes)?;
            println!("codegen: wrote src/generated/{name}");
        }
        Ok(true)
    }
}
