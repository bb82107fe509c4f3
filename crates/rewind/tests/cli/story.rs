//! The user's story, start to finish, through the binary: deploy, status, history, plan,
//! rollback (whole and per component), a failing deploy, pruning, tarball artifacts, and
//! secrets that never reach the output.

use crate::common::*;

#[test]
fn deploy_roll_back_and_the_ledger_keeps_everything() {
    let f = Fixture::new();
    let first = f.deploy("v1");
    first.ok();
    assert!(first.stdout.contains("deployed v1"), "{}", first.all());
    f.deploy("v2").ok();
    assert_eq!(f.current(), "releases/v2");
    assert_eq!(f.frontend(), "v2");
    assert_eq!(
        std::fs::read_to_string(f.path("srv/current/VERSION")).unwrap(),
        "v2"
    );

    let status = f.run(&["--json", "status"]);
    status.ok();
    let s = status.json();
    assert_eq!(s["current"]["name"], "v2");
    assert_eq!(s["current"]["state"], "good");
    assert_eq!(s["components"][0]["live"], "v2");
    assert_eq!(s["components"][1]["live"], "v2");
    assert_eq!(s["components"][0]["drift"], false);

    // plan shows the steps and changes nothing.
    let plan = f.run(&["plan"]);
    plan.ok();
    assert!(plan.stdout.contains("from v2 to v1"), "{}", plan.all());
    assert!(plan.stdout.contains("point"), "{}", plan.all());
    assert_eq!(f.current(), "releases/v2");
    let pj = f.run(&["--json", "plan"]).json();
    assert_eq!(pj["to"], "v1");
    assert!(pj["steps"].as_array().unwrap().len() >= 7);

    let rb = f.run(&["--json", "rollback", "--yes"]);
    rb.ok();
    let j = rb.json();
    assert_eq!(j["status"], "succeeded");
    assert_eq!(j["release"], "v1");
    assert_eq!(f.current(), "releases/v1");
    assert_eq!(f.frontend(), "v1");

    let (current, releases) = f.ledger();
    assert_eq!(current.as_deref(), Some("v1"));
    assert_eq!(
        releases,
        vec![
            ("v1".into(), "good".into()),
            ("v2".into(), "rolled-back".into())
        ]
    );
    // The faulty release stays on disk and in the ledger (seed 001: keep the audit trail).
    assert!(f.path("srv/releases/v2").is_dir());

    // Nothing older than v1 is known-good: a second rollback has nowhere to go. Like every
    // other target that cannot be chosen, that is exit 2 (ask for another target).
    let again = f.run(&["rollback", "--yes"]);
    again.code(2);
    assert!(
        again.stderr.contains("no known-good release before"),
        "{}",
        again.all()
    );

    // Going forward again to a rolled-back release needs --force.
    f.run(&["rollback", "--yes", "--to", "v2"]).code(2);
    f.run(&["rollback", "--yes", "--to", "v2", "--force"]).ok();
    assert_eq!(f.current(), "releases/v2");

    // Restore points were recorded before every change.
    let run = f.last_run();
    assert!(
        run["journal"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["step_id"] == "web.restore-point" && e["event"] == "done")
    );
    let text = f.run(&["history"]);
    text.ok();
    assert!(text.stdout.contains("rolled-back"), "{}", text.all());
    audit_ok(&f);
}

#[test]
fn rolling_back_one_component_leaves_the_others() {
    let f = Fixture::new();
    f.deploy("v1").ok();
    f.deploy("v2").ok();
    f.run(&["rollback", "--yes", "--component", "frontend"])
        .ok();
    assert_eq!(f.frontend(), "v1");
    assert_eq!(f.current(), "releases/v2", "web untouched");
    let recorded = f.recorded();
    assert_eq!(
        recorded,
        vec![
            ("web".into(), "v2".into()),
            ("frontend".into(), "v1".into())
        ]
    );
    // v2 is still current (web runs it); rolling back the rest finishes the job.
    let (current, _) = f.ledger();
    assert_eq!(current.as_deref(), Some("v2"));
    f.run(&["rollback", "--yes", "--component", "web"]).ok();
    let (current, releases) = f.ledger();
    assert_eq!(current.as_deref(), Some("v1"));
    assert_eq!(releases[1].1, "rolled-back");
}

