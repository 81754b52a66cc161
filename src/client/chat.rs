//! client.go's session: prompts, `NAME says: LINE` writes, and what the
//! server sends shown as it arrives.

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use super::{ClientError, READ_CHUNK, RetryPolicy, write_with_retry};
use crate::output::text as frame;

/// The prompt for the name, as client.go prints it.
pub const NAME_PROMPT: &str = "First, what is your name?";
/// The prompt for each line, as client.go prints it.
pub const LINE_PROMPT: &str = "What to send to the server? Type Q to quit.";

/// How long the chat waits for the server's greeting before the first prompt,
/// so that a greeting is shown before the prompts even in a scripted session.
const GREETING_WAIT: Duration = Duration::from_millis(500);

/// Output shared by the chat's prompts and the thread that shows what the
/// server sends.
pub type SharedOut = Arc<Mutex<dyn Write + Send>>;

fn emit(out: &SharedOut, bytes: &[u8]) -> io::Result<()> {
    let mut out = out.lock().map_err(|_| io::Error::other("output lock poisoned"))?;
    out.write_all(bytes)?;
    out.flush()
}

/// Shows bytes from the server, escaped so that a hostile server cannot
/// drive the terminal; newlines stay newlines.
fn show_server_bytes(out: &SharedOut, bytes: &[u8]) -> io::Result<()> {
    let mut text = Vec::with_capacity(bytes.len() + 16);
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            text.push(b'\n');
        }
        frame::escape_into(&mut text, line);
    }
    emit(out, &text)
}

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

/// What the chat loop waits for: a line from the user, or the server leaving.
enum ChatEvent {
    /// A line of input, `\r\n` trimmed.
    Line(String),
    /// End of input.
    InputEnd,
    /// Reading input failed.
    InputFailed(io::Error),
    /// The server closed or broke the connection.
    ServerGone(ClientError),
}

/// client.go's loop over a connected `stream`: prompts on `out`, lines from
/// `input`, `NAME says: LINE` to the server; `Q` or end of input quits. What
/// the server sends is shown on `out` as it arrives, and a server that goes
/// away is noticed at once, even while the user is not typing.
///
/// Returns when the user quits (after closing our side and letting the
/// server finish), or with [`ClientError::ServerClosed`] /
/// [`ClientError::Connection`] when the server goes away first.
pub fn chat(
    mut stream: TcpStream,
    input: impl BufRead + Send + 'static,
    out: SharedOut,
    opts: &ChatOptions,
) -> Result<(), ClientError> {
    stream
        .set_write_timeout(Some(opts.policy.timeout))
        .map_err(ClientError::Connection)?;
    // Show the greeting before the first prompt, if it comes soon.
    let mut buf = vec![0u8; READ_CHUNK];
    stream
        .set_read_timeout(Some(GREETING_WAIT))
        .map_err(ClientError::Connection)?;
    match stream.read(&mut buf) {
        Ok(0) => return Err(ClientError::ServerClosed),
        Ok(n) => show_server_bytes(&out, &buf[..n]).map_err(ClientError::Local)?,
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
        Err(e) => return Err(ClientError::Connection(e)),
    }
    stream.set_read_timeout(None).map_err(ClientError::Connection)?;

    let (events, next_event) = mpsc::channel::<ChatEvent>();
    // One thread shows what the server sends and notices it leave.
    let mut reader = stream.try_clone().map_err(ClientError::Connection)?;
    let reader_out = Arc::clone(&out);
    let server_events = events.clone();
    thread::spawn(move || {
        let mut buf = vec![0u8; READ_CHUNK];
        let why = loop {
            match reader.read(&mut buf) {
                Ok(0) => break ClientError::ServerClosed,
                Ok(n) => {
                    if let Err(e) = show_server_bytes(&reader_out, &buf[..n]) {
                        break ClientError::Local(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break ClientError::Connection(e),
            }
        };
        let _ = server_events.send(ChatEvent::ServerGone(why));
    });
    // Another reads the user's lines, so that waiting for one does not keep
    // us from noticing the server leave.
    thread::spawn(move || {
        let mut input = input;
        loop {
            let mut line = String::new();
            let event = match input.read_line(&mut line) {
                Ok(0) => ChatEvent::InputEnd,
                Ok(_) => ChatEvent::Line(line.trim_matches(['\r', '\n']).to_string()),
                Err(e) => ChatEvent::InputFailed(e),
            };
            let last = !matches!(event, ChatEvent::Line(_));
            if events.send(event).is_err() || last {
                break;
            }
        }
    });

    let ask = |prompt: &str| -> Result<Option<String>, ClientError> {
        emit(&out, format!("{prompt}\n").as_bytes()).map_err(ClientError::Local)?;
        match next_event.recv() {
            Ok(ChatEvent::Line(line)) => Ok(Some(line)),
            Ok(ChatEvent::InputEnd) => Ok(None),
            Ok(ChatEvent::InputFailed(e)) => Err(ClientError::Local(e)),
            Ok(ChatEvent::ServerGone(why)) => Err(why),
            Err(_) => Ok(None),
        }
    };

    let name = match &opts.name {
        Some(name) => Some(name.clone()),
        None => ask(NAME_PROMPT)?,
    };
    if let Some(name) = name {
        while let Some(line) = ask(LINE_PROMPT)? {
            if line == "Q" {
                break;
            }
            let mut message = format!("{name} says: {line}");
            if opts.newline {
                message.push('\n');
            }
            write_with_retry(&mut stream, message.as_bytes(), &opts.policy)?;
        }
    }

    // Quit: close our side and give the server a moment to print and close.
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + opts.policy.timeout;
    loop {
        match next_event.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(ChatEvent::ServerGone(ClientError::ServerClosed)) | Err(_) => return Ok(()),
            Ok(ChatEvent::ServerGone(ClientError::Connection(e))) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Ok(());
            }
            Ok(ChatEvent::ServerGone(other)) => return Err(other),
            // Input after the quit is not sent.
            Ok(_) => {}
        }
    }
}
