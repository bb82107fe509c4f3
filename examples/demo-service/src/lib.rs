//! `demo-service`: a small HTTP service whose behaviour comes from its release directory,
//! so that deploying a faulty release with rewind really changes what clients see. The
//! library form lets the `rewind` binary run it too (`rewind demo` needs nothing else built).

mod config;
mod http;
mod metrics;

use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use config::Behaviour;
use http::{ReadError, Response};
use metrics::Metrics;

const USAGE: &str = "\
usage: demo-service --port PORT --dir DIR [--bind ADDR] [--pidfile FILE]

  --port PORT      TCP port to listen on (0 picks a free one; the log line names it)
  --dir DIR        release directory to serve, e.g. <root>/current; resolved once at start-up
  --bind ADDR      address to listen on (default 127.0.0.1)
  --pidfile FILE   write the process id here once listening

DIR/demo.toml sets the release's behaviour: version, error-rate, slowdown,
base-latency-ms, fail-start, checkout-broken (all optional).";

/// Connections served at once; more are answered 503 and closed.
const MAX_CONNECTIONS: usize = 256;
/// How long an idle keep-alive connection, or a slow client, is kept.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Args {
    port: u16,
    dir: PathBuf,
    bind: String,
    pidfile: Option<PathBuf>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut port = None;
    let mut dir = None;
    let mut bind = "127.0.0.1".to_string();
    let mut pidfile = None;
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--port" => {
                let v = value()?;
                port = Some(
                    v.parse::<u16>()
                        .map_err(|_| format!("--port: `{v}` is not a port number"))?,
                );
            }
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--bind" => bind = value()?,
            "--pidfile" => pidfile = Some(PathBuf::from(value()?)),
            _ => return Err(format!("unknown argument `{arg}`")),
        }
    }
    Ok(Some(Args {
        port: port.ok_or("--port is required")?,
        dir: dir.ok_or("--dir is required")?,
        bind,
        pidfile,
    }))
}

/// Runs the service with these arguments (without the program name); returns when it fails
/// to start, or never.
pub fn run(args: impl Iterator<Item = String>) -> ExitCode {
    let args = match parse_args(args) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("demo-service: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Resolved once: a later swap of a `current` symlink takes effect on restart only.
    let dir = match std::fs::canonicalize(&args.dir) {
        Ok(dir) if dir.is_dir() => dir,
        Ok(dir) => {
            eprintln!("demo-service: {} is not a directory", dir.display());
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!(
                "demo-service: release directory {}: {e}",
                args.dir.display()
            );
            return ExitCode::from(2);
        }
    };
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unknown".to_string());
    let behaviour = match config::load(&dir, &dir_name) {
        Ok(b) => b,
        Err(msg) => {
            eprintln!("demo-service: {msg}");
            return ExitCode::from(2);
        }
    };
    if behaviour.fail_start {
        eprintln!(
            "demo-service: release {} refuses to start (fail-start = true in {})",
            behaviour.version,
            dir.join("demo.toml").display()
        );
        return ExitCode::from(1);
    }

    let listener = match TcpListener::bind((args.bind.as_str(), args.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "demo-service: cannot listen on {}:{}: {e}",
                args.bind, args.port
            );
            return ExitCode::from(1);
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("demo-service: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(pidfile) = &args.pidfile
        && let Err(e) = std::fs::write(pidfile, format!("{}\n", std::process::id()))
    {
        eprintln!("demo-service: writing pidfile {}: {e}", pidfile.display());
        return ExitCode::from(1);
    }
    eprintln!("demo-service {} listening on {addr}", behaviour.version);

    let state = Arc::new(State {
        metrics: Metrics::new(&behaviour.version),
        behaviour,
        connections: AtomicUsize::new(0),
    });
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                eprintln!("demo-service: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let state = Arc::clone(&state);
        if state.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            state.connections.fetch_sub(1, Ordering::SeqCst);
            reject(stream, &state, 503, "too many connections");
            continue;
        }
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                serve(stream, &state);
                state.connections.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            eprintln!("demo-service: cannot start a thread: {e}");
        }
    }
    ExitCode::SUCCESS
}

struct State {
    behaviour: Behaviour,
    metrics: Metrics,
    connections: AtomicUsize,
}

fn reject(mut stream: TcpStream, state: &State, status: u16, msg: &str) {
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let response = Response {
        status,
        headers: vec![
            ("Content-Type", "text/plain; charset=utf-8"),
            ("X-Release", &state.behaviour.version),
        ],
        body: msg.as_bytes().to_vec(),
    };
    let _ = response.write_to(&mut stream, false, false);
}

/// Answers requests on one connection until the client or an error closes it.
fn serve(stream: TcpStream, state: &State) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let request = match http::read_request(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) | Err(ReadError::Gone) => return,
            Err(ReadError::Reject(status, msg)) => {
                reject(writer, state, status, msg);
                return;
            }
        };
        let started = Instant::now();
        let (label, response) = route(state, &request.method, &request.path);
        state
            .metrics
            .record(label, response.status, started.elapsed());
        let head_only = request.method == "HEAD";
        if response
            .write_to(&mut writer, request.keep_alive, head_only)
            .is_err()
            || !request.keep_alive
        {
            return;
        }
    }
}

