//! Criterion micro benchmarks of the per-change hot path, each group on the crate's public API
//! and each tied to a physical limit or target of `docs/targets.md`:
//!
//! - `pgoutput_decode`: `replication::pgoutput::decode` of realistic pgoutput v1 messages (Begin,
//!   Commit, an Insert of a 5-column row: int8, text, int4, jsonb, timestamptz as text values,
//!   an Update with a REPLICA IDENTITY FULL old tuple, and a whole 1,000-insert transaction).
//!   Physical limit: pgoutput decoding in Rust does 2.7-4.5M rows/s; the walsender streams
//!   ~180-215k rows/s, so decoding must stay a small fraction of P1's budget.
//! - `json_encode`: `shape::message::Encoder` turning decoded rows into JSON lines
//!   (`snapshot_row`, insert `change`, FULL-replica update `change` with `old_value`), in rows/s
//!   and bytes/s, beside the anchor of building the same message as a `serde_json::Value` and
//!   serialising it (the 300-500k rows/s that targets.md says writing from byte slices avoids).
//! - `predicate`: one compiled where clause (`shape::filter::parse_where`, then
//!   `WhereClause::matches`) on one decoded row per iteration, beside the floor of just reading
//!   the value. Target P3: ≤ 0.5 µs per shape per change.
//! - `routing`: `shape::route::TableRoutes::candidates` for one change on a table with 1, 1,000,
//!   10,000 and 100,000 `n = k` shapes (filed by `WhereClause::route_term`), alone and followed by
//!   the candidates' predicate checks. Target P2: routing is O(1) per change (the time must
//!   not grow with the number of shapes), so 10k shapes keep ≥ 0.8 × the 1-shape rate.
//! - `storage`: the `shapesync::storage` file store: group commit (`ShapeLogStore::commit`, one
//!   fsync per batch) of 100 records of ~220 bytes (1 shape × 100, and 100 shapes × 1), and the
//!   read of one ~1 MB change chunk (page cache). Physical limits: ~280 MB/s sequential disk
//!   writes but ~430 fsyncs/s, hence group commit (P1/P2 durability).
//! - `compaction`: `shape::compaction::compact_chunk` on a ~1 MB sealed chunk of updates to 100
//!   hot rows (merged to 100 updates) and on one where no row repeats (nothing to merge: only
//!   keys and operations are read), and the first pass `may_merge` that answers the latter
//!   without building anything, in bytes/s, beside the floor of the merging case: parsing
//!   every entry of the chunk into a JSON map. It runs in the background, at most 4 MiB of
//!   chunks per 200 ms, so it must do well over 20 MB/s to keep up with its budget.
//!
//! Run with `cargo bench --bench micro` (about 2 minutes) or `cargo bench --bench micro --
//! --quick`; one group with e.g. `cargo bench --bench micro -- routing`. Not part of the test
//! command.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode,
    Throughput,
};

use shapesync::replication::pgoutput::{decode, Message, OldTuple, TupleData, Value};
use shapesync::shape::definition::Replica;
use shapesync::shape::message::{close, Cell, ChangeHeaders, Encoder, Op};
use shapesync::shape::route::TableRoutes;
use shapesync::storage::{FileStore, LogOffset, ReadResult, ShapeLog, ShapeLogStore, StoreConfig};
use shapesync_filter::table::{ColumnInfo, TableInfo};
use shapesync_filter::{index_key, parse_where, Family, Row, WhereClause};

const RELATION: u32 = 16384;
/// Column `n` (int4) of the table: the one where clauses and routing use.
const N_COL: usize = 2;

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(25);
}

// ---------------------------------------------------------------------------------------------
// The table and its rows
// ---------------------------------------------------------------------------------------------

fn column(name: &str, ty: &str, pk: Option<usize>) -> ColumnInfo {
    ColumnInfo {
        name: name.into(),
        type_oid: 0,
        type_name: ty.into(),
        dims: 0,
        type_mod: -1,
        not_null: pk.is_some(),
        pk_index: pk,
    }
}

