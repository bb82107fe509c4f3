//! The configuration model: one `rewind.toml` per environment. Parsing and validation
//! (`parse`) are pure: they read the text they are given and nothing else, and report every
//! problem at once with file, line and column.

mod parse;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use parse::{ConfigError, ConfigErrors, EXAMPLE, parse};

/// Default `ready-timeout` of a release-dir component.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default number of release directories kept (the seeds: keep 5 releases).
pub const DEFAULT_KEEP: u32 = 5;
/// Default time limit of one user command (deploy, rollback, restart, current).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(600);
/// A lock whose heartbeat is older than this is taken over, whatever host holds it.
pub const DEFAULT_LOCK_STALE_AFTER: Duration = Duration::from_secs(30);

/// A whole, validated configuration file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    pub environment: EnvironmentConfig,
    /// Components in the order the file lists them (deploys apply them in this order,
    /// rollbacks in reverse).
    pub components: Vec<(String, ComponentConfig)>,
    /// `[watch]`: the monitoring window after a deploy. Defaults apply when absent.
    pub watch: WatchConfig,
    /// `[secrets]`: where each secret named by `{secret:NAME}` comes from.
    #[serde(default)]
    pub secrets: crate::secret::Secrets,
}

impl Config {
    /// The directory holding the config file; relative paths in it resolve against it.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    pub fn component(&self, name: &str) -> Option<&ComponentConfig> {
        self.components
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
    }
}

/// `[environment]`.
#[derive(Clone, Serialize, Deserialize)]
pub struct EnvironmentConfig {
    pub name: String,
    /// Where the state lives: `None` means SQLite at `.rewind/state.db` beside the file.
    pub state: Option<StateLocation>,
    /// A lock whose heartbeat is older than this is taken over.
    #[serde(with = "crate::units::serde_duration")]
    pub lock_stale_after: Duration,
    /// How hard an SQLite state store pushes each commit to disk.
    pub state_sync: StateSync,
}

/// `state-sync`: SQLite's `synchronous` setting for the state store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StateSync {
    /// Every commit is on disk before rewind goes on (fsync per commit): nothing recorded is
    /// lost even when the machine loses power. The default.
    Full,
    /// Commits survive a killed process but the newest may be lost when the machine itself
    /// dies (fsync at checkpoints only). Resuming stays correct, because every step checks
    /// its postcondition; the newest journal and audit lines may be missing.
    Normal,
}

impl std::fmt::Debug for EnvironmentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvironmentConfig")
            .field("name", &self.name)
            .field("state", &self.state)
            .field("lock_stale_after", &self.lock_stale_after)
            .field("state_sync", &self.state_sync)
            .finish()
    }
}

/// Where the state store lives. The URL may hold a password, so `Debug` and `Display` hide it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateLocation {
    /// An SQLite file (absolute, or resolved against the config file's directory).
    Sqlite(PathBuf),
    /// A `postgres://` or `postgresql://` URL.
    Postgres(String),
}

impl StateLocation {
    /// A printable form with any password masked.
    pub fn display_safe(&self) -> String {
        match self {
            StateLocation::Sqlite(p) => format!("sqlite:{}", p.display()),
            StateLocation::Postgres(url) => crate::redact::redact_url_passwords(url),
        }
    }
}

impl std::fmt::Debug for StateLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display_safe())
    }
}

impl std::fmt::Display for StateLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display_safe())
    }
}

/// One `[components.NAME]` table, chosen by `kind`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ComponentConfig {
    ReleaseDir(ReleaseDirConfig),
    Command(CommandConfig),
    Sqlite(DatabaseConfig),
    Postgres(DatabaseConfig),
}

