//! `sockdemo.Server`: the blocking server handle, shaped after `socketserver`.
//!
//! The constructor binds (raising `OSError` at once), `serve_forever()` waits
//! with the interpreter released and wakes every tick for signals, and every
//! stop is bounded: a first Ctrl+C (or `shutdown()`) drains gracefully,
//! waiting for running handlers at most `shutdown_timeout`; a second one
//! stops at once. Interpreter exit closes every server still running.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use pyo3::PyVisit;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pyclass::PyTraverseError;
use pyo3::types::{PyDict, PyTuple, PyType};

use super::convert::{Message, address, parse_protocol, seconds};
use super::errors::to_py;
use super::handler::PyHandler;
use super::held::Held;
use super::loop_handler::LoopHandler;
use super::session::PySession;
use crate::handling::runner::RunOn;
use crate::protocol;
use crate::serve::config::{self, Config, Mode, ProxyPolicy};
use crate::serve::server;
use crate::tls;
use crate::wait::TICK;

/// Every server started, so that interpreter exit can stop them before
/// Python goes away beneath their threads.
static SERVERS: Mutex<Vec<Weak<server::Server>>> = Mutex::new(Vec::new());

/// Resets pyo3-log's level cache, so a logging configuration made after
/// import is honoured by servers created after it.
pub(super) static LOG_RESET: OnceLock<pyo3_log::ResetHandle> = OnceLock::new();

/// A TCP echo server, bound when constructed (port 0 picks a free port).
///
/// `handler`, if given, is called as `handler(message: str) -> str | bytes |
/// None`, up to `handler_threads` calls at once (quick ones on the network
/// thread that read the message); `None` keeps the echo.
/// Use `serve_forever()` to serve on this thread (Ctrl+C stops it), or
/// `start()` to serve in the background and `shutdown()` to stop.
#[pyclass(frozen, weakref, module = "sockdemo")]
pub(super) struct Server {
    inner: Arc<server::Server>,
    /// The sessions it runs, if it runs any (`session=`).
    sessions: Option<Arc<PySession>>,
    /// The handler or session class the core holds, for the collector.
    held: Option<Arc<Held>>,
}

