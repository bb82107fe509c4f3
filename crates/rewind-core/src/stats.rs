//! Sequential, anytime-valid tests that decide when a new release is bad.
//!
//! # What is tested
//!
//! Every rollback rule rewind evaluates statistically is reduced to one question about a
//! Bernoulli rate: "is the share of *bad* requests above an objective `p0`?"
//!
//! * Error rate: a request is bad when it failed (5xx). `p0` is the error objective.
//! * Latency regression: "the new q-quantile is more than `r` above the baseline q-quantile"
//!   holds exactly when, with `b = baseline_quantile × (1 + r)`, more than a share `1 − q` of
//!   new requests are slower than `b`. So a request is bad when `latency > b`, and
//!   `p0 = 1 − q` (5 % for a p95 rule). See [`QuantileTest`].
//!
//! The test is one-sided: H0: `p ≤ p0` (healthy) against H1: `p > p0` (roll back).
//!
//! # The test: a mixture likelihood ratio, checked after every request
//!
//! For one alternative rate `q > p0` the likelihood ratio of the first `n` requests, `k` of
//! them bad, is
//!
//! ```text
//! L_n(q) = (q / p0)^k · ((1 − q) / (1 − p0))^(n − k).
//! ```
//!
//! We do not know by how much a bad release is bad, so rewind averages `L_n(q)` over a prior
//! `π` on `q`: a Beta(a, b) density cut to `[p0, 1]` and renormalised. The evidence is
//!
//! ```text
//! M_n = ∫_{p0}^{1} L_n(q) dπ(q)
//!     = B(a + k, b + n − k) · (1 − I_{p0}(a + k, b + n − k))
//!       / ( B(a, b) · (1 − I_{p0}(a, b)) · p0^k · (1 − p0)^(n − k) ),
//! ```
//!
//! with `B` the beta function and `I` the regularised incomplete beta function. It is
//! computed in log space (log-gamma by Stirling's series, the incomplete beta by a Lentz
//! continued fraction, always on the side where it converges and the tail is computed
//! directly rather than as `1 − something`), so it stays accurate for `n` up to 10^7 and
//! beyond, for `k = 0` and for tiny objectives such as `p0 = 0.001`.
//!
//! The release is declared bad the first time `M_n ≥ 1/α`, i.e. `ln M_n ≥ ln(1/α)`.
//!
//! # Why the false-alarm rate stays ≤ α no matter how often we look (Ville's inequality)
//!
//! 1. One request `x ∈ {0, 1}` with true bad-rate `p ≤ p0` and any `q ≥ p0`:
//!
//!    ```text
//!    E_p[(q/p0)^x ((1−q)/(1−p0))^(1−x)] = p·q/p0 + (1−p)(1−q)/(1−p0).
//!    ```
//!
//!    This is linear in `p`, equals `q + (1 − q) = 1` at `p = p0`, and its slope
//!    `q/p0 − (1−q)/(1−p0)` is ≥ 0 because `q ≥ p0`. Hence it is ≤ 1 for every `p ≤ p0`.
//! 2. So for each fixed `q ≥ p0`, `L_n(q)` is a non-negative supermartingale with `L_0 = 1`
//!    under any healthy rate (requests independent). An average of such supermartingales with
//!    weights fixed in advance (the prior) is again one: `M_n` is a non-negative
//!    supermartingale with `M_0 = 1`. This is why the prior is restricted to `q ≥ p0`.
//! 3. Ville's inequality for non-negative supermartingales: `P(sup_n M_n ≥ 1/α) ≤ α · M_0 = α`.
//!    The bound holds for the supremum over *all* times, so checking after every single
//!    request, at any data-dependent time, or forever, never raises the false-alarm rate
//!    above α. A fixed-sample test (a Mann–Whitney test each minute, say) has no such
//!    guarantee: repeating it is what inflates its false alarms.
//!
//! Checking at a subset of times (e.g. after a batch of counter increments,
//! [`RateTest::observe_counts`]) is a fortiori valid. Conversely, because a good request
//! multiplies every `L_n(q)` (with `q > p0`) by `(1−q)/(1−p0) < 1`, `M_n` can only go *up*
//! on a bad request; evaluating at bad requests only loses nothing. rewind uses this and two
//! cheap upper bounds to skip the exact computation almost always: `M_n ≤ sup_q L_n(q) =
//! exp(n·KL(k/n ‖ p0))`, and, since the last exact value `M_m`, `M_n ≤ M_m · sup_q` (the
//! likelihood ratio of requests `m+1..n`), because each component was multiplied by that
//! ratio at `q`. Both are exact bounds, so the decision is the same as evaluating exactly
//! after every request (a unit test checks this).
//!
//! # The prior
//!
//! The default prior is Beta(2, b) with mean `3·p0` (cut to `[p0, 1]`). The shape parameter
//! 2 puts little weight right at `p0` (a rate barely above the objective is not worth
//! hurrying for, and it would take very long to detect anyway) and a smooth, wide bump over
//! 1.5–10 × `p0`, the range of typical regressions (an error rate jumping from 0.1 % to
//! 0.5–5 %, a slow path making 10–20 % of requests exceed the latency budget). The price of
//! not knowing the true rate, relative to Wald's SPRT that is told it, is about
//! `ln(1/(prior mass near the true rate))` extra nats of evidence, i.e. a modest constant
//! factor in time to detect for anything in that range. Use [`RateTest::with_prior`] to
//! choose another one; any prior keeps the guarantee.
//!
//! # Caveats a reviewer should know
//!
//! * The guarantee assumes requests are independent given the rate. Correlated failures
//!   (one broken pod) make any test, this one included, fire faster than nominal.
//! * For latency, the threshold `b` comes from a baseline sample; the guarantee is
//!   conditional on that estimate. A 5-minute baseline is plenty at realistic traffic.
//! * The lower confidence bound in [`RateEvidence`] is obtained by inverting the same test
//!   over `p0` by bisection, which assumes the evidence falls as `p0` rises (it does in
//!   practice; this is not proved here).

