//! Reading and validating `rewind.toml`: TOML text in, a [`Config`] or every problem with the
//! file out. Pure: it reads only the text it is given, so `rewind check` can run anywhere.
//!
//! The TOML is read into spanned tables (not deserialized with serde) so that every problem,
//! including a missing key, can be reported at a line and column, and so that all of them are
//! reported in one pass instead of stopping at the first.

use std::fmt;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{
    BackupPolicy, CheckConfig, CheckKind, CommandConfig, ComponentConfig, Config, DEFAULT_ALPHA,
    DEFAULT_AVAILABILITY, DEFAULT_BASELINE, DEFAULT_CHECK_TIMEOUT, DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_CONSECUTIVE, DEFAULT_ERRORS_ABOVE, DEFAULT_KEEP, DEFAULT_KEEP_BACKUPS,
    DEFAULT_LATENCY_REGRESSION, DEFAULT_LOCK_STALE_AFTER, DEFAULT_PROBE_RATE,
    DEFAULT_PROBE_TIMEOUT, DEFAULT_READY_TIMEOUT, DEFAULT_SIGNAL_INTERVAL, DEFAULT_WINDOW,
    DatabaseConfig, DbConnection, DbPolicy, EnvironmentConfig, Fraction, Freeze, PitrConfig,
    ProbeConfig, PrometheusConfig, Quantile, Readiness, ReleaseDirConfig, SqlCheck, StateLocation,
    WatchConfig, WatchPolicy,
};
use crate::redact::redact_url_passwords;
use crate::units::{Percent, format_duration, parse_duration, parse_percent_above_100};

/// The commented example configuration that `rewind init` writes.
pub const EXAMPLE: &str = r#"# rewind.toml: how to deploy and roll back one environment.
# `rewind check` reads this file and reports every problem without touching anything.
# Durations are written with a unit: "500ms", "30s", "5m", "1h30m".
# Relative paths are resolved against the directory that holds this file.

[environment]
# The environment this file describes (letters, digits, "-", "_" and ".").
name = "production"
# Where rewind keeps its journal, locks and audit trail. Default: SQLite at
# .rewind/state.db beside this file. Use PostgreSQL when rewind runs on several hosts
# for the same environment; "sqlite:PATH" or a path ending in .db picks another file.
# state = "postgres://rewind@db.internal/rewind"
# A lock whose holder has sent no heartbeat for this long is taken over (at least "5s").
# lock-stale-after = "30s"
# How hard the SQLite state store pushes each commit to disk: "full" (the default: nothing
# recorded is lost even on power loss) or "normal" (faster; the newest records may be lost
# when the machine itself dies, and resuming stays correct).
# state-sync = "full"

# Components are deployed in the order they are listed here and rolled back in reverse.
# The name after "components." is what --component NAME and --artifact NAME=PATH refer to.

# A database: its version is its migration level, read from your migration tool's own
# history table (sqlx, diesel, golang-migrate, flyway, refinery, sqitch). Deploys apply
# pending migrations in one transaction after a full backup; rollbacks revert them, or
# restore the backup when reverting would lose data. `rewind plan --deploy RELEASE` shows
# each pending migration classified. Listed first: migrated before the code that needs it.
# [components.db]
#   kind = "postgres"                  # or "sqlite", with path = "data/app.db"
#   url-env = "DATABASE_URL"           # the URL stays out of this file
#   migrations = "/srv/shop/releases/{release}/migrations"
#   format = "sqlx"                    # detected when absent
#   policy = "revert"                  # "forward-only": never run down scripts
#   freeze = "read-only"               # stop writes during a database rollback
#   pg-bin = "/usr/lib/postgresql/18/bin"  # pg_dump/pg_restore; default: found by server version
# [[components.db.check]]              # run after every database rollback and restore
#   name = "no negative balances"
#   sql = "SELECT count(*) = 0 FROM accounts WHERE balance < 0"

[components.web]
# Capistrano layout: every release in <root>/releases/<release>/, and the symlink
# <root>/current points at the live one.
kind = "release-dir"
root = "/srv/shop"
# Runs after <root>/current has moved (optional).
restart = "systemctl restart shop"
# Ready when this URL answers 2xx. Or ready-command = "…", ready when it exits 0.
# Set at most one of the two; with neither, a successful restart counts as ready.
ready-url = "http://127.0.0.1:8080/health"
# How long to wait for ready before the step fails (default "30s").
ready-timeout = "30s"
# Release directories kept on disk (default 5, at least 2: the live release and the
# last known-good one).
keep = 5
# Environment variables whose values are masked in every output, besides those whose
# names say so already (…_TOKEN, …_SECRET, …_PASSWORD).
# secret-env = ["SHOP_TOKEN"]
# Time limit of each command run for this component (default "10m").
# command-timeout = "10m"

[components.frontend]
# Any CLI that deploys and rolls back: vercel, railway, heroku, docker compose …
# {release} is replaced by the release name.
kind = "command"
# Prints the release running now (optional). rewind uses it to check whether a deploy
# or rollback already happened, so a resumed run never does it twice.
current = "cat /srv/frontend/VERSION"
deploy = "vercel deploy --prod --meta release={release}"
# Must say which release to go back to: write {release} where the CLI takes it.
rollback = "vercel rollback {release}"
# ready-url = "https://shop.example.com/"
# ready-command = "curl -fsS https://shop.example.com/"
# ready-timeout = "30s"
# Directory the commands run in (default: the directory holding this file).
# workdir = "frontend"
# secret-env = ["VERCEL_TOKEN"]
# command-timeout = "10m"

# After a deploy rewind watches the new release for a while and, when a trigger fires,
# rolls back by itself. It watches the signals listed below: HTTP probes it sends itself,
# Prometheus queries and check commands. The settings shown are the defaults.
[watch]
# How long to watch after a deploy (at least "1s").
# window = "1h"
# What a trigger does: "rollback", or "alert-only" to open an incident and change nothing.
# policy = "rollback"
# How often each statistical trigger may fire on a healthy release (above 0%, at most 50%).
# alpha = "1%"
# How long to sample the same signals before the deploy, as the baseline to compare
# against; "0s" takes no sample and uses only the fixed objectives.
# baseline = "20s"
# Fire when the share of probe requests that succeed falls below this.
# availability-below = "99.9%"
# Fire when the share of 5xx answers rises above this.
# errors-above = "1%"
# Fire when the latency quantile is this much worse than the baseline's ("p50", "p90",
# "p95" or "p99").
# latency-regression = "30%"
# latency-quantile = "p95"
# A fixed latency objective, used when there is no baseline (optional; none by default).
# latency-objective = "300ms"
# Critical probes and database checks fire after this many failures in a row.
# consecutive-failures = 3

# Signals: each kind of table may be repeated, and every name must be unique.
# An HTTP probe that rewind sends itself, rate times a second:
# [[watch.probe]]
#   name = "checkout"
#   url = "http://127.0.0.1:8080/checkout"
#   method = "GET"                  # GET, HEAD, POST, PUT, DELETE, PATCH or OPTIONS
#   rate = 10                       # requests per second, at most 1000
#   timeout = "2s"
#   expect-status = 200             # without it, any 2xx or 3xx answer passes
#   expect-body = "order placed"    # text the answer must contain
#   release-header = "x-release"    # the header that names the release that answered
#   critical = true                 # fire after consecutive-failures failures in a row
#
# Prometheus queries through its HTTP API; {release} is replaced by the release name:
# [[watch.prometheus]]
#   name = "shop"
#   url = "http://127.0.0.1:9090"
#   errors = 'sum(http_requests_total{code=~"5..",release="{release}"})'
#   total = 'sum(http_requests_total{release="{release}"})'
#   interval = "10s"
#
# A command run every interval that passes when it exits 0 (kind "functional", the
# default, or "database" for "the database is unreachable"):
# [[watch.check]]
#   name = "database"
#   command = "pg_isready -h db.internal"
#   kind = "database"
#   interval = "10s"
#   timeout = "10s"
"#;

/// One problem with a configuration file, at a 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// What to write instead, when there is something useful to say.
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one configuration file, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

const TOP_KEYS: &[&str] = &["environment", "components", "watch", "secrets"];
const SECRET_KEYS: &[&str] = &["env", "file", "value"];
const ENV_KEYS: &[&str] = &["name", "state", "lock-stale-after", "state-sync"];
const RELEASE_DIR_KEYS: &[&str] = &[
    "kind",
    "root",
    "restart",
    "ready-url",
    "ready-command",
    "ready-timeout",
    "keep",
    "secret-env",
    "command-timeout",
];
const COMMAND_KEYS: &[&str] = &[
    "kind",
    "current",
    "deploy",
    "rollback",
    "ready-url",
    "ready-command",
    "ready-timeout",
    "workdir",
    "secret-env",
    "command-timeout",
];
const DATABASE_KEYS: &[&str] = &[
    "kind",
    "path",
    "url",
    "url-env",
    "migrations",
    "format",
    "policy",
    "backup",
    "backup-dir",
    "keep-backups",
    "freeze",
    "freeze-command",
    "unfreeze-command",
    "row-count-tolerance",
    "check",
    "pitr",
    "command-timeout",
    "pg-bin",
];
const DB_CHECK_KEYS: &[&str] = &["name", "sql"];
const PITR_KEYS: &[&str] = &["stanza", "config", "run-as", "data-dir", "stop", "start"];
const MIGRATION_FORMATS: &[&str] = &[
    "sqlx",
    "diesel",
    "golang-migrate",
    "flyway",
    "refinery",
    "sqitch",
];
const WATCH_KEYS: &[&str] = &[
    "window",
    "policy",
    "alpha",
    "baseline",
    "availability-below",
    "errors-above",
    "latency-regression",
    "latency-quantile",
    "latency-objective",
    "consecutive-failures",
    "probe",
    "prometheus",
    "check",
];
const PROBE_KEYS: &[&str] = &[
    "name",
    "url",
    "method",
    "rate",
    "timeout",
    "expect-status",
    "expect-body",
    "release-header",
    "critical",
];
const PROMETHEUS_KEYS: &[&str] = &["name", "url", "errors", "total", "latency", "interval"];
const CHECK_KEYS: &[&str] = &["name", "command", "kind", "interval", "timeout"];
/// The tables of signals under `[watch]`, with their keys.
const SIGNAL_TABLES: &[(&str, &[&str])] = &[
    ("probe", PROBE_KEYS),
    ("prometheus", PROMETHEUS_KEYS),
    ("check", CHECK_KEYS),
];
const POLICIES: &[&str] = &["rollback", "alert-only"];
const QUANTILES: &[&str] = &["p50", "p90", "p95", "p99"];
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
const CHECK_KINDS: &[&str] = &["functional", "database"];
const MIN_WINDOW: Duration = Duration::from_secs(1);
const MIN_SIGNAL_INTERVAL: Duration = Duration::from_secs(1);
const MAX_PROBE_RATE: f64 = 1000.0;
const KINDS: &[&str] = &["release-dir", "command", "sqlite", "postgres"];
/// Kinds that are planned but not built yet: named so that the error can say so.
const FUTURE_KINDS: &[&str] = &["files", "git", "kubernetes"];
const MIN_LOCK_STALE_AFTER: Duration = Duration::from_secs(5);
const MIN_KEEP: i64 = 2;
const MINIMAL_COMPONENT: &str =
    "add a component, e.g. [components.web] with kind = \"release-dir\" and root = \"/srv/app\"";

/// Reads and validates a configuration file's text. `path` names the file in messages, and
/// relative paths in the file are resolved against its directory.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let mut cx = Cx::new(text, path);
    let (root, syntax) = DeTable::parse_recoverable(text);
    for e in &syntax {
        cx.syntax_error(e);
    }
    let config = read_config(&mut cx, &root);
    match (cx.finish(), config) {
        (None, Some(config)) => Ok(config),
        (Some(errors), _) => Err(errors),
        // Unreachable in practice: every path that returns no config records why, and only
        // a syntax error (always reported) can hide other errors. Still, never return Ok.
        (None, None) => Err(ConfigErrors(vec![ConfigError {
            path: path.to_path_buf(),
            line: 1,
            column: 1,
            message: "the configuration is incomplete".into(),
            hint: None,
        }])),
    }
}

type Span = Range<usize>;
type Value<'i> = Spanned<DeValue<'i>>;

/// A problem before it is placed at a line and column.
struct Pending {
    span: Span,
    message: String,
    hint: Option<String>,
    /// A required key or table that is absent: `Some(true)` for the file as a whole. After a
    /// syntax error the parser's recovery may have dropped it, so such problems are only
    /// reported for tables (or files) without syntax errors.
    missing: Option<bool>,
    /// A TOML syntax error; `Some(true)` for a duplicate key.
    syntax: Option<bool>,
}

/// What a parse collects: the file and every problem found so far.
struct Cx<'a> {
    text: &'a str,
    path: &'a Path,
    dir: PathBuf,
    syntax_lines: Vec<usize>,
    pending: Vec<Pending>,
    /// Values written in `[secrets]`: never echoed in a message.
    literal_secrets: Vec<String>,
}

impl<'a> Cx<'a> {
    fn new(text: &'a str, path: &'a Path) -> Self {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Cx {
            text,
            path,
            dir,
            syntax_lines: Vec::new(),
            pending: Vec::new(),
            literal_secrets: Vec::new(),
        }
    }

    fn error(&mut self, span: Span, message: impl Into<String>, hint: Option<String>) {
        self.pending.push(Pending {
            span,
            message: message.into(),
            hint,
            missing: None,
            syntax: None,
        });
    }

    /// A required key is absent from the table whose header is at `span`.
    fn missing(&mut self, span: Span, message: impl Into<String>, hint: Option<String>) {
        self.pending.push(Pending {
            span,
            message: message.into(),
            hint,
            missing: Some(false),
            syntax: None,
        });
    }

    /// Something the file as a whole lacks.
    fn missing_in_file(&mut self, span: Span, message: impl Into<String>, hint: Option<String>) {
        self.pending.push(Pending {
            span,
            message: message.into(),
            hint,
            missing: Some(true),
            syntax: None,
        });
    }

    fn syntax_error(&mut self, e: &toml::de::Error) {
        let span = e.span().unwrap_or(0..0);
        let mut message = e.message().trim().to_string();
        let mut hint = None;
        let line = self.line_col(span.start).0;
        let duplicate = message.starts_with("duplicate key");
        if duplicate && self.is_header(line) {
            let header = self.line_text(line);
            let header = header.split('#').next().unwrap_or(header).trim();
            message = format!("duplicate table `{header}`");
            hint = Some("each table may appear only once; merge the two".into());
        } else if duplicate {
            let key = self.source(&span).trim();
            if !key.is_empty() {
                message = format!("duplicate key `{key}`");
            }
            hint = Some("each key may appear only once in a table; remove one of them".into());
        } else if let Some(h) = self.unquoted_value_hint(&span) {
            hint = Some(h);
        }
        self.syntax_lines.push(line);
        self.pending.push(Pending {
            span,
            message: format!("invalid TOML: {message}"),
            hint,
            missing: None,
            syntax: Some(duplicate),
        });
    }

    /// `ready-timeout = 30s` is the most common TOML mistake in a config like this: a string
    /// value written without quotes.
    fn unquoted_value_hint(&self, span: &Span) -> Option<String> {
        let (line, _) = self.line_col(span.start);
        let text = self.line_text(line);
        let (key, value) = text.split_once('=')?;
        let (key, value) = (key.trim(), value.trim());
        let value = value.split(" #").next().unwrap_or(value).trim();
        let plain = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        if key.is_empty() || value.is_empty() || !key.chars().all(plain) {
            return None;
        }
        if value.starts_with(['"', '\'', '[', '{']) {
            return None;
        }
        Some(format!(
            "text values need quotes: write {key} = \"{}\"",
            redact_url_passwords(value)
        ))
    }

