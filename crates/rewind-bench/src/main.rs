//! `rewind-bench`: benchmarks for rewind.
//!
//! - `rewind-bench serve --port P --dir D [--pidfile F]`: a tiny HTTP/1.1 server answering
//!   `GET /health` with the contents of `D/VERSION` (the app the benchmark restarts).
//! - `rewind-bench rollback [--runs N] [--rewind PATH] [--state-sync full|normal] [--json] [--keep]`: times
//!   `rewind rollback` against a bare shell script doing the same switch, restart and
//!   readiness wait.

mod rollback;
mod serve;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage:
  rewind-bench serve --port PORT --dir DIR [--pidfile FILE]
      Serve GET /health with DIR/VERSION on 127.0.0.1:PORT; writes its pid to FILE
      (default: the parent of DIR, taken literally, /server.pid).
  rewind-bench rollback [--runs N] [--rewind PATH] [--state-sync full|normal] [--json] [--keep]
      Time `rewind rollback` against a shell floor (symlink swap, restart, curl poll).
      --runs N       measured runs per contender (default 15)
      --rewind PATH  the rewind binary (default: `rewind` next to this executable)
      --state-sync S rewind's state-sync setting: full (default) or normal
      --json         print the results as JSON instead of a markdown table
      --keep         keep the temporary directory and server (for profiling)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => parse_serve(&args[1..]).and_then(|a| serve::run(&a)),
        Some("rollback") => parse_rollback(&args[1..]).and_then(|a| rollback::run(&a)),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rewind-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Takes the value that follows `flag`.
fn value(flag: &str, it: &mut std::slice::Iter<'_, String>) -> Result<String, String> {
    it.next()
        .cloned()
        .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
}

fn parse_serve(args: &[String]) -> Result<serve::Args, String> {
    let (mut port, mut dir, mut pidfile) = (None, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--port" => {
                let v = value(a, &mut it)?;
                port = Some(v.parse::<u16>().map_err(|e| format!("--port {v}: {e}"))?);
            }
            "--dir" => dir = Some(PathBuf::from(value(a, &mut it)?)),
            "--pidfile" => pidfile = Some(PathBuf::from(value(a, &mut it)?)),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let port = port.ok_or_else(|| format!("serve needs --port\n{USAGE}"))?;
    let dir = dir.ok_or_else(|| format!("serve needs --dir\n{USAGE}"))?;
    Ok(serve::Args { port, dir, pidfile })
}

fn parse_rollback(args: &[String]) -> Result<rollback::Args, String> {
    let mut out = rollback::Args {
        runs: 15,
        rewind: None,
        json: false,
        keep: false,
        state_sync: "full".into(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => {
                let v = value(a, &mut it)?;
                out.runs = v.parse().map_err(|e| format!("--runs {v}: {e}"))?;
                if out.runs == 0 {
                    return Err("--runs must be at least 1".into());
                }
            }
            "--rewind" => out.rewind = Some(PathBuf::from(value(a, &mut it)?)),
            "--state-sync" => {
                let v = value(a, &mut it)?;
                if v != "full" && v != "normal" {
                    return Err(format!("--state-sync {v}: write full or normal"));
                }
                out.state_sync = v.to_string();
            }
            "--json" => out.json = true,
            "--keep" => out.keep = true,
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(out)
}
