//! Applying and reverting migrations, each call in ONE transaction.
//!
//! PostgreSQL and SQLite both run DDL inside transactions, so a batch (the scripts and the
//! history-table updates, and creating the history table itself) either happens entirely or
//! not at all: on any error the transaction is rolled back and the database and its history
//! are exactly as before — no golang-migrate "dirty" row, no failed Flyway row.
//!
//! Consequently scripts that cannot run in a transaction are refused before anything runs:
//! a script whose first line is sqlx's `-- no-transaction` directive, a script that
//! manages its own transaction (a `BEGIN`/`COMMIT`/`ROLLBACK` statement, as sqitch scripts
//! often have: its `COMMIT` would end rewind's transaction half-way), and a script with a
//! statement the engine refuses in a transaction (`CREATE INDEX CONCURRENTLY`, `VACUUM` …).
//! Scripts are read with [`crate::sql`], so a PL/pgSQL body's `END;` or a SQLite trigger's
//! `BEGIN … END` is not mistaken for transaction control.

use std::path::Path;
use std::time::Instant;

use sqlx::{AnyConnection, AnyPool, Connection};

use crate::history;
use crate::migrations::{Format, Migration, cmp_versions};
use crate::sql::{self, Dialect, TxControl};
use crate::{Error, Result, query_err};

/// Where a migration is, for a progress callback (a journal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Its up script is about to run.
    Applying,
    /// Its up script ran and the history records it (not yet committed).
    Applied,
    /// Its down script is about to run.
    Reverting,
    /// Its down script ran and the history records it (not yet committed).
    Reverted,
    /// It failed; the whole batch is being rolled back. The text is the error.
    Failed(String),
    /// The batch it belongs to was committed.
    Committed,
    /// The batch it belongs to was rolled back.
    RolledBack,
}

/// The versions the history of `format` says are applied (see [`history::applied`]).
pub async fn applied(
    pool: &AnyPool,
    format: Format,
    migrations: &[Migration],
) -> Result<Vec<String>> {
    let mut conn = pool.acquire().await.map_err(query_err("connecting"))?;
    history::prepare(&mut conn, format).await?;
    history::applied(&mut conn, format, migrations).await
}

/// The migration `target` names: its version, its name, or for sqitch a tag (`@v1.0`, the
/// change the tag is on) or a change as of a tag (`change@v1.0`, the same change: reworked
/// changes are not supported).
fn find<'a>(migrations: &'a [Migration], target: &str) -> Result<&'a Migration> {
    let tagged = |tag: &str| {
        migrations.iter().find(|m| {
            m.sqitch
                .as_ref()
                .is_some_and(|s| s.tags.iter().any(|t| t.name == tag))
        })
    };
    let found = match target.split_once('@') {
        Some(("", tag)) => tagged(tag),
        Some((change, tag)) => tagged(tag).and_then(|_| {
            migrations
                .iter()
                .find(|m| m.name == change && m.sqitch.is_some())
        }),
        None => migrations
            .iter()
            .find(|m| m.version == target || m.name == target),
    };
    found.ok_or_else(|| Error::UnknownVersion(target.to_string()))
}

/// The SQL dialect of a connection.
fn dialect_of(conn: &AnyConnection) -> Dialect {
    if conn.backend_name().eq_ignore_ascii_case("sqlite") {
        Dialect::Sqlite
    } else {
        Dialect::Postgres
    }
}

/// Refuses scripts that cannot run inside rewind's transaction, naming the statement's
/// line in `file`.
fn check_transactional(m: &Migration, sql: &str, file: &Path, dialect: Dialect) -> Result<()> {
    let refuse = |reason: String| {
        Err(Error::NotTransactional {
            version: m.version.clone(),
            name: m.name.clone(),
            file: file.to_path_buf(),
            reason,
        })
    };
    if sql
        .trim_start_matches('\u{feff}')
        .starts_with("-- no-transaction")
    {
        return refuse("it is marked `-- no-transaction`".into());
    }
    let statements = sql::split(sql, dialect).map_err(|e| Error::BadFile {
        file: file.to_path_buf(),
        reason: format!("cannot read its SQL: {e}"),
    })?;
    for s in &statements {
        if let Some(tx) = s.transaction_control(dialect) {
            let word = match tx {
                TxControl::Begin => "BEGIN",
                TxControl::Commit => "COMMIT",
                TxControl::Rollback => "ROLLBACK",
            };
            return refuse(format!(
                "line {}: it manages its own transaction ({word}); remove its BEGIN/COMMIT \
                 (rewind wraps the batch in one transaction)",
                s.line
            ));
        }
        if let Some(why) = s.outside_transaction(dialect) {
            return refuse(format!("line {}: {why}", s.line));
        }
    }
    Ok(())
}

