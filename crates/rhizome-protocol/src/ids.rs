//! Identifier newtypes: node, client and user ids, action ids and channels.

use std::fmt;
use std::sync::Arc;

/// Longest node id we accept, in bytes. Real ids are `user:8chars:8chars`.
pub const NODE_ID_BYTES_MAX: usize = 256;

/// A node id: `user:client:tab` for clients, `server:<id>` for servers.
#[derive(Clone, Eq)]
pub struct NodeId(Arc<str>);

/// A client id: the first two parts of a node id (`user:client`), shared by all tabs.
#[derive(Clone, Eq)]
pub struct ClientId(Arc<str>);

/// A user id: the first part of a node id.
#[derive(Clone, Eq)]
pub struct UserId(Arc<str>);

/// A channel name, such as `users/10` or `counter/1`.
#[derive(Clone, Eq)]
pub struct Channel(Arc<str>);

macro_rules! string_id {
    ($ty:ident) => {
        // Equality, order and hash are the strings'. Equality and order look at the pointer
        // first: ids are cloned far more often than rebuilt (a node's dots in a CRDT share one
        // allocation), so comparing an id with a clone of itself, the common case in CRDT
        // lookups, skips reading the strings.
        impl PartialEq for $ty {
            #[inline]
            fn eq(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
            }
        }
        impl Ord for $ty {
            #[inline]
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                if Arc::ptr_eq(&self.0, &other.0) {
                    return std::cmp::Ordering::Equal;
                }
                self.0.cmp(&other.0)
            }
        }
        impl std::hash::Hash for $ty {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.0.hash(state);
            }
        }
        impl PartialOrd for $ty {
            #[inline]
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        impl $ty {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }
        impl From<&str> for $ty {
            fn from(s: &str) -> Self {
                Self(Arc::from(s))
            }
        }
        impl From<String> for $ty {
            fn from(s: String) -> Self {
                Self(Arc::from(s))
            }
        }
        impl std::borrow::Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}
string_id!(NodeId);
string_id!(ClientId);
string_id!(UserId);
string_id!(Channel);

impl ClientId {
    /// The user part, when the client id has a `:`.
    pub fn user_id(&self) -> Option<UserId> {
        self.0.split_once(':').map(|(user, _)| UserId::from(user))
    }
}

impl NodeId {
    /// Checks the node id the way the Logux `Log` does (no spaces) plus a size limit.
    pub fn parse(s: &str) -> Option<NodeId> {
        if s.is_empty() || s.len() > NODE_ID_BYTES_MAX || s.contains(' ') {
            return None;
        }
        if s.chars().any(|c| c.is_control()) {
            return None;
        }
        Some(NodeId::from(s))
    }

    /// The user part, when the node id has a `:` (the `parseId` rule of Logux).
    pub fn user_id(&self) -> Option<UserId> {
        self.0.split_once(':').map(|(user, _)| UserId::from(user))
    }

    /// The client id: `user:client` for `user:client:tab`, the whole id otherwise.
    pub fn client_id(&self) -> ClientId {
        client_part(&self.0)
    }

    /// Whether this is a server's node id: `server` or of user `server`, which no client may be.
    pub fn is_server(&self) -> bool {
        &*self.0 == "server" || self.0.starts_with("server:")
    }

    /// Whether this node is one of `client`'s (its [`NodeId::client_id`] is `client`), without
    /// allocating one.
    pub fn is_of(&self, client: &ClientId) -> bool {
        client_str(&self.0) == &*client.0
    }
}

/// The client id of a node id string (`user:client` of `user:client:tab`).
pub fn client_part(node: &str) -> ClientId {
    ClientId::from(client_str(node))
}

fn client_str(node: &str) -> &str {
    let mut parts = node.splitn(3, ':');
    match (parts.next(), parts.next()) {
        (Some(user), Some(client)) => &node[..user.len() + 1 + client.len()],
        _ => node,
    }
}

