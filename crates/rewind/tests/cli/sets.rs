//! Databases as their tool sees them, through the real binary: migrations as a set (a
//! release that merges an older migration; a rollback that reverts exactly what the target
//! does not ship; the ledger's record of each release's set), what each tool refuses
//! reported before anything runs, a migration its tool runs outside a transaction killed
//! half-way and finished by `resume`, and a database that cannot be read, with the reason.

use std::path::Path;

use sqlx::Connection;

use crate::common::*;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A config with one database component (`db`, the given kind lines) whose migrations are
/// under `rel/<release>/migrations`, and a command frontend.
fn config(f: &Fixture, db: &str, format: &str) {
    std::fs::write(
        f.path("rewind.toml"),
        format!(
            r#"[environment]
name = "test"

[components.db]
{db}
migrations = "rel/{{release}}/migrations"
format = "{format}"

[components.frontend]
kind = "command"
current = "cat fe-version"
deploy = "echo {{release}} > fe-version"
rollback = "echo {{release}} > fe-version"
"#
        ),
    )
    .unwrap();
}

fn sqlite_rows(f: &Fixture, sql: &str) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use sqlx::Row;
        let mut c =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", f.path("app.db").display()))
                .await
                .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_all(&mut c)
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<String, _>(0).unwrap())
            .collect()
    })
}

#[test]
fn a_release_merging_an_older_migration_deploys_and_rolls_back_as_a_set() {
    let f = Fixture::new();
    config(&f, "kind = \"sqlite\"\npath = \"app.db\"", "diesel");
    let m = |v: &str, dir: &str, up: &str, down: &str| {
        write(&f.path(&format!("rel/{v}/migrations/{dir}/up.sql")), up);
        write(&f.path(&format!("rel/{v}/migrations/{dir}/down.sql")), down);
    };
    for v in ["v1", "v2"] {
        // 18 and 14 digits: diesel orders them as text, so create_a comes first.
        m(
            v,
            "2026-01-01-000000-0000_create_a",
            "CREATE TABLE a (id INTEGER PRIMARY KEY);",
            "DROP TABLE a;",
        );
        m(
            v,
            "2026-02-01-000000_add_x",
            "ALTER TABLE a ADD COLUMN x INTEGER;",
            "ALTER TABLE a DROP COLUMN x;",
        );
    }
    m(
        "v2",
        "2026-01-15-000000_create_b",
        "CREATE TABLE b (id INTEGER PRIMARY KEY);",
        "DROP TABLE b;",
    );
    f.run(&["deploy", "v1"]).ok();
    // v2's new migration is older than the newest applied one: diesel applies it, and so
    // does rewind; the plan says it is out of order.
    let plan = f.run(&["plan", "--deploy", "v2"]);
    plan.ok();
    assert!(
        plan.stdout.contains("20260115000000 create_b") && plan.stdout.contains("OUT OF ORDER"),
        "{}",
        plan.all()
    );
    f.run(&["deploy", "v2"]).ok();
    assert_eq!(
        sqlite_rows(&f, "SELECT name FROM sqlite_master WHERE name = 'b'"),
        ["b"]
    );
    // The ledger keeps each release's set.
    let h = f.run(&["--json", "history"]).ok().json();
    let sets: Vec<usize> = h["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["migrations"]["db"].as_array().map_or(0, |a| a.len()))
        .collect();
    assert_eq!(sets, [2, 3], "{h}");
    let status = f.run(&["--json", "status"]).ok().json();
    let db = status["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "db")
        .cloned()
        .unwrap();
    assert_eq!(
        db["migrations"]["applied_not_in_release"],
        serde_json::json!([]),
        "{status}"
    );
    assert_eq!(
        db["migrations"]["in_release_not_applied"],
        serde_json::json!([]),
        "{status}"
    );

    // Back to v1: only create_b is reverted (the level, 20260201000000, is the same before
    // and after: a level alone would have said "unchanged").
    let plan = f.run(&["--json", "plan"]).ok().json();
    assert_eq!(
        plan["databases"]["db"]["decision"]["decision"], "revert",
        "{plan}"
    );
    f.run(&["rollback", "--yes"]).ok();
    assert!(sqlite_rows(&f, "SELECT name FROM sqlite_master WHERE name = 'b'").is_empty());
    assert_eq!(
        sqlite_rows(
            &f,
            "SELECT name FROM pragma_table_info('a') WHERE name = 'x'"
        ),
        ["x"]
    );
    // diesel agrees: two applied, b pending.
    let diesel = std::env::var("REWIND_TEST_DIESEL").unwrap_or_else(|_| "diesel".into());
    let out = std::process::Command::new(diesel)
        .args(["migration", "list", "--migration-dir"])
        .arg(f.path("rel/v2/migrations"))
        .arg("--database-url")
        .arg(f.path("app.db"))
        .output()
        .expect("diesel_cli runs (scripts/test installs it)");
    let list = String::from_utf8_lossy(&out.stdout);
    assert_eq!(list.matches("[X]").count(), 2, "{list}");
    assert!(list.contains("[ ] 2026-01-15-000000_create_b"), "{list}");
    audit_ok(&f);
}

#[test]
fn what_the_tool_would_refuse_is_refused_before_anything_runs() {
    let f = Fixture::new();
    config(&f, "kind = \"sqlite\"\npath = \"app.db\"", "flyway");
    for v in ["v1", "v2"] {
        write(
            &f.path(&format!("rel/{v}/migrations/V1__a.sql")),
            "CREATE TABLE a (id INTEGER);",
        );
        write(
            &f.path(&format!("rel/{v}/migrations/V3__c.sql")),
            "CREATE TABLE c (id INTEGER);",
        );
    }
    write(
        &f.path("rel/v2/migrations/V2__late.sql"),
        "CREATE TABLE late (id INTEGER);",
    );
    write(
        &f.path("rel/v2/migrations/V4__d.sql"),
        "CREATE TABLE d (id INTEGER);",
    );
    f.run(&["deploy", "v1"]).ok();
    let plan = f.run(&["plan", "--deploy", "v2"]);
    plan.code(1);
    assert!(
        plan.all()
            .contains("Detected resolved migration not applied to database: 2"),
        "{}",
        plan.all()
    );
    let j = f.run(&["--json", "plan", "--deploy", "v2"]).code(1).json();
    assert_eq!(j["ok"], false, "{j}");
    assert_eq!(j["detail"]["refused"], true, "{j}");
    let out = f.run(&["deploy", "v2"]);
    out.code(1);
    assert!(out.stderr.contains("nothing was changed"), "{}", out.all());
    // Nothing ran: neither V2 nor V4, and the ledger has no v2.
    assert!(
        sqlite_rows(
            &f,
            "SELECT name FROM sqlite_master WHERE name IN ('late', 'd')"
        )
        .is_empty()
    );
    assert_eq!(f.ledger().1.len(), 1);
}

fn pg_exec(url: &str, sql: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
    });
}

