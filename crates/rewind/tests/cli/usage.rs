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
