#!/usr/bin/env node
// End-to-end test: the official ElectricSQL TypeScript client (@electric-sql/client,
// pinned in package.json) against a running shapesync server.
//
// Creates a fresh table, seeds it, syncs it through `ShapeStream` + `Shape`, checks the initial
// snapshot, then applies seeded random mutations (inserts, partial updates with NULLs and awkward
// text, primary-key changes, deletes, multi-statement transactions, rolled-back transactions,
// no-op updates) and waits until the client's materialized rows equal `SELECT *` in Postgres,
// compared after the client's own type parsing. Exit code 0 = pass, 1 = fail, 2 = bad config.
// Configuration: environment variables, see README.md in this directory.

import { randomBytes } from "node:crypto";
import process from "node:process";
import pg from "pg";

// ---------------------------------------------------------------------------------------------
// Configuration

const env = process.env;
const DRY_DB = env.E2E_DRY_DB === "1";
const LIVE_SSE = env.E2E_LIVE_SSE === "1";
const VERBOSE = env.E2E_VERBOSE === "1";
const WHERE = (env.E2E_WHERE ?? "").trim() || null;
// A partitioned table (two levels) with shapes on the root and on partitions at once.
const PARTITIONED = env.E2E_PARTITIONED === "1";
const MUTATIONS = intEnv("E2E_MUTATIONS", 1000);
const TIMEOUT_MS = intEnv("E2E_TIMEOUT_MS", 120000);
const INITIAL_ROWS = intEnv("E2E_INITIAL_ROWS", 50);
const SEED = env.E2E_SEED ? seedFrom(env.E2E_SEED) : randomBytes(4).readUInt32LE(0);
const TABLE = env.E2E_TABLE || `e2e_items_${randomBytes(4).toString("hex")}`;
const DATABASE_URL = env.DATABASE_URL;
const SHAPE_URL = env.SHAPESYNC_URL ? `${env.SHAPESYNC_URL.replace(/\/+$/, "")}/v1/shape` : null;

const T0 = Date.now();
// Keep a few seconds of the overall budget for cleanup (abort streams, drop the table).
const CLEANUP_RESERVE_MS = Math.min(5000, Math.floor(TIMEOUT_MS / 10));
const WORK_DEADLINE = T0 + TIMEOUT_MS - CLEANUP_RESERVE_MS;
const POLL_MS = 50;