impl ComponentConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            ComponentConfig::ReleaseDir(_) => "release-dir",
            ComponentConfig::Command(_) => "command",
            ComponentConfig::Sqlite(_) => "sqlite",
            ComponentConfig::Postgres(_) => "postgres",
        }
    }

    /// The database settings of a `sqlite` or `postgres` component.
    pub fn database(&self) -> Option<&DatabaseConfig> {
        match self {
            ComponentConfig::Sqlite(d) | ComponentConfig::Postgres(d) => Some(d),
            _ => None,
        }
    }
}

/// Default number of database backups kept per component.
pub const DEFAULT_KEEP_BACKUPS: u32 = 5;

/// `kind = "sqlite"` or `kind = "postgres"`: a database whose version is its migration level
/// (the newest applied migration, read from the migration tool's own history table).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseConfig {
    pub connection: DbConnection,
    /// The migrations directory, absolute; `{release}` in it is replaced by the release name
    /// (e.g. `/srv/app/releases/{release}/migrations`).
    pub migrations: String,
    /// The migration tool's format (`sqlx`, `diesel`, `golang-migrate`, `flyway`,
    /// `refinery`, `sqitch`); `None`: detected from the directory.
    pub format: Option<String>,
    pub policy: DbPolicy,
    pub backup: BackupPolicy,
    /// Where backups are written (absolute).
    pub backup_dir: PathBuf,
    pub keep_backups: u32,
    pub freeze: Freeze,
    /// How far a table's row count may fall below the restore point's count after a
    /// rollback, as a fraction (0 = not at all).
    pub row_count_tolerance: Fraction,
    /// Custom SQL assertions run after every database rollback and restore.
    pub checks: Vec<SqlCheck>,
    /// Point-in-time recovery through pgBackRest (PostgreSQL only).
    pub pitr: Option<PitrConfig>,
    #[serde(with = "crate::units::serde_duration")]
    pub command_timeout: Duration,
    /// `pg-bin` (PostgreSQL only): the directory of the `pg_dump` and `pg_restore` to run;
    /// `None`: the closest fit to the server's version among those installed.
    #[serde(default)]
    pub pg_bin: Option<PathBuf>,
}

/// A fraction (0.05 = 5 %), compared by value so configs stay `Eq`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fraction(pub f64);

impl Eq for Fraction {}

/// How rewind reaches a database. URLs may hold a password: `Debug` hides it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DbConnection {
    /// A SQLite file (absolute).
    Path(PathBuf),
    /// A `postgres://` URL written in the config.
    Url(String),
    /// The name of an environment variable holding the URL (read when the component acts).
    UrlEnv(String),
}

impl std::fmt::Debug for DbConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbConnection::Path(p) => write!(f, "Path({})", p.display()),
            DbConnection::Url(u) => write!(f, "Url({})", crate::redact::redact_url_passwords(u)),
            DbConnection::UrlEnv(e) => write!(f, "UrlEnv({e})"),
        }
    }
}

/// `policy`: what a rollback may do to the schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DbPolicy {
    /// Revert migrations with their down scripts when the data allows it.
    Revert,
    /// Never run down scripts (seed 001): a bad migration is fixed by a new one; only a
    /// restore (backup or point in time) goes back.
    ForwardOnly,
}

/// `backup`: when a deploy's restore point includes a full backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupPolicy {
    /// Before every deploy and every rollback (the seeds' default).
    Always,
    /// Only when a pending migration is destructive or cannot be reverted (a rollback's
    /// restore point always has one).
    Destructive,
}

/// `freeze`: how writes are stopped during a database rollback or restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "how")]
pub enum Freeze {
    /// Writes are not stopped.
    None,
    /// PostgreSQL: `ALTER DATABASE … SET default_transaction_read_only = on`, and the
    /// database's other sessions are ended so they reconnect read-only.
    ReadOnly,
    /// User commands (stop the writers, start them again).
    Command { freeze: String, unfreeze: String },
}

/// `[[components.NAME.check]]`: a SQL assertion, a query returning one value that is true
/// (or 1) when the data is sound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqlCheck {
    pub name: String,
    pub sql: String,
}

