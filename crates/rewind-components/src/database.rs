//! `kind = "sqlite"` and `kind = "postgres"`: a database whose version is its migration level
//! (the newest migration its tool's history table records as applied).
//!
//! What it does for a run: restore points (the level, and a full backup when asked), apply
//! migrations, revert them, stop and allow writes, restore a backup or a point in time, and
//! data checks. Every action checks its postcondition first or is safe to run again: applying
//! and reverting happen in one transaction each (a kill rolls the whole batch back), a freeze
//! or an unfreeze sets what it sets again, a restore starts over from the same backup.
//!
//! The URL (and its password) is read when an action runs and never printed: every message
//! goes through the redactor, and tools get the password in `PGPASSWORD` only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use rewind_core::config::{DatabaseConfig, DbConnection, Freeze};
use rewind_core::dbplan::{
    BackupFacts, DbDeployFacts, DbRollbackFacts, DownScript, MigrationFacts, NO_LEVEL,
};
use rewind_core::{Action, CountBaseline, RestoreSource};
use rewind_db::State;
use rewind_db::sql::{Dialect, Effect};
use rewind_db::{Format, Migration};
use rewind_dbkit::{BackupInfo, BackupKind, Catalog, Inspect, PgRestoreOptions, PgUrl};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{Component, ComponentError, Ctx, Outcome, Result, Snapshot, backup_dir, crash, proc};

/// A backup rewind made, as its `.json` sidecar records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupMeta {
    /// The file stem, e.g. `20261121T140312Z-3fa9c1`.
    pub id: String,
    pub component: String,
    /// `sqlite-snapshot` or `pg-dump-custom`.
    pub kind: String,
    pub file: PathBuf,
    pub bytes: u64,
    /// BLAKE3 of the file.
    pub checksum: String,
    pub created_at: String,
    /// The migration level when it was taken.
    pub level: String,
    /// Why it was taken (`before every deploy`, `by hand` …).
    pub reason: String,
    /// Rows per table in the backup.
    pub row_counts: BTreeMap<String, i64>,
    /// The catalog's description when it was taken (same snapshot as the rows), compared
    /// after a restore. `None` in sidecars of older rewinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<Catalog>,
}

impl BackupMeta {
    /// The sidecar of a backup file: `<id>.json` beside `<id>.dump` / `<id>.sqlite`.
    pub fn read_beside(file: &Path) -> Option<BackupMeta> {
        let text = std::fs::read_to_string(file.with_extension("json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn facts(&self) -> BackupFacts {
        BackupFacts {
            source: RestoreSource::Backup {
                path: self.file.display().to_string(),
                kind: self.kind.clone(),
                checksum: self.checksum.clone(),
                bytes: self.bytes,
                created_at: self.created_at.clone(),
                level: self.level.clone(),
            },
            row_counts: self.row_counts.clone(),
            created_at: self.created_at.clone(),
            catalog: self
                .catalog
                .as_ref()
                .map(|c| c.lines.clone())
                .unwrap_or_default(),
        }
    }
}

fn backup_info(source: &RestoreSource) -> Option<BackupInfo> {
    match source {
        RestoreSource::Backup {
            path,
            kind,
            checksum,
            bytes,
            created_at,
            ..
        } => Some(BackupInfo {
            kind: if kind == "sqlite-snapshot" {
                BackupKind::SqliteSnapshot
            } else {
                BackupKind::PgDumpCustom
            },
            path: PathBuf::from(path),
            bytes: *bytes,
            created_at: created_at
                .parse()
                .unwrap_or_else(|_| jiff::Timestamp::now()),
            checksum: checksum.clone(),
        }),
        RestoreSource::PointInTime { .. } => None,
    }
}

/// A database's migrations against a release's (see [`Database::set_report`]).
#[derive(Clone, Debug, Default, Serialize)]
pub struct SetReport {
    pub level: String,
    pub applied_not_in_release: Vec<String>,
    pub in_release_not_applied: Vec<String>,
    pub partial: Vec<String>,
}

/// What a rollback moves a database to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbTarget {
    /// The target release's name.
    pub release: String,
    /// Its level, as the ledger recorded it.
    pub level: String,
    /// The migrations applied when it ran, as the ledger recorded them (keys); `None` for
    /// releases recorded before sets were kept.
    pub set: Option<Vec<String>>,
}

/// What row counts are compared with.
#[derive(Clone, Copy, Debug)]
pub enum Baseline<'a> {
    /// No comparison.
    None,
    /// This run's restore point should have had counts, and has none.
    Missing,
    /// This run's restore point (before a revert): tables the revert drops may go, and those
    /// in the list (the down scripts delete from them; `*`: any) may hold fewer rows.
    RestorePoint(&'a BTreeMap<String, i64>, &'a [String]),
    /// A backup that was restored: every table must be back, with its rows, and the catalog
    /// must be the one recorded with it (when it recorded one).
    Backup {
        tables: &'a BTreeMap<String, i64>,
        catalog: &'a [String],
    },
}

/// What the data checks found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// Every check, one line each, failing ones first.
    pub lines: Vec<String>,
    /// The failing ones.
    pub failures: Vec<String>,
}

pub struct Database {
    name: String,
    postgres: bool,
    cfg: DatabaseConfig,
    /// The connections for migrations and history, opened once and kept for the run (a
    /// connection costs more than most queries); dropped before a restore replaces what
    /// they point at.
    cached: tokio::sync::Mutex<Option<sqlx::AnyPool>>,
    /// Migrations directories already read, by path.
    read_cache: std::sync::Mutex<BTreeMap<PathBuf, (Format, Vec<Migration>)>>,
}

