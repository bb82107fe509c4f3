//! Reading a migrations directory in the layout of the tool a team already uses.
//!
//! | format | layout | version stored by the tool |
//! |---|---|---|
//! | sqlx | `<n>_<name>.sql` (simple, no down) or `<n>_<name>.up.sql` + `.down.sql` | `n` as a 64-bit integer |
//! | diesel | `<version>_<name>/up.sql` + `down.sql` | the part before the first `_` with `-` removed |
//! | golang-migrate | `<n>_<name>.up.sql` + `.down.sql` | `n` as an unsigned integer |
//! | Flyway | `V<version>__<desc>.sql`, undo `U<version>__<desc>.sql` | the version with `_` written as `.` |
//! | refinery | `V<n>__<name>.sql` | `n` as a 32-bit integer |
//! | sqitch | `sqitch.plan` + `deploy/`, `revert/`, `verify/<change>.sql` | the change name (and its id) |
//!
//! Numeric versions are normalised the way the tool parses them (`0001` → `1`), so they
//! compare equal to what the tool wrote in its history table. Sqitch changes have no
//! version: their [`Migration::version`] is their position in the plan, zero-padded
//! (`0001`, `0002` …), and [`Migration::name`] is the change name the registry stores.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The tool whose layout and history table a migrations directory follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Sqlx,
    Diesel,
    GolangMigrate,
    Flyway,
    Refinery,
    Sqitch,
}

impl Format {
    pub const ALL: [Format; 6] = [
        Format::Sqlx,
        Format::Diesel,
        Format::GolangMigrate,
        Format::Flyway,
        Format::Refinery,
        Format::Sqitch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::Sqlx => "sqlx",
            Format::Diesel => "diesel",
            Format::GolangMigrate => "golang-migrate",
            Format::Flyway => "flyway",
            Format::Refinery => "refinery",
            Format::Sqitch => "sqitch",
        }
    }

    /// The history table the tool keeps (for sqitch: the registry's `changes` table).
    pub fn history_table(self) -> &'static str {
        match self {
            Format::Sqlx => "_sqlx_migrations",
            Format::Diesel => "__diesel_schema_migrations",
            Format::GolangMigrate => "schema_migrations",
            Format::Flyway => "flyway_schema_history",
            Format::Refinery => "refinery_schema_history",
            Format::Sqitch => "sqitch.changes",
        }
    }

    /// Tells the format from the directory's contents, when only one format fits.
    ///
    /// `<n>_<name>.up.sql` fits both sqlx and golang-migrate, and `V<n>__<name>.sql` fits
    /// both Flyway and refinery; such directories are ambiguous unless something else
    /// decides (a simple `<n>_<name>.sql` file → sqlx; an undo `U…` file, a dotted version
    /// or a `flyway.conf`/`flyway.toml` → Flyway). Ambiguity is an error naming the
    /// candidates: pass the format explicitly then.
    pub fn detect(dir: &Path) -> Result<Format> {
        let detect_err = |reason: String| Error::Detect {
            dir: dir.to_path_buf(),
            reason,
        };
        if dir.join("sqitch.plan").is_file() {
            return Ok(Format::Sqitch);
        }
        let entries = read_dir(dir)?;
        let mut subdir_with_up = false;
        let (mut up_down, mut simple, mut flyway_like, mut undo, mut dotted, mut conf) =
            (false, false, false, false, false, false);
        for (path, is_dir) in &entries {
            let name = file_name(path);
            if *is_dir {
                if path.join("up.sql").is_file() {
                    subdir_with_up = true;
                }
                continue;
            }
            if name == "flyway.conf" || name == "flyway.toml" {
                conf = true;
            }
            if !name.ends_with(".sql") {
                continue;
            }
            if let Some((prefix, rest)) = name.split_once("__") {
                let (kind, version) = prefix.split_at(prefix.len().min(1));
                if (kind == "V" || kind == "U") && !rest.is_empty() {
                    flyway_like = true;
                    undo |= kind == "U";
                    dotted |= version.contains('.') || version.contains('_');
                    continue;
                }
            }
            if name.ends_with(".up.sql") || name.ends_with(".down.sql") {
                up_down = true;
            } else if name
                .split_once('_')
                .is_some_and(|(v, _)| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            {
                simple = true;
            }
        }
        let mut found = Vec::new();
        if subdir_with_up {
            found.push("diesel (<version>_<name>/up.sql)");
        }
        if flyway_like {
            found.push("Flyway/refinery (V<version>__<name>.sql)");
        }
        if up_down || simple {
            found.push("sqlx/golang-migrate (<version>_<name>[.up|.down].sql)");
        }
        match found.len() {
            0 => return Err(detect_err("no migrations found".into())),
            1 => {}
            _ => return Err(detect_err(format!("mixed layouts: {}", found.join(", ")))),
        }
        if subdir_with_up {
            Ok(Format::Diesel)
        } else if flyway_like {
            if undo || dotted || conf {
                Ok(Format::Flyway)
            } else {
                Err(detect_err(
                    "V<n>__<name>.sql fits both Flyway and refinery; say which".into(),
                ))
            }
        } else if simple {
            Ok(Format::Sqlx)
        } else {
            Err(detect_err(
                "<n>_<name>.up.sql/.down.sql fits both sqlx and golang-migrate; say which".into(),
            ))
        }
    }
}

impl Format {
    /// Orders two versions the way the tool orders its migrations:
    ///
    /// - diesel: as text, byte by byte (`MigrationVersion` is a string; `2026-01-01-000000-0000`
    ///   → `202601010000000000` sorts before `20260201000000` although it is the larger
    ///   number), exactly as `diesel migration run` picks pending migrations;
    /// - sqlx, golang-migrate, refinery: as integers;
    /// - Flyway: dot-separated integer parts, missing parts count as 0 (`1.0` = `1`,
    ///   `1.10` > `1.9`), as `MigrationVersion.compareTo` does;
    /// - sqitch: the plan's order (the version is the position in the plan).
    pub fn cmp_versions(self, a: &str, b: &str) -> Ordering {
        match self {
            Format::Diesel => a.cmp(b),
            Format::Flyway => {
                let parts = |s: &str| -> Vec<String> {
                    let mut p: Vec<String> = s
                        .split('.')
                        .map(|x| {
                            let t = x.trim_start_matches('0');
                            if t.is_empty() { "0".into() } else { t.into() }
                        })
                        .collect();
                    while p.len() > 1 && p.last().is_some_and(|x| x == "0") {
                        p.pop();
                    }
                    p
                };
                let (pa, pb) = (parts(a), parts(b));
                for i in 0..pa.len().max(pb.len()) {
                    let x = pa.get(i).map(String::as_str).unwrap_or("0");
                    let y = pb.get(i).map(String::as_str).unwrap_or("0");
                    let ord = x.len().cmp(&y.len()).then_with(|| x.cmp(y));
                    if ord != Ordering::Equal {
                        return ord;
                    }
                }
                Ordering::Equal
            }
            Format::Sqlx | Format::GolangMigrate | Format::Refinery | Format::Sqitch => {
                cmp_versions(a, b)
            }
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown migration format {s:?}"))
    }
}

/// One migration, in the tool's own terms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Migration {
    /// The version as the tool stores it (see the module table); sorts with
    /// [`cmp_versions`].
    pub version: String,
    /// The name or description part of the file name (sqitch: the change name).
    pub name: String,
    /// The up (deploy) script.
    pub up: String,
    /// The down (revert/undo) script, when the format and the directory have one.
    pub down: Option<String>,
    /// The up script's file.
    pub file: PathBuf,
    /// The down script's file.
    pub down_file: Option<PathBuf>,
    /// sqitch only: what the registry needs about the change.
    pub sqitch: Option<SqitchChange>,
    /// How the team's tool is told to run the up script outside a transaction, when it is
    /// (diesel's `metadata.toml` `run_in_transaction = false`, sqlx's `-- no-transaction`
    /// first line, a Flyway `.sql.conf` with `executeInTransaction=false`).
    pub up_marker: Option<String>,
    /// The same for the down script (sqlx and Flyway mark each file on its own; diesel's
    /// metadata covers both).
    pub down_marker: Option<String>,
    /// Things the tool itself would quietly do with this migration that a person should know
    /// (an unreadable `metadata.toml` that diesel ignores …).
    pub warnings: Vec<String>,
}

