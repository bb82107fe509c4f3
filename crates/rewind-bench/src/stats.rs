//! Summary statistics over wall times in milliseconds.

pub struct Summary {
    pub runs: usize,
    pub median: f64,
    pub p90: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// Median (mean of the two middle values for an even count), p90 by nearest rank
    /// (the ceil(0.9·n)-th smallest), min and max. `samples` must not be empty.
    pub fn of(samples: &[f64]) -> Summary {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        let rank = (0.9 * n as f64).ceil() as usize;
        Summary {
            runs: n,
            median,
            p90: s[rank.clamp(1, n) - 1],
            min: s[0],
            max: s[n - 1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Summary;

    #[test]
    fn odd_and_even_counts() {
        let s = Summary::of(&[5.0, 1.0, 3.0]);
        assert_eq!((s.median, s.min, s.max, s.p90), (3.0, 1.0, 5.0, 5.0));
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!(s.median, 2.5);
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(Summary::of(&ten).p90, 9.0);
        assert_eq!(Summary::of(&[7.0]).p90, 7.0);
    }
}
