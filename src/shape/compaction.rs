//! Compaction of one sealed change chunk (pure): later changes to a key are merged into one
//! message at the position of the key's last change, so the chunk carries each key's net
//! effect. Design and what is not done yet: ARCHITECTURE.md "Compaction".
//!
//! Applying the compacted chunk to the state a client had at the chunk's **start** gives the
//! same state as applying the original chunk (tested below against a model). Clients holding an
//! offset strictly inside a compacted chunk cannot be served from it (they saw some of the merged
//! changes): such offsets must answer 409. Chunk boundaries do not move (the end offset of the
//! chunk is unchanged; entries keep their own offsets, a subset of the original ones).
//!
//! Merge rules per key, in log order (A = what is accumulated, B = the next change):
//! - insert + update → insert (values merged, later wins)
//! - update + update → update (values merged, later wins; `old_value` keeps the earliest)
//! - insert + delete → nothing (the key never existed for a client at the chunk's start)
//! - update + delete → delete
//! - delete + insert → both kept, in order (a new row under the same key)
//!
//! Messages that are not plain changes (control messages, primary-key changes carrying
//! key-change headers) are barriers: changes are never merged across them.

use bytes::Bytes;
use serde_json::{Map, Value};
use shapesync_storage::LogOffset;

/// Why a chunk is left as it is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompactError {
    #[error("entry at {0} is not JSON")]
    NotJson(LogOffset),
    /// A sequence no log produces (e.g. an insert of a present key): refuse rather than guess.
    #[error("unexpected {1} after {2} for one key at {0}")]
    Sequence(LogOffset, String, String),
}

/// Compacts the entries of one sealed change chunk (offsets strictly increasing).
pub fn compact_chunk(
    entries: &[(LogOffset, Bytes)],
) -> Result<Vec<(LogOffset, Bytes)>, CompactError> {
    // Output slots in order; `None` once a slot was merged into a later one.
    let mut out: Vec<Option<(LogOffset, Map<String, Value>)>> = Vec::with_capacity(entries.len());
    let mut open: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (offset, bytes) in entries {
        let msg: Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|_| CompactError::NotJson(*offset))?;
        let key = msg.get("key").and_then(Value::as_str).map(str::to_owned);
        let op = operation(&msg).map(str::to_owned);
        let plain = key.is_some() && op.is_some() && !has_key_change(&msg);
        let (Some(key), Some(op), true) = (key, op, plain) else {
            open.clear(); // barrier
            out.push(Some((*offset, msg)));
            continue;
        };
        let Some(&slot) = open.get(&key) else {
            open.insert(key, out.len());
            out.push(Some((*offset, msg)));
            continue;
        };
        // `open` only points at filled slots; if one were empty, keep the message as it is.
        let Some((prev_at, prev)) = out[slot].take() else {
            open.insert(key, out.len());
            out.push(Some((*offset, msg)));
            continue;
        };
        let prev_op = operation(&prev).unwrap_or_default().to_owned();
        let merged = merge(*offset, msg, (prev_at, prev), &prev_op, &op)?;
        match merged {
            Merged::One(m) => {
                open.insert(key, out.len());
                out.push(Some((*offset, m)));
            }
            Merged::Nothing => {
                open.remove(&key);
            }
            Merged::Both(first, second) => {
                out[slot] = Some(first);
                open.insert(key, out.len());
                out.push(Some((*offset, second)));
            }
        }
    }
    Ok(out
        .into_iter()
        .flatten()
        .map(|(o, m)| (o, Bytes::from(Value::Object(m).to_string())))
        .collect())
}

enum Merged {
    One(Map<String, Value>),
    Nothing,
    /// The earlier message stays where it was (with its offset); the later one is new.
    Both((LogOffset, Map<String, Value>), Map<String, Value>),
}

fn merge(
    offset: LogOffset,
    msg: Map<String, Value>,
    (prev_at, prev): (LogOffset, Map<String, Value>),
    prev_op: &str,
    op: &str,
) -> Result<Merged, CompactError> {
    Ok(match (prev_op, op) {
        ("insert", "update") => Merged::One(with_values(msg, &prev, "insert")),
        ("update", "update") => Merged::One(with_values(msg, &prev, "update")),
        ("insert", "delete") => Merged::Nothing,
        ("update", "delete") => Merged::One(msg),
        ("delete", "insert") => Merged::Both((prev_at, prev), msg),
        (a, b) => return Err(CompactError::Sequence(offset, b.into(), a.into())),
    })
}

/// `msg` (the later change) with `prev`'s values underneath its own, as operation `op`.
fn with_values(
    mut msg: Map<String, Value>,
    prev: &Map<String, Value>,
    op: &str,
) -> Map<String, Value> {
    let mut value = prev
        .get("value")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(Value::Object(later)) = msg.get("value") {
        value.extend(later.clone());
    }
    msg.insert("value".into(), Value::Object(value));
    if op == "insert" {
        msg.remove("old_value");
    } else if let Some(Value::Object(earlier)) = prev.get("old_value") {
        let mut old = match msg.get("old_value") {
            Some(Value::Object(o)) => o.clone(),
            _ => Map::new(),
        };
        old.extend(earlier.clone()); // the earliest old value wins
        msg.insert("old_value".into(), Value::Object(old));
    }
    if let Some(Value::Object(h)) = msg.get_mut("headers") {
        h.insert("operation".into(), Value::String(op.into()));
    }
    msg
}

