//! What a newcomer hits: a plan says exactly what the command will do (and refuses as it
//! would), `--json` answers every error on stdout, and arguments that make no sense are
//! refused instead of read as something else.

use crate::common::*;

#[test]
fn plan_deploy_says_what_deploy_would_do_with_and_without_an_artifact() {
    let f = Fixture::new();
    f.deploy("v1").ok();
    // No artifact and nothing on disk: deploy refuses, so the plan says so and exits as
    // deploy would.
    let plan = f.run(&["plan", "--deploy", "v7"]);
    plan.code(2);
    assert!(
        plan.stdout.contains("would REFUSE"),
        "the plan says the deploy would not start\n{}",
        plan.all()
    );
    assert!(
        plan.stderr
            .contains("releases/v7 does not exist and no artifact was given"),
        "{}",
        plan.all()
    );
    assert!(!plan.stdout.contains("(already on disk)"), "{}", plan.all());
    let deploy = f.run(&["deploy", "v7"]);
    deploy.code(2);
    // With the artifact the usual deploy is previewed: the copy is planned.
    let art = format!("web={}", f.path("art/v2").display());
    let plan = f.run(&["plan", "--deploy", "v2", "--artifact", &art]);
    plan.ok();
    assert!(
        plan.stdout
            .contains(&format!("copy {} into", f.path("art/v2").display())),
        "{}",
        plan.all()
    );
    let json = f.run(&["--json", "plan", "--deploy", "v2", "--artifact", &art]);
    json.ok();
    assert_eq!(json.json()["refused"], false);
    // A bad artifact is refused by the plan exactly as by the deploy.
    let bad = f.run(&["plan", "--deploy", "v2", "--artifact", "web=/nonexistent/x"]);
    bad.code(2);
    assert!(bad.stderr.contains("does not exist"), "{}", bad.all());
    // Nothing was recorded by any of it.
    assert_eq!(f.ledger().1.len(), 1);
}

#[test]
fn json_mode_answers_usage_errors_on_stdout() {
    let f = Fixture::new();
    for args in [
        &["--json", "rollback", "--bogus"][..],
        &["deploy", "--json"][..],
        &["--json", "audit", "log", "--last", "zero"][..],
    ] {
        let out = f.run(args);
        out.code(2);
        let j = out.json();
        assert_eq!(j["ok"], false, "{args:?}");
        assert_eq!(j["exit_code"], 2, "{args:?}");
        assert!(
            !j["error"].as_str().unwrap_or("").is_empty(),
            "{args:?}: {j:#}"
        );
        // The human text is still on stderr.
        assert!(out.stderr.contains("error:"), "{args:?}\n{}", out.all());
    }
    // --help is not an error.
    let help = f.run(&["--json", "deploy", "--help"]);
    help.ok();
    assert!(
        help.stdout.contains("Usage: rewind deploy"),
        "{}",
        help.all()
    );
}

#[test]
fn audit_log_last_zero_is_refused_not_read_as_empty() {
    let f = Fixture::new();
    f.deploy("v1").ok();
    let out = f.run(&["audit", "log", "--last", "0"]);
    out.code(2);
    assert!(
        !out.all().contains("the audit log is empty"),
        "{}",
        out.all()
    );
    assert!(out.stderr.contains("--last"), "{}", out.all());
    let one = f.run(&["--json", "audit", "log", "--last", "1"]);
    one.ok();
    assert_eq!(one.json()["entries"].as_array().unwrap().len(), 1);
}

