//! An order-statistic B-tree over a list's placed elements, by position.
//!
//! Leaves hold runs of up to [`LEAF_MAX`] entries in list order; every node counts its
//! entries (tombstones included) and its visible entries and keeps the lowest sequence
//! number below it. So "the n-th visible element", "the position of element e" and "the
//! first element after position p whose timestamp is lower than t" all cost O(log n) node
//! visits of O(B) work each, instead of a scan of the list. Leaves are linked left to right
//! for iteration. Elements are named by their index in the list's arena; the tree keeps,
//! per element, the leaf that holds it, so it can find an element without knowing where.

/// Most entries in a leaf before it splits.
const LEAF_MAX: usize = 64;
/// Most children of an inner node before it splits.
const INNER_MAX: usize = 16;
/// "No node": the root's parent, the last leaf's successor, an element not in the tree.
const NONE: usize = usize::MAX;

/// One placed element, as the tree sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The element's index in the list's arena.
    pub(crate) elem: usize,
    /// Its Lamport sequence number (the first part of its timestamp).
    pub(crate) seq: u64,
    /// Whether it is visible (not a tombstone).
    pub(crate) visible: bool,
}

/// What a node holds.
#[derive(Clone, Debug)]
enum Body {
    /// Entries in list order, and the next leaf to the right.
    Leaf { entries: Vec<Entry>, next: usize },
    /// Child nodes in list order.
    Inner(Vec<usize>),
}

/// A node with the aggregates of everything below it.
#[derive(Clone, Debug)]
struct Node {
    parent: usize,
    /// Entries below, tombstones included.
    total: usize,
    /// Visible entries below.
    visible: usize,
    /// Lowest sequence number below (`u64::MAX` when empty).
    min_seq: u64,
    body: Body,
}

impl Node {
    fn leaf(parent: usize, entries: Vec<Entry>, next: usize) -> Node {
        Node { parent, total: 0, visible: 0, min_seq: u64::MAX, body: Body::Leaf { entries, next } }
    }
}

/// The tree. Empty until the first insert.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tree {
    nodes: Vec<Node>,
    root: usize,
    /// For each arena index, the leaf holding it, or `NONE`.
    leaf_of: Vec<usize>,
}

impl Tree {
    /// Number of entries, tombstones included.
    pub(crate) fn total(&self) -> usize {
        self.nodes.get(self.root).map_or(0, |n| n.total)
    }

    /// Number of visible entries.
    pub(crate) fn visible(&self) -> usize {
        self.nodes.get(self.root).map_or(0, |n| n.visible)
    }

    /// The position of `elem` among all entries, or `None` if it is not in the tree.
    pub(crate) fn rank(&self, elem: usize) -> Option<usize> {
        let leaf = *self.leaf_of.get(elem).filter(|&&l| l != NONE)?;
        let Body::Leaf { entries, .. } = &self.nodes[leaf].body else { return None };
        let mut rank = entries.iter().position(|e| e.elem == elem)?;
        let mut node = leaf;
        while self.nodes[node].parent != NONE {
            let parent = self.nodes[node].parent;
            if let Body::Inner(children) = &self.nodes[parent].body {
                rank +=
                    children.iter().take_while(|&&c| c != node).map(|&c| self.nodes[c].total).sum::<usize>();
            }
            node = parent;
        }
        Some(rank)
    }

    /// The element that is the `index`-th visible entry.
    pub(crate) fn nth_visible(&self, mut index: usize) -> Option<usize> {
        if index >= self.visible() {
            return None;
        }
        let mut node = self.root;
        loop {
            match &self.nodes[node].body {
                Body::Inner(children) => {
                    let mut next = None;
                    for &c in children {
                        let v = self.nodes[c].visible;
                        if index < v {
                            next = Some(c);
                            break;
                        }
                        index -= v;
                    }
                    node = next?;
                }
                Body::Leaf { entries, .. } => {
                    return entries.iter().filter(|e| e.visible).nth(index).map(|e| e.elem);
                }
            }
        }
    }

    /// The position of the first entry at or after `from` for which `stop` holds, or
    /// [`Tree::total`] when there is none. `stop` must only hold for entries whose sequence
    /// number is at most `seq_max`: subtrees whose lowest sequence number is above it are
    /// skipped whole, which is what makes this O(log n).
    pub(crate) fn first_from(&self, from: usize, seq_max: u64, stop: impl Fn(&Entry) -> bool) -> usize {
        if self.nodes.is_empty() {
            return 0;
        }
        self.first_in(self.root, 0, from, seq_max, &stop).unwrap_or_else(|| self.total())
    }

