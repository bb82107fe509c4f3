//! `rewind history`: every release (faulty ones included, never deleted) and recent runs.

use std::process::ExitCode;

use serde_json::json;

use super::{Env, short_time};
use crate::error::{CliResult, usage};
use crate::output::Printer;

pub async fn run(env: &Env, runs_limit: i64, printer: &Printer) -> CliResult<ExitCode> {
    let ledger = env.ledger().await?;
    let runs = env.store.runs(&env.name, runs_limit.max(0)).await?;
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
    let incidents = env.store.incidents(&env.name).await?;
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
    if ledger.releases.is_empty() {
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
    }));
    Ok(ExitCode::SUCCESS)
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
    let journal = env.store.journal(&run.id).await?;
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
    for e in &journal {
        let step = e
            .step
            .map(|s| format!("{:>2}", s + 1))
            .unwrap_or_else(|| " -".into());
        let first = e.message.lines().next().unwrap_or("");
        text.push_str(&format!(
            "  {} step {step} {:<7} {}\n",
            &e.at[11..e.at.len().min(23)],
            e.event.as_str(),
            first
        ));
        for more in e.message.lines().skip(1) {
            text.push_str(&format!("  {:>30}{more}\n", ""));
        }
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
    }));
    Ok(ExitCode::SUCCESS)
}
