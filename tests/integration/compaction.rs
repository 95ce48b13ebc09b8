//! Compaction against a real Postgres: a few hot rows updated hundreds of times. Sealed chunks
//! are compacted (runs of updates to one row merged), a new client reads far fewer messages and
//! ends with Postgres' rows, every offset an earlier client held (each taken at the log's head,
//! so inside chunks compacted later) still leads to the right rows, before and after a restart;
//! compacted responses carry their own ETag and revalidate; the metrics count the chunks.

use std::time::{Duration, Instant};

use crate::support::{connect, fresh_db, pg_rows, Follower, Reply, TestServer};

const SHAPE: &str = "table=counters";
const ROWS: &str = "SELECT id::text, n::text, note FROM counters ORDER BY id";

/// A client from `-1` to up to date; returns it with every (query, reply) of its catch-up.
async fn catch_up(server: &TestServer) -> (Follower, Vec<(String, Reply)>) {
    let mut f = Follower::new(server.client(), SHAPE);
    let mut replies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f.up_to_date {
        assert!(Instant::now() < deadline, "not up to date in time");
        let mut q = format!("{SHAPE}&offset={}", f.offset);
        if let Some(h) = &f.handle {
            q.push_str(&format!("&handle={h}"));
        }
        let r = f.poll().await;
        replies.push((q, r));
    }
    (f, replies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_rows_compact_and_every_offset_stays_valid() {
    let url = fresh_db("compaction").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE counters (id int8 PRIMARY KEY, n int8 NOT NULL, note text);
         INSERT INTO counters SELECT g, 0, 'row ' || g FROM generate_series(1, 3) g;",
    )
    .await
    .unwrap();
    let mut server = TestServer::start_with(&url, |c| c.chunk_bytes = 2_000).await;
    let mut live = Follower::new(server.client(), SHAPE);
    live.sync().await;
    // Copies of a live client taken as it went: each holds the head offset of that moment.
    let mut held: Vec<Follower> = Vec::new();
    let updates = 300;
    for i in 0..updates {
        let id = (i % 3 + 1) as i64;
        db.execute("UPDATE counters SET n = n + 1 WHERE id = $1", &[&id])
            .await
            .unwrap();
        if i % 20 == 19 {
            live.until_matches(&pg_rows(&db, ROWS).await).await;
            held.push(live.clone());
        }
    }
    let want = pg_rows(&db, ROWS).await;
    live.until_matches(&want).await;

    // Compaction runs in the background (a few chunks per tick): wait until a new client's
    // catch-up reads far fewer changes than there were updates. Each catch-up on the way
    // must end with Postgres' rows, whatever mix of compacted and original chunks it read.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (fresh, tags) = loop {
        let (f, tags) = catch_up(&server).await;
        let mut got = f.values();
        got.sort_by_key(|r| r["id"].as_str().map(str::to_owned));
        assert_eq!(got, want, "a new client ends with Postgres' rows");
        if f.changes_seen < updates / 3 {
            break (f, tags);
        }
        assert!(
            Instant::now() < deadline,
            "{} changes read for {updates} updates: not compacted",
            f.changes_seen
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // A compacted chunk revalidates against its own ETag.
    let (q, tag) = tags
        .iter()
        .filter_map(|(q, r)| Some((q, r.header("etag")?)))
        .find(|(_, t)| t.ends_with(":c\""))
        .expect("compacted");
    let r = server.client().get_with(q, &[("if-none-match", tag)]).await;
    assert_eq!(r.status, 304, "{q}");

    // Every offset a client held leads to Postgres' rows.
    for (i, f) in held.iter().enumerate().step_by(2) {
        let mut f = f.clone();
        f.until_matches(&want).await;
        assert!(f.up_to_date, "client {i}");
    }
    let metrics = server.client().raw("/metrics").await.body;
    let compacted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shapesync_compacted_chunks_total{database_id=\"default\"} "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(compacted.is_some_and(|n| n > 0), "{metrics}");

    // After a restart the compacted chunks are still served, and the other held offsets work.
    server.restart().await;
    let (again, _) = catch_up(&server).await;
    assert!(
        again.changes_seen <= fresh.changes_seen,
        "still compacted: {} then {}",
        fresh.changes_seen,
        again.changes_seen
    );
    assert_eq!(again.values().len(), want.len());
    for f in held.iter().skip(1).step_by(2) {
        let mut f = f.clone();
        f.client = server.client();
        f.until_matches(&want).await;
    }
}

/// With an object store: sealed chunks are compacted before they are uploaded, and once the
/// shape is archived (local files gone) the bucket serves its chunks by handle, the compacted
/// ones with the compacted ETag and the same body the local log gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_chunks_are_uploaded_and_served_from_the_bucket() {
    let url = fresh_db("compaction_tier").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE counters (id int8 PRIMARY KEY, n int8 NOT NULL, note text);
         INSERT INTO counters SELECT g, 0, 'row ' || g FROM generate_series(1, 3) g;",
    )
    .await
    .unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(&url, |c| {
        c.chunk_bytes = 2_000;
        c.object_store_url = Some(format!("file://{}", bucket.path().display()));
        c.local_retention = Some(Duration::from_millis(1_500));
    })
    .await;
    let mut live = Follower::new(server.client(), SHAPE);
    live.sync().await;
    let updates = 200;
    for i in 0..updates {
        let id = (i % 3 + 1) as i64;
        db.execute("UPDATE counters SET n = n + 1 WHERE id = $1", &[&id])
            .await
            .unwrap();
    }
    let want = pg_rows(&db, ROWS).await;
    live.until_matches(&want).await;
    let handle = live.handle.clone().expect("handle");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (local, replies) = loop {
        let (f, replies) = catch_up(&server).await;
        if f.changes_seen < updates / 3 {
            break (f, replies);
        }
        assert!(Instant::now() < deadline, "not compacted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(local.handle.as_deref(), Some(handle.as_str()));
    // Idle past the retention: archived, its local files removed.
    let stack = server.server.as_ref().unwrap().stack.clone().unwrap();
    let dir = server.storage_dir().join("shapes").join(&handle);
    crate::support::eventually(
        "the shape to be archived",
        Duration::from_secs(30),
        || async { stack.registry.get(&handle.parse().unwrap()).is_none() && !dir.exists() },
    )
    .await;
    // Every change chunk the first catch-up read (not the head, which was not sealed) comes
    // from the bucket now: the compacted ones byte for byte, under the compacted ETag.
    let mut compacted = 0;
    for (q, r) in &replies[..replies.len() - 1] {
        if q.ends_with("offset=-1") {
            continue; // -1 names no handle: it finds the live shape, not the archived one
        }
        let again = server.client().get(q).await;
        assert_eq!(again.status, 200, "{q}: {}", again.body);
        let tag = r.header("etag").unwrap();
        let bucket_tag = again.header("etag").unwrap();
        assert_eq!(
            again.header("electric-offset"),
            r.header("electric-offset"),
            "{q}"
        );
        if tag.ends_with(":c\"") && bucket_tag == tag {
            assert_eq!(again.body, r.body, "{q}");
            compacted += 1;
        } else {
            // Uploaded before it was compacted: the original form, just as correct.
            assert_eq!(bucket_tag.replace(":c\"", "\""), tag.replace(":c\"", "\""));
        }
    }
    assert!(compacted > 0, "compacted chunks served from the bucket");
}
