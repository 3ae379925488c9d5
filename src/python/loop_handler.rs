//! A handler run on an asyncio event loop: the bridge under
//! `sockdemo.aio.start_server`.
//!
//! `sockdemo.aio` watches [`LoopHandler::fileno`] with `loop.add_reader` and
//! calls [`LoopHandler::run`] whenever it is readable; every job queued since
//! the last call is answered in that one call (see `handling::bridge`), and
//! the connections themselves are served on the loop's thread too. A loop
//! with no `add_reader` (Windows' Proactor loop) has a thread of ours watch
//! instead ([`LoopHandler::watch`]), which asks the loop for each call.

use std::borrow::Cow;
use std::sync::Arc;

use pyo3::PyVisit;
use pyo3::exceptions::{PyRuntimeError, PyStopIteration, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pyclass::PyTraverseError;
use pyo3::types::{PyBytes, PyString, PyTuple, PyType};

use std::net::SocketAddr;

use super::convert::{address, encode_text};
use super::convert::{decode_text, descriptor};
use super::handler::{call_handler, log_failure, wants_peer};
use super::held::Held;
use super::session::{Connection, log_hook_failure};
use crate::error::Error;
use crate::handling::bridge::LoopBridge;
use crate::handling::conn::Conn;
use crate::handling::job::{Job, Stage};

/// How many batches one wake-up answers before it lets the loop run its
/// other callbacks and tasks (the rest wake it again at once).
const MAX_ROUNDS: usize = 16;

/// Runs `handler` for a server's jobs on the event loop that calls `run`.
///
/// A handler's result is used as it comes:
///
/// * `str`, `bytes` or `None` is the reply, as for the threaded server;
/// * a coroutine is started right here: one that finishes without
///   suspending (the common case: nothing to await, or a cache hit) is
///   answered at once, with no Task made for it; one that suspends is
///   handed, with its job, to the `follow` callable `sockdemo.aio` gave,
///   which finishes it in a Task and calls [`PendingJob::resume`];
/// * any other awaitable goes to `follow` unstarted.
///
/// The connections themselves are served on the loop's thread too (see
/// `reactor`): one call here reads the ready sockets, answers, and writes.
/// Replies go straight into their sockets, from the loop's thread, or from
/// a network thread when a round answered a crowd (see `bridge`).
#[pyclass(frozen, module = "sockdemo._sockdemo")]
pub(super) struct LoopHandler {
    pub(super) bridge: Arc<LoopBridge>,
    handler: Held,
    /// Does the handler take the peer's address too?
    with_peer: bool,
    /// `follow(job, awaitable, started, waiting)`: finishes a handler that
    /// suspended (or an awaitable not yet started) in a Task.
    follow: Held,
    /// Called once the server has finished serving.
    finished: Held,
    /// What a watching thread calls to ask the loop for a turn (see
    /// `watch`): held here, where the collector sees it and the server's
    /// end lets go of it with the interpreter held, not in the thread,
    /// which would let go of it only when it ends, after the server.
    asker: Arc<Held>,
    coroutine: Py<PyType>,
    /// `handler` opens a session per connection: called with the
    /// [`Connection`], it returns the object that takes the connection's
    /// messages (`_feed(messages, job)`, settling `job` once they are taken)
    /// and its end (`_end()`).
    session: bool,
}

/// What one call of the handler gave.
enum Called<'py> {
    /// A reply, ready now (`None`: the echo).
    Reply(Option<Cow<'py, [u8]>>),
    /// A coroutine that suspended, waiting on `waiting`.
    Suspended {
        coroutine: Bound<'py, PyAny>,
        waiting: Bound<'py, PyAny>,
    },
    /// An awaitable that is not a coroutine, not yet started.
    Awaitable(Bound<'py, PyAny>),
}

#[pymethods]
impl LoopHandler {
    #[new]
    #[pyo3(signature = (handler, follow, finished, session = false))]
    fn new(
        py: Python<'_>,
        handler: Py<PyAny>,
        follow: Py<PyAny>,
        finished: Py<PyAny>,
        session: bool,
    ) -> PyResult<Self> {
        if !handler.bind(py).is_callable() {
            return Err(PyTypeError::new_err("handler must be callable"));
        }
        let bridge =
            LoopBridge::new(session).map_err(|e| super::errors::to_py(py, e.into(), None))?;
        // Made on the loop's thread: a stop asked from it only asks.
        bridge.claim();
        Ok(LoopHandler {
            bridge: Arc::new(bridge),
            with_peer: wants_peer(handler.bind(py)),
            handler: Held::new(handler),
            follow: Held::new(follow),
            finished: Held::new(finished),
            asker: Arc::default(),
            coroutine: py
                .import("types")?
                .getattr("CoroutineType")?
                .cast_into::<PyType>()?
                .unbind(),
            session,
        })
    }

    /// The descriptor to watch for reading; -1 where there is none (on
    /// Windows): then [`LoopHandler::watch`].
    fn fileno(&self) -> i64 {
        self.bridge.fd().map_or(-1, descriptor)
    }

    /// For a loop that cannot watch [`LoopHandler::fileno`]: a thread of
    /// ours watches, and calls `ask()` (with the GIL) whenever the loop
    /// should call `run`; `ask` is `loop.call_soon_threadsafe` bound to
    /// `run`, say. Once `ask` raises (the loop is closed) or the server has
    /// finished, the thread stops.
    fn watch(&self, py: Python<'_>, ask: Py<PyAny>) -> PyResult<()> {
        self.asker.set(ask);
        let asker = self.asker.clone();
        let ask_for_turn = move || {
            // An interpreter shutting down asks nothing any more, nor does a
            // server that has let go of its asker.
            Python::try_attach(|py| asker.get(py).is_some_and(|ask| ask.call0().is_ok()))
                .unwrap_or(false)
        };
        self.bridge
            .reactor()
            .watch_on_thread(ask_for_turn)
            .map_err(|e| super::errors::to_py(py, e.into(), None))
    }

    /// Serves what is ready: the connections' sockets and the tasks they
    /// wake (see `reactor`), then every job they queued, answering it, and
    /// again, up to a bound, so that other work on the loop gets its turn;
    /// once the server has finished serving, calls `finished()`.
    fn run(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let reactor = this.bridge.reactor();
        this.bridge.woken();
        let mut rounds = 0;
        loop {
            reactor.turn();
            let jobs = this.bridge.take();
            if jobs.is_empty() {
                break;
            }
            let answered: Vec<Job> = jobs
                .into_iter()
                .filter_map(|job| this.advance(slf, job))
                .collect();
            this.bridge.deliver(answered);
            rounds += 1;
            if rounds == MAX_ROUNDS {
                this.bridge.later();
                break;
            }
        }
        if this.bridge.is_finished() {
            // Nothing more to watch for. The asker goes first, so that the
            // watching thread asks no more; then the thread, waited for
            // without the interpreter (an ask under way needs it), so that
            // no reference to the handler is left in it once this returns.
            this.asker.clear();
            slf.py().detach(|| reactor.unwatch_and_wait());
            if let Some(finished) = this.finished.get(slf.py()) {
                finished.call0()?;
            }
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.handler.traverse(&visit)?;
        self.follow.traverse(&visit)?;
        self.finished.traverse(&visit)?;
        self.asker.traverse(&visit)
    }

    fn __clear__(&self) {
        self.handler.clear();
        self.follow.clear();
        self.finished.clear();
        self.asker.clear();
    }
}

impl Drop for LoopHandler {
    fn drop(&mut self) {
        // A watching thread holds the reactor, not this: it must be told.
        self.bridge.reactor().unwatch();
        // Dropped with the interpreter held, unlike by the thread.
        self.asker.clear();
    }
}

/// A callable the collector has cleared: its server is garbage.
fn gone(callable: Option<Bound<'_, PyAny>>) -> PyResult<Bound<'_, PyAny>> {
    callable.ok_or_else(|| PyRuntimeError::new_err("the server is gone"))
}

impl LoopHandler {
    /// Answers `job`'s messages in order until it is done (and returns it,
    /// to be settled), or one suspends (and a Task goes on with it).
    fn advance(&self, slf: &Bound<'_, Self>, mut job: Job) -> Option<Job> {
        let py = slf.py();
        if self.session {
            return self.converse(slf, job);
        }
        while let Some(message) = job.next() {
            let go_on = match self.call(py, job.peer(), message) {
                Ok(Called::Reply(reply)) => job.answer(Ok(reply.as_deref())),
                Ok(Called::Suspended { coroutine, waiting }) => {
                    self.suspend(slf, job, coroutine, true, waiting);
                    return None;
                }
                Ok(Called::Awaitable(awaitable)) => {
                    self.suspend(slf, job, awaitable, false, py.None().into_bound(py));
                    return None;
                }
                Err(e) => {
                    let failed = log_failure(py, job.peer(), e);
                    job.answer(Err(failed))
                }
            };
            if !go_on {
                break;
            }
        }
        Some(job)
    }

    /// Hands a session's job to its connection's object: opens it, feeds it
    /// the messages (the job is settled once it has taken them all, so a
    /// session that falls behind stops its connection reading), or ends it.
    fn converse(&self, slf: &Bound<'_, Self>, mut job: Job) -> Option<Job> {
        let py = slf.py();
        let conn = job.conn().clone();
        let state = || {
            conn.state::<Py<PyAny>>()
                .map(|state| state.bind(py).clone())
                .ok_or_else(|| PyTypeError::new_err("the connection has no session"))
        };
        let (hook, done) = match job.stage() {
            Stage::Open => ("connected", self.open(py, &conn)),
            Stage::Close => ("closed", state().and_then(|s| s.call_method0("_end"))),
            Stage::Messages => {
                let messages: PyResult<Vec<_>> =
                    job.messages().map(|m| decode_text(py, m)).collect();
                let messages = match messages {
                    Ok(messages) => messages,
                    Err(e) => {
                        let failed = log_hook_failure(py, "received", conn.peer(), e);
                        job.answer(Err(failed));
                        return Some(job);
                    }
                };
                let fed = state().and_then(|state| {
                    let pending = Py::new(
                        py,
                        PendingJob {
                            job: Some(job),
                            owner: slf.clone().unbind(),
                        },
                    )?;
                    state.call_method1(intern!(py, "_feed"), (messages, pending))
                });
                // The job went with `_feed`; if that failed, it is settled as
                // failed when dropped, and its connection closes.
                if let Err(e) = fed {
                    log_hook_failure(py, "received", conn.peer(), e);
                }
                return None;
            }
        };
        if let Err(e) = done {
            let failed = log_hook_failure(py, hook, conn.peer(), e);
            job.fail(Error::Handler(failed));
        }
        Some(job)
    }

    /// Opens a session: the handler makes the connection's object.
    fn open<'py>(&self, py: Python<'py>, conn: &Arc<Conn>) -> PyResult<Bound<'py, PyAny>> {
        let state = gone(self.handler.get(py))?.call1((Connection::new(conn),))?;
        conn.set_state(Box::new(state.clone().unbind()));
        Ok(state)
    }

    /// Calls the handler with `message` and starts what it returns.
    fn call<'py>(
        &self,
        py: Python<'py>,
        peer: SocketAddr,
        message: &[u8],
    ) -> PyResult<Called<'py>> {
        let result = call_handler(&gone(self.handler.get(py))?, self.with_peer, peer, message)?;
        if result.get_type().is(self.coroutine.bind(py)) {
            return match result.call_method1(intern!(py, "send"), (py.None(),)) {
                Ok(waiting) => Ok(Called::Suspended {
                    coroutine: result,
                    waiting,
                }),
                Err(e) if e.is_instance_of::<PyStopIteration>(py) => {
                    let value = e.value(py).getattr(intern!(py, "value"))?;
                    reply_bytes(value).map(Called::Reply)
                }
                Err(e) => Err(e),
            };
        }
        if !result.is_none()
            && !result.is_instance_of::<PyString>()
            && !result.is_instance_of::<PyBytes>()
            && result.hasattr("__await__")?
        {
            return Ok(Called::Awaitable(result));
        }
        reply_bytes(result).map(Called::Reply)
    }

    /// Hands a job whose handler is waiting to `follow`, which finishes it
    /// in a Task. Should that fail, the job is settled as failed when
    /// dropped, and its connection closes.
    fn suspend(
        &self,
        slf: &Bound<'_, Self>,
        job: Job,
        awaitable: Bound<'_, PyAny>,
        started: bool,
        waiting: Bound<'_, PyAny>,
    ) {
        let py = slf.py();
        let peer = job.peer();
        let pending = PendingJob {
            job: Some(job),
            owner: slf.clone().unbind(),
        };
        let followed = Py::new(py, pending).and_then(|pending| {
            gone(self.follow.get(py))?.call1((pending, awaitable, started, waiting))
        });
        if let Err(e) = followed {
            log_failure(py, peer, e);
        }
    }
}

