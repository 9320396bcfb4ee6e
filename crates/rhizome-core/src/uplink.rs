//! The upward half of an edge's link (docs/edge.md), sans-IO: which log entries go upstream,
//! how many `sync`s may be in flight, and how far the upstream has confirmed.
//!
//! The outbox is the edge's own log. The link reads it from a cursor, sends `sync`s whose
//! `added` is the edge's position of their last entry, and the upstream answers each with
//! `synced` in order, then each of its actions with `logux/processed` or `logux/undo`. The
//! cursor rises over an entry once both came (and over entries that are not sent): a `synced`
//! alone does not carry the answers, which the upstream may never send (it crashed in
//! between) or which may never be stored here (this edge crashed in between). After any drop,
//! sending starts again from the cursor, and the upstream answers what it already has as
//! duplicates, so nothing is skipped, nothing is applied twice, and every action is answered.
//! What was answered above the cursor is not sent again (the upstream would judge it again).

use crate::entry::{Position, Status};
use rhizome_protocol::NodeId;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// What the link does with one entry of the edge's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Send it upstream.
    Send,
    /// Not for the upstream: a server's own action (an answer, a notice), or one the edge
    /// refused.
    Skip,
    /// Its `process` has not finished here: wait (its outcome decides whether it goes), and
    /// send nothing after it meanwhile, so the upstream gets the edge's order.
    Wait,
}

/// Whether the entry of `author` with `status` goes upstream.
pub fn forward(author: &NodeId, status: &Status) -> Forward {
    if crate::connection::is_server(author) {
        return Forward::Skip;
    }
    match status {
        Status::Processed => Forward::Send,
        Status::Waiting => Forward::Wait,
        Status::Undone(_) => Forward::Skip,
    }
}

/// The bit set in the sequence number of [`yielded_id`]: the lowest that only servers make,
/// far above any sequence a Logux node makes (a count of ids within one millisecond).
const YIELDED_SEQ: u64 = 1 << 50;

/// The bit set in the sequence number of [`taken_back_id`]: below [`REJOINED_SEQ`], above any
/// sequence a Logux node makes.
const TAKEN_BACK_SEQ: u64 = 1 << 51;

/// The id under which an edge takes back a counter operation `id` that its upstream refused
/// (see `rhizome_store::Append::crdt_undo`): the same author and time, so that it is judged
/// as the author's, with a sequence number no node makes. `None` for an id whose sequence is
/// one only servers make (one taken back, yielded or rejoined is not taken back again).
pub fn taken_back_id(id: &rhizome_protocol::ActionId) -> Option<rhizome_protocol::ActionId> {
    (id.seq < YIELDED_SEQ).then(|| rhizome_protocol::ActionId { seq: id.seq | TAKEN_BACK_SEQ, ..id.clone() })
}

/// The id under which a server takes back its own application of the CRDT operation `id`
/// when a peer relays another server's application of it (its device sent it to both, see
/// `rhizome_store::Append::may_yield`): the same author and time, with a sequence number no
/// node makes. `None` for an id whose sequence is one only servers make.
pub fn yielded_id(id: &rhizome_protocol::ActionId) -> Option<rhizome_protocol::ActionId> {
    (id.seq < YIELDED_SEQ).then(|| rhizome_protocol::ActionId { seq: id.seq | YIELDED_SEQ, ..id.clone() })
}

/// Whether `id` is one under which a server took back its own application of an operation
/// ([`yielded_id`]).
pub fn is_yielded(id: &rhizome_protocol::ActionId) -> bool {
    (YIELDED_SEQ..TAKEN_BACK_SEQ).contains(&id.seq)
}

/// Whether `id`'s sequence number is one that only servers make ([`taken_back_id`],
/// [`yielded_id`], [`rejoined_id`]): a client's action under such an id is refused, so that
/// none can pass for a taking back.
pub fn is_servers_seq(id: &rhizome_protocol::ActionId) -> bool {
    id.seq >= YIELDED_SEQ
}

