//! `rewind adopt`: go on with a state store that does not match the environment's evidence
//! (see `crate::guard`), on the record.

use std::process::ExitCode;

use rewind_core::NewAudit;
use serde_json::json;

use super::Env;
use crate::error::{CliResult, usage};
use crate::output::Printer;

pub async fn run(env: &Env, yes: bool, printer: &Printer) -> CliResult<ExitCode> {
    let location = super::state_location(&env.config).display_safe();
    let Some(problem) = &env.problem else {
        let msg = format!(
            "nothing to adopt: the state store at {location} is the one that recorded environment `{}`",
            env.name
        );
        printer.text(&msg);
        printer.json_value(&json!({"adopted": false, "message": msg}));
        return Ok(ExitCode::SUCCESS);
    };
    let shown = problem.message(&env.name, &location);
    if !yes {
        return Err(usage(format!(
            "{shown}\nadopting records this in the store's audit log and goes on from what the store holds; nothing was changed"
        ))
        .hint("pass --yes to adopt the store as it is; or restore the state store from a backup copy instead"));
    }
    let before = env.store.footprint(&env.name).await?;
    let markers: Vec<serde_json::Value> = crate::guard::read_markers(&env.config)
        .into_iter()
        .map(|f| match f.marker {
            Ok(m) => json!({"path": f.path, "marker": m}),
            Err(e) => json!({"path": f.path, "unreadable": e}),
        })
        .collect();
    let audit = NewAudit::new(&rewind_components::host::actor(), "ledger.adopted").details(json!({
        "store": location,
        "store_id": before.store_id,
        "chain_end": before.last.as_ref().map(|(s, h)| json!({"seq": s, "hash": h})),
        "recorded_head": before.head.as_ref().map(|(s, h)| json!({"seq": s, "hash": h})),
        "findings": problem.findings,
        "evidence": problem.evidence,
        "markers": markers,
    }));
    let entry = env.store.audit_append(&env.name, audit).await?;
    env.write_markers(printer).await;
    let msg = format!(
        "adopted: the ledger of {} goes on in {location} (state store {}) from audit entry #{}, which records what it lacked and the evidence; the history before it is not in this store",
        env.name, before.store_id, entry.seq
    );
    printer.text(&msg);
    printer.json_value(&json!({
        "adopted": true,
        "entry": entry.seq,
        "store_id": before.store_id,
        "findings": problem.findings,
        "evidence": problem.evidence,
    }));
    Ok(ExitCode::SUCCESS)
}
