//! Round trips through each tool's layout and history table, on SQLite and PostgreSQL.
//!
//! PostgreSQL comes from `REWIND_TEST_PG_URL` (15) and `REWIND_TEST_PG18_URL` (18; scripts/test
//! starts a throwaway cluster of each); each test creates its own databases with `CREATE
//! DATABASE`. Without the variables the PostgreSQL tests fail: nothing is skipped silently.
//!
//! `cases` holds small cases shaped after real projects' inputs; `referee` runs the teams'
//! own tools against what rewind does.

// The tests run the teams' own tools directly, as referees (clippy.toml is for rewind itself).
#![allow(clippy::disallowed_methods)]

#[path = "roundtrip/cases.rs"]
mod cases;
#[path = "roundtrip/referee.rs"]
mod referee;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rewind_db::migrations::{self, Format, Migration};
use rewind_db::{DriftKind, Phase, applied, apply, drift, revert};
use sqlx::{AnyPool, Row};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Sqlite,
    Postgres,
    Postgres18,
}

struct Target {
    kind: Kind,
    url: String,
    pool: AnyPool,
    _dir: Option<tempfile::TempDir>,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn pg_url_of(kind: Kind) -> String {
    let var = if kind == Kind::Postgres18 {
        "REWIND_TEST_PG18_URL"
    } else {
        "REWIND_TEST_PG_URL"
    };
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run scripts/test"))
}

/// `pg_dump` of the server's major: PostgreSQL 18's from `REWIND_TEST_PG18_BIN`.
fn pg_dump_for(kind: Kind) -> String {
    match (kind, std::env::var("REWIND_TEST_PG18_BIN")) {
        (Kind::Postgres18, Ok(bin)) => format!("{bin}/pg_dump"),
        (Kind::Postgres18, Err(_)) => panic!("REWIND_TEST_PG18_BIN is not set: run scripts/test"),
        _ => "pg_dump".into(),
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

async fn fresh(kind: Kind, label: &str) -> Target {
    match kind {
        Kind::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("app.db").display());
            let pool = rewind_db::connect(&url).await.unwrap();
            Target {
                kind,
                url,
                pool,
                _dir: Some(dir),
            }
        }
        Kind::Postgres | Kind::Postgres18 => {
            let admin_url = pg_url_of(kind);
            let admin = rewind_db::connect(&admin_url).await.unwrap();
            let name = format!(
                "rw_{}_{}_{}",
                label.replace('-', "_"),
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::SeqCst)
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
            let base = admin_url.rsplit_once('/').expect("a database in the URL").0;
            let url = format!("{base}/{name}");
            let pool = rewind_db::connect(&url).await.unwrap();
            Target {
                kind,
                url,
                pool,
                _dir: None,
            }
        }
    }
}

/// The schema without the tool's history table (and without sqitch's registry).
async fn schema(t: &Target, format: Format) -> String {
    let history = format.history_table();
    match t.kind {
        Kind::Sqlite => {
            let mut out = String::new();
            let rows = sqlx::query(
                "SELECT m.name || ' ' || p.name || ' ' || p.type || ' notnull=' || \
                 CAST(p.\"notnull\" AS TEXT) || ' pk=' || CAST(p.pk AS TEXT) || ' default=' || \
                 COALESCE(p.dflt_value, '') \
                 FROM sqlite_master m, pragma_table_info(m.name) p \
                 WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> $1 \
                 ORDER BY m.name, p.cid",
            )
            .bind(history.to_string())
            .fetch_all(&t.pool)
            .await
            .unwrap();
            for r in rows {
                out.push_str(&format!("table {}\n", r.get::<String, _>(0)));
            }
            let rows = sqlx::query(
                "SELECT m.name || ' ON ' || m.tbl_name || ' (' || ii.name || ')' \
                 FROM sqlite_master m, pragma_index_info(m.name) ii \
                 WHERE m.type = 'index' AND m.tbl_name <> $1 ORDER BY m.name, ii.seqno",
            )
            .bind(history.to_string())
            .fetch_all(&t.pool)
            .await
            .unwrap();
            for r in rows {
                out.push_str(&format!("index {}\n", r.get::<String, _>(0)));
            }
            out
        }
        Kind::Postgres | Kind::Postgres18 => {
            let mut cmd = std::process::Command::new(pg_dump_for(t.kind));
            cmd.args([
                "--schema-only",
                "--no-owner",
                "--no-privileges",
                "-N",
                "sqitch",
            ]);
            if !history.contains('.') {
                cmd.args(["-T", &format!("public.{history}")]);
            }
            cmd.arg(&t.url);
            let out = cmd.output().expect("pg_dump runs");
            assert!(
                out.status.success(),
                "pg_dump failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                // pg_dump 15.14+ brackets its output with \\restrict <random key>.
                .filter(|l| {
                    !l.starts_with("--")
                        && !l.starts_with("\\restrict")
                        && !l.starts_with("\\unrestrict")
                        && !l.trim().is_empty()
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
    }
}

/// Whether the history table exists at all.
async fn history_exists(t: &Target, format: Format) -> bool {
    let table = format.history_table();
    let sql = match t.kind {
        Kind::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'table' AND name = $1",
        Kind::Postgres | Kind::Postgres18 => {
            "SELECT table_name FROM information_schema.tables WHERE table_name = $1"
        }
    };
    sqlx::query(sql)
        .bind(table.to_string())
        .fetch_optional(&t.pool)
        .await
        .unwrap()
        .is_some()
}

fn versions(ms: &[Migration]) -> Vec<String> {
    ms.iter().map(|m| m.version.clone()).collect()
}

fn no_progress(_: &Migration, _: Phase) {}

/// Apply all 3; revert one at a time, each time comparing with a fresh database that had
/// only the remaining ones applied; revert the rest; re-apply everything.
async fn roundtrip(kind: Kind, format: Format, dir: &str) {
    let migs = migrations::read(&fixture(dir), format).unwrap();
    assert_eq!(migs.len(), 3, "{dir}: three migrations");
    assert!(
        migs.iter().all(|m| !m.down_is_empty()),
        "{dir}: all have downs"
    );
    let v = versions(&migs);

    // References: a fresh database with only the first k applied.
    let mut reference = Vec::new();
    for k in 0..=3 {
        let t = fresh(kind, dir).await;
        if k > 0 {
            let done = apply(&t.pool, format, &migs, Some(&v[k - 1]), no_progress)
                .await
                .unwrap();
            assert_eq!(done, v[..k]);
        }
        reference.push(schema(&t, format).await);
    }
    assert_ne!(
        reference[2], reference[3],
        "the third migration changes the schema"
    );

    let t = fresh(kind, dir).await;
    let mut journal = Vec::new();
    let done = apply(&t.pool, format, &migs, None, |m, p| {
        journal.push((m.version.clone(), p))
    })
    .await
    .unwrap();
    assert_eq!(done, v);
    assert_eq!(
        journal.len(),
        9,
        "applying, applied, committed for each: {journal:?}"
    );
    assert_eq!(journal[0], (v[0].clone(), Phase::Applying));
    assert_eq!(journal[8], (v[2].clone(), Phase::Committed));
    assert_eq!(applied(&t.pool, format, &migs).await.unwrap(), v);
    assert_eq!(schema(&t, format).await, reference[3]);
    // Applying again does nothing.
    assert!(
        apply(&t.pool, format, &migs, None, no_progress)
            .await
            .unwrap()
            .is_empty()
    );

    for k in (0..3).rev() {
        let down_to = if k == 0 {
            None
        } else {
            Some(v[k - 1].as_str())
        };
        let reverted = revert(&t.pool, format, &migs, down_to, no_progress)
            .await
            .unwrap();
        assert_eq!(
            reverted,
            vec![v[k].clone()],
            "{dir} {kind:?}: revert to {k}"
        );
        assert_eq!(
            schema(&t, format).await,
            reference[k],
            "{dir} {kind:?}: schema at {k}"
        );
        assert_eq!(
            applied(&t.pool, format, &migs).await.unwrap(),
            v[..k],
            "{dir} {kind:?}: history at {k}"
        );
    }

    // After undoing everything, everything applies again.
    apply(&t.pool, format, &migs, None, no_progress)
        .await
        .unwrap();
    assert_eq!(schema(&t, format).await, reference[3]);
    assert_eq!(applied(&t.pool, format, &migs).await.unwrap(), v);
    check_tool_rows(&t, format, &migs).await;
}

/// A few checks of the rows as the tool itself reads them.
async fn check_tool_rows(t: &Target, format: Format, migs: &[Migration]) {
    let texts = |sql: &'static str| {
        let pool = t.pool.clone();
        async move {
            // A pooled connection sees sqitch's SQLite registry only once attached.
            let mut conn = pool.acquire().await.unwrap();
            rewind_db::history::prepare(&mut conn, format)
                .await
                .unwrap();
            sqlx::query(sql)
                .fetch_all(&mut *conn)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<String, _>(0))
                .collect::<Vec<_>>()
        }
    };
    match format {
        Format::GolangMigrate => {
            let rows = texts(
                "SELECT CAST(version AS TEXT) || ' ' || CASE WHEN dirty THEN 'dirty' ELSE 'clean' END \
                 FROM schema_migrations",
            )
            .await;
            assert_eq!(rows, ["3 clean"]);
        }
        Format::Flyway => {
            let rows = texts(
                "SELECT version || ' ' || type || ' ' || script FROM flyway_schema_history \
                 ORDER BY installed_rank",
            )
            .await;
            assert_eq!(rows.len(), 9, "{rows:?}");
            assert_eq!(rows[0], "1 SQL V1__create_users.sql");
            assert_eq!(rows[3], "2 UNDO_SQL U2__undo_index_email.sql");
            assert_eq!(rows[8], "2 SQL V2__index_email.sql");
            let sums = texts(
                "SELECT CAST(checksum AS TEXT) FROM flyway_schema_history \
                 WHERE type = 'SQL' AND version = '1' ORDER BY installed_rank LIMIT 1",
            )
            .await;
            assert_eq!(sums[0], migrations::flyway_crc32(&migs[0].up).to_string());
        }
        Format::Sqitch => {
            // Events within one transaction may share a SQLite timestamp: compare sorted.
            let mut rows = texts("SELECT event || ' ' || change FROM sqitch.events").await;
            rows.sort();
            assert_eq!(rows.len(), 9, "{rows:?}");
            assert_eq!(rows.iter().filter(|r| r.starts_with("deploy")).count(), 6);
            assert!(rows.contains(&"revert index_email".to_string()));
            let mut ids = texts("SELECT change_id FROM sqitch.changes").await;
            ids.sort();
            let mut expected: Vec<String> = migs
                .iter()
                .map(|m| m.sqitch.as_ref().unwrap().change_id.clone())
                .collect();
            expected.sort();
            assert_eq!(ids, expected);
        }
        Format::Sqlx => {
            let rows = texts(
                "SELECT CAST(version AS TEXT) || ' ' || description FROM _sqlx_migrations \
                 ORDER BY version",
            )
            .await;
            assert_eq!(rows[0], "20240101000001 create users");
        }
        Format::Diesel => {
            let rows =
                texts("SELECT version FROM __diesel_schema_migrations ORDER BY version").await;
            assert_eq!(rows, ["20240101000000", "20240102000000", "20240103000000"]);
        }
        Format::Refinery => {}
    }
}

/// Formats without down scripts: apply works, revert is refused before anything runs.
async fn no_down(kind: Kind, format: Format, dir: &str) {
    let migs = migrations::read(&fixture(dir), format).unwrap();
    assert_eq!(migs.len(), 3);
    assert!(migs.iter().all(|m| m.down_is_empty()));
    let v = versions(&migs);
    let t = fresh(kind, dir).await;
    assert_eq!(
        apply(&t.pool, format, &migs, Some(&v[1]), no_progress)
            .await
            .unwrap(),
        v[..2]
    );
    assert_eq!(applied(&t.pool, format, &migs).await.unwrap(), v[..2]);
    let before = schema(&t, format).await;
    let err = revert(&t.pool, format, &migs, Some(&v[0]), no_progress)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no down script for V2"),
        "unexpected error: {err}"
    );
    assert_eq!(schema(&t, format).await, before);
    assert_eq!(applied(&t.pool, format, &migs).await.unwrap(), v[..2]);
    apply(&t.pool, format, &migs, None, no_progress)
        .await
        .unwrap();
    assert_eq!(applied(&t.pool, format, &migs).await.unwrap(), v);
}

/// A failing migration in the middle of a batch leaves schema and history as before.
async fn failing_batch(kind: Kind) {
    let format = Format::Sqlx;
    let migs = migrations::read(&fixture("failing"), format).unwrap();
    assert_eq!(versions(&migs), ["1", "2", "3", "4"]);

    // Nothing applied yet: even the history table's creation is rolled back.
    let t = fresh(kind, "failing").await;
    let empty = schema(&t, format).await;
    let err = apply(&t.pool, format, &migs, None, no_progress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("V3 (broken"), "{err}");
    assert_eq!(schema(&t, format).await, empty);
    assert!(!history_exists(&t, format).await);

    // One applied: a batch of 2 (fine), 3 (fails), 4 leaves only 1.
    apply(&t.pool, format, &migs, Some("1"), no_progress)
        .await
        .unwrap();
    let before = schema(&t, format).await;
    let mut phases = Vec::new();
    let err = apply(&t.pool, format, &migs, None, |m, p| {
        phases.push((m.version.clone(), p))
    })
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("V3 (broken") && text.contains("3_broken.up.sql"),
        "{text}"
    );
    assert!(
        text.contains("no_such_table"),
        "the SQL error is named: {text}"
    );
    assert_eq!(schema(&t, format).await, before);
    assert!(!before.contains("orders"));
    assert_eq!(applied(&t.pool, format, &migs).await.unwrap(), ["1"]);
    assert!(matches!(phases.last(), Some((v, Phase::RolledBack)) if v == "3"));
    assert!(phases.iter().all(|(_, p)| *p != Phase::Committed));
}

macro_rules! roundtrip_tests {
    ($($name:ident: $kind:expr, $format:expr, $dir:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            roundtrip($kind, $format, $dir).await;
        }
    )*};
}

