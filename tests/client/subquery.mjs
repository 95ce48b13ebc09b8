#!/usr/bin/env node
// The official client follows a subquery shape (`project_id IN (SELECT id FROM projects WHERE
// team_id = $1)`) through random moves: projects change teams, appear and go; tasks change
// projects, appear and go, sometimes in the same transaction. The client's `Shape` ignores
// move events; shapesync places explicit deletes before each move-out, so `Shape.currentRows`
// must equal Postgres' answer after every batch. Exit 0 = pass, 1 = fail. Env: SHAPESYNC_URL,
// DATABASE_URL, E2E_LIVE_SSE=1 for SSE, E2E_TIMEOUT_MS (default 120000), E2E_BATCHES (40).
import process from "node:process";
import { randomBytes } from "node:crypto";
import pg from "pg";
import { ShapeStream, Shape } from "@electric-sql/client";

const url = `${process.env.SHAPESYNC_URL.replace(/\/+$/, "")}/v1/shape`;
const deadline = Date.now() + Number(process.env.E2E_TIMEOUT_MS || 120000);
const batches = Number(process.env.E2E_BATCHES || 40);
const sfx = randomBytes(4).toString("hex");
const projects = `projects_${sfx}`;
const tasks = `tasks_${sfx}`;
const log = (...a) => console.log("subquery:", ...a);
const fail = (msg) => {
  console.error(`subquery: FAIL: ${msg}`);
  process.exit(1);
};

const db = new pg.Client({ connectionString: process.env.DATABASE_URL });
await db.connect();
await db.query(`CREATE TABLE ${projects} (id int PRIMARY KEY, team_id int)`);
await db.query(`CREATE TABLE ${tasks} (id int PRIMARY KEY, project_id int, title text)`);
await db.query(`INSERT INTO ${projects} SELECT g, 1 + g % 3 FROM generate_series(1, 8) g`);
await db.query(`INSERT INTO ${tasks} SELECT g, 1 + g % 8, 't' || g FROM generate_series(1, 40) g`);

const where = `project_id IN (SELECT id FROM ${projects} WHERE team_id = $1)`;
const errors = [];
const abort = new AbortController();
const stream = new ShapeStream({
  url,
  params: { table: tasks, where, params: { 1: "1" } },
  liveSse: process.env.E2E_LIVE_SSE === "1",
  signal: abort.signal,
  onError: (e) => {
    errors.push(e);
  },
});
const shape = new Shape(stream);
const got = () =>
  [...shape.currentRows]
    .map((r) => `${r.id}:${r.project_id}:${r.title}`)
    .sort()
    .join(",");
const want = async () =>
  (
    await db.query(
      `SELECT id, project_id, title FROM ${tasks} WHERE project_id IN (SELECT id FROM ${projects} WHERE team_id = 1)`,
    )
  ).rows
    .map((r) => `${r.id}:${r.project_id}:${r.title}`)
    .sort()
    .join(",");

async function converge(what) {
  for (;;) {
    const w = await want();
    if (stream.isUpToDate && got() === w) return;
    if (Date.now() > deadline) fail(`${what}: client ${got()} != postgres ${w}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

await converge("snapshot");
log("snapshot ok:", shape.currentRows.length, "rows");
let next = 1000;
let seed = Number(process.env.E2E_SEED || Date.now() % 100000);
log("seed", seed);
const rand = (n) => {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  return seed % n;
};
for (let b = 0; b < batches; b++) {
  const stmts = [];
  for (let i = 0; i < 1 + rand(3); i++) {
    switch (rand(6)) {
      case 0:
        stmts.push(`UPDATE ${projects} SET team_id = ${1 + rand(3)} WHERE id = ${1 + rand(10)}`);
        break;
      case 1:
        stmts.push(
          `INSERT INTO ${projects} VALUES (${1 + rand(10)}, ${1 + rand(3)}) ON CONFLICT (id) DO UPDATE SET team_id = EXCLUDED.team_id`,
        );
        break;
      case 2:
        stmts.push(`DELETE FROM ${projects} WHERE id = ${1 + rand(10)}`);
        break;
      case 3:
        stmts.push(`INSERT INTO ${tasks} VALUES (${next++}, ${1 + rand(10)}, 'n')`);
        break;
      case 4:
        stmts.push(`UPDATE ${tasks} SET project_id = ${1 + rand(10)} WHERE id % 9 = ${rand(9)}`);
        break;
      default:
        stmts.push(`UPDATE ${tasks} SET title = 'u${b}' WHERE id % 7 = ${rand(7)}`);
    }
  }
  await db.query(`BEGIN; ${stmts.join("; ")}; COMMIT`);
  await converge(`batch ${b}`);
}
if (errors.length) fail(`stream errors: ${errors.map(String).join("; ")}`);
log(`PASS after ${batches} batches:`, shape.currentRows.length, "rows");
abort.abort();
await db.query(`DROP TABLE ${tasks}; DROP TABLE ${projects}`);
await db.end();
process.exit(0);
