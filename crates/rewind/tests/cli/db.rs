//! Databases through the real binary: migrations applied by deploys, classified in `plan`,
//! a destructive migration rolled back by restoring its backup (data checks passing), a
//! revert on PostgreSQL with writes frozen, killed with SIGKILL half-way and resumed, the
//! forward-only policy, `rewind backup create|list|verify|restore`, and a PostgreSQL restore
//! that gives an application role back what it had (on PostgreSQL 15 and 18).

use std::path::Path;

use sqlx::Connection;

use crate::common::*;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Migrations of releases v1 (users), v2 (+ orders, additive), v3 (drops users.legacy:
/// destructive), v4 (= v3), in sqlx's reversible layout, under `rel/<release>/migrations`.
fn migrations(f: &Fixture) {
    let m = |v: &str, file: &str, sql: &str| {
        write(
            &f.path(&format!("rel/{v}/migrations/{file}")),
            &format!("-- {file}\n{sql}\n"),
        );
    };
    for v in ["v1", "v2", "v3", "v4"] {
        m(
            v,
            "1_users.up.sql",
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, legacy TEXT);",
        );
        m(v, "1_users.down.sql", "DROP TABLE users;");
    }
    for v in ["v2", "v3", "v4"] {
        m(
            v,
            "2_orders.up.sql",
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), total INTEGER NOT NULL);",
        );
        m(v, "2_orders.down.sql", "DROP TABLE orders;");
        m(
            v,
            "3_order_notes.up.sql",
            "ALTER TABLE orders ADD COLUMN note TEXT;",
        );
        m(
            v,
            "3_order_notes.down.sql",
            "ALTER TABLE orders DROP COLUMN note;",
        );
    }
    for v in ["v3", "v4"] {
        m(
            v,
            "4_drop_legacy.up.sql",
            "ALTER TABLE users DROP COLUMN legacy;",
        );
        m(
            v,
            "4_drop_legacy.down.sql",
            "ALTER TABLE users ADD COLUMN legacy TEXT;",
        );
    }
}

fn config(f: &Fixture, db: &str) {
    let text = format!(
        r#"[environment]
name = "test"

{db}
migrations = "rel/{{release}}/migrations"
format = "sqlx"

[[components.db.check]]
name = "totals are positive"
sql = "SELECT count(*) = 0 FROM orders WHERE total <= 0"

[components.frontend]
kind = "command"
current = "cat fe-version"
deploy = "echo {{release}} > fe-version"
rollback = "echo {{release}} > fe-version"
"#
    );
    std::fs::write(f.path("rewind.toml"), text).unwrap();
}

fn sqlite(f: &Fixture, sql: &str) -> Vec<Vec<String>> {
    let db = f.path("app.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use sqlx::Row;
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_all(&mut c)
            .await
            .unwrap();
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| {
                        r.try_get::<Option<String>, _>(i)
                            .map(|v| v.unwrap_or_else(|| "NULL".into()))
                            .or_else(|_| r.try_get::<i64, _>(i).map(|n| n.to_string()))
                            .unwrap()
                    })
                    .collect()
            })
            .collect()
    })
}

