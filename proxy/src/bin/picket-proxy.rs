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
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(picket::app::run(*args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("picket-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