impl Migration {
    /// What identifies this migration in the tool's history: the version, or for sqitch the
    /// change id (a reworked change has one name and several ids).
    pub fn key(&self) -> &str {
        match &self.sqitch {
            Some(s) => &s.change_id,
            None => &self.version,
        }
    }

    /// The version and name for a person: `20240101000000 create_users`; sqitch changes by
    /// name (`add_email`, a reworked one as `add_email@v1.0`).
    pub fn label(&self) -> String {
        match &self.sqitch {
            Some(s) => match &s.rework_tag {
                Some(t) => format!("{}@{t}", self.name),
                None => self.name.clone(),
            },
            None => format!("{} {}", self.version, self.name),
        }
    }

    /// True when there is no down script, or it is only whitespace, comments and `;`:
    /// running it would not undo anything, so rollback tooling must treat it as missing.
    pub fn down_is_empty(&self) -> bool {
        self.down.as_deref().is_none_or(script_is_empty)
    }
}

/// True when `sql` does nothing on either engine. A migration does not know its engine, and
/// the two disagree only on comments (PostgreSQL nests `/* */` and wants it closed; SQLite
/// neither): counting a script as empty when either engine reads it so errs on the side of
/// a missing down script (rollback needs a backup), never on running a no-op as the undo.
pub(crate) fn script_is_empty(sql: &str) -> bool {
    // A script whose first character is neither a comment's nor a `;` does something: no
    // need to read it (most down scripts start with their first statement).
    let first = sql
        .trim_start_matches('\u{feff}')
        .trim_start()
        .chars()
        .next();
    if first.is_some_and(|c| c.is_alphabetic()) {
        return false;
    }
    crate::sql::is_empty(sql, crate::sql::Dialect::Postgres)
        || crate::sql::is_empty(sql, crate::sql::Dialect::Sqlite)
}

/// What sqitch's registry records about a change, from `sqitch.plan`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqitchChange {
    pub project: String,
    pub uri: Option<String>,
    /// The change id: SHA-1 over the change's canonical description (see
    /// [`sqitch_change_id`]).
    pub change_id: String,
    /// Required changes as sqitch writes them (`change`, `change@tag`, `@tag`,
    /// `other_project:change`); the own project's prefix is left out.
    pub requires: Vec<String>,
    /// Conflicting changes, likewise (without the `!`).
    pub conflicts: Vec<String>,
    /// Tags declared right after this change in the plan.
    pub tags: Vec<SqitchTag>,
    /// `YYYY-MM-DDTHH:MM:SSZ`, as in the plan.
    pub planned_at: String,
    pub planner_name: String,
    pub planner_email: String,
    pub note: String,
    pub verify: Option<String>,
    /// For a change planned again later (`sqitch rework`): the tag its scripts are named
    /// after (`deploy/<change>@<tag>.sql`); `None` for the newest instance.
    pub rework_tag: Option<String>,
    /// The project's `sqitch.conf` says `[deploy] verify = true`: sqitch runs the verify
    /// script after the deploy script and takes the change back when it fails.
    pub verify_on_deploy: bool,
    /// The verify script's file, when there is one.
    pub verify_file: Option<PathBuf>,
    /// The sqitch project's directory (where `sqitch.plan` is): sqitch runs psql there.
    pub project_dir: PathBuf,
}

/// A `@tag` line of `sqitch.plan`: what the registry's `tags` table records about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqitchTag {
    /// The name without `@`.
    pub name: String,
    /// SHA-1 over the tag's canonical description (see [`sqitch_tag_id`]).
    pub tag_id: String,
    pub planned_at: String,
    pub planner_name: String,
    pub planner_email: String,
    pub note: String,
}

