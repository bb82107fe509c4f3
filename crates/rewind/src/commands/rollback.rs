//! `rewind plan`, `rewind rollback`, `rewind resume`, and closing a run after execution
//! (shared with `deploy`).

use std::io::IsTerminal;
use std::process::ExitCode;

use rewind_components::host;
use std::collections::BTreeMap;

use rewind_core::dbplan::{DbDecision, DbRollbackFacts};
use rewind_core::plan::{self, PlanError, RollbackTarget};
use rewind_core::{LedgerEffect, NewAudit, NewRun, ReleaseState, Run, RunKind, RunStatus, Step};
use serde_json::json;

use super::Env;
use crate::cli::{RollbackArgs, TargetArgs};
use crate::engine::{Executor, LockGuard, RunEnd, StepReport, install_interrupt, new_run_id};
use crate::error::{CliError, CliResult, failed, usage};
use crate::output::Printer;

/// Every reason a target cannot be chosen is about what was asked (exit 2); each message says
/// what to ask instead.
fn plan_error(e: PlanError) -> CliError {
    CliError::new(crate::error::Class::Usage, e)
}

/// The message when the target is where the environment already is, if `e` says so.
fn already_there(e: &CliError) -> Option<String> {
    match e.error.downcast_ref::<PlanError>() {
        Some(p @ PlanError::AlreadyThere { .. }) => Some(format!("{p}; nothing was changed")),
        _ => None,
    }
}

type DbDecisions = BTreeMap<String, (DbRollbackFacts, DbDecision)>;

/// The target and steps of a rollback, as `rollback` computes them and `plan` shows them.
/// `abandoning`: an unfinished deploy the rollback abandons before it plans (its effects,
/// [`abandon_effects`], are applied to the ledger read here, as the rollback stores them).
async fn make_plan(
    env: &Env,
    args: &TargetArgs,
    abandoning: Option<&Run>,
) -> CliResult<(RollbackTarget, Vec<Step>, DbDecisions)> {
    if let Some(to) = &args.to {
        super::validate_release_name(to)?;
    }
    super::db::mode(args)?;
    let mut ledger = env.ledger().await?;
    if let Some(open) = abandoning {
        ledger.apply(&abandon_effects(open));
    }
    let choose = |drifted: &[String]| {
        plan::rollback_target(
            &env.config,
            &ledger,
            &env.name,
            args.to.as_deref(),
            &args.components,
            args.force,
            drifted,
        )
    };
    let target = match choose(&[]) {
        // The ledger says every component runs the target already; what runs may say
        // otherwise (a symlink or a service changed by hand): those move back.
        Err(PlanError::AlreadyThere {
            release,
            components,
        }) => {
            let drifted = drifted_from(env, &ledger, &components).await;
            if drifted.is_empty() {
                return Err(plan_error(PlanError::AlreadyThere {
                    release,
                    components,
                }));
            }
            choose(&drifted).map_err(plan_error)?
        }
        other => other.map_err(plan_error)?,
    };
    let db = super::db::rollback_decisions(env, &target, args).await?;
    let steps = plan::rollback_plan(&env.config, &target, &db);
    Ok((target, steps, db))
}

/// Of `components`, those whose live version (their `current`) is known and differs from the
/// version the ledger records. A component that cannot tell (no `current`, unreachable) is
/// taken at the ledger's word.
async fn drifted_from(env: &Env, ledger: &plan::Ledger, components: &[String]) -> Vec<String> {
    let mut cx = rewind_components::Ctx::new(&env.name, env.redactor.clone());
    cx.current_release = ledger.current.clone();
    let mut out = Vec::new();
    for name in components {
        let Some(cfg) = env.config.component(name) else {
            continue;
        };
        let Ok(resolved) = rewind_core::secret::resolve(cfg, &env.secrets.lookup()) else {
            continue;
        };
        let live = rewind_components::build(name, &resolved).current(&cx).await;
        if let Ok(Some(v)) = live
            && ledger.deployed.get(name) != Some(&v)
        {
            out.push(name.clone());
        }
    }
    out
}

/// What a rollback records when it abandons an unfinished deploy: the release failed, and it
/// is where the rollback goes back from (its switch may have happened).
fn abandon_effects(open: &Run) -> Vec<LedgerEffect> {
    vec![
        LedgerEffect::ReleaseState {
            release: open.release.clone(),
            state: ReleaseState::Failed,
        },
        LedgerEffect::Current {
            release: open.release.clone(),
        },
    ]
}