impl Database {
    pub fn new(name: &str, postgres: bool, cfg: DatabaseConfig) -> Self {
        Database {
            name: name.to_string(),
            postgres,
            cfg,
            cached: tokio::sync::Mutex::new(None),
            read_cache: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// Closes the kept connections: a restore is about to replace the database (a SQLite
    /// file swapped under an open connection would be read from the old file).
    async fn drop_connections(&self) {
        if let Some(pool) = self.cached.lock().await.take() {
            pool.close().await;
        }
    }

    pub fn config(&self) -> &DatabaseConfig {
        &self.cfg
    }

    /// The SQL dialect its migrations are written in.
    fn dialect(&self) -> Dialect {
        if self.postgres {
            Dialect::Postgres
        } else {
            Dialect::Sqlite
        }
    }

    fn fail(&self, message: impl std::fmt::Display) -> ComponentError {
        ComponentError::failed(&self.name, self.scrub(&message.to_string()))
    }

    /// Masks the URL's password in `text` (tools and drivers may repeat it).
    fn scrub(&self, text: &str) -> String {
        rewind_dbkit::error::redact(text, self.password().as_deref())
    }

    /// The URL's password, if it has one (to mask it).
    fn password(&self) -> Option<String> {
        let url = self.url().ok()?;
        PgUrl::parse(&url).ok()?.password().map(str::to_string)
    }

    /// The component's SQL assertions as (name, SQL).
    fn sql_checks(&self) -> Vec<(String, String)> {
        self.cfg
            .checks
            .iter()
            .map(|c| (c.name.clone(), c.sql.clone()))
            .collect()
    }

    /// The connection URL, with its password. Never printed.
    pub fn url(&self) -> Result<String> {
        match &self.cfg.connection {
            DbConnection::Path(p) => Ok(format!("sqlite://{}", p.display())),
            DbConnection::Url(u) => Ok(u.clone()),
            DbConnection::UrlEnv(var) => match std::env::var(var) {
                Ok(u) if !u.trim().is_empty() => Ok(u),
                _ => Err(ComponentError::failed(
                    &self.name,
                    format!(
                        "environment variable {var} (url-env) is not set: export it with the database URL"
                    ),
                )),
            },
        }
    }

    /// Where the database is, for a person (no password).
    pub fn location(&self) -> String {
        match &self.cfg.connection {
            DbConnection::Path(p) => p.display().to_string(),
            DbConnection::Url(u) => rewind_core::redact::redact_url_passwords(u),
            DbConnection::UrlEnv(var) => match std::env::var(var) {
                Ok(u) => format!("${var} = {}", rewind_core::redact::redact_url_passwords(&u)),
                Err(_) => format!("${var} (not set)"),
            },
        }
    }

    fn sqlite_path(&self) -> Option<&Path> {
        match &self.cfg.connection {
            DbConnection::Path(p) => Some(p),
            _ => None,
        }
    }

    pub fn migrations_dir(&self, release: &str) -> PathBuf {
        PathBuf::from(self.cfg.migrations.replace("{release}", release))
    }

    /// Reads `release`'s migrations directory in the configured (or detected) format.
    ///
    /// A directory is read once per process (a run reads it for its plan and for each of
    /// its steps; the files do not change under a run that planned with them).
    pub fn read_migrations(&self, release: &str) -> Result<(Format, Vec<Migration>)> {
        let dir = self.migrations_dir(release);
        if let Some(hit) = self.read_cache.lock().expect("not poisoned").get(&dir) {
            return Ok(hit.clone());
        }
        let read = self.read_migrations_uncached(&dir)?;
        self.read_cache
            .lock()
            .expect("not poisoned")
            .insert(dir, read.clone());
        Ok(read)
    }

    fn read_migrations_uncached(&self, dir: &Path) -> Result<(Format, Vec<Migration>)> {
        let dir = dir.to_path_buf();
        if !dir.is_dir() {
            return Err(self.fail(format!(
                "migrations directory {} does not exist (migrations = {:?})",
                dir.display(),
                self.cfg.migrations
            )));
        }
        let read = match &self.cfg.format {
            Some(f) => {
                let format: Format = f.parse().map_err(|e: String| self.fail(e))?;
                rewind_db::migrations::read(&dir, format).map(|m| (format, m))
            }
            None => rewind_db::migrations::read_detected(&dir),
        };
        read.map_err(|e| match e {
            rewind_db::Error::Detect { .. } => self.fail(format!(
                "{e}: set format = \"sqlx\" (or diesel, golang-migrate, flyway, refinery, sqitch) in [components.{}]",
                self.name
            )),
            e => self.fail(e),
        })
    }

    /// A connection pool for changes. PostgreSQL sessions are named `rewind` and may write
    /// while the database is frozen read-only.
    async fn pool(&self) -> Result<sqlx::AnyPool> {
        let mut cached = self.cached.lock().await;
        if let Some(pool) = cached.as_ref() {
            return Ok(pool.clone());
        }
        let pool = self.open_pool().await?;
        *cached = Some(pool.clone());
        Ok(pool)
    }

    async fn open_pool(&self) -> Result<sqlx::AnyPool> {
        let mut url = self.url()?;
        if self.postgres {
            let sep = if url.contains('?') { '&' } else { '?' };
            url.push(sep);
            url.push_str(
                "application_name=rewind&options=-c%20default_transaction_read_only%3Doff",
            );
        } else if let Some(dir) = self.sqlite_path().and_then(Path::parent)
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                ComponentError::io(&self.name, format!("creating {}", dir.display()), e)
            })?;
        }
        rewind_db::connect(&url).await.map_err(|e| match e {
            rewind_db::Error::Query { source, .. } => {
                self.fail(format!("cannot connect to {}: {source}", self.location()))
            }
            e => self.fail(e),
        })
    }

    async fn pg_pool(&self) -> Result<sqlx::PgPool> {
        let url = PgUrl::parse(&self.url()?).map_err(|e| self.fail(e))?;
        let options = url.connect_options().map_err(|e| self.fail(e))?;
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(|e| {
                self.fail(format!(
                    "connecting to {}: {}",
                    self.location(),
                    rewind_db::runner::db_error_text(&e)
                ))
            })
    }

    async fn sqlite_pool(&self) -> Result<sqlx::SqlitePool> {
        let path = self.sqlite_path().expect("sqlite component");
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .busy_timeout(std::time::Duration::from_secs(30));
        sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| {
                self.fail(format!(
                    "opening {}: {}",
                    path.display(),
                    rewind_db::runner::db_error_text(&e)
                ))
            })
    }

    /// What the tool's history records now (nothing when a SQLite file does not exist yet).
    pub async fn state(&self, format: Format, migs: &[Migration]) -> Result<State> {
        if let Some(p) = self.sqlite_path()
            && !p.exists()
        {
            return Ok(State::default());
        }
        let pool = self.pool().await?;
        let state = rewind_db::runner::state(&pool, format, migs).await;
        state.map_err(|e| self.fail(e))
    }

    /// The level: the newest applied migration in the tool's order, or `none`.
    pub async fn level(&self, format: Format, migs: &[Migration]) -> Result<String> {
        Ok(self.state(format, migs).await?.level(format, migs))
    }

    /// Migrations that ran partly (outside a transaction, killed or failed half-way) and
    /// INVALID indexes, one line each.
    pub async fn partial(&self) -> Result<Vec<String>> {
        if !self.exists() {
            return Ok(Vec::new());
        }
        let pool = self.pool().await?;
        let r = async {
            let mut out: Vec<String> = rewind_db::runner::partial(&pool)
                .await?
                .iter()
                .map(|p| p.to_string())
                .collect();
            out.extend(
                rewind_db::runner::invalid_indexes(&pool)
                    .await?
                    .into_iter()
                    .map(|i| format!("index {i} is INVALID (an interrupted or failed CREATE INDEX CONCURRENTLY left it)")),
            );
            Ok::<_, rewind_db::Error>(out)
        }
        .await;
        r.map_err(|e| self.fail(e))
    }

    /// One migration's facts for a deploy (its up script) or a revert (its down script).
    fn facts_of(
        &self,
        format: Format,
        m: &Migration,
        down: bool,
        refusals: &mut Vec<String>,
    ) -> MigrationFacts {
        let dialect = self.dialect();
        let c = rewind_db::sql::classify(&m.up, dialect);
        let base = facts_from(m, &c);
        let (mode, ends_batch) = rewind_db::runner::analyse(format, m, down, dialect);
        let alone = match mode {
            Ok(mode) => mode.why().map(str::to_string),
            Err(e) => {
                refusals.push(e.to_string());
                None
            }
        };
        if !down && format == Format::Diesel && m.up.is_empty() {
            refusals.push(format!(
                "{} is empty: diesel refuses to run an empty up.sql (EmptyMigration)",
                m.file.display()
            ));
        } else if !down
            && format == Format::Diesel
            && self.postgres
            && rewind_db::sql::is_empty(&m.up, dialect)
        {
            refusals.push(format!(
                "{} holds only comments: diesel sends it to PostgreSQL, which answers with an empty query, and diesel fails (\"Received an empty query\")",
                m.file.display()
            ));
        }
        // Tools that send the file as it is hand PostgreSQL a byte-order mark, which it reads
        // as part of the first word (Flyway drops it; psql, which sqitch uses, too).
        let (script, file) = if down {
            (
                m.down.as_deref().unwrap_or_default(),
                m.down_file.as_deref().unwrap_or(&m.file),
            )
        } else {
            (m.up.as_str(), m.file.as_path())
        };
        if self.postgres
            && script.starts_with('\u{feff}')
            && matches!(
                format,
                Format::Sqlx | Format::Diesel | Format::Refinery | Format::GolangMigrate
            )
        {
            refusals.push(format!(
                "{} starts with a byte-order mark: {} sends it to PostgreSQL as it is, which fails (a syntax error at its first word); save the file without it",
                file.display(),
                format.name()
            ));
        }
        MigrationFacts {
            key: m.key().to_string(),
            effects: c
                .effects()
                .into_iter()
                .filter(|e| *e != Effect::Adds)
                .map(|e| e.words().to_string())
                .collect(),
            alone,
            warnings: m.warnings.clone(),
            display: m.label(),
            ends_batch,
            down_removes: if down {
                removed_by(m.down.as_deref().unwrap_or_default(), dialect)
            } else {
                Vec::new()
            },
            ..base
        }
    }

    /// What a deploy of `release` would do to this database: the migrations the release
    /// ships that the history lacks (in the tool's order, out-of-order ones marked), those
    /// applied that it does not ship, drift, and everything that would make the deploy refuse.
    ///
    /// `recorded` is the set the ledger recorded for the release that runs now (its keys),
    /// when it has one: golang-migrate's history holds only the current version, so a
    /// migration merged below it looks applied; the ledger tells it was not.
    pub async fn deploy_facts(
        &self,
        release: &str,
        recorded: Option<&[String]>,
    ) -> Result<DbDeployFacts> {
        let (format, migs) = self.read_migrations(release)?;
        let state = self.state(format, &migs).await?;
        let plan = rewind_db::sets::plan_deploy(format, &migs, &state);
        let mut refusals = plan.refusals.clone();
        if format == Format::GolangMigrate
            && let Some(known) = recorded.filter(|k| !k.is_empty())
        {
            let current = state.level(format, &migs);
            for m in state.applied(&migs) {
                if !known.iter().any(|k| k == m.key()) {
                    refusals.push(format!(
                        "{} is older than the current version {current} and was not applied with it (the ledger's set lacks it): golang-migrate keeps only the current version and never applies an older one; give it a version above {current}",
                        m.label()
                    ));
                }
            }
        }
        let mut notes = plan.notes.clone();
        // Levels as the migrations are applied, in order.
        let mut level = state.level(format, &migs);
        let mut known: Vec<&Migration> = state.applied(&migs);
        let mut pending = Vec::new();
        for m in &plan.to_apply {
            let mut f = self.facts_of(format, m, false, &mut refusals);
            f.out_of_order = plan.out_of_order.iter().any(|o| o.key() == m.key());
            known.push(m);
            level = known
                .iter()
                .max_by(|a, b| format.cmp_versions(&a.version, &b.version))
                .map(|m| m.version.clone())
                .unwrap_or(level);
            f.level_after = level.clone();
            pending.push(f);
        }
        // Warnings of the migrations to apply are shown with them; the others' here.
        for m in migs
            .iter()
            .filter(|m| !plan.to_apply.iter().any(|p| p.key() == m.key()))
        {
            for w in &m.warnings {
                if !notes.contains(w) {
                    notes.push(w.clone());
                }
            }
        }
        let (drift, drifted) = self.drift(format, &migs, &state, &mut notes).await?;
        let partial = self.partial().await?;
        for p in &partial {
            refusals.push(format!(
                "{p}; finish it with `rewind resume` (when the run that ran it is unfinished), or roll back (a restore)"
            ));
        }
        let mut set_after: Vec<String> = migs
            .iter()
            .filter(|m| state.is_applied(m) || plan.to_apply.iter().any(|p| p.key() == m.key()))
            .map(|m| m.key().to_string())
            .collect();
        set_after.extend(plan.unknown.iter().map(|r| r.key.clone()));
        let empty = state.recorded.is_empty() && self.holds_nothing().await?;
        if empty {
            notes.push(
                "the database holds nothing yet: the deploy takes no backup (there is nothing to bring back)"
                    .into(),
            );
        }
        Ok(DbDeployFacts {
            format: format.name().to_string(),
            level_now: state.level(format, &migs),
            target_level: level,
            pending,
            unknown: plan
                .unknown
                .iter()
                .map(|r| rewind_db::sets::unknown_label(format, r))
                .collect(),
            drift,
            drifted,
            refusals,
            notes,
            set_after,
            empty,
        })
    }

    /// True when the database has no table, view, sequence or function of its own (functions
    /// of extensions do not count): a new, empty database. A SQLite file that does not exist
    /// holds nothing either.
    pub async fn holds_nothing(&self) -> Result<bool> {
        if !self.exists() {
            return Ok(true);
        }
        let sql = if self.postgres {
            "SELECT CAST(count(*) AS BIGINT) FROM ( \
               SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
                  AND n.nspname NOT LIKE 'pg\\_%' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') \
               UNION ALL \
               SELECT p.oid FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
                  AND n.nspname NOT LIKE 'pg\\_%' \
                  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass \
                                  AND d.objid = p.oid AND d.deptype = 'e')) x"
        } else {
            "SELECT CAST(count(*) AS BIGINT) FROM sqlite_master WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
        };
        let pool = self.pool().await?;
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&pool)
            .await
            .map_err(|e| {
                self.fail(format!(
                    "looking at what the database holds: {}",
                    rewind_db::runner::db_error_text(&e)
                ))
            })?;
        Ok(n == 0)
    }

    /// Applied migrations whose file changed (or vanished) since they were applied, one line
    /// each, and the keys of those a deploy must not go past (without `--accept-drift`): an
    /// edited file, and — for sqlx and refinery, which hash bytes and refuse — a file that
    /// differs in line endings only.
    async fn drift(
        &self,
        format: Format,
        migs: &[Migration],
        state: &State,
        notes: &mut Vec<String>,
    ) -> Result<(Vec<String>, Vec<String>)> {
        if state.recorded.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let pool = self.pool().await?;
        let report = rewind_db::drift(&pool, format, migs).await;
        let report = report.map_err(|e| self.fail(e))?;
        let mut lines = Vec::new();
        let mut keys = Vec::new();
        for d in &report.drift {
            if let rewind_db::DriftKind::Changed { .. } = d.kind {
                lines.push(d.to_string());
                if let Some(m) = migs.iter().find(|m| m.version == d.version) {
                    keys.push(m.key().to_string());
                }
            }
        }
        let strict = matches!(format, Format::Sqlx | Format::Refinery);
        for v in &report.line_endings_only {
            if strict {
                lines.push(format!(
                    "{v} differs from what was applied in line endings only, and {} hashes bytes: it refuses to go on (check the file out as it was applied, e.g. with core.autocrlf, or --accept-drift)",
                    format.name()
                ));
                if let Some(m) = migs.iter().find(|m| &m.version == v) {
                    keys.push(m.key().to_string());
                }
            } else {
                notes.push(format!(
                    "{v} differs from what was applied in line endings only: not drift for rewind or {}",
                    format.name()
                ));
            }
        }
        // In the tool's order, as the plan lists migrations.
        keys.sort_by_key(|k| migs.iter().position(|m| m.key() == k));
        Ok((lines, keys))
    }

    /// What a rollback from `from_release` to `target` needs to know: every applied
    /// migration the target does not ship (newest applied first), what cannot be reverted,
    /// half-done migrations, failing checks, and the backup at the target's level.
    pub async fn rollback_facts(
        &self,
        from_release: &str,
        target: &DbTarget,
    ) -> Result<DbRollbackFacts> {
        let (format, migs) = match self.read_migrations(from_release) {
            Ok(read) => read,
            // The release being left has no migrations directory any more: nothing can
            // revert what it applied (no scripts), but a restore can still bring the
            // database back; the format comes from the config or the target's directory.
            Err(e) if !self.migrations_dir(from_release).is_dir() => {
                let format = match &self.cfg.format {
                    Some(f) => f.parse::<Format>().map_err(|m| self.fail(m))?,
                    None => self
                        .read_migrations(&target.release)
                        .map(|(f, _)| f)
                        .map_err(|_| e)?,
                };
                (format, Vec::new())
            }
            Err(e) => return Err(e),
        };
        let state = self.state(format, &migs).await?;
        let level_now = state.level(format, &migs);
        let target_set: std::collections::BTreeSet<String> = match &target.set {
            Some(set) => set.iter().cloned().collect(),
            None => self.target_set(format, &migs, target)?,
        };
        let plan = rewind_db::sets::plan_revert(&migs, &state, &target_set);
        let mut revert_refusals = Vec::new();
        let mut remaining: Vec<&Migration> = state.applied(&migs);
        let mut to_revert = Vec::new();
        for m in &plan.to_revert {
            let mut f = self.facts_of(format, m, true, &mut revert_refusals);
            remaining.retain(|r| r.key() != m.key());
            f.level_after = remaining
                .iter()
                .max_by(|a, b| format.cmp_versions(&a.version, &b.version))
                .map(|m| m.version.clone())
                .unwrap_or_else(|| NO_LEVEL.into());
            to_revert.push(f);
        }
        let failing_checks = if self.exists() {
            self.checks(Baseline::None).await?.failures
        } else {
            Vec::new()
        };
        let backup = self
            .list_backups()?
            .into_iter()
            .rev()
            .find(|b| b.level == target.level)
            .map(|b| b.facts());
        Ok(DbRollbackFacts {
            level_now,
            target_level: target.level.clone(),
            to_revert,
            unrevertable: plan
                .unrevertable
                .iter()
                .map(|r| rewind_db::sets::unknown_label(format, r))
                .collect(),
            not_applied: plan
                .not_applied
                .iter()
                .map(|k| {
                    migs.iter()
                        .find(|m| m.key() == k)
                        .map(|m| m.label())
                        .unwrap_or_else(|| k.clone())
                })
                .collect(),
            partial: self.partial().await?,
            revert_refusals,
            accept_row_loss: false,
            failing_checks,
            backup,
            pitr_window: None,
            now: rewind_core::now_rfc3339(),
        })
    }

    /// How the database's migrations compare with a release's (`rewind status`): applied
    /// ones the release does not ship, ones it ships that are not applied (against the set
    /// the ledger recorded for it, else its migrations directory), and half-done ones.
    pub async fn set_report(
        &self,
        release: &str,
        recorded: Option<&[String]>,
    ) -> Result<SetReport> {
        let (format, migs) = self.read_migrations(release)?;
        let state = self.state(format, &migs).await?;
        let expected: Vec<String> = match recorded {
            Some(set) if !set.is_empty() => set.to_vec(),
            _ => migs.iter().map(|m| m.key().to_string()).collect(),
        };
        let label = |key: &str| {
            migs.iter()
                .find(|m| m.key() == key)
                .map(|m| m.label())
                .or_else(|| {
                    state
                        .recorded
                        .iter()
                        .find(|r| r.key == key)
                        .map(|r| rewind_db::sets::unknown_label(format, r))
                })
                .unwrap_or_else(|| key.to_string())
        };
        Ok(SetReport {
            level: state.level(format, &migs),
            applied_not_in_release: state
                .recorded
                .iter()
                .filter(|r| !expected.contains(&r.key))
                .map(|r| label(&r.key))
                .collect(),
            in_release_not_applied: expected
                .iter()
                .filter(|k| !state.recorded.iter().any(|r| &r.key == *k))
                .map(|k| label(k))
                .collect(),
            partial: self.partial().await?,
        })
    }

    /// The migrations a target release ships when the ledger did not record them: its own
    /// migrations directory when each release has one (`{release}` in `migrations`), else
    /// every migration up to the target's level in the current directory.
    fn target_set(
        &self,
        format: Format,
        migs: &[Migration],
        target: &DbTarget,
    ) -> Result<std::collections::BTreeSet<String>> {
        if (self.cfg.migrations.contains("{release}") || migs.is_empty())
            && self.migrations_dir(&target.release).is_dir()
        {
            let (_, theirs) = self.read_migrations(&target.release)?;
            return Ok(theirs.iter().map(|m| m.key().to_string()).collect());
        }
        if target.level == NO_LEVEL {
            return Ok(Default::default());
        }
        let Some(pos) = migs.iter().position(|m| m.version == target.level) else {
            return Err(self.fail(format!(
                "the target's level {} is not in {}: its migration was removed",
                target.level,
                self.migrations_dir(&target.release).display()
            )));
        };
        let _ = format;
        Ok(migs[..=pos].iter().map(|m| m.key().to_string()).collect())
    }

    /// pgBackRest's recoverable window (RFC 3339, UTC), or `None` without `[pitr]`.
    pub async fn pitr_window(&self) -> Result<Option<(String, String)>> {
        let Some(cfg) = self.pgbackrest() else {
            return Ok(None);
        };
        let w = rewind_dbkit::pitr::window(&cfg, &self.url()?)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(Some((
            rewind_core::format_ts(w.earliest),
            rewind_core::format_ts(w.latest),
        )))
    }

    /// `[pitr]` in pgBackRest's terms.
    fn pgbackrest(&self) -> Option<rewind_dbkit::pitr::PgBackRest> {
        let p = self.cfg.pitr.as_ref()?;
        Some(rewind_dbkit::pitr::PgBackRest {
            stanza: p.stanza.clone(),
            config: p.config.clone(),
            program: None,
            run_as: p.run_as.clone(),
            data_dir: p.data_dir.clone(),
            stop: p.stop.clone(),
            start: p.start.clone(),
            recovery_timeout: rewind_dbkit::pitr::PgBackRest::DEFAULT_RECOVERY_TIMEOUT,
        })
    }

    fn exists(&self) -> bool {
        self.sqlite_path().is_none_or(Path::exists)
    }

    /// Takes a full backup into the backup directory, with its sidecar, and prunes old ones
    /// (beyond `keep-backups`, never those in `protect`).
    pub async fn backup(&self, reason: &str, level: &str) -> Result<BackupMeta> {
        self.backup_with_progress(reason, level, &tokio::sync::watch::Sender::new(0))
            .await
    }

    /// [`Database::backup`], sending the size of the file being written to `progress` about
    /// twice a second: this backup's own partial file, nothing else in the directory.
    ///
    /// The directory's lock and the order of the renames are in [`crate::backup_dir`]: what a
    /// killed writer left is swept first (unless another writer is at work), and the backup
    /// is listed only once its file and its description are both in place.
    pub async fn backup_with_progress(
        &self,
        reason: &str,
        level: &str,
        progress: &tokio::sync::watch::Sender<u64>,
    ) -> Result<BackupMeta> {
        let dir = &self.cfg.backup_dir;
        std::fs::create_dir_all(dir).map_err(|e| {
            ComponentError::io(&self.name, format!("creating {}", dir.display()), e)
        })?;
        let (_writing, _swept) = backup_dir::begin_writing(dir).await.map_err(|e| {
            ComponentError::io(
                &self.name,
                format!("locking {}", dir.join(backup_dir::LOCK).display()),
                e,
            )
        })?;
        let now = jiff::Timestamp::now();
        let id = format!(
            "{}-{}",
            now.strftime("%Y%m%dT%H%M%S%.3fZ"),
            &blake3::hash(format!("{}{}", now.as_nanosecond(), std::process::id()).as_bytes())
                .to_hex()[..6]
        );
        let file = dir.join(format!(
            "{id}.{}",
            if self.postgres { "dump" } else { "sqlite" }
        ));
        let partial = rewind_dbkit::partial_path(&file);
        let step = format!("{}.backup", self.name);
        let write = async {
            if self.postgres {
                let b = rewind_dbkit::pg_backup(&self.url()?, &file, self.cfg.pg_bin.as_deref())
                    .await
                    .map_err(|e| self.fail(e))?;
                Ok((b.info, b.row_counts, b.catalog))
            } else {
                let db = self.sqlite_path().expect("sqlite component");
                if !db.exists() {
                    return Err(self.fail(format!(
                        "{} does not exist yet: nothing to back up",
                        db.display()
                    )));
                }
                let info = rewind_dbkit::sqlite_snapshot(db, &file)
                    .await
                    .map_err(|e| self.fail(e))?;
                let (counts, catalog) = rewind_dbkit::sqlite_file_record(&file)
                    .await
                    .map_err(|e| self.fail(e))?;
                Ok((info, counts, catalog))
            }
        };
        tokio::pin!(write);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        let size = || std::fs::metadata(&partial).map(|m| m.len()).ok();
        let (info, row_counts, catalog) = loop {
            tokio::select! {
                done = &mut write => break done?,
                _ = tick.tick() => {
                    if let Some(n) = size() {
                        progress.send_replace(n);
                    }
                }
                _ = crash::during(&step, || size().is_some_and(|n| n > 0)) => {
                    unreachable!("crash::during never finishes")
                }
            }
        };
        progress.send_replace(info.bytes);
        crash::point("mid", &step);
        let meta = BackupMeta {
            id: id.clone(),
            component: self.name.clone(),
            kind: match info.kind {
                BackupKind::SqliteSnapshot => "sqlite-snapshot".into(),
                BackupKind::PgDumpCustom => "pg-dump-custom".into(),
            },
            file: info.path.clone(),
            bytes: info.bytes,
            checksum: info.checksum.clone(),
            created_at: rewind_core::format_ts(info.created_at),
            level: level.to_string(),
            reason: reason.to_string(),
            row_counts,
            catalog: Some(catalog),
        };
        let sidecar = dir.join(format!("{id}.json"));
        let tmp = dir.join(format!(".{id}.json.partial"));
        let text = serde_json::to_string_pretty(&meta).expect("serializable");
        let write_meta = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            f.sync_all()?;
            crash::point("after-action", &step);
            std::fs::rename(&tmp, &sidecar)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write_meta().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            ComponentError::io(&self.name, format!("writing {}", sidecar.display()), e)
        })?;
        self.prune_backups()?;
        Ok(meta)
    }

    /// Every complete backup in the backup directory, oldest first. What killed writers
    /// left there is swept first, when no writer is at work (see [`crate::backup_dir`]).
    pub fn list_backups(&self) -> Result<Vec<BackupMeta>> {
        let dir = &self.cfg.backup_dir;
        backup_dir::sweep(dir);
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(ComponentError::io(
                    &self.name,
                    format!("reading {}", dir.display()),
                    e,
                ));
            }
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let is_sidecar = path.extension().is_some_and(|e| e == "json")
                && !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if !is_sidecar {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            match serde_json::from_str::<BackupMeta>(&text) {
                Ok(m) if m.file.exists() => out.push(m),
                _ => continue,
            }
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Removes the oldest backups beyond `keep-backups`: the description first, so a prune
    /// cut short leaves a file without one, which the next sweep removes (never a listed
    /// backup without its file).
    pub fn prune_backups(&self) -> Result<Vec<String>> {
        let all = self.list_backups()?;
        let keep = self.cfg.keep_backups as usize;
        let mut removed = Vec::new();
        if all.len() > keep {
            for old in &all[..all.len() - keep] {
                let _ = std::fs::remove_file(self.cfg.backup_dir.join(format!("{}.json", old.id)));
                let _ = std::fs::remove_file(&old.file);
                removed.push(old.id.clone());
            }
        }
        Ok(removed)
    }

    /// `backup verify`: restores the backup into a scratch database and runs the data checks
    /// there (integrity, row counts and catalog against the backup's, foreign-key orphans).
    pub async fn verify_backup(&self, meta: &BackupMeta) -> Result<CheckReport> {
        let info = backup_info(&meta.facts().source).expect("a backup");
        let checks = self.sql_checks();
        let report = if self.postgres {
            let options = self.restore_options(Some(meta));
            rewind_dbkit::pg_verify_with(&self.url()?, &info, &options, &checks).await
        } else {
            rewind_dbkit::sqlite_verify_with(&info, &checks).await
        }
        .map_err(|e| self.fail(e))?;
        let mut out = CheckReport::default();
        out.lines.push(format!(
            "restored into a scratch database: {}",
            report.integrity
        ));
        compare_counts(
            &mut out,
            &meta.row_counts,
            &report.row_counts,
            0.0,
            true,
            "the backup's recorded",
        );
        let recorded = meta.catalog.as_ref().map(|c| c.lines.as_slice());
        compare_catalog(&mut out, recorded.unwrap_or_default(), &report.catalog);
        report_orphans_and_checks(
            &mut out,
            &report.fk_orphans,
            &report.checks,
            "is not in this backup",
        );
        Ok(out)
    }

    /// The data checks: row counts against `baseline`, foreign-key orphans, SQL assertions.
    pub async fn checks(&self, baseline: Baseline<'_>) -> Result<CheckReport> {
        let want_counts = !matches!(baseline, Baseline::None | Baseline::Missing);
        let want_catalog = matches!(baseline, Baseline::Backup { .. });
        let mut out = CheckReport::default();
        let checks = self.sql_checks();
        let secret = self.password();
        let (counts, orphans, outcomes, catalog) = if self.postgres {
            let pool = self.pg_pool().await?;
            let r = inspect(&pool, want_counts, want_catalog, &checks, secret.as_deref()).await;
            pool.close().await;
            r
        } else {
            let pool = self.sqlite_pool().await?;
            let r = inspect(&pool, want_counts, want_catalog, &checks, None).await;
            pool.close().await;
            r
        }
        .map_err(|e| self.fail(e))?;
        // The migration tools' own tables change with every revert: not data.
        let is_bookkeeping = |t: &str| {
            let bare = t.rsplit('.').next().unwrap_or(t);
            t.starts_with("sqitch.")
                || [
                    "_sqlx_migrations",
                    "__diesel_schema_migrations",
                    "schema_migrations",
                    "flyway_schema_history",
                    "refinery_schema_history",
                ]
                .contains(&bare)
        };
        let filter = |m: &BTreeMap<String, i64>| -> BTreeMap<String, i64> {
            m.iter()
                .filter(|(t, _)| !is_bookkeeping(t))
                .map(|(t, n)| (t.clone(), *n))
                .collect()
        };
        let tolerance = self.cfg.row_count_tolerance.0;
        match baseline {
            Baseline::None => {}
            Baseline::Missing => out.lines.push(
                "row counts: this run's restore point holds no counts (nothing compared)".into(),
            ),
            Baseline::RestorePoint(tables, may_lose) => {
                let expected = |t: &str| {
                    let bare = |s: &str| s.rsplit('.').next().unwrap_or(s).to_lowercase();
                    may_lose.iter().any(|m| m == "*" || bare(m) == bare(t))
                };
                let (fewer_ok, strict): (BTreeMap<String, i64>, BTreeMap<String, i64>) =
                    filter(tables).into_iter().partition(|(t, _)| expected(t));
                compare_counts(
                    &mut out,
                    &strict,
                    &filter(&counts),
                    tolerance,
                    false,
                    "the restore point's",
                );
                for (t, was) in fewer_ok {
                    match counts.get(&t) {
                        Some(&n) if n != was => out.lines.push(format!(
                            "table {t}: {n} rows, the restore point's count {was}: the down scripts delete from it"
                        )),
                        None => out.lines.push(format!(
                            "table {t} is gone (dropped by the revert; had {was} rows)"
                        )),
                        _ => {}
                    }
                }
            }
            Baseline::Backup {
                tables,
                catalog: recorded,
            } => {
                compare_counts(
                    &mut out,
                    &filter(tables),
                    &filter(&counts),
                    tolerance,
                    true,
                    "the backup's",
                );
                if let Some(now) = &catalog {
                    compare_catalog(&mut out, recorded, now);
                }
            }
        }
        report_orphans_and_checks(
            &mut out,
            &orphans,
            &outcomes,
            "does not exist at this level",
        );
        Ok(out)
    }

    async fn freeze(&self, cx: &Ctx, on: bool) -> Result<Outcome> {
        match &self.cfg.freeze {
            Freeze::None => Ok(Outcome::Skipped("freeze = \"none\"".into())),
            Freeze::Command { freeze, unfreeze } => {
                let cmd = if on { freeze } else { unfreeze };
                let out = proc::run_shell(
                    &self.name,
                    cmd,
                    None,
                    &[],
                    self.cfg.command_timeout,
                    &cx.redactor,
                )
                .await?;
                proc::expect_success(
                    &self.name,
                    if on {
                        "freeze-command"
                    } else {
                        "unfreeze-command"
                    },
                    &cx.redactor.redact(cmd),
                    &out,
                )?;
                Ok(Outcome::Done(out.output))
            }
            Freeze::ReadOnly => {
                let pool = self.pg_pool().await?;
                let r = async {
                    let db: String = sqlx::query_scalar("SELECT current_database()::text")
                        .fetch_one(&pool)
                        .await?;
                    let ident = rewind_dbkit::inspect::quote_ident(&db);
                    if on {
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "ALTER DATABASE {ident} SET default_transaction_read_only = on"
                        )))
                        .execute(&pool)
                        .await?;
                        // Sessions already open keep their setting: end them, so they
                        // reconnect read-only. rewind's own sessions are spared.
                        let ended: i64 = sqlx::query_scalar(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                              WHERE datname = current_database() AND pid <> pg_backend_pid()
                                AND backend_type = 'client backend'
                                AND coalesce(application_name, '') NOT LIKE 'rewind%'",
                        )
                        .fetch_one(&pool)
                        .await?;
                        Ok(format!(
                            "database {db} is read-only for new transactions; {ended} other session{} ended",
                            if ended == 1 { "" } else { "s" }
                        ))
                    } else {
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "ALTER DATABASE {ident} RESET default_transaction_read_only"
                        )))
                        .execute(&pool)
                        .await?;
                        Ok(format!("database {db} accepts writes again"))
                    }
                }
                .await;
                pool.close().await;
                r.map(Outcome::Done)
                    .map_err(|e: sqlx::Error| self.fail(rewind_db::runner::db_error_text(&e)))
            }
        }
    }

    async fn restore(&self, cx: &Ctx, source: &RestoreSource) -> Result<Outcome> {
        self.drop_connections().await;
        let Some(info) = backup_info(source) else {
            return self.restore_point_in_time(cx, source).await;
        };
        cx.note(format!(
            "{}: restoring {} ({} bytes)",
            self.name,
            info.path.display(),
            info.bytes
        ));
        if self.postgres {
            let meta = BackupMeta::read_beside(&info.path);
            if meta.as_ref().is_none_or(|m| m.catalog.is_none()) {
                cx.note(format!(
                    "{}: the backup's sidecar records no roles (an older rewind's): pg_restore \
                     will name a missing one",
                    self.name
                ));
            }
            let options = self.restore_options(meta.as_ref());
            let notes = rewind_dbkit::pg_restore_exact(&self.url()?, &info, &options)
                .await
                .map_err(|e| self.fail(e))?;
            for n in notes {
                cx.note(format!("{}: {n}", self.name));
            }
        } else {
            let path = self.sqlite_path().expect("sqlite component").to_path_buf();
            let notes = cx.notes.clone();
            let name = self.name.clone();
            let mut last = 0u64;
            rewind_dbkit::sqlite_restore(&info, &path, move |p| {
                let pct = (p.copied * 100).checked_div(p.total).unwrap_or(100);
                if pct >= last + 25 || p.copied == p.total {
                    last = pct;
                    if let Some(n) = &notes {
                        let _ = n.send(format!("{name}: copied {} of {} bytes", p.copied, p.total));
                    }
                }
            })
            .await
            .map_err(|e| self.fail(e))?;
        }
        Ok(Outcome::Done(format!(
            "restored {} ({} bytes)",
            info.path.display(),
            info.bytes
        )))
    }

    /// How a backup is restored: 2 jobs, the configured client tools, and the roles the
    /// backup names (checked before anything changes).
    fn restore_options(&self, meta: Option<&BackupMeta>) -> PgRestoreOptions {
        PgRestoreOptions {
            jobs: 2,
            pg_bin: self.cfg.pg_bin.clone(),
            roles: meta
                .and_then(|m| m.catalog.as_ref())
                .map(|c| c.roles.clone())
                .unwrap_or_default(),
        }
    }

    /// Whether pg_dump and pg_restore fit the server (PostgreSQL only). `Ok` when the server
    /// cannot be reached: the step that needs it says so, with the driver's reason.
    async fn check_tools(&self) -> Result<()> {
        if !self.postgres {
            return Ok(());
        }
        let Ok(url) = PgUrl::parse(&self.url()?) else {
            return Ok(());
        };
        let Ok(options) = url.connect_options() else {
            return Ok(());
        };
        use sqlx::Connection;
        let Ok(mut conn) = sqlx::postgres::PgConnection::connect_with(&options).await else {
            return Ok(());
        };
        let server = rewind_dbkit::ServerVersion::of(&mut conn).await;
        let _ = conn.close().await;
        let Ok(server) = server else {
            return Ok(());
        };
        rewind_dbkit::pgtools::choose(&server, self.cfg.pg_bin.as_deref())
            .await
            .map(|_| ())
            .map_err(|e| self.fail(e))
    }

    /// pgBackRest point-in-time recovery: the target is checked against the recoverable
    /// window before the server is touched; then stop, restore, start, wait for promotion.
    /// Run again after a crash, it starts over (`--delta` restore of the same backup set).
    async fn restore_point_in_time(&self, cx: &Ctx, source: &RestoreSource) -> Result<Outcome> {
        let RestoreSource::PointInTime { time } = source else {
            unreachable!("backups are restored above");
        };
        let Some(cfg) = self.pgbackrest() else {
            return Err(self.fail(format!(
                "a restore to {time} needs [components.{}.pitr]",
                self.name
            )));
        };
        let target = rewind_dbkit::parse_target_time(time).map_err(|e| self.fail(e))?;
        let name = self.name.clone();
        let report = rewind_dbkit::pitr::restore_to_time(&cfg, &self.url()?, target, |phase| {
            cx.note(format!("{name}: point-in-time recovery: {phase}"));
        })
        .await
        .map_err(|e| self.fail(e))?;
        let mut done = format!(
            "restored to {} from backup set {} (window {} … {})",
            rewind_core::format_ts(report.target),
            report.backup_set,
            rewind_core::format_ts(report.window.earliest),
            rewind_core::format_ts(report.window.latest)
        );
        // The whole cluster went back to the target time, its catalog too: the database
        // setting this run's freeze made is gone, and the server takes writes again as soon
        // as it is promoted — before the data checks and the unfreeze. Frozen again at once;
        // sessions that connected in between are ended, so they reconnect read-only.
        if self.cfg.freeze == Freeze::ReadOnly {
            cx.note(format!(
                "{name}: point-in-time recovery reset the freeze: stopping writes again"
            ));
            let (Outcome::Done(line) | Outcome::Skipped(line)) =
                self.freeze(cx, true).await.map_err(|e| {
                    self.fail(format!(
                        "{done}, but stopping writes again failed: {e}\nhint: the database \
                         takes writes; the data checks have not run"
                    ))
                })?;
            done.push_str(&format!("; writes stopped again: {line}"));
        }
        Ok(Outcome::Done(done))
    }
}

