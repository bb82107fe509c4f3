//! The SQLite backend: one file, `.rewind/state.db` by default. Several `rewind` processes may
//! use it at once, so the file runs in WAL mode (readers never wait for the writer), waits up
//! to `BUSY_TIMEOUT` for a busy database, and every transaction that writes starts with
//! `BEGIN IMMEDIATE`: a deferred transaction that reads first and then wants to write can be
//! refused with "database is locked" no matter how long it waits.

use std::path::Path;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::common::{self, impl_store};
use crate::{Result, StoreError};

/// How long a statement waits for another process's write transaction to finish.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The state store in an SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    location: String,
}

impl SqliteStore {
    /// Opens (creating it and its directory if missing) and migrates the database at `path`,
    /// with every commit pushed to disk (`synchronous = FULL`).
    pub async fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, rewind_core::config::StateSync::Full).await
    }

    /// Like [`SqliteStore::open`], choosing how hard commits are pushed to disk. A file that
    /// is not a rewind state store (not SQLite, damaged, another program's database, or a
    /// newer rewind's) is refused and left as it is; a store that cannot be written is
    /// reported as read-only.
    pub async fn open_with(path: &Path, sync: rewind_core::config::StateSync) -> Result<Self> {
        let location = path.display().to_string();
        let open_err = |source| {
            let err = StoreError::Open {
                location: location.clone(),
                source,
            };
            explain_sqlite(&location, path, &err).unwrap_or(err)
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                    StoreError::ReadOnly {
                        location: location.clone(),
                        reason: format!("its directory {} cannot be created ({e})", dir.display()),
                    }
                }
                _ => open_err(sqlx::Error::Io(e)),
            })?;
        }
        // A file that cannot be written is said so before SQLite opens it (it would open it
        // read-only without a word, and create its `-wal` and `-shm` files beside it).
        if !is_new_file(path)
            && let Some(reason) = read_only_reason(path)
        {
            return Err(StoreError::ReadOnly { location, reason });
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .synchronous(match sync {
                rewind_core::config::StateSync::Full => SqliteSynchronous::Full,
                rewind_core::config::StateSync::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // Opening a file another process is creating (or migrating) at this very moment can
        // meet "database is locked" before the busy timeout applies (switching to WAL takes a
        // lock of its own): wait a little and try again.
        let mut attempt: u64 = 0;
        let (pool, found) = loop {
            let opened = async {
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(BUSY_TIMEOUT + Duration::from_secs(5))
                    .connect_with(options.clone())
                    .await?;
                // Make sure this is a rewind store (or an empty database) before changing
                // anything in it, even its journal mode (kept in the file once set).
                let found = inspect(&pool).await?;
                if matches!(found, Found::Rewind(_)) {
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&pool)
                        .await?;
                }
                Ok::<_, sqlx::Error>((pool, found))
            }
            .await;
            match opened {
                Ok(opened) => break opened,
                Err(e) if is_busy(&e) && attempt < 20 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(25 * attempt)).await;
                }
                Err(e) => return Err(open_err(e)),
            }
        };
        let latest = latest_version();
        let current = match found {
            Found::Foreign(tables) => return Err(foreign(&location, &tables)),
            Found::Rewind(Some(v)) if v > latest => {
                return Err(StoreError::Newer {
                    location,
                    found: v,
                    known: latest,
                });
            }
            Found::Rewind(v) => v,
        };
        // SQLite opens a file it may not write read-only without a word; say so now,
        // before a command starts, rather than at its first write.
        if let Some(reason) = read_only_reason(path) {
            return Err(StoreError::ReadOnly { location, reason });
        }
        // A command that writes first makes sure the file is sound: damage met halfway
        // through a command (a run recorded, its ledger effects not) would leave records
        // that contradict each other. `quick_check` reads every page once (O(pages); well
        // under a millisecond for a small store).
        if current.is_some() {
            let rows: Vec<String> = sqlx::query_scalar("PRAGMA quick_check")
                .fetch_all(&pool)
                .await
                .map_err(&open_err)?;
            if rows.first().map(String::as_str) != Some("ok") {
                let found: Vec<String> = rows.into_iter().take(3).collect();
                return Err(StoreError::NotAStore {
                    location,
                    reason: format!(
                        "the file is damaged (SQLite's integrity check: {}); rewind wrote nothing to it",
                        found.join("; ")
                    ),
                });
            }
        }
        // Most opens find the schema current: the migrator (several queries and checksums
        // of every embedded file) is skipped.
        if current == Some(latest) {
            return Ok(SqliteStore { pool, location });
        }
        let migrator = Migrator::new(common::SQLITE_MIGRATIONS)
            .await
            .map_err(|source| StoreError::Migrate {
                location: location.clone(),
                source,
            })?;
        // Two processes opening a brand-new file at once can both try the first migration;
        // the loser fails and, on a second look, finds it applied.
        let mut attempt = 0;
        loop {
            match migrator.run(&pool).await {
                Ok(()) => break,
                Err(_) if attempt < 3 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Err(source) => return Err(StoreError::Migrate { location, source }),
            }
        }
        Ok(SqliteStore { pool, location })
    }

    /// Opens the database at `path` for reading only: nothing is created, migrated or
    /// written, so a read-only file or directory is no obstacle. A store that does not exist
    /// yet (no file, or an empty one) reads as an empty store. A store an older rewind wrote
    /// is migrated first when it can be written, since this rewind's queries need the
    /// current schema.
    pub async fn open_read_only(path: &Path) -> Result<Self> {
        let location = path.display().to_string();
        if is_new_file(path) {
            return Self::empty_stand_in(location).await;
        }
        let open_err = |source| {
            let err = StoreError::Open {
                location: location.clone(),
                source,
            };
            explain_sqlite(&location, path, &err).unwrap_or(err)
        };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .create_if_missing(false)
            .busy_timeout(BUSY_TIMEOUT);
        let connect = |options: SqliteConnectOptions| async move {
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(BUSY_TIMEOUT + Duration::from_secs(5))
                .connect_with(options)
                .await?;
            let found = inspect(&pool).await?;
            Ok::<_, sqlx::Error>((pool, found))
        };
        let (pool, found) = match connect(options.clone()).await {
            Ok(opened) => opened,
            // A WAL database needs its `-shm` (and `-wal`) file beside it; when they are
            // absent (every connection closed cleanly) and the directory cannot be written,
            // SQLite cannot open it even for reading. Nobody can be writing it then (a
            // writer would have created them), so it is opened as immutable.
            Err(e)
                if matches!(sqlite_code(&e), Some(SQLITE_CANTOPEN | SQLITE_READONLY))
                    && !wal_file(path).exists() =>
            {
                connect(options.immutable(true)).await.map_err(open_err)?
            }
            Err(e) => return Err(open_err(e)),
        };
        let latest = latest_version();
        match found {
            Found::Foreign(tables) => Err(foreign(&location, &tables)),
            Found::Rewind(Some(v)) if v > latest => Err(StoreError::Newer {
                location,
                found: v,
                known: latest,
            }),
            Found::Rewind(Some(v)) if v == latest => Ok(SqliteStore { pool, location }),
            Found::Rewind(None) => {
                // An SQLite database with no rewind tables in it yet: nothing recorded.
                pool.close().await;
                Self::empty_stand_in(location).await
            }
            Found::Rewind(Some(v)) => {
                pool.close().await;
                Self::open(path).await.map_err(|e| match e {
                    StoreError::ReadOnly { location, reason } => StoreError::ReadOnly {
                        location,
                        reason: format!(
                            "{reason}; it was written by an older rewind (schema version {v} of {latest}) and must be migrated before this rewind can read it"
                        ),
                    },
                    other => other,
                })
            }
        }
    }

    /// An empty store in memory, for reading a store that does not exist yet without
    /// creating it. It answers every question with "nothing recorded".
    pub(crate) async fn empty_stand_in(location: String) -> Result<Self> {
        let migrate_err = |source| StoreError::Migrate {
            location: location.clone(),
            source,
        };
        // One connection, kept: every in-memory connection is a database of its own.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(SqliteConnectOptions::new().in_memory(true))
            .await
            .map_err(|source| StoreError::Open {
                location: location.clone(),
                source,
            })?;
        let migrator = Migrator::new(common::SQLITE_MIGRATIONS)
            .await
            .map_err(migrate_err)?;
        migrator.run(&pool).await.map_err(migrate_err)?;
        // No store exists, so it has no identity either.
        sqlx::query("DELETE FROM store_identity")
            .execute(&pool)
            .await
            .map_err(|source| StoreError::Open {
                location: location.clone(),
                source,
            })?;
        Ok(SqliteStore { pool, location })
    }

    /// Says what a query error means for this file (see `Store::explain`).
    async fn explain_error(&self, err: &StoreError) -> Option<StoreError> {
        explain_sqlite(&self.location, Path::new(&self.location), err)
    }

    async fn begin_write(&self, doing: &str) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(common::query_err(doing))
    }

    /// The lock row, read for a fenced write: `BEGIN IMMEDIATE` already made this
    /// transaction the only writer, so nobody takes the lock over before it ends.
    const FENCE_LOCK: &'static str = common::LOCK_HOLDER;

    /// Nothing to do: `BEGIN IMMEDIATE` already made this the only writer.
    async fn lock_env(
        _tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        _env: &str,
    ) -> Result<()> {
        Ok(())
    }
}

