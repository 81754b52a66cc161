//! client.go's session: prompts, `NAME says: LINE` writes, and what the
//! server sends shown as it arrives.
//!
//! Three threads: this one prompts and writes to the server; one reads the
//! user's input in bounded pieces into a bounded queue (so a fast pipe into
//! a slow server waits for it instead of filling memory); one reads the
//! server, shows what it sends, and reports when it leaves.

use std::io::{self, BufRead, Read};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use log::debug;

use super::display::Display;
use super::{ClientError, READ_CHUNK, RetryPolicy, write_with_retry};

pub use super::display::ChatOutput;

/// The prompt for the name, as client.go prints it.
pub const NAME_PROMPT: &str = "First, what is your name?";
/// The prompt for each line, as client.go prints it.
pub const LINE_PROMPT: &str = "What to send to the server? Type Q to quit.";

/// How long the chat waits for the server's greeting before the first prompt,
/// so that a greeting is shown before the prompts even in a scripted session.
const GREETING_WAIT: Duration = Duration::from_millis(500);
/// Input is read and sent in pieces of at most this many bytes, so that a
/// line without an end costs no more memory than a short one.
const INPUT_PIECE: usize = 64 * 1024;
/// Pieces of input read ahead of the connection at most (1 MiB with
/// [`INPUT_PIECE`]): past that, input waits for the server to read.
const INPUT_QUEUE: usize = 16;
/// How long `Q` waits, after closing our side, for the server to print and
/// close: our server closes at once; one that keeps the connection open is
/// not waited for any longer than this.
const QUIT_WAIT: Duration = Duration::from_millis(500);

/// The chat options (client.go's behaviour and ours).
#[derive(Debug, Clone, Default)]
pub struct ChatOptions {
    /// The name to use instead of asking for one.
    pub name: Option<String>,
    /// Add `\n` after each message, for servers that frame by line.
    pub newline: bool,
    /// Retries and timeouts.
    pub policy: RetryPolicy,
}

/// A piece of one line of input, `\r\n` trimmed from the line's ends.
struct Piece {
    bytes: Vec<u8>,
    /// The line starts with this piece.
    first: bool,
    /// The line ends with this piece.
    last: bool,
}

/// What the chat loop waits for: input from the user, or the server leaving.
enum ChatEvent {
    /// A piece of a line of input.
    Input(Piece),
    /// End of input.
    InputEnd,
    /// Reading input failed.
    InputFailed(io::Error),
    /// The server closed or broke the connection.
    ServerGone(ClientError),
}

/// How a piece of input ended.
enum PieceEnd {
    /// At a newline (included in the piece).
    Newline,
    /// At [`INPUT_PIECE`] bytes, in the middle of a line.
    Full,
    /// At the end of input.
    Eof,
}

/// Appends to `piece` up to the next newline, the end of input, or
/// [`INPUT_PIECE`] bytes in all, whichever comes first. Bytes, not text:
/// what is not UTF-8 is sent as it is, and the server escapes it.
fn read_piece(input: &mut impl BufRead, piece: &mut Vec<u8>) -> io::Result<PieceEnd> {
    loop {
        let buf = match input.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(PieceEnd::Eof);
        }
        let room = INPUT_PIECE.saturating_sub(piece.len());
        let window = &buf[..buf.len().min(room)];
        if let Some(i) = window.iter().position(|&b| b == b'\n') {
            piece.extend_from_slice(&window[..=i]);
            input.consume(i + 1);
            return Ok(PieceEnd::Newline);
        }
        let n = window.len();
        piece.extend_from_slice(window);
        input.consume(n);
        if piece.len() >= INPUT_PIECE {
            return Ok(PieceEnd::Full);
        }
    }
}

