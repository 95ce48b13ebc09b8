//! Shape lifecycle against a real Postgres: sealed chunks copied to an object store (a local
//! filesystem bucket and a real S3-compatible server, moto) and served from there after the
//! local copy is archived, and by a second process sharing the bucket; deletion cleans up local
//! files and bucket objects; the shape cap evicts the least recently used shape (409).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use shapesync_storage::object_tier::ObjectTier;

use crate::support::{connect, eventually, fresh_db, Reply, ShapeClient, TestServer};

const SHAPE: &str = "table=items";

async fn items_db(tag: &str) -> (String, tokio_postgres::Client) {
    let url = fresh_db(tag).await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE items (id int8 PRIMARY KEY, name text);
         INSERT INTO items SELECT g, repeat('s', 40) || g FROM generate_series(1, 60) g;",
    )
    .await
    .unwrap();
    (url, db)
}

/// Many small transactions: several change chunks seal (chunk threshold 2,000 bytes).
async fn write_changes(db: &tokio_postgres::Client, base: i64) {
    for i in 0..12 {
        db.batch_execute(&format!(
            "INSERT INTO items SELECT g, repeat('c', 40) || g FROM generate_series({}, {}) g;",
            base + i * 5,
            base + 4 + i * 5
        ))
        .await
        .unwrap();
    }
}

/// One catch-up request per chunk from `-1` to up-to-date: (offset asked, reply) each.
async fn catch_up(client: &ShapeClient) -> (String, Vec<(String, Reply)>) {
    let mut offset = "-1".to_string();
    let mut handle: Option<String> = None;
    let mut replies = Vec::new();
    for _ in 0..500 {
        let q = match &handle {
            Some(h) => format!("{SHAPE}&offset={offset}&handle={h}"),
            None => format!("{SHAPE}&offset={offset}"),
        };
        let r = client.get(&q).await;
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        handle = r.header("electric-handle").map(str::to_string);
        let next = r.header("electric-offset").expect("offset").to_string();
        let done = r.up_to_date();
        replies.push((offset, r));
        offset = next;
        if done {
            return (handle.expect("handle"), replies);
        }
    }
    panic!("no up-to-date after 500 requests");
}

/// The data messages of a reply (control messages differ at the head: up-to-date).
fn data(r: &Reply) -> Vec<Value> {
    r.messages()
        .into_iter()
        .filter(|m| m["headers"].get("control").is_none())
        .collect()
}

/// Where a test's bucket is, to look at its objects directly.
enum Bucket {
    Dir(PathBuf),
    /// An `s3://bucket/prefix` url.
    S3(String),
}

impl Bucket {
    /// The highest manifest of `handle` (the default tenant's folder), as JSON.
    async fn manifest(&self, handle: &str) -> Option<Value> {
        match self {
            Bucket::Dir(bucket) => {
                let dir = bucket.join("default").join(handle);
                let mut names: Vec<String> = std::fs::read_dir(&dir)
                    .ok()?
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with("manifest-"))
                    .collect();
                names.sort();
                serde_json::from_slice(&std::fs::read(dir.join(names.last()?)).ok()?).ok()
            }
            Bucket::S3(url) => {
                // Signed requests (moto refuses anonymous reads): the tier's own client.
                let tier = ObjectTier::from_url(url).ok()?.child("default");
                let m = tier.latest_manifest(handle).await.ok()??;
                serde_json::to_value(m).ok()
            }
        }
    }
}

/// Sealed chunk ends listed by the highest manifest of `handle`, and whether it is archived.
async fn sealed_ends(bucket: &Bucket, handle: &str) -> Option<(Vec<String>, bool)> {
    let m = bucket.manifest(handle).await?;
    let snapshot = m["snapshot_chunks"].as_u64()?;
    let mut ends: Vec<String> = (0..snapshot).map(|k| format!("0_{k}")).collect();
    for e in m["change_chunks"].as_array()? {
        ends.push(e.as_str()?.to_string());
    }
    Some((ends, m["archived"].as_bool()?))
}

fn shape_dir(server: &TestServer, handle: &str) -> PathBuf {
    server.storage_dir().join("shapes").join(handle)
}

