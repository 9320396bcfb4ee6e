//! Property tests of the decoder: it never panics on any input, and any sequence of messages,
//! encoded as a client would and cut into any chunks, decodes to the same messages.

use proptest::prelude::*;
use rhizome_websocket::{Decoder, Message};

fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
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

proptest! {
    #[test]
    fn never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8)) {
        let mut d = Decoder::new(4096);
        for mut chunk in chunks {
            if d.feed(&mut chunk, |_| {}).is_err() {
                break;
            }
        }
    }

    #[test]
    fn any_chunking_decodes_the_same_messages(
        texts in prop::collection::vec(".{0,200}", 1..10),
        fragment_at in prop::collection::vec(0usize..50, 1..10),
        cuts in prop::collection::vec(1usize..64, 1..40),
        mask in any::<[u8; 4]>(),
    ) {
        let mut bytes = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let at = fragment_at[i % fragment_at.len()];
            let raw = text.as_bytes();
            if at > 0 && at < raw.len() {
                bytes.extend(client_frame(false, 1, &raw[..at], mask));
                bytes.extend(client_frame(true, 9, b"ping", mask));
                bytes.extend(client_frame(true, 0, &raw[at..], mask));
            } else {
                bytes.extend(client_frame(true, 1, raw, mask));
            }
        }
        let mut d = Decoder::new(1 << 16);
        let mut got = Vec::new();
        let mut rest = &bytes[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            let mut chunk = rest[..n].to_vec();
            rest = &rest[n..];
            i += 1;
            d.feed(&mut chunk, |m| if let Message::Text(t) = m { got.push(t.to_owned()) }).expect("valid input");
        }
        prop_assert_eq!(got, texts);
        prop_assert_eq!(d.buffered_bytes(), 0);
    }
}
