//! Config handling through the binary: `init`, `check`, and the table of broken configs in
//! `tests/broken-configs/` (each file's first line says which line the error must name).

use std::path::PathBuf;

use crate::common::*;

fn broken_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/broken-configs")
}

#[test]
fn every_broken_config_exits_2_naming_the_line() {
    let mut files: Vec<_> = std::fs::read_dir(broken_dir())
        .expect("tests/broken-configs")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "only {} broken configs", files.len());
    let work = tempfile::tempdir().unwrap();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let first = text.lines().next().unwrap();
        let spec = first
            .strip_prefix("# expect: ")
            .unwrap_or_else(|| panic!("{}: no `# expect:` line", file.display()));
        let (line, needle) = spec.split_once(": ").unwrap();
        // Copy beside a scratch dir so that a state store would be noticed if created.
        let cfg = work.path().join(file.file_name().unwrap());
        std::fs::write(&cfg, &text).unwrap();
        let out = std::process::Command::new(BIN)
            .arg("-c")
            .arg(&cfg)
            .arg("check")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", file.display());
        let loc = format!("{}:{line}:", cfg.display());
        assert!(
            stderr.contains(&loc),
            "{}: expected `{loc}` in\n{stderr}",
            file.display()
        );
        assert!(
            stderr.contains(needle),
            "{}: expected `{needle}` in\n{stderr}",
            file.display()
        );
        assert!(
            stderr.contains("hint:"),
            "{}: no hint in\n{stderr}",
            file.display()
        );
    }
    assert!(
        !work.path().join(".rewind").exists(),
        "check must not create a state store"
    );
}

#[test]
fn several_problems_are_all_listed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rewind.toml");
    std::fs::write(
        &cfg,
        "[environment]\nname = \"prod\"\n\n[components.web]\nkind = \"release-dir\"\nroot = \"/srv\"\nready-timeout = \"thirty\"\nkeep = 1\nrestat = \"x\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .arg("-c")
        .arg(&cfg)
        .arg("check")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    for line in [7, 8, 9] {
        assert!(
            stderr.contains(&format!("rewind.toml:{line}:")),
            "line {line} missing in\n{stderr}"
        );
    }
    assert!(stderr.contains("3 problems"), "{stderr}");
    assert!(stderr.contains("restart"), "did-you-mean hint: {stderr}");
}

#[test]
fn init_writes_a_valid_example_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let o = std::process::Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (code, out, _) = run(&["init"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("rewind check"));
    let written = std::fs::read_to_string(dir.path().join("rewind.toml")).unwrap();
    assert!(written.contains("[components.web]") && written.contains('#'));
    let (code, _, err) = run(&["init"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--force"), "{err}");
    std::fs::write(dir.path().join("rewind.toml"), "mine").unwrap();
    let (code, _, _) = run(&["init"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("rewind.toml")).unwrap(),
        "mine",
        "nothing changed"
    );
    let (code, _, _) = run(&["init", "--force"]);
    assert_eq!(code, Some(0));
    let (code, out, err) = run(&["check"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("production"), "{out}");
    let (code, out, _) = run(&["--json", "check"]);
    assert_eq!(code, Some(0));
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["components"][0]["name"], "web");
    assert_eq!(j["components"][1]["kind"], "command");
    assert!(
        !dir.path().join(".rewind").exists(),
        "check touched nothing"
    );
}

#[test]
fn a_missing_config_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in ["check", "status", "rollback", "deploy"] {
        let mut c = std::process::Command::new(BIN);
        c.arg(cmd).current_dir(dir.path());
        if cmd == "deploy" {
            c.arg("v1");
        }
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {err}");
        assert!(err.contains("rewind init"), "{cmd}: {err}");
    }
}

#[test]
fn bad_arguments_exit_2_and_change_nothing() {
    let f = Fixture::new();
    f.deploy("v1").ok();
    f.deploy("v2").ok();
    let before = f.ledger();
    let cases: &[(&[&str], &str)] = &[
        (&["deploy", "../evil"], "not a valid release name"),
        (
            &["deploy", "v2", "--artifact", "nosuch=/tmp"],
            "not in the config",
        ),
        (&["deploy", "v2", "--artifact", "web"], "COMPONENT=PATH"),
        (
            &["deploy", "v2", "--artifact", "frontend=/tmp"],
            "takes no artifact",
        ),
        (
            &["deploy", "v2", "--artifact", "web=/does/not/exist"],
            "does not exist",
        ),
        (
            &["deploy", "v1", "--artifact", "web=art/v1"],
            "already recorded",
        ),
        (&["rollback", "--yes", "--to", "v9"], "not in the ledger"),
        (
            &["rollback", "--yes", "--component", "nosuch"],
            "not in the config",
        ),
        (&["rollback"], "--yes"),
        (&["plan", "--to", "v9"], "not in the ledger"),
        (&["history", "--run", "nosuch"], "no run"),
        (&["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, needle) in cases {
        let out = f.run(args);
        assert_eq!(out.code, Some(2), "{args:?}\n{}", out.all());
        assert!(
            out.stderr.contains(needle),
            "{args:?}: expected `{needle}`\n{}",
            out.all()
        );
    }
    assert_eq!(f.ledger(), before);
    assert_eq!(f.current(), "releases/v2");
}

/// A config file with a byte that is not UTF-8 (a Latin-1 `é` typed into a comment) is
/// refused with exit 2, naming the file, the line and column of the byte and its offset,
/// and saying what to do — for every command, before anything is touched.
#[test]
fn a_byte_that_is_not_utf8_is_named_by_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rewind.toml");
    let text = b"[environment]\nname = \"prod\"\n# d\xc3\xa9j\xe0 vu\n\n[components.web]\nkind = \"release-dir\"\nroot = \"srv\"\n".to_vec();
    std::fs::write(&cfg, &text).unwrap();
    for args in [
        &["check"][..],
        &["status"],
        &["deploy", "v1"],
        &["--json", "history"],
    ] {
        let out = std::process::Command::new(BIN)
            .arg("-c")
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        // "# déj" then 0xE0: line 3, column 6 (in characters), byte offset 34.
        assert!(
            stderr.contains(&format!("{}:3:6:", cfg.display()))
                && stderr.contains("0xE0")
                && stderr.contains("offset 34")
                && stderr.contains("not UTF-8")
                && stderr.contains("hint:")
                && stderr.contains("iconv"),
            "{args:?}: {stderr}"
        );
    }
    assert!(!dir.path().join(".rewind").exists(), "nothing was created");
    // Cut inside a character at the very end: said so.
    std::fs::write(&cfg, b"[environment]\nname = \"prod\"\n# \xc3").unwrap();
    let out = std::process::Command::new(BIN)
        .arg("-c")
        .arg(&cfg)
        .arg("check")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:3:3:", cfg.display()))
            && stderr.contains("ends inside a character"),
        "{stderr}"
    );
}
