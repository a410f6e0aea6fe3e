//! `waypost-bench zerocopy`: what Linux's zero-copy calls save on this
//! machine, before waypost-rpc builds a path on them (issue 20 item 2).
//!
//! One file of `--file-mib` MiB (page-cached: it is read once first) is
//! sent `--gib` GiB worth over a loopback TCP connection, four ways, each
//! in its own child process (sender and receiver threads in one process,
//! blocking calls, so the CPU time — user + system, `/proc/self/stat` —
//! is that of both ends):
//!
//! - `copy`: `read` the file into a 256 KiB buffer, `write` it to the
//!   socket; the receiver `read`s into a 256 KiB buffer and `write`s to
//!   `/dev/null` — the raw copy a zero-copy path must beat;
//! - `sendfile`: the sender `sendfile`s the file (1 MiB per call); the
//!   receiver as in `copy`;
//! - `splice`: the sender as in `copy`; the receiver `splice`s the socket
//!   into a pipe and the pipe into `/dev/null`;
//! - `sendfile_splice`: both ends zero-copy.
//!
//! `--runs` rounds, interleaved; each round's CPU per GiB of every way over
//! `copy`'s, with the verdict against issue 20's goal (≤ 0.6×). Last line:
//! JSON with every figure and the machine.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use serde_json::json;

const GIB: f64 = (1u64 << 30) as f64;
const BUFFER: usize = 256 * 1024;
const SENDFILE_CALL: usize = 1 << 20;
const MODES: [&str; 4] = ["copy", "sendfile", "splice", "sendfile_splice"];
/// Issue 20's goal for a zero-copy path: CPU per GiB at most this × the raw copy's.
const GOAL: f64 = 0.6;

/// Options of `zerocopy`.
#[derive(Debug, clap::Args)]
pub(crate) struct ZerocopyArgs {
    /// GiB per transfer.
    #[arg(long, default_value_t = 8)]
    gib: u64,
    /// Size of the file sent (again and again), MiB.
    #[arg(long, default_value_t = 1024)]
    file_mib: u64,
    /// Rounds of the four transfers.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// Options of the hidden child.
#[derive(Debug, clap::Args)]
pub(crate) struct ZerocopyChildArgs {
    #[arg(long)]
    mode: String,
    #[arg(long)]
    file: std::path::PathBuf,
    #[arg(long)]
    bytes: u64,
}

pub(crate) async fn run(args: ZerocopyArgs) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("payload");
    {
        let mut file = File::create(&path)?;
        let mut block = vec![0u8; 1 << 20];
        for (i, b) in block.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        for _ in 0..args.file_mib {
            file.write_all(&block)?;
        }
        file.sync_all()?;
    }
    // Into the page cache.
    std::io::copy(&mut File::open(&path)?, &mut std::io::sink())?;
    let bytes = args.gib << 30;
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    let mut gibps: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    for round in 0..args.runs {
        for (i, mode) in MODES.iter().enumerate() {
            let bytes = bytes.to_string();
            let v = crate::stats::run_child([
                std::ffi::OsStr::new("zerocopy-child"),
                "--mode".as_ref(),
                mode.as_ref(),
                "--bytes".as_ref(),
                bytes.as_ref(),
                "--file".as_ref(),
                path.as_os_str(),
            ])
            .await
            .map_err(|e| format!("{mode}: {e}"))?;
            let (c, g) = (
                v["cpu_s_per_gib"].as_f64().unwrap_or(f64::NAN),
                v["gibps"].as_f64().unwrap_or(f64::NAN),
            );
            eprintln!("round {round} {mode:>15}: {g:.2} GiB/s, {c:.3} CPU-s/GiB");
            cpu[i].push(c);
            gibps[i].push(g);
        }
    }
    let mut summary = json!({
        "machine": crate::stats::machine(),
        "gib_per_transfer": args.gib,
        "file_mib": args.file_mib,
        "runs": args.runs,
    });
    for (i, mode) in MODES.iter().enumerate() {
        let ratio: Vec<f64> = cpu[i].iter().zip(&cpu[0]).map(|(m, c)| m / c).collect();
        summary[mode] = json!({
            "cpu_s_per_gib": crate::stats::rounds(&cpu[i]),
            "gibps": crate::stats::rounds(&gibps[i]),
        });
        if i > 0 {
            summary[mode]["cpu_vs_copy"] =
                crate::stats::goal(&format!("{mode}: CPU/GiB × copy"), &ratio, GOAL, true);
        }
    }
    println!("{summary}");
    Ok(())
}