roundtrip_tests! {
    sqlx_sqlite: Kind::Sqlite, Format::Sqlx, "sqlx";
    sqlx_postgres: Kind::Postgres, Format::Sqlx, "sqlx";
    diesel_sqlite: Kind::Sqlite, Format::Diesel, "diesel";
    diesel_postgres: Kind::Postgres, Format::Diesel, "diesel";
    golang_migrate_sqlite: Kind::Sqlite, Format::GolangMigrate, "golang-migrate";
    golang_migrate_postgres: Kind::Postgres, Format::GolangMigrate, "golang-migrate";
    flyway_sqlite: Kind::Sqlite, Format::Flyway, "flyway";
    flyway_postgres: Kind::Postgres, Format::Flyway, "flyway";
    sqitch_sqlite: Kind::Sqlite, Format::Sqitch, "sqitch";
    sqitch_postgres: Kind::Postgres, Format::Sqitch, "sqitch";
    sqlx_postgres18: Kind::Postgres18, Format::Sqlx, "sqlx";
    diesel_postgres18: Kind::Postgres18, Format::Diesel, "diesel";
    golang_migrate_postgres18: Kind::Postgres18, Format::GolangMigrate, "golang-migrate";
    flyway_postgres18: Kind::Postgres18, Format::Flyway, "flyway";
    sqitch_postgres18: Kind::Postgres18, Format::Sqitch, "sqitch";
}

