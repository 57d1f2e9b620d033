//! The servers under test ("subjects"): direct, socksngd, Dante, microsocks, `ssh -D` and any
//! command given on the command line. Owns their configuration files, start-up (pinned to the
//! proxy CPU, readiness checked with a real CONNECT) and teardown. Their programs are looked
//! up, never installed (see `programs`).

use crate::procs::{log_tail, Cgroup, Meter, Proc};
use crate::programs::{find, run_capture, which};
use crate::socks::{open, step, Credentials, Route};
use crate::targets::Targets;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The user name the benchmark logs in with (and creates for Dante).
pub const BENCH_USER: &str = "socksbench";

/// Which server a subject is.
#[derive(Debug, Clone)]
pub enum Kind {
    /// No proxy.
    Direct,
    /// target/release/socksngd.
    Socksng {
        /// The binary.
        bin: PathBuf,
    },
    /// Dante's danted.
    Dante,
    /// microsocks.
    Microsocks,
    /// OpenSSH dynamic forwarding against a private sshd.
    SshD,
    /// target/release/socksngd taking SOCKS over TLS (a certificate made for the run).
    SocksngTls {
        /// The binary.
        bin: PathBuf,
    },
    /// Dante behind stunnel: SOCKS over TLS as a user would assemble it from the two.
    StunnelDante,
    /// A command with `{port}` (and `{user}`/`{pass}` in the auth variant).
    Custom {
        /// Without authentication.
        cmd: String,
        /// With authentication, when given.
        auth_cmd: Option<String>,
    },
}

impl Kind {
    /// The programs this kind of server runs, each one of `programs::PACKAGES`: what must be
    /// installed before it can start.
    pub fn programs(&self) -> &'static [&'static str] {
        match self {
            Kind::Dante => &["danted"],
            Kind::StunnelDante => &["danted", "stunnel4"],
            Kind::Microsocks => &["microsocks"],
            Kind::SshD => &["sshd", "ssh", "ssh-keygen"],
            Kind::Direct | Kind::Socksng { .. } | Kind::SocksngTls { .. } | Kind::Custom { .. } => {
                &[]
            }
        }
    }
}

/// Shared settings for starting subjects.
pub struct Env {
    /// Run directory for configs and logs.
    pub dir: PathBuf,
    /// CPU the servers are pinned to.
    pub proxy_cpu: Option<usize>,
    /// Nice value for the servers.
    pub nice: Option<i32>,
    /// Where readiness probes connect to.
    pub targets: Targets,
    /// The login used for authenticated cases.
    pub creds: Credentials,
    /// Per-operation timeout.
    pub io_timeout: Duration,
    /// Whether a system user may be created for Dante's username method.
    pub allow_system_user: bool,
    /// socksngd's `log_level`.
    pub socksng_log_level: String,
}

/// A subject after preparation.
pub struct Subject {
    /// Name used in filters, JSON and the table.
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// Version string, when known.
    pub version: String,
    /// `Err(reason)` when it cannot run at all.
    pub usable: Result<(), String>,
    /// `Err(reason)` when it cannot run the authenticated case.
    pub auth: Result<(), String>,
    /// `Some(reason)` when it is known not to do UDP ASSOCIATE (still probed).
    pub udp_note: Option<String>,
    /// Something to know when reading its authenticated figures.
    pub auth_note: Option<String>,
    dir: PathBuf,
    _system_user: Option<SystemUser>,
    starts: u32,
    /// For the TLS subjects: how clients reach them.
    tls: Option<crate::socks::TlsRoute>,
}

/// A running instance: where to send load and which processes make up the proxy.
pub struct Instance {
    /// Load route.
    pub route: Route,
    /// Processes started, in stop order.
    procs: Vec<Proc>,
    cgroup: Option<Arc<Cgroup>>,
    core: Option<usize>,
}

impl Instance {
    /// How to measure the proxy (no roots for direct).
    pub fn meter(&self) -> Meter {
        Meter {
            roots: self.procs.iter().map(Proc::pid).collect(),
            cgroup: self.cgroup.clone(),
            core: self.core,
        }
    }

    /// Stops every process, in order, each with a grace period.
    pub async fn stop(mut self) {
        for p in &mut self.procs {
            p.stop(Duration::from_secs(3)).await;
        }
    }
}

