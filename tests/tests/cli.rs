//! The CLI's configuration layering, secret handling and key generation.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

use pgproof_tests::{
    Workspace, command, create_sample_database, pgproof_bin, run, start_cluster, stderr,
};

fn config_check(
    config: &std::path::Path,
    env: &[(&str, &str)],
    flags: &[&str],
) -> (i32, serde_json::Value, String) {
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["config", "check", "--json"]);
    let out = command(&pgproof_bin(), &args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), json, stderr(&out))
}

/// A new signing key's public line (the key itself is thrown away: a reader's
/// config holds public keys only).
fn signing_public(dir: &std::path::Path) -> String {
    let path = dir.join(format!("signing-{}.key", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let out = run(
        &pgproof_bin(),
        &["keygen", "--signing", "-o", path.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn layers_apply_in_order_file_env_flags() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    let out = run(&pgproof_bin(), &["keygen", "-o", key.to_str().unwrap()]);
    let public = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let trusted = signing_public(dir.path());
    let config = dir.path().join("pgproof.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"postgres://app:s3cret@db.example/app\"\n[dump]\nformat = \"custom\"\ngzip_level = 3\n[encryption]\nrecipients = [\"{public}\"]\n[trust]\nkeys = [\"{trusted}\"]\n[sink]\nurl = \"file:///from/file\"\n[verify]\nscratch_url = \"postgres://postgres:scratchpw@scratch/postgres\"\n"
        ),
    )
    .unwrap();

    let (code, json, err) = config_check(&config, &[], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json["config"]["sink"]["url"], "file:///from/file");
    // Trusted keys are shown by fingerprint, as ssh-keygen -l shows them.
    let fingerprint = json["trusted_keys"][0]["fingerprint"]
        .as_str()
        .unwrap_or_default();
    assert!(fingerprint.starts_with("SHA256:"), "{json}");
    assert_eq!(json["signing_key"], serde_json::Value::Null, "{json}");
    assert_eq!(json["config"]["dump"]["gzip_level"], 3);
    assert_eq!(
        json["config"]["source"]["url"],
        "postgres://app:****@db.example/app"
    );
    assert!(
        !json.to_string().contains("s3cret") && !json.to_string().contains("scratchpw"),
        "password shown: {json}"
    );

    let env = [
        ("PGPROOF_SINK__URL", "file:///from/env"),
        ("PGPROOF_DUMP__GZIP_LEVEL", "9"),
    ];
    let (_, json, _) = config_check(&config, &env, &[]);
    assert_eq!(json["config"]["sink"]["url"], "file:///from/env");
    assert_eq!(json["config"]["dump"]["gzip_level"], 9);

    let (_, json, _) = config_check(&config, &env, &["--sink", "file:///from/flag"]);
    assert_eq!(json["config"]["sink"]["url"], "file:///from/flag");

    // A misspelt environment key is an error naming it, not silently ignored.
    let (code, _, err) = config_check(&config, &[("PGPROOF_SINK__URI", "file:///x")], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("uri"), "{err}");
}

#[test]
fn config_check_reports_problems_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgproof.toml");
    std::fs::write(
        &config,
        "[encryption]\nidentity_file = \"/nonexistent/key\"\n",
    )
    .unwrap();
    let (code, json, _) = config_check(&config, &[], &[]);
    assert_eq!(code, 2);
    let problems = json["problems"].as_array().unwrap();
    let text = serde_json::to_string(problems).unwrap();
    assert!(text.contains("sink.url is not set"), "{text}");
    assert!(text.contains("no age recipient"), "{text}");
    assert!(text.contains("/nonexistent/key"), "{text}");
}

#[test]
fn keygen_writes_a_private_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("age.key");
    let out = run(
        &pgproof_bin(),
        &["keygen", "--output", key.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let public = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(public.trim().starts_with("age1"), "{public}");
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(text.contains(&format!("# public key: {}", public.trim())));
    assert!(text.lines().any(|l| l.starts_with("AGE-SECRET-KEY-1")));
    assert!(!stderr(&out).contains("AGE-SECRET-KEY"), "secret printed");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let again = run(
        &pgproof_bin(),
        &["keygen", "--output", key.to_str().unwrap()],
    );
    assert!(!again.status.success());
    assert!(stderr(&again).contains("never overwrites"));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), text);
}

#[test]
fn cloud_sink_urls_are_checked_without_echoing_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgproof.toml");
    std::fs::write(&config, "").unwrap();
    let list = |sink: &str| {
        run(
            &pgproof_bin(),
            &["--config", config.to_str().unwrap(), "--sink", sink, "list"],
        )
    };

    let out = list("s3://");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not name a valid bucket"),
        "{}",
        stderr(&out)
    );

    let out = list("s3://AKIAEXAMPLE:hunter2-secret@bucket/x");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("must not carry credentials"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));

    // az:// and azure://: a SAS token pasted into the URL is refused unechoed, and
    // without an account the error says where to give one.
    let out = list("az://backups/x?sv=2022-11-02&sig=hunter2-signature");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("has a query or fragment") && !stderr(&out).contains("hunter2"),
        "{}",
        stderr(&out)
    );
    if std::env::var_os("AZURE_STORAGE_ACCOUNT_NAME").is_none() {
        let out = list("azure://backups/x");
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("sink.account or AZURE_STORAGE_ACCOUNT_NAME"),
            "{}",
            stderr(&out)
        );
    }

    let out = list("ftp://host/x");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unsupported scheme"),
        "{}",
        stderr(&out)
    );

    // An s3:// sink builds without network: config check passes, shows the options
    // and their defaults, and never a credential from the environment.
    let key = dir.path().join("k");
    let out = run(&pgproof_bin(), &["keygen", "-o", key.to_str().unwrap()]);
    let public = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let trusted = signing_public(dir.path());
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"postgres://app@db.example/app\"\n[encryption]\nrecipients = [\"{public}\"]\n[trust]\nkeys = [\"{trusted}\"]\n[sink]\nurl = \"s3://bucket/backups\"\nendpoint = \"http://127.0.0.1:9\"\nallow_http = true\n"
        ),
    )
    .unwrap();
    let env = [
        ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY"),
        ("AWS_SECRET_ACCESS_KEY", "hunter2-secret-value"),
    ];
    let (code, json, err) = config_check(&config, &env, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json["config"]["sink"]["url"], "s3://bucket/backups");
    assert_eq!(json["config"]["sink"]["part_size_mib"], 64);
    assert_eq!(json["config"]["sink"]["parts_in_flight"], 4);
    let everything = format!("{json}{err}");
    assert!(!everything.contains("hunter2"), "{everything}");

    // Options that belong to another sink are refused, naming the key.
    let (code, json, _) = config_check(
        &config,
        &[
            ("PGPROOF_SINK__URL", "gs://bucket/x"),
            ("PGPROOF_SINK__REGION", "eu-west-1"),
        ],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        json["problems"].to_string().contains("sink.region"),
        "{json}"
    );
    let (code, _, err) = config_check(&config, &[("PGPROOF_SINK__PART_SIZE_MIB", "1")], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("part_size_mib"), "{err}");
}

