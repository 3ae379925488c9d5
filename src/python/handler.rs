//! A Python callable as the server's reply handler.
//!
//! Each handler thread attaches to the interpreter once, for its whole life,
//! and detaches only while it waits for work (`Handler::enter`): attaching
//! from a thread Python did not create builds a thread state, which is far
//! too slow to do per message. Calls made while attached just take the
//! already-held interpreter.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use super::convert::{decode_text, encode_text};
use crate::handler::{Detach, Handler};

/// A Python callable `str -> str | bytes | None`.
pub(super) struct PyHandler(pub Py<PyAny>);

/// Detaches from the interpreter while a handler thread waits.
struct Released<'py>(Python<'py>);

impl Detach for Released<'_> {
    fn detached(&self, wait: &mut (dyn FnMut() + Send)) {
        self.0.detach(wait);
    }
}

impl Handler for PyHandler {
    fn enter(&self, thread: &mut dyn FnMut(&dyn Detach)) {
        Python::attach(|py| thread(&Released(py)));
    }

    fn reply(&self, peer: &str, message: &[u8]) -> Result<Option<Vec<u8>>, String> {
        // Already attached on a handler thread: this only counts the nesting.
        Python::attach(|py| {
            self.call(py, message)
                .map_err(|err| log_failure(py, peer, err))
        })
    }
}

impl PyHandler {
    fn call(&self, py: Python<'_>, message: &[u8]) -> PyResult<Option<Vec<u8>>> {
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
    }
}

/// Logs a handler's exception under `sockdemo.handler` with its traceback,
/// formatted by Python's own logging; returns its text.
pub(super) fn log_failure(py: Python<'_>, peer: &str, err: PyErr) -> String {
    let text = err.to_string();
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
}
