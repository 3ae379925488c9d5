//! The reactor's turns, bell and tasks, and wakes from other threads.

use std::future::pending;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::testing::{readable, readable_within};
use super::*;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

#[test]
fn a_task_runs_on_the_turning_thread_and_a_wake_from_elsewhere_rings_once() -> TestResult {
    let runtime = runtime()?;
    let reactor = Reactor::new()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let ran_on = Arc::new(Mutex::new(None));
    let record = ran_on.clone();
    reactor.spawn(runtime.handle().clone(), async move {
        // A dropped sender ends the wait too; either way it ran.
        let _ = rx.await;
        *lock(&record) = Some(thread::current().id());
    });
    assert_eq!(reactor.tasks(), 1);
    // Spawned from outside a turn: the loop is told.
    assert!(readable(reactor.fd()));
    assert!(reactor.turn());
    assert!(!readable(reactor.fd()), "the turn took the bell");
    assert_eq!(*lock(&ran_on), None, "the task waits for its sender");
    let sent = thread::spawn(move || tx.send(()).is_ok()).join();
    assert!(matches!(sent, Ok(true)), "the task still waits for it");
    assert!(readable(reactor.fd()), "a wake from another thread rings");
    assert!(reactor.turn());
    assert_eq!(*lock(&ran_on), Some(thread::current().id()));
    assert_eq!(reactor.tasks(), 0, "a finished task is forgotten");
    assert!(!reactor.turn(), "nothing left to run");
    Ok(())
}

#[test]
fn a_task_woken_inside_a_turn_runs_in_that_turn_without_the_bell() -> TestResult {
    let runtime = runtime()?;
    let reactor = Reactor::new()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    reactor.spawn(runtime.handle().clone(), async move {
        let _ = rx.await;
        flag.store(true, Ordering::SeqCst);
    });
    // Spawned second, run second: it wakes the first in the same turn.
    reactor.spawn(runtime.handle().clone(), async move {
        let _ = tx.send(());
    });
    assert!(reactor.turn());
    assert!(done.load(Ordering::SeqCst));
    assert!(
        !readable(reactor.fd()),
        "no bell for a wake inside the turn"
    );
    Ok(())
}

#[test]
fn a_turn_that_stops_at_its_budget_comes_back_for_the_rest() -> TestResult {
    let runtime = runtime()?;
    let reactor = Reactor::new()?;
    let ran = Arc::new(AtomicU64::new(0));
    for _ in 0..TURN_BUDGET + 1 {
        let ran = ran.clone();
        reactor.spawn(runtime.handle().clone(), async move {
            ran.fetch_add(1, Ordering::SeqCst);
        });
    }
    assert!(reactor.turn());
    assert_eq!(ran.load(Ordering::SeqCst), TURN_BUDGET as u64);
    assert!(
        readable(reactor.fd()),
        "one task left, and nothing to bring the loop back"
    );
    assert!(reactor.turn());
    assert_eq!(ran.load(Ordering::SeqCst), TURN_BUDGET as u64 + 1);
    assert!(!readable(reactor.fd()));
    Ok(())
}

#[test]
fn a_connection_is_read_and_answered_through_the_reactor() -> TestResult {
    let runtime = runtime()?;
    let reactor = Reactor::new()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let client = thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.write_all(b"hello")?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply)?;
        Ok(reply)
    });
    let (accepted, _) = listener.accept()?;
    let mut stream = reactor.adopt(accepted)?;
    reactor.spawn(runtime.handle().clone(), async move {
        let mut got = Vec::new();
        // Until the client's end: every read waits on the reactor.
        if stream.read_to_end(&mut got).await.is_ok() {
            got.make_ascii_uppercase();
            let _ = stream.write_all(&got).await;
            let _ = stream.shutdown().await;
        }
    });
    // The test is the loop: turn whenever the descriptor says so.
    let deadline = Instant::now() + Duration::from_secs(10);
    while reactor.tasks() > 0 && Instant::now() < deadline {
        if readable_within(reactor.fd(), Duration::from_millis(100)) {
            reactor.turn();
        }
    }
    assert_eq!(reactor.tasks(), 0, "the connection's task finished");
    let reply = client.join().map_err(|_| "client panicked")??;
    assert_eq!(reply, b"HELLO");
    assert!(
        lock(&reactor.sources).is_empty(),
        "the socket was deregistered"
    );
    Ok(())
}