/// What one pool's inspection found: row counts, foreign-key orphans, SQL assertions, and
/// the catalog.
type Inspection = (
    BTreeMap<String, i64>,
    Vec<rewind_dbkit::FkOrphans>,
    Vec<rewind_dbkit::CheckOutcome>,
    Option<Catalog>,
);

/// Row counts and the catalog (when wanted), foreign-key orphans and the SQL assertions of
/// one pool.
async fn inspect<P: Inspect>(
    pool: &P,
    want_counts: bool,
    want_catalog: bool,
    checks: &[(String, String)],
    secret: Option<&str>,
) -> std::result::Result<Inspection, rewind_dbkit::Error> {
    let counts = if want_counts {
        pool.row_counts().await?
    } else {
        BTreeMap::new()
    };
    let catalog = if want_catalog {
        Some(pool.catalog().await?)
    } else {
        None
    };
    let orphans = pool.fk_orphans().await?;
    Ok((
        counts,
        orphans,
        pool.sql_checks(checks, secret).await,
        catalog,
    ))
}

/// How many catalog differences a check names before it says how many more there are.
const CATALOG_DIFFS_SHOWN: usize = 10;

/// Compares the catalog found now with the one recorded with the backup: one line when they
/// match, else a failure per difference (the first few, in catalog order), each naming the
/// line that was added, is missing, or has another value.
fn compare_catalog(out: &mut CheckReport, recorded: &[String], now: &Catalog) {
    if recorded.is_empty() {
        out.lines.push(
            "catalog: the backup recorded none (taken by an older rewind): not compared".into(),
        );
        return;
    }
    let diffs = rewind_dbkit::catalog::compare(recorded, &now.lines);
    let short = |f: &str| f.get(..12).unwrap_or(f).to_string();
    if diffs.is_empty() {
        out.lines.push(format!(
            "catalog: matches the backup's ({} lines, fingerprint {})",
            now.lines.len(),
            short(&now.fingerprint)
        ));
        return;
    }
    let mut failures: Vec<String> = diffs
        .iter()
        .take(CATALOG_DIFFS_SHOWN)
        .map(|d| format!("catalog: {d}"))
        .collect();
    if diffs.len() > CATALOG_DIFFS_SHOWN {
        failures.push(format!(
            "catalog: … and {} more difference{} (fingerprint {}, the backup's {})",
            diffs.len() - CATALOG_DIFFS_SHOWN,
            if diffs.len() - CATALOG_DIFFS_SHOWN == 1 {
                ""
            } else {
                "s"
            },
            short(&now.fingerprint),
            short(&rewind_dbkit::catalog::fingerprint(recorded))
        ));
    }
    out.failures.extend(failures.iter().cloned());
    out.lines.extend(failures);
}

