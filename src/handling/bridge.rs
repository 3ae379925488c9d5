//! The loop bridge: the jobs of a server whose handler runs on an event loop
//! in another thread (Python's asyncio loop, for one), waking that loop once
//! per batch.
//!
//! The loop watches one descriptor ([`LoopBridge::fd`]), its reactor's, which
//! also serves the server's connections on the loop's thread (see
//! `reactor`). Back-pressure comes from the jobs themselves: a connection has
//! one job in flight, so the queue holds at most one per connection.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, ThreadId};

use crate::handling::job::Job;
use crate::handling::reactor::Reactor;
use crate::socket::RawDescriptor;
use crate::stats::Load;

/// Replies of one round written by a network thread rather than the loop
/// from this many jobs on; fewer are not worth waking a thread for.
const WRITE_ELSEWHERE_AT: usize = 32;

/// Jobs waiting for an event loop, and the loop's wake-up.
///
/// the loop's thread (see `reactor`). Jobs are queued there, by connections
/// the loop is running, so they need no wake-up at all: the loop takes
/// everything queued ([`LoopBridge::take`]) before it goes back to waiting.
/// A job queued from any other thread rings the reactor's bell, but only when
/// the loop has not been told already: however many jobs arrive before the
/// loop looks, they cost one wake-up.
///
/// Back-pressure comes from the jobs themselves: a connection has one job in
/// flight, so the queue holds at most one per connection, and a loop that
/// falls behind makes connections stop reading.
///
/// The replies go out from the loop's thread, written straight into their
/// sockets as each round of jobs is answered ([`LoopBridge::deliver`]): a few
/// cost less written there than a wake-up of another thread. A crowd is
/// handed to a network thread instead, in one task. Writing to a local
/// socket does the receiving side's work too (the kernel delivers the bytes
/// and wakes the peer there and then): it is the most expensive step of a
/// request, and with many clients at once it runs beside the loop rather
/// than taking its time.
///
/// When the server finishes, the bridge says so through the same wake-up
/// ([`LoopBridge::is_finished`]), so the loop learns it without a thread of its
/// own waiting.
#[derive(Debug)]
pub struct LoopBridge {
    state: Mutex<State>,
    /// The loop's network, whose descriptor it watches and whose bell wakes it.
    reactor: Arc<Reactor>,
    /// The loop holds a session per connection (see `Handler::is_session`).
    session: bool,
}

#[derive(Debug, Default)]
struct State {
    jobs: Vec<Job>,
    queued_messages: usize,
    /// The loop has been woken, or is at work: it takes again before it
    /// waits.
    signalled: bool,
    /// The server has finished serving.
    finished: bool,
    /// The thread that took jobs last: the loop's.
    taker: Option<ThreadId>,
}

impl LoopBridge {
    /// A bridge with nothing queued, for a loop that holds a session per
    /// connection if `session`.
    ///
    /// # Errors
    ///
    /// When the reactor cannot be made (out of descriptors, say).
    pub fn new(session: bool) -> io::Result<Self> {
        Ok(LoopBridge {
            state: Mutex::default(),
            reactor: Reactor::new()?,
            session,
        })
    }

    /// Does the loop hold a session per connection?
    pub fn is_session(&self) -> bool {
        self.session
    }

