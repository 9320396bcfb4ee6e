//! Protocol 5 messages: parsing with the reference validator's rules, and encoding.
//!
//! Parsing borrows the frame text and keeps every action as its raw JSON text, so the server can
//! store and forward actions without serialising them again.

use crate::ids::{push_int, push_uint, ActionId, NodeId};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

/// The protocol version this crate speaks.
pub const PROTOCOL: u32 = 5;

/// Why a frame was refused; each maps to one `["error", …]` answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The frame is not JSON, or a message has the wrong shape. Carries the offending text.
    #[error("wrong format: {0}")]
    WrongFormat(String),
    /// A message name the protocol does not have.
    #[error("unknown message: {0}")]
    UnknownMessage(String),
}

impl ProtocolError {
    /// The `["error", type, options]` frame answering this error.
    pub fn to_frame(&self) -> String {
        match self {
            ProtocolError::WrongFormat(text) => {
                encode_error("wrong-format", Some(&Value::String(text.clone())))
            }
            ProtocolError::UnknownMessage(name) => {
                encode_error("unknown-message", Some(&Value::String(name.clone())))
            }
        }
    }
}

/// An action: its JSON text as received, its `type`, and its fields.
///
/// Parsing an action only indexes its top-level fields (where each key and value sit in the
/// text) and reads its `type`: most actions are stored and routed by `type` and a field or two,
/// and a tree of `Value`s for every action would cost an allocation per key and value. The whole
/// [`Action::fields`] map is built the first time it is asked for.
#[derive(Debug, Clone)]
pub struct Action {
    json: Arc<str>,
    kind: Box<str>,
    /// Top-level `(key, value)` byte ranges in `json`, in order; `None` when some key has an
    /// escape (then lookups go through `fields`).
    index: Option<Box<[FieldSpan]>>,
    fields: OnceLock<Map<String, Value>>,
}

/// Where one top-level field of an action sits in its text: the key without its quotes, and
/// the value's JSON.
#[derive(Debug, Clone, Copy)]
struct FieldSpan {
    key: (u32, u32),
    value: (u32, u32),
}

impl Action {
    /// Builds an action from its fields; it must have a string `type`.
    pub fn from_fields(fields: Map<String, Value>) -> Option<Action> {
        let Some(Value::String(kind)) = fields.get("type") else {
            return None;
        };
        let kind = kind.as_str().into();
        let json = Value::Object(fields.clone()).to_string();
        Some(Action { json: Arc::from(json), kind, index: None, fields: OnceLock::from(fields) })
    }

    /// Parses an action from JSON text; it must be an object with a string `type`.
    pub fn from_json(json: &str) -> Option<Action> {
        let mut de = serde_json::Deserializer::from_str(json);
        let top = serde::Deserializer::deserialize_map(&mut de, TopLevel { base: json }).ok()?;
        de.end().ok()?;
        let kind = top.kind?;
        Some(Action {
            json: Arc::from(json),
            kind,
            index: top.index.map(Vec::into_boxed_slice),
            fields: OnceLock::new(),
        })
    }

    /// The action's `type`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The action as JSON text.
    pub fn json(&self) -> &Arc<str> {
        &self.json
    }

    /// The action's fields (parsed on first use).
    pub fn fields(&self) -> &Map<String, Value> {
        self.fields.get_or_init(|| match serde_json::from_str(&self.json) {
            Ok(Value::Object(fields)) => fields,
            // `from_json` checked that the text is an object.
            _ => Map::new(),
        })
    }

    /// The JSON text of a top-level field's value, when the index can tell without the map.
    fn raw_field(&self, name: &str) -> Option<Option<&str>> {
        let index = self.index.as_ref()?;
        let text = &*self.json;
        let slice = |(from, to): (u32, u32)| &text[from as usize..to as usize];
        // The last of repeated keys counts, as in a parsed map.
        Some(index.iter().rev().find(|f| slice(f.key) == name).map(|f| slice(f.value)))
    }

    /// A string field.
    pub fn str_field(&self, name: &str) -> Option<&str> {
        match self.raw_field(name) {
            Some(None) => None,
            // A string without escapes is its text between the quotes.
            Some(Some(raw)) if raw.len() >= 2 && raw.starts_with('"') && !raw.contains('\\') => {
                Some(&raw[1..raw.len() - 1])
            }
            Some(Some(raw)) if !raw.starts_with('"') => None,
            _ => self.fields().get(name).and_then(Value::as_str),
        }
    }

    /// A field's value, parsed from its own text when the whole map has not been built.
    pub fn field(&self, name: &str) -> Option<Value> {
        if self.fields.get().is_none() {
            if let Some(raw) = self.raw_field(name) {
                return raw.and_then(|raw| serde_json::from_str(raw).ok());
            }
        }
        self.fields().get(name).cloned()
    }
}

/// An object key, borrowed from the text when it has no escapes (serde's own `Cow<str>` is
/// always owned).
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Reads an action's top level: its string `type` and where each field sits.
struct TopLevel<'a> {
    base: &'a str,
}

/// What [`TopLevel`] read: `kind` is `None` when `type` is missing or not a string.
struct TopFields {
    kind: Option<Box<str>>,
    index: Option<Vec<FieldSpan>>,
}

impl<'de> serde::de::Visitor<'de> for TopLevel<'de> {
    type Value = TopFields;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an action object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<TopFields, A::Error> {
        let base = self.base.as_ptr() as usize;
        let offset = |s: &str| (s.as_ptr() as usize - base) as u32;
        let mut kind = None;
        let mut index = Some(Vec::new());
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            let raw = value.get();
            if &*key == "type" {
                kind = match serde_json::from_str::<String>(raw) {
                    Ok(k) => Some(k.into()),
                    Err(_) => None,
                };
            }
            match (&mut index, &key) {
                // A borrowed key has no escapes: its text is the key.
                (Some(spans), Cow::Borrowed(k)) => {
                    let (k0, v0) = (offset(k), offset(raw));
                    spans.push(FieldSpan {
                        key: (k0, k0 + k.len() as u32),
                        value: (v0, v0 + raw.len() as u32),
                    });
                }
                _ => index = None,
            }
        }
        Ok(TopFields { kind, index })
    }
}

/// An action id as it travels in `sync`, relative to `baseTime`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireId {
    /// `shift`: the sender's own action, sequence 0.
    Own(i64),
    /// `[shift, seq]`: the sender's own action.
    OwnSeq(i64, u64),
    /// `[shift, node, seq]`: another node's action.
    Full(i64, String, u64),
}

