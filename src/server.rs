//! The server: a bound listener, an accept loop, a connection limit, and a
//! graceful shutdown.
//!
//! `run` is the whole engine as one async function of an already-bound
//! listener and a shutdown token, in the shape of mini-redis: binding and
//! argument parsing live at the edge. Clients beyond `max_clients` wait, as
//! they did with the original one-at-a-time server: queued, never refused.
//! One of them is accepted and held while the server makes room (closing the
//! connection idle the longest, once it has been idle long enough, see
//! `idle`); the rest wait in the kernel's backlog. Each connection task owns
//! its semaphore permit and frees the slot when it ends, however it ends.
//!
//! A connection runs as a task on the network threads, or, when the handler
//! runs on an event loop (`sockdemo.aio`), on that loop's thread (see
//! `reactor`): the same session code either way.
//!
//! Shutdown happens in three visible steps: decide (cancel the token), tell
//! (every connection `select!`s on it), wait (`TaskTracker::close` + `wait`).
//!
//! [`Server`] wraps that engine in a blocking, thread-safe handle (the shape of
//! Python's `socketserver`): it binds in its constructor, serves on a tokio
//! runtime of its own, and can be waited on, shut down and closed from any
//! thread.

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use log::{Level, debug, info, warn};
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::config::{Config, Mode};
use crate::connection::{self, Session, Shared};
use crate::error::{Error, Result};
pub use crate::handler::Handler;
use crate::handler::py_address;
use crate::idle::Registry;
use crate::protocol::Codec;
pub use crate::runner::Handling;
use crate::runner::Runner;
use crate::stats::Snapshot;

/// Serves clients from `listener` until `shutdown` is cancelled (or, in
/// [`Mode::Once`], one client has been served), then waits for every
/// connection to finish.
///
/// # Errors
///
/// Only a failure of the listener itself; every per-connection error is
/// logged and contained.
pub(crate) async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    mode: Mode,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let limit = Arc::new(Semaphore::new(shared.config.max_clients));
    let tracker = TaskTracker::new();
    let session = match mode {
        Mode::Forever => Session {
            max_messages: None,
            close_level: Level::Info,
        },
        // The one-shot script prints its own closing line.
        Mode::Once { max_messages } => Session {
            max_messages,
            close_level: Level::Debug,
        },
    };
    let mut backoff = Backoff::default();
    let result = loop {
        // A client accepted while every slot was taken, waiting for room.
        let mut waiting = None;
        let permit = match limit.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::select! {
                // The semaphore is never closed, so acquiring never fails.
                permit = limit.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break Ok(()),
                },
                accepted = accept(&listener, &mut backoff) => match accepted {
                    Ok(accepted) => {
                        waiting = Some(accepted);
                        match make_room(&limit, &shared, &shutdown).await {
                            Some(permit) => permit,
                            None => break Ok(()),
                        }
                    }
                    Err(e) => break Err(e),
                },
                _ = shutdown.cancelled() => break Ok(()),
            },
        };
        let (stream, peer) = match waiting.take() {
            Some(accepted) => accepted,
            None => tokio::select! {
                accepted = accept(&listener, &mut backoff) => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => break Err(e),
                },
                _ = shutdown.cancelled() => break Ok(()),
            },
        };
        let (shared, shutdown) = (shared.clone(), shutdown.clone());
        match shared.runner.as_ref().and_then(Runner::reactor).cloned() {
            // The handler's event loop serves the connection too.
            Some(reactor) => match stream.into_std().and_then(|s| reactor.adopt(s)) {
                Ok(stream) => {
                    let served = tracker.track_future(async move {
                        connection::serve(stream, peer, shared, session, shutdown).await;
                        drop(permit);
                    });
                    reactor.spawn(tokio::runtime::Handle::current(), served);
                }
                Err(e) => warn!("Connection from {} dropped: {e}", py_address(peer)),
            },
            None => {
                tracker.spawn(async move {
                    connection::serve(stream, peer, shared, session, shutdown).await;
                    drop(permit);
                });
            }
        }
        if matches!(mode, Mode::Once { .. }) {
            break Ok(());
        }
    };
    tracker.close();
    if !tracker.is_empty() {
        debug!("Draining {} connections.", tracker.len());
    }
    tokio::select! {
        () = tracker.wait() => {}
        stuck = stuck_in_calls(&tracker, &shared, &shutdown) => {
            for peer in stuck {
                warn!(
                    "The handler for {} is still running after {:?} of shutdown; closing that connection.",
                    py_address(peer),
                    shared.config.shutdown_timeout
                );
            }
        }
    }
    // Every connection is done: idle handler threads may go.
    if let Some(runner) = &shared.runner {
        runner.close();
    }
    result
}

