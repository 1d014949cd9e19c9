//! Incremental decoder for the chunked transfer coding (RFC 9112 §7.1). It
//! only finds where the body ends; the data itself flows through untouched.

/// Longest chunk extension or trailer line accepted; longer is an error so
/// that a peer cannot make us scan without end.
pub const MAX_LINE: usize = 4096;
/// Total bytes of trailer section accepted.
pub const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid chunked body: {}", self.0)
    }
}

impl std::error::Error for ChunkError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size (`digits` seen so far).
    Size {
        digits: u8,
    },
    /// Whitespace after the size, before `;` or CR.
    SizeWs,
    /// Inside chunk extensions, up to CR.
    Ext {
        len: usize,
    },
    /// CR seen after the size line; LF must follow.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// In a trailer field's name, before its colon.
    TrailerName {
        len: usize,
    },
    /// In a trailer field's value.
    Trailer {
        len: usize,
    },
    TrailerLf,
    FinalLf,
    Done,
    Failed,
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Current chunk size, then the bytes of it still to come.
    remaining: u64,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size { digits: 0 },
            remaining: 0,
            trailer_bytes: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feed the next bytes of the body. Returns how many belong to the body
    /// (all of `buf` unless it ends inside) and whether the body is complete.
    /// After an error the decoder stays failed.
    pub fn feed(&mut self, buf: &[u8]) -> Result<(usize, bool), ChunkError> {
        if self.state == State::Failed {
            return Err(ChunkError("decoder already failed"));
        }
        let mut i = 0;
        while i < buf.len() {
            let c = buf[i];
            self.state = match self.state {
                State::Done => return Ok((i, true)),
                State::Failed => return Err(ChunkError("decoder already failed")),
                State::Size { digits } => match hex(c) {
                    Some(d) => {
                        if digits >= 16 {
                            return self.fail("chunk size too large");
                        }
                        self.remaining = (self.remaining << 4) | u64::from(d);
                        State::Size { digits: digits + 1 }
                    }
                    None if digits == 0 => return self.fail("missing chunk size"),
                    None => match c {
                        b' ' | b'\t' => State::SizeWs,
                        b';' => State::Ext { len: 0 },
                        b'\r' => State::SizeLf,
                        _ => return self.fail("bad chunk size"),
                    },
                },
                State::SizeWs => match c {
                    b' ' | b'\t' => State::SizeWs,
                    b';' => State::Ext { len: 0 },
                    b'\r' => State::SizeLf,
                    _ => return self.fail("bad chunk size line"),
                },
                State::Ext { len } => match c {
                    b'\r' => State::SizeLf,
                    b'\t' | 0x20..=0x7e | 0x80..=0xff if len < MAX_LINE => {
                        State::Ext { len: len + 1 }
                    }
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => {
                        return self.fail("chunk extension too long")
                    }
                    _ => return self.fail("bad chunk extension"),
                },
                State::SizeLf => match c {
                    b'\n' if self.remaining == 0 => State::TrailerStart,
                    b'\n' => State::Data,
                    _ => return self.fail("missing LF after chunk size"),
                },
                State::Data => {
                    let avail = (buf.len() - i) as u64;
                    let take = avail.min(self.remaining);
                    self.remaining -= take;
                    i += take as usize;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => match c {
                    b'\r' => State::DataLf,
                    _ => return self.fail("missing CRLF after chunk data"),
                },
                State::DataLf => match c {
                    b'\n' => State::Size { digits: 0 },
                    _ => return self.fail("missing CRLF after chunk data"),
                },
                State::TrailerStart => match c {
                    b'\r' => State::FinalLf,
                    b' ' | b'\t' => return self.fail("obs-fold in trailer"),
                    b'\n' => return self.fail("bare LF in trailer"),
                    // Only header fields: a server that stops at the last
                    // chunk's line would read a non-field line (a request
                    // line, say) as the next request, one nobody judged.
                    _ if super::head::is_tchar(c) => {
                        self.count_trailer()?;
                        State::TrailerName { len: 1 }
                    }
                    _ => return self.fail("trailer line is not a header field"),
                },
                State::TrailerName { len } => match c {
                    _ if len >= MAX_LINE => return self.fail("trailer line too long"),
                    b':' => {
                        self.count_trailer()?;
                        State::Trailer { len: len + 1 }
                    }
                    _ if super::head::is_tchar(c) => {
                        self.count_trailer()?;
                        State::TrailerName { len: len + 1 }
                    }
                    _ => return self.fail("trailer line is not a header field"),
                },
                State::Trailer { len } => match c {
                    b'\r' => State::TrailerLf,
                    b'\n' => return self.fail("bare LF in trailer"),
                    _ if len >= MAX_LINE => return self.fail("trailer line too long"),
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => {
                        self.count_trailer()?;
                        State::Trailer { len: len + 1 }
                    }
                    _ => return self.fail("bad trailer byte"),
                },
                State::TrailerLf => match c {
                    b'\n' => State::TrailerStart,
                    _ => return self.fail("missing LF in trailer"),
                },
                State::FinalLf => match c {
                    b'\n' => {
                        self.state = State::Done;
                        return Ok((i + 1, true));
                    }
                    _ => return self.fail("missing final CRLF"),
                },
            };
            i += 1;
        }
        Ok((i, self.state == State::Done))
    }

    fn count_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILERS {
            return Err(ChunkError("trailers too large"));
        }
        Ok(())
    }

    fn fail<T>(&mut self, why: &'static str) -> Result<T, ChunkError> {
        // Stay failed: a later feed must not resynchronise on garbage.
        self.state = State::Failed;
        Err(ChunkError(why))
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(s: &[u8]) -> Result<(usize, bool), ChunkError> {
        ChunkedDecoder::new().feed(s)
    }

    #[test]
    fn complete_bodies() {
        let b = b"5\r\nhello\r\n0\r\n\r\nNEXT";
        assert_eq!(whole(b), Ok((b.len() - 4, true)));
        let b = b"A;name=\"v\" ; x\r\n0123456789\r\n0;last\r\nX-Trailer: 1\r\nY: 2\r\n\r\n";
        assert_eq!(whole(b), Ok((b.len(), true)));
        let b = b"1f \r\n0123456789012345678901234567890\r\n0\r\n\r\n";
        assert_eq!(whole(b), Ok((b.len(), true)));
        assert_eq!(whole(b"0\r\n\r\n"), Ok((5, true)));
    }

    #[test]
    fn every_split_gives_the_same_end() {
        let b = b"3;e=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: v\r\n\r\nrest";
        let end = b.len() - 4;
        for cut in 0..=b.len() {
            let mut d = ChunkedDecoder::new();
            let (n1, done1) = d.feed(&b[..cut]).unwrap();
            if cut < end {
                assert_eq!((n1, done1), (cut, false), "cut {cut}");
                let (n2, done2) = d.feed(&b[cut..]).unwrap();
                assert_eq!((n1 + n2, done2), (end, true), "cut {cut}");
            } else {
                assert_eq!((n1, done1), (end, true));
            }
        }
        // Byte by byte.
        let mut d = ChunkedDecoder::new();
        let mut total = 0;
        for k in 0..end {
            let (n, done) = d.feed(&b[k..k + 1]).unwrap();
            total += n;
            assert_eq!(done, k == end - 1);
        }
        assert_eq!(total, end);
        assert_eq!(d.feed(b"rest"), Ok((0, true)));
    }

    #[test]
    fn errors() {
        for bad in [
            &b"\r\n"[..],
            b"g\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nT: v\n\r\n",
            b"0\r\n folded\r\n\r\n",
            b"1 2\r\n",
            b"1;\x01\r\n",
            b"11111111111111111\r\n",
            b"0\r\n\rX",
        ] {
            let mut d = ChunkedDecoder::new();
            assert!(d.feed(bad).is_err(), "{bad:?}");
            assert!(d.feed(b"0\r\n\r\n").is_err(), "stays failed after {bad:?}");
        }
        let long_ext = [b"1;".as_slice(), &vec![b'a'; MAX_LINE + 1]].concat();
        assert_eq!(
            whole(&long_ext),
            Err(ChunkError("chunk extension too long"))
        );
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..(MAX_TRAILERS / 5) {
            trailers.extend_from_slice(b"X: 123456\r\n");
        }
        assert_eq!(whole(&trailers), Err(ChunkError("trailers too large")));
    }

    /// A last chunk without its final CRLF, followed by a request: h11 and
    /// llhttp refuse it, a server that ends the body at the last chunk's
    /// line reads a second request. Trailer lines must be header fields.
    #[test]
    fn trailer_lines_are_header_fields() {
        for bad in [
            &b"0\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"0\r\nno-colon\r\n\r\n",
            b"0\r\n: empty-name\r\n\r\n",
            b"0\r\nX Y: v\r\n\r\n",
            b"0\r\nX\t: v\r\n\r\n",
        ] {
            let mut d = ChunkedDecoder::new();
            assert_eq!(
                d.feed(bad),
                Err(ChunkError("trailer line is not a header field")),
                "{bad:?}"
            );
        }
        let good = b"0\r\nX-T:1\r\nY: 2 3\r\n\r\n";
        assert_eq!(whole(good), Ok((good.len(), true)));
        let long_name = [b"0\r\n".as_slice(), &vec![b'a'; MAX_LINE + 1]].concat();
        assert_eq!(whole(&long_name), Err(ChunkError("trailer line too long")));
    }

    #[test]
    fn largest_size_is_accepted_without_overflow() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"ffffffffffffffff\r\nab"), Ok((20, false)));
    }
}
