//! API keys: random bearer secrets bound to a role, stored only as argon2id hashes.
//!
//! A key's text is `ssk_<id>_<secret>`; the id is public (the admin API lists keys by it), the
//! whole text is shown once, at creation. Verifying a key the first time runs argon2 (tens of
//! milliseconds, by design); after that the [`KeyRing`] remembers the SHA-256 of the text that
//! verified and answers with a constant-time comparison, so a busy client costs next to nothing.

mod ring;
mod text;

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::field::{self, FieldErrors};
pub use ring::KeyRing;
pub use text::{KEY_ID_LEN, KEY_PREFIX};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_input_validation() {
        let ok = KeyInput {
            role: "r".into(),
            name: Some("ci".into()),
            expires_at: Some("2999-01-01T00:00:00+02:00".into()),
        };
        let expiry = ok.validate().unwrap().unwrap();
        assert_eq!(expiry.to_rfc3339(), "2998-12-31T22:00:00+00:00");
        let bare = KeyInput {
            role: "r".into(),
            name: None,
            expires_at: None,
        };
        assert_eq!(bare.validate(), Ok(None));

        let bad = KeyInput {
            role: String::new(),
            name: Some("a\nb".into()),
            expires_at: Some("2020-01-01T00:00:00Z".into()),
        };
        let e = bad.validate().unwrap_err();
        assert_eq!(e["role"], ["must not be empty"]);
        assert_eq!(e["name"], ["must not contain control characters"]);
        assert_eq!(e["expires_at"], ["must be in the future"]);

        let bad = KeyInput {
            role: "r".into(),
            name: Some("n".repeat(129)),
            expires_at: Some("tomorrow".into()),
        };
        let e = bad.validate().unwrap_err();
        assert_eq!(e["name"], ["must be at most 128 characters long"]);
        assert!(
            e["expires_at"][0].starts_with("must be an RFC 3339 time"),
            "{e:?}"
        );
    }

    #[test]
    fn key_input_rejects_unknown_fields() {
        let e = serde_json::from_str::<KeyInput>(r#"{"role":"r","scope":"all"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `scope`"), "{e}");
    }

    #[test]
    fn views_hide_the_hash() {
        let record = ApiKeyRecord {
            id: "0123abcd4567ef89".into(),
            name: None,
            role: "r".into(),
            created_at: Utc::now(),
            expires_at: None,
            hash: "$argon2id$secret".into(),
            last_used_at: None,
        };
        let json = serde_json::to_string(&record.view(None)).unwrap();
        assert!(!json.contains("argon2") && !json.contains("hash"), "{json}");
        assert!(json.contains(r#""prefix":"ssk_0123abcd""#), "{json}");
    }
}
