//! Compaction of one sealed change chunk (pure): a run of updates to one key is merged into one
//! update at the position of the run's last update, so a hot row costs one message per chunk
//! instead of one per change. Design: ARCHITECTURE.md "Compaction".
//!
//! **Every offset stays valid.** Only updates are merged, and the merged update sits where the
//! run ended and carries every column the run changed (later values win). A client at the
//! chunk's start applies it once; a client holding an offset inside the run (it read part of
//! the chunk as the log's head before it was sealed) has applied some of the run and gets the
//! merged update, which rewrites those columns to the values the run ended with: the same state
//! as the original log gives. Inserts and deletes are kept as they are (merging an insert with a
//! later update, or dropping an insert…delete pair, would be wrong for a client that saw the
//! insert), so no reader ever needs a 409. Tested below for every offset of random chunks.
//!
//! Chunk boundaries do not move: the chunk's last entry is never merged away (it ends any run it
//! belongs to), and the kept entries keep their own offsets, a subset of the original ones.
//!
//! Merged headers: those of the run's last update, with `txids` the union of the run's (a client
//! waiting for a transaction id still sees it) and `last: true` moved back to the message before
//! it in its transaction when an update carrying it is merged away. `old_value` (replica `full`)
//! keeps each column's earliest old value.
//!
//! Messages that are not plain changes (control messages, primary-key changes carrying
//! key-change headers) end every run: nothing merges across them.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::{Map, Value};
use shapesync_storage::LogOffset;

/// Why a chunk is left as it is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompactError {
    #[error("entry at {0} is not a JSON object")]
    NotJson(LogOffset),
    #[error("entry at {0} is out of order")]
    Order(LogOffset),
}

/// One output slot: the entry as stored, and its parsed form where needed.
struct Slot {
    offset: LogOffset,
    bytes: Bytes,
    /// The parsed message, once it was needed (a merge, or the `last` fix-up).
    msg: Option<Map<String, Value>>,
    /// The message was rewritten (merged, or given `last: true`): serialise `msg`.
    edited: bool,
}

/// Whether `compact_chunk` could merge anything in these entries: some key has two updates
/// with no barrier between them. A cheap first pass (no message is built, keys are hashed from
/// their raw JSON text): most chunks of insert-heavy or spread-out workloads have no repeat, and
/// this answers them without the allocations of a full compaction. A false `true` (a hash
/// collision) only costs the full pass, which compares the keys' text.
pub fn may_merge(entries: &[(LogOffset, Bytes)]) -> bool {
    let mut probe = MergeProbe::default();
    for (_, json) in entries {
        probe.add(json);
    }
    probe.may_merge()
}

/// [`may_merge`] fed one entry at a time, reusable: `reset` keeps the set's memory, so a
/// worker probing chunk after chunk allocates nothing in the steady state.
#[derive(Default)]
pub struct MergeProbe {
    /// Hashes of the keys updated since the last barrier.
    updated: std::collections::HashSet<u64>,
    maybe: bool,
}

impl MergeProbe {
    /// Entries of the chunk after the last reset, in order.
    pub fn add(&mut self, json: &[u8]) {
        if self.maybe {
            return;
        }
        let Ok(head) = serde_json::from_slice::<Head<'_>>(json) else {
            self.maybe = true; // let the full pass report it
            return;
        };
        let plain = head.headers.as_ref().is_some_and(Headers::plain_change);
        let Some(key) = head.key.filter(|_| plain) else {
            self.updated.clear(); // a barrier
            return;
        };
        let h = hash(key.get().as_bytes());
        if head.headers.as_ref().and_then(|h| h.operation.as_deref()) == Some("update") {
            self.maybe |= !self.updated.insert(h);
        } else {
            self.updated.remove(&h);
        }
    }

    pub fn may_merge(&self) -> bool {
        self.maybe
    }

    /// Ready for the next chunk (memory kept, up to a bound).
    pub fn reset(&mut self) {
        self.updated.clear();
        self.updated.shrink_to(1 << 16);
        self.maybe = false;
    }
}

fn hash(bytes: &[u8]) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(bytes)
}