/// Compares two versions: `.`-separated parts, each numerically when both are digits
/// (of any length), else as text.
pub fn cmp_versions(a: &str, b: &str) -> Ordering {
    let mut pa = a.split('.');
    let mut pb = b.split('.');
    loop {
        match (pa.next(), pb.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
                let ord = if digits(x) && digits(y) {
                    let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                    x.len().cmp(&y.len()).then_with(|| x.cmp(y))
                } else {
                    x.cmp(y)
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

/// Reads `dir` in `format`, in apply order.
pub fn read(dir: &Path, format: Format) -> Result<Vec<Migration>> {
    let mut list = match format {
        Format::Sqlx => read_flat(dir, format)?,
        Format::GolangMigrate => read_flat(dir, format)?,
        Format::Flyway | Format::Refinery => read_versioned(dir, format)?,
        Format::Diesel => read_diesel(dir)?,
        Format::Sqitch => return read_sqitch(dir),
    };
    list.sort_by(|a, b| format.cmp_versions(&a.version, &b.version));
    if format == Format::Flyway {
        // `V1` and `V1.0` are the same version to Flyway, which refuses the pair.
        for w in list.windows(2) {
            if format.cmp_versions(&w[0].version, &w[1].version) == Ordering::Equal {
                return Err(bad(
                    &w[1].file,
                    format!(
                        "version {} is the same Flyway version as {} ({})",
                        w[1].version,
                        w[0].version,
                        w[0].file.display()
                    ),
                ));
            }
        }
    }
    Ok(list)
}

/// Reads `dir` after [`Format::detect`].
pub fn read_detected(dir: &Path) -> Result<(Format, Vec<Migration>)> {
    let format = Format::detect(dir)?;
    Ok((format, read(dir, format)?))
}

fn bad(file: &Path, reason: impl Into<String>) -> Error {
    Error::BadFile {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_dir(dir: &Path) -> Result<Vec<(PathBuf, bool)>> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let is_dir = path.is_dir();
        if file_name(&path).starts_with('.') {
            continue;
        }
        out.push((path, is_dir));
    }
    out.sort();
    Ok(out)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses a decimal version the way the tool does (`0001` → `1`), within `max`.
fn int_version(file: &Path, text: &str, max: u64) -> Result<String> {
    let n: u64 = text
        .parse()
        .ok()
        .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| bad(file, format!("version {text:?} is not a whole number")))?;
    if n > max {
        return Err(bad(
            file,
            format!("version {n} is too large (at most {max})"),
        ));
    }
    Ok(n.to_string())
}

#[derive(Default)]
struct Pair {
    name: String,
    up: Option<(PathBuf, String)>,
    down: Option<(PathBuf, String)>,
}

fn insert_part(
    pairs: &mut BTreeMap<String, Pair>,
    path: &Path,
    version: String,
    name: &str,
    is_down: bool,
) -> Result<()> {
    let pair = pairs.entry(version.clone()).or_default();
    if pair.name.is_empty() {
        pair.name = name.to_string();
    } else if pair.name != name {
        return Err(bad(
            path,
            format!(
                "version {version} is also used by a migration named {:?}",
                pair.name
            ),
        ));
    }
    let slot = if is_down {
        &mut pair.down
    } else {
        &mut pair.up
    };
    if let Some((other, _)) = slot {
        return Err(bad(
            path,
            format!("duplicate version {version} (also {})", other.display()),
        ));
    }
    *slot = Some((path.to_path_buf(), read_text(path)?));
    Ok(())
}

/// Directory-level warnings go to the first migration, where a person reading the plan
/// sees them.
fn attach_warnings(list: &mut [Migration], warnings: Vec<String>) {
    if let Some(first) = list.first_mut() {
        first.warnings.extend(warnings);
    }
}

fn finish_pairs(
    pairs: BTreeMap<String, Pair>,
    format: Format,
    skipped: &mut Vec<String>,
) -> Result<Vec<Migration>> {
    let mut out = Vec::new();
    for (version, pair) in pairs {
        let Some((file, up)) = pair.up else {
            // The tools read each file on its own: a down script whose up script is missing
            // (or named with another version) is never run.
            let (down_file, _) = pair.down.expect("a pair has an up or a down");
            skipped.push(format!(
                "{} is a down script without an up script for version {version}: {} never runs it",
                down_file.display(),
                format.name()
            ));
            continue;
        };
        // A missing down file is allowed (golang-migrate and sqlx accept it): "no down".
        let (down_file, down) = match pair.down {
            Some((f, d)) => (Some(f), Some(d)),
            None => (None, None),
        };
        out.push(Migration {
            version,
            name: pair.name,
            up,
            down,
            file,
            down_file,
            ..Migration::default()
        });
    }
    Ok(out)
}

/// sqlx and golang-migrate: `<n>_<name>.sql`, `<n>_<name>.up.sql`, `<n>_<name>.down.sql`.
fn read_flat(dir: &Path, format: Format) -> Result<Vec<Migration>> {
    let mut skipped = Vec::new();
    let mut pairs: BTreeMap<String, Pair> = BTreeMap::new();
    let mut simple: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (path, is_dir) in read_dir(dir)? {
        let fname = file_name(&path);
        if is_dir {
            continue;
        }
        let (v, stem, is_down, is_simple) = if format == Format::GolangMigrate {
            // golang-migrate's pattern is `^([0-9]+)_(.*)\.(down|up)\.(.*)$` with a greedy
            // middle group and any extension (`30_x.up..sql` is an up migration named `x`);
            // other files are passed over.
            match golang_migrate_name(&fname) {
                Some((v, name, down)) => (v, name, down, false),
                None => {
                    if fname.ends_with(".sql") {
                        skipped.push(format!(
                            "{} does not match <version>_<name>.up|down.<ext>: golang-migrate never runs it",
                            path.display()
                        ));
                    }
                    continue;
                }
            }
        } else {
            if !fname.ends_with(".sql") {
                continue;
            }
            let Some((v, rest)) = fname.split_once('_') else {
                skipped.push(format!(
                    "{} is not <version>_<name>.sql: sqlx ignores it",
                    path.display()
                ));
                continue;
            };
            // sqlx: the kind from the suffix, the description with every repetition of the
            // suffix trimmed (`1_a.sql.sql` is "a"), as its `trim_end_matches` does.
            if rest.ends_with(".up.sql") {
                (v, rest.trim_end_matches(".up.sql"), false, false)
            } else if rest.ends_with(".down.sql") {
                (v, rest.trim_end_matches(".down.sql"), true, false)
            } else {
                (v, rest.trim_end_matches(".sql"), false, true)
            }
        };
        if stem.is_empty() {
            return Err(bad(&path, "the migration has no name"));
        }
        let max = if format == Format::Sqlx {
            i64::MAX as u64
        } else {
            u64::MAX
        };
        let version = int_version(&path, v, max)?;
        // sqlx's description replaces `_` with spaces; golang-migrate keeps the name.
        let name = if format == Format::Sqlx {
            stem.replace('_', " ")
        } else {
            stem.to_string()
        };
        if is_simple {
            simple.insert(version.clone(), path.clone());
        } else if let Some(other) = simple.get(&version) {
            return Err(bad(
                &path,
                format!("duplicate version {version} (also {})", other.display()),
            ));
        }
        if is_simple && pairs.contains_key(&version) {
            return Err(bad(&path, format!("duplicate version {version}")));
        }
        insert_part(&mut pairs, &path, version, &name, is_down)?;
    }
    let mut list = finish_pairs(pairs, format, &mut skipped)?;
    attach_warnings(&mut list, skipped);
    if format == Format::Sqlx {
        // sqlx looks at each file's raw text (a byte-order mark hides the directive).
        let marker = |sql: &str| {
            sql.starts_with(SQLX_NO_TRANSACTION)
                .then(|| format!("`{SQLX_NO_TRANSACTION}` on its first line"))
        };
        for m in &mut list {
            m.up_marker = marker(&m.up);
            m.down_marker = m.down.as_deref().and_then(marker);
        }
    }
    Ok(list)
}

/// Splits a golang-migrate file name as its pattern `^([0-9]+)_(.*)\.(down|up)\.(.*)$`
/// does: (version, name, is_down). The name group is greedy, so the last `.up.` or `.down.`
/// decides.
fn golang_migrate_name(fname: &str) -> Option<(&str, &str, bool)> {
    let (v, rest) = fname.split_once('_')?;
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (at, is_down) = match (rest.rfind(".up."), rest.rfind(".down.")) {
        (Some(u), Some(d)) if d > u => (d, true),
        (Some(u), _) => (u, false),
        (None, Some(d)) => (d, true),
        (None, None) => return None,
    };
    Some((v, &rest[..at], is_down))
}

/// sqlx's directive, on a script's first line, to run it outside a transaction.
const SQLX_NO_TRANSACTION: &str = "-- no-transaction";

/// Flyway's per-script configuration `<script>.conf` (Java properties): the marker when it
/// says `executeInTransaction=false`.
fn flyway_script_marker(script: &Path) -> Result<Option<String>> {
    let mut conf = script.as_os_str().to_owned();
    conf.push(".conf");
    let conf = PathBuf::from(conf);
    if !conf.is_file() {
        return Ok(None);
    }
    let text = read_text(&conf)?;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let Some((key, value)) = line.split_once(['=', ':']) else {
            continue;
        };
        if key.trim() == "executeInTransaction" {
            return match value.trim().to_ascii_lowercase().as_str() {
                "false" => Ok(Some(format!(
                    "{} says executeInTransaction=false",
                    file_name(&conf)
                ))),
                "true" => Ok(None),
                other => Err(bad(
                    &conf,
                    format!("executeInTransaction must be true or false, not {other:?}"),
                )),
            };
        }
    }
    Ok(None)
}

/// Flyway (`V`/`U`) and refinery (`V`): `<prefix><version>__<description>.sql`.
fn read_versioned(dir: &Path, format: Format) -> Result<Vec<Migration>> {
    let mut skipped: Vec<String> = Vec::new();
    let mut pairs: BTreeMap<String, Pair> = BTreeMap::new();
    for (path, is_dir) in read_dir(dir)? {
        let fname = file_name(&path);
        if is_dir || !(fname.ends_with(".sql")) {
            continue;
        }
        if fname.starts_with("R__") {
            return Err(bad(
                &path,
                "Flyway repeatable migrations (R__) are not supported by rewind: Flyway runs them after the versioned ones whenever they change",
            ));
        }
        if format == Format::Flyway && fname.starts_with('B') && fname.contains("__") {
            // A baseline migration: Flyway uses it only to start an empty database (instead of
            // the versioned migrations up to it); once a history exists it is ignored.
            skipped.push(format!(
                "{} is a Flyway baseline migration: rewind applies the versioned migrations instead, which Flyway does too once a history exists (on an empty database Flyway would start from the baseline)",
                path.display()
            ));
            continue;
        }
        let stem = fname.strip_suffix(".sql").unwrap_or(&fname);
        let Some((prefix, desc)) = stem.split_once("__") else {
            return Err(bad(&path, "expected V<version>__<description>.sql"));
        };
        let (kind, v) = prefix.split_at(prefix.len().min(1));
        let is_down = match (kind, format) {
            ("V", _) => false,
            ("U", Format::Flyway) => true,
            ("U", _) => {
                return Err(bad(
                    &path,
                    "refinery's unversioned (U) migrations are not supported",
                ));
            }
            _ => return Err(bad(&path, "expected a V (or, for Flyway, U) prefix")),
        };
        if desc.is_empty() {
            return Err(bad(&path, "the migration has no description"));
        }
        // refinery finds files by `^[UV](\d+(\.\d+)?)__(\w+)\.(rs|sql)$`: a name with a
        // space, a quote or a dash is not a migration to it.
        if format == Format::Refinery && !desc.chars().all(|c| c.is_alphanumeric() || c == '_') {
            skipped.push(format!(
                "{} has a name refinery does not read (letters, digits and _ only): refinery never runs it",
                path.display()
            ));
            continue;
        }
        let version = if format == Format::Refinery {
            int_version(&path, v, i32::MAX as u64)?
        } else {
            let dotted = v.replace('_', ".");
            if dotted.is_empty()
                || !dotted
                    .split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(bad(&path, format!("version {v:?} is not a Flyway version")));
            }
            dotted
        };
        // Flyway shows the description with `_` as spaces; refinery keeps the name.
        let name = if format == Format::Flyway {
            desc.replace('_', " ")
        } else {
            desc.to_string()
        };
        if !is_down {
            insert_part(&mut pairs, &path, version, &name, false)?;
        } else {
            // An undo may word its description differently; it pairs by version only.
            let pair = pairs.entry(version.clone()).or_default();
            if let Some((other, _)) = &pair.down {
                return Err(bad(
                    &path,
                    format!(
                        "duplicate undo for version {version} (also {})",
                        other.display()
                    ),
                ));
            }
            pair.down = Some((path.clone(), read_text(&path)?));
        }
    }
    let mut list = finish_pairs(pairs, format, &mut skipped)?;
    attach_warnings(&mut list, skipped);
    if format == Format::Flyway {
        for m in &mut list {
            m.up_marker = flyway_script_marker(&m.file)?;
            if let Some(down) = &m.down_file {
                m.down_marker = flyway_script_marker(down)?;
            }
        }
    }
    Ok(list)
}

/// diesel: `<version>_<name>/up.sql` and `down.sql`.
fn read_diesel(dir: &Path) -> Result<Vec<Migration>> {
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut out = Vec::new();
    for (path, is_dir) in read_dir(dir)? {
        if !is_dir {
            continue;
        }
        let dname = file_name(&path);
        let up_file = path.join("up.sql");
        let down_file = path.join("down.sql");
        // diesel passes over empty directories (a checkout leaves them behind).
        if fs::read_dir(&path)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
        {
            continue;
        }
        if !up_file.is_file() {
            if down_file.is_file() {
                return Err(bad(&down_file, "a down.sql without an up.sql"));
            }
            return Err(bad(&path, "a migration directory without up.sql"));
        }
        // Without `_` the whole name is the version (`version_from_string` splits at the
        // first `_`), and diesel shows the directory's name.
        let (v, name) = dname.split_once('_').unwrap_or((&dname, &dname));
        // diesel's version is whatever stands before the first `_`, dashes removed; it need
        // not be a number (`202305231715updatesubgraph…` is one in a real project).
        let version = v.replace('-', "");
        if version.is_empty() || name.is_empty() {
            return Err(bad(&path, "expected <version>_<name>"));
        }
        if version.len() > 50 {
            return Err(bad(
                &path,
                "the version is longer than diesel's 50 characters",
            ));
        }
        if let Some(other) = seen.insert(version.clone(), path.clone()) {
            return Err(bad(
                &path,
                format!("duplicate version {version} (also {})", other.display()),
            ));
        }
        let (down, down_file) = if down_file.is_file() {
            (Some(read_text(&down_file)?), Some(down_file))
        } else {
            (None, None)
        };
        let (marker, warnings) = diesel_metadata(&path.join("metadata.toml"));
        out.push(Migration {
            version,
            name: name.to_string(),
            up: read_text(&up_file)?,
            down,
            file: up_file,
            down_file,
            up_marker: marker.clone(),
            down_marker: marker,
            warnings,
            ..Migration::default()
        });
    }
    Ok(out)
}

/// diesel's `metadata.toml`, read as diesel reads it (`TomlMetadata`): no file, or one that
/// does not parse, means "in a transaction" (diesel ignores the parse error); a file that
/// parses but does not set `run_in_transaction` means NOT in a transaction, because diesel's
/// field default is `bool::default()`. Returns the marker and warnings for the surprising
/// cases.
fn diesel_metadata(path: &Path) -> (Option<String>, Vec<String>) {
    #[derive(serde::Deserialize)]
    struct Metadata {
        run_in_transaction: Option<toml::Value>,
    }
    let Ok(text) = fs::read_to_string(path) else {
        return (None, Vec::new());
    };
    match toml::from_str::<Metadata>(&text) {
        Err(e) => (
            None,
            vec![format!(
                "{} does not parse ({}); diesel ignores it and runs the migration in a transaction",
                path.display(),
                e.message()
            )],
        ),
        Ok(Metadata {
            run_in_transaction: None,
        }) => (
            Some("metadata.toml without run_in_transaction (diesel then runs it outside a transaction)".into()),
            vec![format!(
                "{} does not set run_in_transaction; diesel reads that as false and runs the migration outside a transaction",
                path.display()
            )],
        ),
        Ok(Metadata {
            run_in_transaction: Some(toml::Value::Boolean(false)),
        }) => (
            Some("metadata.toml says run_in_transaction = false".into()),
            Vec::new(),
        ),
        Ok(Metadata {
            run_in_transaction: Some(toml::Value::Boolean(true)),
        }) => (None, Vec::new()),
        Ok(Metadata {
            run_in_transaction: Some(other),
        }) => (
            None,
            vec![format!(
                "{}: run_in_transaction = {other} is not a boolean; diesel fails to read the file and runs the migration in a transaction",
                path.display()
            )],
        ),
    }
}

/// One line of `sqitch.plan` that declares a change or a tag, split into its parts.
struct PlanEntry<'a> {
    name: &'a str,
    deps: Option<&'a str>,
    planned_at: &'a str,
    planner_name: &'a str,
    planner_email: &'a str,
    note: String,
}

/// Splits `name [deps] timestamp planner <email> # note` (a tag line without its `@`) the
/// way sqitch's plan parser does: the note is everything after the first `#`, trimmed, with
/// `\n`, `\r` and `\\` unescaped.
fn parse_plan_entry(line: &str) -> Result<PlanEntry<'_>, String> {
    let (head, note) = match line.split_once('#') {
        Some((h, n)) => (h.trim(), unescape_note(n.trim())),
        None => (line.trim(), String::new()),
    };
    let (name, rest) = head.split_once(char::is_whitespace).unwrap_or((head, ""));
    if name.is_empty() {
        return Err("an entry without a name".into());
    }
    let mut rest = rest.trim_start();
    let mut deps = None;
    if let Some(after) = rest.strip_prefix('[') {
        let (d, after) = after
            .split_once(']')
            .ok_or("unclosed [ in the dependencies")?;
        deps = Some(d);
        rest = after.trim_start();
    }
    let (planned_at, planner) = rest
        .split_once(char::is_whitespace)
        .ok_or("expected: name [dependencies] timestamp planner <email>")?;
    if !is_plan_timestamp(planned_at) {
        return Err(format!(
            "{planned_at:?} is not a plan timestamp (YYYY-MM-DDTHH:MM:SSZ)"
        ));
    }
    let (planner_name, email) = planner
        .split_once('<')
        .ok_or("the planner has no <email>")?;
    let planner_email = email
        .trim_end()
        .strip_suffix('>')
        .ok_or("unclosed <email>")?;
    Ok(PlanEntry {
        name,
        deps,
        planned_at,
        planner_name: planner_name.trim(),
        planner_email,
        note,
    })
}

