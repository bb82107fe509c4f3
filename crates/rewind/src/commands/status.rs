//! `rewind status`: the current release, what each component runs (as recorded and as read
//! live), the lock, and any unfinished run.

use std::process::ExitCode;

use rewind_components::Ctx;
use serde_json::json;

use super::Env;
use crate::engine::dead_reason;
use crate::error::CliResult;
use crate::output::Printer;

pub async fn run(env: &Env, printer: &Printer) -> CliResult<ExitCode> {
    // Row by row: a release or incident that cannot be read is named; the rest is shown.
    let mut unreadable: Vec<rewind_store::Unreadable> = Vec::new();
    let ledger = rewind_core::plan::Ledger {
        current: env.store.current_release(&env.name).await?,
        deployed: env.store.deployed(&env.name).await?,
        releases: env
            .store
            .read_releases(&env.name)
            .await?
            .into_iter()
            .filter_map(|r| r.map_err(|u| unreadable.push(u)).ok())
            .collect(),
    };
    let current = ledger.current.as_ref().and_then(|c| ledger.release(c));
    let last_good = ledger.last_good();
    let target = ledger
        .current
        .as_deref()
        .and_then(|c| ledger.last_good_before(c))
        .map(|r| r.name.clone());
    let mut cx = Ctx::new(&env.name, env.redactor.clone());
    cx.current_release = ledger.current.clone();
    let mut comps = Vec::new();
    let mut details: Vec<String> = Vec::new();
    let mut table = super::table();
    table.set_header(vec!["component", "kind", "recorded", "live", ""]);
    for (name, cfg) in &env.config.components {
        let recorded = ledger.deployed.get(name).cloned();
        // A secret that cannot be read is this component's problem, not the whole status's.
        let resolved =
            rewind_core::secret::resolve(cfg, &env.secrets.lookup()).map_err(|e| e.to_string());
        let live = match &resolved {
            Ok(c) => rewind_components::build(name, c).current(&cx).await,
            Err(e) => Err(rewind_components::ComponentError::failed(name, e.clone())),
        };
        let (live_text, live_json, note) = match &live {
            Ok(Some(v)) => (
                v.clone(),
                json!(v),
                // A database nothing was applied to is at level `none`: so is one the ledger
                // has not recorded yet.
                if recorded.as_deref() == Some(v.as_str())
                    || (recorded.is_none() && v == rewind_core::dbplan::NO_LEVEL)
                {
                    ""
                } else {
                    "drift: differs from the ledger"
                },
            ),
            Ok(None) => ("-".into(), serde_json::Value::Null, ""),
            Err(e) => (
                "?".into(),
                serde_json::Value::Null,
                if e.to_string().is_empty() {
                    ""
                } else {
                    "cannot read"
                },
            ),
        };
        let err_text = live.as_ref().err().map(|e| e.to_string());
        table.add_row(vec![
            name.clone(),
            cfg.kind().to_string(),
            recorded.clone().unwrap_or_else(|| "-".into()),
            live_text,
            note.to_string(),
        ]);
        if let Some(e) = &err_text {
            details.push(format!("{name}: cannot read what runs: {e}"));
        }
        // A database: its migrations as a set against the current release's.
        let mut set_json = serde_json::Value::Null;
        if let (Ok(Some(d)), Some(release)) = (
            resolved.as_ref().map(|c| c.database()),
            ledger.current.as_deref(),
        ) && live.is_ok()
        {
            let db = rewind_components::database::Database::new(
                name,
                matches!(cfg, rewind_core::config::ComponentConfig::Postgres(_)),
                d.clone(),
            );
            let recorded_set = current.and_then(|r| r.migrations.get(name)).cloned();
            match db.set_report(release, recorded_set.as_deref()).await {
                Ok(r) => {
                    if !r.applied_not_in_release.is_empty() {
                        details.push(format!(
                            "{name}: applied but not in {release}: {}",
                            r.applied_not_in_release.join(", ")
                        ));
                    }
                    if !r.in_release_not_applied.is_empty() {
                        details.push(format!(
                            "{name}: in {release} but not applied: {}",
                            r.in_release_not_applied.join(", ")
                        ));
                    }
                    for p in &r.partial {
                        details.push(format!("{name}: {p}"));
                    }
                    set_json = json!(r);
                }
                Err(e) => details.push(format!(
                    "{name}: cannot compare its migrations with {release}: {}",
                    e
                )),
            }
        }
        comps.push(json!({"name": name, "kind": cfg.kind(), "recorded": recorded, "live": live_json, "drift": note.starts_with("drift"), "error": err_text, "migrations": set_json}));
    }
    let lock = env.store.lock_holder(&env.name).await?;
    let unfinished = env.store.unfinished_run(&env.name).await?;
    let last_incident = env
        .store
        .read_incidents(&env.name)
        .await?
        .into_iter()
        .filter_map(|r| r.map_err(|u| unreadable.push(u)).ok())
        .next();
    let watch = env.store.active_watch(&env.name).await?;
    let location = super::state_location(&env.config);

    let mut text = format!(
        "environment {}  (state {})\ncurrent release: {}\nlast known-good: {}\nrollback target: {}\n\n{table}",
        printer.bold(&env.name),
        location.display_safe(),
        current
            .map(|r| format!("{} ({})", r.name, r.state))
            .unwrap_or_else(|| "none yet".into()),
        last_good
            .map(|r| r.name.clone())
            .unwrap_or_else(|| "none yet".into()),
        match unfinished
            .as_ref()
            .filter(|r| r.kind.to_string() == "rollback")
        {
            // A rollback is under way (or was cut off): it is the way back, not a new one.
            Some(r) => format!(
                "{} — a rollback to it is already under way (run {}, below)",
                r.release, r.id
            ),
            None => target
                .clone()
                .map(|t| format!("{t} (`rewind plan` shows the steps)"))
                .unwrap_or_else(|| "none (no known-good release before the current one)".into()),
        },
    );
    if !details.is_empty() {
        text.push_str(&format!("\n{}", details.join("\n")));
    }
    if let Some(h) = &lock {
        let dead = dead_reason(h, env.config.environment.lock_stale_after);
        text.push_str(&format!(
            "\n\nlock: held by run {} ({}, pid {} on {}, since {}){}",
            h.run_id,
            h.actor,
            h.pid,
            h.host,
            super::short_time(&h.since),
            dead.map(|d| format!(" — holder looks dead ({d}); the next run takes it over"))
                .unwrap_or_default()
        ));
    }
    // A live holder is working on the run: suggesting `resume` would start a second process
    // on it (and be refused). Only a run nobody works on is for `resume`.
    let live_holder = lock
        .as_ref()
        .filter(|h| dead_reason(h, env.config.environment.lock_stale_after).is_none());
    if let Some(r) = &unfinished {
        match live_holder {
            Some(h) => text.push_str(&format!(
                "\n\nin progress: run {} ({} {}), by {} (pid {} on {}); it finishes by itself — watch it with `rewind status` or `rewind history --run {}`",
                r.id, r.kind, r.release, h.actor, h.pid, h.host, r.id
            )),
            None => text.push_str(&format!(
                "\n\nunfinished: run {} ({} {}, {}); nobody is working on it — finish it with `rewind resume`",
                r.id, r.kind, r.release, r.status
            )),
        }
    }
    if let Some(w) = &watch {
        text.push_str(&format!(
            "\n\nwatching: {} since {} (window {}); `rewind watch` attaches to it",
            w.release,
            super::short_time(&w.started_at),
            crate::watch::human(std::time::Duration::from_secs_f64(w.window_secs.max(0.0)))
        ));
    }
    if let Some(i) = &last_incident {
        text.push_str(&format!(
            "\n\nlast incident: {} on {} ({} trigger, {}, {}): {}",
            i.id,
            i.release,
            i.trigger,
            i.status,
            super::short_time(&i.opened_at),
            i.summary
        ));
    }
    if !unreadable.is_empty() {
        text.push_str("\n\nentries that cannot be read (changed outside rewind, or the file is damaged); the rollback target above leaves them out:");
        for u in &unreadable {
            // The text result lists it; a JSON result has it under "unreadable", and stderr says it too.
            if printer.json {
                printer.warn(format!("{u}"));
            }
            text.push_str(&format!("\n  {u}"));
        }
    }
    printer.text(text);
    printer.json_value(&json!({
        "unreadable": unreadable,
        "environment": env.name,
        "state": location.display_safe(),
        "current": current,
        "last_good": last_good.map(|r| &r.name),
        "rollback_target": target,
        "components": comps,
        "lock": lock,
        "unfinished_run": unfinished.map(|r| json!({"id": r.id, "kind": r.kind, "release": r.release, "status": r.status, "holder_alive": live_holder.is_some()})),
        "watching": watch,
        "last_incident": last_incident,
    }));
    Ok(ExitCode::SUCCESS)
}
