//! The state store under attack: emptied, deleted, replaced or truncated (its chain's head
//! removed), entries changed into something that is not UTF-8 or JSON, a read-only state
//! directory, a damaged file, a PostgreSQL state server stopped in the middle of a run.
//! Each is refused or reported in words that say what happened and what to do, and
//! nothing is changed by a refusal.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::common::*;
use crate::pitr::{as_pg, pg_bin, root_user, run_ok};

async fn sqlite_exec(db: &Path, sql: &str) {
    let url = format!("sqlite://{}", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    conn.close().await.unwrap();
}

async fn pg_exec(url: &str, sql: &str) {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    conn.close().await.unwrap();
}

/// The store's contents, byte for byte (the file and its `-wal`), to show a refusal changed
/// nothing.
fn snapshot(f: &Fixture) -> Vec<(String, Option<Vec<u8>>)> {
    ["state.db", "state.db-wal"]
        .iter()
        .map(|n| {
            let bytes = std::fs::read(f.path(&format!(".rewind/{n}"))).ok();
            // An empty write-ahead log (SQLite creates one to read a WAL database) holds
            // nothing: the same as none.
            (n.to_string(), bytes.filter(|b| !b.is_empty()))
        })
        .collect()
}

#[track_caller]
fn assert_refused_as_not_the_ledger(o: &Out, context: &str) {
    o.code(1);
    for want in [
        "is not the ledger that recorded environment `test`",
        "evidence that the environment was recorded before",
        "rewind adopt --yes",
        "restore the state store",
    ] {
        assert!(
            o.stderr.contains(want),
            "{context}: no {want:?}\n{}",
            o.all()
        );
    }
}

/// `: > .rewind/state.db`: every command that would use it is refused (a deploy does not go
/// ahead with no history, `audit verify` does not say "holds: 0 entries"), nothing is
/// written, and `rewind adopt --yes` goes on deliberately, on the record.
#[tokio::test]
async fn an_emptied_sqlite_state_file_is_refused_until_adopted() {
    let f = Fixture::new();
    f.deploy("v1").ok();
    f.deploy("v2").ok();
    std::fs::write(f.state_db(), b"").unwrap();
    let before = snapshot(&f);

    let d = f.deploy("v3");
    assert_refused_as_not_the_ledger(&d, "deploy");
    // The evidence: the markers and the release directory with its `current` symlink.
    assert!(d.stderr.contains("environment-test.json"), "{}", d.all());
    assert!(
        d.stderr
            .contains("has `current` → releases/v2 and releases/ holds v1, v2"),
        "{}",
        d.all()
    );
    assert_eq!(
        f.current(),
        "releases/v2",
        "the refused deploy changed the app"
    );
    let v = f.run(&["audit", "verify"]);
    v.code(1);
    assert!(!v.stdout.contains("holds"), "{}", v.all());
    assert!(v.stderr.contains("it holds nothing"), "{}", v.all());
    let j = f.run(&["--json", "audit", "verify"]);
    j.code(1);
    assert_eq!(j.json()["detail"]["ok"], false, "{}", j.all());
    for args in [
        &["status"][..],
        &["history"],
        &["rollback", "--yes"],
        &["plan"],
    ] {
        assert_refused_as_not_the_ledger(&f.run(args), &args.join(" "));
    }
    // Without --yes, adopt shows what it would record and changes nothing.
    let a = f.run(&["adopt"]);
    a.code(2);
    assert!(a.stderr.contains("--yes"), "{}", a.all());
    assert!(
        snapshot(&f) == before,
        "a refused command wrote to the store"
    );

    // Adopted: the restart is the first entry of the new chain, naming what was lost.
    let a = f.run(&["adopt", "--yes"]);
    a.ok();
    assert!(a.stdout.contains("adopted"), "{}", a.all());
    let log = f.run(&["--json", "audit", "log"]);
    log.ok();
    let first = &log.json()["entries"][0];
    assert_eq!(first["action"], "ledger.adopted", "{}", log.all());
    assert!(
        first["details"]["evidence"]
            .to_string()
            .contains("releases/v2"),
        "{first:#}"
    );
    let v = f.run(&["audit", "verify"]);
    v.ok();
    assert!(v.stdout.contains("restarted"), "{}", v.all());
    f.deploy("v3").ok();
    assert_eq!(f.current(), "releases/v3");
    audit_ok(&f);
    f.run(&["adopt"]).ok();
}

/// A deleted state file, and the markers gone too: the release directory alone is enough
/// evidence, and a missing file is not created by the refusal.
#[tokio::test]
async fn a_deleted_state_store_with_only_release_directories_left_is_refused() {
    let f = Fixture::new();
    f.deploy("v1").ok();
    std::fs::remove_dir_all(f.path(".rewind")).unwrap();
    std::fs::remove_dir_all(f.path("srv/.rewind")).unwrap();
    for args in [&["status"][..], &["audit", "verify"]] {
        let o = f.run(args);
        assert_refused_as_not_the_ledger(&o, &args.join(" "));
    }
    let d = f.deploy("v2");
    assert_refused_as_not_the_ledger(&d, "deploy");
    assert!(
        d.stderr.contains("srv has `current` → releases/v1"),
        "{}",
        d.all()
    );
    assert!(!f.state_db().exists(), "the refusal created a store");
    assert_eq!(f.current(), "releases/v1");
    // A fresh environment (nothing on disk yet) is not refused.
    let fresh = Fixture::new();
    fresh.deploy("v1").ok();
}

/// The newest audit entries removed and the separately kept head rewritten to match: the
/// store alone cannot tell, the markers can. `audit verify` never reports success over it.
#[tokio::test]
async fn audit_verify_fails_over_a_chain_that_lost_its_head() {
    let f = Fixture::new();
    f.deploy("v1").ok();
    f.deploy("v2").ok();
    let n = f.run(&["--json", "audit", "log"]).json()["entries"]
        .as_array()
        .unwrap()
        .len();
    let keep = n - 5;
    sqlite_exec(
        &f.state_db(),
        &format!(
            "DELETE FROM audit WHERE env = 'test' AND seq > {keep};
             UPDATE audit_head SET seq = {keep},
                 hash = (SELECT hash FROM audit WHERE env = 'test' AND seq = {keep})
             WHERE env = 'test';"
        ),
    )
    .await;
    let v = f.run(&["audit", "verify"]);
    v.code(1);
    assert!(
        v.stderr.contains(&format!("records audit entry #{n}")),
        "{}",
        v.all()
    );
    assert!(
        v.stderr
            .contains(&format!("the chain ends at entry #{keep}")),
        "{}",
        v.all()
    );
    assert_refused_as_not_the_ledger(&f.deploy("v3"), "deploy over a truncated chain");
    assert_eq!(f.current(), "releases/v2");
}

/// The same on a PostgreSQL state store: its tables dropped and recreated empty (a new
/// database would look the same), then the chain truncated with its head.
#[tokio::test]
async fn an_emptied_postgresql_state_store_is_refused() {
    let url = fresh_pg_database("pw-store-4711").await;
    let f = Fixture::with(Setup {
        state: Some(url.clone()),
        ..Setup::default()
    });
    f.deploy("v1").ok();
    f.deploy("v2").ok();
    let other = f.copy();
    pg_exec(&url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public;").await;
    // A reading command is refused and creates nothing in the emptied database.
    let s = f.run(&["status"]);
    assert_refused_as_not_the_ledger(&s, "status on an emptied PostgreSQL store");
    let tables: i64 = {
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(tables, 0, "a reading command created the schema");
    let d = f.deploy("v3");
    assert_refused_as_not_the_ledger(&d, "deploy on an emptied PostgreSQL store");
    assert!(!d.all().contains("pw-store-4711"), "{}", d.all());
    assert_eq!(f.current(), "releases/v2");
    let v = f.run(&["audit", "verify"]);
    v.code(1);
    assert!(!v.stdout.contains("holds"), "{}", v.all());
    f.run(&["adopt", "--yes"]).ok();
    f.deploy("v3").ok();
    audit_ok(&f);

    // Entries removed with their head: the other copy's markers (written at v2) are ahead
    // of nothing now, but this environment's are at v3.
    let n = f.run(&["--json", "audit", "log"]).json()["entries"]
        .as_array()
        .unwrap()
        .len();
    pg_exec(
        &url,
        &format!(
            "DELETE FROM audit WHERE env = 'test' AND seq > {k};
             UPDATE audit_head SET seq = {k},
                 hash = (SELECT hash FROM audit WHERE env = 'test' AND seq = {k})
             WHERE env = 'test';",
            k = n - 3
        ),
    )
    .await;
    let v = f.run(&["audit", "verify"]);
    v.code(1);
    assert!(
        v.stderr.contains(&format!("records audit entry #{n}")),
        "{}",
        v.all()
    );
    // The copy's markers name the store that was dropped: a replaced store.
    let o = other.run(&["status"]);
    assert_refused_as_not_the_ledger(&o, "a copy whose markers name the dropped store");
    assert!(o.stderr.contains("the store was replaced"), "{}", o.all());
}

/// Values that are not JSON (both stores) and not UTF-8 (SQLite: PostgreSQL refuses to
/// store one): `audit verify` names each entry and fails as tampering, `audit log` shows
/// every other entry, row by row, and marks the unreadable ones.
async fn unreadable_audit_entries(f: &Fixture, exec: impl AsyncFn(&str), utf8: bool) {
    f.deploy("v1").ok();
    f.deploy("v2").ok();
    let n = f.run(&["--json", "audit", "log"]).json()["entries"]
        .as_array()
        .unwrap()
        .len();
    exec("UPDATE audit SET details = 'not json' WHERE env = 'test' AND seq = 3").await;
    if utf8 {
        exec("UPDATE audit SET actor = CAST(x'61ff62' AS TEXT) WHERE env = 'test' AND seq = 5")
            .await;
    }
    let v = f.run(&["audit", "verify"]);
    v.code(1);
    assert!(
        v.stderr
            .contains("broken at entry #3: cannot be read (column `details` is not the JSON"),
        "{}",
        v.all()
    );
    assert!(
        v.stderr.contains("changed after it was written"),
        "{}",
        v.all()
    );
    assert!(
        !v.stderr.contains("this version cannot read"),
        "{}",
        v.all()
    );
    if utf8 {
        assert!(
            v.stderr
                .contains("entry #5: cannot be read (column `actor` is not valid UTF-8"),
            "{}",
            v.all()
        );
    }
    let j = f.run(&["--json", "audit", "verify"]);
    j.code(1);
    let d = &j.json()["detail"];
    assert_eq!(d["first_bad_entry"], 3, "{d:#}");
    assert_eq!(
        d["broken"].as_array().unwrap().len(),
        if utf8 { 2 } else { 1 },
        "{d:#}"
    );

    let log = f.run(&["audit", "log"]);
    log.ok();
    let bad = if utf8 { 2 } else { 1 };
    assert_eq!(
        log.stdout.matches("UNREADABLE").count(),
        bad,
        "{}",
        log.all()
    );
    assert_eq!(
        log.stdout.matches("deploy.start").count(),
        2,
        "every readable entry is shown\n{}",
        log.all()
    );
    let j = f.run(&["--json", "audit", "log"]);
    j.ok();
    let j = j.json();
    assert_eq!(j["entries"].as_array().unwrap().len(), n - bad, "{j:#}");
    assert_eq!(j["unreadable"][0]["seq"], 3, "{j:#}");
    assert_eq!(j["unreadable"][0]["column"], "details", "{j:#}");
    let last = f.run(&["audit", "log", "--last", "2"]);
    last.ok();
    assert!(last.stdout.contains("run.succeeded"), "{}", last.all());
}

#[tokio::test]
async fn unreadable_audit_entries_on_sqlite_are_named() {
    let f = Fixture::new();
    let db = f.state_db();
    unreadable_audit_entries(&f, async |sql: &str| sqlite_exec(&db, sql).await, true).await;
}

#[tokio::test]
async fn unreadable_audit_entries_on_postgresql_are_named() {
    let url = fresh_pg_database("pw-unreadable-4711").await;
    let f = Fixture::with(Setup {
        state: Some(url.clone()),
        ..Setup::default()
    });
    unreadable_audit_entries(&f, async |sql: &str| pg_exec(&url, sql).await, false).await;
}

/// The fixture run by a user who cannot write the state directory (as root, permissions
/// do not apply: the fixture is handed to the `postgres` user and run as it).
fn run_unprivileged(f: &Fixture, args: &[&str]) -> Out {
    let mut c = if root_user() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", BIN]);
        c
    } else {
        Command::new(BIN)
    };
    c.arg("-c")
        .arg(f.path("rewind.toml"))
        .args(args)
        .current_dir(f.dir.path())
        .env_remove("REWIND_STATE_URL")
        .env_remove("REWIND_CRASH_AT")
        .stdin(Stdio::null());
    let o = c.output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    Out {
        code: o.status.code(),
        signal: o.status.signal(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// `status`, `history`, `audit log` and `audit verify` only read: they work on a state
/// directory nobody may write (with and without the write-ahead files beside the store),
/// and a deploy says the store is read-only.
#[tokio::test]
async fn reading_commands_work_on_a_read_only_state_directory() {
    use std::os::unix::fs::PermissionsExt;
    for checkpointed in [false, true] {
        let f = Fixture::new();
        f.deploy("v1").ok();
        f.deploy("v2").ok();
        if checkpointed {
            // Every connection closed: the database alone, no -wal/-shm beside it.
            sqlite_exec(&f.state_db(), "PRAGMA wal_checkpoint(TRUNCATE)").await;
            for s in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(f.path(&format!(".rewind/state.db{s}")));
            }
        }
        if root_user() {
            run_ok(
                Command::new("chown")
                    .args(["-R", "postgres:"])
                    .arg(f.dir.path()),
            );
        }
        for e in std::fs::read_dir(f.path(".rewind")).unwrap() {
            let p = e.unwrap().path();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
        }
        std::fs::set_permissions(f.path(".rewind"), std::fs::Permissions::from_mode(0o555))
            .unwrap();
        let before = snapshot(&f);
        let ctx = format!("checkpointed: {checkpointed}");
        let s = run_unprivileged(&f, &["status"]);
        assert_eq!(s.code, Some(0), "{ctx}\n{}", s.all());
        assert!(
            s.stdout.contains("current release: v2"),
            "{ctx}\n{}",
            s.all()
        );
        for args in [&["audit", "verify"][..], &["audit", "log"], &["history"]] {
            let o = run_unprivileged(&f, args);
            assert_eq!(o.code, Some(0), "{ctx}: {args:?}\n{}", o.all());
        }
        let d = run_unprivileged(
            &f,
            &[
                "deploy",
                "v3",
                "--artifact",
                &format!("web={}", f.path("art/v3").display()),
            ],
        );
        assert_eq!(d.code, Some(1), "{ctx}\n{}", d.all());
        assert!(d.stderr.contains("is read-only"), "{ctx}\n{}", d.all());
        assert!(
            d.stderr
                .contains("make the file and its directory writable"),
            "{}",
            d.all()
        );
        assert!(snapshot(&f) == before, "{ctx}: the store changed");
        assert_eq!(f.current(), "releases/v2");
        std::fs::set_permissions(f.path(".rewind"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
}

/// A state file that is not a database, and one cut short: reported as not a usable store
/// (not as "cannot migrate"), with what to do, and left as it was.
#[tokio::test]
async fn a_corrupt_state_file_is_reported_as_corrupt() {
    let f = Fixture::new();
    f.deploy("v1").ok();
    f.deploy("v2").ok();
    sqlite_exec(&f.state_db(), "PRAGMA wal_checkpoint(TRUNCATE)").await;
    for s in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(f.path(&format!(".rewind/state.db{s}")));
    }
    let garbage = f.copy();
    let mut bytes = std::fs::read(garbage.state_db()).unwrap();
    bytes[..16].copy_from_slice(b"garbage!garbage!");
    std::fs::write(garbage.state_db(), &bytes).unwrap();
    let cut = f.copy();
    let len = std::fs::metadata(cut.state_db()).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(cut.state_db())
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    for (f, what) in [
        (&garbage, "is not an SQLite database"),
        (&cut, "is damaged"),
    ] {
        let before = snapshot(f);
        for args in [
            &["status"][..],
            &["audit", "verify"],
            &["rollback", "--yes"],
        ] {
            let o = f.run(args);
            o.code(1);
            for want in [
                "is not a usable rewind state store",
                what,
                "restore the state store from a backup copy",
            ] {
                assert!(
                    o.stderr.contains(want),
                    "{args:?}: no {want:?}\n{}",
                    o.all()
                );
            }
            assert!(!o.stderr.contains("cannot migrate"), "{}", o.all());
        }
        assert!(snapshot(f) == before, "{what}: the file was changed");
        assert_eq!(f.current(), "releases/v2");
    }
}

/// Damage inside one table's page (the header and the other tables sound) is found before a
/// command writes anything: before, a deploy recorded its release, run and audit entry and
/// then failed on the damaged table, leaving an "unfinished deploy" behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_table_page_is_found_before_anything_is_written() {
    let f = Fixture::new();
    f.deploy("v1").ok();
    f.deploy("v2").ok();
    let db = f.state_db();
    sqlite_exec(&db, "PRAGMA wal_checkpoint(TRUNCATE)").await;
    for s in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(f.path(&format!(".rewind/state.db{s}")));
    }
    let (page_size, root): (i64, i64) = {
        let url = format!("sqlite://{}", db.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let root: i64 =
            sqlx::query_scalar("SELECT rootpage FROM sqlite_master WHERE name = 'restore_points'")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        conn.close().await.unwrap();
        (page_size, root)
    };
    for s in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(f.path(&format!(".rewind/state.db{s}")));
    }
    // The page's b-tree type byte becomes one SQLite never writes.
    let mut bytes = std::fs::read(&db).unwrap();
    let at = ((root - 1) * page_size) as usize;
    bytes[at] = 0x7f;
    std::fs::write(&db, &bytes).unwrap();
    let before = snapshot(&f);
    let art = format!("web={}", f.path("art/v3").display());
    let o = f.run(&["deploy", "v3", "--artifact", &art]);
    o.code(1);
    assert!(
        o.stderr.contains("is damaged")
            && (o.stderr.contains("rewind wrote nothing") || o.stderr.contains("left it as it is")),
        "{}",
        o.all()
    );
    assert!(snapshot(&f) == before, "the damaged file was written to");
    assert_eq!(f.current(), "releases/v2");
}

/// A PostgreSQL cluster of the test's own (the shared test servers must not be stopped),
/// stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("rewind-cli-store-")
            .tempdir_in("/tmp")
            .unwrap();
        if root_user() {
            run_ok(
                Command::new("chown")
                    .args(["-R", "postgres:"])
                    .arg(dir.path()),
            );
        }
        let mut c = Cluster { dir, port: 0 };
        run_ok(
            as_pg(&pg_bin().join("initdb"))
                .arg("-D")
                .arg(c.data())
                .args(["-A", "trust", "-U", "postgres", "--no-sync"]),
        );
        let base = std::fs::read_to_string(c.data().join("postgresql.conf")).unwrap();
        for _ in 0..5 {
            c.port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            std::fs::write(
                c.data().join("postgresql.conf"),
                format!(
                    "{base}\nport = {}\nlisten_addresses = '127.0.0.1'\n\
                     unix_socket_directories = '{}'\nfsync = off\n",
                    c.port,
                    c.dir.path().display()
                ),
            )
            .unwrap();
            if c.pg_ctl(&[
                "-l",
                &c.dir.path().join("log").display().to_string(),
                "-w",
                "start",
            ]) {
                return c;
            }
        }
        panic!("PostgreSQL did not start");
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        as_pg(&pg_bin().join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    fn stop(&self) {
        assert!(self.pg_ctl(&["-m", "fast", "-w", "stop"]));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            self.pg_ctl(&["-m", "immediate", "stop"]);
        }
    }
}

/// The PostgreSQL state server stops in the middle of a deploy: the run stops with "the
/// state server is unreachable" and why, within seconds (not "pool timed out" after a
/// minute), and `resume` finishes the run once it answers again. A server that is down
/// from the start is said the same way, at once.
#[tokio::test]
async fn a_postgresql_state_server_that_stops_is_reported_unreachable_at_once() {
    let cluster = Cluster::start();
    let url = format!(
        "postgres://postgres:pw-down-4711@127.0.0.1:{}/postgres",
        cluster.port
    );
    let f = Fixture::with(Setup {
        restart: "sleep 2; echo \"$REWIND_RELEASE\" >> restarts.log".into(),
        state: Some(url.clone()),
        ..Setup::default()
    });
    f.deploy("v1").ok();
    let art = format!("web={}", f.path("art/v2").display());
    let child = f.spawn(&["deploy", "v2", "--artifact", &art]);
    // Stopped while the restart runs (the run has written its first steps).
    let started = Instant::now();
    while f.current() != "releases/v2" {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the deploy did not switch"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.stop();
    let stopped = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = stopped.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        took < Duration::from_secs(20),
        "reported after {took:?}\n{stderr}"
    );
    assert!(
        stderr.contains("state server at postgres://postgres:***@127.0.0.1:")
            && stderr.contains("is unreachable: connection refused"),
        "{stderr}"
    );
    assert!(!stderr.contains("pool timed out"), "{stderr}");
    assert!(stderr.contains("rewind resume"), "{stderr}");
    assert!(!stderr.contains("pw-down-4711"), "{stderr}");

    // Down from the start: at once, the same words.
    let t = Instant::now();
    let s = f.run(&["status"]);
    s.code(1);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        s.stderr.contains("is unreachable: connection refused"),
        "{}",
        s.all()
    );

    // Back up: resume finishes the run.
    assert!(cluster.pg_ctl(&[
        "-l",
        &cluster.dir.path().join("log").display().to_string(),
        "-w",
        "start"
    ]));
    f.run(&["resume"]).ok();
    assert_eq!(f.current(), "releases/v2");
    assert_run_complete(&f.last_run(), "resume after the state server came back");
    audit_ok(&f);
}
