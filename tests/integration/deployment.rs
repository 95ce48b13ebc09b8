//! The deployment configs are valid: docker-compose.yml parses and is consistent with the repo,
//! and deploy/nginx.conf passes `nginx -t` (scripts/check-deploy.sh).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn compose_file_is_valid_and_consistent() {
    let text =
        std::fs::read_to_string(repo().join("docker-compose.yml")).expect("docker-compose.yml");
    let doc: Value = serde_norway::from_str(&text).expect("valid YAML");
    let services = doc["services"].as_object().expect("services");
    for s in ["postgres", "shapesync", "nginx", "s3"] {
        assert!(services.contains_key(s), "service {s} missing");
    }
    let pg_cmd = services["postgres"]["command"].to_string();
    assert!(
        pg_cmd.contains("wal_level=logical"),
        "postgres must enable logical replication"
    );
    let build = services["shapesync"]["build"]
        .as_str()
        .expect("build context");
    assert!(repo().join(build).join("Dockerfile").exists());
    let env = &services["shapesync"]["environment"];
    for k in ["DATABASE_URL", "SHAPESYNC_SECRET", "SHAPESYNC_ADMIN_KEY"] {
        assert!(env.get(k).is_some(), "shapesync needs {k}");
    }
    // The object store it is pointed at is the compose S3 service, with its bucket made first.
    let store = env["SHAPESYNC_OBJECT_STORE_URL"]
        .as_str()
        .unwrap_or_default();
    let bucket = services["s3-bucket"]["command"].to_string();
    let name = store
        .strip_prefix("s3://")
        .and_then(|r| r.split('/').next());
    assert!(
        name.is_some_and(|b| bucket.contains(&format!("local/{b}"))),
        "{store} vs {bucket}"
    );
    assert_eq!(env["AWS_ENDPOINT_URL"].as_str(), Some("http://s3:9000"));
    assert!(services["shapesync"]["depends_on"]
        .get("s3-bucket")
        .is_some());
    // Every bind mount from the repository exists.
    for (name, svc) in services {
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let spec = v.as_str().unwrap_or_default();
            if let Some(src) = spec.split(':').next().filter(|s| s.starts_with("./")) {
                assert!(repo().join(src).exists(), "{name} mounts missing {src}");
            }
        }
    }
}

#[test]
fn nginx_config_passes_nginx_t() {
    let out = Command::new("bash")
        .arg("scripts/check-deploy.sh")
        .current_dir(repo())
        .output()
        .expect("running scripts/check-deploy.sh");
    assert!(
        out.status.success(),
        "nginx -t failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
