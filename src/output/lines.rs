//! Whole frame lines at the default frame size, written straight from
//! vector registers: the hot path of both formats on printable text.
//!
//! A line is `HEAD` + the frame's 25 bytes + `END`: for the text format
//! `<25:` and `>\n`, for JSON lines the peer's `{"ts":...,"text":"` and
//! `"}\n`. Each frame is loaded once into a register, checked there for
//! bytes that must be escaped (three or four vector compares), and stored
//! after the head; a frame that holds such a byte ends the run, and its
//! format escapes it the slow way. So the bytes are read once and written
//! once, with no per-byte branch and no call per line.
//!
//! Stores are whole registers and may run past their part of the line: the
//! head's last store runs into the frame's place, the frame's into the
//! end's, the end's into the next line; each is overwritten by the store
//! that follows, and past the last line only spare capacity is touched
//! (reserved first), never the vector's length. Loads read only the block:
//! with 32-byte registers a frame is taken only when 32 bytes are left from
//! its start; with 16-byte ones, as bytes 0..16 and 9..25 of it.

/// The frame size these lines are for.
const FRAME: usize = crate::protocol::MAX_READ;
const _: () = assert!(
    FRAME > 16 && FRAME <= 32,
    "the registers hold a frame in one or two loads"
);

/// The longest head taken: five 32-byte registers (a JSON head is at most
/// about 150 bytes: its timestamp, keys and the longest address `Display`
/// writes). A format must send a longer one the general way: [`Kind::plain`]
/// writes nothing for it.
pub(crate) const MAX_HEAD: usize = 160;
/// The longest end taken (stored as 4 bytes).
const MAX_END: usize = 4;
/// Spare capacity past the last line that the overlapping stores may touch.
const SLACK: usize = 64;

/// Which bytes end a run of plain frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escapes {
    /// None (`--raw`): every frame is copied as it is.
    None,
    /// The text format's: anything outside printable ASCII, and `\`.
    Text,
    /// JSON strings': the text format's, and `"`.
    Json,
}

/// The instructions this CPU has for it, found once per framer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// 32-byte registers: one load and one store per frame.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// 16-byte registers (every x86-64 CPU): two overlapping loads and
    /// stores per frame.
    #[cfg(target_arch = "x86_64")]
    Sse2,
    /// Elsewhere: nothing here; the formats' general path frames everything.
    #[cfg(not(target_arch = "x86_64"))]
    None,
}

impl Kind {
    pub(crate) fn detect() -> Kind {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                Kind::Avx2
            } else {
                Kind::Sse2
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Kind::None
        }
    }

    /// The bytes a block must have left from a frame's start for
    /// [`Kind::plain`] to take the frame.
    pub(crate) fn min_len(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 => 32,
            #[cfg(target_arch = "x86_64")]
            Kind::Sse2 => FRAME,
            #[cfg(not(target_arch = "x86_64"))]
            Kind::None => usize::MAX,
        }
    }

    /// Appends `head` + frame + `end` for each leading frame of `block`
    /// that holds no byte of `escapes`, stopping at the first that does or
    /// where fewer than [`Kind::min_len`] bytes are left. Returns the frames
    /// written (0 for a head or end longer than it takes).
    #[inline]
    pub(crate) fn plain(self, out: &mut Vec<u8>, block: &[u8], head: &[u8], end: &[u8], escapes: Escapes) -> usize {
        if head.len() > MAX_HEAD || end.len() > MAX_END {
            return 0;
        }
        match self {
            // SAFETY: checked here (a cached flag), whoever made the `Kind`.
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 if std::arch::is_x86_feature_detected!("avx2") => unsafe {
                x86::plain_avx2(out, block, head, end, escapes)
            },
            // SAFETY: every x86-64 CPU has SSE2.
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 => unsafe { x86::plain_sse2(out, block, head, end, escapes) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: every x86-64 CPU has SSE2.
            Kind::Sse2 => unsafe { x86::plain_sse2(out, block, head, end, escapes) },
            #[cfg(not(target_arch = "x86_64"))]
            Kind::None => {
                let _ = (out, block, head, end, escapes);
                0
            }
        }
    }
}

