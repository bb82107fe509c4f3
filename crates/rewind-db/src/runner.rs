//! Applying and reverting migrations the way the team's tool runs them, with rewind's
//! guarantees on top.
//!
//! Every script is split into statements by the engine's lexical rules ([`crate::sql`]) and
//! run statement by statement, so an error names the line of the user's file. A migration
//! runs in one of two ways ([`run_mode`]):
//!
//! - **in a batch** ([`apply_batch`], [`revert_batch`]): migrations the tool runs inside a
//!   transaction run together in ONE transaction with their history rows. On any error the
//!   transaction is rolled back and the database and its history are exactly as before: no
//!   golang-migrate "dirty" row, no failed Flyway row. Before the commit the **data guard**
//!   runs: on SQLite `PRAGMA foreign_key_check` (new violations fail the batch), and on both
//!   engines a table that lost rows although no migration of the batch deletes from it (nor
//!   from a table it cascades from) fails the batch, naming the table and the counts.
//! - **alone** ([`apply_alone`], [`revert_alone`]): a migration the tool runs outside a
//!   transaction (diesel's `run_in_transaction = false`, sqlx's `-- no-transaction`, a
//!   Flyway script with `executeInTransaction=false` or only non-transactional statements, a
//!   script with its own `BEGIN; … COMMIT;` as sqitch's templates and golang-migrate files
//!   have, a `CREATE INDEX CONCURRENTLY`) runs by itself, as the tool would. It is cut into
//!   **units**: a block the script wraps in `BEGIN`/`COMMIT`, a run of ordinary statements
//!   (rewind gives them a transaction: psql would commit each one, rewind commits them
//!   together, which can only fail less half-way), or one statement that cannot run in a
//!   transaction. A migration of more than one unit records its progress in the table
//!   `_rewind_progress` of the same database, in the same transaction as each unit (right
//!   after a non-transactional one), and its history row with the last; so a kill or a
//!   failure leaves a state that [`partial`] reports and that running the migration again
//!   finishes: committed units are skipped, an interrupted `CREATE INDEX CONCURRENTLY` whose
//!   index was left INVALID is dropped and built again.
//!
//! SQLite's `foreign_keys` setting is the tool's: sqlx turns it on for its connections, the
//! other tools leave SQLite's default (off).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use sqlx::{AnyConnection, AnyPool, Connection, Row};

use crate::history::{self, Backend, Recorded};
use crate::migrations::{Format, Migration};
use crate::sets::State;
use crate::sql::{self, Dialect, Statement, TxControl};
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
    /// One unit of a migration that runs alone is done (committed): `done` of `total`,
    /// ending at `line` of the file.
    Unit {
        done: usize,
        total: usize,
        line: usize,
    },
    /// A migration that runs alone was interrupted before; it goes on after unit `done`.
    Resuming { done: usize, total: usize },
    /// Something a person should know (an INVALID index dropped to be built again …).
    Note(String),
    /// It failed; the whole batch (or the unit) is being rolled back. The text is the error.
    Failed(String),
    /// The batch it belongs to (or its last unit) was committed.
    Committed,
    /// The batch it belongs to was rolled back.
    RolledBack,
}

/// What a person accepted for a run of migrations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Rows lost that no migration of the transaction is classified to delete (a DELETE
    /// inside a function the migration calls, say) are reported as notes instead of failing
    /// the transaction.
    pub accept_row_loss: bool,
}

/// How a script runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunMode {
    /// With the other batchable migrations, in rewind's one transaction.
    Batch,
    /// By itself, outside the batch's transaction; the text says why.
    Alone(String),
    /// By itself, through `psql`, as sqitch runs every PostgreSQL script: it uses what only
    /// psql understands (a meta-command, a psql variable). The caller runs psql and then
    /// [`record_only`]; the text says why.
    Psql(String),
}

impl RunMode {
    pub fn is_alone(&self) -> bool {
        matches!(self, RunMode::Alone(_) | RunMode::Psql(_))
    }

    /// Why it runs by itself, when it does.
    pub fn why(&self) -> Option<&str> {
        match self {
            RunMode::Batch => None,
            RunMode::Alone(w) | RunMode::Psql(w) => Some(w),
        }
    }
}

/// The SQL dialect of a backend.
pub fn dialect(backend: Backend) -> Dialect {
    match backend {
        Backend::Sqlite => Dialect::Sqlite,
        Backend::Postgres => Dialect::Postgres,
    }
}

fn script_of(m: &Migration, down: bool) -> (&str, &std::path::Path) {
    if down {
        (
            m.down.as_deref().unwrap_or_default(),
            m.down_file.as_deref().unwrap_or(&m.file),
        )
    } else {
        (&m.up, &m.file)
    }
}

/// Splits `m`'s up (or down) script, naming the file and line of a lexical error.
pub fn statements(m: &Migration, down: bool, dialect: Dialect) -> Result<Vec<Statement>> {
    let (sql, file) = script_of(m, down);
    sql::split(sql, dialect).map_err(|e| Error::BadFile {
        file: file.to_path_buf(),
        reason: format!("line {}, column {}: {}", e.line, e.column, e.message),
    })
}

/// How the team's tool runs `m`'s up (or down) script on `dialect`, or why it would refuse
/// it (an error naming the file and line, with what to do).
pub fn run_mode(format: Format, m: &Migration, down: bool, dialect: Dialect) -> Result<RunMode> {
    let stmts = statements(m, down, dialect)?;
    run_mode_of(format, m, down, dialect, &stmts)
}

/// [`run_mode`] and [`ends_batch`] from one reading of the script.
pub fn analyse(
    format: Format,
    m: &Migration,
    down: bool,
    dialect: Dialect,
) -> (Result<RunMode>, bool) {
    match statements(m, down, dialect) {
        Err(e) => (Err(e), false),
        Ok(stmts) => {
            let ends =
                dialect == Dialect::Postgres && stmts.iter().any(|s| is_add_enum_value(s, dialect));
            (run_mode_of(format, m, down, dialect, &stmts), ends)
        }
    }
}

