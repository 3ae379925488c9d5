//! The Python module `sockdemo._sockdemo`: the only file that knows Python.
//!
//! It converts arguments, maps errors, and releases the interpreter; it holds
//! no networking logic. Three rules shape it:
//!
//! * Every network wait runs inside `py.detach(...)`, woken at least every
//!   100 ms to run `check_signals()`, so Ctrl+C and other threads keep working.
//! * Errors become the exceptions a socket user already catches: `OSError`
//!   built from `(errno, strerror)` so Python picks `ConnectionRefusedError`
//!   and friends itself, `TimeoutError`, `ValueError`, and sockdemo's own
//!   classes from `sockdemo.errors`, which subclass those.
//! * Messages given as `str` come back as `str`, `bytes` as `bytes`. Text is
//!   UTF-8 with `surrogateescape`, so even invalid bytes survive the trip.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use pyo3::exceptions::{
    PyConnectionResetError, PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyTimeoutError,
    PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};

use crate::bench;
use crate::client::{self, TICK};
use crate::error::Error;
use crate::protocol::{self, Protocol};
use crate::server::{self, Handler, Mode};
use crate::tls;

pyo3::import_exception!(sockdemo.errors, MessageTooLarge);
pyo3::import_exception!(sockdemo.errors, ProtocolError);
pyo3::import_exception!(sockdemo.errors, TLSError);

/// Looks up an errno constant by name in Python's `errno` module, which knows
/// the platform's numbers.
fn errno(py: Python<'_>, name: &str) -> PyResult<i32> {
    py.import("errno")?.getattr(name)?.extract()
}

/// Rust's text for an OS error, without the " (os error N)" it appends.
fn strerror(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn os_error(py: Python<'_>, e: &std::io::Error, filename: Option<&PathBuf>) -> PyErr {
    use std::io::ErrorKind::*;
    let code = e.raw_os_error().or_else(|| {
        let name = match e.kind() {
            TimedOut => "ETIMEDOUT",
            ConnectionRefused => "ECONNREFUSED",
            ConnectionReset => "ECONNRESET",
            ConnectionAborted => "ECONNABORTED",
            BrokenPipe => "EPIPE",
            NotFound => "ENOENT",
            PermissionDenied => "EACCES",
            AddrInUse => "EADDRINUSE",
            AddrNotAvailable => "EADDRNOTAVAIL",
            _ => return None,
        };
        errno(py, name).ok()
    });
    match (code, filename) {
        (Some(code), Some(path)) => {
            PyOSError::new_err((code, strerror(e), path.to_string_lossy().into_owned()))
        }
        (Some(code), None) => PyOSError::new_err((code, strerror(e))),
        (None, _) => PyOSError::new_err(e.to_string()),
    }
}

/// Maps a core error onto the Python exception a socket user expects.
/// `interrupted` is the exception an interrupt check raised, if any.
fn to_py(py: Python<'_>, err: Error, interrupted: Option<PyErr>) -> PyErr {
    match err {
        Error::Io(e) => os_error(py, &e, None),
        Error::File { path, source } => os_error(py, &source, Some(&path)),
        Error::Timeout(_) => match errno(py, "ETIMEDOUT") {
            Ok(code) => PyTimeoutError::new_err((code, "timed out")),
            Err(e) => e,
        },
        Error::Closed => match errno(py, "ECONNRESET") {
            Ok(code) => PyConnectionResetError::new_err((code, err.to_string())),
            Err(e) => e,
        },
        Error::MessageTooLarge { .. } => MessageTooLarge::new_err(err.to_string()),
        Error::Protocol(_) => match errno(py, "EPROTO") {
            Ok(code) => ProtocolError::new_err((code, err.to_string())),
            Err(e) => e,
        },
        // ssl.SSLError's first argument is the OpenSSL error class; 1 is
        // SSL_ERROR_SSL, "a failure in the TLS library", as Python's own.
        Error::Tls(e) => TLSError::new_err((1, e.to_string())),
        Error::Certificate(_) | Error::InvalidArgument(_) => PyValueError::new_err(err.to_string()),
        Error::Handler(_) => PyRuntimeError::new_err(err.to_string()),
        Error::Interrupted => interrupted.unwrap_or_else(|| PyKeyboardInterrupt::new_err(())),
    }
}

/// Runs `work` with the interpreter released, giving it an interrupt check
/// that runs Python's signal handlers; maps its error to an exception.
fn blocking<T: Send>(
    py: Python<'_>,
    work: impl Send + FnOnce(client::Interrupt<'_>) -> crate::Result<T>,
) -> PyResult<T> {
    let mut raised: Option<PyErr> = None;
    let result = py.detach(|| {
        let mut check = || {
            Python::attach(|py| py.check_signals()).map_err(|e| {
                raised = Some(e);
                Error::Interrupted
            })
        };
        work(&mut check)
    });
    result.map_err(|e| to_py(py, e, raised))
}

fn seconds(name: &str, value: Option<f64>) -> PyResult<Option<Duration>> {
    value
        .map(|s| {
            Duration::try_from_secs_f64(s).map_err(|_| {
                PyValueError::new_err(format!("{name} must be a non-negative number of seconds"))
            })
        })
        .transpose()
}

fn parse_protocol(name: &str) -> PyResult<Protocol> {
    name.parse::<Protocol>()
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// A message passed in as `str` or `bytes`.
enum Message {
    Text(Vec<u8>),
    Bytes(Vec<u8>),
}

impl Message {
    fn extract(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        if let Ok(text) = obj.cast::<PyString>() {
            return Ok(Message::Text(encode_text(text)?));
        }
        if let Ok(bytes) = obj.cast::<PyBytes>() {
            return Ok(Message::Bytes(bytes.as_bytes().to_vec()));
        }
        Err(PyTypeError::new_err(format!(
            "message must be str or bytes, not {}",
            obj.get_type().name()?
        )))
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Message::Text(b) | Message::Bytes(b) => b,
        }
    }

    /// Gives a reply back in the type the message came in.
    fn reply<'py>(&self, py: Python<'py>, reply: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Message::Text(_) => decode_text(py, reply),
            Message::Bytes(_) => Ok(PyBytes::new(py, reply).into_any()),
        }
    }
}

