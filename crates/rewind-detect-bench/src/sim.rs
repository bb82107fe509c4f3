//! Stream simulation, the peer detectors and the report.

use rewind_core::stats::{QuantileTest, RateTest, quantile, quantile_upper_bound};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};

/// False-alarm budget of rewind and of the SPRT.
pub const ALPHA: f64 = 0.01;
/// Type II error of Wald's SPRT (sets its upper boundary `ln((1 − β)/α)`).
const BETA: f64 = 0.01;
/// Monitoring window after the deploy, seconds.
const HOUR: u32 = 3600;
/// Pre-deploy baseline sample, seconds of baseline traffic.
const BASELINE_SECONDS: u32 = 300;
/// Traffic levels, requests per second.
pub const TRAFFIC: &[u32] = &[5, 50, 500];

/// Baseline error rate.
const P_BASE: f64 = 0.001;
/// Error objective: between the 0.1 % baseline (must not alarm) and the smallest regression
/// (0.5 %, must alarm). Every detector is given this same threshold.
const P0: f64 = 0.0025;

/// Lognormal latency: median 50 ms, σ = 0.6 (p95 ≈ 134 ms, p99 ≈ 200 ms).
const LAT_MEDIAN_MS: f64 = 50.0;
const LAT_SIGMA: f64 = 0.6;
/// The latency rule: p95 more than 30 % above the baseline p95.
const LAT_Q: f64 = 0.95;
const LAT_REGRESSION: f64 = 0.3;

/// One-sided 2.5 % critical value (Kayenta's 95 % two-sided confidence, bad side only).
const Z_CRIT: f64 = 1.959_963_984_540_054;

pub const NDET: usize = 9;
const REWIND: usize = 0;
const SPRT: usize = 1;
pub const NAMES: [&str; NDET] = [
    "**rewind** (anytime-valid, every request)",
    "Wald SPRT told the true rate (optimum)",
    "Argo 60 s, failureLimit 0",
    "Argo 60 s, failureLimit 3",
    "Argo 10 s, failureLimit 0",
    "Argo 10 s, failureLimit 3",
    "Flagger 60 s, threshold 5",
    "Flagger 10 s, threshold 5",
    "Kayenta 60 s, Mann–Whitney, growing window",
];

type Times = [Option<f64>; NDET];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Experiment {
    Errors,
    Latency,
}

#[derive(Clone, Copy, Debug)]
pub struct Setting {
    pub label: &'static str,
    /// Error rate (errors) or latency multiplier (latency).
    pub effect: f64,
    /// No regression, or one that must not be flagged: counted as false alarms.
    pub null_like: bool,
    /// Exactly at the rule's threshold: neither a false alarm nor a miss; reported only.
    pub boundary: bool,
}

pub struct Counts {
    pub streams: usize,
    pub threads: usize,
}

impl Experiment {
    pub fn settings(self) -> &'static [Setting] {
        const fn s(label: &'static str, effect: f64, null_like: bool, boundary: bool) -> Setting {
            Setting {
                label,
                effect,
                null_like,
                boundary,
            }
        }
        match self {
            Experiment::Errors => {
                const E: &[Setting] = &[
                    s("no regression (0.1 %)", P_BASE, true, false),
                    s("0.5 %", 0.005, false, false),
                    s("1 %", 0.01, false, false),
                    s("2 %", 0.02, false, false),
                    s("5 %", 0.05, false, false),
                ];
                E
            }
            Experiment::Latency => {
                const L: &[Setting] = &[
                    s("no regression", 1.0, true, false),
                    s("+10 % (must not fire)", 1.1, true, false),
                    s("+30 % (boundary)", 1.3, false, true),
                    s("+100 %", 2.0, false, false),
                ];
                L
            }
        }
    }

    pub fn intro(self) -> String {
        match self {
            Experiment::Errors => format!(
                "## Error rate\n\nBaseline error rate {} %; rule: error rate above the objective \
                 p0 = {} % (every detector gets this threshold). Columns: share of streams \
                 that alarmed (no-regression column: false alarms), then time to detect \
                 `median / p95` in seconds with the share detected within the hour.\n",
                P_BASE * 100.0,
                P0 * 100.0
            ),
            Experiment::Latency => format!(
                "## Latency\n\nLognormal latency, median {LAT_MEDIAN_MS} ms, σ = {LAT_SIGMA} \
                 (p95 ≈ 134 ms); rule: p95 more than {} % above the baseline p95, which is \
                 estimated from {BASELINE_SECONDS} s of pre-deploy traffic (the same estimate \
                 for every detector). +10 % must not fire (its column counts as false \
                 alarms); +30 % is the boundary.\n",
                LAT_REGRESSION * 100.0
            ),
        }
    }
}

