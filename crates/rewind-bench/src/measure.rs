//! The measurement loop and the comparison table shared by the database benchmarks.
//!
//! Every contender gets an untimed `prepare` (put the database back in the state the
//! operation starts from), a timed `run`, and an untimed `verify` (the operation really did
//! its work). One unmeasured warm-up round comes first; after it the order rotates every
//! round (AB, BA, … or ABC, BCA, CAB, …), so each contender runs equally often in each
//! position and a slow disk moment is not always charged to the same one.

use std::time::{Duration, Instant};

use crate::stats::Summary;

/// rewind's median may be at most this many times the native floor's.
pub const GOAL: f64 = 1.1;

type Step<'a> = Box<dyn FnMut() -> Result<(), String> + 'a>;

pub struct Contender<'a> {
    pub label: String,
    pub prepare: Step<'a>,
    pub run: Step<'a>,
    pub verify: Step<'a>,
}

impl<'a> Contender<'a> {
    pub fn new(label: impl Into<String>, run: impl FnMut() -> Result<(), String> + 'a) -> Self {
        Contender {
            label: label.into(),
            prepare: Box::new(|| Ok(())),
            run: Box::new(run),
            verify: Box::new(|| Ok(())),
        }
    }

    pub fn prepare(mut self, f: impl FnMut() -> Result<(), String> + 'a) -> Self {
        self.prepare = Box::new(f);
        self
    }

    pub fn verify(mut self, f: impl FnMut() -> Result<(), String> + 'a) -> Self {
        self.verify = Box::new(f);
        self
    }
}

/// The order of the contenders in `round`: a rotation by the round number.
pub fn order(n: usize, round: usize) -> Vec<usize> {
    (0..n).map(|i| (i + round) % n).collect()
}

/// Runs one warm-up round and `runs` measured rounds; the wall times in milliseconds, one
/// vector per contender (in the order given).
pub fn measure(contenders: &mut [Contender<'_>], runs: usize) -> Result<Vec<Vec<f64>>, String> {
    let mut samples = vec![Vec::with_capacity(runs); contenders.len()];
    for round in 0..=runs {
        let mut line = Vec::new();
        for i in order(contenders.len(), round) {
            let c = &mut contenders[i];
            (c.prepare)().map_err(|e| format!("preparing {}: {e}", c.label))?;
            let start = Instant::now();
            (c.run)().map_err(|e| format!("{}: {e}", c.label))?;
            let took = start.elapsed();
            (c.verify)().map_err(|e| format!("after {}: {e}", c.label))?;
            let ms = ms(took);
            line.push(format!("{} {ms:.1} ms", c.label));
            if round > 0 {
                samples[i].push(ms);
            }
        }
        if round == 0 {
            eprintln!("warm-up: {}", line.join(", "));
        } else {
            eprintln!("run {round}/{runs}: {}", line.join(", "));
        }
    }
    Ok(samples)
}

/// The machine's load average (1, 5, 15 min) from `/proc/loadavg`, to print beside the
/// numbers: other work on the machine makes them noisy.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One line of the comparison table: rewind against one floor.
pub struct Row {
    /// The first column (e.g. the number of migrations).
    pub key: String,
    pub floor: String,
    pub rewind: Summary,
    pub floor_times: Summary,
}

impl Row {
    pub fn ratio(&self) -> f64 {
        self.rewind.median / self.floor_times.median
    }
}

/// Prints the markdown table, then one goal line per row.
pub fn print_table(key_header: &str, rows: &[Row]) {
    print_table_with_goal(key_header, rows, GOAL)
}

/// [`print_table`] against another goal.
pub fn print_table_with_goal(key_header: &str, rows: &[Row], goal: f64) {
    println!(
        "| {key_header} | floor | runs | rewind median ms | floor median ms | rewind/floor | rewind min–max ms | floor min–max ms |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {:.2}× | {}–{} | {}–{} |",
            r.key,
            r.floor,
            r.rewind.runs,
            fmt_ms(r.rewind.median),
            fmt_ms(r.floor_times.median),
            r.ratio(),
            fmt_ms(r.rewind.min),
            fmt_ms(r.rewind.max),
            fmt_ms(r.floor_times.min),
            fmt_ms(r.floor_times.max),
        );
    }
    println!();
    for r in rows {
        println!(
            "Goal ≤ {goal}× ({}, {}): {:.2}× — {}",
            r.key,
            r.floor,
            r.ratio(),
            if r.ratio() <= goal { "met" } else { "NOT met" }
        );
    }
}

/// Milliseconds with three significant digits at least (0.123, 12.3, 1234).
pub fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn rotation_puts_each_contender_in_each_position() {
        assert_eq!(order(2, 0), vec![0, 1]);
        assert_eq!(order(2, 1), vec![1, 0]);
        let mut firsts = [0; 3];
        for round in 1..=6 {
            firsts[order(3, round)[0]] += 1;
        }
        assert_eq!(firsts, [2, 2, 2]);
    }

    #[test]
    fn warm_up_is_not_counted_and_steps_run_in_order() {
        let log = RefCell::new(Vec::new());
        let mut cs = vec![
            Contender::new("a", || {
                log.borrow_mut().push("run a");
                Ok(())
            })
            .prepare(|| {
                log.borrow_mut().push("prepare a");
                Ok(())
            })
            .verify(|| {
                log.borrow_mut().push("verify a");
                Ok(())
            }),
            Contender::new("b", || {
                log.borrow_mut().push("run b");
                Ok(())
            }),
        ];
        let samples = measure(&mut cs, 3).unwrap();
        assert_eq!(samples.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3]);
        drop(cs);
        let log = log.into_inner();
        assert_eq!(&log[..4], ["prepare a", "run a", "verify a", "run b"]);
        // Round 1 starts with b.
        assert_eq!(log[4], "run b");
    }

    #[test]
    fn a_failing_run_names_the_contender() {
        let mut cs = vec![Contender::new("psql floor", || Err("boom".into()))];
        assert_eq!(measure(&mut cs, 1).unwrap_err(), "psql floor: boom");
    }

    #[test]
    fn milliseconds_keep_three_digits() {
        assert_eq!(fmt_ms(0.1234), "0.123");
        assert_eq!(fmt_ms(1.234), "1.23");
        assert_eq!(fmt_ms(12.34), "12.3");
        assert_eq!(fmt_ms(1234.4), "1234");
    }
}
