//! `picket-proxy`: the sidecar (`run`) and its init container (`init`).
//! Thin: everything is in `picket::app`.

fn main() -> std::process::ExitCode {
    picket::app::main_proxy()
}
