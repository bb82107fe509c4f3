//! One module per command. `dispatch` loads what a command needs (config, store) and maps
//! failures to the exit-code classes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use rewind_core::config::{ComponentConfig, Config, StateLocation, WatchConfig};
use rewind_core::plan::Ledger;
use rewind_core::redact::Redactor;
use rewind_core::{Run, secret};
use rewind_store::{Access, Store, StoreError};

use crate::cli::{Cli, Command};
use crate::error::{CliError, CliResult, usage};
use crate::output::Printer;

mod adopt;
mod audit;
mod check;
mod db;
mod demo;
mod deploy;
mod history;
mod init;
mod rollback;
mod status;
mod watch;

pub async fn dispatch(cli: Cli, printer: &Printer) -> CliResult<ExitCode> {
    use Access::{Read, Write};
    let path = &cli.config;
    match cli.command {
        Command::Init { force } => init::run(path, force, printer),
        Command::Check => check::run(path, printer),
        Command::Deploy(args) => {
            let env = Env::load(path, Write, printer).await?;
            let r = deploy::run(&env, args, printer).await;
            env.done(r, printer).await
        }
        Command::Status => {
            let env = Env::load(path, Read, printer).await?;
            let r = status::run(&env, printer).await;
            env.done(r, printer).await
        }
        Command::History { runs, run } => {
            let env = Env::load(path, Read, printer).await?;
            let r = match run {
                Some(id) => history::run_detail(&env, &id, printer).await,
                None => history::run(&env, runs, printer).await,
            };
            env.done(r, printer).await
        }
        Command::Plan(args) => {
            let env = Env::load(path, Read, printer).await?;
            let r = match args.deploy {
                Some(release) => {
                    let options = rewind_core::dbplan::DeployOptions {
                        accept_drift: args.accept_drift,
                        accept_row_loss: args.target.accept_row_loss,
                    };
                    deploy::plan(&env, &release, &args.artifacts, options, printer).await
                }
                None => rollback::plan(&env, args.target, printer).await,
            };
            env.done(r, printer).await
        }
        Command::Backup { command } => {
            // Only `list` just reads: the others record in the audit log (and a restore
            // runs as a run).
            let access = match command {
                crate::cli::BackupCommand::List { .. } => Read,
                _ => Write,
            };
            let env = Env::load(path, access, printer).await?;
            let r = db::backup(&env, command, printer).await;
            env.done(r, printer).await
        }
        Command::Rollback(args) => {
            let env = Env::load(path, Write, printer).await?;
            let r = rollback::rollback(&env, args, printer).await;
            env.done(r, printer).await
        }
        Command::Watch => {
            let env = Env::load(path, Write, printer).await?;
            let r = watch::attach(&env, printer).await;
            env.done(r, printer).await
        }
        Command::Demo { fault, keep } => demo::run(&fault, keep, printer).await,
        Command::DemoService { args } => Ok(demo_service::run(args.into_iter())),
        Command::Resume => {
            let env = Env::load(path, Write, printer).await?;
            let r = rollback::resume(&env, printer).await;
            env.done(r, printer).await
        }
        Command::Audit { command } => {
            // The audit commands report a store that does not match the evidence instead of
            // refusing: `audit log` shows what is there, `audit verify` fails with it.
            let env = Env::open(path, Read, Guard::Report, printer).await?;
            let r = audit::run(&env, command, printer).await;
            env.done(r, printer).await
        }
        Command::Adopt { yes } => {
            // Without --yes it only shows what it would record: nothing is created or written.
            let access = if yes { Write } else { Read };
            let env = Env::open(path, access, Guard::Report, printer).await?;
            let r = adopt::run(&env, yes, printer).await;
            env.done(r, printer).await
        }
    }
}

/// Reads and validates the config file. Exit 2 with every problem listed when it is bad.
pub fn load_config(path: &Path) -> CliResult<Config> {
    let bytes = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(usage(format!("no config file at {}", path.display()))
                .hint("create one with `rewind init`, or point at it with -c/--config PATH"));
        }
        Err(e) => return Err(usage(format!("cannot read {}: {e}", path.display()))),
    };
    let text =
        String::from_utf8(bytes).map_err(|e| not_utf8(path, e.as_bytes(), e.utf8_error()))?;
    let abs = absolute(path);
    rewind_core::config::parse(&text, &abs).map_err(|errs| {
        let n = errs.0.len();
        CliError::new(
            crate::error::Class::Usage,
            anyhow::anyhow!(
                "{} has {n} problem{}:\n{errs}",
                path.display(),
                if n == 1 { "" } else { "s" }
            ),
        )
        .hint("fix the lines above, then run `rewind check`")
    })
}

