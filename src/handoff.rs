//! A handoff: the jobs of a server whose handler runs on an event loop in
//! another thread (Python's asyncio loop, for one), waking that loop once per
//! batch.
//!
//! The loop watches a descriptor ([`Handoff::fd`], one end of a socket pair)
//! the way it watches any socket. Network threads queue jobs and write one
//! byte to the other end, but only when the loop has not been told already:
//! however many jobs arrive before the loop looks, they cost one write and
//! one wake-up. The loop then takes everything queued at once
//! ([`Handoff::take`]). That is what `call_soon_threadsafe` does for asyncio,
//! minus the Python call on a network thread.
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
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change under the lock is a push, a take or a flag.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The descriptor the loop watches for reading: readable when there are
    /// jobs to take or the server has finished.
    pub fn fd(&self) -> RawFd {
        self.watched.as_raw_fd()
    }

    /// Queues `job` and wakes the loop, unless it has been woken already.
    pub(crate) fn submit(&self, job: Job) {
        let mut state = self.lock();
        state.queued_messages += job.len();
        state.jobs.push(job);
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

    /// Takes every job queued, in order, and clears the wake-up.
    pub fn take(&self) -> Vec<Job> {
        // Read the wake-up before taking the jobs: a job queued in between is
        // taken now, or wakes the loop again; never neither.
        let mut sink = [0; 64];
        while matches!((&self.watched).read(&mut sink), Ok(n) if n > 0) {}
        let mut state = self.lock();
        state.signalled = false;
        state.queued_messages = 0;
        state.taker = Some(thread::current().id());
        std::mem::take(&mut state.jobs)
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
        Ok(())
    }

    #[test]
    fn a_job_after_a_take_wakes_again() -> crate::Result<()> {
        let handoff = Handoff::new()?;
        let (first, _a) = job(Protocol::Raw, &[b"a"]);
        handoff.submit(first);
        assert_eq!(handoff.take().len(), 1);
        let (second, _b) = job(Protocol::Raw, &[b"b"]);
        handoff.submit(second);
        assert!(readable(&handoff));
        assert_eq!(handoff.take().len(), 1);
        Ok(())
    }

    #[test]
    fn finishing_wakes_the_loop() -> crate::Result<()> {
        let handoff = Handoff::new()?;
        handoff.finish();
        assert!(readable(&handoff));
        assert!(handoff.take().is_empty());
        assert!(handoff.is_finished());
        handoff.reopen();
        assert!(!handoff.is_finished());
        Ok(())
    }
}
