//! `picket`: the user's command line. Thin: parsing and exit codes only.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Installed as `picket-proxy` (as `picket demo` does), act as the sidecar.
    let invoked_as = std::env::args_os().next().and_then(|a| {
        std::path::Path::new(&a)
            .file_name()
            .map(|n| n.to_os_string())
    });
    if invoked_as.as_deref() == Some(std::ffi::OsStr::new("picket-proxy")) {
        return picket::app::main_proxy();
    }
    let cli = picket::cli::Cli::parse();
    match picket::cli::run(cli) {
        Ok(text) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`picket reach | head`) is not an error worth reporting.
            let _ = stdout.write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("picket: {e:#}");
            ExitCode::FAILURE
        }
    }
}
