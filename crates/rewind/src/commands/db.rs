//! Databases in deploy, plan and rollback (the facts the planner needs), and
//! `rewind backup create|list|verify|restore`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use rewind_components::database::{BackupMeta, Database, DbTarget};
use rewind_components::{Component, Ctx, host};
use rewind_core::config::ComponentConfig;
use rewind_core::dbplan::{self, DbDecision, DbDeployFacts, DbMode, DbRollbackFacts};
use rewind_core::plan::RollbackTarget;
use rewind_core::{NewAudit, NewRun, RunKind};
use serde_json::json;

use super::Env;
use crate::cli::{BackupCommand, TargetArgs};
use crate::engine::{LockGuard, new_run_id};
use crate::error::{CliError, CliResult, blocked, failed, usage};
use crate::output::Printer;

/// The database components of the config, built (their secrets filled in).
pub fn databases(env: &Env) -> CliResult<Vec<(String, Database)>> {
    let names: Vec<&str> = env
        .config
        .components
        .iter()
        .filter(|(_, c)| c.database().is_some())
        .map(|(n, _)| n.as_str())
        .collect();
    databases_named(env, &names)
}

/// The database components named, built (their secrets filled in), in config order.
fn databases_named(env: &Env, names: &[&str]) -> CliResult<Vec<(String, Database)>> {
    let mut out = Vec::new();
    for (n, c) in &env.config.components {
        if c.database().is_none() || !names.contains(&n.as_str()) {
            continue;
        }
        match env.component(n, c)? {
            ComponentConfig::Sqlite(d) => out.push((n.clone(), Database::new(n, false, d))),
            ComponentConfig::Postgres(d) => out.push((n.clone(), Database::new(n, true, d))),
            _ => {}
        }
    }
    Ok(out)
}

fn component_err(e: rewind_components::ComponentError) -> CliError {
    failed(e)
}

/// What deploying `release` does to every database component.
pub async fn deploy_facts(env: &Env, release: &str) -> CliResult<BTreeMap<String, DbDeployFacts>> {
    let mut out = BTreeMap::new();
    // What the ledger recorded for the release that runs now (each database's set).
    let current = match env.store.current_release(&env.name).await? {
        Some(c) => env.store.release(&env.name, &c).await?,
        None => None,
    };
    for (name, db) in databases(env)? {
        let recorded = current.as_ref().and_then(|r| r.migrations.get(&name));
        let facts = db.deploy_facts(release, recorded.map(Vec::as_slice)).await.map_err(|e| {
            failed(e).hint(
                "nothing was changed; the migrations must be readable and the database reachable to plan",
            )
        })?;
        out.insert(name, facts);
    }
    Ok(out)
}