fn unescape_note(note: &str) -> String {
    let mut out = String::with_capacity(note.len());
    let mut chars = note.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SSZ`, the only form sqitch writes in a plan.
fn is_plan_timestamp(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// sqitch: `sqitch.plan` lists changes in order; `%pragma` lines set the project, `@tag`
/// lines tag the change before them, `#` lines are comments.
///
/// A change may only require changes planned before it (or tags declared before it), as
/// sqitch insists; dependencies on other projects (`other:change`) are resolved against the
/// registry when the change is applied.
///
/// Reworked changes (`sqitch rework`: the same name planned again after a tag) are read as
/// sqitch reads them: every instance is its own change with its own id, and the earlier
/// instances' scripts live in `deploy/<change>@<tag>.sql` (likewise `revert/`, `verify/`),
/// where `<tag>` is the first of the tags between the instance and its next rework whose
/// file exists (sqitch's `Change::path_segments`). A name planned twice without a tag in
/// between is refused, as sqitch refuses it.
///
/// Not supported (an error naming the line): `-change` revert entries.
fn read_sqitch(dir: &Path) -> Result<Vec<Migration>> {
    let plan_file = dir.join("sqitch.plan");
    let plan = read_text(&plan_file)?;
    let verify_on_deploy = sqitch_deploy_verifies(dir);
    let mut project = None;
    let mut uri = None;
    let mut out: Vec<Migration> = Vec::new();
    // Changes planned since the last tag, with their lines: a name may not repeat among them.
    let mut since_tag: BTreeMap<String, usize> = BTreeMap::new();
    for (i, raw) in plan.lines().enumerate() {
        let at_line = |reason: &str| bad(&plan_file, format!("line {}: {reason}", i + 1));
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(pragma) = line.strip_prefix('%') {
            let (key, value) = pragma.split_once('=').unwrap_or((pragma, ""));
            match key.trim() {
                "project" => project = Some(value.trim().to_string()),
                // sqitch hashes (and records) the URI in its canonical form
                // (`URI->canonical`: scheme and host lower-cased, a default port dropped, an
                // empty path written `/`), so `https://Example.com` is `https://example.com/`.
                "uri" => uri = Some(canonical_uri(value.trim())),
                _ => {}
            }
            continue;
        }
        if let Some(tag) = line.strip_prefix('@') {
            let entry = parse_plan_entry(tag).map_err(|e| at_line(&e))?;
            if entry.deps.is_some() {
                return Err(at_line("tags may not specify dependencies"));
            }
            let name = entry.name;
            if out
                .iter()
                .filter_map(|m| m.sqitch.as_ref())
                .any(|s| s.tags.iter().any(|t| t.name == name))
            {
                return Err(at_line(&format!("tag @{name} is declared twice")));
            }
            let Some(change) = out.last_mut().and_then(|m| m.sqitch.as_mut()) else {
                return Err(at_line("a tag before any change"));
            };
            let mut tag = SqitchTag {
                name: name.to_string(),
                tag_id: String::new(),
                planned_at: entry.planned_at.to_string(),
                planner_name: entry.planner_name.to_string(),
                planner_email: entry.planner_email.to_string(),
                note: entry.note,
            };
            tag.tag_id = sqitch_tag_id(&tag, change);
            change.tags.push(tag);
            since_tag.clear();
            continue;
        }
        if line.starts_with('-') {
            return Err(at_line("revert entries (-change) are not supported"));
        }
        let line = line.strip_prefix('+').unwrap_or(line);
        let Some(project) = project.clone() else {
            return Err(at_line("a change before the %project pragma"));
        };
        let entry = parse_plan_entry(line).map_err(|e| at_line(&e))?;
        let name = entry.name;
        if let Some(line) = since_tag.insert(name.to_string(), i + 1) {
            return Err(at_line(&format!(
                "change {name:?} duplicates its declaration on line {line}; a change is \
                 planned again only after a tag (`sqitch rework`)"
            )));
        }
        // A rework: the previous instance's scripts become `<name>@<tag>.sql`.
        if let Some(prev) = out.iter().rposition(|m| m.name == name) {
            // The tags of the changes after it (newest first), then its own, as sqitch
            // collects them.
            let mut tags: Vec<String> = Vec::new();
            for m in out[prev + 1..].iter().rev() {
                let s = m.sqitch.as_ref().expect("sqitch change");
                tags.extend(s.tags.iter().rev().map(|t| t.name.clone()));
            }
            let own = out[prev].sqitch.as_ref().expect("sqitch change");
            tags.extend(own.tags.iter().rev().map(|t| t.name.clone()));
            let exists = |t: &str| dir.join("deploy").join(format!("{name}@{t}.sql")).is_file();
            let Some(tag) = tags
                .iter()
                .find(|t| exists(t))
                .or_else(|| tags.first())
                .cloned()
            else {
                return Err(at_line(&format!(
                    "change {name:?} is planned again without a tag after its earlier declaration"
                )));
            };
            let file = |kind: &str| dir.join(kind).join(format!("{name}@{tag}.sql"));
            let deploy = file("deploy");
            if !deploy.is_file() {
                return Err(bad(
                    &deploy,
                    format!(
                        "missing deploy script of change {name} as of @{tag} (sqitch rework keeps the earlier script there)"
                    ),
                ));
            }
            let m = &mut out[prev];
            m.up = read_text(&deploy)?;
            m.file = deploy;
            let revert = file("revert");
            (m.down, m.down_file) = if revert.is_file() {
                (Some(read_text(&revert)?), Some(revert))
            } else {
                (None, None)
            };
            let verify = file("verify");
            let s = m.sqitch.as_mut().expect("sqitch change");
            (s.verify, s.verify_file) = if verify.is_file() {
                (Some(read_text(&verify)?), Some(verify))
            } else {
                (None, None)
            };
            s.rework_tag = Some(tag);
        }
        let (mut requires, mut conflicts) = (Vec::new(), Vec::new());
        for dep in entry.deps.unwrap_or("").split_whitespace() {
            let (conflict, spec) = match dep.strip_prefix('!') {
                Some(c) => (true, c),
                None => (false, dep),
            };
            // Like sqitch's Depend::as_string: the own project's name is left out.
            let spec = spec
                .strip_prefix(&format!("{project}:"))
                .unwrap_or(spec)
                .to_string();
            if conflict {
                conflicts.push(spec);
                continue;
            }
            if !spec.contains(':') && !is_sqitch_id(&spec) {
                let (change, tag) = spec.split_once('@').unwrap_or((&spec, ""));
                let planned = |c: &str| out.iter().any(|m| m.name == c);
                let tagged = |t: &str| {
                    out.iter()
                        .filter_map(|m| m.sqitch.as_ref())
                        .any(|s| s.tags.iter().any(|x| x.name == t))
                };
                let known = match (change, tag) {
                    ("", t) => tagged(t),
                    (c, "") => planned(c),
                    (c, t) => planned(c) && tagged(t),
                };
                if !known {
                    return Err(at_line(&format!(
                        "change {name:?} requires {spec:?}, which is not planned before it"
                    )));
                }
            }
            requires.push(spec);
        }
        let deploy = dir.join("deploy").join(format!("{name}.sql"));
        let revert = dir.join("revert").join(format!("{name}.sql"));
        let verify = dir.join("verify").join(format!("{name}.sql"));
        if !deploy.is_file() {
            return Err(bad(
                &deploy,
                format!("missing deploy script for change {name}"),
            ));
        }
        let parent = out
            .last()
            .and_then(|m| m.sqitch.as_ref())
            .map(|s| s.change_id.clone());
        let mut change = SqitchChange {
            project,
            uri: uri.clone(),
            change_id: String::new(),
            requires,
            conflicts,
            tags: Vec::new(),
            planned_at: entry.planned_at.to_string(),
            planner_name: entry.planner_name.to_string(),
            planner_email: entry.planner_email.to_string(),
            note: entry.note,
            verify: if verify.is_file() {
                Some(read_text(&verify)?)
            } else {
                None
            },
            rework_tag: None,
            verify_on_deploy,
            verify_file: verify.is_file().then(|| verify.clone()),
            project_dir: dir.to_path_buf(),
        };
        change.change_id = sqitch_change_id(name, &change, parent.as_deref());
        let (down, down_file) = if revert.is_file() {
            (Some(read_text(&revert)?), Some(revert))
        } else {
            (None, None)
        };
        out.push(Migration {
            version: format!("{:04}", out.len() + 1),
            name: name.to_string(),
            up: read_text(&deploy)?,
            down,
            file: deploy,
            down_file,
            sqitch: Some(change),
            ..Migration::default()
        });
    }
    // A revert script without a planned change: sqitch reads scripts only for planned
    // changes, so it is passed over; the plan says so.
    let revert_dir = dir.join("revert");
    let mut orphans = Vec::new();
    if revert_dir.is_dir() {
        for (path, is_dir) in read_dir(&revert_dir)? {
            let fname = file_name(&path);
            if is_dir || !fname.ends_with(".sql") {
                continue;
            }
            let change = fname.trim_end_matches(".sql");
            let change = change.split_once('@').map_or(change, |(c, _)| c);
            if !out.iter().any(|m| m.name == change) {
                orphans.push(format!(
                    "{} is a revert script for change {change:?}, which sqitch.plan does not plan: sqitch never runs it",
                    path.display()
                ));
            }
        }
    }
    attach_warnings(&mut out, orphans);
    Ok(out)
}

/// Whether the project's `sqitch.conf` (git-config syntax) says `[deploy] verify = true`.
/// The user's and the system's sqitch configuration are not read.
fn sqitch_deploy_verifies(dir: &Path) -> bool {
    let Ok(text) = fs::read_to_string(dir.join("sqitch.conf")) else {
        return false;
    };
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_ascii_lowercase();
            continue;
        }
        if section == "deploy"
            && let Some((key, value)) = line.split_once('=')
            && key.trim().eq_ignore_ascii_case("verify")
        {
            return matches!(
                value.trim().to_ascii_lowercase().as_str(),
                "true" | "yes" | "on" | "1"
            );
        }
    }
    false
}

