//! What the two backends share: the SQL text (SQLite and PostgreSQL agree on all of it,
//! `$n` placeholders included), row decoding helpers, embedded migrations, and one macro
//! that writes the `Store` implementation for a backend.
//!
//! A backend provides a struct with `pool: sqlx::Pool<DB>` and `location: String`, plus two
//! inherent methods the macro calls:
//! - `begin_write(&self, doing) -> Result<Transaction<'static, DB>>`: a transaction that may
//!   write (SQLite: `BEGIN IMMEDIATE`, so it never has to upgrade a read lock);
//! - `lock_env(tx, env)`: serialises writers of one environment's audit chain and release
//!   sequence for the rest of the transaction (PostgreSQL: an advisory transaction lock;
//!   SQLite: nothing, `BEGIN IMMEDIATE` already serialises every writer);
//! - `FENCE_LOCK`: the statement that reads the lock row for a fenced write (`$1` = env), so
//!   that no take-over can commit between the check and the write (PostgreSQL: `FOR SHARE`).

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType};

use crate::{StoreError, Unreadable};

/// Maps a driver error to `StoreError::Query`, naming what was being done.
pub(crate) fn query_err(doing: &str) -> impl FnOnce(sqlx::Error) -> StoreError + '_ {
    move |source| StoreError::Query {
        doing: doing.to_string(),
        source,
    }
}

pub(crate) fn corrupt(what: &str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what: what.to_string(),
        detail: detail.to_string(),
    }
}

/// Names one stored entry while its columns are read, so that a value that cannot be read
/// (not UTF-8, not JSON, the wrong type) is reported as that entry's column, and the other
/// rows can still be read.
pub(crate) struct Entry {
    pub what: String,
    pub seq: Option<i64>,
}

impl Entry {
    pub fn new(what: impl Into<String>) -> Self {
        Entry {
            what: what.into(),
            seq: None,
        }
    }

    pub fn bad(&self, column: &str, problem: impl Into<String>) -> Unreadable {
        Unreadable {
            entry: self.what.clone(),
            column: column.to_string(),
            problem: problem.into(),
            seq: self.seq,
        }
    }

    /// One column, decoded as `T`.
    pub fn col<'r, R, T>(&self, row: &'r R, name: &str) -> Result<T, Unreadable>
    where
        R: sqlx::Row,
        T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'a> &'a str: sqlx::ColumnIndex<R>,
    {
        row.try_get::<T, _>(name)
            .map_err(|e| self.bad(name, decode_problem(&e)))
    }

    /// A JSON text column.
    pub fn json<'r, R, T>(&self, row: &'r R, name: &str) -> Result<T, Unreadable>
    where
        R: sqlx::Row,
        T: serde::de::DeserializeOwned,
        String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'a> &'a str: sqlx::ColumnIndex<R>,
    {
        let text: String = self.col(row, name)?;
        serde_json::from_str(&text).map_err(|e| {
            self.bad(
                name,
                format!("is not the JSON rewind wrote ({e}): {}", excerpt(&text)),
            )
        })
    }

    /// A text column holding one of an enum's names.
    pub fn parse<'r, R, T>(&self, row: &'r R, name: &str, kind: &str) -> Result<T, Unreadable>
    where
        R: sqlx::Row,
        T: FromStr,
        T::Err: std::fmt::Display,
        String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'a> &'a str: sqlx::ColumnIndex<R>,
    {
        let text: String = self.col(row, name)?;
        text.parse().map_err(|e: T::Err| {
            self.bad(
                name,
                format!("holds {}, not a {kind} ({e})", excerpt(&text)),
            )
        })
    }
}

/// What is wrong with a value the driver could not decode, in words.
fn decode_problem(e: &sqlx::Error) -> String {
    if let sqlx::Error::ColumnDecode { source, .. } = e {
        if let Some(u) = source.downcast_ref::<std::str::Utf8Error>() {
            return format!("is not valid UTF-8 ({u})");
        }
        return format!("cannot be read: {source}");
    }
    format!("cannot be read: {e}")
}

/// A stored value, quoted and cut short, for an error message.
fn excerpt(text: &str) -> String {
    let cut: String = text.chars().take(60).collect();
    if cut.len() < text.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// A key column as text for naming an entry, whatever it holds.
pub(crate) fn loose_text<R>(row: &R, name: &str) -> String
where
    R: sqlx::Row,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    row.try_get::<Option<String>, _>(name)
        .ok()
        .flatten()
        .unwrap_or_else(|| "?".into())
}

/// A key column as an integer for naming an entry, if it holds one.
pub(crate) fn loose_i64<R>(row: &R, name: &str) -> Option<i64>
where
    R: sqlx::Row,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    row.try_get::<Option<i64>, _>(name).ok().flatten()
}

/// Serialises a value for a JSON text column.
pub(crate) fn to_json<T: serde::Serialize + ?Sized>(
    what: &str,
    value: &T,
) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| corrupt(what, e))
}

/// Migrations compiled into the binary, so an installed `rewind` needs no files beside it.
/// To add one, add the file and a line here; a migration never changes once released.
#[derive(Debug)]
pub(crate) struct Embedded(pub &'static [(i64, &'static str, &'static str)]);

pub(crate) const SQLITE_MIGRATIONS: Embedded = Embedded(&[
    (
        1,
        "initial",
        include_str!("../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "watch incidents",
        include_str!("../migrations/sqlite/0002_watch_incidents.sql"),
    ),
    (
        3,
        "release migration sets",
        include_str!("../migrations/sqlite/0003_release_migration_sets.sql"),
    ),
    (
        4,
        "lock holder token",
        include_str!("../migrations/sqlite/0004_lock_holder_token.sql"),
    ),
    (
        5,
        "store identity",
        include_str!("../migrations/sqlite/0005_store_identity.sql"),
    ),
]);

pub(crate) const POSTGRES_MIGRATIONS: Embedded = Embedded(&[
    (
        1,
        "initial",
        include_str!("../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "watch incidents",
        include_str!("../migrations/postgres/0002_watch_incidents.sql"),
    ),
    (
        3,
        "release migration sets",
        include_str!("../migrations/postgres/0003_release_migration_sets.sql"),
    ),
    (
        4,
        "lock holder token",
        include_str!("../migrations/postgres/0004_lock_holder_token.sql"),
    ),
    (
        5,
        "store identity",
        include_str!("../migrations/postgres/0005_store_identity.sql"),
    ),
]);

type Resolved = Result<Vec<Migration>, BoxDynError>;

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> Pin<Box<dyn Future<Output = Resolved> + Send + 'static>> {
        let migrations = self
            .0
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sqlx::SqlSafeStr::into_sql_str(sql),
                    false,
                )
            })
            .collect();
        Box::pin(std::future::ready(Ok(migrations)))
    }
}