#[tokio::test]
async fn refinery_no_down_sqlite() {
    no_down(Kind::Sqlite, Format::Refinery, "refinery").await;
}
#[tokio::test]
async fn refinery_no_down_postgres() {
    no_down(Kind::Postgres, Format::Refinery, "refinery").await;
}
#[tokio::test]
async fn sqlx_simple_no_down_sqlite() {
    no_down(Kind::Sqlite, Format::Sqlx, "sqlx-simple").await;
}
#[tokio::test]
async fn sqlx_simple_no_down_postgres() {
    no_down(Kind::Postgres, Format::Sqlx, "sqlx-simple").await;
}
#[tokio::test]
async fn failing_batch_sqlite() {
    failing_batch(Kind::Sqlite).await;
}
#[tokio::test]
async fn failing_batch_postgres() {
    failing_batch(Kind::Postgres).await;
}

#[test]
fn detect_formats() {
    let detect = |d: &str| Format::detect(&fixture(d)).map_err(|e| e.to_string());
    assert_eq!(detect("diesel").unwrap(), Format::Diesel);
    assert_eq!(detect("flyway").unwrap(), Format::Flyway);
    assert_eq!(detect("sqitch").unwrap(), Format::Sqitch);
    assert_eq!(detect("sqlx-simple").unwrap(), Format::Sqlx);
    let ambiguous = detect("sqlx").unwrap_err();
    assert!(ambiguous.contains("sqlx and golang-migrate"), "{ambiguous}");
    let ambiguous = detect("refinery").unwrap_err();
    assert!(ambiguous.contains("Flyway and refinery"), "{ambiguous}");
}

