//! Starts the real binary on a free port against a temporary release directory and talks
//! to it over plain TCP.

// The test starts the service directly (clippy.toml is for rewind itself).
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_demo-service");

/// A running service; killed when dropped.
struct Service {
    child: Child,
    port: u16,
    pidfile: PathBuf,
    _root: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary root with `releases/<name>/demo.toml` for each release.
fn releases(list: &[(&str, &str)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (name, toml) in list {
        let dir = root.path().join("releases").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("demo.toml"), toml).unwrap();
    }
    root
}

fn start(toml: &str) -> Service {
    let root = releases(&[("v1", toml)]);
    let dir = root.path().join("releases/v1");
    start_in(root, &dir)
}

/// Starts on port 0 and learns the port from the start-up log line.
fn start_in(root: tempfile::TempDir, dir: &Path) -> Service {
    let pidfile = root.path().join("demo.pid");
    let mut child = Command::new(BIN)
        .args(["--port", "0", "--dir"])
        .arg(dir)
        .arg("--pidfile")
        .arg(&pidfile)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stderr).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let _ = tx.send(first);
        for _ in lines {} // keep the pipe drained
    });
    let line = match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            panic!("demo-service did not log its start-up line");
        }
    };
    let Some(port) = line
        .strip_prefix("demo-service ")
        .and_then(|rest| rest.split(" listening on 127.0.0.1:").nth(1))
        .and_then(|p| p.parse().ok())
    else {
        let _ = child.kill();
        panic!("unexpected start-up line: {line:?}");
    };
    Service {
        child,
        port,
        pidfile,
        _root: root,
    }
}

