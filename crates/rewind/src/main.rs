//! The `rewind` binary: parses the command line, runs one command, and maps its outcome to
//! the exit-code contract (0 success, 1 failed, 2 bad usage or config, 3 blocked).

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod commands;
mod engine;
mod error;
mod output;
mod secrets;
mod watch;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let printer = output::Printer::new(cli.json, cli.quiet);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::dispatch(cli, &printer)) {
        Ok(code) => code,
        Err(err) => {
            printer.error(&err);
            ExitCode::from(err.class as u8)
        }
    }
}
