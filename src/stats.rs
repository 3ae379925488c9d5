//! Counters a running server keeps about itself.
//!
//! Relaxed atomics: each counter is independent, and a snapshot that is a few
//! nanoseconds stale is fine for observation. Connections add their bytes
//! once per read or write, not per byte or per message batch member, so the
//! counters cost next to nothing on the hot path.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters, shared by the accept loop and every connection.
#[derive(Debug, Default)]
pub struct Stats {
    accepted: AtomicU64,
    active: AtomicU64,
    messages: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    errors: AtomicU64,
}

/// What a server's handler pool looks like at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Messages waiting for a handler thread.
    pub queued: u64,
    /// Handler threads running.
    pub threads: u64,
    /// Of those, the ones not waiting for work.
    pub busy: u64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Connections accepted since the server was created.
    pub connections_accepted: u64,
    /// Connections being served now.
    pub connections_active: u64,
    /// Messages received (and answered).
    pub messages: u64,
    /// Bytes read from clients, framing included.
    pub bytes_in: u64,
    /// Bytes written to clients, framing included.
    pub bytes_out: u64,
    /// Connections that ended in an error (reset, timeout, bad frame…).
    pub errors: u64,
    /// The handler pool's queue and threads (all zero without a handler).
    pub handler: Load,
}

impl Stats {
    /// Takes a snapshot.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            connections_accepted: self.accepted.load(Relaxed),
            connections_active: self.active.load(Relaxed),
            messages: self.messages.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            errors: self.errors.load(Relaxed),
            handler: Load::default(),
        }
    }

    pub(crate) fn connection_opened(&self) {
        self.accepted.fetch_add(1, Relaxed);
        self.active.fetch_add(1, Relaxed);
    }

    pub(crate) fn connection_closed(&self, failed: bool) {
        self.active.fetch_sub(1, Relaxed);
        if failed {
            self.errors.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn received(&self, bytes: usize) {
        self.bytes_in.fetch_add(bytes as u64, Relaxed);
    }

    pub(crate) fn answered(&self, messages: u64, bytes: usize) {
        self.messages.fetch_add(messages, Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Relaxed);
    }
}
