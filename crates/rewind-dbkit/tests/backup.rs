//! Backups, restores, verification and integrity checks against real databases: SQLite files
//! in a temporary directory, and PostgreSQL servers named by `REWIND_TEST_PG_URL` (15) and
//! `REWIND_TEST_PG18_URL` (18), both started by `scripts/test`; a fresh database per test.
//! The exact-restore, catalog and client-tool tests run on both servers and fail when either
//! URL is missing. The point-in-time recovery test builds its own PostgreSQL cluster,
//! archived by the pgBackRest at `REWIND_TEST_PGBACKREST`.

// The tests run pg_dump, chown and a shell directly to set up and inspect (clippy.toml is for
// rewind itself).
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rewind_dbkit::{
    BackupInfo, BackupKind, Catalog, Error, Inspect, PgBackRest, PgRestoreOptions, PgUrl,
    PitrPhase, Progress, ServerVersion, fk_orphans, integrity_check, parse_target_time, pg_dump,
    pg_restore, pg_restore_exact, pg_verify, restore_to_time, row_counts, sqlite_restore,
    sqlite_snapshot, sqlite_verify,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Connection, Executor};

// ---- SQLite -------------------------------------------------------------------------------

async fn sqlite_pool(path: &Path, max: u32) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(30));
    SqlitePoolOptions::new()
        .max_connections(max)
        .connect_with(options)
        .await
        .unwrap()
}

async fn count(pool: &SqlitePool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_snapshot_is_consistent_while_a_writer_inserts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let pool = sqlite_pool(&db, 2).await;
    pool.execute(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, payload TEXT NOT NULL);
         CREATE TABLE counter (n INTEGER NOT NULL);
         INSERT INTO counter VALUES (0);",
    )
    .await
    .unwrap();
    // Some bulk, so the snapshot takes a while: 20 000 rows of 1 KiB, counted in `counter`.
    pool.execute(
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 20000)
         INSERT INTO items (payload) SELECT printf('%.1024d', i) FROM s;
         UPDATE counter SET n = 20000;",
    )
    .await
    .unwrap();

    // The writer: each transaction inserts one row and bumps the counter, so in every
    // consistent state count(items) = counter.n.
    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let writer = {
        let (pool, stop, commits) = (pool.clone(), stop.clone(), commits.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("INSERT INTO items (payload) VALUES (printf('%.1024d', random()))")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query("UPDATE counter SET n = n + 1")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                commits.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    while commits.load(Ordering::SeqCst) < 50 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = commits.load(Ordering::SeqCst);
    let dest = dir.path().join("snap.db");
    let info = sqlite_snapshot(&db, &dest).await.unwrap();
    let during = commits.load(Ordering::SeqCst) - before;
    while commits.load(Ordering::SeqCst) < before + during + 50 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();

    assert_eq!(info.kind, BackupKind::SqliteSnapshot);
    assert_eq!(info.path, dest);
    assert_eq!(info.bytes, std::fs::metadata(&dest).unwrap().len());
    assert_eq!(info.checksum.len(), 64);
    info.check().await.unwrap();
    // Nothing but the snapshot is left in the directory (no temporary file).
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with("app.db"))
        .collect();
    names.sort();
    assert_eq!(names, ["snap.db"]);

    // In WAL mode the writer is not blocked while the snapshot runs.
    assert!(during > 0, "no commit while the snapshot ran");

    // The snapshot opens, is intact, and holds one consistent state. (Read-only: opening a
    // backup read-write may change its bytes, and then it no longer matches its checksum.)
    let snap = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(&dest).read_only(true))
        .await
        .unwrap();
    assert_eq!(integrity_check(&snap).await.unwrap(), "ok");
    let items = count(&snap, "SELECT count(*) FROM items").await;
    let n = count(&snap, "SELECT n FROM counter").await;
    assert_eq!(items, n, "snapshot is not one consistent state");
    let live = count(&pool, "SELECT count(*) FROM items").await;
    assert!(
        items >= 20_050,
        "snapshot misses rows committed before it: {items}"
    );
    assert!(
        items < live,
        "rows committed after the snapshot are in it: {items} vs {live}"
    );
    eprintln!(
        "snapshot: {} bytes, {items} rows; writer commits during the snapshot: {during}",
        info.bytes
    );
    snap.close().await;
    info.check().await.unwrap();

    // verify: restores into a scratch file, integrity check, row counts.
    let report = sqlite_verify(&info).await.unwrap();
    assert_eq!(report.integrity, "ok");
    assert_eq!(report.row_counts["items"], items);
    assert_eq!(report.row_counts["counter"], 1);
    assert_eq!(report.row_counts.len(), 2);
    pool.close().await;

    // A snapshot never overwrites an existing file.
    assert!(sqlite_snapshot(&db, &dest).await.is_err());
}

#[tokio::test]
async fn sqlite_restore_swaps_the_file_and_never_replays_a_stale_wal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let pool = sqlite_pool(&db, 1).await;
    pool.execute(
        "PRAGMA wal_autocheckpoint = 0;
         CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 100)
         INSERT INTO items (v) SELECT 'before-' || i FROM s;",
    )
    .await
    .unwrap();
    let snap = dir.path().join("snap.db");
    let info = sqlite_snapshot(&db, &snap).await.unwrap();

    // Changes after the snapshot stay in the WAL (no checkpoint): 50 more rows, 10 changed.
    pool.execute(
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 50)
         INSERT INTO items (v) SELECT 'after-' || i FROM s;
         UPDATE items SET v = 'changed' WHERE id <= 10;",
    )
    .await
    .unwrap();
    // A writer that crashed leaves its -wal and -shm behind: keep copies while the
    // connection is open, close it, and put them back.
    let wal = std::fs::read(sidecar(&db, "-wal")).unwrap();
    let shm = std::fs::read(sidecar(&db, "-shm")).unwrap();
    assert!(!wal.is_empty());
    pool.close().await;
    std::fs::write(sidecar(&db, "-wal"), &wal).unwrap();
    std::fs::write(sidecar(&db, "-shm"), &shm).unwrap();

    // Control: that WAL, beside a copy of the snapshot, is replayed onto it and changes it —
    // which is what the restore must prevent.
    let control = dir.path().join("control.db");
    std::fs::copy(&snap, &control).unwrap();
    std::fs::write(sidecar(&control, "-wal"), &wal).unwrap();
    std::fs::write(sidecar(&control, "-shm"), &shm).unwrap();
    let c = sqlite_pool(&control, 1).await;
    let replayed: Result<i64, _> =
        sqlx::query_scalar("SELECT count(*) FROM items WHERE v LIKE 'before-%'")
            .fetch_one(&c)
            .await;
    c.close().await;
    assert_ne!(
        replayed.ok(),
        Some(100),
        "the stale WAL was not replayed: the control proves nothing"
    );

    // Restore with the stale -wal/-shm present, recording progress.
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let s = seen.clone();
    sqlite_restore(&info, &db, move |p| s.lock().unwrap().push(p))
        .await
        .unwrap();
    assert!(
        !sidecar(&db, "-wal").exists(),
        "stale WAL left beside the restored db"
    );
    assert!(
        !sidecar(&db, "-shm").exists(),
        "stale SHM left beside the restored db"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.first().unwrap().copied, 0);
    assert_eq!(seen.last().unwrap().copied, info.bytes);
    assert!(seen.iter().all(|p| p.total == info.bytes));
    assert!(seen.windows(2).all(|w| w[0].copied <= w[1].copied));
    // No temporary file is left behind.
    assert!(
        std::fs::read_dir(dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("rewind-"))
    );

    // The restored database holds exactly the snapshot's rows.
    let restored = sqlite_pool(&db, 1).await;
    assert_eq!(integrity_check(&restored).await.unwrap(), "ok");
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, v FROM items ORDER BY id")
        .fetch_all(&restored)
        .await
        .unwrap();
    let expected: Vec<(i64, String)> = (1..=100).map(|i| (i, format!("before-{i}"))).collect();
    assert_eq!(rows, expected);
    restored.close().await;

    // A backup that does not match its checksum is refused and the database is untouched.
    let bad = dir.path().join("bad.db");
    let mut bytes = std::fs::read(&snap).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&bad, &bytes).unwrap();
    let tampered = BackupInfo {
        path: bad,
        ..info.clone()
    };
    let before = std::fs::read(&db).unwrap();
    let err = sqlite_restore(&tampered, &db, |_| {}).await.unwrap_err();
    assert!(matches!(err, Error::Checksum { .. }), "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), before);
    assert!(sqlite_verify(&tampered).await.is_err());
}

