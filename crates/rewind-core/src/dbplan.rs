//! Databases in the plan: what a deploy does to a `sqlite`/`postgres` component, and the
//! decision tree of a database rollback (seed 003), with the forward-only policy (seed 001).
//!
//! Pure, like the rest of the planner: the caller reads the migrations directory, the history
//! table, the backups and the data checks (the only I/O) into [`DbDeployFacts`] /
//! [`DbRollbackFacts`]; this module decides.
//!
//! The decision tree of a rollback, per database component:
//! 1. the level is already the target's and the data checks pass → the database is left alone
//!    (the application is rolled back alone);
//! 2. the level changed and the data is intact → revert the newer migrations with their down
//!    scripts — unless the policy is forward-only (refused: a fix-forward migration is needed),
//!    or a migration to revert is destructive or has no down script (reverting would lose
//!    data: a restore is proposed instead);
//! 3. the data is corrupted (a data check fails now, or the person says so with `--restore` /
//!    `--to-time`) → restore: to a point in time when one is given and pgBackRest is
//!    configured, else from the newest backup taken at the target's level, stating the window
//!    of writes that the restore discards;
//! 4. still failing after that (the verification after the run fails) → a person decides:
//!    the run fails with the evidence, and an incident is escalated.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{BackupPolicy, DatabaseConfig, DbPolicy, Freeze};
use crate::model::{Action, CountBaseline, LedgerEffect, RestoreSource, Step};

/// The level of a database on which no migration is applied.
pub const NO_LEVEL: &str = "none";

/// Whether a migration's down script can undo it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DownScript {
    Present,
    /// The format has none, or the file is missing.
    #[default]
    Missing,
    /// The file exists but holds only comments and whitespace.
    Empty,
}

/// One migration, classified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MigrationFacts {
    pub version: String,
    pub name: String,
    /// What identifies it in the tool's history (the version; sqitch: the change id).
    #[serde(default)]
    pub key: String,
    /// What its script does, one sentence per finding (`line 3: DELETE FROM sessions … loses
    /// data: …`); empty: it only adds.
    pub destructive: Vec<String>,
    /// Its effects in words, most severe first (`loses data`, `rewrites data`, `takes a long
    /// lock`, …); empty: it only adds.
    #[serde(default)]
    pub effects: Vec<String>,
    /// Some of it loses or rewrites data: only a backup brings the old data back.
    pub loses_data: bool,
    pub down: DownScript,
    /// Why its tool runs the script (up for a deploy, down for a revert) outside a
    /// transaction, by itself; `None`: in rewind's batch.
    #[serde(default)]
    pub alone: Option<String>,
    /// A deploy: it is older than the newest applied migration (merged out of order).
    #[serde(default)]
    pub out_of_order: bool,
    /// The level once it is applied (a deploy) or reverted (a rollback).
    #[serde(default)]
    pub level_after: String,
    /// What the tool would quietly do that a person should know.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// How a person recognises it (see [`MigrationFacts::label`]).
    #[serde(default)]
    pub display: String,
    /// A revert: the tables its down script deletes rows from or drops (they may hold fewer
    /// rows afterwards: the data checks expect it).
    #[serde(default)]
    pub down_removes: Vec<String>,
    /// Its transaction must be committed before the next migration runs (PostgreSQL does not
    /// let a value `ALTER TYPE … ADD VALUE` added be used in the same transaction, and the
    /// tools commit each migration): the batch ends with it.
    #[serde(default)]
    pub ends_batch: bool,
}

impl MigrationFacts {
    /// Reverting it cannot bring the data back: its up script destroyed or rewrote data, or
    /// nothing undoes it.
    pub fn revert_loses_data(&self) -> bool {
        self.loses_data || self.down != DownScript::Present
    }

    /// One line for a person: `V3 add_email — adds; down script present`.
    pub fn describe(&self) -> String {
        let what = if self.effects.is_empty() && self.destructive.is_empty() {
            "adds".to_string()
        } else if self.effects.is_empty() {
            format!("DESTRUCTIVE: {}", self.destructive.join("; "))
        } else {
            format!(
                "{}: {}",
                self.effects.join(", ").to_uppercase(),
                self.destructive.join("; ")
            )
        };
        let down = match self.down {
            DownScript::Present => "down script present",
            DownScript::Missing => "NO down script",
            DownScript::Empty => "down script EMPTY",
        };
        let mut line = format!("{} — {what}; {down}", self.label());
        if self.out_of_order {
            line.push_str("; OUT OF ORDER (older than the newest applied migration)");
        }
        if let Some(why) = &self.alone {
            line.push_str(&format!(
                "; runs alone, outside the batch's transaction: {why}"
            ));
        }
        line
    }
}

