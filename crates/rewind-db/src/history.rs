//! Each tool's own history table, read and written the way the tool does, so the team's tool
//! agrees with what rewind applied or reverted.
//!
//! What each tool keeps, and how far that was checked against the tool itself: sqitch 1.3.1
//! (Debian) by the tests, which run it; sqlx-cli 0.9.0 and diesel_cli 2.3.14 by hand on
//! SQLite and PostgreSQL (`migrate info`/`migration list` after rewind applied or reverted,
//! the tool's `run`/`revert` followed by rewind, checksums equal); Flyway, golang-migrate and
//! refinery only from their documentation and source (no installable binary here):
//!
//! - **sqlx** `_sqlx_migrations(version BIGINT PRIMARY KEY, description TEXT, installed_on
//!   TIMESTAMP[TZ] DEFAULT now, success BOOLEAN, checksum BLOB/BYTEA, execution_time BIGINT)`:
//!   one row per applied migration; `checksum` is SHA-384 of the up script, `execution_time`
//!   in nanoseconds. A revert deletes the row (as `sqlx migrate revert` does). A row with
//!   `success = false` means sqlx considers the database dirty: [`applied`] refuses it.
//! - **diesel** `__diesel_schema_migrations(version VARCHAR(50) PRIMARY KEY, run_on TIMESTAMP
//!   DEFAULT CURRENT_TIMESTAMP)`: a row per applied migration, deleted on revert.
//! - **golang-migrate** `schema_migrations(version BIGINT PRIMARY KEY, dirty BOOLEAN)`
//!   (SQLite: `version uint64, dirty bool` plus a unique index `version_unique`): a single
//!   row holding the current version; every migration up to it counts as applied. Reverting
//!   everything leaves the table empty (golang-migrate's "nil version"). Since rewind runs a
//!   batch in one transaction, `dirty` is never left true; a dirty row is refused.
//! - **Flyway** `flyway_schema_history(installed_rank INT PK, version VARCHAR(50),
//!   description VARCHAR(200), type VARCHAR(20), script VARCHAR(1000), checksum INT,
//!   installed_by VARCHAR(100), installed_on TIMESTAMP, execution_time INT (ms), success
//!   BOOLEAN)` plus the index `flyway_schema_history_s_idx` on `success`. Applying appends a
//!   `SQL` row. **An undo appends an `UNDO_SQL` row** (script `U<v>__….sql`, the undo
//!   script's checksum), as Flyway Teams' `flyway undo` does, rather than deleting the `SQL`
//!   row: history is append-only in Flyway and a later `flyway info` shows the version as
//!   undone and pending again. A version counts as applied when its latest successful row
//!   (by `installed_rank`) is of type `SQL`. The `SCHEMA` marker row Flyway writes when it
//!   creates a schema itself is not written (rewind never creates the schema).
//! - **refinery** `refinery_schema_history(version INT4 PRIMARY KEY, name VARCHAR(255),
//!   applied_on VARCHAR(255) (RFC 3339), checksum VARCHAR(255) (decimal u64))`; refinery has
//!   no down migrations, so a revert (which the runner refuses anyway) would delete the row.
//! - **sqitch** registry (checked against sqitch 1.3.1: `sqitch status`, `log`, `verify`,
//!   `deploy` and `revert` agree with what rewind wrote, and rewind reads what sqitch wrote):
//!   on PostgreSQL the schema `sqitch`; on SQLite a separate database beside the target
//!   database file (`sqitch.db` for `app.db`, see [`sqitch_sqlite_registry`]), attached to
//!   the connection as `sqitch` (so both are changed in one transaction). Written as sqitch
//!   does: `releases` (registry version 1.1, as soon as the registry is created: sqitch
//!   refuses a registry without it), `projects`, `changes` (one row per deployed change,
//!   with the deploy script's SHA-1 as `script_hash`), `tags` (the plan's `@tag`s on the
//!   change, so `sqitch revert --to @tag` finds them), `dependencies` (requires resolved to
//!   the deployed change id; a deploy whose required change is not deployed, or whose
//!   conflicting change is, is refused, and so is reverting a change a deployed change
//!   still requires) and `events` (a `deploy` or `revert` row each time). A revert deletes
//!   the change's `changes`, `tags` and `dependencies` rows. sqitch's `fail` events are never
//!   written (a failed batch is rolled back entirely instead). sqitch orders changes by
//!   `committed_at`; on SQLite, whose clock has milliseconds, each entry of a batch gets a
//!   later one than the entry before. Committer is `rewind <rewind@localhost>` unless the
//!   environment sets `REWIND_DB_COMMITTER_NAME` / `REWIND_DB_COMMITTER_EMAIL`.

use std::path::{Path, PathBuf};

use sqlx::{AnyConnection, Row};

use crate::migrations::{Checksum, Format, Migration, tool_checksum};
use crate::{Error, Result, query_err};

/// The database behind an `Any` connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(conn: &AnyConnection) -> Result<Backend> {
        match conn.backend_name() {
            "SQLite" => Ok(Backend::Sqlite),
            "PostgreSQL" => Ok(Backend::Postgres),
            other => Err(Error::History {
                table: "-".into(),
                detail: format!("unsupported database {other}"),
            }),
        }
    }
}

async fn exec(conn: &mut AnyConnection, sql: &str, doing: &str) -> Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut *conn)
        .await
        .map_err(query_err(doing))?;
    Ok(())
}

