//! The official `@electric-sql/client` (npm, pinned in tests/client/package.json) against the
//! real server: initial rows, then 1,000 random inserts, updates (including primary-key
//! changes) and deletes made through a normal Postgres connection; the client's materialized
//! rows must equal what Postgres returns. Long-poll mode, with a where clause, and SSE mode.

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

async fn run_client(tag: &str, mutations: u32, where_clause: Option<&str>, sse: bool) {
    npm_install();
    let url = fresh_db(tag).await;
    let server = TestServer::start(&url).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client/e2e.mjs");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(script)
        .env("SHAPESYNC_URL", &server.base)
        .env("DATABASE_URL", &url)
        .env("E2E_MUTATIONS", mutations.to_string())
        .env("E2E_TIMEOUT_MS", "240000");
    if sse {
        cmd.env("E2E_LIVE_SSE", "1");
    }
    if let Some(w) = where_clause {
        cmd.env("E2E_WHERE", w);
    }
    let out = cmd.output().await.expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "client e2e failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
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

async fn run_subset(tag: &str, sse: bool) {
    npm_install();
    let url = fresh_db(tag).await;
    let server = TestServer::start(&url).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client/subset.mjs");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(script)
        .env("SHAPESYNC_URL", &server.base)
        .env("DATABASE_URL", &url);
    if sse {
        cmd.env("E2E_LIVE_SSE", "1");
    }
    let out = cmd.output().await.expect("running node");
    assert!(
        out.status.success(),
        "subset e2e failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_subset_snapshots_in_changes_only_mode() {
    run_subset("clientsubset", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_subset_snapshots_in_changes_only_mode_sse() {
    run_subset("clientsubsetsse", true).await;
}

async fn run_types(tag: &str, sse: bool) {
    npm_install();
    let url = fresh_db(tag).await;
    let server = TestServer::start_with(&url, |c| c.shape_deletion = true).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client/types.mjs");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(script)
        .env("SHAPESYNC_URL", &server.base)
        .env("DATABASE_URL", &url);
    if sse {
        cmd.env("E2E_LIVE_SSE", "1");
    }
    let out = cmd.output().await.expect("running node");
    assert!(
        out.status.success(),
        "types e2e failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_every_type_special_columns_delete_and_truncate_long_poll() {
    run_types("typeslp", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_every_type_special_columns_delete_and_truncate_sse() {
    run_types("typessse", true).await;
}
