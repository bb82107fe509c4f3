//! The secrets of one invocation: the values of `[secrets]` read from the environment and
//! files, and the one [`Redactor`] that knows every secret value there is — applied to
//! everything printed and everything stored.

use std::collections::BTreeMap;

use rewind_core::config::{Config, StateLocation};
use rewind_core::redact::{Redactor, url_passwords};
use rewind_core::secret::{SecretSource, Secrets};

/// Each declared secret's value, or why it cannot be read (said when it is used).
#[derive(Default)]
pub struct Values(BTreeMap<String, Result<String, String>>);

impl Values {
    /// Reads every secret of `[secrets]`. `read_files`: false for `rewind check`, which
    /// touches no file besides the config.
    pub fn read(config: &Config, read_files: bool) -> Values {
        let secrets: &Secrets = &config.secrets;
        let mut out = BTreeMap::new();
        for (name, spec) in secrets {
            let value = match &spec.source {
                SecretSource::Env(var) => match std::env::var(var) {
                    Ok(v) if !v.is_empty() => Ok(v),
                    Ok(_) => Err(format!("environment variable {var} is empty")),
                    Err(std::env::VarError::NotPresent) => {
                        Err(format!("environment variable {var} is not set"))
                    }
                    Err(std::env::VarError::NotUnicode(_)) => {
                        Err(format!("environment variable {var} is not valid UTF-8"))
                    }
                },
                SecretSource::File(path) if read_files => match std::fs::read(path) {
                    Ok(bytes) => match String::from_utf8(bytes) {
                        Ok(mut v) => {
                            // `echo token > file` ends it with a newline that is no part of it.
                            if v.ends_with('\n') {
                                v.pop();
                                if v.ends_with('\r') {
                                    v.pop();
                                }
                            }
                            if v.is_empty() {
                                Err(format!("file {} is empty", path.display()))
                            } else {
                                Ok(v)
                            }
                        }
                        Err(_) => Err(format!("file {} is not UTF-8 text", path.display())),
                    },
                    Err(e) => Err(format!("cannot read file {}: {e}", path.display())),
                },
                SecretSource::File(path) => Err(format!("file {} (not read)", path.display())),
                SecretSource::Value(v) => Ok(v.clone()),
            };
            // Every occurrence of a secret is masked in what rewind prints and stores: a
            // value as short as "e" or "30s" would mask ordinary text everywhere.
            let value = value.and_then(|v| {
                let min = rewind_core::redact::MIN_DECLARED_LEN;
                if v.len() < min {
                    Err(format!(
                        "its value is {} character{} long, and rewind masks every occurrence of a secret in what it prints and stores: a value shorter than {min} characters would mask ordinary words; use a longer secret",
                        v.chars().count(),
                        if v.chars().count() == 1 { "" } else { "s" }
                    ))
                } else {
                    Ok(v)
                }
            });
            out.insert(
                name.clone(),
                value.map_err(|why| {
                    format!(
                        "{why} (secret `{name}` is declared at {}:{})",
                        config.path.display(),
                        spec.line
                    )
                }),
            );
        }
        Values(out)
    }

    /// A secret's value, or why it cannot be read.
    pub fn get(&self, name: &str) -> Result<String, String> {
        match self.0.get(name) {
            Some(v) => v.clone(),
            None => Err(format!(
                "[secrets] declares no `{name}` (it was used when the run was planned)"
            )),
        }
    }

    pub fn lookup(&self) -> impl Fn(&str) -> Result<String, String> + '_ {
        move |name| self.get(name)
    }

    /// Every secret whose value could be read, with its value.
    fn known(&self) -> impl Iterator<Item = &String> {
        self.0.values().filter_map(|v| v.as_ref().ok())
    }
}

/// The redactor of an environment: values of variables whose names say they are secret or
/// that `secret-env` lists, the values of `[secrets]`, every password written in a URL of
/// the config (and in the database URLs read from `url-env`), and the state store's.
pub fn redactor(config: &Config, values: &Values, state: Option<&StateLocation>) -> Redactor {
    let mut r = Redactor::from_env(&secret_env(config));
    for v in values.known() {
        r.add_declared(v.clone());
    }
    let mut texts: Vec<String> = Vec::new();
    if let Ok(v) = serde_json::to_value((&config.components, &config.watch)) {
        strings(&v, &mut texts);
    }
    for (_, c) in &config.components {
        if let Some(rewind_core::config::DbConnection::UrlEnv(var)) =
            c.database().map(|d| &d.connection)
            && let Ok(url) = std::env::var(var)
        {
            texts.push(url);
        }
    }
    if let Some(StateLocation::Postgres(url)) = state.or(config.environment.state.as_ref()) {
        texts.push(url.clone());
    }
    if let Ok(url) = std::env::var("REWIND_STATE_URL") {
        texts.push(url);
    }
    for text in &texts {
        for pw in url_passwords(text) {
            // A reference is no secret; the value it stands for is added above.
            if rewind_core::secret::has_references(&pw) {
                continue;
            }
            let decoded = rewind_core::redact::percent_decode(&pw);
            r.add(pw);
            r.add(decoded);
        }
    }
    r
}

fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(m) => m.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

fn secret_env(config: &Config) -> Vec<String> {
    use rewind_core::config::ComponentConfig;
    let mut out = Vec::new();
    for (_, c) in &config.components {
        match c {
            ComponentConfig::ReleaseDir(r) => out.extend(r.secret_env.iter().cloned()),
            ComponentConfig::Command(c) => out.extend(c.secret_env.iter().cloned()),
            ComponentConfig::Sqlite(_) | ComponentConfig::Postgres(_) => {}
        }
    }
    out
}