/// The SQLite main database file of `conn`, from `PRAGMA database_list`.
async fn sqlite_main_file(conn: &mut AnyConnection) -> Result<Option<PathBuf>> {
    let rows = sqlx::query("SELECT name, file FROM pragma_database_list")
        .fetch_all(&mut *conn)
        .await
        .map_err(query_err("listing SQLite databases"))?;
    for row in rows {
        let name: String = row.try_get(0).map_err(query_err("reading database_list"))?;
        let file: Option<String> = row.try_get(1).map_err(query_err("reading database_list"))?;
        if name == "main" {
            return Ok(file.filter(|f| !f.is_empty()).map(PathBuf::from));
        }
    }
    Ok(None)
}

/// Where sqitch keeps its registry for a SQLite database file: beside it, named `sqitch`
/// with the database file's extension (everything after the first `.`): `app.db` →
/// `sqitch.db`, `app.sqlite3` → `sqitch.sqlite3`, `app` → `sqitch`, as sqitch's default
/// `registry_uri` does.
pub fn sqitch_sqlite_registry(db_file: &Path) -> PathBuf {
    let name = db_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let registry = match name.split_once('.') {
        Some((_, ext)) => format!("sqitch.{ext}"),
        None => "sqitch".to_string(),
    };
    db_file
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(registry)
}

/// Gets a connection ready for `format` outside any transaction: for sqitch on SQLite,
/// attaches the registry `sqitch.db` beside the database as schema `sqitch`.
pub async fn prepare(conn: &mut AnyConnection, format: Format) -> Result<()> {
    if format != Format::Sqitch || Backend::of(conn)? != Backend::Sqlite {
        return Ok(());
    }
    let attached = sqlx::query("SELECT 1 FROM pragma_database_list WHERE name = 'sqitch'")
        .fetch_optional(&mut *conn)
        .await
        .map_err(query_err("listing SQLite databases"))?
        .is_some();
    if attached {
        return Ok(());
    }
    let main = sqlite_main_file(conn)
        .await?
        .ok_or_else(|| Error::History {
            table: "sqitch".into(),
            detail: "the sqitch registry needs a SQLite database file, not an in-memory one".into(),
        })?;
    let registry = sqitch_sqlite_registry(&main);
    sqlx::query("ATTACH DATABASE $1 AS sqitch")
        .bind(registry.to_string_lossy().into_owned())
        .execute(&mut *conn)
        .await
        .map_err(query_err(format!(
            "attaching the sqitch registry {}",
            registry.display()
        )))?;
    Ok(())
}

/// Creates the history table (or sqitch registry) when missing, as the tool would.
pub async fn ensure_table(conn: &mut AnyConnection, format: Format) -> Result<()> {
    let backend = Backend::of(conn)?;
    let pg = backend == Backend::Postgres;
    let sql = match format {
        Format::Sqlx => format!(
            "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on {} NOT NULL DEFAULT {},
    success BOOLEAN NOT NULL,
    checksum {} NOT NULL,
    execution_time BIGINT NOT NULL
)",
            if pg { "TIMESTAMPTZ" } else { "TIMESTAMP" },
            if pg { "now()" } else { "CURRENT_TIMESTAMP" },
            if pg { "BYTEA" } else { "BLOB" },
        ),
        Format::Diesel => "CREATE TABLE IF NOT EXISTS __diesel_schema_migrations (
    version VARCHAR(50) PRIMARY KEY NOT NULL,
    run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
)"
        .to_string(),
        Format::GolangMigrate if pg => "CREATE TABLE IF NOT EXISTS schema_migrations \
             (version bigint not null primary key, dirty boolean not null)"
            .to_string(),
        Format::GolangMigrate => "CREATE TABLE IF NOT EXISTS schema_migrations \
             (version uint64, dirty bool);
CREATE UNIQUE INDEX IF NOT EXISTS version_unique ON schema_migrations (version)"
            .to_string(),
        Format::Flyway => format!(
            "CREATE TABLE IF NOT EXISTS flyway_schema_history (
    installed_rank INT NOT NULL,
    version VARCHAR(50),
    description VARCHAR(200) NOT NULL,
    type VARCHAR(20) NOT NULL,
    script VARCHAR(1000) NOT NULL,
    checksum INT,
    installed_by VARCHAR(100) NOT NULL,
    installed_on {} NOT NULL DEFAULT {},
    execution_time INT NOT NULL,
    success BOOLEAN NOT NULL,
    CONSTRAINT flyway_schema_history_pk PRIMARY KEY (installed_rank)
);
CREATE INDEX IF NOT EXISTS flyway_schema_history_s_idx ON flyway_schema_history (success)",
            if pg { "TIMESTAMP" } else { "TEXT" },
            if pg {
                "now()"
            } else {
                "(strftime('%Y-%m-%d %H:%M:%f','now'))"
            },
        ),
        Format::Refinery => format!(
            "CREATE TABLE IF NOT EXISTS refinery_schema_history (
    version {} PRIMARY KEY,
    name VARCHAR(255),
    applied_on VARCHAR(255),
    checksum VARCHAR(255)
)",
            // refinery writes int4 for every database (on SQLite: not a rowid alias).
            if pg { "INT4" } else { "int4" }
        ),
        Format::Sqitch => sqitch_registry_ddl(pg),
    };
    exec(conn, &sql, &format!("creating the {format} history table")).await?;
    if format == Format::Sqitch {
        // sqitch reads a registry without a release row as one to upgrade from "{old}", and
        // refuses to deploy or revert until `sqitch upgrade`, which then fails.
        let (name, email) = committer();
        sqlx::query(
            "INSERT INTO sqitch.releases (version, installer_name, installer_email) \
             SELECT 1.1, $1, $2 WHERE NOT EXISTS (SELECT 1 FROM sqitch.releases)",
        )
        .bind(name)
        .bind(email)
        .execute(&mut *conn)
        .await
        .map_err(query_err("recording the sqitch registry release"))?;
    }
    Ok(())
}

