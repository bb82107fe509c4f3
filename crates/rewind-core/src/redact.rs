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

    /// Adds a value the user declared secret (see [`MIN_DECLARED_LEN`]: shorter values are
    /// refused where they are read). Its encoded forms are masked too: percent-encoded with
    /// upper- and lower-case hex (as written inside a URL) and form-encoded (`+` for a space).
    pub fn add_declared(&mut self, value: impl Into<String>) {
        let v = value.into();
        if v.is_empty() {
            return;
        }
        let upper = percent_encode(&v);
        let lower = lowercase_hex(&upper);
        let form = percent_encode(&v.replace(' ', "\u{1}")).replace("%01", "+");
        for v in [v, upper, lower, form] {
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
    ///
    /// Known values go first, whole: a rule that finds a password by its shape (a URL's
    /// `user:password@`) could otherwise cut a known value at a character it holds (an `@`)
    /// and leave the rest of it in the clear.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), MASK);
            }
        }
        redact_url_passwords(&out)
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

/// The shortest value `[secrets]` accepts, in bytes. Every occurrence of a secret is masked in
/// what rewind prints and stores; a shorter value ("e", "1", "30s") would mask ordinary words
/// and numbers everywhere and protect nothing.
pub const MIN_DECLARED_LEN: usize = 4;

/// `text` with its `%XX` escapes decoded (as a URL's user information is read); an escape
/// that is not two hex digits is kept as written, and bytes that are not UTF-8 become U+FFFD.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(h) = text.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(h, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `%2f` for `%2F`: the same escape with lower-case hex digits.
fn lowercase_hex(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut chars = encoded.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            for h in chars.by_ref().take(2) {
                out.push(h.to_ascii_lowercase());
            }
        }
    }
    out
}

/// `value` as it is written inside a URL: everything but the unreserved characters of RFC 3986
/// percent-encoded.
pub(crate) fn percent_encode(value: &str) -> String {
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

/// Where the password of a URL is, in `token`: the text after `scheme://` up to the first
/// whitespace or quote. The password runs from the first `:` of the authority to the *last*
/// `@` of the token, so that a password holding `/`, `?`, `#` or `@` is found whole; a
/// `host:port` followed by an `@` in the path is no password.
fn password_range(token: &str) -> Option<std::ops::Range<usize>> {
    let authority_end = token.find(['/', '?', '#']).unwrap_or(token.len());
    let colon = token[..authority_end].find(':')?;
    let at = token.rfind('@')?;
    if at <= colon {
        return None;
    }
    let authority_has_at = token[..authority_end].contains('@');
    let port_like = token[colon + 1..authority_end]
        .bytes()
        .all(|b| b.is_ascii_digit());
    if !authority_has_at && port_like {
        return None;
    }
    Some(colon + 1..at)
}

/// Where each `scheme://…` token of `text` starts and ends (after `://`, up to whitespace or
/// a quote).
fn url_tokens(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(pos) = text[from..].find("://") {
        let start = from + pos + 3;
        let len = text[start..]
            .find(|c: char| matches!(c, '"' | '\'' | '`') || c.is_whitespace())
            .unwrap_or(text.len() - start);
        out.push(start..start + len);
        from = start + len;
    }
    out
}

/// Replaces the password in every `scheme://user:password@` in `text`, the value of every
/// secret-looking key (`password=` …) and the credential of every `Authorization:` header.
pub fn redact_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for token in url_tokens(text) {
        let Some(pw) = password_range(&text[token.clone()]) else {
            continue;
        };
        let pw = token.start + pw.start..token.start + pw.end;
        // `{secret:NAME}` is a reference (crate::secret), not the secret: it may show.
        if is_reference(&text[pw.clone()]) {
            continue;
        }
        out.push_str(&text[at..pw.start]);
        out.push_str(MASK);
        at = pw.end;
    }
    out.push_str(&text[at..]);
    mask_authorization(&mask_password_params(&out))
}

/// The password of every `scheme://user:password@host` in `text`, as written (so still
/// percent-encoded).
pub fn url_passwords(text: &str) -> Vec<String> {
    url_tokens(text)
        .into_iter()
        .filter_map(|t| {
            let token = &text[t];
            password_range(token)
                .filter(|r| !r.is_empty())
                .map(|r| token[r].to_string())
        })
        .collect()
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

/// The words that make a key's value secret in `KEY=value`, `"KEY": "value"` and
/// `KEY: value`: `PGPASSWORD=…`, `db_password=…`, `--token=…`, `"api_key": "…"`.
const SECRET_KEY_WORDS: &str =
    r"pass(?:word|wd)|secret|token|api[_-]?key|private[_-]?key|access[_-]?key|credentials?";

/// `KEY=value`, with a key holding one of [`SECRET_KEY_WORDS`] that starts the text, a line or
/// follows a separator (so `password=` at the start of any line is found).
static KEY_EQUALS: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(&format!(
        r#"(?i)(?:^|[^A-Za-z0-9_.-])[A-Za-z0-9_.-]*(?:{SECRET_KEY_WORDS})[A-Za-z0-9_.-]*[ \t]*=(?:[ \t]*["']|)([^\s"'&;#`]+)"#
    ))
    .expect("a valid pattern")
});

/// `"KEY": "value"` (JSON) and `KEY: value` at the start of a line (YAML, a header dump, a
/// log line); not `secret:` inside a sentence.
static KEY_COLON: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(&format!(
        r#"(?im)(?:"[A-Za-z0-9_.-]*(?:{SECRET_KEY_WORDS})[A-Za-z0-9_.-]*"[ \t]*:[ \t]*"([^"\n]+)"|^[ \t]*[A-Za-z0-9_.-]*(?:pass(?:word|wd)|api[_-]?key|private[_-]?key|access[_-]?key)[A-Za-z0-9_.-]*[ \t]*:[ \t]+([^\s"'`]+))"#
    ))
    .expect("a valid pattern")
});

