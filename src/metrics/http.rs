//! The metrics endpoint's HTTP side, built to face hostile scrapers: one
//! thread with its own `mio::Poll` (never a reactor's), at most
//! [`MAX_SCRAPERS`] connections at once (when all are taken, a newcomer
//! takes the place of the oldest one that has not sent a whole request, so
//! idle connections cannot lock a real scraper out), a
//! request of at most [`MAX_REQUEST`] bytes, parsed by `httparse`, a
//! deadline of [`DEADLINE`] per connection for the request and the answer
//! both, and one answer per connection (`Connection: close`). Only
//! `GET /metrics` (and `HEAD`) is served; any other path is 404, any other
//! method 405.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::Source;

/// Connections served at once; more are closed at once.
pub const MAX_SCRAPERS: usize = 16;
/// The largest request taken (a request line and headers).
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long a connection may take to send its request and take the answer.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// The listener's token (outside the slab's keys).
const LISTENER: Token = Token(usize::MAX);

/// One scraper's connection.
#[derive(Debug)]
struct Scraper {
    stream: TcpStream,
    /// The request so far.
    request: Vec<u8>,
    /// The answer, once there is one.
    answer: Vec<u8>,
    /// Bytes of the answer sent.
    sent: usize,
    /// When the connection is closed, whatever it is doing.
    deadline: Instant,
}

/// Serves `source`'s metrics on `listener` from a thread of its own, for
/// the life of the process.
pub fn spawn(listener: std::net::TcpListener, source: Arc<dyn Source>) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(listener);
    let poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || run(poll, listener, source.as_ref()))?;
    Ok(())
}

/// The loop: accept, read requests, answer, close; forever.
fn run(mut poll: Poll, listener: TcpListener, source: &dyn Source) {
    let mut events = Events::with_capacity(64);
    let mut scrapers: Slab<Scraper> = Slab::with_capacity(MAX_SCRAPERS);
    loop {
        let now = Instant::now();
        let timeout = scrapers
            .iter()
            .map(|(_, s)| s.deadline.saturating_duration_since(now))
            .min();
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            warn!("metrics: poll: {e}; the metrics endpoint stops");
            return;
        }
        for event in events.iter() {
            match event.token() {
                LISTENER => accept(&listener, &poll, &mut scrapers),
                Token(key) => {
                    let done = match scrapers.get_mut(key) {
                        Some(scraper) => serve(scraper, source, &poll, key),
                        None => false,
                    };
                    if done {
                        scrapers.remove(key);
                    }
                }
            }
        }
        // Past their deadline: slow, silent or not reading.
        let now = Instant::now();
        let late: Vec<usize> = scrapers
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(key, _)| key)
            .collect();
        for key in late {
            debug!("metrics: a scraper ran out of time; closed");
            scrapers.remove(key);
        }
    }
}

/// Accepts what is waiting; past [`MAX_SCRAPERS`], closes at once.
fn accept(listener: &TcpListener, poll: &Poll, scrapers: &mut Slab<Scraper>) {
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                if scrapers.len() >= MAX_SCRAPERS {
                    // The oldest that has not asked anything yet makes room;
                    // if every one is being answered, the newcomer waits.
                    let idle = scrapers
                        .iter()
                        .filter(|(_, s)| s.answer.is_empty())
                        .min_by_key(|(_, s)| s.deadline)
                        .map(|(key, _)| key);
                    match idle {
                        Some(key) => {
                            debug!("metrics: {MAX_SCRAPERS} connections; the oldest idle one is closed");
                            scrapers.remove(key);
                        }
                        None => continue,
                    }
                }
                let entry = scrapers.vacant_entry();
                if poll
                    .registry()
                    .register(&mut stream, Token(entry.key()), Interest::READABLE)
                    .is_err()
                {
                    continue;
                }
                entry.insert(Scraper {
                    stream,
                    request: Vec::new(),
                    answer: Vec::new(),
                    sent: 0,
                    deadline: Instant::now() + DEADLINE,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of descriptors, or a client gone: try at the next event.
                debug!("metrics: accept: {e}");
                return;
            }
        }
    }
}

