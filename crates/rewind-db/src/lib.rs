//! Database migrations in the formats teams already use.
//!
//! - [`migrations`] reads a migrations directory in one tool's own layout (sqlx, diesel,
//!   golang-migrate, Flyway, refinery, sqitch) into [`Migration`]s in apply order, and
//!   computes the checksum each tool stores.
//! - [`history`] reads and writes that tool's own history table (or sqitch's registry), so
//!   the team's tool agrees with what rewind did.
//! - [`drift`] compares the checksums a history stored with the files now, CRLF and LF
//!   alike, and reports changed and missing migrations.
//! - [`runner`] applies and reverts migrations, each batch in one transaction, on SQLite
//!   and PostgreSQL through sqlx's `Any` driver.
//! - [`sql`] reads migration SQL the way the engine will (one lexer for splitting, finding
//!   transaction control, and classifying a migration by effect).
//!
//! Connect with [`connect`] (it installs the `Any` drivers); a SQLite URL gets
//! `mode=rwc` so the file is created when missing.

use std::path::PathBuf;

pub mod drift;
pub mod history;
pub mod migrations;
pub mod runner;
pub mod sets;
pub mod sql;

pub use drift::{Drift, DriftKind, DriftReport, Unchecked, drift};
pub use migrations::{Format, Migration, SqitchChange, SqitchTag};
pub use runner::{
    AloneOutcome, Partial, Phase, RunMode, applied, apply, apply_alone, apply_batch, revert,
    revert_alone, revert_batch, run_mode,
};
pub use sets::{DeployPlan, NO_LEVEL, RevertPlan, State};

/// Everything that can go wrong, naming the file or migration concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", file.display())]
    BadFile { file: PathBuf, reason: String },
    #[error("cannot tell the migration format of {}: {reason}", dir.display())]
    Detect { dir: PathBuf, reason: String },
    #[error("no down script for V{version} ({name}, {})", file.display())]
    NoDown {
        version: String,
        name: String,
        file: PathBuf,
    },
    #[error("unknown version {0}: it is not in the migrations directory")]
    UnknownVersion(String),
    #[error(
        "migration V{version} ({name}, {}{}) failed{}: {}",
        file.display(),
        line.map(|l| format!(":{l}")).unwrap_or_default(),
        if *down { " to revert" } else { "" },
        runner::db_error_text(source)
    )]
    Migration {
        version: String,
        name: String,
        file: PathBuf,
        /// The line of the file where the failing statement (or the error in it) is.
        line: Option<usize>,
        down: bool,
        source: Box<sqlx::Error>,
    },
    #[error("migration V{version} ({name}, {}:{line}) cannot run as its tool would: {reason}", file.display())]
    NotTransactional {
        version: String,
        name: String,
        file: PathBuf,
        line: usize,
        reason: String,
    },
    #[error(
        "{what} would lose data, so it was rolled back: {}; {deletes} (if it means to, accept the loss: rewind deploy/rollback --accept-row-loss)",
        problems.join("; ")
    )]
    DataGuard {
        what: String,
        problems: Vec<String>,
        deletes: String,
    },
    #[error(
        "sqitch's verify of {name} failed ({}:{line}): {message}; the change is taken back, as sqitch does",
        file.display()
    )]
    Verify {
        name: String,
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{source}\n(it runs outside a transaction: {units_done} of its {units} units stay committed; running it again goes on from there)"
    )]
    Partial {
        source: Box<Error>,
        units_done: usize,
        units: usize,
    },
    #[error("{doing}: {}", runner::db_error_text(source))]
    Query { doing: String, source: sqlx::Error },
    #[error("history table {table}: {detail}")]
    History { table: String, detail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn query_err(doing: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
    let doing = doing.into();
    move |source| Error::Query { doing, source }
}

/// Connects to `url` (`sqlite://…` or `postgres://…`) through sqlx's `Any` driver.
/// A SQLite database file is created when missing.
pub async fn connect(url: &str) -> Result<sqlx::AnyPool> {
    sqlx::any::install_default_drivers();
    let url = if url.starts_with("sqlite:") && !url.contains("mode=") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}mode=rwc")
    } else {
        url.to_string()
    };
    let doing = format!("connecting to {}", url.split('@').next_back().unwrap_or(""));
    // One connection first, so a refused connection or a wrong password is reported as
    // such at once, instead of as a pool timeout.
    use sqlx::Connection;
    let first = sqlx::AnyConnection::connect(&url)
        .await
        .map_err(query_err(doing.clone()))?;
    let _ = first.close().await;
    sqlx::any::AnyPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(&url)
        .await
        .map_err(query_err(doing))
}
