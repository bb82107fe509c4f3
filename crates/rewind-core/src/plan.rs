//! The planner: turns "deploy release R" or "roll back to release T" into an ordered list of
//! self-contained steps, each with the ledger effects recorded when it is done. Pure: it reads
//! the configuration and the ledger it is handed, and checks nothing on disk (the binary checks
//! the plan's preconditions before it records a run).

use std::collections::BTreeMap;

use crate::config::{ComponentConfig, Config};
use crate::dbplan::{DbDecision, DbDeployFacts, DbRollbackFacts};
use crate::model::{Action, CommandHook, LedgerEffect, Release, ReleaseState, Step};

/// Why a plan cannot be made. Every variant says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("nothing has been deployed to `{0}` yet, so there is nothing to roll back")]
    NothingDeployed(String),
    #[error(
        "no known-good release before `{current}`; name one with --to RELEASE (see `rewind history`)"
    )]
    NoKnownGood { current: String },
    #[error("release `{0}` is not in the ledger; see `rewind history` for the recorded releases")]
    UnknownRelease(String),
    #[error("release `{release}` is marked {state}; rolling back to it needs --force")]
    FaultyTarget {
        release: String,
        state: ReleaseState,
    },
    #[error("component `{0}` is not in the config; known components: {1}")]
    UnknownComponent(String, String),
    #[error("release `{release}` does not record a version for component `{component}`")]
    NoVersion { release: String, component: String },
    /// The target is the current release and every selected component already runs the
    /// version it records: a rollback would change nothing.
    #[error(
        "`{release}` is already the current release and {} the version it records; nothing to roll back",
        if components.len() == 1 { format!("{} runs", components[0]) } else { format!("{} run", components.join(", ")) }
    )]
    AlreadyThere {
        release: String,
        components: Vec<String>,
    },
}

/// What the ledger says about an environment, as the planner needs it.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub current: Option<String>,
    /// Component → version it runs now.
    pub deployed: BTreeMap<String, String>,
    /// Oldest first.
    pub releases: Vec<Release>,
}

impl Ledger {
    pub fn release(&self, name: &str) -> Option<&Release> {
        self.releases.iter().find(|r| r.name == name)
    }

    /// The most recent known-good release recorded before `before` (by deploy order),
    /// other than `before` itself.
    pub fn last_good_before(&self, before: &str) -> Option<&Release> {
        let limit = self.release(before).map(|r| r.seq).unwrap_or(i64::MAX);
        self.releases
            .iter()
            .rev()
            .find(|r| r.seq < limit && r.state == ReleaseState::Good && r.name != before)
    }

    /// Applies ledger effects as the store does when it records them (restore points are not
    /// part of the ledger): so a plan can see the ledger a command will see after recording
    /// something first (a rollback abandons an unfinished deploy before it plans).
    pub fn apply(&mut self, effects: &[LedgerEffect]) {
        for effect in effects {
            match effect {
                LedgerEffect::ReleaseState { release, state } => {
                    if let Some(r) = self.releases.iter_mut().find(|r| &r.name == release) {
                        r.state = *state;
                    }
                }
                LedgerEffect::Deployed { component, version } => {
                    self.deployed.insert(component.clone(), version.clone());
                }
                LedgerEffect::Current { release } => self.current = Some(release.clone()),
                LedgerEffect::RestorePoint { .. } => {}
            }
        }
    }

    /// The most recent known-good release (any).
    pub fn last_good(&self) -> Option<&Release> {
        self.releases
            .iter()
            .rev()
            .find(|r| r.state == ReleaseState::Good)
    }
}

fn component_steps_to(
    name: &str,
    cfg: &ComponentConfig,
    release: &str,
    hook: CommandHook,
    artifact: Option<&str>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    match cfg {
        ComponentConfig::ReleaseDir(rd) => {
            if hook == CommandHook::Deploy {
                steps.push(Step {
                    id: format!("{name}.stage"),
                    title: match artifact {
                        Some(a) => format!(
                            "{name}: copy {a} into {}/releases/{release}",
                            rd.root.display()
                        ),
                        None => format!(
                            "{name}: use {}/releases/{release} (no artifact given: it must already be on disk)",
                            rd.root.display()
                        ),
                    },
                    action: Action::Stage {
                        component: name.into(),
                        release: release.into(),
                        artifact: artifact.map(str::to_string),
                    },
                    effects: vec![],
                    always: false,
                });
            }
            steps.push(Step {
                id: format!("{name}.switch"),
                title: format!(
                    "{name}: point {}/current at releases/{release}",
                    rd.root.display()
                ),
                action: Action::Switch {
                    component: name.into(),
                    release: release.into(),
                },
                effects: vec![],
                always: false,
            });
            if let Some(restart) = &rd.restart {
                steps.push(Step {
                    id: format!("{name}.restart"),
                    title: format!("{name}: restart ({restart})"),
                    action: Action::Restart {
                        component: name.into(),
                    },
                    effects: vec![],
                    always: false,
                });
            }
            if let Some(ready) = &rd.ready {
                steps.push(ready_step(name, ready, rd.ready_timeout));
            }
        }
        // Databases have steps of their own (`dbplan`), chosen from what the database holds.
        ComponentConfig::Sqlite(_) | ComponentConfig::Postgres(_) => return steps,
        ComponentConfig::Command(c) => {
            let (word, cmd) = match hook {
                CommandHook::Deploy => ("deploy", &c.deploy),
                CommandHook::Rollback => ("rollback", &c.rollback),
            };
            steps.push(Step {
                id: format!("{name}.{word}"),
                title: format!(
                    "{name}: {word} {release} ({})",
                    cmd.replace("{release}", release)
                ),
                action: Action::RunCommand {
                    component: name.into(),
                    hook,
                    release: release.into(),
                },
                effects: vec![],
                always: false,
            });
            if let Some(ready) = &c.ready {
                steps.push(ready_step(name, ready, c.ready_timeout));
            }
        }
    }
    if let Some(last) = steps.last_mut() {
        last.effects.push(LedgerEffect::Deployed {
            component: name.into(),
            version: release.into(),
        });
    }
    steps
}

