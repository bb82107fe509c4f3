//! `rewind deploy RELEASE`: record the release, take restore points, apply the components in
//! config order, mark the release good.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use rewind_components::host;
use rewind_core::config::ComponentConfig;
use rewind_core::{Action, NewAudit, NewRelease, NewRun, RunKind};
use rewind_store::StoreError;
use serde_json::json;

use super::{Env, absolute, validate_release_name};
use crate::cli::DeployArgs;
use crate::engine::{LockGuard, new_run_id};
use crate::error::{Class, CliError, CliResult, blocked, usage};
use crate::output::Printer;

pub async fn run(env: &Env, args: DeployArgs, printer: &Printer) -> CliResult<ExitCode> {
    validate_release_name(&args.release)?;
    let artifacts = parse_artifacts(env, &args.artifacts)?;
    if args.watch {
        super::watch::require_signals(env)?;
        // One JSON document for the whole story: the runs go under "runs".
        printer.start_capture();
        let result = deploy_and_watch(env, &args, &artifacts, printer).await;
        let mut docs = printer.take_captured();
        return match result {
            Ok(code) => {
                let mut last = docs.pop().unwrap_or_default();
                if let Some(obj) = last.as_object_mut() {
                    obj.insert("runs".into(), serde_json::Value::Array(docs));
                }
                printer.json_value(&last);
                Ok(code)
            }
            Err(mut e) => {
                let mut detail = e.detail.take().unwrap_or_else(|| json!({}));
                if let Some(obj) = detail.as_object_mut() {
                    obj.insert("runs".into(), serde_json::Value::Array(docs));
                }
                Err(e.detail(detail))
            }
        };
    }
    deploy_and_release_lock(env, &args, &artifacts, printer).await
}

async fn deploy_and_watch(
    env: &Env,
    args: &DeployArgs,
    artifacts: &BTreeMap<String, String>,
    printer: &Printer,
) -> CliResult<ExitCode> {
    {
        if env.store.release(&env.name, &args.release).await?.is_some() {
            return deploy_and_release_lock(env, args, artifacts, printer).await;
        }
        let baseline = super::watch::baseline(env, printer).await?;
        match deploy_and_release_lock(env, args, artifacts, printer).await {
            Ok(_) => super::watch::start_and_watch(env, &args.release, baseline, printer).await,
            Err(e) => {
                // The deploy failed. When it got as far as restarting the new version and
                // that version did not come up, that is the "not ready" trigger.
                let Some(step) = e
                    .detail
                    .as_ref()
                    .and_then(|d| d["failed_step"].as_str())
                    .map(str::to_string)
                else {
                    return Err(e);
                };
                let trigger = if step.ends_with(".ready") || step.ends_with(".restart") {
                    "not-ready"
                } else {
                    "deploy-failed"
                };
                // Not printed as an error of its own: the incident line that follows says
                // what failed, and the policy decides what happens next (an operator told
                // "go back with `rewind rollback`" here would start a second rollback).
                let detail = e.detail.clone().unwrap_or_default();
                let error = detail["error"].as_str().unwrap_or("");
                let fired = crate::watch::Fired {
                    trigger: trigger.into(),
                    signal: step.clone(),
                    summary: format!(
                        "{} failed at step {step}: {}",
                        args.release,
                        error.lines().next().unwrap_or("")
                    ),
                    // What an incident needs, not the whole run (`rewind history --run`
                    // has that).
                    evidence: json!({
                        "run": detail["run"],
                        "failed_step": step,
                        "error": error,
                        "seconds": detail["seconds"],
                        "steps_done": detail["steps"]
                            .as_array()
                            .map(|s| {
                                s.iter()
                                    .filter(|r| r["outcome"] == "done" || r["outcome"] == "skipped")
                                    .map(|r| r["id"].clone())
                                    .collect::<Vec<_>>()
                            })
                            .unwrap_or_default(),
                    }),
                };
                super::watch::on_trigger(env, &args.release, fired, Some(&baseline), printer).await
            }
        }
    }
}

async fn deploy_and_release_lock(
    env: &Env,
    args: &DeployArgs,
    artifacts: &BTreeMap<String, String>,
    printer: &Printer,
) -> CliResult<ExitCode> {
    let run_id = new_run_id();
    let lock = LockGuard::acquire(
        env.store.clone(),
        &env.name,
        &run_id,
        env.config.environment.lock_stale_after,
        printer,
    )
    .await?;
    let result = deploy_locked(env, args, artifacts, &run_id, &lock, printer).await;
    lock.release().await;
    result
}

