//! What the chat shows: the server's bytes, escaped as one stream (a
//! character split across two reads is still one character), and the
//! prompts, where the user asked for them.

use std::io::{self, Write};

use crate::output::text as frame;

/// Where the chat writes.
pub struct ChatOutput {
    /// What the server sends, escaped, newlines kept.
    pub server: Box<dyn Write + Send>,
    /// The prompts; `None` drops them.
    pub prompts: Option<Box<dyn Write + Send>>,
    /// The prompts and the server's text reach the same place (a terminal,
    /// or one file for both): a server line that has not ended is ended
    /// before a prompt, so the prompt starts its own line.
    pub shared: bool,
}

/// The chat's output, shared by the thread that reads the server and the
/// one that prompts.
pub(super) struct Display {
    out: ChatOutput,
    /// The start of a UTF-8 sequence that the next read will finish.
    carry: Vec<u8>,
    /// The last byte shown of the server's text was not a newline.
    mid_line: bool,
}

/// The length of the end of `bytes` that is the beginning of a UTF-8
/// sequence still waiting for its last bytes (0 to 3).
fn incomplete_tail(bytes: &[u8]) -> usize {
    for k in 1..=bytes.len().min(3) {
        let start = bytes.len() - k;
        let lead = bytes[start];
        if lead & 0xC0 == 0x80 {
            // A continuation byte: the lead is further back.
            continue;
        }
        let (width, second_ok): (usize, fn(u8) -> bool) = match lead {
            0xC2..=0xDF => (2, |b| b & 0xC0 == 0x80),
            0xE0 => (3, |b| (0xA0..=0xBF).contains(&b)),
            0xE1..=0xEC | 0xEE..=0xEF => (3, |b| b & 0xC0 == 0x80),
            0xED => (3, |b| (0x80..=0x9F).contains(&b)),
            0xF0 => (4, |b| (0x90..=0xBF).contains(&b)),
            0xF1..=0xF3 => (4, |b| b & 0xC0 == 0x80),
            0xF4 => (4, |b| (0x80..=0x8F).contains(&b)),
            // ASCII or a byte that starts nothing: nothing to wait for.
            _ => return 0,
        };
        let rest = &bytes[start + 1..];
        let valid_so_far = rest.first().is_none_or(|&b| second_ok(b)) && rest.iter().all(|b| b & 0xC0 == 0x80);
        return if k < width && valid_so_far { k } else { 0 };
    }
    0
}

/// `bytes` escaped as the server escapes a frame, except that newlines
/// stay newlines.
fn escaped_lines(bytes: &[u8]) -> Vec<u8> {
    let mut text = Vec::with_capacity(bytes.len() + 16);
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            text.push(b'\n');
        }
        frame::escape_into(&mut text, line);
    }
    text
}

impl Display {
    pub(super) fn new(out: ChatOutput) -> Display {
        Display {
            out,
            carry: Vec::new(),
            mid_line: false,
        }
    }

    /// Shows bytes from the server, escaped so that a hostile server cannot
    /// drive the terminal; the start of a character that the next read
    /// finishes waits for it.
    pub(super) fn server_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(bytes);
        let keep = incomplete_tail(&data);
        self.carry = data.split_off(data.len() - keep);
        self.show(&data)
    }

    /// The server is done: what was waiting for the rest of a character is
    /// shown as it is (escaped).
    pub(super) fn server_end(&mut self) -> io::Result<()> {
        let rest = std::mem::take(&mut self.carry);
        self.show(&rest)
    }

    fn show(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(&last) = bytes.last() else { return Ok(()) };
        self.out.server.write_all(&escaped_lines(bytes))?;
        self.out.server.flush()?;
        self.mid_line = last != b'\n';
        Ok(())
    }

    /// Shows a prompt on its own line (if prompts are shown at all).
    pub(super) fn prompt(&mut self, text: &str) -> io::Result<()> {
        let Some(prompts) = self.out.prompts.as_mut() else {
            return Ok(());
        };
        if self.out.shared && self.mid_line {
            self.out.server.write_all(b"\n")?;
            self.out.server.flush()?;
            self.mid_line = false;
        }
        prompts.write_all(text.as_bytes())?;
        prompts.write_all(b"\n")?;
        prompts.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
        }
    }

    fn display(shared: bool) -> (Display, Shared, Shared) {
        let (server, prompts) = (Shared::default(), Shared::default());
        let prompts_out: Box<dyn Write + Send> = if shared {
            Box::new(server.clone())
        } else {
            Box::new(prompts.clone())
        };
        let d = Display::new(ChatOutput {
            server: Box::new(server.clone()),
            prompts: Some(prompts_out),
            shared,
        });
        (d, server, prompts)
    }

    #[test]
    fn a_character_split_across_reads_is_one_character() {
        let (mut d, server, _) = display(false);
        let text = "héllo wörld €5 🦀\n".as_bytes();
        for b in text {
            d.server_bytes(std::slice::from_ref(b)).expect("show");
        }
        assert_eq!(server.text(), "héllo wörld €5 🦀\n");
    }

    #[test]
    fn invalid_bytes_are_still_escaped() {
        let (mut d, server, _) = display(false);
        // A lead byte followed by ASCII, a lone continuation byte, a control.
        d.server_bytes(b"a\xc3").expect("show");
        d.server_bytes(b"b\x80\x1b[2J\n").expect("show");
        // An unfinished sequence at the end is shown when the server leaves.
        d.server_bytes(b"z\xe2\x82").expect("show");
        assert_eq!(server.text(), "a\\xc3b\\x80\\x1b[2J\nz");
        d.server_end().expect("end");
        assert_eq!(server.text(), "a\\xc3b\\x80\\x1b[2J\nz\\xe2\\x82");
    }

    #[test]
    fn incomplete_tails() {
        assert_eq!(incomplete_tail(b"abc"), 0);
        assert_eq!(incomplete_tail(b"a\xc3"), 1);
        assert_eq!(incomplete_tail(b"a\xe2\x82"), 2);
        assert_eq!(incomplete_tail(b"a\xf0\x9f\xa6"), 3);
        assert_eq!(incomplete_tail("é".as_bytes()), 0);
        // Cannot become valid: shown at once.
        assert_eq!(incomplete_tail(b"a\xe0\x80"), 0);
        assert_eq!(incomplete_tail(b"a\xff"), 0);
    }

    #[test]
    fn a_prompt_ends_an_unfinished_server_line_when_both_share_a_place() {
        let (mut d, server, _) = display(true);
        d.server_bytes(b"Let's G").expect("show");
        d.prompt("First, what is your name?").expect("prompt");
        d.server_bytes(b"O!\n").expect("show");
        d.prompt("next").expect("prompt");
        assert_eq!(server.text(), "Let's G\nFirst, what is your name?\nO!\nnext\n");
        // Apart, the server's text is left exactly as it came.
        let (mut d, server, prompts) = display(false);
        d.server_bytes(b"Let's G").expect("show");
        d.prompt("First, what is your name?").expect("prompt");
        d.server_bytes(b"O!\n").expect("show");
        assert_eq!(server.text(), "Let's GO!\n");
        assert_eq!(prompts.text(), "First, what is your name?\n");
    }
}
