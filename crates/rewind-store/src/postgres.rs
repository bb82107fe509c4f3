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

/// The state store in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// The URL with its password masked.
    location: String,
}

impl PostgresStore {
    /// Connects to `url` and migrates the database. Errors never show the password.
    pub async fn connect(url: &str) -> Result<Self> {
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
        // One connection first, so a wrong address or password fails at once instead of
        // after the pool's acquire timeout.
        PgConnection::connect_with(&options)
            .await
            .map_err(open_err)?
            .close()
            .await
            .map_err(open_err)?;
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(open_err)?;
        let migrator = Migrator::new(common::POSTGRES_MIGRATIONS)
            .await
            .map_err(|source| StoreError::Migrate {
                location: location.clone(),
                source,
            })?;
        migrator
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                location: location.clone(),
                source,
            })?;
        Ok(PostgresStore { pool, location })
    }

    async fn begin_write(&self, doing: &str) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.pool.begin().await.map_err(common::query_err(doing))
    }

    /// Holds the environment's advisory lock until the transaction ends. Taking it again in
    /// the same transaction is harmless.
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
