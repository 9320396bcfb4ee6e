//! Application logic: the hooks a Rust team implements to embed Rhizome with its own rules.
//!
//! These mirror `server.auth`, `server.type` and `server.channel` of the reference server. Hooks
//! are async so they can ask a database; the core never performs I/O itself.

use crate::routing::Routing;
use async_trait::async_trait;
use rhizome_protocol::{Action, ActionId, ClientId, NodeId, UserId};
use serde_json::{Map, Value};
use std::sync::Arc;

/// Who sent an action, on which connection.
#[derive(Debug, Clone)]
pub struct Context {
    /// The user part of the node id.
    pub user_id: Option<UserId>,
    /// `user:client`.
    pub client_id: ClientId,
    /// `user:client:tab`.
    pub node_id: NodeId,
    /// The subprotocol the client announced.
    pub subprotocol: u64,
    /// The Logux `headers` the client sent.
    pub headers: Arc<Map<String, Value>>,
}

/// The meta of an action the application sees.
#[derive(Debug, Clone)]
pub struct Meta {
    /// The action id.
    pub id: ActionId,
    /// Creation time, server clock, ms.
    pub time: i64,
    /// The action's subprotocol.
    pub subprotocol: u64,
}

/// What the authenticator is asked.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    /// The user part of the node id, if it has one.
    pub user_id: Option<UserId>,
    /// The client id.
    pub client_id: ClientId,
    /// The node id.
    pub node_id: NodeId,
    /// The `token` of `connect`.
    pub token: Option<String>,
    /// The Logux `headers` received before `connect`.
    pub headers: Arc<Map<String, Value>>,
    /// The `Cookie` header of the WebSocket upgrade request.
    pub cookie: Option<String>,
}

/// Failure of a hook, answered to the client as a `logux/undo`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HookError {
    /// Undo with a reason of the application's choice and extra fields for the undo action.
    #[error("undone: {reason}")]
    Undo {
        /// The undo reason.
        reason: String,
        /// Extra fields merged into the `logux/undo` action.
        extra: Map<String, Value>,
    },
    /// The channel or object does not exist: undo `notFound`.
    #[error("not found")]
    NotFound,
    /// Anything else: logged, and answered with undo `error`. The text never reaches the client.
    #[error("{0}")]
    Failed(String),
}

impl HookError {
    /// The undo reason this error is answered with.
    pub fn reason(&self) -> &str {
        match self {
            HookError::Undo { reason, .. } => reason,
            HookError::NotFound => "notFound",
            HookError::Failed(_) => "error",
        }
    }
}

/// Decides whether a client may connect.
#[async_trait]
pub trait Authenticator: Send + Sync {
    /// `true` lets the client in; `false` answers `wrong-credentials`.
    async fn authenticate(&self, request: &AuthRequest) -> bool;
}

/// Rules for one action type (`server.type` of the reference).
#[async_trait]
pub trait ActionType: Send + Sync {
    /// May this client add this action? `false` answers undo `denied`.
    async fn access(&self, ctx: &Context, action: &Action, meta: &Meta) -> Result<bool, HookError>;

    /// Who else receives the action.
    async fn resend(&self, _ctx: &Context, _action: &Action, _meta: &Meta) -> Result<Routing, HookError> {
        Ok(Routing::default())
    }

    /// Whether [`ActionType::process`] does anything. When it does not, an action is marked
    /// processed in the same transaction that stores it.
    fn processes(&self) -> bool {
        false
    }

    /// Applies the action, after it is durable in the log. Runs at most once per action id, ever.
    async fn process(&self, _ctx: &Context, _action: &Action, _meta: &Meta) -> Result<(), HookError> {
        Ok(())
    }
}

/// Named parts of a channel name, from its pattern (`users/:id` → `id`).
pub type Params = Vec<(String, String)>;

/// Rules for a family of channels (`server.channel` of the reference).
#[async_trait]
pub trait ChannelType: Send + Sync {
    /// May this client subscribe? `false` answers undo `denied`.
    async fn access(
        &self,
        ctx: &Context,
        params: &Params,
        action: &Action,
        meta: &Meta,
    ) -> Result<bool, HookError>;

    /// Actions sent only to the new subscriber (initial state), before `logux/processed`.
    async fn load(
        &self,
        _ctx: &Context,
        _params: &Params,
        _action: &Action,
        _meta: &Meta,
    ) -> Result<Vec<Action>, HookError> {
        Ok(Vec::new())
    }
}

/// A channel name pattern: `/`-separated literals, `:name` for one segment, `*` at the end for
/// any remaining segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPattern {
    segments: Vec<Segment>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Rest,
}

