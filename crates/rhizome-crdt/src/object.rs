//! CRDT objects of any kind as one type ([`Object`]), with a join that refuses mixing kinds and
//! the JSON documents the server persists and ships as deltas.
//!
//! Documents, one per kind (the kind itself travels beside the document, as the action type
//! or a column, never inside it):
//!
//! - counter: `{"<node>": [p, n], …}`, the node's totals of increments and of decrements,
//!   non-zero entries only; the bottom is `{}`.
//! - lww: `{"time": ms, "dot": ["<node>", n], "value": <JSON>}`; the bottom is `{}`.
//! - mv: `{"values": [["<node>", n, <JSON>], …], "context": {"vv": {"<node>": n, …},
//!   "cloud": [["<node>", n], ["<node>", first, last], …]}}`, each surviving value with its
//!   dot, and the causal context as a version vector plus the runs of dots beyond it (`cloud`,
//!   left out when empty; a lone dot as `[node, n]`, a run as `[node, first, last]`).
//! - set: `{"elems": [[<scalar>, "<node>", n], …], "context": {…}}`, each element with each
//!   dot that keeps it present (usually one), in element order, and the context as for mv.
//! - clset: `{"elems": [[<scalar>, length], …]}`, every element ever added with its causal
//!   length (odd: present), in element order.
//! - list: `{"elems": [["<node>", n, origin, seq, <JSON>], …], "deleted": [["<node>", n], …]}`:
//!   every element, deleted ones included, with its id, its origin (`["<node>", n]` or `null`
//!   for the head) and its Lamport `seq`, in list order (then those whose origin is not in the
//!   document, as in a delta, by `(seq, id)`); and every tombstone, in dot order.
//! - map: `{"entries": {"<key>": <value>, …}, "context": {…}}`, where a value is
//!   `{"map": {"<key>": <value>, …}, "set": [[<scalar>, "<node>", n], …], "reg": [["<node>", n,
//!   <scalar>], …], "counter": [["<node>", n, p, m], …], "list": {"elems": […], "deleted":
//!   […]}}` with only its non-empty parts (one, or several after concurrent writes of different
//!   kinds at one key): a nested map, an add-wins set's elements with their dots, a
//!   multi-value register's values with their dots, a causal counter's dots with the totals of
//!   increments `p` and decrements `m` each carries (not both 0), a list as the list
//!   document writes it, its element ids being dots of the map's context and `deleted` naming
//!   its retired elements (see [`crate::DotList`]), and `"lww": [["<node>", n, ms, <JSON>], …]`,
//!   a last-writer-wins register's writes held (one, or several concurrent ones) with their
//!   dots and times, each value any JSON up to [`VALUE_BYTES_MAX`] bytes, and
//!   `"clset": [[<scalar>, "<node>", n, length], …]`, a causal-length set's elements, each
//!   with every length bump held (usually one) and the causal length it wrote (odd: present),
//!   in element then dot order; the context as for mv.
//!
//! Decoding reads the disk and the network, so it checks everything and never panics: node ids
//! as [`NodeId::parse`] accepts them, dot counters from 1 to [`COUNTER_MAX`], counter totals
//! within `u64`, every stored dot in the context, no unknown fields, and the size limits below.

use crate::ops::OpError;
use crate::{
    CausalContext, ClSet, Dot, DotFun, DotList, DotMap, DotSet, Lattice, ListPartsError, LwwEntry,
    LwwRegister, MvRegister, NodeId, OrMap, Orswot, PnCounter, PnEntry, Rga, Scalar, Stamp,
    Value as MapValue, ValueKind, VersionVector,
};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::io;

/// Most nodes one object records: counter entries, or nodes in an MV register's version
/// vector. [`crate::ops::apply`] refuses an operation by a new node beyond it.
pub const NODES_MAX: usize = 65_536;

/// Most runs in a causal context's cloud (the dots beyond the contiguous prefixes, in runs of
/// consecutive counters; a lone dot is a run of one).
pub const CLOUD_DOTS_MAX: usize = 65_536;

/// Most concurrent values an MV register document may hold. A write on one server leaves one
/// value; siblings come only from writes assigned concurrently by different servers.
pub const MV_VALUES_MAX: usize = 256;

/// Highest dot counter: 2^53, the largest integer a JavaScript client reads exactly.
pub const COUNTER_MAX: u64 = 1 << 53;

/// Largest JSON value a register holds, in bytes of compact JSON (64 KiB).
pub const VALUE_BYTES_MAX: usize = 64 * 1024;

/// Largest set element (a JSON scalar), in bytes of compact JSON.
pub const ELEM_BYTES_MAX: usize = 1024;

/// Most elements a set holds. [`crate::ops::apply`] refuses adding a new one beyond it.
pub const SET_ELEMS_MAX: usize = 65_536;

/// Most `(element, dot)` pairs a set document may hold. A server's own adds leave one dot
/// per element (an add replaces the element's dots); more come only from adds of the same
/// element assigned concurrently by different servers.
pub const SET_ENTRIES_MAX: usize = 4 * SET_ELEMS_MAX;

/// Most elements a list holds, deleted ones included (a deleted element stays, as a
/// tombstone, because concurrent inserts may name it as their origin); also the most
/// tombstones a list document may hold. [`crate::ops::apply`] refuses an insert beyond it.
pub const LIST_ELEMS_MAX: usize = 65_536;

/// Largest list element, in bytes of compact JSON (1 KiB): a list holds up to
/// [`LIST_ELEMS_MAX`] of them forever, so a list of large records is better a list of ids.
pub const LIST_VALUE_BYTES_MAX: usize = 1024;

/// Most map keys in a path: nested maps 7 deep, plus the key of the entry; also the deepest a
/// map document nests.
pub const MAP_DEPTH_MAX: usize = 8;

/// Longest map key (one element of a path), in bytes.
pub const MAP_KEY_BYTES_MAX: usize = 256;

/// Most keys a map holds, at every depth together. [`crate::ops::apply`] refuses a write that
/// would create keys beyond it.
pub const MAP_KEYS_MAX: usize = 65_536;

/// Most bytes of compact JSON a map's last-writer-wins values take, at every depth together
/// (each value is also at most [`VALUE_BYTES_MAX`]). [`crate::ops::apply`] refuses a
/// `crdt/map/put` that would take the map beyond it.
pub const MAP_LWW_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Most dots a map holds, in every set and register together (a server's own writes leave one
/// per register and per set element; more come from concurrent writes).
pub const MAP_DOTS_MAX: usize = 4 * MAP_KEYS_MAX;

/// The kind of a CRDT object. Its name is the middle part of the action types that act on it
/// (`crdt/<name>/…`). New kinds are added as new variants.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A PN-counter (`"counter"`).
    Counter,
    /// A last-writer-wins register of a JSON value (`"lww"`).
    Lww,
    /// A multi-value register of JSON values (`"mv"`).
    Mv,
    /// An add-wins observed-remove set of JSON scalars (`"set"`).
    Set,
    /// A causal-length set of JSON scalars (`"clset"`).
    ClSet,
    /// An ordered list (RGA) of JSON values (`"list"`).
    List,
    /// An observed-remove map of nested maps, add-wins sets and multi-value registers of JSON
    /// scalars, last-writer-wins registers of any JSON, causal counters and lists (`"map"`).
    Map,
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: &'static [Kind] =
        &[Kind::Counter, Kind::Lww, Kind::Mv, Kind::Set, Kind::ClSet, Kind::List, Kind::Map];

    /// The kind's name, such as `"counter"`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Lww => "lww",
            Kind::Mv => "mv",
            Kind::Set => "set",
            Kind::ClSet => "clset",
            Kind::List => "list",
            Kind::Map => "map",
        }
    }

    /// The kind with this name, if any.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|kind| kind.name() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The state (or a delta) of one CRDT object, of any kind. New kinds are added as new variants.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    /// A PN-counter.
    Counter(PnCounter),
    /// A last-writer-wins register.
    Lww(LwwRegister<Value>),
    /// A multi-value register.
    Mv(MvRegister<Value>),
    /// An add-wins observed-remove set (ORSWOT).
    Set(Orswot<Scalar>),
    /// A causal-length set.
    ClSet(ClSet<Scalar>),
    /// An ordered list (RGA), boxed: its indexes make it several times larger than the rest.
    List(Box<Rga<Value>>),
    /// An observed-remove map with string keys, boxed like the list.
    Map(Box<OrMap<String>>),
}

