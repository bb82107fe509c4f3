//! Backups as restore points: SQLite snapshots (`VACUUM INTO`) and PostgreSQL dumps
//! (`pg_dump -Fc`), their restore, and their verification in a scratch database.
//!
//! Every backup is written to a partial file beside its destination ([`partial_path`]),
//! flushed to disk and renamed into place, so a backup file that exists is complete. pg_dump
//! and pg_restore run through `rewind_proc`: killed with rewind, they write no further. Its BLAKE3 checksum is kept
//! in [`BackupInfo`] and checked again before a restore.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Connection, Row};

use crate::catalog::Catalog;
use crate::error::{Error, Result, db, io, redact};
use crate::inspect::{Inspect, integrity_check};
use crate::pgrestore::PgRestoreOptions;
use crate::pgtools::{PgTools, ServerVersion};

/// What a backup is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupKind {
    /// A SQLite database file made with `VACUUM INTO`.
    SqliteSnapshot,
    /// A `pg_dump -Fc` archive.
    PgDumpCustom,
}

/// A finished backup file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    pub kind: BackupKind,
    pub path: PathBuf,
    /// Size of the file.
    pub bytes: u64,
    pub created_at: jiff::Timestamp,
    /// BLAKE3 of the file, lowercase hex.
    pub checksum: String,
}

impl BackupInfo {
    /// Describes an existing backup file (its checksum is computed now, so it proves nothing
    /// about the file's past).
    pub async fn from_file(kind: BackupKind, path: &Path) -> Result<BackupInfo> {
        let (bytes, checksum) = hash_file(path.to_path_buf()).await?;
        Ok(BackupInfo {
            kind,
            path: path.to_path_buf(),
            bytes,
            created_at: jiff::Timestamp::now(),
            checksum,
        })
    }

    /// Re-reads the file and compares size and checksum.
    pub async fn check(&self) -> Result<()> {
        let (_, found) = hash_file(self.path.clone()).await?;
        if found != self.checksum {
            return Err(Error::Checksum {
                path: self.path.clone(),
                expected: self.checksum.clone(),
                found,
            });
        }
        Ok(())
    }
}

/// What [`sqlite_verify`] and [`pg_verify`] found in a backup restored into a scratch database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// What the integrity check said (`ok` for SQLite).
    pub integrity: String,
    /// Rows per user table (PostgreSQL: `schema.table`).
    pub row_counts: BTreeMap<String, i64>,
    /// Every foreign key of the restored copy, with its orphaned rows.
    pub fk_orphans: Vec<crate::inspect::FkOrphans>,
    /// The SQL assertions asked for, run on the restored copy.
    pub checks: Vec<crate::inspect::CheckOutcome>,
    /// The restored copy's catalog.
    pub catalog: crate::catalog::Catalog,
}

// ---- SQLite -------------------------------------------------------------------------------

fn sqlite_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(30))
}

/// Takes a consistent snapshot of the SQLite database at `db_path` into `dest` (which must
/// not exist) with `VACUUM INTO`, while other connections go on writing: the snapshot is one
/// read transaction, so it holds every transaction committed before it started and none after.
/// In WAL mode writers are not blocked; in rollback-journal mode they wait while it runs.
pub async fn sqlite_snapshot(db_path: &Path, dest: &Path) -> Result<BackupInfo> {
    if !db_path.is_file() {
        return Err(Error::Invalid(format!(
            "{} is not a SQLite database file",
            db_path.display()
        )));
    }
    if dest.exists() {
        return Err(Error::Invalid(format!("{} already exists", dest.display())));
    }
    let tmp = partial_path(dest);
    // `VACUUM INTO` refuses a file that exists; one by this name can only be a dead writer's.
    let _ = std::fs::remove_file(&tmp);
    let tmp_str = tmp
        .to_str()
        .ok_or_else(|| Error::Invalid(format!("{} is not valid UTF-8", tmp.display())))?
        .to_string();
    let context = format!("snapshot of {}", db_path.display());
    let mut conn = sqlx::sqlite::SqliteConnection::connect_with(&sqlite_options(db_path))
        .await
        .map_err(db(&context, None))?;
    // The target is a bound parameter, so no quoting is needed.
    let result = sqlx::query("VACUUM INTO ?")
        .bind(&tmp_str)
        .execute(&mut conn)
        .await
        .map_err(db(&context, None));
    let _ = conn.close().await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    finish_file(tmp, dest.to_path_buf(), BackupKind::SqliteSnapshot).await
}

