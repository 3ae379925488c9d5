//! The load generator: many connections, each in a closed loop.
//!
//! Every connection sends one message, waits for its reply, checks the reply
//! byte for byte, records the latency, and sends the next, until the time is
//! up. All connections are opened first and released together, so connect
//! time is never counted as load. Replies are checked with the same codec the
//! server uses (`protocol.rs`); a wrong reply counts as an error and the
//! connection starts over, so one bad reply cannot desynchronise the rest.
//!
//! It runs on its own tokio runtime, and reports back through two callbacks:
//! `interrupt` every 100 ms (so Ctrl+C reaches a Python caller) and
//! `progress` once a second (the live progress line).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::replies::{check_raw_reply, decode_framed_reply};
use crate::error::{Error, Result};
use crate::protocol::{
    Codec, DEFAULT_BUFFER_SIZE, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PREFIX, Decoded, Protocol,
    RawCheck, RawReplies,
};
use crate::wait::{Interrupt, TICK};

/// How long a run lasts by default.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// How long opening one connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one reply may take before it counts as an error.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// The payload alphabet: no `S`, so a raw reply's next prefix can be told
/// from message bytes (see [`RawReplies`]).
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub host: String,
    pub port: u16,
    /// Connections, each with one request in flight (default 10).
    pub connections: usize,
    /// Message size in bytes (default 1024).
    pub size: usize,
    pub duration: Duration,
    pub protocol: Protocol,
    /// The prefix the server puts before each echo.
    pub prefix: Vec<u8>,
    /// Speak TLS with this configuration and name.
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// Runtime threads (default: one per core).
    pub threads: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            host: crate::protocol::DEFAULT_HOST.to_owned(),
            port: crate::protocol::DEFAULT_PORT,
            connections: 10,
            size: DEFAULT_BUFFER_SIZE,
            duration: DEFAULT_DURATION,
            protocol: Protocol::Raw,
            prefix: DEFAULT_PREFIX.as_bytes().to_vec(),
            tls: None,
            threads: None,
        }
    }
}

/// Counters so far, for the progress line.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub elapsed: Duration,
    pub requests: u64,
    pub errors: u64,
}

/// Latency percentiles of the replies.
#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    pub mean: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

/// The outcome of a run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Connections that were opened.
    pub connections: usize,
    /// Correct replies received.
    pub requests: u64,
    /// Failed connects, I/O errors, timeouts, wrong replies, and workers
    /// that ended abnormally.
    pub errors: u64,
    /// Requests still unanswered when the run ended: neither counted nor an
    /// error, but a server that never answers shows here.
    pub unanswered: u64,
    /// Time under load (from release to the end).
    pub elapsed: Duration,
    /// Payload bytes sent in requests that got a correct reply.
    pub bytes: u64,
    pub latency: Latency,
}