/// Refuses a deploy before anything runs when a database component cannot take it as its
/// tool would: every reason at once (what the tool would refuse, scripts it cannot run, a
/// migration left half-done, and — without `--accept-drift` — edited applied migrations).
pub fn refuse_deploy(facts: &BTreeMap<String, DbDeployFacts>, accept_drift: bool) -> CliResult<()> {
    let mut problems = Vec::new();
    let mut drift = false;
    for (name, f) in facts {
        problems.extend(f.refusals.iter().map(|r| format!("{name}: {r}")));
        if !accept_drift && !f.drifted.is_empty() {
            drift = true;
            problems.extend(
                f.drift
                    .iter()
                    .filter(|d| !d.contains("not drift"))
                    .map(|d| format!("{name}: {d}")),
            );
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let mut e = failed(format!(
        "the deploy is refused; nothing was changed:\n  {}",
        problems.join("\n  ")
    ));
    if drift {
        e = e.hint("an applied migration was edited: put the file back as it was applied, or write a new migration; `--accept-drift` records the edited files' checksums as the tool's repair would");
    }
    Err(e.hint("`rewind plan --deploy RELEASE` shows the whole plan"))
}

/// The classification of every pending migration, the drift, and what a rollback would do,
/// for a person.
pub fn describe_deploy_facts(facts: &BTreeMap<String, DbDeployFacts>) -> String {
    let mut text = String::new();
    for (name, f) in facts {
        text.push_str(&format!(
            "\n{name}: {} migrations, level {} → {}",
            f.format, f.level_now, f.target_level
        ));
        if f.pending.is_empty() {
            text.push_str("\n  in this release but not applied: none");
        } else {
            text.push_str("\n  in this release but not applied (applied in this order):");
        }
        for m in &f.pending {
            text.push_str(&format!("\n    {}", m.describe()));
            if m.revert_loses_data() && !f.empty {
                text.push_str(
                    "\n      → reverting it cannot bring the old data back: the restore point takes a full backup, and a rollback restores it instead",
                );
            }
            for w in &m.warnings {
                text.push_str(&format!("\n      ! {w}"));
            }
        }
        if !f.unknown.is_empty() {
            text.push_str(&format!(
                "\n  applied but not in this release: {}",
                f.unknown.join(", ")
            ));
        }
        for d in &f.drift {
            text.push_str(&format!("\n  DRIFT: {d}"));
        }
        for n in &f.notes {
            text.push_str(&format!("\n  note: {n}"));
        }
        for r in &f.refusals {
            text.push_str(&format!("\n  REFUSED: {r}"));
        }
    }
    text
}

/// The rollback options that concern databases.
pub fn mode(args: &TargetArgs) -> CliResult<DbMode> {
    match (&args.to_time, args.restore) {
        (Some(t), _) => {
            let ts = parse_time(t)?;
            Ok(DbMode::PointInTime(rewind_core::format_ts(ts)))
        }
        (None, true) => Ok(DbMode::Restore),
        (None, false) => Ok(DbMode::Auto),
    }
}

/// A time with an explicit zone: `2026-11-21T14:03:00Z`, `…+01:00`, or
/// `2026-11-21T14:03:00[Europe/Paris]`. A time without one is refused.
pub fn parse_time(t: &str) -> CliResult<jiff::Timestamp> {
    rewind_dbkit::parse_target_time(t)
        .map_err(|e| usage(format!("--to-time: {e}")).hint("nothing was changed"))
}

/// Walks the decision tree for every database component of a rollback.
pub async fn rollback_decisions(
    env: &Env,
    target: &RollbackTarget,
    args: &TargetArgs,
) -> CliResult<BTreeMap<String, (DbRollbackFacts, DbDecision)>> {
    let mode = mode(args)?;
    let mut out = BTreeMap::new();
    // Only the databases the rollback moves are built: another's secret is not needed.
    let dbs: Vec<&str> = env
        .config
        .components
        .iter()
        .filter(|(n, c)| c.database().is_some() && target.components.contains(n))
        .map(|(n, _)| n.as_str())
        .collect();
    if mode != DbMode::Auto && dbs.is_empty() {
        return Err(usage(
            "--restore and --to-time are for database components, and this rollback moves none",
        ));
    }
    for (name, db) in databases_named(env, &dbs)? {
        let target_level = target
            .versions
            .get(&name)
            .cloned()
            .unwrap_or_else(|| dbplan::NO_LEVEL.into());
        let set = env
            .store
            .release(&env.name, &target.to)
            .await?
            .and_then(|r| r.migrations.get(&name).cloned());
        let db_target = DbTarget {
            release: target.to.clone(),
            level: target_level.clone(),
            set,
        };
        let mut facts = db
            .rollback_facts(&target.from, &db_target)
            .await
            .map_err(failed)?;
        facts.accept_row_loss = args.accept_row_loss;
        if matches!(mode, DbMode::PointInTime(_)) {
            facts.pitr_window = db.pitr_window().await.map_err(failed)?;
        }
        let decision = dbplan::decide(&name, db.config(), &facts, &mode, args.revert_anyway)
            .map_err(|e| {
                // Asking for a point in time without [pitr] is bad usage, not a failure.
                let class = match e {
                    dbplan::DbRefusal::NoPitr { .. } => crate::error::Class::Usage,
                    _ => crate::error::Class::Failed,
                };
                CliError::new(class, e).hint(
                    "nothing was changed; `rewind backup list` shows the backups, `rewind plan` the steps",
                )
            })?;
        if let DbMode::PointInTime(time) = &mode {
            level_at(env, &name, time, &target_level, &target.to).await?;
        }
        out.insert(name, (facts, decision));
    }
    Ok(out)
}

/// A point-in-time restore puts the database where it was at `time`: refuse unless the
/// release that ran then recorded the target's level for this database (otherwise the ledger
/// would record a level the restored database does not have).
async fn level_at(
    env: &Env,
    component: &str,
    time: &str,
    target_level: &str,
    target: &str,
) -> CliResult<()> {
    let Some(t) = rewind_core::parse_ts(time) else {
        return Ok(());
    };
    // The last run that finished (and changed what runs) before `time` says what ran then.
    let runs = env.store.runs(&env.name, 10_000).await?;
    let live = runs.iter().find(|r| {
        matches!(r.kind, RunKind::Deploy | RunKind::Rollback)
            && r.status == rewind_core::RunStatus::Succeeded
            && rewind_core::parse_ts(&r.updated_at).is_some_and(|u| u <= t)
    });
    let Some(run) = live else {
        return Err(failed(format!(
            "{component}: nothing rewind deployed had finished by {time}: a restore to that time cannot be matched with a release"
        ))
        .hint("choose a time after a deploy finished (`rewind history` shows the runs)"));
    };
    let Some(release) = env.store.release(&env.name, &run.release).await? else {
        return Ok(());
    };
    match release.components.get(component) {
        Some(level) if level == target_level => Ok(()),
        Some(level) => Err(failed(format!(
            "{component}: at {time} release {} was live, with {component} at level {level}; a restore to that time cannot leave it at {target}'s level {target_level}",
            release.name
        ))
        .hint(format!(
            "roll back to the release that ran then: rewind rollback --to {} --to-time {time} (add --force if it is marked failed)",
            release.name
        ))),
        None => Ok(()),
    }
}

// ---- rewind backup ------------------------------------------------------------------------

pub async fn backup(env: &Env, cmd: BackupCommand, printer: &Printer) -> CliResult<ExitCode> {
    match cmd {
        BackupCommand::Create { component } => create(env, component, printer).await,
        BackupCommand::List { component } => list(env, component, printer).await,
        BackupCommand::Verify { id, component } => verify(env, id, component, printer).await,
        BackupCommand::Restore { id, component, yes } => {
            restore(env, id, component, yes, printer).await
        }
    }
}

fn pick(env: &Env, component: Option<String>) -> CliResult<Vec<(String, Database)>> {
    let dbs = databases(env)?;
    if dbs.is_empty() {
        return Err(
            usage("the config has no sqlite or postgres component: nothing to back up")
                .hint("add [components.db] with kind = \"sqlite\" or \"postgres\""),
        );
    }
    match component {
        None => Ok(dbs),
        Some(c) => {
            let names: Vec<String> = dbs.iter().map(|(n, _)| n.clone()).collect();
            let found: Vec<_> = dbs.into_iter().filter(|(n, _)| *n == c).collect();
            if found.is_empty() {
                Err(usage(format!("`{c}` is not a database component"))
                    .hint(format!("database components: {}", names.join(", "))))
            } else {
                Ok(found)
            }
        }
    }
}

fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n} B")
    }
}

