//! Access rules from the config file: who may subscribe to and write which channels, and which
//! action types go to which channels. This is what the `rhizome` binary runs without any Rust.

use async_trait::async_trait;
use rhizome_core::{
    ActionType, App, Authenticator, ChannelPattern, ChannelType, Context, HookError, Meta, Params, Routing,
};
use rhizome_protocol::{Action, Channel};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

/// Who a rule lets in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// Every authenticated user.
    Everyone,
    /// Nobody (only the server itself).
    Nobody,
    /// The user whose id equals this channel parameter (`":user"` in the config).
    Param(String),
    /// These user ids.
    Users(Vec<String>),
}

impl<'de> Deserialize<'de> for Who {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        match Raw::deserialize(d)? {
            Raw::Many(users) => Ok(Who::Users(users)),
            Raw::One(s) if s == "everyone" => Ok(Who::Everyone),
            Raw::One(s) if s == "nobody" => Ok(Who::Nobody),
            Raw::One(s) => match s.strip_prefix(':') {
                Some(p) if !p.is_empty() => Ok(Who::Param(p.to_owned())),
                _ => Err(serde::de::Error::custom(format!(
                    "expected \"everyone\", \"nobody\", \":param\" or a list of user ids, got {s:?}"
                ))),
            },
        }
    }
}

impl Who {
    fn allows(&self, ctx: &Context, params: &Params) -> bool {
        let user = ctx.user_id.as_ref().map(|u| u.as_str());
        match self {
            Who::Everyone => true,
            Who::Nobody => false,
            Who::Param(name) => params.iter().any(|(k, v)| k == name && Some(v.as_str()) == user),
            Who::Users(list) => user.is_some_and(|u| list.iter().any(|x| x == u)),
        }
    }
}

/// `[[channel]]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRule {
    /// Channel pattern, e.g. `users/:user` or `projects/:id/*`.
    pub pattern: String,
    /// Who may subscribe.
    #[serde(default = "everyone")]
    pub subscribe: Who,
    /// Who may send actions to it.
    #[serde(default = "nobody")]
    pub write: Who,
}

fn everyone() -> Who {
    Who::Everyone
}

fn nobody() -> Who {
    Who::Nobody
}

/// `[[action]]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRule {
    /// Action type, or a prefix ending in `*` (`todo/*`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Channel template the action is sent to, with `{field}` taken from the action, e.g.
    /// `counter/{id}` or `{channel}`. Sending requires `write` on that channel.
    #[serde(default)]
    pub channel: Option<String>,
    /// Who may send it, when it has no channel (it is then only kept in the log, or sent to
    /// `user`).
    #[serde(default)]
    pub access: Option<Who>,
    /// The user it is also sent to, a template like `channel` (e.g. `{to}`): every client of
    /// that user receives it, those offline when they connect (Logux's `users` meta).
    #[serde(default)]
    pub user: Option<String>,
}