/// A URI as sqitch canonicalises it (see the `%uri` pragma above); text that is not a URI is
/// kept as written.
fn canonical_uri(uri: &str) -> String {
    url::Url::parse(uri)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| uri.to_string())
}

/// A 40-digit hex change id, which sqitch accepts as a dependency.
fn is_sqitch_id(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The SHA-1 (hex) of `<kind> <len>\0<info>`, the git-object convention sqitch uses for
/// change and tag ids.
fn sqitch_object_id(kind: &str, info: &str) -> String {
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(format!("{kind} {}\0", info.len()).as_bytes());
    h.update(info.as_bytes());
    hex::encode(h.finalize())
}

/// Sqitch's change id (App::Sqitch::Plan::Change `id`): the SHA-1 of `change <len>\0<info>`,
/// where `<info>` is
///
/// ```text
/// project <project>
/// uri <uri>                  (only with a %uri pragma)
/// change <name>
/// parent <previous change id> (not for the first change)
/// planner <name> <<email>>
/// date <planned_at>
/// requires                   (only with dependencies; then one "  + dep" line each)
/// conflicts                  (likewise, "  - dep")
///
/// <note>                     (only with a note)
/// ```
///
/// Checked against sqitch 1.3.1: `sqitch deploy` of the test fixture writes these ids, and
/// `sqitch status` finds the changes rewind recorded in its plan. The URI is the canonical
/// one read from the plan.
pub fn sqitch_change_id(name: &str, c: &SqitchChange, parent: Option<&str>) -> String {
    let mut info = format!("project {}\n", c.project);
    if let Some(uri) = &c.uri {
        info.push_str(&format!("uri {uri}\n"));
    }
    info.push_str(&format!("change {name}\n"));
    if let Some(p) = parent {
        info.push_str(&format!("parent {p}\n"));
    }
    info.push_str(&format!(
        "planner {} <{}>\ndate {}",
        c.planner_name, c.planner_email, c.planned_at
    ));
    if !c.requires.is_empty() {
        info.push_str("\nrequires");
        for r in &c.requires {
            info.push_str(&format!("\n  + {r}"));
        }
    }
    if !c.conflicts.is_empty() {
        info.push_str("\nconflicts");
        for r in &c.conflicts {
            info.push_str(&format!("\n  - {r}"));
        }
    }
    if !c.note.is_empty() {
        info.push_str(&format!("\n\n{}", c.note));
    }
    sqitch_object_id("change", &info)
}

/// Sqitch's tag id (App::Sqitch::Plan::Tag `id`): like [`sqitch_change_id`] with
/// `tag <len>\0`, over `project`, `uri`, `tag @<name>`, `change <change id>`, `planner`,
/// `date` and the note.
pub fn sqitch_tag_id(tag: &SqitchTag, change: &SqitchChange) -> String {
    let mut info = format!("project {}\n", change.project);
    if let Some(uri) = &change.uri {
        info.push_str(&format!("uri {uri}\n"));
    }
    info.push_str(&format!(
        "tag @{}\nchange {}\nplanner {} <{}>\ndate {}",
        tag.name, change.change_id, tag.planner_name, tag.planner_email, tag.planned_at
    ));
    if !tag.note.is_empty() {
        info.push_str(&format!("\n\n{}", tag.note));
    }
    sqitch_object_id("tag", &info)
}

// ---- checksums -------------------------------------------------------------------------

/// What a tool stores to notice that an applied migration's file changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// sqlx: SHA-384 of the up script's exact text (`_sqlx_migrations.checksum`). sqlx can
    /// be told to ignore characters (`migrate.ignored-chars` in `sqlx.toml`); this is the
    /// default, nothing ignored, so a CRLF checkout changes it.
    Sha384(Vec<u8>),
    /// Flyway: CRC32 over the script's lines, each without its line terminator, a leading
    /// BOM removed (`flyway_schema_history.checksum`, a signed 32-bit integer). Reading
    /// line by line makes it blind to CRLF versus LF.
    Crc32(i32),
    /// refinery: SipHash-1-3 (keys 0) of `name`, `version` (i32) and the SQL, hashed with
    /// Rust's `Hash` (a `str` writes its bytes then `0xff`; an i32 its 4 little-endian
    /// bytes), stored as decimal text, as refinery_core's `Migration::unapplied` computes it
    /// (checked against its source; with refinery's `int8-versions` feature the version is
    /// hashed as an i64 instead, which this does not cover).
    SipHash13(u64),
    /// sqitch: SHA-1 (hex) of the deploy script's raw bytes (`changes.script_hash`), as
    /// sqitch 1.3.1 writes it.
    Sha1(String),
    /// diesel and golang-migrate store no checksum.
    None,
}