/// Adds the foreign-key and SQL-assertion results to `out`. `missing` says where a table a
/// check reads is missing (such a check says nothing about the data that is there).
fn report_orphans_and_checks(
    out: &mut CheckReport,
    orphans: &[rewind_dbkit::FkOrphans],
    checks: &[rewind_dbkit::CheckOutcome],
    missing: &str,
) {
    let bad: Vec<String> = orphans
        .iter()
        .filter(|o| o.orphans > 0)
        .map(|o| {
            format!(
                "foreign key {} of {} ({}) → {}: {} orphaned row{}",
                o.constraint,
                o.table,
                o.columns.join(", "),
                o.references,
                o.orphans,
                if o.orphans == 1 { "" } else { "s" }
            )
        })
        .collect();
    if bad.is_empty() {
        out.lines.push(format!(
            "foreign keys: {} checked, no orphaned rows",
            orphans.len()
        ));
    } else {
        out.failures.extend(bad.iter().cloned());
        out.lines.extend(bad);
    }
    for c in checks {
        let error = c.error.as_deref().unwrap_or("?");
        let (line, fails) = match c.holds {
            Some(true) => (format!("check {}: holds", c.name), false),
            Some(false) => (format!("check {} does not hold", c.name), true),
            None if c.missing_table => (
                format!(
                    "check {}: not run, a table it reads {missing} ({error})",
                    c.name
                ),
                false,
            ),
            None => (format!("check {} could not run: {error}", c.name), true),
        };
        if fails {
            out.failures.push(line.clone());
        }
        out.lines.push(line);
    }
}