fn sqitch_registry_ddl(pg: bool) -> String {
    let (ts, now, arr, arr_default) = if pg {
        ("TIMESTAMPTZ", "clock_timestamp()", "TEXT[]", "'{}'")
    } else {
        (
            "DATETIME",
            "(strftime('%Y-%m-%d %H:%M:%f','now'))",
            "TEXT",
            "''",
        )
    };
    let schema = if pg {
        "CREATE SCHEMA IF NOT EXISTS sqitch;\n"
    } else {
        ""
    };
    // On SQLite, REFERENCES inside an attached database must name tables unqualified.
    format!(
        "{schema}CREATE TABLE IF NOT EXISTS sqitch.releases (
    version REAL PRIMARY KEY,
    installed_at {ts} NOT NULL DEFAULT {now},
    installer_name TEXT NOT NULL,
    installer_email TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sqitch.projects (
    project TEXT PRIMARY KEY,
    uri TEXT NULL UNIQUE,
    created_at {ts} NOT NULL DEFAULT {now},
    creator_name TEXT NOT NULL,
    creator_email TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sqitch.changes (
    change_id TEXT PRIMARY KEY,
    script_hash TEXT NULL,
    change TEXT NOT NULL,
    project TEXT NOT NULL REFERENCES projects(project) ON UPDATE CASCADE,
    note TEXT NOT NULL DEFAULT '',
    committed_at {ts} NOT NULL DEFAULT {now},
    committer_name TEXT NOT NULL,
    committer_email TEXT NOT NULL,
    planned_at {ts} NOT NULL,
    planner_name TEXT NOT NULL,
    planner_email TEXT NOT NULL,
    UNIQUE (project, script_hash)
);
CREATE TABLE IF NOT EXISTS sqitch.tags (
    tag_id TEXT PRIMARY KEY,
    tag TEXT NOT NULL,
    project TEXT NOT NULL REFERENCES projects(project) ON UPDATE CASCADE,
    change_id TEXT NOT NULL REFERENCES changes(change_id) ON UPDATE CASCADE,
    note TEXT NOT NULL DEFAULT '',
    committed_at {ts} NOT NULL DEFAULT {now},
    committer_name TEXT NOT NULL,
    committer_email TEXT NOT NULL,
    planned_at {ts} NOT NULL,
    planner_name TEXT NOT NULL,
    planner_email TEXT NOT NULL,
    UNIQUE (project, tag)
);
CREATE TABLE IF NOT EXISTS sqitch.dependencies (
    change_id TEXT NOT NULL REFERENCES changes(change_id) ON UPDATE CASCADE ON DELETE CASCADE,
    type TEXT NOT NULL,
    dependency TEXT NOT NULL,
    dependency_id TEXT NULL REFERENCES changes(change_id) ON UPDATE CASCADE
        CONSTRAINT dependencies_check CHECK (
            (type = 'require' AND dependency_id IS NOT NULL)
            OR (type = 'conflict' AND dependency_id IS NULL)
        ),
    PRIMARY KEY (change_id, dependency)
);
CREATE TABLE IF NOT EXISTS sqitch.events (
    event TEXT NOT NULL CHECK (event IN ('deploy', 'revert', 'fail', 'merge')),
    change_id TEXT NOT NULL,
    change TEXT NOT NULL,
    project TEXT NOT NULL REFERENCES projects(project) ON UPDATE CASCADE,
    note TEXT NOT NULL DEFAULT '',
    requires {arr} NOT NULL DEFAULT {arr_default},
    conflicts {arr} NOT NULL DEFAULT {arr_default},
    tags {arr} NOT NULL DEFAULT {arr_default},
    committed_at {ts} NOT NULL DEFAULT {now},
    committer_name TEXT NOT NULL,
    committer_email TEXT NOT NULL,
    planned_at {ts} NOT NULL,
    planner_name TEXT NOT NULL,
    planner_email TEXT NOT NULL,
    PRIMARY KEY (change_id, committed_at)
)"
    )
    .replace(
        "REFERENCES projects(",
        if pg {
            "REFERENCES sqitch.projects("
        } else {
            "REFERENCES projects("
        },
    )
    .replace(
        "REFERENCES changes(",
        if pg {
            "REFERENCES sqitch.changes("
        } else {
            "REFERENCES changes("
        },
    )
}

async fn table_exists(conn: &mut AnyConnection, format: Format) -> Result<bool> {
    let backend = Backend::of(conn)?;
    let (schema, table) = match format.history_table().split_once('.') {
        Some((s, t)) => (Some(s), t),
        None => (None, format.history_table()),
    };
    let row = match backend {
        Backend::Postgres => sqlx::query(
            "SELECT 1 FROM information_schema.tables \
             WHERE table_schema = COALESCE($1, current_schema()) AND table_name = $2",
        )
        .bind(schema.map(str::to_string))
        .bind(table.to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(query_err("looking for the history table"))?,
        Backend::Sqlite => {
            let master = match schema {
                Some(s) => format!("{s}.sqlite_master"),
                None => "sqlite_master".to_string(),
            };
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT 1 FROM {master} WHERE type = 'table' AND name = $1"
            )))
            .bind(table.to_string())
            .fetch_optional(&mut *conn)
            .await
            .map_err(query_err("looking for the history table"))?
        }
    };
    Ok(row.is_some())
}

