//! sockdemo: the classic Python socket echo example, rebuilt on Rust.
//!
//! A TCP server answers every message with `Server received: <message>` and
//! says goodbye to `bye`; a client talks to it. The core is Rust (tokio for
//! the server, a plain blocking socket for the client, rustls for TLS) and
//! Python reaches it as the module `sockdemo` (see `python.rs`, built only
//! with the `python` feature so that `cargo test` needs no Python).
//!
//! # Layout
//!
//! * [`protocol`]: the wire formats (raw and framed) as a sans-IO codec,
//!   written once and used by server, client and load generator.
//! * [`config`]: every setting of a server, with its safe default.
//! * [`server`]: the accept loop, the connection limit, graceful shutdown, and
//!   the blocking [`server::Server`] handle Python drives.
//! * `connection`: one client's session: buffers, timeouts, replies.
//! * `socket`: what a connection needs of its socket, so that the same
//!   session code runs on the network threads and on an event loop's.
//! * [`proxy`]: the PROXY protocol header a load balancer puts first.
//! * [`handler`]: what a reply handler is, for code that decides the replies.
//! * [`runner`]: who runs the handler: the thread pool, or an event loop.
//! * [`job`]: the messages handed to a handler, and the rules of its replies.
//! * [`dispatch`](mod@dispatch): the pool of threads that runs a handler off
//!   the network threads, in order per connection, with back-pressure.
//! * `inline`: the dispatcher's fast path, a quick handler answered on the
//!   network thread that read the message, and the rules that keep a
//!   blocking one off it.
//! * [`handoff`]: jobs for an event loop in another thread, woken once per
//!   batch.
//! * `reactor`: the connections of an asyncio server with a handler, served
//!   on the event loop's own thread through one descriptor it watches.
//! * `outbox`: where a connection's handler replies go, straight into its
//!   socket when the handler thread can write them there.
//! * `idle`: which connections are idle, so a full server can make room for
//!   a waiting client.
//! * [`client`]: the blocking client.
//! * [`loop_client`]: a client for someone else's event loop (asyncio's).
//! * [`tls`]: rustls configurations from PEM files, development certificates.
//! * [`bench`](mod@bench): the load generator.
//! * [`stats`]: the counters a server keeps.
//! * [`error`]: the one error type.
//! * `python`: the pyo3 module (a folder, a file per concept); the only
//!   place that knows about Python.

pub mod bench;
pub mod client;
pub mod config;
mod connection;
pub mod dispatch;
pub mod error;
pub mod handler;
pub mod handoff;
mod idle;
mod inline;
pub mod job;
pub mod loop_client;
mod outbox;
pub mod protocol;
pub mod proxy;
pub mod reactor;
pub mod runner;
pub mod server;
mod socket;
pub mod stats;
pub mod tls;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, Result};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
pub use protocol::Protocol;
