//! One run per environment: two rollbacks started together — exactly one runs, the other
//! exits 3 naming the holder.

use crate::common::*;

#[test]
fn two_rollbacks_started_together_one_runs_the_other_is_blocked() {
    let f = Fixture::with(Setup {
        restart: "sleep 1; echo \"$REWIND_RELEASE\" >> restarts.log".into(),
        ..Setup::default()
    });
    f.deploy("v1").ok();
    f.deploy("v2").ok();
    let a = f.spawn(&["rollback", "--yes"]);
    let b = f.spawn(&["rollback", "--yes"]);
    let (pid_a, pid_b) = (a.id(), b.id());
    let oa = a.wait_with_output().unwrap();
    let ob = b.wait_with_output().unwrap();
    let mut results = [
        (
            oa.status.code(),
            pid_a,
            pid_b,
            String::from_utf8_lossy(&oa.stderr).to_string(),
        ),
        (
            ob.status.code(),
            pid_b,
            pid_a,
            String::from_utf8_lossy(&ob.stderr).to_string(),
        ),
    ];
    results.sort_by_key(|r| r.0);
    assert_eq!(results[0].0, Some(0), "one must succeed: {results:#?}");
    assert_eq!(
        results[1].0,
        Some(3),
        "the other must be blocked: {results:#?}"
    );
    let (_, _, winner, loser_err) = &results[1];
    assert!(loser_err.contains("is locked by run"), "{loser_err}");
    assert!(
        loser_err.contains(&format!("pid {winner}")),
        "names the holder's pid: {loser_err}"
    );
    assert!(loser_err.contains('@'), "names who holds it: {loser_err}");
    assert_eq!(f.current(), "releases/v1");
    // Exactly one rollback run was recorded.
    let h = f.run(&["--json", "history"]).json();
    let rollbacks = h["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "rollback")
        .count();
    assert_eq!(rollbacks, 1);
    // The lock is gone afterwards.
    let s = f.run(&["--json", "status"]).json();
    assert!(s["lock"].is_null(), "{s:#}");
    audit_ok(&f);
}

#[test]
fn a_live_holder_blocks_a_deploy_and_status_shows_it() {
    let f = Fixture::with(Setup {
        restart: "sleep 1.5".into(),
        ..Setup::default()
    });
    f.deploy("v1").ok();
    let art = format!("web={}", f.path("art/v2").display());
    let long = f.spawn(&["deploy", "v2", "--artifact", &art]);
    // Wait until it holds the lock.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let s = f.run(&["--json", "status"]).json();
        if !s["lock"].is_null() {
            assert_eq!(s["lock"]["pid"].as_u64(), Some(long.id() as u64));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never locked");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let blocked = f.deploy("v3");
    blocked.code(3);
    assert!(
        blocked.stderr.contains(&format!("pid {}", long.id())),
        "{}",
        blocked.all()
    );
    let out = long.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    // v3 was not recorded by the blocked attempt.
    let (_, releases) = f.ledger();
    assert_eq!(releases.len(), 2);
}

/// While a live holder runs, `plan` and `plan --deploy` say the command would be refused, by
/// whom, and exit 3 as the command would.
#[test]
fn plans_are_refused_with_exit_3_while_a_live_holder_runs() {
    let f = Fixture::with(Setup {
        restart: "echo \"start $REWIND_RELEASE\" >> ../starts.log; \
                  while [ -f ../hold ]; do sleep 0.05; done"
            .into(),
        ..Setup::default()
    });
    f.deploy("v1").ok();
    f.deploy("v2").ok();
    std::fs::write(f.path("hold"), "").unwrap();
    let art = format!("web={}", f.path("art/v3").display());
    let long = f.spawn(&["deploy", "v3", "--artifact", &art]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(f.path("starts.log"))
        .unwrap_or_default()
        .contains("start v3")
    {
        assert!(std::time::Instant::now() < deadline, "v3 never restarted");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = format!("pid {}", long.id());

    let plan = f.run(&["plan"]);
    plan.code(3);
    assert!(plan.stdout.contains("would REFUSE"), "{}", plan.all());
    assert!(plan.stderr.contains(&pid), "{}", plan.all());
    let json = f.run(&["--json", "plan"]);
    json.code(3);
    assert_eq!(json.json()["detail"]["refused"], true, "{}", json.all());
    let rollback = f.run(&["rollback", "--yes"]);
    rollback.code(3);

    let art4 = format!("web={}", f.path("art/v4").display());
    let plan = f.run(&["plan", "--deploy", "v4", "--artifact", &art4]);
    plan.code(3);
    assert!(plan.stdout.contains("would REFUSE"), "{}", plan.all());
    assert!(
        plan.stderr.contains(&pid),
        "names the holder\n{}",
        plan.all()
    );
    f.deploy("v4").code(3);

    std::fs::remove_file(f.path("hold")).unwrap();
    let out = long.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // Free again: the plans go back to exit 0.
    f.run(&["plan"]).ok();
    f.run(&["plan", "--deploy", "v4", "--artifact", &art4]).ok();
    assert_eq!(f.ledger().1.len(), 3);
}
