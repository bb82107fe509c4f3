//! The store's secret boundary: a [`Store`] that passes everything it is asked to record
//! through a [`Redactor`] before the backend sees it. Step titles, journal lines, run errors,
//! audit details, incidents and monitoring baselines are redacted; the configuration a run
//! records of its components is sealed (its secrets masked, see `rewind_core::secret`), so a
//! secret never reaches a row. Reads pass through unchanged: the audit chain must be read as
//! it was hashed, and what is shown passes the printer's redactor anyway.
//!
//! Every method that records text goes through here; a new `Store` method must too.

use std::collections::BTreeMap;

use async_trait::async_trait;
use rewind_core::redact::{Redactor, redact_url_passwords};
use rewind_core::{
    AuditEntry, Incident, IncidentStatus, JournalEntry, JournalEvent, LedgerEffect, LockHolder,
    NewAudit, NewRelease, NewRun, Release, RestorePoint, Run, RunStatus, Step, Watch,
};

use crate::{Fence, Footprint, LockAttempt, Readable, Result, Store, StoreError};

/// A store that records nothing the redactor would hide.
pub struct Redacted {
    inner: Box<dyn Store>,
    redactor: Redactor,
}

impl Redacted {
    pub fn new(inner: Box<dyn Store>, redactor: Redactor) -> Redacted {
        Redacted { inner, redactor }
    }

    fn text(&self, s: &str) -> String {
        self.redactor.redact(s)
    }

    fn audit(&self, a: NewAudit) -> NewAudit {
        NewAudit {
            actor: self.text(&a.actor),
            action: a.action,
            release: a.release,
            run_id: a.run_id,
            details: self.redactor.redact_json(&a.details),
        }
    }

    fn steps(&self, steps: &[Step]) -> Vec<Step> {
        steps
            .iter()
            .map(|s| Step {
                title: self.text(&s.title),
                ..s.clone()
            })
            .collect()
    }

    /// Restore points are read back to act on (a backup's path, its row counts), so only
    /// what has the shape of a credential is masked there: a known value could be part of a
    /// path.
    fn effects(&self, effects: &[LedgerEffect]) -> Vec<LedgerEffect> {
        effects
            .iter()
            .map(|e| match e {
                LedgerEffect::RestorePoint {
                    component,
                    kind,
                    version,
                    data,
                } => LedgerEffect::RestorePoint {
                    component: component.clone(),
                    kind: kind.clone(),
                    version: version.clone(),
                    data: url_passwords_json(data),
                },
                other => other.clone(),
            })
            .collect()
    }
}