#[tokio::test]
async fn sqlite_row_counts_and_fk_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let options = SqliteConnectOptions::new()
        .filename(&db)
        .create_if_missing(true)
        .foreign_keys(false);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    pool.execute(
        "CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT);
         CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id));
         CREATE TABLE \"odd \"\"name\" (x);
         INSERT INTO parent VALUES (1, 'a'), (2, 'b');
         INSERT INTO child VALUES (1, 1), (2, 2), (3, NULL);
         INSERT INTO \"odd \"\"name\" VALUES (1);",
    )
    .await
    .unwrap();
    let counts = row_counts(&pool).await.unwrap();
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [
            ("child".to_string(), 3),
            ("odd \"name".to_string(), 1),
            ("parent".to_string(), 2)
        ]
    );
    let clean = fk_orphans(&pool).await.unwrap();
    assert_eq!(clean.len(), 1);
    assert_eq!(clean[0].table, "child");
    assert_eq!(clean[0].columns, ["parent_id"]);
    assert_eq!(clean[0].references, "parent");
    assert_eq!(clean[0].orphans, 0);
    // foreign_keys is off on this connection: an orphan gets in.
    pool.execute("INSERT INTO child VALUES (4, 99), (5, 98)")
        .await
        .unwrap();
    let dirty = pool.fk_orphans().await.unwrap();
    assert_eq!(dirty[0].orphans, 2);
    pool.close().await;
}

// ---- PostgreSQL ---------------------------------------------------------------------------

fn pg_url() -> String {
    std::env::var("REWIND_TEST_PG_URL")
        .unwrap_or_else(|_| panic!("REWIND_TEST_PG_URL is not set: run scripts/test"))
}

/// The PostgreSQL 18 test server (`REWIND_TEST_PG18_URL`, started by `scripts/test`).
fn pg18_url() -> String {
    std::env::var("REWIND_TEST_PG18_URL").unwrap_or_else(|_| {
        panic!("REWIND_TEST_PG18_URL is not set: run scripts/test (it starts PostgreSQL 18)")
    })
}

