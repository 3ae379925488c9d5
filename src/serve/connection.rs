//! One client's session: read bytes, cut them into messages, answer, repeat.
//!
//! A connection owns its socket and two buffers, both sized to need and
//! released whenever they empty, so thousands of idle connections cost a task
//! and a socket each, not a buffer each. Every wait is bounded: between
//! messages by the idle timeout, within a message by the message timeout,
//! while writing by the write timeout. With a handler, the whole messages of
//! a batch are answered on the spot when the handler is quick and a lane is
//! free (the connection writes the replies, as it writes the echo), or go to
//! the runner as one job whose replies come back through the connection's
//! outbox; `bye` and the echo never wait on the handler.

use std::future::pending;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use log::{Level, debug, info, log, warn};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

use super::hub::Hub;
use super::proxy;
use super::transport::{self, Transport, until};
use crate::address::py_address;
use crate::error::{Error, Result};
use crate::handling::conn::Conn;
use crate::handling::outbox::Delivered;
use crate::handling::runner::Runner;
use crate::protocol::{Codec, Decoded, is_bye};
use crate::serve::admission::{Admission, Place};
use crate::serve::budget::{Budget, Share};
use crate::serve::config::Config;
use crate::serve::eviction::{Milestone, Registered};
use crate::socket::Socket;
use crate::stats::{Closed, Open, Stats};

/// The first read's size, and the size reads return to after a burst.
const READ_CHUNK: usize = 16 * 1024;
/// The largest read a burst grows to.
const MAX_READ: usize = 256 * 1024;
/// The most reserved ahead of a frame's bytes. A declared length is only a
/// promise: memory follows the bytes that actually arrive, so a thousand
/// peers announcing 1 MiB frames and sending nothing cost next to nothing.
const MAX_READ_AHEAD: usize = 256 * 1024;
/// Replies buffered before they are written even if more messages wait.
pub(super) const FLUSH_AT: usize = 256 * 1024;
/// How long a connection still has once shutdown is asked: to finish a
/// reply it is writing, or, accepted a moment before, to finish opening and
/// say its first message.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// Why a connection was closed before it opened, in the log.
const WITHOUT_HEADER: &str = "no PROXY header yet, and its place was needed for a new client (every handshake place was taken).";
const WITHOUT_MESSAGE: &str = "not opened yet (no TLS handshake or whole message), and its place was needed for a new client (every handshake place was taken).";

/// What every connection of one server shares.
pub(crate) struct Shared {
    pub config: Config,
    pub codec: Codec,
    /// Shared with the handler pool's outboxes, which count what they deliver.
    pub stats: Arc<Stats>,
    /// Runs the handler, when the server has one.
    pub runner: Option<Runner>,
    /// The handshake places and client slots, and who goes when short.
    pub admission: Admission,
    /// The open connections of a session server, for broadcasts.
    pub hub: Hub,
    /// The bytes half-received messages may hold, server-wide.
    pub buffered: Arc<Budget>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The level of the per-message log line: INFO for a one-client server
    /// (the original printed every message), DEBUG when many are served.
    pub message_level: Level,
}

/// Per-session options that depend on how the server was started.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Session {
    /// Close after answering this many messages (the one-shot `server.py`).
    pub max_messages: Option<u64>,
    /// The level of the "Connection with … closed." line.
    pub close_level: Level,
}

/// What answering the whole messages in the buffer came to.
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// Messages taken from the buffer: answered, or handed to the handler.
    pub taken: u64,
    /// The session ends here.
    pub end: Option<End>,
    /// Bytes still missing from the message at the front of the buffer.
    pub needed: usize,
}

/// How a session ended without error.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum End {
    /// The client closed its side.
    Closed,
    /// The client said `bye` and got the goodbye.
    Bye,
    /// The server is shutting down.
    Shutdown,
    /// The session's message allowance is used up.
    Limit,
    /// The client sent nothing for the idle timeout.
    Idle,
    /// Closed while idle, to make room for a waiting client.
    Evicted,
    /// The server's session closed it.
    Session,
}

