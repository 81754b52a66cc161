//! socket.go's raw HTTP GET, made safe to point at anything: the target as
//! curl users type it (`http://host:port/path`) or as `HOST[:PORT] [PATH]`,
//! a path that cannot smuggle a header or a second request, one deadline
//! for the whole exchange, and a response that ends at its
//! `Content-Length` even if the server keeps the connection open.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::time::Instant;

use super::{ClientError, READ_CHUNK, RetryPolicy, dial, split_host_port, write_with_retry};
use crate::net_error::{self, Op};

/// Bytes of response head (status line and headers) read for
/// `Content-Length` at most; a longer head is copied through and the
/// response read until the server closes.
const MAX_HEAD: usize = 64 * 1024;

/// A GET, checked before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetRequest {
    /// The host to connect to (an IPv6 address without brackets).
    pub host: String,
    /// The port (80 unless given).
    pub port: u16,
    /// The request target: starts with `/`, percent-encoded, no control
    /// characters.
    pub path: String,
}

/// Whether a path byte goes on the request line as it is: RFC 3986's
/// unreserved and sub-delimiter characters, `:`, `@`, `/` and `?`.
fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?".contains(&b)
}

/// `raw` as a request target: control characters refused (a `\r\n` would
/// end the request line and start a header of the caller's choosing), every
/// other byte that may not appear on a request line percent-encoded (a
/// space would make the request malformed), `%XX` kept.
fn encode_path(raw: &str) -> Result<String, String> {
    let bytes = raw.as_bytes();
    if let Some(&c) = bytes.iter().find(|&&b| b < 0x20 || b == 0x7f) {
        return Err(format!(
            "the path contains a control character ({}); refusing to send it",
            String::from_utf8_lossy(&crate::output::text::escape(&[c]))
        ));
    }
    let mut path = String::with_capacity(bytes.len() + 1);
    if !raw.starts_with('/') {
        path.push('/');
    }
    for (i, &b) in bytes.iter().enumerate() {
        let escape_kept = b == b'%'
            && bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
        if is_path_char(b) || escape_kept {
            path.push(char::from(b));
        } else {
            let _ = write!(path, "%{b:02X}");
        }
    }
    Ok(path)
}

impl GetRequest {
    /// `http://HOST[:PORT][/PATH]` (no `PATH` argument then), or
    /// `HOST[:PORT]` and an optional `PATH`.
    pub fn parse(target: &str, path: Option<&str>) -> Result<GetRequest, String> {
        let (authority, url_path) = match target.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => {
                let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                let (authority, tail) = rest.split_at(end);
                // The fragment is the browser's, never sent.
                let tail = tail.split('#').next().unwrap_or_default();
                (authority, (!tail.is_empty()).then_some(tail))
            }
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
                return Err("https is not supported: tcp_client speaks plain HTTP over TCP".into());
            }
            Some((scheme, _)) => {
                return Err(format!(
                    "unsupported scheme `{scheme}://`: give http://HOST[:PORT]/PATH or HOST[:PORT] [PATH]"
                ));
            }
            None => (target, None),
        };
        if authority.contains('@') {
            return Err("user names and passwords in the URL are not supported".into());
        }
        if authority.is_empty() {
            return Err(format!("no host in `{target}`"));
        }
        let (host, port) = split_host_port(authority, 80)?;
        let raw = match (url_path, path) {
            (Some(_), Some(_)) => {
                return Err("the URL has a path already: give the path in the URL or as PATH, not both".into());
            }
            (Some(p), None) | (None, Some(p)) => p,
            (None, None) => "/",
        };
        Ok(GetRequest {
            host,
            port,
            path: encode_path(raw)?,
        })
    }

    /// The `Host` header's value.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The request, as sent.
    pub fn request(&self) -> String {
        format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.path,
            self.host_header()
        )
    }
}

/// Where the head of a response ends, and the length of the whole response
/// if the head says (`Content-Length`, or no body at all for 204 and 304).
#[derive(Default)]
struct Head {
    bytes: Vec<u8>,
    /// Parsed (or given up on): nothing more to learn.
    done: bool,
}

impl Head {
    /// Takes the next bytes of the response; once the head is complete,
    /// returns `Some(total)` if the response's length is known.
    fn feed(&mut self, chunk: &[u8]) -> Option<u64> {
        if self.done {
            return None;
        }
        let before = self.bytes.len();
        self.bytes.extend_from_slice(chunk);
        // Search from a little before the new bytes, for a split "\r\n\r\n".
        let from = before.saturating_sub(3);
        let Some(at) = self.bytes[from..].windows(4).position(|w| w == b"\r\n\r\n") else {
            if self.bytes.len() > MAX_HEAD {
                self.done = true;
                self.bytes = Vec::new();
            }
            return None;
        };
        self.done = true;
        let head_len = from + at + 4;
        let head = String::from_utf8_lossy(&self.bytes[..head_len]).into_owned();
        self.bytes = Vec::new();
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split_whitespace().nth(1)?.parse::<u16>().ok()?;
        if status == 204 || status == 304 {
            return Some(head_len as u64);
        }
        let length = lines.find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<u64>().ok())?
        })?;
        Some(head_len as u64 + length)
    }
}

