//! Secrets in the configuration, and keeping them out of the state store.
//!
//! `[secrets]` declares where each secret comes from (an environment variable, a file, or —
//! discouraged — the file itself), and `{secret:NAME}` in a value of a component, of `[watch]`
//! or of `state` refers to one. References are resolved only when rewind acts (runs a
//! command, connects, probes), from the environment and files of that moment: the value never
//! sits in the state store, and what is planned, printed and recorded shows the reference.
//!
//! A run records the configuration of its components so that a resumed run does what was
//! planned. That record is *sealed* first: every secret the redactor knows in it (URL
//! passwords, declared values) is masked. Executing the run *unseals* it against the live
//! configuration: a masked value is taken from the same field of the config as it is now,
//! provided that field still reads the same once masked; otherwise the run cannot go on and
//! says which field changed.
//!
//! Pure: the values come in through a lookup; reading variables and files is the binary's.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::redact::{MASK, Redactor};

/// What opens a reference: `{secret:NAME}`.
pub const REF_OPEN: &str = "{secret:";

/// Where a declared secret's value comes from.
#[derive(Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretSource {
    /// An environment variable, read when the secret is used.
    Env(String),
    /// A file (absolute), read when the secret is used; one trailing newline is dropped.
    File(PathBuf),
    /// Written in the config file itself: masked everywhere and never stored, but it sits in
    /// the file. `Debug` and serialization hide it.
    Value(#[serde(serialize_with = "masked")] String),
}

fn masked<S: serde::Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(MASK)
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(v) => write!(f, "Env({v})"),
            SecretSource::File(p) => write!(f, "File({})", p.display()),
            SecretSource::Value(_) => write!(f, "Value({MASK})"),
        }
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(v) => write!(f, "environment variable {v}"),
            SecretSource::File(p) => write!(f, "file {}", p.display()),
            SecretSource::Value(_) => write!(f, "the config file"),
        }
    }
}

/// One entry of `[secrets]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SecretSpec {
    pub source: SecretSource,
    /// The line of the config file that declares it (for messages).
    pub line: usize,
}

/// `[secrets]`: name → where the value comes from.
pub type Secrets = BTreeMap<String, SecretSpec>;

/// Is `name` a valid secret name (letters, digits, `-`, `_`)?
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A `{secret:NAME}` in a text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference<'a> {
    /// Byte range of the whole reference, braces included.
    pub range: Range<usize>,
    pub name: &'a str,
}

/// A `{secret:` that does not form a reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadReference {
    /// Byte offset of its `{`.
    pub at: usize,
    pub why: String,
}

/// Every reference in `text`, in order; the first malformed one is an error.
pub fn references(text: &str) -> Result<Vec<Reference<'_>>, BadReference> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find(REF_OPEN) {
        let at = from + i;
        let name_at = at + REF_OPEN.len();
        let Some(close) = text[name_at..].find('}') else {
            return Err(BadReference {
                at,
                why: "`{secret:` is not closed by `}`".into(),
            });
        };
        let name = &text[name_at..name_at + close];
        if !valid_name(name) {
            return Err(BadReference {
                at,
                why: if name.is_empty() {
                    "`{secret:}` names no secret".into()
                } else {
                    format!(
                        "`{{secret:{name}}}`: a secret's name holds letters, digits, \"-\" and \"_\""
                    )
                },
            });
        }
        out.push(Reference {
            range: at..name_at + close + 1,
            name,
        });
        from = name_at + close + 1;
    }
    Ok(out)
}

/// Does `text` refer to any secret?
pub fn has_references(text: &str) -> bool {
    text.contains(REF_OPEN)
}

/// Why a reference or a sealed value cannot be turned back into the secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// A reference whose secret cannot be read now.
    #[error("`{field}` uses {{secret:{name}}}, which cannot be read: {reason}")]
    Unresolved {
        field: String,
        name: String,
        reason: String,
    },
    /// A malformed reference (only in a record written by hand).
    #[error("`{field}`: {why}")]
    Malformed { field: String, why: String },
    /// A sealed field whose value the live config no longer has.
    #[error(
        "`{field}` held a secret when the run was planned ({stored}), and the config's value is no longer the same{now}, so the secret cannot be put back"
    )]
    Changed {
        field: String,
        /// The recorded value, masked.
        stored: String,
        /// `; it is now …` (masked), or that the field or component is gone.
        now: String,
    },
    #[error("cannot read the recorded configuration: {0}")]
    Shape(String),
}

