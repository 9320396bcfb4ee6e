//! Property tests of the protocol crate: the decoder never panics, reads a `sync` frame the same
//! on its one-pass path as on the general one, and id/time compression round-trips for every id
//! form, shift sign and sequence number.

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
    fn sync_frames_read_the_same_on_the_one_pass_path_as_on_the_general_one(
        added in prop_oneof![
            8 => any::<i64>().prop_map(|n| n.to_string()),
            1 => Just("1.0".to_owned()),
            1 => Just("1.5".to_owned()),
            1 => Just("\"s\"".to_owned()),
            1 => Just("null".to_owned()),
        ],
        pairs in prop::collection::vec((
            prop_oneof![
                4 => Just("{\"type\":\"logux/processed\",\"id\":\"1 a:b:c 0\"}".to_owned()),
                2 => Just("{\"type\":\"a\",\"k\":[1,{\"x\":\"y\"}],\"n\":null}".to_owned()),
                1 => Just("{\"type\":\"a\\u0062\",\"k\\n\":1}".to_owned()),
                1 => Just("{\"type\":1}".to_owned()),
                1 => Just("[1,2]".to_owned()),
            ],
            prop_oneof![
                4 => Just("{\"id\":[1,\"a:b:c\",2],\"time\":3}".to_owned()),
                4 => Just("{\"id\":[1,2],\"time\":-3}".to_owned()),
                4 => (any::<i32>(), any::<i32>()).prop_map(|(i, t)| format!("{{\"id\":{i},\"time\":{t}}}")),
                1 => Just("{\"id\":[1,\"a:b:c\",2,4],\"time\":3}".to_owned()),
                1 => Just("{\"id\":[1,-2],\"time\":3}".to_owned()),
                1 => Just("{\"id\":[[1],2],\"time\":3}".to_owned()),
                1 => Just("{\"id\":[],\"time\":3}".to_owned()),
                1 => Just("{\"id\":2.0,\"time\":1e3}".to_owned()),
                1 => Just("{\"id\":\"x\",\"time\":3}".to_owned()),
                1 => Just("{\"time\":3}".to_owned()),
                1 => Just("{\"id\":5,\"time\":3,\"subprotocol\":2}".to_owned()),
                1 => Just("{\"id\":5,\"time\":3,\"reasons\":[\"a\"],\"added\":1}".to_owned()),
                1 => Just("null".to_owned()),
            ],
        ), 0..5),
        trailing in prop::option::weighted(0.1, Just("{\"type\":\"a\"}".to_owned())),
    ) {
        let mut rest = format!(",{added}");
        for (action, meta) in &pairs {
            rest.push_str(&format!(",{action},{meta}"));
        }
        if let Some(t) = &trailing {
            rest.push_str(&format!(",{t}"));
        }
        // A space after `[` sends the same frame down the general path.
        let one_pass = parse(&format!("[\"sync\"{rest}]"));
        let general = parse(&format!("[ \"sync\"{rest}]"));
        let read = |m: Result<Message, _>| match m {
            Ok(Message::Sync { added, entries }) => Some((
                added,
                entries
                    .into_iter()
                    .map(|e| (e.action.kind().to_owned(), e.action.json().to_string(), e.meta))
                    .collect::<Vec<_>>(),
            )),
            Ok(other) => panic!("not a sync: {other:?}"),
            Err(_) => None,
        };
        prop_assert_eq!(read(one_pass), read(general), "{}", rest);
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
