//! The "small HTTP server" the benchmark's restart script starts: one thread, std::net,
//! `GET /health` answers 200 with `DIR/VERSION` read afresh for every request.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct Args {
    pub port: u16,
    pub dir: PathBuf,
    pub pidfile: Option<PathBuf>,
}

pub fn run(args: &Args) -> Result<(), String> {
    let dir = std::path::absolute(&args.dir)
        .map_err(|e| format!("resolving {}: {e}", args.dir.display()))?;
    // The parent is taken literally (not through the symlink): for `ROOT/current` the pid
    // file is `ROOT/server.pid`, not `ROOT/releases/server.pid`.
    let pidfile = match &args.pidfile {
        Some(p) => p.clone(),
        None => dir
            .parent()
            .ok_or_else(|| format!("{} has no parent; pass --pidfile", dir.display()))?
            .join("server.pid"),
    };
    let listener = bind(args.port)?;
    write_pidfile(&pidfile)?;
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                if let Err(e) = handle(stream, &dir) {
                    eprintln!("rewind-bench serve: {e}");
                }
            }
            Err(e) => eprintln!("rewind-bench serve: accept: {e}"),
        }
    }
    Ok(())
}

/// Binds 127.0.0.1:port, retrying for a while if the previous server still holds it.
fn bind(port: u16) -> Result<TcpListener, String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(format!("binding 127.0.0.1:{port}: {e}")),
        }
    }
}

/// Written to a temporary file and renamed, so a reader never sees a half-written pid.
fn write_pidfile(path: &Path) -> Result<(), String> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

fn handle(mut stream: TcpStream, dir: &Path) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Read the request head; the body (if any) is ignored.
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = if target != "/health" {
        ("404 Not Found", "not found\n".to_string())
    } else if method != "GET" && method != "HEAD" {
        ("405 Method Not Allowed", "GET only\n".to_string())
    } else {
        match std::fs::read_to_string(dir.join("VERSION")) {
            Ok(v) => ("200 OK", v),
            Err(e) => ("503 Service Unavailable", format!("VERSION: {e}\n")),
        }
    };
    let mut resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        resp.push_str(&body);
    }
    stream.write_all(resp.as_bytes())?;
    stream.flush()
}

/// A blocking `GET /health` against 127.0.0.1:port: (status code, body).
pub fn get_health(port: u16) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("connecting to 127.0.0.1:{port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("sending request: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("reading response: {e}"))?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed response: {resp:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("malformed status line: {head:?}"))?;
    Ok((code, body.to_string()))
}