fn run_mode_of(
    format: Format,
    m: &Migration,
    down: bool,
    dialect: Dialect,
    stmts: &[Statement],
) -> Result<RunMode> {
    let (_, file) = script_of(m, down);
    let refuse = |line: usize, reason: String| Error::NotTransactional {
        version: m.version.clone(),
        name: m.name.clone(),
        file: file.to_path_buf(),
        line,
        reason,
    };
    if let Some((line, what)) = stmts
        .iter()
        .find_map(|s| s.psql_feature(dialect).map(|f| (s.line, f)))
    {
        if format == Format::Sqitch {
            return Ok(RunMode::Psql(format!(
                "sqitch runs it through psql, and it uses {what} (line {line})"
            )));
        }
        return Err(refuse(
            line,
            format!(
                "{what} is psql's, not SQL, and {} sends the script to the database itself; write it as SQL",
                format.name()
            ),
        ));
    }
    let marker = if down { &m.down_marker } else { &m.up_marker };
    let own_tx = stmts
        .iter()
        .find(|s| s.transaction_control(dialect).is_some());
    // Tools that run the script in a transaction on SQLite (sqlx, diesel, refinery, and
    // golang-migrate's sqlite driver, which wraps each file) run `PRAGMA foreign_keys` there,
    // where SQLite ignores it: a no-op, not a failure, so it keeps the script in the batch.
    let wraps = dialect == Dialect::Sqlite
        && matches!(
            format,
            Format::Sqlx | Format::Diesel | Format::Refinery | Format::GolangMigrate
        );
    let outside: Vec<(&Statement, &'static str)> = stmts
        .iter()
        .filter(|s| !(wraps && is_pragma_foreign_keys(s, dialect)))
        .filter_map(|s| s.outside_transaction(dialect).map(|r| (s, r)))
        .collect();
    if let Some(marker) = marker {
        return Ok(RunMode::Alone(format!(
            "{} runs it outside a transaction: {marker}",
            format.name()
        )));
    }
    if let Some(s) = own_tx {
        return Ok(RunMode::Alone(format!(
            "it manages its own transaction ({} at line {})",
            first_words(&s.text),
            s.line
        )));
    }
    let Some((first, why)) = outside.first() else {
        return Ok(RunMode::Batch);
    };
    match format {
        Format::Flyway if outside.len() == stmts.len() => Ok(RunMode::Alone(format!(
            "Flyway runs it outside a transaction: {why} (line {})",
            first.line
        ))),
        Format::Flyway => Err(refuse(
            first.line,
            format!(
                "{why}, and the script also has statements that run in a transaction: Flyway refuses such a mix (\"Detected both transactional and non-transactional statements within the same migration\"); move line {} into a migration of its own",
                first.line
            ),
        )),
        Format::GolangMigrate | Format::Sqitch => Ok(RunMode::Alone(format!(
            "{} runs the file as it is, and {why} (line {})",
            format.name(),
            first.line
        ))),
        Format::Sqlx => Err(refuse(
            first.line,
            format!(
                "{why}, and sqlx runs this migration in a transaction; make `-- no-transaction` its first line"
            ),
        )),
        Format::Diesel => Err(refuse(
            first.line,
            format!(
                "{why}, and diesel runs this migration in a transaction; add a metadata.toml with `run_in_transaction = false` beside it"
            ),
        )),
        Format::Refinery => Err(refuse(
            first.line,
            format!(
                "{why}, and refinery runs every migration in a transaction (it has no way to say otherwise); run it outside refinery"
            ),
        )),
    }
}

fn is_pragma_foreign_keys(s: &Statement, dialect: Dialect) -> bool {
    let w = s.words(dialect);
    w.len() >= 2 && w[0] == "PRAGMA" && w[1] == "FOREIGN_KEYS"
}

fn first_words(text: &str) -> String {
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The text of a database error: its message, its SQLSTATE, and PostgreSQL's detail and
/// hint.
pub fn db_error_text(e: &sqlx::Error) -> String {
    let Some(db) = e.as_database_error() else {
        return e.to_string();
    };
    let mut text = db.message().to_string();
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        if let Some(d) = pg.detail() {
            text.push_str(&format!("; {d}"));
        }
        if let Some(h) = pg.hint() {
            text.push_str(&format!(" (hint: {h})"));
        }
    }
    if let Some(code) = db.code() {
        text.push_str(&format!(" [SQLSTATE {code}]"));
    }
    text
}

/// The line of the file where an error in `stmt` is: PostgreSQL points at a character of
/// the statement; otherwise the statement's first line.
fn error_line(stmt: &Statement, e: &sqlx::Error) -> usize {
    let pos = e
        .as_database_error()
        .and_then(|d| d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>())
        .and_then(|pg| match pg.position() {
            Some(sqlx::postgres::PgErrorPosition::Original(p)) => Some(p),
            _ => None,
        });
    match pos {
        Some(p) if p > 0 => {
            let before: String = stmt.text.chars().take(p - 1).collect();
            stmt.line + before.matches('\n').count()
        }
        _ => stmt.line,
    }
}

fn failed(m: &Migration, down: bool, stmt: &Statement, source: sqlx::Error) -> Error {
    let (_, file) = script_of(m, down);
    Error::Migration {
        version: m.version.clone(),
        name: m.name.clone(),
        file: file.to_path_buf(),
        line: Some(error_line(stmt, &source)),
        down,
        source: Box::new(source),
    }
}

async fn exec(conn: &mut AnyConnection, sql: &str) -> std::result::Result<(), sqlx::Error> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Runs statements one by one, naming the failing one's line.
async fn run_statements(
    conn: &mut AnyConnection,
    m: &Migration,
    down: bool,
    stmts: &[Statement],
) -> Result<()> {
    for s in stmts {
        exec(conn, &s.text)
            .await
            .map_err(|e| failed(m, down, s, e))?;
    }
    Ok(())
}

/// A script that failed as a whole, before its line is known.
struct ScriptFailed(sqlx::Error);

/// Why a migration of a batch failed.
enum Failure {
    Script(sqlx::Error),
    Other(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Other(e)
    }
}

/// Runs `m`'s script inside the caller's transaction the way its tool sends it: the whole
/// text in one query (one round trip, and the engine itself decides where statements end).
/// On failure the transaction is aborted; see [`locate`] for the line.
async fn run_script_tx(
    conn: &mut AnyConnection,
    m: &Migration,
    down: bool,
) -> std::result::Result<(), ScriptFailed> {
    let (sql, _) = script_of(m, down);
    if sql::is_empty(sql, Dialect::Postgres) && sql::is_empty(sql, Dialect::Sqlite) {
        return Ok(());
    }
    exec(conn, sql.trim_start_matches('\u{feff}'))
        .await
        .map_err(ScriptFailed)
}

/// The error of a batch migration that failed as a whole, with the line of its file. When
/// PostgreSQL points at a character of the script, that is the line; otherwise the batch is
/// replayed in a new transaction (rolled back) up to that migration, whose statements then
/// run one by one until the same failure shows. Costs nothing unless a migration fails.
async fn locate(
    conn: &mut AnyConnection,
    format: Format,
    done: &[&Migration],
    m: &Migration,
    down: bool,
    stmts: &[Statement],
    whole: sqlx::Error,
) -> Error {
    let (sql, _) = script_of(m, down);
    let Some(first) = stmts.first() else {
        return failed(m, down, &Statement::default(), whole);
    };
    let position = whole
        .as_database_error()
        .and_then(|d| d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>())
        .and_then(|pg| match pg.position() {
            Some(sqlx::postgres::PgErrorPosition::Original(p)) => Some(p),
            _ => None,
        });
    let text = sql.trim_start_matches('\u{feff}');
    if let Some(p) = position.filter(|p| *p > 0) {
        let offset: usize = text.chars().take(p - 1).map(char::len_utf8).sum();
        let skipped = sql.len() - text.len();
        let line = sql::line_of(sql, offset + skipped);
        if let Some(s) = stmts.iter().rev().find(|s| s.line <= line) {
            let mut e = failed(m, down, s, whole);
            if let Error::Migration { line: l, .. } = &mut e {
                *l = Some(line);
            }
            return e;
        }
    }
    let replay = async {
        let mut tx = conn.begin().await.ok()?;
        for d in done {
            run_script_tx(&mut tx, d, down).await.ok()?;
        }
        let mut at = None;
        for s in stmts {
            if let Err(e) = exec(&mut tx, &s.text).await {
                at = Some((s.clone(), e));
                break;
            }
        }
        let _ = tx.rollback().await;
        at
    }
    .await;
    let _ = format;
    match replay {
        // The replayed statement's own error: its position is within the statement.
        Some((s, e)) => failed(m, down, &s, e),
        None => failed(m, down, first, whole),
    }
}

/// The verify script sqitch runs after deploying `m`, when the project asks for it (`[deploy]
/// verify = true`).
fn verify_script(m: &Migration) -> Option<&str> {
    m.sqitch
        .as_ref()
        .filter(|s| s.verify_on_deploy)
        .and_then(|s| s.verify.as_deref())
}

/// Runs `m`'s verify script inside the caller's transaction, from a savepoint it then rolls
/// back to (a verify script checks, it changes nothing; its own `BEGIN`/`ROLLBACK` are left
/// out). A failure names the verify script's line; the caller's transaction is then rolled
/// back, which takes the change back as sqitch's revert after a failed verify does.
async fn run_verify_tx(conn: &mut AnyConnection, m: &Migration, dialect: Dialect) -> Result<()> {
    let Some(sql) = verify_script(m) else {
        return Ok(());
    };
    let file = m
        .sqitch
        .as_ref()
        .and_then(|s| s.verify_file.clone())
        .unwrap_or_default();
    let stmts = sql::split(sql, dialect).map_err(|e| Error::BadFile {
        file: file.clone(),
        reason: format!("line {}, column {}: {}", e.line, e.column, e.message),
    })?;
    exec(conn, "SAVEPOINT rewind_verify")
        .await
        .map_err(query_err("starting the verify script"))?;
    for s in stmts
        .iter()
        .filter(|s| s.transaction_control(dialect).is_none())
    {
        if let Err(e) = exec(conn, &s.text).await {
            return Err(Error::Verify {
                name: m.label(),
                file,
                line: error_line(s, &e),
                message: db_error_text(&e),
            });
        }
    }
    exec(conn, "ROLLBACK TO SAVEPOINT rewind_verify")
        .await
        .map_err(query_err("ending the verify script"))?;
    exec(conn, "RELEASE SAVEPOINT rewind_verify")
        .await
        .map_err(query_err("ending the verify script"))?;
    Ok(())
}

/// A connection ready for `format`: the sqitch registry attached on SQLite, and SQLite's
/// `foreign_keys` as the tool has it.
async fn connection(
    pool: &AnyPool,
    format: Format,
) -> Result<(sqlx::pool::PoolConnection<sqlx::Any>, Backend)> {
    let mut conn = pool.acquire().await.map_err(query_err("connecting"))?;
    history::prepare(&mut conn, format).await?;
    let backend = Backend::of(&conn)?;
    if backend == Backend::Sqlite {
        let on = if format == Format::Sqlx { "ON" } else { "OFF" };
        exec(&mut conn, &format!("PRAGMA foreign_keys = {on}"))
            .await
            .map_err(query_err("setting SQLite's foreign_keys"))?;
    }
    Ok((conn, backend))
}

/// The migrations the history of `format` says are applied, in apply order.
pub async fn applied(
    pool: &AnyPool,
    format: Format,
    migrations: &[Migration],
) -> Result<Vec<String>> {
    let mut conn = pool.acquire().await.map_err(query_err("connecting"))?;
    history::prepare(&mut conn, format).await?;
    history::applied(&mut conn, format, migrations).await
}

/// What the history of `format` records, in apply order (see [`State`]).
pub async fn state(pool: &AnyPool, format: Format, migrations: &[Migration]) -> Result<State> {
    let mut conn = pool.acquire().await.map_err(query_err("connecting"))?;
    history::prepare(&mut conn, format).await?;
    Ok(State::new(
        history::recorded(&mut conn, format, migrations).await?,
    ))
}

fn find<'a>(migrations: &'a [Migration], key: &str) -> Result<&'a Migration> {
    migrations
        .iter()
        .find(|m| m.key() == key)
        .ok_or_else(|| Error::UnknownVersion(key.to_string()))
}

