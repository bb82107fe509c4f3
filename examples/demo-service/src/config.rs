//! `demo.toml`: how the release in a directory behaves.

use std::path::Path;

/// The behaviour of one release, read from `<dir>/demo.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Behaviour {
    /// Reported in `X-Release`, `/health` and metric labels.
    pub version: String,
    /// Share of `/checkout` requests answered 500, in `0..=1`.
    pub error_rate: f64,
    /// `/checkout` latency is multiplied by `1 + slowdown`.
    pub slowdown: f64,
    /// Median `/checkout` latency before the slowdown, in milliseconds.
    pub base_latency_ms: f64,
    /// The release refuses to start.
    pub fail_start: bool,
    /// `/checkout` always answers 500 while `/health` stays 200.
    pub checkout_broken: bool,
}

impl Behaviour {
    fn defaults(version: String) -> Self {
        Behaviour {
            version,
            error_rate: 0.0,
            slowdown: 0.0,
            base_latency_ms: 20.0,
            fail_start: false,
            checkout_broken: false,
        }
    }
}

const KEYS: &[&str] = &[
    "version",
    "error-rate",
    "slowdown",
    "base-latency-ms",
    "fail-start",
    "checkout-broken",
];

/// Reads `<dir>/demo.toml`. A missing file means every default; `default_version`
/// is used when the file does not set `version`. Errors name the file and the key.
pub fn load(dir: &Path, default_version: &str) -> Result<Behaviour, String> {
    let file = dir.join("demo.toml");
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Behaviour::defaults(default_version.to_string()));
        }
        Err(e) => return Err(format!("{}: cannot read: {e}", file.display())),
    };
    parse(&text, default_version).map_err(|msg| format!("{}: {msg}", file.display()))
}

/// Parses the text of a `demo.toml`; errors do not yet name the file.
pub fn parse(text: &str, default_version: &str) -> Result<Behaviour, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("not valid TOML: {}", e.message().trim_end()))?;
    for key in table.keys() {
        if !KEYS.contains(&key.as_str()) {
            return Err(format!(
                "unknown key `{key}` (known keys: {})",
                KEYS.join(", ")
            ));
        }
    }
    let mut b = Behaviour::defaults(default_version.to_string());
    if let Some(v) = table.get("version") {
        let s = v
            .as_str()
            .ok_or_else(|| format!("key `version` must be a string, found {}", v.type_str()))?;
        if s.trim().is_empty() {
            return Err("key `version` must not be empty".to_string());
        }
        b.version = s.to_string();
    }
    if let Some(v) = table.get("error-rate") {
        b.error_rate = number(v, "error-rate")?;
        if !(0.0..=1.0).contains(&b.error_rate) {
            return Err(format!(
                "key `error-rate` must be between 0 and 1, found {}",
                b.error_rate
            ));
        }
    }
    if let Some(v) = table.get("slowdown") {
        b.slowdown = non_negative(v, "slowdown")?;
    }
    if let Some(v) = table.get("base-latency-ms") {
        b.base_latency_ms = non_negative(v, "base-latency-ms")?;
        if b.base_latency_ms > 60_000.0 {
            return Err(format!(
                "key `base-latency-ms` must be at most 60000, found {}",
                b.base_latency_ms
            ));
        }
    }
    if let Some(v) = table.get("fail-start") {
        b.fail_start = boolean(v, "fail-start")?;
    }
    if let Some(v) = table.get("checkout-broken") {
        b.checkout_broken = boolean(v, "checkout-broken")?;
    }
    Ok(b)
}

fn number(v: &toml::Value, key: &str) -> Result<f64, String> {
    let n = match v {
        toml::Value::Float(f) => *f,
        toml::Value::Integer(i) => *i as f64,
        other => {
            return Err(format!(
                "key `{key}` must be a number, found {}",
                other.type_str()
            ));
        }
    };
    if n.is_finite() {
        Ok(n)
    } else {
        Err(format!("key `{key}` must be a finite number, found {n}"))
    }
}

fn non_negative(v: &toml::Value, key: &str) -> Result<f64, String> {
    let n = number(v, key)?;
    if n < 0.0 {
        return Err(format!("key `{key}` must not be negative, found {n}"));
    }
    Ok(n)
}

fn boolean(v: &toml::Value, key: &str) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("key `{key}` must be true or false, found {}", v.type_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let b = parse("", "v1").unwrap();
        assert_eq!(b, Behaviour::defaults("v1".into()));
        assert_eq!(b.base_latency_ms, 20.0);
    }

    #[test]
    fn every_key() {
        let b = parse(
            "version = \"v2\"\nerror-rate = 0.05\nslowdown = 0.5\nbase-latency-ms = 30\n\
             fail-start = true\ncheckout-broken = true\n",
            "dir",
        )
        .unwrap();
        assert_eq!(b.version, "v2");
        assert_eq!(b.error_rate, 0.05);
        assert_eq!(b.slowdown, 0.5);
        assert_eq!(b.base_latency_ms, 30.0);
        assert!(b.fail_start && b.checkout_broken);
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("error-rate = 1.5", "error-rate"),
            ("error-rate = \"high\"", "error-rate"),
            ("slowdown = -1", "slowdown"),
            ("base-latency-ms = true", "base-latency-ms"),
            ("fail-start = 1", "fail-start"),
            ("checkout-broken = \"yes\"", "checkout-broken"),
            ("version = 2", "version"),
            ("eror-rate = 0.1", "eror-rate"),
        ] {
            let err = parse(text, "v").unwrap_err();
            assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
        }
        assert!(parse("error-rate = ", "v").unwrap_err().contains("TOML"));
    }
}