/// A config file that is not UTF-8: where the first bad byte is, as a line and column (in
/// characters, as editors count them) and a byte offset.
fn not_utf8(path: &Path, bytes: &[u8], e: std::str::Utf8Error) -> CliError {
    let offset = e.valid_up_to();
    // Everything before the bad byte is valid UTF-8.
    let before = std::str::from_utf8(&bytes[..offset]).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let bad: Vec<String> = bytes[offset..]
        .iter()
        .take(e.error_len().unwrap_or(bytes.len() - offset).max(1))
        .map(|b| format!("0x{b:02X}"))
        .collect();
    usage(format!(
        "{}:{line}:{column}: the file is not UTF-8 text: byte {} at offset {offset} is not valid UTF-8{}",
        path.display(),
        bad.join(" "),
        if e.error_len().is_none() {
            " (the file ends inside a character)"
        } else {
            ""
        }
    ))
    .hint(format!(
        "save the file as UTF-8 (from Latin-1: `iconv -f latin1 -t utf-8 {0} > {0}.utf8`, then move it over {0}), or remove the character at line {line}, column {column}",
        path.display()
    ))
}

pub fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

/// An environment ready to work on: its config (as written: `{secret:NAME}` references
/// stay references), its store, the values of its secrets and the redactor that hides them.
/// The store and the printer both redact what passes through them.
pub struct Env {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub redactor: Redactor,
    pub secrets: crate::secrets::Values,
    pub name: String,
    /// Whether the command may write to the store.
    pub access: Access,
    /// What the comparison of the store with the environment's evidence found (only with
    /// `Guard::Report`; with `Guard::Refuse` such a store is refused).
    pub problem: Option<crate::guard::Problem>,
}

/// What `Env::open` does with a store that does not match the environment's evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Refuse it (every command but the audit commands and `adopt`).
    Refuse,
    /// Hand the problem to the command (`Env::problem`).
    Report,
}

impl Env {
    /// Loads the config and opens its store for `access`; refuses a store that does not
    /// match the environment's evidence (see `crate::guard`).
    pub async fn load(path: &Path, access: Access, printer: &Printer) -> CliResult<Env> {
        Self::open(path, access, Guard::Refuse, printer).await
    }

    pub async fn open(
        path: &Path,
        access: Access,
        guard: Guard,
        printer: &Printer,
    ) -> CliResult<Env> {
        let config = load_config(path)?;
        let secrets = crate::secrets::Values::read(&config, true);
        let written = state_location(&config);
        let location = match &written {
            StateLocation::Postgres(url) => StateLocation::Postgres(
                secret::substitute(url, "state", &secrets.lookup()).map_err(|e| {
                    usage(format!("{}: [environment] {e}", config.path.display()))
                        .hint("set the secret's source (see [secrets]), then run the command again")
                })?,
            ),
            other => other.clone(),
        };
        let redactor = crate::secrets::redactor(&config, &secrets, Some(&location));
        printer.set_redactor(redactor.clone());
        let sync = config.environment.state_sync;
        let open = |access| {
            let (location, redactor) = (&location, redactor.clone());
            async move {
                let store = rewind_store::open_for(location, sync, access)
                    .await
                    .map_err(store_error)?;
                Ok::<Arc<dyn Store>, CliError>(Arc::new(rewind_store::Redacted::new(
                    store, redactor,
                )))
            }
        };
        // The store is compared with the evidence before anything is written to it: an
        // SQLite store is looked at read-only first (a missing or emptied file is not
        // created when it is refused).
        let sqlite = matches!(location, StateLocation::Sqlite(_));
        let first = if sqlite { Access::Read } else { access };
        let mut store = open(first).await?;
        let problem = crate::guard::check(&config, store.as_ref())
            .await
            .map_err(store_error)?;
        if let (Some(p), Guard::Refuse) = (&problem, guard) {
            return Err(refusal(
                p,
                &config.environment.name,
                &location.display_safe(),
            ));
        }
        if first != access {
            drop(store);
            store = open(access).await?;
        }
        let env = Env {
            name: config.environment.name.clone(),
            config,
            store,
            redactor,
            secrets,
            access,
            problem,
        };
        Ok(env)
    }

