//! SOCKS-NG on a real server: negotiation, fallback for plain clients, CAPABILITIES.

mod common;
use common::*;
use socksng_proto::wire::ng::{Capabilities, NgAuth, NgHello, NgRequest, NgWelcome};
use socksng_proto::ReplyCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Negotiates SOCKS-NG without credentials and returns the connection ready for a request.
async fn ng_session(proxy: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(&[5, 2, 0xa5, 0]).await.unwrap();
    let mut sel = [0u8; 2];
    s.read_exact(&mut sel).await.unwrap();
    assert_eq!(sel, [5, 0xa5]);
    let mut hello = Vec::new();
    NgHello { auth: NgAuth::None }.encode(&mut hello).unwrap();
    s.write_all(&hello).await.unwrap();
    let mut w = [0u8; 3];
    s.read_exact(&mut w).await.unwrap();
    assert_eq!(
        NgWelcome::decode(&w).unwrap().0,
        NgWelcome {
            status: 0,
            revision: 1
        }
    );
    s
}

#[tokio::test]
async fn capabilities_report_configured_ranges() {
    let srv =
        start("[[ng.served]]\nto = [\"10.0.0.0/8\", \"fd00::/8\"]\ndomains = [\"corp.example\"]\n")
            .await;
    let mut s = ng_session(srv.addr).await;
    let mut req = Vec::new();
    NgRequest::Capabilities.encode(&mut req);
    s.write_all(&req).await.unwrap();
    let reply = read_reply(&mut s).await;
    assert_eq!(reply.code, ReplyCode::SUCCEEDED);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    let (caps, used) = Capabilities::decode(&rest).unwrap();
    assert_eq!(used, rest.len());
    assert_eq!(caps.revision, 1);
    assert!(caps.commands.contains(&0x11) && caps.commands.contains(&0x01));
    assert_eq!(caps.ranges.len(), 1);
    assert_eq!(
        caps.ranges[0].prefixes,
        vec![
            ("10.0.0.0".parse().unwrap(), 8),
            ("fd00::".parse().unwrap(), 8)
        ]
    );
    assert_eq!(caps.ranges[0].domains, vec!["corp.example".to_string()]);
    srv.stop().await;
}

/// Plain clients never offer the NG method and see plain SOCKS5; a client offering it to a
/// server with NG switched off falls back without an extra round trip.
#[tokio::test]
async fn plain_clients_and_fallback() {
    let srv = start(&format!("[ng]\nenabled = false\n{ALLOW_LOOPBACK}")).await;
    let target = echo_server("127.0.0.1:0").await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut msg = vec![5, 2, 0xa5, 0, 5, 1, 0];
    socksng_proto::Address::ip(target).encode(&mut msg);
    s.write_all(&msg).await.unwrap();
    let mut sel = [0u8; 2];
    s.read_exact(&mut sel).await.unwrap();
    assert_eq!(sel, [5, 0], "NG off: the plain method is chosen");
    assert_eq!(read_reply(&mut s).await.code, ReplyCode::SUCCEEDED);
    // NG commands are unknown commands without NG.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(&[5, 1, 0, 5, 0x11, 0]).await.unwrap();
    s.read_exact(&mut sel).await.unwrap();
    assert_eq!(
        read_reply(&mut s).await.code,
        ReplyCode::COMMAND_NOT_SUPPORTED
    );
    srv.stop().await;
}
