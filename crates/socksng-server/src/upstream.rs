//! Upstream chaining: the SOCKS servers this one can pass requests on to (`[[upstreams]]`),
//! the routes that choose direct or upstreams for a request (`[[routes]]`, matched like rules),
//! their health (an upstream that fails is passed over for `forwarding.retry_after`; direct is
//! used only where a route lists it), and opening a request through one with the client
//! library, HOPS included (draft section 3.3).

use crate::config::{Config, DIRECT};
use crate::policy::{Destination, Groups, Selector};
use crate::stream::Plaintext;
use socksng_client::{Client, ClientError, ProxyUrl, Transport};
use socksng_proto::wire::ng::ServedRange;
use socksng_proto::{Address, Command, Host, ReplyCode};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// One way a route can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// This server reaches the destination itself.
    Direct,
    /// Through the upstream with this index.
    Upstream(usize),
}

/// A configured upstream and its health.
struct Upstream {
    name: String,
    url: ProxyUrl,
    /// Set while it is passed over after a failure.
    down_until: Mutex<Option<Instant>>,
    /// The ranges it announced (`None`: it announces none), and when it was asked.
    announced: Mutex<Option<(Instant, Option<Vec<ServedRange>>)>>,
}

/// How long the probe of an upstream that failed a request may take.
const PROBE_LIMIT: Duration = Duration::from_secs(2);

/// How long the ranges an upstream announced are taken as they were.
const ANNOUNCED_FOR: Duration = Duration::from_secs(60);

/// The upstreams and the routes to them.
pub(crate) struct Upstreams {
    servers: Vec<Upstream>,
    routes: Vec<(Selector, Vec<Via>)>,
    groups: Groups,
    retry_after: Duration,
    /// `external`: connections to upstreams leave from these too.
    sources: Vec<std::net::IpAddr>,
    /// `timeouts.half_close`: how long a TLS upstream's task may drain after its session.
    pub(crate) drain: Duration,
}

/// The TLS task of an upstream reached over TLS, to run beside the relay.
pub(crate) type Carry = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A request opened through an upstream.
pub(crate) struct Opened {
    /// The upstream connection, now carrying the request's data.
    pub stream: Plaintext,
    /// For TLS: the task that must run while `stream` is used.
    pub carry: Option<Carry>,
    /// The address the upstream reported.
    pub bound: Address,
    /// The upstream's own address.
    pub peer: Option<std::net::SocketAddr>,
}

/// Why a request could not be opened through any of its upstreams.
pub(crate) struct NotOpened {
    /// The reply for the client.
    pub code: ReplyCode,
    /// Why, for the log.
    pub why: String,
}

const ONLY_DIRECT: &[Via] = &[Via::Direct];

impl Upstreams {
    /// From a validated configuration.
    pub(crate) fn new(cfg: &Config) -> Upstreams {
        let servers: Vec<Upstream> = cfg
            .upstreams
            .iter()
            .filter_map(|up| {
                Some(Upstream {
                    name: up.name.clone(),
                    url: cfg.upstream_url(up).ok()?,
                    down_until: Mutex::new(None),
                    announced: Mutex::new(None),
                })
            })
            .collect();
        let index = |name: &str| servers.iter().position(|s| s.name == name);
        let routes = cfg
            .routes
            .iter()
            .map(|r| {
                let via = r
                    .via
                    .iter()
                    .filter_map(|v| match v.as_str() {
                        DIRECT => Some(Via::Direct),
                        name => index(name).map(Via::Upstream),
                    })
                    .collect();
                let selector = Selector::new(&r.users, &r.to, &r.domains, &r.ports, &r.commands);
                (selector, via)
            })
            .collect();
        Upstreams {
            servers,
            routes,
            groups: cfg.groups.clone(),
            retry_after: cfg.forwarding.retry_after,
            sources: cfg.external.clone(),
            drain: cfg.timeouts.half_close,
        }
    }

    /// The ways a request may take, in order of preference: upstreams that are up first, then
    /// those passed over after a failure (they may be back), with `Direct` where the route
    /// lists it. A request no route matches goes direct.
    pub(crate) fn ways(&self, user: Option<&str>, cmd: Command, target: &Address) -> Vec<Via> {
        let (name, ip) = match &target.host {
            Host::Ip(ip) => (None, Some(crate::policy::canonical(*ip))),
            Host::Domain(d) => (Some(d.as_str()), None),
        };
        let dest = Destination {
            name,
            ip,
            port: target.port,
        };
        let via = self
            .routes
            .iter()
            .find(|(selector, _)| selector.selects(user, cmd, &dest, &self.groups))
            .map_or(ONLY_DIRECT, |(_, via)| via.as_slice());
        let now = Instant::now();
        let (up, down): (Vec<Via>, Vec<Via>) = via.iter().partition(|v| match v {
            Via::Direct => true,
            Via::Upstream(i) => !self.is_down(*i, now),
        });
        up.into_iter().chain(down).collect()
    }

