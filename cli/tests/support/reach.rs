//! The real `picket reach --format json` over a directory of manifests,
//! for the tests that translate upstream suites to data.

use std::path::Path;
use std::process::Command;

/// Runs `picket reach` on `dir` for `ports` and parses its JSON rows.
pub fn reach<T: serde::de::DeserializeOwned>(dir: &Path, ports: &[u16]) -> Vec<T> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_picket"));
    cmd.arg("reach")
        .arg("--cluster")
        .arg(dir)
        .args(["--format", "json"]);
    for port in ports {
        cmd.arg("--port").arg(port.to_string());
    }
    let out = cmd.output().expect("run picket");
    assert!(
        out.status.success(),
        "picket reach failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("picket reach prints a JSON array")
}
