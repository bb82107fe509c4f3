//! Waiting for readiness: an HTTP GET that answers 2xx, or a command that exits 0, polled until
//! a deadline.

use std::path::Path;
use std::time::{Duration, Instant};

use rewind_core::config::Readiness;
use rewind_core::redact::Redactor;

use crate::{ComponentError, Result};

/// Polls until ready or `timeout` passes. Returns a summary (attempts, time taken).
pub async fn wait_ready(
    component: &str,
    ready: &Readiness,
    timeout: Duration,
    dir: Option<&Path>,
    redactor: &Redactor,
) -> Result<String> {
    let start = Instant::now();
    let deadline = start + timeout;
    let client = crate::http_client_builder(match ready {
        Readiness::Url(u) => u,
        Readiness::Command(_) => "",
    })
    .timeout(Duration::from_secs(5).min(timeout.max(Duration::from_millis(200))))
    .build()
    .map_err(|e| ComponentError::failed(component, format!("cannot build an HTTP client: {e}")))?;
    let mut attempts = 0u32;
    let mut last;
    loop {
        attempts += 1;
        let result = match ready {
            Readiness::Url(url) => match client.get(url).send().await {
                Ok(resp) if resp.status().is_success() => Ok(()),
                Ok(resp) => Err(format!(
                    "GET {} answered {}",
                    redactor.redact(url),
                    resp.status()
                )),
                Err(e) => Err(format!(
                    "GET {}: {}",
                    redactor.redact(url),
                    redactor.redact(&rewind_core::errtext::network(&e))
                )),
            },
            Readiness::Command(cmd) => {
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(100));
                match crate::proc::run_shell(component, cmd, dir, &[], left, redactor).await {
                    Ok(out) if out.success() => Ok(()),
                    Ok(out) => Err(format!(
                        "`{}` exited {}{}",
                        redactor.redact(cmd),
                        out.status
                            .map(|c| c.to_string())
                            .unwrap_or_else(|| "by a signal".into()),
                        if out.output.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", out.output.lines().last().unwrap_or(""))
                        }
                    )),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        match result {
            Ok(()) => {
                return Ok(format!(
                    "ready after {:.2}s ({attempts} attempt{})",
                    start.elapsed().as_secs_f64(),
                    if attempts == 1 { "" } else { "s" }
                ));
            }
            Err(why) => last = why,
        }
        if Instant::now() >= deadline {
            return Err(ComponentError::failed(
                component,
                format!(
                    "not ready after {} ({attempts} attempts); last: {last}",
                    rewind_core::units::format_duration(timeout)
                ),
            ));
        }
        // Poll fast at first (a restart often takes well under a second), then back off.
        let elapsed = start.elapsed();
        let pause = if elapsed < Duration::from_secs(2) {
            Duration::from_millis(20)
        } else {
            Duration::from_millis(200)
        };
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}
