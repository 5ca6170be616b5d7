//! The forged-backup suite: an attacker who can write to the sink and knows every
//! public key (age recipients are in every manifest, the signing key's public half in
//! every reader's config) but holds none of pgproof's secret keys. For each kind of
//! catalog object they forge, every command refuses or flags it (exit 3, naming the
//! object), and nothing is executed, created or deleted because of it.
//!
//! docs/security.md lists each attack with the test that performs it.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};

use pgproof_core::scratch::EphemeralCluster;
use pgproof_tests::{
    Workspace, connect, create_database, pipe_through, split_signed, ssh_keygen_sign,
    start_cluster, stderr,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn sample(cluster: &EphemeralCluster, name: &str) {
    create_database(cluster, name)
        .await
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance numeric);
             INSERT INTO accounts SELECT g, g * 10 FROM generate_series(1, 100) g;",
        )
        .await
        .unwrap();
}

/// A custom-format workspace on `app` (verifying on `cluster`) with two backups.
async fn two_backups(cluster: &EphemeralCluster) -> (Workspace, String, String) {
    sample(cluster, "app").await;
    let ws = Workspace::new(cluster, "app", "custom");
    ws.verify_on(cluster);
    let first = ws.backup()["backup_id"].as_str().unwrap().to_owned();
    let second = ws.backup()["backup_id"].as_str().unwrap().to_owned();
    (ws, first, second)
}

async fn database_exists(cluster: &EphemeralCluster, name: &str) -> bool {
    connect(cluster, "postgres")
        .await
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .is_some()
}

/// `exit 3`, and stderr names `needle` (the forged object).
fn refused(out: &std::process::Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(3), "expected exit 3: {err}");
    assert!(err.contains(needle), "{needle} not named in: {err}");
}

/// Encrypts `plain` to `recipient` with the reference age tool: anyone can.
fn age_encrypt(recipient: &str, plain: &[u8]) -> Vec<u8> {
    pipe_through("age", &["-r", recipient], plain)
}

fn gzip(plain: &[u8]) -> Vec<u8> {
    pipe_through("gzip", &["-c"], plain)
}

/// A backup the attacker builds by hand: `raw` (a plain SQL script) gzipped and
/// encrypted to the real recipient, and a manifest copied from the real head with
/// every size and sha256 recomputed, linked to the head, and a later id so it becomes
/// `latest`. Returns (id, manifest key, manifest payload).
fn forge_plain_backup(ws: &Workspace, head: &Value, raw: &[u8]) -> (String, String, String) {
    let head_id = head["backup_id"].as_str().unwrap();
    let head_key = format!("app/{head_id}/manifest.json");
    let head_stored = std::fs::read_to_string(ws.sink.join(&head_key)).unwrap();
    let (head_payload, _) = split_signed(&head_stored);
    let id = "29991231T235959.000Z-f0e9".to_owned();
    let dir = ws.sink.join("app").join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    let stored = age_encrypt(&ws.public_key, &gzip(raw));
    std::fs::write(dir.join("dump.sql.gz.age"), &stored).unwrap();
    let mut m: Value = serde_json::from_str(head_payload).unwrap();
    m["backup_id"] = Value::from(id.clone());
    m["format"] = Value::from("plain");
    m["codecs"] = serde_json::json!(["gzip", "age"]);
    m["object"] = serde_json::json!({
        "key": format!("app/{id}/dump.sql.gz.age"),
        "raw_bytes": raw.len(),
        "raw_sha256": sha256(raw),
        "stored_bytes": stored.len(),
        "stored_sha256": sha256(&stored),
    });
    m["parts"] = serde_json::json!([]);
    m.as_object_mut().unwrap().remove("sealed");
    m["previous"] = serde_json::json!({
        "backup_id": head_id,
        "manifest_sha256": sha256(head_payload.as_bytes()),
    });
    let key = format!("app/{id}/manifest.json");
    let payload = serde_json::to_string_pretty(&m).unwrap() + "\n";
    (id, key, payload)
}

/// Every file in the sink but the catalog index, which `list` and `status` rewrite
/// as a cache of what they believed.
fn written_but_the_index(ws: &Workspace) -> Vec<String> {
    ws.sink_files()
        .into_iter()
        .filter(|f| f != "app/_index.json")
        .collect()
}

