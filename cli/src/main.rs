//! `picket`: the user's command line. Thin: parsing and exit codes only.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = picket_cli::Cli::parse();
    match picket_cli::run(cli) {
        Ok(output) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`picket reach | head`) is not an error worth reporting.
            let _ = stdout.write_all(output.text.as_bytes());
            if output.failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("picket: {e:#}");
            ExitCode::FAILURE
        }
    }
}
