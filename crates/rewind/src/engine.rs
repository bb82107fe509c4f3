//! The executor: runs a recorded plan step by step under the environment's lock, with a
//! write-ahead journal. Before a step acts, its `begin` line is stored; when it is done, its
//! `done` line, its ledger effects and its audit entry are stored in one transaction. A step
//! whose `done` (or `skipped`) line exists is never run again; a step that began but did not
//! finish is run again, and checks its postcondition first. So a run killed at any instant
//! ends, after `rewind resume`, in the same state as a run that was never interrupted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rewind_components::{Component, Ctx, Outcome, crash, host};
use rewind_core::redact::Redactor;
use rewind_core::{Action, JournalEvent, LedgerEffect, LockHolder, NewAudit, Run};
use rewind_store::{Fence, LockAttempt, Store, StoreError};
use serde_json::json;

use crate::error::{CliError, CliResult, blocked};
use crate::output::Printer;

/// A fresh run id, `20261130T054500Z-3f9a1c2b7d4e`: the UTC second first (so ids sort by
/// age), then 48 bits from the operating system's random source. Two processes starting in
/// the same second collide with probability about n²/2⁴⁹ (n runs in that second), so never in
/// practice; a hash of the clock and the pid, as before, collided once in ~7,500 deploys.
pub fn new_run_id() -> String {
    let now = jiff::Timestamp::now();
    format!("{}-{}", now.strftime("%Y%m%dT%H%M%SZ"), random_hex::<6>())
}

/// `N` random bytes from the operating system, as `2N` lowercase hex digits.
pub fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    // The OS random source does not fail on Linux once booted; if it ever does, nothing
    // sensible can be done without it (ids and lock tokens must not repeat).
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The environment's run lock, held by this process while this value lives (a heartbeat
/// keeps it fresh). The lock belongs to the holder's token, not to the run: a second process
/// working on the same run (a `resume` while the run is still going) is refused like any other.
///
/// Losing the lock (a holder frozen past `lock-stale-after` is taken over) is noticed three
/// ways: every write of the run is fenced by the holder's token in the store (refused, in the
/// same transaction, once the lock is another's); the executor reads the lock before every
/// step and every action; and the heartbeat that finds the lock gone stops the running action.
pub struct LockGuard {
    store: Arc<dyn Store>,
    fence: Fence,
    lost: tokio::sync::watch::Receiver<bool>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl LockGuard {
    /// Takes the lock for `run_id`, taking it over from a dead holder (a process that no
    /// longer exists on this host, or a heartbeat older than `stale_after`). A live holder
    /// blocks: exit 3, naming it.
    pub async fn acquire(
        store: Arc<dyn Store>,
        env: &str,
        run_id: &str,
        stale_after: Duration,
        printer: &Printer,
    ) -> CliResult<LockGuard> {
        let now = rewind_core::now_rfc3339();
        let me = LockHolder {
            environment: env.to_string(),
            run_id: run_id.to_string(),
            pid: std::process::id(),
            host: host::hostname(),
            actor: host::actor(),
            since: now.clone(),
            heartbeat: now,
            token: random_hex::<16>(),
        };
        for _ in 0..5 {
            match store.try_lock(&me).await? {
                LockAttempt::Acquired => {
                    return Ok(Self::start(store, env, &me.token, stale_after));
                }
                LockAttempt::Held(h) => {
                    if let Some(why) = dead_reason(&h, stale_after) {
                        if store.take_over_lock(&me, &h).await? {
                            printer.warn(format!(
                                "took over the lock of run {} ({}, pid {} on {}): {why}",
                                h.run_id, h.actor, h.pid, h.host
                            ));
                            store
                                .audit_append(
                                    env,
                                    NewAudit::new(&me.actor, "lock.takeover")
                                        .run(run_id)
                                        .details(json!({
                                            "previous_run": h.run_id,
                                            "previous_pid": h.pid,
                                            "previous_host": h.host,
                                            "reason": why,
                                        })),
                                )
                                .await?;
                            return Ok(Self::start(store, env, &me.token, stale_after));
                        }
                        continue;
                    }
                    return Err(locked_by(env, &h));
                }
            }
        }
        Err(blocked(format!(
            "could not take the lock of `{env}`: it changed hands repeatedly"
        )))
    }

    fn start(store: Arc<dyn Store>, env: &str, token: &str, stale_after: Duration) -> LockGuard {
        let (lost_tx, lost) = tokio::sync::watch::channel(false);
        let every = (stale_after / 5).clamp(Duration::from_millis(500), Duration::from_secs(5));
        let fence = Fence {
            environment: env.to_string(),
            token: token.to_string(),
        };
        let (s, f) = (store.clone(), fence.clone());
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match s.heartbeat(&f.environment, &f.token).await {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = lost_tx.send(true);
                        return;
                    }
                    // A passing store error: try again next beat; the lock goes stale only
                    // if the store stays unreachable.
                    Err(_) => {}
                }
            }
        });
        LockGuard {
            store,
            fence,
            lost,
            heartbeat,
        }
    }

    /// The token every write of the run carries.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Reads the lock: an error (`LockLost`, naming who holds it now) when it is no longer
    /// this holder's.
    pub async fn check(&self) -> Result<(), StoreError> {
        let holder = self.store.lock_holder(&self.fence.environment).await?;
        match holder {
            Some(h) if h.token == self.fence.token => Ok(()),
            other => Err(StoreError::LockLost {
                environment: self.fence.environment.clone(),
                holder: other.map(Box::new),
            }),
        }
    }

    /// Resolves when the heartbeat finds the lock another's (never, while it is ours).
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        // The sender lives as long as the heartbeat task; a task that ended without
        // sending (aborted on release) never reports a loss.
        if rx.wait_for(|lost| *lost).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    pub async fn release(self) {
        self.heartbeat.abort();
        let _ = self
            .store
            .unlock(&self.fence.environment, &self.fence.token)
            .await;
    }
}

