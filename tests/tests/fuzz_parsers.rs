//! Every parser that reads what a sink holds, fed hostile input: signed objects (the
//! signature split, the armor, the SSHSIG inside), manifests, verification records and
//! their names, pins, leases, tombstones, adoptions, certificates and the tar entries
//! of file sets. None may panic; a signed object changed anywhere must be refused.
//!
//! Each parser runs for `PGPROOF_FUZZ_SECONDS` (default 2: a short run in the tests);
//! `scripts/fuzz` runs them for minutes each.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use pgproof_core::catalog::files::FileSetInfo;
use pgproof_core::catalog::trust::Adoption;
use pgproof_core::catalog::{
    Claim, Keyring, Lease, Manifest, Pin, SigningKey, Tombstone, Verification,
};
use pgproof_core::ops::certificate;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

fn budget() -> Duration {
    let secs = std::env::var("PGPROOF_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

/// Runs `test` on values of `strategy` in batches until the time budget is spent;
/// prints how many cases ran (scripts/fuzz shows it).
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let started = Instant::now();
    let mut cases = 0u64;
    while cases == 0 || started.elapsed() < budget() {
        let mut runner = TestRunner::new(Config {
            cases: 256,
            failure_persistence: None,
            ..Config::default()
        });
        if let Err(e) = runner.run(&strategy, &test) {
            panic!("{name}: {e}");
        }
        cases += 256;
    }
    eprintln!(
        "fuzz {name}: {cases} cases in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

fn keys() -> Keyring {
    Keyring::new(Some(SigningKey::generate("fuzz").unwrap()), Vec::new())
}

const MANIFEST_KEY: &str = "app/20261203T000000.000Z-abcd/manifest.json";

/// A small valid manifest payload.
fn manifest_payload() -> String {
    serde_json::json!({
        "manifest_version": 1,
        "backup_id": "20261203T000000.000Z-abcd",
        "database": "app",
        "tool": {"name": "pgproof", "version": "0"},
        "source": {"server_version": "15", "server_version_num": 150000, "encoding": "UTF8"},
        "pg_dump_version": "15",
        "format": "custom",
        "codecs": ["age"],
        "encryption": null,
        "object": {"key": "app/20261203T000000.000Z-abcd/dump.pgc.age", "raw_bytes": 1,
                   "raw_sha256": "00", "stored_bytes": 1, "stored_sha256": "00"},
        "snapshot_id": "00000003-1",
        "started_at": "2026-12-03T00:00:00Z",
        "finished_at": "2026-12-03T00:00:01Z",
        "duration_ms": 1,
        "previous": null,
    })
    .to_string()
        + "\n"
}

#[test]
fn signed_objects_refuse_any_change_and_any_bytes() {
    let keys = keys();
    let signed = keys
        .sign(MANIFEST_KEY, manifest_payload().as_bytes())
        .unwrap();
    assert!(keys.open(MANIFEST_KEY, &signed).is_ok());
    let len = signed.len();
    fuzz(
        "signature: one byte changed",
        (0..len, 1u8..=255),
        |(at, flip)| {
            let mut changed = signed.clone();
            changed[at] ^= flip;
            prop_assert!(
                keys.open(MANIFEST_KEY, &changed).is_err(),
                "accepted a change at {at}"
            );
            Ok(())
        },
    );
    fuzz(
        "signature: cut or extended",
        (0..len, prop::collection::vec(any::<u8>(), 0..64)),
        |(cut, tail)| {
            let mut changed = signed[..cut].to_vec();
            changed.extend_from_slice(&tail);
            if changed != signed {
                prop_assert!(keys.open(MANIFEST_KEY, &changed).is_err());
            }
            Ok(())
        },
    );
    fuzz(
        "signature: any bytes",
        prop::collection::vec(any::<u8>(), 0..2048),
        |bytes| {
            prop_assert!(keys.open(MANIFEST_KEY, &bytes).is_err());
            Ok(())
        },
    );
    // Armor-shaped garbage reaches the SSHSIG decoder.
    fuzz(
        "signature: armored garbage",
        prop::collection::vec(any::<u8>(), 0..512),
        |inner| {
            let stored = format!(
                "{{}}\n-----BEGIN SSH SIGNATURE-----\n{}\n-----END SSH SIGNATURE-----\n",
                base64_lines(&inner)
            );
            prop_assert!(keys.open(MANIFEST_KEY, stored.as_bytes()).is_err());
            Ok(())
        },
    );
}

fn base64_lines(bytes: &[u8]) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    text.as_bytes()
        .chunks(70)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// JSON-ish text: mutations of a valid document, and arbitrary strings.
fn json_inputs(valid: String) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len();
    prop_oneof![
        (0..len, any::<u8>()).prop_map(move |(at, b)| {
            let mut v = valid.clone().into_bytes();
            v[at] = b;
            v
        }),
        prop::collection::vec(any::<u8>(), 0..512),
        "[\\[\\]{}\":,0-9a-z\\-. ]{0,256}".prop_map(String::into_bytes),
    ]
}

#[test]
fn catalog_documents_never_panic_their_readers() {
    let manifest = manifest_payload();
    fuzz("manifest", json_inputs(manifest.clone()), |bytes| {
        if let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) {
            let _ = m.check_identity("app", "20261203T000000.000Z-abcd");
            let _ = m.objects().count();
        }
        Ok(())
    });
    let record = r#"{"verified_at": "2026-12-03T00:00:00Z", "passed": true, "restore_ms": 5}"#;
    fuzz("verification record", json_inputs(record.into()), |bytes| {
        if let Ok(v) = serde_json::from_slice::<Verification>(&bytes) {
            let _ = v.check(jiff::Timestamp::now(), "app/x/verify/y.json");
        }
        Ok(())
    });
    let pin = r#"{"pinned_at": "2026-12-03T00:00:00Z", "until": null, "note": "n"}"#;
    fuzz("pin", json_inputs(pin.into()), |bytes| {
        if let Ok(p) = serde_json::from_slice::<Pin>(&bytes) {
            let _ = (p.check(jiff::Timestamp::now(), "k"), p.describe());
        }
        Ok(())
    });
    let lease = r#"{"holder": "verify", "expires_at": "2026-12-03T00:00:00Z"}"#;
    fuzz("lease", json_inputs(lease.into()), |bytes| {
        if let Ok(l) = serde_json::from_slice::<Lease>(&bytes) {
            let _ = l.check(jiff::Timestamp::now(), "k");
        }
        Ok(())
    });
    let claim = r#"{"database": "app", "backup_id": "x", "generation": 3, "holder": "w", "claimed_at": "2026-12-03T00:00:00Z", "expires_at": "2026-12-03T00:05:00Z", "released": false}"#;
    fuzz("verify claim", json_inputs(claim.into()), |bytes| {
        if let Ok(c) = serde_json::from_slice::<Claim>(&bytes) {
            let now = jiff::Timestamp::now();
            let _ = (c.check("app", "x", 3, now, "k"), c.live(now));
        }
        Ok(())
    });
    let tombstone = r#"{"database": "app", "backup_id": "x", "manifest_sha256": "00", "stored_sha256": "00", "reason": "r", "pruned_at": "2026-12-03T00:00:00Z", "tool_version": "0", "previous": null}"#;
    fuzz("tombstone", json_inputs(tombstone.into()), |bytes| {
        if let Ok(t) = serde_json::from_slice::<Tombstone>(&bytes) {
            let _ = t.check("app", "x", "k");
        }
        Ok(())
    });
    let adoption = r#"{"database": "app", "backup_id": "x", "manifest_sha256": "00", "adopted_at": "2026-12-03T00:00:00Z", "verification": "v"}"#;
    fuzz("adoption", json_inputs(adoption.into()), |bytes| {
        let _ = serde_json::from_slice::<Adoption>(&bytes);
        Ok(())
    });
}

#[test]
fn record_names_parse_back_or_not_at_all() {
    fuzz(
        "record name",
        prop_oneof![
            "[0-9TZ._a-z]{0,60}\\.json",
            "\\PC{0,80}",
            "20[0-9]{6}T[0-9]{6}(\\.[0-9]{1,9})?Z_(passed|failed)(_r[0-9]{1,12})?\\.json",
        ],
        |name| {
            if let Some(v) = Verification::from_record_name(&name) {
                prop_assert_eq!(Verification::from_record_name(&v.record_name()), Some(v));
            }
            Ok(())
        },
    );
}

#[test]
fn certificates_never_panic_and_refuse_any_change() {
    let keys = keys();
    let inner = keys
        .sign(MANIFEST_KEY, manifest_payload().as_bytes())
        .unwrap();
    let manifest = String::from_utf8(inner).unwrap();
    let at = manifest.find("-----BEGIN").unwrap();
    let cert = serde_json::json!({
        "certificate_version": 1,
        "database": "app",
        "issued_at": "2026-12-03T00:00:00Z",
        "backups": [{
            "backup_id": "20261203T000000.000Z-abcd",
            "manifest_sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&manifest.as_bytes()[..at])),
            "manifest": {"key": MANIFEST_KEY, "payload": &manifest[..at], "signature": &manifest[at..],
                         "signer": {"fingerprint": "f", "comment": "c"}},
            "verification": null,
        }],
    })
    .to_string()
        + "\n";
    let signed = keys
        .sign(certificate::CERTIFICATE_NAMESPACE, cert.as_bytes())
        .unwrap();
    certificate::verify(&signed, &keys).unwrap();
    let len = signed.len();
    fuzz(
        "certificate: one byte changed",
        (0..len, 1u8..=255),
        |(at, flip)| {
            let mut changed = signed.clone();
            changed[at] ^= flip;
            prop_assert!(certificate::verify(&changed, &keys).is_err());
            Ok(())
        },
    );
    fuzz(
        "certificate: any payload, validly signed",
        json_inputs(cert.clone()),
        |payload| {
            if let Ok(signed) = keys.sign(certificate::CERTIFICATE_NAMESPACE, &payload) {
                let _ = certificate::verify(&signed, &keys);
            }
            Ok(())
        },
    );
}

#[test]
fn file_set_archives_never_panic_their_reader() {
    let set: FileSetInfo = serde_json::from_value(serde_json::json!({
        "name": "pki", "secret": false, "codecs": [],
        "object": {"key": "app/x/files-pki.tar", "raw_bytes": 0, "raw_sha256": "", "stored_bytes": 0, "stored_sha256": ""},
        "entries": [{"path": "/etc/x", "kind": "file", "mode": 420, "size": 1, "sha256": "00"}],
    }))
    .unwrap();
    // A real archive to mutate.
    let mut archive = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(5);
    header.set_mode(0o4755);
    header.set_cksum();
    archive
        .append_data(&mut header, "etc/x", &b"hello"[..])
        .unwrap();
    let tar = archive.into_inner().unwrap();
    let len = tar.len();
    fuzz(
        "tar entries",
        prop_oneof![
            (0..len, any::<u8>()).prop_map(move |(at, b)| {
                let mut t = tar.clone();
                t[at] = b;
                t
            }),
            prop::collection::vec(any::<u8>(), 0..2048),
        ],
        |bytes| {
            let _ = set.differences(&bytes);
            Ok(())
        },
    );
}