    fn first_in(
        &self,
        node: usize,
        base: usize,
        from: usize,
        seq_max: u64,
        stop: &impl Fn(&Entry) -> bool,
    ) -> Option<usize> {
        let n = &self.nodes[node];
        if base + n.total <= from || n.min_seq > seq_max {
            return None;
        }
        match &n.body {
            Body::Leaf { entries, .. } => {
                let skip = from.saturating_sub(base);
                entries.iter().skip(skip).position(stop).map(|i| base + skip + i)
            }
            Body::Inner(children) => {
                let mut base = base;
                for &c in children {
                    if let Some(found) = self.first_in(c, base, from, seq_max, stop) {
                        return Some(found);
                    }
                    base += self.nodes[c].total;
                }
                None
            }
        }
    }

    /// Inserts `entry` at position `pos` among all entries (clamped to the end).
    pub(crate) fn insert(&mut self, pos: usize, entry: Entry) {
        if self.nodes.is_empty() {
            self.nodes.push(Node::leaf(NONE, Vec::new(), NONE));
            self.root = 0;
        }
        let mut pos = pos.min(self.total());
        let mut node = self.root;
        loop {
            let n = &mut self.nodes[node];
            n.total += 1;
            n.visible += usize::from(entry.visible);
            n.min_seq = n.min_seq.min(entry.seq);
            let next = match &self.nodes[node].body {
                Body::Inner(children) => {
                    // The child where `pos` falls, or the last one: `pos` is at most the total.
                    let mut chosen = NONE;
                    for &c in children {
                        chosen = c;
                        let t = self.nodes[c].total;
                        if pos <= t {
                            break;
                        }
                        pos -= t;
                    }
                    chosen
                }
                Body::Leaf { .. } => break,
            };
            node = next;
        }
        if self.leaf_of.len() <= entry.elem {
            self.leaf_of.resize(entry.elem + 1, NONE);
        }
        self.leaf_of[entry.elem] = node;
        let full = match &mut self.nodes[node].body {
            Body::Leaf { entries, .. } => {
                entries.insert(pos.min(entries.len()), entry);
                entries.len() > LEAF_MAX
            }
            Body::Inner(_) => false,
        };
        if full {
            self.split(node);
        }
    }

    /// Splits an overfull node in two halves, then its parent if that overflows in turn.
    fn split(&mut self, mut node: usize) {
        loop {
            let right = self.nodes.len();
            let parent = self.nodes[node].parent;
            let body = match &mut self.nodes[node].body {
                Body::Leaf { entries, next } => {
                    let moved = entries.split_off(entries.len() / 2);
                    let body = Body::Leaf { entries: moved, next: *next };
                    *next = right;
                    body
                }
                Body::Inner(children) => Body::Inner(children.split_off(children.len() / 2)),
            };
            match &body {
                Body::Leaf { entries, .. } => {
                    for e in entries {
                        self.leaf_of[e.elem] = right;
                    }
                }
                Body::Inner(children) => {
                    for &c in children {
                        self.nodes[c].parent = right;
                    }
                }
            }
            self.nodes.push(Node { parent, total: 0, visible: 0, min_seq: u64::MAX, body });
            self.recount(node);
            self.recount(right);
            if parent == NONE {
                let root = self.nodes.len();
                self.nodes.push(Node {
                    parent: NONE,
                    total: 0,
                    visible: 0,
                    min_seq: u64::MAX,
                    body: Body::Inner(vec![node, right]),
                });
                self.nodes[node].parent = root;
                self.nodes[right].parent = root;
                self.recount(root);
                self.root = root;
                return;
            }
            // The parent's aggregates are unchanged: the same entries, in two children now.
            let overfull = match &mut self.nodes[parent].body {
                Body::Inner(children) => {
                    let at = children.iter().position(|&c| c == node).map_or(children.len(), |i| i + 1);
                    children.insert(at, right);
                    children.len() > INNER_MAX
                }
                Body::Leaf { .. } => false,
            };
            if !overfull {
                return;
            }
            node = parent;
        }
    }

    /// Recomputes a node's aggregates from its entries or children.
    fn recount(&mut self, node: usize) {
        let (total, visible, min_seq) = match &self.nodes[node].body {
            Body::Leaf { entries, .. } => (
                entries.len(),
                entries.iter().filter(|e| e.visible).count(),
                entries.iter().map(|e| e.seq).min().unwrap_or(u64::MAX),
            ),
            Body::Inner(children) => children
                .iter()
                .map(|&c| &self.nodes[c])
                .fold((0, 0, u64::MAX), |(t, v, m), c| (t + c.total, v + c.visible, m.min(c.min_seq))),
        };
        let n = &mut self.nodes[node];
        n.total = total;
        n.visible = visible;
        n.min_seq = min_seq;
    }

