//! Publishes a tiny service on the proxy's outside with SOCKS-NG LISTEN (or a one-shot BIND on
//! a plain SOCKS5 server) and greets every visitor, the way `ssh -R` publishes a port.
//!
//! ```text
//! cargo run -p socksng-client --example publish -- socks5h://alice:secret@127.0.0.1:1080
//! ```

use socksng_client::{Address, Client, ProtocolPath, ProxyUrl};
use tokio::io::AsyncWriteExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proxy = std::env::args().nth(1).ok_or("usage: publish PROXY_URL")?;
    let client = Client::new(ProxyUrl::parse(&proxy)?);
    let anyone = Address::ip("0.0.0.0:0".parse()?);
    let mut listener = client.listen(0, false, 16, anyone).await?;
    println!("visit {} ({:?})", listener.local_addr(), listener.path());
    loop {
        let (visitor, from) = listener.accept().await?;
        let mut visitor = visitor.into_inner();
        visitor
            .write_all(format!("hello {from}, this came through the proxy\n").as_bytes())
            .await?;
        if listener.path() == ProtocolPath::Socks5 {
            return Ok(()); // BIND serves one connection.
        }
    }
}
