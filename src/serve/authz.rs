//! Who is asking for a shape and what they may see.
//!
//! A shape request is authenticated once, from one credential, in this order:
//! 1. the shape secret in the query (`secret=` / `api_secret=`: the database's own, else the
//!    server's), a full-access credential as in the reference server;
//! 2. `X-API-Key` or `Authorization: Bearer` carrying the admin key (full access), an API key
//!    (`ssk_…`, bound to a role) or a JWT (its `role` claim names the role; the other claims
//!    feed `claim(...)` in the role's row filters);
//! 3. nothing: full access only with `--insecure`, else 401 `auth_required`.
//!
//! A role's grant is then applied to the parsed request ([`apply`]), at the level of the
//! shape definition and never by editing SQL text: the table must have a rule, the verb must be
//! allowed, the columns asked for (and those the client's where clause names) must be in the
//! rule's list (no list asked for means the rule's list), and the rule's row filter, with the
//! caller's claims bound as constants, becomes the definition's `row_filter`, which the shape
//! ANDs to the client's clause as a separate node. The composed filter is part of the shape's
//! identity, so callers share a shape log only when what they may see is the same.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};
use shapesync_auth::{JwtVerifier, KeyError, Role, Verb};

use super::error::ApiError;
use super::params::ShapeRequest;
use super::AppState;
use crate::shape::definition::{RowFilter, ShapeDefinition};
use crate::tenant::{ResolveError, Tenant};

/// What a request may do.
#[derive(Clone)]
pub enum Grant {
    /// The shape secret, the admin key, or an insecure server: every table, every row.
    Full,
    /// A role's rules, for one caller.
    Role(RoleGrant),
}

#[derive(Clone)]
pub struct RoleGrant {
    pub role: Arc<Role>,
    /// The token's claims (empty for an API key).
    pub claims: Map<String, Value>,
    /// The API key it came from, if any.
    pub key_id: Option<String>,
    /// When the token expires, if it came from one.
    pub token_expires: Option<chrono::DateTime<chrono::Utc>>,
}

impl RoleGrant {
    /// For a long-lived answer (an SSE stream): is the grant still what it was? The key not
    /// revoked or expired, the token not expired, the role not changed or deleted.
    pub fn still_valid(&self, store: &shapesync_auth::AuthStore) -> bool {
        let now = chrono::Utc::now();
        if self.token_expires.is_some_and(|t| t <= now) {
            return false;
        }
        if let Some(id) = &self.key_id {
            match store.key(id) {
                Some(k) if k.expires_at.is_none_or(|t| t > now) => {}
                _ => return false,
            }
        }
        store
            .role(&self.role.name)
            .is_some_and(|r| r.updated_at == self.role.updated_at)
    }
}

/// The credential a request's headers carry.
enum Presented<'a> {
    None,
    Admin,
    Key(&'a str),
    Token(&'a str),
    /// Something else: not ours.
    Other,
}

fn presented<'a>(app: &AppState, headers: &'a HeaderMap) -> Presented<'a> {
    let Some(value) = super::access::presented_key(headers) else {
        return Presented::None;
    };
    if app.access.is_admin_key(value) {
        Presented::Admin
    } else if value.starts_with(shapesync_auth::key::KEY_PREFIX) {
        Presented::Key(value)
    } else if shapesync_auth::looks_like_jwt(value) {
        Presented::Token(value)
    } else {
        Presented::Other
    }
}

/// The 403 of a valid credential that lacks a right.
pub fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::auth(StatusCode::FORBIDDEN, "forbidden", message.into())
}

/// The 403 of a wrong, expired or revoked credential.
pub fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::auth(StatusCode::FORBIDDEN, "auth_invalid", message.into())
}