/// Compares row counts: a table that lost more than `tolerance` of its rows fails; so does a
/// table that is gone, when `missing_fails` (after a restore every table must be back).
fn compare_counts(
    out: &mut CheckReport,
    before: &BTreeMap<String, i64>,
    now: &BTreeMap<String, i64>,
    tolerance: f64,
    missing_fails: bool,
    whose: &str,
) {
    let mut same = 0;
    for (table, &was) in before {
        match now.get(table) {
            None if missing_fails => {
                let l = format!("table {table} is missing ({whose} count: {was})");
                out.failures.push(l.clone());
                out.lines.push(l);
            }
            None => out.lines.push(format!(
                "table {table} is gone (dropped by the revert; had {was} rows)"
            )),
            Some(&n) if n == was => same += 1,
            Some(&n) => {
                let lost = (was - n) as f64 / (was.max(1)) as f64;
                let l = format!(
                    "table {table}: {n} rows, {whose} count {was} ({:+.1} %)",
                    (n - was) as f64 * 100.0 / (was.max(1)) as f64
                );
                if lost > tolerance + 1e-12 {
                    out.failures.push(format!(
                        "{l}, more than the {:.1} % allowed",
                        tolerance * 100.0
                    ));
                }
                out.lines.push(l);
            }
        }
    }
    out.lines.insert(
        0,
        format!(
            "row counts: {same} of {} tables match {whose} count",
            before.len()
        ),
    );
}

