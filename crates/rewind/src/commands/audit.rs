//! `rewind audit log` and `rewind audit verify`.

use std::process::ExitCode;

use rewind_core::audit::{ChainBreak, Stored};
use serde_json::json;

use super::{Env, short_time};
use crate::cli::AuditCommand;
use crate::error::{CliResult, failed};
use crate::output::Printer;

pub async fn run(env: &Env, command: AuditCommand, printer: &Printer) -> CliResult<ExitCode> {
    // Row by row: an entry that cannot be read is named, and the others are still shown
    // and checked.
    let rows = env.store.read_audit(&env.name).await?;
    let location = super::state_location(&env.config).display_safe();
    match command {
        AuditCommand::Log { last } => {
            if let Some(p) = &env.problem {
                printer.warn(p.message(&env.name, &location));
            }
            let skip = last
                .map(|n| {
                    rows.len()
                        .saturating_sub(usize::try_from(n).unwrap_or(usize::MAX))
                })
                .unwrap_or(0);
            let shown = &rows[skip..];
            let mut t = super::table();
            t.set_header(vec![
                "#", "at", "who", "action", "release", "run", "details",
            ]);
            let mut entries = Vec::new();
            let mut unreadable = Vec::new();
            for row in shown {
                match row {
                    Ok(e) => {
                        t.add_row(vec![
                            e.seq.to_string(),
                            short_time(&e.at),
                            e.actor.clone(),
                            e.action.clone(),
                            e.release.clone().unwrap_or_default(),
                            e.run_id.clone().unwrap_or_default(),
                            brief(&e.details),
                        ]);
                        entries.push(e);
                    }
                    Err(u) => {
                        t.add_row(vec![
                            u.seq.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
                            String::new(),
                            String::new(),
                            "UNREADABLE".into(),
                            String::new(),
                            String::new(),
                            format!("column `{}` {}", u.column, u.problem),
                        ]);
                        unreadable.push(u);
                    }
                }
            }
            for u in &unreadable {
                // The text result lists it; a JSON result has it under "unreadable", and stderr says it too.
                if printer.json {
                    printer.warn(format!("{u}"));
                }
            }
            printer.text(if shown.is_empty() {
                "the audit log is empty".to_string()
            } else {
                t.to_string()
            });
            printer.json_value(
                &json!({"environment": env.name, "entries": entries, "unreadable": unreadable}),
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify => {
            let stored: Vec<Stored> = rows
                .iter()
                .map(|r| match r {
                    Ok(e) => Stored::Entry(e),
                    Err(u) => Stored::Unreadable {
                        seq: u.seq,
                        problem: &u.problem,
                    },
                })
                .collect();
            let mut breaks = rewind_core::audit::breaks(stored);
            // Name the column too: `breaks` only has the problem.
            for b in &mut breaks {
                if let ChainBreak::Unreadable { seq, problem } = b
                    && let Some(u) = rows
                        .iter()
                        .filter_map(|r| r.as_ref().err())
                        .find(|u| u.seq == Some(*seq))
                {
                    *problem = format!("column `{}` {}", u.column, u.problem);
                }
            }
            let last = rows.last().and_then(|r| r.as_ref().ok());
            if let Some(b) = head_break(
                last,
                rows.last()
                    .and_then(|r| r.as_ref().err())
                    .and_then(|u| u.seq),
                env.store.audit_head(&env.name).await?,
            ) {
                breaks.push(b);
            }
            if breaks.is_empty() && env.problem.is_none() {
                let head = last.map(|e| e.hash.clone());
                let adopted: Vec<i64> = rows
                    .iter()
                    .filter_map(|r| r.as_ref().ok())
                    .filter(|e| e.action == "ledger.adopted")
                    .map(|e| e.seq)
                    .collect();
                printer.text(format!(
                    "audit chain of {} holds: {} entries{}{}",
                    env.name,
                    rows.len(),
                    head.as_ref().map(|h| format!(", head {}", &h[..16.min(h.len())])).unwrap_or_default(),
                    if adopted.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; the ledger was restarted over earlier evidence at entry {} (`rewind audit log` shows what it lacked)",
                            adopted.iter().map(|s| format!("#{s}")).collect::<Vec<_>>().join(", ")
                        )
                    }
                ));
                printer.json_value(&json!({"ok": true, "entries": rows.len(), "head": head, "adopted_at": adopted}));
                return Ok(ExitCode::SUCCESS);
            }
            let reasons: Vec<serde_json::Value> = breaks
                .iter()
                .map(|b| json!({"seq": b.seq(), "reason": b.to_string()}))
                .collect();
            let mut msg = match breaks.first() {
                Some(first) => {
                    let mut m = format!("audit chain of {} is broken at {first}", env.name);
                    for b in &breaks[1..] {
                        m.push_str(&format!("\n  also at {b}"));
                    }
                    m
                }
                None => format!(
                    "audit chain of {} is not the chain rewind recorded",
                    env.name
                ),
            };
            if let Some(p) = &env.problem {
                msg.push_str(&format!("\n{}", p.message(&env.name, &location)));
            }
            let mut err = failed(msg);
            if !breaks.is_empty() {
                err = err.hint("entries from the first broken one on cannot be trusted; compare with a backup of the state store");
            }
            let mut err = err.detail(json!({
                "ok": false,
                "first_bad_entry": breaks.first().map(ChainBreak::seq),
                "broken": reasons,
                "entries": rows.len(),
                "reason": breaks.first().map(|b| b.to_string()),
                "store_mismatch": env.problem,
            }));
            if env.problem.is_some() {
                err = err
                    .hint(crate::guard::Problem::HINT_RESTORE)
                    .hint(crate::guard::Problem::HINT_ADOPT);
            }
            Err(err)
        }
    }
}

/// The chain must end where the separately recorded head says it ends. `last` is the
/// newest entry when it could be read; `unreadable_last` its seq when it could not.
fn head_break(
    last: Option<&rewind_core::AuditEntry>,
    unreadable_last: Option<i64>,
    head: Option<(i64, String)>,
) -> Option<ChainBreak> {
    if unreadable_last.is_some() {
        // Already a break of its own; its hash cannot be compared.
        return None;
    }
    let last = last.map(|e| (e.seq, e.hash.clone()));
    match (head, last) {
        (None, None) => None,
        (Some((seq, hash)), Some((lseq, lhash))) if seq == lseq && hash == lhash => None,
        (Some((seq, _)), last) => Some(ChainBreak::Truncated {
            seq: last.map(|(s, _)| s + 1).unwrap_or(1),
            head: seq,
        }),
        (None, Some((lseq, _))) => Some(ChainBreak::Truncated { seq: lseq, head: 0 }),
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
