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

/// What went wrong in the store. Every variant names what it was doing, or where.
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
    /// The PostgreSQL server does not answer (refused, unresolvable, timed out, gone).
    #[error("the PostgreSQL state server at {location} is unreachable: {reason}")]
    Unreachable { location: String, reason: String },
    /// The PostgreSQL server answers but refuses the connection (login, database).
    #[error("the PostgreSQL state server at {location} refused the connection: {reason}")]
    Refused { location: String, reason: String },
    /// The file is not a state store rewind can use: not SQLite, damaged, or another
    /// program's database. rewind leaves such a file as it is.
    #[error("{location} is not a usable rewind state store: {reason}")]
    NotAStore { location: String, reason: String },
    /// A newer rewind wrote the store: this one does not know its schema.
    #[error(
        "the state store at {location} was written by a newer rewind (schema version {found}; this rewind knows up to {known})"
    )]
    Newer {
        location: String,
        found: i64,
        known: i64,
    },
    /// The command must write, and the store (or its directory) cannot be written.
    #[error("the state store at {location} is read-only: {reason}")]
    ReadOnly { location: String, reason: String },
    #[error("state store query failed while {doing}: {source}")]
    Query {
        doing: String,
        #[source]
        source: sqlx::Error,
    },
    /// One stored row cannot be read (not UTF-8, not JSON, not the type it should be).
    #[error("the state store holds an entry rewind cannot read: {0}")]
    Unreadable(Unreadable),
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
    /// A write of a run was refused: the lock of the run's environment no longer carries the
    /// writer's token (a holder judged stale was taken over). Nothing of the write was stored.
    #[error("{}", lost_lock(.environment, .holder.as_deref()))]
    LockLost {
        environment: String,
        /// Who holds the lock now, if anybody.
        holder: Option<Box<LockHolder>>,
    },
}

fn lost_lock(env: &str, holder: Option<&LockHolder>) -> String {
    match holder {
        Some(h) => format!(
            "lost the lock of `{env}` to run {} ({}, pid {} on {}, since {}); this process stops and changes nothing more",
            h.run_id, h.actor, h.pid, h.host, h.since
        ),
        None => format!(
            "lost the lock of `{env}`: another holder took it over (and has released it since); this process stops and changes nothing more"
        ),
    }
}

/// The proof that a write of a run comes from the holder of its environment's lock: the
/// holder's token. Every write of a run checks, in the same transaction, that the lock row
/// still carries this token (fencing), so a holder that was frozen, judged stale and taken
/// over cannot write after its successor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub environment: String,
    pub token: String,
}