impl Object {
    /// The bottom of `kind`: the state of an object nobody has touched.
    pub fn bottom(kind: Kind) -> Object {
        match kind {
            Kind::Counter => Object::Counter(PnCounter::bottom()),
            Kind::Lww => Object::Lww(LwwRegister::bottom()),
            Kind::Mv => Object::Mv(MvRegister::bottom()),
            Kind::Set => Object::Set(Orswot::bottom()),
            Kind::ClSet => Object::ClSet(ClSet::bottom()),
            Kind::List => Object::List(Box::default()),
            Kind::Map => Object::Map(Box::default()),
        }
    }

    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Counter(_) => Kind::Counter,
            Object::Lww(_) => Kind::Lww,
            Object::Mv(_) => Kind::Mv,
            Object::Set(_) => Kind::Set,
            Object::ClSet(_) => Kind::ClSet,
            Object::List(_) => Kind::List,
            Object::Map(_) => Kind::Map,
        }
    }

    /// Whether this is the bottom of its kind (a delta with no effect).
    pub fn is_bottom(&self) -> bool {
        match self {
            Object::Counter(c) => c.is_bottom(),
            Object::Lww(r) => r.is_bottom(),
            Object::Mv(r) => r.is_bottom(),
            Object::Set(s) => s.is_bottom(),
            Object::ClSet(s) => s.is_bottom(),
            Object::List(l) => l.is_bottom(),
            Object::Map(m) => m.is_bottom(),
        }
    }

    /// Joins `delta` (a delta or a whole state) into `self`, as [`Lattice::join`] does.
    /// Objects of different kinds do not join: `self` is left unchanged and the error is
    /// [`OpError::TypeMismatch`].
    pub fn join(&mut self, delta: &Object) -> Result<(), OpError> {
        match (&mut *self, delta) {
            (Object::Counter(ours), Object::Counter(theirs)) => ours.join(theirs),
            (Object::Lww(ours), Object::Lww(theirs)) => ours.join(theirs),
            (Object::Mv(ours), Object::Mv(theirs)) => ours.join(theirs),
            (Object::Set(ours), Object::Set(theirs)) => ours.join(theirs),
            (Object::ClSet(ours), Object::ClSet(theirs)) => ours.join(theirs),
            (Object::List(ours), Object::List(theirs)) => ours.join(theirs),
            (Object::Map(ours), Object::Map(theirs)) => ours.join(theirs),
            (ours, theirs) => {
                return Err(OpError::TypeMismatch { expected: ours.kind(), found: theirs.kind() })
            }
        }
        Ok(())
    }

    /// The object's JSON document (see the module documentation for the shapes).
    pub fn to_json(&self) -> Value {
        match self {
            Object::Counter(c) => counter_to_json(c),
            Object::Lww(r) => lww_to_json(r),
            Object::Mv(r) => mv_to_json(r),
            Object::Set(s) => set_to_json(s),
            Object::ClSet(s) => clset_to_json(s),
            Object::List(l) => list_to_json(l),
            Object::Map(m) => map_to_json(m),
        }
    }

    /// Reads an object of `kind` from its JSON document, checking it completely: a document
    /// that [`Object::to_json`] could not have written is an error, never a panic.
    pub fn from_json(kind: Kind, doc: &Value) -> Result<Object, OpError> {
        match kind {
            Kind::Counter => counter_from_json(doc).map(Object::Counter),
            Kind::Lww => lww_from_json(doc).map(Object::Lww),
            Kind::Mv => mv_from_json(doc).map(Object::Mv),
            Kind::Set => set_from_json(doc).map(Object::Set),
            Kind::ClSet => clset_from_json(doc).map(Object::ClSet),
            Kind::List => list_from_json(doc).map(|l| Object::List(Box::new(l))),
            Kind::Map => map_from_json(doc).map(|m| Object::Map(Box::new(m))),
        }
    }
}

fn counter_to_json(counter: &PnCounter) -> Value {
    let entries = counter.entries().map(|(node, e)| (node.to_string(), json!([e.p, e.n])));
    Value::Object(entries.collect())
}

fn counter_from_json(doc: &Value) -> Result<PnCounter, OpError> {
    let map = doc.as_object().ok_or(OpError::WrongShape("a counter must be an object"))?;
    if map.len() > NODES_MAX {
        return Err(OpError::TooBig { what: "nodes in an object", max: NODES_MAX as u64 });
    }
    let mut entries = Vec::with_capacity(map.len());
    for (node, totals) in map {
        let [p, n] = totals.as_array().map(Vec::as_slice).unwrap_or_default() else {
            return Err(OpError::WrongShape("a counter entry must be [p, n]"));
        };
        let (Some(p), Some(n)) = (p.as_u64(), n.as_u64()) else {
            return Err(OpError::WrongShape("counter totals must be integers from 0 to 2^64 - 1"));
        };
        if p == 0 && n == 0 {
            return Err(OpError::WrongShape("a counter entry must not be [0, 0]"));
        }
        entries.push((node_id(node)?, PnEntry { p, n }));
    }
    Ok(PnCounter::from_entries(entries))
}

fn lww_to_json(register: &LwwRegister<Value>) -> Value {
    match (register.stamp(), register.value()) {
        (Some(stamp), Some(value)) => {
            json!({"time": stamp.time_ms, "dot": dot_to_json(&stamp.dot), "value": value})
        }
        _ => json!({}),
    }
}

fn lww_from_json(doc: &Value) -> Result<LwwRegister<Value>, OpError> {
    let map = object_with(doc, &["time", "dot", "value"], "an LWW register must be an object")?;
    if map.is_empty() {
        return Ok(LwwRegister::new());
    }
    let (Some(time), Some(dot), Some(value)) = (map.get("time"), map.get("dot"), map.get("value")) else {
        return Err(OpError::WrongShape("an LWW register needs time, dot and value, or nothing"));
    };
    let time_ms = time.as_i64().ok_or(OpError::WrongShape("an LWW time must be an integer"))?;
    let [node, counter] = dot.as_array().map(Vec::as_slice).unwrap_or_default() else {
        return Err(OpError::WrongShape("a dot must be [node, counter]"));
    };
    check_value_size(value)?;
    Ok(LwwRegister::new().set(value.clone(), Stamp::new(time_ms, dot_from_json(node, counter)?)))
}

fn mv_to_json(register: &MvRegister<Value>) -> Value {
    let values: Vec<Value> =
        register.entries().map(|(dot, value)| json!([dot.node.as_str(), dot.counter, value])).collect();
    json!({"values": values, "context": context_to_json(register.context())})
}

/// `{"vv": {"<node>": n, …}, "cloud": [["<node>", n], ["<node>", first, last], …]}`, without
/// `cloud` when it is empty: a run of one dot as `[node, n]`, a longer one as `[node, first,
/// last]`.
fn context_to_json(context: &CausalContext) -> Value {
    let mut doc = Map::from_iter([("vv".to_owned(), vv_to_json(context.vv()))]);
    let run_to_json = |(node, first, last): (&NodeId, u64, u64)| {
        if first == last {
            json!([node.as_str(), first])
        } else {
            json!([node.as_str(), first, last])
        }
    };
    let cloud: Vec<Value> = context.cloud().map(run_to_json).collect();
    if !cloud.is_empty() {
        doc.insert("cloud".to_owned(), Value::Array(cloud));
    }
    Value::Object(doc)
}

/// `{"<node>": n, …}`.
pub(crate) fn vv_to_json(vv: &VersionVector) -> Value {
    Value::Object(vv.iter().map(|(node, c)| (node.to_string(), c.into())).collect())
}

/// A version vector `{"<node>": n, …}`: at most [`NODES_MAX`] nodes, counters from 1 to 2^53.
pub(crate) fn vv_from_json(doc: &Value) -> Result<VersionVector, OpError> {
    let map = doc.as_object().ok_or(OpError::WrongShape("a version vector must be an object"))?;
    if map.len() > NODES_MAX {
        return Err(OpError::TooBig { what: "nodes in an object", max: NODES_MAX as u64 });
    }
    let mut vv = Vec::with_capacity(map.len());
    for (node, counter) in map {
        let dot = dot_from_json(&Value::String(node.clone()), counter)?;
        vv.push((dot.node, dot.counter));
    }
    Ok(vv.into_iter().collect())
}

fn set_to_json(set: &Orswot<Scalar>) -> Value {
    let elems: Vec<Value> = set
        .iter()
        .flat_map(|elem| {
            set.dots(elem).map(move |dot| json!([elem.to_json(), dot.node.as_str(), dot.counter]))
        })
        .collect();
    json!({"elems": elems, "context": context_to_json(set.context())})
}

fn set_from_json(doc: &Value) -> Result<Orswot<Scalar>, OpError> {
    let map = object_with(doc, &["elems", "context"], "a set must be an object")?;
    let (Some(elems_doc), Some(context_doc)) = (map.get("elems"), map.get("context")) else {
        return Err(OpError::WrongShape("a set needs elems and context"));
    };
    let elems_doc = elems_doc.as_array().ok_or(OpError::WrongShape("set elems must be an array"))?;
    if elems_doc.len() > SET_ENTRIES_MAX {
        return Err(OpError::TooBig { what: "(element, dot) pairs in a set", max: SET_ENTRIES_MAX as u64 });
    }
    let mut entries: BTreeMap<Scalar, DotSet> = BTreeMap::new();
    for entry in elems_doc {
        let [elem, node, counter] = entry.as_array().map(Vec::as_slice).unwrap_or_default() else {
            return Err(OpError::WrongShape("a set entry must be [element, node, counter]"));
        };
        let elem = elem_from_json(elem)?;
        let dot = dot_from_json(node, counter)?;
        if !entries.contains_key(&elem) && entries.len() >= SET_ELEMS_MAX {
            return Err(OpError::TooBig { what: "elements in a set", max: SET_ELEMS_MAX as u64 });
        }
        if !entries.entry(elem).or_default().insert(dot) {
            return Err(OpError::WrongShape("a set holds one element twice under one dot"));
        }
    }
    let context = context_from_json(context_doc)?;
    Orswot::from_parts(entries, context)
        .ok_or(OpError::WrongShape("a set's dot is not in its context, or under two elements"))
}

fn clset_to_json(set: &ClSet<Scalar>) -> Value {
    let elems: Vec<Value> = set.lengths().map(|(elem, length)| json!([elem.to_json(), length])).collect();
    json!({"elems": elems})
}

fn clset_from_json(doc: &Value) -> Result<ClSet<Scalar>, OpError> {
    let map = object_with(doc, &["elems"], "a causal-length set must be an object")?;
    let elems_doc = map.get("elems").and_then(Value::as_array);
    let elems_doc = elems_doc.ok_or(OpError::WrongShape("a causal-length set needs an elems array"))?;
    if elems_doc.len() > SET_ELEMS_MAX {
        return Err(OpError::TooBig { what: "elements in a set", max: SET_ELEMS_MAX as u64 });
    }
    let mut lengths = BTreeMap::new();
    for entry in elems_doc {
        let [elem, length] = entry.as_array().map(Vec::as_slice).unwrap_or_default() else {
            return Err(OpError::WrongShape("a causal-length entry must be [element, length]"));
        };
        let length = length.as_u64().filter(|l| (1..=COUNTER_MAX).contains(l));
        let length =
            length.ok_or(OpError::WrongShape("a causal length must be an integer from 1 to 2^53"))?;
        if lengths.insert(elem_from_json(elem)?, length).is_some() {
            return Err(OpError::WrongShape("a causal-length set holds one element twice"));
        }
    }
    ClSet::from_lengths(lengths).ok_or(OpError::WrongShape("a causal length must not be 0"))
}

