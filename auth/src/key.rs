//! API keys: random bearer secrets bound to a role, stored only as argon2id hashes.
//!
//! A key's text is `ssk_<id>_<secret>`; the id is public (the admin API lists keys by it), the
//! whole text is shown once, at creation. Verifying a key the first time runs argon2 (tens of
//! milliseconds, by design); after that the [`KeyRing`] remembers the SHA-256 of the text that
//! verified and answers with a constant-time comparison, so a busy client costs next to nothing.
mod record;
mod ring;
mod text;

pub use record::*;
pub use ring::KeyRing;
pub use text::{KEY_ID_LEN, KEY_PREFIX};

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

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
