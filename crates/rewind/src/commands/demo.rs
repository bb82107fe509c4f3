//! `rewind demo`: the whole story on this machine, with nothing installed beyond cargo. It
//! builds a throwaway environment around a real HTTP service (the demo service, run by this
//! same binary), deploys a healthy v1, deploys a faulty v2 with `--watch`, and lets rewind
//! detect, roll back and verify on its own. Every step is a real `rewind` invocation, printed
//! as a user would type it; at the end the timeline and the evidence come from the audit log.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use serde_json::Value;

use crate::error::{CliResult, failed};
use crate::output::Printer;

struct Demo {
    dir: PathBuf,
    exe: PathBuf,
    keep: bool,
}

impl Drop for Demo {
    fn drop(&mut self) {
        // Stop the demo service whatever happened, then remove the directory.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("app/shop.pid"))
            && let Ok(pid) = pid.trim().parse()
        {
            rewind_proc::terminate(pid);
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn fault_toml(fault: &str) -> (&'static str, &'static str) {
    match fault {
        "slow" => ("slowdown = 1.0\n", "p95 latency doubles (+100%)"),
        "down" => ("fail-start = true\n", "refuses to start"),
        "checkout" => (
            "checkout-broken = true\n",
            "checkout always fails (users cannot complete checkout)",
        ),
        _ => ("error-rate = 0.08\n", "8% of checkouts answer 500"),
    }
}

pub async fn run(fault: &str, keep: bool, printer: &Printer) -> CliResult<ExitCode> {
    let started = Instant::now();
    let exe =
        std::env::current_exe().map_err(|e| failed(format!("cannot find this executable: {e}")))?;
    let dir = std::env::temp_dir().join(format!("rewind-demo-{}", crate::engine::new_run_id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
    let demo = Demo {
        dir: dir.clone(),
        exe,
        keep,
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| failed(format!("cannot find a free port: {e}")))?;
    let (fault_line, fault_text) = fault_toml(fault);
    write(
        &dir.join("build/v1/demo.toml"),
        "version = \"v1\"\nbase-latency-ms = 20\n",
    )?;
    write(
        &dir.join("build/v2/demo.toml"),
        &format!("version = \"v2\"\nbase-latency-ms = 20\n{fault_line}"),
    )?;
    // The shop's database: v1 creates and fills the orders table; v2 also drops a column
    // (a destructive migration: rewind backs the database up before it, and a rollback
    // restores that backup instead of running the down script).
    for v in ["v1", "v2"] {
        write(
            &dir.join(format!("build/{v}/migrations/1_orders.up.sql")),
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL, gift_note TEXT);\nINSERT INTO orders (item, gift_note) VALUES ('tea', 'happy birthday'), ('cups', NULL), ('pot', 'for mum');\n",
        )?;
        write(
            &dir.join(format!("build/{v}/migrations/1_orders.down.sql")),
            "DROP TABLE orders;\n",
        )?;
    }
    write(
        &dir.join("build/v2/migrations/2_drop_gift_note.up.sql"),
        "ALTER TABLE orders DROP COLUMN gift_note;\n",
    )?;
    write(
        &dir.join("build/v2/migrations/2_drop_gift_note.down.sql"),
        "ALTER TABLE orders ADD COLUMN gift_note TEXT;\n",
    )?;
    write(
        &dir.join("app/restart.sh"),
        &format!(
            "#!/bin/sh\n# Restart the demo shop: stop the running one, start the release `current` points at.\nif [ -f shop.pid ]; then\n  old=$(cat shop.pid); kill \"$old\" 2>/dev/null\n  # Wait until it has exited (a zombie waiting to be reaped counts as exited).\n  while state=$(sed 's/.*) //' /proc/$old/stat 2>/dev/null | cut -d' ' -f1) && [ -n \"$state\" ] && [ \"$state\" != Z ]; do sleep 0.01; done\n  rm -f shop.pid\nfi\nnohup '{}' demo-service --port {port} --dir current --pidfile shop.pid >> shop.log 2>&1 &\n",
            demo.exe.display()
        ),
    )?;
    write(
        &dir.join("rewind.toml"),
        &format!(
            r#"# The demo environment that `rewind demo` builds.
[environment]
name = "demo"

# Migrated before the code that needs it; rolled back after it.
[components.orders]
kind = "sqlite"
path = "app/shop.db"
migrations = "build/{{release}}/migrations"
format = "sqlx"

[[components.orders.check]]
name = "every order names an item"
sql = "SELECT count(*) = 0 FROM orders WHERE item = ''"

[components.shop]
kind = "release-dir"
root = "app"
restart = "sh restart.sh"
ready-url = "http://127.0.0.1:{port}/health"
ready-timeout = "4s"

[watch]
window = "40s"
baseline = "4s"
alpha = "1%"

[[watch.probe]]
name = "checkout"
url = "http://127.0.0.1:{port}/checkout"
rate = 50
timeout = "2s"
expect-body = "order placed"
release-header = "x-release"
critical = true

[[watch.probe]]
name = "health"
url = "http://127.0.0.1:{port}/health"
rate = 5
"#
        ),
    )?;
    let say = |s: &str| {
        if !printer.quiet {
            eprintln!("{s}");
        }
    };
    say(&printer.bold(&format!("rewind demo — fault in v2: {fault_text}")));
    say(&format!("environment in {}\n", dir.display()));

    let run = async |args: &[&str]| -> (Option<i32>, String) {
        say(&format!("{} rewind {}", printer.bold("$"), args.join(" ")));
        let out = rewind_proc::Command::new(&demo.exe)
            .args(args)
            .current_dir(&dir)
            .env("NO_COLOR", "1")
            .stderr(if printer.quiet {
                rewind_proc::Sink::Null
            } else {
                rewind_proc::Sink::Inherit
            })
            .output()
            .await;
        match out {
            Ok(o) => {
                let stdout = String::from_utf8_lossy(&o.stdout).to_string();
                if !printer.quiet && !args.contains(&"--json") {
                    // In --json mode stdout carries only the demo's own document.
                    if printer.json {
                        eprint!("{stdout}");
                    } else {
                        print!("{stdout}");
                    }
                }
                say("");
                (o.status.code(), stdout)
            }
            Err(e) => (None, e.to_string()),
        }
    };

    let mut problems = Vec::new();
    let (c, _) = run(&["check"]).await;
    if c != Some(0) {
        problems.push("the demo config did not pass `rewind check`".to_string());
    }
    let (c, _) = run(&["deploy", "v1", "--artifact", "shop=build/v1"]).await;
    if c != Some(0) {
        problems.push("deploying v1 failed".to_string());
    }
    let (c, _) = run(&["deploy", "v2", "--artifact", "shop=build/v2", "--watch"]).await;
    if c != Some(1) {
        problems.push(format!(
            "the faulty v2 was not rolled back (deploy --watch exited {c:?}, expected 1)"
        ));
    }
    run(&["status"]).await;
    // The column v2 dropped is back, with its values: the database was restored.
    match gift_notes(&dir.join("app/shop.db")).await {
        Ok(2) => {}
        Ok(n) => problems.push(format!(
            "the database was not restored: {n} gift notes instead of 2"
        )),
        Err(e) => problems.push(format!("the database was not restored: {e}")),
    }
    let (c, _) = run(&["audit", "verify"]).await;
    if c != Some(0) {
        problems.push("the audit chain does not verify".to_string());
    }

    // The timeline and the evidence, from the audit log.
    let (_, log) = run(&["--json", "audit", "log"]).await;
    let entries: Vec<Value> = serde_json::from_str::<Value>(&log)
        .ok()
        .and_then(|v| v["entries"].as_array().cloned())
        .unwrap_or_default();
    let t0 = entries
        .iter()
        .find(|e| e["action"] == "deploy.start" && e["release"] == "v2")
        .and_then(|e| e["at"].as_str())
        .and_then(rewind_core::parse_ts);
    let mut timeline = String::from("timeline of v2 (seconds after its deploy started)\n");
    let mut evidence = Value::Null;
    let mut trigger = Value::Null;
    // The moments the headline reports, read off the same entries as the timeline.
    let mut moments = Moments::default();
    let mut rolling_back = false;
    for e in &entries {
        let (Some(t0), Some(at)) = (t0, e["at"].as_str().and_then(rewind_core::parse_ts)) else {
            continue;
        };
        let dt = (at - t0).total(jiff::Unit::Second).unwrap_or(0.0);
        if dt < 0.0 {
            continue;
        }
        let action = e["action"].as_str().unwrap_or("");
        match action {
            "watch.start" => moments.live = moments.live.or(Some(dt)),
            "incident.open" => moments.detected = moments.detected.or(Some(dt)),
            "rollback.start" => rolling_back = true,
            "run.succeeded" if rolling_back => {
                moments.rolled_back = moments.rolled_back.or(Some(dt))
            }
            "incident.rolled-back" => moments.verified = moments.verified.or(Some(dt)),
            _ => {}
        }
        let what = match action {
            "deploy.start" => "deploy of v2 starts (restore point first)".to_string(),
            "watch.start" => "v2 is live; monitoring window opens".to_string(),
            "incident.open" => {
                evidence = e["details"]["evidence"].clone();
                trigger = e["details"]["trigger"].clone();
                format!(
                    "incident opened — {}",
                    e["details"]["summary"].as_str().unwrap_or("")
                )
            }
            "rollback.start" => format!(
                "rollback to {} starts",
                e["details"]["to"].as_str().unwrap_or("?")
            ),
            "run.failed" => format!(
                "deploy failed at {}",
                e["details"]["step"].as_str().unwrap_or("?")
            ),
            "run.succeeded" => format!(
                "{} run finished",
                e["details"]["kind"].as_str().unwrap_or("")
            ),
            "incident.rolled-back" => {
                "verified: the previous release is healthy; incident closed as rolled back"
                    .to_string()
            }
            "incident.escalate" => "verification failed: escalate to a person".to_string(),
            "step.done" => match e["details"]["step"].as_str().unwrap_or("") {
                "orders.migrate" => "database migrated (v2 drops a column: backed up first)".to_string(),
                "shop.switch" => e["details"]["title"]
                    .as_str()
                    .unwrap_or("shop switched")
                    .to_string(),
                "orders.restore" => {
                    "database restored from the backup taken before v2 (reverting would lose the dropped column)".to_string()
                }
                "orders.check" => "data checks pass: row counts match the backup, no orphans".to_string(),
                _ => continue,
            },
            _ => continue,
        };
        timeline.push_str(&format!("  {dt:>7.2}s  {what}\n"));
    }
    say(&timeline);
    if !evidence.is_null() {
        say(&format!(
            "evidence\n{}\n",
            serde_json::to_string_pretty(&evidence).unwrap_or_default()
        ));
    }
    if problems.is_empty() && !moments.complete() {
        problems.push(format!(
            "the audit log does not show every moment of the story (detected, rolled back, verified): {moments:?}"
        ));
    }
    let ok = problems.is_empty();
    let verdict = if ok {
        printer.green(&format!(
            "demo complete in {:.1}s. v2 ({fault_text}): {}, rolled back to v1 — application and database — at {} ({} after detection), verified healthy at {} (times after v2's deploy started, as in the timeline)",
            started.elapsed().as_secs_f64(),
            match moments.live {
                Some(live) => format!(
                    "live at {}, detected at {} ({} after going live)",
                    secs(Some(live)),
                    secs(moments.detected),
                    secs(moments.detection())
                ),
                None => format!("never became ready, detected at {}", secs(moments.detected)),
            },
            secs(moments.rolled_back),
            secs(moments.recovery()),
            secs(moments.verified),
        ))
    } else {
        printer.red(&format!(
            "demo did not go as expected: {}",
            problems.join("; ")
        ))
    };
    printer.text(&verdict);
    printer.json_value(&serde_json::json!({
        "ok": ok, "fault": fault, "seconds": started.elapsed().as_secs_f64(),
        "timeline_seconds": {
            "live": moments.live, "detected": moments.detected,
            "rolled_back": moments.rolled_back, "verified": moments.verified,
        },
        "detection_seconds": moments.detection(), "recovery_seconds": moments.recovery(),
        "verification_seconds": moments.verification(),
        "problems": problems, "trigger": trigger, "evidence": evidence,
        "directory": if keep { Some(dir.display().to_string()) } else { None },
    }));
    if keep {
        say(&format!(
            "kept {} (the demo service was stopped)",
            dir.display()
        ));
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Seconds after v2's deploy started, as the timeline shows them.
#[derive(Debug, Default)]
struct Moments {
    /// The monitoring window opened: v2 is live.
    live: Option<f64>,
    /// The incident was opened: a trigger fired.
    detected: Option<f64>,
    /// The rollback run finished.
    rolled_back: Option<f64>,
    /// The previous release was verified healthy; the incident closed.
    verified: Option<f64>,
}

impl Moments {
    /// `live` may be missing: a release that never became ready never went live.
    fn complete(&self) -> bool {
        self.detected.is_some() && self.rolled_back.is_some() && self.verified.is_some()
    }
    /// From live to detected.
    fn detection(&self) -> Option<f64> {
        Some(self.detected? - self.live?)
    }
    /// From detected to the rollback run finished.
    fn recovery(&self) -> Option<f64> {
        Some(self.rolled_back? - self.detected?)
    }
    /// From the rollback run finished to verified.
    fn verification(&self) -> Option<f64> {
        Some(self.verified? - self.rolled_back?)
    }
}

fn secs(s: Option<f64>) -> String {
    s.map(|s| format!("{s:.2}s")).unwrap_or_else(|| "?".into())
}

/// How many orders have a gift note (the column v2's migration drops).
async fn gift_notes(db: &Path) -> Result<i64, String> {
    use sqlx::Connection;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .read_only(true);
    let mut c = sqlx::SqliteConnection::connect_with(&options)
        .await
        .map_err(|e| e.to_string())?;
    let n = sqlx::query_scalar("SELECT count(*) FROM orders WHERE gift_note IS NOT NULL")
        .fetch_one(&mut c)
        .await
        .map_err(|e| e.to_string());
    let _ = c.close().await;
    n
}

fn write(path: &Path, text: &str) -> CliResult<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)
            .map_err(|e| failed(format!("cannot create {}: {e}", p.display())))?;
    }
    std::fs::write(path, text).map_err(|e| failed(format!("cannot write {}: {e}", path.display())))
}
