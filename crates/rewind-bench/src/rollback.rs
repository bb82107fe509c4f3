//! The rollback benchmark: `rewind rollback --to vX` against a bash script that does the
//! bare minimum (swap the `current` symlink, run the restart script, poll the ready URL
//! with curl), measured alternately on the same app, switching between v1 and v2 on every
//! run.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::serve::get_health;
use crate::stats::Summary;

pub struct Args {
    pub runs: usize,
    pub rewind: Option<PathBuf>,
    pub json: bool,
    pub keep: bool,
    /// rewind's `state-sync` (`full` or `normal`).
    pub state_sync: String,
}

/// rewind's median may be at most this many times the shell floor's.
const GOAL: f64 = 1.2;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Contender {
    Shell,
    Rewind,
}

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::Shell => "shell floor",
            Contender::Rewind => "rewind rollback",
        }
    }
}

/// The temporary directory and the server running in it; dropping it stops the server and
/// removes the directory (unless `keep`), on success and on every error path alike.
struct Workdir {
    dir: PathBuf,
    root: PathBuf,
    keep: bool,
}

impl Workdir {
    fn create(keep: bool) -> Result<Workdir, String> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("rewind-bench-{}-{nanos:09}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let root = dir.join("app");
        Ok(Workdir { dir, root, keep })
    }

    fn server_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.root.join("server.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!(
                "kept {} (server pid {}); remove it by hand",
                self.dir.display(),
                self.server_pid()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "unknown".into())
            );
            return;
        }
        if let Some(pid) = self.server_pid() {
            let _ = Command::new("kill")
                .arg(pid.to_string())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(2);
            while is_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("rewind-bench: removing {}: {e}", self.dir.display());
        }
    }
}

/// Whether the process exists and is not a zombie (PID 1 in a container may never reap it).
fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn toml_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', r"\\").replace('"', "\\\""))
}

fn write(path: &Path, contents: &str, executable: bool) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("writing {}: {e}", path.display()))?;
    if executable {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    }
    Ok(())
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

fn path_str(p: &Path) -> Result<&str, String> {
    p.to_str()
        .ok_or_else(|| format!("{} is not valid UTF-8", p.display()))
}

/// Everything both contenders need, laid out in the work directory.
struct Setup {
    port: u16,
    config: PathBuf,
    floor: PathBuf,
}

