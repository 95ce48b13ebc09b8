#!/usr/bin/env bash
# The main job, from a fresh clone: build shapesync, start it on a throwaway local Postgres with
# logical replication (the embedded default: no database URL), create a demo table, and show a
# shape syncing — the initial rows, then a live long-poll woken by an insert. shapesync keeps
# running afterwards; stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh run
cargo build --release --locked --bin shapesync

DIR="${SHAPESYNC_DEMO_DIR:-$PWD/.shapesync}"
PORT="${SHAPESYNC_DEMO_PORT:-3000}"
PGPORT="${SHAPESYNC_DEMO_PG_PORT:-54329}"
BASE="http://127.0.0.1:$PORT"
PSQL=(psql -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -v ON_ERROR_STOP=1)

./target/release/shapesync serve --insecure --storage-dir "$DIR" --listen "127.0.0.1:$PORT" \
  --embedded-pg-port "$PGPORT" &
PID=$!
trap 'kill -INT $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT INT TERM

for _ in $(seq 1 300); do
  if curl -fsS "$BASE/v1/health" 2>/dev/null | grep -q active; then break; fi
  kill -0 $PID 2>/dev/null || { echo "shapesync exited"; exit 1; }
  sleep 0.1
done
curl -fsS "$BASE/v1/health" | grep -q active || { echo "shapesync did not become active"; exit 1; }

"${PSQL[@]}" -c "CREATE TABLE IF NOT EXISTS todos (id bigint PRIMARY KEY, title text NOT NULL, done boolean NOT NULL DEFAULT false);
  INSERT INTO todos VALUES (1, 'Try shapesync', true), (2, 'Sync a shape', false) ON CONFLICT DO NOTHING;"

echo
echo "== 1. Initial sync: GET $BASE/v1/shape?table=todos&offset=-1"
HDRS=$(mktemp)
curl -sS -D "$HDRS" "$BASE/v1/shape?table=todos&offset=-1"; echo
HANDLE=$(grep -i '^electric-handle:' "$HDRS" | tr -d '\r' | awk '{print $2}')
OFFSET=$(grep -i '^electric-offset:' "$HDRS" | tr -d '\r' | awk '{print $2}')
echo "   electric-handle: $HANDLE   electric-offset: $OFFSET"

echo "== 2. Catch up: GET ...&offset=$OFFSET&handle=$HANDLE"
curl -sS -D "$HDRS" "$BASE/v1/shape?table=todos&offset=$OFFSET&handle=$HANDLE"; echo
OFFSET=$(grep -i '^electric-offset:' "$HDRS" | tr -d '\r' | awk '{print $2}')

echo "== 3. Live long-poll at offset $OFFSET; inserting a row in 1 s..."
( sleep 1; "${PSQL[@]}" -c "INSERT INTO todos VALUES (3, 'Watch it arrive live', false) ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title || ' again';" ) &
curl -sS "$BASE/v1/shape?table=todos&offset=$OFFSET&handle=$HANDLE&live=true"; echo
rm -f "$HDRS"

cat <<TXT

shapesync is running on $BASE (Postgres: postgresql://postgres@127.0.0.1:$PGPORT/postgres).
Try it yourself:
  curl -i '$BASE/v1/shape?table=todos&offset=-1'
  curl -i '$BASE/v1/shape?table=todos&offset=<electric-offset>&handle=<electric-handle>&live=true'
  psql -h 127.0.0.1 -p $PGPORT -U postgres -c "UPDATE todos SET done = true WHERE id = 2"
Press Ctrl-C to stop.
TXT
wait $PID
