//! A handoff: the jobs of a server whose handler runs on an event loop in
//! another thread (Python's asyncio loop, for one), waking that loop once per
//! batch.
//!
//! The loop watches a descriptor ([`Handoff::fd`], one end of a socket pair)
//! the way it watches any socket. Network threads queue jobs and write one
//! byte to the other end, but only when the loop has not been told already:
//! however many jobs arrive before the loop looks, they cost one write and
//! one wake-up. The loop then takes everything queued at once
//! ([`Handoff::take`]), and takes again before it goes back to waiting, so
//! jobs that arrive while it works cost no wake-up at all. That is what
//! `call_soon_threadsafe` does for asyncio, minus the Python call on a
//! network thread and the wake-ups of a busy loop.
//!
//! Back-pressure comes from the jobs themselves: a connection has one job in
//! flight, so the queue holds at most one per connection, and a loop that
//! falls behind makes connections stop reading.
//!
//! When the server finishes, the handoff says so through the same wake-up
//! ([`Handoff::is_finished`]), so the loop learns it without a thread of its
//! own waiting.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::{self, ThreadId};

use crate::job::Job;
use crate::stats::Load;

/// Jobs waiting for an event loop, and the loop's wake-up.
#[derive(Debug)]
pub struct Handoff {
    state: Mutex<State>,
    /// The end the loop watches.
    watched: UnixStream,
    /// The end a byte is written to.
    signal: UnixStream,
    /// Jobs queued, readable without the lock.
    waiting: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    jobs: Vec<Job>,
    queued_messages: usize,
    /// A byte is on its way to the loop, or waiting for it.
    signalled: bool,
    /// The server has finished serving.
    finished: bool,
    /// The thread that took jobs last: the loop's.
    taker: Option<ThreadId>,
}