impl Env {
    /// Settings for test suites that need a real peer: a run directory of their own, no
    /// pinning, no system user for Dante.
    pub async fn for_tests(dir: PathBuf) -> Result<Env, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Env {
            dir,
            proxy_cpu: None,
            nice: None,
            targets: crate::targets::start()
                .await
                .map_err(|e| format!("targets: {e}"))?,
            creds: Credentials {
                user: BENCH_USER.into(),
                pass: "not-used".into(),
            },
            io_timeout: Duration::from_secs(10),
            allow_system_user: false,
            socksng_log_level: "warn".into(),
        })
    }
}

/// Starts the built-in peer `name` (`dante`, `microsocks`, `ssh-d`) without authentication,
/// ready for CONNECT; returns the instance (stop it when done) and its SOCKS address.
pub async fn start_peer(name: &str, env: &Env) -> Result<(Subject, Instance, SocketAddr), String> {
    let kind = Subject::builtin(name, Path::new("socksngd"))
        .ok_or_else(|| format!("no built-in peer {name:?}"))?;
    let mut subject = Subject::prepare(name, kind, env);
    let instance = subject.start(env, false).await?;
    let addr = match &instance.route {
        Route::Proxy { addr, .. } => *addr,
        Route::Direct => return Err(format!("{name} is not a proxy")),
    };
    Ok((subject, instance, addr))
}

/// A free TCP port on 127.0.0.1 (bound and released; the small race is acceptable here).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn current_user() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or null; we copy out at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() {
            return "root".into();
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

/// A system user created for Dante's username method; deleted again on drop.
struct SystemUser {
    name: String,
}

impl SystemUser {
    /// Creates `name` (no home, no login shell) with `pass`, or reuses and re-passwords it.
    fn ensure(name: &str, pass: &str) -> Result<Option<SystemUser>, String> {
        let exists = Command::new("id")
            .arg(name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let mut created = None;
        if !exists {
            run_capture(
                Command::new("useradd").args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    name,
                ]),
                None,
                Duration::from_secs(30),
            )?;
            created = Some(SystemUser { name: name.into() });
        }
        run_capture(
            &mut Command::new("chpasswd"),
            Some(&format!("{name}:{pass}\n")),
            Duration::from_secs(30),
        )?;
        Ok(created)
    }
}