/// Progress of a copy: bytes copied so far, and the total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub copied: u64,
    pub total: u64,
}

/// Puts a SQLite snapshot back in place of the database at `db_path`.
///
/// The caller must have stopped every writer (and closed its connections) first: a
/// connection that stays open keeps using the old file. Steps:
///
/// 1. the backup is checked against its checksum while it is copied to a temporary file
///    beside the database (same directory, so the rename below is atomic), with `progress`
///    called as bytes are copied; the copy is flushed to disk (fsync);
/// 2. the old database's `-wal`, `-shm` and `-journal` files are removed;
/// 3. the copy is renamed over the database, and the directory is flushed.
///
/// Why this order: a WAL (or hot rollback journal) belongs to the database file it was
/// written for, but SQLite finds it by name only. If it were still there after the swap, the
/// next connection would replay the old database's pages onto the restored file and corrupt
/// it — so it must be gone *before* the new file takes the name. If the process dies between
/// steps 2 and 3, the old database is still in place (only its last uncheckpointed commits,
/// which the restore is about to discard anyway, are lost) and the restore can be run again;
/// once step 3 has happened, there is no stale WAL to replay.
pub async fn sqlite_restore<F>(backup: &BackupInfo, db_path: &Path, progress: F) -> Result<()>
where
    F: FnMut(Progress) + Send + 'static,
{
    let backup = backup.clone();
    let db_path = db_path.to_path_buf();
    tokio::task::spawn_blocking(move || sqlite_restore_blocking(&backup, &db_path, progress))
        .await
        .map_err(|e| Error::Invalid(format!("restore task failed: {e}")))?
}

