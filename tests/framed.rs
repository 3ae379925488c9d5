//! The framed protocol and TLS, byte for byte, against the core server.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::ServerName;
use sockdemo::Protocol;
use sockdemo::clients::{Client, Config as ClientConfig};
use sockdemo::serve::Config;
use sockdemo::tls;

fn framed() -> Config {
    Config {
        protocol: Protocol::Framed,
        ..Config::default()
    }
}

/// Framed, with messages of at most `limit` bytes.
fn framed_up_to(limit: usize) -> Config {
    Config {
        max_message_size: limit,
        ..framed()
    }
}

fn never() -> sockdemo::Result<()> {
    Ok(())
}

/// A development certificate, as server and client TLS settings; the
/// directory must outlive neither.
struct Tls {
    _dir: tempfile::TempDir,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn tls() -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = tls::generate_self_signed(dir.path()).unwrap();
    Tls {
        server: tls::server_config(&cert, &key).unwrap(),
        client: tls::client_config(&cert).unwrap(),
        _dir: dir,
    }
}

fn name(host: &str) -> ServerName<'static> {
    ServerName::try_from(host.to_owned()).unwrap()
}

/// Frames of many sizes, pipelined in one write, come back in order.
#[test]
fn pipelined_frames_round_trip_in_order() {
    let server = start(framed());
    let mut sock = server.connect();
    let messages: Vec<Vec<u8>> = (0..200).map(|i| vec![i as u8; i * 37]).collect();
    let stream: Vec<u8> = messages.iter().flat_map(|m| frame(m)).collect();
    send(&mut sock, &stream);
    for message in &messages {
        let reply = read_frame(&mut sock);
        assert_eq!(&reply[..PREFIX.len()], PREFIX);
        assert_eq!(&reply[PREFIX.len()..], &message[..]);
    }
}

/// Large payloads, echoed from the read buffer beside their headers rather
/// than copied, keep their place among small ones byte for byte, also when
/// the socket takes the replies a piece at a time; a `bye` behind them
/// still ends the session.
#[test]
fn large_and_small_frames_interleaved_come_back_byte_for_byte() {
    let server = start(framed());
    let mut sock = server.connect();
    let messages: Vec<Vec<u8>> = (0..24usize)
        .map(|i| {
            let len = [3, 4096 + i, 700_000 + i][i % 3];
            (0..len).map(|j| (i * 31 + j * 7 % 251) as u8).collect()
        })
        .collect();
    let mut stream: Vec<u8> = messages.iter().flat_map(|m| frame(m)).collect();
    stream.extend(frame(b"bye"));
    let mut writer = sock.try_clone().unwrap();
    let sender = std::thread::spawn(move || send(&mut writer, &stream));
    for (i, message) in messages.iter().enumerate() {
        let reply = read_frame(&mut sock);
        assert_eq!(&reply[..PREFIX.len()], PREFIX, "reply {i}");
        assert!(reply[PREFIX.len()..] == message[..], "reply {i} differs");
    }
    assert_eq!(read_frame(&mut sock), BYE);
    assert!(read_until_closed(&mut sock).is_empty());
    sender.join().unwrap();
}

/// A declared length over the limit gets an error frame and a close.
#[test]
fn oversized_length_is_refused_from_the_header() {
    let server = start(framed_up_to(10));
    let mut sock = server.connect();
    send(&mut sock, &[0, 0, 0, 11]);
    assert_eq!(
        read_frame(&mut sock),
        b"Error: message of 11 bytes exceeds the limit of 10 bytes"
    );
    assert_eq!(read_to_close(&mut sock), b"");
}

/// A refused header behind a large frame: the large frame's echo, written
/// from the read buffer, goes out first, then the refusal, then the close.
#[test]
fn a_refusal_follows_the_large_echo_before_it() {
    let server = start(framed_up_to(10_000));
    let mut sock = server.connect();
    let large = vec![b'L'; 9_000];
    send(&mut sock, &[frame(&large), vec![0, 0, 0x27, 0x11]].concat());
    assert_eq!(read_frame(&mut sock), [PREFIX, &large].concat());
    assert_eq!(
        read_frame(&mut sock),
        b"Error: message of 10001 bytes exceeds the limit of 10000 bytes"
    );
    assert_eq!(read_to_close(&mut sock), b"");
}

