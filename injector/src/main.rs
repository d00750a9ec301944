//! `picket-injector` (work in progress).
fn main() {
    eprintln!("picket-injector: not built yet");
    std::process::exit(1);
}
