//! The object-store tier over an in-memory bucket and a local-filesystem bucket, with logs from
//! both stores: what the bucket serves equals what the log serves for every sealed chunk, the
//! manifests are numbered and create-only, a second writer never overwrites, and a fresh
//! process resumes from the bucket.

use std::sync::Arc;

use shapesync_storage::object_tier::{ObjectTier, RemoteChunk, TierError};
use shapesync_storage::{ReadResult, ShapeLog};

use crate::support::{entry, file, memory, off, Fixture};

const END: &[u8] = br#"{"headers":{"control":"snapshot-end"}}"#;

fn buckets() -> Vec<(ObjectTier, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}/bucket", dir.path().display());
    vec![
        (ObjectTier::from_url("memory://").expect("memory"), None),
        (ObjectTier::from_url(&url).expect("file"), Some(dir)),
    ]
}

/// A log with 3 snapshot chunks and change chunks ending at 10_2, 20_1 and an open tail 30_0.
fn filled(fx: &Fixture, id: &str) -> Arc<dyn ShapeLog> {
    let log = fx.store.create(id, b"{\"m\":1}").expect("create");
    for i in 0..4 {
        log.append_snapshot_row(&entry(i, 60)).expect("row"); // 61 bytes: seals every 2nd
    }
    log.finish_snapshot(END).expect("finish");
    for (i, o) in ["10_0", "10_2", "20_0", "20_1", "30_0"].iter().enumerate() {
        log.append_change(off(o), &entry(10 + i, 49))
            .expect("change");
    }
    log.flush().expect("flush");
    log
}

fn local(log: &dyn ShapeLog, after: &str) -> RemoteChunk {
    match log.read(off(after)).expect("read") {
        ReadResult::Chunk {
            entries,
            end,
            compacted,
        } => RemoteChunk {
            entries,
            end,
            compacted,
        },
        ReadResult::NotReady => panic!("not ready"),
    }
}

#[tokio::test]
async fn bucket_serves_exactly_the_sealed_chunks() {
    for make in [memory, file] {
        for (tier, _dir) in buckets() {
            let fx = make(100);
            let log = filled(&fx, "1-100");
            // The second change chunk is stored compacted: it is uploaded in that form.
            log.store_compacted(off("10_2"), None).unwrap();
            let (end, chunk) = log.compaction_candidate().unwrap().expect("candidate");
            log.store_compacted(end, Some(&chunk[1..])).unwrap();
            let mut state = None;
            let n = tier
                .sync("1-100", b"{\"m\":1}", &log, &mut state)
                .await
                .unwrap();
            assert_eq!(n, 5, "3 snapshot chunks + 2 sealed change chunks");
            let m = tier
                .latest_manifest("1-100")
                .await
                .unwrap()
                .expect("manifest");
            assert_eq!(Some(&m), state.as_ref());
            assert_eq!(
                (m.seq, m.snapshot_chunks, m.snapshot_complete),
                (1, 3, true)
            );
            assert_eq!(m.meta().as_deref(), Some(&b"{\"m\":1}"[..]));
            for after in [
                "-1", "0_0", "0_1", "0_2", "0_inf", "5_0", "10_0", "10_2", "20_0",
            ] {
                let remote = tier.read(&m, off(after)).await.unwrap();
                assert_eq!(remote, Some(local(&*log, after)), "after {after}");
            }
            let second = tier.read(&m, off("10_2")).await.unwrap().expect("chunk");
            assert!(second.compacted && second.entries.len() == 1, "{second:?}");
            assert!(
                !tier
                    .read(&m, off("0_inf"))
                    .await
                    .unwrap()
                    .unwrap()
                    .compacted
            );
            for after in ["20_1", "30_0", "99_0"] {
                let remote = tier.read(&m, off(after)).await.unwrap();
                assert_eq!(remote, None, "{after} is past the sealed part");
            }
        }
    }
}

