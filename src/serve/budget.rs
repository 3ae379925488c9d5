//! The server-wide budget for half-received messages, shared fairly.
//!
//! A connection with a message under way holds a share: the bytes it has
//! buffered and is about to read, not the whole length its header declared,
//! so a thousand senders that stall mid-frame hold what they sent and no
//! more. Growing shares in steps could let every holder wait for memory the
//! others hold; the banker's rule prevents it: a share grows only if, after
//! it, the holders could still finish one after another, each giving its
//! share back. Some holder can then always finish its message and give its share
//! back, and once a connection holds a share, its message can always complete.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// Bytes of half-received messages, shared by every connection of a server.
#[derive(Debug)]
pub(crate) struct Budget {
    state: Mutex<State>,
    /// Rung whenever bytes are given back.
    freed: Notify,
}

#[derive(Debug)]
struct State {
    free: usize,
    next: u64,
    /// Held by shares whose messages are covered whole: theirs comes back
    /// whatever happens to the others.
    settled: usize,
    /// The other shares, by what their messages still need (then number):
    /// what each holds.
    waiting: BTreeMap<(usize, u64), usize>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Holding {
    held: usize,
    need: usize,
}

/// One connection's share, for the message it is receiving; given back on
/// drop.
#[derive(Debug)]
pub(crate) struct Share {
    budget: Arc<Budget>,
    id: u64,
    mine: Holding,
}

impl Budget {
    pub fn new(total: usize) -> Arc<Self> {
        Arc::new(Budget {
            state: Mutex::new(State {
                free: total,
                next: 0,
                settled: 0,
                waiting: BTreeMap::new(),
            }),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below is whole before anything can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An empty share, to grow.
    pub fn share(self: &Arc<Self>) -> Share {
        let mut state = self.lock();
        let id = state.next;
        state.next += 1;
        Share {
            budget: self.clone(),
            id,
            mine: Holding::default(),
        }
    }
}

impl State {
    /// The banker's test: can every holder finish, one after another, each
    /// giving back its share, starting from what is free? Walks the smallest
    /// needs first, and stops as soon as what is free covers the largest.
    fn safe(&self) -> bool {
        let Some(((largest, _), _)) = self.waiting.last_key_value() else {
            return true;
        };
        let mut free = self.free + self.settled;
        for ((need, _), held) in &self.waiting {
            if free >= *largest {
                return true;
            }
            if *need > free {
                return false;
            }
            free += held;
        }
        true
    }

    fn add(&mut self, id: u64, h: Holding) {
        if h.need == 0 {
            self.settled += h.held;
        } else if h.held > 0 {
            self.waiting.insert((h.need, id), h.held);
        }
    }

    fn remove(&mut self, id: u64, h: Holding) {
        if h.need == 0 {
            self.settled -= h.held;
        } else if h.held > 0 {
            self.waiting.remove(&(h.need, id));
        }
    }
}

impl Share {
    /// Grows the share to cover `target` bytes of a message of `total`
    /// bytes, or at least `least` of them when the whole target would not
    /// be safe, waiting until one of the two is. Returns the bytes covered.
    pub async fn grow(&mut self, target: usize, least: usize, total: usize) -> usize {
        let (target, least) = (target.min(total), least.min(target));
        let budget = self.budget.clone();
        loop {
            let freed = budget.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a release in between still wakes us.
            freed.as_mut().enable();
            if self.try_grow(target, total) || self.try_grow(least, total) {
                return self.mine.held;
            }
            freed.await;
        }
    }

    fn try_grow(&mut self, target: usize, total: usize) -> bool {
        let held = target.max(self.mine.held);
        let wanted = Holding {
            held,
            need: total.saturating_sub(held),
        };
        let more = held - self.mine.held;
        let mut state = self.budget.lock();
        if state.free < more {
            return false;
        }
        state.remove(self.id, self.mine);
        state.add(self.id, wanted);
        state.free -= more;
        if more == 0 || state.safe() {
            self.mine = wanted;
            return true;
        }
        state.free += more;
        state.remove(self.id, wanted);
        state.add(self.id, self.mine);
        false
    }

    /// The bytes this share covers.
    pub fn held(&self) -> usize {
        self.mine.held
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if self.mine.held == 0 {
            return;
        }
        let mut state = self.budget.lock();
        state.remove(self.id, self.mine);
        state.free += self.mine.held;
        drop(state);
        self.budget.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now<F: std::future::Future>(f: F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(out) => Some(out),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn a_share_holds_what_arrived_not_what_was_declared() {
        let budget = Budget::new(1000);
        let mut stalled = budget.share();
        // 100 bytes in, of a 400-byte message.
        assert_eq!(now(stalled.grow(100, 100, 400)), Some(100));
        // 700 (or 650) of a 1000-byte message would leave 200 (250) free,
        // which neither message's rest (300 or more) fits: refused.
        let mut greedy = budget.share();
        assert_eq!(now(greedy.grow(700, 650, 1000)), None);
        assert_eq!(greedy.held(), 0);
        // A small step of it is safe: 100 more leaves 800 free.
        assert_eq!(now(greedy.grow(700, 100, 1000)), Some(100));
        // A whole message that fits is always safe: it will be given back.
        let mut other = budget.share();
        assert_eq!(now(other.grow(500, 500, 500)), Some(500));
        drop(other);
        // The stalled message finishes and goes; the greedy one may grow.
        assert_eq!(now(stalled.grow(400, 400, 400)), Some(400));
        drop(stalled);
        assert_eq!(now(greedy.grow(1000, 1000, 1000)), Some(1000));
        drop(greedy);
        assert_eq!(budget.lock().free, 1000);
    }

    #[test]
    fn a_share_grows_only_if_every_holder_can_still_finish_in_turn() {
        // 220 bytes: a 60-byte message and a 210-byte one hold 10 each.
        let budget = Budget::new(220);
        let [mut small, mut large, mut whole] = [(); 3].map(|_| budget.share());
        assert_eq!(now(small.grow(10, 10, 60)), Some(10));
        assert_eq!(now(large.grow(10, 10, 210)), Some(10));
        // 100 of a 220-byte message would leave 100 free: the small message
        // could finish and give back 60, and then neither of the others
        // could (120 and 200 more, of 110).
        assert_eq!(now(whole.grow(100, 100, 220)), None);
        // 10 leaves 190: small finishes (200 free), then large (210), then
        // this one.
        assert_eq!(now(whole.grow(100, 10, 220)), Some(10));
    }

    #[test]
    fn holders_never_all_wait_for_each_other() {
        // Eight 600-byte messages, a budget of 2000: shares grow in 100-byte
        // steps, round robin, and every message still completes.
        let budget = Budget::new(2000);
        let mut shares: Vec<Share> = (0..8).map(|_| budget.share()).collect();
        let mut done = [false; 8];
        let mut progress = [0usize; 8];
        for _round in 0..100 {
            for (i, share) in shares.iter_mut().enumerate() {
                if done[i] {
                    continue;
                }
                let target = progress[i] + 100;
                if now(share.grow(target, target, 600)).is_some() {
                    progress[i] = target;
                    if target == 600 {
                        done[i] = true;
                        *share = budget.share();
                    }
                }
            }
        }
        assert_eq!(done, [true; 8], "progress: {progress:?}");
        drop(shares);
        let state = budget.lock();
        assert_eq!((state.free, state.settled), (2000, 0));
        assert!(state.waiting.is_empty());
    }
}
