//! All output goes through one printer, so `--json` and text never mix: progress and
//! messages to stderr (silenced by `--quiet`, and in `--json` mode), results to stdout either
//! as text or as one JSON document. The printer is also where secrets stop: every line and
//! every JSON string passes its redactor, which knows the environment's secrets once the
//! config is read (before that, those of the process environment and every URL password).

use std::io::{IsTerminal, Write};

use rewind_core::redact::Redactor;

use crate::error::CliError;

pub struct Printer {
    pub json: bool,
    pub quiet: bool,
    color: bool,
    redactor: std::cell::RefCell<Redactor>,
    /// While set, JSON results are collected instead of printed, so that a command made of
    /// several runs (deploy --watch) prints one document.
    captured: std::cell::RefCell<Option<Vec<serde_json::Value>>>,
}

impl Printer {
    pub fn new(json: bool, quiet: bool) -> Self {
        Printer {
            json,
            quiet,
            color: std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            redactor: std::cell::RefCell::new(Redactor::from_env(&[])),
            captured: std::cell::RefCell::new(None),
        }
    }

    /// From now on, mask what `redactor` knows (the environment's secrets).
    pub fn set_redactor(&self, redactor: Redactor) {
        *self.redactor.borrow_mut() = redactor;
    }

    fn clean(&self, text: &str) -> String {
        self.redactor.borrow().redact(text)
    }

    fn clean_json(&self, value: &serde_json::Value) -> serde_json::Value {
        self.redactor.borrow().redact_json(value)
    }

    /// Collect JSON results from now on instead of printing them.
    pub fn start_capture(&self) {
        *self.captured.borrow_mut() = Some(Vec::new());
    }

    /// Stop collecting; returns what was collected.
    pub fn take_captured(&self) -> Vec<serde_json::Value> {
        self.captured.borrow_mut().take().unwrap_or_default()
    }

    /// A progress or status line on stderr (not in `--json` or `--quiet` mode).
    pub fn note(&self, line: impl AsRef<str>) {
        if !self.quiet && !self.json {
            eprintln!("{}", self.clean(line.as_ref()));
        }
    }

    /// A question on stderr, without a line end (the answer is typed after it). Shown even
    /// in quiet mode: a prompt nobody sees would hang.
    pub fn prompt(&self, question: impl AsRef<str>) {
        eprint!("{}", self.clean(question.as_ref()));
        let _ = std::io::stderr().flush();
    }

    /// A warning on stderr, shown even in `--json` mode (stderr is not the JSON channel).
    pub fn warn(&self, line: impl AsRef<str>) {
        if !self.quiet {
            let line = self.clean(line.as_ref());
            if self.color {
                eprintln!("\x1b[33mwarning:\x1b[0m {line}");
            } else {
                eprintln!("warning: {line}");
            }
        }
    }

    /// The text result on stdout (text mode only).
    pub fn text(&self, text: impl AsRef<str>) {
        if !self.json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", self.clean(text.as_ref()));
        }
    }

    /// The JSON result on stdout (JSON mode only).
    pub fn json_value(&self, value: &serde_json::Value) {
        let value = &self.clean_json(value);
        if let Some(c) = self.captured.borrow_mut().as_mut() {
            c.push(value.clone());
            return;
        }
        if self.json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        }
    }

    pub fn bold(&self, s: &str) -> String {
        if self.color {
            format!("\x1b[1m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    pub fn green(&self, s: &str) -> String {
        if self.color {
            format!("\x1b[32m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    pub fn red(&self, s: &str) -> String {
        if self.color {
            format!("\x1b[31m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    /// Prints an error: text with hints on stderr; in `--json` mode also a JSON object on
    /// stdout so scripts reading stdout see why.
    pub fn error(&self, err: &CliError) {
        let msg = self.clean(&error_text(&err.error));
        let hints: Vec<String> = err.hints.iter().map(|h| self.clean(h)).collect();
        let prefix = if self.color {
            "\x1b[31merror:\x1b[0m"
        } else {
            "error:"
        };
        eprintln!("{prefix} {msg}");
        for h in &hints {
            eprintln!("  hint: {h}");
        }
        if self.json {
            self.json_value(&serde_json::json!({
                "ok": false,
                "exit_code": err.class as u8,
                "error": msg,
                "hints": hints,
                "detail": err.detail,
            }));
        }
    }
}

/// The error and its causes, each cause only when it adds something: many errors already
/// include their source's text, and repeating it three times helps nobody.
pub fn error_text(err: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg
}