#[tokio::test]
async fn manifests_are_numbered_and_a_fresh_process_resumes() {
    for (tier, _dir) in buckets() {
        let fx = file(100);
        let log = filled(&fx, "1-200");
        let mut state = None;
        tier.sync("1-200", b"m", &log, &mut state).await.unwrap();
        assert_eq!(tier.sync("1-200", b"m", &log, &mut state).await.unwrap(), 0);
        // New changes seal the tail chunk (30_0, 40_0) and open another.
        for (i, o) in ["40_0", "50_0"].iter().enumerate() {
            log.append_change(off(o), &entry(20 + i, 49)).unwrap();
        }
        log.flush().unwrap();
        // A fresh process (no state) finds manifest 1 and uploads only the new chunk.
        let mut fresh = None;
        assert_eq!(tier.sync("1-200", b"m", &log, &mut fresh).await.unwrap(), 1);
        let m = tier
            .latest_manifest("1-200")
            .await
            .unwrap()
            .expect("manifest");
        assert_eq!(m.seq, 2);
        assert_eq!(m.change_chunks, vec![off("10_2"), off("20_1"), off("40_0")]);
        assert_eq!(
            tier.read(&m, off("35_0")).await.unwrap(),
            Some(local(&*log, "35_0"))
        );
        // Archive: a final manifest; nothing is added afterwards.
        tier.archive("1-200", b"m", &log, &mut fresh).await.unwrap();
        let m = tier
            .latest_manifest("1-200")
            .await
            .unwrap()
            .expect("manifest");
        assert!(m.archived && m.seq == 3);
        log.append_change(off("60_0"), &entry(30, 49)).unwrap();
        log.flush().unwrap();
        assert_eq!(tier.sync("1-200", b"m", &log, &mut None).await.unwrap(), 0);
        // Removal: readers stop finding the shape.
        tier.remove("1-200").await.unwrap();
        assert_eq!(tier.latest_manifest("1-200").await.unwrap(), None);
        tier.remove("1-200").await.unwrap();
    }
}

#[tokio::test]
async fn a_second_writer_never_overwrites() {
    for (tier, _dir) in buckets() {
        let (a, b) = (memory(100), memory(100));
        let log_a = filled(&a, "1-300");
        let log_b = b.store.create("1-300", b"m").unwrap();
        log_b.append_snapshot_row(&entry(99, 60)).unwrap();
        log_b.finish_snapshot(END).unwrap();
        tier.sync("1-300", b"m", &log_a, &mut None).await.unwrap();
        let before = tier.latest_manifest("1-300").await.unwrap();
        let err = tier
            .sync("1-300", b"m", &log_b, &mut Some(manifest_zero()))
            .await
            .expect_err("conflict");
        assert!(matches!(err, TierError::Conflict(_)), "{err}");
        assert_eq!(tier.latest_manifest("1-300").await.unwrap(), before);
        let m = before.expect("manifest");
        assert_eq!(
            tier.read(&m, off("-1")).await.unwrap(),
            Some(local(&*log_a, "-1"))
        );
        // The same writer retrying (its acknowledgement lost) is accepted: identical bytes.
        let mut stale = Some(manifest_zero());
        assert_eq!(
            tier.sync("1-300", b"m", &log_a, &mut stale).await.unwrap(),
            5
        );
        assert_eq!(stale, tier.latest_manifest("1-300").await.unwrap());
    }
}

/// A state as if nothing had been uploaded (a writer unaware of the bucket's contents).
fn manifest_zero() -> shapesync_storage::object_tier::Manifest {
    serde_json::from_str(
        r#"{"format":1,"seq":0,"id":"1-300","meta_hex":"6d","snapshot_chunks":0,
            "snapshot_complete":false,"change_chunks":[],"archived":false}"#,
    )
    .expect("manifest")
}

#[tokio::test]
async fn remove_all_deletes_one_tenant_folder_only() {
    for (tier, _dir) in buckets() {
        let fx = memory(100);
        let (t1, t2) = (tier.child("t1"), tier.child("t2"));
        for (i, (t, id)) in [(&t1, "1-1"), (&t1, "1-2"), (&t2, "1-1")]
            .into_iter()
            .enumerate()
        {
            let log = filled(&fx, &format!("log-{i}"));
            t.sync(id, b"m", &log, &mut None).await.unwrap();
        }
        t1.remove_all().await.unwrap();
        assert_eq!(t1.latest_manifest("1-1").await.unwrap(), None);
        assert_eq!(t1.latest_manifest("1-2").await.unwrap(), None);
        assert!(
            t2.latest_manifest("1-1").await.unwrap().is_some(),
            "other tenant kept"
        );
        t1.remove_all().await.unwrap();
    }
}