/// The refusal of a command that needs the lock while `h`, alive, holds it (exit 3).
pub fn locked_by(env: &str, h: &LockHolder) -> CliError {
    let age = age_secs(&h.heartbeat)
        .map(|s| format!("{s:.0}s ago"))
        .unwrap_or_else(|| "at an unreadable time".into());
    blocked(format!(
        "environment `{env}` is locked by run {} ({}, pid {} on {}, since {}; last heartbeat {age})",
        h.run_id, h.actor, h.pid, h.host, h.since
    ))
    .hint("wait for that run to finish (`rewind status` shows it); a holder that dies is taken over automatically")
}

/// The holder of `env`'s lock if it is alive (a command needing the lock would be refused),
/// judged as [`LockGuard::acquire`] judges it.
pub async fn live_holder(
    store: &dyn Store,
    env: &str,
    stale_after: Duration,
) -> CliResult<Option<LockHolder>> {
    Ok(store
        .lock_holder(env)
        .await?
        .filter(|h| dead_reason(h, stale_after).is_none()))
}

fn age_secs(ts: &str) -> Option<f64> {
    let t = rewind_core::parse_ts(ts)?;
    Some(
        (jiff::Timestamp::now() - t)
            .total(jiff::Unit::Second)
            .ok()?
            .max(0.0),
    )
}

/// Why a holder counts as dead, or `None` if it is alive.
pub fn dead_reason(h: &LockHolder, stale_after: Duration) -> Option<String> {
    if h.host == host::hostname() && !host::process_alive(h.pid) {
        return Some(format!("process {} no longer exists", h.pid));
    }
    match age_secs(&h.heartbeat) {
        Some(age) if age > stale_after.as_secs_f64() => Some(format!("no heartbeat for {age:.0}s")),
        None => Some("its heartbeat time is unreadable".into()),
        _ => None,
    }
}

/// How an execution ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    Succeeded,
    Failed { step: String, error: String },
    Interrupted { next_step: String },
}

