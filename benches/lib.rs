//! Support shared by the benches in `benches/`.

pub mod procfs;

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// The open-file limit the benches ask for.
pub const NOFILE: u64 = 65_536;

/// Raises the open-file limit as far as the hard limit allows (children
/// inherit it), and checks that it is enough.
pub fn raise_nofile(needed: u64) -> Result<()> {
    let old = getrlimit(Resource::Nofile);
    let current = old.maximum.map_or(NOFILE, |m| m.min(NOFILE));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(current),
            maximum: old.maximum,
        },
    )
    .context("cannot raise RLIMIT_NOFILE")?;
    ensure!(
        current >= needed,
        "the open-file limit is {current}; the bench needs {needed}"
    );
    Ok(())
}

/// `target/`, from the bench binary's path (`target/release/deps/<bench>-*`).
pub fn target_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .nth(3)
        .map(PathBuf::from)
        .context("cannot find target/ from the bench's path")
}
