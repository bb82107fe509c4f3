//! The ledger's vocabulary: releases and their states, runs and their steps, journal
//! entries, locks and restore points. These types are stored by `rewind-store`, produced by the
//! planner and executed by the binary, so they are plain serde data.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::ComponentConfig;

/// Timestamps are stored as RFC 3339 text in UTC with microseconds, the same on every
/// backend, so that what was hashed into the audit chain reads back byte for byte.
pub fn now_rfc3339() -> String {
    format_ts(jiff::Timestamp::now())
}

/// Formats a timestamp the way every stored time is written.
pub fn format_ts(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Parses a stored timestamp back.
pub fn parse_ts(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $( #[serde(rename = $text)] $variant ),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownValue { what: stringify!($name), value: other.to_string() }),
                }
            }
        }
    };
}

/// A stored text that does not name a known variant (a newer binary wrote it, or the
/// database was edited by hand).
#[derive(Debug, thiserror::Error)]
#[error("unknown {what} `{value}` in the state store")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
}

string_enum!(
    /// Where a release stands in the ledger. A faulty release is never deleted: it stays
    /// `failed` or `rolled-back` for the audit trail.
    ReleaseState {
        Deploying => "deploying",
        Watching => "watching",
        Good => "good",
        Failed => "failed",
        RolledBack => "rolled-back",
    }
);

string_enum!(
    /// What a run does.
    RunKind {
        Deploy => "deploy",
        Rollback => "rollback",
        Restore => "restore",
    }
);

string_enum!(
    /// Where a run stands. `running` and `interrupted` are unfinished: `rewind resume` (or
    /// the next `rollback`) finishes them.
    RunStatus {
        Running => "running",
        Interrupted => "interrupted",
        Succeeded => "succeeded",
        Failed => "failed",
        Abandoned => "abandoned",
    }
);

impl RunStatus {
    pub fn is_unfinished(self) -> bool {
        matches!(self, RunStatus::Running | RunStatus::Interrupted)
    }
}

string_enum!(
    /// One line of a run's write-ahead journal.
    JournalEvent {
        Begin => "begin",
        Done => "done",
        Skipped => "skipped",
        Failed => "failed",
        Note => "note",
    }
);

/// One release in the ledger: the set of component versions deployed together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub environment: String,
    pub name: String,
    pub state: ReleaseState,
    /// Order of first deployment within the environment (1, 2, 3 …).
    pub seq: i64,
    /// Component name → version that this release deploys.
    pub components: BTreeMap<String, String>,
    /// Database component name → the migrations applied once this release is deployed (their
    /// keys: versions, for sqitch change ids, in the tool's order): what a rollback to this
    /// release returns the database to. Empty for releases recorded before sets were kept.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub migrations: BTreeMap<String, Vec<String>>,
    pub created_at: String,
    pub updated_at: String,
    /// `user@host` that recorded it.
    pub actor: String,
    /// The run that deployed it.
    pub run_id: Option<String>,
}

/// A release about to be recorded (state `deploying`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRelease {
    pub name: String,
    pub components: BTreeMap<String, String>,
    /// See [`Release::migrations`].
    #[serde(default)]
    pub migrations: BTreeMap<String, Vec<String>>,
}

/// What one step changes in the ledger, applied in the same transaction as the step's
/// `done` journal line, so the ledger never runs ahead of or behind the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "kebab-case")]
pub enum LedgerEffect {
    /// Set a release's state.
    ReleaseState {
        release: String,
        state: ReleaseState,
    },
    /// Record that a component now runs `version` (a release name).
    Deployed { component: String, version: String },
    /// Record the environment's current release.
    Current { release: String },
    /// Store a restore point for a component.
    RestorePoint {
        component: String,
        /// e.g. `release-dir`, `command`.
        kind: String,
        /// The version the component ran when the point was taken (if known).
        version: Option<String>,
        data: serde_json::Value,
    },
}

/// One step of a plan. Each step is self-contained: `action` says what to do, `effects`
/// what to record when it is done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Stable identifier within the run, e.g. `web.switch`.
    pub id: String,
    /// What a person reads in `plan` and in the journal.
    pub title: String,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub effects: Vec<LedgerEffect>,
    /// Run even when an earlier step failed (undoing a write freeze): after a failure the
    /// executor still runs every later `always` step before it reports the failure.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub always: bool,
}

/// Which user command of a `command` component to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandHook {
    Deploy,
    Rollback,
}

