//! JSON Web Tokens: a caller presents a token signed by an identity provider the server trusts;
//! its `role` claim names a [`Role`](crate::Role) and its other claims feed `claim('name')` in
//! row filters (see [`claim_sql_text`]).
//!
//! A [`JwtVerifier`] trusts one key and accepts exactly one algorithm: HS256 with a shared
//! secret, RS256 with an RSA public key, or ES256 with an EC P-256 public key. The algorithm a
//! token names is checked against it before anything else, so `alg: none` and algorithm
//! confusion (an HS256 token "signed" with the public key as its secret) are refused. `exp` is
//! required, `nbf` honoured when present, both with [`LEEWAY_SECS`] of tolerance for clock skew.
//! Audience and issuer are not checked: trust in the key is trust in the token.

mod claim;
mod pem;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

pub use claim::claim_sql_text;

/// Tolerance, in seconds, for clocks that disagree: a token is accepted up to this long after
/// its `exp` and this long before its `nbf`.
pub const LEEWAY_SECS: u64 = 60;

/// The shortest HS256 secret accepted, in bytes (the length of the SHA-256 output, as RFC 7518
/// requires).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// Verifies tokens signed with one key, by one algorithm.
#[derive(Clone)]
pub struct JwtVerifier {
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// Why a verifier could not be built. The messages are meant for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtConfigError {
    /// An HS256 secret shorter than [`MIN_HS256_SECRET_BYTES`].
    #[error("the HS256 secret is {0} bytes long; it must have at least 32 random bytes")]
    SecretTooShort(usize),
    /// A PEM that is not an RSA or EC P-256 public key; says what was found.
    #[error("unusable JWT public key: {0}")]
    UnsupportedKey(String),
}

/// Why a token was refused. The messages are fit to send to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not a well-formed token (segments, base64, JSON, claim types).
    #[error("malformed token")]
    Malformed,
    /// The signature does not verify with the server's key.
    #[error("invalid token signature")]
    BadSignature,
    /// The token names another algorithm than the one the server accepts.
    #[error("token signed with an algorithm this server does not accept")]
    WrongAlgorithm,
    /// Past its `exp`.
    #[error("token expired")]
    Expired,
    /// Before its `nbf`.
    #[error("token not valid yet")]
    NotYetValid,
    /// No numeric `exp` claim.
    #[error("token has no numeric `exp` claim")]
    MissingExp,
    /// No `role` claim, or not a non-empty string.
    #[error("token has no `role` claim (a non-empty string)")]
    MissingRole,
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenClaims {
    /// The role it acts as.
    pub role: String,
    /// Its `sub` claim, when a string.
    pub subject: Option<String>,
    /// When it expires (its `exp`).
    pub expires_at: DateTime<Utc>,
    /// Every claim, `role`, `sub` and `exp` included.
    pub claims: Map<String, Value>,
}

impl JwtVerifier {
    /// A verifier of HS256 tokens signed with `secret`, which must be at least 32 bytes.
    pub fn hs256(secret: &[u8]) -> Result<Self, JwtConfigError> {
        if secret.len() < MIN_HS256_SECRET_BYTES {
            return Err(JwtConfigError::SecretTooShort(secret.len()));
        }
        Ok(Self::new(
            Algorithm::HS256,
            DecodingKey::from_secret(secret).map_err(config)?,
        ))
    }

    /// A verifier for the public key in `pem`: RS256 for an RSA key (2048 to 8192 bits),
    /// ES256 for an EC P-256 key. Anything else is refused, naming what was found.
    pub fn from_public_key_pem(pem: &[u8]) -> Result<Self, JwtConfigError> {
        let verifier = match pem::read_public_key(pem).map_err(JwtConfigError::UnsupportedKey)? {
            pem::PublicKey::Rsa(der) => {
                Self::new(Algorithm::RS256, DecodingKey::from_rsa_der(&der))
            }
            pem::PublicKey::EcP256(point) => {
                Self::new(Algorithm::ES256, DecodingKey::from_ec_der(&point))
            }
        };
        // Building the signature verifier parses the key: an invalid point fails here rather
        // than at every token.
        jsonwebtoken::crypto::verify("AA", b"", &verifier.key, verifier.algorithm)
            .map_err(config)?;
        Ok(verifier)
    }

    fn new(algorithm: Algorithm, key: DecodingKey) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        JwtVerifier {
            algorithm,
            key,
            validation,
        }
    }

    /// The one algorithm this verifier accepts: `HS256`, `RS256` or `ES256`.
    pub fn algorithm(&self) -> &'static str {
        algorithm_name(self.algorithm)
    }

    /// Verifies `token`: its algorithm, signature, `exp` and `nbf`, and that it names a role.
    pub fn verify(&self, token: &str) -> Result<TokenClaims, JwtError> {
        if !looks_like_jwt(token) {
            return Err(JwtError::Malformed);
        }
        if header_algorithm(token)? != self.algorithm() {
            return Err(JwtError::WrongAlgorithm);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| token_error(e.kind()))?;
        let claims = data.claims;
        let expires_at = claims
            .get("exp")
            .and_then(numeric_date)
            .ok_or(JwtError::MissingExp)?;
        let role = match claims.get("role") {
            Some(Value::String(role)) if !role.is_empty() => role.clone(),
            _ => return Err(JwtError::MissingRole),
        };
        let subject = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
        Ok(TokenClaims {
            role,
            subject,
            expires_at,
            claims,
        })
    }
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

/// Is `s` shaped like a JWT: three non-empty base64url segments joined by two dots? Tells
/// tokens from API keys (`ssk_...`), which have no dots.
pub fn looks_like_jwt(s: &str) -> bool {
    let is_b64url = |seg: &str| {
        !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut segments = s.split('.');
    let three = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    );
    matches!(three, (Some(a), Some(b), Some(c), None) if is_b64url(a) && is_b64url(b) && is_b64url(c))
}

fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        // Verifiers are only ever built for the three above.
        _ => "unsupported",
    }
}

/// The `alg` of the token's header, read before any verification.
fn header_algorithm(token: &str) -> Result<String, JwtError> {
    let encoded = token.split('.').next().unwrap_or_default();
    let json = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| JwtError::Malformed)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&json).map_err(|_| JwtError::Malformed)?;
    match header.get("alg") {
        Some(Value::String(alg)) => Ok(alg.clone()),
        _ => Err(JwtError::Malformed),
    }
}

/// A JWT NumericDate (seconds since the epoch, possibly fractional) as a time.
fn numeric_date(value: &Value) -> Option<DateTime<Utc>> {
    let secs = match value.as_i64() {
        Some(secs) => secs,
        // Seconds far beyond chrono's range saturate below.
        None => value.as_f64().filter(|f| f.is_finite())?.round() as i64,
    };
    Some(DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MAX_UTC))
}

fn token_error(kind: &ErrorKind) -> JwtError {
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidEcdsaKey => {
            JwtError::BadSignature
        }
        ErrorKind::InvalidAlgorithm => JwtError::WrongAlgorithm,
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::MissingRequiredClaim(_) => JwtError::MissingExp,
        ErrorKind::InvalidClaimFormat(claim) if claim == "exp" => JwtError::MissingExp,
        _ => JwtError::Malformed,
    }
}

fn config(e: jsonwebtoken::errors::Error) -> JwtConfigError {
    JwtConfigError::UnsupportedKey(format!("the key was refused: {e}"))
}

#[cfg(test)]
mod tests;
