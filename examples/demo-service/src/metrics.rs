//! Request counters and latency histograms in the Prometheus text exposition format 0.0.4.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds; `+Inf` is implied.
const BUCKETS: &[(f64, &str)] = &[
    (0.005, "0.005"),
    (0.01, "0.01"),
    (0.025, "0.025"),
    (0.05, "0.05"),
    (0.1, "0.1"),
    (0.25, "0.25"),
    (0.5, "0.5"),
    (1.0, "1"),
    (2.5, "2.5"),
];

struct Histogram {
    /// Non-cumulative counts per bucket, plus one for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let i = BUCKETS
            .iter()
            .position(|(le, _)| seconds <= *le)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(&'static str, u16), u64>,
    durations: BTreeMap<&'static str, Histogram>,
}

/// Thread-safe metrics for one release.
pub struct Metrics {
    release: String,
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Series that a dashboard or alert divides by exist from the start, at zero.
    pub fn new(release: &str) -> Self {
        let mut inner = Inner::default();
        for code in [200, 500] {
            inner.requests.insert(("/checkout", code), 0);
        }
        inner.requests.insert(("/health", 200), 0);
        for path in ["/checkout", "/health"] {
            inner.durations.insert(path, Histogram::default());
        }
        Metrics {
            release: release.to_string(),
            inner: Mutex::new(inner),
        }
    }

    /// Records one answered request. `path` must be a bounded label value
    /// (the caller maps unknown paths to one value).
    pub fn record(&self, path: &'static str, code: u16, elapsed: Duration) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *inner.requests.entry((path, code)).or_insert(0) += 1;
        inner
            .durations
            .entry(path)
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let release = escape(&self.release);
        let mut out = String::new();
        out.push_str("# HELP demo_http_requests_total HTTP requests answered, by path, status code and release.\n");
        out.push_str("# TYPE demo_http_requests_total counter\n");
        for ((path, code), n) in &inner.requests {
            let _ = writeln!(
                out,
                "demo_http_requests_total{{path=\"{}\",code=\"{code}\",release=\"{release}\"}} {n}",
                escape(path)
            );
        }
        out.push_str("# HELP demo_http_request_duration_seconds Time taken to answer HTTP requests, by path and release.\n");
        out.push_str("# TYPE demo_http_request_duration_seconds histogram\n");
        for (path, h) in &inner.durations {
            let labels = format!("path=\"{}\",release=\"{release}\"", escape(path));
            let mut cumulative = 0;
            for (i, (_, le)) in BUCKETS.iter().enumerate() {
                cumulative += h.counts[i];
                let _ = writeln!(
                    out,
                    "demo_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "demo_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "demo_http_request_duration_seconds_sum{{{labels}}} {}",
                float(h.sum)
            );
            let _ = writeln!(
                out,
                "demo_http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        out
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value; Rust's `Display` for finite floats is valid Go `ParseFloat` input.
fn float(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else if v.is_nan() {
        "NaN".to_string()
    } else if v > 0.0 {
        "+Inf".to_string()
    } else {
        "-Inf".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let m = Metrics::new("v\"1");
        m.record("/checkout", 200, Duration::from_millis(3));
        m.record("/checkout", 200, Duration::from_millis(30));
        m.record("/checkout", 500, Duration::from_secs(5));
        let text = m.render();
        let labels = "path=\"/checkout\",release=\"v\\\"1\"";
        for (le, n) in [("0.005", 1), ("0.05", 2), ("2.5", 2), ("+Inf", 3)] {
            let line =
                format!("demo_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {n}\n");
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        assert!(text.contains(&format!(
            "demo_http_request_duration_seconds_count{{{labels}}} 3\n"
        )));
        assert!(text.contains(
            "demo_http_requests_total{path=\"/checkout\",code=\"500\",release=\"v\\\"1\"} 1\n"
        ));
        assert!(text.contains(
            "demo_http_requests_total{path=\"/health\",code=\"200\",release=\"v\\\"1\"} 0\n"
        ));
    }
}