/// `[components.NAME.pitr]`: point-in-time recovery through pgBackRest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitrConfig {
    pub stanza: String,
    /// pgBackRest's config file (`--config`); `None`: its default.
    pub config: Option<PathBuf>,
    /// The OS user that runs pgbackrest and the stop/start commands (e.g. `postgres`).
    pub run_as: Option<String>,
    /// The server's data directory.
    pub data_dir: PathBuf,
    /// Stops the PostgreSQL server.
    pub stop: String,
    /// Starts it (and returns once it accepts connections).
    pub start: String,
}

/// `kind = "release-dir"`: the Capistrano layout, `<root>/releases/<release>/` and a
/// `<root>/current` symlink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseDirConfig {
    /// Absolute, or resolved against the config file's directory at parse time.
    pub root: PathBuf,
    /// Shell command run after `current` moves.
    pub restart: Option<String>,
    pub ready: Option<Readiness>,
    #[serde(with = "crate::units::serde_duration")]
    pub ready_timeout: Duration,
    pub keep: u32,
    /// Environment variables whose values are secret (masked in output), besides the
    /// names that say so themselves.
    pub secret_env: Vec<String>,
    #[serde(with = "crate::units::serde_duration")]
    pub command_timeout: Duration,
}

/// How to tell that a restarted component is ready.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Readiness {
    /// An HTTP GET that answers 2xx.
    Url(String),
    /// A shell command that exits 0.
    Command(String),
}

/// `kind = "command"`: any CLI (vercel, railway, heroku, docker compose …). `{release}` in
/// the commands is replaced by the release name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandConfig {
    /// Prints the version running now (trimmed stdout); used as the postcondition of
    /// deploy and rollback, so a resumed run does not run them twice.
    pub current: Option<String>,
    pub deploy: String,
    pub rollback: String,
    pub ready: Option<Readiness>,
    #[serde(with = "crate::units::serde_duration")]
    pub ready_timeout: Duration,
    /// Working directory of the commands (default: the config file's directory),
    /// resolved to an absolute path at parse time.
    pub workdir: PathBuf,
    pub secret_env: Vec<String>,
    #[serde(with = "crate::units::serde_duration")]
    pub command_timeout: Duration,
}

/// Default monitoring window (seed 001: one hour after a deploy).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);
/// Default false-alarm rate of every statistical trigger.
pub const DEFAULT_ALPHA: f64 = 0.01;
/// Default availability objective (seed 001: roll back below 99.9 %).
pub const DEFAULT_AVAILABILITY: f64 = 0.999;
/// Default 5xx share that triggers (seed 001: above 1 % of traffic).
pub const DEFAULT_ERRORS_ABOVE: f64 = 0.01;
/// Default latency regression against the baseline (seed 004: 30 %; seed 002 says 50 %).
pub const DEFAULT_LATENCY_REGRESSION: f64 = 0.30;
/// Default length of the pre-deploy baseline sample.
pub const DEFAULT_BASELINE: Duration = Duration::from_secs(20);
/// Default number of failures in a row that fires a hard trigger.
pub const DEFAULT_CONSECUTIVE: u32 = 3;

/// Default request rate of a `[[watch.probe]]`, per second.
pub const DEFAULT_PROBE_RATE: f64 = 10.0;
/// Default time limit of one probe request.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default interval of a `[[watch.prometheus]]` query or a `[[watch.check]]` command.
pub const DEFAULT_SIGNAL_INTERVAL: Duration = Duration::from_secs(10);
/// Default time limit of one `[[watch.check]]` command.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// What to do when a trigger fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WatchPolicy {
    /// Open an incident and roll back (the default).
    Rollback,
    /// Open an incident and tell people; change nothing.
    AlertOnly,
}

/// Which latency quantile the latency trigger compares.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quantile(pub f64);