use serde::Serialize;

/// Invalid parameters for a test.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    #[error("objective rate p0 must be in (0, 1), got {0}")]
    BadRate(f64),
    #[error("alpha must be in (0, 1), got {0}")]
    BadAlpha(f64),
    #[error("prior parameters must be positive and finite, got a = {0}, b = {1}")]
    BadPrior(f64, f64),
    #[error("quantile must be in (0, 1), got {0}")]
    BadQuantile(f64),
    #[error("baseline value must be positive and finite, got {0}")]
    BadBaseline(f64),
    #[error("regression must be ≥ 0 and finite, got {0}")]
    BadRegression(f64),
}

/// Snapshot of a [`RateTest`], for logs, the audit trail and a live view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateEvidence {
    /// Observations so far.
    pub n: u64,
    /// Bad observations (failed requests, or requests slower than the latency bound).
    pub failures: u64,
    /// `failures / n` (0 when `n = 0`).
    pub observed_rate: f64,
    /// The objective: H0 is `p ≤ p0`.
    pub p0: f64,
    /// Bound on the false-alarm probability over the whole monitoring period.
    pub alpha: f64,
    /// `ln M_n`, the evidence against H0.
    pub log_evidence: f64,
    /// `ln(1/α)`: the test fires when `log_evidence` reaches it.
    pub threshold: f64,
    /// Whether the test has fired (sticky).
    pub rejected: bool,
    /// Anytime-valid one-sided lower confidence bound (level 1 − α) on the true rate.
    pub lower_bound: f64,
}

/// Anytime-valid one-sided test of H0: `p ≤ p0` against H1: `p > p0` for a Bernoulli rate.
/// See the module documentation for the construction and the proof of validity.
#[derive(Debug, Clone)]
pub struct RateTest {
    p0: f64,
    alpha: f64,
    a: f64,
    b: f64,
    /// `ln B(a, b) + ln(1 − I_{p0}(a, b))`: normaliser of the cut prior.
    ln_prior_norm: f64,
    n: u64,
    k: u64,
    rejected_at: Option<u64>,
    /// Last exact evaluation `(n, k, ln M_n)`, anchor of the cheap incremental bound.
    anchor: Option<(u64, u64, f64)>,
}

impl RateTest {
    /// Test with the default prior (Beta(2, ·) with mean `3·p0`, see the module doc).
    pub fn new(p0: f64, alpha: f64) -> Result<Self, StatsError> {
        check_rate(p0)?;
        let (a, b) = default_prior(p0);
        Self::with_prior(p0, alpha, a, b)
    }

    /// Test with a Beta(a, b) prior cut to `[p0, 1]`.
    pub fn with_prior(p0: f64, alpha: f64, a: f64, b: f64) -> Result<Self, StatsError> {
        check_rate(p0)?;
        if !(alpha > 0.0 && alpha < 1.0) {
            return Err(StatsError::BadAlpha(alpha));
        }
        if !(a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite()) {
            return Err(StatsError::BadPrior(a, b));
        }
        Ok(Self {
            p0,
            alpha,
            a,
            b,
            ln_prior_norm: ln_beta(a, b) + ln_upper_tail(p0, a, b),
            n: 0,
            k: 0,
            rejected_at: None,
            anchor: None,
        })
    }

