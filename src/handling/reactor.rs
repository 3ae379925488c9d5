//! A reactor inside someone else's event loop: the connections of a
//! `sockdemo.aio` server with a handler are served on the loop's own thread.
//!
//! An asyncio handler must run on its loop's thread. If the connections lived
//! on the network threads, every request would cross between threads twice,
//! and on a small machine those wake-ups cost more than the request. So an
//! aio server's connections are served where their handler runs, as uvloop
//! serves its own, by the same connection code the network threads run.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_task::{Runnable, Task};
use log::warn;
use mio::{Events, Interest, Token};
use slab::Slab;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::runtime::Handle;

use crate::socket::{RawDescriptor, Socket, duplicate, send_vectored};

/// The bell's place among the sockets' tokens (which are slab keys).
const BELL: Token = Token(usize::MAX);
/// Ready sockets collected per system call.
const EVENTS: usize = 256;
/// Tasks one turn runs before it lets the loop do its other work (the rest
/// ring the bell, so the loop comes straight back).
const TURN_BUDGET: usize = 1024;

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is a push, a pop or a slab update.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sockets and tasks served on an event loop's thread.
///
/// The loop watches one descriptor, [`Reactor::fd`]: an epoll instance of our
/// own that holds every connection's socket (edge-triggered, registered once)
/// and a bell. It is readable when a socket is ready or the bell has rung.
/// The loop then calls [`Reactor::turn`], which collects the ready sockets
/// without waiting and runs the tasks they wake, each to its next wait.
///
/// A task woken from another thread (a timer, a shutdown, a slot freed)
/// is queued and rings the bell, once until the next turn. A task woken
/// during a turn is run in that turn: no bell, no system call.
///
/// Timers are tokio's: a turn runs inside the server's runtime, whose timer
/// thread wakes a task like any other thread would.
///
/// A loop that cannot watch a descriptor (Windows' Proactor loop has no
/// `add_reader`, and Windows' completion ports are no descriptor anyway) has
/// a thread of ours watch for it instead (see `watcher`): the thread waits
/// for the sockets and the bell, and asks the loop for a turn.
pub struct Reactor {
    poll: Mutex<(mio::Poll, Events)>,
    /// The epoll (or kqueue) instance's descriptor, for the loop to watch;
    /// none on Windows.
    fd: Option<RawDescriptor>,
    registry: mio::Registry,
    bell: mio::Waker,
    /// The bell has rung since the last turn began: ringing again adds nothing.
    rung: AtomicBool,
    /// Watched by a thread of ours, which collects the readiness: a turn
    /// only runs the tasks.
    pub(super) watched: AtomicBool,
    /// The watching thread has asked the loop for a turn that has not begun.
    pub(super) asked: AtomicBool,
    /// The watching thread is to stop.
    pub(super) unwatched: AtomicBool,
    /// The watching thread, to wait for once it is told to stop.
    pub(super) watcher: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Readiness per registered socket, by token.
    sources: Mutex<Slab<Arc<Source>>>,
    /// Tasks woken and not yet run, in order.
    queue: Mutex<VecDeque<Runnable>>,
    /// Every task not yet finished, to be cancelled when the server closes.
    tasks: Mutex<Slab<Task<()>>>,
    /// The runtime the tasks run in (for its timers): the server's.
    runtime: Mutex<Option<Handle>>,
    /// Turns begun, and the count when [`Reactor::stalled`] last looked.
    turns: AtomicU64,
    seen_turns: AtomicU64,
    /// Closed: tasks are dropped, not run. A turn runs tasks under the read
    /// lock, so [`Reactor::close`] returns only once none is running.
    closed: RwLock<bool>,
    /// Tests only: run right after a turn's last look at the queue, the
    /// narrowest window for a wake from another thread to be lost in.
    #[cfg(test)]
    after_last_look: Mutex<Option<Box<dyn FnMut() + Send>>>,
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor").field("fd", &self.fd).finish()
    }
}

thread_local! {
    /// Where a loop's thread reads into; as large as the largest read yet.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The reactor this thread is turning, if any: a task it wakes is run
    /// in the same turn, with no bell.
    static TURNING: std::cell::Cell<*const Reactor> = const { std::cell::Cell::new(std::ptr::null()) };
}

