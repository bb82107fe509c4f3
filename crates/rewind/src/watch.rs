//! The monitoring window: runs the signals, feeds every sample to the triggers, draws the live
//! view, and says how the window ended. Deciding what to do about it (incident, rollback,
//! verification) is `commands::watch`'s job.
//!
//! Triggers per signal:
//! - availability (probes): share of failed requests above `1 − availability-below`, by an
//!   anytime-valid sequential test evaluated after every request;
//! - errors (probes, Prometheus): share of 5xx answers above `errors-above`, same test
//!   (Prometheus counter increments are fed as counts);
//! - latency (probes): the chosen quantile worse than the baseline's by more than
//!   `latency-regression`, as a sequential test on the share of requests slower than the
//!   bound; (Prometheus) the latency query above the bound for `consecutive-failures`
//!   queries in a row;
//! - hard failures: a critical probe or a command check (functional, database) failing
//!   `consecutive-failures` times in a row fires at once.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use rewind_core::config::{CheckKind, WatchConfig};
use rewind_core::redact::Redactor;
use rewind_core::stats::{Consecutive, QuantileTest, RateTest};
use rewind_signals::{Sample, SampleKind};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

/// A trigger that fired, with its evidence.
#[derive(Debug, Clone)]
pub struct Fired {
    /// `availability`, `errors`, `latency`, `check`, `database`.
    pub trigger: String,
    pub signal: String,
    pub summary: String,
    pub evidence: Value,
}

#[derive(Default)]
struct Tally {
    requests: u64,
    failed: u64,
    server_errors: u64,
    latencies: Vec<f64>,
    last_error: Option<String>,
}

struct SignalState {
    what: &'static str,
    tally: Tally,
    availability: Option<RateTest>,
    errors: Option<RateTest>,
    latency: Option<QuantileTest>,
    latency_bound_ms: Option<f64>,
    baseline_latency_ms: Option<f64>,
    latency_over: Consecutive,
    consecutive: Option<(Consecutive, &'static str)>,
    /// The release that answered the most recent request, if the probe reads it.
    last_release: Option<String>,
}

/// What the signals measured before the switch.
pub type Baseline = BTreeMap<String, Value>;

/// Evaluates every sample against the triggers.
pub struct Evaluator {
    cfg: WatchConfig,
    signals: BTreeMap<String, SignalState>,
}

impl Evaluator {
    pub fn new(cfg: &WatchConfig, baseline: &Baseline) -> Evaluator {
        let alpha = cfg.alpha;
        let q = cfg.latency_quantile.0;
        let mut signals = BTreeMap::new();
        // The latency trigger spends half its α on the baseline: it compares with an upper
        // confidence bound (level 1 − α/2) of the baseline quantile, and runs its sequential
        // test at α/2, so a baseline that came out low cannot push false alarms above α.
        let latency_test = |name: &str| -> (Option<QuantileTest>, Option<f64>, Option<f64>) {
            let base = baseline
                .get(name)
                .and_then(|b| b["latency_bound_ms"].as_f64())
                .filter(|v| *v > 0.0)
                .or_else(|| {
                    cfg.latency_objective
                        .map(|d| d.as_secs_f64() * 1000.0 / (1.0 + cfg.latency_regression))
                });
            match base {
                Some(b) => match QuantileTest::new(b, q, cfg.latency_regression, alpha / 2.0) {
                    Ok(t) => {
                        let bound = t.bound();
                        (Some(t), Some(bound), Some(b))
                    }
                    Err(_) => (None, None, None),
                },
                None => (None, None, None),
            }
        };
        for p in &cfg.probes {
            let (latency, bound, base) = latency_test(&p.name);
            signals.insert(
                p.name.clone(),
                SignalState {
                    what: "probe",
                    tally: Tally::default(),
                    availability: RateTest::new(1.0 - cfg.availability_below, alpha).ok(),
                    errors: RateTest::new(cfg.errors_above, alpha).ok(),
                    latency,
                    latency_bound_ms: bound,
                    baseline_latency_ms: base,
                    latency_over: Consecutive::new(cfg.consecutive_failures),
                    consecutive: p
                        .critical
                        .then(|| (Consecutive::new(cfg.consecutive_failures), "check")),
                    last_release: None,
                },
            );
        }
        for p in &cfg.prometheus {
            let base = baseline
                .get(&p.name)
                .and_then(|b| b["latency_ms"].as_f64())
                .filter(|v| *v > 0.0);
            signals.insert(
                p.name.clone(),
                SignalState {
                    what: "prometheus",
                    tally: Tally::default(),
                    availability: None,
                    errors: RateTest::new(cfg.errors_above, alpha).ok(),
                    latency: None,
                    latency_bound_ms: base.map(|b| b * (1.0 + cfg.latency_regression)),
                    baseline_latency_ms: base,
                    latency_over: Consecutive::new(cfg.consecutive_failures),
                    consecutive: None,
                    last_release: None,
                },
            );
        }
        for c in &cfg.checks {
            let label = match c.kind {
                CheckKind::Functional => "check",
                CheckKind::Database => "database",
            };
            signals.insert(
                c.name.clone(),
                SignalState {
                    what: "check",
                    tally: Tally::default(),
                    availability: None,
                    errors: None,
                    latency: None,
                    latency_bound_ms: None,
                    baseline_latency_ms: None,
                    latency_over: Consecutive::new(cfg.consecutive_failures),
                    consecutive: Some((Consecutive::new(cfg.consecutive_failures), label)),
                    last_release: None,
                },
            );
        }
        Evaluator {
            cfg: cfg.clone(),
            signals,
        }
    }

