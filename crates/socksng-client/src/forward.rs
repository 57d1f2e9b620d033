//! Port forwarding on top of the client: a local port relayed to a target through the router
//! (`ssh -L`), and a listener on the proxy's outside relayed to a local service (`ssh -R`).

use crate::route::Router;
use crate::{Address, ClientError, ProxyListener};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};

/// What happened to one forwarded connection, for the caller's log.
#[derive(Debug)]
pub struct ForwardEvent {
    /// The connecting peer.
    pub peer: String,
    /// Which way it went ("direct", a server's name, or the local service).
    pub via: String,
    /// Bytes towards the target / back, or the error that ended it.
    pub outcome: Result<(u64, u64), String>,
}

/// Accepts on `listener` and relays every connection to `target` the way `router` says, until
/// accepting fails. Each connection runs on its own task; `report` hears how each one ended.
pub async fn forward_local(
    listener: TcpListener,
    router: Arc<Router>,
    target: Address,
    report: impl Fn(ForwardEvent) + Send + Sync + 'static,
) -> std::io::Result<()> {
    let report = Arc::new(report);
    loop {
        let (mut inbound, peer) = listener.accept().await?;
        let _ = inbound.set_nodelay(true);
        let (router, target, report) = (router.clone(), target.clone(), report.clone());
        tokio::spawn(async move {
            let event = match router.connect(target).await {
                Ok(mut routed) => ForwardEvent {
                    peer: peer.to_string(),
                    outcome: copy_bidirectional(&mut inbound, &mut routed.stream)
                        .await
                        .map_err(|e| e.to_string()),
                    via: routed.via_name,
                },
                Err(e) => ForwardEvent {
                    peer: peer.to_string(),
                    via: "-".into(),
                    outcome: Err(e.to_string()),
                },
            };
            report(event);
        });
    }
}

/// Accepts connections arriving at the proxy's listener and relays each to `local`, until the
/// listener fails (the proxy closed it), or, for a BIND fallback, until its one connection ends.
pub async fn forward_remote(
    mut listener: ProxyListener,
    local: SocketAddr,
    report: impl Fn(ForwardEvent) + Send + Sync + 'static,
) -> Result<(), ClientError> {
    let report = Arc::new(report);
    loop {
        let (proxied, peer) = listener.accept().await?;
        let relay = relay_to_local(proxied.into_inner(), peer.to_string(), local);
        if listener.path() == crate::ProtocolPath::Socks5 {
            report(relay.await);
            return Ok(());
        }
        let report = report.clone();
        tokio::spawn(async move { report(relay.await) });
    }
}

async fn relay_to_local(
    mut outside: crate::Transport,
    peer: String,
    local: SocketAddr,
) -> ForwardEvent {
    let outcome = match TcpStream::connect(local).await {
        Ok(mut service) => {
            let _ = service.set_nodelay(true);
            copy_bidirectional(&mut outside, &mut service)
                .await
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(format!("local service {local}: {e}")),
    };
    ForwardEvent {
        peer,
        via: local.to_string(),
        outcome,
    }
}
