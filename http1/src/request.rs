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

/// Parse a request head. A head longer than [`MAX_HEAD`] is refused (431) even when it arrived
/// whole, and so is a head with a line ended by a bare LF (400): RFC 9112 §2.2 lets a recipient
/// accept one, but a proxy in front that reads it otherwise could frame the request otherwise.
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
    if len > MAX_HEAD {
        return Err(Reject {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            why: "request head too large",
        });
    }
    if has_bare_lf(&bytes[..len]) {
        return Err(Reject::bad("bare LF in request head"));
    }
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

/// Is there an LF not preceded by CR?
fn has_bare_lf(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(i, b)| *b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
}

/// The request body's framing (RFC 9112 §6.3). Anything a proxy in front could frame
/// differently is refused (400, and the connection closes): `Transfer-Encoding` together with
/// `Content-Length`, or in an HTTP/1.0 request (§6.1); a transfer coding list that is not just
/// `chunked` (one whose final coding is not chunked cannot be framed; gzip and the like are not
/// implemented); more than one `Content-Length` (even equal ones, or a list); a length that is
/// not all digits.
pub(crate) fn body_length(head: &Head) -> Result<BodyLength, Reject> {
    let headers = &head.headers;
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if head.version != Version::HTTP_11 {
            return Err(Reject::bad("transfer-encoding in an HTTP/1.0 request"));
        }
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err(Reject::bad("both transfer-encoding and content-length"));
        }
        let mut codings = Vec::new();
        for v in headers.get_all(header::TRANSFER_ENCODING) {
            let v = v
                .to_str()
                .map_err(|_| Reject::bad("invalid transfer-encoding"))?;
            // Empty list elements are allowed (RFC 9110 §5.6.1) and ignored.
            codings.extend(
                v.split(',')
                    .map(|t| t.trim_matches([' ', '\t']))
                    .filter(|t| !t.is_empty()),
            );
        }
        return match codings[..] {
            [only] if only.eq_ignore_ascii_case("chunked") => Ok(BodyLength::Chunked),
            _ => Err(Reject::bad("unsupported transfer-encoding")),
        };
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(value) = lengths.next() else {
        return Ok(BodyLength::Fixed(0));
    };
    if lengths.next().is_some() {
        return Err(Reject::bad("more than one content-length"));
    }
    let digits = value.as_bytes();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Reject::bad("invalid content-length"));
    }
    // All digits: a value that does not fit is too large, not invalid.
    let n = digits.iter().try_fold(0usize, |n, d| {
        n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    });
    Ok(BodyLength::Fixed(n.unwrap_or(usize::MAX)))
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A field value's bytes (RFC 9110 §5.5: visible ASCII, obs-text, space and tab; no CR, LF or
/// NUL).
fn is_field_vchar(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// Bytes past `s` that are space or tab (BWS).
fn skip_bws(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
    &s[n..]
}

fn token_len(s: &[u8]) -> usize {
    s.iter().take_while(|b| is_tchar(**b)).count()
}

/// The rest after a quoted-string at the start of `s` (RFC 9110 §5.6.4).
fn after_quoted_string(s: &[u8]) -> Option<&[u8]> {
    let mut i = 1;
    if s.first() != Some(&b'"') {
        return None;
    }
    loop {
        match *s.get(i)? {
            b'"' => return Some(&s[i + 1..]),
            b'\\' => {
                let escaped = *s.get(i + 1)?;
                if !is_field_vchar(escaped) {
                    return None;
                }
                i += 2;
            }
            b if is_field_vchar(b) => i += 1,
            _ => return None,
        }
    }
}

/// Chunk extensions (RFC 9112 §7.1.1): `*( BWS ";" BWS name [ BWS "=" BWS value ] )`, the name
/// a token and the value a token or quoted-string. They are not used, but one that is not of
/// this form makes the line malformed: a proxy in front could read the line otherwise.
fn chunk_extensions_ok(mut s: &[u8]) -> bool {
    while !s.is_empty() {
        let Some(rest) = skip_bws(s).strip_prefix(b";") else {
            return false;
        };
        let rest = skip_bws(rest);
        let name = token_len(rest);
        if name == 0 {
            return false;
        }
        s = &rest[name..];
        if let Some(value) = skip_bws(s).strip_prefix(b"=") {
            let value = skip_bws(value);
            s = if value.first() == Some(&b'"') {
                match after_quoted_string(value) {
                    Some(rest) => rest,
                    None => return false,
                }
            } else {
                let n = token_len(value);
                if n == 0 {
                    return false;
                }
                &value[n..]
            };
        }
    }
    true
}

/// The size of a chunk from its size line (without its CRLF): hexadecimal digits, then only
/// well-formed extensions (ignored); never more than `MAX_BODY` (a size that does not fit is
/// too large, not a wrap).
pub(crate) fn chunk_size(line: &[u8]) -> Result<usize, Reject> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || !chunk_extensions_ok(&line[digits..]) {
        return Err(Reject::bad("malformed chunked body"));
    }
    let size = line[..digits].iter().try_fold(0usize, |n, d| {
        let d = char::from(*d).to_digit(16)? as usize;
        n.checked_mul(16)?.checked_add(d)
    });
    match size {
        Some(n) if n <= MAX_BODY => Ok(n),
        _ => Err(Reject {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            why: "request body too large",
        }),
    }
}

