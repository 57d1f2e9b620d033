//! An in-process server for test suites (this crate's, the client library's and the CLI's):
//! bound on an ephemeral loopback port, optionally with a users file of its own, cancelled
//! when dropped.

use crate::{CancellationToken, Config, Server};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

/// How long any one step of a test may take: past it the test fails instead of hanging.
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

/// Awaits `f`, failing with `what` if it takes longer than [`DEADLINE`].
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {DEADLINE:?}"))
}

/// The user every [`TestServer::with_user`] server knows, and the password.
pub const TEST_USER: (&str, &str) = ("alice", "s3cret");

/// A running server.
pub struct TestServer {
    /// The first listening address.
    pub addr: SocketAddr,
    /// Every listening address.
    pub addrs: Vec<SocketAddr>,
    /// Cancels the server.
    pub shutdown: CancellationToken,
    /// The server's task; `stop` awaits it.
    pub task: Option<JoinHandle<crate::RunSummary>>,
    scratch: Option<PathBuf>,
}

impl TestServer {
    /// Starts a server from configuration text (`listen` defaults to 127.0.0.1:0); relative
    /// paths resolve against the current directory.
    pub async fn start(config: &str) -> TestServer {
        Self::start_in(config, Path::new(".")).await
    }

    /// The same, with relative paths resolved against `dir`.
    pub async fn start_in(config: &str, dir: &Path) -> TestServer {
        let text = if config.contains("listen") {
            config.to_string()
        } else {
            format!("listen = [\"127.0.0.1:0\"]\n{config}")
        };
        let mut cfg = Config::from_toml(&text, dir).expect("test config");
        if !text.contains("shutdown_grace") {
            // Tests stop servers with sessions still open; no need to wait out a drain.
            cfg.timeouts.shutdown_grace = std::time::Duration::from_millis(100);
        }
        let server = Server::bind(cfg).expect("bind");
        let addrs = server.local_addrs();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        TestServer {
            addr: addrs[0],
            addrs,
            shutdown,
            task: Some(task),
            scratch: None,
        }
    }

    /// A server whose directory (removed on drop) holds `users` with [`TEST_USER`], so the
    /// configuration can say `users_file = "users"`.
    pub async fn with_user(tag: &str, config: &str) -> TestServer {
        let dir = std::env::temp_dir().join(format!("socksng-test-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let (user, pass) = TEST_USER;
        crate::users::set_password(&dir.join("users"), user, pass.as_bytes()).expect("users");
        let mut s = Self::start_in(config, &dir).await;
        s.scratch = Some(dir);
        s
    }

    /// Stops the server and waits until its listeners are closed.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.await.expect("server task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(dir) = &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Writes `data` to `stream` and half-closes it while reading everything that comes back, to
/// the end: what an echo (or any request/answer exchange) through a proxy returns.
pub async fn exchange(
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    data: &[u8],
) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let (mut r, mut w) = tokio::io::split(stream);
    let sent = data.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await?;
        w.shutdown().await
    });
    let mut back = Vec::new();
    r.read_to_end(&mut back).await?;
    writer.await.map_err(std::io::Error::other)??;
    Ok(back)
}

/// A TCP echo server on `bind` (it echoes until EOF, then half-closes); returns its address.
pub async fn echo_server(bind: &str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}
