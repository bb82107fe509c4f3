//! Command checks: a shell command every interval; exit 0 passes. Used for named functional
//! checks and for "database unreachable" (`pg_isready`, or a query through a CLI). A check
//! runs in its own process group, killed when it times out, when the window stops, and when
//! rewind exits or dies (`rewind_proc`).

use std::time::Instant;

use rewind_core::config::CheckConfig;
use rewind_core::redact::Redactor;
use tokio::sync::{mpsc, watch};

use crate::{Sample, SampleKind, pause};

pub async fn run(
    cfg: CheckConfig,
    start: Instant,
    redactor: Redactor,
    tx: mpsc::Sender<Sample>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        // A check still running when the window ends is dropped, and its whole process
        // group killed with it (see `rewind_proc`): nothing of it outlives the window.
        let out = tokio::select! {
            out = rewind_components::proc::run_shell(
                &cfg.name,
                &cfg.command,
                None,
                &[],
                cfg.timeout,
                &redactor,
            ) => out,
            _ = stop.changed() => return,
        };
        let kind = match out {
            Ok(o) => SampleKind::Check {
                ok: o.success(),
                output: o.output.lines().last().unwrap_or("").to_string(),
            },
            Err(e) => SampleKind::Check {
                ok: false,
                output: e.to_string(),
            },
        };
        if tx
            .send(Sample {
                signal: cfg.name.clone(),
                at: start.elapsed().as_secs_f64(),
                kind,
            })
            .await
            .is_err()
        {
            return;
        }
        if pause(cfg.interval, &mut stop).await {
            return;
        }
    }
}
