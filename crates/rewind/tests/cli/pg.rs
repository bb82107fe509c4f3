//! The same story on a PostgreSQL state store (the server `scripts/test` starts): deploy,
//! rollback, a kill and resume, the lock race, the audit chain — and the URL's password never
//! appears anywhere.

use crate::common::*;

#[tokio::test]
async fn the_story_on_a_postgresql_state_store() {
    let secret = "pw-never-shown-4711".to_string();
    let url = fresh_pg_database(&secret).await;
    let f = Fixture::with(Setup {
        restart: "sleep 0.5; echo \"$REWIND_RELEASE\" >> restarts.log".into(),
        state: Some(url.clone()),
        ..Setup::default()
    });
    let mut outs = vec![f.deploy("v1"), f.deploy("v2")];
    for o in &outs {
        o.ok();
    }
    let check = f.run(&["check"]);
    check.ok();
    assert!(
        check.stdout.contains("postgres://postgres:***@"),
        "{}",
        check.all()
    );
    outs.push(check);

    // Killed in the middle of the switch, then finished by resume.
    let killed = f.run_env(
        &["rollback", "--yes"],
        &[("REWIND_CRASH_AT", "mid:web.switch")],
    );
    assert_eq!(killed.signal, Some(9), "{}", killed.all());
    let resumed = f.run(&["resume"]);
    resumed.ok();
    assert_eq!(f.current(), "releases/v1");
    assert_eq!(f.frontend(), "v1");
    assert_run_complete(&f.last_run(), "postgres resume");
    let (current, releases) = f.ledger();
    assert_eq!(current.as_deref(), Some("v1"));
    assert_eq!(releases[1], ("v2".to_string(), "rolled-back".to_string()));
    outs.push(resumed);

    // Two rollbacks at once (forward to v2 with --force): one runs, one is blocked.
    let a = f.spawn(&["rollback", "--yes", "--to", "v2", "--force"]);
    let b = f.spawn(&["rollback", "--yes", "--to", "v2", "--force"]);
    let mut codes = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()]
        .iter()
        .map(|o| {
            (
                o.status.code(),
                String::from_utf8_lossy(&o.stderr).to_string(),
            )
        })
        .collect::<Vec<_>>();
    codes.sort();
    assert_eq!(codes[0].0, Some(0), "{codes:#?}");
    assert_eq!(codes[1].0, Some(3), "{codes:#?}");
    assert!(codes[1].1.contains("is locked by run"), "{codes:#?}");
    assert_eq!(f.current(), "releases/v2");

    let verify = f.run(&["audit", "verify"]);
    verify.ok();
    outs.push(verify);
    for args in [
        &["--json", "status"][..],
        &["--json", "history"],
        &["--json", "audit", "log"],
        &["status"],
    ] {
        let o = f.run(args);
        o.ok();
        outs.push(o);
    }
    for o in &outs {
        assert!(!o.all().contains(&secret), "password leaked:\n{}", o.all());
    }
    for (_, err) in &codes {
        assert!(!err.contains(&secret));
    }

    // A state URL pointing at nothing fails with exit 1, a clear message, and no password.
    let bad = Fixture::with(Setup {
        state: Some(format!("postgres://postgres:{secret}@127.0.0.1:1/nodb")),
        ..Setup::default()
    });
    let o = bad.run(&["status"]);
    o.code(1);
    assert!(
        o.stderr.contains("is unreachable: connection refused"),
        "{}",
        o.all()
    );
    assert!(!o.all().contains(&secret), "{}", o.all());
}
