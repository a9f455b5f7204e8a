//! Showing a guest's output on a terminal without letting it drive the
//! terminal: what a workload writes is untrusted, and escape sequences in
//! it could retitle the window, clear the screen, move the cursor or worse.
//!
//! `lodge logs` writes to a terminal through [`escape_controls`] unless
//! `--raw` is given (journalctl's default is the model): control characters
//! other than newline and tab are shown as `\xNN`, so they are visible
//! instead of acted on. Output to a pipe or file is never escaped: it stays
//! byte-exact. The function is pure and works on any cut of the stream: it
//! leaves an incomplete UTF-8 character at the end for the next call.

/// Appends `input` to `out` with control characters shown escaped:
///
/// - C0 controls except `\n` and `\t` (ESC, CR, BEL, ...) and DEL, as
///   `\x1b`;
/// - C1 controls (U+0080 to U+009F; a terminal may take U+009B as CSI), as
///   their two UTF-8 bytes, `\xc2\x9b`;
/// - bytes that are not UTF-8, as `\xNN` each.
///
/// Everything else, other text included, passes unchanged. Returns how
/// many bytes of `input` were taken: all of them when `at_end`, else all
/// but a UTF-8 character cut off at the end, to be passed again in front
/// of the bytes that follow.
pub fn escape_controls(input: &[u8], at_end: bool, out: &mut Vec<u8>) -> usize {
    let mut rest = input;
    loop {
        match std::str::from_utf8(rest) {
            Ok(text) => {
                escape_text(text, out);
                return input.len();
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                if let Ok(text) = std::str::from_utf8(valid) {
                    escape_text(text, out);
                }
                match e.error_len() {
                    Some(n) => {
                        after[..n].iter().for_each(|&b| hex(b, out));
                        rest = &after[n..];
                    }
                    // A character cut off by the end of `input`.
                    None if at_end => {
                        after.iter().for_each(|&b| hex(b, out));
                        return input.len();
                    }
                    None => return input.len() - after.len(),
                }
            }
        }
    }
}

/// Whether `c` is shown escaped.
fn is_control(c: char) -> bool {
    matches!(c, '\0'..='\x08' | '\x0b'..='\x1f' | '\x7f' | '\u{80}'..='\u{9f}')
}

fn escape_text(text: &str, out: &mut Vec<u8>) {
    let mut plain = 0;
    for (i, c) in text.char_indices() {
        if is_control(c) {
            out.extend_from_slice(&text.as_bytes()[plain..i]);
            let mut bytes = [0u8; 4];
            c.encode_utf8(&mut bytes).bytes().for_each(|b| hex(b, out));
            plain = i + c.len_utf8();
        }
    }
    out.extend_from_slice(&text.as_bytes()[plain..]);
}

fn hex(b: u8, out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(&[
        b'\\',
        b'x',
        DIGITS[usize::from(b >> 4)],
        DIGITS[usize::from(b & 15)],
    ]);
}

/// Where `lodge logs` and an attached `lodge run` print console lines: to
/// stdout, escaped when it is a terminal and `raw` was not asked for.
pub struct ConsoleOut {
    stdout: std::io::Stdout,
    escape: bool,
    escaped: Vec<u8>,
}

impl ConsoleOut {
    pub fn new(raw: bool) -> Self {
        use std::io::IsTerminal;
        let stdout = std::io::stdout();
        let escape = !raw && stdout.is_terminal();
        ConsoleOut {
            stdout,
            escape,
            escaped: Vec::new(),
        }
    }

    /// Prints one piece of a line; `ends` says whether the line ends here.
    pub fn write(&mut self, line: &str, ends: bool) -> std::io::Result<()> {
        use std::io::Write;
        let mut out = self.stdout.lock();
        if self.escape {
            self.escaped.clear();
            escape_controls(line.as_bytes(), true, &mut self.escaped);
            out.write_all(&self.escaped)?;
        } else {
            out.write_all(line.as_bytes())?;
        }
        if ends {
            out.write_all(b"\n")?;
        }
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(input: &[u8]) -> String {
        let mut out = Vec::new();
        assert_eq!(escape_controls(input, true, &mut out), input.len());
        String::from_utf8(out).expect("escaped output is UTF-8")
    }

    #[test]
    fn text_newlines_and_tabs_pass() {
        assert_eq!(esc(b"plain\ttext\n"), "plain\ttext\n");
        assert_eq!(esc("héllo wörld ✓ 😀\n".as_bytes()), "héllo wörld ✓ 😀\n");
        assert_eq!(esc(b"back\\slash"), "back\\slash");
        assert_eq!(esc(b""), "");
    }

    #[test]
    fn c0_controls_and_del_are_shown() {
        // Title change, clear screen, cursor move, bell, CR, DEL, NUL.
        assert_eq!(
            esc(b"\x1b]0;pwned\x07\x1b[2J\x1b[H\rx\x7f\x00"),
            "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[H\\x0dx\\x7f\\x00"
        );
    }

    #[test]
    fn c1_controls_and_invalid_bytes_are_shown() {
        // U+009B (CSI) encoded, then a raw 0x9b and a raw 0xff.
        assert_eq!(esc("a\u{9b}31m".as_bytes()), "a\\xc2\\x9b31m");
        assert_eq!(esc(b"a\x9b31m\xff"), "a\\x9b31m\\xff");
        // U+00A0 and beyond are text.
        assert_eq!(esc("\u{a0}é".as_bytes()), "\u{a0}é");
    }

    #[test]
    fn a_character_cut_by_a_chunk_waits_for_the_rest() {
        let text = "é😀\x1b".as_bytes();
        for cut in 0..=text.len() {
            let mut out = Vec::new();
            let taken = escape_controls(&text[..cut], false, &mut out);
            let mut rest = text[taken..cut].to_vec();
            assert!(rest.len() < 4, "at most a cut character is left");
            rest.extend_from_slice(&text[cut..]);
            assert_eq!(escape_controls(&rest, true, &mut out), rest.len());
            assert_eq!(
                String::from_utf8(out).expect("utf-8"),
                "é😀\\x1b",
                "cut {cut}"
            );
        }
        // At the end, a cut character is shown as bytes.
        assert_eq!(esc(&"😀".as_bytes()[..2]), "\\xf0\\x9f");
    }
}