/// The refusal of a rollback on top of an unfinished restore (exit 3).
fn restore_unfinished(open: &Run, done: usize) -> CliError {
    crate::error::blocked(format!(
        "{}; a rollback cannot start on top of it",
        describe_unfinished(open, done)
    ))
    .hint("finish it with `rewind resume`")
}

fn describe_unfinished(run: &Run, done: usize) -> String {
    format!(
        "run {} ({} {}, started {} by {}) is {}: {done} of {} steps finished",
        run.id,
        run.kind,
        run.release,
        super::short_time(&run.created_at),
        run.actor,
        run.status,
        run.steps.len()
    )
}

async fn steps_done(env: &Env, run: &Run) -> CliResult<usize> {
    let journal = env.store.journal(&run.id).await?;
    let mut done: Vec<i64> = journal
        .iter()
        .filter(|e| {
            matches!(
                e.event,
                rewind_core::JournalEvent::Done | rewind_core::JournalEvent::Skipped
            )
        })
        .filter_map(|e| e.step)
        .collect();
    done.sort();
    done.dedup();
    Ok(done.len())
}

/// The plan as a person reads it: header, then numbered steps (secrets masked).
fn describe(env: &Env, target: &RollbackTarget, steps: &[Step], db: &DbDecisions) -> String {
    let mut text = format!(
        "rollback of {} from {} to {}{}:",
        env.name,
        target.from,
        target.to,
        if target.whole {
            String::new()
        } else {
            format!(" (only {})", target.components.join(", "))
        }
    );
    for (name, (_, d)) in db {
        text.push_str(&format!("\n  {name}: {}", d.reason()));
    }
    for (i, s) in steps.iter().enumerate() {
        text.push_str(&format!("\n  {:>2}. {}", i + 1, s.title));
    }
    text
}

fn steps_json(steps: &[Step]) -> serde_json::Value {
    json!(steps
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"index": i + 1, "id": s.id, "title": s.title, "action": s.action, "effects": s.effects}))
        .collect::<Vec<_>>())
}