/// Moves one scraper on: reads its request, answers it, sends the answer.
/// `true` once it is done with (answered, or gone).
fn serve(scraper: &mut Scraper, source: &dyn Source, poll: &Poll, key: usize) -> bool {
    if scraper.answer.is_empty() {
        let mut chunk = [0u8; 2048];
        loop {
            match scraper.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => {
                    let room = MAX_REQUEST - scraper.request.len();
                    scraper.request.extend_from_slice(&chunk[..n.min(room)]);
                    if let Some(answer) = answer_to(&scraper.request, source) {
                        scraper.answer = answer;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }
    while scraper.sent < scraper.answer.len() {
        match scraper.stream.write(&scraper.answer[scraper.sent..]) {
            Ok(0) => return true,
            Ok(n) => scraper.sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let _ = poll
                    .registry()
                    .reregister(&mut scraper.stream, Token(key), Interest::WRITABLE);
                return false;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
    true
}

/// The answer to `request` (the bytes so far), or `None` while it is not
/// whole and may still come.
fn answer_to(request: &[u8], source: &dyn Source) -> Option<Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(request) {
        Ok(httparse::Status::Partial) if request.len() < MAX_REQUEST => None,
        Ok(httparse::Status::Partial) => Some(response(431, "Request Header Fields Too Large", &[], b"")),
        Err(httparse::Error::TooManyHeaders) => Some(response(431, "Request Header Fields Too Large", &[], b"")),
        Err(_) => Some(response(400, "Bad Request", &[], b"")),
        Ok(httparse::Status::Complete(_)) => {
            let path = req.path.unwrap_or("");
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            let head = req.method == Some("HEAD");
            if req.method != Some("GET") && !head {
                return Some(response(405, "Method Not Allowed", &[("Allow", "GET, HEAD")], b""));
            }
            if path != "/metrics" {
                return Some(response(404, "Not Found", &[], b"only /metrics is served here\n"));
            }
            let body = super::encode(&source.snapshot());
            let mut answer = response(
                200,
                "OK",
                &[("Content-Type", "text/plain; version=0.0.4; charset=utf-8")],
                &body,
            );
            if head {
                // The same head, no body.
                answer.truncate(answer.len() - body.len());
            }
            Some(answer)
        }
    }
}

/// An HTTP/1.1 response that closes the connection.
fn response(code: u16, reason: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {code} {reason}\r\n").into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    impl Source for Fixed {
        fn snapshot(&self) -> super::super::Snapshot {
            super::super::Snapshot::default()
        }
    }

    #[test]
    fn only_get_metrics_is_served() {
        let status = |request: &[u8]| -> Option<String> {
            answer_to(request, &Fixed).map(|a| {
                String::from_utf8_lossy(&a)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
        };
        assert_eq!(
            status(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").as_deref(),
            Some("HTTP/1.1 200 OK")
        );
        assert_eq!(
            status(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").as_deref(),
            Some("HTTP/1.1 200 OK")
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\n\r\n").as_deref(),
            Some("HTTP/1.1 404 Not Found")
        );
        assert_eq!(
            status(b"POST /metrics HTTP/1.1\r\n\r\n").as_deref(),
            Some("HTTP/1.1 405 Method Not Allowed")
        );
        let head = answer_to(b"HEAD /metrics HTTP/1.1\r\n\r\n", &Fixed).expect("an answer");
        assert!(
            head.starts_with(b"HTTP/1.1 200 OK") && head.ends_with(b"\r\n\r\n"),
            "no body"
        );
        assert_eq!(
            status(b"\x00\x01 junk\r\n\r\n").as_deref(),
            Some("HTTP/1.1 400 Bad Request")
        );
        // Not whole yet: wait for more, up to the bound.
        assert_eq!(status(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        let long = [b"GET /".as_slice(), &[b'a'; MAX_REQUEST]].concat();
        assert_eq!(
            status(&long[..MAX_REQUEST]).as_deref(),
            Some("HTTP/1.1 431 Request Header Fields Too Large")
        );
    }
}