/// SplitMix64 pseudo-random numbers (deterministic per stream).
struct Rng {
    state: u64,
    spare: Option<f64>,
}

impl Rng {
    fn new(seed: u64) -> Self {
        let mut r = Rng {
            state: seed,
            spare: None,
        };
        r.next_u64();
        r
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform_open0(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller, both values used).
    fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let r = (-2.0 * self.uniform_open0().ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * self.uniform_open0();
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }

    /// Number of successes before the next failure, for failure probability `p`.
    fn geometric(&mut self, ln_1m_p: f64) -> u64 {
        (self.uniform_open0().ln() / ln_1m_p).floor() as u64
    }
}

/// Indices (0-based) of the failed requests among `n` with failure probability `p`.
fn failure_indices(rng: &mut Rng, n: u64, p: f64) -> Vec<u64> {
    let ln_1m_p = (-p).ln_1p();
    let mut out = Vec::new();
    let mut j = rng.geometric(ln_1m_p);
    while j < n {
        out.push(j);
        j += 1 + rng.geometric(ln_1m_p);
    }
    out
}

/// Argo Rollouts AnalysisRun / Flagger canary analysis: one measurement per `interval`
/// seconds over the requests of that interval, compared with a threshold; the rollout is
/// aborted once the number of failed measurements reaches `fire_after`.
///
/// * Argo Rollouts: `interval`, `failureCondition`/`successCondition` on the measurement,
///   and the AnalysisRun fails when failed measurements exceed `failureLimit`, so
///   `fire_after = failureLimit + 1` (failureLimit 0: the first failed measurement aborts).
/// * Flagger: every `interval` each metric check (e.g. `request-success-rate` with
///   `thresholdRange.min`, `request-duration` with `thresholdRange.max`, both queried over a
///   window of `interval`) runs; each failed check increments the canary's failed-checks
///   counter, which is not reset by later successes, and Flagger rolls back when it reaches
///   `threshold` (we use 5, the value in Flagger's documentation examples). So
///   `fire_after = threshold`.
struct IntervalRule {
    interval: u32,
    fire_after: u32,
    failed: u32,
    fired_at: Option<f64>,
}

impl IntervalRule {
    fn new(interval: u32, fire_after: u32) -> Self {
        Self {
            interval,
            fire_after,
            failed: 0,
            fired_at: None,
        }
    }

    fn record(&mut self, end_of_interval: f64, failed: bool) {
        if self.fired_at.is_none() && failed {
            self.failed += 1;
            if self.failed >= self.fire_after {
                self.fired_at = Some(end_of_interval);
            }
        }
    }
}

/// Argo 60 s/0, 60 s/3, 10 s/0, 10 s/3, Flagger 60 s/5, 10 s/5 (detector indices 2..=7).
fn interval_rules() -> [IntervalRule; 6] {
    [
        IntervalRule::new(60, 1),
        IntervalRule::new(60, 4),
        IntervalRule::new(10, 1),
        IntervalRule::new(10, 4),
        IntervalRule::new(60, 5),
        IntervalRule::new(10, 5),
    ]
}

/// Wald's sequential probability ratio test of `p = p0` against `p = p1` (the true rate,
/// which a real system never knows). It stops with "regression" when the log likelihood
/// ratio reaches `ln((1 − β)/α)`. Its lower boundary (accept H0) is ignored: monitoring
/// continues for the hour, as for every detector. Its time to detect is the reference
/// optimum for a test at level α.
struct Sprt {
    on_fail: f64,
    on_ok: f64,
    upper: f64,
    llr: f64,
}

impl Sprt {
    fn new(p0: f64, p1: f64) -> Self {
        Self {
            on_fail: (p1 / p0).ln(),
            on_ok: ((1.0 - p1) / (1.0 - p0)).ln(),
            upper: ((1.0 - BETA) / ALPHA).ln(),
            llr: 0.0,
        }
    }

