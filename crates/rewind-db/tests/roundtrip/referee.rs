//! The teams' own tools as referees: diesel_cli, sqlx-cli, refinery_cli (from crates.io) and
//! sqitch (Debian), installed by scripts/test. For each: what rewind applied, the tool lists
//! as applied with nothing pending; what the tool applied, rewind reads and reverts; after a
//! revert by either side the other agrees; an edited applied file is refused by both, and
//! after rewind records the new checksum (`--accept-drift`) the tool goes on. On SQLite,
//! PostgreSQL 15 and PostgreSQL 18.

use std::path::Path;
use std::process::Command;

use rewind_db::migrations::{self, Format};
use rewind_db::{applied, apply, revert};

use super::{Kind, Target, fixture_copy, fresh, no_progress, sqitch, versions};

/// The tool's binary: `REWIND_TEST_<TOOL>` (scripts/test sets it), else on PATH.
fn tool(name: &str) -> String {
    std::env::var(format!("REWIND_TEST_{}", name.to_uppercase())).unwrap_or_else(|_| name.into())
}

fn run(program: &str, args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): scripts/test installs diesel_cli, sqlx-cli and refinery_cli")
        });
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn must(r: (bool, String), what: &str) -> String {
    assert!(r.0, "{what} failed:\n{}", r.1);
    r.1
}

/// The database as the tool wants it on its command line.
fn tool_url(t: &Target, format: Format) -> String {
    match (t.kind, format) {
        (Kind::Sqlite, Format::Diesel) => t.url.trim_start_matches("sqlite://").to_string(),
        (Kind::Sqlite, Format::Sqitch) => {
            format!("db:sqlite:{}", t.url.trim_start_matches("sqlite://"))
        }
        (_, Format::Sqitch) => format!("db:{}", t.url.replacen("postgres://", "pg://", 1)),
        _ => t.url.clone(),
    }
}

/// What the tool says is applied and pending, as (applied, pending) names.
fn listing(format: Format, dir: &Path, t: &Target) -> (Vec<String>, Vec<String>) {
    let url = tool_url(t, format);
    let d = dir.to_str().unwrap();
    let (mut applied, mut pending) = (Vec::new(), Vec::new());
    match format {
        Format::Diesel => {
            let text = must(
                run(
                    &tool("diesel"),
                    &[
                        "migration",
                        "list",
                        "--migration-dir",
                        d,
                        "--database-url",
                        &url,
                    ],
                    dir,
                    &[],
                ),
                "diesel migration list",
            );
            for line in text.lines().map(str::trim) {
                if let Some(n) = line.strip_prefix("[X] ") {
                    applied.push(n.to_string());
                } else if let Some(n) = line.strip_prefix("[ ] ") {
                    pending.push(n.to_string());
                }
            }
        }
        Format::Sqlx => {
            let text = must(
                run(
                    &tool("sqlx"),
                    &["migrate", "info", "--source", d, "-D", &url],
                    dir,
                    &[],
                ),
                "sqlx migrate info",
            );
            for line in text.lines() {
                if let Some((v, rest)) = line.split_once('/') {
                    if rest.starts_with("installed") {
                        applied.push(v.to_string());
                    } else if rest.starts_with("pending") {
                        pending.push(v.to_string());
                    }
                }
            }
        }
        _ => unreachable!("listed elsewhere"),
    }
    (applied, pending)
}

