//! A pool of kernel pipes for splice(2), held only while data is in flight.
//!
//! An idle connection holds no pipe: two per connection would exhaust the
//! per-user pipe budget (`fs.pipe-user-pages-soft`) at about a thousand
//! connections. A connection takes a pipe when a socket has data, and gives
//! it back once the pipe is empty again. Pipes are enlarged (F_SETPIPE_SZ)
//! so that bulk transfers move a lot per system call.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

/// The size asked for each pipe; the kernel may grant less.
pub const PIPE_SIZE: usize = 256 * 1024;
/// How many empty pipes the pool keeps.
pub const MAX_IDLE: usize = 64;

/// One pipe: data goes in at `write`, out at `read`.
#[derive(Debug)]
pub struct Pipe {
    /// The read end.
    pub read: OwnedFd,
    /// The write end.
    pub write: OwnedFd,
    /// Its capacity in bytes.
    pub capacity: usize,
}

/// Empty pipes, ready for the next connection with data in flight.
#[derive(Debug, Default)]
pub struct PipePool {
    idle: Mutex<Vec<Pipe>>,
}

// === impl PipePool ===

impl PipePool {
    /// An empty pool.
    pub const fn new() -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An empty pipe from the pool, or a new one.
    pub fn take(&self) -> io::Result<Pipe> {
        if let Some(pipe) = self.lock().pop() {
            return Ok(pipe);
        }
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        // Over the per-user budget the kernel refuses to grow it: keep the default.
        let capacity = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE)
            .or_else(|_| rustix::pipe::fcntl_getpipe_size(&write))?;
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    /// Returns an empty pipe to the pool (or closes it when the pool is full).
    pub fn give_back(&self, pipe: Pipe) {
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(pipe);
        }
    }

    /// How many pipes wait in the pool.
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pipe>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}