impl End {
    /// The reason label of the metrics.
    fn reason(&self) -> Closed {
        match self {
            End::Closed => Closed::Client,
            End::Bye => Closed::Bye,
            End::Shutdown => Closed::Shutdown,
            End::Limit => Closed::Limit,
            End::Idle => Closed::Idle,
            End::Evicted => Closed::Evicted,
            End::Session => Closed::Session,
        }
    }
}

/// Serves one accepted client until it leaves, fails, or the server stops.
/// Never returns an error: failures are logged with the peer address and
/// counted, and go no further than this connection.
pub(crate) async fn serve<S: Socket>(
    mut stream: S,
    peer: SocketAddr,
    place: Place,
    shared: Arc<Shared>,
    session: Session,
    shutdown: CancellationToken,
) {
    // A token of its own: waiting on the server's token directly would make
    // every connection lock the same mutex each time it waits for a message.
    let shutdown = shutdown.child_token();
    let registered = shared
        .admission
        .registry
        .register(place.arrival, shutdown.clone());
    let counted = shared.stats.connection_opened();
    let handshake = shared.config.handshake_timeout;
    // Behind a load balancer, the client is who its PROXY header says.
    let peer = match &shared.config.proxy {
        None => peer,
        Some(policy) => {
            let stop = stop_opening(&shutdown, &registered);
            match proxy::client_behind_proxy(&mut stream, peer, handshake, stop, policy).await {
                Ok(client) => client,
                Err(_) if registered.evicted_opening() => {
                    counted.closed(Ok(Closed::Evicted));
                    info!(
                        "Closing connection from {}: {WITHOUT_HEADER}",
                        py_address(peer)
                    );
                    return;
                }
                Err(_) if shutdown.is_cancelled() => {
                    counted.closed(Ok(Closed::Shutdown));
                    debug!(
                        "Closing connection from {}: server shutting down.",
                        py_address(peer)
                    );
                    return;
                }
                Err(e) => {
                    counted.closed(Err(&e));
                    warn!("Connection from {} refused: {e}", py_address(peer));
                    return;
                }
            }
        }
    };
    registered.reached(Milestone::Introduced, 0);
    let name: Arc<str> = py_address(peer).into();
    info!("Connected by {name}");
    let tls = shared.tls.as_ref();
    let stop = stop_opening(&shutdown, &registered);
    let result = match transport::open(stream, tls, handshake, stop).await {
        Ok(transport) => {
            registered.reached(Milestone::Open, 0);
            let mut conn = Connection {
                transport,
                peer: name.clone(),
                addr: peer,
                shared: &shared,
                session,
                shutdown: &shutdown,
                // Asked once per connection, not per message: the answer
                // may involve the Python logging configuration.
                log_messages: log::log_enabled!(shared.message_level),
                conn: None,
                opened: false,
                ended: false,
                owed: false,
                registered: &registered,
                place: Some(place.permit),
                slot: None,
                counted: Some(counted),
            };
            let result = conn.run().await;
            // Counted before the peer can see the close, so whoever sees it
            // also sees the counters that include it.
            if let Some(counted) = conn.counted.take() {
                counted.closed(result.as_ref().map(End::reason));
            }
            conn.close().await;
            result
        }
        Err(_) if registered.evicted_opening() => {
            counted.closed(Ok(Closed::Evicted));
            Ok(End::Evicted)
        }
        // The server is shutting down: no failure of the client's.
        Err(_) if shutdown.is_cancelled() => {
            counted.closed(Ok(Closed::Shutdown));
            Ok(End::Shutdown)
        }
        Err(e) => {
            if shared.tls.is_some() {
                shared.stats.tls_failed();
            }
            counted.closed(Err(&e));
            Err(e)
        }
    };
    match &result {
        Ok(End::Bye) => info!("Client sent 'bye'. Closing connection."),
        Ok(End::Limit) => debug!("Closing connection with {name}: message limit reached."),
        Ok(End::Shutdown) => debug!("Closing connection with {name}: server shutting down."),
        Ok(End::Evicted) if registered.evicted_opening() => {
            info!("Closing connection with {name}: {WITHOUT_MESSAGE}")
        }
        Ok(End::Evicted) => info!(
            "Closing connection with {name}: quiet for {:?} while every slot was taken and a client waited.",
            shared.config.evict_idle_after.unwrap_or_default()
        ),
        Ok(End::Idle) => info!(
            "Closing connection with {name}: idle for {:?}.",
            shared.config.idle_timeout.unwrap_or_default()
        ),
        Ok(End::Session) => debug!("Closing connection with {name}: the session closed it."),
        Ok(End::Closed) => {}
        Err(Error::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
            warn!("Connection with {name} was reset by the client.")
        }
        // A handler cancelled as the server closed (sockdemo.aio).
        Err(Error::Interrupted) => {
            debug!("Closing connection with {name}: its handler was cancelled.")
        }
        Err(e) => warn!("Connection with {name} failed: {e}"),
    }
    log!(session.close_level, "Connection with {name} closed.");
}