/// An action id, `"<ms> <nodeId> <seq>"` in full.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActionId {
    /// Creation time in the author's clock, in ms.
    pub ms: i64,
    /// The author node.
    pub node: NodeId,
    /// Sequence number within one ms.
    pub seq: u64,
}

impl ActionId {
    /// Parses the full string form `"<ms> <nodeId> <seq>"`.
    pub fn parse(s: &str) -> Option<ActionId> {
        let (ms, rest) = s.split_once(' ')?;
        let (node, seq) = rest.rsplit_once(' ')?;
        Some(ActionId { ms: ms.parse().ok()?, node: NodeId::parse(node)?, seq: seq.parse().ok()? })
    }

    /// Parses like [`ActionId::parse`], sharing `known` when the id's node is that node: a
    /// client reading its own ids back skips the node's checks and allocation.
    pub fn parse_known(s: &str, known: &NodeId) -> Option<ActionId> {
        let (ms, rest) = s.split_once(' ')?;
        let (node, seq) = rest.rsplit_once(' ')?;
        let node = if node == known.as_str() { known.clone() } else { NodeId::parse(node)? };
        Some(ActionId { ms: ms.parse().ok()?, node, seq: seq.parse().ok()? })
    }

    /// The client that authored this action.
    pub fn client_id(&self) -> ClientId {
        self.node.client_id()
    }

    /// Appends the full string form to `out` (faster than `Display` on hot paths).
    pub fn push_to(&self, out: &mut String) {
        push_int(out, self.ms);
        out.push(' ');
        out.push_str(self.node.as_str());
        out.push(' ');
        push_uint(out, self.seq);
    }

    /// The full string form, `"<ms> <nodeId> <seq>"`.
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(self.node.as_str().len() + 24);
        self.push_to(&mut out);
        out
    }
}

/// Appends the decimal form of `v` to `out`.
pub fn push_uint(out: &mut String, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // ASCII digits: always UTF-8. One copy instead of a `char` push per digit (ids and times
    // of every answer are written this way).
    if let Ok(text) = std::str::from_utf8(&digits[i..]) {
        out.push_str(text);
    }
}

/// Appends the decimal form of `v` to `out`.
pub fn push_int(out: &mut String, v: i64) {
    if v < 0 {
        out.push('-');
    }
    push_uint(out, v.unsigned_abs());
}

impl fmt::Display for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl fmt::Debug for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Generates the ids of one node's own actions, the way `Log.generateId` does:
/// the same or an earlier ms reuses the last ms and bumps the sequence number.
#[derive(Debug, Clone)]
pub struct IdGenerator {
    node: NodeId,
    last_ms: i64,
    seq: u64,
}

impl IdGenerator {
    /// A generator for `node`'s actions.
    pub fn new(node: NodeId) -> Self {
        IdGenerator { node, last_ms: 0, seq: 0 }
    }

    /// A generator that goes on after the id `(last_ms, seq)` (as [`IdGenerator::last`] gave),
    /// for a node that keeps its ids across restarts.
    pub fn resume(node: NodeId, last_ms: i64, seq: u64) -> Self {
        IdGenerator { node, last_ms, seq }
    }

    /// The time and sequence of the last id generated, to be persisted.
    pub fn last(&self) -> (i64, u64) {
        (self.last_ms, self.seq)
    }

    /// The next id at time `now_ms`; strictly greater than every id generated before.
    pub fn next(&mut self, now_ms: i64) -> ActionId {
        if now_ms <= self.last_ms {
            self.seq += 1;
        } else {
            self.last_ms = now_ms;
            self.seq = 0;
        }
        ActionId { ms: self.last_ms, node: self.node.clone(), seq: self.seq }
    }