async fn texts(conn: &mut AnyConnection, sql: &str, doing: &str) -> Result<Vec<String>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_all(&mut *conn)
        .await
        .map_err(query_err(doing))?;
    rows.iter()
        .map(|r| r.try_get::<String, _>(0).map_err(query_err(doing)))
        .collect()
}

fn history_err(format: Format, detail: impl Into<String>) -> Error {
    Error::History {
        table: format.history_table().to_string(),
        detail: detail.into(),
    }
}

/// The versions of `migrations` the tool's history says are applied, in apply order (oldest
/// first). A missing table means nothing is applied. Applied entries that are not in
/// `migrations` are left out: [`recorded`] has them. golang-migrate stores only its current
/// version: every migration up to it (in the tool's order) counts as applied.
pub async fn applied(
    conn: &mut AnyConnection,
    format: Format,
    migrations: &[Migration],
) -> Result<Vec<String>> {
    let recorded = recorded(conn, format, migrations).await?;
    Ok(recorded
        .iter()
        .filter_map(|r| migrations.iter().find(|m| m.key() == r.key))
        .map(|m| m.version.clone())
        .collect())
}

/// One applied migration as the tool's history records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// What identifies it: the version as the tool stores it; for sqitch the change id
    /// (compare with [`Migration::key`]).
    pub key: String,
    /// The description or name the history holds ("" when it holds none; sqitch: the change
    /// name).
    pub name: String,
    /// The stored checksum as text (see [`crate::migrations::Checksum::to_text`]), `None`
    /// when the tool keeps none or the row has none.
    pub checksum: Option<String>,
}

/// What the history says is applied, with the checksums it stored, in apply order (oldest
/// first: by install time or rank, ties in the tool's order). Entries are not checked
/// against `migrations` (the caller sorts out those that have no file); golang-migrate's
/// single row is expanded to every migration up to it, or kept as one entry when its version
/// is not in `migrations`. A history the tool itself calls dirty or failed is refused.
pub async fn recorded(
    conn: &mut AnyConnection,
    format: Format,
    migrations: &[Migration],
) -> Result<Vec<Recorded>> {
    if !table_exists(conn, format).await? {
        return Ok(Vec::new());
    }
    let pg = Backend::of(conn)? == Backend::Postgres;
    let doing = format!("reading {}", format.history_table());
    let project = migrations
        .iter()
        .find_map(|m| m.sqitch.as_ref())
        .map(|s| s.project.clone())
        .unwrap_or_default();
    match format {
        Format::Sqlx => {
            let failed = texts(
                conn,
                "SELECT CAST(version AS TEXT) FROM _sqlx_migrations WHERE NOT success",
                &doing,
            )
            .await?;
            if let Some(v) = failed.first() {
                return Err(history_err(
                    format,
                    format!("migration {v} is recorded as failed (dirty); fix it with sqlx first"),
                ));
            }
        }
        Format::Flyway => {
            let failed = texts(
                conn,
                "SELECT COALESCE(version, script) FROM flyway_schema_history WHERE NOT success",
                &doing,
            )
            .await?;
            if let Some(v) = failed.first() {
                return Err(history_err(
                    format,
                    format!("a failed migration ({v}) is recorded; run `flyway repair` first"),
                ));
            }
        }
        _ => {}
    }
    let sql = match format {
        // The output columns are named `rkey`: an ORDER BY naming `version` must sort the
        // table's column (a number), not the text made of it (PostgreSQL resolves ORDER BY
        // names against the output columns first: `10` would come before `9`).
        Format::Sqlx if pg => {
            "SELECT CAST(version AS TEXT) AS rkey, description, encode(checksum, 'hex') \
             FROM _sqlx_migrations WHERE success ORDER BY installed_on, version"
        }
        Format::Sqlx => {
            "SELECT CAST(version AS TEXT) AS rkey, description, lower(hex(checksum)) \
             FROM _sqlx_migrations WHERE success ORDER BY installed_on, version"
        }
        Format::Diesel => {
            "SELECT version AS rkey, '', CAST(NULL AS TEXT) FROM __diesel_schema_migrations \
             ORDER BY run_on, version"
        }
        Format::GolangMigrate => {
            "SELECT CAST(version AS TEXT), CASE WHEN dirty THEN 'dirty' ELSE '' END, \
             CAST(NULL AS TEXT) FROM schema_migrations"
        }
        // The latest successful SQL row of each version that no later undo took back.
        Format::Flyway => {
            "SELECT h.version, h.description, CAST(h.checksum AS TEXT) \
             FROM flyway_schema_history h \
             WHERE h.success AND h.version IS NOT NULL AND h.type = 'SQL' \
             AND NOT EXISTS (SELECT 1 FROM flyway_schema_history u \
               WHERE u.version = h.version AND u.success \
               AND u.type IN ('SQL', 'UNDO_SQL') AND u.installed_rank > h.installed_rank) \
             ORDER BY h.installed_rank"
        }
        Format::Refinery => {
            "SELECT CAST(version AS TEXT) AS rkey, name, checksum FROM refinery_schema_history \
             ORDER BY applied_on, version"
        }
        Format::Sqitch => {
            "SELECT change_id, change, script_hash FROM sqitch.changes WHERE project = $1 \
             ORDER BY committed_at"
        }
    };
    let mut q = sqlx::query(sql);
    if format == Format::Sqitch {
        q = q.bind(project);
    }
    let rows = q
        .fetch_all(&mut *conn)
        .await
        .map_err(query_err(doing.clone()))?;
    let mut out = Vec::new();
    for r in rows {
        out.push(Recorded {
            key: r.try_get(0).map_err(query_err(doing.clone()))?,
            name: r.try_get(1).map_err(query_err(doing.clone()))?,
            checksum: r
                .try_get::<Option<String>, _>(2)
                .map_err(query_err(doing.clone()))?
                .filter(|c| !c.is_empty()),
        });
    }
    // Rows installed in one transaction share their time; the SQL above breaks such ties by
    // version, in the database's order, which is the tool's order for these formats (numbers,
    // and diesel's digit strings).
    if format == Format::GolangMigrate {
        match out.as_slice() {
            [] => {}
            [one] => {
                if one.name == "dirty" {
                    return Err(history_err(
                        format,
                        format!(
                            "the database is dirty at version {}; fix it with `migrate force` first",
                            one.key
                        ),
                    ));
                }
                let current = one.key.clone();
                if migrations.iter().any(|m| m.version == current) {
                    out = migrations
                        .iter()
                        .filter(|m| format.cmp_versions(&m.version, &current).is_le())
                        .map(|m| Recorded {
                            key: m.version.clone(),
                            name: String::new(),
                            checksum: None,
                        })
                        .collect();
                } else {
                    out[0].name = String::new();
                }
            }
            _ => return Err(history_err(format, "more than one row")),
        }
    }
    Ok(out)
}