/// Sets its flag when dropped.
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn closing_drops_every_task_and_a_stopped_loop_shows_as_stalled() -> TestResult {
    let runtime = runtime()?;
    let reactor = Reactor::new()?;
    let waiting = Arc::new(AtomicBool::new(false));
    let queued = Arc::new(AtomicBool::new(false));
    let guard = Dropped(waiting.clone());
    reactor.spawn(runtime.handle().clone(), async move {
        let _guard = guard;
        pending::<()>().await;
    });
    reactor.turn();
    assert!(!waiting.load(Ordering::SeqCst), "a waiting task stays");
    let guard = Dropped(queued.clone());
    reactor.spawn(runtime.handle().clone(), async move {
        let _guard = guard;
    });
    // The first look only notes the turns so far.
    assert!(!reactor.stalled());
    assert!(
        reactor.stalled(),
        "a task waits and the loop has not turned"
    );
    reactor.turn();
    assert!(queued.load(Ordering::SeqCst), "the queued task ran");
    assert!(!reactor.stalled(), "nothing waits");
    reactor.close();
    assert!(
        waiting.load(Ordering::SeqCst),
        "closing dropped the waiting task"
    );
    assert_eq!(reactor.tasks(), 0);
    // Closed, a new task is dropped, not run.
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    reactor.spawn(runtime.handle().clone(), async move {
        flag.store(true, Ordering::SeqCst);
    });
    reactor.turn();
    assert!(!ran.load(Ordering::SeqCst));
    reactor.reopen();
    Ok(())
}

/// Wakes begun and ended, across threads: a check made while none is
/// under way sees only wakes that have rung (or should have).
#[derive(Default)]
struct Waking {
    begun: AtomicU64,
    ended: AtomicU64,
}

/// A count a task waits to see grow, bumped from other threads.
#[derive(Default)]
struct Wanted {
    asked: AtomicU64,
    seen: AtomicU64,
    waker: Mutex<Option<std::task::Waker>>,
    waking: Arc<Waking>,
}

impl Wanted {
    /// From another thread: one more, and the task is woken.
    fn ask(&self) {
        self.waking.begun.fetch_add(1, Ordering::SeqCst);
        self.asked.fetch_add(1, Ordering::SeqCst);
        if let Some(waker) = lock(&self.waker).take() {
            waker.wake();
        }
        self.waking.ended.fetch_add(1, Ordering::SeqCst);
    }