fn sqlite_restore_blocking<F>(backup: &BackupInfo, db_path: &Path, progress: F) -> Result<()>
where
    F: FnMut(Progress),
{
    let tmp = temp_beside(db_path, "restore");
    let result = (|| {
        copy_checked(backup, &tmp, progress)?;
        check_sqlite_header(&tmp)?;
        for suffix in ["-wal", "-shm", "-journal"] {
            let side = sidecar(db_path, suffix);
            match std::fs::remove_file(&side) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(format!("removing {}", side.display()))(e)),
            }
        }
        std::fs::rename(&tmp, db_path).map_err(io(format!(
            "renaming the restored copy over {}",
            db_path.display()
        )))?;
        sync_dir(db_path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Restores a SQLite snapshot into a scratch file, runs `PRAGMA integrity_check` and counts
/// the rows of every table. The scratch file is removed afterwards.
pub async fn sqlite_verify(backup: &BackupInfo) -> Result<VerifyReport> {
    sqlite_verify_with(backup, &[]).await
}

/// [`sqlite_verify`], also running `checks` (name, SQL) on the restored copy.
pub async fn sqlite_verify_with(
    backup: &BackupInfo,
    checks: &[(String, String)],
) -> Result<VerifyReport> {
    let dir = std::env::temp_dir().join(format!("rewind-verify-{}", random_suffix()));
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let result = async {
        let scratch = dir.join("verify.db");
        let (b, s) = (backup.clone(), scratch.clone());
        tokio::task::spawn_blocking(move || copy_checked(&b, &s, |_| {}))
            .await
            .map_err(|e| Error::Invalid(format!("copy task failed: {e}")))??;
        check_sqlite_header(&scratch)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(sqlite_options(&scratch))
            .await
            .map_err(db("opening the scratch copy", None))?;
        let report = async {
            let integrity = integrity_check(&pool).await?;
            let row_counts = pool.row_counts().await?;
            let fk_orphans = pool.fk_orphans().await?;
            let checks = pool.sql_checks(checks, None).await;
            let catalog = pool.catalog().await?;
            Ok(VerifyReport {
                integrity,
                row_counts,
                fk_orphans,
                checks,
                catalog,
            })
        }
        .await;
        pool.close().await;
        report
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn sidecar(db_path: &Path, suffix: &str) -> PathBuf {
    let mut s = db_path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn check_sqlite_header(path: &Path) -> Result<()> {
    let mut header = [0u8; 16];
    let ok = File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok()
        && &header == b"SQLite format 3\0";
    if ok {
        Ok(())
    } else {
        Err(Error::NotSqlite {
            path: path.to_path_buf(),
        })
    }
}

// ---- PostgreSQL ---------------------------------------------------------------------------

/// A PostgreSQL URL split into the URL without its password (safe to pass on a command line
/// and to print) and the password (passed to tools in `PGPASSWORD` only).
#[derive(Clone)]
pub struct PgUrl {
    url: url::Url,
    password: Option<String>,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgUrl({})", self.url)
    }
}

impl std::fmt::Display for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.url.as_str())
    }
}

impl PgUrl {
    pub fn parse(s: &str) -> Result<PgUrl> {
        let mut url = url::Url::parse(s).map_err(|e| Error::Url(e.to_string()))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(Error::Url(format!(
                "scheme {:?} is not postgres:// or postgresql://",
                url.scheme()
            )));
        }
        let mut password = url.password().map(rewind_core::redact::percent_decode);
        if password.is_some() {
            url.set_password(None)
                .map_err(|_| Error::Url("cannot remove the password".into()))?;
        }
        // `?password=…` too: taken out of the URL (tools get it in PGPASSWORD only).
        if url.query_pairs().any(|(k, _)| k == "password") {
            let kept: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(k, v)| {
                    if k == "password" {
                        password.get_or_insert_with(|| v.to_string());
                        false
                    } else {
                        true
                    }
                })
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            if kept.is_empty() {
                url.set_query(None);
            } else {
                url.query_pairs_mut().clear().extend_pairs(kept);
            }
        }
        Ok(PgUrl { url, password })
    }

    /// The URL without its password.
    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The database name (the path), or `None` when the URL names none.
    pub fn database(&self) -> Option<String> {
        let p = self.url.path().trim_start_matches('/');
        (!p.is_empty()).then(|| rewind_core::redact::percent_decode(p))
    }

    /// The same server and credentials, another database.
    pub fn with_database(&self, name: &str) -> PgUrl {
        let mut url = self.url.clone();
        url.set_path(&format!("/{name}"));
        PgUrl {
            url,
            password: self.password.clone(),
        }
    }

    pub fn connect_options(&self) -> Result<PgConnectOptions> {
        let mut o = PgConnectOptions::from_str(self.as_str())
            .map_err(|e| Error::Url(e.to_string()))?
            .application_name("rewind")
            .options([("default_transaction_read_only", "off")]);
        if let Some(p) = &self.password {
            o = o.password(p);
        }
        Ok(o)
    }

    fn redact(&self, text: &str) -> String {
        redact(text, self.password.as_deref())
    }
}

/// Finds a PostgreSQL client tool in PATH, else in the newest `/usr/lib/postgresql/*/bin`.
pub fn find_pg_tool(name: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin").join(name)))
        })
        .filter(|(_, p)| p.is_file())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .ok_or_else(|| Error::ToolMissing {
            tool: name.to_string(),
        })
}

