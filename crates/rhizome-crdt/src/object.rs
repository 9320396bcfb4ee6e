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
//!   "cloud": [["<node>", n], …]}}`, each surviving value with its dot, and the causal context
//!   as a version vector plus the dots beyond it (`cloud`, left out when empty).
//! - set: `{"elems": [[<scalar>, "<node>", n], …], "context": {…}}`, each element with each
//!   dot that keeps it present (usually one), in element order, and the context as for mv.
//! - clset: `{"elems": [[<scalar>, length], …]}`, every element ever added with its causal
//!   length (odd: present), in element order.
//!
//! Decoding reads the disk and the network, so it checks everything and never panics: node ids
//! as [`NodeId::parse`] accepts them, dot counters from 1 to [`COUNTER_MAX`], counter totals
//! within `u64`, every stored dot in the context, no unknown fields, and the size limits below.

use crate::ops::OpError;
use crate::{
    CausalContext, ClSet, Dot, DotSet, Lattice, LwwRegister, MvRegister, NodeId, Orswot, PnCounter, PnEntry,
    Scalar, Stamp, VersionVector,
};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::io;

/// Most nodes one object records: counter entries, or nodes in an MV register's version
/// vector. [`crate::ops::apply`] refuses an operation by a new node beyond it.
pub const NODES_MAX: usize = 65_536;

/// Most dots in a causal context's cloud (dots beyond the contiguous prefixes).
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
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: &'static [Kind] = &[Kind::Counter, Kind::Lww, Kind::Mv, Kind::Set, Kind::ClSet];

    /// The kind's name, such as `"counter"`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Lww => "lww",
            Kind::Mv => "mv",
            Kind::Set => "set",
            Kind::ClSet => "clset",
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

/// `{"vv": {"<node>": n, …}, "cloud": [["<node>", n], …]}`, without `cloud` when it is empty.
fn context_to_json(context: &CausalContext) -> Value {
    let mut doc = Map::from_iter([("vv".to_owned(), vv_to_json(context.vv()))]);
    let cloud: Vec<Value> = context.cloud().map(dot_to_json).collect();
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
        Some(cloud) => cloud.as_array().ok_or(OpError::WrongShape("a cloud must be an array of dots"))?,
    };
    if cloud_doc.len() > CLOUD_DOTS_MAX {
        return Err(OpError::TooBig { what: "dots in a causal context's cloud", max: CLOUD_DOTS_MAX as u64 });
    }
    let mut cloud = Vec::with_capacity(cloud_doc.len());
    for dot in cloud_doc {
        let [node, counter] = dot.as_array().map(Vec::as_slice).unwrap_or_default() else {
            return Err(OpError::WrongShape("a dot must be [node, counter]"));
        };
        cloud.push(dot_from_json(node, counter)?);
    }
    // Joining a context built from the cloud compacts it once, whatever order the dots come in.
    let mut context = CausalContext::from_vv(vv);
    context.join(&cloud.into_iter().collect());
    Ok(context)
}

/// `["<node>", n]`.
fn dot_to_json(dot: &Dot) -> Value {
    json!([dot.node.as_str(), dot.counter])
}

/// A dot from its node and counter, both checked.
fn dot_from_json(node: &Value, counter: &Value) -> Result<Dot, OpError> {
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
        assert_eq!(names, ["counter", "lww", "mv", "set", "clset"]);
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
            json!({"values": [["a", 3, 3]], "context": {"vv": {"b": 1}, "cloud": [["a", 2], ["a", 3]]}})
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
        assert_eq!(r.context().cloud().collect::<Vec<_>>(), [&Dot::new("b", 2)]);
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
}
