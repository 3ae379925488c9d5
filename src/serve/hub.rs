//! The hub: every open connection of a session server, for broadcasts.
//!
//! A broadcast encodes its message once and queues the bytes in each
//! connection's outbox under that outbox's own lock: it never waits for a
//! socket, and a reader too slow for what it is sent is closed by its
//! outbox's bound, not waited for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::error::Result;
use crate::handling::conn::{Conn, encode};
use crate::protocol::Codec;

/// The open connections of a server, by id.
#[derive(Default)]
pub(crate) struct Hub {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        // Every change under the lock is an insert or a remove.
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new connection's number: unique for the server's life.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Relaxed) + 1
    }

    pub fn join(&self, conn: Arc<Conn>) {
        self.lock().insert(conn.id(), conn);
    }

    pub fn leave(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Sends `message` to every connection but `exclude`; returns how many
    /// took it.
    ///
    /// # Errors
    ///
    /// A message the protocol cannot carry.
    pub fn broadcast(&self, codec: &Codec, message: &[u8], exclude: Option<u64>) -> Result<usize> {
        let mut encoded = Vec::new();
        encode(codec, message, &mut encoded)?;
        // Pushing takes each outbox's lock under the hub's: nothing takes
        // them the other way round, and a push never waits for a socket.
        Ok(self
            .lock()
            .values()
            .filter(|conn| Some(conn.id()) != exclude)
            .filter(|conn| conn.push_encoded(&encoded))
            .count())
    }
}