fn list_to_json(list: &Rga<Value>) -> Value {
    let elems: Vec<Value> = list
        .elements()
        .map(|e| json!([e.id.node.as_str(), e.id.counter, e.origin.map(dot_to_json), e.seq, e.value]))
        .collect();
    let deleted: Vec<Value> = list.tombstones().map(dot_to_json).collect();
    json!({"elems": elems, "deleted": deleted})
}

fn list_from_json(doc: &Value) -> Result<Rga<Value>, OpError> {
    let map = object_with(doc, &["elems", "deleted"], "a list must be an object")?;
    let (Some(Value::Array(elems_doc)), Some(Value::Array(deleted_doc))) =
        (map.get("elems"), map.get("deleted"))
    else {
        return Err(OpError::WrongShape("a list needs elems and deleted arrays"));
    };
    if elems_doc.len() > LIST_ELEMS_MAX || deleted_doc.len() > LIST_ELEMS_MAX {
        return Err(OpError::TooBig { what: "elements in a list", max: LIST_ELEMS_MAX as u64 });
    }
    let mut elems = Vec::with_capacity(elems_doc.len());
    for entry in elems_doc {
        let [node, counter, origin, seq, value] = entry.as_array().map(Vec::as_slice).unwrap_or_default()
        else {
            return Err(OpError::WrongShape("a list element must be [node, counter, origin, seq, value]"));
        };
        let origin = match origin {
            Value::Null => None,
            Value::Array(dot) => match dot.as_slice() {
                [node, counter] => Some(dot_from_json(node, counter)?),
                _ => return Err(OpError::WrongShape("a dot must be [node, counter]")),
            },
            _ => return Err(OpError::WrongShape("a list element's origin must be a dot or null")),
        };
        let seq = seq.as_u64().filter(|s| (1..=COUNTER_MAX).contains(s));
        let seq = seq.ok_or(OpError::WrongShape("a list element's seq must be an integer from 1 to 2^53"))?;
        check_json_size(value, LIST_VALUE_BYTES_MAX, "bytes of a list element")?;
        elems.push((dot_from_json(node, counter)?, origin, seq, value.clone()));
    }
    let mut deleted = Vec::with_capacity(deleted_doc.len());
    for dot in deleted_doc {
        let [node, counter] = dot.as_array().map(Vec::as_slice).unwrap_or_default() else {
            return Err(OpError::WrongShape("a dot must be [node, counter]"));
        };
        deleted.push(dot_from_json(node, counter)?);
    }
    Rga::from_parts(elems, deleted).map_err(|e| {
        OpError::WrongShape(match e {
            ListPartsError::DuplicateId => "a list holds two elements with one id",
            ListPartsError::DuplicateTombstone => "a list holds one tombstone twice",
            ListPartsError::OwnOrigin => "a list element is its own origin",
            ListPartsError::NotAfterOrigin => "a list element's seq is not above its origin's",
            ListPartsError::Zero => "a list element's dot or seq is 0",
        })
    })
}

fn map_to_json(map: &OrMap<String>) -> Value {
    json!({"entries": map_entries_to_json(map.iter()), "context": context_to_json(map.context())})
}

fn map_entries_to_json<'a>(entries: impl Iterator<Item = (&'a String, &'a MapValue<String>)>) -> Value {
    Value::Object(entries.map(|(key, value)| (key.clone(), map_value_to_json(value))).collect())
}

/// `{"map": …, "set": …, "reg": …}`, the non-empty parts only.
fn map_value_to_json(value: &MapValue<String>) -> Value {
    let mut doc = Map::new();
    // Entries holding only retired list elements are written too: they order the list.
    if value.has_map_entries() {
        doc.insert("map".to_owned(), map_entries_to_json(value.entries()));
    }
    if value.holds(ValueKind::Set) {
        let set = value.set_entries().flat_map(|(elem, dots)| {
            dots.iter().map(move |dot| json!([elem.to_json(), dot.node.as_str(), dot.counter]))
        });
        doc.insert("set".to_owned(), set.collect());
    }
    if value.holds(ValueKind::Register) {
        let reg =
            value.register_entries().map(|(dot, v)| json!([dot.node.as_str(), dot.counter, v.to_json()]));
        doc.insert("reg".to_owned(), reg.collect());
    }
    if value.holds(ValueKind::Counter) {
        let counter =
            value.counter_entries().map(|(dot, e)| json!([dot.node.as_str(), dot.counter, e.p, e.n]));
        doc.insert("counter".to_owned(), counter.collect());
    }
    // Retired elements included, as `deleted` (see `DotList`).
    if value.list().element_count() > 0 {
        doc.insert("list".to_owned(), list_to_json(value.list().rga()));
    }
    if value.holds(ValueKind::Lww) {
        let lww = value
            .lww_entries()
            .map(|(dot, e)| json!([dot.node.as_str(), dot.counter, e.time_ms, e.value.clone()]));
        doc.insert("lww".to_owned(), lww.collect());
    }
    if value.holds(ValueKind::ClSet) {
        let clset = value.clset_entries().flat_map(|(elem, bumps)| {
            bumps
                .iter()
                .map(move |(dot, length)| json!([elem.to_json(), dot.node.as_str(), dot.counter, length]))
        });
        doc.insert("clset".to_owned(), clset.collect());
    }
    Value::Object(doc)
}

fn map_from_json(doc: &Value) -> Result<OrMap<String>, OpError> {
    let map = object_with(doc, &["entries", "context"], "a map must be an object")?;
    let (Some(Value::Object(entries_doc)), Some(context_doc)) = (map.get("entries"), map.get("context"))
    else {
        return Err(OpError::WrongShape("a map needs an entries object and a context"));
    };
    let mut totals = MapTotals::default();
    let entries = map_entries_from_json(entries_doc, 1, &mut totals)?;
    let context = context_from_json(context_doc)?;
    OrMap::from_parts(entries, context).ok_or(OpError::WrongShape(
        "a map's dot is not in its context or is in two places, or a map value is empty",
    ))
}

/// What a map document holds so far, at every depth: what its limits count.
#[derive(Default)]
struct MapTotals {
    keys: usize,
    dots: usize,
    lww_bytes: usize,
}

impl MapTotals {
    fn add_dot(&mut self) -> Result<(), OpError> {
        self.dots += 1;
        if self.dots > MAP_DOTS_MAX {
            return Err(OpError::TooBig { what: "dots in a map", max: MAP_DOTS_MAX as u64 });
        }
        Ok(())
    }
}

/// The entries of a map at `depth` (1 for the top), checked against the limits.
fn map_entries_from_json(
    doc: &Map<String, Value>,
    depth: usize,
    totals: &mut MapTotals,
) -> Result<DotMap<String, MapValue<String>>, OpError> {
    if depth > MAP_DEPTH_MAX {
        return Err(OpError::TooBig { what: "levels of nested maps", max: MAP_DEPTH_MAX as u64 });
    }
    totals.keys += doc.len();
    if totals.keys > MAP_KEYS_MAX {
        return Err(OpError::TooBig { what: "keys in a map", max: MAP_KEYS_MAX as u64 });
    }
    let mut entries = DotMap::new();
    for (key, value_doc) in doc {
        check_map_key(key)?;
        let parts = object_with(
            value_doc,
            &["map", "set", "reg", "counter", "list", "lww", "clset"],
            "a map value must be an object",
        )?;
        let nested = match parts.get("map") {
            None => DotMap::new(),
            Some(Value::Object(nested)) => map_entries_from_json(nested, depth + 1, totals)?,
            Some(_) => return Err(OpError::WrongShape("a nested map must be an object")),
        };
        let mut set: BTreeMap<Scalar, DotSet> = BTreeMap::new();
        for entry in map_part(parts, "set")? {
            let [elem, node, counter] = entry.as_array().map(Vec::as_slice).unwrap_or_default() else {
                return Err(OpError::WrongShape("a set entry must be [element, node, counter]"));
            };
            totals.add_dot()?;
            let elem = elem_from_json(elem)?;
            if !set.entry(elem).or_default().insert(dot_from_json(node, counter)?) {
                return Err(OpError::WrongShape("a set holds one element twice under one dot"));
            }
        }
        let mut register = DotFun::new();
        for entry in map_part(parts, "reg")? {
            let [node, counter, value] = entry.as_array().map(Vec::as_slice).unwrap_or_default() else {
                return Err(OpError::WrongShape("a register value must be [node, counter, value]"));
            };
            totals.add_dot()?;
            let dot = dot_from_json(node, counter)?;
            if register.get(&dot).is_some() {
                return Err(OpError::WrongShape("a register holds two values under one dot"));
            }
            register.insert(dot, map_scalar_from_json(value)?);
        }
        let mut counter = DotFun::new();
        for entry in map_part(parts, "counter")? {
            let [node, counter_doc, p, n] = entry.as_array().map(Vec::as_slice).unwrap_or_default() else {
                return Err(OpError::WrongShape("a map counter entry must be [node, counter, p, n]"));
            };
            totals.add_dot()?;
            let dot = dot_from_json(node, counter_doc)?;
            let (Some(p), Some(n)) = (p.as_u64(), n.as_u64()) else {
                return Err(OpError::WrongShape("counter totals must be integers from 0 to 2^64 - 1"));
            };
            if p == 0 && n == 0 {
                return Err(OpError::WrongShape("a counter entry must not be [0, 0]"));
            }
            if counter.get(&dot).is_some() {
                return Err(OpError::WrongShape("a map counter holds two entries under one dot"));
            }
            counter.insert(dot, PnEntry { p, n });
        }
        let list = match parts.get("list") {
            None => DotList::new(),
            Some(list_doc) => {
                let list = list_from_json(list_doc)?;
                // Each element, live or retired, counts against the map's dots.
                for _ in 0..list.element_count() {
                    totals.add_dot()?;
                }
                DotList::from_rga(list)
                    .ok_or(OpError::WrongShape("a map list's deleted element is not among its elems"))?
            }
        };
        let mut lww = DotFun::new();
        for entry in map_part(parts, "lww")? {
            let [node, counter_doc, time_ms, value] = entry.as_array().map(Vec::as_slice).unwrap_or_default()
            else {
                return Err(OpError::WrongShape("a map lww entry must be [node, counter, time, value]"));
            };
            totals.add_dot()?;
            let dot = dot_from_json(node, counter_doc)?;
            let Some(time_ms) = time_ms.as_i64() else {
                return Err(OpError::WrongShape("an lww time must be an integer of milliseconds"));
            };
            check_value_size(value)?;
            totals.lww_bytes += crate::map::json_bytes(value);
            if totals.lww_bytes > MAP_LWW_BYTES_MAX {
                return Err(OpError::TooBig {
                    what: "bytes of a map's last-writer-wins values",
                    max: MAP_LWW_BYTES_MAX as u64,
                });
            }
            if lww.get(&dot).is_some() {
                return Err(OpError::WrongShape("a map lww register holds two writes under one dot"));
            }
            lww.insert(dot, LwwEntry { time_ms, value: value.clone() });
        }
        let mut clset: BTreeMap<Scalar, DotFun<u64>> = BTreeMap::new();
        for entry in map_part(parts, "clset")? {
            let [elem, node, counter_doc, length] = entry.as_array().map(Vec::as_slice).unwrap_or_default()
            else {
                return Err(OpError::WrongShape(
                    "a map clset entry must be [element, node, counter, length]",
                ));
            };
            totals.add_dot()?;
            let elem = elem_from_json(elem)?;
            let dot = dot_from_json(node, counter_doc)?;
            let length = length.as_u64().filter(|l| (1..=COUNTER_MAX).contains(l));
            let length =
                length.ok_or(OpError::WrongShape("a causal length must be an integer from 1 to 2^53"))?;
            let bumps = clset.entry(elem).or_default();
            if bumps.get(&dot).is_some() {
                return Err(OpError::WrongShape("a map clset holds one element twice under one dot"));
            }
            bumps.insert(dot, length);
        }
        // Empty parts, which `to_json` leaves out, are refused by `OrMap::from_parts`.
        let value = MapValue::from_parts(nested, set.into_iter().collect(), register)
            .with_counter(counter)
            .with_list(list)
            .with_lww(lww)
            .with_clset(clset.into_iter().collect());
        entries.insert(key.clone(), value);
    }
    Ok(entries)
}

