//! Shapes with `IN (SELECT …)` subqueries over HTTP against a real Postgres: the wire elements
//! (tags, `active_conditions`, `removed_tags`, `is_move_in`, `move-in`/`move-out` events,
//! deletes placed before a move-out), and two materialisations of the log, the plain one the
//! official client's `Shape` makes (events ignored) and a tag-aware one, each checked to equal
//! Postgres' answer after every up-to-date. The log's invariants are checked on every message:
//! an insert only for an absent key, an update or delete only for a present one, constant tag
//! width, `removed_tags` byte-identical to tags sent before.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{connect, fresh_db, ShapeClient, TestServer};

/// A row as a tag-aware client holds it: value, tags, active conditions.
type Held = (serde_json::Map<String, Value>, Vec<String>, Vec<bool>);

/// A shape followed as the official client's `Shape` (plain) and as a tag-aware client.
struct Sub {
    client: ShapeClient,
    query: String,
    handle: Option<String>,
    offset: String,
    cursor: Option<String>,
    up_to_date: bool,
    /// key → value (plain: inserts, updates, deletes).
    plain: BTreeMap<String, serde_json::Map<String, Value>>,
    /// key → (value, tags, active conditions) (tag-aware).
    aware: BTreeMap<String, Held>,
    /// Every tag string sent.
    sent_tags: Vec<String>,
    width: Option<usize>,
    log: Vec<Value>,
    /// Accept 409 (start over), counting them.
    rotating: bool,
    rotations: usize,
}

fn slots(tag: &str) -> Vec<&str> {
    tag.split('/').collect()
}

impl Sub {
    fn new(client: ShapeClient, query: String) -> Sub {
        Sub {
            client,
            query,
            handle: None,
            offset: "-1".into(),
            cursor: None,
            up_to_date: false,
            plain: BTreeMap::new(),
            aware: BTreeMap::new(),
            sent_tags: Vec::new(),
            width: None,
            log: Vec::new(),
            rotating: false,
            rotations: 0,
        }
    }

    async fn poll(&mut self) {
        let mut q = format!("{}&offset={}", self.query, self.offset);
        if let Some(h) = &self.handle {
            q.push_str(&format!("&handle={h}"));
        }
        if self.up_to_date {
            q.push_str(&format!(
                "&live=true&cursor={}",
                self.cursor.clone().unwrap_or_default()
            ));
        }
        let r = self.client.get(&q).await;
        if r.status == 409 && self.rotating {
            // Must refetch: start over, as a client does.
            self.handle = None;
            self.offset = "-1".into();
            self.cursor = None;
            self.up_to_date = false;
            self.plain.clear();
            self.aware.clear();
            self.width = None;
            self.rotations += 1;
            return;
        }
        assert_eq!(r.status, 200, "GET {q} -> {} {}", r.status, r.body);
        self.handle = r.header("electric-handle").map(str::to_string);
        self.cursor = r.header("electric-cursor").map(str::to_string);
        for m in r.messages() {
            self.apply(&m);
        }
        self.offset = r.header("electric-offset").expect("offset").to_string();
        self.up_to_date = r.up_to_date();
    }

    fn note_tags(&mut self, h: &Value, m: &Value) -> (Vec<String>, Vec<bool>) {
        let tags: Vec<String> = h["tags"]
            .as_array()
            .unwrap_or_else(|| panic!("tags missing: {m}"))
            .iter()
            .map(|t| t.as_str().expect("tag").to_string())
            .collect();
        let ac: Vec<bool> = h["active_conditions"]
            .as_array()
            .unwrap_or_else(|| panic!("active_conditions missing: {m}"))
            .iter()
            .map(|b| b.as_bool().expect("bool"))
            .collect();
        assert!(!tags.is_empty(), "empty tags: {m}");
        for t in &tags {
            let w = slots(t).len();
            assert_eq!(*self.width.get_or_insert(w), w, "tag width changed: {m}");
            assert_eq!(w, ac.len(), "one condition per position: {m}");
        }
        for t in &tags {
            if !self.sent_tags.contains(t) {
                self.sent_tags.push(t.clone());
            }
        }
        (tags, ac)
    }

