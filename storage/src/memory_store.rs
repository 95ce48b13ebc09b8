//! `MemoryStore`: the in-memory implementation of the store traits.
//!
//! Same semantics as the file store (chunking, `NotReady`, changes visible only after `flush`),
//! nothing on disk. Used by tests of the layers above and for ephemeral deployments. It shares
//! the chunking rule and the seek plan with the file store; positions are entry indexes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

use crate::chunking::Chunker;
use crate::error::StoreError;
use crate::log::{
    check_change_offset, check_compacted, validate_id, CompactionCandidate, OpenedLog, ReadResult,
    SealedRead, ShapeLog, ShapeLogStore, SnapshotState, StoreConfig,
};
use crate::offset::LogOffset;
use crate::seek::{plan, ChangeIndex, Plan, SealedChunk};

/// A stored shape: its metadata and its log.
type Entry = (Vec<u8>, Arc<MemoryLog>);

/// An in-memory [`ShapeLogStore`].
pub struct MemoryStore {
    cfg: StoreConfig,
    /// std Mutex: held only for map lookups and inserts, never across I/O or `.await`.
    logs: Mutex<BTreeMap<String, Entry>>,
}

impl MemoryStore {
    pub fn new(cfg: StoreConfig) -> MemoryStore {
        MemoryStore {
            cfg,
            logs: Mutex::new(BTreeMap::new()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these short critical sections cannot leave the data
    // half-updated in a way that matters more than the panic itself; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ShapeLogStore for MemoryStore {
    fn create(&self, id: &str, meta: &[u8]) -> Result<Arc<dyn ShapeLog>, StoreError> {
        validate_id(id)?;
        let mut logs = lock(&self.logs);
        if logs.contains_key(id) {
            return Err(StoreError::AlreadyExists(id.to_owned()));
        }
        let log = Arc::new(MemoryLog::new(self.cfg.chunk_bytes_threshold));
        logs.insert(id.to_owned(), (meta.to_vec(), Arc::clone(&log)));
        Ok(log)
    }

    fn open_all(&self) -> Result<Vec<OpenedLog>, StoreError> {
        Ok(lock(&self.logs)
            .iter()
            .map(|(id, (meta, log))| {
                let log: Arc<dyn ShapeLog> = Arc::clone(log) as Arc<dyn ShapeLog>;
                (id.clone(), meta.clone(), log)
            })
            .collect())
    }

    fn remove(&self, id: &str) -> Result<(), StoreError> {
        validate_id(id)?;
        match lock(&self.logs).remove(id) {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound(id.to_owned())),
        }
    }

    /// Nothing to make durable in memory: the batch is each log's flush.
    fn commit(&self, logs: &[Arc<dyn ShapeLog>]) -> Result<(), StoreError> {
        for log in logs {
            log.flush()?;
        }
        Ok(())
    }
}

/// Snapshot part: sealed chunks are visible, the open chunk is not.
struct MemSnapshot {
    sealed: Vec<Vec<Bytes>>,
    open: Vec<Bytes>,
    chunker: Chunker,
    finished: bool,
    bytes: u64,
}

/// Reader-visible change part: durable entries and their index.
struct MemChanges {
    entries: Vec<(LogOffset, Bytes)>,
    index: ChangeIndex<usize>,
    bytes: u64,
    /// Compacted forms of sealed chunks, by chunk end.
    compacted: BTreeMap<LogOffset, Arc<[(LogOffset, Bytes)]>>,
}

/// Writer-private change state: what `flush` will publish.
struct MemChangeWriter {
    pending: Vec<(LogOffset, Bytes)>,
    /// Chunks sealed by pending entries: (end offset, index after the entry).
    pending_seals: Vec<SealedChunk<usize>>,
    chunker: Chunker,
    /// Last appended offset, durable or not.
    last: Option<LogOffset>,
    /// `chunker` and `last` as of the last flush, restored by `discard_unflushed`.
    durable_chunker: Chunker,
    durable_last: Option<LogOffset>,
}

/// One in-memory shape log.
pub(crate) struct MemoryLog {
    /// std RwLock: readers clone `Bytes` handles out and release; never held across `.await`.
    snapshot: RwLock<MemSnapshot>,
    changes: RwLock<MemChanges>,
    /// Serialises writers of the change part; readers never take it.
    writer: Mutex<MemChangeWriter>,
}

impl MemoryLog {
    fn new(threshold: u64) -> MemoryLog {
        MemoryLog {
            snapshot: RwLock::new(MemSnapshot {
                sealed: Vec::new(),
                open: Vec::new(),
                chunker: Chunker::new(threshold),
                finished: false,
                bytes: 0,
            }),
            changes: RwLock::new(MemChanges {
                entries: Vec::new(),
                index: ChangeIndex::new(0),
                bytes: 0,
                compacted: BTreeMap::new(),
            }),
            writer: Mutex::new(MemChangeWriter {
                pending: Vec::new(),
                pending_seals: Vec::new(),
                chunker: Chunker::new(threshold),
                last: None,
                durable_chunker: Chunker::new(threshold),
                durable_last: None,
            }),
        }
    }

    fn snapshot_mut(&self) -> std::sync::RwLockWriteGuard<'_, MemSnapshot> {
        self.snapshot.write().unwrap_or_else(|e| e.into_inner())
    }

    fn snapshot_ref(&self) -> std::sync::RwLockReadGuard<'_, MemSnapshot> {
        self.snapshot.read().unwrap_or_else(|e| e.into_inner())
    }

