//! Small cases of our own, each shaped after an input that broke rewind on real projects or
//! in the tools' bug reports: SQL with bodies and quotes, migrations their tool runs outside
//! a transaction, data lost silently, versions in each tool's own order, sets with holes,
//! sqitch reworks, and a migration left half-done.

use std::path::Path;

use rewind_db::migrations::{self, Format, Migration};
use rewind_db::{AloneOutcome, Error, Phase, RunMode, apply_alone, apply_batch, run_mode, sets};
use sqlx::Row;

use super::{Kind, Target, fresh};

/// Writes `files` (path → text) under a new directory.
fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir
}

fn read(dir: &Path, format: Format) -> Vec<Migration> {
    migrations::read(dir, format).unwrap()
}

fn keys(migs: &[Migration]) -> Vec<String> {
    migs.iter().map(|m| m.key().to_string()).collect()
}

fn log_phases(lines: &mut Vec<String>) -> impl FnMut(&Migration, Phase) + '_ {
    move |m, p| lines.push(format!("{} {p:?}", m.version))
}

async fn count(t: &Target, sql: &str) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&t.pool)
        .await
        .unwrap()
        .try_get::<i64, _>(0)
        .unwrap()
}

async fn exec(t: &Target, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&t.pool)
        .await
        .unwrap();
}

fn dialect(kind: Kind) -> rewind_db::sql::Dialect {
    match kind {
        Kind::Sqlite => rewind_db::sql::Dialect::Sqlite,
        _ => rewind_db::sql::Dialect::Postgres,
    }
}

// ---- SQL read with the engine's lexical rules ------------------------------------------------

/// diesel's generated first migration: PL/pgSQL bodies with `END;` inside dollar quotes.
const DIESEL_SETUP_UP: &str = r#"-- This file was automatically created by Diesel to setup helper functions
-- and other internal bookkeeping. This file is safe to edit, any future
-- changes will be added to existing projects as new migrations.

-- Sets up a trigger for the given table to automatically set a column called
-- `updated_at` whenever the row is modified (unless `updated_at` was included
-- in the modified columns)
CREATE OR REPLACE FUNCTION touch_updated_at(_tbl regclass) RETURNS VOID AS $$
BEGIN
    EXECUTE format('CREATE TRIGGER set_updated_at BEFORE UPDATE ON %s
                    FOR EACH ROW EXECUTE PROCEDURE set_updated_at_now()', _tbl);
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION set_updated_at_now() RETURNS trigger AS $body$
BEGIN
    IF (NEW IS DISTINCT FROM OLD AND NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at) THEN
        NEW.updated_at := current_timestamp;
    END IF;
    RETURN NEW;
END;
$body$ LANGUAGE plpgsql;
"#;

const DIESEL_SETUP_DOWN: &str = "DROP FUNCTION IF EXISTS touch_updated_at(_tbl regclass);\n\
DROP FUNCTION IF EXISTS set_updated_at_now();\n";

#[tokio::test]
async fn plpgsql_bodies_quotes_and_comments_run_in_the_batch() {
    let dir = dir_with(&[
        (
            "00000000000000_diesel_initial_setup/up.sql",
            DIESEL_SETUP_UP,
        ),
        (
            "00000000000000_diesel_initial_setup/down.sql",
            DIESEL_SETUP_DOWN,
        ),
        (
            "2026-01-01-000000_posts/up.sql",
            "CREATE TABLE posts (id SERIAL PRIMARY KEY, body TEXT NOT NULL DEFAULT E'it\\'s; fine', \
             \"end\" TEXT, updated_at TIMESTAMP NOT NULL DEFAULT now());\n\
             -- a comment; with a semicolon and BEGIN;\n\
             /* a /* nested */ comment; COMMIT; */\n\
             SELECT touch_updated_at('posts');\n\
             CREATE FUNCTION answer() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 42; END;\n\
             INSERT INTO posts (body, \"end\") VALUES ('a;b', 'BEGIN; COMMIT;');\n",
        ),
        (
            "2026-01-01-000000_posts/down.sql",
            "DROP FUNCTION answer();\nDROP TABLE posts;\n",
        ),
    ]);
    let t = fresh(Kind::Postgres, "bodies").await;
    let migs = read(dir.path(), Format::Diesel);
    for m in &migs {
        assert_eq!(
            run_mode(Format::Diesel, m, false, dialect(t.kind)).unwrap(),
            RunMode::Batch,
            "{}",
            m.version
        );
    }
    let applied = apply_batch(&t.pool, Format::Diesel, &migs, &keys(&migs), |_, _| {})
        .await
        .unwrap();
    assert_eq!(applied.len(), 2);
    assert_eq!(count(&t, "SELECT CAST(answer() AS BIGINT)").await, 42);
    assert_eq!(
        count(&t, "SELECT count(*) FROM posts WHERE body = 'a;b'").await,
        1
    );
    // The trigger the setup function created fires.
    exec(&t, "UPDATE posts SET body = 'x'").await;
    let reverted = rewind_db::revert(&t.pool, Format::Diesel, &migs, None, |_, _| {})
        .await
        .unwrap();
    assert_eq!(reverted.len(), 2);
}

#[tokio::test]
async fn sqlite_trigger_bodies_run_in_the_batch() {
    let dir = dir_with(&[
        (
            "1_items.up.sql",
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, touched INTEGER DEFAULT 0, [end] TEXT);\n\
             CREATE TRIGGER items_touch AFTER UPDATE OF name ON items\n\
             BEGIN\n  UPDATE items SET touched = touched + 1 WHERE id = NEW.id;\n  \
             SELECT CASE WHEN NEW.name = 'x' THEN RAISE(ABORT, 'no x; ever') END;\nEND;\n\
             INSERT INTO items (name, [end]) VALUES ('a', 'END;');\n",
        ),
        (
            "1_items.down.sql",
            "DROP TRIGGER items_touch;\nDROP TABLE items;\n",
        ),
    ]);
    let t = fresh(Kind::Sqlite, "trigger").await;
    let migs = read(dir.path(), Format::Sqlx);
    assert_eq!(
        run_mode(Format::Sqlx, &migs[0], false, dialect(t.kind)).unwrap(),
        RunMode::Batch
    );
    apply_batch(&t.pool, Format::Sqlx, &migs, &keys(&migs), |_, _| {})
        .await
        .unwrap();
    exec(&t, "UPDATE items SET name = 'b'").await;
    assert_eq!(count(&t, "SELECT touched FROM items").await, 1);
}

