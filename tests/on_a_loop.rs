//! A server whose handler runs on an event loop: the test's own thread plays
//! the loop, as `sockdemo.aio` plays it in Python (take the turns it is asked
//! for, answer the jobs, deliver the replies), and the server's connections
//! are served on that thread.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use common::{BYE, read_exactly, wait_until};
use sockdemo::handling::{LoopBridge, RunOn};
use sockdemo::serve::{Config, Mode, Server};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// What the loop does with a message: upper-case it; "stop" also asks the
/// server to shut down, from the loop's own thread.
fn answer(server: &Mutex<Option<Arc<Server>>>, message: &[u8]) -> Vec<u8> {
    if message == b"stop"
        && let Some(server) = server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
    {
        server.shutdown();
    }
    message.to_ascii_uppercase()
}

/// A loop on its own thread, running until the server has finished, or
/// until told to stop turning (as a loop blocked elsewhere would).
struct Loop {
    thread: thread::JoinHandle<()>,
    halt: mpsc::Sender<()>,
}

fn run_loop(bridge: Arc<LoopBridge>, server: Arc<Mutex<Option<Arc<Server>>>>) -> Loop {
    let (asks, asked) = mpsc::channel();
    let (halt, halted) = mpsc::channel();
    let thread = thread::spawn(move || {
        let asks = Mutex::new(asks);
        let reactor = bridge.reactor().clone();
        reactor
            .watch_on_thread(move || {
                asks.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .send(())
                    .is_ok()
            })
            .expect("a watching thread");
        while asked.recv().is_ok() {
            if halted.try_recv().is_ok() {
                return;
            }
            bridge.woken();
            loop {
                reactor.turn();
                let mut jobs = bridge.take();
                if jobs.is_empty() {
                    break;
                }
                for job in &mut jobs {
                    while let Some(message) = job.next() {
                        let reply = answer(&server, message);
                        if !job.answer(Ok(Some(&reply))) {
                            break;
                        }
                    }
                }
                bridge.deliver(jobs);
            }
            if bridge.is_finished() {
                reactor.unwatch();
                return;
            }
        }
    });
    Loop { thread, halt }
}

/// A server run on a loop, serving on 127.0.0.1:0: the server, its bridge
/// and the loop.
type Served = (Arc<Server>, Arc<LoopBridge>, Loop);

fn serve(config: Config) -> Result<Served, Box<dyn std::error::Error>> {
    let bridge = Arc::new(LoopBridge::new(false)?);
    let server = Arc::new(Server::bind(
        "127.0.0.1",
        0,
        config,
        Some(RunOn::Loop(bridge.clone())),
    )?);
    let handle = Arc::new(Mutex::new(Some(server.clone())));
    let running = run_loop(bridge.clone(), handle);
    server.start(Mode::Forever)?;
    Ok((server, bridge, running))
}

fn connect(server: &Server) -> std::io::Result<TcpStream> {
    let sock = TcpStream::connect(server.local_addr())?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(sock)
}

/// Joins `thread`, waiting no longer than a loaded machine ever needs.
fn join_within(thread: thread::JoinHandle<()>, what: &str) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !thread.is_finished() {
        if Instant::now() > deadline {
            return Err(format!("{what} did not end").into());
        }
        thread::sleep(Duration::from_millis(10));
    }
    thread.join().map_err(|_| format!("{what} panicked").into())
}

#[test]
fn connections_are_served_on_the_loop_and_a_shutdown_finishes_it() -> TestResult {
    let (server, bridge, running) = serve(Config::default())?;
    let mut sock = connect(&server)?;
    sock.write_all(b"hello")?;
    assert_eq!(read_exactly(&mut sock, 5), b"HELLO");
    // The connection lives on the loop's reactor, not on a network thread.
    assert_eq!(bridge.reactor().tasks(), 1);
    sock.write_all(b"bye")?;
    assert_eq!(read_exactly(&mut sock, BYE.len()), BYE);
    server.shutdown();
    // Returned: the server has stopped, and the loop was told it finished.
    assert!(server.wait(Duration::ZERO).is_some());
    join_within(running.thread, "the loop")?;
    assert!(bridge.is_finished());
    Ok(())
}

#[test]
fn a_shutdown_asked_on_the_loops_thread_only_asks() -> TestResult {
    let (server, bridge, running) = serve(Config::default())?;
    let mut sock = connect(&server)?;
    // The loop, answering "stop", calls shutdown: waiting there would wait
    // for the loop itself.
    sock.write_all(b"stop")?;
    assert_eq!(read_exactly(&mut sock, 4), b"STOP");
    join_within(running.thread, "the loop")?;
    assert!(bridge.is_finished());
    assert!(server.wait(Duration::from_secs(30)).is_some());
    Ok(())
}

#[test]
fn a_server_on_a_loop_serves_again_after_a_shutdown() -> TestResult {
    let (server, bridge, running) = serve(Config::default())?;
    server.shutdown();
    join_within(running.thread, "the first loop")?;
    let handle = Arc::new(Mutex::new(Some(server.clone())));
    let running = run_loop(bridge.clone(), handle);
    server.start(Mode::Forever)?;
    let mut sock = connect(&server)?;
    sock.write_all(b"again")?;
    assert_eq!(read_exactly(&mut sock, 5), b"AGAIN");
    server.shutdown();
    join_within(running.thread, "the second loop")?;
    Ok(())
}

#[test]
fn a_loop_that_stops_turning_does_not_hold_up_the_shutdown() -> TestResult {
    let config = Config {
        shutdown_timeout: Duration::from_millis(100),
        ..Config::default()
    };
    let (server, bridge, running) = serve(config)?;
    let mut sock = connect(&server)?;
    sock.write_all(b"hello")?;
    assert_eq!(read_exactly(&mut sock, 5), b"HELLO");
    // The loop stops turning, with the connection still open on it.
    running.halt.send(())?;
    bridge.reactor().ring();
    join_within(running.thread, "the loop")?;
    wait_until(|| bridge.reactor().tasks() == 1);
    // The shutdown waits its grace period, then closes what the loop holds.
    let stopping = thread::spawn(move || server.shutdown());
    join_within(stopping, "the shutdown")?;
    assert_eq!(bridge.reactor().tasks(), 0);
    Ok(())
}