/// `rewind plan`: the exact steps, nothing changed. When `rewind rollback` would be refused
/// (a live holder of the lock, an unfinished restore, a precheck), the plan says so and why,
/// and exits with that refusal's code.
pub async fn plan(env: &Env, args: TargetArgs, printer: &Printer) -> CliResult<ExitCode> {
    let unfinished = env.store.unfinished_run(&env.name).await?;
    let mut text = String::new();
    let mut unfinished_json = serde_json::Value::Null;
    let live = crate::engine::live_holder(
        env.store.as_ref(),
        &env.name,
        env.config.environment.lock_stale_after,
    )
    .await?;
    // What `rewind rollback` refuses before it plans, in its order: the lock, then an
    // unfinished restore.
    let mut refusal: Option<CliError> = None;
    if let Some(h) = &live {
        text.push_str(&format!(
            "first: the environment is locked by run {} ({}, pid {} on {}), which is still working\n",
            h.run_id, h.actor, h.pid, h.host
        ));
        refusal = Some(crate::engine::locked_by(&env.name, h));
    }
    if let Some(run) = &unfinished
        && live.is_some()
    {
        let done = steps_done(env, run).await?;
        unfinished_json = json!({"id": run.id, "kind": run.kind, "release": run.release, "status": run.status, "steps_done": done, "steps": run.steps.len(), "holder_alive": true});
    } else if let Some(run) = &unfinished {
        let done = steps_done(env, run).await?;
        text.push_str(&format!("first: {}\n", describe_unfinished(run, done)));
        match run.kind {
            RunKind::Rollback => text.push_str("  `rewind rollback` resumes it first; its remaining steps:\n"),
            RunKind::Deploy => text.push_str(&format!("  `rewind rollback` abandons it first ({} is marked failed; `rewind resume` would finish it instead), then:\n", run.release)),
            RunKind::Restore => {
                text.push_str("  finish it first with `rewind resume`\n");
                refusal = Some(restore_unfinished(run, done));
            }
        }
        if run.kind == RunKind::Rollback {
            for (i, s) in run.steps.iter().enumerate().skip(done) {
                text.push_str(&format!("  {:>2}. {}\n", i + 1, s.title));
            }
        }
        unfinished_json = json!({"id": run.id, "kind": run.kind, "release": run.release, "status": run.status, "steps_done": done, "steps": run.steps.len(), "holder_alive": false});
    }
    // The rollback abandons an unfinished deploy before it plans: plan on the ledger it
    // will see.
    let abandoning = unfinished
        .as_ref()
        .filter(|r| r.kind == RunKind::Deploy && live.is_none());
    let planned = make_plan(env, &args, abandoning).await;
    let refused_text = "nothing was changed; `rewind rollback` would REFUSE to start (see below)";
    let (target, steps, db) = match planned {
        Ok(p) => p,
        Err(e) if refusal.is_some() => {
            text.push_str(&format!("{:#}\n", e.error));
            text.push_str(refused_text);
            printer.text(text.trim_end());
            let doc = json!({"environment": env.name, "unfinished": unfinished_json, "plan": null, "refused": true, "note": format!("{:#}", e.error)});
            return Err(refusal.unwrap_or(e).detail(doc));
        }
        // With an unfinished rollback there may be nothing further to plan.
        Err(e)
            if unfinished
                .as_ref()
                .is_some_and(|r| r.kind == RunKind::Rollback) =>
        {
            printer.text(text.trim_end());
            printer.json_value(&json!({"unfinished": unfinished_json, "plan": null, "note": format!("{:#}", e.error), "refused": false}));
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) if already_there(&e).is_some() => {
            let msg = already_there(&e).unwrap_or_default();
            text.push_str(&msg);
            printer.text(text.trim_end());
            printer.json_value(&json!({"environment": env.name, "unfinished": unfinished_json, "plan": null, "steps": [], "note": msg, "refused": false}));
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e),
    };
    text.push_str(&describe(env, &target, &steps, &db));
    // What `rewind rollback` checks before it records anything: the plan says whether the
    // rollback would start, and exits as the rollback would when it would not.
    if refusal.is_none() {
        refusal = super::deploy::precheck(env, &steps).await.err();
    }
    match &refusal {
        None => text.push_str("\nnothing was changed; run `rewind rollback` to carry this out"),
        Some(_) => text.push_str(&format!("\n{refused_text}")),
    }
    printer.text(text);
    let doc = json!({
        "environment": env.name,
        "unfinished": unfinished_json,
        "from": target.from,
        "to": target.to,
        "components": target.components,
        "whole": target.whole,
        "databases": db.iter().map(|(n, (f, d))| (n.clone(), json!({"facts": f, "decision": d}))).collect::<serde_json::Map<_, _>>(),
        "steps": steps_json(&steps),
        "refused": refusal.is_some(),
    });
    match refusal {
        None => {
            printer.json_value(&doc);
            Ok(ExitCode::SUCCESS)
        }
        Some(e) => Err(e.detail(doc)),
    }
}

/// `rewind rollback`.
pub async fn rollback(env: &Env, args: RollbackArgs, printer: &Printer) -> CliResult<ExitCode> {
    rollback_with_id(env, &args, &new_run_id(), None, printer).await
}

/// A rollback under a chosen run id, on behalf of an incident when `incident` is given.
pub async fn rollback_with_id(
    env: &Env,
    args: &RollbackArgs,
    run_id: &str,
    incident: Option<&str>,
    printer: &Printer,
) -> CliResult<ExitCode> {
    let lock = LockGuard::acquire(
        env.store.clone(),
        &env.name,
        run_id,
        env.config.environment.lock_stale_after,
        printer,
    )
    .await?;
    let result = rollback_locked(env, args, run_id, incident, &lock, printer).await;
    lock.release().await;
    result
}

