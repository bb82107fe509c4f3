//! Command-line arguments (clap derive). The commands that act on them live in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// rewind makes a rollback runbook executable: it records every release, takes a restore
/// point before each change, and rolls back with one command, crash-safe and on the record.
#[derive(Debug, Parser)]
#[command(
    name = "rewind",
    version,
    about,
    after_help = "Exit codes: 0 success · 1 the operation failed · 2 bad usage or invalid config · 3 blocked (another run holds the lock, or an unfinished run must be finished first)\n\nStart with `rewind init`, edit rewind.toml, then `rewind check`."
)]
pub struct Cli {
    /// The environment's config file.
    #[arg(
        short,
        long,
        global = true,
        default_value = "rewind.toml",
        env = "REWIND_CONFIG"
    )]
    pub config: PathBuf,

    /// Print results as JSON on stdout (messages still go to stderr).
    #[arg(long, global = true)]
    pub json: bool,

    /// No progress or messages on stderr; only results and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented example rewind.toml.
    Init {
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Validate the config file without touching anything.
    Check,
    /// Record a release, take restore points, and deploy it component by component.
    #[command(
        after_help = "Examples:\n  rewind deploy v1.4.0 --artifact web=./dist/shop-1.4.0.tar.gz\n  rewind deploy 2026-11-21.2 --artifact web=build/ --artifact admin=admin/build/\n\nThe release is recorded as `deploying`, then `good` when every step is done, or `failed`.\nA release name is never reused; to go back to an older release use `rewind rollback --to`."
    )]
    Deploy(DeployArgs),
    /// What is deployed now, the lock, and any unfinished run.
    Status,
    /// Every recorded release and the most recent runs.
    History {
        /// How many runs to show.
        #[arg(long, default_value_t = 20)]
        runs: i64,
        /// Show one run whole: its steps and its journal (begin / done / failed, times,
        /// output).
        #[arg(long, value_name = "RUN_ID")]
        run: Option<String>,
    },
    /// Show the exact steps a rollback (or, with --deploy, a deploy) would take; nothing is
    /// changed.
    #[command(
        after_help = "Takes the same options as `rewind rollback`, and shows an unfinished run that a rollback\nwould resume first. For database components it shows the decision (leave alone, revert\nmigrations, restore a backup or a point in time) and why.\n\n`rewind plan --deploy v1.5.0` shows a deploy instead: every migration of the release that the\ndatabase lacks (out-of-order ones marked), classified by effect (adds, rewrites data, loses\ndata, takes a long lock), how it runs (in the batch's transaction or alone, and why), the\napplied migrations the release does not ship, checksum drift, and everything the deploy would\nrefuse (exit 1 then)."
    )]
    Plan(PlanArgs),
    /// Roll back to the last known-good release (or --to RELEASE).
    #[command(
        after_help = "Examples:\n  rewind rollback                      # asks, then goes to the last known-good release\n  rewind rollback --yes --to v1.2.0\n  rewind rollback --yes --component frontend\n\nAn unfinished rollback is resumed first; an unfinished deploy is abandoned (its release is\nmarked failed). Exit 3 when another run holds the lock."
    )]
    Rollback(RollbackArgs),
    /// Attach to the release being watched, for the rest of its monitoring window.
    #[command(
        after_help = "A watcher that died (or a `deploy --watch` stopped with Ctrl-C) leaves the window open;\n`rewind watch` takes it over. On a trigger it opens an incident and rolls back (policy\n`rollback`), then verifies with the same signals. Exit 0 when the window closes cleanly."
    )]
    Watch,
    /// Run the whole story on this machine: a real demo service, a healthy v1, a faulty v2
    /// deployed with --watch, detection, automatic rollback, verification, timeline.
    Demo {
        /// What is wrong with v2: errors (5xx), slow (latency), down (does not start),
        /// checkout (a broken functional check).
        #[arg(long, default_value = "errors", value_parser = ["errors", "slow", "down", "checkout"])]
        fault: String,
        /// Keep the demo's directory (config, state, releases) instead of deleting it.
        #[arg(long)]
        keep: bool,
    },
    /// Run the demo HTTP service (used by `rewind demo`; see examples/demo-service).
    #[command(hide = true, name = "demo-service", disable_help_flag = true)]
    DemoService {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Database backups: take one, list them, prove one restores, restore one.
    #[command(
        after_help = "Examples:\n  rewind backup create\n  rewind backup list --json\n  rewind backup verify              # the newest backup, restored into a scratch database\n  rewind backup restore 20261121T140312 --yes\n\nDeploys and rollbacks take their own backups (backup = \"always\" or when a migration is\ndestructive); the oldest beyond keep-backups are removed."
    )]
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Finish an interrupted run (after a crash, kill -9 or Ctrl-C).
    #[command(
        after_help = "Steps already done are skipped; a step that was cut off is run again and checks its\npostcondition first, so resuming is always safe."
    )]
    Resume,
    /// The hash-chained audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Go on with a state store that does not match what the environment's directories
    /// record (an emptied, deleted, replaced or older store), and record that in its audit
    /// log.
    #[command(
        after_help = "rewind refuses a state store that holds nothing (or less than it should) for an environment that\nwas recorded before: markers it writes beside the config file and in each release-dir root, release\ndirectories with a `current` symlink, database backups. The first fix is to put the state store\nback from a backup copy. When that is not possible, or you mean to start a new ledger over what is\nthere, `rewind adopt --yes` records an audit entry naming the evidence and what the store lacks,\nand rewrites the markers; the history before it is not brought back.\n\nWithout --yes it shows what it would record and changes nothing (exit 2)."
    )]
    Adopt {
        /// Do it.
        #[arg(short, long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Release name: letters, digits, `.`, `_`, `-`, `+` (e.g. v1.2.0, 2026-11-21.1).
    pub release: String,
    /// Where a component's new version comes from: COMPONENT=PATH (a directory or a
    /// .tar.gz) for release-dir components. Repeat for several components.
    #[arg(long = "artifact", value_name = "COMPONENT=PATH")]
    pub artifacts: Vec<String>,
    /// Then watch the new release through its monitoring window ([watch] in the config):
    /// sample a baseline first, roll back on its own when a trigger fires (policy
    /// `rollback`), mark the release good when the window closes cleanly.
    #[arg(long)]
    pub watch: bool,
    /// Databases: an applied migration's file was edited after it was applied (checksum
    /// drift). Without this flag the deploy refuses, naming the file; with it, the files'
    /// new checksums are recorded in the tool's history first, as the tool's own repair
    /// would (`flyway repair`), so the tool accepts them afterwards.
    #[arg(long)]
    pub accept_drift: bool,
    /// Databases: a table lost rows although no migration is classified to delete from it
    /// (a DELETE inside a function the migration calls, a trigger …). Without this flag the
    /// migrations' transaction is rolled back, naming the table and the counts; with it the
    /// loss is reported and kept.
    #[arg(long)]
    pub accept_row_loss: bool,
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The release to go back to (default: the most recent known-good release before the
    /// current one).
    #[arg(long, value_name = "RELEASE")]
    pub to: Option<String>,
    /// Roll back only this component (repeatable); the others stay as they are.
    #[arg(long = "component", value_name = "NAME")]
    pub components: Vec<String>,
    /// Allow a target that is marked failed or rolled-back.
    #[arg(long)]
    pub force: bool,
    /// Databases: the data is corrupted; restore the newest backup taken at the target's
    /// migration level instead of reverting migrations.
    #[arg(long)]
    pub restore: bool,
    /// Databases: restore to this point in time through pgBackRest. Needs an explicit time
    /// zone: 2026-11-21T14:03:00Z, …+01:00 or …[Europe/Paris].
    #[arg(long, value_name = "TIME", conflicts_with = "restore")]
    pub to_time: Option<String>,
    /// Databases: revert migrations even where that loses data (a destructive migration, an
    /// empty down script) because no backup exists.
    #[arg(long)]
    pub revert_anyway: bool,
    /// Databases: rows a down script loses although it is not classified to delete them are
    /// reported, not refused (see `rewind deploy --help`).
    #[arg(long)]
    pub accept_row_loss: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Show the plan of deploying RELEASE instead of a rollback.
    #[arg(long, value_name = "RELEASE", conflicts_with_all = ["to", "components", "force", "restore", "to_time", "revert_anyway"])]
    pub deploy: Option<String>,
    /// With --deploy: where a component's new version comes from, as `rewind deploy
    /// --artifact COMPONENT=PATH` takes it (checked exactly as the deploy checks it).
    #[arg(long = "artifact", value_name = "COMPONENT=PATH", requires = "deploy")]
    pub artifacts: Vec<String>,
    /// With --deploy: plan as `rewind deploy --accept-drift` would.
    #[arg(long, requires = "deploy")]
    pub accept_drift: bool,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Take a full backup of every database component (or --component NAME) now.
    Create {
        #[arg(long, value_name = "NAME")]
        component: Option<String>,
    },
    /// The backups kept, oldest first.
    List {
        #[arg(long, value_name = "NAME")]
        component: Option<String>,
    },
    /// Restore a backup (default: the newest) into a scratch database and run the data checks
    /// there: a real restore, not a checksum. Exit 1 when it does not hold.
    Verify {
        /// The backup's id (or a unique prefix).
        id: Option<String>,
        #[arg(long, value_name = "NAME")]
        component: Option<String>,
    },
    /// Put a database back from a backup: stop writes, back up what is there now, restore,
    /// check the data, allow writes.
    Restore {
        /// The backup's id (or a unique prefix).
        id: Option<String>,
        #[arg(long, value_name = "NAME")]
        component: Option<String>,
        /// Do it (without it, the steps are shown and nothing changes).
        #[arg(short, long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(short, long)]
    pub yes: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the audit log, oldest first.
    Log {
        /// Only the last N entries (N ≥ 1).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        last: Option<u64>,
    },
    /// Check the hash chain; exit 1 naming the first entry that does not hold.
    Verify,
}