fn phase_words(p: &rewind_db::Phase) -> String {
    use rewind_db::Phase;
    match p {
        Phase::Applying => "applying".into(),
        Phase::Applied => "applied (not yet committed)".into(),
        Phase::Reverting => "reverting".into(),
        Phase::Reverted => "reverted (not yet committed)".into(),
        Phase::Unit { done, total, line } => {
            format!("{done} of {total} units committed (through line {line})")
        }
        Phase::Resuming { done, total } => {
            format!("an earlier attempt committed {done} of {total} units: going on from there")
        }
        Phase::Note(n) => n.clone(),
        Phase::Failed(e) => format!("failed: {e}"),
        Phase::Committed => "committed".into(),
        Phase::RolledBack => "rolled back: the database is as before the batch".into(),
    }
}

/// The tables a script deletes rows from or drops, as the classification reads it.
fn removed_by(sql: &str, dialect: Dialect) -> Vec<String> {
    let c = rewind_db::sql::classify(sql, dialect);
    let mut out: Vec<String> = c.tables_losing_rows.iter().cloned().collect();
    for f in &c.findings {
        if f.kind == rewind_db::sql::FindingKind::DropTable
            && let Some(o) = &f.object
        {
            out.extend(o.split(", ").map(str::to_string));
        }
    }
    out.sort();
    out.dedup();
    out
}

fn bad_psql(file: &Path, reason: String) -> rewind_db::Error {
    rewind_db::Error::BadFile {
        file: file.to_path_buf(),
        reason,
    }
}