/// Authenticate a shape request: the database it names and what the caller may do there.
pub async fn authenticate(
    app: &AppState,
    headers: &HeaderMap,
    query: &str,
) -> Result<(Arc<Tenant>, Grant), ApiError> {
    let (database_id, secret) = tenant_and_secret(query);
    if secret.is_some() {
        return authorized_tenant(app, query).map(|t| (t, Grant::Full));
    }
    let insecure = app.access.config().insecure;
    let presented = presented(app, headers);
    let admin = matches!(presented, Presented::Admin);
    let grant = match presented {
        Presented::Admin => None,
        Presented::Key(key) => Some(role_of_key(app, key).await?),
        Presented::Token(token) => match &app.auth.jwt {
            Some(verifier) => Some(role_of_token(app, verifier, token)?),
            // Not configured for tokens: a token meant for someone else (an app's own session
            // token forwarded by its proxy) is no credential here.
            None if insecure => None,
            None => {
                return Err(app.auth.denied(invalid(
                    "Bearer tokens are not accepted: the server has no --jwt-secret or --jwt-public-key",
                )))
            }
        },
        Presented::Other if insecure => None,
        Presented::Other => return Err(app.auth.denied(invalid("The credential is not valid."))),
        Presented::None if insecure => None,
        Presented::None => return Err(app.auth.denied(ApiError::AuthRequired)),
    };
    match grant {
        None => {
            // Full access: the admin key, or an insecure server (a database's own secret
            // still applies there).
            let tenant = if insecure && !admin {
                authorized_tenant(app, query)?
            } else {
                app.tenants
                    .resolve(database_id.as_deref())
                    .map_err(|e| match e {
                        ResolveError::NotProvided => {
                            ApiError::message(StatusCode::BAD_REQUEST, e.to_string())
                        }
                        ResolveError::NotFound => ApiError::UnknownDatabase(e.to_string()),
                    })?
            };
            Ok((tenant, Grant::Full))
        }
        Some(g) => {
            // Without a database_id, a role's only database is the one meant.
            let database_id = database_id.or_else(|| g.role.only_database());
            // A role sees only its databases; whether another one exists is not its business.
            let tenant = match app.tenants.resolve(database_id.as_deref()) {
                Ok(t) => t,
                Err(ResolveError::NotProvided) => {
                    return Err(ApiError::message(
                        StatusCode::BAD_REQUEST,
                        ResolveError::NotProvided.to_string(),
                    ))
                }
                Err(e @ ResolveError::NotFound) => {
                    let id = database_id.unwrap_or_default();
                    return Err(if g.role.allows_database(&id) {
                        ApiError::UnknownDatabase(e.to_string())
                    } else {
                        database_forbidden(&g.role, &id)
                    });
                }
            };
            let id = tenant.record.id.to_string();
            if !g.role.allows_database(&id) {
                return Err(database_forbidden(&g.role, &id));
            }
            Ok((tenant, Grant::Role(g)))
        }
    }
}

fn database_forbidden(role: &Role, id: &str) -> ApiError {
    forbidden(format!(
        "Role {:?} has no access to database {id:?}.",
        role.name
    ))
}

/// An API key's role: from the cache of verified keys, else argon2 on the blocking pool
/// (a few at a time).
async fn role_of_key(app: &AppState, key: &str) -> Result<RoleGrant, ApiError> {
    let store = &app.auth.store;
    let verified = match store.verify_fast(key) {
        Some(r) => r,
        None => {
            // A key that needs argon2 is one not seen valid yet (or a wrong secret for a known
            // id): bounded per id, and in time, so guesses cannot take the hashing from others.
            if let Some(id) = key.get(4..4 + shapesync_auth::key::KEY_ID_LEN) {
                if app.auth.slow_checks.check_key(&id.to_string()).is_err() {
                    return Err(ApiError::RateLimited { retry_after: 1 });
                }
            }
            let _permit = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                app.auth.hashing.acquire(),
            )
            .await
            .map_err(|_| ApiError::busy("Too many API keys to verify at once, please retry", 1))?
            .map_err(ApiError::internal)?;
            let store = Arc::clone(store);
            let key = key.to_string();
            tokio::task::spawn_blocking(move || store.verify(&key))
                .await
                .map_err(ApiError::internal)?
        }
    };
    let grant = verified.map_err(|e| {
        app.auth.denied(invalid(match e {
            KeyError::Expired => "The API key has expired.",
            _ => "The API key is not valid.",
        }))
    })?;
    store.touch(&grant.id);
    let role = store.role(&grant.role).ok_or_else(|| {
        app.auth.denied(forbidden(format!(
            "The API key's role {:?} no longer exists.",
            grant.role
        )))
    })?;
    Ok(RoleGrant {
        role,
        claims: Map::new(),
        key_id: Some(grant.id),
        token_expires: None,
    })
}

