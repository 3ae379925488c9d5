//! The pool: threads that run the reply [`Handler`] for every connection, so
//! the network threads never wait on handler code.
//!
//! A connection hands over a [`Job`], every whole message it has read, and
//! the pool delivers the encoded replies to the connection's outbox. A
//! connection has one job in flight at a time, which gives two properties for
//! free: replies keep their order per connection, and the queue is bounded.
//! When the handler falls behind, connections stop reading and TCP pushes
//! back on their clients; memory does not grow. Quick handlers are answered
//! on the network thread instead (see `lanes`).

use std::cell::Cell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, warn};

use crate::error::Error;
use crate::handling::conn::Conn;
use crate::handling::handler::{Detach, Handler};
use crate::handling::job::{Job, Replies, Stage};
use crate::handling::lanes::{CallClock, CallCost, Claim, Lanes};
use crate::stats::Load;

/// A call that has run this long counts as stuck (waiting, not computing):
/// the fast path closes, and a job that waits behind only stuck calls gets a
/// new thread. Well
/// above a scheduler time slice, so that a thread merely preempted on a busy
/// machine does not look stuck and get a rival for the interpreter lock.
const STUCK_AFTER: Duration = Duration::from_millis(10);
/// A job whose handler calls took this long writes its own replies even
/// under a backlog: a write (a few microseconds) is then a small share of
/// the thread's time, and handing it to a network thread would cost two
/// context switches of machine time per reply.
const WRITE_AFTER: Duration = Duration::from_micros(50);
/// The fast path opens again once no call has been stuck for this long.
const INLINE_AGAIN_AFTER: Duration = Duration::from_secs(10);
/// A network thread answers at most this many jobs in one go, its own and
/// those queued behind it, before it goes back to the network.
const DRAIN_AT_MOST: usize = 64;
/// How often the watchdog looks while jobs come in.
const WATCH_EVERY: Duration = Duration::from_millis(5);
/// An idle thread retires after this long without work.
const RETIRE_AFTER: Duration = Duration::from_secs(10);
/// The watchdog parks after this many quiet looks in a row (about a second).
const QUIET_LOOKS: u32 = 200;
/// How long closing waits for idle threads to leave.
const LEAVE_GRACE: Duration = Duration::from_secs(1);

thread_local! {
    /// Which pool (its address) the current thread works for, if any.
    static SERVING: Cell<usize> = const { Cell::new(0) };
}

/// The pool; cheap to share through an `Arc`.
///
/// Threads are few and long-lived, in the manner of granian's blocking pool.
/// A thread enters the handler's context once for its whole life (for Python:
/// attached to the interpreter) and releases it only to wait for work, so a
/// burst of queued jobs costs one attach, not one per message. The pool starts
/// empty and grows in two ways:
///
/// * the first job starts the first thread;
/// * a *watchdog* looks every [`WATCH_EVERY`] while jobs are coming in, and
///   adds a thread when jobs wait, no thread is idle, and every thread has
///   been inside one handler call for longer than [`STUCK_AFTER`] (a handler
///   that sleeps or waits on I/O). A handler that is merely busy computing gets no
///   extra threads: with Python's interpreter lock they would only fight over
///   it.
///
/// Threads retire after [`RETIRE_AFTER`] without work. The pool never grows
/// past `max_threads`; past that, jobs wait their turn.
///
/// Before any of that, a job may be answered on the network thread that
/// read it, with no hand-off at all (see `handling::lanes`): that is the fast path
/// for handlers that return quickly. The watchdog closes it as soon as a
/// call looks stuck, and while calls cost enough on average that a thread
/// of their own, working beside the network threads, does better. Calls on
/// network threads count against `max_threads` like the pool's.
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    handler: Arc<dyn Handler>,
    /// Threads the pool may have: what network threads may use is left out.
    max_threads: usize,
    /// Network threads' rights to answer on the spot.
    lanes: Lanes,
    /// What a handler call costs, on average.
    cost: CallCost,
    queue: Mutex<Queue>,
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
    /// Jobs submitted so far, answered on the spot or not; the watchdog
    /// sees traffic by its change.
    submitted: AtomicU64,
    /// The watchdog is parked or not started: a job answered on the spot
    /// must rouse it, or nobody would see that call if it got stuck.
    watchdog_asleep: AtomicBool,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    queued_messages: usize,
    /// The clock of each handler thread's call.
    threads: Vec<Arc<CallClock>>,
    /// Threads waiting for work.
    idle: usize,
    /// Wake-ups sent to idle threads that they have not yet taken: a
    /// condition variable costs a system call per notify, so each idle
    /// thread is notified once, not once per job.
    waking: usize,
    watchdog: Watchdog,
    closed: bool,
    /// The runtime whose network threads submit the jobs.
    network: Option<tokio::runtime::Handle>,
    /// A failure to report once the lock is released: logging may need the
    /// interpreter, whose holder may be waiting for this lock.
    unreported: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Watchdog {
    #[default]
    Absent,
    Looking,
    Parked,
}

