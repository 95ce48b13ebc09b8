//! The auth store: roles and API keys in memory, durable in one JSON file.
//!
//! Readers take a snapshot (an `Arc` of the whole state) and let go of the lock at once, so a
//! request never waits behind a write and argon2 never runs under a lock. A change is made to a
//! copy of the state, written to disk, and only then swapped in: when the write fails, memory
//! is unchanged and the caller gets [`StoreError::Io`].

mod file;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use chrono::Utc;

use crate::field::{self, FieldErrors};
use crate::key::{ApiKeyRecord, ApiKeyView, KeyError, KeyGrant, KeyInput, KeyRing};
use crate::role::{check_role_name, Role, RoleInput};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named thing (`role "x"`, `API key "0123..."`) does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The named thing already exists.
    #[error("{0} already exists")]
    Conflict(String),
    /// The input is invalid; the messages are per field.
    #[error("invalid input: {}", summary(.0))]
    Invalid(FieldErrors),
    /// The auth file could not be read or written.
    #[error("auth file I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The auth file exists but cannot be understood.
    #[error("auth file is corrupt: {0}")]
    Corrupt(String),
}

fn summary(errors: &FieldErrors) -> String {
    let parts: Vec<String> = errors
        .iter()
        .map(|(field, messages)| format!("{field}: {}", messages.join(", ")))
        .collect();
    parts.join("; ")
}

/// `Invalid` with a `role` message unless `state` has role `role`.
fn check_role_exists(state: &State, role: &str) -> Result<(), StoreError> {
    if state.roles.contains_key(role) {
        return Ok(());
    }
    let mut errors = FieldErrors::new();
    field::push(&mut errors, "role", format!("no role named {role:?}"));
    Err(StoreError::Invalid(errors))
}

/// Everything the store holds. Cloning is cheap: roles and keys are shared.
#[derive(Debug, Clone, Default)]
struct State {
    roles: BTreeMap<String, Arc<Role>>,
    keys: KeyRing,
}

/// Roles and API keys, shared by every request (`Send + Sync`).
#[derive(Debug)]
pub struct AuthStore {
    path: PathBuf,
    /// The current state. A std lock is fine: it is held only to clone or replace the `Arc`.
    state: RwLock<Arc<State>>,
    /// Serialises changes (copy, write, swap) so that none is lost; held across the file write,
    /// which only other changes wait for.
    writer: Mutex<()>,
    /// Bumped on every change to roles or keys.
    version: AtomicU64,
    /// A key's last use changed since the file was last written.
    dirty: AtomicBool,
}

