//! `sockdemo.Client`: the blocking client, shaped after `socket`.
//!
//! Every wait runs with the interpreter released and ticks for signals, so
//! Ctrl+C interrupts a request; `str` in gives `str` out, `bytes` gives
//! `bytes`.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use super::convert::{Message, address, client_tls, decode_text, parse_protocol, seconds};
use super::errors::{ServerClosedError, blocking};
use crate::clients;
use crate::error::Error;
use crate::protocol;
use crate::wait::Interrupt;

/// A blocking client connected to a sockdemo server (or any server speaking
/// its protocols). `cafile` turns TLS on; `timeout` bounds connecting and
/// every reply (default: wait).
#[pyclass(frozen, module = "sockdemo")]
pub(super) struct Client {
    inner: Mutex<Option<clients::Client>>,
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
    // Spelled out so that help() shows the defaults (a test checks them).
    #[pyo3(
        text_signature = "(host='127.0.0.1', port=65432, protocol='raw', timeout=None, *, cafile=None, server_hostname=None, buffer_size=1024, max_message_size=1048576)"
    )]
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
        let config = clients::Config {
            tls: client_tls(py, &host, cafile, server_hostname)?,
            protocol: parse_protocol(protocol)?,
            timeout: seconds("timeout", timeout)?,
            buffer_size,
            max_message_size,
        };
        let client = blocking(py, |interrupt| {
            clients::Client::connect(&host, port, config, interrupt)
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

    /// Sends one message and returns the server's reply, in the message's
    /// type (`str` or `bytes`).
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

    /// Sends one message without waiting for its reply (pipelining). Use the
    /// framed protocol for that: raw replies carry no boundaries, so after two
    /// raw sends one `receive()` may return both replies run together.
    fn send(&self, py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<()> {
        let message = Message::extract(message)?;
        self.with_client(py, |client, interrupt| {
            client.send(message.bytes(), interrupt)
        })
    }

    /// Receives the next reply as `bytes` (framed: one whole reply; raw: one
    /// read).
    fn receive<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let reply = self.with_client(py, |client, interrupt| client.receive(interrupt))?;
        Ok(PyBytes::new(py, &reply))
    }

    /// Closes the connection (TLS: with close_notify). Idempotent.
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

    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    /// The next message the server sends, as `str`, until it closes the
    /// connection; waits at most `timeout` for each (`TimeoutError`).
    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.with_client(py, |client, interrupt| client.receive(interrupt)) {
            Ok(message) => decode_text(py, &message).map(Some),
            Err(e) if e.is_instance_of::<ServerClosedError>(py) => Ok(None),
            Err(e) => Err(e),
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
        work: impl Send + FnOnce(&mut clients::Client, Interrupt<'_>) -> crate::Result<T>,
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