/// Runs the binary against a release that should not start; returns its exit status,
/// stderr and how long it took.
fn run_to_exit(toml: &str) -> (ExitStatus, String, Duration) {
    let root = releases(&[("v1", toml)]);
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(["--port", "0", "--dir"])
        .arg(root.path().join("releases/v1"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("demo-service kept running");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = started.elapsed();
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    )
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// Reads one response, framed by its Content-Length (which every response must have).
fn read_reply(r: &mut impl BufRead, head_only: bool) -> Reply {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = BTreeMap::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(
            line.ends_with("\r\n"),
            "header line not CRLF-terminated: {line:?}"
        );
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap();
        headers.insert(name.to_ascii_lowercase(), value.trim().to_string());
    }
    let length: usize = headers
        .get("content-length")
        .expect("every response has a Content-Length")
        .parse()
        .unwrap();
    let mut body = vec![0; if head_only { 0 } else { length }];
    r.read_exact(&mut body).unwrap();
    Reply {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// One request on its own connection, which the server must then close.
fn get(port: u16, path: &str) -> Reply {
    let mut s = connect(port);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let reply = read_reply(&mut r, false);
    assert_eq!(reply.header("connection"), Some("close"));
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "bytes after the body: {rest:?}");
    reply
}

#[test]
fn healthy_release_answers_with_its_version() {
    let svc = start("version = \"v1.4\"\nbase-latency-ms = 1\n");
    let r = get(svc.port, "/health");
    assert_eq!((r.status, r.body.as_str()), (200, "ok v1.4"));
    assert_eq!(r.header("x-release"), Some("v1.4"));

    let r = get(svc.port, "/checkout");
    assert_eq!((r.status, r.body.as_str()), (200, "order placed"));
    assert_eq!(r.header("x-release"), Some("v1.4"));

    let r = get(svc.port, "/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-release"), Some("v1.4"));

    let pid = std::fs::read_to_string(&svc.pidfile).unwrap();
    assert_eq!(pid.trim(), svc.child.id().to_string());
}

#[test]
fn version_defaults_to_the_directory_name_and_the_symlink_is_resolved_once() {
    let root = releases(&[("v1", ""), ("v2", "")]);
    let current = root.path().join("current");
    std::os::unix::fs::symlink("releases/v1", &current).unwrap();
    let svc = start_in(root, &current);
    assert_eq!(get(svc.port, "/health").body, "ok v1");

    // Swapping `current` does not change a running service, as with a real app.
    let tmp = svc._root.path().join("current.tmp");
    std::os::unix::fs::symlink("releases/v2", &tmp).unwrap();
    std::fs::rename(&tmp, &current).unwrap();
    let r = get(svc.port, "/health");
    assert_eq!(r.body, "ok v1");
    assert_eq!(r.header("x-release"), Some("v1"));
}

#[test]
fn error_rate_one_fails_every_checkout() {
    let svc = start("version = \"v2\"\nerror-rate = 1.0\nbase-latency-ms = 1\n");
    for _ in 0..5 {
        let r = get(svc.port, "/checkout");
        assert_eq!(r.status, 500);
        assert_eq!(r.header("x-release"), Some("v2"));
    }
    assert_eq!(get(svc.port, "/health").status, 200);
}

#[test]
fn broken_checkout_keeps_health_green() {
    let svc = start("checkout-broken = true\nbase-latency-ms = 1\n");
    let r = get(svc.port, "/checkout");
    assert_eq!((r.status, r.body.as_str()), (500, "checkout unavailable"));
    let r = get(svc.port, "/health");
    assert_eq!((r.status, r.body.as_str()), (200, "ok v1"));
}

#[test]
fn slowdown_makes_checkout_measurably_slower() {
    fn median_ms(port: u16) -> f64 {
        let mut times: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(get(port, "/checkout").status, 200);
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times[2]
    }
    let fast = start("base-latency-ms = 40\n");
    let slow = start("base-latency-ms = 40\nslowdown = 2.0\n");
    let (fast_ms, slow_ms) = (median_ms(fast.port), median_ms(slow.port));
    // Expected medians: 40 ms and 120 ms.
    assert!(fast_ms >= 20.0, "fast median {fast_ms:.1} ms");
    assert!(
        slow_ms > fast_ms * 1.8,
        "slow median {slow_ms:.1} ms vs fast median {fast_ms:.1} ms"
    );
}

#[test]
fn fail_start_exits_1_quickly() {
    let (status, stderr, elapsed) = run_to_exit("version = \"v2\"\nfail-start = true\n");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(
        stderr.contains("v2") && stderr.contains("fail-start"),
        "{stderr}"
    );
}

#[test]
fn bad_demo_toml_exits_2_naming_file_and_key() {
    for (toml, needle) in [
        ("error-rate = \"lots\"\n", "`error-rate`"),
        ("slowdown = -0.5\n", "`slowdown`"),
        ("checkout-broken = \"yes\"\n", "`checkout-broken`"),
        ("eror-rate = 0.1\n", "`eror-rate`"),
        ("error-rate = \n", "TOML"),
    ] {
        let (status, stderr, _) = run_to_exit(toml);
        assert_eq!(status.code(), Some(2), "{toml:?}: {stderr}");
        assert!(stderr.contains("demo.toml"), "{toml:?}: {stderr}");
        assert!(stderr.contains(needle), "{toml:?}: {stderr}");
    }
}

#[test]
fn missing_release_directory_exits_2() {
    let out = Command::new(BIN)
        .args(["--port", "0", "--dir", "/nonexistent/demo-service-release"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/demo-service-release"));
}

#[test]
fn keep_alive_and_head() {
    let svc = start("version = \"v3\"\nbase-latency-ms = 1\n");
    let mut s = connect(svc.port);
    let mut r = BufReader::new(s.try_clone().unwrap());
    for path in ["/health", "/checkout", "/health"] {
        write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let reply = read_reply(&mut r, false);
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.header("connection"), Some("keep-alive"));
    }
    write!(s, "HEAD /health HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let reply = read_reply(&mut r, true);
    assert_eq!(reply.header("content-length"), Some("5"));
    // Pipelined: both answers come back in order on the same connection.
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: test\r\n\r\nGET /nope HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    assert_eq!(read_reply(&mut r, false).body, "ok v3");
    assert_eq!(read_reply(&mut r, false).status, 404);
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

/// One sample line of the text exposition format: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("bad metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        loop {
            let start = match chars.peek() {
                Some((_, '}')) => {
                    let (i, _) = chars.next().unwrap();
                    rest = &after[i + 1..];
                    break;
                }
                Some((i, _)) => *i,
                None => return Err("unterminated labels".into()),
            };
            let eq = after[start..].find('=').ok_or("label without =")? + start;
            let label = &after[start..eq];
            if label.is_empty()
                || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || label.starts_with(|c: char| c.is_ascii_digit())
            {
                return Err(format!("bad label name {label:?}"));
            }
            while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value not quoted".into());
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        _ => return Err("bad escape".into()),
                    },
                    Some('\n') | None => return Err("unterminated label value".into()),
                    Some(c) => value.push(c),
                }
            }
            if labels.insert(label.to_string(), value).is_some() {
                return Err(format!("duplicate label {label}"));
            }
            if chars.peek().map(|(_, c)| *c) == Some(',') {
                chars.next();
            }
        }
    }
    let mut fields = rest
        .strip_prefix(' ')
        .ok_or("no space before value")?
        .split(' ');
    let value = match fields.next().ok_or("no value")? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v if v.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => {
            v.parse().map_err(|_| format!("bad value {v:?}"))?
        }
        v => return Err(format!("bad value {v:?}")),
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| "bad timestamp")?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok((name.to_string(), labels, value))
}

