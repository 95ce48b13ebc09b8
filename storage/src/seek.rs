//! The seek algorithm (protocol.md §3.2), pure and shared by both stores.
//!
//! `ChangeIndex<P>` is the in-memory sparse index of a change log: the end offset and end
//! position of every sealed chunk plus the durable end. `P` is a position: a byte position in
//! `changes.log` for the file store, an entry index for the memory store. `plan` turns a
//! requested offset into a decision (which snapshot chunk, which change range, or not ready);
//! the store then reads that range and keeps the entries `> after`.

use crate::log::SnapshotState;
use crate::offset::LogOffset;

/// A sealed change chunk: entries up to and including `end`, stored before position `end_pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SealedChunk<P> {
    pub(crate) end: LogOffset,
    pub(crate) end_pos: P,
}

/// Reader-visible index of the durable part of a change log.
#[derive(Debug)]
pub(crate) struct ChangeIndex<P> {
    /// Position of the first entry.
    base: P,
    /// Sealed chunks, ascending by `end` (and by `end_pos`).
    sealed: Vec<SealedChunk<P>>,
    /// End of the durable entries (start of the open tail chunk is the last sealed `end_pos`).
    durable_end: P,
    /// Offset of the last durable entry, if any.
    latest: Option<LogOffset>,
    /// Compaction and segment state, allocated once there is any: most logs (small, idle
    /// shapes) have none, and this index is part of every idle shape's memory (target P7).
    more: Option<Box<More<P>>>,
}

#[derive(Debug)]
struct More<P> {
    /// Ends of the sealed chunks stored compacted, ascending (readers get the compacted form).
    compacted: Vec<LogOffset>,
    /// Sealed chunks before this index were offered to compaction (since the log was opened,
    /// or they precede a compacted one).
    offered: usize,
    /// Positions where the log's later segment files start (file store; ascending).
    segments: Vec<P>,
    /// Bytes of records given back (segments cut to their header).
    given_back: u64,
}

impl<P: Copy> ChangeIndex<P> {
    pub(crate) fn new(base: P) -> Self {
        ChangeIndex {
            base,
            sealed: Vec::new(),
            durable_end: base,
            latest: None,
            more: None,
        }
    }

    fn offered(&self) -> usize {
        self.more.as_ref().map_or(0, |m| m.offered)
    }

    fn more_mut(&mut self) -> &mut More<P> {
        self.more.get_or_insert_with(|| {
            Box::new(More {
                compacted: Vec::new(),
                offered: 0,
                segments: Vec::new(),
                given_back: 0,
            })
        })
    }

    /// Bytes of records given back (see `note_given_back`).
    pub(crate) fn given_back(&self) -> u64 {
        self.more.as_ref().map_or(0, |m| m.given_back)
    }

    /// `bytes` of records were given back (a segment cut to its header).
    pub(crate) fn note_given_back(&mut self, bytes: u64) {
        if bytes > 0 {
            self.more_mut().given_back += bytes;
        }
    }

    /// Positions where later segments start, ascending (the first segment starts at `base`).
    pub(crate) fn segments(&self) -> &[P] {
        self.more.as_ref().map_or(&[], |m| &m.segments)
    }

    /// A new segment starts at `base` (past every segment so far).
    pub(crate) fn push_segment(&mut self, base: P) {
        self.more_mut().segments.push(base);
    }

    /// The finished segments (every one but the last) whose every overlapping chunk is stored
    /// compacted: their originals are read by nobody any more. `[start, end)` each, with the
    /// end offsets of those chunks.
    pub(crate) fn fully_compacted_segments(&self) -> Vec<(P, P, Vec<LogOffset>)>
    where
        P: Ord,
    {
        if self.more.as_ref().is_none_or(|m| m.compacted.is_empty()) {
            return Vec::new();
        }
        let starts: Vec<P> = std::iter::once(self.base)
            .chain(self.segments().iter().copied())
            .collect();
        let mut out = Vec::new();
        for w in starts.windows(2) {
            let (start, end) = (w[0], w[1]);
            // Chunks overlapping [start, end): those ending after `start` and starting before
            // `end`; the open tail chunk (never compacted) counts as one.
            let first = self.sealed.partition_point(|c| c.end_pos <= start);
            let mut overlapping = Vec::new();
            let mut all_compacted = true;
            for (i, c) in self.sealed.iter().enumerate().skip(first) {
                if self.chunk_start(i) >= end {
                    break;
                }
                overlapping.push(c.end);
                all_compacted &= self.is_compacted(c.end);
            }
            let tail_start = self.sealed.last().map_or(self.base, |c| c.end_pos);
            if tail_start < end && self.durable_end > tail_start {
                all_compacted = false;
            }
            if !overlapping.is_empty() && all_compacted {
                out.push((start, end, overlapping));
            }
        }
        out
    }

    /// The sealed chunks ending in `(from, to]` (positions).
    pub(crate) fn sealed_between(&self, from: P, to: P) -> Vec<SealedChunk<P>>
    where
        P: PartialOrd,
    {
        self.sealed
            .iter()
            .filter(|c| c.end_pos > from && c.end_pos <= to)
            .copied()
            .collect()
    }

