//! Handling: who runs a handler's code, and where its replies go.
//!
//! * [`handler`]: what a reply handler is.
//! * [`runner`]: the one face connections see, over one of the two below.
//! * [`pool`]: a pool of handler threads, off the network threads.
//! * `lanes`: the pool's fast path, a quick call on the network thread.
//! * [`bridge`]: jobs for an event loop in another thread.
//! * [`reactor`]: an event loop's connections, served on its own thread.
//! * `watcher`: a thread that watches the reactor for a loop that cannot.
//! * [`job`]: the messages handed over, and the rules of their replies.
//! * [`conn`]: a connection as a handler sees it: its client, pushes, state.
//! * `outbox`: a connection's replies, on their way into its socket.

pub mod bridge;
pub mod conn;
pub mod handler;
pub mod job;
pub(crate) mod lanes;
pub(crate) mod outbox;
pub mod pool;
pub mod reactor;
pub mod runner;
mod watcher;

pub use bridge::LoopBridge;
pub use conn::Conn;
pub use handler::Handler;
pub use runner::RunOn;
pub(crate) use runner::Runner;