#[test]
fn metrics_are_valid_exposition_text() {
    let svc = start("version = \"v\\\"q\"\nbase-latency-ms = 1\n");
    for _ in 0..3 {
        assert_eq!(get(svc.port, "/checkout").status, 200);
    }
    for _ in 0..2 {
        assert_eq!(get(svc.port, "/health").status, 200);
    }
    get(svc.port, "/nope");
    let r = get(svc.port, "/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        r.header("content-type")
    );
    assert!(r.body.ends_with('\n'));

    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps = Vec::new();
    let mut samples = Vec::new();
    for line in r.body.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, text) = (parts.next(), parts.next(), parts.next());
            match (kind, name, text) {
                (Some("HELP"), Some(name), Some(_)) => helps.push(name.to_string()),
                (Some("TYPE"), Some(name), Some(t)) => {
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "{line}"
                    );
                    assert!(types.insert(name.into(), t.into()).is_none(), "{line}");
                }
                _ => panic!("bad comment line {line:?}"),
            }
            continue;
        }
        assert!(!line.trim().is_empty(), "empty line in exposition");
        let sample = parse_sample(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                sample
                    .0
                    .strip_suffix(s)
                    .filter(|base| types.get(*base).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(&sample.0);
        assert!(types.contains_key(family), "sample before its TYPE: {line}");
        samples.push(sample);
    }
    assert_eq!(types["demo_http_requests_total"], "counter");
    assert_eq!(types["demo_http_request_duration_seconds"], "histogram");
    assert!(helps.contains(&"demo_http_requests_total".to_string()));
    assert!(helps.contains(&"demo_http_request_duration_seconds".to_string()));

    let find = |name: &str, want: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .find(|(n, labels, _)| {
                n == name
                    && want
                        .iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(v))
            })
            .unwrap_or_else(|| panic!("no {name} {want:?} in\n{}", r.body))
            .2
    };
    let release = "v\"q";
    let checkout = [("path", "/checkout"), ("release", release)];
    assert_eq!(
        find(
            "demo_http_requests_total",
            &[("path", "/checkout"), ("code", "200"), ("release", release)]
        ),
        3.0
    );
    assert_eq!(
        find(
            "demo_http_requests_total",
            &[("path", "/checkout"), ("code", "500"), ("release", release)]
        ),
        0.0
    );
    assert_eq!(
        find(
            "demo_http_requests_total",
            &[("path", "/health"), ("code", "200"), ("release", release)]
        ),
        2.0
    );
    assert_eq!(
        find(
            "demo_http_requests_total",
            &[("path", "other"), ("code", "404"), ("release", release)]
        ),
        1.0
    );
    assert_eq!(
        find("demo_http_request_duration_seconds_count", &checkout),
        3.0
    );
    assert!(find("demo_http_request_duration_seconds_sum", &checkout) > 0.0);

    // Buckets are cumulative and end at +Inf = _count.
    let mut buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == "demo_http_request_duration_seconds_bucket"
                && l.get("path").map(String::as_str) == Some("/checkout")
        })
        .map(|(_, l, v)| {
            let le = match l["le"].as_str() {
                "+Inf" => f64::INFINITY,
                le => le.parse().unwrap(),
            };
            (le, *v)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() >= 5);
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 3.0));
}

#[test]
fn exposition_parser_rejects_garbage() {
    for bad in [
        "1abc 1",
        "a{b=\"c} 1",
        "a{b=c} 1",
        "a 1 2 3",
        "a x",
        "a{b=\"\\x\"} 1",
    ] {
        assert!(parse_sample(bad).is_err(), "{bad:?}");
    }
    let (name, labels, v) = parse_sample("a_b{x=\"1\",y=\"q\\\"\",} 2.5").unwrap();
    assert_eq!(
        (name.as_str(), labels["y"].as_str(), v),
        ("a_b", "q\"", 2.5)
    );
}
