//! Instructions and hostile bytes through both LISTEN control-connection machines: they must
//! never panic or break their invariants (see `socksng_proto::fuzzing::listener_control`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| socksng_proto::fuzzing::listener_control(data));