    /// Feeds one sample; returns the first trigger it makes fire.
    pub fn observe(&mut self, s: &Sample, elapsed: f64) -> Option<Fired> {
        let alpha = self.cfg.alpha;
        let n_needed = self.cfg.consecutive_failures;
        let st = self.signals.get_mut(&s.signal)?;
        let t = &mut st.tally;
        match &s.kind {
            SampleKind::Request {
                ok,
                status,
                latency_ms,
                release,
                error,
            } => {
                t.requests += 1;
                if !ok {
                    t.failed += 1;
                    t.last_error = error.clone();
                }
                let server_error = status.is_none_or(|c| c >= 500);
                if server_error {
                    t.server_errors += 1;
                }
                if release.is_some() {
                    st.last_release = release.clone();
                }
                if status.is_some() {
                    t.latencies.push(*latency_ms);
                    if t.latencies.len() > 20_000 {
                        t.latencies.drain(..10_000);
                    }
                }
                if let Some((c, label)) = &mut st.consecutive
                    && c.observe(*ok)
                {
                    return Some(Fired {
                        trigger: label.to_string(),
                        signal: s.signal.clone(),
                        summary: format!(
                            "{} failed {} times in a row (last: {})",
                            s.signal,
                            n_needed,
                            error.clone().unwrap_or_default()
                        ),
                        evidence: json!({"consecutive_failures": n_needed, "last_error": error, "requests": t.requests, "elapsed_s": round(elapsed)}),
                    });
                }
                if let Some(a) = &mut st.availability {
                    a.observe(!ok);
                    if a.rejected() {
                        let ev = a.evidence();
                        return Some(Fired {
                            trigger: "availability".into(),
                            signal: s.signal.clone(),
                            summary: format!(
                                "availability of {} is below {}: {} of {} requests failed ({:.2}%; at least {:.2}% with {}% confidence)",
                                s.signal,
                                pct(1.0 - ev.p0),
                                ev.failures,
                                ev.n,
                                ev.observed_rate * 100.0,
                                ev.lower_bound * 100.0,
                                pct_plain(1.0 - alpha)
                            ),
                            evidence: evidence_json(&ev, elapsed, t.last_error.clone()),
                        });
                    }
                }
                if let Some(e) = &mut st.errors {
                    e.observe(server_error);
                    if e.rejected() {
                        let ev = e.evidence();
                        return Some(Fired {
                            trigger: "errors".into(),
                            signal: s.signal.clone(),
                            summary: format!(
                                "5xx share of {} is above {}: {} of {} requests ({:.2}%; at least {:.2}% with {}% confidence)",
                                s.signal,
                                pct(ev.p0),
                                ev.failures,
                                ev.n,
                                ev.observed_rate * 100.0,
                                ev.lower_bound * 100.0,
                                pct_plain(1.0 - alpha)
                            ),
                            evidence: evidence_json(&ev, elapsed, t.last_error.clone()),
                        });
                    }
                }
                if status.is_some()
                    && let Some(l) = &mut st.latency
                {
                    l.observe(*latency_ms);
                    if l.rejected() {
                        let ev = l.evidence();
                        let q = self.cfg.latency_quantile.0;
                        let now_q = rewind_core::stats::quantile(&t.latencies, q).unwrap_or(0.0);
                        return Some(Fired {
                            trigger: "latency".into(),
                            signal: s.signal.clone(),
                            summary: format!(
                                "p{} latency of {} regressed more than {}: {} of {} requests slower than {:.0} ms (baseline p{} at most {:.0} ms, now {:.0} ms)",
                                (q * 100.0).round(),
                                s.signal,
                                pct(self.cfg.latency_regression),
                                ev.failures,
                                ev.n,
                                l.bound(),
                                (q * 100.0).round(),
                                st.baseline_latency_ms.unwrap_or(0.0),
                                now_q
                            ),
                            evidence: {
                                let mut v = evidence_json(&ev, elapsed, None);
                                v["bound_ms"] = json!(round(l.bound()));
                                v["baseline_ms"] = json!(st.baseline_latency_ms.map(round));
                                v["quantile"] = json!(q);
                                v["observed_quantile_ms"] = json!(round(now_q));
                                v
                            },
                        });
                    }
                }
                None
            }
            SampleKind::Counts {
                total,
                errors,
                latency_ms,
            } => {
                t.requests += total;
                t.server_errors += errors;
                if let Some(e) = &mut st.errors {
                    e.observe_counts(*total, *errors);
                    if e.rejected() {
                        let ev = e.evidence();
                        return Some(Fired {
                            trigger: "errors".into(),
                            signal: s.signal.clone(),
                            summary: format!(
                                "5xx share reported by Prometheus ({}) is above {}: {} of {} requests ({:.2}%)",
                                s.signal,
                                pct(ev.p0),
                                ev.failures,
                                ev.n,
                                ev.observed_rate * 100.0
                            ),
                            evidence: evidence_json(&ev, elapsed, None),
                        });
                    }
                }
                if let (Some(l), Some(bound)) = (latency_ms, st.latency_bound_ms) {
                    t.latencies.push(*l);
                    if st.latency_over.observe(*l <= bound) {
                        return Some(Fired {
                            trigger: "latency".into(),
                            signal: s.signal.clone(),
                            summary: format!(
                                "latency reported by Prometheus ({}) is {:.0} ms, above {:.0} ms for {} queries in a row",
                                s.signal, l, bound, n_needed
                            ),
                            evidence: json!({"latency_ms": round(*l), "bound_ms": round(bound), "baseline_ms": st.baseline_latency_ms, "consecutive": n_needed, "elapsed_s": round(elapsed)}),
                        });
                    }
                }
                None
            }
            SampleKind::Check { ok, output } => {
                t.requests += 1;
                if !ok {
                    t.failed += 1;
                    t.last_error = Some(output.clone());
                }
                if let Some((c, label)) = &mut st.consecutive
                    && c.observe(*ok)
                {
                    return Some(Fired {
                        trigger: label.to_string(),
                        signal: s.signal.clone(),
                        summary: format!(
                            "{} check `{}` failed {} times in a row: {}",
                            label, s.signal, n_needed, output
                        ),
                        evidence: json!({"consecutive_failures": n_needed, "last_output": output, "runs": t.requests, "elapsed_s": round(elapsed)}),
                    });
                }
                None
            }
            SampleKind::Unavailable { error } => {
                t.last_error = Some(error.clone());
                None
            }
        }
    }