/// Returns once shutdown has waited its grace period and every connection
/// still open is inside a handler call on its network thread: those cannot
/// hear the shutdown, and waiting for them could take for ever, so they are
/// closed from outside; returns their clients.
async fn stuck_in_calls(
    tracker: &TaskTracker,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Vec<SocketAddr> {
    shutdown.cancelled().await;
    tokio::time::sleep(shared.config.shutdown_timeout).await;
    let Some(runner) = &shared.runner else {
        return std::future::pending().await;
    };
    loop {
        if tracker.len() <= runner.calls_here() {
            return runner.cut_calls_here();
        }
        tokio::time::sleep(STUCK_CHECK).await;
    }
}

/// How often a shutdown past its grace period looks for connections stuck
/// in handler calls.
const STUCK_CHECK: Duration = Duration::from_millis(50);

/// Waits for a free slot while a client waits, closing the connection idle
/// the longest (once it has been idle `evict_idle_after`) to make one.
async fn make_room(
    limit: &Arc<Semaphore>,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    loop {
        if let Some(after) = shared.config.evict_idle_after {
            shared.idle.evict_longest_idle(after);
        }
        tokio::select! {
            permit = limit.clone().acquire_owned() => return permit.ok(),
            _ = tokio::time::sleep(ROOM_CHECK) => {}
            _ = shutdown.cancelled() => return None,
        }
    }
}

/// How often a full server with a client waiting looks for a connection to
/// close.
const ROOM_CHECK: Duration = Duration::from_millis(500);

/// Accepts the next connection, riding out errors that concern one
/// connection or a passing shortage of resources.
///
/// Accepting is exempt from tokio's cooperative budget. A task out of budget
/// is woken again only when its thread next looks for work, and a network
/// thread inside a handler call that blocks (see `inline`) does not look
/// for work until the call returns: a spent budget there would stop all
/// accepting behind one stuck handler. Unconstrained, the accept loop
/// yields only when the backlog is empty or every slot is taken, and is
/// then woken by the socket, on whichever thread watches the network.
async fn accept(
    listener: &TcpListener,
    backoff: &mut Backoff,
) -> io::Result<(TcpStream, SocketAddr)> {
    loop {
        match tokio::task::unconstrained(listener.accept()).await {
            Ok(accepted) => {
                backoff.reset();
                return Ok(accepted);
            }
            Err(e) if is_resource_shortage(&e) => {
                // Out of file descriptors or memory: the pending connection
                // stays in the backlog. Retrying at once would spin a core, so
                // wait, longer each time, until a connection frees something.
                let pause = backoff.next();
                if backoff.first_in_episode() {
                    warn!(
                        "Cannot accept a connection ({e}); backing off (from {pause:?} up to {:?}) until resources free up.",
                        Backoff::MAX
                    );
                }
                tokio::time::sleep(pause).await;
            }
            // The client gave up between connecting and being accepted.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

fn is_resource_shortage(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM on Linux and the BSDs alike.
    const SHORTAGES: [i32; 4] = [24, 23, 105, 12];
    e.raw_os_error()
        .is_some_and(|code| SHORTAGES.contains(&code))
        || e.kind() == io::ErrorKind::OutOfMemory
}

/// Exponential back-off from 5 ms up to half a second.
#[derive(Debug, Default)]
struct Backoff {
    current: Option<Duration>,
    steps: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_millis(500);

    fn next(&mut self) -> Duration {
        let next = match self.current {
            None => Self::FIRST,
            Some(d) => (d * 2).min(Self::MAX),
        };
        self.current = Some(next);
        self.steps += 1;
        next
    }

    fn first_in_episode(&self) -> bool {
        self.steps == 1
    }

    fn reset(&mut self) {
        if self.steps > 0 {
            info!("Accepting connections again.");
        }
        *self = Backoff::default();
    }
}

/// The network threads of a server: one per core, and at least two, since
/// a handler call on a network thread (see `inline`) must leave one free to
/// serve the network.
fn network_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// Binds a listening socket with SO_REUSEADDR, so a restarted server gets
/// its port back at once instead of waiting out TIME_WAIT.
///
/// # Errors
///
/// Name resolution and bind failures (`EADDRINUSE`, `EACCES`…).
pub fn bind(host: &str, port: u16, backlog: i32, reuse_port: bool) -> Result<StdListener> {
    let mut addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| Error::resolve(host, e))?
        .collect();
    // IPv4 first, as Python's socket.bind does with a name like "localhost":
    // clients that default to 127.0.0.1 must find the server.
    addrs.sort_by_key(SocketAddr::is_ipv6);
    let mut last = None;
    for addr in addrs {
        match bind_one(addr, backlog, reuse_port) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Io(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("no address found for {host:?}"),
        )
    })))
}