    /// Returns true when it fires.
    fn observe(&mut self, bad: bool) -> bool {
        self.llr += if bad { self.on_fail } else { self.on_ok };
        self.llr >= self.upper
    }
}

/// Kayenta's Mann–Whitney classifier, one-sided in the bad direction. Kayenta compares
/// the canary's metric values with the baseline's by a Mann–Whitney test at 95 %
/// confidence (two-sided), and a metric is "High" (failing) when the difference is
/// significant and the effect is large enough. We run it every 60 s over all canary data
/// since the deploy (Spinnaker's default "growing" lookback) against the pre-deploy
/// baseline, fail when `z > 1.96` in the bad direction *and* the effect passes the same rule
/// every detector gets (canary error rate > p0; canary mean latency ≥ 1.3 × baseline mean,
/// Kayenta's effect-size filter), and abort on the first failing run (a single-metric canary
/// scores 0, below any marginal threshold). Repeating a fixed-sample test without
/// correction is how Kayenta is used; it is what inflates its false alarms.
fn mann_whitney_z(u: f64, m: f64, n: f64, tie_term: f64) -> Option<f64> {
    let total = m + n;
    let var = m * n / 12.0 * ((total + 1.0) - tie_term / (total * (total - 1.0)));
    if var <= 0.0 {
        return None;
    }
    Some((u - m * n / 2.0 - 0.5) / var.sqrt())
}

fn seed(exp: Experiment, rps: u32, setting: usize, stream: usize) -> u64 {
    let e = match exp {
        Experiment::Errors => 1u64,
        Experiment::Latency => 2,
    };
    (e << 56) ^ ((rps as u64) << 32) ^ ((setting as u64) << 24) ^ stream as u64
}

/// One error-rate stream: one hour at `rps` with true error rate `p`.
fn error_stream(rng: &mut Rng, rps: u32, p: f64) -> Times {
    let mut times: Times = [None; NDET];
    let rps64 = rps as u64;
    let n_total = HOUR as u64 * rps64;
    let at = |j: u64| (j + 1) as f64 / rps as f64;
    // Pre-deploy baseline (only Kayenta compares against it; the others use p0).
    let n_base = (BASELINE_SECONDS * rps) as f64;
    let k_base = failure_indices(rng, BASELINE_SECONDS as u64 * rps64, P_BASE).len() as f64;
    let fails = failure_indices(rng, n_total, p);

    // rewind: checked after every request. Good requests only lower the evidence, so
    // feeding each run of good requests followed by the failure and checking then is
    // exactly the same as checking after every request.
    let mut test = RateTest::new(P0, ALPHA).expect("valid parameters");
    for &j in &fails {
        test.observe_counts(j + 1 - test.n(), 1);
        if test.rejected() {
            times[REWIND] = Some(at(j));
            break;
        }
    }

    // SPRT told the truth (only meaningful for p > p0). It too can only fire on a failure.
    if p > P0 {
        let mut sprt = Sprt::new(P0, p);
        let mut prev = 0u64;
        for &j in &fails {
            sprt.llr += (j - prev) as f64 * sprt.on_ok;
            prev = j + 1;
            if sprt.observe(true) {
                times[SPRT] = Some(at(j));
                break;
            }
        }
    }

    // Failures per 10-second bucket.
    let mut per10 = vec![0u32; (HOUR / 10) as usize];
    for &j in &fails {
        per10[(j / (10 * rps64)) as usize] += 1;
    }

    for (i, rule) in interval_rules().iter_mut().enumerate() {
        let buckets = (rule.interval / 10) as usize;
        let requests = (rule.interval * rps) as f64;
        for (w, chunk) in per10.chunks(buckets).enumerate() {
            let errors: u32 = chunk.iter().sum();
            rule.record(
                ((w + 1) as u32 * rule.interval) as f64,
                errors as f64 / requests > P0,
            );
        }
        times[2 + i] = rule.fired_at;
    }

    // Kayenta: growing window, every 60 s, 0/1 data with tie correction.
    let mut k_canary = 0.0;
    for (w, chunk) in per10.chunks(6).enumerate() {
        k_canary += chunk.iter().sum::<u32>() as f64;
        let m = ((w + 1) as u32 * 60 * rps) as f64;
        let ones = k_canary + k_base;
        let zeros = m + n_base - ones;
        let u = k_canary * (n_base - k_base)
            + 0.5 * (k_canary * k_base + (m - k_canary) * (n_base - k_base));
        let ties = (ones.powi(3) - ones) + (zeros.powi(3) - zeros);
        if let Some(z) = mann_whitney_z(u, m, n_base, ties)
            && z > Z_CRIT
            && k_canary / m > P0
        {
            times[8] = Some(((w + 1) * 60) as f64);
            break;
        }
    }
    times
}

/// Counts of baseline values below a given value, in O(1) expected time.
struct RankIndex {
    sorted: Vec<f64>,
    lo: f64,
    inv_width: f64,
    /// `starts[b]` = number of sorted values below the left edge of bucket `b`.
    starts: Vec<u32>,
}

impl RankIndex {
    fn new(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let buckets = (values.len() / 2).clamp(16, 1 << 17);
        let lo = values[0];
        let hi = values[values.len() - 1];
        let inv_width = buckets as f64 / (hi - lo).max(f64::MIN_POSITIVE);
        let mut starts = vec![0u32; buckets + 1];
        let mut idx = 0usize;
        for (b, s) in starts.iter_mut().enumerate() {
            let edge = lo + b as f64 / inv_width;
            while idx < values.len() && values[idx] < edge {
                idx += 1;
            }
            *s = idx as u32;
        }
        starts[buckets] = values.len() as u32;
        Self {
            sorted: values,
            lo,
            inv_width,
            starts,
        }
    }

