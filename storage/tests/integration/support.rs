//! Test helpers: store fixtures and result unpacking.

use std::time::{Duration, Instant};

use shapesync_storage::{
    FileStore, LogOffset, MemoryStore, ReadResult, ShapeLog, ShapeLogStore, StoreConfig,
};

/// A store plus whatever keeps its backing alive.
pub struct Fixture {
    pub store: Box<dyn ShapeLogStore>,
    pub _dir: Option<tempfile::TempDir>,
}

pub fn cfg(threshold: u64) -> StoreConfig {
    StoreConfig {
        chunk_bytes_threshold: threshold,
    }
}

pub fn memory(threshold: u64) -> Fixture {
    Fixture {
        store: Box::new(MemoryStore::new(cfg(threshold))),
        _dir: None,
    }
}

pub fn file(threshold: u64) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path(), cfg(threshold)).expect("open store");
    Fixture {
        store: Box::new(store),
        _dir: Some(dir),
    }
}

/// A JSON object of exactly `len` bytes labelled `i` (len >= 20).
pub fn entry(i: usize, len: usize) -> Vec<u8> {
    let head = format!("{{\"i\":{i},\"p\":\"");
    let pad = len - head.len() - 2;
    format!("{head}{}\"}}", "x".repeat(pad)).into_bytes()
}

/// Unwraps a `Chunk` into (entries as strings, end).
pub fn chunk(r: ReadResult) -> (Vec<String>, LogOffset) {
    match r {
        ReadResult::Chunk { entries, end, .. } => (
            entries
                .iter()
                .map(|b| String::from_utf8(b.to_vec()).expect("utf8"))
                .collect(),
            end,
        ),
        ReadResult::NotReady => panic!("expected a chunk, got NotReady"),
    }
}

pub fn read(log: &dyn ShapeLog, after: &str) -> (Vec<String>, LogOffset) {
    chunk(log.read(after.parse().expect("offset")).expect("read"))
}

/// Every entry of a log after `after` (`-1`: from the start), read chunk by chunk.
pub fn entries_after(log: &dyn ShapeLog, after: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = after.to_owned();
    loop {
        let (entries, end) = read(log, &at);
        if entries.is_empty() && end.to_string() == at {
            return out;
        }
        out.extend(entries);
        at = end.to_string();
    }
}

pub fn s(json: &[u8]) -> String {
    String::from_utf8(json.to_vec()).expect("utf8")
}

pub fn off(text: &str) -> LogOffset {
    text.parse().expect("offset")
}

/// Polls `cond` until true or the deadline passes (panics then).
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}
