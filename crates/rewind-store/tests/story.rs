//! One story, told to both backends: they must behave the same.
//!
//! The PostgreSQL half needs a server: `REWIND_TEST_PG_URL` names one (any database on it;
//! the test creates a fresh database of its own). `scripts/test` starts one.

// The test starts processes of its own directly (clippy.toml is for rewind itself).
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rewind_core::config::{CommandConfig, ComponentConfig, StateLocation, StateSync};
use rewind_core::{
    Action, JournalEvent, LedgerEffect, LockHolder, NewAudit, NewRelease, NewRun, ReleaseState,
    RunKind, RunStatus, Step,
};
use rewind_store::{Fence, LockAttempt, PostgresStore, SqliteStore, Store, StoreError};
use serde_json::json;

const ENV: &str = "prod";
const ACTOR: &str = "ann@box";

fn component() -> ComponentConfig {
    ComponentConfig::Command(CommandConfig {
        current: Some("cat version".into()),
        deploy: "ship {release}".into(),
        rollback: "unship {release}".into(),
        ready: None,
        ready_timeout: Duration::from_secs(30),
        workdir: PathBuf::from("/srv/app"),
        secret_env: vec![],
        command_timeout: Duration::from_secs(600),
    })
}

fn new_run(id: &str, kind: RunKind, release: &str, from: Option<&str>) -> NewRun {
    NewRun {
        id: id.into(),
        environment: ENV.into(),
        kind,
        release: release.into(),
        from_release: from.map(Into::into),
        actor: ACTOR.into(),
        steps: vec![
            Step {
                id: "web.restore-point".into(),
                title: "remember what web runs".into(),
                action: Action::RestorePoint {
                    component: "web".into(),
                    backup: None,
                },
                effects: vec![],
                always: false,
            },
            Step {
                id: "web.deploy".into(),
                title: format!("deploy {release}"),
                action: Action::RunCommand {
                    component: "web".into(),
                    hook: rewind_core::CommandHook::Deploy,
                    release: release.into(),
                },
                effects: vec![LedgerEffect::Current {
                    release: release.into(),
                }],
                always: false,
            },
        ],
        components: vec![("web".into(), component())],
    }
}

fn new_release(name: &str) -> NewRelease {
    NewRelease {
        name: name.into(),
        components: BTreeMap::from([
            ("api".to_string(), name.to_string()),
            ("web".to_string(), name.to_string()),
        ]),
        // A database's migration set, as a deploy records it (keys in the tool's order).
        migrations: BTreeMap::from([(
            "db".to_string(),
            vec![
                "20260101000000".to_string(),
                format!("2026020100000{}", name.len()),
            ],
        )]),
    }
}

fn audit(action: &str) -> NewAudit {
    NewAudit::new(ACTOR, action).details(json!({"why": action, "n": [1, 2.5, "x"]}))
}

fn holder(run_id: &str, pid: u32) -> LockHolder {
    let now = rewind_core::now_rfc3339();
    LockHolder {
        environment: ENV.into(),
        run_id: run_id.into(),
        pid,
        host: "box".into(),
        actor: ACTOR.into(),
        since: now.clone(),
        heartbeat: now,
        token: format!("token-{run_id}-{pid}"),
    }
}

fn fence_of(h: &LockHolder) -> Fence {
    Fence {
        environment: h.environment.clone(),
        token: h.token.clone(),
    }
}

/// Takes the lock of `env` for a holder of `run_id`, as a run's process does before it writes.
async fn hold(s: &dyn Store, env: &str, run_id: &str, pid: u32) -> (LockHolder, Fence) {
    let mut h = holder(run_id, pid);
    h.environment = env.into();
    assert_eq!(s.try_lock(&h).await.unwrap(), LockAttempt::Acquired);
    let f = fence_of(&h);
    (h, f)
}

/// The write was refused because the lock is no longer the writer's; `now` holds it.
#[track_caller]
fn assert_lost<T: std::fmt::Debug>(r: Result<T, StoreError>, now: Option<&LockHolder>) {
    match r {
        Err(StoreError::LockLost {
            environment,
            holder,
        }) => {
            assert_eq!(environment, ENV);
            assert_eq!(holder.as_deref(), now);
        }
        other => panic!("expected LockLost, got {other:?}"),
    }
}

/// Deploys `release` the way the executor does: restore point, then the switch, then done.
async fn deploy(
    store: &dyn Store,
    fence: &Fence,
    run_id: &str,
    release: &str,
    from: Option<&str>,
) -> usize {
    let mut audits = 0;
    let run = store
        .create_run(
            fence,
            &new_run(run_id, RunKind::Deploy, release, from),
            Some(&new_release(release)),
            audit("deploy").release(release),
        )
        .await
        .expect("create_run");
    audits += 1;
    assert_eq!(run.status, RunStatus::Running);

    let rel = store.release(ENV, release).await.unwrap().expect("release");
    assert_eq!(rel.state, ReleaseState::Deploying);
    assert_eq!(rel.run_id.as_deref(), Some(run_id));
    assert_eq!(rel.components, new_release(release).components);
    assert_eq!(rel.migrations, new_release(release).migrations);

    let step0 = (0, "web.restore-point");
    store
        .journal_append(fence, run_id, Some(step0), JournalEvent::Begin, "")
        .await
        .unwrap();
    store
        .journal_finish(
            fence,
            run_id,
            step0,
            JournalEvent::Done,
            "web ran something",
            &[LedgerEffect::RestorePoint {
                component: "web".into(),
                kind: "command".into(),
                version: from.map(Into::into),
                data: json!({"version": from, "run": run_id}),
            }],
            audit("step-done"),
            None,
        )
        .await
        .unwrap();
    audits += 1;

    let step1 = (1, "web.deploy");
    store
        .journal_append(fence, run_id, Some(step1), JournalEvent::Begin, "")
        .await
        .unwrap();
    store
        .journal_finish(
            fence,
            run_id,
            step1,
            JournalEvent::Done,
            "shipped",
            &[
                LedgerEffect::Deployed {
                    component: "web".into(),
                    version: release.into(),
                },
                LedgerEffect::Deployed {
                    component: "api".into(),
                    version: release.into(),
                },
                LedgerEffect::Current {
                    release: release.into(),
                },
            ],
            audit("step-done"),
            None,
        )
        .await
        .unwrap();
    audits += 1;

    store
        .finish_run(
            fence,
            run_id,
            RunStatus::Succeeded,
            None,
            &[LedgerEffect::ReleaseState {
                release: release.into(),
                state: ReleaseState::Good,
            }],
            audit("deploy-finished").release(release),
        )
        .await
        .unwrap();
    audits += 1;
    audits
}

