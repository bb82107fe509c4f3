//! Component kinds, one module each, behind one trait. A component knows what it runs now,
//! how to take a restore point, and how to carry out the actions the planner gives it; every
//! action checks its postcondition first, so carrying it out again after a crash is safe.

use async_trait::async_trait;
use rewind_core::Action;
use rewind_core::config::ComponentConfig;
use rewind_core::redact::Redactor;

pub mod backup_dir;
pub mod command;
pub mod crash;
pub mod database;
pub mod host;
pub mod proc;
pub mod ready;
pub mod release_dir;

/// What went wrong in a component. Every variant names the component.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error("{component}: {message}")]
    Failed { component: String, message: String },
    #[error("{component}: {action} is not something a {kind} component can do")]
    Unsupported {
        component: String,
        kind: &'static str,
        action: String,
    },
    #[error("{component}: {context}: {source}")]
    Io {
        component: String,
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl ComponentError {
    pub fn failed(component: &str, message: impl Into<String>) -> Self {
        ComponentError::Failed {
            component: component.to_string(),
            message: message.into(),
        }
    }
    pub fn io(component: &str, context: impl Into<String>, source: std::io::Error) -> Self {
        ComponentError::Io {
            component: component.to_string(),
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = ComponentError> = std::result::Result<T, E>;

/// How an action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It acted; the text is its (redacted) output or a summary.
    Done(String),
    /// Its postcondition already held; the text says which.
    Skipped(String),
}

/// What a restore point records.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The version running now, if the component can tell.
    pub version: Option<String>,
    pub data: serde_json::Value,
}

/// What every action needs besides the action itself.
#[derive(Clone, Debug, Default)]
pub struct Ctx {
    pub environment: String,
    pub redactor: Redactor,
    /// The release the environment runs (before the run changes it), when known: a database
    /// whose migrations directory holds `{release}` reads its level with that release's files.
    pub current_release: Option<String>,
    /// Progress lines for the run's journal (and the person watching).
    pub notes: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// For a data check against this run's restore point: the row counts it recorded.
    pub baseline_counts: Option<std::collections::BTreeMap<String, i64>>,
}

impl Ctx {
    pub fn new(environment: &str, redactor: Redactor) -> Ctx {
        Ctx {
            environment: environment.to_string(),
            redactor,
            ..Ctx::default()
        }
    }

    /// Sends a progress line, if anyone listens.
    pub fn note(&self, line: impl Into<String>) {
        if let Some(n) = &self.notes {
            let _ = n.send(line.into());
        }
    }
}

/// One component kind.
#[async_trait]
pub trait Component: Send + Sync {
    fn name(&self) -> &str;
    fn kind(&self) -> &'static str;
    /// The version running now, read live (not from the ledger). `None` when the
    /// component cannot tell (a command component without `current`).
    async fn current(&self, cx: &Ctx) -> Result<Option<String>>;
    /// What is needed to put the component back: taken before any change. `backup` (a
    /// reason) asks a database for a full backup in it; other kinds ignore it.
    async fn restore_point(&self, cx: &Ctx, backup: Option<&str>) -> Result<Snapshot>;
    /// Checks that an action could be carried out now (the release directory of a rollback
    /// target is still on disk, an artifact exists …) without changing anything.
    async fn precheck(&self, cx: &Ctx, action: &Action) -> Result<()>;
    /// Carries out one action. Idempotent: checks the postcondition first.
    async fn apply(&self, cx: &Ctx, action: &Action) -> Result<Outcome>;
}

/// Builds the component `name` from its configuration. Nothing is touched until an
/// action runs.
pub fn build(name: &str, config: &ComponentConfig) -> Box<dyn Component> {
    match config {
        ComponentConfig::ReleaseDir(c) => Box::new(release_dir::ReleaseDir::new(name, c.clone())),
        ComponentConfig::Command(c) => Box::new(command::CommandComponent::new(name, c.clone())),
        ComponentConfig::Sqlite(c) => Box::new(database::Database::new(name, false, c.clone())),
        ComponentConfig::Postgres(c) => Box::new(database::Database::new(name, true, c.clone())),
    }
}

/// An HTTP client builder for `url`. For plain `http://` URLs no TLS roots are loaded (they
/// would be read from the system's certificate store on every start, for nothing).
pub fn http_client_builder(url: &str) -> reqwest::ClientBuilder {
    let b = reqwest::Client::builder().no_proxy();
    if url.starts_with("http://") {
        b.tls_certs_only(Vec::new())
    } else {
        b
    }
}