fn role_of_token(
    app: &AppState,
    verifier: &JwtVerifier,
    token: &str,
) -> Result<RoleGrant, ApiError> {
    let claims = verifier
        .verify(token)
        .map_err(|e| app.auth.denied(invalid(e.to_string())))?;
    let role = app.auth.store.role(&claims.role).ok_or_else(|| {
        app.auth
            .denied(forbidden(format!("Role {:?} does not exist.", claims.role)))
    })?;
    Ok(RoleGrant {
        role,
        claims: claims.claims,
        key_id: None,
        token_expires: Some(claims.expires_at),
    })
}

/// Apply a grant to a shape request for `verb` on database `database_id`: refuse what the
/// role does not allow, and narrow the definition to what it does.
pub fn apply(
    grant: &Grant,
    database_id: &str,
    req: &mut ShapeRequest,
    verb: Verb,
) -> Result<Option<Vec<String>>, ApiError> {
    let allowed = apply_def(grant, database_id, &mut req.def, verb)?;
    if let Some(allowed) = &allowed {
        // A subset's where and order_by may name only the allowed columns too.
        req.queryable_columns = Some(match req.queryable_columns.take() {
            Some(q) => q.into_iter().filter(|c| allowed.contains(c)).collect(),
            None => allowed.clone(),
        });
    }
    Ok(allowed)
}

/// A subset's where clause and order_by may name only the role's allowed columns: 403
/// naming the others.
pub fn check_subset_columns(
    allowed: &[String],
    where_clause: Option<&str>,
    order_by: Option<&str>,
) -> Result<(), ApiError> {
    let mut named: Vec<String> = Vec::new();
    if let Some(w) = where_clause {
        // A clause that does not parse is the subset's own 400, later.
        named.extend(shapesync_filter::referenced_columns(w).unwrap_or_default());
    }
    if let Some(o) = order_by {
        named.extend(shapesync_filter::order_by_columns(o).unwrap_or_default());
    }
    let mut bad: Vec<String> = named.into_iter().filter(|c| !allowed.contains(c)).collect();
    bad.dedup();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(forbidden(format!(
            "The subset names columns not allowed for this credential: {}.",
            bad.join(", ")
        )))
    }
}

/// [`apply`] to a bare definition; the rule's column allow-list when it has one.
pub fn apply_def(
    grant: &Grant,
    database_id: &str,
    def: &mut ShapeDefinition,
    verb: Verb,
) -> Result<Option<Vec<String>>, ApiError> {
    let Grant::Role(g) = grant else {
        return Ok(None);
    };
    let table = format!("{}.{}", def.schema, def.table);
    let rule = g
        .role
        .rule_for(database_id, &def.schema, &def.table)
        .ok_or_else(|| forbidden(format!("Table {table} is not allowed for this credential.")))?;
    if !rule.verbs.contains(&verb) {
        return Err(forbidden(format!(
            "{} is not allowed on table {table} for this credential.",
            verb_name(verb)
        )));
    }
    // A subquery reads another table (or other rows of this one): refused under a role until
    // the grants of the tables it reads are checked too.
    if let Some(w) = &def.where_clause {
        if shapesync_filter::subquery_tables(w).is_ok_and(|t| !t.is_empty()) {
            return Err(forbidden(format!(
                "Subqueries are not allowed in where clauses for this credential (table {table})."
            )));
        }
    }
    if let Some(allowed) = &rule.columns {
        let outside = |names: &[String]| -> Vec<String> {
            names
                .iter()
                .filter(|c| !allowed.contains(c))
                .cloned()
                .collect()
        };
        match &def.columns {
            Some(cols) => {
                let bad = outside(cols);
                if !bad.is_empty() {
                    return Err(forbidden(format!(
                        "Columns not allowed on table {table}: {}.",
                        bad.join(", ")
                    )));
                }
            }
            None => def.columns = Some(allowed.clone()),
        }
        if let Some(w) = &def.where_clause {
            // A clause that does not parse is the shape's own 400, later.
            if let Ok(names) = shapesync_filter::referenced_columns(w) {
                let bad = outside(&names);
                if !bad.is_empty() {
                    return Err(forbidden(format!(
                        "The where clause names columns not allowed on table {table}: {}.",
                        bad.join(", ")
                    )));
                }
            }
        }
    }
    if let Some(filter) = &rule.row_filter {
        let names = shapesync_filter::row_filter_claims(filter)
            .map_err(|e| forbidden(format!("The role's row filter is not valid: {e}")))?;
        let mut claims = std::collections::BTreeMap::new();
        for name in names {
            let value = g.claims.get(&name).ok_or_else(|| {
                forbidden(format!(
                    "The role's row filter needs the claim {name:?}, which the credential does not have."
                ))
            })?;
            let text = shapesync_auth::claim_sql_text(value)
                .map_err(|e| forbidden(format!("The claim {name:?} cannot be used: {e}")))?;
            claims.insert(name, text);
        }
        def.row_filter = Some(RowFilter {
            clause: filter.clone(),
            claims,
        });
    }
    Ok(rule.columns.clone())
}

