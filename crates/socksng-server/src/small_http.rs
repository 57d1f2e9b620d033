//! The small HTTP/1.x server behind `/metrics` and the discovery documents (`/.well-known/pvd`,
//! `/proxy.pac`): one GET per connection, answered whole and closed, as scrapers and PAC or
//! PvD readers expect of a small endpoint. It bounds what any peer can hold: connections at
//! once, the request's size, and the time of the whole exchange; and it backs off when the
//! process is out of descriptors instead of spinning on accept.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The longest request read.
const MAX_REQUEST: usize = 8 * 1024;
/// Connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 64;
/// How long one exchange (a TLS handshake included) may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a request is answered with.
pub(crate) struct Answer {
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    pub(crate) fn ok(content_type: &'static str, body: String) -> Answer {
        Answer {
            status: "200 OK",
            content_type,
            body,
        }
    }

    pub(crate) fn not_found(body: &str) -> Answer {
        Answer {
            status: "404 Not Found",
            content_type: "text/plain; charset=utf-8",
            body: body.to_string(),
        }
    }
}

/// Accepts on `listener` until `stop` fires and runs `exchange` for each connection, at most
/// [`MAX_CONNECTIONS`] at once and each for at most [`EXCHANGE_TIMEOUT`].
pub(crate) async fn serve<F, Fut>(listener: TcpListener, stop: CancellationToken, exchange: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    const MIN_BACKOFF: Duration = Duration::from_millis(10);
    const MAX_BACKOFF: Duration = Duration::from_secs(1);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = MIN_BACKOFF;
    loop {
        let slot = tokio::select! {
            _ = stop.cancelled() => return,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = MIN_BACKOFF;
                stream
            }
            Err(e) => {
                if crate::dial::is_resource_exhaustion(&e) {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                continue;
            }
        };
        let work = exchange(stream);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, work).await;
            drop(slot);
        });
    }
}

/// Reads one request from `stream` and writes what `respond` makes of its method and path
/// (the query string left on the path); a request that does not arrive whole is dropped.
pub(crate) async fn answer_one<S>(mut stream: S, respond: impl FnOnce(&str, &str) -> Answer)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        if request.len() >= MAX_REQUEST {
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
    }
    let line = String::from_utf8_lossy(request.split(|&b| b == b'\n').next().unwrap_or(&[]));
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let answer = if method == "GET" {
        respond(method, path)
    } else {
        Answer {
            status: "405 Method Not Allowed",
            content_type: "text/plain; charset=utf-8",
            body: "GET only\n".into(),
        }
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        answer.status,
        answer.content_type,
        answer.body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(answer.body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ask(request: &[u8]) -> String {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let serving = tokio::spawn(answer_one(server, |_, path| {
            if path == "/x" {
                Answer::ok("text/plain", "x\n".into())
            } else {
                Answer::not_found("no\n")
            }
        }));
        client.write_all(request).await.unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        serving.await.unwrap();
        out
    }

    #[tokio::test]
    async fn one_request_one_answer() {
        let ok = ask(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nx\n"), "{ok}");
        assert!(ask(b"GET /y HTTP/1.0\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404 "));
        assert!(ask(b"POST /x HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 405 "));
    }

    #[tokio::test]
    async fn an_endless_request_is_dropped() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let serving = tokio::spawn(answer_one(server, |_, _| Answer::not_found("")));
        client.write_all(&[b'a'; MAX_REQUEST + 10]).await.unwrap();
        serving.await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        assert!(out.is_empty());
    }
}
