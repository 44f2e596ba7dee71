//! A strict, streaming check of HTTP/1 chunked framing (RFC 9112 §7.1), run by the front door
//! over the raw bytes of a chunked request body as they arrive, next to Pingora's own parser.
//!
//! Pingora's chunk parser is lenient where parsers differ: it accepts a bare LF inside a chunk
//! extension (`1;a=b\nc\r\n`) and whitespace after the size (`1 \r\n`). A front proxy that ends
//! chunk lines at LF would frame such a body differently — the classic chunk-extension
//! desync. The backends behind Portcullis are safe either way (Pingora re-frames the body it
//! sends them), but a gateway refuses ambiguity at the door, so this check fails the request
//! on the first byte that is not canonical framing. Data bytes are skipped, not scanned.

/// Longest chunk-size line (size and extensions) accepted; Pingora's own bound is 8 KiB.
const MAX_LINE: usize = 4096;
/// Longest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size (`digits` so far).
    Size,
    /// Whitespace after the size: only before a `;` (BWS).
    SizeSpace,
    /// Inside chunk extensions, until CR.
    Ext,
    /// CR seen at the end of a size line.
    SizeLf,
    /// Chunk data still to come.
    Data,
    /// After the data: CR, then LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

/// The streaming checker: feed it every body byte in order.
#[derive(Debug)]
pub struct ChunkCheck {
    state: State,
    size: u64,
    digits: usize,
    line: usize,
    trailers: usize,
}

/// The body's framing broke the grammar at this point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation;

impl Default for ChunkCheck {
    fn default() -> Self {
        ChunkCheck {
            state: State::Size,
            size: 0,
            digits: 0,
            line: 0,
            trailers: 0,
        }
    }
}

impl ChunkCheck {
    /// Whether the last chunk and the trailers have been seen (later bytes are not the body).
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Violation> {
        while let Some((&b, rest)) = bytes.split_first() {
            if self.state == State::Data {
                // Skip data in bulk.
                let n = (self.size as usize).min(bytes.len());
                self.size -= n as u64;
                bytes = &bytes[n..];
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            bytes = rest;
            self.step(b)?;
        }
        Ok(())
    }

    fn step(&mut self, b: u8) -> Result<(), Violation> {
        use State::*;
        if matches!(self.state, Size | SizeSpace | Ext | SizeLf) {
            self.line += 1;
            if self.line > MAX_LINE {
                return Err(Violation);
            }
        }
        if matches!(self.state, TrailerStart | TrailerLine | TrailerLf | FinalLf) {
            self.trailers += 1;
            if self.trailers > MAX_TRAILERS {
                return Err(Violation);
            }
        }
        self.state = match (self.state, b) {
            (Size, b) if b.is_ascii_hexdigit() => {
                self.digits += 1;
                if self.digits > 15 {
                    return Err(Violation);
                }
                self.size = self.size * 16 + (b as char).to_digit(16).unwrap_or(0) as u64;
                Size
            }
            (Size, b'\r') if self.digits > 0 => SizeLf,
            (Size, b';') if self.digits > 0 => Ext,
            (Size, b' ' | b'\t') if self.digits > 0 => SizeSpace,
            (SizeSpace, b' ' | b'\t') => SizeSpace,
            (SizeSpace, b';') => Ext,
            (Ext, b'\r') => SizeLf,
            // Visible characters, spaces and tabs; no CR/LF/other controls or DEL.
            (Ext, b) if b == b'\t' || (b' '..=b'~').contains(&b) => Ext,
            (Ext, b) if b >= 0x80 => Ext,
            (SizeLf, b'\n') if self.size == 0 => TrailerStart,
            (SizeLf, b'\n') => Data,
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => {
                self.size = 0;
                self.digits = 0;
                self.line = 0;
                Size
            }
            (TrailerStart, b'\r') => FinalLf,
            (TrailerLine, b'\r') => TrailerLf,
            (TrailerStart | TrailerLine, b) if b != b'\n' && b != 0 => TrailerLine,
            (TrailerLf, b'\n') => TrailerStart,
            (FinalLf, b'\n') => Done,
            (Done, _) => Done,
            _ => return Err(Violation),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &[u8]) -> Result<bool, Violation> {
        let mut c = ChunkCheck::default();
        c.feed(body)?;
        Ok(c.done())
    }

    #[test]
    fn canonical_framing_passes_in_any_split() {
        let good: [&[u8]; 6] = [
            b"3\r\nabc\r\n0\r\n\r\n",
            b"3;a=b\r\nabc\r\n5 ;q=\"x y\"\r\nhello\r\n0\r\n\r\n",
            b"A\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n",
            b"ff\r\n".as_slice(),
            b"0\r\n\r\n",
            b"1\r\n\n\r\n0\r\n\r\n",
        ];
        for body in good {
            assert!(check(body).is_ok(), "{:?}", String::from_utf8_lossy(body));
            // Fed one byte at a time: the same verdict.
            let mut c = ChunkCheck::default();
            for b in body {
                c.feed(std::slice::from_ref(b)).unwrap();
            }
        }
        assert_eq!(check(b"3\r\nabc\r\n0\r\n\r\n"), Ok(true));
        assert_eq!(check(b"3\r\nab"), Ok(false));
    }

    #[test]
    fn lenient_forms_are_violations() {
        let bad: [&[u8]; 12] = [
            b"1;a=b\nc\r\nA\r\n0\r\n\r\n",
            b"1 \r\nA\r\n0\r\n\r\n",
            b"1\nA\r\n0\r\n\r\n",
            b"1\r\nA\n0\r\n\r\n",
            b"1\r\nAB\r\n0\r\n\r\n",
            b"\r\n",
            b"-1\r\n",
            b"0x1\r\n",
            b"fffffffffffffffff\r\n",
            b"0\r\nX: y\n\r\n",
            b"0\r\n\n",
            b"1;a\x01\r\nA\r\n0\r\n\r\n",
        ];
        for body in bad {
            assert_eq!(
                check(body),
                Err(Violation),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
