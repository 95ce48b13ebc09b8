//! The on-disk codec (FORMAT.md), pure: file headers and framed records, over byte slices.
//!
//! ```text
//! log file header  := magic[4] | version:u16 LE | threshold:u64 LE | crc32(previous 14):u32 LE
//! meta file        := magic[4] | version:u16 LE | frame(meta bytes)
//! frame            := len:u32 LE | crc32(body):u32 LE | body[len]
//! change body      := tx:u64 LE | op:u64 LE | json
//! snapshot body    := kind:u8 | json (rows only)
//! ```
//!
//! Nothing here touches a file; the stores feed bytes in and write bytes out.

use std::ops::Range;

use crate::error::FormatError;
use crate::offset::LogOffset;

pub(crate) const FORMAT_VERSION: u16 = 1;
pub(crate) const SNAPSHOT_MAGIC: [u8; 4] = *b"SSSN";
pub(crate) const CHANGES_MAGIC: [u8; 4] = *b"SSCH";
pub(crate) const META_MAGIC: [u8; 4] = *b"SSMT";

/// Length of a log file header.
pub(crate) const LOG_HEADER_LEN: usize = 18;
/// Length of a frame header (`len` + `crc`).
pub(crate) const FRAME_HEADER_LEN: usize = 8;
/// Upper bound on a frame body; a larger length is damage, not data.
pub(crate) const MAX_BODY_LEN: u32 = 1 << 30;
/// Length of the `tx` + `op` prefix of a change body.
pub(crate) const CHANGE_PREFIX_LEN: usize = 16;

/// Kind byte of a snapshot record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum SnapshotKind {
    /// One snapshot row (or the final `snapshot-end` control message).
    Row = 1,
    /// The chunk that the preceding rows form is sealed.
    Seal = 2,
    /// The snapshot is complete; always right after the last `Seal`.
    Finished = 3,
}

