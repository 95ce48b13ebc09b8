//! The object-store tier's byte formats (FORMAT.md "Object-store tier"), pure: chunk objects,
//! manifests, object names, and the seek plan over what a manifest lists.
//!
//! A chunk object holds one sealed chunk, framed like the log files (len + crc32 + body) and
//! always fully verified on decode: objects cross a network and other processes' hands.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::FormatError;
use crate::log::{SealedRead, SnapshotState};
use crate::offset::LogOffset;
use crate::record::{decode_change_body, encode_change, encode_frame, parse_frame};
use crate::seek::{plan, ChangeIndex, Plan, SealedChunk};

pub(crate) const CHUNK_MAGIC: [u8; 4] = *b"SSOC";
/// Version 2 added kind 3; version 1 objects (kinds 1 and 2) are still read.
pub(crate) const CHUNK_VERSION: u16 = 2;
const CHUNK_HEADER_LEN: usize = 11;
const KIND_SNAPSHOT: u8 = 1;
const KIND_CHANGES: u8 = 2;
/// The compacted form of a change chunk (same body as kind 2).
const KIND_COMPACTED: u8 = 3;
pub(crate) const MANIFEST_FORMAT: u32 = 1;

/// Encodes a sealed chunk as an object body.
pub(crate) fn encode_chunk(chunk: &SealedRead) -> Vec<u8> {
    let (kind, count) = match chunk {
        SealedRead::Snapshot { entries, .. } => (KIND_SNAPSHOT, entries.len()),
        SealedRead::Changes {
            entries,
            compacted: false,
        } => (KIND_CHANGES, entries.len()),
        SealedRead::Changes {
            entries,
            compacted: true,
        } => (KIND_COMPACTED, entries.len()),
    };
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + 64 * count);
    out.extend_from_slice(&CHUNK_MAGIC);
    out.extend_from_slice(&CHUNK_VERSION.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    match chunk {
        SealedRead::Snapshot { entries, .. } => {
            for e in entries {
                encode_frame(&mut out, &[e]);
            }
        }
        SealedRead::Changes { entries, .. } => {
            for (o, e) in entries {
                encode_change(&mut out, o.tx(), o.op().unwrap_or(0), e);
            }
        }
    }
    out
}

/// A decoded chunk object.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DecodedChunk {
    /// Entries with their offsets (`None` for snapshot rows).
    pub(crate) entries: Vec<(Option<LogOffset>, Bytes)>,
    /// A compacted change chunk (kind 3).
    pub(crate) compacted: bool,
}

/// Decodes and verifies a chunk object; `Err` says what is wrong.
pub(crate) fn decode_chunk(buf: &Bytes) -> Result<DecodedChunk, FormatError> {
    let header = buf
        .get(..CHUNK_HEADER_LEN)
        .ok_or(FormatError::new("short header"))?;
    if header[0..4] != CHUNK_MAGIC {
        return Err(FormatError::new("bad magic"));
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if !(1..=CHUNK_VERSION).contains(&version) {
        return Err(FormatError::new(format!(
            "unsupported chunk object version {version}"
        )));
    }
    let kind = header[6];
    let count = u32::from_le_bytes([header[7], header[8], header[9], header[10]]) as usize;
    let known = match version {
        1 => [KIND_SNAPSHOT, KIND_CHANGES].contains(&kind),
        _ => [KIND_SNAPSHOT, KIND_CHANGES, KIND_COMPACTED].contains(&kind),
    };
    if !known {
        return Err(FormatError::new(format!(
            "unknown chunk kind {kind} in version {version}"
        )));
    }
    let mut out = Vec::with_capacity(count.min(1 << 16));
    let mut at = CHUNK_HEADER_LEN;
    while at < buf.len() {
        let (body, len) = parse_frame(&buf[at..], true)
            .map_err(|e| FormatError::new(format!("{e:?} at {at}")))?;
        let body = at + body.start..at + body.end;
        if kind == KIND_SNAPSHOT {
            out.push((None, buf.slice(body)));
        } else {
            let (o, json) = decode_change_body(&buf[body.clone()])
                .ok_or(FormatError::new("short change body"))?;
            if out.last().is_some_and(|(prev, _)| *prev >= Some(o)) {
                return Err(FormatError::new(format!("offset {o} out of order")));
            }
            out.push((
                Some(o),
                buf.slice(body.start + json.start..body.start + json.end),
            ));
        }
        at += len;
    }
    if out.len() != count {
        return Err(FormatError::new(format!(
            "{} entries, header says {count}",
            out.len()
        )));
    }
    Ok(DecodedChunk {
        entries: out,
        compacted: kind == KIND_COMPACTED,
    })
}

/// One shape's manifest: everything the bucket holds for it. Each manifest is complete (it
/// repeats the previous one and adds to it), so readers need only the highest-numbered one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// This manifest's number (`manifest-<seq>.json`, from 1).
    pub seq: u64,
    /// The shape id (the handle).
    pub id: String,
    /// The shape's opaque metadata bytes, hex-encoded.
    pub meta_hex: String,
    /// Snapshot chunks uploaded (`0_0` … `0_<n-1>`).
    pub snapshot_chunks: u64,
    /// Whether every snapshot chunk is uploaded (the snapshot was finished).
    pub snapshot_complete: bool,
    /// End offsets of the uploaded change chunks, ascending; chunk `i` holds the entries in
    /// `(change_chunks[i-1], change_chunks[i]]` (the first one from `0_inf`).
    #[serde(with = "offsets_as_text")]
    pub change_chunks: Vec<LogOffset>,
    /// The shape was archived (its local log removed): no chunk will be added.
    pub archived: bool,
}

