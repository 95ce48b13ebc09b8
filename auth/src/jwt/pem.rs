//! Reading a public key PEM far enough to know what it is and whether we can verify with it.
//!
//! Accepted: `PUBLIC KEY` (SubjectPublicKeyInfo) holding an RSA key or an EC P-256 key, and
//! `RSA PUBLIC KEY` (PKCS#1). Everything else (private keys, certificates, other curves,
//! Ed25519, ...) is refused with a message naming what was found. RSA keys must have a 2048 to
//! 8192 bit modulus and an exponent the RSA implementation accepts, so that a key accepted here
//! never fails later, at every verification.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// A usable public key, in the form the JWT library takes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PublicKey {
    /// PKCS#1 `RSAPublicKey` DER.
    Rsa(Vec<u8>),
    /// An uncompressed SEC1 P-256 point (65 bytes).
    EcP256(Vec<u8>),
}

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

// Object identifiers, as DER content bytes.
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_RSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
const OID_SECP256K1: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x0a];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_ED448: &[u8] = &[0x2b, 0x65, 0x71];

const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 8192;
const MAX_RSA_EXPONENT: u64 = (1 << 33) - 1;

const ACCEPTED: &str = "expected an RSA or EC P-256 public key (`-----BEGIN PUBLIC KEY-----`)";

/// What the first PEM block of `pem` holds, if it is a key we can verify with.
pub(super) fn read_public_key(pem: &[u8]) -> Result<PublicKey, String> {
    let (label, der) = first_block(pem)?;
    match label.as_str() {
        "PUBLIC KEY" => subject_public_key_info(&der),
        "RSA PUBLIC KEY" => rsa_public_key(&der).map(|()| PublicKey::Rsa(der)),
        "CERTIFICATE" => Err(format!(
            "found a certificate; {ACCEPTED}, e.g. from `openssl x509 -in cert.pem -pubkey -noout`"
        )),
        l if l.contains("PRIVATE KEY") => Err(format!(
            "found a private key ({l}); give only the public key, e.g. from \
             `openssl pkey -in key.pem -pubout`"
        )),
        l => Err(format!("found a PEM block labelled {l:?}; {ACCEPTED}")),
    }
}

/// The label and decoded contents of the first `-----BEGIN ...-----` block.
fn first_block(pem: &[u8]) -> Result<(String, Vec<u8>), String> {
    let text = std::str::from_utf8(pem).map_err(|_| format!("not PEM text; {ACCEPTED}"))?;
    let not_pem = || format!("no PEM block found; {ACCEPTED}");
    let (_, after_begin) = text.split_once("-----BEGIN ").ok_or_else(not_pem)?;
    let (label, rest) = after_begin.split_once("-----").ok_or_else(not_pem)?;
    let end = format!("-----END {label}-----");
    let (body, _) = rest
        .split_once(&end)
        .ok_or_else(|| format!("the {label} block has no `{end}` line"))?;
    let body: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = STANDARD
        .decode(body)
        .map_err(|e| format!("the {label} block is not valid base64: {e}"))?;
    Ok((label.to_owned(), der))
}

/// `SEQUENCE { SEQUENCE { algorithm OID, parameters }, BIT STRING key }`.
fn subject_public_key_info(der: &[u8]) -> Result<PublicKey, String> {
    let malformed = |what: &str| format!("malformed PUBLIC KEY ({what})");
    let mut outer = Der::new(
        Der::new(der)
            .expect(TAG_SEQUENCE)
            .map_err(|e| malformed(&e))?,
    );
    let mut algorithm = Der::new(outer.expect(TAG_SEQUENCE).map_err(|e| malformed(&e))?);
    let key = outer.expect(TAG_BIT_STRING).map_err(|e| malformed(&e))?;
    // A BIT STRING starts with its count of unused bits, zero for keys.
    let key = match key.split_first() {
        Some((0, key)) => key,
        _ => return Err(malformed("key bits")),
    };
    let oid = algorithm.expect(TAG_OID).map_err(|e| malformed(&e))?;
    match oid {
        OID_RSA => rsa_public_key(key).map(|()| PublicKey::Rsa(key.to_vec())),
        OID_EC => {
            let curve = algorithm.expect(TAG_OID).map_err(|e| malformed(&e))?;
            let name = match curve {
                OID_P256 if key.len() == 65 && key[0] == 4 => {
                    return Ok(PublicKey::EcP256(key.to_vec()))
                }
                OID_P256 => {
                    return Err("found an EC P-256 key that is not an uncompressed point".into())
                }
                OID_P384 => "P-384".to_owned(),
                OID_P521 => "P-521".to_owned(),
                OID_SECP256K1 => "secp256k1".to_owned(),
                other => format!("OID {}", dotted(other)),
            };
            Err(format!(
                "found an EC key on curve {name}; only P-256 (ES256) is supported"
            ))
        }
        other => {
            let kind = match other {
                OID_ED25519 => "an Ed25519 key".to_owned(),
                OID_ED448 => "an Ed448 key".to_owned(),
                OID_RSA_PSS => "an RSA-PSS key".to_owned(),
                other => format!("a key of algorithm OID {}", dotted(other)),
            };
            Err(format!("found {kind}; {ACCEPTED}"))
        }
    }
}