/// The story. `other` is a second handle on the same database.
async fn story(store: Arc<dyn Store>, other: Arc<dyn Store>) {
    let s: &dyn Store = &*store;
    let mut audits = 0usize;

    // An empty store: nothing recorded for the environment, but an identity of its own,
    // the same through every handle.
    let empty = s.footprint(ENV).await.unwrap();
    assert!(empty.is_empty(), "{empty:?}");
    assert!(!empty.store_id.is_empty());
    assert_eq!(other.footprint(ENV).await.unwrap().store_id, empty.store_id);
    assert_eq!(s.current_release(ENV).await.unwrap(), None);
    assert!(s.deployed(ENV).await.unwrap().is_empty());
    assert!(s.releases(ENV).await.unwrap().is_empty());
    assert!(s.unfinished_run(ENV).await.unwrap().is_none());
    assert!(s.audit_entries(ENV).await.unwrap().is_empty());
    assert!(s.lock_holder(ENV).await.unwrap().is_none());
    // Every write of a run comes from the holder of the environment's lock.
    let (_, fence) = hold(s, ENV, "story", 1).await;

    // Deploy v1, then v2.
    audits += deploy(s, &fence, "run-1", "v1", None).await;
    assert_eq!(s.current_release(ENV).await.unwrap().as_deref(), Some("v1"));
    assert!(s.unfinished_run(ENV).await.unwrap().is_none());
    let r1 = s.run("run-1").await.unwrap().expect("run-1");
    assert_eq!(r1.status, RunStatus::Succeeded);
    assert_eq!(r1.kind, RunKind::Deploy);
    assert_eq!(
        r1.steps,
        new_run("run-1", RunKind::Deploy, "v1", None).steps
    );
    assert_eq!(r1.components, vec![("web".to_string(), component())]);
    assert!(r1.updated_at >= r1.created_at);

    // v2's run fails a step once (no effects may apply), then succeeds.
    let run2 = new_run("run-2", RunKind::Deploy, "v2", Some("v1"));
    s.create_run(&fence, &run2, Some(&new_release("v2")), audit("deploy"))
        .await
        .unwrap();
    audits += 1;
    assert_eq!(
        s.unfinished_run(ENV).await.unwrap().map(|r| r.id),
        Some("run-2".to_string())
    );
    s.journal_finish(
        &fence,
        "run-2",
        (1, "web.deploy"),
        JournalEvent::Failed,
        "exit status 1",
        &[LedgerEffect::Current {
            release: "v2".into(),
        }],
        audit("step-failed"),
        None,
    )
    .await
    .unwrap();
    audits += 1;
    assert_eq!(s.current_release(ENV).await.unwrap().as_deref(), Some("v1"));
    s.finish_run(
        &fence,
        "run-2",
        RunStatus::Failed,
        Some("web.deploy failed"),
        &[],
        audit("deploy-failed"),
    )
    .await
    .unwrap();
    audits += 1;
    let r2 = s.run("run-2").await.unwrap().unwrap();
    assert_eq!(r2.status, RunStatus::Failed);
    assert_eq!(r2.error.as_deref(), Some("web.deploy failed"));
    assert_eq!(r2.from_release.as_deref(), Some("v1"));
    // The release stays `deploying` until somebody says otherwise; a retry under a new name.
    audits += deploy(s, &fence, "run-3", "v3", Some("v1")).await;

    assert_eq!(s.current_release(ENV).await.unwrap().as_deref(), Some("v3"));
    assert_eq!(
        s.deployed(ENV).await.unwrap(),
        BTreeMap::from([
            ("api".to_string(), "v3".to_string()),
            ("web".to_string(), "v3".to_string())
        ])
    );
    let releases = s.releases(ENV).await.unwrap();
    let summary: Vec<(&str, i64, ReleaseState)> = releases
        .iter()
        .map(|r| (r.name.as_str(), r.seq, r.state))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("v1", 1, ReleaseState::Good),
            ("v2", 2, ReleaseState::Deploying),
            ("v3", 3, ReleaseState::Good)
        ]
    );
    assert!(
        releases
            .iter()
            .all(|r| r.environment == ENV && r.actor == ACTOR)
    );

    // A duplicate release name is refused and writes nothing.
    let audit_before = s.audit_entries(ENV).await.unwrap().len();
    let err = s
        .create_run(
            &fence,
            &new_run("run-dup", RunKind::Deploy, "v1", Some("v3")),
            Some(&new_release("v1")),
            audit("deploy"),
        )
        .await
        .expect_err("duplicate release");
    match err {
        StoreError::ReleaseExists {
            environment,
            release,
            state,
        } => {
            assert_eq!(
                (environment.as_str(), release.as_str(), state.as_str()),
                (ENV, "v1", "good")
            );
        }
        other => panic!("expected ReleaseExists, got {other:?}"),
    }
    assert!(s.run("run-dup").await.unwrap().is_none());
    assert_eq!(s.audit_entries(ENV).await.unwrap().len(), audit_before);
    assert_eq!(s.releases(ENV).await.unwrap().len(), 3);
    // Nor does a duplicate in an environment that did not exist before leave that behind.
    assert!(s.releases("nowhere").await.unwrap().is_empty());

    // Roll back from v3 to v1: interrupted once, then resumed and finished.
    s.create_run(
        &fence,
        &new_run("run-4", RunKind::Rollback, "v1", Some("v3")),
        None,
        audit("rollback").release("v1"),
    )
    .await
    .unwrap();
    audits += 1;
    assert_eq!(
        s.releases(ENV).await.unwrap().len(),
        3,
        "rollback adds no release"
    );
    s.journal_append(&fence, "run-4", None, JournalEvent::Note, "rolling back")
        .await
        .unwrap();
    s.finish_run(
        &fence,
        "run-4",
        RunStatus::Interrupted,
        Some("SIGINT"),
        &[],
        audit("interrupted"),
    )
    .await
    .unwrap();
    audits += 1;
    let unfinished = s
        .unfinished_run(ENV)
        .await
        .unwrap()
        .expect("interrupted run");
    assert_eq!(
        (unfinished.id.as_str(), unfinished.status, unfinished.kind),
        ("run-4", RunStatus::Interrupted, RunKind::Rollback)
    );
    s.journal_finish(
        &fence,
        "run-4",
        (1, "web.deploy"),
        JournalEvent::Skipped,
        "already at v1",
        &[
            LedgerEffect::Deployed {
                component: "web".into(),
                version: "v1".into(),
            },
            LedgerEffect::Deployed {
                component: "api".into(),
                version: "v1".into(),
            },
        ],
        audit("step-skipped"),
        None,
    )
    .await
    .unwrap();
    audits += 1;
    s.finish_run(
        &fence,
        "run-4",
        RunStatus::Succeeded,
        None,
        &[
            LedgerEffect::ReleaseState {
                release: "v3".into(),
                state: ReleaseState::RolledBack,
            },
            LedgerEffect::Current {
                release: "v1".into(),
            },
        ],
        audit("rollback-finished").release("v1"),
    )
    .await
    .unwrap();
    audits += 1;
    assert!(s.unfinished_run(ENV).await.unwrap().is_none());
    assert_eq!(s.current_release(ENV).await.unwrap().as_deref(), Some("v1"));
    assert_eq!(s.deployed(ENV).await.unwrap()["web"], "v1");
    assert_eq!(
        s.release(ENV, "v3").await.unwrap().unwrap().state,
        ReleaseState::RolledBack
    );
    assert!(s.release(ENV, "v9").await.unwrap().is_none());

    // Newest unfinished run first.
    for id in ["run-5", "run-6"] {
        s.create_run(
            &fence,
            &new_run(id, RunKind::Rollback, "v1", Some("v1")),
            None,
            audit("rollback"),
        )
        .await
        .unwrap();
        audits += 1;
    }
    assert_eq!(
        s.unfinished_run(ENV)
            .await
            .unwrap()
            .map(|r| r.id)
            .as_deref(),
        Some("run-6")
    );
    // An effect naming a missing release fails the whole step: no journal line, no audit.
    let journal_before = s.journal("run-6").await.unwrap().len();
    let err = s
        .journal_finish(
            &fence,
            "run-6",
            (0, "web.restore-point"),
            JournalEvent::Done,
            "",
            &[
                LedgerEffect::Current {
                    release: "v9".into(),
                },
                LedgerEffect::ReleaseState {
                    release: "v9".into(),
                    state: ReleaseState::Good,
                },
            ],
            audit("step-done"),
            None,
        )
        .await
        .expect_err("missing release");
    assert!(
        matches!(&err, StoreError::NoSuchRelease { environment, release } if environment == ENV && release == "v9"),
        "{err:?}"
    );
    assert_eq!(s.journal("run-6").await.unwrap().len(), journal_before);
    assert_eq!(s.current_release(ENV).await.unwrap().as_deref(), Some("v1"));
    for id in ["run-6", "run-5"] {
        s.finish_run(
            &fence,
            id,
            RunStatus::Abandoned,
            None,
            &[],
            audit("abandoned"),
        )
        .await
        .unwrap();
        audits += 1;
    }
    assert!(s.unfinished_run(ENV).await.unwrap().is_none());
    assert!(matches!(
        s.finish_run(&fence, "run-x", RunStatus::Failed, None, &[], audit("x")).await,
        Err(StoreError::NoSuchRun(id)) if id == "run-x"
    ));
    assert!(matches!(
        s.journal_append(&fence, "run-x", None, JournalEvent::Note, "")
            .await,
        Err(StoreError::NoSuchRun(_))
    ));

    // Runs, newest first.
    let ids: Vec<String> = s
        .runs(ENV, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["run-6", "run-5", "run-4", "run-3", "run-2", "run-1"]);
    assert_eq!(s.runs(ENV, 2).await.unwrap().len(), 2);
    assert!(s.runs("staging", 10).await.unwrap().is_empty());

    // The journal, in order.
    let j = s.journal("run-1").await.unwrap();
    let lines: Vec<(i64, Option<i64>, Option<&str>, JournalEvent)> = j
        .iter()
        .map(|e| (e.seq, e.step, e.step_id.as_deref(), e.event))
        .collect();
    assert_eq!(
        lines,
        vec![
            (1, Some(0), Some("web.restore-point"), JournalEvent::Begin),
            (2, Some(0), Some("web.restore-point"), JournalEvent::Done),
            (3, Some(1), Some("web.deploy"), JournalEvent::Begin),
            (4, Some(1), Some("web.deploy"), JournalEvent::Done),
        ]
    );
    assert_eq!(j[3].message, "shipped");
    assert!(j.windows(2).all(|w| w[0].at <= w[1].at));
    let j4 = s.journal("run-4").await.unwrap();
    assert_eq!(
        j4.iter().map(|e| (e.step, e.event)).collect::<Vec<_>>(),
        vec![(None, JournalEvent::Note), (Some(1), JournalEvent::Skipped)]
    );
    assert!(s.journal("run-2").await.unwrap()[0].event == JournalEvent::Failed);

    // Restore points, newest first.
    let points = s.restore_points(ENV, None).await.unwrap();
    assert_eq!(
        points.iter().map(|p| p.run_id.as_str()).collect::<Vec<_>>(),
        ["run-3", "run-1"]
    );
    assert!(points[0].id > points[1].id);
    assert_eq!(points[0].version.as_deref(), Some("v1"));
    assert_eq!(points[0].data, json!({"version": "v1", "run": "run-3"}));
    assert_eq!(
        (points[1].component.as_str(), points[1].kind.as_str()),
        ("web", "command")
    );
    let only1 = s.restore_points(ENV, Some("run-1")).await.unwrap();
    assert_eq!(only1.len(), 1);
    assert_eq!(only1[0].version, None);
    assert!(s.restore_points("staging", None).await.unwrap().is_empty());

    s.unlock(ENV, &fence.token).await.unwrap();

    // Locks.
    let a = holder("run-a", 100);
    let b = holder("run-b", 200);
    assert_eq!(s.try_lock(&a).await.unwrap(), LockAttempt::Acquired);
    assert_eq!(s.lock_holder(ENV).await.unwrap().as_ref(), Some(&a));
    assert_eq!(
        other.try_lock(&b).await.unwrap(),
        LockAttempt::Held(a.clone())
    );
    // A second process working on the same run does not get the lock: it belongs to the
    // holder (its token), not to the run.
    let a2 = holder("run-a", 101);
    assert_eq!(s.try_lock(&a2).await.unwrap(), LockAttempt::Held(a.clone()));
    assert_eq!(s.lock_holder(ENV).await.unwrap().unwrap().pid, 100);
    // Nor do its heartbeat and release touch the holder's lock.
    assert!(!s.heartbeat(ENV, &a2.token).await.unwrap());
    s.unlock(ENV, &a2.token).await.unwrap();
    assert_eq!(s.lock_holder(ENV).await.unwrap().as_ref(), Some(&a));
    // Take-over is compare-and-set on (token, heartbeat): of two taking over, one wins.
    assert!(other.take_over_lock(&b, &a).await.unwrap());
    assert_eq!(s.lock_holder(ENV).await.unwrap().as_ref(), Some(&b));
    let c = holder("run-c", 300);
    assert!(!s.take_over_lock(&c, &a).await.unwrap(), "stale data");
    let mut b_old_beat = b.clone();
    b_old_beat.heartbeat = "2000-01-01T00:00:00.000000Z".into();
    assert!(
        !s.take_over_lock(&c, &b_old_beat).await.unwrap(),
        "stale heartbeat"
    );
    assert!(s.heartbeat(ENV, &b.token).await.unwrap());
    assert!(!s.heartbeat(ENV, &a.token).await.unwrap());
    let beat = s.lock_holder(ENV).await.unwrap().unwrap().heartbeat;
    assert!(beat >= b.heartbeat);
    assert!(
        !s.take_over_lock(&c, &b).await.unwrap(),
        "heartbeat moved on"
    );
    s.unlock(ENV, &a.token).await.unwrap();
    assert_eq!(s.lock_holder(ENV).await.unwrap().unwrap().run_id, "run-b");
    s.unlock(ENV, &b.token).await.unwrap();
    assert!(s.lock_holder(ENV).await.unwrap().is_none());
    assert_eq!(s.try_lock(&c).await.unwrap(), LockAttempt::Acquired);
    assert!(s.lock_holder("staging").await.unwrap().is_none());
    s.unlock(ENV, &c.token).await.unwrap();

    // Fencing: every write of a run checks, in its own transaction, that the lock still
    // carries the writer's token. A holder that was taken over writes nothing more.
    let (fa_holder, fa) = hold(s, ENV, "run-f", 400).await;
    s.create_run(
        &fa,
        &new_run("run-f", RunKind::Rollback, "v1", Some("v1")),
        None,
        audit("rollback"),
    )
    .await
    .unwrap();
    audits += 1;
    s.journal_append(
        &fa,
        "run-f",
        Some((0, "web.restore-point")),
        JournalEvent::Begin,
        "",
    )
    .await
    .unwrap();
    let fb_holder = holder("run-f", 401);
    assert!(other.take_over_lock(&fb_holder, &fa_holder).await.unwrap());
    let fb = fence_of(&fb_holder);
    let journal_before = s.journal("run-f").await.unwrap();
    let audit_before = s.audit_entries(ENV).await.unwrap().len();
    let now = Some(&fb_holder);
    assert_lost(
        s.journal_append(&fa, "run-f", None, JournalEvent::Note, "late")
            .await,
        now,
    );
    assert_lost(
        s.journal_notes(&fa, "run-f", (0, "web.restore-point"), &["late".into()])
            .await,
        now,
    );
    assert_lost(
        s.journal_finish(
            &fa,
            "run-f",
            (0, "web.restore-point"),
            JournalEvent::Done,
            "late",
            &[LedgerEffect::Current {
                release: "v3".into(),
            }],
            audit("step-done"),
            Some((1, "web.deploy", "deploy v1")),
        )
        .await,
        now,
    );
    assert_lost(
        s.finish_run(
            &fa,
            "run-f",
            RunStatus::Interrupted,
            Some("late"),
            &[LedgerEffect::ReleaseState {
                release: "v1".into(),
                state: ReleaseState::Failed,
            }],
            audit("interrupted"),
        )
        .await,
        now,
    );
    assert_lost(
        s.create_run(
            &fa,
            &new_run("run-g", RunKind::Rollback, "v1", Some("v1")),
            None,
            audit("rollback"),
        )
        .await,
        now,
    );
    assert_eq!(s.journal("run-f").await.unwrap(), journal_before);
    assert_eq!(s.audit_entries(ENV).await.unwrap().len(), audit_before);
    assert_eq!(s.current_release(ENV).await.unwrap().as_deref(), Some("v1"));
    assert_eq!(
        s.release(ENV, "v1").await.unwrap().unwrap().state,
        ReleaseState::Good
    );
    assert_eq!(
        s.run("run-f").await.unwrap().unwrap().status,
        RunStatus::Running
    );
    assert!(s.run("run-g").await.unwrap().is_none());
    // The new holder finishes the run.
    s.journal_finish(
        &fb,
        "run-f",
        (0, "web.restore-point"),
        JournalEvent::Done,
        "",
        &[],
        audit("step-done"),
        None,
    )
    .await
    .unwrap();
    audits += 1;
    s.finish_run(&fb, "run-f", RunStatus::Succeeded, None, &[], audit("done"))
        .await
        .unwrap();
    audits += 1;
    // A released lock fences as well: nobody holds it, so nobody may write.
    s.unlock(ENV, &fb.token).await.unwrap();
    assert_lost(
        s.journal_append(&fb, "run-f", None, JournalEvent::Note, "late")
            .await,
        None,
    );
    // A fence names the run's own environment.
    let (_, fs) = hold(s, "staging", "run-s", 500).await;
    assert!(matches!(
        s.journal_append(&fs, "run-f", None, JournalEvent::Note, "x")
            .await,
        Err(StoreError::Corrupt { .. })
    ));
    s.unlock("staging", &fs.token).await.unwrap();
    assert_eq!(
        s.journal("run-f").await.unwrap().len(),
        journal_before.len() + 1
    );

    // The audit chain.
    let direct = s
        .audit_append(
            ENV,
            NewAudit::new(ACTOR, "note").details(json!({"text": "hello"})),
        )
        .await
        .unwrap();
    audits += 1;
    assert_eq!(direct.seq, audits as i64);
    let chain = s.audit_entries(ENV).await.unwrap();
    assert_eq!(chain.len(), audits);
    rewind_core::audit::verify(&chain).expect("intact chain");
    assert_eq!(chain.last(), Some(&direct));
    assert_eq!(chain[0].action, "deploy");
    assert_eq!(
        chain[0].run_id.as_deref(),
        Some("run-1"),
        "run id filled in"
    );
    assert_eq!(chain[0].release.as_deref(), Some("v1"));
    assert!(chain.iter().all(|e| e.environment == ENV));
    assert!(s.audit_entries("staging").await.unwrap().is_empty());
    // The footprint: one snapshot of the head, the chain's end and the counts.
    let fp = s.footprint(ENV).await.unwrap();
    let end = Some((direct.seq, direct.hash.clone()));
    assert_eq!((fp.head.clone(), fp.last.clone()), (end.clone(), end));
    assert_eq!(fp.audit_entries, audits as i64);
    assert_eq!(fp.store_id, empty.store_id);
    assert!(fp.releases >= 3 && fp.runs >= 3, "{fp:?}");
    assert!(!fp.is_empty());
    assert_eq!(
        s.audit_hash_at(ENV, 1).await.unwrap().as_deref(),
        Some(chain[0].hash.as_str())
    );
    assert_eq!(s.audit_hash_at(ENV, 10_000).await.unwrap(), None);

    // Concurrent writers on two handles never fork a chain nor a release sequence.
    let (_, race_fence) = hold(s, "race", "race", 600).await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let h = if t % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        let race_fence = race_fence.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..5 {
                h.audit_append(
                    "race",
                    NewAudit::new(ACTOR, "note").details(json!({"task": t, "i": i})),
                )
                .await
                .expect("concurrent audit_append");
            }
            let mut run = new_run(&format!("race-{t}"), RunKind::Deploy, "x", None);
            run.environment = "race".into();
            h.create_run(
                &race_fence,
                &run,
                Some(&new_release(&format!("r{t}"))),
                audit("deploy"),
            )
            .await
            .expect("concurrent create_run");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let race = other.audit_entries("race").await.unwrap();
    assert_eq!(race.len(), 8 * 6);
    rewind_core::audit::verify(&race).expect("unbroken concurrent chain");
    let seqs: Vec<i64> = s
        .releases("race")
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
    // The other environment's chain is untouched.
    assert_eq!(s.audit_entries(ENV).await.unwrap().len(), audits);

    watches_and_incidents(s).await;
}

