//! Point-in-time recovery of a PostgreSQL server through pgBackRest: reading a target time
//! that names its zone, finding the window of times that can be recovered, and restoring the
//! server's data directory to a time inside it (stop, `pgbackrest restore --type=time`, start,
//! wait for the end of recovery).
//!
//! rewind runs this on the database host: the data directory is restored in place, and the
//! server is stopped and started with commands from the config.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

use crate::backup::PgUrl;
use crate::error::{Error, Result, db, io, redact};

/// Example targets shown when a time cannot be used.
pub(crate) const TIME_EXAMPLES: &str =
    "2026-11-21T14:03:00Z, 2026-11-21T15:03:00+01:00 or 2026-11-21T15:03:00[Europe/Paris]";

/// Reads the time to recover to. It must say which zone it is in: an RFC 3339 time with `Z` or
/// an offset (`2026-11-21T14:03:00Z`, `2026-11-21 15:03:00+01:00`), or a time with a bracketed
/// time zone (`2026-11-21T15:03:00[Europe/Paris]`, optionally with an offset before it).
/// A time without one is refused: read in the wrong zone, it would restore to hours away
/// from what was meant. So is a zoned clock time that happens twice or never (a daylight
/// saving change) unless an offset says which.
pub fn parse_target_time(s: &str) -> Result<Timestamp> {
    let input = s.trim();
    let fail = |reason: String| Error::TargetTime {
        input: s.to_string(),
        reason,
    };
    if input.is_empty() {
        return Err(fail("it is empty".into()));
    }
    if input.contains('[') {
        // A clock time that happens twice (when clocks go back) or never (when they go
        // forward) is refused rather than guessed; an offset before the zone settles it.
        const PARSER: jiff::fmt::temporal::DateTimeParser =
            jiff::fmt::temporal::DateTimeParser::new()
                .disambiguation(jiff::tz::Disambiguation::Reject);
        return PARSER
            .parse_zoned(input)
            .map(|z| z.timestamp())
            .map_err(|e| fail(e.to_string()));
    }
    match input.parse::<Timestamp>() {
        Ok(t) => Ok(t),
        // A valid civil time that is not a valid timestamp lacks only its zone.
        Err(_) if input.parse::<jiff::civil::DateTime>().is_ok() => Err(fail(
            "it has no time zone or UTC offset, and the same clock time is a different \
             instant in every zone"
                .into(),
        )),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// How to reach pgBackRest and the server it backs up. Plain data, read from the config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PgBackRest {
    /// The pgBackRest stanza (`--stanza`).
    pub stanza: String,
    /// pgBackRest's config file (`--config`); `None` uses pgBackRest's default
    /// (`/etc/pgbackrest/pgbackrest.conf`, or `/etc/pgbackrest.conf`).
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// The `pgbackrest` executable; `None` looks it up in PATH.
    #[serde(default)]
    pub program: Option<PathBuf>,
    /// The OS user that runs `pgbackrest` and the `stop` and `start` commands (usually
    /// `postgres`, who owns the data directory). When rewind runs as root they are run through
    /// `runuser -u USER --` (from `/`); otherwise rewind must already be that user. `None` runs
    /// them as rewind's own user.
    #[serde(default)]
    pub run_as: Option<String>,
    /// The server's data directory (pgBackRest's `pg1-path`): restored in place.
    pub data_dir: PathBuf,
    /// Shell command (`sh -c`) that stops the server and returns once it is down, e.g.
    /// `pg_ctlcluster 15 main stop -m fast` or `pg_ctl -D DIR -m fast -w stop`.
    pub stop: String,
    /// Shell command (`sh -c`) that starts the server and returns once it accepts connections,
    /// e.g. `pg_ctl -D DIR -l LOG -w -t 3600 start`. Recovery replays WAL before the server
    /// accepts connections, so give it time (pg_ctl waits 60 s unless told `-t`).
    pub start: String,
    /// How long to wait, after `start` returned, for the server to finish recovery and accept
    /// writes.
    #[serde(
        default = "PgBackRest::default_recovery_timeout",
        with = "rewind_core::units::serde_duration"
    )]
    pub recovery_timeout: Duration,
}