    /// The oldest sealed chunk not offered to compaction yet: `(from, to, end)`.
    pub(crate) fn compaction_candidate(&self) -> Option<(P, P, LogOffset)> {
        let offered = self.offered();
        let chunk = self.sealed.get(offered)?;
        Some((self.chunk_start(offered), chunk.end_pos, chunk.end))
    }

    /// The offset after which the sealed chunk ending at `end` starts: the previous chunk's
    /// end, or `0_inf` for the first one.
    pub(crate) fn sealed_chunk_start(&self, end: LogOffset) -> Option<LogOffset> {
        let i = self.sealed.binary_search_by(|c| c.end.cmp(&end)).ok()?;
        Some(match i.checked_sub(1) {
            Some(prev) => self.sealed[prev].end,
            None => LogOffset::LAST_BEFORE_REAL,
        })
    }

    /// Is a sealed chunk waiting to be offered to compaction?
    pub(crate) fn has_compaction_candidate(&self) -> bool {
        self.offered() < self.sealed.len()
    }

    /// The position range of the sealed chunk ending at `end`.
    pub(crate) fn sealed_range(&self, end: LogOffset) -> Option<(P, P)> {
        let i = self.sealed.binary_search_by(|c| c.end.cmp(&end)).ok()?;
        Some((self.chunk_start(i), self.sealed[i].end_pos))
    }

    fn chunk_start(&self, i: usize) -> P {
        match i.checked_sub(1) {
            Some(prev) => self.sealed[prev].end_pos,
            None => self.base,
        }
    }

    /// The sealed chunk ending at `end` was offered to compaction, and is now stored compacted
    /// if `compacted`. No effect for an offset that is not a sealed chunk's end.
    pub(crate) fn mark_offered(&mut self, end: LogOffset, compacted: bool) {
        let Ok(i) = self.sealed.binary_search_by(|c| c.end.cmp(&end)) else {
            return;
        };
        let more = self.more_mut();
        more.offered = more.offered.max(i + 1);
        if let (true, Err(at)) = (compacted, more.compacted.binary_search(&end)) {
            more.compacted.insert(at, end);
        }
    }

    /// Readers stop using the compacted form of the chunk ending at `end` (it is damaged).
    pub(crate) fn drop_compacted(&mut self, end: LogOffset) {
        if let Some(m) = self.more.as_mut() {
            m.compacted.retain(|&e| e != end);
        }
    }

    /// Is the sealed chunk ending at `end` stored compacted?
    pub(crate) fn is_compacted(&self, end: LogOffset) -> bool {
        self.more
            .as_ref()
            .is_some_and(|m| !m.compacted.is_empty() && m.compacted.binary_search(&end).is_ok())
    }

    /// Latest durable offset, or `0_inf` when no change is durable.
    pub(crate) fn latest_offset(&self) -> LogOffset {
        self.latest.unwrap_or(LogOffset::LAST_BEFORE_REAL)
    }

    pub(crate) fn durable_end(&self) -> P {
        self.durable_end
    }

    /// Makes entries up to `durable_end` (last offset `latest`) and the given newly sealed
    /// chunks visible. Called after the data is durable.
    pub(crate) fn publish(
        &mut self,
        sealed: impl IntoIterator<Item = SealedChunk<P>>,
        durable_end: P,
        latest: LogOffset,
    ) {
        self.sealed.extend(sealed);
        self.durable_end = durable_end;
        self.latest = Some(latest);
    }

    /// Is `end` the end offset of a sealed chunk?
    pub(crate) fn is_sealed_end(&self, end: LogOffset) -> bool {
        self.sealed.binary_search_by(|c| c.end.cmp(&end)).is_ok()
    }

    /// The range to read for `after` (a change offset or `0_inf`) and the chunk end offset.
    /// `None` when no durable entry is `> after` (the answer is empty, ending at latest).
    fn locate(&self, after: LogOffset) -> Option<(P, P, LogOffset)> {
        match self.latest {
            Some(latest) if latest > after => {}
            _ => return None,
        }
        // The first entry > after lives in the first chunk whose end is > after: entries of
        // chunk i are <= end_i, entries of chunk i+1 are > end_i. Binary search.
        let i = self.sealed.partition_point(|c| c.end <= after);
        let start = self.chunk_start(i);
        Some(match self.sealed.get(i) {
            Some(chunk) => (start, chunk.end_pos, chunk.end),
            None => (start, self.durable_end, self.latest_offset()),
        })
    }
}

/// What a read must return.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Plan<P> {
    /// Snapshot chunk `k`, ending at `0_k`.
    Snapshot(u64),
    /// The snapshot chunk asked for is not sealed yet.
    NotReady,
    /// Change entries in positions `from..to` that are `> after`, ending at `end`.
    Changes { from: P, to: P, end: LogOffset },
    /// Nothing after the requested offset: empty, ending at `end` (latest).
    Empty { end: LogOffset },
}

