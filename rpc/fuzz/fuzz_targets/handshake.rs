//! Fuzzes the handshake and mux-label parsers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    waypost_rpc::fuzzing::handshake(data);
});