impl Reactor {
    /// A reactor with no sockets and no tasks.
    ///
    /// # Errors
    ///
    /// When the epoll instance or the bell cannot be made (out of
    /// descriptors, say).
    pub fn new() -> io::Result<Arc<Self>> {
        let poll = mio::Poll::new()?;
        #[cfg(unix)]
        let fd = Some(std::os::fd::AsRawFd::as_raw_fd(&poll));
        #[cfg(not(unix))]
        let fd = None;
        let registry = poll.registry().try_clone()?;
        let bell = mio::Waker::new(&registry, BELL)?;
        Ok(Arc::new(Reactor {
            poll: Mutex::new((poll, Events::with_capacity(EVENTS))),
            fd,
            registry,
            bell,
            rung: AtomicBool::new(false),
            watched: AtomicBool::new(false),
            asked: AtomicBool::new(false),
            unwatched: AtomicBool::new(false),
            watcher: Mutex::default(),
            sources: Mutex::default(),
            queue: Mutex::default(),
            tasks: Mutex::default(),
            runtime: Mutex::default(),
            turns: AtomicU64::new(0),
            seen_turns: AtomicU64::new(0),
            closed: RwLock::new(false),
            #[cfg(test)]
            after_last_look: Mutex::default(),
        }))
    }

    /// The descriptor the loop watches for reading; when it is readable,
    /// the loop calls [`Reactor::turn`]. None on Windows: there a thread
    /// watches instead (see `watcher`).
    pub fn fd(&self) -> Option<RawDescriptor> {
        self.fd
    }

    /// Wakes the loop, unless it has been woken since its last turn began,
    /// or the caller is the loop inside a turn (it looks again before it
    /// waits).
    pub fn ring(&self) {
        if self.is_turning() {
            return;
        }
        if !self.rung.swap(true, Ordering::AcqRel) {
            // The bell's counter cannot overflow in practice, and a failure
            // would only mean it is already readable.
            let _ = self.bell.wake();
        }
    }

    /// Is the calling thread inside this reactor's turn?
    fn is_turning(&self) -> bool {
        TURNING.with(|turning| std::ptr::eq(turning.get(), self))
    }

    /// Runs `future` on the loop's thread, inside `runtime` (for its timers).
    pub(crate) fn spawn<F>(self: &Arc<Self>, runtime: Handle, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        *lock(&self.runtime) = Some(runtime);
        let mut tasks = lock(&self.tasks);
        let entry = tasks.vacant_entry();
        let id = entry.key();
        let reactor = Arc::downgrade(self);
        let done = reactor.clone();
        let task = async move {
            future.await;
            // Finished: forget the handle (detached, it cancels nothing).
            if let Some(reactor) = done.upgrade()
                && let Some(task) = lock(&reactor.tasks).try_remove(id)
            {
                task.detach();
            }
        };
        let (runnable, task) =
            async_task::spawn(task, move |runnable| schedule(&reactor, runnable));
        entry.insert(task);
        drop(tasks);
        runnable.schedule();
    }

    fn schedule(&self, runnable: Runnable) {
        lock(&self.queue).push_back(runnable);
        self.ring();
    }

    /// Collects the sockets that are ready, without waiting, and runs every
    /// task woken, each to its next wait (up to a budget: the rest ring the
    /// bell); returns whether any task ran. Call it on the loop's thread
    /// whenever [`Reactor::fd`] is readable: readiness not yet collected
    /// keeps it readable.
    pub fn turn(&self) -> bool {
        self.turns.fetch_add(1, Ordering::Relaxed);
        // Set first: the tasks that ready sockets wake are run in this turn.
        let turning = Turning::enter(self);
        if self.watched.load(Ordering::Acquire) {
            // The watching thread collects; what it wakes from now on needs
            // another turn, so it asks again.
            self.asked.store(false, Ordering::Release);
        } else {
            self.collect(Some(Duration::ZERO));
        }
        // Cleared once the bell's ring has been collected, not before: a
        // ring in between would have its bell taken by the collect while
        // `rung` said it was still pending, and a wake later in this turn,
        // after the last look at the queue, would ring no bell at all.
        self.rung.store(false, Ordering::Release);
        let closed = self.closed.read().unwrap_or_else(PoisonError::into_inner);
        // Entered once for the whole turn, not per task.
        let runtime = lock(&self.runtime).clone();
        let _entered = runtime.as_ref().map(Handle::enter);
        let mut ran = 0;
        loop {
            // Its own statement: the lock must be let go before the task
            // runs, since a task may wake another.
            let next = lock(&self.queue).pop_front();
            let Some(runnable) = next else {
                #[cfg(test)]
                if let Some(hook) = lock(&self.after_last_look).as_mut() {
                    hook();
                }
                break;
            };
            if *closed {
                drop(runnable);
                continue;
            }
            // A task that panics (a runtime shut down under it, say) is
            // dropped, which closes its connection; the loop goes on, and
            // no panic reaches the code that turns it (Python's).
            if std::panic::catch_unwind(AssertUnwindSafe(|| runnable.run())).is_err() {
                warn!("A connection task on the event loop failed; its connection is closed.");
            }
            ran += 1;
            if ran == TURN_BUDGET {
                break;
            }
        }
        drop(turning);
        if ran == TURN_BUDGET && !lock(&self.queue).is_empty() {
            self.ring();
        }
        ran > 0
    }