    /// A component's config ready to act with: its `{secret:NAME}` references filled in.
    /// Exit 2, naming the field and the secret, when one cannot be read.
    pub fn component(&self, name: &str, cfg: &ComponentConfig) -> CliResult<ComponentConfig> {
        secret::resolve(cfg, &self.secrets.lookup()).map_err(|e| {
            usage(format!("component `{name}`: {e}"))
                .hint("provide the secret (see [secrets] in the config), then run the command again; nothing was changed")
        })
    }

    /// `[watch]` ready to watch with: its references filled in.
    pub fn watch_config(&self) -> CliResult<WatchConfig> {
        secret::resolve(&self.config.watch, &self.secrets.lookup()).map_err(|e| {
            usage(format!("[watch]: {e}")).hint(
                "provide the secret (see [secrets] in the config), then run the command again",
            )
        })
    }

    /// The components of a recorded run, ready to act with: the secrets its record masked
    /// are taken from the config as it is now (the rest is what was planned), then the
    /// references are filled in. Exit 2, naming the field, when that cannot be done.
    pub fn run_components(&self, run: &Run) -> CliResult<Vec<(String, ComponentConfig)>> {
        run.components
            .iter()
            .map(|(name, sealed)| {
                let live = self.config.component(name);
                let whole = secret::unseal(sealed, live, &self.redactor).map_err(|e| {
                    usage(format!("run {}: component `{name}`: {e}", run.id)).hint(format!(
                        "put that value in {} back as it was when the run started (`rewind history --run {}` shows the plan, secrets masked), finish the run, then change it; a secret given as {{secret:NAME}} or url-env can change at any time",
                        self.config.path.display(),
                        run.id
                    ))
                })?;
                Ok((name.clone(), self.component(name, &whole)?))
            })
            .collect()
    }

    pub async fn ledger(&self) -> CliResult<Ledger> {
        Ok(Ledger {
            current: self.store.current_release(&self.name).await?,
            deployed: self.store.deployed(&self.name).await?,
            releases: self.store.releases(&self.name).await?,
        })
    }

    /// Ends a command: a store error is said in words (a server that stopped answering, a
    /// damaged or read-only file, an unreadable entry), and after a command that may have
    /// written, the environment's markers are brought up to the store's head.
    pub async fn done(
        &self,
        result: CliResult<ExitCode>,
        printer: &Printer,
    ) -> CliResult<ExitCode> {
        let store_failed = result.as_ref().is_err_and(|e| {
            e.error
                .chain()
                .any(|c| c.downcast_ref::<StoreError>().is_some())
        });
        let result = match result {
            Err(e) => Err(self.refine(e).await),
            ok => ok,
        };
        if self.access == Access::Write && self.problem.is_none() && !store_failed {
            self.write_markers(printer).await;
        }
        result
    }

    /// Rewrites the markers from the store's head; a marker that cannot be written is a
    /// warning (the store itself holds everything).
    pub async fn write_markers(&self, printer: &Printer) {
        let location = state_location(&self.config).display_safe();
        // When the store itself fails here (it is gone or unreadable), the command's own
        // error, if any, says so.
        if let Ok(failed) =
            crate::guard::write_markers(&self.config, self.store.as_ref(), &location).await
        {
            for f in failed {
                printer.warn(format!(
                    "cannot write the environment marker {f}; an emptied or replaced state store is not noticed from there"
                ));
            }
        }
    }

    async fn refine(&self, err: CliError) -> CliError {
        let Some(found) = err
            .error
            .chain()
            .find_map(|c| c.downcast_ref::<StoreError>())
        else {
            return err;
        };
        // A holder that lost its lock was taken over: blocked by another holder (exit 3),
        // whatever the command was doing when its write was refused.
        let class = match found {
            StoreError::LockLost { .. } => crate::error::Class::Blocked,
            _ => err.class,
        };
        let better = self.store.explain(found).await;
        let hints = store_hints(better.as_ref().unwrap_or(found));
        let mut out = match better {
            Some(b) => CliError {
                class: err.class,
                error: anyhow::Error::new(b),
                hints: err.hints,
                detail: err.detail,
            },
            None => err,
        };
        out.class = class;
        for h in hints {
            if !out.hints.contains(&h) {
                out.hints.push(h);
            }
        }
        out
    }
}

