//! Who an action is delivered to: the `channels`/`users`/`clients`/`nodes`/`excludeClients` meta.

use rhizome_protocol::{Channel, ClientId, NodeId, UserId};

/// Delivery targets of an action, as the reference server's resend meta.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    /// Subscribers of these channels.
    pub channels: Vec<Channel>,
    /// Every connected client of these users.
    pub users: Vec<UserId>,
    /// These clients.
    pub clients: Vec<ClientId>,
    /// These nodes.
    pub nodes: Vec<NodeId>,
    /// Never these clients, whatever else says.
    pub exclude_clients: Vec<ClientId>,
}

impl Routing {
    /// Routing to one channel.
    pub fn channel(channel: impl Into<Channel>) -> Self {
        Routing { channels: vec![channel.into()], ..Routing::default() }
    }

    /// Whether nobody is addressed.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty() && self.users.is_empty() && self.clients.is_empty() && self.nodes.is_empty()
    }

    /// Whether the action is addressed to a user, client or node (kept for offline delivery).
    pub fn is_targeted(&self) -> bool {
        !(self.users.is_empty() && self.clients.is_empty() && self.nodes.is_empty())
    }

    /// Adds the targets of `other`.
    pub fn merge(&mut self, other: Routing) {
        self.channels.extend(other.channels);
        self.users.extend(other.users);
        self.clients.extend(other.clients);
        self.nodes.extend(other.nodes);
        self.exclude_clients.extend(other.exclude_clients);
    }

    /// Whether the client of `node` is a recipient by `users`/`clients`/`nodes`, given the author.
    /// The author never receives its own action through `users`; `excludeClients` always wins.
    pub fn targets(&self, author: Option<&ClientId>, node: &NodeId) -> bool {
        let client = node.client_id();
        if self.exclude_clients.contains(&client) {
            return false;
        }
        if self.nodes.contains(node) || self.clients.contains(&client) {
            return true;
        }
        if author == Some(&client) {
            return false;
        }
        match node.user_id() {
            Some(user) => self.users.contains(&user),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_the_reference_rules_without_its_quirks() {
        let alice: ClientId = "alice:1".into();
        let r = Routing {
            users: vec!["alice".into(), "bob".into()],
            clients: vec!["carol:1".into()],
            exclude_clients: vec!["bob:2".into(), "carol:1".into()],
            ..Routing::default()
        };
        assert!(!r.targets(Some(&alice), &"alice:1:t".into()), "no echo to the author via users");
        assert!(r.targets(Some(&alice), &"alice:2:t".into()), "other devices of the author's user");
        assert!(r.targets(Some(&alice), &"bob:1:t".into()));
        assert!(!r.targets(Some(&alice), &"bob:2:t".into()), "excluded");
        assert!(!r.targets(Some(&alice), &"carol:1:t".into()), "exclusion wins over clients");
        let r = Routing { clients: vec!["alice:1".into()], ..Routing::default() };
        assert!(r.targets(Some(&alice), &"alice:1:t".into()), "explicit clients reach the author");
        assert!(r.is_targeted());
        assert!(!Routing::channel("a").is_targeted());
    }
}
