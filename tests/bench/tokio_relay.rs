//! The fan-out benchmark's reference: a plain tokio relay with no Python.
//! Every framed message one connection sends goes to every other
//! connection, through a channel per connection whose writer task writes
//! what has queued in one go. No limits, no timeouts, no slow-reader bound.
//!
//! `cargo run --release --example tokio_relay -- --port 0`

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

type Peers = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Arc<[u8]>>>>>;

#[tokio::main]
async fn main() -> io::Result<()> {
    let mut port = 0u16;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--port", Some(p)) => port = p.parse().map_err(io::Error::other)?,
            // Framed only: the relay has no other protocol.
            ("--protocol", Some(_)) => {}
            _ => return Err(io::Error::other("usage: tokio_relay [--port N]")),
        }
    }
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("Server listening on {}", listener.local_addr()?);
    let peers: Peers = Arc::default();
    let ids = AtomicU64::new(0);
    loop {
        let (stream, _) = listener.accept().await?;
        let id = ids.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve(stream, id, peers.clone()));
    }
}

async fn serve(stream: TcpStream, id: u64, peers: Peers) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Arc<[u8]>>();
    peers
        .lock()
        .map_err(|_| io::Error::other("poisoned"))?
        .insert(id, tx);
    tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(message) = rx.recv().await {
            out.extend_from_slice(&message);
            while let Ok(more) = rx.try_recv() {
                out.extend_from_slice(&more);
            }
            if writer.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
    });
    let mut reader = BufReader::new(reader);
    let result = async {
        loop {
            let len = reader.read_u32().await? as usize;
            let mut frame = vec![0; 4 + len];
            frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
            reader.read_exact(&mut frame[4..]).await?;
            let frame: Arc<[u8]> = frame.into();
            let peers = peers.lock().map_err(|_| io::Error::other("poisoned"))?;
            for (other, tx) in peers.iter() {
                if *other != id {
                    let _ = tx.send(frame.clone());
                }
            }
        }
    }
    .await;
    if let Ok(mut peers) = peers.lock() {
        peers.remove(&id);
    }
    result
}
