#!/usr/bin/env node
// The official client's subset snapshots against shapesync: a `log: 'changes_only'` shape starts
// empty; `requestSnapshot` (GET, then POST) loads a slice of rows; later changes to those rows and
// new inserts arrive live; the materialized rows must equal what Postgres says the shape should
// hold. Exit 0 = pass, 1 = fail. Env: SHAPESYNC_URL, DATABASE_URL, E2E_LIVE_SSE=1 for SSE,
// E2E_TIMEOUT_MS (default 60000).
import process from "node:process";
import { randomBytes } from "node:crypto";
import pg from "pg";
import { ShapeStream, Shape } from "@electric-sql/client";

const url = `${process.env.SHAPESYNC_URL.replace(/\/+$/, "")}/v1/shape`;
const deadline = Date.now() + Number(process.env.E2E_TIMEOUT_MS || 60000);
const table = `subset_${randomBytes(4).toString("hex")}`;
const log = (...a) => console.log("subset:", ...a);
const fail = (msg) => {
  console.error(`subset: FAIL: ${msg}`);
  process.exit(1);
};

async function until(what, cond) {
  while (!(await cond())) {
    if (Date.now() > deadline) fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const db = new pg.Client({ connectionString: process.env.DATABASE_URL });
await db.connect();
await db.query(`CREATE TABLE ${table} (id int PRIMARY KEY, v text)`);
await db.query(`INSERT INTO ${table} SELECT g, 'v' || g FROM generate_series(1, 20) g`);

const errors = [];
const abort = new AbortController();
const stream = new ShapeStream({
  url,
  params: { table },
  log: "changes_only",
  liveSse: process.env.E2E_LIVE_SSE === "1",
  signal: abort.signal,
  onError: (e) => {
    errors.push(e);
  },
});
const shape = new Shape(stream);
const rows = () =>
  [...shape.currentRows]
    .map((r) => `${r.id}:${r.v}`)
    .sort()
    .join(",");
await until("up to date", async () => stream.isUpToDate);
if (shape.currentRows.length !== 0) fail(`changes_only must start empty, got ${rows()}`);
log("up to date with no rows");

await shape.requestSnapshot({ where: "id <= $1", params: { 1: "3" }, orderBy: "id", limit: 10 });
await until("the GET subset rows", async () => rows() === "1:v1,2:v2,3:v3");
log("GET subset ok:", rows());
await shape.requestSnapshot({ where: "id = 10", method: "POST" });
await until("the POST subset row", async () => rows() === "10:v10,1:v1,2:v2,3:v3");
log("POST subset ok");

await db.query(`UPDATE ${table} SET v = 'changed' WHERE id IN (2, 10)`);
await db.query(`INSERT INTO ${table} VALUES (100, 'new')`);
await db.query(`DELETE FROM ${table} WHERE id = 3`);
const want = "100:new,10:changed,1:v1,2:changed";
await until(`live changes (${want})`, async () => rows() === want);
if (errors.length) fail(`stream errors: ${errors.map(String).join("; ")}`);
log("live changes ok:", rows());

abort.abort();
await db.query(`DROP TABLE ${table}`);
await db.end();
log("PASS");
process.exit(0);
