//! `rewind init`: write the commented example config.

use std::path::Path;
use std::process::ExitCode;

use crate::error::{CliResult, failed, usage};
use crate::output::Printer;

pub fn run(path: &Path, force: bool, printer: &Printer) -> CliResult<ExitCode> {
    if path.exists() && !force {
        return Err(usage(format!(
            "{} already exists; not overwriting it",
            path.display()
        ))
        .hint("pass --force to replace it, or -c OTHER.toml to write elsewhere"));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
    }
    std::fs::write(path, rewind_core::config::EXAMPLE)
        .map_err(|e| failed(format!("cannot write {}: {e}", path.display())))?;
    printer.text(format!(
        "wrote {}\nnext: edit it for your system, then run `rewind check`",
        path.display()
    ));
    printer.json_value(&serde_json::json!({"ok": true, "path": path}));
    Ok(ExitCode::SUCCESS)
}