/// SQL's `PASSWORD 'value'` (`CREATE ROLE … PASSWORD '…'`, `ALTER USER … WITH PASSWORD '…'`).
static SQL_PASSWORD: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r"(?i)\bpassword[ \t]+'((?:[^']|'')+)'").expect("a valid pattern")
});

/// `curl -u user:password` / `--user user:password`.
static CURL_USER: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r#"(?:^|\s)(?:-u|--user)[ \t]+["']?[^\s:"']+:([^\s"']+)"#)
        .expect("a valid pattern")
});

/// Masks the values of secret-looking keys (`password=`, `sslpassword=`, `PGPASSWORD=`,
/// `db_password=`, `--token=`, `"password": "…"`, `password: …`) and of `curl -u user:pw`.
/// A value that is a `{secret:NAME}` reference stays: it holds no secret. A `)` that ends a
/// value with no `(` in it is kept: it closes a parenthesis around the command.
fn mask_password_params(text: &str) -> String {
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    for caps in KEY_EQUALS.captures_iter(text) {
        if let Some(m) = caps.get(1) {
            ranges.push(m.range());
        }
    }
    for caps in KEY_COLON.captures_iter(text) {
        if let Some(m) = caps.get(1).or_else(|| caps.get(2)) {
            ranges.push(m.range());
        }
    }
    for caps in SQL_PASSWORD.captures_iter(text) {
        if let Some(m) = caps.get(1) {
            ranges.push(m.range());
        }
    }
    for caps in CURL_USER.captures_iter(text) {
        if let Some(m) = caps.get(1) {
            ranges.push(m.range());
        }
    }
    if ranges.is_empty() {
        return text.to_string();
    }
    ranges.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for r in ranges {
        if r.start < at {
            continue;
        }
        let mut value = &text[r.clone()];
        let mut end = r.end;
        while value.ends_with(')') && !value.contains('(') {
            value = &value[..value.len() - 1];
            end -= 1;
        }
        let value_end = r.start + value.len();
        out.push_str(&text[at..r.start]);
        if value.is_empty() || value == MASK || is_reference(value) {
            out.push_str(value);
        } else {
            out.push_str(MASK);
        }
        out.push_str(&text[value_end..end]);
        at = end;
    }
    out.push_str(&text[at..]);
    out
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
    fn url_passwords_holding_slashes_and_ats_are_masked_whole() {
        assert_eq!(
            redact_url_passwords(
                "the server at postgres://postgres:S3cr@t/pa:ss%2Fw@127.0.0.1:25499/x is down"
            ),
            "the server at postgres://postgres:***@127.0.0.1:25499/x is down"
        );
        assert_eq!(url_passwords("postgres://u:a/b@c@h/db"), ["a/b@c"]);
        // A port and an `@` in the path: no password.
        for same in [
            "http://host:8080/users/@me",
            "https://registry.example/@scope/pkg",
            "https://h/#a:b@c",
        ] {
            assert_eq!(redact_url_passwords(same), same);
        }
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
    fn secret_keys_are_masked_wherever_the_key_starts() {
        let cases = [
            ("a\npassword=PWx\n", "a\npassword=***\n"),
            ("password=PWx", "password=***"),
            ("PGPASSWORD=s3cr3t psql -h db", "PGPASSWORD=*** psql -h db"),
            ("export db_password='s3cr3t'", "export db_password='***'"),
            ("run --token=abc.def x", "run --token=*** x"),
            (
                "{\"password\": \"hunter2\", \"user\": \"u\"}",
                "{\"password\": \"***\", \"user\": \"u\"}",
            ),
            ("  password: hunter2\nuser: u", "  password: ***\nuser: u"),
            (
                "curl -u bot:hunter2 https://h/x",
                "curl -u bot:*** https://h/x",
            ),
            (
                "web: restart (echo password=PWx)",
                "web: restart (echo password=***)",
            ),
            (
                "ALTER ROLE app WITH PASSWORD 'it''s'",
                "ALTER ROLE app WITH PASSWORD '***'",
            ),
            (
                "host=h sslpassword=k dbname=x",
                "host=h sslpassword=*** dbname=x",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(redact_url_passwords(text), want, "{text:?}");
        }
        for same in [
            "reset the password= field",
            "PWD=/root HOME=/root",
            "secret `tok`: from environment variable HOOK_TOK",
            "token={secret:hook}",
            "the password: field is empty",
        ] {
            assert_eq!(redact_url_passwords(same), same);
        }
    }

    #[test]
    fn a_known_value_is_masked_whole_before_any_shape_rule() {
        let mut r = Redactor::default();
        r.add_declared("ZQ p@ss/9:x");
        assert_eq!(
            r.redact("cannot connect to postgres://postgres:ZQ p@ss/9:x@127.0.0.1:1/x"),
            "cannot connect to postgres://postgres:***@127.0.0.1:1/x"
        );
        for encoded in [
            "ZQ%20p%40ss%2F9%3Ax",
            "ZQ%20p%40ss%2f9%3ax",
            "ZQ+p%40ss%2F9%3Ax",
        ] {
            assert_eq!(r.redact(&format!("u={encoded}&")), "u=***&", "{encoded}");
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("p%40ss%2Fw"), "p@ss/w");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%e2%82%ac"), "€");
    }

    #[test]
    fn secret_names() {
        assert!(is_secret_name("VERCEL_TOKEN"));
        assert!(is_secret_name("pgpassword"));
        assert!(!is_secret_name("HOME"));
    }
}
