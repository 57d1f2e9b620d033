//! Fetches a page over HTTP/1.0 through a proxy, the way curl's `--socks5-hostname` does.
//!
//! ```text
//! cargo run -p socksng-client --example fetch -- socks5h://127.0.0.1:1080 example.org 80 /
//! ```

use socksng_client::{Address, Client, ProxyUrl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [proxy, host, port, path] = args.as_slice() else {
        eprintln!("usage: fetch PROXY_URL HOST PORT PATH");
        std::process::exit(2);
    };
    let client = Client::new(ProxyUrl::parse(proxy)?);
    let stream = client
        .connect(Address::domain(host, port.parse()?)?)
        .await?;
    eprintln!(
        "connected via {:?}; the proxy's side is {}",
        stream.path(),
        stream.bound()
    );
    let mut stream = stream.into_inner();
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    print!("{}", String::from_utf8_lossy(&response));
    Ok(())
}
