//! The catalog index (`<db>/_index.json`) is a cache: whatever it holds — stale,
//! damaged, forged, missing, too large — `list --json` and `status --json` print what
//! they print without one, with the same exit code. On a local directory and on S3
//! (moto), each index is planted before each command and the output compared with a
//! run that found no index at all.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use pgproof_core::scratch::EphemeralCluster;
use pgproof_core::sink::SinkExt;
use pgproof_core::{ErrorKind, Sink};
use pgproof_sink_fs::FsSink;
use pgproof_tests::moto::{ACCESS_KEY, Moto, SECRET_KEY};
use pgproof_tests::{
    Workspace, create_sample_database, split_signed, ssh_keygen_sign, start_cluster, stderr,
};
use serde_json::Value;

const INDEX: &str = "app/_index.json";
/// The clock every command runs at, so that ages compare.
const NOW: &str = "2099-01-01T00:00:00Z";
const BUCKET: &str = "pgproof-index";
const PREFIX: &str = "prod/pg";

/// What a command printed on stdout and its exit code.
type Outcome = (String, Option<i32>);

/// A workspace and the sink beneath pgproof's, to plant objects in as an attacker
/// with write access would.
struct Setup {
    ws: Workspace,
    raw: Arc<dyn Sink>,
}

impl Setup {
    fn run(&self, args: &[&str]) -> Outcome {
        let out = self.ws.pgproof_at(NOW, args);
        (String::from_utf8(out.stdout).unwrap(), out.status.code())
    }

    /// `args` with no index in the sink (one may be written meanwhile).
    async fn without_index(&self, args: &[&str]) -> Outcome {
        self.remove_index().await;
        self.run(args)
    }

    async fn remove_index(&self) {
        match self.raw.delete(INDEX).await {
            Err(e) if e.kind() != ErrorKind::NotFound => panic!("delete the index: {e}"),
            _ => {}
        }
    }

    async fn stored_index(&self) -> Vec<u8> {
        self.raw.get_bytes(INDEX, 256 << 20).await.unwrap()
    }

    async fn plant(&self, stored: &[u8]) {
        self.remove_index().await;
        self.raw
            .put_bytes(INDEX, Bytes::copy_from_slice(stored))
            .await
            .unwrap();
    }

    /// `list --json` and `status --json`, each run once with no index and once with
    /// `stored` planted as the index just before it: the same each time.
    async fn same_as_without_index(&self, what: &str, stored: &[u8]) {
        for args in [&["list", "--json"][..], &["status", "--json"]] {
            let expected = self.without_index(args).await;
            self.plant(stored).await;
            let got = self.run(args);
            assert_eq!(
                got, expected,
                "{what}: {args:?} differs from a run without index"
            );
        }
    }

