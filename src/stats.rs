//! Counters a running server keeps about itself, and the same counters in
//! Prometheus' text format.
//!
//! The counters are the `prometheus` crate's (atomics underneath), kept in a
//! registry of the server's own, so `Server::stats()` and a `/metrics`
//! scrape read the same numbers. Connections add their bytes once per read
//! or write, not per byte or per message, and labelled counters are resolved
//! once, when the server is made: the hot path costs a relaxed atomic add.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::error::Error;

/// Why a connection ended, as the `reason` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The client closed its side.
    Client,
    /// The client said `bye`.
    Bye,
    /// Silent for the idle timeout.
    Idle,
    /// Closed while idle to make room for a waiting client.
    Evicted,
    /// The server shut down.
    Shutdown,
    /// The session's message allowance was used up.
    Limit,
    /// The server's session closed it.
    Session,
    /// It failed: see `sockdemo_errors_total`.
    Error,
}

const REASONS: [(Closed, &str); 8] = [
    (Closed::Client, "client"),
    (Closed::Bye, "bye"),
    (Closed::Idle, "idle"),
    (Closed::Evicted, "evicted"),
    (Closed::Shutdown, "shutdown"),
    (Closed::Limit, "limit"),
    (Closed::Session, "session"),
    (Closed::Error, "error"),
];

/// The kinds of failure the `kind` label names.
const KINDS: [&str; 9] = [
    "timeout",
    "reset",
    "io",
    "protocol",
    "too_large",
    "tls",
    "handler",
    "proxy",
    "slow_reader",
];

/// The kind label of a connection's failure.
fn kind(error: &Error) -> &'static str {
    match error {
        Error::Timeout(_) => "timeout",
        Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionReset => "reset",
        Error::MessageTooLarge { .. } => "too_large",
        Error::Proxy(_) => "proxy",
        Error::Protocol(_) => "protocol",
        Error::Tls(_) | Error::NotTls(_) | Error::Certificate(_) => "tls",
        Error::Handler(_) => "handler",
        Error::SlowReader { .. } => "slow_reader",
        _ => "io",
    }
}

/// One connection as the counters see it, from [`Stats::connection_opened`].
#[must_use = "a connection dropped at once is counted closed at once"]
pub(crate) struct Open<'a> {
    stats: &'a Stats,
    /// It holds a client slot (it is being served), not just opening.
    seated: bool,
}

impl Open<'_> {
    /// The connection took a client slot.
    pub fn seated(&mut self) {
        if !std::mem::replace(&mut self.seated, true) {
            self.stats.opening.dec();
            self.stats.active.inc();
        }
    }

    /// The connection ended: `Err` with its failure, or how it ended.
    pub fn closed(self, how: Result<Closed, &Error>) {
        self.stats.connection_closed(self.seated, how);
        std::mem::forget(self);
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        // Its task was dropped: only a shutdown cutting it does that.
        self.stats
            .connection_closed(self.seated, Ok(Closed::Shutdown));
    }
}

/// Live counters, shared by the accept loop and every connection.
pub struct Stats {
    registry: Registry,
    accepted: IntCounter,
    opening: IntGauge,
    active: IntGauge,
    closed: Vec<IntCounter>,
    errors: Vec<IntCounter>,
    tls_failures: IntCounter,
    messages_in: IntCounter,
    messages_out: IntCounter,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    handler_seconds: Histogram,
    handler_queued: IntGauge,
    handler_threads: IntGauge,
    handler_busy: IntGauge,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Stats").field(&self.snapshot()).finish()
    }
}

/// What a server's handler pool looks like at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Messages waiting for a handler thread.
    pub queued: u64,
    /// Handler threads running.
    pub threads: u64,
    /// Of those, the ones not waiting for work.
    pub busy: u64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Connections accepted since the server was created.
    pub connections_accepted: u64,
    /// Connections being served now (holding a client slot).
    pub connections_active: u64,
    /// Connections accepted and still opening (PROXY header, TLS handshake,
    /// first message), or waiting for a slot.
    pub connections_opening: u64,
    /// Messages answered.
    pub messages: u64,
    /// Bytes read from clients, framing included.
    pub bytes_in: u64,
    /// Bytes written to clients, framing included.
    pub bytes_out: u64,
    /// Connections that ended in an error (reset, timeout, bad frame…).
    pub errors: u64,
    /// The handler pool's queue and threads (all zero without a handler).
    pub handler: Load,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