fn pg_text(url: &str, sql: &str) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use sqlx::Row;
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        let v: Option<String> = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&mut c)
            .await
            .unwrap()
            .get(0);
        v.unwrap_or_default()
    })
}

#[test]
fn a_migration_outside_a_transaction_killed_half_way_is_finished_by_resume() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(fresh_pg_database("half-way-secret"));
    let f = Fixture::new();
    config(
        &f,
        &format!("kind = \"postgres\"\nurl = \"{url}\""),
        "diesel",
    );
    for v in ["v1", "v2"] {
        write(
            &f.path(&format!(
                "rel/{v}/migrations/2026-01-01-000000_items/up.sql"
            )),
            "CREATE TABLE items (id INT PRIMARY KEY, c INT);\nINSERT INTO items SELECT g, g FROM generate_series(1, 1000) g;\n",
        );
        write(
            &f.path(&format!(
                "rel/{v}/migrations/2026-01-01-000000_items/down.sql"
            )),
            "DROP TABLE items;\n",
        );
    }
    let dir = "rel/v2/migrations/2026-02-01-000000_index_c";
    write(
        &f.path(&format!("{dir}/up.sql")),
        "ALTER TABLE items ADD COLUMN a INT;\nCREATE INDEX CONCURRENTLY items_c ON items (c);\nALTER TABLE items ADD COLUMN b INT;\n",
    );
    write(
        &f.path(&format!("{dir}/down.sql")),
        "DROP INDEX CONCURRENTLY items_c;\nALTER TABLE items DROP COLUMN a, DROP COLUMN b;\n",
    );
    write(
        &f.path(&format!("{dir}/metadata.toml")),
        "run_in_transaction = false\n",
    );
    f.run(&["deploy", "v1"]).ok();
    let plan = f.run(&["plan", "--deploy", "v2"]);
    plan.ok();
    assert!(
        plan.stdout.contains(
            "runs alone, outside the batch's transaction: diesel runs it outside a transaction: metadata.toml says run_in_transaction = false"
        ),
        "{}",
        plan.all()
    );
    assert!(
        plan.stdout.contains("alone, outside a transaction"),
        "{}",
        plan.all()
    );
    // Killed right after its first unit committed.
    let out = f.run_env(
        &["deploy", "v2"],
        &[("REWIND_CRASH_AT", "unit:db.migrate.20260201000000.1")],
    );
    assert!(out.signal.is_some() || out.code != Some(0), "{}", out.all());
    assert_eq!(
        pg_text(
            &url,
            "SELECT string_agg(column_name, ',' ORDER BY column_name) FROM information_schema.columns WHERE table_name = 'items'"
        ),
        "a,c,id"
    );
    // status explains: an unfinished run, and a migration that ran partly.
    let status = f.run(&["status"]);
    status.ok();
    assert!(
        status
            .stdout
            .contains("ran partly (applying): 1 of 3 units committed"),
        "{}",
        status.all()
    );
    assert!(status.stdout.contains("rewind resume"), "{}", status.all());
    let out = f.run(&["resume"]);
    out.ok();
    assert!(
        out.stderr
            .contains("an earlier attempt committed 1 of 3 units"),
        "{}",
        out.all()
    );
    assert_eq!(
        pg_text(
            &url,
            "SELECT string_agg(column_name, ',' ORDER BY column_name) FROM information_schema.columns WHERE table_name = 'items'"
        ),
        "a,b,c,id"
    );
    assert_eq!(
        pg_text(
            &url,
            "SELECT string_agg(indexrelid::regclass::text || ':' || indisvalid::text, ',') FROM pg_index WHERE indrelid = 'items'::regclass AND NOT indisprimary"
        ),
        "items_c:true"
    );
    assert_eq!(
        pg_text(
            &url,
            "SELECT count(*)::text FROM pg_tables WHERE tablename = '_rewind_progress'"
        ),
        "0"
    );
    assert_eq!(
        pg_text(
            &url,
            "SELECT string_agg(version, ',' ORDER BY version) FROM __diesel_schema_migrations"
        ),
        "20260101000000,20260201000000"
    );
    // Back to v1: the migration is reverted alone too, and the password never showed.
    f.run(&["rollback", "--yes"]).ok();
    assert_eq!(
        pg_text(
            &url,
            "SELECT string_agg(column_name, ',' ORDER BY column_name) FROM information_schema.columns WHERE table_name = 'items'"
        ),
        "c,id"
    );
    let run = f.last_run();
    assert!(!run.to_string().contains("half-way-secret"), "{run}");
    let audit = f.run(&["audit", "log"]);
    assert!(!audit.all().contains("half-way-secret"));
    pg_exec(&url, "SELECT 1");
    audit_ok(&f);
}

