//! `rewind backup create` killed with SIGKILL at every moment that matters — while the
//! partial file grows (a crash point, and real kills by timing), once the file is complete
//! but has no description, once the description is written but not yet in place — on SQLite
//! and on PostgreSQL (whose pg_dump must die with rewind). After each, `backup list` and the
//! next `backup create` leave exactly the complete backups in the directory, list only them,
//! and prune by `keep-backups` counting them; a live concurrent writer's partial file is
//! never taken, and the progress line measures only the backup being written.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::children::survivors;
use crate::common::*;

const KEEP: usize = 3;

struct Db {
    f: Fixture,
    env: Vec<(String, String)>,
    ext: &'static str,
}

impl Db {
    fn env(&self) -> Vec<(&str, &str)> {
        let mut e: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        e.push(("REWIND_TEST_MARK", self.mark()));
        e
    }

    fn mark(&self) -> &str {
        self.f.dir.path().to_str().unwrap()
    }

    fn run(&self, args: &[&str]) -> Out {
        self.f.run_env(args, &self.env())
    }

    fn run_with(&self, args: &[&str], extra: &[(&str, &str)]) -> Out {
        let mut env = self.env();
        env.extend_from_slice(extra);
        self.f.run_env(args, &env)
    }

    fn dir(&self) -> PathBuf {
        self.f.path(".rewind/backups/db")
    }

