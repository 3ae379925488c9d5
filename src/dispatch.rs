//! The handler dispatcher: a pool of threads that run the reply [`Handler`]
//! for every connection, so the network threads never wait on handler code.
//!
//! A connection hands over a [`Job`], every whole message it has read, and
//! the pool delivers the encoded replies to the connection's outbox (which
//! writes them straight to the socket when it can). A connection has one job
//! in flight at a time and hands over no more until it is settled, which
//! gives two properties for free: replies keep their order per connection,
//! and the queue is bounded (at most one job per connection, each no larger
//! than one read). When the handler falls behind, connections stop reading
//! and TCP pushes back on their clients; memory does not grow.
//!
//! Threads are few and long-lived, in the manner of granian's blocking pool.
//! A thread enters the handler's context once for its whole life (for Python:
//! attached to the interpreter) and releases it only to wait for work, so a
//! burst of queued jobs costs one attach, not one per message. The pool starts
//! empty and grows in two ways:
//!
//! * the first job starts the first thread;
//! * a *watchdog* looks every [`WATCH_EVERY`] while jobs are coming in, and
//!   adds a thread when jobs wait, no thread is idle, and every thread has
//!   been inside one handler call for longer than [`STUCK_AFTER`] (a handler
//!   that sleeps or waits on I/O). A handler that is merely busy computing gets no
//!   extra threads: with Python's interpreter lock they would only fight over
//!   it.
//!
//! Threads retire after [`RETIRE_AFTER`] without work. The pool never grows
//! past `max_threads`; past that, jobs wait their turn.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use log::warn;

use crate::error::Error;
use crate::handler::{Detach, Handler};
use crate::job::Job;
use crate::stats::Load;

/// A call that has run this long counts as stuck (waiting, not computing),
/// and a job that waits behind only stuck calls gets a new thread. Well
/// above a scheduler time slice, so that a thread merely preempted on a busy
/// machine does not look stuck and get a rival for the interpreter lock.
const STUCK_AFTER: Duration = Duration::from_millis(10);
/// A job whose handler calls took this long writes its own replies even
/// under a backlog: a write (a few microseconds) is then a small share of
/// the thread's time, and handing it to a network thread would cost two
/// context switches of machine time per reply.
const WRITE_AFTER: Duration = Duration::from_micros(50);
/// How often the watchdog looks while jobs come in.
const WATCH_EVERY: Duration = Duration::from_millis(5);
/// An idle thread retires after this long without work.
const RETIRE_AFTER: Duration = Duration::from_secs(10);
/// The watchdog parks after this many quiet looks in a row (about a second).
const QUIET_LOOKS: u32 = 200;
/// How long closing waits for idle threads to leave.
const LEAVE_GRACE: Duration = Duration::from_secs(1);

thread_local! {
    /// Which dispatcher (its address) the current thread works for, if any.
    static SERVING: Cell<usize> = const { Cell::new(0) };
}

/// The pool; cheap to share through an `Arc`.
pub(crate) struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    handler: Arc<dyn Handler>,
    max_threads: usize,
    pool: Mutex<Pool>,
    /// Idle threads wait here for jobs.
    work: Condvar,
    /// The watchdog parks here when nothing comes in.
    watch: Condvar,
    /// Closing waits here for idle threads to leave.
    left: Condvar,
    /// Call start times are nanoseconds since this instant.
    epoch: Instant,
    /// Jobs waiting, readable without the lock.
    waiting: AtomicUsize,
}

