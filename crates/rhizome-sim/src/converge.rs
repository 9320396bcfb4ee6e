//! Convergence of the clients' CRDT objects with the server's, over the protocol only.
//!
//! With [`Scenario::crdt_share`] > 0 every storm client subscribes (while still offline) to
//! the objects it writes, so it holds copies of them ([`Client::object`]); with
//! [`Scenario::objects`] > 0 the clients share that many objects (client `i` writes
//! `sim/shared/<i mod objects>`), so each copy joins other clients' operations with its own.
//! After the storm, when every operation was answered, a fresh checker client subscribes to
//! every object from nothing and receives the server's state; each storm client's copies must
//! come to equal it (compared as documents, which are canonical) within [`CONVERGE_WAIT`].
//! Only protocol messages are used, so the check runs against any server that ships
//! `crdt/delta`s.

use crate::{client_options, is_crdt, Scenario, SimError};
use rhizome_client::{Client, Events, Object};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the checker may take to receive every object, and the storm clients' copies to
/// come to equal the checker's, once the storm is over.
pub const CONVERGE_WAIT: Duration = Duration::from_secs(30);

/// How often copies are compared while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The convergence check of a run with CRDT operations.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Convergence {
    /// Objects the clients wrote (each one checked).
    pub objects: usize,
    /// Objects the checker did not receive from the server.
    pub missing: usize,
    /// Storm clients whose copies were compared.
    pub clients_checked: usize,
    /// Clients with at least one copy unequal to the server's after [`CONVERGE_WAIT`].
    pub diverged: usize,
}

/// The object client `index` writes its CRDT operations to.
pub fn object_key(scenario: &Scenario, index: usize) -> String {
    if scenario.objects > 0 {
        format!("sim/shared/{}", index % scenario.objects)
    } else {
        format!("sim/{index}")
    }
}

/// Whether a storm client writes any CRDT operation (and so subscribes to its object).
pub fn writes_objects(scenario: &Scenario) -> bool {
    (0..scenario.actions_per_client).any(|n| is_crdt(n, scenario.crdt_share))
}

/// The channels client `index` subscribes to before the storm.
pub fn channels(scenario: &Scenario, index: usize) -> Vec<String> {
    if writes_objects(scenario) {
        vec![format!("crdt/{}", object_key(scenario, index))]
    } else {
        Vec::new()
    }
}

/// A storm client kept open after it synced, so its copies keep receiving deltas; its events
/// are drained (a full event channel would pause its connection).
#[derive(Debug)]
pub struct Held {
    index: usize,
    client: Client,
    drain: tokio::task::JoinHandle<()>,
}

impl Held {
    /// Keeps `client` (storm client `index`) open, reading its events.
    pub fn new(index: usize, client: Client, mut events: Events) -> Held {
        let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
        Held { index, client, drain }
    }

    /// Closes the client.
    pub async fn close(self) {
        self.client.close().await;
        self.drain.abort();
    }
}

/// The objects' documents as the server holds them, received by a fresh client subscribing
/// to each from nothing. A key the server never sent is missing from the map.
async fn server_objects(
    scenario: &Scenario,
    data_dir: &Path,
    keys: &[String],
) -> Result<BTreeMap<String, serde_json::Value>, SimError> {
    let index = scenario.clients + scenario.probes;
    let path = data_dir.join("checker.sqlite");
    // A file left by an earlier run would hold old copies: the checker starts from nothing.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let mut options = client_options(scenario, data_dir, index);
    options.path = path;
    options.user = "simchecker".into();
    let (checker, events) = Client::open(options).await?;
    let held = Held::new(index, checker, events);
    for key in keys {
        held.client.subscribe(&format!("crdt/{key}")).await?;
    }
    let deadline = Instant::now() + CONVERGE_WAIT;
    let mut found = BTreeMap::new();
    loop {
        for key in keys {
            if !found.contains_key(key) {
                if let Some(object) = held.client.object(key).await? {
                    found.insert(key.clone(), object.to_json());
                }
            }
        }
        if found.len() == keys.len() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    held.close().await;
    Ok(found)
}

/// Compares every held client's copies with the server's objects, closing each client once
/// its copies are equal (or at the deadline).
pub async fn check(scenario: &Scenario, data_dir: &Path, held: Vec<Held>) -> Result<Convergence, SimError> {
    let mut keys: Vec<String> = held.iter().map(|h| object_key(scenario, h.index)).collect();
    keys.sort();
    keys.dedup();
    let server = server_objects(scenario, data_dir, &keys).await?;
    let mut report = Convergence {
        objects: keys.len(),
        missing: keys.len() - server.len(),
        clients_checked: held.len(),
        diverged: 0,
    };
    let deadline = Instant::now() + CONVERGE_WAIT;
    let mut waiting = held;
    loop {
        let mut still = Vec::new();
        for h in waiting {
            let key = object_key(scenario, h.index);
            let copy = h.client.object(&key).await?.as_ref().map(Object::to_json);
            if copy.is_some() && copy.as_ref() == server.get(&key) {
                h.close().await;
            } else {
                still.push(h);
            }
        }
        waiting = still;
        if waiting.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    report.diverged = waiting.len();
    for h in waiting {
        let key = object_key(scenario, h.index);
        let copy = h.client.object(&key).await?.as_ref().map(Object::to_json);
        eprintln!(
            "sim: client {} diverged on {key}: {copy:?}, the server has {:?}",
            h.index,
            server.get(&key)
        );
        h.close().await;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_share_objects_when_asked_and_subscribe_only_when_they_write_them() {
        let mut s = Scenario { actions_per_client: 4, crdt_share: 0.25, ..Scenario::default() };
        assert_eq!(object_key(&s, 7), "sim/7");
        s.objects = 3;
        assert_eq!([object_key(&s, 1), object_key(&s, 4)], ["sim/shared/1", "sim/shared/1"]);
        assert_eq!(channels(&s, 4), ["crdt/sim/shared/1"]);
        s.crdt_share = 0.2;
        assert!(channels(&s, 4).is_empty(), "4 actions at 0.2 hold no CRDT operation");
    }
}
