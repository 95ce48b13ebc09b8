//! Access control: the shape API secret (`secret` / `api_secret`, global or per tenant), the
//! admin key (`X-API-Key` or `Authorization: Bearer`), client IPs behind trusted proxies, and
//! rate limits (admin API per key or IP, shape creation per IP). Secrets are compared in
//! constant time and never logged.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

use axum::http::{HeaderMap, StatusCode};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::error::ApiError;

/// Requests per second and burst of one rate limit.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// Access settings.
#[derive(Clone)]
pub struct AccessConfig {
    pub secret: Option<String>,
    pub admin_key: Option<String>,
    /// Serve without a secret and with an open admin API (explicitly requested).
    pub insecure: bool,
    pub trusted_proxies: Vec<IpNet>,
    pub admin_rate: RateLimit,
    pub create_rate: RateLimit,
    /// The key JWTs are verified with (`--jwt-secret` / `--jwt-public-key`), if any.
    pub jwt: Option<JwtKey>,
}

/// How bearer tokens are verified.
#[derive(Clone)]
pub enum JwtKey {
    /// HS256 with a shared secret.
    Secret(String),
    /// RS256 or ES256 with a PEM public key (the file's contents).
    PublicKeyPem(Vec<u8>),
}

impl JwtKey {
    /// The verifier this key makes; a key that cannot make one is a configuration error.
    pub fn verifier(&self) -> Result<shapesync_auth::JwtVerifier, shapesync_auth::JwtConfigError> {
        match self {
            JwtKey::Secret(s) => shapesync_auth::JwtVerifier::hs256(s.as_bytes()),
            JwtKey::PublicKeyPem(pem) => shapesync_auth::JwtVerifier::from_public_key_pem(pem),
        }
    }
}

impl std::fmt::Debug for AccessConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("admin_key", &self.admin_key.as_ref().map(|_| "<redacted>"))
            .field("insecure", &self.insecure)
            .field("trusted_proxies", &self.trusted_proxies)
            .field(
                "jwt",
                &self.jwt.as_ref().map(|k| match k {
                    JwtKey::Secret(_) => "HS256 secret <redacted>",
                    JwtKey::PublicKeyPem(_) => "public key",
                }),
            )
            .finish_non_exhaustive()
    }
}

impl AccessConfig {
    /// Open access (tests and the local demo), with generous limits.
    pub fn insecure() -> Self {
        AccessConfig {
            secret: None,
            admin_key: None,
            insecure: true,
            trusted_proxies: Vec::new(),
            admin_rate: RateLimit {
                per_second: 50,
                burst: 100,
            },
            create_rate: RateLimit {
                per_second: 1000,
                burst: 2000,
            },
            jwt: None,
        }
    }
}

pub struct Access {
    cfg: AccessConfig,
    admin_limiter: DefaultKeyedRateLimiter<String>,
    create_limiter: DefaultKeyedRateLimiter<IpAddr>,
}

fn quota(r: RateLimit) -> Quota {
    let n = |v: u32| NonZeroU32::new(v.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(n(r.per_second)).allow_burst(n(r.burst))
}

/// Compare secrets without leaking where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

impl Access {
    pub fn new(cfg: AccessConfig) -> Self {
        Access {
            admin_limiter: RateLimiter::keyed(quota(cfg.admin_rate)),
            create_limiter: RateLimiter::keyed(quota(cfg.create_rate)),
            cfg,
        }
    }

    pub fn config(&self) -> &AccessConfig {
        &self.cfg
    }

    /// The client's address: the peer, or, when the peer is a trusted proxy, the right-most
    /// untrusted address of `X-Forwarded-For`.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let mut ip = peer.ip();
        if !self.trusted(ip) {
            return ip;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        for hop in forwarded.into_iter().rev() {
            ip = hop;
            if !self.trusted(hop) {
                break;
            }
        }
        ip
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.cfg.trusted_proxies.iter().any(|n| n.contains(ip))
    }

    /// The admin API: a valid admin key (unless insecure), then the rate limit.
    pub fn check_admin(&self, headers: &HeaderMap, ip: IpAddr) -> Result<(), ApiError> {
        let presented = presented_key(headers);
        match (&self.cfg.admin_key, presented) {
            (Some(_), None) => {
                return Err(ApiError::auth(
                    StatusCode::UNAUTHORIZED,
                    "auth_required",
                    "An admin key is required (X-API-Key or Authorization: Bearer).",
                ))
            }
            (Some(k), Some(p)) if !constant_time_eq(k.as_bytes(), p.as_bytes()) => {
                return Err(ApiError::auth(
                    StatusCode::FORBIDDEN,
                    "auth_invalid",
                    "The admin key is not valid.",
                ))
            }
            (None, _) if !self.cfg.insecure => {
                return Err(ApiError::auth(
                    StatusCode::FORBIDDEN,
                    "auth_invalid",
                    "The admin API is disabled: no admin key is configured.",
                ))
            }
            _ => {}
        }
        let key = match presented_key(headers) {
            Some(k) => format!("key:{:016x}", fnv(k.as_bytes())),
            None => format!("ip:{ip}"),
        };
        check(&self.admin_limiter, &key)
    }

    /// The request carries the admin key (or the server runs insecure with no key): it may
    /// see every database's detail. No rate limit is charged.
    pub fn is_admin(&self, headers: &HeaderMap) -> bool {
        match (&self.cfg.admin_key, presented_key(headers)) {
            (Some(k), Some(p)) => constant_time_eq(k.as_bytes(), p.as_bytes()),
            (None, _) => self.cfg.insecure,
            _ => false,
        }
    }

    /// `presented` is the admin key.
    pub fn is_admin_key(&self, presented: &str) -> bool {
        self.cfg
            .admin_key
            .as_ref()
            .is_some_and(|k| constant_time_eq(k.as_bytes(), presented.as_bytes()))
    }

    /// The shape API secret: the tenant's, else the global one; none needed when insecure.
    pub fn check_secret(
        &self,
        tenant_secret: Option<&str>,
        presented: Option<&str>,
    ) -> Result<(), ApiError> {
        let Some(required) = tenant_secret.or(self.cfg.secret.as_deref()) else {
            // No secret to match: open only on an insecure server (without --secret, shapes
            // are read with API keys or tokens).
            return if self.cfg.insecure {
                Ok(())
            } else {
                Err(ApiError::Unauthorized)
            };
        };
        match presented {
            Some(p) if constant_time_eq(required.as_bytes(), p.as_bytes()) => Ok(()),
            _ => Err(ApiError::Unauthorized),
        }
    }

    /// Creating a shape costs a snapshot: rate limited per client IP.
    pub fn check_create(&self, ip: IpAddr) -> Result<(), ApiError> {
        check(&self.create_limiter, &ip)
    }

    /// Forget idle rate-limit keys (called periodically).
    pub fn housekeeping(&self) {
        self.admin_limiter.retain_recent();
        self.create_limiter.retain_recent();
    }
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
) -> Result<(), ApiError> {
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        ApiError::RateLimited {
            retry_after: wait.as_secs().max(1) as u32,
        }
    })
}