/// UTF-8 with `surrogateescape`: the fast path for ordinary text, the codec
/// for strings that carry undecodable bytes.
fn encode_text(text: &Bound<'_, PyString>) -> PyResult<Vec<u8>> {
    match text.to_cow() {
        Ok(s) => Ok(s.as_bytes().to_vec()),
        Err(_) => Ok(text
            .call_method1("encode", ("utf-8", "surrogateescape"))?
            .cast::<PyBytes>()?
            .as_bytes()
            .to_vec()),
    }
}

fn decode_text<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(PyString::new(py, s).into_any()),
        Err(_) => PyBytes::new(py, bytes).call_method1("decode", ("utf-8", "surrogateescape")),
    }
}

fn address<'py>(py: Python<'py>, addr: std::net::SocketAddr) -> PyResult<Bound<'py, PyTuple>> {
    let host = addr.ip().to_string();
    match addr {
        std::net::SocketAddr::V4(a) => PyTuple::new(
            py,
            [
                host.into_pyobject(py)?.into_any(),
                a.port().into_pyobject(py)?.into_any(),
            ],
        ),
        std::net::SocketAddr::V6(a) => {
            (host, a.port(), a.flowinfo(), a.scope_id()).into_pyobject(py)
        }
    }
}

/// A Python callable `str -> str | bytes | None` as a reply handler.
struct PyHandler(Py<PyAny>);

impl Handler for PyHandler {
    fn reply(&self, peer: &str, message: &[u8]) -> Result<Option<Vec<u8>>, String> {
        Python::attach(|py| {
            let call = || -> PyResult<Option<Vec<u8>>> {
                let reply = self.0.call1(py, (decode_text(py, message)?,))?;
                let reply = reply.bind(py);
                if reply.is_none() {
                    Ok(None)
                } else if let Ok(text) = reply.cast::<PyString>() {
                    encode_text(text).map(Some)
                } else if let Ok(bytes) = reply.cast::<PyBytes>() {
                    Ok(Some(bytes.as_bytes().to_vec()))
                } else {
                    Err(PyTypeError::new_err(format!(
                        "handler must return str, bytes or None, not {}",
                        reply.get_type().name()?
                    )))
                }
            };
            call().map_err(|err| {
                let text = err.to_string();
                // Log through Python so the traceback is formatted as usual.
                let logged = py
                    .import("logging")
                    .and_then(|logging| logging.call_method1("getLogger", ("sockdemo.handler",)))
                    .and_then(|logger| {
                        let kwargs = PyDict::new(py);
                        kwargs.set_item("exc_info", err.into_value(py))?;
                        logger.call_method(
                            "error",
                            ("Handler failed for the message from %s", peer),
                            Some(&kwargs),
                        )
                    });
                if let Err(e) = logged {
                    e.print(py);
                }
                text
            })
        })
    }
}

/// Every server started, so that interpreter exit can stop them before
/// Python goes away beneath their threads.
static SERVERS: Mutex<Vec<Weak<server::Server>>> = Mutex::new(Vec::new());

