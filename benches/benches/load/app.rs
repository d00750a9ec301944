//! The app of the server pods: one child process, pinned to the pods' core,
//! listening on the app port in every server pod's namespace (a socket stays
//! in the namespace it was made in), on a single-threaded runtime.
//!
//! The protocol: the client sends 64-byte requests. A request that starts
//! with [`BULK`] turns the connection into a source: the app writes until the
//! client goes away. Any other request gets a 64-byte reply, and the app
//! waits for the next request or the end of the connection. A connection
//! that starts with `GET ` speaks HTTP/1.1 instead: every request gets
//! [`HTTP_RESPONSE`], and the connection stays open (keep-alive).

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;

use rustix::process::{Pid, Signal};
use rustix::thread::CpuSet;
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The hidden first argument that makes the bench binary the app.
pub const ARG: &str = "--picket-load-app";
/// The hidden first argument that makes the bench binary an idle spinner.
pub const SPIN_ARG: &str = "--picket-load-spin";
/// The size of a request and of a reply.
pub const MSG: usize = 64;
/// The first byte of a request that asks for a bulk download.
pub const BULK: u8 = b'B';
/// What the app writes per call when it is a bulk source.
const CHUNK: usize = 256 * 1024;
static ZEROS: [u8; CHUNK] = [0; CHUNK];
const REPLY: [u8; MSG] = [b'r'; MSG];
/// How an HTTP connection starts.
const HTTP_METHOD: &[u8] = b"GET ";
/// The app's answer to every HTTP request: a small API response.
pub const HTTP_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"status\": \"ok\"}\n";

/// Runs the app: `ARG <parent pid> <core> <netns>=<ip:port>...`. Prints
/// `ready` once every listener is bound; dies with its parent.
pub fn main(args: &[String]) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load app: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An idle spinner: `SPIN_ARG <parent pid>`, started under `chrt --idle`
/// and `taskset`. It runs only when its core would otherwise be idle, so
/// the core never halts: on a virtual machine a halted vCPU wakes up late,
/// and whichever mode leaves a core idle most (direct) would pay for it.
pub fn spin_main(args: &[String]) -> ExitCode {
    let parent = args.first().and_then(|p| p.parse::<i32>().ok());
    let watched = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    if watched.is_err() || parent.and_then(Pid::from_raw) != rustix::process::getppid() {
        return ExitCode::FAILURE;
    }
    loop {
        std::hint::spin_loop();
    }
}

fn run(args: &[String]) -> io::Result<()> {
    let usage = || io::Error::other("usage: --picket-load-app PARENT CORE NETNS=IP:PORT...");
    let [parent, core, specs @ ..] = args else {
        return Err(usage());
    };
    let parent: i32 = parent.parse().map_err(|_| usage())?;
    let core: usize = core.parse().map_err(|_| usage())?;
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
    if rustix::process::getppid() != Pid::from_raw(parent) {
        return Err(io::Error::other(
            "the benchmark exited before the app started",
        ));
    }
    let mut cpus = CpuSet::new();
    cpus.set(core);
    rustix::thread::sched_setaffinity(None, &cpus)?;

    let mut listeners = Vec::new();
    for spec in specs {
        let (netns, addr) = spec.split_once('=').ok_or_else(usage)?;
        let addr: SocketAddr = addr.parse().map_err(|_| usage())?;
        listeners.push(picket_lab::in_netns(netns, || bind(addr))??);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async {
        for listener in listeners {
            tokio::spawn(accept(TcpListener::from_std(listener)?));
        }
        println!("ready");
        std::future::pending::<io::Result<()>>().await
    })
}

fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

async fn accept(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream));
            }
            // EMFILE and friends: back off instead of spinning.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

async fn serve(mut stream: TcpStream) {
    let mut request = [0u8; MSG];
    let (method, rest) = request.split_at_mut(HTTP_METHOD.len());
    if stream.read_exact(method).await.is_err() {
        return;
    }
    if method == HTTP_METHOD {
        return serve_http(stream).await;
    }
    if stream.read_exact(rest).await.is_err() {
        return;
    }
    loop {
        if request[0] == BULK {
            while stream.write_all(&ZEROS).await.is_ok() {}
            return;
        }
        if stream.write_all(&REPLY).await.is_err() || stream.read_exact(&mut request).await.is_err()
        {
            return;
        }
    }
}

/// HTTP/1.1 keep-alive: one [`HTTP_RESPONSE`] per request head (requests
/// have no body), answered as soon as the head is complete; pipelined heads
/// get their responses in one write.
async fn serve_http(mut stream: TcpStream) {
    const END: &[u8] = b"\r\n\r\n";
    let mut pending = HTTP_METHOD.to_vec();
    let mut buffer = [0u8; 4096];
    loop {
        let mut answers = 0;
        while let Some(at) = pending.windows(END.len()).position(|w| w == END) {
            pending.drain(..at + END.len());
            answers += 1;
        }
        let written = match answers {
            0 => Ok(()),
            1 => stream.write_all(HTTP_RESPONSE).await,
            n => stream.write_all(&HTTP_RESPONSE.repeat(n)).await,
        };
        if written.is_err() {
            return;
        }
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => pending.extend_from_slice(&buffer[..n]),
        }
        if pending.len() > 64 * 1024 {
            return;
        }
    }
}
