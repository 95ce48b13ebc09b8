#!/usr/bin/env node
// Per-user shapes with the official client and no proxy: two users, each with a JWT whose role
// filters `docs` by `owner = claim('sub')`, follow the same table; each must see exactly their
// own rows, live, including a row moving from one user to the other. A stream without a token
// must be refused. Exit 0 = pass, 1 = fail. Env: SHAPESYNC_URL, DATABASE_URL, TOKEN_ALICE,
// TOKEN_BOB, E2E_TIMEOUT_MS (default 60000). The table `docs` and the role exist already.
import process from "node:process";
import pg from "pg";
import { ShapeStream, Shape, FetchError } from "@electric-sql/client";

const url = `${process.env.SHAPESYNC_URL.replace(/\/+$/, "")}/v1/shape`;
const deadline = Date.now() + Number(process.env.E2E_TIMEOUT_MS || 60000);
const log = (...a) => console.log("peruser:", ...a);
const fail = (msg) => {
  console.error(`peruser: FAIL: ${msg}`);
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

const abort = new AbortController();
function follow(token) {
  const errors = [];
  const stream = new ShapeStream({
    url,
    params: { table: "docs" },
    headers: { Authorization: `Bearer ${token}` },
    signal: abort.signal,
    onError: (e) => {
      errors.push(e);
    },
  });
  const shape = new Shape(stream);
  const rows = () =>
    [...shape.currentRows]
      .map((r) => `${r.id}:${r.owner}:${r.title}`)
      .sort()
      .join(",");
  return { stream, shape, rows, errors };
}

async function expected(owner) {
  const r = await db.query("SELECT id, owner, title FROM docs WHERE owner = $1", [owner]);
  return r.rows
    .map((x) => `${x.id}:${x.owner}:${x.title}`)
    .sort()
    .join(",");
}

async function converge(name, user, owner) {
  let want = "";
  await until(`${name}'s rows`, async () => {
    want = await expected(owner);
    return user.rows() === want;
  });
  if (user.errors.length) fail(`${name}'s stream errors: ${user.errors.map(String).join("; ")}`);
  log(`${name} sees exactly`, want || "(nothing)");
}

const alice = follow(process.env.TOKEN_ALICE);
const bob = follow(process.env.TOKEN_BOB);
await until("both up to date", async () => alice.stream.isUpToDate && bob.stream.isUpToDate);
await converge("alice", alice, "alice");
await converge("bob", bob, "bob");

await db.query("INSERT INTO docs VALUES (100, 'alice', 'a new one'), (101, 'bob', 'b new one'), (102, 'carol', 'c')");
await db.query("UPDATE docs SET title = 'renamed' WHERE id = 1");
await converge("alice", alice, "alice");
await converge("bob", bob, "bob");

// A row moves from alice to bob: a delete for one, an insert for the other.
await db.query("UPDATE docs SET owner = 'bob', title = 'moved' WHERE id = 1");
await converge("alice", alice, "alice");
await converge("bob", bob, "bob");
if (alice.rows().includes(":bob:") || bob.rows().includes(":alice:")) {
  fail(`a row of the other user leaked: alice=${alice.rows()} bob=${bob.rows()}`);
}

// No token: refused (401), and the client gives up with that error.
const refused = [];
const anon = new ShapeStream({
  url,
  params: { table: "docs" },
  signal: abort.signal,
  onError: (e) => {
    refused.push(e);
  },
});
new Shape(anon);
await until("the anonymous stream to be refused", async () => refused.length > 0);
const status = refused[0] instanceof FetchError ? refused[0].status : undefined;
if (status !== 401) fail(`anonymous stream: expected a 401, got ${refused[0]}`);
log("anonymous stream refused with 401");

abort.abort();
await db.end();
log("PASS");
process.exit(0);