impl PgBackRest {
    /// Default of [`PgBackRest::recovery_timeout`].
    pub const DEFAULT_RECOVERY_TIMEOUT: Duration = Duration::from_secs(600);

    fn default_recovery_timeout() -> Duration {
        Self::DEFAULT_RECOVERY_TIMEOUT
    }

    /// Every problem with this config that can be seen without touching anything (no files,
    /// no processes); empty when there is none.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.stanza.is_empty() {
            out.push("stanza is empty".to_string());
        } else if !self
            .stanza
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            out.push(format!(
                "stanza {:?} has characters other than letters, digits, '-', '_' and '.'",
                self.stanza
            ));
        }
        if !self.data_dir.is_absolute() {
            out.push(format!(
                "data-dir {} is not an absolute path",
                self.data_dir.display()
            ));
        }
        if self.run_as.as_deref().is_some_and(|u| u.trim().is_empty()) {
            out.push("run-as is empty (leave it out to run as rewind's own user)".to_string());
        }
        for (name, cmd) in [("stop", &self.stop), ("start", &self.start)] {
            if cmd.trim().is_empty() {
                out.push(format!("{name} command is empty"));
            }
        }
        if self.recovery_timeout.is_zero() {
            out.push("recovery-timeout is zero".to_string());
        }
        out
    }
}

/// A backup that a point-in-time recovery can start from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackupSet {
    /// pgBackRest's label, e.g. `20261121-161949F`.
    pub label: String,
    /// `full`, `diff` or `incr`.
    pub kind: String,
    pub start: Timestamp,
    /// When pgBackRest finished the backup (whole seconds, as pgBackRest records it).
    pub stop: Timestamp,
}

/// The times a server can be recovered to: `earliest <= target < latest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Window {
    /// One second after the oldest usable backup stopped. pgBackRest records backup stop
    /// times in whole seconds and restores to a time only from a backup that stopped strictly
    /// before the target's second; and recovery cannot stop before its backup is consistent.
    pub earliest: Timestamp,
    /// The server's clock just before a marker transaction committed and its WAL was
    /// archived (see [`window`]). Exclusive.
    pub latest: Timestamp,
    /// Backups of the server's current database, oldest first.
    pub backups: Vec<BackupSet>,
}

impl Window {
    pub fn contains(&self, t: Timestamp) -> bool {
        self.earliest <= t && t < self.latest
    }

    /// The backup a recovery to `t` starts from: the newest one that stopped before `t`'s
    /// second (pgBackRest's own rule for `--type=time`).
    pub fn backup_for(&self, t: Timestamp) -> Option<&BackupSet> {
        let second = t.as_second();
        self.backups
            .iter()
            .rev()
            .find(|b| b.stop.as_second() < second)
    }

    /// Reads the backups of `stanza` from `pgbackrest info --output=json`, and makes a window
    /// that ends at `latest`. Only backups of each repository's current database count: after
    /// a `stanza-upgrade` (a new major version), older backups hold the previous version's
    /// data and cannot be started by this server.
    pub fn from_info_json(json: &str, stanza: &str, latest: Timestamp) -> Result<Window> {
        let stanzas: Vec<InfoStanza> = serde_json::from_str(json).map_err(|e| {
            Error::Invalid(format!("cannot read `pgbackrest info --output=json`: {e}"))
        })?;
        let info = stanzas
            .into_iter()
            .find(|s| s.name == stanza)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "pgbackrest info does not list stanza {stanza}\nhint: create it with \
                     `pgbackrest --stanza={stanza} stanza-create`"
                ))
            })?;
        let current_db = |repo: u32| {
            info.db
                .iter()
                .filter(|d| d.repo_key == repo)
                .map(|d| d.id)
                .max()
        };
        let mut backups = Vec::new();
        for b in &info.backup {
            if current_db(b.database.repo_key) != Some(b.database.id) {
                continue;
            }
            let at = |secs: i64| {
                Timestamp::from_second(secs).map_err(|e| {
                    Error::Invalid(format!("backup {}: bad timestamp {secs}: {e}", b.label))
                })
            };
            backups.push(BackupSet {
                label: b.label.clone(),
                kind: b.kind.clone(),
                start: at(b.timestamp.start)?,
                stop: at(b.timestamp.stop)?,
            });
        }
        backups.sort_by(|a, b| (a.stop, &a.label).cmp(&(b.stop, &b.label)));
        let Some(oldest) = backups.first() else {
            return Err(Error::Invalid(format!(
                "stanza {stanza} has no backup of the current database ({})\nhint: take one \
                 with `pgbackrest --stanza={stanza} --type=full backup`",
                info.status.message
            )));
        };
        let earliest = oldest.stop + jiff::SignedDuration::from_secs(1);
        Ok(Window {
            earliest,
            latest,
            backups,
        })
    }
}