fn ready_step(name: &str, ready: &crate::config::Readiness, timeout: std::time::Duration) -> Step {
    let what = match ready {
        crate::config::Readiness::Url(u) => format!("GET {u} answers 2xx"),
        crate::config::Readiness::Command(c) => format!("`{c}` exits 0"),
    };
    Step {
        id: format!("{name}.ready"),
        title: format!(
            "{name}: wait until {what} (at most {})",
            crate::units::format_duration(timeout)
        ),
        action: Action::WaitReady {
            component: name.into(),
        },
        effects: vec![],
        always: false,
    }
}

fn restore_point_step(name: &str, backup: Option<String>) -> Step {
    Step {
        id: format!("{name}.restore-point"),
        title: match &backup {
            Some(why) => format!("{name}: record a restore point with a full backup ({why})"),
            None => format!("{name}: record a restore point (what runs now)"),
        },
        action: Action::RestorePoint {
            component: name.into(),
            backup,
        },
        effects: vec![],
        always: false,
    }
}

/// The steps of deploying `release`: restore points of every component first, then each
/// component in config order, then the ledger, then pruning old release directories.
/// `artifacts` maps component name → artifact path given on the command line; `db` holds
/// what the caller read about every database component.
pub fn deploy_plan(
    config: &Config,
    ledger: &Ledger,
    release: &str,
    artifacts: &BTreeMap<String, String>,
    db: &BTreeMap<String, DbDeployFacts>,
    watch: bool,
    options: &crate::dbplan::DeployOptions,
) -> Vec<Step> {
    let mut steps: Vec<Step> = config
        .components
        .iter()
        .map(|(name, cfg)| {
            let backup = match (cfg.database(), db.get(name)) {
                (Some(d), Some(f)) => f.backup_reason(d),
                (Some(_), None) => Some("nothing is known about the pending migrations".into()),
                _ => None,
            };
            restore_point_step(name, backup)
        })
        .collect();
    for (name, cfg) in &config.components {
        if cfg.database().is_some() {
            if let Some(f) = db.get(name) {
                steps.extend(crate::dbplan::deploy_steps(name, release, f, options));
            }
            continue;
        }
        steps.extend(component_steps_to(
            name,
            cfg,
            release,
            CommandHook::Deploy,
            artifacts.get(name).map(String::as_str),
        ));
    }
    steps.push(Step {
        id: if watch {
            "ledger.watching".into()
        } else {
            "ledger.good".into()
        },
        title: if watch {
            format!("ledger: {release} is current and watched for its monitoring window")
        } else {
            format!("ledger: {release} is current and good")
        },
        action: Action::Record,
        effects: vec![
            LedgerEffect::Current {
                release: release.into(),
            },
            LedgerEffect::ReleaseState {
                release: release.into(),
                state: if watch {
                    ReleaseState::Watching
                } else {
                    ReleaseState::Good
                },
            },
        ],
        always: false,
    });
    let mut protect = vec![release.to_string()];
    if let Some(good) = ledger.last_good() {
        protect.push(good.name.clone());
    }
    let mut known: Vec<String> = ledger.releases.iter().map(|r| r.name.clone()).collect();
    if !known.iter().any(|k| k == release) {
        known.push(release.to_string());
    }
    for (name, cfg) in &config.components {
        if let ComponentConfig::ReleaseDir(rd) = cfg {
            steps.push(Step {
                id: format!("{name}.prune"),
                title: format!(
                    "{name}: keep the newest {} releases in {}/releases (never {})",
                    rd.keep,
                    rd.root.display(),
                    protect.join(", ")
                ),
                action: Action::Prune {
                    component: name.into(),
                    protect: protect.clone(),
                    known: known.clone(),
                },
                effects: vec![],
                always: false,
            });
        }
    }
    steps
}