/// Monitoring windows, incidents and run-less ledger records.
async fn watches_and_incidents(s: &dyn Store) {
    use rewind_core::{Incident, IncidentStatus, LedgerEffect, ReleaseState, Watch};
    let env = "watched";
    let mut run = new_run("w-1", RunKind::Deploy, "w1", None);
    run.environment = env.into();
    let (_, fence) = hold(s, env, "w-1", 700).await;
    s.create_run(&fence, &run, Some(&new_release("w1")), audit("deploy"))
        .await
        .unwrap();
    assert!(s.active_watch(env).await.unwrap().is_none());
    let w = Watch {
        environment: env.into(),
        release: "w1".into(),
        started_at: rewind_core::now_rfc3339(),
        window_secs: 2.5,
        baseline: serde_json::json!({"checkout": {"latency_ms": 17.192, "requests": 200}}),
        status: "watching".into(),
    };
    s.begin_watch(
        &w,
        &[LedgerEffect::ReleaseState {
            release: "w1".into(),
            state: ReleaseState::Watching,
        }],
        audit("watch.start"),
    )
    .await
    .unwrap();
    let got = s.active_watch(env).await.unwrap().expect("active window");
    assert_eq!(
        got, w,
        "a window reads back exactly, fractional seconds and floats included"
    );
    assert_eq!(
        s.release(env, "w1").await.unwrap().unwrap().state,
        ReleaseState::Watching
    );

    let inc = Incident {
        id: "inc-1".into(),
        environment: env.into(),
        release: "w1".into(),
        trigger: "errors".into(),
        signal: Some("checkout".into()),
        summary: "5xx above 1%".into(),
        evidence: serde_json::json!({"n": 48, "failures": 4, "log_evidence": 6.216461983581198}),
        status: IncidentStatus::Open,
        rollback_run: None,
        opened_at: rewind_core::now_rfc3339(),
        updated_at: rewind_core::now_rfc3339(),
    };
    s.open_incident(&inc, audit("incident.open")).await.unwrap();
    s.end_watch(
        env,
        "w1",
        "fired",
        &[LedgerEffect::ReleaseState {
            release: "w1".into(),
            state: ReleaseState::Failed,
        }],
        audit("watch.fired"),
    )
    .await
    .unwrap();
    assert!(s.active_watch(env).await.unwrap().is_none());
    s.update_incident(
        "inc-1",
        IncidentStatus::RolledBack,
        Some("run-9"),
        audit("incident.rolled-back"),
    )
    .await
    .unwrap();
    let all = s.incidents(env).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].status, IncidentStatus::RolledBack);
    assert_eq!(all[0].rollback_run.as_deref(), Some("run-9"));
    assert_eq!(all[0].evidence, inc.evidence);
    assert!(
        s.update_incident("nope", IncidentStatus::Escalated, None, audit("x"))
            .await
            .is_err()
    );

    s.record(
        env,
        &[LedgerEffect::ReleaseState {
            release: "w1".into(),
            state: ReleaseState::RolledBack,
        }],
        audit("record"),
    )
    .await
    .unwrap();
    assert_eq!(
        s.release(env, "w1").await.unwrap().unwrap().state,
        ReleaseState::RolledBack
    );
    let chain = s.audit_entries(env).await.unwrap();
    assert_eq!(chain.len(), 6);
    rewind_core::audit::verify(&chain)
        .expect("chain with float details verifies after a round trip");
    assert_eq!(s.audit_head(env).await.unwrap().map(|h| h.0), Some(6));
}