/// Resets pyo3-log's level cache, so a logging configuration made after
/// import is honoured by servers created after it.
static LOG_RESET: OnceLock<pyo3_log::ResetHandle> = OnceLock::new();

/// A TCP echo server (see the Python docstrings in `_sockdemo.pyi`).
#[pyclass(frozen, module = "sockdemo")]
struct Server {
    inner: Arc<server::Server>,
}

#[pymethods]
impl Server {
    #[new]
    #[pyo3(signature = (
        host = protocol::DEFAULT_HOST.to_owned(), port = 0, max_clients = 100, protocol = "raw",
        reply_prefix = protocol::DEFAULT_PREFIX.to_owned(), idle_timeout = None, certfile = None,
        keyfile = None, handler = None, *, buffer_size = protocol::DEFAULT_BUFFER_SIZE,
        max_message_size = protocol::DEFAULT_MAX_MESSAGE_SIZE, message_timeout = Some(30.0),
        write_timeout = Some(30.0)
    ))]
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
    ) -> PyResult<Self> {
        if let Some(reset) = LOG_RESET.get() {
            reset.reset();
        }
        let tls = match (certfile, keyfile) {
            (Some(cert), Some(key)) => {
                Some(tls::server_config(&cert, &key).map_err(|e| to_py(py, e, None))?)
            }
            (Some(cert), None) => {
                Some(tls::server_config(&cert, &cert).map_err(|e| to_py(py, e, None))?)
            }
            (None, Some(_)) => return Err(PyValueError::new_err("keyfile needs a certfile")),
            (None, None) => None,
        };
        if let Some(handler) = &handler
            && !handler.bind(py).is_callable()
        {
            return Err(PyTypeError::new_err("handler must be callable"));
        }
        let config = server::Config {
            max_clients,
            protocol: parse_protocol(protocol)?,
            reply_prefix: reply_prefix.into_bytes(),
            buffer_size,
            max_message_size,
            idle_timeout: seconds("idle_timeout", idle_timeout)?,
            message_timeout: seconds("message_timeout", message_timeout)?,
            write_timeout: seconds("write_timeout", write_timeout)?,
            tls,
            ..server::Config::default()
        };
        let handler = handler.map(|h| Arc::new(PyHandler(h)) as Arc<dyn Handler>);
        let inner = py
            .detach(|| server::Server::bind(&host, port, config, handler))
            .map_err(|e| to_py(py, e, None))?;
        Ok(Server {
            inner: Arc::new(inner),
        })
    }

    /// `(host, port)` actually bound.
    #[getter]
    fn server_address<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        address(py, self.inner.local_addr())
    }

    #[getter]
    fn protocol(&self) -> &'static str {
        self.inner.config().protocol.name()
    }

    #[getter]
    fn max_clients(&self) -> usize {
        self.inner.config().max_clients
    }

    fn serve_forever(&self, py: Python<'_>) -> PyResult<()> {
        self.start_in(py, Mode::Forever)?;
        self.wait(py)
    }

    #[pyo3(signature = (max_messages = None))]
    fn handle_request(&self, py: Python<'_>, max_messages: Option<u64>) -> PyResult<()> {
        self.start_in(py, Mode::Once { max_messages })?;
        self.wait(py)
    }

    fn start(&self, py: Python<'_>) -> PyResult<()> {
        self.start_in(py, Mode::Forever)
    }

    fn shutdown(&self, py: Python<'_>) {
        py.detach(|| self.inner.shutdown());
    }

    fn server_close(&self, py: Python<'_>) {
        py.detach(|| self.inner.close());
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let dict = PyDict::new(py);
        dict.set_item("connections_accepted", s.connections_accepted)?;
        dict.set_item("connections_active", s.connections_active)?;
        dict.set_item("messages", s.messages)?;
        dict.set_item("bytes_in", s.bytes_in)?;
        dict.set_item("bytes_out", s.bytes_out)?;
        dict.set_item("errors", s.errors)?;
        Ok(dict)
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) {
        self.server_close(py);
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

impl Server {
    fn start_in(&self, py: Python<'_>, mode: Mode) -> PyResult<()> {
        self.inner.start(mode).map_err(|e| to_py(py, e, None))?;
        let mut servers = SERVERS.lock().unwrap_or_else(PoisonError::into_inner);
        servers.retain(|s| s.strong_count() > 0);
        servers.push(Arc::downgrade(&self.inner));
        Ok(())
    }

    /// Waits for serving to end with the interpreter released, waking every
    /// tick for signals; on Ctrl+C shuts down gracefully, then raises.
    fn wait(&self, py: Python<'_>) -> PyResult<()> {
        loop {
            if let Some(result) = py.detach(|| self.inner.wait(TICK)) {
                return result.map_err(|e| to_py(py, e, None));
            }
            if let Err(interrupt) = py.check_signals() {
                py.detach(|| self.inner.shutdown());
                return Err(interrupt);
            }
        }
    }
}

/// Stops every server still running; registered with `atexit`.
#[pyfunction]
fn _shutdown_all(py: Python<'_>) {
    let servers: Vec<_> =
        std::mem::take(&mut *SERVERS.lock().unwrap_or_else(PoisonError::into_inner));
    py.detach(|| {
        for server in servers.iter().filter_map(Weak::upgrade) {
            server.close();
        }
    });
}

/// A blocking client (see `_sockdemo.pyi`).
#[pyclass(frozen, module = "sockdemo")]
struct Client {
    inner: Mutex<Option<client::Client>>,
    peer: std::net::SocketAddr,
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (
        host = protocol::DEFAULT_HOST.to_owned(), port = protocol::DEFAULT_PORT, protocol = "raw",
        timeout = None, *, cafile = None, server_hostname = None,
        buffer_size = protocol::DEFAULT_BUFFER_SIZE, max_message_size = protocol::DEFAULT_MAX_MESSAGE_SIZE
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        host: String,
        port: u16,
        protocol: &str,
        timeout: Option<f64>,
        cafile: Option<PathBuf>,
        server_hostname: Option<String>,
        buffer_size: usize,
        max_message_size: usize,
    ) -> PyResult<Self> {
        let tls = match (cafile, server_hostname) {
            (Some(cafile), name) => {
                let config = tls::client_config(&cafile).map_err(|e| to_py(py, e, None))?;
                let name = tls::server_name(name.as_deref().unwrap_or(&host))
                    .map_err(|e| to_py(py, e, None))?;
                Some((config, name))
            }
            (None, Some(_)) => {
                return Err(PyValueError::new_err(
                    "server_hostname needs a cafile (it turns TLS on)",
                ));
            }
            (None, None) => None,
        };
        let config = client::Config {
            protocol: parse_protocol(protocol)?,
            timeout: seconds("timeout", timeout)?,
            buffer_size,
            max_message_size,
            tls,
        };
        let client = blocking(py, |interrupt| {
            client::Client::connect(&host, port, config, interrupt)
        })?;
        Ok(Client {
            peer: client.peer_addr(),
            inner: Mutex::new(Some(client)),
        })
    }

    /// The server's `(host, port)`.
    #[getter]
    fn server_address<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        address(py, self.peer)
    }

    fn request<'py>(
        &self,
        py: Python<'py>,
        message: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let message = Message::extract(message)?;
        let reply = self.with_client(py, |client, interrupt| {
            client.request(message.bytes(), interrupt)
        })?;
        message.reply(py, &reply)
    }

    fn send(&self, py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<()> {
        let message = Message::extract(message)?;
        self.with_client(py, |client, interrupt| {
            client.send(message.bytes(), interrupt)
        })
    }

    fn receive<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let reply = self.with_client(py, |client, interrupt| client.receive(interrupt))?;
        Ok(PyBytes::new(py, &reply))
    }

    fn close(&self, py: Python<'_>) {
        let client = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(client) = client {
            py.detach(|| client.close());
        }
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) {
        self.close(py);
    }

    fn __repr__(&self) -> String {
        format!("<sockdemo.Client to {}>", self.peer)
    }
}