fn committer() -> (String, String) {
    (
        std::env::var("REWIND_DB_COMMITTER_NAME").unwrap_or_else(|_| "rewind".into()),
        std::env::var("REWIND_DB_COMMITTER_EMAIL").unwrap_or_else(|_| "rewind@localhost".into()),
    )
}

fn parse_i64(format: Format, v: &str) -> Result<i64> {
    v.parse()
        .map_err(|_| history_err(format, format!("version {v} is not an integer")))
}

/// Records that `m` was applied, taking `elapsed`. `migrations` is the whole list (for
/// golang-migrate's single row this is simply `m`'s version).
pub async fn record_apply(
    conn: &mut AnyConnection,
    format: Format,
    m: &Migration,
    elapsed: std::time::Duration,
) -> Result<()> {
    let backend = Backend::of(conn)?;
    let pg = backend == Backend::Postgres;
    let doing = format!("recording V{} in {}", m.version, format.history_table());
    let q = match format {
        Format::Sqlx => {
            let Checksum::Sha384(sum) = tool_checksum(format, m) else {
                unreachable!("sqlx checksums are SHA-384")
            };
            sqlx::query(
                "INSERT INTO _sqlx_migrations \
                 (version, description, success, checksum, execution_time) \
                 VALUES ($1, $2, TRUE, $3, $4)",
            )
            .bind(parse_i64(format, &m.version)?)
            .bind(m.name.clone())
            .bind(sum)
            .bind(elapsed.as_nanos() as i64)
        }
        Format::Diesel => {
            sqlx::query("INSERT INTO __diesel_schema_migrations (version) VALUES ($1)")
                .bind(m.version.clone())
        }
        Format::GolangMigrate => {
            exec(conn, "DELETE FROM schema_migrations", &doing).await?;
            sqlx::query("INSERT INTO schema_migrations (version, dirty) VALUES ($1, FALSE)")
                .bind(parse_i64(format, &m.version)?)
        }
        Format::Flyway => {
            let Checksum::Crc32(sum) = tool_checksum(format, m) else {
                unreachable!("Flyway checksums are CRC32")
            };
            return flyway_row(conn, pg, m, "SQL", &m.file, &m.name, sum, elapsed).await;
        }
        Format::Refinery => {
            let applied_on = if pg {
                "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
            } else {
                "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
            };
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
                 VALUES ($1, $2, {applied_on}, $3)"
            )))
            .bind(parse_i64(format, &m.version)?)
            .bind(m.name.clone())
            .bind(tool_checksum(format, m).to_text())
        }
        Format::Sqitch => return sqitch_event(conn, pg, m, "deploy").await,
    };
    q.execute(&mut *conn).await.map_err(query_err(doing))?;
    Ok(())
}