/// What a rollback would do, before any step exists: the chosen target and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackTarget {
    pub from: String,
    pub to: String,
    /// Components that move, in the order they are rolled back (reverse config order).
    pub components: Vec<String>,
    /// True when every component ends at `to`, so `to` becomes the current release.
    pub whole: bool,
    /// Component → the version the target release records for it (a database: its level).
    pub versions: BTreeMap<String, String>,
}

/// Chooses the target of a rollback: `to` if given, else the most recent known-good
/// release before the current one.
///
/// `drifted`: components whose live version is known to differ from what the ledger records
/// (changed by hand); they move to a target that is the current release like the components
/// that left it.
pub fn rollback_target(
    config: &Config,
    ledger: &Ledger,
    env: &str,
    to: Option<&str>,
    only: &[String],
    force: bool,
    drifted: &[String],
) -> Result<RollbackTarget, PlanError> {
    let known = || {
        config
            .components
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for c in only {
        if config.component(c).is_none() {
            return Err(PlanError::UnknownComponent(c.clone(), known()));
        }
    }
    let Some(current) = ledger
        .current
        .clone()
        .or_else(|| ledger.releases.last().map(|r| r.name.clone()))
    else {
        return Err(PlanError::NothingDeployed(env.to_string()));
    };
    let target = match to {
        Some(t) => {
            let r = ledger
                .release(t)
                .ok_or_else(|| PlanError::UnknownRelease(t.to_string()))?;
            if matches!(
                r.state,
                ReleaseState::Failed | ReleaseState::RolledBack | ReleaseState::Deploying
            ) && !force
            {
                return Err(PlanError::FaultyTarget {
                    release: t.to_string(),
                    state: r.state,
                });
            }
            r
        }
        None => ledger
            .last_good_before(&current)
            .ok_or_else(|| PlanError::NoKnownGood {
                current: current.clone(),
            })?,
    };
    // Every selected component is planned, even one the ledger says is already at the
    // target: a run killed half-way may have moved it without recording so, and each step
    // checks its own postcondition anyway. The exception is a target that is the current
    // release: only the components that left it (a partial rollback) move back, and when
    // none did there is nothing to do.
    let to_current = ledger.current.as_deref() == Some(target.name.as_str());
    let mut components = Vec::new();
    let mut already = Vec::new();
    for (name, _) in config.components.iter().rev() {
        if !only.is_empty() && !only.contains(name) {
            continue;
        }
        if !target.components.contains_key(name) {
            return Err(PlanError::NoVersion {
                release: target.name.clone(),
                component: name.clone(),
            });
        }
        if to_current
            && ledger.deployed.get(name) == target.components.get(name)
            && !drifted.contains(name)
        {
            already.push(name.clone());
            continue;
        }
        components.push(name.clone());
    }
    if components.is_empty() {
        already.reverse();
        return Err(PlanError::AlreadyThere {
            release: target.name.clone(),
            components: already,
        });
    }
    // Whole when, afterwards, every configured component runs the target.
    let whole = config.components.iter().all(|(name, _)| {
        components.contains(name)
            || (ledger.deployed.get(name) == target.components.get(name) && !drifted.contains(name))
    });
    Ok(RollbackTarget {
        from: current,
        to: target.name.clone(),
        components,
        whole,
        versions: target.components.clone(),
    })
}

/// The steps of a rollback to `target`: for each moving application component (reverse
/// config order) a restore point, then its steps; each database component's steps come from
/// its decision (`db`: facts and decision per database component); then the ledger.
pub fn rollback_plan(
    config: &Config,
    target: &RollbackTarget,
    db: &BTreeMap<String, (DbRollbackFacts, DbDecision)>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for name in &target.components {
        if config.component(name).and_then(|c| c.database()).is_none() {
            steps.push(restore_point_step(name, None));
        }
    }
    for name in &target.components {
        let cfg = config
            .component(name)
            .expect("rollback_target checked the names");
        if let Some(d) = cfg.database() {
            if let Some((facts, decision)) = db.get(name) {
                steps.extend(crate::dbplan::rollback_steps(
                    name,
                    d,
                    &target.from,
                    facts,
                    decision,
                ));
            }
            continue;
        }
        steps.extend(component_steps_to(
            name,
            cfg,
            &target.to,
            CommandHook::Rollback,
            None,
        ));
    }
    let mut effects = Vec::new();
    if target.whole {
        effects.push(LedgerEffect::Current {
            release: target.to.clone(),
        });
        if target.from != target.to {
            effects.push(LedgerEffect::ReleaseState {
                release: target.from.clone(),
                state: ReleaseState::RolledBack,
            });
        }
    }
    steps.push(Step {
        id: "ledger.rolled-back".into(),
        title: if target.whole && target.from == target.to {
            format!(
                "ledger: record {} back at {} (it stays current; nothing is marked rolled-back)",
                target.components.join(", "),
                target.to
            )
        } else if target.whole {
            format!(
                "ledger: {} is current again; {} is marked rolled-back",
                target.to, target.from
            )
        } else {
            format!(
                "ledger: record {} at {} ({} stays current for the other components)",
                target.components.join(", "),
                target.to,
                target.from
            )
        },
        action: Action::Record,
        effects,
        always: false,
    });
    steps
}