#[derive(Deserialize)]
struct InfoStanza {
    name: String,
    #[serde(default)]
    backup: Vec<InfoBackup>,
    #[serde(default)]
    db: Vec<InfoDb>,
    status: InfoStatus,
}

#[derive(Deserialize)]
struct InfoBackup {
    label: String,
    #[serde(rename = "type")]
    kind: String,
    timestamp: InfoTimes,
    database: InfoDbRef,
}

#[derive(Deserialize)]
struct InfoTimes {
    start: i64,
    stop: i64,
}

#[derive(Deserialize)]
struct InfoDbRef {
    id: u32,
    #[serde(rename = "repo-key")]
    repo_key: u32,
}

#[derive(Deserialize)]
struct InfoDb {
    id: u32,
    #[serde(rename = "repo-key")]
    repo_key: u32,
}

#[derive(Deserialize)]
struct InfoStatus {
    message: String,
}

/// The steps of [`restore_to_time`], in order, for a CLI to journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PitrPhase {
    /// Finding the window and checking the target against it; nothing is changed yet.
    CheckingWindow,
    /// Running the `stop` command.
    Stopping,
    /// Running `pgbackrest restore`.
    Restoring,
    /// Running the `start` command.
    Starting,
    /// Waiting for the server to replay WAL up to the target and promote.
    Recovering,
    Done,
}

impl std::fmt::Display for PitrPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PitrPhase::CheckingWindow => "checking window",
            PitrPhase::Stopping => "stopping",
            PitrPhase::Restoring => "restoring",
            PitrPhase::Starting => "starting",
            PitrPhase::Recovering => "recovering",
            PitrPhase::Done => "done",
        })
    }
}

/// What [`restore_to_time`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PitrReport {
    /// The target, to the microsecond (PostgreSQL's resolution).
    pub target: Timestamp,
    /// The window the target was checked against.
    pub window: Window,
    /// The backup restored before WAL was replayed.
    pub backup_set: String,
    /// The command line given to pgBackRest.
    pub command: Vec<String>,
    pub started_at: Timestamp,
    /// When the server had left recovery.
    pub finished_at: Timestamp,
}

/// Finds the window a point-in-time recovery can reach (on the server at `url`, backed up by
/// `cfg`'s stanza).
///
/// The start is read from `pgbackrest info` (see [`Window::earliest`]). The end needs care:
/// the archive holds whole WAL segments only, its listing says nothing about times, and a
/// time-based recovery stops only when it meets a commit *after* the target — a target past
/// the last archived commit makes PostgreSQL give up ("recovery ended before configured
/// recovery target was reached") after the data directory has already been replaced. So:
///
/// 1. on the server, read its clock (`latest`) and commit a transaction that takes an xid
///    (`txid_current()`), whose commit record is stamped at or after `latest`;
/// 2. run `pgbackrest check`, which switches to a new WAL segment and waits until the
///    segment holding everything written so far — the marker commit included — is in the
///    archive.
///
/// Every target before `latest` then has a later commit in the archive to stop at. The
/// server's own clock is used because recovery compares the target with commit times stamped
/// by it. The marker writes no row; the server must be a primary.
pub async fn window(cfg: &PgBackRest, url: &str) -> Result<Window> {
    check_config(cfg)?;
    let url = PgUrl::parse(url)?;
    let runner = Runner::new(cfg).await?;
    let info = runner
        .pgbackrest(cfg, &["info", "--output=json"], &url)
        .await?;
    // Fails early, before the marker, when there is no backup.
    Window::from_info_json(&info, &cfg.stanza, Timestamp::now())?;
    let latest = mark_and_clock(&url).await?;
    runner.pgbackrest(cfg, &["check"], &url).await?;
    Window::from_info_json(&info, &cfg.stanza, latest)
}