/// Both test servers: (name, admin URL). Tests that take them run on each.
fn pg_servers() -> [(&'static str, String); 2] {
    [("PostgreSQL 15", pg_url()), ("PostgreSQL 18", pg18_url())]
}

/// A fresh database on a test server, dropped (with its connections) by `drop_db`.
struct PgDb {
    url: String,
    name: String,
    admin_url: String,
}

impl PgDb {
    async fn new(tag: &str) -> PgDb {
        PgDb::on(&pg_url(), tag).await
    }

    async fn on(admin_url: &str, tag: &str) -> PgDb {
        let admin_url = admin_url.to_string();
        let name = format!(
            "rewind_dbkit_{tag}_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        admin.close().await.unwrap();
        let url = PgUrl::parse(&admin_url)
            .unwrap()
            .with_database(&name)
            .as_str()
            .to_string();
        PgDb {
            url,
            name,
            admin_url,
        }
    }

    async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(2)
            .connect_with(PgConnectOptions::from_str(&self.url).unwrap())
            .await
            .unwrap()
    }

    async fn drop_db(self) {
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await.unwrap();
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .await
            .unwrap();
        admin.close().await.unwrap();
    }
}

const PG_SCHEMA: &str = "
    CREATE TABLE parent (id int PRIMARY KEY, name text NOT NULL);
    CREATE TABLE child (
        id int PRIMARY KEY,
        parent_id int REFERENCES parent(id),
        note text
    );
    CREATE SCHEMA billing;
    CREATE TABLE billing.invoice (id int PRIMARY KEY, child_id int REFERENCES child(id), total numeric);
    INSERT INTO parent SELECT i, 'p' || i FROM generate_series(1, 3) i;
    INSERT INTO child SELECT i, 1 + i % 3, 'c' || i FROM generate_series(1, 5) i;
    INSERT INTO child VALUES (6, NULL, 'no parent');
    INSERT INTO billing.invoice VALUES (1, 1, 9.99), (2, 2, 100);
";

type Snapshot = (
    Vec<(i32, String)>,
    Vec<(i32, Option<i32>, Option<String>)>,
    Vec<(i32, Option<i32>, Option<String>)>,
);

async fn pg_state(pool: &PgPool) -> Snapshot {
    let parents = sqlx::query_as("SELECT id, name FROM parent ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap();
    let children = sqlx::query_as("SELECT id, parent_id, note FROM child ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap();
    let invoices =
        sqlx::query_as("SELECT id, child_id, total::text FROM billing.invoice ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    (parents, children, invoices)
}

#[tokio::test]
async fn pg_dump_change_restore_gives_back_the_dumped_state() {
    let db = PgDb::new("restore").await;
    let pool = db.pool().await;
    pool.execute(PG_SCHEMA).await.unwrap();
    let dumped = pg_state(&pool).await;

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("app.dump");
    let info = pg_dump(&db.url, &dest).await.unwrap();
    assert_eq!(info.kind, BackupKind::PgDumpCustom);
    assert_eq!(info.bytes, std::fs::metadata(&dest).unwrap().len());
    assert!(std::fs::read(&dest).unwrap().starts_with(b"PGDMP"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // Change everything: rows deleted, updated, added, a table emptied.
    pool.execute(
        "DELETE FROM billing.invoice WHERE id = 2;
         UPDATE child SET note = 'changed';
         INSERT INTO parent VALUES (4, 'new');
         DELETE FROM child WHERE id = 6;
         UPDATE parent SET name = 'renamed' WHERE id = 1;",
    )
    .await
    .unwrap();
    assert_ne!(pg_state(&pool).await, dumped);
    pool.close().await;

    pg_restore(&db.url, &info, 2).await.unwrap();
    let pool = db.pool().await;
    assert_eq!(pg_state(&pool).await, dumped);
    // Restored constraints still hold.
    assert!(
        sqlx::query("INSERT INTO child VALUES (100, 42, 'x')")
            .execute(&pool)
            .await
            .is_err()
    );
    pool.close().await;

    // verify: a scratch database, the right counts, and the scratch database is gone after.
    let report = pg_verify(&pg_url(), &info, 2).await.unwrap();
    assert_eq!(
        report.row_counts.into_iter().collect::<Vec<_>>(),
        [
            ("billing.invoice".to_string(), 2),
            ("public.child".to_string(), 6),
            ("public.parent".to_string(), 3),
        ]
    );
    let admin = PgPool::connect(&pg_url()).await.unwrap();
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'rewind\\_verify\\_%'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(left, 0, "the scratch database was not dropped");
    admin.close().await;

    // A dump is never written over an existing file.
    assert!(pg_dump(&db.url, &dest).await.is_err());
    db.drop_db().await;
}

#[tokio::test]
async fn pg_fk_orphans_and_row_counts() {
    let db = PgDb::new("fk").await;
    let pool = db.pool().await;
    pool.execute(PG_SCHEMA).await.unwrap();
    pool.execute(
        "CREATE TABLE pair_parent (a int, b int, PRIMARY KEY (a, b));
         CREATE TABLE pair_child (id int, a int, b int, FOREIGN KEY (a, b) REFERENCES pair_parent);
         INSERT INTO pair_parent VALUES (1, 1);
         INSERT INTO pair_child VALUES (1, 1, 1), (2, NULL, 5);",
    )
    .await
    .unwrap();

    let counts = row_counts(&pool).await.unwrap();
    assert_eq!(counts["public.parent"], 3);
    assert_eq!(counts["public.child"], 6);
    assert_eq!(counts["billing.invoice"], 2);
    assert_eq!(counts["public.pair_child"], 2);

    let clean = fk_orphans(&pool).await.unwrap();
    assert_eq!(clean.len(), 3, "{clean:?}");
    assert!(clean.iter().all(|k| k.orphans == 0), "{clean:?}");
    let pair = clean
        .iter()
        .find(|k| k.table == "public.pair_child")
        .unwrap();
    assert_eq!(pair.columns, ["a", "b"]);
    assert_eq!(pair.references_columns, ["a", "b"]);

    // Orphans, with the foreign-key triggers off for one session.
    let mut conn = pool.acquire().await.unwrap();
    conn.execute(
        "SET session_replication_role = replica;
         INSERT INTO child VALUES (50, 77, 'orphan'), (51, 78, 'orphan');
         DELETE FROM child WHERE id = 1;
         INSERT INTO pair_child VALUES (3, 1, 2);
         RESET session_replication_role;",
    )
    .await
    .unwrap();
    drop(conn);
    let dirty = pool.fk_orphans().await.unwrap();
    let orphans = |table: &str| {
        dirty
            .iter()
            .find(|k| k.table == table)
            .map(|k| k.orphans)
            .unwrap()
    };
    assert_eq!(orphans("public.child"), 2);
    assert_eq!(
        orphans("billing.invoice"),
        1,
        "invoice 1 pointed at child 1"
    );
    assert_eq!(orphans("public.pair_child"), 1);
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn pg_errors_never_show_the_password() {
    const SECRET: &str = "s3cret-Pa55word";
    // Nothing listens on port 1: every operation fails to connect (first rewind's own
    // connection, which reads the server's version to choose pg_dump). A failing tool's
    // output is checked in `pg_restore_names_a_missing_role_before_changing_anything`.
    let url = format!("postgres://rewind:{SECRET}@127.0.0.1:1/app");
    let dir = tempfile::tempdir().unwrap();

    let dump_err = pg_dump(&url, &dir.path().join("x.dump")).await.unwrap_err();
    assert!(matches!(dump_err, Error::Db { .. }), "{dump_err}");
    assert!(
        dump_err.to_string().contains("connecting to PostgreSQL"),
        "{dump_err}"
    );
    assert!(!dir.path().join("x.dump").exists());

    // A real backup to restore from.
    let db = PgDb::new("secret").await;
    let info = pg_dump(&db.url, &dir.path().join("real.dump"))
        .await
        .unwrap();
    db.drop_db().await;
    let restore_err = pg_restore(&url, &info, 1).await.unwrap_err();
    let verify_err = pg_verify(&url, &info, 1).await.unwrap_err();
    let url_err = pg_dump(
        "postgres://rewind:s3cret-Pa55word@host:badport/app",
        &dir.path().join("y.dump"),
    )
    .await
    .unwrap_err();

    assert!(matches!(restore_err, Error::Db { .. }), "{restore_err}");
    assert!(matches!(verify_err, Error::Db { .. }), "{verify_err}");
    for e in [&dump_err, &restore_err, &verify_err, &url_err] {
        let text = format!("{e} / {e:?}");
        eprintln!("{text}");
        assert!(!text.contains(SECRET), "password leaked: {text}");
    }
}

// ---- PostgreSQL: exact restores, the catalog fingerprint, the client tools ----------------

/// Creates `role` unless it exists (roles belong to the whole cluster; tests run in parallel).
async fn ensure_role(admin_url: &str, role: &str, login: bool) {
    let mut admin = sqlx::PgConnection::connect(admin_url).await.unwrap();
    let sql = format!(
        "DO $$ BEGIN CREATE ROLE {role} {}; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
        if login { "LOGIN" } else { "NOLOGIN" }
    );
    admin.execute(sqlx::AssertSqlSafe(sql)).await.unwrap();
    admin.close().await.unwrap();
}

/// `url` with another user (the test servers trust every local connection).
fn as_user(url: &str, user: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_username(user).unwrap();
    u.set_password(None).unwrap();
    u.to_string()
}

/// The client tools rewind-dbkit chooses for the server of `url`.
async fn tools_for(url: &str) -> rewind_dbkit::PgTools {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let server = ServerVersion::of(&mut c).await.unwrap();
    c.close().await.unwrap();
    rewind_dbkit::pgtools::choose(&server, None).await.unwrap()
}

/// `pg_dump --schema-only` (privileges, owners and comments included) of `url`, without the
/// lines that differ from one run to the next: the versions in the header and psql's
/// `\restrict` / `\unrestrict` lines, whose key is random per dump.
async fn schema_dump(url: &str) -> String {
    let tools = tools_for(url).await;
    let out = Command::new(tools.pg_dump())
        .args(["--schema-only", "--no-password"])
        .arg(format!("--dbname={url}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_dump --schema-only: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| {
            !l.starts_with("-- Dumped from database version")
                && !l.starts_with("-- Dumped by pg_dump version")
                && !l.starts_with("\\restrict ")
                && !l.starts_with("\\unrestrict ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn catalog_of(url: &str) -> Catalog {
    let pool = PgPool::connect(url).await.unwrap();
    let c = pool.catalog().await.unwrap();
    pool.close().await;
    c
}

/// What a first-time reader of a failing assertion needs: the lines that differ.
fn catalog_diff(recorded: &Catalog, now: &Catalog) -> String {
    rewind_dbkit::catalog::compare(&recorded.lines, &now.lines)
        .iter()
        .map(|d| format!("  {d}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The application's roles in the exact-restore test: `rw_app` connects and owns nothing,
/// `rw_owner` owns a schema and tables (rewind connects as `postgres`).
const APP_SCHEMA: &str = "
    CREATE EXTENSION pg_trgm;
    CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
    INSERT INTO items VALUES (1, 'apple'), (2, 'pear');
    CREATE INDEX items_name_trgm ON items USING gin (name gin_trgm_ops);
    COMMENT ON TABLE items IS 'what we sell';
    -- rw_app reaches public through PUBLIC's default USAGE, and reads items.
    GRANT SELECT ON items TO rw_app;
    CREATE SCHEMA billing AUTHORIZATION rw_owner;
    COMMENT ON SCHEMA billing IS 'money';
    GRANT USAGE ON SCHEMA billing TO rw_app;
    CREATE TYPE billing.state AS ENUM ('open', 'paid');
    CREATE TABLE billing.invoice (
        id serial PRIMARY KEY,
        total numeric(10, 2) NOT NULL DEFAULT 0,
        state billing.state NOT NULL DEFAULT 'open',
        note text COLLATE \"C\"
    );
    ALTER TYPE billing.state OWNER TO rw_owner;
    ALTER TABLE billing.invoice OWNER TO rw_owner;
    GRANT SELECT (id, total) ON billing.invoice TO rw_app;
    INSERT INTO billing.invoice (total) VALUES (9.99);
    CREATE TABLE public.ledger (id int PRIMARY KEY, amount int CHECK (amount <> 0));
    ALTER TABLE public.ledger OWNER TO rw_owner;
    CREATE DOMAIN public.positive AS int CHECK (VALUE > 0);
    CREATE FUNCTION public.twice(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x * 2';
    REVOKE EXECUTE ON FUNCTION public.twice(int) FROM PUBLIC;
    GRANT EXECUTE ON FUNCTION public.twice(int) TO rw_app;
    CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql
        AS $$BEGIN NEW.name := trim(NEW.name); RETURN NEW; END$$;
    CREATE TRIGGER items_touch BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION public.touch();
    CREATE VIEW public.item_names AS SELECT name FROM items;
    ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO rw_app;
    ALTER DEFAULT PRIVILEGES IN SCHEMA billing GRANT SELECT ON SEQUENCES TO rw_app;
    ALTER DEFAULT PRIVILEGES FOR ROLE rw_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
";

/// What a migration after the backup does: a table added, privileges revoked and granted,
/// owners, comments and default privileges changed, an extension and a view dropped, a row.
const MIGRATION: &str = "
    CREATE TABLE public.audit (id int);
    REVOKE SELECT ON items FROM rw_app;
    REVOKE USAGE ON SCHEMA public FROM PUBLIC;
    GRANT CREATE ON SCHEMA public TO rw_app;
    COMMENT ON SCHEMA public IS 'changed';
    ALTER SCHEMA billing OWNER TO postgres;
    COMMENT ON SCHEMA billing IS NULL;
    ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM rw_app;
    ALTER DEFAULT PRIVILEGES FOR ROLE rw_owner GRANT SELECT ON TABLES TO rw_app;
    ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT UPDATE ON TABLES TO rw_app;
    DROP VIEW public.item_names;
    DROP EXTENSION pg_trgm CASCADE;
    INSERT INTO items VALUES (3, 'plum');
";

/// The case and more, on PostgreSQL 15 and 18: a backup, a migration that changes
/// privileges, owners, comments and default privileges, a restore. Afterwards the
/// application's role reads its table again, `pg_dump --schema-only` is what it was at backup
/// time and the catalog's fingerprint matches the recorded one; run again (also after being
/// killed between clearing and pg_restore) the restore gives the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_restore_brings_back_privileges_owners_comments_and_default_privileges() {
    for (server, admin) in pg_servers() {
        ensure_role(&admin, "rw_app", true).await;
        ensure_role(&admin, "rw_owner", false).await;
        let db = PgDb::on(&admin, "exact").await;
        let pool = db.pool().await;
        pool.execute(APP_SCHEMA).await.unwrap();
        pool.close().await;
        let app_url = as_user(&db.url, "rw_app");
        let app_reads = |url: String| async move {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            let r = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM items")
                .fetch_one(&mut c)
                .await
                .map_err(|e| e.to_string());
            c.close().await.unwrap();
            r
        };
        assert_eq!(app_reads(app_url.clone()).await, Ok(2), "{server}");

        let dir = tempfile::tempdir().unwrap();
        let backup = rewind_dbkit::pg_backup(&db.url, &dir.path().join("b.dump"), None)
            .await
            .unwrap();
        let dumped = schema_dump(&db.url).await;
        let recorded = &backup.catalog;
        assert_eq!(catalog_of(&db.url).await, *recorded, "{server}");
        for line in [
            "schema public: ACL {=U/pg_database_owner,pg_database_owner=UC/pg_database_owner}",
            "schema public: owner pg_database_owner",
            "schema public: comment 'standard public schema'",
            "schema billing: owner rw_owner",
            "schema billing: comment 'money'",
            "table public.items: ACL {postgres=arwdDxt/postgres,rw_app=r/postgres}",
            "column billing.invoice.total: ACL {rw_app=r/rw_owner}",
            "column billing.invoice.note: type text collate \"C\"",
            "enum billing.state: labels 'open', 'paid'",
            "default privileges for role postgres on tables: ACL {postgres=arwdDxt/postgres,rw_app=r/postgres}",
            "default privileges for role rw_owner on functions: ACL {rw_owner=X/rw_owner}",
            "trigger public.items.items_touch: definition CREATE TRIGGER items_touch BEFORE UPDATE ON public.items FOR EACH ROW EXECUTE FUNCTION public.touch()",
        ] {
            let line = line.replace(
                "arwdDxt/",
                if server.ends_with("18") {
                    "arwdDxtm/"
                } else {
                    "arwdDxt/"
                },
            );
            assert!(
                recorded.lines.contains(&line),
                "{server}: no line {line:?} in\n{}",
                recorded.lines.join("\n")
            );
        }
        assert!(
            recorded
                .lines
                .iter()
                .any(|l| l.starts_with("extension pg_trgm: version ")),
            "{server}"
        );
        for role in ["postgres", "rw_app", "rw_owner"] {
            assert!(
                recorded.roles.contains(&role.to_string()),
                "{server}: {role}"
            );
        }

        let pool = db.pool().await;
        pool.execute(MIGRATION).await.unwrap();
        pool.close().await;
        assert!(app_reads(app_url.clone()).await.is_err(), "{server}");
        let changed = catalog_of(&db.url).await;
        let diffs = rewind_dbkit::catalog::compare(&recorded.lines, &changed.lines);
        let texts: Vec<String> = diffs.iter().map(|d| d.to_string()).collect();
        assert!(
            texts.iter().any(|t| t.starts_with("schema public: ACL {pg_database_owner=UC/pg_database_owner,rw_app=C/pg_database_owner} differs from the backup's {=U/pg_database_owner,pg_database_owner=UC/pg_database_owner}")),
            "{server}: {texts:#?}"
        );
        assert!(
            texts
                .iter()
                .any(|t| t.starts_with("table public.audit: owner postgres (not in the backup)")),
            "{server}: {texts:#?}"
        );

        let options = PgRestoreOptions {
            jobs: 2,
            pg_bin: None,
            roles: recorded.roles.clone(),
        };
        let notes = pg_restore_exact(&db.url, &backup.info, &options)
            .await
            .unwrap();
        eprintln!("{server}: {notes:?}");
        let check = |what: &'static str| {
            let (db_url, app_url, dumped, recorded) = (
                db.url.clone(),
                app_url.clone(),
                dumped.clone(),
                recorded.clone(),
            );
            async move {
                assert_eq!(
                    app_reads(app_url.clone()).await,
                    Ok(2),
                    "{server} {what}: rw_app reads items"
                );
                let mut c = sqlx::PgConnection::connect(&app_url).await.unwrap();
                let total: String = sqlx::query_scalar("SELECT total::text FROM billing.invoice")
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
                assert_eq!(total, "9.99");
                let denied = sqlx::query("SELECT note FROM billing.invoice")
                    .execute(&mut c)
                    .await
                    .unwrap_err()
                    .to_string();
                assert!(denied.contains("permission denied"), "{denied}");
                c.close().await.unwrap();
                let now = catalog_of(&db_url).await;
                assert!(
                    now == recorded,
                    "{server} {what}: the catalog differs from the backup's:\n{}",
                    catalog_diff(&recorded, &now)
                );
                let restored = schema_dump(&db_url).await;
                assert!(
                    restored == dumped,
                    "{server} {what}: pg_dump --schema-only differs:\n--- at backup\n{dumped}\n--- restored\n{restored}"
                );
            }
        };
        check("after the restore").await;

        // Again: the restore converges (nothing left from before, nothing doubled).
        pg_restore_exact(&db.url, &backup.info, &options)
            .await
            .unwrap();
        check("after a second restore").await;

        // Killed between clearing and pg_restore: the database is empty; running the restore
        // again brings everything back.
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let server_version = ServerVersion::of(&mut c).await.unwrap();
        rewind_dbkit::pgrestore::clear_for_restore(&mut c, &server_version)
            .await
            .unwrap();
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
        assert_eq!(left, 0, "{server}: public is empty after clearing");
        c.close().await.unwrap();
        pg_restore_exact(&db.url, &backup.info, &options)
            .await
            .unwrap();
        check("after a restore killed before pg_restore and run again").await;

        // A changed privilege after the restore is named.
        let pool = db.pool().await;
        pool.execute("GRANT CREATE ON SCHEMA public TO rw_app")
            .await
            .unwrap();
        pool.close().await;
        let tampered = catalog_of(&db.url).await;
        let texts: Vec<String> = rewind_dbkit::catalog::compare(&recorded.lines, &tampered.lines)
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(
            texts,
            [
                "schema public: ACL {=U/pg_database_owner,pg_database_owner=UC/pg_database_owner,rw_app=C/pg_database_owner} differs from the backup's {=U/pg_database_owner,pg_database_owner=UC/pg_database_owner}"
            ],
            "{server}"
        );
        assert_ne!(tampered.fingerprint, recorded.fingerprint);
        db.drop_db().await;
    }
}

/// A role the backup needs that is gone: the restore says which, and changes nothing. Without
/// the recorded roles (an older sidecar), pg_restore's own error is passed on with a hint.
#[tokio::test]
async fn pg_restore_names_a_missing_role_before_changing_anything() {
    for (server, admin) in pg_servers() {
        let role = format!(
            "rw_gone_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        ensure_role(&admin, &role, false).await;
        let db = PgDb::on(&admin, "gone").await;
        let pool = db.pool().await;
        pool.execute(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE items (id int); GRANT SELECT ON items TO {role};"
        )))
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let backup = rewind_dbkit::pg_backup(&db.url, &dir.path().join("b.dump"), None)
            .await
            .unwrap();
        assert!(backup.catalog.roles.contains(&role), "{server}");
        pool.execute(sqlx::AssertSqlSafe(format!(
            "DROP OWNED BY {role}; CREATE TABLE after_backup (id int);"
        )))
        .await
        .unwrap();
        pool.close().await;
        let mut a = sqlx::PgConnection::connect(&admin).await.unwrap();
        a.execute(sqlx::AssertSqlSafe(format!("DROP ROLE {role}")))
            .await
            .unwrap();
        a.close().await.unwrap();

        // The test servers trust local connections: the password is only watched for leaks.
        const SECRET: &str = "s3cret-Pa55word";
        let mut with_password = url::Url::parse(&db.url).unwrap();
        with_password.set_password(Some(SECRET)).unwrap();
        let url = with_password.to_string();
        let options = PgRestoreOptions {
            jobs: 1,
            pg_bin: None,
            roles: backup.catalog.roles.clone(),
        };
        let e = pg_restore_exact(&url, &backup.info, &options)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::MissingRoles { .. }), "{server}: {e}");
        let text = e.to_string();
        assert!(
            text.contains(&role) && text.contains("nothing was changed"),
            "{text}"
        );
        assert!(text.contains("hint: create it"), "{text}");
        let pool = db.pool().await;
        let still: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename = 'after_backup'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(still, 1, "{server}: nothing was changed");
        pool.close().await;

        let old_sidecar = PgRestoreOptions {
            roles: Vec::new(),
            ..options
        };
        let e = pg_restore_exact(&db.url, &backup.info, &old_sidecar)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("role \"{role}\" does not exist")),
            "{e}"
        );
        assert!(e.contains("hint: the backup names a role"), "{e}");
        db.drop_db().await;
    }
}

/// pg_dump and pg_restore are chosen by the server's major version: 15's tools do not serve
/// 18, and a `pg-bin` that is too old fails before anything is written, naming the versions.
#[tokio::test]
async fn client_tools_fit_the_server() {
    let pg18 = std::env::var("REWIND_TEST_PG18_BIN").unwrap_or_else(|_| {
        panic!("REWIND_TEST_PG18_BIN is not set: run scripts/test (it installs PostgreSQL 18)")
    });
    for (server, admin) in pg_servers() {
        let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
        let version = ServerVersion::of(&mut c).await.unwrap();
        c.close().await.unwrap();
        let tools = rewind_dbkit::pgtools::choose(&version, None).await.unwrap();
        assert!(tools.major >= version.major(), "{server}: {tools:?}");
        let exact = rewind_dbkit::pgtools::choose(&version, Some(Path::new(&pg18)))
            .await
            .unwrap();
        assert_eq!(exact.major, 18, "{server}");
    }
    let mut c = sqlx::PgConnection::connect(&pg18_url()).await.unwrap();
    let v18 = ServerVersion::of(&mut c).await.unwrap();
    c.close().await.unwrap();
    let old_bin = Path::new("/usr/lib/postgresql/15/bin");
    let e = rewind_dbkit::pgtools::choose(&v18, Some(old_bin))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("server {}", v18.text)), "{e}");
    assert!(e.contains("pg_dump and pg_restore 18 or newer"), "{e}");
    assert!(e.contains("(15."), "{e}");
    assert!(e.contains("pg-bin = \"/usr/lib/postgresql/15/bin\""), "{e}");

    let db = PgDb::on(&pg18_url(), "tools").await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("b.dump");
    let e = rewind_dbkit::pg_backup(&db.url, &dest, Some(old_bin))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::PgTools { .. }), "{e}");
    assert!(!dest.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    db.drop_db().await;
}

/// SQLite: the catalog (sqlite_schema and user_version) is recorded with the snapshot and is
/// the same after a restore; a schema change is named.
#[tokio::test]
async fn sqlite_catalog_is_recorded_and_restored() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let pool = sqlite_pool(&db, 1).await;
    pool.execute(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
         CREATE INDEX items_name ON items (name);
         CREATE VIEW item_names AS SELECT name FROM items;
         PRAGMA user_version = 7;",
    )
    .await
    .unwrap();
    pool.close().await;
    let snap = dir.path().join("snap.db");
    let info = sqlite_snapshot(&db, &snap).await.unwrap();
    let (counts, recorded) = rewind_dbkit::sqlite_file_record(&snap).await.unwrap();
    assert_eq!(counts["items"], 0);
    assert!(
        recorded
            .lines
            .contains(&"database: user_version 7".to_string())
            && recorded
                .lines
                .contains(&"index \"items_name\": on \"items\"".to_string()),
        "{:#?}",
        recorded.lines
    );

    let pool = sqlite_pool(&db, 1).await;
    pool.execute("CREATE TABLE audit (id INTEGER); PRAGMA user_version = 8;")
        .await
        .unwrap();
    let changed = pool.catalog().await.unwrap();
    pool.close().await;
    let texts: Vec<String> = rewind_dbkit::catalog::compare(&recorded.lines, &changed.lines)
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(
        texts,
        [
            "database: user_version 8 differs from the backup's 7",
            "table \"audit\": sql CREATE TABLE audit (id INTEGER) (not in the backup)",
        ]
    );
    sqlite_restore(&info, &db, |_| {}).await.unwrap();
    let pool = sqlite_pool(&db, 1).await;
    assert_eq!(pool.catalog().await.unwrap(), recorded);
    pool.close().await;
}

// ---- PostgreSQL: every kind of object through a backup, a change and an exact restore -----

/// `schema` backed up, `change` run, the backup restored exactly, on PostgreSQL 15 and 18.
/// The catalog of the database and of the backup's copy restored into a scratch database
/// (`backup verify`) is the one recorded with the backup; after the restore (and after a
/// second one) the database's catalog and row counts are the backup's, and its
/// `pg_dump --schema-only` is that of the backup restored into a new database. (Not the one
/// taken at backup time: pg_dump prints some expressions differently once they have been
/// read back, which is what the catalog's re-reading is about.)
async fn backup_change_restore(tag: &str, schema: &'static str, change: &'static str) {
    for (server, admin) in pg_servers() {
        let db = PgDb::on(&admin, tag).await;
        let pool = db.pool().await;
        pool.execute(schema)
            .await
            .unwrap_or_else(|e| panic!("{server}: the schema: {e}"));
        pool.close().await;
        let dir = tempfile::tempdir().unwrap();
        let backup = rewind_dbkit::pg_backup(&db.url, &dir.path().join("b.dump"), None)
            .await
            .unwrap_or_else(|e| panic!("{server}: backup: {e}"));
        let recorded = &backup.catalog;
        let reference = PgDb::on(&admin, &format!("{tag}_ref")).await;
        pg_restore(&reference.url, &backup.info, 1)
            .await
            .unwrap_or_else(|e| panic!("{server}: a plain restore into a new database: {e}"));
        let dumped = schema_dump(&reference.url).await;
        reference.drop_db().await;
        let now = catalog_of(&db.url).await;
        assert!(
            now == *recorded,
            "{server}: described again, the catalog differs:\n{}",
            catalog_diff(recorded, &now)
        );
        let options = PgRestoreOptions {
            jobs: 2,
            pg_bin: None,
            roles: recorded.roles.clone(),
        };
        let verified = rewind_dbkit::pg_verify_with(&admin, &backup.info, &options, &[])
            .await
            .unwrap_or_else(|e| panic!("{server}: backup verify: {e}"));
        assert!(
            verified.catalog == *recorded,
            "{server}: backup verify: the scratch copy's catalog differs:\n{}",
            catalog_diff(recorded, &verified.catalog)
        );

        let pool = db.pool().await;
        pool.execute(change)
            .await
            .unwrap_or_else(|e| panic!("{server}: the change: {e}"));
        pool.close().await;
        for round in ["the restore", "a second restore"] {
            let notes = pg_restore_exact(&db.url, &backup.info, &options)
                .await
                .unwrap_or_else(|e| panic!("{server}: {round}: {e}"));
            eprintln!("{server}: {round}: {notes:?}");
            let now = catalog_of(&db.url).await;
            assert!(
                now == *recorded,
                "{server} after {round}: the catalog differs from the backup's:\n{}",
                catalog_diff(recorded, &now)
            );
            let pool = db.pool().await;
            assert_eq!(
                row_counts(&pool).await.unwrap(),
                backup.row_counts,
                "{server} after {round}"
            );
            pool.close().await;
            let restored = schema_dump(&db.url).await;
            assert!(
                restored == dumped,
                "{server} after {round}: pg_dump --schema-only differs:\n--- the backup in a new database\n{dumped}\n--- restored\n{restored}"
            );
        }
        db.drop_db().await;
    }
}

/// Objects that exist only as a part of another (an identity column's sequence, a sequence
/// OWNED BY a column, partitions and their indexes, a table's row type, indexes behind
/// constraints, its TOAST table, extension members), and objects other objects depend on (an
/// inherited table, a domain used by a column, a type used by a function, a trigger function,
/// an event trigger's function, a published table): the restore clears them all.
#[rstest::rstest]
#[case::identity_column(
    "identity",
    "CREATE TABLE a (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY);
     INSERT INTO a DEFAULT VALUES;",
    "CREATE TABLE c (id int);"
)]
#[case::identity_sequence_named_after_another_table(
    // As in the migrations where it was found: the sequence keeps the old table's name, and
    // a new table of that name gets `…_id_seq1`.
    "identity_renamed",
    "CREATE TABLE alerting_settings (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v text);
     ALTER TABLE alerting_settings RENAME TO dynamic_settings;
     CREATE TABLE alerting_settings (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY);
     INSERT INTO dynamic_settings (v) VALUES ('x');",
    "CREATE TABLE c (id int GENERATED ALWAYS AS IDENTITY);
     INSERT INTO dynamic_settings (v) VALUES ('y');"
)]
#[case::sequences_owned_by_columns(
    "owned",
    "CREATE TABLE a (id serial PRIMARY KEY, n bigint);
     CREATE SEQUENCE a_n_seq OWNED BY a.n;
     ALTER TABLE a ALTER n SET DEFAULT nextval('a_n_seq');
     CREATE SEQUENCE free_seq;
     INSERT INTO a DEFAULT VALUES;",
    "CREATE TABLE c (id serial); SELECT nextval('free_seq'); INSERT INTO a DEFAULT VALUES;"
)]
#[case::partitions(
    "partitions",
    "CREATE TABLE m (id bigserial, k text NOT NULL, at date, PRIMARY KEY (id, k))
         PARTITION BY LIST (k);
     CREATE TABLE m_a PARTITION OF m FOR VALUES IN ('a') PARTITION BY RANGE (id);
     CREATE TABLE m_a_low PARTITION OF m_a FOR VALUES FROM (1) TO (1000);
     CREATE TABLE m_other PARTITION OF m DEFAULT;
     CREATE INDEX m_at ON m (at);
     INSERT INTO m (k, at) VALUES ('a', '2024-05-01'), ('z', NULL);",
    "CREATE TABLE m_b PARTITION OF m FOR VALUES IN ('b'); CREATE TABLE c (id int);"
)]
#[case::inherited_tables(
    "inherited",
    "CREATE TABLE parent (id int PRIMARY KEY, note text);
     CREATE TABLE child (extra int) INHERITS (parent);
     CREATE TABLE grandchild () INHERITS (child);
     INSERT INTO child VALUES (1, 'x', 2);",
    "CREATE TABLE c () INHERITS (parent); INSERT INTO c VALUES (2, 'y');"
)]
#[case::domain_used_by_a_column(
    "domain",
    "CREATE DOMAIN posint AS int CHECK (VALUE > 0);
     CREATE TABLE a (p posint, q posint[]);
     INSERT INTO a VALUES (1, '{2}');",
    "CREATE TABLE c (p posint);"
)]
#[case::type_used_by_a_function(
    "type_fn",
    "CREATE TYPE mood AS ENUM ('ok', 'sad');
     CREATE TYPE pair AS (a int, b mood);
     CREATE FUNCTION f(m mood) RETURNS pair LANGUAGE sql AS $$SELECT 1, m$$;
     CREATE TABLE a (m mood DEFAULT 'ok');",
    "ALTER TYPE mood ADD VALUE 'meh'; CREATE TABLE c (m mood);"
)]
#[case::trigger_function(
    "trigger_fn",
    "CREATE TABLE a (id int, n text);
     CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql
         AS $$BEGIN NEW.n := upper(NEW.n); RETURN NEW; END$$;
     CREATE TRIGGER a_touch BEFORE INSERT ON a FOR EACH ROW EXECUTE FUNCTION touch();",
    "CREATE TABLE c (id int, n text);
     CREATE TRIGGER c_touch BEFORE INSERT ON c FOR EACH ROW EXECUTE FUNCTION touch();"
)]
#[case::event_triggers(
    // One in the backup that logs every DDL to a table, one made after it that refuses every
    // DROP: neither may fire while the restore drops and creates.
    "event_trigger",
    "CREATE TABLE ddl_log (tag text);
     CREATE FUNCTION log_ddl() RETURNS event_trigger LANGUAGE plpgsql
         AS $$BEGIN INSERT INTO public.ddl_log VALUES (tg_tag); END$$;
     CREATE EVENT TRIGGER log_ddl ON ddl_command_end EXECUTE FUNCTION log_ddl();
     CREATE TABLE a (id int);",
    "CREATE TABLE c (id int);
     CREATE FUNCTION no_drops() RETURNS event_trigger LANGUAGE plpgsql
         AS $$BEGIN RAISE EXCEPTION 'no DROP here'; END$$;
     CREATE EVENT TRIGGER no_drops ON sql_drop EXECUTE FUNCTION no_drops();"
)]
#[case::publications(
    "publication",
    "CREATE TABLE a (id int PRIMARY KEY);
     CREATE TABLE b (id int PRIMARY KEY);
     CREATE PUBLICATION pub_a FOR TABLE a;
     CREATE PUBLICATION pub_public FOR TABLES IN SCHEMA public;",
    "CREATE TABLE c (id int PRIMARY KEY); ALTER PUBLICATION pub_a ADD TABLE c;"
)]
#[case::parts_of_a_table(
    "table_parts",
    "CREATE TABLE a (id int PRIMARY KEY, code text UNIQUE, body text, r int4range,
                     EXCLUDE USING gist (r WITH &&));
     CREATE TABLE uses_row (x a);
     CREATE FUNCTION first_a() RETURNS a LANGUAGE sql AS 'SELECT * FROM a LIMIT 1';
     CREATE TABLE fk (a_id int REFERENCES a);
     CREATE STATISTICS a_stats ON id, code FROM a;
     INSERT INTO a VALUES (1, 'x', repeat('long text ', 10000), '[1,5)');",
    "CREATE TABLE c (id int); ALTER TABLE a ADD COLUMN extra int;"
)]
#[case::extension_members(
    "ext_members",
    "CREATE EXTENSION hstore;
     CREATE EXTENSION pg_trgm;
     CREATE TABLE a (h hstore, t text);
     CREATE INDEX a_t ON a USING gin (t gin_trgm_ops);",
    "CREATE EXTENSION btree_gist; CREATE TABLE c (id int);"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_restore_clears_every_kind_of_object(
    #[case] tag: &str,
    #[case] schema: &'static str,
    #[case] change: &'static str,
) {
    backup_change_restore(tag, schema, change).await;
}

