//! The upkeep commands on the object stores, not only on a local directory: retention
//! with tombstones, check (with --read-data), status with its textfile, and file sets
//! written back with their modes, on S3 (moto) and Azure (Azurite).

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

use pgproof_core::scratch::EphemeralCluster;
use pgproof_tests::azurite::{self, Azurite};
use pgproof_tests::moto::{ACCESS_KEY, Moto, SECRET_KEY};
use pgproof_tests::{Workspace, connect, create_database, start_cluster, stderr};
use serde_json::Value;

fn json(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Three nights of backups with a file set, then prune, check, status and a file
/// restore, all against the workspace's object-store sink.
async fn upkeep_on(ws: &Workspace, store: &str) {
    let files = ws.dir.path().join("etc");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("app.key"), "secret").unwrap();
    std::fs::set_permissions(
        files.join("app.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&format!(
        "{config}\n[[files]]\nname = \"etc\"\npaths = [\"{}\"]\nsecret = true\n\n[retention]\nkeep_last = 1\n\n[status]\nmax_age = \"26h\"\n",
        files.display()
    ));
    let mut ids = Vec::new();
    for day in 1..=3 {
        let out = ws.pgproof_at(&format!("2026-03-0{day}T01:00:00Z"), &["backup", "--json"]);
        ids.push(json(&out)[0]["backup_id"].as_str().unwrap().to_owned());
    }
    let now = "2026-03-03T02:00:00Z";
    // Retention keeps the newest; the others leave tombstones the chain still checks.
    let plan = json(&ws.pgproof_at(now, &["prune", "--dry-run", "--json"]));
    let deletes = plan["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["action"] == "delete")
        .count();
    assert_eq!(deletes, 2, "{store}: {plan:#}");
    let out = ws.pgproof_at(now, &["prune"]);
    assert!(out.status.success(), "{store}: {}", stderr(&out));
    let listed = json(&ws.pgproof(&["list", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{store}");
    assert_eq!(listed[0]["backup_id"], ids[2].as_str());
    let out = ws.pgproof(&["check", "--read-data", "--json"]);
    let checked = json(&out);
    assert_eq!(checked["pruned"], 2, "{store}: {checked}");
    assert!(
        checked["findings"].as_array().unwrap().is_empty(),
        "{store}: {checked}"
    );
    assert!(checked["bytes_read"].as_u64().unwrap() > 0);
    let out = ws.pgproof(&["verify", "latest"]);
    assert!(out.status.success(), "{store}: {}", stderr(&out));

    // status: fine at 02:00, breached two days on; the textfile says the same.
    let textfile = ws.dir.path().join("pgproof.prom");
    let out = ws.pgproof_at(now, &["status", "--prometheus", textfile.to_str().unwrap()]);
    assert!(out.status.success(), "{store}: {}", stderr(&out));
    let metrics = std::fs::read_to_string(&textfile).unwrap();
    assert!(
        metrics.contains("pgproof_status_breached{database=\"shop\"} 0"),
        "{metrics}"
    );
    let out = ws.pgproof_at(
        "2026-03-05T02:00:00Z",
        &["status", "--prometheus", textfile.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(3), "{store}: {}", stderr(&out));
    assert!(
        std::fs::read_to_string(&textfile)
            .unwrap()
            .contains("pgproof_status_breached{database=\"shop\"} 1")
    );

    // The file set comes back from the store with its mode.
    let back = ws.dir.path().join("back");
    ws.pgproof_ok(&["restore", "latest", "--files", back.to_str().unwrap()]);
    let key = back
        .join("etc")
        .join(files.strip_prefix("/").unwrap())
        .join("app.key");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "secret");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

async fn shop(cluster: &EphemeralCluster) {
    create_database(cluster, "shop").await;
    connect(cluster, "shop")
        .await
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t SELECT generate_series(1, 100)")
        .await
        .unwrap();
}

#[tokio::test]
async fn upkeep_on_s3() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let Some(moto) = Moto::start() else {
        return;
    };
    moto.create_bucket("upkeep");
    shop(&cluster).await;
    let mut ws = Workspace::with_sink(
        &cluster,
        "shop",
        "custom",
        Some(&format!(
            "url = \"s3://upkeep/pg\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\n",
            moto.endpoint()
        )),
    );
    ws.verify_on(&cluster);
    ws.env.push(("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()));
    ws.env
        .push(("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()));
    upkeep_on(&ws, "s3").await;
}

#[tokio::test]
async fn upkeep_on_azure() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let Some(azurite) = Azurite::start() else {
        return;
    };
    azurite.create_container("upkeep");
    shop(&cluster).await;
    let mut ws = Workspace::with_sink(
        &cluster,
        "shop",
        "custom",
        Some(&format!(
            "url = \"az://upkeep/pg\"\naccount = \"{account}\"\nendpoint = \"{endpoint}/{account}\"\nallow_http = true\n",
            account = azurite::ACCOUNT,
            endpoint = azurite.endpoint(),
        )),
    );
    ws.verify_on(&cluster);
    ws.env.push((
        "AZURE_STORAGE_ACCOUNT_KEY".into(),
        azurite::ACCOUNT_KEY.into(),
    ));
    upkeep_on(&ws, "azure").await;
}