fn operation(msg: &Map<String, Value>) -> Option<&str> {
    let op = msg.get("headers")?.get("operation")?.as_str()?;
    matches!(op, "insert" | "update" | "delete").then_some(op)
}

fn has_key_change(msg: &Map<String, Value>) -> bool {
    msg.get("headers")
        .and_then(Value::as_object)
        .is_some_and(|h| h.contains_key("key_change_to") || h.contains_key("key_change_from"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    type State = BTreeMap<String, Map<String, Value>>;

    /// The client's view: apply messages to a materialised state, failing on anything a
    /// client would reject (insert of a present key, update or delete of an absent one).
    fn apply(state: &mut State, entries: &[(LogOffset, Bytes)]) {
        for (o, b) in entries {
            let m: Value = serde_json::from_slice(b).unwrap();
            let Some(key) = m["key"].as_str() else {
                continue;
            };
            let value = m["value"].as_object().cloned().unwrap_or_default();
            match m["headers"]["operation"].as_str().unwrap() {
                "insert" => assert!(
                    state.insert(key.into(), value).is_none(),
                    "insert of present {key} at {o}"
                ),
                "update" => state
                    .get_mut(key)
                    .unwrap_or_else(|| panic!("update of absent {key}"))
                    .extend(value),
                "delete" => assert!(state.remove(key).is_some(), "delete of absent {key} at {o}"),
                other => panic!("{other}"),
            }
        }
    }

    fn change(tx: u64, op: u64, key: &str, operation: &str, value: Value) -> (LogOffset, Bytes) {
        let m = json!({"key": key, "value": value, "headers": {"operation": operation, "lsn": tx.to_string()}});
        (LogOffset::new(tx, op), Bytes::from(m.to_string()))
    }

    #[test]
    fn merges_to_the_net_effect_and_keeps_order() {
        let before: State = [(
            "b".to_string(),
            json!({"id":"b","n":"0"}).as_object().unwrap().clone(),
        )]
        .into();
        let chunk = vec![
            change(10, 0, "a", "insert", json!({"id":"a","n":"1","t":"x"})),
            change(10, 2, "b", "update", json!({"id":"b","n":"1"})),
            change(11, 0, "a", "update", json!({"id":"a","n":"2"})),
            change(12, 0, "c", "insert", json!({"id":"c"})),
            change(12, 2, "b", "update", json!({"id":"b","n":"2"})),
            change(13, 0, "c", "delete", json!({"id":"c"})),
            change(14, 0, "b", "delete", json!({"id":"b"})),
            change(14, 2, "b", "insert", json!({"id":"b","n":"9"})),
            change(15, 0, "a", "update", json!({"id":"a","t":"y"})),
        ];
        let compacted = compact_chunk(&chunk).unwrap();
        let offsets: Vec<String> = compacted.iter().map(|(o, _)| o.to_string()).collect();
        // a: insert+update+update → insert at 15_0; b: updates+delete → delete at 14_0, then
        // the new insert at 14_2; c: insert+delete → nothing.
        assert_eq!(offsets, ["14_0", "14_2", "15_0"]);
        let (mut want, mut got) = (before.clone(), before);
        apply(&mut want, &chunk);
        apply(&mut got, &compacted);
        assert_eq!(got, want);
        let a: Value = serde_json::from_slice(&compacted[2].1).unwrap();
        assert_eq!(a["headers"]["operation"], "insert");
        assert_eq!(a["value"], json!({"id":"a","n":"2","t":"y"}));
    }

    #[test]
    fn barriers_and_bad_sequences() {
        let pk_change = (
            LogOffset::new(11, 0),
            Bytes::from(json!({"key":"a","value":{"id":"a"},"headers":{"operation":"delete","key_change_to":"z"}}).to_string()),
        );
        let chunk = vec![
            change(10, 0, "a", "update", json!({"id":"a","n":"1"})),
            pk_change,
            change(12, 0, "z", "update", json!({"id":"z","n":"2"})),
        ];
        assert_eq!(
            compact_chunk(&chunk).unwrap().len(),
            3,
            "nothing merges across a barrier"
        );
        let bad = vec![
            change(10, 0, "a", "insert", json!({"id":"a"})),
            change(11, 0, "a", "insert", json!({"id":"a"})),
        ];
        assert!(matches!(
            compact_chunk(&bad),
            Err(CompactError::Sequence(..))
        ));
        let not_json = vec![(LogOffset::new(1, 0), Bytes::from_static(b"{"))];
        assert_eq!(
            compact_chunk(&not_json),
            Err(CompactError::NotJson(LogOffset::new(1, 0)))
        );
    }

    #[test]
    fn old_value_keeps_the_earliest() {
        let mk = |tx, v: Value, old: Value| {
            let m = json!({"key":"a","value":v,"old_value":old,"headers":{"operation":"update"}});
            (LogOffset::new(tx, 0), Bytes::from(m.to_string()))
        };
        let chunk = vec![
            mk(1, json!({"n":"2"}), json!({"n":"1"})),
            mk(2, json!({"n":"3","t":"y"}), json!({"n":"2","t":"x"})),
        ];
        let out = compact_chunk(&chunk).unwrap();
        let m: Value = serde_json::from_slice(&out[0].1).unwrap();
        assert_eq!(m["old_value"], json!({"n":"1","t":"x"}));
        assert_eq!(m["value"], json!({"n":"3","t":"y"}));
    }
}