/// Texts PostgreSQL prints back from an expression (view definitions, rules, constraints,
/// index and trigger definitions, defaults, policies, partition keys, function argument
/// defaults and bodies), with the inputs that make PostgreSQL print them differently after a
/// dump and restore: varchar comparisons and IN lists (an ARRAY[] cast to text[]), casts,
/// `::regclass`, nested views. The catalog of a restored database is the backup's.
#[rstest::rstest]
#[case::view_with_a_varchar_in_list(
    "in_list",
    "CREATE TABLE t (c varchar(66));
     CREATE VIEW v AS SELECT c FROM t WHERE c IN ('a', 'b');",
    "CREATE TABLE c (id int);"
)]
#[case::nested_and_materialized_views(
    "nested_views",
    "CREATE TABLE t (c varchar(66), n int);
     CREATE VIEW v AS SELECT c, n FROM t WHERE c IN ('a', 'b');
     CREATE VIEW w AS SELECT c FROM v
          WHERE c <> 'b' AND n IN (SELECT n FROM v WHERE c NOT IN ('x', 'y'));
     CREATE MATERIALIZED VIEW mw AS SELECT c, count(*) AS n FROM w GROUP BY c;
     CREATE VIEW u AS WITH x AS (SELECT c FROM t WHERE c = ANY (ARRAY['a', 'b']))
          SELECT c FROM x UNION ALL SELECT c FROM w WHERE c = ANY ('{a,b}'::varchar[]);",
    "DROP VIEW w CASCADE;"
)]
#[case::casts_and_regclass(
    "casts",
    "CREATE TABLE t (c varchar(66), n int, d date, code char(3));
     CREATE VIEW v AS SELECT c::text AS ct, n::bigint AS nb, 't'::regclass AS rc,
          c::varchar(3) AS c3, code = 'ab' AS is_ab, ARRAY[c, 'x']::text[] AS arr,
          (ARRAY['a', 'b']::varchar[])::text[] AS arr2, d + n AS later,
          CASE WHEN c BETWEEN 'a' AND 'm' THEN 1 END AS early
        FROM t;",
    "CREATE TABLE c (id int);"
)]
#[case::column_defaults(
    "defaults",
    "CREATE SEQUENCE s;
     CREATE TABLE other (id int);
     CREATE TABLE t (id bigint DEFAULT nextval('s'::regclass), id2 serial,
                     r regclass DEFAULT 'other'::regclass,
                     tags text[] DEFAULT ARRAY['a', 'b']::varchar[]::text[],
                     ok text DEFAULT ('a'::varchar IN ('a', 'b'))::text,
                     name varchar(10) DEFAULT 'x', at date DEFAULT CURRENT_DATE);",
    "ALTER TABLE t ALTER tags SET DEFAULT '{}';"
)]
#[case::check_constraints_and_domains(
    "checks",
    "CREATE TABLE t (c varchar(10) CHECK (c IN ('a', 'b')),
                     k varchar CHECK (k <> 'z' AND k LIKE 'a%'),
                     tags text[] CHECK (tags <> ARRAY['x']::varchar[]::text[]),
                     r int4range,
                     EXCLUDE USING gist (r WITH &&) WHERE (c IN ('a', 'b')));
     ALTER TABLE t ADD CONSTRAINT t_not_q CHECK (c NOT IN ('q')) NOT VALID;
     CREATE DOMAIN d AS varchar(5) DEFAULT 'a' CHECK (VALUE IN ('a', 'b'));
     CREATE DOMAIN d2 AS text[] DEFAULT ARRAY['a']::varchar[]::text[];",
    "ALTER TABLE t DROP CONSTRAINT t_c_check;"
)]
#[case::expression_indexes(
    "expr_index",
    "CREATE TABLE t (c varchar(66), n int);
     CREATE INDEX t_lower ON t (lower(c));
     CREATE INDEX t_in ON t ((c IN ('a', 'b')));
     CREATE INDEX t_cat ON t ((c || 'x'::varchar), (n::text)) INCLUDE (n);",
    "DROP INDEX t_in;"
)]
#[case::partial_indexes(
    "partial_index",
    "CREATE TABLE t (c varchar(66), code char(3), n int);
     CREATE INDEX t_part ON t (n) WHERE c IN ('a', 'b');
     CREATE UNIQUE INDEX t_code ON t (code) WHERE code IN ('aa', 'bb');
     CREATE INDEX t_eq ON t (n) WHERE c = 'a' AND c <> 'b';
     CREATE TABLE p (c varchar(5), n int) PARTITION BY LIST (c);
     CREATE TABLE p1 PARTITION OF p FOR VALUES IN ('a', 'b');
     CREATE INDEX p_part ON p (n) WHERE c IN ('a', 'b');",
    "DROP INDEX t_part;"
)]
#[case::rules(
    "rules",
    "CREATE TABLE t (c varchar(10), x int);
     CREATE TABLE log (c varchar(10));
     CREATE RULE r_ins AS ON INSERT TO t WHERE NEW.c IN ('a', 'b') DO INSTEAD NOTHING;
     CREATE RULE r_upd AS ON UPDATE TO t WHERE NEW.c::text = 'z'
          DO ALSO INSERT INTO log VALUES (NEW.c);
     CREATE VIEW tv AS SELECT c, x FROM t;
     CREATE RULE tv_ins AS ON INSERT TO tv
          DO INSTEAD INSERT INTO t VALUES (NEW.c, NEW.x) RETURNING t.*;",
    "DROP RULE r_ins ON t;"
)]
#[case::trigger_conditions(
    "trigger_when",
    "CREATE TABLE t (c varchar(5), n int);
     CREATE FUNCTION trg() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
     CREATE TRIGGER t_when BEFORE UPDATE ON t FOR EACH ROW
          WHEN (NEW.c IN ('a', 'b') AND OLD.c IS DISTINCT FROM NEW.c) EXECUTE FUNCTION trg();
     CREATE CONSTRAINT TRIGGER t_ct AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED
          FOR EACH ROW WHEN (NEW.c IN ('a', 'b')) EXECUTE FUNCTION trg(' ON public.t ');",
    "DROP TRIGGER t_when ON t;"
)]
#[case::policies(
    "policies",
    "CREATE TABLE t (c varchar(10), owner text);
     ALTER TABLE t ENABLE ROW LEVEL SECURITY;
     CREATE POLICY p_sel ON t FOR SELECT USING (c IN ('a', 'b'));
     CREATE POLICY p_ins ON t FOR INSERT WITH CHECK (c::text <> 'z' AND owner = current_user);
     CREATE POLICY p_all ON t AS RESTRICTIVE USING (c NOT IN ('x')) WITH CHECK (c IN ('a'));",
    "DROP POLICY p_sel ON t;"
)]
#[case::function_defaults_and_bodies(
    "functions",
    "CREATE TABLE t (c varchar(10));
     CREATE FUNCTION f(a varchar DEFAULT 'a', b regclass DEFAULT 't'::regclass,
                       c text[] DEFAULT ARRAY['a', 'b']::varchar[]::text[],
                       d text DEFAULT ('a'::varchar IN ('a', 'b'))::text)
          RETURNS int LANGUAGE sql AS 'SELECT 1';
     CREATE PROCEDURE p(x varchar DEFAULT 'a', y text[] DEFAULT ARRAY['a']::varchar[]::text[])
          LANGUAGE sql AS 'SELECT 1';
     CREATE FUNCTION outs(IN x varchar DEFAULT 'a', OUT y text, OUT z int)
          LANGUAGE sql AS $$SELECT x::text, 1$$;
     CREATE FUNCTION is_ab(x varchar) RETURNS boolean LANGUAGE sql IMMUTABLE
          RETURN x IN ('a', 'b');
     CREATE FUNCTION count_ab(x varchar DEFAULT 'a') RETURNS bigint LANGUAGE sql
          BEGIN ATOMIC SELECT count(*) FROM t WHERE c IN ('a', x); END;
     CREATE FUNCTION tab(x varchar DEFAULT 'a') RETURNS TABLE (c varchar) LANGUAGE sql
          AS $$SELECT c FROM t WHERE c IN ('a', x)$$;",
    "DROP FUNCTION is_ab(varchar);"
)]
#[case::generated_columns_and_partition_keys(
    "generated",
    "CREATE TABLE g (c varchar(10),
                     d varchar(10) GENERATED ALWAYS AS (CASE WHEN c IN ('a', 'b') THEN c ELSE 'z' END) STORED);
     CREATE TABLE pk (c varchar(10)) PARTITION BY LIST ((c IN ('a', 'b')));
     CREATE TABLE pk1 PARTITION OF pk FOR VALUES IN (true);
     CREATE TABLE pr (c varchar(10)) PARTITION BY RANGE (lower(c));
     CREATE TABLE pr1 PARTITION OF pr FOR VALUES FROM ('a') TO ('m');",
    "CREATE TABLE c (id int);"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_printed_texts_survive_a_restore(
    #[case] tag: &str,
    #[case] schema: &'static str,
    #[case] change: &'static str,
) {
    backup_change_restore(tag, schema, change).await;
}

