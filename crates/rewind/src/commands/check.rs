//! `rewind check`: validate the config without touching anything (no store, no network, no
//! files besides the config itself).

use std::path::Path;
use std::process::ExitCode;

use serde_json::json;

use crate::error::CliResult;
use crate::output::Printer;

pub fn run(path: &Path, printer: &Printer) -> CliResult<ExitCode> {
    let config = super::load_config(path)?;
    let location = super::state_location(&config);
    let comps: Vec<_> = config
        .components
        .iter()
        .map(|(n, c)| json!({"name": n, "kind": c.kind()}))
        .collect();
    printer.json_value(&json!({
        "ok": true,
        "path": config.path,
        "environment": config.environment.name,
        "state": location.display_safe(),
        "components": comps,
    }));
    let mut text = format!(
        "{} is valid: environment `{}`, state {}\ncomponents (deploy order):",
        path.display(),
        config.environment.name,
        location.display_safe()
    );
    for (n, c) in &config.components {
        text.push_str(&format!("\n  {n} ({})", c.kind()));
    }
    printer.text(text);
    Ok(ExitCode::SUCCESS)
}