#[tokio::test]
async fn an_error_names_the_line_of_the_users_file() {
    let dir = dir_with(&[(
        "1_broken.up.sql",
        "CREATE TABLE a (id INT);\n\n-- the next one is wrong\nCREATE TABLE b (\n  id INT,\n  x NOSUCHTYPE\n);\n",
    )]);
    let t = fresh(Kind::Postgres, "errline").await;
    let migs = read(dir.path(), Format::Sqlx);
    let e = apply_batch(&t.pool, Format::Sqlx, &migs, &keys(&migs), |_, _| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("1_broken.up.sql:6"), "{e}");
    assert!(e.contains("NOSUCHTYPE") || e.contains("nosuchtype"), "{e}");
    // Nothing of the batch stays.
    assert_eq!(
        count(&t, "SELECT count(*) FROM pg_tables WHERE tablename = 'a'").await,
        0
    );
}

// ---- migrations their tool runs outside a transaction --------------------------------------

#[tokio::test]
async fn create_index_concurrently_runs_alone_as_each_tool_says() {
    let t = fresh(Kind::Postgres, "cic").await;
    exec(
        &t,
        "CREATE TABLE items (id INT PRIMARY KEY, c INT); INSERT INTO items SELECT g, g FROM generate_series(1, 500) g",
    )
    .await;
    // diesel: metadata.toml; sqlx: -- no-transaction; Flyway: .sql.conf or only
    // non-transactional statements.
    let cases: Vec<(Format, Vec<(&str, &str)>)> = vec![
        (
            Format::Diesel,
            vec![
                (
                    "2026-01-01-000000_idx/up.sql",
                    "CREATE INDEX CONCURRENTLY items_c_diesel ON items (c);\n",
                ),
                (
                    "2026-01-01-000000_idx/down.sql",
                    "DROP INDEX CONCURRENTLY items_c_diesel;\n",
                ),
                (
                    "2026-01-01-000000_idx/metadata.toml",
                    "run_in_transaction = false\n",
                ),
            ],
        ),
        (
            Format::Sqlx,
            vec![
                (
                    "1_idx.up.sql",
                    "-- no-transaction\nCREATE INDEX CONCURRENTLY items_c_sqlx ON items (c);\n",
                ),
                (
                    "1_idx.down.sql",
                    "-- no-transaction\nDROP INDEX CONCURRENTLY items_c_sqlx;\n",
                ),
            ],
        ),
        (
            Format::Flyway,
            vec![(
                "V1__idx.sql",
                "CREATE INDEX CONCURRENTLY items_c_flyway ON items (c);\n",
            )],
        ),
    ];
    for (format, files) in cases {
        let dir = dir_with(&files);
        let migs = read(dir.path(), format);
        match run_mode(format, &migs[0], false, dialect(t.kind)).unwrap() {
            RunMode::Alone(why) => assert!(!why.is_empty()),
            other => panic!("{format}: {other:?}"),
        }
        let out = apply_alone(&t.pool, format, &migs, migs[0].key(), |_, _| {})
            .await
            .unwrap();
        assert_eq!(out, AloneOutcome::Done, "{format}");
        assert_eq!(
            rewind_db::applied(&t.pool, format, &migs).await.unwrap(),
            [migs[0].version.clone()],
            "{format}"
        );
        // Running it again is a no-op.
        let again = apply_alone(&t.pool, format, &migs, migs[0].key(), |_, _| {})
            .await
            .unwrap();
        assert_eq!(again, AloneOutcome::AlreadyDone, "{format}");
    }
    assert_eq!(
        count(
            &t,
            "SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'items_c_%'"
        )
        .await,
        3
    );
    assert!(
        rewind_db::runner::invalid_indexes(&t.pool)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_tool_that_runs_it_in_a_transaction_is_refused_with_the_line() {
    let dir = dir_with(&[(
        "1_idx.up.sql",
        "CREATE TABLE t (c INT);\n\nCREATE INDEX CONCURRENTLY t_c ON t (c);\n",
    )]);
    let migs = read(dir.path(), Format::Sqlx);
    let e = run_mode(
        Format::Sqlx,
        &migs[0],
        false,
        rewind_db::sql::Dialect::Postgres,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("1_idx.up.sql:3"), "{e}");
    assert!(e.contains("-- no-transaction"), "{e}");
    // Flyway refuses a mix of both kinds in one script.
    let dir = dir_with(&[(
        "V1__mix.sql",
        "CREATE TABLE t (c INT);\nCREATE INDEX CONCURRENTLY t_c ON t (c);\n",
    )]);
    let migs = read(dir.path(), Format::Flyway);
    let e = run_mode(
        Format::Flyway,
        &migs[0],
        false,
        rewind_db::sql::Dialect::Postgres,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("both transactional and non-transactional"),
        "{e}"
    );
}

#[tokio::test]
async fn scripts_with_their_own_transaction_run_alone_and_atomically() {
    // sqitch's templates and golang-migrate files wrap themselves in BEGIN; … COMMIT;.
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let t = fresh(kind, "owntx").await;
        let dir = dir_with(&[
            (
                "000001_a.up.sql",
                "BEGIN;\nCREATE TABLE a (id INT);\nINSERT INTO a VALUES (1);\nCOMMIT;\n",
            ),
            ("000001_a.down.sql", "BEGIN;\nDROP TABLE a;\nCOMMIT;\n"),
            (
                "000002_b.up.sql",
                "BEGIN;\nCREATE TABLE b (id INT);\nINSERT INTO b VALUES ('not a number');\nCOMMIT;\n",
            ),
            ("000002_b.down.sql", "BEGIN;\nDROP TABLE b;\nCOMMIT;\n"),
        ]);
        let migs = read(dir.path(), Format::GolangMigrate);
        assert!(
            run_mode(Format::GolangMigrate, &migs[0], false, dialect(kind))
                .unwrap()
                .is_alone()
        );
        apply_alone(&t.pool, Format::GolangMigrate, &migs, "1", |_, _| {})
            .await
            .unwrap();
        let e = apply_alone(&t.pool, Format::GolangMigrate, &migs, "2", |_, _| {}).await;
        if kind == Kind::Postgres {
            // The block fails as one: no table b, history still at 1, nothing half-done.
            let e = e.unwrap_err().to_string();
            assert!(e.contains("000002_b.up.sql:3"), "{e}");
            assert_eq!(
                count(&t, "SELECT count(*) FROM pg_tables WHERE tablename = 'b'").await,
                0
            );
            assert_eq!(
                rewind_db::applied(&t.pool, Format::GolangMigrate, &migs)
                    .await
                    .unwrap(),
                ["1"]
            );
            assert!(
                rewind_db::runner::partial(&t.pool)
                    .await
                    .unwrap()
                    .is_empty()
            );
        } else {
            // SQLite stores the text in an INT column: it runs.
            e.unwrap();
        }
    }
}

// ---- nothing deletes data silently ----------------------------------------------------------

const PARENT_CHILD: &str = "CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT);\n\
CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent (id) ON DELETE CASCADE);\n\
INSERT INTO parent VALUES (1, 'a'), (2, 'b');\n\
INSERT INTO child VALUES (1, 1), (2, 1), (3, 2);\n";

/// SQLite's documented table rebuild (create, copy, drop, rename).
const REBUILD: &str = "CREATE TABLE parent_new (id INTEGER PRIMARY KEY, name TEXT NOT NULL DEFAULT '');\n\
INSERT INTO parent_new (id, name) SELECT id, name FROM parent;\n\
DROP TABLE parent;\n\
ALTER TABLE parent_new RENAME TO parent;\n";

#[tokio::test]
async fn a_sqlite_table_rebuild_outside_a_transaction_keeps_every_child_row() {
    let t = fresh(Kind::Sqlite, "rebuild").await;
    let up = format!("PRAGMA foreign_keys = OFF;\n{REBUILD}PRAGMA foreign_keys = ON;\n");
    let dir = dir_with(&[
        ("2026-01-01-000000_init/up.sql", PARENT_CHILD),
        (
            "2026-01-01-000000_init/down.sql",
            "DROP TABLE child; DROP TABLE parent;",
        ),
        ("2026-02-01-000000_rebuild/up.sql", &up),
        ("2026-02-01-000000_rebuild/down.sql", "SELECT 1;"),
        (
            "2026-02-01-000000_rebuild/metadata.toml",
            "run_in_transaction = false\n",
        ),
    ]);
    let migs = read(dir.path(), Format::Diesel);
    let mut log = Vec::new();
    rewind_db::apply(&t.pool, Format::Diesel, &migs, None, log_phases(&mut log))
        .await
        .unwrap();
    assert_eq!(count(&t, "SELECT count(*) FROM child").await, 3, "{log:?}");
    assert_eq!(count(&t, "SELECT count(*) FROM parent").await, 2);
}

#[tokio::test]
async fn a_cascade_no_migration_asked_for_fails_the_batch_naming_the_table() {
    // sqlx turns foreign keys on: the same rebuild inside a transaction cascades into child.
    let t = fresh(Kind::Sqlite, "cascade").await;
    let dir = dir_with(&[
        ("1_init.up.sql", PARENT_CHILD),
        ("1_init.down.sql", "DROP TABLE child; DROP TABLE parent;"),
        ("2_rebuild.up.sql", REBUILD),
        ("2_rebuild.down.sql", "SELECT 1;"),
    ]);
    let migs = read(dir.path(), Format::Sqlx);
    apply_batch(&t.pool, Format::Sqlx, &migs, &keys(&migs[..1]), |_, _| {})
        .await
        .unwrap();
    let e = apply_batch(&t.pool, Format::Sqlx, &migs, &keys(&migs[1..]), |_, _| {})
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::DataGuard { .. }), "{text}");
    assert!(text.contains("child") && text.contains("3 → 0"), "{text}");
    // Rolled back: the children are there, and 2 is not applied.
    assert_eq!(count(&t, "SELECT count(*) FROM child").await, 3);
    assert_eq!(
        rewind_db::applied(&t.pool, Format::Sqlx, &migs)
            .await
            .unwrap(),
        ["1"]
    );
}