/// Compacts the entries of one sealed change chunk (offsets strictly increasing). Returns the
/// kept entries; unchanged ones keep their exact bytes. `continues_transaction`: the chunk's
/// first transaction began in the previous chunk (`ShapeLog::sealed_chunk_start` has its
/// `tx`), so its `last` marker must not be merged away with nothing of it kept here.
pub fn compact_chunk(
    entries: &[(LogOffset, Bytes)],
    continues_transaction: bool,
) -> Result<Vec<(LogOffset, Bytes)>, CompactError> {
    let mut out: Vec<Option<Slot>> = Vec::with_capacity(entries.len());
    // Key → slot of the open run's (merged) update.
    let mut runs: HashMap<&str, usize> = HashMap::new();
    let mut prev: Option<LogOffset> = None;
    // The transaction that began before this chunk, if any.
    let first_tx = entries
        .first()
        .filter(|_| continues_transaction)
        .map(|e| e.0.tx());
    for (offset, bytes) in entries {
        if prev.is_some_and(|p| p >= *offset) {
            return Err(CompactError::Order(*offset));
        }
        prev = Some(*offset);
        // What the merge decisions need, without building the message's values.
        let head: Head<'_> =
            serde_json::from_slice(bytes).map_err(|_| CompactError::NotJson(*offset))?;
        let plain = head.headers.as_ref().is_some_and(Headers::plain_change);
        let Some(key) = head.key.filter(|_| plain) else {
            runs.clear(); // a barrier
            out.push(Some(Slot::new(*offset, bytes, None)));
            continue;
        };
        let key = key.get();
        if head.headers.as_ref().and_then(|h| h.operation.as_deref()) != Some("update") {
            runs.remove(key);
            out.push(Some(Slot::new(*offset, bytes, None)));
            continue;
        }
        let earlier = runs.get(key).and_then(|&i| out[i].take().map(|s| (i, s)));
        let slot = match earlier {
            Some((at, earlier)) => {
                let (was, was_bytes, was_edited) =
                    (earlier.offset, earlier.bytes.clone(), earlier.edited);
                let e = earlier.parsed()?;
                let passed = !is_last(&e) || pass_last_back(&mut out[..at], was.tx())?;
                if !passed && Some(was.tx()) == first_tx {
                    // Its transaction began in the previous chunk (a boundary may fall inside
                    // one) and nothing else of it is kept here: merging this update away
                    // would lose the transaction's `last` marker. Keep it; a run starts anew.
                    out[at] = Some(Slot {
                        offset: was,
                        bytes: was_bytes,
                        msg: Some(e),
                        edited: was_edited,
                    });
                    Slot::new(*offset, bytes, None)
                } else {
                    let msg = parse(*offset, bytes)?;
                    Slot {
                        offset: *offset,
                        bytes: bytes.clone(),
                        msg: Some(merge(msg, e)),
                        edited: true,
                    }
                }
            }
            None => Slot::new(*offset, bytes, None),
        };
        runs.insert(key, out.len());
        out.push(Some(slot));
    }
    Ok(out
        .into_iter()
        .flatten()
        .map(|s| {
            let bytes = match (s.edited, s.msg) {
                (true, Some(m)) => Bytes::from(Value::Object(m).to_string()),
                _ => s.bytes,
            };
            (s.offset, bytes)
        })
        .collect())
}

impl Slot {
    fn new(offset: LogOffset, bytes: &Bytes, msg: Option<Map<String, Value>>) -> Slot {
        Slot {
            offset,
            bytes: bytes.clone(),
            msg,
            edited: false,
        }
    }

    /// The slot's message, parsed if it was not yet.
    fn parsed(self) -> Result<Map<String, Value>, CompactError> {
        match self.msg {
            Some(m) => Ok(m),
            None => parse(self.offset, &self.bytes),
        }
    }
}

fn parse(offset: LogOffset, bytes: &[u8]) -> Result<Map<String, Value>, CompactError> {
    serde_json::from_slice(bytes).map_err(|_| CompactError::NotJson(offset))
}

/// The parts of a message that decide what merges (everything else is skipped unparsed). The
/// key is its raw JSON text, borrowed: keys are compared as written (the encoder writes a key
/// the same way every time), without unescaping or allocating.
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    key: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    headers: Option<Headers<'a>>,
}

#[derive(serde::Deserialize)]
struct Headers<'a> {
    #[serde(borrow, default)]
    operation: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    key_change_to: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    key_change_from: Option<serde::de::IgnoredAny>,
}

