//! Arbitrary proxy bytes through the client handshake machine: it must never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| socksng_proto::fuzzing::client_handshake(data));
