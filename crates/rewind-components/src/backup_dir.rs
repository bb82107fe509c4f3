//! A database component's backup directory: `<id>.sqlite` or `<id>.dump` with its
//! description `<id>.json` beside it, and what writers and killed writers leave there.
//!
//! A backup is written in this order: the file as `.<id>.<ext>.rewind-partial`, renamed to
//! `<id>.<ext>`; the description as `.<id>.json.partial`, renamed to `<id>.json`. The
//! description's rename is the commit: a backup is listed only when its description and its
//! file are both there, so no half state is ever listed. A writer killed before that leaves
//! debris: partial files, a file without a description. Pruning removes the description
//! first, so one killed half-way leaves a file without a description too.
//!
//! Debris is swept by whoever holds the directory's lock (`.rewind-backups.lock`, an `flock`)
//! alone: every writer holds it shared while it writes, a sweep needs it exclusive and skips
//! when it cannot have it. So a sweep never takes a live writer's files, and a writer that
//! died (its lock went with it, SIGKILL included) is swept by the next one that looks.

use std::fs::File;
use std::path::{Path, PathBuf};

/// The directory's lock file.
pub const LOCK: &str = ".rewind-backups.lock";

/// The extensions of backup files.
const KINDS: [&str; 2] = ["sqlite", "dump"];

/// The directory's lock, held shared by a writer for as long as it writes.
pub struct WriterLock {
    _file: File,
}

/// Opens (creating) the directory's lock file.
fn open_lock(dir: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK))
}

/// Sweeps the directory if no writer is at work (see the module docs), then takes the lock
/// shared for a writer. Returns what the sweep removed.
pub async fn begin_writing(dir: &Path) -> std::io::Result<(WriterLock, Vec<PathBuf>)> {
    let file = open_lock(dir)?;
    let swept = match file.try_lock() {
        Ok(()) => sweep_locked(dir),
        Err(std::fs::TryLockError::WouldBlock) => Vec::new(),
        Err(std::fs::TryLockError::Error(e)) => return Err(e),
    };
    // Shared from here (from exclusive, or waiting for a sweep under way to finish).
    let share = file.try_clone()?;
    tokio::task::spawn_blocking(move || share.lock_shared())
        .await
        .map_err(std::io::Error::other)??;
    Ok((WriterLock { _file: file }, swept))
}

/// Sweeps the directory if no writer is at work; a directory that cannot be locked (it does
/// not exist, it is read-only) is left as it is. Returns what was removed.
pub fn sweep(dir: &Path) -> Vec<PathBuf> {
    let Ok(file) = open_lock(dir) else {
        return Vec::new();
    };
    match file.try_lock() {
        Ok(()) => sweep_locked(dir),
        Err(_) => Vec::new(),
    }
}

/// Removes partial files and halves of backups. The caller holds the lock exclusively.
fn sweep_locked(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut removed = Vec::new();
    for name in &names {
        if is_debris(name, &|n| names.iter().any(|m| m == n)) {
            let path = dir.join(name);
            if std::fs::remove_file(&path).is_ok() {
                removed.push(path);
            }
        }
    }
    removed
}

/// Is `name` debris, given which names the directory holds?
fn is_debris(name: &str, present: &dyn Fn(&str) -> bool) -> bool {
    if name == LOCK {
        return false;
    }
    if let Some(rest) = name.strip_prefix('.') {
        // `.<id>.json.partial`; `.<id>.<ext>.rewind-partial` (and the `-<random>` of older
        // rewinds, and SQLite's journal beside it).
        if let Some(id) = rest.strip_suffix(".json.partial") {
            return is_id(id);
        }
        return rest.find(rewind_dbkit::PARTIAL_MARK).is_some_and(|i| {
            rest[..i]
                .rsplit_once('.')
                .is_some_and(|(id, ext)| KINDS.contains(&ext) && is_id(id))
        });
    }
    let Some((id, ext)) = name.rsplit_once('.') else {
        return false;
    };
    if !is_id(id) {
        return false;
    }
    let has_file = KINDS.iter().any(|k| present(&format!("{id}.{k}")));
    match ext {
        // A file without its description: never listed, and never pruned.
        e if KINDS.contains(&e) => !present(&format!("{id}.json")),
        // A description without its file: half pruned.
        "json" => !has_file,
        _ => false,
    }
}

/// Is `s` a backup id: `20261121T140312.123Z-3fa9c1` (the milliseconds are optional)?
pub fn is_id(s: &str) -> bool {
    let Some((time, hash)) = s.split_once('-') else {
        return false;
    };
    let Some(time) = time.strip_suffix('Z') else {
        return false;
    };
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (time, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let hms_ok =
        hms.len() == 15 && hms.as_bytes()[8] == b'T' && digits(&hms[..8]) && digits(&hms[9..]);
    hms_ok
        && frac.is_none_or(digits)
        && hash.len() == 6
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "20261121T140312.123Z-3fa9c1";

    #[test]
    fn ids() {
        assert!(is_id(ID));
        assert!(is_id("20261121T140312Z-3fa9c1"));
        for bad in [
            "20261121T140312.123Z",
            "2026112T140312.123Z-3fa9c1",
            "20261121T140312.123Z-3fa9c",
            "20261121X140312.123Z-3fa9c1",
            "notes",
        ] {
            assert!(!is_id(bad), "{bad}");
        }
    }

    #[test]
    fn debris() {
        let complete = |n: &str| [format!("{ID}.json"), format!("{ID}.dump")].contains(&n.into());
        let file_only = |n: &str| n == format!("{ID}.sqlite");
        let meta_only = |n: &str| n == format!("{ID}.json");
        // A complete backup stays.
        assert!(!is_debris(&format!("{ID}.dump"), &complete));
        assert!(!is_debris(&format!("{ID}.json"), &complete));
        // Halves go.
        assert!(is_debris(&format!("{ID}.sqlite"), &file_only));
        assert!(is_debris(&format!("{ID}.json"), &meta_only));
        // Partial files go, today's and older rewinds' names.
        for p in [
            format!(".{ID}.dump.rewind-partial"),
            format!(".{ID}.sqlite.rewind-partial-0a1b2c3d4e5f6a7b"),
            format!(".{ID}.sqlite.rewind-partial-journal"),
            format!(".{ID}.json.partial"),
        ] {
            assert!(is_debris(&p, &complete), "{p}");
        }
        // What is not rewind's stays: the lock, other files, other names.
        for keep in [LOCK, "README", "notes.json", ".hidden", "old.dump"] {
            assert!(!is_debris(keep, &|_| false), "{keep}");
        }
    }
}
