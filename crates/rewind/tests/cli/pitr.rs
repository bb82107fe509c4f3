//! Point-in-time recovery through the real binary: a PostgreSQL cluster of its own that
//! archives its WAL to pgBackRest, a `postgres` component with `[components.db.pitr]`, a
//! bad write after a known-good time T, and `rewind rollback --to-time T` bringing the
//! database back to T with writes frozen around it. Out-of-window times are refused by
//! `plan` without touching the server.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sqlx::Connection;

use crate::common::*;

const SECRET: &str = "pitr-secret-4711";
const STANZA: &str = "pitr";

pub(crate) fn pg_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").is_file())
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!("no PostgreSQL server in /usr/lib/postgresql/*/bin: apt-get install -y postgresql")
    })
}

/// pgBackRest as `scripts/test` names it, else from PATH. Never skipped: missing, it fails.
fn pgbackrest_bin() -> PathBuf {
    let found = match std::env::var_os("REWIND_TEST_PGBACKREST") {
        Some(p) => Some(PathBuf::from(p)),
        None => std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join("pgbackrest"))
            .find(|p| p.is_file()),
    };
    match found {
        Some(p) if p.is_file() => p,
        _ => panic!(
            "pgbackrest not found (REWIND_TEST_PGBACKREST unset or wrong, not in PATH): \
             install it (apt-get install -y pgbackrest) or run scripts/test"
        ),
    }
}

pub(crate) fn root_user() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

/// As the `postgres` OS user when we are root (PostgreSQL refuses to run as root).
pub(crate) fn as_pg(program: &Path) -> Command {
    if !root_user() {
        return Command::new(program);
    }
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"])
        .arg(program)
        .current_dir("/");
    c
}

#[track_caller]
pub(crate) fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A cluster under /tmp (reachable by the postgres user) with its pgBackRest repository
/// beside it. Dropping it stops the server, also when the test panics.
struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pgbackrest: PathBuf,
    port: u16,
}