/// Values that used to pass `config check` and fail or panic later are refused by it,
/// naming the key (exit 2); a name with control characters reaches the terminal
/// escaped.
#[test]
fn limits_and_rules_are_checked_with_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = signing_public(dir.path());
    let config = dir.path().join("pgproof.toml");
    let base = format!(
        "[source]\nurl = \"postgres://app@db.example/app\"\n[encryption]\nenabled = false\n[trust]\nkeys = [\"{trusted}\"]\n[sink]\nurl = \"file://{}/sink\"\n",
        dir.path().display()
    );
    for (extra, key) in [
        ("[retention]\nkeep_last = 0\n", "retention.keep_last"),
        (
            "[retention]\nkeep_within = \"0s\"\n",
            "retention.keep_within",
        ),
        (
            "[retention]\norphan_grace = \"99999999999w\"\n",
            "retention.orphan_grace",
        ),
        ("[status]\nmax_age = \"36700d\"\n", "status.max_age"),
        (
            "[hooks]\ntimeout_secs = 9223372036854775807\n",
            "hooks.timeout_secs",
        ),
        (
            "[dump]\nlock_wait_timeout_secs = 9223372036854775807\n",
            "dump.lock_wait_timeout_secs",
        ),
        ("[notify]\ntimeout_secs = 3000000\n", "notify.timeout_secs"),
    ] {
        std::fs::write(&config, format!("{base}{extra}")).unwrap();
        let (code, _, err) = config_check(&config, &[], &[]);
        assert_eq!(code, 2, "{extra}: {err}");
        assert!(err.contains(key), "{extra}: {err}");
    }

    std::fs::write(&config, &base).unwrap();
    let out = run(
        &pgproof_bin(),
        &[
            "--config",
            config.to_str().unwrap(),
            "show",
            "latest",
            "--database",
            "app\u{1b}[2J\u{7}",
        ],
    );
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("app\\u{1b}[2J"), "{err}");
    assert!(!err.contains('\u{1b}') && !err.contains('\u{7}'), "{err:?}");
}

