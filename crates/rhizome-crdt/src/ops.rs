//! The JSON action vocabulary of CRDT objects: `crdt/…` actions parsed into [`Op`]s
//! ([`parse`]), applied by the server, which assigns their dots ([`apply`], or
//! [`apply_in_place`] on the state itself), and folded in a client's offline queue
//! ([`fold_queue`]).
//!
//! | action | fields |
//! |---|---|
//! | `crdt/counter/inc`, `crdt/counter/dec` | `key`, `by` (an integer from 1 to 2^53, default 1) |
//! | `crdt/lww/set` | `key`, `value` (any JSON up to [`VALUE_BYTES_MAX`] bytes) |
//! | `crdt/mv/set` | `key`, `value`, optional `seen` (a version vector `{"<node>": n}`) |
//! | `crdt/set/add` | `key`, `elem` (a JSON scalar up to [`ELEM_BYTES_MAX`] bytes) |
//! | `crdt/set/remove` | `key`, `elem`, optional `seen` (a version vector `{"<node>": n}`) |
//! | `crdt/clset/add`, `crdt/clset/remove` | `key`, `elem` |
//! | `crdt/list/insert` | `key`, `index` (a non-negative integer), `value` (JSON up to [`LIST_VALUE_BYTES_MAX`] bytes) |
//! | `crdt/list/delete` | `key`, `index` |
//! | `crdt/map/set` | `key`, `path` (1 to [`MAP_DEPTH_MAX`] keys), `value` (a JSON scalar up to [`ELEM_BYTES_MAX`] bytes), optional `seen` |
//! | `crdt/map/remove` | `key`, `path` |
//! | `crdt/map/add`, `crdt/map/delete` | `key`, `path`, `elem` (a JSON scalar up to [`ELEM_BYTES_MAX`] bytes) |
//! | `crdt/map/inc`, `crdt/map/dec` | `key`, `path`, `by` (an integer from 1 to 2^53, default 1) |
//! | `crdt/map/insert` | `key`, `path`, `index` (integer ≥ 0) or `after` (an element id `[node, n]` or `null`), `value` (any JSON up to [`LIST_VALUE_BYTES_MAX`] bytes) |
//! | `crdt/map/cut` | `key`, `path`, `index` (integer ≥ 0) or `id` (an element id `[node, n]`) |
//! | `crdt/map/put` | `key`, `path`, `value` (any JSON up to [`VALUE_BYTES_MAX`] bytes): a last-writer-wins register |
//! | `crdt/map/cladd`, `crdt/map/cldelete` | `key`, `path`, `elem` (a JSON scalar up to [`ELEM_BYTES_MAX`] bytes): a causal-length set |
//!
//! Every action has a `key` of 1 to [`KEY_BYTES_MAX`] bytes; the object lives in the channel
//! `crdt/<key>`. Any other field is refused, so a misspelt `by` is not read as 1.

use crate::object::{
    check_json_size, check_map_key, check_value_size, dot_from_json, dot_to_json, elem_from_json,
    map_scalar_from_json, vv_from_json, vv_to_json, Kind, Object, CLOUD_DOTS_MAX, COUNTER_MAX, MAP_DOTS_MAX,
    MAP_KEYS_MAX, MV_VALUES_MAX, NODES_MAX, SET_ELEMS_MAX,
};
use crate::{
    CausalContext, Dot, Lattice, LwwRegister, MapError, NodeId, OrMap, Orswot, PnCounter, PnEntry, Rga,
    Scalar, Stamp, Value as MapValue, ValueDelta, ValueRef, VersionVector,
};
use rhizome_protocol::Channel;
use serde_json::{Map, Value};
use std::fmt;
use std::sync::Arc;

pub use crate::object::{
    ELEM_BYTES_MAX, LIST_ELEMS_MAX, LIST_VALUE_BYTES_MAX, MAP_DEPTH_MAX, MAP_KEY_BYTES_MAX,
    MAP_LWW_BYTES_MAX, VALUE_BYTES_MAX,
};

/// Longest object key, in bytes.
pub const KEY_BYTES_MAX: usize = 512;

/// Largest `by` of one counter operation: 2^53, the largest integer a JavaScript client sends
/// exactly.
pub const BY_MAX: u64 = 1 << 53;

/// How much of an unknown action type an error quotes, in bytes.
const QUOTED_TYPE_BYTES_MAX: usize = 64;

/// Why an action or a document was refused. [`OpError::reason`] is the stable reason for
/// `logux/undo`; the `Display` text is for people (logs), and quotes no more of the input
/// than a truncated action type.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The action type is not one of the vocabulary's (truncated to 64 bytes).
    #[error("unknown CRDT action type {0:?}")]
    UnknownType(String),
    /// A field is missing, unknown or of the wrong type or range, or a document is malformed.
    #[error("wrong shape: {0}")]
    WrongShape(&'static str),
    /// A list operation names an element the list does not hold.
    #[error("no element [{:?}, {}] in this list", .0.node.as_str(), .0.counter)]
    UnknownElement(Dot),
    /// Something is over its size limit.
    #[error("too big: more than {max} {what}")]
    TooBig {
        /// What was counted.
        what: &'static str,
        /// The limit.
        max: u64,
    },
    /// An operation or delta of one kind on an object of another.
    #[error("a {found} operation on a {expected} object")]
    TypeMismatch {
        /// The object's kind.
        expected: Kind,
        /// The operation's or delta's kind.
        found: Kind,
    },
    /// A map operation for one kind of value at a path that holds another (say a set
    /// operation where a register is, or a nested path through a register).
    #[error("expected a {expected} at this map path, found a {found}")]
    PathMismatch {
        /// The kind of value the operation works on.
        expected: crate::ValueKind,
        /// A kind the path holds.
        found: crate::ValueKind,
    },
}

impl From<MapError> for OpError {
    fn from(error: MapError) -> Self {
        match error {
            MapError::TypeMismatch { expected, found } => OpError::PathMismatch { expected, found },
        }
    }
}

impl OpError {
    /// The stable camelCase reason for `logux/undo`.
    pub fn reason(&self) -> &'static str {
        match self {
            OpError::UnknownType(_) => "crdtUnknownType",
            OpError::WrongShape(_) => "crdtWrongShape",
            OpError::TooBig { .. } => "crdtTooBig",
            OpError::UnknownElement(_) => "crdtUnknownElement",
            OpError::TypeMismatch { .. } | OpError::PathMismatch { .. } => "crdtTypeMismatch",
        }
    }
}

/// The key of a CRDT object: 1 to [`KEY_BYTES_MAX`] bytes. The object's channel is
/// `crdt/<key>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

impl Key {
    /// Checks a key: not empty, at most [`KEY_BYTES_MAX`] bytes.
    pub fn parse(key: &str) -> Result<Key, OpError> {
        if key.is_empty() {
            return Err(OpError::WrongShape("`key` must not be empty"));
        }
        if key.len() > KEY_BYTES_MAX {
            return Err(OpError::TooBig { what: "bytes of a key", max: KEY_BYTES_MAX as u64 });
        }
        Ok(Key(Arc::from(key)))
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// What an operation does to its object. New kinds add new variants.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `crdt/counter/inc`: add `by`.
    CounterInc {
        /// How much, from 1 to [`BY_MAX`].
        by: u64,
    },
    /// `crdt/counter/dec`: subtract `by`.
    CounterDec {
        /// How much, from 1 to [`BY_MAX`].
        by: u64,
    },
    /// `crdt/lww/set`: write `value` into a last-writer-wins register.
    LwwSet {
        /// The value, at most [`VALUE_BYTES_MAX`] bytes of JSON.
        value: Value,
    },
    /// `crdt/mv/set`: write `value` into a multi-value register.
    MvSet {
        /// The value, at most [`VALUE_BYTES_MAX`] bytes of JSON.
        value: Value,
        /// What the writer had seen of the object: the write supersedes only the values it
        /// covers (and the author's own). `None`: every value the server holds.
        seen: Option<VersionVector>,
    },
    /// `crdt/set/add`: add `elem` to an add-wins set.
    SetAdd {
        /// The element: a scalar of at most [`ELEM_BYTES_MAX`] bytes of JSON, no NaN or infinity.
        elem: Scalar,
    },
    /// `crdt/set/remove`: remove `elem` from an add-wins set.
    SetRemove {
        /// The element.
        elem: Scalar,
        /// What the remover had seen of the object: only the element's adds it covers (and
        /// the author's own) are removed. `None`: every add the server holds.
        seen: Option<VersionVector>,
    },
    /// `crdt/clset/add`: add `elem` to a causal-length set.
    ClSetAdd {
        /// The element, as for [`Change::SetAdd`].
        elem: Scalar,
    },
    /// `crdt/clset/remove`: remove `elem` from a causal-length set.
    ClSetRemove {
        /// The element.
        elem: Scalar,
    },
    /// `crdt/list/insert`: insert `value` at `index` among the visible elements as the server
    /// holds them when it applies the action (past the end: at the end).
    ListInsert {
        /// Where, among visible elements.
        index: u64,
        /// The value, at most [`LIST_VALUE_BYTES_MAX`] bytes of JSON.
        value: Value,
    },
    /// `crdt/list/delete`: delete the visible element at `index` (out of range: nothing).
    ListDelete {
        /// Which, among visible elements.
        index: u64,
    },
    /// `crdt/list/insert` with `after`: insert `value` right after the element `after`
    /// (`null`: at the head), wherever it is when the server applies the action.
    ListInsertAfter {
        /// The element's id, as the list's document shows it; `None` for the head.
        after: Option<Dot>,
        /// The value, at most [`LIST_VALUE_BYTES_MAX`] bytes of JSON.
        value: Value,
    },
    /// `crdt/list/delete` with `id`: delete the element `id` (already deleted: nothing).
    ListDeleteId {
        /// The element's id.
        id: Dot,
    },
    /// `crdt/map/set`: write `value` into the multi-value register at `path` of a map,
    /// creating the nested maps on the way.
    MapSet {
        /// 1 to [`MAP_DEPTH_MAX`] keys of at most [`MAP_KEY_BYTES_MAX`] bytes: nested maps,
        /// then the entry.
        path: Vec<String>,
        /// The value: a scalar, as for [`Change::SetAdd`] (a map's registers hold scalars).
        value: Scalar,
        /// What the writer had seen, as for [`Change::MvSet`].
        seen: Option<VersionVector>,
    },
    /// `crdt/map/remove`: remove the entry at `path` (whatever it holds, as far as the server
    /// has seen it).
    MapRemove {
        /// The entry's path, as for [`Change::MapSet`].
        path: Vec<String>,
    },
    /// `crdt/map/add`: add `elem` to the add-wins set at `path`.
    MapAdd {
        /// The set's path, as for [`Change::MapSet`].
        path: Vec<String>,
        /// The element, as for [`Change::SetAdd`].
        elem: Scalar,
    },
    /// `crdt/map/delete`: remove `elem` from the add-wins set at `path` (every add of it the
    /// server holds).
    MapDelete {
        /// The set's path, as for [`Change::MapSet`].
        path: Vec<String>,
        /// The element.
        elem: Scalar,
    },
    /// `crdt/map/inc`: add `by` to the causal counter at `path` (see
    /// [`crate::ValueRef::counter_inc`]), creating the nested maps on the way.
    MapInc {
        /// The counter's path, as for [`Change::MapSet`].
        path: Vec<String>,
        /// How much, from 1 to [`BY_MAX`].
        by: u64,
    },
    /// `crdt/map/dec`: subtract `by` from the causal counter at `path`.
    MapDec {
        /// The counter's path, as for [`Change::MapSet`].
        path: Vec<String>,
        /// How much, from 1 to [`BY_MAX`].
        by: u64,
    },
    /// `crdt/map/insert` with `index`: insert `value` into the list at `path` (see
    /// [`crate::DotList`]) at `index` among its live elements as the server holds them
    /// (past the end: at the end), creating the nested maps on the way.
    MapInsert {
        /// The list's path, as for [`Change::MapSet`].
        path: Vec<String>,
        /// Where, among live elements.
        index: u64,
        /// The value, at most [`LIST_VALUE_BYTES_MAX`] bytes of JSON.
        value: Value,
    },
    /// `crdt/map/insert` with `after`: insert `value` right after the element `after` of the
    /// list at `path` (`null`: at the head), wherever it is then.
    MapInsertAfter {
        /// The list's path, as for [`Change::MapSet`].
        path: Vec<String>,
        /// The element's id, as the map's document shows it; `None` for the head.
        after: Option<Dot>,
        /// The value, at most [`LIST_VALUE_BYTES_MAX`] bytes of JSON.
        value: Value,
    },
    /// `crdt/map/cut` with `index`: delete the live element at `index` of the list at `path`
    /// (out of range: nothing).
    MapCut {
        /// The list's path, as for [`Change::MapSet`].
        path: Vec<String>,
        /// Which, among live elements.
        index: u64,
    },
    /// `crdt/map/cut` with `id`: delete the element `id` of the list at `path` (already
    /// deleted: nothing).
    MapCutId {
        /// The list's path, as for [`Change::MapSet`].
        path: Vec<String>,
        /// The element's id.
        id: Dot,
    },
    /// `crdt/map/put`: write `value` into the last-writer-wins register at `path` (see
    /// [`crate::ValueRef::lww_put`]), creating the nested maps on the way.
    MapPut {
        /// The register's path, as for [`Change::MapSet`].
        path: Vec<String>,
        /// The value, at most [`VALUE_BYTES_MAX`] bytes of JSON.
        value: Value,
    },
    /// `crdt/map/cladd`: add `elem` to the causal-length set at `path` (see
    /// [`crate::ValueRef::clset_add`]), creating the nested maps on the way.
    MapClAdd {
        /// The set's path, as for [`Change::MapSet`].
        path: Vec<String>,
        /// The element, as for [`Change::SetAdd`].
        elem: Scalar,
    },
    /// `crdt/map/cldelete`: remove `elem` from the causal-length set at `path` (see
    /// [`crate::ValueRef::clset_remove`]).
    MapClDelete {
        /// The set's path, as for [`Change::MapSet`].
        path: Vec<String>,
        /// The element.
        elem: Scalar,
    },
}

impl Change {
    /// The kind of object the change applies to.
    pub fn kind(&self) -> Kind {
        match self {
            Change::CounterInc { .. } | Change::CounterDec { .. } => Kind::Counter,
            Change::LwwSet { .. } => Kind::Lww,
            Change::MvSet { .. } => Kind::Mv,
            Change::SetAdd { .. } | Change::SetRemove { .. } => Kind::Set,
            Change::ClSetAdd { .. } | Change::ClSetRemove { .. } => Kind::ClSet,
            Change::ListInsert { .. }
            | Change::ListDelete { .. }
            | Change::ListInsertAfter { .. }
            | Change::ListDeleteId { .. } => Kind::List,
            Change::MapSet { .. }
            | Change::MapRemove { .. }
            | Change::MapAdd { .. }
            | Change::MapDelete { .. } => Kind::Map,
            Change::MapInc { .. } | Change::MapDec { .. } => Kind::Map,
            Change::MapInsert { .. }
            | Change::MapInsertAfter { .. }
            | Change::MapCut { .. }
            | Change::MapCutId { .. } => Kind::Map,
            Change::MapPut { .. } | Change::MapClAdd { .. } | Change::MapClDelete { .. } => Kind::Map,
        }
    }

    /// The action type, such as `crdt/counter/inc`.
    pub fn action_type(&self) -> &'static str {
        match self {
            Change::CounterInc { .. } => "crdt/counter/inc",
            Change::CounterDec { .. } => "crdt/counter/dec",
            Change::LwwSet { .. } => "crdt/lww/set",
            Change::MvSet { .. } => "crdt/mv/set",
            Change::SetAdd { .. } => "crdt/set/add",
            Change::SetRemove { .. } => "crdt/set/remove",
            Change::ClSetAdd { .. } => "crdt/clset/add",
            Change::ClSetRemove { .. } => "crdt/clset/remove",
            Change::ListInsert { .. } | Change::ListInsertAfter { .. } => "crdt/list/insert",
            Change::ListDelete { .. } | Change::ListDeleteId { .. } => "crdt/list/delete",
            Change::MapSet { .. } => "crdt/map/set",
            Change::MapRemove { .. } => "crdt/map/remove",
            Change::MapAdd { .. } => "crdt/map/add",
            Change::MapDelete { .. } => "crdt/map/delete",
            Change::MapInc { .. } => "crdt/map/inc",
            Change::MapDec { .. } => "crdt/map/dec",
            Change::MapInsert { .. } | Change::MapInsertAfter { .. } => "crdt/map/insert",
            Change::MapCut { .. } | Change::MapCutId { .. } => "crdt/map/cut",
            Change::MapPut { .. } => "crdt/map/put",
            Change::MapClAdd { .. } => "crdt/map/cladd",
            Change::MapClDelete { .. } => "crdt/map/cldelete",
        }
    }

    /// The fields its action may have.
    fn fields(&self) -> &'static [&'static str] {
        match self {
            Change::CounterInc { .. } | Change::CounterDec { .. } => &["type", "key", "by"],
            Change::LwwSet { .. } => &["type", "key", "value"],
            Change::MvSet { .. } => &["type", "key", "value", "seen"],
            Change::SetAdd { .. } | Change::ClSetAdd { .. } | Change::ClSetRemove { .. } => {
                &["type", "key", "elem"]
            }
            Change::SetRemove { .. } => &["type", "key", "elem", "seen"],
            Change::ListInsert { .. } => &["type", "key", "index", "value"],
            Change::ListDelete { .. } => &["type", "key", "index"],
            Change::ListInsertAfter { .. } => &["type", "key", "after", "value"],
            Change::ListDeleteId { .. } => &["type", "key", "id"],
            Change::MapSet { .. } => &["type", "key", "path", "value", "seen"],
            Change::MapRemove { .. } => &["type", "key", "path"],
            Change::MapAdd { .. }
            | Change::MapDelete { .. }
            | Change::MapClAdd { .. }
            | Change::MapClDelete { .. } => &["type", "key", "path", "elem"],
            Change::MapInc { .. } | Change::MapDec { .. } => &["type", "key", "path", "by"],
            Change::MapInsert { .. } => &["type", "key", "path", "index", "value"],
            Change::MapInsertAfter { .. } => &["type", "key", "path", "after", "value"],
            Change::MapCut { .. } => &["type", "key", "path", "index"],
            Change::MapCutId { .. } => &["type", "key", "path", "id"],
            Change::MapPut { .. } => &["type", "key", "path", "value"],
        }
    }

    fn check(&self) -> Result<(), OpError> {
        match self {
            Change::CounterInc { by } | Change::CounterDec { by } => check_by(*by),
            Change::LwwSet { value } => check_value_size(value),
            Change::MvSet { value, seen } => {
                check_value_size(value)?;
                seen.as_ref().map_or(Ok(()), check_seen)
            }
            Change::SetAdd { elem } | Change::ClSetAdd { elem } | Change::ClSetRemove { elem } => {
                check_elem(elem)
            }
            Change::SetRemove { elem, seen } => {
                check_elem(elem)?;
                seen.as_ref().map_or(Ok(()), check_seen)
            }
            Change::ListInsert { value, .. } | Change::ListInsertAfter { value, .. } => {
                check_json_size(value, LIST_VALUE_BYTES_MAX, "bytes of a list element")
            }
            Change::ListDelete { .. } | Change::ListDeleteId { .. } => Ok(()),
            Change::MapSet { path, value, seen } => {
                check_path(path)?;
                check_finite(value)?;
                map_scalar_from_json(&value.to_json())?;
                seen.as_ref().map_or(Ok(()), check_seen)
            }
            Change::MapRemove { path } => check_path(path),
            Change::MapAdd { path, elem }
            | Change::MapDelete { path, elem }
            | Change::MapClAdd { path, elem }
            | Change::MapClDelete { path, elem } => {
                check_path(path)?;
                check_elem(elem)
            }
            Change::MapInc { path, by } | Change::MapDec { path, by } => {
                check_path(path)?;
                check_by(*by)
            }
            Change::MapInsert { path, value, .. } | Change::MapInsertAfter { path, value, .. } => {
                check_path(path)?;
                check_json_size(value, LIST_VALUE_BYTES_MAX, "bytes of a list element")
            }
            Change::MapCut { path, .. } | Change::MapCutId { path, .. } => check_path(path),
            Change::MapPut { path, value } => {
                check_path(path)?;
                check_value_size(value)
            }
        }
    }
}