impl Checksum {
    /// The value as the history table holds it, as text (hex for hashes).
    pub fn to_text(&self) -> String {
        match self {
            Checksum::Sha384(b) => hex::encode(b),
            Checksum::Crc32(c) => c.to_string(),
            Checksum::SipHash13(h) => h.to_string(),
            Checksum::Sha1(s) => s.clone(),
            Checksum::None => String::new(),
        }
    }
}

/// The checksum `format` stores for an up script `sql` (see [`Checksum`]).
pub fn tool_checksum(format: Format, m: &Migration) -> Checksum {
    checksum_of(format, &m.version, &m.name, &m.up)
}

/// The checksum `format` stores for migration `version` named `name` whose up script is
/// `sql`.
pub(crate) fn checksum_of(format: Format, version: &str, name: &str, sql: &str) -> Checksum {
    match format {
        Format::Sqlx => {
            use sha2::Digest;
            Checksum::Sha384(sha2::Sha384::digest(sql.as_bytes()).to_vec())
        }
        Format::Flyway => Checksum::Crc32(flyway_crc32(sql)),
        Format::Refinery => {
            let mut bytes = Vec::with_capacity(name.len() + sql.len() + 6);
            bytes.extend_from_slice(name.as_bytes());
            bytes.push(0xff);
            bytes.extend_from_slice(&version.parse::<i32>().unwrap_or(0).to_le_bytes());
            bytes.extend_from_slice(sql.as_bytes());
            bytes.push(0xff);
            Checksum::SipHash13(siphash13(&bytes))
        }
        Format::Sqitch => {
            use sha1::Digest;
            Checksum::Sha1(hex::encode(sha1::Sha1::digest(sql.as_bytes())))
        }
        Format::Diesel | Format::GolangMigrate => Checksum::None,
    }
}