/// The migration `target` names: its version, its name, or for sqitch a tag (`@v1.0`: the
/// change the tag is on) or a change as of a tag (`change@v1.0`: the last instance of that
/// change planned at or before the tag).
pub fn find_target<'a>(migrations: &'a [Migration], target: &str) -> Result<&'a Migration> {
    let tag_pos = |tag: &str| {
        migrations.iter().position(|m| {
            m.sqitch
                .as_ref()
                .is_some_and(|s| s.tags.iter().any(|t| t.name == tag))
        })
    };
    let found = match target.split_once('@') {
        Some(("", tag)) => tag_pos(tag).map(|i| &migrations[i]),
        Some((change, tag)) => tag_pos(tag).and_then(|i| {
            migrations[..=i]
                .iter()
                .rev()
                .find(|m| m.name == change && m.sqitch.is_some())
        }),
        None => migrations
            .iter()
            .rev()
            .find(|m| m.version == target || m.name == target || m.key() == target),
    };
    found.ok_or_else(|| Error::UnknownVersion(target.to_string()))
}

// ---- the data guard ------------------------------------------------------------------------

/// What the data guard needs from before a batch or unit.
struct Guard {
    backend: Backend,
    /// SQLite: table → (rootpage, rows).
    counts: BTreeMap<String, (i64, i64)>,
    /// SQLite: (table, parent) → rows violating a foreign key.
    fk: BTreeMap<(String, String), i64>,
    /// PostgreSQL: table oid → name.
    tables: BTreeMap<i64, String>,
    /// PostgreSQL: the tables that hold rows (a table dropped while empty loses nothing).
    nonempty: BTreeSet<i64>,
    /// PostgreSQL: rows deleted per table as `pg_stat_xact_user_tables` counts them when the
    /// guard starts. Since PostgreSQL 15 those counts are the session's pending statistics,
    /// flushed at most once a second: they may still hold an earlier transaction's deletes,
    /// so the guard compares with what they were at its start.
    deleted_before: BTreeMap<i64, i64>,
}

/// Tables the guard leaves out: the tools' own bookkeeping, which a revert empties.
fn is_bookkeeping(table: &str) -> bool {
    let bare = table.rsplit('.').next().unwrap_or(table);
    [
        "_sqlx_migrations",
        "__diesel_schema_migrations",
        "schema_migrations",
        "flyway_schema_history",
        "refinery_schema_history",
        PROGRESS_TABLE,
    ]
    .contains(&bare)
        || table.starts_with("sqitch.")
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

async fn sqlite_fk_violations(conn: &mut AnyConnection) -> Result<BTreeMap<(String, String), i64>> {
    let doing = "checking foreign keys (PRAGMA foreign_key_check)";
    let rows = sqlx::query(
        "SELECT \"table\", parent, count(*) FROM pragma_foreign_key_check GROUP BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(query_err(doing))?;
    let mut out = BTreeMap::new();
    for r in rows {
        let t: String = r.try_get(0).map_err(query_err(doing))?;
        let p: String = r.try_get(1).map_err(query_err(doing))?;
        let n: i64 = r.try_get(2).map_err(query_err(doing))?;
        out.insert((t, p), n);
    }
    Ok(out)
}

async fn sqlite_counts(conn: &mut AnyConnection) -> Result<BTreeMap<String, (i64, i64)>> {
    let doing = "counting rows";
    let rows = sqlx::query(
        "SELECT name, rootpage FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(query_err(doing))?;
    let mut out = BTreeMap::new();
    for r in rows {
        let name: String = r.try_get(0).map_err(query_err(doing))?;
        let page: i64 = r.try_get(1).map_err(query_err(doing))?;
        if is_bookkeeping(&name) {
            continue;
        }
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {}",
            quote(&name)
        )))
        .fetch_one(&mut *conn)
        .await
        .map_err(query_err(format!("counting the rows of {name}")))?;
        out.insert(name, (page, n));
    }
    Ok(out)
}

/// Rows of a two-column query, the first column (an oid as BIGINT) the key.
async fn oid_map<V>(
    conn: &mut AnyConnection,
    sql: &'static str,
    doing: &'static str,
) -> Result<BTreeMap<i64, V>>
where
    V: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    let rows = sqlx::query(sql)
        .fetch_all(&mut *conn)
        .await
        .map_err(query_err(doing))?;
    let mut out = BTreeMap::new();
    for r in rows {
        out.insert(
            r.try_get::<i64, _>(0).map_err(query_err(doing))?,
            r.try_get::<V, _>(1).map_err(query_err(doing))?,
        );
    }
    Ok(out)
}

async fn pg_tables(conn: &mut AnyConnection) -> Result<BTreeMap<i64, String>> {
    oid_map(
        conn,
        "SELECT CAST(c.oid AS BIGINT), CAST(CAST(c.oid AS regclass) AS TEXT) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
         AND n.nspname NOT LIKE 'pg\\_%'",
        "listing tables",
    )
    .await
}

async fn guard_start(conn: &mut AnyConnection, backend: Backend) -> Result<Guard> {
    Ok(match backend {
        Backend::Sqlite => Guard {
            backend,
            counts: sqlite_counts(conn).await?,
            fk: sqlite_fk_violations(conn).await?,
            tables: BTreeMap::new(),
            nonempty: BTreeSet::new(),
            deleted_before: BTreeMap::new(),
        },
        Backend::Postgres => {
            let tables = pg_tables(conn).await?;
            let nonempty = pg_nonempty(conn, &tables).await?;
            let deleted_before = pg_deleted(conn).await?;
            Guard {
                backend,
                counts: BTreeMap::new(),
                fk: BTreeMap::new(),
                tables,
                nonempty,
                deleted_before,
            }
        }
    })
}

/// Rows deleted per table oid as `pg_stat_xact_user_tables` counts them now.
async fn pg_deleted(conn: &mut AnyConnection) -> Result<BTreeMap<i64, i64>> {
    oid_map(
        conn,
        "SELECT CAST(relid AS BIGINT), n_tup_del FROM pg_stat_xact_user_tables WHERE n_tup_del > 0",
        "reading the rows deleted in this session",
    )
    .await
}

