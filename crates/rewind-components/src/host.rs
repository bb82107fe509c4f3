//! Who and where: `user@host` for the ledger and the audit log, and whether a lock holder's
//! process is still alive.

use std::path::Path;

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The user running rewind.
pub fn username() -> String {
    if let Some(u) = ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
    {
        return u;
    }
    // No login variables (cron, containers): look the uid up.
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        });
    if let Some(uid) = uid {
        if let Ok(passwd) = std::fs::read_to_string("/etc/passwd") {
            for line in passwd.lines() {
                let f: Vec<&str> = line.split(':').collect();
                if f.len() > 2 && f[2] == uid {
                    return f[0].to_string();
                }
            }
        }
        return format!("uid{uid}");
    }
    "unknown".to_string()
}

/// `user@host`.
pub fn actor() -> String {
    format!("{}@{}", username(), hostname())
}

/// Is process `pid` on this machine alive? A zombie (killed, not yet reaped by its parent)
/// counts as dead: it will never release anything.
pub fn process_alive(pid: u32) -> bool {
    let stat = Path::new("/proc").join(pid.to_string()).join("stat");
    match std::fs::read_to_string(stat) {
        Ok(s) => {
            // The state follows the parenthesised command name, which may itself hold spaces.
            let state = s
                .rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)] // a child reaped at once, nothing to supervise
    fn this_process_is_alive_and_a_reaped_child_is_not() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }

    #[test]
    fn actor_has_user_and_host() {
        let a = actor();
        assert!(
            a.contains('@') && !a.starts_with('@') && !a.ends_with('@'),
            "{a}"
        );
    }
}
