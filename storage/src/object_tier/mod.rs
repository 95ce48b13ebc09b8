//! The object-store tier: sealed chunks of shape logs copied to a bucket, write-once, and read
//! back by any process that shares the bucket.
//!
//! Layout under the tier's prefix (FORMAT.md "Object-store tier"):
//! ```text
//! <prefix>/<shape id>/snapshot-<k>.chunk          snapshot chunk 0_k
//! <prefix>/<shape id>/changes-<tx>_<op>.chunk     change chunk ending at <tx>_<op>
//! <prefix>/<shape id>/manifest-000001.json, …     numbered, each complete; highest wins
//! ```
//! Every put is create-only (`PutMode::Create`), so no writer ever overwrites an object: a
//! retried upload finds its own identical object and accepts it; anything else that already
//! exists under the name is a conflict, reported and never overwritten. Uploads happen in
//! order (chunk objects first, then the manifest that lists them), so a manifest only names
//! objects that exist. The local log stays the source of truth while the shape is live; the
//! bucket holds its sealed prefix.

pub mod codec;

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::StoreError;
use crate::log::{SealedRead, ShapeLog};
use crate::offset::LogOffset;
pub use codec::Manifest;
use codec::{decode_chunk, encode_chunk, manifest_name, parse_manifest_name, ChunkRef};

/// Why a tier operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("object store url: {0}")]
    Url(String),
    /// An object exists under a name we were about to write, with other contents.
    #[error("object {0} already exists with other contents")]
    Conflict(String),
    #[error("damaged object {0}: {1}")]
    Corrupt(String, String),
    #[error(transparent)]
    Log(#[from] StoreError),
}

/// A chunk read from the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteChunk {
    /// The entries after the requested offset, up to and including `end`.
    pub entries: Vec<Bytes>,
    pub end: LogOffset,
    /// The object holds the chunk's compacted form.
    pub compacted: bool,
}

/// A bucket (or a folder of one) holding shape chunks.
#[derive(Debug, Clone)]
pub struct ObjectTier {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

/// Chunks uploaded per manifest at most, so a long backlog publishes progress as it goes.
const CHUNKS_PER_MANIFEST: usize = 64;

impl ObjectTier {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> ObjectTier {
        ObjectTier {
            store,
            prefix: Path::from(prefix),
        }
    }

