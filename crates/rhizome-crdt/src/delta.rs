//! The `crdt/delta` action: how the server ships a delta (or a whole state) of one object.

use crate::ops::{Key, OpError};
use crate::{Kind, Object};
use serde_json::{Map, Value};

/// The action type of a shipped delta.
pub const DELTA_TYPE: &str = "crdt/delta";

/// `{"type": "crdt/delta", "key": …, "kind": …, "delta": …}`: a delta of `object`'s kind (or
/// its whole state) that a client joins into its copy of the object at `key`.
pub fn delta_action(key: &str, delta: &Object) -> String {
    action(key, delta.kind(), delta.to_json())
}

/// `{"type": "crdt/delta", …, "replace": true}`: the whole state of the object at `key`, which
/// a client puts in place of its copy. A server sends it for every whole state (a join of it
/// into a copy that came from that server is the same), and after it corrected the object (an
/// edge whose upstream refused one of its operations): then a join would keep the refused
/// operation.
pub fn state_action(key: &str, state: &Object) -> String {
    replacing(key, state.kind(), state.to_json())
}

/// The `crdt/delta` action of the document `doc` of an object of `kind`.
pub(crate) fn action(key: &str, kind: Kind, doc: Value) -> String {
    fields(key, kind, doc).to_string()
}

/// The `crdt/delta` action of the whole state `doc` of an object of `kind`, `replace: true`.
pub(crate) fn replacing(key: &str, kind: Kind, doc: Value) -> String {
    let mut action = fields(key, kind, doc);
    action["replace"] = Value::Bool(true);
    action.to_string()
}

fn fields(key: &str, kind: Kind, doc: Value) -> Value {
    let mut action = Map::new();
    action.insert("type".to_owned(), DELTA_TYPE.into());
    action.insert("key".to_owned(), key.into());
    action.insert("kind".to_owned(), kind.name().into());
    action.insert("delta".to_owned(), doc);
    Value::Object(action)
}

/// Whether a `crdt/delta` action's fields say it is the whole state, to put in place of a copy
/// (see [`state_action`]).
pub fn replaces(fields: &Map<String, Value>) -> bool {
    fields.get("replace") == Some(&Value::Bool(true))
}

/// The key and the delta of a `crdt/delta` action's fields (`{"key", "kind", "delta"}`), the
/// delta's document checked completely ([`Object::from_json`]).
pub fn parse_delta(fields: &Map<String, Value>) -> Result<(Key, Object), OpError> {
    let key =
        fields.get("key").and_then(Value::as_str).ok_or(OpError::WrongShape("`key` must be a string"))?;
    let key = Key::parse(key)?;
    let kind = fields
        .get("kind")
        .and_then(Value::as_str)
        .and_then(Kind::from_name)
        .ok_or(OpError::WrongShape("`kind` must be a kind's name"))?;
    let doc = fields.get("delta").ok_or(OpError::WrongShape("`delta` is missing"))?;
    Ok((key, Object::from_json(kind, doc)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Lattice, PnCounter};

    #[test]
    fn a_delta_action_carries_key_kind_and_document() {
        let delta = PnCounter::bottom().inc(&"a:1:1".into(), 3);
        let text = delta_action("posts/7/likes", &Object::Counter(delta));
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["type"], "crdt/delta");
        assert_eq!(v["key"], "posts/7/likes");
        assert_eq!(v["kind"], Kind::Counter.name());
        assert_eq!(v["delta"]["a:1:1"], serde_json::json!([3, 0]));
    }

    #[test]
    fn a_delta_action_parses_back_and_bad_ones_are_refused() {
        let delta = Object::Counter(PnCounter::bottom().inc(&"a:1:1".into(), 3));
        let text = delta_action("posts/7/likes", &delta);
        let Value::Object(fields) = serde_json::from_str(&text).expect("json") else { panic!("an object") };
        let (key, parsed) = parse_delta(&fields).expect("parses");
        assert_eq!(key.as_str(), "posts/7/likes");
        assert_eq!(parsed, delta);
        for (field, bad) in [("key", Value::from("")), ("kind", "sets".into()), ("delta", Value::from("x"))] {
            let mut fields = fields.clone();
            fields.insert(field.to_owned(), bad);
            assert!(parse_delta(&fields).is_err(), "a bad {field} is refused");
        }
        let mut fields = fields.clone();
        fields.remove("delta");
        assert!(parse_delta(&fields).is_err(), "a missing delta is refused");
    }
}