/// What the person accepted for a deploy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeployOptions {
    /// `--accept-drift`: record edited applied migrations' checksums first.
    pub accept_drift: bool,
    /// `--accept-row-loss`: rows lost that no migration is classified to delete are
    /// reported, not refused.
    pub accept_row_loss: bool,
}

/// What a deploy needs to know about one database component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DbDeployFacts {
    /// The migration tool's format (`sqlx` …).
    pub format: String,
    /// Applied now (from the history table).
    pub level_now: String,
    /// After the deploy: the newest applied migration then, in the tool's order.
    pub target_level: String,
    /// The migrations of this release the history lacks ("in this release but not
    /// applied"), in the order they are applied (the tool's).
    pub pending: Vec<MigrationFacts>,
    /// Applied migrations this release does not ship ("applied but not in this release").
    #[serde(default)]
    pub unknown: Vec<String>,
    /// Applied migrations whose file changed (or vanished) since: one line each.
    pub drift: Vec<String>,
    /// The keys of the applied migrations whose file was edited after they were applied
    /// (what `--accept-drift` re-records).
    #[serde(default)]
    pub drifted: Vec<String>,
    /// Why the deploy cannot run as planned, one line each: what the team's tool would
    /// refuse, drift, scripts it cannot run, a migration left half-done. Non-empty: the
    /// deploy is refused before anything runs.
    #[serde(default)]
    pub refusals: Vec<String>,
    /// What a person should know that does not stop the deploy.
    #[serde(default)]
    pub notes: Vec<String>,
    /// Every migration applied once the deploy is done (keys, in the tool's order): what the
    /// ledger records for the release.
    #[serde(default)]
    pub set_after: Vec<String>,
    /// The database holds nothing yet (no table, view, sequence or function of its own):
    /// there is nothing a backup could bring back.
    #[serde(default)]
    pub empty: bool,
}

impl DbDeployFacts {
    /// Why the restore point must include a full backup, if it must.
    pub fn backup_reason(&self, cfg: &DatabaseConfig) -> Option<String> {
        if self.empty {
            return None;
        }
        let risky: Vec<String> = self
            .pending
            .iter()
            .filter(|m| m.revert_loses_data())
            .map(|m| m.label())
            .collect();
        let alone: Vec<&str> = self
            .pending
            .iter()
            .filter(|m| m.alone.is_some())
            .map(|m| m.version.as_str())
            .collect();
        if !risky.is_empty() {
            Some(format!(
                "migration{} {} cannot be reverted without losing data",
                plural(risky.len()),
                risky.join(", ")
            ))
        } else if !alone.is_empty() {
            Some(format!(
                "{} run{} outside a transaction: a failure half-way cannot be rolled back",
                alone.join(", "),
                if alone.len() == 1 { "s" } else { "" }
            ))
        } else if cfg.backup == BackupPolicy::Always {
            Some("backup = \"always\"".into())
        } else {
            None
        }
    }
}

/// A backup that a rollback may restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFacts {
    /// Always [`RestoreSource::Backup`].
    pub source: RestoreSource,
    /// Rows per table when it was taken.
    pub row_counts: BTreeMap<String, i64>,
    /// When it was taken (RFC 3339).
    pub created_at: String,
    /// Its catalog description (sorted lines); empty when it recorded none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub catalog: Vec<String>,
}

/// What the person asked for.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum DbMode {
    /// Follow the decision tree.
    #[default]
    Auto,
    /// The data is corrupted: restore the newest backup at the target's level.
    Restore,
    /// Restore to this time (RFC 3339, UTC) through pgBackRest.
    PointInTime(String),
}