impl Report {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// Payload MiB per second, one way.
    pub fn mib_per_second(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// Counters shared by every connection.
#[derive(Default)]
struct Counters {
    /// Connections done trying to open (opened or failed).
    settled: AtomicU64,
    /// Connections that could not be opened.
    unopened: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    /// The server speaks another protocol (framed, raw, TLS) than the one
    /// asked for: no request can succeed, so the run stops and says so.
    wrong: Mutex<Option<String>>,
}

impl Counters {
    fn wrong(&self) -> Option<String> {
        self.wrong
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Runs the load and returns the report.
///
/// # Errors
///
/// [`Error::InvalidArgument`] for impossible options (no connections, a
/// framed message over the frame limit), [`Error::Io`] when no connection at all could be opened
/// (`ECONNREFUSED` for a server that is not running), [`Error::Interrupted`]
/// when `interrupt` says so.
pub fn run(
    options: &Options,
    interrupt: Interrupt<'_>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Report> {
    // Its runtime cannot start inside another's: a handler answered on a
    // server's network thread, say.
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::invalid(
            "the load generator cannot run on a server's network thread (inside a handler); \
             run it from a thread of its own",
        ));
    }
    if options.connections == 0 {
        return Err(Error::invalid("connections must be at least 1"));
    }
    let codec = Codec::new(
        options.protocol,
        DEFAULT_BUFFER_SIZE,
        DEFAULT_MAX_MESSAGE_SIZE.max(options.size),
    )?;
    // A raw message larger than one read is a burst: the server cuts it
    // into `buffer_size` messages and answers each, which the reply check
    // accepts as one valid cutting of the message.
    if options.protocol == Protocol::Framed {
        codec
            .check_outgoing(&vec![0; options.size])
            .map_err(|e| Error::invalid(e.to_string()))?;
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = options.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = builder.enable_all().thread_name("sockdemo-bench").build()?;

    let counters = Arc::new(Counters::default());
    let (go, released) = watch::channel(None::<Instant>);
    let mut tasks = Vec::with_capacity(options.connections);
    for seed in 0..options.connections {
        let worker = Worker {
            options: options.clone(),
            codec,
            counters: counters.clone(),
            payload: payload(seed, options.size),
            peer: OnceLock::new(),
        };
        let outcome = Outcome::new(new_histogram()?);
        tasks.push(runtime.spawn(worker.run(outcome, released.clone())));
    }

    // Wait for every connection to be open (or to have failed), then release them.
    while (counters.settled.load(Relaxed) as usize) < options.connections {
        if let Err(e) = interrupt() {
            runtime.shutdown_background();
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let failed_to_open = counters.unopened.load(Relaxed);
    if failed_to_open as usize == options.connections {
        runtime.shutdown_background();
        return Err(Error::Io(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("could not connect to {}:{}", options.host, options.port),
        )));
    }
    counters.errors.store(failed_to_open, Relaxed);
    let start = Instant::now();
    let end = start + options.duration;
    // Every worker holds a receiver, so sending cannot fail for want of one.
    let _ = go.send(Some(end));

    let mut next_report = start + Duration::from_secs(1);
    while Instant::now() < end {
        if let Err(e) = interrupt() {
            runtime.shutdown_background();
            return Err(e);
        }
        if let Some(wrong) = counters.wrong() {
            runtime.shutdown_background();
            return Err(Error::Protocol(wrong));
        }
        std::thread::sleep(TICK.min(end.saturating_duration_since(Instant::now())));
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(1);
            progress(&Progress {
                elapsed: start.elapsed(),
                requests: counters.requests.load(Relaxed),
                errors: counters.errors.load(Relaxed),
            });
        }
    }
    let outcomes = runtime.block_on(async {
        let mut outcomes = Vec::with_capacity(tasks.len());
        for task in tasks {
            // A worker that panicked is a bug; it counts as an error.
            outcomes.push(task.await.ok());
        }
        outcomes
    });
    let elapsed = start.elapsed();
    runtime.shutdown_background();
    if let Some(wrong) = counters.wrong() {
        return Err(Error::Protocol(wrong));
    }

    let mut histogram = new_histogram()?;
    let mut report = Report {
        elapsed,
        errors: failed_to_open,
        ..Report::default()
    };
    for outcome in outcomes {
        let Some(outcome) = outcome else {
            report.errors += 1;
            continue;
        };
        report.unanswered += outcome.unanswered;
        report.connections += usize::from(outcome.opened);
        report.requests += outcome.requests;
        report.errors += outcome.errors;
        report.bytes += outcome.requests * options.size as u64;
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = histogram.add(&outcome.latency);
    }
    report.latency = latency(&histogram);
    Ok(report)
}

/// Latencies in microseconds, from 1 µs to 1 minute, 3 significant figures.
fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| Error::invalid(format!("latency histogram: {e}")))
}

fn latency(h: &Histogram<u64>) -> Latency {
    let us = Duration::from_micros;
    Latency {
        mean: Duration::from_secs_f64(h.mean() / 1e6),
        p50: us(h.value_at_quantile(0.50)),
        p90: us(h.value_at_quantile(0.90)),
        p99: us(h.value_at_quantile(0.99)),
        p999: us(h.value_at_quantile(0.999)),
        max: us(h.max()),
    }
}

/// A deterministic payload of `size` bytes from [`ALPHABET`].
fn payload(seed: usize, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| ALPHABET[(seed * 7 + i * 13) % ALPHABET.len()])
        .collect()
}

struct Worker {
    options: Options,
    codec: Codec,
    counters: Arc<Counters>,
    payload: Vec<u8>,
    /// The server's address, once connected: what the advice names.
    peer: OnceLock<SocketAddr>,
}

struct Outcome {
    opened: bool,
    requests: u64,
    errors: u64,
    unanswered: u64,
    latency: Histogram<u64>,
}

impl Outcome {
    fn new(latency: Histogram<u64>) -> Self {
        Outcome {
            opened: false,
            requests: 0,
            errors: 0,
            unanswered: 0,
            latency,
        }
    }
}

impl Worker {
    /// Opens the connection, reports it settled, waits for the release, then
    /// runs until the deadline, reconnecting after an error.
    async fn run(
        self,
        mut outcome: Outcome,
        mut released: watch::Receiver<Option<Instant>>,
    ) -> Outcome {
        let first = self.connect().await;
        if first.is_err() {
            self.counters.unopened.fetch_add(1, Relaxed);
        }
        self.counters.settled.fetch_add(1, Relaxed);
        let end = match released.wait_for(Option::is_some).await {
            Ok(end) => end.unwrap_or_else(Instant::now),
            Err(_) => return outcome,
        };
        let Ok(mut stream) = first else {
            return outcome;
        };
        outcome.opened = true;
        loop {
            let result = match &mut stream {
                Stream::Plain(s) => self.drive(s, end, &mut outcome).await,
                Stream::Tls(s) => self.drive(s.as_mut(), end, &mut outcome).await,
            };
            if result.is_ok() || Instant::now() >= end {
                return outcome;
            }
            outcome.errors += 1;
            self.counters.errors.fetch_add(1, Relaxed);
            match self.connect().await {
                Ok(again) => stream = again,
                Err(_) => return outcome,
            }
        }
    }