function intEnv(name, dflt) {
  const raw = env[name];
  if (raw === undefined || raw === "") return dflt;
  const v = Number(raw);
  if (!Number.isInteger(v) || v < 0) configError(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  return v;
}

function seedFrom(raw) {
  if (/^\d+$/.test(raw)) return Number(BigInt(raw) & 0xffffffffn);
  let h = 0x811c9dc5; // FNV-1a of any other string
  for (const c of Buffer.from(raw)) h = Math.imul(h ^ c, 0x01000193) >>> 0;
  return h;
}

function configError(msg) {
  console.error(`e2e: CONFIG ERROR: ${msg}`);
  process.exit(2);
}

// ---------------------------------------------------------------------------------------------
// Logging, failure, deadline

const log = (msg) => console.log(`e2e: ${msg}`);
const elapsed = () => `${((Date.now() - T0) / 1000).toFixed(1)}s`;

class TestFailure extends Error {}
const fail = (msg) => {
  throw new TestFailure(msg);
};

function replayHint() {
  const parts = [`E2E_SEED=${SEED}`, `E2E_MUTATIONS=${MUTATIONS}`];
  if (LIVE_SSE) parts.push("E2E_LIVE_SSE=1");
  if (WHERE) parts.push(`E2E_WHERE=${shellQuote(WHERE)}`);
  if (PARTITIONED) parts.push("E2E_PARTITIONED=1");
  return parts.join(" ");
}
const shellQuote = (s) => `'${s.replace(/'/g, `'\\''`)}'`;

// Rejects with a TestFailure when the work deadline passes before `promise` settles.
async function withDeadline(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new TestFailure(`deadline (E2E_TIMEOUT_MS=${TIMEOUT_MS}) passed while ${what}`)),
      Math.max(0, WORK_DEADLINE - Date.now()),
    );
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

// Last resort: whatever hangs, the process ends at the overall deadline.
const hardTimer = setTimeout(() => {
  console.error(`e2e: FAIL: hard deadline of ${TIMEOUT_MS} ms reached (cleanup hung?); ${replayHint()}`);
  process.exit(1);
}, TIMEOUT_MS);

// ---------------------------------------------------------------------------------------------
// Seeded PRNG (mulberry32) and random values

function mulberry32(a) {
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rnd = mulberry32(SEED);
const u32 = () => Math.floor(rnd() * 4294967296) >>> 0;
const int = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1)); // inclusive
const chance = (p) => rnd() < p;
const pick = (arr) => arr[Math.floor(rnd() * arr.length)];
const i64 = () => BigInt.asIntN(64, (BigInt(u32()) << 32n) | BigInt(u32()));

const TEXT_PIECES = [
  "a", "hello", "world", "O'Reilly", "it''s", '"double"', '""', "back\\slash", "\\\\", "\\N", "\\x00ff",
  "comma,separated", ",", "new\nline", "\r\n", "tab\there", "{curly}", "{1,2}", "[1, 2]", "(a,b)",
  "NULL", "null", "t", "f", "true", "_", "/", "//", '"/"', "%2F", "&amp;", "?x=1&y=2", "<b>",
  "ünïcödé", "日本語", "Ελληνικά", "عربى", "😀", "🏳️‍🌈", "e\u0301", "\u2028", "\u00a0", " ", "  lead",
  "trail  ", "$1", "'; DROP TABLE x; --", "key:value", '{"json": [1, "two"]}', "0", "-1", "1e3",
];

function randText() {
  const r = rnd();
  if (r < 0.05) return "";
  if (r < 0.08) return pick(TEXT_PIECES).repeat(int(200, 2000)); // a few large values
  const n = int(1, 4);
  let s = "";
  for (let i = 0; i < n; i++) s += (i && chance(0.5) ? " " : "") + pick(TEXT_PIECES);
  return s;
}
const INT4_SPECIAL = [0, 1, -1, 2147483647, -2147483648, 42];
const randInt4 = () => (chance(0.3) ? pick(INT4_SPECIAL) : u32() | 0);
const INT8_SPECIAL = [0n, 1n, -1n, 2n ** 63n - 1n, -(2n ** 63n), 2n ** 53n + 1n, -(2n ** 53n) - 1n];
const randInt8 = () => (chance(0.3) ? pick(INT8_SPECIAL) : chance(0.5) ? BigInt(int(-1000, 1000)) : i64());

const COLS = ["name", "n", "flag", "score", "note"]; // non-PK columns, all nullable
const GEN = {
  name: () => randText(),
  n: () => randInt4(),
  flag: () => chance(0.5),
  score: () => randInt8(),
  note: () => randText(),
};
const randValue = (col) => (chance(0.15) ? null : GEN[col]());
function randRow(id) {
  const row = { id };
  for (const c of COLS) row[c] = randValue(c);
  return row;
}

// ---------------------------------------------------------------------------------------------
// The model of the table and the mutation generator

// Values going to Postgres: int8 as decimal strings (exact), everything else as is.
const sqlValue = (v) => (typeof v === "bigint" ? v.toString() : v);
const qi = (ident) => `"${ident.replace(/"/g, '""')}"`;
const TBL = `public.${qi(TABLE)}`;

const model = {
  rows: new Map(), // id (decimal string) -> row {id: bigint, name, n, flag, score, note}
  everUsed: new Set(), // every id ever inserted (new ids never reuse them)
  deleted: new Set(), // ids deleted and not currently live (candidates for re-insertion)
  // Partitioned: ids start in the middle range so rows spread over every partition soon.
  nextId: PARTITIONED ? 60n : 1n,
};
const history = []; // {i, desc, ids: [string]}: every committed mutation, for failure reports
let mutationCounter = 0;
const stats = {};
const count = (k) => (stats[k] = (stats[k] ?? 0) + 1);

function snapshotModel() {
  return {
    rows: new Map([...model.rows].map(([k, r]) => [k, { ...r }])),
    everUsed: new Set(model.everUsed),
    deleted: new Set(model.deleted),
    nextId: model.nextId,
  };
}

