//! The PostgreSQL backend, for teams sharing one state store. Writers of one environment's
//! audit chain and release sequence are serialised with a transaction-scoped advisory lock,
//! so two processes never chain onto the same entry.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use crate::common::{self, impl_store};
use crate::{Result, StoreError};

/// How long the first connection may take before the server counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a query waits for a connection from the pool. A server that stops answering
/// is noticed after this long (a refused connection is retried until then), and then
/// `Store::explain` says why.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The state store in a PostgreSQL database.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// The URL with its password masked.
    location: String,
    /// For a fresh connection that tells why the pool has none (holds the password: kept
    /// out of `Debug`).
    options: std::sync::Arc<PgConnectOptions>,
    /// Set when a write could not get a connection: the next write asks the server
    /// directly first, so that a server that is still down is said at once (the pool would
    /// retry a refused connection for `ACQUIRE_TIMEOUT` again).
    lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to `url` and migrates the database. Errors never show the password; a
    /// server that does not answer is reported at once (or after `CONNECT_TIMEOUT`), with
    /// the reason.
    pub async fn connect(url: &str) -> Result<Self> {
        let store = Self::connect_only(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to `url` for a command that only reads: a database that holds no rewind
    /// schema yet is answered by `None` (the caller reads it as an empty store) and left as
    /// it is; one whose schema an older rewind wrote is migrated first (this rewind's queries
    /// need the current schema).
    pub async fn connect_to_read(url: &str) -> Result<Option<Self>> {
        let store = Self::connect_only(url).await?;
        let exists: bool = sqlx::query_scalar(
            "SELECT to_regclass('_sqlx_migrations') IS NOT NULL OR to_regclass('audit') IS NOT NULL",
        )
        .fetch_one(&store.pool)
        .await
        .map_err(|source| StoreError::Open {
            location: store.location.clone(),
            source,
        })?;
        if !exists {
            store.pool.close().await;
            return Ok(None);
        }
        store.migrate().await?;
        Ok(Some(store))
    }

    async fn migrate(&self) -> Result<()> {
        let migrator = Migrator::new(common::POSTGRES_MIGRATIONS)
            .await
            .map_err(|source| StoreError::Migrate {
                location: self.location.clone(),
                source,
            })?;
        migrator
            .run(&self.pool)
            .await
            .map_err(|source| StoreError::Migrate {
                location: self.location.clone(),
                source,
            })
    }

    async fn connect_only(url: &str) -> Result<Self> {
        let location = rewind_core::redact::redact_url_passwords(url);
        let open_err = |e| StoreError::Open {
            location: location.clone(),
            source: scrub(e, url),
        };
        // The name lets a database freeze (which ends the other sessions of a database) spare
        // rewind's own state connections when the state lives in that same database.
        let options = PgConnectOptions::from_str(url)
            .map_err(open_err)?
            .application_name("rewind-state");
        // One connection first, so a wrong address or password fails at once (the pool
        // would retry a refused connection until its acquire timeout).
        let first = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| StoreError::Unreachable {
                location: location.clone(),
                reason: format!(
                    "no answer from {} within {}s",
                    server(&options),
                    CONNECT_TIMEOUT.as_secs()
                ),
            })?
            .map_err(|e| connect_failure(&location, &options, scrub(e, url)))?;
        first.close().await.map_err(open_err)?;
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(|e| connect_failure(&location, &options, scrub(e, url)))?;
        Ok(PostgresStore {
            pool,
            location,
            options: std::sync::Arc::new(options),
            lost: Default::default(),
        })
    }

    /// Says why a query failed when the cause is the connection: a fresh connection is
    /// tried (for at most `CONNECT_TIMEOUT`), and its failure is the reason.
    async fn explain_error(&self, err: &StoreError) -> Option<StoreError> {
        if !err.sqlx().is_some_and(is_connection_error) {
            return None;
        }
        let doing = match err {
            StoreError::Query { doing, .. } => format!(" (while {doing})"),
            _ => String::new(),
        };
        let probe =
            tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&self.options)).await;
        Some(match probe {
            Err(_) => StoreError::Unreachable {
                location: self.location.clone(),
                reason: format!(
                    "no answer from {} within {}s{doing}",
                    server(&self.options),
                    CONNECT_TIMEOUT.as_secs()
                ),
            },
            Ok(Err(e)) => {
                let masked = self.location.clone();
                match connect_failure(&masked, &self.options, e) {
                    StoreError::Unreachable { location, reason } => StoreError::Unreachable {
                        location,
                        reason: format!("{reason}{doing}"),
                    },
                    StoreError::Refused { location, reason } => StoreError::Refused {
                        location,
                        reason: format!("{reason}{doing}"),
                    },
                    _ => return None,
                }
            }
            // It answers again: the connection was lost on the way; say so.
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                StoreError::Unreachable {
                    location: self.location.clone(),
                    reason: format!(
                        "the connection was lost{doing} ({}); the server answers again now",
                        err.sqlx().map(|e| e.to_string()).unwrap_or_default()
                    ),
                }
            }
        })
    }

    async fn begin_write(&self, doing: &str) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        use std::sync::atomic::Ordering;
        if self.lost.load(Ordering::Relaxed) {
            let probe =
                tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&self.options))
                    .await
                    .unwrap_or(Err(sqlx::Error::PoolTimedOut));
            match probe {
                Ok(conn) => {
                    let _ = conn.close().await;
                    self.lost.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(common::query_err(doing)(e)),
            }
        }
        self.pool.begin().await.map_err(|e| {
            if is_connection_error(&e) {
                self.lost.store(true, Ordering::Relaxed);
            }
            common::query_err(doing)(e)
        })
    }

    /// Holds the environment's advisory lock until the transaction ends. Taking it again in
    /// the same transaction is harmless.
    /// The lock row, read for a fenced write and share-locked until the transaction ends:
    /// a take-over (an `UPDATE` of the row) waits for the write, or, committed first, is seen.
    const FENCE_LOCK: &'static str = "SELECT env, run_id, pid, host, actor, since, heartbeat, token \
         FROM locks WHERE env = $1 FOR SHARE";

    async fn lock_env(
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        env: &str,
    ) -> Result<()> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('rewind-env:' || $1::text, 0))")
            .bind(env)
            .execute(&mut **tx)
            .await
            .map_err(common::query_err("locking the environment's ledger"))?;
        Ok(())
    }
}