/// What happened to one step in this execution.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepReport {
    pub index: usize,
    pub id: String,
    pub title: String,
    /// done, skipped, failed, or already-done (finished by an earlier execution).
    pub outcome: String,
    pub message: String,
    pub seconds: f64,
}

pub struct Executor<'a> {
    pub store: Arc<dyn Store>,
    pub env: String,
    pub actor: String,
    pub redactor: Redactor,
    pub printer: &'a Printer,
    pub interrupt: Arc<AtomicBool>,
    /// The run's components ready to act with: its record unsealed and its secrets filled in
    /// (`Env::run_components`). The record itself holds no secret.
    pub components: Vec<(String, rewind_core::config::ComponentConfig)>,
}

impl Executor<'_> {
    /// Runs every step of `run` not yet finished. Does not close the run: the caller does,
    /// with the effects that fit the outcome.
    pub async fn execute(
        &self,
        run: &Run,
        lock: &LockGuard,
    ) -> CliResult<(RunEnd, Vec<StepReport>)> {
        let journal = self.store.journal(&run.id).await?;
        let finished: BTreeSet<i64> = journal
            .iter()
            .filter(|e| matches!(e.event, JournalEvent::Done | JournalEvent::Skipped))
            .filter_map(|e| e.step)
            .collect();
        let components: BTreeMap<&str, Box<dyn Component>> = self
            .components
            .iter()
            .map(|(n, c)| (n.as_str(), rewind_components::build(n, c)))
            .collect();
        let mut cx = Ctx::new(&self.env, self.redactor.clone());
        cx.current_release = run.from_release.clone();
        let total = run.steps.len();
        let mut reports = Vec::new();
        // The step whose `begin` line was already written with the previous step's `done`.
        let mut begun: Option<usize> = None;
        // After a failure only the `always` steps still run; the failure is reported after them.
        let mut failure: Option<(String, String)> = None;
        for (i, step) in run.steps.iter().enumerate() {
            if failure.is_some() && !step.always {
                continue;
            }
            if finished.contains(&(i as i64)) {
                reports.push(StepReport {
                    index: i,
                    id: step.id.clone(),
                    title: step.title.clone(),
                    outcome: "already-done".into(),
                    message: String::new(),
                    seconds: 0.0,
                });
                continue;
            }
            if failure.is_none() && self.interrupt.load(Ordering::SeqCst) {
                return Ok((
                    RunEnd::Interrupted {
                        next_step: step.id.clone(),
                    },
                    reports,
                ));
            }
            let key = (i as i64, step.id.as_str());
            crash::point("before", &step.id);
            if begun != Some(i) {
                self.store
                    .journal_append(
                        lock.fence(),
                        &run.id,
                        Some(key),
                        JournalEvent::Begin,
                        &step.title,
                    )
                    .await?;
            }
            crash::point("after-begin", &step.id);
            self.printer
                .note(format!("[{}/{total}] {}", i + 1, step.title));
            let started = Instant::now();
            let mut effects = step.effects.clone();
            let (notes_tx, mut notes_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            let mut cx = cx.clone();
            cx.notes = Some(notes_tx);
            if let Action::DataCheck { component, .. } = &step.action {
                cx.baseline_counts = self
                    .store
                    .restore_points(&self.env, Some(&run.id))
                    .await?
                    .into_iter()
                    .rev()
                    .find(|p| &p.component == component)
                    .and_then(|p| {
                        serde_json::from_value(p.data["backup"]["row_counts"].clone()).ok()
                    });
            }
            // The last moment to notice a lost lock before acting (the `begin` line is
            // fenced too, but may have been written with the previous step's `done`).
            lock.check().await?;
            let act = async {
                match &step.action {
                    Action::Record => Ok((Outcome::Done("recorded".into()), None)),
                    Action::RestorePoint { component, backup } => {
                        match components.get(component.as_str()) {
                            Some(c) => c.restore_point(&cx, backup.as_deref()).await.map(|snap| {
                                let mut summary = format!(
                                    "{component} runs {}",
                                    snap.version
                                        .clone()
                                        .unwrap_or_else(|| "an unknown version".into())
                                );
                                if let Some(file) = snap.data["backup"]["file"].as_str() {
                                    summary.push_str(&format!(
                                        "; backup {file} ({} bytes)",
                                        snap.data["backup"]["bytes"]
                                    ));
                                }
                                let effect = LedgerEffect::RestorePoint {
                                    component: component.clone(),
                                    kind: c.kind().to_string(),
                                    version: snap.version,
                                    data: snap.data,
                                };
                                (Outcome::Done(summary), Some(effect))
                            }),
                            None => Err(missing(component)),
                        }
                    }
                    action => {
                        let name = action.component().unwrap_or_default();
                        match components.get(name) {
                            Some(c) => c.apply(&cx, action).await.map(|o| (o, None)),
                            None => Err(missing(name)),
                        }
                    }
                }
            };
            // Progress lines go to the screen at once and to the journal in bursts: at most
            // every NOTE_FLUSH (one commit for many lines), and before the step closes. A
            // kill loses at most the last burst of lines; nothing a resume needs is in them
            // (a migration that runs alone keeps its progress in its own database).
            tokio::pin!(act);
            let mut pending: Vec<String> = Vec::new();
            let mut flushed = Instant::now();
            let result = loop {
                let deadline = tokio::time::Instant::from_std(flushed + NOTE_FLUSH);
                tokio::select! {
                    r = &mut act => break r,
                    // Taken over while acting: stop at once (dropping the action kills its
                    // children) and store nothing more, not even the pending notes.
                    () = lock.lost() => {
                        return Err(lock.check().await.err().unwrap_or_else(|| StoreError::LockLost {
                            environment: self.env.clone(),
                            holder: None,
                        }).into());
                    }
                    Some(line) = notes_rx.recv() => {
                        pending.push(self.show_note(&line));
                        if flushed.elapsed() >= NOTE_FLUSH {
                            self.store.journal_notes(lock.fence(), &run.id, key, &pending).await?;
                            pending.clear();
                            flushed = Instant::now();
                        }
                    }
                    _ = tokio::time::sleep_until(deadline), if !pending.is_empty() => {
                        self.store.journal_notes(lock.fence(), &run.id, key, &pending).await?;
                        pending.clear();
                        flushed = Instant::now();
                    }
                }
            };
            while let Ok(line) = notes_rx.try_recv() {
                pending.push(self.show_note(&line));
            }
            self.store
                .journal_notes(lock.fence(), &run.id, key, &pending)
                .await?;
            let result = result.map(|(outcome, effect)| {
                effects.extend(effect);
                outcome
            });
            let seconds = started.elapsed().as_secs_f64();
            match result {
                Ok(outcome) => {
                    // Steps without a kill point of their own inside the action are killed
                    // "in the middle" here: acted, nothing recorded.
                    crash::point("mid", &step.id);
                    crash::point("after-action", &step.id);
                    // The next step's `begin` goes into the same commit, unless the run is
                    // about to stop at this boundary.
                    let stopping = self.interrupt.load(Ordering::SeqCst) || failure.is_some();
                    let next = (!stopping)
                        .then(|| {
                            run.steps
                                .iter()
                                .enumerate()
                                .skip(i + 1)
                                .find(|(j, _)| !finished.contains(&(*j as i64)))
                        })
                        .flatten()
                        .map(|(j, s)| (j as i64, s.id.as_str(), s.title.as_str()));
                    let (event, message) = match outcome {
                        Outcome::Done(m) => (JournalEvent::Done, m),
                        Outcome::Skipped(m) => (JournalEvent::Skipped, m),
                    };
                    let audit = NewAudit::new(&self.actor, &format!("step.{event}"))
                        .run(&run.id)
                        .release(&run.release)
                        .details(json!({"step": step.id, "title": step.title, "seconds": round3(seconds)}));
                    self.store
                        .journal_finish(
                            lock.fence(),
                            &run.id,
                            key,
                            event,
                            &message,
                            &effects,
                            audit,
                            next,
                        )
                        .await?;
                    begun = next.map(|(j, _, _)| j as usize);
                    self.printer.note(format!(
                        "      {} ({seconds:.2}s){}",
                        if event == JournalEvent::Done {
                            self.printer.green("done")
                        } else {
                            "skipped".to_string()
                        },
                        if message.is_empty() || message.contains('\n') {
                            String::new()
                        } else {
                            format!(": {message}")
                        }
                    ));
                    reports.push(StepReport {
                        index: i,
                        id: step.id.clone(),
                        title: step.title.clone(),
                        outcome: event.to_string(),
                        message,
                        seconds: round3(seconds),
                    });
                }
                Err(e) => {
                    let message = e.to_string();
                    let audit = NewAudit::new(&self.actor, "step.failed")
                        .run(&run.id)
                        .release(&run.release)
                        .details(json!({"step": step.id, "title": step.title, "error": message}));
                    self.store
                        .journal_finish(
                            lock.fence(),
                            &run.id,
                            key,
                            JournalEvent::Failed,
                            &message,
                            &[],
                            audit,
                            None,
                        )
                        .await?;
                    self.printer.note(format!(
                        "      {} ({seconds:.2}s)",
                        self.printer.red("failed")
                    ));
                    reports.push(StepReport {
                        index: i,
                        id: step.id.clone(),
                        title: step.title.clone(),
                        outcome: "failed".into(),
                        message: message.clone(),
                        seconds: round3(seconds),
                    });
                    begun = None;
                    if failure.is_none() {
                        failure = Some((step.id.clone(), message));
                    }
                }
            }
        }
        match failure {
            Some((step, error)) => Ok((RunEnd::Failed { step, error }, reports)),
            None => Ok((RunEnd::Succeeded, reports)),
        }
    }

    /// A progress line: shown on screen; returned for the journal.
    fn show_note(&self, line: &str) -> String {
        self.printer.note(format!("      {line}"));
        line.to_string()
    }
}