function newId() {
  for (;;) {
    const id = chance(0.1) ? i64() : model.nextId++;
    if (!model.everUsed.has(id.toString())) return id;
  }
}
const liveIds = () => [...model.rows.keys()];
const pickLive = () => model.rows.get(pick(liveIds()));

function fmt(v) {
  if (v === null) return "NULL";
  if (typeof v === "string") {
    const j = JSON.stringify(v);
    return j.length > 40 ? `${j.slice(0, 37)}…"(${v.length} chars)` : j;
  }
  return String(v);
}

// Each generator returns a statement {sql, params, desc, ids} and has already updated the model.
function genInsert(id = newId()) {
  const row = randRow(id);
  const k = id.toString();
  model.rows.set(k, row);
  model.everUsed.add(k);
  model.deleted.delete(k);
  const cols = ["id", ...COLS];
  return {
    sql: `INSERT INTO ${TBL} (${cols.map(qi).join(", ")}) VALUES (${cols.map((_, i) => `$${i + 1}`).join(", ")})`,
    params: cols.map((c) => sqlValue(row[c])),
    desc: `insert ${cols.map((c) => `${c}=${fmt(row[c])}`).join(" ")}`,
    ids: [k],
  };
}

function genReinsert() {
  const st = genInsert(BigInt(pick([...model.deleted])));
  return { ...st, desc: `re-${st.desc}` };
}

function randomSets() {
  const cols = COLS.filter(() => chance(0.4));
  if (cols.length === 0) cols.push(pick(COLS));
  return cols.map((c) => [c, chance(0.1) ? null : randValue(c)]);
}

function genUpdate() {
  const row = pickLive();
  const sets = randomSets();
  for (const [c, v] of sets) row[c] = v;
  return {
    sql: `UPDATE ${TBL} SET ${sets.map(([c], i) => `${qi(c)} = $${i + 1}`).join(", ")} WHERE id = $${sets.length + 1}`,
    params: [...sets.map(([, v]) => sqlValue(v)), sqlValue(row.id)],
    desc: `update id=${row.id} set ${sets.map(([c, v]) => `${c}=${fmt(v)}`).join(" ")}`,
    ids: [row.id.toString()],
  };
}

function genUpdateMany() {
  const ids = [...new Set(Array.from({ length: int(2, 4) }, () => pickLive().id.toString()))];
  const col = pick(COLS);
  const v = randValue(col);
  for (const k of ids) model.rows.get(k)[col] = v;
  return {
    sql: `UPDATE ${TBL} SET ${qi(col)} = $1 WHERE id = ANY($2::int8[])`,
    params: [sqlValue(v), ids],
    desc: `update ids=${ids.join(",")} set ${col}=${fmt(v)}`,
    ids,
  };
}

function genPkChange() {
  const row = pickLive();
  const oldK = row.id.toString();
  const id = newId();
  const k = id.toString();
  const sets = chance(0.4) ? randomSets() : [];
  model.rows.delete(oldK);
  model.deleted.add(oldK);
  row.id = id;
  for (const [c, v] of sets) row[c] = v;
  model.rows.set(k, row);
  model.everUsed.add(k);
  const assigns = [["id", id], ...sets];
  return {
    sql: `UPDATE ${TBL} SET ${assigns.map(([c], i) => `${qi(c)} = $${i + 1}`).join(", ")} WHERE id = $${assigns.length + 1}`,
    params: [...assigns.map(([, v]) => sqlValue(v)), oldK],
    desc: `pk-change id=${oldK} -> ${k}${sets.map(([c, v]) => ` ${c}=${fmt(v)}`).join("")}`,
    ids: [oldK, k],
  };
}

function genDelete() {
  const row = pickLive();
  const k = row.id.toString();
  model.rows.delete(k);
  model.deleted.add(k);
  return { sql: `DELETE FROM ${TBL} WHERE id = $1`, params: [k], desc: `delete id=${k}`, ids: [k] };
}

function genDeleteMany() {
  const ids = [...new Set(Array.from({ length: int(2, 4) }, () => pickLive().id.toString()))];
  for (const k of ids) {
    model.rows.delete(k);
    model.deleted.add(k);
  }
  return { sql: `DELETE FROM ${TBL} WHERE id = ANY($1::int8[])`, params: [ids], desc: `delete ids=${ids.join(",")}`, ids };
}

