//! A database's migrations as a **set**, compared with a release's migrations directory the
//! way each tool compares them.
//!
//! The history says which migrations are applied (in the order they were applied); a
//! directory says which a release ships (in the tool's order, [`Format::cmp_versions`]).
//! Teams merge branches, so a release can ship a migration older than the newest applied one
//! ("out of order"), and a database can hold a migration that the release no longer ships.
//! What a deploy or a rollback does about that is decided here, purely, per tool:
//!
//! | | out of order (pending, older than the newest applied) | applied but not in the release |
//! |---|---|---|
//! | diesel | applied (`migration run` applies every pending one, in string order) | left alone (diesel only fails when reverting it) |
//! | sqlx | applied (`migrate run` applies every pending one, in version order) | refused: `VersionMissing` |
//! | refinery | refused: `MissingVersion` ("not applied") | refused: `MissingVersion` ("missing from the filesystem") |
//! | Flyway | refused: "Detected resolved migration not applied to database" (`outOfOrder` is off by default) | refused: "Detected applied migration not resolved locally" |
//! | golang-migrate | refused: its history holds only the current version, so it never applies an older one | refused: it cannot find the current version's file |
//! | sqitch | refused: it deploys only after the last deployed change | refused when it is the last deployed change ("Cannot find change … in sqitch.plan"), noted otherwise |
//!
//! A rollback reverts every applied migration that the target release does not ship, newest
//! applied first.

use std::collections::BTreeSet;

use crate::history::Recorded;
use crate::migrations::{Format, Migration};

/// The history of one database against one migrations directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// What the history records, in apply order (oldest first).
    pub recorded: Vec<Recorded>,
}

impl State {
    pub fn new(recorded: Vec<Recorded>) -> State {
        State { recorded }
    }

    /// True when `m` is applied.
    pub fn is_applied(&self, m: &Migration) -> bool {
        self.recorded.iter().any(|r| r.key == m.key())
    }

    /// The migrations of `migs` that are applied, in apply order (oldest first).
    pub fn applied<'a>(&self, migs: &'a [Migration]) -> Vec<&'a Migration> {
        self.recorded
            .iter()
            .filter_map(|r| migs.iter().find(|m| m.key() == r.key))
            .collect()
    }

    /// Applied migrations that `migs` does not hold, in apply order.
    pub fn unknown(&self, migs: &[Migration]) -> Vec<&Recorded> {
        self.recorded
            .iter()
            .filter(|r| !migs.iter().any(|m| m.key() == r.key))
            .collect()
    }

    /// The migrations of `migs` that are not applied, in the tool's order.
    pub fn pending<'a>(&self, migs: &'a [Migration]) -> Vec<&'a Migration> {
        migs.iter().filter(|m| !self.is_applied(m)).collect()
    }

    /// The level: the newest applied migration of `migs` in the tool's order (its version),
    /// or the newest applied entry the directory does not know, or `none`.
    pub fn level(&self, format: Format, migs: &[Migration]) -> String {
        let known = self
            .applied(migs)
            .into_iter()
            .max_by(|a, b| format.cmp_versions(&a.version, &b.version))
            .map(|m| m.version.clone());
        known
            .or_else(|| self.recorded.last().map(|r| unknown_label(format, r)))
            .unwrap_or_else(|| NO_LEVEL.to_string())
    }
}

/// The level of a database on which nothing is applied.
pub const NO_LEVEL: &str = "none";

/// How a person recognises an applied entry the directory does not know.
pub fn unknown_label(format: Format, r: &Recorded) -> String {
    match format {
        Format::Sqitch => format!("{} ({})", r.name, &r.key[..r.key.len().min(8)]),
        _ if r.name.is_empty() => r.key.clone(),
        _ => format!("{} {}", r.key, r.name),
    }
}

/// What a deploy of a release does to one database.
#[derive(Debug, Clone, Default)]
pub struct DeployPlan<'a> {
    /// Every migration the release ships that the history lacks, in the tool's order.
    pub to_apply: Vec<&'a Migration>,
    /// Those of `to_apply` older than the newest applied one (merged out of order).
    pub out_of_order: Vec<&'a Migration>,
    /// Applied migrations the release does not ship.
    pub unknown: Vec<Recorded>,
    /// Why the team's tool would refuse this deploy; non-empty: rewind refuses too.
    pub refusals: Vec<String>,
    /// What a person should know that does not stop the deploy.
    pub notes: Vec<String>,
}

