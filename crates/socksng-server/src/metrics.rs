//! Prometheus metrics: the process-wide counters and gauges sessions update (prometheus-client),
//! and the endpoint that serves them as text (`GET /metrics`) on its own address. Updating a
//! metric is an atomic add; nothing here takes a lock on the session path except the first
//! use of a label set.

#[cfg(not(feature = "metrics"))]
pub(crate) use disabled::metrics;
#[cfg(feature = "metrics")]
pub(crate) use enabled::{metrics, serve};

#[cfg(feature = "metrics")]
mod enabled {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
    use prometheus_client::registry::Registry;
    use std::sync::OnceLock;
    use std::time::Duration;
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;

    type Labels = [(&'static str, &'static str); 2];
    type Label = [(&'static str, &'static str); 1];

    /// Every metric socksngd exports.
    pub(crate) struct Metrics {
        registry: Registry,
        /// Sessions ended, by command and outcome kind.
        sessions: Family<Labels, Counter>,
        /// Sessions running, by command.
        active: Family<Label, Gauge>,
        /// From accept to the request (TLS and login included), successful handshakes only.
        handshake_seconds: Histogram,
        /// Bytes relayed, by direction.
        bytes: Family<Label, Counter>,
        /// Logins refused (wrong password, throttled, or not checked).
        auth_failures: Counter,
        /// SOCKS-NG listeners open.
        listeners: Gauge,
        /// Bytes relayed, by service class and direction.
        class_bytes: Family<ClassLabels, Counter>,
        /// Sessions ended, by service class and outcome kind (refused: limits and rules).
        class_sessions: Family<ClassLabels, Counter>,
    }

    type ClassLabels = Vec<(&'static str, String)>;

    /// The metrics of this process.
    pub(crate) fn metrics() -> &'static Metrics {
        static METRICS: OnceLock<Metrics> = OnceLock::new();
        METRICS.get_or_init(|| {
            let mut registry = Registry::with_prefix("socksng");
            let m = Metrics {
                sessions: Family::default(),
                active: Family::default(),
                handshake_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
                bytes: Family::default(),
                auth_failures: Counter::default(),
                listeners: Gauge::default(),
                class_bytes: Family::default(),
                class_sessions: Family::default(),
                registry: Registry::default(),
            };
            registry.register(
                "sessions",
                "Sessions ended, by command and how they ended",
                m.sessions.clone(),
            );
            registry.register(
                "sessions_active",
                "Sessions running, by command",
                m.active.clone(),
            );
            registry.register(
                "handshake_seconds",
                "From accept to the request, TLS and login included",
                m.handshake_seconds.clone(),
            );
            registry.register(
                "relayed_bytes",
                "Bytes relayed, by direction",
                m.bytes.clone(),
            );
            registry.register("auth_failures", "Logins refused", m.auth_failures.clone());
            registry.register("listeners", "SOCKS-NG listeners open", m.listeners.clone());
            registry.register(
                "class_relayed_bytes",
                "Bytes relayed, by service class and direction",
                m.class_bytes.clone(),
            );
            registry.register(
                "class_sessions",
                "Sessions ended, by service class and how they ended",
                m.class_sessions.clone(),
            );
            Metrics { registry, ..m }
        })
    }

    impl Metrics {
        /// The text exposition of every metric.
        pub(crate) fn render(&self) -> String {
            let mut out = String::with_capacity(4096);
            // Writing to a String cannot fail.
            let _ = encode(&mut out, &self.registry);
            out
        }

        /// A session of `command` has started; the guard ends it.
        pub(crate) fn session_started(&'static self, command: &'static str) -> ActiveSession {
            self.active.get_or_create(&[("command", command)]).inc();
            ActiveSession {
                metrics: self,
                command,
            }
        }

        /// A handshake reached its request after `took` (TLS and login included).
        pub(crate) fn handshake_done(&self, took: Duration) {
            self.handshake_seconds.observe(took.as_secs_f64());
        }

        /// A login was refused.
        pub(crate) fn auth_failed(&self) {
            self.auth_failures.inc();
        }

        /// A SOCKS-NG listener opened; the guard closes it.
        pub(crate) fn listener_opened(&'static self) -> OpenListener {
            self.listeners.inc();
            OpenListener(self)
        }

        /// Records how a session ended and what it moved.
        pub(crate) fn session_ended(
            &self,
            command: &'static str,
            kind: &'static str,
            class: Option<&str>,
            up: u64,
            down: u64,
        ) {
            self.sessions
                .get_or_create(&[("command", command), ("outcome", kind)])
                .inc();
            if let Some(class) = class {
                let labels =
                    |k: &'static str, v: &str| vec![("class", class.to_owned()), (k, v.to_owned())];
                self.class_sessions
                    .get_or_create(&labels("outcome", kind))
                    .inc();
                self.class_bytes
                    .get_or_create(&labels("direction", "up"))
                    .inc_by(up);
                self.class_bytes
                    .get_or_create(&labels("direction", "down"))
                    .inc_by(down);
            }
            self.bytes.get_or_create(&[("direction", "up")]).inc_by(up);
            self.bytes
                .get_or_create(&[("direction", "down")])
                .inc_by(down);
        }
    }

    /// Counts an open listener until dropped.
    pub(crate) struct OpenListener(&'static Metrics);

    impl Drop for OpenListener {
        fn drop(&mut self) {
            self.0.listeners.dec();
        }
    }

    /// Counts a running session until dropped.
    pub(crate) struct ActiveSession {
        metrics: &'static Metrics,
        command: &'static str,
    }

    impl Drop for ActiveSession {
        fn drop(&mut self) {
            self.metrics
                .active
                .get_or_create(&[("command", self.command)])
                .dec();
        }
    }

    /// Serves `GET /metrics` on `listener` until `stop` fires; anything else gets 404. One
    /// request per connection (the response closes it), as scrapers expect of a small exporter.
    pub(crate) async fn serve(listener: TcpListener, stop: CancellationToken) {
        use crate::small_http::{answer_one, Answer};
        crate::small_http::serve(listener, stop, |stream| {
            answer_one(stream, |_, path| {
                if path == "/metrics" || path.starts_with("/metrics?") {
                    Answer::ok(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        metrics().render(),
                    )
                } else {
                    Answer::not_found("not found: GET /metrics\n")
                }
            })
        })
        .await
    }
}

/// A build without the `metrics` feature (a small router build): the same calls, which count
/// nothing, and no endpoint (the configuration refuses `[metrics] listen`).
#[cfg(not(feature = "metrics"))]
mod disabled {
    use std::time::Duration;

    pub(crate) struct Metrics;
    pub(crate) struct Guard;

    pub(crate) fn metrics() -> &'static Metrics {
        &Metrics
    }

    impl Metrics {
        pub(crate) fn session_started(&'static self, _command: &'static str) -> Guard {
            Guard
        }
        pub(crate) fn session_ended(
            &self,
            _command: &'static str,
            _kind: &'static str,
            _class: Option<&str>,
            _up: u64,
            _down: u64,
        ) {
        }
        pub(crate) fn handshake_done(&self, _took: Duration) {}
        pub(crate) fn auth_failed(&self) {}
        pub(crate) fn listener_opened(&'static self) -> Guard {
            Guard
        }
    }
}