    /// Opens `s3://bucket[/prefix]` (credentials, region and endpoint from the usual `AWS_*`
    /// variables, e.g. `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP=true` for a local S3 server),
    /// `file:///absolute/dir[/prefix]` or `memory://` (tests).
    pub fn from_url(url: &str) -> Result<ObjectTier, TierError> {
        let bad = |why: &str| TierError::Url(format!("{why}: {url:?}"));
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket"));
            }
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()?;
            Ok(ObjectTier::new(Arc::new(s3), prefix))
        } else if let Some(dir) = url.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(bad("a file:// url needs an absolute path"));
            }
            std::fs::create_dir_all(dir).map_err(|e| TierError::Url(format!("{dir}: {e}")))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)?;
            Ok(ObjectTier::new(Arc::new(fs), ""))
        } else if url == "memory://" {
            Ok(ObjectTier::new(
                Arc::new(object_store::memory::InMemory::new()),
                "",
            ))
        } else {
            Err(bad("expected s3://, file:// or memory://"))
        }
    }

    /// The same bucket under a sub-folder (one per tenant).
    pub fn child(&self, folder: &str) -> ObjectTier {
        ObjectTier {
            store: Arc::clone(&self.store),
            prefix: self.prefix.clone().join(folder),
        }
    }

    fn path(&self, id: &str, name: &str) -> Path {
        self.prefix.clone().join(id).join(name)
    }

    /// The highest-numbered manifest of shape `id`, if the bucket holds the shape.
    pub async fn latest_manifest(&self, id: &str) -> Result<Option<Manifest>, TierError> {
        crate::log::validate_id(id)?;
        let folder = self.prefix.clone().join(id);
        let mut listing = self.store.list(Some(&folder));
        let mut best: Option<(u64, Path)> = None;
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            let seq = meta.location.filename().and_then(parse_manifest_name);
            if let Some(seq) = seq.filter(|s| best.as_ref().is_none_or(|(b, _)| s > b)) {
                best = Some((seq, meta.location));
            }
        }
        let Some((seq, path)) = best else {
            return Ok(None);
        };
        let bytes = match self.store.get(&path).await {
            Ok(r) => r.bytes().await?,
            // Removed between the listing and the read: the shape is being deleted.
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| TierError::Corrupt(path.to_string(), e.to_string()))?;
        if m.seq != seq || m.id != id {
            return Err(TierError::Corrupt(
                path.to_string(),
                "seq or id mismatch".into(),
            ));
        }
        Ok(Some(m))
    }

    /// Copies the sealed chunks of `log` that the bucket does not hold yet, then publishes a
    /// new manifest. `state` is the last manifest this process wrote or read for the shape
    /// (`None`: look it up). Returns the number of chunks uploaded.
    pub async fn sync(
        &self,
        id: &str,
        meta: &[u8],
        log: &Arc<dyn ShapeLog>,
        state: &mut Option<Manifest>,
    ) -> Result<usize, TierError> {
        if state.is_none() {
            *state = self.latest_manifest(id).await?;
        }
        let mut next = state.clone().unwrap_or_else(|| Manifest::new(id, meta));
        if next.archived {
            return Ok(0);
        }
        let mut uploaded = 0;
        while uploaded < CHUNKS_PER_MANIFEST {
            let after = next.next_after();
            let l = Arc::clone(log);
            let sealed = tokio::task::spawn_blocking(move || l.read_sealed(after))
                .await
                .map_err(|e| TierError::Log(StoreError::Io(std::io::Error::other(e))))??;
            let Some(chunk) = sealed else { break };
            let (chunk_ref, complete) = match &chunk {
                SealedRead::Snapshot { k, .. } => {
                    let state = log.snapshot_state();
                    (ChunkRef::Snapshot(*k), *k + 1 == state.sealed_chunks)
                }
                SealedRead::Changes { entries, .. } => {
                    let Some(&(end, _)) = entries.last() else {
                        break;
                    };
                    let index = next.change_chunks.len();
                    (ChunkRef::Changes { index, end }, true)
                }
            };
            self.put_once(&self.path(id, &chunk_ref.name()), encode_chunk(&chunk))
                .await?;
            match chunk_ref {
                ChunkRef::Snapshot(k) => {
                    next.snapshot_chunks = k + 1;
                    next.snapshot_complete = complete;
                }
                ChunkRef::Changes { end, .. } => {
                    next.snapshot_complete = true;
                    next.change_chunks.push(end);
                }
            }
            uploaded += 1;
        }
        if uploaded > 0 {
            self.publish(next, state).await?;
        }
        Ok(uploaded)
    }

    /// Final sync, then a manifest marked `archived`: the bucket's copy is complete for the
    /// sealed part and will not change. The caller may then remove the local log.
    pub async fn archive(
        &self,
        id: &str,
        meta: &[u8],
        log: &Arc<dyn ShapeLog>,
        state: &mut Option<Manifest>,
    ) -> Result<(), TierError> {
        while self.sync(id, meta, log, state).await? > 0 {}
        let mut next = state.clone().unwrap_or_else(|| Manifest::new(id, meta));
        if next.archived {
            return Ok(());
        }
        next.archived = true;
        self.publish(next, state).await
    }

    /// Writes `next` as the manifest after `state` (create-only).
    async fn publish(
        &self,
        mut next: Manifest,
        state: &mut Option<Manifest>,
    ) -> Result<(), TierError> {
        next.seq = state.as_ref().map_or(0, |m| m.seq) + 1;
        let bytes = serde_json::to_vec_pretty(&next).map_err(|e| TierError::Url(e.to_string()))?;
        self.put_once(&self.path(&next.id, &manifest_name(next.seq)), bytes)
            .await?;
        *state = Some(next);
        Ok(())
    }

    /// Create-only put. An existing object with the same bytes is our own earlier attempt
    /// (its acknowledgement was lost): accepted. Other bytes: a conflict, never overwritten.
    async fn put_once(&self, path: &Path, bytes: Vec<u8>) -> Result<(), TierError> {
        let body = Bytes::from(bytes);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(path, PutPayload::from_bytes(body.clone()), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let existing = self.store.get(path).await?.bytes().await?;
                if existing == body {
                    Ok(())
                } else {
                    Err(TierError::Conflict(path.to_string()))
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The chunk answering a read after `after`, if the bucket holds it (`manifest` from
    /// [`ObjectTier::latest_manifest`]).
    pub async fn read(
        &self,
        manifest: &Manifest,
        after: LogOffset,
    ) -> Result<Option<RemoteChunk>, TierError> {
        let Some(chunk) = manifest.locate(after) else {
            return Ok(None);
        };
        let path = self.path(&manifest.id, &chunk.name());
        let bytes = self.store.get(&path).await?.bytes().await?;
        let decoded = decode_chunk(&bytes)
            .map_err(|e| TierError::Corrupt(path.to_string(), e.to_string()))?;
        let entries = decoded
            .entries
            .into_iter()
            .filter(|(o, _)| o.is_none_or(|o| o > after))
            .map(|(_, json)| json)
            .collect();
        Ok(Some(RemoteChunk {
            entries,
            end: chunk.end(),
            compacted: decoded.compacted,
        }))
    }

    /// Deletes every object of shape `id`: manifests first (so readers stop finding the
    /// shape), then its chunks. Idempotent.
    pub async fn remove(&self, id: &str) -> Result<(), TierError> {
        crate::log::validate_id(id)?;
        self.delete_under(&self.prefix.clone().join(id)).await
    }

    /// Deletes every shape under this tier's prefix (a removed tenant's folder), manifests
    /// first. Idempotent.
    pub async fn remove_all(&self) -> Result<(), TierError> {
        self.delete_under(&self.prefix).await
    }

    async fn delete_under(&self, folder: &Path) -> Result<(), TierError> {
        let mut objects: Vec<Path> = Vec::new();
        let mut listing = self.store.list(Some(folder));
        while let Some(meta) = listing.next().await {
            objects.push(meta?.location);
        }
        let is_manifest = |p: &Path| p.filename().and_then(parse_manifest_name).is_some();
        objects.sort_by_key(|p| !is_manifest(p));
        for path in objects {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