#[test]
fn a_failing_deploy_is_marked_failed_and_rollback_goes_to_the_last_good() {
    let f = Fixture::with(Setup {
        restart: "test \"$REWIND_RELEASE\" != v3 || { echo v3-will-not-start >&2; exit 7; }".into(),
        ..Setup::default()
    });
    f.deploy("v1").ok();
    f.deploy("v2").ok();
    let bad = f.deploy("v3");
    bad.code(1);
    assert!(bad.stderr.contains("v3-will-not-start"), "{}", bad.all());
    assert!(bad.stderr.contains("exit code 7"), "{}", bad.all());
    assert!(
        bad.stderr.contains("rewind rollback"),
        "hint: {}",
        bad.all()
    );
    let (current, releases) = f.ledger();
    assert_eq!(current.as_deref(), Some("v3"));
    assert_eq!(releases[2], ("v3".into(), "failed".into()));
    assert_eq!(
        f.current(),
        "releases/v3",
        "the switch happened before the restart failed"
    );
    // The failure output is in the journal.
    let run = f.last_run();
    let failed = run["journal"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "failed")
        .unwrap()
        .clone();
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("v3-will-not-start")
    );
    // Default target: the most recent known-good before the failed one.
    let pj = f.run(&["--json", "plan"]).json();
    assert_eq!(pj["to"], "v2");
    f.run(&["rollback", "--yes"]).ok();
    assert_eq!(f.current(), "releases/v2");
    assert_eq!(f.frontend(), "v2");
    let (current, releases) = f.ledger();
    assert_eq!(current.as_deref(), Some("v2"));
    assert_eq!(releases[2], ("v3".into(), "rolled-back".into()));
}