/// The tables of `tables` that hold at least one row, in few queries.
async fn pg_nonempty(
    conn: &mut AnyConnection,
    tables: &BTreeMap<i64, String>,
) -> Result<BTreeSet<i64>> {
    let doing = "looking for tables that hold rows";
    let mut out = BTreeSet::new();
    let ids: Vec<(&i64, &String)> = tables.iter().filter(|(_, n)| !is_bookkeeping(n)).collect();
    for chunk in ids.chunks(200) {
        // The names are `regclass` output: quoted as needed, so they can stand in FROM.
        let sql = chunk
            .iter()
            .map(|(oid, name)| {
                format!("SELECT CAST({oid} AS BIGINT) WHERE EXISTS (SELECT 1 FROM {name})")
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await
            .map_err(query_err(doing))?;
        for r in rows {
            out.insert(r.try_get::<i64, _>(0).map_err(query_err(doing))?);
        }
    }
    Ok(out)
}

/// `a` and `b` name the same table (either may be schema-qualified, both lower-cased).
fn same_table(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_lowercase(), b.to_lowercase());
    let bare = |s: &str| {
        s.rsplit('.')
            .next()
            .unwrap_or(s)
            .trim_matches('"')
            .to_string()
    };
    a == b || ((!a.contains('.') || !b.contains('.')) && bare(&a) == bare(&b))
}

/// Tables that lose rows when `allowed` do: those that reference them with `ON DELETE
/// CASCADE`, and partitions / children of inheritance, transitively.
async fn with_dependents(
    conn: &mut AnyConnection,
    backend: Backend,
    allowed: &BTreeSet<String>,
) -> Result<BTreeSet<String>> {
    let doing = "reading cascading foreign keys";
    let edges: Vec<(String, String)> = match backend {
        Backend::Postgres => {
            let rows = sqlx::query(
                "SELECT CAST(CAST(confrelid AS regclass) AS TEXT), CAST(CAST(conrelid AS regclass) AS TEXT) \
                 FROM pg_constraint WHERE contype = 'f' AND confdeltype = 'c' \
                 UNION ALL SELECT CAST(CAST(inhparent AS regclass) AS TEXT), CAST(CAST(inhrelid AS regclass) AS TEXT) FROM pg_inherits",
            )
            .fetch_all(&mut *conn)
            .await
            .map_err(query_err(doing))?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<std::result::Result<_, sqlx::Error>>()
                .map_err(query_err(doing))?
        }
        Backend::Sqlite => {
            let rows = sqlx::query(
                "SELECT f.\"table\", m.name FROM sqlite_master m, pragma_foreign_key_list(m.name) f \
                 WHERE m.type = 'table' AND upper(f.on_delete) = 'CASCADE'",
            )
            .fetch_all(&mut *conn)
            .await
            .map_err(query_err(doing))?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<std::result::Result<_, sqlx::Error>>()
                .map_err(query_err(doing))?
        }
    };
    let mut out = allowed.clone();
    loop {
        let before = out.len();
        for (parent, child) in &edges {
            if out.iter().any(|a| same_table(a, parent)) {
                out.insert(child.to_lowercase());
            }
        }
        if out.len() == before {
            return Ok(out);
        }
    }
}

/// The data guard after a batch or unit, before its commit: new foreign-key violations
/// (SQLite) and rows lost in tables that no script of the batch deletes from.
async fn guard_check(
    conn: &mut AnyConnection,
    guard: &Guard,
    removes: &Removes,
    what: &str,
    accept: bool,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut allowed = with_dependents(conn, guard.backend, &removes.deletes).await?;
    allowed.extend(removes.drops.iter().cloned());
    let is_allowed = |t: &str| allowed.iter().any(|a| same_table(a, t));
    match guard.backend {
        Backend::Sqlite => {
            let fk = sqlite_fk_violations(conn).await?;
            for ((table, parent), n) in &fk {
                let was = guard
                    .fk
                    .get(&(table.clone(), parent.clone()))
                    .copied()
                    .unwrap_or(0);
                if *n > was {
                    problems.push(format!(
                        "foreign key of {table} → {parent}: {n} row{} point at missing {parent} rows (before: {was})",
                        if *n == 1 { "" } else { "s" }
                    ));
                }
            }
            let now = sqlite_counts(conn).await?;
            for (table, (page, was)) in &guard.counts {
                if is_allowed(table) {
                    continue;
                }
                // The same name (a rebuilt table), else the same root page (a renamed one).
                let after = now
                    .get(table)
                    .map(|(_, n)| (table.clone(), *n))
                    .or_else(|| {
                        now.iter()
                            .find(|(_, (p, _))| p == page)
                            .map(|(t, (_, n))| (t.clone(), *n))
                    });
                match after {
                    Some((_, n)) if n >= *was => {}
                    Some((name, n)) => problems.push(format!(
                        "table {name} lost {} of its {was} rows ({was} → {n})",
                        was - n
                    )),
                    None if *was == 0 => {}
                    None => problems.push(format!("table {table} ({was} rows) is gone")),
                }
            }
        }
        Backend::Postgres => {
            let doing = "reading the rows deleted in this transaction";
            let rows = sqlx::query(
                "SELECT CAST(relid AS BIGINT), CAST(CAST(relid AS regclass) AS TEXT), n_tup_del \
                 FROM pg_stat_xact_user_tables WHERE n_tup_del > 0",
            )
            .fetch_all(&mut *conn)
            .await
            .map_err(query_err(doing))?;
            let now = pg_tables(conn).await?;
            for r in rows {
                let oid: i64 = r.try_get(0).map_err(query_err(doing))?;
                let name: String = r.try_get(1).map_err(query_err(doing))?;
                let deleted: i64 = r.try_get::<i64, _>(2).map_err(query_err(doing))?
                    - guard.deleted_before.get(&oid).copied().unwrap_or(0);
                if deleted <= 0 {
                    continue;
                }
                let old_name = guard
                    .tables
                    .get(&oid)
                    .cloned()
                    .unwrap_or_else(|| name.clone());
                if is_bookkeeping(&name) || is_allowed(&name) || is_allowed(&old_name) {
                    continue;
                }
                // A table this batch created may lose the rows it put there.
                if !guard.tables.contains_key(&oid) {
                    continue;
                }
                problems.push(format!(
                    "table {name} lost {deleted} row{}",
                    if deleted == 1 { "" } else { "s" }
                ));
            }
            for (oid, name) in &guard.tables {
                if !now.contains_key(oid)
                    && guard.nonempty.contains(oid)
                    && !is_bookkeeping(name)
                    && !is_allowed(name)
                {
                    problems.push(format!("table {name} is gone, with its rows"));
                }
            }
        }
    }
    if problems.is_empty() {
        return Ok(Vec::new());
    }
    if accept {
        return Ok(problems
            .into_iter()
            .map(|p| format!("{p} (accepted: --accept-row-loss)"))
            .collect());
    }
    let deletes = if allowed.is_empty() {
        "no migration of it deletes rows".to_string()
    } else {
        format!(
            "only {} may lose rows",
            allowed.iter().cloned().collect::<Vec<_>>().join(", ")
        )
    };
    Err(Error::DataGuard {
        what: what.to_string(),
        problems,
        deletes,
    })
}

/// What a script is classified to remove: tables it deletes rows from (whose rows may
/// cascade into the tables referencing them) and tables (or schemas) it drops (whose rows go
/// with them; a cascade a DROP sets off in SQLite is NOT expected: that is how a table
/// rebuild inside a transaction empties its children).
#[derive(Debug, Default, Clone)]
struct Removes {
    deletes: BTreeSet<String>,
    drops: BTreeSet<String>,
}

impl Removes {
    fn extend(&mut self, other: Removes) {
        self.deletes.extend(other.deletes);
        self.drops.extend(other.drops);
    }
}

fn removes(m: &Migration, down: bool, dialect: Dialect) -> Removes {
    let (sql, _) = script_of(m, down);
    let c = sql::classify(sql, dialect);
    let mut out = Removes::default();
    for f in &c.findings {
        if matches!(
            f.kind,
            sql::FindingKind::DropTable | sql::FindingKind::DropSchema
        ) && let Some(o) = &f.object
        {
            for name in o.split(", ") {
                out.drops.insert(name.trim().to_lowercase());
            }
        }
    }
    for t in &c.tables_losing_rows {
        let t = t.to_lowercase();
        if !out.drops.contains(&t) {
            out.deletes.insert(t);
        }
    }
    out
}

// ---- batches ------------------------------------------------------------------------------

/// Applies the migrations of `migrations` named by `keys` (see [`Migration::key`]), in that
/// order, in ONE transaction with their history rows and the data guard; those already
/// applied are skipped. Each must run in a batch ([`run_mode`]): checked before anything
/// runs. Returns the versions applied.
pub async fn apply_batch(
    pool: &AnyPool,
    format: Format,
    migrations: &[Migration],
    keys: &[String],
    progress: impl FnMut(&Migration, Phase),
) -> Result<Vec<String>> {
    batch(
        pool,
        format,
        migrations,
        keys,
        false,
        Options::default(),
        progress,
    )
    .await
}

/// [`apply_batch`] or [`revert_batch`] (`down`) with what the person accepted.
pub async fn run_batch(
    pool: &AnyPool,
    format: Format,
    migrations: &[Migration],
    keys: &[String],
    down: bool,
    options: Options,
    progress: impl FnMut(&Migration, Phase),
) -> Result<Vec<String>> {
    batch(pool, format, migrations, keys, down, options, progress).await
}

/// Reverts the migrations named by `keys`, in that order (newest applied first), with their
/// down scripts, in ONE transaction with their history rows and the data guard; those not
/// applied are skipped. Each must have a non-empty down script that runs in a batch: checked
/// before anything runs. Returns the versions reverted.
pub async fn revert_batch(
    pool: &AnyPool,
    format: Format,
    migrations: &[Migration],
    keys: &[String],
    progress: impl FnMut(&Migration, Phase),
) -> Result<Vec<String>> {
    batch(
        pool,
        format,
        migrations,
        keys,
        true,
        Options::default(),
        progress,
    )
    .await
}

fn require_down(m: &Migration) -> Result<()> {
    if m.down_is_empty() {
        return Err(Error::NoDown {
            version: m.version.clone(),
            name: m.name.clone(),
            file: m.file.clone(),
        });
    }
    Ok(())
}

async fn batch(
    pool: &AnyPool,
    format: Format,
    migrations: &[Migration],
    keys: &[String],
    down: bool,
    options: Options,
    mut progress: impl FnMut(&Migration, Phase),
) -> Result<Vec<String>> {
    let list: Vec<&Migration> = keys
        .iter()
        .map(|k| find(migrations, k))
        .collect::<Result<_>>()?;
    let (mut conn, backend) = connection(pool, format).await?;
    let dialect = dialect(backend);
    let mut scripts = Vec::new();
    for m in &list {
        if down {
            require_down(m)?;
        }
        if let Some(why) = run_mode(format, m, down, dialect)?.why() {
            return Err(Error::NotTransactional {
                version: m.version.clone(),
                name: m.name.clone(),
                file: script_of(m, down).1.to_path_buf(),
                line: 1,
                reason: format!("{why}; it runs alone, not in a batch"),
            });
        }
        scripts.push(statements(m, down, dialect)?);
    }
    let mut tx = conn
        .begin()
        .await
        .map_err(query_err("beginning a transaction"))?;
    history::ensure_table(&mut tx, format).await?;
    let mut recorded = history::recorded(&mut tx, format, migrations).await?;
    let guard = guard_start(&mut tx, backend).await?;
    let mut allowed = Removes::default();
    let mut finished = Vec::new();
    for (m, stmts) in list.iter().zip(&scripts) {
        let is_applied = recorded.iter().any(|r| r.key == m.key());
        if is_applied != down {
            // Applied already (or, reverting, not applied): nothing to do.
        } else {
            progress(
                m,
                if down {
                    Phase::Reverting
                } else {
                    Phase::Applying
                },
            );
            let started = Instant::now();
            let outcome = async {
                if down {
                    history::check_revert(&mut tx, format, m).await?;
                } else {
                    history::check_apply(&mut tx, format, m).await?;
                }
                if let Err(ScriptFailed(whole)) = run_script_tx(&mut tx, m, down).await {
                    return Err(Failure::Script(whole));
                }
                if !down {
                    run_verify_tx(&mut tx, m, dialect).await?;
                }
                if down {
                    let previous = previous_after_revert(format, migrations, &recorded, m);
                    history::record_revert(&mut tx, format, m, previous, started.elapsed()).await?;
                } else {
                    history::record_apply(&mut tx, format, m, started.elapsed()).await?;
                }
                Ok::<(), Failure>(())
            }
            .await;
            if let Err(failure) = outcome {
                let _ = tx.rollback().await;
                let e = match failure {
                    Failure::Other(e) => e,
                    Failure::Script(whole) => {
                        locate(&mut conn, format, &finished, m, down, stmts, whole).await
                    }
                };
                progress(m, Phase::Failed(e.to_string()));
                progress(m, Phase::RolledBack);
                return Err(e);
            }
            allowed.extend(removes(m, down, dialect));
            if down {
                recorded.retain(|r| r.key != m.key());
            } else {
                recorded.push(Recorded {
                    key: m.key().to_string(),
                    name: m.name.clone(),
                    checksum: None,
                });
            }
            progress(
                m,
                if down {
                    Phase::Reverted
                } else {
                    Phase::Applied
                },
            );
            finished.push(*m);
        }
    }
    if !finished.is_empty() {
        let what = format!(
            "the batch ({})",
            finished
                .iter()
                .map(|m| m.label())
                .collect::<Vec<_>>()
                .join(", ")
        );
        match guard_check(&mut tx, &guard, &allowed, &what, options.accept_row_loss).await {
            Err(e) => {
                if let Some(m) = finished.last() {
                    progress(m, Phase::Failed(e.to_string()));
                }
                let _ = tx.rollback().await;
                if let Some(m) = finished.last() {
                    progress(m, Phase::RolledBack);
                }
                return Err(e);
            }
            Ok(accepted) => {
                if let Some(m) = finished.last() {
                    for a in accepted {
                        progress(m, Phase::Note(a));
                    }
                }
            }
        }
    }
    tx.commit().await.map_err(query_err(if down {
        "committing the revert"
    } else {
        "committing the migrations"
    }))?;
    for m in &finished {
        progress(m, Phase::Committed);
    }
    Ok(finished.iter().map(|m| m.version.clone()).collect())
}

/// golang-migrate's single row after reverting `m`: the newest migration still applied.
fn previous_after_revert<'a>(
    format: Format,
    migrations: &'a [Migration],
    recorded: &[Recorded],
    m: &Migration,
) -> Option<&'a Migration> {
    recorded
        .iter()
        .filter(|r| r.key != m.key())
        .filter_map(|r| migrations.iter().find(|x| x.key() == r.key))
        .max_by(|a, b| format.cmp_versions(&a.version, &b.version))
}

