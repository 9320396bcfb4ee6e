//! Push wake-ups, decided without IO: which registered devices a commit concerns
//! ([`Registry`]), and when each one is poked ([`Schedule`]).
//!
//! A device (a client id, `user:client`) registers the channels it follows. A committed entry
//! concerns it by the rules of live delivery: on one of its channels and neither written by it
//! nor excluding it, or addressed to it by `users`/`clients`/`nodes` ([`Routing::targets`]).
//! The schedule coalesces: at most one poke per device per interval, however many commits
//! concern it; a failed poke is retried with exponential backoff, a registration the push
//! service says is gone is removed.

use crate::entry::StoredEntry;
use crate::routing::Routing;
use rhizome_protocol::{Channel, ClientId, NodeId, UserId};
use std::collections::{BTreeSet, HashMap, HashSet};

/// What a device follows.
#[derive(Debug, Clone)]
struct Device {
    /// The node that registered: what `nodes` must name to reach it.
    node: NodeId,
    channels: Vec<Channel>,
}

/// The registered devices, indexed by what can concern them.
#[derive(Debug, Default)]
pub struct Registry {
    devices: HashMap<ClientId, Device>,
    by_channel: HashMap<Channel, HashSet<ClientId>>,
    by_user: HashMap<UserId, HashSet<ClientId>>,
}

impl Registry {
    /// Registers the client of `node` for `channels`, replacing what it registered before.
    pub fn insert(&mut self, node: NodeId, channels: Vec<Channel>) {
        let client = node.client_id();
        self.remove(&client);
        for channel in &channels {
            self.by_channel.entry(channel.clone()).or_default().insert(client.clone());
        }
        if let Some(user) = node.user_id() {
            self.by_user.entry(user).or_default().insert(client.clone());
        }
        self.devices.insert(client, Device { node, channels });
    }

    /// Forgets `client`; whether it was registered.
    pub fn remove(&mut self, client: &ClientId) -> bool {
        let Some(device) = self.devices.remove(client) else {
            return false;
        };
        for channel in &device.channels {
            if let Some(set) = self.by_channel.get_mut(channel) {
                set.remove(client);
                if set.is_empty() {
                    self.by_channel.remove(channel);
                }
            }
        }
        if let Some(user) = device.node.user_id() {
            if let Some(set) = self.by_user.get_mut(&user) {
                set.remove(client);
                if set.is_empty() {
                    self.by_user.remove(&user);
                }
            }
        }
        true
    }

    /// Whether `client` is registered.
    pub fn contains(&self, client: &ClientId) -> bool {
        self.devices.contains_key(client)
    }

    /// Registered devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether no device is registered.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Devices registered by clients of `user`.
    pub fn of_user(&self, user: &UserId) -> usize {
        self.by_user.get(user).map_or(0, HashSet::len)
    }

    /// The devices that `entries` concern, each once.
    ///
    /// A channel concerns every device following it, except the devices that every entry of
    /// these on the channel leaves out (its author, its `excludeClients`): the work is one pass
    /// over the entries (no allocation per entry) plus one over each touched channel's
    /// devices, not their product.
    pub fn concerned<'a>(&self, entries: impl IntoIterator<Item = &'a StoredEntry>) -> HashSet<ClientId> {
        let mut out = HashSet::new();
        if self.devices.is_empty() {
            return out;
        }
        // Per followed channel: the clients left out by all of the entries on it.
        let mut left_out: HashMap<&Channel, Vec<&'a str>> = HashMap::new();
        for entry in entries {
            let routing = &entry.routing;
            let author = client_of(entry.id.node.as_str());
            for channel in &routing.channels {
                let Some((channel, _)) = self.by_channel.get_key_value(channel) else { continue };
                let excluded =
                    |c: &&str| *c == author || routing.exclude_clients.iter().any(|e| e.as_str() == *c);
                match left_out.get_mut(channel) {
                    Some(common) => common.retain(excluded),
                    None => {
                        let mut mine: Vec<&'a str> =
                            routing.exclude_clients.iter().map(ClientId::as_str).collect();
                        mine.push(author);
                        left_out.insert(channel, mine);
                    }
                }
            }
            if routing.is_targeted() {
                self.targeted(routing, &ClientId::from(author), &mut out);
            }
        }
        for (channel, excluded) in left_out {
            let Some(devices) = self.by_channel.get(channel) else { continue };
            out.extend(devices.iter().filter(|c| !excluded.contains(&c.as_str())).cloned());
        }
        out
    }

    /// The devices `routing` addresses by `users`, `clients` or `nodes`.
    fn targeted(&self, routing: &Routing, author: &ClientId, out: &mut HashSet<ClientId>) {
        let mut check = |client: &str| {
            if let Some((client, device)) = self.devices.get_key_value(client) {
                if routing.targets(Some(author), &device.node) {
                    out.insert(client.clone());
                }
            }
        };
        for client in &routing.clients {
            check(client.as_str());
        }
        for node in &routing.nodes {
            check(client_of(node.as_str()));
        }
        for user in &routing.users {
            for client in self.by_user.get(user).into_iter().flatten() {
                check(client.as_str());
            }
        }
    }
}