#[test]
fn status_says_why_a_database_cannot_be_read_and_to_time_needs_pitr() {
    let f = Fixture::new();
    config(
        &f,
        "kind = \"postgres\"\nurl-env = \"REWIND_TEST_NO_SUCH_URL\"",
        "sqlx",
    );
    write(
        &f.path("rel/v1/migrations/1_a.up.sql"),
        "CREATE TABLE a (id INT);",
    );
    let status = f.run(&["status"]);
    status.ok();
    assert!(
        status.stdout.contains("db: cannot read what runs")
            && status.stdout.contains("REWIND_TEST_NO_SUCH_URL"),
        "{}",
        status.all()
    );
    let j = f.run(&["--json", "status"]).ok().json();
    let db = &j["components"][0];
    assert!(
        db["error"].as_str().unwrap_or("").contains("url-env"),
        "{j}"
    );
    // A rollback to a point in time without [pitr]: bad usage (exit 2), nothing changed.
    let sqlite = Fixture::new();
    config(&sqlite, "kind = \"sqlite\"\npath = \"app.db\"", "sqlx");
    for v in ["v1", "v2"] {
        write(
            &sqlite.path(&format!("rel/{v}/migrations/1_a.up.sql")),
            "CREATE TABLE a (id INT);",
        );
        write(
            &sqlite.path(&format!("rel/{v}/migrations/1_a.down.sql")),
            "DROP TABLE a;",
        );
    }
    sqlite.run(&["deploy", "v1"]).ok();
    sqlite.run(&["deploy", "v2"]).ok();
    let out = sqlite.run(&["rollback", "--yes", "--to-time", "2026-11-21T14:00:00Z"]);
    out.code(2);
    assert!(out.stderr.contains("pitr"), "{}", out.all());
    assert_eq!(sqlite.ledger().0.as_deref(), Some("v2"));
}

