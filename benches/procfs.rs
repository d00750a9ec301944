//! What the kernel says about a process: CPU time, memory, open files, run-queue wait.
//! Shared by the `load` and `propagation` benches.

use std::io;

fn read(pid: u32, file: &str) -> io::Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
}

/// User plus system CPU seconds of the whole process, exited threads included.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = read(pid, "stat")?;
    // The command name may hold spaces: count fields after its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("bad /proc/PID/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad field {n} in /proc/{pid}/stat")))
    };
    let ticks = field(14)? + field(15)?;
    Ok(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

fn kib_line(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Proportional set size in KiB (`Pss` of `smaps_rollup`).
pub fn pss_kib(pid: u32) -> io::Result<u64> {
    kib_line(&read(pid, "smaps_rollup")?, "Pss:")
        .ok_or_else(|| io::Error::other(format!("no Pss in /proc/{pid}/smaps_rollup")))
}

/// PSS of anonymous memory (heap, stacks) and of file pages (the binary
/// and libraries), in KiB, from `smaps_rollup`.
pub fn pss_anon_file_kib(pid: u32) -> io::Result<(u64, u64)> {
    let text = read(pid, "smaps_rollup")?;
    let get = |key| {
        kib_line(&text, key)
            .ok_or_else(|| io::Error::other(format!("no {key} in /proc/{pid}/smaps_rollup")))
    };
    Ok((get("Pss_Anon:")?, get("Pss_File:")?))
}

/// Open file descriptors.
pub fn fd_count(pid: u32) -> io::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Threads of the process.
pub fn threads(pid: u32) -> io::Result<u64> {
    kib_line(&read(pid, "status")?, "Threads:")
        .ok_or_else(|| io::Error::other(format!("no Threads in /proc/{pid}/status")))
}

/// Resident set size in KiB (`VmRSS` of `status`).
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    kib_line(&read(pid, "status")?, "VmRSS:")
        .ok_or_else(|| io::Error::other(format!("no VmRSS in /proc/{pid}/status")))
}

/// Peak resident set size in KiB (`VmHWM` of `status`).
pub fn hwm_kib(pid: u32) -> io::Result<u64> {
    kib_line(&read(pid, "status")?, "VmHWM:")
        .ok_or_else(|| io::Error::other(format!("no VmHWM in /proc/{pid}/status")))
}

/// The process's command name.
pub fn comm(pid: u32) -> io::Result<String> {
    Ok(read(pid, "comm")?.trim().to_string())
}

/// The 1-minute load average, as a measure of the machine's noise.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Nanoseconds the threads of a process spent runnable but waiting for a
/// CPU (second field of `/proc/PID/task/TID/schedstat`), summed over the
/// threads whose name starts with `prefix` (all threads for `""`).
pub fn run_queue_wait_ns(pid: u32, prefix: &str) -> io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = entry?.path();
        // Threads may exit while we read: skip those.
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else {
            continue;
        };
        if !comm.starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(task.join("schedstat")) else {
            continue;
        };
        total += stat
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}
