//! Error text people can read at 3 a.m.: the cause that matters, once.
//!
//! Network clients wrap the operating system's error several times over ("error sending
//! request for url (…): client error (Connect): tcp connect error: Connection refused (os
//! error 111)"), and repeating that on every line of a run buries the one fact that matters.

use std::error::Error;
use std::io::ErrorKind;

/// The innermost cause of a network error in a few words: "connection refused", "connection
/// reset", "timed out", "host unreachable", … when an operating-system error is in the chain;
/// otherwise the deepest cause's own text (a DNS failure, a TLS failure), without the layers
/// that only repeat the URL.
pub fn network(err: &(dyn Error + 'static)) -> String {
    let mut deepest: &(dyn Error + 'static) = err;
    let mut cur: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(words) = io_words(io.kind())
        {
            return words.to_string();
        }
        deepest = e;
        cur = e.source();
    }
    let text = deepest.to_string();
    if text.is_empty() {
        err.to_string()
    } else {
        text
    }
}

fn io_words(kind: ErrorKind) -> Option<&'static str> {
    Some(match kind {
        ErrorKind::ConnectionRefused => "connection refused (nothing listens there)",
        ErrorKind::ConnectionReset => "connection reset by the server",
        ErrorKind::ConnectionAborted => "connection aborted",
        ErrorKind::NotConnected => "not connected",
        ErrorKind::TimedOut => "timed out",
        ErrorKind::HostUnreachable => "host unreachable",
        ErrorKind::NetworkUnreachable => "network unreachable",
        ErrorKind::AddrNotAvailable => "address not available",
        ErrorKind::PermissionDenied => "permission denied",
        ErrorKind::UnexpectedEof => "the server closed the connection early",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrap(&'static str, Box<dyn Error + Send + Sync>);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(self.1.as_ref())
        }
    }

    #[test]
    fn finds_the_operating_system_error_under_the_layers() {
        let io = std::io::Error::from(ErrorKind::ConnectionRefused);
        let e = Wrap(
            "error sending request for url (http://x/)",
            Box::new(Wrap("client error (Connect)", Box::new(io))),
        );
        assert_eq!(network(&e), "connection refused (nothing listens there)");
    }

    #[test]
    fn otherwise_the_deepest_cause() {
        let e = Wrap(
            "error sending request for url (http://nowhere.invalid/)",
            Box::new(std::io::Error::other(
                "failed to lookup address information: Name or service not known",
            )),
        );
        assert_eq!(
            network(&e),
            "failed to lookup address information: Name or service not known"
        );
    }
}
