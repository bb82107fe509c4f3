//! `resume` against the lock: a lock is held by a holder (one process), never by a run. While
//! the process that runs a rollback is alive, `resume` of that same run is blocked (exit 3,
//! naming the holder) and `status` does not suggest it; after the holder is killed, any number
//! of concurrent `resume`s finish the run with each step run exactly once more. On both stores.

use std::process::Child;
use std::time::{Duration, Instant};

use crate::common::*;

/// The restart logs each start in `starts.log` and, while `slow` exists, takes 3 s.
fn slow_restart_fixture(state: Option<String>) -> Fixture {
    let f = Fixture::with(Setup {
        restart: "echo \"start $REWIND_RELEASE\" >> ../starts.log; \
                  if [ -f ../slow ]; then sleep 3; fi; \
                  echo \"$REWIND_RELEASE\" >> ../restarts.log"
            .into(),
        state,
        ..Setup::default()
    });
    f.deploy("v1").ok();
    f.deploy("v2").ok();
    // Only the rollback's restarts are counted.
    std::fs::write(f.path("starts.log"), "").unwrap();
    std::fs::write(f.path("slow"), "").unwrap();
    f
}

fn starts(f: &Fixture, release: &str) -> usize {
    std::fs::read_to_string(f.path("starts.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == format!("start {release}"))
        .count()
}

/// Waits until the rollback's restart (to v1) has started.
fn wait_for_restart(f: &Fixture, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while starts(f, "v1") == 0 {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the rollback ended ({st}) before its restart started");
        }
        assert!(Instant::now() < deadline, "the restart never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn resume_blocked_while_the_holder_lives(f: &Fixture) {
    let mut rollback = f.spawn(&["rollback", "--yes"]);
    wait_for_restart(f, &mut rollback);

    let resumed = f.run(&["resume"]);
    resumed.code(3);
    assert!(
        resumed.stderr.contains(&format!("pid {}", rollback.id())),
        "names the live holder\n{}",
        resumed.all()
    );
    let status = f.run(&["status"]);
    status.ok();
    assert!(
        !status.stdout.contains("rewind resume"),
        "status must not suggest resume while the holder lives\n{}",
        status.all()
    );
    assert!(
        status.stdout.contains("in progress"),
        "status says the run is in progress\n{}",
        status.all()
    );
    assert!(
        status
            .stdout
            .contains("rollback target: v1 — a rollback to it is already under way")
            && !status.stdout.contains("`rewind plan` shows the steps"),
        "status must not offer a second rollback\n{}",
        status.all()
    );
    let json = f.run(&["--json", "status"]).json();
    assert_eq!(json["unfinished_run"]["holder_alive"], true, "{json:#}");

    let out = rollback.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(starts(f, "v1"), 1, "the restart ran once");
    assert_eq!(f.current(), "releases/v1");
    assert_run_complete(&f.last_run(), "rollback after a blocked resume");
    audit_ok(f);
}

/// Kills the rollback in the middle of its restart, then starts `n` resumes at once.
fn concurrent_resumes_after_a_kill(f: &Fixture, n: usize) {
    let mut rollback = f.spawn(&["rollback", "--yes"]);
    wait_for_restart(f, &mut rollback);
    rollback.kill().unwrap();
    rollback.wait().unwrap();
    let started = starts(f, "v1");
    assert_eq!(started, 1);

    let resumers: Vec<Child> = (0..n).map(|_| f.spawn(&["resume"])).collect();
    let outs: Vec<_> = resumers
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut finished = 0;
    for o in &outs {
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        match o.status.code() {
            Some(0) if stdout.contains("rolled test back") => finished += 1,
            Some(0) => assert!(
                stdout.contains("nothing to resume") || stderr.contains("nothing to resume"),
                "{stdout}\n{stderr}"
            ),
            Some(3) => assert!(stderr.contains("is locked by run"), "{stderr}"),
            other => panic!("resume exited {other:?}\n{stdout}\n{stderr}"),
        }
    }
    assert_eq!(
        finished, 1,
        "exactly one resume finishes the run: {outs:#?}"
    );
    // The restart that was killed plus exactly one more.
    assert_eq!(starts(f, "v1"), 2, "{outs:#?}");
    assert_eq!(f.current(), "releases/v1");
    assert_eq!(f.frontend(), "v1");
    // Every step closed exactly once.
    assert_run_complete(&f.last_run(), "concurrent resumes");
    audit_ok(f);
    let s = f.run(&["--json", "status"]).json();
    assert!(s["lock"].is_null(), "{s:#}");
    assert!(s["unfinished_run"].is_null(), "{s:#}");
}

#[test]
fn resume_is_blocked_while_the_holder_lives_sqlite() {
    resume_blocked_while_the_holder_lives(&slow_restart_fixture(None));
}

#[tokio::test]
async fn resume_is_blocked_while_the_holder_lives_postgres() {
    let url = fresh_pg_database("lock-secret-1").await;
    let f = slow_restart_fixture(Some(url));
    tokio::task::spawn_blocking(move || resume_blocked_while_the_holder_lives(&f))
        .await
        .unwrap();
}

#[test]
fn six_resumes_after_a_kill_run_each_step_once_sqlite() {
    concurrent_resumes_after_a_kill(&slow_restart_fixture(None), 6);
}

#[tokio::test]
async fn six_resumes_after_a_kill_run_each_step_once_postgres() {
    let url = fresh_pg_database("lock-secret-2").await;
    let f = slow_restart_fixture(Some(url));
    tokio::task::spawn_blocking(move || concurrent_resumes_after_a_kill(&f, 6))
        .await
        .unwrap();
}

fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

fn lines(f: &Fixture, file: &str) -> usize {
    std::fs::read_to_string(f.path(file))
        .unwrap_or_default()
        .lines()
        .count()
}

/// A holder frozen past `lock-stale-after` loses its lock to `resume`, which finishes the run.
/// Thawed, the old holder must stop at once: no journal line, no ledger change, no audit entry,
/// no command run (the frontend's `current` command logs each call), and an error that says it
/// lost the lock and to whom.
fn a_thawed_holder_that_lost_its_lock_stops(f: &Fixture) {
    let config = std::fs::read_to_string(f.path("rewind.toml")).unwrap();
    let config = config
        .replacen(
            "name = \"test\"",
            "name = \"test\"\nlock-stale-after = \"5s\"",
            1,
        )
        .replacen(
            "current = \"cat fe-version\"",
            "current = \"echo called >> current.log; cat fe-version\"",
            1,
        );
    std::fs::write(f.path("rewind.toml"), config).unwrap();
    f.run(&["check"]).ok();

    let mut old = f.spawn(&["rollback", "--yes"]);
    wait_for_restart(f, &mut old);
    signal(old.id(), "STOP");
    std::thread::sleep(Duration::from_secs(8));
    // The resume takes the stale lock over and finishes the run (quickly: no more sleeping).
    std::fs::remove_file(f.path("slow")).unwrap();
    let resumed = f.run(&["resume"]);
    resumed.ok();
    assert!(
        resumed.stderr.contains("took over the lock"),
        "{}",
        resumed.all()
    );
    let run_before = f.last_run();
    assert_run_complete(&run_before, "the resume");
    let audit_before = f.run(&["--json", "audit", "log"]).json()["entries"]
        .as_array()
        .unwrap()
        .len();
    let currents = lines(f, "current.log");
    let restarts = lines(f, "restarts.log");
    let ledger = f.ledger();

    signal(old.id(), "CONT");
    let out = old.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("lost the lock"), "{stderr}");
    assert!(
        stderr.contains("changes nothing more"),
        "says it stops: {stderr}"
    );

    let run_after = f.last_run();
    assert_eq!(
        run_after["journal"], run_before["journal"],
        "the old holder wrote to the journal after losing its lock"
    );
    assert_eq!(run_after["run"]["status"], "succeeded", "{run_after:#}");
    assert_run_complete(&run_after, "after the old holder woke");
    let audit_after = f.run(&["--json", "audit", "log"]).json()["entries"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        audit_after, audit_before,
        "no audit entry from the old holder"
    );
    assert_eq!(f.ledger(), ledger);
    assert_eq!(
        lines(f, "current.log"),
        currents,
        "the old holder ran a command"
    );
    assert_eq!(lines(f, "restarts.log"), restarts);
    assert_eq!(f.current(), "releases/v1");
    assert_eq!(f.frontend(), "v1");
    audit_ok(f);
    let s = f.run(&["--json", "status"]).json();
    assert!(s["lock"].is_null(), "{s:#}");
}

#[test]
fn a_holder_that_lost_its_lock_writes_nothing_more_sqlite() {
    a_thawed_holder_that_lost_its_lock_stops(&slow_restart_fixture(None));
}

#[tokio::test]
async fn a_holder_that_lost_its_lock_writes_nothing_more_postgres() {
    let url = fresh_pg_database("lock-secret-3").await;
    let f = slow_restart_fixture(Some(url));
    tokio::task::spawn_blocking(move || a_thawed_holder_that_lost_its_lock_stops(&f))
        .await
        .unwrap();
}
