//! `picket-proxy`: the sidecar (`run`) and its init container (`init`).
//! Thin: parsing, logging, the runtime, exit codes.

use std::process::ExitCode;

use clap::Parser;
use picket::config::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    picket::telemetry::init();
    let result = match cli.command {
        Command::Init(args) => picket::app::init(args),
        Command::Run(args) => picket::app::block_on_run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("picket-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
