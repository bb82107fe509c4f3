//! The monitoring window around a deploy: `rewind deploy RELEASE --watch` and `rewind watch`.
//! On a trigger: open an incident, roll back through the executor (policy `rollback`), verify
//! with the same signals, and mark the release; when the window closes cleanly, the release
//! becomes good (the new last known-good).

use std::process::ExitCode;
use std::time::Duration;

use rewind_components::host;
use rewind_core::config::WatchPolicy;
use rewind_core::{Incident, IncidentStatus, LedgerEffect, NewAudit, ReleaseState, Watch};
use serde_json::{Value, json};

use super::Env;
use crate::engine::new_run_id;
use crate::error::{CliError, CliResult, failed, usage};
use crate::output::Printer;
use crate::watch::{Baseline, Ending, Fired, run_window, sample_baseline};

/// Refuses to watch when there is nothing to watch, or when a secret the signals use cannot
/// be read (before anything is deployed).
pub fn require_signals(env: &Env) -> CliResult<()> {
    if env.config.watch.has_signals() {
        env.watch_config().map(|_| ())
    } else {
        Err(usage("nothing to watch: the config has no [[watch.probe]], [[watch.prometheus]] or [[watch.check]]")
            .hint("add a probe, e.g.\n  [[watch.probe]]\n  name = \"health\"\n  url = \"http://127.0.0.1:8080/health\""))
    }
}

/// Samples the signals before the switch (against the release running now).
pub async fn baseline(env: &Env, printer: &Printer) -> CliResult<Baseline> {
    let cfg = &env.watch_config()?;
    let current = env.store.current_release(&env.name).await?;
    if cfg.baseline.is_zero() || current.is_none() {
        return Ok(Baseline::new());
    }
    let current = current.unwrap_or_default();
    printer.note(format!(
        "sampling a baseline of {current} for {} (the same signals, before the switch)",
        rewind_core::units::format_duration(cfg.baseline)
    ));
    let b = sample_baseline(cfg, &current, cfg.baseline, &env.redactor).await;
    let q = cfg.latency_quantile.0 * 100.0;
    for (name, v) in &b {
        let latency = match (v["latency_ms"].as_f64(), v["latency_bound_ms"].as_f64()) {
            (Some(l), Some(u)) => format!("p{q:.0} {l:.0} ms (upper bound {u:.0} ms)"),
            (Some(l), None) => format!(
                "p{q:.0} {l:.0} ms — too few requests to bound it, so no latency trigger (raise `baseline` or the probe's `rate`)"
            ),
            _ => "-".to_string(),
        };
        printer.note(format!(
            "  {name}: {} requests, {} failed, {latency}",
            v["requests"], v["failed"]
        ));
    }
    Ok(b)
}

/// Records the window and watches it to the end. `deploy --watch` calls this right after the
/// deploy run succeeded.
pub async fn start_and_watch(
    env: &Env,
    release: &str,
    baseline: Baseline,
    printer: &Printer,
) -> CliResult<ExitCode> {
    let cfg = &env.config.watch;
    let watch = Watch {
        environment: env.name.clone(),
        release: release.to_string(),
        started_at: rewind_core::now_rfc3339(),
        window_secs: cfg.window.as_secs_f64(),
        baseline: json!(baseline),
        status: "watching".into(),
    };
    env.store
        .begin_watch(
            &watch,
            &[],
            NewAudit::new(&host::actor(), "watch.start")
                .release(release)
                .details(json!({
                    "window": rewind_core::units::format_duration(cfg.window),
                    "alpha": cfg.alpha,
                    "policy": cfg.policy,
                    "baseline": baseline,
                })),
        )
        .await?;
    watch_window(env, watch, printer).await
}