fn verb_name(v: Verb) -> &'static str {
    match v {
        Verb::Read => "Reading shapes",
        Verb::Subset => "Subset snapshots",
        Verb::Delete => "Deleting shapes",
    }
}

/// The server's authorization state: roles and keys, the token verifier, and counters.
pub struct AuthState {
    pub store: Arc<shapesync_auth::AuthStore>,
    pub jwt: Option<JwtVerifier>,
    /// argon2 verifications at once (each takes ~20 MB and tens of milliseconds).
    pub hashing: tokio::sync::Semaphore,
    /// argon2 verifications per key id (a wrong secret for a known id costs one each time).
    pub slow_checks: governor::DefaultKeyedRateLimiter<String>,
    /// Refused credentials, by error code.
    denials: dashmap::DashMap<&'static str, std::sync::atomic::AtomicU64>,
    /// Admin changes to roles and keys, by (object, action).
    changes: dashmap::DashMap<(&'static str, &'static str), std::sync::atomic::AtomicU64>,
}

impl AuthState {
    pub fn new(store: Arc<shapesync_auth::AuthStore>, jwt: Option<JwtVerifier>) -> Self {
        AuthState {
            store,
            jwt,
            hashing: tokio::sync::Semaphore::new(2),
            slow_checks: governor::RateLimiter::keyed(
                governor::Quota::per_second(std::num::NonZeroU32::MIN.saturating_add(1))
                    .allow_burst(std::num::NonZeroU32::MIN.saturating_add(4)),
            ),
            denials: Default::default(),
            changes: Default::default(),
        }
    }

    /// Count a refused credential and pass its error on.
    pub fn denied(&self, e: ApiError) -> ApiError {
        let code = match &e {
            ApiError::AuthRequired => "auth_required",
            ApiError::Auth { code, .. } => code,
            _ => "other",
        };
        self.denials
            .entry(code)
            .or_default()
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        e
    }