/// `[watch]`: the monitoring window, its signals and its triggers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WatchConfig {
    #[serde(with = "crate::units::serde_duration")]
    pub window: Duration,
    pub policy: WatchPolicy,
    /// False-alarm rate of each statistical trigger (fraction).
    pub alpha: f64,
    /// Pre-deploy sample of the same signals (zero: static objectives only).
    #[serde(with = "crate::units::serde_duration")]
    pub baseline: Duration,
    /// Fire when availability (share of probe requests that succeed) is below this.
    pub availability_below: f64,
    /// Fire when the share of 5xx answers is above this.
    pub errors_above: f64,
    /// Fire when the latency quantile is worse than the baseline's by more than this.
    pub latency_regression: f64,
    /// The quantile compared (0.95 for p95, 0.5 for p50).
    pub latency_quantile: Quantile,
    /// A static latency objective, used when there is no baseline sample.
    #[serde(default, with = "crate::units::serde_opt_duration")]
    pub latency_objective: Option<Duration>,
    /// Hard triggers (critical checks, database reachability) fire after this many
    /// failures in a row.
    pub consecutive_failures: u32,
    pub probes: Vec<ProbeConfig>,
    pub prometheus: Vec<PrometheusConfig>,
    pub checks: Vec<CheckConfig>,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            window: DEFAULT_WINDOW,
            policy: WatchPolicy::Rollback,
            alpha: DEFAULT_ALPHA,
            baseline: DEFAULT_BASELINE,
            availability_below: DEFAULT_AVAILABILITY,
            errors_above: DEFAULT_ERRORS_ABOVE,
            latency_regression: DEFAULT_LATENCY_REGRESSION,
            latency_quantile: Quantile(0.95),
            latency_objective: None,
            consecutive_failures: DEFAULT_CONSECUTIVE,
            probes: Vec::new(),
            prometheus: Vec::new(),
            checks: Vec::new(),
        }
    }
}

impl WatchConfig {
    /// Does the config say anything to watch?
    pub fn has_signals(&self) -> bool {
        !self.probes.is_empty() || !self.prometheus.is_empty() || !self.checks.is_empty()
    }
}

/// `[[watch.probe]]`: the built-in HTTP prober.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeConfig {
    pub name: String,
    pub url: String,
    /// HTTP method (default GET).
    pub method: String,
    /// Requests per second.
    pub rate: f64,
    #[serde(with = "crate::units::serde_duration")]
    pub timeout: Duration,
    /// The expected status; `None` accepts any 2xx or 3xx.
    pub expect_status: Option<u16>,
    /// A substring the body must contain.
    pub expect_body: Option<String>,
    /// A response header that names the release that answered (e.g. `x-release`).
    pub release_header: Option<String>,
    /// A critical functional check (seed 001: "users cannot complete checkout"): this many
    /// failures in a row fire at once, besides the statistical triggers.
    pub critical: bool,
}

/// `[[watch.prometheus]]`: PromQL instant queries through the HTTP API. `{release}` in a
/// query is replaced by the release name (use it in a label selector).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrometheusConfig {
    pub name: String,
    /// Base URL of the server, e.g. `http://127.0.0.1:9090`.
    pub url: String,
    /// A query giving the cumulative count of failed requests (e.g. 5xx).
    pub errors: String,
    /// A query giving the cumulative count of all requests.
    pub total: String,
    /// A query giving the current latency quantile, in seconds (optional).
    pub latency: Option<String>,
    #[serde(with = "crate::units::serde_duration")]
    pub interval: Duration,
}

/// What a command check stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    /// A named functional check (e.g. "checkout").
    Functional,
    /// "Database unreachable" (a `pg_isready` or a SQL query through a CLI).
    Database,
}

/// `[[watch.check]]`: a command run every interval; exit 0 passes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckConfig {
    pub name: String,
    pub command: String,
    pub kind: CheckKind,
    #[serde(with = "crate::units::serde_duration")]
    pub interval: Duration,
    #[serde(with = "crate::units::serde_duration")]
    pub timeout: Duration,
}
