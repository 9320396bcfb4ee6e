//! Property tests of the protocol crate: the decoder never panics, and id/time compression
//! round-trips for every id form, shift sign and sequence number.

use proptest::prelude::*;
use rhizome_protocol::{parse, ActionId, Codec, Message, NodeId, SyncBuilder};

fn node() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,6}:[a-zA-Z0-9_-]{1,8}:[a-zA-Z0-9_-]{1,8}"
}

proptest! {
    #[test]
    fn parse_never_panics_on_text(text in ".{0,200}") {
        let _ = parse(&text);
    }

    #[test]
    fn parse_never_panics_on_json_arrays(
        name in prop::sample::select(vec!["connect", "connected", "sync", "synced", "ping", "pong", "error", "headers", "debug", "x"]),
        items in prop::collection::vec(prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            "[a-z ]{0,5}".prop_map(|s| format!("\"{s}\"")),
            Just("{}".to_owned()),
            Just("{\"type\":\"a\"}".to_owned()),
            Just("{\"id\":[1,\"a:b:c\",2],\"time\":3}".to_owned()),
            Just("{\"id\":[1,2],\"time\":-3}".to_owned()),
            Just("[1,2]".to_owned()),
            Just("null".to_owned()),
            Just("1.5".to_owned()),
        ], 0..7),
    ) {
        let text = format!("[\"{name}\"{}]", items.iter().map(|i| format!(",{i}")).collect::<String>());
        let _ = parse(&text);
    }

    #[test]
    fn compressed_ids_and_times_round_trip(
        base in 1_600_000_000_000i64..1_900_000_000_000,
        shift in -10_000_000i64..10_000_000,
        time_shift in -10_000_000i64..10_000_000,
        seq in 0u64..1000,
        sender in node(),
        other in node(),
        own in any::<bool>(),
    ) {
        // The sender encodes with its own node as local; the receiver decodes with it as remote.
        let sender_codec = Codec { base_time: base, local: NodeId::from(sender.as_str()), remote: NodeId::from("server:s") };
        let receiver_codec = Codec { base_time: base, local: NodeId::from("server:s"), remote: NodeId::from(sender.as_str()) };
        let author = if own { sender.clone() } else { other.clone() };
        let id = ActionId { ms: base + shift, node: NodeId::from(author.as_str()), seq };
        let mut b = SyncBuilder::new();
        b.push(&sender_codec, r#"{"type":"t"}"#, &id, base + time_shift, None);
        let frame = b.finish(1);
        let Ok(Message::Sync { entries, .. }) = parse(&frame) else { panic!("{frame}") };
        prop_assert_eq!(receiver_codec.decode_id(&entries[0].meta.id), Some(id));
        prop_assert_eq!(receiver_codec.decode_time(entries[0].meta.time), base + time_shift);
    }
}