// ---- alone --------------------------------------------------------------------------------

/// The table where a migration that runs alone records its progress.
pub const PROGRESS_TABLE: &str = "_rewind_progress";

/// One unit of a migration that runs alone.
#[derive(Debug, Clone)]
struct Unit {
    statements: Vec<Statement>,
    /// Runs in a transaction (rewind's, or the block the script opened).
    transactional: bool,
    /// The script ends this block with ROLLBACK: its work is thrown away, as psql would.
    rolled_back: bool,
}

impl Unit {
    fn last_line(&self) -> usize {
        self.statements.last().map(|s| s.line).unwrap_or(1)
    }
}

/// Cuts a script into units (see the module documentation). `ALTER TYPE … ADD VALUE` ends a
/// unit: PostgreSQL does not let the new value be used in the transaction that added it.
fn units(stmts: &[Statement], dialect: Dialect) -> Vec<Unit> {
    let mut out = Vec::new();
    let mut open: Option<Unit> = None; // a block the script opened
    let mut plain: Vec<Statement> = Vec::new();
    let flush = |plain: &mut Vec<Statement>, out: &mut Vec<Unit>| {
        if !plain.is_empty() {
            out.push(Unit {
                statements: std::mem::take(plain),
                transactional: true,
                rolled_back: false,
            });
        }
    };
    for s in stmts {
        let control = s.transaction_control(dialect);
        if let Some(block) = open.as_mut() {
            match control {
                Some(TxControl::Commit) => out.push(open.take().expect("open block")),
                Some(TxControl::Rollback) => {
                    block.rolled_back = true;
                    out.push(open.take().expect("open block"));
                }
                // A second BEGIN inside a block: PostgreSQL warns and goes on.
                Some(TxControl::Begin) => {}
                None => block.statements.push(s.clone()),
            }
            continue;
        }
        match control {
            Some(TxControl::Begin) => {
                flush(&mut plain, &mut out);
                open = Some(Unit {
                    statements: Vec::new(),
                    transactional: true,
                    rolled_back: false,
                });
            }
            // COMMIT/ROLLBACK without a block: PostgreSQL warns, nothing happens.
            Some(_) => {}
            None if s.outside_transaction(dialect).is_some() => {
                flush(&mut plain, &mut out);
                out.push(Unit {
                    statements: vec![s.clone()],
                    transactional: false,
                    rolled_back: false,
                });
            }
            None => {
                let ends = is_add_enum_value(s, dialect);
                plain.push(s.clone());
                if ends {
                    flush(&mut plain, &mut out);
                }
            }
        }
    }
    // A block never committed: psql's session ends and PostgreSQL rolls it back.
    if let Some(mut block) = open {
        block.rolled_back = true;
        out.push(block);
    }
    flush(&mut plain, &mut out);
    out
}

