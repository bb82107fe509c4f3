//! `rewind-bench`: benchmarks for rewind.
//!
//! - `rewind-bench serve --port P --dir D [--pidfile F]`: a tiny HTTP/1.1 server answering
//!   `GET /health` with the contents of `D/VERSION` (the app the benchmark restarts).
//! - `rewind-bench rollback [--runs N] [--rewind PATH] [--state-sync full|normal] [--json] [--keep]`: times
//!   `rewind rollback` against a bare shell script doing the same switch, restart and
//!   readiness wait.
//! - `rewind-bench db-revert (--url URL | --sqlite) [--migrations N[,N…]] [--rows R] [--runs K]`:
//!   times `rewind_db::revert` of N migrations against `psql --single-transaction` (or the
//!   `sqlite3` shell) running the same down scripts.
//! - `rewind-bench db-deploy --url URL [--dir DIR --format F] [--prelude SQL] [--runs K]`:
//!   times `rewind deploy` of a whole history on an empty database against the team's own
//!   tool and against psql running the same files.
//! - `rewind-bench db-restore (--url URL | --sqlite) [--rows R] [--size-mb M] [--jobs J]
//!   [--runs K]`: times rewind-dbkit's restores against `pg_restore` alone and against a plain
//!   file copy.

// The benchmark starts rewind and the tools it is measured against directly: it measures
// them from outside, as a user runs them (clippy.toml asks rewind itself to use rewind_proc).
#![allow(clippy::disallowed_methods)]

