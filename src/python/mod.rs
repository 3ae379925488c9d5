//! The Python module `sockdemo._sockdemo`: the only place that knows Python.
//!
//! It converts arguments, maps errors, and releases the interpreter; it holds
//! no networking logic. One file per concept:
//!
//! * `errors`: core errors as the exceptions socket users catch, and the
//!   released, interruptible wait every blocking call goes through;
//! * `convert`: seconds, protocol names, TLS options, addresses, messages;
//! * `handler`: a Python callable as the reply handler, on threads that stay
//!   attached to the interpreter; `held`: what the garbage collector must
//!   see of it;
//! * `server`, `client`: the `Server` and `Client` classes;
//! * `session`: a `sockdemo.Session` per connection, and the `Connection`
//!   it sends through;
//! * `loop_handler`, `loop_client`: what `sockdemo.aio` builds on: a
//!   handler run on an asyncio loop, and a client the loop drives;
//! * `bench`, `cert`: the load generator, development certificates.
//!
//! Every network wait runs inside `py.detach(...)`, woken at least every
//! 100 ms to run `check_signals()`, so Ctrl+C and other threads keep working.

mod bench;
mod cert;
mod client;
mod convert;
mod errors;
mod handler;
mod held;
mod loop_client;
mod loop_handler;
mod server;
mod session;

use pyo3::prelude::*;

use crate::protocol;
use crate::serve::config;

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
        let _ = server::LOG_RESET.set(reset);
    }
    m.add_class::<server::Server>()?;
    m.add_class::<client::Client>()?;
    m.add_class::<session::Connection>()?;
    m.add_class::<loop_handler::LoopHandler>()?;
    m.add_class::<loop_handler::PendingJob>()?;
    m.add_class::<loop_client::LoopClient>()?;
    m.add_function(wrap_pyfunction!(cert::generate_self_signed, m)?)?;
    m.add_function(wrap_pyfunction!(bench::run_bench, m)?)?;
    m.add_function(wrap_pyfunction!(server::_shutdown_all, m)?)?;
    m.add("DEFAULT_HOST", protocol::DEFAULT_HOST)?;
    m.add("DEFAULT_PORT", protocol::DEFAULT_PORT)?;
    m.add("DEFAULT_PREFIX", protocol::DEFAULT_PREFIX)?;
    m.add("BYE_REPLY", protocol::BYE_REPLY)?;
    m.add("DEFAULT_BUFFER_SIZE", protocol::DEFAULT_BUFFER_SIZE)?;
    m.add(
        "DEFAULT_MAX_MESSAGE_SIZE",
        protocol::DEFAULT_MAX_MESSAGE_SIZE,
    )?;
    m.add("DEFAULT_MAX_CLIENTS", config::DEFAULT_MAX_CLIENTS)?;
    m.add("DEFAULT_MAX_HANDSHAKES", config::DEFAULT_MAX_HANDSHAKES)?;
    m.add(
        "DEFAULT_MAX_BUFFERED_BYTES",
        config::DEFAULT_MAX_BUFFERED_BYTES,
    )?;
    m.add(
        "DEFAULT_MAX_PENDING_BYTES",
        config::DEFAULT_MAX_PENDING_BYTES,
    )?;
    // Durations as Python spells them: float seconds.
    for (name, duration) in [
        ("DEFAULT_EVICT_IDLE_AFTER", config::DEFAULT_EVICT_IDLE_AFTER),
        (
            "DEFAULT_HANDSHAKE_TIMEOUT",
            config::DEFAULT_HANDSHAKE_TIMEOUT,
        ),
        ("DEFAULT_MESSAGE_TIMEOUT", config::DEFAULT_MESSAGE_TIMEOUT),
        ("DEFAULT_WRITE_TIMEOUT", config::DEFAULT_WRITE_TIMEOUT),
        ("DEFAULT_SHUTDOWN_TIMEOUT", config::DEFAULT_SHUTDOWN_TIMEOUT),
    ] {
        m.add(name, duration.as_secs_f64())?;
    }
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