#[derive(Default)]
struct Pool {
    jobs: VecDeque<Job>,
    queued_messages: usize,
    threads: Vec<Arc<Worker>>,
    /// Threads waiting for work.
    idle: usize,
    /// Wake-ups sent to idle threads that they have not yet taken: a
    /// condition variable costs a system call per notify, so each idle
    /// thread is notified once, not once per job.
    waking: usize,
    /// Jobs submitted so far; the watchdog sees traffic by its change.
    submitted: u64,
    watchdog: Watchdog,
    closed: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Watchdog {
    #[default]
    Absent,
    Looking,
    Parked,
}

/// One handler thread, as the watchdog sees it.
#[derive(Default)]
struct Worker {
    /// When the current handler call started (nanoseconds after the epoch,
    /// plus one), or 0 between calls.
    call_started: AtomicU64,
}

impl Dispatcher {
    /// A pool of at most `max_threads` threads running `handler`.
    pub fn new(handler: Arc<dyn Handler>, max_threads: usize) -> Self {
        Dispatcher {
            inner: Arc::new(Inner {
                handler,
                max_threads: max_threads.max(1),
                pool: Mutex::default(),
                work: Condvar::new(),
                watch: Condvar::new(),
                left: Condvar::new(),
                epoch: Instant::now(),
                waiting: AtomicUsize::new(0),
            }),
        }
    }

    /// Queues `job`.
    pub fn submit(&self, job: Job) {
        let inner = &self.inner;
        let mut pool = inner.lock();
        pool.queued_messages += job.len();
        pool.jobs.push_back(job);
        pool.submitted += 1;
        inner.waiting.store(pool.jobs.len(), Relaxed);
        if pool.idle > pool.waking {
            pool.waking += 1;
            inner.work.notify_one();
        } else if pool.threads.is_empty() {
            Inner::spawn(inner, &mut pool);
        }
        if pool.watchdog == Watchdog::Parked {
            inner.watch.notify_one();
        }
    }

    /// Lets threads start again after [`Dispatcher::close`].
    pub fn open(&self) {
        self.inner.lock().closed = false;
    }

    /// Tells every thread to leave once it has no work; returns at once.
    pub fn close(&self) {
        let inner = &self.inner;
        let mut pool = inner.lock();
        pool.closed = true;
        inner.work.notify_all();
        inner.watch.notify_all();
    }