impl Headers<'_> {
    /// An insert, update or delete that is not half of a primary-key change.
    fn plain_change(&self) -> bool {
        matches!(
            self.operation.as_deref(),
            Some("insert" | "update" | "delete")
        ) && self.key_change_to.is_none()
            && self.key_change_from.is_none()
    }
}

/// The later update `msg` with the earlier one's values underneath its own. Takes both by
/// value: a run of n updates costs O(n) moves, not O(n²) copies of what was accumulated.
fn merge(mut msg: Map<String, Value>, mut earlier: Map<String, Value>) -> Map<String, Value> {
    let mut value = match earlier.remove("value") {
        Some(Value::Object(v)) => v,
        _ => Map::new(),
    };
    if let Some(Value::Object(later)) = msg.remove("value") {
        value.extend(later);
    }
    msg.insert("value".into(), Value::Object(value));
    if let Some(Value::Object(mut old)) = earlier.remove("old_value") {
        // The earliest old value of each column wins.
        if let Some(Value::Object(later)) = msg.remove("old_value") {
            for (k, v) in later {
                old.entry(k).or_insert(v);
            }
        }
        msg.insert("old_value".into(), Value::Object(old));
    }
    let earlier_txids = match earlier.get_mut("headers").and_then(|h| h.get_mut("txids")) {
        Some(Value::Array(t)) => std::mem::take(t),
        _ => Vec::new(),
    };
    if let Some(Value::Object(h)) = msg.get_mut("headers") {
        if let Some(Value::Array(later)) = h.get_mut("txids") {
            // Transaction ids of a run ascend with its offsets; one transaction's updates of
            // the key are adjacent, so comparing with the last one removes every repeat.
            let mut all = earlier_txids;
            for t in later.drain(..) {
                if all.last() != Some(&t) {
                    all.push(t);
                }
            }
            *later = all;
        }
    }
    msg
}

/// An update carrying `last: true` for its transaction is merged away: the transaction's
/// previous kept message (entries of one transaction share the offset's `tx`) becomes its last.
/// Returns whether there was one.
fn pass_last_back(before: &mut [Option<Slot>], tx: u64) -> Result<bool, CompactError> {
    for slot in before.iter_mut().rev().flatten() {
        if slot.offset.tx() != tx {
            return Ok(false); // nothing of the transaction is kept before it
        }
        if slot.msg.is_none() {
            let parsed = serde_json::from_slice(&slot.bytes)
                .map_err(|_| CompactError::NotJson(slot.offset))?;
            slot.msg = Some(parsed);
        }
        let Some(msg) = slot.msg.as_mut().filter(|m| operation(m).is_some()) else {
            continue;
        };
        if let Some(Value::Object(h)) = msg.get_mut("headers") {
            h.insert("last".into(), Value::Bool(true));
            slot.edited = true;
        }
        return Ok(true);
    }
    Ok(false)
}

fn header<'a>(msg: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    msg.get("headers")?.get(name)
}

fn is_last(msg: &Map<String, Value>) -> bool {
    header(msg, "last").and_then(Value::as_bool) == Some(true)
}

