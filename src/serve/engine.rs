//! The engine: serves clients from an already-bound listener until a
//! shutdown token is cancelled, in the shape of mini-redis's `run`.
//!
//! Each connection accepted takes a handshake place first (see
//! `admission`); one is held while the server makes room, the rest wait in
//! the listen backlog. Each connection task owns its place, then its slot.
//! Shutdown in three visible steps: decide (cancel the token; the listener
//! closes at once, after taking what the kernel had queued), tell (every
//! connection `select!`s on it), wait (`TaskTracker::close` + `wait`).

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use log::{Level, debug, info, warn};
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::Place;
use super::config::Mode;
use super::connection::{self, Session, Shared};
use crate::address::py_address;
use crate::error::{Error, Result};
use crate::handling::Runner;

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
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener, &mut backoff) => match accepted {
                Ok(accepted) => accepted,
                Err(e) => break Err(e),
            },
            _ = shutdown.cancelled() => break Ok(()),
        };
        // Held here, not in the backlog, while a place is made for it.
        let Some(place) = shared.admission.place(&shutdown).await else {
            break Ok(());
        };
        welcome(stream, peer, place, &shared, session, &shutdown, &tracker);
        if matches!(mode, Mode::Once { .. }) {
            break Ok(());
        }
    };
    if shutdown.is_cancelled() {
        // Stop listening now rather than after the drain, which may take
        // the whole shutdown timeout: meanwhile the kernel would go on
        // completing connections that nobody accepts, to reset them at the
        // end (or, in a `--workers` group, hand them late to another
        // worker). Those it has completed already were told they are
        // connected: they are served like any accepted a moment before
        // shutdown, whose first message still gets its answer.
        for (stream, peer) in queued(listener, shared.config.backlog) {
            let Some(place) = shared.admission.place(&shutdown).await else {
                break;
            };
            welcome(stream, peer, place, &shared, session, &shutdown, &tracker);
        }
    }
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

/// Starts serving one accepted connection, on the handler's event loop if
/// it has one.
fn welcome(
    stream: TcpStream,
    peer: SocketAddr,
    place: Place,
    shared: &Arc<Shared>,
    session: Session,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    let (shared, shutdown) = (shared.clone(), shutdown.clone());
    match shared.runner.as_ref().and_then(Runner::reactor).cloned() {
        // The handler's event loop serves the connection too.
        Some(reactor) => match stream.into_std().and_then(|s| reactor.adopt(s)) {
            Ok(stream) => {
                let served = tracker.track_future(async move {
                    connection::serve(stream, peer, place, shared, session, shutdown).await;
                });
                reactor.spawn(tokio::runtime::Handle::current(), served);
            }
            Err(e) => warn!("Connection from {} dropped: {e}", py_address(peer)),
        },
        None => {
            tracker.spawn(async move {
                connection::serve(stream, peer, place, shared, session, shutdown).await;
            });
        }
    }
}

/// Closes `listener` (this handle of it), first taking the connections the
/// kernel has completed for it, at most one backlog's worth (more may keep
/// arriving until the last handle closes). Asked of the socket itself, not
/// of tokio's record of its readiness, which may not have heard of the last
/// ones yet.
fn queued(listener: TcpListener, backlog: i32) -> Vec<(TcpStream, SocketAddr)> {
    let mut queued = Vec::new();
    let Ok(listener) = listener.into_std() else {
        return queued;
    };
    for _ in 0..backlog {
        let Ok((stream, peer)) = listener.accept() else {
            break;
        };
        let stream = stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(stream));
        match stream {
            Ok(stream) => queued.push((stream, peer)),
            Err(e) => warn!("Connection from {} dropped: {e}", py_address(peer)),
        }
    }
    queued
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

/// Accepts the next connection, riding out errors that concern one
/// connection or a passing shortage of resources.
///
/// Accepting is exempt from tokio's cooperative budget. A task out of budget
/// is woken again only when its thread next looks for work, and a network
/// thread inside a handler call that blocks (see `handling::lanes`) does not look
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
/// a handler call on a network thread (see `handling::lanes`) must leave one free to
/// serve the network.
pub(super) fn network_threads() -> usize {
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
        match listen(addr, backlog, reuse_port) {
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

/// Listens on `addr` exactly, as [`bind`] does on each address it tries.
pub(super) fn listen(addr: SocketAddr, backlog: i32, reuse_port: bool) -> io::Result<StdListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    // Windows has no SO_REUSEPORT (its SO_REUSEADDR lets another process
    // steal the port, which is not what sharing means here).
    #[cfg(not(unix))]
    if reuse_port {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "sharing a port between processes (reuse_port, --workers) needs SO_REUSEPORT, \
             which this system does not have",
        ));
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

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