impl Drop for SystemUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel")
            .arg(&self.name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Subject {
    /// The built-in subject called `name`, or `None`.
    pub fn builtin(name: &str, socksngd: &Path) -> Option<Kind> {
        Some(match name {
            "direct" => Kind::Direct,
            "socksng" => Kind::Socksng {
                bin: socksngd.to_path_buf(),
            },
            "socksng-tls" => Kind::SocksngTls {
                bin: socksngd.to_path_buf(),
            },
            "stunnel-dante" => Kind::StunnelDante,
            "dante" => Kind::Dante,
            "microsocks" => Kind::Microsocks,
            "ssh-d" => Kind::SshD,
            _ => return None,
        })
    }

    /// Checks that its programs are there (installing none), writes the files every start
    /// needs.
    pub fn prepare(name: &str, kind: Kind, env: &Env) -> Subject {
        let dir = env.dir.join(name);
        let mut s = Subject {
            name: name.to_owned(),
            kind,
            version: String::new(),
            usable: Ok(()),
            auth: Ok(()),
            udp_note: None,
            auth_note: None,
            dir,
            _system_user: None,
            starts: 0,
            tls: None,
        };
        if let Err(e) = std::fs::create_dir_all(&s.dir) {
            s.usable = Err(format!("cannot create {}: {e}", s.dir.display()));
            return s;
        }
        if let Err(e) = s.prepare_kind(env) {
            s.usable = Err(e);
        }
        if let Err(e) = &s.usable {
            s.auth = Err(e.clone());
        }
        s
    }

    fn prepare_kind(&mut self, env: &Env) -> Result<(), String> {
        for bin in self.kind.programs() {
            find(bin)?;
        }
        if matches!(self.kind, Kind::SocksngTls { .. } | Kind::StunnelDante) {
            self.tls = Some(self.make_certificate()?);
            self.udp_note = Some("UDP over TLS is not measured".into());
        }
        let creds = &env.creds;
        let kind = match self.kind.clone() {
            Kind::SocksngTls { bin } => Kind::Socksng { bin },
            Kind::StunnelDante => Kind::Dante,
            other => other,
        };
        match kind {
            Kind::Direct => {
                self.version = "no proxy".into();
                self.auth = Err("no proxy".into());
                self.udp_note = None;
            }
            Kind::Socksng { bin } => {
                if !bin.is_file() {
                    return Err(format!(
                        "{} not found: build it with `cargo build --release -p socksngd` \
                         or pass --socksngd",
                        bin.display()
                    ));
                }
                self.version = run_capture(Command::new(&bin).arg("--version"), None, secs(10))?
                    .trim()
                    .to_owned();
                let users = self.dir.join("users");
                let _ = std::fs::remove_file(&users);
                let r = run_capture(
                    Command::new(&bin)
                        .args(["passwd", "--users-file"])
                        .arg(&users)
                        .arg(&creds.user),
                    Some(&format!("{}\n", creds.pass)),
                    secs(60),
                );
                if let Err(e) = r {
                    self.auth = Err(format!("socksngd passwd failed: {e}"));
                }
            }
            Kind::Dante => {
                self.version = run_capture(Command::new(danted()).arg("-v"), None, secs(10))
                    .unwrap_or_else(|e| e)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                // Dante's username method checks the system password database (getpwnam/
                // getspnam + crypt), so it needs a real system user and root to read shadow.
                self.auth = if !env.allow_system_user {
                    Err(
                        "Dante's username method needs a system user; --no-system-user given"
                            .into(),
                    )
                } else if !is_root() {
                    Err(
                        "Dante's username method checks system users (passwd/shadow); \
                         creating one needs root"
                            .into(),
                    )
                } else {
                    SystemUser::ensure(&creds.user, &creds.pass).map(|u| {
                        self._system_user = u;
                    })
                };
                if self.auth.is_ok() {
                    let scheme = shadow_scheme(&creds.user);
                    self.auth_note = Some(format!(
                        "Dante verifies every login against the system password database with \
                         crypt(3); system user {} (removed after the run if created by it), \
                         password hash {scheme}",
                        creds.user
                    ));
                }
                self.udp_note = None;
            }
            Kind::Microsocks => {
                self.version = "microsocks (Debian package)".into();
                if let Ok(v) = run_capture(
                    Command::new("dpkg-query").args(["-W", "-f", "${Version}", "microsocks"]),
                    None,
                    secs(10),
                ) {
                    self.version = format!("microsocks {}", v.trim());
                }
                self.udp_note = Some("microsocks implements CONNECT only".into());
            }
            Kind::SshD => {
                self.version = run_capture(Command::new("ssh").arg("-V"), None, secs(10))
                    .unwrap_or_else(|e| e)
                    .trim()
                    .to_owned();
                self.auth = Err("ssh -D has no SOCKS authentication".into());
                self.udp_note = Some("ssh -D does not implement UDP ASSOCIATE".into());
                if is_root() {
                    // sshd's privilege separation directory, normally made by the service.
                    let _ = std::fs::create_dir_all("/run/sshd");
                }
                for key in ["host_key", "client_key"] {
                    let path = self.dir.join(key);
                    let _ = std::fs::remove_file(&path);
                    let _ = std::fs::remove_file(path.with_extension("pub"));
                    run_capture(
                        Command::new("ssh-keygen")
                            .args(["-q", "-t", "ed25519", "-N", "", "-C", "socksng-bench", "-f"])
                            .arg(&path),
                        None,
                        secs(30),
                    )?;
                }
                let pubkey = std::fs::read_to_string(self.dir.join("client_key.pub"))
                    .map_err(|e| format!("client key: {e}"))?;
                std::fs::write(self.dir.join("authorized_keys"), pubkey)
                    .map_err(|e| format!("authorized_keys: {e}"))?;
            }
            Kind::Custom { cmd, auth_cmd } => {
                self.version = cmd.clone();
                if auth_cmd.is_none() {
                    self.auth = Err("no --subject-auth command given".into());
                }
            }
            Kind::SocksngTls { .. } | Kind::StunnelDante => unreachable!("mapped above"),
        }
        if matches!(self.kind, Kind::StunnelDante) {
            let stunnel = run_capture(
                Command::new(find("stunnel4")?).arg("-version"),
                None,
                secs(10),
            )
            .unwrap_or_else(|e| e);
            let first = stunnel
                .lines()
                .find(|l| l.contains("stunnel"))
                .unwrap_or("stunnel");
            self.version = format!("{} + {}", first.trim(), self.version);
        } else if matches!(self.kind, Kind::SocksngTls { .. }) {
            self.version = format!("{} over TLS", self.version);
        }
        Ok(())
    }

    /// A throwaway CA and a certificate for 127.0.0.1 in the subject's directory
    /// (`tls.pem`, `tls.key`); the route trusts that CA.
    fn make_certificate(&self) -> Result<crate::socks::TlsRoute, String> {
        let ca = crate::tls::Ca::new("socksng-bench CA");
        ca.server_leaf(&["localhost", "127.0.0.1"])
            .write(&self.dir, "tls");
        let mut roots = rustls::RootCertStore::empty();
        let ca_der = rustls::pki_types::pem::PemObject::from_pem_slice(ca.pem().as_bytes())
            .map_err(|e| format!("CA certificate: {e}"))?;
        roots
            .add(ca_der)
            .map_err(|e| format!("CA certificate: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"socks".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("localhost")
            .map_err(|e| format!("server name: {e}"))?;
        Ok(crate::socks::TlsRoute {
            config: Arc::new(config),
            name,
        })
    }

    /// Starts a fresh instance (with username/password when `auth`) and waits until a CONNECT
    /// through it reaches the echo.
    pub async fn start(&mut self, env: &Env, auth: bool) -> Result<Instance, String> {
        self.usable.clone()?;
        if auth {
            self.auth.clone()?;
        }
        self.starts += 1;
        let tag = format!("{}{}", if auth { "auth-" } else { "" }, self.starts);
        let log = self.dir.join(format!("{tag}.log"));
        let creds = auth.then(|| env.creds.clone());
        let port = free_port().map_err(|e| format!("free port: {e}"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if matches!(self.kind, Kind::Direct) {
            return Ok(Instance {
                route: Route::Direct,
                procs: Vec::new(),
                cgroup: None,
                core: None,
            });
        }
        let cgroup = Cgroup::create(&format!(
            "socksng-bench.{}.{}.{tag}",
            std::process::id(),
            self.name
        ))
        .map(Arc::new);
        let spawn = |name: &str, cmd: Command| {
            Proc::spawn(name, cmd, env.proxy_cpu, env.nice, cgroup.as_deref(), &log)
                .map_err(|e| format!("cannot start {name}: {e}"))
        };
        let procs = match &self.kind {
            Kind::Direct => unreachable!("handled above"),
            Kind::Socksng { bin } | Kind::SocksngTls { bin } => {
                let conf = self.dir.join(format!("{tag}.toml"));
                let mut text = socksng_config(addr, auth, &env.socksng_log_level);
                if self.tls.is_some() {
                    text.push_str("\n[tls]\ncert = \"tls.pem\"\nkey = \"tls.key\"\n");
                }
                write(&conf, &text)?;
                let mut c = Command::new(bin);
                c.arg("--config").arg(&conf).arg("run");
                vec![spawn("socksngd", c)?]
            }
            Kind::StunnelDante => {
                let dante_port = free_port().map_err(|e| format!("free port: {e}"))?;
                let dante_addr = SocketAddr::from(([127, 0, 0, 1], dante_port));
                let conf = self.dir.join(format!("{tag}.conf"));
                write(&conf, &dante_config(dante_addr, auth, &log, is_root()))?;
                let mut dante = Command::new(danted());
                dante
                    .arg("-f")
                    .arg(&conf)
                    .arg("-N")
                    .arg("1")
                    .arg("-p")
                    .arg(self.dir.join(format!("{tag}.pid")));
                let stunnel_conf = self.dir.join(format!("{tag}.stunnel"));
                write(
                    &stunnel_conf,
                    &stunnel_config(
                        addr,
                        dante_addr,
                        &self.dir.join("tls.pem"),
                        &self.dir.join("tls.key"),
                    ),
                )?;
                let mut stunnel = Command::new(find("stunnel4")?);
                stunnel.arg(&stunnel_conf);
                vec![spawn("danted", dante)?, spawn("stunnel", stunnel)?]
            }
            Kind::Dante => {
                let conf = self.dir.join(format!("{tag}.conf"));
                write(&conf, &dante_config(addr, auth, &log, is_root()))?;
                let mut c = Command::new(danted());
                c.arg("-f")
                    .arg(&conf)
                    .arg("-N")
                    .arg("1")
                    .arg("-p")
                    .arg(self.dir.join(format!("{tag}.pid")));
                vec![spawn("danted", c)?]
            }
            Kind::Microsocks => {
                let mut c = Command::new("microsocks");
                c.args(["-i", "127.0.0.1", "-p", &port.to_string()]);
                if let Some(cr) = &creds {
                    c.args(["-u", &cr.user, "-P", &cr.pass]);
                }
                vec![spawn("microsocks", c)?]
            }
            Kind::SshD => self.start_ssh(addr, &log, &spawn).await?,
            Kind::Custom { cmd, auth_cmd } => {
                let template = if auth {
                    auth_cmd.as_deref().unwrap_or(cmd)
                } else {
                    cmd
                };
                let line = template
                    .replace("{port}", &port.to_string())
                    .replace("{user}", &env.creds.user)
                    .replace("{pass}", &env.creds.pass);
                let mut c = Command::new("sh");
                c.arg("-c").arg(format!("exec {line}"));
                vec![spawn(&self.name, c)?]
            }
        };
        let mut inst = Instance {
            route: Route::Proxy {
                addr,
                auth: creds,
                tls: self.tls.clone(),
            },
            procs,
            cgroup,
            core: env.proxy_cpu,
        };
        if let Err(e) = wait_ready(&mut inst, env, &log).await {
            inst.stop().await;
            return Err(e);
        }
        Ok(inst)
    }

    /// Starts the private sshd of a prepared `ssh-d` subject (keys made by `prepare`) and
    /// waits for its port.
    async fn spawn_sshd(
        &self,
        log: &Path,
        spawn: &dyn Fn(&str, Command) -> Result<Proc, String>,
    ) -> Result<(Proc, u16), String> {
        let ssh_port = free_port().map_err(|e| format!("free port: {e}"))?;
        let d = &self.dir;
        let conf = d.join(format!("sshd_config.{ssh_port}"));
        write(
            &conf,
            &format!(
                "Port {ssh_port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile none\n\
                 AuthorizedKeysFile {ak}\nPermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 AllowTcpForwarding yes\nPermitTTY no\nX11Forwarding no\n\
                 MaxStartups 100\nLogLevel ERROR\n",
                hk = d.join("host_key").display(),
                ak = d.join("authorized_keys").display(),
            ),
        )?;
        let sshd_bin = find("sshd")?;
        let mut c = Command::new(sshd_bin);
        c.arg("-f").arg(&conf).args(["-D", "-e"]);
        let mut sshd = spawn("sshd", c)?;
        // Wait for sshd's port before starting the client.
        let deadline = Instant::now() + secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", ssh_port)).is_ok() {
                break;
            }
            if let Some(st) = sshd.exited() {
                return Err(format!("sshd exited ({st}): {}", log_tail(log, 5)));
            }
            if Instant::now() > deadline {
                return Err(format!("sshd did not listen: {}", log_tail(log, 5)));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok((sshd, ssh_port))
    }

    /// Starts only the sshd of a prepared `ssh-d` subject, for tests that run ssh themselves.
    /// Returns the process (stop it when done), its port on 127.0.0.1, the private key that
    /// logs in, and the user to log in as.
    pub async fn start_sshd_only(&self) -> Result<(Proc, u16, PathBuf, String), String> {
        self.usable.clone()?;
        let log = self.dir.join("sshd-only.log");
        let spawn = |name: &str, cmd: Command| {
            Proc::spawn(name, cmd, None, None, None, &log)
                .map_err(|e| format!("cannot start {name}: {e}"))
        };
        let (sshd, port) = self.spawn_sshd(&log, &spawn).await?;
        Ok((sshd, port, self.dir.join("client_key"), current_user()))
    }

    async fn start_ssh(
        &self,
        socks: SocketAddr,
        log: &Path,
        spawn: &dyn Fn(&str, Command) -> Result<Proc, String>,
    ) -> Result<Vec<Proc>, String> {
        let (sshd, ssh_port) = self.spawn_sshd(log, spawn).await?;
        let d = &self.dir;
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null", "-N", "-D"])
            .arg(socks.to_string())
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ExitOnForwardFailure=yes",
                "-o",
                "LogLevel=ERROR",
                "-i",
            ])
            .arg(d.join("client_key"))
            .args(["-p", &ssh_port.to_string()])
            .arg(format!("{}@127.0.0.1", current_user()));
        let ssh = spawn("ssh", c)?;
        // Stop order: the client first, so sshd's session processes end with it.
        Ok(vec![ssh, sshd])
    }
}

/// The crypt(3) scheme of a user's shadow entry, e.g. `yescrypt ($y$)`.
fn shadow_scheme(user: &str) -> String {
    let entry = run_capture(
        Command::new("getent").args(["shadow", user]),
        None,
        secs(10),
    )
    .unwrap_or_default();
    let hash = entry.split(':').nth(1).unwrap_or("");
    let id = hash.split('$').nth(1).unwrap_or("");
    let name = match id {
        "y" => "yescrypt",
        "gy" => "gost-yescrypt",
        "7" => "scrypt",
        "6" => "sha512crypt",
        "5" => "sha256crypt",
        "2b" | "2y" | "2a" => "bcrypt",
        "1" => "md5crypt",
        _ => "unknown",
    };
    format!("{name} (${id}$)")
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn danted() -> PathBuf {
    which("danted").unwrap_or_else(|| PathBuf::from("/usr/sbin/danted"))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The socksngd configuration: one worker, loopback targets allowed, no session limit (the
/// idle case opens up to the descriptor limit), password auth for the auth variant.
pub fn socksng_config(addr: SocketAddr, auth: bool, log_level: &str) -> String {
    let auth_section = if auth {
        "[auth]\nmethods = [\"password\"]\nusers_file = \"users\"\n"
    } else {
        "[auth]\nmethods = [\"none\"]\n"
    };
    format!(
        "listen = [\"{addr}\"]\nworkers = 1\nlog_level = \"{log_level}\"\n\n{auth_section}\n\
         [limits]\nmax_sessions = 0\nmax_sessions_per_user = 0\n\n\
         [[rules]]\naction = \"allow\"\nto = [\"127.0.0.0/8\"]\n"
    )
}

/// stunnel in front of Dante: TLS on `addr` (ALPN "socks", as socksngd), plain to `dante`;
/// one process, in the foreground, the threading model Debian builds.
pub fn stunnel_config(addr: SocketAddr, dante: SocketAddr, cert: &Path, key: &Path) -> String {
    format!(
        "foreground = yes\npid =\nsyslog = no\ndebug = 3\n\n[socks]\naccept = {addr}\n\
         connect = {dante}\ncert = {cert}\nkey = {key}\n",
        cert = cert.display(),
        key = key.display(),
    )
}

/// The danted.conf: internal and external 127.0.0.1, method none or username, pass rules for
/// loopback (every command, so UDP ASSOCIATE and its replies too).
pub fn dante_config(addr: SocketAddr, auth: bool, log: &Path, root: bool) -> String {
    let method = if auth { "username" } else { "none" };
    let users = if root {
        "user.privileged: root\nuser.unprivileged: nobody\n"
    } else {
        ""
    };
    format!(
        "logoutput: {log}\nerrorlog: {log}\n\
         internal: {ip} port = {port}\nexternal: 127.0.0.1\n\
         clientmethod: none\nsocksmethod: {method}\n{users}\
         client pass {{\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n}}\n\
         socks pass {{\n  from: 127.0.0.0/8 to: 127.0.0.0/8\n}}\n",
        log = log.display(),
        ip = addr.ip(),
        port = addr.port(),
    )
}

/// Polls until a CONNECT through the instance reaches the echo and one exchange succeeds.
async fn wait_ready(inst: &mut Instance, env: &Env, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + secs(15);
    loop {
        for p in &mut inst.procs {
            if let Some(st) = p.exited() {
                return Err(format!("{} exited ({st}): {}", p.name, log_tail(log, 6)));
            }
        }
        let last = match probe(&inst.route, env).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(format!(
                "not ready after 15 s (last probe: {last}); log: {}",
                log_tail(log, 6)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn probe(route: &Route, env: &Env) -> Result<(), String> {
    let limit = env.io_timeout.min(secs(2));
    let mut s = open(route, None, env.targets.echo, limit)
        .await
        .map_err(|e| e.to_string())?;
    step("probe write", limit, s.write_all(b"ping"))
        .await
        .map_err(|e| e.to_string())?;
    let mut b = [0u8; 4];
    step("probe read", limit, s.read_exact(&mut b))
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_name_the_port_and_method() {
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let s = socksng_config(a, true, "info");
        assert!(s.contains("listen = [\"127.0.0.1:4000\"]"));
        assert!(s.contains("methods = [\"password\"]"));
        assert!(s.contains("to = [\"127.0.0.0/8\"]"));
        let d = dante_config(a, false, Path::new("/tmp/x.log"), true);
        assert!(d.contains("internal: 127.0.0.1 port = 4000"));
        assert!(d.contains("socksmethod: none"));
    }
}