/// What a rollback needs to know about one database component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DbRollbackFacts {
    pub level_now: String,
    pub target_level: String,
    /// Applied migrations the target release does not ship, newest applied first.
    pub to_revert: Vec<MigrationFacts>,
    /// Applied migrations the target does not ship and that no release directory holds a
    /// script for: nothing can revert them.
    #[serde(default)]
    pub unrevertable: Vec<String>,
    /// Migrations the target ships that are not applied (a rollback does not apply them).
    #[serde(default)]
    pub not_applied: Vec<String>,
    /// Migrations that ran partly (killed or failed half-way outside a transaction), and
    /// INVALID indexes: the schema is in no release's state.
    #[serde(default)]
    pub partial: Vec<String>,
    /// Why a revert could not run as its tool would (a down script it cannot run).
    #[serde(default)]
    pub revert_refusals: Vec<String>,
    /// The person accepts rows lost that no migration to revert is classified to delete
    /// (`--accept-row-loss`).
    #[serde(default)]
    pub accept_row_loss: bool,
    /// Data checks failing now (one line each): the data is corrupted.
    pub failing_checks: Vec<String>,
    /// The newest backup taken at the target's level.
    pub backup: Option<BackupFacts>,
    /// pgBackRest's recoverable window (RFC 3339, UTC), when configured.
    pub pitr_window: Option<(String, String)>,
    /// Now (RFC 3339), for the window of lost writes.
    pub now: String,
}

/// The decision for one database component, with the reason a person reads in `plan`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
#[allow(clippy::large_enum_variant)] // a handful per plan
pub enum DbDecision {
    Unchanged {
        reason: String,
    },
    Revert {
        reason: String,
    },
    Restore {
        reason: String,
        source: RestoreSource,
        baseline: CountBaseline,
        /// The level the database has afterwards.
        level: String,
        /// Writes made after this time are discarded (kept in the pre-restore backup).
        loses_writes_since: String,
    },
}

impl DbDecision {
    pub fn reason(&self) -> &str {
        match self {
            DbDecision::Unchanged { reason }
            | DbDecision::Revert { reason }
            | DbDecision::Restore { reason, .. } => reason,
        }
    }
}

/// Why a database rollback cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbRefusal {
    #[error(
        "{component}: policy is forward-only, so the migrations after {target} ({versions}) are not reverted; write a fix-forward migration and deploy it, or restore the data with --restore (or --to-time)"
    )]
    ForwardOnly {
        component: String,
        target: String,
        versions: String,
    },
    #[error(
        "{component}: reverting to {target} would lose data ({why}), and no backup at level {target} exists to restore instead; restore to a point in time with --to-time, or take the loss knowingly with --revert-anyway"
    )]
    NoBackup {
        component: String,
        target: String,
        why: String,
    },
    #[error("{component}: --to-time needs [components.{component}.pitr] (pgBackRest)")]
    NoPitr { component: String },
    #[error(
        "{component}: {time} is outside pgBackRest's recoverable window {start} … {end}; choose a time inside it"
    )]
    OutsideWindow {
        component: String,
        time: String,
        start: String,
        end: String,
    },
    #[error("{component}: no backup at level {target} to restore; see `rewind backup list`")]
    NothingToRestore { component: String, target: String },
}