/// The client part of a node id (`user:client` of `user:client:tab`), without allocating.
fn client_of(node: &str) -> &str {
    match node.match_indices(':').nth(1) {
        Some((at, _)) => &node[..at],
        None => node,
    }
}

/// How one poke went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The push service (or webhook) took it.
    Sent,
    /// It failed for now (network, 5xx, 429): retry, not before `after_ms` when the service
    /// said so (`Retry-After`).
    Retry {
        /// Least wait the service asked for, in ms.
        after_ms: Option<i64>,
    },
    /// The registration is gone for good (404, 410): remove it.
    Gone,
    /// The service refused this poke for good (another 4xx): no retry; the registration stays
    /// and the next commit that concerns it tries again.
    Refused,
}

/// When to poke devices.
#[derive(Debug, Clone)]
pub struct ScheduleOptions {
    /// Least time between two pokes of one device, in ms.
    pub interval_ms: i64,
    /// Retries of a failed poke before it is dropped.
    pub retries_max: u32,
    /// Wait before the first retry, in ms; it doubles with each retry.
    pub backoff_first_ms: i64,
    /// Longest wait between retries, in ms.
    pub backoff_max_ms: i64,
}

impl Default for ScheduleOptions {
    fn default() -> Self {
        ScheduleOptions {
            interval_ms: 30_000,
            retries_max: 8,
            backoff_first_ms: 1_000,
            backoff_max_ms: 600_000,
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    /// When the last poke was sent.
    last_sent: Option<i64>,
    /// When the next poke is due, if one is.
    due_at: Option<i64>,
    /// A poke is being delivered.
    in_flight: bool,
    /// Something concerned the device while a poke was in flight: another one follows.
    again: bool,
    /// Failed attempts of the current poke.
    failures: u32,
}

impl Slot {
    fn idle(&self, now: i64, interval: i64) -> bool {
        !self.in_flight
            && self.due_at.is_none()
            && self.failures == 0
            && self.last_sent.is_none_or(|sent| sent + interval <= now)
    }
}

/// Which device is poked when. Time is given in ms by the caller.
#[derive(Debug, Default)]
pub struct Schedule {
    options: ScheduleOptions,
    slots: HashMap<ClientId, Slot>,
    due: BTreeSet<(i64, ClientId)>,
}

impl Schedule {
    /// An empty schedule.
    pub fn new(options: ScheduleOptions) -> Schedule {
        Schedule { options, slots: HashMap::new(), due: BTreeSet::new() }
    }

    /// Something concerns `client` at `now`: a poke is due now, or one interval after the
    /// last one, unless one is already due or in flight (then it covers this too, or another
    /// follows it).
    pub fn touch(&mut self, client: &ClientId, now: i64) {
        let slot = self.slots.entry(client.clone()).or_default();
        if slot.in_flight {
            slot.again = true;
            return;
        }
        if slot.due_at.is_some() {
            return;
        }
        let at = slot.last_sent.map_or(now, |sent| (sent + self.options.interval_ms).max(now));
        slot.due_at = Some(at);
        self.due.insert((at, client.clone()));
    }

    /// When the next poke is due.
    pub fn next_due(&self) -> Option<i64> {
        self.due.first().map(|(at, _)| *at)
    }

    /// The devices whose poke is due at `now`, at most `most`, oldest due first, now counted in
    /// flight: each must be answered with [`Schedule::finished`] or [`Schedule::skipped`].
    pub fn take_due(&mut self, now: i64, most: usize) -> Vec<ClientId> {
        let mut taken = Vec::new();
        while let Some((at, _)) = self.due.first() {
            if *at > now || taken.len() == most {
                break;
            }
            let Some((_, client)) = self.due.pop_first() else { break };
            if let Some(slot) = self.slots.get_mut(&client) {
                slot.due_at = None;
                slot.in_flight = true;
                taken.push(client);
            }
        }
        taken
    }

    /// A due poke was not sent: the device got what concerned it otherwise (it is connected).
    pub fn skipped(&mut self, client: &ClientId, now: i64) {
        let Some(slot) = self.slots.get_mut(client) else { return };
        slot.in_flight = false;
        slot.failures = 0;
        if std::mem::take(&mut slot.again) {
            self.touch(client, now);
        }
    }

    /// How the poke of `client` went. Returns `true` when the registration must be removed.
    pub fn finished(&mut self, client: &ClientId, delivery: Delivery, now: i64) -> bool {
        let Some(slot) = self.slots.get_mut(client) else { return false };
        slot.in_flight = false;
        match delivery {
            Delivery::Sent | Delivery::Refused => {
                slot.failures = 0;
                slot.last_sent = Some(now);
                if std::mem::take(&mut slot.again) {
                    self.touch(client, now);
                }
                false
            }
            Delivery::Retry { after_ms } => {
                slot.failures += 1;
                slot.again = false;
                if slot.failures > self.options.retries_max {
                    // Given up: the next commit that concerns the device starts over.
                    slot.failures = 0;
                    slot.last_sent = Some(now);
                    return false;
                }
                let wait = backoff(&self.options, client, slot.failures).max(after_ms.unwrap_or(0));
                let at = now + wait;
                slot.due_at = Some(at);
                self.due.insert((at, client.clone()));
                false
            }
            Delivery::Gone => {
                self.remove(client);
                true
            }
        }
    }

    /// Forgets `client` (its registration was removed).
    pub fn remove(&mut self, client: &ClientId) {
        if let Some(slot) = self.slots.remove(client) {
            if let Some(at) = slot.due_at {
                self.due.remove(&(at, client.clone()));
            }
        }
    }

    /// Forgets the devices with nothing due, in flight or to coalesce at `now`; their next
    /// poke may go at once. Returns how many are still tracked.
    pub fn prune(&mut self, now: i64) -> usize {
        let interval = self.options.interval_ms;
        self.slots.retain(|_, slot| !slot.idle(now, interval));
        self.slots.len()
    }

    /// Pokes due or waiting for a retry.
    pub fn due_len(&self) -> usize {
        self.due.len()
    }
}

/// The wait before retry number `failures` (1 for the first) of `client`'s poke: doubling from
/// `backoff_first_ms` up to `backoff_max_ms`, less up to a quarter picked by the client id and
/// the attempt, so devices that failed together do not all retry in the same instant.
fn backoff(options: &ScheduleOptions, client: &ClientId, failures: u32) -> i64 {
    let doubled = options.backoff_first_ms.saturating_mul(1i64 << (failures - 1).min(30));
    let full = doubled.min(options.backoff_max_ms).max(0);
    // FNV-1a of the client id and the attempt: spread, and the same on every run.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in client.as_str().bytes().chain(failures.to_le_bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let spread = full / 4;
    full - if spread > 0 { (hash % spread as u64) as i64 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rhizome_protocol::ActionId;
    use std::sync::Arc;

    fn entry(author: &str, routing: Routing) -> StoredEntry {
        StoredEntry {
            added: 1,
            id: ActionId::parse(&format!("1 {author} 0")).expect("id"),
            time: 1,
            action_json: Arc::from("{}"),
            subprotocol: 1,
            routing,
            crdt: None,
        }
    }

    fn clients(set: HashSet<ClientId>) -> Vec<String> {
        let mut v: Vec<String> = set.into_iter().map(|c| c.as_str().to_owned()).collect();
        v.sort();
        v
    }

    fn registry() -> Registry {
        let mut r = Registry::default();
        r.insert("alice:phone:1".into(), vec!["news".into(), "board/1".into()]);
        r.insert("alice:laptop:1".into(), vec!["news".into()]);
        r.insert("bob:phone:1".into(), vec!["news".into()]);
        r.insert("carol:tab:1".into(), vec![]);
        r
    }

    #[test]
    fn a_channel_concerns_its_devices_but_the_authors_and_the_excluded() {
        let r = registry();
        let got = r.concerned([&entry("alice:phone:1", Routing::channel("news"))]);
        assert_eq!(clients(got), ["alice:laptop", "bob:phone"], "not the author's own device");
        let excluding = Routing { exclude_clients: vec!["bob:phone".into()], ..Routing::channel("news") };
        let got = r.concerned([&entry("alice:phone:1", excluding)]);
        assert_eq!(clients(got), ["alice:laptop"]);
        // Two entries by different authors on one channel concern both authors.
        let a = entry("alice:phone:1", Routing::channel("news"));
        let b = entry("bob:phone:1", Routing::channel("news"));
        assert_eq!(clients(r.concerned([&a, &b])), ["alice:laptop", "alice:phone", "bob:phone"]);
        assert!(r.concerned([&entry("dave:x:1", Routing::channel("other"))]).is_empty());
        assert_eq!(clients(r.concerned([&entry("dave:x:1", Routing::channel("board/1"))])), ["alice:phone"]);
    }

    #[test]
    fn targets_concern_devices_by_user_client_and_node_as_live_delivery_does() {
        let r = registry();
        let to_alice = Routing { users: vec!["alice".into()], ..Routing::default() };
        assert_eq!(
            clients(r.concerned([&entry("bob:phone:1", to_alice.clone())])),
            ["alice:laptop", "alice:phone"]
        );
        // Not echoed to the author through users.
        assert_eq!(clients(r.concerned([&entry("alice:phone:1", to_alice)])), ["alice:laptop"]);
        let to_carol = Routing { clients: vec!["carol:tab".into()], ..Routing::default() };
        assert_eq!(clients(r.concerned([&entry("bob:phone:1", to_carol)])), ["carol:tab"]);
        let to_node = Routing { nodes: vec!["carol:tab:1".into()], ..Routing::default() };
        assert_eq!(clients(r.concerned([&entry("bob:phone:1", to_node)])), ["carol:tab"]);
        let other_tab = Routing { nodes: vec!["carol:tab:2".into()], ..Routing::default() };
        assert!(r.concerned([&entry("bob:phone:1", other_tab)]).is_empty(), "another node of the client");
        let excluded = Routing {
            users: vec!["alice".into()],
            exclude_clients: vec!["alice:laptop".into()],
            ..Routing::default()
        };
        assert_eq!(clients(r.concerned([&entry("bob:phone:1", excluded)])), ["alice:phone"]);
    }

    #[test]
    fn registering_again_replaces_and_removing_forgets() {
        let mut r = registry();
        r.insert("alice:phone:2".into(), vec!["board/1".into()]);
        assert_eq!(r.len(), 4);
        assert_eq!(r.of_user(&"alice".into()), 2);
        assert_eq!(clients(r.concerned([&entry("bob:phone:1", Routing::channel("news"))])), ["alice:laptop"]);
        let to_node = Routing { nodes: vec!["alice:phone:2".into()], ..Routing::default() };
        assert_eq!(clients(r.concerned([&entry("bob:phone:1", to_node)])), ["alice:phone"]);
        assert!(r.remove(&"alice:phone".into()));
        assert!(!r.remove(&"alice:phone".into()));
        assert_eq!(r.of_user(&"alice".into()), 1);
        assert!(r.concerned([&entry("bob:phone:1", Routing::channel("board/1"))]).is_empty());
        assert!(!r.by_channel.contains_key(&Channel::from("board/1")), "empty index entries go");
    }

    fn options() -> ScheduleOptions {
        ScheduleOptions { interval_ms: 1_000, retries_max: 3, backoff_first_ms: 100, backoff_max_ms: 250 }
    }

    #[test]
    fn pokes_are_coalesced_to_one_per_interval() {
        let mut s = Schedule::new(options());
        let c: ClientId = "alice:phone".into();
        s.touch(&c, 0);
        s.touch(&c, 5);
        assert_eq!(s.next_due(), Some(0));
        assert_eq!(s.take_due(10, usize::MAX), vec![c.clone()]);
        assert!(s.take_due(10, usize::MAX).is_empty());
        // Touched while in flight: one more poke, an interval after this one.
        s.touch(&c, 20);
        s.touch(&c, 30);
        assert!(!s.finished(&c, Delivery::Sent, 40));
        assert_eq!(s.next_due(), Some(1_040));
        assert!(s.take_due(1_039, usize::MAX).is_empty());
        assert_eq!(s.take_due(1_040, usize::MAX), vec![c.clone()]);
        assert!(!s.finished(&c, Delivery::Sent, 1_050));
        assert_eq!(s.next_due(), None, "nothing new since");
        // A later touch inside the interval waits for its end; after it, goes at once.
        s.touch(&c, 1_500);
        assert_eq!(s.next_due(), Some(2_050));
        s.take_due(2_050, usize::MAX);
        s.finished(&c, Delivery::Sent, 2_050);
        s.touch(&c, 9_000);
        assert_eq!(s.next_due(), Some(9_000));
    }

    #[test]
    fn failures_back_off_then_give_up_and_gone_removes() {
        let mut s = Schedule::new(options());
        let c: ClientId = "alice:phone".into();
        s.touch(&c, 0);
        let mut now = 0;
        let mut waits = Vec::new();
        for _ in 0..3 {
            assert_eq!(s.take_due(now, usize::MAX), vec![c.clone()]);
            s.finished(&c, Delivery::Retry { after_ms: None }, now);
            let at = s.next_due().expect("a retry is due");
            waits.push(at - now);
            now = at;
        }
        // 100, 200, then capped at 250, each less at most a quarter.
        assert!((75..=100).contains(&waits[0]) && (150..=200).contains(&waits[1]), "{waits:?}");
        assert!((188..=250).contains(&waits[2]), "{waits:?}");
        assert_eq!(s.take_due(now, usize::MAX), vec![c.clone()]);
        s.finished(&c, Delivery::Retry { after_ms: None }, now);
        assert_eq!(s.next_due(), None, "given up after retries_max retries");
        // Retry-After is honoured when longer than the backoff.
        s.touch(&c, now + 5_000);
        now = s.next_due().expect("due");
        s.take_due(now, usize::MAX);
        s.finished(&c, Delivery::Retry { after_ms: Some(7_000) }, now);
        assert_eq!(s.next_due(), Some(now + 7_000));
        s.take_due(now + 7_000, usize::MAX);
        assert!(s.finished(&c, Delivery::Gone, now + 7_000));
        assert_eq!(s.prune(now + 7_000), 0);
        assert_eq!(s.due_len(), 0);
    }

    #[test]
    fn a_skipped_poke_lets_the_next_go_at_once_and_idle_devices_are_pruned() {
        let mut s = Schedule::new(options());
        let c: ClientId = "alice:phone".into();
        s.touch(&c, 0);
        s.take_due(0, usize::MAX);
        s.skipped(&c, 1);
        s.touch(&c, 2);
        assert_eq!(s.next_due(), Some(2), "no poke went: no interval to wait");
        s.take_due(2, usize::MAX);
        s.finished(&c, Delivery::Sent, 3);
        assert_eq!(s.prune(500), 1, "coalescing still needs it");
        assert_eq!(s.prune(1_003), 0);
        s.touch(&c, 1_004);
        s.remove(&c);
        assert_eq!(s.next_due(), None);
    }
}
