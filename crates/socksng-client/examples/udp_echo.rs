//! Sends one datagram through the proxy and prints the reply: over the SOCKS-NG UDP tunnel,
//! or UDP ASSOCIATE on a plain SOCKS5 server.
//!
//! ```text
//! cargo run -p socksng-client --example udp_echo -- socks5h://127.0.0.1:1080 192.0.2.7:7 hello
//! ```

use socksng_client::{Address, Client, ProxyUrl};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [proxy, target, text] = args.as_slice() else {
        eprintln!("usage: udp_echo PROXY_URL IP:PORT TEXT");
        std::process::exit(2);
    };
    let client = Client::new(ProxyUrl::parse(proxy)?);
    let mut socket = client.udp().await?;
    socket
        .send_to(text.as_bytes(), &Address::ip(target.parse()?))
        .await?;
    let mut buf = vec![0u8; 65_536];
    let (n, from) = socket.recv_from(&mut buf).await?;
    println!(
        "{} bytes from {from} via {:?}: {}",
        n,
        socket.path(),
        String::from_utf8_lossy(&buf[..n])
    );
    Ok(())
}
