//! Arbitrary bytes through the server handshake machine: it must never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| socksng_proto::fuzzing::server_handshake(data));
