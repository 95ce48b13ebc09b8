//! Authorization for shapesync: who may sync what.
//!
//! A caller presents either an API key (`ssk_<id>_<secret>`) or a JWT. Either names a
//! [`Role`]; the role's rules say, per database and table, which verbs are allowed, which
//! columns are visible and which rows (a where clause that may use `claim('name')`, filled from
//! the token's claims). This crate holds that model and everything around it that needs no
//! HTTP and no async runtime; the server calls the slow parts (argon2) off its runtime.
//!
//! # Layout
//!
//! - [`role`]: the model ([`Role`], [`Rule`], [`TablePattern`], [`Verb`]), validation of admin
//!   input, and which rule applies to a table (the most specific one, only that one).
//! - [`key`]: API key text, argon2id hashing, and the [`KeyRing`] that verifies keys, fast
//!   (SHA-256, constant-time) once a key has passed argon2.
//! - [`store`]: [`AuthStore`], roles and keys in memory behind snapshots, persisted atomically
//!   (mode 0600) to one JSON file on every change.
//! - [`jwt`]: [`JwtVerifier`] for HS256, RS256 or ES256 (exactly one per verifier), and
//!   [`claim_sql_text`], how a claim becomes a constant in a row filter.
//! - `field`: [`FieldErrors`], the per-field validation messages the admin API returns.
//!
//! Row filters are SQL: this crate does not parse them, it takes a `check_filter` callback
//! from the server, which parses them with Postgres' grammar.

mod field;
pub mod jwt;
pub mod key;
pub mod role;
pub mod store;

pub use field::FieldErrors;
pub use jwt::{claim_sql_text, looks_like_jwt, JwtConfigError, JwtError, JwtVerifier, TokenClaims};
pub use key::{ApiKeyRecord, ApiKeyView, KeyError, KeyGrant, KeyInput, KeyRing};
pub use role::{Role, RoleInput, Rule, TablePattern, Verb};
pub use store::{AuthStore, StoreError};