    /// The loop's reactor, which serves the server's connections.
    pub fn reactor(&self) -> &Arc<Reactor> {
        &self.reactor
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change under the lock is a push, a take or a flag.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The descriptor the loop watches for reading: readable when there are
    /// jobs to take, sockets to serve, or the server has finished. When it
    /// is, the loop calls [`LoopBridge::woken`], then turns the reactor and
    /// [`LoopBridge::take`]s until neither has anything. None on Windows,
    /// where a thread watches instead ([`Reactor::watch_on_thread`]).
    pub fn fd(&self) -> Option<RawDescriptor> {
        self.reactor.fd()
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
        self.reactor.ring();
    }

    /// The loop was woken, and is at work: jobs queued from now on need no
    /// wake-up until a [`LoopBridge::take`] comes back empty.
    pub fn woken(&self) {
        self.lock().signalled = true;
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
        std::mem::take(&mut state.jobs)
    }

    /// Settles the jobs the loop answered in one round, writing their
    /// replies: on the loop's thread for a few, on a network thread for a
    /// crowd (see the module's documentation).
    pub fn deliver(&self, jobs: Vec<Job>) {
        let runtime = self.reactor.runtime();
        match runtime {
            Some(runtime) if jobs.len() >= WRITE_ELSEWHERE_AT => {
                // A runtime that has shut down drops the task, and each job,
                // dropped, is settled still (its connection writes what it
                // answered): no connection waits for ever.
                drop(runtime.spawn(async move {
                    for job in jobs {
                        job.settle(true);
                    }
                }));
            }
            _ => jobs.into_iter().for_each(|job| job.settle(true)),
        }
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

    /// The server has finished: no job will come any more, and no
    /// connection is left to serve. Wakes the loop.
    pub(crate) fn finish(&self) {
        // Finished before closed: a watching thread that sees the reactor
        // closed asks the loop for one last call, which must find the
        // server finished.
        let mut state = self.lock();
        state.finished = true;
        state.signalled = true;
        drop(state);
        self.reactor.close();
        self.wake();
    }

    /// The server serves again after [`LoopBridge::finish`].
    pub(crate) fn reopen(&self) {
        self.reactor.reopen();
        self.lock().finished = false;
    }

    /// Has the server finished serving?
    pub fn is_finished(&self) -> bool {
        self.lock().finished
    }

    /// The calling thread is the loop's, the one that takes the jobs (as
    /// the first [`LoopBridge::take`] would tell).
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

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::handling::job::testing::{Pending, job, wait};
    use crate::protocol::Protocol;

    /// Would the loop wake up? (Is the descriptor it watches readable?)
    fn readable(bridge: &LoopBridge) -> bool {
        crate::handling::reactor::testing::readable(bridge.fd())
    }

    /// The loop, woken, takes what the reactor has (here, only the bell).
    fn wake_up(bridge: &LoopBridge) {
        bridge.woken();
        bridge.reactor().turn();
    }

    #[test]
    fn a_burst_of_jobs_is_one_wake_up() -> crate::Result<()> {
        let bridge = LoopBridge::new(false)?;
        assert!(!readable(&bridge));
        let (first, a) = job(Protocol::Raw, &[b"a"]);
        let (second, b) = job(Protocol::Raw, &[b"b", b"c"]);
        bridge.submit(first);
        bridge.submit(second);
        assert!(readable(&bridge));
        assert_eq!(bridge.load().queued, 3);
        wake_up(&bridge);
        let jobs = bridge.take();
        assert!(!readable(&bridge));
        assert_eq!(bridge.load().queued, 0);
        assert!(bridge.is_current_thread());
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
        bridge.submit(third);
        assert!(!readable(&bridge));
        assert_eq!(bridge.take().len(), 1);
        // An empty take sends the loop back to waiting: the next job wakes it.
        assert!(bridge.take().is_empty());
        let (fourth, _d) = job(Protocol::Raw, &[b"e"]);
        bridge.submit(fourth);
        assert!(readable(&bridge));
        Ok(())
    }

    #[test]
    fn a_job_after_a_take_wakes_again() -> crate::Result<()> {
        let bridge = LoopBridge::new(false)?;
        let (first, _a) = job(Protocol::Raw, &[b"a"]);
        bridge.submit(first);
        wake_up(&bridge);
        assert_eq!(bridge.take().len(), 1);
        assert!(bridge.take().is_empty());
        let (second, _b) = job(Protocol::Raw, &[b"b"]);
        bridge.submit(second);
        assert!(readable(&bridge));
        wake_up(&bridge);
        assert!(!readable(&bridge));
        let (third, _c) = job(Protocol::Raw, &[b"c"]);
        bridge.submit(third);
        // The loop stops short with a job queued: it must come back for it.
        bridge.later();
        assert!(readable(&bridge));
        assert_eq!(bridge.take().len(), 2);
        // Stopping short with none queued: the next job wakes the loop.
        wake_up(&bridge);
        bridge.later();
        let (fourth, _d) = job(Protocol::Raw, &[b"d"]);
        bridge.submit(fourth);
        assert!(readable(&bridge));
        Ok(())
    }

    #[test]
    fn a_few_replies_are_written_at_once_a_crowd_by_a_network_thread() -> crate::Result<()> {
        let network = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let bridge = LoopBridge::new(false)?;
        // The reactor learns the server's runtime from its first connection.
        bridge.reactor().spawn(network.handle().clone(), async {});
        // `n` jobs answered by the loop, and what each connection should get.
        let answered = |n: usize| -> (Vec<Job>, Vec<(Pending, Vec<u8>)>) {
            (0..n)
                .map(|i| {
                    let message = format!("m{i}");
                    let (mut job, pending) = job(Protocol::Raw, &[message.as_bytes()]);
                    while job.next().is_some() {
                        job.answer(Ok(None));
                    }
                    (job, (pending, format!("> {message}").into_bytes()))
                })
                .unzip()
        };
        let (few, owed) = answered(WRITE_ELSEWHERE_AT - 1);
        bridge.deliver(few);
        for (pending, reply) in owed {
            // Settled before `deliver` returned: nothing to wait for.
            assert_eq!(pending.take().unwritten, reply);
        }
        let (crowd, owed) = answered(WRITE_ELSEWHERE_AT);
        bridge.deliver(crowd);
        for (pending, reply) in owed {
            assert_eq!(wait(pending)?.out, reply);
        }
        // A runtime gone drops the task, and with it the jobs: each is still
        // settled, its replies left for its connection to write, so none
        // waits for ever and nothing answered is lost.
        network.shutdown_timeout(std::time::Duration::from_secs(5));
        let (crowd, owed) = answered(WRITE_ELSEWHERE_AT);
        bridge.deliver(crowd);
        for (pending, reply) in owed {
            assert_eq!(wait(pending)?.out, reply);
        }
        Ok(())
    }

    #[test]
    fn a_loop_woken_for_its_sockets_needs_no_bell_for_jobs() -> crate::Result<()> {
        let bridge = LoopBridge::new(false)?;
        assert!(!bridge.is_session());
        // Woken by a socket, say: it takes jobs before it waits again.
        bridge.woken();
        let (first, _a) = job(Protocol::Raw, &[b"a"]);
        bridge.submit(first);
        assert!(!readable(&bridge));
        assert_eq!(bridge.take().len(), 1);
        Ok(())
    }

    #[test]
    fn the_loop_thread_is_known_before_its_first_take() -> crate::Result<()> {
        let bridge = Arc::new(LoopBridge::new(true)?);
        assert!(bridge.is_session());
        assert!(!bridge.is_current_thread());
        bridge.claim();
        assert!(bridge.is_current_thread());
        let elsewhere = bridge.clone();
        let other = thread::spawn(move || elsewhere.is_current_thread());
        assert!(!other.join().expect("the thread only asks")); // a test: it reads a lock, nothing that panics
        Ok(())
    }

    #[test]
    fn finishing_wakes_the_loop() -> crate::Result<()> {
        let bridge = LoopBridge::new(false)?;
        bridge.finish();
        assert!(readable(&bridge));
        wake_up(&bridge);
        assert!(bridge.take().is_empty());
        assert!(bridge.is_finished());
        bridge.reopen();
        assert!(!bridge.is_finished());
        Ok(())
    }
}