/// A map path: 1 to [`MAP_DEPTH_MAX`] keys of at most [`MAP_KEY_BYTES_MAX`] bytes each.
fn check_path(path: &[String]) -> Result<(), OpError> {
    if path.is_empty() {
        return Err(OpError::WrongShape("`path` must hold at least one key"));
    }
    if path.len() > MAP_DEPTH_MAX {
        return Err(OpError::TooBig { what: "keys in a map path", max: MAP_DEPTH_MAX as u64 });
    }
    path.iter().try_for_each(|key| check_map_key(key))
}

/// Refuses a NaN or infinite float, which JSON cannot carry.
fn check_finite(scalar: &Scalar) -> Result<(), OpError> {
    if scalar.as_f64().is_some_and(|f| !f.is_finite()) {
        return Err(OpError::WrongShape("a scalar must not be NaN or infinite"));
    }
    Ok(())
}

/// An element as an action carries it: a finite float (JSON has no other), within
/// [`ELEM_BYTES_MAX`] bytes.
fn check_elem(elem: &Scalar) -> Result<(), OpError> {
    check_finite(elem)?;
    elem_from_json(&elem.to_json()).map(drop)
}

/// A `seen` version vector as an action carries it: at most [`NODES_MAX`] nodes, counters up
/// to [`COUNTER_MAX`].
fn check_seen(seen: &VersionVector) -> Result<(), OpError> {
    if seen.len() > NODES_MAX {
        return Err(too_many_nodes());
    }
    if seen.iter().any(|(_, counter)| counter > COUNTER_MAX) {
        return Err(OpError::WrongShape("a dot counter must be an integer from 1 to 2^53"));
    }
    Ok(())
}

fn check_by(by: u64) -> Result<(), OpError> {
    if (1..=BY_MAX).contains(&by) {
        Ok(())
    } else {
        Err(OpError::WrongShape("`by` must be an integer from 1 to 2^53"))
    }
}

/// One operation on one object, always within the vocabulary's limits: what [`parse`] reads
/// from an action and [`Op::to_action`] writes back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    key: Key,
    change: Change,
}

impl Op {
    /// An operation, checked against the limits an action is (`by` from 1 to [`BY_MAX`], a
    /// value of at most [`VALUE_BYTES_MAX`] bytes).
    pub fn new(key: Key, change: Change) -> Result<Op, OpError> {
        change.check()?;
        Ok(Op { key, change })
    }

    /// The object's key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// What the operation does.
    pub fn change(&self) -> &Change {
        &self.change
    }

    /// The kind of object it applies to.
    pub fn kind(&self) -> Kind {
        self.change.kind()
    }

    /// The object's channel, `crdt/<key>`.
    pub fn channel(&self) -> Channel {
        Channel::from(format!("crdt/{}", self.key))
    }

    /// The action, such as `{"type": "crdt/counter/inc", "key": "posts/7/likes", "by": 1}`.
    pub fn to_action(&self) -> Map<String, Value> {
        let mut action = Map::new();
        action.insert("type".to_owned(), self.change.action_type().into());
        action.insert("key".to_owned(), self.key.as_str().into());
        match &self.change {
            Change::CounterInc { by } | Change::CounterDec { by } => {
                action.insert("by".to_owned(), (*by).into())
            }
            Change::LwwSet { value } => action.insert("value".to_owned(), value.clone()),
            Change::MvSet { value, seen } => {
                if let Some(seen) = seen {
                    action.insert("seen".to_owned(), vv_to_json(seen));
                }
                action.insert("value".to_owned(), value.clone())
            }
            Change::SetAdd { elem } | Change::ClSetAdd { elem } | Change::ClSetRemove { elem } => {
                action.insert("elem".to_owned(), elem.to_json())
            }
            Change::SetRemove { elem, seen } => {
                if let Some(seen) = seen {
                    action.insert("seen".to_owned(), vv_to_json(seen));
                }
                action.insert("elem".to_owned(), elem.to_json())
            }
            Change::ListInsert { index, value } => {
                action.insert("index".to_owned(), (*index).into());
                action.insert("value".to_owned(), value.clone())
            }
            Change::ListDelete { index } => action.insert("index".to_owned(), (*index).into()),
            Change::ListInsertAfter { after, value } => {
                action.insert("after".to_owned(), after.as_ref().map_or(Value::Null, dot_to_json));
                action.insert("value".to_owned(), value.clone())
            }
            Change::ListDeleteId { id } => action.insert("id".to_owned(), dot_to_json(id)),
            Change::MapSet { path, value, seen } => {
                action.insert("path".to_owned(), path.clone().into());
                if let Some(seen) = seen {
                    action.insert("seen".to_owned(), vv_to_json(seen));
                }
                action.insert("value".to_owned(), value.to_json())
            }
            Change::MapRemove { path } => action.insert("path".to_owned(), path.clone().into()),
            Change::MapAdd { path, elem }
            | Change::MapDelete { path, elem }
            | Change::MapClAdd { path, elem }
            | Change::MapClDelete { path, elem } => {
                action.insert("path".to_owned(), path.clone().into());
                action.insert("elem".to_owned(), elem.to_json())
            }
            Change::MapInc { path, by } | Change::MapDec { path, by } => {
                action.insert("path".to_owned(), path.clone().into());
                action.insert("by".to_owned(), (*by).into())
            }
            Change::MapInsert { path, index, value } => {
                action.insert("path".to_owned(), path.clone().into());
                action.insert("index".to_owned(), (*index).into());
                action.insert("value".to_owned(), value.clone())
            }
            Change::MapInsertAfter { path, after, value } => {
                action.insert("path".to_owned(), path.clone().into());
                action.insert("after".to_owned(), after.as_ref().map_or(Value::Null, dot_to_json));
                action.insert("value".to_owned(), value.clone())
            }
            Change::MapCut { path, index } => {
                action.insert("path".to_owned(), path.clone().into());
                action.insert("index".to_owned(), (*index).into())
            }
            Change::MapCutId { path, id } => {
                action.insert("path".to_owned(), path.clone().into());
                action.insert("id".to_owned(), dot_to_json(id))
            }
            Change::MapPut { path, value } => {
                action.insert("path".to_owned(), path.clone().into());
                action.insert("value".to_owned(), value.clone())
            }
        };
        action
    }
}

/// Reads a `crdt/…` action. Refuses, never panics on, anything outside the vocabulary: an
/// unknown type, a missing, unknown or mistyped field, a value over its size limit.
pub fn parse(action: &Map<String, Value>) -> Result<Op, OpError> {
    let Some(Value::String(action_type)) = action.get("type") else {
        return Err(OpError::WrongShape("`type` must be a string"));
    };
    let change = match action_type.as_str() {
        "crdt/counter/inc" => Change::CounterInc { by: by_field(action)? },
        "crdt/counter/dec" => Change::CounterDec { by: by_field(action)? },
        "crdt/lww/set" => Change::LwwSet { value: value_field(action)? },
        "crdt/mv/set" => Change::MvSet { value: value_field(action)?, seen: seen_field(action)? },
        "crdt/set/add" => Change::SetAdd { elem: elem_field(action)? },
        "crdt/set/remove" => Change::SetRemove { elem: elem_field(action)?, seen: seen_field(action)? },
        "crdt/clset/add" => Change::ClSetAdd { elem: elem_field(action)? },
        "crdt/clset/remove" => Change::ClSetRemove { elem: elem_field(action)? },
        "crdt/list/insert" if action.contains_key("after") => {
            Change::ListInsertAfter { after: after_field(action)?, value: value_field(action)? }
        }
        "crdt/list/insert" => Change::ListInsert { index: index_field(action)?, value: value_field(action)? },
        "crdt/list/delete" if action.contains_key("id") => Change::ListDeleteId { id: id_field(action)? },
        "crdt/list/delete" => Change::ListDelete { index: index_field(action)? },
        "crdt/map/set" => Change::MapSet {
            path: path_field(action)?,
            value: map_scalar_from_json(
                action.get("value").ok_or(OpError::WrongShape("`value` is missing"))?,
            )?,
            seen: seen_field(action)?,
        },
        "crdt/map/remove" => Change::MapRemove { path: path_field(action)? },
        "crdt/map/add" => Change::MapAdd { path: path_field(action)?, elem: elem_field(action)? },
        "crdt/map/delete" => Change::MapDelete { path: path_field(action)?, elem: elem_field(action)? },
        "crdt/map/inc" => Change::MapInc { path: path_field(action)?, by: by_field(action)? },
        "crdt/map/dec" => Change::MapDec { path: path_field(action)?, by: by_field(action)? },
        "crdt/map/insert" if action.contains_key("after") => Change::MapInsertAfter {
            path: path_field(action)?,
            after: after_field(action)?,
            value: value_field(action)?,
        },
        "crdt/map/insert" => Change::MapInsert {
            path: path_field(action)?,
            index: index_field(action)?,
            value: value_field(action)?,
        },
        "crdt/map/cut" if action.contains_key("id") => {
            Change::MapCutId { path: path_field(action)?, id: id_field(action)? }
        }
        "crdt/map/cut" => Change::MapCut { path: path_field(action)?, index: index_field(action)? },
        "crdt/map/put" => Change::MapPut { path: path_field(action)?, value: value_field(action)? },
        "crdt/map/cladd" => Change::MapClAdd { path: path_field(action)?, elem: elem_field(action)? },
        "crdt/map/cldelete" => Change::MapClDelete { path: path_field(action)?, elem: elem_field(action)? },
        other => return Err(OpError::UnknownType(truncate(other, QUOTED_TYPE_BYTES_MAX).to_owned())),
    };
    if action.keys().any(|field| !change.fields().contains(&field.as_str())) {
        return Err(OpError::WrongShape("unknown field"));
    }
    let Some(Value::String(key)) = action.get("key") else {
        return Err(OpError::WrongShape("`key` must be a string"));
    };
    Op::new(Key::parse(key)?, change)
}

/// `by`: 1 when absent.
fn by_field(action: &Map<String, Value>) -> Result<u64, OpError> {
    match action.get("by") {
        None => Ok(1),
        // The range is checked with the rest of the op, by `Op::new`.
        Some(by) => by.as_u64().ok_or(OpError::WrongShape("`by` must be an integer from 1 to 2^53")),
    }
}

/// `index`: required, a non-negative integer (any: past the end means at the end).
fn index_field(action: &Map<String, Value>) -> Result<u64, OpError> {
    let index = action.get("index").and_then(Value::as_u64);
    index.ok_or(OpError::WrongShape("`index` must be a non-negative integer"))
}

/// `after`: `null` (the head) or an element id `[node, n]`.
fn after_field(action: &Map<String, Value>) -> Result<Option<Dot>, OpError> {
    match action.get("after") {
        Some(Value::Null) => Ok(None),
        Some(dot) => element_id(dot).map(Some),
        None => Err(OpError::WrongShape("`after` is missing")),
    }
}

/// `id`: an element id `[node, n]`.
fn id_field(action: &Map<String, Value>) -> Result<Dot, OpError> {
    element_id(action.get("id").ok_or(OpError::WrongShape("`id` is missing"))?)
}

/// A list element's id, `[node, n]`, as the list's document writes it.
fn element_id(value: &Value) -> Result<Dot, OpError> {
    match value.as_array().map(Vec::as_slice) {
        Some([node, counter]) => dot_from_json(node, counter),
        _ => Err(OpError::WrongShape("an element id must be [node, n]")),
    }
}

/// `value`: required, may be `null` (its size is checked by `Op::new`).
fn value_field(action: &Map<String, Value>) -> Result<Value, OpError> {
    action.get("value").cloned().ok_or(OpError::WrongShape("`value` is missing"))
}

/// `elem`: required, a JSON scalar.
fn elem_field(action: &Map<String, Value>) -> Result<Scalar, OpError> {
    elem_from_json(action.get("elem").ok_or(OpError::WrongShape("`elem` is missing"))?)
}

/// `path`: required, an array of strings (their number and lengths are checked by `Op::new`).
fn path_field(action: &Map<String, Value>) -> Result<Vec<String>, OpError> {
    let not_path = OpError::WrongShape("`path` must be an array of strings");
    let path = action.get("path").and_then(Value::as_array).ok_or(not_path.clone())?;
    if path.len() > MAP_DEPTH_MAX {
        return Err(OpError::TooBig { what: "keys in a map path", max: MAP_DEPTH_MAX as u64 });
    }
    path.iter().map(|key| key.as_str().map(str::to_owned).ok_or(not_path.clone())).collect()
}

/// `seen`: optional, a version vector.
fn seen_field(action: &Map<String, Value>) -> Result<Option<VersionVector>, OpError> {
    action.get("seen").map(vv_from_json).transpose()
}