    /// In the task: until everything asked so far has been seen.
    async fn next(&self) {
        std::future::poll_fn(|cx| {
            *lock(&self.waker) = Some(cx.waker().clone());
            let seen = self.seen.load(Ordering::SeqCst);
            if seen < self.asked.load(Ordering::SeqCst) {
                self.seen.store(seen + 1, Ordering::SeqCst);
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
    }
}

/// Tasks woken from other threads, the loop turning only when the
/// descriptor is readable, as an event loop does: no wake may be lost.
/// A wake that lands between the turn's last look at the queue and the
/// end of the turn must still ring the bell, or its task waits for ever
/// with the loop asleep; so must one that lands while the turn collects
/// another's ring. Each waking thread waits for its wake to be seen
/// before the next (so wakes land at every point of a turn, and a lost
/// one leaves nobody to ring again); the loop checks that a queued task
/// always makes the descriptor readable.
fn no_wake_is_lost(wakers: usize) -> TestResult {
    const WAKES: u64 = 5_000;
    let runtime = runtime()?;
    let reactor = Reactor::new()?;
    let waking = Arc::new(Waking::default());
    let wanted: Vec<Arc<Wanted>> = (0..wakers)
        .map(|_| {
            Arc::new(Wanted {
                waking: waking.clone(),
                ..Wanted::default()
            })
        })
        .collect();
    // With no wake under way, a queued task has rung the bell: the
    // descriptor must be readable. (Checked between the two counts: a
    // wake that began meanwhile voids the check.)
    let lost = || {
        let ended = waking.ended.load(Ordering::SeqCst);
        let begun = waking.begun.load(Ordering::SeqCst);
        let queued = !lock(&reactor.queue).is_empty();
        let quiet = !readable(reactor.fd());
        begun == ended && waking.begun.load(Ordering::SeqCst) == begun && queued && quiet
    };
    for w in &wanted {
        let w = w.clone();
        reactor.spawn(runtime.handle().clone(), async move {
            for _ in 0..WAKES {
                w.next().await;
            }
        });
    }
    let threads: Vec<_> = wanted
        .iter()
        .map(|w| {
            let w = w.clone();
            thread::spawn(move || {
                let give_up = Instant::now() + Duration::from_secs(20);
                let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ w.asked.as_ptr() as u64;
                for _ in 0..WAKES {
                    // A pause of random length first, so that the wake
                    // lands anywhere in the loop's turn, its last few
                    // instructions included, not just as a task runs.
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    for _ in 0..seed % 4096 {
                        std::hint::spin_loop();
                    }
                    w.ask();
                    while w.seen.load(Ordering::SeqCst) < w.asked.load(Ordering::SeqCst) {
                        if Instant::now() > give_up {
                            return;
                        }
                        thread::yield_now();
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while reactor.tasks() > 0 {
        assert!(Instant::now() < deadline, "the tasks did not finish");
        assert!(
            !lost(),
            "a task is queued and the descriptor is not readable: a lost wake-up"
        );
        if readable_within(reactor.fd(), Duration::from_millis(500)) {
            reactor.turn();
        }
    }
    for thread in threads {
        assert!(thread.join().is_ok(), "a waking thread panicked");
    }
    for w in &wanted {
        assert_eq!(w.seen.load(Ordering::SeqCst), WAKES);
    }
    Ok(())
}

#[test]
fn a_wake_at_the_end_of_a_turn_is_never_lost() -> TestResult {
    no_wake_is_lost(1)
}

#[test]
fn wakes_from_three_threads_during_turns_are_never_lost() -> TestResult {
    no_wake_is_lost(3)
}

/// The deterministic form of the two tests above: a wake from another thread
/// lands exactly after the turn's last look at the queue. It must ring the
/// bell (the turn has taken the previous ring), or its task is queued with
/// the loop asleep.
#[test]
fn a_wake_right_after_the_last_look_rings_the_bell() -> TestResult {
    let runtime = runtime()?;
    let reactor = Reactor::new()?;
    let wanted = Arc::new(Wanted::default());
    let w = wanted.clone();
    reactor.spawn(runtime.handle().clone(), async move {
        w.next().await;
        w.next().await;
    });
    // The spawn rang: the first turn runs the task to its first wait.
    assert!(readable(reactor.fd()));
    assert!(reactor.turn());
    // A wake from elsewhere makes the next turn, which runs the task; then,
    // as that turn finishes, one more wake from another thread.
    wanted.ask();
    assert!(readable(reactor.fd()));
    let w = wanted.clone();
    let mut armed = true;
    reactor.after_last_look(move || {
        // Once the task has seen the first wake and waits again.
        if armed && w.seen.load(Ordering::SeqCst) == 1 {
            armed = false;
            let w = w.clone();
            let _ = thread::spawn(move || w.ask()).join();
        }
    });
    assert!(reactor.turn());
    assert!(
        !lock(&reactor.queue).is_empty(),
        "the last wake queued the task"
    );
    assert!(
        readable(reactor.fd()),
        "a task is queued and the descriptor is not readable: a lost wake-up"
    );
    assert!(reactor.turn());
    assert_eq!(wanted.seen.load(Ordering::SeqCst), 2);
    assert_eq!(reactor.tasks(), 0);
    Ok(())
}

/// Is `source` ready for `bit` now, as a task would see it?
fn ready_for(source: &Source, bit: u8) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    source.poll_ready(bit, &mut cx).is_ready()
}

#[test]
fn an_edge_collected_during_a_system_call_survives_its_would_block() {
    let source = Source::default();
    // A task sees the socket readable and reads it...
    let seen = source.tick();
    // ...while the watching thread collects a new edge, between the read
    // and the task's WouldBlock.
    source.set(READABLE);
    source.clear(READABLE, seen);
    assert!(
        ready_for(&source, READABLE),
        "the new edge was cleared: lost"
    );
    // With no edge since it looked, the WouldBlock clears the bit.
    let seen = source.tick();
    source.clear(READABLE, seen);
    assert!(!ready_for(&source, READABLE));
    assert!(
        ready_for(&source, WRITABLE),
        "only the bit asked is cleared"
    );
    // And the next edge sets it again.
    source.set(READABLE);
    assert!(ready_for(&source, READABLE));
}

#[test]
fn the_end_of_a_direction_is_never_cleared() {
    let source = Source::default();
    source.set(READ_CLOSED);
    let seen = source.tick();
    source.clear(READABLE, seen);
    assert!(
        ready_for(&source, READABLE),
        "the peer's end ends every wait"
    );
}