    /// Record one request; `failed` means it counts against the release.
    pub fn observe(&mut self, failed: bool) {
        self.n += 1;
        if failed {
            self.k += 1;
            self.check();
        }
    }

    /// Record a batch (e.g. the increase of Prometheus counters between two scrapes): `n`
    /// requests of which `failures` failed. The test is checked once, after the batch.
    /// `failures` larger than `n` is clamped to `n`.
    pub fn observe_counts(&mut self, n: u64, failures: u64) {
        let failures = failures.min(n);
        self.n += n;
        self.k += failures;
        if failures > 0 {
            self.check();
        }
    }

    fn check(&mut self) {
        if self.rejected_at.is_some() {
            return;
        }
        let threshold = self.threshold();
        // Cheap upper bound: the mixture never exceeds the best single likelihood ratio.
        if sup_log_lr(self.n, self.k, self.p0) < threshold {
            return;
        }
        // Second cheap bound: since the last exact value, every component was multiplied by
        // the likelihood ratio of the new data, which is at most its best single one.
        if let Some((n, k, v)) = self.anchor
            && v + sup_log_lr(self.n - n, self.k - k, self.p0) < threshold
        {
            return;
        }
        let v = self.log_evidence();
        self.anchor = Some((self.n, self.k, v));
        if v >= threshold {
            self.rejected_at = Some(self.n);
        }
    }

    /// `ln M_n`, the current evidence against H0 (0 before any data).
    pub fn log_evidence(&self) -> f64 {
        ln_mixture(self.n, self.k, self.p0, self.a, self.b, self.ln_prior_norm)
    }

    /// `ln(1/α)`.
    pub fn threshold(&self) -> f64 {
        -self.alpha.ln()
    }

    /// True once the evidence has reached the threshold; stays true.
    pub fn rejected(&self) -> bool {
        self.rejected_at.is_some()
    }

    /// Number of observations at which the test fired, if it has.
    pub fn rejected_at(&self) -> Option<u64> {
        self.rejected_at
    }

    /// How close the test is to firing: `ln M_n / ln(1/α)` clamped to `[0, 1]`; 1 once fired.
    pub fn progress(&self) -> f64 {
        if self.rejected() {
            return 1.0;
        }
        (self.log_evidence() / self.threshold()).clamp(0.0, 1.0)
    }

    pub fn n(&self) -> u64 {
        self.n
    }

    pub fn failures(&self) -> u64 {
        self.k
    }

    pub fn p0(&self) -> f64 {
        self.p0
    }

    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Snapshot for reporting. Costs about 50 evidence evaluations (the confidence bound).
    pub fn evidence(&self) -> RateEvidence {
        RateEvidence {
            n: self.n,
            failures: self.k,
            observed_rate: if self.n == 0 {
                0.0
            } else {
                self.k as f64 / self.n as f64
            },
            p0: self.p0,
            alpha: self.alpha,
            log_evidence: self.log_evidence(),
            threshold: self.threshold(),
            rejected: self.rejected(),
            lower_bound: self.lower_bound(),
        }
    }

