//! The clients: the programs that talk to a sockdemo server.
//!
//! * [`config`]: how a client connects and talks.
//! * [`blocking`]: a client on a plain socket, one request at a time.
//! * [`loop_client`]: a client someone else's event loop drives (asyncio's).
//! * [`bench`](mod@bench): the load generator.
//! * `replies`: what a client makes of a reply, and the wrong-protocol checks.

pub mod bench;
pub mod blocking;
pub mod config;
pub mod loop_client;
mod replies;

pub use blocking::Client;
pub use config::Config;