/// Flyway's checksum of a script (see [`Checksum::Crc32`]).
pub fn flyway_crc32(sql: &str) -> i32 {
    const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    let mut digest = CRC32.digest();
    let text = sql.strip_prefix('\u{feff}').unwrap_or(sql);
    // Java's BufferedReader.readLine ends a line at "\n", "\r\n" or a lone "\r"; a final
    // line terminator does not start another line.
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest.find(['\n', '\r']).unwrap_or(rest.len());
        digest.update(&rest.as_bytes()[..end]);
        rest = &rest[end..];
        rest = rest
            .strip_prefix("\r\n")
            .or_else(|| rest.strip_prefix('\n'))
            .or_else(|| rest.strip_prefix('\r'))
            .unwrap_or(rest);
    }
    digest.finalize() as i32
}

/// `sql` with every line ending written as `\n`, and with every one written as `\r\n`: the
/// two forms a checkout can give a file. A stored checksum that matches the script as it is
/// or either form is not drift.
pub fn line_ending_forms(sql: &str) -> [String; 2] {
    let lf = sql.replace("\r\n", "\n");
    let crlf = lf.replace('\n', "\r\n");
    [lf, crlf]
}

/// A checksum that does not change with line endings (CRLF and LF alike), a leading BOM or
/// trailing whitespace at the end of the file: SHA-256 (hex) of the lines joined by `\n`.
/// Use it to tell a real edit from a checkout that only changed line endings.
pub fn normalized_checksum(sql: &str) -> String {
    use sha2::Digest;
    let text = sql.strip_prefix('\u{feff}').unwrap_or(sql);
    let mut h = sha2::Sha256::new();
    for (i, line) in text.trim_end().lines().enumerate() {
        if i > 0 {
            h.update(b"\n");
        }
        h.update(line.trim_end_matches('\r').as_bytes());
    }
    hex::encode(h.finalize())
}