async fn rollback_locked(
    env: &Env,
    args: &RollbackArgs,
    run_id: &str,
    incident: Option<&str>,
    lock: &LockGuard,
    printer: &Printer,
) -> CliResult<ExitCode> {
    let actor = host::actor();
    if let Some(open) = env.store.unfinished_run(&env.name).await? {
        let done = steps_done(env, &open).await?;
        match open.kind {
            RunKind::Restore => return Err(restore_unfinished(&open, done)),
            RunKind::Rollback => {
                printer.note(format!("resuming: {}", describe_unfinished(&open, done)));
                env.store
                    .audit_append(
                        &env.name,
                        NewAudit::new(&actor, "run.resume")
                            .run(&open.id)
                            .release(&open.release)
                            .details(json!({"by": "rollback", "steps_done": done})),
                    )
                    .await?;
                let code = execute_and_close(env, &open, lock, printer, true).await?;
                let wanted_other = args.target.to.as_deref().is_some_and(|t| t != open.release);
                if !wanted_other {
                    return Ok(code);
                }
            }
            RunKind::Deploy => {
                printer.warn(format!(
                    "abandoning the unfinished deploy: {}",
                    describe_unfinished(&open, done)
                ));
                env.store
                    .finish_run(
                        lock.fence(),
                        &open.id,
                        RunStatus::Abandoned,
                        Some("abandoned by rollback"),
                        &abandon_effects(&open),
                        NewAudit::new(&actor, "run.abandon")
                            .run(&open.id)
                            .release(&open.release)
                            .details(json!({"by": run_id, "steps_done": done})),
                    )
                    .await?;
            }
        }
    }
    // The abandoned deploy's effects are stored by now: the ledger read has them.
    let (target, steps, db) = match make_plan(env, &args.target, None).await {
        Ok(p) => p,
        Err(e) if already_there(&e).is_some() => {
            let msg = already_there(&e).unwrap_or_default();
            printer.text(&msg);
            printer.json_value(&json!({"run": null, "kind": "rollback", "status": "nothing-to-do", "message": msg, "steps": []}));
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e),
    };
    super::deploy::precheck(env, &steps).await?;
    let shown = describe(env, &target, &steps, &db);
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(
                usage("rollback needs confirmation, and stdin is not a terminal").hint(
                    "pass --yes to roll back without a prompt; `rewind plan` shows the steps first",
                ),
            );
        }
        printer.prompt(format!("{shown}\nroll back now? [y/N] "));
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            printer.note("not rolled back; nothing was changed");
            return Ok(ExitCode::from(1));
        }
    } else {
        printer.note(shown);
    }
    let new_run = NewRun {
        id: run_id.to_string(),
        environment: env.name.clone(),
        kind: RunKind::Rollback,
        release: target.to.clone(),
        from_release: Some(target.from.clone()),
        actor: actor.clone(),
        steps,
        components: env
            .config
            .components
            .iter()
            .filter(|(n, _)| target.components.contains(n))
            .cloned()
            .collect(),
    };
    let audit = NewAudit::new(&actor, "rollback.start")
        .release(&target.to)
        .run(run_id)
        .details(json!({
            "from": target.from,
            "to": target.to,
            "components": target.components,
            "whole": target.whole,
            "incident": incident,
        }));
    let run = env
        .store
        .create_run(lock.fence(), &new_run, None, audit)
        .await?;
    execute_and_close(env, &run, lock, printer, false).await
}

/// `rewind resume`.
pub async fn resume(env: &Env, printer: &Printer) -> CliResult<ExitCode> {
    let Some(open) = env.store.unfinished_run(&env.name).await? else {
        let last = env.store.runs(&env.name, 1).await?;
        let mut msg = "nothing to resume: no unfinished run".to_string();
        if let Some(r) = last.first() {
            msg.push_str(&format!(
                "; the last run, {} ({} {}), {}",
                r.id, r.kind, r.release, r.status
            ));
            if let Some(e) = &r.error {
                msg.push_str(&format!(": {}", e.lines().next().unwrap_or("")));
            }
        }
        printer.text(&msg);
        printer.json_value(&json!({"resumed": null, "message": msg}));
        return Ok(ExitCode::SUCCESS);
    };
    // The lock decides who resumes: a live holder (the process still running this run, or
    // another resume that got there first) blocks with exit 3; only a dead or stale holder
    // is taken over.
    let lock = LockGuard::acquire(
        env.store.clone(),
        &env.name,
        &open.id,
        env.config.environment.lock_stale_after,
        printer,
    )
    .await?;
    let result = async {
        // Read again under the lock: another process may have finished the run between the
        // first read and taking the lock.
        let Some(open) = env.store.unfinished_run(&env.name).await? else {
            let msg = format!(
                "nothing to resume: run {} was finished by another process meanwhile",
                open.id
            );
            printer.text(&msg);
            printer.json_value(&json!({"resumed": null, "message": msg}));
            return Ok(ExitCode::SUCCESS);
        };
        let done = steps_done(env, &open).await?;
        printer.note(format!("resuming: {}", describe_unfinished(&open, done)));
        let audit = NewAudit::new(&host::actor(), "run.resume")
            .run(&open.id)
            .release(&open.release)
            .details(json!({"by": "resume", "steps_done": done}));
        env.store.audit_append(&env.name, audit).await?;
        execute_and_close(env, &open, &lock, printer, true).await
    }
    .await;
    lock.release().await;
    result
}