    /// Log and count an admin change (who, what, when: the log line carries the time).
    pub fn audit(&self, actor: &str, object: &'static str, action: &'static str, name: &str) {
        tracing::info!(target: "shapesync::audit", actor, object, action, name, "admin change");
        self.changes
            .entry((object, action))
            .or_default()
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// (code, count) of refused credentials, sorted.
    pub fn denial_counts(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = self
            .denials
            .iter()
            .map(|e| {
                (
                    *e.key(),
                    e.value().load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// ((object, action), count) of admin changes, sorted.
    pub fn change_counts(&self) -> Vec<((&'static str, &'static str), u64)> {
        let mut v: Vec<_> = self
            .changes
            .iter()
            .map(|e| {
                (
                    *e.key(),
                    e.value().load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .collect();
        v.sort_unstable();
        v
    }
}

/// The tenant a shape request names (`database_id`), once its secret checks out.
pub fn authorized_tenant(app: &AppState, query: &str) -> Result<Arc<Tenant>, ApiError> {
    let (database_id, secret) = tenant_and_secret(query);
    let tenant = app
        .tenants
        .resolve(database_id.as_deref())
        .map_err(|e| match e {
            // Only a caller with the server's secret learns that there are several databases.
            ResolveError::NotProvided => match app.access.check_secret(None, secret.as_deref()) {
                Ok(()) => ApiError::message(StatusCode::BAD_REQUEST, e.to_string()),
                Err(unauthorized) => unauthorized,
            },
            // Without a secret valid for the whole server, an unknown database looks like a
            // known one (401): ids cannot be enumerated without a secret.
            ResolveError::NotFound => match app.access.check_secret(None, secret.as_deref()) {
                Ok(()) => ApiError::UnknownDatabase(e.to_string()),
                Err(unauthorized) => unauthorized,
            },
        })?;
    app.access
        .check_secret(tenant.record.secret.as_deref(), secret.as_deref())?;
    Ok(tenant)
}

/// The tenant (`database_id`) and secret (`secret`, or the deprecated `api_secret`) of a query.
pub fn tenant_and_secret(query: &str) -> (Option<String>, Option<String>) {
    let (mut id, mut secret, mut api_secret) = (None, None, None);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "database_id" => id = Some(v.into_owned()),
            "secret" => secret = Some(v.into_owned()),
            "api_secret" => api_secret = Some(v.into_owned()),
            _ => {}
        }
    }
    // An empty value is no secret (a proxy's blank template), so a header credential counts.
    (id, secret.or(api_secret).filter(|s| !s.is_empty()))
}

/// Under a column allow-list: the client's where clause must type on `table` seen with only
/// the allowed columns (whatever form names a column: arrays, functions, qualified names), and
/// the table must have a primary key of allowed columns (without one, every column keys a row
/// and would show in each message's `key`).
pub fn check_table(
    allowed: &[String],
    def: &ShapeDefinition,
    table: &shapesync_filter::table::TableInfo,
) -> Result<(), ApiError> {
    let name = format!("{}.{}", def.schema, def.table);
    let keyed_by_hidden = if table.has_pk {
        table
            .key
            .iter()
            .any(|&k| !allowed.contains(&table.columns[k].name))
    } else {
        table.columns.iter().any(|c| !allowed.contains(&c.name))
    };
    if keyed_by_hidden {
        return Err(forbidden(format!(
            "Table {name} is keyed by columns not allowed for this credential (a table without a primary key is keyed by all its columns)."
        )));
    }
    if let Some(w) = &def.where_clause {
        if let Err(e) = shapesync_filter::parse_where(w, &table.restricted(allowed), &def.params) {
            return Err(forbidden(format!(
                "The where clause uses columns not allowed on table {name}: {e}"
            )));
        }
    }
    Ok(())
}

/// A role's answers are that caller's: never stored by a shared cache (`private`, no
/// `s-maxage`), and varying with the credential headers.
pub fn private_cache(h: &mut axum::http::HeaderMap) {
    use axum::http::{header, HeaderValue};
    if let Some(cc) = h
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(private_directives)
    {
        if let Ok(v) = HeaderValue::from_str(&cc) {
            h.insert(header::CACHE_CONTROL, v);
        }
    }
    h.insert(header::VARY, HeaderValue::from_static(PRIVATE_VARY));
}

/// The `vary` of a role's answers.
pub const PRIVATE_VARY: &str = "authorization, x-api-key";

/// `cache-control` directives made private (see [`private_cache`]); `None` if they are already.
pub fn private_directives(cc: &str) -> Option<String> {
    if !(cc.contains("public") || cc.contains("s-maxage")) {
        return None;
    }
    let private: Vec<&str> = cc
        .split(',')
        .map(str::trim)
        .filter(|d| !d.starts_with("s-maxage") && !d.starts_with("stale-while-revalidate"))
        .map(|d| if d == "public" { "private" } else { d })
        .collect();
    Some(private.join(", "))
}
