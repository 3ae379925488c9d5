//! Where one connection's handler replies go: straight into its socket when
//! the handler thread can put them there, back to the connection otherwise.
//!
//! Handing every reply back to the connection's task would cost a wake-up
//! (a system call and two context switches) per request on top of the one
//! that brought the request in. So a handler thread writes the replies itself,
//! without blocking, through a duplicate of the connection's descriptor, and
//! wakes the connection only when it must act: replies the socket did not
//! take at once, or a failure to report. The connection meanwhile goes back to
//! reading, and before it hands over its next messages (or writes a `bye`, or
//! closes) it waits for the job in flight to be *settled*, which keeps every
//! reply in order.
//!
//! Under TLS the bytes must pass through the connection's TLS state, so
//! every answer goes back to the connection.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use socket2::Socket;
use tokio::sync::Notify;

use crate::error::Error;
use crate::stats::Stats;

/// One connection's outbox, shared by the connection and the handler pool.
pub(crate) struct Outbox {
    /// A duplicate of the connection's socket, for the pool to write to
    /// (plain TCP only) and for a shutdown to close.
    socket: Option<Socket>,
    /// May the pool write to `socket`? Not under TLS.
    write_here: bool,
    /// The server's counters: replies are counted as they are delivered,
    /// before the client can see them.
    stats: Arc<Stats>,
    state: Mutex<State>,
    /// Told whenever a job is settled.
    settled: Notify,
    /// Told when the connection must act on what the pool left.
    needed: Notify,
}

#[derive(Default)]
struct State {
    in_flight: bool,
    /// The connection is closing: the socket is no longer the pool's to use.
    closed: bool,
    /// Replies the socket did not take; the connection writes them.
    unwritten: Vec<u8>,
    /// Why the last job stopped early; the connection reports it and closes.
    error: Option<Error>,
    /// When the last job was settled.
    finished: Option<Instant>,
}

impl State {
    fn needs_connection(&self) -> bool {
        !self.unwritten.is_empty() || self.error.is_some()
    }
}

/// What the pool left for the connection since it last looked.
#[derive(Debug, Default)]
pub(crate) struct Delivered {
    /// Replies left for the connection to write, in order.
    pub unwritten: Vec<u8>,
    /// The failure that ended the last job, after `unwritten`.
    pub error: Option<Error>,
}

impl Outbox {
    /// An outbox over `socket` (a duplicate of the connection's
    /// descriptor): writing to it if `write_here`, handing everything back
    /// to the connection otherwise.
    pub fn new(socket: Option<OwnedFd>, write_here: bool, stats: Arc<Stats>) -> Self {
        Outbox {
            socket: socket.map(Socket::from),
            write_here,
            stats,
            state: Mutex::default(),
            settled: Notify::new(),
            needed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change under the lock is a few assignments that cannot panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection hands over a job.
    pub fn begin(&self) {
        self.lock().in_flight = true;
    }

    /// The pool settles the job, which `took` that long: writes `out` (the
    /// replies to `answered` messages) if asked to `write` and it can, keeps the rest and `error`
    /// for the connection, and wakes the connection only if it has something
    /// to do.
    pub fn deliver(
        &self,
        out: Vec<u8>,
        answered: u64,
        error: Option<Error>,
        write: bool,
        took: Duration,
    ) {
        self.stats.answered(answered, out.len());
        self.stats.handled(took);
        let mut state = self.lock();
        let mut written = 0;
        if let Some(socket) = &self.socket
            && self.write_here
            && write
            && !state.closed
            && state.unwritten.is_empty()
        {
            while written < out.len() {
                match socket.send(&out[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // The connection will see the same on its next read;
                        // report the first failure.
                        state.error.get_or_insert(Error::Io(e));
                        break;
                    }
                }
            }
        }
        state.unwritten.extend_from_slice(&out[written..]);
        if let Some(error) = error {
            state.error.get_or_insert(error);
        }
        state.in_flight = false;
        state.finished = Some(Instant::now());
        let needed = state.needs_connection();
        drop(state);
        self.settled.notify_one();
        if needed {
            self.needed.notify_one();
        }
    }

    /// Takes what happened since the last look.
    pub fn take(&self) -> Delivered {
        let mut state = self.lock();
        Delivered {
            unwritten: std::mem::take(&mut state.unwritten),
            error: state.error.take(),
        }
    }

    /// Waits until no job is in flight, then takes what happened.
    pub async fn settled(&self) -> Delivered {
        loop {
            if !self.lock().in_flight {
                return self.take();
            }
            // A permit left by an earlier job only costs one more look.
            self.settled.notified().await;
        }
    }

    /// Completes when the pool has left something for the connection.
    pub async fn needed(&self) {
        loop {
            if self.lock().needs_connection() {
                return;
            }
            self.needed.notified().await;
        }
    }

    /// Has a job been in flight, or settled, since `since`?
    pub fn busy_since(&self, since: Instant) -> bool {
        let state = self.lock();
        state.in_flight || state.finished.is_some_and(|at| at > since)
    }

    /// The connection is closing: the pool must not write any more.
    pub fn close(&self) {
        self.lock().closed = true;
    }

    /// Closes the connection from outside, its task being stuck: the client
    /// sees the end, and no reply goes out any more.
    pub fn cut(&self) {
        self.close();
        if let Some(socket) = &self.socket {
            // Already gone is as good as closed.
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}