    /// Makes `elem` visible or hidden; nothing if it is not in the tree.
    pub(crate) fn set_visible(&mut self, elem: usize, visible: bool) {
        let Some(&leaf) = self.leaf_of.get(elem).filter(|&&l| l != NONE) else { return };
        let Body::Leaf { entries, .. } = &mut self.nodes[leaf].body else { return };
        let Some(entry) = entries.iter_mut().find(|e| e.elem == elem) else { return };
        if entry.visible == visible {
            return;
        }
        entry.visible = visible;
        let mut node = leaf;
        while node != NONE {
            let n = &mut self.nodes[node];
            if visible {
                n.visible += 1;
            } else {
                n.visible -= 1;
            }
            node = n.parent;
        }
    }

    /// All entries in list order, tombstones included.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> + '_ {
        let mut leaf = self.first_leaf();
        let mut entries: std::slice::Iter<'_, Entry> = [].iter();
        std::iter::from_fn(move || loop {
            if let Some(e) = entries.next() {
                return Some(e);
            }
            let Body::Leaf { entries: next_entries, next } = &self.nodes.get(leaf)?.body else { return None };
            entries = next_entries.iter();
            leaf = *next;
        })
    }

    /// The leftmost leaf, or `NONE` when the tree is empty.
    fn first_leaf(&self) -> usize {
        let mut node = self.root;
        while let Some(n) = self.nodes.get(node) {
            match &n.body {
                Body::Inner(children) => node = children.first().copied().unwrap_or(NONE),
                Body::Leaf { .. } => return node,
            }
        }
        NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(elem: usize, seq: u64) -> Entry {
        Entry { elem, seq, visible: true }
    }

    /// Checks every aggregate, parent link and leaf pointer against a recount.
    fn check(tree: &Tree) {
        for (i, n) in tree.nodes.iter().enumerate() {
            let mut copy = tree.clone();
            copy.recount(i);
            assert_eq!(
                (copy.nodes[i].total, copy.nodes[i].visible, copy.nodes[i].min_seq),
                (n.total, n.visible, n.min_seq),
                "node {i}"
            );
            match &n.body {
                Body::Inner(children) => children.iter().for_each(|&c| assert_eq!(tree.nodes[c].parent, i)),
                Body::Leaf { entries, .. } => {
                    entries.iter().for_each(|e| assert_eq!(tree.leaf_of[e.elem], i))
                }
            }
        }
    }

    #[test]
    fn matches_a_vector_through_many_splits() {
        let mut tree = Tree::default();
        let mut model: Vec<Entry> = Vec::new();
        let mut x: u64 = 7;
        for elem in 0..3000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let pos = (x >> 33) as usize % (model.len() + 1);
            let e = entry(elem, x >> 50);
            tree.insert(pos, e);
            model.insert(pos, e);
            if elem % 3 == 0 {
                let hide = model[(x >> 20) as usize % model.len()].elem;
                tree.set_visible(hide, false);
                if let Some(m) = model.iter_mut().find(|m| m.elem == hide) {
                    m.visible = false;
                }
            }
        }
        check(&tree);
        assert!(tree.nodes.len() > 50, "the tree should have split");
        assert_eq!(tree.iter().copied().collect::<Vec<_>>(), model);
        let visible: Vec<usize> = model.iter().filter(|e| e.visible).map(|e| e.elem).collect();
        assert_eq!(tree.visible(), visible.len());
        for (i, &elem) in visible.iter().enumerate() {
            assert_eq!(tree.nth_visible(i), Some(elem));
        }
        assert_eq!(tree.nth_visible(visible.len()), None);
        for (pos, e) in model.iter().enumerate() {
            assert_eq!(tree.rank(e.elem), Some(pos));
        }
        for from in [0, 1, 100, 1500, 2999, 3000] {
            for seq_max in [0, 3, 100, 8000, u64::MAX] {
                let expected = model
                    .iter()
                    .enumerate()
                    .skip(from)
                    .find(|(_, e)| e.seq <= seq_max)
                    .map_or(model.len(), |(i, _)| i);
                assert_eq!(
                    tree.first_from(from, seq_max, |e| e.seq <= seq_max),
                    expected,
                    "from {from} seq_max {seq_max}"
                );
            }
        }
    }

    #[test]
    fn an_empty_tree_answers() {
        let tree = Tree::default();
        assert_eq!((tree.total(), tree.visible()), (0, 0));
        assert_eq!(tree.nth_visible(0), None);
        assert_eq!(tree.rank(0), None);
        assert_eq!(tree.first_from(0, u64::MAX, |_| true), 0);
        assert_eq!(tree.iter().count(), 0);
    }
}