/// True when `m`'s script (up, or down) must be committed before another migration runs:
/// PostgreSQL does not let the value an `ALTER TYPE … ADD VALUE` adds be used in the same
/// transaction, and the tools commit after each migration.
pub fn ends_batch(m: &Migration, down: bool, dialect: Dialect) -> bool {
    dialect == Dialect::Postgres
        && statements(m, down, dialect)
            .map(|stmts| stmts.iter().any(|s| is_add_enum_value(s, dialect)))
            .unwrap_or(false)
}

fn is_add_enum_value(s: &Statement, dialect: Dialect) -> bool {
    let w = s.words(dialect);
    w.len() >= 2
        && w[0] == "ALTER"
        && w[1] == "TYPE"
        && w.windows(2).any(|p| p[0] == "ADD" && p[1] == "VALUE")
}

/// A migration that ran partly, from the progress table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    /// The tool's format name.
    pub tool: String,
    /// [`Migration::key`].
    pub migration: String,
    /// `up` or `down`.
    pub direction: String,
    pub units_done: i64,
    pub units: i64,
    /// The last line of the file that is done.
    pub line: i64,
    pub started_at: String,
}

impl std::fmt::Display for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.units_done == 0 {
            return write!(
                f,
                "{} migration {} began ({}) and committed none of its {} units yet (since {})",
                self.tool,
                self.migration,
                if self.direction == "down" {
                    "reverting"
                } else {
                    "applying"
                },
                self.units,
                self.started_at
            );
        }
        write!(
            f,
            "{} migration {} ran partly ({}): {} of {} units committed, through line {} (since {})",
            self.tool,
            self.migration,
            if self.direction == "down" {
                "reverting"
            } else {
                "applying"
            },
            self.units_done,
            self.units,
            self.line,
            self.started_at
        )
    }
}

async fn progress_table_exists(conn: &mut AnyConnection, backend: Backend) -> Result<bool> {
    let sql = match backend {
        Backend::Postgres => {
            "SELECT 1 FROM pg_class WHERE relname = $1 AND pg_table_is_visible(oid)"
        }
        Backend::Sqlite => "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1",
    };
    Ok(sqlx::query(sql)
        .bind(PROGRESS_TABLE)
        .fetch_optional(&mut *conn)
        .await
        .map_err(query_err("looking for rewind's progress table"))?
        .is_some())
}

/// Migrations that ran partly (a migration that runs alone, killed or failed half-way).
pub async fn partial(pool: &AnyPool) -> Result<Vec<Partial>> {
    let mut conn = pool.acquire().await.map_err(query_err("connecting"))?;
    let backend = Backend::of(&conn)?;
    if !progress_table_exists(&mut conn, backend).await? {
        return Ok(Vec::new());
    }
    let doing = "reading rewind's progress table";
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT tool, migration, direction, CAST(units_done AS BIGINT), CAST(units AS BIGINT), \
         CAST(line AS BIGINT), started_at FROM {PROGRESS_TABLE} ORDER BY started_at"
    )))
    .fetch_all(&mut *conn)
    .await
    .map_err(query_err(doing))?;
    rows.iter()
        .map(|r| {
            Ok(Partial {
                tool: r.try_get(0)?,
                migration: r.try_get(1)?,
                direction: r.try_get(2)?,
                units_done: r.try_get(3)?,
                units: r.try_get(4)?,
                line: r.try_get(5)?,
                started_at: r.try_get(6)?,
            })
        })
        .collect::<std::result::Result<_, sqlx::Error>>()
        .map_err(query_err(doing))
}

/// PostgreSQL indexes left INVALID (by an interrupted `CREATE INDEX CONCURRENTLY`), as
/// `schema.index on table`; none on SQLite.
pub async fn invalid_indexes(pool: &AnyPool) -> Result<Vec<String>> {
    let mut conn = pool.acquire().await.map_err(query_err("connecting"))?;
    if Backend::of(&conn)? != Backend::Postgres {
        return Ok(Vec::new());
    }
    let doing = "looking for INVALID indexes";
    let rows = sqlx::query(
        "SELECT CAST(CAST(indexrelid AS regclass) AS TEXT) || ' on ' || CAST(CAST(indrelid AS regclass) AS TEXT) \
         FROM pg_index WHERE NOT indisvalid ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(query_err(doing))?;
    rows.iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<std::result::Result<_, sqlx::Error>>()
        .map_err(query_err(doing))
}

fn script_checksum(sql: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(sql.as_bytes()))
}

/// What running a migration alone did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AloneOutcome {
    /// It ran (or finished what an earlier attempt began).
    Done,
    /// The history already records it (applied; or, reverting, not applied).
    AlreadyDone,
}

/// Applies `m` alone, outside any batch, as its tool runs it (see the module documentation);
/// run again after a kill or a failure, it finishes what was begun.
pub async fn apply_alone(
    pool: &AnyPool,
    format: Format,
    migrations: &[Migration],
    key: &str,
    progress: impl FnMut(&Migration, Phase),
) -> Result<AloneOutcome> {
    alone(
        pool,
        format,
        migrations,
        key,
        false,
        Options::default(),
        progress,
    )
    .await
}

/// [`apply_alone`] or [`revert_alone`] (`down`) with what the person accepted.
pub async fn run_alone(
    pool: &AnyPool,
    format: Format,
    migrations: &[Migration],
    key: &str,
    down: bool,
    options: Options,
    progress: impl FnMut(&Migration, Phase),
) -> Result<AloneOutcome> {
    alone(pool, format, migrations, key, down, options, progress).await
}

/// Reverts `m` alone with its down script; see [`apply_alone`].
pub async fn revert_alone(
    pool: &AnyPool,
    format: Format,
    migrations: &[Migration],
    key: &str,
    progress: impl FnMut(&Migration, Phase),
) -> Result<AloneOutcome> {
    alone(
        pool,
        format,
        migrations,
        key,
        true,
        Options::default(),
        progress,
    )
    .await
}

