//! `FileStore`: shape logs on disk, one directory per shape under the store directory.
//!
//! ```text
//! <dir>/<id>/meta          opaque metadata (written last, atomically: its presence and
//!                          validity mean the shape was fully created)
//! <dir>/<id>/snapshot.log  snapshot part
//! <dir>/<id>/changes.log   change part
//! ```
//! `create` makes the directory and both log files, fsyncs them, then writes `meta` with
//! tmp + fsync + rename + fsync dir. `open_all` removes directories without a valid `meta`
//! (a crash during create) and leftover `*.tmp` files, and recovers every log.

use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::file_log::FileLog;
use crate::file_scan::sync_dir;
use crate::record::{decode_meta, encode_meta};
use crate::{validate_id, OpenedLog, ShapeLog, ShapeLogStore, StoreConfig, StoreError};

const META_FILE: &str = "meta";
const META_TMP: &str = "meta.tmp";
const TMP_SUFFIX: &str = ".tmp";

/// A [`ShapeLogStore`] on the local filesystem.
pub struct FileStore {
    dir: PathBuf,
    cfg: StoreConfig,
}

impl FileStore {
    /// Opens (creating if needed) the store directory. Logs are opened by `open_all`.
    pub fn open(dir: impl Into<PathBuf>, cfg: StoreConfig) -> Result<FileStore, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(FileStore { dir, cfg })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn create_in(&self, path: &Path, meta: &[u8]) -> Result<FileLog, StoreError> {
        let log = FileLog::create(path, self.cfg.chunk_bytes_threshold)?;
        write_atomic(path, META_FILE, META_TMP, &encode_meta(meta))?;
        sync_dir(&self.dir)?;
        Ok(log)
    }

    /// Opens one shape directory; `None` if it has no valid meta (then it is removed).
    fn open_one(&self, path: &Path) -> Result<Option<(Vec<u8>, FileLog)>, StoreError> {
        remove_tmp_files(path)?;
        let meta = match fs::read(path.join(META_FILE)) {
            Ok(bytes) => decode_meta(&bytes),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let Some(meta) = meta else {
            fs::remove_dir_all(path)?;
            return Ok(None);
        };
        Ok(Some((meta, FileLog::open(path)?)))
    }
}

impl ShapeLogStore for FileStore {
    fn create(&self, id: &str, meta: &[u8]) -> Result<Arc<dyn ShapeLog>, StoreError> {
        validate_id(id)?;
        let path = self.dir.join(id);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(StoreError::AlreadyExists(id.to_owned()))
            }
            Err(e) => return Err(e.into()),
        }
        match self.create_in(&path, meta) {
            Ok(log) => Ok(Arc::new(log)),
            Err(e) => {
                // Best effort: without a meta file, open_all would remove it anyway.
                let _ = fs::remove_dir_all(&path);
                Err(e)
            }
        }
    }

    fn open_all(&self) -> Result<Vec<OpenedLog>, StoreError> {
        let mut out = Vec::new();
        let mut removed = false;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let file_type = entry.file_type()?;
            if file_type.is_file() && name.ends_with(TMP_SUFFIX) {
                fs::remove_file(&path)?;
                removed = true;
                continue;
            }
            if !file_type.is_dir() || validate_id(&name).is_err() {
                continue; // not ours: leave it alone
            }
            match self.open_one(&path)? {
                Some((meta, log)) => out.push((name, meta, Arc::new(log) as Arc<dyn ShapeLog>)),
                None => removed = true,
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn remove(&self, id: &str) -> Result<(), StoreError> {
        validate_id(id)?;
        match fs::remove_dir_all(self.dir.join(id)) {
            Ok(()) => Ok(sync_dir(&self.dir)?),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StoreError::NotFound(id.to_owned())),
            Err(e) => Err(e.into()),
        }
    }
}

/// Writes `dir/name` atomically: `dir/tmp` + fsync + rename + fsync `dir`.
fn write_atomic(dir: &Path, name: &str, tmp: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(tmp);
    {
        let file = fs::File::create(&tmp)?;
        io::Write::write_all(&mut &file, bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Removes leftover `*.tmp` files of an interrupted atomic write.
fn remove_tmp_files(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let is_tmp = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(TMP_SUFFIX));
        if is_tmp && entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}
