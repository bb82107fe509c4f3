//! The state store must be the one that recorded the environment. An emptied, deleted,
//! replaced or recreated store (or one whose audit chain lost its newest entries) would
//! otherwise read as a new, empty ledger: the next deploy goes ahead with no history and
//! the rollback target is gone.
//!
//! So rewind leaves evidence outside the store, and compares the store with it before a
//! command uses it:
//! - a **marker** (`.rewind/environment-<name>.json`) beside the config file and in every
//!   `release-dir` component's root, holding the environment's name, the store's identity
//!   (a random id the store keeps too) and the audit chain's head (seq and hash). It is
//!   rewritten (temporary file, then rename) after every command that wrote to the store,
//!   from what the store had committed, so it is never ahead of the store;
//! - the environment's own directories: a `release-dir` root with `releases/` and a
//!   `current` symlink into it, a database component's backup directory with rewind's
//!   backups in it.
//!
//! A store that holds nothing for the environment while such evidence exists, a store
//! other than the one the markers name, and a chain that ends before a marker's (or the
//! store's own recorded) head are refused, naming the evidence. `rewind adopt --yes` goes on
//! with the store as it is and records that in the audit log.

use std::path::{Path, PathBuf};

use rewind_core::config::{ComponentConfig, Config};
use rewind_store::{Footprint, Store};
use serde::{Deserialize, Serialize};

/// The marker's format version.
const MARKER_FORMAT: u32 = 1;

/// What a marker records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub format: u32,
    pub environment: String,
    /// The identity of the store that recorded the environment.
    pub store_id: String,
    /// Where that store was (password masked), for people.
    pub store: String,
    /// The audit chain's newest entry when the marker was written.
    pub audit_seq: i64,
    pub audit_hash: String,
    pub updated_at: String,
}

/// A marker file found on disk: what it says, or why it cannot be read.
pub struct Found {
    pub path: PathBuf,
    pub marker: Result<Marker, String>,
}

/// What the comparison found wrong, in lines a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What is wrong, one line per finding.
    pub findings: Vec<String>,
    /// The evidence that the environment existed, one line per place.
    pub evidence: Vec<String>,
}

impl Problem {
    pub fn message(&self, env: &str, location: &str) -> String {
        let mut text = format!(
            "the state store at {location} is not the ledger that recorded environment `{env}`:"
        );
        for f in &self.findings {
            text.push_str(&format!("\n  - {f}"));
        }
        if !self.evidence.is_empty() {
            text.push_str("\nevidence that the environment was recorded before:");
            for e in &self.evidence {
                text.push_str(&format!("\n  - {e}"));
            }
        }
        text
    }

    pub const HINT_RESTORE: &str =
        "restore the state store from its newest backup copy; rewind changed nothing";
    pub const HINT_ADOPT: &str = "to go on with this store as it is (history before it is lost to rewind), run `rewind adopt --yes`: it records in the audit log that the ledger was restarted over this evidence";
}

