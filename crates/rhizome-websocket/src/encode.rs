//! The frame encoder: server frames are never masked and never fragmented.

/// Frame opcodes the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// A text message.
    Text = 1,
    /// A binary message.
    Binary = 2,
    /// A close frame.
    Close = 8,
    /// A ping.
    Ping = 9,
    /// A pong.
    Pong = 10,
}

/// Appends one final, unmasked frame to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8]) {
    out.reserve(payload.len() + 10);
    out.push(0x80 | opcode as u8);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Appends a text message.
pub fn encode_text(out: &mut Vec<u8>, text: &str) {
    encode_frame(out, Opcode::Text, text.as_bytes());
}

/// Appends the pong answering a ping with `payload`.
pub fn encode_pong(out: &mut Vec<u8>, payload: &[u8]) {
    encode_frame(out, Opcode::Pong, payload);
}

/// Appends a close frame; a reason longer than a control frame allows is cut at a character
/// boundary.
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode_frame(out, Opcode::Close, &payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_use_the_shortest_form() {
        for (n, header) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let mut out = Vec::new();
            encode_frame(&mut out, Opcode::Binary, &vec![7; n]);
            assert_eq!(out.len(), header + n, "{n}");
            assert_eq!(out[0], 0x82);
        }
    }

    #[test]
    fn close_reason_is_cut_at_a_char_boundary() {
        let mut out = Vec::new();
        encode_close(&mut out, 1000, &"é".repeat(100));
        let len = out[1] as usize;
        assert!(len <= 125);
        assert!(std::str::from_utf8(&out[4..2 + len]).is_ok());
    }
}