    fn below(&self, v: f64) -> u32 {
        if v <= self.lo {
            return 0;
        }
        let buckets = self.starts.len() - 1;
        let b = (((v - self.lo) * self.inv_width) as usize).min(buckets - 1);
        let (s, e) = (self.starts[b] as usize, self.starts[b + 1] as usize);
        s as u32 + self.sorted[s..e].partition_point(|&x| x < v) as u32
    }
}

/// Standard normal upper tail, `P(Z > z)` (via erfc, Numerical Recipes' Chebyshev fit,
/// relative error < 1.2e-7: plenty for choosing the SPRT's alternative).
fn normal_sf(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let y = t
        * (-x * x - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    let erfc = if x >= 0.0 { y } else { 2.0 - y };
    0.5 * erfc
}

/// The interval's q-quantile (type 7, as `rewind_core::stats::quantile`) in O(n).
fn interval_quantile(buf: &mut [f64], q: f64) -> f64 {
    let h = (buf.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let (_, &mut a, rest) = buf.select_nth_unstable_by(lo, f64::total_cmp);
    if h == lo as f64 || rest.is_empty() {
        return a;
    }
    let b = rest.iter().copied().fold(f64::INFINITY, f64::min);
    a + (h - lo as f64) * (b - a)
}

/// One latency stream: one hour at `rps`, latencies multiplied by `scale` after the deploy.
fn latency_stream(rng: &mut Rng, rps: u32, scale: f64, stop_early: bool) -> Times {
    let mut times: Times = [None; NDET];
    let mu = LAT_MEDIAN_MS.ln();
    let baseline: Vec<f64> = (0..BASELINE_SECONDS * rps)
        .map(|_| (mu + LAT_SIGMA * rng.normal()).exp())
        .collect();
    let base_p95 = quantile(&baseline, LAT_Q).expect("non-empty baseline");
    let base_mean = baseline.iter().sum::<f64>() / baseline.len() as f64;
    let bound = base_p95 * (1.0 + LAT_REGRESSION);
    let n_base = baseline.len() as f64;
    // Ranks are looked up in log space, where the lognormal is spread evenly over buckets.
    let ranks = RankIndex::new(baseline.iter().map(|x| x.ln()).collect());

    // rewind, as the product runs it: half of α for an upper confidence bound of the baseline
    // p95, half for the sequential test (see `stats::quantile_upper_bound`).
    let base_ucb =
        quantile_upper_bound(&baseline, LAT_Q, ALPHA / 2.0).expect("baseline large enough");
    let mut test = QuantileTest::new(base_ucb, LAT_Q, LAT_REGRESSION, ALPHA / 2.0).expect("valid");
    // The SPRT is told the true share of requests slower than the bound.
    let p_true = normal_sf(((bound / scale).ln() - mu) / LAT_SIGMA);
    let p0 = 1.0 - LAT_Q;
    let mut sprt = (p_true > p0).then(|| Sprt::new(p0, p_true));
    let mut rules = interval_rules();
    let mut buf10: Vec<f64> = Vec::with_capacity(10 * rps as usize);
    let mut buf60: Vec<f64> = Vec::with_capacity(60 * rps as usize);
    let (mut u, mut sum, mut m) = (0.0f64, 0.0f64, 0.0f64);
    let mut kayenta_done = false;
    let ln_scale = scale.ln();

    for s in 0..HOUR {
        for r in 0..rps {
            let ln_x = mu + ln_scale + LAT_SIGMA * rng.normal();
            let x = ln_x.exp();
            let t = s as f64 + (r + 1) as f64 / rps as f64;
            if times[REWIND].is_none() {
                test.observe(x);
                if test.rejected() {
                    times[REWIND] = Some(t);
                }
            }
            if let Some(sp) = sprt.as_mut()
                && sp.observe(x > bound)
            {
                times[SPRT] = Some(t);
                sprt = None;
            }
            buf10.push(x);
            buf60.push(x);
            if !kayenta_done {
                u += ranks.below(ln_x) as f64;
                sum += x;
                m += 1.0;
            }
        }
        let end = (s + 1) as f64;
        if (s + 1) % 10 == 0 {
            let p95 = interval_quantile(&mut buf10, LAT_Q);
            for rule in rules.iter_mut().filter(|r| r.interval == 10) {
                rule.record(end, p95 > bound);
            }
            buf10.clear();
        }
        if (s + 1) % 60 == 0 {
            let p95 = interval_quantile(&mut buf60, LAT_Q);
            for rule in rules.iter_mut().filter(|r| r.interval == 60) {
                rule.record(end, p95 > bound);
            }
            buf60.clear();
            if !kayenta_done
                && let Some(z) = mann_whitney_z(u, m, n_base, 0.0)
                && z > Z_CRIT
                && (sum / m) / base_mean >= 1.0 + LAT_REGRESSION
            {
                times[8] = Some(end);
                kayenta_done = true;
            }
            if stop_early {
                let all = times[REWIND].is_some()
                    && (times[SPRT].is_some() || p_true <= p0)
                    && rules.iter().all(|r| r.fired_at.is_some())
                    && kayenta_done;
                if all {
                    break;
                }
            }
        }
    }
    for (i, rule) in rules.iter().enumerate() {
        times[2 + i] = rule.fired_at;
    }
    times
}

/// Runs all streams of one setting on `threads` threads.
pub fn run_setting(exp: Experiment, rps: u32, setting: &Setting, counts: &Counts) -> Row {
    let index = exp
        .settings()
        .iter()
        .position(|s| s.label == setting.label)
        .expect("setting of this experiment");
    let next = AtomicUsize::new(0);
    let mut results: Vec<(usize, Times)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..counts.threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= counts.streams {
                            break out;
                        }
                        let mut rng = Rng::new(seed(exp, rps, index, i));
                        let t = match exp {
                            Experiment::Errors => error_stream(&mut rng, rps, setting.effect),
                            Experiment::Latency => latency_stream(
                                &mut rng,
                                rps,
                                setting.effect,
                                !setting.null_like && !setting.boundary,
                            ),
                        };
                        out.push((i, t));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    });
    results.sort_by_key(|r| r.0);
    Row {
        setting: *setting,
        times: results.into_iter().map(|r| r.1).collect(),
    }
}

pub struct Row {
    pub setting: Setting,
    pub times: Vec<Times>,
}

/// Detection statistics of one detector in one setting.
#[derive(Clone, Copy, Debug)]
struct Stat {
    share: f64,
    alarms: usize,
    streams: usize,
    median: Option<f64>,
    p95: Option<f64>,
}

impl Row {
    fn stat(&self, det: usize) -> Stat {
        let mut t: Vec<f64> = self.times.iter().filter_map(|x| x[det]).collect();
        t.sort_by(f64::total_cmp);
        let n = self.times.len();
        // Quantiles over all streams; undetected streams count as +∞.
        let q = |q: f64| {
            let idx = ((n as f64 * q).ceil() as usize).max(1) - 1;
            t.get(idx).copied()
        };
        Stat {
            share: t.len() as f64 / n.max(1) as f64,
            alarms: t.len(),
            streams: n,
            median: q(0.5),
            p95: q(0.95),
        }
    }
}

fn applicable(exp: Experiment, setting: &Setting, det: usize) -> bool {
    if det != SPRT {
        return true;
    }
    match exp {
        Experiment::Errors => setting.effect > P0,
        Experiment::Latency => !setting.null_like && !setting.boundary,
    }
}

pub struct Summary {
    exp: Experiment,
    rps: u32,
    rows: Vec<Row>,
}

fn secs(t: Option<f64>) -> String {
    match t {
        Some(t) if t < 100.0 => format!("{t:.1}"),
        Some(t) => format!("{t:.0}"),
        None => "never".to_string(),
    }
}

fn pct(x: f64) -> String {
    if x == 0.0 {
        "0 %".into()
    } else if x < 0.1 {
        format!("{:.1} %", x * 100.0)
    } else {
        format!("{:.0} %", x * 100.0)
    }
}

impl Summary {
    pub fn new(exp: Experiment, rps: u32, rows: Vec<Row>) -> Self {
        Self { exp, rps, rows }
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let what = match self.exp {
            Experiment::Errors => "Error rate",
            Experiment::Latency => "Latency",
        };
        let _ = writeln!(out, "### {what}, {} requests/s\n", self.rps);
        let _ = write!(out, "| detector |");
        for r in &self.rows {
            let _ = write!(out, " {} ({} streams) |", r.setting.label, r.times.len());
        }
        let _ = write!(out, "\n|---|");
        for _ in &self.rows {
            let _ = write!(out, "---|");
        }
        out.push('\n');
        for (det, name) in NAMES.iter().enumerate() {
            let _ = write!(out, "| {name} |");
            for r in &self.rows {
                if !applicable(self.exp, &r.setting, det) {
                    let _ = write!(out, " — |");
                    continue;
                }
                let s = r.stat(det);
                if r.setting.null_like {
                    let _ = write!(out, " {} ({}/{}) |", pct(s.share), s.alarms, s.streams);
                } else {
                    let _ = write!(
                        out,
                        " {} / {} s ({}) |",
                        secs(s.median),
                        secs(s.p95),
                        pct(s.share)
                    );
                }
            }
            out.push('\n');
        }
        out.push('\n');
        out
    }