    /// The node whose ids this generator makes.
    pub fn node(&self) -> &NodeId {
        &self.node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_parts() {
        let n = NodeId::parse("10:abc:tab").unwrap();
        assert_eq!(n.user_id().unwrap().as_str(), "10");
        assert_eq!(n.client_id().as_str(), "10:abc");
        let n = NodeId::parse("10:abc").unwrap();
        assert_eq!(n.client_id().as_str(), "10:abc");
        let n = NodeId::parse("anon").unwrap();
        assert_eq!(n.client_id().as_str(), "anon");
        assert!(n.user_id().is_none());
        assert!(NodeId::parse("a b").is_none());
        assert!(NodeId::parse("").is_none());
    }

    #[test]
    fn a_node_is_of_exactly_its_client() {
        let client = ClientId::from("10:abc");
        for (node, of) in [
            ("10:abc:tab", true),
            ("10:abc", true),
            ("10:abc:tab:x", true),
            ("10:abcd:t", false),
            ("10", false),
            ("10:ab:c", false),
        ] {
            let node = NodeId::parse(node).unwrap();
            assert_eq!(node.is_of(&client), of, "{node}");
            assert_eq!(node.is_of(&client), node.client_id() == client, "{node}");
        }
        assert!(NodeId::parse("anon").unwrap().is_of(&ClientId::from("anon")));
    }

    #[test]
    fn integers_are_written_as_display_writes_them() {
        for v in [0, 1, 9, 10, 99, 100, 1_795_692_083_947, u64::MAX] {
            let mut out = String::from("x");
            push_uint(&mut out, v);
            assert_eq!(out, format!("x{v}"));
        }
        for v in [0, -1, 7, -1_795_692_083_947, i64::MIN, i64::MAX] {
            let mut out = String::new();
            push_int(&mut out, v);
            assert_eq!(out, v.to_string());
        }
    }

    #[test]
    fn action_id_round_trip() {
        let id = ActionId::parse("1795692083947 10:QNzaL4cH:d8Kgi9Ai 3").unwrap();
        assert_eq!(id.ms, 1795692083947);
        assert_eq!(id.node.as_str(), "10:QNzaL4cH:d8Kgi9Ai");
        assert_eq!(id.seq, 3);
        assert_eq!(id.to_string(), "1795692083947 10:QNzaL4cH:d8Kgi9Ai 3");
        assert!(ActionId::parse("x y 1").is_none());
        let known = NodeId::from("10:QNzaL4cH:d8Kgi9Ai");
        let own = ActionId::parse_known("1795692083947 10:QNzaL4cH:d8Kgi9Ai 3", &known).unwrap();
        assert_eq!(own, id);
        let other = ActionId::parse_known("1795692083947 11:a:b 3", &known).unwrap();
        assert_eq!(other.node.as_str(), "11:a:b");
        assert!(ActionId::parse_known("1 has space 3", &known).is_none(), "another node is checked");
        assert!(ActionId::parse_known("x 10:QNzaL4cH:d8Kgi9Ai 3", &known).is_none());
        assert!(ActionId::parse("1 y").is_none());
    }

    #[test]
    fn generator_is_monotonic() {
        let mut g = IdGenerator::new(NodeId::from("server:x"));
        let a = g.next(10);
        let b = g.next(10);
        let c = g.next(5);
        let d = g.next(11);
        assert!(a < b && b < c && c < d);
        assert_eq!((c.ms, c.seq), (10, 2));
        assert_eq!((d.ms, d.seq), (11, 0));
    }

    #[test]
    fn integers_and_ids_print_like_display() {
        for v in [0i64, 7, -7, 10, 1_795_692_443_710, i64::MIN, i64::MAX] {
            let mut out = String::new();
            push_int(&mut out, v);
            assert_eq!(out, v.to_string());
        }
        let mut out = String::new();
        push_uint(&mut out, u64::MAX);
        assert_eq!(out, u64::MAX.to_string());
        let id = ActionId { ms: 1_795_692_443_710, node: NodeId::from("10:abc:t"), seq: 12 };
        assert_eq!(id.text(), "1795692443710 10:abc:t 12");
        assert_eq!(format!("{id}"), id.text());
    }
}
