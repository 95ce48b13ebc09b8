//! Fuzzing the server, in the normal test run, on a time budget: random and mutated request
//! bytes (valid pipelines, then targeted ambiguous framings and random byte mutations), written
//! with random split points into the real server over in-memory streams.
//!
//! - `fuzz_server` checks the server alone: no panic (in any of its tasks), every connection
//!   ends, every request the router saw is answered with its own echo in order, a refusal is a
//!   single last `400/408/413/431` with `connection: close`, a valid pipeline is passed on whole,
//!   and an ambiguous framing (RFC 9112 §6: request smuggling) is refused with its status and no
//!   byte after it reaches the router.
//! - `differential_against_hyper` runs the same bytes (same split points) through hyper's
//!   server too: every request we pass to the router, hyper passed on too, identically (method,
//!   target, version, headers in order, body) and in the same position; when hyper passed on
//!   more than we did, we refused the next one with a 4xx for one of the documented reasons we
//!   are stricter than hyper ([`STRICTER_THAN_HYPER`]).
//!
//! Environment: `HTTP1_FUZZ_SECS` (total budget, default 15 s, split between the two fuzz
//! tests, which run in parallel), `HTTP1_FUZZ_SEED` (else random; printed at start and in
//! every failure), `HTTP1_FUZZ_CASE` (run that one case of the seed only). Replay a failure
//! with e.g. `HTTP1_FUZZ_SEED=123 HTTP1_FUZZ_CASE=45 cargo test -p shapesync-http1 --test fuzz`.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, Uri, Version};
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shapesync_http1::{Http1, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;

/// Virtual time (the clock is paused) after which a connection that has not ended hangs.
const HANG: Duration = Duration::from_secs(3600);
/// What the server may answer itself when it cannot read a request.
const REFUSALS: [u16; 4] = [400, 408, 413, 431];

/// Intentional differences: requests hyper passes on that we refuse (with 4xx), by the reason
/// in our refusal's body.
const STRICTER_THAN_HYPER: &[(&str, &str)] = &[
    (
        "bare LF in request head",
        "RFC 9112 §2.2 lets a recipient accept a bare LF as a line end (httparse, so hyper, does); \
         a proxy in front that does not could frame the request otherwise",
    ),
    (
        "more than one content-length",
        "hyper accepts repeated equal lengths (and keeps one line); RFC 9110 §8.6 lets us refuse",
    ),
    (
        "both transfer-encoding and content-length",
        "hyper reads such a request as chunked (dropping the length, RFC 9112 §6.3 allows it); \
         we refuse it: it is the classic smuggling shape",
    ),
    (
        "unsupported transfer-encoding",
        "hyper accepts any coding list ending in chunked (`gzip, chunked`) and passes the coded \
         bytes on; we implement no coding but chunked, and refuse `chunked, chunked`",
    ),
    (
        "malformed trailer",
        "hyper reads a trailer section up to the first CRLF CRLF and hands it to httparse, so a \
         trailer line with a bare LF passes (and the bytes after such a line, up to the next empty \
         line, are taken as trailers: a following request's head disappears); we want every \
         trailer line CRLF-ended and of field-line form",
    ),
    (
        "malformed chunked body",
        "hyper skips any bytes after a chunk size up to CR (and whitespace after the size); we \
         want chunk extensions of RFC 9112 §7.1.1's form and no whitespace but before `;`",
    ),
];

// ---------------------------------------------------------------------------------------------
// Configuration, seeds, panics

struct Config {
    seed: u64,
    budget: Duration,
    only_case: Option<u64>,
}

fn env_number(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v}: not a number")))
}

/// The seed, this test's share of the budget, and the one case to run if asked.
fn config(test: &str, share: f64) -> Config {
    let seed = env_number("HTTP1_FUZZ_SEED").unwrap_or_else(rand::random);
    let secs: f64 = std::env::var("HTTP1_FUZZ_SECS")
        .ok()
        .map(|s| s.trim().parse().expect("HTTP1_FUZZ_SECS: seconds"))
        .unwrap_or(15.0);
    let budget = Duration::from_secs_f64(secs * share);
    let only_case = env_number("HTTP1_FUZZ_CASE");
    eprintln!(
        "{test}: replay with HTTP1_FUZZ_SEED={seed} (budget {:.1} s; one case: HTTP1_FUZZ_CASE=<n>)",
        budget.as_secs_f64()
    );
    Config {
        seed,
        budget,
        only_case,
    }
}

/// The cases to run: every case until the budget is spent, or the one asked for.
fn cases(config: &Config) -> impl Iterator<Item = u64> + '_ {
    let started = Instant::now();
    let range = match config.only_case {
        Some(c) => c..c + 1,
        None => 0..u64::MAX,
    };
    range.take_while(move |c| {
        config.only_case.is_some() || *c == 0 || started.elapsed() < config.budget
    })
}