/// What the re-reading of printed texts must not hide: a view redefined to select another
/// column, a literal changed in an IN list. Both are named.
#[tokio::test]
async fn pg_catalog_still_tells_a_changed_view_and_check() {
    for (server, admin) in pg_servers() {
        let db = PgDb::on(&admin, "changed_view").await;
        let pool = db.pool().await;
        pool.execute(
            "CREATE TABLE t (c varchar(66), d varchar(66) CHECK (d IN ('a', 'b')));
             CREATE VIEW v AS SELECT c FROM t WHERE c IN ('a', 'b');",
        )
        .await
        .unwrap();
        let recorded = catalog_of(&db.url).await;
        pool.execute(
            "CREATE OR REPLACE VIEW v AS SELECT d AS c FROM t WHERE c IN ('a', 'b');
             ALTER TABLE t DROP CONSTRAINT t_d_check;
             ALTER TABLE t ADD CONSTRAINT t_d_check CHECK (d IN ('a', 'c'));",
        )
        .await
        .unwrap();
        pool.close().await;
        let now = catalog_of(&db.url).await;
        let texts: Vec<String> = rewind_dbkit::catalog::compare(&recorded.lines, &now.lines)
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(texts.len(), 2, "{server}: {texts:#?}");
        assert!(
            texts[0].starts_with(
                "constraint public.t.t_d_check: definition CHECK (((d)::text = ANY (ARRAY[('a'::character varying)::text, ('c'::character varying)::text]))) differs from the backup's CHECK (((d)::text = ANY (ARRAY[('a'::character varying)::text, ('b'::character varying)::text])))"
            ),
            "{server}: {texts:#?}"
        );
        assert!(
            texts[1].starts_with("view public.v: definition blake3:")
                && texts[1].contains("differs from the backup's blake3:"),
            "{server}: {texts:#?}"
        );
        assert_ne!(now.fingerprint, recorded.fingerprint);
        db.drop_db().await;
    }
}