#[test]
fn sqlite_destructive_migration_is_flagged_and_rolled_back_by_restore() {
    let f = Fixture::new();
    migrations(&f);
    config(&f, "[components.db]\nkind = \"sqlite\"\npath = \"app.db\"");
    f.run(&["deploy", "v1"]).ok();
    sqlite(
        &f,
        "INSERT INTO users (id, name, legacy) VALUES (1, 'ada', 'x1'), (2, 'bob', 'x2')",
    );
    f.run(&["deploy", "v2"]).ok();
    sqlite(
        &f,
        "INSERT INTO orders (id, user_id, total) VALUES (1, 1, 10), (2, 2, 20)",
    );

    // v3's copy of an applied migration was edited (drift); another was only converted to
    // CRLF (not drift, but mentioned: sqlx hashes bytes).
    let notes = f.path("rel/v3/migrations/3_order_notes.up.sql");
    let text = std::fs::read_to_string(&notes).unwrap();
    std::fs::write(&notes, format!("{text}-- edited after it was applied\n")).unwrap();
    let orders = f.path("rel/v3/migrations/2_orders.up.sql");
    let text = std::fs::read_to_string(&orders).unwrap();
    std::fs::write(&orders, text.replace('\n', "\r\n")).unwrap();
    // Drift refuses the deploy, in the plan first: exit 1, both files named. The CRLF copy
    // is drift too, because sqlx hashes bytes and would refuse to run.
    let plan = f.run(&["plan", "--deploy", "v3"]);
    plan.code(1);
    let drift: Vec<&str> = plan
        .stdout
        .lines()
        .filter(|l| l.contains("DRIFT"))
        .collect();
    assert_eq!(drift.len(), 2, "{}", plan.all());
    assert!(
        drift
            .iter()
            .any(|l| l.contains('3') && !l.contains("line endings")),
        "{}",
        plan.all()
    );
    assert!(
        drift
            .iter()
            .any(|l| l.contains("2 differs") && l.contains("line endings only")),
        "{}",
        plan.all()
    );
    assert!(plan.stdout.contains("would REFUSE"), "{}", plan.all());
    let refused = f.run(&["deploy", "v3"]);
    refused.code(1);
    assert!(
        refused
            .stderr
            .contains("the deploy is refused; nothing was changed")
            && refused.stderr.contains("3_order_notes.up.sql")
            && refused.stderr.contains("--accept-drift"),
        "{}",
        refused.all()
    );
    assert_eq!(f.ledger().0.as_deref(), Some("v2"), "nothing was recorded");

    // The deploy plan says what the destructive migration does and takes a full backup.
    let plan = f.run(&["plan", "--deploy", "v3", "--accept-drift"]);
    plan.ok();
    assert!(
        plan.stdout.contains(
            "4 drop legacy — LOSES DATA: line 2: ALTER TABLE users DROP COLUMN legacy loses data"
        ),
        "{}",
        plan.all()
    );
    assert!(
        plan.stdout
            .contains("reverting it cannot bring the old data back"),
        "{}",
        plan.all()
    );
    assert!(
        plan.stdout.contains(
            "restore point with a full backup (migration 4 drop legacy cannot be reverted"
        ),
        "{}",
        plan.all()
    );
    assert!(
        plan.stdout
            .contains("record the edited files' checksums for 2, 3"),
        "{}",
        plan.all()
    );
    let j = f
        .run(&["--json", "plan", "--deploy", "v3", "--accept-drift"])
        .ok()
        .json();
    let pending = &j["databases"]["db"]["pending"];
    assert_eq!(pending.as_array().unwrap().len(), 1, "{j}");
    assert_eq!(pending[0]["loses_data"], true, "{j}");
    assert_eq!(j["databases"]["db"]["level_now"], "3", "{j}");
    assert_eq!(j["databases"]["db"]["target_level"], "4", "{j}");

    f.run(&["deploy", "v3", "--accept-drift"]).ok();
    // sqlx itself now accepts the edited files: the history holds their checksums.
    let out = std::process::Command::new(
        std::env::var("REWIND_TEST_SQLX").unwrap_or_else(|_| "sqlx".into()),
    )
    .args(["migrate", "info", "--source"])
    .arg(f.path("rel/v3/migrations"))
    .arg("-D")
    .arg(format!("sqlite://{}", f.path("app.db").display()))
    .output()
    .expect("sqlx-cli runs (scripts/test installs it)");
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{info}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(info.matches("/installed").count(), 4, "{info}");
    let recorded = f.recorded();
    assert!(
        recorded.contains(&("db".into(), "4".into())),
        "{recorded:?}"
    );
    // A write after the deploy: the restore discards it, and says so.
    sqlite(
        &f,
        "INSERT INTO orders (id, user_id, total) VALUES (3, 1, 30)",
    );

    let plan = f.run(&["--json", "plan"]).ok().json();
    let decision = &plan["databases"]["db"]["decision"];
    assert_eq!(decision["decision"], "restore", "{plan}");
    assert!(
        decision["reason"]
            .as_str()
            .unwrap()
            .contains("reverting would lose data"),
        "{plan}"
    );
    let out = f.run(&["rollback", "--yes"]);
    out.ok();
    // Back at level 3, with the dropped column and its values.
    assert_eq!(
        sqlite(&f, "SELECT name, legacy FROM users ORDER BY id"),
        vec![vec!["ada", "x1"], vec!["bob", "x2"]]
    );
    assert_eq!(sqlite(&f, "SELECT count(*) FROM orders"), vec![vec!["2"]]);
    assert_eq!(
        sqlite(&f, "SELECT max(version) FROM _sqlx_migrations"),
        vec![vec!["3"]]
    );
    let run = f.last_run();
    assert_run_complete(&run, "restore rollback");
    let journal = run["journal"].as_array().cloned().unwrap();
    let check = journal
        .iter()
        .find(|e| e["step_id"] == "db.check" && e["event"] == "done")
        .unwrap_or_else(|| panic!("no db.check done: {journal:?}"));
    let msg = check["message"].as_str().unwrap();
    assert!(
        msg.contains("row counts: 2 of 2 tables match the backup's count"),
        "{msg}"
    );
    assert!(msg.contains("check totals are positive: holds"), "{msg}");
    assert!(msg.contains("no orphaned rows"), "{msg}");
    assert!(msg.contains("catalog: matches the backup's"), "{msg}");
    let (current, _) = f.ledger();
    assert_eq!(current.as_deref(), Some("v2"));
    let recorded = f.recorded();
    assert!(
        recorded.contains(&("db".into(), "3".into())),
        "{recorded:?}"
    );

    // v2 → v1: additive migrations, data intact: reverted with their down scripts.
    let plan = f.run(&["--json", "plan"]).ok().json();
    assert_eq!(
        plan["databases"]["db"]["decision"]["decision"], "revert",
        "{plan}"
    );
    f.run(&["rollback", "--yes"]).ok();
    assert_eq!(
        sqlite(
            &f,
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' ORDER BY name"
        ),
        vec![vec!["_sqlx_migrations"], vec!["users"]]
    );
    assert_eq!(sqlite(&f, "SELECT count(*) FROM users"), vec![vec!["2"]]);
    // The database is where the ledger says; a second rollback plan leaves it alone.
    let status = f.run(&["--json", "status"]).ok().json();
    let db = status["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "db")
        .cloned()
        .unwrap();
    assert_eq!(db["recorded"], "1", "{status}");
    assert_eq!(db["live"], "1", "{status}");
    audit_ok(&f);
}

#[test]
fn backups_are_created_listed_verified_and_restored() {
    let f = Fixture::new();
    migrations(&f);
    config(
        &f,
        "[components.db]\nkind = \"sqlite\"\npath = \"app.db\"\nkeep-backups = 3",
    );
    f.run(&["deploy", "v2"]).ok();
    sqlite(&f, "INSERT INTO users (id, name) VALUES (1, 'ada')");
    let made = f.run(&["--json", "backup", "create"]).ok().json();
    let id = made["backups"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(made["backups"][0]["level"], "3", "{made}");
    assert_eq!(made["backups"][0]["row_counts"]["users"], 1, "{made}");
    let list = f.run(&["--json", "backup", "list"]).ok().json();
    assert!(
        list["backups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["id"] == id),
        "{list}"
    );
    let v = f.run(&["backup", "verify", &id]);
    v.ok();
    assert!(
        v.stdout.contains("restores and its checks pass"),
        "{}",
        v.all()
    );
    assert!(v.stdout.contains("no orphaned rows"), "{}", v.all());
    assert!(
        v.stdout.contains("check totals are positive: holds"),
        "{}",
        v.all()
    );

    sqlite(&f, "DELETE FROM users");
    // Without --yes only the steps are shown.
    let shown = f.run(&["backup", "restore", &id]);
    shown.code(2);
    assert!(
        shown.stderr.contains("nothing was changed"),
        "{}",
        shown.all()
    );
    assert_eq!(sqlite(&f, "SELECT count(*) FROM users"), vec![vec!["0"]]);
    f.run(&["backup", "restore", &id, "--yes"]).ok();
    assert_eq!(sqlite(&f, "SELECT name FROM users"), vec![vec!["ada"]]);

    // Retention: at most 3 kept.
    for _ in 0..4 {
        f.run(&["backup", "create"]).ok();
    }
    let list = f.run(&["--json", "backup", "list"]).ok().json();
    assert_eq!(list["backups"].as_array().unwrap().len(), 3, "{list}");

    // A damaged backup does not verify: exit 1, naming it.
    let newest = list["backups"][2].clone();
    let file = newest["file"].as_str().unwrap();
    let mut bytes = std::fs::read(file).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(file, bytes).unwrap();
    let bad = f.run(&["backup", "verify", newest["id"].as_str().unwrap()]);
    bad.code(1);
    assert!(
        bad.stderr.contains("does not match its checksum"),
        "{}",
        bad.all()
    );

    // Bad input changes nothing.
    f.run(&["backup", "verify", "nope"]).code(2);
    let t = f.run(&["plan", "--to-time", "2026-11-21 14:03:00"]);
    t.code(2);
    assert!(t.stderr.contains("time zone"), "{}", t.all());
}

async fn pg_one(url: &str, sql: &str) -> String {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let v: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    v
}

#[test]
fn postgres_revert_with_frozen_writes_survives_sigkill_and_resumes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(fresh_pg_database("db-secret-0815"));
    let f = Fixture::new();
    migrations(&f);
    config(
        &f,
        "[components.db]\nkind = \"postgres\"\nurl-env = \"APP_DATABASE_URL\"\nfreeze = \"read-only\"",
    );
    let env = [("APP_DATABASE_URL", url.as_str())];
    f.run_env(&["deploy", "v1"], &env).ok();
    f.run_env(&["deploy", "v2"], &env).ok();
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("INSERT INTO users (id, name) VALUES (1, 'ada'); INSERT INTO orders (id, user_id, total) VALUES (1, 1, 5);")
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
    });
    let plan = f.run_env(&["--json", "plan"], &env).ok().json();
    assert_eq!(
        plan["databases"]["db"]["decision"]["decision"], "revert",
        "{plan}"
    );

    // Killed inside the revert: one migration reverted, nothing committed.
    let killed = f.run_env(
        &["rollback", "--yes"],
        &[
            ("APP_DATABASE_URL", url.as_str()),
            ("REWIND_CRASH_AT", "mid:db.revert"),
        ],
    );
    assert_eq!(killed.signal, Some(9), "{}", killed.all());
    let (level, frozen) = rt.block_on(async {
        (
            pg_one(&url, "SELECT max(version)::text FROM _sqlx_migrations").await,
            pg_one(&url, "SHOW default_transaction_read_only").await,
        )
    });
    assert_eq!(
        level, "3",
        "the revert's transaction must roll back with the process"
    );
    assert_eq!(frozen, "on", "writes stay frozen until the run finishes");

    let resumed = f.run_env(&["resume"], &env);
    resumed.ok();
    let (level, frozen, tables) = rt.block_on(async {
        (
            pg_one(&url, "SELECT max(version)::text FROM _sqlx_migrations").await,
            pg_one(&url, "SHOW default_transaction_read_only").await,
            pg_one(&url, "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'").await,
        )
    });
    assert_eq!(level, "1");
    assert_eq!(frozen, "off", "the unfreeze step ran");
    assert_eq!(tables, "_sqlx_migrations,users");
    let run = f.last_run();
    assert_run_complete(&run, "resumed revert");
    let journal = run["journal"].as_array().cloned().unwrap();
    let begins = journal
        .iter()
        .filter(|e| e["step_id"] == "db.revert" && e["event"] == "begin")
        .count();
    assert_eq!(begins, 2, "begun, killed, begun again: {journal:?}");
    let everything = format!(
        "{}{}{}",
        killed.all(),
        resumed.all(),
        serde_json::to_string(&journal).unwrap()
    );
    assert!(
        !everything.contains("db-secret-0815"),
        "the password leaked"
    );

    // Forward-only: the same rollback is refused, and nothing changes.
    f.run_env(&["deploy", "v3"], &env).ok();
    let text = std::fs::read_to_string(f.path("rewind.toml")).unwrap();
    std::fs::write(
        f.path("rewind.toml"),
        text.replace(
            "format = \"sqlx\"",
            "format = \"sqlx\"\npolicy = \"forward-only\"",
        ),
    )
    .unwrap();
    let refused = f.run_env(&["rollback", "--yes", "--to", "v1", "--force"], &env);
    refused.code(1);
    assert!(
        refused.stderr.contains("fix-forward migration"),
        "{}",
        refused.all()
    );
    let level = rt.block_on(pg_one(
        &url,
        "SELECT max(version)::text FROM _sqlx_migrations",
    ));
    assert_eq!(level, "4");
    audit_ok(&f);
}

