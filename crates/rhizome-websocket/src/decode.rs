//! The frame decoder: bytes from a client in, complete messages out.

use crate::close_code;

/// A complete message from the client, borrowed from the bytes fed to the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message (valid UTF-8).
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
    /// A ping; the server answers with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// The client closes the connection, with its close code if it gave one.
    Close {
        /// The close code.
        code: Option<u16>,
        /// The reason text.
        reason: &'a str,
    },
}

/// Why the decoder stopped: the connection must be closed with [`Violation::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The bytes break RFC 6455.
    #[error("{0}")]
    Protocol(&'static str),
    /// A text message or close reason that is not UTF-8.
    #[error("text is not UTF-8")]
    InvalidUtf8,
    /// A message bigger than the decoder accepts.
    #[error("message larger than {0} bytes")]
    TooBig(usize),
}

impl Violation {
    /// The close code that answers this violation.
    pub fn close_code(&self) -> u16 {
        match self {
            Violation::Protocol(_) => close_code::PROTOCOL,
            Violation::InvalidUtf8 => close_code::INVALID_DATA,
            Violation::TooBig(_) => close_code::TOO_BIG,
        }
    }
}

const OP_CONTINUATION: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// Control frames carry at most this many payload bytes (RFC 6455, section 5.5).
const CONTROL_PAYLOAD_MAX: usize = 125;

/// A fragmented data message being assembled.
#[derive(Debug)]
struct Fragments {
    text: bool,
    data: Vec<u8>,
}

/// Decodes the frames one client sends. Between frames it holds no buffer.
#[derive(Debug)]
pub struct Decoder {
    message_bytes_max: usize,
    /// Bytes of a frame that has not fully arrived; empty (and unallocated) otherwise.
    partial: Vec<u8>,
    fragments: Option<Box<Fragments>>,
    closed: bool,
}

struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    header_bytes: usize,
    payload_bytes: usize,
}

impl Decoder {
    /// A decoder that refuses messages over `message_bytes_max` bytes.
    pub fn new(message_bytes_max: usize) -> Decoder {
        Decoder { message_bytes_max, partial: Vec::new(), fragments: None, closed: false }
    }

    /// Whether the client sent its close frame; later bytes are ignored.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Bytes held for a frame that has not fully arrived (memory accounting).
    pub fn buffered_bytes(&self) -> usize {
        self.partial.len() + self.fragments.as_ref().map_or(0, |f| f.data.len())
    }