impl Handoff {
    /// A handoff with nothing queued.
    ///
    /// # Errors
    ///
    /// When the socket pair cannot be made (out of descriptors, say).
    pub fn new() -> io::Result<Self> {
        let (watched, signal) = UnixStream::pair()?;
        watched.set_nonblocking(true)?;
        signal.set_nonblocking(true)?;
        Ok(Handoff {
            state: Mutex::default(),
            watched,
            signal,
            waiting: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change under the lock is a push, a take or a flag.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The descriptor the loop watches for reading: readable when there are
    /// jobs to take or the server has finished. When it is, the loop calls
    /// [`Handoff::woken`], then [`Handoff::take`] until nothing comes back.
    pub fn fd(&self) -> RawFd {
        self.watched.as_raw_fd()
    }

    /// Queues `job` and wakes the loop, unless it has been woken already.
    pub(crate) fn submit(&self, job: Job) {
        let mut state = self.lock();
        state.queued_messages += job.len();
        state.jobs.push(job);
        self.waiting.store(state.jobs.len(), Relaxed);
        let wake = !std::mem::replace(&mut state.signalled, true);
        drop(state);
        if wake {
            self.wake();
        }
    }

    fn wake(&self) {
        // A full socket buffer means a wake-up is already waiting.
        let _ = (&self.signal).write(&[1]);
    }

    /// The loop was woken: reads the wake-up. Then [`Handoff::take`] until
    /// it comes back empty.
    pub fn woken(&self) {
        // At most one byte is in flight per wake-up (and one for the finish):
        // one read takes them all.
        let mut sink = [0; 64];
        let _ = (&self.watched).read(&mut sink);
    }

    /// Takes every job queued, in order. An empty take means the loop goes
    /// back to waiting, so it clears the wake-up flag: the next job wakes it
    /// again. Until then, jobs queued while the loop works cost no wake-up,
    /// however many there are, since the loop takes again before it sleeps.
    pub fn take(&self) -> Vec<Job> {
        let mut state = self.lock();
        // The first take names the loop's thread (if `claim` has not): asking
        // the thread every time would cost each take an atomic round trip.
        if state.taker.is_none() {
            state.taker = Some(thread::current().id());
        }
        if state.jobs.is_empty() {
            state.signalled = false;
            return Vec::new();
        }
        state.queued_messages = 0;
        self.waiting.store(0, Relaxed);
        std::mem::take(&mut state.jobs)
    }

    /// Are jobs waiting to be taken? (A glance, without the lock.)
    pub fn has_waiting(&self) -> bool {
        self.waiting.load(Relaxed) > 0
    }

    /// The loop stops taking with jobs still queued (to let other work on
    /// it run): makes sure it is woken again for them.
    pub fn later(&self) {
        let mut state = self.lock();
        if state.jobs.is_empty() {
            // Nothing to come back for: as after an empty take.
            state.signalled = false;
        } else {
            drop(state);
            self.wake();
        }
    }

    /// The server has finished: no job will come any more. Wakes the loop.
    pub(crate) fn finish(&self) {
        let mut state = self.lock();
        state.finished = true;
        state.signalled = true;
        drop(state);
        self.wake();
    }

    /// The server serves again after [`Handoff::finish`].
    pub(crate) fn reopen(&self) {
        self.lock().finished = false;
    }

    /// Has the server finished serving?
    pub fn is_finished(&self) -> bool {
        self.lock().finished
    }

    /// The calling thread is the loop's, the one that takes the jobs (as
    /// the first [`Handoff::take`] would tell).
    pub fn claim(&self) {
        self.lock().taker = Some(thread::current().id());
    }

    /// Is the caller the thread that takes the jobs?
    pub fn is_current_thread(&self) -> bool {
        self.lock().taker == Some(thread::current().id())
    }

    /// Messages waiting for the loop.
    pub(crate) fn load(&self) -> Load {
        Load {
            queued: self.lock().queued_messages as u64,
            ..Load::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::testing::{job, wait};
    use crate::protocol::Protocol;

    /// How many wake-up bytes wait for the loop.
    fn waiting(handoff: &Handoff) -> usize {
        let mut bytes = [std::mem::MaybeUninit::uninit(); 8];
        socket2::SockRef::from(&handoff.watched)
            .peek(&mut bytes)
            .unwrap_or(0)
    }

    fn readable(handoff: &Handoff) -> bool {
        waiting(handoff) > 0
    }

    #[test]
    fn a_burst_of_jobs_is_one_wake_up() -> crate::Result<()> {
        let handoff = Handoff::new()?;
        assert!(!readable(&handoff));
        let (first, a) = job(Protocol::Raw, &[b"a"]);
        let (second, b) = job(Protocol::Raw, &[b"b", b"c"]);
        handoff.submit(first);
        handoff.submit(second);
        assert_eq!(waiting(&handoff), 1);
        assert_eq!(handoff.load().queued, 3);
        handoff.woken();
        let jobs = handoff.take();
        assert!(!readable(&handoff));
        assert_eq!(handoff.load().queued, 0);
        assert!(handoff.is_current_thread());
        for mut job in jobs {
            while job.next().is_some() {
                job.answer(Ok(None));
            }
            job.settle(true);
        }
        assert_eq!(wait(a)?.out, b"> a");
        assert_eq!(wait(b)?.out, b"> b> c");
        // Jobs queued while the loop works need no wake-up: it takes again.
        let (third, _c) = job(Protocol::Raw, &[b"d"]);
        handoff.submit(third);
        assert!(!readable(&handoff));
        assert_eq!(handoff.take().len(), 1);
        // An empty take sends the loop back to waiting: the next job wakes it.
        assert!(handoff.take().is_empty());
        let (fourth, _d) = job(Protocol::Raw, &[b"e"]);
        handoff.submit(fourth);
        assert!(readable(&handoff));
        Ok(())
    }

    #[test]
    fn a_job_after_a_take_wakes_again() -> crate::Result<()> {
        let handoff = Handoff::new()?;
        let (first, _a) = job(Protocol::Raw, &[b"a"]);
        handoff.submit(first);
        handoff.woken();
        assert_eq!(handoff.take().len(), 1);
        assert!(handoff.take().is_empty());
        let (second, _b) = job(Protocol::Raw, &[b"b"]);
        handoff.submit(second);
        assert!(readable(&handoff));
        handoff.woken();
        assert!(!readable(&handoff));
        let (third, _c) = job(Protocol::Raw, &[b"c"]);
        handoff.submit(third);
        // The loop stops short with a job queued: it must come back for it.
        handoff.later();
        assert!(readable(&handoff));
        assert_eq!(handoff.take().len(), 2);
        // Stopping short with none queued: the next job wakes the loop.
        handoff.woken();
        handoff.later();
        let (fourth, _d) = job(Protocol::Raw, &[b"d"]);
        handoff.submit(fourth);
        assert!(readable(&handoff));
        Ok(())
    }

    #[test]
    fn finishing_wakes_the_loop() -> crate::Result<()> {
        let handoff = Handoff::new()?;
        handoff.finish();
        assert!(readable(&handoff));
        handoff.woken();
        assert!(handoff.take().is_empty());
        assert!(handoff.is_finished());
        handoff.reopen();
        assert!(!handoff.is_finished());
        Ok(())
    }
}
