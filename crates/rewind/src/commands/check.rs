//! `rewind check`: validate the config without touching anything (no store, no network, no
//! files besides the config itself).

use std::path::Path;
use std::process::ExitCode;

use rewind_core::secret::SecretSource;
use serde_json::json;

use crate::error::CliResult;
use crate::output::Printer;

pub fn run(path: &Path, printer: &Printer) -> CliResult<ExitCode> {
    let config = super::load_config(path)?;
    // Secrets from the environment and the file are known; files are not read.
    let values = crate::secrets::Values::read(&config, false);
    printer.set_redactor(crate::secrets::redactor(&config, &values, None));
    let location = super::state_location(&config);
    let comps: Vec<_> = config
        .components
        .iter()
        .map(|(n, c)| json!({"name": n, "kind": c.kind()}))
        .collect();
    let secrets: Vec<_> = config
        .secrets
        .iter()
        .map(|(n, s)| {
            let available = match &s.source {
                SecretSource::File(_) => None,
                _ => Some(values.get(n)),
            };
            (n, s, available)
        })
        .collect();
    // A value written in the file that can never be used is the file's fault: say so as a
    // config error (a variable that is not set here may well be set where rewind runs).
    let unusable: Vec<String> = secrets
        .iter()
        .filter(|(_, s, _)| matches!(s.source, SecretSource::Value(_)))
        .filter_map(|(n, _, a)| match a {
            Some(Err(why)) => Some(format!("secret `{n}`: {why}")),
            _ => None,
        })
        .collect();
    if !unusable.is_empty() {
        return Err(crate::error::usage(format!(
            "{} is not valid:\n  {}",
            path.display(),
            unusable.join("\n  ")
        ))
        .hint(
            "write a longer value, or read it from the environment or a file (env = …, file = …)",
        ));
    }
    printer.json_value(&json!({
        "ok": true,
        "path": config.path,
        "environment": config.environment.name,
        "state": location.display_safe(),
        "components": comps,
        "secrets": secrets.iter().map(|(n, s, available)| json!({"name": n, "from": s.source.to_string(), "available": available.as_ref().map(|a| a.is_ok()), "problem": available.as_ref().and_then(|a| a.as_ref().err())})).collect::<Vec<_>>(),
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
    if !secrets.is_empty() {
        text.push_str("\nsecrets (read when rewind acts):");
        for (n, s, available) in &secrets {
            let state = match available {
                Some(Err(why)) => format!(" — cannot be used here: {why}"),
                Some(Ok(_)) | None => String::new(),
            };
            text.push_str(&format!("\n  {n}: from {}{state}", s.source));
        }
    }
    printer.text(text);
    Ok(ExitCode::SUCCESS)
}
