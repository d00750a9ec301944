//! `picket-injector`: thin: parsing, logging, the runtime, exit codes
//! (64 for a bad configuration, 1 for a failure).

use std::process::ExitCode;

use clap::Parser;
use picket_injector::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    picket_common::logging::init(false);
    let settings = cli
        .inject
        .to_config()
        .and_then(|config| Ok((config, cli.control_target()?)));
    let (config, control) = match settings {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("picket-injector: {message}");
            return ExitCode::from(64);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(picket_injector::app::run(cli, config, control)),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("picket-injector: {e:#}");
            ExitCode::FAILURE
        }
    }
}