impl AuthStore {
    /// Opens the store kept in the file at `path` (the server uses `<storage>/auth.json`): its
    /// contents if it exists, else empty. A file that cannot be read or parsed is an error,
    /// never silently replaced.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let state = file::load(path)?;
        Ok(AuthStore {
            path: path.to_owned(),
            state: RwLock::new(Arc::new(state)),
            writer: Mutex::new(()),
            version: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
        })
    }

    /// A counter bumped by every change to roles or keys, to notice changes cheaply.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Every role, by name.
    pub fn list_roles(&self) -> Vec<Arc<Role>> {
        self.snapshot().roles.values().cloned().collect()
    }

    /// The role called `name`.
    pub fn role(&self, name: &str) -> Option<Arc<Role>> {
        self.snapshot().roles.get(name).cloned()
    }

    /// Creates a role; its name is required. `check_filter` judges row filters (see
    /// [`RoleInput::validate`]).
    pub fn create_role(
        &self,
        input: RoleInput,
        check_filter: &dyn Fn(&str) -> Result<(), String>,
    ) -> Result<Arc<Role>, StoreError> {
        let mut errors = input.validate(check_filter).err().unwrap_or_default();
        if input.name.is_none() {
            field::push(&mut errors, "name", "is required");
        }
        let name = match input.name {
            Some(name) if errors.is_empty() => name,
            _ => return Err(StoreError::Invalid(errors)),
        };
        self.change(|state| {
            if state.roles.contains_key(&name) {
                return Err(StoreError::Conflict(format!("role {name:?}")));
            }
            let now = Utc::now();
            let role = Arc::new(Role {
                name: name.clone(),
                description: input.description,
                access: input.access,
                created_at: now,
                updated_at: now,
            });
            state.roles.insert(name, Arc::clone(&role));
            Ok(role)
        })
    }

    /// Creates role `name` or replaces its description and rules (keeping its creation time).
    /// A name in `input` must equal `name`. Returns the role and whether it was created.
    pub fn put_role(
        &self,
        name: &str,
        mut input: RoleInput,
        check_filter: &dyn Fn(&str) -> Result<(), String>,
    ) -> Result<(Arc<Role>, bool), StoreError> {
        let given = input.name.take();
        let mut errors = input.validate(check_filter).err().unwrap_or_default();
        if let Err(message) = check_role_name(name) {
            field::push(&mut errors, "name", message);
        }
        if given.is_some_and(|given| given != name) {
            field::push(
                &mut errors,
                "name",
                format!("does not match the role in the path ({name:?})"),
            );
        }
        field::into_result(errors).map_err(StoreError::Invalid)?;
        self.change(|state| {
            let now = Utc::now();
            let previous = state.roles.get(name);
            let role = Arc::new(Role {
                name: name.to_owned(),
                description: input.description,
                access: input.access,
                created_at: previous.map_or(now, |p| p.created_at),
                updated_at: now,
            });
            let created = state
                .roles
                .insert(name.to_owned(), Arc::clone(&role))
                .is_none();
            Ok((role, created))
        })
    }

    /// Deletes role `name`. Keys bound to it remain but grant nothing until a role of that
    /// name exists again.
    pub fn delete_role(&self, name: &str) -> Result<(), StoreError> {
        self.change(|state| match state.roles.remove(name) {
            Some(_) => {
                // Its keys go with it: a role created later under the same name must not
                // bring them back.
                let bound: Vec<String> = state
                    .keys
                    .records()
                    .into_iter()
                    .filter(|k| k.role == name)
                    .map(|k| k.id)
                    .collect();
                for id in bound {
                    state.keys.remove(&id);
                }
                Ok(())
            }
            None => Err(StoreError::NotFound(format!("role {name:?}"))),
        })
    }

    /// Creates an API key for an existing role. Returns its view and its text, which is shown
    /// this once and kept nowhere. Runs argon2 (slow), holding no lock.
    pub fn create_key(&self, input: KeyInput) -> Result<(ApiKeyView, String), StoreError> {
        let expires_at = input.validate().map_err(StoreError::Invalid)?;
        // Checked here to spare argon2 for a typo, and again below against the state it joins.
        check_role_exists(&self.snapshot(), &input.role)?;
        let (record, text) = ApiKeyRecord::generate(input.role, input.name, expires_at)
            .map_err(|e| StoreError::Io(std::io::Error::other(format!("hashing the key: {e}"))))?;
        self.change(|state| {
            check_role_exists(state, &record.role)?;
            let view = record.view(None);
            if !state.keys.insert(record) {
                return Err(StoreError::Conflict(format!("API key {:?}", view.id)));
            }
            Ok((view, text))
        })
    }

    /// Every key, by creation time then id.
    pub fn list_keys(&self) -> Vec<ApiKeyView> {
        self.snapshot().keys.views()
    }

    /// The key with this id.
    pub fn key(&self, id: &str) -> Option<ApiKeyView> {
        self.snapshot().keys.view(id)
    }

    /// Revokes key `id`: from the moment this returns, the key fails verification.
    pub fn delete_key(&self, id: &str) -> Result<(), StoreError> {
        self.change(|state| {
            if state.keys.remove(id) {
                Ok(())
            } else {
                Err(StoreError::NotFound(format!("API key {id:?}")))
            }
        })
    }

    /// See [`KeyRing::verify_fast`]: the answer when no argon2 is needed, else `None`.
    pub fn verify_fast(&self, presented: &str) -> Option<Result<KeyGrant, KeyError>> {
        self.snapshot().keys.verify_fast(presented)
    }

    /// See [`KeyRing::verify`]: slow on a key's first verification. A key revoked while argon2
    /// ran is refused.
    pub fn verify(&self, presented: &str) -> Result<KeyGrant, KeyError> {
        let grant = self.snapshot().keys.verify(presented)?;
        if self.snapshot().keys.contains(&grant.id) {
            Ok(grant)
        } else {
            Err(KeyError::Unknown)
        }
    }

    /// Records that key `id` was used now (in memory; [`flush`](Self::flush) persists it).
    pub fn touch(&self, id: &str) {
        if self.snapshot().keys.touch(id) {
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// Writes the file if keys were used since it was last written; a no-op otherwise.
    pub fn flush(&self) -> Result<(), StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        file::write(&self.path, &self.snapshot()).map_err(|e| {
            self.dirty.store(true, Ordering::Release);
            StoreError::Io(e)
        })
    }

    fn snapshot(&self) -> Arc<State> {
        Arc::clone(&self.state.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Applies `edit` to a copy of the state, writes the copy, then makes it current. On any
    /// error the current state is untouched.
    fn change<T>(
        &self,
        edit: impl FnOnce(&mut State) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = State::clone(&self.snapshot());
        let out = edit(&mut next)?;
        // The write carries every last-use time, so clear the flag first: a touch racing with
        // the write sets it again.
        let was_dirty = self.dirty.swap(false, Ordering::AcqRel);
        if let Err(e) = file::write(&self.path, &next) {
            if was_dirty {
                self.dirty.store(true, Ordering::Release);
            }
            return Err(StoreError::Io(e));
        }
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        self.version.fetch_add(1, Ordering::AcqRel);
        Ok(out)
    }
}
