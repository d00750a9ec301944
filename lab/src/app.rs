//! A toy app for lab pods: a TCP echo server that counts what it saw, and
//! records the client address of each connection (as an app's access log would).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::in_netns;

/// An echo server listening in a pod namespace.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    counts: Arc<Counts>,
}

/// What the echo server saw.
#[derive(Debug, Default)]
pub struct Counts {
    /// Connections accepted.
    pub accepted: AtomicUsize,
    /// Connections that ended with ECONNRESET.
    pub reset: AtomicUsize,
    /// The client address of each accepted connection, in order.
    peers: Mutex<Vec<IpAddr>>,
    stop: AtomicBool,
}

// === impl EchoServer ===

impl EchoServer {
    /// Starts an echo server on `addr` inside `netns`.
    pub fn start(netns: &str, addr: SocketAddr) -> io::Result<Self> {
        let listener = in_netns(netns, || TcpListener::bind(addr))??;
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        std::thread::Builder::new()
            .name(format!("echo-{addr}"))
            .spawn(move || {
                for stream in listener.incoming() {
                    if c.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    if let Ok(peer) = stream.peer_addr() {
                        c.peers
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(peer.ip());
                    }
                    c.accepted.fetch_add(1, Ordering::SeqCst);
                    let c = c.clone();
                    std::thread::spawn(move || echo(stream, &c));
                }
            })?;
        Ok(Self { addr, counts })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    /// The client address of each connection accepted so far, in order.
    pub fn peers(&self) -> Vec<IpAddr> {
        self.counts
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Connections that ended with a reset from the proxy.
    pub fn resets(&self) -> usize {
        self.counts.reset.load(Ordering::SeqCst)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.counts.stop.store(true, Ordering::SeqCst);
    }
}

fn echo(mut stream: TcpStream, counts: &Counts) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => {
                let _ = stream.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if let Err(e) = stream.write_all(&buf[..n]) {
                    if e.kind() == io::ErrorKind::ConnectionReset {
                        counts.reset.fetch_add(1, Ordering::SeqCst);
                    }
                    return;
                }
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::ConnectionReset {
                    counts.reset.fetch_add(1, Ordering::SeqCst);
                }
                return;
            }
        }
    }
}