    /// Takes the readiness epoll has for us, waiting up to `wait` for some
    /// (`None`: until there is), and wakes the tasks waiting on it.
    pub(super) fn collect(&self, wait: Option<Duration>) {
        let mut poll = lock(&self.poll);
        let (poll, events) = &mut *poll;
        // Interrupted or failed, it collects nothing this time; the
        // descriptor stays readable and the loop comes back.
        if poll.poll(events, wait).is_err() {
            return;
        }
        if events.is_empty() {
            return;
        }
        // The sources are looked up under their lock, and their tasks woken
        // after it is let go.
        let mut ready = Vec::with_capacity(events.iter().count());
        let sources = lock(&self.sources);
        for event in events.iter() {
            if event.token() == BELL {
                continue;
            }
            if let Some(source) = sources.get(event.token().0) {
                let mut bits = 0;
                if event.is_readable() {
                    bits |= READABLE;
                }
                if event.is_read_closed() || event.is_error() {
                    bits |= READ_CLOSED;
                }
                if event.is_writable() {
                    bits |= WRITABLE;
                }
                if event.is_write_closed() || event.is_error() {
                    bits |= WRITE_CLOSED;
                }
                ready.push((source.clone(), bits));
            }
        }
        drop(sources);
        for (source, bits) in ready {
            source.set(bits);
        }
    }

    /// The watching thread's wait (see `watcher`): collects once something
    /// is ready or the bell rings. The tasks it wakes are queued for the
    /// loop's turn, which the watcher asks for next, so they ring no bell.
    pub(super) fn collect_waiting(&self) {
        let _turning = Turning::enter(self);
        self.collect(None);
    }

    /// Ends the watching thread's wait.
    pub(super) fn wake_watcher(&self) {
        // As in `ring`: a failure means the bell is readable already.
        let _ = self.bell.wake();
    }

    /// Tests only: is a thread collecting now (a watcher waiting, say)?
    #[cfg(test)]
    pub(super) fn is_collecting(&self) -> bool {
        self.poll.try_lock().is_err()
    }

    /// Tests only: `hook` runs right after each turn's last look at the queue.
    #[cfg(test)]
    pub(super) fn after_last_look(&self, hook: impl FnMut() + Send + 'static) {
        *lock(&self.after_last_look) = Some(Box::new(hook));
    }

    /// The runtime the tasks run in, once one has been spawned.
    pub(crate) fn runtime(&self) -> Option<Handle> {
        lock(&self.runtime).clone()
    }

    /// Has the loop stopped turning? True when a woken task waits and no
    /// turn has begun since the last time this was asked.
    pub fn stalled(&self) -> bool {
        let turns = self.turns.load(Ordering::Relaxed);
        let seen = self.seen_turns.swap(turns, Ordering::Relaxed);
        turns == seen && !lock(&self.queue).is_empty()
    }

    /// Tasks not yet finished.
    pub fn tasks(&self) -> usize {
        lock(&self.tasks).len()
    }

    /// Cancels every task, dropping its future (and so closing its
    /// connection); from now on tasks are dropped, not run. Waits for a turn
    /// running tasks to finish them first.
    pub fn close(&self) {
        *self.closed.write().unwrap_or_else(PoisonError::into_inner) = true;
        // Dropping a handle schedules its task once more, to be dropped.
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        drop(tasks);
        let queued = std::mem::take(&mut *lock(&self.queue));
        drop(queued);
    }