fn parse_artifacts(env: &Env, raw: &[String]) -> CliResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in raw {
        let Some((name, path)) = a.split_once('=') else {
            return Err(usage(format!("--artifact `{a}` is not COMPONENT=PATH"))
                .hint("e.g. --artifact web=./build/shop-1.2.0.tar.gz"));
        };
        match env.config.component(name) {
            None => {
                let known: Vec<_> = env
                    .config
                    .components
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect();
                return Err(usage(format!(
                    "--artifact names component `{name}`, which is not in the config"
                ))
                .hint(format!("known components: {}", known.join(", "))));
            }
            Some(ComponentConfig::ReleaseDir(_)) => {}
            Some(other) => {
                return Err(usage(format!(
                    "component `{name}` is of kind {}, which takes no artifact",
                    other.kind()
                ))
                .hint("its deploy command gets the release name as {release}"));
            }
        }
        let p = Path::new(path);
        if !p.exists() {
            return Err(usage(format!(
                "artifact for `{name}` does not exist: {path}"
            )));
        }
        if out
            .insert(name.to_string(), absolute(p).display().to_string())
            .is_some()
        {
            return Err(usage(format!("--artifact given twice for `{name}`")));
        }
    }
    Ok(out)
}

async fn deploy_locked(
    env: &Env,
    args: &DeployArgs,
    artifacts: &BTreeMap<String, String>,
    run_id: &str,
    lock: &LockGuard,
    printer: &Printer,
) -> CliResult<ExitCode> {
    let (release, watch) = (args.release.as_str(), args.watch);
    if let Some(open) = env.store.unfinished_run(&env.name).await? {
        return Err(unfinished_blocks(&open));
    }
    if let Some(existing) = env.store.release(&env.name, release).await? {
        return Err(usage(format!("release `{release}` is already recorded (state {})", existing.state))
            .hint(format!("releases are never redeployed under the same name; to go back to it run `rewind rollback --to {release}`, or deploy under a new name")));
    }
    let ledger = env.ledger().await?;
    let db = super::db::deploy_facts(env, release).await?;
    super::db::refuse_deploy(&db, args.accept_drift)?;
    let steps = rewind_core::plan::deploy_plan(
        &env.config,
        &ledger,
        release,
        artifacts,
        &db,
        watch,
        &rewind_core::dbplan::DeployOptions {
            accept_drift: args.accept_drift,
            accept_row_loss: args.accept_row_loss,
        },
    );
    precheck(env, &steps).await?;
    if !db.is_empty() {
        printer.note(super::db::describe_deploy_facts(&db).trim_start());
    }
    let actor = host::actor();
    let new_run = NewRun {
        id: run_id.to_string(),
        environment: env.name.clone(),
        kind: RunKind::Deploy,
        release: release.to_string(),
        from_release: ledger.current.clone(),
        actor: actor.clone(),
        steps,
        components: env.config.components.clone(),
    };
    let components: BTreeMap<String, String> = env
        .config
        .components
        .iter()
        .map(|(n, _)| {
            // A database's version is its migration level.
            let version = db
                .get(n)
                .map(|f| f.target_level.clone())
                .unwrap_or_else(|| release.to_string());
            (n.clone(), version)
        })
        .collect();
    let new_release = NewRelease {
        name: release.to_string(),
        components,
        migrations: db
            .iter()
            .map(|(n, f)| (n.clone(), f.set_after.clone()))
            .collect(),
    };
    let audit = NewAudit::new(&actor, "deploy.start")
        .release(release)
        .run(run_id)
        .details(json!({
            "from": ledger.current,
            "artifacts": artifacts,
            "steps": new_run.steps.len(),
            "databases": db,
        }));
    let run = match env
        .store
        .create_run(lock.fence(), &new_run, Some(&new_release), audit)
        .await
    {
        Ok(r) => r,
        Err(e @ StoreError::ReleaseExists { .. }) => return Err(CliError::new(Class::Usage, e)),
        Err(e) => return Err(e.into()),
    };
    printer.note(format!(
        "deploying {release} to {} (run {}, {} steps)",
        env.name,
        run.id,
        run.steps.len()
    ));
    super::rollback::execute_and_close(env, &run, lock, printer, false).await
}

/// The refusal of a deploy on top of an unfinished run (exit 3).
fn unfinished_blocks(open: &rewind_core::Run) -> CliError {
    blocked(format!(
        "run {} ({} {}) is unfinished; a deploy cannot start on top of it",
        open.id, open.kind, open.release
    ))
    .hint("finish it with `rewind resume`, or go back with `rewind rollback`")
}

