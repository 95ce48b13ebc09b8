//! Ready answers for repeated shape requests whose answer cannot change (target P9): a sealed
//! snapshot chunk (`offset=-1`, `0_k`) of an active shape is the same bytes for as long as the
//! shape lives. The second time a request for one is answered, its response (the head as
//! written, less the per-request headers, and the body) is kept; later identical requests are
//! answered by the HTTP server from here, before the router ([`shapesync_http1::Shortcut`]):
//! no query parsing, authentication, shape lookup, log read or header building.
//!
//! What makes two requests identical: the same target (path and query, byte for byte: the
//! database id, secret, where clause, columns and offset are all in it) and the same `Origin`
//! (echoed by CORS), and no other header that could change the answer: a request with a
//! credential header (`Authorization`, `X-API-Key`), `If-None-Match`, a cookie or any header
//! not known to be irrelevant goes through the router. Only full-access answers are kept
//! (none of a role's: those are private and checked against the role on every request).
//!
//! An answer is given only while its shape is active and its database's stack runs; a shape
//! deleted, rotated, evicted, archived or failed, or a database removed, ends it. Memory is
//! bounded: the bodies and heads together stay under a byte cap (a second-chance sweep drops
//! entries not asked for since the last sweep, and answers of shapes gone), and a request is
//! kept only when its target was seen before (a bitset of hashes, cleared as it fills), so
//! shapes requested once, the common case of thousands of idle shapes, cost nothing here.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use bytes::Bytes;
use dashmap::DashMap;
use shapesync_http1::Ready;

use super::response::HeadBytes;
use crate::shape::Shape;
use crate::stack::Stack;

/// Headers that do not change a shape answer (besides `Origin`, part of the key). A request
/// with any other header is not answered from here.
const IRRELEVANT: &[&str] = &[
    "host",
    "user-agent",
    "accept",
    "accept-encoding",
    "accept-language",
    "connection",
    "keep-alive",
    "x-request-id",
    "referer",
    "cache-control",
    "pragma",
    "dnt",
    "priority",
    "upgrade-insecure-requests",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
    "via",
    "traceparent",
    "tracestate",
];

/// Bits of the seen-before filter (128 KiB); cleared once a sixteenth are set.
const SEEN_BITS: usize = 1 << 20;

/// An answer kept, and what it is valid for.
struct Entry {
    /// The request's target and `Origin`, to tell hash collisions apart.
    target: Box<str>,
    origin: Option<HeaderValue>,
    shape: Weak<Shape>,
    stack: Weak<Stack>,
    ready: Ready,
    /// Asked for since the last sweep.
    hit: AtomicBool,
}

impl Entry {
    fn size(&self) -> usize {
        self.ready.head.len() + self.ready.body.len() + self.target.len() + 160
    }

    /// The shape, while the answer holds.
    fn live_shape(&self) -> Option<Arc<Shape>> {
        let shape = self.shape.upgrade()?;
        let stack = self.stack.upgrade()?;
        (shape.is_active() && !stack.is_stopped()).then_some(shape)
    }
}

/// The kept answers.
pub struct Memo {
    entries: DashMap<u64, Arc<Entry>>,
    bytes: AtomicUsize,
    cap: usize,
    hasher: std::hash::RandomState,
    seen: Box<[AtomicU64]>,
    seen_count: AtomicUsize,
    hits: AtomicU64,
}

impl Memo {
    /// Kept answers take at most `cap` bytes (0: none are kept).
    pub fn new(cap: usize) -> Self {
        Memo {
            entries: DashMap::new(),
            bytes: AtomicUsize::new(0),
            cap,
            hasher: std::hash::RandomState::new(),
            seen: if cap == 0 {
                Box::new([])
            } else {
                (0..SEEN_BITS / 64).map(|_| AtomicU64::new(0)).collect()
            },
            seen_count: AtomicUsize::new(0),
            hits: AtomicU64::new(0),
        }
    }

