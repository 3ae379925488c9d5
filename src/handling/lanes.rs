//! Lanes: answering messages on the network thread that read them, the
//! pool's fast path: a connection's own messages with no job at all
//! (`Pool::answer_now`), and the jobs other network threads queued meanwhile.
//!
//! Handing a job to a handler thread costs a wake-up and two context
//! switches, several times what a trivial Python handler costs to run. So a
//! job may instead be answered where it was read, the way uvloop runs
//! everything on one thread. The risk is a handler that blocks: a network
//! thread inside such a call serves none of its other connections. The rules
//! that bound that risk are on [`Lanes`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::handling::outbox::Outbox;

/// When the call a thread is making started, for the watchdog to read, and
/// whether it computes or waits.
#[derive(Default)]
pub(crate) struct CallClock {
    /// Nanoseconds after the pool's epoch, plus one; 0 between calls.
    started: AtomicU64,
    /// The CPU clock of the thread making the call (Linux; 0: none).
    #[cfg(target_os = "linux")]
    cpu_clock: std::sync::atomic::AtomicI32,
    /// The watchdog's look at the call: which call (its `started`), when,
    /// and the thread's CPU time then.
    sample: Mutex<Option<(u64, u64, u64)>>,
}

impl CallClock {
    /// A call starts at `now` (nanoseconds after the epoch).
    pub fn start(&self, now: u64) {
        #[cfg(target_os = "linux")]
        {
            let mut clock: libc::clockid_t = 0;
            // SAFETY: the calling thread is alive, and `clock` is ours to
            // write. glibc computes the id from the thread id: no system call.
            if unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) } == 0 {
                self.cpu_clock.store(clock, Relaxed);
            }
        }
        self.started.store(now + 1, Relaxed);
    }

    /// Has the call running now run for `after` or longer at `now`, and is
    /// it waiting (asleep, or on I/O) rather than computing? A thread that
    /// computes uses the CPU it is given, however busy the machine; one that
    /// waits uses none. The first look at a call only takes a sample: the
    /// answer comes from the next. Where a thread's CPU time cannot be read,
    /// a long call counts as waiting.
    pub fn waiting(&self, now: u64, after: Duration) -> bool {
        if !self.stuck(now, after) {
            return false;
        }
        let started = self.started.load(Relaxed);
        let Some(cpu) = self.cpu_time() else {
            return true;
        };
        let mut sample = self.sample.lock().unwrap_or_else(PoisonError::into_inner);
        match *sample {
            Some((call, at, cpu_then)) if call == started => {
                let wall = now.saturating_sub(at);
                // Less than an eighth of a core since the last look: a busy
                // machine gives a computing thread more than that.
                wall > 0 && cpu.saturating_sub(cpu_then).saturating_mul(8) < wall
            }
            _ => {
                *sample = Some((started, now, cpu));
                false
            }
        }
    }

    /// The calling thread's CPU time, in nanoseconds.
    fn cpu_time(&self) -> Option<u64> {
        #[cfg(target_os = "linux")]
        {
            let clock = self.cpu_clock.load(Relaxed);
            let mut now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `now` is ours to write; a clock whose thread has gone
            // makes the call fail, and then there is no answer.
            if clock != 0 && unsafe { libc::clock_gettime(clock, &mut now) } == 0 {
                return Some(nanos(&now));
            }
        }
        None
    }

    /// The call has returned.
    pub fn stop(&self) {
        self.started.store(0, Relaxed);
    }

    /// Is a call running now?
    pub fn calling(&self) -> bool {
        self.started.load(Relaxed) != 0
    }

    /// Has the call running now run for `after` or longer at `now`?
    pub fn stuck(&self, now: u64, after: Duration) -> bool {
        let started = self.started.load(Relaxed);
        started != 0 && (now + 1).saturating_sub(started) >= after.as_nanos() as u64
    }
}

/// A clock reading in nanoseconds.
#[cfg(target_os = "linux")]
fn nanos(time: &libc::timespec) -> u64 {
    time.tv_sec as u64 * 1_000_000_000 + time.tv_nsec as u64
}

/// A moving average of what a handler call costs: calls that cost more
/// than a hand-off between threads are better off on a thread of their own,
/// where they run beside the network work instead of in turn with it.
/// Measured here: a call of about 5 µs is where the two meet.
#[derive(Default)]
pub(crate) struct CallCost {
    /// Nanoseconds, averaged over about the last 16 calls.
    average: AtomicU64,
}

impl CallCost {
    /// Closes the fast path above this.
    const HEAVY: u64 = 5_000;
    /// Opens it again below this, so that calls near the line do not flap.
    const LIGHT: u64 = 3_500;

    /// A call took `nanos`. Racy by design: a lost update only skews an
    /// average.
    pub fn record(&self, nanos: u64) {
        let average = self.average.load(Relaxed);
        let next = average - average / 16 + nanos / 16;
        self.average.store(next, Relaxed);
    }

