//! Errors, and keeping passwords out of them.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong. No variant ever holds a password: database URLs appear only
/// with their password removed, and the text of tool and driver errors is redacted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A database error; `message` is its text (see [`db_text`]), redacted.
    #[error("{context}: {message}")]
    Db { context: String, message: String },
    #[error(
        "{tool} not found in PATH nor in /usr/lib/postgresql/*/bin: install postgresql-client \
         (e.g. apt-get install postgresql-client)"
    )]
    ToolMissing { tool: String },
    /// An external tool failed; `stderr` is its error output, redacted.
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: String,
        status: String,
        stderr: String,
    },
    /// No pg_dump/pg_restore of the server's major version or newer.
    #[error(
        "PostgreSQL server {server} needs pg_dump and pg_restore {major} or newer; found: {}\n\
         hint: {}",
        if found.is_empty() { "none".to_string() } else { found.join(", ") },
        match pg_bin {
            Some(d) => format!(
                "pg-bin = {:?} must hold pg_dump and pg_restore {major} or newer: point it at \
                 another directory, or remove it to let rewind look in PATH, \
                 /usr/lib/postgresql/<N>/bin, /usr/pgsql-<N>/bin and /opt/rewind-pg/<N>/bin",
                d.display().to_string()
            ),
            None => format!(
                "install the PostgreSQL {major} client tools (Debian: postgresql-client-{major}), \
                 or set pg-bin = \"/path/to/bin\" on the component to a directory holding them"
            ),
        }
    )]
    PgTools {
        server: String,
        major: u32,
        found: Vec<String>,
        pg_bin: Option<PathBuf>,
    },
    /// A backup names roles the server does not have; nothing was changed.
    #[error(
        "the backup needs role{} that do{} not exist on this server: {}; nothing was changed\n\
         hint: create {} (CREATE ROLE name NOLOGIN, or as the application needs) and run the \
         restore again: owners and privileges are restored as they were",
        if roles.len() == 1 { "" } else { "s" },
        if roles.len() == 1 { "es" } else { "" },
        roles.join(", "),
        if roles.len() == 1 { "it" } else { "them" }
    )]
    MissingRoles { roles: Vec<String> },
    #[error("{program} not found: {hint}")]
    ProgramMissing { program: String, hint: String },
    #[error(
        "invalid target time {input:?}: {reason}\nhint: write the time with its zone or UTC \
         offset, e.g. {examples}",
        examples = crate::pitr::TIME_EXAMPLES
    )]
    TargetTime { input: String, reason: String },
    /// A point-in-time target outside the recoverable window; times are shown in UTC.
    #[error(
        "target time {target} is outside the recoverable window, from {earliest} to before \
         {latest} (UTC); nothing was changed\nhint: pick a time inside the window; a time \
         before it needs an older backup, a time after it has not happened or not been archived"
    )]
    OutsideWindow {
        target: jiff::Timestamp,
        earliest: jiff::Timestamp,
        latest: jiff::Timestamp,
    },
    /// A step of a point-in-time recovery failed after the server was stopped; `state` says
    /// what is left of it.
    #[error("while {step}: {source}\nstate: {state}")]
    PitrStep {
        step: crate::pitr::PitrPhase,
        state: String,
        #[source]
        source: Box<Error>,
    },
    #[error("invalid PostgreSQL URL: {0}")]
    Url(String),
    #[error("backup {path} does not match its checksum (expected {expected}, found {found})")]
    Checksum {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("{path} is not a SQLite database")]
    NotSqlite { path: PathBuf },
    #[error("integrity check failed: {0}")]
    Integrity(String),
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Maps a driver error to [`Error::Db`], with URL passwords and `secret` masked.
pub(crate) fn db(
    context: impl Into<String>,
    secret: Option<&str>,
) -> impl FnOnce(sqlx::Error) -> Error {
    let context = context.into();
    let secret = secret.map(str::to_string);
    move |e| Error::Db {
        context,
        message: db_text(&e, secret.as_deref()),
    }
}

/// A driver error as people read it, redacted: a server's error is its message, detail, hint
/// and SQLSTATE. Not sqlx's `Display`, which appends the line of PostgreSQL's C source that
/// raised it ("… at line 835"), a number that means nothing to the reader and changes from
/// one server version to the next.
pub(crate) fn db_text(e: &sqlx::Error, secret: Option<&str>) -> String {
    redact(&rewind_db::runner::db_error_text(e), secret)
}

pub use rewind_core::redact::MASK;
use rewind_core::redact::redact_url_passwords;

/// Masks `secret` (as written and percent-encoded) and the password of every
/// `scheme://user:password@host` in `text`.
pub fn redact(text: &str, secret: Option<&str>) -> String {
    let mut out = redact_url_passwords(text);
    if let Some(s) = secret.filter(|s| !s.is_empty()) {
        out = out.replace(s, MASK);
        let encoded: String =
            url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        if encoded != s {
            out = out.replace(&encoded, MASK);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_url_passwords_and_secrets() {
        assert_eq!(
            redact(
                "could not connect to postgres://app:hunter2@db:5432/x",
                None
            ),
            "could not connect to postgres://app:***@db:5432/x"
        );
        assert_eq!(
            redact("password hunter2 and p%40ss", Some("hunter2")),
            "password *** and p%40ss"
        );
        assert_eq!(redact("p%40ss", Some("p@ss")), "***");
        assert_eq!(redact("postgres://app@db/x", None), "postgres://app@db/x");
    }
}