/// protocol.md §3.2 over (snapshot part, change part).
pub(crate) fn plan<P: Copy>(
    after: LogOffset,
    snapshot: &SnapshotState,
    changes: &ChangeIndex<P>,
) -> Plan<P> {
    let next_chunk = if after.is_before_all() {
        Some(0)
    } else if after.is_snapshot() {
        // 0_k -> k + 1; 0_inf -> None (changes). A k of u64::MAX cannot have a successor.
        after.op().map(|k| k.saturating_add(1))
    } else {
        None
    };
    if let Some(k) = next_chunk {
        if k < snapshot.sealed_chunks {
            return Plan::Snapshot(k);
        }
        if !snapshot.finished {
            return Plan::NotReady;
        }
    }
    let after = if after.is_before_all() || after.is_snapshot() {
        LogOffset::LAST_BEFORE_REAL
    } else {
        after
    };
    match changes.locate(after) {
        Some((from, to, end)) => Plan::Changes { from, to, end },
        None => Plan::Empty {
            end: changes.latest_offset(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> ChangeIndex<usize> {
        let mut ix = ChangeIndex::new(0);
        let sealed = [
            SealedChunk {
                end: LogOffset::new(10, 2),
                end_pos: 2,
            },
            SealedChunk {
                end: LogOffset::new(20, 0),
                end_pos: 4,
            },
        ];
        ix.publish(sealed, 5, LogOffset::new(30, 0));
        ix
    }

    const DONE: SnapshotState = SnapshotState {
        sealed_chunks: 2,
        finished: true,
    };

    #[test]
    fn snapshot_part() {
        let ix = index();
        let open = SnapshotState {
            sealed_chunks: 1,
            finished: false,
        };
        assert_eq!(plan(LogOffset::BEFORE_ALL, &open, &ix), Plan::Snapshot(0));
        assert_eq!(
            plan(LogOffset::snapshot_chunk(0), &open, &ix),
            Plan::NotReady
        );
        assert_eq!(
            plan(LogOffset::snapshot_chunk(0), &DONE, &ix),
            Plan::Snapshot(1)
        );
        let all = Plan::Changes {
            from: 0,
            to: 2,
            end: LogOffset::new(10, 2),
        };
        assert_eq!(plan(LogOffset::snapshot_chunk(1), &DONE, &ix), all);
        assert_eq!(plan(LogOffset::snapshot_chunk(u64::MAX), &DONE, &ix), all);
    }

    #[test]
    fn segments_whose_chunks_are_all_compacted() {
        // Chunks [0,2) [2,4) [4,6) [6,8), tail [8,9); segments start at 0, 3, 6, 8.
        let mut ix = ChangeIndex::new(0usize);
        let sealed = (1..=4).map(|i| SealedChunk {
            end: LogOffset::new(i * 10, 0),
            end_pos: 2 * i as usize,
        });
        ix.publish(sealed, 9, LogOffset::new(45, 0));
        for base in [3, 6, 8] {
            ix.push_segment(base);
        }
        assert!(ix.fully_compacted_segments().is_empty());
        ix.mark_offered(LogOffset::new(10, 0), true);
        assert!(
            ix.fully_compacted_segments().is_empty(),
            "[0,3) also holds chunk 2"
        );
        ix.mark_offered(LogOffset::new(20, 0), true);
        let ranges = |ix: &ChangeIndex<usize>| -> Vec<(usize, usize)> {
            ix.fully_compacted_segments()
                .into_iter()
                .map(|(a, b, _)| (a, b))
                .collect()
        };
        assert_eq!(
            ix.fully_compacted_segments(),
            [(0, 3, vec![LogOffset::new(10, 0), LogOffset::new(20, 0)])]
        );
        ix.mark_offered(LogOffset::new(40, 0), true);
        // [6,8) holds chunk 4 only; [3,6) also holds chunk 3.
        assert_eq!(ranges(&ix), [(0, 3), (6, 8)]);
        ix.mark_offered(LogOffset::new(30, 0), true);
        // The last segment [8, …) is never finished.
        assert_eq!(ranges(&ix), [(0, 3), (3, 6), (6, 8)]);
    }

    #[test]
    fn change_part() {
        let ix = index();
        let p = |o| plan(o, &DONE, &ix);
        let second = Plan::Changes {
            from: 2,
            to: 4,
            end: LogOffset::new(20, 0),
        };
        assert_eq!(p(LogOffset::new(10, 2)), second);
        assert_eq!(p(LogOffset::new(15, 7)), second);
        let tail = Plan::Changes {
            from: 4,
            to: 5,
            end: LogOffset::new(30, 0),
        };
        assert_eq!(p(LogOffset::new(20, 0)), tail);
        let empty = Plan::Empty {
            end: LogOffset::new(30, 0),
        };
        assert_eq!(p(LogOffset::new(30, 0)), empty);
        assert_eq!(p(LogOffset::new(99, 0)), empty);
    }
}