/// The answer to one request, and the bounded `path` label it is counted under.
fn route<'a>(state: &'a State, method: &str, path: &str) -> (&'static str, Response<'a>) {
    let b = &state.behaviour;
    let label = match path {
        "/health" => "/health",
        "/checkout" => "/checkout",
        "/metrics" => "/metrics",
        _ => "other",
    };
    let text = |status: u16, body: String| Response {
        status,
        headers: vec![
            ("Content-Type", "text/plain; charset=utf-8"),
            ("X-Release", &b.version),
        ],
        body: body.into_bytes(),
    };
    if label == "other" {
        return (label, text(404, format!("no such path: {path}")));
    }
    if method != "GET" && method != "HEAD" {
        let mut r = text(405, format!("{method} is not allowed on {path}"));
        r.headers.push(("Allow", "GET, HEAD"));
        return (label, r);
    }
    let response = match label {
        "/health" => text(200, format!("ok {}", b.version)),
        "/metrics" => Response {
            status: 200,
            headers: vec![
                ("Content-Type", METRICS_CONTENT_TYPE),
                ("X-Release", &b.version),
            ],
            body: state.metrics.render().into_bytes(),
        },
        _ => {
            std::thread::sleep(checkout_latency(b));
            if b.checkout_broken {
                text(500, "checkout unavailable".to_string())
            } else if uniform() < b.error_rate {
                text(500, "internal error".to_string())
            } else {
                text(200, "order placed".to_string())
            }
        }
    };
    (label, response)
}

/// `base-latency-ms × (1 + slowdown)` with log-normal jitter (median 1, σ = 0.25,
/// clamped to ±3σ so a single request never takes more than about twice the median).
fn checkout_latency(b: &Behaviour) -> Duration {
    let z = normal().clamp(-3.0, 3.0);
    let ms = b.base_latency_ms * (1.0 + b.slowdown) * (0.25 * z).exp();
    Duration::from_secs_f64(ms / 1000.0)
}

/// A SplitMix64 stream shared by all threads, seeded from the clock on first use.
fn next_u64() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    static SEEDED: std::sync::Once = std::sync::Once::new();
    SEEDED.call_once(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        STATE.store(
            nanos ^ u64::from(std::process::id()).rotate_left(32),
            Ordering::SeqCst,
        );
    });
    let mut z = STATE
        .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform in `[0, 1)`.
fn uniform() -> f64 {
    (next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Standard normal, by Box–Muller.
fn normal() -> f64 {
    let u1 = 1.0 - uniform(); // (0, 1], so the logarithm is finite
    let u2 = uniform();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
