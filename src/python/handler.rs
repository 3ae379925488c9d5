//! A Python callable as the server's reply handler.
//!
//! Each handler thread attaches to the interpreter once, for its whole life,
//! and detaches only while it waits for work (`Handler::enter`): attaching
//! from a thread Python did not create builds a thread state, which is far
//! too slow to do per message. Calls made while attached just take the
//! already-held interpreter.
//!
//! A network thread that answers on the spot (`Handler::call_here`) keeps a
//! thread state too, made at its first call and kept for the thread's life,
//! so that each later call only takes the interpreter lock.

use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use std::cell::Cell;
use std::net::SocketAddr;

use super::convert::{address, decode_text, encode_text};
use super::held::Held;
use crate::address::py_address;
use crate::handling::conn::Conn;
use crate::handling::handler::{Detach, Handler};

/// A Python callable `str -> str | bytes | None`, or `(str, (host, port))
/// -> ...` when it takes the peer too.
pub(super) struct PyHandler {
    callable: Arc<Held>,
    with_peer: bool,
}

/// Detaches from the interpreter while a handler thread waits.
struct Released<'py>(Python<'py>);

impl Detach for Released<'_> {
    fn detached(&self, wait: &mut (dyn FnMut() + Send)) {
        self.0.detach(wait);
    }
}

/// Runs a handler thread's life attached to the interpreter, detached only
/// while it waits for work.
pub(super) fn enter_attached(thread: &mut dyn FnMut(&dyn Detach)) {
    Python::attach(|py| thread(&Released(py)));
}

/// Runs a network thread's calls attached, with a thread state kept for
/// the thread's life.
pub(super) fn call_attached(calls: &mut dyn FnMut()) {
    keep_thread_state();
    Python::attach(|_| calls());
}

impl Handler for PyHandler {
    fn enter(&self, thread: &mut dyn FnMut(&dyn Detach)) {
        enter_attached(thread);
    }

    fn call_here(&self, calls: &mut dyn FnMut()) {
        call_attached(calls);
    }

    fn reply(&self, conn: &Conn, message: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let peer = conn.peer();
        // Already attached on a handler thread: this only counts the nesting.
        Python::attach(|py| {
            self.call(py, peer, message)
                .map_err(|err| log_failure(py, peer, err))
        })
    }
}

impl PyHandler {
    /// What the garbage collector must see of this handler.
    pub fn held(&self) -> Arc<Held> {
        self.callable.clone()
    }

    pub fn new(py: Python<'_>, callable: Py<PyAny>) -> Self {
        let with_peer = wants_peer(callable.bind(py));
        PyHandler {
            callable: Arc::new(Held::new(callable)),
            with_peer,
        }
    }

    fn call(&self, py: Python<'_>, peer: SocketAddr, message: &[u8]) -> PyResult<Option<Vec<u8>>> {
        let Some(callable) = self.callable.get(py) else {
            return Err(PyRuntimeError::new_err("the server is gone"));
        };
        let reply = call_handler(&callable, self.with_peer, peer, message)?;
        reply_bytes(&reply, "handler")
    }
}

/// A reply as bytes: `str` encoded, `bytes` as they are, `None` for none;
/// anything else is `who`'s mistake, named in the error.
pub(super) fn reply_bytes(reply: &Bound<'_, PyAny>, who: &str) -> PyResult<Option<Vec<u8>>> {
    if reply.is_none() {
        Ok(None)
    } else if let Ok(text) = reply.cast::<PyString>() {
        encode_text(text).map(Some)
    } else if let Ok(bytes) = reply.cast::<PyBytes>() {
        Ok(Some(bytes.as_bytes().to_vec()))
    } else {
        Err(PyTypeError::new_err(format!(
            "{who} must return str, bytes or None, not {}",
            reply.get_type().name()?
        )))
    }
}

thread_local! {
    /// Has this thread a thread state of its own, kept for its life?
    static KEPT: Cell<bool> = const { Cell::new(false) };
}

/// Gives the calling thread a thread state it keeps for its life, detached
/// from the interpreter. Attaching later (`Python::attach`) then finds it and
/// only takes the interpreter lock; without it, every attach from a thread
/// Python did not create builds a thread state and tears it down again.
///
/// The state is never released: a network thread ends when its server's
/// runtime does, possibly while the interpreter is finalizing, when touching
/// it is unsafe. What it leaves behind is one thread state, which the
/// interpreter clears at exit like any other ended thread's.
fn keep_thread_state() {
    if KEPT.get() {
        return;
    }
    KEPT.set(true);
    // SAFETY: the thread is not attached (network threads never are outside
    // `call_here`), so `PyGILState_Ensure` makes a thread state and attaches
    // it; `PyEval_SaveThread` detaches it again, leaving the state counted
    // once by the GIL-state API, so later attaches reuse it and their
    // releases never drop it. The interpreter is initialized: a Python
    // handler exists.
    unsafe {
        pyo3::ffi::PyGILState_Ensure();
        pyo3::ffi::PyEval_SaveThread();
    }
}

/// Does `handler` take the peer's address as a second argument? It does if
/// its signature has two positional parameters or more.
pub(super) fn wants_peer(handler: &Bound<'_, PyAny>) -> bool {
    let counted = || -> PyResult<usize> {
        let py = handler.py();
        let inspect = py.import("inspect")?;
        let parameter = inspect.getattr("Parameter")?;
        let positional = [
            parameter.getattr("POSITIONAL_ONLY")?,
            parameter.getattr("POSITIONAL_OR_KEYWORD")?,
        ];
        let signature = inspect.call_method1("signature", (handler,))?;
        let mut count = 0;
        for p in signature
            .getattr("parameters")?
            .call_method0("values")?
            .try_iter()?
        {
            let kind = p?.getattr("kind")?;
            if positional.iter().any(|k| k.eq(&kind).unwrap_or(false)) {
                count += 1;
            }
        }
        Ok(count)
    };
    // Builtins without a signature take the message alone.
    counted().is_ok_and(|n| n >= 2)
}

/// Calls `handler` with the message, and the peer's `(host, port)` if it
/// wants it.
pub(super) fn call_handler<'py>(
    handler: &Bound<'py, PyAny>,
    with_peer: bool,
    peer: SocketAddr,
    message: &[u8],
) -> PyResult<Bound<'py, PyAny>> {
    let py = handler.py();
    let text = decode_text(py, message)?;
    if with_peer {
        handler.call1((text, address(py, peer)?))
    } else {
        handler.call1((text,))
    }
}

/// Logs a handler's exception under `sockdemo.handler` with its traceback,
/// formatted by Python's own logging; returns its text.
pub(super) fn log_failure(py: Python<'_>, peer: SocketAddr, err: PyErr) -> String {
    let what = format!("Handler failed for the message from {}", py_address(peer));
    log_exception(py, &what, err)
}

/// Logs `err` under `sockdemo.handler` as `what`, with its traceback,
/// formatted by Python's own logging; returns its text.
pub(super) fn log_exception(py: Python<'_>, what: &str, err: PyErr) -> String {
    let text = err.to_string();
    let logged = py
        .import("logging")
        .and_then(|logging| logging.call_method1("getLogger", ("sockdemo.handler",)))
        .and_then(|logger| {
            let kwargs = PyDict::new(py);
            kwargs.set_item("exc_info", err.into_value(py))?;
            logger.call_method("error", ("%s", what), Some(&kwargs))
        });
    if let Err(e) = logged {
        e.print(py);
    }
    text
}
