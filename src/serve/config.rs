//! How a server behaves: every limit in one place, each with a safe default.
//!
//! This module sits below both the accept loop (`engine`) and the sessions
//! (`connection`), so that neither has to import the other to know its
//! settings.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::protocol::{DEFAULT_BUFFER_SIZE, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PREFIX, Protocol};
pub use crate::serve::proxy::ProxyPolicy;

/// Clients served at once by default.
pub const DEFAULT_MAX_CLIENTS: usize = 100;
/// Connections opening at once (not yet holding a slot), by default.
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;
/// The time a PROXY header and a TLS handshake have to complete, by default.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of half-received messages all connections may hold, by default.
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 64 << 20;
/// How long a connection must have been idle before a full server closes
/// it for a waiting client, by default.
pub const DEFAULT_EVICT_IDLE_AFTER: Duration = Duration::from_secs(10);
/// Unsent bytes one connection may have queued, by default.
pub const DEFAULT_MAX_PENDING_BYTES: usize = 1 << 20;
/// The time a started message (or handshake) has to arrive whole, by default.
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// The time a reply has to be written, by default.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a shutdown waits for handlers still running, by default.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How a server behaves; every limit has a safe default.
#[derive(Clone, Debug)]
pub struct Config {
    /// Clients served at once (default 100). A connection takes its slot
    /// once it has opened: PROXY header, TLS handshake and, unless the
    /// server runs sessions, a whole first message. Later ones wait.
    pub max_clients: usize,
    /// Connections opening at once, not yet holding a slot (default 1024,
    /// and never fewer than `max_clients`). When every place is taken and
    /// another client connects, the opening connection that has made the
    /// least progress is closed.
    pub max_handshakes: usize,
    /// A PROXY header and a TLS handshake must each complete within this
    /// (default 10 s), as HAProxy's `timeout client-hs`.
    pub handshake_timeout: Option<Duration>,
    /// The wire protocol (default raw).
    pub protocol: Protocol,
    /// What precedes every echoed message (default `Server received: `).
    pub reply_prefix: Vec<u8>,
    /// The size of one raw message (default 1024).
    pub buffer_size: usize,
    /// The largest framed message accepted, and the largest framed reply a
    /// handler may give (default 1 MiB).
    pub max_message_size: usize,
    /// Close a connection that sends nothing for this long (default: never).
    pub idle_timeout: Option<Duration>,
    /// When every slot is taken and a client waits, close the slot holder
    /// quiet the longest (waiting for its client to send) if it has been
    /// quiet this long (default 10 s; `None` never does).
    pub evict_idle_after: Option<Duration>,
    /// Bytes of half-received messages all connections together may hold
    /// (default 64 MiB). Past it, connections with a message under way stop
    /// reading until memory frees: a thousand peers each sending most of a
    /// large frame cannot take a gigabyte.
    pub max_buffered_bytes: usize,
    /// Bytes sent to one connection that its client has not read yet, queued
    /// in the server (default 1 MiB). Past it, the client reads too slowly
    /// for what it is sent, and its connection is closed.
    pub max_pending_bytes: usize,
    /// Once a message has started, the rest must arrive within this time
    /// (default 30 s).
    pub message_timeout: Option<Duration>,
    /// A reply must be written within this time (default 30 s).
    pub write_timeout: Option<Duration>,
    /// The pending-connection queue given to `listen()` (default 1024).
    pub backlog: i32,
    /// Serve TLS with this configuration (default: plain TCP).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The most threads that run a handler at once (default, as Python's
    /// `ThreadPoolExecutor`: `min(32, cpus + 4)`).
    pub handler_threads: usize,
    /// How long a shutdown waits for handlers still running before it closes
    /// their connections anyway (default 5 s).
    pub shutdown_timeout: Duration,
    /// Expect a PROXY protocol header on every connection, believed from
    /// these sources only (default: no header).
    pub proxy: Option<ProxyPolicy>,
    /// Share the port with other processes (`SO_REUSEPORT`): the kernel
    /// spreads connections among them (default off).
    pub reuse_port: bool,
}

/// `min(32, cpus + 4)`, the default size of Python's `ThreadPoolExecutor`:
/// enough threads for handlers that wait on I/O, few enough not to thrash.
pub fn default_handler_threads() -> usize {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    (cpus + 4).min(32)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_clients: DEFAULT_MAX_CLIENTS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            handshake_timeout: Some(DEFAULT_HANDSHAKE_TIMEOUT),
            protocol: Protocol::Raw,
            reply_prefix: DEFAULT_PREFIX.as_bytes().to_vec(),
            buffer_size: DEFAULT_BUFFER_SIZE,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            idle_timeout: None,
            evict_idle_after: Some(DEFAULT_EVICT_IDLE_AFTER),
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
            message_timeout: Some(DEFAULT_MESSAGE_TIMEOUT),
            write_timeout: Some(DEFAULT_WRITE_TIMEOUT),
            backlog: 1024,
            tls: None,
            handler_threads: default_handler_threads(),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            proxy: None,
            reuse_port: false,
        }
    }
}

/// What one start of the server does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Serve every client until shut down.
    Forever,
    /// Serve one client, then stop; close it after `max_messages` messages if
    /// set. This is the original `server.py`.
    Once { max_messages: Option<u64> },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default PROTOCOL.md's limits table gives for `setting`, as
    /// written there ("64 MiB", "10 s", "1024 (at least ...)").
    fn documented(setting: &str) -> Option<String> {
        let table = include_str!("../../PROTOCOL.md");
        let row = format!("| `{setting}` | ");
        let line = table.lines().find(|line| line.starts_with(&row))?;
        let default = line[row.len()..].split(" |").next()?;
        Some(default.split(" (").next()?.to_owned())
    }

    fn size(bytes: usize) -> String {
        match bytes {
            b if b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
            b => b.to_string(),
        }
    }

    fn seconds(duration: Option<Duration>) -> String {
        duration.map_or("none".into(), |d| format!("{} s", d.as_secs()))
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let config = Config::default();
        let expected = [
            ("max_clients", config.max_clients.to_string()),
            ("max_handshakes", config.max_handshakes.to_string()),
            ("evict_idle_after", seconds(config.evict_idle_after)),
            ("handshake_timeout", seconds(config.handshake_timeout)),
            ("buffer_size", config.buffer_size.to_string()),
            ("max_message_size", size(config.max_message_size)),
            ("max_buffered_bytes", size(config.max_buffered_bytes)),
            ("idle_timeout", seconds(config.idle_timeout)),
            ("message_timeout", seconds(config.message_timeout)),
            ("write_timeout", seconds(config.write_timeout)),
            ("shutdown_timeout", seconds(Some(config.shutdown_timeout))),
            ("max_pending_bytes", size(config.max_pending_bytes)),
        ];
        for (setting, value) in expected {
            assert_eq!(documented(setting), Some(value), "{setting}");
        }
    }

    #[test]
    fn handler_threads_default_as_pythons_thread_pool() {
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(default_handler_threads(), (cpus + 4).min(32));
        assert!(default_handler_threads() >= 5);
    }
}