/// `public.items (id int8 primary key, name text, n int4, doc jsonb, created timestamptz)`.
fn table() -> TableInfo {
    let mut t = TableInfo::new(
        RELATION,
        "public".into(),
        "items".into(),
        vec![
            column("id", "int8", Some(0)),
            column("name", "text", None),
            column("n", "int4", None),
            column("doc", "jsonb", None),
            column("created", "timestamptz", None),
        ],
    );
    // The C locale, as the embedded Postgres uses (lower/upper need it).
    t.locale = shapesync_filter::table::TextLocale {
        collate: "C".into(),
        ctype: "C".into(),
        provider: "c".into(),
    };
    t
}

/// Text values of row `i`, as Postgres sends them in a pgoutput tuple (~130 bytes of values).
fn row_values(i: u64) -> [String; 5] {
    // About 1% of the rows have n = 42 (the equality clauses below match them).
    let n = if i.is_multiple_of(97) {
        42
    } else {
        i * 2_654_435_761 % 10_000
    };
    [
        (1_000_000 + i).to_string(),
        format!("item-{n}"),
        n.to_string(),
        format!(
            r#"{{"kind": "{}", "qty": {}, "note": "deliver to dock {}"}}"#,
            if i.is_multiple_of(4) {
                "order"
            } else {
                "quote"
            },
            n % 13,
            i % 7
        ),
        format!(
            "2026-11-{:02} 12:{:02}:{:02}.{:06}+00",
            1 + i % 28,
            i % 60,
            (i * 7) % 60,
            i * 37 % 1_000_000
        ),
    ]
}

/// Builder of raw pgoutput messages (big-endian, protocol v1).
struct Wire(Vec<u8>);

impl Wire {
    fn tag(t: u8) -> Self {
        Wire(vec![t])
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// `TupleData`: Int16 column count, then `'t'` + Int32 length + bytes per column.
    fn tuple(mut self, values: &[String]) -> Self {
        self.0
            .extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            self.0.push(b't');
            self.0.extend_from_slice(&(v.len() as i32).to_be_bytes());
            self.0.extend_from_slice(v.as_bytes());
        }
        self
    }
    fn build(self) -> Bytes {
        Bytes::from(self.0)
    }
}

const COMMIT_TIME: i64 = 817_000_000_000_000;

fn begin_msg(xid: u32) -> Bytes {
    Wire::tag(b'B')
        .u64(0x1_6B37_48C0)
        .i64(COMMIT_TIME)
        .u32(xid)
        .build()
}

fn commit_msg() -> Bytes {
    Wire::tag(b'C')
        .u8(0)
        .u64(0x1_6B37_48C0)
        .u64(0x1_6B37_4A10)
        .i64(COMMIT_TIME)
        .build()
}

fn insert_msg(i: u64) -> Bytes {
    Wire::tag(b'I')
        .u32(RELATION)
        .u8(b'N')
        .tuple(&row_values(i))
        .build()
}

/// An update under REPLICA IDENTITY FULL: `'O'` + the whole old row, then `'N'` + the new row
/// (name, n and doc changed).
fn update_full_msg(i: u64) -> Bytes {
    let old = row_values(i);
    let mut new = row_values(i + 1);
    new[0] = old[0].clone();
    Wire::tag(b'U')
        .u32(RELATION)
        .u8(b'O')
        .tuple(&old)
        .u8(b'N')
        .tuple(&new)
        .build()
}

/// The new tuple of a decoded Insert.
fn insert_tuple(m: &Message) -> &TupleData {
    match m {
        Message::Insert { new, .. } => new,
        other => panic!("not an insert: {other:?}"),
    }
}