/// A role that may not create temporary objects gets the catalog as PostgreSQL prints it,
/// without the re-reading (and without an error).
#[tokio::test]
async fn pg_catalog_without_temporary_privilege_keeps_printed_texts() {
    for (server, admin) in pg_servers() {
        ensure_role(&admin, "rw_notemp", true).await;
        let db = PgDb::on(&admin, "notemp").await;
        let pool = db.pool().await;
        pool.execute(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE t (c varchar(66));
             CREATE VIEW v AS SELECT c FROM t WHERE c IN ('a', 'b');
             GRANT SELECT ON t, v TO rw_notemp;
             REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC;",
            db.name
        )))
        .await
        .unwrap();
        pool.close().await;
        let reread = catalog_of(&db.url).await;
        let printed = catalog_of(&as_user(&db.url, "rw_notemp")).await;
        let texts: Vec<String> = rewind_dbkit::catalog::compare(&reread.lines, &printed.lines)
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(texts.len(), 1, "{server}: {texts:#?}");
        assert!(
            texts[0].starts_with("view public.v: definition blake3:"),
            "{server}: {texts:#?}"
        );
        db.drop_db().await;
    }
}

/// A database error reads as PostgreSQL's message, detail, hint and SQLSTATE, never with the
/// line of PostgreSQL's C source that raised it (sqlx's `Display` appends "at line 835").
#[tokio::test]
async fn pg_errors_read_as_message_and_sqlstate() {
    for (server, admin) in pg_servers() {
        let missing = PgUrl::parse(&admin)
            .unwrap()
            .with_database("rewind_surely_no_such_database")
            .as_str()
            .to_string();
        let dir = tempfile::tempdir().unwrap();
        let e = rewind_dbkit::pg_backup(&missing, &dir.path().join("b.dump"), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("database \"rewind_surely_no_such_database\" does not exist")
                && e.contains("[SQLSTATE 3D000]"),
            "{server}: {e}"
        );
        assert!(!e.contains(" at line "), "{server}: {e}");

        let pool = PgPool::connect(&admin).await.unwrap();
        let outcomes = pool
            .sql_checks(
                &[(
                    "bad".to_string(),
                    "SELECT count(*) = 0 FROM rewind_no_such_table".to_string(),
                )],
                None,
            )
            .await;
        pool.close().await;
        let e = outcomes[0].error.clone().unwrap_or_default();
        assert!(
            e.contains("relation \"rewind_no_such_table\" does not exist")
                && e.contains("[SQLSTATE 42P01]"),
            "{server}: {e}"
        );
        assert!(!e.contains(" at line "), "{server}: {e}");
    }
}

