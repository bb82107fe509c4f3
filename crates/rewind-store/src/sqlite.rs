//! The SQLite backend: one file, `.rewind/state.db` by default. Several `rewind` processes may
//! use it at once, so the file runs in WAL mode (readers never wait for the writer), waits up
//! to `BUSY_TIMEOUT` for a busy database, and every transaction that writes starts with
//! `BEGIN IMMEDIATE`: a deferred transaction that reads first and then wants to write can be
//! refused with "database is locked" no matter how long it waits.

use std::path::Path;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

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

    /// Like [`SqliteStore::open`], choosing how hard commits are pushed to disk.
    pub async fn open_with(path: &Path, sync: rewind_core::config::StateSync) -> Result<Self> {
        let location = path.display().to_string();
        let open_err = |source| StoreError::Open {
            location: location.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
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
        let pool = loop {
            let opened = async {
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(BUSY_TIMEOUT + Duration::from_secs(5))
                    .connect_with(options.clone())
                    .await?;
                // Make sure this is a database at all before migrating it.
                sqlx::query("SELECT count(*) FROM sqlite_master")
                    .execute(&pool)
                    .await?;
                Ok::<_, sqlx::Error>(pool)
            }
            .await;
            match opened {
                Ok(pool) => break pool,
                Err(e) if is_busy(&e) && attempt < 20 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(25 * attempt)).await;
                }
                Err(e) => return Err(open_err(e)),
            }
        };

        // Most opens find the schema current: one query says so, and the migrator (several
        // queries and checksums of every embedded file) is skipped.
        let latest = common::SQLITE_MIGRATIONS
            .0
            .iter()
            .map(|m| m.0)
            .max()
            .unwrap_or(0);
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT max(version) FROM _sqlx_migrations WHERE success AND \
             (SELECT count(*) FROM sqlite_master WHERE name = '_sqlx_migrations') > 0",
        )
        .fetch_one(&pool)
        .await
        .ok()
        .flatten();
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

    async fn begin_write(&self, doing: &str) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(common::query_err(doing))
    }

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
    match e {
        sqlx::Error::Database(d) => {
            matches!(d.code().as_deref(), Some("5") | Some("6") | Some("517"))
        }
        _ => false,
    }
}