/// Is this trailer line (without its CRLF) a field line, `name ":" OWS value OWS`?
pub(crate) fn trailer_line_ok(line: &[u8]) -> bool {
    let name = token_len(line);
    name > 0 && line.get(name) == Some(&b':') && line[name + 1..].iter().all(|b| is_field_vchar(*b))
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

        for (headers, want) in [
            ("", Ok(BodyLength::Fixed(0))),
            ("Content-Length: 12\r\n", Ok(BodyLength::Fixed(12))),
            ("Content-Length: 007\r\n", Ok(BodyLength::Fixed(7))),
            ("Transfer-Encoding: chunked\r\n", Ok(BodyLength::Chunked)),
            ("Transfer-Encoding: Chunked \r\n", Ok(BodyLength::Chunked)),
            ("Transfer-Encoding: , chunked\r\n", Ok(BodyLength::Chunked)),
            (
                "Content-Length: 99999999999999999999999\r\n",
                Ok(BodyLength::Fixed(usize::MAX)),
            ),
        ] {
            let (head, _) = complete(format!("POST / HTTP/1.1\r\n{headers}\r\n").as_bytes());
            assert_eq!(body_length(&head), want, "{headers:?}");
        }
    }

    /// Every framing a proxy in front could read otherwise is refused with 400 (RFC 9112 §6).
    #[test]
    fn ambiguous_body_framing_is_refused() {
        for (version, headers) in [
            ("1.1", "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"),
            ("1.1", "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"),
            ("1.1", "Content-Length: 3\r\nContent-Length: 4\r\n"),
            ("1.1", "Content-Length: 3\r\nContent-Length: 3\r\n"),
            ("1.1", "Content-Length: 3, 3\r\n"),
            ("1.1", "Content-Length: 3, 4\r\n"),
            ("1.1", "Content-Length: +3\r\n"),
            ("1.1", "Content-Length: -1\r\n"),
            ("1.1", "Content-Length: 0x10\r\n"),
            ("1.1", "Content-Length: 1 0\r\n"),
            ("1.1", "Content-Length: \r\n"),
            ("1.1", "Transfer-Encoding: gzip\r\n"),
            ("1.1", "Transfer-Encoding: xchunked\r\n"),
            ("1.1", "Transfer-Encoding: chunked, gzip\r\n"),
            ("1.1", "Transfer-Encoding: gzip, chunked\r\n"),
            ("1.1", "Transfer-Encoding: chunked, chunked\r\n"),
            ("1.1", "Transfer-Encoding: chunked;q=1\r\n"),
            ("1.1", "Transfer-Encoding: \r\n"),
            // Only the first line says chunked: the list is `chunked, gzip`.
            (
                "1.1",
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
            ),
            (
                "1.1",
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            ),
            ("1.0", "Transfer-Encoding: chunked\r\n"),
        ] {
            let (head, _) = complete(format!("POST / HTTP/{version}\r\n{headers}\r\n").as_bytes());
            assert_eq!(
                body_length(&head).map_err(|r| r.status),
                Err(StatusCode::BAD_REQUEST),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn heads_with_bare_lf_or_obs_fold_are_refused() {
        for head in [
            &b"GET / HTTP/1.1\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\n",
            b"GET / HTTP/1.1\n\n",
            b"\nGET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: 1\r\n 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: 1\r\n\t2\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: 1\rX-B: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A : 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: 1\x002\r\n\r\n",
        ] {
            assert_eq!(
                parse_head(head).map(|_| ()).map_err(|r| r.status),
                Err(StatusCode::BAD_REQUEST),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        // One empty line before the request line is allowed (RFC 9112 §2.2).
        let (head, _) = complete(b"\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!(head.method, Method::GET);
    }

    #[test]
    fn a_head_longer_than_the_limit_is_refused_even_when_it_arrived_whole() {
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        while big.len() <= MAX_HEAD {
            big.extend_from_slice(b"X-Filler: ");
            big.extend(std::iter::repeat_n(b'a', 1000));
            big.extend_from_slice(b"\r\n");
        }
        big.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_head(&big).map(|_| ()).map_err(|r| r.status),
            Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
    }

    #[test]
    fn chunk_sizes_are_strict_and_never_wrap() {
        assert_eq!(chunk_size(b"1a"), Ok(26));
        assert_eq!(chunk_size(b"0;ext=1"), Ok(0));
        assert_eq!(chunk_size(b"0000A"), Ok(10));
        assert_eq!(chunk_size(b"5 ; a = 1 ;b;c=\"x\\\"; y\""), Ok(5));
        for bad in [
            &b""[..],
            b"x",
            b"-1",
            b"+1",
            b"1 2",
            b"0x10",
            b" 1",
            b"1 ",
            b"1\t",
            b"1;",
            b"1;=x",
            b"1;a=",
            b"1;a b",
            b"1;a=\"x",
            b"1;a=\"x\"y",
            b"1;a=x y",
            b"1;a\rb",
            b"1;a\nb",
            b"1\n",
            b"1;a=\"\x00\"",
            "\u{3000}1".as_bytes(),
            "1\u{3000}".as_bytes(),
        ] {
            assert_eq!(
                chunk_size(bad).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad:?}"
            );
        }
        for huge in [
            &b"ffffffffffffffff"[..],
            b"fffffffffffffffff",
            b"10000000000000000000",
            b"900000",
            b"ffffffffffffffff;a=b",
        ] {
            assert_eq!(
                chunk_size(huge).unwrap_err().status,
                StatusCode::PAYLOAD_TOO_LARGE
            );
        }
    }

    #[test]
    fn trailer_lines_must_be_field_lines() {
        for ok in [&b"X-A: 1"[..], b"x:", b"X-A:\t1 2\t", b"X: \xff"] {
            assert!(trailer_line_ok(ok), "{ok:?}");
        }
        for bad in [
            &b": 1"[..],
            b"X-A",
            b"X-A : 1",
            b" X-A: 1",
            b"\tX-A: 1",
            b"X-A: 1\r2",
            b"X-A: 1\n2",
            b"X-A: \x00",
            b"GET / HTTP/1.1",
        ] {
            assert!(!trailer_line_ok(bad), "{bad:?}");
        }
    }
}
