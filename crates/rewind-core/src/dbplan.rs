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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DownScript {
    Present,
    /// The format has none, or the file is missing.
    Missing,
    /// The file exists but holds only comments and whitespace.
    Empty,
}

/// One migration, classified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationFacts {
    pub version: String,
    pub name: String,
    /// What in its up script is destructive (`DROP COLUMN users.legacy: …`); empty: additive.
    pub destructive: Vec<String>,
    /// Some of it loses data (or may): only a backup brings it back.
    pub loses_data: bool,
    pub down: DownScript,
}

impl MigrationFacts {
    /// Reverting it cannot bring the data back: its up script destroyed data, or nothing
    /// undoes it.
    pub fn revert_loses_data(&self) -> bool {
        self.loses_data || self.down != DownScript::Present
    }

    /// One line for a person: `V3 add_email — additive, down script present`.
    pub fn describe(&self) -> String {
        let what = if self.destructive.is_empty() {
            "additive".to_string()
        } else {
            format!("DESTRUCTIVE: {}", self.destructive.join("; "))
        };
        let down = match self.down {
            DownScript::Present => "down script present",
            DownScript::Missing => "NO down script",
            DownScript::Empty => "down script EMPTY",
        };
        format!("{} {} — {what}; {down}", self.version, self.name)
    }
}

/// What a deploy needs to know about one database component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbDeployFacts {
    /// The migration tool's format (`sqlx` …).
    pub format: String,
    /// Applied now (from the history table).
    pub level_now: String,
    /// After the deploy: the newest migration in the release's directory.
    pub target_level: String,
    /// Pending migrations in apply order.
    pub pending: Vec<MigrationFacts>,
    /// Applied migrations whose file changed (or vanished) since: one line each.
    pub drift: Vec<String>,
}

impl DbDeployFacts {
    /// Why the restore point must include a full backup, if it must.
    pub fn backup_reason(&self, cfg: &DatabaseConfig) -> Option<String> {
        let risky: Vec<&str> = self
            .pending
            .iter()
            .filter(|m| m.revert_loses_data())
            .map(|m| m.version.as_str())
            .collect();
        if !risky.is_empty() {
            Some(format!(
                "{} cannot be reverted without losing data",
                risky.join(", ")
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbRollbackFacts {
    pub level_now: String,
    pub target_level: String,
    /// Applied migrations newer than the target's level, newest first.
    pub to_revert: Vec<MigrationFacts>,
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
    if facts.level_now == facts.target_level {
        return Ok(DbDecision::Unchanged {
            reason: format!(
                "database unchanged (level {}) and its data checks pass: the application is rolled back alone",
                facts.level_now
            ),
        });
    }
    let versions = facts
        .to_revert
        .iter()
        .map(|m| m.version.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if cfg.policy == DbPolicy::ForwardOnly {
        return Err(DbRefusal::ForwardOnly {
            component: component.into(),
            target: facts.target_level.clone(),
            versions,
        });
    }
    let lossy: Vec<&MigrationFacts> = facts
        .to_revert
        .iter()
        .filter(|m| m.revert_loses_data())
        .collect();
    if lossy.is_empty() || revert_anyway {
        let mut reason = format!(
            "database changed ({} → {}), data intact: revert {versions} with their down scripts",
            facts.level_now, facts.target_level
        );
        if !lossy.is_empty() {
            reason.push_str(" (--revert-anyway: data they destroyed stays lost)");
        }
        return Ok(DbDecision::Revert { reason });
    }
    let why = lossy
        .iter()
        .map(|m| m.describe())
        .collect::<Vec<_>>()
        .join("; ");
    match restore_from_backup(format!(
        "reverting would lose data ({why}): restore the backup at level {} instead",
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

/// The deploy steps of a database component (after its restore point): apply the pending
/// migrations.
pub fn deploy_steps(name: &str, release: &str, facts: &DbDeployFacts) -> Vec<Step> {
    let title = if facts.pending.is_empty() {
        format!(
            "{name}: no pending migrations ({} level {})",
            facts.format, facts.level_now
        )
    } else {
        let destructive = facts
            .pending
            .iter()
            .filter(|m| m.revert_loses_data())
            .count();
        format!(
            "{name}: apply {} {} migration{} in one transaction, {} → {}{}",
            facts.pending.len(),
            facts.format,
            if facts.pending.len() == 1 { "" } else { "s" },
            facts.level_now,
            facts.target_level,
            if destructive > 0 {
                format!(" ({destructive} cannot be reverted without losing data)")
            } else {
                String::new()
            }
        )
    };
    let mut s = step(
        format!("{name}.migrate"),
        title,
        Action::Migrate {
            component: name.into(),
            release: release.into(),
            to: facts.target_level.clone(),
        },
    );
    s.effects.push(LedgerEffect::Deployed {
        component: name.into(),
        version: facts.target_level.clone(),
    });
    vec![s]
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
            step(
                format!("{name}.revert"),
                format!(
                    "{name}: revert {} migration{} in one transaction, {} → {}",
                    facts.to_revert.len(),
                    if facts.to_revert.len() == 1 { "" } else { "s" },
                    facts.level_now,
                    facts.target_level
                ),
                Action::Revert {
                    component: name.into(),
                    release: from_release.into(),
                    to: facts.target_level.clone(),
                },
            ),
            facts.target_level.clone(),
            CountBaseline::RestorePoint,
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
                step(
                    format!("{name}.restore"),
                    format!(
                        "{name}: {what}; writes after {loses_writes_since} are discarded (kept in the backup taken just before)"
                    ),
                    Action::Restore {
                        component: name.into(),
                        source: source.clone(),
                    },
                ),
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
    work.effects.push(LedgerEffect::Deployed {
        component: name.into(),
        version: level,
    });
    steps.push(work);
    let checks = 2 + cfg.checks.len();
    steps.push(step(
        format!("{name}.check"),
        format!(
            "{name}: data checks ({}foreign-key orphans{})",
            match &baseline {
                CountBaseline::None => String::new(),
                CountBaseline::RestorePoint => "row counts against the restore point, ".into(),
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
        level_now: String::new(),
        target_level: level.clone(),
        to_revert: vec![],
        failing_checks: vec![],
        backup: Some(backup.clone()),
        pitr_window: None,
        now: String::new(),
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
            to_revert: vec![],
            failing_checks: vec![],
            backup: None,
            pitr_window: Some((
                "2026-11-21T14:00:00.000000Z".into(),
                "2026-11-21T15:00:00.000000Z".into(),
            )),
            now: "2026-11-21T15:00:01.000000Z".into(),
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
}
