//! Signals: sources of observations for the monitoring window. Each signal runs as a task
//! that sends `Sample`s into one channel until it is told to stop:
//! - the built-in HTTP prober (`probe`): requests at a fixed rate; each sample records the
//!   time, status, latency and the release that answered;
//! - Prometheus (`prometheus`): instant queries through the HTTP API; counter increments of
//!   errors and totals become count samples;
//! - command checks (`check`): a command every interval; exit 0 passes.

use std::time::Duration;

use serde::Serialize;

pub mod check;
pub mod probe;
pub mod prometheus;

/// One observation.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// The signal's name (from the config).
    pub signal: String,
    /// Seconds since the signals started.
    pub at: f64,
    pub kind: SampleKind,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SampleKind {
    /// One probe request.
    Request {
        /// The answer met every expectation (status, body).
        ok: bool,
        status: Option<u16>,
        latency_ms: f64,
        /// The release named by the release header, if configured and present.
        release: Option<String>,
        /// Why it failed (connection refused, timeout, unexpected status …).
        error: Option<String>,
    },
    /// Requests counted by Prometheus since the previous query.
    Counts {
        total: u64,
        errors: u64,
        /// The latency quantile query's value, in milliseconds.
        latency_ms: Option<f64>,
    },
    /// One run of a command check.
    Check { ok: bool, output: String },
    /// The signal itself could not be read (Prometheus unreachable, a bad query …).
    Unavailable { error: String },
}

impl SampleKind {
    /// Did a request answer with a server error (5xx), or not answer at all?
    pub fn is_server_error(&self) -> bool {
        matches!(self, SampleKind::Request { status: Some(s), .. } if *s >= 500)
    }
}

/// Sleeps `d`, or returns early (true) when `stop` says so.
pub(crate) async fn pause(d: Duration, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}