function genNoop() {
  const row = pickLive();
  const col = pick(COLS);
  return {
    sql: `UPDATE ${TBL} SET ${qi(col)} = ${qi(col)} WHERE id = $1`,
    params: [row.id.toString()],
    desc: `no-op update id=${row.id} set ${col}=${col}`,
    ids: [row.id.toString()],
  };
}

// One statement, chosen with weights that keep the table between ~20 and ~300 rows.
function genStatement() {
  const size = model.rows.size;
  if (size < 5) return genInsert();
  const canReinsert = model.deleted.size > 0;
  const table = [
    [size < 20 ? 40 : size > 300 ? 5 : 22, genInsert],
    [canReinsert ? 4 : 0, genReinsert],
    [30, genUpdate],
    [4, genUpdateMany],
    [8, genPkChange],
    [size > 300 ? 30 : size < 20 ? 2 : 13, genDelete],
    [size > 20 ? 2 : 0, genDeleteMany],
    [5, genNoop],
  ];
  const total = table.reduce((s, [w]) => s + w, 0);
  let r = rnd() * total;
  for (const [w, g] of table) {
    if ((r -= w) < 0) {
      count(g.name.replace(/^gen/, "").toLowerCase());
      return g();
    }
  }
  return genUpdate();
}

// Runs one mutation unit (a single statement, a committed transaction of 2-5 statements, or a
// rolled-back transaction) and returns how many statements it used.
async function runMutation(db) {
  const r = rnd();
  if (r < 0.15 || r >= 0.98) {
    const rollback = r >= 0.98;
    const saved = rollback ? snapshotModel() : null;
    const stmts = [];
    await db.query("BEGIN");
    for (let i = int(2, 5); i > 0; i--) {
      const st = genStatement();
      await execStatement(db, st);
      stmts.push(st);
    }
    await db.query(rollback ? "ROLLBACK" : "COMMIT");
    count(rollback ? "txRolledBack" : "txCommitted");
    if (rollback) {
      Object.assign(model, saved);
    } else {
      const i = ++mutationCounter;
      for (const st of stmts) history.push({ i, desc: `[tx] ${st.desc}`, ids: st.ids });
    }
    return stmts.length;
  }
  const st = genStatement();
  await execStatement(db, st);
  history.push({ i: ++mutationCounter, desc: st.desc, ids: st.ids });
  return 1;
}

async function execStatement(db, st) {
  try {
    await db.query(st.sql, st.params);
  } catch (e) {
    fail(`mutation generator bug: ${st.desc}\n  sql: ${st.sql}\n  error: ${e.message}`);
  }
}

// A fence: a fresh row inserted in its own transaction after a batch of mutations. Once the
// client shows the expected state (which contains this row), it has applied every earlier
// transaction, so a transiently equal intermediate state cannot pass the check.
async function insertFence(db, label) {
  const st = genInsert();
  st.params[COLS.indexOf("note") + 1] = `e2e-fence ${label}`;
  model.rows.get(st.ids[0]).note = `e2e-fence ${label}`;
  await execStatement(db, st);
  history.push({ i: ++mutationCounter, desc: `fence ${label}: ${st.desc}`, ids: st.ids });
}

// ---------------------------------------------------------------------------------------------
// Canonical rows: what the client must show after its own parsing of the shape's values

const TYPES = { id: "bigint", name: "string", n: "number", flag: "boolean", score: "bigint", note: "string" };

function canonValue(col, v) {
  const want = TYPES[col];
  if (v === null && col !== "id") return null;
  if (want && typeof v === want) return typeof v === "bigint" ? v.toString() : v;
  // Wrong type (e.g. a raw string where the schema should have made a BigInt): make it visible.
  return { $wrongType: v === null ? "null" : typeof v, expected: want ?? "no such column", value: String(v) };
}

function canonRow(row) {
  const out = {};
  for (const k of Object.keys(row).sort()) out[k] = canonValue(k, row[k]);
  return JSON.stringify(out, (_, v) => (typeof v === "bigint" ? v.toString() : v));
}

// pg parses int8 to string; turn Postgres rows into what the client should produce.
const fromPg = (r) => ({
  id: BigInt(r.id),
  name: r.name,
  n: r.n,
  flag: r.flag,
  score: r.score === null ? null : BigInt(r.score),
  note: r.note,
});

