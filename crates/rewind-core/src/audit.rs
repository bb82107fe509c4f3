//! The audit chain: every entry is canonical JSON (keys sorted, no whitespace) hashed with
//! BLAKE3 together with the previous entry's hash, so changing, removing or reordering any
//! stored entry breaks every hash after it.

use serde_json::Value;

use crate::model::{AuditEntry, NewAudit};

/// The `prev_hash` of an environment's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Serialises a JSON value with object keys sorted and no insignificant whitespace.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The hash of an entry with these fields, chained onto `prev_hash`.
#[allow(clippy::too_many_arguments)]
pub fn entry_hash(
    environment: &str,
    seq: i64,
    at: &str,
    actor: &str,
    action: &str,
    release: Option<&str>,
    run_id: Option<&str>,
    details: &Value,
    prev_hash: &str,
) -> String {
    let body = serde_json::json!({
        "environment": environment,
        "seq": seq,
        "at": at,
        "actor": actor,
        "action": action,
        "release": release,
        "run_id": run_id,
        "details": details,
        "prev_hash": prev_hash,
    });
    let mut hasher = blake3::Hasher::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical_json(&body).as_bytes());
    hasher.finalize().to_hex().to_string()
}

/// Builds the stored form of a new entry that follows `prev` (or starts the chain).
pub fn chain(
    environment: &str,
    prev: Option<(&str, i64)>,
    at: String,
    new: NewAudit,
) -> AuditEntry {
    let (prev_hash, prev_seq) = prev.unwrap_or((GENESIS, 0));
    let seq = prev_seq + 1;
    let hash = entry_hash(
        environment,
        seq,
        &at,
        &new.actor,
        &new.action,
        new.release.as_deref(),
        new.run_id.as_deref(),
        &new.details,
        prev_hash,
    );
    AuditEntry {
        environment: environment.to_string(),
        seq,
        at,
        actor: new.actor,
        action: new.action,
        release: new.release,
        run_id: new.run_id,
        details: new.details,
        prev_hash: prev_hash.to_string(),
        hash,
    }
}

/// Why a chain does not hold, naming the first entry that breaks it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error(
        "entry #{seq}: expected position {expected} in the chain (an entry was removed or inserted)"
    )]
    Sequence { seq: i64, expected: i64 },
    #[error(
        "entry #{seq}: prev_hash {found} does not match the hash of the entry before it ({expected})"
    )]
    Link {
        seq: i64,
        found: String,
        expected: String,
    },
    #[error(
        "entry #{seq}: the chain should run to entry #{head}, but ends before it (entries were removed from its end, or the head record was changed)"
    )]
    Truncated { seq: i64, head: i64 },
    #[error(
        "entry #{seq}: stored hash {stored} does not match its contents (computed {computed}); the entry was changed after it was written"
    )]
    Content {
        seq: i64,
        stored: String,
        computed: String,
    },
    #[error("entry #{seq}: cannot be read ({problem}); the entry was changed after it was written")]
    Unreadable { seq: i64, problem: String },
}

impl ChainBreak {
    pub fn seq(&self) -> i64 {
        match self {
            ChainBreak::Sequence { seq, .. }
            | ChainBreak::Link { seq, .. }
            | ChainBreak::Truncated { seq, .. }
            | ChainBreak::Content { seq, .. }
            | ChainBreak::Unreadable { seq, .. } => *seq,
        }
    }
}

/// One stored entry as read: whole, or unreadable (with its position when that much could
/// be read, and what is wrong).
#[derive(Debug, Clone, Copy)]
pub enum Stored<'a> {
    Entry(&'a AuditEntry),
    Unreadable { seq: Option<i64>, problem: &'a str },
}

/// Checks a whole chain, in order, and names every entry that breaks it (one reason per
/// entry). An unreadable entry is a break of its own; the entries after it are still
/// checked (their own contents, and their links to each other).
pub fn breaks<'a>(entries: impl IntoIterator<Item = Stored<'a>>) -> Vec<ChainBreak> {
    let mut out = Vec::new();
    // `None` after an unreadable entry: the next link cannot be checked.
    let mut prev_hash: Option<String> = Some(GENESIS.to_string());
    let mut prev_seq = 0;
    for stored in entries {
        let e = match stored {
            Stored::Unreadable { seq, problem } => {
                let seq = seq.unwrap_or(prev_seq + 1);
                out.push(ChainBreak::Unreadable {
                    seq,
                    problem: problem.to_string(),
                });
                prev_hash = None;
                prev_seq = seq;
                continue;
            }
            Stored::Entry(e) => e,
        };
        let expected = prev_seq + 1;
        let computed = stored_entry_hash(e);
        if e.seq != expected {
            out.push(ChainBreak::Sequence {
                seq: e.seq,
                expected,
            });
        } else if let Some(p) = prev_hash.as_ref().filter(|p| **p != e.prev_hash) {
            out.push(ChainBreak::Link {
                seq: e.seq,
                found: e.prev_hash.clone(),
                expected: p.clone(),
            });
        } else if computed != e.hash {
            out.push(ChainBreak::Content {
                seq: e.seq,
                stored: e.hash.clone(),
                computed,
            });
        }
        prev_hash = Some(e.hash.clone());
        prev_seq = e.seq;
    }
    out
}