#[test]
fn read_formats() {
    let flyway = migrations::read(&fixture("flyway"), Format::Flyway).unwrap();
    assert_eq!(versions(&flyway), ["1", "1.1", "2"]);
    assert_eq!(flyway[1].name, "add email");
    let sqitch = migrations::read(&fixture("sqitch"), Format::Sqitch).unwrap();
    let names: Vec<_> = sqitch.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["create_users", "add_email", "index_email"]);
    let s = sqitch[1].sqitch.as_ref().unwrap();
    assert_eq!(s.requires, ["create_users"]);
    assert_eq!(s.tags.len(), 1);
    assert_eq!(s.tags[0].name, "v1.0");
    assert_eq!(s.tags[0].note, "First release");
    // What `sqitch deploy` (1.3.1) writes for this plan.
    assert_eq!(
        s.change_id, "73df09863a796376c1924bc5e2b868c677f7432e",
        "sqitch's change id"
    );
    assert_eq!(
        s.tags[0].tag_id, "4dd2ba75cc4f4ef28d780046a9494eaaf07f1eee",
        "sqitch's tag id"
    );
    assert_eq!(s.planner_name, "Alice Example");
    assert_eq!(s.note, "Email column");
    assert!(sqitch[0].sqitch.as_ref().unwrap().verify.is_some());
    let golang = migrations::read(&fixture("golang-migrate"), Format::GolangMigrate).unwrap();
    assert_eq!(versions(&golang), ["1", "2", "3"]);
    assert_eq!(golang[0].name, "create_users");
}

