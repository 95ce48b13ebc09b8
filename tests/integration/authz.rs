//! Keys, roles and per-user shapes, enforced by the server: a role matrix (database, table,
//! column and verb, each allowed and forbidden), a property test that no client clause can
//! widen a role's row filter (every row ever delivered satisfies it in Postgres), JWTs (valid,
//! expired, not yet valid, wrong signature, `none`, HS/RS confusion, missing role, claims of
//! each type), rules that change under open shapes (409, then 403), and key revocation while a
//! long-poll is parked. The official client's per-user test is `client_e2e::per_user_shapes`.

use std::time::Duration;

use jsonwebtoken::{encode, EncodingKey, Header};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};
use shapesync::serve::access::{AccessConfig, JwtKey, RateLimit};

use crate::support::{connect, fresh_db, pg_rows, request, Follower, Reply, TestServer};

pub(crate) const ADMIN: &str = "admin-key-of-the-authz-tests";
pub(crate) const JWT_SECRET: &str = "a jwt secret of at least thirty-two bytes";

pub(crate) fn access(jwt: Option<JwtKey>) -> AccessConfig {
    let generous = RateLimit {
        per_second: 10_000,
        burst: 10_000,
    };
    AccessConfig {
        secret: Some("the-shape-secret".into()),
        admin_key: Some(ADMIN.into()),
        insecure: false,
        trusted_proxies: vec![],
        admin_rate: generous,
        create_rate: generous,
        jwt,
    }
}

pub(crate) async fn secured(url: &str) -> TestServer {
    TestServer::start_with(url, |c| {
        c.access = access(Some(JwtKey::Secret(JWT_SECRET.into())));
        c.shape_deletion = true;
        c.long_poll = Duration::from_secs(20);
    })
    .await
}