const expectedKey = (table, id) => `"public"."${table}"/"${id}"`;

// Map id -> canonical JSON for the Postgres side.
function canonExpected(rows) {
  return new Map(rows.map((r) => [r.id.toString(), canonRow(r)]));
}

// Map id -> canonical JSON for the client side; duplicate ids and wrong keys become visible.
function canonClient(s) {
  const { shape, table } = s;
  const out = new Map();
  for (const [key, row] of shape.currentValue) {
    const id = row && row.id !== undefined ? String(row.id) : `<no id, key ${key}>`;
    let c = canonRow(row ?? {});
    const want = expectedKey(table, id);
    if (key !== want) c += `  <key ${JSON.stringify(key)}, expected ${JSON.stringify(want)}>`;
    out.set(out.has(id) ? `${id} (duplicate, key ${key})` : id, c);
  }
  return out;
}

function diff(expected, actual) {
  const lines = [];
  const ids = [...new Set([...expected.keys(), ...actual.keys()])].sort(cmpId);
  let missing = 0, extra = 0, changed = 0;
  for (const id of ids) {
    const e = expected.get(id), a = actual.get(id);
    if (e === a) continue;
    if (a === undefined) missing++;
    else if (e === undefined) extra++;
    else changed++;
    if (lines.length < 10 * 3) {
      lines.push(`  id ${id}:`);
      lines.push(`    - postgres: ${e ?? "(absent)"}`);
      lines.push(`    + client:   ${a ?? "(absent)"}`);
    }
  }
  return { equal: missing + extra + changed === 0, missing, extra, changed, lines, ids };
}

function cmpId(a, b) {
  try {
    const x = BigInt(a), y = BigInt(b);
    return x < y ? -1 : x > y ? 1 : 0;
  } catch {
    return a < b ? -1 : a > b ? 1 : 0;
  }
}

function historyFor(ids) {
  const lines = [];
  for (const id of ids.slice(0, 5)) {
    const hs = history.filter((h) => h.ids.includes(id));
    lines.push(`  mutations touching id ${id} (${hs.length}${hs.length > 8 ? ", last 8" : ""}):`);
    for (const h of hs.slice(-8)) lines.push(`    #${h.i} ${h.desc}`);
  }
  return lines;
}

// ---------------------------------------------------------------------------------------------
// Postgres helpers

async function connect() {
  const db = new pg.Client({ connectionString: DATABASE_URL, application_name: "shapesync-e2e" });
  db.on("error", (e) => log(`postgres connection error: ${e.message}`));
  await withDeadline(db.connect(), "connecting to Postgres");
  return db;
}

async function selectRows(db, where, table = TABLE) {
  const res = await withDeadline(
    db.query(`SELECT * FROM public.${qi(table)}${where ? ` WHERE (${where})` : ""} ORDER BY id`),
    "reading the table",
  );
  return res.rows.map(fromPg);
}

async function createTable(db) {
  await db.query(`DROP TABLE IF EXISTS ${TBL}`);
  const columns = "id int8 PRIMARY KEY, name text, n int4, flag bool, score int8, note text";
  if (PARTITIONED) {
    // Ranges of id (a primary-key change moves a row between partitions), the low range
    // partitioned again by hash, a default partition for the rest.
    const p = (suffix) => `public.${qi(`${TABLE}_${suffix}`)}`;
    await db.query(`CREATE TABLE ${TBL} (${columns}) PARTITION BY RANGE (id)`);
    await db.query(`CREATE TABLE ${p("lo")} PARTITION OF ${TBL} FOR VALUES FROM (MINVALUE) TO (100) PARTITION BY HASH (id)`);
    await db.query(`CREATE TABLE ${p("lo_0")} PARTITION OF ${p("lo")} FOR VALUES WITH (MODULUS 2, REMAINDER 0)`);
    await db.query(`CREATE TABLE ${p("lo_1")} PARTITION OF ${p("lo")} FOR VALUES WITH (MODULUS 2, REMAINDER 1)`);
    await db.query(`CREATE TABLE ${p("mid")} PARTITION OF ${TBL} FOR VALUES FROM (100) TO (200)`);
    await db.query(`CREATE TABLE ${p("hi")} PARTITION OF ${TBL} DEFAULT`);
  } else {
    await db.query(`CREATE TABLE ${TBL} (${columns})`);
  }
  await db.query("BEGIN");
  for (let i = 0; i < INITIAL_ROWS; i++) await execStatement(db, genInsert());
  await db.query("COMMIT");
  history.push({ i: 0, desc: `seed: ${INITIAL_ROWS} rows`, ids: [] });
}