async fn story(format: Format, kind: Kind) {
    let fixture = match format {
        Format::Diesel => "diesel",
        Format::Sqlx => "sqlx",
        _ => unreachable!(),
    };
    let copy = fixture_copy(fixture);
    let dir = copy.path();
    let t = fresh(kind, &format!("referee_{fixture}")).await;
    let migs = migrations::read(dir, format).unwrap();
    let v = versions(&migs);
    let d = dir.to_str().unwrap().to_string();
    let url = tool_url(&t, format);
    let tool_revert = |n: usize| match format {
        Format::Diesel => must(
            run(
                &tool("diesel"),
                &[
                    "migration",
                    "revert",
                    "-n",
                    &n.to_string(),
                    "--migration-dir",
                    &d,
                    "--database-url",
                    &url,
                ],
                dir,
                &[],
            ),
            "diesel migration revert",
        ),
        _ => {
            let mut out = String::new();
            for _ in 0..n {
                out.push_str(&must(
                    run(
                        &tool("sqlx"),
                        &["migrate", "revert", "--source", &d, "-D", &url],
                        dir,
                        &[],
                    ),
                    "sqlx migrate revert",
                ));
            }
            out
        }
    };
    let tool_run = || match format {
        Format::Diesel => run(
            &tool("diesel"),
            &[
                "migration",
                "run",
                "--migration-dir",
                &d,
                "--database-url",
                &url,
            ],
            dir,
            &[],
        ),
        _ => run(
            &tool("sqlx"),
            &["migrate", "run", "--source", &d, "-D", &url],
            dir,
            &[],
        ),
    };

    // rewind applies everything: the tool sees all applied, nothing pending.
    apply(&t.pool, format, &migs, None, no_progress)
        .await
        .unwrap();
    let (a, p) = listing(format, dir, &t);
    assert_eq!((a.len(), p.len()), (3, 0), "{format} {kind:?}: {a:?} {p:?}");
    must(tool_run(), "the tool's run with nothing to do");

    // The tool reverts two; rewind reads it and applies them again.
    tool_revert(2);
    assert_eq!(applied(&t.pool, format, &migs).await.unwrap(), v[..1]);
    apply(&t.pool, format, &migs, None, no_progress)
        .await
        .unwrap();
    assert_eq!(listing(format, dir, &t).0.len(), 3);

    // rewind reverts two; the tool agrees and applies them itself.
    revert(&t.pool, format, &migs, Some(&v[0]), no_progress)
        .await
        .unwrap();
    let (a, p) = listing(format, dir, &t);
    assert_eq!((a.len(), p.len()), (1, 2), "{format} {kind:?}: {a:?} {p:?}");
    must(tool_run(), "the tool's run");
    assert_eq!(applied(&t.pool, format, &migs).await.unwrap(), v);

    // An applied migration edited afterwards: sqlx refuses to run; rewind reports it and,
    // accepting it, records the new checksum; then sqlx goes on. diesel keeps no checksum.
    let file = &migs[0].file;
    let edited = format!("{}\n-- edited after it was applied\n", migs[0].up);
    std::fs::write(file, edited).unwrap();
    let migs = migrations::read(dir, format).unwrap();
    let report = rewind_db::drift(&t.pool, format, &migs).await.unwrap();
    if format == Format::Sqlx {
        assert_eq!(report.drift.len(), 1, "{report:?}");
        let (ok, text) = tool_run();
        assert!(
            !ok,
            "sqlx should refuse an edited applied migration:\n{text}"
        );
        let updated =
            rewind_db::drift::accept(&t.pool, format, &migs, &[migs[0].key().to_string()])
                .await
                .unwrap();
        assert_eq!(updated, [v[0].clone()]);
        must(tool_run(), "sqlx run after --accept-drift");
        assert!(
            rewind_db::drift(&t.pool, format, &migs)
                .await
                .unwrap()
                .is_clean()
        );
    } else {
        assert!(report.is_clean(), "{report:?}");
        must(tool_run(), "diesel run after an edit");
    }
}

async fn refinery_story(kind: Kind) {
    let copy = fixture_copy("refinery");
    let dir = copy.path();
    let t = fresh(kind, "referee_refinery").await;
    if kind == Kind::Sqlite {
        // refinery opens, never creates, a SQLite file.
        std::fs::File::create(t.url.trim_start_matches("sqlite://")).ok();
    }
    let migs = migrations::read(dir, Format::Refinery).unwrap();
    let v = versions(&migs);
    let d = dir.to_str().unwrap().to_string();
    let env = [("DB", t.url.as_str())];
    let refinery = |extra: &[&str]| {
        let mut args = vec!["migrate", "-e", "DB", "-p", d.as_str()];
        args.extend_from_slice(extra);
        run(&tool("refinery"), &args, dir, &env)
    };
    // refinery applies the first two; rewind reads them and applies the third.
    let out = must(refinery(&["-t", "2"]), "refinery migrate -t 2");
    assert!(out.contains("V2__add_email"), "{out}");
    assert_eq!(
        applied(&t.pool, Format::Refinery, &migs).await.unwrap(),
        v[..2]
    );
    apply(&t.pool, Format::Refinery, &migs, None, no_progress)
        .await
        .unwrap();
    // refinery, aborting on divergent or missing migrations, has nothing to do.
    let out = must(refinery(&["-d", "-m"]), "refinery migrate -d -m");
    assert!(!out.contains("applying migration"), "{out}");
    // An edited applied file: refinery -d refuses; after rewind records the checksum it
    // does not.
    std::fs::write(&migs[1].file, format!("{}\n-- edited\n", migs[1].up)).unwrap();
    let migs = migrations::read(dir, Format::Refinery).unwrap();
    let (ok, text) = refinery(&["-d"]);
    assert!(
        !ok,
        "refinery -d should refuse a divergent migration:\n{text}"
    );
    rewind_db::drift::accept(
        &t.pool,
        Format::Refinery,
        &migs,
        &[migs[1].key().to_string()],
    )
    .await
    .unwrap();
    must(refinery(&["-d", "-m"]), "refinery after --accept-drift");
}

