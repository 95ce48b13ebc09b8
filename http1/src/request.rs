//! Reading a request (pure parts): the head (`httparse`), the body's framing (RFC 9112 §6.3, with
//! the smuggling guards: `Transfer-Encoding` with `Content-Length`, conflicting lengths), keep-
//! alive, the request id. Incomplete input is a [`Parsed::Partial`], never an error.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};

/// Largest request head (request line and headers).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// Largest request body (shape and admin bodies are small; handlers set tighter limits).
pub(crate) const MAX_BODY: usize = 8 << 20;

/// Why a request could not be read: answered with this status, then the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reject {
    pub status: StatusCode,
    pub why: &'static str,
}

impl Reject {
    pub(crate) fn bad(why: &'static str) -> Self {
        Reject {
            status: StatusCode::BAD_REQUEST,
            why,
        }
    }
}

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct Head {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
}

/// The outcome of parsing what has arrived so far.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // short-lived, on the stack of the one reading it
pub(crate) enum Parsed {
    /// The head, and its length in bytes.
    Complete(Head, usize),
    /// More bytes are needed.
    Partial,
}

/// How the request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyLength {
    Fixed(usize),
    Chunked,
}

/// Parse a request head.
pub(crate) fn parse_head(bytes: &[u8]) -> Result<Parsed, Reject> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Reject {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                why: "too many headers",
            })
        }
        Err(_) => return Err(Reject::bad("malformed request")),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or("").as_bytes())
        .map_err(|_| Reject::bad("invalid method"))?;
    let uri: Uri = parsed
        .path
        .unwrap_or("")
        .parse()
        .map_err(|_| Reject::bad("invalid request target"))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut map = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Reject::bad("invalid header"))?;
        let value =
            HeaderValue::from_bytes(h.value).map_err(|_| Reject::bad("invalid header value"))?;
        map.append(name, value);
    }
    Ok(Parsed::Complete(
        Head {
            method,
            uri,
            version,
            headers: map,
        },
        len,
    ))
}

/// The request body's framing (RFC 9112 §6.3).
pub(crate) fn body_length(headers: &HeaderMap) -> Result<BodyLength, Reject> {
    if let Some(te) = headers.get(header::TRANSFER_ENCODING) {
        let last = te
            .to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .map(|t| t.trim().to_ascii_lowercase());
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err(Reject::bad("both transfer-encoding and content-length"));
        }
        return match last.as_deref() {
            Some("chunked") => Ok(BodyLength::Chunked),
            _ => Err(Reject {
                status: StatusCode::NOT_IMPLEMENTED,
                why: "unsupported transfer-encoding",
            }),
        };
    }
    let mut length: Option<usize> = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v
            .to_str()
            .map_err(|_| Reject::bad("invalid content-length"))?
            .split(',')
        {
            let n: usize = part
                .trim()
                .parse()
                .map_err(|_| Reject::bad("invalid content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Reject::bad("conflicting content-length"));
            }
            length = Some(n);
        }
    }
    Ok(BodyLength::Fixed(length.unwrap_or(0)))
}

/// The size of a chunk from its size line (extensions after `;` ignored): hexadecimal digits
/// only, and never more than `MAX_BODY` (a size that does not fit is too large, not a wrap).
pub(crate) fn chunk_size(line: &[u8]) -> Result<usize, Reject> {
    let text = line.split(|b| *b == b';').next().unwrap_or(&[]);
    let text = std::str::from_utf8(text)
        .map_err(|_| Reject::bad("malformed chunked body"))?
        .trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Reject::bad("malformed chunked body"));
    }
    match usize::from_str_radix(text, 16) {
        Ok(n) if n <= MAX_BODY => Ok(n),
        _ => Err(Reject {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            why: "request body too large",
        }),
    }
}

pub(crate) fn wants_keep_alive(head: &Head) -> bool {
    let tokens = |v: &HeaderValue| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .collect::<Vec<_>>()
    };
    let connection: Vec<String> = head
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(tokens)
        .collect();
    if connection.iter().any(|t| t == "close") {
        return false;
    }
    match head.version {
        Version::HTTP_11 => true,
        _ => connection.iter().any(|t| t == "keep-alive"),
    }
}

/// The client's `x-request-id` if usable (non-empty, at most 200 bytes), else a new random one.
pub fn client_request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get("x-request-id")
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&format!("{:032x}", rand::random::<u128>()))
                .unwrap_or_else(|_| HeaderValue::from_static("0"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(bytes: &[u8]) -> (Head, usize) {
        match parse_head(bytes) {
            Ok(Parsed::Complete(h, n)) => (h, n),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_heads_and_body_framing() {
        let (head, len) =
            complete(b"GET /v1/shape?table=t HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\nrest");
        assert_eq!(len, 59);
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.uri.query(), Some("table=t"));
        assert_eq!(head.headers.get_all("x-a").iter().count(), 2);
        assert!(wants_keep_alive(&head));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nHost"),
            Ok(Parsed::Partial)
        ));
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
        let (h10, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!wants_keep_alive(&h10));
        let (h10ka, _) = complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(wants_keep_alive(&h10ka));

        let mut h = HeaderMap::new();
        assert_eq!(body_length(&h), Ok(BodyLength::Fixed(0)));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert_eq!(body_length(&h), Ok(BodyLength::Fixed(12)));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("13"));
        assert!(body_length(&h).is_err(), "conflicting lengths");
        let mut h = HeaderMap::new();
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert_eq!(body_length(&h), Ok(BodyLength::Chunked));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        assert!(body_length(&h).is_err(), "smuggling guard");
        let mut h = HeaderMap::new();
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        assert!(body_length(&h).is_err());
    }

    #[test]
    fn chunk_sizes_are_strict_and_never_wrap() {
        assert_eq!(chunk_size(b"1a"), Ok(26));
        assert_eq!(chunk_size(b"0;ext=1"), Ok(0));
        for bad in [&b""[..], b"x", b"-1", b"+1", b"1 2", b"0x10"] {
            assert_eq!(
                chunk_size(bad).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad:?}"
            );
        }
        for huge in [&b"ffffffffffffffff"[..], b"10000000000000000000", b"900000"] {
            assert_eq!(
                chunk_size(huge).unwrap_err().status,
                StatusCode::PAYLOAD_TOO_LARGE
            );
        }
    }
}