/// Resolves once a connection still opening (PROXY header, TLS handshake)
/// must give up: at once when it is closed to make room for a newcomer, a
/// grace period after shutdown otherwise, so that a client that connected
/// as shutdown came (the listener's last, say) still gets its answer.
async fn stop_opening(shutdown: &CancellationToken, registered: &Registered<'_>) {
    shutdown.cancelled().await;
    if !registered.evicted_opening() {
        sleep(SHUTDOWN_GRACE).await;
    }
}

/// Every whole message already received is answered before the next read, and
/// the replies of one batch go out in one write, so a pipelining client gets
/// its answers in order and in few system calls. Reads are sized to the data:
/// a read that fills its buffer makes the next one larger (a burst of raw
/// messages costs a few system calls, not one per 16 KiB), and a buffer is
/// given back as soon as it empties.
///
/// With a handler, the whole messages of a batch go to the handler's runner
/// (threads or an event loop) as one job; the replies go to the connection's outbox, which writes them straight
/// into the socket when it can. The connection hands over no more messages
/// (and writes no `bye`) until that job is settled, so replies stay in order
/// and a slow handler slows only its own clients. `bye` and the echo never
/// wait on the handler. On shutdown a connection stops reading, waits for a
/// handler already running for it (up to the shutdown timeout), finishes the
/// reply it is writing (with a short grace period), and closes.
pub(super) struct Connection<'a, S> {
    pub(super) transport: Transport<S>,
    pub(super) peer: Arc<str>,
    /// The client's address (behind a proxy, the one its header gave).
    pub(super) addr: SocketAddr,
    pub(super) shared: &'a Shared,
    pub(super) session: Session,
    pub(super) shutdown: &'a CancellationToken,
    pub(super) log_messages: bool,
    /// The connection as its handler sees it, with the outbox its replies
    /// and pushes go through; made at the first job (at once for a session).
    pub(super) conn: Option<Arc<Conn>>,
    /// The session's `opened` hook has run without failing.
    pub(super) opened: bool,
    /// The session asked to close the connection.
    pub(super) ended: bool,
    /// A job was handed over and its settlement not yet collected
    /// ([`Connection::settle`]). Until then the outbox may have something
    /// for the connection; after, a plain handler's has nothing (its calls'
    /// bytes come back with their job, or are written at once).
    pub(super) owed: bool,
    /// This connection's standing, as a server short of room sees it.
    pub(super) registered: &'a Registered<'a>,
    /// The handshake place held while opening; given back with a slot.
    pub(super) place: Option<OwnedSemaphorePermit>,
    /// The client slot, once the connection has opened.
    pub(super) slot: Option<OwnedSemaphorePermit>,
    /// The connection as the counters see it (taken when it closes).
    pub(super) counted: Option<Open<'a>>,
}

