//! A response body built in memory up to a threshold and spilled to an unnamed temporary file
//! beyond it, then streamed: a large subset result costs bounded memory however many rows it
//! has, and it is complete (every error known) before its status is sent.

use std::path::{Path, PathBuf};

use axum::body::Body;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Bytes kept in memory before the rest goes to disk.
const MEMORY_BYTES: usize = 1 << 20;
/// Pieces a spilled body is read back in.
const READ_BYTES: usize = 64 * 1024;

pub struct Spill {
    dir: PathBuf,
    /// The bytes not yet written to the file (all of them while there is no file).
    pub buf: Vec<u8>,
    file: Option<tokio::fs::File>,
    spilled: u64,
}

impl Spill {
    pub fn new(dir: &Path) -> Self {
        Spill {
            dir: dir.to_path_buf(),
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
        let pieces = futures::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut piece = vec![0u8; READ_BYTES];
            match file.read(&mut piece).await {
                Ok(0) => None,
                Ok(n) => {
                    piece.truncate(n);
                    Some((Ok(Bytes::from(piece)), Some(file)))
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
        let mut s = Spill::new(dir.path());
        s.buf.extend_from_slice(b"abc");
        s.settle().await.unwrap();
        assert!(s.file.is_none());
        assert_eq!(
            collect(s.into_body(b"<".to_vec(), b">").await.unwrap()).await,
            b"<abc>"
        );

        let mut s = Spill::new(dir.path());
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
        let got = collect(s.into_body(b"[".to_vec(), b"]").await.unwrap()).await;
        assert!(got == expect, "body differs");
        // Unnamed: nothing is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