/// Cells of a decoded tuple (what the writer hands to the encoder and the filters).
fn cells(t: &TupleData) -> Vec<Cell<'_>> {
    t.0.iter()
        .map(|v| match v {
            Value::Null => Cell::Null,
            Value::Text(b) | Value::Binary(b) => Cell::Text(&b[..]),
            Value::UnchangedToast => Cell::Unknown,
        })
        .collect()
}

/// A decoded row as the where-clause engine reads it.
struct CellRow<'a, 'b>(&'b [Cell<'a>]);

impl Row for CellRow<'_, '_> {
    fn value(&self, column: usize) -> Option<&[u8]> {
        self.0.get(column).and_then(|c| c.bytes())
    }
}

/// Decoded Inserts of rows `0..n`.
fn decoded_inserts(n: u64) -> Vec<Message> {
    (0..n).map(|i| decode(&insert_msg(i)).unwrap()).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. pgoutput_decode
// ---------------------------------------------------------------------------------------------

fn pgoutput_decode(c: &mut Criterion) {
    let begin = begin_msg(7_001);
    let commit = commit_msg();
    let insert = insert_msg(42);
    let update = update_full_msg(42);
    assert!(matches!(decode(&begin), Ok(Message::Begin(b)) if b.xid == 7_001));
    assert!(matches!(decode(&commit), Ok(Message::Commit(_))));
    match decode(&insert).unwrap() {
        Message::Insert { relation, new } => {
            assert_eq!(relation, RELATION);
            assert_eq!(new.0.len(), 5);
            assert_eq!(
                new.0[1],
                Value::Text(Bytes::from(row_values(42)[1].clone()))
            );
        }
        other => panic!("not an insert: {other:?}"),
    }
    match decode(&update).unwrap() {
        Message::Update {
            old: Some(OldTuple::Full(old)),
            new,
            ..
        } => assert_eq!((old.0.len(), new.0.len()), (5, 5)),
        other => panic!("not a FULL update: {other:?}"),
    }
    let txn: Vec<Bytes> = std::iter::once(begin_msg(7_002))
        .chain((0..1000).map(insert_msg))
        .chain(std::iter::once(commit_msg()))
        .collect();
    assert!(txn.iter().all(|m| decode(m).is_ok()));

    let mut g = c.benchmark_group("pgoutput_decode");
    configure(&mut g);
    g.throughput(Throughput::Elements(1));
    g.bench_function("begin", |b| b.iter(|| decode(black_box(&begin))));
    g.bench_function("commit", |b| b.iter(|| decode(black_box(&commit))));
    g.bench_function(
        BenchmarkId::new("insert_5col", format!("{}B", insert.len())),
        |b| b.iter(|| decode(black_box(&insert))),
    );
    g.bench_function(
        BenchmarkId::new("update_full_old", format!("{}B", update.len())),
        |b| b.iter(|| decode(black_box(&update))),
    );
    // Rows/s over a whole transaction: Begin + 1,000 Inserts + Commit.
    g.throughput(Throughput::Elements(1000));
    g.bench_function("txn_1000_inserts", |b| {
        b.iter(|| {
            for m in &txn {
                black_box(decode(black_box(m)).is_ok());
            }
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// 2. json_encode
// ---------------------------------------------------------------------------------------------

/// The anchor: the same insert message built as a `serde_json::Value` tree, then serialised.
fn via_serde_value(table: &TableInfo, row: &[Cell<'_>], h: &ChangeHeaders<'_>) -> Vec<u8> {
    let mut value = serde_json::Map::with_capacity(row.len());
    for (col, cell) in table.columns.iter().zip(row) {
        let v = match cell {
            Cell::Text(b) => serde_json::Value::String(String::from_utf8_lossy(b).into_owned()),
            _ => serde_json::Value::Null,
        };
        value.insert(col.name.clone(), v);
    }
    let key = format!(
        "\"{}\".\"{}\"/\"{}\"",
        table.schema,
        table.name,
        String::from_utf8_lossy(row[0].bytes().unwrap_or_default())
    );
    let msg = serde_json::json!({
        "key": key,
        "value": value,
        "headers": {
            "operation": "insert",
            "relation": [table.schema, table.name],
            "lsn": h.lsn.to_string(),
            "op_position": h.op_position,
            "txids": [h.xid],
        }
    });
    serde_json::to_vec(&msg).unwrap()
}

fn json_encode(c: &mut Criterion) {
    let table = table();
    let all: Vec<usize> = (0..table.columns.len()).collect();
    let enc = Encoder::new(&table, &all, Replica::Default);
    let enc_full = Encoder::new(&table, &all, Replica::Full);
    let old_msg = decode(&update_full_msg(42)).unwrap();
    let Message::Update {
        old: Some(OldTuple::Full(old_t)),
        new: new_t,
        ..
    } = &old_msg
    else {
        panic!("not a FULL update")
    };
    let ins_msg = decode(&insert_msg(42)).unwrap();
    let row = cells(insert_tuple(&ins_msg));
    let (old, new) = (cells(old_t), cells(new_t));
    let h = ChangeHeaders {
        lsn: 0x1_6B37_48C0,
        op_position: 84,
        xid: 7_001,
        key_change: None,
    };

    // What one iteration produces, as the writer builds it (a fresh Vec of capacity 256).
    let snapshot = |row: &[Cell<'_>]| {
        let mut out = Vec::with_capacity(256);
        enc.snapshot_row(&mut out, row);
        out
    };
    let insert = |row: &[Cell<'_>]| {
        let mut out = Vec::with_capacity(256);
        enc.change(&mut out, Op::Insert, None, Some(row), &h);
        close(&mut out, false);
        out
    };
    let update = |old: &[Cell<'_>], new: &[Cell<'_>]| {
        let mut out = Vec::with_capacity(256);
        enc_full.change(&mut out, Op::Update, Some(old), Some(new), &h);
        close(&mut out, true);
        out
    };
    let sizes = [
        ("snapshot_row", snapshot(&row).len()),
        ("change_insert", insert(&row).len()),
        ("change_update_full", update(&old, &new).len()),
        (
            "anchor_serde_json_value",
            via_serde_value(&table, &row, &h).len(),
        ),
    ];
    // Both encoders agree on the message (apart from the key's quoting, same JSON).
    let ours: serde_json::Value = serde_json::from_slice(&insert(&row)).unwrap();
    let anchor: serde_json::Value =
        serde_json::from_slice(&via_serde_value(&table, &row, &h)).unwrap();
    assert_eq!(ours["value"], anchor["value"]);
    assert_eq!(ours["headers"], anchor["headers"]);
    let upd: serde_json::Value = serde_json::from_slice(&update(&old, &new)).unwrap();
    assert!(upd["old_value"].is_object());

    let mut g = c.benchmark_group("json_encode");
    configure(&mut g);
    for (name, len) in sizes {
        for (unit, tp) in [
            ("rows", Throughput::Elements(1)),
            ("bytes", Throughput::Bytes(len as u64)),
        ] {
            g.throughput(tp);
            let id = BenchmarkId::new(name, format!("{unit}/{len}B"));
            match name {
                "snapshot_row" => g.bench_function(id, |b| b.iter(|| snapshot(black_box(&row)))),
                "change_insert" => g.bench_function(id, |b| b.iter(|| insert(black_box(&row)))),
                "change_update_full" => {
                    g.bench_function(id, |b| b.iter(|| update(black_box(&old), black_box(&new))))
                }
                _ => g.bench_function(id, |b| {
                    b.iter(|| via_serde_value(&table, black_box(&row), &h))
                }),
            };
        }
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// 3. predicate
// ---------------------------------------------------------------------------------------------

fn predicate(c: &mut Criterion) {
    const BATCH: usize = 1024;
    let table = table();
    let msgs = decoded_inserts(BATCH as u64);
    let rows: Vec<Vec<Cell<'_>>> = msgs.iter().map(|m| cells(insert_tuple(m))).collect();
    let params = vec!["100".to_string(), "item-7".to_string()];
    let clauses = [
        ("simple_eq", "n = 42"),
        ("text_eq", "name = 'item-42'"),
        ("range_and", "n >= 100 AND n < 5000 AND id > 1000500"),
        ("param", "n > $1 AND name <> $2"),
        // General expressions (typed values per shape: slower than the plain comparisons).
        ("fn_lower", "lower(name) = 'item-42'"),
        ("arith", "n * 2 + 1 > 10001"),
        ("jsonb", "doc ->> 'kind' = 'order'"),
        ("timestamptz", "created >= '2026-11-15'"),
    ];

    let mut g = c.benchmark_group("predicate");
    configure(&mut g);
    g.throughput(Throughput::Elements(1));
    // One evaluation per iteration, walking a batch of different rows.
    let mut i = 0usize;
    g.bench_function("floor_read_value", |b| {
        b.iter(|| {
            i = (i + 1) % BATCH;
            let row = CellRow(black_box(&rows[i]));
            row.value(N_COL).is_some_and(|v| v.first() == Some(&b'4'))
        })
    });
    for (name, sql) in clauses {
        let wc = parse_where(sql, &table, &params).unwrap();
        let matched = rows.iter().filter(|r| wc.matches(&CellRow(r))).count();
        assert!(
            matched > 0 && matched < BATCH,
            "{sql}: {matched} of {BATCH}"
        );
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new(name, sql), &wc, |b, wc| {
            b.iter(|| {
                i = (i + 1) % BATCH;
                wc.matches(&CellRow(black_box(&rows[i])))
            })
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// 4. routing
// ---------------------------------------------------------------------------------------------

fn routing(c: &mut Criterion) {
    const SIZES: [usize; 4] = [1, 1_000, 10_000, 100_000];
    let max = SIZES[SIZES.len() - 1];
    let table = table();
    // Every shape is `n = k`; its term is what `WhereClause::route_term` gives. The clauses are
    // compiled for real (pg_query), once, and shared by every size.
    let clauses: Vec<WhereClause> = (0..max)
        .map(|k| parse_where(&format!("n = {k}"), &table, &[]).unwrap())
        .collect();
    let terms: Vec<_> = clauses.iter().map(WhereClause::route_term).collect();
    assert_eq!(
        clauses[7].eq_term(),
        Some((
            N_COL,
            Family::Integer,
            vec![index_key(Family::Integer, b"7").unwrap()]
        ))
    );

    let msgs = decoded_inserts(1);
    let base = cells(insert_tuple(&msgs[0]));

    let mut g = c.benchmark_group("routing");
    configure(&mut g);
    g.throughput(Throughput::Elements(1));
    for &shapes in &SIZES {
        let mut routes = TableRoutes::default();
        for (idx, term) in terms[..shapes].iter().enumerate() {
            routes.add(idx, term.clone());
        }
        // A change whose `n` hits exactly one shape (the middle one).
        let hit = (shapes / 2).to_string();
        let mut row = base.clone();
        row[N_COL] = Cell::Text(hit.as_bytes());
        let rows: [&[Cell<'_>]; 1] = [&row];
        let mut out = Vec::new();
        routes.candidates(&rows, &mut out);
        assert_eq!(out, vec![shapes / 2]);

        g.bench_with_input(BenchmarkId::new("candidates", shapes), &shapes, |b, _| {
            b.iter(|| {
                out.clear();
                routes.candidates(black_box(&rows), &mut out);
                out.len()
            })
        });
        // Routing followed by each candidate's where clause: the per-change filtering work.
        g.bench_with_input(
            BenchmarkId::new("candidates_and_match", shapes),
            &shapes,
            |b, _| {
                b.iter(|| {
                    out.clear();
                    routes.candidates(black_box(&rows), &mut out);
                    out.iter()
                        .filter(|&&idx| clauses[idx].matches(&CellRow(&row)))
                        .count()
                })
            },
        );
    }

    // Range shapes: shape k requires 10k <= n < 10k + 10 (an interval tree lookup).
    let range_clauses: Vec<WhereClause> = (0..max)
        .map(|k| {
            parse_where(
                &format!("n >= {} AND n < {}", 10 * k, 10 * k + 10),
                &table,
                &[],
            )
            .unwrap()
        })
        .collect();
    for &shapes in &SIZES {
        let mut routes = TableRoutes::default();
        for (idx, w) in range_clauses[..shapes].iter().enumerate() {
            routes.add(idx, w.route_term());
        }
        routes.prepare();
        let hit = (10 * (shapes / 2) + 3).to_string();
        let mut row = base.clone();
        row[N_COL] = Cell::Text(hit.as_bytes());
        let rows: [&[Cell<'_>]; 1] = [&row];
        let mut out = Vec::new();
        routes.candidates(&rows, &mut out);
        assert_eq!(out, vec![shapes / 2]);
        g.bench_with_input(
            BenchmarkId::new("range_candidates", shapes),
            &shapes,
            |b, _| {
                b.iter(|| {
                    out.clear();
                    routes.candidates(black_box(&rows), &mut out);
                    out.len()
                })
            },
        );
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// 5. storage
// ---------------------------------------------------------------------------------------------

const END: &[u8] = br#"{"headers":{"control":"snapshot-end"}}"#;

/// A change record of exactly `len` bytes.
fn record(i: u64, len: usize) -> Vec<u8> {
    let mut out = format!(r#"{{"key":"\"public\".\"items\"/\"{i}\"","value":{{"v":""#).into_bytes();
    out.resize(len - 3, b'x');
    out.extend_from_slice(b"\"}}");
    out
}

fn storage(c: &mut Criterion) {
    const RECORD: usize = 220;
    const BATCH: u64 = 100;
    let dir = tempfile::Builder::new()
        .prefix("ss-micro")
        .tempdir()
        .unwrap();
    let rec = record(0, RECORD);
    let mut g = c.benchmark_group("storage");
    configure(&mut g);
    g.sampling_mode(SamplingMode::Flat).sample_size(20);

    // Group commit of 100 records: `shapes` logs × `BATCH / shapes` records each, one commit.
    let store = FileStore::open(dir.path().join("append"), StoreConfig::default()).unwrap();
    g.throughput(Throughput::Bytes(BATCH * RECORD as u64));
    for shapes in [1u64, 100] {
        let logs: Vec<Arc<dyn ShapeLog>> = (0..shapes)
            .map(|i| store.create(&format!("a{shapes}-{i}"), b"m").unwrap())
            .collect();
        for log in &logs {
            log.finish_snapshot(END).unwrap();
        }
        let per_shape = BATCH / shapes;
        let mut tx = 0u64;
        g.bench_function(
            BenchmarkId::new(
                "append_commit_100x220B",
                format!("{shapes}_shapes_x_{per_shape}"),
            ),
            |b| {
                b.iter(|| {
                    tx += 1;
                    for log in &logs {
                        for op in 0..per_shape {
                            log.append_change(LogOffset::new(tx, op * 2), &rec).unwrap();
                        }
                    }
                    store.commit(&logs).unwrap();
                })
            },
        );
    }

    // One ~1 MB change chunk, read back (page cache).
    let cfg = StoreConfig {
        chunk_bytes_threshold: 1 << 20,
    };
    let store = FileStore::open(dir.path().join("read"), cfg).unwrap();
    let log = store.create("r", b"m").unwrap();
    log.finish_snapshot(END).unwrap();
    let logs = [Arc::clone(&log)];
    for tx in 1..=60u64 {
        for op in 0..100 {
            log.append_change(LogOffset::new(tx, op * 2), &rec).unwrap();
        }
        store.commit(&logs).unwrap();
    }
    let read = || match log.read(LogOffset::LAST_BEFORE_REAL).unwrap() {
        ReadResult::Chunk { entries, .. } => entries.iter().map(|e| e.len()).sum::<usize>(),
        ReadResult::NotReady => panic!("not ready"),
    };
    let chunk = read();
    assert!(chunk >= 900_000, "chunk of {chunk} bytes");
    g.throughput(Throughput::Bytes(chunk as u64));
    g.bench_function(
        BenchmarkId::new("read_change_chunk", format!("{}KB", chunk / 1000)),
        |b| b.iter(read),
    );
    g.finish();
}

/// A sealed chunk of ~1 MB: updates to `rows` rows in turn, 5 per transaction, as the writer
/// makes them (100 hot rows; or so many rows that none repeats).
fn update_chunk(rows: u64) -> Vec<(LogOffset, Bytes)> {
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut tx = 1_000u64;
    while bytes < 1 << 20 {
        tx += 1;
        for op in 0..5u64 {
            let k = (tx * 5 + op) % rows;
            let json = format!(
                r#"{{"key":"\"public\".\"items\"/\"{k}\"","value":{{"id":"{k}","n":"{tx}","note":"updated in {tx}"}},"headers":{{"operation":"update","relation":["public","items"],"lsn":"{tx}","op_position":{},"txids":[{tx}]{}}}}}"#,
                op * 2,
                if op == 4 { r#","last":true"# } else { "" }
            );
            bytes += json.len();
            out.push((LogOffset::new(tx, op * 2), Bytes::from(json)));
        }
    }
    out
}

fn compaction(c: &mut Criterion) {
    let chunk = update_chunk(100);
    let bytes: usize = chunk.iter().map(|(_, b)| b.len()).sum();
    let merged = shapesync::shape::compaction::compact_chunk(&chunk, false).unwrap();
    assert_eq!(merged.len(), 100, "one update per hot row");
    let distinct = update_chunk(u64::MAX);
    let kept = shapesync::shape::compaction::compact_chunk(&distinct, false).unwrap();
    assert_eq!(kept, distinct, "nothing to merge");
    let mut g = c.benchmark_group("compaction");
    configure(&mut g);
    g.throughput(Throughput::Bytes(bytes as u64));
    let id = format!("{}KB_{}_entries", bytes / 1000, chunk.len());
    g.bench_function(BenchmarkId::new("compact_chunk_100_hot_rows", &id), |b| {
        b.iter(|| shapesync::shape::compaction::compact_chunk(black_box(&chunk), false).unwrap())
    });
    let distinct_bytes: usize = distinct.iter().map(|(_, b)| b.len()).sum();
    g.throughput(Throughput::Bytes(distinct_bytes as u64));
    let distinct_id = format!("{}KB_{}_entries", distinct_bytes / 1000, distinct.len());
    g.bench_function(
        BenchmarkId::new("compact_chunk_no_repeats", &distinct_id),
        |b| {
            b.iter(|| {
                shapesync::shape::compaction::compact_chunk(black_box(&distinct), false).unwrap()
            })
        },
    );
    assert!(!shapesync::shape::compaction::may_merge(&distinct));
    g.bench_function(
        BenchmarkId::new("may_merge_no_repeats", &distinct_id),
        |b| b.iter(|| shapesync::shape::compaction::may_merge(black_box(&distinct))),
    );
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function(BenchmarkId::new("floor_parse_each_entry", &id), |b| {
        b.iter(|| {
            chunk
                .iter()
                .map(|(_, e)| {
                    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(e)
                        .unwrap()
                        .len()
                })
                .sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    pgoutput_decode,
    json_encode,
    predicate,
    routing,
    storage,
    compaction
);
criterion_main!(benches);