    /// Anytime-valid lower confidence bound on `p`: the smallest objective `p'` that a test
    /// built like this one (same α, default prior for `p'`) would not reject on the data so
    /// far. The true rate is rejected at some time with probability ≤ α, so `p ≥ bound` holds
    /// at all times simultaneously with probability ≥ 1 − α. Found by bisection.
    pub fn lower_bound(&self) -> f64 {
        if self.n == 0 || self.k == 0 {
            return 0.0;
        }
        let threshold = self.threshold();
        let rejects = |p: f64| {
            let (a, b) = default_prior(p);
            let norm = ln_beta(a, b) + ln_upper_tail(p, a, b);
            ln_mixture(self.n, self.k, p, a, b, norm) >= threshold
        };
        let observed = self.k as f64 / self.n as f64;
        // Bisect on a log scale: bounds span orders of magnitude. `lo` is always rejected,
        // `hi` (the observed rate, where the evidence is ≤ 0) never is.
        let mut lo = (observed * 1e-9).ln();
        let mut hi = observed.min(1.0 - 1e-12).ln();
        if !rejects(lo.exp()) {
            return 0.0;
        }
        for _ in 0..50 {
            let mid = 0.5 * (lo + hi);
            if rejects(mid.exp()) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo.exp()
    }
}

/// Test of "the new q-quantile of latency is more than `regression` above the baseline
/// q-quantile", as a [`RateTest`] on the indicator `latency > baseline × (1 + regression)`
/// with `p0 = 1 − q`.
#[derive(Debug, Clone)]
pub struct QuantileTest {
    bound: f64,
    q: f64,
    inner: RateTest,
}

impl QuantileTest {
    /// `baseline_quantile_value`: the baseline's q-quantile (e.g. p95 in seconds, see
    /// [`quantile`]); `q`: e.g. 0.95; `regression`: e.g. 0.3 for "more than 30 % slower".
    pub fn new(
        baseline_quantile_value: f64,
        q: f64,
        regression: f64,
        alpha: f64,
    ) -> Result<Self, StatsError> {
        if !(baseline_quantile_value > 0.0 && baseline_quantile_value.is_finite()) {
            return Err(StatsError::BadBaseline(baseline_quantile_value));
        }
        if !(q > 0.0 && q < 1.0) {
            return Err(StatsError::BadQuantile(q));
        }
        if !(regression >= 0.0 && regression.is_finite()) {
            return Err(StatsError::BadRegression(regression));
        }
        Ok(Self {
            bound: baseline_quantile_value * (1.0 + regression),
            q,
            inner: RateTest::new(1.0 - q, alpha)?,
        })
    }

    /// Record one request's latency (same unit as the baseline value).
    pub fn observe(&mut self, latency: f64) {
        // NaN counts as slow: a request without a latency is not evidence of health.
        self.inner.observe(latency.is_nan() || latency > self.bound);
    }

    /// The latency bound `b`: a request slower than this counts against the release.
    pub fn bound(&self) -> f64 {
        self.bound
    }

    pub fn quantile(&self) -> f64 {
        self.q
    }

    pub fn log_evidence(&self) -> f64 {
        self.inner.log_evidence()
    }

    pub fn threshold(&self) -> f64 {
        self.inner.threshold()
    }

    pub fn rejected(&self) -> bool {
        self.inner.rejected()
    }

    pub fn rejected_at(&self) -> Option<u64> {
        self.inner.rejected_at()
    }

    pub fn progress(&self) -> f64 {
        self.inner.progress()
    }

    /// Evidence about the share of requests slower than [`Self::bound`].
    pub fn evidence(&self) -> RateEvidence {
        self.inner.evidence()
    }

    pub fn rate_test(&self) -> &RateTest {
        &self.inner
    }
}

/// Fires when `needed` checks fail in a row; a success resets the run. For hard failures
/// (health endpoint down, pods crash-looping) where no statistics are needed.
#[derive(Debug, Clone)]
pub struct Consecutive {
    needed: u32,
    run: u32,
    fired: bool,
}

impl Consecutive {
    /// `needed` is at least 1 (0 is treated as 1).
    pub fn new(needed: u32) -> Self {
        Self {
            needed: needed.max(1),
            run: 0,
            fired: false,
        }
    }

    /// Record a check; returns whether the detector has fired (sticky).
    pub fn observe(&mut self, ok: bool) -> bool {
        if ok {
            self.run = 0;
        } else {
            self.run += 1;
            if self.run >= self.needed {
                self.fired = true;
            }
        }
        self.fired
    }

    pub fn fired(&self) -> bool {
        self.fired
    }

    /// Current run of failed checks.
    pub fn run(&self) -> u32 {
        self.run
    }
}

/// The q-quantile of a sample, linearly interpolated between order statistics (type 7, the
/// default of R and NumPy). NaNs are ignored. `None` for an empty sample or `q ∉ [0, 1]`.
/// A distribution-free upper confidence bound, at level `1 − delta`, for the `q`-quantile of the
/// distribution a sample came from: the order statistic `X_(k)` with the smallest `k` such that
/// `P(Binomial(n, q) ≥ k) ≤ delta` (the event `X_(k) < ξ_q` is exactly "at least `k` of the `n`
/// draws fall below `ξ_q`"). The latency trigger compares against this rather than the point
/// estimate, so that a baseline that happened to come out low cannot turn into false alarms:
/// with it, the trigger's overall false-alarm rate is at most `delta` plus the test's own α.
///
/// `None` when the sample is too small for any order statistic to bound the quantile at this
/// level (e.g. fewer than 59 values for p95 at `delta` = 5 %).
pub fn quantile_upper_bound(sample: &[f64], q: f64, delta: f64) -> Option<f64> {
    if !(q > 0.0 && q < 1.0 && delta > 0.0 && delta < 1.0) {
        return None;
    }
    let mut v: Vec<f64> = sample.iter().copied().filter(|x| !x.is_nan()).collect();
    let n = v.len();
    if n == 0 {
        return None;
    }
    v.sort_by(f64::total_cmp);
    // Upper tail P(Bin(n, q) ≥ k), accumulated from k = n downwards in log space.
    let (lq, l1q) = (q.ln(), (1.0 - q).ln());
    let mut log_pmf = n as f64 * lq; // P(Bin = n)
    let mut log_tail = log_pmf;
    let log_delta = delta.ln();
    if log_tail > log_delta {
        return None; // even the maximum does not bound it at this level
    }
    let mut k = n;
    while k > 1 {
        // pmf(k − 1) = pmf(k) · k / (n − k + 1) · (1 − q) / q
        log_pmf += (k as f64).ln() - ((n - k + 1) as f64).ln() + l1q - lq;
        let next = log_add(log_tail, log_pmf);
        if next > log_delta {
            break;
        }
        log_tail = next;
        k -= 1;
    }
    Some(v[k - 1])
}

fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    hi + (lo - hi).exp().ln_1p()
}