/// Takes a backup of `db`, showing the size of its partial file as it grows (only this
/// backup's: not another writer's, not a killed writer's leftovers), or nothing when quiet.
async fn backup_showing_progress(
    printer: &Printer,
    name: &str,
    db: &Database,
    reason: &str,
    level: &str,
) -> rewind_components::Result<BackupMeta> {
    let (tx, mut rx) = tokio::sync::watch::channel(0u64);
    let work = db.backup_with_progress(reason, level, &tx);
    tokio::pin!(work);
    let started = std::time::Instant::now();
    loop {
        tokio::select! {
            r = &mut work => return r,
            Ok(()) = rx.changed() => {
                let bytes = *rx.borrow_and_update();
                if started.elapsed().as_millis() > 400 {
                    printer.note(format!(
                        "  {name}: {} written ({:.1}s)",
                        human_bytes(bytes),
                        started.elapsed().as_secs_f64()
                    ));
                }
            }
        }
    }
}

async fn create(env: &Env, component: Option<String>, printer: &Printer) -> CliResult<ExitCode> {
    let cx = ctx(env).await?;
    let mut made = Vec::new();
    for (name, db) in pick(env, component)? {
        let level = db
            .current(&cx)
            .await
            .map_err(component_err)?
            .unwrap_or_else(|| dbplan::NO_LEVEL.into());
        printer.note(format!(
            "{name}: backing up {} (level {level})",
            db.location()
        ));
        let started = std::time::Instant::now();
        let meta = backup_showing_progress(
            printer,
            &name,
            &db,
            "by hand (rewind backup create)",
            &level,
        )
        .await
        .map_err(component_err)?;
        env.store
            .audit_append(
                &env.name,
                NewAudit::new(&host::actor(), "backup.create").details(json!({
                    "component": name, "id": meta.id, "bytes": meta.bytes, "level": meta.level,
                    "checksum": meta.checksum,
                })),
            )
            .await?;
        printer.text(format!(
            "{name}: backup {} — {} in {:.2}s, level {}, {} tables ({})",
            meta.id,
            human_bytes(meta.bytes),
            started.elapsed().as_secs_f64(),
            meta.level,
            meta.row_counts.len(),
            meta.file.display()
        ));
        made.push(meta);
    }
    printer.json_value(&json!({ "backups": made }));
    Ok(ExitCode::SUCCESS)
}