// ---- SQL shared by both backends --------------------------------------------------------

pub(crate) const ENSURE_ENV: &str =
    "INSERT INTO environments (name) VALUES ($1) ON CONFLICT (name) DO NOTHING";
pub(crate) const CURRENT_RELEASE: &str = "SELECT current_release FROM environments WHERE name = $1";
pub(crate) const SET_CURRENT: &str = "INSERT INTO environments (name, current_release) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET current_release = excluded.current_release";

pub(crate) const DEPLOYED: &str =
    "SELECT component, version FROM deployed WHERE env = $1 ORDER BY component";
pub(crate) const SET_DEPLOYED: &str = "INSERT INTO deployed (env, component, version, updated_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (env, component) \
     DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at";

const RELEASE_COLS: &str =
    "env, name, seq, state, components, created_at, updated_at, actor, run_id, migrations";
pub(crate) fn release_one() -> String {
    format!("SELECT {RELEASE_COLS} FROM releases WHERE env = $1 AND name = $2")
}
pub(crate) fn release_all() -> String {
    format!("SELECT {RELEASE_COLS} FROM releases WHERE env = $1 ORDER BY seq")
}
pub(crate) const RELEASE_STATE: &str = "SELECT state FROM releases WHERE env = $1 AND name = $2";
pub(crate) const NEXT_RELEASE_SEQ: &str =
    "SELECT COALESCE(MAX(seq), 0) + 1 FROM releases WHERE env = $1";
pub(crate) const INSERT_RELEASE: &str = "INSERT INTO releases \
     (env, name, seq, state, components, created_at, updated_at, actor, run_id, migrations) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
pub(crate) const SET_RELEASE_STATE: &str =
    "UPDATE releases SET state = $1, updated_at = $2 WHERE env = $3 AND name = $4";

const RUN_COLS: &str = "id, env, kind, \"release\", from_release, status, actor, steps, \
     components, created_at, updated_at, error";
pub(crate) fn run_by_id() -> String {
    format!("SELECT {RUN_COLS} FROM runs WHERE id = $1")
}
pub(crate) fn run_unfinished() -> String {
    format!(
        "SELECT {RUN_COLS} FROM runs WHERE env = $1 AND status IN ('running', 'interrupted') \
         ORDER BY created_at DESC, id DESC LIMIT 1"
    )
}
pub(crate) fn runs_recent() -> String {
    format!("SELECT {RUN_COLS} FROM runs WHERE env = $1 ORDER BY created_at DESC, id DESC LIMIT $2")
}
pub(crate) const RUN_ENV: &str = "SELECT env FROM runs WHERE id = $1";
pub(crate) const INSERT_RUN: &str = "INSERT INTO runs (id, env, kind, \"release\", from_release, \
     status, actor, steps, components, created_at, updated_at, error) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL)";
pub(crate) const FINISH_RUN: &str =
    "UPDATE runs SET status = $1, error = $2, updated_at = $3 WHERE id = $4";
pub(crate) const TOUCH_RUN: &str = "UPDATE runs SET updated_at = $1 WHERE id = $2";

pub(crate) const NEXT_JOURNAL_SEQ: &str =
    "SELECT COALESCE(MAX(seq), 0) + 1 FROM journal WHERE run_id = $1";
pub(crate) const INSERT_JOURNAL: &str = "INSERT INTO journal \
     (run_id, seq, step, step_id, event, at, message) VALUES ($1, $2, $3, $4, $5, $6, $7)";
pub(crate) const JOURNAL: &str = "SELECT run_id, seq, step, step_id, event, at, message \
     FROM journal WHERE run_id = $1 ORDER BY seq";

pub(crate) const INSERT_RESTORE_POINT: &str = "INSERT INTO restore_points \
     (env, run_id, component, kind, version, data, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
pub(crate) const RESTORE_POINTS: &str = "SELECT id, env, run_id, component, kind, version, data, \
     created_at FROM restore_points WHERE env = $1 AND ($2 IS NULL OR run_id = $2) \
     ORDER BY id DESC";

/// Inserts the lock if nobody holds it. Nobody re-takes a held lock here, not even for the
/// same run: a process that resumes a run takes the lock over only from a dead holder
/// (`TAKE_OVER_LOCK`).
pub(crate) const TRY_LOCK: &str = "INSERT INTO locks \
     (env, run_id, pid, host, actor, since, heartbeat, token) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (env) DO NOTHING";
/// Replaces a holder judged dead, only if it is still exactly that holder (token and
/// heartbeat unchanged): of several processes taking over at once, one wins.
pub(crate) const TAKE_OVER_LOCK: &str = "UPDATE locks SET run_id = $1, pid = $2, host = $3, \
     actor = $4, since = $5, heartbeat = $6, token = $7 \
     WHERE env = $8 AND token = $9 AND heartbeat = $10";
pub(crate) const HEARTBEAT: &str = "UPDATE locks SET heartbeat = $1 WHERE env = $2 AND token = $3";
pub(crate) const UNLOCK: &str = "DELETE FROM locks WHERE env = $1 AND token = $2";
pub(crate) const LOCK_HOLDER: &str =
    "SELECT env, run_id, pid, host, actor, since, heartbeat, token FROM locks WHERE env = $1";

pub(crate) const AUDIT_LAST: &str =
    "SELECT hash, seq FROM audit WHERE env = $1 ORDER BY seq DESC LIMIT 1";
pub(crate) const INSERT_AUDIT: &str = "INSERT INTO audit \
     (env, seq, at, actor, action, \"release\", run_id, details, prev_hash, hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
pub(crate) const UPSERT_AUDIT_HEAD: &str = "INSERT INTO audit_head (env, seq, hash) VALUES ($1, $2, $3) \
     ON CONFLICT (env) DO UPDATE SET seq = excluded.seq, hash = excluded.hash";
pub(crate) const AUDIT_HEAD: &str = "SELECT seq, hash FROM audit_head WHERE env = $1";
pub(crate) const UPSERT_WATCH: &str = "INSERT INTO watches \
     (env, \"release\", started_at, window_secs, baseline, status, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (env, \"release\") DO UPDATE SET started_at = excluded.started_at, \
     window_secs = excluded.window_secs, baseline = excluded.baseline, status = excluded.status, \
     updated_at = excluded.updated_at";
pub(crate) const SET_WATCH_STATUS: &str =
    "UPDATE watches SET status = $1, updated_at = $2 WHERE env = $3 AND \"release\" = $4";