async fn alone(
    pool: &AnyPool,
    format: Format,
    migrations: &[Migration],
    key: &str,
    down: bool,
    options: Options,
    mut progress: impl FnMut(&Migration, Phase),
) -> Result<AloneOutcome> {
    let m = find(migrations, key)?;
    if down {
        require_down(m)?;
    }
    let (mut conn, backend) = connection(pool, format).await?;
    let dialect = dialect(backend);
    if let RunMode::Psql(why) = run_mode(format, m, down, dialect)? {
        return Err(Error::NotTransactional {
            version: m.version.clone(),
            name: m.name.clone(),
            file: script_of(m, down).1.to_path_buf(),
            line: 1,
            reason: format!("{why}: run it with psql, then record it with record_only"),
        });
    }
    let stmts = statements(m, down, dialect)?;
    let units = units(&stmts, dialect);
    let (script, _) = script_of(m, down);
    let checksum = script_checksum(script);
    let direction = if down { "down" } else { "up" };
    let tool = format.name();

    history::ensure_table(&mut conn, format).await?;
    let recorded = history::recorded(&mut conn, format, migrations).await?;
    let is_applied = recorded.iter().any(|r| r.key == m.key());
    // Where an earlier attempt got to.
    let mut done = 0usize;
    let mut resuming = false;
    if progress_table_exists(&mut conn, backend).await? {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT CAST(units_done AS BIGINT), checksum FROM {PROGRESS_TABLE} \
             WHERE tool = $1 AND migration = $2 AND direction = $3"
        )))
        .bind(tool)
        .bind(m.key().to_string())
        .bind(direction)
        .fetch_optional(&mut *conn)
        .await
        .map_err(query_err("reading rewind's progress table"))?;
        if let Some(row) = row {
            let n: i64 = row.try_get(0).map_err(query_err("reading progress"))?;
            let sum: String = row.try_get(1).map_err(query_err("reading progress"))?;
            if sum != checksum {
                return Err(Error::History {
                    table: PROGRESS_TABLE.into(),
                    detail: format!(
                        "{} ran partly ({n} of {} units) from a different version of {}; the file changed since: restore the backup taken before, or put the file back as it was",
                        m.label(),
                        units.len(),
                        script_of(m, down).1.display()
                    ),
                });
            }
            done = n as usize;
            resuming = true;
        }
    }
    if is_applied != down && !resuming {
        return Ok(AloneOutcome::AlreadyDone);
    }
    if down {
        history::check_revert(&mut conn, format, m).await?;
    } else {
        history::check_apply(&mut conn, format, m).await?;
    }
    let tracked = units.len() > 1;
    if resuming {
        progress(
            m,
            Phase::Resuming {
                done,
                total: units.len(),
            },
        );
    } else {
        progress(
            m,
            if down {
                Phase::Reverting
            } else {
                Phase::Applying
            },
        );
        if tracked {
            create_progress(&mut conn, backend).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {PROGRESS_TABLE} (tool, migration, direction, checksum, units_done, units, line, started_at) \
                 VALUES ($1, $2, $3, $4, 0, $5, 0, $6)"
            )))
            .bind(tool)
            .bind(m.key().to_string())
            .bind(direction)
            .bind(checksum.clone())
            .bind(units.len() as i64)
            .bind(now_text())
            .execute(&mut *conn)
            .await
            .map_err(query_err("recording the start in rewind's progress table"))?;
        }
    }
    let started = Instant::now();
    let allowed = removes(m, down, dialect);
    let previous = previous_after_revert(format, migrations, &recorded, m);
    let total = units.len();
    let mut finished = false;
    for (i, unit) in units.iter().enumerate().skip(done) {
        let last = i + 1 == total;
        if unit.transactional {
            let mut tx = conn
                .begin()
                .await
                .map_err(query_err("beginning a transaction"))?;
            let guard = guard_start(&mut tx, backend).await?;
            let outcome = async {
                run_statements(&mut tx, m, down, &unit.statements).await?;
                if !unit.rolled_back {
                    let accepted = guard_check(
                        &mut tx,
                        &guard,
                        &allowed,
                        &format!("{} (through line {})", m.label(), unit.last_line()),
                        options.accept_row_loss,
                    )
                    .await?;
                    for a in accepted {
                        progress(m, Phase::Note(a));
                    }
                    if tracked {
                        set_progress(&mut tx, tool, m, direction, i + 1, unit.last_line()).await?;
                    }
                    if last {
                        if !down {
                            run_verify_tx(&mut tx, m, dialect).await?;
                        }
                        finish(
                            &mut tx, format, m, down, previous, started, tracked, tool, direction,
                        )
                        .await?;
                    }
                }
                Ok::<(), Error>(())
            }
            .await;
            if let Err(e) = outcome {
                progress(m, Phase::Failed(e.to_string()));
                let _ = tx.rollback().await;
                return Err(with_partial(e, i, total));
            }
            if !unit.rolled_back {
                tx.commit()
                    .await
                    .map_err(query_err("committing a unit of the migration"))?;
                finished |= last;
            } else {
                // The script throws this block away (it ends in ROLLBACK, or never
                // commits); so does rewind, and records the progress apart.
                let _ = tx.rollback().await;
                if tracked {
                    set_progress(&mut conn, tool, m, direction, i + 1, unit.last_line()).await?;
                }
            }
        } else {
            let stmt = &unit.statements[0];
            // An earlier attempt may have been killed (or failed) in this very statement.
            let resumed_here = (resuming && i == done) || (!tracked && i == 0);
            let skip = if resumed_here {
                settle_interrupted(&mut conn, backend, stmt, dialect, m, &mut progress).await?
            } else {
                false
            };
            if !skip {
                exec(&mut conn, &stmt.text)
                    .await
                    .map_err(|e| with_partial(failed(m, down, stmt, e), i, total))?;
            }
            if tracked {
                set_progress(&mut conn, tool, m, direction, i + 1, stmt.line).await?;
            }
        }
        progress(
            m,
            Phase::Unit {
                done: i + 1,
                total,
                line: unit.last_line(),
            },
        );
    }
    if !finished {
        // The last unit ran outside a transaction (or was thrown away, or there is none, or
        // an earlier attempt was killed right after it): record the history now.
        let mut tx = conn
            .begin()
            .await
            .map_err(query_err("beginning a transaction"))?;
        if !down {
            // The script's work is committed already: a failing verify leaves it half-done
            // (progress kept), for `resume` after a fix or a rollback's restore.
            run_verify_tx(&mut tx, m, dialect)
                .await
                .map_err(|e| with_partial(e, total, total))?;
        }
        finish(
            &mut tx, format, m, down, previous, started, tracked, tool, direction,
        )
        .await?;
        tx.commit()
            .await
            .map_err(query_err("recording the migration in its history"))?;
    }
    progress(m, Phase::Committed);
    Ok(AloneOutcome::Done)
}

/// Whether `m` is applied now (for a revert: whether it is not): what a caller that runs a
/// script itself (through psql) checks first.
pub async fn is_done(
    pool: &AnyPool,
    format: Format,
    migrations: &[Migration],
    key: &str,
    down: bool,
) -> Result<bool> {
    let m = find(migrations, key)?;
    let (mut conn, _) = connection(pool, format).await?;
    let recorded = history::recorded(&mut conn, format, migrations).await?;
    Ok(recorded.iter().any(|r| r.key == m.key()) != down)
}

/// Records in the tool's history that `m` was applied (or, `down`, reverted) by a script the
/// caller ran itself — through psql, as sqitch does — checking first what the tool checks
/// (sqitch's dependencies), in one transaction. Already recorded: nothing to do.
pub async fn record_only(
    pool: &AnyPool,
    format: Format,
    migrations: &[Migration],
    key: &str,
    down: bool,
    elapsed: std::time::Duration,
) -> Result<AloneOutcome> {
    let m = find(migrations, key)?;
    let (mut conn, _) = connection(pool, format).await?;
    history::ensure_table(&mut conn, format).await?;
    let mut tx = conn
        .begin()
        .await
        .map_err(query_err("beginning a transaction"))?;
    let recorded = history::recorded(&mut tx, format, migrations).await?;
    if recorded.iter().any(|r| r.key == m.key()) != down {
        return Ok(AloneOutcome::AlreadyDone);
    }
    if down {
        history::check_revert(&mut tx, format, m).await?;
        let previous = previous_after_revert(format, migrations, &recorded, m);
        history::record_revert(&mut tx, format, m, previous, elapsed).await?;
    } else {
        history::check_apply(&mut tx, format, m).await?;
        history::record_apply(&mut tx, format, m, elapsed).await?;
    }
    tx.commit()
        .await
        .map_err(query_err("recording the migration in its history"))?;
    Ok(AloneOutcome::Done)
}

fn with_partial(e: Error, units_done: usize, total: usize) -> Error {
    if units_done == 0 {
        return e;
    }
    Error::Partial {
        source: Box::new(e),
        units_done,
        units: total,
    }
}

fn now_text() -> String {
    jiff::Timestamp::now().to_string()
}

async fn create_progress(conn: &mut AnyConnection, backend: Backend) -> Result<()> {
    let _ = backend;
    exec(
        conn,
        &format!(
            "CREATE TABLE IF NOT EXISTS {PROGRESS_TABLE} (tool TEXT NOT NULL, migration TEXT NOT NULL, \
             direction TEXT NOT NULL, checksum TEXT NOT NULL, units_done INTEGER NOT NULL, \
             units INTEGER NOT NULL, line INTEGER NOT NULL, started_at TEXT NOT NULL, \
             PRIMARY KEY (tool, migration, direction))"
        ),
    )
    .await
    .map_err(query_err("creating rewind's progress table"))
}

async fn set_progress(
    conn: &mut AnyConnection,
    tool: &str,
    m: &Migration,
    direction: &str,
    done: usize,
    line: usize,
) -> Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {PROGRESS_TABLE} SET units_done = $1, line = $2 \
         WHERE tool = $3 AND migration = $4 AND direction = $5"
    )))
    .bind(done as i64)
    .bind(line as i64)
    .bind(tool.to_string())
    .bind(m.key().to_string())
    .bind(direction.to_string())
    .execute(&mut *conn)
    .await
    .map_err(query_err("recording progress in rewind's progress table"))?;
    Ok(())
}