#[test]
fn old_releases_are_pruned_but_never_current_or_last_good() {
    let f = Fixture::with(Setup {
        keep: 2,
        ..Setup::default()
    });
    for v in ["v1", "v2", "v3", "v4"] {
        f.deploy(v).ok();
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(f.path("srv/releases"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, vec!["v3", "v4"]);
    // A directory rewind did not record is left alone.
    std::fs::create_dir_all(f.path("srv/releases/hand-made")).unwrap();
    f.deploy("v5").ok();
    assert!(f.path("srv/releases/hand-made").is_dir());
    assert!(!f.path("srv/releases/v3").exists());
    // Rolling back to a pruned release is refused before anything changes.
    let r = f.run(&["rollback", "--yes", "--to", "v1"]);
    r.code(2);
    assert!(r.stderr.contains("no longer on disk"), "{}", r.all());
    assert_eq!(f.current(), "releases/v5");
    // The hint is one that works: put the release back where it was, and roll back.
    assert!(
        r.stderr.contains("put the release back there") && !r.stderr.contains("deploy it again"),
        "{}",
        r.all()
    );
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(f.path("art/v1"))
        .arg(f.path("srv/releases/v1"))
        .status()
        .unwrap();
    assert!(st.success());
    f.run(&["rollback", "--yes", "--to", "v1"]).ok();
    assert_eq!(f.current(), "releases/v1");
}

#[test]
fn tarball_artifacts_are_unpacked() {
    let f = Fixture::new();
    let tgz = f.path("v1.tar.gz");
    let st = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(f.path("art/v1"))
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    f.run(&[
        "deploy",
        "v1",
        "--artifact",
        &format!("web={}", tgz.display()),
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(f.path("srv/current/assets/app.js")).unwrap(),
        "console.log('v1')"
    );
}

#[test]
fn secrets_never_reach_output_journal_or_audit() {
    let secret = "s3cr3t-value-of-the-token";
    let f = Fixture::with(Setup {
        extra: "\n[components.api]\nkind = \"command\"\ndeploy = \"echo using $VERCEL_TOKEN for {release}; echo token=$MY_KEY >&2\"\nrollback = \"echo back to {release} with $MY_KEY\"\nsecret-env = [\"MY_KEY\"]\n".into(),
        ..Setup::default()
    });
    let env = [("VERCEL_TOKEN", secret), ("MY_KEY", "another-secret-key")];
    let art = format!("web={}", f.path("art/v1").display());
    let mut outs = vec![f.run_env(&["deploy", "v1", "--artifact", &art], &env)];
    let art = format!("web={}", f.path("art/v2").display());
    outs.push(f.run_env(&["--json", "deploy", "v2", "--artifact", &art], &env));
    outs.push(f.run_env(&["--json", "rollback", "--yes"], &env));
    for args in [
        &["--json", "history"][..],
        &["--json", "audit", "log"],
        &["audit", "log"],
        &["--json", "status"],
        &["history"],
    ] {
        outs.push(f.run_env(args, &env));
    }
    let run = f.run_env(&["--json", "history"], &env).json();
    for r in run["runs"].as_array().unwrap() {
        outs.push(f.run_env(
            &["--json", "history", "--run", r["id"].as_str().unwrap()],
            &env,
        ));
    }
    let mut saw_mask = false;
    for o in &outs {
        assert_eq!(o.code, Some(0), "{}", o.all());
        let all = o.all();
        assert!(
            !all.contains(secret) && !all.contains("another-secret-key"),
            "secret leaked:\n{all}"
        );
        saw_mask |= all.contains("***");
    }
    assert!(saw_mask, "the captured output shows the masked value");
    // The raw state store holds no secret either.
    let raw = std::fs::read(f.state_db()).unwrap();
    let wal = std::fs::read(f.path(".rewind/state.db-wal")).unwrap_or_default();
    for bytes in [raw, wal] {
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(secret) && !text.contains("another-secret-key"));
    }
}

/// A rollback to the release that is already current changes nothing and says so; after a
/// partial rollback, going back to the current release moves only the components that left
/// it, and the current release is never marked rolled-back.
#[test]
fn rolling_back_to_the_current_release_changes_nothing() {
    let f = Fixture::new();
    f.deploy("v1").ok();
    f.deploy("v2").ok();
    let runs_before = f.run(&["--json", "history"]).json()["runs"]
        .as_array()
        .unwrap()
        .len();
    for args in [
        &["rollback", "--to", "v2", "--yes"][..],
        &["rollback", "--to", "v2", "--force", "--yes"][..],
    ] {
        let out = f.run(args);
        out.ok();
        assert!(
            out.stdout.contains("already the current release")
                && out.stdout.contains("nothing was changed"),
            "{}",
            out.all()
        );
        assert!(!out.all().contains("marked rolled-back"), "{}", out.all());
    }
    let plan = f.run(&["plan", "--to", "v2"]);
    plan.ok();
    assert!(
        plan.stdout.contains("nothing to roll back"),
        "{}",
        plan.all()
    );
    let json = f.run(&["--json", "rollback", "--to", "v2", "--yes"]);
    json.ok();
    assert_eq!(json.json()["status"], "nothing-to-do");
    let (current, releases) = f.ledger();
    assert_eq!(current.as_deref(), Some("v2"));
    assert_eq!(releases[1], ("v2".to_string(), "good".to_string()));
    assert_eq!(
        f.run(&["--json", "history"]).json()["runs"]
            .as_array()
            .unwrap()
            .len(),
        runs_before,
        "no run was recorded"
    );

    // frontend alone goes back to v1; then back to v2, only frontend moves.
    f.run(&["rollback", "--component", "frontend", "--yes"])
        .ok();
    assert_eq!(f.frontend(), "v1");
    let back = f.run(&["rollback", "--to", "v2", "--yes"]);
    back.ok();
    assert_eq!(f.frontend(), "v2");
    assert!(
        !back.stderr.contains("web:"),
        "web does not move\n{}",
        back.all()
    );
    assert!(
        back.stderr
            .contains("it stays current; nothing is marked rolled-back"),
        "{}",
        back.all()
    );
    let (current, releases) = f.ledger();
    assert_eq!(current.as_deref(), Some("v2"));
    assert_eq!(releases[1], ("v2".to_string(), "good".to_string()));
    assert_eq!(f.current(), "releases/v2");

    // `current` switched by hand to v1 while the ledger says v2: rolling back "to v2" is not
    // nothing — what runs moves back to v2 (and nothing is marked rolled-back).
    std::os::unix::fs::symlink("releases/v1", f.path("srv/current.tmp")).unwrap();
    std::fs::rename(f.path("srv/current.tmp"), f.path("srv/current")).unwrap();
    let plan = f.run(&["plan", "--to", "v2"]);
    plan.ok();
    assert!(
        !plan.stdout.contains("nothing to roll back") && plan.stdout.contains("web:"),
        "{}",
        plan.all()
    );
    let fixed = f.run(&["rollback", "--to", "v2", "--yes"]);
    fixed.ok();
    assert_eq!(f.current(), "releases/v2", "{}", fixed.all());
    assert!(
        fixed
            .stderr
            .contains("it stays current; nothing is marked rolled-back"),
        "{}",
        fixed.all()
    );
    let (current, releases) = f.ledger();
    assert_eq!(current.as_deref(), Some("v2"));
    assert_eq!(releases[1], ("v2".to_string(), "good".to_string()));
    audit_ok(&f);
}