pub fn quantile(sample: &[f64], q: f64) -> Option<f64> {
    if !(0.0..=1.0).contains(&q) {
        return None;
    }
    let mut v: Vec<f64> = sample.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let h = (v.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    Some(v[lo] + (h - lo as f64) * (v[hi] - v[lo]))
}

fn check_rate(p0: f64) -> Result<(), StatsError> {
    if p0 > 0.0 && p0 < 1.0 {
        Ok(())
    } else {
        Err(StatsError::BadRate(p0))
    }
}

/// Beta(2, b) with mean `min(3·p0, (1+p0)/2)`.
fn default_prior(p0: f64) -> (f64, f64) {
    let a = 2.0;
    let mean = (3.0 * p0).min(0.5 * (1.0 + p0));
    (a, a * (1.0 - mean) / mean)
}

/// `ln M_n` given the prior normaliser.
fn ln_mixture(n: u64, k: u64, p0: f64, a: f64, b: f64, ln_prior_norm: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let kf = k as f64;
    let mf = (n - k) as f64;
    let ln_post = ln_beta(a + kf, b + mf) + ln_upper_tail(p0, a + kf, b + mf);
    let ln_null = kf * p0.ln() + mf * (-p0).ln_1p();
    ln_post - ln_prior_norm - ln_null
}

/// `ln(1 − I_{p0}(a, b))`, the log of the Beta(a, b) mass above `p0`, computed directly.
fn ln_upper_tail(p0: f64, a: f64, b: f64) -> f64 {
    // 1 − I_x(a, b) = I_{1−x}(b, a); pass 1 − x and x separately to keep precision.
    ln_ibeta(1.0 - p0, p0, b, a)
}

/// `ln sup_{q ≥ p0} L(q)` for `k` bad among `n`: `n · KL(k/n ‖ p0)`, 0 if `k/n ≤ p0`.
fn sup_log_lr(n: u64, k: u64, p0: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    n as f64 * kl_bernoulli(k as f64 / n as f64, p0)
}

/// Kullback–Leibler divergence KL(Bernoulli(p) ‖ Bernoulli(p0)) when `p > p0`, else 0.
fn kl_bernoulli(p: f64, p0: f64) -> f64 {
    if p <= p0 {
        return 0.0;
    }
    let mut d = p * (p / p0).ln();
    if p < 1.0 {
        d += (1.0 - p) * ((1.0 - p) / (1.0 - p0)).ln();
    }
    d
}

/// `ln Γ(x)` for `x > 0`: Stirling's series for `x ≥ 10`, the recurrence below.
fn ln_gamma(x: f64) -> f64 {
    debug_assert!(x > 0.0);
    let mut shift = 0.0;
    let mut x = x;
    while x < 10.0 {
        shift -= x.ln();
        x += 1.0;
    }
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    let series = inv
        * (1.0 / 12.0
            - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0 - inv2 * (1.0 / 1680.0 - inv2 / 1188.0))));
    shift + (x - 0.5) * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI).ln() + series
}

/// `ln B(a, b)`.
fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// `ln I_x(a, b)` (regularised incomplete beta), given `x` and `y = 1 − x`.
fn ln_ibeta(x: f64, y: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if y <= 0.0 {
        return 0.0;
    }
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_ibeta_front(x, y, a, b) + beta_cf(a, b, x).ln()
    } else {
        let other = ln_ibeta_front(y, x, b, a) + beta_cf(b, a, y).ln();
        (-other.exp()).ln_1p()
    }
}