#[pymethods]
impl Server {
    #[new]
    #[pyo3(signature = (
        host = protocol::DEFAULT_HOST.to_owned(), port = 0,
        max_clients = config::DEFAULT_MAX_CLIENTS, protocol = "raw",
        reply_prefix = protocol::DEFAULT_PREFIX.to_owned(), idle_timeout = None, certfile = None,
        keyfile = None, handler = None, *, buffer_size = protocol::DEFAULT_BUFFER_SIZE,
        max_message_size = protocol::DEFAULT_MAX_MESSAGE_SIZE,
        message_timeout = Some(config::DEFAULT_MESSAGE_TIMEOUT.as_secs_f64()),
        write_timeout = Some(config::DEFAULT_WRITE_TIMEOUT.as_secs_f64()),
        handler_threads = None,
        shutdown_timeout = config::DEFAULT_SHUTDOWN_TIMEOUT.as_secs_f64(),
        evict_idle_after = Some(config::DEFAULT_EVICT_IDLE_AFTER.as_secs_f64()),
        max_buffered_bytes = config::DEFAULT_MAX_BUFFERED_BYTES, proxy_protocol = false,
        proxy_allow = None, reuse_port = false, session = None,
        max_pending_bytes = config::DEFAULT_MAX_PENDING_BYTES,
        max_handshakes = config::DEFAULT_MAX_HANDSHAKES,
        handshake_timeout = Some(config::DEFAULT_HANDSHAKE_TIMEOUT.as_secs_f64())
    ))]
    // Spelled out so that help() shows the defaults (the constants' values;
    // a test checks they agree) instead of "...".
    #[pyo3(
        text_signature = "(host='127.0.0.1', port=0, max_clients=100, protocol='raw', reply_prefix='Server received: ', idle_timeout=None, certfile=None, keyfile=None, handler=None, *, buffer_size=1024, max_message_size=1048576, message_timeout=30.0, write_timeout=30.0, handler_threads=None, shutdown_timeout=5.0, evict_idle_after=10.0, max_buffered_bytes=67108864, proxy_protocol=False, proxy_allow=None, reuse_port=False, session=None, max_pending_bytes=1048576, max_handshakes=1024, handshake_timeout=10.0)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        host: String,
        port: u16,
        max_clients: usize,
        protocol: &str,
        reply_prefix: String,
        idle_timeout: Option<f64>,
        certfile: Option<PathBuf>,
        keyfile: Option<PathBuf>,
        handler: Option<Py<PyAny>>,
        buffer_size: usize,
        max_message_size: usize,
        message_timeout: Option<f64>,
        write_timeout: Option<f64>,
        handler_threads: Option<usize>,
        shutdown_timeout: f64,
        evict_idle_after: Option<f64>,
        max_buffered_bytes: usize,
        proxy_protocol: bool,
        proxy_allow: Option<Vec<String>>,
        reuse_port: bool,
        session: Option<Py<PyAny>>,
        max_pending_bytes: usize,
        max_handshakes: usize,
        handshake_timeout: Option<f64>,
    ) -> PyResult<Self> {
        if let Some(reset) = LOG_RESET.get() {
            reset.reset();
        }
        let tls = match (certfile, keyfile) {
            (Some(cert), key) => Some(
                tls::server_config(&cert, key.as_ref().unwrap_or(&cert))
                    .map_err(|e| to_py(py, e, None))?,
            ),
            (None, Some(_)) => return Err(PyValueError::new_err("keyfile needs a certfile")),
            (None, None) => None,
        };
        let config = Config {
            max_clients,
            protocol: parse_protocol(protocol)?,
            reply_prefix: reply_prefix.into_bytes(),
            buffer_size,
            max_message_size,
            idle_timeout: seconds("idle_timeout", idle_timeout)?,
            message_timeout: seconds("message_timeout", message_timeout)?,
            write_timeout: seconds("write_timeout", write_timeout)?,
            evict_idle_after: seconds("evict_idle_after", evict_idle_after)?,
            max_buffered_bytes,
            tls,
            handler_threads: handler_threads.unwrap_or_else(config::default_handler_threads),
            shutdown_timeout: seconds("shutdown_timeout", Some(shutdown_timeout))?
                .unwrap_or_default(),
            proxy: proxy_policy(proxy_protocol, proxy_allow)?,
            reuse_port,
            max_pending_bytes,
            max_handshakes,
            handshake_timeout: seconds("handshake_timeout", handshake_timeout)?,
            ..Config::default()
        };
        if max_pending_bytes == 0 {
            return Err(PyValueError::new_err(
                "max_pending_bytes must be at least 1",
            ));
        }
        let (run_on, sessions, held) = match (handler, session) {
            (Some(_), Some(_)) => {
                return Err(PyValueError::new_err(
                    "give a handler or a session, not both",
                ));
            }
            (Some(handler), None) => {
                let (run_on, held) = handling(py, handler)?;
                (Some(run_on), None, held)
            }
            (None, Some(session)) => {
                let sessions = session_class(py, session)?;
                let held = Some(sessions.held());
                (Some(RunOn::Pool(sessions.clone())), Some(sessions), held)
            }
            (None, None) => (None, None, None),
        };
        let inner = py
            .detach(|| server::Server::bind(&host, port, config, run_on))
            .map_err(|e| to_py(py, e, None))?;
        Ok(Server {
            inner: Arc::new(inner),
            sessions,
            held,
        })
    }

    /// `(host, port)` actually bound.
    #[getter]
    fn server_address<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        address(py, self.inner.local_addr())
    }

    /// The wire protocol: `"raw"` or `"framed"`.
    #[getter]
    fn protocol(&self) -> &'static str {
        self.inner.config().protocol.name()
    }

    /// Clients served at once; later ones wait in the backlog.
    #[getter]
    fn max_clients(&self) -> usize {
        self.inner.config().max_clients
    }

    /// Serves until `shutdown()` from another thread, or Ctrl+C, which
    /// drains gracefully and then raises `KeyboardInterrupt`.
    fn serve_forever(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        this.start_in(slf, Mode::Forever)?;
        this.wait(slf.py())
    }

    /// Serves one client, then returns; closes it after `max_messages`
    /// messages if given (the original `server.py`).
    #[pyo3(signature = (max_messages = None))]
    fn handle_request(slf: &Bound<'_, Self>, max_messages: Option<u64>) -> PyResult<()> {
        let this = slf.get();
        this.start_in(slf, Mode::Once { max_messages })?;
        this.wait(slf.py())
    }

    /// Starts serving on background threads and returns at once.
    fn start(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().start_in(slf, Mode::Forever)
    }

    /// Sends `message` (`str` or `bytes`) to every connection of a session
    /// server but `exclude` (a session, a connection, or its `id`), without
    /// waiting for any: encoded once and queued in Rust. Returns how many
    /// connections took it. A connection too far behind is closed rather
    /// than waited for.
    #[pyo3(signature = (message, exclude = None))]
    fn broadcast(
        &self,
        py: Python<'_>,
        message: &Bound<'_, PyAny>,
        exclude: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let message = Message::extract(message)?;
        let exclude = exclude.map(connection_id).transpose()?;
        self.inner
            .broadcast(message.bytes(), exclude)
            .map_err(|e| to_py(py, e, None))
    }

    /// Stops listening at once (new clients are refused; `start()` listens
    /// again), lets replies in flight go out (waiting for running handlers at
    /// most `shutdown_timeout`), closes every connection, then returns.
    /// Ctrl+C while it waits stops at once. From inside a handler it only
    /// asks the server to stop, and returns.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        self.inner.stop();
        self.drain(py)
    }

    /// Shuts down and releases the listening socket.
    fn server_close(&self, py: Python<'_>) -> PyResult<()> {
        self.shutdown(py)?;
        py.detach(|| self.inner.close());
        Ok(())
    }

    /// The server's counters: connections, messages, bytes, errors, and the
    /// handler pool (`handler_queued`, `handler_threads`, `handler_busy`).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let dict = PyDict::new(py);
        dict.set_item("connections_accepted", s.connections_accepted)?;
        dict.set_item("connections_active", s.connections_active)?;
        dict.set_item("connections_opening", s.connections_opening)?;
        dict.set_item("messages", s.messages)?;
        dict.set_item("bytes_in", s.bytes_in)?;
        dict.set_item("bytes_out", s.bytes_out)?;
        dict.set_item("errors", s.errors)?;
        dict.set_item("handler_queued", s.handler.queued)?;
        dict.set_item("handler_threads", s.handler.threads)?;
        dict.set_item("handler_busy", s.handler.busy)?;
        Ok(dict)
    }

    /// Every counter in Prometheus' text format (version 0.0.4), as a
    /// `/metrics` endpoint serves it.
    fn metrics(&self) -> String {
        self.inner.metrics()
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        match &self.held {
            Some(held) => held.traverse(&visit),
            None => Ok(()),
        }
    }

    /// Only ever called on a server nothing reachable refers to: it stops
    /// (without waiting) and lets go of its handler.
    fn __clear__(&self) {
        if let Some(held) = &self.held {
            held.clear();
        }
        self.inner.abandon();
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<()> {
        self.server_close(py)
    }

    fn __repr__(&self) -> String {
        let config = self.inner.config();
        format!(
            "<sockdemo.Server {} protocol={} max_clients={}{}>",
            self.inner.local_addr(),
            config.protocol,
            config.max_clients,
            if config.tls.is_some() { " tls" } else { "" }
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The handler threads may outlive this object by a moment: they
        // must not keep the handler (and whatever it refers to) alive.
        if let Some(held) = &self.held {
            held.clear();
        }
    }
}

impl Server {
    fn start_in(&self, slf: &Bound<'_, Self>, mode: Mode) -> PyResult<()> {
        let py = slf.py();
        if let Some(sessions) = &self.sessions {
            sessions.serve_for(slf.as_any())?;
        }
        self.inner.start(mode).map_err(|e| to_py(py, e, None))?;
        let mut servers = SERVERS.lock().unwrap_or_else(PoisonError::into_inner);
        servers.retain(|s| s.strong_count() > 0);
        servers.push(Arc::downgrade(&self.inner));
        Ok(())
    }

    /// Waits for serving to end with the interpreter released, waking every
    /// tick for signals; on Ctrl+C drains, then raises.
    fn wait(&self, py: Python<'_>) -> PyResult<()> {
        loop {
            if let Some(result) = py.detach(|| self.inner.wait(TICK)) {
                return result.map_err(|e| to_py(py, e, None));
            }
            if let Err(interrupt) = py.check_signals() {
                self.inner.stop();
                self.drain(py)?;
                return Err(interrupt);
            }
        }
    }

    /// Waits for a stop already asked for to finish, waking every tick for
    /// signals; an interrupt meanwhile abandons what is left and is raised.
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        if self.inner.on_handler_thread() {
            return Ok(());
        }
        loop {
            if py.detach(|| self.inner.wait(TICK)).is_some() {
                // How serving ended was said to whoever waited in serve_forever.
                py.detach(|| self.inner.shutdown());
                return Ok(());
            }
            if let Err(interrupt) = py.check_signals() {
                self.inner.abandon();
                return Err(interrupt);
            }
        }
    }
}

