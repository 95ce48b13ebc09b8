//! The official `@electric-sql/client` (npm, pinned in tests/client/package.json) against the
//! real server, through the scripts in tests/client: random inserts, updates (including
//! primary-key changes) and deletes whose materialized rows must equal Postgres (long-poll, with a
//! where clause, SSE); subset snapshots in changes_only mode; every column type, special column
//! names, replica=full, delete/refetch and truncate — in long-poll and SSE modes.

use std::path::Path;
use std::process::Command;

use crate::support::{fresh_db, TestServer};

/// Install the pinned client packages if they are not there yet (`npm ci`, from the lockfile).
fn npm_install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client");
        if dir.join("node_modules/@electric-sql/client").exists() {
            return;
        }
        let st = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("running npm ci (Node.js and npm must be installed)");
        assert!(st.success(), "npm ci failed");
    });
}

/// Run `tests/client/<script>` against a fresh database and server; it must exit 0.
async fn run_node(
    script: &str,
    tag: &str,
    env: &[(&str, String)],
    tweak: impl FnOnce(&mut shapesync::server::Config),
) {
    npm_install();
    let url = fresh_db(tag).await;
    let server = TestServer::start_with(&url, tweak).await;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/client")
        .join(script);
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(path)
        .env("SHAPESYNC_URL", &server.base)
        .env("DATABASE_URL", &url);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.expect("running node");
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run `tests/client/<script>` with `env` against a fresh database and a default server.
pub(crate) async fn run_node_env(script: &str, tag: &str, env: &[(&str, String)]) {
    run_node(script, tag, env, |_| {}).await;
}

fn sse_env(sse: bool) -> Vec<(&'static str, String)> {
    if sse {
        vec![("E2E_LIVE_SSE", "1".to_string())]
    } else {
        Vec::new()
    }
}

pub(crate) async fn run_client(tag: &str, mutations: u32, where_clause: Option<&str>, sse: bool) {
    let mut env = sse_env(sse);
    env.push(("E2E_MUTATIONS", mutations.to_string()));
    env.push(("E2E_TIMEOUT_MS", "240000".to_string()));
    if let Some(w) = where_clause {
        env.push(("E2E_WHERE", w.to_string()));
    }
    run_node("e2e.mjs", tag, &env, |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_long_poll_1000_mutations() {
    run_client("client", 1000, None, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_with_where_clause() {
    run_client("clientw", 300, Some("flag = true"), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_in_sse_mode() {
    run_client("clientsse", 500, None, true).await;
}

/// The official client's `Shape` follows a subquery shape through random moves and equals
/// Postgres after each (tests/client/subquery.mjs): the deletes placed before move-outs.
/// (With them off it fails at once: checked by hand.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_follows_subquery_moves_long_poll() {
    run_node("subquery.mjs", "clientsubq", &sse_env(false), |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_follows_subquery_moves_sse() {
    run_node("subquery.mjs", "clientsubqsse", &sse_env(true), |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_subset_snapshots_in_changes_only_mode() {
    run_node("subset.mjs", "clientsubset", &sse_env(false), |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_subset_snapshots_in_changes_only_mode_sse() {
    run_node("subset.mjs", "clientsubsetsse", &sse_env(true), |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_every_type_special_columns_delete_and_truncate_long_poll() {
    run_node("types.mjs", "typeslp", &sse_env(false), |c| {
        c.shape_deletion = true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_every_type_special_columns_delete_and_truncate_sse() {
    run_node("types.mjs", "typessse", &sse_env(true), |c| {
        c.shape_deletion = true
    })
    .await;
}

/// Per-user shapes with the official client and no proxy: two users' JWTs, one role filtering
/// by `owner = claim('sub')`, the same table; each sees only their rows, live, including a row
/// moving from one to the other (tests/client/peruser.mjs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_per_user_shapes_with_jwts() {
    use crate::authz::{admin, secured, token};
    npm_install();
    let url = fresh_db("clientperuser").await;
    crate::support::connect(&url)
        .await
        .batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, owner text NOT NULL, title text);
             INSERT INTO docs SELECT g, (ARRAY['alice','bob','carol'])[1 + g % 3], 'doc ' || g
               FROM generate_series(1, 30) g;",
        )
        .await
        .unwrap();
    let server = secured(&url).await;
    let r = admin(
        &server,
        reqwest::Method::POST,
        "/v1/admin/role",
        Some(serde_json::json!({"name": "user", "access": [{
            "database_id": "default", "table": "public.docs",
            "columns": ["id", "owner", "title"], "row_filter": "owner = claim('sub')"
        }]})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client/peruser.mjs");
    let out = tokio::process::Command::new("node")
        .arg(path)
        .env("SHAPESYNC_URL", &server.base)
        .env("DATABASE_URL", &url)
        .env(
            "TOKEN_ALICE",
            token(serde_json::json!({"role": "user", "sub": "alice"})),
        )
        .env(
            "TOKEN_BOB",
            token(serde_json::json!({"role": "user", "sub": "bob"})),
        )
        .output()
        .await
        .expect("running node");
    assert!(
        out.status.success(),
        "peruser.mjs failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