    fn is_down(&self, i: usize, now: Instant) -> bool {
        let until = self.servers[i]
            .down_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|t| t > now)
    }

    /// The names of `ways`, for logs.
    pub(crate) fn names(&self, ways: &[usize]) -> String {
        let names: Vec<&str> = ways.iter().map(|&i| self.name(i)).collect();
        names.join(",")
    }

    /// The upstream's name, for logs.
    pub(crate) fn name(&self, i: usize) -> &str {
        &self.servers[i].name
    }

    /// Whether the upstream still takes TCP connections (a short probe).
    async fn answers(&self, i: usize) -> bool {
        let url = &self.servers[i].url;
        let probe = tokio::net::TcpStream::connect((url.host.as_str(), url.port));
        matches!(tokio::time::timeout(PROBE_LIMIT, probe).await, Ok(Ok(_)))
    }

    fn failed(&self, i: usize, why: &str) {
        let server = &self.servers[i];
        let mut until = server.down_until.lock().unwrap_or_else(|p| p.into_inner());
        *until = Some(Instant::now() + self.retry_after);
        tracing::warn!(
            upstream = %server.name,
            url = %server.url,
            error = why,
            retry_after = ?self.retry_after,
            "upstream failed: passed over until the retry time"
        );
    }

    fn worked(&self, i: usize) {
        let server = &self.servers[i];
        let mut until = server.down_until.lock().unwrap_or_else(|p| p.into_inner());
        if until.take().is_some() {
            tracing::info!(upstream = %server.name, "upstream works again");
        }
    }

    /// The upstreams a request without a destination yet (UDP, LISTEN) takes: routes that
    /// name destinations (networks, domains, ports) are for CONNECT, so only those that
    /// select by user and command apply. Empty: direct.
    pub(crate) fn ways_without_destination(&self, user: Option<&str>, cmd: Command) -> Vec<usize> {
        let Some((_, via)) = self
            .routes
            .iter()
            .find(|(selector, _)| selector.selects_without_destination(user, cmd, &self.groups))
        else {
            return Vec::new();
        };
        let now = Instant::now();
        let leading = via.iter().map_while(|v| match v {
            Via::Upstream(i) => Some(*i),
            Via::Direct => None,
        });
        let (up, down): (Vec<usize>, Vec<usize>) = leading.partition(|i| !self.is_down(*i, now));
        up.into_iter().chain(down).collect()
    }

    /// The upstreams every CONNECT of `user` goes to, when a route sends them all there (it
    /// selects by user alone and does not list direct): what this server reaches for that
    /// user is then what those upstreams reach.
    pub(crate) fn serving_everything(&self, user: Option<&str>) -> Option<Vec<usize>> {
        // The first route that can take any of the user's CONNECTs decides; one that picks
        // by destination means some go another way.
        let (selector, via) = self.routes.iter().find(|(selector, _)| {
            selector.applies_to_any_destination(user, Command::Connect, &self.groups)
        })?;
        if selector.names_destinations() || via.contains(&Via::Direct) {
            return None;
        }
        Some(self.ways_without_destination(user, Command::Connect))
    }

    /// The ranges the first of `ways` that answers announces (SOCKS-NG CAPABILITIES; a
    /// plain SOCKS5 upstream announces none), asked at most once a minute per upstream.
    pub(crate) async fn announced(
        &self,
        ways: &[usize],
        hops: u8,
        limit: Duration,
    ) -> Option<Vec<ServedRange>> {
        let now = Instant::now();
        let first = *ways.first()?;
        let cached = self.servers[first]
            .announced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some((_, ranges)) = cached.filter(|(at, _)| now < *at + ANNOUNCED_FOR) {
            return ranges;
        }
        // An upstream that cannot say (a plain SOCKS5 server) is not asked again for a while
        // either: every CAPABILITIES here would otherwise cost a connection there.
        let ranges = self
            .first_working(ways, hops, limit, |client| async move {
                client.capabilities().await
            })
            .await
            .ok()
            .map(|(_, caps)| caps.ranges);
        let mut cache = self.servers[first]
            .announced
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *cache = Some((now, ranges.clone()));
        ranges
    }

    /// Opens something through the upstreams in `ways`, the first that works, each attempt
    /// within `limit`: `open` is given a client for the upstream (carrying `hops`). A refusal
    /// the upstream sends is the answer (the upstream works); a failure to reach or talk to
    /// it passes it over and tries the next.
    pub(crate) async fn first_working<T, F, Fut>(
        &self,
        ways: &[usize],
        hops: u8,
        limit: Duration,
        open: F,
    ) -> Result<(usize, T), NotOpened>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut last = NotOpened {
            code: ReplyCode::GENERAL_FAILURE,
            why: "no upstream".into(),
        };
        for &i in ways {
            let client = Client::new(self.servers[i].url.clone())
                .with_hops(hops)
                .with_sources(self.sources.clone());
            let why = match tokio::time::timeout(limit, open(client)).await {
                Ok(Ok(opened)) => {
                    self.worked(i);
                    return Ok((i, opened));
                }
                Ok(Err(ClientError::Refused { code })) => {
                    self.worked(i);
                    return Err(NotOpened {
                        code,
                        why: format!("upstream {} refused: {code}", self.name(i)),
                    });
                }
                Ok(Err(ClientError::NoReply)) => {
                    // It negotiated, so it works; this request failed there.
                    self.worked(i);
                    return Err(NotOpened {
                        code: ReplyCode::GENERAL_FAILURE,
                        why: format!(
                            "upstream {} closed the connection without a reply (ssh -D does \
                             so for a target it cannot reach)",
                            self.name(i)
                        ),
                    });
                }
                // Failures of the request, not of the upstream: it stays in.
                Ok(Err(e @ (ClientError::Resolve { .. } | ClientError::BadTarget(_)))) => {
                    return Err(NotOpened {
                        code: ReplyCode::HOST_UNREACHABLE,
                        why: format!("for upstream {}: {e}", self.name(i)),
                    });
                }
                Ok(Err(ClientError::NotSupported(what))) => {
                    self.worked(i);
                    return Err(NotOpened {
                        code: ReplyCode::COMMAND_NOT_SUPPORTED,
                        why: format!("upstream {} does not support {what}", self.name(i)),
                    });
                }
                // The upstream's TLS, login or protocol: it cannot serve anyone.
                Ok(Err(
                    e @ (ClientError::Tls(_)
                    | ClientError::AuthFailed
                    | ClientError::NoAcceptableMethod
                    | ClientError::Protocol(_)),
                )) => e.to_string(),
                // A broken connection or no answer in time may be the request's (a target
                // that does not answer the upstream either): only an upstream that no longer
                // takes connections is taken for down.
                Ok(Err(e)) => {
                    let why = e.to_string();
                    if self.answers(i).await {
                        return Err(NotOpened {
                            code: ReplyCode::GENERAL_FAILURE,
                            why: format!("upstream {}: {why}", self.name(i)),
                        });
                    }
                    why
                }
                Err(_) => {
                    if self.answers(i).await {
                        return Err(NotOpened {
                            code: ReplyCode::TTL_EXPIRED,
                            why: format!("upstream {}: no answer within {limit:?}", self.name(i)),
                        });
                    }
                    format!("no answer within {limit:?}")
                }
            };
            self.failed(i, &why);
            last = NotOpened {
                code: ReplyCode::GENERAL_FAILURE,
                why: format!("upstream {} failed: {why}", self.name(i)),
            };
        }
        Err(last)
    }

    /// Opens CONNECT `target` through the first of `ways` that works.
    pub(crate) async fn connect(
        &self,
        ways: &[usize],
        target: &Address,
        hops: u8,
        limit: Duration,
    ) -> Result<(usize, Opened), NotOpened> {
        let (i, proxied) = self
            .first_working(ways, hops, limit, |client| {
                let target = target.clone();
                async move { client.connect(target).await }
            })
            .await?;
        let bound = proxied.bound().clone();
        let transport = proxied.into_inner();
        let peer = transport.peer_addr().ok();
        match plaintext(transport, self.drain) {
            Ok((stream, carry)) => Ok((
                i,
                Opened {
                    stream,
                    carry,
                    bound,
                    peer,
                },
            )),
            Err(e) => Err(NotOpened {
                code: ReplyCode::GENERAL_FAILURE,
                why: format!("socket pair for TLS: {e}"),
            }),
        }
    }
}

/// An upstream connection as the relay takes it; TLS goes through a socket pair, with the
/// task that carries it.
pub(crate) fn plaintext(
    transport: Transport,
    drain: Duration,
) -> std::io::Result<(Plaintext, Option<Carry>)> {
    match transport {
        Transport::Tcp(tcp) => Ok((Plaintext::Tcp(tcp), None)),
        Transport::Tls(tls) => {
            let fd = std::os::fd::AsRawFd::as_raw_fd(tls.get_ref().0);
            let (stream, carry) = crate::tls::bridge(tls, fd, drain)?;
            Ok((stream, Some(Box::pin(carry))))
        }
    }
}