async fn list(env: &Env, component: Option<String>, printer: &Printer) -> CliResult<ExitCode> {
    let mut table = super::table();
    table.set_header(vec!["component", "id", "taken", "size", "level", "why"]);
    let mut all: Vec<BackupMeta> = Vec::new();
    for (_, db) in pick(env, component)? {
        all.extend(db.list_backups().map_err(component_err)?);
    }
    for b in &all {
        table.add_row(vec![
            b.component.clone(),
            b.id.clone(),
            super::short_time(&b.created_at),
            human_bytes(b.bytes),
            b.level.clone(),
            b.reason.clone(),
        ]);
    }
    if all.is_empty() {
        printer.text("no backups yet; `rewind backup create` takes one (deploys and rollbacks take their own)");
    } else {
        printer.text(table.to_string());
    }
    printer.json_value(&json!({ "backups": all }));
    Ok(ExitCode::SUCCESS)
}

fn find_backup(
    env: &Env,
    id: Option<String>,
    component: Option<String>,
) -> CliResult<(String, Database, BackupMeta)> {
    let mut candidates = Vec::new();
    for (name, db) in pick(env, component)? {
        for b in db.list_backups().map_err(component_err)? {
            if id
                .as_deref()
                .is_none_or(|i| b.id == i || b.id.starts_with(i))
            {
                candidates.push((name.clone(), b));
            }
        }
    }
    candidates.sort_by(|a, b| a.1.created_at.cmp(&b.1.created_at));
    let Some((name, meta)) = candidates.pop() else {
        return Err(usage(match &id {
            Some(i) => format!("no backup `{i}`"),
            None => "no backups yet".into(),
        })
        .hint("`rewind backup list` shows them"));
    };
    if id.is_some()
        && candidates.iter().any(|(_, b)| {
            id.as_deref()
                .is_some_and(|i| b.id.starts_with(i) && b.id != meta.id)
        })
    {
        return Err(usage(format!(
            "`{}` names several backups",
            id.unwrap_or_default()
        ))
        .hint("give more of the id (`rewind backup list`)"));
    }
    let db = databases(env)?
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, d)| d)
        .expect("listed above");
    Ok((name, db, meta))
}