/// `host:port` (or the socket directory) of the server, for messages.
fn server(options: &PgConnectOptions) -> String {
    format!("{}:{}", options.get_host(), options.get_port())
}

/// An error that says the connection failed or was lost, rather than a query's own.
fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        // 08: connection exception; 57P01–57P03: the server is shutting down, crashed, or
        // is not accepting connections yet.
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

/// A failed connection in words: unreachable (refused, unknown host, not answering,
/// shutting down), or refused by the server (login, database, permissions).
fn connect_failure(location: &str, options: &PgConnectOptions, e: sqlx::Error) -> StoreError {
    let location = location.to_string();
    match &e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            StoreError::Unreachable {
                location,
                reason: format!(
                    "connection refused: nothing listens at {} (is the server running?)",
                    server(options)
                ),
            }
        }
        sqlx::Error::Io(io) => StoreError::Unreachable {
            location,
            reason: format!("{} ({io})", server(options)),
        },
        sqlx::Error::Tls(t) => StoreError::Unreachable {
            location,
            reason: format!("TLS with {} failed: {t}", server(options)),
        },
        sqlx::Error::PoolTimedOut => StoreError::Unreachable {
            location,
            reason: format!(
                "no connection to {} within {}s",
                server(options),
                ACQUIRE_TIMEOUT.as_secs()
            ),
        },
        sqlx::Error::Database(d) if is_connection_error(&e) => StoreError::Unreachable {
            location,
            reason: d.message().to_string(),
        },
        sqlx::Error::Database(d) => StoreError::Refused {
            location,
            reason: d.message().to_string(),
        },
        _ => StoreError::Open {
            location,
            source: e,
        },
    }
}

/// The password of `url`, if it has one.
fn password(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    let pw = &userinfo[userinfo.find(':')? + 1..];
    (!pw.is_empty()).then_some(pw)
}

/// Makes sure a connection error does not repeat the URL's password.
fn scrub(err: sqlx::Error, url: &str) -> sqlx::Error {
    let text = err.to_string();
    let leaks = password(url).is_some_and(|pw| text.contains(pw)) || text.contains(url);
    if leaks {
        let mut clean = rewind_core::redact::redact_url_passwords(&text);
        if let Some(pw) = password(url) {
            clean = clean.replace(pw, rewind_core::redact::MASK);
        }
        sqlx::Error::Configuration(clean.into())
    } else {
        err
    }
}

impl_store!(PostgresStore, sqlx::Postgres);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_password() {
        assert_eq!(password("postgres://u:s3cret@h:5432/db"), Some("s3cret"));
        assert_eq!(password("postgres://u@h/db"), None);
        assert_eq!(password("postgres://h/db?user=x"), None);
    }

    #[test]
    fn scrubs_a_leaking_error() {
        let url = "postgres://u:s3cret@h:5432/db";
        let err = sqlx::Error::Configuration(format!("bad url {url} (s3cret)").into());
        let text = scrub(err, url).to_string();
        assert!(!text.contains("s3cret"), "{text}");
    }
}