/// Meta of one action in a `sync`, before decompression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireMeta {
    /// The compressed id.
    pub id: WireId,
    /// `time - baseTime`.
    pub time: i64,
    /// The action's subprotocol, when the sender gave one.
    pub subprotocol: Option<u64>,
    /// Meta keys other than `id`, `time` and `subprotocol` (refused by the server).
    pub extra_keys: Vec<String>,
    /// Whom the sender addressed the action to, when it said (`users`, `clients`, `nodes`,
    /// `excludeClients`, each a list of strings): a Rhizome server tells a peer (an edge's
    /// link) so, since the peer cannot work it out from its own rules for every action.
    pub targets: Option<Box<WireTargets>>,
    /// The ids of the deltas a peer folded into this one, when it said (`folded`, see
    /// [`WireMeta::folded_ids`]). A malformed `folded` is kept in `extra_keys` instead.
    pub folded: Option<Box<Vec<(i64, u64)>>>,
}

impl WireMeta {
    /// The ids of the deltas folded into the action `id` (an edge relays an author's deltas of
    /// one object as one, docs/edge.md): `folded` is a list of `[ms, seq]` pairs, `ms` counted
    /// back from `id`'s, of the same node as `id`. Empty without `folded`.
    pub fn folded_ids(&self, id: &ActionId) -> Vec<ActionId> {
        let Some(pairs) = &self.folded else { return Vec::new() };
        pairs
            .iter()
            .map(|&(back, seq)| ActionId { ms: id.ms.saturating_sub(back), node: id.node.clone(), seq })
            .collect()
    }
}

/// The `folded` meta of a delta under `id` into which those of `members` were folded (see
/// [`WireMeta::folded_ids`]): `"folded":[[ms,seq],…]`, empty for no member. Members of
/// another node than `id`'s are left out.
pub fn folded_meta<'a>(id: &ActionId, members: impl IntoIterator<Item = &'a ActionId>) -> String {
    let mut out = String::new();
    for member in members.into_iter().filter(|m| m.node == id.node && *m != id) {
        out.push_str(if out.is_empty() { "\"folded\":[[" } else { ",[" });
        push_int(&mut out, id.ms.saturating_sub(member.ms));
        out.push(',');
        push_uint(&mut out, member.seq);
        out.push(']');
    }
    if !out.is_empty() {
        out.push(']');
    }
    out
}

/// The addressing meta of an action (see [`WireMeta::targets`]), as sent: lists of ids, not
/// yet checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WireTargets {
    /// `users`.
    pub users: Vec<String>,
    /// `clients`.
    pub clients: Vec<String>,
    /// `nodes`.
    pub nodes: Vec<String>,
    /// `excludeClients`.
    pub exclude_clients: Vec<String>,
}

impl WireTargets {
    /// The list kept for the meta key `key`, if it is one of the addressing keys.
    fn slot(&mut self, key: &str) -> Option<&mut Vec<String>> {
        match key {
            "users" => Some(&mut self.users),
            "clients" => Some(&mut self.clients),
            "nodes" => Some(&mut self.nodes),
            "excludeClients" => Some(&mut self.exclude_clients),
            _ => None,
        }
    }

    fn is_empty(&self) -> bool {
        self.users.is_empty()
            && self.clients.is_empty()
            && self.nodes.is_empty()
            && self.exclude_clients.is_empty()
    }
}

/// One `[action, meta]` pair of a `sync`.
#[derive(Debug, Clone)]
pub struct WireEntry {
    /// The action.
    pub action: Action,
    /// Its meta, still compressed.
    pub meta: WireMeta,
}

/// Options of `connect`.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// The credentials.
    pub token: Option<String>,
    /// The application subprotocol; absent means 0.
    pub subprotocol: u64,
}

/// A parsed protocol 5 message.
#[derive(Debug, Clone)]
pub enum Message {
    /// `["connect", protocol, nodeId, synced, options?]`
    Connect {
        /// Protocol version of the peer.
        protocol: u32,
        /// Node id of the peer (unchecked text).
        node_id: String,
        /// Last `added` the peer received from us.
        synced: u64,
        /// Token and subprotocol.
        options: ConnectOptions,
    },
    /// `["connected", protocol, nodeId, [start, end], options?]`
    Connected {
        /// Protocol version of the peer.
        protocol: u32,
        /// Node id of the peer.
        node_id: String,
        /// `[start, end]` server times; `end` is `baseTime`.
        time: [i64; 2],
        /// Options object, if any.
        options: Map<String, Value>,
    },
    /// `["headers", object]`
    Headers(Map<String, Value>),
    /// `["ping", added]`
    Ping(u64),
    /// `["pong", added]`
    Pong(u64),
    /// `["sync", added, action, meta, …]`
    Sync {
        /// Biggest `added` among the actions.
        added: u64,
        /// The actions.
        entries: Vec<WireEntry>,
    },
    /// `["synced", added]`
    Synced(u64),
    /// `["error", type, options?]`
    Error {
        /// Error type.
        kind: String,
        /// Error options.
        options: Option<Value>,
    },
    /// `["debug", "error", text]`
    Debug(String),
    /// `["duilian", text]`
    Duilian(String),
}

fn wrong(text: &str) -> ProtocolError {
    ProtocolError::WrongFormat(text.to_owned())
}

/// Reads a JSON number as an integer. JavaScript numbers reach us as integers, but a whole
/// float such as `1e3` is accepted too.
fn int(v: &Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    float_int(v.as_f64()?)
}

fn uint(v: &Value) -> Option<u64> {
    int(v).and_then(|i| u64::try_from(i).ok())
}

fn parse_raw(raw: &RawValue) -> Option<Value> {
    serde_json::from_str(raw.get()).ok()
}

