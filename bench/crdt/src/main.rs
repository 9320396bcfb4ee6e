//! crdt-bench: `rhizome-crdt` against `crdts`, `yrs`, `loro` and `automerge` on the same workloads.
//!
//! Every workload has two replicas, A and B, that start empty and work concurrently: each does
//! half of the operations locally, every operation on its own (one delta, op, transaction or
//! commit each, as one Logux action would be), then the two are merged both ways and checked.
//!
//! - counter: 1,000,000 increments by 1 (500k per replica);
//! - set: 100,000 toggles over 10,000 elements (50k per replica): remove if present, else add;
//! - list: 100,000 inserts at random positions (50k per replica).
//!
//! Columns: *ops* = both replicas' local operations; *merge* = bringing both replicas to the
//! merged state from the two in-memory replicas, by the library's cheapest path (see
//! README.md); *state* = an encoding of the merged state; *op chain* = the same operations as
//! a chain of JSON actions, one per operation. Times are medians of `RUNS` runs (default 3).
//!
//! usage: `cargo run --release [-- counter|set|list ...]`; env `RUNS=n`, `ONLY=ours,yrs,...`
//! (library name prefixes), `AUTOMERGE_COUNTER_N=n` (default 10,000; see `counter_automerge`).
//! Two probes: `-- scale` (how our set's and list's times grow with size) and `-- semantics`
//! (what each set analogue does with an add concurrent with a remove).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

const COUNTER_OPS: usize = 1_000_000;
const SET_OPS: usize = 100_000;
const SET_UNIVERSE: u64 = 10_000;
const LIST_OPS: usize = 100_000;

/// One run of one library on one workload.
struct Sample {
    ops: Duration,
    merge: Duration,
    state_bytes: usize,
    /// What the run checked, for the table ("value 1000000", "A = B, 100000 elements").
    check: String,
    ok: bool,
}

/// One line of the result table.
struct Row {
    workload: &'static str,
    library: String,
    ops: Duration,
    merge: Duration,
    state_bytes: usize,
    op_chain_bytes: usize,
    encoding: &'static str,
    check: String,
}

/// A small seeded generator (xorshift64*), so every library gets the same operations.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        // Zero is the one state xorshift never leaves.
        XorShift(seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wants = |w: &str| args.is_empty() || args.iter().any(|a| a == w);
    if args.iter().any(|a| a == "scale") {
        scale();
        return;
    }
    if args.iter().any(|a| a == "semantics") {
        semantics();
        return;
    }
    let runs: usize = std::env::var("RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
    let only = std::env::var("ONLY").ok();
    let lib = |name: &str| only.as_deref().is_none_or(|o| o.split(',').any(|p| name.starts_with(p)));

    let mut rows = Vec::new();
    let mut bench = |workload: &'static str,
                     library: &str,
                     encoding: &'static str,
                     op_chain_bytes: usize,
                     f: &dyn Fn() -> Sample| {
        if !lib(library) {
            return;
        }
        eprintln!("{workload} / {library}: {runs} runs");
        let samples: Vec<Sample> = (0..runs).map(|_| f()).collect();
        for s in &samples {
            eprintln!(
                "  ops {:>10.1} ms  merge {:>9.1} ms  state {:>9} B  {}",
                ms(s.ops),
                ms(s.merge),
                s.state_bytes,
                s.check
            );
        }
        let ok = samples.iter().all(|s| s.ok);
        let check = format!("{}{}", if ok { "ok: " } else { "FAILED: " }, samples[0].check);
        rows.push(Row {
            workload,
            library: library.to_string(),
            ops: median(samples.iter().map(|s| s.ops)),
            merge: median(samples.iter().map(|s| s.merge)),
            state_bytes: samples[0].state_bytes,
            op_chain_bytes,
            encoding,
            check,
        });
    };

    if wants("counter") {
        let chain = COUNTER_OPS * counter_action().len();
        bench("counter", "ours PnCounter", "JSON document", chain, &counter_ours);
        bench("counter", "ours (delta + join) PnCounter", "JSON document", chain, &counter_ours_delta_join);
        bench("counter", "crdts PNCounter", "serde JSON of the state", chain, &counter_crdts);
        bench("counter", "yrs Map as G-counter", "update v1", chain, &counter_yrs);
        bench("counter", "loro LoroCounter", "snapshot", chain, &counter_loro);
        let n = std::env::var("AUTOMERGE_COUNTER_N").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
        let name = format!("automerge Counter ({}k incs only)", n / 1000);
        bench("counter", &name, "save()", n * counter_action().len(), &|| counter_automerge(n));
    }
    if wants("set") {
        let (wa, wb) =
            (set_workload(1, SET_OPS / 2, SET_UNIVERSE), set_workload(2, SET_OPS / 2, SET_UNIVERSE));
        let chain = set_op_chain_bytes(&wa) + set_op_chain_bytes(&wb);
        bench("set", "ours Orswot<Scalar>", "JSON document", chain, &|| set_ours(&wa, &wb));
        bench("set", "ours (delta + join) Orswot<Scalar>", "JSON document", chain, &|| {
            set_ours_delta_join(&wa, &wb)
        });
        bench("set", "ours ClSet<Scalar> (causal length)", "JSON document", chain, &|| {
            set_ours_clset(&wa, &wb)
        });
        bench("set", "crdts Orswot", "serde JSON of the state", chain, &|| set_crdts(&wa, &wb));
        bench("set", "yrs Map as set", "update v1", chain, &|| set_yrs(&wa, &wb));
        bench("set", "loro Map as set (LWW)", "snapshot", chain, &|| set_loro(&wa, &wb));
        bench("set", "automerge Map as set", "save()", chain, &|| set_automerge(&wa, &wb));
    }
    if wants("list") {
        let (wa, wb) = (list_workload(1, LIST_OPS / 2), list_workload(2, LIST_OPS / 2));
        let chain = list_op_chain_bytes(&wa, 0) + list_op_chain_bytes(&wb, first_b(&wa));
        bench("list", "ours Rga<u32>", "JSON document", chain, &|| list_ours(&wa, &wb, |v| v));
        bench("list", "ours Rga<Value> (the server's)", "JSON document", chain, &|| {
            list_ours(&wa, &wb, serde_json::Value::from)
        });
        bench("list", "yrs YArray", "update v1", chain, &|| list_yrs_array(&wa, &wb));
        bench("list", "yrs YText", "update v1", chain, &|| list_yrs_text(&wa, &wb));
        bench("list", "loro LoroList", "snapshot", chain, &|| list_loro_list(&wa, &wb));
        bench("list", "loro LoroText", "snapshot", chain, &|| list_loro_text(&wa, &wb));
        bench("list", "automerge List", "save()", chain, &|| list_automerge(&wa, &wb));
        bench("list", "crdts List", "serde JSON of the entries", chain, &|| list_crdts(&wa, &wb));
    }

    println!("Medians of {runs} runs. ops = both replicas' local operations; merge = both directions.");
    println!();
    println!(
        "| workload | library | ops (ms) | merge (ms) | state (B) | op chain (B) | state encoding | check |"
    );
    println!("|---|---|---:|---:|---:|---:|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {} | {} | {} | {} |",
            r.workload,
            r.library,
            ms(r.ops),
            ms(r.merge),
            r.state_bytes,
            r.op_chain_bytes,
            r.encoding,
            r.check
        );
    }
}