pub(crate) async fn admin(
    server: &TestServer,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Reply {
    request(server, method, path, Some(ADMIN), body).await
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An HS256 token with these claims (and an hour's `exp` unless given).
pub(crate) fn token(claims: Value) -> String {
    let mut claims = claims;
    if claims.get("exp").is_none() {
        claims["exp"] = json!(now() + 3600);
    }
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

async fn get(server: &TestServer, query: &str, credential: Option<&str>) -> Reply {
    let bearer = credential.map(|c| format!("Bearer {c}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("authorization", b)])
        .unwrap_or_default();
    server.client().get_with(query, &headers).await
}

fn code(r: &Reply) -> String {
    r.json()["error"]["code"].as_str().unwrap_or("").to_string()
}

async fn revoke(server: &TestServer, id: &str) {
    let r = admin(
        server,
        Method::DELETE,
        &format!("/v1/admin/api-key/{id}"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn create_key(server: &TestServer, role: &str) -> String {
    let r = admin(
        server,
        Method::POST,
        "/v1/admin/api-key",
        Some(json!({"role": role, "name": "test"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["key"].as_str().unwrap().to_string()
}

/// Every combination of allowed and forbidden database, table, column and verb.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_matrix() {
    let url = fresh_db("authz_matrix").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, title text, owner_id text, secret text);
         INSERT INTO items SELECT g, 't' || g, 'u' || (g % 3), 'hidden' || g FROM generate_series(1, 30) g;
         CREATE TABLE other (id int PRIMARY KEY, v text);
         INSERT INTO other SELECT g, 'v' || g FROM generate_series(1, 5) g;
         CREATE SCHEMA private; CREATE TABLE private.x (id int PRIMARY KEY);
         CREATE TABLE logs (id int, title text, secret text); INSERT INTO logs VALUES (1, 't', 's3cr3t');",
    )
    .await
    .unwrap();
    let url2 = fresh_db("authz_matrix2").await;
    connect(&url2)
        .await
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, title text); INSERT INTO items VALUES (1, 'db2')")
        .await
        .unwrap();
    let server = secured(&url).await;
    let r = admin(
        &server,
        Method::POST,
        "/v1/admin/database",
        Some(json!({"database_url": url2.replacen("postgres@", "postgres:hunter2@", 1), "database_id": "db2"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let r = admin(
        &server,
        Method::POST,
        "/v1/admin/role",
        Some(json!({"name": "reader", "access": [
            {"database_id": "default", "table": "public.items", "columns": ["id", "title", "owner_id"], "verbs": ["read"]},
            {"database_id": "default", "table": "public.logs", "columns": ["id", "title"], "verbs": ["read"]},
            {"database_id": "default", "table": "public.*", "columns": ["id"], "verbs": ["subset"]}
        ]})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = admin(
        &server,
        Method::POST,
        "/v1/admin/role",
        Some(json!({"name": "db2", "access": [
            {"database_id": "db2", "table": "items", "verbs": ["read", "subset", "delete"]}
        ]})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let reader = create_key(&server, "reader").await;
    let db2 = create_key(&server, "db2").await;

    let cases: &[(&str, &str, u16, &str)] = &[
        // (credential, query, status, error code or text the body must hold)
        ("reader", "table=items&offset=-1", 200, ""),
        ("reader", "table=items&offset=-1&columns=id,title", 200, ""),
        (
            "reader",
            "table=items&offset=-1&columns=id,secret",
            403,
            "secret",
        ),
        (
            "reader",
            "table=items&offset=-1&where=secret%20%3D%20'x'",
            403,
            "secret",
        ),
        (
            "reader",
            "table=items&offset=-1&where=title%20%3D%20'x'%20OR%20items.secret%20IS%20NULL",
            403,
            "secret",
        ),
        (
            "reader",
            "table=items&offset=-1&subset__where=id%3C5",
            403,
            "Subset",
        ),
        ("reader", "table=other&offset=-1", 403, "Reading"),
        (
            "reader",
            "table=other&offset=-1&subset__where=id%3C3",
            200,
            "",
        ),
        (
            "reader",
            "table=other&offset=-1&subset__where=v%3D'x'",
            403,
            "v",
        ),
        (
            "reader",
            "table=other&offset=-1&subset__where=id%3C3&subset__order_by=v",
            403,
            "v",
        ),
        (
            "reader",
            "table=other&offset=-1&columns=id,v&subset__where=id%3C3",
            403,
            "v",
        ),
        ("reader", "table=private.x&offset=-1", 403, "private.x"),
        // Column names inside array constructors and functions are found by typing.
        (
            "reader",
            "table=items&offset=-1&where='x'%20%3D%20ANY(ARRAY[secret])",
            403,
            "secret",
        ),
        (
            "reader",
            "table=items&offset=-1&where=ARRAY[lower(secret)]%20%3D%20ARRAY['a']",
            403,
            "secret",
        ),
        // Without a primary key every column keys a row: a column allow-list cannot hide one.
        ("reader", "table=logs&offset=-1", 403, "keyed"),
        (
            "reader",
            "table=pg_catalog.pg_authid&offset=-1",
            400,
            "not a user table",
        ),
        (
            "reader",
            "table=items&offset=-1&database_id=db2",
            403,
            "db2",
        ),
        (
            "reader",
            "table=items&offset=-1&database_id=no-such-db",
            403,
            "no-such-db",
        ),
        ("db2", "table=items&offset=-1&database_id=db2", 200, ""),
        (
            "db2",
            "table=items&offset=-1&database_id=default",
            403,
            "default",
        ),
        ("db2", "table=items&offset=-1", 200, ""),
        (
            "db2",
            "table=items&offset=-1&database_id=db2&subset__where=id%3D1",
            200,
            "",
        ),
        ("none", "table=items&offset=-1", 401, "auth_required"),
        (
            "ssk_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "table=items&offset=-1",
            403,
            "auth_invalid",
        ),
        ("garbage", "table=items&offset=-1", 403, "auth_invalid"),
        (
            ADMIN,
            "table=items&offset=-1&columns=id,secret&database_id=default",
            200,
            "",
        ),
    ];
    for (who, query, status, needle) in cases {
        let cred = match *who {
            "reader" => Some(reader.as_str()),
            "db2" => Some(db2.as_str()),
            "none" => None,
            other => Some(other),
        };
        let r = get(&server, query, cred).await;
        assert_eq!(r.status, *status, "{who} {query}: {}", r.body);
        if *status >= 400 {
            assert!(
                r.body.contains(needle) || code(&r) == *needle,
                "{who} {query}: {} lacks {needle}",
                r.body
            );
            if *status == 403 {
                assert!(
                    ["forbidden", "auth_invalid"].contains(&code(&r).as_str()),
                    "{}",
                    r.body
                );
            }
        }
    }
    // Omitted columns are the allowed ones: the secret column never leaves.
    let r = get(&server, "table=items&offset=-1", Some(&reader)).await;
    let rows = r.messages();
    assert!(!rows.is_empty());
    for m in rows.iter().filter(|m| m.get("value").is_some()) {
        let keys: Vec<&String> = m["value"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["id", "owner_id", "title"], "{m}");
    }
    assert!(!r.header("electric-schema").unwrap().contains("secret"));
    // A role's answers are private to its caller: no shared cache may keep them.
    let cc = r.header("cache-control").unwrap();
    assert!(
        cc.contains("private") && !cc.contains("public") && !cc.contains("s-maxage"),
        "{cc}"
    );
    assert!(r.header("vary").unwrap().contains("authorization"));
    // The shape secret is still a full-access credential.
    let r = server
        .client()
        .get("table=items&offset=-1&columns=id,secret&database_id=default&secret=the-shape-secret")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Deletion is a verb of its own.
    let del = |cred: String, q: &'static str| {
        let base = server.base.clone();
        async move {
            reqwest::Client::new()
                .delete(format!("{base}/v1/shape?{q}"))
                .header("authorization", format!("Bearer {cred}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(del(reader.clone(), "table=items").await, 403);
    assert_eq!(del(db2.clone(), "table=items&database_id=db2").await, 202);
    assert_eq!(del(db2.clone(), "handle=x-1&database_id=db2").await, 403);
    // Without a credential, an unknown and a known database look the same.
    let a = get(&server, "table=items&offset=-1&database_id=db2", None).await;
    let b = get(&server, "table=items&offset=-1&database_id=nope", None).await;
    assert_eq!((a.status, &a.body), (b.status, &b.body));
}

/// Random client clauses, hostile ones included, against a role's row filter: every row the
/// shape delivers, at first and live, satisfies the filter in Postgres, and the shape is
/// exactly `(client clause) AND (row filter)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_clause_widens_the_row_filter() {
    let seed: u64 = std::env::var("AUTHZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("authz property test seed: {seed} (AUTHZ_SEED={seed} to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let url = fresh_db("authz_prop").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE notes (id int PRIMARY KEY, owner text, n int, tag text);
         INSERT INTO notes SELECT g, (ARRAY['alice','bob','carol'])[1 + g % 3], g % 17, 't' || (g % 5)
           FROM generate_series(1, 150) g;",
    )
    .await
    .unwrap();
    let server = secured(&url).await;
    let r = admin(
        &server,
        Method::POST,
        "/v1/admin/role",
        Some(json!({"name": "owner", "access": [
            {"database_id": "default", "table": "public.notes", "row_filter": "owner = claim('sub')", "verbs": ["read", "subset"]}
        ]})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let alice = token(json!({"role": "owner", "sub": "alice"}));

    let atoms = [
        "true",
        "1=1",
        "n > 5",
        "n % 3 = 0",
        "tag = 't2'",
        "owner = 'bob'",
        "owner <> 'alice'",
        "owner IS DISTINCT FROM 'alice'",
        "NOT (owner = 'alice')",
        "n::text = '4'",
        "owner IN ('bob', 'carol')",
        "owner LIKE '%'",
        "n > 1 /* OR true */",
        "coalesce(owner, 'x') <> ''",
        "owner = $1",
        "n < $2",
    ];
    let hostile = [
        "1=1) OR (1=1",
        "true) OR (owner <> 'alice'",
        "n > 1 -- ) AND owner = 'alice'",
        "n > 1; SELECT 1",
        "owner = 'bob' OR true",
        "id IN (SELECT id FROM notes)",
        "claim('sub') IS NOT NULL",
    ];
    let mut clauses: Vec<String> = hostile.iter().map(|s| s.to_string()).collect();
    for _ in 0..40 {
        let k = rng.random_range(1..=3);
        let mut c = atoms[rng.random_range(0..atoms.len())].to_string();
        for _ in 1..k {
            let op = if rng.random_bool(0.5) { "AND" } else { "OR" };
            let a = atoms[rng.random_range(0..atoms.len())];
            c = if rng.random_bool(0.3) {
                format!("NOT ({c}) {op} {a}")
            } else {
                format!("({c}) {op} {a}")
            };
        }
        clauses.push(c);
    }
    let enc = |s: &str| -> String { form_urlencoded::byte_serialize(s.as_bytes()).collect() };
    let params = "&params[1]=bob&params[2]=9";
    let mut followers = Vec::new();
    for clause in &clauses {
        let q = format!("table=notes&where={}{params}", enc(clause));
        let r = get(&server, &format!("{q}&offset=-1"), Some(&alice)).await;
        assert_ne!(r.status / 100, 5, "{clause}: {}", r.body);
        if r.status != 200 {
            assert!(
                [400, 403].contains(&r.status),
                "{clause}: {} {}",
                r.status,
                r.body
            );
            continue;
        }
        let mut f = Follower::new(server.client(), &q);
        f.headers = vec![("authorization".into(), format!("Bearer {alice}"))];
        f.sync().await;
        let sql_clause = clause.replace("$1", "'bob'").replace("$2", "9");
        let want = pg_rows(
            &db,
            &format!("SELECT id::text, owner, n::text, tag FROM notes WHERE ({sql_clause}\n) AND owner = 'alice' ORDER BY notes.id"),
        )
        .await;
        for row in f.values() {
            assert_eq!(row["owner"], json!("alice"), "{clause}: {row:?}");
        }
        f.until_matches(&want).await;
        followers.push((clause.clone(), sql_clause, f));
    }
    assert!(
        followers.len() >= 10,
        "too few valid clauses: {}",
        followers.len()
    );
    // Subsets obey the filter too.
    for sub in ["owner = 'bob'", "true", "owner <> 'alice' OR n > 0"] {
        let r = get(
            &server,
            &format!("table=notes&offset=-1&subset__where={}", enc(sub)),
            Some(&alice),
        )
        .await;
        assert_eq!(r.status, 200, "{sub}: {}", r.body);
        let v: Value = r.json();
        for row in v["data"].as_array().unwrap() {
            assert_eq!(row["value"]["owner"], json!("alice"), "{sub}: {row}");
        }
    }
    // Live: rows moving between owners, new rows of every owner.
    db.batch_execute(
        "UPDATE notes SET owner = 'bob' WHERE id % 7 = 0 AND owner = 'alice';
         UPDATE notes SET owner = 'alice' WHERE id % 11 = 0 AND owner <> 'alice';
         INSERT INTO notes SELECT g, (ARRAY['alice','bob','carol'])[1 + g % 3], g % 17, 't' || (g % 5)
           FROM generate_series(151, 180) g;
         UPDATE notes SET n = n + 1 WHERE id % 4 = 0;",
    )
    .await
    .unwrap();
    for (clause, sql_clause, f) in followers.iter_mut() {
        let want = pg_rows(
            &db,
            &format!("SELECT id::text, owner, n::text, tag FROM notes WHERE ({sql_clause}\n) AND owner = 'alice' ORDER BY notes.id"),
        )
        .await;
        f.until_matches(&want).await;
        for row in f.values() {
            assert_eq!(row["owner"], json!("alice"), "{clause}: {row:?}");
        }
    }
}

/// Tokens: every way one can be wrong, and claims of each JSON type bound as typed constants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_verification_and_claim_types() {
    let url = fresh_db("authz_jwt").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE typed (id int PRIMARY KEY, owner text, org int, flag bool, score numeric);
         INSERT INTO typed SELECT g, (ARRAY['alice','bob'])[1 + (g / 4) % 2], g % 4, g % 3 = 0, g / 2.0
           FROM generate_series(1, 60) g;",
    )
    .await
    .unwrap();
    let server = secured(&url).await;
    let filter = "owner = claim('sub') AND org = ANY(claim('orgs')::int[]) AND flag = claim('flag')::boolean AND score >= claim('min')";
    let r = admin(
        &server,
        Method::PUT,
        "/v1/admin/role/typed",
        Some(
            json!({"access": [{"database_id": "default", "table": "typed", "row_filter": filter}]}),
        ),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let q = "table=typed&offset=-1";
    let good = json!({"role": "typed", "sub": "alice", "orgs": [1, 3], "flag": true, "min": 4.5});
    let r = get(&server, q, Some(&token(good.clone()))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let got: Vec<String> = {
        let mut v: Vec<String> = r
            .messages()
            .iter()
            .filter_map(|m| m["value"]["id"].as_str().map(str::to_string))
            .collect();
        v.sort();
        v
    };
    let want: Vec<String> = {
        let rows = db
            .query(
                "SELECT id::text FROM typed WHERE owner = 'alice' AND org = ANY('{1,3}'::int[]) AND flag AND score >= 4.5 ORDER BY 1",
                &[],
            )
            .await
            .unwrap();
        rows.iter().map(|r| r.get::<_, String>(0)).collect()
    };
    assert!(!want.is_empty());
    assert_eq!(got, want);

    let mut null_claim = good.clone();
    null_claim["sub"] = Value::Null;
    let r = get(&server, q, Some(&token(null_claim))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.messages().iter().all(|m| m.get("value").is_none()),
        "a NULL claim matches nothing"
    );

    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("orgs");
    let r = get(&server, q, Some(&token(missing))).await;
    assert_eq!(
        (r.status, code(&r)),
        (403, "forbidden".into()),
        "{}",
        r.body
    );
    assert!(r.body.contains("orgs"));

    let mut bad_type = good.clone();
    bad_type["min"] = json!("lots");
    let r = get(&server, q, Some(&token(bad_type))).await;
    assert_eq!(r.status / 100, 4, "{}", r.body);

    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "expired",
            token(json!({"role": "typed", "sub": "alice", "exp": now() - 300})),
            403,
            "auth_invalid",
        ),
        (
            "not yet valid",
            token(json!({"role": "typed", "sub": "alice", "nbf": now() + 600})),
            403,
            "auth_invalid",
        ),
        (
            "wrong signature",
            encode(
                &Header::default(),
                &json!({"role": "typed", "exp": now() + 60}),
                &EncodingKey::from_secret(b"another secret of thirty-two bytes or more").unwrap(),
            )
            .unwrap(),
            403,
            "auth_invalid",
        ),
        (
            "alg none",
            none_token(
                &json!({"role": "typed", "sub": "alice", "orgs": [1], "flag": true, "min": 0, "exp": now() + 60}),
            ),
            403,
            "auth_invalid",
        ),
        (
            "missing role",
            token(json!({"sub": "alice"})),
            403,
            "auth_invalid",
        ),
        (
            "no exp",
            {
                let claims = json!({"role": "typed", "sub": "alice"});
                encode(
                    &Header::default(),
                    &claims,
                    &EncodingKey::from_secret(JWT_SECRET.as_bytes()).unwrap(),
                )
                .unwrap()
            },
            403,
            "auth_invalid",
        ),
        (
            "unknown role",
            token(json!({"role": "nobody", "sub": "alice"})),
            403,
            "forbidden",
        ),
    ];
    for (what, t, status, c) in cases {
        let r = get(&server, q, Some(&t)).await;
        assert_eq!(
            (r.status, code(&r)),
            (status, c.to_string()),
            "{what}: {}",
            r.body
        );
    }
}

/// A token with `alg: none` and no signature.
fn none_token(claims: &Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    )
}

/// RS256 and ES256: the right key verifies; an HS256 token whose secret is the public key (the
/// classic algorithm confusion) does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_key_tokens_and_algorithm_confusion() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("auth/tests/fixtures");
    let url = fresh_db("authz_rs").await;
    connect(&url)
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    for (public, private, alg) in [
        (
            "rsa_public.pem",
            "rsa_private.pem",
            jsonwebtoken::Algorithm::RS256,
        ),
        (
            "ec_public.pem",
            "ec_private.pem",
            jsonwebtoken::Algorithm::ES256,
        ),
    ] {
        let public = std::fs::read(fixtures.join(public)).unwrap();
        let private = std::fs::read(fixtures.join(private)).unwrap();
        let pem = public.clone();
        let mut server = TestServer::start_with(&url, |c| {
            c.access = access(Some(JwtKey::PublicKeyPem(pem)));
        })
        .await;
        let r = admin(
            &server,
            Method::POST,
            "/v1/admin/role",
            Some(json!({"name": "r", "access": [{"database_id": "default", "table": "public.*"}]})),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let claims = json!({"role": "r", "exp": now() + 600});
        let key = match alg {
            jsonwebtoken::Algorithm::RS256 => EncodingKey::from_rsa_pem(&private).unwrap(),
            _ => EncodingKey::from_ec_pem(&private).unwrap(),
        };
        let good = encode(&Header::new(alg), &claims, &key).unwrap();
        let r = get(&server, "table=t&offset=-1", Some(&good)).await;
        assert_eq!(r.status, 200, "{alg:?}: {}", r.body);
        let confused = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(&public).unwrap(),
        )
        .unwrap();
        let r = get(&server, "table=t&offset=-1", Some(&confused)).await;
        assert_eq!(
            (r.status, code(&r)),
            (403, "auth_invalid".into()),
            "{alg:?} confusion: {}",
            r.body
        );
        server.stop().await;
    }
}

/// Rules change under open shapes: a changed row filter rotates the shape (409, then the new
/// rows); a deleted role ends it (403). Keys show their last use; changes are audited in metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_changes_rotate_or_end_open_shapes() {
    let url = fresh_db("authz_change").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, owner text);
         INSERT INTO items SELECT g, (ARRAY['a','b'])[1 + g % 2] FROM generate_series(1, 10) g;",
    )
    .await
    .unwrap();
    let server = secured(&url).await;
    let role = |f: &str| json!({"access": [{"database_id": "default", "table": "items", "row_filter": f}]});
    let r = admin(
        &server,
        Method::PUT,
        "/v1/admin/role/r",
        Some(role("owner = 'a'")),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let key = create_key(&server, "r").await;
    let mut f = Follower::rotating(server.client(), "table=items");
    f.headers = vec![("x-api-key".into(), key.clone())];
    f.sync().await;
    f.until_matches(
        &pg_rows(
            &db,
            "SELECT id::text, owner FROM items WHERE owner = 'a' ORDER BY items.id",
        )
        .await,
    )
    .await;
    let r = admin(
        &server,
        Method::PUT,
        "/v1/admin/role/r",
        Some(role("owner = 'b'")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = f.poll().await;
    assert_eq!(r.status, 409, "{}", r.body);
    f.sync().await;
    f.until_matches(
        &pg_rows(
            &db,
            "SELECT id::text, owner FROM items WHERE owner = 'b' ORDER BY items.id",
        )
        .await,
    )
    .await;

    let keys = admin(&server, Method::GET, "/v1/admin/api-key", None).await;
    assert_eq!(keys.status, 200);
    let listed = &keys.json()[0];
    assert!(listed["last_used_at"].is_string(), "{listed}");
    assert!(
        listed.get("key").is_none() && listed.get("hash").is_none(),
        "{listed}"
    );
    assert!(
        !keys.body.contains(&key[12..]),
        "the key's secret must never be listed"
    );

    let r = admin(&server, Method::DELETE, "/v1/admin/role/r", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let q = format!(
        "table=items&offset={}&handle={}",
        f.offset,
        f.handle.clone().unwrap()
    );
    let r = server.client().get_with(&q, &[("x-api-key", &key)]).await;
    // Its keys went with it, and a new role of the same name does not bring them back.
    assert_eq!(
        (r.status, code(&r)),
        (403, "auth_invalid".into()),
        "{}",
        r.body
    );

    let metrics = server
        .client()
        .raw_with("/metrics", &[("x-api-key", ADMIN)])
        .await;
    for line in [
        "shapesync_admin_changes_total{object=\"role\",action=\"create\"} 1",
        "shapesync_admin_changes_total{object=\"role\",action=\"update\"} 1",
        "shapesync_admin_changes_total{object=\"role\",action=\"delete\"} 1",
        "shapesync_admin_changes_total{object=\"api_key\",action=\"create\"} 1",
    ] {
        assert!(
            metrics.body.contains(line),
            "{line} missing:\n{}",
            metrics.body
        );
    }
}

/// A key revoked while its long-poll is parked: the request wakes to a 403, not to the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_a_parked_long_poll() {
    let url = fresh_db("authz_revoke").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a')",
    )
    .await
    .unwrap();
    let server = secured(&url).await;
    let r = admin(
        &server,
        Method::POST,
        "/v1/admin/role",
        Some(json!({"name": "r", "access": [{"database_id": "default", "table": "items"}]})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let created = admin(
        &server,
        Method::POST,
        "/v1/admin/api-key",
        Some(json!({"role": "r"})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_str().unwrap().to_string();
    let key = created.json()["key"].as_str().unwrap().to_string();
    let mut f = Follower::new(server.client(), "table=items");
    f.headers = vec![("authorization".into(), format!("Bearer {key}"))];
    f.sync().await;
    let q = format!(
        "table=items&offset={}&handle={}&live=true&cursor={}",
        f.offset,
        f.handle.clone().unwrap(),
        f.cursor.clone().unwrap_or_default()
    );
    let client = server.client();
    let bearer = format!("Bearer {key}");
    let parked =
        tokio::spawn(async move { client.get_with(&q, &[("authorization", &bearer)]).await });
    crate::support::eventually("the long-poll to park", Duration::from_secs(10), || async {
        server
            .client()
            .raw_with("/metrics", &[("x-api-key", ADMIN)])
            .await
            .body
            .contains("shapesync_http_requests_parked 1\n")
    })
    .await;
    revoke(&server, &id).await;
    db.batch_execute("INSERT INTO items VALUES (2, 'after revocation')")
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), parked)
        .await
        .expect("the parked request answers")
        .unwrap();
    assert_eq!(
        (r.status, code(&r)),
        (403, "auth_invalid".into()),
        "{}",
        r.body
    );
    assert!(!r.body.contains("after revocation"));
    let r = get(&server, "table=items&offset=-1", Some(&key)).await;
    assert_eq!(r.status, 403);

    // An SSE stream ends when its key is revoked, before the next change reaches it.
    let key = create_key(&server, "r").await;
    let id = admin(&server, Method::GET, "/v1/admin/api-key", None)
        .await
        .json()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut f = Follower::new(server.client(), "table=items");
    f.headers = vec![("authorization".into(), format!("Bearer {key}"))];
    f.sync().await;
    let url = format!(
        "{}/v1/shape?table=items&offset={}&handle={}&live=true&live_sse=true",
        server.base,
        f.offset,
        f.handle.clone().unwrap()
    );
    let mut res = reqwest::Client::new()
        .get(url)
        .header("authorization", format!("Bearer {key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    revoke(&server, &id).await;
    db.batch_execute("INSERT INTO items VALUES (3, 'sse after revocation')")
        .await
        .unwrap();
    let mut body = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(chunk)) = res.chunk().await {
            body.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the SSE stream must end after the revocation"
    );
    assert!(!body.contains("sse after revocation"), "{body}");
}

/// The admin API of roles and keys: validation in the seeds' form, conflicts, not found,
/// expiry, and a key shown once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_of_roles_and_keys() {
    let url = fresh_db("authz_admin").await;
    connect(&url)
        .await
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (1)")
        .await
        .unwrap();
    let server = secured(&url).await;
    let r = request(&server, Method::GET, "/v1/admin/role", None, None).await;
    assert_eq!((r.status, code(&r)), (401, "auth_required".into()));
    let r = request(&server, Method::GET, "/v1/admin/role", Some("wrong"), None).await;
    assert_eq!((r.status, code(&r)), (403, "auth_invalid".into()));
    let bad = admin(
        &server,
        Method::POST,
        "/v1/admin/role",
        Some(json!({"name": "bad name!", "access": [{"database_id": "", "table": "public.t", "row_filter": "1=1) OR (1=1", "verbs": []}]})),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let errs = bad.json();
    for field in [
        "name",
        "access[0].database_id",
        "access[0].row_filter",
        "access[0].verbs",
    ] {
        assert!(errs.get(field).is_some(), "{field} missing in {errs}");
    }
    let r = admin(
        &server,
        Method::POST,
        "/v1/admin/role",
        Some(json!({"name": "y", "access": [{"database_id": "default", "table": "a.b.c"}]})),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("a.b.c"), "{}", r.body);
    let r = admin(
        &server,
        Method::POST,
        "/v1/admin/role",
        Some(json!({"name": "x", "access": [], "extra": 1})),
    )
    .await;
    assert_eq!(r.status, 400, "unknown fields are refused: {}", r.body);
    let r = admin(
        &server,
        Method::POST,
        "/v1/admin/role",
        Some(json!({"name": "x", "access": []})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = admin(
        &server,
        Method::POST,
        "/v1/admin/role",
        Some(json!({"name": "x", "access": []})),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = admin(&server, Method::GET, "/v1/admin/role/x", None).await;
    assert_eq!((r.status, r.json()["name"].clone()), (200, json!("x")));
    let r = admin(&server, Method::GET, "/v1/admin/role/nope", None).await;
    assert_eq!(r.status, 404);
    let r = admin(&server, Method::DELETE, "/v1/admin/role/nope", None).await;
    assert_eq!(r.status, 404);
    let r = admin(
        &server,
        Method::POST,
        "/v1/admin/api-key",
        Some(json!({"role": "nope"})),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = admin(
        &server,
        Method::POST,
        "/v1/admin/api-key",
        Some(json!({"role": "x", "expires_at": "2001-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(r.status, 400, "an expiry in the past: {}", r.body);
    let soon = chrono::Utc::now() + chrono::Duration::seconds(2);
    let r = admin(
        &server,
        Method::POST,
        "/v1/admin/api-key",
        Some(json!({"role": "x", "name": "short-lived", "expires_at": soon.to_rfc3339()})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let key = r.json()["key"].as_str().unwrap().to_string();
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert!(key.starts_with("ssk_"));
    let shown = admin(
        &server,
        Method::GET,
        &format!("/v1/admin/api-key/{id}"),
        None,
    )
    .await;
    assert_eq!(shown.status, 200);
    assert!(shown.json().get("key").is_none() && !shown.body.contains(&key));
    // A role with no rules reads nothing.
    let r = get(&server, "table=items&offset=-1", Some(&key)).await;
    assert_eq!(
        (r.status, code(&r)),
        (403, "forbidden".into()),
        "{}",
        r.body
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = get(&server, "table=items&offset=-1", Some(&key)).await;
    assert_eq!(
        (r.status, code(&r)),
        (403, "auth_invalid".into()),
        "expired: {}",
        r.body
    );
    let r = admin(
        &server,
        Method::DELETE,
        &format!("/v1/admin/api-key/{id}"),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = admin(
        &server,
        Method::DELETE,
        &format!("/v1/admin/api-key/{id}"),
        None,
    )
    .await;
    assert_eq!(r.status, 404);
    // Roles and keys survive a restart.
    let key2 = create_key(&server, "x").await;
    let mut server = server;
    server.restart().await;
    let r = get(&server, "table=items&offset=-1", Some(&key2)).await;
    assert_eq!(
        (r.status, code(&r)),
        (403, "forbidden".into()),
        "{}",
        r.body
    );
    let r = admin(&server, Method::GET, "/v1/admin/role/x", None).await;
    assert_eq!(r.status, 200);
}

/// `openapi/shapesync.yaml` documents every status and header the roles and keys API and the
/// shape endpoint's credential errors answer with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_documents_roles_keys_and_credential_errors() {
    use crate::openapi::{check, spec};
    let spec = spec();
    let url = fresh_db("authz_spec").await;
    connect(&url)
        .await
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a')",
        )
        .await
        .unwrap();
    let server = secured(&url).await;
    let role = json!({"name": "r", "access": [{"database_id": "default", "table": "items", "columns": ["id"]}]});
    // (spec path, method, url, body, admin key)
    type Call<'a> = (&'a str, Method, String, Option<Value>, Option<&'a str>);
    let calls: Vec<Call> = vec![
        (
            "/v1/admin/role",
            Method::POST,
            "/v1/admin/role".into(),
            Some(role.clone()),
            Some(ADMIN),
        ),
        (
            "/v1/admin/role",
            Method::POST,
            "/v1/admin/role".into(),
            Some(role.clone()),
            Some(ADMIN),
        ),
        (
            "/v1/admin/role",
            Method::POST,
            "/v1/admin/role".into(),
            Some(json!({"name": "!"})),
            Some(ADMIN),
        ),
        (
            "/v1/admin/role",
            Method::GET,
            "/v1/admin/role".into(),
            None,
            Some(ADMIN),
        ),
        (
            "/v1/admin/role",
            Method::GET,
            "/v1/admin/role".into(),
            None,
            None,
        ),
        (
            "/v1/admin/role",
            Method::GET,
            "/v1/admin/role".into(),
            None,
            Some("wrong"),
        ),
        (
            "/v1/admin/role/{name}",
            Method::GET,
            "/v1/admin/role/r".into(),
            None,
            Some(ADMIN),
        ),
        (
            "/v1/admin/role/{name}",
            Method::GET,
            "/v1/admin/role/zz".into(),
            None,
            Some(ADMIN),
        ),
        (
            "/v1/admin/role/{name}",
            Method::PUT,
            "/v1/admin/role/r".into(),
            Some(role.clone()),
            Some(ADMIN),
        ),
        (
            "/v1/admin/role/{name}",
            Method::PUT,
            "/v1/admin/role/r2".into(),
            Some(json!({"access": []})),
            Some(ADMIN),
        ),
        (
            "/v1/admin/role/{name}",
            Method::PUT,
            "/v1/admin/role/r2".into(),
            Some(json!({"access": [{"table": "x"}]})),
            Some(ADMIN),
        ),
        (
            "/v1/admin/role/{name}",
            Method::DELETE,
            "/v1/admin/role/r2".into(),
            None,
            Some(ADMIN),
        ),
        (
            "/v1/admin/role/{name}",
            Method::DELETE,
            "/v1/admin/role/r2".into(),
            None,
            Some(ADMIN),
        ),
        (
            "/v1/admin/api-key",
            Method::POST,
            "/v1/admin/api-key".into(),
            Some(json!({"role": "r"})),
            Some(ADMIN),
        ),
        (
            "/v1/admin/api-key",
            Method::POST,
            "/v1/admin/api-key".into(),
            Some(json!({"role": "none"})),
            Some(ADMIN),
        ),
        (
            "/v1/admin/api-key",
            Method::GET,
            "/v1/admin/api-key".into(),
            None,
            Some(ADMIN),
        ),
        (
            "/v1/admin/api-key/{id}",
            Method::GET,
            "/v1/admin/api-key/nope".into(),
            None,
            Some(ADMIN),
        ),
        (
            "/v1/admin/api-key/{id}",
            Method::DELETE,
            "/v1/admin/api-key/nope".into(),
            None,
            Some(ADMIN),
        ),
    ];
    for (path, method, url, body, key) in calls {
        let r = request(&server, method.clone(), &url, key, body).await;
        check(&spec, path, &method.as_str().to_lowercase(), &r);
    }
    let key = create_key(&server, "r").await;
    let id = admin(&server, Method::GET, "/v1/admin/api-key", None)
        .await
        .json()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = admin(
        &server,
        Method::GET,
        &format!("/v1/admin/api-key/{id}"),
        None,
    )
    .await;
    check(&spec, "/v1/admin/api-key/{id}", "get", &r);
    for (query, cred) in [
        ("table=items&offset=-1", Some(key.as_str())),
        ("table=items&offset=-1&columns=id,v", Some(key.as_str())),
        ("table=items&offset=-1", Some("garbage")),
        ("table=items&offset=-1", None),
    ] {
        check(&spec, "/v1/shape", "get", &get(&server, query, cred).await);
    }
    let r = admin(
        &server,
        Method::DELETE,
        &format!("/v1/admin/api-key/{id}"),
        None,
    )
    .await;
    check(&spec, "/v1/admin/api-key/{id}", "delete", &r);
}

/// The client's clause is evaluated only on rows the role's filter keeps: an error it would
/// raise on another user's row (a division by zero here) cannot tell about that row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_clauses_never_run_on_rows_outside_the_filter() {
    let url = fresh_db("authz_guard").await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, owner text, n int);
         INSERT INTO t SELECT g, 'alice', g FROM generate_series(1, 5) g;
         INSERT INTO t VALUES (100, 'bob', 0);",
    )
    .await
    .unwrap();
    let server = secured(&url).await;
    let r = admin(
        &server,
        Method::POST,
        "/v1/admin/role",
        Some(
            json!({"name": "own", "access": [{"database_id": "default", "table": "t",
            "row_filter": "owner = claim('sub')", "verbs": ["read", "subset"]}]}),
        ),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let alice = token(json!({"role": "own", "sub": "alice"}));
    let r = get(
        &server,
        "table=t&offset=-1&where=10%20%2F%20n%20%3E%200",
        Some(&alice),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.messages()
            .iter()
            .filter(|m| m.get("value").is_some())
            .count(),
        5
    );
    let r = get(
        &server,
        "table=t&offset=-1&subset__where=10%20%2F%20n%20%3E%200",
        Some(&alice),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin(
        &server,
        Method::PUT,
        "/v1/admin/role/own",
        Some(json!({"access": []})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}