/// The `\!` attack: a plain backup whose script runs a shell command in psql. Forged
/// unsigned, or signed by the attacker's own key, it is refused by every command
/// before any byte reaches psql: nothing runs, no database is created, no record is
/// written.
#[tokio::test]
async fn a_forged_plain_backup_runs_nothing_anywhere() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    sample(&cluster, "app").await;
    let ws = Workspace::new(&cluster, "app", "plain");
    ws.verify_on(&cluster);
    let head = ws.backup();
    let marker = ws.dir.path().join("pwned");
    let script = format!("\\! touch {}\nCREATE TABLE pwned ();\n", marker.display());
    let (id, key, payload) = forge_plain_backup(&ws, &head, script.as_bytes());
    // And a SUPERUSER LOGIN role for restore to create.
    let mut forged: Value = serde_json::from_str(&payload).unwrap();
    forged["roles"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "name": "mallory", "superuser": true, "inherit": true, "createrole": true,
            "createdb": true, "login": true, "replication": true, "bypassrls": true,
            "connection_limit": -1, "member_of": [], "settings": [], "needed": true,
        }));
    let payload = serde_json::to_string_pretty(&forged).unwrap() + "\n";
    let attacker_key = ws.dir.path().join("attacker.key");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&attacker_key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    for (variant, stored, why) in [
        ("unsigned", payload.clone(), "is not signed"),
        (
            "signed by the attacker's key",
            format!(
                "{payload}{}",
                ssh_keygen_sign(&attacker_key, &key, payload.as_bytes())
            ),
            "not a trusted key",
        ),
    ] {
        std::fs::write(ws.sink.join(&key), &stored).unwrap();
        let files_before = written_but_the_index(&ws);

        let out = ws.pgproof(&["verify", "latest"]);
        refused(&out, &key);
        assert!(stderr(&out).contains(why), "{variant}: {}", stderr(&out));
        let out = ws.pgproof(&["restore", "latest", "--target", &cluster.url("victim")]);
        refused(&out, &key);
        let out = ws.pgproof(&["show", &id]);
        refused(&out, &key);
        let out = ws.pgproof(&["list"]);
        refused(&out, &key);
        let out = ws.pgproof(&["check"]);
        assert_eq!(out.status.code(), Some(3), "{variant}: {}", stderr(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(why),
            "{variant}: {}",
            String::from_utf8_lossy(&out.stdout)
        );

        assert!(!marker.exists(), "{variant}: the forged script ran");
        assert!(!database_exists(&cluster, "victim").await, "{variant}");
        let mallory = connect(&cluster, "postgres")
            .await
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = 'mallory'", &[])
            .await
            .unwrap();
        assert!(mallory.is_none(), "{variant}: the forged role was created");
        assert_eq!(
            written_but_the_index(&ws),
            files_before,
            "{variant}: something was written"
        );
        // `list` writes the catalog index, a cache of what it believed: never the forgery.
        let index = std::fs::read_to_string(ws.sink.join("app/_index.json")).unwrap();
        assert!(
            !index.contains(&key),
            "{variant}: the forged manifest is in the catalog index"
        );
    }

    // The next real backup links to the real head, not to the forgery.
    let next = ws.backup();
    assert_eq!(next["previous"]["backup_id"], head["backup_id"]);
    // And verifying it passes: the forgery is no part of its chain.
    ws.pgproof_ok(&["verify", next["backup_id"].as_str().unwrap()]);
    assert!(!marker.exists());
}

/// The same script behind a valid signature (a signing key that leaked): psql runs
/// under `\restrict` with a key the archive cannot know, so the meta-command fails the
/// restore instead of running.
#[tokio::test]
async fn psql_meta_commands_in_a_signed_archive_do_not_run() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    sample(&cluster, "app").await;
    let ws = Workspace::new(&cluster, "app", "plain");
    ws.verify_on(&cluster);
    let head = ws.backup();
    let marker = ws.dir.path().join("pwned-signed");
    for script in [
        format!("\\! touch {}\n", marker.display()),
        // An archive that tries to lift the restriction with a key of its own.
        format!("\\unrestrict guessed\n\\! touch {}\n", marker.display()),
        format!(
            "--\n-- PostgreSQL database dump\n--\n\n\\restrict mine\n\\unrestrict mine\n\\! touch {}\n",
            marker.display()
        ),
    ] {
        let (id, key, payload) = forge_plain_backup(&ws, &head, script.as_bytes());
        std::fs::write(ws.sink.join(&key), "").unwrap();
        ws.edit_signed(&key, |_| payload.clone());
        let out = ws.pgproof(&["restore", &id, "--target", &cluster.url("victim")]);
        assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
        // psql itself refused: the archive reached it, under the restriction.
        let err = stderr(&out);
        assert!(
            err.contains("restricted") || err.contains("\\unrestrict: wrong key"),
            "{err}"
        );
        assert!(!marker.exists(), "a meta-command ran: {script}");
        assert!(!database_exists(&cluster, "victim").await);
        std::fs::remove_dir_all(ws.sink.join("app").join(&id)).unwrap();
    }
}

