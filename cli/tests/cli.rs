//! `picket reach` and `picket explain`, run as the real binary on the bundled example.

use std::path::PathBuf;
use std::process::{Command, Output};

fn picket(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_picket"))
        .args(args)
        .output()
        .expect("run picket")
}

fn bookstore() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/examples/bookstore")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn reach_json_tells_the_seed_story() {
    let out = picket(&["reach", "--cluster", &bookstore(), "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let probes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(probes.len(), 16, "4 pods, each pair once on port 80");
    let keys: Vec<(String, String, u64)> = probes
        .iter()
        .map(|p| {
            (
                p["from"].as_str().unwrap().to_string(),
                p["to"].as_str().unwrap().to_string(),
                p["port"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "sorted by from, to, port");
    for p in &probes {
        let obj = p.as_object().unwrap();
        let mut fields: Vec<&str> = obj.keys().map(String::as_str).collect();
        fields.sort();
        assert_eq!(
            fields,
            ["allowed", "enforced", "from", "port", "protocol", "reason", "to"]
        );
        assert_eq!(p["protocol"], "TCP");
        assert_eq!(
            p["enforced"], true,
            "the namespace is labelled for injection"
        );
    }
    let to_api: Vec<(&str, bool)> = probes
        .iter()
        .filter(|p| p["to"] == "bookstore/api")
        .map(|p| (p["from"].as_str().unwrap(), p["allowed"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        to_api,
        [
            ("bookstore/api", true),
            ("bookstore/coffeeshop", false),
            ("bookstore/frontend", true),
            ("bookstore/inventory", true),
        ]
    );
}

#[test]
fn reach_table_with_explain_names_the_deciding_rule() {
    let out = picket(&[
        "reach",
        "--cluster",
        &bookstore(),
        "--explain",
        "--port",
        "80",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("port 80/TCP"), "{text}");
    assert!(
        text.contains("allowed by bookstore/api-allow rule 1"),
        "{text}"
    );
    assert!(
        text.contains("16 probes over 4 pods and 1 port: 15 allowed, 1 denied"),
        "{text}"
    );
}

#[test]
fn explain_prints_every_rule_tried() {
    let out = picket(&[
        "explain",
        "--cluster",
        &bookstore(),
        "--from",
        "bookstore/coffeeshop",
        "--to",
        "bookstore/api",
        "--port",
        "80",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("DENIED"), "{text}");
    assert!(text.contains("rule 0: peer: no entry matches"), "{text}");
    assert!(text.contains("rule 1: peer: no entry matches"), "{text}");
}

#[test]
fn bad_input_fails_with_file_object_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{podSelector: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}}]}]\n",
    )
    .unwrap();
    let out = picket(&["reach", "--cluster", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("bad.yaml: NetworkPolicy x/p: spec.ingress[0].from[0].podSelector.matchExpressions[0].operator"), "{err}");
}

#[test]
fn unknown_pod_in_explain_is_a_clear_error() {
    let out = picket(&[
        "explain",
        "--cluster",
        &bookstore(),
        "--from",
        "bookstore/nope",
        "--to",
        "bookstore/api",
        "--port",
        "80",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--from bookstore/nope: no such pod"), "{err}");
}

/// The bookstore example plus a deny-all of `api` in audit mode, in a
/// directory of its own.
fn bookstore_with_an_audited_lockdown() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(bookstore()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        dir.path().join("lockdown.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: lockdown, namespace: bookstore, annotations: {picket.io/mode: audit}}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
    )
    .unwrap();
    dir
}

#[test]
fn reach_shows_what_an_audited_policy_would_deny_beside_the_verdict() {
    let dir = bookstore_with_an_audited_lockdown();
    let cluster = dir.path().to_str().unwrap();
    let out = picket(&["reach", "--cluster", cluster, "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let probes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let probe = |from: &str, to: &str| {
        probes
            .iter()
            .find(|p| p["from"] == from && p["to"] == to)
            .unwrap_or_else(|| panic!("{from} -> {to}"))
    };
    // The verdicts are the example's: the audited policy changes none.
    let api = probe("bookstore/frontend", "bookstore/api");
    assert_eq!(api["allowed"], true, "{api}");
    assert_eq!(
        api["audit"]["allowed"], true,
        "another policy allows it: {api}"
    );
    let db = probe("bookstore/api", "bookstore/frontend");
    assert_eq!(db["allowed"], true, "{db}");
    assert_eq!(
        db["audit"]["allowed"], false,
        "the lockdown would deny it: {db}"
    );
    assert_eq!(db["audit"]["policy"], "bookstore/lockdown");

    let out = picket(&["reach", "--cluster", cluster, "--explain"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("✓*"), "{table}");
    assert!(
        table.contains("audit: bookstore/lockdown would deny"),
        "{table}"
    );
    assert!(
        table.contains("in audit mode: 1 policy; enforced, they would deny 9 allowed"),
        "{table}"
    );
}

#[test]
fn explain_gives_the_verdict_with_the_audited_policies_enforced() {
    let dir = bookstore_with_an_audited_lockdown();
    let out = picket(&[
        "explain",
        "--cluster",
        dir.path().to_str().unwrap(),
        "--from",
        "bookstore/api",
        "--to",
        "bookstore/frontend",
        "--port",
        "80",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(": ALLOWED"), "{text}");
    assert!(
        text.contains(
            "audit mode: with the audited policies enforced: DENIED (NOT the same verdict)"
        ),
        "{text}"
    );
    assert!(text.contains("bookstore/lockdown"), "{text}");
}