    /// Decodes `input` (which it may change: payloads are unmasked in place), calling
    /// `on_message` for every complete message, in order. Bytes of an incomplete frame are
    /// kept for the next call. After an error the connection must be closed.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        mut on_message: impl FnMut(Message<'_>),
    ) -> Result<(), Violation> {
        if self.closed {
            return Ok(());
        }
        if self.partial.is_empty() {
            let used = self.frames(input, &mut on_message)?;
            if used < input.len() && !self.closed {
                self.partial.extend_from_slice(&input[used..]);
            }
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(input);
            let used = self.frames(&mut buf, &mut on_message)?;
            if used < buf.len() && !self.closed {
                buf.drain(..used);
                self.partial = buf;
            }
        }
        Ok(())
    }

    /// Decodes the complete frames at the start of `buf`; returns how many bytes they took.
    fn frames(
        &mut self,
        buf: &mut [u8],
        on_message: &mut impl FnMut(Message<'_>),
    ) -> Result<usize, Violation> {
        let mut pos = 0;
        while !self.closed {
            let Some(header) = self.header(&buf[pos..])? else { break };
            let end = pos + header.header_bytes + header.payload_bytes;
            if end > buf.len() {
                break;
            }
            let payload = &mut buf[pos + header.header_bytes..end];
            unmask(payload, header.mask);
            pos = end;
            self.dispatch(&header, payload, on_message)?;
        }
        Ok(pos)
    }

    /// Parses and checks the header at the start of `buf`; `None` when it has not fully arrived.
    fn header(&self, buf: &[u8]) -> Result<Option<Header>, Violation> {
        let [b0, b1, ..] = *buf else { return Ok(None) };
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        if b0 & 0x70 != 0 {
            return Err(Violation::Protocol("reserved bits set without an extension"));
        }
        if b1 & 0x80 == 0 {
            return Err(Violation::Protocol("client frames must be masked"));
        }
        let (length_bytes, short) = match b1 & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(n as u64)),
        };
        let header_bytes = 2 + length_bytes + 4;
        if buf.len() < header_bytes {
            return Ok(None);
        }
        let length = match short {
            Some(n) => n,
            None => buf[2..2 + length_bytes].iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)),
        };
        if length >> 63 != 0 {
            return Err(Violation::Protocol("frame length has its most significant bit set"));
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&buf[2 + length_bytes..header_bytes]);
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(Violation::Protocol("fragmented control frame"));
                }
                if length > CONTROL_PAYLOAD_MAX as u64 {
                    return Err(Violation::Protocol("control frame longer than 125 bytes"));
                }
            }
            OP_TEXT | OP_BINARY | OP_CONTINUATION => {
                let so_far = self.fragments.as_ref().map_or(0, |f| f.data.len()) as u64;
                if so_far.saturating_add(length) > self.message_bytes_max as u64 {
                    return Err(Violation::TooBig(self.message_bytes_max));
                }
            }
            _ => return Err(Violation::Protocol("unknown opcode")),
        }
        // Checked against message_bytes_max (a usize) or 125 above, so it fits.
        let payload_bytes = length as usize;
        Ok(Some(Header { fin, opcode, mask, header_bytes, payload_bytes }))
    }

    fn dispatch(
        &mut self,
        header: &Header,
        payload: &[u8],
        on_message: &mut impl FnMut(Message<'_>),
    ) -> Result<(), Violation> {
        match header.opcode {
            OP_TEXT | OP_BINARY => {
                if self.fragments.is_some() {
                    return Err(Violation::Protocol("new data frame inside a fragmented message"));
                }
                let text = header.opcode == OP_TEXT;
                if header.fin {
                    deliver(text, payload, on_message)?;
                } else {
                    self.fragments = Some(Box::new(Fragments { text, data: payload.to_vec() }));
                }
            }
            OP_CONTINUATION => {
                let Some(fragments) = self.fragments.as_mut() else {
                    return Err(Violation::Protocol("continuation frame without a message"));
                };
                fragments.data.extend_from_slice(payload);
                if header.fin {
                    if let Some(done) = self.fragments.take() {
                        deliver(done.text, &done.data, on_message)?;
                    }
                }
            }
            OP_PING => on_message(Message::Ping(payload)),
            OP_PONG => on_message(Message::Pong(payload)),
            _ => {
                self.closed = true;
                let (code, reason) = match payload {
                    [] => (None, ""),
                    [_] => return Err(Violation::Protocol("close frame with a one-byte payload")),
                    [hi, lo, reason @ ..] => {
                        let code = u16::from_be_bytes([*hi, *lo]);
                        if !close_code::is_valid_on_wire(code) {
                            return Err(Violation::Protocol("invalid close code"));
                        }
                        (Some(code), std::str::from_utf8(reason).map_err(|_| Violation::InvalidUtf8)?)
                    }
                };
                on_message(Message::Close { code, reason });
            }
        }
        Ok(())
    }
}