#[test]
fn postgres_destructive_deploy_is_restored_from_its_dump() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(fresh_pg_database("db-secret-0815"));
    let f = Fixture::new();
    migrations(&f);
    config(
        &f,
        &format!("[components.db]\nkind = \"postgres\"\nurl = \"{url}\""),
    );
    f.run(&["deploy", "v2"]).ok();
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("INSERT INTO users (id, name, legacy) VALUES (1, 'ada', 'keep-me'); INSERT INTO orders (id, user_id, total) VALUES (1, 1, 5);")
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
    });
    let out = f.run(&["deploy", "v3"]);
    out.ok();
    assert!(out.stderr.contains("LOSES DATA"), "{}", out.all());
    let rb = f.run(&["rollback", "--yes"]);
    rb.ok();
    let (legacy, level, tables) = rt.block_on(async {
        (
            pg_one(&url, "SELECT legacy FROM users").await,
            pg_one(&url, "SELECT max(version)::text FROM _sqlx_migrations").await,
            pg_one(&url, "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'").await,
        )
    });
    assert_eq!(legacy, "keep-me");
    assert_eq!(level, "3");
    assert_eq!(tables, "_sqlx_migrations,orders,users");
    let run = f.last_run();
    let journal = run["journal"].as_array().cloned().unwrap();
    let check = journal
        .iter()
        .find(|e| e["step_id"] == "db.check" && e["event"] == "done")
        .unwrap_or_else(|| panic!("{journal:?}"));
    assert!(
        check["message"]
            .as_str()
            .unwrap()
            .contains("row counts: 2 of 2 tables match"),
        "{check}"
    );
    let all = format!(
        "{}{}{}",
        out.all(),
        rb.all(),
        serde_json::to_string(&journal).unwrap()
    );
    assert!(!all.contains("db-secret-0815"), "the password leaked");
}

