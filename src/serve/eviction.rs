//! Which connections are idle, so that a full server can make room.
//!
//! Every slot taken by a connection that sends nothing would otherwise lock
//! new clients out for as long as it stays open. Closing idle connections
//! after a fixed time would also cut off an interactive user who pauses
//! while the server has room to spare. So sockdemo does what nginx does with
//! idle keep-alive connections: only when every slot is taken and a client
//! is waiting does it close the connection that has been idle the longest,
//! if that one has been idle for at least the eviction time.
//!
//! A connection marks itself idle when it waits for a message with nothing
//! half-received and no handler at work for it, and busy again when bytes
//! arrive. Marking is two atomic stores; only a full server scans.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Not idle: reading a message, answering, or waiting for a handler.
const BUSY: u64 = 0;
/// Chosen for eviction; the connection is closing.
const EVICTED: u64 = u64::MAX;

/// Every connection of one server, by number.
pub(crate) struct Registry {
    epoch: Instant,
    next: AtomicU64,
    entries: Mutex<HashMap<u64, Arc<Entry>>>,
}

/// One connection's idleness, and the way to close it.
pub(crate) struct Entry {
    /// Nanoseconds after the epoch (plus one) since when the connection has
    /// been idle; [`BUSY`] or [`EVICTED`].
    idle_since: AtomicU64,
    /// The connection's own stop token.
    stop: CancellationToken,
}

/// A connection's place in the registry; leaves it on drop.
pub(crate) struct Registered<'a> {
    registry: &'a Registry,
    id: u64,
    entry: Arc<Entry>,
}

impl Registry {
    pub fn new() -> Self {
        Registry {
            epoch: Instant::now(),
            next: AtomicU64::new(0),
            entries: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Entry>>> {
        // Inserts and removes only: consistent whatever panicked.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a connection that stops when `stop` is cancelled.
    pub fn register(&self, stop: CancellationToken) -> Registered<'_> {
        let id = self.next.fetch_add(1, Relaxed);
        let entry = Arc::new(Entry {
            idle_since: AtomicU64::new(BUSY),
            stop,
        });
        self.lock().insert(id, entry.clone());
        Registered {
            registry: self,
            id,
            entry,
        }
    }

    fn now(&self) -> u64 {
        self.stamp(Instant::now())
    }

    fn stamp(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64 + 1
    }

    /// Closes the connection idle the longest, if it has been idle at least
    /// `after`. Returns whether one was closed.
    pub fn evict_longest_idle(&self, after: Duration) -> bool {
        let now = self.now();
        let threshold = after.as_nanos() as u64;
        let entries = self.lock();
        let mut candidates: Vec<(u64, &Arc<Entry>)> = entries
            .values()
            .filter_map(|e| {
                let since = e.idle_since.load(Relaxed);
                let idle =
                    since != BUSY && since != EVICTED && now.saturating_sub(since) >= threshold;
                idle.then_some((since, e))
            })
            .collect();
        candidates.sort_unstable_by_key(|(since, _)| *since);
        // The connection may wake between the look and the claim; then the
        // next one in line is taken.
        for (since, entry) in candidates {
            if entry
                .idle_since
                .compare_exchange(since, EVICTED, Relaxed, Relaxed)
                .is_ok()
            {
                entry.stop.cancel();
                return true;
            }
        }
        false
    }
}

impl Registered<'_> {
    /// The connection waits for a message with nothing pending, since `at`.
    pub fn idle(&self, at: Instant) {
        let now = self.registry.stamp(at);
        let _ = self
            .entry
            .idle_since
            .fetch_update(Relaxed, Relaxed, |v| (v != EVICTED).then_some(now));
    }

    /// Bytes arrived, or work is pending.
    pub fn busy(&self) {
        let _ = self
            .entry
            .idle_since
            .fetch_update(Relaxed, Relaxed, |v| (v != EVICTED).then_some(BUSY));
    }

    /// Was the connection closed to make room?
    pub fn evicted(&self) -> bool {
        self.entry.idle_since.load(Relaxed) == EVICTED
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_idle_goes_first_and_busy_ones_never() {
        let registry = Registry::new();
        let (a, b, c) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let first = registry.register(a.clone());
        let second = registry.register(b.clone());
        let third = registry.register(c.clone());
        first.idle(Instant::now());
        second.idle(Instant::now());
        third.busy();
        assert!(!registry.evict_longest_idle(Duration::from_secs(3600)));
        assert!(registry.evict_longest_idle(Duration::ZERO));
        assert!(a.is_cancelled() && first.evicted());
        assert!(!b.is_cancelled() && !c.is_cancelled());
        // Once evicted, waking does not undo it.
        first.busy();
        assert!(first.evicted());
        assert!(registry.evict_longest_idle(Duration::ZERO));
        assert!(b.is_cancelled());
        assert!(!registry.evict_longest_idle(Duration::ZERO));
        drop(third);
        assert_eq!(registry.lock().len(), 2);
    }
}