impl Client {
    fn with_client<T: Send>(
        &self,
        py: Python<'_>,
        work: impl Send + FnOnce(&mut client::Client, client::Interrupt<'_>) -> crate::Result<T>,
    ) -> PyResult<T> {
        blocking(py, |interrupt| {
            let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            match guard.as_mut() {
                Some(client) => work(client, interrupt),
                // What a closed Python socket says.
                None => Err(Error::Io(std::io::Error::from_raw_os_error(9))),
            }
        })
    }
}

/// TLS settings for a client: on when a CA file is given.
fn client_tls(
    py: Python<'_>,
    host: &str,
    cafile: Option<PathBuf>,
    server_hostname: Option<String>,
) -> PyResult<
    Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
> {
    match (cafile, server_hostname) {
        (Some(cafile), name) => {
            let config = tls::client_config(&cafile).map_err(|e| to_py(py, e, None))?;
            let name = tls::server_name(name.as_deref().unwrap_or(host))
                .map_err(|e| to_py(py, e, None))?;
            Ok(Some((config, name)))
        }
        (None, Some(_)) => Err(PyValueError::new_err(
            "server_hostname needs a cafile (it turns TLS on)",
        )),
        (None, None) => Ok(None),
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the load generator against a server; returns the report as a dict.
#[pyfunction]
#[pyo3(signature = (
    host = protocol::DEFAULT_HOST.to_owned(), port = protocol::DEFAULT_PORT, *, connections = 10,
    size = protocol::DEFAULT_BUFFER_SIZE, duration = 10.0, protocol = "raw",
    prefix = protocol::DEFAULT_PREFIX.to_owned(), cafile = None, server_hostname = None,
    threads = None, progress = None
))]
#[pyo3(name = "bench")]
#[allow(clippy::too_many_arguments)]
fn run_bench<'py>(
    py: Python<'py>,
    host: String,
    port: u16,
    connections: usize,
    size: usize,
    duration: f64,
    protocol: &str,
    prefix: String,
    cafile: Option<PathBuf>,
    server_hostname: Option<String>,
    threads: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let options = bench::Options {
        tls: client_tls(py, &host, cafile, server_hostname)?,
        host,
        port,
        connections,
        size,
        duration: seconds("duration", Some(duration))?.unwrap_or_default(),
        protocol: parse_protocol(protocol)?,
        prefix: prefix.into_bytes(),
        threads,
    };
    let report = blocking(py, |interrupt| {
        let mut on_progress = |p: &bench::Progress| {
            if let Some(callback) = &progress {
                Python::attach(|py| {
                    let args = (p.elapsed.as_secs_f64(), p.requests, p.errors);
                    if let Err(e) = callback.call1(py, args) {
                        e.write_unraisable(py, Some(callback.bind(py)));
                    }
                });
            }
        };
        bench::run(&options, interrupt, &mut on_progress)
    })?;
    let dict = PyDict::new(py);
    dict.set_item("connections", report.connections)?;
    dict.set_item("size", options.size)?;
    dict.set_item("protocol", options.protocol.name())?;
    dict.set_item("requests", report.requests)?;
    dict.set_item("errors", report.errors)?;
    dict.set_item("elapsed", report.elapsed.as_secs_f64())?;
    dict.set_item("requests_per_second", report.requests_per_second())?;
    dict.set_item("mib_per_second", report.mib_per_second())?;
    let latency = PyDict::new(py);
    let l = report.latency;
    for (name, value) in [
        ("mean", l.mean),
        ("p50", l.p50),
        ("p90", l.p90),
        ("p99", l.p99),
        ("p99.9", l.p999),
        ("max", l.max),
    ] {
        latency.set_item(name, millis(value))?;
    }
    dict.set_item("latency_ms", latency)?;
    Ok(dict)
}

