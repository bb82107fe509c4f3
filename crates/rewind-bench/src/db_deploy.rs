//! The deploy benchmark: `rewind deploy` of a whole migration history on an empty
//! PostgreSQL database, against the team's own tool deploying the same directory (`sqlx
//! migrate run`, `diesel migration run`, `sqitch deploy`, `refinery migrate`) and against
//! `psql` running the same up scripts in the tool's order in one session (in one transaction
//! for the tools that run each migration in one).
//!
//! The history is a real project's directory (`--dir`, `--format`), or generated sqlx
//! migrations (the revert benchmark's). Every run starts from a new empty database (the
//! `--prelude` SQL first, e.g. the extensions the project needs), untimed; afterwards the
//! history is checked to hold every migration. rewind's run is the whole command a person
//! types: process start, state store (kept between runs, as a team's is), the restore points
//! (a full backup: `backup = "always"` is the default), classification, the migrations with
//! the data guard, the ledger.

use std::path::{Path, PathBuf};
use std::process::Command;

use rewind_db::migrations::{self, Format};
use tokio::runtime::Runtime;

use crate::measure::{self, Contender, Row};
use crate::pg::{self, ScratchDb};
use crate::stats::Summary;

pub struct Args {
    pub url: String,
    /// A real history; `None`: `generate` sqlx migrations.
    pub dir: Option<PathBuf>,
    pub format: Option<String>,
    pub generate: usize,
    pub prelude: Option<PathBuf>,
    pub runs: usize,
    pub rewind: Option<PathBuf>,
    /// Checked into the label only.
    pub label: Option<String>,
}

/// The goal of this benchmark (the issue's): rewind at most 1.2× the tool.
pub const GOAL: f64 = 1.2;

