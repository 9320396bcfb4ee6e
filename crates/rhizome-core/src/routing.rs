//! Who an action is delivered to: the `channels`/`users`/`clients`/`nodes`/`excludeClients` meta.

use rhizome_protocol::message::push_json_str;
use rhizome_protocol::{Channel, ClientId, NodeId, UserId, WireTargets};

/// The prefix of the channel a peer (an edge's link) subscribes to for what is addressed to a
/// user (docs/edge.md): `rhizome/user/<user id>` follows every entry whose `users`, `clients`
/// or `nodes` name that user or one of its clients or nodes. Only a peer may subscribe to it.
pub const USER_CHANNEL_PREFIX: &str = "rhizome/user/";

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

    /// Whether the action is addressed to `user` or to one of its clients or nodes.
    pub fn addresses_user(&self, user: &UserId) -> bool {
        self.users.contains(user)
            || self.clients.iter().any(|c| c.user_id().as_ref() == Some(user))
            || self.nodes.iter().any(|n| n.user_id().as_ref() == Some(user))
    }

    /// The users addressed by `users`, `clients` or `nodes`, each once, in order.
    pub fn addressed_users(&self) -> Vec<UserId> {
        let all = self
            .users
            .iter()
            .cloned()
            .chain(self.clients.iter().filter_map(ClientId::user_id))
            .chain(self.nodes.iter().filter_map(NodeId::user_id));
        let mut seen = std::collections::HashSet::new();
        all.filter(|user| seen.insert(user.clone())).collect()
    }

    /// The addressing part as meta pairs (`"users":[…],"clients":[…],…`, the non-empty ones),
    /// for a peer ([`WireTargets`]); empty when the action is addressed to no user, client or
    /// node.
    pub fn targets_meta(&self) -> String {
        let mut out = String::new();
        if !self.is_targeted() {
            return out;
        }
        let mut list = |name: &str, items: &mut dyn Iterator<Item = &str>| {
            let mut first = true;
            for item in items {
                if first {
                    if !out.is_empty() {
                        out.push(',');
                    }
                    out.push('"');
                    out.push_str(name);
                    out.push_str("\":[");
                    first = false;
                } else {
                    out.push(',');
                }
                push_json_str(&mut out, item);
            }
            if !first {
                out.push(']');
            }
        };
        list("users", &mut self.users.iter().map(|u| u.as_str()));
        list("clients", &mut self.clients.iter().map(|c| c.as_str()));
        list("nodes", &mut self.nodes.iter().map(|n| n.as_str()));
        list("excludeClients", &mut self.exclude_clients.iter().map(|c| c.as_str()));
        out
    }

    /// Adds the targets a peer's upstream sent (see [`WireTargets`]); node ids that do not
    /// parse are left out.
    pub fn add_wire_targets(&mut self, targets: &WireTargets) {
        fn add<T: Eq + std::hash::Hash + Clone>(to: &mut Vec<T>, items: impl Iterator<Item = T>) {
            let mut seen: std::collections::HashSet<T> = to.iter().cloned().collect();
            to.extend(items.filter(|item| seen.insert(item.clone())));
        }
        add(&mut self.users, targets.users.iter().map(|u| UserId::from(u.as_str())));
        add(&mut self.clients, targets.clients.iter().map(|c| ClientId::from(c.as_str())));
        add(&mut self.nodes, targets.nodes.iter().filter_map(|n| NodeId::parse(n)));
        add(&mut self.exclude_clients, targets.exclude_clients.iter().map(|c| ClientId::from(c.as_str())));
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

    #[test]
    fn addressed_users_come_from_users_clients_and_nodes() {
        let r = Routing {
            users: vec!["alice".into()],
            clients: vec!["bob:1".into(), "alice:2".into()],
            nodes: vec![NodeId::from("carol:1:t")],
            ..Routing::default()
        };
        assert_eq!(r.addressed_users(), vec![UserId::from("alice"), "bob".into(), "carol".into()]);
        assert!(r.addresses_user(&"carol".into()));
        assert!(!r.addresses_user(&"dave".into()));
        assert!(Routing::channel("a").addressed_users().is_empty());
    }

    #[test]
    fn targets_go_to_a_peer_as_meta_and_come_back_the_same() {
        let r = Routing {
            channels: vec!["c".into()],
            users: vec!["al\"ice".into()],
            nodes: vec![NodeId::from("carol:1:t")],
            exclude_clients: vec!["bob:2".into()],
            ..Routing::default()
        };
        let meta = r.targets_meta();
        assert_eq!(meta, r#""users":["al\"ice"],"nodes":["carol:1:t"],"excludeClients":["bob:2"]"#);
        let parsed: serde_json::Value = serde_json::from_str(&format!("{{{meta}}}")).expect("JSON");
        let list = |k: &str| -> Vec<String> {
            parsed
                .get(k)
                .and_then(|v| v.as_array())
                .map_or_else(Vec::new, |a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        };
        let wire = WireTargets {
            users: list("users"),
            clients: list("clients"),
            nodes: list("nodes"),
            exclude_clients: list("excludeClients"),
        };
        let mut back = Routing::channel("c");
        back.add_wire_targets(&wire);
        back.add_wire_targets(&wire);
        assert_eq!(back, r, "added once, whatever the repeats");
        assert_eq!(Routing::channel("c").targets_meta(), "", "nothing for a channel-only action");
    }
}