    pub fn heavy(&self) -> bool {
        self.average.load(Relaxed) > Self::HEAVY
    }

    pub fn light(&self) -> bool {
        self.average.load(Relaxed) < Self::LIGHT
    }
}

/// One network thread's right to call the handler, with its call's clock.
#[derive(Default)]
pub(crate) struct Lane {
    taken: AtomicBool,
    clock: CallClock,
    /// Whose message the call is about, and where its replies go, for a
    /// shutdown to name and close.
    call: Mutex<Option<(SocketAddr, Arc<Outbox>)>>,
}

impl Lane {
    fn call(&self) -> MutexGuard<'_, Option<(SocketAddr, Arc<Outbox>)>> {
        self.call.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The lanes of one pool, and whether the fast path is open.
///
/// The risk is a handler that blocks (it sleeps, or waits on a database): a
/// network thread inside such a call serves none of its other connections.
/// These rules bound that risk:
///
/// * [`Lanes`]: at most a fixed number of network threads are inside a
///   handler call at once, one fewer than the runtime has, so at least one
///   always serves the network. A job that finds every lane taken goes to
///   the handler threads.
/// * The pool's watchdog reads every lane's [`CallClock`]. A call that
///   has run long enough to look stuck shows that this handler waits, so the
///   fast path closes ([`Lanes::close`]) and every job goes to the handler
///   threads, which are made for waiting. It reopens once no call has been
///   stuck for a while.
/// * A network thread inside a long call may have been the one watching the
///   sockets, with the others asleep waiting for it to finish; the watchdog
///   wakes one of them ([`Lanes::long_calls`]), so the network never waits
///   on a handler.
/// * Tasks the thread had scheduled for itself wait for the call all the
///   same: tokio keeps the task woken last in a slot no other thread may
///   take, and a task that spent its cooperative budget on a list only its
///   own thread reads. The accept loop is exempt from the budget
///   (`serve::engine::accept`), so a stuck handler never stops the accepting.
/// * A connection stuck in a call on its network thread cannot hear a
///   shutdown; after the grace period the server closes its socket from
///   outside ([`Lanes::cut`]) and stops waiting for it, as it does for a
///   handler thread.
pub(crate) struct Lanes {
    lanes: Box<[Lane]>,
    open: AtomicBool,
}

impl Lanes {
    /// `count` lanes (none means every job goes to the handler threads).
    pub fn new(count: usize) -> Self {
        Lanes {
            lanes: (0..count).map(|_| Lane::default()).collect(),
            open: AtomicBool::new(count > 0),
        }
    }

    /// A free lane, if the fast path is open and one is free. Sequentially
    /// consistent, so that a watchdog going to sleep either sees the lane
    /// taken or is seen asleep by the taker (see `Pool::submit`).
    pub fn claim(&self) -> Option<Claim<'_>> {
        if !self.open.load(Relaxed) {
            return None;
        }
        // Looked at before it is tried: a failed compare-and-swap still
        // takes the cache line from the thread holding the lane, which then
        // waits for it at every step of its call.
        self.lanes
            .iter()
            .find(|lane| {
                !lane.taken.load(Relaxed)
                    && lane
                        .taken
                        .compare_exchange(false, true, SeqCst, Relaxed)
                        .is_ok()
            })
            .map(|lane| Claim { lane })
    }

    /// Closes the fast path: a call has looked stuck.
    pub fn close(&self) {
        self.open.store(false, Relaxed);
    }

    /// Opens the fast path again (if there are lanes at all).
    pub fn reopen(&self) {
        self.open.store(!self.lanes.is_empty(), Relaxed);
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Relaxed)
    }

    /// Lanes whose thread is inside the handler now.
    pub fn busy(&self) -> usize {
        self.lanes.iter().filter(|l| l.taken.load(SeqCst)).count()
    }

    /// Is any lane's call stuck at `now`?
    pub fn stuck(&self, now: u64, after: Duration) -> bool {
        self.lanes.iter().any(|l| l.clock.stuck(now, after))
    }

    /// When the calls that have run `after` or longer at `now` started.
    pub fn long_calls(&self, now: u64, after: Duration) -> Vec<u64> {
        self.lanes
            .iter()
            .filter(|l| l.clock.stuck(now, after))
            .map(|l| l.clock.started.load(Relaxed))
            .collect()
    }

    /// Closes the connections whose messages the handler is answering on
    /// network threads now (their replies will not be sent); returns their
    /// clients.
    pub fn cut(&self) -> Vec<SocketAddr> {
        self.lanes
            .iter()
            .filter(|l| l.taken.load(SeqCst))
            .filter_map(|l| {
                let (peer, outbox) = l.call().clone()?;
                outbox.cut();
                Some(peer)
            })
            .collect()
    }
}

/// A lane held by the current thread; released when dropped.
pub(crate) struct Claim<'a> {
    lane: &'a Lane,
}