/// The error for a store that does not match the environment's evidence.
pub fn refusal(p: &crate::guard::Problem, env: &str, location: &str) -> CliError {
    CliError::new(
        crate::error::Class::Failed,
        anyhow::anyhow!("{}", p.message(env, location)),
    )
    .hint(crate::guard::Problem::HINT_RESTORE)
    .hint(crate::guard::Problem::HINT_ADOPT)
    .detail(serde_json::json!({"store_mismatch": p}))
}

/// A store error as a CLI error, with what to do.
fn store_error(e: StoreError) -> CliError {
    let mut hints = store_hints(&e);
    if hints.is_empty() {
        hints.push("check `state` in [environment] (or REWIND_STATE_URL)".to_string());
    }
    let mut err = CliError::new(crate::error::Class::Failed, e);
    for h in hints {
        err = err.hint(h);
    }
    err
}

/// What to do about a store error, by kind.
fn store_hints(e: &StoreError) -> Vec<String> {
    let h: &[&str] = match e {
        StoreError::NotAStore { .. } => &[
            "restore the state store from a backup copy (copy the file together with its -wal file, or use `sqlite3 FILE .backup COPY`); to start a new ledger instead, move the file aside and run `rewind adopt --yes`, which records the restart in the new ledger's audit log",
        ],
        StoreError::ReadOnly { .. } => &[
            "make the file and its directory writable for this command; `status`, `history`, `plan`, `audit log` and `audit verify` only read and work on a read-only store",
        ],
        StoreError::Newer { .. } => &["use the rewind that wrote it, or a newer one"],
        StoreError::Unreachable { .. } => &[
            "start the PostgreSQL server (or fix the network), or check `state` in [environment] (or REWIND_STATE_URL); an interrupted run is finished by `rewind resume` once it answers",
        ],
        StoreError::Refused { .. } => &[
            "check the user, password and database in the state URL (`state` in [environment] or REWIND_STATE_URL)",
        ],
        StoreError::LockLost { .. } => &[
            "the run goes on under the holder named above (`rewind status` shows it); this process stored nothing after losing the lock",
        ],
        StoreError::Unreadable(_) => &[
            "the entry was changed outside rewind, or the file is damaged: restore the state store from a backup copy; `rewind audit verify` lists every audit entry that cannot be read",
        ],
        _ => &[],
    };
    h.iter().map(|s| s.to_string()).collect()
}

/// The store location: `REWIND_STATE_URL` wins (so a password can stay out of the file),
/// then `state` in the config, then `.rewind/state.db` beside the config file.
pub fn state_location(config: &Config) -> StateLocation {
    if let Ok(url) = std::env::var("REWIND_STATE_URL")
        && !url.is_empty()
    {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return StateLocation::Postgres(url);
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(&url);
        return StateLocation::Sqlite(absolute(Path::new(path)));
    }
    config
        .environment
        .state
        .clone()
        .unwrap_or_else(|| StateLocation::Sqlite(config.dir().join(".rewind").join("state.db")))
}

/// Release names end up in paths and shell commands, so they are kept plain.
pub fn validate_release_name(name: &str) -> CliResult<()> {
    const MAX: usize = 128;
    let why = if name.is_empty() {
        Some("it is empty".to_string())
    } else if name.len() > MAX {
        Some(format!("it is {} bytes long; at most {MAX}", name.len()))
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Some("it must start with a letter or digit".to_string())
    } else {
        name.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+')))
            .map(|c| format!("it holds {:?}", c))
    };
    match why {
        None => Ok(()),
        Some(why) => {
            // Shown shortened and escaped: the name may be long or hold control characters.
            let shown: String = name
                .chars()
                .take(40)
                .collect::<String>()
                .escape_debug()
                .to_string();
            let more = if name.chars().count() > 40 { "…" } else { "" };
            Err(usage(format!("`{shown}{more}` is not a valid release name: {why}")).hint(
                format!("use up to {MAX} letters, digits, `.`, `_`, `-` and `+`, starting with a letter or digit (e.g. v1.2.0)"),
            ))
        }
    }
}

/// Short form of a stored timestamp for tables: `2026-11-21 14:05:12`.
pub fn short_time(ts: &str) -> String {
    ts.get(..19)
        .map(|s| s.replace('T', " "))
        .unwrap_or_else(|| ts.to_string())
}

pub fn table() -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_content_arrangement(comfy_table::ContentArrangement::Disabled);
    t
}