/// What a migration's up script does, for the plan: every finding's sentence when any
/// effect other than adding shows (long locks and breaking changes included, so the plan
/// says them), and data counted lost when rows or values go (a rollback cannot bring
/// overwritten values back either).
#[cfg(test)]
fn classify(m: &Migration, dialect: Dialect) -> MigrationFacts {
    facts_from(m, &rewind_db::sql::classify(&m.up, dialect))
}

/// [`classify`] from a classification already made.
fn facts_from(m: &Migration, c: &rewind_db::sql::Classification) -> MigrationFacts {
    let destructive = if c.effects().iter().any(|e| *e != Effect::Adds) {
        c.lines()
    } else {
        Vec::new()
    };
    MigrationFacts {
        version: m.version.clone(),
        name: m.name.clone(),
        destructive,
        loses_data: c.loses_data() || c.rewrites_data(),
        down: match &m.down {
            None => DownScript::Missing,
            Some(_) if m.down_is_empty() => DownScript::Empty,
            Some(_) => DownScript::Present,
        },
        ..MigrationFacts::default()
    }
}

#[async_trait]
impl Component for Database {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        if self.postgres { "postgres" } else { "sqlite" }
    }

    async fn current(&self, cx: &Ctx) -> Result<Option<String>> {
        // A database that cannot be reached says so, even before anything is deployed.
        self.url()?;
        let release = match (
            &cx.current_release,
            self.cfg.migrations.contains("{release}"),
        ) {
            (Some(r), _) => r.clone(),
            (None, false) => String::new(),
            (None, true) => {
                // No release yet to read migrations from: nothing to report, but a database
                // that cannot be reached says so.
                if self.postgres {
                    self.pool().await?;
                }
                return Ok(None);
            }
        };
        let (format, migs) = self.read_migrations(&release)?;
        self.level(format, &migs).await.map(Some)
    }

    async fn restore_point(&self, cx: &Ctx, backup: Option<&str>) -> Result<Snapshot> {
        self.restore_point_with(cx, backup).await
    }

    async fn precheck(&self, _cx: &Ctx, action: &Action) -> Result<()> {
        self.url()?;
        match action {
            Action::Migrate { release, .. } | Action::Revert { release, .. } => {
                self.read_migrations(release).map(|_| ())
            }
            Action::Restore { source, .. } => match backup_info(source) {
                Some(info) if !info.path.is_file() => {
                    Err(self.fail(format!("backup {} is gone", info.path.display())))
                }
                Some(_) => self.check_tools().await,
                None => Ok(()),
            },
            Action::RestorePoint {
                backup: Some(_), ..
            } => self.check_tools().await,
            _ => Ok(()),
        }
    }

    async fn apply(&self, cx: &Ctx, action: &Action) -> Result<Outcome> {
        match action {
            Action::Migrate {
                release,
                to,
                versions,
                alone,
                accept_row_loss,
                ..
            }
            | Action::Revert {
                release,
                to,
                versions,
                alone,
                accept_row_loss,
                ..
            } => {
                let options = rewind_db::runner::Options {
                    accept_row_loss: *accept_row_loss,
                };
                let down = matches!(action, Action::Revert { .. });
                self.run_migrations(cx, release, to, versions, alone.is_some(), down, options)
                    .await
            }
            Action::AcceptDrift {
                release, versions, ..
            } => {
                let (format, migs) = self.read_migrations(release)?;
                let pool = self.pool().await?;
                let r = rewind_db::drift::accept(&pool, format, &migs, versions).await;
                let updated = r.map_err(|e| self.fail(e))?;
                if updated.is_empty() {
                    Ok(Outcome::Skipped(
                        "the history already holds the files' checksums".into(),
                    ))
                } else {
                    Ok(Outcome::Done(format!(
                        "recorded the new checksums of {} in the {} history",
                        updated.join(", "),
                        format.name()
                    )))
                }
            }
            Action::Freeze { .. } => self.freeze(cx, true).await,
            Action::Unfreeze { .. } => self.freeze(cx, false).await,
            Action::Restore { source, .. } => self.restore(cx, source).await,
            Action::DataCheck { baseline, .. } => {
                let baseline = match (baseline, &cx.baseline_counts) {
                    (CountBaseline::RestorePoint { may_lose }, Some(c)) => {
                        Baseline::RestorePoint(c, may_lose)
                    }
                    (CountBaseline::RestorePoint { .. }, None) => Baseline::Missing,
                    (CountBaseline::Known { tables, catalog }, _) => {
                        Baseline::Backup { tables, catalog }
                    }
                    (CountBaseline::None, _) => Baseline::None,
                };
                let report = self.checks(baseline).await?;
                let text = report.lines.join("\n");
                if report.failures.is_empty() {
                    Ok(Outcome::Done(text))
                } else {
                    Err(self.fail(format!(
                        "data checks failed:\n  {}",
                        report.failures.join("\n  ")
                    )))
                }
            }
            other => Err(ComponentError::Unsupported {
                component: self.name.clone(),
                kind: self.kind(),
                action: format!("{other:?}"),
            }),
        }
    }
}

impl Database {
    /// Applies (or, `down`, reverts) the migrations `versions` of `release`'s directory:
    /// one that runs alone by itself, the others in one transaction. Without `versions` (a
    /// run recorded before sets): everything pending up to `to` (or applied after it).
    #[allow(clippy::too_many_arguments)]
    async fn run_migrations(
        &self,
        cx: &Ctx,
        release: &str,
        to: &str,
        versions: &[String],
        alone: bool,
        down: bool,
        options: rewind_db::runner::Options,
    ) -> Result<Outcome> {
        let (format, migs) = self.read_migrations(release)?;
        let level = self.level(format, &migs).await?;
        let pool = self.pool().await?;
        let notes = cx.notes.clone();
        let name = self.name.clone();
        let step_id = format!("{}.{}", self.name, if down { "revert" } else { "migrate" });
        let progress = |m: &Migration, phase: rewind_db::Phase| {
            if let Some(n) = &notes {
                let _ = n.send(format!("{name}: {}: {}", m.label(), phase_words(&phase)));
            }
            // The kill tests stop here: one migration reverted, nothing committed; or one
            // unit of a migration that runs alone committed.
            if down && phase == rewind_db::Phase::Reverted {
                crash::point("mid", &step_id);
            }
            if let rewind_db::Phase::Unit { done, .. } = phase {
                crash::point("unit", &format!("{step_id}.{}.{done}", m.key()));
            }
        };
        let verb = if down { "reverted" } else { "applied" };
        let r: std::result::Result<Vec<String>, rewind_db::Error> = if versions.is_empty() {
            // A run recorded before sets: the old shape of the step.
            let target = (to != NO_LEVEL).then_some(to);
            if down {
                rewind_db::revert(&pool, format, &migs, target, progress).await
            } else {
                rewind_db::apply(&pool, format, &migs, target, progress).await
            }
        } else if alone
            && let Some(m) = migs.iter().find(|m| m.key() == versions[0])
            && let Ok(rewind_db::RunMode::Psql(why)) =
                rewind_db::run_mode(format, m, down, self.dialect())
        {
            self.psql_migration(cx, &pool, format, &migs, m, down, &why)
                .await
                .map(|done| {
                    if done {
                        vec![m.version.clone()]
                    } else {
                        Vec::new()
                    }
                })
        } else if alone {
            let key = &versions[0];
            let outcome =
                rewind_db::runner::run_alone(&pool, format, &migs, key, down, options, progress)
                    .await;
            outcome.map(|o| match o {
                rewind_db::AloneOutcome::Done => migs
                    .iter()
                    .filter(|m| m.key() == key)
                    .map(|m| m.version.clone())
                    .collect(),
                rewind_db::AloneOutcome::AlreadyDone => Vec::new(),
            })
        } else {
            rewind_db::runner::run_batch(&pool, format, &migs, versions, down, options, progress)
                .await
        };
        let done = r.map_err(|e| self.fail(e))?;
        if done.is_empty() {
            return Ok(Outcome::Skipped(format!("already {verb} (level {level})")));
        }
        Ok(Outcome::Done(format!(
            "{verb} {} migration{} ({}); level {level} → {to}",
            done.len(),
            if done.len() == 1 { "" } else { "s" },
            done.join(", ")
        )))
    }

