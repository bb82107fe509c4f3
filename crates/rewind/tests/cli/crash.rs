//! Crash safety: `rewind rollback` (and `deploy`) killed with a real SIGKILL at every step
//! boundary and in the middle of every step, then finished by `resume` (or by the next
//! `rollback`, which says it is resuming). Every kill point must end in the same state as a run
//! that was never interrupted: `current`, the ledger, the journal and the audit chain.

use crate::common::*;

const PHASES: &[&str] = &["before", "after-begin", "mid", "after-action"];

/// v1 and v2 deployed; v2 is current.
fn baseline() -> Fixture {
    let f = Fixture::new();
    f.deploy("v1").ok();
    f.deploy("v2").ok();
    assert_eq!(f.current(), "releases/v2");
    f
}

struct Final {
    current: String,
    frontend: String,
    ledger: (Option<String>, Vec<(String, String)>),
    recorded: Vec<(String, String)>,
}

fn final_state(f: &Fixture) -> Final {
    Final {
        current: f.current(),
        frontend: f.frontend(),
        ledger: f.ledger(),
        recorded: f.recorded(),
    }
}

fn assert_same(got: &Final, want: &Final, ctx: &str) {
    assert_eq!(got.current, want.current, "{ctx}: current");
    assert_eq!(got.frontend, want.frontend, "{ctx}: frontend");
    assert_eq!(got.ledger, want.ledger, "{ctx}: ledger");
    assert_eq!(got.recorded, want.recorded, "{ctx}: recorded versions");
}

#[test]
fn rollback_killed_at_every_point_resumes_to_the_same_state() {
    let base = baseline();

    // The reference: an uninterrupted rollback.
    let clean = base.copy();
    clean.run(&["rollback", "--yes"]).ok();
    let want = final_state(&clean);
    assert_eq!(want.current, "releases/v1");
    assert_eq!(want.frontend, "v1");
    assert_eq!(want.ledger.0.as_deref(), Some("v1"));
    assert_run_complete(&clean.last_run(), "uninterrupted");

    let plan = base.run(&["--json", "plan"]);
    plan.ok();
    let steps: Vec<String> = plan.json()["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert!(steps.len() >= 7, "{steps:?}");

    let mut n = 0;
    for step in &steps {
        for phase in PHASES {
            n += 1;
            let ctx = format!("kill at {phase}:{step}");
            let f = base.copy();
            let point = format!("{phase}:{step}");
            let killed = f.run_env(&["rollback", "--yes"], &[("REWIND_CRASH_AT", &point)]);
            assert_eq!(
                killed.signal,
                Some(9),
                "{ctx}: expected SIGKILL\n{}",
                killed.all()
            );

            // Half the time `resume`, half the time the next `rollback`, which must say it
            // is resuming.
            if n % 2 == 0 {
                let r = f.run(&["resume"]);
                r.ok();
                assert!(r.stderr.contains("resuming"), "{ctx}\n{}", r.all());
            } else {
                let r = f.run(&["rollback", "--yes"]);
                r.ok();
                assert!(r.stderr.contains("resuming"), "{ctx}\n{}", r.all());
            }
            assert_same(&final_state(&f), &want, &ctx);
            assert_run_complete(&f.last_run(), &ctx);
            audit_ok(&f);
            // Nothing half-done is left behind in the app root.
            let leftovers: Vec<_> = ["srv", "srv/releases"]
                .iter()
                .flat_map(|d| std::fs::read_dir(f.path(d)).unwrap().flatten())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(".rewind-"))
                .collect();
            assert!(leftovers.is_empty(), "{ctx}: {leftovers:?}");
            // A second resume has nothing to do.
            let again = f.run(&["resume"]);
            again.ok();
            assert!(
                again.stdout.contains("nothing to resume"),
                "{ctx}\n{}",
                again.all()
            );
        }
    }
    assert_eq!(n, steps.len() * PHASES.len());
}

