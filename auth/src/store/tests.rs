use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use super::*;
use crate::key::KEY_PREFIX;
use crate::role::TablePattern;

fn accept(_: &str) -> Result<(), String> {
    Ok(())
}

fn role_input(value: serde_json::Value) -> RoleInput {
    serde_json::from_value(value).unwrap()
}

fn reader() -> RoleInput {
    role_input(json!({
        "name": "reader",
        "description": "reads items",
        "access": [{"database_id": "db", "table": "public.items", "columns": ["id", "title"],
                    "row_filter": "owner = claim('sub')"}]
    }))
}

fn key_input(role: &str) -> KeyInput {
    KeyInput {
        role: role.into(),
        name: Some("ci".into()),
        expires_at: None,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        Fixture { _dir: dir, path }
    }

    fn open(&self) -> AuthStore {
        AuthStore::open(&self.path).unwrap()
    }
}

/// `text` with its secret changed but still well-formed.
fn wrong_secret(text: &str) -> String {
    let last = if text.ends_with('A') { "Q" } else { "A" };
    format!("{}{last}", &text[..text.len() - 1])
}

#[test]
fn store_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<AuthStore>();
}

#[test]
fn role_lifecycle() {
    let fx = Fixture::new();
    let store = fx.open();
    assert_eq!(store.version(), 0);
    let created = store.create_role(reader(), &accept).unwrap();
    assert_eq!(created.name, "reader");
    assert_eq!(created.created_at, created.updated_at);
    assert_eq!(store.version(), 1);

    let e = store.create_role(reader(), &accept).unwrap_err();
    assert!(
        matches!(&e, StoreError::Conflict(what) if what == "role \"reader\""),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "role \"reader\" already exists");
    assert_eq!(store.version(), 1);

    let e = store
        .create_role(role_input(json!({"access": []})), &accept)
        .unwrap_err();
    let StoreError::Invalid(fields) = e else {
        panic!("{e:?}")
    };
    assert_eq!(fields["name"], ["is required"]);

    let replacement = role_input(json!({"access": [{"database_id": "db", "table": "*"}]}));
    let (replaced, was_created) = store.put_role("reader", replacement, &accept).unwrap();
    assert!(!was_created);
    assert_eq!(replaced.created_at, created.created_at);
    assert!(replaced.updated_at >= created.updated_at);
    assert_eq!(replaced.description, None);
    assert_eq!(replaced.access[0].table, TablePattern::Any);
    assert_eq!(store.version(), 2);

    let (admin, was_created) = store
        .put_role(
            "admin",
            role_input(json!({"name": "admin", "access": []})),
            &accept,
        )
        .unwrap();
    assert!(was_created);
    assert_eq!(admin.name, "admin");
    let names: Vec<String> = store.list_roles().iter().map(|r| r.name.clone()).collect();
    assert_eq!(names, ["admin", "reader"]);
    assert_eq!(store.role("reader").unwrap(), replaced);

    let e = store.put_role(
        "admin",
        role_input(json!({"name": "other", "access": []})),
        &accept,
    );
    let Err(StoreError::Invalid(fields)) = e else {
        panic!("{e:?}")
    };
    assert_eq!(
        fields["name"],
        ["does not match the role in the path (\"admin\")"]
    );
    let e = store.put_role(
        "bad name",
        role_input(json!({"name": "bad name", "access": []})),
        &accept,
    );
    let Err(StoreError::Invalid(fields)) = e else {
        panic!("{e:?}")
    };
    assert_eq!(
        fields["name"],
        ["may only contain letters, digits, `_`, `.` and `-`"]
    );

    store.delete_role("admin").unwrap();
    assert!(store.role("admin").is_none());
    let e = store.delete_role("admin").unwrap_err();
    assert_eq!(e.to_string(), "role \"admin\" not found");
    assert_eq!(store.version(), 4);
}

#[test]
fn row_filters_go_through_the_callback() {
    let fx = Fixture::new();
    let store = fx.open();
    let refuse = |sql: &str| -> Result<(), String> { Err(format!("cannot parse {sql:?}")) };
    let e = store.create_role(reader(), &refuse).unwrap_err();
    let StoreError::Invalid(fields) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(
        fields["access[0].row_filter"],
        ["cannot parse \"owner = claim('sub')\""]
    );
    assert!(
        e.to_string().contains("access[0].row_filter: cannot parse"),
        "{e}"
    );
    assert!(store.list_roles().is_empty());
    assert!(!fx.path.exists(), "nothing was written");
}

