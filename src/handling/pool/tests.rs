//! The pool's growth, parking and ordering, driven by plain Rust handlers.

use super::*;
use crate::handling::job::testing::{self, Pending, wait};
use crate::protocol::Protocol;
use std::sync::atomic::AtomicUsize;

/// Upper-cases, or sleeps on "slow", or fails on "fail".
struct Upper {
    calls: AtomicUsize,
}

impl Handler for Upper {
    fn reply(
        &self,
        _conn: &crate::handling::Conn,
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
    pool: Pool,
    protocol: Protocol,
}

impl std::ops::Deref for TestPool {
    type Target = Pool;
    fn deref(&self) -> &Pool {
        &self.pool
    }
}

fn pool(protocol: Protocol, max_threads: usize) -> crate::Result<TestPool> {
    let handler = Arc::new(Upper {
        calls: AtomicUsize::new(0),
    });
    Ok(TestPool {
        // One network thread: no lanes, every job goes to the pool.
        pool: Pool::new(handler, max_threads, 1),
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
        _conn: &crate::handling::Conn,
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
        pool: Pool::new(Arc::new(Busy), 4, 1),
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

fn wait_until_idle(d: &Pool) {
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
    d.open(None);
    assert_eq!(wait(job(&d, &[b"y"]))?.out, b"Y");
    Ok(())
}

/// Names the thread that answers "who"; holds "hold" until released.
#[derive(Default)]
struct Held {
    entered: Mutex<usize>,
    released: Mutex<bool>,
    changed: Condvar,
}

impl Held {
    fn wait_entered(&self) {
        let entered = self.entered.lock().unwrap_or_else(PoisonError::into_inner);
        let (entered, _) = self
            .changed
            .wait_timeout_while(entered, Duration::from_secs(10), |n| *n == 0)
            .unwrap_or_else(PoisonError::into_inner);
        assert!(*entered > 0, "the held call never started");
    }

    fn release(&self) {
        *self.released.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.changed.notify_all();
    }
}

impl Handler for Held {
    fn reply(
        &self,
        _conn: &crate::handling::Conn,
        message: &[u8],
    ) -> Result<Option<Vec<u8>>, String> {
        if message == b"hold" {
            *self.entered.lock().unwrap_or_else(PoisonError::into_inner) += 1;
            self.changed.notify_all();
            let released = self.released.lock().unwrap_or_else(PoisonError::into_inner);
            let _held = self
                .changed
                .wait_timeout_while(released, Duration::from_secs(10), |r| !*r);
            return Ok(Some(b"held".to_vec()));
        }
        let name = thread::current().name().unwrap_or("unnamed").to_owned();
        Ok(Some(name.into_bytes()))
    }
}

/// A pool for a server of two network threads: one lane.
fn with_lanes(handler: Arc<Held>, max_threads: usize) -> TestPool {
    TestPool {
        pool: Pool::new(handler, max_threads, 2),
        protocol: Protocol::Raw,
    }
}

/// Submits `messages` from a thread named `name`; returns once the
/// submission does.
fn submit_from(d: &Arc<TestPool>, name: &str, messages: &'static [&'static [u8]]) -> Pending {
    let d = d.clone();
    thread::Builder::new()
        .name(name.into())
        .spawn(move || job(&d, messages))
        .and_then(|t| {
            t.join()
                .map_err(|_| std::io::Error::other("submitter panicked"))
        })
        .expect("a submitting thread") // a test: a thread that cannot start fails it
}

#[test]
fn a_quick_job_is_answered_on_the_thread_that_submits_it() -> crate::Result<()> {
    let d = Arc::new(with_lanes(Arc::default(), 4));
    let pending = submit_from(&d, "network", &[b"who", b"who"]);
    // Answered before the submission returned, where it was made.
    assert_eq!(pending.take().unwritten, b"networknetwork");
    assert_eq!(d.load().threads, 0, "no handler thread was needed");
    Ok(())
}

#[test]
fn one_handler_thread_leaves_no_lane() -> crate::Result<()> {
    let d = Arc::new(with_lanes(Arc::default(), 1));
    let answer = wait(submit_from(&d, "network", &[b"who"]))?;
    assert_eq!(answer.out, b"sockdemo-handler");
    Ok(())
}

#[test]
fn a_held_call_on_a_lane_sends_later_jobs_to_handler_threads() -> crate::Result<()> {
    let held = Arc::new(Held::default());
    let d = Arc::new(with_lanes(held.clone(), 4));
    let holder = {
        let d = d.clone();
        thread::Builder::new()
            .name("network-1".into())
            .spawn(move || job(&d, &[b"hold"]))?
    };
    held.wait_entered();
    assert_eq!(d.calls_here(), 1);
    // Queued behind the held lane until the watchdog sees the call
    // stuck, closes the fast path and sends a handler thread.
    let answer = wait(submit_from(&d, "network-2", &[b"who"]))?;
    assert_eq!(answer.out, b"sockdemo-handler");
    assert!(!d.inner.lanes.is_open(), "the fast path is closed");
    // And so are jobs submitted now, the call still held.
    let answer = wait(submit_from(&d, "network-2", &[b"who"]))?;
    assert_eq!(answer.out, b"sockdemo-handler");
    held.release();
    let holder = holder
        .join()
        .map_err(|_| std::io::Error::other("holder panicked"))?;
    assert_eq!(wait(holder)?.out, b"held");
    Ok(())
}

#[test]
fn a_call_held_on_a_lane_is_counted_and_can_be_cut_off() -> crate::Result<()> {
    let held = Arc::new(Held::default());
    let d = Arc::new(with_lanes(held.clone(), 4));
    assert_eq!(d.calls_here(), 0);
    let holder = {
        let d = d.clone();
        thread::Builder::new()
            .name("network-1".into())
            .spawn(move || job(&d, &[b"hold"]))?
    };
    held.wait_entered();
    // The network thread inside the call counts as a busy handler thread.
    assert_eq!(d.calls_here(), 1);
    let load = d.load();
    assert_eq!((load.threads, load.busy, load.queued), (1, 1, 0));
    // A shutdown past its grace period cuts the connection off: its client
    // is named, and nothing goes out on it any more.
    assert_eq!(d.cut_calls_here(), vec![([127, 0, 0, 1], 5555).into()]);
    held.release();
    let holder = holder
        .join()
        .map_err(|_| std::io::Error::other("holder panicked"))?;
    assert!(holder.is_closed());
    assert_eq!(d.calls_here(), 0);
    Ok(())
}