/// Records that `m` was reverted. `previous` is the version that is current afterwards
/// (golang-migrate's single row), or `None` when nothing is applied any more.
pub async fn record_revert(
    conn: &mut AnyConnection,
    format: Format,
    m: &Migration,
    previous: Option<&Migration>,
    elapsed: std::time::Duration,
) -> Result<()> {
    let pg = Backend::of(conn)? == Backend::Postgres;
    let doing = format!(
        "recording the revert of V{} in {}",
        m.version,
        format.history_table()
    );
    let q = match format {
        Format::Sqlx => sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
            .bind(parse_i64(format, &m.version)?),
        Format::Diesel => sqlx::query("DELETE FROM __diesel_schema_migrations WHERE version = $1")
            .bind(m.version.clone()),
        Format::Refinery => sqlx::query("DELETE FROM refinery_schema_history WHERE version = $1")
            .bind(parse_i64(format, &m.version)?),
        Format::GolangMigrate => {
            exec(conn, "DELETE FROM schema_migrations", &doing).await?;
            let Some(prev) = previous else {
                return Ok(());
            };
            sqlx::query("INSERT INTO schema_migrations (version, dirty) VALUES ($1, FALSE)")
                .bind(parse_i64(format, &prev.version)?)
        }
        Format::Flyway => {
            let down = m.down.as_deref().unwrap_or_default();
            let down_file = m.down_file.as_deref().unwrap_or(&m.file);
            // The undo's description comes from its own file name.
            let desc = down_file
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.split_once("__"))
                .map(|(_, d)| d.replace('_', " "))
                .unwrap_or_else(|| m.name.clone());
            let sum = crate::migrations::flyway_crc32(down);
            return flyway_row(conn, pg, m, "UNDO_SQL", down_file, &desc, sum, elapsed).await;
        }
        Format::Sqitch => return sqitch_event(conn, pg, m, "revert").await,
    };
    q.execute(&mut *conn).await.map_err(query_err(doing))?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn flyway_row(
    conn: &mut AnyConnection,
    pg: bool,
    m: &Migration,
    kind: &str,
    script: &Path,
    description: &str,
    checksum: i32,
    elapsed: std::time::Duration,
) -> Result<()> {
    let installed_by = if pg { "current_user" } else { "''" };
    let script = script
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO flyway_schema_history (installed_rank, version, description, type, script, \
         checksum, installed_by, execution_time, success) \
         SELECT COALESCE(MAX(installed_rank), 0) + 1, $1, $2, $3, $4, $5, {installed_by}, $6, TRUE \
         FROM flyway_schema_history"
    )))
    .bind(m.version.clone())
    .bind(description.to_string())
    .bind(kind.to_string())
    .bind(script)
    .bind(checksum)
    .bind(elapsed.as_millis().min(i32::MAX as u128) as i32)
    .execute(&mut *conn)
    .await
    .map_err(query_err(format!(
        "recording V{} ({kind}) in flyway_schema_history",
        m.version
    )))?;
    Ok(())
}

/// How one database spells sqitch's registry values.
struct SqitchSql {
    pg: bool,
}

impl SqitchSql {
    /// A placeholder holding a plan timestamp, as the column type wants it.
    fn ts(&self, p: &str) -> String {
        if self.pg {
            format!("CAST({p} AS TIMESTAMPTZ)")
        } else {
            p.to_string()
        }
    }

    /// A plan timestamp (`2024-01-01T00:00:00Z`) as sqitch stores it: PostgreSQL parses it;
    /// on SQLite sqitch writes `2024-01-01 00:00:00` (UTC).
    fn planned(&self, at: &str) -> String {
        if self.pg {
            at.to_string()
        } else {
            at.trim_end_matches('Z').replacen('T', " ", 1)
        }
    }

    /// A placeholder holding a list (events' `requires`, `conflicts`, `tags`).
    fn arr(&self, p: &str) -> String {
        if self.pg {
            format!("CAST({p} AS TEXT[])")
        } else {
            p.to_string()
        }
    }

