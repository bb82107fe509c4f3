//! Prometheus: PromQL instant queries through the HTTP API (`/api/v1/query`). The error and
//! total queries return cumulative counters; the increments between two queries become one
//! count sample, so a statistical trigger sees the same requests Prometheus saw.

use std::time::Instant;

use rewind_core::config::PrometheusConfig;
use tokio::sync::{mpsc, watch};

use crate::{Sample, SampleKind, pause};

/// Runs the queries every interval until `stop` is set. `{release}` in the queries is
/// replaced by `release`.
pub async fn run(
    cfg: PrometheusConfig,
    release: String,
    start: Instant,
    tx: mpsc::Sender<Sample>,
    mut stop: watch::Receiver<bool>,
) {
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(cfg.interval.max(std::time::Duration::from_secs(2)))
        .build()
    {
        Ok(c) => c,
        Err(_) => return,
    };
    let errors_q = cfg.errors.replace("{release}", &release);
    let total_q = cfg.total.replace("{release}", &release);
    let latency_q = cfg
        .latency
        .as_ref()
        .map(|q| q.replace("{release}", &release));
    let mut last: Option<(f64, f64)> = None;
    loop {
        let kind = match (
            query(&client, &cfg.url, &errors_q).await,
            query(&client, &cfg.url, &total_q).await,
        ) {
            (Ok(errors), Ok(total)) => {
                let latency_ms = match &latency_q {
                    Some(q) => query(&client, &cfg.url, q)
                        .await
                        .ok()
                        .filter(|v| v.is_finite())
                        .map(|v| v * 1000.0),
                    None => None,
                };
                let delta = match last {
                    // A counter that went down was reset (process restart): count from zero.
                    Some((e0, t0)) => {
                        let dt = if total >= t0 { total - t0 } else { total };
                        let de = if errors >= e0 { errors - e0 } else { errors };
                        Some((
                            dt.round() as u64,
                            (de.round() as u64).min(dt.round() as u64),
                        ))
                    }
                    None => None,
                };
                last = Some((errors, total));
                delta.map(|(total, errors)| SampleKind::Counts {
                    total,
                    errors,
                    latency_ms,
                })
            }
            (Err(e), _) | (_, Err(e)) => Some(SampleKind::Unavailable { error: e }),
        };
        if let Some(kind) = kind
            && tx
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

/// One instant query; the values of a vector result are summed (an empty vector is 0, which
/// is what a counter that has not been seen yet means).
pub async fn query(client: &reqwest::Client, base: &str, promql: &str) -> Result<f64, String> {
    let url = reqwest::Url::parse_with_params(
        &format!("{}/api/v1/query", base.trim_end_matches('/')),
        &[("query", promql)],
    )
    .map_err(|e| format!("bad Prometheus URL {base}: {e}"))?;
    let resp = client.get(url).send().await.map_err(|e| {
        format!(
            "Prometheus at {base} unreachable: {}",
            rewind_core::errtext::network(&e)
        )
    })?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .map_err(|e| format!("reading Prometheus's answer: {e}"))?;
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| format!("Prometheus answered something that is not JSON ({e})"))?;
    if v["status"] != "success" {
        return Err(format!(
            "Prometheus rejected `{promql}` ({status}): {}",
            v["error"].as_str().unwrap_or("no error text")
        ));
    }
    parse_value(&v["data"])
        .ok_or_else(|| format!("unexpected Prometheus result for `{promql}`: {}", v["data"]))
}

fn parse_value(data: &serde_json::Value) -> Option<f64> {
    let num = |pair: &serde_json::Value| pair.get(1)?.as_str()?.parse::<f64>().ok();
    match data["resultType"].as_str()? {
        "vector" => Some(
            data["result"]
                .as_array()?
                .iter()
                .filter_map(|r| num(&r["value"]))
                .filter(|v| v.is_finite())
                .sum(),
        ),
        "scalar" => num(&data["result"]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_summed_and_scalars_read() {
        let v = serde_json::json!({"resultType": "vector", "result": [
            {"metric": {"code": "500"}, "value": [1.0, "3"]},
            {"metric": {"code": "502"}, "value": [1.0, "4.5"]}
        ]});
        assert_eq!(parse_value(&v), Some(7.5));
        let empty = serde_json::json!({"resultType": "vector", "result": []});
        assert_eq!(parse_value(&empty), Some(0.0));
        let s = serde_json::json!({"resultType": "scalar", "result": [1.0, "0.25"]});
        assert_eq!(parse_value(&s), Some(0.25));
        let m = serde_json::json!({"resultType": "matrix", "result": []});
        assert_eq!(parse_value(&m), None);
    }
}