impl Manifest {
    pub(crate) fn new(id: &str, meta: &[u8]) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            seq: 0,
            id: id.to_owned(),
            meta_hex: hex(meta),
            snapshot_chunks: 0,
            snapshot_complete: false,
            change_chunks: Vec::new(),
            archived: false,
        }
    }

    /// The shape's metadata bytes.
    pub fn meta(&self) -> Option<Vec<u8>> {
        unhex(&self.meta_hex)
    }

    /// The offset after which the next chunk to upload starts.
    pub(crate) fn next_after(&self) -> LogOffset {
        match self.change_chunks.last() {
            Some(&end) => end,
            None if self.snapshot_chunks == 0 => LogOffset::BEFORE_ALL,
            None => LogOffset::snapshot_chunk(self.snapshot_chunks - 1),
        }
    }

    /// Which stored chunk answers a read after `after` (protocol.md §3.2 over the manifest),
    /// or `None` when the bucket does not hold it (not uploaded, or past the sealed part).
    pub(crate) fn locate(&self, after: LogOffset) -> Option<ChunkRef> {
        let state = SnapshotState {
            sealed_chunks: self.snapshot_chunks,
            finished: self.snapshot_complete,
        };
        let mut index = ChangeIndex::new(0usize);
        if let Some(&latest) = self.change_chunks.last() {
            let sealed = self
                .change_chunks
                .iter()
                .enumerate()
                .map(|(i, &end)| SealedChunk {
                    end,
                    end_pos: i + 1,
                });
            index.publish(sealed, self.change_chunks.len(), latest);
        }
        match plan(after, &state, &index) {
            Plan::Snapshot(k) => Some(ChunkRef::Snapshot(k)),
            Plan::Changes { from, end, .. } => Some(ChunkRef::Changes { index: from, end }),
            Plan::NotReady | Plan::Empty { .. } => None,
        }
    }
}

/// A chunk object of a shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkRef {
    Snapshot(u64),
    /// Change chunk number `index`, ending at `end`.
    Changes {
        index: usize,
        end: LogOffset,
    },
}

impl ChunkRef {
    pub(crate) fn end(self) -> LogOffset {
        match self {
            ChunkRef::Snapshot(k) => LogOffset::snapshot_chunk(k),
            ChunkRef::Changes { end, .. } => end,
        }
    }

    /// The object name relative to the shape's folder.
    pub(crate) fn name(self) -> String {
        match self {
            ChunkRef::Snapshot(k) => format!("snapshot-{k}.chunk"),
            ChunkRef::Changes { end, .. } => format!("changes-{end}.chunk"),
        }
    }
}

/// `manifest-000042.json`: zero-padded so names sort like numbers (up to 10^6, beyond which
/// they keep working because readers parse the number).
pub(crate) fn manifest_name(seq: u64) -> String {
    format!("manifest-{seq:06}.json")
}