    /// A list as the events table holds it: a PostgreSQL array literal, or on SQLite the
    /// items joined by `sep` (sqitch joins tags with a space, dependencies with a comma).
    fn list(&self, items: &[String], sep: &str) -> String {
        if self.pg {
            let quoted: Vec<String> = items
                .iter()
                .map(|i| format!("\"{}\"", i.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            format!("{{{}}}", quoted.join(","))
        } else {
            items.join(sep)
        }
    }
}

/// The `committed_at` of the next registry entry. PostgreSQL's `clock_timestamp()` moves on
/// between statements; SQLite's millisecond clock does not always, and sqitch orders
/// deployed changes by `committed_at` (`sqitch status` shows the latest, `sqitch revert`
/// walks them backwards), so on SQLite each entry gets at least 1 ms after the previous.
async fn sqitch_committed_at(conn: &mut AnyConnection, pg: bool) -> Result<Option<String>> {
    if pg {
        return Ok(None);
    }
    let row = sqlx::query(
        "SELECT CASE WHEN last IS NOT NULL AND last >= now \
           THEN strftime('%Y-%m-%d %H:%M:%f', last, '+0.001 seconds') ELSE now END \
         FROM (SELECT strftime('%Y-%m-%d %H:%M:%f', 'now') AS now, \
           (SELECT MAX(committed_at) FROM sqitch.events) AS last)",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(query_err("reading the sqitch registry's latest event time"))?;
    Ok(Some(row.try_get(0).map_err(query_err(
        "reading the sqitch registry's latest event time",
    ))?))
}

/// The change id a dependency names (`change`, `change@tag`, `@tag`, `project:…` or an id),
/// looked up in the registry as sqitch does; `None` when it is not deployed.
async fn sqitch_resolve(
    conn: &mut AnyConnection,
    own_project: &str,
    dep: &str,
) -> Result<Option<String>> {
    let doing = format!("looking up the sqitch dependency {dep}");
    let (project, key) = match dep.split_once(':') {
        Some((p, k)) => (p, k),
        None => (own_project, dep),
    };
    let (change, tag) = key.split_once('@').unwrap_or((key, ""));
    let q = if change.is_empty() {
        sqlx::query("SELECT change_id FROM sqitch.tags WHERE project = $1 AND tag = $2")
            .bind(project.to_string())
            .bind(format!("@{tag}"))
    } else if change.len() == 40 && change.bytes().all(|b| b.is_ascii_hexdigit()) {
        sqlx::query("SELECT change_id FROM sqitch.changes WHERE change_id = $1")
            .bind(change.to_string())
    } else {
        sqlx::query(
            "SELECT change_id FROM sqitch.changes WHERE project = $1 AND change = $2 \
             ORDER BY committed_at DESC LIMIT 1",
        )
        .bind(project.to_string())
        .bind(change.to_string())
    };
    let row = q
        .fetch_optional(&mut *conn)
        .await
        .map_err(query_err(doing.clone()))?;
    row.map(|r| r.try_get::<String, _>(0).map_err(query_err(doing)))
        .transpose()
}

fn missing_requirement(m: &Migration, requirement: &str) -> Error {
    history_err(
        Format::Sqitch,
        format!(
            "change {} requires {requirement}, which is not deployed; deploy it first",
            m.name
        ),
    )
}

/// Refuses to apply `m` when the tool would: for sqitch, a required change that is not
/// deployed or a conflicting one that is. Called right before `m`'s script runs, so the
/// changes applied before it in the same batch count as deployed.
pub async fn check_apply(conn: &mut AnyConnection, format: Format, m: &Migration) -> Result<()> {
    let Some(s) = m.sqitch.as_ref().filter(|_| format == Format::Sqitch) else {
        return Ok(());
    };
    for r in &s.requires {
        if sqitch_resolve(conn, &s.project, r).await?.is_none() {
            return Err(missing_requirement(m, r));
        }
    }
    for c in &s.conflicts {
        if sqitch_resolve(conn, &s.project, c).await?.is_some() {
            return Err(history_err(
                format,
                format!(
                    "change {} conflicts with {c}, which is deployed; revert it first",
                    m.name
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses to revert `m` when the tool would: for sqitch, while a deployed change requires
/// it. Called right before `m`'s down script runs; the batch reverts newest first, so its
/// own dependents are gone by then.
pub async fn check_revert(conn: &mut AnyConnection, format: Format, m: &Migration) -> Result<()> {
    let Some(s) = m.sqitch.as_ref().filter(|_| format == Format::Sqitch) else {
        return Ok(());
    };
    let doing = format!("looking for deployed changes that require {}", m.name);
    let rows = sqlx::query(
        "SELECT c.project || ':' || c.change FROM sqitch.dependencies d \
         JOIN sqitch.changes c ON c.change_id = d.change_id \
         WHERE d.dependency_id = $1 ORDER BY 1",
    )
    .bind(s.change_id.clone())
    .fetch_all(&mut *conn)
    .await
    .map_err(query_err(doing.clone()))?;
    if rows.is_empty() {
        return Ok(());
    }
    let names = rows
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(query_err(doing))?;
    Err(history_err(
        format,
        format!(
            "change {} is required by deployed changes ({}); revert them first",
            m.name,
            names.join(", ")
        ),
    ))
}

async fn sqitch_event(
    conn: &mut AnyConnection,
    pg: bool,
    m: &Migration,
    event: &str,
) -> Result<()> {
    let s = m.sqitch.as_ref().ok_or_else(|| {
        history_err(
            Format::Sqitch,
            format!("V{} was not read from a sqitch plan", m.version),
        )
    })?;
    let sql = SqitchSql { pg };
    let (committer_name, committer_email) = committer();
    let doing = format!("recording the {event} of {} in the sqitch registry", m.name);
    let err = |d: &str| query_err(format!("{doing}: {d}"));
    let committed_at = sqitch_committed_at(conn, pg).await?;
    // The time rewind chose (SQLite), else what sqitch's column default gives.
    let at = |p: &str| {
        if pg {
            format!("COALESCE(CAST({p} AS TIMESTAMPTZ), clock_timestamp())")
        } else {
            p.to_string()
        }
    };

    sqlx::query(
        "INSERT INTO sqitch.projects (project, uri, creator_name, creator_email) \
         SELECT $1, $2, $3, $4 WHERE NOT EXISTS \
         (SELECT 1 FROM sqitch.projects WHERE project = $1)",
    )
    .bind(s.project.clone())
    .bind(s.uri.clone())
    .bind(committer_name.clone())
    .bind(committer_email.clone())
    .execute(&mut *conn)
    .await
    .map_err(err("projects"))?;

    let (tags, requires, conflicts) = if event == "deploy" {
        let mut deps = Vec::new();
        for r in &s.requires {
            let id = sqitch_resolve(conn, &s.project, r).await?;
            deps.push((
                "require",
                r,
                Some(id.ok_or_else(|| missing_requirement(m, r))?),
            ));
        }
        for c in &s.conflicts {
            deps.push(("conflict", c, None));
        }

        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO sqitch.changes (change_id, script_hash, change, project, note, \
             committer_name, committer_email, planned_at, planner_name, planner_email, \
             committed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, {}, $9, $10, {})",
            sql.ts("$8"),
            at("$11"),
        )))
        .bind(s.change_id.clone())
        .bind(tool_checksum(Format::Sqitch, m).to_text())
        .bind(m.name.clone())
        .bind(s.project.clone())
        .bind(s.note.clone())
        .bind(committer_name.clone())
        .bind(committer_email.clone())
        .bind(sql.planned(&s.planned_at))
        .bind(s.planner_name.clone())
        .bind(s.planner_email.clone())
        .bind(committed_at.clone())
        .execute(&mut *conn)
        .await
        .map_err(err("changes"))?;

        for (kind, dependency, id) in deps {
            sqlx::query(
                "INSERT INTO sqitch.dependencies (change_id, type, dependency, dependency_id) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(s.change_id.clone())
            .bind(kind.to_string())
            .bind(dependency.clone())
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(err("dependencies"))?;
        }

        for t in &s.tags {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO sqitch.tags (tag_id, tag, project, change_id, note, \
                 committer_name, committer_email, planned_at, planner_name, planner_email, \
                 committed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, {}, $9, $10, {})",
                sql.ts("$8"),
                at("$11"),
            )))
            .bind(t.tag_id.clone())
            .bind(format!("@{}", t.name))
            .bind(s.project.clone())
            .bind(s.change_id.clone())
            .bind(t.note.clone())
            .bind(committer_name.clone())
            .bind(committer_email.clone())
            .bind(sql.planned(&t.planned_at))
            .bind(t.planner_name.clone())
            .bind(t.planner_email.clone())
            .bind(committed_at.clone())
            .execute(&mut *conn)
            .await
            .map_err(err("tags"))?;
        }
        let tags: Vec<String> = s.tags.iter().map(|t| format!("@{}", t.name)).collect();
        (tags, s.requires.clone(), s.conflicts.clone())
    } else {
        check_revert(conn, Format::Sqitch, m).await?;
        let id = &s.change_id;
        let tags = sqitch_texts(
            conn,
            "SELECT tag FROM sqitch.tags WHERE change_id = $1 ORDER BY tag",
            id,
        )
        .await?;
        let requires = sqitch_texts(
            conn,
            "SELECT dependency FROM sqitch.dependencies \
             WHERE change_id = $1 AND type = 'require' ORDER BY dependency",
            id,
        )
        .await?;
        let conflicts = sqitch_texts(
            conn,
            "SELECT dependency FROM sqitch.dependencies \
             WHERE change_id = $1 AND type = 'conflict' ORDER BY dependency",
            id,
        )
        .await?;
        for table in ["tags", "dependencies", "changes"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM sqitch.{table} WHERE change_id = $1"
            )))
            .bind(s.change_id.clone())
            .execute(&mut *conn)
            .await
            .map_err(err(table))?;
        }
        (tags, requires, conflicts)
    };

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO sqitch.events (event, change_id, change, project, note, requires, \
         conflicts, tags, committer_name, committer_email, planned_at, planner_name, \
         planner_email, committed_at) \
         VALUES ($1, $2, $3, $4, $5, {}, {}, {}, $9, $10, {}, $12, $13, {})",
        sql.arr("$6"),
        sql.arr("$7"),
        sql.arr("$8"),
        sql.ts("$11"),
        at("$14"),
    )))
    .bind(event.to_string())
    .bind(s.change_id.clone())
    .bind(m.name.clone())
    .bind(s.project.clone())
    .bind(s.note.clone())
    .bind(sql.list(&requires, ","))
    .bind(sql.list(&conflicts, ","))
    .bind(sql.list(&tags, " "))
    .bind(committer_name)
    .bind(committer_email)
    .bind(sql.planned(&s.planned_at))
    .bind(s.planner_name.clone())
    .bind(s.planner_email.clone())
    .bind(committed_at)
    .execute(&mut *conn)
    .await
    .map_err(err("events"))?;
    Ok(())
}

