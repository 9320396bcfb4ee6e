//! Reading a channel through the run index, against a model of the log.

use proptest::prelude::*;
use rhizome_core::{AppendOutcome, NewEntry, Routing, Status};
use rhizome_protocol::Channel;
use rhizome_store::{Append, LogWriter, SqliteStore, Store, WriteBatch};

fn entry(id: String, channels: &[u8]) -> NewEntry {
    let routing = Routing {
        // A channel may be named twice in one routing.
        channels: channels.iter().map(|c| Channel::from(format!("c/{c}").as_str())).collect(),
        ..Routing::default()
    };
    super::entry(&id, routing, Status::Processed)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any window of any channel reads back exactly the actions routed to it there, in order,
    /// however their channels interleave within and across transactions.
    #[test]
    fn a_channel_reads_back_what_was_routed_to_it(
        transactions in prop::collection::vec(
            prop::collection::vec(prop::collection::vec(prop::collection::vec(0u8..4, 0..3), 0..40), 1..3),
            1..6,
        ),
        windows in prop::collection::vec((0u64..200, 0u64..200, 1usize..50), 8),
    ) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(dir.path()).expect("open");
        let mut writer = store.writer().expect("writer");
        // (position, channels) of every logged action.
        let mut model: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut n = 0u64;
        for (t, syncs) in transactions.iter().enumerate() {
            let mut batches: Vec<WriteBatch> = syncs
                .iter()
                .map(|actions| WriteBatch {
                    appends: actions
                        .iter()
                        .map(|channels| {
                            n += 1;
                            Append::new(entry(format!("{n} u:a 0"), channels))
                        })
                        .collect(),
                    ..WriteBatch::default()
                })
                .collect();
            let done = writer.commit(&mut batches, t as i64).expect("commit");
            for (actions, committed) in syncs.iter().zip(&done) {
                for (channels, outcome) in actions.iter().zip(&committed.outcomes) {
                    let AppendOutcome::Added(p) = outcome else { panic!("{outcome:?}") };
                    model.push((*p, channels.clone()));
                }
            }
        }
        for (after, upto, limit) in windows {
            for c in 0..4u8 {
                let expected: Vec<u64> = model
                    .iter()
                    .filter(|(p, channels)| *p > after && *p <= upto && channels.contains(&c))
                    .map(|(p, _)| *p)
                    .take(limit)
                    .collect();
                let got: Vec<u64> = store
                    .read_channel(&Channel::from(format!("c/{c}").as_str()), after, upto, limit)
                    .expect("read")
                    .iter()
                    .map(|e| e.added)
                    .collect();
                prop_assert_eq!(got, expected, "c/{} after {} upto {} limit {}", c, after, upto, limit);
            }
        }
    }
}