/// The `set`, `reg`, `counter`, `lww` or `clset` array of a map value; empty when absent.
fn map_part<'a>(parts: &'a Map<String, Value>, name: &str) -> Result<&'a [Value], OpError> {
    match parts.get(name) {
        None => Ok(&[]),
        Some(Value::Array(part)) => Ok(part),
        Some(_) => Err(OpError::WrongShape("a map value's set, reg, counter, lww and clset must be arrays")),
    }
}

/// Refuses a map key over [`MAP_KEY_BYTES_MAX`] bytes.
pub(crate) fn check_map_key(key: &str) -> Result<(), OpError> {
    if key.len() > MAP_KEY_BYTES_MAX {
        return Err(OpError::TooBig { what: "bytes of a map key", max: MAP_KEY_BYTES_MAX as u64 });
    }
    Ok(())
}

/// A map register's value: a JSON scalar of at most [`ELEM_BYTES_MAX`] bytes (a map holds
/// scalars; a JSON array or object belongs in an lww or mv object of its own).
pub(crate) fn map_scalar_from_json(doc: &Value) -> Result<Scalar, OpError> {
    let scalar = Scalar::from_json(doc).ok_or(OpError::WrongShape(
        "a map register holds null, a boolean, a number within i64 or a float, or a string",
    ))?;
    check_json_size(doc, ELEM_BYTES_MAX, "bytes of a map register value")?;
    Ok(scalar)
}

/// A set element: a JSON scalar of at most [`ELEM_BYTES_MAX`] bytes.
pub(crate) fn elem_from_json(doc: &Value) -> Result<Scalar, OpError> {
    let elem = Scalar::from_json(doc).ok_or(OpError::WrongShape(
        "an element must be null, a boolean, a number within i64 or a float, or a string",
    ))?;
    check_json_size(doc, ELEM_BYTES_MAX, "bytes of a set element")?;
    Ok(elem)
}

fn mv_from_json(doc: &Value) -> Result<MvRegister<Value>, OpError> {
    let map = object_with(doc, &["values", "context"], "an MV register must be an object")?;
    let (Some(values_doc), Some(context_doc)) = (map.get("values"), map.get("context")) else {
        return Err(OpError::WrongShape("an MV register needs values and context"));
    };
    let values_doc = values_doc.as_array().ok_or(OpError::WrongShape("MV values must be an array"))?;
    if values_doc.len() > MV_VALUES_MAX {
        return Err(OpError::TooBig { what: "values in an MV register", max: MV_VALUES_MAX as u64 });
    }
    let mut values = BTreeMap::new();
    for entry in values_doc {
        let [node, counter, value] = entry.as_array().map(Vec::as_slice).unwrap_or_default() else {
            return Err(OpError::WrongShape("an MV value must be [node, counter, value]"));
        };
        check_value_size(value)?;
        if values.insert(dot_from_json(node, counter)?, value.clone()).is_some() {
            return Err(OpError::WrongShape("an MV register holds two values under one dot"));
        }
    }
    let context = context_from_json(context_doc)?;
    MvRegister::from_parts(values, context)
        .ok_or(OpError::WrongShape("an MV value's dot is not in the register's context"))
}

fn context_from_json(doc: &Value) -> Result<CausalContext, OpError> {
    let map = object_with(doc, &["vv", "cloud"], "a causal context must be an object")?;
    let vv_doc = map.get("vv").filter(|vv| vv.is_object());
    let vv = vv_from_json(vv_doc.ok_or(OpError::WrongShape("a causal context needs a vv object"))?)?;
    let cloud_doc = match map.get("cloud") {
        None => &[][..],
        Some(cloud) => cloud.as_array().ok_or(OpError::WrongShape("a cloud must be an array of runs"))?,
    };
    if cloud_doc.len() > CLOUD_DOTS_MAX {
        return Err(OpError::TooBig { what: "runs in a causal context's cloud", max: CLOUD_DOTS_MAX as u64 });
    }
    // Inserting compacts, whatever order the runs come in and however they overlap.
    let mut context = CausalContext::from_vv(vv);
    for run in cloud_doc {
        let (node, first, last) = match run.as_array().map(Vec::as_slice).unwrap_or_default() {
            [node, counter] => (node, counter, counter),
            [node, first, last] => (node, first, last),
            _ => {
                return Err(OpError::WrongShape("a cloud run must be [node, counter] or [node, first, last]"))
            }
        };
        let (first, last) = (dot_from_json(node, first)?, dot_from_json(node, last)?);
        if first.counter > last.counter {
            return Err(OpError::WrongShape("a cloud run must not end before it starts"));
        }
        context.insert_run(&first.node, first.counter, last.counter);
    }
    Ok(context)
}

/// `["<node>", n]`.
pub(crate) fn dot_to_json(dot: &Dot) -> Value {
    json!([dot.node.as_str(), dot.counter])
}

/// A dot from its node and counter, both checked.
pub(crate) fn dot_from_json(node: &Value, counter: &Value) -> Result<Dot, OpError> {
    let node = node.as_str().ok_or(OpError::WrongShape("a node id must be a string"))?;
    let counter = counter.as_u64().filter(|c| (1..=COUNTER_MAX).contains(c));
    let counter = counter.ok_or(OpError::WrongShape("a dot counter must be an integer from 1 to 2^53"))?;
    Ok(Dot { node: node_id(node)?, counter })
}

fn node_id(node: &str) -> Result<NodeId, OpError> {
    NodeId::parse(node).ok_or(OpError::WrongShape("a node id must be 1 to 256 bytes without spaces"))
}

/// `doc` as an object whose fields are all among `allowed`.
fn object_with<'a>(
    doc: &'a Value,
    allowed: &[&str],
    not_object: &'static str,
) -> Result<&'a Map<String, Value>, OpError> {
    let map = doc.as_object().ok_or(OpError::WrongShape(not_object))?;
    if map.keys().any(|field| !allowed.contains(&field.as_str())) {
        return Err(OpError::WrongShape("unknown field"));
    }
    Ok(map)
}

/// Refuses a value over [`VALUE_BYTES_MAX`] bytes of compact JSON.
pub(crate) fn check_value_size(value: &Value) -> Result<(), OpError> {
    check_json_size(value, VALUE_BYTES_MAX, "bytes of a JSON value")
}