/// Decides what deploying `migs` (a release's directory, in the tool's order) does to a
/// database whose history is `state`.
pub fn plan_deploy<'a>(format: Format, migs: &'a [Migration], state: &State) -> DeployPlan<'a> {
    let mut plan = DeployPlan {
        to_apply: state.pending(migs),
        unknown: state.unknown(migs).into_iter().cloned().collect(),
        ..DeployPlan::default()
    };
    let newest = state
        .applied(migs)
        .into_iter()
        .max_by(|a, b| format.cmp_versions(&a.version, &b.version));
    if let Some(newest) = newest {
        plan.out_of_order = plan
            .to_apply
            .iter()
            .filter(|m| format.cmp_versions(&m.version, &newest.version).is_lt())
            .copied()
            .collect();
    }
    for r in &plan.unknown {
        let label = unknown_label(format, r);
        match format {
            Format::Sqlx => plan.refusals.push(format!(
                "migration {} was previously applied but is missing in the resolved migrations (sqlx refuses: VersionMissing)",
                r.key
            )),
            Format::Refinery => plan.refusals.push(format!(
                "migration {label} is applied but missing from the filesystem (refinery refuses: MissingVersion)"
            )),
            Format::Flyway => plan.refusals.push(format!(
                "Detected applied migration not resolved locally: {} (Flyway's validate refuses; `flyway repair` marks it deleted)",
                r.key
            )),
            Format::GolangMigrate => plan.refusals.push(format!(
                "the current version {} has no file in this release (golang-migrate cannot read it)",
                r.key
            )),
            Format::Sqitch => {
                if state.recorded.last() == Some(r) {
                    plan.refusals.push(format!(
                        "Cannot find change {} ({}) in sqitch.plan: the last deployed change is not in this release's plan (sqitch refuses; the plan diverged from what is deployed)",
                        r.key, r.name
                    ));
                } else {
                    plan.notes.push(format!(
                        "change {label} is deployed but not in this release's plan"
                    ));
                }
            }
            Format::Diesel => plan.notes.push(format!(
                "migration {label} is applied but not in this release; diesel leaves it (and `diesel migration revert` fails on it)"
            )),
        }
    }
    let newest_version = newest.map(|m| m.version.clone()).unwrap_or_default();
    for m in &plan.out_of_order {
        let label = m.label();
        match format {
            Format::Diesel | Format::Sqlx => plan.notes.push(format!(
                "{label} is older than the newest applied migration ({newest_version}): {} applies it anyway, and so does rewind",
                format.name()
            )),
            Format::Refinery => plan.refusals.push(format!(
                "{label} is older than the newest applied migration ({newest_version}) and not applied (refinery refuses: MissingVersion); give it a version above {newest_version}"
            )),
            Format::Flyway => plan.refusals.push(format!(
                "Detected resolved migration not applied to database: {} (older than the newest applied {newest_version}; Flyway refuses unless outOfOrder=true); give it a version above {newest_version}",
                m.version
            )),
            Format::GolangMigrate => plan.refusals.push(format!(
                "{label} is older than the current version {newest_version}: golang-migrate keeps only the current version and never applies an older one; give it a version above {newest_version}"
            )),
            Format::Sqitch => plan.refusals.push(format!(
                "change {label} comes before the last deployed change in sqitch.plan but is not deployed: sqitch deploys only after the last deployed change"
            )),
        }
    }
    plan
}

/// What a rollback does to one database.
#[derive(Debug, Clone, Default)]
pub struct RevertPlan<'a> {
    /// Applied migrations the target does not ship, newest applied first, with the scripts
    /// to revert them.
    pub to_revert: Vec<&'a Migration>,
    /// Applied migrations the target does not ship and whose scripts no directory holds:
    /// they cannot be reverted (a restore can bring the database back).
    pub unrevertable: Vec<Recorded>,
    /// Migrations the target ships that are not applied (a rollback does not apply them).
    pub not_applied: Vec<String>,
}