fn deliver(text: bool, payload: &[u8], on_message: &mut impl FnMut(Message<'_>)) -> Result<(), Violation> {
    if text {
        let text = std::str::from_utf8(payload).map_err(|_| Violation::InvalidUtf8)?;
        on_message(Message::Text(text));
    } else {
        on_message(Message::Binary(payload));
    }
    Ok(())
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode_all(d: &mut Decoder, bytes: &[u8]) -> Result<Vec<String>, Violation> {
        let mut got = Vec::new();
        let mut buf = bytes.to_vec();
        d.feed(&mut buf, |m| got.push(format!("{m:?}")))?;
        Ok(got)
    }

    #[test]
    fn decodes_text_split_at_every_byte() {
        let text = "[\"connect\",5,\"10:uuid\",0]".repeat(20);
        let bytes = frame(true, OP_TEXT, text.as_bytes());
        for cut in 0..bytes.len() {
            let mut d = Decoder::new(1 << 20);
            let mut got = decode_all(&mut d, &bytes[..cut]).expect("first part");
            assert!(got.is_empty(), "nothing before the frame is complete");
            got.extend(decode_all(&mut d, &bytes[cut..]).expect("second part"));
            assert_eq!(got, [format!("{:?}", Message::Text(&text))]);
            assert_eq!(d.buffered_bytes(), 0, "nothing kept after a complete frame");
        }
    }

    #[test]
    fn several_frames_in_one_read_and_long_lengths() {
        let big = "x".repeat(70_000);
        let mut bytes = frame(true, OP_TEXT, b"a");
        bytes.extend(frame(true, OP_PING, b"p"));
        bytes.extend(frame(true, OP_TEXT, big.as_bytes()));
        bytes.extend(frame(true, OP_BINARY, &[1, 2]));
        let got = decode_all(&mut Decoder::new(1 << 20), &bytes).expect("decode");
        assert_eq!(got.len(), 4);
        assert_eq!(got[1], format!("{:?}", Message::Ping(b"p")));
        assert_eq!(got[2], format!("{:?}", Message::Text(&big)));
        assert_eq!(got[3], format!("{:?}", Message::Binary(&[1, 2])));
    }

    #[test]
    fn fragments_with_interleaved_control_frames() {
        let mut bytes = frame(false, OP_TEXT, "hé".as_bytes());
        bytes.extend(frame(true, OP_PING, b""));
        bytes.extend(frame(false, OP_CONTINUATION, b"llo "));
        bytes.extend(frame(true, OP_CONTINUATION, b"world"));
        let got = decode_all(&mut Decoder::new(100), &bytes).expect("decode");
        assert_eq!(got, [format!("{:?}", Message::Ping(b"")), format!("{:?}", Message::Text("héllo world"))]);
    }

    #[test]
    fn violations() {
        let cases: Vec<(Vec<u8>, Violation)> = vec![
            (vec![0x81, 0x01, b'a'], Violation::Protocol("client frames must be masked")),
            (
                {
                    let mut f = frame(true, OP_TEXT, b"a");
                    f[0] |= 0x40;
                    f
                },
                Violation::Protocol("reserved bits set without an extension"),
            ),
            (frame(true, 3, b""), Violation::Protocol("unknown opcode")),
            (frame(false, OP_PING, b""), Violation::Protocol("fragmented control frame")),
            (frame(true, OP_PING, &[0; 126]), Violation::Protocol("control frame longer than 125 bytes")),
            (frame(true, OP_CONTINUATION, b"a"), Violation::Protocol("continuation frame without a message")),
            (
                {
                    let mut f = frame(false, OP_TEXT, b"a");
                    f.extend(frame(true, OP_TEXT, b"b"));
                    f
                },
                Violation::Protocol("new data frame inside a fragmented message"),
            ),
            (frame(true, OP_TEXT, &[0xff, 0xfe]), Violation::InvalidUtf8),
            (frame(true, OP_TEXT, &[b'a'; 11]), Violation::TooBig(10)),
            (
                {
                    let mut f = frame(false, OP_TEXT, &[b'a'; 6]);
                    f.extend(frame(true, OP_CONTINUATION, &[b'a'; 6]));
                    f
                },
                Violation::TooBig(10),
            ),
            (frame(true, OP_CLOSE, &[3]), Violation::Protocol("close frame with a one-byte payload")),
            (frame(true, OP_CLOSE, &1005u16.to_be_bytes()), Violation::Protocol("invalid close code")),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode_all(&mut Decoder::new(10), &bytes), Err(want.clone()), "{bytes:?}");
        }
        assert_eq!(Violation::TooBig(1).close_code(), close_code::TOO_BIG);
        assert_eq!(Violation::InvalidUtf8.close_code(), close_code::INVALID_DATA);
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header_alone() {
        let mut d = Decoder::new(1000);
        let header = &frame(true, OP_TEXT, &[b'a'; 5000])[..8];
        assert_eq!(decode_all(&mut d, header), Err(Violation::TooBig(1000)));
    }

    #[test]
    fn close_ends_decoding() {
        let mut bytes = frame(true, OP_CLOSE, &[0x03, 0xe8, b'b', b'y', b'e']);
        bytes.extend(frame(true, OP_TEXT, b"ignored"));
        let mut d = Decoder::new(100);
        let got = decode_all(&mut d, &bytes).expect("decode");
        assert_eq!(got, [format!("{:?}", Message::Close { code: Some(1000), reason: "bye" })]);
        assert!(d.is_closed());
        assert_eq!(d.buffered_bytes(), 0);
    }
}