#[test]
fn malformed_directories_name_the_file() {
    let case = |files: &[(&str, &str)], format: Format| {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        migrations::read(dir.path(), format)
            .unwrap_err()
            .to_string()
    };
    let e = case(&[("abc_init.sql", "SELECT 1;")], Format::Sqlx);
    assert!(
        e.contains("abc_init.sql") && e.contains("not a whole number"),
        "{e}"
    );
    // A down script without its up script: the tools read each file on its own and never
    // run it, so it is not an error, but the plan says so.
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [("1_a.up.sql", "SELECT 1;"), ("2_b.down.sql", "SELECT 1;")] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let migs = migrations::read(dir.path(), Format::GolangMigrate).unwrap();
    assert_eq!(versions(&migs), ["1"]);
    assert!(
        migs[0].warnings[0].contains("2_b.down.sql")
            && migs[0].warnings[0].contains("never runs it"),
        "{:?}",
        migs[0].warnings
    );
    let e = case(&[("1_a.sql", "x"), ("01_b.sql", "y")], Format::Sqlx);
    assert!(e.contains("1"), "{e}");
    let e = case(&[("V1__a.sql", "x"), ("V01__a.sql", "y")], Format::Refinery);
    assert!(e.contains("duplicate version 1"), "{e}");
    // An undo without its versioned migration is never run by Flyway: not an error.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("V1__a.sql"), "x").unwrap();
    std::fs::write(dir.path().join("U3__undo.sql"), "x").unwrap();
    let migs = migrations::read(dir.path(), Format::Flyway).unwrap();
    assert!(migs[0].warnings[0].contains("U3__undo.sql"), "{migs:?}");
    let e = case(&[("R__views.sql", "x")], Format::Flyway);
    assert!(e.contains("R__views.sql"), "{e}");
    let e = case(&[("2024_x/down.sql", "x")], Format::Diesel);
    assert!(
        e.contains("down.sql") && e.contains("without an up.sql"),
        "{e}"
    );
    // A revert script of no planned change: sqitch never reads it; the plan says so.
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        (
            "sqitch.plan",
            "%project=p\na 2024-01-01T00:00:00Z A <a@b>\n",
        ),
        ("deploy/a.sql", "x"),
        ("revert/b.sql", "y"),
    ] {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let migs = migrations::read(dir.path(), Format::Sqitch).unwrap();
    assert!(
        migs[0].warnings[0].contains("b.sql") && migs[0].warnings[0].contains("does not plan"),
        "{:?}",
        migs[0].warnings
    );
}

#[test]
fn empty_down_counts_as_no_down() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("1_a.up.sql"), "CREATE TABLE a (x INT);").unwrap();
    std::fs::write(
        dir.path().join("1_a.down.sql"),
        "-- nothing\n\n/* to do */\n",
    )
    .unwrap();
    let migs = migrations::read(dir.path(), Format::GolangMigrate).unwrap();
    assert!(migs[0].down.is_some());
    assert!(migs[0].down_is_empty());
}

/// A copy of fixture `name` that a test may edit.
fn fixture_copy(name: &str) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&fixture(name), dir.path());
    dir
}

/// Apply everything; then a CRLF checkout of a file is not drift, an edit is, a migration
/// gone from the directory is reported missing, and apply/revert keep working meanwhile.
async fn drift_story(kind: Kind, format: Format, dir: &str) {
    let copy = fixture_copy(dir);
    let read = || migrations::read(copy.path(), format).unwrap();
    let migs = read();
    let t = fresh(kind, dir).await;
    let report = drift(&t.pool, format, &migs).await.unwrap();
    assert_eq!(
        report,
        Default::default(),
        "nothing applied, nothing to check"
    );
    apply(&t.pool, format, &migs, None, no_progress)
        .await
        .unwrap();

    let keeps_checksums = !matches!(format, Format::Diesel | Format::GolangMigrate);
    let report = drift(&t.pool, format, &migs).await.unwrap();
    assert!(report.is_clean(), "{dir} {kind:?}: {report:?}");
    if keeps_checksums {
        assert_eq!((report.unchanged, report.unchecked.len()), (3, 0));
    } else {
        assert_eq!((report.unchanged, report.unchecked.len()), (0, 3));
        assert!(report.unchecked[0].reason.contains("keeps no checksum"));
    }

    // Line endings only: not drift.
    let file = migs[1].file.clone();
    let lf = std::fs::read_to_string(&file).unwrap();
    assert!(!lf.contains('\r'), "the fixture is LF");
    std::fs::write(&file, lf.replace('\n', "\r\n")).unwrap();
    let report = drift(&t.pool, format, &read()).await.unwrap();
    assert!(
        report.is_clean(),
        "{dir} {kind:?}: CRLF is not drift: {report:?}"
    );
    // ... though tools that hash bytes would see a change: said apart.
    let bytes_hashed = matches!(format, Format::Sqlx | Format::Refinery | Format::Sqitch);
    let expected = if bytes_hashed {
        vec![migs[1].version.clone()]
    } else {
        Vec::new()
    };
    assert_eq!(report.line_endings_only, expected, "{dir} {kind:?}");

    // A real edit: drift, naming the file and both checksums.
    std::fs::write(
        &file,
        lf.replace(';', ";\n-- edited after it was applied\n"),
    )
    .unwrap();
    let edited = read();
    let report = drift(&t.pool, format, &edited).await.unwrap();
    if keeps_checksums {
        assert_eq!(report.drift.len(), 1, "{dir} {kind:?}: {report:?}");
        let d = &report.drift[0];
        assert_eq!(d.version, migs[1].version);
        assert_eq!(d.name, migs[1].name);
        assert_eq!(d.file.as_deref(), Some(file.as_path()));
        let DriftKind::Changed { stored, found } = &d.kind else {
            panic!("{dir} {kind:?}: expected a changed file: {d:?}");
        };
        assert_ne!(stored, found);
        let expected = migrations::tool_checksum(format, &migs[1]).to_text();
        assert!(
            stored.eq_ignore_ascii_case(&expected),
            "{stored} vs {expected}"
        );
        assert_eq!(report.unchanged, 2);
    } else {
        assert!(
            report.is_clean(),
            "{dir} {kind:?}: no checksum, no drift: {report:?}"
        );
    }

    // Drift is reported, not enforced: revert (where there are downs) and apply still run.
    let last = edited[2].version.clone();
    if edited[2].down_is_empty() {
        std::fs::remove_file(&edited[2].file).unwrap();
        let report = drift(&t.pool, format, &read()).await.unwrap();
        assert_eq!(report.drift.len(), 2, "{dir} {kind:?}: {report:?}");
        assert_eq!(report.drift[1].kind, DriftKind::Missing);
        return;
    }
    let keep = edited[1].version.clone();
    assert_eq!(
        revert(&t.pool, format, &edited, Some(&keep), no_progress)
            .await
            .unwrap(),
        std::slice::from_ref(&last)
    );
    assert_eq!(
        apply(&t.pool, format, &edited, None, no_progress)
            .await
            .unwrap(),
        [last]
    );

    // The newest migration gone from the directory: reported missing, not an error.
    let report = drift(&t.pool, format, &edited[..2]).await.unwrap();
    let missing: Vec<_> = report
        .drift
        .iter()
        .filter(|d| d.kind == DriftKind::Missing)
        .collect();
    assert_eq!(missing.len(), 1, "{dir} {kind:?}: {report:?}");
    let expected = if format == Format::Sqitch {
        &edited[2].name
    } else {
        &edited[2].version
    };
    assert_eq!(&missing[0].version, expected);
    assert_eq!(missing[0].file, None);
}

