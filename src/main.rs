//! The `sp-broker` binary: parses the command line, runs, maps errors to exit
//! codes (0 success, 2 bad arguments or configuration, 1 anything else).

use clap::Parser;
use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: the server frees much of what it
/// allocates on another worker thread, where glibc takes an arena lock and
/// consolidates chunks (several % of a request's CPU in BENCHMARKS.md's profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