    /// One line per signal for the live view and the log.
    pub fn lines(&self) -> Vec<String> {
        let q = self.cfg.latency_quantile.0;
        let mut out = Vec::new();
        for (name, st) in &self.signals {
            let t = &st.tally;
            let mut parts = vec![format!("{name:<12}")];
            match st.what {
                "check" => {
                    parts.push(format!("{} runs, {} failed", t.requests, t.failed));
                }
                _ => {
                    parts.push(format!("{:>6} req", t.requests));
                    if st.availability.is_some() {
                        let avail = if t.requests == 0 {
                            100.0
                        } else {
                            100.0 * (1.0 - t.failed as f64 / t.requests as f64)
                        };
                        parts.push(format!("avail {avail:>6.2}%"));
                    }
                    let e = if t.requests == 0 {
                        0.0
                    } else {
                        100.0 * t.server_errors as f64 / t.requests as f64
                    };
                    parts.push(format!("5xx {e:>5.2}%"));
                    if let Some(now) = rewind_core::stats::quantile(&t.latencies, q) {
                        parts.push(format!(
                            "p{:.0} {:>5.0}ms{}",
                            q * 100.0,
                            now,
                            st.baseline_latency_ms
                                .map(|b| format!(" (base {b:.0}ms)"))
                                .unwrap_or_default()
                        ));
                    }
                }
            }
            let mut bars = Vec::new();
            if let Some(a) = &st.availability {
                bars.push(("avail", a.progress()));
            }
            if let Some(e) = &st.errors {
                bars.push(("5xx", e.progress()));
            }
            if let Some(l) = &st.latency {
                bars.push(("latency", l.progress()));
            }
            if let Some((c, label)) = &st.consecutive {
                bars.push((
                    label,
                    c.run() as f64 / self.cfg.consecutive_failures.max(1) as f64,
                ));
            }
            for (label, p) in bars {
                parts.push(format!("{label} {}", bar(p)));
            }
            if let Some(r) = &st.last_release {
                parts.push(format!("served by {r}"));
            }
            out.push(parts.join("  "));
        }
        out
    }

