//! The server: from a bound listener to answered clients.
//!
//! * [`config`]: every setting of a server, with its safe default.
//! * `engine`: the accept loop and graceful shutdown.
//! * `admission`: the handshake places and client slots a connection takes.
//! * `budget`: the memory half-received messages share, fairly.
//! * [`server`]: the engine behind a blocking handle Python drives.
//! * `connection`: one client's session: buffers, timeouts, replies.
//! * `answer`: the whole messages of a batch, echoed or handed to the handler.
//! * `conversation`: its handler's view of it, its outbox, a session's hooks.
//! * `transport`: a connection's byte stream, plain or TLS.
//! * `eviction`: who is closed when room runs out: the least progress first.
//! * `hub`: a session server's open connections, for broadcasts.
//! * [`proxy`]: the PROXY protocol header a load balancer puts first.

mod admission;
mod answer;
mod budget;
pub mod config;
pub(crate) mod connection;
mod conversation;
mod engine;
mod eviction;
mod hub;
pub mod proxy;
pub mod server;
mod transport;

pub use config::{Config, Mode};
pub use engine::bind;
pub use server::Server;