/// Checks a PKCS#1 `RSAPublicKey`: `SEQUENCE { INTEGER modulus, INTEGER exponent }`.
fn rsa_public_key(der: &[u8]) -> Result<(), String> {
    let malformed = |what: String| format!("malformed RSA public key ({what})");
    let mut key = Der::new(Der::new(der).expect(TAG_SEQUENCE).map_err(malformed)?);
    let modulus = unsigned(key.expect(TAG_INTEGER).map_err(malformed)?);
    let exponent = unsigned(key.expect(TAG_INTEGER).map_err(malformed)?);
    let bits = modulus
        .first()
        .map_or(0, |b| modulus.len() * 8 - b.leading_zeros() as usize);
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(format!(
            "found a {bits}-bit RSA key; the modulus must have {MIN_RSA_BITS} to {MAX_RSA_BITS} bits"
        ));
    }
    if modulus.last().is_some_and(|b| b & 1 == 0) {
        return Err(malformed("even modulus".into()));
    }
    let e = (exponent.len() <= 8)
        .then(|| exponent.iter().fold(0u64, |e, &b| e << 8 | u64::from(b)))
        .filter(|e| (3..=MAX_RSA_EXPONENT).contains(e) && e & 1 == 1);
    match e {
        Some(_) => Ok(()),
        None => Err("the RSA public exponent is not an odd number from 3 to 2^33-1".into()),
    }
}

/// A DER INTEGER's content without its leading zero bytes.
fn unsigned(int: &[u8]) -> &[u8] {
    let start = int.iter().position(|&b| b != 0).unwrap_or(int.len());
    &int[start..]
}

/// An OID's dotted text, for messages.
fn dotted(oid: &[u8]) -> String {
    let mut arcs = Vec::new();
    let mut value: u64 = 0;
    for &b in oid {
        value = value
            .saturating_mul(128)
            .saturating_add(u64::from(b & 0x7f));
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// A reader of consecutive DER elements (tag, definite length, contents).
struct Der<'a> {
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Der { rest: bytes }
    }

    /// The contents of the next element, which must have tag `tag`.
    fn expect(&mut self, tag: u8) -> Result<&'a [u8], String> {
        let (&found, rest) = self.rest.split_first().ok_or("truncated")?;
        if found != tag {
            return Err(format!("expected tag 0x{tag:02x}, found 0x{found:02x}"));
        }
        let (&first, mut rest) = rest.split_first().ok_or("truncated")?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return Err("bad length".into());
            }
            let (len_bytes, after) = rest.split_at(count);
            rest = after;
            len_bytes
                .iter()
                .fold(0usize, |len, &b| len << 8 | usize::from(b))
        };
        if rest.len() < len {
            return Err("truncated".into());
        }
        let (contents, after) = rest.split_at(len);
        self.rest = after;
        Ok(contents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_print_dotted() {
        assert_eq!(dotted(OID_RSA), "1.2.840.113549.1.1.1");
        assert_eq!(dotted(OID_P384), "1.3.132.0.34");
        assert_eq!(dotted(OID_ED25519), "1.3.101.112");
    }

    #[test]
    fn der_reader_refuses_truncation() {
        assert!(Der::new(&[0x30, 0x05, 0x02]).expect(TAG_SEQUENCE).is_err());
        assert!(Der::new(&[0x30, 0x85, 1, 1, 1, 1, 1])
            .expect(TAG_SEQUENCE)
            .is_err());
        assert!(Der::new(&[0x30]).expect(TAG_SEQUENCE).is_err());
        assert!(Der::new(&[0x02, 0x00]).expect(TAG_SEQUENCE).is_err());
        assert_eq!(
            Der::new(&[0x30, 0x81, 0x01, 0x07]).expect(TAG_SEQUENCE),
            Ok(&[7u8][..])
        );
    }

    #[test]
    fn not_pem_at_all() {
        assert!(read_public_key(b"hello")
            .unwrap_err()
            .contains("no PEM block"));
        assert!(read_public_key(&[0xff, 0xfe])
            .unwrap_err()
            .contains("not PEM text"));
        let no_end = b"-----BEGIN PUBLIC KEY-----\nAAAA\n";
        assert!(read_public_key(no_end)
            .unwrap_err()
            .contains("no `-----END PUBLIC KEY-----`"));
        let bad_b64 = b"-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n";
        assert!(read_public_key(bad_b64)
            .unwrap_err()
            .contains("not valid base64"));
        let junk = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(read_public_key(junk)
            .unwrap_err()
            .contains("malformed PUBLIC KEY"));
        let other = b"-----BEGIN FOO-----\nAAAA\n-----END FOO-----\n";
        assert!(read_public_key(other)
            .unwrap_err()
            .contains("labelled \"FOO\""));
    }
}