/// Runs a client tool against `url`; its password goes in `PGPASSWORD`, never in the
/// arguments. Fails with the tool's stderr, redacted.
pub(crate) async fn run_pg_tool(program: &Path, url: &PgUrl, args: Vec<OsString>) -> Result<()> {
    let tool = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A child of its own process group that dies with rewind (see `rewind_proc`): a killed
    // backup leaves no pg_dump writing on.
    let mut cmd = rewind_proc::Command::new(program);
    cmd.args(&args);
    if let Some(p) = url.password() {
        cmd.env("PGPASSWORD", p);
    }
    // rewind's own sessions must write while the database is frozen read-only
    // (`default_transaction_read_only`), and are named so a freeze spares them.
    cmd.env(
        "PGOPTIONS",
        "-c default_transaction_read_only=off -c application_name=rewind",
    );
    if std::env::var_os("PGCONNECT_TIMEOUT").is_none() {
        cmd.env("PGCONNECT_TIMEOUT", "15");
    }
    let out = cmd
        .output()
        .await
        .map_err(|e| io(format!("running {}", program.display()))(e.into_io()))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let status = match out.status.code() {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".to_string(),
    };
    Err(Error::Tool {
        tool,
        status,
        stderr: url.redact(stderr.trim()),
    })
}

/// Connects to `url` and chooses the client tools for its server (see [`crate::pgtools`]).
pub(crate) async fn tools_for(
    url: &PgUrl,
    pg_bin: Option<&Path>,
) -> Result<(ServerVersion, PgTools)> {
    let mut conn = sqlx::postgres::PgConnection::connect_with(&url.connect_options()?)
        .await
        .map_err(db("connecting to PostgreSQL", url.password()))?;
    let server = ServerVersion::of(&mut conn).await;
    let _ = conn.close().await;
    let server = server?;
    let tools = crate::pgtools::choose(&server, pg_bin).await?;
    Ok((server, tools))
}

