//! The key types: what the admin API receives and lists, what is stored, what a
//! verification grants, and how a key is made.

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::text;
use crate::field::{self, FieldErrors};

/// The longest key name, in characters.
pub const MAX_KEY_NAME_CHARS: usize = 128;

/// A key as the admin API receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyInput {
    /// The role the key acts as.
    pub role: String,
    /// Free text for people (which app or person holds the key).
    #[serde(default)]
    pub name: Option<String>,
    /// When the key stops working, in RFC 3339; never when absent.
    #[serde(default)]
    pub expires_at: Option<String>,
}

impl KeyInput {
    /// Checks the input and returns the parsed expiry: the role must be non-empty (whether it
    /// exists is the store's business), the name at most 128 characters without control
    /// characters, the expiry an RFC 3339 time in the future.
    pub fn validate(&self) -> Result<Option<DateTime<Utc>>, FieldErrors> {
        let mut errors = FieldErrors::new();
        if self.role.is_empty() {
            field::push(&mut errors, "role", "must not be empty");
        }
        if let Some(name) = &self.name {
            if name.chars().count() > MAX_KEY_NAME_CHARS {
                let message = format!("must be at most {MAX_KEY_NAME_CHARS} characters long");
                field::push(&mut errors, "name", message);
            } else if field::has_control(name) {
                field::push(&mut errors, "name", "must not contain control characters");
            }
        }
        let mut expires_at = None;
        if let Some(text) = &self.expires_at {
            match DateTime::parse_from_rfc3339(text) {
                Err(e) => {
                    let message =
                        format!("must be an RFC 3339 time like 2030-01-31T12:00:00Z ({e})");
                    field::push(&mut errors, "expires_at", message);
                }
                Ok(t) if t <= Utc::now() => {
                    field::push(&mut errors, "expires_at", "must be in the future");
                }
                Ok(t) => expires_at = Some(t.with_timezone(&Utc)),
            }
        }
        field::into_result(errors).map(|()| expires_at)
    }
}

/// A key as persisted: with its hash, never shown by the admin API (see [`ApiKeyView`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRecord {
    /// The key's public handle: 16 lowercase hex characters.
    pub id: String,
    /// Free text for people.
    pub name: Option<String>,
    /// The role the key acts as.
    pub role: String,
    /// When the key was created.
    pub created_at: DateTime<Utc>,
    /// When it stops working; never when `None`.
    pub expires_at: Option<DateTime<Utc>>,
    /// The argon2id hash of the key's full text, as a PHC string.
    pub hash: String,
    /// When the key was last used, as of the last write.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl ApiKeyRecord {
    /// Makes a new random key for `role`, hashed with argon2id (default, OWASP-recommended
    /// parameters, random salt): slow, so call it without holding locks. Returns the record
    /// and the key's text, which exists nowhere else.
    pub fn generate(
        role: String,
        name: Option<String>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(Self, String), argon2::password_hash::Error> {
        let (id, text) = text::generate();
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let salt = SaltString::encode_b64(&salt)?;
        let hash = Argon2::default()
            .hash_password(text.as_bytes(), &salt)?
            .to_string();
        let record = ApiKeyRecord {
            id,
            name,
            role,
            created_at: Utc::now(),
            expires_at,
            hash,
            last_used_at: None,
        };
        Ok((record, text))
    }

    /// The admin API's view of the key, with `last_used_at` as given.
    pub fn view(&self, last_used_at: Option<DateTime<Utc>>) -> ApiKeyView {
        ApiKeyView {
            id: self.id.clone(),
            prefix: text::display_prefix(&self.id),
            name: self.name.clone(),
            role: self.role.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            last_used_at,
        }
    }
}

/// A key as the admin API lists it: everything but the hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyView {
    /// The key's public handle.
    pub id: String,
    /// The first 12 characters of the key (`ssk_` and 8 of the id), to recognise it by.
    pub prefix: String,
    /// Free text for people.
    pub name: Option<String>,
    /// The role the key acts as.
    pub role: String,
    /// When the key was created.
    pub created_at: DateTime<Utc>,
    /// When it stops working; never when `None`.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was last used.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Who a verified key speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGrant {
    /// The key's id.
    pub id: String,
    /// The role it is bound to (which may have been deleted since).
    pub role: String,
}

/// Why a presented key was refused. The messages are fit for a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not the shape of a key.
    #[error("malformed API key")]
    Malformed,
    /// No key has this id: never existed or revoked, deliberately indistinguishable.
    #[error("unknown API key")]
    Unknown,
    /// The id exists but the secret is wrong.
    #[error("invalid API key")]
    Mismatch,
    /// The key is past its expiry.
    #[error("API key expired")]
    Expired,
}