/// The hash `entry` must carry: [`entry_hash`] of its stored fields.
fn stored_entry_hash(e: &AuditEntry) -> String {
    entry_hash(
        &e.environment,
        e.seq,
        &e.at,
        &e.actor,
        &e.action,
        e.release.as_deref(),
        e.run_id.as_deref(),
        &e.details,
        &e.prev_hash,
    )
}

/// Checks a whole chain, in order. Returns the first break.
pub fn verify(entries: &[AuditEntry]) -> Result<(), ChainBreak> {
    let mut prev_hash = GENESIS.to_string();
    for (i, e) in entries.iter().enumerate() {
        let expected = i as i64 + 1;
        if e.seq != expected {
            return Err(ChainBreak::Sequence {
                seq: e.seq,
                expected,
            });
        }
        if e.prev_hash != prev_hash {
            return Err(ChainBreak::Link {
                seq: e.seq,
                found: e.prev_hash.clone(),
                expected: prev_hash,
            });
        }
        let computed = stored_entry_hash(e);
        if computed != e.hash {
            return Err(ChainBreak::Content {
                seq: e.seq,
                stored: e.hash.clone(),
                computed,
            });
        }
        prev_hash = e.hash.clone();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_chain() -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = Vec::new();
        for i in 0..4 {
            let prev = out.last().map(|e| (e.hash.as_str(), e.seq));
            let e = chain(
                "prod",
                prev,
                format!("2026-11-21T10:00:0{i}.000000Z"),
                NewAudit::new("ann@box", "deploy")
                    .release(format!("v{i}"))
                    .details(serde_json::json!({"b": 1, "a": [i, "x"]})),
            );
            out.push(e);
        }
        out
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v = serde_json::json!({"b": {"z": 1, "a": 2}, "a": [ {"y": 1, "x": 2} ]});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":[{"x":2,"y":1}],"b":{"a":2,"z":1}}"#
        );
    }

    #[test]
    fn a_chain_survives_a_round_trip_through_json_text() {
        // Stores keep details as JSON text: floats must read back to the same bits, or the
        // hash of an untouched entry would no longer match.
        let mut out: Vec<AuditEntry> = Vec::new();
        for x in [
            0.1 + 0.2,
            6.216461983581198,
            0.0010000000000000009,
            1e-300,
            17.192,
            f64::MAX,
        ] {
            let prev = out.last().map(|e| (e.hash.as_str(), e.seq));
            out.push(chain(
                "prod",
                prev,
                "2026-11-21T10:00:00.000000Z".into(),
                NewAudit::new("a@b", "x").details(serde_json::json!({"v": x, "w": [x / 3.0]})),
            ));
        }
        let text = serde_json::to_string(&out).unwrap();
        let back: Vec<AuditEntry> = serde_json::from_str(&text).unwrap();
        assert_eq!(verify(&back), Ok(()));
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&sample_chain()), Ok(()));
    }

    #[test]
    fn every_field_change_is_detected_at_that_entry() {
        let base = sample_chain();
        type Edit = Box<dyn Fn(&mut AuditEntry)>;
        let edits: Vec<(&str, Edit)> = vec![
            ("at", Box::new(|e| e.at.push('1'))),
            ("actor", Box::new(|e| e.actor = "mallory@box".into())),
            ("action", Box::new(|e| e.action = "rollback".into())),
            ("release", Box::new(|e| e.release = None)),
            ("run_id", Box::new(|e| e.run_id = Some("r".into()))),
            ("details", Box::new(|e| e.details = serde_json::json!({}))),
            (
                "environment",
                Box::new(|e| e.environment = "staging".into()),
            ),
        ];
        for (field, edit) in &edits {
            for idx in 0..base.len() {
                let mut c = base.clone();
                edit(&mut c[idx]);
                let err = verify(&c).expect_err(field);
                assert_eq!(err.seq(), idx as i64 + 1, "field {field} at {idx}");
            }
        }
        // Every break is named, not only the first; an unreadable entry is one of them and
        // the entries after it are still checked.
        let mut c = base.clone();
        c[3].actor = "mallory@box".into();
        let stored: Vec<Stored> = c
            .iter()
            .enumerate()
            .map(|(i, e)| {
                if i == 1 {
                    Stored::Unreadable {
                        seq: Some(2),
                        problem: "column `details` is not valid UTF-8",
                    }
                } else {
                    Stored::Entry(e)
                }
            })
            .collect();
        let all = breaks(stored);
        assert_eq!(all.iter().map(ChainBreak::seq).collect::<Vec<_>>(), [2, 4]);
        assert!(matches!(all[0], ChainBreak::Unreadable { .. }));
        assert!(matches!(all[1], ChainBreak::Content { .. }));
        assert!(breaks(base.iter().map(Stored::Entry)).is_empty());
        // Removing a middle entry is a sequence break at the entry after it.
        let mut c = base.clone();
        c.remove(1);
        assert_eq!(verify(&c).unwrap_err().seq(), 3);
    }
}