#[test]
fn key_lifecycle() {
    let fx = Fixture::new();
    let store = fx.open();
    store.create_role(reader(), &accept).unwrap();

    let e = store.create_key(key_input("nobody")).unwrap_err();
    let StoreError::Invalid(fields) = e else {
        panic!("{e:?}")
    };
    assert_eq!(fields["role"], ["no role named \"nobody\""]);

    let (view, text) = store.create_key(key_input("reader")).unwrap();
    assert!(text.starts_with(KEY_PREFIX) && text.len() == 64);
    assert_eq!(view.prefix, text[..12]);
    assert_eq!(view.id, text[4..20]);
    assert_eq!(view.last_used_at, None);
    assert_eq!(store.key(&view.id).unwrap(), view);
    assert_eq!(store.list_keys(), std::slice::from_ref(&view));
    let on_disk = std::fs::read_to_string(&fx.path).unwrap();
    assert!(
        !on_disk.contains(&text[20..]),
        "the secret is never written"
    );
    assert!(
        on_disk.contains("\"hash\": \"$argon2id$v=19$m=19456,t=2,p=1$"),
        "{on_disk}"
    );

    // First verification needs argon2, later ones do not.
    assert_eq!(store.verify_fast(&text), None);
    let grant = store.verify(&text).unwrap();
    assert_eq!(
        grant,
        KeyGrant {
            id: view.id.clone(),
            role: "reader".into()
        }
    );
    assert_eq!(store.verify_fast(&text), Some(Ok(grant.clone())));
    assert_eq!(store.verify(&text), Ok(grant));

    // A wrong secret for a known id: refused from the cache, and by argon2 on a cold store.
    let wrong = wrong_secret(&text);
    assert_eq!(store.verify_fast(&wrong), Some(Err(KeyError::Mismatch)));
    assert_eq!(store.verify(&wrong), Err(KeyError::Mismatch));
    let cold = fx.open();
    assert_eq!(cold.verify_fast(&wrong), None);
    assert_eq!(cold.verify(&wrong), Err(KeyError::Mismatch));

    // Malformed keys and unknown ids are answered without argon2.
    for bad in ["", "ssk_", "Bearer x", &text[..63], &text.to_uppercase()] {
        assert_eq!(
            store.verify_fast(bad),
            Some(Err(KeyError::Malformed)),
            "{bad:?}"
        );
        assert_eq!(store.verify(bad), Err(KeyError::Malformed));
    }
    let unknown = format!("{KEY_PREFIX}ffffffffffffffff{}", &text[20..]);
    assert_eq!(store.verify_fast(&unknown), Some(Err(KeyError::Unknown)));

    // Revocation takes effect at once, cache included.
    let version = store.version();
    store.delete_key(&view.id).unwrap();
    assert_eq!(store.version(), version + 1);
    assert_eq!(store.verify_fast(&text), Some(Err(KeyError::Unknown)));
    assert_eq!(store.verify(&text), Err(KeyError::Unknown));
    assert!(store.key(&view.id).is_none());
    assert!(matches!(
        store.delete_key(&view.id),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(fx.open().verify_fast(&text), Some(Err(KeyError::Unknown)));
}

#[test]
fn expired_keys_are_refused_cached_or_not() {
    let past = Utc::now() - chrono::Duration::seconds(1);
    let (record, text) = ApiKeyRecord::generate("reader".into(), None, Some(past)).unwrap();
    let ring = KeyRing::from_records(vec![record]).unwrap();
    assert_eq!(ring.verify_fast(&text), None);
    assert_eq!(ring.verify(&text), Err(KeyError::Expired));
    assert_eq!(ring.verify_fast(&text), Some(Err(KeyError::Expired)));
    assert_eq!(
        ring.verify_fast(&wrong_secret(&text)),
        Some(Err(KeyError::Mismatch))
    );

    let fx = Fixture::new();
    let store = fx.open();
    store.create_role(reader(), &accept).unwrap();
    let mut input = key_input("reader");
    input.expires_at = Some("2001-01-01T00:00:00Z".into());
    let e = store.create_key(input).unwrap_err();
    assert!(matches!(e, StoreError::Invalid(f) if f["expires_at"] == ["must be in the future"]));
}

#[test]
fn state_survives_a_reopen() {
    let fx = Fixture::new();
    let store = fx.open();
    store.create_role(reader(), &accept).unwrap();
    let (first, text) = store.create_key(key_input("reader")).unwrap();
    let mut input = key_input("reader");
    input.name = None;
    input.expires_at = Some("2999-12-31T23:59:59Z".into());
    let (second, _) = store.create_key(input).unwrap();
    let mode = std::fs::metadata(&fx.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    store.touch(&first.id);
    store.touch("no-such-key");
    let used = store.key(&first.id).unwrap().last_used_at.unwrap();
    assert!(
        fx.open().key(&first.id).unwrap().last_used_at.is_none(),
        "not yet flushed"
    );
    let version = store.version();
    store.flush().unwrap();
    assert_eq!(
        store.version(),
        version,
        "last use is not a change of roles or keys"
    );

    let reopened = fx.open();
    assert_eq!(reopened.list_roles(), store.list_roles());
    assert_eq!(reopened.list_keys(), store.list_keys());
    assert_eq!(reopened.key(&first.id).unwrap().last_used_at, Some(used));
    assert_eq!(
        reopened.key(&second.id).unwrap().expires_at,
        second.expires_at
    );
    assert_eq!(reopened.verify(&text).unwrap().id, first.id);

    // Nothing to flush: the file is not rewritten.
    std::fs::remove_file(&fx.path).unwrap();
    store.flush().unwrap();
    assert!(!fx.path.exists());
}

#[test]
fn a_failed_write_changes_nothing() {
    let fx = Fixture::new();
    let store = fx.open();
    store.create_role(reader(), &accept).unwrap();
    // A directory where the temporary file should go makes the write fail, even for root.
    std::fs::create_dir(file::temp_path(&fx.path)).unwrap();
    let version = store.version();
    let other = role_input(json!({"name": "other", "access": []}));
    assert!(matches!(
        store.create_role(other.clone(), &accept),
        Err(StoreError::Io(_))
    ));
    assert!(matches!(
        store.delete_role("reader"),
        Err(StoreError::Io(_))
    ));
    assert!(matches!(
        store.create_key(key_input("reader")),
        Err(StoreError::Io(_))
    ));
    assert_eq!(store.version(), version);
    assert_eq!(store.list_roles().len(), 1);
    assert!(store.list_keys().is_empty());
    assert_eq!(fx.open().list_roles(), store.list_roles());

    std::fs::remove_dir(file::temp_path(&fx.path)).unwrap();
    store.create_role(other, &accept).unwrap();
    assert_eq!(fx.open().list_roles().len(), 2);
}

#[test]
fn a_stray_temporary_file_is_ignored() {
    let fx = Fixture::new();
    fx.open().create_role(reader(), &accept).unwrap();
    std::fs::write(file::temp_path(&fx.path), b"{ half a docu").unwrap();
    let store = fx.open();
    assert_eq!(store.list_roles().len(), 1);
    store.delete_role("reader").unwrap();
    assert!(fx.open().list_roles().is_empty());
}

#[test]
fn a_corrupt_file_is_an_error() {
    let fx = Fixture::new();
    let role = json!({"name": "r", "access": [], "created_at": "2024-01-01T00:00:00Z",
                      "updated_at": "2024-01-01T00:00:00Z"});
    let cases = [
        (json!(null).to_string(), "invalid type"),
        ("{\"roles\": [".to_owned(), "EOF"),
        (
            json!({"roles": [], "api_keys": [], "extra": 1}).to_string(),
            "unknown field `extra`",
        ),
        (
            json!({"format": 2, "roles": [], "api_keys": []}).to_string(),
            "unsupported format 2",
        ),
        (
            json!({"roles": [role, role], "api_keys": []}).to_string(),
            "role \"r\" appears twice",
        ),
        (
            json!({"roles": [{"name": "r", "access": [{"database_id": "d", "table": "a.b.c"}],
                           "created_at": "2024-01-01T00:00:00Z",
                           "updated_at": "2024-01-01T00:00:00Z"}],
                "api_keys": []})
            .to_string(),
            "invalid table pattern",
        ),
    ];
    for (contents, expected) in cases {
        std::fs::write(&fx.path, &contents).unwrap();
        match AuthStore::open(&fx.path) {
            Err(StoreError::Corrupt(message)) => {
                assert!(message.contains(expected), "{contents}: {message}");
                assert!(message.contains("auth.json"), "{message}");
            }
            other => panic!("{contents}: {other:?}"),
        }
    }
    std::fs::write(&fx.path, json!({"roles": [], "api_keys": []}).to_string()).unwrap();
    assert!(fx.open().list_roles().is_empty());
}

#[test]
fn deleting_a_role_revokes_its_keys() {
    let fx = Fixture::new();
    let store = fx.open();
    store.create_role(reader(), &accept).unwrap();
    let (view, text) = store.create_key(key_input("reader")).unwrap();
    assert_eq!(store.verify(&text).unwrap().role, "reader");
    store.delete_role("reader").unwrap();
    assert!(store.key(&view.id).is_none());
    assert_eq!(store.verify_fast(&text), Some(Err(KeyError::Unknown)));
    // A role created again under the name does not bring the key back.
    store.create_role(reader(), &accept).unwrap();
    assert_eq!(store.verify(&text), Err(KeyError::Unknown));
    drop(fx.open());
}