/// Whether `id` is one under which an edge took back a refused counter operation
/// ([`taken_back_id`]).
pub fn is_taken_back(id: &rhizome_protocol::ActionId) -> bool {
    id.seq & TAKEN_BACK_SEQ != 0 && id.seq < REJOINED_SEQ
}

/// The bit set in the sequence number of [`rejoined_id`]: far above any sequence a Logux node
/// makes (a count of ids within one millisecond), and exact in a JavaScript number.
const REJOINED_SEQ: u64 = 1 << 52;

/// The id under which an upstream stores a peer's relayed delta that it logged already under
/// `id` but does not hold (see `rhizome_store::Append::rejoin`): the same author and time, so
/// it is judged and ordered as the author's, with a sequence number no node makes. `None` for
/// an id whose sequence is that high already.
pub fn rejoined_id(id: &rhizome_protocol::ActionId) -> Option<rhizome_protocol::ActionId> {
    (id.seq < REJOINED_SEQ).then(|| rhizome_protocol::ActionId { seq: id.seq | REJOINED_SEQ, ..id.clone() })
}

/// A `sync` in flight: its `added` and the position the cursor reaches once it is confirmed
/// (past entries skipped after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    added: Position,
    through: Position,
}

/// A `synced` that answers no `sync` in flight, or not the oldest: the upstream and the link
/// disagree, and the connection should start again from the cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("synced {got} does not answer the oldest sync in flight ({expected:?})")]
pub struct UnexpectedSynced {
    /// The `added` of the `synced`.
    pub got: Position,
    /// The `added` of the oldest `sync` in flight, if any.
    pub expected: Option<Position>,
}

/// The upward state of one edge's link, across its connections.
#[derive(Debug)]
pub struct Uplink {
    /// Every entry to send at or below it was confirmed and answered by the upstream (or is
    /// not to be sent): the durable cursor's value.
    confirmed: Position,
    /// Every entry to send at or below it was confirmed by a `synced` on this connection (or
    /// is not to be sent); [`Uplink::confirmed`] waits for the answers too.
    synced: Position,
    /// The log has been read (and sent or skipped) up to here on this connection.
    read: Position,
    in_flight: VecDeque<InFlight>,
    /// The actions sent on this connection whose answer has not been stored yet, by the
    /// lowest position each carries, with all it carries (a folded delta carries several).
    unanswered: BTreeMap<Position, Vec<Position>>,
    /// Positions above the cursor whose answer is stored (on any connection): not sent again.
    answered: BTreeSet<Position>,
    window: usize,
}

impl Uplink {
    /// A link whose durable cursor stands at `confirmed`, with at most `window` `sync`s in
    /// flight (at least one).
    pub fn new(confirmed: Position, window: usize) -> Uplink {
        Uplink {
            confirmed,
            synced: confirmed,
            read: confirmed,
            in_flight: VecDeque::new(),
            unanswered: BTreeMap::new(),
            answered: BTreeSet::new(),
            window: window.max(1),
        }
    }

    /// A new connection: whatever was in flight or unanswered is sent again, from the cursor
    /// (what was answered above it excepted).
    pub fn connected(&mut self) {
        self.in_flight.clear();
        self.unanswered.clear();
        self.synced = self.confirmed;
        self.read = self.confirmed;
    }

    /// Where to read the log from (entries after the returned position), when another `sync`
    /// may be sent.
    pub fn next_read(&self) -> Option<Position> {
        (self.in_flight.len() < self.window).then_some(self.read)
    }

    /// A `sync` was sent whose last entry is at `added`; `through` (at least `added`) is where
    /// reading stopped, the entries after `added` being skipped. `actions` are its actions,
    /// each as the positions it carries (its own, or those of the deltas folded into it), in
    /// ascending order; [`Uplink::answered`] takes one back by the first.
    pub fn sent(
        &mut self,
        added: Position,
        through: Position,
        actions: impl IntoIterator<Item = Vec<Position>>,
    ) {
        debug_assert!(added > self.read && through >= added);
        self.in_flight.push_back(InFlight { added, through });
        for carried in actions {
            if let Some(&lowest) = carried.first() {
                self.unanswered.insert(lowest, carried);
            }
        }
        self.read = through;
    }