#[tokio::test]
async fn rows_deleted_without_a_delete_in_the_script_fail_the_batch() {
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let t = fresh(kind, "hidden-delete").await;
        let purge = if kind == Kind::Postgres {
            "CREATE FUNCTION purge() RETURNS void LANGUAGE sql AS $$ DELETE FROM audit $$;\n"
        } else {
            // A trigger on another table deletes: the script never names audit.
            "CREATE TABLE cleanup (x INT);\n\
             CREATE TRIGGER cleanup_audit AFTER INSERT ON cleanup BEGIN DELETE FROM audit; END;\n"
        };
        let call = if kind == Kind::Postgres {
            "SELECT purge();\n"
        } else {
            "INSERT INTO cleanup VALUES (1);\n"
        };
        let init = format!(
            "CREATE TABLE audit (id INT);\nINSERT INTO audit VALUES (1), (2), (3);\n{purge}"
        );
        let dir = dir_with(&[
            ("1_init.up.sql", &init),
            ("2_hidden.up.sql", call),
            ("3_open.up.sql", "DELETE FROM audit WHERE id = 1;\n"),
        ]);
        let migs = read(dir.path(), Format::Sqlx);
        apply_batch(&t.pool, Format::Sqlx, &migs, &keys(&migs[..1]), |_, _| {})
            .await
            .unwrap();
        let e = apply_batch(&t.pool, Format::Sqlx, &migs, &keys(&migs[1..2]), |_, _| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("audit") && e.contains("lost"), "{kind:?}: {e}");
        assert_eq!(count(&t, "SELECT count(*) FROM audit").await, 3);
        // A DELETE the script says is expected.
        apply_batch(&t.pool, Format::Sqlx, &migs, &keys(&migs[2..]), |_, _| {})
            .await
            .unwrap();
        assert_eq!(count(&t, "SELECT count(*) FROM audit").await, 2);
    }
}

