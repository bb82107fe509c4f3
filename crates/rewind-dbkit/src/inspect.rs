//! Data-integrity look-ups on a live database: rows per table and foreign keys that point
//! nowhere, for SQLite and PostgreSQL.

use std::collections::BTreeMap;
use std::future::Future;

use rewind_db::sql::{self, Dialect};
use serde::Serialize;
use sqlx::{PgPool, Row, SqlitePool};

use crate::error::{Error, Result, db};

/// The rows of one foreign key whose parent row does not exist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FkOrphans {
    /// The constraint's name (SQLite: `fk<N>`, its index in `PRAGMA foreign_key_list`).
    pub constraint: String,
    /// The referencing table (PostgreSQL: `schema.table`).
    pub table: String,
    pub columns: Vec<String>,
    /// The referenced table.
    pub references: String,
    /// The referenced columns (SQLite: empty when the key refers to the primary key).
    pub references_columns: Vec<String>,
    /// Rows of `table` whose key (all its columns non-NULL) has no parent row.
    pub orphans: i64,
}

/// Row counts and foreign-key checks, for a SQLite or a PostgreSQL pool.
pub trait Inspect {
    /// Exact row count of every user table (`count(*)`: reads every table). PostgreSQL keys
    /// are `schema.table`, SQLite keys the table name.
    fn row_counts(&self) -> impl Future<Output = Result<BTreeMap<String, i64>>> + Send;
    /// Every foreign key of every user table, with the number of rows that point nowhere
    /// (zero for a clean database). Orphans exist when the keys were not enforced: SQLite
    /// with `foreign_keys` off, PostgreSQL with `session_replication_role = replica` or
    /// disabled triggers, or a constraint added `NOT VALID`.
    fn fk_orphans(&self) -> impl Future<Output = Result<Vec<FkOrphans>>> + Send;
    /// Runs SQL assertions (name, SQL: a query of one value, true or 1 when the data is
    /// sound). Driver errors are redacted (URL passwords, and `secret`).
    fn sql_checks(
        &self,
        checks: &[(String, String)],
        secret: Option<&str>,
    ) -> impl Future<Output = Vec<CheckOutcome>> + Send;
    /// The catalog's description (see [`crate::catalog`]).
    fn catalog(&self) -> impl Future<Output = Result<crate::catalog::Catalog>> + Send;
}

/// One SQL assertion's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckOutcome {
    pub name: String,
    /// `None` when it could not run (`error` says why).
    pub holds: Option<bool>,
    pub error: Option<String>,
    /// It could not run because a table it reads does not exist (at this migration level, or
    /// in this backup): that says nothing about the data that is there.
    pub missing_table: bool,
}

/// [`Inspect::sql_checks`] for any pool: the same SQL runs on SQLite and PostgreSQL.
macro_rules! sql_checks {
    ($pool:expr, $checks:expr, $secret:expr, $dialect:expr) => {{
        let mut out = Vec::new();
        for (name, sql) in $checks {
            let q = match assertion_query(sql, $dialect) {
                Ok(q) => q,
                Err(e) => {
                    out.push(CheckOutcome {
                        name: name.clone(),
                        holds: None,
                        error: Some(e),
                        missing_table: false,
                    });
                    continue;
                }
            };
            let got: std::result::Result<i64, sqlx::Error> =
                sqlx::query_scalar(sqlx::AssertSqlSafe(q))
                    .fetch_one($pool)
                    .await;
            out.push(match got {
                Ok(v) => CheckOutcome {
                    name: name.clone(),
                    holds: Some(v == 1),
                    error: None,
                    missing_table: false,
                },
                Err(e) => CheckOutcome {
                    name: name.clone(),
                    holds: None,
                    missing_table: undefined_table(&e),
                    error: Some(crate::error::db_text(&e, $secret)),
                },
            });
        }
        out
    }};
}

/// An assertion's query wrapped to yield 1 when it holds. Only its one statement goes in
/// the wrapping: a trailing `;` would break it, and a trailing `-- comment` would swallow
/// its closing parenthesis.
fn assertion_query(sql: &str, dialect: Dialect) -> std::result::Result<String, String> {
    let statements = sql::split(sql, dialect).map_err(|e| format!("cannot read its SQL: {e}"))?;
    match statements.as_slice() {
        [one] => Ok(format!(
            "SELECT CAST(CASE WHEN ({}) THEN 1 ELSE 0 END AS BIGINT)",
            one.text
        )),
        [] => Err("its SQL is empty: write one query of one value".into()),
        more => Err(format!(
            "its SQL holds {} statements: write one query of one value",
            more.len()
        )),
    }
}

/// PostgreSQL's `undefined_table`, or SQLite's "no such table".
fn undefined_table(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.code().as_deref() == Some("42P01") || d.message().starts_with("no such table")
        }
        _ => false,
    }
}

/// `row_counts` for either kind of pool.
pub async fn row_counts<P: Inspect>(pool: &P) -> Result<BTreeMap<String, i64>> {
    pool.row_counts().await
}

