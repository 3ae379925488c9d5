//! What a reply handler is: code that decides the answer in place of the echo.
//!
//! A handler runs on the pool's threads, or on the network thread that read
//! the message while calls return quickly (see `lanes`); it may block, and
//! the pool then keeps it off the network threads. A plain Rust handler
//! implements [`Handler::reply`] and nothing else; the other hooks let an
//! embedding runtime (the Python module, for one) keep its own rules.

use std::sync::Arc;

use crate::handling::conn::Conn;

/// Runs a wait with whatever the handler thread holds (an interpreter lock,
/// say) released.
pub trait Detach {
    /// Runs `wait` released; returns when it does.
    fn detached(&self, wait: &mut (dyn FnMut() + Send));
}

/// Waits as they are: nothing is held.
struct Nothing;

impl Detach for Nothing {
    fn detached(&self, wait: &mut (dyn FnMut() + Send)) {
        wait();
    }
}

/// Computes replies in place of the echo.
pub trait Handler: Send + Sync {
    /// Answers `message` from the client on `conn`: the bytes to send back, `Ok(None)` for the default
    /// echo, or `Err` with a description when it failed (the handler logs
    /// the details itself). A failure closes that client's connection and
    /// nothing else. May block: a call that does moves the handler off the
    /// network threads.
    fn reply(&self, conn: &Conn, message: &[u8]) -> Result<Option<Vec<u8>>, String>;

    /// Does this handler hold a session per connection? Then [`Handler::opened`]
    /// and [`Handler::closed`] run for every connection, and nothing is added
    /// to what it sends: no echo for `None`, no automatic goodbye.
    fn is_session(&self) -> bool {
        false
    }

    /// A session's connection has opened; `Err` closes it.
    fn opened(&self, _conn: &Arc<Conn>) -> Result<(), String> {
        Ok(())
    }

    /// A session's connection has closed, whatever closed it; runs once,
    /// after every message was answered.
    fn closed(&self, _conn: &Conn) {}

    /// Runs a handler thread's life, `thread`, inside whatever context
    /// [`Handler::reply`] needs, handing it the way to release that context
    /// while waiting. The default holds nothing.
    fn enter(&self, thread: &mut dyn FnMut(&dyn Detach)) {
        thread(&Nothing);
    }

    /// Runs `calls` (which call [`Handler::reply`]) on a network thread,
    /// one that is not a handler thread and never waits for work. The
    /// default holds nothing.
    fn call_here(&self, calls: &mut dyn FnMut()) {
        calls();
    }
}