pub(crate) const ACTIVE_WATCH: &str = "SELECT env, \"release\", started_at, window_secs, baseline, status \
     FROM watches WHERE env = $1 AND status = 'watching' ORDER BY started_at DESC LIMIT 1";
pub(crate) const INSERT_INCIDENT: &str = "INSERT INTO incidents \
     (id, env, \"release\", trigger_name, signal, summary, evidence, status, rollback_run, opened_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)";
pub(crate) const UPDATE_INCIDENT: &str = "UPDATE incidents SET status = $1, \
     rollback_run = COALESCE($2, rollback_run), updated_at = $3 WHERE id = $4";
pub(crate) const INCIDENT_ENV: &str = "SELECT env FROM incidents WHERE id = $1";
pub(crate) const INCIDENTS: &str = "SELECT id, env, \"release\", trigger_name, signal, summary, evidence, \
     status, rollback_run, opened_at, updated_at FROM incidents WHERE env = $1 ORDER BY opened_at DESC, id DESC";
/// Everything `Footprint` holds, in one statement so that it is one snapshot (a writer that
/// appends between two separate reads would look like a chain that lost its head).
pub(crate) const FOOTPRINT: &str = "SELECT \
     (SELECT id FROM store_identity WHERE one = 1) AS store_id, \
     (SELECT seq FROM audit_head WHERE env = $1) AS head_seq, \
     (SELECT hash FROM audit_head WHERE env = $1) AS head_hash, \
     (SELECT seq FROM audit WHERE env = $1 ORDER BY seq DESC LIMIT 1) AS last_seq, \
     (SELECT hash FROM audit WHERE env = $1 ORDER BY seq DESC LIMIT 1) AS last_hash, \
     (SELECT count(*) FROM audit WHERE env = $1) AS audit_entries, \
     (SELECT count(*) FROM releases WHERE env = $1) AS releases, \
     (SELECT count(*) FROM runs WHERE env = $1) AS runs";
pub(crate) const AUDIT_HASH_AT: &str = "SELECT hash FROM audit WHERE env = $1 AND seq = $2";
pub(crate) const AUDIT_ENTRIES: &str = "SELECT env, seq, at, actor, action, \"release\", run_id, \
     details, prev_hash, hash FROM audit WHERE env = $1 ORDER BY seq";