/// Writes `dir/cert.pem` and `dir/key.pem`; returns their paths.
#[pyfunction]
fn generate_self_signed(py: Python<'_>, dir: PathBuf) -> PyResult<(PathBuf, PathBuf)> {
    tls::generate_self_signed(&dir).map_err(|e| to_py(py, e, None))
}

#[pymodule]
fn _sockdemo(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let logger = pyo3_log::Logger::new(py, pyo3_log::Caching::LoggersAndLevels)?
        .filter(log::LevelFilter::Debug)
        // rustls and tokio are chatty at debug level; keep their warnings.
        .filter_target("rustls".to_owned(), log::LevelFilter::Warn)
        .filter_target("tokio".to_owned(), log::LevelFilter::Warn);
    // Another extension may have installed a logger already; ours is optional.
    if let Ok(reset) = logger.install() {
        let _ = LOG_RESET.set(reset);
    }
    m.add_class::<Server>()?;
    m.add_class::<Client>()?;
    m.add_function(wrap_pyfunction!(generate_self_signed, m)?)?;
    m.add_function(wrap_pyfunction!(run_bench, m)?)?;
    m.add_function(wrap_pyfunction!(_shutdown_all, m)?)?;
    m.add("DEFAULT_HOST", protocol::DEFAULT_HOST)?;
    m.add("DEFAULT_PORT", protocol::DEFAULT_PORT)?;
    m.add("DEFAULT_PREFIX", protocol::DEFAULT_PREFIX)?;
    m.add("BYE_REPLY", protocol::BYE_REPLY)?;
    m.add("DEFAULT_BUFFER_SIZE", protocol::DEFAULT_BUFFER_SIZE)?;
    m.add(
        "DEFAULT_MAX_MESSAGE_SIZE",
        protocol::DEFAULT_MAX_MESSAGE_SIZE,
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
