//! Keeps secrets out of everything rewind writes: journal output, audit details, printed
//! messages and `--json`. A secret is the value of an environment variable whose name says it
//! is one (TOKEN, SECRET, PASSWORD …), a variable named in the config's `secret-env`, or the
//! password part of any URL (`scheme://user:password@host`).

/// Replacement text for a hidden value.
pub const MASK: &str = "***";

const SECRET_NAME_PARTS: &[&str] = &[
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "PASS",
    "API_KEY",
    "APIKEY",
    "PRIVATE_KEY",
    "CREDENTIAL",
    "AUTH",
    "WEBHOOK",
    "DATABASE_URL",
    "DSN",
];

/// Does an environment variable's name say its value is secret?
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_NAME_PARTS.iter().any(|p| upper.contains(p))
}

/// Hides known secret values and URL passwords in text.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// Collects secrets from the process environment, plus the variables named in `extra`.
    pub fn from_env(extra: &[String]) -> Self {
        let mut r = Redactor::default();
        for (name, value) in std::env::vars() {
            if is_secret_name(&name) || extra.iter().any(|e| e == &name) {
                r.add(value);
            }
        }
        r
    }

    /// Adds one secret value. Very short values are ignored: masking "1" everywhere would
    /// destroy the output and protect nothing.
    pub fn add(&mut self, value: impl Into<String>) {
        let v = value.into();
        if v.len() >= 4 && !self.secrets.contains(&v) {
            self.secrets.push(v);
            // Longest first, so a secret that contains another is masked whole.
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// Returns `text` with every secret and URL password replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = redact_url_passwords(text);
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), MASK);
            }
        }
        out
    }
}

/// Replaces the password in every `scheme://user:password@` in `text`.
pub fn redact_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', whitespace or quote.
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..=colon]);
                out.push_str(MASK);
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    mask_password_params(&out)
}

/// Masks the value of `password=` (and `sslpassword=`) in URL query strings and connection
/// strings: `?password=s3cret&…` → `?password=***&…`.
fn mask_password_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let lower = rest.to_ascii_lowercase();
        let Some(at) = lower.find("password=") else {
            out.push_str(rest);
            return out;
        };
        // Only as a parameter: after `?`, `&`, `;`, whitespace, a quote, or `ssl`.
        let before = lower[..at].chars().last();
        let is_param = at == 0
            || matches!(before, Some('?' | '&' | ';' | ' ' | '\t' | '"' | '\''))
            || lower[..at].ends_with("ssl");
        let value_at = at + "password=".len();
        out.push_str(&rest[..value_at]);
        rest = &rest[value_at..];
        if is_param {
            let end = rest
                .find(|c: char| {
                    c == '&' || c == ';' || c.is_whitespace() || c == '"' || c == '\'' || c == '#'
                })
                .unwrap_or(rest.len());
            if end > 0 {
                out.push_str(MASK);
            }
            rest = &rest[end..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_parameters_are_masked() {
        assert_eq!(
            redact_url_passwords(
                "cannot connect to postgres://u@h/db?sslmode=disable&password=Zq7-SECRET&x=1"
            ),
            "cannot connect to postgres://u@h/db?sslmode=disable&password=***&x=1"
        );
        assert_eq!(
            redact_url_passwords("host=h password=s3cret dbname=x"),
            "host=h password=*** dbname=x"
        );
        assert_eq!(
            redact_url_passwords("reset the password= field"),
            "reset the password= field"
        );
    }

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(
            redact_url_passwords("connect postgres://rewind:s3cr3t@db:5432/x now"),
            "connect postgres://rewind:***@db:5432/x now"
        );
        assert_eq!(
            redact_url_passwords("http://host:8080/health"),
            "http://host:8080/health"
        );
        assert_eq!(
            redact_url_passwords("a://u@h b://u:p@h"),
            "a://u@h b://u:***@h"
        );
    }

    #[test]
    fn known_values_are_masked_longest_first() {
        let mut r = Redactor::default();
        r.add("abcd");
        r.add("abcdefgh");
        r.add("x");
        assert_eq!(r.redact("t=abcdefgh u=abcd v=x"), "t=*** u=*** v=x");
    }

    #[test]
    fn secret_names() {
        assert!(is_secret_name("VERCEL_TOKEN"));
        assert!(is_secret_name("pgpassword"));
        assert!(!is_secret_name("HOME"));
    }
}
