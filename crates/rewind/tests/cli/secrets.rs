//! Secrets under attack: planted in a command as a URL password, in a postgres component's
//! `url`, and declared through `[secrets]` (from a variable, a file and the file itself).
//! Every command a user runs — deploys, a failing step, rollbacks killed and resumed, status,
//! history, plans, the audit log, their `--json` forms — and then every byte of the state
//! store (the SQLite file with its WAL, or every row of a PostgreSQL store) and of every file
//! under `.rewind/` must be free of them; and the commands must still get the real values.

use std::path::Path;

use crate::common::*;

/// Every file under `dir`, recursively, as bytes.
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if let Ok(bytes) = std::fs::read(&p) {
            out.push((p, bytes));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    let n = needle.as_bytes();
    hay.windows(n.len()).any(|w| w == n)
}

/// No secret in any output, nor in any byte under `.rewind/` (the SQLite store, its WAL and
/// shared memory, backups and their descriptions).
#[track_caller]
fn assert_nowhere(f: &Fixture, outs: &[Out], secrets: &[&str]) {
    for o in outs {
        let all = o.all();
        for s in secrets {
            assert!(!all.contains(s), "`{s}` was printed:\n{all}");
        }
    }
    let files = files_under(&f.path(".rewind"));
    assert!(
        files
            .iter()
            .any(|(p, _)| p.file_name().is_some_and(|n| n == "state.db")),
        "no state store under .rewind/"
    );
    for (path, bytes) in &files {
        for s in secrets {
            assert!(!contains(bytes, s), "`{s}` is stored in {}", path.display());
        }
    }
}

/// Every command that reads: text and `--json`, and every run in detail.
fn read_everything(f: &Fixture, env: &[(&str, &str)]) -> Vec<Out> {
    let mut outs = Vec::new();
    for args in [
        &["status"][..],
        &["--json", "status"],
        &["history"],
        &["--json", "history"],
        &["audit", "log"],
        &["--json", "audit", "log"],
        &["audit", "verify"],
        &["check"],
        &["--json", "check"],
    ] {
        let o = f.run_env(args, env);
        o.ok();
        outs.push(o);
    }
    // With nothing to roll back to, `plan` says so (exit 2): that message counts too.
    for args in [&["plan"][..], &["--json", "plan"]] {
        let o = f.run_env(args, env);
        assert!(matches!(o.code, Some(0 | 2)), "{}", o.all());
        outs.push(o);
    }
    let runs = f
        .run_env(&["--json", "history", "--runs", "50"], env)
        .json();
    for r in runs["runs"].as_array().unwrap() {
        let id = r["id"].as_str().unwrap();
        for json in [false, true] {
            let mut args = vec!["history", "--run", id];
            if json {
                args.insert(0, "--json");
            }
            let o = f.run_env(&args, env);
            o.ok();
            outs.push(o);
        }
    }
    outs
}

const URL_PW: &str = "URLPW-5521-x";
const ROTATED_PW: &str = "URLPW-ROTATED-y";

/// A command component whose commands hold a URL with a password, nothing marked secret.
fn hook_component() -> String {
    format!(
        r#"
[components.hook]
kind = "command"
current = "cat hook-version"
deploy = "echo {{release}} > hook-version; echo deployed {{release}} via https://bot:{URL_PW}@hooks.example/deploy; case {{release}} in bad*) echo '{{release}} refused by https://bot:{URL_PW}@hooks.example' >&2; exit 3;; esac"
rollback = "echo {{release}} > hook-version; echo back to {{release}} via https://bot:{URL_PW}@hooks.example/rollback | tee -a hook.log"
ready-command = "curl -fsS https://bot:{URL_PW}@127.0.0.1:9/ready 2>/dev/null || test -f hook-version"
"#
    )
}