impl StoreError {
    /// The driver error underneath, if any.
    pub fn sqlx(&self) -> Option<&sqlx::Error> {
        match self {
            StoreError::Open { source, .. } | StoreError::Query { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A stored row that could not be read, named so that a person can find it: which entry
/// (table and key), which column, and what is wrong with the value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error("{entry}: column `{column}` {problem}")]
pub struct Unreadable {
    /// The entry, in words: "audit entry #5 of prod", "run 20261121T…-ab12cd".
    pub entry: String,
    pub column: String,
    pub problem: String,
    /// The entry's position where it has one (audit entries, journal lines, releases).
    pub seq: Option<i64>,
}

/// A row as read: the value, or why it cannot be read.
pub type Readable<T> = std::result::Result<T, Unreadable>;

/// What the store holds for one environment, read in one statement (one snapshot): enough
/// to tell an empty store from a used one, and a chain whose newest entries were removed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Footprint {
    /// The store's identity: a random id the store was given when it was created.
    pub store_id: String,
    /// The head recorded apart from the chain (`audit_head`).
    pub head: Option<(i64, String)>,
    /// The chain's newest entry.
    pub last: Option<(i64, String)>,
    pub audit_entries: i64,
    pub releases: i64,
    pub runs: i64,
}

impl Footprint {
    /// Nothing at all is recorded for the environment.
    pub fn is_empty(&self) -> bool {
        self.head.is_none() && self.last.is_none() && self.releases == 0 && self.runs == 0
    }
}

/// Whether a command may write to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only reads: nothing is created, migrated or written (SQLite opens the file
    /// read-only; a store that does not exist yet reads as empty).
    Read,
    /// Creates and migrates the store as needed, and writes.
    Write,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Opens the store a configuration names: an SQLite file or a PostgreSQL database, for
/// writing. `sync` applies to SQLite (PostgreSQL's own `synchronous_commit` is the server's
/// business).
pub async fn open(
    location: &rewind_core::config::StateLocation,
    sync: rewind_core::config::StateSync,
) -> Result<Box<dyn Store>> {
    open_for(location, sync, Access::Write).await
}

/// [`open`], for reading only or for writing.
pub async fn open_for(
    location: &rewind_core::config::StateLocation,
    sync: rewind_core::config::StateSync,
    access: Access,
) -> Result<Box<dyn Store>> {
    use rewind_core::config::StateLocation;
    Ok(match location {
        StateLocation::Sqlite(path) => Box::new(match access {
            Access::Write => SqliteStore::open_with(path, sync).await?,
            Access::Read => SqliteStore::open_read_only(path).await?,
        }),
        StateLocation::Postgres(url) => match access {
            Access::Write => Box::new(PostgresStore::connect(url).await?),
            // A database with no rewind schema yet is read as an empty store and left as it
            // is (a reading command creates nothing, as on SQLite).
            Access::Read => match PostgresStore::connect_to_read(url).await? {
                Some(store) => Box::new(store),
                None => Box::new(
                    SqliteStore::empty_stand_in(rewind_core::redact::redact_url_passwords(url))
                        .await?,
                ),
            },
        },
    })
}

/// Whether an SQLite store would be created by opening it for writing (no file, or an empty
/// one). PostgreSQL stores are never "new" here: their database must exist.
pub fn is_new(location: &rewind_core::config::StateLocation) -> bool {
    match location {
        rewind_core::config::StateLocation::Sqlite(path) => sqlite::is_new_file(path),
        rewind_core::config::StateLocation::Postgres(_) => false,
    }
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

    /// Every release, oldest first (by `seq`). Fails on the first unreadable row, naming it.
    async fn releases(&self, env: &str) -> Result<Vec<Release>> {
        strict(self.read_releases(env).await?)
    }

    /// Every release, oldest first, each readable or not: one damaged row does not hide
    /// the others.
    async fn read_releases(&self, env: &str) -> Result<Vec<Readable<Release>>>;

    // ---- runs ---------------------------------------------------------------------
    //
    // Every write of a run carries the [`Fence`] of the lock holder doing it, and fails with
    // `LockLost` (storing nothing) when the lock is no longer that holder's.

    /// Records a run with its whole plan, and (for a deploy) its new release in state
    /// `deploying`, and the audit entry — in one transaction. Fails with
    /// `ReleaseExists` if `release` names an existing release.
    async fn create_run(
        &self,
        fence: &Fence,
        run: &NewRun,
        release: Option<&NewRelease>,
        audit: NewAudit,
    ) -> Result<Run>;

    async fn run(&self, id: &str) -> Result<Option<Run>>;

    /// The environment's unfinished run (status running or interrupted), newest first if
    /// there were ever more than one.
    async fn unfinished_run(&self, env: &str) -> Result<Option<Run>>;

    /// Most recent runs first. Fails on the first unreadable row, naming it.
    async fn runs(&self, env: &str, limit: i64) -> Result<Vec<Run>> {
        strict(self.read_runs(env, limit).await?)
    }

    /// Most recent runs first, each readable or not.
    async fn read_runs(&self, env: &str, limit: i64) -> Result<Vec<Readable<Run>>>;

    /// Sets a run's status (and error text), applies `effects`, and appends `audit` — in one
    /// transaction.
    async fn finish_run(
        &self,
        fence: &Fence,
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
        fence: &Fence,
        run_id: &str,
        step: Option<(i64, &str)>,
        event: JournalEvent,
        message: &str,
    ) -> Result<()>;

    /// Appends several `note` lines of one step in one transaction (progress lines come in
    /// bursts: one commit and one fsync for a burst, not one each).
    async fn journal_notes(
        &self,
        fence: &Fence,
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
        fence: &Fence,
        run_id: &str,
        step: (i64, &str),
        event: JournalEvent,
        message: &str,
        effects: &[LedgerEffect],
        audit: NewAudit,
        next: Option<(i64, &str, &str)>,
    ) -> Result<()>;

    /// A run's journal, in order. Fails on the first unreadable line, naming it.
    async fn journal(&self, run_id: &str) -> Result<Vec<JournalEntry>> {
        strict(self.read_journal(run_id).await?)
    }

    /// A run's journal, in order, each line readable or not.
    async fn read_journal(&self, run_id: &str) -> Result<Vec<Readable<JournalEntry>>>;

    // ---- restore points ---------------------------------------------------------------

    /// Restore points, newest first; `run_id` narrows them to one run. Fails on the first
    /// unreadable row, naming it.
    async fn restore_points(&self, env: &str, run_id: Option<&str>) -> Result<Vec<RestorePoint>> {
        strict(self.read_restore_points(env, run_id).await?)
    }

    /// Restore points, newest first, each readable or not.
    async fn read_restore_points(
        &self,
        env: &str,
        run_id: Option<&str>,
    ) -> Result<Vec<Readable<RestorePoint>>>;

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

    /// The whole chain, in order. Fails on the first unreadable entry, naming it.
    async fn audit_entries(&self, env: &str) -> Result<Vec<AuditEntry>> {
        strict(self.read_audit(env).await?)
    }

    /// The whole chain, in order, each entry readable or not.
    async fn read_audit(&self, env: &str) -> Result<Vec<Readable<AuditEntry>>>;

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

    /// Newest first. Fails on the first unreadable row, naming it.
    async fn incidents(&self, env: &str) -> Result<Vec<Incident>> {
        strict(self.read_incidents(env).await?)
    }

    /// Newest first, each readable or not.
    async fn read_incidents(&self, env: &str) -> Result<Vec<Readable<Incident>>>;

    /// The newest entry's position and hash, as recorded apart from the chain (so that
    /// removing the newest entries is detected).
    async fn audit_head(&self, env: &str) -> Result<Option<(i64, String)>>;

    // ---- the store itself ---------------------------------------------------------------

    /// What the store holds for `env`, in one snapshot.
    async fn footprint(&self, env: &str) -> Result<Footprint>;

    /// The stored hash of the audit entry at `seq`, if there is one (text, as stored).
    async fn audit_hash_at(&self, env: &str, seq: i64) -> Result<Option<String>>;

    /// Says what an error of this store means where the driver's words do not: a
    /// PostgreSQL server that stopped answering (a fresh connection is tried, to give its
    /// reason), an SQLite file that is damaged or read-only. `None`: the error says it
    /// well enough.
    async fn explain(&self, err: &StoreError) -> Option<StoreError>;
}

/// The rows, or the first unreadable one as an error.
fn strict<T>(rows: Vec<Readable<T>>) -> Result<Vec<T>> {
    rows.into_iter()
        .map(|r| r.map_err(StoreError::Unreadable))
        .collect()
}