/// Decides what a rollback to a release shipping `target` (the keys of its migrations, see
/// [`Migration::key`]) reverts, with scripts from `migs` (the directory of the release that
/// runs now, whose down scripts undo what it applied).
pub fn plan_revert<'a>(
    migs: &'a [Migration],
    state: &State,
    target: &BTreeSet<String>,
) -> RevertPlan<'a> {
    let mut plan = RevertPlan::default();
    for r in state.recorded.iter().rev() {
        if target.contains(&r.key) {
            continue;
        }
        match migs.iter().find(|m| m.key() == r.key) {
            Some(m) => plan.to_revert.push(m),
            None => plan.unrevertable.push(r.clone()),
        }
    }
    plan.not_applied = target
        .iter()
        .filter(|k| !state.recorded.iter().any(|r| &r.key == *k))
        .cloned()
        .collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mig(version: &str) -> Migration {
        Migration {
            version: version.into(),
            name: format!("m{version}"),
            up: "SELECT 1;".into(),
            ..Migration::default()
        }
    }

    fn rec(key: &str) -> Recorded {
        Recorded {
            key: key.into(),
            name: String::new(),
            checksum: None,
        }
    }

    fn sorted(format: Format, versions: &[&str]) -> Vec<Migration> {
        let mut v: Vec<Migration> = versions.iter().map(|v| mig(v)).collect();
        v.sort_by(|a, b| format.cmp_versions(&a.version, &b.version));
        v
    }

    fn keys(ms: &[&Migration]) -> Vec<String> {
        ms.iter().map(|m| m.version.clone()).collect()
    }

    #[test]
    fn diesel_orders_versions_as_text() {
        // An 18-digit and a 14-digit version, interleaved: diesel compares strings.
        let migs = sorted(
            Format::Diesel,
            &["20260201000000", "202601010000000000", "00000000000000"],
        );
        let order: Vec<&str> = migs.iter().map(|m| m.version.as_str()).collect();
        assert_eq!(
            order,
            ["00000000000000", "202601010000000000", "20260201000000"]
        );
    }

    #[test]
    fn flyway_orders_dotted_versions_by_parts() {
        let migs = sorted(Format::Flyway, &["1.10", "1.9", "2", "1.2.1", "1"]);
        let order: Vec<&str> = migs.iter().map(|m| m.version.as_str()).collect();
        assert_eq!(order, ["1", "1.2.1", "1.9", "1.10", "2"]);
        assert!(Format::Flyway.cmp_versions("1.0", "1").is_eq());
        assert!(Format::Flyway.cmp_versions("1.01", "1.1").is_eq());
    }

    #[test]
    fn a_release_adding_an_older_migration_applies_it_for_diesel() {
        let migs = sorted(Format::Diesel, &["202601010000000000", "20260201000000"]);
        // Only the 14-digit one is applied, though it sorts after the 18-digit one.
        let state = State::new(vec![rec("20260201000000")]);
        let plan = plan_deploy(Format::Diesel, &migs, &state);
        assert_eq!(keys(&plan.to_apply), ["202601010000000000"]);
        assert_eq!(keys(&plan.out_of_order), ["202601010000000000"]);
        assert!(plan.refusals.is_empty(), "{:?}", plan.refusals);
        assert_eq!(state.level(Format::Diesel, &migs), "20260201000000");
    }

    #[test]
    fn each_tool_refuses_what_it_refuses() {
        let state = State::new(vec![rec("1"), rec("3")]);
        for (format, refuses) in [
            (Format::Sqlx, false),
            (Format::Diesel, false),
            (Format::Flyway, true),
            (Format::Refinery, true),
            (Format::GolangMigrate, true),
        ] {
            let migs = sorted(format, &["1", "2", "3", "4"]);
            let plan = plan_deploy(format, &migs, &state);
            assert_eq!(keys(&plan.to_apply), ["2", "4"], "{format}");
            assert_eq!(!plan.refusals.is_empty(), refuses, "{format}: {plan:?}");
        }
        // Applied but no longer shipped.
        let state = State::new(vec![rec("1"), rec("9")]);
        for (format, refuses) in [
            (Format::Sqlx, true),
            (Format::Diesel, false),
            (Format::Flyway, true),
            (Format::Refinery, true),
        ] {
            let migs = sorted(format, &["1", "2"]);
            let plan = plan_deploy(format, &migs, &state);
            assert_eq!(plan.unknown.len(), 1, "{format}");
            assert_eq!(!plan.refusals.is_empty(), refuses, "{format}: {plan:?}");
        }
    }

    #[test]
    fn rollback_reverts_what_the_target_does_not_ship_newest_applied_first() {
        // Flyway: V3 applied, then V2 (out of order, allowed once), then V4.
        let migs = sorted(Format::Flyway, &["1", "2", "3", "4"]);
        let state = State::new(vec![rec("1"), rec("3"), rec("2"), rec("4")]);
        let target: BTreeSet<String> = ["1", "3"].iter().map(|s| s.to_string()).collect();
        let plan = plan_revert(&migs, &state, &target);
        assert_eq!(keys(&plan.to_revert), ["4", "2"]);
        assert!(plan.unrevertable.is_empty());
        // An applied migration nobody ships cannot be reverted.
        let state = State::new(vec![rec("1"), rec("7")]);
        let plan = plan_revert(&migs, &state, &target);
        assert_eq!(plan.unrevertable, [rec("7")]);
        assert_eq!(plan.not_applied, ["3"]);
    }
}