    /// How many objects a `list` took from the index and how many it read, as its
    /// debug log says.
    fn taken_and_read(&self) -> (usize, usize) {
        let out = self.ws.pgproof_at(NOW, &["-v", "list", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let err = stderr(&out);
        let line = err
            .lines()
            .find(|l| l.contains("catalog objects taken from the catalog index"))
            .unwrap_or_else(|| panic!("no index line in: {err}"));
        let field = |name: &str| -> usize {
            let at = line.find(&format!(" {name}=")).unwrap() + name.len() + 2;
            line[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        (field("from_index"), field("read"))
    }

    /// The index payload as JSON, and its signature.
    async fn index_json(&self) -> Value {
        let stored = String::from_utf8(self.stored_index().await).unwrap();
        serde_json::from_str(split_signed(&stored).0).unwrap()
    }

    /// `payload` signed as pgproof signs, by `key` for `namespace`.
    fn signed(key: &std::path::Path, namespace: &str, payload: &Value) -> Vec<u8> {
        let text = serde_json::to_string(payload).unwrap() + "\n";
        let signature = ssh_keygen_sign(key, namespace, text.as_bytes());
        format!("{text}{signature}").into_bytes()
    }
}

async fn backups_and_a_verification(cluster: &EphemeralCluster, setup: &Setup) -> Vec<String> {
    setup.ws.verify_on(cluster);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(setup.ws.backup()["backup_id"].as_str().unwrap().to_owned());
    }
    let out = setup.ws.pgproof(&["verify", &ids[1]]);
    assert!(out.status.success(), "verify: {}", stderr(&out));
    let out = setup.ws.pgproof(&["pin", &ids[0], "--note", "audit"]);
    assert!(out.status.success(), "pin: {}", stderr(&out));
    ids
}

/// Every case, on one sink.
async fn an_index_changes_nothing_but_speed(cluster: &EphemeralCluster, setup: &Setup) {
    let ids = backups_and_a_verification(cluster, setup).await;

    // The first list writes the index; the next takes every object from it.
    let expected = setup.without_index(&["list", "--json"]).await;
    assert_eq!(expected.1, Some(0));
    let listed: Vec<Value> = serde_json::from_str(&expected.0).unwrap();
    assert_eq!(listed.len(), 3, "{}", expected.0);
    let (taken, read) = setup.taken_and_read();
    assert!(taken >= 5 && read == 0, "taken {taken}, read {read}");
    let current = setup.stored_index().await;
    setup
        .same_as_without_index("a current index", &current)
        .await;

    // (d) missing: read directly, and written again.
    setup.remove_index().await;
    let (taken, read) = setup.taken_and_read();
    assert_eq!(taken, 0);
    assert!(read >= 5, "read {read}");
    assert!(!setup.stored_index().await.is_empty(), "not written again");

    // (a) stale: a backup taken after the index was written, the index kept as it was.
    let stale = setup.stored_index().await;
    let newest = setup.ws.backup()["backup_id"].as_str().unwrap().to_owned();
    setup.same_as_without_index("a stale index", &stale).await;
    let (list, _) = setup.run(&["list", "--json"]);
    assert!(list.contains(&newest), "{list}");
    // A stale index is replaced by the command that found it stale.
    setup.plant(&stale).await;
    setup.run(&["status", "--json"]);
    assert_ne!(
        setup.stored_index().await,
        stale,
        "the stale index was kept"
    );
    let (_, read) = setup.taken_and_read();
    assert_eq!(read, 0, "the refreshed index does not cover everything");

    // … and one that covers a backup deleted since: not listed.
    let covering = setup.stored_index().await;
    let gone = setup
        .raw
        .get_bytes(&format!("app/{newest}/manifest.json"), 1 << 20)
        .await
        .unwrap();
    setup
        .raw
        .delete(&format!("app/{newest}/manifest.json"))
        .await
        .unwrap();
    setup
        .same_as_without_index("an index covering a deleted manifest", &covering)
        .await;
    let (list, _) = setup.run(&["list", "--json"]);
    assert!(!list.contains(&newest), "{list}");
    setup
        .raw
        .put_bytes(&format!("app/{newest}/manifest.json"), gone.into())
        .await
        .unwrap();

    // (b) damaged bytes: one flipped, cut short, empty.
    let good = setup.stored_index().await;
    let mut flipped = good.clone();
    let middle = flipped.len() / 3;
    flipped[middle] ^= 0x01;
    setup
        .same_as_without_index("a flipped byte", &flipped)
        .await;
    setup
        .same_as_without_index("a cut index", &good[..good.len() / 2])
        .await;
    setup.same_as_without_index("an empty index", b"").await;

    // (c) forged: unsigned, signed by another key, a signature made for another key.
    // Each carries the genuine entries with the verified backup's record turned into
    // a failure: believed, it would change what list shows.
    let payload = setup.index_json().await;
    let record_prefix = format!("app/{}/verify/", ids[1]);
    let mut edited = payload.clone();
    for entry in edited["entries"].as_array_mut().unwrap() {
        if entry["key"].as_str().unwrap().starts_with(&record_prefix) {
            let r = entry["payload"].as_str().unwrap().replace("true", "false");
            entry["payload"] = Value::from(r);
        }
    }
    let unsigned = serde_json::to_string(&edited).unwrap() + "\n";
    setup
        .same_as_without_index("an unsigned index", unsigned.as_bytes())
        .await;
    let attacker = setup.ws.dir.path().join("attacker.key");
    if !attacker.exists() {
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&attacker)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    setup
        .same_as_without_index(
            "an index signed by a key not trusted",
            &Setup::signed(&attacker, INDEX, &edited),
        )
        .await;
    setup
        .same_as_without_index(
            "an index signature made for another object",
            &Setup::signed(&setup.ws.signing_key, "app/_commit.lock", &edited),
        )
        .await;

    // Signed by the trusted key, yet its entries do not cover what is listed: a
    // manifest edited (older, another format) under another identity, a record made a
    // failure under the right identity but signed by a key not trusted, a backup that
    // does not exist, and the index of another database. None is believed.
    let manifest_key = format!("app/{}/manifest.json", ids[1]);
    let mut forged = payload.clone();
    let mut invented = None;
    for entry in forged["entries"].as_array_mut().unwrap() {
        let key = entry["key"].as_str().unwrap().to_owned();
        if key == manifest_key {
            let mut m: Value = serde_json::from_str(entry["payload"].as_str().unwrap()).unwrap();
            m["started_at"] = Value::from("2001-01-01T00:00:00Z");
            m["format"] = Value::from("plain");
            let mut fake = entry.clone();
            fake["key"] = Value::from("app/20010101T000000Z-beef/manifest.json");
            m["backup_id"] = Value::from("20010101T000000Z-beef");
            fake["payload"] = Value::from(serde_json::to_string_pretty(&m).unwrap() + "\n");
            invented = Some(fake);
            m["backup_id"] = Value::from(ids[1].as_str());
            entry["payload"] = Value::from(serde_json::to_string_pretty(&m).unwrap() + "\n");
            entry["identity"] = Value::from("forged");
        } else if key.starts_with(&record_prefix) {
            let r = entry["payload"].as_str().unwrap().replace("true", "false");
            entry["payload"] = Value::from(r);
            entry["signer"] = Value::from("SHA256:not-a-trusted-key");
        }
    }
    forged["entries"]
        .as_array_mut()
        .unwrap()
        .push(invented.expect("the index covers the verified backup's manifest"));
    let forged = Setup::signed(&setup.ws.signing_key, INDEX, &forged);
    setup
        .same_as_without_index("entries that do not match the listing", &forged)
        .await;
    let (list, _) = setup.run(&["list", "--json"]);
    assert!(!list.contains("20010101T000000Z-beef"), "{list}");
    let mut other = edited.clone();
    other["database"] = Value::from("billing");
    setup
        .same_as_without_index(
            "another database's index",
            &Setup::signed(&setup.ws.signing_key, INDEX, &other),
        )
        .await;

    // After all that, a list leaves an index that covers everything again.
    setup.plant(&forged).await;
    setup.run(&["list", "--json"]);
    let (_, read) = setup.taken_and_read();
    assert_eq!(read, 0, "the forged index was not replaced");
}

#[tokio::test]
async fn an_index_on_a_local_directory_changes_nothing_but_speed() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    let ws = Workspace::new(&cluster, "app", "custom");
    let raw: Arc<dyn Sink> = Arc::new(FsSink::new(&ws.sink));
    let setup = Setup { ws, raw };
    an_index_changes_nothing_but_speed(&cluster, &setup).await;

    // Larger than pgproof reads (a sparse file): refused unread, with a message.
    let expected = setup.without_index(&["list", "--json"]).await;
    setup.remove_index().await;
    std::fs::File::create(setup.ws.sink.join(INDEX))
        .unwrap()
        .set_len((256 << 20) + 1)
        .unwrap();
    let out = setup.ws.pgproof_at(NOW, &["list", "--json"]);
    assert_eq!(
        (
            String::from_utf8(out.stdout.clone()).unwrap(),
            out.status.code()
        ),
        expected
    );
    assert!(stderr(&out).contains("256 MiB"), "{}", stderr(&out));
    assert!(
        std::fs::metadata(setup.ws.sink.join(INDEX)).unwrap().len() < 1 << 20,
        "the oversized index was not replaced"
    );

    // An index planted for a database that has no backup covers nothing: it is not
    // read at all (each would cost a download before any signature check).
    let ghost = setup.ws.sink.join("ghost");
    std::fs::create_dir_all(&ghost).unwrap();
    std::fs::File::create(ghost.join("_index.json"))
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    let out = setup.ws.pgproof_at(NOW, &["list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("ghost"), "{}", stderr(&out));
    std::fs::remove_dir_all(&ghost).unwrap();
}

#[tokio::test]
async fn an_index_on_s3_changes_nothing_but_speed() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket(BUCKET);
    create_sample_database(&cluster, "app").await;
    let section = format!(
        "url = \"s3://{BUCKET}/{PREFIX}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\nmax_retries = 2\nretry_timeout_secs = 3\n",
        moto.endpoint()
    );
    let mut ws = Workspace::with_sink(&cluster, "app", "custom", Some(&section));
    ws.env.push(("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()));
    ws.env
        .push(("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()));
    let raw: Arc<dyn Sink> = Arc::new(moto.sink(BUCKET, PREFIX, 5, 2));
    let setup = Setup { ws, raw };
    an_index_changes_nothing_but_speed(&cluster, &setup).await;
}