/// What a step does. Component actions name the component; the component's configuration
/// is frozen into the run (`Run::components`), so a resumed run does exactly what was planned
/// even if the config file changed in between.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Action {
    /// Record what the component runs now, before anything changes. For a database,
    /// `backup` (the reason) asks for a full backup in the restore point.
    RestorePoint {
        component: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backup: Option<String>,
    },
    /// Apply database migrations from `release`'s migrations directory: those named in
    /// `versions` (by their key: the version, for sqitch the change id), in that order, in
    /// one transaction — or, with `alone`, the one migration its tool runs outside a
    /// transaction, by itself. `to` is the level afterwards. A run recorded before
    /// `versions` existed has none: then every pending migration up to `to`.
    Migrate {
        component: String,
        release: String,
        to: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        versions: Vec<String>,
        /// Why the migration runs alone (its tool's marker, its own BEGIN/COMMIT …).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alone: Option<String>,
        /// Rows lost that no migration is classified to delete are reported, not refused
        /// (`--accept-row-loss`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        accept_row_loss: bool,
    },
    /// Revert database migrations with their down scripts (read from `release`'s migrations
    /// directory, the release being left): those named in `versions`, in that order (newest
    /// applied first), in one transaction — or, with `alone`, one by itself. `to` is the level
    /// afterwards. Without `versions` (older runs): every applied migration newer than `to`.
    Revert {
        component: String,
        release: String,
        to: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        versions: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alone: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        accept_row_loss: bool,
    },
    /// Record, in the tool's history, the checksums the migration files have now for the
    /// applied migrations `versions` whose files were edited after they were applied, as the
    /// tool's own repair does (`flyway repair`; for sqlx, refinery and sqitch the same update
    /// of the stored checksum). Only on `--accept-drift`.
    AcceptDrift {
        component: String,
        release: String,
        versions: Vec<String>,
    },
    /// Stop writes to a database (read-only or the user's freeze command).
    Freeze { component: String },
    /// Undo [`Action::Freeze`].
    Unfreeze { component: String },
    /// Put a database back from a backup or to a point in time.
    Restore {
        component: String,
        source: RestoreSource,
    },
    /// Data-integrity checks: row counts against a baseline, foreign-key orphans, the
    /// component's SQL assertions.
    DataCheck {
        component: String,
        baseline: CountBaseline,
    },
    /// Copy an artifact (directory or .tar.gz) into `<root>/releases/<release>/`.
    Stage {
        component: String,
        release: String,
        artifact: Option<String>,
    },
    /// Point `<root>/current` at `releases/<release>` (new symlink + rename).
    Switch { component: String, release: String },
    /// Run the component's restart command.
    Restart { component: String },
    /// Wait until the ready URL answers 2xx or the ready command exits 0.
    WaitReady { component: String },
    /// Run a `command` component's deploy or rollback command.
    RunCommand {
        component: String,
        hook: CommandHook,
        release: String,
    },
    /// Remove old release directories beyond `keep`, never the protected ones. Only
    /// releases in `known` (the ledger's releases when the run was planned, oldest first) are
    /// counted and removed.
    Prune {
        component: String,
        protect: Vec<String>,
        known: Vec<String>,
    },
    /// Only ledger effects.
    Record,
}

/// Where a database restore comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "kebab-case")]
pub enum RestoreSource {
    /// A backup file rewind made (its metadata as recorded when it was made).
    Backup {
        path: String,
        kind: String,
        checksum: String,
        bytes: u64,
        created_at: String,
        /// The migration level the database had when the backup was taken.
        level: String,
    },
    /// pgBackRest point-in-time recovery to `time` (RFC 3339, UTC).
    PointInTime { time: String },
}

/// What row counts are compared with after a database rollback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "counts", rename_all = "kebab-case")]
pub enum CountBaseline {
    /// No comparison (a point-in-time restore: the counts at that time are not known).
    None,
    /// The counts in the restore point this run took of the component. Tables in `may_lose`
    /// (the down scripts delete from or drop them; `*`: any, `--accept-row-loss`) may hold
    /// fewer rows afterwards.
    RestorePoint {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        may_lose: Vec<String>,
    },
    /// Counts known when the plan was made (a backup's).
    Known {
        tables: BTreeMap<String, i64>,
        /// The backup's catalog description (sorted lines), compared with the restored
        /// database's; empty when the backup recorded none (taken by an older rewind).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        catalog: Vec<String>,
    },
}