/// A reply as bytes: `str` encoded, `bytes` as they are, `None` the echo.
fn reply_bytes(reply: Bound<'_, PyAny>) -> PyResult<Option<Cow<'_, [u8]>>> {
    if reply.is_none() {
        Ok(None)
    } else if let Ok(text) = reply.cast::<PyString>() {
        encode_text(text).map(|b| Some(Cow::Owned(b)))
    } else if let Ok(bytes) = reply.cast::<PyBytes>() {
        Ok(Some(Cow::Owned(bytes.as_bytes().to_vec())))
    } else {
        Err(PyTypeError::new_err(format!(
            "handler must return str, bytes or None, not {}",
            reply.get_type().name()?
        )))
    }
}

/// A job whose handler is running in a Task.
#[pyclass(module = "sockdemo._sockdemo")]
pub(super) struct PendingJob {
    job: Option<Job>,
    owner: Py<LoopHandler>,
}

#[pymethods]
impl PendingJob {
    /// The client's `(host, port)`.
    #[getter]
    fn peer<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.job
            .as_ref()
            .map(|job| address(py, job.peer()))
            .transpose()
    }

    /// The handler returned `reply`: answers with it and goes on with the
    /// job's next messages.
    fn resume(&mut self, py: Python<'_>, reply: Bound<'_, PyAny>) {
        let Some(mut job) = self.job.take() else {
            return;
        };
        let go_on = match reply_bytes(reply) {
            Ok(reply) => job.answer(Ok(reply.as_deref())),
            Err(e) => {
                let failed = log_failure(py, job.peer(), e);
                job.answer(Err(failed))
            }
        };
        if go_on {
            let owner = self.owner.bind(py);
            if let Some(job) = owner.get().advance(owner, job) {
                job.settle(true);
            }
        } else {
            job.settle(true);
        }
    }

    /// The handler raised `error`: logs it, and its connection closes once
    /// the replies before are out.
    fn fail(&mut self, py: Python<'_>, error: Bound<'_, PyAny>) {
        if let Some(mut job) = self.job.take() {
            let failed = log_failure(py, job.peer(), PyErr::from_value(error));
            job.answer(Err(failed));
            job.settle(true);
        }
    }

    /// A session took every message of the job: the connection reads on.
    fn done(&mut self) {
        if let Some(mut job) = self.job.take() {
            while job.next().is_some() {
                job.answer(Ok(None));
            }
            job.settle(true);
        }
    }

    /// The handler was cancelled (the server is closing): its connection
    /// closes without a word.
    fn cancel(&mut self) {
        if let Some(mut job) = self.job.take() {
            job.fail(Error::Interrupted);
            job.settle(false);
        }
    }
}
