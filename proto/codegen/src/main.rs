//! Regenerates the checked-in Rust code in `proto/src/generated/` from the
//! `.proto` files in `proto/proto/`, with protox (pure Rust, no system protoc).
//!
//! ```text
//! cargo run -p waypost-codegen            # rewrite
//! cargo run -p waypost-codegen -- --check # fail on drift
//! ```

use std::path::Path;
use std::process::ExitCode;

/// The protos we compile, relative to `proto/proto/`, with the codec their
/// services use (`None`: tonic-prost's default).
const PROTOS: &[(&str, Option<&str>)] = &[
    // A balancer holds one BalanceLoad stream per client: small buffers.
    (
        "grpc/lb/v1/load_balancer.proto",
        Some("crate::codec::SmallMessageCodec"),
    ),
    ("grpc/health/v1/health.proto", None),
    ("movies/v1/movies.proto", None),
    ("bulk/v1/bulk.proto", None),
    // ORCA load reports (weighted_round_robin); the service file brings in
    // the report's, whose code is written again, identically.
    ("xds/data/orca/v3/orca_load_report.proto", None),
    ("xds/service/orca/v3/orca.proto", None),
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

    let scratch = std::env::temp_dir().join(format!("waypost-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    for (file, codec) in PROTOS {
        let fds = protox::compile([proto_dir.join(file)], [&proto_dir])?;
        // The encoded descriptors too, for server reflection.
        if let Some(package) = fds.file.last().and_then(|f| f.package.clone()) {
            std::fs::write(
                scratch.join(format!("{package}.bin")),
                prost::Message::encode_to_vec(&fds),
            )?;
        }
        let mut builder = tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            .build_transport(false)
            // Bulk chunks decode without a copy.
            .bytes(".bulk.v1");
        if let Some(codec) = codec {
            builder = builder.codec_path(*codec);
        }
        builder.out_dir(&scratch).compile_fds(fds)?;
    }

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
