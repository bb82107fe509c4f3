//! The binary's error: an `anyhow` error with a class that decides the exit code, and `hint:`
//! lines that say what to do next.

use std::fmt;

/// Exit codes of the CLI contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Class {
    /// The operation failed (a step failed, verification failed).
    Failed = 1,
    /// Bad usage or invalid config; nothing was changed.
    Usage = 2,
    /// Blocked: another run holds the lock, or an unfinished run must be finished first.
    Blocked = 3,
}

pub struct CliError {
    pub class: Class,
    pub error: anyhow::Error,
    pub hints: Vec<String>,
    /// Extra machine-readable detail for `--json` (e.g. the run's step reports).
    pub detail: Option<serde_json::Value>,
}

impl CliError {
    pub fn new(class: Class, error: impl Into<anyhow::Error>) -> Self {
        CliError {
            class,
            error: error.into(),
            hints: Vec::new(),
            detail: None,
        }
    }
    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hints.push(hint.into());
        self
    }
}

impl fmt::Debug for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {:#}", self.class, self.error)
    }
}

/// Errors that reach `?` without a class are operational failures.
impl<E: Into<anyhow::Error>> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError::new(Class::Failed, e)
    }
}

pub type CliResult<T> = Result<T, CliError>;

pub fn usage(msg: impl fmt::Display) -> CliError {
    CliError::new(Class::Usage, anyhow::anyhow!("{msg}"))
}

pub fn failed(msg: impl fmt::Display) -> CliError {
    CliError::new(Class::Failed, anyhow::anyhow!("{msg}"))
}

pub fn blocked(msg: impl fmt::Display) -> CliError {
    CliError::new(Class::Blocked, anyhow::anyhow!("{msg}"))
}