/// Commits a transaction with an xid and returns the server's clock read just before.
async fn mark_and_clock(url: &PgUrl) -> Result<Timestamp> {
    let secret = url.password();
    let mut conn = connect(url).await?;
    let row: Result<(i64, i64), _> = sqlx::query_as(
        "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000000)::int8, \
                txid_current()::int8",
    )
    .fetch_one(&mut conn)
    .await;
    let _ = conn.close().await;
    let (micros, _xid) = row.map_err(db(
        format!("committing a marker transaction on {url} (it must be the primary)"),
        secret,
    ))?;
    Timestamp::from_microsecond(micros)
        .map_err(|e| Error::Invalid(format!("the server's clock reads {micros} µs: {e}")))
}

async fn connect(url: &PgUrl) -> Result<PgConnection> {
    let options = url.connect_options()?;
    let context = format!("connecting to {url}");
    match tokio::time::timeout(
        Duration::from_secs(15),
        PgConnection::connect_with(&options),
    )
    .await
    {
        Ok(r) => r.map_err(db(context, url.password())),
        Err(_) => Err(Error::Invalid(format!("{context}: timed out after 15 s"))),
    }
}

/// Restores the server's data directory to `target` and brings it back as a primary:
///
/// 1. the window is found ([`window`]) and `target` checked against it — a target outside
///    fails here, with the window in UTC, and nothing has been changed;
/// 2. the `stop` command stops the server;
/// 3. `pgbackrest restore --delta --set=… --type=time --target=… --target-action=promote`
///    rewrites the changed files of the data directory from the backup chosen by
///    [`Window::backup_for`];
/// 4. the `start` command starts it; PostgreSQL replays archived WAL and stops before the
///    first transaction that committed after `target` (so everything committed at or before
///    it is kept), then promotes to a new timeline;
/// 5. `pg_is_in_recovery()` is polled on `url` until it is false, for up to
///    `cfg.recovery_timeout`.
///
/// `progress` is called as each step begins. The target is cut to whole microseconds (never
/// later than asked). The recovery follows the newest timeline (PostgreSQL's default): after
/// an earlier point-in-time recovery, times after its branch point are those of the current
/// history, not of the abandoned one. `url`'s password reaches the server through the
/// connection only, never a command line.
pub async fn restore_to_time<F>(
    cfg: &PgBackRest,
    url: &str,
    target: Timestamp,
    mut progress: F,
) -> Result<PitrReport>
where
    F: FnMut(PitrPhase) + Send,
{
    check_config(cfg)?;
    let started_at = Timestamp::now();
    let pg_url = PgUrl::parse(url)?;
    let target = Timestamp::from_microsecond(target.as_microsecond())
        .map_err(|e| Error::Invalid(format!("target time {target}: {e}")))?;

    progress(PitrPhase::CheckingWindow);
    let window = window(cfg, url).await?;
    if !window.contains(target) {
        return Err(Error::OutsideWindow {
            target,
            earliest: window.earliest,
            latest: window.latest,
        });
    }
    let backup = window
        .backup_for(target)
        .ok_or_else(|| Error::Invalid(format!("no backup stopped before {target}")))?
        .label
        .clone();
    let runner = Runner::new(cfg).await?;

    progress(PitrPhase::Stopping);
    runner
        .shell("stop command", &cfg.stop, &pg_url)
        .await
        .map_err(after_stop(
            PitrPhase::Stopping,
            "nothing was restored; the server may be stopped".into(),
        ))?;

    progress(PitrPhase::Restoring);
    let target_arg = format!("--target={}", pg_target_time(target));
    let set_arg = format!("--set={backup}");
    let pg1_arg = format!("--pg1-path={}", cfg.data_dir.display());
    let args = [
        pg1_arg.as_str(),
        "--delta",
        set_arg.as_str(),
        "--type=time",
        target_arg.as_str(),
        "--target-action=promote",
        "restore",
    ];
    let command = runner.pgbackrest_command_line(cfg, &args);
    runner
        .pgbackrest(cfg, &args, &pg_url)
        .await
        .map_err(after_stop(
            PitrPhase::Restoring,
            format!(
                "the server is stopped and {} may be partly restored; fix the cause and run the \
                 restore again",
                cfg.data_dir.display()
            ),
        ))?;

    progress(PitrPhase::Starting);
    runner
        .shell("start command", &cfg.start, &pg_url)
        .await
        .map_err(after_stop(
            PitrPhase::Starting,
            "the data directory is restored; the server failed to start or is still \
             recovering: see its log"
                .into(),
        ))?;

    progress(PitrPhase::Recovering);
    wait_out_of_recovery(cfg, &pg_url)
        .await
        .map_err(after_stop(
            PitrPhase::Recovering,
            "the data directory is restored; the server has not finished recovery: see its log"
                .into(),
        ))?;

    progress(PitrPhase::Done);
    Ok(PitrReport {
        target,
        window,
        backup_set: backup,
        command,
        started_at,
        finished_at: Timestamp::now(),
    })
}

