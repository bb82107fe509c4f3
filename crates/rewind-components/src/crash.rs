//! Crash points for the kill tests. When the environment variable `REWIND_CRASH_AT` names a
//! point (`PHASE:STEP-ID`, e.g. `mid:web.switch`), the process sends itself SIGKILL there — a
//! real kill, with no chance to clean up, exactly what a power cut or `kill -9` does. Phases:
//! `before` (step not begun), `after-begin` (journal says begun, nothing done), `mid` (inside
//! the action, after part of its effect), `after-action` (acted, not yet journaled as done).

/// The variable that arms a crash point.
pub const VAR: &str = "REWIND_CRASH_AT";

/// Kills this process with SIGKILL if `REWIND_CRASH_AT` is `phase:step_id`.
pub fn point(phase: &str, step_id: &str) {
    let Ok(armed) = std::env::var(VAR) else {
        return;
    };
    if armed.split_once(':') == Some((phase, step_id)) {
        let pid = std::process::id().to_string();
        // `kill -9` delivers a real SIGKILL; waiting here keeps the process from going on
        // while the signal is in flight.
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid])
            .status();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}