/// How our types' times grow with the workload (`cargo run --release -- scale`): one run per
/// size, ours next to `crdts` for the set. The set's universe grows with the operations (one
/// tenth, as in the main workload), so the set's size does too.
fn scale() {
    println!("| workload | library | operations | ops (ms) | ns per op | merge (ms) |");
    println!("|---|---|---:|---:|---:|---:|");
    let line = |workload: &str, library: &str, n: usize, s: &Sample| {
        let per_op_ns = s.ops.as_secs_f64() * 1e9 / n as f64;
        println!("| {workload} | {library} | {n} | {:.1} | {per_op_ns:.0} | {:.1} |", ms(s.ops), ms(s.merge));
        assert!(s.ok, "{workload} / {library} at {n}: {}", s.check);
    };
    for n in [12_500, 25_000, 50_000, 100_000, 200_000] {
        let universe = n as u64 / 10;
        let (wa, wb) = (set_workload(1, n / 2, universe), set_workload(2, n / 2, universe));
        line("set", "ours Orswot", n, &set_ours(&wa, &wb));
        line("set", "crdts Orswot", n, &set_crdts(&wa, &wb));
    }
    for n in [25_000, 50_000, 100_000, 200_000, 400_000] {
        let (wa, wb) = (list_workload(1, n / 2), list_workload(2, n / 2));
        line("list", "ours Rga<u32>", n, &list_ours(&wa, &wb, |v| v));
    }
}

