//! A response body built in memory up to a threshold and spilled to an unnamed temporary file
//! beyond it, then streamed: a large subset result costs bounded memory however many rows it
//! has, and it is complete (every error known) before its status is sent.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Bytes kept in memory before the rest goes to disk.
const MEMORY_BYTES: usize = 1 << 20;
/// Pieces a spilled body is read back in.
const READ_BYTES: usize = 64 * 1024;

/// Bytes of spilled answers the process may hold on disk at once (written or being streamed):
/// past it, a new spill is refused instead of filling the disk the shape logs live on.
#[derive(Debug)]
pub struct SpillBudget {
    limit: u64,
    used: AtomicU64,
}

impl SpillBudget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(SpillBudget {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= self.limit)
            })
            .is_ok()
    }

    fn give(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }
}

/// Bytes taken from a [`SpillBudget`], given back when dropped (with the spill, or with the
/// body streaming it).
struct Reservation {
    budget: Arc<SpillBudget>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// The spill budget is used up: the answer is refused for now (503).
#[derive(Debug, thiserror::Error)]
#[error("too many large subset answers are held at once; retry shortly")]
pub struct SpillFull;

pub struct Spill {
    dir: PathBuf,
    held: Reservation,
    /// The bytes not yet written to the file (all of them while there is no file).
    pub buf: Vec<u8>,
    file: Option<tokio::fs::File>,
    spilled: u64,
}

impl Spill {
    pub fn new(dir: &Path, budget: &Arc<SpillBudget>) -> Self {
        Spill {
            dir: dir.to_path_buf(),
            held: Reservation {
                budget: Arc::clone(budget),
                bytes: 0,
            },
            buf: Vec::with_capacity(4096),
            file: None,
            spilled: 0,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.spilled + self.buf.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Move the buffer to the file once it holds more than the memory threshold.
    pub async fn settle(&mut self) -> std::io::Result<()> {
        if self.buf.len() >= MEMORY_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let n = self.buf.len() as u64;
        if !self.held.budget.take(n) {
            return Err(std::io::Error::other(SpillFull));
        }
        self.held.bytes += n;
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                let dir = self.dir.clone();
                let f = tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir))
                    .await
                    .map_err(std::io::Error::other)??;
                self.file.insert(tokio::fs::File::from_std(f))
            }
        };
        file.write_all(&self.buf).await?;
        self.spilled += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// `head`, these bytes, then `tail`, as a body: from memory, or streamed from the file.
    pub async fn into_body(mut self, head: Vec<u8>, tail: &'static [u8]) -> std::io::Result<Body> {
        if self.file.is_none() {
            let mut out = head;
            out.extend_from_slice(&self.buf);
            out.extend_from_slice(tail);
            return Ok(Body::from(out));
        }
        self.flush().await?;
        let Some(mut file) = self.file.take() else {
            return Err(std::io::Error::other("spill file missing"));
        };
        file.flush().await?;
        file.seek(std::io::SeekFrom::Start(0)).await?;
        // The reservation goes with the stream: the bytes count until the body is dropped.
        let budget = Arc::clone(&self.held.budget);
        let held = std::mem::replace(&mut self.held, Reservation { budget, bytes: 0 });
        let pieces = futures::stream::unfold(Some((file, held)), |state| async move {
            let (mut file, held) = state?;
            let mut piece = vec![0u8; READ_BYTES];
            match file.read(&mut piece).await {
                Ok(0) => None,
                Ok(n) => {
                    piece.truncate(n);
                    Some((Ok(Bytes::from(piece)), Some((file, held))))
                }
                Err(e) => Some((Err(e), None)),
            }
        });
        use futures::StreamExt;
        let stream = futures::stream::once(async move { Ok(Bytes::from(head)) })
            .chain(pieces)
            .chain(futures::stream::once(async move {
                Ok(Bytes::from_static(tail))
            }));
        Ok(Body::from_stream(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn collect(body: Body) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn small_stays_in_memory_large_spills_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let budget = SpillBudget::new(10 << 20);
        let mut s = Spill::new(dir.path(), &budget);
        s.buf.extend_from_slice(b"abc");
        s.settle().await.unwrap();
        assert!(s.file.is_none());
        assert_eq!(
            collect(s.into_body(b"<".to_vec(), b">").await.unwrap()).await,
            b"<abc>"
        );

        let mut s = Spill::new(dir.path(), &budget);
        let mut expect = b"[".to_vec();
        for i in 0..300_000u32 {
            let row = format!("{i:08},");
            s.buf.extend_from_slice(row.as_bytes());
            expect.extend_from_slice(row.as_bytes());
            s.settle().await.unwrap();
        }
        assert!(s.file.is_some(), "spilled");
        assert!(s.buf.len() < MEMORY_BYTES);
        assert_eq!(s.len(), 300_000 * 9);
        expect.push(b']');
        let body = s.into_body(b"[".to_vec(), b"]").await.unwrap();
        assert_eq!(budget.used(), 300_000 * 9, "held while the body lives");
        let got = collect(body).await;
        assert!(got == expect, "body differs");
        assert_eq!(budget.used(), 0, "given back with the body");

        // Past the budget, a spill fails (and gives back what it held).
        let small = SpillBudget::new(MEMORY_BYTES as u64 * 2);
        let mut s = Spill::new(dir.path(), &small);
        let mut failed = false;
        for _ in 0..5000 {
            s.buf.extend_from_slice(&[b'y'; 1024]);
            if let Err(e) = s.settle().await {
                assert!(e.get_ref().is_some_and(|e| e.is::<SpillFull>()), "{e}");
                failed = true;
                break;
            }
        }
        assert!(failed);
        drop(s);
        assert_eq!(small.used(), 0);
        // Unnamed: nothing is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
