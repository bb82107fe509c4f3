//! Durations and percentages written the way people write them: `"30s"`, `"1h30m"`,
//! `"500ms"`, `"99.9%"`.

use std::fmt;
use std::time::Duration;

/// Why a duration or percentage could not be read. The message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(pub String);

const UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parses `"30s"`, `"5m"`, `"1h30m"`, `"1.5h"`, `"500ms"`, `"2d"`. Whitespace between parts is
/// allowed. A bare number is refused: "30" could mean seconds or minutes.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(UnitError(
            "empty duration; write a number and a unit, like \"30s\", \"5m\" or \"1h\"".into(),
        ));
    }
    let mut total_ms: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return Err(UnitError(format!(
                "`{text}` is not a duration; write a number and a unit, like \"30s\", \"5m\", \"1h30m\""
            )));
        }
        let number: f64 = rest[..num_end].parse().map_err(|_| {
            UnitError(format!(
                "`{}` in `{text}` is not a number",
                &rest[..num_end]
            ))
        })?;
        rest = rest[num_end..].trim_start();
        let unit_end = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        if unit.is_empty() {
            return Err(UnitError(format!(
                "`{text}` has no unit; write \"{}s\" for seconds or \"{}m\" for minutes",
                &text.trim(),
                &text.trim()
            )));
        }
        let factor = match unit {
            "ms" | "msec" => 1,
            "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
            "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000,
            "d" | "day" | "days" => 86_400_000,
            other => {
                return Err(UnitError(format!(
                    "unknown unit `{other}` in `{text}`; use ms, s, m, h or d (\"30s\", \"5m\", \"1h\")"
                )));
            }
        };
        total_ms += number * factor as f64;
        rest = &rest[unit_end..];
    }
    if !total_ms.is_finite() || total_ms > 1e15 {
        return Err(UnitError(format!("`{text}` is too long a duration")));
    }
    Ok(Duration::from_micros((total_ms * 1000.0).round() as u64))
}

/// Writes a duration back in the shortest exact form (`"1h30m"`, `"250ms"`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis() as u64;
    if ms == 0 {
        return if d.is_zero() {
            "0s".into()
        } else {
            format!("{}us", d.as_micros())
        };
    }
    let mut out = String::new();
    for (unit, factor) in UNITS.iter().rev() {
        if ms >= *factor {
            let n = ms / factor;
            ms %= factor;
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// A percentage, kept as a fraction (`"99.9%"` → 0.999).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Percent(pub f64);

impl Percent {
    pub fn fraction(self) -> f64 {
        self.0
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.0 * 100.0;
        let s = format!("{p:.6}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        write!(f, "{s}%")
    }
}

/// Parses `"99.9%"`, `"1%"`, `"0.5 %"`. The `%` sign is required, so that 1 and 1 % are never
/// confused; values must lie in 0–100 %.
pub fn parse_percent(text: &str) -> Result<Percent, UnitError> {
    let p = parse_percent_above_100(text)?;
    if p.0 > 1.0 {
        return Err(UnitError(format!("`{text}` is outside 0%–100%")));
    }
    Ok(p)
}

/// Like [`parse_percent`], but values above 100 % are allowed too: a growth of `"150%"` is
/// one and a half times as much again.
pub fn parse_percent_above_100(text: &str) -> Result<Percent, UnitError> {
    let s = text.trim();
    let Some(num) = s.strip_suffix('%') else {
        return Err(UnitError(format!(
            "`{text}` is not a percentage; write it with a % sign, like \"99.9%\" or \"1%\""
        )));
    };
    let value: f64 = num.trim().parse().map_err(|_| {
        UnitError(format!(
            "`{text}` is not a percentage; write a number and a % sign, like \"99.9%\""
        ))
    })?;
    if !value.is_finite() || value < 0.0 {
        return Err(UnitError(format!(
            "`{text}` is not a percentage of 0% or more"
        )));
    }
    // "99.9e-2" reads as the double closest to 0.999, which 99.9 / 100.0 is not.
    let fraction = format!("{}e-2", num.trim())
        .parse()
        .unwrap_or(value / 100.0);
    Ok(Percent(fraction))
}

/// Serde support for durations stored as their written form (`"30s"`).
pub mod serde_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde support for optional durations.
pub mod serde_opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => super::parse_duration(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_the_way_people_write_them() {
        let cases = [
            ("30s", 30_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("1h 30m", 5_400_000),
            ("1.5h", 5_400_000),
            ("500ms", 500),
            ("2d", 172_800_000),
            ("90 seconds", 90_000),
            ("5min", 300_000),
        ];
        for (text, ms) in cases {
            assert_eq!(
                parse_duration(text).unwrap(),
                Duration::from_millis(ms),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_durations_say_what_to_write() {
        for bad in ["30", "", "thirty", "5 parsecs", "1h5"] {
            let err = parse_duration(bad).unwrap_err().0;
            assert!(
                err.contains("\"30s\"") || err.contains("unit") || err.contains("30s"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn durations_format_back() {
        for text in ["30s", "1h30m", "250ms", "2d", "1h1m1s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn percentages() {
        assert!((parse_percent("99.9%").unwrap().fraction() - 0.999).abs() < 1e-12);
        assert!((parse_percent("1 %").unwrap().fraction() - 0.01).abs() < 1e-12);
        assert_eq!(parse_percent("99.9%").unwrap().fraction(), 0.999);
        assert_eq!(parse_percent("0.5%").unwrap().fraction(), 0.005);
        assert_eq!(parse_percent("99.9%").unwrap().to_string(), "99.9%");
        assert!(parse_percent("99.9").is_err());
        assert!(parse_percent("150%").is_err());
        assert!(parse_percent("abc%").is_err());
        assert!((parse_percent_above_100("150%").unwrap().fraction() - 1.5).abs() < 1e-12);
        assert!(parse_percent_above_100("-5%").is_err());
        assert!(parse_percent_above_100("inf%").is_err());
    }
}
