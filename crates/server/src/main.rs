//! The `wsgate` binary: parse flags, hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = wsgate::cli::Cli::parse();
    match wsgate::cli::main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
