//! `picket-proxy`: the sidecar (`run`) and its init container (`init`).
//! Thin: everything is in `picket_proxy::app`.

fn main() -> std::process::ExitCode {
    picket_proxy::app::main_proxy()
}