    /// Requests answered from here so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Answers held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn key(&self, target: &str, origin: Option<&HeaderValue>) -> u64 {
        self.hasher
            .hash_one((target, origin.map(HeaderValue::as_bytes)))
    }

    /// The kept answer to `GET target` with `headers`, and its shape.
    pub fn lookup(&self, uri: &Uri, headers: &HeaderMap) -> Option<(Ready, Arc<Shape>)> {
        if self.cap == 0 || uri.path() != "/v1/shape" {
            return None;
        }
        let origin = plain(headers)?;
        let target = uri.path_and_query()?.as_str();
        let key = self.key(target, origin);
        let entry = Arc::clone(self.entries.get(&key)?.value());
        if &*entry.target != target || entry.origin.as_ref() != origin {
            return None;
        }
        match entry.live_shape() {
            Some(shape) => {
                entry.hit.store(true, Ordering::Relaxed);
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some((entry.ready.clone(), shape))
            }
            None => {
                self.remove_if_same(key, &entry);
                None
            }
        }
    }

    /// Offer the answer just given to `GET target` (path and query) with `headers`: `status`,
    /// `headers_out` (as the handler set them) and `body`. Kept if the same request was seen
    /// before and it fits.
    #[allow(clippy::too_many_arguments)]
    pub fn offer(
        &self,
        target: &str,
        headers: &HeaderMap,
        shape: &Arc<Shape>,
        stack: &Arc<Stack>,
        status: StatusCode,
        headers_out: &HeaderMap,
        body: &Bytes,
    ) {
        if self.cap == 0 || status != StatusCode::OK {
            return;
        }
        let Some(origin) = plain(headers) else {
            return;
        };
        let key = self.key(target, origin);
        if !self.seen_before(key) || body.len() > self.cap / 8 {
            return;
        }
        if let Some(e) = self.entries.get(&key) {
            if &*e.target == target && e.origin.as_ref() == origin && e.live_shape().is_some() {
                return;
            }
        }
        // The handler's headers (a data answer never sets the per-request ones), then those
        // every answer gets, as the router's middleware adds them.
        let mut head = HeadBytes::new(StatusCode::OK);
        for (name, value) in headers_out {
            head.line(name.as_str(), value.as_bytes());
        }
        super::common_headers_to(&mut head, origin.map(HeaderValue::as_bytes), "/v1/shape");
        let entry = Arc::new(Entry {
            target: target.into(),
            origin: origin.cloned(),
            shape: Arc::downgrade(shape),
            stack: Arc::downgrade(stack),
            ready: Ready {
                head: head.finish(),
                body: body.clone(),
            },
            hit: AtomicBool::new(false),
        });
        let size = entry.size();
        if self.bytes.load(Ordering::Relaxed) + size > self.cap {
            self.sweep();
            if self.bytes.load(Ordering::Relaxed) + size > self.cap {
                return;
            }
        }
        self.bytes.fetch_add(size, Ordering::Relaxed);
        if let Some(old) = self.entries.insert(key, entry) {
            self.bytes.fetch_sub(old.size(), Ordering::Relaxed);
        }
    }

    /// Was `key` seen before? Marks it seen.
    fn seen_before(&self, key: u64) -> bool {
        let bit = (key as usize) % SEEN_BITS;
        let (word, mask) = (&self.seen[bit / 64], 1u64 << (bit % 64));
        if word.fetch_or(mask, Ordering::Relaxed) & mask != 0 {
            return true;
        }
        if self.seen_count.fetch_add(1, Ordering::Relaxed) + 1 >= SEEN_BITS / 16 {
            self.seen_count.store(0, Ordering::Relaxed);
            for w in self.seen.iter() {
                w.store(0, Ordering::Relaxed);
            }
        }
        false
    }

    /// Drop answers whose shape is gone and those not asked for since the last sweep.
    fn sweep(&self) {
        let mut freed = 0;
        self.entries.retain(|_, e| {
            let keep = e.hit.swap(false, Ordering::Relaxed) && e.live_shape().is_some();
            if !keep {
                freed += e.size();
            }
            keep
        });
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
    }

    fn remove_if_same(&self, key: u64, entry: &Arc<Entry>) {
        if let Some((_, e)) = self.entries.remove_if(&key, |_, e| Arc::ptr_eq(e, entry)) {
            self.bytes.fetch_sub(e.size(), Ordering::Relaxed);
        }
    }
}

/// The request's `Origin` (`Some(None)`: none) if every other header it has is irrelevant to a
/// shape answer; `None` if one may matter.
fn plain(headers: &HeaderMap) -> Option<Option<&HeaderValue>> {
    let mut origin = None;
    for (name, value) in headers {
        let n = name.as_str();
        if n == "origin" {
            if origin.is_some() {
                return None;
            }
            origin = Some(value);
        } else if !(IRRELEVANT.contains(&n) || n.starts_with("sec-")) {
            return None;
        }
    }
    Some(origin)
}

/// The HTTP server's way in: kept answers, counted in the request metrics, their shapes
/// marked as used (retention and eviction see them).
pub struct Shortcut(pub Arc<super::AppState>);

impl shapesync_http1::Shortcut for Shortcut {
    fn answer(&self, uri: &Uri, headers: &HeaderMap) -> Option<Ready> {
        let started = std::time::Instant::now();
        let (ready, shape) = self.0.memo.lookup(uri, headers)?;
        shape.touch();
        self.0.metrics.record("shape", 200, started.elapsed());
        Some(ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_requests_without_a_header_that_matters_qualify() {
        assert_eq!(
            plain(&headers(&[("host", "x"), ("accept", "*/*")])),
            Some(None)
        );
        let o = headers(&[("origin", "https://app"), ("sec-fetch-mode", "cors")]);
        assert_eq!(
            plain(&o).map(|o| o.map(|v| v.as_bytes().to_vec())),
            Some(Some(b"https://app".to_vec()))
        );
        for h in [
            "authorization",
            "x-api-key",
            "if-none-match",
            "cookie",
            "x-something",
        ] {
            assert_eq!(plain(&headers(&[("host", "x"), (h, "v")])), None, "{h}");
        }
        assert_eq!(
            plain(&headers(&[("origin", "a"), ("origin", "b")])),
            None,
            "two origins"
        );
    }

    #[test]
    fn a_target_qualifies_the_second_time_it_is_seen() {
        let m = Memo::new(1 << 20);
        let k = m.key("/v1/shape?table=t&offset=-1", None);
        assert!(!m.seen_before(k));
        assert!(m.seen_before(k));
        let other = m.key(
            "/v1/shape?table=t&offset=-1",
            Some(&HeaderValue::from_static("o")),
        );
        assert_ne!(k, other);
    }

    #[test]
    fn the_seen_filter_clears_as_it_fills() {
        let m = Memo::new(1 << 20);
        for i in 0..(SEEN_BITS / 16 - 1) as u64 {
            m.seen_before(i);
        }
        assert!(m.seen_before(0));
        m.seen_before(SEEN_BITS as u64 - 1);
        assert!(!m.seen_before(0), "cleared");
    }

    #[test]
    fn nothing_is_kept_without_a_cap() {
        let m = Memo::new(0);
        let uri: Uri = "/v1/shape?table=t&offset=-1".parse().unwrap();
        assert!(m.lookup(&uri, &HeaderMap::new()).is_none());
        assert!(m.is_empty());
    }
}