async fn sqitch_rework_story(kind: Kind) {
    let project = super::cases::rework_project();
    let dir = project.path();
    let t = fresh(kind, "referee_rework").await;
    let target = tool_url(&t, Format::Sqitch);
    let sq = |args: &[&str]| sqitch(dir, args, &target);
    let migs = migrations::read(dir, Format::Sqitch).unwrap();
    // sqitch deploys the reworked project; rewind reads all three instances.
    let (ok, out) = sq(&["deploy"]);
    assert!(ok, "{out}");
    assert_eq!(
        applied(&t.pool, Format::Sqitch, &migs).await.unwrap(),
        ["0001", "0002", "0003"]
    );
    // rewind reverts the rework; sqitch sees @v1.1 as current, then redeploys it.
    revert(&t.pool, Format::Sqitch, &migs, Some("@v1.1"), no_progress)
        .await
        .unwrap();
    let (_, status) = sq(&["status", "--show-tags"]);
    assert!(status.contains("# Tag:      @v1.1"), "{status}");
    assert!(status.contains("greet"), "{status}");
    let (ok, out) = sq(&["deploy"]);
    assert!(ok && out.contains("+ greet"), "{out}");
    // rewind reverts everything; sqitch agrees.
    revert(&t.pool, Format::Sqitch, &migs, None, no_progress)
        .await
        .unwrap();
    let (_, status) = sq(&["status"]);
    assert!(status.contains("No changes deployed"), "{status}");
    // rewind deploys all; sqitch has nothing to do.
    apply(&t.pool, Format::Sqitch, &migs, None, no_progress)
        .await
        .unwrap();
    let (_, status) = sq(&["status"]);
    assert!(
        status.contains("Nothing to deploy (up-to-date)"),
        "{status}"
    );
}

/// A plan whose `%uri` has no path: sqitch hashes its canonical form (`https://example.com/`).
async fn sqitch_uri_story(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let w = |p: &str, t: &str| {
        let path = dir.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, t).unwrap();
    };
    w(
        "sqitch.plan",
        "%syntax-version=1.0.0\n%project=acme/schema\n%uri=https://Example.com\n\n\
         widgets 2024-01-01T00:00:00Z Alice <alice@example.com> # add widgets\n",
    );
    w("deploy/widgets.sql", "CREATE TABLE widgets (id INT);\n");
    w("revert/widgets.sql", "DROP TABLE widgets;\n");
    let t = fresh(kind, "referee_uri").await;
    let target = tool_url(&t, Format::Sqitch);
    let migs = migrations::read(dir.path(), Format::Sqitch).unwrap();
    let (ok, out) = sqitch(dir.path(), &["deploy"], &target);
    assert!(ok, "{out}");
    assert_eq!(
        applied(&t.pool, Format::Sqitch, &migs).await.unwrap(),
        ["0001"],
        "rewind finds the change sqitch deployed: the same change id"
    );
    revert(&t.pool, Format::Sqitch, &migs, None, no_progress)
        .await
        .unwrap();
    apply(&t.pool, Format::Sqitch, &migs, None, no_progress)
        .await
        .unwrap();
    let (_, status) = sqitch(dir.path(), &["status"], &target);
    assert!(
        status.contains("Nothing to deploy (up-to-date)"),
        "{status}"
    );
}

macro_rules! referees {
    ($($name:ident: $body:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $body.await;
        }
    )*};
}

referees! {
    diesel_cli_agrees_sqlite: story(Format::Diesel, Kind::Sqlite);
    diesel_cli_agrees_postgres: story(Format::Diesel, Kind::Postgres);
    diesel_cli_agrees_postgres18: story(Format::Diesel, Kind::Postgres18);
    sqlx_cli_agrees_sqlite: story(Format::Sqlx, Kind::Sqlite);
    sqlx_cli_agrees_postgres: story(Format::Sqlx, Kind::Postgres);
    sqlx_cli_agrees_postgres18: story(Format::Sqlx, Kind::Postgres18);
    refinery_cli_agrees_sqlite: refinery_story(Kind::Sqlite);
    refinery_cli_agrees_postgres: refinery_story(Kind::Postgres);
    refinery_cli_agrees_postgres18: refinery_story(Kind::Postgres18);
    sqitch_rework_agrees_sqlite: sqitch_rework_story(Kind::Sqlite);
    sqitch_rework_agrees_postgres: sqitch_rework_story(Kind::Postgres);
    sqitch_uri_without_a_path_agrees_sqlite: sqitch_uri_story(Kind::Sqlite);
}