impl Action {
    pub fn component(&self) -> Option<&str> {
        match self {
            Action::Migrate { component, .. }
            | Action::Revert { component, .. }
            | Action::AcceptDrift { component, .. }
            | Action::Freeze { component }
            | Action::Unfreeze { component }
            | Action::Restore { component, .. }
            | Action::DataCheck { component, .. } => Some(component),
            Action::RestorePoint { component, .. }
            | Action::Stage { component, .. }
            | Action::Switch { component, .. }
            | Action::Restart { component }
            | Action::WaitReady { component }
            | Action::RunCommand { component, .. }
            | Action::Prune { component, .. } => Some(component),
            Action::Record => None,
        }
    }
}

/// A run about to be recorded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewRun {
    pub id: String,
    pub environment: String,
    pub kind: RunKind,
    /// The release the run moves to.
    pub release: String,
    /// The release that was current when the run was planned.
    pub from_release: Option<String>,
    pub actor: String,
    pub steps: Vec<Step>,
    /// Frozen configuration of every component the steps touch, in config order.
    pub components: Vec<(String, ComponentConfig)>,
}

/// One execution of a plan.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub environment: String,
    pub kind: RunKind,
    pub release: String,
    pub from_release: Option<String>,
    pub status: RunStatus,
    pub actor: String,
    pub steps: Vec<Step>,
    pub components: Vec<(String, ComponentConfig)>,
    pub created_at: String,
    pub updated_at: String,
    pub error: Option<String>,
}

/// One line of a run's journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub run_id: String,
    /// Position in the journal (1, 2, 3 …).
    pub seq: i64,
    /// Index of the step in `Run::steps`, if the line is about a step.
    pub step: Option<i64>,
    pub step_id: Option<String>,
    pub event: JournalEvent,
    pub at: String,
    /// Captured output or a message, already redacted.
    pub message: String,
}

/// Who holds an environment's run lock: one process (`token`), working on `run_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub environment: String,
    /// The run the holder works on (shown to people; it does not make the lock theirs).
    pub run_id: String,
    pub pid: u32,
    pub host: String,
    pub actor: String,
    pub since: String,
    pub heartbeat: String,
    /// Drawn at random by the process that took the lock (32 hex digits); heartbeat, release
    /// and take-over name it. Not shown in output: it identifies, it does not describe.
    #[serde(default, skip_serializing)]
    pub token: String,
}

/// A stored restore point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePoint {
    pub id: i64,
    pub environment: String,
    pub run_id: String,
    pub component: String,
    pub kind: String,
    pub version: Option<String>,
    pub data: serde_json::Value,
    pub created_at: String,
}

/// An audit entry before it is chained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAudit {
    pub actor: String,
    pub action: String,
    pub release: Option<String>,
    pub run_id: Option<String>,
    pub details: serde_json::Value,
}

impl NewAudit {
    pub fn new(actor: &str, action: &str) -> Self {
        NewAudit {
            actor: actor.to_string(),
            action: action.to_string(),
            release: None,
            run_id: None,
            details: serde_json::Value::Object(Default::default()),
        }
    }
    pub fn release(mut self, release: impl Into<String>) -> Self {
        self.release = Some(release.into());
        self
    }
    pub fn run(mut self, run_id: impl Into<String>) -> Self {
        self.run_id = Some(run_id.into());
        self
    }
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// A chained audit entry, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub environment: String,
    /// Position in the environment's chain (1, 2, 3 …).
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub release: Option<String>,
    pub run_id: Option<String>,
    pub details: serde_json::Value,
    /// Hash of the previous entry (64 zeros for the first).
    pub prev_hash: String,
    /// BLAKE3 of `prev_hash` and this entry's canonical JSON.
    pub hash: String,
}

string_enum!(
    /// Where an incident stands.
    IncidentStatus {
        Open => "open",
        RolledBack => "rolled-back",
        Alerted => "alerted",
        Escalated => "escalated",
    }
);

/// An incident: opened by a trigger (or a person), with its evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub environment: String,
    pub release: String,
    /// Which trigger fired (e.g. `errors`, `latency`, `not-ready`, `check`).
    pub trigger: String,
    /// The signal that fed it.
    pub signal: Option<String>,
    /// One line a person reads first.
    pub summary: String,
    /// Counts, rates, bounds, α, elapsed time …
    pub evidence: serde_json::Value,
    pub status: IncidentStatus,
    /// The rollback run it started, if any.
    pub rollback_run: Option<String>,
    pub opened_at: String,
    pub updated_at: String,
}

/// A monitoring window, recorded so that `rewind watch` can attach to it (or take it over
/// from a watcher that died).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Watch {
    pub environment: String,
    pub release: String,
    pub started_at: String,
    pub window_secs: f64,
    /// What the signals measured before the switch (per signal).
    pub baseline: serde_json::Value,
    /// `watching`, `passed`, `fired`, `stopped`.
    pub status: String,
}