/// `fk_orphans` for either kind of pool.
pub async fn fk_orphans<P: Inspect>(pool: &P) -> Result<Vec<FkOrphans>> {
    pool.fk_orphans().await
}

/// Quotes an identifier for SQL (`"` doubled).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Runs `PRAGMA integrity_check`; `Ok("ok")` or [`Error::Integrity`] with what it found.
pub async fn integrity_check(pool: &SqlitePool) -> Result<String> {
    let rows = sqlx::query("PRAGMA integrity_check")
        .fetch_all(pool)
        .await
        .map_err(db("PRAGMA integrity_check", None))?;
    let lines: Vec<String> = rows
        .iter()
        .filter_map(|r| r.try_get::<String, _>(0).ok())
        .collect();
    if lines == ["ok"] {
        Ok("ok".to_string())
    } else {
        Err(Error::Integrity(lines.join("; ")))
    }
}

async fn sqlite_tables(pool: &SqlitePool) -> Result<Vec<String>> {
    sqlx::query(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .map_err(db("listing tables", None))?
    .iter()
    .map(|r| r.try_get::<String, _>(0).map_err(db("listing tables", None)))
    .collect()
}

impl Inspect for SqlitePool {
    async fn catalog(&self) -> Result<crate::catalog::Catalog> {
        crate::catalog::sqlite_describe(self).await
    }

    async fn sql_checks(
        &self,
        checks: &[(String, String)],
        secret: Option<&str>,
    ) -> Vec<CheckOutcome> {
        sql_checks!(self, checks, secret, Dialect::Sqlite)
    }

    async fn row_counts(&self) -> Result<BTreeMap<String, i64>> {
        let mut out = BTreeMap::new();
        for table in sqlite_tables(self).await? {
            let sql = format!("SELECT count(*) FROM {}", quote_ident(&table));
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(self)
                .await
                .map_err(db(format!("counting rows of {table}"), None))?;
            out.insert(table, n);
        }
        Ok(out)
    }

    async fn fk_orphans(&self) -> Result<Vec<FkOrphans>> {
        // Every key, from PRAGMA foreign_key_list, keyed by (table, id).
        let mut keys: BTreeMap<(String, i64), FkOrphans> = BTreeMap::new();
        for table in sqlite_tables(self).await? {
            let rows = sqlx::query("SELECT id, seq, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list(?) ORDER BY id, seq")
                .bind(&table)
                .fetch_all(self)
                .await
                .map_err(db(format!("foreign keys of {table}"), None))?;
            for r in rows {
                let ctx = || db(format!("foreign keys of {table}"), None);
                let id: i64 = r.try_get(0).map_err(ctx())?;
                let parent: String = r.try_get(2).map_err(ctx())?;
                let from: String = r.try_get(3).map_err(ctx())?;
                let to: Option<String> = r.try_get(4).map_err(ctx())?;
                let entry = keys
                    .entry((table.clone(), id))
                    .or_insert_with(|| FkOrphans {
                        constraint: format!("fk{id}"),
                        table: table.clone(),
                        columns: Vec::new(),
                        references: parent,
                        references_columns: Vec::new(),
                        orphans: 0,
                    });
                entry.columns.push(from);
                if let Some(to) = to {
                    entry.references_columns.push(to);
                }
            }
        }
        // PRAGMA foreign_key_check lists each violating row: table, rowid, parent, fkid.
        let rows = sqlx::query("PRAGMA foreign_key_check")
            .fetch_all(self)
            .await
            .map_err(db("PRAGMA foreign_key_check", None))?;
        for r in rows {
            let table: String = r.try_get(0).map_err(db("PRAGMA foreign_key_check", None))?;
            let fkid: i64 = r.try_get(3).map_err(db("PRAGMA foreign_key_check", None))?;
            if let Some(k) = keys.get_mut(&(table, fkid)) {
                k.orphans += 1;
            }
        }
        Ok(keys.into_values().collect())
    }
}

impl Inspect for PgPool {
    async fn catalog(&self) -> Result<crate::catalog::Catalog> {
        let mut conn = self
            .acquire()
            .await
            .map_err(db("describing the catalog", None))?;
        crate::catalog::pg_describe_now(&mut conn).await
    }

    async fn sql_checks(
        &self,
        checks: &[(String, String)],
        secret: Option<&str>,
    ) -> Vec<CheckOutcome> {
        sql_checks!(self, checks, secret, Dialect::Postgres)
    }

    async fn row_counts(&self) -> Result<BTreeMap<String, i64>> {
        let tables = sqlx::query(
            "SELECT n.nspname::text, c.relname::text
               FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p')
                AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                AND n.nspname NOT LIKE 'pg\\_%'
              ORDER BY 1, 2",
        )
        .fetch_all(self)
        .await
        .map_err(db("listing tables", None))?;
        let mut out = BTreeMap::new();
        for r in tables {
            let schema: String = r.try_get(0).map_err(db("listing tables", None))?;
            let table: String = r.try_get(1).map_err(db("listing tables", None))?;
            let sql = format!(
                "SELECT count(*) FROM {}.{}",
                quote_ident(&schema),
                quote_ident(&table)
            );
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(self)
                .await
                .map_err(db(format!("counting rows of {schema}.{table}"), None))?;
            out.insert(format!("{schema}.{table}"), n);
        }
        Ok(out)
    }

    async fn fk_orphans(&self) -> Result<Vec<FkOrphans>> {
        // Columns in key order: unnest … WITH ORDINALITY over conkey / confkey.
        let keys = sqlx::query(
            "SELECT c.conname::text, ns.nspname::text, cl.relname::text,
                    fns.nspname::text, fcl.relname::text,
                    ARRAY(SELECT a.attname::text
                            FROM unnest(c.conkey) WITH ORDINALITY AS k(num, ord)
                            JOIN pg_catalog.pg_attribute a
                              ON a.attrelid = c.conrelid AND a.attnum = k.num
                           ORDER BY k.ord),
                    ARRAY(SELECT a.attname::text
                            FROM unnest(c.confkey) WITH ORDINALITY AS k(num, ord)
                            JOIN pg_catalog.pg_attribute a
                              ON a.attrelid = c.confrelid AND a.attnum = k.num
                           ORDER BY k.ord)
               FROM pg_catalog.pg_constraint c
               JOIN pg_catalog.pg_class cl ON cl.oid = c.conrelid
               JOIN pg_catalog.pg_namespace ns ON ns.oid = cl.relnamespace
               JOIN pg_catalog.pg_class fcl ON fcl.oid = c.confrelid
               JOIN pg_catalog.pg_namespace fns ON fns.oid = fcl.relnamespace
              WHERE c.contype = 'f'
                AND c.conparentid = 0
                AND ns.nspname NOT IN ('pg_catalog', 'information_schema')
              ORDER BY 2, 3, 1",
        )
        .fetch_all(self)
        .await
        .map_err(db("listing foreign keys", None))?;
        let mut out = Vec::new();
        for r in keys {
            let ctx = || db("listing foreign keys", None);
            let constraint: String = r.try_get(0).map_err(ctx())?;
            let (schema, table): (String, String) =
                (r.try_get(1).map_err(ctx())?, r.try_get(2).map_err(ctx())?);
            let (fschema, ftable): (String, String) =
                (r.try_get(3).map_err(ctx())?, r.try_get(4).map_err(ctx())?);
            let columns: Vec<String> = r.try_get(5).map_err(ctx())?;
            let fcolumns: Vec<String> = r.try_get(6).map_err(ctx())?;
            if columns.is_empty() || columns.len() != fcolumns.len() {
                continue;
            }
            // MATCH SIMPLE: a key with any NULL column is not checked.
            let not_null: Vec<String> = columns
                .iter()
                .map(|c| format!("c.{} IS NOT NULL", quote_ident(c)))
                .collect();
            let join: Vec<String> = columns
                .iter()
                .zip(&fcolumns)
                .map(|(c, p)| format!("p.{} = c.{}", quote_ident(p), quote_ident(c)))
                .collect();
            let sql = format!(
                "SELECT count(*) FROM {}.{} AS c WHERE {} AND NOT EXISTS (SELECT 1 FROM {}.{} AS p WHERE {})",
                quote_ident(&schema),
                quote_ident(&table),
                not_null.join(" AND "),
                quote_ident(&fschema),
                quote_ident(&ftable),
                join.join(" AND "),
            );
            let orphans: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(self)
                .await
                .map_err(db(format!("checking foreign key {constraint}"), None))?;
            out.push(FkOrphans {
                constraint,
                table: format!("{schema}.{table}"),
                columns,
                references: format!("{fschema}.{ftable}"),
                references_columns: fcolumns,
                orphans,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assertions_are_wrapped_without_their_edges() {
        let wrap =
            |inner: &str| format!("SELECT CAST(CASE WHEN ({inner}) THEN 1 ELSE 0 END AS BIGINT)");
        for (sql, inner) in [
            ("SELECT count(*) = 0 FROM t", "SELECT count(*) = 0 FROM t"),
            (
                "-- no negative balances\nSELECT count(*) = 0 FROM accounts WHERE balance < 0; -- ok\n",
                "SELECT count(*) = 0 FROM accounts WHERE balance < 0",
            ),
            (
                "SELECT count(*) = 0 -- none left\nFROM t;",
                "SELECT count(*) = 0 -- none left\nFROM t",
            ),
            ("SELECT ';' <> ''", "SELECT ';' <> ''"),
        ] {
            assert_eq!(
                assertion_query(sql, Dialect::Sqlite),
                Ok(wrap(inner)),
                "{sql}"
            );
        }
        let err = assertion_query("SELECT 1; DELETE FROM t", Dialect::Postgres).unwrap_err();
        assert!(err.contains("2 statements"), "{err}");
        assert!(
            assertion_query("-- nothing", Dialect::Postgres)
                .unwrap_err()
                .contains("empty")
        );
        let err = assertion_query("SELECT 'open", Dialect::Postgres).unwrap_err();
        assert!(err.contains("line 1, column 8"), "{err}");
    }
}