    /// Has [`Reactor::close`] been called (and no [`Reactor::reopen`] since)?
    pub(crate) fn is_closed(&self) -> bool {
        *self.closed.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs tasks again after [`Reactor::close`].
    pub fn reopen(&self) {
        *self.closed.write().unwrap_or_else(PoisonError::into_inner) = false;
    }

    /// Registers `stream` (connected) with this reactor.
    ///
    /// # Errors
    ///
    /// When epoll refuses it (out of memory, say).
    pub(crate) fn adopt(self: &Arc<Self>, stream: std::net::TcpStream) -> io::Result<LoopStream> {
        stream.set_nonblocking(true)?;
        let mut io = mio::net::TcpStream::from_std(stream);
        let source = Arc::new(Source::default());
        let token = lock(&self.sources).insert(source.clone());
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.registry.register(&mut io, Token(token), interest) {
            lock(&self.sources).remove(token);
            return Err(e);
        }
        Ok(LoopStream {
            io,
            source,
            token,
            reactor: self.clone(),
        })
    }
}

/// This thread is inside `reactor`'s turn until dropped, however the turn
/// ends (a task's panic included).
struct Turning {
    previous: *const Reactor,
}

impl Turning {
    fn enter(reactor: &Reactor) -> Self {
        Turning {
            previous: TURNING.with(|turning| turning.replace(reactor)),
        }
    }
}

impl Drop for Turning {
    fn drop(&mut self) {
        TURNING.with(|turning| turning.set(self.previous));
    }
}

fn schedule(reactor: &Weak<Reactor>, runnable: Runnable) {
    match reactor.upgrade() {
        Some(reactor) => reactor.schedule(runnable),
        // No reactor, no loop to run it: dropping it drops its future.
        None => drop(runnable),
    }
}

const READABLE: u8 = 1;
const WRITABLE: u8 = 2;
/// The peer's end, or an error: never cleared, since no new edge would come
/// to say it again (a read that returns the last bytes before the end says
/// nothing of the end).
const READ_CLOSED: u8 = 4;
const WRITE_CLOSED: u8 = 8;

/// What ends a wait for `bit`: the bit itself, or its direction's end.
fn ends_wait(bit: u8) -> u8 {
    if bit == READABLE {
        READABLE | READ_CLOSED
    } else {
        WRITABLE | WRITE_CLOSED
    }
}

/// One socket's readiness, and the tasks waiting for it.
///
/// The state is the readiness bits (the low byte) and a tick (the rest),
/// which every collected edge advances. A task that saw a bit set, tried
/// the socket and was told WouldBlock clears the bit only if no edge has
/// come since it looked: where a thread of ours collects while the loop's
/// thread runs the tasks (see `watcher`), an edge can land between the
/// system call and the clear, and clearing it then would lose it for good.
#[derive(Debug)]
struct Source {
    state: AtomicU32,
    reader: Mutex<Option<Waker>>,
    writer: Mutex<Option<Waker>>,
}

/// When a task looked at a source's readiness: its tick then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tick(u32);

const BITS: u32 = 0xff;
const ONE_TICK: u32 = 1 << 8;

impl Default for Source {
    fn default() -> Self {
        // Assumed ready until a system call says otherwise: the first read
        // of a fresh connection tries at once.
        Source {
            state: AtomicU32::new(u32::from(READABLE | WRITABLE)),
            reader: Mutex::default(),
            writer: Mutex::default(),
        }
    }
}

impl Source {
    fn set(&self, bits: u8) {
        let add = u32::from(bits);
        let next = |state: u32| Some((state & !BITS).wrapping_add(ONE_TICK) | (state & BITS) | add);
        // The closure always gives a value: both arms hold the state before.
        let before = match self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, next)
        {
            Ok(before) | Err(before) => before,
        };
        // Only what was not ready already can have a task waiting for it
        // (a task stores its waker only after seeing its bit clear).
        let bits = bits & !(before as u8);
        // Each waker is taken first and woken with no lock held.
        if bits & ends_wait(READABLE) != 0 {
            let reader = lock(&self.reader).take();
            if let Some(waker) = reader {
                waker.wake();
            }
        }
        if bits & ends_wait(WRITABLE) != 0 {
            let writer = lock(&self.writer).take();
            if let Some(waker) = writer {
                waker.wake();
            }
        }
    }

    /// The tick now, to hand to [`Source::clear`] after a system call.
    fn tick(&self) -> Tick {
        Tick(self.state.load(Ordering::Acquire) >> 8)
    }

    /// Clears `bits`, unless an edge has come since `seen`.
    fn clear(&self, bits: u8, seen: Tick) {
        let clear = |state: u32| (state >> 8 == seen.0).then_some(state & !u32::from(bits));
        // Refused: an edge came meanwhile, and the bits stay set.
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, clear);
    }

    /// Ready for `bit` (at the tick given), or registers `cx` to be woken
    /// when it is.
    fn poll_ready(&self, bit: u8, cx: &mut Context<'_>) -> Poll<Tick> {
        let over = u32::from(ends_wait(bit));
        let state = self.state.load(Ordering::Acquire);
        if state & over != 0 {
            return Poll::Ready(Tick(state >> 8));
        }
        let slot = if bit == READABLE {
            &self.reader
        } else {
            &self.writer
        };
        *lock(slot) = Some(cx.waker().clone());
        // Readiness that came while the waker was stored is not lost.
        let state = self.state.load(Ordering::Acquire);
        if state & over != 0 {
            return Poll::Ready(Tick(state >> 8));
        }
        Poll::Pending
    }
}