/// The credential of `X-API-Key`, else of `Authorization: Bearer`.
pub(crate) fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(k) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k.trim());
    }
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110 §11.1).
            let (scheme, key) = v.trim_start().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(key)
        })
        .map(str::trim)
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An IP network (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// A trusted proxy that is not an address or network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidIpNet(String);

impl std::str::FromStr for IpNet {
    type Err = InvalidIpNet;

    fn from_str(s: &str) -> Result<Self, InvalidIpNet> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| InvalidIpNet(format!("invalid address {a:?}")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| InvalidIpNet(format!("invalid prefix in {s:?}")))?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> (u128, u8) {
            match ip {
                IpAddr::V4(v) => (u128::from(u32::from(v)) << 96, 32),
                IpAddr::V6(v) => match v.to_ipv4_mapped() {
                    Some(v4) => (u128::from(u32::from(v4)) << 96, 32),
                    None => (u128::from(v), 128),
                },
            }
        };
        let (net, width) = bits(self.addr);
        let (x, xw) = bits(ip);
        if width != xw {
            return false;
        }
        // Both are left-aligned in 128 bits: the prefix covers their top bits.
        let mask = match self.prefix {
            0 => 0,
            p => u128::MAX << (128 - u32::from(p)),
        };
        (net & mask) == (x & mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn networks() {
        let n: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one: IpNet = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nope".parse::<IpNet>().is_err());
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let mut cfg = AccessConfig::insecure();
        cfg.trusted_proxies = vec!["127.0.0.1".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
        let a = Access::new(cfg);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7, 10.0.0.5".parse().unwrap(),
        );
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            a.client_ip(peer, &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let stranger: SocketAddr = "192.0.2.1:9".parse().unwrap();
        assert_eq!(
            a.client_ip(stranger, &h),
            stranger.ip(),
            "untrusted peers cannot spoof"
        );
    }

    #[test]
    fn admin_key_and_rate_limit() {
        let mut cfg = AccessConfig::insecure();
        cfg.insecure = false;
        cfg.admin_key = Some("k3y".into());
        cfg.admin_rate = RateLimit {
            per_second: 1,
            burst: 2,
        };
        let a = Access::new(cfg);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(matches!(
            a.check_admin(&HeaderMap::new(), ip),
            Err(ApiError::Auth {
                status: StatusCode::UNAUTHORIZED,
                ..
            })
        ));
        let mut wrong = HeaderMap::new();
        wrong.insert("x-api-key", "nope".parse().unwrap());
        assert!(matches!(
            a.check_admin(&wrong, ip),
            Err(ApiError::Auth {
                status: StatusCode::FORBIDDEN,
                ..
            })
        ));
        let mut ok = HeaderMap::new();
        ok.insert("authorization", "Bearer k3y".parse().unwrap());
        let mut upper = HeaderMap::new();
        upper.insert("authorization", "BEARER k3y".parse().unwrap());
        assert_eq!(presented_key(&upper), Some("k3y"));
        upper.insert("authorization", "bEaReR   k3y ".parse().unwrap());
        assert_eq!(presented_key(&upper), Some("k3y"));
        upper.insert("authorization", "Basic k3y".parse().unwrap());
        assert_eq!(presented_key(&upper), None);
        assert!(a.check_admin(&ok, ip).is_ok());
        assert!(a.check_admin(&ok, ip).is_ok());
        assert!(matches!(
            a.check_admin(&ok, ip),
            Err(ApiError::RateLimited { .. })
        ));
    }
}