/// A case's own random source: the same seed and case number give the same case.
fn case_rng(seed: u64, salt: u64, case: u64) -> StdRng {
    StdRng::seed_from_u64(
        seed ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ case.wrapping_mul(0x9E37_79B9_7F4A_7C15),
    )
}

thread_local! {
    /// Panics on this thread. The tests run on a current-thread runtime, so every task the
    /// server spawns (connections, replays) runs, and would panic, on the test's thread.
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            previous(info);
        }));
    });
}

fn panics() -> usize {
    PANICS.with(|p| p.get())
}

// ---------------------------------------------------------------------------------------------
// What a server passed on

/// A request as a router (or hyper's service) saw it. `x-request-id` is left out: our server
/// sets it (the client's if usable, else a new one), hyper does not.
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, Bytes)>,
    body: Bytes,
}

impl View {
    fn new(method: &Method, uri: &Uri, version: Version, headers: &HeaderMap, body: Bytes) -> Self {
        View {
            method: method.to_string(),
            target: uri.to_string(),
            version: format!("{version:?}"),
            headers: headers
                .iter()
                .filter(|(n, _)| n.as_str() != "x-request-id")
                .map(|(n, v)| (n.as_str().to_string(), Bytes::copy_from_slice(v.as_bytes())))
                .collect(),
            body,
        }
    }

    /// What the echo router answers: the view itself.
    fn echo(&self) -> String {
        format!("{self:?}")
    }
}

type Log = Arc<Mutex<HashMap<u16, Vec<View>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every request goes to one handler that logs its view (by the peer's port: one per case) and
/// answers with it.
fn echo_router(log: Log) -> Router {
    Router::new().fallback(
        move |ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request<Body>| {
            let log = Arc::clone(&log);
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let view = View::new(
                    &parts.method,
                    &parts.uri,
                    parts.version,
                    &parts.headers,
                    body,
                );
                let echo = view.echo();
                lock(&log).entry(peer.port()).or_default().push(view);
                echo
            }
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Generating requests

const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: example.test\r\n\r\n";

/// One request: its wire bytes, and what a server should pass on if it is valid.
#[derive(Clone)]
struct Req {
    wire: Vec<u8>,
    expect: Option<View>,
}

/// A request from its parts; `expect` is filled in when it is valid.
struct Parts {
    method: &'static str,
    target: String,
    version: &'static str,
    headers: Vec<(String, Vec<u8>)>,
    body_wire: Vec<u8>,
    body: Vec<u8>,
}

impl Parts {
    fn head(&self) -> Vec<u8> {
        let mut out =
            format!("{} {} HTTP/{}\r\n", self.method, self.target, self.version).into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    fn valid(self) -> Req {
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            headers.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).expect("generated name"),
                axum::http::HeaderValue::from_bytes(value).expect("generated value"),
            );
        }
        let expect = View::new(
            &Method::from_bytes(self.method.as_bytes()).expect("generated method"),
            &self.target.parse().expect("generated target"),
            if self.version == "1.0" {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            },
            &headers,
            Bytes::from(self.body.clone()),
        );
        let mut wire = self.head();
        wire.extend_from_slice(&self.body_wire);
        Req {
            wire,
            expect: Some(expect),
        }
    }

    fn invalid(self) -> Req {
        let mut wire = self.head();
        wire.extend_from_slice(&self.body_wire);
        Req { wire, expect: None }
    }
}

fn pick<'a, T>(rng: &mut StdRng, from: &'a [T]) -> &'a T {
    &from[rng.random_range(0..from.len())]
}

/// A header name in random case.
fn name(rng: &mut StdRng, name: &str) -> String {
    match rng.random_range(0..4) {
        0 => name.to_ascii_lowercase(),
        1 => name.to_ascii_uppercase(),
        _ => name.to_string(),
    }
}

fn query_target(rng: &mut StdRng) -> String {
    let mut t = String::from("/v1/shape?table=items&offset=-1");
    for _ in 0..rng.random_range(0..3) {
        let v: u32 = rng.random_range(0..100_000);
        t.push_str(&format!(
            "&{}={v}",
            pick(rng, &["handle", "where", "x", "live"])
        ));
    }
    if rng.random_bool(0.2) {
        t.push_str("&where=id%20%3D%201");
    }
    t
}

/// A body: random bytes (CR, LF and pieces of framing included), sometimes a whole request.
fn body_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let mut body = Vec::new();
    let len = rng.random_range(0..=max);
    while body.len() < len {
        match rng.random_range(0..10) {
            0 => body.extend_from_slice(b"\r\n"),
            1 => body.extend_from_slice(b"0\r\n\r\n"),
            2 => body.push(rng.random()),
            _ => body.push(*pick(rng, b"abcxyz{}\":,0123456789 ")),
        }
    }
    if rng.random_bool(0.3) {
        body.extend_from_slice(SMUGGLED);
    }
    body
}

