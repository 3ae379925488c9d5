//! The outbox: the one path by which bytes produced off the connection's
//! task (handler replies, a session's pushes, broadcasts) leave it, in the
//! order they were made.
//!
//! A handler thread writes replies itself, without blocking, through a
//! duplicate of the connection's descriptor, and wakes the connection only
//! when it must act: bytes the socket did not take, or a failure to report.
//! Under TLS every byte goes back to the connection, which alone holds the
//! TLS state. Unsent bytes are bounded (`max_pending`): past the bound the
//! reader is too slow, and the connection closes.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use socket2::Socket;
use tokio::sync::Notify;

use crate::error::Error;
use crate::stats::Stats;

/// One connection's outbox, shared by the connection and the handler pool.
pub(crate) struct Outbox {
    /// May the pool write to the socket? Not under TLS.
    write_here: bool,
    /// The server's counters: replies are counted as they are delivered,
    /// before the client can see them.
    stats: Arc<Stats>,
    state: Mutex<State>,
    /// Told whenever a job is settled.
    settled: Notify,
    /// Told when the connection must act on what the pool left.
    needed: Notify,
    /// The most unsent bytes a connection may have queued; past it, it is
    /// closed as a slow reader.
    max_pending: usize,
}

#[derive(Default)]
struct State {
    /// A duplicate of the connection's socket, for the pool to write to
    /// (plain TCP only) and for a shutdown to close; let go when the
    /// connection ends, so that a job held elsewhere (a handler suspended
    /// on an event loop) cannot keep the connection open.
    socket: Option<Socket>,
    in_flight: bool,
    /// The connection is closing: the socket is no longer the pool's to use.
    closed: bool,
    /// Replies the socket did not take; the connection writes them.
    unwritten: Vec<u8>,
    /// Why the last job stopped early; the connection reports it and closes.
    error: Option<Error>,
    /// When the last job was settled.
    finished: Option<Instant>,
    /// The connection is writing bytes it took from `unwritten`: nothing
    /// may overtake them.
    writing: bool,
    /// The session asked to close the connection, once what it sent is out.
    ended: bool,
}

impl State {
    fn needs_connection(&self) -> bool {
        !self.unwritten.is_empty() || self.error.is_some() || self.ended
    }
}

/// What the pool left for the connection since it last looked.
#[derive(Debug, Default)]
pub(crate) struct Delivered {
    /// Replies left for the connection to write, in order.
    pub unwritten: Vec<u8>,
    /// The failure that ended the last job, after `unwritten`.
    pub error: Option<Error>,
    /// The session asked to close the connection, after `unwritten`.
    pub ended: bool,
}

/// What became of bytes pushed to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued or written.
    Sent,
    /// The connection is closing or gone.
    Gone,
    /// The connection was too far behind, and is now being closed.
    TooSlow,
}