mod db_deploy;
mod db_restore;
mod db_revert;
mod measure;
mod pg;
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
      --keep         keep the temporary directory and server (for profiling)
  rewind-bench db-revert (--url postgres://… | --sqlite) [--migrations N[,N…]] [--rows R] [--runs K]
      Time rewind's revert of N generated sqlx migrations against psql --single-transaction
      (SQLite: the sqlite3 shell) running the same down scripts and history deletes.
      --url URL        a PostgreSQL server; a scratch database is created on it and dropped
      --sqlite         a SQLite file in a temporary directory instead (needs sqlite3)
      --migrations N   migrations to revert, or a comma-separated list (default 50)
      --rows R         rows loaded by each data migration (default 1000)
      --runs K         measured runs per contender (default 7)
  rewind-bench db-deploy --url postgres://… [--dir DIR --format F] [--generate N] [--prelude FILE] [--runs K] [--rewind PATH] [--label L]
      Time `rewind deploy` of a whole migration history on a new empty database against the
      team's own tool (sqlx, diesel, sqitch, refinery; none for golang-migrate and Flyway)
      and against psql running the same up scripts in the tool's order in one session.
      --dir DIR        a real project's migrations directory, in --format (sqlx, diesel, …)
      --generate N     without --dir: N generated sqlx migrations (default 300)
      --prelude FILE   SQL run on every new database first (extensions the project needs)
      --runs K         measured runs per contender (default 5)
      --rewind PATH    the rewind binary (default: `rewind` next to this executable)
      --label L        the history's name in the table
  rewind-bench db-restore (--url postgres://… | --sqlite) [--rows R] [--size-mb M] [--jobs J] [--runs K]
      Time rewind-dbkit's pg_restore against pg_restore alone (same flags), or its
      sqlite_restore against a plain file copy.
      --url URL        a PostgreSQL server; two scratch databases are created on it and dropped
      --sqlite         a SQLite file in a temporary directory instead
      --rows R         PostgreSQL: rows in all tables together (default 1000000)
      --size-mb M      SQLite: database size to aim for (default 100)
      --jobs J         pg_restore --jobs (default 2)
      --runs K         measured runs per contender (default 7)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => parse_serve(&args[1..]).and_then(|a| serve::run(&a)),
        Some("rollback") => parse_rollback(&args[1..]).and_then(|a| rollback::run(&a)),
        Some("db-revert") => parse_db_revert(&args[1..]).and_then(|a| db_revert::run(&a)),
        Some("db-restore") => parse_db_restore(&args[1..]).and_then(|a| db_restore::run(&a)),
        Some("db-deploy") => parse_db_deploy(&args[1..]).and_then(|a| db_deploy::run(&a)),
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

/// A positive number given to `flag`.
fn positive(flag: &str, it: &mut std::slice::Iter<'_, String>) -> Result<usize, String> {
    let v = value(flag, it)?;
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        Ok(_) => Err(format!("{flag} must be at least 1")),
        Err(e) => Err(format!("{flag} {v}: {e}")),
    }
}

/// `--url` and `--sqlite` exclude each other, and one of them is needed.
fn target(cmd: &str, url: &Option<String>, sqlite: bool) -> Result<(), String> {
    match (url, sqlite) {
        (Some(_), true) => Err(format!("{cmd}: give --url or --sqlite, not both")),
        (None, false) => Err(format!(
            "{cmd} needs --url postgres://… or --sqlite\n{USAGE}"
        )),
        _ => Ok(()),
    }
}

fn parse_db_revert(args: &[String]) -> Result<db_revert::Args, String> {
    let mut out = db_revert::Args {
        url: None,
        sqlite: false,
        migrations: vec![50],
        rows: 1000,
        runs: 7,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--url" => out.url = Some(value(a, &mut it)?),
            "--sqlite" => out.sqlite = true,
            "--migrations" => {
                let v = value(a, &mut it)?;
                out.migrations = v
                    .split(',')
                    .map(|n| match n.trim().parse::<usize>() {
                        Ok(n) if n > 0 => Ok(n),
                        _ => Err(format!(
                            "--migrations {v}: write a positive number or a list like 10,50,200"
                        )),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--rows" => out.rows = positive(a, &mut it)?,
            "--runs" => out.runs = positive(a, &mut it)?,
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    target("db-revert", &out.url, out.sqlite)?;
    Ok(out)
}

fn parse_db_restore(args: &[String]) -> Result<db_restore::Args, String> {
    let mut out = db_restore::Args {
        url: None,
        sqlite: false,
        rows: 1_000_000,
        size_mb: 100,
        jobs: 2,
        runs: 7,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--url" => out.url = Some(value(a, &mut it)?),
            "--sqlite" => out.sqlite = true,
            "--rows" => out.rows = positive(a, &mut it)?,
            "--size-mb" => out.size_mb = positive(a, &mut it)?,
            "--jobs" => out.jobs = positive(a, &mut it)?,
            "--runs" => out.runs = positive(a, &mut it)?,
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    target("db-restore", &out.url, out.sqlite)?;
    Ok(out)
}

fn parse_db_deploy(args: &[String]) -> Result<db_deploy::Args, String> {
    let mut out = db_deploy::Args {
        url: String::new(),
        dir: None,
        format: None,
        generate: 300,
        prelude: None,
        runs: 5,
        rewind: None,
        label: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--url" => out.url = value(a, &mut it)?,
            "--dir" => out.dir = Some(PathBuf::from(value(a, &mut it)?)),
            "--format" => out.format = Some(value(a, &mut it)?),
            "--prelude" => out.prelude = Some(PathBuf::from(value(a, &mut it)?)),
            "--rewind" => out.rewind = Some(PathBuf::from(value(a, &mut it)?)),
            "--label" => out.label = Some(value(a, &mut it)?),
            "--generate" => {
                let v = value(a, &mut it)?;
                out.generate = v.parse().map_err(|e| format!("--generate {v}: {e}"))?;
            }
            "--runs" => {
                let v = value(a, &mut it)?;
                out.runs = v.parse().map_err(|e| format!("--runs {v}: {e}"))?;
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if out.url.is_empty() {
        return Err(format!("db-deploy needs --url\n{USAGE}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn db_revert_arguments() {
        let a =
            parse_db_revert(&args("--url postgres://h/db --migrations 10,50 --runs 3")).unwrap();
        assert_eq!(a.migrations, [10, 50]);
        assert_eq!((a.runs, a.rows, a.sqlite), (3, 1000, false));
        assert_eq!(parse_db_revert(&args("--sqlite")).unwrap().migrations, [50]);
        assert!(parse_db_revert(&args("--sqlite --migrations 0")).is_err());
        assert!(parse_db_revert(&args("--runs 3")).is_err());
        assert!(parse_db_revert(&args("--sqlite --url postgres://h/db")).is_err());
    }

    #[test]
    fn db_restore_arguments() {
        let a = parse_db_restore(&args("--sqlite --size-mb 20")).unwrap();
        assert_eq!((a.size_mb, a.jobs, a.runs), (20, 2, 7));
        assert!(parse_db_restore(&args("--url postgres://h/db --jobs 0")).is_err());
        assert!(parse_db_restore(&args("--url")).is_err());
    }
}