/// How long progress lines may wait before they are journaled together.
const NOTE_FLUSH: Duration = Duration::from_millis(250);

fn missing(component: &str) -> rewind_components::ComponentError {
    rewind_components::ComponentError::failed(
        component,
        "the run names a component it did not record; the state store was edited by hand",
    )
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Waits for Ctrl-C (SIGINT) or SIGTERM (what `systemctl stop`, `docker stop` and
/// `kill` send) and says which came.
pub async fn interruption(term: &mut Option<tokio::signal::unix::Signal>) -> &'static str {
    let terminated = async {
        match term {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = terminated => "SIGTERM",
    }
}

/// Installs the handler of Ctrl-C and SIGTERM: the first stops at the next step boundary, a
/// second exits at once (the run stays resumable either way).
pub fn install_interrupt(printer_quiet: bool) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let first = interruption(&mut term).await;
        f.store(true, Ordering::SeqCst);
        if !printer_quiet {
            eprintln!(
                "\ninterrupted ({first}): stopping after the current step (Ctrl-C or SIGTERM again to stop now; `rewind resume` finishes the run)"
            );
        }
        let second = interruption(&mut term).await;
        eprintln!("stopped ({second}); the run is unfinished: `rewind resume` finishes it");
        std::process::exit(130);
    });
    flag
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fast automation starts many runs within one second; their ids must all differ (a
    /// 24-bit hash of the clock and pid collided about once in 7,500 deploys).
    #[test]
    fn run_ids_started_in_the_same_burst_never_collide() {
        let n = 200_000;
        let ids: BTreeSet<String> = (0..n).map(|_| new_run_id()).collect();
        assert_eq!(ids.len(), n);
        let one = new_run_id();
        let (time, suffix) = one.split_once('-').unwrap();
        assert_eq!(time.len(), "20261130T054500Z".len(), "{one}");
        assert_eq!(suffix.len(), 12, "{one}");
        assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()), "{one}");
    }

    #[test]
    fn lock_tokens_differ_per_draw() {
        let a = random_hex::<16>();
        let b = random_hex::<16>();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
