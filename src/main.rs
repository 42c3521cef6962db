use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    notirouter::cli::run(notirouter::cli::Cli::parse()).unwrap_or_else(|error| {
        eprintln!("notirouter: {error:#}");
        ExitCode::from(2)
    })
}
