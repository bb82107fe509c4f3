//! Running the user's shell commands: `sh -c`, output captured (and redacted), a time limit
//! that kills the whole process group, and `{release}` filled in.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

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

/// Runs `command` with `sh -c` in `dir`, with extra environment variables, killing its process
/// group when `timeout` passes.
pub async fn run_shell(
    component: &str,
    command: &str,
    dir: Option<&Path>,
    env: &[(&str, &str)],
    timeout: Duration,
    redactor: &rewind_core::redact::Redactor,
) -> Result<CommandOutput> {
    let mut cmd = tokio::process::Command::new(if std::path::Path::new("/bin/sh").exists() {
        "/bin/sh"
    } else {
        "sh"
    });
    cmd.arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let shown = redactor.redact(command);
    let mut child = cmd
        .spawn()
        .map_err(|e| ComponentError::io(component, format!("cannot start `{shown}`"), e))?;
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let read_out = async {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf).await;
        buf
    };
    let read_err = async {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf).await;
        buf
    };
    let work = async {
        let (out, err, status) = tokio::join!(read_out, read_err, child.wait());
        (out, err, status)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok((out, err, status)) => {
            let status = status
                .map_err(|e| ComponentError::io(component, format!("waiting for `{shown}`"), e))?;
            let stdout = String::from_utf8_lossy(&out).to_string();
            let mut output = stdout.clone();
            let err = String::from_utf8_lossy(&err);
            if !err.is_empty() {
                if !output.is_empty() && !output.ends_with('\n') {
                    output.push('\n');
                }
                output.push_str(&err);
            }
            Ok(CommandOutput {
                status: status.code(),
                output: redactor.redact(output.trim_end()),
                stdout: redactor.redact(stdout.trim()),
            })
        }
        Err(_) => {
            if let Some(pid) = pid {
                // Kill the whole group: a shell's children would otherwise live on.
                let _ = std::process::Command::new("kill")
                    .args(["-9", &format!("-{pid}")])
                    .status();
            }
            Err(ComponentError::failed(
                component,
                format!(
                    "`{shown}` did not finish within {}; it was killed (raise command-timeout if it needs longer)",
                    rewind_core::units::format_duration(timeout)
                ),
            ))
        }
    }
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