/// Puts the secrets named by references into `text`. `lookup` gives a secret's value, or why
/// it cannot be read.
pub fn substitute(
    text: &str,
    field: &str,
    lookup: &dyn Fn(&str) -> Result<String, String>,
) -> Result<String, SecretError> {
    let refs = references(text).map_err(|b| SecretError::Malformed {
        field: field.to_string(),
        why: b.why,
    })?;
    if refs.is_empty() {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for r in refs {
        out.push_str(&text[last..r.range.start]);
        let value = lookup(r.name).map_err(|reason| SecretError::Unresolved {
            field: field.to_string(),
            name: r.name.to_string(),
            reason,
        })?;
        if in_url_userinfo(text, r.range.clone()) {
            // `scheme://user:{secret:pw}@host`: the value as a URL holds it, so that an `@`,
            // `/` or `:` in a password neither breaks the URL nor shows part of it.
            out.push_str(&crate::redact::percent_encode(&value));
        } else {
            out.push_str(&value);
        }
        last = r.range.end;
    }
    out.push_str(&text[last..]);
    Ok(out)
}

/// Is `range` of `text` inside the user information of a URL (`scheme://…@`)?
fn in_url_userinfo(text: &str, range: std::ops::Range<usize>) -> bool {
    let before = &text[..range.start];
    let Some(scheme_end) = before.rfind("://") else {
        return false;
    };
    let authority_ends =
        |c: char| matches!(c, '/' | '?' | '#' | '@' | '"' | '\'' | '`') || c.is_whitespace();
    if before[scheme_end + 3..].contains(authority_ends) {
        return false;
    }
    let after = &text[range.end..];
    let stop = after
        .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '`') || c.is_whitespace())
        .unwrap_or(after.len());
    after[..stop].contains('@')
}

/// A path into a serialized config, as a person reads it: `deploy`, `ready.command`,
/// `probes.0.url`.
fn field_name(path: &[String]) -> String {
    path.iter()
        .map(|p| p.replace('_', "-"))
        .collect::<Vec<_>>()
        .join(".")
}

fn to_value<T: Serialize>(v: &T) -> Result<Value, SecretError> {
    serde_json::to_value(v).map_err(|e| SecretError::Shape(e.to_string()))
}

fn from_value<T: DeserializeOwned>(v: Value) -> Result<T, SecretError> {
    serde_json::from_value(v).map_err(|e| SecretError::Shape(e.to_string()))
}

/// What [`map_strings`] does to one string, given its path: a new value, or `None` to keep it.
type StringMap<'a> = dyn FnMut(&[String], &str) -> Result<Option<String>, SecretError> + 'a;