    /// The log was read up to `through` and nothing in it is to be sent. Returns the new
    /// cursor when it rose (nothing in flight: the skipped entries are confirmed at once).
    pub fn skipped(&mut self, through: Position) -> Option<Position> {
        if through <= self.read {
            return None;
        }
        self.read = through;
        match self.in_flight.back_mut() {
            Some(last) => {
                last.through = through;
                None
            }
            None => {
                self.synced = through;
                self.settle()
            }
        }
    }

    /// The upstream answered `synced` with `added`: it committed the oldest `sync` in flight.
    /// Returns the cursor, which rose only if the answers of that `sync` are in.
    pub fn synced(&mut self, added: Position) -> Result<Position, UnexpectedSynced> {
        match self.in_flight.front() {
            Some(oldest) if oldest.added == added => {
                self.synced = oldest.through;
                self.in_flight.pop_front();
                self.settle();
                Ok(self.confirmed)
            }
            other => Err(UnexpectedSynced { got: added, expected: other.map(|f| f.added) }),
        }
    }

    /// The upstream's answer to the action sent at `position` (as given to [`Uplink::sent`])
    /// is stored here. Returns the new cursor when it rose.
    pub fn answered(&mut self, position: Position) -> Option<Position> {
        let carried = self.unanswered.remove(&position)?;
        self.answered.extend(carried);
        self.settle()
    }

    /// Whether the upstream's answer to the entry at `position` is stored already: the entry
    /// is not sent again.
    pub fn is_answered(&self, position: Position) -> bool {
        self.answered.contains(&position)
    }

    /// Raises the cursor to what is both confirmed and answered; the new cursor if it rose.
    fn settle(&mut self) -> Option<Position> {
        let cursor = match self.unanswered.first_key_value() {
            Some((&lowest, _)) => self.synced.min(lowest.saturating_sub(1)),
            None => self.synced,
        };
        (cursor > self.confirmed).then(|| {
            self.confirmed = cursor;
            self.answered = self.answered.split_off(&(cursor + 1));
            cursor
        })
    }

    /// The durable cursor's value: confirmed and answered up to here.
    pub fn confirmed(&self) -> Position {
        self.confirmed
    }

    /// `sync`s sent and not yet confirmed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Actions sent on this connection and not answered yet.
    pub fn unanswered(&self) -> usize {
        self.unanswered.len()
    }

