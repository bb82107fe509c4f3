//! Children never outlive rewind: a deploy killed with SIGKILL in the middle of its copy
//! (`cp -a` of a 1,500-file artifact) leaves no `cp` writing on, and `resume` finishes the
//! release; a check command still running (or timed out) when the monitoring window ends
//! leaves nothing; a command component's subshell dies with a killed rewind.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

/// Live processes (not zombies) that belong to the fixture in `dir`: its path in their
/// command line, working directory or environment (`REWIND_TEST_MARK`, set on rewind and
/// inherited by everything it starts). This test process is not one of them.
pub fn processes_of(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    let me = std::process::id();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let p = e.path();
        let state = std::fs::read_to_string(p.join("stat")).ok().and_then(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next().map(str::to_string))
        });
        if state.as_deref().is_none_or(|s| s == "Z" || s == "X") {
            continue;
        }
        let cmdline = std::fs::read(p.join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let cwd = std::fs::read_link(p.join("cwd"))
            .map(|c| c.display().to_string())
            .unwrap_or_default();
        let environ = std::fs::read(p.join("environ"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if cmdline.contains(&needle)
            || cwd.starts_with(&needle)
            || environ.contains(&format!("REWIND_TEST_MARK={needle}\0"))
        {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Waits up to 5 s for every process of the fixture to be gone; returns those left, after
/// killing them (so a failing test leaves nothing running).
pub fn survivors(dir: &Path) -> Vec<(u32, String)> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_of(dir);
        if left.is_empty() || Instant::now() > until {
            for (pid, _) in &left {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mark(f: &Fixture) -> String {
    f.dir.path().display().to_string()
}

/// An artifact of 1,500 files of 48 kB (72 MB): big enough that `cp -a` takes a while.
fn big_artifact(f: &Fixture) -> String {
    let art = f.path("art/big");
    for d in 0..30 {
        let sub = art.join(format!("assets/d{d:02}"));
        std::fs::create_dir_all(&sub).unwrap();
        for i in 0..50 {
            let body: Vec<u8> = (0..48_000u32)
                .map(|k| (k.wrapping_mul(31).wrapping_add(d * 50 + i) % 251) as u8)
                .collect();
            std::fs::write(sub.join(format!("f{i:02}.bin")), body).unwrap();
        }
    }
    std::fs::write(art.join("VERSION"), "big").unwrap();
    art.display().to_string()
}

fn leftovers(f: &Fixture) -> Vec<String> {
    ["srv", "srv/releases"]
        .iter()
        .flat_map(|d| std::fs::read_dir(f.path(d)).unwrap().flatten())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".rewind-"))
        .collect()
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            if e.file_type().unwrap().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// After the kill: no `cp` (nor anything else of the run) left; `resume` finishes the
/// release as an uninterrupted deploy would, with the whole artifact, and nothing left over.
fn assert_resumes(f: &Fixture, ctx: &str) {
    let left = survivors(f.dir.path());
    assert!(left.is_empty(), "{ctx}: outlived rewind: {left:?}");
    let r = f.run(&["resume"]);
    r.ok();
    assert_eq!(f.current(), "releases/big", "{ctx}\n{}", r.all());
    assert_eq!(
        count_files(&f.path("srv/releases/big")),
        1_501,
        "{ctx}: the release is incomplete"
    );
    let (current, releases) = f.ledger();
    assert_eq!(current.as_deref(), Some("big"), "{ctx}");
    assert!(
        releases
            .iter()
            .any(|(n, s)| n == "big" && s != "failed" && s != "deploying"),
        "{ctx}: {releases:?}"
    );
    assert_run_complete(&f.last_run(), ctx);
    assert!(leftovers(f).is_empty(), "{ctx}: {:?}", leftovers(f));
}

#[test]
fn a_deploy_killed_mid_copy_leaves_no_copy_running_and_resumes() {
    let base = Fixture::new();
    base.deploy("v1").ok();
    big_artifact(&base);

    // A crash point that fires once the copy has begun writing into the staging directory.
    let f = base.copy();
    let artifact = format!("web={}", f.path("art/big").display());
    let killed = f.run_env(
        &["deploy", "big", "--artifact", &artifact],
        &[
            ("REWIND_CRASH_AT", "during:web.stage"),
            ("REWIND_TEST_MARK", &mark(&f)),
        ],
    );
    assert_eq!(killed.signal, Some(9), "{}", killed.all());
    assert_resumes(&f, "crash point during the copy");

    // Real kills from outside at several moments of the copy. The `cp` is stopped
    // (SIGSTOP) just before rewind is killed: a copy that would otherwise finish in a few
    // milliseconds stays alive unless something kills it, so a `cp` that outlives rewind
    // is seen every time, not only when it happens to be slow.
    for (round, delay_ms) in [0u64, 2, 5, 10, 20, 40].into_iter().enumerate() {
        let mut attempt = 0;
        let (f, ctx, files) = loop {
            attempt += 1;
            assert!(
                attempt <= 10,
                "round {round}: never caught the copy under way"
            );
            let f = base.copy();
            let artifact = format!("web={}", f.path("art/big").display());
            let mut child = f
                .cmd(&["deploy", "big", "--artifact", &artifact])
                .env("REWIND_TEST_MARK", mark(&f))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let until = Instant::now() + Duration::from_secs(20);
            let cp = loop {
                if let Some((pid, _)) = processes_of(f.dir.path())
                    .into_iter()
                    .find(|(_, c)| c.starts_with("cp "))
                {
                    break Some(pid);
                }
                if Instant::now() > until || child.try_wait().unwrap().is_some() {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            std::thread::sleep(Duration::from_millis(delay_ms));
            let stopped = cp.is_some_and(|pid| {
                std::process::Command::new("kill")
                    .args(["-STOP", &pid.to_string()])
                    .stderr(std::process::Stdio::null())
                    .status()
                    .unwrap()
                    .success()
            });
            child.kill().unwrap();
            child.wait().unwrap();
            if stopped {
                let files = staging_files(&f);
                let ctx = format!("kill {round} ({delay_ms} ms into the copy)");
                break (f, ctx, files);
            }
            // The copy was over before it could be stopped: the deploy went on (or was
            // killed later than wanted). Start again from a fresh copy of the fixture.
            let _ = survivors(f.dir.path());
        };
        assert_resumes(&f, &format!("{ctx}, {files} files copied"));
    }
}

/// Files in the staging directory of a copy under way (0 when there is none).
fn staging_files(f: &Fixture) -> usize {
    std::fs::read_dir(f.path("srv/releases"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".rewind-staging-")
        })
        .map(|e| count_files(&e.path()))
        .sum()
}

/// A leftover that something still writes into (a process of a run killed a moment ago,
/// which rewind cannot kill) does not fail the deploy that sweeps it: it is moved aside,
/// and removed by a later run once nothing writes into it any more.
#[test]
fn a_leftover_still_being_written_does_not_fail_the_step() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let f = Fixture::new();
    f.deploy("v1").ok();
    let leftover = f.path("srv/releases/.rewind-staging-v2-4242-1-0");
    std::fs::create_dir(&leftover).unwrap();
    // The writer holds the directory open and writes through it, as a `cp` does: it goes
    // on writing wherever the directory is moved.
    let held = std::fs::File::open(&leftover).unwrap();
    let through = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&held));
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // New names all the time (500 at once): a directory that is being emptied
                // keeps gaining entries.
                if std::fs::write(format!("{through}/f{n}"), b"x").is_ok() {
                    written.fetch_add(1, Ordering::Relaxed);
                }
                if n >= 500 {
                    let _ = std::fs::remove_file(format!("{through}/f{}", n - 500));
                }
                n += 1;
            }
            drop(held);
        })
    };
    let until = Instant::now() + Duration::from_secs(20);
    while written.load(Ordering::Relaxed) < 1_000 {
        assert!(Instant::now() < until, "the writer does not write");
        std::thread::sleep(Duration::from_millis(5));
    }

    let art = format!("web={}", f.path("art/v2").display());
    let before = written.load(Ordering::Relaxed);
    let out = f.run(&["deploy", "v2", "--artifact", &art]);
    let during = written.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    out.ok();
    assert!(during > 0, "the writer did not write while the deploy ran");
    assert_eq!(f.current(), "releases/v2");
    assert!(!leftover.exists(), "the leftover was not moved aside");

    // Nothing writes into it any more: the next run removes it.
    let art = format!("web={}", f.path("art/v3").display());
    f.run(&["deploy", "v3", "--artifact", &art]).ok();
    assert!(leftovers(&f).is_empty(), "{:?}", leftovers(&f));
}