async fn run_script(conn: &mut AnyConnection, sql: &str) -> std::result::Result<(), sqlx::Error> {
    if crate::migrations::script_is_empty(sql) {
        return Ok(());
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Applies the pending migrations of `migrations` (in `format`, with its history table) in
/// order, up to and including `up_to` (a version or, for sqitch, a change name or `@tag`;
/// `None`: all).
/// Returns the versions applied. Everything happens in one transaction.
pub async fn apply(
    pool: &AnyPool,
    format: Format,
    migrations: &[Migration],
    up_to: Option<&str>,
    mut progress: impl FnMut(&Migration, Phase),
) -> Result<Vec<String>> {
    let limit = up_to.map(|v| find(migrations, v)).transpose()?;
    let mut conn = pool.acquire().await.map_err(query_err("connecting"))?;
    let dialect = dialect_of(&conn);
    history::prepare(&mut conn, format).await?;
    let mut tx = conn
        .begin()
        .await
        .map_err(query_err("beginning a transaction"))?;
    history::ensure_table(&mut tx, format).await?;
    let done = history::applied(&mut tx, format, migrations).await?;
    for v in &done {
        find(migrations, v)?;
    }
    let pending: Vec<&Migration> = migrations
        .iter()
        .filter(|m| !done.contains(&m.version))
        .filter(|m| limit.is_none_or(|l| cmp_versions(&m.version, &l.version).is_le()))
        .collect();
    for m in &pending {
        check_transactional(m, &m.up, &m.file, dialect)?;
    }
    let mut finished = Vec::new();
    for m in &pending {
        progress(m, Phase::Applying);
        let started = Instant::now();
        let outcome = match history::check_apply(&mut tx, format, m).await {
            Err(e) => Err(e),
            Ok(()) => match run_script(&mut tx, &m.up).await {
                Ok(()) => history::record_apply(&mut tx, format, m, started.elapsed()).await,
                Err(source) => Err(Error::Migration {
                    version: m.version.clone(),
                    name: m.name.clone(),
                    file: m.file.clone(),
                    down: false,
                    source,
                }),
            },
        };
        if let Err(e) = outcome {
            progress(m, Phase::Failed(e.to_string()));
            let _ = tx.rollback().await;
            progress(m, Phase::RolledBack);
            return Err(e);
        }
        progress(m, Phase::Applied);
        finished.push(*m);
    }
    tx.commit()
        .await
        .map_err(query_err("committing the migrations"))?;
    for m in &finished {
        progress(m, Phase::Committed);
    }
    Ok(finished.iter().map(|m| m.version.clone()).collect())
}

/// Reverts the applied migrations newer than `down_to` (a version, or a sqitch change name or
/// `@tag`, that stays applied; `None`: all), newest first, with their down scripts. Returns the versions
/// reverted. Every migration to revert must have a non-empty down script
/// ([`Migration::down_is_empty`]), checked before anything runs; everything happens in one
/// transaction.
pub async fn revert(
    pool: &AnyPool,
    format: Format,
    migrations: &[Migration],
    down_to: Option<&str>,
    mut progress: impl FnMut(&Migration, Phase),
) -> Result<Vec<String>> {
    let keep = down_to.map(|v| find(migrations, v)).transpose()?;
    let mut conn = pool.acquire().await.map_err(query_err("connecting"))?;
    let dialect = dialect_of(&conn);
    history::prepare(&mut conn, format).await?;
    let mut tx = conn
        .begin()
        .await
        .map_err(query_err("beginning a transaction"))?;
    history::ensure_table(&mut tx, format).await?;
    let done = history::applied(&mut tx, format, migrations).await?;
    let mut applied: Vec<&Migration> = done
        .iter()
        .map(|v| find(migrations, v))
        .collect::<Result<_>>()?;
    applied.sort_by(|a, b| cmp_versions(&a.version, &b.version));
    let to_revert: Vec<&Migration> = applied
        .iter()
        .rev()
        .filter(|m| keep.is_none_or(|k| cmp_versions(&m.version, &k.version).is_gt()))
        .copied()
        .collect();
    for m in &to_revert {
        if m.down_is_empty() {
            return Err(Error::NoDown {
                version: m.version.clone(),
                name: m.name.clone(),
                file: m.file.clone(),
            });
        }
        let file = m.down_file.as_ref().unwrap_or(&m.file);
        check_transactional(m, m.down.as_deref().unwrap_or_default(), file, dialect)?;
    }
    let mut finished = Vec::new();
    for m in &to_revert {
        progress(m, Phase::Reverting);
        let started = Instant::now();
        let previous = applied
            .iter()
            .rev()
            .find(|p| cmp_versions(&p.version, &m.version).is_lt())
            .copied();
        let down = m.down.as_deref().unwrap_or_default();
        let outcome = match history::check_revert(&mut tx, format, m).await {
            Err(e) => Err(e),
            Ok(()) => match run_script(&mut tx, down).await {
                Ok(()) => {
                    history::record_revert(&mut tx, format, m, previous, started.elapsed()).await
                }
                Err(source) => Err(Error::Migration {
                    version: m.version.clone(),
                    name: m.name.clone(),
                    file: m.down_file.clone().unwrap_or_else(|| m.file.clone()),
                    down: true,
                    source,
                }),
            },
        };
        if let Err(e) = outcome {
            progress(m, Phase::Failed(e.to_string()));
            let _ = tx.rollback().await;
            progress(m, Phase::RolledBack);
            return Err(e);
        }
        progress(m, Phase::Reverted);
        finished.push(*m);
    }
    tx.commit()
        .await
        .map_err(query_err("committing the revert"))?;
    for m in &finished {
        progress(m, Phase::Committed);
    }
    Ok(finished.iter().map(|m| m.version.clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(sql: &str) -> Migration {
        Migration {
            version: "1".into(),
            name: "x".into(),
            up: sql.into(),
            down: None,
            file: "deploy/x.sql".into(),
            down_file: None,
            sqitch: None,
            ..Migration::default()
        }
    }

    #[test]
    fn targets_name_versions_changes_and_sqitch_tags() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sqitch");
        let migs = crate::migrations::read(&dir, Format::Sqitch).unwrap();
        let target = |t: &str| {
            find(&migs, t)
                .map(|m| m.name.as_str())
                .map_err(|e| e.to_string())
        };
        assert_eq!(target("0001"), Ok("create_users"));
        assert_eq!(target("index_email"), Ok("index_email"));
        assert_eq!(target("@v1.0"), Ok("add_email"));
        assert_eq!(target("add_email@v1.0"), Ok("add_email"));
        assert!(target("@v2.0").unwrap_err().contains("@v2.0"));
        assert!(target("nope").is_err());
    }

    fn check(sql: &str, dialect: Dialect) -> std::result::Result<(), String> {
        let m = m(sql);
        check_transactional(&m, sql, &m.file, dialect).map_err(|e| e.to_string())
    }

    #[test]
    fn scripts_with_their_own_transaction_are_refused() {
        for ok in [
            "-- Deploy x\nCREATE TABLE begin_end (id INT);\nINSERT INTO t VALUES (1);",
            // A PL/pgSQL body ends with END; inside its dollar quotes.
            "CREATE FUNCTION touch() RETURNS trigger AS $$\nBEGIN\n  NEW.at := now();\n  RETURN NEW;\nEND;\n$$ LANGUAGE plpgsql;",
            "DO $$ BEGIN PERFORM 1; END $$;",
            "CREATE FUNCTION one() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;",
            "-- a comment; with a semicolon\nSELECT E'it\\'s; ok';",
        ] {
            assert_eq!(check(ok, Dialect::Postgres), Ok(()), "{ok}");
        }
        let trigger = "CREATE TRIGGER t AFTER INSERT ON a\nBEGIN\n  UPDATE b SET n = n + 1;\nEND;";
        assert_eq!(check(trigger, Dialect::Sqlite), Ok(()));

        for (bad, dialect, says) in [
            (
                "BEGIN;\nCREATE TABLE t (id INT);\nCOMMIT;",
                Dialect::Postgres,
                "line 1: it manages its own transaction (BEGIN)",
            ),
            (
                "-- Deploy x\nbegin transaction;\nCREATE TABLE t (id INT);",
                Dialect::Sqlite,
                "line 2: it manages its own transaction (BEGIN)",
            ),
            (
                "CREATE TABLE t (id INT);\n\nCOMMIT;",
                Dialect::Postgres,
                "line 3: it manages its own transaction (COMMIT)",
            ),
            (
                "-- no-transaction\nCREATE INDEX CONCURRENTLY i ON t (c);",
                Dialect::Postgres,
                "marked `-- no-transaction`",
            ),
            (
                "CREATE TABLE t (c int);\nCREATE INDEX CONCURRENTLY i ON t (c);",
                Dialect::Postgres,
                "line 2: CREATE INDEX CONCURRENTLY cannot run inside a transaction block",
            ),
            (
                "PRAGMA foreign_keys = OFF;\nCREATE TABLE t (c int);",
                Dialect::Sqlite,
                "line 1: PRAGMA foreign_keys does nothing inside a transaction",
            ),
        ] {
            let err = check(bad, dialect).unwrap_err();
            assert!(
                err.contains("cannot run inside rewind's transaction"),
                "{err}"
            );
            assert!(err.contains("deploy/x.sql"), "{err}");
            assert!(err.contains(says), "{bad}: {err}");
        }
        let err = check("SELECT 1;\nSELECT 'open;", Dialect::Postgres).unwrap_err();
        assert!(
            err.contains("deploy/x.sql: cannot read its SQL: line 2, column 8"),
            "{err}"
        );
    }
}
