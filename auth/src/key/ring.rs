//! The live set of API keys and what makes verifying them cheap.
//!
//! Each key's entry is shared (`Arc`) between successive versions of the ring, so its
//! verification cache and last-use time survive unrelated changes, and removing the entry
//! removes its cache with it: a revoked key fails its very next verification.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::record::{ApiKeyRecord, ApiKeyView, KeyError, KeyGrant};
use super::text;

/// The `last_used_ms` of a key never used.
const NEVER: i64 = i64::MIN;

/// One key with its mutable, in-memory companions.
#[derive(Debug)]
struct KeyEntry {
    record: ApiKeyRecord,
    /// Unix milliseconds of the last use, or [`NEVER`]. An atomic because it is written on
    /// every request and must not contend with anything.
    last_used_ms: AtomicI64,
    /// SHA-256 of the key text that passed argon2 once. Set at most once: a key's text never
    /// changes, and the entry goes when the key is revoked.
    verified: OnceLock<[u8; 32]>,
}

/// The keys, by id. Cloning is cheap (entries are shared), which is how the store changes it:
/// edit a clone, persist it, swap it in.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    entries: BTreeMap<String, Arc<KeyEntry>>,
}

impl KeyRing {
    /// A ring holding `records`; fails naming an id that appears twice.
    pub(crate) fn from_records(records: Vec<ApiKeyRecord>) -> Result<Self, String> {
        let mut ring = KeyRing::default();
        for record in records {
            let id = record.id.clone();
            if !ring.insert(record) {
                return Err(format!("API key id {id:?} appears twice"));
            }
        }
        Ok(ring)
    }

    /// Adds a key; `false` (and no change) if its id is taken.
    pub(crate) fn insert(&mut self, record: ApiKeyRecord) -> bool {
        if self.entries.contains_key(&record.id) {
            return false;
        }
        let last_used_ms = record.last_used_at.map_or(NEVER, |t| t.timestamp_millis());
        let entry = KeyEntry {
            record,
            last_used_ms: AtomicI64::new(last_used_ms),
            verified: OnceLock::new(),
        };
        self.entries
            .insert(entry.record.id.clone(), Arc::new(entry));
        true
    }

    /// Removes a key and its verification cache; `false` if there was none.
    pub(crate) fn remove(&mut self, id: &str) -> bool {
        self.entries.remove(id).is_some()
    }

    /// Is there a key with this id?
    pub fn contains(&self, id: &str) -> bool {
        self.entries.contains_key(id)
    }

    /// The keys as persisted, with their current last-use times, by creation time then id.
    pub fn records(&self) -> Vec<ApiKeyRecord> {
        let mut records: Vec<ApiKeyRecord> = self
            .entries
            .values()
            .map(|e| ApiKeyRecord {
                last_used_at: e.last_used(),
                ..e.record.clone()
            })
            .collect();
        records.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        records
    }

    /// The admin API's view of every key, by creation time then id.
    pub fn views(&self) -> Vec<ApiKeyView> {
        let mut views: Vec<ApiKeyView> = self.entries.values().map(|e| e.view()).collect();
        views.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        views
    }

    /// The admin API's view of one key.
    pub fn view(&self, id: &str) -> Option<ApiKeyView> {
        self.entries.get(id).map(|e| e.view())
    }

    /// Verifies `presented` without argon2 when possible: a malformed key, an unknown id, or a
    /// key whose text verified before (compared in constant time) get their answer; `None`
    /// means argon2 must run ([`verify`](Self::verify)).
    pub fn verify_fast(&self, presented: &str) -> Option<Result<KeyGrant, KeyError>> {
        let Some(id) = text::parse_id(presented) else {
            return Some(Err(KeyError::Malformed));
        };
        let Some(entry) = self.entries.get(id) else {
            return Some(Err(KeyError::Unknown));
        };
        let verified = entry.verified.get()?;
        let digest = Sha256::digest(presented.as_bytes());
        if bool::from(digest.as_slice().ct_eq(verified)) {
            Some(entry.grant())
        } else {
            // One text passed argon2 for this id and a key has exactly one text.
            Some(Err(KeyError::Mismatch))
        }
    }

    /// Verifies `presented`, running argon2 (slow: call it off the async runtime, holding no
    /// lock) unless [`verify_fast`](Self::verify_fast) has the answer. A success is remembered
    /// so the next verification of the same key is fast. Expiry is checked every time.
    pub fn verify(&self, presented: &str) -> Result<KeyGrant, KeyError> {
        if let Some(answer) = self.verify_fast(presented) {
            return answer;
        }
        let entry = text::parse_id(presented)
            .and_then(|id| self.entries.get(id))
            .ok_or(KeyError::Unknown)?;
        let hash = PasswordHash::new(&entry.record.hash).map_err(|_| KeyError::Mismatch)?;
        Argon2::default()
            .verify_password(presented.as_bytes(), &hash)
            .map_err(|_| KeyError::Mismatch)?;
        let _ = entry
            .verified
            .set(Sha256::digest(presented.as_bytes()).into());
        entry.grant()
    }

    /// Records that key `id` was used now; `false` if there is no such key.
    pub fn touch(&self, id: &str) -> bool {
        match self.entries.get(id) {
            Some(entry) => {
                entry
                    .last_used_ms
                    .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

impl KeyEntry {
    fn last_used(&self) -> Option<DateTime<Utc>> {
        match self.last_used_ms.load(Ordering::Relaxed) {
            NEVER => None,
            ms => DateTime::from_timestamp_millis(ms),
        }
    }

    fn view(&self) -> ApiKeyView {
        self.record.view(self.last_used())
    }

    /// The grant of a key whose secret checked out, unless it has expired.
    fn grant(&self) -> Result<KeyGrant, KeyError> {
        if self.record.expires_at.is_some_and(|t| t <= Utc::now()) {
            return Err(KeyError::Expired);
        }
        Ok(KeyGrant {
            id: self.record.id.clone(),
            role: self.record.role.clone(),
        })
    }
}
