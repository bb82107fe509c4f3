//! Applying and reverting migrations, each call in ONE transaction.
//!
//! PostgreSQL and SQLite both run DDL inside transactions, so a batch (the scripts and the
//! history-table updates, and creating the history table itself) either happens entirely or
//! not at all: on any error the transaction is rolled back and the database and its history
//! are exactly as before — no golang-migrate "dirty" row, no failed Flyway row.
//!
//! Consequently scripts that cannot run in a transaction are refused before anything runs:
//! a script whose first line is sqlx's `-- no-transaction` directive, and a script that
//! manages its own transaction (a `BEGIN`/`COMMIT`/`ROLLBACK` statement, as sqitch scripts
//! often have): its `COMMIT` would end rewind's transaction half-way.

use std::time::Instant;

use sqlx::{AnyConnection, AnyPool, Connection};

use crate::history;
use crate::migrations::{Format, Migration, cmp_versions};
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

/// Refuses scripts that cannot run inside rewind's transaction.
fn check_transactional(m: &Migration, sql: &str) -> Result<()> {
    let refuse = |reason: &str| {
        Err(Error::NotTransactional {
            version: m.version.clone(),
            name: m.name.clone(),
            file: m.file.clone(),
            reason: reason.to_string(),
        })
    };
    if sql
        .trim_start_matches('\u{feff}')
        .starts_with("-- no-transaction")
    {
        return refuse("it is marked `-- no-transaction`");
    }
    for stmt in sql.split(';') {
        // Drop leading comment lines of the statement.
        let words: Vec<String> = stmt
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .flat_map(|l| l.split_whitespace())
            .take(2)
            .map(|w| w.to_ascii_uppercase())
            .collect();
        let first = words.first().map(String::as_str).unwrap_or("");
        let second = words.get(1).map(String::as_str).unwrap_or("");
        let txn = matches!(first, "BEGIN" | "COMMIT" | "ROLLBACK" | "END")
            && (second.is_empty()
                || matches!(
                    second,
                    "TRANSACTION" | "WORK" | "IMMEDIATE" | "EXCLUSIVE" | "DEFERRED"
                ))
            || (first == "START" && second == "TRANSACTION");
        if txn {
            return refuse(
                "it contains its own BEGIN/COMMIT; remove them (rewind wraps the batch in one transaction)",
            );
        }
    }
    Ok(())
}

async fn run_script(conn: &mut AnyConnection, sql: &str) -> std::result::Result<(), sqlx::Error> {
    if crate::migrations::sql_is_empty(sql) {
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
        check_transactional(m, &m.up)?;
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
        check_transactional(m, m.down.as_deref().unwrap_or_default())?;
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

    #[test]
    fn scripts_with_their_own_transaction_are_refused() {
        let ok = "-- Deploy x\nCREATE TABLE begin_end (id INT);\nINSERT INTO t VALUES (1);";
        assert!(check_transactional(&m(ok), ok).is_ok());
        for bad in [
            "BEGIN;\nCREATE TABLE t (id INT);\nCOMMIT;",
            "-- Deploy x\nbegin transaction;\nCREATE TABLE t (id INT);",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY i ON t (c);",
        ] {
            let err = check_transactional(&m(bad), bad).unwrap_err().to_string();
            assert!(
                err.contains("cannot run inside rewind's transaction"),
                "{err}"
            );
        }
    }
}