impl Claim<'_> {
    pub fn clock(&self) -> &CallClock {
        &self.lane.clock
    }

    /// The calls that follow answer `peer`, whose replies go to `outbox`.
    pub fn serve(&self, peer: SocketAddr, outbox: Option<&Arc<Outbox>>) {
        *self.lane.call() = outbox.map(|outbox| (peer, outbox.clone()));
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.lane.clock.stop();
        *self.lane.call() = None;
        self.lane.taken.store(false, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's CPU time, in nanoseconds.
    #[cfg(target_os = "linux")]
    fn cpu_now() -> u64 {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is ours to write.
        assert_eq!(
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) },
            0
        );
        nanos(&now)
    }

    #[test]
    fn a_call_is_stuck_from_its_time_on() {
        let clock = CallClock::default();
        let after = Duration::from_millis(10);
        assert!(!clock.calling() && !clock.stuck(u64::MAX / 2, after));
        clock.start(1_000);
        assert!(clock.calling());
        assert!(!clock.stuck(1_000 + 9_999_999, after));
        assert!(clock.stuck(1_000 + 10_000_000, after));
        clock.stop();
        assert!(!clock.calling());
    }

    /// Wall time here is what the test says it is; CPU time is this
    /// thread's own, so the answers do not depend on how busy the machine is.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_long_call_counts_as_waiting_only_while_its_thread_computes_little() {
        assert_eq!(
            nanos(&libc::timespec {
                tv_sec: 2,
                tv_nsec: 5
            }),
            2_000_000_005
        );
        let clock = CallClock::default();
        let after = Duration::from_millis(10);
        let start = 1_000;
        clock.start(start);
        assert!(!clock.waiting(start + 1, after), "not long yet");
        // The first look at a long call only takes a sample.
        let first_look = start + 20_000_000;
        assert!(!clock.waiting(first_look, after));
        // A second later this thread has used far less than an eighth of it.
        assert!(clock.waiting(first_look + 1_000_000_000, after));

        // A new call that computes: 5 ms of this thread's CPU in 10 ms of
        // wall time is half a core.
        clock.stop();
        let start = first_look + 2_000_000_000;
        clock.start(start);
        let first_look = start + 20_000_000;
        assert!(
            !clock.waiting(first_look, after),
            "a new call, a new sample"
        );
        let spun = cpu_now();
        while cpu_now() - spun < 5_000_000 {
            std::hint::black_box(0u64);
        }
        let used = cpu_now() - spun;
        assert!(!clock.waiting(first_look + 2 * used, after));
    }

    #[test]
    fn lanes_are_claimed_one_thread_each_and_freed_on_drop() {
        let lanes = Lanes::new(2);
        let a = lanes.claim().expect("a free lane"); // a test: two lanes were made
        let b = lanes.claim().expect("a second free lane"); // a test: two lanes were made
        assert!(lanes.claim().is_none(), "both lanes are taken");
        assert_eq!(lanes.busy(), 2);
        let peer: SocketAddr = "127.0.0.1:5000".parse().expect("an address"); // a literal address
        let outbox = Arc::new(Outbox::new(None, false, Arc::default(), 1 << 20));
        a.serve(peer, Some(&outbox));
        assert_eq!(lanes.cut(), vec![peer]);
        drop(a);
        assert_eq!(lanes.busy(), 1);
        assert_eq!(lanes.cut(), vec![], "a freed lane answers nobody");
        assert!(lanes.claim().is_some(), "a freed lane is free again");
        drop(b);
    }

    #[test]
    fn a_closed_fast_path_gives_no_lane_until_reopened() {
        let lanes = Lanes::new(1);
        lanes.close();
        assert!(lanes.claim().is_none());
        lanes.reopen();
        assert!(lanes.claim().is_some());
        let none = Lanes::new(0);
        assert!(!none.is_open());
        none.reopen();
        assert!(none.claim().is_none(), "no lanes, no fast path");
    }

    #[test]
    fn the_call_cost_follows_recent_calls() {
        let cost = CallCost::default();
        assert!(cost.light() && !cost.heavy());
        for _ in 0..100 {
            cost.record(20_000);
        }
        assert!(cost.heavy(), "20 µs calls are heavy");
        for _ in 0..100 {
            cost.record(4_000);
        }
        assert!(!cost.heavy() && !cost.light(), "4 µs is between the marks");
        for _ in 0..100 {
            cost.record(1_000);
        }
        assert!(cost.light());
    }

    #[test]
    fn a_call_is_stuck_once_it_has_run_long_enough() {
        let lanes = Lanes::new(1);
        let claim = lanes.claim().expect("a free lane"); // a test: one free lane was made
        let ms = 1_000_000;
        claim.clock().start(5 * ms);
        assert!(!lanes.stuck(10 * ms, Duration::from_millis(10)));
        assert!(lanes.stuck(15 * ms, Duration::from_millis(10)));
        claim.clock().stop();
        assert!(!lanes.stuck(100 * ms, Duration::from_millis(10)));
    }
}