/// A connected socket served on the loop's thread, for the connection code
/// (see `socket`).
pub(crate) struct LoopStream {
    io: mio::net::TcpStream,
    source: Arc<Source>,
    token: usize,
    reactor: Arc<Reactor>,
}

impl LoopStream {
    /// Runs `op` once `bit` is ready, until it stops saying WouldBlock;
    /// gives its result with the tick at which its readiness was seen.
    fn poll_io<T>(
        &self,
        bit: u8,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&mio::net::TcpStream) -> io::Result<T>,
    ) -> Poll<(io::Result<T>, Tick)> {
        loop {
            let Poll::Ready(seen) = self.source.poll_ready(bit, cx) else {
                return Poll::Pending;
            };
            match op(&self.io) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.source.clear(bit, seen),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                result => return Poll::Ready((result, seen)),
            }
        }
    }
}

impl Socket for LoopStream {
    fn duplicate(&self) -> Option<socket2::Socket> {
        duplicate(&self.io)
    }

    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        poll_fn(|cx| self.source.poll_ready(READABLE, cx).map(|_| Ok(())))
    }

    fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        let seen = self.source.tick();
        let result = (&self.io).write(data);
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.source.clear(WRITABLE, seen);
        }
        result
    }

    fn try_write_vectored(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        let seen = self.source.tick();
        let result = send_vectored(socket2::SockRef::from(&self.io), parts);
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.source.clear(WRITABLE, seen);
        }
        result
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let seen = self.source.tick();
        let result = (&self.io).read(buf);
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.source.clear(READABLE, seen);
        }
        result
    }

    fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.io.set_nodelay(nodelay)
    }
}

impl AsyncRead for LoopStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let wanted = buf.remaining();
        // Read through a scratch buffer the loop's thread keeps: reading
        // straight into `buf` would mean zeroing its free space first (it
        // is fresh memory for every message), which costs more than copying
        // the few bytes that come.
        let read = SCRATCH.with_borrow_mut(|scratch| {
            if scratch.len() < wanted {
                scratch.resize(wanted, 0);
            }
            let scratch = &mut scratch[..wanted];
            let read = this.poll_io(READABLE, cx, |mut io| io.read(scratch));
            if let Poll::Ready((Ok(n), _)) = read {
                buf.put_slice(&scratch[..n]);
            }
            read
        });
        let Poll::Ready((read, seen)) = read else {
            return Poll::Pending;
        };
        let n = read?;
        // Edge-triggered: a short read emptied the socket, and new bytes
        // will say so. Waiting now spares a read that would say WouldBlock.
        if n > 0 && n < wanted {
            this.source.clear(READABLE, seen);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for LoopStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(WRITABLE, cx, |mut io| io.write(data))
            .map(|(written, _)| written)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(match self.io.shutdown(Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            result => result,
        })
    }
}

impl Drop for LoopStream {
    fn drop(&mut self) {
        // Explicitly: a duplicate of the descriptor (an outbox's) would keep
        // the registration alive after the close.
        let _ = self.reactor.registry.deregister(&mut self.io);
        lock(&self.reactor.sources).try_remove(self.token);
    }
}

#[cfg(all(test, unix))]
pub(crate) mod testing {
    use std::os::fd::RawFd;
    use std::time::Duration;

    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};

    /// Is `fd` readable now? (What a loop watching it would see.)
    pub fn readable(fd: Option<RawFd>) -> bool {
        readable_within(fd, Duration::ZERO)
    }

    /// Does `fd` become readable within `limit`?
    pub fn readable_within(fd: Option<RawFd>, limit: Duration) -> bool {
        let Some(fd) = fd else {
            return false;
        };
        let check = || -> std::io::Result<bool> {
            let mut poll = Poll::new()?;
            poll.registry()
                .register(&mut SourceFd(&fd), Token(0), Interest::READABLE)?;
            let mut events = Events::with_capacity(1);
            poll.poll(&mut events, Some(limit))?;
            Ok(!events.is_empty())
        };
        check().unwrap_or(false)
    }
}

#[cfg(all(test, unix))]
mod tests;

#[cfg(all(test, unix))]
mod stream_tests;