/// What a plain handler answered on the spot ([`Pool::answer_now`]).
#[derive(Debug, Default)]
pub(crate) struct Answered {
    /// Messages answered; their replies are in the caller's buffer.
    pub messages: u64,
    /// Why the answers stopped before the last message: the connection
    /// closes once the replies before it are out.
    pub error: Option<Error>,
    /// The time spent inside the handler.
    pub took: Duration,
    /// Other network threads queued jobs for the lane meanwhile: the caller
    /// sees to them ([`Pool::answer_left`]) as soon as its replies are
    /// written, before it waits for anything.
    pub left: bool,
}

impl Pool {
    /// At most `max_threads` threads at once running `handler`, on a server
    /// with `network_threads` network threads: all but one of those may
    /// answer on the spot, within the `max_threads`.
    /// Does the handler hold a session per connection?
    pub fn is_session(&self) -> bool {
        self.inner.handler.is_session()
    }

    pub fn new(handler: Arc<dyn Handler>, max_threads: usize, network_threads: usize) -> Self {
        let max_threads = max_threads.max(1);
        let lanes = network_threads.saturating_sub(1).min(max_threads - 1);
        Pool {
            inner: Arc::new(Inner {
                handler,
                max_threads: max_threads - lanes,
                lanes: Lanes::new(lanes),
                cost: CallCost::default(),
                queue: Mutex::default(),
                work: Condvar::new(),
                watch: Condvar::new(),
                left: Condvar::new(),
                epoch: Instant::now(),
                waiting: AtomicUsize::new(0),
                submitted: AtomicU64::new(0),
                watchdog_asleep: AtomicBool::new(true),
            }),
        }
    }

    /// Answers `job` here and now if a lane is free, else queues it for the
    /// handler threads.
    pub fn submit(&self, job: Job) {
        let inner = &self.inner;
        inner.submitted.fetch_add(1, Relaxed);
        let mut pool = loop {
            if let Some(lane) = inner.claim_lane() {
                return inner.answer_here(Some(job), lane);
            }
            let pool = inner.lock();
            // Every lane was taken a moment ago; if one has been given up
            // since (under this lock), take it rather than queue.
            if !inner.lanes.is_open() || inner.lanes.busy() > 0 {
                break pool;
            }
        };
        pool.queued_messages += job.len();
        pool.jobs.push_back(job);
        inner.waiting.store(pool.jobs.len(), Relaxed);
        // On the fast path the network thread inside a call takes it next:
        // no wake-up, and no fight with it over the interpreter lock (should
        // that call be stuck, the watchdog sends a thread).
        if !inner.lane_takes_next() {
            inner.wake_one(&mut pool);
        }
        if pool.watchdog == Watchdog::Parked {
            inner.watch.notify_one();
        }
        inner.unlock(pool);
    }

    /// Answers `messages` (ranges of `data`) from `conn` here and now if a
    /// lane is free, encoding the replies into `out` by the rules of
    /// `replies`; `None` if no lane is (the caller hands over a job). This
    /// is [`Pool::submit`]'s fast path without the job: the connection
    /// writes the replies itself, as it writes the echo, so that nothing is
    /// handed over at all. Plain handlers only: a session's replies leave
    /// through its outbox, in order with its pushes.
    pub fn answer_now(
        &self,
        conn: &Conn,
        data: &[u8],
        messages: &[Range<usize>],
        replies: &Replies,
        out: &mut Vec<u8>,
    ) -> Option<Answered> {
        let inner = &self.inner;
        let lane = inner.claim_lane()?;
        inner.submitted.fetch_add(1, Relaxed);
        // A handler asking its own server to stop must not wait for itself.
        let _serving = Serving::enter(inner);
        lane.serve(conn.peer(), Some(conn.outbox()));
        let clock = lane.clock();
        let mut answered = Answered::default();
        inner.handler.call_here(&mut || {
            for range in messages {
                let message = &data[range.clone()];
                let (reply, took) = inner.timed(clock, || inner.handler.reply(conn, message));
                answered.took += took;
                let encoded = match reply {
                    Ok(reply) => replies.encode(conn.peer(), message, Ok(reply.as_deref()), out),
                    Err(e) => replies.encode(conn.peer(), message, Err(e), out),
                };
                if let Err(e) = encoded {
                    answered.error = Some(e);
                    return;
                }
                answered.messages += 1;
            }
        });
        answered.left = inner.leave(lane);
        Some(answered)
    }