pub(crate) fn child(args: ZerocopyChildArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (zero_copy_send, zero_copy_receive) = match args.mode.as_str() {
        "copy" => (false, false),
        "sendfile" => (true, false),
        "splice" => (false, true),
        "sendfile_splice" => (true, true),
        other => return Err(format!("unknown mode {other}").into()),
    };
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let cpu_before = crate::stats::cpu_time("/proc/self/stat");
    let started = Instant::now();
    let receiver = std::thread::spawn(move || -> std::io::Result<u64> {
        let (socket, _) = listener.accept()?;
        let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
        if zero_copy_receive {
            receive_splice(&socket, &null)
        } else {
            receive_copy(socket, null)
        }
    });
    let socket = TcpStream::connect(addr)?;
    socket.set_nodelay(true)?;
    let file = File::open(&args.file)?;
    let size = file.metadata()?.len();
    let mut sent = 0u64;
    while sent < args.bytes {
        let part = size.min(args.bytes - sent);
        if zero_copy_send {
            send_sendfile(&file, &socket, part)?;
        } else {
            send_copy(&file, &socket, part)?;
        }
        sent += part;
    }
    drop(socket);
    let received = receiver.join().map_err(|_| "the receiver panicked")??;
    let wall = started.elapsed().as_secs_f64();
    let cpu: Duration = crate::stats::cpu_time("/proc/self/stat") - cpu_before;
    if received != args.bytes {
        return Err(format!("received {received} of {} bytes", args.bytes).into());
    }
    let gib = received as f64 / GIB;
    println!(
        "{}",
        json!({"gibps": gib / wall, "cpu_s_per_gib": cpu.as_secs_f64() / gib})
    );
    Ok(())
}

/// The first `len` bytes of `file`, read into a buffer and written out.
fn send_copy(file: &File, mut socket: &TcpStream, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buffer = vec![0u8; BUFFER];
    let mut offset = 0u64;
    while offset < len {
        let want = BUFFER.min((len - offset) as usize);
        let n = file.read_at(&mut buffer[..want], offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        socket.write_all(&buffer[..n])?;
        offset += n as u64;
    }
    Ok(())
}

/// The first `len` bytes of `file`, by `sendfile`.
fn send_sendfile(file: &File, socket: &TcpStream, len: u64) -> std::io::Result<()> {
    let mut offset = 0u64;
    while offset < len {
        let want = SENDFILE_CALL.min((len - offset) as usize);
        let n = rustix::fs::sendfile(socket.as_fd(), file.as_fd(), Some(&mut offset), want)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

fn receive_copy(mut socket: TcpStream, mut sink: File) -> std::io::Result<u64> {
    let mut buffer = vec![0u8; BUFFER];
    let mut total = 0u64;
    loop {
        let n = socket.read(&mut buffer)?;
        if n == 0 {
            return Ok(total);
        }
        sink.write_all(&buffer[..n])?;
        total += n as u64;
    }
}

fn receive_splice(socket: &TcpStream, sink: &File) -> std::io::Result<u64> {
    use rustix::pipe::{SpliceFlags, pipe, splice};
    let (pipe_out, pipe_in) = pipe()?;
    // 1 MiB instead of the default 64 KiB: fewer calls, its best setting.
    rustix::pipe::fcntl_setpipe_size(&pipe_in, SENDFILE_CALL)?;
    let mut total = 0u64;
    loop {
        let n = splice(
            socket.as_fd(),
            None,
            pipe_in.as_fd(),
            None,
            SENDFILE_CALL,
            SpliceFlags::MOVE,
        )?;
        if n == 0 {
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            left -= splice(
                pipe_out.as_fd(),
                None,
                sink.as_fd(),
                None,
                left,
                SpliceFlags::MOVE,
            )?;
        }
        total += n as u64;
    }
}