/// Dumps the database named by `url` with `pg_dump -Fc` into `dest` (which must not exist),
/// with the newest pg_dump found that fits the server.
pub async fn pg_dump(url: &str, dest: &Path) -> Result<BackupInfo> {
    let url = PgUrl::parse(url)?;
    if dest.exists() {
        return Err(Error::Invalid(format!("{} already exists", dest.display())));
    }
    let (_, tools) = tools_for(&url, None).await?;
    let tmp = partial_path(dest);
    let args: Vec<OsString> = vec![
        "--format=custom".into(),
        "--no-password".into(),
        "--file".into(),
        tmp.clone().into_os_string(),
        format!("--dbname={}", url.as_str()).into(),
    ];
    if let Err(e) = run_pg_tool(&tools.pg_dump(), &url, args).await {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    finish_file(tmp, dest.to_path_buf(), BackupKind::PgDumpCustom).await
}

/// Restores a `pg_dump -Fc` backup into the database named by `url` with
/// `pg_restore -j JOBS --clean --if-exists`: every object in the dump is dropped and recreated
/// with the dumped data (objects created after the dump are left alone). Connections that hold
/// locks on those objects make it wait. The backup is checked against its checksum first.
/// [`crate::pgrestore::pg_restore_exact`] is the restore that brings back exactly what was
/// dumped.
pub async fn pg_restore(url: &str, backup: &BackupInfo, jobs: usize) -> Result<()> {
    let url = PgUrl::parse(url)?;
    backup.check().await?;
    let (server, tools) = tools_for(&url, None).await?;
    restore_into(&tools, &server, &url, backup, jobs).await
}

pub(crate) async fn restore_into(
    tools: &PgTools,
    server: &ServerVersion,
    url: &PgUrl,
    backup: &BackupInfo,
    jobs: usize,
) -> Result<()> {
    let args: Vec<OsString> = vec![
        "--no-password".into(),
        format!("--jobs={}", jobs.max(1)).into(),
        "--clean".into(),
        "--if-exists".into(),
        "--exit-on-error".into(),
        format!("--dbname={}", url.as_str()).into(),
        backup.path.clone().into_os_string(),
    ];
    run_pg_tool(&tools.pg_restore(), url, args)
        .await
        .map_err(|e| match e {
            Error::Tool {
                tool,
                status,
                stderr,
            } => {
                let hint = restore_hint(&stderr, tools, server);
                Error::Tool {
                    tool,
                    status,
                    stderr: match hint {
                        Some(h) => format!("{stderr}\nhint: {h}"),
                        None => stderr,
                    },
                }
            }
            e => e,
        })
}

/// What to do about a failed pg_restore, when its error says.
fn restore_hint(stderr: &str, tools: &PgTools, server: &ServerVersion) -> Option<String> {
    if stderr.contains("role \"") && stderr.contains("does not exist") {
        // pg_restore stops at the first statement naming a role the server lacks.
        Some(
            "the backup names a role this server does not have: create it and run the \
             restore again"
                .into(),
        )
    } else if stderr.contains("unrecognized configuration parameter")
        && tools.major > server.major()
    {
        Some(format!(
            "pg_restore {} sends settings PostgreSQL {} does not know: install the PostgreSQL \
             {} client tools, or set pg-bin to a directory holding them",
            tools.version,
            server.text,
            server.major()
        ))
    } else if stderr.contains("unsupported version") && stderr.contains("file header") {
        Some(format!(
            "the backup was made by a newer pg_dump than {} ({}): set pg-bin to the directory \
             of the pg_dump that made it",
            tools.pg_restore().display(),
            tools.version
        ))
    } else {
        None
    }
}

/// Restores a `pg_dump -Fc` backup into a scratch database `rewind_verify_<random>` on the
/// server of `url`, runs a query and counts the rows of every user table, then drops the
/// scratch database (also when something failed).
pub async fn pg_verify(url: &str, backup: &BackupInfo, jobs: usize) -> Result<VerifyReport> {
    let options = PgRestoreOptions {
        jobs,
        ..PgRestoreOptions::default()
    };
    pg_verify_with(url, backup, &options, &[]).await
}

/// [`pg_verify`] with the client tools, jobs and roles of `options`, also running `checks`
/// (name, SQL) in the scratch database and describing its catalog.
pub async fn pg_verify_with(
    url: &str,
    backup: &BackupInfo,
    options: &PgRestoreOptions,
    checks: &[(String, String)],
) -> Result<VerifyReport> {
    let url = PgUrl::parse(url)?;
    backup.check().await?;
    let name = format!("rewind_verify_{}", random_suffix());
    let secret = url.password();
    let mut admin = sqlx::postgres::PgConnection::connect_with(&url.connect_options()?)
        .await
        .map_err(db("connecting to PostgreSQL", secret))?;
    let server = ServerVersion::of(&mut admin).await?;
    let tools = crate::pgtools::choose(&server, options.pg_bin.as_deref()).await?;
    crate::pgrestore::check_roles(&mut admin, &options.roles).await?;
    let jobs = options.jobs;
    // `name` is made here of [a-z0-9_] only.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .map_err(db(format!("creating scratch database {name}"), secret))?;
    let scratch = url.with_database(&name);
    let result = async {
        restore_into(&tools, &server, &scratch, backup, jobs).await?;
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(scratch.connect_options()?)
            .await
            .map_err(db(format!("connecting to {name}"), secret))?;
        let report = async {
            let one: i32 = sqlx::query("SELECT 1")
                .fetch_one(&pool)
                .await
                .and_then(|r| r.try_get(0))
                .map_err(db(format!("querying {name}"), secret))?;
            let row_counts = pool.row_counts().await?;
            let fk_orphans = pool.fk_orphans().await?;
            let checks = pool.sql_checks(checks, secret).await;
            let catalog = pool.catalog().await?;
            Ok(VerifyReport {
                integrity: format!("restored; SELECT 1 returned {one}"),
                row_counts,
                fk_orphans,
                checks,
                catalog,
            })
        }
        .await;
        pool.close().await;
        report
    }
    .await;
    let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .map_err(db(format!("dropping scratch database {name}"), secret));
    let _ = admin.close().await;
    let report = result?;
    dropped?;
    Ok(report)
}

// ---- files --------------------------------------------------------------------------------

/// What every partial backup file's name holds: `.<name>.rewind-partial`, beside `<name>`.
pub const PARTIAL_MARK: &str = ".rewind-partial";

/// Where the backup that becomes `dest` is written until it is complete (then it is renamed
/// to `dest`): the same name each time, so that a caller can watch it grow, and a sweep can
/// tell it from a finished backup. `dest` is new for every backup (its name is the backup's
/// id), so no two writers share it.
pub fn partial_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}{PARTIAL_MARK}"))
}