impl Outbox {
    /// An outbox over `socket` (a duplicate of the connection's
    /// descriptor): writing to it if `write_here`, handing everything back
    /// to the connection otherwise.
    pub fn new(
        socket: Option<Socket>,
        write_here: bool,
        stats: Arc<Stats>,
        max_pending: usize,
    ) -> Self {
        Outbox {
            write_here,
            stats,
            state: Mutex::new(State {
                socket,
                ..State::default()
            }),
            settled: Notify::new(),
            needed: Notify::new(),
            max_pending,
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

    /// The pool settles the job handed over at `since`: writes `out` (the
    /// replies to `answered` messages) if asked to `write` and it can, keeps the rest and `error`
    /// for the connection, and wakes the connection only if it has something
    /// to do.
    pub fn deliver(
        &self,
        out: Vec<u8>,
        answered: u64,
        error: Option<Error>,
        write: bool,
        since: Instant,
    ) {
        // One clock read serves the metric and the idle clock.
        let now = Instant::now();
        self.stats.answered(answered, out.len());
        self.stats.handled(now.saturating_duration_since(since));
        let mut state = self.lock();
        let written = if write {
            self.send_now(&mut state, &out)
        } else {
            0
        };
        state.unwritten.extend_from_slice(&out[written..]);
        if let Some(error) = error {
            state.error.get_or_insert(error);
        }
        state.in_flight = false;
        state.finished = Some(now);
        let needed = state.needs_connection();
        drop(state);
        self.settled.notify_one();
        if needed {
            self.needed.notify_one();
        }
    }

    /// Writes what the socket takes of `out` now, if this side may write
    /// and nothing queued would be overtaken; returns how much.
    fn send_now(&self, state: &mut State, out: &[u8]) -> usize {
        if !self.write_here || state.closed || state.writing || !state.unwritten.is_empty() {
            return 0;
        }
        let Some(socket) = &state.socket else {
            return 0;
        };
        let mut written = 0;
        let mut failed = None;
        while written < out.len() {
            match socket.send(&out[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // The connection will see the same on its next read; report the
        // first failure.
        if let Some(e) = failed {
            state.error.get_or_insert(Error::Io(e));
        }
        written
    }

    /// Sends `bytes` (a whole encoded message) after everything sent
    /// before, from any thread, without waiting: written at once when
    /// `now` and the socket takes it, queued for the connection otherwise.
    /// A connection whose queue would pass `max_pending` is closed instead.
    pub fn push(&self, bytes: &[u8], now: bool) -> Pushed {
        let mut state = self.lock();
        if state.closed || state.ended || state.error.is_some() {
            return Pushed::Gone;
        }
        // Counted before the peer can see it, as replies are.
        self.stats.answered(1, bytes.len());
        let written = if now {
            self.send_now(&mut state, bytes)
        } else {
            0
        };
        let rest = &bytes[written..];
        if rest.is_empty() {
            return Pushed::Sent;
        }
        if state.unwritten.len() + rest.len() > self.max_pending {
            let pending = state.unwritten.len() + rest.len();
            state.error = Some(Error::SlowReader {
                pending,
                limit: self.max_pending,
            });
            // The connection may be waiting for the socket to take earlier
            // bytes, for as long as the write timeout: end that wait now.
            if let Some(socket) = &state.socket {
                let _ = socket.shutdown(std::net::Shutdown::Both);
            }
            drop(state);
            self.needed.notify_one();
            return Pushed::TooSlow;
        }
        // The connection is told once, when its queue stops being empty: a
        // broadcast to a busy connection costs a copy, not a wake-up.
        let tell = state.unwritten.is_empty() && !state.writing;
        state.unwritten.extend_from_slice(rest);
        drop(state);
        if tell {
            self.needed.notify_one();
        }
        Pushed::Sent
    }

    /// The connection has made replies to `answered` messages itself
    /// (a plain handler answered on its own thread), to write after
    /// whatever is queued here: a push made during the call that the socket
    /// did not take, say. Queues `out` behind it if there is any, and tells
    /// whether it did (then the connection writes the queue, as after a
    /// job); otherwise `out` is the connection's to write, now.
    pub fn queue_behind(&self, out: &[u8], answered: u64) -> bool {
        let mut state = self.lock();
        if !state.needs_connection() {
            return false;
        }
        // Counted before the peer can see them, as replies are.
        self.stats.answered(answered, out.len());
        state.unwritten.extend_from_slice(out);
        true
    }

    /// Asks the connection to close once what was sent before is out.
    pub fn end(&self) {
        let mut state = self.lock();
        if state.ended || state.closed {
            return;
        }
        state.ended = true;
        drop(state);
        self.needed.notify_one();
    }

    /// Unsent bytes queued now.
    pub fn pending(&self) -> usize {
        self.lock().unwritten.len()
    }

    /// Takes what happened since the last look. Bytes taken are being
    /// written: nothing pushed meanwhile overtakes them, until a take finds
    /// the queue empty.
    pub fn take(&self) -> Delivered {
        let mut state = self.lock();
        state.writing = !state.unwritten.is_empty();
        Delivered {
            unwritten: std::mem::take(&mut state.unwritten),
            error: state.error.take(),
            ended: state.ended,
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
        let mut state = self.lock();
        state.closed = true;
        if let Some(socket) = &state.socket {
            // Already gone is as good as closed.
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    /// The connection has ended: its socket's duplicate is closed too.
    pub fn release(&self) {
        let mut state = self.lock();
        state.closed = true;
        let socket = state.socket.take();
        drop(state);
        drop(socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(max_pending: usize) -> Outbox {
        // No socket: everything is handed back, as under TLS.
        Outbox::new(None, false, Arc::default(), max_pending)
    }

    #[test]
    fn pushes_queue_in_order_and_wake_the_connection_once() {
        let outbox = outbox(1024);
        assert_eq!(outbox.push(b"one ", true), Pushed::Sent);
        assert_eq!(outbox.push(b"two", false), Pushed::Sent);
        assert_eq!(outbox.pending(), 7);
        let taken = outbox.take();
        assert_eq!(taken.unwritten, b"one two");
        // Pushed while the connection writes what it took: queued behind it.
        assert_eq!(outbox.push(b"three", true), Pushed::Sent);
        assert_eq!(outbox.take().unwritten, b"three");
        assert!(outbox.take().unwritten.is_empty());
    }

    #[test]
    fn a_reader_past_the_bound_is_cut_off_and_takes_nothing_more() {
        let outbox = outbox(8);
        assert_eq!(outbox.push(b"12345", false), Pushed::Sent);
        assert_eq!(outbox.push(b"6789", false), Pushed::TooSlow);
        assert_eq!(outbox.push(b"x", false), Pushed::Gone);
        let taken = outbox.take();
        assert_eq!(taken.unwritten, b"12345", "what fitted still goes out");
        assert!(matches!(
            taken.error,
            Some(Error::SlowReader {
                pending: 9,
                limit: 8
            })
        ));
    }

    #[test]
    fn a_push_to_a_waiting_connection_wakes_it() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::task::{Context, Poll, Wake, Waker};
        struct Flag(AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let outbox = outbox(1024);
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut needed = std::pin::pin!(outbox.needed());
        let mut cx = Context::from_waker(&waker);
        assert!(needed.as_mut().poll(&mut cx).is_pending());
        assert_eq!(outbox.push(b"news", false), Pushed::Sent);
        assert!(flag.0.load(Ordering::SeqCst), "the connection was not told");
        assert_eq!(needed.as_mut().poll(&mut cx), Poll::Ready(()));
    }

    #[test]
    fn the_bound_counts_what_one_push_would_queue() {
        let outbox = outbox(8);
        assert_eq!(
            outbox.push(b"12345678", false),
            Pushed::Sent,
            "at the bound"
        );
        let over = self::outbox(8);
        assert_eq!(over.push(b"123456789", false), Pushed::TooSlow);
    }

    #[test]
    fn a_push_written_at_once_never_overtakes_what_is_queued() -> io::Result<()> {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let mut peer = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (ours, _) = listener.accept()?;
        let outbox = Outbox::new(Some(Socket::from(ours)), true, Arc::default(), 1024);
        assert_eq!(outbox.push(b"now ", true), Pushed::Sent);
        assert_eq!(outbox.pending(), 0, "written at once");
        assert_eq!(outbox.push(b"queued ", false), Pushed::Sent);
        assert_eq!(outbox.push(b"behind", true), Pushed::Sent);
        assert_eq!(outbox.pending(), 13, "queued behind what waits");
        assert_eq!(outbox.take().unwritten, b"queued behind");
        // While the connection writes what it took, nothing overtakes it.
        assert_eq!(outbox.push(b"!", true), Pushed::Sent);
        assert_eq!(outbox.pending(), 1);
        outbox.release();
        let mut seen = Vec::new();
        peer.read_to_end(&mut seen)?;
        assert_eq!(seen, b"now ");
        Ok(())
    }

    #[test]
    fn an_ended_or_closed_connection_takes_no_pushes() {
        let outbox = outbox(1024);
        outbox.end();
        assert_eq!(outbox.push(b"late", false), Pushed::Gone);
        assert!(outbox.take().ended);
        let closed = self::outbox(1024);
        closed.close();
        assert_eq!(closed.push(b"late", true), Pushed::Gone);
    }
}