    async fn connect(&self) -> Result<Stream> {
        let addr = (self.options.host.as_str(), self.options.port);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout(CONNECT_TIMEOUT))??;
        tcp.set_nodelay(true)?;
        if let Ok(peer) = tcp.peer_addr() {
            let _ = self.peer.set(peer);
        }
        match &self.options.tls {
            None => Ok(Stream::Plain(tcp)),
            Some((config, name)) => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(Error::from_io)?;
                Ok(Stream::Tls(Box::new(tls)))
            }
        }
    }

    /// The closed loop on one connection, until `end` or the first error.
    async fn drive<S>(&self, stream: &mut S, end: Instant, outcome: &mut Outcome) -> Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut request = Vec::new();
        self.codec.encode(&[&self.payload], &mut request)?;
        let mut expected = Vec::new();
        self.codec
            .encode(&[&self.options.prefix, &self.payload], &mut expected)?;
        let mut reply = Vec::with_capacity(expected.len());
        while Instant::now() < end {
            let sent = Instant::now();
            let exchange = async {
                stream.write_all(&request).await?;
                self.read_reply(stream, &expected, &mut reply).await
            };
            // At the end of the run a request still unanswered is abandoned,
            // neither counted nor an error; before it, a slow reply is one.
            let limit = (sent + REPLY_TIMEOUT).min(end);
            match tokio::time::timeout_at(limit.into(), exchange).await {
                Ok(result) => result?,
                Err(_) if Instant::now() >= end => {
                    outcome.unanswered += 1;
                    return Ok(());
                }
                Err(_) => return Err(Error::Timeout(REPLY_TIMEOUT)),
            }
            let micros = sent.elapsed().as_micros().max(1);
            outcome
                .latency
                .saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
            outcome.requests += 1;
            self.counters.requests.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    /// Reads one whole reply into `reply` and checks it against `expected`.
    async fn read_reply<S>(
        &self,
        stream: &mut S,
        expected: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<()>
    where
        S: AsyncRead + Unpin,
    {
        reply.clear();
        let mut raw = RawReplies::new(&self.options.prefix, &self.payload);
        loop {
            reply.reserve(expected.len().saturating_sub(reply.len()).max(1024));
            let start = reply.len();
            if stream.read_buf(reply).await? == 0 {
                return Err(Error::Closed);
            }
            let verdict = match self.codec.protocol() {
                // The common case, one piece, is a single comparison.
                Protocol::Raw if reply == expected => RawCheck::Complete,
                Protocol::Raw => raw.feed(&reply[start..]),
                Protocol::Framed => match self.codec.decode(reply).inspect_err(|_| {
                    self.wrong_protocol(reply);
                })? {
                    Decoded::Incomplete { .. } => RawCheck::Partial,
                    Decoded::Message(_) if reply == expected => RawCheck::Complete,
                    Decoded::Message(_) => RawCheck::Mismatch,
                },
            };
            match verdict {
                RawCheck::Partial => continue,
                RawCheck::Complete => return Ok(()),
                RawCheck::Mismatch => {
                    self.wrong_protocol(reply);
                    return Err(Error::Protocol(format!(
                        "wrong reply ({} bytes, expected {})",
                        reply.len(),
                        expected.len()
                    )));
                }
            }
        }
    }
}

impl Worker {
    /// A reply that is not the one expected: if it shows the server speaks
    /// another protocol, the run stops with the client's own advice.
    fn wrong_protocol(&self, reply: &[u8]) {
        let tls = self.options.tls.is_some();
        // Named as the server was, when its address is not known yet.
        let peer = self
            .peer
            .get()
            .copied()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], self.options.port)));
        let verdict = match self.codec.protocol() {
            Protocol::Raw => check_raw_reply(reply, peer, tls).err(),
            Protocol::Framed => decode_framed_reply(&self.codec, reply, peer, tls)
                .err()
                .filter(|e| matches!(e, Error::Protocol(_))),
        };
        if let Some(Error::Protocol(advice)) = verdict {
            let mut wrong = self
                .counters
                .wrong
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            wrong.get_or_insert(advice);
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_avoid_the_prefix_start() {
        let p = payload(3, 5000);
        assert_eq!(p.len(), 5000);
        assert!(!p.contains(&b'S'));
    }
}
