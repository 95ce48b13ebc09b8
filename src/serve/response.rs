//! Response metadata rules (pure): cache directives, ETags, `If-None-Match`, and the
//! `electric-cursor` algorithm (protocol.md §5).

/// Cache lifetimes for non-live responses.
#[derive(Debug, Clone, Copy)]
pub struct CacheAges {
    pub max_age: u32,
    pub stale_age: u32,
}

impl Default for CacheAges {
    fn default() -> Self {
        CacheAges {
            max_age: 60,
            stale_age: 300,
        }
    }
}

/// What kind of 200 response this is, for `cache-control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheKind {
    Initial,
    Live,
    LiveSse { sse_timeout_secs: u32 },
    Catchup,
}

pub fn cache_control(kind: CacheKind, ages: CacheAges) -> std::borrow::Cow<'static, str> {
    match kind {
        CacheKind::Initial => {
            "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746".into()
        }
        CacheKind::Live => "public, max-age=5, stale-while-revalidate=5".into(),
        CacheKind::LiveSse { sse_timeout_secs } => {
            format!("public, max-age={}", sse_timeout_secs.saturating_sub(1)).into()
        }
        CacheKind::Catchup => format!(
            "public, max-age={}, stale-while-revalidate={}",
            ages.max_age, ages.stale_age
        )
        .into(),
    }
}

/// What a response's body is, beyond (handle, requested offset, chunk end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The chunk as it was written.
    Stored,
    /// The chunk's compacted form: another body for the same URL, so another tag.
    Compacted,
    /// An empty answer (`offset=now`, a live timeout): unique each time.
    Unique(u128),
}

/// `"<handle>:<requested offset>:<chunk end>"`, plus `:c` for a compacted chunk or a unique
/// suffix for empty answers.
pub fn etag(handle: &str, requested: &str, end: &str, variant: Variant) -> String {
    match variant {
        Variant::Stored => format!("\"{handle}:{requested}:{end}\""),
        Variant::Compacted => format!("\"{handle}:{requested}:{end}:c\""),
        Variant::Unique(n) => format!("\"{handle}:{requested}:{end}:{n}\""),
    }
}

/// Does an `If-None-Match` header name this ETag? (Values split on `,`, trimmed, quotes
/// stripped; `W/` is not special, as in the reference.)
pub fn if_none_match(header: &str, etag: &str) -> bool {
    let want = etag.trim_matches('"');
    header
        .split(',')
        .map(|v| v.trim().trim_matches('"'))
        .any(|v| v == want)
}

/// Seconds since 2024-10-09T00:00:00Z, the cursor epoch.
const CURSOR_EPOCH: u64 = 1_728_432_000;