/// Parses one frame. Every error carries what the peer should be told.
pub fn parse(text: &str) -> Result<Message, ProtocolError> {
    // `sync` is most frames, with hundreds of actions each: read in one pass (see
    // [`SyncFrame`]). Any other spelling of it (spaces, escapes) takes the general path.
    if text.starts_with("[\"sync\",") {
        let mut de = serde_json::Deserializer::from_str(text);
        let frame = serde::Deserializer::deserialize_seq(&mut de, SyncFrame).ok().flatten();
        return match (frame, de.end()) {
            (Some((added, entries)), Ok(())) => Ok(Message::Sync { added, entries }),
            _ => Err(wrong(text)),
        };
    }
    let parts: Vec<&RawValue> = serde_json::from_str(text).map_err(|_| wrong(text))?;
    let name: String = match parts.first() {
        Some(raw) => serde_json::from_str(raw.get()).map_err(|_| wrong(text))?,
        None => return Err(wrong(text)),
    };
    let value = |i: usize| parts.get(i).and_then(|raw| parse_raw(raw));
    let len = parts.len();
    match name.as_str() {
        "connect" => {
            if len != 4 && len != 5 {
                return Err(wrong(text));
            }
            let protocol = value(1).as_ref().and_then(uint).ok_or_else(|| wrong(text))?;
            let node_id = match value(2) {
                Some(Value::String(s)) => s,
                _ => return Err(wrong(text)),
            };
            let synced = value(3).as_ref().and_then(int).ok_or_else(|| wrong(text))?;
            let mut options = ConnectOptions::default();
            if len == 5 {
                let Some(Value::Object(map)) = value(4) else {
                    return Err(wrong(text));
                };
                options.token = match map.get("token") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(_) => return Err(wrong(text)),
                };
                options.subprotocol = match map.get("subprotocol") {
                    None | Some(Value::Null) => 0,
                    Some(v) => uint(v).ok_or_else(|| wrong(text))?,
                };
            }
            Ok(Message::Connect {
                protocol: u32::try_from(protocol).unwrap_or(u32::MAX),
                node_id,
                synced: u64::try_from(synced).unwrap_or(0),
                options,
            })
        }
        "connected" => {
            if len != 4 && len != 5 {
                return Err(wrong(text));
            }
            let protocol = value(1).as_ref().and_then(uint).ok_or_else(|| wrong(text))?;
            let Some(Value::String(node_id)) = value(2) else {
                return Err(wrong(text));
            };
            let time = match value(3) {
                Some(Value::Array(t)) if t.len() == 2 => match (int(&t[0]), int(&t[1])) {
                    (Some(a), Some(b)) => [a, b],
                    _ => return Err(wrong(text)),
                },
                _ => return Err(wrong(text)),
            };
            let options = match value(4) {
                None => Map::new(),
                Some(Value::Object(m)) => m,
                Some(_) => return Err(wrong(text)),
            };
            Ok(Message::Connected {
                protocol: u32::try_from(protocol).unwrap_or(u32::MAX),
                node_id,
                time,
                options,
            })
        }
        "ping" | "pong" | "synced" => {
            if len != 2 {
                return Err(wrong(text));
            }
            let n = value(1).as_ref().and_then(int).ok_or_else(|| wrong(text))?;
            let n = u64::try_from(n).unwrap_or(0);
            Ok(match name.as_str() {
                "ping" => Message::Ping(n),
                "pong" => Message::Pong(n),
                _ => Message::Synced(n),
            })
        }
        "headers" => match (len, value(1)) {
            (2, Some(Value::Object(m))) => Ok(Message::Headers(m)),
            _ => Err(wrong(text)),
        },
        "error" => {
            if len != 2 && len != 3 {
                return Err(wrong(text));
            }
            let Some(Value::String(kind)) = value(1) else {
                return Err(wrong(text));
            };
            Ok(Message::Error { kind, options: value(2) })
        }
        "debug" => match (len, value(1), value(2)) {
            (3, Some(Value::String(t)), Some(Value::String(s))) if t == "error" => Ok(Message::Debug(s)),
            _ => Err(wrong(text)),
        },
        "duilian" => match (len, value(1)) {
            (2, Some(Value::String(s))) => Ok(Message::Duilian(s)),
            _ => Err(wrong(text)),
        },
        "sync" => {
            if len < 4 || !len.is_multiple_of(2) {
                return Err(wrong(text));
            }
            let added = value(1).as_ref().and_then(int).ok_or_else(|| wrong(text))?;
            let mut entries = Vec::with_capacity((len - 2) / 2);
            for pair in parts[2..].chunks_exact(2) {
                let action = Action::from_json(pair[0].get()).ok_or_else(|| wrong(text))?;
                let meta = parse_meta(pair[1]).ok_or_else(|| wrong(text))?;
                entries.push(WireEntry { action, meta });
            }
            Ok(Message::Sync { added: u64::try_from(added).unwrap_or(0), entries })
        }
        _ => Err(ProtocolError::UnknownMessage(name)),
    }
}

/// Reads a whole `["sync", added, action, meta, …]` frame in one pass: each action is indexed
/// from its own text ([`Action::from_json`]) and each meta read as it comes, with no list of
/// the frame's parts and no second reading of the metas. `None` for what the general path
/// calls a wrong format: a bad `added`, no action, an action without its meta, a bad action or
/// meta.
struct SyncFrame;

impl<'de> serde::de::Visitor<'de> for SyncFrame {
    type Value = Option<(u64, Vec<WireEntry>)>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a sync message")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // The name, checked by the caller.
        seq.next_element::<serde::de::IgnoredAny>()?;
        let added = seq.next_element::<MetaValue>()?.and_then(MetaValue::int);
        let mut entries = Vec::new();
        let mut bad = added.is_none();
        while let Some(action) = seq.next_element::<&'de RawValue>()? {
            let meta = seq.next_element::<MetaField>()?;
            match (Action::from_json(action.get()), meta) {
                (Some(action), Some(MetaField(Some(meta)))) => entries.push(WireEntry { action, meta }),
                _ => bad = true,
            }
        }
        Ok(match (added, bad || entries.is_empty()) {
            (Some(added), false) => Some((u64::try_from(added).unwrap_or(0), entries)),
            _ => None,
        })
    }
}

/// A meta object read in place ([`MetaVisitor`]); anything but an object is an error.
struct MetaField(Option<WireMeta>);

impl<'de> serde::Deserialize<'de> for MetaField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MetaVisitor).map(MetaField)
    }
}

fn parse_meta(raw: &RawValue) -> Option<WireMeta> {
    // Read straight into `WireMeta`: one meta per action is on the hot path of every `sync`,
    // and a `Value` tree would cost a map node and a string per key.
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let meta = serde::Deserializer::deserialize_map(&mut de, MetaVisitor).ok()?;
    de.end().ok()?;
    meta
}