/// Reads the user's input into `events` in pieces; waits (does not read
/// ahead) while the queue is full. client.go trims `\r\n` from both ends of
/// each line; so do we, holding back a piece's trailing `\r` until we know
/// whether the line ends there.
fn read_input(mut input: impl BufRead, events: SyncSender<ChatEvent>) {
    let mut first = true;
    let mut held_cr = 0;
    let mut waiting = false;
    loop {
        let mut bytes = vec![b'\r'; held_cr];
        held_cr = 0;
        let end = match read_piece(&mut input, &mut bytes) {
            Ok(end) => end,
            Err(e) => {
                let _ = events.send(ChatEvent::InputFailed(e));
                return;
            }
        };
        let last = match end {
            PieceEnd::Eof if bytes.is_empty() && first => {
                let _ = events.send(ChatEvent::InputEnd);
                return;
            }
            PieceEnd::Eof | PieceEnd::Newline => true,
            PieceEnd::Full => {
                let crs = bytes.iter().rev().take_while(|&&b| b == b'\r').count();
                if crs < bytes.len() {
                    held_cr = crs;
                    bytes.truncate(bytes.len() - crs);
                }
                false
            }
        };
        if last {
            let keep = bytes.len() - bytes.iter().rev().take_while(|&&b| b == b'\r' || b == b'\n').count();
            bytes.truncate(keep);
        }
        if first {
            let skip = bytes.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
            bytes.drain(..skip);
        }
        let event = ChatEvent::Input(Piece { bytes, first, last });
        let sent = match events.try_send(event) {
            Ok(()) => {
                waiting = false;
                Ok(())
            }
            Err(TrySendError::Full(event)) => {
                if !waiting {
                    debug!("input waits: the server is not reading as fast as it comes");
                    waiting = true;
                }
                events.send(event).map_err(|_| ())
            }
            Err(TrySendError::Disconnected(_)) => Err(()),
        };
        if sent.is_err() {
            return;
        }
        if matches!(end, PieceEnd::Eof) {
            let _ = events.send(ChatEvent::InputEnd);
            return;
        }
        first = last;
    }
}

/// Reads what the server sends and shows it, until it leaves.
fn read_server(mut reader: TcpStream, display: Arc<Mutex<Display>>, events: SyncSender<ChatEvent>) {
    let mut buf = vec![0u8; READ_CHUNK];
    let why = loop {
        match reader.read(&mut buf) {
            Ok(0) => {
                if let Err(e) = lock(&display).and_then(|mut d| d.server_end()) {
                    break ClientError::Local(e);
                }
                break ClientError::ServerClosed;
            }
            Ok(n) => {
                if let Err(e) = lock(&display).and_then(|mut d| d.server_bytes(&buf[..n])) {
                    break ClientError::Local(e);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break ClientError::Connection(e),
        }
    };
    let _ = events.send(ChatEvent::ServerGone(why));
}

fn lock(display: &Mutex<Display>) -> io::Result<std::sync::MutexGuard<'_, Display>> {
    display.lock().map_err(|_| io::Error::other("output lock poisoned"))
}

/// The next piece of input; `None` at the end of input.
fn next_piece(events: &Receiver<ChatEvent>) -> Result<Option<Piece>, ClientError> {
    match events.recv() {
        Ok(ChatEvent::Input(piece)) => Ok(Some(piece)),
        Ok(ChatEvent::InputEnd) | Err(_) => Ok(None),
        Ok(ChatEvent::InputFailed(e)) => Err(ClientError::Local(e)),
        Ok(ChatEvent::ServerGone(why)) => Err(why),
    }
}

/// client.go's loop over a connected `stream`: prompts, lines from `input`,
/// `NAME says: LINE` to the server; `Q` or end of input quits. What the
/// server sends is shown as it arrives, and a server that goes away is
/// noticed at once, even while the user is not typing.
///
/// Memory stays bounded whatever comes in: input is read in pieces of at
/// most 64 KiB, at most 1 MiB ahead of the connection, and a server that
/// does not read slows the input down.
///
/// Returns when the user quits (after closing our side and giving the
/// server half a second to finish), or with [`ClientError::ServerClosed`] /
/// [`ClientError::Connection`] when the server goes away first.
pub fn chat(
    mut stream: TcpStream,
    input: impl BufRead + Send + 'static,
    out: ChatOutput,
    opts: &ChatOptions,
) -> Result<(), ClientError> {
    let display = Arc::new(Mutex::new(Display::new(out)));
    // Show the greeting before the first prompt, if it comes soon.
    let mut buf = vec![0u8; READ_CHUNK];
    stream
        .set_read_timeout(Some(GREETING_WAIT))
        .map_err(ClientError::Connection)?;
    match stream.read(&mut buf) {
        Ok(0) => return Err(ClientError::ServerClosed),
        Ok(n) => lock(&display)
            .and_then(|mut d| d.server_bytes(&buf[..n]))
            .map_err(ClientError::Local)?,
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
        Err(e) => return Err(ClientError::Connection(e)),
    }
    stream.set_read_timeout(None).map_err(ClientError::Connection)?;

    let (events, next_event) = mpsc::sync_channel::<ChatEvent>(INPUT_QUEUE);
    let reader = stream.try_clone().map_err(ClientError::Connection)?;
    let server_display = Arc::clone(&display);
    let server_events = events.clone();
    thread::spawn(move || read_server(reader, server_display, server_events));
    thread::spawn(move || read_input(input, events));

    let prompt = |text: &str| {
        lock(&display)
            .and_then(|mut d| d.prompt(text))
            .map_err(ClientError::Local)
    };

    let name = match &opts.name {
        Some(name) => Some(name.clone().into_bytes()),
        None => {
            prompt(NAME_PROMPT)?;
            read_name(&next_event)?
        }
    };
    if let Some(name) = name {
        let mut message = Vec::with_capacity(INPUT_PIECE + name.len() + 16);
        loop {
            prompt(LINE_PROMPT)?;
            let Some(mut piece) = next_piece(&next_event)? else {
                break;
            };
            if piece.first && piece.last && piece.bytes == b"Q" {
                break;
            }
            message.clear();
            message.extend_from_slice(&name);
            message.extend_from_slice(b" says: ");
            loop {
                message.extend_from_slice(&piece.bytes);
                if piece.last && opts.newline {
                    message.push(b'\n');
                }
                write_with_retry(&mut stream, &message, &opts.policy)?;
                message.clear();
                if piece.last {
                    break;
                }
                match next_piece(&next_event)? {
                    Some(next) => piece = next,
                    None => break,
                }
            }
        }
    }

    // Quit: close our side and give the server a moment to print and close;
    // a server that keeps the connection open is not waited for.
    let _ = stream.shutdown(Shutdown::Write);
    let wait = QUIT_WAIT.min(opts.policy.timeout);
    let until = std::time::Instant::now() + wait;
    loop {
        match next_event.recv_timeout(until.saturating_duration_since(std::time::Instant::now())) {
            Ok(ChatEvent::ServerGone(ClientError::ServerClosed)) => return Ok(()),
            Ok(ChatEvent::ServerGone(ClientError::Connection(e))) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Ok(());
            }
            Ok(ChatEvent::ServerGone(other)) => return Err(other),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return Ok(()),
            // Input after the quit is not sent.
            Ok(_) => {}
        }
    }
}