// ---- PostgreSQL point-in-time recovery (pgBackRest) ---------------------------------------

/// The newest PostgreSQL server binaries, as `scripts/test` picks them.
fn pg_server_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin: install them \
             (apt-get install -y postgresql) or run scripts/test"
        )
    })
}

fn pgbackrest_bin() -> PathBuf {
    let candidate = match std::env::var_os("REWIND_TEST_PGBACKREST") {
        Some(p) => PathBuf::from(p),
        None => std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join("pgbackrest"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "pgbackrest not found (REWIND_TEST_PGBACKREST is not set and it is not in \
                     PATH): install it (apt-get install -y pgbackrest) or run scripts/test"
                )
            }),
    };
    assert!(
        candidate.is_file(),
        "pgbackrest {} does not exist: install it (apt-get install -y pgbackrest)",
        candidate.display()
    );
    candidate
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

/// A command run as the `postgres` OS user when the test runs as root (PostgreSQL refuses
/// to run as root), as `scripts/test` does; as ourselves otherwise.
fn as_pg(program: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"])
            .arg(program)
            .current_dir("/");
        c
    } else {
        Command::new(program)
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A PostgreSQL cluster in a temporary directory that archives its WAL into a pgBackRest
/// repository beside it. Dropping it stops the server and removes everything, also when the
/// test panics.
struct PitrCluster {
    // Under /tmp (sticky and world-traversable), so the postgres user can reach it: a
    // TMPDIR inside root's home would not be.
    dir: tempfile::TempDir,
    bin: PathBuf,
    pgbackrest: PathBuf,
    port: u16,
}

const PITR_STANZA: &str = "pitr";

impl PitrCluster {
    fn start() -> PitrCluster {
        let bin = pg_server_bin();
        let pgbackrest = pgbackrest_bin();
        let dir = tempfile::Builder::new()
            .prefix("rewind-pitr-")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path().to_path_buf();
        for sub in ["repo", "log", "lock", "spool"] {
            std::fs::create_dir(root.join(sub)).unwrap();
        }
        if running_as_root() {
            run_ok(Command::new("chown").arg("-R").arg("postgres:").arg(&root));
        }
        let data = root.join("data");
        run_ok(as_pg(&bin.join("initdb")).arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]));
        let base_conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        let mut cluster = PitrCluster {
            dir,
            bin,
            pgbackrest,
            port: 0,
        };
        // A free port can be taken by someone else before the server binds it: try a few.
        for attempt in 1..=5 {
            cluster.port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            std::fs::write(
                data.join("postgresql.conf"),
                format!("{base_conf}\n{}", cluster.server_conf()),
            )
            .unwrap();
            std::fs::write(root.join("pgbackrest.conf"), cluster.pgbackrest_conf()).unwrap();
            let status = Command::new("sh")
                .args(["-c", &cluster.start_command()])
                .current_dir("/")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            if status.success() {
                return cluster;
            }
            eprintln!(
                "PostgreSQL did not start on port {} (attempt {attempt})",
                cluster.port
            );
        }
        let log = std::fs::read_to_string(root.join("server.log")).unwrap_or_default();
        panic!("PostgreSQL did not start:\n{log}");
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn data(&self) -> PathBuf {
        self.root().join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn server_conf(&self) -> String {
        let root = self.root().display();
        format!(
            "port = {port}\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{root}'\n\
             fsync = off\n\
             wal_level = replica\n\
             archive_mode = on\n\
             archive_command = '{pgbr} --config={root}/pgbackrest.conf --stanza={PITR_STANZA} \
             archive-push %p'\n",
            port = self.port,
            pgbr = self.pgbackrest.display(),
        )
    }

    fn pgbackrest_conf(&self) -> String {
        let root = self.root().display();
        format!(
            "[global]\n\
             repo1-path={root}/repo\n\
             repo1-retention-full=2\n\
             log-path={root}/log\n\
             lock-path={root}/lock\n\
             spool-path={root}/spool\n\
             log-level-console=warn\n\
             log-level-file=off\n\
             start-fast=y\n\
             compress-type=none\n\
             process-max=2\n\
             \n\
             [{PITR_STANZA}]\n\
             pg1-path={root}/data\n\
             pg1-port={port}\n\
             pg1-socket-path={root}\n",
            port = self.port,
        )
    }

    /// The config's start command, run the way the library runs it.
    fn start_command(&self) -> String {
        let cmd = self.config().start;
        if running_as_root() {
            format!("runuser -u postgres -- {cmd}")
        } else {
            cmd
        }
    }

    fn config(&self) -> PgBackRest {
        let pg_ctl = self.bin.join("pg_ctl");
        PgBackRest {
            stanza: PITR_STANZA.into(),
            config: Some(self.root().join("pgbackrest.conf")),
            program: Some(self.pgbackrest.clone()),
            run_as: running_as_root().then(|| "postgres".to_string()),
            data_dir: self.data(),
            stop: format!(
                "'{}' -D '{}' -m fast -w stop",
                pg_ctl.display(),
                self.data().display()
            ),
            start: format!(
                "'{}' -D '{}' -l '{}' -w -t 120 start",
                pg_ctl.display(),
                self.data().display(),
                self.root().join("server.log").display()
            ),
            recovery_timeout: Duration::from_secs(120),
        }
    }

    fn pgbackrest(&self, args: &[&str]) -> String {
        run_ok(
            as_pg(&self.pgbackrest)
                .arg(format!(
                    "--config={}",
                    self.root().join("pgbackrest.conf").display()
                ))
                .arg(format!("--stanza={PITR_STANZA}"))
                .args(args),
        )
    }

    /// The postmaster's pid, from `postmaster.pid`; `None` when the server is down.
    fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.root().join("server.log")).unwrap_or_default()
    }
}