    /// False-alarm share of a detector: the worst over the null-like settings.
    fn false_alarms(&self, det: usize) -> f64 {
        self.rows
            .iter()
            .filter(|r| r.setting.null_like)
            .map(|r| r.stat(det).share)
            .fold(0.0, f64::max)
    }
}

/// Checks the goals and says plainly which are met.
pub fn goals(summaries: &[Summary]) -> String {
    let mut out = String::new();
    let mark = |ok: bool| if ok { "met" } else { "**MISSED**" };

    let _ = writeln!(
        out,
        "**1. False alarms ≤ α = {} % in every setting without a (flaggable) regression.**\n",
        ALPHA * 100.0
    );
    for s in summaries {
        for r in s.rows.iter().filter(|r| r.setting.null_like) {
            let st = r.stat(REWIND);
            let _ = writeln!(
                out,
                "- {:?} {} rps, {}: {} ({}/{}) — {}",
                s.exp,
                s.rps,
                r.setting.label,
                pct(st.share),
                st.alarms,
                st.streams,
                mark(st.share <= ALPHA)
            );
        }
    }

    let _ = writeln!(
        out,
        "\n**2. Median time to detect ≤ 2 × the SPRT optimum (told the true rate).**\n"
    );
    for s in summaries {
        for r in s
            .rows
            .iter()
            .filter(|r| !r.setting.null_like && !r.setting.boundary)
        {
            let (rw, sp) = (r.stat(REWIND), r.stat(SPRT));
            let line = match (rw.median, sp.median) {
                (Some(a), Some(b)) => format!(
                    "{} s vs {} s, ratio {:.2} — {}",
                    secs(Some(a)),
                    secs(Some(b)),
                    a / b,
                    mark(a <= 2.0 * b)
                ),
                (None, Some(b)) => format!(
                    "rewind: not detected in most streams within the hour; SPRT {} s — {}",
                    secs(Some(b)),
                    mark(false)
                ),
                (Some(a), None) => format!(
                    "{} s; SPRT itself does not detect within the hour — met",
                    secs(Some(a))
                ),
                (None, None) => {
                    "neither detects within the hour (not enough data) — not applicable".into()
                }
            };
            let _ = writeln!(
                out,
                "- {:?} {} rps, {}: {line}",
                s.exp, s.rps, r.setting.label
            );
        }
    }

    let _ = writeln!(
        out,
        "\n**3. ≥ 10 × faster (median) than every interval-based peer whose false-alarm rate is \
         equal or lower.** A peer's false-alarm rate is its worst over the null-like columns of \
         the same traffic level; a peer that never detects counts as infinitely slower.\n"
    );
    for s in summaries {
        let fa_rewind = s.false_alarms(REWIND);
        for r in s
            .rows
            .iter()
            .filter(|r| !r.setting.null_like && !r.setting.boundary)
        {
            let Some(ours) = r.stat(REWIND).median else {
                let _ = writeln!(
                    out,
                    "- {:?} {} rps, {}: rewind does not detect within the hour — {}",
                    s.exp,
                    s.rps,
                    r.setting.label,
                    mark(false)
                );
                continue;
            };
            let mut comparable = Vec::new();
            let mut others = Vec::new();
            for det in 2..NDET {
                let fa = s.false_alarms(det);
                let ratio = r.stat(det).median.map_or(f64::INFINITY, |m| m / ours);
                if fa <= fa_rewind {
                    comparable.push((ratio, det, fa));
                } else {
                    others.push((ratio, det, fa));
                }
            }
            let worst =
                |v: &Vec<(f64, usize, f64)>| v.iter().copied().min_by(|a, b| a.0.total_cmp(&b.0));
            let fmt_ratio = |x: f64| {
                if x.is_finite() {
                    format!("{x:.2}×")
                } else {
                    "∞ (peer never detects)".into()
                }
            };
            let line = match worst(&comparable) {
                Some((ratio, det, fa)) => format!(
                    "rewind {} s; fastest peer at ≤ rewind's false-alarm rate: {} ({} false \
                     alarms), ratio peer/rewind {} — {} (the SPRT optimum's ratio: {})",
                    secs(Some(ours)),
                    NAMES[det],
                    pct(fa),
                    fmt_ratio(ratio),
                    mark(ratio >= 10.0),
                    match (r.stat(det).median, r.stat(SPRT).median) {
                        (Some(p), Some(o)) => fmt_ratio(p / o),
                        (None, _) => fmt_ratio(f64::INFINITY),
                        (Some(_), None) => "n/a".into(),
                    }
                ),
                None => {
                    let (ratio, det, fa) = worst(&others).expect("peers");
                    format!(
                        "rewind {} s; no peer has a false-alarm rate as low as rewind's ({}) — \
                         not testable (fastest peer: {}, {} false alarms, median {} s, ratio \
                         peer/rewind {})",
                        secs(Some(ours)),
                        pct(fa_rewind),
                        NAMES[det],
                        pct(fa),
                        secs(r.stat(det).median),
                        fmt_ratio(ratio)
                    )
                }
            };
            let _ = writeln!(
                out,
                "- {:?} {} rps, {}: {line}",
                s.exp, s.rps, r.setting.label
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_index_counts_values_below() {
        let mut rng = Rng::new(7);
        let v: Vec<f64> = (0..5000).map(|_| rng.normal()).collect();
        let idx = RankIndex::new(v.clone());
        for _ in 0..2000 {
            let x = rng.normal() * 1.5;
            let want = v.iter().filter(|&&y| y < x).count() as u32;
            assert_eq!(idx.below(x), want);
        }
    }

    #[test]
    fn interval_quantile_matches_core() {
        let mut rng = Rng::new(8);
        for n in [1usize, 2, 7, 50, 301] {
            let mut v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
            let want = quantile(&v, 0.95).unwrap();
            assert!((interval_quantile(&mut v, 0.95) - want).abs() < 1e-12);
        }
    }

    #[test]
    fn normal_tail() {
        assert!((normal_sf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_sf(1.644_853_627) - 0.05).abs() < 1e-7);
        assert!((normal_sf(-1.959_964) - 0.975).abs() < 1e-7);
    }
}
