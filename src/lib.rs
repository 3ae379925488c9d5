//! sockdemo: the classic Python socket echo example, rebuilt on Rust.
//!
//! A TCP server answers every message with `Server received: <message>` and
//! says goodbye to `bye`; a client talks to it. The core is Rust (tokio for
//! the server, a plain blocking socket for the client, rustls for TLS) and
//! Python reaches it as the module `sockdemo` (see `python/`, built only
//! with the `python` feature so that `cargo test` needs no Python).
//!
//! # Layout
//!
//! Three subsystems, each a folder whose `mod.rs` gives the tour:
//!
//! * [`serve`]: the server: accept loop, connections, transport, eviction,
//!   PROXY headers, configuration, and the blocking [`serve::Server`] handle.
//! * [`handling`]: who runs a handler and where its replies go: the
//!   `Runner` over a thread `Pool`, the network
//!   threads' lanes, or an event loop's [`handling::LoopBridge`].
//! * [`clients`]: the blocking client, the event-loop client, the load
//!   generator.
//!
//! Below them, shared by all three:
//!
//! * [`protocol`]: the wire formats (raw and framed) as a sans-IO codec,
//!   written once and used by server, clients and load generator.
//! * [`tls`]: rustls configurations from PEM files, development certificates.
//! * [`stats`]: the counters a server keeps.
//! * [`error`]: the one error type.
//! * [`socket`]: what a connection needs of its socket, on every platform.
//! * [`wait`]: blocking waits that stay interruptible.
//! * [`address`]: addresses as Python prints them, for log lines.
//! * `python`: the pyo3 module (a folder, a file per concept); the only
//!   place that knows about Python.

pub mod address;
pub mod clients;
pub mod error;
pub mod handling;
pub mod protocol;
pub mod serve;
pub mod socket;
pub mod stats;
pub mod tls;
pub mod wait;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, Result};
pub use protocol::Protocol;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