/// The next `electric-cursor`: the end of the current long-poll interval since the epoch, or,
/// if that is not larger than the client's cursor, the client's plus a random 1..=3600.
pub fn next_cursor(
    now_unix_secs: u64,
    interval_secs: u64,
    client: Option<&str>,
    jitter: u64,
) -> u64 {
    if interval_secs == 0 {
        return 0;
    }
    let since = now_unix_secs.saturating_sub(CURSOR_EPOCH);
    let cursor = since.div_ceil(interval_secs) * interval_secs;
    let client: u64 = client.and_then(|c| c.parse().ok()).unwrap_or(0);
    if cursor <= client {
        client + jitter.clamp(1, 3600)
    } else {
        cursor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_matrix() {
        let a = CacheAges::default();
        assert_eq!(
            cache_control(CacheKind::Initial, a),
            "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"
        );
        assert_eq!(
            cache_control(CacheKind::Live, a),
            "public, max-age=5, stale-while-revalidate=5"
        );
        assert_eq!(
            cache_control(
                CacheKind::LiveSse {
                    sse_timeout_secs: 60
                },
                a
            ),
            "public, max-age=59"
        );
        assert_eq!(
            cache_control(
                CacheKind::Catchup,
                CacheAges {
                    max_age: 1,
                    stale_age: 3
                }
            ),
            "public, max-age=1, stale-while-revalidate=3"
        );
    }

    #[test]
    fn etags_and_revalidation() {
        let e = etag("h", "0_0", "12_4", Variant::Stored);
        assert_eq!(e, "\"h:0_0:12_4\"");
        assert!(if_none_match("\"x\", \"h:0_0:12_4\"", &e));
        assert!(if_none_match("h:0_0:12_4", &e));
        assert!(!if_none_match("\"h:0_0:12_5\"", &e));
        assert_eq!(
            etag("h", "1_0", "1_0", Variant::Unique(7)),
            "\"h:1_0:1_0:7\""
        );
        assert_eq!(
            etag("h", "1_0", "2_0", Variant::Compacted),
            "\"h:1_0:2_0:c\""
        );
    }

    #[test]
    fn cursor_algorithm() {
        let now = CURSOR_EPOCH + 45;
        assert_eq!(next_cursor(now, 20, None, 5), 60);
        assert_eq!(next_cursor(now, 20, Some("junk"), 5), 60);
        assert_eq!(next_cursor(now, 20, Some("60"), 5), 65);
        assert_eq!(next_cursor(now, 20, Some("100"), 0), 101);
        assert_eq!(next_cursor(now, 0, None, 5), 0);
        assert_eq!(next_cursor(CURSOR_EPOCH + 40, 20, None, 5), 40);
    }
}

/// Where an answer's headers are written: a `HeaderMap` (answers through the router) or the
/// bytes of a head held ready (a parked request's direct reply, `shapesync_http1::Ready`), so
/// both are written by the same code.
pub trait HeaderOut {
    /// Set `name` (lowercase, static) to `value`. A value that is not a valid header value
    /// (a control character) is written empty, never as is.
    fn put(&mut self, name: &'static str, value: &[u8]);
}

impl HeaderOut for axum::http::HeaderMap {
    fn put(&mut self, name: &'static str, value: &[u8]) {
        use axum::http::{HeaderName, HeaderValue};
        let value = HeaderValue::from_bytes(value).unwrap_or_else(|_| HeaderValue::from_static(""));
        self.insert(HeaderName::from_static(name), value);
    }
}

/// A response head as bytes: the status line, then one line per header (each name once: the
/// writers put a name at most once).
pub struct HeadBytes(Vec<u8>);

impl HeadBytes {
    pub fn new(status: axum::http::StatusCode) -> Self {
        let mut v = Vec::with_capacity(640);
        v.extend_from_slice(b"HTTP/1.1 ");
        v.extend_from_slice(status.as_str().as_bytes());
        v.push(b' ');
        v.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        v.extend_from_slice(b"\r\n");
        HeadBytes(v)
    }

    pub fn finish(self) -> bytes::Bytes {
        self.0.into()
    }
}

/// Is `value` a valid header value? (`HeaderValue`'s rule: visible ASCII, space, tab and
/// obs-text; no control character.)
fn valid_value(value: &[u8]) -> bool {
    value.iter().all(|&b| (b >= 32 && b != 127) || b == b'\t')
}

impl HeadBytes {
    /// One header line (a name of any lifetime: copying a `HeaderMap` in).
    pub fn line(&mut self, name: &str, value: &[u8]) {
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b": ");
        if valid_value(value) {
            self.0.extend_from_slice(value);
        }
        self.0.extend_from_slice(b"\r\n");
    }
}

impl HeaderOut for HeadBytes {
    fn put(&mut self, name: &'static str, value: &[u8]) {
        self.line(name, value);
    }
}

#[cfg(test)]
mod head_tests {
    use super::*;

    #[test]
    fn a_head_never_carries_a_control_character() {
        let mut h = HeadBytes::new(axum::http::StatusCode::OK);
        h.put("electric-handle", b"abc");
        h.put("electric-schema", b"{\"a\r\nset-cookie: x\":1}");
        let mut map = axum::http::HeaderMap::new();
        map.put("electric-schema", b"{\"a\r\nset-cookie: x\":1}");
        assert_eq!(
            &h.finish()[..],
            b"HTTP/1.1 200 OK\r\nelectric-handle: abc\r\nelectric-schema: \r\n"
        );
        assert_eq!(map.get("electric-schema").unwrap(), "");
        for b in 0..=255u8 {
            let v = [b'a', b, b'z'];
            assert_eq!(
                valid_value(&v),
                axum::http::HeaderValue::from_bytes(&v).is_ok(),
                "byte {b}"
            );
        }
    }
}