/// Reads a meta object with the rules of `int`/`uint`; `None` when a known key has a wrong value
/// or `id`/`time` is missing. A repeated key counts as its last value, as in a `Value` map.
struct MetaVisitor;

impl<'de> serde::de::Visitor<'de> for MetaVisitor {
    type Value = Option<WireMeta>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a meta object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut id = None;
        let mut time = None;
        let mut subprotocol = None;
        let mut extra_keys: Vec<String> = Vec::new();
        let mut targets = WireTargets::default();
        let mut folded = None;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match &*key {
                "id" => id = map.next_value::<IdValue>()?.0,
                "time" => time = map.next_value::<MetaValue>()?.int(),
                "subprotocol" => {
                    subprotocol =
                        Some(map.next_value::<MetaValue>()?.int().and_then(|n| u64::try_from(n).ok()))
                }
                // The last of repeated keys counts: a malformed one is an extra key.
                "folded" => folded = Some(map.next_value::<PairList>()?.0.map(Box::new)),
                _ => {
                    match targets.slot(&key) {
                        // A list of strings, else nothing (the last of repeated keys counts).
                        Some(slot) => *slot = map.next_value::<StringList>()?.0.unwrap_or_default(),
                        None => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                    if !extra_keys.iter().any(|k| *k == *key) {
                        extra_keys.push(key.into_owned());
                    }
                }
            }
        }
        let folded = match folded {
            Some(Some(pairs)) => Some(pairs),
            Some(None) => {
                extra_keys.push("folded".to_owned());
                None
            }
            None => None,
        };
        extra_keys.sort_unstable();
        let targets = (!targets.is_empty()).then(|| Box::new(targets));
        Ok(match (id, time, subprotocol) {
            (Some(id), Some(time), None) => {
                Some(WireMeta { id, time, subprotocol: None, extra_keys, targets, folded })
            }
            (Some(id), Some(time), Some(Some(n))) => {
                Some(WireMeta { id, time, subprotocol: Some(n), extra_keys, targets, folded })
            }
            _ => None,
        })
    }
}

/// A JSON list of strings; `None` for any other value.
struct StringList(Option<Vec<String>>);

impl<'de> serde::Deserialize<'de> for StringList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let Value::Array(items) = value else { return Ok(StringList(None)) };
        let strings: Option<Vec<String>> = items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect();
        Ok(StringList(strings))
    }
}

/// A JSON list of `[int, uint]` pairs (`folded`); `None` for any other value.
struct PairList(Option<Vec<(i64, u64)>>);

impl<'de> serde::Deserialize<'de> for PairList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let Value::Array(items) = value else { return Ok(PairList(None)) };
        let pairs = items
            .iter()
            .map(|v| match v.as_array().map(Vec::as_slice) {
                Some([ms, seq]) => Some((int(ms)?, uint(seq)?)),
                _ => None,
            })
            .collect();
        Ok(PairList(pairs))
    }
}

/// A meta value as the meta rules read it: integers (`int`'s rule) and strings; anything else
/// (other numbers, arrays, objects, booleans, null) is `Other`.
enum MetaValue {
    Int(i64),
    Str(String),
    Other,
}

impl MetaValue {
    fn int(self) -> Option<i64> {
        match self {
            MetaValue::Int(n) => Some(n),
            _ => None,
        }
    }
}

/// A compressed id: a number, `[shift, seq]` or `[shift, node, seq]` (with `int`'s rule for
/// the numbers, non-negative `seq`); `None` for anything else. Read from the text without
/// building a list.
struct IdValue(Option<WireId>);