fn bind_one(addr: SocketAddr, backlog: i32, reuse_port: bool) -> io::Result<StdListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A bound server that serves on threads of its own.
///
/// All methods take `&self` and may be called from any thread. Dropping it
/// stops serving without waiting; call [`Server::shutdown`] to wait.
pub struct Server {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    state: Mutex<State>,
}

struct State {
    listener: Option<StdListener>,
    runtime: Option<Runtime>,
    running: Option<Running>,
}

struct Running {
    shutdown: CancellationToken,
    done: Arc<Completion>,
}

impl Server {
    /// Binds `host:port` (port 0 picks a free port) and prepares to serve.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an unusable configuration, [`Error::Io`]
    /// if the address cannot be bound.
    pub fn bind(host: &str, port: u16, config: Config, handling: Option<Handling>) -> Result<Self> {
        if config.max_clients == 0 {
            return Err(Error::invalid("max_clients must be at least 1"));
        }
        if config.max_clients > Semaphore::MAX_PERMITS {
            return Err(Error::invalid("max_clients is too large"));
        }
        if config.handler_threads == 0 {
            return Err(Error::invalid("handler_threads must be at least 1"));
        }
        let codec = Codec::new(config.protocol, config.buffer_size, config.max_message_size)?;
        let listener = bind(host, port, config.backlog, config.reuse_port)?;
        let local_addr = listener.local_addr()?;
        let runner = handling.map(|handling| {
            Runner::new(
                handling,
                codec,
                config.reply_prefix.clone(),
                config.handler_threads,
                network_threads(),
            )
        });
        let shared = Shared {
            codec,
            stats: Arc::default(),
            idle: Registry::new(),
            buffered: Arc::new(Semaphore::new(
                config.max_buffered_bytes.min(Semaphore::MAX_PERMITS),
            )),
            runner,
            tls: config.tls.clone().map(tokio_rustls::TlsAcceptor::from),
            message_level: if config.max_clients == 1 {
                Level::Info
            } else {
                Level::Debug
            },
            config,
        };
        Ok(Server {
            shared: Arc::new(shared),
            local_addr,
            state: Mutex::new(State {
                listener: Some(listener),
                runtime: None,
                running: None,
            }),
        })
    }