fn operation(msg: &Map<String, Value>) -> Option<&str> {
    let op = header(msg, "operation")?.as_str()?;
    matches!(op, "insert" | "update" | "delete").then_some(op)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use rand::{Rng, SeedableRng};
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
                    .unwrap_or_else(|| panic!("update of absent {key} at {o}"))
                    .extend(value),
                "delete" => assert!(state.remove(key).is_some(), "delete of absent {key} at {o}"),
                other => panic!("{other}"),
            }
        }
    }

    fn msg(
        tx: u64,
        op: u64,
        key: &str,
        operation: &str,
        value: Value,
        last: bool,
    ) -> (LogOffset, Bytes) {
        let mut headers = json!({"operation": operation, "lsn": tx.to_string(), "txids": [tx]});
        if last {
            headers["last"] = json!(true);
        }
        let m = json!({"key": key, "value": value, "headers": headers});
        (LogOffset::new(tx, op), Bytes::from(m.to_string()))
    }

    fn change(tx: u64, op: u64, key: &str, operation: &str, value: Value) -> (LogOffset, Bytes) {
        msg(tx, op, key, operation, value, false)
    }

    fn parse(b: &Bytes) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn merges_update_runs_and_keeps_inserts_and_deletes() {
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
        let compacted = compact_chunk(&chunk, false).unwrap();
        let offsets: Vec<String> = compacted.iter().map(|(o, _)| o.to_string()).collect();
        // a: insert kept, its two updates merged at 15_0; b: two updates merged at 12_2, then
        // delete and insert kept; c: kept.
        assert_eq!(
            offsets,
            ["10_0", "12_0", "12_2", "13_0", "14_0", "14_2", "15_0"]
        );
        let (mut want, mut got) = (before.clone(), before);
        apply(&mut want, &chunk);
        apply(&mut got, &compacted);
        assert_eq!(got, want);
        let a = parse(&compacted[6].1);
        assert_eq!(a["headers"]["operation"], "update");
        assert_eq!(a["value"], json!({"id":"a","n":"2","t":"y"}));
        assert_eq!(a["headers"]["txids"], json!([11, 15]));
        assert_eq!(
            compacted[0].1, chunk[0].1,
            "untouched entries keep their bytes"
        );
    }

    #[test]
    fn barriers_and_bad_input() {
        let pk_change = (
            LogOffset::new(11, 0),
            Bytes::from(json!({"key":"a","value":{"id":"a"},"headers":{"operation":"update","key_change_to":"z"}}).to_string()),
        );
        let control = (
            LogOffset::new(13, 0),
            Bytes::from(json!({"headers":{"control":"x"}}).to_string()),
        );
        let chunk = vec![
            change(10, 0, "a", "update", json!({"id":"a","n":"1"})),
            pk_change,
            change(12, 0, "a", "update", json!({"id":"a","n":"2"})),
            control,
            change(14, 0, "a", "update", json!({"id":"a","n":"3"})),
        ];
        assert_eq!(
            compact_chunk(&chunk, false).unwrap().len(),
            5,
            "nothing merges across a barrier"
        );
        let not_json = vec![(LogOffset::new(1, 0), Bytes::from_static(b"{"))];
        assert_eq!(
            compact_chunk(&not_json, false),
            Err(CompactError::NotJson(LogOffset::new(1, 0)))
        );
        let unordered = vec![
            change(2, 0, "a", "update", json!({})),
            change(1, 0, "a", "update", json!({})),
        ];
        assert_eq!(
            compact_chunk(&unordered, false),
            Err(CompactError::Order(LogOffset::new(1, 0)))
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
        let out = compact_chunk(&chunk, false).unwrap();
        let m = parse(&out[0].1);
        assert_eq!(m["old_value"], json!({"n":"1","t":"x"}));
        assert_eq!(m["value"], json!({"n":"3","t":"y"}));
    }

    #[test]
    fn last_marker_moves_back_within_its_transaction() {
        let chunk = vec![
            msg(10, 0, "b", "insert", json!({"id":"b"}), false),
            msg(10, 2, "a", "update", json!({"n":"1"}), true),
            msg(11, 0, "a", "update", json!({"n":"2"}), true),
        ];
        let out = compact_chunk(&chunk, false).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(parse(&out[0].1)["headers"]["last"], true);
        assert_eq!(parse(&out[1].1)["headers"]["last"], true);
    }

    #[test]
    fn the_last_marker_of_a_transaction_begun_before_the_chunk_stays() {
        let chunk = vec![
            msg(10, 2, "a", "update", json!({"n":"1"}), true),
            msg(11, 0, "a", "update", json!({"n":"2"}), true),
        ];
        assert_eq!(compact_chunk(&chunk, false).unwrap().len(), 1);
        let kept = compact_chunk(&chunk, true).unwrap();
        assert_eq!(
            kept, chunk,
            "10_2 ends a transaction a client may have begun reading"
        );
    }

    /// A random chunk as a shape log holds it: transactions of changes to a few keys, each
    /// transaction's last message marked, sometimes a primary-key change.
    fn random_chunk(rng: &mut rand::rngs::StdRng, before: &State) -> Vec<(LogOffset, Bytes)> {
        let keys = ["a", "b", "c", "d"];
        let mut present: BTreeSet<String> = before.keys().cloned().collect();
        let mut out = Vec::new();
        let txs = rng.random_range(1..12u64);
        for t in 0..txs {
            let tx = 100 + t * 3;
            let n = rng.random_range(1..5u64);
            for i in 0..n {
                let key = keys[rng.random_range(0..keys.len())];
                let last = i + 1 == n;
                let col = ["x", "y", "z"][rng.random_range(0..3)];
                let v = json!({ col: format!("{tx}.{i}") });
                let op = if !present.contains(key) {
                    present.insert(key.into());
                    "insert"
                } else if rng.random_bool(0.2) {
                    present.remove(key);
                    "delete"
                } else {
                    "update"
                };
                let mut m = msg(tx, i * 2, key, op, v, last);
                if op == "update" && rng.random_bool(0.05) {
                    let mut j = parse(&m.1);
                    j["headers"]["key_change_to"] = json!(key);
                    m.1 = Bytes::from(j.to_string());
                }
                out.push(m);
            }
        }
        out
    }

    #[test]
    fn every_offset_stays_valid_on_random_chunks() {
        let seed = std::env::var("SHAPESYNC_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(7u64);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut shrunk = 0;
        let mut maybe = 0;
        for case in 0..2_000 {
            let mut before: State = if rng.random_bool(0.5) {
                [("a".to_string(), Map::new())].into()
            } else {
                State::new()
            };
            let mut chunk = random_chunk(&mut rng, &before);
            // Half the cases start at a random entry, often inside a transaction (a chunk
            // boundary may fall inside one): what came before is the client's state.
            let mut continues = false;
            if rng.random_bool(0.5) {
                let start = rng.random_range(0..chunk.len());
                continues = start > 0 && chunk[start - 1].0.tx() == chunk[start].0.tx();
                apply(&mut before, &chunk[..start]);
                chunk.drain(..start);
            }
            let compacted = compact_chunk(&chunk, continues).unwrap();
            let t0 = chunk[0].0.tx();
            assert!(
                !continues
                    || compacted
                        .iter()
                        .any(|(o, b)| o.tx() == t0 && parse(b)["headers"]["last"] == json!(true)),
                "case {case}: a transaction begun before the chunk keeps its last marker"
            );
            shrunk += chunk.len() - compacted.len();
            if !may_merge(&chunk) {
                assert_eq!(compacted, chunk, "case {case}: nothing merges");
            } else {
                maybe += 1;
            }
            assert_eq!(
                compacted.last().map(|e| e.0),
                chunk.last().map(|e| e.0),
                "case {case}: the chunk's end survives"
            );
            let mut want = before.clone();
            apply(&mut want, &chunk);
            // Every offset a client may hold: the chunk's start and each entry's offset.
            let mut at = before.clone();
            for cut in 0..=chunk.len() {
                if cut > 0 {
                    apply(&mut at, &chunk[cut - 1..cut]);
                }
                let after = cut.checked_sub(1).map(|i| chunk[i].0);
                let rest: Vec<_> = compacted
                    .iter()
                    .filter(|(o, _)| after.is_none_or(|a| *o > a))
                    .cloned()
                    .collect();
                let mut got = at.clone();
                apply(&mut got, &rest);
                assert_eq!(got, want, "case {case}, client at {after:?}");
            }
            // Transactions: each one's last kept message, and only it, says `last`; no
            // transaction id is lost.
            let mut last_of: BTreeMap<u64, LogOffset> = BTreeMap::new();
            let (mut ids_before, mut ids_after) = (BTreeSet::new(), BTreeSet::new());
            for (o, b) in &chunk {
                for t in parse(b)["headers"]["txids"].as_array().unwrap() {
                    ids_before.insert(t.as_u64().unwrap());
                }
                let _ = o;
            }
            for (o, _) in &compacted {
                last_of.insert(o.tx(), *o);
            }
            for (o, b) in &compacted {
                let m = parse(b);
                for t in m["headers"]["txids"].as_array().unwrap() {
                    ids_after.insert(t.as_u64().unwrap());
                }
                let marked = m["headers"]["last"] == json!(true);
                assert_eq!(marked, last_of[&o.tx()] == *o, "case {case}: last at {o}");
            }
            assert_eq!(ids_after, ids_before, "case {case}");
        }
        assert!(shrunk > 1_000, "the random chunks do compact ({shrunk})");
        assert!(
            (100..1_900).contains(&maybe),
            "both answers occur ({maybe})"
        );
    }
}
