//! Reading and validating `rewind.toml`: TOML text in, a [`Config`] or every problem with the
//! file out. Pure: it reads only the text it is given, so `rewind check` can run anywhere.
//!
//! The TOML is read into spanned tables (not deserialized with serde) so that every problem,
//! including a missing key, can be reported at a line and column, and so that all of them are
//! reported in one pass instead of stopping at the first.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{
    CommandConfig, ComponentConfig, Config, DEFAULT_COMMAND_TIMEOUT, DEFAULT_KEEP,
    DEFAULT_LOCK_STALE_AFTER, DEFAULT_READY_TIMEOUT, EnvironmentConfig, Readiness,
    ReleaseDirConfig, StateLocation,
};
use crate::redact::redact_url_passwords;
use crate::units::{format_duration, parse_duration};

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

# Components are deployed in the order they are listed here and rolled back in reverse.
# The name after "components." is what --component NAME and --artifact NAME=PATH refer to.

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

const TOP_KEYS: &[&str] = &["environment", "components"];
const ENV_KEYS: &[&str] = &["name", "state", "lock-stale-after"];
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
const KINDS: &[&str] = &["release-dir", "command"];
/// Kinds that are planned but not built yet: named so that the error can say so.
const FUTURE_KINDS: &[&str] = &["sqlite", "postgres", "files", "git", "kubernetes"];
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
                    // Values are echoed in messages; passwords in URLs never are.
                    message: redact_url_passwords(&p.message),
                    hint: p.hint.as_deref().map(redact_url_passwords),
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
            _ => unknown_key(cx, key, value, "at the top level", TOP_KEYS, |k| {
                if ENV_KEYS.contains(&k) {
                    Some(format!("`{k}` belongs under [environment]"))
                } else if RELEASE_DIR_KEYS.contains(&k) || COMMAND_KEYS.contains(&k) {
                    Some(format!("`{k}` belongs in a [components.NAME] table"))
                } else {
                    Some("a config file has only [environment] and [components.NAME] tables".into())
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
    Some(Config {
        path: cx.path.to_path_buf(),
        environment: environment??,
        components: components?,
    })
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
    f.finish(cx, ENV_KEYS, |_| None);
    Some(EnvironmentConfig {
        name: name?.0,
        state: state?,
        lock_stale_after: lock_stale_after?.0,
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

/// The state text as it may be shown: a URL with a password is masked, and anything that
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

/// For an optional key: `Some(None)` when absent, `None` when present but invalid.
fn bad_if_present(
    f: &Fields<'_, '_>,
    key: &str,
    value: Option<(String, Span)>,
) -> Option<Option<String>> {
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
    if let Some((u, span)) = &url {
        let lower = u.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("http://")
            .or_else(|| lower.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.starts_with('/'))
            || u.contains(char::is_whitespace)
        {
            let hint = if u.contains("://") || u.contains(char::is_whitespace) {
                "write ready-url = \"http://127.0.0.1:8080/health\", or use ready-command for \
                 any other check"
                    .to_string()
            } else {
                format!("write ready-url = \"http://{u}\"")
            };
            cx.error(
                span.clone(),
                format!("ready-url: {u:?} is not an http:// or https:// URL"),
                Some(hint),
            );
            ok = false;
        }
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
                        format!("add {key} = \"{}\"", example(key))
                    }),
                );
            }
            return None;
        };
        let span = v.span();
        match v.get_ref() {
            DeValue::String(s) if s.trim().is_empty() => {
                let hint = if required {
                    format!("write {key} = \"{}\"", example(key))
                } else {
                    format!("write {key} = \"{}\", or remove the line", example(key))
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
                    _ => example(key).to_string(),
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
        let Some(v) = self.get(key) else {
            return Some((default, self.header.clone()));
        };
        let span = v.span();
        let default_text = format_duration(default);
        match v.get_ref() {
            DeValue::String(s) => match parse_duration(s) {
                Ok(d) if d.is_zero() => {
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
                format!("{ENV}\n[components.db]\nkind = \"postgres\"\n"),
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