/// Where the environment's markers live: beside the config file, and in the root of every
/// `release-dir` component.
pub fn marker_paths(config: &Config) -> Vec<PathBuf> {
    let file = format!("environment-{}.json", config.environment.name);
    let mut dirs = vec![config.dir().join(".rewind")];
    for (_, c) in &config.components {
        if let ComponentConfig::ReleaseDir(r) = c {
            dirs.push(r.root.join(".rewind"));
        }
    }
    let mut out: Vec<PathBuf> = Vec::new();
    for d in dirs {
        let p = d.join(&file);
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The markers that exist.
pub fn read_markers(config: &Config) -> Vec<Found> {
    marker_paths(config)
        .into_iter()
        .filter_map(|path| {
            let text = match std::fs::read(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                Err(e) => {
                    return Some(Found {
                        path,
                        marker: Err(format!("cannot be read: {e}")),
                    });
                }
            };
            let marker = serde_json::from_slice::<Marker>(&text)
                .map_err(|e| format!("is not a marker rewind wrote ({e})"));
            Some(Found { path, marker })
        })
        .collect()
}

/// Evidence in the environment's own directories (besides markers): release directories
/// with a `current` symlink into them, and rewind's database backups.
pub fn directory_evidence(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (name, c) in &config.components {
        match c {
            ComponentConfig::ReleaseDir(r) => {
                let Ok(target) = std::fs::read_link(r.root.join("current")) else {
                    continue;
                };
                if !target.starts_with("releases") {
                    continue;
                }
                let mut releases: Vec<String> = std::fs::read_dir(r.root.join("releases"))
                    .map(|d| {
                        d.flatten()
                            .filter(|e| e.path().is_dir())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .filter(|n| !n.starts_with('.'))
                            .collect()
                    })
                    .unwrap_or_default();
                if releases.is_empty() {
                    continue;
                }
                releases.sort();
                let n = releases.len();
                let shown = if n > 4 {
                    format!("{} and {} more", releases[n - 4..].join(", "), n - 4)
                } else {
                    releases.join(", ")
                };
                out.push(format!(
                    "component {name}: {} has `current` → {} and releases/ holds {shown}",
                    r.root.display(),
                    target.display()
                ));
            }
            ComponentConfig::Sqlite(d) | ComponentConfig::Postgres(d) => {
                let db = rewind_components::database::Database::new(
                    name,
                    matches!(c, ComponentConfig::Postgres(_)),
                    d.clone(),
                );
                if let Ok(backups) = db.list_backups()
                    && let Some(newest) = backups.last()
                {
                    out.push(format!(
                        "component {name}: {} rewind backup{} in {} (newest {}, {})",
                        backups.len(),
                        if backups.len() == 1 { "" } else { "s" },
                        d.backup_dir.display(),
                        newest.id,
                        newest.reason
                    ));
                }
            }
            ComponentConfig::Command(_) => {}
        }
    }
    out
}

/// Compares the store with the evidence. `markers` must have been read before `footprint`
/// (a marker is written only after the store committed what it records, so read in that
/// order a marker is never ahead of a healthy store). `hash_at` holds the store's hash of
/// each entry a same-store marker names.
pub fn judge(
    footprint: &Footprint,
    markers: &[Found],
    hash_at: &dyn Fn(i64) -> Option<String>,
    directories: &[String],
) -> Option<Problem> {
    let mut findings = Vec::new();
    let mut evidence = Vec::new();
    // Markers that say the same thing (they are written together) are named together.
    let mut groups: Vec<(String, &Marker)> = Vec::new();
    for f in markers {
        match &f.marker {
            Ok(m) => match groups.iter_mut().find(|(_, g)| *g == m) {
                Some((paths, _)) => paths.push_str(&format!(", {}", f.path.display())),
                None => groups.push((f.path.display().to_string(), m)),
            },
            Err(e) => evidence.push(format!(
                "{}: a marker of rewind's that {e}",
                f.path.display()
            )),
        }
    }
    for (paths, m) in &groups {
        evidence.insert(
            0,
            format!(
                "{paths}: rewind recorded it up to audit entry #{} ({}), in state store {} ({})",
                m.audit_seq, m.updated_at, m.store_id, m.store
            ),
        );
    }
    evidence.extend(directories.iter().cloned());

    if footprint.is_empty() {
        if evidence.is_empty() {
            return None;
        }
        findings.push(if footprint.store_id.is_empty() {
            "it holds nothing: the file is missing, empty, or has no tables in it (deleted, emptied or replaced)".to_string()
        } else {
            format!(
                "it holds nothing for the environment (no releases, no runs, no audit entries): it was emptied or recreated (it is state store {})",
                footprint.store_id
            )
        });
        return Some(Problem { findings, evidence });
    }

    // The head recorded apart from the chain must be the chain's newest entry.
    let last = footprint.last.as_ref();
    match (&footprint.head, last) {
        (Some(h), Some(l)) if h == l => {}
        (Some((hseq, _)), Some((lseq, _))) if lseq < hseq => findings.push(format!(
            "its audit chain ends at entry #{lseq}, but its head was recorded as entry #{hseq}: the newest entries were removed"
        )),
        (Some((hseq, _)), None) => findings.push(format!(
            "its audit chain is empty, but its head was recorded as entry #{hseq}: the entries were removed"
        )),
        (Some((hseq, _)), Some((lseq, _))) => findings.push(format!(
            "its audit chain's newest entry #{lseq} is not the head recorded apart from the chain (entry #{hseq}): one of them was changed"
        )),
        (None, Some((lseq, _))) => findings.push(format!(
            "its audit chain runs to entry #{lseq}, but no head was recorded apart from it: the head record was removed"
        )),
        (None, None) => {}
    }

    // An unreadable marker proves only that rewind was here, which a store with entries
    // does not contradict; it is rewritten after the next write.
    for (paths, m) in &groups {
        if m.store_id != footprint.store_id {
            findings.push(format!(
                "{paths} says the environment is recorded in state store {} ({}), but this is state store {}: the store was replaced",
                m.store_id,
                m.store,
                footprint.store_id
            ));
            continue;
        }
        let lseq = last.map(|l| l.0).unwrap_or(0);
        if m.audit_seq > lseq {
            findings.push(format!(
                "{paths} records audit entry #{} ({}), but the chain ends at entry #{lseq}: entries were removed, or the store was put back from an older copy",
                m.audit_seq,
                m.updated_at
            ));
            continue;
        }
        match hash_at(m.audit_seq) {
            Some(h) if h == m.audit_hash => {}
            Some(_) => findings.push(format!(
                "audit entry #{} is not the one {paths} recorded ({}): the chain was rewritten",
                m.audit_seq, m.updated_at
            )),
            None => findings.push(format!(
                "audit entry #{} that {paths} recorded ({}) is missing from the chain",
                m.audit_seq, m.updated_at
            )),
        }
    }
    if findings.is_empty() {
        None
    } else {
        Some(Problem { findings, evidence })
    }
}

/// Reads the markers, the store's footprint and the directories, and compares them.
pub async fn check(config: &Config, store: &dyn Store) -> rewind_store::Result<Option<Problem>> {
    let env = &config.environment.name;
    let markers = read_markers(config);
    let footprint = store.footprint(env).await?;
    let mut hashes = std::collections::BTreeMap::new();
    for m in markers.iter().filter_map(|f| f.marker.as_ref().ok()) {
        if m.store_id == footprint.store_id
            && footprint.last.as_ref().is_some_and(|l| m.audit_seq <= l.0)
            && !hashes.contains_key(&m.audit_seq)
        {
            hashes.insert(m.audit_seq, store.audit_hash_at(env, m.audit_seq).await?);
        }
    }
    // The directories matter only to a store that holds nothing: a used store is judged
    // by its own head and the markers.
    let directories = if footprint.is_empty() {
        directory_evidence(config)
    } else {
        Vec::new()
    };
    Ok(judge(
        &footprint,
        &markers,
        &|seq| hashes.get(&seq).cloned().flatten(),
        &directories,
    ))
}

/// Writes the markers from what the store holds now (nothing when it holds nothing for
/// the environment). Each marker is written to a temporary file, pushed to disk and
/// renamed over the old one, so a reader sees the old marker or the new, never half of
/// one. Returns the markers that could not be written, with the reason.
pub async fn write_markers(
    config: &Config,
    store: &dyn Store,
    location: &str,
) -> rewind_store::Result<Vec<String>> {
    let env = &config.environment.name;
    let footprint = store.footprint(env).await?;
    let Some((seq, hash)) = footprint.last.clone() else {
        return Ok(Vec::new());
    };
    let marker = Marker {
        format: MARKER_FORMAT,
        environment: env.clone(),
        store_id: footprint.store_id.clone(),
        store: location.to_string(),
        audit_seq: seq,
        audit_hash: hash,
        updated_at: rewind_core::now_rfc3339(),
    };
    let mut failed = Vec::new();
    for path in marker_paths(config) {
        if let Err(e) = write_one(&path, &marker) {
            failed.push(format!("{}: {e}", path.display()));
        }
    }
    Ok(failed)
}

fn write_one(path: &Path, marker: &Marker) -> std::io::Result<()> {
    use std::io::Write as _;
    // Unchanged (same store, same head): nothing to write.
    if let Ok(text) = std::fs::read(path)
        && let Ok(old) = serde_json::from_slice::<Marker>(&text)
        && old.store_id == marker.store_id
        && old.audit_seq == marker.audit_seq
        && old.audit_hash == marker.audit_hash
        && old.store == marker.store
    {
        return Ok(());
    }
    let dir = path.parent().expect("a marker path has a directory");
    // The directory of a release-dir root is created by its first deploy; a marker does
    // not create the root itself.
    if let Some(root) = dir.parent()
        && !root.is_dir()
    {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.partial-{}", std::process::id()));
    let text = serde_json::to_vec_pretty(marker).expect("a marker serialises");
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself reaches the disk with the directory.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    sweep_partials(dir, &name);
    written
}

/// Removes temporary marker files that a killed rewind left (their process is gone).
fn sweep_partials(dir: &Path, name: &str) {
    let prefix = format!(".{name}.partial-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = file
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !rewind_components::host::process_alive(pid) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(store: &str, head: Option<i64>, last: Option<i64>) -> Footprint {
        Footprint {
            store_id: store.into(),
            head: head.map(|s| (s, format!("h{s}"))),
            last: last.map(|s| (s, format!("h{s}"))),
            audit_entries: last.unwrap_or(0),
            releases: i64::from(last.is_some()),
            runs: i64::from(last.is_some()),
        }
    }

    fn marker(store: &str, seq: i64) -> Found {
        Found {
            path: PathBuf::from("/env/.rewind/environment-prod.json"),
            marker: Ok(Marker {
                format: 1,
                environment: "prod".into(),
                store_id: store.into(),
                store: "sqlite:/env/.rewind/state.db".into(),
                audit_seq: seq,
                audit_hash: format!("h{seq}"),
                updated_at: "2026-11-30T10:00:00Z".into(),
            }),
        }
    }

    fn hashes(seq: i64) -> Option<String> {
        Some(format!("h{seq}"))
    }

    #[test]
    fn a_first_deploy_has_nothing_to_compare() {
        assert_eq!(judge(&fp("a", None, None), &[], &hashes, &[]), None);
    }

    #[test]
    fn an_empty_store_over_evidence_is_refused() {
        let p = judge(&fp("b", None, None), &[marker("a", 7)], &hashes, &[]).unwrap();
        assert!(p.findings[0].contains("holds nothing"), "{p:?}");
        assert!(p.evidence[0].contains("#7"), "{p:?}");
        let p = judge(
            &fp("b", None, None),
            &[],
            &hashes,
            &["srv has current".into()],
        )
        .unwrap();
        assert_eq!(p.evidence, ["srv has current"]);
    }

    #[test]
    fn a_marker_that_lags_is_fine_one_ahead_is_not() {
        assert_eq!(
            judge(&fp("a", Some(9), Some(9)), &[marker("a", 7)], &hashes, &[]),
            None
        );
        let p = judge(&fp("a", Some(5), Some(5)), &[marker("a", 7)], &hashes, &[]).unwrap();
        assert!(p.findings[0].contains("ends at entry #5"), "{p:?}");
        let rewritten = |_| Some("other".to_string());
        let p = judge(
            &fp("a", Some(9), Some(9)),
            &[marker("a", 7)],
            &rewritten,
            &[],
        )
        .unwrap();
        assert!(p.findings[0].contains("rewritten"), "{p:?}");
    }

    #[test]
    fn another_store_or_a_lost_head_is_refused() {
        let p = judge(&fp("b", Some(3), Some(3)), &[marker("a", 3)], &hashes, &[]).unwrap();
        assert!(p.findings[0].contains("replaced"), "{p:?}");
        let p = judge(&fp("a", Some(9), Some(6)), &[], &hashes, &[]).unwrap();
        assert!(
            p.findings[0].contains("newest entries were removed"),
            "{p:?}"
        );
    }

    #[test]
    fn an_unreadable_marker_does_not_block_a_used_store() {
        let bad = Found {
            path: PathBuf::from("/x"),
            marker: Err("is not a marker".into()),
        };
        assert_eq!(
            judge(&fp("a", Some(2), Some(2)), &[bad], &hashes, &[]),
            None
        );
    }
}
