//! Cutting a log's byte stream into lines for consumers that hand out one
//! line at a time (the API's SSE events), with a bound on the size of one
//! piece: a guest can write a line of any length without a newline, and
//! holding it whole would let it grow the reader without limit.
//!
//! A line longer than [`MAX_LINE_CHUNK`] is handed out in pieces of at most
//! that size, each marked as continuing or ending the line, so the pieces
//! of a line concatenate to exactly its bytes. Cuts avoid splitting a valid
//! UTF-8 character, so each piece decodes on its own as the whole line
//! would. The bytes on disk are never touched: this is a reader's view.

/// Largest piece of one line handed out at once: the bound on one SSE
/// event's line, and on what a [`LineSplitter`] holds.
pub const MAX_LINE_CHUNK: usize = 64 * 1024;

/// A line, or a piece of a long one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineChunk {
    /// The bytes, without the `\n`; at most [`MAX_LINE_CHUNK`].
    pub bytes: Vec<u8>,
    /// This piece ends its line (the next piece starts a new one).
    pub ends_line: bool,
}

/// Splits a byte stream into [`LineChunk`]s, holding at most
/// [`MAX_LINE_CHUNK`] bytes of an unfinished line between calls.
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    limit: usize,
    /// The most bytes ever held between calls (for tests of the bound).
    high_water: usize,
}

impl Default for LineSplitter {
    fn default() -> Self {
        LineSplitter::with_limit(MAX_LINE_CHUNK)
    }
}

/// Where to cut `bytes` (longer than `limit`) near `limit`: before a UTF-8
/// character that would straddle the cut, if the bytes there are one.
fn cut_at(bytes: &[u8], limit: usize) -> usize {
    let is_continuation = |b: u8| b & 0xC0 == 0x80;
    if !is_continuation(bytes[limit]) {
        return limit;
    }
    // A character is at most 4 bytes: its lead byte is at most 3 back.
    for back in 1..=3.min(limit) {
        let i = limit - back;
        let b = bytes[i];
        if is_continuation(b) {
            continue;
        }
        let len = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return limit,
        };
        return if i + len > limit && i > 0 { i } else { limit };
    }
    limit
}

impl LineSplitter {
    /// A splitter with its own bound (tests); at least 4 bytes.
    pub fn with_limit(limit: usize) -> LineSplitter {
        LineSplitter {
            pending: Vec::new(),
            limit: limit.max(4),
            high_water: 0,
        }
    }

    /// The pieces completed by `chunk`, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<LineChunk> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while !rest.is_empty() {
            let room = self.limit + 1 - self.pending.len().min(self.limit);
            let window = &rest[..rest.len().min(room)];
            if let Some(pos) = window.iter().position(|&b| b == b'\n') {
                self.pending.extend_from_slice(&rest[..pos]);
                out.push(LineChunk {
                    bytes: std::mem::take(&mut self.pending),
                    ends_line: true,
                });
                rest = &rest[pos + 1..];
                continue;
            }
            self.pending.extend_from_slice(window);
            rest = &rest[window.len()..];
            if self.pending.len() > self.limit {
                // Over the bound with no newline: hand out a piece.
                let cut = cut_at(&self.pending, self.limit);
                let tail = self.pending.split_off(cut);
                out.push(LineChunk {
                    bytes: std::mem::replace(&mut self.pending, tail),
                    ends_line: false,
                });
            }
        }
        self.high_water = self.high_water.max(self.pending.len());
        out
    }

    /// The unfinished last line, if any, once the stream has ended.
    pub fn finish(&mut self) -> Option<LineChunk> {
        if self.pending.is_empty() {
            return None;
        }
        Some(LineChunk {
            bytes: std::mem::take(&mut self.pending),
            ends_line: true,
        })
    }

    /// The most bytes of an unfinished line this splitter has held.
    pub fn high_water(&self) -> usize {
        self.high_water
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(limit: usize, input: &[&[u8]]) -> Vec<(String, bool)> {
        let mut s = LineSplitter::with_limit(limit);
        let mut out: Vec<LineChunk> = input.iter().flat_map(|c| s.push(c)).collect();
        out.extend(s.finish());
        out.into_iter()
            .map(|c| (String::from_utf8_lossy(&c.bytes).into_owned(), c.ends_line))
            .collect()
    }

    fn own(v: &[(&str, bool)]) -> Vec<(String, bool)> {
        v.iter().map(|(s, e)| (s.to_string(), *e)).collect()
    }

    #[test]
    fn short_lines_pass_whole() {
        assert_eq!(
            split(64, &[b"a\nb", b"c\n\nd"]),
            own(&[("a", true), ("bc", true), ("", true), ("d", true)])
        );
    }

    #[test]
    fn long_lines_are_cut_at_the_bound() {
        assert_eq!(
            split(4, &[b"abcdefghij\nxy", b"z\n"]),
            own(&[
                ("abcd", false),
                ("efgh", false),
                ("ij", true),
                ("xyz", true)
            ])
        );
        // A line of exactly the bound is one piece.
        assert_eq!(split(4, &[b"abcd\n"]), own(&[("abcd", true)]));
        assert_eq!(split(4, &[b"abcde"]), own(&[("abcd", false), ("e", true)]));
    }

    #[test]
    fn cuts_keep_utf8_characters_whole() {
        // "aé€" = 61 C3A9 E282AC: a cut at 2 or 4 would split a character.
        let line = "aé€😀z".as_bytes();
        for limit in 4..=8 {
            let mut s = LineSplitter::with_limit(limit);
            let mut pieces = s.push(line);
            pieces.extend(s.finish());
            let mut joined = Vec::new();
            for p in &pieces {
                assert!(p.bytes.len() <= limit, "{limit}: {p:?}");
                assert!(std::str::from_utf8(&p.bytes).is_ok(), "{limit}: {p:?}");
                joined.extend_from_slice(&p.bytes);
            }
            assert_eq!(joined, line);
        }
        // Invalid UTF-8 is cut at the bound, bytes kept.
        let mut s = LineSplitter::with_limit(4);
        let got = s.push(b"\x80\x80\x80\x80\x80\x80\n");
        assert_eq!(got[0].bytes, b"\x80\x80\x80\x80");
        assert_eq!(got[1].bytes, b"\x80\x80");
    }
}