impl Cluster {
    fn start() -> Cluster {
        let (bin, pgbackrest) = (pg_bin(), pgbackrest_bin());
        let dir = tempfile::Builder::new()
            .prefix("rewind-cli-pitr-")
            .tempdir_in("/tmp")
            .unwrap();
        for sub in ["repo", "log", "lock", "spool"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        if root_user() {
            run_ok(
                Command::new("chown")
                    .args(["-R", "postgres:"])
                    .arg(dir.path()),
            );
        }
        let mut c = Cluster {
            dir,
            bin,
            pgbackrest,
            port: 0,
        };
        run_ok(as_pg(&c.bin.join("initdb")).arg("-D").arg(c.data()).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]));
        let base = std::fs::read_to_string(c.data().join("postgresql.conf")).unwrap();
        // A free port can be taken before the server binds it: a few tries.
        for _ in 0..5 {
            c.port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let root = c.root();
            let pgbr = c.pgbackrest.display();
            let server = format!(
                "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = \
                 '{root}'\nfsync = off\nwal_level = replica\narchive_mode = on\n\
                 archive_command = '{pgbr} --config={root}/pgbackrest.conf \
                 --stanza={STANZA} archive-push %p'\n",
                port = c.port,
                root = root.display(),
            );
            let repo = format!(
                "[global]\nrepo1-path={root}/repo\nrepo1-retention-full=2\nlog-path={root}/log\n\
                 lock-path={root}/lock\nspool-path={root}/spool\nlog-level-console=warn\n\
                 log-level-file=off\nstart-fast=y\ncompress-type=none\n\n[{STANZA}]\n\
                 pg1-path={root}/data\npg1-port={port}\npg1-socket-path={root}\n",
                port = c.port,
                root = root.display(),
            );
            std::fs::write(
                c.data().join("postgresql.conf"),
                format!("{base}\n{server}"),
            )
            .unwrap();
            std::fs::write(root.join("pgbackrest.conf"), repo).unwrap();
            if as_pg(Path::new("/bin/sh"))
                .args(["-c", &c.start_cmd()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success()
            {
                return c;
            }
        }
        panic!("PostgreSQL did not start:\n{}", c.log());
    }

    fn root(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn data(&self) -> PathBuf {
        self.root().join("data")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root().join("server.log")).unwrap_or_default()
    }

    fn pg_ctl(&self, args: &str) -> String {
        format!(
            "'{}' -D '{}' {args}",
            self.bin.join("pg_ctl").display(),
            self.data().display()
        )
    }

    fn start_cmd(&self) -> String {
        let log = self.root().join("server.log");
        self.pg_ctl(&format!("-l '{}' -w -t 60 start", log.display()))
    }

    /// The URL rewind gets: a password the server never asks for (it trusts local
    /// connections), so any place it shows up is a leak.
    fn url(&self, db: &str) -> String {
        format!("postgres://postgres:{SECRET}@127.0.0.1:{}/{db}", self.port)
    }

    fn pgbackrest(&self, args: &[&str]) {
        let conf = self.root().join("pgbackrest.conf");
        run_ok(
            as_pg(&self.pgbackrest)
                .arg(format!("--config={}", conf.display()))
                .arg(format!("--stanza={STANZA}"))
                .args(args),
        );
    }

    fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// `[components.db.pitr]` for this cluster.
    fn pitr_toml(&self) -> String {
        format!(
            "[components.db.pitr]\nstanza = \"{STANZA}\"\nconfig = \"{conf}\"\n{run_as}\
             data-dir = \"{data}\"\nstop = \"\"\"{stop}\"\"\"\nstart = \"\"\"{start}\"\"\"\n",
            conf = self.root().join("pgbackrest.conf").display(),
            // Only root can switch users; otherwise the cluster is ours already.
            run_as = if root_user() {
                "run-as = \"postgres\"\n"
            } else {
                ""
            },
            data = self.data().display(),
            stop = self.pg_ctl("-m fast -w -t 60 stop"),
            start = self.start_cmd(),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.postmaster_pid().is_some() {
            let _ = as_pg(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

async fn sql(url: &str, query: &str) -> Vec<String> {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_string()))
        .fetch_all(&mut c)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"));
    c.close().await.unwrap();
    rows
}

/// v1: items; v2 and v3 (the same): + a note column (additive).
fn write_releases(f: &Fixture) {
    let m = |v: &str, file: &str, text: &str| {
        let p = f.path(&format!("rel/{v}/migrations/{file}"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    for v in ["v1", "v2", "v3"] {
        m(
            v,
            "1_items.up.sql",
            "CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT NOT NULL);",
        );
        m(v, "1_items.down.sql", "DROP TABLE items;");
    }
    for v in ["v2", "v3"] {
        m(
            v,
            "2_note.up.sql",
            "ALTER TABLE items ADD COLUMN note TEXT;",
        );
        m(v, "2_note.down.sql", "ALTER TABLE items DROP COLUMN note;");
    }
}

#[test]
fn rollback_to_a_time_restores_the_database_between_two_writes() {
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = Cluster::start();
    let admin = cluster.url("postgres");
    let url = cluster.url("app");
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::raw_sql("CREATE DATABASE app")
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
    });
    cluster.pgbackrest(&["stanza-create"]);
    let before_backup = jiff::Timestamp::now();
    std::thread::sleep(Duration::from_millis(1100));
    cluster.pgbackrest(&["--type=full", "backup"]);

    let f = Fixture::new();
    write_releases(&f);
    // The second check holds only while rewind has writes frozen (the database's own
    // setting: rewind's sessions override it for themselves). The data checks run between
    // the freeze and the unfreeze, so it fails the rollback if the restore thawed the
    // database (its catalog goes back to T, before the freeze). `plan --to-time` ignores
    // failing checks, so it does not get in the way there.
    std::fs::write(
        f.path("rewind.toml"),
        format!(
            r#"[environment]
name = "test"

[components.db]
kind = "postgres"
url-env = "APP_DATABASE_URL"
migrations = "rel/{{release}}/migrations"
format = "sqlx"
freeze = "read-only"

[[components.db.check]]
name = "ids are positive"
sql = "SELECT count(*) = 0 FROM items WHERE id <= 0"

[[components.db.check]]
name = "writes are frozen"
sql = """SELECT EXISTS (SELECT FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
  WHERE d.datname = current_database() AND s.setrole = 0
    AND 'default_transaction_read_only=on' = ANY (s.setconfig))"""

{}"#,
            cluster.pitr_toml()
        ),
    )
    .unwrap();
    // rewind runs pgbackrest from PATH: the one this test found goes first.
    let path = format!(
        "{}:{}",
        cluster.pgbackrest.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = [("APP_DATABASE_URL", url.as_str()), ("PATH", path.as_str())];
    let mut outputs = String::new();
    let mut run = |args: &[&str]| {
        let out = f.run_env(args, &env);
        outputs.push_str(&out.all());
        out
    };
    run(&["deploy", "v1"]).ok();
    run(&["deploy", "v2"]).ok();

    // Row A, then T, then the bad write B; a second on each side so the commit times are
    // clearly before and after T (the server's clock is this machine's).
    rt.block_on(sql(&url, "INSERT INTO items VALUES (1, 'A') RETURNING v"));
    std::thread::sleep(Duration::from_secs(1));
    let t = rewind_time(jiff::Timestamp::now());
    std::thread::sleep(Duration::from_secs(1));
    rt.block_on(sql(&url, "INSERT INTO items VALUES (2, 'B') RETURNING v"));
    // PITR puts the whole database at T, where it was at v2's level (2). Rolling back from
    // v2 would target v1 (level 1), and the ledger would then record a level the restored
    // database does not have (rewind does not catch that: the target must be the release
    // live at T). So, as when a bad write is found after the next deploy: v3 (the same
    // migrations as v2) goes out, and rolling back from it targets v2, live at T.
    run(&["deploy", "v3"]).ok();
    let rows = || rt.block_on(sql(&url, "SELECT v FROM items ORDER BY id"));
    assert_eq!(rows(), ["A", "B"]);

    let text = run(&["plan", "--to-time", &t]);
    text.ok();
    let restore = format!("db: restore to {t} with pgBackRest (point in time)");
    assert!(text.stdout.contains(&restore), "{}", text.all());
    let plan = run(&["--json", "plan", "--to-time", &t]).ok().json();
    let decision = &plan["databases"]["db"]["decision"];
    assert_eq!(decision["decision"], "restore", "{plan}");
    assert_eq!(decision["source"]["from"], "point-in-time", "{plan}");
    assert_eq!(decision["source"]["time"], t.as_str(), "{plan}");

    // Outside pgBackRest's window (before the backup, or in the future): refused, exit 1,
    // nothing touched.
    let pid = cluster.postmaster_pid().expect("the server is down");
    let future = rewind_time(jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1));
    for outside in [rewind_time(before_backup), future] {
        let out = run(&["plan", "--to-time", &outside]);
        out.code(1);
        assert!(out.stderr.contains("outside"), "{}", out.all());
        assert!(out.stderr.contains(&outside), "{}", out.all());
    }
    // At T release v2 was live: a restore to T cannot leave the database at v1's level.
    let out = run(&["plan", "--to", "v1", "--to-time", &t]);
    out.code(1);
    assert!(
        out.stderr.contains("release v2 was live") && out.stderr.contains("--to v2"),
        "{}",
        out.all()
    );
    let local = t.trim_end_matches('Z');
    let out = run(&["plan", "--to-time", local]);
    out.code(2);
    assert!(out.stderr.contains("time zone"), "{}", out.all());
    assert_eq!(
        cluster.postmaster_pid(),
        Some(pid),
        "the server was touched"
    );
    assert_eq!(rows(), ["A", "B"]);
    assert_eq!(f.ledger().0.as_deref(), Some("v3"));

    let rb = run(&["rollback", "--yes", "--to-time", &t]);
    assert_eq!(
        rb.code,
        Some(0),
        "{}\nserver log:\n{}",
        rb.all(),
        cluster.log()
    );
    assert_eq!(rows(), ["A"], "B was written after T");
    assert_ne!(
        cluster.postmaster_pid(),
        Some(pid),
        "the server was not restarted"
    );
    let after = rt.block_on(sql(
        &url,
        "SELECT current_setting('default_transaction_read_only') || ' ' || pg_is_in_recovery()::text",
    ));
    assert_eq!(after, ["off false"], "a primary that takes writes");
    rt.block_on(sql(&url, "INSERT INTO items VALUES (3, 'C') RETURNING v"));
    assert_eq!(rows(), ["A", "C"]);

    let history = f.last_run();
    assert_run_complete(&history, "point-in-time rollback");
    let journal = history["journal"].as_array().cloned().unwrap();
    let notes: Vec<&str> = journal
        .iter()
        .filter(|e| e["event"] == "note")
        .filter_map(|e| e["message"].as_str())
        .collect();
    for phase in [
        "checking window",
        "stopping",
        "restoring",
        "starting",
        "recovering",
        "done",
    ] {
        let line = format!("db: point-in-time recovery: {phase}");
        assert!(
            notes.contains(&line.as_str()),
            "no note {line:?}: {notes:?}"
        );
    }
    let step_done = |id: &str| {
        journal
            .iter()
            .find(|e| e["step_id"] == id && e["event"] == "done")
            .unwrap_or_else(|| panic!("{id} not done: {journal:?}"))["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for id in ["db.freeze", "db.restore-point", "db.unfreeze"] {
        step_done(id);
    }
    let restored = step_done("db.restore");
    assert!(restored.contains(&format!("restored to {t}")), "{restored}");
    assert!(restored.contains("writes stopped again"), "{restored}");
    let check = step_done("db.check");
    assert!(check.contains("check ids are positive: holds"), "{check}");
    assert!(check.contains("check writes are frozen: holds"), "{check}");

    assert_eq!(f.ledger().0.as_deref(), Some("v2"));
    let status = run(&["--json", "status"]).ok().json();
    let db = status["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "db")
        .cloned()
        .unwrap();
    assert_eq!(
        (&db["recorded"], &db["live"]),
        (&"2".into(), &"2".into()),
        "{status}"
    );
    let audit = run(&["audit", "verify"]);
    audit.ok();
    let everything = format!("{outputs}{}", serde_json::to_string(&journal).unwrap());
    assert!(!everything.contains(SECRET), "the password leaked");
    eprintln!(
        "point-in-time rollback through the CLI: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// A time as `--to-time` takes it and rewind writes it back (UTC, microseconds).
fn rewind_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}