impl ChannelPattern {
    /// Parses a pattern such as `users/:id` or `files/:owner/*`.
    pub fn parse(text: &str) -> Option<ChannelPattern> {
        if text.is_empty() {
            return None;
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let segment = if *part == "*" {
                if i + 1 != parts.len() {
                    return None;
                }
                Segment::Rest
            } else if let Some(name) = part.strip_prefix(':') {
                if name.is_empty() {
                    return None;
                }
                Segment::Param(name.to_owned())
            } else {
                Segment::Literal((*part).to_owned())
            };
            segments.push(segment);
        }
        Some(ChannelPattern { segments, text: text.to_owned() })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The params of `channel` when it matches.
    pub fn matches(&self, channel: &str) -> Option<Params> {
        let mut params = Vec::new();
        let mut parts = channel.split('/');
        for segment in &self.segments {
            match segment {
                Segment::Rest => {
                    let rest: Vec<&str> = parts.by_ref().collect();
                    if rest.is_empty() || rest.iter().any(|p| p.is_empty()) {
                        return None;
                    }
                    return Some(params);
                }
                Segment::Literal(l) => {
                    if parts.next()? != l {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    let value = parts.next()?;
                    if value.is_empty() {
                        return None;
                    }
                    params.push((name.clone(), value.to_owned()));
                }
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(params)
    }
}

/// Matches action types: exact, or a prefix when the pattern ends with `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypePattern(String);

impl TypePattern {
    /// A pattern; `todo/*` matches every type starting with `todo/`.
    pub fn new(text: &str) -> Self {
        TypePattern(text.to_owned())
    }

    /// Whether `kind` matches.
    pub fn matches(&self, kind: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => kind.starts_with(prefix),
            None => self.0 == kind,
        }
    }
}

/// The application: an authenticator plus action types and channels, first match wins.
#[derive(Clone)]
pub struct App {
    auth: Arc<dyn Authenticator>,
    types: Vec<(TypePattern, Arc<dyn ActionType>)>,
    channels: Vec<(ChannelPattern, Arc<dyn ChannelType>)>,
    /// Users whose authenticated connections are peers (edge nodes' links; see docs/edge.md).
    peers: Vec<UserId>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("types", &self.types.iter().map(|(p, _)| &p.0).collect::<Vec<_>>())
            .field("channels", &self.channels.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>())
            .finish()
    }
}

impl App {
    /// An application with this authenticator and no types or channels yet.
    pub fn new(auth: impl Authenticator + 'static) -> Self {
        App { auth: Arc::new(auth), types: Vec::new(), channels: Vec::new(), peers: Vec::new() }
    }

    /// Makes the authenticated connections of `user` peers: they may relay actions of other
    /// nodes (an edge node's link), each checked by these rules as its author's, and may
    /// subscribe to any channel (an edge is a replica; its own rules decide what its clients
    /// see). Only trusted users: a peer speaks for everyone its rules let it.
    pub fn peer(mut self, user: UserId) -> Self {
        self.peers.push(user);
        self
    }

    /// Whether the connections of `user` are peers.
    pub fn is_peer(&self, user: &UserId) -> bool {
        self.peers.contains(user)
    }

    /// Whether any user's connections are peers: this server may then be relayed another
    /// server's application of an operation it applied itself (docs/edge.md).
    pub fn has_peers(&self) -> bool {
        !self.peers.is_empty()
    }

    /// The answer to `request`, given whether the authenticator accepted it.
    pub fn grant(&self, request: &AuthRequest, accepted: bool) -> crate::Grant {
        match &request.user_id {
            _ if !accepted => crate::Grant::Refused,
            Some(user) if self.is_peer(user) => crate::Grant::Peer,
            _ => crate::Grant::Client,
        }
    }

    /// Adds rules for action types matching `pattern`.
    pub fn action_type(mut self, pattern: &str, rules: impl ActionType + 'static) -> Self {
        self.types.push((TypePattern::new(pattern), Arc::new(rules)));
        self
    }

    /// Adds rules for channels matching `pattern`. Panics on a malformed pattern: patterns are
    /// written by the developer, not received from clients.
    pub fn channel(mut self, pattern: &str, rules: impl ChannelType + 'static) -> Self {
        let parsed =
            ChannelPattern::parse(pattern).unwrap_or_else(|| panic!("bad channel pattern {pattern:?}"));
        self.channels.push((parsed, Arc::new(rules)));
        self
    }

    /// Adds rules for channels matching an already parsed pattern.
    pub fn channel_pattern(mut self, pattern: ChannelPattern, rules: Arc<dyn ChannelType>) -> Self {
        self.channels.push((pattern, rules));
        self
    }

    /// Adds rules for action types, already shared.
    pub fn action_type_shared(mut self, pattern: &str, rules: Arc<dyn ActionType>) -> Self {
        self.types.push((TypePattern::new(pattern), rules));
        self
    }

    /// The authenticator.
    pub fn authenticator(&self) -> &dyn Authenticator {
        &*self.auth
    }

    /// The rules of an action type.
    pub fn find_type(&self, kind: &str) -> Option<&Arc<dyn ActionType>> {
        self.types.iter().find(|(p, _)| p.matches(kind)).map(|(_, t)| t)
    }

    /// The rules of a channel and its params.
    pub fn find_channel(&self, channel: &str) -> Option<(&Arc<dyn ChannelType>, Params)> {
        self.channels.iter().find_map(|(p, c)| p.matches(channel).map(|params| (c, params)))
    }
}

/// A channel subscription filter: a channel action reaches the subscriber only when each field
/// of the filter equals the action's field of the same name.
pub fn filter_accepts(filter: &Map<String, Value>, action: &Action) -> bool {
    filter.iter().all(|(k, v)| action.fields().get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_patterns() {
        let p = ChannelPattern::parse("users/:id").unwrap();
        assert_eq!(p.matches("users/10"), Some(vec![("id".into(), "10".into())]));
        assert_eq!(p.matches("users/10/x"), None);
        assert_eq!(p.matches("users/"), None);
        assert_eq!(p.matches("user/10"), None);
        let p = ChannelPattern::parse("files/:owner/*").unwrap();
        assert_eq!(p.matches("files/a/b/c"), Some(vec![("owner".into(), "a".into())]));
        assert_eq!(p.matches("files/a"), None);
        assert!(ChannelPattern::parse("a/*/b").is_none());
        assert!(ChannelPattern::parse("a/:").is_none());
        assert_eq!(ChannelPattern::parse("news").unwrap().matches("news"), Some(vec![]));
    }

    #[test]
    fn type_patterns() {
        assert!(TypePattern::new("todo/*").matches("todo/add"));
        assert!(!TypePattern::new("todo/*").matches("todos"));
        assert!(TypePattern::new("inc").matches("inc"));
        assert!(!TypePattern::new("inc").matches("incr"));
    }
}
