//! Merging the workers' transcripts into one: each worker writes whole
//! lines into its own pipe, but a pipe may hand them over cut anywhere, so
//! each worker's bytes wait here until their last newline has come. Only
//! whole lines are passed on, so no line is ever split or interleaved with
//! another worker's, whatever the supervisor's stdout is.

/// The bytes of one worker not yet passed on.
#[derive(Debug, Default)]
pub struct LineMerger {
    /// The start of a line whose newline has not come yet.
    tail: Vec<u8>,
}

impl LineMerger {
    /// Takes `bytes`, just read from the worker, and appends to `out` every
    /// line they complete; keeps the rest.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        match bytes.iter().rposition(|&b| b == b'\n') {
            None => self.tail.extend_from_slice(bytes),
            Some(last) => {
                out.extend_from_slice(&self.tail);
                self.tail.clear();
                out.extend_from_slice(&bytes[..=last]);
                self.tail.extend_from_slice(&bytes[last + 1..]);
            }
        }
    }

    /// Bytes of an unfinished line (when the worker is gone, they are
    /// dropped: passing them on would split a line).
    pub fn unfinished(&self) -> usize {
        self.tail.len()
    }

    /// Forgets the unfinished line.
    pub fn clear(&mut self) {
        self.tail.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_lines_pass() {
        let mut merger = LineMerger::default();
        let mut out = Vec::new();
        merger.push(b"Connection from:  1.2.3.4:5\n<3:ab", &mut out);
        assert_eq!(out, b"Connection from:  1.2.3.4:5\n");
        assert_eq!(merger.unfinished(), 5);
        out.clear();
        merger.push(b"c>", &mut out);
        assert!(out.is_empty());
        merger.push(b"\n<1:d>\n<2", &mut out);
        assert_eq!(out, b"<3:abc>\n<1:d>\n");
        assert_eq!(merger.unfinished(), 2);
        merger.clear();
        assert_eq!(merger.unfinished(), 0);
    }

    #[test]
    fn any_cut_gives_the_same_lines() {
        let text = b"one\ntwo two\n\nthree three three\nfour\n";
        for cut in 0..text.len() {
            for cut2 in cut..text.len() {
                let mut merger = LineMerger::default();
                let mut out = Vec::new();
                merger.push(&text[..cut], &mut out);
                merger.push(&text[cut..cut2], &mut out);
                merger.push(&text[cut2..], &mut out);
                assert_eq!(out, text, "cuts {cut} {cut2}");
                assert_eq!(merger.unfinished(), 0);
            }
        }
    }
}
