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
}

impl std::fmt::Debug for EnvironmentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvironmentConfig")
            .field("name", &self.name)
            .field("state", &self.state)
            .field("lock_stale_after", &self.lock_stale_after)
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
}

impl ComponentConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            ComponentConfig::ReleaseDir(_) => "release-dir",
            ComponentConfig::Command(_) => "command",
        }
    }
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
