//! The fixture: a temporary environment with a `release-dir` component (`web`) and a
//! `command` component (`frontend`), artifacts v1…v4 on disk, and helpers to run the binary.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_rewind");

pub struct Out {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn all(&self) -> String {
        format!("--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr)
    }
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "expected success\n{}", self.all());
        self
    }
    #[track_caller]
    pub fn code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit {code}\n{}",
            self.all()
        );
        self
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", self.all()))
    }
}

fn to_out(o: std::process::Output) -> Out {
    use std::os::unix::process::ExitStatusExt;
    Out {
        code: o.status.code(),
        signal: o.status.signal(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Options of the fixture's config.
#[derive(Clone)]
pub struct Setup {
    /// The web component's restart command (run in the app root).
    pub restart: String,
    pub keep: u32,
    pub extra: String,
    /// `state = "…"` in [environment]; the default SQLite file when `None`.
    pub state: Option<String>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            restart: "echo \"$REWIND_RELEASE\" >> restarts.log".into(),
            keep: 5,
            extra: String::new(),
            state: None,
        }
    }
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        Self::with(Setup::default())
    }

    pub fn with(setup: Setup) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = Fixture { dir };
        let config = format!(
            r#"[environment]
name = "test"
{state}

[components.web]
kind = "release-dir"
root = "srv"
restart = '{restart}'
ready-command = "test -f current/VERSION"
ready-timeout = "10s"
keep = {keep}

[components.frontend]
kind = "command"
current = "cat fe-version"
deploy = "echo deploying {{release}} && echo {{release}} > fe-version"
rollback = "echo rolling back to {{release}} && echo {{release}} > fe-version"
{extra}"#,
            restart = setup.restart,
            keep = setup.keep,
            extra = setup.extra,
            state = setup
                .state
                .map(|s| format!("state = \"{s}\""))
                .unwrap_or_default(),
        );
        std::fs::write(f.path("rewind.toml"), config).unwrap();
        for v in ["v1", "v2", "v3", "v4", "v5", "v6"] {
            let d = f.path(&format!("art/{v}"));
            std::fs::create_dir_all(d.join("assets")).unwrap();
            std::fs::write(d.join("VERSION"), v).unwrap();
            std::fs::write(d.join("assets/app.js"), format!("console.log('{v}')")).unwrap();
        }
        f
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("-c")
            .arg(self.path("rewind.toml"))
            .args(args)
            .current_dir(self.dir.path());
        c.env_remove("REWIND_CRASH_AT")
            .env_remove("REWIND_STATE_URL")
            .env_remove("REWIND_CONFIG");
        c.stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Out {
        to_out(self.cmd(args).output().expect("run rewind"))
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut c = self.cmd(args);
        for (k, v) in env {
            c.env(k, v);
        }
        to_out(c.output().expect("run rewind"))
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rewind")
    }

    pub fn deploy(&self, release: &str) -> Out {
        let art = format!("web={}", self.path(&format!("art/{release}")).display());
        self.run(&["deploy", release, "--artifact", &art])
    }

    /// Where `srv/current` points (`releases/vN`), or "" when it does not exist.
    pub fn current(&self) -> String {
        std::fs::read_link(self.path("srv/current"))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    pub fn frontend(&self) -> String {
        std::fs::read_to_string(self.path("fe-version"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// A full copy of the environment directory (config, state, app root) in a new temp dir.
    pub fn copy(&self) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", self.dir.path().display()))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success());
        Fixture { dir }
    }

    /// The ledger as the CLI reports it: current release and every release's state.
    pub fn ledger(&self) -> (Option<String>, Vec<(String, String)>) {
        let h = self.run(&["--json", "history"]);
        h.ok();
        let j = h.json();
        let current = j["current"].as_str().map(str::to_string);
        let rel = j["releases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_string(),
                    r["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        (current, rel)
    }

    /// What each component runs, as recorded in the ledger.
    pub fn recorded(&self) -> Vec<(String, String)> {
        let s = self.run(&["--json", "status"]);
        s.ok();
        s.json()["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["recorded"].as_str().unwrap_or("-").to_string(),
                )
            })
            .collect()
    }

    /// The newest run as `history --run` reports it.
    pub fn last_run(&self) -> Value {
        let h = self.run(&["--json", "history"]);
        h.ok();
        let id = h.json()["runs"][0]["id"]
            .as_str()
            .expect("a run")
            .to_string();
        let d = self.run(&["--json", "history", "--run", &id]);
        d.ok();
        d.json()
    }

    pub fn state_db(&self) -> PathBuf {
        self.path(".rewind/state.db")
    }
}

/// Asserts a run's journal: every step finished exactly once (done or skipped) and the run
/// succeeded.
#[track_caller]
pub fn assert_run_complete(run: &Value, context: &str) {
    assert_eq!(run["run"]["status"], "succeeded", "{context}: {run:#}");
    let steps = run["run"]["steps"].as_array().unwrap().len();
    let journal = run["journal"].as_array().unwrap();
    for i in 0..steps {
        let finished = journal
            .iter()
            .filter(|e| {
                e["step"].as_i64() == Some(i as i64)
                    && matches!(e["event"].as_str(), Some("done") | Some("skipped"))
            })
            .count();
        assert_eq!(
            finished,
            1,
            "{context}: step {} finished {finished} times\n{run:#}",
            i + 1
        );
        let begun = journal
            .iter()
            .filter(|e| e["step"].as_i64() == Some(i as i64) && e["event"] == "begin")
            .count();
        assert!(begun >= 1, "{context}: step {} has no begin line", i + 1);
    }
}

pub fn audit_ok(f: &Fixture) {
    let v = f.run(&["audit", "verify"]);
    assert_eq!(v.code, Some(0), "audit chain broken\n{}", v.all());
}

/// A fresh database on the test server (`REWIND_TEST_PG_URL`, started by scripts/test), and
/// its URL with `secret` as the password in it (the test server trusts local connections, so
/// the password is never checked — only watched for leaks).
pub async fn fresh_pg_database(secret: &str) -> String {
    fresh_pg_database_on("REWIND_TEST_PG_URL", secret).await
}

/// [`fresh_pg_database`] on the server named by the environment variable `var`
/// (`REWIND_TEST_PG18_URL`: the PostgreSQL 18 server scripts/test starts).
pub async fn fresh_pg_database_on(var: &str, secret: &str) -> String {
    use sqlx::Connection;
    let base = std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run scripts/test, which starts PostgreSQL 15 and 18")
    });
    let name = format!(
        "rewind_cli_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let with_db = match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("{var} has no database part: {base}"),
    };
    let url = with_db.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{secret}@"),
        1,
    );
    assert!(
        url.contains(secret),
        "{var} must look like postgres://postgres@host:port/db"
    );
    url
}