/// Runs a recorded run's remaining steps and closes it: succeeded, failed (a deploy's release
/// is marked failed) or interrupted (resumable).
pub async fn execute_and_close(
    env: &Env,
    run: &Run,
    lock: &LockGuard,
    printer: &Printer,
    resumed: bool,
) -> CliResult<ExitCode> {
    let actor = host::actor();
    let components = env.run_components(run)?;
    let interrupt = install_interrupt(printer.quiet);
    let exec = Executor {
        store: env.store.clone(),
        env: env.name.clone(),
        actor: actor.clone(),
        redactor: env.redactor.clone(),
        printer,
        interrupt,
        components,
    };
    let started = std::time::Instant::now();
    let (end, reports) = exec.execute(run, lock).await?;
    let seconds = started.elapsed().as_secs_f64();
    let summary = |status: &str, error: Option<&str>, reports: &[StepReport]| {
        let failed_step = reports
            .iter()
            .find(|r| r.outcome == "failed")
            .map(|r| r.id.clone());
        json!({
            "failed_step": failed_step,
            "run": run.id,
            "kind": run.kind,
            "release": run.release,
            "from": run.from_release,
            "status": status,
            "resumed": resumed,
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "error": error,
            "steps": reports,
        })
    };
    match end {
        RunEnd::Succeeded => {
            env.store
                .finish_run(lock.fence(), &run.id, RunStatus::Succeeded, None, &[], NewAudit::new(&actor, "run.succeeded").run(&run.id).release(&run.release).details(json!({"kind": run.kind, "seconds": (seconds * 1000.0).round() / 1000.0})))
                .await?;
            printer.json_value(&summary("succeeded", None, &reports));
            let what = match run.kind {
                RunKind::Deploy => format!("deployed {} to {}", run.release, env.name),
                RunKind::Rollback => format!(
                    "rolled {} back from {} to {}",
                    env.name,
                    run.from_release.as_deref().unwrap_or("?"),
                    run.release
                ),
                RunKind::Restore => format!("restored the database of {}", env.name),
            };
            printer.text(format!(
                "{} in {seconds:.2}s (run {})",
                printer.green(&what),
                run.id
            ));
            Ok(ExitCode::SUCCESS)
        }
        RunEnd::Failed { step, error } => {
            let effects = match run.kind {
                RunKind::Deploy => vec![
                    LedgerEffect::ReleaseState {
                        release: run.release.clone(),
                        state: ReleaseState::Failed,
                    },
                    LedgerEffect::Current {
                        release: run.release.clone(),
                    },
                ],
                RunKind::Rollback | RunKind::Restore => vec![],
            };
            env.store
                .finish_run(
                    lock.fence(),
                    &run.id,
                    RunStatus::Failed,
                    Some(&error),
                    &effects,
                    NewAudit::new(&actor, "run.failed")
                        .run(&run.id)
                        .release(&run.release)
                        .details(json!({"step": step, "error": error})),
                )
                .await?;
            let mut err = failed(format!(
                "{} of {} failed at step {step}:\n{error}",
                run.kind, run.release
            ));
            err = match run.kind {
                // The first release has nothing before it to go back to.
                RunKind::Deploy if run.from_release.is_none() => err.hint(format!(
                    "{} is marked failed; it was the first release, so there is nothing to roll back to: fix the cause and deploy under a new name (a database's backup taken before it is in `rewind backup list`)",
                    run.release
                )),
                RunKind::Deploy => err
                    .hint(format!("{} is marked failed; go back with `rewind rollback` (see `rewind plan`)", run.release)),
                RunKind::Rollback => err.hint("fix the cause, then run `rewind rollback` again: steps already done are checked and skipped"),
                RunKind::Restore => err.hint("fix the cause, then run `rewind backup restore` again (`rewind backup list` shows the backup taken just before)"),
            };
            Err(err.detail(summary("failed", Some(&error), &reports)))
        }
        RunEnd::Interrupted { next_step } => {
            let why = "interrupted";
            env.store
                .finish_run(
                    lock.fence(),
                    &run.id,
                    RunStatus::Interrupted,
                    Some(why),
                    &[],
                    NewAudit::new(&actor, "run.interrupted")
                        .run(&run.id)
                        .release(&run.release)
                        .details(json!({"next_step": next_step, "reason": why})),
                )
                .await?;
            Err(failed(format!(
                "{} of {} stopped before step {next_step} ({why}); nothing is half-done",
                run.kind, run.release
            ))
            .hint("`rewind resume` finishes it; `rewind plan` shows what is left")
            .detail(summary("interrupted", Some(why), &reports)))
        }
    }
}