fn tool_path(name: &str) -> Option<PathBuf> {
    let var = format!("REWIND_TEST_{}", name.to_uppercase());
    if let Ok(p) = std::env::var(&var) {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .ok()?;
    let p = home.join("bin").join(name);
    if p.is_file() {
        return Some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The tool's own deploy, as a command on `url`, or `None` when it cannot be run here.
fn tool_command(format: Format, dir: &Path, url: &str) -> Option<(String, Command)> {
    let d = dir.display().to_string();
    match format {
        Format::Sqlx => {
            let mut c = Command::new(tool_path("sqlx")?);
            c.args(["migrate", "run", "--source", &d, "-D", url]);
            Some(("sqlx migrate run".into(), c))
        }
        Format::Diesel => {
            let mut c = Command::new(tool_path("diesel")?);
            c.args([
                "migration",
                "run",
                "--migration-dir",
                &d,
                "--database-url",
                url,
            ]);
            Some(("diesel migration run".into(), c))
        }
        Format::Refinery => {
            let mut c = Command::new(tool_path("refinery")?);
            c.args(["migrate", "-e", "REWIND_BENCH_DB", "-p", &d])
                .env("REWIND_BENCH_DB", url);
            Some(("refinery migrate".into(), c))
        }
        Format::Sqitch => {
            let mut c = Command::new(tool_path("sqitch")?);
            c.args([
                "deploy",
                &format!("db:{}", url.replacen("postgres://", "pg://", 1)),
            ])
            .current_dir(dir)
            .env("SQITCH_FULLNAME", "bench")
            .env("SQITCH_EMAIL", "bench@example.invalid")
            .env("SQITCH_USER_CONFIG", dir.join("no-such-user.conf"));
            Some(("sqitch deploy".into(), c))
        }
        Format::GolangMigrate | Format::Flyway => None,
    }
}

/// `psql` running every up script in the tool's order in one session (each file as psql runs
/// it: statement by statement; files that open their own transaction keep it).
fn psql_command(
    psql: &PathBuf,
    files: &[PathBuf],
    url: &str,
    single: bool,
) -> Result<Command, String> {
    let mut cmd = pg::command(psql, url)?;
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]);
    if single {
        cmd.arg("--single-transaction");
    }
    for f in files {
        cmd.arg("-f").arg(f);
    }
    cmd.arg(pg::dbname_arg(url)?);
    Ok(cmd)
}

fn write_config(env: &Path, url: &str, dir: &Path, format: Format) -> Result<(), String> {
    let config = format!(
        "[environment]\nname = \"bench\"\n\n[components.db]\nkind = \"postgres\"\nurl = \"{url}\"\n\
         migrations = \"{}\"\nformat = \"{}\"\nbackup-dir = \"{}\"\n",
        dir.display(),
        format.name(),
        env.join("backups").display()
    );
    std::fs::write(env.join("rewind.toml"), config).map_err(|e| format!("writing rewind.toml: {e}"))
}

pub fn run(args: &Args) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    let bench = std::env::current_exe().map_err(|e| format!("locating myself: {e}"))?;
    let rewind = match &args.rewind {
        Some(p) => p.clone(),
        None => bench
            .parent()
            .ok_or("this executable has no parent directory")?
            .join("rewind"),
    };
    if !rewind.is_file() {
        return Err(format!(
            "no rewind binary at {} (build it: cargo build --release -p rewind, or pass --rewind PATH)",
            rewind.display()
        ));
    }
    let tmp = tempfile::Builder::new()
        .prefix("rewind-bench-deploy-")
        .tempdir()
        .map_err(|e| format!("creating a temporary directory: {e}"))?;
    let (dir, format, what) = match (&args.dir, &args.format) {
        (Some(d), Some(f)) => {
            let format: Format = f.parse()?;
            let dir = std::fs::canonicalize(d).map_err(|e| format!("{}: {e}", d.display()))?;
            (
                dir,
                format,
                args.label
                    .clone()
                    .unwrap_or_else(|| d.display().to_string()),
            )
        }
        (Some(_), None) => return Err("--dir needs --format".into()),
        (None, _) => {
            let dir = tmp.path().join("migrations");
            std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
            crate::db_revert::generate(
                &dir,
                crate::db_revert::Dialect::Postgres,
                args.generate,
                100,
            )?;
            (
                dir,
                Format::Sqlx,
                format!("generated sqlx ×{}", args.generate),
            )
        }
    };
    let migs = migrations::read(&dir, format).map_err(|e| e.to_string())?;
    let n = migs.len();
    let files: Vec<PathBuf> = migs.iter().map(|m| m.file.clone()).collect();
    let prelude = match &args.prelude {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    let db = ScratchDb::create(&rt, &args.url, "deploy")?;
    let fresh = |rt: &Runtime| -> Result<(), String> {
        pg::exec(
            rt,
            &args.url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name),
        )?;
        pg::exec(rt, &args.url, &format!("CREATE DATABASE {}", db.name))?;
        if let Some(sql) = &prelude {
            pg::exec(rt, &db.url, sql)?;
        }
        pg::sync()
    };
    let applied = |rt: &Runtime| -> Result<(), String> {
        let got = rt.block_on(async {
            let pool = rewind_db::connect(&db.url)
                .await
                .map_err(|e| e.to_string())?;
            let r = rewind_db::applied(&pool, format, &migs).await;
            pool.close().await;
            r.map_err(|e| e.to_string())
        })?;
        if got.len() == n {
            Ok(())
        } else {
            Err(format!("{} of {n} migrations applied", got.len()))
        }
    };
    let env = tmp.path().join("env");
    std::fs::create_dir_all(&env).map_err(|e| e.to_string())?;
    write_config(&env, &db.url, &dir, format)?;
    let mut release = 0usize;
    let rewind_c = Contender::new("rewind deploy", || {
        release += 1;
        let mut cmd = Command::new(&rewind);
        cmd.arg("-c").arg(env.join("rewind.toml")).args([
            "--quiet",
            "deploy",
            &format!("r{release}"),
        ]);
        pg::run(&mut cmd, "rewind deploy")
    })
    .prepare(|| {
        // A new empty database; the state store stays, as a team's does (each run deploys
        // a release of a new name).
        fresh(&rt)
    })
    .verify(|| applied(&rt));
    let mut contenders = vec![rewind_c];
    let mut labels = Vec::new();
    if let Some((label, mut cmd)) = tool_command(format, &dir, &db.url) {
        labels.push(label.clone());
        contenders.push(
            Contender::new(label, move || pg::run(&mut cmd, "the tool"))
                .prepare(|| fresh(&rt))
                .verify(|| applied(&rt)),
        );
    }
    let psql = pg::tool("psql")?;
    // The tools that run each migration in a transaction: psql gives the files one (a
    // statement such as LOCK TABLE fails outside one).
    let single = matches!(format, Format::Sqlx | Format::Diesel | Format::Refinery);
    let psql_label = if single {
        "psql --single-transaction (same files)"
    } else {
        "psql (same files, one session)"
    };
    labels.push(psql_label.into());
    let mut psql_cmd = psql_command(&psql, &files, &db.url, single)?;
    contenders.push(
        Contender::new(psql_label, move || pg::run(&mut psql_cmd, "psql")).prepare(|| fresh(&rt)),
    );
    eprintln!(
        "== deploy of {what}: {n} {format} migrations; load {} on {} cpus",
        measure::loadavg(),
        measure::cpus()
    );
    let samples = measure::measure(&mut contenders, args.runs)?;
    drop(contenders);
    let rows: Vec<Row> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| Row {
            key: format!("{what} ({n})"),
            floor: l.clone(),
            rewind: Summary::of(&samples[0]),
            floor_times: Summary::of(&samples[i + 1]),
        })
        .collect();
    measure::print_table_with_goal("history", &rows, GOAL);
    Ok(())
}