/// Walks the decision tree for one database component.
pub fn decide(
    component: &str,
    cfg: &DatabaseConfig,
    facts: &DbRollbackFacts,
    mode: &DbMode,
    revert_anyway: bool,
) -> Result<DbDecision, DbRefusal> {
    let restore_from_backup = |reason: String| match &facts.backup {
        Some(b) => Ok(DbDecision::Restore {
            reason,
            source: b.source.clone(),
            baseline: CountBaseline::Known {
                tables: b.row_counts.clone(),
                catalog: b.catalog.clone(),
            },
            level: match &b.source {
                RestoreSource::Backup { level, .. } => level.clone(),
                RestoreSource::PointInTime { .. } => facts.target_level.clone(),
            },
            loses_writes_since: b.created_at.clone(),
        }),
        None => Err(DbRefusal::NothingToRestore {
            component: component.into(),
            target: facts.target_level.clone(),
        }),
    };
    if let DbMode::PointInTime(time) = mode {
        let Some((start, end)) = &facts.pitr_window else {
            return Err(DbRefusal::NoPitr {
                component: component.into(),
            });
        };
        let inside = match (
            crate::parse_ts(time),
            crate::parse_ts(start),
            crate::parse_ts(end),
        ) {
            // The end is exclusive, as pgBackRest's window is (`Window::contains`): it is
            // the server's clock just before the newest archived commit, and a recovery
            // needs a commit after its target to stop at.
            (Some(t), Some(s), Some(e)) => s <= t && t < e,
            _ => false,
        };
        if !inside {
            return Err(DbRefusal::OutsideWindow {
                component: component.into(),
                time: time.clone(),
                start: start.clone(),
                end: end.clone(),
            });
        }
        return Ok(DbDecision::Restore {
            reason: format!("restore to {time} as asked (point in time, through pgBackRest)"),
            source: RestoreSource::PointInTime { time: time.clone() },
            baseline: CountBaseline::None,
            level: facts.target_level.clone(),
            loses_writes_since: time.clone(),
        });
    }
    if *mode == DbMode::Restore {
        return restore_from_backup(
            "restore from the backup at the target's level, as asked (--restore)".into(),
        );
    }
    if !facts.failing_checks.is_empty() {
        return restore_from_backup(format!(
            "the data is corrupted ({}): restore from the newest backup at level {}",
            facts.failing_checks.join("; "),
            facts.target_level
        ));
    }
    if !facts.partial.is_empty() {
        return restore_from_backup(format!(
            "the schema is in no release's state ({}): restore from the newest backup at level {}",
            facts.partial.join("; "),
            facts.target_level
        ))
        .map_err(|_| DbRefusal::NoBackup {
            component: component.into(),
            target: facts.target_level.clone(),
            why: facts.partial.join("; "),
        });
    }
    if facts.to_revert.is_empty() && facts.unrevertable.is_empty() {
        let mut reason = format!(
            "database unchanged (level {}) and its data checks pass: the application is rolled back alone",
            facts.level_now
        );
        if !facts.not_applied.is_empty() {
            reason.push_str(&format!(
                " (the target ships {} which {} not applied; a rollback does not apply migrations)",
                facts.not_applied.join(", "),
                if facts.not_applied.len() == 1 {
                    "is"
                } else {
                    "are"
                }
            ));
        }
        return Ok(DbDecision::Unchanged { reason });
    }
    let versions = facts
        .to_revert
        .iter()
        .map(|m| m.version.as_str())
        .chain(facts.unrevertable.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(", ");
    if cfg.policy == DbPolicy::ForwardOnly {
        return Err(DbRefusal::ForwardOnly {
            component: component.into(),
            target: facts.target_level.clone(),
            versions,
        });
    }
    // What no down script can undo: refused scripts and migrations nobody ships.
    let mut impossible: Vec<String> = facts.revert_refusals.clone();
    impossible.extend(facts.unrevertable.iter().map(|u| {
        format!("{u} is applied, the target does not ship it, and no release directory holds its down script")
    }));
    let lossy: Vec<&MigrationFacts> = facts
        .to_revert
        .iter()
        .filter(|m| m.revert_loses_data())
        .collect();
    if impossible.is_empty() && (lossy.is_empty() || revert_anyway) {
        let mut reason = format!(
            "database changed ({} → {}), data intact: revert {versions} with their down scripts, newest applied first",
            facts.level_now, facts.target_level
        );
        if !lossy.is_empty() {
            reason.push_str(" (--revert-anyway: data they destroyed or rewrote stays lost)");
        }
        return Ok(DbDecision::Revert { reason });
    }
    let why = impossible
        .into_iter()
        .chain(lossy.iter().map(|m| m.describe()))
        .collect::<Vec<_>>()
        .join("; ");
    match restore_from_backup(format!(
        "reverting would lose data or cannot be done ({why}): restore the backup at level {} instead",
        facts.target_level
    )) {
        Ok(d) => Ok(d),
        Err(_) => Err(DbRefusal::NoBackup {
            component: component.into(),
            target: facts.target_level.clone(),
            why,
        }),
    }
}

fn step(id: String, title: String, action: Action) -> Step {
    Step {
        id,
        title,
        action,
        effects: vec![],
        always: false,
    }
}

/// Cuts migrations into steps: consecutive ones that run in a batch together, each one that
/// runs alone by itself (with its own journal step, so a kill in the middle is resumed at
/// that migration).
fn segments(list: &[MigrationFacts]) -> Vec<&[MigrationFacts]> {
    let mut out: Vec<&[MigrationFacts]> = Vec::new();
    let mut start = 0;
    for (i, m) in list.iter().enumerate() {
        if m.alone.is_some() {
            if start < i {
                out.push(&list[start..i]);
            }
            out.push(&list[i..=i]);
            start = i + 1;
        } else if m.ends_batch {
            out.push(&list[start..=i]);
            start = i + 1;
        }
    }
    if start < list.len() {
        out.push(&list[start..]);
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The deploy steps of a database component (after its restore point): record the new
/// checksums when drift is accepted, then apply the pending migrations — in one transaction,
/// except those their tool runs alone, which get a step each.
pub fn deploy_steps(
    name: &str,
    release: &str,
    facts: &DbDeployFacts,
    options: &DeployOptions,
) -> Vec<Step> {
    let mut steps = Vec::new();
    if options.accept_drift && !facts.drifted.is_empty() {
        steps.push(step(
            format!("{name}.accept-drift"),
            format!(
                "{name}: record the edited files' checksums for {} in the {} history (--accept-drift)",
                facts.drifted.join(", "),
                facts.format
            ),
            Action::AcceptDrift {
                component: name.into(),
                release: release.into(),
                versions: facts.drifted.clone(),
            },
        ));
    }
    if facts.pending.is_empty() {
        let mut s = step(
            format!("{name}.migrate"),
            format!(
                "{name}: no pending migrations ({} level {})",
                facts.format, facts.level_now
            ),
            Action::Migrate {
                component: name.into(),
                release: release.into(),
                to: facts.target_level.clone(),
                versions: vec![],
                alone: None,
                accept_row_loss: options.accept_row_loss,
            },
        );
        s.effects.push(LedgerEffect::Deployed {
            component: name.into(),
            version: facts.target_level.clone(),
        });
        steps.push(s);
        return steps;
    }
    let parts = segments(&facts.pending);
    let many = parts.len() > 1;
    let mut from = facts.level_now.clone();
    for (i, part) in parts.iter().enumerate() {
        let last = part.last().expect("a segment has a migration");
        let to = last.level_after.clone();
        let alone = part[0].alone.clone();
        let lossy: Vec<String> = part
            .iter()
            .filter(|m| m.revert_loses_data())
            .map(|m| m.label())
            .collect();
        let title = match &alone {
            Some(why) => format!(
                "{name}: apply {} {} alone, outside a transaction ({why}), {from} → {to}",
                facts.format,
                part[0].label()
            ),
            None => format!(
                "{name}: apply {} {} migration{} in one transaction, {from} → {to}{}",
                part.len(),
                facts.format,
                plural(part.len()),
                if !lossy.is_empty() {
                    format!(
                        " ({} of them cannot be reverted without losing data: {})",
                        lossy.len(),
                        lossy.join(", ")
                    )
                } else {
                    String::new()
                }
            ),
        };
        let id = if many {
            format!("{name}.migrate.{}", i + 1)
        } else {
            format!("{name}.migrate")
        };
        let mut s = step(
            id,
            title,
            Action::Migrate {
                component: name.into(),
                release: release.into(),
                to: to.clone(),
                versions: part.iter().map(|m| m.key.clone()).collect(),
                alone,
                accept_row_loss: options.accept_row_loss,
            },
        );
        if i + 1 == parts.len() {
            s.effects.push(LedgerEffect::Deployed {
                component: name.into(),
                version: facts.target_level.clone(),
            });
        }
        steps.push(s);
        from = to;
    }
    steps
}

impl MigrationFacts {
    /// `20240101000000 create_users` (sqitch: the change name, `name@tag` for a reworked
    /// one's earlier instance).
    pub fn label(&self) -> String {
        if !self.display.is_empty() {
            self.display.clone()
        } else {
            format!("{} {}", self.version, self.name)
        }
    }
}

/// The revert steps of a rollback: the migrations to revert, newest applied first, in one
/// transaction except those their tool runs alone.
fn revert_steps(name: &str, from_release: &str, facts: &DbRollbackFacts) -> Vec<Step> {
    let parts = segments(&facts.to_revert);
    let many = parts.len() > 1;
    let mut from = facts.level_now.clone();
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let to = if last {
            facts.target_level.clone()
        } else {
            part.last()
                .expect("a segment has a migration")
                .level_after
                .clone()
        };
        let alone = part[0].alone.clone();
        let title = match &alone {
            Some(why) => format!(
                "{name}: revert {} alone, outside a transaction ({why}), {from} → {to}",
                part[0].label()
            ),
            None => format!(
                "{name}: revert {} migration{} in one transaction, {from} → {to}",
                part.len(),
                plural(part.len()),
            ),
        };
        out.push(step(
            if many {
                format!("{name}.revert.{}", i + 1)
            } else {
                format!("{name}.revert")
            },
            title,
            Action::Revert {
                component: name.into(),
                release: from_release.into(),
                to: to.clone(),
                versions: part.iter().map(|m| m.key.clone()).collect(),
                alone,
                accept_row_loss: facts.accept_row_loss,
            },
        ));
        from = to;
    }
    out
}

/// The rollback steps of a database component for a decision.
pub fn rollback_steps(
    name: &str,
    cfg: &DatabaseConfig,
    from_release: &str,
    facts: &DbRollbackFacts,
    decision: &DbDecision,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let (work, level, baseline) = match decision {
        DbDecision::Unchanged { .. } => return steps,
        DbDecision::Revert { .. } => (
            revert_steps(name, from_release, facts),
            facts.target_level.clone(),
            CountBaseline::RestorePoint {
                may_lose: if facts.accept_row_loss {
                    vec!["*".into()]
                } else {
                    let mut t: Vec<String> = facts
                        .to_revert
                        .iter()
                        .flat_map(|m| m.down_removes.iter().cloned())
                        .collect();
                    t.sort();
                    t.dedup();
                    t
                },
            },
        ),
        DbDecision::Restore {
            source,
            baseline,
            level,
            loses_writes_since,
            ..
        } => {
            let what = match source {
                RestoreSource::Backup {
                    path, created_at, ..
                } => format!("restore the backup of {created_at} ({path})"),
                RestoreSource::PointInTime { time } => {
                    format!("restore to {time} with pgBackRest (point in time)")
                }
            };
            (
                vec![step(
                    format!("{name}.restore"),
                    format!(
                        "{name}: {what}; writes after {loses_writes_since} are discarded (kept in the backup taken just before)"
                    ),
                    Action::Restore {
                        component: name.into(),
                        source: source.clone(),
                    },
                )],
                level.clone(),
                baseline.clone(),
            )
        }
    };
    let freezes = cfg.freeze != Freeze::None;
    if freezes {
        steps.push(step(
            format!("{name}.freeze"),
            format!("{name}: stop writes ({})", freeze_words(&cfg.freeze)),
            Action::Freeze {
                component: name.into(),
            },
        ));
    }
    steps.push(step(
        format!("{name}.restore-point"),
        format!("{name}: record a restore point with a full backup (what the database holds now)"),
        Action::RestorePoint {
            component: name.into(),
            backup: Some("before every rollback".into()),
        },
    ));
    let mut work = work;
    if let Some(last) = work.last_mut() {
        last.effects.push(LedgerEffect::Deployed {
            component: name.into(),
            version: level,
        });
    }
    steps.extend(work);
    let checks = 2 + cfg.checks.len();
    steps.push(step(
        format!("{name}.check"),
        format!(
            "{name}: data checks ({}foreign-key orphans{})",
            match &baseline {
                CountBaseline::None => String::new(),
                CountBaseline::RestorePoint { .. } => {
                    "row counts against the restore point, ".into()
                }
                CountBaseline::Known { catalog, .. } if !catalog.is_empty() => {
                    "row counts and catalog against the backup's, ".into()
                }
                CountBaseline::Known { .. } => "row counts against the backup's, ".into(),
            },
            if cfg.checks.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} SQL assertion{}",
                    cfg.checks.len(),
                    if checks == 3 { "" } else { "s" }
                )
            }
        ),
        Action::DataCheck {
            component: name.into(),
            baseline,
        },
    ));
    if freezes {
        let mut s = step(
            format!("{name}.unfreeze"),
            format!("{name}: allow writes again (always, also after a failure)"),
            Action::Unfreeze {
                component: name.into(),
            },
        );
        s.always = true;
        steps.push(s);
    }
    steps
}

