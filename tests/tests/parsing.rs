//! Property tests: whatever text reaches pgproof's parsers — connection strings, sink
//! URLs, codec lists, manifests, object keys, config files — it gets a value or an
//! error, never a panic, and what it accepts is what it promises to accept.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use pgproof_core::ErrorKind;
use pgproof_core::catalog::{self, BackupRef};
use pgproof_core::codec::CodecChain;
use pgproof_core::pg::ConnParams;
use pgproof_core::sink::{SinkExt, validate_key};
use pgproof_sink_fs::FsSink;
use pgproof_sink_object_store::{Location, Service};
use pgproof_tests::{command, pgproof_bin};
use proptest::prelude::*;

fn url_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9+]{0,6}:/{0,3}[a-zA-Z0-9@:._/?&=%-]{0,40}",
        "(postgres|postgresql|s3|gs|file)://[a-zA-Z0-9@:._/?&=%\\[\\]-]{0,40}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn connection_strings_parse_or_fail_without_panicking(url in url_like()) {
        if let Ok(params) = ConnParams::parse_with_env(&url, |_| None) {
            let _ = params.describe();
            let _ = params.child_env();
        }
    }

    #[test]
    fn only_unmistakable_local_paths_become_directories(url in url_like()) {
        if FsSink::from_url(&url).is_ok() {
            prop_assert!(
                url.starts_with("file:///") || url.starts_with('/')
                    || url.starts_with("./") || url.starts_with("../"),
                "{url:?} was taken for a directory"
            );
        }
    }

    #[test]
    fn bucket_urls_parse_or_fail_without_panicking(url in url_like()) {
        for service in [Service::S3, Service::Gcs] {
            let _ = Location::parse(service, &url);
        }
    }

    #[test]
    fn accepted_object_keys_stay_under_the_root(key in "[a-z./\u{0}-]{0,16}") {
        if validate_key(&key).is_ok() {
            prop_assert!(!key.starts_with('/'));
            prop_assert!(key.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
        }
    }

    #[test]
    fn codec_lists_round_trip_or_are_refused(names in prop::collection::vec(
        prop_oneof![Just("gzip".to_owned()), Just("age".to_owned()), "[a-z]{0,5}"], 0..4)) {
        if let Ok(chain) = CodecChain::from_names(&names) {
            prop_assert_eq!(chain.names(), names);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// A manifest with arbitrary bytes, or a real one with a byte changed, loads or is
    /// refused as an integrity failure: never a panic, never another kind.
    #[test]
    fn damaged_manifests_are_integrity_failures(
        junk in prop::collection::vec(any::<u8>(), 0..400),
        flip in any::<usize>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sink = FsSink::new(dir.path());
        let backup = BackupRef { database: "app".into(), backup_id: "20261201T000000.000Z-abcd".parse().unwrap() };
        let mut real = SAMPLE_MANIFEST.as_bytes().to_vec();
        let at = flip % real.len();
        real[at] ^= 0x20;
        for (i, body) in [junk, real].into_iter().enumerate() {
            let key = format!("app/{}-{i}/manifest.json", backup.backup_id);
            runtime.block_on(sink.put_bytes(&key, Bytes::from(body))).unwrap();
            let found = BackupRef { database: "app".into(), backup_id: format!("{}-{i}", backup.backup_id).parse().unwrap() };
            if let Err(e) = runtime.block_on(catalog::load_manifest(&sink, &found)) {
                prop_assert_eq!(e.kind(), ErrorKind::Integrity, "{}", e);
            }
        }
    }
}

/// Config files of arbitrary TOML-ish text: `pgproof config check` exits 0 or 2, never
/// with a panic, and says why in one line.
#[test]
fn config_files_of_any_shape_are_accepted_or_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgproof.toml");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    let strategy = prop::collection::vec(
        prop_oneof![
            Just("[sink]".to_owned()),
            Just("[source]".to_owned()),
            Just("[dump]".to_owned()),
            Just("[encryption]".to_owned()),
            "[a-z_]{1,12} = (\"[a-z:/.]{0,12}\"|[0-9]{1,4}|true|\\[\\]|-1)",
            "[\\[\\]=\"a-z ]{0,20}",
        ],
        0..8,
    );
    runner
        .run(&strategy, |lines| {
            std::fs::write(&config, lines.join("\n")).unwrap();
            let out = command(
                &pgproof_bin(),
                &["--config", config.to_str().unwrap(), "config", "check"],
            )
            .output()
            .unwrap();
            let code = out.status.code();
            let err = String::from_utf8_lossy(&out.stderr);
            prop_assert!(
                matches!(code, Some(0) | Some(2)),
                "exit {code:?} for {lines:?}: {err}"
            );
            prop_assert!(!err.contains("panicked"), "{err}");
            prop_assert!(
                err.lines()
                    .filter(|l| l.starts_with("pgproof: error:"))
                    .count()
                    <= 1,
                "{err}"
            );
            Ok(())
        })
        .unwrap();
}

const SAMPLE_MANIFEST: &str = r#"{
  "manifest_version": 1,
  "backup_id": "20261201T000000.000Z-abcd-1",
  "database": "app",
  "tool": { "name": "pgproof", "version": "0.1.0" },
  "source": { "server_version": "15.18", "server_version_num": 150018, "encoding": "UTF8" },
  "pg_dump_version": "15.18",
  "format": "custom",
  "codecs": ["age"],
  "encryption": null,
  "object": { "key": "app/x/dump.pgc", "raw_bytes": 1, "raw_sha256": "00", "stored_bytes": 1, "stored_sha256": "00" },
  "snapshot_id": "00000003-1",
  "started_at": "2026-12-01T00:00:00Z",
  "finished_at": "2026-12-01T00:00:01Z",
  "duration_ms": 1000,
  "previous": null
}"#;
