//! Replays the cargo-fuzz corpus (`rpc/fuzz/corpus/`) through the same
//! entry points the fuzz targets use, so every input the fuzzer ever kept —
//! including any that once crashed — stays a regression test.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8]) -> usize) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        run(&data);
        files += 1;
    }
    files
}

#[test]
fn frame_corpus_replays_without_panics() {
    let files = replay("frames", waypost_rpc::fuzzing::frames);
    assert!(files >= 10, "only {files} corpus files");
}

#[test]
fn handshake_corpus_replays_without_panics() {
    let files = replay("handshake", waypost_rpc::fuzzing::handshake);
    assert!(files >= 10, "only {files} corpus files");
}

#[test]
fn seeds_exercise_the_parsers() {
    // A well-formed stream decodes completely: the seeds are meaningful.
    let mut stream = Vec::new();
    let head = waypost_rpc::frame::RequestHead {
        endpoint: "files/get".into(),
        metadata: Vec::new(),
        message: bytes::Bytes::from_static(b"\x08\x01"),
    };
    let payload = head.encode();
    stream.extend_from_slice(&waypost_rpc::frame::encode_header(
        waypost_rpc::frame::FrameType::Request,
        1,
        payload.len() as u32,
    ));
    stream.extend_from_slice(&payload);
    stream.extend_from_slice(&waypost_rpc::frame::encode_header(
        waypost_rpc::frame::FrameType::Heartbeat,
        0,
        0,
    ));
    assert_eq!(waypost_rpc::fuzzing::frames(&stream), 2);
}