#[test]
fn sqitch_scripts_with_psql_meta_commands_run_through_psql_as_sqitch_does() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(fresh_pg_database("psql-secret-77"));
    let f = Fixture::new();
    config(
        &f,
        &format!("kind = \"postgres\"\nurl = \"{url}\""),
        "sqitch",
    );
    let plan = "%syntax-version=1.0.0\n%project=colors\n\n\
        colors 2026-01-01T00:00:00Z Ann <ann@example.invalid> # a table and its data\n\
        @v1 2026-01-01T00:00:01Z Ann <ann@example.invalid>\n\
        shades [colors] 2026-01-02T00:00:00Z Ann <ann@example.invalid>\n";
    for v in ["v1", "v2"] {
        let p = |rel: &str| f.path(&format!("rel/{v}/migrations/{rel}"));
        let plan_v = if v == "v1" {
            plan.lines().take(5).collect::<Vec<_>>().join("\n") + "\n"
        } else {
            plan.to_string()
        };
        write(&p("sqitch.plan"), &plan_v);
        write(&p("data/colors.csv"), "red\ngreen\nblue\n");
        // sqitch's own template, with psql's \copy reading a file relative to the project.
        write(
            &p("deploy/colors.sql"),
            "-- Deploy colors:colors to pg\n\nBEGIN;\n\nCREATE TABLE colors (name TEXT NOT NULL);\n\\copy colors FROM 'data/colors.csv' WITH (FORMAT csv)\n\nCOMMIT;\n",
        );
        write(
            &p("revert/colors.sql"),
            "-- Revert colors:colors from pg\n\nBEGIN;\n\nDROP TABLE colors;\n\nCOMMIT;\n",
        );
        write(
            &p("deploy/shades.sql"),
            "BEGIN;\n\\set shade 'dark'\nCREATE TABLE shades AS SELECT name, :'shade'::text AS shade FROM colors;\nCOMMIT;\n",
        );
        write(
            &p("revert/shades.sql"),
            "BEGIN;\nDROP TABLE shades;\nCOMMIT;\n",
        );
    }
    let plan_out = f.run(&["plan", "--deploy", "v1"]);
    plan_out.ok();
    assert!(
        plan_out.stdout.contains(
            "sqitch runs it through psql, and it uses the psql meta-command \\copy (line 6)"
        ),
        "{}",
        plan_out.all()
    );
    // A new, empty database: nothing a backup could bring back, so none is taken.
    assert!(
        plan_out
            .stdout
            .contains("the database holds nothing yet: the deploy takes no backup"),
        "{}",
        plan_out.all()
    );
    f.run(&["deploy", "v1"]).ok();
    // Now it holds something: the deploy of v2 backs it up first (a script that runs
    // outside the batch's transaction asks for it).
    let plan_v2 = f.run(&["plan", "--deploy", "v2"]);
    plan_v2.ok();
    assert!(
        plan_v2.stdout.contains("restore point with a full backup"),
        "{}",
        plan_v2.all()
    );
    f.run(&["deploy", "v2"]).ok();
    assert_eq!(pg_text(&url, "SELECT count(*)::text FROM colors"), "3");
    assert_eq!(pg_text(&url, "SELECT min(shade) FROM shades"), "dark");
    // sqitch agrees: everything deployed.
    let target = format!("db:{}", url.replacen("postgres://", "pg://", 1));
    let sq = |args: &[&str]| {
        let out = std::process::Command::new("sqitch")
            .args(args)
            .arg(&target)
            .current_dir(f.path("rel/v2/migrations"))
            .env("SQITCH_FULLNAME", "Test")
            .env("SQITCH_EMAIL", "test@example.invalid")
            .env("SQITCH_USER_CONFIG", f.path("no-user.conf"))
            .output()
            .expect("sqitch runs (scripts/test installs it)");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let status = sq(&["status"]);
    assert!(
        status.contains("Nothing to deploy (up-to-date)"),
        "{status}"
    );
    // Back to v1: shades is reverted through psql too; sqitch sees @v1 as current.
    f.run(&["rollback", "--yes"]).ok();
    assert_eq!(
        pg_text(
            &url,
            "SELECT count(*)::text FROM pg_tables WHERE tablename = 'shades'"
        ),
        "0"
    );
    let status = sq(&["status", "--show-tags"]);
    assert!(status.contains("# Tag:      @v1"), "{status}");
    let run = f.last_run();
    assert!(!run.to_string().contains("psql-secret-77"), "{run}");
}