/// The whole life of an environment whose commands hold a URL password nobody marked: the
/// password is masked everywhere and stored nowhere (the step titles, the journal's `begin`
/// lines, the audit details and the run's record of its components held it before), and the
/// commands still run with it — also after a kill, from the config as it is at `resume`.
#[test]
fn url_passwords_in_commands_are_never_printed_nor_stored() {
    let f = Fixture::with(Setup {
        extra: hook_component(),
        ..Setup::default()
    });
    let mut outs = vec![f.deploy("v1")];
    let art = format!("web={}", f.path("art/v2").display());
    outs.push(f.run(&["--json", "deploy", "v2", "--artifact", &art]));
    for o in &outs {
        o.ok();
    }
    // Already here, before any failure or resume: titles, journal, audit, run record.
    assert_nowhere(&f, &outs, &[URL_PW]);
    let art3 = format!("web={}", f.path("art/v3").display());
    for args in [
        &["plan", "--deploy", "v3", "--artifact", &art3][..],
        &["--json", "plan", "--deploy", "v3", "--artifact", &art3],
    ] {
        let o = f.run(args);
        o.ok();
        outs.push(o);
    }
    // Failing steps whose command and error hold the URL, in text and in JSON.
    let art = format!("web={}", f.path("art/v3").display());
    let failed = f.run(&["deploy", "bad1", "--artifact", &art]);
    failed.code(1);
    assert!(failed.stderr.contains("hook.deploy"), "{}", failed.all());
    assert!(
        failed
            .all()
            .contains("bad1 refused by https://bot:***@hooks.example"),
        "the URL is shown, its password masked:\n{}",
        failed.all()
    );
    outs.push(failed);
    let failed_json = f.run(&["--json", "deploy", "bad2", "--artifact", &art]);
    failed_json.code(1);
    assert_eq!(failed_json.json()["detail"]["failed_step"], "hook.deploy");
    outs.push(failed_json);
    let good = f.deploy("v4");
    good.ok();
    outs.push(good);

    // A rollback killed right after its hook step began; the password is rotated in the
    // config before `resume`: the resumed step runs with the new one.
    let killed = f.run_env(
        &["rollback", "--yes"],
        &[("REWIND_CRASH_AT", "after-begin:hook.rollback")],
    );
    assert_eq!(killed.signal, Some(9), "{}", killed.all());
    outs.push(killed);
    let text = std::fs::read_to_string(f.path("rewind.toml")).unwrap();
    std::fs::write(
        f.path("rewind.toml"),
        text.replace(
            &format!("{URL_PW}@hooks.example/rollback"),
            &format!("{ROTATED_PW}@hooks.example/rollback"),
        ),
    )
    .unwrap();
    let resumed = f.run(&["resume"]);
    resumed.ok();
    outs.push(resumed);
    assert_run_complete(&f.last_run(), "resumed rollback");
    let log = std::fs::read_to_string(f.path("hook.log")).unwrap();
    assert_eq!(
        log.trim(),
        format!("back to v2 via https://bot:{ROTATED_PW}@hooks.example/rollback"),
        "the command got the password of the config at resume"
    );
    outs.push(f.run(&["--json", "rollback", "--yes", "--to", "v1"]));
    outs.last().unwrap().ok();
    outs.extend(read_everything(&f, &[]));
    assert!(
        outs.iter()
            .any(|o| o.all().contains("https://bot:***@hooks.example/deploy")),
        "titles show the URL with its password masked"
    );
    assert_nowhere(&f, &outs, &[URL_PW, ROTATED_PW]);
    audit_ok(&f);
}

