//! A Rust reply handler on the dispatcher's threads, against the core server.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use common::*;
use sockdemo::Protocol;
use sockdemo::server::{Config, Handler};

/// Upper-cases; sleeps first on "slow"; keeps the echo for "echo".
struct Upper {
    calls: AtomicUsize,
}

impl Handler for Upper {
    fn reply(&self, _peer: &str, message: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match message {
            b"echo" => Ok(None),
            b"slow" => {
                thread::sleep(Duration::from_millis(600));
                Ok(Some(b"SLOW".to_vec()))
            }
            other => Ok(Some(other.to_ascii_uppercase())),
        }
    }
}

fn upper() -> Arc<Upper> {
    Arc::new(Upper {
        calls: AtomicUsize::new(0),
    })
}

/// Replies come from the handler, the echo when it returns none, and `bye`
/// never reaches it.
#[test]
fn the_handler_decides_the_replies() {
    let handler = upper();
    let server = start_with(Config::default(), Some(handler.clone()));
    let mut sock = server.connect();
    send(&mut sock, b"shout");
    assert_eq!(read_exactly(&mut sock, 5), b"SHOUT");
    send(&mut sock, b"echo");
    assert_eq!(
        read_exactly(&mut sock, PREFIX.len() + 4),
        [PREFIX, b"echo"].concat()
    );
    send(&mut sock, b"bye");
    assert_eq!(read_until_closed(&mut sock), BYE);
    assert_eq!(handler.calls.load(Ordering::Relaxed), 2);
    server.0.shutdown();
    assert_eq!(server.0.stats().messages, 3);
}

/// Pipelined frames come back in order, through the handler thread's own
/// writes and through the connection's alike.
#[test]
fn pipelined_replies_keep_their_order() {
    let config = Config {
        protocol: Protocol::Framed,
        ..Config::default()
    };
    let server = start_with(config, Some(upper()));
    let mut sock = server.connect();
    let messages: Vec<Vec<u8>> = (0..300)
        .map(|i| format!("message {i} {}", "y".repeat(i * 37)).into_bytes())
        .collect();
    let burst: Vec<u8> = messages.iter().flat_map(|m| frame(m)).collect();
    send(&mut sock, &burst);
    for message in &messages {
        assert_eq!(read_frame(&mut sock), message.to_ascii_uppercase());
    }
}

/// A handler still at work is activity: the idle timeout does not cut its
/// connection off, and the reply arrives.
#[test]
fn a_slow_handler_is_not_idleness() {
    let config = Config {
        idle_timeout: Some(Duration::from_millis(200)),
        ..Config::default()
    };
    let server = start_with(config, Some(upper()));
    let mut sock = server.connect();
    send(&mut sock, b"slow");
    assert_eq!(read_exactly(&mut sock, 4), b"SLOW");
    // Then silence is idleness again.
    assert!(read_until_closed(&mut sock).is_empty());
    server.0.shutdown();
    assert_eq!(server.0.stats().errors, 0);
}
