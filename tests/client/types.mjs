#!/usr/bin/env node
// The official client on a table with many column types, special-character column names and
// `replica=full`: initial rows and live changes must parse to the values Postgres holds (compared
// through the client's own parsing rules: numbers, BigInt, booleans, JSON, arrays, strings).
// Then a shape deletion (409 → refetch under a new handle) and a TRUNCATE must leave the client
// equal to Postgres too. Env: SHAPESYNC_URL, DATABASE_URL, E2E_LIVE_SSE=1 for SSE,
// E2E_TIMEOUT_MS (default 90000). Exit 0 = pass.
import process from "node:process";
import { randomBytes } from "node:crypto";
import pg from "pg";
import { ShapeStream, Shape } from "@electric-sql/client";

const base = process.env.SHAPESYNC_URL.replace(/\/+$/, "");
const sse = process.env.E2E_LIVE_SSE === "1";
const deadline = Date.now() + Number(process.env.E2E_TIMEOUT_MS || 90000);
const table = `types_${randomBytes(4).toString("hex")}`;
const log = (...a) => console.log("types:", ...a);
const fail = (msg) => {
  console.error(`types: FAIL: ${msg}`);
  process.exit(1);
};

const db = new pg.Client({ connectionString: process.env.DATABASE_URL });
await db.connect();
// The display settings shapesync uses, so ::text gives the same text it sends.
await db.query(`SET DateStyle = 'ISO, DMY'; SET TimeZone = 'UTC'; SET extra_float_digits = 1; SET IntervalStyle = 'iso_8601'; SET bytea_output = 'hex'`);
const mood = `mood_${randomBytes(3).toString("hex")}`;
await db.query(`CREATE TYPE ${mood} AS ENUM ('sad', 'ok', 'happy')`);
const columns = {
  id: "int8 PRIMARY KEY",
  i2: "int2", i4: "int4", f4: "float4", f8: "float8", num: "numeric(12,3)", b: "bool",
  t: "text", vc: "varchar(20)", ch: "char(4)", u: "uuid", d: "date", ts: "timestamp",
  tstz: "timestamptz", iv: "interval", j: "json", jb: "jsonb", ia: "int4[]", ta: "text[]",
  by: "bytea", m: mood, "has,comma": "text", 'has"quote': "text", Mixed: "text",
};
const q = (n) => `"${n.replace(/"/g, '""')}"`;
await db.query(`CREATE TABLE ${table} (${Object.entries(columns).map(([n, t]) => `${q(n)} ${t}`).join(", ")})`);
const row = (id, k) =>
  `(${id}, ${k}, ${k * 1000}, ${k}.5, 'Infinity', ${k}.125, ${k % 2 === 0}, 'it''s "${k}"', 'v${k}', 'c${k}',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd38${String(1000 + k).slice(-4)}', '2026-0${(k % 9) + 1}-0${(k % 9) + 1}',
    '2026-01-02 03:04:05.${k}', '2026-01-02 03:04:05+0${k % 9}', '${k} days 02:00:00',
    '{"a": [${k}, null]}', '{"k": "${k}", "n": null}', '{${k},NULL,3}', '{"x,y","${k}",NULL}',
    '\\x0${k % 9}ff', '${["sad", "ok", "happy"][k % 3]}', 'c,${k}', 'q"${k}', 'M${k}')`;
await db.query(`INSERT INTO ${table} VALUES ${[1, 2, 3].map((k) => row(k, k)).join(", ")}`);
await db.query(`INSERT INTO ${table} (id) VALUES (99)`);

// Expected rows through the client's parsing rules, from Postgres' text output.
const colInfo = (await db.query(
  `SELECT a.attname AS name, t.typname AS type, t.typcategory AS cat, et.typname AS elem
   FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
   WHERE a.attrelid = '${table}'::regclass AND a.attnum > 0 AND NOT a.attisdropped`)).rows;
