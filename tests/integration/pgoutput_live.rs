//! Every pgoutput message kind, produced by a real walsender and decoded by our decoder:
//! Relation, Type, Origin, Insert, Update (no old / key old / full old, unchanged TOAST),
//! Delete (key / full), Truncate; Begin/Commit and logical messages arrive as the replication
//! crate's own events.

use std::collections::BTreeSet;

use pgwire_replication::{ReplicationClient, ReplicationEvent};
use shapesync::postgres::connect::SourceDb;
use shapesync::replication::pgoutput::{decode, Message, OldTuple, ReplicaIdentity, Value};

use crate::support::{connect, fresh_db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decodes_every_message_kind_from_a_real_walsender() {
    let url = fresh_db("pgout").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE TABLE full_t (id int PRIMARY KEY, t text, m mood);
         ALTER TABLE full_t REPLICA IDENTITY FULL;
         CREATE TABLE key_t (id int PRIMARY KEY, n int, big text);
         ALTER TABLE key_t ALTER COLUMN big SET STORAGE EXTERNAL;
         CREATE PUBLICATION p FOR TABLE full_t, key_t;",
    )
    .await
    .unwrap();
    db.batch_execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
        .await
        .unwrap();
    db.batch_execute(
        "INSERT INTO full_t VALUES (1, 'a', 'happy'), (2, NULL, 'sad'), (3, '', NULL);
         UPDATE full_t SET t = 'b' WHERE id = 1;
         DELETE FROM full_t WHERE id = 2;
         INSERT INTO key_t VALUES (1, 0, repeat('x', 9000));
         UPDATE key_t SET n = 1 WHERE id = 1;
         UPDATE key_t SET id = 2 WHERE id = 1;
         DELETE FROM key_t WHERE id = 2;
         SELECT pg_logical_emit_message(true, 'pfx', 'hello');
         SELECT pg_replication_origin_create('elsewhere');",
    )
    .await
    .unwrap();
    // Each in its own transaction: the origin is recorded at commit.
    for stmt in [
        "SELECT pg_replication_origin_session_setup('elsewhere')",
        "INSERT INTO full_t VALUES (10, 'from origin', 'sad')",
        "SELECT pg_replication_origin_session_reset()",
        "TRUNCATE full_t",
    ] {
        db.batch_execute(stmt).await.unwrap();
    }
    let cfg = SourceDb::parse(&url).unwrap().replication_config("s", "p");
    let mut client = ReplicationClient::connect(cfg).await.unwrap();
    let mut kinds = BTreeSet::new();
    let mut decoded = Vec::new();
    // The TRUNCATE is the last transaction: stop at its commit.
    let mut truncated = false;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ev = tokio::time::timeout_at(deadline, client.recv())
            .await
            .expect("the whole workload streamed in time")
            .unwrap();
        match ev {
            None | Some(ReplicationEvent::StoppedAt { .. }) => break,
            Some(ReplicationEvent::Begin { .. }) => {
                kinds.insert("begin");
            }
            Some(ReplicationEvent::Commit { .. }) => {
                kinds.insert("commit");
                if truncated {
                    break;
                }
            }
            Some(ReplicationEvent::Message {
                prefix, content, ..
            }) => {
                assert_eq!((prefix.as_str(), &content[..]), ("pfx", &b"hello"[..]));
                kinds.insert("message");
            }
            Some(ReplicationEvent::XLogData { data, .. }) => {
                let msg = decode(&data).expect("decodes");
                truncated |= matches!(msg, Message::Truncate { .. });
                decoded.push(msg);
            }
            Some(_) => {}
        }
    }
    let _ = client.shutdown().await;

    for m in &decoded {
        match m {
            Message::Relation(r) => {
                kinds.insert("relation");
                if r.name == "full_t" {
                    assert_eq!(r.replica_identity, ReplicaIdentity::Full);
                    assert_eq!(r.columns.len(), 3);
                }
            }
            Message::Type { name, .. } => {
                assert_eq!(name, "mood");
                kinds.insert("type");
            }
            Message::Origin { name, .. } => {
                assert_eq!(name, "elsewhere");
                kinds.insert("origin");
            }
            Message::Insert { new, .. } => {
                kinds.insert("insert");
                if new.0[0] == Value::Text("3".into()) {
                    assert_eq!(new.0[1], Value::Text("".into()), "empty string is not null");
                    assert_eq!(new.0[2], Value::Null);
                }
            }
            Message::Update { old: None, new, .. } => {
                kinds.insert("update-no-old");
                if new.0.len() == 3 && new.0[2] == Value::UnchangedToast {
                    kinds.insert("unchanged-toast");
                }
            }
            Message::Update {
                old: Some(OldTuple::Key(_)),
                ..
            } => {
                kinds.insert("update-key-old");
            }
            Message::Update {
                old: Some(OldTuple::Full(old)),
                ..
            } => {
                assert_eq!(old.0[1], Value::Text("a".into()));
                kinds.insert("update-full-old");
            }
            Message::Delete {
                old: OldTuple::Key(_),
                ..
            } => {
                kinds.insert("delete-key");
            }
            Message::Delete {
                old: OldTuple::Full(_),
                ..
            } => {
                kinds.insert("delete-full");
            }
            Message::Truncate { relations, .. } => {
                assert_eq!(relations.len(), 1);
                kinds.insert("truncate");
            }
            _ => {}
        }
    }
    let want = [
        "begin",
        "commit",
        "delete-full",
        "delete-key",
        "insert",
        "message",
        "origin",
        "relation",
        "truncate",
        "type",
        "unchanged-toast",
        "update-full-old",
        "update-key-old",
        "update-no-old",
    ];
    for k in want {
        assert!(kinds.contains(k), "no {k} message seen; saw {kinds:?}");
    }
}