    fn visible(tags: &[String], ac: &[bool]) -> bool {
        tags.iter().any(|t| {
            slots(t)
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.is_empty())
                .all(|(p, _)| ac.get(p).copied().unwrap_or(false))
        })
    }

    fn apply(&mut self, m: &Value) {
        self.log.push(m.clone());
        let h = &m["headers"];
        if h.get("control").is_some() {
            return;
        }
        if let Some(event) = h.get("event").and_then(Value::as_str) {
            // Plain: ignored (the official client's Shape). Tag-aware: flip conditions.
            let patterns = h["patterns"].as_array().expect("patterns");
            assert!(h["txids"].is_array(), "txids: {m}");
            for p in patterns {
                let pos = p["pos"].as_u64().expect("pos") as usize;
                let value = p["value"].as_str().expect("value");
                let mut gone = Vec::new();
                for (k, (_, tags, ac)) in self.aware.iter_mut() {
                    if tags.iter().any(|t| slots(t).get(pos) == Some(&value)) {
                        ac[pos] = event == "move-in";
                        if !Self::visible(tags, ac) {
                            gone.push(k.clone());
                        }
                    }
                }
                for k in gone {
                    self.aware.remove(&k);
                }
            }
            return;
        }
        let key = m["key"].as_str().expect("key").to_string();
        let value = m["value"].as_object().cloned().unwrap_or_default();
        let op = h["operation"].as_str().expect("operation");
        let (tags, ac) = self.note_tags(h, m);
        match op {
            "insert" => {
                assert!(
                    !self.plain.contains_key(&key),
                    "insert of present {key}: {m}\nin {}\nits messages and the events:\n{}",
                    self.query,
                    self.history(&key)
                );
                self.plain.insert(key.clone(), value.clone());
                self.aware.insert(key, (value, tags, ac));
            }
            "update" => {
                let removed: Vec<String> = h["removed_tags"]
                    .as_array()
                    .unwrap_or_else(|| panic!("removed_tags missing: {m}"))
                    .iter()
                    .map(|t| t.as_str().expect("tag").to_string())
                    .collect();
                for t in &removed {
                    assert!(self.sent_tags.contains(t), "removed tag never sent: {m}");
                }
                let row = self
                    .plain
                    .get_mut(&key)
                    .unwrap_or_else(|| panic!("update of absent {key}: {m}"));
                row.extend(value.clone());
                if let Some((v, t, a)) = self.aware.get_mut(&key) {
                    v.extend(value);
                    t.retain(|x| !removed.contains(x));
                    for x in tags {
                        if !t.contains(&x) {
                            t.push(x);
                        }
                    }
                    *a = ac;
                }
            }
            "delete" => {
                assert!(
                    self.plain.remove(&key).is_some(),
                    "delete of absent {key}: {m}"
                );
                self.aware.remove(&key);
            }
            other => panic!("unknown operation {other}"),
        }
    }

    /// Poll until both materialisations equal `expected` (by `id`) at an up-to-date.
    async fn until_equal(&mut self, db: &tokio_postgres::Client, sql: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut first = true;
        loop {
            // A live poll waits for news: look first (the caller's change may move nothing).
            if !(first && self.up_to_date) {
                self.poll().await;
            }
            first = false;
            if !self.up_to_date {
                continue;
            }
            let want = ids(db, sql).await;
            let plain: Vec<i64> = self.plain.values().map(id_of).collect();
            let aware: Vec<i64> = self.aware.values().map(|(v, _, _)| id_of(v)).collect();
            let (mut plain, mut aware) = (plain, aware);
            plain.sort_unstable();
            aware.sort_unstable();
            if plain == want && aware == want {
                return;
            }
            if Instant::now() >= deadline {
                // The messages of the rows that differ, and every event.
                let odd: Vec<String> = want
                    .iter()
                    .chain(&plain)
                    .chain(&aware)
                    .filter(|i| !(want.contains(i) && plain.contains(i) && aware.contains(i)))
                    .map(|i| format!("\"{i}\""))
                    .collect();
                let log: Vec<String> = self
                    .log
                    .iter()
                    .filter(|m| {
                        m["headers"].get("event").is_some()
                            || m["headers"].get("control").is_some()
                            || m["key"]
                                .as_str()
                                .is_some_and(|k| odd.iter().any(|o| k.ends_with(o.as_str())))
                    })
                    .map(Value::to_string)
                    .collect();
                let state = db
                    .query(
                        "SELECT (SELECT string_agg(row_to_json(t)::text, ' ') FROM tasks t \
                         WHERE id = ANY($1)), (SELECT string_agg(row_to_json(p)::text, ' ' ORDER BY id) \
                         FROM projects p), (SELECT string_agg(row_to_json(m)::text, ' ') FROM members m)",
                        &[&want
                            .iter()
                            .chain(&plain)
                            .map(|i| *i as i32)
                            .collect::<Vec<i32>>()],
                    )
                    .await
                    .map(|r| {
                        (0..3)
                            .map(|i| r[0].get::<_, Option<String>>(i).unwrap_or_default())
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_default();
                panic!(
                    "rows differ for {}: Postgres {want:?}, plain {plain:?}, tag-aware {aware:?}\nstate: {state}\nlog:\n{}",
                    self.query,
                    log.join("\n")
                );
            }
        }
    }
}

impl Sub {
    /// Poll until a message after `from` satisfies `f`.
    async fn until_message(&mut self, from: usize, f: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log[from.min(self.log.len())..].iter().any(&f) {
            assert!(
                Instant::now() < deadline,
                "no such message: {:?}",
                &self.log[from..]
            );
            self.poll().await;
        }
    }
}

impl Sub {
    /// The messages of `key` and every event, in log order.
    fn history(&self, key: &str) -> String {
        self.log
            .iter()
            .filter(|m| m["key"] == key || m["headers"].get("event").is_some())
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn id_of(v: &serde_json::Map<String, Value>) -> i64 {
    v["id"].as_str().and_then(|s| s.parse().ok()).expect("id")
}

async fn ids(db: &tokio_postgres::Client, sql: &str) -> Vec<i64> {
    let rows = db
        .query(&format!("SELECT id::int8 FROM ({sql}) q ORDER BY 1"), &[])
        .await
        .expect("expected rows");
    rows.iter().map(|r| r.get(0)).collect()
}

fn q(table: &str, clause: &str, params: &[&str]) -> String {
    let mut q = format!("table={table}&where=");
    q.extend(form_urlencoded::byte_serialize(clause.as_bytes()));
    for (i, p) in params.iter().enumerate() {
        q.push_str(&format!("&params[{}]={p}", i + 1));
    }
    q
}

const SCHEMA: &str = "
CREATE TABLE projects (id int PRIMARY KEY, team_id int);
CREATE TABLE tasks (id int PRIMARY KEY, project_id int, title text NOT NULL);
INSERT INTO projects VALUES (1, 7), (2, 8);
INSERT INTO tasks VALUES (10, 1, 'a'), (11, 2, 'b');";

/// A fresh database with `SCHEMA` and a server on it.
async fn start(tag: &str) -> (tokio_postgres::Client, TestServer) {
    let url = fresh_db(tag).await;
    let db = connect(&url).await;
    db.batch_execute(SCHEMA).await.expect("schema");
    let server = TestServer::start(&url).await;
    (db, server)
}

fn last_with(log: &[Value], f: impl Fn(&Value) -> bool) -> Vec<&Value> {
    log.iter().filter(|m| f(m)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_in_and_out_follow_postgres_with_the_reference_wire_elements() {
    let (db, server) = start("subq").await;
    let clause = "project_id IN (SELECT id FROM projects WHERE team_id = $1)";
    let expected =
        "SELECT id FROM tasks WHERE project_id IN (SELECT id FROM projects WHERE team_id = 7)";
    let mut s = Sub::new(server.client(), q("tasks", clause, &["7"]));
    s.until_equal(&db, expected).await;
    // (a) The snapshot row carries one tag (a 32-hex hash) and its condition.
    let row = s
        .log
        .iter()
        .find(|m| m["key"].is_string())
        .expect("snapshot row")
        .clone();
    let h1 = row["headers"]["tags"][0].as_str().expect("tag").to_string();
    assert_eq!(h1.len(), 32, "{row}");
    assert!(h1.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        row["headers"]["active_conditions"],
        serde_json::json!([true])
    );

    // (b) An inner update moves a row in: the event, the row marked is_move_in, snapshot-end.
    let before = s.log.len();
    db.batch_execute("UPDATE projects SET team_id = 7 WHERE id = 2")
        .await
        .expect("move in");
    s.until_equal(&db, expected).await;
    let new = &s.log[before..];
    let ev = last_with(new, |m| m["headers"]["event"] == "move-in");
    assert_eq!(ev.len(), 1, "{new:?}");
    let h2 = ev[0]["headers"]["patterns"][0]["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(ev[0]["headers"]["patterns"][0]["pos"], 0);
    let moved = last_with(new, |m| m["headers"]["is_move_in"] == true);
    assert_eq!(moved.len(), 1, "{new:?}");
    assert_eq!(moved[0]["value"]["id"], "11");
    assert_eq!(moved[0]["headers"]["tags"][0], h2.as_str());
    assert!(moved[0]["headers"].get("lsn").is_none());
    assert!(new
        .iter()
        .any(|m| m["headers"]["control"] == "snapshot-end"));

    // (c) An outer row changes its link: update with the new tag and the old one removed.
    let before = s.log.len();
    db.batch_execute("UPDATE tasks SET project_id = 2 WHERE id = 10")
        .await
        .expect("relink");
    s.until_message(before, |m| m["headers"]["operation"] == "update")
        .await;
    s.until_equal(&db, expected).await;
    let up = last_with(&s.log[before..], |m| m["headers"]["operation"] == "update");
    assert_eq!(up.len(), 1);
    assert_eq!(up[0]["headers"]["tags"], serde_json::json!([h2]));
    assert_eq!(up[0]["headers"]["removed_tags"], serde_json::json!([h1]));

    // (d) Moves out: the first removes nothing; the second deletes both rows, then the event.
    let before = s.log.len();
    db.batch_execute("UPDATE projects SET team_id = 8 WHERE id = 1")
        .await
        .expect("out 1");
    s.until_message(before, |m| m["headers"]["event"] == "move-out")
        .await;
    s.until_equal(&db, expected).await;
    assert!(s.log[before..]
        .iter()
        .any(|m| m["headers"]["event"] == "move-out"));
    let before = s.log.len();
    db.batch_execute("UPDATE projects SET team_id = 8 WHERE id = 2")
        .await
        .expect("out 2");
    s.until_equal(&db, expected).await;
    let new: Vec<&Value> = s.log[before..].iter().collect();
    let del = new
        .iter()
        .position(|m| m["headers"]["operation"] == "delete");
    let out = new.iter().position(|m| m["headers"]["event"] == "move-out");
    assert!(
        del.is_some() && out.is_some() && del < out,
        "deletes before the event: {new:?}"
    );

    // §5.5.1: inner and outer change in one transaction: the new row exactly once.
    db.batch_execute(
        "BEGIN; UPDATE projects SET team_id = 7 WHERE id = 2; \
         INSERT INTO tasks VALUES (20, 2, 'x'); COMMIT",
    )
    .await
    .expect("same transaction in");
    s.until_equal(&db, expected).await;
    // §5.5.2: out and an outer update in one transaction.
    db.batch_execute(
        "BEGIN; UPDATE projects SET team_id = 9 WHERE id = 2; \
         UPDATE tasks SET title = 'y' WHERE project_id = 2; COMMIT",
    )
    .await
    .expect("same transaction out");
    s.until_equal(&db, expected).await;
    // A value in then out within one transaction: no event at all.
    let before = s.log.len();
    db.batch_execute(
        "BEGIN; UPDATE projects SET team_id = 7 WHERE id = 1; \
         UPDATE projects SET team_id = 8 WHERE id = 1; COMMIT",
    )
    .await
    .expect("oscillation");
    db.batch_execute("INSERT INTO tasks VALUES (30, 3, 'z'); INSERT INTO projects VALUES (3, 7)")
        .await
        .expect("marker");
    s.until_message(before, |m| m["value"]["id"] == "30").await;
    s.until_equal(&db, expected).await;
    let events: Vec<&Value> = s.log[before..]
        .iter()
        .filter(|m| m["headers"].get("event").is_some())
        .collect();
    assert_eq!(events.len(), 1, "only the marker's move-in: {events:?}");
    assert_eq!(events[0]["headers"]["event"], "move-in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_in_or_and_row_forms_follow_postgres() {
    let url = fresh_db("subq_forms").await;
    let db = connect(&url).await;
    db.batch_execute(SCHEMA).await.expect("schema");
    db.batch_execute(
        "CREATE TABLE members (user_id int, team_id int, PRIMARY KEY (user_id, team_id));
         INSERT INTO members VALUES (10, 1), (11, 2);
         ALTER TABLE tasks ADD COLUMN owner int; UPDATE tasks SET owner = id;",
    )
    .await
    .expect("members");
    let server = TestServer::start(&url).await;
    let cases = [
        (
            "project_id NOT IN (SELECT id FROM projects WHERE team_id = 7)",
            "project_id NOT IN (SELECT id FROM projects WHERE team_id = 7)",
        ),
        (
            "project_id IN (SELECT id FROM projects WHERE team_id = 7) OR title = 'pinned'",
            "project_id IN (SELECT id FROM projects WHERE team_id = 7) OR title = 'pinned'",
        ),
        (
            "(owner, project_id) IN (SELECT user_id, team_id FROM members) AND title <> 'skip'",
            "(owner, project_id) IN (SELECT user_id, team_id FROM members) AND title <> 'skip'",
        ),
    ];
    let mut subs = Vec::new();
    for (clause, _) in &cases {
        let mut s = Sub::new(server.client(), q("tasks", clause, &[]));
        s.poll().await;
        subs.push(s);
    }
    let steps = [
        "UPDATE projects SET team_id = 7 WHERE id = 2",
        "INSERT INTO tasks VALUES (12, 2, 'pinned', 12), (13, 5, 'pinned', 13)",
        "UPDATE projects SET team_id = 8 WHERE id = 1",
        "INSERT INTO members VALUES (12, 2), (13, 5)",
        "DELETE FROM members WHERE user_id = 10",
        "BEGIN; INSERT INTO projects VALUES (5, 7); UPDATE tasks SET title = 'skip' WHERE id = 13; COMMIT",
        "UPDATE projects SET team_id = NULL WHERE id = 2",
        "INSERT INTO projects VALUES (6, 7), (7, 7); UPDATE tasks SET project_id = 6 WHERE id = 11",
        "DELETE FROM projects WHERE team_id = 7",
    ];
    for (s, (_, sql)) in subs.iter_mut().zip(&cases) {
        s.until_equal(&db, &format!("SELECT id FROM tasks WHERE {sql}"))
            .await;
    }
    for step in steps {
        db.batch_execute(step)
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
        for (s, (_, sql)) in subs.iter_mut().zip(&cases) {
            s.until_equal(&db, &format!("SELECT id FROM tasks WHERE {sql}"))
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_subqueries_get_the_reference_errors() {
    let (_db, server) = start("subq_err").await;
    let client = server.client();
    for (clause, field, text) in [
        (
            "project_id IN (SELECT id FROM nowhere)",
            "table",
            "Table \"public\".\"nowhere\" does not exist. If the table name contains capitals or special characters you must quote it.",
        ),
        (
            "EXISTS (SELECT id FROM projects)",
            "where",
            "At location 0: only `value IN (SELECT ...)` sublinks are supported right now",
        ),
        (
            "project_id IN (SELECT id FROM projects) OR NOT project_id IN (SELECT id FROM projects)",
            "where",
            "a subquery dependency cannot be used with both positive and negative polarity in the same filter",
        ),
        (
            "project_id IN (SELECT DISTINCT id FROM projects)",
            "where",
            "SELECT statement must not contain any clauses",
        ),
    ] {
        let r = client
            .get(&format!("{}&offset=-1", q("tasks", clause, &[])))
            .await;
        assert_eq!(r.status, 400, "{clause}: {}", r.body);
        assert_eq!(r.json()["errors"][field][0], text, "{clause}: {}", r.body);
    }
    // A subquery whose clause fails on some row is the request's mistake: 400, not 503.
    let r = client
        .get(&format!(
            "{}&offset=-1",
            q(
                "tasks",
                "project_id IN (SELECT id FROM projects WHERE 1 / (team_id - 7) > 0)",
                &[]
            )
        ))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("division by zero"), "{}", r.body);
}

// The oracle's seeded generator, with a value that is sometimes NULL.
use crate::oracle::Rng;

trait Draw {
    fn under(&mut self, n: u64) -> u64;
    fn maybe_null(&mut self, n: u64) -> String;
}

impl Draw for Rng {
    fn under(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn maybe_null(&mut self, n: u64) -> String {
        if self.under(8) == 0 {
            "NULL".into()
        } else {
            (1 + self.under(n)).to_string()
        }
    }
}

/// A random clause over `tasks` with at least one subquery (as the server gets it, and with
/// its parameters inlined for Postgres).
fn random_clause(rng: &mut Rng) -> (String, String, Vec<String>) {
    let team = (1 + rng.under(4)).to_string();
    let subs = [
        "project_id IN (SELECT id FROM projects WHERE team_id = $1)",
        "project_id NOT IN (SELECT id FROM projects WHERE team_id = $1)",
        "(owner, project_id) IN (SELECT user_id, team_id FROM members)",
        "project_id IN (SELECT id FROM projects WHERE name LIKE 'a%' OR team_id IS NULL)",
        "owner NOT IN (SELECT user_id FROM members WHERE team_id <> 2)",
        // Nested: a project's team among a member's teams; and three levels.
        "project_id IN (SELECT id FROM projects WHERE team_id IN (SELECT team_id FROM members WHERE user_id = $1))",
        "project_id IN (SELECT id FROM projects WHERE team_id IN (SELECT team_id FROM members WHERE user_id IN (SELECT owner FROM tasks WHERE title = 't2')))",
        "owner IN (SELECT user_id FROM members WHERE team_id NOT IN (SELECT team_id FROM projects WHERE name LIKE 'a%' AND team_id IS NOT NULL))",
    ];
    let plains = [
        "title = 't1'",
        "owner < 3",
        "project_id IS NULL",
        "title <> 't0'",
    ];
    let first = subs[rng.under(subs.len() as u64) as usize].to_string();
    let mut clause = first.clone();
    for _ in 0..rng.under(3) {
        let atom = if rng.under(3) == 0 {
            // The same subquery again keeps one polarity; another may be anything.
            subs[rng.under(subs.len() as u64) as usize].to_string()
        } else {
            plains[rng.under(plains.len() as u64) as usize].to_string()
        };
        let op = if rng.under(2) == 0 { "AND" } else { "OR" };
        clause = format!("({clause}) {op} ({atom})");
    }
    if rng.under(5) == 0 {
        clause = format!("NOT ({clause})");
    }
    let pg = clause.replace("$1", &team);
    let params = if clause.contains("$1") {
        vec![team]
    } else {
        Vec::new()
    };
    (clause, pg, params)
}

fn random_txn(rng: &mut Rng, next_id: &mut u64) -> String {
    let mut stmts = Vec::new();
    for _ in 0..1 + rng.under(4) {
        let s = match rng.under(10) {
            0 | 1 => {
                *next_id += 1;
                format!(
                    "INSERT INTO tasks VALUES ({}, {}, {}, 't{}')",
                    *next_id,
                    rng.maybe_null(6),
                    1 + rng.under(4),
                    rng.under(3)
                )
            }
            2 => format!(
                "UPDATE tasks SET project_id = {} WHERE id % 7 = {}",
                rng.maybe_null(6),
                rng.under(7)
            ),
            3 => format!(
                "UPDATE tasks SET title = 't{}', owner = {} WHERE id % 5 = {}",
                rng.under(3),
                1 + rng.under(4),
                rng.under(5)
            ),
            4 => format!("DELETE FROM tasks WHERE id % 11 = {}", rng.under(11)),
            5 | 6 => format!(
                "UPDATE projects SET team_id = {} WHERE id = {}",
                rng.maybe_null(4),
                1 + rng.under(6)
            ),
            7 => format!(
                "UPDATE projects SET name = '{}' WHERE id = {}",
                if rng.under(2) == 0 { "alpha" } else { "beta" },
                1 + rng.under(6)
            ),
            8 => format!(
                "INSERT INTO members VALUES ({}, {}) ON CONFLICT DO NOTHING",
                1 + rng.under(4),
                1 + rng.under(6)
            ),
            _ => format!(
                "DELETE FROM members WHERE user_id = {} AND team_id = {}",
                1 + rng.under(4),
                1 + rng.under(6)
            ),
        };
        stmts.push(s);
    }
    format!("BEGIN; {}; COMMIT", stmts.join("; "))
}

/// Random subquery clauses followed through random transactions that change the inner and
/// outer tables (together too): after every batch, each shape's plain and tag-aware
/// materialisations equal Postgres. Time-budgeted (`SHAPESYNC_SUBQ_SECS`, default 15), seeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_moves_end_equal_to_postgres() {
    let seed = crate::oracle::env_seed("SHAPESYNC_SUBQ_SEED");
    let secs = crate::oracle::env_number("SHAPESYNC_SUBQ_SECS", 15);
    println!("subquery moves: seed {seed} (replay: SHAPESYNC_SUBQ_SEED={seed})");
    let mut rng = Rng(seed);
    let url = fresh_db("subq_random").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE projects (id int PRIMARY KEY, team_id int, name text);
         CREATE TABLE tasks (id int PRIMARY KEY, project_id int, owner int, title text);
         CREATE TABLE members (user_id int, team_id int, PRIMARY KEY (user_id, team_id));
         INSERT INTO projects SELECT g, 1 + g % 4, CASE WHEN g % 2 = 0 THEN 'alpha' ELSE 'beta' END
           FROM generate_series(1, 6) g;
         INSERT INTO tasks SELECT g, 1 + g % 6, 1 + g % 4, 't' || (g % 3) FROM generate_series(1, 30) g;
         INSERT INTO members VALUES (1, 1), (2, 2), (3, 3), (4, 4), (1, 5);",
    )
    .await
    .expect("schema");
    let server = TestServer::start(&url).await;
    let mut shapes = Vec::new();
    while shapes.len() < 6 {
        let (clause, pg, params) = random_clause(&mut rng);
        let p: Vec<&str> = params.iter().map(String::as_str).collect();
        let mut s = Sub::new(server.client(), q("tasks", &clause, &p));
        let probe = server.client().get(&format!("{}&offset=-1", s.query)).await;
        if probe.status == 400 {
            // Both polarities of one subquery: refused, as by the reference.
            assert!(probe.body.contains("polarity"), "{clause}: {}", probe.body);
            continue;
        }
        s.until_equal(&db, &format!("SELECT id FROM tasks WHERE {pg}"))
            .await;
        shapes.push((s, clause, pg));
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut next_id = 1000;
    let (mut batches, mut txns) = (0, 0);
    while Instant::now() < deadline {
        for _ in 0..1 + rng.under(5) {
            let txn = random_txn(&mut rng, &mut next_id);
            db.batch_execute(&txn)
                .await
                .unwrap_or_else(|e| panic!("{txn}: {e}"));
            txns += 1;
        }
        batches += 1;
        for (s, clause, pg) in shapes.iter_mut() {
            println!("batch {batches}: {clause}");
            s.until_equal(&db, &format!("SELECT id FROM tasks WHERE {pg}"))
                .await;
        }
    }
    let moved = shapes
        .iter()
        .flat_map(|(s, _, _)| s.log.iter())
        .filter(|m| m["headers"].get("event").is_some())
        .count();
    println!(
        "subquery moves: seed {seed}: {batches} batches, {txns} transactions, {moved} move events"
    );
    assert!(moved > 0, "the random transactions moved something");
}

/// With `--subquery-move-out-deletes=false` a move-out is the event alone, as the reference
/// writes it: a tag-aware client still follows Postgres, the official client's `Shape` keeps
/// rows that left (which is why the deletes are on by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_deletes_a_move_out_is_the_event_alone() {
    let url = fresh_db("subq_ref").await;
    let db = connect(&url).await;
    db.batch_execute(SCHEMA).await.expect("schema");
    let server = TestServer::start_with(&url, |c| c.subquery_move_out_deletes = false).await;
    let clause = "project_id IN (SELECT id FROM projects WHERE team_id = $1)";
    let mut s = Sub::new(server.client(), q("tasks", clause, &["7"]));
    s.until_equal(&db, "SELECT 10 AS id").await;
    let before = s.log.len();
    db.batch_execute("UPDATE projects SET team_id = 8 WHERE id = 1")
        .await
        .expect("move out");
    s.until_message(before, |m| m["headers"]["event"] == "move-out")
        .await;
    assert!(
        !s.log[before..]
            .iter()
            .any(|m| m["headers"]["operation"] == "delete"),
        "{:?}",
        &s.log[before..]
    );
    assert!(s.aware.is_empty(), "the tag-aware client dropped the row");
    assert_eq!(s.plain.len(), 1, "the plain client keeps it");
}

/// A restart keeps subquery shapes: their clients carry on with their handle and offset (no
/// 409), and what moved while the server was down reaches them (the shape is brought up to
/// date in place on start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_subquery_shapes_without_409() {
    let url = fresh_db("subq_restart").await;
    let db = connect(&url).await;
    db.batch_execute(SCHEMA).await.expect("schema");
    db.batch_execute(
        "INSERT INTO projects VALUES (3, 7); INSERT INTO tasks VALUES (12, 3, 'c'), (13, 2, 'd')",
    )
    .await
    .expect("more");
    let mut server = TestServer::start(&url).await;
    let clause = "project_id IN (SELECT id FROM projects WHERE team_id = $1) OR title = 'pinned'";
    let expected = "SELECT id FROM tasks WHERE project_id IN (SELECT id FROM projects WHERE team_id = 7) OR title = 'pinned'";
    let mut s = Sub::new(server.client(), q("tasks", clause, &["7"]));
    s.until_equal(&db, expected).await;
    let handle = s.handle.clone();
    for round in 0..2 {
        server.stop().await;
        // While it is down: values move in and out, rows change with them.
        db.batch_execute(&format!(
            "UPDATE projects SET team_id = {} WHERE id = 1; \
             UPDATE projects SET team_id = 7 WHERE id = 2; \
             UPDATE tasks SET title = 'pinned' WHERE id = 12; \
             INSERT INTO tasks VALUES ({}, 2, 'new'); \
             UPDATE tasks SET project_id = 3 WHERE id = 13",
            8 + round,
            20 + round
        ))
        .await
        .expect("changes while down");
        server.restart().await;
        s.client = server.client();
        s.until_equal(&db, expected).await;
        assert_eq!(s.handle, handle, "same handle after the restart");
        // And it keeps following.
        db.batch_execute("UPDATE projects SET team_id = 9 WHERE id = 2; UPDATE projects SET team_id = 7 WHERE id = 1")
            .await
            .expect("after");
        s.until_equal(&db, expected).await;
    }
}

/// `columns` without the link column, `log=changes_only`, a subset, and a truncated inner
/// table (409 for its shapes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_changes_only_subsets_and_truncate() {
    let (db, server) = start("subq_modes").await;
    let clause = "project_id IN (SELECT id FROM projects WHERE team_id = $1)";
    let expected =
        "SELECT id FROM tasks WHERE project_id IN (SELECT id FROM projects WHERE team_id = 7)";
    // The link column is not selected: tags are computed from the whole row.
    let mut narrow = Sub::new(
        server.client(),
        format!("{}&columns=id,title", q("tasks", clause, &["7"])),
    );
    narrow.until_equal(&db, expected).await;
    let row = narrow
        .log
        .iter()
        .find(|m| m["key"].is_string())
        .expect("row")
        .clone();
    assert!(row["value"].get("project_id").is_none(), "{row}");
    assert_eq!(row["headers"]["tags"][0].as_str().map(str::len), Some(32));
    // changes_only: nothing at first, then the rows that move in.
    let mut changes = Sub::new(
        server.client(),
        format!("{}&log=changes_only", q("tasks", clause, &["7"])),
    );
    changes.poll().await;
    changes.poll().await;
    assert!(changes.plain.is_empty());
    db.batch_execute("UPDATE projects SET team_id = 7 WHERE id = 2")
        .await
        .expect("move in");
    narrow.until_equal(&db, expected).await;
    changes
        .until_message(0, |m| m["headers"]["is_move_in"] == true)
        .await;
    assert_eq!(changes.plain.len(), 1, "task 11 moved in");
    // A subset of a subquery shape carries tags too.
    let r = server
        .client()
        .get(&format!(
            "{}&offset=-1&subset__where={}",
            q("tasks", clause, &["7"]),
            form_urlencoded::byte_serialize(b"id > 0").collect::<String>()
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let data = r.json()["data"].as_array().cloned().expect("data");
    assert_eq!(data.len(), 2, "{}", r.body);
    assert!(data
        .iter()
        .all(|m| m["headers"]["tags"][0].as_str().map(str::len) == Some(32)));
    // The inner table truncated: the shape's clients get 409.
    db.batch_execute("TRUNCATE projects")
        .await
        .expect("truncate");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut q2 = format!("{}&offset={}", narrow.query, narrow.offset);
        if let Some(h) = &narrow.handle {
            q2.push_str(&format!("&handle={h}"));
        }
        let r = server.client().get(&q2).await;
        if r.status == 409 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 409 after the truncate: {}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        narrow.offset = r
            .header("electric-offset")
            .unwrap_or(&narrow.offset)
            .to_string();
    }
}

/// A fresh database with `projects`, `tasks` and `members` filled (and `extra` run).
async fn three_tables(tag: &str, extra: &str) -> (String, tokio_postgres::Client) {
    let url = fresh_db(tag).await;
    let db = connect(&url).await;
    db.batch_execute(&format!(
        "CREATE TABLE projects (id int PRIMARY KEY, team_id int, name text);
         CREATE TABLE tasks (id int PRIMARY KEY, project_id int, owner int, title text);
         CREATE TABLE members (user_id int, team_id int, PRIMARY KEY (user_id, team_id));
         INSERT INTO projects SELECT g, 1 + g % 4, 'alpha' FROM generate_series(1, 6) g;
         INSERT INTO tasks SELECT g, 1 + g % 6, 1 + g % 4, 't' || (g % 3) FROM generate_series(1, 30) g;
         {extra}"
    ))
    .await
    .expect("schema");
    (url, db)
}

/// Random transactions (`random_txn`), one every ~2 ms, until `stop`.
fn random_load(
    url: &str,
    seed: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let url = url.to_string();
    tokio::spawn(async move {
        let db = connect(&url).await;
        let mut rng = Rng(seed);
        let mut next_id = 1000;
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            let txn = random_txn(&mut rng, &mut next_id);
            db.batch_execute(&txn).await.expect("load");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

/// `kill -9` of the real binary while random transactions move values in and out (move-ins
/// in flight included), restarted on the same storage three times: the clients of a subquery
/// shape never get a 409 and end equal to Postgres (plain and tag-aware).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_moves_costs_no_409() {
    use crate::support::{free_port, ServerProcess};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let (url, db) = three_tables("subq_kill", "").await;
    let storage = tempfile::tempdir().expect("storage");
    let spawn = |url: String, dir: std::path::PathBuf| async move {
        let port = free_port();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_shapesync"));
        cmd.args([
            "serve",
            "--insecure",
            "--database-url",
            &url,
            "--stream-id",
            "subqkill",
        ])
        .arg("--storage-dir")
        .arg(&dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--long-poll-timeout-ms", "1000"])
        .env("RUST_LOG", "warn");
        ServerProcess::spawn(cmd, port, Duration::from_secs(30)).await
    };
    let mut server = spawn(url.clone(), storage.path().to_path_buf()).await;
    let clause = "project_id IN (SELECT id FROM projects WHERE team_id = $1) OR title = 't1'";
    let expected = "SELECT id FROM tasks WHERE project_id IN (SELECT id FROM projects WHERE team_id = 2) OR title = 't1'";
    let mut s = Sub::new(server.client.clone(), q("tasks", clause, &["2"]));
    s.until_equal(&db, expected).await;
    let handle = s.handle.clone();
    // And a nested one (a project's team among a member's teams).
    let nested = "project_id IN (SELECT id FROM projects WHERE team_id IN (SELECT team_id FROM members WHERE user_id = $1))";
    let nested_expected = "SELECT id FROM tasks WHERE project_id IN (SELECT id FROM projects WHERE team_id IN (SELECT team_id FROM members WHERE user_id = 1))";
    let mut n = Sub::new(server.client.clone(), q("tasks", nested, &["1"]));
    n.until_equal(&db, nested_expected).await;
    // A continuous load of random transactions from another connection.
    let stop = Arc::new(AtomicBool::new(false));
    let load = random_load(&url, 7, Arc::clone(&stop));
    for round in 0..3u64 {
        // Follow for a while, then kill at that moment.
        let until = Instant::now() + Duration::from_millis(400 + 300 * round);
        while Instant::now() < until {
            s.poll().await;
            n.poll().await;
        }
        server.child.kill().expect("SIGKILL");
        let _ = server.child.wait();
        server = spawn(url.clone(), storage.path().to_path_buf()).await;
        s.client = server.client.clone();
        n.client = server.client.clone();
    }
    stop.store(true, Ordering::Release);
    load.await.expect("load task");
    s.until_equal(&db, expected).await;
    n.until_equal(&db, nested_expected).await;
    assert_eq!(s.handle, handle, "the same shape throughout");
}

/// Shapes created while random transactions keep moving their subqueries' values: a move
/// seen while a shape's snapshot is being taken rotates it (409), and each shape, refetched as
/// a client does, ends equal to Postgres. (Creations were starved here once: the writer took
/// one command per group commit, and move-in results queued by the hundred.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shapes_created_while_values_move_follow_postgres() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let (url, db) = three_tables(
        "subq_racing",
        "INSERT INTO members VALUES (1, 1), (2, 2), (1, 3);",
    )
    .await;
    let server = TestServer::start(&url).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = random_load(&url, 11, Arc::clone(&stop));
    let mut shapes = Vec::new();
    for team in 1..=4 {
        for clause in [
            format!("project_id IN (SELECT id FROM projects WHERE team_id = {team})"),
            format!("project_id IN (SELECT id FROM projects WHERE team_id IN (SELECT team_id FROM members WHERE user_id = {team}))"),
        ] {
            let mut s = Sub::new(server.client(), q("tasks", &clause, &[]));
            s.rotating = true;
            s.poll().await;
            shapes.push((s, clause));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for _ in 0..3 {
        for (s, _) in shapes.iter_mut() {
            s.poll().await;
        }
    }
    stop.store(true, Ordering::Release);
    load.await.expect("load task");
    let mut rotations = 0;
    for (s, clause) in shapes.iter_mut() {
        s.until_equal(&db, &format!("SELECT id FROM tasks WHERE {clause}"))
            .await;
        rotations += s.rotations;
    }
    println!("shapes created while values move: {rotations} rotations");
}
