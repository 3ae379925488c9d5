//! Helpers shared by the integration tests: a server on port 0 and raw peers.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use sockdemo::handling::{Handler, RunOn};
use sockdemo::serve::{Config, Mode, Server};

pub const PREFIX: &[u8] = b"Server received: ";
pub const BYE: &[u8] = b"Server acknowledging bye. Goodbye!";

/// A server serving in the background on 127.0.0.1:0; closed on drop.
pub struct Running(pub Server);

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.0.local_addr()
    }

    pub fn connect(&self) -> TcpStream {
        let sock = TcpStream::connect(self.addr()).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.close();
    }
}

pub fn start(config: Config) -> Running {
    start_with(config, None)
}

pub fn start_with(config: Config, handler: Option<Arc<dyn Handler>>) -> Running {
    let server = Server::bind("127.0.0.1", 0, config, handler.map(RunOn::from)).unwrap();
    server.start(Mode::Forever).unwrap();
    Running(server)
}

pub fn read_exactly(sock: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    sock.read_exact(&mut buf).unwrap();
    buf
}

pub fn read_to_close(sock: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    sock.read_to_end(&mut buf).unwrap();
    buf
}

/// Everything the server sends until it closes: EOF, or a reset (the close
/// of a socket with unread bytes). A peer still open after the read timeout
/// fails the test.
pub fn read_until_closed(sock: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    match sock.read_to_end(&mut buf) {
        Ok(_) => buf,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => buf,
        Err(e) => panic!("the server did not close the connection: {e}"),
    }
}

/// Polls `condition` until it holds, for state with no event to wait on (a
/// server's counters); panics after ten seconds.
pub fn wait_until(mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met in 10 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

pub fn read_frame(sock: &mut TcpStream) -> Vec<u8> {
    let header = read_exactly(sock, 4);
    let len = u32::from_be_bytes(header.try_into().unwrap()) as usize;
    read_exactly(sock, len)
}

pub fn send(sock: &mut TcpStream, bytes: &[u8]) {
    sock.write_all(bytes).unwrap();
}

/// Opens two connections that never finish opening, on a server with one
/// place for them (`max_handshakes` 1): the second makes the first go, and
/// the shutdown closes the second. Checks that each close is counted as
/// what did it (`evicted`, `shutdown`) and none as an error; returns the
/// metrics for what else the caller checks.
pub fn opening_connections_are_closed_by_the_server(server: &Running) -> String {
    let mut first = server.connect();
    wait_until(|| server.0.stats().connections_opening == 1);
    // No place left: the first, with no more progress than the second, goes.
    let mut second = server.connect();
    assert!(read_until_closed(&mut first).is_empty());
    wait_until(|| {
        server
            .0
            .metrics()
            .contains("sockdemo_connections_closed_total{reason=\"evicted\"} 1")
    });
    wait_until(|| server.0.stats().connections_opening == 1);
    server.0.shutdown();
    assert!(read_until_closed(&mut second).is_empty());
    let metrics = server.0.metrics();
    assert!(
        metrics.contains("sockdemo_connections_closed_total{reason=\"shutdown\"} 1"),
        "{metrics}"
    );
    assert_eq!(server.0.stats().errors, 0, "{metrics}");
    metrics
}