    /// Answers the jobs left queued when [`Pool::answer_now`] gave its lane
    /// up: on this network thread if the lane is still free, else by
    /// whoever holds it, or a handler thread.
    pub fn answer_left(&self) {
        self.inner.take_over();
    }

    /// Lets threads start again after [`Pool::close`]; the jobs come
    /// from the network threads of `network`, if a runtime's.
    pub fn open(&self, network: Option<tokio::runtime::Handle>) {
        let mut pool = self.inner.lock();
        pool.closed = false;
        pool.network = network;
    }

    /// Tells every thread to leave once it has no work; returns at once.
    pub fn close(&self) {
        let inner = &self.inner;
        let mut pool = inner.lock();
        pool.closed = true;
        inner.work.notify_all();
        inner.watch.notify_all();
    }

    /// Waits briefly for idle threads to leave after [`Pool::close`]
    /// (they need the handler's context, an interpreter say, to do so);
    /// threads inside a handler call are not waited for.
    pub fn join_idle(&self) {
        let inner = &self.inner;
        let mut pool = inner.lock();
        let deadline = Instant::now() + LEAVE_GRACE;
        let in_call = |pool: &Queue| pool.threads.iter().all(|clock| clock.calling());
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

    /// Handler calls running on network threads now.
    pub fn calls_here(&self) -> usize {
        self.inner.lanes.busy()
    }

    /// Closes the connections whose messages the handler is answering on
    /// network threads now; returns their clients.
    pub fn cut_calls_here(&self) -> Vec<SocketAddr> {
        self.inner.lanes.cut()
    }

    /// The pool now; calls on network threads count as busy threads.
    pub fn load(&self) -> Load {
        let here = self.inner.lanes.busy();
        let pool = self.inner.lock();
        Load {
            queued: pool.queued_messages as u64,
            threads: (pool.threads.len() + here) as u64,
            busy: (pool.threads.len() - pool.idle + here) as u64,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Never wait in drop: threads leave on their own once told.
        self.close();
    }
}

impl Inner {
    /// Releases `pool`, then logs what it had to report.
    fn unlock(&self, mut pool: MutexGuard<'_, Queue>) {
        let unreported = pool.unreported.take();
        drop(pool);
        if let Some(text) = unreported {
            warn!("{text}");
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // No code panics while holding the lock; should one ever, the queue
        // is still consistent (every change to it is a single push or pop).
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a handler thread (and the watchdog with the first one).
    fn spawn(self: &Arc<Self>, pool: &mut Queue) {
        if pool.closed {
            return;
        }
        let clock = Arc::new(CallClock::default());
        let inner = self.clone();
        let started = thread::Builder::new()
            .name("sockdemo-handler".into())
            .spawn({
                let clock = clock.clone();
                move || inner.work(&clock)
            });
        match started {
            Ok(_) => pool.threads.push(clock),
            Err(e) => {
                pool.unreported = Some(format!("Cannot start a handler thread: {e}"));
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
        self.start_watchdog(pool);
    }

    /// Starts the watchdog if it is not running.
    fn start_watchdog(self: &Arc<Self>, pool: &mut Queue) {
        if pool.watchdog != Watchdog::Absent {
            return;
        }
        let inner = self.clone();
        let started = thread::Builder::new()
            .name("sockdemo-watchdog".into())
            .spawn(move || inner.watchdog());
        match started {
            Ok(_) => {
                pool.watchdog = Watchdog::Looking;
                self.watchdog_asleep.store(false, SeqCst);
            }
            Err(e) => pool.unreported = Some(format!("Cannot start the handler watchdog: {e}")),
        }
    }

    /// Wakes the watchdog, or starts it, for a call on a network thread.
    fn rouse(self: &Arc<Self>) {
        let mut pool = self.lock();
        match pool.watchdog {
            Watchdog::Absent => self.start_watchdog(&mut pool),
            Watchdog::Parked => self.watch.notify_one(),
            Watchdog::Looking => {}
        }
        self.unlock(pool);
    }

    /// Gets a thread going for a queued job: wakes an idle one, or starts
    /// the first.
    fn wake_one(self: &Arc<Self>, pool: &mut Queue) {
        if pool.idle > pool.waking {
            pool.waking += 1;
            self.work.notify_one();
        } else if pool.threads.is_empty() {
            self.spawn(pool);
        }
    }

    /// A lane for this network thread, if the fast path is open and one is
    /// free.
    fn claim_lane(self: &Arc<Self>) -> Option<Claim<'_>> {
        let lane = self.lanes.claim()?;
        // Sequentially consistent with the watchdog's going to sleep: either
        // it sees this lane taken, or this sees it asleep.
        if self.watchdog_asleep.load(SeqCst) {
            self.rouse();
        }
        Some(lane)
    }

    /// Will a network thread inside a call take the next queued job?
    fn lane_takes_next(&self) -> bool {
        self.lanes.is_open() && self.lanes.busy() > 0
    }

    /// Answers `first` (if any) on this network thread, holding `lane`, then
    /// the jobs other network threads queued meanwhile, up to
    /// [`DRAIN_AT_MOST`]. The lane (and the interpreter) is held only for
    /// the handler calls, not for writing the replies, so that another
    /// network thread can call the handler while this one writes. Jobs still
    /// queued after that go on in a task of their own, which any network
    /// thread may pick up; meanwhile this one goes back to its connections.
    fn answer_here(self: &Arc<Self>, first: Option<Job>, lane: Claim<'_>) {
        // A handler asking its own server to stop must not wait for itself.
        let _serving = Serving::enter(self);
        let mut lane = lane;
        let mut next = first;
        for _ in 0..DRAIN_AT_MOST {
            let Some(mut job) = next.take().or_else(|| self.take()) else {
                self.leave(lane);
                return;
            };
            lane.serve(job.peer(), job.outbox());
            let clock = lane.clock();
            self.handler.call_here(&mut || self.answer(&mut job, clock));
            let left = self.leave(lane);
            job.settle(true);
            if !left {
                return;
            }
            lane = match self.claim_lane() {
                Some(lane) => lane,
                // Whoever holds a lane takes them; or the fast path closed.
                None => return self.see_to_queued(),
            };
        }
        if self.leave(lane) {
            self.hand_on();
        }
    }

    /// Gives `lane` up, under the lock that [`Pool::submit`] queues
    /// under, so that no job is queued for a lane nobody holds; tells whether
    /// jobs are left.
    fn leave(&self, lane: Claim<'_>) -> bool {
        let pool = self.lock();
        drop(lane);
        !pool.jobs.is_empty()
    }

    /// Sees to jobs a network thread left queued: a task on the runtime
    /// that takes a lane for them, or, off a runtime, a handler thread.
    fn hand_on(self: &Arc<Self>) {
        let inner = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(async move { inner.take_over() })),
            Err(_) => self.see_to_queued(),
        }
    }

    /// Answers queued jobs on this thread if a lane is free, else sees that
    /// someone does.
    fn take_over(self: &Arc<Self>) {
        match self.claim_lane() {
            Some(lane) => self.answer_here(None, lane),
            None => self.see_to_queued(),
        }
    }

    /// Wakes a handler thread for queued jobs unless a lane takes them.
    fn see_to_queued(self: &Arc<Self>) {
        let mut pool = self.lock();
        if !pool.jobs.is_empty() && !self.lane_takes_next() {
            self.wake_one(&mut pool);
        }
        self.unlock(pool);
    }

    /// A handler thread's life: take jobs while there are any, wait
    /// (released) when there are none, leave when idle too long or closed.
    fn work(self: &Arc<Self>, clock: &Arc<CallClock>) {
        let _serving = Serving::enter(self);
        // However the thread ends, it leaves the pool.
        let _leave = Leave { inner: self, clock };
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
                self.answer(&mut job, clock);
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
    fn answer(&self, job: &mut Job, clock: &CallClock) {
        match job.stage() {
            Stage::Messages => {}
            Stage::Open => {
                if let Err(e) = self.timed(clock, || self.handler.opened(job.conn())).0 {
                    job.fail(Error::Handler(e));
                }
                return;
            }
            Stage::Close => return self.timed(clock, || self.handler.closed(job.conn())).0,
        }
        // As `work` decides for a job's replies: with a backlog, the network
        // threads write, while this thread goes on to the next job.
        job.write_now(self.waiting.load(Relaxed) == 0);
        while let Some(message) = job.next() {
            let (reply, _) = self.timed(clock, || self.handler.reply(job.conn(), message));
            let go_on = match reply {
                Ok(reply) => job.answer(Ok(reply.as_deref())),
                Err(e) => job.answer(Err(e)),
            };
            if !go_on {
                break;
            }
        }
    }

    /// Runs `call`, a handler call, on `clock`, and counts what it cost;
    /// returns its result and how long it took.
    fn timed<T>(&self, clock: &CallClock, call: impl FnOnce() -> T) -> (T, Duration) {
        let started = self.now();
        clock.start(started);
        let result = call();
        clock.stop();
        let took = self.now().saturating_sub(started);
        self.cost.record(took);
        (result, Duration::from_nanos(took))
    }

    /// Nanoseconds since the epoch: what call clocks count in.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Closes the fast path while calls get stuck, reopens it once they no
    /// longer do, and adds a thread whenever jobs wait behind threads that
    /// are all stuck.
    fn watchdog(self: Arc<Self>) {
        let mut pool = self.lock();
        let mut seen = self.submitted.load(Relaxed);
        let mut quiet = 0;
        // When a call last looked stuck.
        let mut last_stuck: Option<u64> = None;
        // The long calls on network threads already seen to.
        let mut long_calls = Vec::new();
        loop {
            if pool.closed {
                pool.watchdog = Watchdog::Absent;
                self.watchdog_asleep.store(true, SeqCst);
                return;
            }
            if quiet >= QUIET_LOOKS && pool.jobs.is_empty() && self.may_park() {
                pool.watchdog = Watchdog::Parked;
                pool = self
                    .watch
                    .wait(pool)
                    .unwrap_or_else(PoisonError::into_inner);
                pool.watchdog = Watchdog::Looking;
                self.watchdog_asleep.store(false, SeqCst);
                quiet = 0;
                continue;
            }
            pool = self
                .watch
                .wait_timeout(pool, WATCH_EVERY)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            let submitted = self.submitted.load(Relaxed);
            quiet = if submitted == seen { quiet + 1 } else { 0 };
            seen = submitted;

            let now = self.now();
            // A network thread inside a long call may have been the one
            // watching the sockets, the others asleep until it is done: a
            // task from outside wakes one, which takes the watch over.
            let long = self.lanes.long_calls(now, WATCH_EVERY);
            if long.iter().any(|call| !long_calls.contains(call))
                && let Some(network) = &pool.network
            {
                drop(network.spawn(async {}));
            }
            long_calls = long;
            let stuck = |clock: &CallClock| clock.stuck(now, STUCK_AFTER);
            if self.lanes.stuck(now, STUCK_AFTER) || pool.threads.iter().any(|c| stuck(c)) {
                if self.lanes.is_open() {
                    // Logging may need the interpreter, whose holder may be
                    // waiting for this lock: log without it.
                    drop(pool);
                    debug!("A handler call looks stuck: jobs go to the handler threads for now.");
                    pool = self.lock();
                }
                self.lanes.close();
                last_stuck = Some(now);
            } else {
                if last_stuck.is_some_and(|at| {
                    now.saturating_sub(at) >= INLINE_AGAIN_AFTER.as_nanos() as u64
                }) {
                    last_stuck = None;
                }
                // Heavy calls are better off on a thread of their own, the
                // network threads meanwhile reading and writing for it.
                if self.cost.heavy() {
                    self.lanes.close();
                } else if last_stuck.is_none() && self.cost.light() {
                    self.lanes.reopen();
                }
            }
            if !pool.jobs.is_empty() && !self.lane_takes_next() {
                if pool.idle > pool.waking {
                    pool.waking += 1;
                    self.work.notify_one();
                } else if pool.threads.len() < self.max_threads
                    && pool.threads.iter().all(|c| c.waiting(now, STUCK_AFTER))
                {
                    self.spawn(&mut pool);
                }
            }
            if pool.unreported.is_some() {
                self.unlock(pool);
                pool = self.lock();
            }
        }
    }

    /// Marks the watchdog asleep unless a call on a network thread is
    /// running, which it must keep watching. Marked first, then checked,
    /// the other way round from [`Pool::submit`], so that no call
    /// goes unseen.
    fn may_park(&self) -> bool {
        self.watchdog_asleep.store(true, SeqCst);
        if self.lanes.busy() > 0 {
            self.watchdog_asleep.store(false, SeqCst);
            return false;
        }
        true
    }
}

/// Marks the current thread as one running a pool's handler, for as
/// long as it lives.
struct Serving {
    previous: usize,
}

impl Serving {
    fn enter(inner: &Arc<Inner>) -> Self {
        Serving {
            previous: SERVING.replace(Arc::as_ptr(inner) as usize),
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        SERVING.set(self.previous);
    }
}

/// Removes a handler thread from the pool when it ends, however it ends.
struct Leave<'a> {
    inner: &'a Inner,
    clock: &'a Arc<CallClock>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut pool = self.inner.lock();
        pool.threads.retain(|c| !Arc::ptr_eq(c, self.clock));
        self.inner.left.notify_all();
    }
}

#[cfg(test)]
mod tests;