/// The first line of input, as the name; `None` at the end of input.
fn read_name(events: &Receiver<ChatEvent>) -> Result<Option<Vec<u8>>, ClientError> {
    let mut name = Vec::new();
    while let Some(piece) = next_piece(events)? {
        name.extend_from_slice(&piece.bytes);
        if name.len() > INPUT_PIECE {
            return Err(ClientError::Local(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the name is longer than 64 KiB",
            )));
        }
        if piece.last {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pieces `read_input` makes of `input`, as (bytes, first, last).
    fn pieces(input: &[u8]) -> Vec<(Vec<u8>, bool, bool)> {
        let (tx, rx) = mpsc::sync_channel(1024);
        read_input(io::Cursor::new(input.to_vec()), tx);
        rx.into_iter()
            .map_while(|e| match e {
                ChatEvent::Input(p) => Some((p.bytes, p.first, p.last)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn lines_are_bytes_trimmed_as_client_go_trims() {
        assert_eq!(
            pieces(b"wong\r\ncaf\xe9\n\rQ\r\nno end"),
            vec![
                (b"wong".to_vec(), true, true),
                (b"caf\xe9".to_vec(), true, true),
                (b"Q".to_vec(), true, true),
                (b"no end".to_vec(), true, true),
            ]
        );
    }

    #[test]
    fn a_long_line_comes_in_bounded_pieces() {
        let mut line = vec![b'x'; INPUT_PIECE * 2 + 10];
        line[INPUT_PIECE - 1] = b'\r';
        line.extend_from_slice(b"\r\n");
        let got = pieces(&line);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|(b, _, _)| b.len() <= INPUT_PIECE));
        assert_eq!(
            got.iter().map(|(_, f, l)| (*f, *l)).collect::<Vec<_>>(),
            vec![(true, false), (false, false), (false, true)]
        );
        // The `\r` at the end of the first piece is held back, not lost; the
        // `\r\n` ending the line is trimmed.
        let joined: Vec<u8> = got.into_iter().flat_map(|(b, _, _)| b).collect();
        assert_eq!(joined, line[..line.len() - 2]);
    }
}