/// `rewind plan --deploy RELEASE`: the steps of a deploy, the pending migrations classified,
/// drift; nothing changed.
pub async fn plan(
    env: &Env,
    release: &str,
    artifacts: &[String],
    options: rewind_core::dbplan::DeployOptions,
    printer: &Printer,
) -> CliResult<ExitCode> {
    let accept_drift = options.accept_drift;
    validate_release_name(release)?;
    let artifacts = parse_artifacts(env, artifacts)?;
    // What `rewind deploy` refuses first, in its order: a live holder of the lock, then an
    // unfinished run.
    let live = crate::engine::live_holder(
        env.store.as_ref(),
        &env.name,
        env.config.environment.lock_stale_after,
    )
    .await?;
    let blocked = match &live {
        Some(h) => Some(crate::engine::locked_by(&env.name, h)),
        None => env
            .store
            .unfinished_run(&env.name)
            .await?
            .map(|open| unfinished_blocks(&open)),
    };
    if let Some(existing) = env.store.release(&env.name, release).await? {
        return Err(blocked.unwrap_or_else(|| {
            usage(format!(
                "release `{release}` is already recorded (state {})",
                existing.state
            ))
            .hint("releases are never redeployed under the same name")
        }));
    }
    let ledger = env.ledger().await?;
    let db = super::db::deploy_facts(env, release).await?;
    let steps = rewind_core::plan::deploy_plan(
        &env.config,
        &ledger,
        release,
        &artifacts,
        &db,
        false,
        &options,
    );
    let mut text = format!(
        "deploy of {release} to {} (from {}):",
        env.name,
        ledger.current.as_deref().unwrap_or("nothing")
    );
    for (i, s) in steps.iter().enumerate() {
        text.push_str(&format!("\n  {:>2}. {}", i + 1, s.title));
    }
    let dbtext = super::db::describe_deploy_facts(&db);
    if !dbtext.is_empty() {
        text.push_str(&format!("\n\ndatabases:{}", dbtext));
    }
    // What `rewind deploy` checks before it records anything (artifacts, releases on disk),
    // then what it refuses about databases: the plan says whether the deploy would start.
    let refusal = match blocked {
        Some(e) => Some(e),
        None => match precheck(env, &steps).await {
            Err(e) => Some(e),
            Ok(()) => super::db::refuse_deploy(&db, accept_drift).err(),
        },
    };
    match &refusal {
        None => text.push_str("\n\nnothing was changed; `rewind deploy` carries this out"),
        Some(_) => text.push_str(
            "\n\nnothing was changed; `rewind deploy` would REFUSE this release (see below)",
        ),
    }
    let doc = json!({
        "environment": env.name,
        "release": release,
        "from": ledger.current,
        "steps": steps.iter().enumerate().map(|(i, s)| json!({"index": i + 1, "id": s.id, "title": s.title, "action": s.action})).collect::<Vec<_>>(),
        "databases": db,
        "refused": refusal.is_some(),
    });
    match refusal {
        None => {
            printer.text(&text);
            printer.json_value(&doc);
            Ok(ExitCode::SUCCESS)
        }
        Some(e) => {
            // The plan itself, then the refusal as the error (with the deploy's exit code),
            // with the plan in the JSON error's detail.
            printer.text(&text);
            Err(e.detail(doc))
        }
    }
}

/// Checks what can be checked before anything is recorded: every secret the components use
/// can be read, artifacts exist and are of a usable type, rollback targets are on disk.
pub async fn precheck(env: &Env, steps: &[rewind_core::Step]) -> CliResult<()> {
    let cx = rewind_components::Ctx::new(&env.name, env.redactor.clone());
    let mut staged = std::collections::BTreeSet::new();
    let mut problems = Vec::new();
    for step in steps {
        let Some(name) = step.action.component() else {
            continue;
        };
        let Some(cfg) = env.config.component(name) else {
            continue;
        };
        if let Action::Switch { release, .. } = &step.action
            && staged.contains(&(name.to_string(), release.clone()))
        {
            continue;
        }
        if let Action::Stage { release, .. } = &step.action {
            staged.insert((name.to_string(), release.clone()));
        }
        // A secret that cannot be read stops the run here, before anything is recorded.
        let cfg = match env.component(name, cfg) {
            Ok(c) => c,
            Err(e) => {
                let text = format!("{:#}", e.error);
                if !problems.contains(&text) {
                    problems.push(text);
                }
                continue;
            }
        };
        let comp = rewind_components::build(name, &cfg);
        if let Err(e) = comp.precheck(&cx, &step.action).await {
            problems.push(e.to_string());
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(usage(format!(
            "cannot start; nothing was changed:\n  {}",
            problems.join("\n  ")
        )))
    }
}
