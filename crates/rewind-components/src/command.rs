//! `kind = "command"`: any deploy CLI (vercel, railway, heroku, docker compose …). rewind runs
//! the user's `deploy` and `rollback` commands with `{release}` filled in, captures their
//! output into the journal (secrets masked), and uses the optional `current` command as the
//! postcondition: when it already prints the target release, the command is not run again.

use async_trait::async_trait;
use rewind_core::config::CommandConfig;
use rewind_core::{Action, CommandHook};
use serde_json::json;

use crate::{Component, ComponentError, Ctx, Outcome, Result, Snapshot, proc, ready};

pub struct CommandComponent {
    name: String,
    cfg: CommandConfig,
}

impl CommandComponent {
    pub fn new(name: &str, cfg: CommandConfig) -> Self {
        CommandComponent {
            name: name.to_string(),
            cfg,
        }
    }

    fn redactor(&self, cx: &Ctx) -> rewind_core::redact::Redactor {
        let mut r = cx.redactor.clone();
        for var in &self.cfg.secret_env {
            if let Ok(v) = std::env::var(var) {
                r.add(v);
            }
        }
        r
    }

    async fn run(
        &self,
        cx: &Ctx,
        what: &str,
        template: &str,
        release: &str,
    ) -> Result<proc::CommandOutput> {
        let redactor = self.redactor(cx);
        let cmd = proc::fill(template, release, &self.name);
        let env = [
            ("REWIND_ENVIRONMENT", cx.environment.as_str()),
            ("REWIND_COMPONENT", self.name.as_str()),
            ("REWIND_RELEASE", release),
        ];
        let out = proc::run_shell(
            &self.name,
            &cmd,
            Some(&self.cfg.workdir),
            &env,
            self.cfg.command_timeout,
            &redactor,
        )
        .await?;
        proc::expect_success(&self.name, what, &redactor.redact(&cmd), &out)?;
        Ok(out)
    }

    async fn read_current(&self, cx: &Ctx) -> Result<Option<String>> {
        let Some(cmd) = &self.cfg.current else {
            return Ok(None);
        };
        let out = self.run(cx, "current command", cmd, "").await?;
        let v = out.stdout.lines().last().unwrap_or("").trim().to_string();
        Ok(if v.is_empty() { None } else { Some(v) })
    }
}

#[async_trait]
impl Component for CommandComponent {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "command"
    }

    async fn current(&self, cx: &Ctx) -> Result<Option<String>> {
        self.read_current(cx).await
    }

    async fn restore_point(&self, cx: &Ctx, _backup: Option<&str>) -> Result<Snapshot> {
        // A `current` command that fails (nothing deployed yet, platform unreachable) does
        // not stop the deploy: the restore point records that the version was unknown, and why.
        let (version, error) = match self.read_current(cx).await {
            Ok(v) => (v, None),
            Err(e) => (None, Some(e.to_string())),
        };
        Ok(Snapshot {
            version: version.clone(),
            data: json!({
                "current": version,
                "current_error": error,
                "rollback": self.redactor(cx).redact(&self.cfg.rollback),
            }),
        })
    }

    async fn precheck(&self, _cx: &Ctx, _action: &Action) -> Result<()> {
        Ok(())
    }

    async fn apply(&self, cx: &Ctx, action: &Action) -> Result<Outcome> {
        match action {
            Action::RunCommand { hook, release, .. } => {
                // The postcondition: a `current` that already reports the target. A failing
                // `current` proves nothing, so the command runs.
                if self.read_current(cx).await.ok().flatten().as_deref() == Some(release.as_str()) {
                    return Ok(Outcome::Skipped(format!(
                        "`current` already reports {release}"
                    )));
                }
                let (what, template) = match hook {
                    CommandHook::Deploy => ("deploy command", &self.cfg.deploy),
                    CommandHook::Rollback => ("rollback command", &self.cfg.rollback),
                };
                let out = self.run(cx, what, template, release).await?;
                crate::crash::point(
                    "mid",
                    &format!(
                        "{}.{}",
                        self.name,
                        match hook {
                            CommandHook::Deploy => "deploy",
                            CommandHook::Rollback => "rollback",
                        }
                    ),
                );
                if self.cfg.current.is_some() {
                    let now = self.read_current(cx).await?;
                    if now.as_deref() != Some(release.as_str()) {
                        return Err(ComponentError::failed(
                            &self.name,
                            format!(
                                "the {what} exited 0 but `current` reports {} instead of {release}",
                                now.unwrap_or_else(|| "nothing".into())
                            ),
                        ));
                    }
                }
                Ok(Outcome::Done(if out.output.is_empty() {
                    format!("{what} exited 0")
                } else {
                    out.output
                }))
            }
            Action::WaitReady { .. } => match &self.cfg.ready {
                Some(r) => ready::wait_ready(
                    &self.name,
                    r,
                    self.cfg.ready_timeout,
                    Some(&self.cfg.workdir),
                    &self.redactor(cx),
                )
                .await
                .map(Outcome::Done),
                None => Ok(Outcome::Skipped("no readiness check configured".into())),
            },
            other => Err(ComponentError::Unsupported {
                component: self.name.clone(),
                kind: "command",
                action: format!("{other:?}"),
            }),
        }
    }
}