/// Replays `replies` against `client`: sealed chunks give the same data and offset, the rest
/// 409. Returns how many were served.
async fn replay(
    client: &ShapeClient,
    handle: &str,
    replies: &[(String, Reply)],
    sealed: &[String],
) -> usize {
    let mut served = 0;
    for (asked, want) in replies.iter().filter(|(o, _)| o != "-1") {
        let r = client
            .get(&format!("{SHAPE}&offset={asked}&handle={handle}"))
            .await;
        let end = want.header("electric-offset").unwrap();
        if sealed.iter().any(|s| s == end) {
            assert_eq!(r.status, 200, "offset {asked}: {}", r.body);
            assert_eq!(r.header("electric-offset"), Some(end), "offset {asked}");
            assert_eq!(r.header("electric-handle"), Some(handle));
            assert_eq!(r.header("electric-schema"), want.header("electric-schema"));
            assert_eq!(data(&r), data(want), "offset {asked}");
            served += 1;
        } else {
            assert_eq!(
                r.status, 409,
                "offset {asked} is past the sealed part: {}",
                r.body
            );
        }
    }
    served
}

/// The whole flow over one bucket: upload, archive after the retention, serve from the
/// bucket, then a second process serves the same chunks by handle.
/// Returns the archived shape's handle.
async fn archive_and_serve(tag: &str, url_of_bucket: &str, bucket: &Bucket) -> String {
    let (url, db) = items_db(tag).await;
    let tweak = |c: &mut shapesync::server::Config| {
        c.chunk_bytes = 2_000;
        c.object_store_url = Some(url_of_bucket.to_string());
        c.local_retention = Some(Duration::from_millis(1_500));
    };
    let server = TestServer::start_with(&url, tweak).await;
    let client = server.client();
    let (handle, _) = catch_up(&client).await;
    write_changes(&db, 1000).await;
    let stack = server.server.as_ref().unwrap().stack.clone().unwrap();
    // One pass over the whole log once every change is there.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let replies = loop {
        let (h, replies) = catch_up(&client).await;
        assert_eq!(h, handle);
        let inserted = replies.iter().flat_map(|(_, r)| data(r)).filter(|m| {
            m["value"]["id"]
                .as_str()
                .and_then(|i| i.parse::<i64>().ok())
                >= Some(1000)
        });
        if inserted.count() == 60 {
            break replies;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the changes did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(replies.len() >= 6, "several chunks: {}", replies.len());
    // Idle past the retention: archived (manifest marked), local files gone.
    let local = shape_dir(&server, &handle);
    eventually(
        "the shape to be archived",
        Duration::from_secs(20),
        || async { stack.registry.get(&handle.parse().unwrap()).is_none() && !local.exists() },
    )
    .await;
    let (sealed, archived) = sealed_ends(bucket, &handle).await.expect("manifest");
    assert!(archived);
    assert!(
        sealed.len() >= 4,
        "snapshot and change chunks sealed: {sealed:?}"
    );
    let served = replay(&client, &handle, &replies, &sealed).await;
    assert!(served >= 3, "served {served} chunks from the bucket");

    // A second process sharing the bucket (its own slot) serves the same chunks by handle.
    let second = TestServer::start_with(&url, |c| {
        tweak(c);
        c.local_retention = None;
        c.stream_id = format!("{}_b", c.stream_id);
    })
    .await;
    let again = replay(&second.client(), &handle, &replies, &sealed).await;
    assert_eq!(again, served);
    // A definition other than the handle's is not served from the bucket.
    let r = second
        .client()
        .get(&format!(
            "table=items&where=id%3D1&offset={}&handle={handle}",
            replies[1].0
        ))
        .await;
    assert_eq!(r.status, 409);
    handle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_shapes_serve_sealed_chunks_from_a_filesystem_bucket() {
    let bucket = tempfile::tempdir().unwrap();
    let url = format!("file://{}", bucket.path().display());
    archive_and_serve("tier_fs", &url, &Bucket::Dir(bucket.path().to_path_buf())).await;
}

/// moto's S3 server from the venv `scripts/setup.sh` makes, on a free port.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_moto() -> Moto {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/s3-venv/bin/moto_server");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/setup.sh",
        bin.display()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("moto_server");
    let endpoint = format!("http://127.0.0.1:{port}");
    let moto = Moto { child, endpoint };
    let http = reqwest::Client::new();
    eventually("moto to listen", Duration::from_secs(30), || async {
        http.get(&moto.endpoint).send().await.is_ok()
    })
    .await;
    moto
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_shapes_serve_sealed_chunks_from_an_s3_server() {
    let moto = start_moto().await;
    // The only test that uses the AWS_* variables (read when the store is opened).
    std::env::set_var("AWS_ENDPOINT_URL", &moto.endpoint);
    std::env::set_var("AWS_ALLOW_HTTP", "true");
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    std::env::set_var("AWS_REGION", "us-east-1");
    let r = reqwest::Client::new()
        .put(format!("{}/shapes-bucket", moto.endpoint))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "create bucket: {}", r.status());
    let bucket = Bucket::S3("s3://shapes-bucket/prod/v1".into());
    let handle = archive_and_serve("tier_s3", "s3://shapes-bucket/prod/v1", &bucket).await;
    // Create-only holds on the S3 server too: a writer with other bytes for names that exist
    // gets a conflict and overwrites nothing.
    let tier = ObjectTier::from_url("s3://shapes-bucket/prod/v1")
        .unwrap()
        .child("default");
    let before = tier
        .latest_manifest(&handle)
        .await
        .unwrap()
        .expect("manifest");
    let other = shapesync_storage::MemoryStore::new(shapesync_storage::StoreConfig::default());
    let log = shapesync_storage::ShapeLogStore::create(&other, &handle, b"m").unwrap();
    log.append_snapshot_row(br#"{"other":1}"#).unwrap();
    log.finish_snapshot(br#"{"headers":{"control":"snapshot-end"}}"#)
        .unwrap();
    let mut stale = Some(
        serde_json::from_value(serde_json::json!({
            "format": 1, "seq": 0, "id": handle, "meta_hex": "6d", "snapshot_chunks": 0,
            "snapshot_complete": false, "change_chunks": [], "archived": false
        }))
        .unwrap(),
    );
    let err = tier
        .sync(&handle, b"m", &log, &mut stale)
        .await
        .expect_err("conflict");
    assert!(
        err.to_string()
            .contains("already exists with other contents"),
        "{err}"
    );
    assert_eq!(tier.latest_manifest(&handle).await.unwrap(), Some(before));
    // Objects really are in the bucket, under the prefix and the tenant's folder.
    let list = reqwest::Client::new()
        .get(format!(
            "{}/shapes-bucket?list-type=2&prefix=prod/v1/default/",
            moto.endpoint
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        list.contains("manifest-000001.json") && list.contains("snapshot-0.chunk"),
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_shape_removes_its_files_and_bucket_objects() {
    let (url, db) = items_db("tier_delete").await;
    let bucket = tempfile::tempdir().unwrap();
    let dir = Bucket::Dir(bucket.path().to_path_buf());
    let server = TestServer::start_with(&url, |c| {
        c.chunk_bytes = 2_000;
        c.shape_deletion = true;
        c.object_store_url = Some(format!("file://{}", bucket.path().display()));
    })
    .await;
    let client = server.client();
    let (handle, _) = catch_up(&client).await;
    write_changes(&db, 1000).await;
    eventually("the upload", Duration::from_secs(20), || async {
        sealed_ends(&dir, &handle)
            .await
            .is_some_and(|(e, _)| e.len() >= 3)
    })
    .await;
    let local = shape_dir(&server, &handle);
    assert!(local.exists());
    let r = reqwest::Client::new()
        .delete(format!("{}/v1/shape?{SHAPE}&handle={handle}", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    // At once, before the bucket copy is gone: the deleted handle is not served from there.
    let r = client
        .get(&format!("{SHAPE}&offset=0_0&handle={handle}"))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let objects = bucket.path().join("default").join(&handle);
    eventually(
        "local files and bucket objects to go",
        Duration::from_secs(20),
        || async {
            !local.exists()
                && std::fs::read_dir(&objects)
                    .map(|d| d.count() == 0)
                    .unwrap_or(true)
        },
    )
    .await;
    let r = client
        .get(&format!("{SHAPE}&offset=0_0&handle={handle}"))
        .await;
    assert_eq!(
        r.status, 409,
        "a deleted shape is not served from the bucket"
    );
    assert_ne!(r.header("electric-handle"), Some(handle.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shape_cap_evicts_the_least_recently_used_shape() {
    let (url, _db) = items_db("tier_lru").await;
    let server = TestServer::start_with(&url, |c| c.max_shapes = Some(2)).await;
    let client = server.client();
    let first = |w: &str| {
        let client = &client;
        let q = format!("table=items&where={w}&offset=-1");
        async move {
            let r = client.get(&q).await;
            assert_eq!(r.status, 200, "{}", r.body);
            r.header("electric-handle").unwrap().to_string()
        }
    };
    let a = first("id%3D1").await;
    let b = first("id%3D2").await;
    // `a` is used again: `b` is now the least recently used.
    let r = client
        .get(&format!("table=items&where=id%3D1&offset=0_0&handle={a}"))
        .await;
    assert_eq!(r.status, 200);
    let c = first("id%3D3").await;
    let stack = server.server.as_ref().unwrap().stack.clone().unwrap();
    assert_eq!(stack.registry.len(), 2);
    let r = client
        .get(&format!("table=items&where=id%3D2&offset=0_0&handle={b}"))
        .await;
    assert_eq!(r.status, 409, "the evicted shape: {}", r.body);
    assert_ne!(
        r.header("electric-handle"),
        Some(b.as_str()),
        "a new handle, never reused"
    );
    eventually(
        "the evicted shape's files to go",
        Duration::from_secs(10),
        || async { !shape_dir(&server, &b).exists() },
    )
    .await;
    // Refetching `b` made a third shape again: `a` (used before `c` was created) went.
    assert_eq!(stack.registry.len(), 2);
    let r = client
        .get(&format!("table=items&where=id%3D3&offset=0_0&handle={c}"))
        .await;
    assert_eq!(r.status, 200);
    let r = client
        .get(&format!("table=items&where=id%3D1&offset=0_0&handle={a}"))
        .await;
    assert_eq!(r.status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_long_poll_keeps_its_shape_from_being_archived() {
    let (url, _db) = items_db("tier_parked").await;
    let bucket = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(&url, |c| {
        c.long_poll = Duration::from_secs(3);
        c.local_retention = Some(Duration::from_millis(500));
        c.object_store_url = Some(format!("file://{}", bucket.path().display()));
    })
    .await;
    let client = server.client();
    let (handle, replies) = catch_up(&client).await;
    let end = replies
        .last()
        .unwrap()
        .1
        .header("electric-offset")
        .unwrap()
        .to_string();
    // Parked for the whole long-poll (six retention periods): still served, then up to date.
    let r = client
        .get(&format!("{SHAPE}&offset={end}&handle={handle}&live=true"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.up_to_date());
    // Once nobody waits, it is archived.
    let stack = server.server.as_ref().unwrap().stack.clone().unwrap();
    eventually(
        "archiving after the request",
        Duration::from_secs(10),
        || async { stack.registry.get(&handle.parse().unwrap()).is_none() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_resume_after_a_restart_from_the_bucket_manifest() {
    let (url, db) = items_db("tier_restart").await;
    let bucket = tempfile::tempdir().unwrap();
    let dir = Bucket::Dir(bucket.path().to_path_buf());
    let mut server = TestServer::start_with(&url, |c| {
        c.chunk_bytes = 2_000;
        c.object_store_url = Some(format!("file://{}", bucket.path().display()));
    })
    .await;
    let (handle, _) = catch_up(&server.client()).await;
    write_changes(&db, 1000).await;
    let uploaded = || async { sealed_ends(&dir, &handle).await.map_or(0, |(e, _)| e.len()) };
    eventually("the first uploads", Duration::from_secs(20), || async {
        uploaded().await >= 4
    })
    .await;
    let before = uploaded().await;
    server.restart().await;
    // More changes seal more chunks; the restarted process continues the same manifests.
    write_changes(&db, 5000).await;
    eventually(
        "uploads after the restart",
        Duration::from_secs(30),
        || async { uploaded().await > before },
    )
    .await;
    let m = dir.manifest(&handle).await.expect("manifest");
    let seq = m["seq"].as_u64().unwrap();
    let names: Vec<String> = std::fs::read_dir(bucket.path().join("default").join(&handle))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("manifest-"))
        .collect();
    assert_eq!(
        names.len() as u64,
        seq,
        "manifests 1..={seq}, none skipped or rewritten"
    );
    // The restarted server serves the same log, so its chunks equal the bucket's.
    let (h, replies) = catch_up(&server.client()).await;
    assert_eq!(h, handle);
    let ends: Vec<&str> = replies
        .iter()
        .filter_map(|(_, r)| r.header("electric-offset"))
        .collect();
    let (sealed, _) = sealed_ends(&dir, &handle).await.unwrap();
    for s in &sealed {
        assert!(
            ends.contains(&s.as_str()),
            "bucket chunk {s} is a chunk of the log: {ends:?}"
        );
    }
}