    /// The address actually bound (with the real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The configuration the server was bound with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The server's counters now, with the handler pool's load.
    pub fn stats(&self) -> Snapshot {
        let mut snapshot = self.shared.stats.snapshot();
        if let Some(runner) = &self.shared.runner {
            snapshot.handler = runner.load();
        }
        snapshot
    }

    /// Every counter in Prometheus' text format, for a `/metrics` endpoint.
    pub fn metrics(&self) -> String {
        self.shared.stats.render(self.stats().handler)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The lock guards plain data and no code panics while holding it;
        // should that ever change, the data is still consistent to use.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts serving in the background and returns at once.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if already serving, `EBADF` if closed, or an
    /// I/O error starting the runtime.
    pub fn start(&self, mode: Mode) -> Result<()> {
        let mut state = self.state();
        if state.running.as_ref().is_some_and(|r| !r.done.is_done()) {
            return Err(Error::invalid("the server is already serving"));
        }
        let Some(listener) = &state.listener else {
            return Err(Error::Io(io::Error::from_raw_os_error(9))); // EBADF, as a closed socket says
        };
        let listener = listener.try_clone()?;
        let runtime = match state.runtime.take() {
            Some(runtime) => runtime,
            None => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(network_threads())
                .thread_name("sockdemo-server")
                .enable_all()
                .build()?,
        };
        let listener = {
            let _context = runtime.enter();
            TcpListener::from_std(listener)
        };
        let runtime = state.runtime.insert(runtime);
        let listener = listener?;
        if let Some(runner) = &self.shared.runner {
            runner.open(runtime.handle());
        }
        let shutdown = CancellationToken::new();
        let done = Arc::new(Completion::default());
        let task = run(listener, self.shared.clone(), mode, shutdown.clone());
        let finished = done.clone();
        runtime.spawn(async move { finished.complete(task.await) });
        state.running = Some(Running { shutdown, done });
        Ok(())
    }

    fn completion(&self) -> Option<Arc<Completion>> {
        self.state().running.as_ref().map(|r| r.done.clone())
    }

    /// Waits up to `timeout` for serving to end. `None` means still serving;
    /// `Some` carries how it ended (also when it was not serving at all).
    ///
    /// # Errors
    ///
    /// Inside the `Some`: the listener failure that stopped the server.
    pub fn wait(&self, timeout: Duration) -> Option<Result<()>> {
        match self.completion() {
            Some(done) => done.wait(Some(timeout)),
            None => Some(Ok(())),
        }
    }

    /// Asks the server to stop (as [`Server::shutdown`]) without waiting;
    /// [`Server::wait`] tells when it has.
    pub fn stop(&self) {
        if let Some(running) = &self.state().running {
            running.shutdown.cancel();
        }
    }

    /// Stops accepting, lets replies in flight go out (waiting for running
    /// handlers up to the shutdown timeout), closes every connection, and
    /// returns once all of that is done. Idempotent.
    ///
    /// Called from one of the server's own handler threads, it only asks:
    /// waiting there would wait for the very handler that is asking, whose
    /// reply then goes out as the server stops.
    pub fn shutdown(&self) {
        if self.on_handler_thread() {
            return self.stop();
        }
        let running = self.state().running.take();
        if let Some(running) = running {
            running.shutdown.cancel();
            running.done.wait(None);
        }
    }

    /// Stops at once without waiting for anything, leaving handlers still
    /// running to finish on their own: for a second Ctrl+C.
    pub fn abandon(&self) {
        let mut state = self.state();
        if let Some(running) = state.running.take() {
            running.shutdown.cancel();
        }
        if let Some(runtime) = state.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Shuts down, then releases the listening socket. Idempotent.
    pub fn close(&self) {
        self.shutdown();
        let mut state = self.state();
        state.listener = None;
        if let Some(runtime) = state.runtime.take() {
            runtime.shutdown_background();
        }
        drop(state);
        if let Some(runner) = &self.shared.runner
            && !self.on_handler_thread()
        {
            runner.close();
            runner.join_idle();
        }
    }

    /// Is the caller one of this server's own handler threads?
    pub fn on_handler_thread(&self) -> bool {
        self.shared
            .runner
            .as_ref()
            .is_some_and(Runner::is_current_thread)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(running) = state.running.take() {
            running.shutdown.cancel();
        }
        // Never block in drop: tasks still winding down are simply dropped.
        if let Some(runtime) = state.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A one-time result that any number of threads can wait for.
#[derive(Default)]
struct Completion {
    result: Mutex<Option<Result<(), Arc<io::Error>>>>,
    ready: Condvar,
}

impl Completion {
    fn complete(&self, result: io::Result<()>) {
        let result = result.map_err(Arc::new);
        *self.result.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
        self.ready.notify_all();
    }

    fn is_done(&self) -> bool {
        self.result
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Waits for the result, for at most `timeout` if given.
    fn wait(&self, timeout: Option<Duration>) -> Option<Result<()>> {
        let guard = self.result.lock().unwrap_or_else(PoisonError::into_inner);
        let guard = match timeout {
            Some(t) => {
                self.ready
                    .wait_timeout_while(guard, t, |r| r.is_none())
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => self
                .ready
                .wait_while(guard, |r| r.is_none())
                .unwrap_or_else(PoisonError::into_inner),
        };
        guard.as_ref().map(|result| {
            // Every waiter gets its own copy of the listener's error.
            result.clone().map_err(|e| {
                Error::Io(match e.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(e.kind(), e.to_string()),
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_ceiling_and_resets() {
        let mut b = Backoff::default();
        assert_eq!(b.next(), Duration::from_millis(5));
        assert!(b.first_in_episode());
        assert_eq!(b.next(), Duration::from_millis(10));
        for _ in 0..20 {
            b.next();
        }
        assert_eq!(b.next(), Backoff::MAX);
        b.reset();
        assert_eq!(b.next(), Backoff::FIRST);
    }

    #[test]
    fn a_thread_that_blocks_after_a_burst_of_accepts_does_not_stop_accepting() -> io::Result<()> {
        const CLIENTS: usize = 200;
        // One network thread, and more clients waiting in the backlog than
        // one cooperative budget (128 operations) would accept in a row.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = bind("127.0.0.1", 0, 1024, false).map_err(io::Error::other)?;
        let clients = (0..CLIENTS)
            .map(|_| std::net::TcpStream::connect(listener.local_addr()?))
            .collect::<io::Result<Vec<_>>>()?;
        let (all_accepted, accepted) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Arc::new(Mutex::new(Some(released)));
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener)?;
            let mut backoff = Backoff::default();
            for n in 1..=CLIENTS {
                let (stream, _) = accept(&listener, &mut backoff).await?;
                // The first connection served blocks its thread, as a
                // handler called on a network thread may.
                let released = released.clone();
                tokio::spawn(async move {
                    let first = released.lock().ok().and_then(|mut r| r.take());
                    if let Some(released) = first {
                        let _ = released.recv();
                    }
                    drop(stream);
                });
                if n == CLIENTS {
                    let _ = all_accepted.send(());
                }
            }
            io::Result::Ok(())
        });
        let outcome = accepted.recv_timeout(Duration::from_secs(10));
        let _ = release.send(());
        runtime.shutdown_timeout(Duration::from_secs(5));
        assert!(outcome.is_ok(), "accepting stopped behind a blocked thread");
        drop(clients);
        Ok(())
    }

    #[test]
    fn descriptor_exhaustion_is_a_shortage() {
        assert!(is_resource_shortage(&io::Error::from_raw_os_error(24)));
        assert!(!is_resource_shortage(&io::Error::from_raw_os_error(111)));
    }
}