async fn verify(
    env: &Env,
    id: Option<String>,
    component: Option<String>,
    printer: &Printer,
) -> CliResult<ExitCode> {
    let (name, db, meta) = find_backup(env, id, component)?;
    printer.note(format!(
        "{name}: verifying backup {} by restoring it into a scratch database",
        meta.id
    ));
    let report = db.verify_backup(&meta).await;
    let (ok, lines, error) = match &report {
        Ok(r) => (r.failures.is_empty(), r.lines.clone(), None),
        Err(e) => (false, vec![], Some(e.to_string())),
    };
    env.store
        .audit_append(
            &env.name,
            NewAudit::new(&host::actor(), "backup.verify")
                .details(json!({"component": name, "id": meta.id, "ok": ok, "error": error})),
        )
        .await?;
    printer.json_value(
        &json!({"component": name, "id": meta.id, "ok": ok, "checks": lines, "error": error}),
    );
    if let Some(e) = error {
        return Err(failed(format!("backup {} does not restore: {e}", meta.id)));
    }
    let mut text = format!("{name}: backup {}", meta.id);
    for l in &lines {
        text.push_str(&format!("\n  {l}"));
    }
    if ok {
        printer.text(format!(
            "{text}\n{}",
            printer.green("the backup restores and its checks pass")
        ));
        Ok(ExitCode::SUCCESS)
    } else {
        Err(failed(format!("{text}\nthe backup's checks fail")))
    }
}

async fn restore(
    env: &Env,
    id: Option<String>,
    component: Option<String>,
    yes: bool,
    printer: &Printer,
) -> CliResult<ExitCode> {
    let Some(id) = id else {
        return Err(usage("name the backup to restore").hint(
            "`rewind backup list` shows the ids; e.g. rewind backup restore 20261121T140312",
        ));
    };
    let (name, db, meta) = find_backup(env, Some(id), component)?;
    let steps = dbplan::restore_steps(&name, db.config(), &meta.facts());
    let mut shown = format!(
        "restore of {name} from backup {} (taken {}, level {}); writes made since are discarded (kept in the backup taken first):",
        meta.id, meta.created_at, meta.level
    );
    for (i, s) in steps.iter().enumerate() {
        shown.push_str(&format!("\n  {:>2}. {}", i + 1, s.title));
    }
    if !yes {
        return Err(usage(format!("{shown}\nnothing was changed")).hint("pass --yes to restore"));
    }
    // Before anything is frozen or recorded: the backup file is there, the client tools fit.
    super::deploy::precheck(env, &steps).await?;
    printer.note(&shown);
    let run_id = new_run_id();
    let lock = LockGuard::acquire(
        env.store.clone(),
        &env.name,
        &run_id,
        env.config.environment.lock_stale_after,
        printer,
    )
    .await?;
    let result = async {
        if let Some(open) = env.store.unfinished_run(&env.name).await? {
            return Err(blocked(format!(
                "run {} ({} {}) is unfinished; finish it first with `rewind resume`",
                open.id, open.kind, open.release
            )));
        }
        let ledger = env.ledger().await?;
        let release = ledger.current.clone().unwrap_or_else(|| "(none)".into());
        let new_run = NewRun {
            id: run_id.clone(),
            environment: env.name.clone(),
            kind: RunKind::Restore,
            release: release.clone(),
            from_release: ledger.current.clone(),
            actor: host::actor(),
            steps,
            components: env
                .config
                .components
                .iter()
                .filter(|(n, _)| *n == name)
                .cloned()
                .collect(),
        };
        let audit = NewAudit::new(&host::actor(), "restore.start")
            .run(&run_id)
            .details(json!({"component": name, "backup": meta.id, "level": meta.level}));
        let run = env
            .store
            .create_run(lock.fence(), &new_run, None, audit)
            .await?;
        super::rollback::execute_and_close(env, &run, &lock, printer, false).await
    }
    .await;
    lock.release().await;
    result
}

async fn ctx(env: &Env) -> CliResult<Ctx> {
    let mut cx = Ctx::new(&env.name, env.redactor.clone());
    cx.current_release = env.store.current_release(&env.name).await?;
    Ok(cx)
}
