//! Where a child process listens, as it says in its log: tests start servers
//! on port 0 and read the bound addresses back, instead of guessing a free
//! port (which another process can take between the guess and the bind).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Reads `log` (a child's stderr) on a thread, forwarding every line to this
/// process's stderr, and returns, in the order of `messages`, the `addr=`
/// field of the first line holding each message. `None` when the log ends
/// or `timeout` passes first.
pub fn listening_addrs(
    log: impl Read + Send + 'static,
    messages: &[&'static str],
    timeout: Duration,
) -> Option<Vec<SocketAddr>> {
    let (tx, rx) = mpsc::channel();
    let wanted: Vec<&'static str> = messages.to_vec();
    std::thread::spawn(move || {
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            eprintln!("{line}");
            for (i, message) in wanted.iter().enumerate() {
                if !line.contains(message) {
                    continue;
                }
                let addr = line
                    .split_whitespace()
                    .find_map(|field| field.strip_prefix("addr="))
                    .and_then(|a| a.parse::<SocketAddr>().ok());
                if let Some(addr) = addr {
                    let _ = tx.send((i, addr));
                }
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut found: Vec<Option<SocketAddr>> = vec![None; messages.len()];
    while found.iter().any(Option::is_none) {
        let left = deadline.checked_duration_since(Instant::now())?;
        let (i, addr) = rx.recv_timeout(left).ok()?;
        found[i].get_or_insert(addr);
    }
    found.into_iter().collect()
}