/// A frame of exactly the limit is answered; one byte more is refused.
#[test]
fn the_limit_is_inclusive() {
    let config = framed_up_to(1000);
    let server = start(config);
    let mut sock = server.connect();
    let at_limit = vec![b'z'; 1000];
    send(&mut sock, &frame(&at_limit));
    assert_eq!(read_frame(&mut sock), [PREFIX, &at_limit].concat());
    send(&mut sock, &1001u32.to_be_bytes());
    let refusal = read_frame(&mut sock);
    assert_eq!(
        refusal,
        b"Error: message of 1001 bytes exceeds the limit of 1000 bytes"
    );
    assert!(read_until_closed(&mut sock).is_empty());
}

/// A frame that never completes is cut off by the message timeout.
#[test]
fn slow_frame_hits_the_message_timeout() {
    let server = start(Config {
        message_timeout: Some(Duration::from_millis(200)),
        ..framed()
    });
    let mut sock = server.connect();
    send(&mut sock, &[0, 0, 0, 100, b'x']);
    // Closed once the deadline passes; never the echo.
    assert!(read_until_closed(&mut sock).is_empty());
    assert_eq!(server.0.stats().errors, 1);
}

/// The blocking client speaks TLS to the server, framed, with large messages.
#[test]
fn tls_client_and_server() {
    let tls = tls();
    let server = start(Config {
        tls: Some(tls.server.clone()),
        ..framed()
    });
    let config = ClientConfig {
        protocol: Protocol::Framed,
        timeout: Some(Duration::from_secs(10)),
        tls: Some((tls.client.clone(), name("localhost"))),
        ..ClientConfig::default()
    };
    let mut client =
        Client::connect("127.0.0.1", server.addr().port(), config, &mut never).unwrap();
    assert!(client.is_tls());
    let big = vec![7u8; 300_000];
    let reply = client.request(&big, &mut never).unwrap();
    assert_eq!(reply.len(), PREFIX.len() + big.len());
    assert_eq!(client.request(b"bye", &mut never).unwrap(), BYE);
}