// ---- each tool's order, and sets ------------------------------------------------------------

#[tokio::test]
async fn diesel_versions_of_18_and_14_digits_apply_in_diesels_order() {
    let t = fresh(Kind::Sqlite, "diesel-order").await;
    let release1 = dir_with(&[
        (
            "2026-01-01-000000-0000_create_a/up.sql",
            "CREATE TABLE a (id INT);",
        ),
        ("2026-01-01-000000-0000_create_a/down.sql", "DROP TABLE a;"),
        (
            "2026-02-01-000000_add_x/up.sql",
            "ALTER TABLE a ADD COLUMN x INT;",
        ),
        (
            "2026-02-01-000000_add_x/down.sql",
            "ALTER TABLE a DROP COLUMN x;",
        ),
    ]);
    let migs = read(release1.path(), Format::Diesel);
    // diesel's order: the 18-digit version sorts first as text.
    assert_eq!(migs[0].name, "create_a");
    rewind_db::apply(&t.pool, Format::Diesel, &migs, None, |_, _| {})
        .await
        .unwrap();
    // Release 2 merges a migration between them.
    let release2 = dir_with(&[
        (
            "2026-01-01-000000-0000_create_a/up.sql",
            "CREATE TABLE a (id INT);",
        ),
        ("2026-01-01-000000-0000_create_a/down.sql", "DROP TABLE a;"),
        (
            "2026-01-15-000000_create_b/up.sql",
            "CREATE TABLE b (id INT);",
        ),
        ("2026-01-15-000000_create_b/down.sql", "DROP TABLE b;"),
        (
            "2026-02-01-000000_add_x/up.sql",
            "ALTER TABLE a ADD COLUMN x INT;",
        ),
        (
            "2026-02-01-000000_add_x/down.sql",
            "ALTER TABLE a DROP COLUMN x;",
        ),
    ]);
    let migs2 = read(release2.path(), Format::Diesel);
    let state = rewind_db::runner::state(&t.pool, Format::Diesel, &migs2)
        .await
        .unwrap();
    let plan = sets::plan_deploy(Format::Diesel, &migs2, &state);
    let pending: Vec<&str> = plan.to_apply.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(pending, ["create_b"]);
    assert!(plan.refusals.is_empty());
    let keys2: Vec<String> = plan.to_apply.iter().map(|m| m.key().to_string()).collect();
    apply_batch(&t.pool, Format::Diesel, &migs2, &keys2, |_, _| {})
        .await
        .unwrap();
    assert_eq!(count(&t, "SELECT count(*) FROM b").await, 0);
    // Rolling back to release 1 reverts exactly what it does not ship.
    let state = rewind_db::runner::state(&t.pool, Format::Diesel, &migs2)
        .await
        .unwrap();
    let target = keys(&migs).into_iter().collect();
    let revert = sets::plan_revert(&migs2, &state, &target);
    let names: Vec<&str> = revert.to_revert.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["create_b"]);
}

