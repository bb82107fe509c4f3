//! Keeps secrets out of everything rewind writes: journal output, audit details, printed
//! messages and `--json`. A secret is the value of an environment variable whose name says it
//! is one (TOKEN, SECRET, PASSWORD …), a variable named in the config's `secret-env`, a value
//! declared in the config's `[secrets]`, or found by its shape whatever it is: the password
//! part of any URL (`scheme://user:password@host`), a `password=` parameter, the credential of
//! an `Authorization:` header.
//!
//! The binary applies one [`Redactor`] at its two exits: the printer (everything shown, text
//! and `--json`) and the state store (everything recorded).

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

    /// Adds one secret value found by a rule (a variable's name, a URL's password). Very short
    /// values are ignored: masking "1" everywhere would destroy the output and protect nothing.
    pub fn add(&mut self, value: impl Into<String>) {
        let v = value.into();
        if v.len() >= 4 {
            self.add_declared(v);
        }
    }

    /// Adds a value the user declared secret: masked whatever its length. Its percent-encoded
    /// form (as it is written inside a URL) is masked too.
    pub fn add_declared(&mut self, value: impl Into<String>) {
        let v = value.into();
        if v.is_empty() {
            return;
        }
        let encoded = percent_encode(&v);
        for v in [v, encoded] {
            if !self.secrets.contains(&v) {
                self.secrets.push(v);
            }
        }
        // Longest first, so a secret that contains another is masked whole.
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// How many values it knows (a value and its encoded form count once each).
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
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

    /// A JSON value with every string in it (object keys too) redacted.
    pub fn redact_json(&self, value: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::String(s) => Value::String(self.redact(s)),
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| self.redact_json(v)).collect())
            }
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (self.redact(k), self.redact_json(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// `value` as it is written inside a URL: everything but the unreserved characters of RFC 3986
/// percent-encoded.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Replaces the password in every `scheme://user:password@` in `text`, the value of every
/// `password=` parameter and the credential of every `Authorization:` header.
pub fn redact_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#', whitespace or quote.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '`') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match (authority.rfind('@'), authority.find(':')) {
            // `{secret:NAME}` is a reference (crate::secret), not the secret: it may show.
            (Some(at), Some(colon)) if colon < at && !is_reference(&authority[colon + 1..at]) => {
                out.push_str(&authority[..=colon]);
                out.push_str(MASK);
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    mask_authorization(&mask_password_params(&out))
}

/// The password of every `scheme://user:password@host` in `text`, as written (so still
/// percent-encoded).
pub fn url_passwords(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let tail = &rest[pos + 3..];
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '`') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        if let (Some(at), Some(colon)) = (authority.rfind('@'), authority.find(':'))
            && colon < at
            && colon + 1 < at
        {
            out.push(authority[colon + 1..at].to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// Is `text` exactly one `{secret:NAME}` reference?
fn is_reference(text: &str) -> bool {
    text.strip_prefix(crate::secret::REF_OPEN)
        .and_then(|t| t.strip_suffix('}'))
        .is_some_and(crate::secret::valid_name)
}

/// Masks the credential of `Authorization: Bearer …` / `Basic …` / `Token …` (and of a bare
/// `Authorization: …`) as written in a `curl -H` or a header dump.
fn mask_authorization(text: &str) -> String {
    const KEY: &str = "authorization:";
    let lower = text.to_ascii_lowercase();
    if !lower.contains(KEY) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(found) = lower[at..].find(KEY) {
        let start = at + found + KEY.len();
        out.push_str(&text[at..start]);
        let rest = &text[start..];
        let spaces = rest.len() - rest.trim_start_matches([' ', '\t']).len();
        let mut cred_at = start + spaces;
        // A scheme word first (Bearer, Basic, Token …), when another word follows it.
        let word_len = text[cred_at..]
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '-')
            .unwrap_or(text.len() - cred_at);
        let after_word = &text[cred_at + word_len..];
        if word_len > 0
            && after_word.starts_with([' ', '\t'])
            && after_word
                .trim_start_matches([' ', '\t'])
                .starts_with(|c: char| !matches!(c, '"' | '\'' | '\n' | '\r'))
        {
            let gap = after_word.len() - after_word.trim_start_matches([' ', '\t']).len();
            cred_at += word_len + gap;
        }
        let cred_len = text[cred_at..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`'))
            .unwrap_or(text.len() - cred_at);
        out.push_str(&text[start..cred_at]);
        if is_reference(&text[cred_at..cred_at + cred_len]) {
            out.push_str(&text[cred_at..cred_at + cred_len]);
        } else if cred_len > 0 {
            out.push_str(MASK);
        }
        at = cred_at + cred_len;
    }
    out.push_str(&text[at..]);
    out
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
    fn url_passwords_are_found() {
        assert_eq!(
            url_passwords("curl https://bot:p%40ss@h/x && psql postgres://u@h/d 'a://:t@h'"),
            ["p%40ss", "t"]
        );
    }

    #[test]
    fn authorization_headers_are_masked() {
        assert_eq!(
            redact_url_passwords("curl -H 'Authorization: Bearer abc.def-123' https://h/x"),
            "curl -H 'Authorization: Bearer ***' https://h/x"
        );
        assert_eq!(
            redact_url_passwords("curl -H \"authorization:Basic dXNlcjpwdw==\" -d x"),
            "curl -H \"authorization:Basic ***\" -d x"
        );
        assert_eq!(
            redact_url_passwords("Authorization: s3cr3t-token\nnext"),
            "Authorization: ***\nnext"
        );
        assert_eq!(
            redact_url_passwords("the Authorization: header"),
            "the Authorization: ***"
        );
        assert_eq!(redact_url_passwords("no header here"), "no header here");
        assert_eq!(
            redact_url_passwords("-H 'Authorization: Bearer {secret:hook}' x"),
            "-H 'Authorization: Bearer {secret:hook}' x"
        );
    }

    #[test]
    fn url_passwords_end_at_the_authority() {
        assert_eq!(
            redact_url_passwords("https://bot:pa)ss@hooks.example/x#frag"),
            "https://bot:***@hooks.example/x#frag"
        );
        assert_eq!(
            redact_url_passwords("`https://bot:pw@h`"),
            "`https://bot:***@h`"
        );
        assert_eq!(redact_url_passwords("https://h/#a:b@c"), "https://h/#a:b@c");
        assert_eq!(
            redact_url_passwords("postgres://app:{secret:db-pw}@db/app"),
            "postgres://app:{secret:db-pw}@db/app"
        );
    }

    #[test]
    fn declared_values_are_masked_whatever_their_length_and_encoded() {
        let mut r = Redactor::default();
        r.add("ab");
        assert_eq!(r.redact("ab"), "ab");
        r.add_declared("ab");
        assert_eq!(r.redact("xaby"), "x***y");
        r.add_declared("p@ss w");
        assert_eq!(r.redact("p@ss w and p%40ss%20w"), "*** and ***");
    }

    #[test]
    fn json_strings_and_keys_are_redacted() {
        let mut r = Redactor::default();
        r.add("tok-1234");
        let v = serde_json::json!({"a": ["x tok-1234", 3, null], "tok-1234": {"u": "postgres://u:pw@h/d"}});
        assert_eq!(
            r.redact_json(&v),
            serde_json::json!({"a": ["x ***", 3, null], "***": {"u": "postgres://u:***@h/d"}})
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