// The model is only the generator's bookkeeping; if it drifts from Postgres the generator is wrong.
async function checkModel(db) {
  const d = diff(canonExpected(await selectRows(db, null)), canonExpected([...model.rows.values()]));
  if (!d.equal) fail(`mutation generator bug: model differs from Postgres ("client" = model)\n${d.lines.join("\n")}`);
}

// ---------------------------------------------------------------------------------------------
// Shapes

const http = { requests: 0, sse: 0, liveLongPoll: 0, nonOk: 0, failed: 0, byStatus: {} };

// Wraps fetch to count requests and report every non-2xx answer (the client retries 5xx
// silently; without this a server failing in a loop would only show up as a timeout).
async function countingFetch(input, init) {
  const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
  const q = new URL(url).searchParams;
  http.requests++;
  if (q.get("live_sse") === "true") http.sse++;
  else if (q.get("live") === "true") http.liveLongPoll++;
  let res;
  try {
    res = await fetch(input, init);
  } catch (e) {
    if (e?.name !== "AbortError" && ++http.failed <= 20) log(`http request failed: ${e?.cause?.code ?? e?.message} for ${url}`);
    throw e;
  }
  http.byStatus[res.status] = (http.byStatus[res.status] ?? 0) + 1;
  if (!res.ok) {
    http.nonOk++;
    if (http.nonOk <= 20) log(`http ${res.status} for ${url}`);
  }
  if (VERBOSE) log(`GET ${url} -> ${res.status} offset=${res.headers.get("electric-offset")} handle=${res.headers.get("electric-handle")}`);
  return res;
}

let ShapeStream, Shape;

function startShape(name, where, table = TABLE) {
  const controller = new AbortController();
  const s = { name, where, table, controller, error: null, msgs: { insert: 0, update: 0, delete: 0, mustRefetch: 0, upToDate: 0 } };
  const params = { table };
  if (where) params.where = where;
  const recordError = (e) => {
    if (!s.error && !controller.signal.aborted) {
      s.error = e;
      log(`shape ${name}: stream error: ${errorText(e)}`);
    }
  };
  s.stream = new ShapeStream({
    url: SHAPE_URL,
    params,
    ...(LIVE_SSE ? { liveSse: true } : {}),
    signal: controller.signal,
    fetchClient: countingFetch,
    backoffOptions: { initialDelay: 100, maxDelay: 2000, multiplier: 2 },
    onError: (e) => {
      recordError(e);
      // Returning nothing stops the stream: any error the client surfaces fails the test.
    },
  });
  s.stream.subscribe(
    (messages) => {
      for (const m of messages) {
        const op = m.headers?.operation;
        if (op) s.msgs[op] = (s.msgs[op] ?? 0) + 1;
        if (m.headers?.control === "must-refetch") {
          s.msgs.mustRefetch++;
          log(`shape ${name}: WARNING: must-refetch (the server invalidated the shape)`);
        }
        if (m.headers?.control === "up-to-date") s.msgs.upToDate++;
      }
    },
    recordError,
  );
  s.shape = new Shape(s.stream);
  return s;
}

function errorText(e) {
  if (!e) return String(e);
  const extra = [];
  if (e.status !== undefined) extra.push(`status ${e.status}`);
  if (e.url) extra.push(`url ${e.url}`);
  if (e.json !== undefined) extra.push(`body ${JSON.stringify(e.json)}`);
  else if (e.text) extra.push(`body ${String(e.text).slice(0, 300)}`);
  return `${e.name ?? "Error"}: ${e.message}${extra.length ? ` (${extra.join(", ")})` : ""}`;
}

function checkStreamErrors(shapes) {
  for (const s of shapes) {
    const e = s.error || s.shape.error;
    if (e) fail(`shape ${s.name}: the client reported an error: ${errorText(e)}`);
  }
}

