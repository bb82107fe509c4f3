//! The audit chain: changing any stored entry (any column of any row), removing one, or
//! reordering is detected by `rewind audit verify`, which names the first entry that breaks.

use sqlx::Connection;

use crate::common::*;

const COLUMNS: &[&str] = &[
    "at",
    "actor",
    "action",
    "release",
    "run_id",
    "details",
    "prev_hash",
    "hash",
    "env",
];

async fn exec(db: &std::path::Path, sql: &str) {
    let url = format!("sqlite://{}", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn changing_any_stored_entry_is_detected() {
    let base = Fixture::new();
    base.deploy("v1").ok();
    base.deploy("v2").ok();
    base.run(&["rollback", "--yes"]).ok();
    audit_ok(&base);
    let entries = base.run(&["--json", "audit", "log"]).json()["entries"]
        .as_array()
        .unwrap()
        .len() as i64;
    assert!(entries > 20, "{entries}");

    // Every column of a sample of rows (first, second, middle, last): each change is caught,
    // at that entry.
    for seq in [1, 2, entries / 2, entries] {
        for col in COLUMNS {
            let f = base.copy();
            let expr = match *col {
                "details" => "'{\"tampered\":true}'".to_string(),
                "release" | "run_id" => format!("COALESCE(\"{col}\", '') || 'x'"),
                _ => format!("\"{col}\" || 'x'"),
            };
            exec(
                &f.state_db(),
                &format!("UPDATE audit SET \"{col}\" = {expr} WHERE seq = {seq}"),
            )
            .await;
            let v = f.run(&["audit", "verify"]);
            assert_eq!(v.code, Some(1), "{col} of #{seq} not detected\n{}", v.all());
            if *col == "env" {
                // Moving an entry to another environment removes it from this chain.
                assert!(v.stderr.contains("broken at entry #"), "{}", v.all());
            } else {
                assert!(
                    v.stderr.contains(&format!("entry #{seq}:")),
                    "{col} of #{seq}\n{}",
                    v.all()
                );
            }
            let j = f.run(&["--json", "audit", "verify"]);
            j.code(1);
            assert_eq!(j.json()["detail"]["ok"], false);
        }
    }

    // Removing a middle entry breaks the chain at the entry after the gap.
    let f = base.copy();
    exec(&f.state_db(), "DELETE FROM audit WHERE seq = 5").await;
    let v = f.run(&["audit", "verify"]);
    v.code(1);
    assert!(v.stderr.contains("entry #6"), "{}", v.all());

    // Removing the newest entries is caught by the head recorded apart from the chain.
    let f = base.copy();
    exec(
        &f.state_db(),
        &format!("DELETE FROM audit WHERE seq >= {}", entries - 1),
    )
    .await;
    let v = f.run(&["audit", "verify"]);
    v.code(1);
    assert!(
        v.stderr.contains(&format!("entry #{}", entries - 1)),
        "{}",
        v.all()
    );
    assert!(v.stderr.contains("removed"), "{}", v.all());

    // Swapping two entries' contents is caught too.
    let f = base.copy();
    exec(&f.state_db(), "UPDATE audit SET seq = -1 WHERE seq = 3").await;
    exec(&f.state_db(), "UPDATE audit SET seq = 3 WHERE seq = 4").await;
    exec(&f.state_db(), "UPDATE audit SET seq = 4 WHERE seq = -1").await;
    f.run(&["audit", "verify"]).code(1);

    // An untouched copy still verifies.
    audit_ok(&base.copy());
}

#[test]
fn the_log_shows_who_what_and_which_release_and_run() {
    let f = Fixture::new();
    f.deploy("v1").ok();
    let log = f.run(&["--json", "audit", "log"]);
    log.ok();
    let entries = log.json()["entries"].as_array().unwrap().clone();
    let first = &entries[0];
    assert_eq!(first["action"], "deploy.start");
    assert_eq!(first["release"], "v1");
    assert!(first["actor"].as_str().unwrap().contains('@'));
    assert!(first["run_id"].as_str().is_some());
    assert!(entries.iter().any(|e| e["action"] == "run.succeeded"));
    let text = f.run(&["audit", "log", "--last", "3"]);
    text.ok();
    assert!(text.stdout.contains("run.succeeded"), "{}", text.all());
}