/// socket.go, done right: sends `req` and copies the raw response to `out`
/// in 4096-byte reads until the server closes or `Content-Length` bytes of
/// body have come. `policy.timeout` bounds the whole exchange: connecting,
/// sending and every byte of the response. Returns the bytes copied.
pub fn http_get(req: &GetRequest, policy: &RetryPolicy, out: &mut impl Write) -> Result<u64, ClientError> {
    let policy = RetryPolicy {
        deadline: Some(Instant::now() + policy.timeout),
        ..policy.clone()
    };
    let timed_out = || ClientError::TimedOut {
        what: "the GET",
        after: policy.timeout,
        attempts: 1,
    };
    let mut stream = dial(&req.host, req.port, &policy)?;
    write_with_retry(&mut stream, req.request().as_bytes(), &policy).map_err(|e| match e {
        ClientError::TimedOut { .. } => timed_out(),
        other => other,
    })?;
    let mut buf = [0u8; READ_CHUNK];
    let mut head = Head::default();
    let mut length: Option<u64> = None;
    let mut total = 0u64;
    while length.is_none_or(|l| total < l) {
        let bound = policy.attempt_timeout().ok_or_else(timed_out)?;
        stream.set_read_timeout(Some(bound)).map_err(ClientError::Connection)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if length.is_none() {
                    length = head.feed(&buf[..n]);
                }
                let n = length.map_or(n, |l| (l - total).min(n as u64) as usize);
                out.write_all(&buf[..n]).map_err(ClientError::Local)?;
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if net_error::is_timeout(Op::Io, &e) => return Err(timed_out()),
            Err(e) => return Err(ClientError::Connection(e)),
        }
    }
    out.flush().map_err(ClientError::Local)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(target: &str, path: Option<&str>) -> Result<GetRequest, String> {
        GetRequest::parse(target, path)
    }

    #[test]
    fn targets_as_curl_users_type_them() {
        let r = parse("http://127.0.0.1:8080/a/b?c=d#frag", None).expect("url");
        assert_eq!(
            (r.host.as_str(), r.port, r.path.as_str()),
            ("127.0.0.1", 8080, "/a/b?c=d")
        );
        assert_eq!(
            r.request(),
            "GET /a/b?c=d HTTP/1.0\r\nHost: 127.0.0.1:8080\r\nConnection: close\r\n\r\n"
        );
        let r = parse("HTTP://example.com", None).expect("url");
        assert_eq!((r.port, r.path.as_str()), (80, "/"));
        assert!(r.request().contains("\r\nHost: example.com\r\n"));
        let r = parse("http://[::1]:81?q", None).expect("url");
        assert_eq!((r.host.as_str(), r.path.as_str()), ("::1", "/?q"));
        assert!(r.request().contains("\r\nHost: [::1]:81\r\n"));
        let r = parse("example.com:8000", Some("status")).expect("host and path");
        assert_eq!(r.path, "/status");
        assert!(
            parse("https://example.com/", None)
                .expect_err("https")
                .contains("https")
        );
        assert!(parse("ftp://example.com/", None).is_err());
        assert!(parse("http://u:p@example.com/", None).is_err());
        assert!(
            parse("http://h/x", Some("/y"))
                .expect_err("two paths")
                .contains("not both")
        );
    }

    #[test]
    fn paths_are_encoded_or_refused() {
        let path = |p: &str| parse("h", Some(p)).map(|r| r.path);
        assert_eq!(path("/a b"), Ok("/a%20b".into()));
        assert_eq!(
            path("/ok%20already/é\"<>#"),
            Ok("/ok%20already/%C3%A9%22%3C%3E%23".into())
        );
        assert_eq!(path("/100%"), Ok("/100%25".into()));
        for bad in [
            "/a\r\nX-Injected: 1",
            "/a\nGET /second HTTP/1.0",
            "/nul\0",
            "/del\x7f",
            "/tab\t",
        ] {
            let err = path(bad).expect_err(bad);
            assert!(err.starts_with("the path contains a control character"), "{err}");
        }
    }

    #[test]
    fn response_length_from_the_head() {
        let mut h = Head::default();
        assert_eq!(h.feed(b"HTTP/1.1 200 OK\r\nContent-Le"), None);
        assert_eq!(h.feed(b"ngth: 5\r\n\r"), None);
        assert_eq!(h.feed(b"\nhel"), Some(38 + 5));
        let mut h = Head::default();
        assert_eq!(h.feed(b"HTTP/1.0 304 Not Modified\r\nX: y\r\n\r\n"), Some(35));
        let mut h = Head::default();
        assert_eq!(h.feed(b"HTTP/1.0 200 OK\r\n\r\nbody until close"), None);
    }
}
