use std::time::Instant;

use super::*;

/// A value no other process on the machine carries in its environment.
fn mark() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Live (not zombie) processes whose environment holds `REWIND_PROC_TEST=<mark>`.
fn marked(mark: &str) -> Vec<u32> {
    let needle = format!("REWIND_PROC_TEST={mark}");
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rfind(')')
                    .and_then(|i| s[i + 1..].split_whitespace().next().map(str::to_string))
            })
            .is_none_or(|st| st == "Z" || st == "X");
        if !zombie && env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

/// Waits up to 3 s for every marked process to be gone.
fn gone(mark: &str) -> Vec<u32> {
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        let left = marked(mark);
        if left.is_empty() || Instant::now() > until {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sh(script: &str, mark: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script).env("REWIND_PROC_TEST", mark);
    c
}

fn kill_marked(mark: &str) {
    for pid in marked(mark) {
        terminate(pid);
    }
}

#[tokio::test]
async fn output_status_and_environment() {
    let m = mark();
    let dir = std::env::temp_dir();
    let out = sh(
        "echo out; echo err >&2; echo \"$GREETING\"; pwd; cat; exit 3",
        &m,
    )
    .env("GREETING", "hello")
    .current_dir(&dir)
    .output()
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8(out.stdout).unwrap();
    // `cat` reads /dev/null: nothing, at once.
    assert_eq!(
        stdout,
        format!("out\nhello\n{}\n", dir.canonicalize().unwrap().display())
    );
    assert_eq!(out.stderr, b"err\n");

    let killed = sh("kill -TERM $$", &m).output().await.unwrap();
    assert_eq!(killed.status.signal(), Some(libc::SIGTERM));

    let removed = Command::new("sh")
        .args(["-c", "echo \"${HOME-unset}\""])
        .env_remove("HOME")
        .output()
        .await
        .unwrap();
    assert_eq!(removed.stdout, b"unset\n");
}

#[tokio::test]
async fn a_program_that_cannot_start_is_an_error_at_once() {
    let started = Instant::now();
    let e = Command::new("rewind-surely-no-such-program")
        .output()
        .await
        .unwrap_err();
    match e {
        Error::Start(io) => assert_eq!(io.kind(), io::ErrorKind::NotFound, "{io}"),
        other => panic!("{other}"),
    }
    let e = Command::new(std::env::temp_dir())
        .output()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Start(_)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_time_limit_kills_the_whole_group() {
    let m = mark();
    let started = Instant::now();
    let e = sh("sleep 300 & (sleep 301); wait", &m)
        .output_within(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::TimedOut(_)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let left = gone(&m);
    kill_marked(&m);
    assert!(left.is_empty(), "still running: {left:?}");
}

#[tokio::test]
async fn dropping_the_command_kills_the_whole_group() {
    let m = mark();
    let run = sh("sleep 300 & sleep 301", &m);
    let r = tokio::time::timeout(Duration::from_millis(300), run.output()).await;
    assert!(r.is_err(), "it should still be running");
    let left = gone(&m);
    kill_marked(&m);
    assert!(left.is_empty(), "still running: {left:?}");
}

/// The output of a background process that still holds stdout is part of the command.
#[tokio::test]
async fn output_held_by_a_background_process_is_waited_for() {
    let m = mark();
    let out = sh("(sleep 0.3; echo late) & echo early", &m)
        .output()
        .await
        .unwrap();
    assert_eq!(out.stdout, b"early\nlate\n");
    assert!(out.status.success());
}

/// What a finished command left running on purpose, its output redirected, lives on.
#[tokio::test]
async fn a_service_started_on_purpose_outlives_its_command() {
    let m = mark();
    let out = sh("nohup sleep 300 >/dev/null 2>&1 &", &m)
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(300));
    let left = marked(&m);
    kill_marked(&m);
    assert_eq!(left.len(), 1, "the service should live on: {left:?}");
}

/// Run as a separate process by `a_killed_parent_takes_its_commands_with_it`: starts a
/// command whose shell has children of its own, then dies by SIGKILL while it runs.
#[tokio::test]
async fn parent_role() {
    let Ok(m) = std::env::var("REWIND_PROC_PARENT_ROLE") else {
        return;
    };
    let run = tokio::spawn(async move { sh("sleep 300 & (sleep 301); wait", &m).output().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!run.is_finished());
    kill_self();
}

/// SIGKILL gives rewind no chance to clean up: the supervisor sees the leash close and kills
/// the group (the shell, its background job, its subshell and the subshell's child).
#[test]
fn a_killed_parent_takes_its_commands_with_it() {
    let m = mark();
    #[allow(clippy::disallowed_methods)] // the parent must be a process of its own
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tests::parent_role",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("REWIND_PROC_PARENT_ROLE", &m)
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = gone(&m);
    kill_marked(&m);
    assert!(left.is_empty(), "outlived their parent: {left:?}");
}