/// Refuses a value over `bytes_max` bytes of compact JSON. Counts while writing and stops at
/// the limit, so a huge value is never written out in full.
pub(crate) fn check_json_size(value: &Value, bytes_max: usize, what: &'static str) -> Result<(), OpError> {
    struct Meter {
        bytes: usize,
        bytes_max: usize,
    }
    impl io::Write for Meter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.bytes += buf.len();
            if self.bytes > self.bytes_max {
                return Err(io::Error::other("over the limit"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    // Writing a `Value` fails only when the meter stops it.
    serde_json::to_writer(&mut Meter { bytes: 0, bytes_max }, value)
        .map_err(|_| OpError::TooBig { what, max: bytes_max as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(s: &str) -> NodeId {
        NodeId::from(s)
    }

    fn reason(kind: Kind, doc: Value) -> &'static str {
        match Object::from_json(kind, &doc) {
            Ok(object) => panic!("{doc} read as {object:?}"),
            Err(e) => e.reason(),
        }
    }

    #[test]
    fn kinds_have_stable_names() {
        let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names, ["counter", "lww", "mv", "set", "clset", "list", "map"]);
        for kind in Kind::ALL {
            assert_eq!(Kind::from_name(kind.name()), Some(*kind));
            assert_eq!(Object::bottom(*kind).kind(), *kind);
            assert!(Object::bottom(*kind).is_bottom());
        }
        assert_eq!(Kind::from_name("sets"), None);
    }

    #[test]
    fn join_refuses_another_kind_and_leaves_the_state_alone() {
        let mut counter = Object::Counter(PnCounter::new().inc(&node("a"), 2));
        let before = counter.clone();
        let err = counter.join(&Object::bottom(Kind::Mv)).err();
        assert_eq!(err, Some(OpError::TypeMismatch { expected: Kind::Counter, found: Kind::Mv }));
        assert_eq!(err.map(|e| e.reason()), Some("crdtTypeMismatch"));
        assert_eq!(counter, before);
        let delta = Object::Counter(PnCounter::new().inc(&node("a"), 5));
        assert_eq!(counter.join(&delta), Ok(()));
        assert_eq!(counter, delta);
    }

    #[test]
    fn counter_document() {
        let mut c = PnCounter::new().inc(&node("alice:1:1"), 3);
        c.join(&c.dec(&node("alice:1:1"), 1));
        c.join(&c.dec(&node("server:x"), 2));
        let doc = Object::Counter(c.clone()).to_json();
        assert_eq!(doc, json!({"alice:1:1": [3, 1], "server:x": [0, 2]}));
        assert_eq!(Object::from_json(Kind::Counter, &doc), Ok(Object::Counter(c)));
        assert_eq!(Object::bottom(Kind::Counter).to_json(), json!({}));
        let max = json!({"a": [u64::MAX, u64::MAX]});
        assert!(Object::from_json(Kind::Counter, &max).is_ok(), "totals up to u64::MAX");
    }

    #[test]
    fn bad_counter_documents() {
        for doc in [
            json!([]),
            json!({"a": [1]}),
            json!({"a": [1, 2, 3]}),
            json!({"a": [-1, 0]}),
            json!({"a": [1.5, 0]}),
            json!({"a": [0, 0]}),
            json!({"a": ["1", 0]}),
            json!({"a": 1}),
            json!({"": [1, 0]}),
            json!({"a b": [1, 0]}),
            json!({"x".repeat(257): [1, 0]}),
        ] {
            assert_eq!(reason(Kind::Counter, doc), "crdtWrongShape");
        }
        let big = u64::MAX as f64 * 2.0;
        assert_eq!(reason(Kind::Counter, json!({"a": [big, 0]})), "crdtWrongShape");
        let many: Map<String, Value> = (0..=NODES_MAX).map(|i| (format!("n{i}"), json!([1, 0]))).collect();
        assert_eq!(reason(Kind::Counter, Value::Object(many)), "crdtTooBig");
    }

    #[test]
    fn lww_document() {
        let r = LwwRegister::new().set(json!({"title": "hi"}), Stamp::new(-7, Dot::new("a", 3)));
        let doc = Object::Lww(r.clone()).to_json();
        assert_eq!(doc, json!({"time": -7, "dot": ["a", 3], "value": {"title": "hi"}}));
        assert_eq!(Object::from_json(Kind::Lww, &doc), Ok(Object::Lww(r)));
        assert_eq!(Object::bottom(Kind::Lww).to_json(), json!({}));
        assert_eq!(Object::from_json(Kind::Lww, &json!({})), Ok(Object::bottom(Kind::Lww)));
        let null = json!({"time": 1, "dot": ["a", 1], "value": null});
        assert!(Object::from_json(Kind::Lww, &null).is_ok(), "null is a value like any other");
    }

    #[test]
    fn bad_lww_documents() {
        for doc in [
            json!(null),
            json!({"time": 1, "dot": ["a", 1]}),
            json!({"time": 1, "dot": ["a", 1], "value": 1, "extra": 0}),
            json!({"time": 1.5, "dot": ["a", 1], "value": 1}),
            json!({"time": u64::MAX, "dot": ["a", 1], "value": 1}),
            json!({"time": 1, "dot": ["a", 0], "value": 1}),
            json!({"time": 1, "dot": ["a", COUNTER_MAX + 1], "value": 1}),
            json!({"time": 1, "dot": ["a"], "value": 1}),
            json!({"time": 1, "dot": [1, 1], "value": 1}),
            json!({"time": 1, "dot": {"a": 1}, "value": 1}),
        ] {
            assert_eq!(reason(Kind::Lww, doc), "crdtWrongShape");
        }
        let huge = json!({"time": 1, "dot": ["a", 1], "value": "x".repeat(VALUE_BYTES_MAX)});
        assert_eq!(reason(Kind::Lww, huge), "crdtTooBig");
    }

    #[test]
    fn mv_document() {
        let (a, b) = (node("a"), node("b"));
        let mut r = MvRegister::new();
        r.join(&r.write(Dot::new("a", 1), json!(1)));
        r.join(&r.write(Dot::new("a", 2), json!(2)));
        let mut other = MvRegister::new();
        other.join(&other.write(other.context().next_dot(&b), json!("b")));
        r.join(&other);
        let doc = Object::Mv(r.clone()).to_json();
        assert_eq!(doc, json!({"values": [["a", 2, 2], ["b", 1, "b"]], "context": {"vv": {"a": 2, "b": 1}}}));
        assert_eq!(Object::from_json(Kind::Mv, &doc), Ok(Object::Mv(r.clone())));

        // A delta's context has a cloud: the write (a, 3) observed (b, 1) and (a, 2).
        let delta = r.write(r.context().next_dot(&a), json!(3));
        let doc = Object::Mv(delta.clone()).to_json();
        assert_eq!(
            doc,
            json!({"values": [["a", 3, 3]], "context": {"vv": {"b": 1}, "cloud": [["a", 2, 3]]}})
        );
        assert_eq!(Object::from_json(Kind::Mv, &doc), Ok(Object::Mv(delta)));
        let bottom = Object::bottom(Kind::Mv).to_json();
        assert_eq!(bottom, json!({"values": [], "context": {"vv": {}}}));
        assert_eq!(Object::from_json(Kind::Mv, &bottom), Ok(Object::bottom(Kind::Mv)));
    }

    #[test]
    fn mv_context_is_read_in_any_order_and_compacted() {
        let doc = json!({"values": [], "context": {"vv": {"a": 1}, "cloud": [["a", 3], ["a", 2], ["b", 2]]}});
        let Ok(Object::Mv(r)) = Object::from_json(Kind::Mv, &doc) else { panic!("not read") };
        assert_eq!(r.context().vv().get(&node("a")), 3);
        assert_eq!(r.context().cloud().collect::<Vec<_>>(), [(&node("b"), 2, 2)]);
    }

    #[test]
    fn cloud_runs_are_written_as_triples_and_read_overlapping() {
        let doc = json!({"values": [], "context": {"vv": {"a": 1}, "cloud": [["a", 5, 9], ["a", 3], ["a", 8, 12], ["b", 2, 2]]}});
        let Ok(Object::Mv(r)) = Object::from_json(Kind::Mv, &doc) else { panic!("not read") };
        let runs = [(&node("a"), 3, 3), (&node("a"), 5, 12), (&node("b"), 2, 2)];
        assert_eq!(r.context().cloud().collect::<Vec<_>>(), runs);
        let written = json!({"vv": {"a": 1}, "cloud": [["a", 3], ["a", 5, 12], ["b", 2]]});
        assert_eq!(Object::Mv(r).to_json()["context"], written);
        let far = json!({"values": [], "context": {"vv": {}, "cloud": [["a", 2, 1u64 << 53]]}});
        assert!(Object::from_json(Kind::Mv, &far).is_ok(), "a long run costs what a short one does");
    }

    #[test]
    fn bad_mv_documents() {
        let ctx = json!({"vv": {"a": 2}});
        for doc in [
            json!({}),
            json!({"values": []}),
            json!({"values": {}, "context": ctx}),
            json!({"values": [], "context": ctx, "x": 1}),
            json!({"values": [["a", 1]], "context": ctx}),
            json!({"values": [["a", 3, 0]], "context": ctx}),
            json!({"values": [["a", 1, 0], ["a", 1, 1]], "context": ctx}),
            json!({"values": [], "context": {}}),
            json!({"values": [], "context": {"vv": []}}),
            json!({"values": [], "context": {"vv": {"a": 0}}}),
            json!({"values": [], "context": {"vv": {"a": -1}}}),
            json!({"values": [], "context": {"vv": {"a": 1}, "cloud": {"a": 3}}}),
            json!({"values": [], "context": {"vv": {"a": 1}, "cloud": [["a"]]}}),
            json!({"values": [], "context": {"vv": {"a": 1}, "cloud": [["a", 5, 4]]}}),
            json!({"values": [], "context": {"vv": {"a": 1}, "cloud": [["a", 0, 4]]}}),
            json!({"values": [], "context": {"vv": {"a": 1}, "cloud": [["a", 3, 4, 5]]}}),
            json!({"values": [], "context": {"vv": {"a": 1}, "extra": []}}),
            json!({"values": [], "context": {"vv": {"a b": 1}}}),
        ] {
            assert_eq!(reason(Kind::Mv, doc), "crdtWrongShape");
        }
        let many: Vec<Value> = (1..=MV_VALUES_MAX as u64 + 1).map(|i| json!(["a", i, 0])).collect();
        let ctx = json!({"vv": {"a": MV_VALUES_MAX + 1}});
        assert_eq!(reason(Kind::Mv, json!({"values": many, "context": ctx})), "crdtTooBig");
        let cloud: Vec<Value> = (0..=CLOUD_DOTS_MAX as u64).map(|i| json!(["a", 2 * i + 3])).collect();
        let doc = json!({"values": [], "context": {"vv": {}, "cloud": cloud}});
        assert_eq!(reason(Kind::Mv, doc), "crdtTooBig");
        let huge = json!({"values": [["a", 1, "x".repeat(VALUE_BYTES_MAX)]], "context": {"vv": {"a": 1}}});
        assert_eq!(reason(Kind::Mv, huge), "crdtTooBig");
    }

    #[test]
    fn set_document() {
        let mut s = Orswot::new();
        for (dot, elem) in [(Dot::new("a", 1), Scalar::from("x")), (Dot::new("b", 1), Scalar::Int(2))] {
            let d = s.add(dot, elem);
            s.join(&d);
        }
        let d = s.add(Dot::new("c", 2), Scalar::Int(2));
        let mut other = s.clone();
        other.join(&s.add(Dot::new("c", 3), Scalar::Null));
        s.join(&d);
        let doc = Object::Set(s.clone()).to_json();
        assert_eq!(
            doc,
            json!({
                "elems": [[2, "c", 2], ["x", "a", 1]],
                "context": {"vv": {"a": 1, "b": 1}, "cloud": [["c", 2]]}
            }),
            "elements in scalar order (numbers before strings)"
        );
        assert_eq!(Object::from_json(Kind::Set, &doc), Ok(Object::Set(s.clone())));
        s.join(&other);
        let doc = Object::Set(s.clone()).to_json();
        assert_eq!(doc["elems"], json!([[null, "c", 3], [2, "c", 2], ["x", "a", 1]]));
        assert_eq!(Object::from_json(Kind::Set, &doc), Ok(Object::Set(s)));
        let bottom = Object::bottom(Kind::Set).to_json();
        assert_eq!(bottom, json!({"elems": [], "context": {"vv": {}}}));
        assert_eq!(Object::from_json(Kind::Set, &bottom), Ok(Object::bottom(Kind::Set)));
    }

    #[test]
    fn bad_set_documents() {
        let ctx = json!({"vv": {"a": 2}});
        for doc in [
            json!([]),
            json!({"elems": []}),
            json!({"elems": {}, "context": ctx}),
            json!({"elems": [], "context": ctx, "values": []}),
            json!({"elems": [["x", "a"]], "context": ctx}),
            json!({"elems": [[["x"], "a", 1]], "context": ctx}),
            json!({"elems": [[{}, "a", 1]], "context": ctx}),
            json!({"elems": [[u64::MAX, "a", 1]], "context": ctx}),
            json!({"elems": [["x", "a", 3]], "context": ctx}),
            json!({"elems": [["x", "a", 0]], "context": ctx}),
            json!({"elems": [["x", "a", 1], ["x", "a", 1]], "context": ctx}),
            json!({"elems": [["x", "a", 1], ["y", "a", 1]], "context": ctx}),
            json!({"elems": [], "context": {"vv": {"a": 0}}}),
        ] {
            assert_eq!(reason(Kind::Set, doc), "crdtWrongShape");
        }
        let long = "x".repeat(ELEM_BYTES_MAX);
        assert_eq!(reason(Kind::Set, json!({"elems": [[long, "a", 1]], "context": ctx})), "crdtTooBig");
        let many: Vec<Value> = (1..=SET_ELEMS_MAX as u64 + 1).map(|i| json!([i, "a", i])).collect();
        let ctx = json!({"vv": {"a": SET_ELEMS_MAX + 1}});
        assert_eq!(reason(Kind::Set, json!({"elems": many, "context": ctx})), "crdtTooBig");
        let many: Vec<Value> = (1..=SET_ENTRIES_MAX as u64 + 1).map(|i| json!([0, "a", i])).collect();
        let ctx = json!({"vv": {"a": SET_ENTRIES_MAX + 1}});
        assert_eq!(reason(Kind::Set, json!({"elems": many, "context": ctx})), "crdtTooBig");
    }

    #[test]
    fn clset_document() {
        let mut s = ClSet::new();
        for delta in [s.add(Scalar::from("x")), s.add(Scalar::Int(1))] {
            s.join(&delta);
        }
        let removal = s.remove(&Scalar::from("x"));
        s.join(&removal);
        let doc = Object::ClSet(s.clone()).to_json();
        assert_eq!(doc, json!({"elems": [[1, 1], ["x", 2]]}));
        assert_eq!(Object::from_json(Kind::ClSet, &doc), Ok(Object::ClSet(s)));
        let bottom = Object::bottom(Kind::ClSet).to_json();
        assert_eq!(bottom, json!({"elems": []}));
        assert_eq!(Object::from_json(Kind::ClSet, &bottom), Ok(Object::bottom(Kind::ClSet)));
    }

    #[test]
    fn bad_clset_documents() {
        for doc in [
            json!([]),
            json!({}),
            json!({"elems": {}}),
            json!({"elems": [], "context": {}}),
            json!({"elems": [["x"]]}),
            json!({"elems": [["x", 1, 2]]}),
            json!({"elems": [["x", 0]]}),
            json!({"elems": [["x", -1]]}),
            json!({"elems": [["x", 1.5]]}),
            json!({"elems": [["x", COUNTER_MAX + 1]]}),
            json!({"elems": [[[1], 1]]}),
            json!({"elems": [["x", 1], ["x", 2]]}),
        ] {
            assert_eq!(reason(Kind::ClSet, doc), "crdtWrongShape");
        }
        let long = "x".repeat(ELEM_BYTES_MAX);
        assert_eq!(reason(Kind::ClSet, json!({"elems": [[long, 1]]})), "crdtTooBig");
        let many: Vec<Value> = (0..=SET_ELEMS_MAX as u64).map(|i| json!([i, 1])).collect();
        assert_eq!(reason(Kind::ClSet, json!({"elems": many})), "crdtTooBig");
    }

    #[test]
    fn value_size_counts_compact_json() {
        let just = Value::String("x".repeat(VALUE_BYTES_MAX - 2));
        assert_eq!(check_value_size(&just), Ok(()), "two quotes plus the characters");
        let over = Value::String("x".repeat(VALUE_BYTES_MAX - 1));
        assert_eq!(check_value_size(&over).map_err(|e| e.reason()), Err("crdtTooBig"));
    }
    #[test]
    fn list_document() {
        let mut l = Rga::new();
        for (index, counter, value) in [(0, 1, json!("b")), (0, 2, json!({"t": 1})), (2, 3, json!(null))] {
            l.join(&l.insert(index, Dot::new("a", counter), value));
        }
        l.join(&l.delete(1));
        let doc = Object::List(Box::new(l.clone())).to_json();
        assert_eq!(
            doc,
            json!({
                "elems": [["a", 2, null, 2, {"t": 1}], ["a", 1, null, 1, "b"], ["a", 3, ["a", 1], 3, null]],
                "deleted": [["a", 1]]
            })
        );
        assert_eq!(Object::from_json(Kind::List, &doc), Ok(Object::List(Box::new(l.clone()))));
        let delta = l.delete(0);
        let doc = Object::List(Box::new(delta.clone())).to_json();
        assert_eq!(doc, json!({"elems": [], "deleted": [["a", 2]]}));
        assert_eq!(Object::from_json(Kind::List, &doc), Ok(Object::List(Box::new(delta))));
        let delta = l.insert(1, Dot::new("b", 1), json!(7));
        let doc = Object::List(Box::new(delta.clone())).to_json();
        assert_eq!(doc, json!({"elems": [["b", 1, ["a", 2], 4, 7]], "deleted": []}), "origin not here");
        assert_eq!(Object::from_json(Kind::List, &doc), Ok(Object::List(Box::new(delta))));
        let bottom = Object::bottom(Kind::List).to_json();
        assert_eq!(bottom, json!({"elems": [], "deleted": []}));
        assert_eq!(Object::from_json(Kind::List, &bottom), Ok(Object::bottom(Kind::List)));
    }

    #[test]
    fn bad_list_documents() {
        let e = |origin: Value, seq: Value| json!(["a", 2, origin, seq, 0]);
        for doc in [
            json!([]),
            json!({"elems": []}),
            json!({"deleted": []}),
            json!({"elems": {}, "deleted": []}),
            json!({"elems": [], "deleted": {}}),
            json!({"elems": [], "deleted": [], "context": {}}),
            json!({"elems": [["a", 1, null, 1]], "deleted": []}),
            json!({"elems": [["a", 1, null, 1, 0, 0]], "deleted": []}),
            json!({"elems": [["a", 0, null, 1, 0]], "deleted": []}),
            json!({"elems": [["a b", 1, null, 1, 0]], "deleted": []}),
            json!({"elems": [[1, 1, null, 1, 0]], "deleted": []}),
            json!({"elems": [e(json!(["a"]), json!(1))], "deleted": []}),
            json!({"elems": [e(json!("a"), json!(1))], "deleted": []}),
            json!({"elems": [e(json!(["a", 0]), json!(1))], "deleted": []}),
            json!({"elems": [e(json!(["a", 2]), json!(1))], "deleted": []}),
            json!({"elems": [e(json!(null), json!(0))], "deleted": []}),
            json!({"elems": [e(json!(null), json!(-1))], "deleted": []}),
            json!({"elems": [e(json!(null), json!(1.5))], "deleted": []}),
            json!({"elems": [e(json!(null), json!(COUNTER_MAX + 1))], "deleted": []}),
            json!({"elems": [e(json!(null), json!(1)), e(json!(null), json!(2))], "deleted": []}),
            json!({"elems": [["a", 1, null, 2, 0], e(json!(["a", 1]), json!(2))], "deleted": []}),
            json!({"elems": [], "deleted": [["a", 1], ["a", 1]]}),
            json!({"elems": [], "deleted": [["a", 0]]}),
            json!({"elems": [], "deleted": [["a"]]}),
            json!({"elems": [], "deleted": ["a", 1]}),
        ] {
            assert_eq!(reason(Kind::List, doc.clone()), "crdtWrongShape", "{doc}");
        }
        let long = "x".repeat(LIST_VALUE_BYTES_MAX);
        assert_eq!(
            reason(Kind::List, json!({"elems": [["a", 1, null, 1, long]], "deleted": []})),
            "crdtTooBig"
        );
        let many: Vec<Value> = (1..=LIST_ELEMS_MAX as u64 + 1).map(|i| json!(["a", i, null, 1, 0])).collect();
        assert_eq!(reason(Kind::List, json!({"elems": many, "deleted": []})), "crdtTooBig");
        let many: Vec<Value> = (1..=LIST_ELEMS_MAX as u64 + 1).map(|i| json!(["a", i])).collect();
        assert_eq!(reason(Kind::List, json!({"elems": [], "deleted": many})), "crdtTooBig");
    }

    fn map_doc() -> OrMap<String> {
        let mut m: OrMap<String> = OrMap::new();
        let d = m.update("title".into(), |v| v.assign(Dot::new("a", 1), "hi")).unwrap();
        m.join(&d);
        let d = m.update("tags".into(), |v| v.set_add(Dot::new("a", 2), 7i64)).unwrap();
        m.join(&d);
        let d = m
            .update("meta".into(), |v| {
                v.map_update("owner".into(), |o| o.assign(Dot::new("b", 1), Scalar::Null))
            })
            .unwrap();
        m.join(&d);
        m
    }

    #[test]
    fn map_document() {
        let m = map_doc();
        let doc = Object::Map(Box::new(m.clone())).to_json();
        assert_eq!(
            doc,
            json!({
                "entries": {
                    "meta": {"map": {"owner": {"reg": [["b", 1, null]]}}},
                    "tags": {"set": [[7, "a", 2]]},
                    "title": {"reg": [["a", 1, "hi"]]}
                },
                "context": {"vv": {"a": 2, "b": 1}}
            })
        );
        assert_eq!(Object::from_json(Kind::Map, &doc), Ok(Object::Map(Box::new(m.clone()))));
        // Concurrent writes of two kinds at one key show both parts; a delta has a cloud.
        let delta = m.update("title".into(), |v| v.assign(Dot::new("a", 3), 1.5)).unwrap();
        let nested = OrMap::<String>::new()
            .update("title".into(), |v| v.map_update("x".into(), |x| x.set_add(Dot::new("c", 1), "s")))
            .unwrap();
        let mut joined = m.clone();
        joined.join(&delta);
        joined.join(&nested);
        let doc = Object::Map(Box::new(joined.clone())).to_json();
        assert_eq!(
            doc["entries"]["title"],
            json!({"map": {"x": {"set": [["s", "c", 1]]}}, "reg": [["a", 3, 1.5]]})
        );
        assert_eq!(Object::from_json(Kind::Map, &doc), Ok(Object::Map(Box::new(joined))));
        let doc = Object::Map(Box::new(delta.clone())).to_json();
        assert_eq!(
            doc,
            json!({"entries": {"title": {"reg": [["a", 3, 1.5]]}}, "context": {"vv": {"a": 1}, "cloud": [["a", 3]]}})
        );
        assert_eq!(Object::from_json(Kind::Map, &doc), Ok(Object::Map(Box::new(delta))));
        let bottom = Object::bottom(Kind::Map).to_json();
        assert_eq!(bottom, json!({"entries": {}, "context": {"vv": {}}}));
        assert_eq!(Object::from_json(Kind::Map, &bottom), Ok(Object::bottom(Kind::Map)));
    }

    /// `{"entries": entries, "context": {"vv": {"a": 9}}}`.
    fn map_with(entries: Value) -> Value {
        json!({"entries": entries, "context": {"vv": {"a": 9}}})
    }

    #[test]
    fn bad_map_documents() {
        let reg = json!({"reg": [["a", 1, 0]]});
        for doc in [
            json!([]),
            json!({"entries": {}}),
            json!({"context": {"vv": {}}}),
            json!({"entries": [], "context": {"vv": {}}}),
            json!({"entries": {}, "context": {"vv": {}}, "x": 1}),
            json!({"entries": {}, "context": {"vv": {"a": 0}}}),
            map_with(json!({"k": 1})),
            map_with(json!({"k": {}})),
            map_with(json!({"k": {"map": {}}})),
            map_with(json!({"k": {"set": []}})),
            map_with(json!({"k": {"reg": []}})),
            map_with(json!({"k": {"map": []}})),
            map_with(json!({"k": {"set": {}}})),
            map_with(json!({"k": {"reg": null}})),
            map_with(json!({"k": {"reg": [["a", 1, 0]], "value": 1}})),
            map_with(json!({"k": {"map": {"n": {}}}})),
            map_with(json!({"k": {"reg": [["a", 1]]}})),
            map_with(json!({"k": {"reg": [["a", 1, [0]]]}})),
            map_with(json!({"k": {"reg": [["a", 1, {"x": 0}]]}})),
            map_with(json!({"k": {"reg": [["a", 1, u64::MAX]]}})),
            map_with(json!({"k": {"reg": [["a", 0, 0]]}})),
            map_with(json!({"k": {"reg": [["a b", 1, 0]]}})),
            map_with(json!({"k": {"reg": [["a", 10, 0]]}})),
            map_with(json!({"k": {"reg": [["a", 1, 0], ["a", 1, 1]]}})),
            map_with(json!({"k": {"set": [["x", "a", 1], ["x", "a", 1]]}})),
            map_with(json!({"k": {"set": [["x", "a", 1]]}, "j": reg})),
            map_with(json!({"k": {"set": [["x", "a", 1]], "reg": [["a", 1, 0]]}})),
            map_with(json!({"k": {"map": {"n": reg}}, "j": reg})),
            map_with(json!({"k": {"set": [[["x"], "a", 1]]}})),
            map_with(json!({"k": {"set": [["x", "a"]]}})),
        ] {
            assert_eq!(reason(Kind::Map, doc.clone()), "crdtWrongShape", "{doc}");
        }
        // Nested maps 8 deep are read; 9 deep are not.
        let nest = |levels: usize| {
            let mut value = reg.clone();
            for _ in 1..levels {
                value = json!({"map": {"n": value}});
            }
            map_with(json!({"k": value}))
        };
        assert!(Object::from_json(Kind::Map, &nest(MAP_DEPTH_MAX)).is_ok());
        assert_eq!(reason(Kind::Map, nest(MAP_DEPTH_MAX + 1)), "crdtTooBig");
        let long = "k".repeat(MAP_KEY_BYTES_MAX);
        assert!(Object::from_json(Kind::Map, &map_with(json!({long: reg}))).is_ok());
        let long = "k".repeat(MAP_KEY_BYTES_MAX + 1);
        assert_eq!(reason(Kind::Map, map_with(json!({long: reg}))), "crdtTooBig");
        let big = "x".repeat(ELEM_BYTES_MAX);
        assert_eq!(reason(Kind::Map, map_with(json!({"k": {"reg": [["a", 1, big]]}}))), "crdtTooBig");
        assert_eq!(reason(Kind::Map, map_with(json!({"k": {"set": [[big, "a", 1]]}}))), "crdtTooBig");
        // Keys are counted at every depth.
        let half: Map<String, Value> =
            (1..=MAP_KEYS_MAX / 2).map(|i| (format!("k{i}"), json!({"reg": [["a", i, 0]]}))).collect();
        let ctx = json!({"vv": {"a": MAP_KEYS_MAX}});
        let doc = json!({"entries": {"x": {"map": half.clone()}, "y": {"map": half}}, "context": ctx});
        assert_eq!(reason(Kind::Map, doc), "crdtTooBig", "keys");
        let many: Vec<Value> = (1..=MAP_DOTS_MAX as u64 + 1).map(|i| json!([0, "a", i])).collect();
        let ctx = json!({"vv": {"a": MAP_DOTS_MAX + 1}});
        assert_eq!(reason(Kind::Map, json!({"entries": {"k": {"set": many}}, "context": ctx})), "crdtTooBig");
    }

    #[test]
    fn map_counter_document() {
        let mut m: OrMap<String> = OrMap::new();
        for (dot, by) in [(Dot::new("a", 1), 3), (Dot::new("b", 1), 2), (Dot::new("a", 2), 1)] {
            let d = m.update("likes".into(), |v| v.counter_inc(dot, by)).unwrap();
            m.join(&d);
        }
        let d = m.update("likes".into(), |v| v.counter_dec(Dot::new("b", 2), 5)).unwrap();
        m.join(&d);
        let doc = Object::Map(Box::new(m.clone())).to_json();
        assert_eq!(
            doc,
            json!({"entries": {"likes": {"counter": [["a", 2, 4, 0], ["b", 2, 2, 5]]}}, "context": {"vv": {"a": 2, "b": 2}}})
        );
        assert_eq!(Object::from_json(Kind::Map, &doc), Ok(Object::Map(Box::new(m.clone()))));
        assert_eq!(m.get(&"likes".to_owned()).map(MapValue::counter_value), Some(1));
        let doc = Object::Map(Box::new(d.clone())).to_json();
        assert_eq!(
            doc,
            json!({"entries": {"likes": {"counter": [["b", 2, 2, 5]]}}, "context": {"vv": {"b": 2}}})
        );
        assert_eq!(Object::from_json(Kind::Map, &doc), Ok(Object::Map(Box::new(d))));
    }

    #[test]
    fn bad_map_counter_documents() {
        for doc in [
            map_with(json!({"k": {"counter": []}})),
            map_with(json!({"k": {"counter": {}}})),
            map_with(json!({"k": {"counter": [["a", 1, 1]]}})),
            map_with(json!({"k": {"counter": [["a", 1, 1, 0, 0]]}})),
            map_with(json!({"k": {"counter": [["a", 1, 0, 0]]}})),
            map_with(json!({"k": {"counter": [["a", 1, -1, 0]]}})),
            map_with(json!({"k": {"counter": [["a", 1, 1.5, 0]]}})),
            map_with(json!({"k": {"counter": [["a", 1, "1", 0]]}})),
            map_with(json!({"k": {"counter": [["a", 0, 1, 0]]}})),
            map_with(json!({"k": {"counter": [["a", 10, 1, 0]]}})),
            map_with(json!({"k": {"counter": [["a b", 1, 1, 0]]}})),
            map_with(json!({"k": {"counter": [["a", 1, 1, 0], ["a", 1, 2, 0]]}})),
            map_with(json!({"k": {"counter": [["a", 1, 1, 0]]}, "j": {"reg": [["a", 1, 0]]}})),
            map_with(json!({"k": {"counter": [["a", 1, 1, 0]], "reg": [["a", 1, 0]]}})),
        ] {
            assert_eq!(reason(Kind::Map, doc.clone()), "crdtWrongShape", "{doc}");
        }
        let ok = map_with(json!({"k": {"counter": [["a", 1, u64::MAX, 0]], "reg": [["a", 2, 0]]}}));
        assert!(Object::from_json(Kind::Map, &ok).is_ok(), "two kinds, totals up to 2^64 - 1");
        let many: Vec<Value> = (1..=MAP_DOTS_MAX as u64 + 1).map(|i| json!(["a", i, 1, 0])).collect();
        let ctx = json!({"vv": {"a": MAP_DOTS_MAX + 1}});
        assert_eq!(
            reason(Kind::Map, json!({"entries": {"k": {"counter": many}}, "context": ctx})),
            "crdtTooBig"
        );
    }

    #[test]
    fn map_list_documents() {
        let ok = map_with(
            json!({"todo": {"list": {"elems": [["a", 1, null, 1, {"t": "x"}], ["a", 2, ["a", 1], 2, 2]], "deleted": [["a", 1]]}}}),
        );
        let Ok(Object::Map(map)) = Object::from_json(Kind::Map, &ok) else { panic!("a map") };
        let todo = map.get(&"todo".to_owned()).unwrap();
        assert_eq!(todo.list().values().collect::<Vec<_>>(), [&json!(2)]);
        assert_eq!(todo.kinds().collect::<Vec<_>>(), [ValueKind::List]);
        assert_eq!(Object::Map(map.clone()).to_json(), ok);
        // Only retired elements: kept (they order the list), but the key reads as absent.
        let retired =
            map_with(json!({"todo": {"list": {"elems": [["a", 1, null, 1, 0]], "deleted": [["a", 1]]}}}));
        let Ok(Object::Map(map)) = Object::from_json(Kind::Map, &retired) else { panic!("a map") };
        assert!(!map.contains_key(&"todo".to_owned()));
        assert_eq!(Object::Map(map).to_json(), retired);
        for doc in [
            map_with(json!({"k": {"list": []}})),
            map_with(json!({"k": {"list": {"elems": []}}})),
            map_with(json!({"k": {"list": {"elems": [], "deleted": []}}})),
            map_with(json!({"k": {"list": {"elems": [["a", 1, null, 1, 0]], "deleted": [["a", 2]]}}})),
            map_with(json!({"k": {"list": {"elems": [["a", 10, null, 1, 0]], "deleted": []}}})),
            map_with(json!({"k": {"list": {"elems": [["a", 1, null, 0, 0]], "deleted": []}}})),
            map_with(
                json!({"k": {"list": {"elems": [["a", 1, null, 1, 0], ["a", 1, null, 2, 0]], "deleted": []}}}),
            ),
            map_with(
                json!({"k": {"list": {"elems": [["a", 1, null, 1, 0]], "deleted": []}}, "j": {"reg": [["a", 1, 0]]}}),
            ),
            map_with(json!({"k": {"list": {"elems": [["a", 1, null, 1, 0]], "deleted": [], "x": 1}}})),
        ] {
            assert_eq!(reason(Kind::Map, doc.clone()), "crdtWrongShape", "{doc}");
        }
        let big = map_with(
            json!({"k": {"list": {"elems": [["a", 1, null, 1, "x".repeat(LIST_VALUE_BYTES_MAX)]], "deleted": []}}}),
        );
        assert_eq!(reason(Kind::Map, big), "crdtTooBig");
        let many: Vec<Value> = (1..=MAP_DOTS_MAX as u64 + 1).map(|i| json!(["a", i, null, i, 0])).collect();
        let deleted: Vec<Value> = (1..=MAP_DOTS_MAX as u64 + 1).map(|i| json!(["a", i])).collect();
        let ctx = json!({"vv": {"a": MAP_DOTS_MAX + 1}});
        let doc = json!({"entries": {"k": {"list": {"elems": many, "deleted": deleted}}}, "context": ctx});
        assert_eq!(reason(Kind::Map, doc), "crdtTooBig", "retired elements count as dots");
    }

    #[test]
    fn map_lww_document() {
        use crate::LwwEntry;
        let mut m: OrMap<String> = OrMap::new();
        let d =
            m.update("style".into(), |v| v.lww_put(Dot::new("a", 1), 10, json!({"font": "serif"}))).unwrap();
        m.join(&d);
        // A concurrent write (it did not see a's) stays beside it.
        let concurrent = OrMap::<String>::new()
            .update("style".into(), |v| v.lww_put(Dot::new("b", 1), 9, json!([1, {"k": null}])))
            .unwrap();
        m.join(&concurrent);
        let doc = Object::Map(Box::new(m.clone())).to_json();
        assert_eq!(
            doc,
            json!({"entries": {"style": {"lww": [["a", 1, 10, {"font": "serif"}], ["b", 1, 9, [1, {"k": null}]]]}}, "context": {"vv": {"a": 1, "b": 1}}})
        );
        assert_eq!(Object::from_json(Kind::Map, &doc), Ok(Object::Map(Box::new(m.clone()))));
        let style = m.get(&"style".to_owned()).unwrap();
        assert_eq!(style.lww_value(), Some(&json!({"font": "serif"})), "the greater time");
        let entries: Vec<_> = style.lww_entries().map(|(_, e)| e.clone()).collect();
        assert_eq!(entries[1], LwwEntry { time_ms: 9, value: json!([1, {"k": null}]) });
        let doc = Object::Map(Box::new(d.clone())).to_json();
        assert_eq!(Object::from_json(Kind::Map, &doc), Ok(Object::Map(Box::new(d))));
    }

    #[test]
    fn map_clset_document() {
        let mut m: OrMap<String> = OrMap::new();
        for (dot, elem) in [(Dot::new("a", 1), "x"), (Dot::new("a", 2), "y")] {
            let d = m.update("tags".into(), |v| v.clset_add(dot, elem)).unwrap();
            m.join(&d);
        }
        let d = m.update("tags".into(), |v| v.clset_remove(Dot::new("b", 1), &Scalar::from("x"))).unwrap();
        m.join(&d);
        let doc = Object::Map(Box::new(m.clone())).to_json();
        assert_eq!(
            doc,
            json!({"entries": {"tags": {"clset": [["x", "b", 1, 2], ["y", "a", 2, 1]]}}, "context": {"vv": {"a": 2, "b": 1}}})
        );
        assert_eq!(Object::from_json(Kind::Map, &doc), Ok(Object::Map(Box::new(m))));
    }

    #[test]
    fn bad_map_clset_documents() {
        for doc in [
            map_with(json!({"k": {"clset": []}})),
            map_with(json!({"k": {"clset": {}}})),
            map_with(json!({"k": {"clset": [["x", "a", 1]]}})),
            map_with(json!({"k": {"clset": [["x", "a", 1, 1, 1]]}})),
            map_with(json!({"k": {"clset": [["x", "a", 1, 0]]}})),
            map_with(json!({"k": {"clset": [["x", "a", 1, -1]]}})),
            map_with(json!({"k": {"clset": [["x", "a", 1, 1.5]]}})),
            map_with(json!({"k": {"clset": [["x", "a", 1, (1u64 << 53) + 1]]}})),
            map_with(json!({"k": {"clset": [[[1], "a", 1, 1]]}})),
            map_with(json!({"k": {"clset": [["x", "a", 0, 1]]}})),
            map_with(json!({"k": {"clset": [["x", "a", 10, 1]]}})),
            map_with(json!({"k": {"clset": [["x", "a", 1, 1], ["x", "a", 1, 3]]}})),
            map_with(json!({"k": {"clset": [["x", "a", 1, 1], ["y", "a", 1, 1]]}})),
            map_with(json!({"k": {"clset": [["x", "a", 1, 1]], "set": [["x", "a", 1]]}})),
        ] {
            assert_eq!(reason(Kind::Map, doc.clone()), "crdtWrongShape", "{doc}");
        }
        let ok =
            map_with(json!({"k": {"clset": [["x", "a", 1, 2], ["x", "a", 3, 4]], "reg": [["a", 2, 0]]}}));
        assert!(Object::from_json(Kind::Map, &ok).is_ok(), "concurrent bumps, two kinds");
        let big = map_with(json!({"k": {"clset": [["x".repeat(ELEM_BYTES_MAX), "a", 1, 1]]}}));
        assert_eq!(reason(Kind::Map, big), "crdtTooBig");
        let many: Vec<Value> = (1..=MAP_DOTS_MAX as u64 + 1).map(|i| json!([i, "a", i, 1])).collect();
        let ctx = json!({"vv": {"a": MAP_DOTS_MAX + 1}});
        assert_eq!(
            reason(Kind::Map, json!({"entries": {"k": {"clset": many}}, "context": ctx})),
            "crdtTooBig"
        );
    }

    #[test]
    fn bad_map_lww_documents() {
        for doc in [
            map_with(json!({"k": {"lww": []}})),
            map_with(json!({"k": {"lww": {}}})),
            map_with(json!({"k": {"lww": [["a", 1, 0]]}})),
            map_with(json!({"k": {"lww": [["a", 1, 0, 1, 2]]}})),
            map_with(json!({"k": {"lww": [["a", 1, 1.5, 1]]}})),
            map_with(json!({"k": {"lww": [["a", 1, "0", 1]]}})),
            map_with(json!({"k": {"lww": [["a", 1, u64::MAX, 1]]}})),
            map_with(json!({"k": {"lww": [["a", 0, 0, 1]]}})),
            map_with(json!({"k": {"lww": [["a", 10, 0, 1]]}})),
            map_with(json!({"k": {"lww": [["a b", 1, 0, 1]]}})),
            map_with(json!({"k": {"lww": [["a", 1, 0, 1], ["a", 1, 0, 2]]}})),
            map_with(json!({"k": {"lww": [["a", 1, 0, 1]]}, "j": {"reg": [["a", 1, 0]]}})),
            map_with(json!({"k": {"lww": [["a", 1, 0, 1]], "reg": [["a", 1, 0]]}})),
        ] {
            assert_eq!(reason(Kind::Map, doc.clone()), "crdtWrongShape", "{doc}");
        }
        let ok = map_with(json!({"k": {"lww": [["a", 1, i64::MIN, {"x": [1]}]], "reg": [["a", 2, 0]]}}));
        assert!(Object::from_json(Kind::Map, &ok).is_ok(), "two kinds, any i64 time, any JSON");
        let big = map_with(json!({"k": {"lww": [["a", 1, 0, "x".repeat(VALUE_BYTES_MAX)]]}}));
        assert_eq!(reason(Kind::Map, big), "crdtTooBig");
        let many: Vec<Value> = (1..=MAP_DOTS_MAX as u64 + 1).map(|i| json!(["a", i, 0, 1])).collect();
        let ctx = json!({"vv": {"a": MAP_DOTS_MAX + 1}});
        assert_eq!(reason(Kind::Map, json!({"entries": {"k": {"lww": many}}, "context": ctx})), "crdtTooBig");
    }
}