/// Values changed outside rewind, one in each table that is read row by row: each is named
/// (entry, column, what is wrong), and every other row still reads. `exec` runs SQL on the
/// store's database; `utf8` adds a value that is not UTF-8 (SQLite only: PostgreSQL refuses
/// to store one).
async fn tampered_rows<F, Fut>(s: &dyn Store, exec: F, utf8: bool)
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let audits = s.read_audit(ENV).await.unwrap().len();
    let runs = s.read_runs(ENV, 100).await.unwrap().len();
    let releases = s.read_releases(ENV).await.unwrap().len();
    let journal = s.read_journal("run-1").await.unwrap().len();
    let points = s.read_restore_points(ENV, None).await.unwrap().len();
    let incidents = s.read_incidents("watched").await.unwrap().len();
    exec("UPDATE audit SET details = 'not json' WHERE env = 'prod' AND seq = 2").await;
    exec("UPDATE runs SET steps = '[' WHERE id = 'run-2'").await;
    exec("UPDATE releases SET components = 'x' WHERE env = 'prod' AND name = 'v2'").await;
    exec("UPDATE journal SET event = 'exploded' WHERE run_id = 'run-1' AND seq = 1").await;
    exec("UPDATE restore_points SET data = '{' WHERE id = (SELECT min(id) FROM restore_points WHERE env = 'prod')").await;
    exec("UPDATE incidents SET evidence = 'x' WHERE env = 'watched'").await;
    if utf8 {
        exec("UPDATE audit SET actor = CAST(x'61ff62' AS TEXT) WHERE env = 'prod' AND seq = 4")
            .await;
    }

    /// The one unreadable row of `rows`, after checking the others read.
    fn bad<T>(rows: Vec<rewind_store::Readable<T>>, total: usize) -> Vec<rewind_store::Unreadable> {
        assert_eq!(rows.len(), total, "every row is still there");
        rows.into_iter().filter_map(|r| r.err()).collect()
    }
    let a = bad(s.read_audit(ENV).await.unwrap(), audits);
    assert_eq!(a.len(), if utf8 { 2 } else { 1 }, "{a:?}");
    assert_eq!((a[0].seq, a[0].column.as_str()), (Some(2), "details"));
    assert!(a[0].entry.contains("audit entry #2 of prod"), "{a:?}");
    assert!(a[0].problem.contains("not the JSON"), "{a:?}");
    if utf8 {
        assert_eq!((a[1].seq, a[1].column.as_str()), (Some(4), "actor"));
        assert!(a[1].problem.contains("not valid UTF-8"), "{a:?}");
    }
    let r = bad(s.read_runs(ENV, 100).await.unwrap(), runs);
    assert_eq!(r.len(), 1);
    assert!(
        r[0].entry.contains("run-2") && r[0].column == "steps",
        "{r:?}"
    );
    let r = bad(s.read_releases(ENV).await.unwrap(), releases);
    assert!(
        r.len() == 1 && r[0].entry.contains("`v2`") && r[0].column == "components",
        "{r:?}"
    );
    let r = bad(s.read_journal("run-1").await.unwrap(), journal);
    assert!(
        r.len() == 1 && r[0].seq == Some(1) && r[0].column == "event",
        "{r:?}"
    );
    assert!(r[0].problem.contains("exploded"), "{r:?}");
    let r = bad(s.read_restore_points(ENV, None).await.unwrap(), points);
    assert!(r.len() == 1 && r[0].column == "data", "{r:?}");
    let r = bad(s.read_incidents("watched").await.unwrap(), incidents);
    assert!(!r.is_empty() && r[0].column == "evidence", "{r:?}");
    // Reading strictly fails on the first, naming it.
    match s.audit_entries(ENV).await {
        Err(StoreError::Unreadable(u)) => assert_eq!(u.seq, Some(2)),
        other => panic!("expected Unreadable, got {other:?}"),
    }
    let err = s.releases(ENV).await.unwrap_err().to_string();
    assert!(
        err.contains("release `v2` of prod") && err.contains("components"),
        "{err}"
    );

    // The chain's newest entry removed: the footprint (one snapshot) shows the chain ending
    // before the head recorded apart from it, and the store keeps its identity.
    let before = s.footprint(ENV).await.unwrap();
    let (head, _) = before.head.clone().expect("a head");
    assert_eq!(before.last.as_ref().map(|l| l.0), Some(head));
    exec("DELETE FROM audit WHERE env = 'prod' AND seq = (SELECT max(seq) FROM audit WHERE env = 'prod')").await;
    let after = s.footprint(ENV).await.unwrap();
    assert_eq!(after.head, before.head, "the head record stays");
    assert_eq!(after.last.map(|l| l.0), Some(head - 1));
    assert_eq!(after.audit_entries, before.audit_entries - 1);
    assert_eq!(after.store_id, before.store_id);
    assert_eq!(s.audit_hash_at(ENV, head).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_story() {
    let dir = tempfile::tempdir().unwrap();
    // The parent directory does not exist yet: open creates it.
    let path = dir.path().join("app/.rewind/state.db");
    let a = SqliteStore::open(&path).await.expect("open sqlite");
    assert!(path.exists());
    assert!(a.location().contains("state.db"));
    let b = rewind_store::open(&StateLocation::Sqlite(path.clone()), StateSync::Full)
        .await
        .expect("second handle");
    story(Arc::new(a), Arc::from(b)).await;
    // Reopening an existing, migrated file works and sees the data; read-only too.
    let again = SqliteStore::open(&path).await.expect("reopen");
    assert_eq!(
        again.current_release(ENV).await.unwrap().as_deref(),
        Some("v1")
    );
    let reader = SqliteStore::open_read_only(&path).await.expect("read-only");
    assert_eq!(
        reader.footprint(ENV).await.unwrap(),
        again.footprint(ENV).await.unwrap()
    );
    let url = format!("sqlite://{}", path.display());
    tampered_rows(
        &again,
        |sql| {
            let url = url.clone();
            async move {
                use sqlx::Connection as _;
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query(sql).execute(&mut c).await.unwrap();
                c.close().await.unwrap();
            }
        },
        true,
    )
    .await;
}

/// Reading never creates or changes anything: a missing store reads as empty (and stays
/// missing), another program's SQLite database is refused and left as it was, and so is one
/// that is not SQLite at all.
#[tokio::test]
async fn sqlite_read_only_open_creates_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere/state.db");
    let s = rewind_store::open_for(
        &StateLocation::Sqlite(missing.clone()),
        StateSync::Full,
        rewind_store::Access::Read,
    )
    .await
    .expect("a missing store reads as empty");
    let fp = s.footprint(ENV).await.unwrap();
    assert!(fp.is_empty() && fp.store_id.is_empty(), "{fp:?}");
    assert!(s.releases(ENV).await.unwrap().is_empty());
    assert!(!missing.exists() && !missing.parent().unwrap().exists());
    assert!(rewind_store::is_new(&StateLocation::Sqlite(missing)));

    // Another program's database: refused for reading and for writing, not migrated.
    let other = dir.path().join("app.db");
    {
        use sqlx::Connection as _;
        let url = format!("sqlite://{}?mode=rwc", other.display());
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE users (id INTEGER)")
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
    }
    let before = std::fs::read(&other).unwrap();
    for access in [rewind_store::Access::Read, rewind_store::Access::Write] {
        let err = rewind_store::open_for(
            &StateLocation::Sqlite(other.clone()),
            StateSync::Full,
            access,
        )
        .await
        .map(|_| ())
        .expect_err("not a rewind store");
        match &err {
            StoreError::NotAStore { location, reason } => {
                assert!(location.contains("app.db"), "{location}");
                assert!(reason.contains("users"), "{reason}");
            }
            other => panic!("expected NotAStore, got {other:?}"),
        }
    }
    assert!(std::fs::read(&other).unwrap() == before, "changed");
}