fn set_up(w: &Workdir, bench: &Path, state_sync: &str) -> Result<Setup, String> {
    let port = free_port()?;
    let root = &w.root;
    std::fs::create_dir(root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    for v in ["v1", "v2"] {
        let art = w.dir.join("artifacts").join(v);
        std::fs::create_dir_all(&art).map_err(|e| format!("creating {}: {e}", art.display()))?;
        write(&art.join("VERSION"), &format!("{v}\n"), false)?;
    }
    let root_q = sh_quote(path_str(root)?);
    let restart = root.join("restart.sh");
    write(
        &restart,
        &format!(
            r#"#!/usr/bin/env bash
# Stops the server named in server.pid, then starts a new one in the background, serving
# current/ (its own session, output redirected, so this script returns at once).
cd {root_q} || exit 1
if [ -f server.pid ]; then
  pid=$(<server.pid)
  if kill "$pid" 2>/dev/null; then
    # Wait until it is gone (or a zombie nobody reaps) so the port is free again.
    while read -r _ _ st _ 2>/dev/null <"/proc/$pid/stat" && [ "$st" != Z ]; do :; done
  fi
  rm -f server.pid
fi
setsid nohup {bench} serve --port {port} --dir {current} --pidfile {pidfile} \
  >>server.log 2>&1 </dev/null &
"#,
            bench = sh_quote(path_str(bench)?),
            current = sh_quote(path_str(&root.join("current"))?),
            pidfile = sh_quote(path_str(&root.join("server.pid"))?),
        ),
        true,
    )?;
    let url = format!("http://127.0.0.1:{port}/health");
    let floor = w.dir.join("floor.sh");
    write(
        &floor,
        &format!(
            r#"#!/usr/bin/env bash
# The shell floor: the least a rollback can do. Usage: floor.sh RELEASE
set -eu
cd {root_q}
ln -sfn "releases/$1" current.tmp
mv -T current.tmp current
./restart.sh
for ((i = 0; i < 3000; i++)); do
  if curl -fsS -o /dev/null --max-time 5 {url} 2>/dev/null; then exit 0; fi
  sleep 0.01
done
echo "not ready after 30s" >&2
exit 1
"#
        ),
        true,
    )?;
    let config = w.dir.join("rewind.toml");
    write(
        &config,
        &format!(
            r#"[environment]
name = "bench"
state-sync = "{sync}"

[components.web]
kind = "release-dir"
root = {root}
restart = {restart}
ready-url = {url}
ready-timeout = "30s"
"#,
            root = toml_quote(path_str(root)?),
            restart = toml_quote(&sh_quote(path_str(&restart)?)),
            url = toml_quote(&url),
            sync = state_sync,
        ),
        false,
    )?;
    Ok(Setup {
        port,
        config,
        floor,
    })
}

/// Runs a command to completion; its wall time (spawn → exit), or an error with its output.
fn timed(cmd: &mut Command, what: &str) -> Result<Duration, String> {
    cmd.stdin(Stdio::null()).env_remove("RUST_LOG");
    let start = Instant::now();
    let out = cmd.output().map_err(|e| format!("starting {what}: {e}"))?;
    let took = start.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(took)
}

/// The server must answer 200 with `release` once a contender has exited.
fn verify(port: u16, release: &str, after: &str) -> Result<(), String> {
    let (code, body) = get_health(port).map_err(|e| format!("after {after}: {e}"))?;
    if code != 200 || body.trim() != release {
        return Err(format!(
            "after {after}: GET /health answered {code} {:?}, expected 200 {release:?}",
            body.trim()
        ));
    }
    Ok(())
}

pub fn run(args: &Args) -> Result<(), String> {
    let bench = std::env::current_exe().map_err(|e| format!("locating myself: {e}"))?;
    let rewind = match &args.rewind {
        Some(p) => p.clone(),
        None => bench
            .parent()
            .ok_or("this executable has no parent directory")?
            .join("rewind"),
    };
    if !rewind.is_file() {
        return Err(format!(
            "no rewind binary at {}; build it (cargo build --release -p rewind) or pass --rewind PATH",
            rewind.display()
        ));
    }
    match Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => {}
        _ => {
            return Err(
                "curl not found: the shell floor polls the ready URL with curl; install it".into(),
            );
        }
    }

    let w = Workdir::create(args.keep)?;
    let s = set_up(&w, &bench, &args.state_sync)?;
    let rewind_cmd = |extra: &[&str]| {
        let mut c = Command::new(&rewind);
        c.arg("-q").arg("-c").arg(&s.config).args(extra);
        c
    };
    eprintln!(
        "setup in {}: deploying v1 and v2 with rewind",
        w.dir.display()
    );
    for v in ["v1", "v2"] {
        let art = w.dir.join("artifacts").join(v);
        let artifact = format!("web={}", path_str(&art)?);
        timed(
            &mut rewind_cmd(&["deploy", v, "--artifact", &artifact]),
            &format!("rewind deploy {v}"),
        )?;
        verify(s.port, v, &format!("rewind deploy {v}"))?;
    }

    let mut current = "v2";
    let mut samples: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    // Round 0 is a warm-up (page cache, SQLite file, first server start), not measured.
    // Rounds alternate the order (AB, BA, AB …), so each contender runs as often first as
    // second and goes as often to v1 as to v2, while every run really switches.
    for round in 0..=args.runs {
        let order = if round % 2 == 0 {
            [Contender::Shell, Contender::Rewind]
        } else {
            [Contender::Rewind, Contender::Shell]
        };
        let mut line = Vec::new();
        for c in order {
            let target = if current == "v1" { "v2" } else { "v1" };
            let what = format!("{} to {target}", c.label());
            let took = match c {
                Contender::Shell => timed(Command::new("bash").arg(&s.floor).arg(target), &what)?,
                Contender::Rewind => timed(
                    &mut rewind_cmd(&["rollback", "--to", target, "--yes", "--force"]),
                    &what,
                )?,
            };
            verify(s.port, target, &what)?;
            current = target;
            let ms = took.as_secs_f64() * 1000.0;
            line.push(format!("{} {ms:.1} ms", c.label()));
            if round > 0 {
                samples[c as usize].push(ms);
            }
        }
        if round == 0 {
            eprintln!("warm-up: {}", line.join(", "));
        } else {
            eprintln!("run {round}/{}: {}", args.runs, line.join(", "));
        }
    }

    let shell = Summary::of(&samples[Contender::Shell as usize]);
    let rw = Summary::of(&samples[Contender::Rewind as usize]);
    let ratio = rw.median / shell.median;
    let met = ratio <= GOAL;
    if args.json {
        let entry = |c: Contender, s: &Summary| {
            json!({
                "contender": c.label(),
                "runs": s.runs,
                "median_ms": s.median,
                "p90_ms": s.p90,
                "min_ms": s.min,
                "max_ms": s.max,
                "samples_ms": samples[c as usize],
            })
        };
        let out = json!({
            "benchmark": "rollback",
            "ready_poll": "curl every 10 ms",
            "contenders": [entry(Contender::Shell, &shell), entry(Contender::Rewind, &rw)],
            "ratio_rewind_over_shell_median": ratio,
            "goal_max_ratio": GOAL,
            "goal_met": met,
        });
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
    } else {
        println!("| contender | runs | median ms | p90 ms | min ms |");
        println!("|---|---:|---:|---:|---:|");
        for (c, s) in [(Contender::Shell, &shell), (Contender::Rewind, &rw)] {
            println!(
                "| {} | {} | {:.1} | {:.1} | {:.1} |",
                c.label(),
                s.runs,
                s.median,
                s.p90,
                s.min
            );
        }
        println!();
        println!("rewind/shell (medians): {ratio:.2}×");
        println!(
            "Goal: rewind rollback ≤ {GOAL}× the shell floor (median): {}",
            if met { "met" } else { "NOT met" }
        );
        println!(
            "(shell floor: ln -sfn + mv -T, restart.sh, ready polled with curl every 10 ms; \
             1 warm-up round unmeasured; order alternates AB/BA)"
        );
    }
    Ok(())
}
