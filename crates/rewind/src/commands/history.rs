//! `rewind history`: every release (faulty ones included, never deleted) and recent runs.

use std::process::ExitCode;

use serde_json::json;

use rewind_core::plan::Ledger;
use rewind_store::{Readable, Unreadable};

use super::{Env, short_time};
use crate::error::{CliResult, usage};
use crate::output::Printer;

pub async fn run(env: &Env, runs_limit: i64, printer: &Printer) -> CliResult<ExitCode> {
    // Row by row: an entry that cannot be read is named, the others are shown.
    let mut unreadable: Vec<Unreadable> = Vec::new();
    let ledger = Ledger {
        current: env.store.current_release(&env.name).await?,
        deployed: env.store.deployed(&env.name).await?,
        releases: readable(env.store.read_releases(&env.name).await?, &mut unreadable),
    };
    let runs = readable(
        env.store.read_runs(&env.name, runs_limit.max(0)).await?,
        &mut unreadable,
    );
    let mut rel = super::table();
    rel.set_header(vec!["#", "release", "state", "recorded", "by", ""]);
    for r in ledger.releases.iter().rev() {
        let mark = if ledger.current.as_deref() == Some(r.name.as_str()) {
            "← current"
        } else {
            ""
        };
        rel.add_row(vec![
            r.seq.to_string(),
            r.name.clone(),
            r.state.to_string(),
            short_time(&r.created_at),
            r.actor.clone(),
            mark.to_string(),
        ]);
    }
    let mut rt = super::table();
    rt.set_header(vec!["run", "kind", "release", "from", "status", "started"]);
    for r in &runs {
        rt.add_row(vec![
            r.id.clone(),
            r.kind.to_string(),
            r.release.clone(),
            r.from_release.clone().unwrap_or_else(|| "-".into()),
            r.status.to_string(),
            short_time(&r.created_at),
        ]);
    }
    let incidents = readable(env.store.read_incidents(&env.name).await?, &mut unreadable);
    let mut it = super::table();
    it.set_header(vec![
        "incident", "release", "trigger", "status", "opened", "summary",
    ]);
    for i in &incidents {
        it.add_row(vec![
            i.id.clone(),
            i.release.clone(),
            i.trigger.clone(),
            i.status.to_string(),
            short_time(&i.opened_at),
            i.summary.chars().take(80).collect(),
        ]);
    }
    for u in &unreadable {
        // The text result lists it; a JSON result has it under "unreadable", and stderr says it too.
        if printer.json {
            printer.warn(format!("{u}"));
        }
    }
    if ledger.releases.is_empty() && unreadable.is_empty() {
        printer.text(format!(
            "no releases recorded in {} yet; `rewind deploy RELEASE` records the first",
            env.name
        ));
    } else {
        let mut text = format!(
            "releases of {} (newest first)\n{rel}\n\nruns (newest first)\n{rt}",
            env.name
        );
        if !incidents.is_empty() {
            text.push_str(&format!("\n\nincidents (newest first)\n{it}"));
        }
        if !unreadable.is_empty() {
            text.push_str(
                "\n\nentries that cannot be read (changed outside rewind, or the file is damaged):",
            );
            for u in &unreadable {
                text.push_str(&format!("\n  {u}"));
            }
        }
        printer.text(text);
    }
    printer.json_value(&json!({
        "environment": env.name,
        "current": ledger.current,
        "releases": ledger.releases,
        "runs": runs.iter().map(|r| json!({
            "id": r.id, "kind": r.kind, "release": r.release, "from": r.from_release,
            "status": r.status, "actor": r.actor, "created_at": r.created_at,
            "updated_at": r.updated_at, "error": r.error,
        })).collect::<Vec<_>>(),
        "incidents": incidents,
        "unreadable": unreadable,
    }));
    Ok(ExitCode::SUCCESS)
}

/// The rows that could be read; the others go to `unreadable`.
fn readable<T>(rows: Vec<Readable<T>>, unreadable: &mut Vec<Unreadable>) -> Vec<T> {
    rows.into_iter()
        .filter_map(|r| r.map_err(|u| unreadable.push(u)).ok())
        .collect()
}

/// `rewind history --run ID`: one run whole, with its journal.
pub async fn run_detail(env: &Env, id: &str, printer: &Printer) -> CliResult<ExitCode> {
    let Some(run) = env
        .store
        .run(id)
        .await?
        .filter(|r| r.environment == env.name)
    else {
        return Err(usage(format!("no run `{id}` in environment {}", env.name))
            .hint("`rewind history` lists the runs"));
    };
    let rows = env.store.read_journal(&run.id).await?;
    let mut text = format!(
        "run {} — {} {} (from {}) by {}, {}{}\nstarted {}, last change {}\n\nsteps:\n",
        run.id,
        run.kind,
        run.release,
        run.from_release.as_deref().unwrap_or("-"),
        run.actor,
        run.status,
        run.error
            .as_deref()
            .map(|e| format!(": {}", e.lines().next().unwrap_or("")))
            .unwrap_or_default(),
        short_time(&run.created_at),
        short_time(&run.updated_at),
    );
    for (i, s) in run.steps.iter().enumerate() {
        text.push_str(&format!("  {:>2}. {}\n", i + 1, s.title));
    }
    text.push_str("\njournal:\n");
    let mut journal = Vec::new();
    let mut unreadable = Vec::new();
    for row in rows {
        let e = match row {
            Ok(e) => e,
            Err(u) => {
                // The text result lists it; a JSON result has it under "unreadable", and stderr says it too.
                if printer.json {
                    printer.warn(format!("{u}"));
                }
                text.push_str(&format!("  UNREADABLE {u}\n"));
                unreadable.push(u);
                continue;
            }
        };
        let step = e
            .step
            .map(|s| format!("{:>2}", s + 1))
            .unwrap_or_else(|| " -".into());
        let first = e.message.lines().next().unwrap_or("");
        text.push_str(&format!(
            "  {} step {step} {:<7} {}\n",
            e.at.get(11..e.at.len().min(23)).unwrap_or(&e.at),
            e.event.as_str(),
            first
        ));
        for more in e.message.lines().skip(1) {
            text.push_str(&format!("  {:>30}{more}\n", ""));
        }
        journal.push(e);
    }
    printer.text(text.trim_end());
    printer.json_value(&json!({
        "run": {
            "id": run.id, "environment": run.environment, "kind": run.kind, "release": run.release,
            "from": run.from_release, "status": run.status, "actor": run.actor,
            "created_at": run.created_at, "updated_at": run.updated_at, "error": run.error,
            "steps": run.steps,
        },
        "journal": journal,
        "unreadable": unreadable,
    }));
    Ok(ExitCode::SUCCESS)
}