    /// The text of a 1-based line.
    fn line_text(&self, line: usize) -> &'a str {
        self.text.lines().nth(line.saturating_sub(1)).unwrap_or("")
    }

    /// Does the line open a table (`[components.web]`)?
    fn is_header(&self, line: usize) -> bool {
        self.line_text(line).trim_start().starts_with('[')
    }

    /// The line of the table header that a line belongs to (0: before any header).
    fn section_of(&self, line: usize) -> usize {
        (1..=line).rev().find(|&l| self.is_header(l)).unwrap_or(0)
    }

    fn source(&self, span: &Span) -> &'a str {
        self.text.get(span.clone()).unwrap_or("")
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// Resolves a path from the file against the file's directory.
    fn resolve(&self, p: &str) -> PathBuf {
        // `components()` drops interior `.` parts: `/etc/rewind/./data` → `/etc/rewind/data`.
        self.dir.join(p).components().collect()
    }

    fn hide_secrets(&self, text: &str) -> String {
        let mut out = redact_url_passwords(text);
        for s in &self.literal_secrets {
            out = out.replace(s.as_str(), crate::redact::MASK);
        }
        out
    }

    fn finish(&self) -> Option<ConfigErrors> {
        let any_syntax = !self.syntax_lines.is_empty();
        let syntax_sections: Vec<usize> = self
            .syntax_lines
            .iter()
            .map(|&l| self.section_of(l))
            .collect();
        let mut errors: Vec<ConfigError> = self
            .pending
            .iter()
            .filter_map(|p| {
                let (line, column) = self.line_col(p.span.start);
                let section = self.section_of(line);
                let echo = match (p.syntax, p.missing) {
                    // The keys of a duplicated table are all duplicates too: one error is
                    // enough.
                    (Some(true), _) => section != line && self.syntax_lines.contains(&section),
                    (Some(false), _) => false,
                    // After a syntax error the recovered document may lack values or keys;
                    // only report what cannot be an echo of the syntax error.
                    (None, _) if self.syntax_lines.contains(&line) => true,
                    (None, Some(true)) => any_syntax,
                    (None, Some(false)) => syntax_sections.contains(&section),
                    (None, None) => false,
                };
                if echo {
                    return None;
                }
                Some(ConfigError {
                    path: self.path.to_path_buf(),
                    line,
                    column,
                    // Values are echoed in messages; passwords in URLs and values declared
                    // secret never are.
                    message: self.hide_secrets(&p.message),
                    hint: p.hint.as_deref().map(|h| self.hide_secrets(h)),
                })
            })
            .collect();
        errors.sort_by_key(|e| (e.line, e.column));
        errors.dedup();
        (!errors.is_empty()).then_some(ConfigErrors(errors))
    }
}

fn read_config(cx: &mut Cx<'_>, root: &Spanned<DeTable<'_>>) -> Option<Config> {
    let root = root.get_ref();
    let mut environment = None;
    let mut env_span = 0..0;
    let mut components_entry = None;
    let mut watch_entry = None;
    let mut secrets = Some(crate::secret::Secrets::new());
    // Where to show problems of the file as a whole: its first key or table.
    let first = root
        .iter()
        .map(|(k, _)| k.span())
        .min_by_key(|s| s.start)
        .unwrap_or(0..0);
    for (key, value) in root.iter() {
        match key.get_ref().as_ref() {
            "environment" => {
                env_span = key.span();
                environment = Some(read_environment(cx, key, value));
            }
            "components" => components_entry = Some((key, value)),
            "watch" => watch_entry = Some((key, value)),
            "secrets" => secrets = read_secrets(cx, value),
            _ => unknown_key(cx, key, value, "at the top level", TOP_KEYS, |k| {
                if ENV_KEYS.contains(&k) {
                    Some(format!("`{k}` belongs under [environment]"))
                } else if RELEASE_DIR_KEYS.contains(&k) || COMMAND_KEYS.contains(&k) {
                    Some(format!("`{k}` belongs in a [components.NAME] table"))
                } else if SIGNAL_TABLES.iter().any(|(t, _)| *t == k) {
                    Some(format!("write [[watch.{k}]]"))
                } else if WATCH_KEYS.contains(&k) {
                    Some(format!("`{k}` belongs under [watch]"))
                } else {
                    Some(
                        "a config file has only [environment], [components.NAME], [watch] and \
                         [secrets] tables"
                            .into(),
                    )
                }
            }),
        }
    }
    if environment.is_none() {
        env_span = first;
        cx.missing_in_file(
            env_span.clone(),
            "[environment] is missing",
            Some("start the file with [environment] and name = \"production\" under it".into()),
        );
    }
    let components = match components_entry {
        Some((key, value)) => read_components(cx, key, value),
        None => {
            cx.missing_in_file(
                env_span,
                "no components: nothing to deploy or roll back",
                Some(MINIMAL_COMPONENT.into()),
            );
            Some(Vec::new())
        }
    };
    let watch = match watch_entry {
        Some((key, value)) => read_watch(cx, key, value),
        None => Some(WatchConfig::default()),
    };
    // Every name `[secrets]` declares counts, also one whose source is wrong (reported apart).
    let declared: Option<Vec<String>> = match root.get("secrets").map(|v| v.get_ref()) {
        None => Some(Vec::new()),
        Some(DeValue::Table(t)) => Some(t.iter().map(|(k, _)| k.get_ref().to_string()).collect()),
        Some(_) => None,
    };
    check_references(cx, root, declared.as_deref());
    Some(Config {
        path: cx.path.to_path_buf(),
        environment: environment??,
        components: components?,
        watch: watch?,
        secrets: secrets?,
    })
}

/// `[secrets]`: each entry says where one secret's value comes from, `{ env = "VAR" }`,
/// `{ file = "PATH" }` or `{ value = "…" }`.
fn read_secrets(cx: &mut Cx<'_>, value: &Value<'_>) -> Option<crate::secret::Secrets> {
    use crate::secret::{SecretSource, SecretSpec, valid_name};
    const EXAMPLE_ENTRY: &str = "write [secrets] with one line per secret, e.g. \
         hook-token = { env = \"DEPLOY_HOOK_TOKEN\" } or db-password = { file = \"/run/secrets/db\" }";
    let Some(table) = value.get_ref().as_table() else {
        cx.error(
            value.span(),
            format!("secrets must be a table, found {}", a_type(value.get_ref())),
            Some(EXAMPLE_ENTRY.into()),
        );
        return None;
    };
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    let mut out = crate::secret::Secrets::new();
    let mut ok = true;
    for (name_key, v) in entries {
        let name = name_key.get_ref().as_ref();
        if !valid_name(name) {
            cx.error(
                name_key.span(),
                format!("secret name {name:?} may only hold letters, digits, \"-\" and \"_\""),
                Some(format!(
                    "write {} = {{ env = \"VARIABLE\" }}",
                    sanitize_name(name, false)
                )),
            );
            ok = false;
        }
        let Some(t) = v.get_ref().as_table() else {
            // `token = "abc123"`: most likely the secret itself. Never echo it.
            if let DeValue::String(s) = v.get_ref()
                && !s.is_empty()
            {
                cx.literal_secrets.push(s.to_string());
            }
            cx.error(
                v.span(),
                format!(
                    "secrets.{name} must say where the value comes from, found {}",
                    a_type(v.get_ref())
                ),
                Some(format!(
                    "write {name} = {{ env = \"VARIABLE\" }} (the value stays out of this file), \
                     {name} = {{ file = \"/run/secrets/{name}\" }}, or {name} = {{ value = \"…\" }}"
                )),
            );
            ok = false;
            continue;
        };
        let mut f = Fields::new(t, &format!("secrets.{name}"), name_key.span());
        if let Some(v) = f.get("value")
            && let DeValue::String(s) = v.get_ref()
            && !s.is_empty()
            && !crate::secret::has_references(s)
        {
            cx.literal_secrets.push(s.to_string());
        }
        let env = f.string(cx, "env", false);
        let file = f.string(cx, "file", false);
        let literal = f.string(cx, "value", false);
        let given: Vec<&str> = SECRET_KEYS.iter().copied().filter(|k| f.has(k)).collect();
        f.finish(cx, SECRET_KEYS, |_| None);
        if given.len() != 1 {
            cx.error(
                name_key.span(),
                if given.is_empty() {
                    format!("secrets.{name}: say where the value comes from: env, file or value")
                } else {
                    format!("secrets.{name}: set only one of {}", given.join(", "))
                },
                Some(format!(
                    "write {name} = {{ env = \"VARIABLE\" }} or {name} = {{ file = \"/run/secrets/{name}\" }}"
                )),
            );
            ok = false;
            continue;
        }
        let source = match (env, file, literal) {
            (Some((e, span)), _, _) => {
                if e.starts_with(|c: char| c.is_ascii_digit())
                    || !e.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    cx.error(
                        span,
                        format!("secrets.{name}: env {e:?} is not an environment variable name"),
                        Some(
                            "names hold letters, digits and \"_\", like \"DEPLOY_HOOK_TOKEN\""
                                .into(),
                        ),
                    );
                    ok = false;
                    continue;
                }
                SecretSource::Env(e)
            }
            (_, Some((p, _)), _) => SecretSource::File(cx.resolve(&p)),
            (_, _, Some((v, _))) => SecretSource::Value(v),
            // The key is there but its value was invalid (already reported).
            _ => {
                ok = false;
                continue;
            }
        };
        let line = cx.line_col(name_key.span().start).0;
        out.insert(name.to_string(), SecretSpec { source, line });
    }
    ok.then_some(out)
}

/// Every `{secret:NAME}` in the file must be well formed, name a secret of `[secrets]`, and
/// sit where references are resolved: in components, in `[watch]` and in `state`.
fn check_references(cx: &mut Cx<'_>, root: &DeTable<'_>, secrets: Option<&[String]>) {
    fn walk(
        cx: &mut Cx<'_>,
        v: &Value<'_>,
        allowed: Option<&'static str>,
        secrets: Option<&[String]>,
    ) {
        match v.get_ref() {
            DeValue::String(s) if crate::secret::has_references(s) => {
                let span = v.span();
                // Place a problem at the reference itself when the source shows it as is.
                let raw = cx.source(&span).to_string();
                let at = |needle: &str| match raw.find(needle) {
                    Some(i) => span.start + i..span.start + i + needle.len(),
                    None => span.clone(),
                };
                if let Some(why) = allowed {
                    let span = at(crate::secret::REF_OPEN);
                    cx.error(
                        span,
                        format!("{{secret:…}} is not read here: {why}"),
                        Some(
                            "references are resolved in components, in [watch] and in state; \
                             write the value itself here"
                                .into(),
                        ),
                    );
                    return;
                }
                match crate::secret::references(s) {
                    Err(bad) => {
                        let text = &s[bad.at..];
                        let shown = text
                            .get(..text.find('}').map_or(text.len(), |i| i + 1).min(40))
                            .unwrap_or(text);
                        cx.error(
                            at(shown),
                            format!("malformed secret reference: {}", bad.why),
                            Some("write {secret:NAME}, NAME declared in [secrets]".into()),
                        );
                    }
                    Ok(refs) => {
                        let Some(secrets) = secrets else { return };
                        for r in refs {
                            if secrets.iter().any(|s| s == r.name) {
                                continue;
                            }
                            let declared: Vec<&str> = secrets.iter().map(String::as_str).collect();
                            let hint = match suggest(r.name, &declared) {
                                Some(d) => format!("did you mean {{secret:{d}}}?"),
                                None => format!(
                                    "declare it: [secrets] {} = {{ env = \"VARIABLE\" }} (or {{ file = \"PATH\" }})",
                                    r.name
                                ),
                            };
                            cx.error(
                                at(&s[r.range.clone()]),
                                format!("{{secret:{}}} names no secret of [secrets]", r.name),
                                Some(hint),
                            );
                        }
                    }
                }
            }
            DeValue::Array(items) => {
                for item in items.iter() {
                    walk(cx, item, allowed, secrets);
                }
            }
            DeValue::Table(t) => {
                for (_, item) in t.iter() {
                    walk(cx, item, allowed, secrets);
                }
            }
            _ => {}
        }
    }
    for (key, value) in root.iter() {
        match key.get_ref().as_ref() {
            "components" | "watch" => walk(cx, value, None, secrets),
            "secrets" => walk(
                cx,
                value,
                Some("a secret's source cannot refer to another secret"),
                secrets,
            ),
            "environment" => {
                if let Some(t) = value.get_ref().as_table() {
                    for (k, v) in t.iter() {
                        let allowed = (k.get_ref().as_ref() != "state")
                            .then_some("only `state` of [environment] may refer to a secret");
                        walk(cx, v, allowed, secrets);
                    }
                }
            }
            _ => {}
        }
    }
}

fn read_environment(
    cx: &mut Cx<'_>,
    key: &Spanned<toml::de::DeString<'_>>,
    value: &Value<'_>,
) -> Option<EnvironmentConfig> {
    let Some(table) = value.get_ref().as_table() else {
        cx.error(
            value.span(),
            format!(
                "environment must be a table, found {}",
                a_type(value.get_ref())
            ),
            Some("write [environment] on its own line and name = \"production\" under it".into()),
        );
        return None;
    };
    let mut f = Fields::new(table, "[environment]", key.span());
    let name = f.string(cx, "name", true);
    if let Some((name, span)) = &name
        && !name
            .chars()
            .all(|c| c.is_alphanumeric() || "-_.".contains(c))
    {
        cx.error(
            span.clone(),
            format!("name: {name:?} may only hold letters, digits, \"-\", \"_\" and \".\""),
            Some(format!("write name = \"{}\"", sanitize_name(name, true))),
        );
    }
    let state = read_state(cx, &mut f);
    let lock_stale_after = f.duration(cx, "lock-stale-after", DEFAULT_LOCK_STALE_AFTER);
    if let Some((d, span)) = &lock_stale_after
        && *d < MIN_LOCK_STALE_AFTER
    {
        cx.error(
            span.clone(),
            format!(
                "lock-stale-after = \"{}\" is too short: a busy host could lose its lock between heartbeats",
                format_duration(*d)
            ),
            Some(format!(
                "write lock-stale-after = \"{}\" (the default) or at least \"{}\"",
                format_duration(DEFAULT_LOCK_STALE_AFTER),
                format_duration(MIN_LOCK_STALE_AFTER)
            )),
        );
    }
    let state_sync = f.one_of(cx, "state-sync", &["full", "normal"], "full");
    f.finish(cx, ENV_KEYS, |_| None);
    Some(EnvironmentConfig {
        name: name?.0,
        state: state?,
        lock_stale_after: lock_stale_after?.0,
        state_sync: match state_sync?.0 {
            "normal" => super::StateSync::Normal,
            _ => super::StateSync::Full,
        },
    })
}

/// `Some(None)`: no `state` key. `None`: an error was recorded.
fn read_state(cx: &mut Cx<'_>, f: &mut Fields<'_, '_>) -> Option<Option<StateLocation>> {
    let Some((text, span)) = f.string(cx, "state", false) else {
        return if f.has("state") { None } else { Some(None) };
    };
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        let rest = &t[t.find("://").map_or(0, |i| i + 3)..];
        let host = rest.split(['/', '?']).next().unwrap_or("");
        let host = host.rsplit('@').next().unwrap_or("");
        if host.is_empty() || t.contains(char::is_whitespace) {
            cx.error(
                span,
                format!("state: {} has no database host", safe_state_text(t)),
                Some("write state = \"postgres://USER@HOST/DATABASE\"".into()),
            );
            return None;
        }
        return Some(Some(StateLocation::Postgres(t.to_string())));
    }
    let file = if let Some(p) = lower.strip_prefix("sqlite://") {
        Some(&t[t.len() - p.len()..])
    } else if let Some(p) = lower.strip_prefix("sqlite:") {
        Some(&t[t.len() - p.len()..])
    } else if !t.contains("://")
        && [".db", ".sqlite", ".sqlite3"]
            .iter()
            .any(|ext| lower.ends_with(ext))
    {
        Some(t)
    } else {
        None
    };
    match file {
        Some(p) if !p.trim().is_empty() => Some(Some(StateLocation::Sqlite(cx.resolve(p.trim())))),
        Some(_) => {
            cx.error(
                span,
                "state: the SQLite URL names no file",
                Some("write state = \"sqlite:.rewind/state.db\"".into()),
            );
            None
        }
        None => {
            cx.error(
                span,
                format!(
                    "state: {} is neither a PostgreSQL URL nor an SQLite file",
                    safe_state_text(t)
                ),
                Some(
                    "write state = \"postgres://USER@HOST/DATABASE\", or a file such as \
                     state = \"sqlite:.rewind/state.db\", or remove the line for the default"
                        .into(),
                ),
            );
            None
        }
    }
}