#[tokio::test]
async fn flyway_1_10_comes_after_1_9_and_an_older_pending_version_is_refused() {
    let t = fresh(Kind::Sqlite, "flyway-order").await;
    let dir = dir_with(&[
        ("V1_9__a.sql", "CREATE TABLE a (id INT);"),
        ("V1_10__b.sql", "ALTER TABLE a ADD COLUMN b INT;"),
        ("V3__c.sql", "CREATE TABLE c (id INT);"),
    ]);
    let migs = read(dir.path(), Format::Flyway);
    let order: Vec<&str> = migs.iter().map(|m| m.version.as_str()).collect();
    assert_eq!(order, ["1.9", "1.10", "3"]);
    rewind_db::apply(&t.pool, Format::Flyway, &migs, None, |_, _| {})
        .await
        .unwrap();
    let later = dir_with(&[
        ("V1_9__a.sql", "CREATE TABLE a (id INT);"),
        ("V1_10__b.sql", "ALTER TABLE a ADD COLUMN b INT;"),
        ("V2__late.sql", "CREATE TABLE late (id INT);"),
        ("V3__c.sql", "CREATE TABLE c (id INT);"),
    ]);
    let migs = read(later.path(), Format::Flyway);
    let state = rewind_db::runner::state(&t.pool, Format::Flyway, &migs)
        .await
        .unwrap();
    let plan = sets::plan_deploy(Format::Flyway, &migs, &state);
    assert_eq!(plan.to_apply.len(), 1);
    assert!(
        plan.refusals[0].contains("Detected resolved migration not applied to database: 2"),
        "{:?}",
        plan.refusals
    );
}

// ---- sqitch rework -------------------------------------------------------------------------

pub(crate) const REWORK_PLAN: &str = "%syntax-version=1.0.0\n%project=rework\n\n\
greet 2026-01-01T00:00:00Z Ann <ann@example.invalid> # first greeting\n\
@v1.0 2026-01-01T00:00:01Z Ann <ann@example.invalid>\n\
other 2026-01-02T00:00:00Z Ann <ann@example.invalid>\n\
@v1.1 2026-01-02T00:00:01Z Ann <ann@example.invalid>\n\
greet [greet@v1.1] 2026-01-03T00:00:00Z Ann <ann@example.invalid> # louder\n";

pub(crate) fn rework_project() -> tempfile::TempDir {
    dir_with(&[
        ("sqitch.plan", REWORK_PLAN),
        ("sqitch.conf", "[core]\n\tengine = sqlite\n"),
        (
            "deploy/greet@v1.1.sql",
            "BEGIN;\nCREATE TABLE greetings (word TEXT);\nINSERT INTO greetings VALUES ('hello');\nCOMMIT;\n",
        ),
        (
            "revert/greet@v1.1.sql",
            "BEGIN;\nDROP TABLE greetings;\nCOMMIT;\n",
        ),
        (
            "deploy/greet.sql",
            "BEGIN;\nUPDATE greetings SET word = upper(word);\nCOMMIT;\n",
        ),
        (
            "revert/greet.sql",
            "BEGIN;\nUPDATE greetings SET word = lower(word);\nCOMMIT;\n",
        ),
        (
            "deploy/other.sql",
            "BEGIN;\nCREATE TABLE other (id INT);\nCOMMIT;\n",
        ),
        ("revert/other.sql", "BEGIN;\nDROP TABLE other;\nCOMMIT;\n"),
    ])
}

#[test]
fn sqitch_reworked_changes_read_like_sqitch() {
    let dir = rework_project();
    let migs = read(dir.path(), Format::Sqitch);
    let names: Vec<String> = migs.iter().map(|m| m.label()).collect();
    assert_eq!(names, ["greet@v1.1", "other", "greet"]);
    assert!(migs[0].file.ends_with("deploy/greet@v1.1.sql"));
    assert!(migs[2].file.ends_with("deploy/greet.sql"));
    assert_ne!(migs[0].key(), migs[2].key());
    // The same name planned twice without a tag in between is refused, as sqitch does.
    let bad = dir_with(&[
        (
            "sqitch.plan",
            "%project=p\na 2026-01-01T00:00:00Z A <a@x>\na 2026-01-02T00:00:00Z A <a@x>\n",
        ),
        ("deploy/a.sql", "SELECT 1;"),
    ]);
    let e = migrations::read(bad.path(), Format::Sqitch)
        .unwrap_err()
        .to_string();
    assert!(e.contains("duplicates its declaration on line 2"), "{e}");
}

