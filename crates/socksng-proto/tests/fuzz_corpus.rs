//! Replays the checked-in fuzz corpora (fuzz/corpus/*) through the fuzz entry points, so every
//! input the fuzzer ever found interesting is re-checked by the normal test run on stable.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| run(&data));
        assert!(result.is_ok(), "corpus input {} panics", path.display());
        n += 1;
    }
    n
}

#[test]
fn server_handshake_corpus() {
    assert!(replay("server_handshake", socksng_proto::fuzzing::server_handshake) >= 10);
}

#[test]
fn wire_roundtrip_corpus() {
    assert!(replay("wire_roundtrip", socksng_proto::fuzzing::wire_roundtrip) >= 10);
}

#[test]
fn client_handshake_corpus() {
    assert!(replay("client_handshake", socksng_proto::fuzzing::client_handshake) >= 8);
}

#[test]
fn listener_control_corpus() {
    assert!(replay("listener_control", socksng_proto::fuzzing::listener_control) >= 8);
}

#[test]
fn discovery_corpus() {
    assert!(replay("discovery", socksng_proto::fuzzing::discovery) >= 5);
}