#[test]
fn a_golang_migrate_version_merged_below_the_current_one_is_refused() {
    let f = Fixture::new();
    config(&f, "kind = \"sqlite\"\npath = \"app.db\"", "golang-migrate");
    for v in ["r0", "r1"] {
        for (n, t) in [("1_one", "t1"), ("3_three", "t3")] {
            write(
                &f.path(&format!("rel/{v}/migrations/{n}.up.sql")),
                &format!("CREATE TABLE {t} (id INTEGER);"),
            );
            write(
                &f.path(&format!("rel/{v}/migrations/{n}.down.sql")),
                &format!("DROP TABLE {t};"),
            );
        }
    }
    write(
        &f.path("rel/r1/migrations/2_two.up.sql"),
        "CREATE TABLE t2 (id INTEGER);",
    );
    write(
        &f.path("rel/r1/migrations/2_two.down.sql"),
        "DROP TABLE t2;",
    );
    f.run(&["deploy", "r0"]).ok();
    // golang-migrate's history says "3": 2 looks applied; the ledger's set says it is not.
    let out = f.run(&["deploy", "r1"]);
    out.code(1);
    assert!(
        out.stderr
            .contains("2 two is older than the current version 3"),
        "{}",
        out.all()
    );
    assert!(sqlite_rows(&f, "SELECT name FROM sqlite_master WHERE name = 't2'").is_empty());
}

#[test]
fn a_down_script_that_deletes_rows_passes_the_data_checks() {
    let f = Fixture::new();
    config(&f, "kind = \"sqlite\"\npath = \"app.db\"", "sqlx");
    for v in ["r0", "r1"] {
        write(
            &f.path(&format!("rel/{v}/migrations/1_t.up.sql")),
            "CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1), (2);",
        );
        write(
            &f.path(&format!("rel/{v}/migrations/1_t.down.sql")),
            "DROP TABLE t;",
        );
    }
    write(
        &f.path("rel/r1/migrations/2_seed.up.sql"),
        "INSERT INTO t VALUES (3);",
    );
    write(
        &f.path("rel/r1/migrations/2_seed.down.sql"),
        "DELETE FROM t WHERE id = 3;",
    );
    f.run(&["deploy", "r0"]).ok();
    f.run(&["deploy", "r1"]).ok();
    let plan = f.run(&["--json", "plan"]).ok().json();
    assert_eq!(
        plan["databases"]["db"]["decision"]["decision"], "revert",
        "{plan}"
    );
    f.run(&["rollback", "--yes"]).ok();
    assert_eq!(
        sqlite_rows(&f, "SELECT CAST(count(*) AS TEXT) FROM t"),
        ["2"]
    );
    let run = f.last_run();
    assert!(
        run.to_string().contains("the down scripts delete from it"),
        "{run}"
    );
}

#[test]
fn a_rollback_whose_current_migrations_are_gone_restores_the_backup() {
    let f = Fixture::new();
    config(&f, "kind = \"sqlite\"\npath = \"app.db\"", "sqlx");
    for v in ["r0", "r1"] {
        write(
            &f.path(&format!("rel/{v}/migrations/1_t.up.sql")),
            "CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);",
        );
        write(
            &f.path(&format!("rel/{v}/migrations/1_t.down.sql")),
            "DROP TABLE t;",
        );
    }
    write(
        &f.path("rel/r1/migrations/2_u.up.sql"),
        "CREATE TABLE u (id INTEGER);",
    );
    write(&f.path("rel/r1/migrations/2_u.down.sql"), "DROP TABLE u;");
    f.run(&["deploy", "r0"]).ok();
    f.run(&["deploy", "r1"]).ok();
    std::fs::remove_dir_all(f.path("rel/r1/migrations")).unwrap();
    let plan = f.run(&["--json", "plan"]).ok().json();
    assert_eq!(
        plan["databases"]["db"]["decision"]["decision"], "restore",
        "{plan}"
    );
    f.run(&["rollback", "--yes"]).ok();
    assert!(sqlite_rows(&f, "SELECT name FROM sqlite_master WHERE name = 'u'").is_empty());
    assert_eq!(
        sqlite_rows(&f, "SELECT name FROM sqlite_master WHERE name = 't'"),
        ["t"]
    );
}
