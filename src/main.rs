//! The `sp-broker` binary: parses the command line, runs, maps errors to exit
//! codes (0 success, 2 bad arguments or configuration, 1 anything else).

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = sp_broker::cli::Cli::parse();
    match sp_broker::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sp-broker: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