/// A custom archive whose CHECK constraint runs `COPY … TO PROGRAM` when its rows are
/// restored. The control restore with bare pg_restore shows the archive is live; as a
/// forged pgproof backup it never reaches pg_restore.
#[tokio::test]
async fn a_forged_custom_archive_never_reaches_the_scratch_server() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    sample(&cluster, "app").await;
    let ws = Workspace::new(&cluster, "app", "custom");
    ws.verify_on(&cluster);
    let head = ws.backup();
    let marker = std::env::temp_dir().join(format!("pgproof-pwned-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    create_database(&cluster, "evil")
        .await
        .batch_execute(&format!(
            "CREATE FUNCTION pwn(int) RETURNS bool LANGUAGE plpgsql AS $$
             BEGIN
               IF current_database() <> 'evil' THEN
                 EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch {}''';
               END IF;
               RETURN true;
             END $$;
             CREATE TABLE t (v int CHECK (pwn(v)));
             INSERT INTO t VALUES (1);",
            marker.display()
        ))
        .await
        .unwrap();
    let tools = cluster.tools();
    let archive = ws.dir.path().join("evil.pgc");
    let out = Command::new(tools.dir().join("pg_dump"))
        .args(["-Fc", "-f"])
        .arg(&archive)
        .arg(cluster.url("evil"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let raw = std::fs::read(&archive).unwrap();

    // Control: the archive does what it says when pg_restore gets it.
    create_database(&cluster, "control").await;
    let out = Command::new(tools.dir().join("pg_restore"))
        .args(["-d", &cluster.url("control")])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        marker.exists(),
        "the control restore did not run the program"
    );
    std::fs::remove_file(&marker).unwrap();

    // Forged as the newest backup.
    let head_id = head["backup_id"].as_str().unwrap();
    let head_stored =
        std::fs::read_to_string(ws.sink.join(format!("app/{head_id}/manifest.json"))).unwrap();
    let (head_payload, _) = split_signed(&head_stored);
    let id = "29991231T235959.000Z-c0de";
    std::fs::create_dir_all(ws.sink.join("app").join(id)).unwrap();
    let stored = age_encrypt(&ws.public_key, &raw);
    std::fs::write(ws.sink.join(format!("app/{id}/dump.pgc.age")), &stored).unwrap();
    let mut m: Value = serde_json::from_str(head_payload).unwrap();
    m["backup_id"] = Value::from(id);
    m["codecs"] = serde_json::json!(["age"]);
    m["object"] = serde_json::json!({
        "key": format!("app/{id}/dump.pgc.age"),
        "raw_bytes": raw.len(), "raw_sha256": sha256(&raw),
        "stored_bytes": stored.len(), "stored_sha256": sha256(&stored),
    });
    m.as_object_mut().unwrap().remove("sealed");
    let key = format!("app/{id}/manifest.json");
    std::fs::write(
        ws.sink.join(&key),
        serde_json::to_string_pretty(&m).unwrap(),
    )
    .unwrap();
    refused(&ws.pgproof(&["verify", "latest"]), &key);
    refused(
        &ws.pgproof(&["restore", id, "--target", &cluster.url("victim")]),
        &key,
    );
    assert!(
        !marker.exists(),
        "the forged archive reached the scratch server"
    );
    assert!(!database_exists(&cluster, "victim").await);
}

/// Forged or replayed records, pins, leases, tombstones and locks: flagged by name
/// (exit 3), believed by nothing, and nothing deleted because of them.
#[tokio::test]
async fn forged_catalog_objects_are_flagged_and_never_believed() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let (ws, a, b) = two_backups(&cluster).await;
    ws.pgproof_ok(&["verify", &b]);
    let listed = |ws: &Workspace| -> (Option<i32>, Value, String) {
        let out = ws.pgproof(&["list", "--json"]);
        (
            out.status.code(),
            serde_json::from_slice(&out.stdout).unwrap(),
            stderr(&out),
        )
    };
    let last_verification = |list: &Value, id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e["backup_id"] == id)
            .unwrap()["last_verification"]
            .clone()
    };

    // A 0-byte record named as a pass, dated after the real ones.
    let fake = format!("app/{a}/verify/29990101T000000Z_passed_r1.json");
    std::fs::create_dir_all(ws.sink.join(format!("app/{a}/verify"))).unwrap();
    std::fs::write(ws.sink.join(&fake), "").unwrap();
    let (code, list, err) = listed(&ws);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains(&fake), "{err}");
    assert_eq!(last_verification(&list, &a), Value::Null, "{list:#}");
    std::fs::remove_file(ws.sink.join(&fake)).unwrap();

    // B's real, signed record replayed into A's directory under its own name.
    let record = ws
        .sink_files()
        .into_iter()
        .find(|f| f.starts_with(&format!("app/{b}/verify/")))
        .unwrap();
    let replayed = record.replace(&b, &a);
    std::fs::copy(ws.sink.join(&record), ws.sink.join(&replayed)).unwrap();
    let (code, list, err) = listed(&ws);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("copied from another object"), "{err}");
    assert_eq!(last_verification(&list, &a), Value::Null, "{list:#}");
    assert_eq!(last_verification(&list, &b)["passed"], true, "{list:#}");
    std::fs::remove_file(ws.sink.join(&replayed)).unwrap();

    // A record signed with the real key (a leaked key, a host whose clock runs years
    // ahead) and dated in the future does not become the newest word on A.
    let future = format!("app/{a}/verify/29990101T000000Z_passed_r1.json");
    std::fs::write(ws.sink.join(&future), "").unwrap();
    ws.edit_signed(&future, |_| {
        r#"{"verified_at": "2999-01-01T00:00:00Z", "passed": true, "restore_ms": 1}"#.into()
    });
    let (code, list, err) = listed(&ws);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("in the future"), "{err}");
    assert_eq!(last_verification(&list, &a), Value::Null, "{list:#}");
    std::fs::remove_file(ws.sink.join(&future)).unwrap();

    // A signed lease (leaked key) claiming years is refused, not honoured.
    let long_lease = format!("app/{a}/lease/long.json");
    std::fs::create_dir_all(ws.sink.join(format!("app/{a}/lease"))).unwrap();
    std::fs::write(ws.sink.join(&long_lease), "").unwrap();
    ws.edit_signed(&long_lease, |_| {
        r#"{"holder": "mallory", "expires_at": "2999-01-01T00:00:00Z"}"#.into()
    });
    let (code, _, err) = listed(&ws);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains(&long_lease) && err.contains("in the future"),
        "{err}"
    );
    std::fs::remove_file(ws.sink.join(&long_lease)).unwrap();

    // B's manifest edited and signed again: B's record proved the manifest as it was,
    // so it no longer counts for B.
    let b_key = format!("app/{b}/manifest.json");
    let b_original = std::fs::read(ws.sink.join(&b_key)).unwrap();
    ws.edit_signed(&b_key, |text| {
        text.replacen("\"duration_ms\": ", "\"duration_ms\": 9", 1)
    });
    let (code, list, err) = listed(&ws);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("another manifest"), "{err}");
    assert_eq!(last_verification(&list, &b), Value::Null, "{list:#}");
    std::fs::write(ws.sink.join(&b_key), b_original).unwrap();

    // Objects the gate does not know as catalog objects are read by nothing: a
    // record one folder deeper, a pin without .json, a lease in a subfolder.
    for key in [
        format!("app/{a}/verify/verify/29990101T000000Z_passed_r1.json"),
        format!("app/{a}/pin/forever"),
        format!("app/{a}/lease/x/forever.json"),
    ] {
        std::fs::create_dir_all(ws.sink.join(&key).parent().unwrap()).unwrap();
        std::fs::write(
            ws.sink.join(&key),
            format!(
                r#"{{"verified_at": "{}", "passed": true, "restore_ms": 1, "pinned_at": "2026-01-01T00:00:00Z", "holder": "m", "expires_at": "2999-01-01T00:00:00Z"}}"#,
                jiff::Timestamp::now()
            ),
        )
        .unwrap();
    }
    let (_, list, err) = listed(&ws);
    assert_eq!(last_verification(&list, &a), Value::Null, "{list:#} {err}");
    let a_entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["backup_id"] == a.as_str())
        .unwrap();
    assert_eq!(a_entry["pins"], serde_json::json!([]), "{a_entry:#}");
    for key in ["verify/verify", "lease/x"] {
        std::fs::remove_dir_all(ws.sink.join(format!("app/{a}/{key}"))).unwrap();
    }
    std::fs::remove_file(ws.sink.join(format!("app/{a}/pin/forever"))).unwrap();

    // A forged tombstone for the live B, a pin and a far-future lease on A.
    let forged = [
        (
            format!("app/{b}/tombstone.json"),
            serde_json::json!({"database": "app", "backup_id": b, "manifest_sha256": "00",
                "stored_sha256": "00", "reason": "forged", "pruned_at": "2026-01-01T00:00:00Z",
                "tool_version": "0"}),
        ),
        (
            format!("app/{a}/pin/forged.json"),
            serde_json::json!({"pinned_at": "2026-01-01T00:00:00Z"}),
        ),
        (
            format!("app/{a}/lease/forged.json"),
            serde_json::json!({"holder": "mallory", "expires_at": "2999-01-01T00:00:00Z"}),
        ),
    ];
    for (key, body) in &forged {
        std::fs::create_dir_all(ws.sink.join(key).parent().unwrap()).unwrap();
        std::fs::write(ws.sink.join(key), body.to_string()).unwrap();
    }
    let out = ws.pgproof(&["check", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let found = String::from_utf8_lossy(&out.stdout).to_string();
    for (key, _) in &forged {
        assert!(found.contains(key.as_str()), "{key} not flagged: {found}");
    }
    let out = ws.pgproof(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not trusted"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The forged lease and pin do not hold A; B is not believed pruned.
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&format!("{config}\n[retention]\nkeep_last = 2\n"));
    let out = ws.pgproof(&["prune", "--dry-run", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let decision = |id: &str| {
        plan["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["backup_id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert!(
        !decision(&a).to_string().contains("lease") && !decision(&a).to_string().contains("pinned"),
        "{plan:#}"
    );
    for (key, _) in &forged {
        std::fs::remove_file(ws.sink.join(key)).unwrap();
    }

    // Two forged manifests dated in the future and chained to the head: prune with
    // keep_last = 2 keeps both real backups and deletes nothing.
    let b_payload = {
        let stored =
            std::fs::read_to_string(ws.sink.join(format!("app/{b}/manifest.json"))).unwrap();
        split_signed(&stored).0.to_owned()
    };
    let mut previous = (b.clone(), sha256(b_payload.as_bytes()));
    for id in ["29990101T000000.000Z-aaaa", "29990102T000000.000Z-bbbb"] {
        let mut m: Value = serde_json::from_str(&b_payload).unwrap();
        m["backup_id"] = Value::from(id);
        m["previous"] = serde_json::json!({"backup_id": previous.0, "manifest_sha256": previous.1});
        let text = serde_json::to_string_pretty(&m).unwrap() + "\n";
        std::fs::create_dir_all(ws.sink.join(format!("app/{id}"))).unwrap();
        std::fs::write(ws.sink.join(format!("app/{id}/manifest.json")), &text).unwrap();
        previous = (id.to_owned(), sha256(text.as_bytes()));
    }
    let before = ws.sink_files();
    let out = ws.pgproof(&["prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ws.sink_files(), before, "prune deleted something");

    // A commit lock that claims to be held for years does not block the next backup.
    std::fs::write(
        ws.sink.join("app/_commit.lock"),
        r#"{"owner": "mallory", "expires_at": "2999-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let next = ws.backup();
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(next["previous"]["backup_id"], b.as_str(), "{next:#}");
}

/// A manifest swapped into another backup's place, a signature stripped (a downgrade
/// to unsigned), and a manifest signed with the real key whose objects lie in another
/// backup's directory: each refused with exit 3, and `copy` deletes nothing at the
/// destination.
#[tokio::test]
async fn swapped_stripped_and_straying_manifests_are_refused() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let (ws, a, b) = two_backups(&cluster).await;
    let key_a = format!("app/{a}/manifest.json");
    let key_b = format!("app/{b}/manifest.json");
    let stored_a = std::fs::read_to_string(ws.sink.join(&key_a)).unwrap();
    let stored_b = std::fs::read_to_string(ws.sink.join(&key_b)).unwrap();

    // A's signed manifest in B's place.
    std::fs::write(ws.sink.join(&key_b), &stored_a).unwrap();
    let out = ws.pgproof(&["verify", &b]);
    refused(&out, &key_b);
    assert!(
        stderr(&out).contains("copied from another object"),
        "{}",
        stderr(&out)
    );

    // B's manifest with its signature stripped.
    std::fs::write(ws.sink.join(&key_b), split_signed(&stored_b).0).unwrap();
    let out = ws.pgproof(&["verify", &b]);
    refused(&out, &key_b);
    assert!(stderr(&out).contains("is not signed"), "{}", stderr(&out));
    std::fs::write(ws.sink.join(&key_b), &stored_b).unwrap();

    // Copy both to a replica, then a manifest signed with the real key names A's dump
    // as its own: copy refuses it and A's dump stays in the replica.
    let replica = ws.dir.path().join("replica");
    let to = format!("file://{}", replica.display());
    // A forged record does not stop the copy, and is not copied.
    let forged_record = format!("app/{a}/verify/29990101T000000Z_passed_r1.json");
    std::fs::create_dir_all(ws.sink.join(format!("app/{a}/verify"))).unwrap();
    std::fs::write(ws.sink.join(&forged_record), "{}").unwrap();
    ws.pgproof_ok(&["copy", "--to", &to]);
    assert!(!replica.join(&forged_record).exists());
    std::fs::remove_file(ws.sink.join(&forged_record)).unwrap();
    let dump_a = split_signed(&stored_a).0.to_owned();
    let a_object: Value = serde_json::from_str(&dump_a).unwrap();
    let a_dump_key = a_object["object"]["key"].as_str().unwrap().to_owned();
    let c = "29990101T000000.000Z-cccc";
    let key_c = format!("app/{c}/manifest.json");
    std::fs::create_dir_all(ws.sink.join(format!("app/{c}"))).unwrap();
    std::fs::write(ws.sink.join(&key_c), "").unwrap();
    ws.edit_signed(&key_c, |_| {
        let mut m: Value = serde_json::from_str(&dump_a).unwrap();
        m["backup_id"] = Value::from(c);
        let mut object = m["object"].clone();
        object["stored_sha256"] = Value::from("00");
        m["object"] = object;
        serde_json::to_string_pretty(&m).unwrap()
    });
    let out = ws.pgproof(&["copy", "--to", &to]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("outside its own backup"),
        "{}",
        stderr(&out)
    );
    assert!(
        replica.join(&a_dump_key).is_file(),
        "copy deleted {a_dump_key}"
    );
    let out = ws.pgproof(&["verify", c]);
    refused(&out, &key_c);
}

/// pgproof's signatures verify with the reference tool, `ssh-keygen -Y verify`,
/// exactly as docs/security.md tells an auditor to run it; a changed byte or another
/// object's name does not.
#[tokio::test]
async fn ssh_keygen_verifies_what_pgproof_signs() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    sample(&cluster, "app").await;
    let ws = Workspace::new(&cluster, "app", "custom");
    let id = ws.backup()["backup_id"].as_str().unwrap().to_owned();
    let key = format!("app/{id}/manifest.json");
    let stored = std::fs::read_to_string(ws.sink.join(&key)).unwrap();
    let (payload, signature) = split_signed(&stored);
    let dir = ws.dir.path();
    std::fs::write(
        dir.join("allowed_signers"),
        format!("pgproof {}\n", ws.signing_public),
    )
    .unwrap();
    std::fs::write(dir.join("manifest.sig"), signature).unwrap();
    let verify = |namespace: &str, data: &[u8]| {
        use std::io::Write;
        let mut child = Command::new("ssh-keygen")
            .args(["-Y", "verify", "-f"])
            .arg(dir.join("allowed_signers"))
            .args(["-I", "pgproof", "-n", namespace, "-s"])
            .arg(dir.join("manifest.sig"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(data).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (ok, said) = verify(&key, payload.as_bytes());
    assert!(ok, "ssh-keygen refused pgproof's signature: {said}");
    assert!(said.contains("Good \""), "{said}");
    let mut changed = payload.as_bytes().to_vec();
    changed[10] ^= 1;
    assert!(!verify(&key, &changed).0, "a changed byte verified");
    assert!(
        !verify(&format!("app/{id}/tombstone.json"), payload.as_bytes()).0,
        "another object's name verified"
    );
    // The sed recipe of docs/security.md splits the object the same way.
    let out = Command::new("sed")
        .arg("/^-----BEGIN SSH SIGNATURE-----$/,$d")
        .arg(ws.sink.join(&key))
        .output()
        .unwrap();
    assert_eq!(out.stdout, payload.as_bytes());
}

/// A backup taken before signing (its manifest unsigned) is flagged until it is
/// adopted explicitly: `verify --adopt` proves it and signs an adoption of exactly
/// those bytes; an edit after that makes it untrusted again.
#[tokio::test]
async fn unsigned_backups_are_adopted_only_explicitly() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    sample(&cluster, "app").await;
    let ws = Workspace::new(&cluster, "app", "custom");
    ws.verify_on(&cluster);
    let id = ws.backup()["backup_id"].as_str().unwrap().to_owned();
    let key = format!("app/{id}/manifest.json");
    let stored = std::fs::read_to_string(ws.sink.join(&key)).unwrap();
    let unsigned = split_signed(&stored).0.to_owned();
    std::fs::write(ws.sink.join(&key), &unsigned).unwrap();

    refused(&ws.pgproof(&["list"]), &key);
    refused(&ws.pgproof(&["verify", &id]), &key);
    // A forged (unsigned) adoption naming exactly these bytes vouches for nothing.
    let adoption = format!("app/{id}/adopted.json");
    std::fs::write(
        ws.sink.join(&adoption),
        serde_json::json!({"database": "app", "backup_id": id,
            "manifest_sha256": hex::encode(Sha256::digest(unsigned.as_bytes())),
            "adopted_at": "2026-01-01T00:00:00Z", "verification": "forged"})
        .to_string(),
    )
    .unwrap();
    refused(&ws.pgproof(&["list"]), &adoption);
    std::fs::remove_file(ws.sink.join(&adoption)).unwrap();
    // Adoption is one named backup at a time, never --all.
    assert_eq!(
        ws.pgproof(&["verify", "--all", "--adopt"]).status.code(),
        Some(2)
    );

    let out = ws.pgproof(&["verify", &id, "--adopt"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("adopted"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(ws.sink.join(format!("app/{id}/adopted.json")).is_file());
    ws.pgproof_ok(&["list"]);
    ws.pgproof_ok(&["verify", &id]);
    // The next backup links to the adopted one.
    let next = ws.backup();
    assert_eq!(next["previous"]["backup_id"], id.as_str());

    std::fs::write(
        ws.sink.join(&key),
        unsigned.replacen("\"duration_ms\": ", "\"duration_ms\": 9", 1),
    )
    .unwrap();
    let out = ws.pgproof(&["verify", &id]);
    refused(&out, &key);
    assert!(stderr(&out).contains("not the one"), "{}", stderr(&out));
}

/// Roles with SUPERUSER, REPLICATION or BYPASSRLS come from a manifest: they are
/// created only with an explicit flag on restore, and by verify only in its own
/// ephemeral cluster; on a shared scratch server such a backup is an error of the
/// environment (exit 2), never a created role and never a verdict.
#[tokio::test]
async fn privileged_roles_are_created_only_when_allowed() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let Some(target) = start_cluster() else {
        return;
    };
    let client = create_database(&cluster, "owned").await;
    client
        .batch_execute(
            "CREATE ROLE admin_su SUPERUSER LOGIN;
             CREATE TABLE t (v int); INSERT INTO t VALUES (1);
             ALTER TABLE t OWNER TO admin_su;",
        )
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "owned", "custom");
    ws.backup();
    let role_on_target = || async {
        connect(&target, "postgres")
            .await
            .query_opt(
                "SELECT rolsuper FROM pg_roles WHERE rolname = 'admin_su'",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, bool>(0))
    };

    let out = ws.pgproof(&[
        "restore",
        "latest",
        "--target",
        &target.url("copy"),
        "--create-roles",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("admin_su") && stderr(&out).contains("SUPERUSER"),
        "{}",
        stderr(&out)
    );
    assert_eq!(role_on_target().await, None);
    assert!(!database_exists(&target, "copy").await);

    // verify on a shared scratch server: refused as an error, nothing recorded.
    ws.verify_on(&target);
    let records = ws.sink_files().len();
    let out = ws.pgproof(&["verify", "latest"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(role_on_target().await, None);
    assert_eq!(ws.sink_files().len(), records, "a verdict was recorded");

    // verify in its own ephemeral cluster: the role is created there, and it passes.
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&config.replace(
        &format!("\n[verify]\nscratch_url = \"{}\"\n", target.url("postgres")),
        "\n",
    ));
    ws.pgproof_ok(&["verify", "latest"]);

    // With the explicit flag, restore creates it.
    ws.pgproof_ok(&[
        "restore",
        "latest",
        "--target",
        &target.url("copy"),
        "--create-roles",
        "--create-privileged-roles",
    ]);
    assert_eq!(role_on_target().await, Some(true));
}

/// A proof certificate verifies offline after the sink is gone, with pgproof and with
/// ssh-keygen; one changed byte, or a key the auditor does not trust, fails it. A
/// period bundle covers every backup since a date.
#[tokio::test]
async fn certificates_verify_offline_and_reveal_any_change() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let (ws, first, second) = two_backups(&cluster).await;
    ws.pgproof_ok(&["verify", &second]);
    let cert = ws.dir.path().join("cert.json");
    ws.pgproof_ok(&["certificate", &second, "--out", cert.to_str().unwrap()]);
    let bundle = ws.dir.path().join("bundle.json");
    let since = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string();
    ws.pgproof_ok(&[
        "certificate",
        "--database",
        "app",
        "--since",
        &since,
        "--out",
        bundle.to_str().unwrap(),
    ]);
    std::fs::remove_dir_all(&ws.sink).unwrap();

    let check = |file: &std::path::Path, key: &str| {
        Command::new(pgproof_tests::pgproof_bin())
            .args(["certificate", "verify"])
            .arg(file)
            .args(["--key", key, "--json"])
            .output()
            .unwrap()
    };
    let out = check(&cert, &ws.signing_public);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["valid"], true);
    assert_eq!(shown["backups"][0]["backup_id"], second.as_str());
    assert_eq!(shown["backups"][0]["verified"]["passed"], true, "{shown:#}");
    assert!(
        shown["backups"][0]["verified"]["restore_ms"].is_u64(),
        "{shown:#}"
    );
    assert_eq!(shown["backups"][0]["tables"], 1, "{shown:#}");
    // Who proved it: the verifying host's key, in the signature and in the record.
    let verifier = shown["backups"][0]["verified_by"]["fingerprint"].clone();
    assert!(
        verifier.as_str().unwrap_or("").starts_with("SHA256:"),
        "{shown:#}"
    );
    assert_eq!(
        shown["backups"][0]["verified"]["verified_by"], verifier,
        "{shown:#}"
    );

    let out = check(&bundle, &ws.signing_public);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = shown["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [first.as_str(), second.as_str()]);
    assert_eq!(shown["backups"][0]["verified"], Value::Null, "{shown:#}");

    // Any byte changed: refused (exit 3).
    let original = std::fs::read(&cert).unwrap();
    let text = String::from_utf8(original.clone()).unwrap();
    // One character of the stated manifest sha256 changed.
    let at = text.find("\"manifest_sha256\": \"").unwrap() + 20;
    let mut forged = text.clone().into_bytes();
    forged[at] = if forged[at] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).unwrap();
    let tampered = ws.dir.path().join("tampered.json");
    std::fs::write(&tampered, forged.as_bytes()).unwrap();
    let out = check(&tampered, &ws.signing_public);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let mut flipped = original.clone();
    flipped[200] ^= 1;
    std::fs::write(&tampered, &flipped).unwrap();
    assert_eq!(check(&tampered, &ws.signing_public).status.code(), Some(3));

    // A key the auditor does not trust.
    let stranger = ws.dir.path().join("stranger.key");
    let out = Command::new(pgproof_tests::pgproof_bin())
        .args(["keygen", "--signing", "-o"])
        .arg(&stranger)
        .output()
        .unwrap();
    let stranger_public = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let out = check(&cert, &stranger_public);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a trusted key"),
        "{}",
        stderr(&out)
    );

    // The reference tool checks the certificate's own signature.
    let (payload, signature) = split_signed(&text);
    let dir = ws.dir.path();
    std::fs::write(
        dir.join("allowed"),
        format!("auditor {}\n", ws.signing_public),
    )
    .unwrap();
    std::fs::write(dir.join("cert.sig"), signature).unwrap();
    let mut child = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f"])
        .arg(dir.join("allowed"))
        .args(["-I", "auditor", "-n", "pgproof-certificate", "-s"])
        .arg(dir.join("cert.sig"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(payload.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The dump object of a genuine, signed backup replaced by SQL the attacker encrypted
/// to the public recipient: the object is checked, chunk by chunk against the signed
/// manifest, before any byte reaches psql, so its `COPY … TO PROGRAM` never runs
/// (the control shows it would have, fed to psql as it was before the check).
#[tokio::test]
async fn a_swapped_dump_object_never_reaches_the_restore_program() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    sample(&cluster, "app").await;
    let ws = Workspace::new(&cluster, "app", "plain");
    ws.verify_on(&cluster);
    let manifest = ws.backup();
    let marker = std::env::temp_dir().join(format!("pgproof-swapped-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    // The program first, then enough more that psql runs it while the rest still
    // streams in (checked only at the end, the swap would have run).
    let script = format!(
        "COPY (SELECT 1) TO PROGRAM 'touch {}';\n{}SELECT 1/0;\n",
        marker.display(),
        "-- padding that keeps psql reading\n".repeat(300_000)
    );
    let key = manifest["object"]["key"].as_str().unwrap();
    std::fs::write(
        ws.sink.join(key),
        age_encrypt(&ws.public_key, &gzip(script.as_bytes())),
    )
    .unwrap();

    // Control: the same script through psql does run the program.
    let out = Command::new(cluster.tools().dir().join("psql"))
        .args(["-X", "-q", "-d", &cluster.url("app"), "-c"])
        .arg(script.lines().next().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(marker.exists(), "the control did not run the program");
    std::fs::remove_file(&marker).unwrap();

    let out = ws.pgproof(&["restore", "latest", "--target", &cluster.url("victim")]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains(key), "{}", stderr(&out));
    let out = ws.pgproof(&["verify", "latest"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        !marker.exists(),
        "a byte of the swapped object reached psql"
    );
    assert!(!database_exists(&cluster, "victim").await);
}