impl<'de> serde::Deserialize<'de> for IdValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = IdValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an action id")
            }
            fn visit_i64<E>(self, v: i64) -> Result<IdValue, E> {
                Ok(IdValue(Some(WireId::Own(v))))
            }
            fn visit_u64<E>(self, v: u64) -> Result<IdValue, E> {
                Ok(IdValue(i64::try_from(v).ok().map(WireId::Own)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<IdValue, E> {
                Ok(IdValue(float_int(v).map(WireId::Own)))
            }
            fn visit_str<E>(self, _: &str) -> Result<IdValue, E> {
                Ok(IdValue(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<IdValue, E> {
                Ok(IdValue(None))
            }
            fn visit_unit<E>(self) -> Result<IdValue, E> {
                Ok(IdValue(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<IdValue, A::Error> {
                let first = seq.next_element::<MetaValue>()?;
                let second = match first {
                    Some(_) => seq.next_element::<MetaValue>()?,
                    None => None,
                };
                let third = match second {
                    Some(_) => seq.next_element::<MetaValue>()?,
                    None => None,
                };
                let mut more = false;
                if third.is_some() {
                    while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                        more = true;
                    }
                }
                let uint = |n: i64| u64::try_from(n).ok();
                Ok(IdValue(match (first, second, third, more) {
                    (Some(MetaValue::Int(shift)), Some(MetaValue::Int(seq)), None, false) => {
                        uint(seq).map(|seq| WireId::OwnSeq(shift, seq))
                    }
                    (
                        Some(MetaValue::Int(shift)),
                        Some(MetaValue::Str(node)),
                        Some(MetaValue::Int(seq)),
                        false,
                    ) => uint(seq).map(|seq| WireId::Full(shift, node, seq)),
                    _ => None,
                }))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<IdValue, A::Error> {
                while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
                Ok(IdValue(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// A float that holds an integer JavaScript represents exactly, as that integer.
fn float_int(f: f64) -> Option<i64> {
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15).then_some(f as i64)
}

impl<'de> serde::Deserialize<'de> for MetaValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MetaValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a meta value")
            }
            fn visit_i64<E>(self, v: i64) -> Result<MetaValue, E> {
                Ok(MetaValue::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<MetaValue, E> {
                Ok(i64::try_from(v).map_or(MetaValue::Other, MetaValue::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<MetaValue, E> {
                Ok(float_int(v).map_or(MetaValue::Other, MetaValue::Int))
            }
            fn visit_str<E>(self, v: &str) -> Result<MetaValue, E> {
                Ok(MetaValue::Str(v.to_owned()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<MetaValue, E> {
                Ok(MetaValue::Other)
            }
            fn visit_unit<E>(self) -> Result<MetaValue, E> {
                Ok(MetaValue::Other)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<MetaValue, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(MetaValue::Other)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<MetaValue, A::Error> {
                while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
                Ok(MetaValue::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// Per-connection id/time compression state: `baseTime` and the two node ids.
#[derive(Debug, Clone)]
pub struct Codec {
    /// The `baseTime` of this connection (the `end` time of `connected`).
    pub base_time: i64,
    /// Our node id: ids of our own actions are sent compressed.
    pub local: NodeId,
    /// The peer's node id: compressed ids we receive are the peer's.
    pub remote: NodeId,
}

impl Codec {
    /// Decompresses an incoming id. Fails when a `Full` id carries an invalid node id.
    pub fn decode_id(&self, id: &WireId) -> Option<ActionId> {
        Some(match id {
            WireId::Own(shift) => ActionId { ms: shift + self.base_time, node: self.remote.clone(), seq: 0 },
            WireId::OwnSeq(shift, seq) => {
                ActionId { ms: shift + self.base_time, node: self.remote.clone(), seq: *seq }
            }
            WireId::Full(shift, node, seq) => {
                // Most ids are the peer's own: share its node id instead of allocating a copy.
                let node =
                    if *node == self.remote.as_str() { self.remote.clone() } else { NodeId::parse(node)? };
                ActionId { ms: shift + self.base_time, node, seq: *seq }
            }
        })
    }

    /// Converts an incoming `time` to our clock.
    pub fn decode_time(&self, time: i64) -> i64 {
        time + self.base_time
    }

    /// Appends the compressed meta object of one outgoing action to `out`.
    pub fn encode_meta(&self, out: &mut String, id: &ActionId, time: i64, subprotocol: Option<u64>) {
        let shift = id.ms - self.base_time;
        out.push_str("{\"id\":");
        if id.node == self.local && id.seq == 0 {
            push_int(out, shift);
        } else {
            out.push('[');
            push_int(out, shift);
            out.push(',');
            if id.node != self.local {
                push_json_str(out, id.node.as_str());
                out.push(',');
            }
            push_uint(out, id.seq);
            out.push(']');
        }
        out.push_str(",\"time\":");
        push_int(out, time - self.base_time);
        if let Some(sub) = subprotocol {
            out.push_str(",\"subprotocol\":");
            push_uint(out, sub);
        }
        out.push('}');
    }

    /// As [`Codec::encode_meta`], with `extra` (`"key":value` pairs, comma-separated, or empty)
    /// added to the meta object.
    pub fn encode_meta_with(
        &self,
        out: &mut String,
        id: &ActionId,
        time: i64,
        subprotocol: Option<u64>,
        extra: &str,
    ) {
        self.encode_meta(out, id, time, subprotocol);
        if !extra.is_empty() {
            out.pop();
            out.push(',');
            out.push_str(extra);
            out.push('}');
        }
    }
}

/// Appends `s` as a JSON string literal.
pub fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&Value::String(s.to_owned()).to_string());
    }
}

/// Builds one outgoing `sync` frame from already-encoded pairs.
///
/// The pairs are written after room for the header (`["sync",` and `added`, which is known only
/// when the frame is finished), so finishing writes the header into the same buffer instead of
/// copying the pairs into a new one.
#[derive(Debug)]
pub struct SyncBuilder {
    out: String,
    count: usize,
}

/// `["sync",` and the 20 digits of the largest `u64`.
const SYNC_HEADER_ROOM: usize = 8 + 20;

impl Default for SyncBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl SyncBuilder {
    /// An empty `sync`.
    pub fn new() -> Self {
        Self::with_capacity(128)
    }

    /// An empty `sync` with room for `bytes` of pairs.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut out = String::with_capacity(SYNC_HEADER_ROOM + bytes + 1);
        out.extend(std::iter::repeat_n(' ', SYNC_HEADER_ROOM));
        SyncBuilder { out, count: 0 }
    }

    /// Adds one action with meta encoded for `codec`'s peer.
    pub fn push(
        &mut self,
        codec: &Codec,
        action_json: &str,
        id: &ActionId,
        time: i64,
        subprotocol: Option<u64>,
    ) {
        self.push_with(codec, id, time, subprotocol, |out| out.push_str(action_json));
    }

    /// Adds one action whose meta carries `extra` besides its id, time and subprotocol (see
    /// [`Codec::encode_meta_with`]).
    pub fn push_with_meta(
        &mut self,
        codec: &Codec,
        action_json: &str,
        id: &ActionId,
        time: i64,
        subprotocol: Option<u64>,
        extra: &str,
    ) {
        self.out.push(',');
        self.out.push_str(action_json);
        self.out.push(',');
        codec.encode_meta_with(&mut self.out, id, time, subprotocol, extra);
        self.count += 1;
    }

    /// Adds one action that `write` encodes straight into the frame, with meta encoded for
    /// `codec`'s peer.
    pub fn push_with(
        &mut self,
        codec: &Codec,
        id: &ActionId,
        time: i64,
        subprotocol: Option<u64>,
        write: impl FnOnce(&mut String),
    ) {
        self.out.push(',');
        write(&mut self.out);
        self.out.push(',');
        codec.encode_meta(&mut self.out, id, time, subprotocol);
        self.count += 1;
    }

    /// Number of actions added.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no action was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded bytes of the pairs so far.
    pub fn bytes(&self) -> usize {
        self.out.len() - SYNC_HEADER_ROOM
    }

    /// The finished frame, `["sync", added, …]`.
    pub fn finish(self, added: u64) -> String {
        let mut header = String::with_capacity(SYNC_HEADER_ROOM);
        header.push_str("[\"sync\",");
        push_uint(&mut header, added);
        let mut frame = self.out;
        frame.replace_range(..SYNC_HEADER_ROOM, &header);
        frame.push(']');
        frame
    }
}

/// `["error", kind, options?]`
pub fn encode_error(kind: &str, options: Option<&Value>) -> String {
    let mut arr = vec![Value::from("error"), Value::from(kind)];
    if let Some(o) = options {
        arr.push(o.clone());
    }
    Value::Array(arr).to_string()
}

/// The clock offset of protocol 5 (`connect/index.js` of `@logux/core`): client clock minus
/// server clock, from the time `connect` was sent (`sent_ms`), the time `connected` arrived
/// (`now_ms`), both client clock, and the server's `[start, end]`.
pub fn time_fix(sent_ms: i64, now_ms: i64, start: i64, end: i64) -> i64 {
    let auth_time = end - start;
    let round_trip = now_ms - sent_ms - auth_time;
    // `Math.floor(sent - start + roundTrip / 2)` with a float division.
    sent_ms - start + round_trip.div_euclid(2)
}

/// `["connect", 5, nodeId, synced, options?]`
pub fn encode_connect(node_id: &str, synced: u64, token: Option<&str>, subprotocol: u64) -> String {
    let mut out = String::from("[\"connect\",5,");
    push_json_str(&mut out, node_id);
    let _ = write!(out, ",{synced}");
    if token.is_some() || subprotocol != 0 {
        out.push_str(",{");
        if let Some(t) = token {
            out.push_str("\"token\":");
            push_json_str(&mut out, t);
            if subprotocol != 0 {
                out.push(',');
            }
        }
        if subprotocol != 0 {
            let _ = write!(out, "\"subprotocol\":{subprotocol}");
        }
        out.push('}');
    }
    out.push(']');
    out
}

/// `["connected", 5, nodeId, [start, end], {subprotocol}]`, with `"relays": true` when
/// `relays`: told to a peer by a server that relays what it takes to an upstream of its own,
/// so that its `logux/processed` is not taken for the top of the chain's commit.
pub fn encode_connected(node_id: &str, start: i64, end: i64, subprotocol: u64, relays: bool) -> String {
    let mut out = String::from("[\"connected\",5,");
    push_json_str(&mut out, node_id);
    let _ = write!(out, ",[{start},{end}],{{\"subprotocol\":{subprotocol}");
    if relays {
        out.push_str(",\"relays\":true");
    }
    out.push_str("}]");
    out
}

/// `["headers", data]`
pub fn encode_headers(data: &Map<String, Value>) -> String {
    Value::Array(vec![Value::from("headers"), Value::Object(data.clone())]).to_string()
}

/// `["ping", added]`
pub fn encode_ping(added: u64) -> String {
    format!("[\"ping\",{added}]")
}

/// `["pong", added]`
pub fn encode_pong(added: u64) -> String {
    format!("[\"pong\",{added}]")
}

/// `["synced", added]`
pub fn encode_synced(added: u64) -> String {
    format!("[\"synced\",{added}]")
}

/// `["debug", "error", text]`
pub fn encode_debug(text: &str) -> String {
    Value::Array(vec![Value::from("debug"), Value::from("error"), Value::from(text)]).to_string()
}

/// `["duilian", text]`
pub fn encode_duilian(text: &str) -> String {
    Value::Array(vec![Value::from("duilian"), Value::from(text)]).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_fix_follows_the_reference_formula() {
        // The client's clock is 1000 ms ahead; 40 ms each way; the server spent 20 ms on auth.
        // connect sent at client 11_000 = server 10_000; arrives at server 10_040 (start),
        // auth until 10_060 (end), `connected` arrives at server 10_100 = client 11_100.
        assert_eq!(time_fix(11_000, 11_100, 10_040, 10_060), 1000);
        // The same clocks, no latency.
        assert_eq!(time_fix(5_000, 5_000, 5_000, 5_000), 0);
        // An odd round trip floors like `Math.floor`: roundTrip 3 → 1.5 → floor(−998.5) = −999.
        assert_eq!(time_fix(0, 3, 1_000, 1_000), -999);
    }

    use proptest::prelude::*;
    use serde_json::json;

    /// What `parse_meta` reads, by way of a `Value` tree: the rules it must keep.
    fn meta_by_value(text: &str) -> Option<WireMeta> {
        let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
            return None;
        };
        let time = int(map.get("time")?)?;
        let id = match map.get("id")? {
            Value::Array(a) if a.len() == 2 => WireId::OwnSeq(int(&a[0])?, uint(&a[1])?),
            Value::Array(a) if a.len() == 3 => {
                WireId::Full(int(&a[0])?, a[1].as_str()?.to_owned(), uint(&a[2])?)
            }
            v => WireId::Own(int(v)?),
        };
        let subprotocol = match map.get("subprotocol") {
            None => None,
            Some(v) => Some(uint(v)?),
        };
        let pairs = |v: &Value| -> Option<Vec<(i64, u64)>> {
            v.as_array()?
                .iter()
                .map(|p| match p.as_array().map(Vec::as_slice) {
                    Some([ms, seq]) => Some((int(ms)?, uint(seq)?)),
                    _ => None,
                })
                .collect()
        };
        let folded = map.get("folded").and_then(pairs).map(Box::new);
        let extra_keys = map
            .keys()
            .filter(|k| !matches!(k.as_str(), "id" | "time" | "subprotocol"))
            .filter(|k| *k != "folded" || folded.is_none())
            .cloned()
            .collect();
        let list = |key: &str| -> Vec<String> {
            let strings = map.get(key).and_then(Value::as_array).and_then(|items| {
                items.iter().map(|v| v.as_str().map(str::to_owned)).collect::<Option<Vec<String>>>()
            });
            strings.unwrap_or_default()
        };
        let targets = WireTargets {
            users: list("users"),
            clients: list("clients"),
            nodes: list("nodes"),
            exclude_clients: list("excludeClients"),
        };
        let targets = (targets != WireTargets::default()).then(|| Box::new(targets));
        Some(WireMeta { id, time, subprotocol, extra_keys, targets, folded })
    }

    fn json_scalar() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            (-5i64..5).prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            Just("1.0".to_owned()),
            Just("-2.0".to_owned()),
            Just("1.5".to_owned()),
            Just("1e300".to_owned()),
            Just("9007199254740993.0".to_owned()),
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("\"10:a\"".to_owned()),
            Just("\"bob\"".to_owned()),
            Just("{\"a\":[1]}".to_owned()),
        ]
    }

    fn json_value() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => json_scalar(),
            2 => prop::collection::vec(json_scalar(), 0..5).prop_map(|v| format!("[{}]", v.join(","))),
            1 => prop::collection::vec((json_scalar(), json_scalar()), 0..3)
                .prop_map(|v| format!("[{}]", v.iter().map(|(a, b)| format!("[{a},{b}]")).collect::<Vec<_>>().join(","))),
        ]
    }

    #[test]
    fn action_fields_read_like_a_parsed_map() {
        let action = Action::from_json(r#"{"type":"a","id":"x","n":5,"id":"y","s":"q\"uote"}"#).unwrap();
        assert_eq!(action.kind(), "a");
        assert_eq!(action.str_field("id"), Some("y"), "the last of repeated keys");
        assert_eq!(action.field("n"), Some(json!(5)));
        assert!(action.fields.get().is_none(), "plain fields are read without building the map");
        assert_eq!(action.str_field("n"), None);
        assert_eq!(action.str_field("s"), Some("q\"uote"));
        assert_eq!(action.fields().len(), 4);
        assert!(Action::from_json(r#"{"type":5}"#).is_none());
        assert!(Action::from_json(r#"{"type":"a"} x"#).is_none());
        assert!(Action::from_json(r#"["type"]"#).is_none());
    }

    fn action_field() -> impl Strategy<Value = (String, String)> {
        (
            prop::sample::select(vec!["type", "id", "channel", "channels", "key", "k\\u0065y", "t\\\"q"]),
            prop_oneof![
                3 => json_value(),
                2 => prop::sample::select(vec![
                    "\"inc\"", "\"counter/5\"", "\"\"", "\"a\\\"b\"", "\"caf\\u00e9\"", "[\"a\",\"b\"]", "{\"type\":\"x\"}",
                ])
                .prop_map(str::to_owned),
            ],
        )
            .prop_map(|(k, v)| (k.to_owned(), v))
    }

    proptest! {
        #[test]
        fn action_reads_as_through_a_value(
            kind in prop::sample::select(vec!["\"inc\"", "\"crdt/counter/inc\"", "\"a\\nb\"", "5", "null"]),
            pairs in prop::collection::vec(action_field(), 0..6),
            at in 0usize..6,
        ) {
            let mut pairs = pairs;
            let at = at.min(pairs.len());
            pairs.insert(at, ("type".to_owned(), kind.to_owned()));
            let body: Vec<String> = pairs.iter().map(|(k, v)| format!("\"{k}\" : {v}")).collect();
            let text = format!("{{ {} }}", body.join(" , "));
            let by_value = match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(map)) => Some(map),
                _ => None,
            };
            let by_value = by_value.filter(|m| m.get("type").is_some_and(Value::is_string));
            let action = Action::from_json(&text);
            prop_assert_eq!(action.is_some(), by_value.is_some(), "{}", text);
            if let (Some(action), Some(map)) = (action, by_value) {
                prop_assert_eq!(Some(action.kind()), map.get("type").and_then(Value::as_str));
                for name in ["type", "id", "channel", "channels", "key", "t\"q", "missing"] {
                    prop_assert_eq!(action.str_field(name), map.get(name).and_then(Value::as_str), "{} in {}", name, text);
                    prop_assert_eq!(action.field(name), map.get(name).cloned(), "{} in {}", name, text);
                }
                prop_assert_eq!(action.fields(), &map);
                prop_assert_eq!(&**action.json(), text.as_str());
            }
        }
    }

    proptest! {
        #[test]
        fn meta_reads_as_through_a_value(
            id in prop_oneof![
                (-5i64..5).prop_map(|n| n.to_string()),
                ((-5i64..5), (0u64..3)).prop_map(|(a, b)| format!("[{a},{b}]")),
                ((-5i64..5), (0u64..3)).prop_map(|(a, b)| format!("[{a},\"10:a\",{b}]")),
            ],
            time in -5i64..5,
            pairs in prop::collection::vec(
                (prop::sample::select(vec!["id", "time", "subprotocol", "reasons", "x", "users", "excludeClients", "folded"]), json_value()),
                0..4,
            ),
            at in 0usize..5,
        ) {
            // A well-formed meta, with arbitrary pairs before, between or after its keys.
            let mut pairs: Vec<(&str, String)> = pairs;
            let at = at.min(pairs.len());
            pairs.insert(at, ("time", time.to_string()));
            pairs.insert(at / 2, ("id", id));
            let body: Vec<String> = pairs.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let text = format!("{{{}}}", body.join(","));
            let raw: Box<RawValue> = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(parse_meta(&raw), meta_by_value(&text), "{}", text);
        }
    }

    fn codec() -> Codec {
        Codec {
            base_time: 1_795_692_083_921,
            local: NodeId::from("server:abc"),
            remote: NodeId::from("10:QNzaL4cH:d8Kgi9Ai"),
        }
    }

    #[test]
    fn folded_ids_go_through_meta_and_back() {
        let c = codec();
        let id = ActionId { ms: 1_795_692_090_000, node: NodeId::from("10:a:b"), seq: 7 };
        let members = [
            ActionId { ms: 1_795_692_089_000, node: NodeId::from("10:a:b"), seq: 0 },
            ActionId { ms: 1_795_692_090_000, node: NodeId::from("10:a:b"), seq: 6 },
            // A clock gone back: a member may be later than the fold's id.
            ActionId { ms: 1_795_692_090_500, node: NodeId::from("10:a:b"), seq: 2 },
        ];
        let other = ActionId { ms: 1_795_692_089_000, node: NodeId::from("10:a:c"), seq: 0 };
        let extra = folded_meta(&id, members.iter().chain([&other, &id]));
        assert_eq!(
            extra, r#""folded":[[1000,0],[0,6],[-500,2]]"#,
            "another node's id and the fold's own are left out"
        );
        let mut meta = String::new();
        c.encode_meta_with(&mut meta, &id, id.ms, None, &extra);
        let raw: Box<RawValue> = serde_json::from_str(&meta).unwrap();
        let parsed = parse_meta(&raw).expect("meta");
        assert!(parsed.extra_keys.is_empty(), "folded is not an extra key");
        let decoded = c.decode_id(&parsed.id).expect("id");
        assert_eq!(decoded, id);
        assert_eq!(parsed.folded_ids(&decoded), members.to_vec());
        assert_eq!(folded_meta(&id, []), "", "nothing when nothing was folded");
        for bad in [
            r#"{"id":1,"time":0,"folded":[[1]]}"#,
            r#"{"id":1,"time":0,"folded":[[1,-2]]}"#,
            r#"{"id":1,"time":0,"folded":5}"#,
        ] {
            let raw: Box<RawValue> = serde_json::from_str(bad).unwrap();
            let parsed = parse_meta(&raw).expect("meta");
            assert_eq!(parsed.extra_keys, vec!["folded".to_owned()], "{bad}");
            assert!(parsed.folded.is_none());
        }
    }

    #[test]
    fn parses_connect_like_the_real_client() {
        let m =
            parse(r#"["connect",5,"10:QNzaL4cH:d8Kgi9Ai",0,{"token":"any-token","subprotocol":1}]"#).unwrap();
        match m {
            Message::Connect { protocol, node_id, synced, options } => {
                assert_eq!(protocol, 5);
                assert_eq!(node_id, "10:QNzaL4cH:d8Kgi9Ai");
                assert_eq!(synced, 0);
                assert_eq!(options.token.as_deref(), Some("any-token"));
                assert_eq!(options.subprotocol, 1);
            }
            other => panic!("{other:?}"),
        }
        match parse(r#"["connect",5,"u:c:t",3]"#).unwrap() {
            Message::Connect { options, synced, .. } => {
                assert_eq!(options.subprotocol, 0);
                assert_eq!(synced, 3);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_wrong_shapes_with_the_reference_answers() {
        let cases = [
            "hello",
            "{}",
            "[]",
            "[1]",
            r#"["connect","5","u:c:t",0]"#,
            r#"["connect",5,"u:c:t"]"#,
            r#"["connect",5,"u:c:t",0,[]]"#,
            r#"["ping"]"#,
            r#"["ping","1"]"#,
            r#"["sync",1,{"type":"a"}]"#,
            r#"["sync",1,{"no":"type"},{"id":1,"time":1}]"#,
            r#"["sync",1,{"type":"a"},{"id":1}]"#,
            r#"["sync",1,{"type":"a"},{"id":"1","time":1}]"#,
            r#"["sync",1,{"type":1},{"id":1,"time":1}]"#,
            r#"["headers",[]]"#,
            r#"["debug","warn","x"]"#,
        ];
        for text in cases {
            assert_eq!(parse(text).unwrap_err(), ProtocolError::WrongFormat(text.to_owned()), "{text}");
        }
        assert_eq!(parse(r#"["foo",1]"#).unwrap_err(), ProtocolError::UnknownMessage("foo".into()));
        assert_eq!(
            ProtocolError::WrongFormat("hello".into()).to_frame(),
            r#"["error","wrong-format","hello"]"#
        );
        assert_eq!(
            ProtocolError::UnknownMessage("foo".into()).to_frame(),
            r#"["error","unknown-message","foo"]"#
        );
    }

    #[test]
    fn decodes_all_three_id_forms_and_negative_shifts() {
        let c = codec();
        let m = parse(
            r#"["sync",3,{"type":"a"},{"id":-94,"time":-94},{"type":"b"},{"id":[5,2],"time":5,"subprotocol":2},{"type":"c"},{"id":[26,"x:y:z",0],"time":26,"reasons":[]}]"#,
        )
        .unwrap();
        let Message::Sync { added, entries } = m else { panic!() };
        assert_eq!(added, 3);
        let ids: Vec<String> = entries.iter().map(|e| c.decode_id(&e.meta.id).unwrap().to_string()).collect();
        assert_eq!(
            ids,
            [
                "1795692083827 10:QNzaL4cH:d8Kgi9Ai 0",
                "1795692083926 10:QNzaL4cH:d8Kgi9Ai 2",
                "1795692083947 x:y:z 0"
            ]
        );
        assert_eq!(c.decode_time(entries[0].meta.time), 1_795_692_083_827);
        assert_eq!(entries[1].meta.subprotocol, Some(2));
        assert_eq!(entries[2].meta.extra_keys, ["reasons"]);
        assert_eq!(entries[0].action.kind(), "a");
    }

    #[test]
    fn encodes_meta_like_the_reference() {
        let c = codec();
        let mut b = SyncBuilder::new();
        let other = ActionId::parse("1795692083947 10:QNzaL4cH:d8Kgi9Ai 0").unwrap();
        b.push(&c, r#"{"type":"inc","id":"1"}"#, &other, 1795692083948, Some(1));
        let own = ActionId { ms: 1795692083935, node: NodeId::from("server:abc"), seq: 0 };
        b.push(&c, r#"{"type":"x"}"#, &own, 1795692083935, None);
        let own1 = ActionId { ms: 1795692083936, node: NodeId::from("server:abc"), seq: 1 };
        b.push(&c, r#"{"type":"y"}"#, &own1, 1795692083936, Some(1));
        assert_eq!(
            b.finish(7),
            r#"["sync",7,{"type":"inc","id":"1"},{"id":[26,"10:QNzaL4cH:d8Kgi9Ai",0],"time":27,"subprotocol":1},{"type":"x"},{"id":14,"time":14},{"type":"y"},{"id":[15,1],"time":15,"subprotocol":1}]"#
        );
    }

    #[test]
    fn sync_frames_carry_any_added_and_count_only_their_pairs() {
        assert_eq!(SyncBuilder::new().finish(0), r#"["sync",0]"#);
        assert_eq!(SyncBuilder::with_capacity(0).finish(u64::MAX), format!(r#"["sync",{}]"#, u64::MAX));
        let mut b = SyncBuilder::with_capacity(0);
        assert_eq!(b.bytes(), 0);
        let own = ActionId { ms: 1795692083935, node: NodeId::from("server:abc"), seq: 0 };
        b.push(&codec(), r#"{"type":"x"}"#, &own, 1795692083935, None);
        assert_eq!(b.bytes(), r#",{"type":"x"},{"id":14,"time":14}"#.len());
        assert_eq!(b.finish(12345), r#"["sync",12345,{"type":"x"},{"id":14,"time":14}]"#);
    }

    #[test]
    fn encodes_handshake_frames() {
        assert_eq!(
            encode_connected("server:V0jMeesT", 1, 2, 1, false),
            r#"["connected",5,"server:V0jMeesT",[1,2],{"subprotocol":1}]"#
        );
        assert_eq!(
            encode_connected("server:V0jMeesT", 1, 2, 1, true),
            r#"["connected",5,"server:V0jMeesT",[1,2],{"subprotocol":1,"relays":true}]"#
        );
        assert_eq!(
            encode_connect("u:c:t", 0, Some("tok"), 1),
            r#"["connect",5,"u:c:t",0,{"token":"tok","subprotocol":1}]"#
        );
        assert_eq!(encode_connect("u:c:t", 0, None, 0), r#"["connect",5,"u:c:t",0]"#);
        assert_eq!(
            encode_error("wrong-protocol", Some(&serde_json::json!({"supported":5,"used":4}))),
            r#"["error","wrong-protocol",{"supported":5,"used":4}]"#
        );
    }
}