function parseScalar(type, v) {
  if (v === null) return null;
  if (["int2", "int4", "float4", "float8"].includes(type)) return Number(v);
  if (type === "int8") return BigInt(v);
  if (type === "bool") return v === "t" || v === "true";
  if (type === "json" || type === "jsonb") return JSON.parse(v);
  return v;
}
function parseArray(type, text) {
  // Postgres array literal, one dimension (what these columns hold).
  const out = [];
  let i = 1, cur = "", quoted = false, wasQuoted = false;
  for (; i < text.length - 1; i++) {
    const c = text[i];
    if (quoted) {
      if (c === "\\") cur += text[++i];
      else if (c === '"') quoted = false;
      else cur += c;
    } else if (c === '"') { quoted = true; wasQuoted = true; }
    else if (c === ",") { out.push(!wasQuoted && cur === "NULL" ? null : parseScalar(type, cur)); cur = ""; wasQuoted = false; }
    else cur += c;
  }
  if (text.length > 2) out.push(!wasQuoted && cur === "NULL" ? null : parseScalar(type, cur));
  return out;
}
async function expected() {
  // bpchar keeps its padding on the wire (protocol.md §6.1); ::text would strip it.
  const text = (c) => (c.type === "bpchar" ? `CASE WHEN ${q(c.name)} IS NULL THEN NULL ELSE concat(${q(c.name)}) END` : `${q(c.name)}::text`);
  const sel = colInfo.map((c) => `${text(c)} AS ${q(c.name)}`).join(", ");
  const rows = (await db.query(`SELECT ${sel} FROM ${table} ORDER BY id`)).rows;
  return rows.map((r) => Object.fromEntries(colInfo.map((c) => {
    const v = r[c.name];
    const parsed = v === null ? null : c.cat === "A" ? parseArray(c.elem, v) : parseScalar(c.type, v);
    return [c.name, parsed];
  })));
}
const canon = (rows) => JSON.stringify(
  [...rows].sort((a, b) => (BigInt(a.id) < BigInt(b.id) ? -1 : 1)),
  (_, v) => (typeof v === "bigint" ? `${v}n` : v));

const errors = [];
let refetches = 0;
function follow() {
  const abort = new AbortController();
  const stream = new ShapeStream({
    url: `${base}/v1/shape`,
    params: { table, columns: Object.keys(columns), replica: "full" },
    liveSse: sse,
    signal: abort.signal,
    onError: (e) => { errors.push(e); },
  });
  stream.subscribe((msgs) => { if (msgs.some((m) => m.headers?.control === "must-refetch")) refetches++; });
  return { stream, shape: new Shape(stream), abort };
}
async function converge(what, f) {
  let want = "";
  while (Date.now() < deadline) {
    want = canon(await expected());
    if (f.stream.isUpToDate && canon(f.shape.currentRows) === want) return;
    if (errors.length) fail(`stream error: ${errors.map(String).join("; ")}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  fail(`${what}: client (handle ${f.stream.shapeHandle}, offset ${f.stream.lastOffset}, up to date ${f.stream.isUpToDate}, refetches ${refetches})\n${canon(f.shape.currentRows)}\n!= postgres\n${want}`);
}

const f = follow();
await converge("initial sync", f);
log(`initial sync ok (${sse ? "sse" : "long-poll"})`);
await db.query(`INSERT INTO ${table} VALUES ${row(4, 4)}`);
await db.query(`UPDATE ${table} SET t = NULL, ia = '{}', jb = '[]', "has,comma" = 'x,y', f8 = 'NaN', num = -0.5 WHERE id = 1`);
await db.query(`UPDATE ${table} SET id = 5 WHERE id = 2`);
await db.query(`DELETE FROM ${table} WHERE id = 3`);
await converge("live changes", f);
log("live changes ok");

// Delete the shape: the client gets 409, refetches under a new handle, and stays correct.
const del = await fetch(`${base}/v1/shape?table=${table}&columns=${encodeURIComponent(Object.keys(columns).map(q).join(","))}&replica=full`, { method: "DELETE" });
if (del.status !== 202) fail(`DELETE answered ${del.status}: ${await del.text()}`);
await db.query(`UPDATE ${table} SET vc = 'after delete' WHERE id = 4`);
await converge("after shape deletion", f);
if (refetches < 1) fail("the client never saw must-refetch after the deletion");
log("delete + refetch ok");

await db.query(`TRUNCATE ${table}`);
await db.query(`INSERT INTO ${table} VALUES ${row(7, 7)}`);
await converge("after truncate", f);
log("truncate ok");

f.abort.abort();
await db.query(`DROP TABLE ${table}`);
await db.query(`DROP TYPE ${mood}`);
await db.end();
log("PASS");
process.exit(0);