    /// Waits briefly for idle threads to leave after [`Dispatcher::close`]
    /// (they need the handler's context, an interpreter say, to do so);
    /// threads inside a handler call are not waited for.
    pub fn join_idle(&self) {
        let inner = &self.inner;
        let mut pool = inner.lock();
        let deadline = Instant::now() + LEAVE_GRACE;
        let in_call = |pool: &Pool| {
            pool.threads
                .iter()
                .all(|w| w.call_started.load(Relaxed) != 0)
        };
        while !in_call(&pool) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            pool = inner
                .left
                .wait_timeout(pool, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Is the calling thread one of this pool's handler threads?
    pub fn is_current_thread(&self) -> bool {
        SERVING.get() == Arc::as_ptr(&self.inner) as usize
    }

    /// The pool now.
    pub fn load(&self) -> Load {
        let pool = self.inner.lock();
        Load {
            queued: pool.queued_messages as u64,
            threads: pool.threads.len() as u64,
            busy: (pool.threads.len() - pool.idle) as u64,
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        // Never wait in drop: threads leave on their own once told.
        self.close();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Pool> {
        // No code panics while holding the lock; should one ever, the queue
        // is still consistent (every change to it is a single push or pop).
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a handler thread (and the watchdog with the first one).
    fn spawn(self: &Arc<Self>, pool: &mut Pool) {
        if pool.closed {
            return;
        }
        let worker = Arc::new(Worker::default());
        let inner = self.clone();
        let started = thread::Builder::new()
            .name("sockdemo-handler".into())
            .spawn({
                let worker = worker.clone();
                move || inner.work(&worker)
            });
        match started {
            Ok(_) => pool.threads.push(worker),
            Err(e) => {
                warn!("Cannot start a handler thread: {e}");
                if pool.threads.is_empty() {
                    // Nobody would ever answer: say so to everyone waiting.
                    pool.queued_messages = 0;
                    self.waiting.store(0, Relaxed);
                    for mut job in pool.jobs.drain(..) {
                        job.fail(Error::Handler(format!(
                            "no handler thread could start: {e}"
                        )));
                        job.settle(false);
                    }
                }
                return;
            }
        }
        if pool.watchdog == Watchdog::Absent {
            let inner = self.clone();
            let started = thread::Builder::new()
                .name("sockdemo-watchdog".into())
                .spawn(move || inner.watchdog());
            match started {
                Ok(_) => pool.watchdog = Watchdog::Looking,
                Err(e) => warn!("Cannot start the handler watchdog: {e}"),
            }
        }
    }

    /// A handler thread's life: take jobs while there are any, wait
    /// (released) when there are none, leave when idle too long or closed.
    fn work(self: &Arc<Self>, worker: &Arc<Worker>) {
        SERVING.set(Arc::as_ptr(self) as usize);
        // However the thread ends, it leaves the pool.
        let _leave = Leave {
            inner: self,
            worker,
        };
        let handler = self.handler.clone();
        handler.enter(&mut |detach| {
            loop {
                let mut job = match self.take() {
                    Some(job) => job,
                    None => match self.wait(detach) {
                        Some(job) => job,
                        None => return,
                    },
                };
                let started = Instant::now();
                self.answer(&mut job, worker);
                // With nothing else waiting, latency is what counts: write the
                // replies from here and spare the connection a wake-up. With a
                // backlog, this thread's time is what counts: the network
                // threads write, several at once, while this one goes on;
                // unless the handler is slow enough that a write is a small
                // share of its time, when waking a network thread for it would
                // cost the machine more than it spares this thread.
                let write = self.waiting.load(Relaxed) == 0 || started.elapsed() >= WRITE_AFTER;
                job.settle(write);
            }
        });
    }

    /// The next job, without waiting.
    fn take(&self) -> Option<Job> {
        let mut pool = self.lock();
        let job = pool.jobs.pop_front()?;
        pool.queued_messages -= job.len();
        self.waiting.store(pool.jobs.len(), Relaxed);
        Some(job)
    }

    /// Waits, released, for the next job; `None` means leave.
    fn wait(&self, detach: &dyn Detach) -> Option<Job> {
        let mut job = None;
        detach.detached(&mut || {
            let mut pool = self.lock();
            loop {
                if let Some(next) = pool.jobs.pop_front() {
                    pool.queued_messages -= next.len();
                    self.waiting.store(pool.jobs.len(), Relaxed);
                    job = Some(next);
                    return;
                }
                if pool.closed {
                    return;
                }
                pool.idle += 1;
                let (woken, wait) = self
                    .work
                    .wait_timeout(pool, RETIRE_AFTER)
                    .unwrap_or_else(PoisonError::into_inner);
                pool = woken;
                pool.idle -= 1;
                pool.waking = pool.waking.saturating_sub(1);
                if wait.timed_out() && pool.jobs.is_empty() {
                    return;
                }
            }
        });
        job
    }

    /// Runs the handler on every message of `job`, stopping at the first
    /// failure.
    fn answer(&self, job: &mut Job, worker: &Worker) {
        while let Some(message) = job.next() {
            let started = self.epoch.elapsed().as_nanos() as u64 + 1;
            worker.call_started.store(started, Relaxed);
            let reply = self.handler.reply(job.peer(), message);
            worker.call_started.store(0, Relaxed);
            let go_on = match reply {
                Ok(reply) => job.answer(Ok(reply.as_deref())),
                Err(e) => job.answer(Err(e)),
            };
            if !go_on {
                break;
            }
        }
    }

    /// Adds a thread whenever jobs wait behind threads that are all stuck.
    fn watchdog(self: Arc<Self>) {
        let mut pool = self.lock();
        let mut seen = pool.submitted;
        let mut quiet = 0;
        loop {
            if pool.closed {
                pool.watchdog = Watchdog::Absent;
                return;
            }
            if quiet >= QUIET_LOOKS && pool.jobs.is_empty() {
                pool.watchdog = Watchdog::Parked;
                pool = self
                    .watch
                    .wait(pool)
                    .unwrap_or_else(PoisonError::into_inner);
                pool.watchdog = Watchdog::Looking;
                quiet = 0;
                continue;
            }
            pool = self
                .watch
                .wait_timeout(pool, WATCH_EVERY)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            quiet = if pool.submitted == seen { quiet + 1 } else { 0 };
            seen = pool.submitted;
            if !pool.jobs.is_empty()
                && pool.idle == 0
                && pool.threads.len() < self.max_threads
                && self.all_stuck(&pool)
            {
                self.spawn(&mut pool);
            }
        }
    }

    fn all_stuck(&self, pool: &Pool) -> bool {
        let now = self.epoch.elapsed().as_nanos() as u64 + 1;
        let stuck = STUCK_AFTER.as_nanos() as u64;
        pool.threads.iter().all(|w| {
            let started = w.call_started.load(Relaxed);
            started != 0 && now.saturating_sub(started) >= stuck
        })
    }
}

/// Removes a handler thread from the pool when it ends, however it ends.
struct Leave<'a> {
    inner: &'a Inner,
    worker: &'a Arc<Worker>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut pool = self.inner.lock();
        pool.threads.retain(|w| !Arc::ptr_eq(w, self.worker));
        self.inner.left.notify_all();
        SERVING.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::testing::{self, Pending, wait};
    use crate::protocol::Protocol;
    use std::sync::atomic::AtomicUsize;

    /// Upper-cases, or sleeps on "slow", or fails on "fail".
    struct Upper {
        calls: AtomicUsize,
    }

    impl Handler for Upper {
        fn reply(
            &self,
            _peer: std::net::SocketAddr,
            message: &[u8],
        ) -> Result<Option<Vec<u8>>, String> {
            self.calls.fetch_add(1, Relaxed);
            match message {
                b"slow" => {
                    thread::sleep(Duration::from_millis(300));
                    Ok(Some(b"SLOW".to_vec()))
                }
                b"fail" => Err("refused".into()),
                b"echo" => Ok(None),
                b"empty" => Ok(Some(Vec::new())),
                other => Ok(Some(other.to_ascii_uppercase())),
            }
        }
    }

    /// A pool whose jobs are encoded for `protocol`.
    struct TestPool {
        dispatcher: Dispatcher,
        protocol: Protocol,
    }

    impl std::ops::Deref for TestPool {
        type Target = Dispatcher;
        fn deref(&self) -> &Dispatcher {
            &self.dispatcher
        }
    }

    fn pool(protocol: Protocol, max_threads: usize) -> crate::Result<TestPool> {
        let handler = Arc::new(Upper {
            calls: AtomicUsize::new(0),
        });
        Ok(TestPool {
            dispatcher: Dispatcher::new(handler, max_threads),
            protocol,
        })
    }

    fn job(d: &TestPool, messages: &[&[u8]]) -> Pending {
        let (job, pending) = testing::job(d.protocol, messages);
        d.submit(job);
        pending
    }

    #[test]
    fn answers_in_order_with_echo_for_none() -> crate::Result<()> {
        let d = pool(Protocol::Raw, 4)?;
        let answer = wait(job(&d, &[b"ab", b"echo", b"cd"]))?;
        assert_eq!(answer.out, b"AB> echoCD");
        assert_eq!(answer.answered, 3);
        assert!(answer.error.is_none());
        Ok(())
    }

    #[test]
    fn stops_at_a_failure_keeping_earlier_replies() -> crate::Result<()> {
        let d = pool(Protocol::Raw, 1)?;
        let answer = wait(job(&d, &[b"ab", b"fail", b"cd"]))?;
        assert_eq!(answer.out, b"AB");
        assert_eq!(answer.answered, 1);
        assert!(matches!(answer.error, Some(Error::Handler(_))));
        Ok(())
    }

    #[test]
    fn refuses_empty_raw_and_oversized_framed_replies() -> crate::Result<()> {
        let raw = pool(Protocol::Raw, 1)?;
        let answer = wait(job(&raw, &[b"empty"]))?;
        assert!(matches!(answer.error, Some(Error::Handler(_))));
        let framed = pool(Protocol::Framed, 1)?;
        // The limit is 8 bytes: "abcdefghi" comes back as 9.
        let answer = wait(job(&framed, &[b"abcdefgh", b"abcdefghi"]))?;
        assert_eq!(answer.out, b"\0\0\0\x08ABCDEFGH");
        assert!(matches!(
            answer.error,
            Some(Error::MessageTooLarge {
                size: 9,
                limit: 8,
                ..
            })
        ));
        Ok(())
    }

    #[test]
    fn a_stuck_call_gets_a_second_thread() -> crate::Result<()> {
        let d = pool(Protocol::Raw, 2)?;
        let slow = job(&d, &[b"slow"]);
        let started = Instant::now();
        // Answered while the first thread sleeps, by a thread added for it.
        let quick = wait(job(&d, &[b"quick"]))?;
        assert_eq!(quick.out, b"QUICK");
        assert!(started.elapsed() < Duration::from_millis(250));
        assert_eq!(wait(slow)?.out, b"SLOW");
        assert_eq!(d.load().threads, 2);
        Ok(())
    }

    #[test]
    fn one_thread_serialises_calls() -> crate::Result<()> {
        let d = pool(Protocol::Raw, 1)?;
        let slow = job(&d, &[b"slow"]);
        let quick = wait(job(&d, &[b"quick"]))?;
        assert_eq!(quick.out, b"QUICK");
        // The only thread answered the slow job before it took the quick one.
        assert_eq!(slow.take().unwritten, b"SLOW");
        assert_eq!(d.load().threads, 1);
        Ok(())
    }

    /// Spins for about a millisecond: busy, never stuck.
    struct Busy;

    impl Handler for Busy {
        fn reply(
            &self,
            _peer: std::net::SocketAddr,
            message: &[u8],
        ) -> Result<Option<Vec<u8>>, String> {
            let until = Instant::now() + Duration::from_millis(1);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            Ok(Some(message.to_vec()))
        }
    }

    #[test]
    fn a_busy_handler_does_not_grow_the_pool() -> crate::Result<()> {
        let d = TestPool {
            dispatcher: Dispatcher::new(Arc::new(Busy), 4),
            protocol: Protocol::Raw,
        };
        // 60 jobs of 1 ms queue up for a dozen of the watchdog's looks.
        let jobs: Vec<Pending> = (0..60).map(|_| job(&d, &[b"x"])).collect();
        for pending in jobs {
            wait(pending)?;
        }
        let load = d.load();
        assert_eq!(load.queued, 0);
        // One thread; two if the machine preempted a call for longer than
        // STUCK_AFTER (a busy CI box does), never the four a pool growing
        // on every look would reach.
        assert!(load.threads <= 2, "{load:?}");
        Ok(())
    }

    #[test]
    fn the_load_counts_queue_and_busy_threads() -> crate::Result<()> {
        let d = pool(Protocol::Raw, 2)?;
        let slow = job(&d, &[b"slow"]);
        let queued = job(&d, &[b"a", b"b"]);
        // The slow call holds the only thread until the watchdog adds one.
        let load = d.load();
        assert!(load.busy >= 1 && load.threads >= 1, "{load:?}");
        wait(slow)?;
        wait(queued)?;
        let d_load = d.load();
        assert_eq!(d_load.queued, 0);
        wait_until_idle(&d);
        assert_eq!(d.load().busy, 0);
        // A job that finds the thread waiting is taken off the queue too.
        wait(job(&d, &[b"c"]))?;
        assert_eq!(d.load().queued, 0);
        Ok(())
    }

    fn wait_until_idle(d: &Dispatcher) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while d.load().busy > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn close_lets_idle_threads_leave() -> crate::Result<()> {
        let d = pool(Protocol::Raw, 2)?;
        wait(job(&d, &[b"x"]))?;
        d.close();
        d.join_idle();
        assert_eq!(d.load().threads, 0);
        d.open();
        assert_eq!(wait(job(&d, &[b"y"]))?.out, b"Y");
        Ok(())
    }
}