    pub fn summary(&self) -> Value {
        json!(self
            .signals
            .iter()
            .map(|(n, st)| (n.clone(), json!({
                "requests": st.tally.requests,
                "failed": st.tally.failed,
                "server_errors": st.tally.server_errors,
                "latency_ms": rewind_core::stats::quantile(&st.tally.latencies, self.cfg.latency_quantile.0).map(round),
                "latency_bound_ms": rewind_core::stats::quantile_upper_bound(&st.tally.latencies, self.cfg.latency_quantile.0, self.cfg.alpha / 2.0).map(round),
            })))
            .collect::<serde_json::Map<_, _>>())
    }
}

fn evidence_json(
    ev: &rewind_core::stats::RateEvidence,
    elapsed: f64,
    last_error: Option<String>,
) -> Value {
    let mut v = serde_json::to_value(ev).unwrap_or(Value::Null);
    v["elapsed_s"] = json!(round(elapsed));
    if let Some(e) = last_error {
        v["last_error"] = json!(e);
    }
    v
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn pct(x: f64) -> String {
    format!("{}", rewind_core::units::Percent(x))
}

fn pct_plain(x: f64) -> String {
    let s = format!("{:.4}", x * 100.0);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A ten-cell bar for "how close is this trigger to firing".
fn bar(p: f64) -> String {
    let p = p.clamp(0.0, 1.0);
    let filled = (p * 10.0).round() as usize;
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(filled),
        ".".repeat(10 - filled),
        p * 100.0
    )
}

/// Starts every configured signal against `release`; returns the sample channel and the stop
/// switch.
pub fn start_signals(
    cfg: &WatchConfig,
    release: &str,
    redactor: &Redactor,
) -> (mpsc::Receiver<Sample>, watch::Sender<bool>, Instant) {
    let (tx, rx) = mpsc::channel(4096);
    let (stop_tx, stop_rx) = watch::channel(false);
    let start = Instant::now();
    for p in &cfg.probes {
        tokio::spawn(rewind_signals::probe::run(
            p.clone(),
            start,
            tx.clone(),
            stop_rx.clone(),
        ));
    }
    for p in &cfg.prometheus {
        tokio::spawn(rewind_signals::prometheus::run(
            p.clone(),
            release.to_string(),
            start,
            tx.clone(),
            stop_rx.clone(),
        ));
    }
    for c in &cfg.checks {
        tokio::spawn(rewind_signals::check::run(
            c.clone(),
            start,
            redactor.clone(),
            tx.clone(),
            stop_rx.clone(),
        ));
    }
    (rx, stop_tx, start)
}

/// Samples the signals for `d` against what runs now, and returns per-signal figures: the
/// latency quantile (the latency trigger's baseline), request and failure counts.
pub async fn sample_baseline(
    cfg: &WatchConfig,
    release: &str,
    d: Duration,
    redactor: &Redactor,
) -> Baseline {
    let (mut rx, stop, _) = start_signals(cfg, release, redactor);
    let mut ev = Evaluator::new(cfg, &Baseline::new());
    let deadline = tokio::time::Instant::now() + d;
    loop {
        tokio::select! {
            s = rx.recv() => match s {
                Some(s) => { ev.observe(&s, 0.0); }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let _ = stop.send(true);
    let mut out = Baseline::new();
    if let Some(map) = ev.summary().as_object() {
        for (k, v) in map {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// How a window ended.
pub enum Ending {
    /// The window elapsed with no trigger.
    Passed,
    Fired(Fired),
    /// Stopped before the end (Ctrl-C, or the release is no longer being watched).
    Stopped(String),
}

/// The live view: redrawn in place on a terminal, a log line every few seconds otherwise.
/// It writes to stderr itself (the printer has no notion of redrawing), through the same
/// redactor as the printer.
pub struct View {
    tty: bool,
    quiet: bool,
    redactor: Redactor,
    drawn: usize,
    last_log: Instant,
}

impl View {
    pub fn new(quiet: bool, redactor: Redactor) -> View {
        View {
            tty: std::io::stderr().is_terminal() && !quiet,
            quiet,
            redactor,
            drawn: 0,
            last_log: Instant::now(),
        }
    }

    pub fn draw(&mut self, header: &str, ev: &Evaluator) {
        if self.quiet {
            return;
        }
        let header = self.redactor.redact(header);
        let lines: Vec<String> = ev.lines().iter().map(|l| self.redactor.redact(l)).collect();
        if self.tty {
            let mut out = String::new();
            if self.drawn > 0 {
                out.push_str(&format!("\x1b[{}A", self.drawn));
            }
            out.push_str(&format!("\x1b[2K{header}\n"));
            for l in &lines {
                out.push_str(&format!("\x1b[2K  {l}\n"));
            }
            eprint!("{out}");
            self.drawn = lines.len() + 1;
        } else if self.last_log.elapsed() >= Duration::from_secs(5) {
            self.last_log = Instant::now();
            eprintln!("{header}");
            for l in &lines {
                eprintln!("  {l}");
            }
        }
    }

    /// Ends the live area so that later output does not overwrite it.
    pub fn done(&mut self) {
        self.drawn = 0;
    }
}

/// One stretch of watching: what, against which baseline, for how long.
pub struct Window<'a> {
    pub cfg: &'a WatchConfig,
    pub release: &'a str,
    pub baseline: &'a Baseline,
    pub left: Duration,
    pub redactor: &'a Redactor,
    /// No live view (quiet or JSON mode).
    pub quiet: bool,
    pub title: &'a str,
}

/// Watches until the window's end, a trigger, or a stop. `still_watching` is asked every
/// couple of seconds whether the release is still being watched.
pub async fn run_window<F, Fut>(w: Window<'_>, mut still_watching: F) -> (Ending, Value)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let Window {
        cfg,
        release,
        baseline,
        left: window_left,
        redactor,
        quiet,
        title,
    } = w;
    let (mut rx, stop, start) = start_signals(cfg, release, redactor);
    let mut ev = Evaluator::new(cfg, baseline);
    let mut view = View::new(quiet, redactor.clone());
    let deadline = tokio::time::Instant::now() + window_left;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut checks = 0u32;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let ending = loop {
        tokio::select! {
            s = rx.recv() => match s {
                Some(s) => {
                    if let Some(f) = ev.observe(&s, start.elapsed().as_secs_f64()) {
                        break Ending::Fired(f);
                    }
                }
                None => break Ending::Stopped("the signals stopped".into()),
            },
            _ = tick.tick() => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                view.draw(&format!("{title} — {} left (α = {})", human(left), rewind_core::units::Percent(cfg.alpha)), &ev);
                checks += 1;
                if checks.is_multiple_of(4) && !still_watching().await {
                    break Ending::Stopped("the release is no longer being watched (rolled back or marked by another run)".into());
                }
            }
            _ = tokio::time::sleep_until(deadline) => break Ending::Passed,
            how = crate::engine::interruption(&mut term) => break Ending::Stopped(format!("interrupted ({how})")),
        }
    };
    let _ = stop.send(true);
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    view.draw(&format!("{title} — {} left", human(left)), &ev);
    view.done();
    (ending, ev.summary())
}

pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}s", s)
    }
}