/// A data check that fails after the revert fails the run, and the unfreeze step still runs.
#[test]
fn failed_data_check_fails_the_rollback_and_writes_are_allowed_again() {
    let f = Fixture::new();
    migrations(&f);
    config(
        &f,
        "[components.db]\nkind = \"sqlite\"\npath = \"app.db\"\nfreeze = \"command\"\nfreeze-command = \"touch frozen\"\nunfreeze-command = \"rm frozen\"",
    );
    let text = std::fs::read_to_string(f.path("rewind.toml")).unwrap();
    std::fs::write(
        f.path("rewind.toml"),
        text.replace(
            "[components.frontend]",
            "[[components.db.check]]\nname = \"orders table exists\"\nsql = \"SELECT count(*) = 1 FROM sqlite_master WHERE name = 'orders'\"\n\n[components.frontend]",
        ),
    )
    .unwrap();
    f.run(&["deploy", "v1"]).ok();
    f.run(&["deploy", "v2"]).ok();
    let out = f.run(&["rollback", "--yes"]);
    out.code(1);
    assert!(
        out.stderr
            .contains("check orders table exists does not hold"),
        "{}",
        out.all()
    );
    assert!(
        !f.path("frozen").exists(),
        "unfreeze did not run\n{}",
        out.all()
    );
    let run = f.last_run();
    assert_eq!(run["run"]["status"], "failed", "{run}");
    let unfreeze = run["journal"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["step_id"] == "db.unfreeze" && e["event"] == "done");
    assert!(unfreeze, "{run}");
    audit_ok(&f);
}

