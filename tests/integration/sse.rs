//! Live mode over Server-Sent Events, raw and through the official client.

use std::time::Duration;

use crate::support::{connect, fresh_db, Follower, TestServer};

/// Read SSE `data:` events until `stop` says so (bounded by a deadline).
async fn read_events(
    res: &mut reqwest::Response,
    stop: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let mut buf = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !stop(&events) {
        let chunk = tokio::time::timeout_at(deadline, res.chunk())
            .await
            .expect("events in time")
            .expect("stream");
        let Some(chunk) = chunk else { break };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let ev: String = buf.drain(..i + 2).collect();
            if let Some(data) = ev.strip_prefix("data: ") {
                events.push(serde_json::from_str(data.trim_end()).expect("event json"));
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_changes_with_up_to_date_after_each_batch() {
    let url = fresh_db("sse").await;
    let db = connect(&url).await;
    db.batch_execute("CREATE TABLE s (id int PRIMARY KEY, v text); INSERT INTO s VALUES (1, 'a')")
        .await
        .unwrap();
    let server = TestServer::start_with(&url, |c| c.sse_timeout = Duration::from_secs(3)).await;
    let mut f = Follower::new(server.client(), "table=s");
    f.sync().await;
    let handle = f.handle.clone().unwrap();
    let url = format!(
        "{}/v1/shape?table=s&offset={}&handle={handle}&live=true&live_sse=true&experimental_live_sse=true",
        server.base, f.offset
    );
    let mut res = reqwest::Client::new().get(&url).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "public, max-age=2");
    assert_eq!(h["electric-offset"].to_str().unwrap(), f.offset);
    assert_eq!(h["electric-handle"].to_str().unwrap(), handle);
    assert!(h.contains_key("electric-cursor"));
    db.batch_execute("INSERT INTO s VALUES (2, 'b'); UPDATE s SET v = 'c' WHERE id = 1;")
        .await
        .unwrap();
    let events = read_events(&mut res, |e| {
        e.iter().any(|m| m["headers"]["control"] == "up-to-date")
    })
    .await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0]["headers"]["operation"], "insert");
    assert_eq!(events[1]["headers"]["operation"], "update");
    assert_eq!(events[2]["headers"]["control"], "up-to-date");
    assert_eq!(
        events[2]["headers"]["global_last_seen_lsn"],
        events[0]["headers"]["lsn"]
    );
    // The stream closes by itself after the SSE timeout.
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        while res.chunk().await.unwrap().is_some() {}
    })
    .await;
    assert!(rest.is_ok(), "the SSE stream ends after its timeout");

    // Catch-up data already there: sent as events, then the stream closes.
    let url = format!(
        "{}/v1/shape?table=s&offset={}&handle={handle}&live=true&live_sse=true",
        server.base, f.offset
    );
    let res = reqwest::Client::new().get(&url).send().await.unwrap();
    let body = tokio::time::timeout(Duration::from_secs(5), res.text())
        .await
        .expect("closed at once")
        .unwrap();
    assert_eq!(body.matches("data: ").count(), 3, "{body}");
}
