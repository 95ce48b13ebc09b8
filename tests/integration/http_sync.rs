//! End to end over HTTP against a real Postgres: the two-request initial sync, live changes,
//! where clauses, columns, errors, ETags, long-poll timeout and 409s.

use std::time::Duration;

use serde_json::json;

use crate::support::{connect, fresh_db, pg_rows, wait_parked, Follower, TestServer};

async fn setup(tag: &str) -> (tokio_postgres::Client, TestServer) {
    let url = fresh_db(tag).await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE items (id int8 PRIMARY KEY, name text, n int4, flag bool);
         INSERT INTO items VALUES (1, 'one', 10, true), (2, 'two', 20, false), (3, NULL, NULL, NULL);",
    )
    .await
    .unwrap();
    let server = TestServer::start_with(&url, |c| c.long_poll = Duration::from_secs(2)).await;
    (db, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_takes_two_requests_then_live_changes_arrive() {
    let (db, server) = setup("initial").await;
    let c = server.client();

    let r = c.get("table=items&offset=-1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("electric-offset"), Some("0_0"));
    assert!(!r.up_to_date(), "offset=-1 is never up to date");
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746")
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(r.header("electric-has-data"), Some("true"));
    let schema: serde_json::Value =
        serde_json::from_str(r.header("electric-schema").unwrap()).unwrap();
    assert_eq!(
        schema["id"],
        json!({"type":"int8","pk_index":0,"not_null":true})
    );
    assert_eq!(schema["name"], json!({"type":"text"}));
    let handle = r.header("electric-handle").unwrap().to_string();
    assert_eq!(
        r.header("etag"),
        Some(format!("\"{handle}:-1:0_0\"").as_str())
    );
    let msgs = r.messages();
    assert_eq!(msgs.len(), 4);
    assert_eq!(
        msgs[0],
        json!({"key":"\"public\".\"items\"/\"1\"","value":{"id":"1","name":"one","n":"10","flag":"t"},
               "headers":{"operation":"insert","relation":["public","items"]}})
    );
    assert_eq!(
        msgs[2]["value"],
        json!({"id":"3","name":null,"n":null,"flag":null})
    );
    assert_eq!(msgs[3]["headers"]["control"], "snapshot-end");
    assert!(msgs[3]["headers"]["xmin"].is_string());

    let r = c
        .get(&format!("table=items&offset=0_0&handle={handle}"))
        .await;
    assert_eq!(r.status, 200);
    assert!(r.up_to_date());
    assert_eq!(r.header("electric-offset"), Some("0_inf"));
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=60, stale-while-revalidate=300")
    );
    let msgs = r.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["headers"]["control"], "up-to-date");
    assert!(msgs[0]["headers"]["global_last_seen_lsn"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .is_ok());

    // A parked live request is woken by a commit.
    let live = {
        let c = server.client();
        let q = format!("table=items&offset=0_inf&handle={handle}&live=true&cursor=");
        tokio::spawn(async move { c.get(&q).await })
    };
    db.batch_execute("BEGIN; INSERT INTO items VALUES (4, 'four', 40, true); UPDATE items SET name = 'uno' WHERE id = 1; COMMIT;")
        .await
        .unwrap();
    let r = live.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.up_to_date());
    assert!(r.header("electric-cursor").unwrap().parse::<u64>().is_ok());
    assert!(
        r.header("electric-schema").is_none(),
        "no schema on live responses"
    );
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=5, stale-while-revalidate=5")
    );
    let msgs = r.messages();
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    let lsn = msgs[0]["headers"]["lsn"].as_str().unwrap().to_string();
    assert_eq!(msgs[0]["headers"]["operation"], "insert");
    assert_eq!(msgs[0]["headers"]["op_position"], 0);
    assert!(msgs[0]["headers"].get("last").is_none());
    assert_eq!(msgs[1]["headers"]["operation"], "update");
    assert_eq!(msgs[1]["value"], json!({"id":"1","name":"uno"}));
    assert_eq!(msgs[1]["headers"]["op_position"], 2);
    assert_eq!(msgs[1]["headers"]["last"], true);
    assert_eq!(msgs[1]["headers"]["lsn"], lsn.as_str());
    assert!(msgs[1]["headers"]["txids"][0].is_u64());
    assert_eq!(
        r.header("electric-offset"),
        Some(format!("{lsn}_2").as_str())
    );
    assert_eq!(msgs[2]["headers"]["global_last_seen_lsn"], lsn.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_matches_postgres_through_inserts_updates_deletes_and_pk_changes() {
    let (db, server) = setup("follow").await;
    let mut f = Follower::new(server.client(), "table=items");
    f.sync().await;
    db.batch_execute(
        "INSERT INTO items SELECT g, 'n' || g, g, g % 2 = 0 FROM generate_series(10, 60) g;
         UPDATE items SET n = n + 1 WHERE id % 3 = 0;
         DELETE FROM items WHERE id % 5 = 0;
         UPDATE items SET id = 1000 WHERE id = 11;
         UPDATE items SET name = name WHERE id = 12;
         BEGIN; UPDATE items SET flag = NOT flag WHERE id < 20; DELETE FROM items WHERE id = 13; COMMIT;",
    )
    .await
    .unwrap();
    let expected = pg_rows(&db, "SELECT * FROM items ORDER BY id").await;
    f.until_matches(&expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_clause_moves_rows_in_and_out() {
    let (db, server) = setup("where").await;
    let mut f = Follower::new(
        server.client(),
        "table=items&where=flag%20%3D%20true&columns=id,name,flag",
    );
    f.sync().await;
    assert_eq!(f.rows.len(), 1);
    db.batch_execute(
        "UPDATE items SET flag = true WHERE id = 2;      -- moves in
         UPDATE items SET flag = false WHERE id = 1;     -- moves out
         UPDATE items SET n = 99 WHERE id = 2;           -- not a selected column: dropped
         INSERT INTO items VALUES (5, 'five', 5, true), (6, 'six', 6, false);",
    )
    .await
    .unwrap();
    let expected = pg_rows(
        &db,
        "SELECT id, name, flag FROM items WHERE flag = true ORDER BY id",
    )
    .await;
    f.until_matches(&expected).await;
    assert!(
        f.rows.values().all(|r| !r.contains_key("n")),
        "columns projection applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_follow_the_protocol() {
    let (_db, server) = setup("errors").await;
    let c = server.client();
    let r = c.get("table=nope&offset=-1").await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"message":"Invalid request","errors":{"table":["Table \"public\".\"nope\" does not exist. If the table name contains capitals or special characters you must quote it."]}})
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let r = c.get("table=items&offset=bad").await;
    assert_eq!(
        r.json(),
        json!({"message":"Invalid request","errors":{"offset":["has invalid format"]}})
    );
    let r = c.get("table=items&offset=0_0").await;
    assert_eq!(
        r.json()["errors"]["handle"][0],
        "can't be blank when offset != -1"
    );
    // Handles are opaque: one of another format is a stale handle (409 with the live one).
    let r = c.get("table=items&offset=0_0&handle=../../etc").await;
    assert_eq!(r.status, 409);
    assert!(r.header("electric-handle").is_some());
    let r = c.get("table=items&offset=-1&where=1%20x%201").await;
    assert_eq!(
        r.json(),
        json!({"message":"Invalid request","errors":{"where":["At location 17: syntax error at or near \"x\""]}})
    );
    let r = c.get("table=items&offset=-1&columns=name").await;
    assert_eq!(
        r.json()["errors"]["columns"][0],
        "The list of columns must include all primary key columns, missing: id"
    );
    // A well-formed but unknown handle: 409 pointing at the live shape.
    let r = c.get("table=items&offset=0_0&handle=1-1").await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json(), json!([{"headers":{"control":"must-refetch"}}]));
    let live = r.header("electric-handle").unwrap().to_string();
    assert!(r
        .header("location")
        .unwrap()
        .contains(&format!("handle={live}")));
    let r = c.get("table=items&offset=-1").await;
    assert_eq!(
        r.header("electric-handle"),
        Some(live.as_str()),
        "same definition, same handle"
    );
    // Health and unknown paths.
    let r = c.raw("/v1/health").await;
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"status":"active"}"#));
    let r = c.raw("/nope").await;
    assert_eq!((r.status, r.body.as_str()), (404, "Not found"));
    assert!(r.header("x-request-id").is_some());
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etags_revalidate_and_live_timeouts_answer_up_to_date() {
    let (_db, server) = setup("etag").await;
    let c = server.client();
    let r = c.get("table=items&offset=-1").await;
    let handle = r.header("electric-handle").unwrap().to_string();
    let tag = r.header("etag").unwrap().to_string();
    let r = c
        .get_with("table=items&offset=-1", &[("if-none-match", &tag)])
        .await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("electric-handle"), Some(handle.as_str()));
    let started = std::time::Instant::now();
    let q = format!("table=items&offset=0_inf&handle={handle}&live=true&cursor=");
    let r = c.get(&q).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "long-poll held"
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("electric-has-data"), Some("false"));
    assert!(r.up_to_date());
    assert_eq!(r.header("electric-offset"), Some("0_inf"));
    assert_eq!(r.messages()[0]["headers"]["control"], "up-to-date");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_print_the_same_in_the_snapshot_and_the_stream() {
    let url = fresh_db("values").await;
    let db = connect(&url).await;
    db.batch_execute(
        r#"CREATE SCHEMA "My Schema";
           CREATE TABLE "My Schema"."Mixed Items" (
             id int PRIMARY KEY, ts timestamptz, d date, iv interval, b bytea, f float8,
             num numeric(10,2), flag bool, j jsonb, arr int[], c char(4), "weird, name" text);
           INSERT INTO "My Schema"."Mixed Items" VALUES
             (1, '2026-01-02 03:04:05.5+02', '2026-03-04', '1 day 2 hours', '\x0102', 0.1,
              12.5, true, '{"a": [1, 2]}', '{1,NULL,3}', 'ab', 'x');"#,
    )
    .await
    .unwrap();
    let server = TestServer::start(&url).await;
    let table = "table=%22My%20Schema%22.%22Mixed%20Items%22";
    let mut f = Follower::new(server.client(), table);
    f.sync().await;
    let snap = f.rows.values().next().unwrap().clone();
    let expected = json!({"id":"1","ts":"2026-01-02 01:04:05.5+00","d":"2026-03-04","iv":"P1DT2H",
        "b":"\\x0102","f":"0.1","num":"12.50","flag":"t","j":"{\"a\": [1, 2]}","arr":"{1,NULL,3}",
        "c":"ab  ","weird, name":"x"});
    assert_eq!(serde_json::Value::Object(snap), expected);
    assert!(f
        .rows
        .keys()
        .next()
        .unwrap()
        .starts_with("\"My Schema\".\"Mixed Items\"/\"1\""));
    // The same values through the replication stream.
    db.batch_execute(
        r#"DELETE FROM "My Schema"."Mixed Items";
           INSERT INTO "My Schema"."Mixed Items" VALUES
             (1, '2026-01-02 03:04:05.5+02', '2026-03-04', '1 day 2 hours', '\x0102', 0.1,
              12.5, true, '{"a": [1, 2]}', '{1,NULL,3}', 'ab', 'x');"#,
    )
    .await
    .unwrap();
    let before = f.changes_seen;
    f.until("the delete and re-insert", |f| f.changes_seen >= before + 2)
        .await;
    let streamed = f.rows.values().next().unwrap().clone();
    assert_eq!(serde_json::Value::Object(streamed), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_invalidates_shapes_and_clients_refetch() {
    let url = fresh_db("delete").await;
    let db = connect(&url).await;
    db.batch_execute("CREATE TABLE d (id int PRIMARY KEY); INSERT INTO d VALUES (1)")
        .await
        .unwrap();
    let server = TestServer::start_with(&url, |c| c.shape_deletion = true).await;
    let http = reqwest::Client::new();
    let delete = |q: String| {
        let http = http.clone();
        let base = server.base.clone();
        async move {
            let r = http
                .delete(format!("{base}/v1/shape?{q}"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let mut f = Follower::new(server.client(), "table=d");
    f.sync().await;
    let old = f.handle.clone().unwrap();
    assert_eq!(delete("table=d".into()).await.0, 202);
    assert_eq!(
        delete("table=d".into()).await,
        (404, r#"{"message":"No existing shape found"}"#.into())
    );
    let r = server
        .client()
        .get(&format!("table=d&offset={}&handle={old}", f.offset))
        .await;
    assert_eq!(r.status, 409);
    let new = r.header("electric-handle").unwrap().to_string();
    assert_ne!(new, old, "handles are never reused");
    assert_eq!(delete(format!("table=d&handle={old}")).await.0, 404);
    assert_eq!(
        delete(format!("table=d&where=id%3D1&handle={new}")).await.0,
        400,
        "mismatch"
    );
    assert_eq!(
        delete(format!("handle={new}")).await.0,
        202,
        "by handle alone"
    );
    let (status, body) = delete("offset=-1".into()).await;
    assert_eq!(status, 400);
    assert!(body.contains("can't be blank when shape definition is missing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_control_sheds_load_with_503() {
    let url = fresh_db("admission").await;
    let db = connect(&url).await;
    db.batch_execute("CREATE TABLE a (id int PRIMARY KEY)")
        .await
        .unwrap();
    let server = TestServer::start_with(&url, |c| c.max_existing_requests = 1).await;
    let mut f = Follower::new(server.client(), "table=a");
    f.sync().await;
    let q = format!(
        "table=a&offset={}&handle={}&live=true",
        f.offset,
        f.handle.clone().unwrap()
    );
    let parked = {
        let c = server.client();
        let q = q.clone();
        tokio::spawn(async move { c.get(&q).await })
    };
    wait_parked(&server, 1).await;
    let r = server.client().get(&q).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["code"], "concurrent_request_limit_exceeded");
    assert_eq!(
        r.json()["message"],
        "Concurrent existing request limit exceeded (limit: 1), please retry"
    );
    assert!(r.header("retry-after").unwrap().parse::<u32>().unwrap() >= 6);
    assert_eq!(r.header("electric-internal-known-error"), Some("true"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    db.batch_execute("INSERT INTO a VALUES (1)").await.unwrap();
    assert_eq!(parked.await.unwrap().status, 200);
    assert_eq!(
        server.client().get("table=a&offset=-1").await.status,
        200,
        "initial requests have their own limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_parameters_are_typed_by_context_and_part_of_the_identity() {
    let (db, server) = setup("params").await;
    let c = server.client();
    let a = c.get("table=items&offset=-1&where=id%20%3D%20%241%20OR%20name%20%3D%20%242&params[1]=1&params[2]=two").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let ids: Vec<String> = a
        .messages()
        .iter()
        .filter_map(|m| m["value"]["id"].as_str().map(String::from))
        .collect();
    assert_eq!(ids, ["1", "2"]);
    let b = c.get("table=items&offset=-1&where=id%20%3D%20%241%20OR%20name%20%3D%20%242&params[1]=3&params[2]=x").await;
    assert_ne!(
        a.header("electric-handle"),
        b.header("electric-handle"),
        "params are part of the identity"
    );
    let bad = c
        .get("table=items&offset=-1&where=id%20%3D%20%241&params[1]=abc")
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["errors"]["where"][0]
        .as_str()
        .unwrap()
        .contains("invalid input syntax for type integer"));
    let missing = c
        .get("table=items&offset=-1&where=id%20%3D%20%242&params[1]=1")
        .await;
    assert_eq!(missing.status, 400);
    let gap = c
        .get("table=items&offset=-1&where=id%20%3D%20%241&params[2]=1")
        .await;
    assert_eq!(
        gap.json()["errors"]["params"][0],
        "Parameters must be numbered sequentially, starting from 1"
    );
    // Live changes are filtered with the parameters too.
    let mut f = Follower::new(
        server.client(),
        "table=items&where=n%20%3E%3D%20%241&params[1]=20",
    );
    f.sync().await;
    assert_eq!(f.rows.len(), 1);
    db.batch_execute("INSERT INTO items VALUES (7, 'seven', 70, true), (8, 'eight', 8, true)")
        .await
        .unwrap();
    f.until("the matching insert", |f| f.rows.len() == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subset_snapshots_by_get_and_post() {
    let (db, server) = setup("subset").await;
    db.batch_execute(
        "INSERT INTO items SELECT g, 'n' || g, g, g % 2 = 0 FROM generate_series(10, 30) g",
    )
    .await
    .unwrap();
    let c = server.client();
    let base = "table=items&log=changes_only";
    let first = c.get(&format!("{base}&offset=-1")).await;
    let handle = first.header("electric-handle").unwrap().to_string();
    let msgs = first.messages();
    assert_eq!(msgs.len(), 1, "changes_only: only snapshot-end");
    assert_eq!(msgs[0]["headers"]["control"], "snapshot-end");

    // GET with subset__* parameters.
    let q = format!(
        "{base}&offset=0_0&handle={handle}&subset__where=n%20%3E%3D%20%241&subset__params=%7B%221%22%3A%2220%22%7D&subset__order_by=n%20DESC&subset__limit=3"
    );
    let r = c.get(&q).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(r.header("electric-snapshot"), Some("true"));
    assert_eq!(r.header("electric-handle"), Some(handle.as_str()));
    assert!(r.header("electric-schema").is_some() && r.header("electric-offset").is_some());
    assert!(r.header("etag").is_none());
    let body = r.json();
    let meta = &body["metadata"];
    for k in ["xmin", "xmax", "database_lsn"] {
        assert!(
            meta[k].as_str().unwrap().parse::<u64>().is_ok(),
            "{k}: {meta}"
        );
    }
    assert!(meta["xip_list"].is_array());
    let mark = meta["snapshot_mark"].as_u64().unwrap();
    let ns: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"]["n"].as_str().unwrap())
        .collect();
    assert_eq!(ns, ["30", "29", "28"]);
    assert!(body["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["headers"]["snapshot_mark"] == mark));

    // POST with the subset in the body (nested form), offset and no limit.
    let res = reqwest::Client::new()
        .post(format!("{}/v1/shape?{base}&offset=0_0&handle={handle}", server.base))
        .json(&json!({"subset": {"where": "flag = $1", "params": {"1": "true"}, "order_by": "id", "offset": 5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["electric-snapshot"], "true");
    let body: serde_json::Value = res.json().await.unwrap();
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["18", "20", "22", "24", "26", "28", "30"],
        "flagged rows (1, 10, 12, ...) after skipping 5, in id order"
    );

    // Errors.
    let r = c
        .get(&format!(
            "{base}&offset=0_0&handle={handle}&subset__limit=2"
        ))
        .await;
    assert_eq!(
        r.json(),
        json!({"message":"Invalid request","errors":{"subset":{"order_by":["order_by is required when limit or offset is present"]}}})
    );
    let r = c
        .get(&format!(
            "{base}&offset=0_0&handle={handle}&subset__where=nope%20%3D%201"
        ))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["errors"]["subset"]["where"][0]
        .as_str()
        .unwrap()
        .contains("unknown reference nope"));
    let r = c
        .get(&format!(
            "{base}&offset=0_0&handle={handle}&subset__order_by=id%3B%20drop%20table%20items"
        ))
        .await;
    assert_eq!(r.status, 400);
    let res = reqwest::Client::new()
        .post(format!(
            "{}/v1/shape?{base}&offset=0_0&handle={handle}",
            server.base
        ))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    // A stale handle still gets 409.
    let r = c
        .get(&format!(
            "{base}&offset=0_0&handle=1-1&subset__where=id%20%3D%201"
        ))
        .await;
    assert_eq!(r.status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_rotate_the_shape_and_head_is_served() {
    let (db, server) = setup("schema").await;
    let c = server.client();
    let mut f = Follower::new(server.client(), "table=items");
    f.sync().await;
    let old = f.handle.clone().unwrap();
    // HEAD: the headers of the GET, no body.
    let head = reqwest::Client::new()
        .head(format!("{}/v1/shape?table=items&offset=-1", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 200);
    assert_eq!(head.headers()["electric-handle"].to_str().unwrap(), old);
    assert!(head.headers().contains_key("electric-schema"));
    assert!(head.text().await.unwrap().is_empty());

    db.batch_execute("ALTER TABLE items ADD COLUMN extra text DEFAULT 'x'; INSERT INTO items VALUES (50, 'fifty', 5, true, 'e')")
        .await
        .unwrap();
    // The next change carries the new relation: the shape is invalidated and clients refetch.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let new_handle = loop {
        let r = c
            .get(&format!(
                "table=items&offset={}&handle={old}&live=true",
                f.offset
            ))
            .await;
        if r.status == 409 {
            break r.header("electric-handle").unwrap().to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no 409 after the schema change"
        );
        if let Some(o) = r.header("electric-offset") {
            f.offset = o.to_string();
        }
    };
    assert_ne!(new_handle, old);
    let r = c.get("table=items&offset=-1").await;
    assert_eq!(r.header("electric-handle"), Some(new_handle.as_str()));
    let schema: serde_json::Value =
        serde_json::from_str(r.header("electric-schema").unwrap()).unwrap();
    assert_eq!(
        schema["extra"]["type"], "text",
        "the new shape has the new column"
    );
    assert!(r.body.contains("\"extra\":\"e\""));
}

/// A parked live request on a table that is dropped or renamed, with no change streaming after
/// it, still learns of it (the periodic schema check) and gets 409; the refetch reports the
/// missing table, or (rename) the new name serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_and_renamed_tables_invalidate_their_shapes() {
    let url = fresh_db("dropped").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE gone (id int PRIMARY KEY, v text); INSERT INTO gone VALUES (1, 'a');
         CREATE TABLE old_name (id int PRIMARY KEY, v text); INSERT INTO old_name VALUES (1, 'b');",
    )
    .await
    .unwrap();
    let server = TestServer::start_with(&url, |c| {
        c.long_poll = Duration::from_secs(20);
        c.schema_check = Duration::from_millis(200);
    })
    .await;
    let c = server.client();
    let mut gone = Follower::new(server.client(), "table=gone");
    gone.sync().await;
    let mut renamed = Follower::new(server.client(), "table=old_name");
    renamed.sync().await;

    let live = |f: &Follower| {
        format!(
            "{}&offset={}&handle={}&live=true",
            f.shape_query,
            f.offset,
            f.handle.as_deref().unwrap()
        )
    };
    let (gone_q, renamed_q) = (live(&gone), live(&renamed));
    let parked_gone = tokio::spawn({
        let c = server.client();
        async move { c.get(&gone_q).await }
    });
    let parked_renamed = tokio::spawn({
        let c = server.client();
        async move { c.get(&renamed_q).await }
    });
    wait_parked(&server, 2).await;
    let started = std::time::Instant::now();
    db.batch_execute("DROP TABLE gone").await.unwrap();
    db.batch_execute("ALTER TABLE old_name RENAME TO new_name")
        .await
        .unwrap();

    let r = parked_gone.await.unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("must-refetch"));
    assert!(
        r.header("electric-handle").is_none(),
        "no replacement shape exists for a dropped table"
    );
    let r = parked_renamed.await.unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answered by the schema check, not the long-poll timeout"
    );

    let r = c.get("table=gone&offset=-1").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("does not exist"), "{}", r.body);
    let r = c.get("table=old_name&offset=-1").await;
    assert_eq!(r.status, 400, "{}", r.body);
    let mut f = Follower::new(server.client(), "table=new_name");
    f.sync().await;
    assert_eq!(f.values().len(), 1);
}

/// The routing index (shapes filed by `column = constant`) delivers to every shape exactly what
/// its clause matches, through inserts, updates that move rows between keys (old and new row
/// both routed), key changes and deletes, next to shapes that are scanned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_shapes_receive_exactly_their_rows() {
    let url = fresh_db("routing").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE r (id int PRIMARY KEY, grp int, amount numeric, tag text);
         INSERT INTO r SELECT g, g % 5, (g % 3) * 1.50, CASE WHEN g % 2 = 0 THEN 'even' END
           FROM generate_series(1, 40) g;",
    )
    .await
    .unwrap();
    let server = TestServer::start_with(&url, |c| c.long_poll = Duration::from_secs(2)).await;
    let mut clauses: Vec<String> = (0..6).map(|k| format!("grp = {k}")).collect();
    clauses.extend(
        [
            "grp = 2 AND tag IS NULL",
            "amount = 3.0",
            "tag = 'even' AND grp = 1",
            "grp > 3",
            "tag IS NULL OR grp = 0",
            "grp IN (1, 3)",
            "grp < 2 OR grp > 4",
            "amount BETWEEN 1 AND 2",
            "tag LIKE 'ev%'",
        ]
        .map(String::from),
    );
    // Enough range shapes on one column for the interval tree to be built (and rebuilt as
    // shapes come and go), each covering five ids.
    clauses.extend((0..44).map(|k| format!("id >= {} AND id < {}", 5 * k, 5 * k + 5)));
    let mut followers = Vec::new();
    for clause in &clauses {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("table", "r")
            .append_pair("where", clause)
            .finish();
        let mut f = Follower::new(server.client(), &q);
        f.sync().await;
        followers.push(f);
    }
    db.batch_execute(
        "UPDATE r SET grp = (grp + 1) % 6 WHERE id % 3 = 0;
         UPDATE r SET amount = 3.00 WHERE id < 6;
         UPDATE r SET id = id + 100 WHERE id IN (7, 8);
         UPDATE r SET tag = NULL WHERE grp = 1;
         DELETE FROM r WHERE id % 7 = 0;
         INSERT INTO r VALUES (200, 2, 3, NULL), (201, 5, 1.5, 'even');",
    )
    .await
    .unwrap();
    for (f, clause) in followers.iter_mut().zip(&clauses) {
        // numeric as its text (row_to_json would turn 3.00 into a JSON number).
        let expected = pg_rows(
            &db,
            &format!(
                "SELECT id, grp, amount::text AS amount, tag FROM r WHERE {clause} ORDER BY id"
            ),
        )
        .await;
        f.until_matches(&expected).await;
    }
}

/// Snapshots reuse their Postgres connections: after a wave of concurrent shape creations the
/// snapshot connections stay open and idle (at most `max_snapshots` of them), and the next wave
/// runs on the same backends instead of connecting once per shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_connections_are_pooled_across_shape_creations() {
    let url = fresh_db("snap_pool").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE items (id int8 PRIMARY KEY, n int4);
         INSERT INTO items SELECT g, g % 50 FROM generate_series(1, 500) g;",
    )
    .await
    .unwrap();
    let server = TestServer::start_with(&url, |c| c.max_snapshots = 3).await;
    let client = server.client();
    let dbname = url.rsplit('/').next().unwrap().to_string();
    let snapshot_backends = || {
        let (db, dbname) = (&db, dbname.clone());
        async move {
            let rows = db
                .query(
                    "SELECT pid FROM pg_stat_activity
                      WHERE datname = $1 AND state = 'idle' AND query = 'COMMIT' AND pid <> pg_backend_pid()",
                    &[&dbname],
                )
                .await
                .unwrap();
            rows.iter()
                .map(|r| r.get::<_, i32>(0))
                .collect::<std::collections::BTreeSet<i32>>()
        }
    };
    let wave = |from: i32| {
        let client = &client;
        async move {
            let replies = futures::future::join_all((from..from + 12).map(|k| async move {
                client
                    .get(&format!("table=items&where=n+%3D+{k}&offset=-1"))
                    .await
            }))
            .await;
            for r in replies {
                assert_eq!(r.status, 200, "{}", r.body);
                assert_eq!(r.body.matches("\"insert\"").count(), 10, "{}", r.body);
            }
        }
    };
    wave(0).await;
    let first = snapshot_backends().await;
    assert!(
        (1..=3).contains(&first.len()),
        "idle snapshot connections after the first wave: {first:?}"
    );
    wave(12).await;
    let second = snapshot_backends().await;
    assert!(second.len() <= 3, "{second:?}");
    assert!(
        first.is_subset(&second),
        "the second wave reused the first wave's connections: {first:?} then {second:?}"
    );
}

/// A parked live request woken by a change answers by itself, without a replay through the
/// router: its answer must be the replay's, header for header (the request id and origin it
/// came with, CORS, cursor, ETag, up-to-date, live cache directives), and be counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_woken_long_poll_answers_like_a_replay() {
    let (db, server) = setup("woken_reply").await;
    let c = server.client();
    let mut f = Follower::new(c.clone(), "table=items");
    f.sync().await;
    let q = format!(
        "table=items&offset={}&handle={}&live=true&cursor={}",
        f.offset,
        f.handle.clone().unwrap(),
        f.cursor.clone().unwrap_or_default()
    );
    let live = {
        let c = c.clone();
        let q = q.clone();
        tokio::spawn(async move {
            c.get_with(
                &q,
                &[
                    ("x-request-id", "woken-1"),
                    ("origin", "https://app.example"),
                ],
            )
            .await
        })
    };
    wait_parked(&server, 1).await;
    db.batch_execute("INSERT INTO items VALUES (1000, 'woken')")
        .await
        .unwrap();
    let woken = live.await.unwrap();
    assert_eq!(woken.status, 200, "{}", woken.body);
    assert!(woken.body.contains("woken"), "{}", woken.body);
    // The same request, not parked (the data is there now): what a replay answers.
    let direct = c
        .get_with(
            &q,
            &[
                ("x-request-id", "woken-1"),
                ("origin", "https://app.example"),
            ],
        )
        .await;
    assert_eq!(direct.status, 200);
    let names = |r: &crate::support::Reply| {
        let mut v: Vec<String> = r.headers.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&woken), names(&direct));
    for h in [
        "electric-handle",
        "electric-offset",
        "electric-up-to-date",
        "electric-has-data",
        "etag",
        "cache-control",
        "content-type",
        "x-request-id",
        "access-control-allow-origin",
        "access-control-allow-methods",
        "access-control-expose-headers",
        "electric-server",
    ] {
        assert_eq!(woken.header(h), direct.header(h), "{h}");
    }
    assert_eq!(woken.header("x-request-id"), Some("woken-1"));
    assert_eq!(
        woken.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(woken.header("electric-cursor").is_some());
    assert_eq!(woken.body, direct.body);
    let metrics = c.raw("/metrics").await.body;
    assert!(
        metrics.contains("shapesync_http_requests_parked 0\n"),
        "the woken request is no longer counted as parked"
    );
}

/// Shapes of one table created at the same moment share one catalog load; each still gets its
/// own rows, and a shape created after the table changed sees the change (only a load in
/// flight is shared).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creations_on_one_table_each_get_their_rows() {
    let url = fresh_db("creation_storm").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE storm (id int8 PRIMARY KEY, v int4);
         INSERT INTO storm SELECT g, g % 100 FROM generate_series(1, 1000) g;",
    )
    .await
    .unwrap();
    let server = TestServer::start_with(&url, |c| {
        c.access.create_rate = shapesync::serve::access::RateLimit {
            per_second: 10_000,
            burst: 10_000,
        };
    })
    .await;
    let c = server.client();
    let answers = futures::future::join_all((0..100).map(|k| {
        let c = c.clone();
        async move {
            (
                k,
                c.get(&format!("table=storm&where=v%20%3D%20{k}&offset=-1"))
                    .await,
            )
        }
    }))
    .await;
    for (k, r) in answers {
        assert_eq!(r.status, 200, "{}", r.body);
        let rows: Vec<_> = r
            .messages()
            .into_iter()
            .filter(|m| m.get("value").is_some())
            .collect();
        assert_eq!(rows.len(), 10, "v = {k}");
        assert!(rows.iter().all(|m| m["value"]["v"] == json!(k.to_string())));
    }
    db.batch_execute("ALTER TABLE storm ADD COLUMN extra text DEFAULT 'x'")
        .await
        .unwrap();
    let r = c.get("table=storm&where=v%20%3D%20100&offset=-1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("electric-schema").unwrap().contains("\"extra\""),
        "{:?}",
        r.header("electric-schema")
    );
}