#[tokio::test]
async fn sqlite_file_that_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    std::fs::write(
        &path,
        "this is not an SQLite database, just some text. ".repeat(100),
    )
    .unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = SqliteStore::open(&path).await.expect_err("not a database");
    match &err {
        StoreError::NotAStore { location, reason } => {
            assert!(location.contains(&path.display().to_string()), "{location}");
            assert!(reason.contains("not an SQLite database"), "{reason}");
        }
        other => panic!("expected StoreError::NotAStore, got {other:?}"),
    }
    assert!(std::fs::read(&path).unwrap() == before, "changed");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn postgres_errors_hide_the_password() {
    // Nothing listens on port 1: the connection fails, and must not show the password.
    let url = "postgres://rewind:hunter2secret@127.0.0.1:1/rewind?connect_timeout=2";
    let started = std::time::Instant::now();
    let err = PostgresStore::connect(url).await.expect_err("no server");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let text = format!("{err} / {err:?}");
    assert!(!text.contains("hunter2secret"), "{text}");
    match err {
        StoreError::Unreachable { location, reason } => {
            assert!(location.contains("127.0.0.1:1"), "{location}");
            assert!(reason.contains("connection refused"), "{reason}");
        }
        other => panic!("expected StoreError::Unreachable, got {other:?}"),
    }
}

