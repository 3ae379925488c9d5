//! Who is closed when the server runs short: the connection that has made
//! the least progress.
//!
//! A connection opens (PROXY header, TLS handshake, first whole message)
//! before it takes a client slot. While every handshake place is taken, the
//! opening connection furthest behind goes to let a newcomer in: a silent
//! one before one that has sent bytes, the oldest first. While every slot is
//! taken and a client waits, the slot holder quiet the longest goes, if it
//! has been quiet at least the eviction time: nginx's rule for idle
//! keep-alive connections. Nobody is closed while there is room.
//!
//! Marking is an atomic store or two; only a server short of room scans.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Not quiet: reading a message, answering, or waiting for a handler.
const BUSY: u64 = 0;
/// Chosen to go; the connection is closing.
const EVICTED: u64 = u64::MAX;
/// The progress of a connection that holds a slot (no longer opening).
const SEATED: u64 = u64::MAX - 1;

/// How far an opening connection has got, least first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Milestone {
    /// Accepted; nothing complete yet.
    Connected = 0,
    /// Its PROXY header has arrived.
    Introduced = 1,
    /// The TLS handshake (if any) is done; the first message is arriving.
    Open = 2,
    /// A whole message has arrived: it waits for a slot, and is never
    /// closed to let a newcomer in.
    Waiting = 3,
}

/// Bytes of a first message count within a milestone, up to this.
const BYTES: u64 = 1 << 40;

/// Every connection of one server, by number (the order of arrival).
pub(crate) struct Registry {
    epoch: Instant,
    next: AtomicU64,
    entries: Mutex<HashMap<u64, Arc<Entry>>>,
}

/// One connection's standing, and the way to close it.
pub(crate) struct Entry {
    /// Until the connection holds a slot: its milestone times [`BYTES`]
    /// plus the bytes of its first message; then [`SEATED`]; [`EVICTED`]
    /// once chosen to go as an opening connection.
    progress: AtomicU64,
    /// Nanoseconds after the epoch (plus one) since when the connection has
    /// waited for its client to send; [`BUSY`] while bytes arrive or it
    /// writes an echo itself; or [`EVICTED`].
    quiet_since: AtomicU64,
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

    /// Numbers a connection just accepted: the order of arrival, which
    /// tasks starting on several threads would not keep.
    pub fn arrival(&self) -> u64 {
        self.next.fetch_add(1, Relaxed)
    }

    /// Adds an opening connection, numbered by [`Registry::arrival`], that
    /// stops when `stop` is cancelled.
    pub fn register(&self, id: u64, stop: CancellationToken) -> Registered<'_> {
        let entry = Arc::new(Entry {
            progress: AtomicU64::new(Milestone::Connected as u64 * BYTES),
            quiet_since: AtomicU64::new(BUSY),
            stop,
        });
        self.lock().insert(id, entry.clone());
        Registered {
            registry: self,
            id,
            entry,
        }
    }

    fn stamp(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64 + 1
    }

    /// Closes the opening connection that has made the least progress (the
    /// oldest of equals), unless every one has a whole message waiting.
    /// Returns whether one was closed.
    pub fn evict_least_progress(&self) -> bool {
        let waiting = Milestone::Waiting as u64 * BYTES;
        let entries = self.lock();
        let mut candidates: Vec<(u64, u64, &Arc<Entry>)> = entries
            .iter()
            .filter_map(|(id, e)| {
                let progress = e.progress.load(Relaxed);
                (progress < waiting).then_some((progress, *id, e))
            })
            .collect();
        candidates.sort_unstable_by_key(|(progress, id, _)| (*progress, *id));
        // A connection may progress between the look and the claim; then
        // the next one in line is taken.
        candidates
            .into_iter()
            .any(|(progress, _, e)| e.claim(&e.progress, progress))
    }

    /// Closes the slot holder quiet the longest, if it has been quiet at
    /// least `after`. Returns whether one was closed.
    pub fn evict_longest_quiet(&self, after: Duration) -> bool {
        let now = self.stamp(Instant::now());
        let threshold = after.as_nanos() as u64;
        let entries = self.lock();
        let mut candidates: Vec<(u64, &Arc<Entry>)> = entries
            .values()
            .filter_map(|e| {
                let since = e.quiet_since.load(Relaxed);
                let quiet = e.progress.load(Relaxed) == SEATED
                    && since != BUSY
                    && since != EVICTED
                    && now.saturating_sub(since) >= threshold;
                quiet.then_some((since, e))
            })
            .collect();
        candidates.sort_unstable_by_key(|(since, _)| *since);
        candidates
            .into_iter()
            .any(|(since, e)| e.claim(&e.quiet_since, since))
    }
}

impl Entry {
    /// Closes the connection if `state` (one of its own fields) still holds
    /// what was `seen`; false if it changed meanwhile.
    fn claim(&self, state: &AtomicU64, seen: u64) -> bool {
        let claimed = state
            .compare_exchange(seen, EVICTED, Relaxed, Relaxed)
            .is_ok();
        if claimed {
            self.stop.cancel();
        }
        claimed
    }
}