    /// Runs one migration's script through psql, as sqitch runs every PostgreSQL script
    /// (`psql -X -q -v ON_ERROR_STOP=1 -v registry=sqitch -f FILE`, in the project's
    /// directory, the password in `PGPASSWORD` only), then records it in the history.
    /// Returns false when the history already had it. A kill between psql's end and the
    /// record runs the script again on resume, as a second `sqitch deploy` would.
    #[allow(clippy::too_many_arguments)]
    async fn psql_migration(
        &self,
        cx: &Ctx,
        pool: &sqlx::AnyPool,
        format: Format,
        migs: &[Migration],
        m: &Migration,
        down: bool,
        why: &str,
    ) -> std::result::Result<bool, rewind_db::Error> {
        if rewind_db::runner::is_done(pool, format, migs, m.key(), down).await? {
            return Ok(false);
        }
        let file = if down {
            m.down_file.clone().unwrap_or_else(|| m.file.clone())
        } else {
            m.file.clone()
        };
        cx.note(format!(
            "{}: {}: through psql ({why})",
            self.name,
            m.label()
        ));
        let url = self.url().map_err(|e| bad_psql(&file, e.to_string()))?;
        let parsed = PgUrl::parse(&url).map_err(|e| bad_psql(&file, e.to_string()))?;
        let psql = match &self.cfg.pg_bin {
            Some(dir) => dir.join("psql").display().to_string(),
            None => "psql".to_string(),
        };
        let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
        let command = format!(
            "{} -X -q -v ON_ERROR_STOP=1 -v registry=sqitch -f {} {}",
            quote(&psql),
            quote(&file.display().to_string()),
            quote(&format!("--dbname={}", parsed.as_str()))
        );
        let password = parsed.password().map(str::to_string);
        // Like rewind's own sessions, psql may write while the database is frozen read-only
        // (a rollback reverts through it).
        let mut env: Vec<(&str, &str)> = vec![
            ("PGAPPNAME", "rewind"),
            ("PGOPTIONS", "-c default_transaction_read_only=off"),
        ];
        if let Some(p) = &password {
            env.push(("PGPASSWORD", p));
        }
        // sqitch runs psql in the project's directory, whatever the change's name holds.
        let dir = m
            .sqitch
            .as_ref()
            .map(|s| s.project_dir.clone())
            .unwrap_or_else(|| PathBuf::from("."));
        let started = std::time::Instant::now();
        let out = proc::run_shell(
            &self.name,
            &command,
            Some(&dir),
            &env,
            self.cfg.command_timeout,
            &cx.redactor,
        )
        .await
        .map_err(|e| bad_psql(&file, e.to_string()))?;
        if !out.success() {
            return Err(bad_psql(
                &file,
                format!(
                    "psql exited with {}: {}",
                    out.status.map_or("a signal".into(), |c| c.to_string()),
                    self.scrub(out.output.trim())
                ),
            ));
        }
        // `[deploy] verify = true`: the verify script through psql too; when it fails, the
        // revert script takes the change back, as sqitch does.
        let verify = m
            .sqitch
            .as_ref()
            .filter(|s| s.verify_on_deploy && s.verify.is_some());
        if !down && let Some(verify_file) = verify.and_then(|s| s.verify_file.clone()) {
            let run = |f: &Path| {
                format!(
                    "{} -X -q -v ON_ERROR_STOP=1 -v registry=sqitch -f {} {}",
                    quote(&psql),
                    quote(&f.display().to_string()),
                    quote(&format!("--dbname={}", parsed.as_str()))
                )
            };
            let checked = proc::run_shell(
                &self.name,
                &run(&verify_file),
                Some(&dir),
                &env,
                self.cfg.command_timeout,
                &cx.redactor,
            )
            .await
            .map_err(|e| bad_psql(&verify_file, e.to_string()))?;
            if !checked.success() {
                if let Some(revert) = &m.down_file {
                    let _ = proc::run_shell(
                        &self.name,
                        &run(revert),
                        Some(&dir),
                        &env,
                        self.cfg.command_timeout,
                        &cx.redactor,
                    )
                    .await;
                }
                return Err(bad_psql(
                    &verify_file,
                    format!(
                        "sqitch's verify of {} failed: {}; the change was taken back with its revert script, as sqitch does",
                        m.label(),
                        self.scrub(checked.output.trim())
                    ),
                ));
            }
        }
        rewind_db::runner::record_only(pool, format, migs, m.key(), down, started.elapsed())
            .await?;
        Ok(true)
    }

    /// A restore point: the level, and a full backup when `backup` gives a reason.
    pub async fn restore_point_with(&self, cx: &Ctx, backup: Option<&str>) -> Result<Snapshot> {
        let release = cx.current_release.clone().unwrap_or_default();
        let level = match self.read_migrations(&release) {
            Ok((format, migs)) => Some(self.level(format, &migs).await?),
            Err(_) => None,
        };
        let meta = match backup {
            Some(reason) if self.exists() => Some(
                self.backup(reason, level.as_deref().unwrap_or(NO_LEVEL))
                    .await?,
            ),
            _ => None,
        };
        // The catalog's lines stay in the sidecar; the ledger keeps their fingerprint.
        let meta = meta.map(|mut m| {
            if let Some(c) = &mut m.catalog {
                c.lines.clear();
                c.roles.clear();
            }
            m
        });
        Ok(Snapshot {
            version: level.clone(),
            data: json!({
                "level": level,
                "location": self.location(),
                "backup": meta,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(up: &str, dialect: Dialect) -> MigrationFacts {
        let m = Migration {
            version: "3".into(),
            name: "x".into(),
            up: up.into(),
            down: Some("-- nothing to undo\n".into()),
            file: "3_x.up.sql".into(),
            down_file: Some("3_x.down.sql".into()),
            sqitch: None,
            ..Migration::default()
        };
        classify(&m, dialect)
    }

    #[test]
    fn migrations_are_described_by_effect() {
        let f = facts("CREATE TABLE t (a int);", Dialect::Postgres);
        assert!(f.destructive.is_empty() && !f.loses_data);
        assert_eq!(f.down, DownScript::Empty);

        // A long lock is said, but loses nothing.
        let f = facts("CREATE INDEX ON orders (user_id);", Dialect::Postgres);
        assert_eq!(f.destructive.len(), 1);
        assert!(
            f.destructive[0]
                .starts_with("line 1: CREATE INDEX ON orders (user_id) takes a long lock")
        );
        assert!(!f.loses_data);
        // SQLite holds no such lock.
        assert!(
            facts("CREATE INDEX ON orders (user_id);", Dialect::Sqlite)
                .destructive
                .is_empty()
        );

        // Overwritten values count as lost: a down script cannot bring them back.
        let f = facts(
            "CREATE TABLE a (id int);\nUPDATE users SET plan = 'free' WHERE plan IS NULL;",
            Dialect::Sqlite,
        );
        assert_eq!(f.destructive.len(), 1, "{:?}", f.destructive);
        assert!(f.destructive[0].contains("line 2: UPDATE users"));
        assert!(f.loses_data && f.revert_loses_data());
    }

    /// A sidecar written before catalogs were recorded still loads, with none.
    #[test]
    fn old_sidecars_load_without_a_catalog() {
        let old = r#"{"id": "20261121T140312.000Z-3fa9c1", "component": "db",
            "kind": "pg-dump-custom", "file": "/var/backups/x.dump", "bytes": 10,
            "checksum": "ab", "created_at": "2026-11-21T14:03:12Z", "level": "3",
            "reason": "by hand", "row_counts": {"public.users": 2}}"#;
        let meta: BackupMeta = serde_json::from_str(old).unwrap();
        assert!(meta.catalog.is_none());
        assert!(meta.facts().catalog.is_empty());
        let mut out = CheckReport::default();
        compare_catalog(&mut out, &[], &Catalog::default());
        assert!(out.failures.is_empty());
        assert!(out.lines[0].contains("recorded none"), "{:?}", out.lines);
    }

    #[test]
    fn catalog_differences_fail_the_checks_naming_the_lines() {
        let recorded = Catalog::new(
            vec![
                "schema public: ACL {=U/pg_database_owner,pg_database_owner=UC/pg_database_owner}"
                    .into(),
                "table public.items: owner postgres".into(),
            ],
            vec![],
        );
        let mut out = CheckReport::default();
        compare_catalog(&mut out, &recorded.lines, &recorded);
        assert!(out.failures.is_empty());
        assert!(
            out.lines[0].starts_with("catalog: matches the backup's (2 lines, fingerprint "),
            "{:?}",
            out.lines
        );

        let now = Catalog::new(
            vec![
                "schema public: ACL {pg_database_owner=UC/pg_database_owner}".into(),
                "table public.audit: owner postgres".into(),
                "table public.items: owner postgres".into(),
            ],
            vec![],
        );
        let mut out = CheckReport::default();
        compare_catalog(&mut out, &recorded.lines, &now);
        assert_eq!(
            out.failures,
            [
                "catalog: schema public: ACL {pg_database_owner=UC/pg_database_owner} differs \
                 from the backup's {=U/pg_database_owner,pg_database_owner=UC/pg_database_owner}",
                "catalog: table public.audit: owner postgres (not in the backup)",
            ]
        );

        let many = Catalog::new(
            (0..15)
                .map(|i| format!("table public.t{i:02}: owner postgres"))
                .collect(),
            vec![],
        );
        let mut out = CheckReport::default();
        compare_catalog(&mut out, &recorded.lines, &many);
        assert_eq!(out.failures.len(), CATALOG_DIFFS_SHOWN + 1);
        assert!(
            out.failures[CATALOG_DIFFS_SHOWN].contains("… and 7 more differences"),
            "{:?}",
            out.failures
        );
    }
}
