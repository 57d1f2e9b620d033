//! Every session ends with its client and gives back its slot and descriptors: a CONNECT to a
//! target that never speaks, a BIND still waiting for its peer, an idle UDP association and an
//! idle LISTEN control connection. One test function, so that the descriptor count of this
//! process is this test's alone.

mod common;
use common::*;
use socksng_proto::wire::ng::{ControlMessage, NgRequest};
use socksng_proto::{Address, ReplyCode};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Waits (polling, with the deadline) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "{what}: not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The server has max_sessions = 1: a request succeeds only once the previous session has
/// given its slot back. Returns the connection and the reply.
async fn when_free(proxy: SocketAddr, cmd: u8, target: &Address) -> (TcpStream, SocketAddr) {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        let r = request(&mut s, cmd, target).await;
        if r.code == ReplyCode::SUCCEEDED {
            return (s, r.bound.socket_addr().unwrap());
        }
        assert_eq!(
            r.code,
            ReplyCode::GENERAL_FAILURE,
            "only the session limit may refuse"
        );
        assert!(tokio::time::Instant::now() < give_up, "slot not freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sessions_end_with_their_clients() {
    let relays = start(&format!(
        "[timeouts]\nhalf_close = \"300ms\"\n[limits]\nmax_sessions = 1\n{ALLOW_LOOPBACK}"
    ))
    .await;
    let idle = start(&format!(
        "[timeouts]\nidle = \"300ms\"\nudp_idle = \"300ms\"\n[[ng.ports]]\nports = [\"1024-65535\"]\n{ALLOW_LOOPBACK}"
    ))
    .await;
    let (silent, mut accepted) = accepting_server("127.0.0.1:0").await;
    let echo = echo_server("127.0.0.1:0").await;
    let baseline = open_fds();

    // CONNECT to a target that never speaks; the client half-closes and waits: the relay ends
    // after the half-close linger, and the client sees it end.
    let (mut c, _) = when_free(relays.addr, 1, &Address::ip(silent)).await;
    let (mut t, _) = accepted.recv().await.unwrap();
    c.shutdown().await.unwrap();
    assert!(
        closed_silently(&mut t).await,
        "target after the client's half-close"
    );
    assert!(
        closed_silently(&mut c).await,
        "client of a half-closed relay"
    );
    drop((c, t));

    // The same with a client that closes outright: the next request gets the slot.
    let (c, _) = when_free(relays.addr, 1, &Address::ip(silent)).await;
    let (t, _) = accepted.recv().await.unwrap();
    drop(c);

    // BIND whose client closes while it waits for the peer: the port and the slot go.
    let any = Address::ip("0.0.0.0:0".parse().unwrap());
    let (b, bound) = when_free(relays.addr, 2, &any).await;
    drop(t);
    let bind_port = bound.port();
    drop(b);
    let (e, _) = when_free(relays.addr, 1, &Address::ip(echo)).await;
    drop(e);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", bind_port)).is_err(),
        "the BIND port is closed"
    );

    // An idle UDP association ends, and so does its control connection.
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (mut ctl, _relay) =
        udp_associate(idle.addr, Address::ip(client.local_addr().unwrap())).await;
    assert!(closed_silently(&mut ctl).await, "idle UDP association");
    drop((ctl, client));

    // An idle UDP tunnel.
    let mut tunnel = open_tunnel(idle.addr).await;
    assert!(closed_silently(&mut tunnel).await, "idle UDP tunnel");
    drop(tunnel);

    // An idle LISTEN control connection, and its port with it.
    let mut ctl = ng_session(idle.addr).await;
    let mut req = Vec::new();
    NgRequest::Listen {
        address: Address::ip("127.0.0.1:0".parse().unwrap()),
        exact: false,
        backlog: 4,
    }
    .encode(&mut req);
    ctl.write_all(&req).await.unwrap();
    let r = read_reply(&mut ctl).await;
    assert_eq!(r.code, ReplyCode::SUCCEEDED);
    let listen_port = r.bound.socket_addr().unwrap().port();
    // LISTENING (with the idle time), then CLOSING X'09', then the close.
    let mut rest = Vec::new();
    within("the idle close", ctl.read_to_end(&mut rest))
        .await
        .unwrap();
    let mut said = Vec::new();
    let mut at = 0;
    while at < rest.len() {
        let (m, used) = socksng_proto::wire::ng::ControlMessage::decode(&rest[at..]).unwrap();
        said.push(m);
        at += used;
    }
    assert!(
        matches!(
            said.as_slice(),
            [
                ControlMessage::Listening { idle: 1, .. },
                ControlMessage::Closing { reason }
            ] if reason.0 == 0x09
        ),
        "idle LISTEN control connection: {said:?}"
    );
    drop(ctl);
    assert!(std::net::TcpStream::connect(("127.0.0.1", listen_port)).is_err());

    // Every descriptor those sessions used is closed again (the last probe's included, once
    // the echo target has seen it go).
    let (last, _) = when_free(relays.addr, 1, &Address::ip(echo)).await;
    drop(last);
    eventually("descriptors back to the baseline", || {
        open_fds() <= baseline
    })
    .await;
    relays.stop().await;
    idle.stop().await;
}
