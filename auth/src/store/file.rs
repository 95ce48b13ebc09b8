//! The auth file: one JSON document holding every role and every key's hash.
//!
//! ```json
//! {"format": 1, "roles": [Role, ...], "api_keys": [ApiKeyRecord, ...]}
//! ```
//! Roles are written by name, keys by creation time then id. The file is replaced atomically
//! (a temporary file with mode 0600, fsync, rename, fsync of the directory), so a crash leaves
//! either the old or the new document, never a mix; a stray temporary file is ignored on load
//! and overwritten by the next write. Unknown fields and unknown formats are refused rather
//! than dropped, so an older server never silently loses what a newer one wrote.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{State, StoreError};
use crate::key::{ApiKeyRecord, KeyRing};
use crate::role::{check_role_name, Role};

/// The format this code reads and writes.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default = "first_format")]
    format: u32,
    roles: Vec<Role>,
    api_keys: Vec<ApiKeyRecord>,
}

fn first_format() -> u32 {
    1
}

/// Reads the state from `path`; an absent file is an empty state, anything unreadable an error.
pub(super) fn load(path: &Path) -> Result<State, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => return Err(StoreError::Io(e)),
    };
    let corrupt = |why: String| StoreError::Corrupt(format!("{}: {why}", path.display()));
    let file: AuthFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.format != FORMAT {
        return Err(corrupt(format!(
            "unsupported format {} (this server reads {FORMAT})",
            file.format
        )));
    }
    let mut roles = BTreeMap::new();
    for role in file.roles {
        check_role_name(&role.name)
            .map_err(|e| corrupt(format!("role name {:?} {e}", role.name)))?;
        let name = role.name.clone();
        if roles.insert(name.clone(), Arc::new(role)).is_some() {
            return Err(corrupt(format!("role {name:?} appears twice")));
        }
    }
    let keys = KeyRing::from_records(file.api_keys).map_err(corrupt)?;
    Ok(State { roles, keys })
}

/// Replaces the file at `path` with `state`, atomically and durably.
pub(super) fn write(path: &Path, state: &State) -> std::io::Result<()> {
    let file = AuthFile {
        format: FORMAT,
        roles: state.roles.values().map(|r| Role::clone(r)).collect(),
        api_keys: state.keys.records(),
    };
    let bytes = serde_json::to_vec_pretty(&file)?;
    let tmp = temp_path(path);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // The mode above only applies when the file is created.
        f.set_permissions(Permissions::from_mode(0o600))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// `<path>.tmp`, next to the file so the rename stays within one filesystem.
pub(super) fn temp_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".tmp");
    PathBuf::from(name)
}