/// What each set analogue does with an add concurrent with a remove
/// (`cargo run --release -- semantics`): one replica adds then removes element 7, the other
/// adds it concurrently; after the merge, is 7 present? Run with either replica removing,
/// since some libraries order concurrent writes by replica id.
fn semantics() {
    let remover = [(true, 7), (false, 7)];
    let adder = [(true, 7)];
    println!("| library | A removes, B adds | B removes, A adds |");
    println!("|---|---|---|");
    let present = |s: Sample| if s.check.contains(" 1 elements") { "present" } else { "absent" };
    let cases: [(&str, fn(&[(bool, u32)], &[(bool, u32)]) -> Sample); 6] = [
        ("ours Orswot", set_ours),
        ("ours ClSet", set_ours_clset),
        ("crdts Orswot", set_crdts),
        ("yrs Map", set_yrs),
        ("loro Map", set_loro),
        ("automerge Map", set_automerge),
    ];
    for (name, f) in cases {
        println!("| {name} | {} | {} |", present(f(&remover, &adder)), present(f(&adder, &remover)));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(times: impl Iterator<Item = Duration>) -> Duration {
    let mut v: Vec<Duration> = times.collect();
    v.sort();
    v[v.len() / 2]
}

// ---------------------------------------------------------------------------------------------
// Counter: 1,000,000 increments, 500k per replica, then merged.
// ---------------------------------------------------------------------------------------------

/// The JSON action one increment would be sent as.
fn counter_action() -> String {
    r#"{"type":"crdt/counter/inc","key":"c","by":1}"#.to_string()
}

/// Each increment is applied in place and returns its delta (`PnDelta`, the node's new total,
/// which the server turns into the `crdt/delta` it ships). The check also joins each replica's
/// last delta into an empty counter: the totals the deltas carry must rebuild the state.
fn counter_ours() -> Sample {
    use rhizome_crdt::{Lattice, NodeId, PnCounter};
    let nodes = [NodeId::from("a"), NodeId::from("b")];
    let (mut a, mut b) = (PnCounter::new(), PnCounter::new());
    let mut shipped = PnCounter::new();
    let t = Instant::now();
    for (state, node) in [(&mut a, &nodes[0]), (&mut b, &nodes[1])] {
        let mut delta = state.apply_inc(node, 1);
        for _ in 1..COUNTER_OPS / 2 {
            delta = std::hint::black_box(state.apply_inc(node, 1));
        }
        shipped.join(&delta.to_counter());
    }
    let ops = t.elapsed();
    let a_before = a.clone();
    let t = Instant::now();
    a.join(&b);
    b.join(&a_before);
    let merge = t.elapsed();
    let state_bytes = document_bytes(rhizome_crdt::Object::Counter(a.clone()));
    let value = a.value();
    Sample {
        ops,
        merge,
        state_bytes,
        check: format!("value {value}"),
        ok: a == b && shipped == a && value == COUNTER_OPS as i128,
    }
}

/// The path before in-place operations, for comparison: every increment builds a delta
/// (`PnCounter::inc`) and joins it into the state.
fn counter_ours_delta_join() -> Sample {
    use rhizome_crdt::{Lattice, NodeId, PnCounter};
    let nodes = [NodeId::from("a"), NodeId::from("b")];
    let (mut a, mut b) = (PnCounter::new(), PnCounter::new());
    let t = Instant::now();
    for (state, node) in [(&mut a, &nodes[0]), (&mut b, &nodes[1])] {
        for _ in 0..COUNTER_OPS / 2 {
            let delta = state.inc(node, 1);
            state.join(&delta);
        }
    }
    let ops = t.elapsed();
    let a_before = a.clone();
    let t = Instant::now();
    a.join(&b);
    b.join(&a_before);
    let merge = t.elapsed();
    let state_bytes = document_bytes(rhizome_crdt::Object::Counter(a.clone()));
    let value = a.value();
    Sample {
        ops,
        merge,
        state_bytes,
        check: format!("value {value}"),
        ok: a == b && value == COUNTER_OPS as i128,
    }
}

fn counter_crdts() -> Sample {
    use crdts::{CmRDT, CvRDT, PNCounter};
    let (mut a, mut b) = (PNCounter::<u8>::new(), PNCounter::<u8>::new());
    let t = Instant::now();
    for (state, actor) in [(&mut a, 1u8), (&mut b, 2u8)] {
        for _ in 0..COUNTER_OPS / 2 {
            let op = state.inc(actor);
            state.apply(op);
        }
    }
    let ops = t.elapsed();
    let (a_before, b_before) = (a.clone(), b.clone());
    let t = Instant::now();
    a.merge(b_before);
    b.merge(a_before);
    let merge = t.elapsed();
    let value = a.read().to_string();
    Sample {
        ops,
        merge,
        state_bytes: serde_json::to_vec(&a).expect("PNCounter to JSON").len(),
        ok: a == b && value == COUNTER_OPS.to_string(),
        check: format!("value {value}"),
    }
}

/// yrs has no counter: the usual emulation is a G-counter in a map, one key per client
/// holding that client's running total (each increment overwrites it).
fn counter_yrs() -> Sample {
    use yrs::{Any, Doc, Map, Out, Transact};
    let (a, b) = (Doc::with_client_id(1), Doc::with_client_id(2));
    let t = Instant::now();
    for (doc, key) in [(&a, "1"), (&b, "2")] {
        let map = doc.get_or_insert_map("c");
        for i in 0..COUNTER_OPS / 2 {
            let mut txn = doc.transact_mut();
            map.insert(&mut txn, key, (i + 1) as i64);
        }
    }
    let ops = t.elapsed();
    let merge = yrs_sync(&a, &b);
    let total = |doc: &Doc| -> i64 {
        let map = doc.get_or_insert_map("c");
        let txn = doc.transact();
        map.iter(&txn)
            .map(|(_, v)| if let Out::Any(Any::Number(n)) = v { n.as_i64().unwrap_or(0) } else { 0 })
            .sum()
    };
    let value = total(&a);
    Sample {
        ops,
        merge,
        state_bytes: yrs_state_bytes(&a),
        check: format!("value {value}"),
        ok: value == total(&b) && value == COUNTER_OPS as i64,
    }
}

fn counter_loro() -> Sample {
    let (a, b) = loro_pair();
    let t = Instant::now();
    for doc in [&a, &b] {
        let counter = doc.get_counter("c");
        for _ in 0..COUNTER_OPS / 2 {
            counter.increment(1.0).expect("loro increment");
            doc.commit();
        }
    }
    let ops = t.elapsed();
    let merge = loro_sync(&a, &b);
    let value = a.get_counter("c").get_value();
    Sample {
        ops,
        merge,
        state_bytes: loro_state_bytes(&a),
        check: format!("value {value}"),
        ok: value == b.get_counter("c").get_value() && value == COUNTER_OPS as f64,
    }
}

/// Automerge's counter costs O(increments so far) per increment (crdt.md §5.1 measured 100k
/// at 70 s and extrapolated 1M to about two hours), so it runs on `n` increments only.
fn counter_automerge(n: usize) -> Sample {
    use automerge::{transaction::Transactable, ReadDoc, ScalarValue, ROOT};
    let (mut a, mut b, _) = automerge_pair(|doc| {
        doc.put(ROOT, "c", ScalarValue::counter(0)).expect("automerge put");
        automerge::ROOT
    });
    let t = Instant::now();
    for doc in [&mut a, &mut b] {
        for _ in 0..n / 2 {
            doc.increment(ROOT, "c", 1).expect("automerge increment");
            doc.commit();
        }
    }
    let ops = t.elapsed();
    let merge = automerge_sync(&mut a, &mut b);
    let value = |doc: &automerge::AutoCommit| {
        doc.get(ROOT, "c").ok().flatten().and_then(|(v, _)| v.as_i64()).unwrap_or(-1)
    };
    let v = value(&a);
    Sample {
        ops,
        merge,
        state_bytes: a.save().len(),
        check: format!("value {v}"),
        ok: v == value(&b) && v == n as i64,
    }
}

// ---------------------------------------------------------------------------------------------
// Set: 100,000 toggles over 10,000 elements, 50k per replica, then merged.
// ---------------------------------------------------------------------------------------------

/// One replica's set operations: `(add, element)`. An operation removes the element if the
/// replica holds it, else adds it, so every operation changes the replica (about half adds).
fn set_workload(seed: u64, ops: usize, universe: u64) -> Vec<(bool, u32)> {
    let mut rng = XorShift::new(seed);
    let mut held = BTreeSet::new();
    (0..ops)
        .map(|_| {
            let e = (rng.next() % universe) as u32;
            let add = held.insert(e);
            if !add {
                held.remove(&e);
            }
            (add, e)
        })
        .collect()
}

/// What an add-wins set holds after the merge: every element whose last local operation on
/// either replica was an add (neither replica saw the other's adds, so no remove covers them).
fn set_expected(wa: &[(bool, u32)], wb: &[(bool, u32)]) -> BTreeSet<u32> {
    let held = |w: &[(bool, u32)]| {
        let mut last = HashMap::new();
        for &(add, e) in w {
            last.insert(e, add);
        }
        last.into_iter().filter(|&(_, add)| add).map(|(e, _)| e).collect::<BTreeSet<u32>>()
    };
    held(wa).union(&held(wb)).copied().collect()
}

fn set_op_chain_bytes(w: &[(bool, u32)]) -> usize {
    w.iter()
        .map(|&(add, e)| {
            let kind = if add { "add" } else { "remove" };
            format!(r#"{{"type":"crdt/set/{kind}","key":"s","elem":{e}}}"#).len()
        })
        .sum()
}

/// How a set resolves an add concurrent with a remove of the same element.
#[derive(Clone, Copy)]
enum Rule {
    /// The add wins: checked against [`set_expected`].
    AddWins,
    /// The longer toggle history wins: checked against the expectation passed in.
    CausalLength,
    /// One write per key wins (by Lamport time or client id): only A = B is checked, and the
    /// add-wins expectation passed in is shown for comparison.
    LastWriterWins,
}

fn set_check(a: &BTreeSet<u32>, b: &BTreeSet<u32>, expected: &BTreeSet<u32>, rule: Rule) -> (String, bool) {
    let n = a.len();
    match rule {
        Rule::AddWins => (format!("A = B = add-wins expectation, {n} elements"), a == b && a == expected),
        Rule::CausalLength => {
            (format!("A = B = causal-length expectation, {n} elements"), a == b && a == expected)
        }
        Rule::LastWriterWins => {
            (format!("A = B, {n} elements (add-wins would keep {})", expected.len()), a == b)
        }
    }
}

/// Our sets hold [`Scalar`]s, as the server's set objects do (`Object::Set`), so the state is
/// measured with the server's JSON document.
///
/// [`Scalar`]: rhizome_crdt::Scalar
/// Each toggle is applied in place and returns its delta (`OrswotDelta`: the element, an add's
/// dot and the dots it retired, which the server turns into the `crdt/delta` it ships). The
/// check replays the workload untimed, joins every delta into an empty set per replica, and
/// requires the states the timed run built.
fn set_ours(wa: &[(bool, u32)], wb: &[(bool, u32)]) -> Sample {
    use rhizome_crdt::{Lattice, NodeId, Orswot, Scalar};
    let nodes = [NodeId::from("a"), NodeId::from("b")];
    let (mut a, mut b) = (Orswot::<Scalar>::new(), Orswot::<Scalar>::new());
    let t = Instant::now();
    for (set, w, node) in [(&mut a, wa, &nodes[0]), (&mut b, wb, &nodes[1])] {
        for &(add, e) in w {
            let e = Scalar::Int(i64::from(e));
            let delta = if add { set.apply_add(set.context().next_dot(node), e) } else { set.apply_remove(&e) };
            std::hint::black_box(delta);
        }
    }
    let ops = t.elapsed();
    let deltas_rebuild = [(&a, wa, &nodes[0]), (&b, wb, &nodes[1])].into_iter().all(|(state, w, node)| {
        let (mut replay, mut shipped) = (Orswot::<Scalar>::new(), Orswot::<Scalar>::new());
        for &(add, e) in w {
            let e = Scalar::Int(i64::from(e));
            let delta =
                if add { replay.apply_add(replay.context().next_dot(node), e) } else { replay.apply_remove(&e) };
            shipped.join(&delta.to_orswot());
        }
        shipped == *state
    });
    let a_before = a.clone();
    let t = Instant::now();
    a.join(&b);
    b.join(&a_before);
    let merge = t.elapsed();
    let read = |s: &Orswot<Scalar>| s.iter().filter_map(scalar_u32).collect::<BTreeSet<u32>>();
    let (check, ok) = set_check(&read(&a), &read(&b), &set_expected(wa, wb), Rule::AddWins);
    let state_bytes = document_bytes(rhizome_crdt::Object::Set(a.clone()));
    let check = if deltas_rebuild { check } else { format!("{check}; the deltas do not rebuild the states") };
    Sample { ops, merge, state_bytes, check, ok: ok && a == b && deltas_rebuild }
}

/// The path before in-place operations, for comparison: every toggle builds a delta
/// (`Orswot::add` or `remove`) and joins it into the state.
fn set_ours_delta_join(wa: &[(bool, u32)], wb: &[(bool, u32)]) -> Sample {
    use rhizome_crdt::{Lattice, NodeId, Orswot, Scalar};
    let nodes = [NodeId::from("a"), NodeId::from("b")];
    let (mut a, mut b) = (Orswot::<Scalar>::new(), Orswot::<Scalar>::new());
    let t = Instant::now();
    for (set, w, node) in [(&mut a, wa, &nodes[0]), (&mut b, wb, &nodes[1])] {
        for &(add, e) in w {
            let e = Scalar::Int(i64::from(e));
            let delta = if add { set.add(set.context().next_dot(node), e) } else { set.remove(&e) };
            set.join(&delta);
        }
    }
    let ops = t.elapsed();
    let a_before = a.clone();
    let t = Instant::now();
    a.join(&b);
    b.join(&a_before);
    let merge = t.elapsed();
    let read = |s: &Orswot<Scalar>| s.iter().filter_map(scalar_u32).collect::<BTreeSet<u32>>();
    let (check, ok) = set_check(&read(&a), &read(&b), &set_expected(wa, wb), Rule::AddWins);
    let state_bytes = document_bytes(rhizome_crdt::Object::Set(a.clone()));
    Sample { ops, merge, state_bytes, check, ok: ok && a == b }
}

fn scalar_u32(s: &rhizome_crdt::Scalar) -> Option<u32> {
    match s {
        rhizome_crdt::Scalar::Int(i) => u32::try_from(*i).ok(),
        _ => None,
    }
}

/// Bytes of an object's JSON document, as the server stores it and ships it in a `crdt/delta`.
fn document_bytes(object: rhizome_crdt::Object) -> usize {
    object.to_json().to_string().len()
}

/// The causal-length set is not add-wins: each element's toggle count joins by maximum, odd
/// means present. Its expectation: the longer of the two replicas' toggle histories decides.
fn set_ours_clset(wa: &[(bool, u32)], wb: &[(bool, u32)]) -> Sample {
    use rhizome_crdt::{ClSet, Lattice, Scalar};
    let (mut a, mut b) = (ClSet::<Scalar>::new(), ClSet::<Scalar>::new());
    let t = Instant::now();
    for (set, w) in [(&mut a, wa), (&mut b, wb)] {
        for &(add, e) in w {
            let e = Scalar::Int(i64::from(e));
            let delta = if add { set.add(e) } else { set.remove(&e) };
            set.join(&delta);
        }
    }
    let ops = t.elapsed();
    let a_before = a.clone();
    let t = Instant::now();
    a.join(&b);
    b.join(&a_before);
    let merge = t.elapsed();
    let toggles = |w: &[(bool, u32)]| {
        let mut n: HashMap<u32, u64> = HashMap::new();
        for &(_, e) in w {
            *n.entry(e).or_default() += 1;
        }
        n
    };
    let (ta, tb) = (toggles(wa), toggles(wb));
    let expected: BTreeSet<u32> = ta
        .keys()
        .chain(tb.keys())
        .filter(|e| ta.get(e).copied().unwrap_or(0).max(tb.get(e).copied().unwrap_or(0)) % 2 == 1)
        .copied()
        .collect();
    let read = |s: &ClSet<Scalar>| s.iter().filter_map(scalar_u32).collect::<BTreeSet<u32>>();
    let (check, ok) = set_check(&read(&a), &read(&b), &expected, Rule::CausalLength);
    let state_bytes = document_bytes(rhizome_crdt::Object::ClSet(a.clone()));
    Sample { ops, merge, state_bytes, check, ok: ok && a == b }
}

fn set_crdts(wa: &[(bool, u32)], wb: &[(bool, u32)]) -> Sample {
    use crdts::{CmRDT, CvRDT, Orswot};
    let (mut a, mut b) = (Orswot::<u32, u8>::new(), Orswot::<u32, u8>::new());
    let t = Instant::now();
    for (set, w, actor) in [(&mut a, wa, 1u8), (&mut b, wb, 2u8)] {
        for &(add, e) in w {
            let op = if add {
                set.add(e, set.read_ctx().derive_add_ctx(actor))
            } else {
                set.rm(e, set.contains(&e).derive_rm_ctx())
            };
            set.apply(op);
        }
    }
    let ops = t.elapsed();
    let (a_before, b_before) = (a.clone(), b.clone());
    let t = Instant::now();
    a.merge(b_before);
    b.merge(a_before);
    let merge = t.elapsed();
    let read = |s: &Orswot<u32, u8>| s.read().val.into_iter().collect::<BTreeSet<u32>>();
    let (check, ok) = set_check(&read(&a), &read(&b), &set_expected(wa, wb), Rule::AddWins);
    Sample { ops, merge, state_bytes: serde_json::to_vec(&a).expect("Orswot to JSON").len(), check, ok }
}

/// A yrs map key → true. Concurrent writes to one key are ordered by client id and the
/// winning write's state, present or deleted, is the key's state, so a remove can beat a
/// concurrent add: this is not add-wins (crdt.md §5.2 calls it add-wins; the check says not).
fn set_yrs(wa: &[(bool, u32)], wb: &[(bool, u32)]) -> Sample {
    use yrs::{Doc, Map, Transact};
    let (a, b) = (Doc::with_client_id(1), Doc::with_client_id(2));
    let t = Instant::now();
    for (doc, w) in [(&a, wa), (&b, wb)] {
        let map = doc.get_or_insert_map("s");
        for &(add, e) in w {
            let mut txn = doc.transact_mut();
            let key = e.to_string();
            if add {
                map.insert(&mut txn, key, true);
            } else {
                map.remove(&mut txn, &key);
            }
        }
    }
    let ops = t.elapsed();
    let merge = yrs_sync(&a, &b);
    let read = |doc: &Doc| {
        let map = doc.get_or_insert_map("s");
        let txn = doc.transact();
        map.keys(&txn).filter_map(|k| k.parse().ok()).collect::<BTreeSet<u32>>()
    };
    let (check, ok) = set_check(&read(&a), &read(&b), &set_expected(wa, wb), Rule::LastWriterWins);
    Sample { ops, merge, state_bytes: yrs_state_bytes(&a), check, ok }
}

/// A Loro map key → true. Loro resolves concurrent writes to a key, a delete included, by
/// Lamport last-writer-wins, so this is an LWW-element set, not add-wins: only A = B is checked.
fn set_loro(wa: &[(bool, u32)], wb: &[(bool, u32)]) -> Sample {
    let (a, b) = loro_pair();
    let t = Instant::now();
    for (doc, w) in [(&a, wa), (&b, wb)] {
        let map = doc.get_map("s");
        for &(add, e) in w {
            let key = e.to_string();
            if add {
                map.insert(&key, true).expect("loro map insert");
            } else {
                map.delete(&key).expect("loro map delete");
            }
            doc.commit();
        }
    }
    let ops = t.elapsed();
    let merge = loro_sync(&a, &b);
    let read = |doc: &loro::LoroDoc| {
        let mut keys = BTreeSet::new();
        doc.get_map("s").for_each(|k, _| {
            if let Ok(e) = k.parse() {
                keys.insert(e);
            }
        });
        keys
    };
    let (check, ok) = set_check(&read(&a), &read(&b), &set_expected(wa, wb), Rule::LastWriterWins);
    Sample { ops, merge, state_bytes: loro_state_bytes(&a), check, ok }
}

/// An Automerge map key → true: a delete removes the values it saw, so add-wins.
fn set_automerge(wa: &[(bool, u32)], wb: &[(bool, u32)]) -> Sample {
    use automerge::{transaction::Transactable, ObjType, ReadDoc, ROOT};
    let (mut a, mut b, obj) =
        automerge_pair(|doc| doc.put_object(ROOT, "s", ObjType::Map).expect("automerge map"));
    let t = Instant::now();
    for (doc, w) in [(&mut a, wa), (&mut b, wb)] {
        for &(add, e) in w {
            let key = e.to_string();
            if add {
                doc.put(&obj, key, true).expect("automerge put");
            } else {
                doc.delete(&obj, key).expect("automerge delete");
            }
            doc.commit();
        }
    }
    let ops = t.elapsed();
    let merge = automerge_sync(&mut a, &mut b);
    let read = |doc: &automerge::AutoCommit| doc.keys(&obj).filter_map(|k| k.parse().ok()).collect();
    let (check, ok) = set_check(&read(&a), &read(&b), &set_expected(wa, wb), Rule::AddWins);
    Sample { ops, merge, state_bytes: a.save().len(), check, ok }
}

// ---------------------------------------------------------------------------------------------
// List: 100,000 inserts at random positions, 50k per replica, then merged both ways.
// ---------------------------------------------------------------------------------------------

/// One replica's random numbers; the i-th insert goes to `r % (i + 1)` (the replica holds i
/// elements then). Replica A inserts the values 0.., replica B the values `first_b(A)`.., so
/// every value is unique.
fn list_workload(seed: u64, ops: usize) -> Vec<u64> {
    let mut rng = XorShift::new(seed + 100);
    (0..ops).map(|_| rng.next()).collect()
}

/// The first value replica B inserts: one past replica A's last.
fn first_b(wa: &[u64]) -> u32 {
    wa.len() as u32
}

fn list_pos(r: u64, i: usize) -> usize {
    (r % (i as u64 + 1)) as usize
}

/// A character for the text variants.
fn letter(value: u32) -> char {
    char::from(b'a' + (value % 26) as u8)
}

fn list_op_chain_bytes(w: &[u64], first_value: u32) -> usize {
    w.iter()
        .enumerate()
        .map(|(i, &r)| {
            let (index, value) = (list_pos(r, i), first_value + i as u32);
            format!(r#"{{"type":"crdt/list/insert","key":"l","index":{index},"value":{value}}}"#).len()
        })
        .sum()
}

fn list_check<T: PartialEq>(a: &[T], b: &[T], inserts: usize) -> (String, bool) {
    (format!("A = B, {} elements", a.len()), a == b && a.len() == inserts)
}

/// Our list of `value(v)`s: `u32`s, or the JSON values the server's list objects hold.
fn list_ours<T>(wa: &[u64], wb: &[u64], value: fn(u32) -> T) -> Sample
where
    T: Clone + PartialEq + Into<serde_json::Value>,
{
    use rhizome_crdt::{Dot, Lattice, NodeId, Rga};
    let nodes = [NodeId::from("a"), NodeId::from("b")];
    let (mut a, mut b) = (Rga::<T>::new(), Rga::<T>::new());
    let t = Instant::now();
    for (list, w, node, first) in [(&mut a, wa, &nodes[0], 0), (&mut b, wb, &nodes[1], first_b(wa))] {
        for (i, &r) in w.iter().enumerate() {
            let dot = Dot::new(node.clone(), i as u64 + 1);
            let delta = list.insert(list_pos(r, i), dot, value(first + i as u32));
            list.join(&delta);
        }
    }
    let ops = t.elapsed();
    let a_before = a.clone();
    let t = Instant::now();
    a.join(&b);
    b.join(&a_before);
    let merge = t.elapsed();
    let (check, ok) = list_check(&a.to_vec(), &b.to_vec(), wa.len() + wb.len());
    Sample { ops, merge, state_bytes: list_document_bytes(&a), check, ok: ok && a == b }
}

/// Bytes of the server's JSON document of `list` (its values written as JSON).
fn list_document_bytes<T>(list: &rhizome_crdt::Rga<T>) -> usize
where
    T: Clone + PartialEq + Into<serde_json::Value>,
{
    use rhizome_crdt::{Dot, Object, Rga};
    let elems = list.elements().map(|e| (e.id.clone(), e.origin.cloned(), e.seq, e.value.clone().into()));
    let tombstones: Vec<Dot> = list.elements().filter(|e| e.deleted).map(|e| e.id.clone()).collect();
    let json_list = Rga::from_parts(elems, tombstones).expect("a list's own parts are valid");
    document_bytes(Object::List(Box::new(json_list)))
}

fn list_yrs_array(wa: &[u64], wb: &[u64]) -> Sample {
    use yrs::{Array, Doc, Transact};
    let (a, b) = (Doc::with_client_id(1), Doc::with_client_id(2));
    let t = Instant::now();
    for (doc, w, first) in [(&a, wa, 0), (&b, wb, first_b(wa))] {
        let array = doc.get_or_insert_array("l");
        for (i, &r) in w.iter().enumerate() {
            let mut txn = doc.transact_mut();
            array.insert(&mut txn, list_pos(r, i) as u32, first + i as u32);
        }
    }
    let ops = t.elapsed();
    let merge = yrs_sync(&a, &b);
    let read = |doc: &Doc| {
        let array = doc.get_or_insert_array("l");
        let txn = doc.transact();
        array.iter(&txn).map(|v| v.to_string(&txn)).collect::<Vec<String>>()
    };
    let (check, ok) = list_check(&read(&a), &read(&b), wa.len() + wb.len());
    Sample { ops, merge, state_bytes: yrs_state_bytes(&a), check, ok }
}

fn list_yrs_text(wa: &[u64], wb: &[u64]) -> Sample {
    use yrs::{Doc, GetString, Text, Transact};
    let (a, b) = (Doc::with_client_id(1), Doc::with_client_id(2));
    let t = Instant::now();
    for (doc, w, first) in [(&a, wa, 0), (&b, wb, first_b(wa))] {
        let text = doc.get_or_insert_text("t");
        let mut buf = [0u8; 4];
        for (i, &r) in w.iter().enumerate() {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, list_pos(r, i) as u32, letter(first + i as u32).encode_utf8(&mut buf));
        }
    }
    let ops = t.elapsed();
    let merge = yrs_sync(&a, &b);
    let read = |doc: &Doc| doc.get_or_insert_text("t").get_string(&doc.transact()).into_bytes();
    let (check, ok) = list_check(&read(&a), &read(&b), wa.len() + wb.len());
    Sample { ops, merge, state_bytes: yrs_state_bytes(&a), check, ok }
}

fn list_loro_list(wa: &[u64], wb: &[u64]) -> Sample {
    let (a, b) = loro_pair();
    let t = Instant::now();
    for (doc, w, first) in [(&a, wa, 0), (&b, wb, first_b(wa))] {
        let list = doc.get_list("l");
        for (i, &r) in w.iter().enumerate() {
            list.insert(list_pos(r, i), i64::from(first + i as u32)).expect("loro list insert");
            doc.commit();
        }
    }
    let ops = t.elapsed();
    let merge = loro_sync(&a, &b);
    let (check, ok) = list_check(&a.get_list("l").to_vec(), &b.get_list("l").to_vec(), wa.len() + wb.len());
    Sample { ops, merge, state_bytes: loro_state_bytes(&a), check, ok }
}

fn list_loro_text(wa: &[u64], wb: &[u64]) -> Sample {
    let (a, b) = loro_pair();
    let t = Instant::now();
    for (doc, w, first) in [(&a, wa, 0), (&b, wb, first_b(wa))] {
        let text = doc.get_text("t");
        let mut buf = [0u8; 4];
        for (i, &r) in w.iter().enumerate() {
            text.insert(list_pos(r, i), letter(first + i as u32).encode_utf8(&mut buf)).expect("loro insert");
            doc.commit();
        }
    }
    let ops = t.elapsed();
    let merge = loro_sync(&a, &b);
    let read = |doc: &loro::LoroDoc| doc.get_text("t").to_string().into_bytes();
    let (check, ok) = list_check(&read(&a), &read(&b), wa.len() + wb.len());
    Sample { ops, merge, state_bytes: loro_state_bytes(&a), check, ok }
}

fn list_automerge(wa: &[u64], wb: &[u64]) -> Sample {
    use automerge::{transaction::Transactable, ObjType, ReadDoc, ROOT};
    let (mut a, mut b, obj) =
        automerge_pair(|doc| doc.put_object(ROOT, "l", ObjType::List).expect("automerge list"));
    let t = Instant::now();
    for (doc, w, first) in [(&mut a, wa, 0), (&mut b, wb, first_b(wa))] {
        for (i, &r) in w.iter().enumerate() {
            doc.insert(&obj, list_pos(r, i), u64::from(first + i as u32)).expect("automerge insert");
            doc.commit();
        }
    }
    let ops = t.elapsed();
    let merge = automerge_sync(&mut a, &mut b);
    let read = |doc: &automerge::AutoCommit| doc.values(&obj).map(|(v, _)| v.as_i64()).collect::<Vec<_>>();
    let (check, ok) = list_check(&read(&a), &read(&b), wa.len() + wb.len());
    Sample { ops, merge, state_bytes: a.save().len(), check, ok }
}

/// crdts' List is op-based (CmRDT): merging applies the other replica's ops.
fn list_crdts(wa: &[u64], wb: &[u64]) -> Sample {
    use crdts::{list::Op, CmRDT, List};
    let (mut a, mut b) = (List::<u32, u8>::new(), List::<u32, u8>::new());
    let (mut log_a, mut log_b): (Vec<Op<u32, u8>>, Vec<Op<u32, u8>>) = (Vec::new(), Vec::new());
    let t = Instant::now();
    for (list, w, actor, first, log) in
        [(&mut a, wa, 1u8, 0, &mut log_a), (&mut b, wb, 2u8, first_b(wa), &mut log_b)]
    {
        for (i, &r) in w.iter().enumerate() {
            let op = list.insert_index(list_pos(r, i), first + i as u32, actor);
            log.push(op.clone());
            list.apply(op);
        }
    }
    let ops = t.elapsed();
    let t = Instant::now();
    for op in log_b {
        a.apply(op);
    }
    for op in log_a {
        b.apply(op);
    }
    let merge = t.elapsed();
    let (check, ok) = list_check(&a.read::<Vec<&u32>>(), &b.read::<Vec<&u32>>(), wa.len() + wb.len());
    // List's serde form is a map keyed by identifiers, which JSON cannot hold: size the entries.
    let state_bytes =
        serde_json::to_vec(&a.iter_entries().collect::<Vec<_>>()).expect("entries to JSON").len();
    Sample { ops, merge, state_bytes, check, ok }
}

// ---------------------------------------------------------------------------------------------
// Per-library plumbing: replica pairs, merging both ways, state encodings.
// ---------------------------------------------------------------------------------------------

/// yrs has no in-memory merge: each side encodes what the other lacks (against its state
/// vector) and the other decodes and applies it.
fn yrs_sync(a: &yrs::Doc, b: &yrs::Doc) -> Duration {
    use yrs::updates::decoder::Decode;
    use yrs::{ReadTxn, Transact, Update};
    let t = Instant::now();
    let for_b = a.transact().encode_state_as_update_v1(&b.transact().state_vector());
    let for_a = b.transact().encode_state_as_update_v1(&a.transact().state_vector());
    a.transact_mut().apply_update(Update::decode_v1(&for_a).expect("yrs decode")).expect("yrs apply");
    b.transact_mut().apply_update(Update::decode_v1(&for_b).expect("yrs decode")).expect("yrs apply");
    t.elapsed()
}

fn yrs_state_bytes(doc: &yrs::Doc) -> usize {
    use yrs::{ReadTxn, StateVector, Transact};
    doc.transact().encode_state_as_update_v1(&StateVector::default()).len()
}

fn loro_pair() -> (loro::LoroDoc, loro::LoroDoc) {
    let (a, b) = (loro::LoroDoc::new(), loro::LoroDoc::new());
    a.set_peer_id(1).expect("loro peer id");
    b.set_peer_id(2).expect("loro peer id");
    (a, b)
}

/// Loro has no in-memory merge either: export the updates the other lacks, import them.
fn loro_sync(a: &loro::LoroDoc, b: &loro::LoroDoc) -> Duration {
    use loro::ExportMode;
    let t = Instant::now();
    let for_b = a.export(ExportMode::updates(&b.oplog_vv())).expect("loro export");
    let for_a = b.export(ExportMode::updates(&a.oplog_vv())).expect("loro export");
    a.import(&for_a).expect("loro import");
    b.import(&for_b).expect("loro import");
    t.elapsed()
}

fn loro_state_bytes(doc: &loro::LoroDoc) -> usize {
    doc.export(loro::ExportMode::Snapshot).expect("loro snapshot").len()
}

/// Two Automerge replicas forked from one document holding the object `make` creates (so
/// both edit the same object), with distinct actors.
fn automerge_pair(
    make: impl FnOnce(&mut automerge::AutoCommit) -> automerge::ObjId,
) -> (automerge::AutoCommit, automerge::AutoCommit, automerge::ObjId) {
    use automerge::{ActorId, AutoCommit};
    let mut base = AutoCommit::new();
    let obj = make(&mut base);
    base.commit();
    let a = base.fork().with_actor(ActorId::from(vec![1u8; 16]));
    let b = base.fork().with_actor(ActorId::from(vec![2u8; 16]));
    (a, b, obj)
}

/// Automerge merges in memory: each side takes the changes it lacks from the other.
fn automerge_sync(a: &mut automerge::AutoCommit, b: &mut automerge::AutoCommit) -> Duration {
    let t = Instant::now();
    a.merge(b).expect("automerge merge");
    b.merge(a).expect("automerge merge");
    t.elapsed()
}