impl Registered<'_> {
    /// The opening connection has reached `milestone`, with `bytes` of its
    /// first message in.
    pub fn reached(&self, milestone: Milestone, bytes: usize) {
        let now = milestone as u64 * BYTES + (bytes as u64).min(BYTES - 1);
        let _ = self
            .entry
            .progress
            .fetch_update(Relaxed, Relaxed, |v| (v < now).then_some(now));
    }

    /// The connection holds a slot now.
    pub fn seated(&self) {
        let _ = self
            .entry
            .progress
            .fetch_update(Relaxed, Relaxed, |v| (v != EVICTED).then_some(SEATED));
    }

    /// The connection waits for its client to send, since `at`. (A handler
    /// may still be at work for it: if it is closed, that reply goes first.)
    pub fn quiet(&self, at: Instant) {
        let now = self.registry.stamp(at);
        let _ = self
            .entry
            .quiet_since
            .fetch_update(Relaxed, Relaxed, |v| (v != EVICTED).then_some(now));
    }

    /// Bytes arrived, or work is pending.
    pub fn busy(&self) {
        let _ = self
            .entry
            .quiet_since
            .fetch_update(Relaxed, Relaxed, |v| (v != EVICTED).then_some(BUSY));
    }

    /// Was the connection closed to make room?
    pub fn evicted(&self) -> bool {
        self.entry.quiet_since.load(Relaxed) == EVICTED
            || self.entry.progress.load(Relaxed) == EVICTED
    }

    /// Was it closed before it had a slot, to let a newcomer in?
    pub fn evicted_opening(&self) -> bool {
        self.entry.progress.load(Relaxed) == EVICTED
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

    fn tokens<const N: usize>() -> [CancellationToken; N] {
        std::array::from_fn(|_| CancellationToken::new())
    }

    #[test]
    fn the_slot_holder_quiet_longest_goes_first_and_busy_ones_never() {
        let registry = Registry::new();
        let [a, b, c, d] = tokens();
        let [first, second, third, opening] =
            [&a, &b, &c, &d].map(|t| registry.register(registry.arrival(), t.clone()));
        for seated in [&first, &second, &third] {
            seated.seated();
        }
        first.quiet(Instant::now());
        second.quiet(Instant::now());
        third.busy();
        // Quiet, but not a slot holder: making a slot free is not its part.
        opening.quiet(Instant::now());
        assert!(!registry.evict_longest_quiet(Duration::from_secs(3600)));
        assert!(registry.evict_longest_quiet(Duration::ZERO));
        assert!(a.is_cancelled() && first.evicted());
        assert!(!b.is_cancelled() && !c.is_cancelled());
        // Once evicted, waking does not undo it.
        first.busy();
        assert!(first.evicted());
        assert!(registry.evict_longest_quiet(Duration::ZERO));
        assert!(b.is_cancelled());
        assert!(!registry.evict_longest_quiet(Duration::ZERO));
        assert!(!d.is_cancelled());
        drop(third);
        assert_eq!(registry.lock().len(), 3);
    }

    #[test]
    fn the_opening_connection_furthest_behind_goes_first() {
        let registry = Registry::new();
        let [a, b, c, d, e, f] = tokens();
        let [
            talking,
            oldest_silent,
            waiting,
            younger_silent,
            shaken_hands,
            seated,
        ] = [&a, &b, &c, &d, &e, &f].map(|t| registry.register(registry.arrival(), t.clone()));
        talking.reached(Milestone::Open, 3);
        // As a connection that waits for a slot marks itself.
        waiting.reached(Milestone::Waiting, 0);
        shaken_hands.reached(Milestone::Open, 0);
        seated.seated();
        let order = [&b, &d, &e, &a];
        for (n, token) in order.iter().enumerate() {
            assert!(registry.evict_least_progress());
            assert!(token.is_cancelled(), "eviction {n} took the wrong one");
            assert!(order[n + 1..].iter().all(|t| !t.is_cancelled()));
        }
        // A whole message waiting for a slot, and a slot holder, stay.
        assert!(!registry.evict_least_progress());
        assert!(!c.is_cancelled() && !f.is_cancelled());
        assert!(oldest_silent.evicted_opening() && younger_silent.evicted());
        assert!(!waiting.evicted() && !seated.evicted());
        // Progress never goes back, and an evicted one stays evicted.
        waiting.reached(Milestone::Open, 0);
        talking.seated();
        assert!(talking.evicted());
    }

    #[test]
    fn a_milestone_outranks_age_and_bytes() {
        let registry = Registry::new();
        let [a, b, c] = tokens();
        let [older, younger, chatty] =
            [&a, &b, &c].map(|t| registry.register(registry.arrival(), t.clone()));
        // The older one's PROXY header is in; the younger has nothing yet;
        // a third has many bytes of its first message but is one step
        // behind a connection that finished its handshake with none.
        older.reached(Milestone::Introduced, 0);
        chatty.reached(Milestone::Introduced, 1 << 20);
        assert!(registry.evict_least_progress());
        assert!(b.is_cancelled() && !a.is_cancelled());
        older.reached(Milestone::Open, 0);
        assert!(registry.evict_least_progress());
        assert!(c.is_cancelled() && !a.is_cancelled());
        drop((older, younger, chatty));
    }
}
