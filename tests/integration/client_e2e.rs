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
