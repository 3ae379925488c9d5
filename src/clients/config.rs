//! How a client connects and talks: one configuration for the blocking
//! client, the loop client and the load generator.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::protocol::{DEFAULT_BUFFER_SIZE, DEFAULT_MAX_MESSAGE_SIZE, Protocol};

/// How long connecting may take when no timeout is given.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How a client connects and talks.
#[derive(Clone, Debug)]
pub struct Config {
    /// The wire protocol (default raw).
    pub protocol: Protocol,
    /// Give up on connecting or on a reply after this long (default: wait).
    pub timeout: Option<Duration>,
    /// The size of one raw message; longer raw messages are refused.
    pub buffer_size: usize,
    /// The largest framed message sent (and, plus room for the prefix, read).
    pub max_message_size: usize,
    /// Speak TLS with this configuration and name.
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            protocol: Protocol::Raw,
            timeout: None,
            buffer_size: DEFAULT_BUFFER_SIZE,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            tls: None,
        }
    }
}
