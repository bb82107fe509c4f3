//! `rewind audit log` and `rewind audit verify`.

use std::process::ExitCode;

use rewind_core::audit::ChainBreak;
use serde_json::json;

use super::{Env, short_time};
use crate::cli::AuditCommand;
use crate::error::{CliResult, failed};
use crate::output::Printer;

pub async fn run(env: &Env, command: AuditCommand, printer: &Printer) -> CliResult<ExitCode> {
    let entries = env.store.audit_entries(&env.name).await?;
    match command {
        AuditCommand::Log { last } => {
            let skip = last
                .map(|n| entries.len().saturating_sub(usize::try_from(n).unwrap_or(usize::MAX)))
                .unwrap_or(0);
            let shown = &entries[skip..];
            let mut t = super::table();
            t.set_header(vec!["#", "at", "who", "action", "release", "run", "details"]);
            for e in shown {
                t.add_row(vec![
                    e.seq.to_string(),
                    short_time(&e.at),
                    e.actor.clone(),
                    e.action.clone(),
                    e.release.clone().unwrap_or_default(),
                    e.run_id.clone().unwrap_or_default(),
                    brief(&e.details),
                ]);
            }
            printer.text(if shown.is_empty() { "the audit log is empty".to_string() } else { t.to_string() });
            printer.json_value(&json!({"environment": env.name, "entries": shown}));
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify => match verify_with_head(&entries, env.store.audit_head(&env.name).await?) {
            Ok(()) => {
                let head = entries.last().map(|e| e.hash.clone());
                printer.text(format!(
                    "audit chain of {} holds: {} entries{}",
                    env.name,
                    entries.len(),
                    head.as_ref().map(|h| format!(", head {}", &h[..16])).unwrap_or_default()
                ));
                printer.json_value(&json!({"ok": true, "entries": entries.len(), "head": head}));
                Ok(ExitCode::SUCCESS)
            }
            Err(b) => Err(failed(format!("audit chain of {} is broken at {b}", env.name))
                .hint("entries from that one on cannot be trusted; compare with a backup of the state store")
                .detail(json!({"ok": false, "first_bad_entry": b.seq(), "entries": entries.len(), "reason": b.to_string()}))),
        },
    }
}

/// The chain must hold, and end where the separately recorded head says it ends.
fn verify_with_head(
    entries: &[rewind_core::AuditEntry],
    head: Option<(i64, String)>,
) -> Result<(), ChainBreak> {
    rewind_core::audit::verify(entries)?;
    let last = entries.last().map(|e| (e.seq, e.hash.clone()));
    match (head, last) {
        (None, None) => Ok(()),
        (Some((seq, hash)), Some((lseq, lhash))) if seq == lseq && hash == lhash => Ok(()),
        (Some((seq, _)), last) => Err(ChainBreak::Truncated {
            seq: last.map(|(s, _)| s + 1).unwrap_or(1),
            head: seq,
        }),
        (None, Some((lseq, _))) => Err(ChainBreak::Truncated { seq: lseq, head: 0 }),
    }
}

fn brief(details: &serde_json::Value) -> String {
    let Some(map) = details.as_object() else {
        return String::new();
    };
    let mut parts = Vec::new();
    for (k, v) in map {
        let v = match v {
            serde_json::Value::String(s) => s.lines().next().unwrap_or("").to_string(),
            serde_json::Value::Null => continue,
            other => other.to_string(),
        };
        parts.push(format!("{k}={v}"));
    }
    let s = parts.join(" ");
    if s.chars().count() > 70 {
        format!("{}…", s.chars().take(69).collect::<String>())
    } else {
        s
    }
}
