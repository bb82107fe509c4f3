//! Running the user's shell commands: `sh -c`, output captured (and redacted), a time limit
//! that kills the whole process group, and `{release}` filled in. The process model (own
//! group, killed with rewind, parent-death signal) is `rewind_proc`'s.

use std::path::Path;
use std::time::Duration;

use crate::{ComponentError, Result};

/// The captured result of a command.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    pub status: Option<i32>,
    /// stdout then stderr, redacted.
    pub output: String,
    pub stdout: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// Fills `{release}` and `{component}` into a command template. Release names are
/// validated (letters, digits, `.`, `_`, `-`, `+`) before they get here, so no quoting is
/// needed.
pub fn fill(template: &str, release: &str, component: &str) -> String {
    template
        .replace("{release}", release)
        .replace("{component}", component)
}

/// Runs `command` with `sh -c` in `dir`, with extra environment variables. Through
/// [`rewind_proc`]: the command and everything it starts form one process group, killed
/// whole when `timeout` passes, when the caller drops this future (a step cancelled, a
/// monitoring window over), or when rewind dies.
pub async fn run_shell(
    component: &str,
    command: &str,
    dir: Option<&Path>,
    env: &[(&str, &str)],
    timeout: Duration,
    redactor: &rewind_core::redact::Redactor,
) -> Result<CommandOutput> {
    let mut cmd = rewind_proc::Command::new(if Path::new("/bin/sh").exists() {
        "/bin/sh"
    } else {
        "sh"
    });
    cmd.arg("-c").arg(command);
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let shown = redactor.redact(command);
    let out = match cmd.output_within(timeout).await {
        Ok(out) => out,
        Err(rewind_proc::Error::TimedOut(_)) => {
            return Err(ComponentError::failed(
                component,
                format!(
                    "`{shown}` did not finish within {}; it was killed with everything it started (raise command-timeout if it needs longer)",
                    rewind_core::units::format_duration(timeout)
                ),
            ));
        }
        Err(rewind_proc::Error::Start(e)) => {
            return Err(ComponentError::io(
                component,
                format!("cannot start `{shown}`"),
                e,
            ));
        }
        Err(rewind_proc::Error::Wait(e)) => {
            return Err(ComponentError::io(
                component,
                format!("waiting for `{shown}`"),
                e,
            ));
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let mut output = stdout.clone();
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.is_empty() {
        if !output.is_empty() && !output.ends_with('\n') {
            output.push('\n');
        }
        output.push_str(&err);
    }
    Ok(CommandOutput {
        status: out.status.code(),
        output: redactor.redact(output.trim_end()),
        stdout: redactor.redact(stdout.trim()),
    })
}

/// Fails with the command's output when it did not exit 0.
pub fn expect_success(component: &str, what: &str, shown: &str, out: &CommandOutput) -> Result<()> {
    if out.success() {
        return Ok(());
    }
    let code = out
        .status
        .map(|c| format!("exit code {c}"))
        .unwrap_or_else(|| "killed by a signal".into());
    let mut msg = format!("{what} `{shown}` failed ({code})");
    if !out.output.is_empty() {
        msg.push_str(":\n");
        msg.push_str(&indent(&out.output));
    }
    Err(ComponentError::failed(component, msg))
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
