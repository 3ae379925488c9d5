//! The benchmark's reference: the least a tokio server can do to speak
//! sockdemo's protocols, and so the practical limit for sockdemo's speed.
//!
//! One task per connection, a fixed 1 KiB read buffer (raw) or a buffer the
//! size of the frame (framed), one write per reply, TCP_NODELAY. No limits,
//! no timeouts, no logging, no shutdown: everything sockdemo adds is missing
//! here on purpose.
//!
//! `cargo run --release --example tokio_reference -- --port 0 --protocol raw`

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PREFIX: &[u8] = b"Server received: ";
const BYE: &[u8] = b"Server acknowledging bye. Goodbye!";

fn is_bye(message: &[u8]) -> bool {
    message.trim_ascii().eq_ignore_ascii_case(b"bye")
}

#[tokio::main]
async fn main() -> io::Result<()> {
    let (mut port, mut framed, mut pass_through) = (0u16, false, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--port", Some(p)) => {
                port = p
                    .parse()
                    .map_err(|e| io::Error::other(format!("--port: {e}")))?
            }
            ("--protocol", Some(p)) => framed = p == "framed",
            ("--prefix", Some(p)) => pass_through = p.is_empty(),
            _ => {
                return Err(io::Error::other(
                    "usage: tokio_reference [--port N] [--protocol raw|framed] [--prefix '']",
                ));
            }
        }
    }
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("Server listening on {}", listener.local_addr()?);
    loop {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        tokio::spawn(async move {
            let _ = if framed {
                serve_framed(socket).await
            } else if pass_through {
                serve_pass_through(socket).await
            } else {
                serve_raw(socket).await
            };
        });
    }
}

async fn serve_raw(mut socket: TcpStream) -> io::Result<()> {
    let mut buf = vec![0; 1024];
    let mut out = Vec::with_capacity(PREFIX.len() + buf.len());
    loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if is_bye(&buf[..n]) {
            return socket.write_all(BYE).await;
        }
        out.clear();
        out.extend_from_slice(PREFIX);
        out.extend_from_slice(&buf[..n]);
        socket.write_all(&out).await?;
    }
}

/// Raw with no prefix: the reply is the input, read 256 KiB at a time and
/// written back as it came (one read and one write per message).
async fn serve_pass_through(mut socket: TcpStream) -> io::Result<()> {
    let mut buf = vec![0; 256 * 1024];
    loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if is_bye(&buf[..n]) {
            return socket.write_all(BYE).await;
        }
        socket.write_all(&buf[..n]).await?;
    }
}

async fn serve_framed(mut socket: TcpStream) -> io::Result<()> {
    let mut payload = Vec::new();
    let mut out = Vec::new();
    loop {
        let mut header = [0; 4];
        if socket.read_exact(&mut header).await.is_err() {
            return Ok(());
        }
        payload.resize(u32::from_be_bytes(header) as usize, 0);
        socket.read_exact(&mut payload).await?;
        let reply: &[&[u8]] = if is_bye(&payload) {
            &[BYE]
        } else {
            &[PREFIX, &payload]
        };
        let len: usize = reply.iter().map(|part| part.len()).sum();
        out.clear();
        out.extend_from_slice(&(len as u32).to_be_bytes());
        for part in reply {
            out.extend_from_slice(part);
        }
        socket.write_all(&out).await?;
        if reply[0] == BYE {
            return Ok(());
        }
    }
}