fn watch_config(f: &Fixture, checks: &str) {
    let text = std::fs::read_to_string(f.path("rewind.toml")).unwrap();
    std::fs::write(
        f.path("rewind.toml"),
        format!(
            "{text}\n[watch]\nwindow = \"3s\"\nbaseline = \"0s\"\npolicy = \"alert-only\"\n{checks}"
        ),
    )
    .unwrap();
}

/// A check that times out (its shell has a background child and a foreground one) and a
/// check still running when the window ends: after rewind exits, nothing of either is left.
#[test]
fn check_commands_leave_nothing_after_the_window() {
    let f = Fixture::new();
    f.deploy("v1").ok();
    watch_config(
        &f,
        "[[watch.check]]\nname = \"hangs\"\ncommand = \"sleep 300 & sleep 300\"\ninterval = \"1s\"\ntimeout = \"1s\"\n\n\
         [[watch.check]]\nname = \"slow\"\ncommand = \"sleep 301 & (sleep 301)\"\ninterval = \"1s\"\ntimeout = \"60s\"\n",
    );
    let art = format!("web={}", f.path("art/v2").display());
    let out = f.run_env(
        &["deploy", "v2", "--artifact", &art, "--watch"],
        &[("REWIND_TEST_MARK", &mark(&f))],
    );
    assert!(out.signal.is_none(), "{}", out.all());
    let left = survivors(f.dir.path());
    assert!(left.is_empty(), "outlived rewind: {left:?}\n{}", out.all());
}

/// kill -9 of rewind while a command component's deploy runs a subshell: the shell, the
/// subshell and its `sleep` die with it.
#[test]
fn a_command_step_dies_with_a_killed_rewind() {
    let f = Fixture::new();
    f.deploy("v1").ok();
    let text = std::fs::read_to_string(f.path("rewind.toml"))
        .unwrap()
        .replace(
            "deploy = \"echo deploying {release} && echo {release} > fe-version\"",
            "deploy = \"(sleep 300; echo late) && echo {release} > fe-version\"",
        );
    assert!(text.contains("sleep 300"));
    std::fs::write(f.path("rewind.toml"), text).unwrap();
    let art = format!("web={}", f.path("art/v2").display());
    let mut child = f
        .cmd(&["deploy", "v2", "--artifact", &art])
        .env("REWIND_TEST_MARK", mark(&f))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while !processes_of(f.dir.path())
        .iter()
        .any(|(_, c)| c.trim() == "sleep 300")
    {
        assert!(Instant::now() < until, "the deploy command never started");
        assert!(child.try_wait().unwrap().is_none(), "rewind ended early");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let left = survivors(f.dir.path());
    assert!(left.is_empty(), "outlived rewind: {left:?}");
}
