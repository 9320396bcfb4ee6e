//! What the wake-up task spends looking at one commit (the hub only hands entries over):
//! `Registry::concerned` and `Schedule::touch` for 5,000 entries, with many devices
//! registered. Prints figures.
//!
//! `cargo run --release -p rhizome-core --example wakeup_cost`

use rhizome_core::wakeup::{Registry, Schedule, ScheduleOptions};
use rhizome_core::{Routing, StoredEntry};
use rhizome_protocol::ActionId;
use std::sync::Arc;
use std::time::Instant;

fn main() {
    for (devices, channels, per_device) in [(10_000, 1_000, 3), (100_000, 10_000, 5), (100_000, 10, 1)] {
        let mut registry = Registry::default();
        for d in 0..devices {
            let node = format!("u{}:d{d}:1", d % (devices / 2));
            let followed =
                (0..per_device).map(|k| format!("c/{}", (d * 7 + k * 13) % channels).into()).collect();
            registry.insert(node.as_str().into(), followed);
        }
        // A commit of 5,000 entries by 50 authors over 100 channels, some addressed to users.
        let entries: Vec<StoredEntry> = (0..5_000)
            .map(|i| {
                let mut routing = Routing::channel(format!("c/{}", (i * 31) % channels.min(100)).as_str());
                if i % 10 == 0 {
                    routing.users = vec![format!("u{}", i % 1000).as_str().into()];
                }
                StoredEntry {
                    added: i as u64 + 1,
                    id: ActionId::parse(&format!("{} a{}:x:1 0", 1_000 + i, i % 50)).expect("id"),
                    time: 1,
                    action_json: Arc::from("{}"),
                    subprotocol: 1,
                    routing,
                    crdt: None,
                }
            })
            .collect();
        let mut schedule = Schedule::new(ScheduleOptions::default());
        let rounds = 20;
        let started = Instant::now();
        let mut concerned = 0;
        for round in 0..rounds {
            let set = registry.concerned(&entries);
            concerned = set.len();
            for client in &set {
                schedule.touch(client, round);
            }
        }
        let per_commit = started.elapsed() / rounds as u32;
        println!(
            "devices={devices} channels={channels} followed_per_device={per_device}: a 5,000-entry commit concerns {concerned} devices; concerned+touch {per_commit:?} per commit ({:.0} ns per entry)",
            per_commit.as_nanos() as f64 / 5_000.0
        );
    }
}