/// The first column of `sql` run with `$1` bound to `id`.
async fn sqitch_texts(
    conn: &mut AnyConnection,
    sql: &'static str,
    id: &str,
) -> Result<Vec<String>> {
    let doing = "reading a change's tags and dependencies from the sqitch registry";
    let rows = sqlx::query(sql)
        .bind(id.to_string())
        .fetch_all(&mut *conn)
        .await
        .map_err(query_err(doing))?;
    rows.iter()
        .map(|r| r.try_get::<String, _>(0).map_err(query_err(doing)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqitch_sqlite_registry_is_named_like_sqitch_does() {
        for (db, registry) in [
            ("/d/app.db", "/d/sqitch.db"),
            ("/d/app.sqlite3", "/d/sqitch.sqlite3"),
            ("/d/app", "/d/sqitch"),
            ("/d/my.app.db", "/d/sqitch.app.db"),
        ] {
            assert_eq!(sqitch_sqlite_registry(Path::new(db)), Path::new(registry));
        }
    }

    #[test]
    fn sqitch_values_per_database() {
        let (pg, lite) = (SqitchSql { pg: true }, SqitchSql { pg: false });
        assert_eq!(lite.planned("2024-01-02T03:04:05Z"), "2024-01-02 03:04:05");
        assert_eq!(pg.planned("2024-01-02T03:04:05Z"), "2024-01-02T03:04:05Z");
        let items = ["a".to_string(), "b\"c".to_string()];
        assert_eq!(lite.list(&items, ","), "a,b\"c");
        assert_eq!(pg.list(&items, ","), "{\"a\",\"b\\\"c\"}");
        assert_eq!(pg.list(&[], " "), "{}");
    }
}