/// Handler latencies: 50 µs to about 100 s, doubling.
fn latency_buckets() -> Vec<f64> {
    (0..22).map(|i| 50e-6 * f64::from(1u32 << i)).collect()
}

impl Stats {
    /// Counters at zero, registered under the `sockdemo_` prefix.
    pub fn new() -> Self {
        // Every name, label and bucket below is a constant, and every metric
        // has a name of its own: making and registering them cannot fail
        // (the unit test makes them all). Hence the `expect`s.
        let registry = Registry::new_custom(Some("sockdemo".into()), None).expect("prefix"); // constant
        let add = |metric: Box<dyn prometheus::core::Collector>| {
            registry.register(metric).expect("distinct names"); // constants, all distinct
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(Opts::new(name, help)).expect("counter"); // constant
            add(Box::new(c.clone()));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::with_opts(Opts::new(name, help)).expect("gauge"); // constant
            add(Box::new(g.clone()));
            g
        };
        let family = |name: &str, help: &str, label: &str, values: &[&str]| {
            let family = IntCounterVec::new(Opts::new(name, help), &[label]).expect("labels"); // constant
            add(Box::new(family.clone()));
            values
                .iter()
                .map(|v| family.with_label_values(&[*v]))
                .collect::<Vec<_>>()
        };
        let reasons: Vec<&str> = REASONS.iter().map(|(_, name)| *name).collect();
        let handler_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "handler_seconds",
                "Time from handing a batch of messages to the handler to its replies.",
            )
            .buckets(latency_buckets()),
        )
        .expect("buckets"); // constant, increasing
        add(Box::new(handler_seconds.clone()));
        Stats {
            accepted: counter("connections_accepted_total", "Connections accepted."),
            opening: gauge(
                "connections_opening",
                "Connections accepted and not yet served: opening, or waiting for a slot.",
            ),
            active: gauge("connections_active", "Connections being served now."),
            closed: family(
                "connections_closed_total",
                "Connections closed, by reason.",
                "reason",
                &reasons,
            ),
            errors: family(
                "errors_total",
                "Connections that ended in an error, by kind.",
                "kind",
                &KINDS,
            ),
            tls_failures: counter(
                "tls_handshake_failures_total",
                "TLS handshakes that failed or timed out.",
            ),
            messages_in: counter("messages_received_total", "Messages received from clients."),
            messages_out: counter("messages_sent_total", "Replies sent to clients."),
            bytes_in: counter(
                "received_bytes_total",
                "Bytes read from clients, framing included.",
            ),
            bytes_out: counter(
                "sent_bytes_total",
                "Bytes written to clients, framing included.",
            ),
            handler_seconds,
            handler_queued: gauge("handler_queue_depth", "Messages waiting for the handler."),
            handler_threads: gauge("handler_threads", "Handler threads running."),
            handler_busy: gauge("handler_busy_threads", "Handler threads at work."),
            registry,
        }
    }

    /// Takes a snapshot.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            connections_accepted: self.accepted.get(),
            connections_active: self.active.get().max(0) as u64,
            connections_opening: self.opening.get().max(0) as u64,
            messages: self.messages_out.get(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            errors: self.errors.iter().map(IntCounter::get).sum(),
            handler: Load::default(),
        }
    }

    /// Every counter in Prometheus' text format (version 0.0.4), with the
    /// handler pool's `load` now.
    pub fn render(&self, load: Load) -> String {
        self.handler_queued.set(load.queued as i64);
        self.handler_threads.set(load.threads as i64);
        self.handler_busy.set(load.busy as i64);
        let mut out = Vec::new();
        // Encoding text into memory cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// A connection was accepted: counted opening until it is seated, and
    /// closed once, when it says how it ended or, if it never gets to (the
    /// server dropped it as it shut down), as closed by the shutdown.
    pub(crate) fn connection_opened(&self) -> Open<'_> {
        self.accepted.inc();
        self.opening.inc();
        Open {
            stats: self,
            seated: false,
        }
    }

    fn connection_closed(&self, seated: bool, how: Result<Closed, &Error>) {
        if seated {
            self.active.dec();
        } else {
            self.opening.dec();
        }
        let reason = match how {
            Ok(reason) => reason,
            // Its handler was cancelled as the server closed: no failure.
            Err(Error::Interrupted) => Closed::Shutdown,
            Err(error) => {
                let kind = kind(error);
                if let Some(i) = KINDS.iter().position(|k| *k == kind) {
                    self.errors[i].inc();
                }
                Closed::Error
            }
        };
        if let Some(i) = REASONS.iter().position(|(r, _)| *r == reason) {
            self.closed[i].inc();
        }
    }

    pub(crate) fn tls_failed(&self) {
        self.tls_failures.inc();
    }

    pub(crate) fn received(&self, bytes: usize) {
        self.bytes_in.inc_by(bytes as u64);
    }

    pub(crate) fn messages_received(&self, messages: u64) {
        self.messages_in.inc_by(messages);
    }

    pub(crate) fn answered(&self, messages: u64, bytes: usize) {
        self.messages_out.inc_by(messages);
        self.bytes_out.inc_by(bytes as u64);
    }

    pub(crate) fn handled(&self, took: Duration) {
        self.handler_seconds.observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_carries_every_counter() {
        let stats = Stats::new();
        let mut bye = stats.connection_opened();
        bye.seated();
        let timed_out = stats.connection_opened();
        let cut = stats.connection_opened();
        stats.received(10);
        stats.messages_received(2);
        stats.answered(2, 40);
        bye.closed(Ok(Closed::Bye));
        timed_out.closed(Err(&Error::Timeout(Duration::from_secs(1))));
        drop(cut);
        stats.handled(Duration::from_millis(3));
        let text = stats.render(Load {
            queued: 4,
            threads: 2,
            busy: 1,
        });
        for line in [
            "sockdemo_connections_accepted_total 3",
            "sockdemo_connections_active 0",
            "sockdemo_connections_opening 0",
            "sockdemo_connections_closed_total{reason=\"bye\"} 1",
            // A connection dropped unclosed was cut by a shutdown.
            "sockdemo_connections_closed_total{reason=\"shutdown\"} 1",
            "sockdemo_connections_closed_total{reason=\"error\"} 1",
            "sockdemo_errors_total{kind=\"timeout\"} 1",
            "sockdemo_messages_received_total 2",
            "sockdemo_sent_bytes_total 40",
            "sockdemo_handler_seconds_count 1",
            "sockdemo_handler_queue_depth 4",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.errors, 1);
        assert_eq!(snapshot.messages, 2);
    }

    #[test]
    fn every_failure_is_counted_under_its_own_kind() {
        use std::io::{Error as IoError, ErrorKind};
        let peer = ([127, 0, 0, 1], 1).into();
        for (error, label) in [
            (Error::Timeout(Duration::from_secs(1)), "timeout"),
            (IoError::from(ErrorKind::ConnectionReset).into(), "reset"),
            (IoError::from(ErrorKind::BrokenPipe).into(), "io"),
            (
                Error::MessageTooLarge {
                    size: 2,
                    limit: 1,
                    hint: "",
                },
                "too_large",
            ),
            (Error::Proxy("bad header".into()), "proxy"),
            (Error::Protocol("bad frame".into()), "protocol"),
            (rustls::Error::DecryptError.into(), "tls"),
            (Error::NotTls(peer), "tls"),
            (Error::Certificate("no key".into()), "tls"),
            (Error::Handler("raised".into()), "handler"),
            (
                Error::SlowReader {
                    pending: 2,
                    limit: 1,
                },
                "slow_reader",
            ),
            (Error::Closed, "io"),
        ] {
            assert_eq!(kind(&error), label, "{error:?}");
            assert!(KINDS.contains(&label));
        }
    }

    #[test]
    fn handler_latencies_are_bucketed_from_50_microseconds_doubling() {
        let buckets = latency_buckets();
        assert_eq!(buckets.len(), 22);
        assert_eq!(buckets[0], 50e-6);
        assert!(buckets.windows(2).all(|pair| pair[1] == 2.0 * pair[0]));
        // The last bound, about 105 s, is past any handler worth timing.
        assert!((buckets[21] - 104.8576).abs() < 1e-9);
    }
}
