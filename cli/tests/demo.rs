//! `picket demo` end to end: it must finish with exit 0, show the seed's
//! story with real connections, tear down the live connection, and leave no
//! namespace behind. Needs root (CI runs as root).

use std::process::Command;

#[test]
fn demo_tells_the_bookstore_story_and_cleans_up() {
    if !picket_lab::can_run() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the demo test is mandatory in CI"
        );
        eprintln!("skipping: picket demo needs root");
        return;
    }
    let child = Command::new(env!("CARGO_BIN_EXE_picket"))
        .arg("demo")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run picket demo");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |title: &str, from: &str| -> String {
        let section = stdout.split(title).nth(1).expect("section present");
        section
            .lines()
            .find(|l| l.trim_start().starts_with(from))
            .expect("row present")
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    // Columns: api coffeeshop frontend inventory.
    assert_eq!(row("Real connections to port 80", "coffeeshop"), "✗ ✓ ✓ ✓");
    assert_eq!(row("Real connections to port 80", "frontend"), "✓ ✓ ✓ ✓");
    assert_eq!(
        row("Real connections after the change", "frontend"),
        "✗ ✓ ✓ ✓"
    );
    assert_eq!(
        row("Real connections after the change", "inventory"),
        "✓ ✓ ✓ ✓"
    );
    assert!(
        stdout.contains("the live connection was torn down"),
        "{stdout}"
    );
    // The egress act: the frontend reaches only the API, reset at the source.
    assert_eq!(
        row("Real connections with the egress policy", "frontend"),
        "✓ ✗ ✓ ✗"
    );
    assert_eq!(
        row("Real connections with the egress policy", "coffeeshop"),
        "✗ ✓ ✓ ✓"
    );
    assert!(
        stdout.contains("frontend ✗ (reset by its own sidecar")
            && stdout.contains("coffeeshop ✓, inventory ✓"),
        "{stdout}"
    );
    assert_eq!(
        stdout
            .matches("all 16 results match `picket reach`")
            .count(),
        3
    );
    let netns = std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(
        !netns.iter().any(|n| n.starts_with(&format!("pkt-{pid}-"))),
        "leftover namespaces: {netns:?}"
    );
}
