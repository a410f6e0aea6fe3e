//! Entry points for the cargo-fuzz targets in `rpc/fuzz/` and for the test
//! that replays their corpus: each feeds arbitrary bytes to a parser the
//! way a hostile peer would and must return (never panic, never allocate
//! beyond the limits).

use bytes::BytesMut;

use crate::frame::{Decoder, End, ErrorAssembler, FrameType, RequestHead};
use crate::handshake::{ClientHello, Parsed, ServerHello, parse_label, parse_label_answer};

/// Decodes `data` as a frame stream under a 64 KiB limit, parsing every
/// payload by its type. Returns how many frames were decoded.
pub fn frames(data: &[u8]) -> usize {
    let mut decoder = Decoder::new(64 * 1024);
    let mut errors = ErrorAssembler::default();
    // Feed in uneven pieces, as a socket would.
    let mut buf = BytesMut::new();
    let mut decoded = 0;
    for piece in data.chunks(7) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.wanted(&buf) {
                Ok(n) => assert!(n <= 8 + 64 * 1024, "wanted beyond the limit"),
                Err(_) => return decoded,
            }
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    decoded += 1;
                    match frame.kind {
                        FrameType::Request => {
                            let _ = RequestHead::decode(frame.flags, frame.payload);
                        }
                        FrameType::End => {
                            let _ = End::decode(frame.flags, frame.payload);
                        }
                        FrameType::Error if errors.push(frame.flags, &frame.payload).is_err() => {
                            return decoded;
                        }
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(_) => return decoded,
            }
        }
    }
    decoded
}

/// Parses `data` as every handshake message, from every prefix length.
/// Returns how many parses completed.
pub fn handshake(data: &[u8]) -> usize {
    let mut complete = 0;
    for end in 0..=data.len().min(2048) {
        let prefix = &data[..end];
        if let Ok(Parsed::Complete(_, used)) = ClientHello::parse(prefix) {
            assert!(used <= prefix.len());
            complete += 1;
        }
        if let Ok(Parsed::Complete(_, used)) = ServerHello::parse(prefix) {
            assert!(used <= prefix.len());
            complete += 1;
        }
        if let Ok(Parsed::Complete(_, used)) = parse_label(prefix) {
            assert!(used <= prefix.len());
            complete += 1;
        }
        if let Ok(Parsed::Complete(_, used)) = parse_label_answer(prefix) {
            assert!(used <= prefix.len());
            complete += 1;
        }
    }
    complete
}