impl_store!(SqliteStore, sqlx::Sqlite);

/// SQLITE_BUSY (5) or SQLITE_LOCKED (6): another connection holds the lock right now.
fn is_busy(e: &sqlx::Error) -> bool {
    matches!(sqlite_code(e), Some(5) | Some(6))
}

const SQLITE_READONLY: i64 = 8;
const SQLITE_CORRUPT: i64 = 11;
const SQLITE_CANTOPEN: i64 = 14;
const SQLITE_NOTADB: i64 = 26;

/// The primary SQLite result code of a driver error (extended codes carry it in their low
/// byte).
fn sqlite_code(e: &sqlx::Error) -> Option<i64> {
    match e {
        sqlx::Error::Database(d) => d.code()?.parse::<i64>().ok().map(|c| c & 0xff),
        _ => None,
    }
}

/// No file, or an empty one: opening it for writing creates a new store.
pub(crate) fn is_new_file(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Ok(m) => m.is_file() && m.len() == 0,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

fn wal_file(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    std::path::PathBuf::from(name)
}

fn latest_version() -> i64 {
    common::SQLITE_MIGRATIONS
        .0
        .iter()
        .map(|m| m.0)
        .max()
        .unwrap_or(0)
}

/// What an SQLite file holds.
enum Found {
    /// rewind's tables (or none at all yet), at this schema version (`None`: none applied).
    Rewind(Option<i64>),
    /// Some other program's tables.
    Foreign(Vec<String>),
}

/// Every table rewind's migrations create, and the ones SQLite and sqlx add.
const REWIND_TABLES: &[&str] = &[
    "_sqlx_migrations",
    "sqlite_sequence",
    "environments",
    "deployed",
    "releases",
    "runs",
    "journal",
    "restore_points",
    "locks",
    "audit",
    "audit_head",
    "watches",
    "incidents",
    "store_identity",
];

/// Tells a rewind store from another program's SQLite database (which rewind must never
/// migrate into), and reads the schema version. Reading `sqlite_master` also proves the
/// file is an SQLite database at all.
async fn inspect(pool: &SqlitePool) -> std::result::Result<Found, sqlx::Error> {
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(pool)
            .await?;
    let has = |t: &str| tables.iter().any(|n| n == t);
    let ours = (has("_sqlx_migrations") && has("audit") && has("releases"))
        || tables.iter().all(|t| REWIND_TABLES.contains(&t.as_str()));
    if !ours {
        return Ok(Found::Foreign(tables));
    }
    if !has("_sqlx_migrations") {
        return Ok(Found::Rewind(None));
    }
    let version: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?;
    Ok(Found::Rewind(version))
}

fn foreign(location: &str, tables: &[String]) -> StoreError {
    let mut shown: Vec<&str> = tables.iter().take(6).map(String::as_str).collect();
    if tables.len() > shown.len() {
        shown.push("…");
    }
    StoreError::NotAStore {
        location: location.to_string(),
        reason: format!(
            "it is an SQLite database of something else (tables {}); rewind left it as it is",
            shown.join(", ")
        ),
    }
}

/// Why `path` cannot be written, if it cannot: the file itself, or its directory (where
/// SQLite must create the `-wal` and `-shm` files beside it).
fn read_only_reason(path: &Path) -> Option<String> {
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Some(format!("the file cannot be written ({e})")),
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    let wal = wal_file(path);
    if wal.exists() {
        // An existing write-ahead log is written in place: the directory need not be.
        return match std::fs::OpenOptions::new().write(true).open(&wal) {
            Ok(_) => None,
            Err(e) => Some(format!("{} cannot be written ({e})", wal.display())),
        };
    }
    let probe = dir.join(format!(".rewind-write-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(format!(
            "its directory {} cannot be written ({e}), and SQLite keeps its write-ahead log beside the file",
            dir.display()
        )),
    }
}

/// A driver error about this file in words: damaged or not a database, read-only.
fn explain_sqlite(location: &str, path: &Path, err: &StoreError) -> Option<StoreError> {
    let code = err.sqlx().and_then(sqlite_code)?;
    let detail = err
        .sqlx()
        .map(|e| match e {
            sqlx::Error::Database(d) => d.message().to_string(),
            other => other.to_string(),
        })
        .unwrap_or_default();
    // At open nothing was written yet; a query's command may have written elsewhere in
    // the file before it met the damage.
    let doing = match err {
        StoreError::Query { doing, .. } => format!(", found while {doing}"),
        _ => "; rewind left it as it is".to_string(),
    };
    Some(match code {
        SQLITE_NOTADB => StoreError::NotAStore {
            location: location.to_string(),
            reason: format!("the file is not an SQLite database ({detail}){doing}"),
        },
        SQLITE_CORRUPT => StoreError::NotAStore {
            location: location.to_string(),
            reason: format!("the file is damaged ({detail}){doing}"),
        },
        SQLITE_READONLY | SQLITE_CANTOPEN => StoreError::ReadOnly {
            location: location.to_string(),
            reason: read_only_reason(path)?,
        },
        _ => return None,
    })
}
