//! The state store: one trait, two backends. SQLite is the default (embedded, nothing to
//! install, `.rewind/state.db` beside the config file); PostgreSQL is used when the config says
//! `state = "postgres://…"`. Each backend embeds its own schema migrations. Both behave the
//! same, which `tests/story.rs` proves by running one story against each.
//!
//! Everything that must change together changes in one transaction: a step's `done` line,
//! its ledger effects and its audit entry; a run, its plan, its new release and its audit entry.

use std::collections::BTreeMap;

use async_trait::async_trait;
use rewind_core::{
    AuditEntry, Incident, IncidentStatus, JournalEntry, JournalEvent, LedgerEffect, LockHolder,
    NewAudit, NewRelease, NewRun, Release, RestorePoint, Run, RunStatus, Watch,
};

mod common;
mod postgres;
mod redacted;
mod sqlite;

pub use postgres::PostgresStore;
pub use redacted::Redacted;
pub use sqlite::SqliteStore;

/// What went wrong in the store. Every variant names what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Could not open or migrate the store. `location` never holds a password.
    #[error("cannot open the state store at {location}: {source}")]
    Open {
        location: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot migrate the state store at {location}: {source}")]
    Migrate {
        location: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("state store query failed while {doing}: {source}")]
    Query {
        doing: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("state store holds data this version cannot read ({what}): {detail}")]
    Corrupt { what: String, detail: String },
    #[error(
        "release `{release}` is already recorded in environment `{environment}` (state {state})"
    )]
    ReleaseExists {
        environment: String,
        release: String,
        state: String,
    },
    #[error("release `{release}` is not recorded in environment `{environment}`")]
    NoSuchRelease {
        environment: String,
        release: String,
    },
    #[error("run `{0}` is not recorded")]
    NoSuchRun(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Opens the store a configuration names: an SQLite file or a PostgreSQL database.
/// `sync` applies to SQLite (PostgreSQL's own `synchronous_commit` is the server's business).
pub async fn open(
    location: &rewind_core::config::StateLocation,
    sync: rewind_core::config::StateSync,
) -> Result<Box<dyn Store>> {
    use rewind_core::config::StateLocation;
    Ok(match location {
        StateLocation::Sqlite(path) => Box::new(SqliteStore::open_with(path, sync).await?),
        StateLocation::Postgres(url) => Box::new(PostgresStore::connect(url).await?),
    })
}

/// Outcome of trying to take an environment's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockAttempt {
    /// The lock is ours now.
    Acquired,
    /// Somebody holds it; this is who.
    Held(LockHolder),
}

/// The state store. All methods are scoped to one environment name, so one PostgreSQL
/// database can hold many environments.
#[async_trait]
pub trait Store: Send + Sync {
    /// A printable location, password masked.
    fn location(&self) -> String;

    // ---- releases and the ledger ------------------------------------------------------

    /// The environment's current release, if any deploy has completed a switch.
    async fn current_release(&self, env: &str) -> Result<Option<String>>;

    /// Component name → version (release name) that each component runs now, as recorded.
    async fn deployed(&self, env: &str) -> Result<BTreeMap<String, String>>;

    async fn release(&self, env: &str, name: &str) -> Result<Option<Release>>;

    /// Every release, oldest first (by `seq`).
    async fn releases(&self, env: &str) -> Result<Vec<Release>>;

    // ---- runs ---------------------------------------------------------------------

    /// Records a run with its whole plan, and (for a deploy) its new release in state
    /// `deploying`, and the audit entry — in one transaction. Fails with
    /// `ReleaseExists` if `release` names an existing release.
    async fn create_run(
        &self,
        run: &NewRun,
        release: Option<&NewRelease>,
        audit: NewAudit,
    ) -> Result<Run>;

    async fn run(&self, id: &str) -> Result<Option<Run>>;

    /// The environment's unfinished run (status running or interrupted), newest first if
    /// there were ever more than one.
    async fn unfinished_run(&self, env: &str) -> Result<Option<Run>>;

    /// Most recent runs first.
    async fn runs(&self, env: &str, limit: i64) -> Result<Vec<Run>>;