/// Fills `{field}` placeholders from the action's string or number fields.
pub fn expand(template: &str, action: &Action) -> Option<String> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}')? + start;
        let field = &rest[start + 1..end];
        // A value is one path segment, except in a placeholder that ends the template
        // (`crdt/{key}`): there it can only lengthen the name, whose own channel rule decides.
        let trailing = end + 1 == rest.len();
        let segment_ok = |s: &str| !s.is_empty() && (trailing || !s.contains('/')) || field == "channel";
        // A string is read in place; only other values are parsed.
        match action.str_field(field) {
            Some(s) if segment_ok(s) => out.push_str(s),
            Some(_) => return None,
            None => match action.field(field)? {
                Value::String(s) if segment_ok(&s) => out.push_str(&s),
                Value::Number(n) => out.push_str(&n.to_string()),
                _ => return None,
            },
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

struct Channels(Vec<(ChannelPattern, ChannelRule)>);

impl Channels {
    fn find(&self, name: &str) -> Option<(&ChannelRule, Params)> {
        self.0.iter().find_map(|(p, r)| p.matches(name).map(|params| (r, params)))
    }
}

struct ConfiguredChannel {
    rule: ChannelRule,
}

#[async_trait]
impl ChannelType for ConfiguredChannel {
    async fn access(&self, ctx: &Context, params: &Params, _: &Action, _: &Meta) -> Result<bool, HookError> {
        Ok(self.rule.subscribe.allows(ctx, params))
    }
}

struct ConfiguredAction {
    rule: ActionRule,
    channels: Arc<Channels>,
}

impl ConfiguredAction {
    fn target(&self, action: &Action) -> Result<Option<String>, HookError> {
        match &self.rule.channel {
            None => Ok(None),
            Some(template) => match expand(template, action) {
                Some(name) => Ok(Some(name)),
                None => Err(HookError::Undo { reason: "wrongChannel".into(), extra: Default::default() }),
            },
        }
    }
}

#[async_trait]
impl ActionType for ConfiguredAction {
    async fn access(&self, ctx: &Context, action: &Action, _: &Meta) -> Result<bool, HookError> {
        match self.target(action)? {
            None => Ok(self.rule.access.as_ref().unwrap_or(&Who::Everyone).allows(ctx, &Vec::new())),
            Some(name) => match self.channels.find(&name) {
                None => Err(HookError::Undo { reason: "wrongChannel".into(), extra: Default::default() }),
                Some((rule, params)) => Ok(rule.write.allows(ctx, &params)
                    && self.rule.access.as_ref().is_none_or(|w| w.allows(ctx, &params))),
            },
        }
    }

    async fn resend(&self, _: &Context, action: &Action, _: &Meta) -> Result<Routing, HookError> {
        let mut routing = match self.target(action)? {
            Some(name) => Routing::channel(name),
            None => Routing::default(),
        };
        if let Some(template) = &self.rule.user {
            // A user id is the first part of a node id: no `:`, no space; `server` is no
            // client's.
            match expand(template, action) {
                Some(user) if !user.is_empty() && !user.contains([':', ' ']) && user != "server" => {
                    routing.users.push(user.into());
                }
                _ => return Err(HookError::Undo { reason: "wrongUser".into(), extra: Default::default() }),
            }
        }
        Ok(routing)
    }
}

/// Open rules, for development: every action type is accepted and sent to the channels named
/// by its `channel` (string) or `channels` (list) field; every channel may be subscribed.
struct OpenAction;

#[async_trait]
impl ActionType for OpenAction {
    async fn access(&self, _: &Context, _: &Action, _: &Meta) -> Result<bool, HookError> {
        Ok(true)
    }

    async fn resend(&self, _: &Context, action: &Action, _: &Meta) -> Result<Routing, HookError> {
        let mut routing = Routing::default();
        if let Some(c) = action.str_field("channel") {
            routing.channels.push(Channel::from(c));
        }
        if let Some(Value::Array(list)) = action.field("channels") {
            routing.channels.extend(list.iter().filter_map(Value::as_str).map(Channel::from));
        }
        Ok(routing)
    }
}

struct OpenChannel;

#[async_trait]
impl ChannelType for OpenChannel {
    async fn access(&self, _: &Context, _: &Params, _: &Action, _: &Meta) -> Result<bool, HookError> {
        Ok(true)
    }
}

/// Builds the application from config rules. With no rules at all, the open rules apply.
pub fn build_app(
    auth: impl Authenticator + 'static,
    channels: &[ChannelRule],
    actions: &[ActionRule],
) -> Result<App, String> {
    let mut app = App::new(auth);
    if channels.is_empty() && actions.is_empty() {
        tracing::warn!("no [[channel]] or [[action]] rules: every action type and channel is open");
        return Ok(app.action_type("*", OpenAction).channel("*", OpenChannel));
    }
    let mut parsed = Vec::with_capacity(channels.len());
    for rule in channels {
        let pattern = ChannelPattern::parse(&rule.pattern)
            .ok_or_else(|| format!("bad channel pattern {:?}", rule.pattern))?;
        parsed.push((pattern.clone(), rule.clone()));
        app = app.channel_pattern(pattern, Arc::new(ConfiguredChannel { rule: rule.clone() }));
    }
    let channels = Arc::new(Channels(parsed));
    for rule in actions {
        if rule.kind.is_empty() || rule.kind.starts_with("logux/") {
            return Err(format!("action type {:?} cannot be configured", rule.kind));
        }
        let t = ConfiguredAction { rule: rule.clone(), channels: channels.clone() };
        app = app.action_type_shared(&rule.kind, Arc::new(t));
    }
    Ok(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_take_action_fields() {
        let a = Action::from_json(r#"{"type":"inc","id":"7","n":3,"channel":"users/bob"}"#).unwrap();
        assert_eq!(expand("counter/{id}", &a).as_deref(), Some("counter/7"));
        assert_eq!(expand("c/{n}/x", &a).as_deref(), Some("c/3/x"));
        assert_eq!(expand("{channel}", &a).as_deref(), Some("users/bob"));
        assert_eq!(expand("counter/{missing}", &a), None);
        let b = Action::from_json(r#"{"type":"inc","id":"a/b"}"#).unwrap();
        assert_eq!(expand("c/{id}/x", &b), None, "a field inside a template cannot smuggle a path");
        assert_eq!(
            expand("counter/{id}", &b).as_deref(),
            Some("counter/a/b"),
            "a trailing field only lengthens the name; that channel's own rule decides"
        );
        let c = Action::from_json(r#"{"type":"inc","id":"q\"7","e":"","t":true,"s":"x\/y"}"#).unwrap();
        assert_eq!(expand("c/{id}", &c).as_deref(), Some("c/q\"7"), "an escaped string is decoded");
        assert_eq!(expand("c/{e}", &c), None, "an empty value");
        assert_eq!(expand("c/{t}", &c), None, "neither string nor number");
        assert_eq!(expand("c/{s}/x", &c), None, "an escaped slash is a slash too");
    }

    #[tokio::test]
    async fn a_user_template_addresses_a_user_or_refuses_the_action() {
        let rule = ActionRule { kind: "dm".into(), channel: None, access: None, user: Some("{to}".into()) };
        let t = ConfiguredAction { rule, channels: Arc::new(Channels(Vec::new())) };
        let node = rhizome_protocol::NodeId::from("alice:1:t");
        let ctx = Context {
            user_id: node.user_id(),
            client_id: node.client_id(),
            node_id: node.clone(),
            subprotocol: 1,
            headers: Arc::default(),
        };
        let meta = Meta { id: rhizome_protocol::ActionId { ms: 1, node, seq: 0 }, time: 1, subprotocol: 1 };
        let resend = |to: &str| {
            let action = Action::from_json(&serde_json::json!({"type": "dm", "to": to}).to_string()).unwrap();
            let (t, ctx, meta) = (&t, &ctx, &meta);
            async move { t.resend(ctx, &action, meta).await }
        };
        assert_eq!(resend("bob").await.map(|r| r.users), Ok(vec!["bob".into()]));
        for bad in ["", "server", "bob:1", "b b"] {
            let refused = resend(bad).await;
            assert!(
                matches!(&refused, Err(HookError::Undo { reason, .. }) if reason == "wrongUser"),
                "{bad:?}: {refused:?}"
            );
        }
    }

    #[test]
    fn who_parses() {
        #[derive(Deserialize)]
        struct T {
            w: Who,
        }
        let t: T = toml::from_str("w = \":user\"").unwrap();
        assert_eq!(t.w, Who::Param("user".into()));
        let t: T = toml::from_str("w = [\"a\", \"b\"]").unwrap();
        assert_eq!(t.w, Who::Users(vec!["a".into(), "b".into()]));
        assert!(toml::from_str::<T>("w = \"someone\"").is_err());
    }
}