async fn pg_exec(url: &str, sql: &str) {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    // The database may be frozen read-only by an interrupted run (a statement of its own: in
    // one batch with the rest, the batch's transaction would have begun read-only).
    sqlx::raw_sql("SET default_transaction_read_only = off")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
}

/// `url` as the role `user`, without a password (the test servers trust local connections).
fn as_role(url: &str, user: &str) -> String {
    let (_, rest) = url.split_once('@').unwrap();
    format!("postgres://{user}@{rest}")
}

async fn app_reads_users(url: &str) -> Result<i64, String> {
    let mut c = sqlx::PgConnection::connect(&as_role(url, "rw_cli_app"))
        .await
        .unwrap();
    let r = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut c)
        .await
        .map_err(|e| e.to_string());
    c.close().await.unwrap();
    r
}

/// The issue through the real binary, on PostgreSQL 15 and 18: an application role that owns
/// nothing reaches `public` through PUBLIC's default USAGE. A migration revokes it; `backup
/// restore` brings it back (the role reads its table again) and its data checks compare the
/// catalog with the backup's. A privilege changed between the restore and the checks (the run
/// killed there, then resumed) fails the checks, naming it. On 18, `pg-bin` names the
/// PostgreSQL 18 tools; pointed at 15's, a backup fails, and a restore does not start.
#[test]
fn postgres_restore_brings_back_what_the_application_role_needs() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pg18_bin = std::env::var("REWIND_TEST_PG18_BIN")
        .expect("REWIND_TEST_PG18_BIN is not set: run scripts/test, which installs PostgreSQL 18");
    for (var, pg_bin) in [
        ("REWIND_TEST_PG_URL", None),
        ("REWIND_TEST_PG18_URL", Some(pg18_bin.as_str())),
    ] {
        let url = rt.block_on(fresh_pg_database_on(var, "db-secret-0815"));
        rt.block_on(pg_exec(
            &url,
            "DO $$ BEGIN CREATE ROLE rw_cli_app LOGIN; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
        ));
        let f = Fixture::new();
        migrations(&f);
        let pg_bin_line = pg_bin
            .map(|b| format!("\npg-bin = \"{b}\""))
            .unwrap_or_default();
        config(
            &f,
            &format!("[components.db]\nkind = \"postgres\"\nurl = \"{url}\"{pg_bin_line}"),
        );
        f.run(&["deploy", "v2"]).ok();
        rt.block_on(pg_exec(
            &url,
            "INSERT INTO users (id, name) VALUES (1, 'ada'), (2, 'bob');
             GRANT SELECT ON users TO rw_cli_app;
             ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO rw_cli_app;",
        ));
        assert_eq!(rt.block_on(app_reads_users(&url)), Ok(2), "{var}");
        let made = f.run(&["--json", "backup", "create"]).ok().json();
        let id = made["backups"][0]["id"].as_str().unwrap().to_string();
        let lines = made["backups"][0]["catalog"]["lines"].as_array().unwrap();
        assert!(
            lines.iter().any(|l| l
                == "schema public: ACL {=U/pg_database_owner,pg_database_owner=UC/pg_database_owner}"),
            "{var}: {made}"
        );

        // The migration that broke the application.
        rt.block_on(pg_exec(
            &url,
            "REVOKE USAGE ON SCHEMA public FROM PUBLIC;
             REVOKE SELECT ON users FROM rw_cli_app;
             ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM rw_cli_app;
             CREATE TABLE audit (id int);",
        ));
        assert!(rt.block_on(app_reads_users(&url)).is_err(), "{var}");

        let restored = f.run(&["backup", "restore", &id, "--yes"]);
        restored.ok();
        assert_eq!(
            rt.block_on(app_reads_users(&url)),
            Ok(2),
            "{var}: {}",
            restored.all()
        );
        let run = f.last_run();
        let journal = run["journal"].as_array().cloned().unwrap();
        let check = journal
            .iter()
            .find(|e| e["step_id"] == "db.check" && e["event"] == "done")
            .unwrap_or_else(|| panic!("{var}: no db.check done: {journal:?}"));
        let msg = check["message"].as_str().unwrap();
        assert!(
            msg.contains("catalog: matches the backup's"),
            "{var}: {msg}"
        );
        let v = f.run(&["backup", "verify", &id]);
        v.ok();
        assert!(
            v.stdout.contains("catalog: matches the backup's"),
            "{var}: {}",
            v.all()
        );

        // Killed after the restore, before its checks; a privilege changes meanwhile.
        let killed = f.run_env(
            &["backup", "restore", &id, "--yes"],
            &[("REWIND_CRASH_AT", "before:db.check")],
        );
        assert_eq!(killed.signal, Some(9), "{var}: {}", killed.all());
        rt.block_on(pg_exec(&url, "GRANT CREATE ON SCHEMA public TO rw_cli_app"));
        let resumed = f.run(&["resume"]);
        resumed.code(1);
        assert!(
            resumed.stderr.contains(
                "catalog: schema public: ACL {=U/pg_database_owner,pg_database_owner=UC/pg_database_owner,rw_cli_app=C/pg_database_owner} differs from the backup's {=U/pg_database_owner,pg_database_owner=UC/pg_database_owner}"
            ),
            "{var}: {}",
            resumed.all()
        );
        let everything = format!("{}{}{}", restored.all(), killed.all(), resumed.all());
        assert!(
            !everything.contains("db-secret-0815"),
            "the password leaked"
        );

        if pg_bin.is_some() {
            // PostgreSQL 15's tools for an 18 server: refused, naming both and pg-bin.
            let text = std::fs::read_to_string(f.path("rewind.toml")).unwrap();
            std::fs::write(
                f.path("rewind.toml"),
                text.replace(&pg18_bin, "/usr/lib/postgresql/15/bin"),
            )
            .unwrap();
            let made = f.run(&["backup", "create"]);
            made.code(1);
            assert!(
                made.stderr.contains("PostgreSQL server 18.")
                    && made
                        .stderr
                        .contains("pg-bin = \"/usr/lib/postgresql/15/bin\""),
                "{}",
                made.all()
            );
            let refused = f.run(&["backup", "restore", &id, "--yes"]);
            refused.code(2);
            assert!(
                refused.stderr.contains("nothing was changed")
                    && refused
                        .stderr
                        .contains("pg_dump and pg_restore 18 or newer"),
                "{}",
                refused.all()
            );
            assert_eq!(rt.block_on(app_reads_users(&url)), Ok(2));
        }
    }
}
