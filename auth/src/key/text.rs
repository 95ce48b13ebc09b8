//! The text of an API key: `ssk_<id>_<secret>`, where the id is 16 lowercase hex characters (8
//! random bytes, the public handle of the key) and the secret 43 characters of unpadded
//! base64url (32 random bytes). Parsing is strict, so one key has exactly one text.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;

/// What every key starts with.
pub const KEY_PREFIX: &str = "ssk_";
/// Length of a key's id, in characters.
pub const KEY_ID_LEN: usize = 16;
const SECRET_LEN: usize = 43;
const KEY_LEN: usize = KEY_PREFIX.len() + KEY_ID_LEN + 1 + SECRET_LEN;

/// A fresh random key: its id and its full text.
pub(crate) fn generate() -> (String, String) {
    let mut rng = rand::rng();
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let text = format!("{KEY_PREFIX}{id}_{}", URL_SAFE_NO_PAD.encode(secret));
    (id, text)
}

/// The id of a well-formed key text, or `None` if `presented` is not one.
pub(crate) fn parse_id(presented: &str) -> Option<&str> {
    let bytes = presented.as_bytes();
    if bytes.len() != KEY_LEN || !presented.starts_with(KEY_PREFIX) {
        return None;
    }
    let id_end = KEY_PREFIX.len() + KEY_ID_LEN;
    let id = &bytes[KEY_PREFIX.len()..id_end];
    if !id.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) || bytes[id_end] != b'_' {
        return None;
    }
    // The id is ASCII, so these are character boundaries.
    let secret = URL_SAFE_NO_PAD.decode(&presented[id_end + 1..]).ok()?;
    (secret.len() == 32).then(|| &presented[KEY_PREFIX.len()..id_end])
}

/// What the admin API shows of a key: `ssk_` and the first 8 characters of its id.
pub(crate) fn display_prefix(id: &str) -> String {
    let head: String = id.chars().take(8).collect();
    format!("{KEY_PREFIX}{head}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back() {
        let (id, text) = generate();
        assert_eq!(id.len(), 16);
        assert_eq!(text.len(), 64);
        assert_eq!(parse_id(&text), Some(id.as_str()));
        assert_eq!(display_prefix(&id), text[..12]);
        assert_ne!(generate().1, text);
    }

    #[test]
    fn malformed_texts_are_refused() {
        let (_, text) = generate();
        let cases = [
            String::new(),
            text[..63].to_owned(),
            format!("{text}A"),
            text.replacen("ssk_", "ssx_", 1),
            format!("ssk_{}{}", "A", &text[5..]),
            format!("{}-{}", &text[..20], &text[21..]),
            format!("{}!{}", &text[..30], &text[31..]),
            format!("{}é{}", &text[..30], &text[32..]),
            // A final character with bits past the 32 bytes set is not canonical base64.
            format!("{}_", &text[..63]),
        ];
        for case in cases {
            assert_eq!(parse_id(&case), None, "{case:?}");
        }
    }
}
