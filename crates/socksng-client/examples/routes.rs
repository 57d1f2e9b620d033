//! Loads a client configuration file, asks its servers for their ranges, prints the route
//! table, and says which way each target given would go.
//!
//! ```text
//! cargo run -p socksng-client --example routes -- client.toml db.corp.example:5432 192.0.2.1:80
//! ```

use socksng_client::{Address, ClientConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: routes CONFIG [HOST:PORT...]")?;
    let router = ClientConfig::load(path.as_ref())?.router()?;
    router.refresh().await;
    print!("{}", router.table());
    for target in args {
        let (host, port) = target.rsplit_once(':').ok_or("targets are HOST:PORT")?;
        let address = match host.parse() {
            Ok(ip) => Address::ip(std::net::SocketAddr::new(ip, port.parse()?)),
            Err(_) => Address::domain(host, port.parse()?)?,
        };
        let (via, _) = router.decide(&address).await?;
        println!("{target} -> {}", router.table().via_name(via));
    }
    Ok(())
}