/// A `.tar.gz` artifact that cannot be read through (cut short, or not gzip at all) is
/// refused before anything starts, by `deploy` and by `plan --deploy`, like a missing one:
/// no release recorded, no run, nothing staged, `current` untouched. A good one still goes.
#[test]
fn a_corrupt_tarball_artifact_is_refused_before_anything_starts() {
    let f = Fixture::new();
    f.deploy("v1").ok();
    let good = f.path("v2.tar.gz");
    let st = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&good)
        .arg("-C")
        .arg(f.path("art/v2"))
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let bytes = std::fs::read(&good).unwrap();
    // Cut short: the gzip stream ends in the middle.
    let cut = f.path("cut.tar.gz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    // Not an archive at all, under an archive's name.
    let text = f.path("notes.tgz");
    std::fs::write(&text, "this is not an archive\n").unwrap();
    let runs_before = f.run(&["--json", "history"]).json()["runs"].clone();
    assert_eq!(
        runs_before.as_array().map(Vec::len),
        Some(1),
        "{runs_before}"
    );

    for bad in [&cut, &text] {
        let art = format!("web={}", bad.display());
        let deploy = f.run(&["deploy", "v2", "--artifact", &art]);
        deploy.code(2);
        assert!(
            deploy.stderr.contains("cannot start; nothing was changed")
                && deploy.stderr.contains(&format!(
                    "artifact {} is not a readable .tar.gz",
                    bad.display()
                )),
            "{}",
            deploy.all()
        );
        let plan = f.run(&["plan", "--deploy", "v2", "--artifact", &art]);
        plan.code(2);
        assert!(plan.stdout.contains("would REFUSE"), "{}", plan.all());
        assert!(
            plan.stderr.contains("is not a readable .tar.gz"),
            "{}",
            plan.all()
        );
    }
    // An empty directory (a build that produced nothing) is refused the same way.
    std::fs::create_dir_all(f.path("empty-build")).unwrap();
    let art = format!("web={}", f.path("empty-build").display());
    for args in [
        &["deploy", "v2", "--artifact", &art][..],
        &["plan", "--deploy", "v2", "--artifact", &art],
    ] {
        let o = f.run(args);
        o.code(2);
        assert!(o.stderr.contains("is an empty directory"), "{}", o.all());
    }
    // Nothing was recorded, run or staged.
    let (current, releases) = f.ledger();
    assert_eq!(current.as_deref(), Some("v1"));
    assert_eq!(releases.len(), 1, "{releases:?}");
    assert_eq!(
        f.run(&["--json", "history"]).json()["runs"],
        runs_before,
        "a run was started"
    );
    assert_eq!(f.current(), "releases/v1");
    let on_disk: Vec<String> = std::fs::read_dir(f.path("srv/releases"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(on_disk, ["v1"], "something was staged");

    // The good archive is planned and deployed.
    let art = format!("web={}", good.display());
    f.run(&["plan", "--deploy", "v2", "--artifact", &art]).ok();
    f.run(&["deploy", "v2", "--artifact", &art]).ok();
    assert_eq!(f.current(), "releases/v2");
}

/// A refused release name says why (too long, a character, how it starts), shortened and
/// escaped, and nothing is recorded.
#[test]
fn bad_release_names_say_why() {
    let f = Fixture::new();
    let long = "a".repeat(200);
    for (name, why) in [
        (long.as_str(), "it is 200 bytes long; at most 128"),
        ("a/b", "it holds '/'"),
        ("x\ny", "it holds '\\n'"),
        ("-x", "it must start with a letter or digit"),
    ] {
        let o = f.run(&["deploy", "--", name]);
        o.code(2);
        assert!(o.stderr.contains(why), "{name:?}: {}", o.all());
        assert!(!o.stderr.contains(&long), "{}", o.all());
    }
    assert_eq!(f.ledger().1.len(), 0);
}

/// v1 and v2 deployed, then the deploy of v3 killed in the middle of its restart: an
/// unfinished deploy whose release is already switched in.
fn unfinished_deploy_of_v3() -> Fixture {
    let f = Fixture::with(Setup {
        restart: "echo \"start $REWIND_RELEASE\" >> ../starts.log; \
                  if [ -f ../hang ]; then sleep 30; fi"
            .into(),
        ..Setup::default()
    });
    f.deploy("v1").ok();
    f.deploy("v2").ok();
    std::fs::write(f.path("hang"), "").unwrap();
    let art = format!("web={}", f.path("art/v3").display());
    let mut deploy = f.spawn(&["deploy", "v3", "--artifact", &art]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(f.path("starts.log"))
        .unwrap_or_default()
        .contains("start v3")
    {
        assert!(
            deploy.try_wait().unwrap().is_none(),
            "the deploy ended early"
        );
        assert!(std::time::Instant::now() < deadline, "v3 never restarted");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    deploy.kill().unwrap();
    deploy.wait().unwrap();
    std::fs::remove_file(f.path("hang")).unwrap();
    f
}

#[test]
fn plan_names_the_target_the_rollback_takes_while_a_deploy_is_unfinished() {
    let f = unfinished_deploy_of_v3();
    let plan = f.run(&["plan"]);
    plan.ok();
    assert!(
        plan.stdout.contains("rollback of test from v3 to v2"),
        "{}",
        plan.all()
    );
    assert!(
        !plan.stdout.contains("v2 is marked rolled-back"),
        "{}",
        plan.all()
    );
    let j = f.run(&["--json", "plan"]).json();
    assert_eq!(
        (j["from"].as_str(), j["to"].as_str()),
        (Some("v3"), Some("v2")),
        "{j:#}"
    );
    let rollback = f.run(&["rollback", "--yes"]);
    rollback.ok();
    assert!(
        rollback.stderr.contains("rollback of test from v3 to v2")
            || rollback.stdout.contains("rollback of test from v3 to v2"),
        "{}",
        rollback.all()
    );
    assert_eq!(f.current(), "releases/v2");
}

#[test]
fn plan_deploy_is_refused_as_deploy_is_while_a_run_is_unfinished() {
    let f = unfinished_deploy_of_v3();
    let art = format!("web={}", f.path("art/v4").display());
    let plan = f.run(&["plan", "--deploy", "v4", "--artifact", &art]);
    plan.code(3);
    assert!(plan.stdout.contains("would REFUSE"), "{}", plan.all());
    assert!(!plan.stdout.contains("carries this out"), "{}", plan.all());
    assert!(plan.stderr.contains("unfinished"), "{}", plan.all());
    let json = f.run(&["--json", "plan", "--deploy", "v4", "--artifact", &art]);
    json.code(3);
    assert_eq!(json.json()["detail"]["refused"], true, "{}", json.all());
    let deploy = f.run(&["deploy", "v4", "--artifact", &art]);
    deploy.code(3);
    assert_eq!(f.ledger().1.len(), 3, "nothing was recorded");
}

/// A PostgreSQL component nothing was deployed to yet, whose server does not answer: `status`
/// says it cannot connect (it showed `-`, as if all were well).
#[test]
fn status_says_an_unreachable_database_cannot_be_read_before_any_deploy() {
    let f = Fixture::with(Setup {
        extra: "\n[components.db]\nkind = \"postgres\"\nurl = \"postgres://app:pw-9931@127.0.0.1:1/x\"\nmigrations = \"rel/{release}/migrations\"\nformat = \"sqlx\"\n".into(),
        ..Setup::default()
    });
    let s = f.run(&["status"]);
    s.ok();
    assert!(
        s.stdout.contains("cannot connect") && !s.all().contains("pw-9931"),
        "{}",
        s.all()
    );
    let j = f.run(&["--json", "status"]).json();
    let db = j["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "db")
        .unwrap()
        .clone();
    assert!(
        db["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot connect")),
        "{db}"
    );
}