macro_rules! drift_tests {
    ($($name:ident: $kind:expr, $format:expr, $dir:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            drift_story($kind, $format, $dir).await;
        }
    )*};
}

drift_tests! {
    drift_sqlx_sqlite: Kind::Sqlite, Format::Sqlx, "sqlx";
    drift_sqlx_postgres: Kind::Postgres, Format::Sqlx, "sqlx";
    drift_flyway_sqlite: Kind::Sqlite, Format::Flyway, "flyway";
    drift_flyway_postgres: Kind::Postgres, Format::Flyway, "flyway";
    drift_sqitch_sqlite: Kind::Sqlite, Format::Sqitch, "sqitch";
    drift_sqitch_postgres: Kind::Postgres, Format::Sqitch, "sqitch";
    drift_diesel_sqlite: Kind::Sqlite, Format::Diesel, "diesel";
    drift_diesel_postgres: Kind::Postgres, Format::Diesel, "diesel";
    drift_golang_migrate_postgres: Kind::Postgres, Format::GolangMigrate, "golang-migrate";
    drift_refinery_sqlite: Kind::Sqlite, Format::Refinery, "refinery";
    drift_refinery_postgres: Kind::Postgres, Format::Refinery, "refinery";
}

/// Runs the real `sqitch` (Debian's package, which scripts/test installs) in `project`
/// against `target`; returns whether it succeeded and what it printed.
fn sqitch(project: &Path, args: &[&str], target: &str) -> (bool, String) {
    let out = std::process::Command::new("sqitch")
        .args(args)
        .arg(target)
        .current_dir(project)
        .env("SQITCH_FULLNAME", "Sqitch User")
        .env("SQITCH_EMAIL", "sqitch@example.invalid")
        .env("SQITCH_USER_CONFIG", project.join("no-user.conf"))
        .env("SQITCH_PAGER", "cat")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run sqitch ({e}); install it: apt-get install -y sqitch \
                 libdbd-pg-perl libdbd-sqlite3-perl (scripts/test does)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// sqitch and rewind take turns on one database; each must see what the other did.
async fn sqitch_cli_story(kind: Kind) {
    let copy = fixture_copy("sqitch");
    let project = copy.path();
    let migs = migrations::read(project, Format::Sqitch).unwrap();
    let v = versions(&migs);
    let t = fresh(kind, "sqitch_cli").await;
    let target = match kind {
        Kind::Sqlite => format!("db:sqlite:{}", t.url.trim_start_matches("sqlite://")),
        Kind::Postgres | Kind::Postgres18 => {
            format!("db:{}", t.url.replacen("postgres://", "pg://", 1))
        }
    };
    let run = |args: &[&str]| {
        let (ok, text) = sqitch(project, args, &target);
        assert!(ok, "sqitch {args:?} failed:\n{text}");
        text
    };
    let format = Format::Sqitch;
    let applied_now = || async { applied(&t.pool, format, &migs).await.unwrap() };

    // rewind deploys everything: sqitch sees it, tags included, and has nothing to do.
    apply(&t.pool, format, &migs, None, no_progress)
        .await
        .unwrap();
    let status = run(&["status", "--show-tags"]);
    assert!(status.contains("# Name:     index_email"), "{status}");
    assert!(status.contains("@v1.0 - "), "{status}");
    assert!(
        status.contains("Nothing to deploy (up-to-date)"),
        "{status}"
    );
    let log = run(&["log"]);
    for m in &migs {
        let id = &m.sqitch.as_ref().unwrap().change_id;
        assert!(log.contains(&format!("Deploy {id}")), "{log}");
    }
    assert!(
        log.contains("Committer: rewind <rewind@localhost>"),
        "{log}"
    );
    assert!(run(&["deploy"]).contains("Nothing to deploy"));
    assert!(run(&["verify"]).contains("Verify successful"));

    // sqitch reverts to the tag rewind recorded; rewind sees it.
    let out = run(&["revert", "-y", "--to", "@v1.0"]);
    assert!(out.contains("- index_email"), "{out}");
    assert_eq!(applied_now().await, v[..2]);

    // rewind reverts one more; sqitch's current change follows.
    assert_eq!(
        revert(&t.pool, format, &migs, Some("create_users"), no_progress)
            .await
            .unwrap(),
        [v[1].clone()]
    );
    let status = run(&["status"]);
    assert!(status.contains("# Name:     create_users"), "{status}");

    // sqitch deploys the rest on top of rewind's; rewind agrees, checksums included.
    let out = run(&["deploy"]);
    assert!(
        out.contains("+ add_email @v1.0") && out.contains("+ index_email"),
        "{out}"
    );
    assert_eq!(applied_now().await, v);
    assert!(
        apply(&t.pool, format, &migs, None, no_progress)
            .await
            .unwrap()
            .is_empty()
    );
    let report = drift(&t.pool, format, &migs).await.unwrap();
    assert!(report.is_clean() && report.unchanged == 3, "{report:?}");

    // rewind reverts what sqitch deployed, to a tag; then sqitch reverts the rest.
    assert_eq!(
        revert(&t.pool, format, &migs, Some("@v1.0"), no_progress)
            .await
            .unwrap(),
        [v[2].clone()]
    );
    let status = run(&["status"]);
    assert!(
        status.contains("# Name:     add_email") && status.contains("# Tag:      @v1.0"),
        "{status}"
    );
    let out = run(&["revert", "-y"]);
    assert!(out.contains("- create_users"), "{out}");
    assert!(applied_now().await.is_empty());
    let (_, status) = sqitch(project, &["status"], &target);
    assert!(status.contains("No changes deployed"), "{status}");

    // rewind applies up to the tag and reverts everything; sqitch follows each time.
    apply(&t.pool, format, &migs, Some("@v1.0"), no_progress)
        .await
        .unwrap();
    let out = run(&["verify"]);
    assert!(
        out.contains("Undeployed change") && out.contains("index_email"),
        "{out}"
    );
    revert(&t.pool, format, &migs, None, no_progress)
        .await
        .unwrap();
    let (_, status) = sqitch(project, &["status"], &target);
    assert!(status.contains("No changes deployed"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqitch_cli_agrees_sqlite() {
    sqitch_cli_story(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqitch_cli_agrees_postgres() {
    sqitch_cli_story(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqitch_cli_agrees_postgres18() {
    sqitch_cli_story(Kind::Postgres18).await;
}

/// A change of another sqitch project that requires a fixture change: it cannot be applied
/// before that change is, and the fixture change cannot be reverted while it stays.
async fn sqitch_cross_project(kind: Kind) {
    let other = tempfile::tempdir().unwrap();
    std::fs::write(
        other.path().join("sqitch.plan"),
        "%project=reports\n\
         orders [rewind_fixture:create_users] 2024-02-01T00:00:00Z Bo <bo@example.invalid>\n",
    )
    .unwrap();
    for (dir, sql) in [
        (
            "deploy",
            "CREATE TABLE orders (user_id INTEGER REFERENCES users (id));",
        ),
        ("revert", "DROP TABLE orders;"),
    ] {
        std::fs::create_dir(other.path().join(dir)).unwrap();
        std::fs::write(other.path().join(dir).join("orders.sql"), sql).unwrap();
    }
    let reports = migrations::read(other.path(), Format::Sqitch).unwrap();
    let fixture_migs = migrations::read(&fixture("sqitch"), Format::Sqitch).unwrap();
    let t = fresh(kind, "sqitch_deps").await;
    let format = Format::Sqitch;

    let err = apply(&t.pool, format, &reports, None, no_progress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("requires rewind_fixture:create_users, which is not deployed"),
        "{err}"
    );
    apply(
        &t.pool,
        format,
        &fixture_migs,
        Some("create_users"),
        no_progress,
    )
    .await
    .unwrap();
    apply(&t.pool, format, &reports, None, no_progress)
        .await
        .unwrap();
    let err = revert(&t.pool, format, &fixture_migs, None, no_progress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("create_users is required by deployed changes (reports:orders)"),
        "{err}"
    );
    assert_eq!(
        applied(&t.pool, format, &fixture_migs).await.unwrap(),
        ["0001"]
    );
    revert(&t.pool, format, &reports, None, no_progress)
        .await
        .unwrap();
    revert(&t.pool, format, &fixture_migs, None, no_progress)
        .await
        .unwrap();
    assert!(
        applied(&t.pool, format, &fixture_migs)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn sqitch_cross_project_sqlite() {
    sqitch_cross_project(Kind::Sqlite).await;
}

#[tokio::test]
async fn sqitch_cross_project_postgres() {
    sqitch_cross_project(Kind::Postgres).await;
}

/// Migrations whose bodies hold `;` and `END;` (a PL/pgSQL trigger function and a
/// SQL-standard body on PostgreSQL, a trigger on SQLite) apply, work and revert; one that
/// builds an index CONCURRENTLY is refused before anything runs, naming its line.
async fn bodies_with_semicolons(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, sql: &str| std::fs::write(dir.path().join(name), sql).unwrap();
    write(
        "1_items.up.sql",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, touched INTEGER NOT NULL DEFAULT 0);\n",
    );
    write("1_items.down.sql", "DROP TABLE items;\n");
    match kind {
        Kind::Postgres | Kind::Postgres18 => {
            write(
                "2_touch.up.sql",
                "-- Count updates; a comment; with semicolons.\n\
                 CREATE FUNCTION touch() RETURNS trigger AS $$\n\
                 BEGIN\n\
                 \x20   NEW.touched := OLD.touched + 1;\n\
                 \x20   RETURN NEW;\n\
                 END;\n\
                 $$ LANGUAGE plpgsql;\n\
                 CREATE TRIGGER items_touch BEFORE UPDATE ON items\n\
                 \x20   FOR EACH ROW EXECUTE FUNCTION touch();\n\
                 CREATE FUNCTION twice(n int) RETURNS int LANGUAGE sql\n\
                 BEGIN ATOMIC\n\
                 \x20   SELECT n * 2;\n\
                 END;\n",
            );
            write(
                "2_touch.down.sql",
                "DROP FUNCTION twice(int);\nDROP TRIGGER items_touch ON items;\nDROP FUNCTION touch();\n",
            );
        }
        Kind::Sqlite => {
            write(
                "2_touch.up.sql",
                "-- Count updates; a comment; with semicolons.\n\
                 CREATE TRIGGER items_touch AFTER UPDATE OF name ON items\n\
                 FOR EACH ROW WHEN old.name IS NOT new.name\n\
                 BEGIN\n\
                 \x20   UPDATE items SET touched = touched + 1 WHERE id = new.id;\n\
                 END;\n",
            );
            write("2_touch.down.sql", "DROP TRIGGER items_touch;\n");
        }
    }
    let migs = migrations::read(dir.path(), Format::Sqlx).unwrap();
    let t = fresh(kind, "bodies").await;
    let done = apply(&t.pool, Format::Sqlx, &migs, None, no_progress)
        .await
        .unwrap();
    assert_eq!(done, ["1", "2"]);
    sqlx::raw_sql(
        "INSERT INTO items (id, name) VALUES (1, 'a'); UPDATE items SET name = 'b' WHERE id = 1;",
    )
    .execute(&t.pool)
    .await
    .unwrap();
    let touched: i64 = sqlx::query("SELECT CAST(touched AS BIGINT) FROM items")
        .fetch_one(&t.pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(touched, 1, "the trigger ran");
    let reverted = revert(&t.pool, Format::Sqlx, &migs, Some("1"), no_progress)
        .await
        .unwrap();
    assert_eq!(reverted, ["2"]);

    if kind == Kind::Postgres {
        write(
            "3_index.up.sql",
            "CREATE INDEX items_name ON items (name);\n\nCREATE INDEX CONCURRENTLY items_touched ON items (touched);\n",
        );
        write("3_index.down.sql", "DROP INDEX items_name;\n");
        let migs = migrations::read(dir.path(), Format::Sqlx).unwrap();
        let err = apply(&t.pool, Format::Sqlx, &migs, None, no_progress)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("3_index.up.sql:3") && err.contains("CREATE INDEX CONCURRENTLY"),
            "{err}"
        );
        assert_eq!(
            applied(&t.pool, Format::Sqlx, &migs).await.unwrap(),
            ["1"],
            "nothing ran"
        );
    }
}

#[tokio::test]
async fn bodies_with_semicolons_sqlite() {
    bodies_with_semicolons(Kind::Sqlite).await;
}

#[tokio::test]
async fn bodies_with_semicolons_postgres() {
    bodies_with_semicolons(Kind::Postgres).await;
}