/// Records `m` in its history and forgets its progress (dropping the progress table when no
/// other migration is in it), in the caller's transaction.
#[allow(clippy::too_many_arguments)]
async fn finish(
    conn: &mut AnyConnection,
    format: Format,
    m: &Migration,
    down: bool,
    previous: Option<&Migration>,
    started: Instant,
    tracked: bool,
    tool: &str,
    direction: &str,
) -> Result<()> {
    if down {
        history::record_revert(conn, format, m, previous, started.elapsed()).await?;
    } else {
        history::record_apply(conn, format, m, started.elapsed()).await?;
    }
    if tracked {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {PROGRESS_TABLE} WHERE tool = $1 AND migration = $2 AND direction = $3"
        )))
        .bind(tool.to_string())
        .bind(m.key().to_string())
        .bind(direction.to_string())
        .execute(&mut *conn)
        .await
        .map_err(query_err("clearing rewind's progress table"))?;
        let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT CAST(count(*) AS BIGINT) FROM {PROGRESS_TABLE}"
        )))
        .fetch_one(&mut *conn)
        .await
        .map_err(query_err("reading rewind's progress table"))?;
        if left == 0 {
            exec(conn, &format!("DROP TABLE {PROGRESS_TABLE}"))
                .await
                .map_err(query_err("dropping rewind's progress table"))?;
        }
    }
    Ok(())
}

/// Before running again a non-transactional statement that an earlier attempt may have been
/// killed in: a `CREATE INDEX CONCURRENTLY` that left its index INVALID gets the index
/// dropped (it is built again); one whose index is there and valid is not run again.
/// Returns true to skip the statement.
async fn settle_interrupted(
    conn: &mut AnyConnection,
    backend: Backend,
    stmt: &Statement,
    dialect: Dialect,
    m: &Migration,
    progress: &mut impl FnMut(&Migration, Phase),
) -> Result<bool> {
    if backend != Backend::Postgres {
        return Ok(false);
    }
    let Some(index) = concurrent_index_name(stmt, dialect) else {
        return Ok(false);
    };
    let row = sqlx::query(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE c.relname = $1 AND pg_table_is_visible(c.oid)",
    )
    .bind(index.clone())
    .fetch_optional(&mut *conn)
    .await
    .map_err(query_err(format!("looking up index {index}")))?;
    match row {
        None => Ok(false),
        Some(r) => {
            let valid: bool = r
                .try_get(0)
                .map_err(query_err(format!("looking up index {index}")))?;
            if valid {
                progress(
                    m,
                    Phase::Note(format!(
                        "index {index} was built before the interruption; not built again"
                    )),
                );
                Ok(true)
            } else {
                progress(
                    m,
                    Phase::Note(format!(
                        "index {index} was left INVALID by the interrupted CREATE INDEX CONCURRENTLY: dropping it to build it again"
                    )),
                );
                exec(
                    conn,
                    &format!("DROP INDEX CONCURRENTLY IF EXISTS {}", quote(&index)),
                )
                .await
                .map_err(query_err(format!("dropping the INVALID index {index}")))?;
                Ok(false)
            }
        }
    }
}

/// The index a `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name ON …` creates.
fn concurrent_index_name(stmt: &Statement, dialect: Dialect) -> Option<String> {
    let w = stmt.words(dialect);
    let raw = stmt.raw_words(dialect);
    let mut i = 0;
    if w.get(i)? != "CREATE" {
        return None;
    }
    i += 1;
    if w.get(i)? == "UNIQUE" {
        i += 1;
    }
    if w.get(i)? != "INDEX" || w.get(i + 1)? != "CONCURRENTLY" {
        return None;
    }
    i += 2;
    if w.get(i)? == "IF" {
        i += 3;
    }
    if w.get(i)? == "ON" {
        return None; // unnamed: PostgreSQL picks the name
    }
    raw.get(i).cloned()
}

// ---- the tool's whole run ---------------------------------------------------------------

/// The position in `migrations` of the migration `target` names ([`find_target`]).
fn target_position(migrations: &[Migration], target: Option<&str>) -> Result<Option<usize>> {
    let Some(t) = target else {
        return Ok(None);
    };
    let m = find_target(migrations, t)?;
    Ok(migrations.iter().position(|x| x.key() == m.key()))
}

/// Applies every pending migration of `migrations` up to and including `up_to` (a version,
/// a name, or for sqitch `@tag` / `change@tag`; `None`: all), as the tool's `migrate run`
/// would: consecutive batchable ones together in one transaction, the others alone. Returns
/// the versions applied.
pub async fn apply(
    pool: &AnyPool,
    format: Format,
    migrations: &[Migration],
    up_to: Option<&str>,
    mut progress: impl FnMut(&Migration, Phase),
) -> Result<Vec<String>> {
    let upto = target_position(migrations, up_to)?;
    let state = state(pool, format, migrations).await?;
    let keys: Vec<String> = migrations
        .iter()
        .enumerate()
        .filter(|(i, m)| !state.is_applied(m) && upto.is_none_or(|u| *i <= u))
        .map(|(_, m)| m.key().to_string())
        .collect();
    run_keys(pool, format, migrations, &keys, false, &mut progress).await
}

/// Reverts the applied migrations newer than `down_to` (which stays applied; `None`: all),
/// newest applied first: consecutive batchable ones together in one transaction, the others
/// alone. Every one must have a non-empty down script, checked before anything runs.
/// Returns the versions reverted.
pub async fn revert(
    pool: &AnyPool,
    format: Format,
    migrations: &[Migration],
    down_to: Option<&str>,
    mut progress: impl FnMut(&Migration, Phase),
) -> Result<Vec<String>> {
    let keep_pos = target_position(migrations, down_to)?;
    let state = state(pool, format, migrations).await?;
    let applied = state.applied(migrations);
    if let Some(r) = state.unknown(migrations).first() {
        return Err(Error::UnknownVersion(r.key.clone()));
    }
    let keys: Vec<String> = applied
        .iter()
        .rev()
        .filter(|m| {
            let pos = migrations
                .iter()
                .position(|x| x.key() == m.key())
                .unwrap_or(0);
            keep_pos.is_none_or(|k| pos > k)
        })
        .map(|m| m.key().to_string())
        .collect();
    for k in &keys {
        require_down(find(migrations, k)?)?;
    }
    run_keys(pool, format, migrations, &keys, true, &mut progress).await
}

/// Runs `keys` in order: consecutive batchable ones as one batch, the others alone.
pub async fn run_keys(
    pool: &AnyPool,
    format: Format,
    migrations: &[Migration],
    keys: &[String],
    down: bool,
    progress: &mut impl FnMut(&Migration, Phase),
) -> Result<Vec<String>> {
    let dialect = {
        let conn = pool.acquire().await.map_err(query_err("connecting"))?;
        dialect(Backend::of(&conn)?)
    };
    let mut segments: Vec<(bool, Vec<String>)> = Vec::new();
    let mut closed = false;
    for k in keys {
        let m = find(migrations, k)?;
        let alone = run_mode(format, m, down, dialect)?.is_alone();
        match segments.last_mut() {
            Some((false, batch)) if !alone && !closed => batch.push(k.clone()),
            _ => segments.push((alone, vec![k.clone()])),
        }
        closed = ends_batch(m, down, dialect);
    }
    let mut done = Vec::new();
    for (alone, keys) in segments {
        if alone {
            let m = find(migrations, &keys[0])?;
            if alone_run(pool, format, migrations, &keys[0], down, &mut *progress).await?
                == AloneOutcome::Done
            {
                done.push(m.version.clone());
            }
        } else {
            done.extend(
                batch(
                    pool,
                    format,
                    migrations,
                    &keys,
                    down,
                    Options::default(),
                    &mut *progress,
                )
                .await?,
            );
        }
    }
    Ok(done)
}

async fn alone_run(
    pool: &AnyPool,
    format: Format,
    migrations: &[Migration],
    key: &str,
    down: bool,
    progress: &mut impl FnMut(&Migration, Phase),
) -> Result<AloneOutcome> {
    alone(
        pool,
        format,
        migrations,
        key,
        down,
        Options::default(),
        progress,
    )
    .await
}