/// How many frames of `block` start with at least `min_len` bytes left:
/// frame `i` qualifies when `25 i + min_len <= block.len()`.
#[inline(always)]
fn frames_with_room(block: &[u8], min_len: usize) -> usize {
    if block.len() < min_len {
        0
    } else {
        (block.len() - min_len) / FRAME + 1
    }
}

/// `head` copied into a zero-padded buffer that whole registers can be
/// loaded from.
#[inline(always)]
fn padded_head(head: &[u8]) -> [u8; MAX_HEAD] {
    let mut padded = [0u8; MAX_HEAD];
    padded[..head.len()].copy_from_slice(head);
    padded
}

/// `end` as the 4 bytes stored (zero-padded; the padding is overwritten).
#[inline(always)]
fn end_word(end: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    word[..end.len()].copy_from_slice(end);
    u32::from_le_bytes(word)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// The low 25 lanes of a 32-byte compare: the frame's bytes.
    const FRAME_LANES: u32 = (1 << FRAME) - 1;

    /// `plain` with 32-byte registers.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn plain_avx2(
        out: &mut Vec<u8>,
        block: &[u8],
        head: &[u8],
        end: &[u8],
        escapes: Escapes,
    ) -> usize {
        // The head's registers are counted at compile time, so that their
        // loads and stores unroll (a loop of them would become a memcpy).
        // SAFETY: the caller's (AVX2), and `head` fits the H registers each
        // arm picks (`plain` refused a head over MAX_HEAD = 5 x 32 bytes).
        unsafe {
            match head.len().div_ceil(32) {
                0 | 1 => avx2_lines::<1>(out, block, head, end, escapes),
                2 => avx2_lines::<2>(out, block, head, end, escapes),
                3 => avx2_lines::<3>(out, block, head, end, escapes),
                4 => avx2_lines::<4>(out, block, head, end, escapes),
                _ => avx2_lines::<5>(out, block, head, end, escapes),
            }
        }
    }

    /// [`plain_avx2`] for a head of at most `H` 32-byte registers.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2; `head` is at most `32 H` bytes.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn avx2_lines<const H: usize>(
        out: &mut Vec<u8>,
        block: &[u8],
        head: &[u8],
        end: &[u8],
        escapes: Escapes,
    ) -> usize {
        let n = frames_with_room(block, 32);
        let line_len = head.len() + FRAME + end.len();
        out.reserve(n * line_len + SLACK);
        let start = out.len();
        let padded = padded_head(head);
        // SAFETY: H 32-byte loads read at most 32 H <= MAX_HEAD bytes of
        // `padded` (`plain` refuses a longer head).
        let head_regs: [__m256i; H] =
            std::array::from_fn(|k| unsafe { _mm256_loadu_si256(padded.as_ptr().add(32 * k).cast()) });
        let end = end_word(end);
        // A byte is plain when it is in 0x20..=0x7E and not an escape:
        // adding 0x60 maps that range onto -128..=-34 (as i8), so one signed
        // compare finds the rest.
        let shift = _mm256_set1_epi8(0x60);
        let top = _mm256_set1_epi8(-34);
        let backslash = _mm256_set1_epi8(b'\\' as i8);
        let quote = _mm256_set1_epi8(b'"' as i8);
        let src = block.as_ptr();
        let mut i = 0;
        while i < n {
            // SAFETY: frame i starts at 25 i and `frames_with_room` left at
            // least 32 bytes from there: the load stays in `block`. Line i's
            // stores reach at most
            // 31 bytes past its head, frame or end, so the line's stores end
            // within line_len + 31 bytes of its start, inside the capacity
            // `reserve` made past `start` (n line_len + SLACK).
            unsafe {
                let v = _mm256_loadu_si256(src.add(i * FRAME).cast());
                if escapes != Escapes::None {
                    let mut bad = _mm256_or_si256(
                        _mm256_cmpgt_epi8(_mm256_add_epi8(v, shift), top),
                        _mm256_cmpeq_epi8(v, backslash),
                    );
                    if escapes == Escapes::Json {
                        bad = _mm256_or_si256(bad, _mm256_cmpeq_epi8(v, quote));
                    }
                    if (_mm256_movemask_epi8(bad) as u32) & FRAME_LANES != 0 {
                        break;
                    }
                }
                let line = out.as_mut_ptr().add(start + i * line_len);
                for (k, h) in head_regs.iter().enumerate() {
                    _mm256_storeu_si256(line.add(32 * k).cast(), *h);
                }
                _mm256_storeu_si256(line.add(head.len()).cast(), v);
                line.add(head.len() + FRAME).cast::<u32>().write_unaligned(end);
            }
            i += 1;
        }
        // SAFETY: lines 0..i were written whole (each store of line k + 1
        // starts after line k's bytes), inside the reserved capacity.
        unsafe { out.set_len(start + i * line_len) };
        i
    }

    /// `plain` with 16-byte registers: bytes 0..16 and 9..25 of each
    /// frame, loaded and stored overlapping, so nothing is read past the
    /// frame.
    ///
    /// # Safety
    ///
    /// The CPU must have SSE2 (every x86-64 CPU has).
    #[target_feature(enable = "sse2")]
    pub(super) unsafe fn plain_sse2(
        out: &mut Vec<u8>,
        block: &[u8],
        head: &[u8],
        end: &[u8],
        escapes: Escapes,
    ) -> usize {
        // As in `plain_avx2`: the head's registers counted at compile time.
        // SAFETY: the caller's (SSE2), and `head` fits the H registers each
        // arm picks (`plain` refused a head over MAX_HEAD = 10 x 16 bytes).
        unsafe {
            match head.len().div_ceil(16) {
                0 | 1 => sse2_lines::<1>(out, block, head, end, escapes),
                2 => sse2_lines::<2>(out, block, head, end, escapes),
                3 => sse2_lines::<3>(out, block, head, end, escapes),
                4 => sse2_lines::<4>(out, block, head, end, escapes),
                5 => sse2_lines::<5>(out, block, head, end, escapes),
                6 => sse2_lines::<6>(out, block, head, end, escapes),
                7 => sse2_lines::<7>(out, block, head, end, escapes),
                8 => sse2_lines::<8>(out, block, head, end, escapes),
                9 => sse2_lines::<9>(out, block, head, end, escapes),
                _ => sse2_lines::<10>(out, block, head, end, escapes),
            }
        }
    }

    /// [`plain_sse2`] for a head of at most `H` 16-byte registers.
    ///
    /// # Safety
    ///
    /// The CPU must have SSE2; `head` is at most `16 H` bytes.
    #[target_feature(enable = "sse2")]
    #[inline]
    unsafe fn sse2_lines<const H: usize>(
        out: &mut Vec<u8>,
        block: &[u8],
        head: &[u8],
        end: &[u8],
        escapes: Escapes,
    ) -> usize {
        let n = frames_with_room(block, FRAME);
        let line_len = head.len() + FRAME + end.len();
        out.reserve(n * line_len + SLACK);
        let start = out.len();
        let padded = padded_head(head);
        // SAFETY: H 16-byte loads read at most 16 H <= MAX_HEAD bytes of
        // `padded` (`plain` refuses a longer head).
        let head_regs: [__m128i; H] =
            std::array::from_fn(|k| unsafe { _mm_loadu_si128(padded.as_ptr().add(16 * k).cast()) });
        let end = end_word(end);
        let shift = _mm_set1_epi8(0x60);
        let top = _mm_set1_epi8(-34);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let quote = _mm_set1_epi8(b'"' as i8);
        let bad_lanes = |v: __m128i| {
            let mut bad = _mm_or_si128(
                _mm_cmpgt_epi8(_mm_add_epi8(v, shift), top),
                _mm_cmpeq_epi8(v, backslash),
            );
            if escapes == Escapes::Json {
                bad = _mm_or_si128(bad, _mm_cmpeq_epi8(v, quote));
            }
            bad
        };
        let src = block.as_ptr();
        let mut i = 0;
        while i < n {
            // SAFETY: frame i is block[25 i .. 25 i + 25], in bounds
            // (`frames_with_room`); the loads read 0..16 and 9..25 of it.
            // Line i's stores reach at most 15 bytes past its head and
            // 4 - end.len() past its end (the end is stored as 4 bytes),
            // inside the capacity `reserve` made past `start` (n line_len +
            // SLACK).
            unsafe {
                let frame = src.add(i * FRAME);
                let a = _mm_loadu_si128(frame.cast());
                let b = _mm_loadu_si128(frame.add(FRAME - 16).cast());
                if escapes != Escapes::None && _mm_movemask_epi8(_mm_or_si128(bad_lanes(a), bad_lanes(b))) != 0 {
                    break;
                }
                let line = out.as_mut_ptr().add(start + i * line_len);
                for (k, h) in head_regs.iter().enumerate() {
                    _mm_storeu_si128(line.add(16 * k).cast(), *h);
                }
                _mm_storeu_si128(line.add(head.len()).cast(), a);
                _mm_storeu_si128(line.add(head.len() + FRAME - 16).cast(), b);
                line.add(head.len() + FRAME).cast::<u32>().write_unaligned(end);
            }
            i += 1;
        }
        // SAFETY: lines 0..i were written whole, inside the reserved
        // capacity.
        unsafe { out.set_len(start + i * line_len) };
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `plain` must write: one byte at a time.
    fn reference(block: &[u8], head: &[u8], end: &[u8], escapes: Escapes, min_len: usize) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut i = 0;
        while i * FRAME + min_len <= block.len() {
            let frame = &block[i * FRAME..i * FRAME + FRAME];
            let escaped = frame.iter().any(|&b| match escapes {
                Escapes::None => false,
                Escapes::Text => !(0x20..=0x7e).contains(&b) || b == b'\\',
                Escapes::Json => !(0x20..=0x7e).contains(&b) || b == b'\\' || b == b'"',
            });
            if escaped {
                break;
            }
            out.extend_from_slice(head);
            out.extend_from_slice(frame);
            out.extend_from_slice(end);
            i += 1;
        }
        (out, i)
    }

    /// Every head and end length up to one past the longest taken, blocks
    /// around the frame and register edges, a byte to escape in the frame,
    /// in the bytes a wide load reads past it and in the next frame: the
    /// lines are the reference's, into an empty vector and after bytes
    /// already there, and a head or end too long is refused whole.
    #[test]
    fn every_head_and_end_length_writes_the_reference_lines() {
        let mut kinds = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            kinds.push(Kind::Sse2);
            if std::arch::is_x86_feature_detected!("avx2") {
                kinds.push(Kind::Avx2);
            }
        }
        for kind in kinds {
            for head_len in 0..=MAX_HEAD + 1 {
                let head: Vec<u8> = (0..head_len).map(|k| b'A' + (k % 26) as u8).collect();
                for end_len in 0..=MAX_END + 1 {
                    let end: Vec<u8> = (0..end_len).map(|k| b'0' + k as u8).collect();
                    for block_len in [
                        0usize, 1, 24, 25, 26, 31, 32, 33, 49, 50, 56, 57, 75, 81, 82, 100, 106, 107,
                    ] {
                        for bad_at in [usize::MAX, 0, 24, 25, 31, 49, 50, 56, 81] {
                            for escapes in [Escapes::None, Escapes::Text, Escapes::Json] {
                                let mut block: Vec<u8> = (0..block_len).map(|k| b'a' + (k % 26) as u8).collect();
                                if bad_at < block_len {
                                    block[bad_at] = if escapes == Escapes::Json { b'"' } else { 0x7f };
                                }
                                let mut out = Vec::new();
                                let n = kind.plain(&mut out, &block, &head, &end, escapes);
                                if head_len > MAX_HEAD || end_len > MAX_END {
                                    assert_eq!((n, out.len()), (0, 0), "{kind:?} head {head_len} end {end_len}");
                                    continue;
                                }
                                let (want, want_n) = reference(&block, &head, &end, escapes, kind.min_len());
                                let case =
                                    format!("{kind:?} head {head_len} end {end_len} block {block_len} bad {bad_at}");
                                assert_eq!(n, want_n, "{case}");
                                assert_eq!(out, want, "{case}");
                                let mut after = b"xyz".to_vec();
                                after.shrink_to_fit();
                                kind.plain(&mut after, &block, &head, &end, escapes);
                                assert_eq!(&after[..3], b"xyz", "{case}");
                                assert_eq!(&after[3..], &want[..], "{case}");
                            }
                        }
                    }
                }
            }
        }
    }
}