    fn names(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `backup list`: the ids it shows.
    fn listed(&self) -> Vec<String> {
        let l = self.run(&["--json", "backup", "list"]);
        l.ok();
        l.json()["backups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// The directory holds exactly the listed backups (file and description each) and the
    /// lock: no partial file, no half of a backup.
    #[track_caller]
    fn assert_clean(&self, ctx: &str) -> Vec<String> {
        let listed = self.listed();
        let mut want: BTreeSet<String> = listed
            .iter()
            .flat_map(|id| [format!("{id}.json"), format!("{id}.{}", self.ext)])
            .collect();
        want.insert(".rewind-backups.lock".into());
        assert_eq!(
            self.names(),
            want,
            "{ctx}: debris left in the backup directory"
        );
        assert!(
            listed.len() <= KEEP,
            "{ctx}: {listed:?} beyond keep-backups"
        );
        listed
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn setup(component: &str) -> Fixture {
    let f = Fixture::new();
    write(
        &f.path("rel/v1/migrations/1_blobs.up.sql"),
        "CREATE TABLE blobs (id INTEGER PRIMARY KEY, data TEXT NOT NULL);\n",
    );
    write(
        &f.path("rel/v1/migrations/1_blobs.down.sql"),
        "DROP TABLE blobs;\n",
    );
    std::fs::write(
        f.path("rewind.toml"),
        format!(
            "[environment]\nname = \"test\"\n\n[components.db]\n{component}\nkeep-backups = {KEEP}\nmigrations = \"rel/{{release}}/migrations\"\nformat = \"sqlx\"\n"
        ),
    )
    .unwrap();
    f
}

fn sqlite_db() -> Db {
    let f = setup("kind = \"sqlite\"\npath = \"app.db\"");
    let db = Db {
        f,
        env: vec![],
        ext: "sqlite",
    };
    db.run(&["deploy", "v1"]).ok();
    // 120 MB of rows that do not compress: a snapshot takes a while.
    let path = db.f.path("app.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO blobs (data) WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 60000) SELECT hex(randomblob(1000)) FROM n",
        )
        .execute(&mut c)
        .await
        .unwrap();
        c.close().await.unwrap();
    });
    db
}

fn pg_db() -> Db {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(fresh_pg_database("debris-secret-4711"));
    let f = setup("kind = \"postgres\"\nurl-env = \"APP_DATABASE_URL\"");
    let db = Db {
        f,
        env: vec![("APP_DATABASE_URL".into(), url.clone())],
        ext: "dump",
    };
    db.run(&["deploy", "v1"]).ok();
    // Random hex text: pg_dump's compression halves it, no more (a dump of ~60 MB).
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query(
            "INSERT INTO blobs (id, data) SELECT i, (SELECT string_agg(md5(random()::text || i || g), '') FROM generate_series(1, 40) g) FROM generate_series(1, 100000) i",
        )
        .execute(&mut c)
        .await
        .unwrap();
        c.close().await.unwrap();
    });
    db
}

/// Kills `backup create` at each crash point and by timing, and checks what is left.
fn killed_backups_leave_no_debris(db: &Db) {
    // One complete backup to keep company.
    db.run(&["backup", "create"]).ok();
    let first = db.assert_clean("after the first backup");
    assert_eq!(first.len(), 1);

    for (point, debris) in [
        // The partial file is growing (pg_dump is writing it, on PostgreSQL).
        ("during:db.backup", "a partial file"),
        // The backup file is in place, its description is not.
        ("mid:db.backup", "a backup file without its description"),
        // The description is written under its temporary name.
        ("after-action:db.backup", "a description not yet in place"),
    ] {
        let killed = db.run_with(&["backup", "create"], &[("REWIND_CRASH_AT", point)]);
        assert_eq!(killed.signal, Some(9), "{point}: {}", killed.all());
        let left = survivors(db.f.dir.path());
        assert!(left.is_empty(), "{point}: outlived rewind: {left:?}");
        let before = db.names();
        let complete = 1 + 2 * db.listed_without_sweep().len();
        assert!(
            before.len() > complete,
            "{point}: the kill should have left {debris}: {before:?}"
        );
        db.assert_clean(point);
    }

    // Real kills by timing while the partial file grows.
    for round in 0..2 {
        let ctx = format!("timed kill {round}");
        let mut child = db.f.cmd(&["backup", "create"]);
        for (k, v) in db.env() {
            child.env(k, v);
        }
        let mut child = child
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(60);
        let grown = loop {
            let partial = std::fs::read_dir(db.dir())
                .unwrap()
                .flatten()
                .find(|e| e.file_name().to_string_lossy().contains(".rewind-partial"));
            if let Some(p) = partial
                && p.metadata()
                    .is_ok_and(|m| m.len() > (round + 1) * (1 << 20))
            {
                break true;
            }
            if Instant::now() > until || child.try_wait().unwrap().is_some() {
                break false;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(grown, "{ctx}: the partial file was never seen growing");
        let left = survivors(db.f.dir.path());
        assert!(left.is_empty(), "{ctx}: outlived rewind: {left:?}");
        db.assert_clean(&ctx);
    }

    // The next backups: listed, pruned to keep-backups, nothing else left.
    for _ in 0..KEEP {
        db.run(&["backup", "create"]).ok();
    }
    let listed = db.assert_clean("after more backups");
    assert_eq!(listed.len(), KEEP);
}

impl Db {
    /// The complete backups on disk (file and description), without running rewind.
    fn listed_without_sweep(&self) -> Vec<String> {
        let names = self.names();
        names
            .iter()
            .filter_map(|n| n.strip_suffix(".json"))
            .filter(|id| !id.starts_with('.') && names.contains(&format!("{id}.{}", self.ext)))
            .map(str::to_string)
            .collect()
    }
}

/// "12.3 MB" → bytes.
fn parse_bytes(s: &str) -> f64 {
    let (n, unit) = s.trim().split_once(' ').unwrap();
    let n: f64 = n.parse().unwrap();
    n * match unit {
        "GB" => 1e9,
        "MB" => 1e6,
        "kB" => 1e3,
        "B" => 1.0,
        other => panic!("unit {other}"),
    }
}

/// A live writer's partial file (the directory's lock held shared by this test, as a writer
/// does) is left alone by `backup create` and `backup list`, and is not counted in the
/// progress line; once that writer is gone, it is swept.
fn a_live_writer_is_left_alone_and_progress_is_this_backups(db: &Db) {
    db.assert_clean("before");
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(db.dir().join(".rewind-backups.lock"))
        .unwrap();
    lock.lock_shared().unwrap();
    let theirs = db.dir().join(format!(
        ".20261121T140312.123Z-0a1b2c.{}.rewind-partial",
        db.ext
    ));
    // 3 GB, sparse: nothing on disk, 3 GB to anyone who adds sizes up.
    std::fs::File::create(&theirs)
        .unwrap()
        .set_len(3_000_000_000)
        .unwrap();

    let made = db.run(&["backup", "create"]);
    made.ok();
    assert!(theirs.exists(), "a live writer's partial file was taken");
    let line = made
        .stdout
        .lines()
        .find(|l| l.contains(": backup "))
        .unwrap_or_else(|| panic!("{}", made.all()));
    // "db: backup ID — 61.2 MB in 1.20s, level …"
    let id = line.split_whitespace().nth(2).unwrap();
    let shown = parse_bytes(
        line.split('—')
            .nth(1)
            .unwrap()
            .split(" in ")
            .next()
            .unwrap(),
    );
    let file = db.dir().join(format!("{id}.{}", db.ext));
    let size = std::fs::metadata(&file).unwrap().len() as f64;
    assert!(
        (shown - size).abs() <= size * 0.001 + 100.0,
        "reported {shown} bytes, the file has {size}\n{}",
        made.all()
    );
    let progress: Vec<f64> = made
        .stderr
        .lines()
        .filter_map(|l| l.trim().strip_prefix("db: "))
        .filter_map(|l| {
            l.split(" written")
                .next()
                .filter(|_| l.contains(" written"))
        })
        .map(parse_bytes)
        .collect();
    // Progress is shown from the first half-second tick after 0.4 s: a backup that took a
    // second has it.
    let took: f64 = line
        .split(" in ")
        .nth(1)
        .and_then(|t| t.split('s').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {line}"));
    assert!(
        took < 1.0 || !progress.is_empty(),
        "no progress line for a backup that took {took}s\n{}",
        made.all()
    );
    for p in &progress {
        assert!(
            *p <= size * 1.001 + 100.0,
            "progress {p} bytes for a backup of {size}\n{}",
            made.all()
        );
    }
    let listed = db.listed();
    assert!(listed.contains(&id.to_string()), "{listed:?}");
    assert!(
        theirs.exists(),
        "`backup list` took a live writer's partial file"
    );

    // The writer is gone: its partial file is debris now.
    drop(lock);
    db.assert_clean("after the other writer died");
}

#[test]
fn sqlite_backups_killed_at_every_moment_leave_no_debris() {
    let db = sqlite_db();
    killed_backups_leave_no_debris(&db);
    a_live_writer_is_left_alone_and_progress_is_this_backups(&db);
}

#[test]
fn postgres_backups_killed_at_every_moment_leave_no_debris() {
    let db = pg_db();
    killed_backups_leave_no_debris(&db);
    a_live_writer_is_left_alone_and_progress_is_this_backups(&db);
}
