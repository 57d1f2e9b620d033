//! Arbitrary bytes through every decoder; decoded values must re-encode faithfully.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| socksng_proto::fuzzing::wire_roundtrip(data));