/// The number of a manifest object name, if it is one.
pub(crate) fn parse_manifest_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("manifest-")?.strip_suffix(".json")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Offsets in manifests are their protocol text form (`"12_3"`).
mod offsets_as_text {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::offset::LogOffset;

    pub(super) fn serialize<S: Serializer>(v: &[LogOffset], s: S) -> Result<S::Ok, S::Error> {
        let text: Vec<String> = v.iter().map(LogOffset::to_string).collect();
        text.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<LogOffset>, D::Error> {
        let text = Vec::<String>::deserialize(d)?;
        text.iter()
            .map(|t| t.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(t: &str) -> LogOffset {
        t.parse().expect("offset")
    }

    #[test]
    fn chunk_round_trip_and_damage() {
        let c = SealedRead::Changes {
            entries: vec![
                (o("5_0"), Bytes::from_static(b"{\"a\":1}")),
                (o("5_2"), Bytes::from_static(b"{\"b\":2}")),
            ],
            compacted: false,
        };
        let bytes = Bytes::from(encode_chunk(&c));
        let back = decode_chunk(&bytes).expect("decode");
        assert!(!back.compacted);
        assert_eq!(back.entries.len(), 2);
        assert_eq!(
            back.entries[1],
            (Some(o("5_2")), Bytes::from_static(b"{\"b\":2}"))
        );
        let SealedRead::Changes { entries, .. } = c else {
            unreachable!()
        };
        let compacted = SealedRead::Changes {
            entries,
            compacted: true,
        };
        let mut v = encode_chunk(&compacted);
        assert_eq!(v[6], KIND_COMPACTED);
        assert!(
            decode_chunk(&Bytes::from(v.clone()))
                .expect("decode")
                .compacted
        );
        v[4] = 1; // kind 3 does not exist in version 1
        assert!(decode_chunk(&Bytes::from(v)).is_err());
        for cut in [3, 12, bytes.len() - 1] {
            assert!(decode_chunk(&bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.to_vec();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        assert!(decode_chunk(&Bytes::from(flipped)).is_err());
        let s = SealedRead::Snapshot {
            k: 3,
            entries: vec![Bytes::from_static(b"{}")],
        };
        let back = decode_chunk(&Bytes::from(encode_chunk(&s))).expect("decode");
        assert_eq!(back.entries, vec![(None, Bytes::from_static(b"{}"))]);
    }

    #[test]
    fn manifest_locates_chunks_like_the_log() {
        let mut m = Manifest::new("1-2", b"{\"x\":1}");
        assert_eq!(m.meta().as_deref(), Some(&b"{\"x\":1}"[..]));
        assert_eq!(m.locate(LogOffset::BEFORE_ALL), None);
        m.snapshot_chunks = 2;
        assert_eq!(m.locate(LogOffset::BEFORE_ALL), Some(ChunkRef::Snapshot(0)));
        assert_eq!(m.locate(o("0_1")), None, "snapshot not complete");
        m.snapshot_complete = true;
        assert_eq!(m.locate(o("0_1")), None, "no change chunk yet");
        m.change_chunks = vec![o("10_3"), o("20_0")];
        assert_eq!(m.next_after(), o("20_0"));
        let first = ChunkRef::Changes {
            index: 0,
            end: o("10_3"),
        };
        assert_eq!(m.locate(o("0_1")), Some(first));
        assert_eq!(m.locate(o("0_inf")), Some(first));
        assert_eq!(m.locate(o("7_0")), Some(first));
        let second = ChunkRef::Changes {
            index: 1,
            end: o("20_0"),
        };
        assert_eq!(m.locate(o("10_3")), Some(second));
        assert_eq!(second.name(), "changes-20_0.chunk");
        assert_eq!(m.locate(o("20_0")), None, "past the sealed part");
    }

    #[test]
    fn manifest_names() {
        assert_eq!(manifest_name(7), "manifest-000007.json");
        assert_eq!(parse_manifest_name("manifest-000007.json"), Some(7));
        assert_eq!(
            parse_manifest_name("manifest-1234567.json"),
            Some(1_234_567)
        );
        assert_eq!(parse_manifest_name("manifest-.json"), None);
        assert_eq!(parse_manifest_name("manifest-1x.json"), None);
        assert_eq!(parse_manifest_name("snapshot-1.chunk"), None);
    }
}
