//! One module per command. `dispatch` loads what a command needs (config, store) and maps
//! failures to the exit-code classes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use rewind_core::config::{Config, StateLocation};
use rewind_core::plan::Ledger;
use rewind_core::redact::Redactor;
use rewind_store::Store;

use crate::cli::{Cli, Command};
use crate::error::{CliError, CliResult, usage};
use crate::output::Printer;

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
    match cli.command {
        Command::Init { force } => init::run(&cli.config, force, printer),
        Command::Check => check::run(&cli.config, printer),
        Command::Deploy(args) => deploy::run(&Env::load(&cli.config).await?, args, printer).await,
        Command::Status => status::run(&Env::load(&cli.config).await?, printer).await,
        Command::History { runs, run } => {
            let env = Env::load(&cli.config).await?;
            match run {
                Some(id) => history::run_detail(&env, &id, printer).await,
                None => history::run(&env, runs, printer).await,
            }
        }
        Command::Plan(args) => {
            let env = Env::load(&cli.config).await?;
            match args.deploy {
                Some(release) => {
                    let options = rewind_core::dbplan::DeployOptions {
                        accept_drift: args.accept_drift,
                        accept_row_loss: args.target.accept_row_loss,
                    };
                    deploy::plan(&env, &release, &args.artifacts, options, printer).await
                }
                None => rollback::plan(&env, args.target, printer).await,
            }
        }
        Command::Backup { command } => {
            db::backup(&Env::load(&cli.config).await?, command, printer).await
        }
        Command::Rollback(args) => {
            rollback::rollback(&Env::load(&cli.config).await?, args, printer).await
        }
        Command::Watch => watch::attach(&Env::load(&cli.config).await?, printer).await,
        Command::Demo { fault, keep } => demo::run(&fault, keep, printer).await,
        Command::DemoService { args } => Ok(demo_service::run(args.into_iter())),
        Command::Resume => rollback::resume(&Env::load(&cli.config).await?, printer).await,
        Command::Audit { command } => {
            audit::run(&Env::load(&cli.config).await?, command, printer).await
        }
    }
}

/// Reads and validates the config file. Exit 2 with every problem listed when it is bad.
pub fn load_config(path: &Path) -> CliResult<Config> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(usage(format!("no config file at {}", path.display()))
                .hint("create one with `rewind init`, or point at it with -c/--config PATH"));
        }
        Err(e) => return Err(usage(format!("cannot read {}: {e}", path.display()))),
    };
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

pub fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

/// An environment ready to work on: its config, its store and a redactor.
pub struct Env {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub redactor: Redactor,
    pub name: String,
}

impl Env {
    pub async fn load(path: &Path) -> CliResult<Env> {
        let config = load_config(path)?;
        let location = state_location(&config);
        let mut redactor = Redactor::from_env(&secret_env(&config));
        // Database passwords, from the config or from the url-env variable.
        for (_, c) in &config.components {
            let url = match c.database().map(|d| &d.connection) {
                Some(rewind_core::config::DbConnection::Url(u)) => Some(u.clone()),
                Some(rewind_core::config::DbConnection::UrlEnv(v)) => std::env::var(v).ok(),
                _ => None,
            };
            if let Some(pw) = url.as_deref().and_then(url_password) {
                redactor.add(pw);
            }
        }
        if let StateLocation::Postgres(url) = &location
            && let Some(pw) = url_password(url)
        {
            redactor.add(pw);
        }
        let store: Arc<dyn Store> = rewind_store::open(&location, config.environment.state_sync)
            .await
            .map_err(|e| {
                CliError::new(crate::error::Class::Failed, e)
                    .hint("check `state` in [environment] (or REWIND_STATE_URL)")
            })?
            .into();
        Ok(Env {
            name: config.environment.name.clone(),
            config,
            store,
            redactor,
        })
    }

    pub async fn ledger(&self) -> CliResult<Ledger> {
        Ok(Ledger {
            current: self.store.current_release(&self.name).await?,
            deployed: self.store.deployed(&self.name).await?,
            releases: self.store.releases(&self.name).await?,
        })
    }
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

fn secret_env(config: &Config) -> Vec<String> {
    use rewind_core::config::ComponentConfig;
    let mut out = Vec::new();
    for (_, c) in &config.components {
        match c {
            ComponentConfig::ReleaseDir(r) => out.extend(r.secret_env.iter().cloned()),
            ComponentConfig::Command(c) => out.extend(c.secret_env.iter().cloned()),
            ComponentConfig::Sqlite(_) | ComponentConfig::Postgres(_) => {}
        }
    }
    out
}

fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let pw = userinfo.split_once(':')?.1;
    (!pw.is_empty()).then(|| pw.to_string())
}

/// Release names end up in paths and shell commands, so they are kept plain.
pub fn validate_release_name(name: &str) -> CliResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'));
    if ok {
        Ok(())
    } else {
        Err(usage(format!("`{name}` is not a valid release name"))
            .hint("use letters, digits, `.`, `_`, `-` and `+`, starting with a letter or digit (e.g. v1.2.0)"))
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