/// `url` with its database name replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let server = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{db}?{q}"),
        None => format!("{server}/{db}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_story() {
    use sqlx::Connection as _;

    let Ok(url) = std::env::var("REWIND_TEST_PG_URL") else {
        panic!("REWIND_TEST_PG_URL is not set: run scripts/test, which starts PostgreSQL");
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let db = format!("rewind_story_{}_{nanos}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to REWIND_TEST_PG_URL: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await
        .expect("create test database");

    let db_url = with_database(&url, &db);
    let a = PostgresStore::connect(&db_url).await.expect("connect");
    let b = rewind_store::open(&StateLocation::Postgres(db_url.clone()), StateSync::Full)
        .await
        .expect("second handle");
    story(Arc::new(a), Arc::from(b)).await;
    // Connecting again to a migrated database works and sees the data.
    let again = PostgresStore::connect(&db_url).await.expect("reconnect");
    assert_eq!(
        again.current_release(ENV).await.unwrap().as_deref(),
        Some("v1")
    );
    tampered_rows(
        &again,
        |sql| {
            let url = db_url.clone();
            async move {
                let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                sqlx::query(sql).execute(&mut c).await.unwrap();
                c.close().await.unwrap();
            }
        },
        false,
    )
    .await;
    drop(again);

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {db} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .expect("drop test database");
}

#[test]
fn database_name_replacement() {
    assert_eq!(
        with_database("postgres://u:p@h:5/postgres?sslmode=disable", "x"),
        "postgres://u:p@h:5/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
}

/// Two processes on one brand-new SQLite file: both migrate it at once, then write
/// concurrently. Each child is this test binary running `sqlite_child_writer`.
#[test]
fn sqlite_two_processes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|i| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "sqlite_child_writer",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("REWIND_STORE_CHILD_DB", &path)
                .env("REWIND_STORE_CHILD_ID", i.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "child failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(&path).await.unwrap();
        let chain = store.audit_entries("twins").await.unwrap();
        assert_eq!(chain.len(), 2 * 30);
        rewind_core::audit::verify(&chain).expect("unbroken chain across processes");
        assert!(store.lock_holder("twins").await.unwrap().is_none());
    });
}

/// The child half of `sqlite_two_processes`; does nothing when run on its own.
#[tokio::test]
async fn sqlite_child_writer() {
    let Ok(path) = std::env::var("REWIND_STORE_CHILD_DB") else {
        return;
    };
    let id = std::env::var("REWIND_STORE_CHILD_ID").unwrap();
    let store = SqliteStore::open(std::path::Path::new(&path))
        .await
        .expect("child opens the store");
    for i in 0..30 {
        let mut me = holder(&format!("child-{id}"), std::process::id());
        me.environment = "twins".into();
        // Read-then-write patterns that deadlock under deferred transactions.
        match store.try_lock(&me).await.expect("try_lock") {
            LockAttempt::Acquired => {
                store
                    .heartbeat("twins", &me.token)
                    .await
                    .expect("heartbeat");
                store.unlock("twins", &me.token).await.expect("unlock");
            }
            LockAttempt::Held(other) => assert_ne!(other.run_id, me.run_id),
        }
        store
            .audit_append(
                "twins",
                NewAudit::new(ACTOR, "note").details(json!({"child": id, "i": i})),
            )
            .await
            .expect("audit_append");
    }
}