/// A plaintext peer on the TLS port is dropped; the server goes on.
#[test]
fn plaintext_on_a_tls_port_is_contained() {
    let tls = tls();
    let server = start(Config {
        tls: Some(tls.server.clone()),
        ..Config::default()
    });
    let mut plain = TcpStream::connect(server.addr()).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    // The server answers plaintext with a TLS alert, then closes.
    let mut junk = Vec::new();
    match plain.read_to_end(&mut junk) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    let config = ClientConfig {
        timeout: Some(Duration::from_secs(10)),
        tls: Some((tls.client.clone(), name("127.0.0.1"))),
        ..ClientConfig::default()
    };
    let mut client =
        Client::connect("127.0.0.1", server.addr().port(), config, &mut never).unwrap();
    assert_eq!(
        client.request(b"ok", &mut never).unwrap(),
        b"Server received: ok"
    );
    // Counted as a failed handshake, and as the failure of that connection.
    let metrics = server.0.metrics();
    assert!(
        metrics.contains("sockdemo_tls_handshake_failures_total 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("sockdemo_errors_total{kind=\"tls\"} 1\n"));
}

/// The one-shot mode stops at its message allowance even when replies to a
/// pipelined burst are written out in several pieces.
#[test]
fn message_allowance_holds_across_partial_flushes() {
    use sockdemo::serve::{Mode, Server};
    let server = Server::bind("127.0.0.1", 0, framed(), None).unwrap();
    server
        .start(Mode::Once {
            max_messages: Some(3),
        })
        .unwrap();
    let mut sock = TcpStream::connect(server.local_addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let big = vec![b'x'; 40 * 1024];
    let burst: Vec<u8> = (0..5).flat_map(|_| frame(&big)).collect();
    sock.write_all(&burst).unwrap();
    for _ in 0..3 {
        assert_eq!(read_frame(&mut sock).len(), PREFIX.len() + big.len());
    }
    // The server closes after the third reply (unread bytes may turn that into a reset).
    let rest = read_until_closed(&mut sock);
    assert!(rest.is_empty(), "{} more bytes", rest.len());
    server.close();
}

/// A frame trickled a byte at a time is still cut off by the message
/// timeout: the deadline runs from the frame's first byte, not the last.
#[test]
fn a_trickled_frame_is_cut_off_too() {
    let limit = Duration::from_millis(400);
    let server = start(Config {
        message_timeout: Some(limit),
        ..framed()
    });
    let mut sock = server.connect();
    let started = std::time::Instant::now();
    let mut sent = 0;
    // 100 bytes promised, one sent every 50 ms: 5 s to finish, if allowed.
    send(&mut sock, &[0, 0, 0, 100]);
    while sock.write_all(b"x").is_ok() && sent < 100 {
        sent += 1;
        std::thread::sleep(Duration::from_millis(50));
        if started.elapsed() > limit * 3 {
            break;
        }
    }
    assert!(read_until_closed(&mut sock).is_empty());
    assert!(
        started.elapsed() < limit * 3,
        "open for {:?}",
        started.elapsed()
    );
    server.0.shutdown();
    assert_eq!(server.0.stats().errors, 1);
}

/// Closing in the middle of a frame is an error; closing between frames is
/// an ordinary ending.
#[test]
fn a_close_mid_frame_is_an_error_and_between_frames_is_not() {
    let server = start(framed());
    let mut clean = server.connect();
    send(&mut clean, &frame(b"whole"));
    assert_eq!(read_frame(&mut clean), [PREFIX, b"whole"].concat());
    drop(clean);
    let finished = |n| {
        let stats = server.0.stats();
        stats.connections_accepted == n
            && stats.connections_active == 0
            && stats.connections_opening == 0
    };
    wait_until(|| finished(1));
    assert_eq!(server.0.stats().errors, 0);
    let mut cut = server.connect();
    send(&mut cut, &[0, 0, 0, 10, b'p', b'a', b'r']);
    drop(cut);
    wait_until(|| finished(2));
    assert_eq!(server.0.stats().errors, 1);
}

/// Senders that stall mid-frame hold the budget for what they sent, not for
/// what their headers declared: a client's large frame behind them is
/// answered at once, not when their message timeout cuts them off.
#[test]
fn stalled_frames_do_not_hold_the_budget_for_what_they_declared() {
    let server = start(Config {
        max_buffered_bytes: 4 << 20,
        message_timeout: Some(Duration::from_secs(120)),
        ..framed()
    });
    // Forty frames declared at 1 MiB (40 MiB against a 4 MiB budget), each
    // stalled after 40 KB.
    let mut stalled: Vec<_> = (0..40).map(|_| server.connect()).collect();
    for sock in &mut stalled {
        send(sock, &(1u32 << 20).to_be_bytes());
        send(sock, &[b's'; 40_000]);
    }
    // At least each one's first read is in.
    wait_until(|| server.0.stats().bytes_in >= 40 * 16_000);
    let payload = vec![b'n'; 500_000];
    let mut client = server.connect();
    // The read timeout (10 s) fails the test long before the stalled
    // frames' message timeout would free their shares.
    send(&mut client, &frame(&payload));
    assert_eq!(read_frame(&mut client), [PREFIX, &payload[..]].concat());
    server.0.shutdown();
}

/// A first message under way counts against the budget like any other,
/// though its connection holds no slot yet. Eight connections each send
/// 300 KB of a 1 MiB frame and stall, against a 1 MiB budget: by the
/// banker's rule one of them may grow (with two holding any, neither could
/// finish), so the server reads that one's 300 KB and a first read of each
/// of the others, and no more.
#[test]
fn first_frames_under_way_stay_within_the_budget() {
    const PEERS: u64 = 8;
    const SENT: u64 = 300_000;
    const FIRST_READ: u64 = 16 * 1024;
    let server = start(Config {
        max_buffered_bytes: 1 << 20,
        max_clients: 1,
        ..framed()
    });
    let senders: Vec<_> = (0..PEERS)
        .map(|_| {
            let mut sock = server.connect();
            std::thread::spawn(move || {
                // Blocks once the server stops reading; fails when it closes.
                let _ = sock.write_all(&(1u32 << 20).to_be_bytes());
                let _ = sock.write_all(&[b's'; SENT as usize]);
                sock
            })
        })
        .collect();
    wait_until(|| server.0.stats().bytes_in >= PEERS * FIRST_READ);
    // The server reads on only if the bound does not hold: give it the time.
    std::thread::sleep(Duration::from_millis(500));
    let read = server.0.stats().bytes_in;
    let bound = (4 + SENT) + (PEERS - 1) * FIRST_READ;
    assert!(read <= bound, "{read} bytes read, at most {bound} expected");
    server.0.shutdown();
    for sender in senders {
        drop(sender.join().unwrap());
    }
}

/// A reply larger than the socket buffers reaches a slow reader whole: the
/// connection waits for it to read, within the write timeout.
#[test]
fn a_slow_reader_gets_large_replies_whole() {
    let server = start(framed_up_to(8 << 20));
    let mut sock = server.connect();
    // 24 MB of replies: far more than the socket buffers hold.
    let big = vec![b'q'; 6 << 20];
    let burst = [frame(&big), frame(&big), frame(&big), frame(&big)].concat();
    let mut writer = sock.try_clone().unwrap();
    let sender = std::thread::spawn(move || send(&mut writer, &burst));
    std::thread::sleep(Duration::from_millis(300)); // the server is mid-write
    for _ in 0..4 {
        let reply = read_frame(&mut sock);
        assert_eq!(reply.len(), PREFIX.len() + big.len());
        assert!(reply.ends_with(&big));
    }
    sender.join().unwrap();
}

/// Peers that each send most of a large frame and stall wait for the
/// buffered-bytes budget rather than deadlock on it: once they finish, every
/// one is answered.
#[test]
fn half_sent_frames_beyond_the_budget_are_all_answered() {
    let server = start(Config {
        max_buffered_bytes: 2 << 20,
        ..framed()
    });
    let payload = vec![b'h'; 600 * 1000];
    let whole = frame(&payload);
    let mut peers: Vec<_> = (0..8).map(|_| server.connect()).collect();
    for peer in &mut peers {
        send(peer, &whole[..whole.len() - 1]);
    }
    for peer in &mut peers {
        send(peer, &whole[whole.len() - 1..]);
    }
    for peer in &mut peers {
        assert_eq!(read_frame(peer), [PREFIX, &payload[..]].concat());
    }
}

/// Handshakes the server cuts short (to make room, or for its shutdown)
/// are neither errors nor TLS failures.
#[test]
fn handshakes_the_server_cuts_short_are_not_failures() {
    let tls = tls();
    let server = start(Config {
        tls: Some(tls.server.clone()),
        max_clients: 1,
        max_handshakes: 1,
        ..framed()
    });
    let metrics = opening_connections_are_closed_by_the_server(&server);
    assert!(!metrics.contains("kind=\"tls\"} 1"), "{metrics}");
}

/// With no prefix, a frame's echo is the frame itself, but the size limit
/// still holds: a frame declared too large is refused, not passed back.
#[test]
fn an_oversized_frame_is_refused_with_no_prefix_too() {
    let server = start(Config {
        reply_prefix: Vec::new(),
        max_message_size: 1000,
        ..framed()
    });
    let mut sock = server.connect();
    send(&mut sock, &frame(b"fits"));
    assert_eq!(read_frame(&mut sock), b"fits");
    send(&mut sock, &[0, 0, 0x10, 0]);
    assert_eq!(
        read_frame(&mut sock),
        b"Error: message of 4096 bytes exceeds the limit of 1000 bytes"
    );
    assert!(read_until_closed(&mut sock).is_empty());
    wait_until(|| {
        server
            .0
            .metrics()
            .contains("sockdemo_errors_total{kind=\"too_large\"} 1")
    });
}
