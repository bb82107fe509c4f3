//! Just enough HTTP/1.x for curl, reqwest and Prometheus: one request at a time per
//! connection, keep-alive when the client wants it, always a `Content-Length`.

use std::io::{self, BufRead, Read, Write};

/// Request head size limit (request line plus headers).
const MAX_HEAD: u64 = 16 * 1024;
/// Largest request body read and thrown away.
const MAX_BODY: u64 = 1024 * 1024;

#[derive(Debug, PartialEq)]
pub struct Request {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    /// Whether the connection may carry another request after the answer.
    pub keep_alive: bool,
}

/// Why no request could be read; the answer to give before closing, if any.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed, timed out or failed: close without answering.
    Gone,
    /// A malformed or unsupported request: answer with this status and close.
    Reject(u16, &'static str),
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        ReadError::Gone
    }
}

/// Reads one request head (and discards any body). `Ok(None)` means the peer closed the
/// connection cleanly between requests.
pub fn read_request(r: &mut impl BufRead) -> Result<Option<Request>, ReadError> {
    let mut budget = MAX_HEAD;
    let mut line = String::new();
    // The request line; empty lines before it are ignored (RFC 9112, section 2.2).
    loop {
        line.clear();
        let n = read_line(r, &mut line, &mut budget)?;
        if n == 0 {
            return Ok(None);
        }
        if !line.trim_end_matches(['\r', '\n']).is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Reject(400, "malformed request line"));
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => {
            return Err(ReadError::Reject(
                505,
                "only HTTP/1.0 and HTTP/1.1 are supported",
            ));
        }
    };
    let method = method.to_string();
    let path = target.split(['?', '#']).next().unwrap_or("").to_string();

    let mut keep_alive = !http10;
    let mut content_length: u64 = 0;
    loop {
        line.clear();
        if read_line(r, &mut line, &mut budget)? == 0 {
            return Err(ReadError::Gone);
        }
        let header = line.trim_end_matches(['\r', '\n']);
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            return Err(ReadError::Reject(400, "malformed header line"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && http10 {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .parse()
                .map_err(|_| ReadError::Reject(400, "bad Content-Length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ReadError::Reject(
                501,
                "request bodies with Transfer-Encoding are not supported",
            ));
        }
    }
    if content_length > MAX_BODY {
        return Err(ReadError::Reject(413, "request body too large"));
    }
    if content_length > 0 {
        let copied = io::copy(&mut r.take(content_length), &mut io::sink())?;
        if copied != content_length {
            return Err(ReadError::Gone);
        }
    }
    Ok(Some(Request {
        method,
        path,
        keep_alive,
    }))
}

/// Reads one line within what is left of the head budget.
fn read_line(
    r: &mut impl BufRead,
    line: &mut String,
    budget: &mut u64,
) -> Result<usize, ReadError> {
    if *budget == 0 {
        return Err(ReadError::Reject(431, "request head too large"));
    }
    let n = r.take(*budget).read_line(line).map_err(|e| {
        if e.kind() == io::ErrorKind::InvalidData {
            ReadError::Reject(400, "request head is not UTF-8")
        } else {
            ReadError::Gone
        }
    })?;
    *budget -= n as u64;
    if n > 0 && !line.ends_with('\n') {
        return Err(if *budget == 0 {
            ReadError::Reject(431, "request head too large")
        } else {
            ReadError::Gone
        });
    }
    Ok(n)
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// One answer. `head_only` leaves out the body (for `HEAD`) but keeps its `Content-Length`.
pub struct Response<'a> {
    pub status: u16,
    pub headers: Vec<(&'static str, &'a str)>,
    pub body: Vec<u8>,
}

impl Response<'_> {
    pub fn write_to(
        &self,
        w: &mut impl Write,
        keep_alive: bool,
        head_only: bool,
    ) -> io::Result<()> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        write!(out, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status))?;
        for (name, value) in &self.headers {
            write!(out, "{name}: {value}\r\n")?;
        }
        write!(out, "Content-Length: {}\r\n", self.body.len())?;
        let connection = if keep_alive { "keep-alive" } else { "close" };
        write!(out, "Connection: {connection}\r\n\r\n")?;
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        w.write_all(&out)?;
        w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Option<Request>, ReadError> {
        read_request(&mut io::Cursor::new(text.as_bytes()))
    }

    #[test]
    fn keep_alive_defaults() {
        let r = read("GET /health?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.keep_alive),
            ("GET", "/health", true)
        );
        let r = read("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!r.keep_alive);
        let r = read("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!r.keep_alive);
        let r = read("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.keep_alive);
    }

    #[test]
    fn pipelined_requests_and_bodies() {
        let mut c = io::Cursor::new(
            b"\r\nPOST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n".to_vec(),
        );
        assert_eq!(read_request(&mut c).unwrap().unwrap().path, "/a");
        assert_eq!(read_request(&mut c).unwrap().unwrap().path, "/b");
        assert!(read_request(&mut c).unwrap().is_none());
    }

    #[test]
    fn rejects() {
        for (text, status) in [
            ("GARBAGE\r\n\r\n", 400),
            ("GET / HTTP/2.0\r\n\r\n", 505),
            ("GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        ] {
            match read(text) {
                Err(ReadError::Reject(s, _)) => assert_eq!(s, status, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert!(matches!(read(&huge), Err(ReadError::Reject(431, _))));
        assert!(matches!(
            read("GET / HTTP/1.1\r\nHost"),
            Err(ReadError::Gone)
        ));
    }
}