/// Writes `impl Store for $store` over the database `$db`. See the module comment for
/// what the backend must provide.
macro_rules! impl_store {
    ($store:ty, $db:ty) => {
        type DbRow = <$db as sqlx::Database>::Row;
        type Tx = sqlx::Transaction<'static, $db>;

        fn release_from_row(row: &DbRow) -> $crate::Readable<rewind_core::Release> {
            let seq = $crate::common::loose_i64(row, "seq");
            let e = $crate::common::Entry {
                what: format!(
                    "release `{}` of {}",
                    $crate::common::loose_text(row, "name"),
                    $crate::common::loose_text(row, "env")
                ),
                seq,
            };
            Ok(rewind_core::Release {
                environment: e.col(row, "env")?,
                name: e.col(row, "name")?,
                state: e.parse(row, "state", "release state")?,
                seq: e.col(row, "seq")?,
                components: e.json(row, "components")?,
                created_at: e.col(row, "created_at")?,
                updated_at: e.col(row, "updated_at")?,
                actor: e.col(row, "actor")?,
                run_id: e.col(row, "run_id")?,
                migrations: e.json(row, "migrations")?,
            })
        }

        fn incident_from_row(row: &DbRow) -> $crate::Readable<rewind_core::Incident> {
            let e = $crate::common::Entry::new(format!(
                "incident `{}`",
                $crate::common::loose_text(row, "id")
            ));
            Ok(rewind_core::Incident {
                id: e.col(row, "id")?,
                environment: e.col(row, "env")?,
                release: e.col(row, "release")?,
                trigger: e.col(row, "trigger_name")?,
                signal: e.col(row, "signal")?,
                summary: e.col(row, "summary")?,
                evidence: e.json(row, "evidence")?,
                status: e.parse(row, "status", "incident status")?,
                rollback_run: e.col(row, "rollback_run")?,
                opened_at: e.col(row, "opened_at")?,
                updated_at: e.col(row, "updated_at")?,
            })
        }

        fn run_from_row(row: &DbRow) -> $crate::Readable<rewind_core::Run> {
            let e = $crate::common::Entry::new(format!(
                "run `{}`",
                $crate::common::loose_text(row, "id")
            ));
            Ok(rewind_core::Run {
                id: e.col(row, "id")?,
                environment: e.col(row, "env")?,
                kind: e.parse(row, "kind", "run kind")?,
                release: e.col(row, "release")?,
                from_release: e.col(row, "from_release")?,
                status: e.parse(row, "status", "run status")?,
                actor: e.col(row, "actor")?,
                steps: e.json(row, "steps")?,
                components: e.json(row, "components")?,
                created_at: e.col(row, "created_at")?,
                updated_at: e.col(row, "updated_at")?,
                error: e.col(row, "error")?,
            })
        }

        fn journal_from_row(row: &DbRow) -> $crate::Readable<rewind_core::JournalEntry> {
            let seq = $crate::common::loose_i64(row, "seq");
            let e = $crate::common::Entry {
                what: format!(
                    "journal line #{} of run `{}`",
                    seq.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
                    $crate::common::loose_text(row, "run_id")
                ),
                seq,
            };
            Ok(rewind_core::JournalEntry {
                run_id: e.col(row, "run_id")?,
                seq: e.col(row, "seq")?,
                step: e.col(row, "step")?,
                step_id: e.col(row, "step_id")?,
                event: e.parse(row, "event", "journal event")?,
                at: e.col(row, "at")?,
                message: e.col(row, "message")?,
            })
        }

        fn restore_point_from_row(row: &DbRow) -> $crate::Readable<rewind_core::RestorePoint> {
            let id = $crate::common::loose_i64(row, "id");
            let e = $crate::common::Entry {
                what: format!(
                    "restore point #{} ({} of run `{}`)",
                    id.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
                    $crate::common::loose_text(row, "component"),
                    $crate::common::loose_text(row, "run_id")
                ),
                seq: id,
            };
            Ok(rewind_core::RestorePoint {
                id: e.col(row, "id")?,
                environment: e.col(row, "env")?,
                run_id: e.col(row, "run_id")?,
                component: e.col(row, "component")?,
                kind: e.col(row, "kind")?,
                version: e.col(row, "version")?,
                data: e.json(row, "data")?,
                created_at: e.col(row, "created_at")?,
            })
        }

        fn lock_from_row(row: &DbRow) -> $crate::Result<rewind_core::LockHolder> {
            let e = $crate::common::Entry::new(format!(
                "the lock of {}",
                $crate::common::loose_text(row, "env")
            ));
            let read = || -> $crate::Readable<rewind_core::LockHolder> {
                let pid: i64 = e.col(row, "pid")?;
                Ok(rewind_core::LockHolder {
                    environment: e.col(row, "env")?,
                    run_id: e.col(row, "run_id")?,
                    pid: u32::try_from(pid).map_err(|_| {
                        e.bad("pid", format!("holds {pid}, which is not a process id"))
                    })?,
                    host: e.col(row, "host")?,
                    actor: e.col(row, "actor")?,
                    since: e.col(row, "since")?,
                    heartbeat: e.col(row, "heartbeat")?,
                    token: e.col(row, "token")?,
                })
            };
            read().map_err($crate::StoreError::Unreadable)
        }

        /// `position`: where the row came in the chain's order, for an entry whose own
        /// `seq` cannot be read.
        fn audit_from_row(
            row: &DbRow,
            position: usize,
        ) -> $crate::Readable<rewind_core::AuditEntry> {
            let seq = $crate::common::loose_i64(row, "seq");
            let env = $crate::common::loose_text(row, "env");
            let e = $crate::common::Entry {
                what: match seq {
                    Some(seq) => format!("audit entry #{seq} of {env}"),
                    None => format!(
                        "the audit entry of {env} at position {} (its seq cannot be read)",
                        position + 1
                    ),
                },
                seq,
            };
            Ok(rewind_core::AuditEntry {
                environment: e.col(row, "env")?,
                seq: e.col(row, "seq")?,
                at: e.col(row, "at")?,
                actor: e.col(row, "actor")?,
                action: e.col(row, "action")?,
                release: e.col(row, "release")?,
                run_id: e.col(row, "run_id")?,
                details: e.json(row, "details")?,
                prev_hash: e.col(row, "prev_hash")?,
                hash: e.col(row, "hash")?,
            })
        }

        impl $store {
            /// The environment a run belongs to, or `NoSuchRun`.
            async fn run_env(tx: &mut Tx, run_id: &str) -> $crate::Result<String> {
                let env: Option<String> = sqlx::query_scalar($crate::common::RUN_ENV)
                    .bind(run_id)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err($crate::common::query_err("looking up a run"))?;
                env.ok_or_else(|| $crate::StoreError::NoSuchRun(run_id.to_string()))
            }

            /// Fails with `LockLost` unless the lock of `env` carries the fence's token. Run in
            /// the transaction of the write it guards: SQLite's `BEGIN IMMEDIATE` already
            /// excludes every other writer; PostgreSQL reads the row `FOR SHARE`, so a take-over
            /// waits until this transaction ends, and one that committed first is seen.
            async fn fence_tx(tx: &mut Tx, env: &str, fence: &$crate::Fence) -> $crate::Result<()> {
                const DOING: &str = "checking that this process still holds the lock";
                if env != fence.environment {
                    return Err($crate::common::corrupt(
                        "a run's environment",
                        format!(
                            "the run belongs to `{env}`, the lock held is `{}`'s",
                            fence.environment
                        ),
                    ));
                }
                let row = sqlx::query(Self::FENCE_LOCK)
                    .bind(env)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err($crate::common::query_err(DOING))?;
                let holder = row.as_ref().map(lock_from_row).transpose()?;
                match holder {
                    Some(h) if h.token == fence.token => Ok(()),
                    other => Err($crate::StoreError::LockLost {
                        environment: env.to_string(),
                        holder: other.map(Box::new),
                    }),
                }
            }

            /// Appends one audit entry inside `tx`: the only place an entry is chained.
            async fn append_audit_tx(
                tx: &mut Tx,
                env: &str,
                entry: rewind_core::NewAudit,
            ) -> $crate::Result<rewind_core::AuditEntry> {
                use sqlx::Row as _;
                const DOING: &str = "appending to the audit chain";
                Self::lock_env(tx, env).await?;
                let last = sqlx::query($crate::common::AUDIT_LAST)
                    .bind(env)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err($crate::common::query_err(DOING))?;
                let prev: Option<(String, i64)> = match last {
                    Some(row) => Some((
                        row.try_get(0).map_err($crate::common::query_err(DOING))?,
                        row.try_get(1).map_err($crate::common::query_err(DOING))?,
                    )),
                    None => None,
                };
                let e = rewind_core::audit::chain(
                    env,
                    prev.as_ref().map(|(h, s)| (h.as_str(), *s)),
                    rewind_core::now_rfc3339(),
                    entry,
                );
                sqlx::query($crate::common::INSERT_AUDIT)
                    .bind(&e.environment)
                    .bind(e.seq)
                    .bind(&e.at)
                    .bind(&e.actor)
                    .bind(&e.action)
                    .bind(&e.release)
                    .bind(&e.run_id)
                    .bind($crate::common::to_json("audit details", &e.details)?)
                    .bind(&e.prev_hash)
                    .bind(&e.hash)
                    .execute(&mut **tx)
                    .await
                    .map_err($crate::common::query_err(DOING))?;
                // The head is kept apart from the chain so that removing the newest
                // entries (which the chain alone cannot show) is detected too.
                sqlx::query($crate::common::UPSERT_AUDIT_HEAD)
                    .bind(env)
                    .bind(e.seq)
                    .bind(&e.hash)
                    .execute(&mut **tx)
                    .await
                    .map_err($crate::common::query_err(DOING))?;
                Ok(e)
            }

            /// Applies ledger effects inside `tx`.
            async fn apply_effects_tx(
                tx: &mut Tx,
                env: &str,
                run_id: &str,
                effects: &[rewind_core::LedgerEffect],
            ) -> $crate::Result<()> {
                use rewind_core::LedgerEffect;
                const DOING: &str = "applying ledger effects";
                for effect in effects {
                    let now = rewind_core::now_rfc3339();
                    match effect {
                        LedgerEffect::ReleaseState { release, state } => {
                            let done = sqlx::query($crate::common::SET_RELEASE_STATE)
                                .bind(state.as_str())
                                .bind(&now)
                                .bind(env)
                                .bind(release)
                                .execute(&mut **tx)
                                .await
                                .map_err($crate::common::query_err(DOING))?;
                            if done.rows_affected() == 0 {
                                return Err($crate::StoreError::NoSuchRelease {
                                    environment: env.to_string(),
                                    release: release.clone(),
                                });
                            }
                        }
                        LedgerEffect::Deployed { component, version } => {
                            sqlx::query($crate::common::ENSURE_ENV)
                                .bind(env)
                                .execute(&mut **tx)
                                .await
                                .map_err($crate::common::query_err(DOING))?;
                            sqlx::query($crate::common::SET_DEPLOYED)
                                .bind(env)
                                .bind(component)
                                .bind(version)
                                .bind(&now)
                                .execute(&mut **tx)
                                .await
                                .map_err($crate::common::query_err(DOING))?;
                        }
                        LedgerEffect::Current { release } => {
                            sqlx::query($crate::common::SET_CURRENT)
                                .bind(env)
                                .bind(release)
                                .execute(&mut **tx)
                                .await
                                .map_err($crate::common::query_err(DOING))?;
                        }
                        LedgerEffect::RestorePoint {
                            component,
                            kind,
                            version,
                            data,
                        } => {
                            sqlx::query($crate::common::INSERT_RESTORE_POINT)
                                .bind(env)
                                .bind(run_id)
                                .bind(component)
                                .bind(kind)
                                .bind(version)
                                .bind($crate::common::to_json("restore point data", data)?)
                                .bind(&now)
                                .execute(&mut **tx)
                                .await
                                .map_err($crate::common::query_err(DOING))?;
                        }
                    }
                }
                Ok(())
            }

            /// Appends a journal line inside `tx` and touches the run's `updated_at`.
            async fn journal_line_tx(
                tx: &mut Tx,
                run_id: &str,
                step: Option<(i64, &str)>,
                event: rewind_core::JournalEvent,
                message: &str,
            ) -> $crate::Result<()> {
                const DOING: &str = "appending to the journal";
                let seq: i64 = sqlx::query_scalar($crate::common::NEXT_JOURNAL_SEQ)
                    .bind(run_id)
                    .fetch_one(&mut **tx)
                    .await
                    .map_err($crate::common::query_err(DOING))?;
                let now = rewind_core::now_rfc3339();
                sqlx::query($crate::common::INSERT_JOURNAL)
                    .bind(run_id)
                    .bind(seq)
                    .bind(step.map(|s| s.0))
                    .bind(step.map(|s| s.1))
                    .bind(event.as_str())
                    .bind(&now)
                    .bind(message)
                    .execute(&mut **tx)
                    .await
                    .map_err($crate::common::query_err(DOING))?;
                sqlx::query($crate::common::TOUCH_RUN)
                    .bind(&now)
                    .bind(run_id)
                    .execute(&mut **tx)
                    .await
                    .map_err($crate::common::query_err(DOING))?;
                Ok(())
            }

            async fn commit(tx: Tx, doing: &str) -> $crate::Result<()> {
                tx.commit().await.map_err($crate::common::query_err(doing))
            }
        }

        #[async_trait::async_trait]
        impl $crate::Store for $store {
            fn location(&self) -> String {
                self.location.clone()
            }

            async fn current_release(&self, env: &str) -> $crate::Result<Option<String>> {
                let v: Option<Option<String>> = sqlx::query_scalar($crate::common::CURRENT_RELEASE)
                    .bind(env)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::common::query_err("reading the current release"))?;
                Ok(v.flatten())
            }

            async fn deployed(
                &self,
                env: &str,
            ) -> $crate::Result<std::collections::BTreeMap<String, String>> {
                let rows: Vec<(String, String)> = sqlx::query_as($crate::common::DEPLOYED)
                    .bind(env)
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::common::query_err("reading deployed versions"))?;
                Ok(rows.into_iter().collect())
            }

            async fn release(
                &self,
                env: &str,
                name: &str,
            ) -> $crate::Result<Option<rewind_core::Release>> {
                let row = sqlx::query(sqlx::AssertSqlSafe($crate::common::release_one()))
                    .bind(env)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::common::query_err("reading a release"))?;
                row.as_ref()
                    .map(release_from_row)
                    .transpose()
                    .map_err($crate::StoreError::Unreadable)
            }

            async fn read_releases(
                &self,
                env: &str,
            ) -> $crate::Result<Vec<$crate::Readable<rewind_core::Release>>> {
                let rows = sqlx::query(sqlx::AssertSqlSafe($crate::common::release_all()))
                    .bind(env)
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::common::query_err("reading releases"))?;
                Ok(rows.iter().map(release_from_row).collect())
            }

            async fn create_run(
                &self,
                fence: &$crate::Fence,
                run: &rewind_core::NewRun,
                release: Option<&rewind_core::NewRelease>,
                audit: rewind_core::NewAudit,
            ) -> $crate::Result<rewind_core::Run> {
                const DOING: &str = "recording a new run";
                let env = run.environment.as_str();
                let now = rewind_core::now_rfc3339();
                let mut tx = self.begin_write(DOING).await?;
                Self::lock_env(&mut tx, env).await?;
                Self::fence_tx(&mut tx, env, fence).await?;
                sqlx::query($crate::common::ENSURE_ENV)
                    .bind(env)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::common::query_err(DOING))?;
                if let Some(rel) = release {
                    let existing: Option<String> =
                        sqlx::query_scalar($crate::common::RELEASE_STATE)
                            .bind(env)
                            .bind(&rel.name)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err($crate::common::query_err(DOING))?;
                    if let Some(state) = existing {
                        // Dropping `tx` rolls back the environment row too.
                        return Err($crate::StoreError::ReleaseExists {
                            environment: env.to_string(),
                            release: rel.name.clone(),
                            state,
                        });
                    }
                    let seq: i64 = sqlx::query_scalar($crate::common::NEXT_RELEASE_SEQ)
                        .bind(env)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err($crate::common::query_err(DOING))?;
                    sqlx::query($crate::common::INSERT_RELEASE)
                        .bind(env)
                        .bind(&rel.name)
                        .bind(seq)
                        .bind(rewind_core::ReleaseState::Deploying.as_str())
                        .bind($crate::common::to_json(
                            "release components",
                            &rel.components,
                        )?)
                        .bind(&now)
                        .bind(&now)
                        .bind(&run.actor)
                        .bind(&run.id)
                        .bind($crate::common::to_json(
                            "release migration sets",
                            &rel.migrations,
                        )?)
                        .execute(&mut *tx)
                        .await
                        .map_err($crate::common::query_err(DOING))?;
                }
                sqlx::query($crate::common::INSERT_RUN)
                    .bind(&run.id)
                    .bind(env)
                    .bind(run.kind.as_str())
                    .bind(&run.release)
                    .bind(&run.from_release)
                    .bind(rewind_core::RunStatus::Running.as_str())
                    .bind(&run.actor)
                    .bind($crate::common::to_json("run steps", &run.steps)?)
                    .bind($crate::common::to_json("run components", &run.components)?)
                    .bind(&now)
                    .bind(&now)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::common::query_err(DOING))?;
                let mut audit = audit;
                audit.run_id.get_or_insert_with(|| run.id.clone());
                Self::append_audit_tx(&mut tx, env, audit).await?;
                Self::commit(tx, DOING).await?;
                Ok(rewind_core::Run {
                    id: run.id.clone(),
                    environment: run.environment.clone(),
                    kind: run.kind,
                    release: run.release.clone(),
                    from_release: run.from_release.clone(),
                    status: rewind_core::RunStatus::Running,
                    actor: run.actor.clone(),
                    steps: run.steps.clone(),
                    components: run.components.clone(),
                    created_at: now.clone(),
                    updated_at: now,
                    error: None,
                })
            }

            async fn run(&self, id: &str) -> $crate::Result<Option<rewind_core::Run>> {
                let row = sqlx::query(sqlx::AssertSqlSafe($crate::common::run_by_id()))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::common::query_err("reading a run"))?;
                row.as_ref()
                    .map(run_from_row)
                    .transpose()
                    .map_err($crate::StoreError::Unreadable)
            }

            async fn unfinished_run(&self, env: &str) -> $crate::Result<Option<rewind_core::Run>> {
                let row = sqlx::query(sqlx::AssertSqlSafe($crate::common::run_unfinished()))
                    .bind(env)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::common::query_err("looking for an unfinished run"))?;
                row.as_ref()
                    .map(run_from_row)
                    .transpose()
                    .map_err($crate::StoreError::Unreadable)
            }

            async fn read_runs(
                &self,
                env: &str,
                limit: i64,
            ) -> $crate::Result<Vec<$crate::Readable<rewind_core::Run>>> {
                let rows = sqlx::query(sqlx::AssertSqlSafe($crate::common::runs_recent()))
                    .bind(env)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::common::query_err("reading runs"))?;
                Ok(rows.iter().map(run_from_row).collect())
            }

            async fn finish_run(
                &self,
                fence: &$crate::Fence,
                run_id: &str,
                status: rewind_core::RunStatus,
                error: Option<&str>,
                effects: &[rewind_core::LedgerEffect],
                audit: rewind_core::NewAudit,
            ) -> $crate::Result<()> {
                const DOING: &str = "finishing a run";
                let mut tx = self.begin_write(DOING).await?;
                let env = Self::run_env(&mut tx, run_id).await?;
                Self::lock_env(&mut tx, &env).await?;
                Self::fence_tx(&mut tx, &env, fence).await?;
                sqlx::query($crate::common::FINISH_RUN)
                    .bind(status.as_str())
                    .bind(error)
                    .bind(rewind_core::now_rfc3339())
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::common::query_err(DOING))?;
                Self::apply_effects_tx(&mut tx, &env, run_id, effects).await?;
                let mut audit = audit;
                audit.run_id.get_or_insert_with(|| run_id.to_string());
                Self::append_audit_tx(&mut tx, &env, audit).await?;
                Self::commit(tx, DOING).await
            }

            async fn journal_append(
                &self,
                fence: &$crate::Fence,
                run_id: &str,
                step: Option<(i64, &str)>,
                event: rewind_core::JournalEvent,
                message: &str,
            ) -> $crate::Result<()> {
                const DOING: &str = "appending to the journal";
                let mut tx = self.begin_write(DOING).await?;
                let env = Self::run_env(&mut tx, run_id).await?;
                Self::fence_tx(&mut tx, &env, fence).await?;
                Self::journal_line_tx(&mut tx, run_id, step, event, message).await?;
                Self::commit(tx, DOING).await
            }

            async fn journal_notes(
                &self,
                fence: &$crate::Fence,
                run_id: &str,
                step: (i64, &str),
                messages: &[String],
            ) -> $crate::Result<()> {
                const DOING: &str = "appending to the journal";
                if messages.is_empty() {
                    return Ok(());
                }
                let mut tx = self.begin_write(DOING).await?;
                let env = Self::run_env(&mut tx, run_id).await?;
                Self::fence_tx(&mut tx, &env, fence).await?;
                for m in messages {
                    Self::journal_line_tx(
                        &mut tx,
                        run_id,
                        Some(step),
                        rewind_core::JournalEvent::Note,
                        m,
                    )
                    .await?;
                }
                Self::commit(tx, DOING).await
            }

            async fn journal_finish(
                &self,
                fence: &$crate::Fence,
                run_id: &str,
                step: (i64, &str),
                event: rewind_core::JournalEvent,
                message: &str,
                effects: &[rewind_core::LedgerEffect],
                audit: rewind_core::NewAudit,
                next: Option<(i64, &str, &str)>,
            ) -> $crate::Result<()> {
                use rewind_core::JournalEvent;
                const DOING: &str = "finishing a step";
                let mut tx = self.begin_write(DOING).await?;
                let env = Self::run_env(&mut tx, run_id).await?;
                Self::lock_env(&mut tx, &env).await?;
                Self::fence_tx(&mut tx, &env, fence).await?;
                Self::journal_line_tx(&mut tx, run_id, Some(step), event, message).await?;
                if matches!(event, JournalEvent::Done | JournalEvent::Skipped) {
                    Self::apply_effects_tx(&mut tx, &env, run_id, effects).await?;
                }
                let mut audit = audit;
                audit.run_id.get_or_insert_with(|| run_id.to_string());
                Self::append_audit_tx(&mut tx, &env, audit).await?;
                if let Some((index, id, message)) = next {
                    Self::journal_line_tx(
                        &mut tx,
                        run_id,
                        Some((index, id)),
                        JournalEvent::Begin,
                        message,
                    )
                    .await?;
                }
                Self::commit(tx, DOING).await
            }

            async fn read_journal(
                &self,
                run_id: &str,
            ) -> $crate::Result<Vec<$crate::Readable<rewind_core::JournalEntry>>> {
                let rows = sqlx::query($crate::common::JOURNAL)
                    .bind(run_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::common::query_err("reading the journal"))?;
                Ok(rows.iter().map(journal_from_row).collect())
            }

            async fn read_restore_points(
                &self,
                env: &str,
                run_id: Option<&str>,
            ) -> $crate::Result<Vec<$crate::Readable<rewind_core::RestorePoint>>> {
                let rows = sqlx::query($crate::common::RESTORE_POINTS)
                    .bind(env)
                    .bind(run_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::common::query_err("reading restore points"))?;
                Ok(rows.iter().map(restore_point_from_row).collect())
            }

            async fn try_lock(
                &self,
                holder: &rewind_core::LockHolder,
            ) -> $crate::Result<$crate::LockAttempt> {
                const DOING: &str = "taking the lock";
                // The row can vanish between a refused insert and the read of who holds
                // it (its holder unlocked); then simply try again.
                loop {
                    let mut tx = self.begin_write(DOING).await?;
                    let done = sqlx::query($crate::common::TRY_LOCK)
                        .bind(&holder.environment)
                        .bind(&holder.run_id)
                        .bind(i64::from(holder.pid))
                        .bind(&holder.host)
                        .bind(&holder.actor)
                        .bind(&holder.since)
                        .bind(&holder.heartbeat)
                        .bind(&holder.token)
                        .execute(&mut *tx)
                        .await
                        .map_err($crate::common::query_err(DOING))?;
                    if done.rows_affected() > 0 {
                        Self::commit(tx, DOING).await?;
                        return Ok($crate::LockAttempt::Acquired);
                    }
                    let row = sqlx::query($crate::common::LOCK_HOLDER)
                        .bind(&holder.environment)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err($crate::common::query_err(DOING))?;
                    Self::commit(tx, DOING).await?;
                    if let Some(row) = row {
                        return Ok($crate::LockAttempt::Held(lock_from_row(&row)?));
                    }
                }
            }

            async fn take_over_lock(
                &self,
                holder: &rewind_core::LockHolder,
                stale: &rewind_core::LockHolder,
            ) -> $crate::Result<bool> {
                const DOING: &str = "taking over a stale lock";
                let mut tx = self.begin_write(DOING).await?;
                let done = sqlx::query($crate::common::TAKE_OVER_LOCK)
                    .bind(&holder.run_id)
                    .bind(i64::from(holder.pid))
                    .bind(&holder.host)
                    .bind(&holder.actor)
                    .bind(&holder.since)
                    .bind(&holder.heartbeat)
                    .bind(&holder.token)
                    .bind(&stale.environment)
                    .bind(&stale.token)
                    .bind(&stale.heartbeat)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::common::query_err(DOING))?;
                Self::commit(tx, DOING).await?;
                Ok(done.rows_affected() == 1)
            }

            async fn heartbeat(&self, env: &str, token: &str) -> $crate::Result<bool> {
                const DOING: &str = "refreshing the lock's heartbeat";
                let mut tx = self.begin_write(DOING).await?;
                let done = sqlx::query($crate::common::HEARTBEAT)
                    .bind(rewind_core::now_rfc3339())
                    .bind(env)
                    .bind(token)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::common::query_err(DOING))?;
                Self::commit(tx, DOING).await?;
                Ok(done.rows_affected() > 0)
            }

            async fn unlock(&self, env: &str, token: &str) -> $crate::Result<()> {
                const DOING: &str = "releasing the lock";
                let mut tx = self.begin_write(DOING).await?;
                sqlx::query($crate::common::UNLOCK)
                    .bind(env)
                    .bind(token)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::common::query_err(DOING))?;
                Self::commit(tx, DOING).await
            }

            async fn lock_holder(
                &self,
                env: &str,
            ) -> $crate::Result<Option<rewind_core::LockHolder>> {
                let row = sqlx::query($crate::common::LOCK_HOLDER)
                    .bind(env)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::common::query_err("reading the lock"))?;
                row.as_ref().map(lock_from_row).transpose()
            }

            async fn audit_append(
                &self,
                env: &str,
                entry: rewind_core::NewAudit,
            ) -> $crate::Result<rewind_core::AuditEntry> {
                const DOING: &str = "appending to the audit chain";
                let mut tx = self.begin_write(DOING).await?;
                let e = Self::append_audit_tx(&mut tx, env, entry).await?;
                Self::commit(tx, DOING).await?;
                Ok(e)
            }

            async fn read_audit(
                &self,
                env: &str,
            ) -> $crate::Result<Vec<$crate::Readable<rewind_core::AuditEntry>>> {
                let rows = sqlx::query($crate::common::AUDIT_ENTRIES)
                    .bind(env)
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::common::query_err("reading the audit chain"))?;
                Ok(rows
                    .iter()
                    .enumerate()
                    .map(|(i, row)| audit_from_row(row, i))
                    .collect())
            }

            async fn record(
                &self,
                env: &str,
                effects: &[rewind_core::LedgerEffect],
                audit: rewind_core::NewAudit,
            ) -> $crate::Result<()> {
                const DOING: &str = "recording in the ledger";
                let mut tx = self.begin_write(DOING).await?;
                sqlx::query($crate::common::ENSURE_ENV)
                    .bind(env)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::common::query_err(DOING))?;
                Self::lock_env(&mut tx, env).await?;
                let run_id = audit.run_id.clone().unwrap_or_default();
                Self::apply_effects_tx(&mut tx, env, &run_id, effects).await?;
                Self::append_audit_tx(&mut tx, env, audit).await?;
                Self::commit(tx, DOING).await
            }

            async fn begin_watch(
                &self,
                watch: &rewind_core::Watch,
                effects: &[rewind_core::LedgerEffect],
                audit: rewind_core::NewAudit,
            ) -> $crate::Result<()> {
                const DOING: &str = "recording a monitoring window";
                let mut tx = self.begin_write(DOING).await?;
                Self::lock_env(&mut tx, &watch.environment).await?;
                sqlx::query($crate::common::UPSERT_WATCH)
                    .bind(&watch.environment)
                    .bind(&watch.release)
                    .bind(&watch.started_at)
                    .bind(watch.window_secs)
                    .bind($crate::common::to_json("watch baseline", &watch.baseline)?)
                    .bind(&watch.status)
                    .bind(rewind_core::now_rfc3339())
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::common::query_err(DOING))?;
                let run_id = audit.run_id.clone().unwrap_or_default();
                Self::apply_effects_tx(&mut tx, &watch.environment, &run_id, effects).await?;
                Self::append_audit_tx(&mut tx, &watch.environment, audit).await?;
                Self::commit(tx, DOING).await
            }

            async fn end_watch(
                &self,
                env: &str,
                release: &str,
                status: &str,
                effects: &[rewind_core::LedgerEffect],
                audit: rewind_core::NewAudit,
            ) -> $crate::Result<()> {
                const DOING: &str = "closing a monitoring window";
                let mut tx = self.begin_write(DOING).await?;
                Self::lock_env(&mut tx, env).await?;
                sqlx::query($crate::common::SET_WATCH_STATUS)
                    .bind(status)
                    .bind(rewind_core::now_rfc3339())
                    .bind(env)
                    .bind(release)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::common::query_err(DOING))?;
                let run_id = audit.run_id.clone().unwrap_or_default();
                Self::apply_effects_tx(&mut tx, env, &run_id, effects).await?;
                Self::append_audit_tx(&mut tx, env, audit).await?;
                Self::commit(tx, DOING).await
            }

            async fn active_watch(&self, env: &str) -> $crate::Result<Option<rewind_core::Watch>> {
                let row = sqlx::query($crate::common::ACTIVE_WATCH)
                    .bind(env)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::common::query_err("reading the monitoring window"))?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let e = $crate::common::Entry::new(format!(
                    "the monitoring window of release `{}` of {env}",
                    $crate::common::loose_text(&row, "release")
                ));
                let read = || -> $crate::Readable<rewind_core::Watch> {
                    Ok(rewind_core::Watch {
                        environment: e.col(&row, "env")?,
                        release: e.col(&row, "release")?,
                        started_at: e.col(&row, "started_at")?,
                        window_secs: e.col(&row, "window_secs")?,
                        baseline: e.json(&row, "baseline")?,
                        status: e.col(&row, "status")?,
                    })
                };
                read().map(Some).map_err($crate::StoreError::Unreadable)
            }

            async fn open_incident(
                &self,
                incident: &rewind_core::Incident,
                audit: rewind_core::NewAudit,
            ) -> $crate::Result<()> {
                const DOING: &str = "opening an incident";
                let mut tx = self.begin_write(DOING).await?;
                Self::lock_env(&mut tx, &incident.environment).await?;
                sqlx::query($crate::common::INSERT_INCIDENT)
                    .bind(&incident.id)
                    .bind(&incident.environment)
                    .bind(&incident.release)
                    .bind(&incident.trigger)
                    .bind(&incident.signal)
                    .bind(&incident.summary)
                    .bind($crate::common::to_json(
                        "incident evidence",
                        &incident.evidence,
                    )?)
                    .bind(incident.status.as_str())
                    .bind(&incident.rollback_run)
                    .bind(&incident.opened_at)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::common::query_err(DOING))?;
                Self::append_audit_tx(&mut tx, &incident.environment, audit).await?;
                Self::commit(tx, DOING).await
            }

            async fn update_incident(
                &self,
                id: &str,
                status: rewind_core::IncidentStatus,
                rollback_run: Option<&str>,
                audit: rewind_core::NewAudit,
            ) -> $crate::Result<()> {
                use sqlx::Row as _;
                const DOING: &str = "updating an incident";
                let mut tx = self.begin_write(DOING).await?;
                let env: String = sqlx::query($crate::common::INCIDENT_ENV)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::common::query_err(DOING))?
                    .ok_or_else(|| {
                        $crate::common::corrupt("incident", format!("no incident {id}"))
                    })?
                    .try_get(0)
                    .map_err($crate::common::query_err(DOING))?;
                Self::lock_env(&mut tx, &env).await?;
                sqlx::query($crate::common::UPDATE_INCIDENT)
                    .bind(status.as_str())
                    .bind(rollback_run)
                    .bind(rewind_core::now_rfc3339())
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::common::query_err(DOING))?;
                Self::append_audit_tx(&mut tx, &env, audit).await?;
                Self::commit(tx, DOING).await
            }

            async fn read_incidents(
                &self,
                env: &str,
            ) -> $crate::Result<Vec<$crate::Readable<rewind_core::Incident>>> {
                let rows = sqlx::query($crate::common::INCIDENTS)
                    .bind(env)
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::common::query_err("reading incidents"))?;
                Ok(rows.iter().map(incident_from_row).collect())
            }

            async fn audit_head(&self, env: &str) -> $crate::Result<Option<(i64, String)>> {
                use sqlx::Row as _;
                const DOING: &str = "reading the audit head";
                let row = sqlx::query($crate::common::AUDIT_HEAD)
                    .bind(env)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::common::query_err(DOING))?;
                match row {
                    Some(r) => Ok(Some((
                        r.try_get(0).map_err($crate::common::query_err(DOING))?,
                        r.try_get(1).map_err($crate::common::query_err(DOING))?,
                    ))),
                    None => Ok(None),
                }
            }

            async fn footprint(&self, env: &str) -> $crate::Result<$crate::Footprint> {
                const DOING: &str = "reading what the store holds";
                let row = sqlx::query($crate::common::FOOTPRINT)
                    .bind(env)
                    .fetch_one(&self.pool)
                    .await
                    .map_err($crate::common::query_err(DOING))?;
                let e = $crate::common::Entry::new(format!("the audit head of {env}"));
                // A hash that is not even text is kept as "?": it then matches nothing, and
                // `audit verify` names the entry.
                let pair = |seq: &str, hash: &str| -> $crate::Readable<Option<(i64, String)>> {
                    let seq: Option<i64> = e.col(&row, seq)?;
                    Ok(seq.map(|s| (s, $crate::common::loose_text(&row, hash))))
                };
                let read = || -> $crate::Readable<$crate::Footprint> {
                    Ok($crate::Footprint {
                        store_id: e
                            .col::<_, Option<String>>(&row, "store_id")?
                            .unwrap_or_default(),
                        head: pair("head_seq", "head_hash")?,
                        last: pair("last_seq", "last_hash")?,
                        audit_entries: e.col(&row, "audit_entries")?,
                        releases: e.col(&row, "releases")?,
                        runs: e.col(&row, "runs")?,
                    })
                };
                read().map_err($crate::StoreError::Unreadable)
            }

            async fn audit_hash_at(&self, env: &str, seq: i64) -> $crate::Result<Option<String>> {
                let row = sqlx::query($crate::common::AUDIT_HASH_AT)
                    .bind(env)
                    .bind(seq)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::common::query_err("reading the audit chain"))?;
                Ok(row.map(|r| $crate::common::loose_text(&r, "hash")))
            }

            async fn explain(&self, err: &$crate::StoreError) -> Option<$crate::StoreError> {
                self.explain_error(err).await
            }
        }
    };
}

pub(crate) use impl_store;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under `migrations/<backend>/` is embedded, in order, under the version and
    /// description `sqlx migrate` would give it.
    #[test]
    fn every_migration_file_is_embedded() {
        for (dir, embedded) in [
            ("sqlite", SQLITE_MIGRATIONS),
            ("postgres", POSTGRES_MIGRATIONS),
        ] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dir);
            let mut files: Vec<(i64, String, String)> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "sql"))
                .map(|p| {
                    let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
                    let (version, desc) = stem.split_once('_').unwrap();
                    (
                        version.parse().unwrap(),
                        desc.replace('_', " "),
                        std::fs::read_to_string(&p).unwrap(),
                    )
                })
                .collect();
            files.sort();
            let listed: Vec<(i64, String, String)> = embedded
                .0
                .iter()
                .map(|&(v, d, s)| (v, d.to_string(), s.to_string()))
                .collect();
            assert_eq!(
                listed, files,
                "migrations/{dir} and the embedded list differ"
            );
        }
    }
}