#[tokio::test]
async fn sqitch_reworked_changes_deploy_and_revert() {
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let t = fresh(kind, "rework").await;
        let dir = rework_project();
        let migs = read(dir.path(), Format::Sqitch);
        rewind_db::apply(&t.pool, Format::Sqitch, &migs, None, |_, _| {})
            .await
            .unwrap();
        let word = sqlx::query("SELECT word FROM greetings")
            .fetch_one(&t.pool)
            .await
            .unwrap()
            .get::<String, _>(0);
        assert_eq!(word, "HELLO");
        // Back to @v1.1: the reworked instance is reverted with revert/greet.sql.
        rewind_db::revert(&t.pool, Format::Sqitch, &migs, Some("@v1.1"), |_, _| {})
            .await
            .unwrap();
        let word = sqlx::query("SELECT word FROM greetings")
            .fetch_one(&t.pool)
            .await
            .unwrap()
            .get::<String, _>(0);
        assert_eq!(word, "hello");
        assert_eq!(
            rewind_db::applied(&t.pool, Format::Sqitch, &migs)
                .await
                .unwrap(),
            ["0001", "0002"]
        );
    }
}

// ---- a migration left half-done --------------------------------------------------------------

#[tokio::test]
async fn a_failed_concurrent_index_is_explained_and_finished_by_running_again() {
    let t = fresh(Kind::Postgres, "half").await;
    exec(
        &t,
        "CREATE TABLE items (id INT PRIMARY KEY, c INT); INSERT INTO items VALUES (1, 1), (2, 1), (3, 2)",
    )
    .await;
    let dir = dir_with(&[
        (
            "2026-01-01-000000_unique_c/up.sql",
            "ALTER TABLE items ADD COLUMN note TEXT;\n\
             CREATE UNIQUE INDEX CONCURRENTLY items_c ON items (c);\n\
             ALTER TABLE items ADD COLUMN done BOOLEAN;\n",
        ),
        (
            "2026-01-01-000000_unique_c/down.sql",
            "DROP INDEX CONCURRENTLY items_c;\nALTER TABLE items DROP COLUMN done, DROP COLUMN note;\n",
        ),
        (
            "2026-01-01-000000_unique_c/metadata.toml",
            "run_in_transaction = false\n",
        ),
    ]);
    let migs = read(dir.path(), Format::Diesel);
    let e = apply_alone(&t.pool, Format::Diesel, &migs, migs[0].key(), |_, _| {})
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(
            e,
            Error::Partial {
                units_done: 1,
                units: 3,
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains("up.sql:2"), "{text}");
    // What a person sees: the half-done migration and the INVALID index it left.
    let partial = rewind_db::runner::partial(&t.pool).await.unwrap();
    assert_eq!(partial.len(), 1);
    assert_eq!((partial[0].units_done, partial[0].units), (1, 3));
    let invalid = rewind_db::runner::invalid_indexes(&t.pool).await.unwrap();
    assert_eq!(invalid, ["items_c on items"]);
    assert!(
        rewind_db::applied(&t.pool, Format::Diesel, &migs)
            .await
            .unwrap()
            .is_empty()
    );
    // Fix the data, run it again: the INVALID index is dropped and built, the rest goes on.
    exec(&t, "UPDATE items SET c = 3 WHERE id = 2").await;
    let mut log = Vec::new();
    apply_alone(
        &t.pool,
        Format::Diesel,
        &migs,
        migs[0].key(),
        log_phases(&mut log),
    )
    .await
    .unwrap();
    assert!(
        log.iter()
            .any(|l| l.contains("Resuming { done: 1, total: 3 }")),
        "{log:?}"
    );
    assert!(log.iter().any(|l| l.contains("INVALID")), "{log:?}");
    assert!(
        rewind_db::runner::invalid_indexes(&t.pool)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        rewind_db::runner::partial(&t.pool)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        count(
            &t,
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'items' AND column_name IN ('note', 'done')"
        )
        .await,
        2
    );
    // The progress table is gone once nothing is half-done.
    assert_eq!(
        count(
            &t,
            "SELECT count(*) FROM pg_tables WHERE tablename = '_rewind_progress'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn sqlx_reverts_10_before_9() {
    // Versions 9 and 10: a text order would revert 9 first and break 10's down script.
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let t = fresh(kind, "revert-order").await;
        let dir = dir_with(&[
            ("1_base.up.sql", "CREATE TABLE base (id INT);"),
            ("1_base.down.sql", "DROP TABLE base;"),
            ("9_a.up.sql", "CREATE TABLE a (id INT);"),
            ("9_a.down.sql", "DROP TABLE a;"),
            ("10_a_idx.up.sql", "CREATE INDEX a_idx ON a (id);"),
            ("10_a_idx.down.sql", "DROP INDEX a_idx;"),
        ]);
        let migs = read(dir.path(), Format::Sqlx);
        rewind_db::apply(&t.pool, Format::Sqlx, &migs, None, |_, _| {})
            .await
            .unwrap();
        let state = rewind_db::runner::state(&t.pool, Format::Sqlx, &migs)
            .await
            .unwrap();
        let target = ["1".to_string()].into_iter().collect();
        let plan = sets::plan_revert(&migs, &state, &target);
        let order: Vec<&str> = plan.to_revert.iter().map(|m| m.version.as_str()).collect();
        assert_eq!(order, ["10", "9"], "{kind:?}");
        let keys: Vec<String> = plan.to_revert.iter().map(|m| m.key().to_string()).collect();
        rewind_db::revert_batch(&t.pool, Format::Sqlx, &migs, &keys, |_, _| {})
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn an_enum_value_added_by_one_migration_is_usable_by_the_next() {
    // The tools commit each migration; one transaction for both would fail with "unsafe use
    // of new value": the plan ends a batch after ALTER TYPE … ADD VALUE.
    let t = fresh(Kind::Postgres, "enum").await;
    let dir = dir_with(&[
        (
            "1_enum.sql",
            "CREATE TYPE color AS ENUM ('red'); CREATE TABLE paint (c color);",
        ),
        ("2_add_blue.sql", "ALTER TYPE color ADD VALUE 'blue';"),
        ("3_use_blue.sql", "INSERT INTO paint VALUES ('blue');"),
    ]);
    let migs = read(dir.path(), Format::Sqlx);
    assert!(rewind_db::runner::ends_batch(
        &migs[1],
        false,
        dialect(t.kind)
    ));
    assert!(!rewind_db::runner::ends_batch(
        &migs[2],
        false,
        dialect(t.kind)
    ));
    let done = rewind_db::apply(&t.pool, Format::Sqlx, &migs, None, |_, _| {})
        .await
        .unwrap();
    assert_eq!(done, ["1", "2", "3"]);
    assert_eq!(count(&t, "SELECT count(*) FROM paint").await, 1);
}

#[tokio::test]
async fn an_empty_table_dropped_out_of_sight_loses_nothing_and_a_loss_can_be_accepted() {
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let t = fresh(kind, "accept-loss").await;
        let (drop_hidden, purge, call) = if kind == Kind::Postgres {
            (
                "DO $$ BEGIN EXECUTE 'DROP TABLE empty_one'; END $$;",
                "CREATE FUNCTION purge() RETURNS void LANGUAGE sql AS $$ DELETE FROM form WHERE slug = 'old' $$;",
                "SELECT purge();",
            )
        } else {
            (
                "CREATE TABLE dropper (x INT);\nCREATE TRIGGER dropper_t AFTER INSERT ON dropper BEGIN DELETE FROM empty_one; END;\nINSERT INTO dropper VALUES (1);\nDROP TABLE dropper;\nDROP TABLE empty_one;",
                "CREATE TABLE purger (x INT);\nCREATE TRIGGER purge_t AFTER INSERT ON purger BEGIN DELETE FROM form WHERE slug = 'old'; END;",
                "INSERT INTO purger VALUES (1);",
            )
        };
        let init = format!(
            "CREATE TABLE empty_one (id INT);\nCREATE TABLE form (id INT PRIMARY KEY, slug TEXT);\nINSERT INTO form VALUES (1, 'old'), (2, 'keep');\n{purge}"
        );
        let dir = dir_with(&[
            ("1_init.up.sql", &init),
            ("2_drop.up.sql", drop_hidden),
            ("3_purge.up.sql", call),
        ]);
        let migs = read(dir.path(), Format::Sqlx);
        apply_batch(&t.pool, Format::Sqlx, &migs, &keys(&migs[..2]), |_, _| {})
            .await
            .unwrap();
        let e = apply_batch(&t.pool, Format::Sqlx, &migs, &keys(&migs[2..]), |_, _| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("--accept-row-loss"), "{kind:?}: {e}");
        let mut notes = Vec::new();
        rewind_db::runner::run_batch(
            &t.pool,
            Format::Sqlx,
            &migs,
            &keys(&migs[2..]),
            false,
            rewind_db::runner::Options {
                accept_row_loss: true,
            },
            |_, p| {
                if let Phase::Note(n) = p {
                    notes.push(n)
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(count(&t, "SELECT count(*) FROM form").await, 1);
        assert!(
            notes
                .iter()
                .any(|n| n.contains("form") && n.contains("accepted")),
            "{kind:?}: {notes:?}"
        );
    }
}

#[test]
fn pragma_foreign_keys_in_a_transaction_is_a_no_op_not_a_refusal() {
    // diesel runs this in a transaction, where SQLite ignores the pragma: it runs there.
    let dir = dir_with(&[(
        "2026-01-01-000000_t/up.sql",
        "PRAGMA foreign_keys = ON;\nCREATE TABLE t (id INTEGER PRIMARY KEY);\n",
    )]);
    let migs = read(dir.path(), Format::Diesel);
    assert_eq!(
        run_mode(
            Format::Diesel,
            &migs[0],
            false,
            rewind_db::sql::Dialect::Sqlite
        )
        .unwrap(),
        RunMode::Batch
    );
    // sqitch runs it through the sqlite3 shell, outside a transaction: it takes effect.
    let dir = dir_with(&[
        (
            "sqitch.plan",
            "%project=p\nt 2026-01-01T00:00:00Z A <a@x>\n",
        ),
        (
            "deploy/t.sql",
            "PRAGMA foreign_keys = ON;\nCREATE TABLE t (id INTEGER);\n",
        ),
    ]);
    let migs = read(dir.path(), Format::Sqitch);
    assert!(
        run_mode(
            Format::Sqitch,
            &migs[0],
            false,
            rewind_db::sql::Dialect::Sqlite
        )
        .unwrap()
        .is_alone()
    );
}

#[tokio::test]
async fn sqitch_verify_on_deploy_takes_a_change_back_when_it_fails() {
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let t = fresh(kind, "verify").await;
        let dir = dir_with(&[
            (
                "sqitch.plan",
                "%project=v\nwidgets 2026-01-01T00:00:00Z A <a@x>\ngadgets 2026-01-02T00:00:00Z A <a@x>\n",
            ),
            (
                "sqitch.conf",
                "[core]\n\tengine = pg\n[deploy]\n\tverify = true\n",
            ),
            ("deploy/widgets.sql", "CREATE TABLE widgets (id INT);\n"),
            ("revert/widgets.sql", "DROP TABLE widgets;\n"),
            (
                "verify/widgets.sql",
                "BEGIN;\nSELECT id FROM widgets WHERE FALSE;\nROLLBACK;\n",
            ),
            // Its own transaction: it runs alone; its verify names a column it never made.
            (
                "deploy/gadgets.sql",
                "BEGIN;\nCREATE TABLE gadgets (id INT);\nCOMMIT;\n",
            ),
            (
                "revert/gadgets.sql",
                "BEGIN;\nDROP TABLE gadgets;\nCOMMIT;\n",
            ),
            (
                "verify/gadgets.sql",
                "BEGIN;\n\nSELECT no_such_column FROM gadgets;\nROLLBACK;\n",
            ),
        ]);
        let migs = read(dir.path(), Format::Sqitch);
        assert!(migs[0].sqitch.as_ref().unwrap().verify_on_deploy);
        apply_batch(&t.pool, Format::Sqitch, &migs, &keys(&migs[..1]), |_, _| {})
            .await
            .unwrap();
        let e = apply_alone(&t.pool, Format::Sqitch, &migs, migs[1].key(), |_, _| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("verify of gadgets failed") && e.contains("gadgets.sql:3"),
            "{kind:?}: {e}"
        );
        // Taken back: the table does not exist, the registry does not record it.
        let gone = match kind {
            Kind::Sqlite => "SELECT count(*) FROM sqlite_master WHERE name = 'gadgets'",
            _ => "SELECT count(*) FROM pg_tables WHERE tablename = 'gadgets'",
        };
        assert_eq!(count(&t, gone).await, 0, "{kind:?}");
        assert_eq!(
            rewind_db::applied(&t.pool, Format::Sqitch, &migs)
                .await
                .unwrap(),
            ["0001"]
        );
    }
}

#[tokio::test]
async fn rows_an_earlier_committed_step_deleted_are_not_charged_to_the_next() {
    // PostgreSQL 15+ keeps a session's table statistics pending for up to a second: the
    // guard of migration 3 must not count what migration 2 deleted and committed.
    let t = fresh(Kind::Postgres, "stale-stats").await;
    let dir = dir_with(&[
        (
            "1_t.up.sql",
            "CREATE TABLE t (id INT); INSERT INTO t VALUES (1), (2);",
        ),
        (
            "2_del.up.sql",
            "BEGIN;\nDELETE FROM t WHERE id = 1;\nCOMMIT;\n",
        ),
        (
            "3_other.up.sql",
            "BEGIN;\nCREATE TABLE u (id INT);\nCOMMIT;\n",
        ),
    ]);
    let migs = read(dir.path(), Format::GolangMigrate);
    apply_batch(
        &t.pool,
        Format::GolangMigrate,
        &migs,
        &keys(&migs[..1]),
        |_, _| {},
    )
    .await
    .unwrap();
    for m in &migs[1..] {
        apply_alone(&t.pool, Format::GolangMigrate, &migs, m.key(), |_, _| {})
            .await
            .unwrap();
    }
    assert_eq!(count(&t, "SELECT count(*) FROM t").await, 1);
}

#[test]
fn refinery_reads_only_names_of_word_characters() {
    let dir = dir_with(&[
        ("V1__init.sql", "SELECT 1;"),
        ("V3__add thing.sql", "SELECT 3;"),
    ]);
    let migs = read(dir.path(), Format::Refinery);
    assert_eq!(migs.len(), 1);
    assert!(
        migs[0].warnings[0].contains("V3__add thing.sql"),
        "{:?}",
        migs[0].warnings
    );
}

#[tokio::test]
async fn an_error_without_a_position_is_located_by_replaying_the_batch() {
    // A duplicate key has no character to point at: the line comes from a replay of the
    // batch (the table the first migration creates, then the second one statement by
    // statement), rolled back afterwards.
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let t = fresh(kind, "replay").await;
        let dir = dir_with(&[
            (
                "1_t.up.sql",
                "CREATE TABLE t (id INT PRIMARY KEY);\nINSERT INTO t VALUES (1);\n",
            ),
            (
                "2_dup.up.sql",
                "INSERT INTO t VALUES (2);\n\n-- the next one collides\nINSERT INTO t VALUES (3);\nINSERT INTO t VALUES (1);\n",
            ),
        ]);
        let migs = read(dir.path(), Format::Sqlx);
        let e = apply_batch(&t.pool, Format::Sqlx, &migs, &keys(&migs), |_, _| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("2_dup.up.sql:5"), "{kind:?}: {e}");
        let gone = match kind {
            Kind::Sqlite => "SELECT count(*) FROM sqlite_master WHERE name = 't'",
            _ => "SELECT count(*) FROM pg_tables WHERE tablename = 't'",
        };
        assert_eq!(count(&t, gone).await, 0, "{kind:?}: nothing stays");
    }
}
