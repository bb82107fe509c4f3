//! `rewind history`: every release (faulty ones included, never deleted) and recent runs.

use std::process::ExitCode;

use serde_json::json;

use super::{Env, short_time};
use crate::error::CliResult;
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
    if ledger.releases.is_empty() {
        printer.text(format!(
            "no releases recorded in {} yet; `rewind deploy RELEASE` records the first",
            env.name
        ));
    } else {
        printer.text(format!(
            "releases of {} (newest first)\n{rel}\n\nruns (newest first)\n{rt}",
            env.name
        ));
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
    }));
    Ok(ExitCode::SUCCESS)
}