    /// Sets a run's status (and error text), applies `effects`, and appends `audit` — in one
    /// transaction.
    async fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        error: Option<&str>,
        effects: &[LedgerEffect],
        audit: NewAudit,
    ) -> Result<()>;

    // ---- journal --------------------------------------------------------------------

    /// Appends one journal line that changes nothing else (`begin`, `note`).
    async fn journal_append(
        &self,
        run_id: &str,
        step: Option<(i64, &str)>,
        event: JournalEvent,
        message: &str,
    ) -> Result<()>;

    /// Appends several `note` lines of one step in one transaction (progress lines come in
    /// bursts: one commit and one fsync for a burst, not one each).
    async fn journal_notes(
        &self,
        run_id: &str,
        step: (i64, &str),
        messages: &[String],
    ) -> Result<()>;

    /// Appends a step's closing line (`done`, `skipped`, `failed`), applies `effects` (only
    /// for done/skipped), appends `audit`, and — when `next` is given — the `begin` line of the
    /// next step, all in one transaction (one commit, one fsync, instead of two).
    #[allow(clippy::too_many_arguments)]
    async fn journal_finish(
        &self,
        run_id: &str,
        step: (i64, &str),
        event: JournalEvent,
        message: &str,
        effects: &[LedgerEffect],
        audit: NewAudit,
        next: Option<(i64, &str, &str)>,
    ) -> Result<()>;

    /// A run's journal, in order.
    async fn journal(&self, run_id: &str) -> Result<Vec<JournalEntry>>;

    // ---- restore points ---------------------------------------------------------------

    /// Restore points, newest first; `run_id` narrows them to one run.
    async fn restore_points(&self, env: &str, run_id: Option<&str>) -> Result<Vec<RestorePoint>>;

    // ---- locks ------------------------------------------------------------------------

    /// Takes the lock if nobody holds it. A held lock is never re-taken here, not even by a
    /// holder naming the same run: the lock belongs to a holder (`LockHolder::token`, one per
    /// process), and only [`Store::take_over_lock`] replaces one.
    async fn try_lock(&self, holder: &LockHolder) -> Result<LockAttempt>;

    /// Takes the lock over from `stale`, only if `stale` still holds it unchanged (same token
    /// and heartbeat). Returns false if somebody else changed it meanwhile.
    async fn take_over_lock(&self, holder: &LockHolder, stale: &LockHolder) -> Result<bool>;

    /// Refreshes the heartbeat of the holder with `token`. Returns false if the lock is no
    /// longer that holder's.
    async fn heartbeat(&self, env: &str, token: &str) -> Result<bool>;

    /// Releases the lock if the holder with `token` holds it.
    async fn unlock(&self, env: &str, token: &str) -> Result<()>;

    async fn lock_holder(&self, env: &str) -> Result<Option<LockHolder>>;

    // ---- audit ------------------------------------------------------------------------

    /// Appends one entry to the environment's chain.
    async fn audit_append(&self, env: &str, entry: NewAudit) -> Result<AuditEntry>;

    /// The whole chain, in order.
    async fn audit_entries(&self, env: &str) -> Result<Vec<AuditEntry>>;

    /// Applies ledger effects outside any run (e.g. a monitoring window that closes
    /// cleanly marks its release good) and appends `audit`, in one transaction.
    async fn record(&self, env: &str, effects: &[LedgerEffect], audit: NewAudit) -> Result<()>;

    // ---- monitoring windows and incidents -------------------------------------------

    /// Records a monitoring window (replacing an earlier one for the same release), applies
    /// `effects` and appends `audit`, in one transaction.
    async fn begin_watch(
        &self,
        watch: &Watch,
        effects: &[LedgerEffect],
        audit: NewAudit,
    ) -> Result<()>;

    /// Sets a window's status (`passed`, `fired`, `stopped`), applies `effects`, appends `audit`.
    async fn end_watch(
        &self,
        env: &str,
        release: &str,
        status: &str,
        effects: &[LedgerEffect],
        audit: NewAudit,
    ) -> Result<()>;

    /// The window still being watched, if any.
    async fn active_watch(&self, env: &str) -> Result<Option<Watch>>;

    async fn open_incident(&self, incident: &Incident, audit: NewAudit) -> Result<()>;

    async fn update_incident(
        &self,
        id: &str,
        status: IncidentStatus,
        rollback_run: Option<&str>,
        audit: NewAudit,
    ) -> Result<()>;

    /// Newest first.
    async fn incidents(&self, env: &str) -> Result<Vec<Incident>>;

    /// The newest entry's position and hash, as recorded apart from the chain (so that
    /// removing the newest entries is detected).
    async fn audit_head(&self, env: &str) -> Result<Option<(i64, String)>>;
}
