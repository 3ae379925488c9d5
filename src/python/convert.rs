//! Python values to core values and back: seconds, protocol names, TLS
//! options, addresses, and messages.
//!
//! Messages given as `str` come back as `str`, `bytes` as `bytes`. Text is
//! UTF-8 with `surrogateescape`, so even invalid bytes survive the trip:
//! a handler sees undecodable bytes as lone surrogates and can send them back
//! unchanged.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

use super::errors::to_py;
use crate::protocol::Protocol;
use crate::tls;

pub(super) fn seconds(name: &str, value: Option<f64>) -> PyResult<Option<Duration>> {
    value
        .map(|s| {
            Duration::try_from_secs_f64(s).map_err(|_| {
                PyValueError::new_err(format!("{name} must be a non-negative number of seconds"))
            })
        })
        .transpose()
}

pub(super) fn parse_protocol(name: &str) -> PyResult<Protocol> {
    name.parse::<Protocol>()
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// TLS settings for a client: on when a CA file is given.
pub(super) type ClientTls = Option<(
    Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
)>;

pub(super) fn client_tls(
    py: Python<'_>,
    host: &str,
    cafile: Option<PathBuf>,
    server_hostname: Option<String>,
) -> PyResult<ClientTls> {
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

/// A message passed in as `str` or `bytes`.
pub(super) enum Message {
    Text(Vec<u8>),
    Bytes(Vec<u8>),
}

impl Message {
    pub fn extract(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
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

    pub fn bytes(&self) -> &[u8] {
        match self {
            Message::Text(b) | Message::Bytes(b) => b,
        }
    }

    /// Gives a reply back in the type the message came in.
    pub fn reply<'py>(&self, py: Python<'py>, reply: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Message::Text(_) => decode_text(py, reply),
            Message::Bytes(_) => Ok(PyBytes::new(py, reply).into_any()),
        }
    }
}

/// UTF-8 with `surrogateescape`: the fast path for ordinary text, the codec
/// for strings that carry undecodable bytes.
pub(super) fn encode_text(text: &Bound<'_, PyString>) -> PyResult<Vec<u8>> {
    match text.to_cow() {
        Ok(s) => Ok(s.into_owned().into_bytes()),
        Err(_) => Ok(text
            .call_method1("encode", ("utf-8", "surrogateescape"))?
            .cast::<PyBytes>()?
            .as_bytes()
            .to_vec()),
    }
}

/// UTF-8 with `surrogateescape`, in one pass of CPython's own decoder: no
/// check beforehand, no codec lookup for the bytes that are not UTF-8.
pub(super) fn decode_text<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let len = pyo3::ffi::Py_ssize_t::try_from(bytes.len())
        .map_err(|_| PyValueError::new_err("message too large for a str"))?;
    // SAFETY: the interpreter is attached (`py`); `bytes` is valid for
    // `len` bytes during the call, which copies them; the error handler's
    // name is a NUL-terminated string. The result is a new reference, or
    // NULL with an exception set, which `from_owned_ptr_or_err` takes.
    unsafe {
        let text = pyo3::ffi::PyUnicode_DecodeUTF8(
            bytes.as_ptr().cast(),
            len,
            c"surrogateescape".as_ptr(),
        );
        Bound::from_owned_ptr_or_err(py, text)
    }
}

/// An address as Python's socket module gives it: `(host, port)` for IPv4,
/// `(host, port, flowinfo, scope_id)` for IPv6.
pub(super) fn address<'py>(py: Python<'py>, addr: SocketAddr) -> PyResult<Bound<'py, PyTuple>> {
    let host = addr.ip().to_string();
    match addr {
        SocketAddr::V4(a) => (host, a.port()).into_pyobject(py),
        SocketAddr::V6(a) => (host, a.port(), a.flowinfo(), a.scope_id()).into_pyobject(py),
    }
}

/// A descriptor (Unix) or `SOCKET` (Windows) as the int Python's event
/// loops take; -1 if it could not be one.
pub(super) fn descriptor(raw: crate::socket::RawDescriptor) -> i64 {
    #[cfg(unix)]
    return i64::from(raw);
    #[cfg(windows)]
    return i64::try_from(raw).unwrap_or(-1);
}
