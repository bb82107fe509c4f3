//! The `rewind` binary: parses the command line, runs one command, and maps its outcome to
//! the exit-code contract (0 success, 1 failed, 2 bad usage or config, 3 blocked).

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

mod cli;
mod commands;
mod engine;
mod error;
mod guard;
mod output;
mod secrets;
mod watch;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
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

/// A command line clap refuses: its message and usage on stderr as usual (`--help` and
/// `--version` on stdout, exit 0), and — when `--json` was asked for — the same error as a JSON
/// document on stdout (exit 2), as every other error gets, so scripts reading stdout see why.
fn usage_error(e: clap::Error) -> ExitCode {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
    }
    let _ = e.print();
    let json = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    if json {
        // clap's text: the error (possibly over several lines), then "Usage: …" and advice.
        let text = e.render().to_string();
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let usage_at = lines
            .iter()
            .position(|l| l.starts_with("Usage:"))
            .unwrap_or(lines.len());
        let first = lines[..usage_at]
            .join(" ")
            .trim_start_matches("error: ")
            .to_string();
        let hints: Vec<&str> = lines[usage_at..].to_vec();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ok": false,
                "exit_code": 2,
                "error": first,
                "hints": hints,
                "detail": null,
            }))
            .unwrap_or_default()
        );
    }
    ExitCode::from(2)
}