/// The longest prefix of `s` of at most `bytes_max` bytes that ends on a character boundary.
fn truncate(s: &str, bytes_max: usize) -> &str {
    let mut end = s.len().min(bytes_max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The server side of an operation: given the object's current state (the bottom of the op's
/// kind for a new object), returns the delta to join into it and ship to subscribers. The
/// server assigns the dots, as `author` (a node id as [`NodeId::parse`] accepts it):
///
/// - counter: [`crate::PnCounter::inc`] or [`crate::PnCounter::dec`] as `author`.
/// - lww: the stamp is `(time_ms, (author, 1))`; when the current value is `author`'s, it is
///   `(max(time_ms, current time), (author, n + 1))` instead, so an author's write always
///   supersedes its own current value, whatever its clock did. A write whose stamp is not above the
///   current one loses, and its delta is the bottom; so every stamp that is shipped is above
///   all stamps the object held, which include all of `author`'s earlier writes (they went
///   through this state), and no stamp is ever shipped twice with different values.
/// - mv: the write under `state.context().next_dot(author)`, which supersedes every value the
///   state holds, or with `seen` only the values `seen` covers and the author's own (so two
///   clients' concurrent offline writes both survive).
/// - set: an add under `state.context().next_dot(author)`, which replaces the element's dots; a
///   remove deletes the element's dots that `seen` covers (all of them without `seen`). An
///   author has seen its own earlier operations, so its own dots count as covered.
/// - clset: [`crate::ClSet::add`] or [`crate::ClSet::remove`]: the element's causal length
///   plus one when that changes its presence, else the bottom.
/// - list: [`crate::Rga::insert`] at `index` under `state.next_dot(author)` (one past the
///   author's highest counter among the elements), or [`crate::Rga::delete`] at `index`,
///   whose delta is the element's tombstone (the bottom when `index` is out of range).
/// - map: `map/set` and `map/add` write under `state.context().next_dot(author)` at `path`
///   (nested maps on the way are created by the write): `set` as mv does (with `seen`, the
///   author's own values count as seen), `add` as a set add; `map/delete` removes the
///   element's dots the server holds; `map/remove` retires every dot under the entry (a
///   concurrent write inside it survives). A path through, or ending at, another kind of
///   value is refused (`crdtTypeMismatch`); a path that does not exist removes nothing.
///   `map/put` writes under `state.context().next_dot(author)` at time
///   `max(time_ms, the greatest time among the writes it supersedes)` and supersedes every
///   write the server holds at `path` ([`crate::ValueRef::lww_put`]), so an author's write
///   always supersedes its own earlier one (and anyone's it saw) whatever its clock did.
///   `map/cladd` and `map/cldelete` lengthen the element of the causal-length set at `path`
///   by one under `state.context().next_dot(author)` when that changes its presence
///   (else the bottom), retiring the element's bumps the server holds
///   ([`crate::ValueRef::clset_add`]).
///
/// Refused: an op of another kind than the object (`crdtTypeMismatch`); an op that would add
/// a node beyond [`NODES_MAX`], a dot counter beyond [`COUNTER_MAX`], a cloud dot beyond
/// [`CLOUD_DOTS_MAX`], a set element beyond [`SET_ELEMS_MAX`], a list element beyond
/// [`LIST_ELEMS_MAX`], a list `seq` beyond [`COUNTER_MAX`], map keys beyond [`MAP_KEYS_MAX`],
/// map dots beyond [`MAP_DOTS_MAX`] or map LWW values beyond [`MAP_LWW_BYTES_MAX`] bytes
/// (`crdtTooBig`); an
/// invalid `author` (`crdtWrongShape`). Every state built by joining deltas of this function
/// on one server therefore stays within what [`Object::from_json`] reads back.
pub fn apply(state: &Object, op: &Op, author: &NodeId, time_ms: i64) -> Result<Object, OpError> {
    check_applies(state, op, author)?;
    match (state, &op.change) {
        (Object::Counter(counter), Change::CounterInc { by }) => {
            check_counter_nodes(counter, author)?;
            Ok(Object::Counter(counter.inc(author, *by)))
        }
        (Object::Counter(counter), Change::CounterDec { by }) => {
            check_counter_nodes(counter, author)?;
            Ok(Object::Counter(counter.dec(author, *by)))
        }
        (Object::Lww(register), Change::LwwSet { value }) => {
            // A write after the author's own current value supersedes it whatever the clocks
            // say (its client may have corrected its clock offset between the two writes).
            let (time_ms, counter) = match register.stamp() {
                Some(current) if current.dot.node == *author => {
                    (time_ms.max(current.time_ms), current.dot.counter.saturating_add(1))
                }
                _ => (time_ms, 1),
            };
            if counter > COUNTER_MAX {
                return Err(too_high_counter());
            }
            let stamp = Stamp::new(time_ms, Dot { node: author.clone(), counter });
            if register.stamp().is_some_and(|current| stamp <= *current) {
                return Ok(Object::Lww(LwwRegister::bottom()));
            }
            Ok(Object::Lww(register.set(value.clone(), stamp)))
        }
        (Object::Mv(register), Change::MvSet { value, seen }) => {
            let dot = fresh_dot(register.context(), author)?;
            let delta = match seen {
                None => register.write(dot, value.clone()),
                Some(seen) => register.write_seen(dot, value.clone(), &with_own_events(seen, author)),
            };
            // Never build a state its own document cannot hold: concurrent writes that keep
            // every sibling are bounded like the document is.
            let mut after = register.clone();
            after.join(&delta);
            if after.values().len() > MV_VALUES_MAX {
                return Err(OpError::TooBig { what: "values in an MV register", max: MV_VALUES_MAX as u64 });
            }
            Ok(Object::Mv(delta))
        }
        (Object::Set(set), Change::SetAdd { elem }) => {
            let dot = set_add_dot(set, elem, author)?;
            Ok(Object::Set(set.add(dot, elem.clone())))
        }
        (Object::Set(set), Change::SetRemove { elem, seen }) => Ok(Object::Set(match seen {
            None => set.remove(elem),
            Some(seen) => set.remove_seen(elem, &with_own_events(seen, author)),
        })),
        (Object::ClSet(set), Change::ClSetAdd { elem }) => {
            let length = set.length(elem);
            if length == 0 && set.element_count() >= SET_ELEMS_MAX {
                return Err(OpError::TooBig { what: "elements in a set", max: SET_ELEMS_MAX as u64 });
            }
            check_causal_length(length)?;
            Ok(Object::ClSet(set.add(elem.clone())))
        }
        (Object::ClSet(set), Change::ClSetRemove { elem }) => {
            check_causal_length(set.length(elem))?;
            Ok(Object::ClSet(set.remove(elem)))
        }
        (Object::List(list), Change::ListInsert { index, value }) => {
            let dot = list_insert_dot(list, author)?;
            // An index beyond `usize` is past the end like any other.
            let index = usize::try_from(*index).unwrap_or(usize::MAX);
            Ok(Object::List(Box::new(list.insert(index, dot, value.clone()))))
        }
        (Object::List(list), Change::ListDelete { index }) => {
            // An index beyond `usize` is out of range like any other.
            let delta = usize::try_from(*index).map_or_else(|_| Rga::bottom(), |index| list.delete(index));
            Ok(Object::List(Box::new(delta)))
        }
        (Object::List(list), Change::ListInsertAfter { after, value }) => {
            if let Some(after) = after.as_ref().filter(|after| !list.contains_id(after)) {
                return Err(OpError::UnknownElement(after.clone()));
            }
            let dot = list_insert_dot(list, author)?;
            Ok(Object::List(Box::new(list.insert_after(after.as_ref(), dot, value.clone()))))
        }
        (Object::List(list), Change::ListDeleteId { id }) => {
            if !list.contains_id(id) {
                return Err(OpError::UnknownElement(id.clone()));
            }
            Ok(Object::List(Box::new(list.delete_id(id))))
        }
        (Object::Map(map), Change::MapPut { path, value }) => {
            let dot = map_fresh_dot(map, path, author)?;
            check_map_lww_bytes(map, path, value)?;
            let delta = at_path(map, path, &|v| v.lww_put(dot.clone(), time_ms, value.clone()))?;
            Ok(Object::Map(Box::new(delta)))
        }
        (Object::Map(map), change) => {
            apply_map(map, change, author).map(|delta| Object::Map(Box::new(delta)))
        }
        _ => Err(OpError::TypeMismatch { expected: state.kind(), found: op.kind() }),
    }
}

/// The dot of `author`'s next insert into `list`, when the list has room for one more element.
fn list_insert_dot(list: &Rga<Value>, author: &NodeId) -> Result<Dot, OpError> {
    if list.element_count() >= LIST_ELEMS_MAX {
        return Err(OpError::TooBig {
            what: "elements in a list, deleted ones included",
            max: LIST_ELEMS_MAX as u64,
        });
    }
    let dot = list.next_dot(author);
    if dot.counter > COUNTER_MAX || list.max_seq() >= COUNTER_MAX {
        return Err(too_high_counter());
    }
    Ok(dot)
}

/// In place: applies `op` by `author` to `state` as [`apply`] does, and joins the delta into
/// `state`; returns that delta, to ship. Counter and set operations change the state directly
/// ([`crate::PnCounter::apply_inc`], [`crate::Orswot::apply_add`], …) instead of building a
/// delta and joining it, which is most of their cost; the other kinds join [`apply`]'s delta.
/// A refused operation leaves `state` unchanged: every check runs before anything changes.
pub fn apply_in_place(state: &mut Object, op: &Op, author: &NodeId, time_ms: i64) -> Result<Object, OpError> {
    check_applies(state, op, author)?;
    match (state, &op.change) {
        (Object::Counter(counter), Change::CounterInc { by }) => {
            check_counter_nodes(counter, author)?;
            Ok(Object::Counter(counter.apply_inc(author, *by).to_counter()))
        }
        (Object::Counter(counter), Change::CounterDec { by }) => {
            check_counter_nodes(counter, author)?;
            Ok(Object::Counter(counter.apply_dec(author, *by).to_counter()))
        }
        (Object::Set(set), Change::SetAdd { elem }) => {
            let dot = set_add_dot(set, elem, author)?;
            Ok(Object::Set(set.apply_add(dot, elem.clone()).to_orswot()))
        }
        (Object::Set(set), Change::SetRemove { elem, seen }) => {
            let delta = match seen {
                None => set.apply_remove(elem),
                Some(seen) => set.apply_remove_seen(elem, &with_own_events(seen, author)),
            };
            Ok(Object::Set(delta.to_orswot()))
        }
        (state, _) => {
            let delta = apply(state, op, author, time_ms)?;
            state.join(&delta)?;
            Ok(delta)
        }
    }
}

/// Refuses an op of another kind than the object, or by an invalid author.
fn check_applies(state: &Object, op: &Op, author: &NodeId) -> Result<(), OpError> {
    if state.kind() != op.kind() {
        return Err(OpError::TypeMismatch { expected: state.kind(), found: op.kind() });
    }
    if NodeId::parse(author.as_str()).is_none() {
        return Err(OpError::WrongShape("the author must be a node id without spaces, of 1 to 256 bytes"));
    }
    Ok(())
}

/// The author's dot for adding `elem` to `set`, refused past the limits of [`fresh_dot`] or
/// when a new element would take the set past [`SET_ELEMS_MAX`].
fn set_add_dot(set: &Orswot<Scalar>, elem: &Scalar, author: &NodeId) -> Result<Dot, OpError> {
    let dot = fresh_dot(set.context(), author)?;
    if !set.contains(elem) && set.len() >= SET_ELEMS_MAX {
        return Err(OpError::TooBig { what: "elements in a set", max: SET_ELEMS_MAX as u64 });
    }
    Ok(dot)
}

/// The delta of a map operation (see [`apply`]). `map/inc` and `map/dec` write the author's
/// new totals under `state.context().next_dot(author)` at `path`, retiring the author's
/// previous dot there ([`crate::ValueRef::counter_inc`]); `map/remove` of the counter's entry
/// (or of a map above it) resets the contributions whose dots it retires.
fn apply_map(map: &OrMap<String>, change: &Change, author: &NodeId) -> Result<OrMap<String>, OpError> {
    let delta = match change {
        Change::MapSet { path, value, seen } => {
            let dot = map_fresh_dot(map, path, author)?;
            let seen = seen.as_ref().map(|seen| with_own_events(seen, author));
            at_path(map, path, &|v| match &seen {
                None => v.assign(dot.clone(), value.clone()),
                Some(seen) => v.assign_seen(dot.clone(), value.clone(), seen),
            })
        }
        Change::MapAdd { path, elem } => {
            let dot = map_fresh_dot(map, path, author)?;
            at_path(map, path, &|v| v.set_add(dot.clone(), elem.clone()))
        }
        Change::MapDelete { path, elem } => at_path(map, path, &|v| v.set_remove(elem)),
        Change::MapClAdd { path, elem } => {
            let dot = map_clset_dot(map, path, elem, true, author)?;
            at_path(map, path, &|v| v.clset_add(dot.clone(), elem.clone()))
        }
        Change::MapClDelete { path, elem } => {
            let dot = map_clset_dot(map, path, elem, false, author)?;
            at_path(map, path, &|v| v.clset_remove(dot.clone(), elem))
        }
        Change::MapInc { path, by } => {
            let dot = map_counter_dot(map, path, author)?;
            at_path(map, path, &|v| v.counter_inc(dot.clone(), *by))
        }
        Change::MapDec { path, by } => {
            let dot = map_counter_dot(map, path, author)?;
            at_path(map, path, &|v| v.counter_dec(dot.clone(), *by))
        }
        Change::MapInsert { path, index, value } => {
            let dot = map_list_dot(map, path, author)?;
            // An index beyond `usize` is past the end like any other.
            let index = usize::try_from(*index).unwrap_or(usize::MAX);
            at_path(map, path, &|v| v.list_insert(dot.clone(), index, value.clone()))
        }
        Change::MapInsertAfter { path, after, value } => {
            check_list_path(map, path)?;
            if let Some(after) = after.as_ref() {
                check_list_element(map, path, after)?;
            }
            let dot = map_list_dot(map, path, author)?;
            at_path(map, path, &|v| v.list_insert_after(dot.clone(), after.as_ref(), value.clone()))
        }
        Change::MapCut { path, index } => {
            // An index beyond `usize` is out of range like any other.
            let index = usize::try_from(*index).unwrap_or(usize::MAX);
            at_path(map, path, &|v| v.list_delete(index))
        }
        Change::MapCutId { path, id } => {
            check_list_path(map, path)?;
            check_list_element(map, path, id)?;
            at_path(map, path, &|v| v.list_delete_id(id))
        }
        Change::MapRemove { path } => match path.split_last() {
            Some((last, [])) => Ok(map.remove(last)),
            Some((last, parents)) => at_path(map, parents, &|v| v.map_remove(last)),
            None => Ok(OrMap::bottom()),
        },
        other => return Err(OpError::TypeMismatch { expected: Kind::Map, found: other.kind() }),
    };
    Ok(delta?)
}

/// A delta mutator of the value at one path of a map.
type AtPath<'f> = &'f dyn Fn(ValueRef<'_, String>) -> Result<ValueDelta<String>, MapError>;

/// The map's delta of applying `f` to the value at `path`, creating nested maps on the way
/// (the empty path: the bottom).
fn at_path(map: &OrMap<String>, path: &[String], f: AtPath<'_>) -> Result<OrMap<String>, MapError> {
    let Some((first, rest)) = path.split_first() else { return Ok(OrMap::bottom()) };
    map.update(first.clone(), |value| nested_at_path(value, rest, f))
}

fn nested_at_path(
    value: ValueRef<'_, String>,
    path: &[String],
    f: AtPath<'_>,
) -> Result<ValueDelta<String>, MapError> {
    match path.split_first() {
        None => f(value),
        Some((first, rest)) => value.map_update(first.clone(), |inner| nested_at_path(inner, rest, f)),
    }
}

/// The author's next dot for a write at `path`, refused when the write could take the map past
/// [`MAP_KEYS_MAX`] keys (counting the keys of `path` it creates) or [`MAP_DOTS_MAX`] dots,
/// or past the limits of [`fresh_dot`].
fn map_fresh_dot(map: &OrMap<String>, path: &[String], author: &NodeId) -> Result<Dot, OpError> {
    let dot = fresh_dot(map.context(), author)?;
    // Both counts are kept by the map, so a write costs O(depth × log n), not O(n).
    // Retired list elements stay, so they count like dots (as documents count them).
    let (keys, dots) = (map.key_count(), map.dot_count() + map.retired_count());
    let mut present = 0;
    let mut level: Option<&MapValue<String>> = None;
    for key in path {
        let next = match level {
            None if present == 0 => map.get(key),
            _ => level.and_then(|value| value.get(key)),
        };
        let Some(value) = next else { break };
        present += 1;
        level = Some(value);
    }
    if keys + (path.len() - present) > MAP_KEYS_MAX {
        return Err(OpError::TooBig { what: "keys in a map", max: MAP_KEYS_MAX as u64 });
    }
    if dots >= MAP_DOTS_MAX {
        return Err(OpError::TooBig { what: "dots in a map", max: MAP_DOTS_MAX as u64 });
    }
    Ok(dot)
}

/// The author's next dot for an increment or a decrement of the counter at `path`. When the
/// author already holds a dot there, the write replaces it, so it adds no key and no dot and
/// only [`fresh_dot`]'s limits apply (a queue of increments folded or not then meets the same
/// limits); otherwise it is a new write, as for [`map_fresh_dot`].
fn map_counter_dot(map: &OrMap<String>, path: &[String], author: &NodeId) -> Result<Dot, OpError> {
    let value = match path.split_first() {
        Some((first, rest)) => rest.iter().fold(map.get(first), |value, key| value.and_then(|v| v.get(key))),
        None => None,
    };
    let replaces = value.is_some_and(|v| v.counter_entries().any(|(dot, _)| dot.node == *author));
    if replaces {
        fresh_dot(map.context(), author)
    } else {
        map_fresh_dot(map, path, author)
    }
}

/// The author's next dot for a bump of `elem` in the causal-length set at `path` (an add
/// when `adds`, else a remove), refused when its length would pass [`COUNTER_MAX`] (what a
/// document reads back). An operation that does not change the element's presence makes
/// no bump (its delta is the bottom), so it is never refused for a limit. When the set holds
/// the element already, the bump replaces its bumps, so it adds no key and no dot and only
/// [`fresh_dot`]'s limits apply (as for [`map_counter_dot`]); otherwise it is a new write,
/// as for [`map_fresh_dot`].
fn map_clset_dot(
    map: &OrMap<String>,
    path: &[String],
    elem: &Scalar,
    adds: bool,
    author: &NodeId,
) -> Result<Dot, OpError> {
    let value = match path.split_first() {
        Some((first, rest)) => rest.iter().fold(map.get(first), |value, key| value.and_then(|v| v.get(key))),
        None => None,
    };
    let length = value.map_or(0, |v| v.clset_length(elem));
    let present = length % 2 == 1;
    if present == adds {
        // Unused: the mutator gives the bottom delta without a bump.
        return Ok(map.context().next_dot(author));
    }
    check_causal_length(length)?;
    if length > 0 {
        fresh_dot(map.context(), author)
    } else {
        map_fresh_dot(map, path, author)
    }
}

/// Refuses a put of `value` at `path` that would take the map's last-writer-wins values past
/// [`MAP_LWW_BYTES_MAX`] bytes, counting that it supersedes the writes held at `path`.
fn check_map_lww_bytes(map: &OrMap<String>, path: &[String], value: &Value) -> Result<(), OpError> {
    let held = match path.split_first() {
        Some((first, rest)) => rest.iter().fold(map.get(first), |value, key| value.and_then(|v| v.get(key))),
        None => None,
    };
    let superseded: usize =
        held.into_iter().flat_map(|v| v.lww_entries()).map(|(_, e)| crate::map::json_bytes(&e.value)).sum();
    let after = (map.lww_bytes() - superseded.min(map.lww_bytes())) + crate::map::json_bytes(value);
    if after > MAP_LWW_BYTES_MAX {
        return Err(OpError::TooBig {
            what: "bytes of a map's last-writer-wins values",
            max: MAP_LWW_BYTES_MAX as u64,
        });
    }
    Ok(())
}

/// The list at `path` of `map` (retired elements included), if there is one.
fn map_list_at<'m>(map: &'m OrMap<String>, path: &[String]) -> Option<&'m crate::DotList> {
    let (first, rest) = path.split_first()?;
    let value = rest.iter().fold(map.get(first), |value, key| value.and_then(|v| v.get(key)))?;
    Some(value.list()).filter(|list| list.element_count() > 0)
}

/// Refuses, as an insert or a cut would, a `path` that runs through or ends at another kind
/// of value than a list (a cut out of range checks the kinds on the way and changes nothing).
fn check_list_path(map: &OrMap<String>, path: &[String]) -> Result<(), OpError> {
    at_path(map, path, &|v| v.list_delete(usize::MAX))?;
    Ok(())
}

/// Refuses an element id that the list at `path` does not hold, live or retired
/// (`crdtUnknownElement`).
fn check_list_element(map: &OrMap<String>, path: &[String], id: &Dot) -> Result<(), OpError> {
    if map_list_at(map, path).is_some_and(|list| list.rga().contains_id(id)) {
        Ok(())
    } else {
        Err(OpError::UnknownElement(id.clone()))
    }
}

/// The author's next dot for an insert into the list at `path`, as for [`map_fresh_dot`], and
/// refused when the list has [`LIST_ELEMS_MAX`] elements (retired ones included) or its
/// next `seq` would pass [`COUNTER_MAX`] (what a document reads back).
fn map_list_dot(map: &OrMap<String>, path: &[String], author: &NodeId) -> Result<Dot, OpError> {
    if let Some(list) = map_list_at(map, path) {
        if list.element_count() >= LIST_ELEMS_MAX {
            return Err(OpError::TooBig {
                what: "elements in a list, deleted ones included",
                max: LIST_ELEMS_MAX as u64,
            });
        }
        if list.rga().max_seq() >= COUNTER_MAX {
            return Err(too_high_counter());
        }
    }
    map_fresh_dot(map, path, author)
}

/// Refuses lengthening a causal length past [`COUNTER_MAX`] (what a document reads back).
fn check_causal_length(length: u64) -> Result<(), OpError> {
    if length >= COUNTER_MAX {
        return Err(OpError::TooBig { what: "adds and removes of one set element", max: COUNTER_MAX });
    }
    Ok(())
}

/// The author's next dot in `context`, within the limits: a counter up to [`COUNTER_MAX`], a
/// new node only below [`NODES_MAX`], a cloud dot only below [`CLOUD_DOTS_MAX`].
fn fresh_dot(context: &CausalContext, author: &NodeId) -> Result<Dot, OpError> {
    let dot = context.next_dot(author);
    if dot.counter > COUNTER_MAX {
        return Err(too_high_counter());
    }
    // Counter 1: the author is not in the context yet.
    if dot.counter == 1 && context.vv().len() >= NODES_MAX {
        return Err(too_many_nodes());
    }
    // A dot that does not extend the author's prefix lands in the cloud.
    if dot.counter != context.vv().get(author) + 1 && context.cloud().count() >= CLOUD_DOTS_MAX {
        return Err(OpError::TooBig { what: "dots in a causal context's cloud", max: CLOUD_DOTS_MAX as u64 });
    }
    Ok(dot)
}

/// `seen` plus every event of `author`: an author has seen its own earlier operations (the
/// server applied them in order), even those still queued when it read `seen`.
fn with_own_events(seen: &VersionVector, author: &NodeId) -> VersionVector {
    let mut seen = seen.clone();
    seen.raise(author, u64::MAX);
    seen
}

/// Refuses a new node on a counter that has [`NODES_MAX`] already.
fn check_counter_nodes(counter: &PnCounter, author: &NodeId) -> Result<(), OpError> {
    if counter.entry(author) == PnEntry::default() && counter.node_count() >= NODES_MAX {
        return Err(too_many_nodes());
    }
    Ok(())
}

fn too_many_nodes() -> OpError {
    OpError::TooBig { what: "nodes in an object", max: NODES_MAX as u64 }
}

fn too_high_counter() -> OpError {
    OpError::TooBig { what: "events of one node on one object", max: COUNTER_MAX }
}

/// Folds a client's queue of operations before sending: each run of consecutive operations on
/// the same key and of the same kind becomes as few operations as give the same result, and
/// everything else keeps its order.
///
/// - counter: the run's increments add up into one `inc` and its decrements into one `dec`
///   (in the order of their first appearance; a sum over [`BY_MAX`] is split into several
///   operations). The server ends at the same state: totals only add up (and saturate alike).
/// - lww: the last write of the run. A client's writes follow each other, so each supersedes
///   the one before; the server ends at the same value, with fewer dots.
/// - mv: a write is dropped when a later write of the run supersedes at least what it did:
///   the later one has no `seen`, or both have one and the earlier's is below the later's.
///   The later write supersedes the earlier's value (an author's own) and every value the
///   earlier one did, so the server ends at the same values.
/// - set: kept as they are. A remove without `seen` removes what the server holds when it
///   applies it, adds from others included, so dropping an add and a remove that cancel out
///   is not equivalent.
/// - clset: kept as they are. Whether an add or a remove lengthens an element depends on its
///   presence when the server applies it, and the lengths decide concurrent merges.
/// - list: kept as they are. An index means a position in the list as the server holds it
///   when it applies the action, which other authors' inserts and deletes may have changed in
///   between, so an insert and a later delete of the same index need not cancel out.
/// - map: a `map/set` is dropped when the next operation kept is a `map/set` to the same path
///   that covers it as for mv. The earlier write is refused exactly when the later one would
///   be on the same state (same path, same checks), and otherwise the later one supersedes its
///   value and everything it superseded. A run of consecutive `map/inc` and `map/dec` at one
///   path becomes one `map/inc` and one `map/dec`, as for counters: the author's totals
///   there end the same (under fewer dots); the first operation of the run meets the same
///   checks as the folded one, and the later ones add no key and no dot (only a dot counter
///   or cloud at its limit could refuse them). A `map/put` is dropped when the next operation
///   kept is a `map/put` to the same path: the later one supersedes every write the earlier
///   one did or superseded, at a time no lower (the earlier write's time is among those it
///   supersedes), and is refused exactly when the earlier one would be on the same state.
///   Everything else is kept: `remove`, `add` and `delete` act on
///   what the server holds when it applies them, as for sets, and `cladd` and `cldelete`
///   lengthen an element only when that changes its presence then, as for clsets.
///
/// Operations on one key separated by another key's are not folded together, so the folded
/// queue shows other clients the same order of changes across objects.
pub fn fold_queue(ops: &[Op]) -> Vec<Op> {
    let mut folded = Vec::with_capacity(ops.len());
    let mut rest = ops;
    while let Some(first) = rest.first() {
        let run_len = rest.iter().take_while(|op| op.key == first.key && op.kind() == first.kind()).count();
        let (run, tail) = rest.split_at(run_len);
        match first.kind() {
            Kind::Counter => fold_counter_run(run, &mut folded),
            Kind::Lww => folded.extend(run.last().cloned()),
            Kind::Mv => fold_mv_run(run, &mut folded),
            Kind::Map => fold_map_run(run, &mut folded),
            Kind::Set | Kind::ClSet | Kind::List => folded.extend(run.iter().cloned()),
        }
        rest = tail;
    }
    folded
}

/// Appends the writes of `run` (mv writes on one key) that no later write supersedes.
fn fold_mv_run(run: &[Op], folded: &mut Vec<Op>) {
    let start = folded.len();
    for op in run {
        while folded.len() > start && folded.last().is_some_and(|earlier| mv_covers(op, earlier)) {
            folded.pop();
        }
        folded.push(op.clone());
    }
}

/// Appends the operations of `run` (map operations on one key) but the `map/set` writes that
/// the next write to the same path supersedes, with each run of consecutive `map/inc` and
/// `map/dec` at one path folded into one of each.
fn fold_map_run(run: &[Op], folded: &mut Vec<Op>) {
    let start = folded.len();
    let mut rest = run;
    while let Some(op) = rest.first() {
        let counted = rest.iter().take_while(|later| same_counter(later, op)).count();
        if counted > 0 {
            let (counter_run, tail) = rest.split_at(counted);
            fold_map_counter_run(counter_run, folded);
            rest = tail;
            continue;
        }
        let covers = |earlier: &Op| map_set_covers(op, earlier) || map_put_covers(op, earlier);
        while folded.len() > start && folded.last().is_some_and(covers) {
            folded.pop();
        }
        folded.push(op.clone());
        rest = &rest[1..];
    }
}

/// Whether `op` is a `map/inc` or `map/dec` at the path of `first`, itself one of them.
fn same_counter(op: &Op, first: &Op) -> bool {
    match (&op.change, &first.change) {
        (
            Change::MapInc { path, .. } | Change::MapDec { path, .. },
            Change::MapInc { path: first_path, .. } | Change::MapDec { path: first_path, .. },
        ) => path == first_path,
        _ => false,
    }
}

/// Appends the folded increments and decrements of `run`, `map/inc` and `map/dec` at one
/// path: the author's totals there grow by the same sums (and saturate alike), so the
/// counter ends at the same value, under one dot fewer per operation folded away.
fn fold_map_counter_run(run: &[Op], folded: &mut Vec<Op>) {
    let Some(first) = run.first() else { return };
    let (Change::MapInc { path, .. } | Change::MapDec { path, .. }) = &first.change else { return };
    let (mut inc, mut dec) = (0u128, 0u128);
    for op in run {
        match op.change {
            Change::MapInc { by, .. } => inc += u128::from(by),
            Change::MapDec { by, .. } => dec += u128::from(by),
            _ => {}
        }
    }
    let inc_op: fn(Vec<String>, u64) -> Change = |path, by| Change::MapInc { path, by };
    let dec_op: fn(Vec<String>, u64) -> Change = |path, by| Change::MapDec { path, by };
    let mut totals = [(inc, inc_op), (dec, dec_op)];
    if matches!(first.change, Change::MapDec { .. }) {
        totals.reverse();
    }
    for (mut total, change) in totals {
        while total > 0 {
            let by = u64::try_from(total.min(u128::from(BY_MAX))).unwrap_or(BY_MAX);
            folded.push(Op { key: first.key.clone(), change: change(path.clone(), by) });
            total -= u128::from(by);
        }
    }
}

/// Whether `later` is a `map/set` that supersedes every value the `map/set` `earlier`
/// wrote or superseded: the same path, and no `seen` or one above the earlier's.
fn map_set_covers(later: &Op, earlier: &Op) -> bool {
    match (&later.change, &earlier.change) {
        (Change::MapSet { path: later_path, seen, .. }, Change::MapSet { path, seen: earlier_seen, .. })
            if later_path == path =>
        {
            match (seen, earlier_seen) {
                (None, _) => true,
                (Some(later), Some(earlier)) => earlier.le(later),
                (Some(_), None) => false,
            }
        }
        _ => false,
    }
}

/// Whether `later` and `earlier` are both `map/put` to the same path (the later one then
/// supersedes the earlier one and everything it superseded).
fn map_put_covers(later: &Op, earlier: &Op) -> bool {
    matches!(
        (&later.change, &earlier.change),
        (Change::MapPut { path: later_path, .. }, Change::MapPut { path, .. }) if later_path == path
    )
}

/// Whether the mv write `later` supersedes every value the earlier write `earlier` did.
fn mv_covers(later: &Op, earlier: &Op) -> bool {
    match (&later.change, &earlier.change) {
        (Change::MvSet { seen: None, .. }, _) => true,
        (Change::MvSet { seen: Some(later), .. }, Change::MvSet { seen: Some(earlier), .. }) => {
            earlier.le(later)
        }
        _ => false,
    }
}

/// Appends the folded increments and decrements of `run`, counter operations on one key.
fn fold_counter_run(run: &[Op], folded: &mut Vec<Op>) {
    let Some(first) = run.first() else { return };
    // A u128 holds any run: fewer than 2^64 operations of at most 2^53 each.
    let (mut inc, mut dec) = (0u128, 0u128);
    for op in run {
        match op.change {
            Change::CounterInc { by } => inc += u128::from(by),
            Change::CounterDec { by } => dec += u128::from(by),
            _ => {}
        }
    }
    let inc_op: fn(u64) -> Change = |by| Change::CounterInc { by };
    let dec_op: fn(u64) -> Change = |by| Change::CounterDec { by };
    let mut totals = [(inc, inc_op), (dec, dec_op)];
    if matches!(first.change, Change::CounterDec { .. }) {
        totals.reverse();
    }
    for (mut total, change) in totals {
        while total > 0 {
            let by = u64::try_from(total.min(u128::from(BY_MAX))).unwrap_or(BY_MAX);
            folded.push(Op { key: first.key.clone(), change: change(by) });
            total -= u128::from(by);
        }
    }
}

/// The operation that takes back `op`'s effect on a counter, for a counter operation (`None`
/// for any other): a decrement for an increment and the other way round. (Not a map
/// counter's: a removal of the key may have retired the operation's dot meanwhile, and its
/// inverse would then count against nothing.)
pub fn inverse(op: &Op) -> Option<Op> {
    let change = match op.change() {
        Change::CounterInc { by } => Change::CounterDec { by: *by },
        Change::CounterDec { by } => Change::CounterInc { by: *by },
        _ => return None,
    };
    Some(Op { key: op.key.clone(), change })
}

/// Takes back, in place, the effect of `op` (a counter operation that `author` made before,
/// see [`inverse`]) and returns the delta, to ship: a refused counter operation whose
/// author's later operations carry it in their running totals is so taken out of the value
/// without going back on those totals (docs/edge.md).
///
/// The delta carries both of the author's totals, the one that holds `op` as well as the
/// other: whoever joins it holds `op` and its inverse together, so it counts nothing whether
/// or not they hold the operations that came after `op`. Refused (and `state` unchanged) for
/// any other operation.
pub fn undo_in_place(state: &mut Object, op: &Op, author: &NodeId) -> Result<Object, OpError> {
    let inverse = inverse(op).ok_or(OpError::WrongShape("only a counter operation is taken back"))?;
    check_applies(state, &inverse, author)?;
    let Object::Counter(counter) = state else {
        return Err(OpError::WrongShape("a counter operation on a counter"));
    };
    check_counter_nodes(counter, author)?;
    match inverse.change {
        Change::CounterDec { by } => counter.apply_dec(author, by),
        Change::CounterInc { by } => counter.apply_inc(author, by),
        _ => return Err(OpError::WrongShape("a counter operation on a counter")),
    };
    Ok(Object::Counter(PnCounter::from_entries([(author.clone(), counter.entry(author))])))
}

/// The delta that takes back what `delta`, a delta this server made of a set add, added: no
/// element, and a context of the dots its elements hold. Joining it retires exactly those
/// dots: an element someone else added too (another dot) stays. A server whose application
/// of an operation yields to another's so takes its own back (docs/edge.md). `None` for a
/// delta of another kind, or one that holds no element.
pub fn retire_adds(delta: &Object) -> Option<Object> {
    let Object::Set(set) = delta else { return None };
    let mut context = CausalContext::new();
    for elem in set.iter() {
        for dot in set.dots(elem) {
            context.insert(dot.clone());
        }
    }
    if set.is_empty() {
        return None;
    }
    Orswot::from_parts(std::collections::BTreeMap::new(), context).map(Object::Set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CausalContext, MvRegister, VersionVector};
    use serde_json::json;

    fn action(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn reason(v: Value) -> &'static str {
        match parse(&action(v.clone())) {
            Ok(op) => panic!("{v} parsed as {op:?}"),
            Err(e) => e.reason(),
        }
    }

    fn op(v: Value) -> Op {
        match parse(&action(v.clone())) {
            Ok(op) => op,
            Err(e) => panic!("{v} refused: {e}"),
        }
    }

    fn node(s: &str) -> NodeId {
        NodeId::from(s)
    }

    #[test]
    fn parses_every_action_type() {
        let inc = op(json!({"type": "crdt/counter/inc", "key": "posts/7/likes", "by": 3}));
        assert_eq!(inc.key().as_str(), "posts/7/likes");
        assert_eq!(inc.change(), &Change::CounterInc { by: 3 });
        assert_eq!(inc.kind(), Kind::Counter);
        assert_eq!(inc.channel(), Channel::from("crdt/posts/7/likes"));
        let dec = op(json!({"type": "crdt/counter/dec", "key": "k"}));
        assert_eq!(dec.change(), &Change::CounterDec { by: 1 }, "by defaults to 1");
        let most = op(json!({"type": "crdt/counter/inc", "key": "k", "by": BY_MAX}));
        assert_eq!(most.change(), &Change::CounterInc { by: BY_MAX });
        let lww = op(json!({"type": "crdt/lww/set", "key": "k", "value": {"a": [1, null]}}));
        assert_eq!(lww.change(), &Change::LwwSet { value: json!({"a": [1, null]}) });
        assert_eq!(lww.kind(), Kind::Lww);
        let mv = op(json!({"type": "crdt/mv/set", "key": "k", "value": null}));
        assert_eq!(mv.change(), &Change::MvSet { value: Value::Null, seen: None });
        let mv = op(json!({"type": "crdt/mv/set", "key": "k", "value": 1, "seen": {"a": 2}}));
        let seen = Some([(node("a"), 2)].into_iter().collect());
        assert_eq!(mv.change(), &Change::MvSet { value: json!(1), seen });
        assert_eq!(parse(&mv.to_action()), Ok(mv.clone()));
        assert_eq!(mv.kind(), Kind::Mv);
        let longest = "k".repeat(KEY_BYTES_MAX);
        assert_eq!(op(json!({"type": "crdt/mv/set", "key": longest, "value": 1})).key().as_str(), longest);
    }

    #[test]
    fn to_action_parses_back() {
        for v in [
            json!({"type": "crdt/counter/inc", "key": "k", "by": 3}),
            json!({"type": "crdt/counter/dec", "key": "k", "by": 1}),
            json!({"type": "crdt/lww/set", "key": "k", "value": [1]}),
            json!({"type": "crdt/mv/set", "key": "k", "value": "x"}),
        ] {
            let op = op(v.clone());
            assert_eq!(Value::Object(op.to_action()), v);
            assert_eq!(parse(&op.to_action()), Ok(op));
        }
    }

    #[test]
    fn unknown_types() {
        for t in ["crdt/set/put", "crdt/counter/mul", "crdt/counter", "", "logux/subscribe", "CRDT/LWW/SET"] {
            assert_eq!(reason(json!({"type": t, "key": "k"})), "crdtUnknownType", "{t}");
        }
        let long = format!("{}é", "x".repeat(63));
        let err = parse(&action(json!({"type": long, "key": "k"}))).err();
        assert_eq!(err, Some(OpError::UnknownType("x".repeat(63))), "cut before a split character");
    }

    #[test]
    fn wrong_shapes() {
        for v in [
            json!({"key": "k"}),
            json!({"type": 1, "key": "k"}),
            json!({"type": null, "key": "k"}),
            json!({"type": "crdt/counter/inc"}),
            json!({"type": "crdt/counter/inc", "key": 7}),
            json!({"type": "crdt/counter/inc", "key": ["k"]}),
            json!({"type": "crdt/counter/inc", "key": ""}),
            json!({"type": "crdt/counter/inc", "key": "k", "by": 0}),
            json!({"type": "crdt/counter/inc", "key": "k", "by": -1}),
            json!({"type": "crdt/counter/inc", "key": "k", "by": 1.5}),
            json!({"type": "crdt/counter/inc", "key": "k", "by": 1.0}),
            json!({"type": "crdt/counter/dec", "key": "k", "by": "1"}),
            json!({"type": "crdt/counter/dec", "key": "k", "by": null}),
            json!({"type": "crdt/counter/dec", "key": "k", "by": BY_MAX + 1}),
            json!({"type": "crdt/counter/dec", "key": "k", "by": u64::MAX}),
            json!({"type": "crdt/counter/inc", "key": "k", "bye": 5}),
            json!({"type": "crdt/counter/inc", "key": "k", "value": 5}),
            json!({"type": "crdt/lww/set", "key": "k"}),
            json!({"type": "crdt/lww/set", "key": "k", "value": 1, "by": 1}),
            json!({"type": "crdt/mv/set", "value": 1}),
            json!({"type": "crdt/mv/set", "key": "k", "value": 1, "by": 1}),
            json!({"type": "crdt/mv/set", "key": "k", "value": 1, "seen": [["a", 1]]}),
            json!({"type": "crdt/mv/set", "key": "k", "value": 1, "seen": {"a": 0}}),
            json!({"type": "crdt/lww/set", "key": "k", "value": 1, "seen": {"a": 1}}),
        ] {
            assert_eq!(reason(v.clone()), "crdtWrongShape", "{v}");
        }
    }

    #[test]
    fn too_big() {
        let key = "k".repeat(KEY_BYTES_MAX + 1);
        assert_eq!(reason(json!({"type": "crdt/counter/inc", "key": key})), "crdtTooBig");
        let value = "x".repeat(VALUE_BYTES_MAX);
        assert_eq!(reason(json!({"type": "crdt/lww/set", "key": "k", "value": value})), "crdtTooBig");
        assert_eq!(reason(json!({"type": "crdt/mv/set", "key": "k", "value": [value]})), "crdtTooBig");
        let key = Key::parse("k").unwrap();
        assert_eq!(Op::new(key, Change::CounterInc { by: 0 }).map_err(|e| e.reason()), Err("crdtWrongShape"));
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(OpError::UnknownType("crdt/x".into()).to_string(), "unknown CRDT action type \"crdt/x\"");
        assert_eq!(
            OpError::TooBig { what: "bytes of a key", max: 512 }.to_string(),
            "too big: more than 512 bytes of a key"
        );
        assert_eq!(
            OpError::TypeMismatch { expected: Kind::Counter, found: Kind::Mv }.to_string(),
            "a mv operation on a counter object"
        );
        assert_eq!(OpError::WrongShape("`value` is missing").to_string(), "wrong shape: `value` is missing");
    }

    /// Applies `op` as `author` at `time_ms` and joins the delta into `state`; returns the delta.
    fn step(state: &mut Object, v: Value, author: &str, time_ms: i64) -> Object {
        let delta = apply(state, &op(v), &node(author), time_ms).unwrap();
        state.join(&delta).unwrap();
        delta
    }

    #[test]
    fn apply_counter() {
        let mut state = Object::bottom(Kind::Counter);
        step(&mut state, json!({"type": "crdt/counter/inc", "key": "k", "by": 5}), "a", 0);
        let delta = step(&mut state, json!({"type": "crdt/counter/dec", "key": "k", "by": 2}), "a", 0);
        assert_eq!(delta.to_json(), json!({"a": [0, 2]}), "the author's new total of decrements");
        step(&mut state, json!({"type": "crdt/counter/dec", "key": "k"}), "b", 0);
        assert_eq!(state.to_json(), json!({"a": [5, 2], "b": [0, 1]}));
    }

    #[test]
    fn apply_lww_numbers_the_authors_writes_and_drops_losers() {
        let set = |v: i32| json!({"type": "crdt/lww/set", "key": "k", "value": v});
        let mut state = Object::bottom(Kind::Lww);
        let d = step(&mut state, set(1), "a", 10);
        assert_eq!(d.to_json(), json!({"time": 10, "dot": ["a", 1], "value": 1}));
        let d = step(&mut state, set(2), "a", 10);
        assert_eq!(d.to_json(), json!({"time": 10, "dot": ["a", 2], "value": 2}), "same ms: next counter");
        let d = step(&mut state, set(3), "b", 10);
        assert_eq!(d.to_json(), json!({"time": 10, "dot": ["b", 1], "value": 3}), "b > a breaks the tie");
        let d = step(&mut state, set(4), "a", 10);
        assert!(d.is_bottom(), "(10, a, 1) is below (10, b, 1): the write loses, nothing is shipped");
        let d = step(&mut state, set(5), "a", 9);
        assert!(d.is_bottom(), "an earlier time loses");
        let d = step(&mut state, set(6), "a", 11);
        assert_eq!(d.to_json(), json!({"time": 11, "dot": ["a", 1], "value": 6}));
        assert_eq!(state.to_json(), d.to_json());
        let d = step(&mut state, set(7), "a", 8);
        assert_eq!(
            d.to_json(),
            json!({"time": 11, "dot": ["a", 2], "value": 7}),
            "a write after the author's own value wins even when its clock went back"
        );
        assert_eq!(state.to_json(), d.to_json());
    }

    #[test]
    fn apply_lww_refuses_a_counter_past_the_limit() {
        let top = LwwRegister::new().set(json!(0), Stamp::new(5, Dot::new("a", COUNTER_MAX)));
        let state = Object::Lww(top);
        let set = op(json!({"type": "crdt/lww/set", "key": "k", "value": 1}));
        assert_eq!(apply(&state, &set, &node("a"), 6).map_err(|e| e.reason()), Err("crdtTooBig"));
        assert!(apply(&state, &set, &node("b"), 6).is_ok(), "another author starts at 1");
    }

    #[test]
    fn apply_mv_supersedes_what_the_server_holds() {
        let set = |v: i32| json!({"type": "crdt/mv/set", "key": "k", "value": v});
        let mut state = Object::bottom(Kind::Mv);
        step(&mut state, set(1), "a", 0);
        step(&mut state, set(2), "b", 0);
        let d = step(&mut state, set(3), "a", 0);
        assert_eq!(
            d.to_json(),
            json!({"values": [["a", 2, 3]], "context": {"vv": {"b": 1}, "cloud": [["a", 2]]}})
        );
        assert_eq!(state.to_json(), json!({"values": [["a", 2, 3]], "context": {"vv": {"a": 2, "b": 1}}}));
    }

    #[test]
    fn apply_mv_with_seen_keeps_concurrent_writes() {
        let set = |v: i32, seen: Value| json!({"type": "crdt/mv/set", "key": "k", "value": v, "seen": seen});
        let mut state = Object::bottom(Kind::Mv);
        step(&mut state, json!({"type": "crdt/mv/set", "key": "k", "value": 0}), "a", 0);
        // b and c both read {a: 1} and wrote offline; both writes survive on one server.
        step(&mut state, set(1, json!({"a": 1})), "b", 0);
        let d = step(&mut state, set(2, json!({"a": 1})), "c", 0);
        assert_eq!(
            d.to_json(),
            json!({"values": [["c", 1, 2]], "context": {"vv": {"c": 1}}}),
            "b's write already superseded (a, 1), and c's does not supersede b's"
        );
        assert_eq!(
            state.to_json(),
            json!({"values": [["b", 1, 1], ["c", 1, 2]], "context": {"vv": {"a": 1, "b": 1, "c": 1}}})
        );
        // An author's own earlier writes count as seen; a write that saw both replaces them.
        step(&mut state, set(3, json!({"a": 1})), "b", 0);
        assert_eq!(state.to_json()["values"], json!([["b", 2, 3], ["c", 1, 2]]));
        step(&mut state, set(4, json!({"b": 2, "c": 1})), "a", 0);
        assert_eq!(state.to_json()["values"], json!([["a", 2, 4]]));
    }

    #[test]
    fn apply_mv_refuses_more_concurrent_values_than_a_document_holds() {
        let mut state = Object::bottom(Kind::Mv);
        let write = json!({"type": "crdt/mv/set", "key": "k", "value": 1, "seen": {}});
        for i in 0..MV_VALUES_MAX {
            step(&mut state, write.clone(), &format!("n{i}"), 0);
        }
        let refused = apply(&state, &op(write), &node("one-more"), 0);
        assert_eq!(refused.map_err(|e| e.reason()), Err("crdtTooBig"));
        // What the server built still reads back.
        assert_eq!(Object::from_json(Kind::Mv, &state.to_json()).unwrap(), state);
    }

    #[test]
    fn apply_refuses_another_kind_and_bad_authors() {
        let inc = op(json!({"type": "crdt/counter/inc", "key": "k"}));
        for kind in [Kind::Lww, Kind::Mv] {
            let err = apply(&Object::bottom(kind), &inc, &node("a"), 0).err();
            assert_eq!(err, Some(OpError::TypeMismatch { expected: kind, found: Kind::Counter }));
        }
        let set = op(json!({"type": "crdt/mv/set", "key": "k", "value": 1}));
        let err = apply(&Object::bottom(Kind::Counter), &set, &node("a"), 0).map_err(|e| e.reason());
        assert_eq!(err, Err("crdtTypeMismatch"));
        for author in ["", "a b", "a\n"] {
            let err = apply(&Object::bottom(Kind::Counter), &inc, &node(author), 0).map_err(|e| e.reason());
            assert_eq!(err, Err("crdtWrongShape"), "{author:?}");
        }
    }

    #[test]
    fn apply_refuses_a_node_beyond_the_limit() {
        let full =
            PnCounter::from_entries((0..NODES_MAX).map(|i| (node(&format!("n{i}")), PnEntry { p: 1, n: 0 })));
        let state = Object::Counter(full);
        let inc = op(json!({"type": "crdt/counter/inc", "key": "k"}));
        assert_eq!(apply(&state, &inc, &node("new"), 0).map_err(|e| e.reason()), Err("crdtTooBig"));
        assert!(apply(&state, &inc, &node("n7"), 0).is_ok(), "a known node may go on");

        let vv: VersionVector = (0..NODES_MAX).map(|i| (node(&format!("n{i}")), 1)).collect();
        let full = MvRegister::from_parts(Default::default(), CausalContext::from_vv(vv));
        let state = Object::Mv(full.unwrap());
        let set = op(json!({"type": "crdt/mv/set", "key": "k", "value": 1}));
        assert_eq!(apply(&state, &set, &node("new"), 0).map_err(|e| e.reason()), Err("crdtTooBig"));
        assert!(apply(&state, &set, &node("n7"), 0).is_ok());
    }

    #[test]
    fn parses_set_actions() {
        let add = op(json!({"type": "crdt/set/add", "key": "boards/3/tags", "elem": "urgent"}));
        assert_eq!(add.change(), &Change::SetAdd { elem: Scalar::from("urgent") });
        assert_eq!(add.kind(), Kind::Set);
        for (elem, scalar) in [
            (json!(null), Scalar::Null),
            (json!(false), Scalar::Bool(false)),
            (json!(-7), Scalar::Int(-7)),
            (json!(0.5), Scalar::float(0.5)),
        ] {
            let add = op(json!({"type": "crdt/set/add", "key": "k", "elem": elem}));
            assert_eq!(add.change(), &Change::SetAdd { elem: scalar });
        }
        let remove = op(json!({"type": "crdt/set/remove", "key": "k", "elem": 1}));
        assert_eq!(remove.change(), &Change::SetRemove { elem: Scalar::Int(1), seen: None });
        let remove = op(json!({"type": "crdt/set/remove", "key": "k", "elem": 1, "seen": {"a": 2, "b": 1}}));
        let seen: VersionVector = [(node("a"), 2), (node("b"), 1)].into_iter().collect();
        assert_eq!(remove.change(), &Change::SetRemove { elem: Scalar::Int(1), seen: Some(seen) });
        let longest = json!("x".repeat(ELEM_BYTES_MAX - 2));
        assert!(parse(&action(json!({"type": "crdt/set/add", "key": "k", "elem": longest}))).is_ok());
        for v in [
            json!({"type": "crdt/set/add", "key": "k", "elem": 1.5}),
            json!({"type": "crdt/set/remove", "key": "k", "elem": "x"}),
            json!({"type": "crdt/set/remove", "key": "k", "elem": "x", "seen": {}}),
            json!({"type": "crdt/set/remove", "key": "k", "elem": null, "seen": {"a": 3}}),
        ] {
            assert_eq!(Value::Object(op(v.clone()).to_action()), v);
        }
    }

    #[test]
    fn set_actions_of_the_wrong_shape() {
        for v in [
            json!({"type": "crdt/set/add", "key": "k"}),
            json!({"type": "crdt/set/add", "key": "k", "elem": [1]}),
            json!({"type": "crdt/set/add", "key": "k", "elem": {"a": 1}}),
            json!({"type": "crdt/set/add", "key": "k", "elem": u64::MAX}),
            json!({"type": "crdt/set/add", "key": "k", "elem": 1, "seen": {"a": 1}}),
            json!({"type": "crdt/set/add", "key": "k", "value": 1}),
            json!({"type": "crdt/set/remove", "key": "k"}),
            json!({"type": "crdt/set/remove", "key": "k", "elem": 1, "seen": [["a", 1]]}),
            json!({"type": "crdt/set/remove", "key": "k", "elem": 1, "seen": {"a": 0}}),
            json!({"type": "crdt/set/remove", "key": "k", "elem": 1, "seen": {"a": -1}}),
            json!({"type": "crdt/set/remove", "key": "k", "elem": 1, "seen": {"a": COUNTER_MAX + 1}}),
            json!({"type": "crdt/set/remove", "key": "k", "elem": 1, "seen": {"a b": 1}}),
            json!({"type": "crdt/set/remove", "key": "k", "elem": 1, "seen": null}),
        ] {
            assert_eq!(reason(v.clone()), "crdtWrongShape", "{v}");
        }
        let key = Key::parse("k").unwrap();
        let nan = Change::SetAdd { elem: Scalar::float(f64::NAN) };
        assert_eq!(Op::new(key.clone(), nan).map_err(|e| e.reason()), Err("crdtWrongShape"));
        let high: VersionVector = [(node("a"), COUNTER_MAX + 1)].into_iter().collect();
        let remove = Change::SetRemove { elem: Scalar::Null, seen: Some(high) };
        assert_eq!(Op::new(key, remove).map_err(|e| e.reason()), Err("crdtWrongShape"));
    }

    #[test]
    fn set_actions_too_big() {
        let elem = "x".repeat(ELEM_BYTES_MAX - 1);
        assert_eq!(reason(json!({"type": "crdt/set/add", "key": "k", "elem": elem})), "crdtTooBig");
        assert_eq!(reason(json!({"type": "crdt/set/remove", "key": "k", "elem": elem})), "crdtTooBig");
        let seen: Map<String, Value> = (0..=NODES_MAX).map(|i| (format!("n{i}"), json!(1))).collect();
        let remove = json!({"type": "crdt/set/remove", "key": "k", "elem": 1, "seen": seen});
        assert_eq!(reason(remove), "crdtTooBig");
    }

    #[test]
    fn apply_set_adds_and_removes() {
        let add = |e: &str| json!({"type": "crdt/set/add", "key": "k", "elem": e});
        let remove = |e: &str| json!({"type": "crdt/set/remove", "key": "k", "elem": e});
        let mut state = Object::bottom(Kind::Set);
        let d = step(&mut state, add("x"), "a", 0);
        assert_eq!(d.to_json(), json!({"elems": [["x", "a", 1]], "context": {"vv": {"a": 1}}}));
        step(&mut state, add("y"), "b", 0);
        let d = step(&mut state, add("x"), "b", 0);
        assert_eq!(
            d.to_json(),
            json!({"elems": [["x", "b", 2]], "context": {"vv": {"a": 1}, "cloud": [["b", 2]]}}),
            "a re-add replaces the element's dots"
        );
        let d = step(&mut state, remove("x"), "c", 0);
        assert_eq!(d.to_json(), json!({"elems": [], "context": {"vv": {}, "cloud": [["b", 2]]}}));
        assert!(step(&mut state, remove("x"), "c", 0).is_bottom(), "an absent element");
        assert_eq!(state.to_json(), json!({"elems": [["y", "b", 1]], "context": {"vv": {"a": 1, "b": 2}}}));
    }

    #[test]
    fn apply_set_remove_with_seen_keeps_adds_it_did_not_see() {
        let add = json!({"type": "crdt/set/add", "key": "k", "elem": "x"});
        let mut state = Object::bottom(Kind::Set);
        step(&mut state, add.clone(), "a", 0);
        // b saw a's add (a: 1); c adds x concurrently on another server; b's remove leaves
        // c's add.
        let concurrent = apply(&Object::bottom(Kind::Set), &op(add), &node("c"), 0).unwrap();
        state.join(&concurrent).unwrap();
        let remove = json!({"type": "crdt/set/remove", "key": "k", "elem": "x", "seen": {"a": 1}});
        let d = step(&mut state, remove, "b", 0);
        assert_eq!(d.to_json(), json!({"elems": [], "context": {"vv": {"a": 1}}}), "only what b saw");
        let Object::Set(set) = &state else { panic!("a set") };
        assert!(set.contains(&Scalar::from("x")), "add wins");
        assert_eq!(set.dots(&Scalar::from("x")).collect::<Vec<_>>(), [&Dot::new("c", 1)]);
        // An author's own adds count as seen, even ones its `seen` does not cover.
        let remove = json!({"type": "crdt/set/remove", "key": "k", "elem": "x", "seen": {}});
        step(&mut state, remove, "c", 0);
        assert_eq!(state.to_json(), json!({"elems": [], "context": {"vv": {"a": 1, "c": 1}}}));
    }

    #[test]
    fn apply_set_refuses_an_element_beyond_the_limit() {
        let entries = (1..=SET_ELEMS_MAX as u64).map(|i| (Scalar::Int(i as i64), [Dot::new("a", i)].into()));
        let context = CausalContext::from_vv([(node("a"), SET_ELEMS_MAX as u64)].into_iter().collect());
        let state = Object::Set(crate::Orswot::from_parts(entries.collect(), context).unwrap());
        let add = |e: i64| op(json!({"type": "crdt/set/add", "key": "k", "elem": e}));
        let err = apply(&state, &add(-1), &node("a"), 0).map_err(|e| e.reason());
        assert_eq!(err, Err("crdtTooBig"));
        assert!(apply(&state, &add(7), &node("a"), 0).is_ok(), "a present element may be added again");
        let err = apply(&Object::bottom(Kind::Mv), &add(1), &node("a"), 0).map_err(|e| e.reason());
        assert_eq!(err, Err("crdtTypeMismatch"));
    }

    #[test]
    fn apply_in_place_refuses_what_apply_refuses_and_leaves_the_state() {
        let full_counter =
            PnCounter::from_entries((0..NODES_MAX).map(|i| (node(&format!("n{i}")), PnEntry { p: 1, n: 0 })));
        let entries = (1..=SET_ELEMS_MAX as u64).map(|i| (Scalar::Int(i as i64), [Dot::new("a", i)].into()));
        let context = CausalContext::from_vv([(node("a"), SET_ELEMS_MAX as u64)].into_iter().collect());
        let full_set = crate::Orswot::from_parts(entries.collect(), context).unwrap();
        let inc = op(json!({"type": "crdt/counter/inc", "key": "k"}));
        let add = op(json!({"type": "crdt/set/add", "key": "k", "elem": -1}));
        let refused = [
            (Object::Counter(full_counter), &inc, "new"),
            (Object::bottom(Kind::Counter), &inc, "a b"),
            (Object::bottom(Kind::Set), &inc, "a"),
            (Object::Set(full_set), &add, "a"),
            (Object::bottom(Kind::Counter), &add, "a"),
            (Object::bottom(Kind::Set), &add, ""),
        ];
        for (state, op, author) in refused {
            let expected = apply(&state, op, &node(author), 0).map(drop);
            assert!(expected.is_err(), "{op:?} by {author:?}");
            let mut in_place = state.clone();
            let got = apply_in_place(&mut in_place, op, &node(author), 0).map(drop);
            assert_eq!(got, expected, "{op:?} by {author:?}");
            assert!(in_place == state, "{op:?} by {author:?} changed the state");
        }
    }

    #[test]
    fn fold_mv_drops_writes_a_later_one_covers() {
        let mv = |v: i32, seen: Option<Value>| {
            let mut action = json!({"type": "crdt/mv/set", "key": "k", "value": v});
            if let Some(seen) = seen {
                action["seen"] = seen;
            }
            op(action)
        };
        let a1 = Some(json!({"a": 1}));
        let a2b1 = Some(json!({"a": 2, "b": 1}));
        let b1 = Some(json!({"b": 1}));
        let queue = [mv(1, a1.clone()), mv(2, a2b1.clone()), mv(3, None)];
        assert_eq!(fold_queue(&queue), [mv(3, None)], "no seen covers everything");
        let queue = [mv(1, a1.clone()), mv(2, a2b1.clone())];
        assert_eq!(fold_queue(&queue), [mv(2, a2b1.clone())]);
        let queue = [mv(1, None), mv(2, a2b1.clone())];
        assert_eq!(fold_queue(&queue), queue, "a seen does not cover everything");
        let queue = [mv(1, a1.clone()), mv(2, b1.clone())];
        assert_eq!(fold_queue(&queue), queue, "incomparable views");
        let queue = [mv(1, a1.clone()), mv(2, b1.clone()), mv(3, a2b1.clone())];
        assert_eq!(fold_queue(&queue), [mv(3, a2b1)], "covers both");
    }

    #[test]
    fn fold_keeps_set_runs_as_they_are() {
        let add = op(json!({"type": "crdt/set/add", "key": "k", "elem": 1}));
        let remove = op(json!({"type": "crdt/set/remove", "key": "k", "elem": 1}));
        let queue = [add.clone(), remove.clone(), add.clone(), add];
        assert_eq!(fold_queue(&queue), queue);
    }

    #[test]
    fn parses_clset_actions() {
        let add = op(json!({"type": "crdt/clset/add", "key": "k", "elem": "x"}));
        assert_eq!(add.change(), &Change::ClSetAdd { elem: Scalar::from("x") });
        assert_eq!(add.kind(), Kind::ClSet);
        let remove = op(json!({"type": "crdt/clset/remove", "key": "k", "elem": 2}));
        assert_eq!(remove.change(), &Change::ClSetRemove { elem: Scalar::Int(2) });
        for op in [add, remove] {
            assert_eq!(parse(&op.to_action()), Ok(op));
        }
        for v in [
            json!({"type": "crdt/clset/add", "key": "k"}),
            json!({"type": "crdt/clset/add", "key": "k", "elem": [1]}),
            json!({"type": "crdt/clset/remove", "key": "k", "elem": 1, "seen": {"a": 1}}),
        ] {
            assert_eq!(reason(v.clone()), "crdtWrongShape", "{v}");
        }
        let elem = "x".repeat(ELEM_BYTES_MAX);
        assert_eq!(reason(json!({"type": "crdt/clset/add", "key": "k", "elem": elem})), "crdtTooBig");
    }

    #[test]
    fn apply_clset_lengthens_only_on_a_change_of_presence() {
        let add = json!({"type": "crdt/clset/add", "key": "k", "elem": "x"});
        let remove = json!({"type": "crdt/clset/remove", "key": "k", "elem": "x"});
        let mut state = Object::bottom(Kind::ClSet);
        assert!(step(&mut state, remove.clone(), "a", 0).is_bottom(), "absent");
        assert_eq!(step(&mut state, add.clone(), "a", 0).to_json(), json!({"elems": [["x", 1]]}));
        assert!(step(&mut state, add.clone(), "b", 0).is_bottom(), "present");
        assert_eq!(step(&mut state, remove.clone(), "b", 0).to_json(), json!({"elems": [["x", 2]]}));
        assert_eq!(state.to_json(), json!({"elems": [["x", 2]]}));
    }

    #[test]
    fn apply_clset_refuses_beyond_the_limits() {
        let full = (0..SET_ELEMS_MAX as i64).map(|i| (Scalar::Int(i), 2)).collect();
        let state = Object::ClSet(crate::ClSet::from_lengths(full).unwrap());
        let add = |e: i64| op(json!({"type": "crdt/clset/add", "key": "k", "elem": e}));
        assert_eq!(apply(&state, &add(-1), &node("a"), 0).map_err(|e| e.reason()), Err("crdtTooBig"));
        assert!(apply(&state, &add(3), &node("a"), 0).is_ok(), "an element added before may come back");
        let long = crate::ClSet::from_lengths([(Scalar::Null, COUNTER_MAX)].into()).unwrap();
        let remove = op(json!({"type": "crdt/clset/remove", "key": "k", "elem": null}));
        let err = apply(&Object::ClSet(long), &remove, &node("a"), 0).map_err(|e| e.reason());
        assert_eq!(err, Err("crdtTooBig"));
        let err = apply(&Object::bottom(Kind::Set), &add(1), &node("a"), 0).map_err(|e| e.reason());
        assert_eq!(err, Err("crdtTypeMismatch"));
    }

    fn actions(ops: &[Op]) -> Vec<Value> {
        ops.iter().map(|op| Value::Object(op.to_action())).collect()
    }

    #[test]
    fn fold_counter_runs_into_one_inc_and_one_dec() {
        let inc = |key: &str, by: u64| op(json!({"type": "crdt/counter/inc", "key": key, "by": by}));
        let dec = |key: &str, by: u64| op(json!({"type": "crdt/counter/dec", "key": key, "by": by}));
        let ones: Vec<Op> = (0..1000).map(|_| inc("k", 1)).collect();
        assert_eq!(fold_queue(&ones), [inc("k", 1000)]);
        let mixed = [dec("k", 2), inc("k", 1), dec("k", 3), inc("k", 4), inc("j", 1), inc("k", 1)];
        assert_eq!(
            actions(&fold_queue(&mixed)),
            actions(&[dec("k", 5), inc("k", 5), inc("j", 1), inc("k", 1)]),
            "the first kind of change first; another key in between stops the run"
        );
        let big = [inc("k", BY_MAX), inc("k", BY_MAX), inc("k", 5)];
        assert_eq!(fold_queue(&big), [inc("k", BY_MAX), inc("k", BY_MAX), inc("k", 5)], "split at 2^53");
        assert_eq!(fold_queue(&[]), []);
    }

    #[test]
    fn fold_register_runs_keep_the_last_write() {
        let lww = |key: &str, v: i32| op(json!({"type": "crdt/lww/set", "key": key, "value": v}));
        let mv = |key: &str, v: i32| op(json!({"type": "crdt/mv/set", "key": key, "value": v}));
        let inc = op(json!({"type": "crdt/counter/inc", "key": "k"}));
        let queue = [lww("k", 1), lww("k", 2), mv("m", 1), mv("m", 2), mv("m", 3), lww("k", 3)];
        assert_eq!(fold_queue(&queue), [lww("k", 2), mv("m", 3), lww("k", 3)]);
        let kinds = [lww("k", 1), mv("k", 2), mv("k", 3), inc.clone(), inc.clone(), lww("k", 4)];
        assert_eq!(
            actions(&fold_queue(&kinds)),
            actions(&[
                lww("k", 1),
                mv("k", 3),
                op(json!({"type": "crdt/counter/inc", "key": "k", "by": 2})),
                lww("k", 4)
            ]),
            "a change of kind on one key stops the run: the server refuses all but one kind"
        );
    }
    #[test]
    fn parses_list_actions() {
        let insert =
            op(json!({"type": "crdt/list/insert", "key": "todo", "index": 2, "value": {"t": "milk"}}));
        assert_eq!(insert.change(), &Change::ListInsert { index: 2, value: json!({"t": "milk"}) });
        assert_eq!(insert.kind(), Kind::List);
        let delete = op(json!({"type": "crdt/list/delete", "key": "todo", "index": 0}));
        assert_eq!(delete.change(), &Change::ListDelete { index: 0 });
        let far = op(json!({"type": "crdt/list/insert", "key": "k", "index": u64::MAX, "value": null}));
        assert_eq!(far.change(), &Change::ListInsert { index: u64::MAX, value: Value::Null });
        for op in [insert, delete, far] {
            assert_eq!(parse(&op.to_action()), Ok(op));
        }
        let longest = "x".repeat(LIST_VALUE_BYTES_MAX - 2);
        assert!(parse(&action(
            json!({"type": "crdt/list/insert", "key": "k", "index": 0, "value": longest})
        ))
        .is_ok());
    }

    #[test]
    fn list_actions_of_the_wrong_shape_or_too_big() {
        for v in [
            json!({"type": "crdt/list/insert", "key": "k", "value": 1}),
            json!({"type": "crdt/list/insert", "key": "k", "index": 0}),
            json!({"type": "crdt/list/insert", "key": "k", "index": -1, "value": 1}),
            json!({"type": "crdt/list/insert", "key": "k", "index": 1.5, "value": 1}),
            json!({"type": "crdt/list/insert", "key": "k", "index": "0", "value": 1}),
            json!({"type": "crdt/list/insert", "key": "k", "index": 0, "value": 1, "after": ["a", 1]}),
            json!({"type": "crdt/list/delete", "key": "k"}),
            json!({"type": "crdt/list/delete", "key": "k", "index": null}),
            json!({"type": "crdt/list/delete", "key": "k", "index": 0, "value": 1}),
            json!({"type": "crdt/list/delete", "index": 0}),
        ] {
            assert_eq!(reason(v.clone()), "crdtWrongShape", "{v}");
        }
        let value = "x".repeat(LIST_VALUE_BYTES_MAX - 1);
        assert_eq!(
            reason(json!({"type": "crdt/list/insert", "key": "k", "index": 0, "value": value})),
            "crdtTooBig"
        );
        assert_eq!(reason(json!({"type": "crdt/list/move", "key": "k", "index": 0})), "crdtUnknownType");
    }

    #[test]
    fn apply_list_inserts_and_deletes_by_visible_index() {
        let insert =
            |index: u64, v: &str| json!({"type": "crdt/list/insert", "key": "k", "index": index, "value": v});
        let delete = |index: u64| json!({"type": "crdt/list/delete", "key": "k", "index": index});
        let mut state = Object::bottom(Kind::List);
        let d = step(&mut state, insert(0, "b"), "a", 0);
        assert_eq!(d.to_json(), json!({"elems": [["a", 1, null, 1, "b"]], "deleted": []}));
        step(&mut state, insert(0, "a"), "b", 0);
        let d = step(&mut state, insert(99, "c"), "a", 0);
        assert_eq!(d.to_json(), json!({"elems": [["a", 2, ["a", 1], 3, "c"]], "deleted": []}), "appended");
        step(&mut state, insert(u64::MAX, "d"), "b", 0);
        let d = step(&mut state, delete(1), "c", 0);
        assert_eq!(d.to_json(), json!({"elems": [], "deleted": [["a", 1]]}));
        assert!(step(&mut state, delete(3), "c", 0).is_bottom(), "out of range");
        assert!(step(&mut state, delete(u64::MAX), "c", 0).is_bottom());
        let Object::List(list) = &state else { panic!("a list") };
        assert_eq!(list.to_vec(), [json!("a"), json!("c"), json!("d")]);
        assert_eq!(list.next_dot(&node("b")), Dot::new("b", 3));
        let d = step(&mut state, insert(1, "x"), "b", 0);
        assert_eq!(
            d.to_json()["elems"],
            json!([["b", 3, ["b", 1], 5, "x"]]),
            "after the visible element to its left"
        );
    }

    #[test]
    fn apply_list_inserts_after_an_element_and_deletes_by_id_wherever_they_moved() {
        let at =
            |index: u64, v: &str| json!({"type": "crdt/list/insert", "key": "k", "index": index, "value": v});
        let after =
            |id: Value, v: &str| json!({"type": "crdt/list/insert", "key": "k", "after": id, "value": v});
        let delete = |id: Value| json!({"type": "crdt/list/delete", "key": "k", "id": id});
        let mut state = Object::bottom(Kind::List);
        step(&mut state, at(0, "milk"), "a", 0);
        step(&mut state, at(1, "eggs"), "a", 0);
        // The client saw [milk, eggs] and goes offline; meanwhile two items go in at the head.
        step(&mut state, at(0, "tea"), "b", 0);
        step(&mut state, at(0, "jam"), "b", 0);
        // Its insert after milk lands after milk, where `index: 1` would now land after jam.
        let d = step(&mut state, after(json!(["a", 1]), "bread"), "a", 0);
        assert_eq!(d.to_json()["elems"], json!([["a", 3, ["a", 1], 5, "bread"]]));
        let d = step(&mut state, after(Value::Null, "first"), "c", 0);
        assert_eq!(d.to_json()["elems"], json!([["c", 1, null, 6, "first"]]), "null: at the head");
        let Object::List(list) = &state else { panic!("a list") };
        assert_eq!(
            list.to_vec(),
            [json!("first"), json!("jam"), json!("tea"), json!("milk"), json!("bread"), json!("eggs")]
        );
        let d = step(&mut state, delete(json!(["a", 2])), "c", 0);
        assert_eq!(d.to_json(), json!({"elems": [], "deleted": [["a", 2]]}), "eggs, by id");
        assert!(step(&mut state, delete(json!(["a", 2])), "b", 0).is_bottom(), "already deleted");
        // After a deleted element: still placed right after it.
        step(&mut state, after(json!(["a", 2]), "ham"), "b", 0);
        let Object::List(list) = &state else { panic!("a list") };
        assert_eq!(
            list.to_vec(),
            [json!("first"), json!("jam"), json!("tea"), json!("milk"), json!("bread"), json!("ham")]
        );
        for v in [after(json!(["z", 1]), "x"), delete(json!(["z", 1])), delete(json!(["a", 99]))] {
            let err = apply(&state, &op(v), &node("a"), 0).map_err(|e| e.reason());
            assert_eq!(err.err(), Some("crdtUnknownElement"));
        }
    }

    #[test]
    fn list_ids_in_actions_are_checked() {
        let insert = |extra: Value| {
            let mut v = json!({"type": "crdt/list/insert", "key": "k", "value": 1});
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            reason(v)
        };
        assert_eq!(insert(json!({"after": ["a", 1], "index": 0})), "crdtWrongShape", "both places");
        assert_eq!(insert(json!({"after": ["a"]})), "crdtWrongShape");
        assert_eq!(insert(json!({"after": ["a", 0]})), "crdtWrongShape", "counters start at 1");
        assert_eq!(insert(json!({"after": ["a b", 1]})), "crdtWrongShape");
        assert_eq!(insert(json!({"after": 3})), "crdtWrongShape");
        let delete = |id: Value| reason(json!({"type": "crdt/list/delete", "key": "k", "id": id}));
        assert_eq!(delete(json!(null)), "crdtWrongShape");
        assert_eq!(delete(json!(["a", 1, 2])), "crdtWrongShape");
        let both = json!({"type": "crdt/list/delete", "key": "k", "id": ["a", 1], "index": 0});
        assert_eq!(reason(both), "crdtWrongShape");
        let ok = op(json!({"type": "crdt/list/insert", "key": "k", "after": ["a", 1], "value": 1}));
        assert_eq!(ok.change(), &Change::ListInsertAfter { after: Some(Dot::new("a", 1)), value: json!(1) });
        assert_eq!(
            Op::new(ok.key().clone(), ok.change().clone()).unwrap().to_action()["after"],
            json!(["a", 1])
        );
        let head = op(json!({"type": "crdt/list/insert", "key": "k", "after": null, "value": 1}));
        assert_eq!(head.to_action()["after"], Value::Null);
        let by_id = op(json!({"type": "crdt/list/delete", "key": "k", "id": ["a", 1]}));
        assert_eq!(by_id.change(), &Change::ListDeleteId { id: Dot::new("a", 1) });
        assert_eq!(by_id.to_action()["id"], json!(["a", 1]));
    }

    #[test]
    fn apply_list_refuses_beyond_the_limits() {
        let insert = op(json!({"type": "crdt/list/insert", "key": "k", "index": 0, "value": 1}));
        let delete = op(json!({"type": "crdt/list/delete", "key": "k", "index": 0}));
        let elems = (1..=LIST_ELEMS_MAX as u64).map(|i| (Dot::new("a", i), None, i, json!(i)));
        let full = Object::List(Box::new(Rga::from_parts(elems, [Dot::new("a", 1)]).unwrap()));
        assert_eq!(apply(&full, &insert, &node("b"), 0).map_err(|e| e.reason()), Err("crdtTooBig"));
        assert!(apply(&full, &delete, &node("b"), 0).is_ok_and(|d| !d.is_bottom()), "deletes go on");
        let high = Rga::from_parts([(Dot::new("a", COUNTER_MAX), None, 1, json!(0))], []).unwrap();
        let err = apply(&Object::List(Box::new(high)), &insert, &node("a"), 0).map_err(|e| e.reason());
        assert_eq!(err, Err("crdtTooBig"), "the author's counter");
        let late = Rga::from_parts([(Dot::new("a", 1), None, COUNTER_MAX, json!(0))], []).unwrap();
        let err = apply(&Object::List(Box::new(late)), &insert, &node("b"), 0).map_err(|e| e.reason());
        assert_eq!(err, Err("crdtTooBig"), "the seq");
        let err = apply(&Object::bottom(Kind::Set), &insert, &node("a"), 0).map_err(|e| e.reason());
        assert_eq!(err, Err("crdtTypeMismatch"));
        let err = apply(
            &Object::bottom(Kind::List),
            &op(json!({"type": "crdt/set/add", "key": "k", "elem": 1})),
            &node("a"),
            0,
        );
        assert_eq!(err.map_err(|e| e.reason()), Err("crdtTypeMismatch"));
    }

    #[test]
    fn fold_keeps_list_runs_as_they_are() {
        // Inserting past the end and deleting that index do not cancel out: the insert
        // appends, the delete is out of range.
        let insert = op(json!({"type": "crdt/list/insert", "key": "k", "index": 9, "value": 1}));
        let delete = op(json!({"type": "crdt/list/delete", "key": "k", "index": 9}));
        let queue = [insert.clone(), delete.clone(), insert, delete];
        assert_eq!(fold_queue(&queue), queue);
    }

    #[test]
    fn parses_map_actions() {
        let set = op(json!({"type": "crdt/map/set", "key": "doc", "path": ["meta", "owner"], "value": 7}));
        let path = vec!["meta".to_owned(), "owner".to_owned()];
        assert_eq!(set.change(), &Change::MapSet { path: path.clone(), value: Scalar::Int(7), seen: None });
        assert_eq!(set.kind(), Kind::Map);
        let seen: VersionVector = [(node("a"), 2)].into_iter().collect();
        for (v, change) in [
            (
                json!({"type": "crdt/map/set", "key": "k", "path": ["x"], "value": null, "seen": {"a": 2}}),
                Change::MapSet { path: vec!["x".into()], value: Scalar::Null, seen: Some(seen) },
            ),
            (
                json!({"type": "crdt/map/remove", "key": "k", "path": ["meta", "owner"]}),
                Change::MapRemove { path },
            ),
            (
                json!({"type": "crdt/map/add", "key": "k", "path": [""], "elem": "x"}),
                Change::MapAdd { path: vec![String::new()], elem: Scalar::from("x") },
            ),
            (
                json!({"type": "crdt/map/delete", "key": "k", "path": ["t"], "elem": 1.5}),
                Change::MapDelete { path: vec!["t".into()], elem: Scalar::float(1.5) },
            ),
        ] {
            let op = op(v.clone());
            assert_eq!(op.change(), &change);
            assert_eq!(Value::Object(op.to_action()), v);
            assert_eq!(parse(&op.to_action()), Ok(op));
        }
        let deepest: Vec<String> = (0..MAP_DEPTH_MAX).map(|_| "k".repeat(MAP_KEY_BYTES_MAX)).collect();
        assert!(parse(&action(json!({"type": "crdt/map/remove", "key": "k", "path": deepest}))).is_ok());
    }

    #[test]
    fn map_actions_of_the_wrong_shape_or_too_big() {
        for v in [
            json!({"type": "crdt/map/set", "key": "k", "value": 1}),
            json!({"type": "crdt/map/set", "key": "k", "path": [], "value": 1}),
            json!({"type": "crdt/map/set", "key": "k", "path": "x", "value": 1}),
            json!({"type": "crdt/map/set", "key": "k", "path": ["x", 1], "value": 1}),
            json!({"type": "crdt/map/set", "key": "k", "path": ["x"]}),
            json!({"type": "crdt/map/set", "key": "k", "path": ["x"], "value": [1]}),
            json!({"type": "crdt/map/set", "key": "k", "path": ["x"], "value": {"a": 1}}),
            json!({"type": "crdt/map/set", "key": "k", "path": ["x"], "value": u64::MAX}),
            json!({"type": "crdt/map/set", "key": "k", "path": ["x"], "value": 1, "seen": {"a": 0}}),
            json!({"type": "crdt/map/set", "key": "k", "path": ["x"], "value": 1, "elem": 1}),
            json!({"type": "crdt/map/remove", "key": "k", "path": ["x"], "seen": {"a": 1}}),
            json!({"type": "crdt/map/remove", "key": "k"}),
            json!({"type": "crdt/map/add", "key": "k", "path": ["x"]}),
            json!({"type": "crdt/map/add", "key": "k", "path": ["x"], "elem": [1]}),
            json!({"type": "crdt/map/add", "key": "k", "path": ["x"], "value": 1}),
            json!({"type": "crdt/map/delete", "key": "k", "path": ["x"], "elem": 1, "seen": {"a": 1}}),
            json!({"type": "crdt/map/delete", "path": ["x"], "elem": 1}),
        ] {
            assert_eq!(reason(v.clone()), "crdtWrongShape", "{v}");
        }
        let deep: Vec<&str> = vec!["k"; MAP_DEPTH_MAX + 1];
        let long = "k".repeat(MAP_KEY_BYTES_MAX + 1);
        let big = "x".repeat(ELEM_BYTES_MAX);
        for v in [
            json!({"type": "crdt/map/remove", "key": "k", "path": deep}),
            json!({"type": "crdt/map/remove", "key": "k", "path": ["a", long]}),
            json!({"type": "crdt/map/set", "key": "k", "path": ["x"], "value": big}),
            json!({"type": "crdt/map/add", "key": "k", "path": ["x"], "elem": big}),
        ] {
            assert_eq!(reason(v.clone()), "crdtTooBig", "{v}");
        }
        let key = Key::parse("k").unwrap();
        let nan = Change::MapSet { path: vec!["x".into()], value: Scalar::float(f64::NAN), seen: None };
        assert_eq!(Op::new(key.clone(), nan).map_err(|e| e.reason()), Err("crdtWrongShape"));
        let empty = Change::MapRemove { path: Vec::new() };
        assert_eq!(Op::new(key, empty).map_err(|e| e.reason()), Err("crdtWrongShape"));
    }

    fn map_set(path: Value, v: Value) -> Value {
        json!({"type": "crdt/map/set", "key": "k", "path": path, "value": v})
    }

    #[test]
    fn apply_map_writes_nested_values_and_removes_them() {
        let mut state = Object::bottom(Kind::Map);
        let d = step(&mut state, map_set(json!(["meta", "owner"]), json!("ann")), "a", 0);
        assert_eq!(
            d.to_json(),
            json!({"entries": {"meta": {"map": {"owner": {"reg": [["a", 1, "ann"]]}}}}, "context": {"vv": {"a": 1}}})
        );
        step(&mut state, json!({"type": "crdt/map/add", "key": "k", "path": ["tags"], "elem": "x"}), "b", 0);
        step(&mut state, json!({"type": "crdt/map/add", "key": "k", "path": ["tags"], "elem": "y"}), "b", 0);
        let d = step(
            &mut state,
            json!({"type": "crdt/map/delete", "key": "k", "path": ["tags"], "elem": "x"}),
            "a",
            0,
        );
        assert_eq!(d.to_json(), json!({"entries": {}, "context": {"vv": {"b": 1}}}));
        let d = step(&mut state, map_set(json!(["meta", "owner"]), json!("bob")), "b", 0);
        assert_eq!(d.to_json()["context"], json!({"vv": {"a": 1}, "cloud": [["b", 3]]}), "supersedes ann");
        assert_eq!(
            state.to_json()["entries"],
            json!({"meta": {"map": {"owner": {"reg": [["b", 3, "bob"]]}}}, "tags": {"set": [["y", "b", 2]]}})
        );
        let d = step(
            &mut state,
            json!({"type": "crdt/map/remove", "key": "k", "path": ["meta", "owner"]}),
            "c",
            0,
        );
        assert_eq!(d.to_json(), json!({"entries": {}, "context": {"vv": {}, "cloud": [["b", 3]]}}));
        assert_eq!(
            state.to_json()["entries"],
            json!({"tags": {"set": [["y", "b", 2]]}}),
            "meta went with its last key"
        );
        step(&mut state, json!({"type": "crdt/map/remove", "key": "k", "path": ["tags"]}), "c", 0);
        assert_eq!(state.to_json(), json!({"entries": {}, "context": {"vv": {"a": 1, "b": 3}}}));
        for absent in [json!(["tags"]), json!(["x", "y", "z"])] {
            let remove = json!({"type": "crdt/map/remove", "key": "k", "path": absent});
            assert!(step(&mut state, remove, "c", 0).is_bottom());
        }
    }

    #[test]
    fn apply_map_refuses_a_path_through_another_kind() {
        let mut state = Object::bottom(Kind::Map);
        step(&mut state, map_set(json!(["r"]), json!(1)), "a", 0);
        step(&mut state, json!({"type": "crdt/map/add", "key": "k", "path": ["s"], "elem": 1}), "a", 0);
        for v in [
            json!({"type": "crdt/map/add", "key": "k", "path": ["r"], "elem": 1}),
            json!({"type": "crdt/map/delete", "key": "k", "path": ["r"], "elem": 1}),
            map_set(json!(["s"]), json!(1)),
            map_set(json!(["r", "x"]), json!(1)),
            map_set(json!(["s", "x", "y"]), json!(1)),
            json!({"type": "crdt/map/remove", "key": "k", "path": ["r", "x"]}),
            json!({"type": "crdt/map/add", "key": "k", "path": ["s", "x"], "elem": 1}),
        ] {
            let err = apply(&state, &op(v.clone()), &node("a"), 0).err();
            assert_eq!(err.as_ref().map(OpError::reason), Some("crdtTypeMismatch"), "{v}");
        }
        let err = apply(&state, &op(map_set(json!(["r", "x"]), json!(1))), &node("a"), 0).err();
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some("expected a map at this map path, found a register")
        );
        let err = apply(&Object::bottom(Kind::Set), &op(map_set(json!(["r"]), json!(1))), &node("a"), 0);
        assert_eq!(err.map_err(|e| e.reason()), Err("crdtTypeMismatch"));
        let set_add = op(json!({"type": "crdt/set/add", "key": "k", "elem": 1}));
        let err = apply(&state, &set_add, &node("a"), 0).map_err(|e| e.reason());
        assert_eq!(err, Err("crdtTypeMismatch"));
    }

    #[test]
    fn apply_map_set_with_seen_keeps_concurrent_writes() {
        let set = |v: i32, seen: Value| json!({"type": "crdt/map/set", "key": "k", "path": ["p", "x"], "value": v, "seen": seen});
        let mut state = Object::bottom(Kind::Map);
        step(&mut state, map_set(json!(["p", "x"]), json!(0)), "a", 0);
        step(&mut state, set(1, json!({"a": 1})), "b", 0);
        step(&mut state, set(2, json!({"a": 1})), "c", 0);
        assert_eq!(state.to_json()["entries"]["p"]["map"]["x"], json!({"reg": [["b", 1, 1], ["c", 1, 2]]}));
        step(&mut state, set(3, json!({})), "b", 0);
        assert_eq!(
            state.to_json()["entries"]["p"]["map"]["x"],
            json!({"reg": [["b", 2, 3], ["c", 1, 2]]}),
            "the author's own write counts as seen"
        );
    }

    #[test]
    fn apply_map_refuses_beyond_the_limits() {
        use crate::{DotFun, DotMap};
        let value = |i: u64| {
            let mut register = DotFun::new();
            register.insert(Dot::new("a", i), Scalar::Int(0));
            MapValue::from_parts(DotMap::new(), DotMap::new(), register)
        };
        let entries: DotMap<String, MapValue<String>> =
            (1..MAP_KEYS_MAX as u64).map(|i| (format!("k{i}"), value(i))).collect();
        let context = CausalContext::from_vv([(node("a"), MAP_KEYS_MAX as u64)].into_iter().collect());
        let state = Object::Map(Box::new(OrMap::from_parts(entries, context).unwrap()));
        let ok = [map_set(json!(["new"]), json!(1)), map_set(json!(["k1"]), json!(1))];
        for v in ok {
            assert!(apply(&state, &op(v), &node("b"), 0).is_ok(), "one key left");
        }
        let two = op(map_set(json!(["new", "n"]), json!(1)));
        assert_eq!(apply(&state, &two, &node("b"), 0).map_err(|e| e.reason()), Err("crdtTooBig"));
        let remove = op(json!({"type": "crdt/map/remove", "key": "k", "path": ["k1"]}));
        assert!(apply(&state, &remove, &node("b"), 0).is_ok_and(|d| !d.is_bottom()));
        let high = CausalContext::from_vv([(node("a"), COUNTER_MAX)].into_iter().collect());
        let high = Object::Map(Box::new(OrMap::from_parts(DotMap::new(), high).unwrap()));
        let err = apply(&high, &op(map_set(json!(["x"]), json!(1))), &node("a"), 0).map_err(|e| e.reason());
        assert_eq!(err, Err("crdtTooBig"), "the author's counter");
    }

    #[test]
    fn fold_map_drops_writes_a_later_one_to_the_same_path_covers() {
        let set = |path: &str, v: i32, seen: Option<Value>| {
            let mut action = map_set(json!([path]), json!(v));
            if let Some(seen) = seen {
                action["seen"] = seen;
            }
            op(action)
        };
        let add = op(json!({"type": "crdt/map/add", "key": "k", "path": ["x"], "elem": 1}));
        let a1 = Some(json!({"a": 1}));
        let a2 = Some(json!({"a": 2}));
        assert_eq!(fold_queue(&[set("x", 1, None), set("x", 2, None)]), [set("x", 2, None)]);
        assert_eq!(
            fold_queue(&[set("x", 1, a1.clone()), set("x", 2, a2.clone())]),
            [set("x", 2, a2.clone())]
        );
        let kept = [
            vec![set("x", 1, None), set("x", 2, a2.clone())],
            vec![set("x", 1, a2), set("x", 2, a1)],
            vec![set("x", 1, None), set("y", 2, None), set("x", 3, None)],
            vec![set("x", 1, None), add.clone(), set("x", 3, None)],
            vec![add.clone(), add],
        ];
        for queue in kept {
            assert_eq!(fold_queue(&queue), queue);
        }
    }

    fn map_count(kind: &str, path: Value, by: u64) -> Value {
        json!({"type": format!("crdt/map/{kind}"), "key": "k", "path": path, "by": by})
    }

    #[test]
    fn parses_map_counter_actions() {
        for (v, change) in [
            (map_count("inc", json!(["likes"]), 2), Change::MapInc { path: vec!["likes".into()], by: 2 }),
            (
                map_count("dec", json!(["a", "b"]), 1),
                Change::MapDec { path: vec!["a".into(), "b".into()], by: 1 },
            ),
        ] {
            let op = op(v.clone());
            assert_eq!(op.change(), &change);
            assert_eq!(op.kind(), Kind::Map);
            assert_eq!(Value::Object(op.to_action()), v);
            assert_eq!(parse(&op.to_action()), Ok(op));
        }
        let default = op(json!({"type": "crdt/map/inc", "key": "k", "path": ["x"]}));
        assert_eq!(default.change(), &Change::MapInc { path: vec!["x".into()], by: 1 });
        for v in [
            json!({"type": "crdt/map/inc", "key": "k", "by": 1}),
            json!({"type": "crdt/map/inc", "key": "k", "path": [], "by": 1}),
            map_count("inc", json!(["x"]), 0),
            map_count("dec", json!(["x"]), BY_MAX + 1),
            json!({"type": "crdt/map/inc", "key": "k", "path": ["x"], "by": -1}),
            json!({"type": "crdt/map/inc", "key": "k", "path": ["x"], "by": 1.5}),
            json!({"type": "crdt/map/inc", "key": "k", "path": ["x"], "by": "1"}),
            json!({"type": "crdt/map/inc", "key": "k", "path": ["x"], "value": 1}),
            json!({"type": "crdt/map/dec", "key": "k", "path": ["x"], "by": 1, "seen": {"a": 1}}),
        ] {
            assert_eq!(reason(v.clone()), "crdtWrongShape", "{v}");
        }
        assert_eq!(reason(map_count("inc", json!(vec!["k"; MAP_DEPTH_MAX + 1]), 1)), "crdtTooBig");
    }

    /// The value of `state`, a counter or a map with a counter at `["post", "likes"]`.
    fn counted(state: &Object) -> i128 {
        match state {
            Object::Counter(counter) => counter.value(),
            Object::Map(map) => map
                .get(&"post".to_owned())
                .and_then(|p| p.get(&"likes".to_owned()))
                .map_or(0, |likes| likes.counter_value()),
            _ => panic!("not a counter"),
        }
    }

    #[test]
    fn retiring_a_set_add_takes_out_its_dot_and_nothing_else() {
        let add = |elem: &str| json!({"type": "crdt/set/add", "key": "k", "elem": elem});
        // The same add applied by two servers under two actors, and another element.
        let mut state = Object::bottom(Kind::Set);
        let own = step(&mut state, add("x"), "a", 0);
        step(&mut state, add("x"), "server:e~a", 0);
        let other = step(&mut state, add("y"), "a", 0);
        let retire = retire_adds(&own).expect("a set add");
        state.join(&retire).unwrap();
        assert!(counted_set(&state).contains(&"x".to_owned()), "the other application keeps it");
        // Alone, the element goes; another add of the same actor stays.
        let mut alone = Object::bottom(Kind::Set);
        alone.join(&own).unwrap();
        alone.join(&other).unwrap();
        alone.join(&retire).unwrap();
        assert_eq!(counted_set(&alone), ["y"]);
        // Joined before the add it retires, it still wins.
        let mut early = Object::bottom(Kind::Set);
        early.join(&retire).unwrap();
        early.join(&own).unwrap();
        assert!(counted_set(&early).is_empty());
        assert!(retire_adds(&Object::bottom(Kind::Set)).is_none(), "nothing to retire");
        let counter =
            step(&mut Object::bottom(Kind::Counter), json!({"type": "crdt/counter/inc", "key": "k"}), "a", 0);
        assert!(retire_adds(&counter).is_none(), "a counter is taken back by its inverse");
    }

    fn counted_set(object: &Object) -> Vec<String> {
        match object {
            Object::Set(set) => set
                .iter()
                .map(|e| if let Scalar::Str(s) = e { s.clone() } else { format!("{e:?}") })
                .collect(),
            other => panic!("not a set: {other:?}"),
        }
    }

    #[test]
    fn a_counter_operation_is_taken_back_whether_or_not_later_totals_carry_it() {
        let counter = |by: u64| json!({"type": "crdt/counter/inc", "key": "k", "by": by});
        let joined = |kind, deltas: &[&Object]| {
            let mut object = Object::bottom(kind);
            for delta in deltas {
                object.join(delta).unwrap();
            }
            counted(&object)
        };
        {
            let (kind, make) = (Kind::Counter, counter);
            // The edge: a's 1, then 5 (refused upstream), then 2, each delta a running total;
            // the refusal comes after the 2.
            let mut edge = Object::bottom(kind);
            let first = step(&mut edge, make(1), "a", 0);
            let refused = op(make(5));
            let refused_delta = apply_in_place(&mut edge, &refused, &node("a"), 0).unwrap();
            let later = op(make(2));
            let later_delta = apply_in_place(&mut edge, &later, &node("a"), 0).unwrap();
            assert_eq!(counted(&edge), 8);
            let undo = undo_in_place(&mut edge, &refused, &node("a")).unwrap();
            assert_eq!(counted(&edge), 3, "{kind}: the edge without the refused 5");
            // The upstream took the first and the later one, which carries the 5, and the undo;
            // in any order, any number of times, the refused delta itself too.
            assert_eq!(joined(kind, &[&first, &later_delta, &undo]), 3, "{kind}");
            assert_eq!(joined(kind, &[&undo, &later_delta, &refused_delta, &first, &undo]), 3, "{kind}");
            // The later one refused as well: its undo takes it back too.
            let undo_later = undo_in_place(&mut edge, &later, &node("a")).unwrap();
            assert_eq!(counted(&edge), 1, "{kind}");
            assert_eq!(joined(kind, &[&first, &undo, &undo_later]), 1, "{kind}");

            // The refusal comes before any later operation: the undo carries the 5 it takes
            // back, so the first alone and the undo count 1, whether or not the 5 is held.
            let mut edge = Object::bottom(kind);
            let first = step(&mut edge, make(1), "a", 0);
            let refused_delta = apply_in_place(&mut edge, &refused, &node("a"), 0).unwrap();
            let undo = undo_in_place(&mut edge, &refused, &node("a")).unwrap();
            let later_delta = apply_in_place(&mut edge, &later, &node("a"), 0).unwrap();
            assert_eq!(counted(&edge), 3, "{kind}");
            assert_eq!(joined(kind, &[&first, &undo]), 1, "{kind}");
            assert_eq!(joined(kind, &[&first, &refused_delta, &undo]), 1, "{kind}");
            assert_eq!(joined(kind, &[&later_delta, &first, &undo]), 3, "{kind}");
        }
        // A decrement is taken back by an increment; nothing else is taken back.
        let mut edge = Object::bottom(Kind::Counter);
        let dec = op(json!({"type": "crdt/counter/dec", "key": "k", "by": 4}));
        apply_in_place(&mut edge, &dec, &node("a"), 0).unwrap();
        let undo = undo_in_place(&mut edge, &dec, &node("a")).unwrap();
        assert_eq!((counted(&edge), undo.to_json()), (0, json!({"a": [4, 4]})));
        let mut set = Object::bottom(Kind::Set);
        let add = op(json!({"type": "crdt/set/add", "key": "k", "elem": "x"}));
        assert!(inverse(&add).is_none());
        // Nor a map counter's (a removal of its key may have retired its dot).
        assert!(inverse(&op(map_count("inc", json!(["post", "likes"]), 1))).is_none());
        assert_eq!(undo_in_place(&mut set, &add, &node("a")).map_err(|e| e.reason()), Err("crdtWrongShape"));
    }

    #[test]
    fn apply_map_counter_keeps_one_dot_per_author_and_refuses_other_kinds() {
        let mut state = Object::bottom(Kind::Map);
        let d = step(&mut state, map_count("inc", json!(["post", "likes"]), 2), "a", 0);
        assert_eq!(
            d.to_json(),
            json!({"entries": {"post": {"map": {"likes": {"counter": [["a", 1, 2, 0]]}}}}, "context": {"vv": {"a": 1}}})
        );
        step(&mut state, map_count("inc", json!(["post", "likes"]), 3), "b", 0);
        let d = step(&mut state, map_count("dec", json!(["post", "likes"]), 1), "a", 0);
        // The author's new totals under its next dot, retiring its previous one.
        assert_eq!(
            d.to_json(),
            json!({"entries": {"post": {"map": {"likes": {"counter": [["a", 2, 2, 1]]}}}}, "context": {"vv": {"a": 2}}})
        );
        assert_eq!(
            state.to_json()["entries"]["post"]["map"]["likes"],
            json!({"counter": [["a", 2, 2, 1], ["b", 1, 3, 0]]})
        );
        let Object::Map(map) = &state else { panic!("a map") };
        let likes = map.get(&"post".to_owned()).and_then(|p| p.get(&"likes".to_owned())).unwrap();
        assert_eq!(likes.counter_value(), 4);

        step(&mut state, map_set(json!(["title"]), json!("hi")), "a", 0);
        for v in [
            map_count("inc", json!(["title"]), 1),
            map_count("dec", json!(["title", "x"]), 1),
            map_count("inc", json!(["post"]), 1),
            map_set(json!(["post", "likes"]), json!(1)),
            json!({"type": "crdt/map/add", "key": "k", "path": ["post", "likes"], "elem": 1}),
            map_set(json!(["post", "likes", "x"]), json!(1)),
        ] {
            let err = apply(&state, &op(v.clone()), &node("a"), 0).map_err(|e| e.reason());
            assert_eq!(err, Err("crdtTypeMismatch"), "{v}");
        }
        let err = apply(&state, &op(map_count("inc", json!(["title"]), 1)), &node("a"), 0).err();
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some("expected a counter at this map path, found a register")
        );

        // Removing the counter resets it; counting again starts from zero.
        step(&mut state, json!({"type": "crdt/map/remove", "key": "k", "path": ["post", "likes"]}), "c", 0);
        assert_eq!(state.to_json()["entries"], json!({"title": {"reg": [["a", 3, "hi"]]}}));
        let d = step(&mut state, map_count("inc", json!(["post", "likes"]), 1), "a", 0);
        assert_eq!(d.to_json()["entries"]["post"]["map"]["likes"], json!({"counter": [["a", 4, 1, 0]]}));
    }

    #[test]
    fn apply_map_counter_replacing_a_dot_is_not_refused_at_the_dot_limit() {
        use crate::{DotFun, DotMap, PnEntry};
        let mut counter = DotFun::new();
        for i in 1..=MAP_DOTS_MAX as u64 {
            counter.insert(Dot::new(format!("n{i}").as_str(), 1), PnEntry { p: 1, n: 0 });
        }
        let value = MapValue::from_parts(DotMap::new(), DotMap::new(), DotFun::new()).with_counter(counter);
        let context =
            CausalContext::from_vv((1..=MAP_DOTS_MAX).map(|i| (node(&format!("n{i}")), 1)).collect());
        let state = Object::Map(Box::new(
            OrMap::from_parts(DotMap::from([("c".to_owned(), value)]), context).unwrap(),
        ));
        let inc = op(map_count("inc", json!(["c"]), 1));
        assert!(apply(&state, &inc, &node("n1"), 0).is_ok(), "replaces n1's dot");
        let err = apply(&state, &inc, &node("m"), 0).map_err(|e| e.reason());
        assert_eq!(err, Err("crdtTooBig"), "a new dot");
    }

    #[test]
    fn fold_map_counter_runs_into_one_inc_and_one_dec_per_path() {
        let inc = |path: &str, by| op(map_count("inc", json!([path]), by));
        let dec = |path: &str, by| op(map_count("dec", json!([path]), by));
        assert_eq!(fold_queue(&[inc("x", 1), dec("x", 2), inc("x", 3)]), [inc("x", 4), dec("x", 2)]);
        assert_eq!(fold_queue(&[dec("x", 1), inc("x", 2), dec("x", 3)]), [dec("x", 4), inc("x", 2)]);
        assert_eq!(fold_queue(&[inc("x", BY_MAX), inc("x", 1)]), [inc("x", BY_MAX), inc("x", 1)]);
        let set = op(map_set(json!(["x"]), json!(1)));
        let kept = [
            vec![inc("x", 1), inc("y", 1), inc("x", 1)],
            vec![inc("x", 1), set.clone(), inc("x", 1)],
            vec![inc("x", 1), op(json!({"type": "crdt/map/remove", "key": "k", "path": ["x"]})), inc("x", 1)],
        ];
        for queue in kept {
            assert_eq!(fold_queue(&queue), queue);
        }
        assert_eq!(
            fold_queue(&[set.clone(), inc("y", 1), inc("y", 2), set.clone()]),
            [set.clone(), inc("y", 3), set]
        );
    }

    fn map_insert(path: Value, index: u64, v: Value) -> Value {
        json!({"type": "crdt/map/insert", "key": "k", "path": path, "index": index, "value": v})
    }

    #[test]
    fn parses_map_list_actions() {
        let after = json!({"type": "crdt/map/insert", "key": "k", "path": ["todo"], "after": ["a", 2], "value": {"t": 1}});
        let head =
            json!({"type": "crdt/map/insert", "key": "k", "path": ["todo"], "after": null, "value": 1});
        let cut = json!({"type": "crdt/map/cut", "key": "k", "path": ["todo"], "index": 0});
        let cut_id = json!({"type": "crdt/map/cut", "key": "k", "path": ["todo"], "id": ["a", 1]});
        let todo = || vec!["todo".to_owned()];
        for (v, change) in [
            (
                map_insert(json!(["todo"]), 3, json!([1])),
                Change::MapInsert { path: todo(), index: 3, value: json!([1]) },
            ),
            (
                after,
                Change::MapInsertAfter {
                    path: todo(),
                    after: Some(Dot::new("a", 2)),
                    value: json!({"t": 1}),
                },
            ),
            (head, Change::MapInsertAfter { path: todo(), after: None, value: json!(1) }),
            (cut, Change::MapCut { path: todo(), index: 0 }),
            (cut_id, Change::MapCutId { path: todo(), id: Dot::new("a", 1) }),
        ] {
            let op = op(v.clone());
            assert_eq!(op.change(), &change);
            assert_eq!(op.kind(), Kind::Map);
            assert_eq!(Value::Object(op.to_action()), v);
        }
        for v in [
            json!({"type": "crdt/map/insert", "key": "k", "path": ["x"], "value": 1}),
            json!({"type": "crdt/map/insert", "key": "k", "path": ["x"], "index": 0}),
            json!({"type": "crdt/map/insert", "key": "k", "index": 0, "value": 1}),
            json!({"type": "crdt/map/insert", "key": "k", "path": ["x"], "index": -1, "value": 1}),
            json!({"type": "crdt/map/insert", "key": "k", "path": ["x"], "after": ["a"], "value": 1}),
            json!({"type": "crdt/map/insert", "key": "k", "path": ["x"], "after": ["a", 1], "index": 0, "value": 1}),
            json!({"type": "crdt/map/cut", "key": "k", "path": ["x"]}),
            json!({"type": "crdt/map/cut", "key": "k", "path": ["x"], "id": ["a", 0]}),
            json!({"type": "crdt/map/cut", "key": "k", "path": ["x"], "index": 0, "elem": 1}),
        ] {
            assert_eq!(reason(v.clone()), "crdtWrongShape", "{v}");
        }
        let big = Value::from("x".repeat(LIST_VALUE_BYTES_MAX));
        assert_eq!(reason(map_insert(json!(["x"]), 0, big)), "crdtTooBig");
    }

    #[test]
    fn apply_map_list_inserts_cuts_and_refuses_other_kinds() {
        let mut state = Object::bottom(Kind::Map);
        let d = step(&mut state, map_insert(json!(["doc", "todo"]), 0, json!("milk")), "a", 0);
        assert_eq!(
            d.to_json(),
            json!({"entries": {"doc": {"map": {"todo": {"list": {"elems": [["a", 1, null, 1, "milk"]], "deleted": []}}}}}, "context": {"vv": {"a": 1}}})
        );
        step(&mut state, map_insert(json!(["doc", "todo"]), 1, json!("eggs")), "b", 0);
        let after = json!({"type": "crdt/map/insert", "key": "k", "path": ["doc", "todo"], "after": ["a", 1], "value": "tea"});
        step(&mut state, after, "a", 0);
        let list = |state: &Object| {
            let Object::Map(map) = state else { panic!("a map") };
            let todo = map.get(&"doc".to_owned()).and_then(|d| d.get(&"todo".to_owned()));
            todo.map(|t| t.list().values().cloned().collect::<Vec<_>>()).unwrap_or_default()
        };
        assert_eq!(list(&state), [json!("milk"), json!("tea"), json!("eggs")]);
        // A cut's delta is the element's dot in the context, nothing else (it takes no dot).
        let d = step(
            &mut state,
            json!({"type": "crdt/map/cut", "key": "k", "path": ["doc", "todo"], "index": 1}),
            "c",
            0,
        );
        assert_eq!(d.to_json(), json!({"entries": {}, "context": {"vv": {}, "cloud": [["a", 2]]}}));
        assert_eq!(list(&state), [json!("milk"), json!("eggs")]);
        let cut_id = json!({"type": "crdt/map/cut", "key": "k", "path": ["doc", "todo"], "id": ["a", 2]});
        assert!(apply(&state, &op(cut_id), &node("c"), 0).unwrap().is_bottom(), "already cut");
        let out_of_range = json!({"type": "crdt/map/cut", "key": "k", "path": ["doc", "todo"], "index": 9});
        assert!(apply(&state, &op(out_of_range), &node("c"), 0).unwrap().is_bottom());
        for v in [
            json!({"type": "crdt/map/cut", "key": "k", "path": ["doc", "todo"], "id": ["z", 1]}),
            json!({"type": "crdt/map/insert", "key": "k", "path": ["doc", "todo"], "after": ["z", 1], "value": 1}),
            json!({"type": "crdt/map/insert", "key": "k", "path": ["doc", "none"], "after": ["a", 1], "value": 1}),
        ] {
            let err = apply(&state, &op(v.clone()), &node("a"), 0).map_err(|e| e.reason());
            assert_eq!(err, Err("crdtUnknownElement"), "{v}");
        }
        step(&mut state, map_set(json!(["title"]), json!("hi")), "a", 0);
        for v in [
            map_insert(json!(["title"]), 0, json!(1)),
            json!({"type": "crdt/map/cut", "key": "k", "path": ["title"], "index": 0}),
            map_insert(json!(["doc"]), 0, json!(1)),
            map_set(json!(["doc", "todo"]), json!(1)),
            map_count("inc", json!(["doc", "todo"]), 1),
            map_set(json!(["doc", "todo", "x"]), json!(1)),
            json!({"type": "crdt/map/insert", "key": "k", "path": ["title"], "after": ["a", 1], "value": 1}),
            json!({"type": "crdt/map/cut", "key": "k", "path": ["title", "x"], "id": ["a", 1]}),
        ] {
            let err = apply(&state, &op(v.clone()), &node("a"), 0).map_err(|e| e.reason());
            assert_eq!(err, Err("crdtTypeMismatch"), "{v}");
        }
        // Removing the list's map retires its live elements: the key reads as absent, and a
        // register may be written there; the tombstones stay in the document.
        step(&mut state, json!({"type": "crdt/map/remove", "key": "k", "path": ["doc"]}), "c", 0);
        let Object::Map(map) = &state else { panic!("a map") };
        assert!(!map.contains_key(&"doc".to_owned()));
        assert_eq!(list(&state), Vec::<Value>::new());
        assert_eq!(map.retired_count(), 3);
        step(&mut state, map_set(json!(["doc"]), json!(1)), "a", 0);
        assert_eq!(Object::from_json(Kind::Map, &state.to_json()), Ok(state.clone()));
        let d = step(&mut state, map_insert(json!(["doc2"]), 0, json!(1)), "a", 0);
        assert!(!d.is_bottom());
    }

    #[test]
    fn apply_map_list_refuses_past_the_dot_limit_with_retired_elements() {
        use crate::{DotList, DotMap, DotStore, OrMap, Rga};
        let elems = (1..=MAP_DOTS_MAX as u64).map(|i| (Dot::new("a", i), None, i, json!(i)));
        let retired = (1..=MAP_DOTS_MAX as u64).map(|i| Dot::new("a", i));
        let list = DotList::from_rga(Rga::from_parts(elems, retired).unwrap()).unwrap();
        assert_eq!((list.dot_count(), list.retired_count()), (0, MAP_DOTS_MAX));
        let value = MapValue::default().with_list(list);
        let context = CausalContext::from_vv([(node("a"), MAP_DOTS_MAX as u64)].into_iter().collect());
        let map = OrMap::from_parts(DotMap::from([("l".to_owned(), value)]), context).unwrap();
        let state = Object::Map(Box::new(map));
        let err = apply(&state, &op(map_set(json!(["x"]), json!(1))), &node("b"), 0).map_err(|e| e.reason());
        assert_eq!(err, Err("crdtTooBig"));
    }

    fn map_put(path: Value, v: Value) -> Value {
        json!({"type": "crdt/map/put", "key": "k", "path": path, "value": v})
    }

    #[test]
    fn parses_map_put_actions() {
        let v = map_put(json!(["doc", "style"]), json!({"font": "serif", "size": [12, 14]}));
        let op = op(v.clone());
        assert_eq!(
            op.change(),
            &Change::MapPut {
                path: vec!["doc".into(), "style".into()],
                value: json!({"font": "serif", "size": [12, 14]})
            }
        );
        assert_eq!(op.kind(), Kind::Map);
        assert_eq!(Value::Object(op.to_action()), v);
        assert_eq!(parse(&op.to_action()), Ok(op));
        // Any JSON up to VALUE_BYTES_MAX compact bytes (the quotes count).
        let longest = "x".repeat(VALUE_BYTES_MAX - 2);
        assert_eq!(self::op(map_put(json!(["x"]), json!(longest))).kind(), Kind::Map);
        for v in [
            json!({"type": "crdt/map/put", "key": "k", "value": 1}),
            json!({"type": "crdt/map/put", "key": "k", "path": ["x"]}),
            json!({"type": "crdt/map/put", "key": "k", "path": [], "value": 1}),
            json!({"type": "crdt/map/put", "key": "k", "path": "x", "value": 1}),
            json!({"type": "crdt/map/put", "key": "k", "path": ["x"], "value": 1, "seen": {"a": 1}}),
            json!({"type": "crdt/map/put", "key": "k", "path": ["x"], "value": 1, "time": 5}),
        ] {
            assert_eq!(reason(v.clone()), "crdtWrongShape", "{v}");
        }
        assert_eq!(reason(map_put(json!(["x"]), json!("x".repeat(VALUE_BYTES_MAX - 1)))), "crdtTooBig");
        assert_eq!(reason(map_put(json!(vec!["k"; MAP_DEPTH_MAX + 1]), json!(1))), "crdtTooBig");
    }

    #[test]
    fn apply_map_put_supersedes_what_it_saw_whatever_the_clock_and_refuses_other_kinds() {
        let mut state = Object::bottom(Kind::Map);
        let d = step(&mut state, map_put(json!(["doc", "style"]), json!({"font": "serif"})), "a", 100);
        assert_eq!(
            d.to_json(),
            json!({"entries": {"doc": {"map": {"style": {"lww": [["a", 1, 100, {"font": "serif"}]]}}}}, "context": {"vv": {"a": 1}}})
        );
        // A later put by another author with an earlier clock still supersedes it, at the
        // time of what it superseded.
        let d = step(&mut state, map_put(json!(["doc", "style"]), json!({"font": "sans"})), "b", 40);
        assert_eq!(
            d.to_json(),
            json!({"entries": {"doc": {"map": {"style": {"lww": [["b", 1, 100, {"font": "sans"}]]}}}}, "context": {"vv": {"a": 1, "b": 1}}})
        );
        let d = step(&mut state, map_put(json!(["doc", "style"]), json!([1, 2])), "a", 250);
        assert_eq!(d.to_json()["entries"]["doc"]["map"]["style"], json!({"lww": [["a", 2, 250, [1, 2]]]}));
        assert_eq!(
            state.to_json()["entries"]["doc"]["map"]["style"],
            json!({"lww": [["a", 2, 250, [1, 2]]]})
        );

        step(&mut state, map_set(json!(["title"]), json!("hi")), "a", 0);
        for v in [
            map_put(json!(["title"]), json!(1)),
            map_put(json!(["title", "x"]), json!(1)),
            map_put(json!(["doc"]), json!(1)),
            map_put(json!(["doc", "style", "x"]), json!(1)),
            map_set(json!(["doc", "style"]), json!(1)),
            json!({"type": "crdt/map/inc", "key": "k", "path": ["doc", "style"]}),
        ] {
            let err = apply(&state, &op(v.clone()), &node("a"), 0).map_err(|e| e.reason());
            assert_eq!(err, Err("crdtTypeMismatch"), "{v}");
        }
        let err = apply(&state, &op(map_put(json!(["title"]), json!(1))), &node("a"), 0).err();
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some("expected a last-writer-wins register at this map path, found a register")
        );

        // Removing the path retires the write; a put there starts afresh at its own time.
        step(&mut state, json!({"type": "crdt/map/remove", "key": "k", "path": ["doc"]}), "c", 0);
        assert_eq!(state.to_json()["entries"], json!({"title": {"reg": [["a", 3, "hi"]]}}));
        let d = step(&mut state, map_put(json!(["doc", "style"]), json!(null)), "b", 7);
        assert_eq!(d.to_json()["entries"]["doc"]["map"]["style"], json!({"lww": [["b", 2, 7, null]]}));
    }

    #[test]
    fn apply_map_put_keeps_concurrent_writes_until_a_later_put() {
        // Two servers put at one path concurrently; a join keeps both, the read picks the
        // greatest (time, dot), and a put on the joined state supersedes both.
        let base = Object::bottom(Kind::Map);
        let left = apply(&base, &op(map_put(json!(["x"]), json!({"v": 1}))), &node("a"), 5).unwrap();
        let right = apply(&base, &op(map_put(json!(["x"]), json!({"v": 2}))), &node("b"), 5).unwrap();
        let mut joined = left.clone();
        joined.join(&right).unwrap();
        let Object::Map(map) = &joined else { panic!("a map") };
        let x = map.get(&"x".to_owned()).unwrap();
        assert_eq!(x.lww_entries().count(), 2);
        assert_eq!(x.lww_value(), Some(&json!({"v": 2})), "equal times: the greater dot, b's");
        let d = apply(&joined, &op(map_put(json!(["x"]), json!(3))), &node("a"), 0).unwrap();
        assert_eq!(d.to_json()["entries"]["x"], json!({"lww": [["a", 2, 5, 3]]}));
        joined.join(&d).unwrap();
        assert_eq!(joined.to_json()["entries"]["x"], json!({"lww": [["a", 2, 5, 3]]}));
    }

    #[test]
    fn fold_map_put_runs_keep_the_last_put_per_path() {
        let put = |path: &str, v: i64| op(map_put(json!([path]), json!({"v": v})));
        assert_eq!(fold_queue(&[put("x", 1), put("x", 2), put("x", 3)]), [put("x", 3)]);
        let remove = op(json!({"type": "crdt/map/remove", "key": "k", "path": ["x"]}));
        let set = op(map_set(json!(["x"]), json!(1)));
        let kept = [
            vec![put("x", 1), put("y", 1), put("x", 2)],
            vec![put("x", 1), remove.clone(), put("x", 2)],
            vec![put("x", 1), set.clone()],
            vec![set.clone(), put("x", 1)],
        ];
        for queue in kept {
            assert_eq!(fold_queue(&queue), queue);
        }
        assert_eq!(fold_queue(&[put("x", 1), put("y", 1), put("y", 2)]), [put("x", 1), put("y", 2)]);
    }

    #[test]
    fn apply_map_put_refuses_past_the_map_lww_bytes_limit_unless_it_replaces() {
        // 256 values of 64 KiB of JSON each fill the map's LWW bytes exactly.
        let big = || json!("x".repeat(VALUE_BYTES_MAX - 2));
        let mut state = Object::bottom(Kind::Map);
        for i in 0..MAP_LWW_BYTES_MAX / VALUE_BYTES_MAX {
            let delta =
                apply_in_place(&mut state, &op(map_put(json!([format!("k{i}")]), big())), &node("a"), 0);
            assert!(delta.is_ok(), "{i}");
        }
        let Object::Map(map) = &state else { panic!("a map") };
        assert_eq!(map.lww_bytes(), MAP_LWW_BYTES_MAX);
        let err =
            apply(&state, &op(map_put(json!(["more"]), json!(1))), &node("a"), 0).map_err(|e| e.reason());
        assert_eq!(err, Err("crdtTooBig"));
        // A put that supersedes a value of the same size fits; so does a smaller one.
        assert!(apply(&state, &op(map_put(json!(["k0"]), big())), &node("b"), 0).is_ok());
        assert!(apply_in_place(&mut state, &op(map_put(json!(["k1"]), json!(1))), &node("b"), 0).is_ok());
        assert!(apply(&state, &op(map_put(json!(["more"]), json!("x".repeat(100)))), &node("b"), 0).is_ok());
        // The document reads back; one byte more is refused.
        let doc = state.to_json();
        assert_eq!(Object::from_json(Kind::Map, &doc).as_ref(), Ok(&state));
        let mut over = doc.clone();
        over["entries"]["k1"]["lww"][0][3] = json!("x".repeat(VALUE_BYTES_MAX - 2));
        over["entries"]["k2"]["lww"][0][3] = json!("x".repeat(VALUE_BYTES_MAX - 2));
        over["entries"]["extra"] = json!({"lww": [["b", 2, 0, 1]]});
        assert_eq!(Object::from_json(Kind::Map, &over).map_err(|e| e.reason()), Err("crdtTooBig"));
    }

    fn map_cl(kind: &str, path: Value, elem: Value) -> Value {
        json!({"type": format!("crdt/map/{kind}"), "key": "k", "path": path, "elem": elem})
    }

    #[test]
    fn parses_map_clset_actions() {
        for (kind, expected) in [
            ("cladd", Change::MapClAdd { path: vec!["doc".into(), "tags".into()], elem: Scalar::from("x") }),
            (
                "cldelete",
                Change::MapClDelete { path: vec!["doc".into(), "tags".into()], elem: Scalar::from("x") },
            ),
        ] {
            let v = map_cl(kind, json!(["doc", "tags"]), json!("x"));
            let op = op(v.clone());
            assert_eq!(op.change(), &expected);
            assert_eq!(op.kind(), Kind::Map);
            assert_eq!(Value::Object(op.to_action()), v);
            assert_eq!(parse(&op.to_action()), Ok(op));
        }
        for v in [
            json!({"type": "crdt/map/cladd", "key": "k", "elem": 1}),
            json!({"type": "crdt/map/cladd", "key": "k", "path": ["x"]}),
            json!({"type": "crdt/map/cladd", "key": "k", "path": [], "elem": 1}),
            json!({"type": "crdt/map/cladd", "key": "k", "path": "x", "elem": 1}),
            json!({"type": "crdt/map/cladd", "key": "k", "path": ["x"], "elem": [1]}),
            json!({"type": "crdt/map/cladd", "key": "k", "path": ["x"], "elem": {"a": 1}}),
            json!({"type": "crdt/map/cldelete", "key": "k", "path": ["x"], "elem": 1, "seen": {"a": 1}}),
            json!({"type": "crdt/map/cldelete", "key": "k", "path": ["x"], "value": 1}),
            json!({"type": "crdt/map/cldelete", "key": 7, "path": ["x"], "elem": 1}),
        ] {
            assert_eq!(reason(v.clone()), "crdtWrongShape", "{v}");
        }
        assert_eq!(reason(map_cl("cladd", json!(["x"]), json!("x".repeat(ELEM_BYTES_MAX)))), "crdtTooBig");
        assert_eq!(reason(map_cl("cldelete", json!(vec!["k"; MAP_DEPTH_MAX + 1]), json!(1))), "crdtTooBig");
    }

    #[test]
    fn apply_map_clset_lengthens_on_a_change_of_presence_and_refuses_other_kinds() {
        let mut state = Object::bottom(Kind::Map);
        let d = step(&mut state, map_cl("cladd", json!(["doc", "tags"]), json!("x")), "a", 0);
        assert_eq!(
            d.to_json(),
            json!({"entries": {"doc": {"map": {"tags": {"clset": [["x", "a", 1, 1]]}}}}, "context": {"vv": {"a": 1}}})
        );
        // Adding a present element, or removing an absent one, changes nothing.
        assert!(step(&mut state, map_cl("cladd", json!(["doc", "tags"]), json!("x")), "b", 0).is_bottom());
        assert!(step(&mut state, map_cl("cldelete", json!(["doc", "tags"]), json!("y")), "b", 0).is_bottom());
        // A removal by another author: its bump supersedes the add it saw.
        let d = step(&mut state, map_cl("cldelete", json!(["doc", "tags"]), json!("x")), "b", 0);
        assert_eq!(
            d.to_json(),
            json!({"entries": {"doc": {"map": {"tags": {"clset": [["x", "b", 1, 2]]}}}}, "context": {"vv": {"a": 1, "b": 1}}})
        );
        let d = step(&mut state, map_cl("cladd", json!(["doc", "tags"]), json!("x")), "a", 0);
        assert_eq!(d.to_json()["entries"]["doc"]["map"]["tags"], json!({"clset": [["x", "a", 2, 3]]}));
        let Object::Map(map) = &state else { panic!("a map") };
        let tags = map.get(&"doc".to_owned()).and_then(|v| v.get(&"tags".to_owned())).unwrap();
        assert_eq!(tags.clset_elements().collect::<Vec<_>>(), [&Scalar::from("x")]);
        assert_eq!((tags.clset_length(&Scalar::from("x")), map.dot_count()), (3, 1));
        assert_eq!(Object::from_json(Kind::Map, &state.to_json()), Ok(state.clone()));

        // Other kinds at the set's path, and the set where other kinds are expected.
        step(&mut state, map_set(json!(["doc", "title"]), json!("t")), "a", 0);
        for v in [
            map_cl("cladd", json!(["doc", "title"]), json!(1)),
            map_cl("cldelete", json!(["doc", "title"]), json!(1)),
            map_cl("cladd", json!(["doc", "title", "deeper"]), json!(1)),
            json!({"type": "crdt/map/add", "key": "k", "path": ["doc", "tags"], "elem": 1}),
            json!({"type": "crdt/map/delete", "key": "k", "path": ["doc", "tags"], "elem": "x"}),
            map_set(json!(["doc", "tags"]), json!(1)),
            map_set(json!(["doc", "tags", "deeper"]), json!(1)),
            map_put(json!(["doc", "tags"]), json!(1)),
            json!({"type": "crdt/map/inc", "key": "k", "path": ["doc", "tags"]}),
        ] {
            let before = state.clone();
            let err = apply_in_place(&mut state, &op(v.clone()), &node("a"), 0).map_err(|e| e.reason());
            assert_eq!(err, Err("crdtTypeMismatch"), "{v}");
            assert_eq!(state, before);
        }
        let err =
            apply(&Object::bottom(Kind::ClSet), &op(map_cl("cladd", json!(["x"]), json!(1))), &node("a"), 0);
        assert_eq!(err.map_err(|e| e.reason()), Err("crdtTypeMismatch"));
        // Removing the key forgets the set; adding afterwards starts from length 1.
        step(&mut state, json!({"type": "crdt/map/remove", "key": "k", "path": ["doc", "tags"]}), "c", 0);
        let d = step(&mut state, map_cl("cladd", json!(["doc", "tags"]), json!("x")), "c", 0);
        assert_eq!(d.to_json()["entries"]["doc"]["map"]["tags"], json!({"clset": [["x", "c", 1, 1]]}));
    }

    #[test]
    fn apply_map_clset_refuses_beyond_the_limits_but_not_a_bump_that_replaces() {
        use crate::{DotFun, DotMap, OrMap};
        let top = COUNTER_MAX;
        let mut bumps = DotFun::new();
        bumps.insert(Dot::new("a", 1), top);
        let value = MapValue::default().with_clset(DotMap::from([(Scalar::Int(1), bumps)]));
        let context = CausalContext::from_vv([(node("a"), 1)].into_iter().collect());
        let map = OrMap::from_parts(DotMap::from([("s".to_owned(), value)]), context).unwrap();
        let state = Object::Map(Box::new(map));
        // Length 2^53 is even (absent): adding would pass 2^53; removing an absent one is nothing.
        let err = apply(&state, &op(map_cl("cladd", json!(["s"]), json!(1))), &node("b"), 0);
        assert_eq!(err.map_err(|e| e.reason()), Err("crdtTooBig"));
        let nothing = apply(&state, &op(map_cl("cldelete", json!(["s"]), json!(1))), &node("b"), 0);
        assert!(nothing.unwrap().is_bottom());

        // A map at its dot limit refuses a new element, not a bump of a held one.
        let elems = (1..=MAP_DOTS_MAX as u64).map(|i| {
            let mut bumps = DotFun::new();
            bumps.insert(Dot::new("a", i), 1);
            (Scalar::Int(i as i64), bumps)
        });
        let value = MapValue::default().with_clset(elems.collect());
        let context = CausalContext::from_vv([(node("a"), MAP_DOTS_MAX as u64)].into_iter().collect());
        let map = OrMap::from_parts(DotMap::from([("s".to_owned(), value)]), context).unwrap();
        let state = Object::Map(Box::new(map));
        let err = apply(&state, &op(map_cl("cladd", json!(["s"]), json!(0))), &node("b"), 0);
        assert_eq!(err.map_err(|e| e.reason()), Err("crdtTooBig"));
        let removal = apply(&state, &op(map_cl("cldelete", json!(["s"]), json!(1))), &node("b"), 0).unwrap();
        assert!(!removal.is_bottom());
    }

    #[test]
    fn fold_keeps_map_clset_runs_as_they_are() {
        let add = op(map_cl("cladd", json!(["s"]), json!(1)));
        let delete = op(map_cl("cldelete", json!(["s"]), json!(1)));
        let queue = [add.clone(), delete.clone(), add.clone(), add.clone(), delete.clone()];
        assert_eq!(fold_queue(&queue), queue);
    }
}