/// Adds where things stand to the error of a step that ran once the server was touched.
fn after_stop(step: PitrPhase, state: String) -> impl FnOnce(Error) -> Error {
    move |source| Error::PitrStep {
        step,
        state,
        source: Box::new(source),
    }
}

fn check_config(cfg: &PgBackRest) -> Result<()> {
    let problems = cfg.problems();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "pgbackrest config: {}",
            problems.join("; ")
        )))
    }
}

/// The target as pgBackRest and PostgreSQL both read it: `YYYY-MM-DD HH:MM:SS.ffffff+00:00`.
/// pgBackRest reads a target time only in this shape (a space, not `T`; a numeric offset, not
/// `Z`), and PostgreSQL keeps microseconds.
fn pg_target_time(t: Timestamp) -> String {
    let dt = t.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00:00",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.subsec_nanosecond() / 1000
    )
}

/// Polls `pg_is_in_recovery()` until it is false. Fails early when the server has gone away
/// (no `postmaster.pid` for a second), which is how PostgreSQL ends a recovery that cannot
/// reach its target.
async fn wait_out_of_recovery(cfg: &PgBackRest, url: &PgUrl) -> Result<()> {
    let deadline = Instant::now() + cfg.recovery_timeout;
    let pid_file = cfg.data_dir.join("postmaster.pid");
    let mut conn: Option<PgConnection> = None;
    let mut gone_since: Option<Instant> = None;
    let mut last = String::from("no answer yet");
    loop {
        if conn.is_none() {
            match connect(url).await {
                Ok(c) => conn = Some(c),
                Err(e) => last = e.to_string(),
            }
        }
        if let Some(c) = conn.as_mut() {
            match sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
                .fetch_one(&mut *c)
                .await
            {
                Ok(false) => {
                    if let Some(c) = conn.take() {
                        let _ = c.close().await;
                    }
                    return Ok(());
                }
                Ok(true) => last = "still in recovery".to_string(),
                Err(e) => {
                    last = crate::error::db_text(&e, url.password());
                    conn = None;
                }
            }
        }
        if conn.is_none() {
            // Unknown (e.g. permission denied) counts as running.
            let running = tokio::fs::try_exists(&pid_file).await.unwrap_or(true);
            match (running, gone_since) {
                (true, _) => gone_since = None,
                (false, None) => gone_since = Some(Instant::now()),
                (false, Some(since)) if since.elapsed() >= Duration::from_secs(1) => {
                    return Err(Error::Invalid(format!(
                        "the server stopped during recovery (no {}; last: {last})\nhint: its \
                         log says why; \"recovery ended before configured recovery target was \
                         reached\" means the archive lacks WAL up to the target",
                        pid_file.display()
                    )));
                }
                (false, Some(_)) => {}
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::Invalid(format!(
                "the server was still not out of recovery after {} s (last: {last})\nhint: \
                 recovery goes on in the background; watch its log, or raise recovery-timeout",
                cfg.recovery_timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs programs as `run_as`, decided once per operation.
struct Runner {
    /// `runuser -u USER --` is put in front of every command.
    switch_to: Option<String>,
}

impl Runner {
    async fn new(cfg: &PgBackRest) -> Result<Runner> {
        let Some(user) = cfg.run_as.as_deref() else {
            return Ok(Runner { switch_to: None });
        };
        let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
        if euid == Some(0) {
            return Ok(Runner {
                switch_to: Some(user.to_string()),
            });
        }
        let out = rewind_proc::Command::new("id")
            .args(["-u", "--", user])
            .output()
            .await
            .map_err(|e| io("running id")(e.into_io()))?;
        let uid = String::from_utf8_lossy(&out.stdout).trim().parse::<u32>();
        match (out.status.success(), uid, euid) {
            (true, Ok(uid), Some(me)) if uid == me => Ok(Runner { switch_to: None }),
            (false, _, _) => Err(Error::Invalid(format!("run-as: no such user {user:?}"))),
            _ => Err(Error::Invalid(format!(
                "run-as is {user}, but rewind runs as another user and only root can switch \
                 users\nhint: run rewind as root or as {user}, or leave run-as out"
            ))),
        }
    }

    fn command(&self, program: &Path, args: &[OsString]) -> rewind_proc::Command {
        let mut cmd = match &self.switch_to {
            Some(user) => {
                let mut c = rewind_proc::Command::new("runuser");
                c.args(["-u", user.as_str(), "--"]).arg(program);
                // The other user may not be allowed into rewind's working directory.
                c.current_dir("/");
                c
            }
            None => rewind_proc::Command::new(program),
        };
        cmd.args(args);
        cmd
    }

    fn pgbackrest_args(cfg: &PgBackRest, args: &[&str]) -> Vec<OsString> {
        let mut out: Vec<OsString> = Vec::new();
        if let Some(c) = &cfg.config {
            let mut a = OsString::from("--config=");
            a.push(c);
            out.push(a);
        }
        out.push(format!("--stanza={}", cfg.stanza).into());
        out.extend(args.iter().map(OsString::from));
        out
    }

    fn pgbackrest_command_line(&self, cfg: &PgBackRest, args: &[&str]) -> Vec<String> {
        let mut line: Vec<String> = match &self.switch_to {
            Some(u) => vec!["runuser".into(), "-u".into(), u.clone(), "--".into()],
            None => Vec::new(),
        };
        line.push(program(cfg).display().to_string());
        line.extend(
            Self::pgbackrest_args(cfg, args)
                .iter()
                .map(|a| a.to_string_lossy().into_owned()),
        );
        line
    }

    /// Runs pgbackrest with the stanza (and config) and `args`; returns its stdout.
    async fn pgbackrest(&self, cfg: &PgBackRest, args: &[&str], url: &PgUrl) -> Result<String> {
        let program = program(cfg);
        let what = format!(
            "pgbackrest {}",
            args.iter()
                .rev()
                .find(|a| !a.starts_with('-'))
                .unwrap_or(&"")
        );
        let out = self
            .command(&program, &Self::pgbackrest_args(cfg, args))
            .output()
            .await
            .map_err(rewind_proc::Error::into_io)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::ProgramMissing {
                    program: program.display().to_string(),
                    hint: "install pgBackRest (e.g. apt-get install pgbackrest), or set \
                           program to where it is"
                        .into(),
                },
                _ => io(format!("running {}", program.display()))(e),
            })?;
        finish(&what, out, url)
    }

    /// Runs a shell command from the config.
    async fn shell(&self, what: &str, command: &str, url: &PgUrl) -> Result<String> {
        let args = [OsString::from("-c"), OsString::from(command)];
        let out = self
            .command(Path::new("/bin/sh"), &args)
            .output()
            .await
            .map_err(|e| io(format!("running {what}"))(e.into_io()))?;
        finish(&format!("{what} `{command}`"), out, url)
    }
}

fn program(cfg: &PgBackRest) -> PathBuf {
    cfg.program
        .clone()
        .unwrap_or_else(|| PathBuf::from("pgbackrest"))
}

/// Stdout when the command succeeded; otherwise an error with its stderr (or its stdout, when
/// it wrote its errors there), redacted.
fn finish(what: &str, out: std::process::Output, url: &PgUrl) -> Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = if stderr.trim().is_empty() {
        stdout.trim()
    } else {
        stderr.trim()
    };
    let status = match out.status.code() {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".to_string(),
    };
    Err(Error::Tool {
        tool: what.to_string(),
        status,
        stderr: redact(text, url.password()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn target_times_need_a_zone() {
        for (input, expected) in [
            ("2026-11-21T14:03:00Z", "2026-11-21T14:03:00Z"),
            ("2026-11-21T14:03:00z", "2026-11-21T14:03:00Z"),
            ("2026-11-21 14:03:00Z", "2026-11-21T14:03:00Z"),
            ("2026-11-21T15:03:00+01:00", "2026-11-21T14:03:00Z"),
            ("2026-11-21 09:03:00.25-05:00", "2026-11-21T14:03:00.25Z"),
            ("  2026-11-21T14:03:00+00:00 ", "2026-11-21T14:03:00Z"),
            ("2026-11-21T15:03:00[Europe/Paris]", "2026-11-21T14:03:00Z"),
            ("2026-07-21T16:03:00[Europe/Paris]", "2026-07-21T14:03:00Z"),
            (
                "2026-11-21T15:03:00+01:00[Europe/Paris]",
                "2026-11-21T14:03:00Z",
            ),
            (
                "2026-10-25T02:30:00+01:00[Europe/Paris]",
                "2026-10-25T01:30:00Z",
            ),
            (
                "2026-10-25T02:30:00+02:00[Europe/Paris]",
                "2026-10-25T00:30:00Z",
            ),
        ] {
            let got = parse_target_time(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got, ts(expected), "{input}");
        }
        for input in ["2026-11-21T14:03:00", "2026-11-21 14:03:00", "2026-11-21"] {
            let e = parse_target_time(input).unwrap_err().to_string();
            assert!(e.contains("no time zone"), "{input}: {e}");
            assert!(e.contains(input), "{e}");
            assert!(e.contains("2026-11-21T14:03:00Z"), "{e}");
            assert!(e.contains("+01:00"), "{e}");
        }
        for input in [
            "",
            "yesterday",
            "2026-13-21T14:03:00Z",
            "2026-11-21T15:03:00[Nowhere/Atlantis]",
            // The offset contradicts the zone.
            "2026-11-21T15:03:00+05:00[Europe/Paris]",
            // Happens twice in Paris (clocks go back), and never (clocks go forward).
            "2026-10-25T02:30:00[Europe/Paris]",
            "2026-03-29T02:30:00[Europe/Paris]",
        ] {
            let e = parse_target_time(input).unwrap_err();
            assert!(matches!(e, Error::TargetTime { .. }), "{input}: {e}");
        }
    }

    #[test]
    fn pgbackrest_reads_the_target_as_utc_with_microseconds() {
        assert_eq!(
            pg_target_time(ts("2026-11-21T15:03:04.1234567+01:00")),
            "2026-11-21 14:03:04.123456+00:00"
        );
        assert_eq!(
            pg_target_time(ts("2026-01-02T03:04:05Z")),
            "2026-01-02 03:04:05.000000+00:00"
        );
    }

    const INFO: &str = r#"[{"archive":[{"database":{"id":1,"repo-key":1},"id":"15-1",
        "max":"000000010000000000000009","min":"000000010000000000000001"},
        {"database":{"id":2,"repo-key":1},"id":"16-2",
        "max":"000000010000000000000004","min":"000000010000000000000001"}],
      "backup":[
        {"archive":{"start":"000000010000000000000002","stop":"000000010000000000000003"},
         "database":{"id":1,"repo-key":1},"error":false,"label":"20261101-100000F",
         "timestamp":{"start":1793527200,"stop":1793527205},"type":"full"},
        {"database":{"id":2,"repo-key":1},"error":false,"label":"20261110-100000F",
         "timestamp":{"start":1794304800,"stop":1794304810},"type":"full"},
        {"database":{"id":2,"repo-key":1},"error":false,"label":"20261110-100000F_20261111-100000D",
         "timestamp":{"start":1794391200,"stop":1794391203},"type":"diff"}],
      "cipher":"none",
      "db":[{"id":1,"repo-key":1,"system-id":1,"version":"15"},
            {"id":2,"repo-key":1,"system-id":2,"version":"16"}],
      "name":"main","repo":[{"cipher":"none","key":1,"status":{"code":0,"message":"ok"}}],
      "status":{"code":0,"lock":{"backup":{"held":false}},"message":"ok"}}]"#;

    #[test]
    fn window_starts_a_second_after_the_oldest_current_backup() {
        let latest = ts("2026-11-21T14:03:00Z");
        let w = Window::from_info_json(INFO, "main", latest).unwrap();
        // The backup of the previous major version (db 1) does not count.
        let labels: Vec<_> = w.backups.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(
            labels,
            ["20261110-100000F", "20261110-100000F_20261111-100000D"]
        );
        assert_eq!(w.backups[1].kind, "diff");
        assert_eq!(w.earliest, ts("2026-11-10T10:00:11Z"));
        assert_eq!(w.latest, latest);
        assert!(!w.contains(ts("2026-11-10T10:00:10.999Z")));
        assert!(w.contains(w.earliest));
        assert!(!w.contains(latest));
        // Whole seconds, strictly after the stop: the same second as the diff's stop
        // still uses the full backup.
        let full = "20261110-100000F";
        let diff = "20261110-100000F_20261111-100000D";
        for (t, label) in [
            ("2026-11-10T10:00:11Z", full),
            ("2026-11-11T10:00:03.9Z", full),
            ("2026-11-11T10:00:04Z", diff),
            ("2026-11-21T14:02:59Z", diff),
        ] {
            assert_eq!(w.backup_for(ts(t)).unwrap().label, label, "{t}");
        }
        assert!(w.backup_for(ts("2026-11-10T10:00:10.5Z")).is_none());
    }

    #[test]
    fn window_needs_the_stanza_and_a_backup() {
        let latest = ts("2026-11-21T14:03:00Z");
        let e = Window::from_info_json(INFO, "other", latest).unwrap_err();
        assert!(e.to_string().contains("stanza-create"), "{e}");
        let empty = r#"[{"name":"main","backup":[],"db":[],"archive":[],
            "status":{"code":2,"message":"no valid backups"}}]"#;
        let e = Window::from_info_json(empty, "main", latest).unwrap_err();
        assert!(e.to_string().contains("no valid backups"), "{e}");
        assert!(e.to_string().contains("--type=full backup"), "{e}");
        assert!(Window::from_info_json("{", "main", latest).is_err());
    }

    #[test]
    fn outside_window_names_it_in_utc() {
        let e = Error::OutsideWindow {
            target: ts("2026-11-21T15:00:00+01:00"),
            earliest: ts("2026-11-21T15:00:01+01:00"),
            latest: ts("2026-11-21T15:30:00.5+01:00"),
        };
        let text = e.to_string();
        assert!(text.contains("2026-11-21T14:00:00Z"), "{text}");
        assert!(text.contains("2026-11-21T14:00:01Z"), "{text}");
        assert!(text.contains("2026-11-21T14:30:00.5Z"), "{text}");
        assert!(text.contains("nothing was changed"), "{text}");
    }

    #[test]
    fn config_reads_and_reports_every_problem() {
        let cfg: PgBackRest = toml::from_str(
            r#"
            stanza = "main"
            config = "/etc/pgbackrest/pgbackrest.conf"
            run-as = "postgres"
            data-dir = "/var/lib/postgresql/15/main"
            stop = "pg_ctlcluster 15 main stop -m fast"
            start = "pg_ctlcluster 15 main start"
            recovery-timeout = "30m"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.recovery_timeout, Duration::from_secs(1800));
        assert_eq!(cfg.program, None);
        assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());

        let minimal: PgBackRest = toml::from_str(
            r#"
            stanza = "main"
            data-dir = "/srv/pg"
            stop = "x"
            start = "y"
            "#,
        )
        .unwrap();
        assert_eq!(
            minimal.recovery_timeout,
            PgBackRest::DEFAULT_RECOVERY_TIMEOUT
        );

        let bad = PgBackRest {
            stanza: "main db".into(),
            data_dir: "relative".into(),
            run_as: Some(" ".into()),
            stop: String::new(),
            start: " ".into(),
            recovery_timeout: Duration::ZERO,
            ..minimal
        };
        assert_eq!(bad.problems().len(), 6, "{:?}", bad.problems());
        assert!(toml::from_str::<PgBackRest>("stanza = \"x\"\nbogus = 1").is_err());
    }
}
