use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use super::*;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/",
            $name
        ))
    };
}

const RSA_PRIVATE: &[u8] = fixture!("rsa_private.pem");
const RSA_PUBLIC: &[u8] = fixture!("rsa_public.pem");
const RSA_PUBLIC_PKCS1: &[u8] = fixture!("rsa_public_pkcs1.pem");
const EC_PRIVATE: &[u8] = fixture!("ec_private.pem");
const EC_PUBLIC: &[u8] = fixture!("ec_public.pem");

fn now() -> i64 {
    Utc::now().timestamp()
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET).unwrap(),
        claims,
    )
}

fn valid_claims() -> Value {
    json!({"role": "reader", "sub": "user-1", "tenant": "acme", "exp": now() + 600})
}

fn hs_verifier() -> JwtVerifier {
    JwtVerifier::hs256(SECRET).unwrap()
}

/// A token with the given header, the claims and a signature segment as given.
fn forged(header: &Value, claims: &Value, signature: &str) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.{signature}", part(header), part(claims))
}

#[test]
fn valid_hs256() {
    let claims = hs_verifier().verify(&hs(&valid_claims())).unwrap();
    assert_eq!(claims.role, "reader");
    assert_eq!(claims.subject.as_deref(), Some("user-1"));
    assert_eq!(claims.claims["tenant"], "acme");
    assert_eq!(claims.claims.len(), 4);
    assert!(claims.expires_at > Utc::now());
    assert_eq!(hs_verifier().algorithm(), "HS256");
}

#[test]
fn short_secrets_are_refused() {
    let e = JwtVerifier::hs256(&SECRET[..31]).unwrap_err();
    assert_eq!(e, JwtConfigError::SecretTooShort(31));
    assert!(e.to_string().contains("at least 32"), "{e}");
}

#[test]
fn expiry_and_not_before_with_leeway() {
    let v = hs_verifier();
    let at = |exp: i64, nbf: Option<i64>| {
        let mut c = json!({"role": "r", "exp": exp});
        if let Some(nbf) = nbf {
            c["nbf"] = nbf.into();
        }
        v.verify(&hs(&c))
    };
    assert_eq!(at(now() - 120, None), Err(JwtError::Expired));
    assert!(at(now() - 30, None).is_ok(), "within the leeway");
    assert_eq!(
        at(now() + 600, Some(now() + 120)),
        Err(JwtError::NotYetValid)
    );
    assert!(
        at(now() + 600, Some(now() + 30)).is_ok(),
        "within the leeway"
    );
    assert!(at(now() + 600, Some(now() - 10)).is_ok());
}

#[test]
fn missing_or_bad_exp_and_role() {
    let v = hs_verifier();
    assert_eq!(
        v.verify(&hs(&json!({"role": "r"}))),
        Err(JwtError::MissingExp)
    );
    assert_eq!(
        v.verify(&hs(&json!({"role": "r", "exp": "soon"}))),
        Err(JwtError::MissingExp)
    );
    let exp = now() + 600;
    assert_eq!(
        v.verify(&hs(&json!({"exp": exp}))),
        Err(JwtError::MissingRole)
    );
    assert_eq!(
        v.verify(&hs(&json!({"exp": exp, "role": ""}))),
        Err(JwtError::MissingRole)
    );
    assert_eq!(
        v.verify(&hs(&json!({"exp": exp, "role": 7}))),
        Err(JwtError::MissingRole)
    );
    let claims = v
        .verify(&hs(&json!({"exp": exp as f64 + 0.4, "role": "r"})))
        .unwrap();
    assert_eq!(claims.expires_at.timestamp(), exp);
    assert_eq!(claims.subject, None);
}

#[test]
fn wrong_signature() {
    let other = EncodingKey::from_secret(b"another secret, also 32 bytes long!").unwrap();
    let token = sign(Algorithm::HS256, &other, &valid_claims());
    assert_eq!(hs_verifier().verify(&token), Err(JwtError::BadSignature));

    // A signature from the right key over other claims.
    let good = hs(&valid_claims());
    let signature = good.rsplit('.').next().unwrap();
    let mut claims = valid_claims();
    claims["role"] = "admin".into();
    let tampered = forged(&json!({"alg": "HS256", "typ": "JWT"}), &claims, signature);
    assert_eq!(hs_verifier().verify(&tampered), Err(JwtError::BadSignature));
}

#[test]
fn alg_none_is_refused() {
    let header = json!({"alg": "none", "typ": "JWT"});
    let unsigned = forged(&header, &valid_claims(), "");
    assert_eq!(hs_verifier().verify(&unsigned), Err(JwtError::Malformed));
    let with_junk = forged(&header, &valid_claims(), "AAAA");
    assert_eq!(
        hs_verifier().verify(&with_junk),
        Err(JwtError::WrongAlgorithm)
    );
    let rs = JwtVerifier::from_public_key_pem(RSA_PUBLIC).unwrap();
    assert_eq!(rs.verify(&with_junk), Err(JwtError::WrongAlgorithm));
}