async function waitInitialSync(shapes) {
  await withDeadline(
    Promise.all(
      shapes.map(async (s) => {
        // `shape.rows` resolves at the first up-to-date; poll errors meanwhile so a fatal error
        // fails fast instead of waiting for the deadline.
        const errored = new Promise((_, reject) => {
          const t = setInterval(() => {
            if (s.error || s.shape.error) {
              clearInterval(t);
              reject(new TestFailure(`shape ${s.name}: error during initial sync: ${errorText(s.error || s.shape.error)}`));
            }
          }, POLL_MS);
          s.shape.rows.then(() => clearInterval(t), () => clearInterval(t));
        });
        await Promise.race([s.shape.rows, errored]);
      }),
    ),
    "waiting for the initial sync",
  );
  checkStreamErrors(shapes);
}

// Waits until every shape's current rows equal Postgres (with the shape's where clause).
async function waitConverged(db, shapes, label) {
  const t = Date.now();
  const expected = new Map();
  for (const s of shapes) expected.set(s, canonExpected(await selectRows(db, s.where, s.table)));
  for (const s of shapes) {
    const exp = expected.get(s);
    const ok = () => s.shape.isUpToDate && diff(exp, canonClient(s)).equal;
    await new Promise((resolve, reject) => {
      let unsub = () => {};
      let timer;
      const check = () => {
        try {
          checkStreamErrors(shapes);
          if (ok()) return finish(resolve);
          if (Date.now() >= WORK_DEADLINE) {
            const d = diff(exp, canonClient(s));
            return finish(() =>
              reject(
                new TestFailure(
                  [
                    `shape ${s.name}${s.where ? ` (where ${s.where})` : ""} did not converge ${label} before the deadline` +
                      ` (E2E_TIMEOUT_MS=${TIMEOUT_MS}); upToDate=${s.shape.isUpToDate};` +
                      ` ${exp.size} rows in Postgres, ${s.shape.currentValue.size} in the client;` +
                      ` ${d.missing} missing, ${d.extra} unexpected, ${d.changed} different. First differences:`,
                    ...d.lines,
                    ...historyFor(d.ids.filter((id) => exp.get(id) !== canonClient(s).get(id))),
                  ].join("\n"),
                ),
              ),
            );
          }
        } catch (e) {
          finish(() => reject(e));
        }
      };
      const finish = (f) => {
        clearInterval(timer);
        unsub();
        f();
      };
      timer = setInterval(check, POLL_MS);
      unsub = s.shape.subscribe(check);
      check();
    });
    log(`shape ${s.name}: converged ${label}: ${exp.size} rows (${Date.now() - t} ms)`);
  }
}

// ---------------------------------------------------------------------------------------------
// Main