/// SipHash-1-3 with both keys 0 (what `siphasher::sip::SipHasher13::new()` computes).
fn siphash13(data: &[u8]) -> u64 {
    let (k0, k1) = (0u64, 0u64);
    let mut v0 = k0 ^ 0x736f_6d65_7073_6575;
    let mut v1 = k1 ^ 0x646f_7261_6e64_6f6d;
    let mut v2 = k0 ^ 0x6c79_6765_6e65_7261;
    let mut v3 = k1 ^ 0x7465_6462_7974_6573;
    let round = |v0: &mut u64, v1: &mut u64, v2: &mut u64, v3: &mut u64| {
        *v0 = v0.wrapping_add(*v1);
        *v1 = v1.rotate_left(13);
        *v1 ^= *v0;
        *v0 = v0.rotate_left(32);
        *v2 = v2.wrapping_add(*v3);
        *v3 = v3.rotate_left(16);
        *v3 ^= *v2;
        *v0 = v0.wrapping_add(*v3);
        *v3 = v3.rotate_left(21);
        *v3 ^= *v0;
        *v2 = v2.wrapping_add(*v1);
        *v1 = v1.rotate_left(17);
        *v1 ^= *v2;
        *v2 = v2.rotate_left(32);
    };
    let chunks = data.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        let m = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        v3 ^= m;
        round(&mut v0, &mut v1, &mut v2, &mut v3);
        v0 ^= m;
    }
    let mut last = (data.len() as u64 & 0xff) << 56;
    for (i, b) in tail.iter().enumerate() {
        last |= u64::from(*b) << (8 * i);
    }
    v3 ^= last;
    round(&mut v0, &mut v1, &mut v2, &mut v3);
    v0 ^= last;
    v2 ^= 0xff;
    for _ in 0..3 {
        round(&mut v0, &mut v1, &mut v2, &mut v3);
    }
    v0 ^ v1 ^ v2 ^ v3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_down_scripts() {
        assert!(script_is_empty(""));
        assert!(script_is_empty("  \n-- nothing to undo\n/* really */\n;"));
        assert!(!script_is_empty("-- drop it\nDROP TABLE t;"));
        // Empty to one engine is empty: PostgreSQL's nested comment, SQLite's open one.
        assert!(script_is_empty("/* a /* nested */ comment */"));
        assert!(script_is_empty("-- irreversible\n/* left open"));
        assert!(!script_is_empty("SELECT 'unterminated"));
    }

    #[test]
    fn versions_sort_numerically() {
        assert_eq!(cmp_versions("2", "10"), Ordering::Less);
        assert_eq!(cmp_versions("1.10", "1.9"), Ordering::Greater);
        assert_eq!(cmp_versions("001", "1"), Ordering::Equal);
    }

    #[test]
    fn checksums_and_line_endings() {
        let lf = "CREATE TABLE t (id INT);\nINSERT INTO t VALUES (1);\n";
        let crlf = lf.replace('\n', "\r\n");
        assert_eq!(flyway_crc32(lf), flyway_crc32(&crlf));
        assert_eq!(normalized_checksum(lf), normalized_checksum(&crlf));
        assert_ne!(
            normalized_checksum(lf),
            normalized_checksum("CREATE TABLE u;")
        );
        let m = |up: &str| Migration {
            version: "1".into(),
            name: "init".into(),
            up: up.into(),
            down: None,
            file: "1_init.sql".into(),
            down_file: None,
            sqitch: None,
            ..Migration::default()
        };
        // sqlx hashes the exact bytes: a CRLF checkout is drift to sqlx.
        assert_ne!(
            tool_checksum(Format::Sqlx, &m(lf)),
            tool_checksum(Format::Sqlx, &m(&crlf))
        );
    }

    fn plan_dir(plan: &str, changes: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("sqitch.plan"), plan).unwrap();
        fs::create_dir(dir.path().join("deploy")).unwrap();
        for c in changes {
            fs::write(
                dir.path().join("deploy").join(format!("{c}.sql")),
                "SELECT 1;",
            )
            .unwrap();
        }
        dir
    }

    #[test]
    fn sqitch_plan_entries_parse_like_sqitch() {
        let e = parse_plan_entry(
            "users [roles !old other:thing] 2024-01-01T00:00:00Z Ann Lee <ann@x.org> # a\\nb \\\\ c  ",
        )
        .unwrap();
        assert_eq!(e.name, "users");
        assert_eq!(e.deps, Some("roles !old other:thing"));
        assert_eq!(e.planned_at, "2024-01-01T00:00:00Z");
        assert_eq!((e.planner_name, e.planner_email), ("Ann Lee", "ann@x.org"));
        assert_eq!(e.note, "a\nb \\ c");
        let e = parse_plan_entry("users 2024-01-01T00:00:00Z Ann <ann@x.org>").unwrap();
        assert_eq!((e.deps, e.note.as_str()), (None, ""));
        for bad in [
            "users 2024-01-01 Ann <ann@x.org>",
            "users 2024-01-01T00:00:00Z Ann",
            "users [roles 2024-01-01T00:00:00Z Ann <a@x>",
        ] {
            assert!(parse_plan_entry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sqitch_requires_must_be_planned_earlier() {
        let head = "%project=p\n";
        let ok = plan_dir(
            &format!(
                "{head}a 2024-01-01T00:00:00Z A <a@x>\n@v1 2024-01-01T00:00:01Z A <a@x>\n\
                 b [a p:a@v1 @v1 !c other:x] 2024-01-02T00:00:00Z A <a@x>\n"
            ),
            &["a", "b"],
        );
        let migs = read(ok.path(), Format::Sqitch).unwrap();
        let b = migs[1].sqitch.as_ref().unwrap();
        // The own project's prefix is dropped, as sqitch's change ids need.
        assert_eq!(b.requires, ["a", "a@v1", "@v1", "other:x"]);
        assert_eq!(b.conflicts, ["c"]);
        assert_eq!(migs[0].sqitch.as_ref().unwrap().tags[0].name, "v1");

        for (plan, needle) in [
            (
                "b [a] 2024-01-02T00:00:00Z A <a@x>\na 2024-01-01T00:00:00Z A <a@x>\n",
                "requires \"a\"",
            ),
            ("a [@v9] 2024-01-01T00:00:00Z A <a@x>\n", "requires \"@v9\""),
            (
                "a 2024-01-01T00:00:00Z A <a@x>\n@v1 2024-01-01T00:00:00Z A <a@x>\n@v1 2024-01-01T00:00:00Z A <a@x>\n",
                "declared twice",
            ),
        ] {
            let dir = plan_dir(&format!("{head}{plan}"), &["a", "b"]);
            let e = read(dir.path(), Format::Sqitch).unwrap_err().to_string();
            assert!(e.contains("sqitch.plan: line") && e.contains(needle), "{e}");
        }
    }

    #[test]
    #[allow(deprecated)]
    fn siphash13_matches_std() {
        // std's `DefaultHasher::new()` is SipHash-1-3 with zero keys today, like siphasher's
        // `SipHasher13::new()` that refinery uses; check ours against it, through `Hash`.
        use std::hash::{Hash, Hasher};
        for data in ["", "a", "12345678", "CREATE TABLE users (id INT);\n"] {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            h.write(data.as_bytes());
            assert_eq!(h.finish(), siphash13(data.as_bytes()));
        }
        let m = Migration {
            version: "3".into(),
            name: "add_index".into(),
            up: "CREATE INDEX i ON t (c);".into(),
            down: None,
            file: "V3__add_index.sql".into(),
            down_file: None,
            sqitch: None,
            ..Migration::default()
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        m.name.hash(&mut h);
        3i32.hash(&mut h);
        m.up.as_str().hash(&mut h);
        assert_eq!(
            tool_checksum(Format::Refinery, &m),
            Checksum::SipHash13(h.finish())
        );
    }

    #[test]
    fn file_names_read_as_each_tool_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("1_add_a.sql.sql", "SELECT 1;"),
            ("2_x.up.sql", "SELECT 2;"),
            ("2_x.down.sql", "SELECT 3;"),
            ("README.md", "not a migration"),
        ] {
            fs::write(dir.path().join(name), text).unwrap();
        }
        let migs = read(dir.path(), Format::Sqlx).unwrap();
        // sqlx trims the suffix as often as it repeats.
        assert_eq!(migs[0].name, "add a");
        assert_eq!(migs[1].name, "x");

        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("30_ignore_autotag.up..sql", "SELECT 1;"),
            ("31_a.b.up.up.sql", "SELECT 2;"),
            ("32_plain.sql", "SELECT 3;"),
            ("33_json.up.json", "SELECT 4;"),
        ] {
            fs::write(dir.path().join(name), text).unwrap();
        }
        let migs = read(dir.path(), Format::GolangMigrate).unwrap();
        let got: Vec<(&str, &str)> = migs
            .iter()
            .map(|m| (m.version.as_str(), m.name.as_str()))
            .collect();
        // golang-migrate's pattern: the last `.up.` decides, any extension; `32_plain.sql`
        // does not match and is passed over (with a note).
        assert_eq!(
            got,
            [("30", "ignore_autotag"), ("31", "a.b.up"), ("33", "json")]
        );
        assert!(migs[0].warnings.iter().any(|w| w.contains("32_plain.sql")));

        // diesel: a directory without `_` is all version (dashes removed), as diesel has it.
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("2023-05-23-1715-add-t")).unwrap();
        fs::write(dir.path().join("2023-05-23-1715-add-t/up.sql"), "SELECT 1;").unwrap();
        let migs = read(dir.path(), Format::Diesel).unwrap();
        assert_eq!(migs[0].version, "202305231715addt");
    }
}