/// `[secrets]` from a variable, a file and the config itself, used through `{secret:NAME}`
/// in commands and a ready check: the commands get the values, nothing shows or stores them
/// (titles and the run's record keep the reference), and a secret that cannot be read stops
/// a deploy before anything is recorded.
#[test]
fn declared_secrets_reach_the_commands_and_nothing_else() {
    const FROM_ENV: &str = "env-secret-4410";
    const FROM_FILE: &str = "file-secret-3391";
    const IN_FILE: &str = "lit-secret-8812";
    let f = Fixture::with(Setup {
        extra: r#"
[components.hook]
kind = "command"
current = "cat hook-version"
deploy = "echo {release} > hook-version; echo '{secret:tok} {secret:lit} {secret:filetok}' > received.txt; echo sent {secret:tok}; if [ {release} = v3 ]; then echo 'rejected {secret:lit}' >&2; exit 3; fi"
rollback = "echo {release} > hook-version; curl -fsS -H 'Authorization: Bearer {secret:tok}' http://127.0.0.1:9/ 2>/dev/null; echo rolled back with {secret:filetok} {secret:lit}; echo 'lit-secret-8812 written out' > literal.txt"
ready-command = "test -n '{secret:filetok}'"

[secrets]
tok = { env = "HOOK_SIGNING_VALUE" }
filetok = { file = "tok.txt" }
lit = { value = "lit-secret-8812" }
"#
        .into(),
        ..Setup::default()
    });
    std::fs::write(f.path("tok.txt"), format!("{FROM_FILE}\n")).unwrap();

    // Without the variable: refused before anything is recorded, naming it.
    let refused = f.deploy("v1");
    refused.code(2);
    assert!(
        refused.stderr.contains("{secret:tok}")
            && refused.stderr.contains("HOOK_SIGNING_VALUE is not set")
            && refused.stderr.contains("nothing was changed"),
        "{}",
        refused.all()
    );
    assert!(
        f.run(&["--json", "history"]).json()["runs"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let env = [("HOOK_SIGNING_VALUE", FROM_ENV)];
    let deploy = |release: &str, json: bool| {
        let art = format!("web={}", f.path(&format!("art/{release}")).display());
        let mut args = vec!["deploy", release, "--artifact", &art];
        if json {
            args.insert(0, "--json");
        }
        f.run_env(&args, &env)
    };
    let mut outs = vec![refused, deploy("v1", false), deploy("v2", true)];
    outs[1].ok();
    outs[2].ok();
    assert_eq!(
        std::fs::read_to_string(f.path("received.txt"))
            .unwrap()
            .trim(),
        format!("{FROM_ENV} {IN_FILE} {FROM_FILE}"),
        "the command gets every value"
    );
    let shown = outs[1].all();
    assert!(
        shown.contains("{secret:tok}") && shown.contains("sent ***"),
        "titles keep the reference, output masks the value:\n{shown}"
    );
    let failed = deploy("v3", false);
    failed.code(1);
    outs.push(failed);
    let killed = f.run_env(
        &["rollback", "--yes"],
        &[
            ("HOOK_SIGNING_VALUE", FROM_ENV),
            ("REWIND_CRASH_AT", "mid:hook.rollback"),
        ],
    );
    assert_eq!(killed.signal, Some(9), "{}", killed.all());
    outs.push(killed);
    let resumed = f.run_env(&["--json", "resume"], &env);
    resumed.ok();
    outs.push(resumed);
    assert_eq!(
        f.run_env(&["--json", "status"], &env).json()["current"]["name"],
        "v2"
    );
    // A declared value written out in a command (not as a reference) is masked as well; the
    // rollback's command still got it, taken back from the config (the record masks it).
    assert_eq!(
        std::fs::read_to_string(f.path("literal.txt"))
            .unwrap()
            .trim(),
        format!("{IN_FILE} written out")
    );
    outs.extend(read_everything(&f, &env));
    assert_nowhere(&f, &outs, &[FROM_ENV, FROM_FILE, IN_FILE]);
    audit_ok(&f);
}

/// A secret too short to be masked without masking ordinary text is refused where it is
/// read (exit 2, nothing recorded); one that is an ordinary word ("command", which is also a
/// component kind) is masked where it is written and leaves every record readable. A
/// `password=` at the start of any line of a command's output is masked, in text and JSON.
#[test]
fn short_and_word_like_secrets_and_passwords_on_their_own_line() {
    let hook = |secret: &str| {
        format!(
            r#"
[components.hook]
kind = "command"
current = "cat hook-version"
deploy = "echo {{release}} > hook-version; echo 'sent {{secret:s}}'; printf 'first\npassword=PWLINE-731\n'"
rollback = "echo {{release}} > hook-version"

[secrets]
s = {{ value = "{secret}" }}
"#
        )
    };
    let f = Fixture::with(Setup {
        extra: hook("e"),
        ..Setup::default()
    });
    let check = f.run(&["check"]);
    check.code(2);
    assert!(
        check.stderr.contains("use a longer secret"),
        "{}",
        check.all()
    );
    let refused = f.deploy("v1");
    refused.code(2);
    assert!(
        refused.stderr.contains("use a longer secret")
            && refused.stderr.contains("nothing was changed")
            && !refused.stderr.contains("***"),
        "{}",
        refused.all()
    );
    assert!(
        f.run(&["--json", "history"]).json()["runs"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let f = Fixture::with(Setup {
        extra: hook("command"),
        ..Setup::default()
    });
    let mut outs = vec![f.deploy("v1")];
    let art = format!("web={}", f.path("art/v2").display());
    outs.push(f.run(&["--json", "deploy", "v2", "--artifact", &art]));
    for o in &outs {
        o.ok();
    }
    assert!(outs[1].stdout.contains("password=***"), "{}", outs[1].all());
    outs.push(f.run(&["rollback", "--yes"]));
    outs.last().unwrap().ok();
    assert_eq!(f.run(&["--json", "status"]).json()["current"]["name"], "v1");
    outs.extend(read_everything(&f, &[]));
    assert_nowhere(&f, &outs, &["PWLINE-731"]);
    audit_ok(&f);
}

/// A run is recorded with a masked URL password; resumed after the config changed more than
/// the password, it cannot get the secret back: exit 2 naming the field, nothing run, no
/// secret shown. With the line put back, `resume` finishes the run.
#[test]
fn resume_refuses_a_masked_field_the_config_no_longer_has() {
    let f = Fixture::with(Setup {
        extra: hook_component(),
        ..Setup::default()
    });
    f.deploy("v1").ok();
    f.deploy("v2").ok();
    let killed = f.run_env(
        &["rollback", "--yes"],
        &[("REWIND_CRASH_AT", "before:hook.rollback")],
    );
    assert_eq!(killed.signal, Some(9), "{}", killed.all());
    let original = std::fs::read_to_string(f.path("rewind.toml")).unwrap();
    std::fs::write(
        f.path("rewind.toml"),
        original.replace("hooks.example/rollback", "hooks.elsewhere/rollback"),
    )
    .unwrap();
    let refused = f.run(&["resume"]);
    refused.code(2);
    assert!(
        refused.stderr.contains("component `hook`")
            && refused.stderr.contains("`rollback`")
            && refused.stderr.contains("hooks.elsewhere")
            && refused.stderr.contains("put that value"),
        "{}",
        refused.all()
    );
    assert!(!f.path("hook.log").exists(), "nothing ran");
    std::fs::write(f.path("rewind.toml"), &original).unwrap();
    let resumed = f.run(&["resume"]);
    resumed.ok();
    assert_run_complete(&f.last_run(), "resumed after the config was put back");
    assert!(
        std::fs::read_to_string(f.path("hook.log"))
            .unwrap()
            .contains(&format!("bot:{URL_PW}@hooks.example/rollback"))
    );
    assert_nowhere(&f, &[killed, refused, resumed], &[URL_PW]);
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Every row of every table of a PostgreSQL database, as text.
async fn pg_dump_rows(url: &str) -> String {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) FROM information_schema.tables \
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert!(!tables.is_empty(), "the state store has no tables");
    let mut out = String::new();
    for t in tables {
        let rows: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT t::text FROM {t} t")))
                .fetch_all(&mut c)
                .await
                .unwrap();
        out.push_str(&format!(
            "-- {t}: {} rows\n{}\n",
            rows.len(),
            rows.join("\n")
        ));
    }
    c.close().await.unwrap();
    out
}

/// A postgres component reached by a `url` with a password, on a PostgreSQL state store whose
/// URL has one too: deploys, a rollback killed inside the database's revert and resumed
/// after the password was rotated in the file, every reading command — and then neither
/// password in any output, in any row of the state store, or in any file under `.rewind/`
/// (the database's backups included).
#[tokio::test]
async fn postgres_url_passwords_are_in_no_row_and_no_file() {
    const DB_PW: &str = "db-url-pw-6620";
    const ROTATED: &str = "db-url-pw-ROTATED";
    const STATE_PW: &str = "state-url-pw-9931";
    let db_url = fresh_pg_database(DB_PW).await;
    let state_url = fresh_pg_database(STATE_PW).await;
    let f = Fixture::with(Setup {
        state: Some(state_url.clone()),
        ..Setup::default()
    });
    let m = |v: &str, file: &str, sql: &str| {
        write(
            &f.path(&format!("rel/{v}/migrations/{file}")),
            &format!("{sql}\n"),
        )
    };
    for v in ["v1", "v2", "v3"] {
        m(
            v,
            "1_users.up.sql",
            "CREATE TABLE users (id INTEGER PRIMARY KEY);",
        );
        m(v, "1_users.down.sql", "DROP TABLE users;");
    }
    for v in ["v2", "v3"] {
        m(
            v,
            "2_notes.up.sql",
            "ALTER TABLE users ADD COLUMN note TEXT;",
        );
        m(v, "2_notes.down.sql", "ALTER TABLE users DROP COLUMN note;");
    }
    let text = std::fs::read_to_string(f.path("rewind.toml")).unwrap();
    // The database first: migrated before the code that needs it.
    let text = text.replacen(
        "[components.web]",
        &format!(
            "[components.db]\nkind = \"postgres\"\nurl = \"{db_url}\"\nmigrations = \"rel/{{release}}/migrations\"\nformat = \"sqlx\"\n\n[components.web]"
        ),
        1,
    );
    std::fs::write(f.path("rewind.toml"), &text).unwrap();

    let mut outs = vec![f.deploy("v1"), f.deploy("v2")];
    for o in &outs {
        o.ok();
    }
    let art3 = format!("web={}", f.path("art/v3").display());
    for args in [
        &["plan", "--deploy", "v3", "--artifact", &art3][..],
        &["--json", "plan", "--deploy", "v3", "--artifact", &art3],
        &["backup", "list"],
        &["--json", "backup", "list"],
    ] {
        let o = f.run(args);
        o.ok();
        outs.push(o);
    }
    // Killed inside the revert; the password rotated in the file before resume.
    let killed = f.run_env(
        &["rollback", "--yes"],
        &[("REWIND_CRASH_AT", "mid:db.revert")],
    );
    assert_eq!(killed.signal, Some(9), "{}", killed.all());
    outs.push(killed);
    std::fs::write(f.path("rewind.toml"), text.replace(DB_PW, ROTATED)).unwrap();
    let resumed = f.run(&["--json", "resume"]);
    resumed.ok();
    outs.push(resumed);
    assert_run_complete(&f.last_run(), "resumed revert");
    let deployed = f.deploy("v3");
    deployed.ok();
    outs.push(deployed);
    outs.extend(read_everything(&f, &[]));
    for secret in [DB_PW, ROTATED, STATE_PW] {
        for o in &outs {
            assert!(
                !o.all().contains(secret),
                "`{secret}` was printed:\n{}",
                o.all()
            );
        }
    }
    let rows = pg_dump_rows(&state_url).await;
    assert!(
        rows.contains("db.revert"),
        "the dump holds the runs:\n{rows}"
    );
    for secret in [DB_PW, ROTATED, STATE_PW] {
        assert!(
            !rows.contains(secret),
            "`{secret}` is stored in the state store:\n{rows}"
        );
        for (path, bytes) in files_under(&f.path(".rewind")) {
            assert!(
                !contains(&bytes, secret),
                "`{secret}` is in {}",
                path.display()
            );
        }
    }
    assert!(
        files_under(&f.path(".rewind/backups")).len() >= 2,
        "the database's backups were written under .rewind/"
    );
    audit_ok(&f);
}

/// The same database on the SQLite state store, its URL given through `{secret:NAME}`: the
/// state file holds the reference, never the password.
#[tokio::test]
async fn postgres_url_from_a_declared_secret_is_in_no_byte_of_the_state_file() {
    const DB_PW: &str = "db-ref-pw-7781";
    let db_url = fresh_pg_database(DB_PW).await;
    let with_ref = db_url.replace(DB_PW, "{secret:db-password}");
    let f = Fixture::new();
    for v in ["v1", "v2"] {
        write(
            &f.path(&format!("rel/{v}/migrations/1_users.up.sql")),
            "CREATE TABLE users (id INTEGER PRIMARY KEY);\n",
        );
        write(
            &f.path(&format!("rel/{v}/migrations/1_users.down.sql")),
            "DROP TABLE users;\n",
        );
    }
    write(
        &f.path("rel/v2/migrations/2_notes.up.sql"),
        "ALTER TABLE users ADD COLUMN note TEXT;\n",
    );
    write(
        &f.path("rel/v2/migrations/2_notes.down.sql"),
        "ALTER TABLE users DROP COLUMN note;\n",
    );
    let text = std::fs::read_to_string(f.path("rewind.toml")).unwrap();
    std::fs::write(
        f.path("rewind.toml"),
        format!(
            "{text}\n[components.db]\nkind = \"postgres\"\nurl = \"{with_ref}\"\nmigrations = \"rel/{{release}}/migrations\"\nformat = \"sqlx\"\n\n[secrets]\ndb-password = {{ env = \"APP_DB_PW\" }}\n"
        ),
    )
    .unwrap();
    let env = [("APP_DB_PW", DB_PW)];
    let art = |v: &str| format!("web={}", f.path(&format!("art/{v}")).display());
    let mut outs = vec![
        f.run_env(&["deploy", "v1", "--artifact", &art("v1")], &env),
        f.run_env(&["--json", "deploy", "v2", "--artifact", &art("v2")], &env),
        f.run_env(&["rollback", "--yes"], &env),
    ];
    for o in &outs {
        o.ok();
    }
    let shown = f.run_env(&["plan", "--to", "v2", "--force"], &env);
    shown.ok();
    outs.push(shown);
    outs.extend(read_everything(&f, &env));
    assert_nowhere(&f, &outs, &[DB_PW]);
    let raw = std::fs::read(f.path(".rewind/state.db-wal"))
        .into_iter()
        .chain(std::fs::read(f.state_db()))
        .flatten()
        .collect::<Vec<u8>>();
    assert!(
        contains(&raw, "{secret:db-password}"),
        "the run's record keeps the reference"
    );
}