/// `rewind watch`: attach to the release being watched (or take over from a watcher that
/// died), for the rest of its window.
pub async fn attach(env: &Env, printer: &Printer) -> CliResult<ExitCode> {
    require_signals(env)?;
    let watch = match env.store.active_watch(&env.name).await? {
        Some(w) => w,
        None => {
            // A deploy killed between its last step and recording the window leaves the
            // release `watching` with no window row: start the window now.
            let ledger = env.ledger().await?;
            let watching = ledger
                .current
                .as_deref()
                .and_then(|c| ledger.release(c))
                .filter(|r| r.state == ReleaseState::Watching);
            match watching {
                Some(r) => {
                    printer.warn(format!("{} is marked watching but has no recorded window; watching it from now, without a baseline", r.name));
                    let name = r.name.clone();
                    return start_and_watch(env, &name, Baseline::new(), printer).await;
                }
                None => {
                    let msg = "no release is being watched".to_string();
                    printer.text(&msg);
                    printer.json_value(&json!({"watching": null, "message": msg}));
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    };
    printer.note(format!(
        "attaching to the monitoring window of {} (started {})",
        watch.release,
        super::short_time(&watch.started_at)
    ));
    watch_window(env, watch, printer).await
}

async fn watch_window(env: &Env, watch: Watch, printer: &Printer) -> CliResult<ExitCode> {
    let cfg = &env.watch_config()?;
    let started = rewind_core::parse_ts(&watch.started_at).unwrap_or_else(jiff::Timestamp::now);
    let elapsed = (jiff::Timestamp::now() - started)
        .total(jiff::Unit::Second)
        .unwrap_or(0.0)
        .max(0.0);
    let left = Duration::from_secs_f64((watch.window_secs - elapsed).max(0.0));
    let baseline: Baseline = watch
        .baseline
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let store = env.store.clone();
    let (envname, release) = (env.name.clone(), watch.release.clone());
    let title = format!("watching {} on {}", watch.release, env.name);
    let window = crate::watch::Window {
        cfg,
        release: &watch.release,
        baseline: &baseline,
        left,
        redactor: &env.redactor,
        quiet: printer.quiet || printer.json,
        title: &title,
    };
    let (ending, summary) = run_window(window, || {
        let (store, envname, release) = (store.clone(), envname.clone(), release.clone());
        async move {
            match store.release(&envname, &release).await {
                Ok(Some(r)) => r.state == ReleaseState::Watching,
                Ok(None) => false,
                // A passing store error does not end the window.
                Err(_) => true,
            }
        }
    })
    .await;
    let actor = host::actor();
    match ending {
        Ending::Passed => {
            env.store
                .end_watch(
                    &env.name,
                    &watch.release,
                    "passed",
                    &[LedgerEffect::ReleaseState {
                        release: watch.release.clone(),
                        state: ReleaseState::Good,
                    }],
                    NewAudit::new(&actor, "watch.passed")
                        .release(&watch.release)
                        .details(json!({"signals": summary})),
                )
                .await?;
            printer.json_value(
                &json!({"release": watch.release, "watch": "passed", "signals": summary}),
            );
            printer.text(printer.green(&format!(
                "the monitoring window of {} closed cleanly; {} is good (the new last known-good)",
                watch.release, watch.release
            )));
            Ok(ExitCode::SUCCESS)
        }
        Ending::Stopped(why) => {
            printer.json_value(&json!({"release": watch.release, "watch": "stopped", "reason": why, "signals": summary}));
            printer.warn(format!("stopped watching {}: {why}", watch.release));
            if why.starts_with("interrupted") {
                Err(failed(format!(
                    "stopped watching {} before its window closed",
                    watch.release
                ))
                .hint("`rewind watch` attaches again for the rest of the window"))
            } else {
                Ok(ExitCode::SUCCESS)
            }
        }
        Ending::Fired(f) => on_trigger(env, &watch.release, f, Some(&baseline), printer).await,
    }
}

/// A trigger fired (or the release did not become ready): incident, then rollback and
/// verification unless the policy is alert-only.
pub async fn on_trigger(
    env: &Env,
    release: &str,
    f: Fired,
    baseline: Option<&Baseline>,
    printer: &Printer,
) -> CliResult<ExitCode> {
    let cfg = &env.config.watch;
    let actor = host::actor();
    let incident = Incident {
        id: format!("inc-{}", new_run_id()),
        environment: env.name.clone(),
        release: release.to_string(),
        trigger: f.trigger.clone(),
        signal: Some(f.signal.clone()),
        summary: f.summary.clone(),
        evidence: f.evidence.clone(),
        status: IncidentStatus::Open,
        rollback_run: None,
        opened_at: rewind_core::now_rfc3339(),
        updated_at: rewind_core::now_rfc3339(),
    };
    env.store
        .open_incident(
            &incident,
            NewAudit::new(&actor, "incident.open")
                .release(release)
                .details(json!({
                    "incident": incident.id, "trigger": f.trigger, "signal": f.signal,
                    "summary": incident.summary, "evidence": f.evidence, "policy": cfg.policy,
                })),
        )
        .await?;
    printer.warn(format!(
        "incident {}: {} trigger fired — {}",
        incident.id, f.trigger, incident.summary
    ));
    if cfg.policy == WatchPolicy::AlertOnly {
        env.store
            .update_incident(
                &incident.id,
                IncidentStatus::Alerted,
                None,
                NewAudit::new(&actor, "incident.alert")
                    .release(release)
                    .details(json!({"incident": incident.id})),
            )
            .await?;
        env.store
            .end_watch(
                &env.name,
                release,
                "fired",
                &[LedgerEffect::ReleaseState {
                    release: release.to_string(),
                    state: ReleaseState::Failed,
                }],
                NewAudit::new(&actor, "watch.fired")
                    .release(release)
                    .details(json!({"incident": incident.id, "policy": "alert-only"})),
            )
            .await?;
        let detail = json!({"incident": incident, "rolled_back": false});
        return Err(failed(format!("{release} failed its monitoring window ({}); policy is alert-only, so nothing was rolled back", f.trigger))
            .hint("roll back by hand with `rewind rollback`")
            .detail(detail));
    }

    // Roll back through the executor, exactly as `rewind rollback --yes` would.
    printer.note(format!("rolling back {release} (incident {})", incident.id));
    let args = crate::cli::RollbackArgs {
        target: crate::cli::TargetArgs {
            to: None,
            components: vec![],
            force: false,
            restore: false,
            to_time: None,
            revert_anyway: false,
            accept_row_loss: false,
        },
        yes: true,
    };
    let rollback_run = new_run_id();
    // The window is over and the release failed it, whatever becomes of the rollback: a
    // rollback that fails must not leave it `watching` (status would say so, and `rewind
    // watch` would start its window again). A rollback that succeeds marks it rolled-back.
    env.store
        .end_watch(
            &env.name,
            release,
            "fired",
            &[LedgerEffect::ReleaseState {
                release: release.to_string(),
                state: ReleaseState::Failed,
            }],
            NewAudit::new(&actor, "watch.fired")
                .release(release)
                .details(json!({"incident": incident.id})),
        )
        .await?;
    let result =
        super::rollback::rollback_with_id(env, &args, &rollback_run, Some(&incident.id), printer)
            .await;
    if let Err(e) = result {
        // The run, if the rollback got as far as recording one.
        let run = env
            .store
            .run(&rollback_run)
            .await
            .ok()
            .flatten()
            .map(|r| r.id);
        let reason = format!("the automatic rollback failed: {:#}", e.error);
        env.store
            .update_incident(
                &incident.id,
                IncidentStatus::Escalated,
                run.as_deref(),
                NewAudit::new(&actor, "incident.escalate")
                    .release(release)
                    .details(
                        json!({"incident": incident.id, "reason": reason, "rollback_run": run}),
                    ),
            )
            .await?;
        // Always a failure after changes (exit 1): the release was deployed, whatever the
        // rollback's own refusal says (a usage error, a held lock: "nothing was changed" is
        // true of the rollback only).
        return Err(CliError {
            class: crate::error::Class::Failed,
            error: e.error.context(format!(
                "incident {}: {release} was deployed and failed its monitoring window ({}), and the automatic rollback failed; {release} is marked failed and a person is needed",
                incident.id, f.trigger
            )),
            hints: e.hints,
            detail: Some(json!({"incident": incident.id, "release": release, "watch": "fired", "rolled_back": false, "rollback_run": run, "error": reason})),
        });
    }
    let target = env
        .store
        .current_release(&env.name)
        .await?
        .unwrap_or_default();

    // Verify with the same signals against what runs now.
    let verify_for = cfg
        .baseline
        .clamp(Duration::from_secs(3), Duration::from_secs(30));
    printer.note(format!(
        "verifying {target} with the same signals for {}",
        rewind_core::units::format_duration(verify_for)
    ));
    let empty = Baseline::new();
    let signals = env.watch_config()?;
    let window = crate::watch::Window {
        cfg: &signals,
        release: &target,
        baseline: baseline.unwrap_or(&empty),
        left: verify_for,
        redactor: &env.redactor,
        quiet: true,
        title: "verifying",
    };
    let (ending, summary) = run_window(window, || async { true }).await;
    let verified = !matches!(ending, Ending::Fired(_));
    let (status, action) = if verified {
        (IncidentStatus::RolledBack, "incident.rolled-back")
    } else {
        (IncidentStatus::Escalated, "incident.escalate")
    };
    let verify_json: Value = match &ending {
        Ending::Fired(v) => {
            json!({"passed": false, "trigger": v.trigger, "summary": v.summary, "signals": summary})
        }
        _ => json!({"passed": true, "signals": summary}),
    };
    env.store
        .update_incident(
            &incident.id,
            status,
            Some(&rollback_run),
            NewAudit::new(&actor, action)
                .release(release)
                .run(&rollback_run)
                .details(json!({"incident": incident.id, "verification": verify_json})),
        )
        .await?;
    let detail = json!({"incident": incident.id, "trigger": f.trigger, "summary": incident.summary, "evidence": f.evidence, "rolled_back_to": target, "rollback_run": rollback_run, "verification": verify_json});
    if verified {
        printer.json_value(
            &json!({"release": release, "watch": "fired", "rolled_back": true, "incident": detail}),
        );
        printer.text(format!(
            "{release} was rolled back to {target} after the {} trigger fired; verified healthy.\n  incident {}: {}",
            f.trigger, incident.id, incident.summary
        ));
        // The deploy did not succeed: the operation failed, the rollback worked.
        Ok(ExitCode::from(1))
    } else {
        Err(failed(format!("{release} was rolled back to {target}, but verification still fails; escalate to a person (incident {})", incident.id)).detail(detail))
    }
}