async function run(cleanup) {
  if (!DATABASE_URL) configError("DATABASE_URL is not set");
  if (!DRY_DB && !SHAPE_URL) configError("SHAPESYNC_URL is not set (or set E2E_DRY_DB=1)");
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(TABLE)) configError(`E2E_TABLE must be a lowercase identifier, got ${JSON.stringify(TABLE)}`);

  log(
    `seed=${SEED} table=${TABLE}${PARTITIONED ? " (partitioned)" : ""} mutations=${MUTATIONS} mode=${DRY_DB ? "dry-db" : LIVE_SSE ? "sse" : "long-poll"}` +
      ` where=${WHERE ? JSON.stringify(WHERE) : "none"} timeout=${TIMEOUT_MS}ms url=${SHAPE_URL ?? "-"}`,
  );
  log(`replay with: ${replayHint()}`);

  const db = await connect();
  cleanup.db = db;
  await withDeadline(createTable(db), "creating and seeding the table");
  cleanup.dropTable = true;
  log(`created ${TBL} with ${INITIAL_ROWS} rows`);

  let shapes = [];
  if (!DRY_DB) {
    ({ ShapeStream, Shape } = await import("@electric-sql/client"));
    shapes.push(startShape("all", null));
    if (WHERE) shapes.push(startShape("where", WHERE)); // second scenario, only with E2E_WHERE
    if (PARTITIONED) {
      // Shapes on partitions at every level, alongside the root's.
      for (const part of ["lo", "lo_0", "mid", "hi"]) shapes.push(startShape(part, null, `${TABLE}_${part}`));
    }
    cleanup.shapes = shapes;
    await waitInitialSync(shapes);
    // The initial snapshot must be exact at once: nothing was written since the rows were seeded.
    for (const s of shapes) {
      const d = diff(canonExpected(await selectRows(db, s.where, s.table)), canonClient(s));
      if (!d.equal) fail(`shape ${s.name}: initial snapshot differs from Postgres:\n${d.lines.join("\n")}`);
      log(`shape ${s.name}: initial sync ok: ${s.shape.currentValue.size} rows, handle=${s.shape.handle}, offset=${s.shape.lastOffset} (${elapsed()})`);
    }
  }

  // Mutations, with a fenced convergence check halfway (live updates arriving while idle) and at
  // the end (a burst that the server may deliver in large batches).
  const half = Math.floor(MUTATIONS / 2);
  let done = 0, nextReport = 250;
  const checkpoints = MUTATIONS >= 4 ? [half, MUTATIONS] : [MUTATIONS];
  for (const [ci, target] of checkpoints.entries()) {
    while (done < target) {
      done += await withDeadline(runMutation(db), `running mutation #${mutationCounter + 1}`);
      if (done >= nextReport) {
        log(`${done}/${MUTATIONS} statements applied, ${model.rows.size} rows (${elapsed()})`);
        nextReport += 250;
      }
      if (shapes.length && done % 50 === 0) checkStreamErrors(shapes);
    }
    const label = ci === checkpoints.length - 1 ? "at the end" : `after ${done} statements`;
    await withDeadline(insertFence(db, label), "inserting a fence row");
    await checkModel(db);
    if (shapes.length) await waitConverged(db, shapes, label);
  }
  log(`mutation mix: ${JSON.stringify(stats)}`);

  const finalCount = (await selectRows(db, null)).length;
  if (DRY_DB) {
    log(`dry run: ${done} statements applied, final row count ${finalCount}`);
    return;
  }
  checkStreamErrors(shapes);
  for (const s of shapes) log(`shape ${s.name}: messages ${JSON.stringify(s.msgs)}`);
  if (LIVE_SSE && http.sse === 0) log("WARNING: E2E_LIVE_SSE=1 but the client never made an SSE request");
  if (LIVE_SSE && http.sse > 0 && http.liveLongPoll > 0) log("WARNING: the client fell back from SSE to long polling (short SSE connections)");
  log(`final row count ${finalCount}`);
}

async function doCleanup(c) {
  for (const s of c.shapes ?? []) {
    s.shape.unsubscribeAll();
    s.controller.abort();
  }
  if (c.db) {
    c.db.end().catch(() => {});
  }
  if (c.dropTable && env.E2E_KEEP_TABLE !== "1") {
    // A fresh connection: the main one may be stuck in a query that hit the deadline.
    const db = new pg.Client({ connectionString: DATABASE_URL, application_name: "shapesync-e2e-cleanup" });
    db.on("error", () => {});
    const drop = (async () => {
      await db.connect();
      await db.query(`SET lock_timeout = '3s'`);
      await db.query(`DROP TABLE IF EXISTS ${TBL}`);
    })();
    const limit = new Promise((r) => setTimeout(r, Math.max(500, CLEANUP_RESERVE_MS - 500)).unref());
    try {
      await Promise.race([drop, limit]);
    } catch (e) {
      log(`cleanup: could not drop ${TBL}: ${e.message}`);
    }
    db.end().catch(() => {});
  }
}

const cleanup = {};
let code = 0;
try {
  await run(cleanup);
  log(`PASS (${elapsed()})`);
} catch (e) {
  code = 1;
  const msg = e instanceof TestFailure ? e.message : `unexpected exception: ${e?.stack ?? e}`;
  console.error(`e2e: FAIL: ${msg}`);
  console.error(`e2e: replay with: ${replayHint()} (table ${TABLE}, ${elapsed()})`);
}
if (http.requests) {
  log(`http: ${http.requests} requests (live long-poll ${http.liveLongPoll}, live sse ${http.sse}, network failures ${http.failed}), statuses ${JSON.stringify(http.byStatus)}`);
}
await doCleanup(cleanup).catch((e) => log(`cleanup error: ${e.message}`));
clearTimeout(hardTimer);
process.exit(code);