/// The one `pgproof: error:` line of a run's stderr.
fn error_line(err: &str) -> &str {
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("pgproof: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    lines[0]
}

/// A value of the wrong type or shape from the environment is a failure of
/// deserialization, not of validation (an out-of-range number): figment's message
/// names the key in its own spelling (`SINK.PART_SIZE_MIB`), which is not what an
/// operator can grep a unit file or a CI config for.
#[test]
fn a_bad_value_from_the_environment_names_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgproof.toml");
    std::fs::write(&config, "[sink]\nurl = \"file:///x\"\n").unwrap();
    for (var, value) in [
        ("PGPROOF_SINK__PART_SIZE_MIB", "five"),
        ("PGPROOF_DUMP__FORMAT", "tarball"),
        ("PGPROOF_SOURCE__CONNECT_TIMEOUT_SECS", "-1"),
    ] {
        let (code, _, err) = config_check(&config, &[(var, value)], &[]);
        assert_eq!(code, 2, "{var}={value}: {err}");
        let line = error_line(&err);
        assert!(line.contains(var), "{var}={value}: {line}");
    }
    // The same value from the file is not blamed on the environment.
    std::fs::write(
        &config,
        "[sink]\nurl = \"file:///x\"\npart_size_mib = \"five\"\n",
    )
    .unwrap();
    let (code, _, err) = config_check(&config, &[], &[]);
    assert_eq!(code, 2, "{err}");
    let line = error_line(&err);
    assert!(!line.contains("PGPROOF_"), "{line}");
}

/// `restore --target` with a URL the parser rejects names the flag: the source and
/// the scratch server are connection URLs too, and the message alone does not say
/// which one was wrong.
#[tokio::test]
async fn an_unparsable_restore_target_names_the_flag() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    let ws = Workspace::new(&cluster, "app", "custom");
    ws.backup();
    for target in [
        "postgres://[::1/app",
        "host=localhost port=notaport dbname=x",
    ] {
        let out = ws.pgproof(&["restore", "latest", "--target", target]);
        assert_eq!(out.status.code(), Some(2), "{target}: {}", stderr(&out));
        let err = stderr(&out);
        let line = error_line(&err);
        assert!(line.contains("--target"), "{target}: {line}");
    }
    // A good source URL beside it keeps the blame on the flag, not on source.url.
    let out = ws.pgproof(&["restore", "latest", "--target", "postgres://[::1/app"]);
    assert!(!stderr(&out).contains("source.url"), "{}", stderr(&out));
}

/// `verify` with an identity that cannot open the backup names the backup, so a
/// `verify --all` over a key rotation says which ones the key misses; and it is an
/// environment problem, so no verification record is written.
#[tokio::test]
async fn a_wrong_identity_during_verify_names_the_backup() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    let ws = Workspace::new(&cluster, "app", "custom");
    ws.verify_on(&cluster);
    let manifest = ws.backup();
    let id = manifest["backup_id"].as_str().unwrap();
    let other = ws.dir.path().join("other.key");
    ws.pgproof_ok(&["keygen", "--output", other.to_str().unwrap()]);
    let before = ws.sink_files();

    let out = ws.pgproof(&["verify", id, "--identity", other.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let line = error_line(&err);
    assert!(line.contains("no identity"), "{line}");
    assert!(line.contains(id), "the backup is not named: {line}");
    assert_eq!(ws.sink_files(), before, "a record was written");
}
