//! Folding queued CRDT operations before they are first sent, with
//! `rhizome_crdt::ops::fold_queue`.
//!
//! A run of consecutive queued operations on one object and of one kind, none of them ever
//! sent, becomes the operations `fold_queue` returns for it. The folded operations take the
//! ids (and times) of the run's last rows, in order, so they keep their place among the other
//! actions; the rows before are dropped. Rows already sent once are never folded: the server
//! may hold them, and folding them into another id would apply their effect twice.

use crate::store::Queued;
use rhizome_crdt::ops::{fold_queue, parse, Op};
use rhizome_protocol::ActionId;
use serde_json::{Map, Value};

/// What folding a chunk changes.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Folding {
    /// Rows that now carry another action: `(added, action json)`.
    pub rewritten: Vec<(i64, String)>,
    /// Rows dropped, with the id of the row their effect went into.
    pub dropped: Vec<(i64, ActionId, ActionId)>,
}

fn op_of(row: &Queued) -> Option<Op> {
    if row.sent {
        return None;
    }
    let fields: Map<String, Value> = serde_json::from_str(&row.action).ok()?;
    if !fields.get("type").and_then(Value::as_str).is_some_and(|t| t.starts_with("crdt/")) {
        return None;
    }
    parse(&fields).ok()
}

/// Folds `rows` (queued actions in `added` order); returns the rows to send and the changes
/// to write to the log.
pub(crate) fn fold_rows(rows: Vec<Queued>) -> (Vec<Queued>, Folding) {
    let ops: Vec<Option<Op>> = rows.iter().map(op_of).collect();
    let mut out = Vec::with_capacity(rows.len());
    let mut folding = Folding::default();
    let mut rows = rows.into_iter();
    let mut i = 0;
    while i < ops.len() {
        let Some(first) = &ops[i] else {
            out.extend(rows.next());
            i += 1;
            continue;
        };
        let run_len = ops[i..]
            .iter()
            .take_while(|op| {
                op.as_ref().is_some_and(|op| op.key() == first.key() && op.kind() == first.kind())
            })
            .count();
        let run: Vec<Queued> = rows.by_ref().take(run_len).collect();
        let run_ops: Vec<Op> = ops[i..i + run_len].iter().flatten().cloned().collect();
        let folded = fold_queue(&run_ops);
        if folded.len() >= run.len() || folded.is_empty() {
            out.extend(run);
        } else {
            let keep_from = run.len() - folded.len();
            let into = run[keep_from].id.clone();
            for row in &run[..keep_from] {
                folding.dropped.push((row.added, row.id.clone(), into.clone()));
            }
            for (mut row, op) in run.into_iter().skip(keep_from).zip(folded) {
                let action = Value::Object(op.to_action()).to_string();
                if action != row.action {
                    folding.rewritten.push((row.added, action.clone()));
                    row.action = action;
                }
                out.push(row);
            }
        }
        i += run_len;
    }
    (out, folding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rhizome_protocol::NodeId;
    use serde_json::json;

    fn rows(actions: &[(Value, bool)]) -> Vec<Queued> {
        actions
            .iter()
            .enumerate()
            .map(|(n, (action, sent))| Queued {
                added: n as i64 + 1,
                id: ActionId { ms: 100, node: NodeId::from("alice:c:t"), seq: n as u64 },
                time: 100,
                action: action.to_string(),
                sent: *sent,
                object: None,
            })
            .collect()
    }

    fn actions(rows: &[Queued]) -> Vec<Value> {
        rows.iter().map(|r| serde_json::from_str(&r.action).unwrap()).collect()
    }

    #[test]
    fn a_run_of_increments_becomes_one_with_the_last_id() {
        let inc = json!({"type": "crdt/counter/inc", "key": "likes", "by": 2});
        let (out, folding) = fold_rows(rows(&[(inc.clone(), false), (inc.clone(), false), (inc, false)]));
        assert_eq!(actions(&out), [json!({"type": "crdt/counter/inc", "key": "likes", "by": 6})]);
        assert_eq!(out[0].added, 3, "the last row carries the sum");
        assert_eq!(folding.dropped.iter().map(|d| d.0).collect::<Vec<_>>(), [1, 2]);
        assert!(folding.dropped.iter().all(|d| d.2 == out[0].id));
        assert_eq!(folding.rewritten.len(), 1);
    }

    #[test]
    fn other_keys_plain_actions_and_sent_rows_split_runs() {
        let set = |v: i64| json!({"type": "crdt/lww/set", "key": "title", "value": v});
        let other = json!({"type": "crdt/lww/set", "key": "other", "value": 0});
        let plain = json!({"type": "inc", "id": "x"});
        let input = [
            (set(1), true), // sent once: kept as it is, and not folded into
            (set(2), false),
            (set(3), false),
            (other, false),
            (set(4), false),
            (plain.clone(), false),
            (set(5), false),
        ];
        let (out, folding) = fold_rows(rows(&input));
        let got = actions(&out);
        assert_eq!(got.len(), 6);
        assert_eq!(got[0], set(1));
        assert_eq!(got[1], set(3), "the last write of the run wins");
        assert_eq!(got[2]["key"], "other");
        assert_eq!(got[3], set(4));
        assert_eq!(got[4], plain);
        assert_eq!(got[5], set(5));
        assert_eq!(folding.dropped.len(), 1);
        assert!(folding.rewritten.is_empty(), "the kept write is the row's own action");
    }

    #[test]
    fn sets_are_kept_as_they_are() {
        let add = json!({"type": "crdt/set/add", "key": "tags", "elem": "a"});
        let (out, folding) = fold_rows(rows(&[(add.clone(), false), (add, false)]));
        assert_eq!(out.len(), 2);
        assert_eq!(folding, Folding::default());
    }
}