fn url_passwords_json(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(redact_url_passwords(s)),
        Value::Array(a) => Value::Array(a.iter().map(url_passwords_json).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), url_passwords_json(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[async_trait]
impl Store for Redacted {
    fn location(&self) -> String {
        self.text(&self.inner.location())
    }

    async fn current_release(&self, env: &str) -> Result<Option<String>> {
        self.inner.current_release(env).await
    }

    async fn deployed(&self, env: &str) -> Result<BTreeMap<String, String>> {
        self.inner.deployed(env).await
    }

    async fn release(&self, env: &str, name: &str) -> Result<Option<Release>> {
        self.inner.release(env, name).await
    }

    async fn read_releases(&self, env: &str) -> Result<Vec<Readable<Release>>> {
        self.inner.read_releases(env).await
    }

    async fn create_run(
        &self,
        fence: &Fence,
        run: &NewRun,
        release: Option<&NewRelease>,
        audit: NewAudit,
    ) -> Result<Run> {
        let components = run
            .components
            .iter()
            .map(|(n, c)| {
                rewind_core::secret::seal(c, &self.redactor)
                    .map(|c| (n.clone(), c))
                    .map_err(|e| StoreError::Corrupt {
                        what: format!("the configuration of component {n}"),
                        detail: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let sealed = NewRun {
            steps: self.steps(&run.steps),
            components,
            ..run.clone()
        };
        self.inner
            .create_run(fence, &sealed, release, self.audit(audit))
            .await
    }

    async fn run(&self, id: &str) -> Result<Option<Run>> {
        self.inner.run(id).await
    }

    async fn unfinished_run(&self, env: &str) -> Result<Option<Run>> {
        self.inner.unfinished_run(env).await
    }

    async fn read_runs(&self, env: &str, limit: i64) -> Result<Vec<Readable<Run>>> {
        self.inner.read_runs(env, limit).await
    }

    async fn finish_run(
        &self,
        fence: &Fence,
        run_id: &str,
        status: RunStatus,
        error: Option<&str>,
        effects: &[LedgerEffect],
        audit: NewAudit,
    ) -> Result<()> {
        let error = error.map(|e| self.text(e));
        self.inner
            .finish_run(
                fence,
                run_id,
                status,
                error.as_deref(),
                &self.effects(effects),
                self.audit(audit),
            )
            .await
    }

    async fn journal_append(
        &self,
        fence: &Fence,
        run_id: &str,
        step: Option<(i64, &str)>,
        event: JournalEvent,
        message: &str,
    ) -> Result<()> {
        self.inner
            .journal_append(fence, run_id, step, event, &self.text(message))
            .await
    }

    async fn journal_notes(
        &self,
        fence: &Fence,
        run_id: &str,
        step: (i64, &str),
        messages: &[String],
    ) -> Result<()> {
        let messages: Vec<String> = messages.iter().map(|m| self.text(m)).collect();
        self.inner
            .journal_notes(fence, run_id, step, &messages)
            .await
    }

    async fn journal_finish(
        &self,
        fence: &Fence,
        run_id: &str,
        step: (i64, &str),
        event: JournalEvent,
        message: &str,
        effects: &[LedgerEffect],
        audit: NewAudit,
        next: Option<(i64, &str, &str)>,
    ) -> Result<()> {
        let next_title = next.map(|(_, _, title)| self.text(title));
        let next = next.map(|(i, id, _)| (i, id, next_title.as_deref().unwrap_or("")));
        self.inner
            .journal_finish(
                fence,
                run_id,
                step,
                event,
                &self.text(message),
                &self.effects(effects),
                self.audit(audit),
                next,
            )
            .await
    }

    async fn read_journal(&self, run_id: &str) -> Result<Vec<Readable<JournalEntry>>> {
        self.inner.read_journal(run_id).await
    }

    async fn read_restore_points(
        &self,
        env: &str,
        run_id: Option<&str>,
    ) -> Result<Vec<Readable<RestorePoint>>> {
        self.inner.read_restore_points(env, run_id).await
    }

    async fn try_lock(&self, holder: &LockHolder) -> Result<LockAttempt> {
        self.inner.try_lock(holder).await
    }

    async fn take_over_lock(&self, holder: &LockHolder, stale: &LockHolder) -> Result<bool> {
        self.inner.take_over_lock(holder, stale).await
    }

    async fn heartbeat(&self, env: &str, token: &str) -> Result<bool> {
        self.inner.heartbeat(env, token).await
    }

    async fn unlock(&self, env: &str, token: &str) -> Result<()> {
        self.inner.unlock(env, token).await
    }

    async fn lock_holder(&self, env: &str) -> Result<Option<LockHolder>> {
        self.inner.lock_holder(env).await
    }

    async fn audit_append(&self, env: &str, entry: NewAudit) -> Result<AuditEntry> {
        self.inner.audit_append(env, self.audit(entry)).await
    }

    async fn read_audit(&self, env: &str) -> Result<Vec<Readable<AuditEntry>>> {
        self.inner.read_audit(env).await
    }

    async fn record(&self, env: &str, effects: &[LedgerEffect], audit: NewAudit) -> Result<()> {
        self.inner
            .record(env, &self.effects(effects), self.audit(audit))
            .await
    }

    async fn begin_watch(
        &self,
        watch: &Watch,
        effects: &[LedgerEffect],
        audit: NewAudit,
    ) -> Result<()> {
        let watch = Watch {
            baseline: self.redactor.redact_json(&watch.baseline),
            ..watch.clone()
        };
        self.inner
            .begin_watch(&watch, &self.effects(effects), self.audit(audit))
            .await
    }

    async fn end_watch(
        &self,
        env: &str,
        release: &str,
        status: &str,
        effects: &[LedgerEffect],
        audit: NewAudit,
    ) -> Result<()> {
        self.inner
            .end_watch(
                env,
                release,
                status,
                &self.effects(effects),
                self.audit(audit),
            )
            .await
    }

    async fn active_watch(&self, env: &str) -> Result<Option<Watch>> {
        self.inner.active_watch(env).await
    }

    async fn open_incident(&self, incident: &Incident, audit: NewAudit) -> Result<()> {
        let incident = Incident {
            trigger: self.text(&incident.trigger),
            signal: incident.signal.as_deref().map(|s| self.text(s)),
            summary: self.text(&incident.summary),
            evidence: self.redactor.redact_json(&incident.evidence),
            ..incident.clone()
        };
        self.inner.open_incident(&incident, self.audit(audit)).await
    }

    async fn update_incident(
        &self,
        id: &str,
        status: IncidentStatus,
        rollback_run: Option<&str>,
        audit: NewAudit,
    ) -> Result<()> {
        self.inner
            .update_incident(id, status, rollback_run, self.audit(audit))
            .await
    }

    async fn read_incidents(&self, env: &str) -> Result<Vec<Readable<Incident>>> {
        self.inner.read_incidents(env).await
    }

    async fn audit_head(&self, env: &str) -> Result<Option<(i64, String)>> {
        self.inner.audit_head(env).await
    }

    async fn footprint(&self, env: &str) -> Result<Footprint> {
        self.inner.footprint(env).await
    }

    async fn audit_hash_at(&self, env: &str, seq: i64) -> Result<Option<String>> {
        self.inner.audit_hash_at(env, seq).await
    }

    async fn explain(&self, err: &StoreError) -> Option<StoreError> {
        self.inner.explain(err).await
    }
}