/// Applies `f` to every string of `v` (not object keys), with its path.
fn map_strings(
    v: &mut Value,
    path: &mut Vec<String>,
    f: &mut StringMap<'_>,
) -> Result<(), SecretError> {
    match v {
        Value::String(s) => {
            if let Some(new) = f(path, s)? {
                *s = new;
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                map_strings(item, path, f)?;
                path.pop();
            }
        }
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                path.push(k.clone());
                map_strings(item, path, f)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

/// `config` with every `{secret:NAME}` in it replaced by the secret's value. Used on
/// component and `[watch]` configs right before rewind acts with them.
pub fn resolve<T: Serialize + DeserializeOwned>(
    config: &T,
    lookup: &dyn Fn(&str) -> Result<String, String>,
) -> Result<T, SecretError> {
    let mut v = to_value(config)?;
    map_strings(&mut v, &mut Vec::new(), &mut |path, s| {
        if !has_references(s) {
            return Ok(None);
        }
        substitute(s, &field_name(path), lookup).map(Some)
    })?;
    from_value(v)
}

/// `config` as it may be stored: every secret the redactor knows in any of its values masked
/// (references stay as they are: they hold no secret).
pub fn seal<T: Serialize + DeserializeOwned>(
    config: &T,
    redactor: &Redactor,
) -> Result<T, SecretError> {
    let original = to_value(config)?;
    let mut masked: Vec<(Vec<String>, String)> = Vec::new();
    let mut all = original.clone();
    map_strings(&mut all, &mut Vec::new(), &mut |path, s| {
        let r = redactor.redact(s);
        if r == s {
            return Ok(None);
        }
        masked.push((path.to_vec(), r.clone()));
        Ok(Some(r))
    })?;
    if let Ok(sealed) = from_value(all) {
        return Ok(sealed);
    }
    // A secret that happens to be written in a value that is no free text (a kind, a
    // duration: `release-dir` holds a secret "e") is no secret there, and masking it would
    // leave a record nobody can read: such values stay as they are, one by one.
    let mut sealed = original;
    for (path, value) in masked {
        let mut trial = sealed.clone();
        if let Some(slot) = path.iter().try_fold(&mut trial, |node, seg| match node {
            Value::Object(m) => m.get_mut(seg),
            Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }) {
            *slot = Value::String(value);
        }
        if from_value::<T>(trial.clone()).is_ok() {
            sealed = trial;
        }
    }
    from_value(sealed)
}

/// Does `live` read as `stored` where `stored` is not masked? Each `***` of `stored` stands
/// for a secret that may have changed since (a rotated password): it matches any non-empty
/// text, and everything between the masks must be as it was. This also holds when the old
/// secret was an ordinary word masked elsewhere in the field (a password `postgres` masks the
/// scheme of `postgres://`) and the redactor of today, knowing only the new secret, masks
/// the field differently.
fn fits_masked(stored: &str, live: &str) -> bool {
    let parts: Vec<&str> = stored.split(MASK).collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() < 2 || !live.starts_with(first) {
        return false;
    }
    let mut at = first.len();
    for middle in &parts[1..parts.len() - 1] {
        // At least one character for the mask before this literal part.
        let Some(found) = live.get(at + 1..).and_then(|rest| rest.find(middle)) else {
            return false;
        };
        at += 1 + found + middle.len();
    }
    live.len() >= at + 1 + last.len() && live.ends_with(last)
}

/// A sealed config made whole again from `live`, the same component as the config file
/// describes it now (`None` when the file no longer has it). Every value that holds a mask
/// is taken from the same field of `live`, which must read the same once masked. Values
/// without a mask are kept as recorded: the run does what was planned.
pub fn unseal<T: Serialize + DeserializeOwned>(
    sealed: &T,
    live: Option<&T>,
    redactor: &Redactor,
) -> Result<T, SecretError> {
    let mut v = to_value(sealed)?;
    let live = live.map(to_value).transpose()?;
    map_strings(&mut v, &mut Vec::new(), &mut |path, stored| {
        if !stored.contains(MASK) {
            return Ok(None);
        }
        let field = field_name(path);
        let now = match &live {
            None => Err("; the component is no longer in the config".to_string()),
            Some(live) => match path
                .iter()
                .try_fold(live, |node, seg| match node {
                    Value::Object(m) => m.get(seg),
                    Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                    _ => None,
                })
                .and_then(Value::as_str)
            {
                None => Err("; the config no longer sets it".to_string()),
                Some(l) if l == stored => Ok(None),
                Some(l) if redactor.redact(l) == stored || fits_masked(stored, l) => {
                    Ok(Some(l.to_string()))
                }
                Some(l) => Err(format!("; it is now {:?}", redactor.redact(l))),
            },
        };
        now.map_err(|now| SecretError::Changed {
            field,
            stored: format!("{stored:?}"),
            now,
        })
    })?;
    from_value(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CommandConfig, ComponentConfig};
    use std::time::Duration;

    #[test]
    fn a_reference_in_a_urls_user_information_is_percent_encoded() {
        let lookup = |_: &str| Ok::<_, String>("p@ss/9:x y".to_string());
        assert_eq!(
            substitute("postgres://app:{secret:pw}@db/app", "url", &lookup).unwrap(),
            "postgres://app:p%40ss%2F9%3Ax%20y@db/app"
        );
        assert_eq!(
            substitute(
                "curl -H 'X: {secret:pw}' https://h/{secret:pw}",
                "deploy",
                &lookup
            )
            .unwrap(),
            "curl -H 'X: p@ss/9:x y' https://h/p@ss/9:x y"
        );
    }

    #[test]
    fn a_rotated_secret_that_was_an_ordinary_word_still_unseals() {
        // The old password "postgres" masked the scheme and the user too; the new one is
        // unrelated. Everything outside the masks is as it was, so the live value is taken.
        assert!(fits_masked(
            "***://***:{secret:pw}@db/x",
            "postgres://postgres:{secret:pw}@db/x"
        ));
        assert!(fits_masked(
            "curl https://bot:***@h/x",
            "curl https://bot:n3w@h/x"
        ));
        assert!(fits_masked("a *** b *** c", "a x b y c"));
        assert!(!fits_masked("a *** b *** c", "a x b y d"));
        assert!(
            !fits_masked("a *** b", "a  b"),
            "a mask stands for something"
        );
        assert!(!fits_masked(
            "curl https://bot:***@h/x",
            "curl https://bot:n3w@other/x"
        ));
        assert!(!fits_masked("no mask", "no mask"));
        let mut old = Redactor::default();
        old.add_declared("postgres");
        let live = cmd("psql postgres://postgres:{secret:pw}@db/x -c 'select 1'");
        let sealed = seal(&live, &old).unwrap();
        let mut now = Redactor::default();
        now.add_declared("rotated-pw-1");
        assert_eq!(unseal(&sealed, Some(&live), &now).unwrap(), live);
    }

    #[test]
    fn sealing_keeps_values_that_are_no_free_text() {
        // Secrets "m" and "30s" occur in the kind `command` and in a duration: the record
        // stays readable, and the command's copy is masked.
        let config = cmd("echo m 30s {release}");
        let mut r = Redactor::default();
        r.add_declared("m");
        r.add_declared("30s");
        let sealed = seal(&config, &r).unwrap();
        let v = serde_json::to_value(&sealed).unwrap();
        assert_eq!(v["kind"], "command", "{v}");
        assert_eq!(deploy_of(&sealed), "echo *** *** {release}");
        assert_eq!(unseal(&sealed, Some(&config), &r).unwrap(), config);
    }

    fn cmd(deploy: &str) -> ComponentConfig {
        ComponentConfig::Command(CommandConfig {
            current: None,
            deploy: deploy.into(),
            rollback: "back {release}".into(),
            ready: None,
            ready_timeout: Duration::from_secs(30),
            workdir: "/w".into(),
            secret_env: vec![],
            command_timeout: Duration::from_secs(600),
        })
    }

    fn deploy_of(c: &ComponentConfig) -> &str {
        match c {
            ComponentConfig::Command(c) => &c.deploy,
            _ => unreachable!(),
        }
    }

    #[test]
    fn references_are_found_and_malformed_ones_refused() {
        let r = references("a {secret:x-1} b {secret:y_2}").unwrap();
        assert_eq!(r.iter().map(|r| r.name).collect::<Vec<_>>(), ["x-1", "y_2"]);
        assert_eq!(r[0].range, 2..14);
        assert!(references("{secret:}").is_err());
        assert!(references("{secret:a b}").is_err());
        assert!(references("x {secret:abc").is_err());
        assert!(references("{release} {secrets}").unwrap().is_empty());
    }

    #[test]
    fn substitution_fills_every_reference_or_says_which_is_missing() {
        let lookup = |n: &str| match n {
            "a" => Ok("AAA".to_string()),
            _ => Err("environment variable B is not set".to_string()),
        };
        assert_eq!(
            substitute("x{secret:a}y{secret:a}", "deploy", &lookup).unwrap(),
            "xAAAyAAA"
        );
        let e = substitute("{secret:b}", "deploy", &lookup).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`deploy` uses {secret:b}, which cannot be read: environment variable B is not set"
        );
        let c = resolve(&cmd("go {release} {secret:a}"), &lookup).unwrap();
        assert_eq!(deploy_of(&c), "go {release} AAA");
    }

    #[test]
    fn sealed_configs_hold_no_secret_and_unseal_from_the_live_config() {
        let mut r = Redactor::default();
        r.add_declared("tok-42");
        let live = cmd("curl https://bot:hunter2@hooks/x?t=tok-42 {release}");
        let sealed = seal(&live, &r).unwrap();
        let text = serde_json::to_string(&sealed).unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains("tok-42"),
            "{text}"
        );
        assert_eq!(
            deploy_of(&sealed),
            "curl https://bot:***@hooks/x?t=*** {release}"
        );
        assert_eq!(unseal(&sealed, Some(&live), &r).unwrap(), live);
        // A rotated password still masks to the same record: the live one is used.
        let rotated = cmd("curl https://bot:n3w@hooks/x?t=tok-42 {release}");
        assert_eq!(unseal(&sealed, Some(&rotated), &r).unwrap(), rotated);
        // Anything else changed in that field: refused, naming it, showing no secret.
        let moved = cmd("curl https://bot:hunter2@other/x?t=tok-42 {release}");
        let e = unseal(&sealed, Some(&moved), &r).unwrap_err().to_string();
        assert!(e.contains("`deploy`") && e.contains("other/x"), "{e}");
        assert!(!e.contains("hunter2") && !e.contains("tok-42"), "{e}");
        let e = unseal(&sealed, None, &r).unwrap_err().to_string();
        assert!(e.contains("no longer in the config"), "{e}");
        // Fields without a secret keep what was planned, whatever the config says now.
        let plain = cmd("deploy-v1 {release}");
        assert_eq!(
            unseal(
                &seal(&plain, &r).unwrap(),
                Some(&cmd("deploy-v2 {release}")),
                &r
            )
            .unwrap(),
            plain
        );
    }

    #[test]
    fn a_value_secret_never_shows() {
        let s = SecretSpec {
            source: SecretSource::Value("hunter2".into()),
            line: 3,
        };
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&s).unwrap().contains("hunter2"));
    }
}
