//! PostgreSQL plumbing for the database benchmarks: scratch databases on the server named by
//! `--url` (created for the run, dropped afterwards, also on errors), URLs for them, and the
//! client tools run the way an operator would (password in `PGPASSWORD`, never in argv).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use rewind_dbkit::PgUrl;
use sqlx::Connection;
use tokio::runtime::Runtime;

/// `url` with its database (the path) replaced by `name`; query parameters are kept.
pub fn with_database(url: &str, name: &str) -> Result<String, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{}: not a postgres:// URL", redact(url)))?;
    if scheme != "postgres" && scheme != "postgresql" {
        return Err(format!("{}: not a postgres:// URL", redact(url)));
    }
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority = before_query
        .split_once('/')
        .map_or(before_query, |(a, _)| a);
    let mut out = format!("{scheme}://{authority}/{name}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    PgUrl::parse(url)
        .map(|u| u.as_str().to_string())
        .unwrap_or_else(|_| "<unparsable URL>".into())
}

/// A database created on the server for this run; dropped (`WITH (FORCE)`) when this goes out
/// of scope.
pub struct ScratchDb<'rt> {
    rt: &'rt Runtime,
    admin_url: String,
    pub name: String,
    pub url: String,
}

impl<'rt> ScratchDb<'rt> {
    /// Creates `rewind_bench_<what>_<pid>` (dropping a leftover of the same name first).
    pub fn create(rt: &'rt Runtime, admin_url: &str, what: &str) -> Result<Self, String> {
        let name = format!("rewind_bench_{what}_{}", std::process::id());
        let url = with_database(admin_url, &name)?;
        rt.block_on(async {
            let mut c = sqlx::PgConnection::connect(admin_url)
                .await
                .map_err(|e| format!("connecting to {}: {e}", redact(admin_url)))?;
            for sql in [
                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                format!("CREATE DATABASE {name}"),
            ] {
                // `name` is made of [a-z0-9_] here.
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut c)
                    .await
                    .map_err(|e| format!("creating database {name}: {e}"))?;
            }
            let _ = c.close().await;
            Ok::<_, String>(())
        })?;
        Ok(ScratchDb {
            rt,
            admin_url: admin_url.to_string(),
            name,
            url,
        })
    }
}

impl Drop for ScratchDb<'_> {
    fn drop(&mut self) {
        let result = self.rt.block_on(async {
            let mut c = sqlx::PgConnection::connect(&self.admin_url).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut c)
            .await?;
            c.close().await
        });
        if let Err(e) = result {
            eprintln!(
                "rewind-bench: dropping scratch database {}: {e}; drop it by hand",
                self.name
            );
        }
    }
}

/// A PostgreSQL client tool for the floor: the binary itself. rewind-dbkit looks in PATH
/// first, where Debian puts `pg_wrapper` (a Perl script choosing the version, ~50 ms per
/// start here); the floor is what the tool costs without it, so when PATH's tool is that
/// wrapper, the newest `/usr/lib/postgresql/*/bin/<name>` (the one the wrapper runs for a
/// `--dbname` URL) is used instead.
pub fn tool(name: &str) -> Result<PathBuf, String> {
    let found = rewind_dbkit::backup::find_pg_tool(name).map_err(|e| e.to_string())?;
    let wrapped = std::fs::canonicalize(&found)
        .is_ok_and(|p| p.file_name().is_some_and(|n| n == "pg_wrapper"));
    if !wrapped {
        return Ok(found);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin").join(name)))
        })
        .filter(|(_, p)| p.is_file())
        .collect();
    versions.sort();
    Ok(versions.pop().map_or(found, |(_, p)| p))
}

/// A command for a client tool connecting to `url`: `--dbname=<url without password>` is
/// appended last by the caller through [`dbname_arg`]; the password goes in `PGPASSWORD`.
pub fn command(program: &PathBuf, url: &str) -> Result<Command, String> {
    let parsed = PgUrl::parse(url).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null());
    if let Some(p) = parsed.password() {
        cmd.env("PGPASSWORD", p);
    }
    Ok(cmd)
}

pub fn dbname_arg(url: &str) -> Result<String, String> {
    let parsed = PgUrl::parse(url).map_err(|e| e.to_string())?;
    Ok(format!("--dbname={}", parsed.as_str()))
}

/// Runs `cmd` to completion; an error with its output when it fails.
pub fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("starting {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Runs one SQL text (may hold several statements) on `url`.
pub fn exec(rt: &Runtime, url: &str, sql: &str) -> Result<(), String> {
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(url)
            .await
            .map_err(|e| format!("connecting to {}: {e}", redact(url)))?;
        let r = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut c)
            .await
            .map(|_| ())
            .map_err(|e| format!("running SQL on {}: {e}", redact(url)));
        let _ = c.close().await;
        r
    })
}

/// One `i64` from a query on `url`.
pub fn scalar(rt: &Runtime, url: &str, sql: &str) -> Result<i64, String> {
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(url)
            .await
            .map_err(|e| format!("connecting to {}: {e}", redact(url)))?;
        let r = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&mut c)
            .await
            .map_err(|e| format!("{sql}: {e}"));
        let _ = c.close().await;
        r
    })
}

/// Flushes PostgreSQL's dirty buffers (`CHECKPOINT`) and the page cache (`sync`), untimed,
/// so that neither contender pays for the writes the other one left behind.
pub fn settle(rt: &Runtime, url: &str) -> Result<(), String> {
    exec(rt, url, "CHECKPOINT")?;
    sync()
}

/// `sync(1)`: writes every dirty page of the machine to disk.
pub fn sync() -> Result<(), String> {
    run(&mut Command::new("sync"), "sync")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_and_the_rest_kept() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "x").unwrap(),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(
            with_database("postgresql://h/db?sslmode=disable", "x").unwrap(),
            "postgresql://h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:1", "x").unwrap(),
            "postgres://h:1/x"
        );
        assert_eq!(
            with_database("postgres:///db?host=/run/pg", "x").unwrap(),
            "postgres:///x?host=/run/pg"
        );
        assert!(with_database("mysql://h/db", "x").is_err());
    }

    #[test]
    fn messages_never_show_the_password() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u@h/db");
        assert_eq!(
            dbname_arg("postgres://u:secret@h/db").unwrap(),
            "--dbname=postgres://u@h/db"
        );
        let e = with_database("mysql://u:secret@h/db", "x").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }
}
