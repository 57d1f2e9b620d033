//! The DHCP discovery option's decoders over arbitrary bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| socksng_proto::fuzzing::discovery(data));