/// The PROXY policy the keywords ask for: `proxy_allow` (networks) only
/// with `proxy_protocol`, loopback when not given.
fn proxy_policy(on: bool, allow: Option<Vec<String>>) -> PyResult<Option<ProxyPolicy>> {
    match (on, allow) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err(PyValueError::new_err(
            "proxy_allow needs proxy_protocol=True",
        )),
        (true, None) => Ok(Some(ProxyPolicy::default())),
        (true, Some(allow)) => allow
            .join(",")
            .parse()
            .map(Some)
            .map_err(|e: crate::Error| PyValueError::new_err(e.to_string())),
    }
}

/// How the server runs `handler`: on an event loop if it is a
/// `LoopHandler` (`sockdemo.aio` makes one, and shows the collector what it
/// holds), else on handler threads; with what the collector must see.
fn handling(py: Python<'_>, handler: Py<PyAny>) -> PyResult<(RunOn, Option<Arc<Held>>)> {
    let handler = handler.into_bound(py);
    if let Ok(on_loop) = handler.cast::<LoopHandler>() {
        return Ok((RunOn::Loop(on_loop.get().bridge.clone()), None));
    }
    if !handler.is_callable() {
        return Err(PyTypeError::new_err("handler must be callable"));
    }
    let handler = PyHandler::new(py, handler.unbind());
    let held = handler.held();
    Ok((RunOn::Pool(Arc::new(handler)), Some(held)))
}

