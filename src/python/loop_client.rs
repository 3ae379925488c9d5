//! `LoopClient`: the connection under `sockdemo.aio.connect`, driven by the
//! asyncio loop.
//!
//! Every method returns at once (see `loop_client` in the core): the loop
//! waits, Python's `sockdemo.aio.Client` decides what to wait for, and this
//! moves the bytes. Nothing here blocks, so nothing releases the interpreter.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use super::convert::descriptor;
use super::convert::{Message, address, client_tls, decode_text, parse_protocol};
use super::errors::to_py;
use crate::clients;
use crate::clients::loop_client::{self, Want};
use crate::error::Error;

/// One connection to a sockdemo server, for an event loop to drive.
#[pyclass(module = "sockdemo._sockdemo")]
pub(super) struct LoopClient {
    inner: Option<loop_client::LoopClient>,
    peer: SocketAddr,
}

#[pymethods]
impl LoopClient {
    /// Starts connecting to `ip:port`; `host` is the name the caller asked
    /// for (the TLS server name unless `server_hostname` says otherwise).
    #[new]
    #[pyo3(signature = (ip, port, host, protocol, *, cafile, server_hostname, buffer_size, max_message_size))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        ip: IpAddr,
        port: u16,
        host: &str,
        protocol: &str,
        cafile: Option<PathBuf>,
        server_hostname: Option<String>,
        buffer_size: usize,
        max_message_size: usize,
    ) -> PyResult<Self> {
        let config = clients::Config {
            tls: client_tls(py, host, cafile, server_hostname)?,
            protocol: parse_protocol(protocol)?,
            timeout: None,
            buffer_size,
            max_message_size,
        };
        let peer = SocketAddr::new(ip, port);
        let inner =
            loop_client::LoopClient::connect(peer, &config).map_err(|e| to_py(py, e, None))?;
        Ok(LoopClient {
            inner: Some(inner),
            peer,
        })
    }

    fn fileno(&self) -> i64 {
        self.inner
            .as_ref()
            .map_or(-1, |client| descriptor(client.fd()))
    }

    /// The server's `(host, port)`.
    #[getter]
    fn server_address<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        address(py, self.peer)
    }

    /// Goes on connecting once the socket is writable: `"read"` or
    /// `"write"` for what the TLS handshake waits on, `None` when connected.
    fn connected(&mut self, py: Python<'_>) -> PyResult<Option<&'static str>> {
        let want = self.with(py, loop_client::LoopClient::connected)?;
        Ok(match want {
            Want::Nothing => None,
            Want::Read => Some("read"),
            Want::Write => Some("write"),
        })
    }

    /// Queues `message` (`str` or `bytes`) and writes what the socket takes;
    /// returns whether everything is out.
    fn send(&mut self, py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<bool> {
        let message = Message::extract(message)?;
        self.with(py, |c| {
            c.send(message.bytes())?;
            c.flush()
        })
    }

    /// Writes what is still queued; returns whether everything is out.
    fn flush(&mut self, py: Python<'_>) -> PyResult<bool> {
        self.with(py, loop_client::LoopClient::flush)
    }

    /// Reads what the socket has; returns whether a reply (or the end)
    /// waits.
    fn fill(&mut self, py: Python<'_>) -> PyResult<bool> {
        self.with(py, loop_client::LoopClient::fill)
    }

    /// The next reply (`str` if `text`, else `bytes`), or `None` until more
    /// is read.
    fn reply<'py>(&mut self, py: Python<'py>, text: bool) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.with(py, loop_client::LoopClient::reply)? {
            None => Ok(None),
            Some(reply) if text => decode_text(py, &reply).map(Some),
            Some(reply) => Ok(Some(PyBytes::new(py, &reply).into_any())),
        }
    }

    /// Bytes received and not yet returned.
    #[getter]
    fn buffered(&self) -> usize {
        self.inner
            .as_ref()
            .map_or(0, loop_client::LoopClient::buffered)
    }

    /// Has the server closed its side? The socket stays readable from then
    /// on, so the loop should stop watching it.
    #[getter]
    fn at_eof(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(loop_client::LoopClient::is_eof)
    }

    /// Is this connection encrypted?
    #[getter]
    fn is_tls(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(loop_client::LoopClient::is_tls)
    }

    /// Closes the connection (TLS: with close_notify). Idempotent.
    fn close(&mut self) {
        if let Some(mut client) = self.inner.take() {
            client.close();
        }
    }
}

impl LoopClient {
    fn with<T>(
        &mut self,
        py: Python<'_>,
        work: impl FnOnce(&mut loop_client::LoopClient) -> crate::Result<T>,
    ) -> PyResult<T> {
        let result = match self.inner.as_mut() {
            Some(client) => work(client),
            // What a closed Python socket says.
            None => Err(Error::Io(std::io::Error::from_raw_os_error(9))),
        };
        result.map_err(|e| to_py(py, e, None))
    }
}