impl<S> Drop for Connection<'_, S> {
    /// However the connection ends (its task dropped included), the
    /// duplicate of its socket goes with it.
    fn drop(&mut self) {
        if let Some(conn) = &self.conn {
            conn.outbox().release();
        }
    }
}

/// What woke a connection waiting for its next bytes.
enum Woken {
    Shutdown,
    /// The handler pool left replies or a failure in the outbox.
    Outbox,
    Read(Option<io::Result<usize>>),
}

/// Whether what the buffer holds may be answered yet.
enum Admit {
    /// Yes: the connection holds a slot, or needs none.
    Answer,
    /// Not yet: the first message is still arriving.
    Read { needed: usize },
    /// The server shut down while the connection waited for a slot.
    Shutdown,
}

impl<S: Socket> Connection<'_, S> {
    async fn run(&mut self) -> Result<End> {
        let shared = self.shared;
        let config = &shared.config;
        let mut inbuf = BytesMut::new();
        // Messages answered in this session, for `max_messages`.
        let mut answered: u64 = 0;
        // When the message now partly in `inbuf` must be complete by.
        let mut message_deadline: Option<Instant> = None;
        let mut read_size = READ_CHUNK;
        // Bytes read in the burst under way (reads that filled their buffer,
        // and the one that ended it).
        let mut burst = 0;
        // This connection's share of the buffered-bytes budget.
        let mut budget: Option<Share> = None;
        // Has the client sent anything yet?
        let mut heard = false;
        // A session is served from the start: its hooks may speak first.
        if let Some(runner) = shared.runner.as_ref().filter(|r| r.is_session()) {
            if !self.take_seat().await {
                return Ok(End::Shutdown);
            }
            // Boxed, once per connection: see `refuse`.
            Box::pin(self.open_session(runner)).await?;
        }
        loop {
            if self.ended {
                return Ok(End::Session);
            }
            let allowance = self.session.max_messages.map(|max| max - answered);
            let batch = match self.admit(&inbuf).await {
                Admit::Shutdown => return Ok(End::Shutdown),
                Admit::Read { needed } => Batch {
                    needed,
                    ..Batch::default()
                },
                Admit::Answer => match &shared.runner {
                    None => self.echo(&mut inbuf, allowance).await?,
                    Some(runner) => self.dispatch(runner, &mut inbuf, allowance).await?,
                },
            };
            if batch.taken > 0 {
                shared.stats.messages_received(batch.taken);
                answered += batch.taken;
                message_deadline = None;
            }
            if let Some(end) = batch.end {
                return Ok(end);
            }
            // The handler closed the connection while answering on this
            // thread: no need to wait for the outbox to say so.
            if self.ended {
                return Ok(End::Session);
            }

            // The clock, read once per wait: timers and the idle mark share it.
            let armed = Instant::now();
            // Nothing is buffered between messages: give the memory back.
            if inbuf.is_empty() {
                inbuf = BytesMut::new();
            } else if message_deadline.is_none() {
                message_deadline = config.message_timeout.map(|t| armed + t);
            }
            let deadline = match message_deadline {
                Some(at) => Some(at),
                None => config.idle_timeout.map(|t| armed + t),
            };
            let want = read_size.max(batch.needed.min(MAX_READ_AHEAD));
            // Nothing half-received: no share of the budget either.
            if inbuf.is_empty() {
                budget = None;
            }
            // A message under way may grow its buffer only within the
            // server-wide budget, by what it is about to read (see
            // `budget`). The share is accounting; memory still follows the
            // bytes that arrive. The first read of a message needs none: it
            // is one read's size, like any connection's.
            let need = (!inbuf.is_empty()).then(|| {
                let cap = shared.config.max_buffered_bytes.max(1);
                (inbuf.len() + batch.needed).min(cap)
            });
            let woken = {
                // A plain handler's outbox needs the connection only while a
                // job is owed: looking costs a wake-up's registration.
                let outbox = self.outbox().filter(|_| self.owes()).cloned();
                let needed = async {
                    match &outbox {
                        Some(outbox) => outbox.needed().await,
                        None => pending().await,
                    }
                };
                let buffered = &shared.buffered;
                let transport = &mut self.transport;
                let registered = self.registered;
                let read = async {
                    let mut since = armed;
                    let mut want = want;
                    if let Some(total) = need {
                        // As much as one read takes if that is safe, else a
                        // first read's worth: under pressure, shares follow
                        // the bytes that arrive closely.
                        let share = budget.get_or_insert_with(|| buffered.share());
                        let (len, held) = (inbuf.len(), share.held());
                        if held < len + want.min(total.saturating_sub(len)) {
                            let covered = share.grow(len + want, len + READ_CHUNK, total).await;
                            since = Instant::now();
                            if covered < total {
                                want = covered.saturating_sub(len).max(1);
                            }
                        }
                    }
                    // Quiet from here until bytes arrive: waiting for the
                    // budget is the server's doing, not the client's. (A
                    // handler may still be at work for us; if we are chosen
                    // to make room, its reply goes first.)
                    registered.quiet(since.into_std());
                    transport.read_into(&mut inbuf, want).await
                };
                // A client accepted a moment before shutdown has had no chance
                // to speak (a worker being replaced, say): its first message
                // still gets an answer if it comes within the grace period.
                let registered = self.registered;
                let stop = async {
                    self.shutdown.cancelled().await;
                    if !heard && !registered.evicted() {
                        tokio::time::sleep(SHUTDOWN_GRACE).await;
                    }
                };
                tokio::select! {
                    biased;
                    () = stop => Woken::Shutdown,
                    _ = needed => Woken::Outbox,
                    result = until(deadline, read) => Woken::Read(result),
                }
            };
            let n = match woken {
                Woken::Shutdown => {
                    self.settle().await?;
                    return Ok(if self.registered.evicted() {
                        End::Evicted
                    } else {
                        End::Shutdown
                    });
                }
                Woken::Outbox => {
                    let delivered = self.outbox().map(|o| o.take()).unwrap_or_default();
                    self.absorb(delivered).await?;
                    continue;
                }
                Woken::Read(Some(n)) => {
                    self.registered.busy();
                    heard = true;
                    n?
                }
                // A handler still at work, or done since the timer was set,
                // is activity: wait again.
                Woken::Read(None)
                    if message_deadline.is_none()
                        && self
                            .outbox()
                            .is_some_and(|o| o.busy_since(armed.into_std())) =>
                {
                    continue;
                }
                // Silence between messages is the server's policy to end;
                // a message left unfinished is the client's failure.
                Woken::Read(None) if message_deadline.is_none() => return Ok(End::Idle),
                Woken::Read(None) => {
                    return Err(Error::Timeout(config.message_timeout.unwrap_or_default()));
                }
            };
            if n == 0 {
                // Replies owed for messages already read still go out.
                self.settle().await?;
                if !inbuf.is_empty() {
                    return Err(Error::Protocol(format!(
                        "connection closed in the middle of a message ({} bytes received)",
                        inbuf.len()
                    )));
                }
                return Ok(End::Closed);
            }
            // A read that filled all it asked for is a burst: ask for more
            // next time. Anything less ends the burst, and the next one
            // starts at the size that would have taken this one whole: a
            // client that sends 100 KiB at a time is read in one call per
            // message, one that sends a line at a time in small reads.
            burst += n;
            read_size = if n >= want {
                (read_size * 2).min(MAX_READ)
            } else {
                std::mem::take(&mut burst)
                    .next_power_of_two()
                    .clamp(READ_CHUNK, MAX_READ)
            };
            shared.stats.received(n);
            if self.slot.is_none() {
                self.registered.reached(Milestone::Open, inbuf.len());
            }
        }
    }

    /// A connection is answered once it holds a client slot, which it takes
    /// when its first whole message is in. A lone `bye`, or a frame refused
    /// from its header, needs no slot: its answer ends the connection.
    async fn admit(&mut self, inbuf: &BytesMut) -> Admit {
        if self.slot.is_some() {
            return Admit::Answer;
        }
        match self.shared.codec.decode(inbuf) {
            Ok(Decoded::Incomplete { needed }) => Admit::Read { needed },
            Ok(Decoded::Message(frame)) if !is_bye(&inbuf[frame.payload.clone()]) => {
                if self.take_seat().await {
                    Admit::Answer
                } else {
                    Admit::Shutdown
                }
            }
            Ok(Decoded::Message(_)) | Err(_) => Admit::Answer,
        }
    }

    /// Takes a client slot and gives back the handshake place; false if the
    /// server shut down first.
    async fn take_seat(&mut self) -> bool {
        let admission = &self.shared.admission;
        let Some(slot) = admission.seat(self.registered, self.shutdown).await else {
            return false;
        };
        self.slot = Some(slot);
        self.place = None;
        if let Some(counted) = &mut self.counted {
            counted.seated();
        }
        true
    }

    /// Waits for the job in flight, if any, to be settled, and writes what
    /// the pool left; once shutdown is asked, waits at most the shutdown
    /// timeout more.
    pub(super) async fn settle(&mut self) -> Result<()> {
        if !self.owes() {
            return Ok(());
        }
        let Some(outbox) = self.outbox().cloned() else {
            return Ok(());
        };
        let delivered = tokio::select! {
            biased;
            delivered = outbox.settled() => delivered,
            _ = self.shutdown.cancelled() => {
                let grace = self.shared.config.shutdown_timeout;
                match timeout(grace, outbox.settled()).await {
                    Ok(delivered) => delivered,
                    Err(_) => {
                        warn!(
                            "The handler for {} is still running after {grace:?} of shutdown; closing that connection.",
                            self.peer
                        );
                        return Err(Error::Timeout(grace));
                    }
                }
            }
        };
        self.owed = false;
        self.absorb(delivered).await
    }

    /// Counts what the pool answered, writes the replies it could not, and
    /// reports the failure that stopped a job, where the protocol has a way
    /// to say it.
    pub(super) async fn absorb(&mut self, delivered: Delivered) -> Result<()> {
        // The outbox has counted these replies already.
        let Delivered {
            mut unwritten,
            mut error,
            ended,
        } = delivered;
        self.ended |= ended;
        let written = loop {
            if let Err(e) = self.write(&unwritten).await {
                // A slow reader cut off mid-write: that is the reason to give.
                let cut = self.outbox().and_then(|o| o.take().error);
                break Err(cut.unwrap_or(e));
            }
            if unwritten.is_empty() {
                break Ok(());
            }
            // Pushed while this was being written: it goes next, in order.
            let Some(more) = self.outbox().map(|o| o.take()) else {
                break Ok(());
            };
            unwritten = more.unwritten;
            error = error.or(more.error);
            self.ended |= more.ended;
        };
        self.report(written, error).await
    }

    /// After replies were written (`written`), reports `error`, the failure
    /// that stopped the handler's answers, where the protocol has a way to
    /// say it; the connection then closes with it.
    pub(super) async fn report(&mut self, written: Result<()>, error: Option<Error>) -> Result<()> {
        match error {
            None => written,
            Some(error @ Error::MessageTooLarge { .. }) => {
                if written.is_ok() {
                    self.refuse(&error, Vec::new(), 0).await;
                }
                Err(error)
            }
            Some(error) => Err(error),
        }
    }

    /// Writes the buffered replies, which answer `messages` messages.
    pub(super) async fn flush(&mut self, out: &mut Vec<u8>, messages: u64) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        // Counted before the peer can see the replies, so whoever sees a
        // reply also sees the counters that include it.
        self.shared.stats.answered(messages, out.len());
        self.write(out).await?;
        // Replies are rare enough to allocate each time; holding the largest
        // one ever sent for the rest of the session would not be.
        *out = Vec::new();
        Ok(())
    }

    /// Writes `out` whole: at once if the socket takes it, else bounded by
    /// the write timeout.
    pub(super) async fn write(&mut self, out: &[u8]) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let written = self.transport.write_now(out)?;
        if written < out.len() {
            self.write_rest(self.write_deadline(), &out[written..])
                .await?;
        }
        Ok(())
    }

    /// As [`Connection::write`], for `parts` sent back to back in one
    /// system call when the socket takes them; the write timeout bounds
    /// them all together.
    pub(super) async fn write_parts(&mut self, mut parts: &mut [IoSlice<'_>]) -> Result<()> {
        self.transport.write_now_vectored(&mut parts)?;
        if parts.is_empty() {
            return Ok(());
        }
        let deadline = self.write_deadline();
        for part in parts.iter() {
            self.write_rest(deadline, part).await?;
        }
        Ok(())
    }

    /// When a write that starts now must be done by, if ever.
    pub(super) fn write_deadline(&self) -> Option<Instant> {
        self.shared.config.write_timeout.map(|t| Instant::now() + t)
    }

    /// Writes what the socket did not take at once, by `deadline` (see
    /// [`Connection::write_deadline`]) and, once shutdown is asked, within a
    /// short grace period.
    pub(super) async fn write_rest(
        &mut self,
        deadline: Option<Instant>,
        rest: &[u8],
    ) -> Result<()> {
        let config = &self.shared.config;
        let write = until(deadline, self.transport.write_all(rest));
        let grace = async {
            self.shutdown.cancelled().await;
            sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            result = write => match result {
                Some(written) => written?,
                None => return Err(Error::Timeout(config.write_timeout.unwrap_or_default())),
            },
            _ = grace => return Err(Error::Timeout(SHUTDOWN_GRACE)),
        }
        Ok(())
    }

    /// Tells the peer why its message is refused, as one message in its own
    /// protocol, after the replies already due. Best effort: the connection
    /// is closing anyway.
    pub(super) async fn refuse(&mut self, error: &Error, out: Vec<u8>, answered: u64) {
        // Boxed, being rare: a connection's task is as large as the largest
        // future it may ever await, and a refusal's write would add hundreds
        // of bytes to every connection (`a_connection_task_stays_small`).
        Box::pin(self.send_refusal(error, out, answered)).await;
    }

    async fn send_refusal(&mut self, error: &Error, mut out: Vec<u8>, answered: u64) {
        let text = format!("Error: {error}");
        if self
            .shared
            .codec
            .encode(&[text.as_bytes()], &mut out)
            .is_ok()
        {
            let _ = self.flush(&mut out, answered).await;
        }
    }

    async fn close(&mut self) {
        self.close_session().await;
        if let Some(outbox) = self.outbox() {
            outbox.close();
        }
        // A peer that has gone already makes this fail; there is nothing to add.
        let _ = until(
            Some(Instant::now() + SHUTDOWN_GRACE),
            self.transport.shutdown(),
        )
        .await;
        let _ = until(
            Some(Instant::now() + SHUTDOWN_GRACE),
            self.transport.drain(MAX_READ),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn returned_size<A, B, C, D, E, G, R>(_f: impl FnOnce(A, B, C, D, E, G) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn a_connection_task_stays_small() {
        // Every connection's task is as large as the largest future it may
        // ever await, used or not: 9,000 idle connections pay for each byte
        // 9,000 times. Rare, large steps are boxed (`refuse`).
        let size = returned_size(serve::<tokio::net::TcpStream>);
        assert!(size <= 2048, "a connection's future is {size} bytes");
    }
}
