//! Fuzzes the data-connection frame decoder and payload parsers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    waypost_rpc::fuzzing::frames(data);
});