/// The sessions a `session=` class runs: a subclass of `sockdemo.Session`.
fn session_class(py: Python<'_>, session: Py<PyAny>) -> PyResult<Arc<PySession>> {
    let session = session.into_bound(py);
    let base = py.import("sockdemo.session")?.getattr("Session")?;
    let is_class = session
        .cast::<PyType>()
        .is_ok_and(|class| class.is_subclass(&base).unwrap_or(false));
    if !is_class {
        return Err(PyTypeError::new_err(format!(
            "session must be a subclass of sockdemo.Session (an async def session needs \
             sockdemo.aio.start_server), not {}",
            session.repr()?
        )));
    }
    Ok(Arc::new(PySession::new(session.unbind())))
}

/// The connection `exclude` names: a session, a connection, or an id.
fn connection_id(exclude: &Bound<'_, PyAny>) -> PyResult<u64> {
    if let Ok(id) = exclude.extract::<u64>() {
        return Ok(id);
    }
    exclude
        .getattr(pyo3::intern!(exclude.py(), "id"))
        .and_then(|id| id.extract())
        .map_err(|_| {
            PyTypeError::new_err("exclude must be a session, a connection or a connection id")
        })
}

/// Stops every server still running; registered with `atexit`.
#[pyfunction]
pub(super) fn _shutdown_all(py: Python<'_>) {
    let servers: Vec<_> =
        std::mem::take(&mut *SERVERS.lock().unwrap_or_else(PoisonError::into_inner));
    py.detach(|| {
        for server in servers.iter().filter_map(Weak::upgrade) {
            server.close();
        }
    });
}