impl Drop for PitrCluster {
    fn drop(&mut self) {
        if self.postmaster_pid().is_some() {
            let _ = as_pg(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "stop"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

async fn pitr_rows(url: &str) -> Vec<String> {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let rows = sqlx::query_scalar("SELECT v FROM pitr ORDER BY v")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    rows
}

async fn pitr_exec(url: &str, sql: &'static str) {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    conn.execute(sql).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbackrest_restores_to_a_time_between_two_writes() {
    let started = std::time::Instant::now();
    let cluster = PitrCluster::start();
    let url = cluster.url();
    cluster.pgbackrest(&["stanza-create"]);
    let before_backup = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    cluster.pgbackrest(&["--type=full", "backup"]);

    // Row A, then the target time, then row B; a second on each side so the commit times
    // are clearly before and after it (the server's clock is this machine's).
    pitr_exec(
        &url,
        "CREATE TABLE pitr (v text); INSERT INTO pitr VALUES ('A')",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let target = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    pitr_exec(&url, "INSERT INTO pitr VALUES ('B')").await;
    assert_eq!(pitr_rows(&url).await, ["A", "B"]);

    let cfg = cluster.config();
    assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());

    // Targets outside the window are refused before the server is touched: same postmaster,
    // same rows.
    let pid = cluster.postmaster_pid().expect("the server is not running");
    let future = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    for outside in [before_backup, future] {
        let mut phases = Vec::new();
        let err = restore_to_time(&cfg, &url, outside, |p| phases.push(p))
            .await
            .unwrap_err();
        let text = err.to_string();
        eprintln!("{text}");
        assert!(matches!(err, Error::OutsideWindow { .. }), "{text}");
        // Named in UTC, to the microsecond.
        let shown = jiff::Timestamp::from_microsecond(outside.as_microsecond()).unwrap();
        assert!(text.contains(&shown.to_string()), "{text}");
        assert!(text.contains("nothing was changed"), "{text}");
        assert_eq!(phases, [PitrPhase::CheckingWindow]);
        assert_eq!(
            cluster.postmaster_pid(),
            Some(pid),
            "the server was touched"
        );
        assert_eq!(pitr_rows(&url).await, ["A", "B"]);
    }
    // A time without a zone is refused outright.
    let local = target
        .to_zoned(jiff::tz::TimeZone::UTC)
        .datetime()
        .to_string();
    let err = parse_target_time(&local).unwrap_err().to_string();
    assert!(err.contains("no time zone"), "{err}");
    assert_eq!(parse_target_time(&format!("{local}Z")).unwrap(), target);

    // pgBackRest's own errors come back with what it said.
    let broken = PgBackRest {
        config: Some(cluster.root().join("missing.conf")),
        ..cfg.clone()
    };
    let err = rewind_dbkit::pitr::window(&broken, &url).await.unwrap_err();
    assert!(matches!(err, Error::Tool { .. }), "{err}");
    assert!(err.to_string().contains("missing.conf"), "{err}");
    let unknown = PgBackRest {
        stanza: "nope".into(),
        ..cfg.clone()
    };
    let err = rewind_dbkit::pitr::window(&unknown, &url)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no backup"), "{err}");

    // A step that fails once the server is being touched says which, what the command
    // printed, and where things stand.
    let cannot_stop = PgBackRest {
        stop: "echo 'cannot stop: no permission' >&2; exit 3".into(),
        ..cfg.clone()
    };
    let err = restore_to_time(&cannot_stop, &url, target, |_| {})
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            &err,
            Error::PitrStep { step: PitrPhase::Stopping, source, .. }
                if matches!(**source, Error::Tool { .. })
        ),
        "{text}"
    );
    assert!(text.contains("cannot stop: no permission"), "{text}");
    assert!(text.contains("exit status 3"), "{text}");
    assert!(text.contains("nothing was restored"), "{text}");
    assert_eq!(cluster.postmaster_pid(), Some(pid));
    assert_eq!(pitr_rows(&url).await, ["A", "B"]);

    let window = rewind_dbkit::pitr::window(&cfg, &url).await.unwrap();
    assert!(window.contains(target), "{window:?} {target}");
    assert_eq!(window.backups.len(), 1);
    assert_eq!(window.backups[0].kind, "full");

    // The restore.
    let mut phases = Vec::new();
    let report = restore_to_time(&cfg, &url, target, |p| phases.push(p))
        .await
        .unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", cluster.server_log()));
    assert_eq!(
        phases,
        [
            PitrPhase::CheckingWindow,
            PitrPhase::Stopping,
            PitrPhase::Restoring,
            PitrPhase::Starting,
            PitrPhase::Recovering,
            PitrPhase::Done,
        ]
    );
    assert_eq!(report.backup_set, window.backups[0].label);
    assert!(
        report
            .command
            .iter()
            .any(|a| a == "--target-action=promote")
    );
    assert_eq!(pitr_rows(&url).await, ["A"], "{}", cluster.server_log());
    assert_ne!(
        cluster.postmaster_pid(),
        Some(pid),
        "the server was not restarted"
    );

    // Out of recovery: a primary that takes writes again.
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!in_recovery);
    conn.execute("INSERT INTO pitr VALUES ('C')").await.unwrap();
    conn.close().await.unwrap();
    assert_eq!(pitr_rows(&url).await, ["A", "C"]);
    eprintln!(
        "point-in-time recovery test: {:.1} s; report: {}",
        started.elapsed().as_secs_f64(),
        serde_json::to_string(&report).unwrap()
    );
}