const VALID_EXTENSIONS: &[&str] = &[
    "",
    "",
    ";a",
    ";name=value",
    "; q=\"quoted ; \\\" string\"",
    ";a=1;b",
    " ;bws",
    ";a = b",
];

/// A chunked body's wire bytes and its decoded bytes.
fn chunked(rng: &mut StdRng) -> (Vec<u8>, Vec<u8>) {
    let (mut wire, mut body) = (Vec::new(), Vec::new());
    for _ in 0..rng.random_range(0..4) {
        let mut data = body_bytes(rng, 20);
        if data.is_empty() {
            data.push(b'x');
        }
        let size = match rng.random_range(0..4) {
            0 => format!("{:X}", data.len()),
            1 => format!("000{:x}", data.len()),
            _ => format!("{:x}", data.len()),
        };
        wire.extend_from_slice(size.as_bytes());
        wire.extend_from_slice(pick(rng, VALID_EXTENSIONS).as_bytes());
        wire.extend_from_slice(b"\r\n");
        wire.extend_from_slice(&data);
        wire.extend_from_slice(b"\r\n");
        body.extend_from_slice(&data);
    }
    wire.extend_from_slice(b"0");
    wire.extend_from_slice(pick(rng, VALID_EXTENSIONS).as_bytes());
    wire.extend_from_slice(b"\r\n");
    for i in 0..rng.random_range(0..3) {
        wire.extend_from_slice(format!("X-Trailer-{i}: t{i}\r\n").as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
    (wire, body)
}

/// A valid request; the last of a pipeline may close the connection.
fn valid_request(rng: &mut StdRng, last: bool) -> Req {
    let mut headers = vec![(name(rng, "Host"), b"example.test".to_vec())];
    if rng.random_bool(0.3) {
        headers.push((name(rng, "X-Request-Id"), b"req-1".to_vec()));
    }
    if rng.random_bool(0.3) {
        headers.push(("X-Dup".into(), b"a".to_vec()));
        headers.push(("Accept".into(), b"*/*".to_vec()));
        headers.push(("x-dup".into(), b"b, c".to_vec()));
    }
    if rng.random_bool(0.1) {
        headers.push(("X-Latin".into(), b"caf\xe9 \t tab".to_vec()));
    }
    let (method, target, version) = match rng.random_range(0..9) {
        0 | 1 => ("GET", query_target(rng), "1.1"),
        2 => ("HEAD", query_target(rng), "1.1"),
        3 => ("GET", "/v1/health".to_string(), "1.0"),
        4 => ("OPTIONS", "*".to_string(), "1.1"),
        5 => ("DELETE", "/v1/shape?table=items".to_string(), "1.1"),
        6 => ("PUT", "/admin/x".to_string(), "1.1"),
        _ => ("POST", query_target(rng), "1.1"),
    };
    let (mut body_wire, mut body) = (Vec::new(), Vec::new());
    let chunked_ok = version == "1.1";
    match (method, rng.random_range(0..4)) {
        ("GET" | "HEAD" | "OPTIONS", 0..=2) => {}
        (_, 0) if chunked_ok => {
            (body_wire, body) = chunked(rng);
            headers.push((name(rng, "Transfer-Encoding"), b"chunked".to_vec()));
        }
        _ => {
            body = body_bytes(rng, 40);
            body_wire = body.clone();
            headers.push((
                name(rng, "Content-Length"),
                body.len().to_string().into_bytes(),
            ));
        }
    }
    if !body_wire.is_empty() && version == "1.1" && rng.random_bool(0.3) {
        headers.push((name(rng, "Expect"), b"100-continue".to_vec()));
    }
    match (version, last && rng.random_bool(0.4)) {
        ("1.1", true) => headers.push((name(rng, "Connection"), b"close".to_vec())),
        ("1.0", false) => headers.push((name(rng, "Connection"), b"keep-alive".to_vec())),
        _ => {}
    }
    if rng.random_bool(0.5) {
        // Headers in any order (the framing ones included).
        let at = rng.random_range(0..headers.len());
        let h = headers.remove(at);
        let to = rng.random_range(0..=headers.len());
        headers.insert(to, h);
    }
    Parts {
        method,
        target,
        version,
        headers,
        body_wire,
        body,
    }
    .valid()
}

/// An ambiguous or malformed framing: it must be refused with the status given, and nothing in
/// or after it reach the router. Every body carries a whole request a lax reading would run.
fn ambiguous_request(rng: &mut StdRng) -> (Req, u16, &'static str) {
    let host = (name(rng, "Host"), b"example.test".to_vec());
    let body = {
        let mut b = body_bytes(rng, 10);
        b.extend_from_slice(SMUGGLED);
        b
    };
    let te = |rng: &mut StdRng, v: &str| (name(rng, "Transfer-Encoding"), v.as_bytes().to_vec());
    let cl = |rng: &mut StdRng, v: String| (name(rng, "Content-Length"), v.into_bytes());
    let chunk_of = |size: &str, ext: &str, data: &[u8]| {
        let mut w = format!("{size}{ext}\r\n").into_bytes();
        w.extend_from_slice(data);
        w.extend_from_slice(b"\r\n0\r\n\r\n");
        w
    };
    let post = |headers: Vec<(String, Vec<u8>)>, body_wire: Vec<u8>| Parts {
        method: "POST",
        target: "/v1/shape?table=items".into(),
        version: "1.1",
        headers,
        body_wire,
        body: Vec::new(),
    };
    let hex = format!("{:x}", body.len());
    match rng.random_range(0..16) {
        0 => {
            let wire = chunk_of(&hex, "", &body);
            let len = *pick(rng, &[wire.len(), 0, 5]);
            let mut headers = vec![host, te(rng, "chunked"), cl(rng, len.to_string())];
            if rng.random_bool(0.5) {
                headers.swap(1, 2);
            }
            (
                post(headers, wire).invalid(),
                400,
                "content-length and transfer-encoding",
            )
        }
        1 => {
            let (a, b) = (body.len(), rng.random_range(0..body.len()));
            let headers = vec![host, cl(rng, a.to_string()), cl(rng, b.to_string())];
            (
                post(headers, body).invalid(),
                400,
                "conflicting content-length",
            )
        }
        2 => {
            let n = body.len().to_string();
            let headers = vec![host, cl(rng, n.clone()), cl(rng, n)];
            (
                post(headers, body).invalid(),
                400,
                "repeated content-length",
            )
        }
        3 => {
            let n = body.len();
            let v = pick(rng, &[format!("{n}, {n}"), format!("{n},{}", n + 1)]).clone();
            (
                post(vec![host, cl(rng, v)], body).invalid(),
                400,
                "content-length list",
            )
        }
        4 => {
            let n = body.len();
            let v = pick(
                rng,
                &[
                    format!("+{n}"),
                    format!("-{n}"),
                    format!("0x{n:x}"),
                    format!("{n} 0"),
                ],
            )
            .clone();
            (
                post(vec![host, cl(rng, v)], body).invalid(),
                400,
                "content-length not digits",
            )
        }
        5 => {
            let fold: &[u8] = pick::<&[u8]>(
                rng,
                &[&b"a\r\n b"[..], b"a\r\n\tb", b"identity\r\n chunked"],
            );
            let folded = *pick(rng, &["X-Folded", "Transfer-Encoding"]);
            let headers = vec![
                host,
                (name(rng, folded), fold.to_vec()),
                cl(rng, body.len().to_string()),
            ];
            (post(headers, body).invalid(), 400, "obs-fold")
        }
        6 => {
            let parts = post(vec![host, cl(rng, body.len().to_string())], body);
            let mut head = parts.head();
            let crlfs: Vec<usize> = head
                .windows(2)
                .enumerate()
                .filter(|(_, w)| w == b"\r\n")
                .map(|(i, _)| i)
                .collect();
            head.remove(*pick(rng, &crlfs));
            head.extend_from_slice(&parts.body_wire);
            (
                Req {
                    wire: head,
                    expect: None,
                },
                400,
                "bare LF in the head",
            )
        }
        7 => {
            let ext = *pick(
                rng,
                &[
                    ";a b",
                    "; =x",
                    ";a=\"open",
                    ";a=b c",
                    ";a=\"x\"y",
                    ";",
                    ";a=",
                    ";a\x00",
                    "\t",
                    ";a\rb",
                ],
            );
            let wire = chunk_of(&hex, ext, &body);
            (
                post(vec![host, te(rng, "chunked")], wire).invalid(),
                400,
                "invalid chunk extension",
            )
        }
        8 => {
            let size = pick(
                rng,
                &[
                    format!("{hex} "),
                    format!(" {hex}"),
                    format!("{hex}\t"),
                    format!("0x{hex}"),
                ],
            )
            .clone();
            let wire = chunk_of(&size, "", &body);
            (
                post(vec![host, te(rng, "chunked")], wire).invalid(),
                400,
                "whitespace or 0x in a chunk size",
            )
        }
        9 => {
            let wire = chunk_of(&hex, "", &body);
            let mut headers = vec![host];
            match rng.random_range(0..2) {
                0 => {
                    let v = *pick(
                        rng,
                        &[
                            "gzip",
                            "chunked, gzip",
                            "xchunked",
                            "chunked, chunked",
                            "gzip, chunked",
                            "identity",
                            "chunked;q=1",
                            "",
                            "chunked\x0b",
                        ],
                    );
                    headers.push(te(rng, v));
                }
                _ => {
                    headers.push(te(rng, "chunked"));
                    let second = *pick(rng, &["gzip", "chunked"]);
                    headers.push(te(rng, second));
                }
            }
            (
                post(headers, wire).invalid(),
                400,
                "transfer-encoding not just chunked",
            )
        }
        10 => {
            let mut parts = post(vec![host, te(rng, "chunked")], chunk_of(&hex, "", &body));
            parts.version = "1.0";
            if rng.random_bool(0.5) {
                parts.headers.push(name_value("Connection", "keep-alive"));
            }
            (parts.invalid(), 400, "transfer-encoding in HTTP/1.0")
        }
        11 => {
            let size = *pick(
                rng,
                &[
                    "ffffffffffffffff",
                    "10000000000000000",
                    "fffffffffffffffffffff",
                    "7fffffffffffffff",
                ],
            );
            let wire = chunk_of(size, "", &body);
            (
                post(vec![host, te(rng, "chunked")], wire).invalid(),
                413,
                "chunk size overflow",
            )
        }
        12 => {
            let v = pick(
                rng,
                &[
                    "99999999999",
                    "18446744073709551616",
                    "99999999999999999999999",
                ],
            )
            .to_string();
            (
                post(vec![host, cl(rng, v)], body).invalid(),
                413,
                "huge content-length",
            )
        }
        13 => {
            let mut wire = format!("{hex}\r\n").into_bytes();
            wire.extend_from_slice(&body);
            wire.extend_from_slice(b"\r\n0\r\n");
            wire.extend_from_slice(pick::<&[u8]>(
                rng,
                &[
                    &b"bad trailer\r\n\r\n"[..],
                    b"X : y\r\n\r\n",
                    b" X: y\r\n\r\n",
                    b"X: a\rb\r\n\r\n",
                ],
            ));
            (
                post(vec![host, te(rng, "chunked")], wire).invalid(),
                400,
                "malformed trailer",
            )
        }
        14 => {
            // The data runs past its size: the bytes after the size are not CRLF.
            let mut data = b"abcdef".to_vec();
            data.extend_from_slice(&body);
            let wire = chunk_of("3", "", &data);
            (
                post(vec![host, te(rng, "chunked")], wire).invalid(),
                400,
                "chunk data longer than its size",
            )
        }
        _ => {
            let mut wire = format!("{hex}\n").into_bytes();
            wire.extend_from_slice(&body);
            wire.extend_from_slice(b"\n0\n\n");
            (
                post(vec![host, te(rng, "chunked")], wire).invalid(),
                400,
                "bare LF in chunk framing",
            )
        }
    }
}

fn name_value(n: &str, v: &str) -> (String, Vec<u8>) {
    (n.to_string(), v.as_bytes().to_vec())
}

/// Random byte-level damage.
fn mutate(rng: &mut StdRng, input: &mut Vec<u8>) {
    const SPECIAL: &[u8] = b"\r\n\0\xff :\t,;\"\x7f0";
    const HEADERS: &[&[u8]] = &[
        b"Content-Length: 5\r\n",
        b"Content-Length: 0\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: chunked, gzip\r\n",
        b"Transfer-Encoding: xchunked\r\n",
        b" folded\r\n",
        b"\tfolded\r\n",
        b"Expect: 100-continue\r\n",
        b"Connection: close\r\n",
        b"Connection: keep-alive\r\n",
    ];
    if input.is_empty() {
        input.push(b'G');
    }
    let at = rng.random_range(0..input.len());
    match rng.random_range(0..10) {
        0 => input[at] ^= 1 << rng.random_range(0..8),
        1 | 2 => input.insert(at, *pick(rng, SPECIAL)),
        3 => {
            let end = (at + rng.random_range(1..8)).min(input.len());
            input.drain(at..end);
        }
        4 => input.truncate(at),
        5 => {
            // Repeat the line `at` is in (a header, say).
            let start = input[..at]
                .windows(2)
                .rposition(|w| w == b"\r\n")
                .map_or(0, |p| p + 2);
            let end = input[at..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .map_or(input.len(), |p| at + p + 2);
            let line = input[start..end].to_vec();
            input.splice(start..start, line);
        }
        6 => {
            // A number made huge (or hexadecimal).
            if let Some(d) = input[at..].iter().position(u8::is_ascii_digit) {
                let huge: &[u8] = pick::<&[u8]>(
                    rng,
                    &[
                        &b"99999999999999999999"[..],
                        b"ffffffffffffffff",
                        b"18446744073709551615",
                    ],
                );
                input.splice(at + d..at + d + 1, huge.iter().copied());
            }
        }
        7 => {
            // A header line after some line end.
            if let Some(p) = input[at..].windows(2).position(|w| w == b"\r\n") {
                let h = pick(rng, HEADERS);
                input.splice(at + p + 2..at + p + 2, h.iter().copied());
            }
        }
        8 => {
            // A CRLF made a bare LF, or a bare CR.
            if let Some(p) = input[at..].windows(2).position(|w| w == b"\r\n") {
                input.remove(at + p + usize::from(rng.random_bool(0.3)));
            }
        }
        _ => {
            if input[at].is_ascii_alphabetic() {
                input[at] ^= 0x20;
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Valid requests only: all passed on.
    Valid,
    /// Valid requests, one ambiguous one at `at` (refused with `status`), valid ones after.
    Ambiguous {
        at: usize,
        status: u16,
        what: &'static str,
    },
    /// Random damage anywhere.
    Mutated,
}

struct Case {
    input: Vec<u8>,
    requests: Vec<Req>,
    kind: Kind,
    /// Where the writes are split.
    splits: Vec<usize>,
    /// The in-memory stream's buffer (small: reads are split too).
    buffer: usize,
    /// Shut the write side once everything is written (else it stays open: the server ends the
    /// connection by its own deadlines).
    eof: bool,
}

fn gen_case(rng: &mut StdRng) -> Case {
    let n = rng.random_range(1..=3);
    let kind_roll = rng.random_range(0..10);
    let ambiguous_at = (3..=6).contains(&kind_roll).then(|| rng.random_range(0..n));
    let mut requests = Vec::new();
    let mut kind = Kind::Valid;
    for i in 0..n {
        if Some(i) == ambiguous_at {
            let (req, status, what) = ambiguous_request(rng);
            kind = Kind::Ambiguous {
                at: i,
                status,
                what,
            };
            requests.push(req);
        } else {
            requests.push(valid_request(rng, i + 1 == n));
        }
    }
    let mut input: Vec<u8> = requests
        .iter()
        .flat_map(|r| r.wire.iter().copied())
        .collect();
    if kind_roll >= 7 {
        kind = Kind::Mutated;
        for _ in 0..rng.random_range(1..=4) {
            mutate(rng, &mut input);
        }
    }
    let mut splits: Vec<usize> = if input.len() > 1 && rng.random_bool(0.1) {
        (1..input.len()).collect()
    } else if input.len() > 1 {
        (0..rng.random_range(0..8))
            .map(|_| rng.random_range(1..input.len()))
            .collect()
    } else {
        Vec::new()
    };
    splits.sort_unstable();
    splits.dedup();
    Case {
        input,
        requests,
        kind,
        splits,
        buffer: *pick(rng, &[1, 3, 16, 256, 64 * 1024, 64 * 1024]),
        eof: rng.random_bool(0.85),
    }
}

fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

// ---------------------------------------------------------------------------------------------
// Driving a connection

/// Write the case's input in its pieces while reading everything the server writes until it
/// closes; `None` if the connection has not ended after [`HANG`].
async fn drive(client: DuplexStream, case: &Case) -> Option<Vec<u8>> {
    let (mut rd, mut wr) = tokio::io::split(client);
    let writer = async {
        let mut at = 0;
        for end in case.splits.iter().copied().chain([case.input.len()]) {
            if wr.write_all(&case.input[at..end]).await.is_err() {
                return;
            }
            at = end;
            tokio::task::yield_now().await;
        }
        if case.eof {
            let _ = wr.shutdown().await;
        }
    };
    let reader = async {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        out
    };
    tokio::time::timeout(HANG, async { tokio::join!(writer, reader).1 })
        .await
        .ok()
}

struct Ours {
    server: Http1<DuplexStream>,
    log: Log,
    _stop: watch::Sender<bool>,
}

impl Ours {
    fn new() -> Self {
        let log = Log::default();
        let (stop, stop_rx) = watch::channel(false);
        Ours {
            server: Http1::with_limits(echo_router(Arc::clone(&log)), stop_rx, Limits::default()),
            log,
            _stop: stop,
        }
    }
}

/// What our server did with a case.
struct Outcome {
    views: Vec<View>,
    /// Its refusal (status and reason), if it refused a request.
    refusal: Option<(u16, String)>,
}

/// Run a case through our server and check what holds whatever the input: no panic, the
/// connection ends and is no longer counted, every request passed on is answered with its own
/// echo in order, and anything else is one last refusal that closes the connection.
async fn run_ours(ours: &Ours, case: &Case, port: u16) -> Result<Outcome, String> {
    let before = panics();
    let (client, server) = tokio::io::duplex(case.buffer);
    ours.server
        .connection(server, SocketAddr::from(([10, 1, 2, 3], port)));
    let out = drive(client, case).await;
    // Let the server's tasks finish (a panic would be counted on this thread).
    for _ in 0..100 {
        if ours.server.connections() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let views = lock(&ours.log).remove(&port).unwrap_or_default();
    if panics() != before {
        return Err("the server panicked".into());
    }
    let Some(out) = out else {
        return Err(format!("the connection did not end within {HANG:?}"));
    };
    if ours.server.connections() != 0 {
        return Err("the connection is still counted after it ended".into());
    }
    let refusal =
        check_responses(&out, &views).map_err(|e| format!("{e}; output {}", show(&out)))?;
    Ok(Outcome { views, refusal })
}

struct Response {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Parse the responses (final ones; `100 Continue` skipped), knowing which answer a HEAD.
fn parse_responses(mut out: &[u8], views: &[View]) -> Result<Vec<Response>, String> {
    let mut finals = Vec::new();
    while !out.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut headers);
        let n = match res.parse(out) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Err("a truncated response head".into()),
            Err(e) => return Err(format!("a malformed response head ({e})")),
        };
        if res.version != Some(1) {
            return Err("a response that is not HTTP/1.1".into());
        }
        let status = res.code.unwrap_or(0);
        let headers: Vec<(String, Vec<u8>)> = res
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect();
        out = &out[n..];
        if (100..200).contains(&status) {
            if status != 100 {
                return Err(format!("an interim response {status}"));
            }
            continue;
        }
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let head_request = views.get(finals.len()).is_some_and(|v| v.method == "HEAD");
        if head_request || status == 204 || status == 304 {
        } else if let Some(len) = response.header("content-length") {
            let len: usize = std::str::from_utf8(len)
                .ok()
                .and_then(|l| l.parse().ok())
                .ok_or("a response with a malformed content-length")?;
            if out.len() < len {
                return Err("a truncated response body".into());
            }
            response.body = out[..len].to_vec();
            out = &out[len..];
        } else if response
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"chunked"))
        {
            loop {
                let line_end = out
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .ok_or("a truncated chunk")?;
                let size = std::str::from_utf8(&out[..line_end])
                    .ok()
                    .and_then(|s| usize::from_str_radix(s, 16).ok())
                    .ok_or("a malformed response chunk size")?;
                out = &out[line_end + 2..];
                if out.len() < size + 2 || &out[size..size + 2] != b"\r\n" {
                    return Err("a malformed response chunk".into());
                }
                response.body.extend_from_slice(&out[..size]);
                out = &out[size + 2..];
                if size == 0 {
                    break;
                }
            }
        } else {
            response.body = std::mem::take(&mut out).to_vec();
        }
        finals.push(response);
    }
    Ok(finals)
}

/// Check the responses against what the router saw; the refusal, if any.
fn check_responses(out: &[u8], views: &[View]) -> Result<Option<(u16, String)>, String> {
    let finals = parse_responses(out, views)?;
    if finals.len() < views.len() {
        return Err(format!(
            "the router saw {} requests, {} were answered",
            views.len(),
            finals.len()
        ));
    }
    for (i, (view, res)) in views.iter().zip(&finals).enumerate() {
        if res.status != 200 {
            return Err(format!(
                "request {i} went to the router but was answered {}",
                res.status
            ));
        }
        if view.method != "HEAD" && res.body != view.echo().as_bytes() {
            return Err(format!(
                "response {i} is not the echo of request {i} ({view:?}): {}",
                show(&res.body)
            ));
        }
    }
    match &finals[views.len()..] {
        [] => Ok(None),
        [refusal] => {
            if !REFUSALS.contains(&refusal.status) {
                return Err(format!("the server refused with {}", refusal.status));
            }
            if refusal.header("connection") != Some(b"close") {
                return Err("a refusal without connection: close".into());
            }
            let why = serde_json::from_slice::<serde_json::Value>(&refusal.body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .ok_or("a refusal without a message")?;
            Ok(Some((refusal.status, why)))
        }
        more => Err(format!(
            "{} responses after a refusal or to nothing",
            more.len() - 1
        )),
    }
}

/// What a generated case promises: a valid pipeline is passed on whole (and as sent); an
/// ambiguous request is refused with its status, and the router saw only what came before it.
fn check_kind(case: &Case, outcome: &Outcome) -> Result<(), String> {
    let expected: Vec<&View> = case
        .requests
        .iter()
        .map_while(|r| r.expect.as_ref())
        .collect();
    match case.kind {
        Kind::Mutated => return Ok(()),
        Kind::Valid => {
            if outcome.views.len() != case.requests.len() || outcome.refusal.is_some() {
                return Err(format!(
                    "a valid pipeline of {} requests: the router saw {}, refusal {:?}",
                    case.requests.len(),
                    outcome.views.len(),
                    outcome.refusal
                ));
            }
        }
        Kind::Ambiguous { at, status, what } => {
            if outcome.views.len() != at || outcome.refusal.as_ref().map(|r| r.0) != Some(status) {
                return Err(format!(
                    "request {at} is ambiguous ({what}): expected {status} after {at} requests \
                     and nothing more; the router saw {} ({:?}), refusal {:?}",
                    outcome.views.len(),
                    outcome.views.iter().map(|v| &v.target).collect::<Vec<_>>(),
                    outcome.refusal
                ));
            }
        }
    }
    for (i, (got, want)) in outcome.views.iter().zip(expected).enumerate() {
        // Our server adds nothing but x-request-id (left out of views).
        if got != want {
            return Err(format!(
                "request {i}: sent {want:?}, the router saw {got:?}"
            ));
        }
    }
    Ok(())
}

/// Run a case through hyper's server: the requests its service was handed, with their whole
/// bodies (a request whose body failed is not counted).
async fn run_hyper(case: &Case) -> Vec<View> {
    let (client, server) = tokio::io::duplex(case.buffer);
    let log: Arc<Mutex<Vec<View>>> = Arc::default();
    let service_log = Arc::clone(&log);
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let log = Arc::clone(&service_log);
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await?.to_bytes();
            lock(&log).push(View::new(
                &parts.method,
                &parts.uri,
                parts.version,
                &parts.headers,
                body,
            ));
            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::new())))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(hyper_util::rt::TokioIo::new(server), service);
    let task = tokio::spawn(conn);
    // Hyper has no deadline for a body: a connection left open mid-body waits forever.
    let _ = drive(client, case).await;
    task.abort();
    let views = lock(&log).clone();
    views
}

/// Whatever we passed on, hyper passed on identically and in the same place; where hyper
/// passed on more, we refused the next request for a documented reason.
fn compare(ours: &Outcome, hyper: &[View]) -> Result<Option<&'static str>, String> {
    for (i, view) in ours.views.iter().enumerate() {
        match hyper.get(i) {
            Some(h) if h == view => {}
            Some(h) => {
                return Err(format!(
                    "request {i}: the router saw {view:?}, hyper's service saw {h:?}"
                ))
            }
            None => {
                return Err(format!(
                    "request {i}: the router saw {view:?}, hyper did not accept it"
                ))
            }
        }
    }
    let Some(next) = hyper.get(ours.views.len()) else {
        return Ok(None);
    };
    match &ours.refusal {
        Some((status, why)) if (400..500).contains(status) => STRICTER_THAN_HYPER
            .iter()
            .find(|(reason, _)| reason == why)
            .map(|(reason, _)| Some(*reason))
            .ok_or_else(|| {
                format!(
                    "request {}: hyper accepted {next:?}; we refused it ({status}, {why}), which \
                     is not a documented difference",
                    ours.views.len()
                )
            }),
        other => Err(format!(
            "request {}: hyper accepted {next:?}; we neither passed it on nor refused it \
             (refusal {other:?})",
            ours.views.len()
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// The tests

#[tokio::test(start_paused = true)]
async fn fuzz_server() {
    count_panics();
    let config = config("fuzz_server", 0.5);
    let ours = Ours::new();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut total = 0u64;
    for case_no in cases(&config) {
        let mut rng = case_rng(config.seed, 1, case_no);
        let case = gen_case(&mut rng);
        let port = (case_no % 60_000) as u16 + 1;
        let fail = |e: String| -> ! { fail_case("fuzz_server", &e, case_no, &case, config.seed) };
        let outcome = run_ours(&ours, &case, port)
            .await
            .unwrap_or_else(|e| fail(e));
        check_kind(&case, &outcome).unwrap_or_else(|e| fail(e));
        *kinds
            .entry(match case.kind {
                Kind::Valid => "valid",
                Kind::Ambiguous { what, .. } => what,
                Kind::Mutated => "mutated",
            })
            .or_default() += 1;
        total += 1;
    }
    eprintln!(
        "fuzz_server: {total} cases (seed {}): {kinds:?}",
        config.seed
    );
}

/// Fail `test` on `case`, with everything needed to replay it.
fn fail_case(test: &str, e: &str, case_no: u64, case: &Case, seed: u64) -> ! {
    panic!(
        "{test}: {e}\n  case {case_no} ({:?}, buffer {}, eof {}, splits {:?})\n  input {}\n  \
         replay with HTTP1_FUZZ_SEED={seed} HTTP1_FUZZ_CASE={case_no}",
        case.kind,
        case.buffer,
        case.eof,
        case.splits,
        show(&case.input),
    )
}

#[tokio::test(start_paused = true)]
async fn differential_against_hyper() {
    count_panics();
    let config = config("differential_against_hyper", 0.5);
    let ours = Ours::new();
    let mut differences: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut total, mut agreed) = (0u64, 0u64);
    for case_no in cases(&config) {
        let mut rng = case_rng(config.seed, 2, case_no);
        let case = gen_case(&mut rng);
        let port = (case_no % 60_000) as u16 + 1;
        let fail = |e: String| -> ! {
            fail_case(
                "differential_against_hyper",
                &e,
                case_no,
                &case,
                config.seed,
            )
        };
        let outcome = run_ours(&ours, &case, port)
            .await
            .unwrap_or_else(|e| fail(e));
        check_kind(&case, &outcome).unwrap_or_else(|e| fail(e));
        let hyper = run_hyper(&case).await;
        match compare(&outcome, &hyper).unwrap_or_else(|e| fail(e)) {
            Some(reason) => *differences.entry(reason).or_default() += 1,
            None => agreed += 1,
        }
        total += 1;
    }
    eprintln!(
        "differential_against_hyper: {total} cases (seed {}), {agreed} read alike; refused where \
         hyper accepted: {differences:?}",
        config.seed
    );
}
