use std::path::Path;

/// Regenerates `src/gen` from `proto/` with a pure-Rust protobuf compiler
/// and compares it with what is committed.
#[test]
fn generated_code_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let proto = root.join("proto");
    let files = protox::compile(["picket/control/v1/control.proto"], [&proto]).unwrap();
    let out = tempfile_dir();
    tonic_prost_build::configure()
        .build_transport(false)
        .btree_map(".")
        .out_dir(&out)
        .compile_fds(files)
        .unwrap();
    let name = "picket.control.v1.rs";
    let fresh = std::fs::read_to_string(out.join(name)).unwrap();
    let committed_path = root.join("src/gen").join(name);
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&out);
    if fresh != committed {
        if std::env::var_os("PICKET_BLESS").is_some() {
            std::fs::write(&committed_path, fresh).unwrap();
            return;
        }
        panic!(
            "{} is out of date with proto/: run `PICKET_BLESS=1 cargo test -p picket-api`",
            committed_path.display()
        );
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("picket-api-gen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
