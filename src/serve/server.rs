//! [`Server`]: the engine behind a blocking, thread-safe handle, in the
//! shape of Python's `socketserver`. It binds in its constructor, serves on a
//! tokio runtime of its own, and can be waited on, shut down and closed from
//! any thread.

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use log::Level;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::admission::Admission;
use super::budget::Budget;
use super::config::{Config, Mode};
use super::connection::Shared;
use super::engine::{bind, listen, network_threads, run};
use super::hub::Hub;
use crate::error::{Error, Result};
use crate::handling::{RunOn, Runner};
use crate::protocol::Codec;
use crate::stats::Snapshot;

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
    /// The listening socket while the server listens. Shutdown closes it at
    /// once, so clients are refused rather than queued for nobody; serving
    /// again listens on the same address anew.
    listener: Option<StdListener>,
    /// Closed for good (`close`): starting again is `EBADF`.
    closed: bool,
    runtime: Option<Runtime>,
    running: Option<Running>,
}

struct Running {
    shutdown: CancellationToken,
    done: Arc<Completion>,
}

impl State {
    /// Asks the serving task to stop, and closes the listening socket now
    /// rather than when the drain is over (the task's own handle goes as it
    /// sees the token).
    fn stop(&mut self) {
        if let Some(running) = &self.running {
            running.shutdown.cancel();
            self.listener = None;
        }
    }
}

impl Server {
    /// Binds `host:port` (port 0 picks a free port) and prepares to serve.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an unusable configuration, [`Error::Io`]
    /// if the address cannot be bound.
    pub fn bind(host: &str, port: u16, config: Config, handling: Option<RunOn>) -> Result<Self> {
        if config.max_clients == 0 {
            return Err(Error::invalid("max_clients must be at least 1"));
        }
        if config.max_clients > Semaphore::MAX_PERMITS {
            return Err(Error::invalid("max_clients is too large"));
        }
        if config.max_handshakes == 0 {
            return Err(Error::invalid("max_handshakes must be at least 1"));
        }
        if config.max_handshakes > Semaphore::MAX_PERMITS {
            return Err(Error::invalid("max_handshakes is too large"));
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
            admission: Admission::new(&config),
            hub: Hub::default(),
            buffered: Budget::new(config.max_buffered_bytes),
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
                closed: false,
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

    /// Sends `message` to every open connection of a session server but
    /// the one numbered `exclude`, without waiting for any; returns how
    /// many took it (none when the server holds no sessions).
    ///
    /// # Errors
    ///
    /// A message the protocol cannot carry: an empty raw message, a framed
    /// one over the size limit.
    pub fn broadcast(&self, message: &[u8], exclude: Option<u64>) -> Result<usize> {
        self.shared
            .hub
            .broadcast(&self.shared.codec, message, exclude)
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
        if state.closed {
            return Err(Error::Io(io::Error::from_raw_os_error(9))); // EBADF, as a closed socket says
        }
        let listener = match &state.listener {
            Some(listener) => listener,
            None => {
                let config = &self.shared.config;
                let again = listen(self.local_addr, config.backlog, config.reuse_port)?;
                state.listener.insert(again)
            }
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
        self.state().stop();
    }

    /// Stops listening (new clients are refused from now on; starting again
    /// listens anew), lets replies in flight go out (waiting for running
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
        let running = {
            let mut state = self.state();
            state.stop();
            state.running.take()
        };
        if let Some(running) = running {
            running.done.wait(None);
        }
    }

    /// Stops at once without waiting for anything, leaving handlers still
    /// running to finish on their own: for a second Ctrl+C.
    pub fn abandon(&self) {
        let mut state = self.state();
        state.stop();
        state.running = None;
        if let Some(runner) = &self.shared.runner {
            runner.abandon();
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
        state.closed = true;
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
        // Idle handler threads leave now rather than after their idle time,
        // and let go of the handler with them.
        if let Some(runner) = &self.shared.runner {
            runner.abandon();
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