/// A state or URL value as it may be shown: a URL with a password is masked, and anything that
/// might still hold credentials (`user:pw@host` in a malformed URL) is not shown at all.
fn safe_state_text(t: &str) -> String {
    let shown = redact_url_passwords(t);
    if let Some(at) = shown.rfind('@') {
        let before = &shown[..at];
        let userinfo = before.rsplit("://").next().unwrap_or(before);
        if userinfo.contains(':') && !userinfo.ends_with(crate::redact::MASK) {
            return "the value (not shown: it may hold a password)".into();
        }
    }
    format!("{shown:?}")
}

fn read_components(
    cx: &mut Cx<'_>,
    key: &Spanned<toml::de::DeString<'_>>,
    value: &Value<'_>,
) -> Option<Vec<(String, ComponentConfig)>> {
    let Some(table) = value.get_ref().as_table() else {
        cx.error(
            value.span(),
            format!(
                "components must be tables like [components.web], found {}",
                a_type(value.get_ref())
            ),
            Some(MINIMAL_COMPONENT.into()),
        );
        return None;
    };
    // Components apply in file order; the map does not keep it, the spans do.
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    if entries.is_empty() {
        cx.missing_in_file(
            key.span(),
            "no components: nothing to deploy or roll back",
            Some(MINIMAL_COMPONENT.into()),
        );
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (name_key, value) in entries {
        let name = name_key.get_ref().as_ref();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        {
            let better = sanitize_name(name, false);
            cx.error(
                name_key.span(),
                format!(
                    "component name {name:?} may only hold letters, digits, \"-\" and \"_\" \
                     (it is written in --component NAME and --artifact NAME=PATH)"
                ),
                Some(format!("write [components.{better}]")),
            );
            ok = false;
        }
        match read_component(cx, name, name_key.span(), value) {
            Some(c) => out.push((name.to_string(), c)),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn read_component(
    cx: &mut Cx<'_>,
    name: &str,
    header: Span,
    value: &Value<'_>,
) -> Option<ComponentConfig> {
    let what = format!("[components.{name}]");
    let Some(table) = value.get_ref().as_table() else {
        cx.error(
            value.span(),
            format!(
                "components.{name} must be a table, found {}",
                a_type(value.get_ref())
            ),
            Some(format!(
                "write [components.{name}] on its own line, with kind = \"release-dir\" or \
                 kind = \"command\" under it"
            )),
        );
        return None;
    };
    let mut f = Fields::new(table, &what, header);
    let (kind, kind_span) = f.string(cx, "kind", true)?;
    match kind.as_str() {
        "release-dir" => {
            let c = read_release_dir(cx, &mut f);
            f.finish(cx, RELEASE_DIR_KEYS, |k| {
                COMMAND_KEYS
                    .contains(&k)
                    .then(|| format!("`{k}` is a key of kind = \"command\" components"))
            });
            c.map(ComponentConfig::ReleaseDir)
        }
        "command" => {
            let c = read_command(cx, &mut f);
            f.finish(cx, COMMAND_KEYS, |k| {
                RELEASE_DIR_KEYS
                    .contains(&k)
                    .then(|| format!("`{k}` is a key of kind = \"release-dir\" components"))
            });
            c.map(ComponentConfig::Command)
        }
        "sqlite" | "postgres" => {
            let postgres = kind == "postgres";
            let c = read_database(cx, &mut f, name, postgres);
            f.finish(cx, DATABASE_KEYS, |k| {
                RELEASE_DIR_KEYS
                    .contains(&k)
                    .then(|| format!("`{k}` is a key of kind = \"release-dir\" components"))
            });
            if postgres {
                c.map(ComponentConfig::Postgres)
            } else {
                c.map(ComponentConfig::Sqlite)
            }
        }
        other => {
            let known = KINDS.join(", ");
            let hint = match suggest(other, KINDS) {
                Some(k) => format!("did you mean kind = \"{k}\"?"),
                None => "write kind = \"release-dir\" for a Capistrano-style release directory, \
                         or kind = \"command\" for any deploy CLI"
                    .into(),
            };
            let message = if FUTURE_KINDS.contains(&other.to_ascii_lowercase().as_str()) {
                format!("kind {other:?} is not supported yet; this version knows {known}")
            } else {
                format!("unknown kind {other:?}; known kinds: {known}")
            };
            cx.error(kind_span, message, Some(hint));
            // The other keys cannot be checked without knowing the kind.
            None
        }
    }
}

fn read_release_dir(cx: &mut Cx<'_>, f: &mut Fields<'_, '_>) -> Option<ReleaseDirConfig> {
    let root = f.string(cx, "root", true);
    let restart = f.string(cx, "restart", false);
    let ready = read_readiness(cx, f);
    let ready_timeout = f.duration(cx, "ready-timeout", DEFAULT_READY_TIMEOUT);
    let keep = read_keep(cx, f);
    let secret_env = f.string_list(cx, "secret-env");
    let command_timeout = f.duration(cx, "command-timeout", DEFAULT_COMMAND_TIMEOUT);
    Some(ReleaseDirConfig {
        root: cx.resolve(&root?.0),
        restart: bad_if_present(f, "restart", restart)?,
        ready: ready?,
        ready_timeout: ready_timeout?.0,
        keep: keep?,
        secret_env: secret_env?,
        command_timeout: command_timeout?.0,
    })
}

fn read_command(cx: &mut Cx<'_>, f: &mut Fields<'_, '_>) -> Option<CommandConfig> {
    let current = f.string(cx, "current", false);
    let deploy = f.string(cx, "deploy", true);
    let rollback = f.string(cx, "rollback", true);
    for (key, cmd) in [("deploy", &deploy), ("rollback", &rollback)] {
        if let Some((text, span)) = cmd
            && !text.contains("{release}")
        {
            let why = if key == "rollback" {
                "rollback must say which release to go back to"
            } else {
                "deploy must say which release to deploy"
            };
            cx.error(
                span.clone(),
                format!("{key}: {text:?} does not contain {{release}}"),
                Some(format!("{why}: write {{release}} where the CLI takes it")),
            );
        }
    }
    let ready = read_readiness(cx, f);
    let ready_timeout = f.duration(cx, "ready-timeout", DEFAULT_READY_TIMEOUT);
    let workdir = f.string(cx, "workdir", false);
    let secret_env = f.string_list(cx, "secret-env");
    let command_timeout = f.duration(cx, "command-timeout", DEFAULT_COMMAND_TIMEOUT);
    let deploy = deploy.filter(|(t, _)| t.contains("{release}"));
    let rollback = rollback.filter(|(t, _)| t.contains("{release}"));
    let workdir = match bad_if_present(f, "workdir", workdir)? {
        Some(w) => cx.resolve(&w),
        None if cx.dir.as_os_str().is_empty() => PathBuf::from("."),
        None => cx.dir.clone(),
    };
    Some(CommandConfig {
        current: bad_if_present(f, "current", current)?,
        deploy: deploy?.0,
        rollback: rollback?.0,
        ready: ready?,
        ready_timeout: ready_timeout?.0,
        workdir,
        secret_env: secret_env?,
        command_timeout: command_timeout?.0,
    })
}

fn read_database(
    cx: &mut Cx<'_>,
    f: &mut Fields<'_, '_>,
    name: &str,
    postgres: bool,
) -> Option<DatabaseConfig> {
    let path = f.string(cx, "path", false);
    let url = f.string(cx, "url", false);
    let url_env = f.string(cx, "url-env", false);
    let mut ok = true;
    let connection = if postgres {
        if let Some((_, span)) = &path {
            cx.error(
                span.clone(),
                "path is for kind = \"sqlite\"; a PostgreSQL database is reached by url or url-env",
                Some(
                    "write url-env = \"DATABASE_URL\" (the password stays out of the file)".into(),
                ),
            );
            ok = false;
        }
        match (&url, &url_env) {
            (Some((u, span)), None) => {
                let lower = u.to_ascii_lowercase();
                if !(lower.starts_with("postgres://") || lower.starts_with("postgresql://")) {
                    cx.error(
                        span.clone(),
                        format!("url {:?} is not a postgres:// URL", redact_url_passwords(u)),
                        Some("write url = \"postgres://app@db.internal:5432/app\"".into()),
                    );
                    ok = false;
                }
                Some(DbConnection::Url(u.clone()))
            }
            (None, Some((e, span))) => {
                if e.is_empty()
                    || e.starts_with(|c: char| c.is_ascii_digit())
                    || !e.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    cx.error(
                        span.clone(),
                        format!("url-env: {e:?} is not an environment variable name"),
                        Some("write url-env = \"DATABASE_URL\"".into()),
                    );
                    ok = false;
                }
                Some(DbConnection::UrlEnv(e.clone()))
            }
            (Some(_), Some((_, span))) => {
                cx.error(
                    span.clone(),
                    "set either url or url-env, not both",
                    Some("keep url-env, so the password stays out of the file".into()),
                );
                None
            }
            (None, None) => {
                if !f.has("url") && !f.has("url-env") {
                    cx.missing(
                        f.header.clone(),
                        format!("{}: url or url-env is required", f.what),
                        Some("add url-env = \"DATABASE_URL\" (or url = \"postgres://…\")".into()),
                    );
                }
                None
            }
        }
    } else {
        for (key, v) in [("url", &url), ("url-env", &url_env)] {
            if let Some((_, span)) = v {
                cx.error(
                    span.clone(),
                    format!("{key} is for kind = \"postgres\"; a SQLite database is a file"),
                    Some("write path = \"data/app.db\"".into()),
                );
                ok = false;
            }
        }
        match &path {
            Some((p, _)) => Some(DbConnection::Path(cx.resolve(p))),
            None => {
                if !f.has("path") {
                    cx.missing(
                        f.header.clone(),
                        format!("{}: path is required (the SQLite database file)", f.what),
                        Some("add path = \"data/app.db\"".into()),
                    );
                }
                None
            }
        }
    };
    let migrations = f.string(cx, "migrations", true);
    let format = f.one_of(
        cx,
        "format",
        &[
            "detect",
            MIGRATION_FORMATS[0],
            MIGRATION_FORMATS[1],
            MIGRATION_FORMATS[2],
            MIGRATION_FORMATS[3],
            MIGRATION_FORMATS[4],
            MIGRATION_FORMATS[5],
        ],
        "detect",
    );
    let policy = f.one_of(cx, "policy", &["revert", "forward-only"], "revert");
    let backup = f.one_of(cx, "backup", &["always", "destructive"], "always");
    let backup_dir = f.string(cx, "backup-dir", false);
    let keep_backups = if f.has("keep-backups") {
        f.integer(
            cx,
            "keep-backups",
            1..=10_000,
            i64::from(DEFAULT_KEEP_BACKUPS),
        )
        .map(|(n, _)| n as u32)
    } else {
        Some(DEFAULT_KEEP_BACKUPS)
    };
    let freeze_default = if postgres { "read-only" } else { "none" };
    let freeze_kinds: &[&'static str] = if postgres {
        &["read-only", "command", "none"]
    } else {
        &["command", "none"]
    };
    let freeze = f.one_of(cx, "freeze", freeze_kinds, freeze_default);
    let freeze_command = f.string(cx, "freeze-command", false);
    let unfreeze_command = f.string(cx, "unfreeze-command", false);
    let freeze = match freeze {
        Some(("command", span)) => match (&freeze_command, &unfreeze_command) {
            (Some((a, _)), Some((b, _))) => Some(Freeze::Command {
                freeze: a.clone(),
                unfreeze: b.clone(),
            }),
            _ => {
                if !f.has("freeze-command") || !f.has("unfreeze-command") {
                    cx.error(
                        span,
                        "freeze = \"command\" needs both freeze-command and unfreeze-command",
                        Some("add freeze-command = \"systemctl stop app-workers\" and unfreeze-command = \"systemctl start app-workers\"".into()),
                    );
                }
                None
            }
        },
        Some((other, _)) => {
            for (key, v) in [
                ("freeze-command", &freeze_command),
                ("unfreeze-command", &unfreeze_command),
            ] {
                if let Some((_, span)) = v {
                    cx.error(
                        span.clone(),
                        format!(
                            "{key} is only used with freeze = \"command\" (freeze is {other:?})"
                        ),
                        Some("write freeze = \"command\", or remove the line".into()),
                    );
                    ok = false;
                }
            }
            Some(match other {
                "read-only" => Freeze::ReadOnly,
                _ => Freeze::None,
            })
        }
        None => None,
    };
    let tolerance = match f.get("row-count-tolerance") {
        None => Some(0.0),
        Some(v) => {
            let span = v.span();
            match v.get_ref().as_str().map(crate::units::parse_percent) {
                Some(Ok(p)) => Some(p.fraction()),
                Some(Err(e)) => {
                    cx.error(
                        span,
                        format!("row-count-tolerance: {e}"),
                        Some("write row-count-tolerance = \"1%\"".into()),
                    );
                    None
                }
                None => {
                    cx.error(
                        span,
                        format!(
                            "row-count-tolerance must be a percentage string, found {}",
                            a_type(v.get_ref())
                        ),
                        Some("write row-count-tolerance = \"1%\"".into()),
                    );
                    None
                }
            }
        }
    };
    let checks = read_db_checks(cx, f, name);
    let pitr = read_pitr(cx, f, name, postgres);
    let command_timeout = f.duration(cx, "command-timeout", DEFAULT_COMMAND_TIMEOUT);
    let pg_bin = f.string(cx, "pg-bin", false);
    if let Some((_, span)) = &pg_bin
        && !postgres
    {
        cx.error(
            span.clone(),
            "pg-bin is for kind = \"postgres\" (where pg_dump and pg_restore are); SQLite needs no client tools",
            Some("remove the line".into()),
        );
        ok = false;
    }
    let pg_bin = bad_if_present(f, "pg-bin", pg_bin)?.map(|d| cx.resolve(&d));
    let backup_dir = match bad_if_present(f, "backup-dir", backup_dir)? {
        Some(d) => cx.resolve(&d),
        None => cx.resolve(&format!(".rewind/backups/{name}")),
    };
    if !ok {
        return None;
    }
    let migrations = migrations?.0;
    Some(DatabaseConfig {
        connection: connection?,
        migrations: if Path::new(&migrations).is_absolute() {
            migrations
        } else {
            cx.resolve(&migrations).to_string_lossy().into_owned()
        },
        format: match format?.0 {
            "detect" => None,
            other => Some(other.to_string()),
        },
        policy: match policy?.0 {
            "forward-only" => DbPolicy::ForwardOnly,
            _ => DbPolicy::Revert,
        },
        backup: match backup?.0 {
            "destructive" => BackupPolicy::Destructive,
            _ => BackupPolicy::Always,
        },
        backup_dir,
        keep_backups: keep_backups?,
        freeze: freeze?,
        row_count_tolerance: Fraction(tolerance?),
        checks: checks?,
        pitr: pitr?,
        command_timeout: command_timeout?.0,
        pg_bin,
    })
}

fn read_db_checks(cx: &mut Cx<'_>, f: &Fields<'_, '_>, component: &str) -> Option<Vec<SqlCheck>> {
    let Some(value) = f.get("check") else {
        return Some(Vec::new());
    };
    let what = format!("[[components.{component}.check]]");
    let Some(items) = value.get_ref().as_array() else {
        cx.error(
            value.span(),
            format!(
                "components.{component}.check must be a list of tables, each starting with {what}"
            ),
            Some(format!(
                "write {what} on its own line, with name = \"…\" and sql = \"SELECT …\" under it"
            )),
        );
        return None;
    };
    let mut out: Vec<SqlCheck> = Vec::new();
    let mut ok = true;
    for item in items.iter() {
        let Some(t) = item.get_ref().as_table() else {
            cx.error(item.span(), format!("{what} must be a table"), None);
            ok = false;
            continue;
        };
        let mut cf = Fields::new(t, &what, item.span());
        let name = cf.string(cx, "name", true);
        let sql = cf.string(cx, "sql", true);
        cf.finish(cx, DB_CHECK_KEYS, |_| None);
        match (name, sql) {
            (Some((n, span)), Some((q, _))) => {
                if out.iter().any(|c| c.name == n) {
                    cx.error(
                        span,
                        format!("check name {n:?} is used twice in {what}"),
                        Some("give each check a name of its own".into()),
                    );
                    ok = false;
                } else {
                    out.push(SqlCheck { name: n, sql: q });
                }
            }
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

fn read_pitr(
    cx: &mut Cx<'_>,
    f: &Fields<'_, '_>,
    component: &str,
    postgres: bool,
) -> Option<Option<PitrConfig>> {
    let Some(value) = f.get("pitr") else {
        return Some(None);
    };
    let what = format!("[components.{component}.pitr]");
    if !postgres {
        cx.error(
            value.span(),
            format!(
                "{what}: point-in-time recovery is for kind = \"postgres\" (through pgBackRest)"
            ),
            Some("remove the table; SQLite databases are restored from their backups".into()),
        );
        return None;
    }
    let Some(t) = value.get_ref().as_table() else {
        cx.error(value.span(), format!("{what} must be a table"), None);
        return None;
    };
    let mut pf = Fields::new(t, &what, value.span());
    let stanza = pf.string(cx, "stanza", true);
    let config = pf.string(cx, "config", false);
    let run_as = pf.string(cx, "run-as", false);
    let data_dir = pf.string(cx, "data-dir", true);
    let stop = pf.string(cx, "stop", true);
    let start = pf.string(cx, "start", true);
    pf.finish(cx, PITR_KEYS, |_| None);
    Some(Some(PitrConfig {
        stanza: stanza?.0,
        config: config.map(|(c, _)| cx.resolve(&c)),
        run_as: run_as.map(|(r, _)| r),
        data_dir: cx.resolve(&data_dir?.0),
        stop: stop?.0,
        start: start?.0,
    }))
}

/// For an optional key: `Some(None)` when absent, `None` when present but invalid.
fn bad_if_present<T>(f: &Fields<'_, '_>, key: &str, value: Option<(T, Span)>) -> Option<Option<T>> {
    match value {
        Some((v, _)) => Some(Some(v)),
        None if f.has(key) => None,
        None => Some(None),
    }
}

/// `Some(None)`: neither `ready-url` nor `ready-command`. `None`: an error was recorded.
fn read_readiness(cx: &mut Cx<'_>, f: &mut Fields<'_, '_>) -> Option<Option<Readiness>> {
    let url = f.string(cx, "ready-url", false);
    let command = f.string(cx, "ready-command", false);
    let mut ok =
        !(f.has("ready-url") && url.is_none() || f.has("ready-command") && command.is_none());
    if let Some((u, span)) = &url
        && !check_http_url(
            cx,
            "ready-url",
            u,
            span,
            "write ready-url = \"http://127.0.0.1:8080/health\", or use ready-command for any \
             other check",
        )
    {
        ok = false;
    }
    if let (Some((_, url_span)), Some((_, cmd_span))) = (&url, &command) {
        // Shown at whichever of the two comes second.
        let span = if cmd_span.start > url_span.start {
            cmd_span
        } else {
            url_span
        };
        cx.error(
            span.clone(),
            "set either ready-url or ready-command, not both",
            Some("keep ready-url for an HTTP check, or ready-command for any other check".into()),
        );
        ok = false;
    }
    if !ok {
        return None;
    }
    Some(match (url, command) {
        (Some((u, _)), None) => Some(Readiness::Url(u)),
        (None, Some((c, _))) => Some(Readiness::Command(c)),
        _ => None,
    })
}

fn read_keep(cx: &mut Cx<'_>, f: &mut Fields<'_, '_>) -> Option<u32> {
    let Some(v) = f.get("keep") else {
        return Some(DEFAULT_KEEP);
    };
    let span = v.span();
    let raw = cx.source(&span).trim().to_string();
    let hint_default = format!("write keep = {DEFAULT_KEEP}");
    match v.get_ref() {
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if n < MIN_KEEP => {
                cx.error(
                    span,
                    format!(
                        "keep = {raw} is too few: at least {MIN_KEEP} releases must stay, the \
                         current one and the last known-good one"
                    ),
                    Some(format!(
                        "write keep = {MIN_KEEP} or more (default {DEFAULT_KEEP})"
                    )),
                );
                None
            }
            Ok(n) => match u32::try_from(n) {
                Ok(n) => Some(n),
                Err(_) => {
                    cx.error(
                        span,
                        format!("keep = {raw} is too large"),
                        Some(hint_default),
                    );
                    None
                }
            },
            Err(_) => {
                cx.error(
                    span,
                    format!("keep = {raw} is too large"),
                    Some(hint_default),
                );
                None
            }
        },
        DeValue::String(s) => {
            let hint = match s.trim().parse::<u32>() {
                Ok(n) => format!("write keep = {n}, without quotes"),
                Err(_) => hint_default,
            };
            cx.error(
                span,
                "keep must be a whole number, found a string",
                Some(hint),
            );
            None
        }
        other => {
            cx.error(
                span,
                format!("keep must be a whole number, found {}", a_type(other)),
                Some(hint_default),
            );
            None
        }
    }
}

/// Is `u` an `http://` or `https://` URL with a host? Records the problem when it is not;
/// `hint` is what to say when prefixing `http://` would not help.
fn check_http_url(cx: &mut Cx<'_>, key: &str, u: &str, span: &Span, hint: &str) -> bool {
    let lower = u.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"));
    // The host: after any `user:password@`, before any `:port`, path, query or fragment.
    let host = rest.map(|r| {
        let authority = r.split(['/', '?', '#']).next().unwrap_or("");
        let host = authority.rsplit('@').next().unwrap_or("");
        host.split(':').next().unwrap_or("")
    });
    if host.is_some_and(|h| !h.is_empty()) && !u.contains(char::is_whitespace) {
        return true;
    }
    let hint = if u.contains("://") || u.contains(char::is_whitespace) {
        hint.to_string()
    } else {
        format!("write {key} = \"http://{u}\"")
    };
    cx.error(
        span.clone(),
        format!(
            "{key}: {} is not an http:// or https:// URL",
            safe_state_text(u)
        ),
        Some(hint),
    );
    false
}

/// `[watch]`. Absent, the defaults apply (see [`WatchConfig::default`]).
fn read_watch(
    cx: &mut Cx<'_>,
    key: &Spanned<toml::de::DeString<'_>>,
    value: &Value<'_>,
) -> Option<WatchConfig> {
    let Some(table) = value.get_ref().as_table() else {
        let hint = if value.get_ref().as_array().is_some() {
            "write [watch] with single brackets: there is one watch table"
        } else {
            "write [watch] on its own line and its settings, like window = \"1h\", under it"
        };
        cx.error(
            value.span(),
            format!("watch must be a table, found {}", a_type(value.get_ref())),
            Some(hint.into()),
        );
        return None;
    };
    let mut f = Fields::new(table, "[watch]", key.span());
    let window = f.duration(cx, "window", DEFAULT_WINDOW);
    let window = at_least(cx, "window", window, MIN_WINDOW, DEFAULT_WINDOW);
    let policy = f.one_of(cx, "policy", POLICIES, "rollback");
    let alpha = f.percent(cx, "alpha", DEFAULT_ALPHA, Upto::AtMost(0.5));
    let baseline = f.duration_or_zero(cx, "baseline", DEFAULT_BASELINE);
    let availability_below = f.percent(
        cx,
        "availability-below",
        DEFAULT_AVAILABILITY,
        Upto::Below(1.0),
    );
    let errors_above = f.percent(cx, "errors-above", DEFAULT_ERRORS_ABOVE, Upto::Below(1.0));
    let latency_regression = f.percent(
        cx,
        "latency-regression",
        DEFAULT_LATENCY_REGRESSION,
        Upto::Any,
    );
    let latency_quantile = f.one_of_with(cx, "latency-quantile", QUANTILES, "p95", quantile_meant);
    let latency_objective =
        f.optional_duration(cx, "latency-objective", Duration::from_millis(300));
    let consecutive_failures = f.integer(
        cx,
        "consecutive-failures",
        1..=i64::from(u32::MAX),
        DEFAULT_CONSECUTIVE.into(),
    );
    let consecutive_failures = match consecutive_failures {
        Some((n, _)) => u32::try_from(n).ok(),
        None if f.has("consecutive-failures") => None,
        None => Some(DEFAULT_CONSECUTIVE),
    };
    // Names are unique across the three kinds of signal: incidents and reports name them.
    let mut names = Vec::new();
    let probes = read_signals(cx, &f, "probe", &mut names, read_probe);
    let prometheus = read_signals(cx, &f, "prometheus", &mut names, read_prometheus);
    let checks = read_signals(cx, &f, "check", &mut names, read_check);
    f.finish(cx, WATCH_KEYS, |k| {
        let tables: Vec<String> = SIGNAL_TABLES
            .iter()
            .filter(|(_, keys)| keys.contains(&k))
            .map(|(t, _)| format!("[[watch.{t}]]"))
            .collect();
        (!tables.is_empty()).then(|| {
            format!(
                "`{k}` belongs in a {} table, after its header",
                tables.join(" or ")
            )
        })
    });
    Some(WatchConfig {
        window: window?.0,
        policy: match policy?.0 {
            "alert-only" => WatchPolicy::AlertOnly,
            _ => WatchPolicy::Rollback,
        },
        alpha: alpha?.0,
        baseline: baseline?.0,
        availability_below: availability_below?.0,
        errors_above: errors_above?.0,
        latency_regression: latency_regression?.0,
        latency_quantile: quantile(latency_quantile?.0),
        latency_objective: latency_objective?,
        consecutive_failures: consecutive_failures?,
        probes: probes?,
        prometheus: prometheus?,
        checks: checks?,
    })
}

/// The quantile meant by `"95%"`, `"0.95"`, `"95"` or `"95th"`, if it is one of [`QUANTILES`].
fn quantile_meant(text: &str) -> Option<&'static str> {
    let t = text.trim().trim_start_matches(['p', 'P']);
    let t = t.trim_end_matches(['%', 't', 'h']).trim();
    let n: f64 = t.parse().ok()?;
    let percent = if n < 1.0 { n * 100.0 } else { n };
    QUANTILES
        .iter()
        .find(|q| (quantile(q).0 * 100.0 - percent).abs() < 1e-9)
        .copied()
}

/// `"p95"` → 0.95.
fn quantile(name: &str) -> Quantile {
    let percent: f64 = name.trim_start_matches('p').parse().unwrap_or(95.0);
    Quantile(percent / 100.0)
}

/// A duration that must be at least `min`; the problem is recorded when it is shorter.
fn at_least(
    cx: &mut Cx<'_>,
    key: &str,
    value: Option<(Duration, Span)>,
    min: Duration,
    default: Duration,
) -> Option<(Duration, Span)> {
    let (d, span) = value?;
    if d >= min {
        return Some((d, span));
    }
    cx.error(
        span,
        format!(
            "{key} = \"{}\" is too short: it must be at least \"{}\"",
            format_duration(d),
            format_duration(min)
        ),
        Some(format!(
            "write {key} = \"{}\" (the default) or at least \"{}\"",
            format_duration(default),
            format_duration(min)
        )),
    );
    None
}

/// `[[watch.probe]]`, `[[watch.prometheus]]` or `[[watch.check]]` (`table`): a list of tables,
/// each with a `name` unique among all of them (`names`, with where each was given), the
/// rest read by `read_one`. Empty when absent.
fn read_signals<T>(
    cx: &mut Cx<'_>,
    watch: &Fields<'_, '_>,
    table: &'static str,
    names: &mut Vec<(String, Span, &'static str)>,
    read_one: impl Fn(&mut Cx<'_>, &mut Fields<'_, '_>, Option<String>) -> Option<T>,
) -> Option<Vec<T>> {
    let Some(value) = watch.get(table) else {
        return Some(Vec::new());
    };
    let what = format!("[[watch.{table}]]");
    let items = match value.get_ref() {
        DeValue::Array(items) => items,
        DeValue::Table(_) => {
            cx.error(
                value.span(),
                format!(
                    "[watch.{table}] is a single table, but {table} entries are a list: each \
                     one starts with {what}"
                ),
                Some(format!("write {what}")),
            );
            return None;
        }
        other => {
            cx.error(
                value.span(),
                format!(
                    "watch.{table} must be a list of tables, found {}",
                    a_type(other)
                ),
                Some(format!(
                    "write {what} on its own line and its keys under it"
                )),
            );
            return None;
        }
    };
    let keys = SIGNAL_TABLES
        .iter()
        .find(|(t, _)| *t == table)
        .map_or(&[][..], |(_, k)| k);
    let mut out = Vec::new();
    let mut ok = true;
    for item in items.iter() {
        let Some(t) = item.get_ref().as_table() else {
            cx.error(
                item.span(),
                format!(
                    "watch.{table} must hold tables, found {}",
                    a_type(item.get_ref())
                ),
                Some(format!(
                    "write {what} on its own line and its keys under it"
                )),
            );
            ok = false;
            continue;
        };
        let mut f = Fields::new(t, &what, item.span());
        let name = read_signal_name(cx, &mut f, table, names);
        let signal = read_one(cx, &mut f, name);
        f.finish(cx, keys, |k| signal_key_elsewhere(k, table));
        match signal {
            Some(s) => out.push(s),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// The `name` of a signal table: required, a plain word, not taken by another signal.
fn read_signal_name(
    cx: &mut Cx<'_>,
    f: &mut Fields<'_, '_>,
    table: &'static str,
    names: &mut Vec<(String, Span, &'static str)>,
) -> Option<String> {
    let (name, span) = f.string(cx, "name", true)?;
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        cx.error(
            span,
            format!("name: {name:?} may only hold letters, digits, \"-\" and \"_\""),
            Some(format!("write name = \"{}\"", sanitize_name(&name, false))),
        );
        return None;
    }
    if let Some((_, first, other)) = names.iter().find(|(n, _, _)| *n == name) {
        let line = cx.line_col(first.start).0;
        cx.error(
            span,
            format!("name {name:?} is taken: the [[watch.{other}]] at line {line} has it already"),
            Some(
                "probes, Prometheus queries and checks each need a name of their own; \
                 rename one of the two"
                    .into(),
            ),
        );
        return None;
    }
    names.push((name.clone(), span, table));
    Some(name)
}

/// Where a key that is not one of `table`'s belongs, if it belongs anywhere.
fn signal_key_elsewhere(k: &str, table: &str) -> Option<String> {
    if WATCH_KEYS.contains(&k) {
        return Some(format!(
            "`{k}` is a key of [watch]: write it under [watch], above the first [[watch.…]] table"
        ));
    }
    SIGNAL_TABLES
        .iter()
        .find(|(t, keys)| *t != table && keys.contains(&k))
        .map(|(t, _)| format!("`{k}` is a key of [[watch.{t}]] tables"))
}

fn read_probe(
    cx: &mut Cx<'_>,
    f: &mut Fields<'_, '_>,
    name: Option<String>,
) -> Option<ProbeConfig> {
    let url = f.http_url(cx, "url", "http://127.0.0.1:8080/health");
    let method = f.one_of(cx, "method", METHODS, "GET");
    let rate = f.positive_number(cx, "rate", DEFAULT_PROBE_RATE, MAX_PROBE_RATE);
    let timeout = f.duration(cx, "timeout", DEFAULT_PROBE_TIMEOUT);
    let expect_status = f.integer(cx, "expect-status", 100..=599, 200);
    let expect_body = f.string(cx, "expect-body", false);
    let release_header = f.string(cx, "release-header", false);
    let release_header = release_header.filter(|(h, span)| {
        // An HTTP header name is a token (RFC 9110).
        let token = h
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
        if !token {
            cx.error(
                span.clone(),
                format!("release-header: {h:?} is not an HTTP header name"),
                Some(
                    "write release-header = \"x-release\", the name without a colon or value"
                        .into(),
                ),
            );
        }
        token
    });
    let critical = f.bool(cx, "critical", false);
    Some(ProbeConfig {
        name: name?,
        url: url?.0,
        method: method?.0.to_string(),
        rate: rate?.0,
        timeout: timeout?.0,
        expect_status: bad_if_present(f, "expect-status", expect_status)?.map(|s| s as u16),
        expect_body: bad_if_present(f, "expect-body", expect_body)?,
        release_header: bad_if_present(f, "release-header", release_header)?,
        critical: critical?.0,
    })
}

fn read_prometheus(
    cx: &mut Cx<'_>,
    f: &mut Fields<'_, '_>,
    name: Option<String>,
) -> Option<PrometheusConfig> {
    let url = f.http_url(cx, "url", "http://127.0.0.1:9090");
    let errors = f.string(cx, "errors", true);
    let total = f.string(cx, "total", true);
    let latency = f.string(cx, "latency", false);
    let interval = f.duration(cx, "interval", DEFAULT_SIGNAL_INTERVAL);
    let interval = at_least(
        cx,
        "interval",
        interval,
        MIN_SIGNAL_INTERVAL,
        DEFAULT_SIGNAL_INTERVAL,
    );
    Some(PrometheusConfig {
        name: name?,
        url: url?.0,
        errors: errors?.0,
        total: total?.0,
        latency: bad_if_present(f, "latency", latency)?,
        interval: interval?.0,
    })
}

fn read_check(
    cx: &mut Cx<'_>,
    f: &mut Fields<'_, '_>,
    name: Option<String>,
) -> Option<CheckConfig> {
    let command = f.string(cx, "command", true);
    let kind = f.one_of(cx, "kind", CHECK_KINDS, "functional");
    let interval = f.duration(cx, "interval", DEFAULT_SIGNAL_INTERVAL);
    let timeout = f.duration(cx, "timeout", DEFAULT_CHECK_TIMEOUT);
    Some(CheckConfig {
        name: name?,
        command: command?.0,
        kind: match kind?.0 {
            "database" => CheckKind::Database,
            _ => CheckKind::Functional,
        },
        interval: interval?.0,
        timeout: timeout?.0,
    })
}

/// Which percentages a key accepts besides being above 0 %.
#[derive(Clone, Copy)]
enum Upto {
    /// Below this fraction.
    Below(f64),
    /// At most this fraction.
    AtMost(f64),
    /// Any size (a growth may be more than 100 %).
    Any,
}

/// The value of a TOML integer or float as an `f64`, if finite.
fn number_value(v: &DeValue<'_>) -> Option<f64> {
    let n = match v {
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok()? as f64,
        DeValue::Float(x) => x.as_str().parse().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

/// Reads the keys of one table, reporting problems to the [`Cx`].
struct Fields<'t, 'i> {
    table: &'t DeTable<'i>,
    /// How the table is named in messages: `[environment]`, `[components.web]`.
    what: String,
    /// The table's header, where problems of the table as a whole (a missing key) are shown.
    header: Span,
}

impl<'t, 'i> Fields<'t, 'i> {
    fn new(table: &'t DeTable<'i>, what: &str, header: Span) -> Self {
        Fields {
            table,
            what: what.to_string(),
            header,
        }
    }

    fn get(&self, key: &str) -> Option<&'t Value<'i>> {
        self.table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| v)
    }

    fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// A non-empty string. `None` when absent or invalid (the problem is recorded).
    fn string(&mut self, cx: &mut Cx<'_>, key: &str, required: bool) -> Option<(String, Span)> {
        let Some(v) = self.get(key) else {
            if required {
                cx.missing(
                    self.header.clone(),
                    format!("{}: {key} is required", self.what),
                    Some(if key == "kind" {
                        "add kind = \"release-dir\" or kind = \"command\"".to_string()
                    } else {
                        format!("add {key} = \"{}\"", self.example(key))
                    }),
                );
            }
            return None;
        };
        let span = v.span();
        match v.get_ref() {
            DeValue::String(s) if s.trim().is_empty() => {
                let hint = if required {
                    format!("write {key} = \"{}\"", self.example(key))
                } else {
                    format!(
                        "write {key} = \"{}\", or remove the line",
                        self.example(key)
                    )
                };
                cx.error(span, format!("{key} is empty"), Some(hint));
                None
            }
            DeValue::String(s) => Some((s.to_string(), span)),
            other => {
                let raw = cx.source(&span).trim().to_string();
                // `name = 2024` means "2024"; `restart = true` does not mean "true".
                let suggestion = match other {
                    DeValue::Integer(_) | DeValue::Float(_) if key == "name" => raw,
                    _ => self.example(key).to_string(),
                };
                cx.error(
                    span,
                    format!("{key} must be a string, found {}", a_type(other)),
                    Some(format!("write {key} = \"{suggestion}\"")),
                );
                None
            }
        }
    }

    /// A duration written with a unit; `default` when absent.
    fn duration(
        &mut self,
        cx: &mut Cx<'_>,
        key: &str,
        default: Duration,
    ) -> Option<(Duration, Span)> {
        self.duration_with(cx, key, default, false)
    }

    fn duration_with(
        &mut self,
        cx: &mut Cx<'_>,
        key: &str,
        default: Duration,
        allow_zero: bool,
    ) -> Option<(Duration, Span)> {
        let Some(v) = self.get(key) else {
            return Some((default, self.header.clone()));
        };
        let span = v.span();
        let default_text = format_duration(default);
        match v.get_ref() {
            DeValue::String(s) => match parse_duration(s) {
                Ok(d) if d.is_zero() && !allow_zero => {
                    cx.error(
                        span,
                        format!("{key} must be longer than zero"),
                        Some(format!("write {key} = \"{default_text}\"")),
                    );
                    None
                }
                Ok(d) => Some((d, span)),
                Err(e) => {
                    cx.error(
                        span,
                        format!("{key}: {e}"),
                        Some(format!("write {key} = \"{default_text}\"")),
                    );
                    None
                }
            },
            DeValue::Integer(_) | DeValue::Float(_) => {
                let raw = cx.source(&span).trim().to_string();
                cx.error(
                    span,
                    format!(
                        "{key} = {raw} has no unit; a duration is a string with a unit, like \"30s\" or \"5m\""
                    ),
                    Some(format!("write {key} = \"{raw}s\"")),
                );
                None
            }
            other => {
                cx.error(
                    span,
                    format!(
                        "{key} must be a duration like \"30s\", found {}",
                        a_type(other)
                    ),
                    Some(format!("write {key} = \"{default_text}\"")),
                );
                None
            }
        }
    }

    /// A plausible value for a key of this table, for hints.
    fn example(&self, key: &str) -> &'static str {
        if key == "name" && self.what.starts_with("[[watch.") {
            "checkout"
        } else {
            example(key)
        }
    }

    /// A required `http://` or `https://` URL; `example_url` for hints.
    fn http_url(
        &mut self,
        cx: &mut Cx<'_>,
        key: &str,
        example_url: &str,
    ) -> Option<(String, Span)> {
        let (u, span) = self.string(cx, key, true)?;
        let hint = format!("write {key} = \"{example_url}\"");
        check_http_url(cx, key, &u, &span, &hint).then_some((u, span))
    }

    /// One of the words in `known` (compared without regard to case, given as in `known`);
    /// `default` when absent.
    fn one_of(
        &mut self,
        cx: &mut Cx<'_>,
        key: &str,
        known: &[&'static str],
        default: &'static str,
    ) -> Option<(&'static str, Span)> {
        self.one_of_with(cx, key, known, default, |_| None)
    }

    /// Like [`Fields::one_of`]; `meant` names the known word that a wrong one stands for,
    /// when it can tell, for the hint.
    fn one_of_with(
        &mut self,
        cx: &mut Cx<'_>,
        key: &str,
        known: &[&'static str],
        default: &'static str,
        meant: fn(&str) -> Option<&'static str>,
    ) -> Option<(&'static str, Span)> {
        let Some(v) = self.get(key) else {
            return Some((default, self.header.clone()));
        };
        let span = v.span();
        let list = known.join(", ");
        let Some(s) = v.get_ref().as_str() else {
            cx.error(
                span,
                format!("{key} must be one of {list}, found {}", a_type(v.get_ref())),
                Some(format!("write {key} = \"{default}\"")),
            );
            return None;
        };
        if let Some(k) = known.iter().find(|k| k.eq_ignore_ascii_case(s.trim())) {
            return Some((k, span));
        }
        let lower: Vec<String> = known.iter().map(|k| k.to_ascii_lowercase()).collect();
        let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
        let close = meant(s).or_else(|| {
            let c = suggest(s.trim(), &lower)?;
            lower.iter().position(|l| *l == c).map(|i| known[i])
        });
        let hint = match close {
            Some(k) => format!("did you mean {key} = \"{k}\"?"),
            None if known.len() <= 3 => {
                let each: Vec<String> = known.iter().map(|k| format!("{key} = \"{k}\"")).collect();
                format!("write {}", each.join(" or "))
            }
            None => format!("write {key} = \"{default}\", or another of {list}"),
        };
        cx.error(
            span,
            format!("{key}: unknown value {s:?}; known values: {list}"),
            Some(hint),
        );
        None
    }

    /// A percentage written as a string with a `%` sign, above 0 % and within `upto`;
    /// `default` (a fraction) when absent. Returned as a fraction.
    fn percent(
        &mut self,
        cx: &mut Cx<'_>,
        key: &str,
        default: f64,
        upto: Upto,
    ) -> Option<(f64, Span)> {
        let Some(v) = self.get(key) else {
            return Some((default, self.header.clone()));
        };
        let span = v.span();
        let default_hint = format!("write {key} = \"{}\" (the default)", Percent(default));
        match v.get_ref() {
            DeValue::String(s) => match parse_percent_above_100(s) {
                Ok(p) => {
                    let x = p.fraction();
                    let (within, bound) = match upto {
                        Upto::Below(max) => (x < max, format!(" and below {}", Percent(max))),
                        Upto::AtMost(max) => (x <= max, format!(" and at most {}", Percent(max))),
                        Upto::Any => (true, String::new()),
                    };
                    if x > 0.0 && within {
                        return Some((x, span));
                    }
                    cx.error(
                        span,
                        format!(
                            "{key} = \"{}\" is out of range: it must be above 0%{bound}",
                            s.trim()
                        ),
                        Some(default_hint),
                    );
                    None
                }
                Err(e) => {
                    cx.error(span, format!("{key}: {e}"), Some(default_hint));
                    None
                }
            },
            DeValue::Integer(_) | DeValue::Float(_) => {
                let raw = cx.source(&span).trim().to_string();
                // 0.01 is a fraction, 1 or 99.9 a number of percent.
                let hint = match number_value(v.get_ref()) {
                    Some(n) if n > 0.0 => {
                        let fraction = if n < 1.0 { n } else { n / 100.0 };
                        format!("write {key} = \"{}\"", Percent(fraction))
                    }
                    _ => default_hint,
                };
                cx.error(
                    span,
                    format!(
                        "{key} = {raw} is not a percentage; a percentage is a string with a % \
                         sign, like \"1%\""
                    ),
                    Some(hint),
                );
                None
            }
            other => {
                cx.error(
                    span,
                    format!(
                        "{key} must be a percentage like \"1%\", found {}",
                        a_type(other)
                    ),
                    Some(default_hint),
                );
                None
            }
        }
    }

    /// A whole number within `range`. `None` when absent or invalid (the problem is
    /// recorded); `example` for hints.
    fn integer(
        &mut self,
        cx: &mut Cx<'_>,
        key: &str,
        range: RangeInclusive<i64>,
        example: i64,
    ) -> Option<(i64, Span)> {
        let v = self.get(key)?;
        let span = v.span();
        let raw = cx.source(&span).trim().to_string();
        let unbounded = *range.end() >= i64::from(u32::MAX);
        let within = if unbounded {
            format!("at least {}", range.start())
        } else {
            format!("between {} and {}", range.start(), range.end())
        };
        let hint = format!("write {key} = {example}");
        let (message, hint) = match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) if range.contains(&n) => return Some((n, span)),
                Ok(n) if n > *range.end() && unbounded => {
                    (format!("{key} = {raw} is too large"), hint)
                }
                _ => (
                    format!("{key} = {raw} is out of range: it must be {within}"),
                    hint,
                ),
            },
            DeValue::String(s) => {
                let hint = match s.trim().parse::<i64>() {
                    Ok(n) if range.contains(&n) => format!("write {key} = {n}, without quotes"),
                    _ => hint,
                };
                (
                    format!("{key} must be a whole number, found a string"),
                    hint,
                )
            }
            other => {
                let hint = match number_value(other) {
                    Some(n) if n.fract() == 0.0 && range.contains(&(n as i64)) => {
                        format!("write {key} = {}", n as i64)
                    }
                    _ => hint,
                };
                (
                    format!("{key} must be a whole number, found {}", a_type(other)),
                    hint,
                )
            }
        };
        cx.error(span, message, Some(hint));
        None
    }

    /// A number (whole or decimal) above 0 and at most `max`; `default` when absent.
    fn positive_number(
        &mut self,
        cx: &mut Cx<'_>,
        key: &str,
        default: f64,
        max: f64,
    ) -> Option<(f64, Span)> {
        let Some(v) = self.get(key) else {
            return Some((default, self.header.clone()));
        };
        let span = v.span();
        let raw = cx.source(&span).trim().to_string();
        let hint = format!("write {key} = {default}");
        let (message, hint) = match (v.get_ref(), number_value(v.get_ref())) {
            (_, Some(n)) if n > 0.0 && n <= max => return Some((n, span)),
            (DeValue::Integer(_) | DeValue::Float(_), _) => (
                format!("{key} = {raw} is out of range: it must be above 0 and at most {max}"),
                hint,
            ),
            (DeValue::String(s), _) => {
                let hint = match s.trim().parse::<f64>() {
                    Ok(n) if n > 0.0 && n <= max => format!("write {key} = {n}, without quotes"),
                    _ => hint,
                };
                (format!("{key} must be a number, found a string"), hint)
            }
            (other, _) => (
                format!("{key} must be a number, found {}", a_type(other)),
                hint,
            ),
        };
        cx.error(span, message, Some(hint));
        None
    }

    /// `true` or `false`; `default` when absent.
    fn bool(&mut self, cx: &mut Cx<'_>, key: &str, default: bool) -> Option<(bool, Span)> {
        let Some(v) = self.get(key) else {
            return Some((default, self.header.clone()));
        };
        let span = v.span();
        if let DeValue::Boolean(b) = v.get_ref() {
            return Some((*b, span));
        }
        let hint = match v.get_ref().as_str().map(|s| s.trim().to_ascii_lowercase()) {
            Some(s) if ["true", "yes", "on"].contains(&s.as_str()) => {
                format!("write {key} = true, without quotes")
            }
            Some(s) if ["false", "no", "off"].contains(&s.as_str()) => {
                format!("write {key} = false, without quotes")
            }
            _ => format!("write {key} = true or {key} = false"),
        };
        cx.error(
            span,
            format!("{key} must be true or false, found {}", a_type(v.get_ref())),
            Some(hint),
        );
        None
    }

    /// Like [`Fields::duration`], but `"0s"` is allowed: it switches something off.
    fn duration_or_zero(
        &mut self,
        cx: &mut Cx<'_>,
        key: &str,
        default: Duration,
    ) -> Option<(Duration, Span)> {
        self.duration_with(cx, key, default, true)
    }

    /// An optional duration: `Some(None)` when absent, `None` when invalid; `example` for
    /// hints.
    fn optional_duration(
        &mut self,
        cx: &mut Cx<'_>,
        key: &str,
        example: Duration,
    ) -> Option<Option<Duration>> {
        if !self.has(key) {
            return Some(None);
        }
        self.duration(cx, key, example).map(|(d, _)| Some(d))
    }

    /// A list of environment variable names; empty when absent.
    fn string_list(&mut self, cx: &mut Cx<'_>, key: &str) -> Option<Vec<String>> {
        let Some(v) = self.get(key) else {
            return Some(Vec::new());
        };
        let span = v.span();
        let hint = format!("write {key} = [\"SHOP_TOKEN\", \"API_KEY\"]");
        let items = match v.get_ref() {
            DeValue::Array(items) => items,
            DeValue::String(s) => {
                cx.error(
                    span,
                    format!("{key} must be a list of names, found a string"),
                    Some(format!("write {key} = [{s:?}]")),
                );
                return None;
            }
            other => {
                cx.error(
                    span,
                    format!("{key} must be a list of names, found {}", a_type(other)),
                    Some(hint),
                );
                return None;
            }
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s)
                    if !s.is_empty()
                        && !s.starts_with(|c: char| c.is_ascii_digit())
                        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                {
                    out.push(s.to_string())
                }
                DeValue::String(s) => {
                    cx.error(
                        item.span(),
                        format!("{key}: {s:?} is not an environment variable name"),
                        Some("names hold letters, digits and \"_\", like \"SHOP_TOKEN\"".into()),
                    );
                    ok = false;
                }
                other => {
                    cx.error(
                        item.span(),
                        format!("{key} must hold names as strings, found {}", a_type(other)),
                        Some(hint.clone()),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// Reports every key that is not one of `known`, with a suggestion when one is close or
    /// `elsewhere` knows where the key belongs.
    fn finish(self, cx: &mut Cx<'_>, known: &[&str], elsewhere: impl Fn(&str) -> Option<String>) {
        for (k, v) in self.table.iter() {
            if !known.contains(&k.get_ref().as_ref()) {
                unknown_key(cx, k, v, &format!("in {}", self.what), known, &elsewhere);
            }
        }
    }
}

fn unknown_key(
    cx: &mut Cx<'_>,
    key: &Spanned<toml::de::DeString<'_>>,
    value: &Value<'_>,
    place: &str,
    known: &[&str],
    elsewhere: impl Fn(&str) -> Option<String>,
) {
    let name = key.get_ref().as_ref();
    let hint = match suggest(name, known) {
        Some(k) => format!("did you mean `{k}`?"),
        None => elsewhere(name).unwrap_or_else(|| format!("known keys here: {}", known.join(", "))),
    };
    let message = if value.get_ref().is_table() {
        format!("unknown table `{name}` {place}")
    } else {
        format!("unknown key `{name}` {place}")
    };
    cx.error(key.span(), message, Some(hint));
}

/// The known word closest to `word`, if it is close enough to be a typo: `ready_url` and
/// `readyUrl` for `ready-url`, `restat` for `restart`.
fn suggest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    let norm = word.to_lowercase().replace('_', "-");
    let squashed = |s: &str| s.replace('-', "");
    known
        .iter()
        .filter_map(|&k| {
            let d = if squashed(&norm) == squashed(k) {
                0
            } else {
                edit_distance(&norm, k)
            };
            (d <= 2 && d < k.chars().count()).then_some((d, k))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A name with the characters it may not hold replaced, for hints.
fn sanitize_name(name: &str, allow_dot: bool) -> String {
    let s: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || (allow_dot && c == '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches('-').to_string();
    if s.is_empty() { "web".into() } else { s }
}

fn a_type(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "a whole number",
        DeValue::Float(_) => "a decimal number",
        DeValue::Boolean(_) => "true/false",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "a list",
        DeValue::Table(_) => "a table",
    }
}

/// A plausible value for a key, for hints.
fn example(key: &str) -> &'static str {
    match key {
        "name" => "production",
        "state" => "postgres://rewind@db.internal/rewind",
        "kind" => "release-dir",
        "root" => "/srv/app",
        "restart" => "systemctl restart app",
        "ready-url" => "http://127.0.0.1:8080/health",
        "ready-command" => "curl -fsS http://127.0.0.1:8080/health",
        "current" => "cat /srv/app/VERSION",
        "deploy" => "mycli deploy {release}",
        "rollback" => "mycli rollback {release}",
        "workdir" => "/srv/app",
        "url" => "http://127.0.0.1:8080/health",
        "command" => "pg_isready -h db.internal",
        "errors" => "sum(http_requests_total{code=~'5..',release='{release}'})",
        "total" => "sum(http_requests_total{release='{release}'})",
        "latency" => {
            "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{release='{release}'}[1m])))"
        }
        "expect-body" => "ok",
        "release-header" => "x-release",
        "pg-bin" => "/usr/lib/postgresql/18/bin",
        _ => "…",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> PathBuf {
        PathBuf::from("/etc/rewind/rewind.toml")
    }

    #[test]
    fn example_parses() {
        let config = parse(EXAMPLE, &path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.environment.name, "production");
        assert_eq!(config.environment.state, None);
        assert_eq!(
            config.environment.lock_stale_after,
            DEFAULT_LOCK_STALE_AFTER
        );
        let names: Vec<_> = config.components.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["web", "frontend"]);
        let ComponentConfig::ReleaseDir(web) = config.component("web").unwrap() else {
            panic!("web is not a release-dir");
        };
        assert_eq!(
            web,
            &ReleaseDirConfig {
                root: "/srv/shop".into(),
                restart: Some("systemctl restart shop".into()),
                ready: Some(Readiness::Url("http://127.0.0.1:8080/health".into())),
                ready_timeout: Duration::from_secs(30),
                keep: 5,
                secret_env: vec![],
                command_timeout: DEFAULT_COMMAND_TIMEOUT,
            }
        );
        let ComponentConfig::Command(frontend) = config.component("frontend").unwrap() else {
            panic!("frontend is not a command component");
        };
        assert_eq!(
            frontend,
            &CommandConfig {
                current: Some("cat /srv/frontend/VERSION".into()),
                deploy: "vercel deploy --prod --meta release={release}".into(),
                rollback: "vercel rollback {release}".into(),
                ready: None,
                ready_timeout: DEFAULT_READY_TIMEOUT,
                workdir: "/etc/rewind".into(),
                secret_env: vec![],
                command_timeout: DEFAULT_COMMAND_TIMEOUT,
            }
        );
    }

    /// Every optional key the example shows commented out is valid when uncommented.
    #[test]
    fn example_commented_keys_are_valid() {
        let lines: Vec<&str> = EXAMPLE.lines().collect();
        let mut tried = 0;
        for (i, line) in lines.iter().enumerate() {
            let Some(setting) = line.strip_prefix("# ") else {
                continue;
            };
            let Some((key, _)) = setting.split_once(" = ") else {
                continue;
            };
            if !key.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                continue;
            }
            let mut edited = lines.clone();
            edited[i] = setting;
            let text = edited.join("\n");
            if let Err(e) = parse(&text, &path()) {
                panic!("uncommenting `{setting}` breaks the example:\n{e}");
            }
            tried += 1;
        }
        assert!(tried >= 10, "only {tried} commented keys");
    }
}

#[cfg(test)]
mod broken {
    //! Broken configurations and what must be said about them. The same cases live as files
    //! under `tests/broken-configs/` for the CLI's tests; `broken_config_files_match` keeps
    //! the two in step.

    use super::*;

    const ENV: &str = "[environment]\nname = \"production\"\n";

    /// (file name, config text, line of the expected error, text the error must contain).
    fn cases() -> Vec<(&'static str, String, usize, &'static str)> {
        let web = |extra: &str| {
            format!(
                "{ENV}\n[components.web]\nkind = \"release-dir\"\nroot = \"/srv/shop\"\n{extra}"
            )
        };
        let cmd = |body: &str| format!("{ENV}\n[components.frontend]\nkind = \"command\"\n{body}");
        // [watch] is at line 8, its first key at line 9.
        let watch = |body: &str| web(&format!("\n[watch]\n{body}"));
        // [[watch.probe]] is at line 8, name at 9, url at 10, `extra` from line 11.
        let probe = |extra: &str| {
            web(&format!(
                "\n[[watch.probe]]\nname = \"checkout\"\nurl = \"http://127.0.0.1:8080/checkout\"\n{extra}"
            ))
        };
        vec![
            ("01-syntax-error", web("ready-timeout = 30s\n"), 7, "invalid TOML"),
            (
                "02-missing-environment",
                "# deploys the shop\n\n[components.web]\nkind = \"release-dir\"\nroot = \"/srv/shop\"\n".into(),
                3,
                "[environment] is missing",
            ),
            (
                "03-missing-name",
                "[environment]\nstate = \"sqlite:state.db\"\n\n[components.web]\nkind = \"release-dir\"\nroot = \"/srv/shop\"\n".into(),
                1,
                "name is required",
            ),
            (
                "04-unknown-table",
                web("\n[notify]\nslack = \"#ops\"\n"),
                8,
                "unknown table `notify`",
            ),
            (
                "05-unknown-key-typo",
                web("restat = \"systemctl restart shop\"\n"),
                7,
                "did you mean `restart`?",
            ),
            (
                "06-unknown-key-underscore",
                web("ready_url = \"http://127.0.0.1:8080/health\"\n"),
                7,
                "did you mean `ready-url`?",
            ),
            (
                "07-missing-kind",
                format!("{ENV}\n[components.web]\nroot = \"/srv/shop\"\n"),
                4,
                "kind is required",
            ),
            (
                "08-unknown-kind",
                format!("{ENV}\n[components.web]\nkind = \"docker\"\nroot = \"/srv/shop\"\n"),
                5,
                "unknown kind \"docker\"; known kinds: release-dir, command",
            ),
            (
                "09-kind-not-supported-yet",
                format!("{ENV}\n[components.cluster]\nkind = \"kubernetes\"\n"),
                5,
                "not supported yet",
            ),
            (
                "10-missing-root",
                format!("{ENV}\n[components.web]\nkind = \"release-dir\"\nkeep = 5\n"),
                4,
                "root is required",
            ),
            (
                "11-bad-duration",
                web("ready-timeout = \"thirty\"\n"),
                7,
                "ready-timeout: `thirty` is not a duration",
            ),
            (
                "12-duration-without-unit",
                web("ready-timeout = 30\n"),
                7,
                "write ready-timeout = \"30s\"",
            ),
            ("13-keep-too-small", web("keep = 1\n"), 7, "at least 2 releases"),
            (
                "14-keep-not-a-number",
                web("keep = \"five\"\n"),
                7,
                "keep must be a whole number, found a string",
            ),
            (
                "15-two-readiness-checks",
                web("ready-url = \"http://127.0.0.1:8080/health\"\nready-command = \"curl -f localhost\"\n"),
                8,
                "either ready-url or ready-command, not both",
            ),
            (
                "16-ready-url-not-http",
                web("ready-url = \"127.0.0.1:8080/health\"\n"),
                7,
                "not an http:// or https:// URL",
            ),
            (
                "17-command-without-rollback",
                cmd("deploy = \"vercel deploy --prod --meta release={release}\"\n"),
                4,
                "rollback is required",
            ),
            (
                "18-rollback-without-release",
                cmd("deploy = \"vercel deploy --meta release={release}\"\nrollback = \"vercel rollback\"\n"),
                7,
                "rollback must say which release to go back to",
            ),
            (
                "19-bad-component-name",
                format!("{ENV}\n[components.\"web app\"]\nkind = \"release-dir\"\nroot = \"/srv/shop\"\n"),
                4,
                "component name \"web app\"",
            ),
            (
                "20-bad-state-url",
                "[environment]\nname = \"production\"\nstate = \"postgress://rewind:hunter2@db.internal/rewind\"\n\n[components.web]\nkind = \"release-dir\"\nroot = \"/srv/shop\"\n".into(),
                3,
                "neither a PostgreSQL URL nor an SQLite file",
            ),
            (
                "21-duplicate-key",
                web("root = \"/srv/other\"\n"),
                7,
                "duplicate key `root`",
            ),
            (
                "22-no-components",
                ENV.into(),
                1,
                "no components",
            ),
            (
                "23-lock-stale-too-short",
                "[environment]\nname = \"production\"\nlock-stale-after = \"1s\"\n\n[components.web]\nkind = \"release-dir\"\nroot = \"/srv/shop\"\n".into(),
                3,
                "too short",
            ),
            (
                "24-key-of-other-kind",
                web("deploy = \"deploy.sh {release}\"\n"),
                7,
                "is a key of kind = \"command\" components",
            ),
            (
                "25-bad-environment-name",
                "[environment]\nname = \"prod east\"\n\n[components.web]\nkind = \"release-dir\"\nroot = \"/srv/shop\"\n".into(),
                2,
                "may only hold letters",
            ),
            (
                "26-secret-env-not-a-list",
                web("secret-env = \"SHOP_TOKEN\"\n"),
                7,
                "write secret-env = [\"SHOP_TOKEN\"]",
            ),
            (
                "27-duplicate-table",
                web("\n[components.web]\nkind = \"release-dir\"\nroot = \"/srv/shop\"\n"),
                8,
                "duplicate table `[components.web]`",
            ),
            (
                "28-watch-alpha-not-a-percentage",
                watch("alpha = 0.01\n"),
                9,
                "write alpha = \"1%\"",
            ),
            (
                "29-watch-unknown-key",
                watch("windw = \"2h\"\n"),
                9,
                "did you mean `window`?",
            ),
            (
                "30-watch-bad-policy",
                watch("policy = \"rollback-only\"\n"),
                9,
                "known values: rollback, alert-only",
            ),
            (
                "31-watch-bad-quantile",
                watch("latency-quantile = \"95%\"\n"),
                9,
                "known values: p50, p90, p95, p99",
            ),
            (
                "32-watch-probe-single-table",
                web("\n[watch.probe]\nname = \"checkout\"\nurl = \"http://127.0.0.1:8080/checkout\"\n"),
                8,
                "write [[watch.probe]]",
            ),
            (
                "33-watch-probe-url-not-http",
                web("\n[[watch.probe]]\nname = \"checkout\"\nurl = \"127.0.0.1:8080/checkout\"\n"),
                10,
                "not an http:// or https:// URL",
            ),
            (
                "34-watch-duplicate-name",
                probe("\n[[watch.check]]\nname = \"checkout\"\ncommand = \"./check-checkout.sh\"\n"),
                13,
                "name \"checkout\" is taken",
            ),
            (
                "35-watch-prometheus-missing-query",
                web("\n[[watch.prometheus]]\nname = \"shop\"\nurl = \"http://127.0.0.1:9090\"\nerrors = 'sum(http_requests_total{code=~\"5..\"})'\n"),
                8,
                "total is required",
            ),
            (
                "36-watch-probe-rate-too-high",
                probe("rate = 5000\n"),
                11,
                "at most 1000",
            ),
            (
                "37-watch-availability-100",
                watch("availability-below = \"100%\"\n"),
                9,
                "below 100%",
            ),
            (
                "38-watch-check-bad-kind",
                web("\n[[watch.check]]\nname = \"database\"\ncommand = \"pg_isready -h db\"\nkind = \"db\"\n"),
                11,
                "known values: functional, database",
            ),
            (
                "39-watch-consecutive-zero",
                watch("consecutive-failures = 0\n"),
                9,
                "at least 1",
            ),
            (
                "40-watch-critical-quoted",
                probe("critical = \"true\"\n"),
                11,
                "write critical = true, without quotes",
            ),
            (
                "41-watch-key-in-probe",
                probe("window = \"30m\"\n"),
                11,
                "is a key of [watch]",
            ),
            (
                "42-watch-top-level-probe",
                web("\n[probe]\nname = \"checkout\"\nurl = \"http://127.0.0.1:8080/checkout\"\n"),
                8,
                "write [[watch.probe]]",
            ),
            (
                "43-watch-three-problems",
                watch("window = 30\npolicy = \"rollbak\"\nalpha = 0.01\n"),
                9,
                "write window = \"30s\"",
            ),
            (
                "44-watch-prometheus-url-not-http",
                web("\n[[watch.prometheus]]\nname = \"shop\"\nurl = \"htp://admin:hunter2@prom.internal:9090\"\nerrors = 'sum(errors)'\ntotal = 'sum(requests)'\n"),
                10,
                "not an http:// or https:// URL",
            ),
            (
                "45-watch-probe-bad-method",
                probe("method = \"FETCH\"\n"),
                11,
                "known values: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS",
            ),
            (
                "46-db-url-and-url-env",
                format!("{ENV}\n[components.db]\nkind = \"postgres\"\nurl = \"postgres://app@db.internal/app\"\nurl-env = \"DATABASE_URL\"\nmigrations = \"migrations\"\n"),
                7,
                "set either url or url-env, not both",
            ),
            (
                "47-sqlite-with-url",
                format!("{ENV}\n[components.db]\nkind = \"sqlite\"\nurl = \"postgres://app@db.internal/app\"\npath = \"app.db\"\nmigrations = \"migrations\"\n"),
                6,
                "url is for kind = \"postgres\"",
            ),
            (
                "48-freeze-command-without-unfreeze",
                format!("{ENV}\n[components.db]\nkind = \"postgres\"\nurl-env = \"DATABASE_URL\"\nmigrations = \"migrations\"\nfreeze = \"command\"\nfreeze-command = \"systemctl stop workers\"\n"),
                8,
                "needs both freeze-command and unfreeze-command",
            ),
            (
                "49-pitr-on-sqlite",
                format!("{ENV}\n[components.db]\nkind = \"sqlite\"\npath = \"app.db\"\nmigrations = \"migrations\"\n\n[components.db.pitr]\nstanza = \"main\"\n"),
                9,
                "point-in-time recovery is for kind = \"postgres\"",
            ),
            (
                "50-db-unknown-format",
                format!("{ENV}\n[components.db]\nkind = \"postgres\"\nurl-env = \"DATABASE_URL\"\nformat = \"flywy\"\nmigrations = \"migrations\"\n"),
                7,
                "did you mean format = \"flyway\"?",
            ),
            (
                "51-pg-bin-on-sqlite",
                format!("{ENV}\n[components.db]\nkind = \"sqlite\"\npath = \"app.db\"\nmigrations = \"migrations\"\npg-bin = \"/usr/lib/postgresql/18/bin\"\n"),
                8,
                "pg-bin is for kind = \"postgres\"",
            ),
            (
                "52-pg-bin-empty",
                format!("{ENV}\n[components.db]\nkind = \"postgres\"\nurl-env = \"DATABASE_URL\"\nmigrations = \"migrations\"\npg-bin = \"\"\n"),
                8,
                "pg-bin is empty",
            ),
            (
                "53-secret-not-declared",
                web("restart = \"curl -fsS https://hooks.example/{secret:hook-token}\"\n"),
                7,
                "{secret:hook-token} names no secret of [secrets]",
            ),
            (
                "54-secret-reference-malformed",
                web("restart = \"curl -H 'X-Token: {secret:hook token}' https://hooks.example/\"\n"),
                7,
                "malformed secret reference",
            ),
            (
                "55-secret-without-source",
                web("\n[secrets]\nhook-token = {}\n"),
                9,
                "say where the value comes from: env, file or value",
            ),
            (
                "56-secret-written-as-a-string",
                web("\n[secrets]\nhook-token = \"tok-3d5f\"\n"),
                9,
                "secrets.hook-token must say where the value comes from, found a string",
            ),
            (
                "57-secret-two-sources",
                web("\n[secrets]\nhook-token = { env = \"HOOK_TOKEN\", file = \"/run/secrets/hook\" }\n"),
                9,
                "set only one of env, file",
            ),
            (
                "58-secret-env-not-a-name",
                web("\n[secrets]\nhook-token = { env = \"HOOK TOKEN\" }\n"),
                9,
                "is not an environment variable name",
            ),
            (
                "59-secret-reference-where-none-is-read",
                "[environment]\nname = \"production\"\nlock-stale-after = \"{secret:t}\"\n\n[components.web]\nkind = \"release-dir\"\nroot = \"/srv/shop\"\n\n[secrets]\nt = { env = \"T\" }\n".to_string(),
                3,
                "{secret:…} is not read here",
            ),
        ]
    }

    fn errors_of(text: &str) -> ConfigErrors {
        match parse(text, &path()) {
            Ok(c) => panic!("expected errors, parsed: {c:?}\n{text}"),
            Err(e) => e,
        }
    }

    fn path() -> PathBuf {
        PathBuf::from("/etc/rewind/rewind.toml")
    }

    /// Is there an error at `line` whose printed form contains `needle`?
    fn reported(errors: &ConfigErrors, line: usize, needle: &str) -> bool {
        errors
            .0
            .iter()
            .any(|e| e.line == line && e.to_string().contains(needle))
    }

    #[test]
    fn broken_configs_are_reported_where_they_are_broken() {
        for (name, text, line, needle) in cases() {
            let errors = errors_of(&text);
            assert!(
                reported(&errors, line, needle),
                "{name}: wanted line {line} to say {needle:?}, got:\n{errors}\n---\n{text}"
            );
            for e in &errors.0 {
                assert!(e.hint.is_some(), "{name}: no hint in {e}");
                assert!(e.column >= 1 && e.line >= 1);
            }
        }
    }

    fn file_text(line: usize, needle: &str, text: &str) -> String {
        // The comment is line 1, so everything below it moves down one line.
        format!("# expect: {}: {needle}\n{text}", line + 1)
    }

    fn files_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/broken-configs")
    }

    /// Every file under tests/broken-configs/ says what it expects in its first line.
    #[test]
    fn broken_config_files_report_what_they_expect() {
        let mut seen = 0;
        for entry in std::fs::read_dir(files_dir()).expect("tests/broken-configs") {
            let file = entry.unwrap().path();
            if file.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let expect = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{}: no `# expect: LINE: text` line", file.display()));
            let (line, needle) = expect.split_once(": ").unwrap();
            let line: usize = line.parse().unwrap();
            let errors = match parse(&text, &file) {
                Ok(_) => panic!("{} parsed without errors", file.display()),
                Err(e) => e,
            };
            let printed = errors.to_string();
            assert!(
                printed.contains(&format!("{}:{line}:", file.display()))
                    && reported(&errors, line, needle),
                "{}: wanted line {line} to say {needle:?}, got:\n{printed}",
                file.display()
            );
            seen += 1;
        }
        assert!(seen >= 15, "only {seen} broken configs");
    }

    /// The files are the table above, so the CLI tests and these agree. Run with
    /// `REWIND_WRITE_BROKEN_CONFIGS=1` to write them after changing the table.
    #[test]
    fn broken_config_files_match() {
        let write = std::env::var_os("REWIND_WRITE_BROKEN_CONFIGS").is_some();
        for (name, text, line, needle) in cases() {
            let file = files_dir().join(format!("{name}.toml"));
            let want = file_text(line, needle, &text);
            if write {
                std::fs::create_dir_all(files_dir()).unwrap();
                std::fs::write(&file, &want).unwrap();
            }
            let have = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert_eq!(have, want, "{} differs from the table", file.display());
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = format!(
            "{ENV}\n[components.web]\nkind = \"release-dir\"\nroot = \"/srv/shop\"\n\
             ready-timeout = \"thirty\"\nrestat = \"systemctl restart shop\"\nkeep = 1\n"
        );
        let errors = errors_of(&text);
        assert_eq!(errors.0.len(), 3, "{errors}");
        assert!(reported(&errors, 7, "not a duration"), "{errors}");
        assert!(reported(&errors, 8, "did you mean `restart`?"), "{errors}");
        assert!(reported(&errors, 9, "keep = 1"), "{errors}");
        // One after another, in file order.
        let printed = errors.to_string();
        let lines: Vec<_> = printed.lines().filter(|l| l.starts_with('/')).collect();
        assert_eq!(lines.len(), 3, "{printed}");
        assert!(
            lines[0].starts_with("/etc/rewind/rewind.toml:7:17: ready-timeout:"),
            "{printed}"
        );
    }

    #[test]
    fn three_problems_in_watch_are_all_reported() {
        let (_, text, _, _) = cases()
            .into_iter()
            .find(|(name, ..)| *name == "43-watch-three-problems")
            .unwrap();
        let errors = errors_of(&text);
        assert_eq!(errors.0.len(), 3, "{errors}");
        assert!(reported(&errors, 9, "write window = \"30s\""), "{errors}");
        assert!(
            reported(&errors, 10, "did you mean policy = \"rollback\"?"),
            "{errors}"
        );
        assert!(reported(&errors, 11, "write alpha = \"1%\""), "{errors}");
    }

    #[test]
    fn problems_across_tables_and_components_all_count() {
        let text = "[environment]\nname = \"\"\n\n[components.web]\nkind = \"release-dir\"\n\n\
                    [components.api]\nkind = \"command\"\ndeploy = \"x {release}\"\n";
        let errors = errors_of(text);
        assert!(reported(&errors, 2, "name is empty"), "{errors}");
        assert!(reported(&errors, 4, "root is required"), "{errors}");
        assert!(reported(&errors, 7, "rollback is required"), "{errors}");
    }

    #[test]
    fn syntax_errors_do_not_hide_other_problems() {
        let text = format!(
            "{ENV}\n[components.web]\nkind = \"release-dir\"\nroot = \"/srv/shop\"\n\
             ready-timeout = 30s\nrestat = \"x\"\n"
        );
        let errors = errors_of(&text);
        assert!(reported(&errors, 7, "invalid TOML"), "{errors}");
        assert!(
            reported(&errors, 7, "write ready-timeout = \"30s\""),
            "{errors}"
        );
        assert!(reported(&errors, 8, "did you mean `restart`?"), "{errors}");
    }

    #[test]
    fn a_syntax_error_hides_only_what_it_may_have_caused() {
        // Twice the same table: one error, not one per key.
        let web = "[components.web]\nkind = \"release-dir\"\nroot = \"/srv/shop\"\n";
        let errors = errors_of(&format!("{ENV}{web}{web}"));
        assert_eq!(errors.0.len(), 1, "{errors}");
        // A broken value in one component does not hide a missing key in another; it does
        // hide the "missing" that its own recovery would cause.
        let text = format!(
            "{ENV}\n[components.web]\nkind = \"release-dir\"\nroot = /srv/shop\n\n\
             [components.api]\nkind = \"command\"\nrollback = \"r {{release}}\"\n"
        );
        let errors = errors_of(&text);
        assert!(reported(&errors, 6, "invalid TOML"), "{errors}");
        assert!(reported(&errors, 8, "deploy is required"), "{errors}");
        assert!(!reported(&errors, 4, "root is required"), "{errors}");
    }

    #[test]
    fn secrets_are_declared_and_referred_to() {
        use crate::secret::SecretSource;
        let text = format!(
            "{ENV}state = \"postgres://rewind:{{secret:state-pw}}@db/rewind\"\n\n\
             [components.web]\nkind = \"release-dir\"\nroot = \"/srv/shop\"\n\
             restart = \"curl -H 'X-Token: {{secret:hook}}' https://hooks.example/\"\n\
             ready-url = \"https://probe:{{secret:hook}}@127.0.0.1/health\"\n\n\
             [[watch.check]]\nname = \"db\"\ncommand = \"psql {{secret:hook}}\"\n\n\
             [secrets]\nhook = {{ env = \"HOOK_TOKEN\" }}\nstate-pw = {{ file = \"secrets/state\" }}\n\
             lit = {{ value = \"tok-3d5f\" }}\n"
        );
        let c = parse(&text, &path()).unwrap();
        assert_eq!(
            c.secrets["hook"].source,
            SecretSource::Env("HOOK_TOKEN".into())
        );
        assert_eq!(c.secrets["hook"].line, 16);
        assert_eq!(
            c.secrets["state-pw"].source,
            SecretSource::File(PathBuf::from("/etc/rewind/secrets/state"))
        );
        assert_eq!(
            c.secrets["lit"].source,
            SecretSource::Value("tok-3d5f".into())
        );
        // References stay as written: they are resolved when rewind acts.
        let ComponentConfig::ReleaseDir(web) = &c.components[0].1 else {
            panic!()
        };
        assert_eq!(
            web.restart.as_deref(),
            Some("curl -H 'X-Token: {secret:hook}' https://hooks.example/")
        );
        assert!(!format!("{c:?}").contains("tok-3d5f"));
    }

    #[test]
    fn secret_problems_are_all_reported_where_they_are_and_never_echo_a_value() {
        let text = format!(
            "{ENV}\n[components.web]\nkind = \"release-dir\"\nroot = \"/srv/shop\"\n\
             restart = \"run {{secret:hok}} tok-3d5f\"\n\n\
             [secrets]\nhook = {{ value = \"tok-3d5f\" }}\nplain = \"abc-9f1e\"\n\
             other = {{ value = \"{{secret:hook}}\" }}\n"
        );
        let errors = errors_of(&text);
        let printed = errors.to_string();
        assert!(
            !printed.contains("tok-3d5f") && !printed.contains("abc-9f1e"),
            "{printed}"
        );
        // The reference is placed at its own column.
        assert!(
            reported(&errors, 7, "{secret:hok} names no secret"),
            "{printed}"
        );
        assert!(printed.contains(":7:16:"), "{printed}");
        assert!(printed.contains("did you mean {secret:hook}?"), "{printed}");
        assert!(
            reported(&errors, 11, "must say where the value comes from"),
            "{printed}"
        );
        assert!(
            reported(&errors, 12, "cannot refer to another secret"),
            "{printed}"
        );
    }

    #[test]
    fn passwords_never_appear_in_messages() {
        for state in [
            "postgress://u:secret@h/db",
            "postgres:/u:secret@h/db",
            "postgres//u:secret@h/db",
            "u:secret@h/db",
            "mysql://u:secret@h/db",
            "postgres://u:secret@/db",
            "postgres://u:secret@ h/db",
        ] {
            let text = format!(
                "[environment]\nname = \"p\"\nstate = {state:?}\n\n[components.web]\n\
                 kind = \"release-dir\"\nroot = \"/srv\"\n"
            );
            let errors = errors_of(&text);
            let printed = errors.to_string();
            assert!(reported(&errors, 3, "state"), "{state}: {printed}");
            assert!(!printed.contains("secret"), "{state}: {printed}");
        }
        // A syntax error on the line does not echo it either.
        let text = "[environment]\nname = \"p\"\nstate = postgres://u:secret@h/db\n";
        let printed = errors_of(text).to_string();
        assert!(!printed.contains("secret"), "{printed}");
    }

    #[test]
    fn state_locations() {
        let cases = [
            (
                "postgres://rewind:pw@db/rewind",
                StateLocation::Postgres("postgres://rewind:pw@db/rewind".into()),
            ),
            (
                "postgresql://db/rewind",
                StateLocation::Postgres("postgresql://db/rewind".into()),
            ),
            (
                "sqlite:state.db",
                StateLocation::Sqlite("/etc/rewind/state.db".into()),
            ),
            (
                "sqlite://./data/rewind.sqlite",
                StateLocation::Sqlite("/etc/rewind/data/rewind.sqlite".into()),
            ),
            (
                "sqlite:///var/lib/rewind/x",
                StateLocation::Sqlite("/var/lib/rewind/x".into()),
            ),
            (
                "/var/lib/rewind/state.sqlite3",
                StateLocation::Sqlite("/var/lib/rewind/state.sqlite3".into()),
            ),
            (
                "data/state.db",
                StateLocation::Sqlite("/etc/rewind/data/state.db".into()),
            ),
        ];
        for (state, want) in cases {
            let text = format!(
                "[environment]\nname = \"p\"\nstate = {state:?}\n\n[components.web]\n\
                 kind = \"release-dir\"\nroot = \"shop\"\n"
            );
            let config = parse(&text, &path()).unwrap_or_else(|e| panic!("{state}: {e}"));
            assert_eq!(config.environment.state, Some(want), "{state}");
        }
        // Debug of the whole config hides the password.
        let text = "[environment]\nname = \"p\"\nstate = \"postgres://u:hunter2@db/r\"\n\n\
                    [components.web]\nkind = \"release-dir\"\nroot = \"shop\"\n";
        let config = parse(text, &path()).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn relative_paths_resolve_beside_the_file_and_order_is_kept() {
        let text = "[environment]\nname = \"staging.eu\"\nlock-stale-after = \"1m\"\n\n\
                    [components.zeta]\nkind = \"command\"\ndeploy = \"d {release}\"\n\
                    rollback = \"r {release}\"\nworkdir = \"./front\"\nready-command = \"true\"\n\
                    secret-env = [\"A_KEY\", \"B\"]\ncommand-timeout = \"2m\"\n\n\
                    [components.alpha]\nkind = \"release-dir\"\nroot = \"releases/../shop\"\nkeep = 2\n";
        let config = parse(text, &path()).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<_> = config.components.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha"]);
        assert_eq!(config.environment.lock_stale_after, Duration::from_secs(60));
        let ComponentConfig::Command(z) = &config.components[0].1 else {
            panic!()
        };
        assert_eq!(z.workdir, PathBuf::from("/etc/rewind/front"));
        assert_eq!(z.ready, Some(Readiness::Command("true".into())));
        assert_eq!(z.secret_env, ["A_KEY", "B"]);
        assert_eq!(z.command_timeout, Duration::from_secs(120));
        let ComponentConfig::ReleaseDir(a) = &config.components[1].1 else {
            panic!()
        };
        assert_eq!(a.root, PathBuf::from("/etc/rewind/releases/../shop"));
        assert_eq!(a.keep, 2);
        assert_eq!(a.ready, None);
    }

    #[test]
    fn columns_count_characters() {
        let text = format!(
            "{ENV}\n[components.web]\nkind = \"release-dir\"\nroot = \"/srv/ü\"\n# ünïcödé\nrestart = 5\n"
        );
        let errors = errors_of(&text);
        assert_eq!((errors.0[0].line, errors.0[0].column), (8, 11), "{errors}");
        let text = "[environment]\nname = \"p\"\n\n[components.\"wéb\"]\nkind = \"release-dir\"\nroot = \"/srv\"\nsecret-env = [\"Ü\", \"BAD NAME\"]\n";
        let errors = errors_of(text);
        assert!(
            errors.0.iter().any(|e| (e.line, e.column) == (7, 15)),
            "{errors}"
        );
        assert!(
            errors.0.iter().any(|e| (e.line, e.column) == (7, 20)),
            "{errors}"
        );
        assert!(
            errors.0.iter().any(|e| e.line == 4 && e.column == 13),
            "{errors}"
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("restat", RELEASE_DIR_KEYS), Some("restart"));
        assert_eq!(suggest("ready_url", RELEASE_DIR_KEYS), Some("ready-url"));
        assert_eq!(suggest("readyUrl", RELEASE_DIR_KEYS), Some("ready-url"));
        assert_eq!(
            suggest("READY_TIMEOUT", RELEASE_DIR_KEYS),
            Some("ready-timeout")
        );
        assert_eq!(suggest("colour", RELEASE_DIR_KEYS), None);
        assert_eq!(suggest("release_dir", KINDS), Some("release-dir"));
        assert_eq!(suggest("environmnet", TOP_KEYS), Some("environment"));
        assert_eq!(suggest("component", TOP_KEYS), Some("components"));
    }
}

#[cfg(test)]
mod watch {
    //! `[watch]`: defaults, the example's snippets, a full table, and what is never shown.

    use super::*;
    use crate::config::DEFAULT_WINDOW;

    const BASE: &str = "[environment]\nname = \"production\"\n\n[components.web]\n\
                        kind = \"release-dir\"\nroot = \"/srv/shop\"\n";

    fn path() -> PathBuf {
        PathBuf::from("/etc/rewind/rewind.toml")
    }

    fn watch_of(extra: &str) -> WatchConfig {
        let text = format!("{BASE}{extra}");
        parse(&text, &path())
            .unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
            .watch
    }

    fn errors_of(extra: &str) -> ConfigErrors {
        let text = format!("{BASE}{extra}");
        match parse(&text, &path()) {
            Ok(c) => panic!("expected errors, parsed: {:?}\n{text}", c.watch),
            Err(e) => e,
        }
    }

    fn probe(name: &str, url: &str) -> ProbeConfig {
        ProbeConfig {
            name: name.into(),
            url: url.into(),
            method: "GET".into(),
            rate: DEFAULT_PROBE_RATE,
            timeout: DEFAULT_PROBE_TIMEOUT,
            expect_status: None,
            expect_body: None,
            release_header: None,
            critical: false,
        }
    }

    #[test]
    fn absent_or_empty_watch_is_the_default() {
        assert_eq!(watch_of(""), WatchConfig::default());
        assert_eq!(watch_of("\n[watch]\n"), WatchConfig::default());
        let example = parse(EXAMPLE, &path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(example.watch, WatchConfig::default());
        assert!(!example.watch.has_signals());
    }

    /// The example's commented [watch] section, uncommented as a whole: its defaults are the
    /// real defaults and its probe, Prometheus and check snippets are valid.
    #[test]
    fn example_watch_section_uncommented() {
        let start = EXAMPLE.find("\n[watch]\n").expect("[watch] in the example");
        let (head, section) = EXAMPLE.split_at(start);
        let is_key = |s: &str| {
            s.split_once(" = ")
                .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        };
        let mut uncommented = 0;
        let section: Vec<String> = section
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if rest.starts_with("[[watch.") || is_key(rest.trim_start()) => {
                    uncommented += 1;
                    rest.to_string()
                }
                _ => line.to_string(),
            })
            .collect();
        assert!(uncommented >= 30, "only {uncommented} lines uncommented");
        let text = format!("{head}{}\n", section.join("\n"));
        let watch = parse(&text, &path())
            .unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
            .watch;
        let want = WatchConfig {
            latency_objective: Some(Duration::from_millis(300)),
            probes: vec![ProbeConfig {
                expect_status: Some(200),
                expect_body: Some("order placed".into()),
                release_header: Some("x-release".into()),
                critical: true,
                ..probe("checkout", "http://127.0.0.1:8080/checkout")
            }],
            prometheus: vec![PrometheusConfig {
                name: "shop".into(),
                url: "http://127.0.0.1:9090".into(),
                errors: r#"sum(http_requests_total{code=~"5..",release="{release}"})"#.into(),
                total: r#"sum(http_requests_total{release="{release}"})"#.into(),
                latency: None,
                interval: DEFAULT_SIGNAL_INTERVAL,
            }],
            checks: vec![CheckConfig {
                name: "database".into(),
                command: "pg_isready -h db.internal".into(),
                kind: CheckKind::Database,
                interval: DEFAULT_SIGNAL_INTERVAL,
                timeout: DEFAULT_CHECK_TIMEOUT,
            }],
            ..WatchConfig::default()
        };
        assert_eq!(watch, want);
    }

    #[test]
    fn a_full_watch_table() {
        let watch = watch_of(
            r#"
[watch]
window = "2h30m"
policy = "alert-only"
alpha = "0.5%"
baseline = "0s"
availability-below = "99.5%"
errors-above = "2%"
latency-regression = "150%"
latency-quantile = "p99"
latency-objective = "250ms"
consecutive-failures = 5

[[watch.probe]]
name = "checkout"
url = "https://shop.example.com/checkout"
method = "post"
rate = 2.5
timeout = "1500ms"
expect-status = 201
expect-body = "order placed"
release-header = "X-Release"
critical = true

[[watch.probe]]
name = "home_page-2"
url = "http://127.0.0.1:8080/"
rate = 1_000

[[watch.prometheus]]
name = "shop"
url = "http://user:pw@prom.internal:9090"
errors = 'sum(demo_http_requests_total{code=~"5..",release="{release}"})'
total = 'sum(demo_http_requests_total{release="{release}"})'
latency = 'histogram_quantile(0.99, sum by (le) (rate(x_bucket{release="{release}"}[1m])))'
interval = "30s"

[[watch.check]]
name = "database"
command = "pg_isready -h db"
kind = "Database"
interval = "5s"
timeout = "3s"

[[watch.check]]
name = "login"
command = "./login-works.sh"
"#,
        );
        let want = WatchConfig {
            window: Duration::from_secs(9000),
            policy: WatchPolicy::AlertOnly,
            alpha: 0.005,
            baseline: Duration::ZERO,
            availability_below: 0.995,
            errors_above: 0.02,
            latency_regression: 1.5,
            latency_quantile: Quantile(0.99),
            latency_objective: Some(Duration::from_millis(250)),
            consecutive_failures: 5,
            probes: vec![
                ProbeConfig {
                    method: "POST".into(),
                    rate: 2.5,
                    timeout: Duration::from_millis(1500),
                    expect_status: Some(201),
                    expect_body: Some("order placed".into()),
                    release_header: Some("X-Release".into()),
                    critical: true,
                    ..probe("checkout", "https://shop.example.com/checkout")
                },
                ProbeConfig {
                    rate: 1000.0,
                    ..probe("home_page-2", "http://127.0.0.1:8080/")
                },
            ],
            prometheus: vec![PrometheusConfig {
                name: "shop".into(),
                url: "http://user:pw@prom.internal:9090".into(),
                errors: r#"sum(demo_http_requests_total{code=~"5..",release="{release}"})"#
                    .into(),
                total: r#"sum(demo_http_requests_total{release="{release}"})"#.into(),
                latency: Some(
                    r#"histogram_quantile(0.99, sum by (le) (rate(x_bucket{release="{release}"}[1m])))"#
                        .into(),
                ),
                interval: Duration::from_secs(30),
            }],
            checks: vec![
                CheckConfig {
                    name: "database".into(),
                    command: "pg_isready -h db".into(),
                    kind: CheckKind::Database,
                    interval: Duration::from_secs(5),
                    timeout: Duration::from_secs(3),
                },
                CheckConfig {
                    name: "login".into(),
                    command: "./login-works.sh".into(),
                    kind: CheckKind::Functional,
                    interval: DEFAULT_SIGNAL_INTERVAL,
                    timeout: DEFAULT_CHECK_TIMEOUT,
                },
            ],
        };
        // Compared field by field first, for a readable failure.
        assert_eq!(watch.probes, want.probes);
        assert_eq!(watch.prometheus, want.prometheus);
        assert_eq!(watch.checks, want.checks);
        assert!((watch.alpha - want.alpha).abs() < 1e-12);
        assert!((watch.availability_below - want.availability_below).abs() < 1e-12);
        assert!((watch.latency_regression - want.latency_regression).abs() < 1e-12);
        assert_eq!(
            WatchConfig {
                alpha: want.alpha,
                availability_below: want.availability_below,
                latency_regression: want.latency_regression,
                ..watch
            },
            want
        );
    }

    #[test]
    fn signals_without_a_watch_header_and_inline_tables() {
        let watch = watch_of(
            "\n[[watch.check]]\nname = \"db\"\ncommand = \"pg_isready\"\n\n\
             [watch]\nwindow = \"10m\"\n",
        );
        assert_eq!(watch.window, Duration::from_secs(600));
        assert_eq!(watch.checks.len(), 1);
        let watch = watch_of(
            "\n[watch]\nprobe = [{ name = \"a\", url = \"http://h/a\" }, \
             { name = \"b\", url = \"http://h/b\" }]\n",
        );
        let names: Vec<_> = watch.probes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(watch.window, DEFAULT_WINDOW);
    }

    #[test]
    fn every_problem_in_signals_is_reported() {
        // Line 7 is blank, [[watch.probe]] at 8.
        let errors = errors_of(
            "\n[[watch.probe]]\nname = \"check out\"\nurl = \"ftp://h/x\"\nmethod = 5\n\
             rate = 0\ntimeout = \"2\"\nexpect-status = 700\nexpect-body = \"\"\n\
             release-header = \"x-release: v1\"\ncritical = 1\nretries = 3\n\n\
             [[watch.check]]\nkind = \"functional\"\ninterval = \"0s\"\n",
        );
        let at = |line: usize, needle: &str| {
            assert!(
                errors
                    .0
                    .iter()
                    .any(|e| e.line == line && e.to_string().contains(needle)),
                "line {line}: {needle:?} in\n{errors}"
            )
        };
        at(9, "may only hold letters");
        at(10, "not an http:// or https:// URL");
        at(11, "method must be one of GET");
        at(12, "rate = 0 is out of range");
        at(13, "write timeout = \"2s\"");
        at(14, "between 100 and 599");
        at(15, "expect-body is empty");
        at(16, "not an HTTP header name");
        at(17, "write critical = true or critical = false");
        at(18, "unknown key `retries` in [[watch.probe]]");
        at(20, "[[watch.check]]: name is required");
        at(20, "[[watch.check]]: command is required");
        at(22, "interval must be longer than zero");
        assert_eq!(errors.0.len(), 13, "{errors}");
        for e in &errors.0 {
            assert!(e.hint.is_some(), "no hint: {e}");
        }
    }

    #[test]
    fn wrong_shapes_say_what_to_write() {
        let cases = [
            (
                "\n[watch]\nlatency-quantile = \"95%\"\n",
                "did you mean latency-quantile = \"p95\"?",
            ),
            (
                "\n[watch]\nlatency-quantile = \"0.9\"\n",
                "did you mean latency-quantile = \"p90\"?",
            ),
            (
                "\n[watch]\nlatency-quantile = \"99th\"\n",
                "did you mean latency-quantile = \"p99\"?",
            ),
            ("[[watch]]\nwindow = \"1h\"\n", "single brackets"),
            (
                "\n[watch.check]\nname = \"db\"\ncommand = \"true\"\n",
                "write [[watch.check]]",
            ),
            (
                "\n[watch]\nprobe = \"checkout\"\n",
                "must be a list of tables",
            ),
            ("\n[watch]\ncheck = [1]\n", "must hold tables"),
            (
                "\n[watch]\nurl = \"http://h\"\n",
                "[[watch.probe]] or [[watch.prometheus]]",
            ),
            ("\n[watch]\nprobes = []\n", "did you mean `probe`?"),
            (
                "\n[watch]\npolicy = \"alert_only\"\n",
                "did you mean policy = \"alert-only\"?",
            ),
            (
                "\n[watch]\nlatency-quantile = \"p999\"\n",
                "did you mean latency-quantile = \"p99\"?",
            ),
            (
                "\n[watch]\nerrors-above = 1\n",
                "write errors-above = \"1%\"",
            ),
            (
                "\n[watch]\navailability-below = 99.9\n",
                "write availability-below = \"99.9%\"",
            ),
            ("\n[watch]\nalpha = \"60%\"\n", "above 0% and at most 50%"),
            ("\n[watch]\nalpha = \"0%\"\n", "above 0% and at most 50%"),
            ("\n[watch]\nerrors-above = \"1\"\n", "with a % sign"),
            (
                "\n[watch]\nlatency-regression = \"0%\"\n",
                "must be above 0%",
            ),
            ("\n[watch]\nwindow = \"500ms\"\n", "at least \"1s\""),
            (
                "\n[watch]\nbaseline = \"soon\"\n",
                "write baseline = \"20s\"",
            ),
            (
                "\n[watch]\nlatency-objective = 300\n",
                "write latency-objective = \"300s\"",
            ),
            (
                "\n[watch]\nconsecutive-failures = \"3\"\n",
                "write consecutive-failures = 3, without quotes",
            ),
            (
                "\n[watch]\nconsecutive-failures = 2.0\n",
                "write consecutive-failures = 2",
            ),
            (
                "\n[[watch.prometheus]]\nname = \"p\"\nurl = \"http://h:9090\"\nerrors = \"e\"\ntotal = \"t\"\ninterval = \"100ms\"\n",
                "interval = \"100ms\" is too short",
            ),
            (
                "\n[[watch.probe]]\nname = \"p\"\nurl = \"http://h\"\nrate = \"10\"\n",
                "write rate = 10, without quotes",
            ),
            (
                "\n[[watch.probe]]\nname = \"p\"\nurl = \"http://h\"\ncommand = \"x\"\n",
                "`command` is a key of [[watch.check]] tables",
            ),
            (
                "\n[[watch.check]]\ncommand = \"x\"\n",
                "add name = \"checkout\"",
            ),
            (
                "\n[[watch.prometheus]]\nname = \"p\"\nurl = \"http://h\"\ntotal = \"t\"\n",
                "errors is required",
            ),
        ];
        // At the top of the file, before any table.
        for (top, needle) in [
            ("watch = \"on\"\n", "write [watch] on its own line"),
            ("window = \"1h\"\n", "`window` belongs under [watch]"),
        ] {
            let text = format!("{top}{BASE}");
            let errors = parse(&text, &path()).unwrap_err();
            assert!(
                errors.to_string().contains(needle),
                "{top:?}: wanted {needle:?} in\n{errors}"
            );
        }
        for (extra, needle) in cases {
            let errors = errors_of(extra);
            assert!(
                errors.to_string().contains(needle),
                "{extra:?}: wanted {needle:?} in\n{errors}"
            );
            for e in &errors.0 {
                assert!(e.hint.is_some(), "{extra:?}: no hint in {e}");
            }
        }
    }

    #[test]
    fn names_are_unique_across_signals() {
        let errors = errors_of(
            "\n[[watch.probe]]\nname = \"shop\"\nurl = \"http://h\"\n\n\
             [[watch.prometheus]]\nname = \"shop\"\nurl = \"http://p:9090\"\nerrors = \"e\"\ntotal = \"t\"\n\n\
             [[watch.check]]\nname = \"shop\"\ncommand = \"true\"\n",
        );
        assert_eq!(errors.0.len(), 2, "{errors}");
        assert_eq!((errors.0[0].line, errors.0[1].line), (13, 19), "{errors}");
        assert!(
            errors.0[0].message.contains("[[watch.probe]] at line 9"),
            "{errors}"
        );
        assert!(
            errors.0[1].message.contains("[[watch.probe]] at line 9"),
            "{errors}"
        );
    }

    #[test]
    fn url_passwords_never_appear() {
        for url in [
            "htp://admin:hunter2@prom:9090",
            "admin:hunter2@prom:9090",
            "http://admin:hunter2@ prom:9090",
            "http://admin:hunter2@",
        ] {
            for table in ["probe", "prometheus"] {
                let errors = errors_of(&format!(
                    "\n[[watch.{table}]]\nname = \"p\"\nurl = {url:?}\nerrors = \"e\"\ntotal = \"t\"\n"
                ));
                let printed = errors.to_string();
                assert!(printed.contains("rewind.toml:10:"), "{url}: {printed}");
                assert!(!printed.contains("hunter2"), "{url}: {printed}");
            }
        }
        // A valid URL with a password parses, and is kept as written.
        let watch = watch_of(
            "\n[[watch.prometheus]]\nname = \"p\"\nurl = \"https://u:hunter2@prom\"\nerrors = \"e\"\ntotal = \"t\"\n",
        );
        assert_eq!(watch.prometheus[0].url, "https://u:hunter2@prom");
    }
}