/// A fresh, unused name in the directory of `path`.
fn temp_beside(path: &Path, what: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.rewind-{what}-{}", random_suffix()))
}

pub(crate) fn random_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(&now.as_nanos().to_le_bytes());
    h.finalize().to_hex()[..16].to_string()
}

fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("flushing directory {}", dir.display())))
}

/// fsyncs `tmp`, renames it to `dest`, fsyncs the directory, and describes it.
async fn finish_file(tmp: PathBuf, dest: PathBuf, kind: BackupKind) -> Result<BackupInfo> {
    tokio::task::spawn_blocking(move || {
        let result = (|| {
            File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io(format!("flushing {}", tmp.display())))?;
            let (bytes, checksum) = hash_file_blocking(&tmp)?;
            std::fs::rename(&tmp, &dest).map_err(io(format!("renaming to {}", dest.display())))?;
            sync_dir(&dest)?;
            Ok(BackupInfo {
                kind,
                path: dest.clone(),
                bytes,
                created_at: jiff::Timestamp::now(),
                checksum,
            })
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    })
    .await
    .map_err(|e| Error::Invalid(format!("task failed: {e}")))?
}

async fn hash_file(path: PathBuf) -> Result<(u64, String)> {
    tokio::task::spawn_blocking(move || hash_file_blocking(&path))
        .await
        .map_err(|e| Error::Invalid(format!("task failed: {e}")))?
}

fn hash_file_blocking(path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path).map_err(io(format!("opening {}", path.display())))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .map_err(io(format!("reading {}", path.display())))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, h.finalize().to_hex().to_string()))
}

