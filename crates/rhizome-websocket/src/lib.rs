//! WebSocket (RFC 6455) framing for the server side, sans-IO.
//!
//! Rhizome holds many mostly idle sockets, so this decoder keeps nothing between frames: bytes
//! read into a caller's (stack) buffer are unmasked in place and handed out as borrowed
//! messages; only a frame cut in half by the network is copied, and that copy is freed as soon
//! as the frame completes. Extensions (compression) are not negotiated, so every RSV bit must
//! be clear.

mod decode;
mod encode;

pub use decode::{Decoder, Message, Violation};
pub use encode::{encode_close, encode_frame, encode_pong, encode_text, Opcode};

use base64::Engine;
use sha1::{Digest, Sha1};

/// The GUID every server appends to the client's key (RFC 6455, section 1.3).
const HANDSHAKE_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value answering a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(HANDSHAKE_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Close codes (RFC 6455, section 7.4.1, and the private range Rhizome uses).
pub mod close_code {
    /// The purpose of the connection was fulfilled.
    pub const NORMAL: u16 = 1000;
    /// The server is going down or the connection timed out.
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the WebSocket protocol.
    pub const PROTOCOL: u16 = 1002;
    /// A data type the endpoint does not accept (binary where text is expected).
    pub const UNSUPPORTED: u16 = 1003;
    /// A text message that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A message that breaks the application's policy.
    pub const POLICY: u16 = 1008;
    /// A message bigger than the endpoint accepts.
    pub const TOO_BIG: u16 = 1009;
    /// The server failed.
    pub const INTERNAL: u16 = 1011;

    /// Whether a peer may send `code` in a close frame.
    pub fn is_valid_on_wire(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
