//! Crash points for the kill tests. When the environment variable `REWIND_CRASH_AT` names a
//! point (`PHASE:STEP-ID`, e.g. `mid:web.switch`), the process sends itself SIGKILL there — a
//! real kill, with no chance to clean up, exactly what a power cut or `kill -9` does. Phases:
//! `before` (step not begun), `after-begin` (journal says begun, nothing done), `mid` (inside
//! the action, after part of its effect), `after-action` (acted, not yet journaled as done),
//! and `during` (while a child process the action started is at work, see [`during`]).

/// The variable that arms a crash point.
pub const VAR: &str = "REWIND_CRASH_AT";

/// Kills this process with SIGKILL if `REWIND_CRASH_AT` is `phase:step_id`.
pub fn point(phase: &str, step_id: &str) {
    let Ok(armed) = std::env::var(VAR) else {
        return;
    };
    if armed.split_once(':') == Some((phase, step_id)) {
        rewind_proc::kill_self();
    }
}

/// For an action that runs a child process: kills this process with SIGKILL while the child
/// runs — as soon as `started()` says it has made part of its effect — if `REWIND_CRASH_AT`
/// is `during:step_id`. Otherwise it never finishes: run it beside the child (`select!`).
pub async fn during(step_id: &str, started: impl Fn() -> bool) {
    if std::env::var(VAR).is_ok_and(|a| a.split_once(':') == Some(("during", step_id))) {
        loop {
            if started() {
                rewind_proc::kill_self();
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    std::future::pending::<()>().await;
}