/// Copies the backup to `dest` (created new), hashing as it goes, and fsyncs it. Fails (and
/// removes `dest`) when the checksum does not match.
///
/// The hashing runs on a second thread, fed the very buffers that were written (so the
/// bytes checked are the bytes copied, not a second read of the backup), while this thread
/// reads and writes the next ones: done in line, BLAKE3 (~2 GB/s on one core) made a restore
/// ~1.3× a plain copy + fsync; beside the copy it costs little more than its last chunk.
fn copy_checked<F: FnMut(Progress)>(
    backup: &BackupInfo,
    dest: &Path,
    mut progress: F,
) -> Result<()> {
    /// Chunk size and how many chunks may be in flight (read or written, waiting to be
    /// hashed): 4 MiB of memory.
    const CHUNK: usize = 1 << 20;
    const IN_FLIGHT: usize = 4;
    let result = (|| {
        let mut src =
            File::open(&backup.path).map_err(io(format!("opening {}", backup.path.display())))?;
        let total = src
            .metadata()
            .map_err(io(format!("reading {}", backup.path.display())))?
            .len();
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .map_err(io(format!("creating {}", dest.display())))?;
        let (to_hash, hash_rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(IN_FLIGHT);
        let (free_tx, free) = std::sync::mpsc::channel::<Vec<u8>>();
        for _ in 0..IN_FLIGHT {
            let _ = free_tx.send(vec![0u8; CHUNK]);
        }
        let (copied, hashed) = std::thread::scope(|scope| {
            let hasher = scope.spawn(move || {
                let mut h = blake3::Hasher::new();
                for (buf, k) in hash_rx {
                    h.update(&buf[..k]);
                    // The copy loop may have stopped (an error); then nobody needs it back.
                    let _ = free_tx.send(buf);
                }
                h.finalize().to_hex().to_string()
            });
            let copied = (|| {
                let hasher_gone = || Error::Invalid("the hashing thread stopped".into());
                let mut copied = 0u64;
                progress(Progress { copied, total });
                loop {
                    let mut buf = free.recv().map_err(|_| hasher_gone())?;
                    let k = src
                        .read(&mut buf)
                        .map_err(io(format!("reading {}", backup.path.display())))?;
                    if k == 0 {
                        break;
                    }
                    out.write_all(&buf[..k])
                        .map_err(io(format!("writing {}", dest.display())))?;
                    to_hash.send((buf, k)).map_err(|_| hasher_gone())?;
                    copied += k as u64;
                    progress(Progress { copied, total });
                }
                // The hasher finishes its last chunks while the copy is flushed.
                drop(to_hash);
                out.sync_all()
                    .map_err(io(format!("flushing {}", dest.display())))
            })();
            let hashed = hasher
                .join()
                .map_err(|_| Error::Invalid("the hashing thread panicked".into()));
            (copied, hashed)
        });
        copied?;
        let found = hashed?;
        if found != backup.checksum {
            return Err(Error::Checksum {
                path: backup.path.clone(),
                expected: backup.checksum.clone(),
                found,
            });
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_url_keeps_the_password_apart() {
        let u =
            PgUrl::parse("postgres://app:p%40ss+w@db.example:5433/shop?sslmode=disable").unwrap();
        assert_eq!(u.password(), Some("p@ss+w"));
        assert_eq!(
            u.as_str(),
            "postgres://app@db.example:5433/shop?sslmode=disable"
        );
        assert_eq!(u.database().as_deref(), Some("shop"));
        let v = u.with_database("rewind_verify_x");
        assert_eq!(
            v.as_str(),
            "postgres://app@db.example:5433/rewind_verify_x?sslmode=disable"
        );
        assert!(!format!("{u:?} {u}").contains("p%40ss"));
        assert_eq!(u.redact("password p@ss+w failed"), "password *** failed");
        assert!(PgUrl::parse("mysql://x@y/z").is_err());
        let socket = PgUrl::parse("postgresql:///shop?host=/var/run/postgresql").unwrap();
        assert_eq!(socket.password(), None);
        assert_eq!(socket.database().as_deref(), Some("shop"));
        let e = PgUrl::parse("postgres://app:secret@host:notaport/db").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    /// Several chunks, a short last one: the copy is exact, the progress complete, and one
    /// flipped byte in a middle chunk is caught (and the copy removed).
    #[test]
    fn checked_copy_over_many_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("backup.db");
        let data: Vec<u8> = (0..(3 << 20) + 12345u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(&src, &data).unwrap();
        let (bytes, checksum) = hash_file_blocking(&src).unwrap();
        let info = BackupInfo {
            kind: BackupKind::SqliteSnapshot,
            path: src.clone(),
            bytes,
            created_at: jiff::Timestamp::now(),
            checksum,
        };
        let dest = dir.path().join("copy");
        let mut seen = Vec::new();
        copy_checked(&info, &dest, |p| seen.push(p)).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert_eq!(seen.first().map(|p| p.copied), Some(0));
        assert_eq!(seen.last().map(|p| p.copied), Some(bytes));
        assert!(seen.len() >= 5, "{} progress calls", seen.len());

        let mut bad = data.clone();
        bad[(1 << 20) + 77] ^= 1;
        std::fs::write(&src, &bad).unwrap();
        let dest = dir.path().join("copy2");
        let err = copy_checked(&info, &dest, |_| {}).unwrap_err();
        assert!(matches!(err, Error::Checksum { .. }), "{err}");
        assert!(!dest.exists());
    }

    #[test]
    fn missing_tool_says_what_to_install() {
        let e = find_pg_tool("pg_surely_not_a_tool").unwrap_err();
        assert!(e.to_string().contains("postgresql-client"), "{e}");
    }
}

// ---- backups with their row counts and catalog --------------------------------------------

/// Rows per table of a SQLite database file (a snapshot), opened read-only.
pub async fn sqlite_file_counts(path: &Path) -> Result<BTreeMap<String, i64>> {
    sqlite_file_record(path).await.map(|(counts, _)| counts)
}

/// Rows per table and the catalog of a SQLite database file (a snapshot), opened read-only.
pub async fn sqlite_file_record(path: &Path) -> Result<(BTreeMap<String, i64>, Catalog)> {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(sqlite_options(path).read_only(true))
        .await
        .map_err(db(format!("opening {}", path.display()), None))?;
    let record = async { Ok((pool.row_counts().await?, pool.catalog().await?)) }.await;
    pool.close().await;
    record
}

/// A PostgreSQL backup and what was recorded with it.
#[derive(Clone, Debug)]
pub struct PgBackup {
    pub info: BackupInfo,
    /// Rows per table (`schema.table`).
    pub row_counts: BTreeMap<String, i64>,
    pub catalog: Catalog,
    /// The pg_dump that made it.
    pub tools: PgTools,
}

/// `pg_dump -Fc` of `url` into `dest`, together with the row count of every table and the
/// catalog's description *in the same snapshot*: a read-only repeatable-read transaction
/// exports its snapshot, counts the rows, describes the catalog, and pg_dump dumps that
/// snapshot (`--snapshot`). So counts and catalog describe exactly what the dump holds, even
/// while other sessions write. (The description's printed texts are re-read after the dump,
/// as a restore will read them: see [`crate::catalog::RawCatalog::reread`].) pg_dump is chosen by the server's version, in `pg_bin` when
/// given (see [`crate::pgtools`]); nothing is written when none fits.
pub async fn pg_backup(url: &str, dest: &Path, pg_bin: Option<&Path>) -> Result<PgBackup> {
    let parsed = PgUrl::parse(url)?;
    let secret = parsed.password();
    if dest.exists() {
        return Err(Error::Invalid(format!("{} already exists", dest.display())));
    }
    let mut conn = sqlx::postgres::PgConnection::connect_with(&parsed.connect_options()?)
        .await
        .map_err(db("connecting to PostgreSQL", secret))?;
    let server = ServerVersion::of(&mut conn).await?;
    let tools = crate::pgtools::choose(&server, pg_bin).await?;
    let ctx = "exporting a snapshot for the backup";
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut conn)
        .await
        .map_err(db(ctx, secret))?;
    let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut conn)
        .await
        .map_err(db(ctx, secret))?;
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text
           FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind IN ('r', 'p')
            AND n.nspname NOT IN ('pg_catalog', 'information_schema')
            AND n.nspname NOT LIKE 'pg\\_%'
          ORDER BY 1, 2",
    )
    .fetch_all(&mut conn)
    .await
    .map_err(db("listing tables", secret))?;
    let mut row_counts = BTreeMap::new();
    for (schema, table) in tables {
        let sql = format!(
            "SELECT count(*) FROM {}.{}",
            crate::inspect::quote_ident(&schema),
            crate::inspect::quote_ident(&table)
        );
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut conn)
            .await
            .map_err(db(format!("counting rows of {schema}.{table}"), secret))?;
        row_counts.insert(format!("{schema}.{table}"), n);
    }
    let described = crate::catalog::pg_describe(&mut conn).await?;
    let tmp = partial_path(dest);
    let args: Vec<OsString> = vec![
        "--format=custom".into(),
        "--no-password".into(),
        format!("--snapshot={snapshot}").into(),
        "--file".into(),
        tmp.clone().into_os_string(),
        format!("--dbname={}", parsed.as_str()).into(),
    ];
    let dumped = run_pg_tool(&tools.pg_dump(), &parsed, args).await;
    let _ = sqlx::query("COMMIT").execute(&mut conn).await;
    // Re-reading the printed texts needs a transaction that may write (temporary objects):
    // after the snapshot's, once pg_dump is done with it.
    let catalog = match dumped {
        Ok(()) => described.reread(&mut conn).await,
        Err(e) => Err(e),
    };
    let _ = conn.close().await;
    let catalog = match catalog {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let info = finish_file(tmp, dest.to_path_buf(), BackupKind::PgDumpCustom).await?;
    Ok(PgBackup {
        info,
        row_counts,
        catalog,
        tools,
    })
}