    /// Whether an action the upstream confirmed is still waiting for its answer (which an
    /// upstream that is alive sends at once, or when its `process` of it ends).
    pub fn awaits_answer(&self) -> bool {
        self.unanswered.first_key_value().is_some_and(|(&lowest, _)| lowest <= self.synced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Actions of one position each.
    fn each(positions: &[Position]) -> Vec<Vec<Position>> {
        positions.iter().map(|&p| vec![p]).collect()
    }

    #[test]
    fn a_rejoined_id_is_the_authors_with_a_sequence_no_node_makes() {
        let id = rhizome_protocol::ActionId::parse("1700000000000 alice:a1:t 3").expect("id");
        let rejoined = rejoined_id(&id).expect("rejoined");
        assert_eq!(rejoined.text(), "1700000000000 alice:a1:t 4503599627370499");
        assert_eq!(rejoined_id(&rejoined), None, "not twice");
    }

    #[test]
    fn a_taken_back_id_is_the_authors_with_a_sequence_no_node_makes() {
        let id = rhizome_protocol::ActionId::parse("1700000000000 alice:a1:t 3").expect("id");
        assert!(!is_taken_back(&id));
        let back = taken_back_id(&id).expect("taken back");
        assert_eq!(back.text(), "1700000000000 alice:a1:t 2251799813685251");
        assert!(is_taken_back(&back));
        assert_eq!(taken_back_id(&back), None, "not twice");
        assert!(!is_taken_back(&rejoined_id(&id).expect("rejoined")));
    }

    #[test]
    fn a_yielded_id_is_the_authors_with_a_sequence_no_node_makes() {
        let id = rhizome_protocol::ActionId::parse("1700000000000 alice:a1:t 3").expect("id");
        let yielded = yielded_id(&id).expect("yielded");
        assert_eq!(yielded.text(), "1700000000000 alice:a1:t 1125899906842627");
        assert!(is_yielded(&yielded) && is_servers_seq(&yielded) && !is_taken_back(&yielded));
        assert!(!is_yielded(&id) && !is_servers_seq(&id));
        assert_eq!((yielded_id(&yielded), taken_back_id(&yielded)), (None, None), "neither after");
        let back = taken_back_id(&id).expect("taken back");
        assert!(!is_yielded(&back) && yielded_id(&back).is_none());
        assert!(!is_yielded(&rejoined_id(&id).expect("rejoined")));
    }
    use proptest::prelude::*;

    #[test]
    fn only_settled_actions_of_clients_go_upstream() {
        let alice = NodeId::from("alice:phone:1");
        assert_eq!(forward(&alice, &Status::Processed), Forward::Send);
        assert_eq!(forward(&alice, &Status::Waiting), Forward::Wait);
        assert_eq!(forward(&alice, &Status::Undone("denied".into())), Forward::Skip);
        for server in ["server:x1", "server", "server:x1:2"] {
            assert_eq!(forward(&NodeId::from(server), &Status::Processed), Forward::Skip, "{server}");
        }
    }

    #[test]
    fn the_window_bounds_syncs_in_flight_and_synced_confirms_in_order() {
        let mut up = Uplink::new(10, 2);
        assert_eq!(up.next_read(), Some(10));
        up.sent(12, 12, []);
        assert_eq!(up.next_read(), Some(12));
        up.sent(20, 25, []);
        assert_eq!(up.next_read(), None, "two in flight fill the window");
        assert_eq!(up.synced(20), Err(UnexpectedSynced { got: 20, expected: Some(12) }));
        assert_eq!(up.synced(12), Ok(12));
        assert_eq!(up.next_read(), Some(25));
        assert_eq!(up.synced(20), Ok(25), "the skipped entries after 20 are confirmed with it");
        assert_eq!(up.synced(30), Err(UnexpectedSynced { got: 30, expected: None }));
    }

    #[test]
    fn the_cursor_waits_for_the_answers_of_a_confirmed_sync() {
        let mut up = Uplink::new(0, 4);
        up.sent(3, 3, each(&[1, 2, 3]));
        up.sent(6, 6, each(&[4, 6]));
        assert_eq!(up.answered(2), None, "not confirmed yet");
        assert_eq!(up.synced(3), Ok(0), "1 and 3 are not answered");
        assert_eq!(up.next_read(), Some(6), "the window is free again all the same");
        assert_eq!(up.answered(1), Some(2), "up to the oldest unanswered");
        assert_eq!(up.answered(1), None, "an answer that came twice");
        assert_eq!(up.answered(3), Some(3), "not past what synced confirmed");
        assert_eq!(up.answered(4), None);
        assert_eq!(up.answered(6), None);
        assert_eq!(up.synced(6), Ok(6));
        assert_eq!(up.unanswered(), 0);
    }

    #[test]
    fn an_unanswered_action_is_sent_again_on_the_next_connection() {
        let mut up = Uplink::new(0, 4);
        up.sent(5, 5, each(&[2, 5]));
        assert_eq!(up.synced(5), Ok(1), "up to the unanswered 2");
        assert_eq!(up.answered(5), None);
        up.connected();
        assert_eq!(up.unanswered(), 0);
        assert_eq!(up.next_read(), Some(1), "2 was never answered: it goes again");
        assert!(up.is_answered(5), "5 was: it does not");
        up.sent(2, 5, each(&[2]));
        assert_eq!(up.synced(2), Ok(1));
        assert_eq!(up.answered(2), Some(5));
    }

    #[test]
    fn a_folded_action_holds_every_position_it_carries_and_what_was_answered_is_not_sent_again() {
        let mut up = Uplink::new(0, 4);
        // 1 and 3 folded under 3's id; 2 alone; 4 alone.
        up.sent(4, 4, vec![vec![1, 3], vec![2], vec![4]]);
        assert_eq!(up.synced(4), Ok(0));
        assert_eq!(up.answered(3), None, "3 went under the fold, answered by its first");
        assert_eq!(up.answered(2), None, "1 is not answered");
        assert_eq!(up.answered(4), None);
        assert!(up.awaits_answer());
        up.connected();
        assert!(!up.awaits_answer());
        assert_eq!(up.next_read(), Some(0));
        assert!(!up.is_answered(1) && !up.is_answered(3), "the fold goes again");
        assert!(up.is_answered(2) && up.is_answered(4), "answered on the last connection: not again");
        up.sent(3, 4, vec![vec![1, 3]]);
        assert_eq!(up.synced(3), Ok(0));
        assert_eq!(up.answered(1), Some(4));
        assert!(!up.is_answered(4), "forgotten below the cursor");
    }

    #[test]
    fn skipped_entries_are_confirmed_at_once_only_with_nothing_in_flight() {
        let mut up = Uplink::new(0, 4);
        assert_eq!(up.skipped(5), Some(5));
        up.sent(7, 7, each(&[7]));
        assert_eq!(up.skipped(9), None, "behind a sync in flight, they wait for its synced");
        assert_eq!(up.confirmed(), 5);
        assert_eq!(up.synced(7), Ok(6), "7 is not answered");
        assert_eq!(up.skipped(12), None, "nor are they past an unanswered action");
        assert_eq!(up.answered(7), Some(12));
        assert_eq!(up.skipped(9), None, "nothing new");
    }

    #[test]
    fn a_new_connection_sends_again_from_the_cursor() {
        let mut up = Uplink::new(3, 4);
        up.sent(5, 5, []);
        up.sent(8, 8, []);
        assert_eq!(up.synced(5), Ok(5));
        up.connected();
        assert_eq!(up.in_flight(), 0);
        assert_eq!(up.next_read(), Some(5), "8 was never confirmed: it is sent again");
    }

    proptest! {
        /// Whatever the sends, skips, confirmations, answers and drops, the cursor never passes
        /// an entry the upstream did not both confirm and answer, never goes back, and reaches
        /// everything read once all is confirmed and answered.
        #[test]
        fn the_cursor_never_passes_an_unsettled_entry(steps in prop::collection::vec((0u8..5, 0usize..8), 1..200)) {
            let mut up = Uplink::new(0, 3);
            // Positions sent and not confirmed by a synced, and not answered.
            let mut unconfirmed: Vec<Position> = Vec::new();
            let mut unanswered: Vec<Position> = Vec::new();
            let mut next: Position = 1;
            let mut last_cursor = 0;
            for (step, pick) in steps {
                match step {
                    0 => if up.is_answered(next) {
                        // As the link does with what was answered on an earlier connection.
                        up.skipped(next);
                        next += 1;
                    } else if let Some(from) = up.next_read() {
                        prop_assert!(from < next);
                        up.sent(next, next, each(&[next]));
                        unconfirmed.push(next);
                        unanswered.push(next);
                        next += 1;
                    },
                    1 => { up.skipped(next); next += 1; }
                    2 => if let Some(&oldest) = up.in_flight.front().map(|f| &f.added) {
                        up.synced(oldest).expect("the oldest");
                        unconfirmed.retain(|&p| p != oldest);
                    },
                    3 => if !unanswered.is_empty() {
                        let position = unanswered.remove(pick % unanswered.len());
                        up.answered(position);
                    },
                    _ => {
                        up.connected();
                        // What was in flight is sent again: take it as new sends.
                        next = up.next_read().expect("room") + 1;
                        unconfirmed.clear();
                        unanswered.clear();
                    }
                }
                prop_assert!(up.confirmed() >= last_cursor);
                last_cursor = up.confirmed();
                let confirmed = up.confirmed();
                prop_assert!(unconfirmed.iter().chain(&unanswered).all(|&p| p > confirmed), "{unconfirmed:?} {unanswered:?} {confirmed}");
            }
            while let Some(&oldest) = up.in_flight.front().map(|f| &f.added) {
                up.synced(oldest).expect("the oldest");
            }
            for position in unanswered {
                up.answered(position);
            }
            prop_assert_eq!(up.confirmed(), up.read);
        }
    }
}
