//! What the last commits touched, so a waiting HTTP long-poll wakes for its own channels and
//! targets only, instead of reading the log again at every commit.
//!
//! The hub records, for each routed commit while long-polls wait, the channels and targets
//! (users, clients, nodes) of its entries. A woken poll asks whether anything after its cursor
//! concerns it: when nothing does, it moves its cursor past those commits without a read. The
//! record is bounded; a poll whose cursor is older than what is kept reads the log, as before.

use rhizome_core::{Position, StoredEntry};
use rhizome_protocol::{Channel, NodeId};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Commits kept at most.
const COMMITS_KEPT: usize = 4096;

/// The channels and targets of one commit's entries.
#[derive(Debug, Default)]
pub struct Touched {
    channels: HashSet<Channel>,
    /// `u:<user>`, `c:<client>`, `n:<node>`.
    targets: HashSet<String>,
}

impl Touched {
    /// What `entries` touch.
    pub fn of<'a>(entries: impl Iterator<Item = &'a StoredEntry>) -> Touched {
        let mut touched = Touched::default();
        for e in entries {
            touched.channels.extend(e.routing.channels.iter().cloned());
            touched.targets.extend(e.routing.users.iter().map(|u| format!("u:{u}")));
            touched.targets.extend(e.routing.clients.iter().map(|c| format!("c:{c}")));
            touched.targets.extend(e.routing.nodes.iter().map(|n| format!("n:{n}")));
        }
        touched
    }

    fn concerns(&self, channels: &[Channel], targets: &[String]) -> bool {
        channels.iter().any(|c| self.channels.contains(c)) || targets.iter().any(|t| self.targets.contains(t))
    }
}

/// The targets that address `node`: itself, its client and its user.
fn targets_of(node: &NodeId) -> Vec<String> {
    let mut targets = vec![format!("n:{node}"), format!("c:{}", node.client_id())];
    if let Some(user) = node.user_id() {
        targets.push(format!("u:{user}"));
    }
    targets
}

/// What a woken poll should do.
#[derive(Debug, PartialEq, Eq)]
pub enum Since {
    /// Nothing after its cursor concerns it, up to this position: wait again from there.
    Nothing(Position),
    /// Read the log: something concerns it, or what came after its cursor is not all known.
    Read,
}

/// The record of recent commits.
#[derive(Debug, Default)]
pub struct RecentCommits {
    inner: Mutex<Recent>,
    /// Long-polls waiting now; while none waits, commits are not recorded.
    waiting: AtomicUsize,
}

#[derive(Debug, Default)]
struct Recent {
    /// Every commit after this position is in `commits`.
    covered_from: Position,
    /// `(position of its last entry, what it touched)`, oldest first.
    commits: VecDeque<(Position, Touched)>,
}

impl RecentCommits {
    /// Whether commits should be recorded (some long-poll waits).
    pub fn wanted(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// Records a commit whose entries end at `last`; `None` when not recorded (nobody waited):
    /// what came before is then unknown to later polls.
    pub fn record(&self, last: Position, touched: Option<Touched>) {
        let mut recent = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match touched {
            Some(touched) => {
                if recent.commits.len() == COMMITS_KEPT {
                    if let Some((dropped, _)) = recent.commits.pop_front() {
                        recent.covered_from = dropped;
                    }
                }
                recent.commits.push_back((last, touched));
            }
            None => {
                recent.commits.clear();
                recent.covered_from = last;
            }
        }
    }

    /// What a poll of `channels` by `node`, whose cursor is `through`, should do.
    pub fn since(&self, through: Position, channels: &[Channel], node: &NodeId) -> Since {
        // Made before the lock the hub's record also takes.
        let targets = targets_of(node);
        let recent = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if through < recent.covered_from {
            return Since::Read;
        }
        let mut upto = through;
        for (last, touched) in recent.commits.iter().filter(|(last, _)| *last > through) {
            if touched.concerns(channels, &targets) {
                return Since::Read;
            }
            upto = *last;
        }
        Since::Nothing(upto)
    }

    /// Long-polls waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Counts a waiting poll until the guard is dropped.
    pub fn wait(&self) -> WaitGuard<'_> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        WaitGuard(self)
    }
}

/// A waiting long-poll, counted while it lives.
#[derive(Debug)]
pub struct WaitGuard<'a>(&'a RecentCommits);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rhizome_core::Routing;
    use rhizome_protocol::ActionId;
    use std::sync::Arc;

    fn entry(added: Position, routing: Routing) -> StoredEntry {
        StoredEntry {
            added,
            id: ActionId::parse("1 a:b:c 0").expect("id"),
            time: 1,
            action_json: Arc::from("{}"),
            subprotocol: 1,
            routing,
            crdt: None,
        }
    }

    #[test]
    fn a_poll_skips_commits_of_other_channels_and_reads_for_its_own_or_unknown_ones() {
        let recent = RecentCommits::default();
        let bob = NodeId::from("bob:1:1");
        let mine = [Channel::from("news")];
        recent.record(10, None);
        recent.record(
            12,
            Some(Touched::of(
                [entry(11, Routing::channel("other")), entry(12, Routing::channel("x"))].iter(),
            )),
        );
        assert_eq!(recent.since(10, &mine, &bob), Since::Nothing(12));
        assert_eq!(recent.since(9, &mine, &bob), Since::Read, "before what is recorded");
        recent.record(13, Some(Touched::of([entry(13, Routing::channel("news"))].iter())));
        assert_eq!(recent.since(12, &mine, &bob), Since::Read);
        assert_eq!(recent.since(13, &mine, &bob), Since::Nothing(13));
        // Addressed to bob's user, client or node.
        for (i, routing) in [
            Routing { users: vec!["bob".into()], ..Routing::default() },
            Routing { clients: vec!["bob:1".into()], ..Routing::default() },
            Routing { nodes: vec![NodeId::from("bob:1:1")], ..Routing::default() },
        ]
        .into_iter()
        .enumerate()
        {
            let base = 20 + 10 * i as Position;
            recent.record(base, None);
            recent.record(base + 1, Some(Touched::of([entry(base + 1, routing)].iter())));
            assert_eq!(recent.since(base, &mine, &bob), Since::Read);
            assert_eq!(recent.since(base, &mine, &NodeId::from("carol:1:1")), Since::Nothing(base + 1));
        }
        // A commit not recorded (nobody waited) makes what came before unknown.
        recent.record(60, None);
        assert_eq!(recent.since(55, &mine, &bob), Since::Read);
    }

    #[test]
    fn only_the_newest_commits_are_kept() {
        let recent = RecentCommits::default();
        let bob = NodeId::from("bob:1:1");
        for last in 1..=(COMMITS_KEPT as Position + 10) {
            recent.record(last, Some(Touched::of([entry(last, Routing::channel("x"))].iter())));
        }
        assert_eq!(recent.since(5, &[], &bob), Since::Read, "forgotten");
        let newest = COMMITS_KEPT as Position + 10;
        assert_eq!(recent.since(newest - 5, &[], &bob), Since::Nothing(newest));
        let guard = recent.wait();
        assert!(recent.wanted());
        drop(guard);
        assert!(!recent.wanted());
    }
}