/// Encodes a log file header.
pub(crate) fn encode_log_header(magic: [u8; 4], threshold: u64) -> [u8; LOG_HEADER_LEN] {
    let mut h = [0u8; LOG_HEADER_LEN];
    h[0..4].copy_from_slice(&magic);
    h[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[6..14].copy_from_slice(&threshold.to_le_bytes());
    let crc = crc32fast::hash(&h[0..14]);
    h[14..18].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Decodes a log file header, returning the chunk threshold.
pub(crate) fn decode_log_header(magic: [u8; 4], h: &[u8]) -> Result<u64, FormatError> {
    if h.len() < LOG_HEADER_LEN {
        return Err(FormatError::new("short header"));
    }
    if h[0..4] != magic {
        return Err(FormatError::new("bad magic"));
    }
    if crc32fast::hash(&h[0..14]) != u32::from_le_bytes(h[14..18].try_into().unwrap_or([0; 4])) {
        return Err(FormatError::new("header checksum mismatch"));
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    if version != FORMAT_VERSION {
        return Err(FormatError::new(format!(
            "unsupported format version {version}"
        )));
    }
    Ok(u64::from_le_bytes(h[6..14].try_into().unwrap_or([0; 8])))
}

/// Appends one frame whose body is the concatenation of `parts`.
pub(crate) fn encode_frame(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut crc = crc32fast::Hasher::new();
    for p in parts {
        crc.update(p);
    }
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// Whether `json` fits in a frame next to a prefix of `prefix` bytes.
pub(crate) fn fits(json: &[u8], prefix: usize) -> bool {
    json.len() + prefix <= MAX_BODY_LEN as usize
}

/// Why a frame does not validate. Recovery truncates the file at such a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The buffer ends inside the frame (torn write).
    Incomplete,
    /// The length field is out of bounds.
    BadLength,
    /// The body does not match its checksum.
    BadChecksum,
}

/// Splits a frame header into `(body len, crc)`, rejecting impossible lengths.
pub(crate) fn parse_frame_header(h: [u8; FRAME_HEADER_LEN]) -> Result<(u32, u32), FrameError> {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len > MAX_BODY_LEN {
        return Err(FrameError::BadLength);
    }
    Ok((len, crc))
}

/// Parses the frame at the start of `buf`: the body range and the whole frame length.
/// The checksum is verified only if `verify` (recovery verifies, reads of validated ranges
/// do not).
pub(crate) fn parse_frame(buf: &[u8], verify: bool) -> Result<(Range<usize>, usize), FrameError> {
    let header: [u8; FRAME_HEADER_LEN] = buf
        .get(..FRAME_HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Incomplete)?;
    let (len, crc) = parse_frame_header(header)?;
    let end = FRAME_HEADER_LEN + len as usize;
    let body = buf
        .get(FRAME_HEADER_LEN..end)
        .ok_or(FrameError::Incomplete)?;
    if verify && crc32fast::hash(body) != crc {
        return Err(FrameError::BadChecksum);
    }
    Ok((FRAME_HEADER_LEN..end, end))
}

/// Appends a change record.
pub(crate) fn encode_change(out: &mut Vec<u8>, tx: u64, op: u64, json: &[u8]) {
    encode_frame(out, &[&tx.to_le_bytes(), &op.to_le_bytes(), json]);
}

/// Splits a change body into its offset and the range of its JSON within the body.
pub(crate) fn decode_change_body(body: &[u8]) -> Option<(LogOffset, Range<usize>)> {
    let tx = u64::from_le_bytes(body.get(0..8)?.try_into().ok()?);
    let op = u64::from_le_bytes(body.get(8..16)?.try_into().ok()?);
    Some((LogOffset::new(tx, op), CHANGE_PREFIX_LEN..body.len()))
}

/// Appends a snapshot record (`json` is empty for `Seal` and `Finished`).
pub(crate) fn encode_snapshot(out: &mut Vec<u8>, kind: SnapshotKind, json: &[u8]) {
    encode_frame(out, &[&[kind as u8], json]);
}

/// Splits a snapshot body into its kind and the range of its JSON within the body.
pub(crate) fn decode_snapshot_body(body: &[u8]) -> Option<(SnapshotKind, Range<usize>)> {
    let kind = match body.first()? {
        1 => SnapshotKind::Row,
        2 if body.len() == 1 => SnapshotKind::Seal,
        3 if body.len() == 1 => SnapshotKind::Finished,
        _ => return None,
    };
    Some((kind, 1..body.len()))
}

/// Encodes the `meta` file.
pub(crate) fn encode_meta(meta: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(meta.len() + 14);
    out.extend_from_slice(&META_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    encode_frame(&mut out, &[meta]);
    out
}

/// Decodes the `meta` file; `None` unless it validates completely.
pub(crate) fn decode_meta(buf: &[u8]) -> Option<Vec<u8>> {
    if buf.get(0..4)? != META_MAGIC || buf.get(4..6)? != FORMAT_VERSION.to_le_bytes() {
        return None;
    }
    let (body, len) = parse_frame(&buf[6..], true).ok()?;
    (6 + len == buf.len()).then(|| buf[6..][body].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_round_trip_and_damage() {
        let mut buf = Vec::new();
        encode_change(&mut buf, 7, 4, b"{\"a\":1}");
        let (body, len) = parse_frame(&buf, true).unwrap();
        assert_eq!(len, buf.len());
        let (off, json) = decode_change_body(&buf[body.clone()]).unwrap();
        assert_eq!(off, LogOffset::new(7, 4));
        assert_eq!(&buf[body][json], b"{\"a\":1}");
        assert_eq!(
            parse_frame(&buf[..buf.len() - 1], true),
            Err(FrameError::Incomplete)
        );
        let last = buf.len() - 1;
        buf[last] ^= 1;
        assert_eq!(parse_frame(&buf, true), Err(FrameError::BadChecksum));
    }

    #[test]
    fn headers_and_meta() {
        let h = encode_log_header(CHANGES_MAGIC, 100);
        assert_eq!(decode_log_header(CHANGES_MAGIC, &h), Ok(100));
        assert!(decode_log_header(SNAPSHOT_MAGIC, &h).is_err());
        let m = encode_meta(b"hello");
        assert_eq!(decode_meta(&m).as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_meta(&m[..m.len() - 1]), None);
    }
}