    fn changes_ref(&self) -> std::sync::RwLockReadGuard<'_, MemChanges> {
        self.changes.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl ShapeLog for MemoryLog {
    fn append_snapshot_row(&self, json: &[u8]) -> Result<(), StoreError> {
        let mut s = self.snapshot_mut();
        if s.finished {
            return Err(StoreError::SnapshotFinished);
        }
        s.open.push(Bytes::copy_from_slice(json));
        s.bytes += json.len() as u64;
        if s.chunker.add(json.len()) {
            let chunk = std::mem::take(&mut s.open);
            s.sealed.push(chunk);
        }
        Ok(())
    }

    fn finish_snapshot(&self, snapshot_end_json: &[u8]) -> Result<(), StoreError> {
        let mut s = self.snapshot_mut();
        if s.finished {
            return Err(StoreError::SnapshotFinished);
        }
        s.open.push(Bytes::copy_from_slice(snapshot_end_json));
        s.bytes += snapshot_end_json.len() as u64;
        s.chunker.reset();
        let chunk = std::mem::take(&mut s.open);
        s.sealed.push(chunk);
        s.finished = true;
        Ok(())
    }

    fn append_change(&self, offset: LogOffset, json: &[u8]) -> Result<(), StoreError> {
        let mut w = lock(&self.writer);
        check_change_offset(offset, w.last)?;
        w.pending.push((offset, Bytes::copy_from_slice(json)));
        w.last = Some(offset);
        if w.chunker.add(json.len()) {
            // The end position is fixed at flush time (durable count + pending index).
            let end_pos = w.pending.len();
            w.pending_seals.push(SealedChunk {
                end: offset,
                end_pos,
            });
        }
        Ok(())
    }

    fn discard_unflushed(&self) {
        let mut w = lock(&self.writer);
        w.pending.clear();
        w.pending_seals.clear();
        w.chunker = w.durable_chunker;
        w.last = w.durable_last;
    }

    fn flush(&self) -> Result<LogOffset, StoreError> {
        let mut w = lock(&self.writer);
        let pending = std::mem::take(&mut w.pending);
        let seals = std::mem::take(&mut w.pending_seals);
        w.durable_chunker = w.chunker;
        w.durable_last = w.last;
        let mut c = self.changes.write().unwrap_or_else(|e| e.into_inner());
        let Some(&(latest, _)) = pending.last() else {
            return Ok(c.index.latest_offset());
        };
        let base = c.entries.len();
        c.bytes += pending.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
        c.entries.extend(pending);
        let end = c.entries.len();
        let seals = seals.into_iter().map(|s| SealedChunk {
            end: s.end,
            end_pos: base + s.end_pos,
        });
        c.index.publish(seals, end, latest);
        Ok(latest)
    }

    fn read(&self, after: LogOffset) -> Result<ReadResult, StoreError> {
        let state = self.snapshot_state();
        let c = self.changes_ref();
        Ok(match plan(after, &state, &c.index) {
            Plan::NotReady => ReadResult::NotReady,
            Plan::Snapshot(k) => {
                let s = self.snapshot_ref();
                let entries = usize::try_from(k)
                    .ok()
                    .and_then(|k| s.sealed.get(k))
                    .cloned()
                    .unwrap_or_default();
                ReadResult::Chunk {
                    entries,
                    end: LogOffset::snapshot_chunk(k),
                    compacted: false,
                }
            }
            Plan::Changes { from, to, end } => {
                let compacted = c.compacted.get(&end);
                let stored = compacted.map_or(&c.entries[from..to], |e| &e[..]);
                ReadResult::Chunk {
                    entries: stored
                        .iter()
                        .filter(|(o, _)| *o > after)
                        .map(|(_, b)| b.clone())
                        .collect(),
                    end,
                    compacted: compacted.is_some(),
                }
            }
            Plan::Empty { end } => ReadResult::Chunk {
                entries: Vec::new(),
                end,
                compacted: false,
            },
        })
    }

    fn read_sealed(&self, after: LogOffset) -> Result<Option<SealedRead>, StoreError> {
        let state = self.snapshot_state();
        let c = self.changes_ref();
        Ok(match plan(after, &state, &c.index) {
            Plan::Snapshot(k) if state.finished => {
                let s = self.snapshot_ref();
                let entries = usize::try_from(k)
                    .ok()
                    .and_then(|k| s.sealed.get(k))
                    .cloned();
                entries.map(|entries| SealedRead::Snapshot { k, entries })
            }
            Plan::Changes { from, to, end } if c.index.is_sealed_end(end) => {
                let compacted = c.compacted.get(&end);
                Some(SealedRead::Changes {
                    entries: compacted.map_or(&c.entries[from..to], |e| &e[..]).to_vec(),
                    compacted: compacted.is_some(),
                })
            }
            _ => None,
        })
    }

    fn compaction_candidate(&self) -> Result<Option<CompactionCandidate>, StoreError> {
        let c = self.changes_ref();
        Ok(c.index
            .compaction_candidate()
            .map(|(from, to, end)| (end, c.entries[from..to].to_vec())))
    }

    fn visit_compaction_candidate(
        &self,
        _scratch: &mut Vec<u8>,
        visit: &mut dyn FnMut(LogOffset, &[u8]),
    ) -> Result<Option<LogOffset>, StoreError> {
        let c = self.changes_ref();
        let Some((from, to, end)) = c.index.compaction_candidate() else {
            return Ok(None);
        };
        for (offset, json) in &c.entries[from..to] {
            visit(*offset, json);
        }
        Ok(Some(end))
    }

    fn sealed_chunk_start(&self, end: LogOffset) -> Option<LogOffset> {
        self.changes_ref().index.sealed_chunk_start(end)
    }

    fn has_compaction_candidate(&self) -> bool {
        self.changes_ref().index.has_compaction_candidate()
    }

    fn store_compacted(
        &self,
        end: LogOffset,
        entries: Option<&[(LogOffset, Bytes)]>,
    ) -> Result<(), StoreError> {
        let mut c = self.changes.write().unwrap_or_else(|e| e.into_inner());
        let Some((from, to)) = c.index.sealed_range(end) else {
            return Err(StoreError::InvalidCompaction(format!(
                "no sealed chunk ends at {end}"
            )));
        };
        if let Some(entries) = entries {
            if c.compacted.contains_key(&end) {
                return Err(StoreError::InvalidCompaction(format!(
                    "the chunk ending at {end} is already compacted"
                )));
            }
            check_compacted(&c.entries[from..to], entries)?;
            c.compacted.insert(end, entries.into());
        }
        c.index.mark_offered(end, entries.is_some());
        Ok(())
    }

    fn latest_offset(&self) -> LogOffset {
        self.changes_ref().index.latest_offset()
    }

    fn snapshot_state(&self) -> SnapshotState {
        let s = self.snapshot_ref();
        SnapshotState {
            sealed_chunks: s.sealed.len() as u64,
            finished: s.finished,
        }
    }

    fn size_bytes(&self) -> u64 {
        self.snapshot_ref().bytes + self.changes_ref().bytes
    }
}