/// `ln(x^a y^b / (a B(a, b)))`.
fn ln_ibeta_front(x: f64, y: f64, a: f64, b: f64) -> f64 {
    a * x.ln() + b * y.ln() - ln_beta(a, b) - a.ln()
}

/// Continued fraction for the incomplete beta function (modified Lentz), converging fast
/// for `x < (a + 1) / (a + b + 2)`.
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-15;
    let max_iter = 1000 + (20.0 * a.max(b).sqrt()) as usize;
    let qab = a + b;
    let qap = a + 1.0;
    let qam = a - 1.0;
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=max_iter {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

#[cfg(test)]
mod ucb_tests {
    use super::*;

    #[test]
    fn the_upper_bound_needs_enough_data_and_sits_above_the_point_estimate() {
        let small: Vec<f64> = (1..=50).map(f64::from).collect();
        assert_eq!(
            quantile_upper_bound(&small, 0.95, 0.05),
            None,
            "0.95^50 > 5 %"
        );
        let sample: Vec<f64> = (1..=200).map(f64::from).collect();
        let ub = quantile_upper_bound(&sample, 0.95, 0.05).unwrap();
        let point = quantile(&sample, 0.95).unwrap();
        assert!(ub > point && ub <= 200.0, "{ub} vs {point}");
        // Exactly n = 59 is the smallest p95 sample bounded at 5 %: by its maximum.
        let s59: Vec<f64> = (1..=59).map(f64::from).collect();
        assert_eq!(quantile_upper_bound(&s59, 0.95, 0.05), Some(59.0));
    }

    #[test]
    fn the_bound_covers_the_true_quantile_at_least_1_minus_delta_of_the_time() {
        // Uniform(0, 1): the true p95 is 0.95. Seeded, many repetitions.
        let mut state: u64 = 0x0123_4567_89ab_cdef;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        let (reps, n, delta) = (4000, 200, 0.05);
        let mut misses = 0;
        for _ in 0..reps {
            let sample: Vec<f64> = (0..n).map(|_| next()).collect();
            if quantile_upper_bound(&sample, 0.95, delta).unwrap() < 0.95 {
                misses += 1;
            }
        }
        let rate = misses as f64 / reps as f64;
        assert!(
            rate <= delta,
            "the bound missed the true p95 in {rate} of samples"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64: tiny, deterministic, good enough for simulation in tests.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in [0, 1).
        fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
        }

        fn normal(&mut self) -> f64 {
            let u1 = 1.0 - self.uniform();
            let u2 = self.uniform();
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }
    }

    /// Number of samples until the test fires, or None within `len` samples.
    fn run_stream(rng: &mut Rng, p: f64, p0: f64, alpha: f64, len: u64) -> Option<u64> {
        let mut t = RateTest::new(p0, alpha).unwrap();
        for _ in 0..len {
            t.observe(rng.uniform() < p);
            if t.rejected() {
                return t.rejected_at();
            }
        }
        None
    }

    fn false_alarm_rate(seed: u64, p: f64, p0: f64, alpha: f64) -> f64 {
        let mut rng = Rng(seed);
        let streams = 2_000;
        let alarms = (0..streams)
            .filter(|_| run_stream(&mut rng, p, p0, alpha, 20_000).is_some())
            .count();
        alarms as f64 / streams as f64
    }

    #[test]
    fn ln_gamma_and_beta_match_known_values() {
        assert!((ln_gamma(1.0)).abs() < 1e-13);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-13);
        assert!((ln_gamma(10.0) - 362_880f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(3.5) - (3.323_350_970_447_842_6_f64).ln()).abs() < 1e-13);
        assert!((ln_beta(2.0, 3.0) - (1.0f64 / 12.0).ln()).abs() < 1e-13);
    }

    #[test]
    fn incomplete_beta_matches_closed_forms() {
        // I_x(1, b) = 1 − (1 − x)^b; I_x(a, 1) = x^a.
        for &(x, b) in &[(0.1, 3.0), (0.5, 7.0), (0.9, 2.5), (0.001, 1000.0)] {
            let want = (1.0 - (1.0f64 - x).powf(b)).ln();
            assert!(
                (ln_ibeta(x, 1.0 - x, 1.0, b) - want).abs() < 1e-12,
                "{x} {b}"
            );
            let want = a_pow(x, b);
            assert!(
                (ln_ibeta(x, 1.0 - x, b, 1.0) - want).abs() < 1e-12,
                "{x} {b}"
            );
        }
        fn a_pow(x: f64, a: f64) -> f64 {
            a * x.ln()
        }
        // Symmetry I_{1/2}(a, a) = 1/2.
        assert!((ln_ibeta(0.5, 0.5, 40.0, 40.0) - 0.5f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn mixture_matches_numerical_integration() {
        let (p0, n, k) = (0.05, 200u64, 20u64);
        let t = {
            let mut t = RateTest::new(p0, 0.01).unwrap();
            t.observe_counts(n, k);
            t
        };
        let (a, b) = default_prior(p0);
        // Simpson's rule over [p0, 1].
        let steps = 200_000;
        let h = (1.0 - p0) / steps as f64;
        let f = |q: f64| {
            let lr = k as f64 * (q / p0).ln() + (n - k) as f64 * ((1.0 - q) / (1.0 - p0)).ln();
            let prior = (a - 1.0) * q.ln() + (b - 1.0) * (1.0 - q).ln() - ln_beta(a, b);
            if q >= 1.0 { 0.0 } else { (lr + prior).exp() }
        };
        let g = |q: f64| {
            let prior = (a - 1.0) * q.ln() + (b - 1.0) * (1.0 - q).ln() - ln_beta(a, b);
            if q >= 1.0 { 0.0 } else { prior.exp() }
        };
        let simpson = |f: &dyn Fn(f64) -> f64| {
            let mut s = f(p0) + f(1.0);
            for i in 1..steps {
                let w = if i % 2 == 1 { 4.0 } else { 2.0 };
                s += w * f(p0 + i as f64 * h);
            }
            s * h / 3.0
        };
        let want = (simpson(&f) / simpson(&g)).ln();
        assert!(
            (t.log_evidence() - want).abs() < 1e-6,
            "{} vs {want}",
            t.log_evidence()
        );
    }

    #[test]
    fn false_alarms_stay_below_alpha_at_the_boundary() {
        // p = p0 is the hardest null. 2,000 streams × 20,000 samples at α = 5 %.
        let alpha = 0.05;
        let rate = false_alarm_rate(1, 0.02, 0.02, alpha);
        println!("false-alarm rate at p = p0 = 2 %: {rate} (α = {alpha})");
        assert!(rate <= alpha, "{rate}");
    }

    #[test]
    fn false_alarms_stay_below_alpha_below_the_objective() {
        let alpha = 0.05;
        let rate = false_alarm_rate(2, 0.01, 0.02, alpha);
        println!("false-alarm rate at p = 1 %, p0 = 2 %: {rate} (α = {alpha})");
        assert!(rate <= alpha, "{rate}");
    }

    #[test]
    fn detects_regressions_and_bigger_ones_faster() {
        let p0 = 0.0025;
        let mut rng = Rng(3);
        let mut medians = Vec::new();
        for &p in &[0.005, 0.01, 0.05] {
            let mut times: Vec<u64> = (0..200)
                .map(|_| run_stream(&mut rng, p, p0, 0.01, 1_000_000).expect("detected"))
                .collect();
            times.sort_unstable();
            let median = times[times.len() / 2];
            println!("p = {p}: median samples to detect {median}");
            medians.push(median);
        }
        assert!(
            medians[0] > medians[1] && medians[1] > medians[2],
            "{medians:?}"
        );
        // Within 2× of Wald's SPRT told the true rate: ln(1/α) / KL(p ‖ p0) samples.
        let sprt = (100f64).ln() / kl_bernoulli(0.01, p0);
        assert!((medians[1] as f64) < 2.0 * sprt, "{} vs {sprt}", medians[1]);
    }

    #[test]
    fn numerical_edge_cases() {
        // k = 0 with huge n: evidence very negative but finite; never rejects.
        let mut t = RateTest::new(0.001, 0.01).unwrap();
        t.observe_counts(10_000_000, 0);
        let e = t.log_evidence();
        assert!(e.is_finite() && e < -10.0, "{e}");
        assert!(!t.rejected());
        assert_eq!(t.progress(), 0.0);
        assert_eq!(t.evidence().lower_bound, 0.0);

        // Huge n at exactly the objective: evidence stays modest (≈ −½ ln n + const).
        let mut t = RateTest::new(0.001, 0.01).unwrap();
        t.observe_counts(10_000_000, 10_000);
        let e = t.log_evidence();
        assert!(e.is_finite() && e < 2.0, "{e}");

        // Huge n clearly above: enormous evidence, finite, rejected, bound near the truth.
        let mut t = RateTest::new(0.001, 0.01).unwrap();
        t.observe_counts(10_000_000, 20_000);
        let ev = t.evidence();
        assert!(
            ev.log_evidence.is_finite() && ev.log_evidence > 1000.0,
            "{ev:?}"
        );
        assert!(ev.rejected);
        assert!(ev.lower_bound > 0.0019 && ev.lower_bound < 0.002, "{ev:?}");

        // Tiny objective, first request fails: one failure is not enough evidence.
        let mut t = RateTest::new(0.001, 0.01).unwrap();
        t.observe(true);
        assert!(t.log_evidence().is_finite());
        assert!(!t.rejected());
        // A run of failures is.
        for _ in 0..5 {
            t.observe(true);
        }
        assert!(t.rejected());
        assert_eq!(t.progress(), 1.0);

        // All requests fail, large n: no NaN.
        let mut t = RateTest::new(0.3, 0.01).unwrap();
        t.observe_counts(1_000_000, 1_000_000);
        assert!(t.log_evidence().is_finite() && t.rejected());

        // Sticky: good requests afterwards do not undo a rejection.
        t.observe_counts(10_000_000, 0);
        assert!(t.rejected());

        assert!(RateTest::new(0.0, 0.01).is_err());
        assert!(RateTest::new(0.1, 1.0).is_err());
        assert!(QuantileTest::new(-1.0, 0.95, 0.3, 0.01).is_err());
    }

    #[test]
    fn fast_path_decides_like_exact_evaluation_after_every_request() {
        let mut rng = Rng(5);
        for stream in 0..300 {
            let p = [0.02, 0.025, 0.03][stream % 3];
            let mut fast = RateTest::new(0.02, 0.05).unwrap();
            let mut exact_at = None;
            for i in 1..=5_000u64 {
                fast.observe(rng.uniform() < p);
                if exact_at.is_none() && fast.log_evidence() >= fast.threshold() {
                    exact_at = Some(i);
                }
            }
            assert_eq!(fast.rejected_at(), exact_at, "stream {stream}");
        }
    }

    #[test]
    fn evidence_serializes() {
        let mut t = RateTest::new(0.0025, 0.01).unwrap();
        t.observe_counts(5000, 40);
        let ev = t.evidence();
        assert!(ev.lower_bound > 0.0025 && ev.lower_bound < 0.008, "{ev:?}");
        let json = serde_json::to_string(&ev).unwrap();
        assert!(json.contains("\"log_evidence\""));
        assert!(json.contains("\"lower_bound\""));
    }

    #[test]
    fn quantile_test_false_alarms_and_detection() {
        let (mu, sigma) = (50f64.ln(), 0.6);
        let mut rng = Rng(4);
        let baseline: Vec<f64> = (0..20_000)
            .map(|_| (mu + sigma * rng.normal()).exp())
            .collect();
        let p95 = quantile(&baseline, 0.95).unwrap();
        let alpha = 0.05;
        let run = |rng: &mut Rng, scale: f64, len: usize| {
            let mut t = QuantileTest::new(p95, 0.95, 0.3, alpha).unwrap();
            for _ in 0..len {
                t.observe(scale * (mu + sigma * rng.normal()).exp());
                if t.rejected() {
                    return t.rejected_at();
                }
            }
            None
        };
        // No regression: 1,000 streams × 20,000 latencies.
        let streams = 1_000;
        let alarms = (0..streams)
            .filter(|_| run(&mut rng, 1.0, 20_000).is_some())
            .count();
        let rate = alarms as f64 / streams as f64;
        println!("QuantileTest false-alarm rate, no regression: {rate} (α = {alpha})");
        assert!(rate <= alpha, "{rate}");
        // +100 %: detected, quickly.
        let mut times: Vec<u64> = (0..200)
            .map(|_| run(&mut rng, 2.0, 100_000).expect("detected"))
            .collect();
        times.sort_unstable();
        println!(
            "QuantileTest +100 %: median samples to detect {}",
            times[100]
        );
        assert!(times[100] < 200);
    }

    #[test]
    fn quantile_helper_and_consecutive() {
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0, 5.0], 0.5), Some(3.0));
        assert_eq!(quantile(&[1.0, 2.0], 0.5), Some(1.5));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[1.0], 1.5), None);

        let mut c = Consecutive::new(3);
        assert!(!c.observe(false));
        assert!(!c.observe(false));
        assert!(!c.observe(true));
        assert!(!c.observe(false));
        assert!(!c.observe(false));
        assert!(c.observe(false));
        assert!(c.observe(true), "sticky");
    }
}