#[test]
fn algorithm_confusion_is_refused() {
    let rs = JwtVerifier::from_public_key_pem(RSA_PUBLIC).unwrap();
    // The classic attack: HMAC "signed" with the public key as the secret.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA_PUBLIC).unwrap(),
        &valid_claims(),
    );
    assert_eq!(rs.verify(&confused), Err(JwtError::WrongAlgorithm));
    // The same, with the header lying that it is RS256.
    let good = hs(&valid_claims());
    let signature = good.rsplit('.').next().unwrap();
    let lying = forged(
        &json!({"alg": "RS256", "typ": "JWT"}),
        &valid_claims(),
        signature,
    );
    assert_eq!(rs.verify(&lying), Err(JwtError::BadSignature));
    // RS256 to an HS256 verifier, and ES256 to an RS256 one.
    let rsa_key = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
    let rs_token = sign(Algorithm::RS256, &rsa_key, &valid_claims());
    assert_eq!(
        hs_verifier().verify(&rs_token),
        Err(JwtError::WrongAlgorithm)
    );
    let ec_key = EncodingKey::from_ec_pem(EC_PRIVATE).unwrap();
    let es_token = sign(Algorithm::ES256, &ec_key, &valid_claims());
    assert_eq!(rs.verify(&es_token), Err(JwtError::WrongAlgorithm));
    // A family member of the right family is still another algorithm.
    let rs384 = sign(Algorithm::RS384, &rsa_key, &valid_claims());
    assert_eq!(rs.verify(&rs384), Err(JwtError::WrongAlgorithm));
}

#[test]
fn valid_rs256_with_spki_and_pkcs1_keys() {
    let rsa_key = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
    let token = sign(Algorithm::RS256, &rsa_key, &valid_claims());
    for pem in [RSA_PUBLIC, RSA_PUBLIC_PKCS1] {
        let v = JwtVerifier::from_public_key_pem(pem).unwrap();
        assert_eq!(v.algorithm(), "RS256");
        assert_eq!(v.verify(&token).unwrap().role, "reader");
    }
    let mut expired = valid_claims();
    expired["exp"] = (now() - 3600).into();
    let v = JwtVerifier::from_public_key_pem(RSA_PUBLIC).unwrap();
    assert_eq!(
        v.verify(&sign(Algorithm::RS256, &rsa_key, &expired)),
        Err(JwtError::Expired)
    );
}

#[test]
fn valid_es256() {
    let v = JwtVerifier::from_public_key_pem(EC_PUBLIC).unwrap();
    assert_eq!(v.algorithm(), "ES256");
    let ec_key = EncodingKey::from_ec_pem(EC_PRIVATE).unwrap();
    let token = sign(Algorithm::ES256, &ec_key, &valid_claims());
    assert_eq!(v.verify(&token).unwrap().subject.as_deref(), Some("user-1"));
    let mut bytes = token.into_bytes();
    let last = bytes.len() - 2;
    bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    assert_eq!(v.verify(&tampered), Err(JwtError::BadSignature));
}

#[test]
fn unusable_keys_are_named() {
    let message = |pem: &[u8]| match JwtVerifier::from_public_key_pem(pem) {
        Ok(v) => panic!("accepted as {v:?}"),
        Err(e) => e.to_string(),
    };
    assert!(message(RSA_PRIVATE).contains("found a private key (PRIVATE KEY)"));
    assert!(message(EC_PRIVATE).contains("give only the public key"));
    assert!(message(fixture!("ec_cert.pem")).contains("found a certificate"));
    assert!(message(fixture!("ec_p384_public.pem")).contains("curve P-384"));
    assert!(message(fixture!("ed25519_public.pem")).contains("found an Ed25519 key"));
    assert!(message(fixture!("rsa1024_public.pem")).contains("found a 1024-bit RSA key"));
    assert!(message(SECRET).contains("no PEM block"));
    // A P-256 key whose point is not on the curve.
    let text = std::str::from_utf8(EC_PUBLIC).unwrap();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let last = der.len() - 1;
    der[last] ^= 1;
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    );
    assert!(message(pem.as_bytes()).contains("the key was refused"));
}

#[test]
fn malformed_tokens() {
    let v = hs_verifier();
    for token in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "a..c",
        "a.b.c",
        "ssk_0123456789abcdef_x",
        "a b.c.d",
    ] {
        assert_eq!(v.verify(token), Err(JwtError::Malformed), "{token:?}");
    }
    let not_json = format!(
        "{}.{}.AAAA",
        URL_SAFE_NO_PAD.encode("nope"),
        URL_SAFE_NO_PAD.encode("{}")
    );
    assert_eq!(v.verify(&not_json), Err(JwtError::Malformed));
    let no_alg = forged(&json!({"typ": "JWT"}), &valid_claims(), "AAAA");
    assert_eq!(v.verify(&no_alg), Err(JwtError::Malformed));
    assert_eq!(v.verify(&hs(&json!([1, 2]))), Err(JwtError::Malformed));
}

#[test]
fn telling_tokens_from_keys() {
    assert!(looks_like_jwt(&hs(&valid_claims())));
    assert!(looks_like_jwt("a.b.c"));
    assert!(looks_like_jwt("a-_.B9.c"));
    assert!(!looks_like_jwt(
        "ssk_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    ));
    assert!(!looks_like_jwt("a.b"));
    assert!(!looks_like_jwt("a.b.c.d"));
    assert!(!looks_like_jwt(".b.c"));
    assert!(!looks_like_jwt("a.b."));
    assert!(!looks_like_jwt("a.b+.c"));
    assert!(!looks_like_jwt("a.b=.c"));
    assert!(!looks_like_jwt(""));
}

#[test]
fn errors_do_not_leak_secrets() {
    let debug = format!("{:?}", hs_verifier());
    assert!(!debug.contains("0123456789abcdef"), "{debug}");
    for e in [
        JwtError::Malformed,
        JwtError::BadSignature,
        JwtError::WrongAlgorithm,
    ] {
        assert!(!e.to_string().is_empty());
    }
}
