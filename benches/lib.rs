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

/// Builds a workspace binary in release mode (a no-op when it is up to
/// date) and returns its path; the environment variable `env_override`
/// names another binary instead.
pub fn release_binary(
    target: &std::path::Path,
    package: &str,
    bin: &str,
    env_override: &str,
) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env_override) {
        return Ok(path.into());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    eprintln!("building {bin} (release)");
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "-p", package, "--bin", bin])
        .arg("--manifest-path")
        .arg(&manifest)
        .status()
        .with_context(|| format!("cannot run cargo to build {bin}"))?;
    ensure!(status.success(), "cargo build of {bin} failed");
    let binary = target.join("release").join(bin);
    ensure!(binary.exists(), "no {}", binary.display());
    Ok(binary)
}