fn freeze_words(f: &Freeze) -> String {
    match f {
        Freeze::None => "nothing".into(),
        Freeze::ReadOnly => "default_transaction_read_only = on, other sessions ended".into(),
        Freeze::Command { freeze, .. } => format!("`{freeze}`"),
    }
}

/// The steps of restoring a database from a backup outside any rollback
/// (`rewind backup restore`): freeze, restore point, restore, checks, unfreeze.
pub fn restore_steps(name: &str, cfg: &DatabaseConfig, backup: &BackupFacts) -> Vec<Step> {
    let level = match &backup.source {
        RestoreSource::Backup { level, .. } => level.clone(),
        RestoreSource::PointInTime { .. } => NO_LEVEL.into(),
    };
    let facts = DbRollbackFacts {
        target_level: level.clone(),
        backup: Some(backup.clone()),
        ..DbRollbackFacts::default()
    };
    let decision = DbDecision::Restore {
        reason: String::new(),
        source: backup.source.clone(),
        baseline: CountBaseline::Known {
            tables: backup.row_counts.clone(),
            catalog: backup.catalog.clone(),
        },
        level,
        loses_writes_since: backup.created_at.clone(),
    };
    rollback_steps(name, cfg, "", &facts, &decision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DbConnection, Fraction};

    fn cfg() -> DatabaseConfig {
        DatabaseConfig {
            connection: DbConnection::UrlEnv("DATABASE_URL".into()),
            migrations: "/srv/migrations".into(),
            format: None,
            policy: DbPolicy::Revert,
            backup: BackupPolicy::Always,
            backup_dir: "/srv/backups".into(),
            keep_backups: 5,
            freeze: Freeze::None,
            row_count_tolerance: Fraction(0.0),
            checks: vec![],
            pitr: None,
            command_timeout: std::time::Duration::from_secs(60),
            pg_bin: None,
        }
    }

    #[test]
    fn point_in_time_window_includes_its_start_and_excludes_its_end() {
        let facts = DbRollbackFacts {
            level_now: "3".into(),
            target_level: "2".into(),
            pitr_window: Some((
                "2026-11-21T14:00:00.000000Z".into(),
                "2026-11-21T15:00:00.000000Z".into(),
            )),
            now: "2026-11-21T15:00:01.000000Z".into(),
            ..DbRollbackFacts::default()
        };
        let at = |t: &str| decide("db", &cfg(), &facts, &DbMode::PointInTime(t.into()), false);
        for inside in ["2026-11-21T14:00:00.000000Z", "2026-11-21T14:59:59.999999Z"] {
            match at(inside) {
                Ok(DbDecision::Restore { source, level, .. }) => {
                    assert_eq!(
                        source,
                        RestoreSource::PointInTime {
                            time: inside.into()
                        }
                    );
                    assert_eq!(level, "2");
                }
                other => panic!("{inside}: {other:?}"),
            }
        }
        for outside in [
            "2026-11-21T13:59:59.999999Z",
            "2026-11-21T15:00:00.000000Z",
            "not a time",
        ] {
            assert!(
                matches!(at(outside), Err(DbRefusal::OutsideWindow { .. })),
                "{outside}"
            );
        }
        let no_pitr = DbRollbackFacts {
            pitr_window: None,
            ..facts.clone()
        };
        assert!(matches!(
            decide(
                "db",
                &cfg(),
                &no_pitr,
                &DbMode::PointInTime("2026-11-21T14:30:00Z".into()),
                false
            ),
            Err(DbRefusal::NoPitr { .. })
        ));
    }

    fn mig(version: &str, alone: bool, level_after: &str) -> MigrationFacts {
        MigrationFacts {
            version: version.into(),
            name: format!("m{version}"),
            key: version.into(),
            down: DownScript::Present,
            alone: alone.then(|| "metadata.toml says run_in_transaction = false".into()),
            level_after: level_after.into(),
            ..MigrationFacts::default()
        }
    }

    /// A data-loss warning names the migrations, everywhere: a bare number is read as a count
    /// in one title and as a version in the next.
    #[test]
    fn data_loss_warnings_name_the_migrations() {
        let mut lossy = mig("2", false, "2");
        lossy.loses_data = true;
        let facts = DbDeployFacts {
            format: "sqlx".into(),
            level_now: "1".into(),
            target_level: "3".into(),
            pending: vec![lossy, mig("3", false, "3")],
            ..DbDeployFacts::default()
        };
        let reason = facts.backup_reason(&cfg()).unwrap();
        assert_eq!(
            reason,
            "migration 2 m2 cannot be reverted without losing data"
        );
        let steps = deploy_steps("db", "v2", &facts, &DeployOptions::default());
        assert!(
            steps[0]
                .title
                .ends_with("(1 of them cannot be reverted without losing data: 2 m2)"),
            "{}",
            steps[0].title
        );
    }

    #[test]
    fn a_migration_that_runs_alone_gets_a_step_of_its_own() {
        let facts = DbDeployFacts {
            format: "diesel".into(),
            level_now: "1".into(),
            target_level: "5".into(),
            pending: vec![
                mig("2", false, "2"),
                mig("3", false, "3"),
                mig("4", true, "4"),
                mig("5", false, "5"),
            ],
            ..DbDeployFacts::default()
        };
        let steps = deploy_steps("db", "v2", &facts, &DeployOptions::default());
        let shape: Vec<(String, Vec<String>, bool)> = steps
            .iter()
            .map(|s| match &s.action {
                Action::Migrate {
                    versions, alone, ..
                } => (s.id.clone(), versions.clone(), alone.is_some()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("db.migrate.1".into(), vec!["2".into(), "3".into()], false),
                ("db.migrate.2".into(), vec!["4".into()], true),
                ("db.migrate.3".into(), vec!["5".into()], false),
            ]
        );
        // Only the last step moves the ledger.
        assert!(steps[..2].iter().all(|s| s.effects.is_empty()));
        assert_eq!(steps[2].effects.len(), 1);
        // A migration whose transaction must commit first (ALTER TYPE … ADD VALUE) ends its
        // batch.
        let mut ends = facts.clone();
        ends.pending[0].ends_batch = true;
        let ids: Vec<String> = deploy_steps("db", "v2", &ends, &DeployOptions::default())
            .iter()
            .map(|s| s.id.clone())
            .collect();
        assert_eq!(
            ids,
            [
                "db.migrate.1",
                "db.migrate.2",
                "db.migrate.3",
                "db.migrate.4"
            ]
        );
        // A migration outside a transaction asks for a full backup before the deploy.
        let mut c = cfg();
        c.backup = BackupPolicy::Destructive;
        assert!(
            facts
                .backup_reason(&c)
                .unwrap()
                .contains("outside a transaction")
        );
    }

    #[test]
    fn what_no_down_script_can_undo_is_restored() {
        let backup = BackupFacts {
            source: RestoreSource::Backup {
                path: "/b/1.dump".into(),
                kind: "pg-dump-custom".into(),
                checksum: "x".into(),
                bytes: 1,
                created_at: "2026-11-21T14:00:00Z".into(),
                level: "2".into(),
            },
            row_counts: BTreeMap::new(),
            created_at: "2026-11-21T14:00:00Z".into(),
            catalog: vec![],
        };
        let base = DbRollbackFacts {
            level_now: "4".into(),
            target_level: "2".into(),
            to_revert: vec![mig("4", false, "3"), mig("3", false, "2")],
            backup: Some(backup),
            ..DbRollbackFacts::default()
        };
        let decide_with = |f: &DbRollbackFacts| decide("db", &cfg(), f, &DbMode::Auto, false);
        assert!(matches!(decide_with(&base), Ok(DbDecision::Revert { .. })));
        for f in [
            DbRollbackFacts {
                unrevertable: vec!["7 hand_made".into()],
                ..base.clone()
            },
            DbRollbackFacts {
                partial: vec!["diesel migration 4 ran partly".into()],
                ..base.clone()
            },
            DbRollbackFacts {
                revert_refusals: vec!["down script of 4 cannot run".into()],
                ..base.clone()
            },
        ] {
            assert!(
                matches!(decide_with(&f), Ok(DbDecision::Restore { .. })),
                "{f:?}"
            );
            // --revert-anyway cannot revert what has no script.
            let anyway = decide("db", &cfg(), &f, &DbMode::Auto, true);
            assert!(
                matches!(anyway, Ok(DbDecision::Restore { .. })),
                "{anyway:?}"
            );
        }
        // A set already the target's: nothing to do, whatever the levels say.
        let same = DbRollbackFacts {
            to_revert: vec![],
            not_applied: vec!["3".into()],
            ..base.clone()
        };
        match decide_with(&same) {
            Ok(DbDecision::Unchanged { reason }) => assert!(reason.contains("ships 3"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // Reverting steps follow the same cut as deploying ones.
        let alone = DbRollbackFacts {
            to_revert: vec![mig("4", true, "3"), mig("3", false, "2")],
            ..base
        };
        let d = decide_with(&alone).unwrap();
        let steps = rollback_steps("db", &cfg(), "v3", &alone, &d);
        let ids: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            ["db.restore-point", "db.revert.1", "db.revert.2", "db.check"]
        );
    }
}
