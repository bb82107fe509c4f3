//! The built-in HTTP prober: requests at a fixed rate (each on its own task, so a slow answer
//! does not lower the rate), compared with the expected status and body.

use std::time::{Duration, Instant};

use rewind_core::config::ProbeConfig;
use tokio::sync::{mpsc, watch};

use crate::{Sample, SampleKind, pause};

/// Runs the probe until `stop` is set. `start` is the common time origin of all samples.
pub async fn run(
    cfg: ProbeConfig,
    start: Instant,
    tx: mpsc::Sender<Sample>,
    mut stop: watch::Receiver<bool>,
) {
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(cfg.timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = tx
                .send(Sample {
                    signal: cfg.name.clone(),
                    at: start.elapsed().as_secs_f64(),
                    kind: SampleKind::Unavailable {
                        error: format!("cannot build an HTTP client: {e}"),
                    },
                })
                .await;
            return;
        }
    };
    let method = reqwest::Method::from_bytes(cfg.method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let every = Duration::from_secs_f64(1.0 / cfg.rate.max(0.001));
    let mut next = Instant::now();
    loop {
        let (client, method, cfg2, tx2) = (client.clone(), method.clone(), cfg.clone(), tx.clone());
        tokio::spawn(async move {
            let sample = one(&client, method, &cfg2, start).await;
            let _ = tx2.send(sample).await;
        });
        next += every;
        let now = Instant::now();
        if next < now {
            // Fell behind (a stalled runtime): skip the missed ticks rather than burst.
            next = now;
        }
        if pause(next - now, &mut stop).await {
            return;
        }
    }
}

async fn one(
    client: &reqwest::Client,
    method: reqwest::Method,
    cfg: &ProbeConfig,
    start: Instant,
) -> Sample {
    let sent = Instant::now();
    let result = client.request(method, &cfg.url).send().await;
    let kind = match result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let release = cfg
                .release_header
                .as_ref()
                .and_then(|h| resp.headers().get(h.as_str()))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = if cfg.expect_body.is_some() {
                resp.text().await.ok()
            } else {
                resp.bytes().await.ok().map(|_| String::new())
            };
            let latency_ms = sent.elapsed().as_secs_f64() * 1000.0;
            let status_ok = match cfg.expect_status {
                Some(want) => status == want,
                None => (200..400).contains(&status),
            };
            let body_ok = match (&cfg.expect_body, &body) {
                (Some(want), Some(b)) => b.contains(want.as_str()),
                (Some(_), None) => false,
                (None, _) => true,
            };
            let error = if !status_ok {
                Some(format!("status {status}"))
            } else if !body_ok {
                Some(format!(
                    "body does not contain {:?}",
                    cfg.expect_body.as_deref().unwrap_or("")
                ))
            } else {
                None
            };
            SampleKind::Request {
                ok: error.is_none(),
                status: Some(status),
                latency_ms,
                release,
                error,
            }
        }
        Err(e) => SampleKind::Request {
            ok: false,
            status: None,
            latency_ms: sent.elapsed().as_secs_f64() * 1000.0,
            release: None,
            error: Some(if e.is_timeout() {
                format!(
                    "no answer within {}",
                    rewind_core::units::format_duration(cfg.timeout)
                )
            } else {
                rewind_core::errtext::network(&e)
            }),
        },
    };
    Sample {
        signal: cfg.name.clone(),
        at: start.elapsed().as_secs_f64(),
        kind,
    }
}
