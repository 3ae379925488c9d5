//! Sessions: a Python object per connection (a `sockdemo.Session`), its
//! hooks run on the handler threads like a handler, and the connection it
//! may send to at any time from any thread ([`Connection`]).
//!
//! The connection owns its session object; the object holds its connection
//! only weakly, so nothing outlives the connection in a cycle.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};

use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::convert::{Message, address, decode_text};
use super::errors::to_py;
use super::handler::{call_attached, enter_attached, log_exception, reply_bytes};
use super::held::Held;
use crate::address::py_address;
use crate::handling::conn::Conn;
use crate::handling::handler::{Detach, Handler};

/// One connection of a session server, as Python sees it: `send()` and
/// `close()` work from any thread at any time and never block.
#[pyclass(frozen, module = "sockdemo._sockdemo")]
pub(super) struct Connection {
    conn: Weak<Conn>,
    id: u64,
    peer: SocketAddr,
}

impl Connection {
    pub(super) fn new(conn: &Arc<Conn>) -> Self {
        Connection {
            conn: Arc::downgrade(conn),
            id: conn.id(),
            peer: conn.peer(),
        }
    }
}

#[pymethods]
impl Connection {
    /// The connection's number, unique within its server.
    #[getter]
    fn id(&self) -> u64 {
        self.id
    }

    /// The client's `(host, port)` (behind a PROXY header, the real
    /// client's).
    #[getter]
    fn peer<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        address(py, self.peer)
    }

    /// Sends `message` (`str` or `bytes`) after everything sent before,
    /// without waiting; `False` once the connection is closing or gone.
    fn send(&self, py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<bool> {
        let message = Message::extract(message)?;
        let Some(conn) = self.conn.upgrade() else {
            return Ok(false);
        };
        conn.send(message.bytes()).map_err(|e| to_py(py, e, None))
    }

    /// Closes the connection once what was sent before is out.
    fn close(&self) {
        if let Some(conn) = self.conn.upgrade() {
            conn.close();
        }
    }

    /// Bytes sent that the client has not taken yet, queued in the server
    /// (0 once the connection is gone).
    #[getter]
    fn pending(&self) -> usize {
        self.conn.upgrade().map_or(0, |conn| conn.pending())
    }

    /// Is the connection still open?
    #[getter]
    fn is_open(&self) -> bool {
        self.conn.strong_count() > 0
    }

    fn __repr__(&self) -> String {
        format!("<sockdemo.Connection {} from {}>", self.id, self.peer)
    }
}

/// A `sockdemo.Session` subclass run on the handler threads: an instance per
/// connection, its hooks called in order with the connection's messages.
pub(super) struct PySession {
    class: Arc<Held>,
    /// A weak reference to the Python server, the sessions' `self.server`;
    /// set when it starts serving.
    server: OnceLock<Py<PyAny>>,
}

impl PySession {
    pub fn new(class: Py<PyAny>) -> Self {
        PySession {
            class: Arc::new(Held::new(class)),
            server: OnceLock::new(),
        }
    }

    /// What the garbage collector must see of these sessions.
    pub fn held(&self) -> Arc<Held> {
        self.class.clone()
    }

    /// The sessions' `self.server` is `server` from now on.
    pub fn serve_for(&self, server: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = server.py();
        let weak = py.import("weakref")?.getattr("ref")?.call1((server,))?;
        let _ = self.server.set(weak.unbind());
        Ok(())
    }

    /// Makes the connection's session object and runs its `connected()`.
    fn open(&self, py: Python<'_>, conn: &Arc<Conn>) -> PyResult<()> {
        let Some(class) = self.class.get(py) else {
            return Err(PyTypeError::new_err("the server is gone"));
        };
        let session = class.call0()?;
        let server = match self.server.get() {
            Some(weak) => weak.bind(py).call0()?,
            None => py.None().into_bound(py),
        };
        session.setattr(intern!(py, "_connection"), Connection::new(conn))?;
        session.setattr(intern!(py, "id"), conn.id())?;
        session.setattr(intern!(py, "peer"), address(py, conn.peer())?)?;
        session.setattr(intern!(py, "server"), server)?;
        let received = session.getattr(intern!(py, "received"))?.unbind();
        conn.set_state(Box::new(Kept {
            session: session.clone().unbind(),
            received,
        }));
        session.call_method0(intern!(py, "connected"))?;
        Ok(())
    }
}

/// What a connection keeps of its session: the object, and its `received`
/// method, looked up once rather than per message.
struct Kept {
    session: Py<PyAny>,
    received: Py<PyAny>,
}

/// What the connection keeps of its session.
fn kept(conn: &Conn) -> PyResult<&Kept> {
    conn.state::<Kept>()
        .ok_or_else(|| PyTypeError::new_err("the connection has no session"))
}

impl Handler for PySession {
    fn enter(&self, thread: &mut dyn FnMut(&dyn Detach)) {
        enter_attached(thread);
    }

    fn call_here(&self, calls: &mut dyn FnMut()) {
        call_attached(calls);
    }

    fn is_session(&self) -> bool {
        true
    }

    fn opened(&self, conn: &Arc<Conn>) -> Result<(), String> {
        Python::attach(|py| {
            self.open(py, conn)
                .map_err(|e| log_hook_failure(py, "connected", conn.peer(), e))
        })
    }

    fn reply(&self, conn: &Conn, message: &[u8]) -> Result<Option<Vec<u8>>, String> {
        Python::attach(|py| {
            let received = || -> PyResult<Option<Vec<u8>>> {
                let text = decode_text(py, message)?;
                let reply = kept(conn)?.received.bind(py).call1((text,))?;
                reply_bytes(&reply, "received()")
            };
            received().map_err(|e| log_hook_failure(py, "received", conn.peer(), e))
        })
    }

    fn closed(&self, conn: &Conn) {
        Python::attach(|py| {
            let closed =
                kept(conn).and_then(|k| k.session.bind(py).call_method0(intern!(py, "closed")));
            if let Err(e) = closed {
                log_hook_failure(py, "closed", conn.peer(), e);
            }
        });
    }
}

/// Logs an exception raised by a session's `hook` under `sockdemo.handler`,
/// with its traceback; returns its text.
pub(super) fn log_hook_failure(py: Python<'_>, hook: &str, peer: SocketAddr, err: PyErr) -> String {
    let what = format!("Session {hook}() failed for {}", py_address(peer));
    log_exception(py, &what, err)
}