#[test]
fn deploy_killed_at_every_point_resumes_to_the_same_state() {
    let base = Fixture::new();
    base.deploy("v1").ok();

    let clean = base.copy();
    clean.deploy("v2").ok();
    let want = final_state(&clean);
    assert_eq!(want.current, "releases/v2");

    let art = format!("web={}", base.path("art/v2").display());
    let clean_run = clean.last_run();
    let steps: Vec<String> = clean_run["run"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    for step in &steps {
        for phase in PHASES {
            let ctx = format!("deploy killed at {phase}:{step}");
            let f = base.copy();
            let art = art.replace(
                &base.dir.path().display().to_string(),
                &f.dir.path().display().to_string(),
            );
            let point = format!("{phase}:{step}");
            let killed = f.run_env(
                &["deploy", "v2", "--artifact", &art],
                &[("REWIND_CRASH_AT", &point)],
            );
            assert_eq!(
                killed.signal,
                Some(9),
                "{ctx}: expected SIGKILL\n{}",
                killed.all()
            );
            // A new deploy is blocked by the unfinished run.
            let blocked = f.deploy("v3");
            blocked.code(3);
            assert!(
                blocked.stderr.contains("unfinished"),
                "{ctx}\n{}",
                blocked.all()
            );
            f.run(&["resume"]).ok();
            assert_same(&final_state(&f), &want, &ctx);
            assert_run_complete(&f.last_run(), &ctx);
            audit_ok(&f);
        }
    }
}

#[test]
fn an_interrupted_deploy_is_abandoned_by_rollback_and_marked_failed() {
    let f = Fixture::new();
    f.deploy("v1").ok();
    let art = format!("web={}", f.path("art/v2").display());
    let killed = f.run_env(
        &["deploy", "v2", "--artifact", &art],
        &[("REWIND_CRASH_AT", "mid:web.switch")],
    );
    assert_eq!(killed.signal, Some(9));
    let r = f.run(&["rollback", "--yes"]);
    r.ok();
    assert!(
        r.stderr.contains("abandoning the unfinished deploy"),
        "{}",
        r.all()
    );
    assert_eq!(f.current(), "releases/v1");
    let (current, releases) = f.ledger();
    assert_eq!(current.as_deref(), Some("v1"));
    assert_eq!(
        releases,
        vec![
            ("v1".into(), "good".into()),
            ("v2".into(), "rolled-back".into())
        ]
    );
    audit_ok(&f);
}

/// A kill from outside at an arbitrary moment (not at a chosen point): the restart command is
/// slow, so many kills land while it runs.
#[test]
fn rollback_killed_from_outside_at_random_moments_resumes() {
    let base = Fixture::with(Setup {
        restart: "sleep 0.15; echo \"$REWIND_RELEASE\" >> restarts.log".into(),
        ..Setup::default()
    });
    base.deploy("v1").ok();
    base.deploy("v2").ok();
    // A fixed-seed LCG: the delays differ per iteration but every run of the test is the same.
    let mut seed: u64 = 0x5eed;
    for i in 0..10 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = 5 + (seed >> 33) % 250;
        let f = base.copy();
        let mut child = f.spawn(&["rollback", "--yes"]);
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let _ = std::process::Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .status();
        let _ = child.wait();
        let ctx = format!("iteration {i}, killed after {delay} ms");
        // Whether it was killed before it recorded anything, mid-way, or after it finished,
        // one more `rollback` (resuming if needed) leaves v1 running.
        let r = f.run(&["rollback", "--yes"]);
        if f.current() != "releases/v1" || r.code != Some(1) {
            r.ok();
        }
        assert_eq!(f.current(), "releases/v1", "{ctx}\n{}", r.all());
        assert_eq!(f.frontend(), "v1", "{ctx}");
        let (current, releases) = f.ledger();
        assert_eq!(current.as_deref(), Some("v1"), "{ctx}");
        assert_eq!(
            releases[1],
            ("v2".to_string(), "rolled-back".to_string()),
            "{ctx}"
        );
        audit_ok(&f);
    }
}

#[test]
fn ctrl_c_stops_at_a_step_boundary_and_leaves_a_resumable_run() {
    stops_at_a_step_boundary("-INT", "Ctrl-C");
}

/// SIGTERM (`systemctl stop`, `docker stop`, `kill`) stops at a step boundary as Ctrl-C does,
/// instead of cutting the running step off.
#[test]
fn sigterm_stops_at_a_step_boundary_and_leaves_a_resumable_run() {
    stops_at_a_step_boundary("-TERM", "SIGTERM");
}

fn stops_at_a_step_boundary(signal: &str, said: &str) {
    let f = Fixture::with(Setup {
        restart: "sleep 0.6; echo \"$REWIND_RELEASE\" >> restarts.log".into(),
        ..Setup::default()
    });
    f.deploy("v1").ok();
    f.deploy("v2").ok();
    let child = f.spawn(&["rollback", "--yes"]);
    // Wait until the slow restart step has begun, then press "Ctrl-C".
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let h = f.run(&["--json", "history"]);
        let run = &h.json()["runs"][0];
        if run["kind"] == "rollback" {
            let id = run["id"].as_str().unwrap().to_string();
            let d = f.run(&["--json", "history", "--run", &id]).json();
            if d["journal"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["step_id"] == "web.restart" && e["event"] == "begin")
            {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "restart never began");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("interrupted ({said})")),
        "{stderr}"
    );
    assert!(stderr.contains("rewind resume"), "{stderr}");
    // The restart step that was running finished; the ready step did not start.
    let run = f.last_run();
    assert_eq!(run["run"]["status"], "interrupted");
    let journal = run["journal"].as_array().unwrap();
    assert!(
        journal
            .iter()
            .any(|e| e["step_id"] == "web.restart" && e["event"] == "done")
    );
    assert!(!journal.iter().any(|e| e["step_id"] == "web.ready"));
    let status = f.run(&["status"]);
    assert!(status.stdout.contains("unfinished"), "{}", status.all());
    f.run(&["resume"]).ok();
    assert_eq!(f.current(), "releases/v1");
    assert_run_complete(&f.last_run(), &format!("after {said}"));
    audit_ok(&f);
}
