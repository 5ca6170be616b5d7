//! The deployment examples in `deploy/` checked against what runs them: the systemd
//! units with `systemd-analyze verify` (and their hardening with `systemd-analyze
//! security`), the Kubernetes manifests against the Kubernetes API's schemas
//! (`kubernetes-validate`, offline), the example configs with `pgproof config check`,
//! and every pgproof command line in them against the CLI's own parser.
//!
//! `scripts/setup --tests` installs systemd-analyze (Debian's systemd package) and
//! kubernetes-validate (into `.venv`); without them these tests print a SKIPPED line,
//! or fail with `PGPROOF_REQUIRE_SERVICES=1`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use pgproof_tests::{missing_service, pgproof_bin};

const SERVICE: &str = "pgproof-backup.service";
const TIMER: &str = "pgproof-backup.timer";
/// Where the unit and the docs install the binary.
const INSTALLED_BIN: &str = "/usr/local/bin/pgproof";
/// The placeholder the Kubernetes config carries until the operator's key replaces it.
const RECIPIENT_PLACEHOLDER: &str = "age1-REPLACE-WITH-YOUR-PUBLIC-KEY";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn deploy(path: &str) -> PathBuf {
    repo().join("deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A program on PATH, or `None`.
fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The values of `Key=` lines of a unit file, in order (comments skipped).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect()
}

/// The unit files copied into `dir` with the binary path pointing at the built
/// pgproof: systemd-analyze verify requires the ExecStart= program to exist.
fn units_with_built_binary(dir: &Path) -> Vec<PathBuf> {
    let bin = pgproof_bin();
    [SERVICE, TIMER]
        .iter()
        .map(|name| {
            let unit = read(&deploy(&format!("systemd/{name}")));
            let path = dir.join(name);
            std::fs::write(&path, unit.replace(INSTALLED_BIN, bin.to_str().unwrap())).unwrap();
            path
        })
        .collect()
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let Some(analyze) = on_path("systemd-analyze") else {
        missing_service("systemd-analyze (Debian's systemd package; scripts/setup --tests)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let units = units_with_built_binary(dir.path());
    let out = Command::new(&analyze)
        .arg("verify")
        .args(&units)
        .current_dir(dir.path())
        .output()
        .unwrap();
    // verify exits 0 on an unknown key or a bad value and only warns: any line naming
    // one of our units is a finding.
    let findings: Vec<String> = text(&out)
        .lines()
        .filter(|l| units.iter().any(|u| l.contains(u.to_str().unwrap())))
        .map(str::to_owned)
        .collect();
    assert!(
        out.status.success() && findings.is_empty(),
        "systemd-analyze verify: {}\n{}",
        out.status,
        text(&out)
    );

    // The check is real: a misspelt directive and a missing program are reported.
    let broken = dir.path().join("broken.service");
    let unit = read(&units[0])
        .replace("ProtectSystem=strict", "ProtectSystem=strictly")
        .replace("Type=oneshot", "Type=oneshot\nPrivateTempDir=yes");
    std::fs::write(&broken, unit).unwrap();
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&broken)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let report = text(&out);
    assert!(
        report.contains("PrivateTempDir") && report.contains("strictly"),
        "systemd-analyze verify missed a misspelt key and value: {report}"
    );
    let missing = dir.path().join("missing.service");
    std::fs::write(
        &missing,
        read(&deploy(&format!("systemd/{SERVICE}"))).replace(INSTALLED_BIN, "/nonexistent/pgproof"),
    )
    .unwrap();
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&missing)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "systemd-analyze verify accepted a unit whose program is missing: {}",
        text(&out)
    );
}

#[test]
fn systemd_service_stays_hardened() {
    let Some(analyze) = on_path("systemd-analyze") else {
        missing_service("systemd-analyze (Debian's systemd package; scripts/setup --tests)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let units = units_with_built_binary(dir.path());
    // systemd's own exposure score, 0.0 (locked down) to 10.0; the threshold is in
    // tenths. 2.0 is the top of "OK"; the unit scores about 1.5.
    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(&units[0])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the service's exposure rose above 2.0 (systemd-analyze security):\n{}",
        text(&out)
    );
}

#[test]
fn systemd_service_runs_what_the_issue_asks() {
    let unit = read(&deploy(&format!("systemd/{SERVICE}")));
    let one = |key: &str| {
        let values = unit_values(&unit, key);
        assert_eq!(values.len(), 1, "{key}= should be set once: {values:?}");
        values.into_iter().next().unwrap()
    };
    assert_eq!(one("Type"), "oneshot");
    // initdb refuses root; the unit must name an unprivileged user.
    let user = one("User");
    assert!(
        !user.is_empty() && user != "root" && user != "0",
        "User={user}"
    );
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("PrivateTmp"), "yes");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("CapabilityBoundingSet"), "");
    assert_eq!(one("RestrictAddressFamilies"), "AF_UNIX AF_INET AF_INET6");
    assert_eq!(one("SystemCallFilter"), "@system-service");
    // The ephemeral PostgreSQL's JIT needs executable memory.
    assert!(unit_values(&unit, "MemoryDenyWriteExecute").is_empty());
    // Status must be written after a failed backup too: ExecStopPost=, never
    // ExecStartPost= (skipped when ExecStart= fails).
    assert!(unit_values(&unit, "ExecStartPost").is_empty());
    let stop_post = one("ExecStopPost");
    assert!(
        stop_post.contains(" status --prometheus "),
        "ExecStopPost={stop_post}"
    );
    // The identity reaches pgproof through the setting it reads from the environment.
    let credential = unit_values(&unit, "LoadCredential")
        .into_iter()
        .find(|c| c.ends_with("/etc/pgproof/age.key"))
        .expect("LoadCredential= of the age identity");
    let id = credential.split(':').next().unwrap();
    assert!(
        unit_values(&unit, "Environment")
            .contains(&format!("PGPROOF_ENCRYPTION__IDENTITY_FILE=%d/{id}")),
        "the identity credential {id} is not passed as PGPROOF_ENCRYPTION__IDENTITY_FILE"
    );
    let timer = read(&deploy(&format!("systemd/{TIMER}")));
    assert_eq!(unit_values(&timer, "Persistent"), ["true"]);
    assert_eq!(unit_values(&timer, "RandomizedDelaySec").len(), 1);
    assert_eq!(unit_values(&timer, "OnCalendar").len(), 1);
}

/// Runs `pgproof ARGS --help`: the parser rejects an unknown subcommand or flag before
/// it prints help, so this proves the command line is one the CLI accepts.
fn assert_cli_accepts(args: &[&str]) {
    let out = Command::new(pgproof_bin())
        .args(args)
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pgproof {} is not a command line the CLI accepts: {}",
        args.join(" "),
        text(&out)
    );
}

/// The arguments of a unit's `Exec*=` line after the binary (a leading `-` dropped).
fn exec_args(line: &str) -> Vec<String> {
    let line = line.trim_start_matches('-');
    let mut words = line.split_whitespace().map(str::to_owned);
    assert_eq!(words.next().as_deref(), Some(INSTALLED_BIN), "{line}");
    words.collect()
}

#[test]
fn every_command_line_in_deploy_is_one_the_cli_accepts() {
    // Sanity: the probe itself fails on a flag that does not exist.
    let out = Command::new(pgproof_bin())
        .args(["backup", "--verifyy", "--help"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    let unit = read(&deploy(&format!("systemd/{SERVICE}")));
    let lines: Vec<String> = ["ExecStart", "ExecStopPost"]
        .iter()
        .flat_map(|k| unit_values(&unit, k))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        let args = exec_args(line);
        assert_cli_accepts(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    let script = cronjob_script();
    let commands: Vec<&str> = script
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("pgproof "))
        .collect();
    assert_eq!(commands.len(), 2, "{script}");
    for command in commands {
        let args: Vec<&str> = command
            .trim_end_matches('&')
            .split_whitespace()
            .skip(1)
            .collect();
        assert_cli_accepts(&args);
    }

    // The verify pools: the worker alone, and the worker then status.
    for (file, expected) in [
        ("verify-workers.yaml", &["verify"][..]),
        ("verify-fleet.yaml", &["verify", "status"][..]),
    ] {
        let script = block_scalar(&read(&deploy(&format!("kubernetes/{file}"))), "- |");
        let commands: Vec<Vec<&str>> = script
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("pgproof "))
            .map(|l| l.trim_end_matches('&').split_whitespace().skip(1).collect())
            .collect();
        let names: Vec<&str> = commands.iter().map(|c| c[0]).collect();
        assert_eq!(names, expected, "{file}: {script}");
        for args in &commands {
            assert_cli_accepts(args);
        }
        assert!(
            commands[0].contains(&"--worker") && commands[0].contains(&"--stale"),
            "{file}: {script}"
        );
    }
}

/// The contents of the first YAML block scalar whose header line (trimmed) is
/// `header`, e.g. `pgproof.toml: |` or `- |`, dedented.
fn block_scalar(yaml: &str, header: &str) -> String {
    let mut lines = yaml.lines();
    let start = lines
        .by_ref()
        .find(|l| l.trim() == header)
        .unwrap_or_else(|| panic!("no block `{header}`"));
    let parent_indent = start.len() - start.trim_start().len();
    let mut body: Vec<&str> = Vec::new();
    for line in lines {
        let indent = line.len() - line.trim_start().len();
        if !line.trim().is_empty() && indent <= parent_indent {
            break;
        }
        body.push(line);
    }
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out: String = body
        .iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    out
}

fn cronjob_script() -> String {
    block_scalar(&read(&deploy("kubernetes/cronjob.yaml")), "- |")
}

/// `pgproof keygen --signing` to `path`.
fn signing_keygen(path: &Path) {
    let out = Command::new(pgproof_bin())
        .args(["keygen", "--signing", "--output"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "keygen --signing: {}", text(&out));
}

/// `pgproof keygen` into `dir`: (identity file, public key).
fn keygen(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("age.key");
    let out = Command::new(pgproof_bin())
        .args(["keygen", "--output"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "keygen: {}", text(&out));
    (
        key,
        String::from_utf8(out.stdout).unwrap().trim().to_owned(),
    )
}

/// `pgproof config check --config FILE` with only `env` set (no stray PGPROOF_*).
fn config_check(file: &Path, env: &[(String, String)]) -> Output {
    Command::new(pgproof_bin())
        .args(["config", "check", "--config"])
        .arg(file)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

#[test]
fn systemd_example_config_passes_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let creds = dir.path().join("credentials");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&creds).unwrap();
    let (key, public) = keygen(&etc);
    std::fs::write(etc.join("recipients.txt"), format!("{public}\n")).unwrap();
    // The unit hands the identity over as a credential: put it where %d points.
    let unit = read(&deploy(&format!("systemd/{SERVICE}")));
    for credential in unit_values(&unit, "LoadCredential") {
        let (id, source) = credential.split_once(':').unwrap();
        if source == "/etc/pgproof/age.key" {
            std::fs::copy(&key, creds.join(id)).unwrap();
        }
        if source == "/etc/pgproof/signing.key" {
            signing_keygen(&creds.join(id));
        }
    }
    // The unit's Environment= as pgproof would see it, the config file aside (the
    // test names its rewritten copy).
    let env: Vec<(String, String)> = unit_values(&unit, "Environment")
        .iter()
        .filter_map(|e| e.split_once('='))
        .filter(|(k, _)| k.starts_with("PGPROOF_") && *k != "PGPROOF_CONFIG")
        .map(|(k, v)| (k.to_owned(), v.replace("%d", creds.to_str().unwrap())))
        .collect();
    assert!(
        env.iter()
            .any(|(k, _)| k == "PGPROOF_ENCRYPTION__IDENTITY_FILE"),
        "{env:?}"
    );
    let sink = dir.path().join("backups");
    let config = read(&deploy("systemd/pgproof.toml"))
        .replace("/etc/pgproof/", &format!("{}/", etc.display()))
        .replace("/var/backups/pgproof", sink.to_str().unwrap());
    let file = dir.path().join("pgproof.toml");
    std::fs::write(&file, &config).unwrap();
    let out = config_check(&file, &env);
    assert!(
        out.status.success(),
        "deploy/systemd/pgproof.toml fails config check: {}",
        text(&out)
    );
    // The identity came from the unit's environment, not the file.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{}/age-identity", creds.display())),
        "{}",
        text(&out)
    );

    // A key that drifted from the real config is an error naming it.
    std::fs::write(&file, format!("{config}\n[verify]\nafter_backupp = true\n")).unwrap();
    let out = config_check(&file, &env);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn kubernetes_example_config_passes_config_check() {
    let yaml = read(&deploy("kubernetes/configmap.yaml"));
    let toml = block_scalar(&yaml, "pgproof.toml: |");
    assert!(toml.contains("[sink]"), "{toml}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgproof.toml");

    // As shipped, the placeholder recipient is refused: nobody backs up to it by
    // accident.
    std::fs::write(&file, &toml).unwrap();
    let out = config_check(&file, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("recipients"), "{}", text(&out));

    // With a real key and the Secret's identity file, it passes.
    let (key, public) = keygen(dir.path());
    let cronjob = read(&deploy("kubernetes/cronjob.yaml"));
    let identity_in_pod = "/etc/pgproof/secret/age.key";
    assert!(toml.contains(identity_in_pod) && cronjob.contains("/etc/pgproof/secret"));
    let signing_in_pod = "/etc/pgproof/secret/signing.key";
    assert!(toml.contains(signing_in_pod) && cronjob.contains("path: signing.key"));
    let signing = dir.path().join("signing.key");
    signing_keygen(&signing);
    let edited = toml
        .replace(RECIPIENT_PLACEHOLDER, &public)
        .replace(identity_in_pod, key.to_str().unwrap())
        .replace(signing_in_pod, signing.to_str().unwrap());
    std::fs::write(&file, &edited).unwrap();
    let out = config_check(&file, &[]);
    assert!(
        out.status.success(),
        "the ConfigMap's pgproof.toml fails config check: {}",
        text(&out)
    );
    // The CronJob points pgproof at the ConfigMap's key.
    assert!(cronjob.contains("/etc/pgproof/config/pgproof.toml"));
    assert!(yaml.contains("name: pgproof-config") && cronjob.contains("name: pgproof-config"));
}

fn kubernetes_validate() -> Option<PathBuf> {
    let venv = repo().join(".venv/bin/kubernetes-validate");
    if venv.is_file() {
        return Some(venv);
    }
    on_path("kubernetes-validate")
}

/// The Kubernetes version the manifests must work on at least: podFailurePolicy is
/// GA from 1.31.
const OLDEST_KUBERNETES: &str = "1.31.0";

#[test]
fn kubernetes_manifests_match_the_api_schemas() {
    let Some(validate) = kubernetes_validate() else {
        missing_service("kubernetes-validate (scripts/setup --tests installs it into .venv)");
        return;
    };
    let manifests: Vec<PathBuf> = [
        "configmap.yaml",
        "cronjob.yaml",
        "secret.example.yaml",
        "verify-workers.yaml",
        "verify-fleet.yaml",
    ]
    .iter()
    .map(|f| deploy(&format!("kubernetes/{f}")))
    .collect();
    for version in [None, Some(OLDEST_KUBERNETES)] {
        let mut cmd = Command::new(&validate);
        cmd.arg("--strict");
        if let Some(v) = version {
            cmd.args(["--kubernetes-version", v]);
        }
        let out = cmd.args(&manifests).output().unwrap();
        let report = text(&out);
        assert!(
            out.status.success() && report.matches("passed").count() == manifests.len(),
            "kubernetes-validate (Kubernetes {}): {report}",
            version.unwrap_or("newest")
        );
    }

    // Strict means strict: an unknown field and a wrong type fail.
    let dir = tempfile::tempdir().unwrap();
    let cronjob = read(&manifests[1]);
    for (what, broken) in [
        (
            "unknown field",
            cronjob.replace("concurrencyPolicy: Forbid", "concurrency: Forbid"),
        ),
        (
            "wrong type",
            cronjob.replace("backoffLimit: 1", "backoffLimit: once"),
        ),
    ] {
        assert_ne!(broken, cronjob);
        let file = dir.path().join("broken.yaml");
        std::fs::write(&file, broken).unwrap();
        let out = Command::new(&validate)
            .arg("--strict")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "kubernetes-validate accepted a CronJob with a {what}: {}",
            text(&out)
        );
    }
}

#[test]
fn kubernetes_cronjob_has_the_settings_the_issue_asks() {
    let cronjob = read(&deploy("kubernetes/cronjob.yaml"));
    for needle in [
        "kind: CronJob",
        "concurrencyPolicy: Forbid",
        "startingDeadlineSeconds:",
        "backoffLimit:",
        "successfulJobsHistoryLimit:",
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "mountPath: /tmp",
        "emptyDir:",
        "secretName: pgproof-secrets",
        "name: pgproof-config",
        "resources:",
    ] {
        assert!(cronjob.contains(needle), "cronjob.yaml lacks `{needle}`");
    }
    let uid: u32 = cronjob
        .lines()
        .find_map(|l| l.trim().strip_prefix("runAsUser: "))
        .expect("runAsUser")
        .parse()
        .unwrap();
    assert_ne!(uid, 0);
    let dockerfile = read(&deploy("container/Dockerfile"));
    assert!(
        dockerfile.contains(&format!("--uid {uid}")),
        "the image's user must have the CronJob's uid {uid} (initdb needs a user name)"
    );
}

/// A directory of stub `pgproof` and `curl` programs that log their arguments.
/// The stub backup exits `$STUB_BACKUP_EXIT` (or sleeps until SIGTERM with
/// `STUB_BACKUP_SLEEP=1` for up to 10 s, then exits 143); status writes its textfile
/// and exits 3.
fn stubs(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let write = |name: &str, body: &str| {
        let path = bin.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    };
    write(
        "pgproof",
        r#"#!/bin/sh
echo "pgproof $*" >> "$STUB_LOG"
case "$1" in
  backup)
    if [ "${STUB_BACKUP_SLEEP:-}" = 1 ]; then
      trap 'echo "pgproof got TERM" >> "$STUB_LOG"; exit 143' TERM
      touch "$STUB_LOG.started"
      # Bounded, so a script that never passes SIGTERM on fails the test, not hangs it.
      i=0
      while [ "$i" -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
      exit 0
    fi
    exit "${STUB_BACKUP_EXIT:-0}" ;;
  status)
    echo 'pgproof_status_breached{database="app"} 1' > "$3"
    exit 3 ;;
  verify)
    echo "sink ${PGPROOF_SINK__URL:-}" >> "$STUB_LOG"
    exit "${STUB_VERIFY_EXIT:-0}" ;;
esac
exit 99
"#,
    );
    write(
        "curl",
        r#"#!/bin/sh
echo "curl $*" >> "$STUB_LOG"
"#,
    );
    bin
}

fn run_cronjob_script(dir: &Path, envs: &[(&str, &str)]) -> std::process::Child {
    let bin = stubs(dir);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("/bin/sh")
        .arg("-c")
        .arg(cronjob_script())
        .env("PATH", path)
        .env("STUB_LOG", dir.join("log"))
        .env("PUSHGATEWAY_URL", "http://pushgateway.test:9091")
        .env("PGPROOF_INSTANCE", "db1")
        .env("TMPDIR", dir)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn cronjob_pushes_status_after_a_failed_backup_and_keeps_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let status = run_cronjob_script(dir.path(), &[("STUB_BACKUP_EXIT", "1")])
        .wait()
        .unwrap();
    let log = read(&dir.path().join("log"));
    assert_eq!(
        status.code(),
        Some(1),
        "the backup's exit code is the pod's: {log}"
    );
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert_eq!(lines[0], "pgproof backup --verify --prune");
    assert!(
        lines[1].starts_with("pgproof status --prometheus "),
        "{log}"
    );
    assert!(
        lines[2].starts_with("curl ")
            && lines[2].contains("-X PUT")
            && lines[2].contains("http://pushgateway.test:9091/metrics/job/pgproof/instance/db1"),
        "{log}"
    );
}

#[test]
fn cronjob_passes_sigterm_on_to_pgproof() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = run_cronjob_script(dir.path(), &[("STUB_BACKUP_SLEEP", "1")]);
    let started = dir.path().join("log.started");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the stub backup never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // What the kubelet does when the pod is stopped: SIGTERM to PID 1, the shell.
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    let log = read(&dir.path().join("log"));
    assert!(
        log.contains("pgproof got TERM"),
        "SIGTERM did not reach pgproof: {log}"
    );
    assert_eq!(status.code(), Some(143), "{log}");
    // Status is still pushed after an interrupted run.
    assert!(log.contains("pgproof status --prometheus"), "{log}");
}

#[test]
fn verify_pools_are_work_queues_the_issue_asks_for() {
    // A work-queue Job: parallelism, no completions (the Job is done when the
    // workers are); its pods never restart in place (a new pod takes what is left).
    let job = read(&deploy("kubernetes/verify-workers.yaml"));
    for needle in [
        "kind: Job",
        "parallelism: 4",
        "restartPolicy: Never",
        "podFailurePolicy:",
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "name: pgproof-config",
        "PGPROOF_VERIFY__CLAIM_TTL",
    ] {
        assert!(job.contains(needle), "verify-workers.yaml lacks `{needle}`");
    }
    assert!(
        !job.contains("completions:"),
        "a work queue has no completions"
    );
    // The fleet: an Indexed Job from a CronJob, one status group per cluster.
    let fleet = read(&deploy("kubernetes/verify-fleet.yaml"));
    for needle in [
        "kind: CronJob",
        "completionMode: Indexed",
        "completions:",
        "parallelism:",
        "concurrencyPolicy: Forbid",
        "JOB_COMPLETION_INDEX",
        "/cluster/$cluster",
    ] {
        assert!(fleet.contains(needle), "verify-fleet.yaml lacks `{needle}`");
    }
    for manifest in [&job, &fleet] {
        let uid: u32 = manifest
            .lines()
            .find_map(|l| l.trim().strip_prefix("runAsUser: "))
            .expect("runAsUser")
            .parse()
            .unwrap();
        let dockerfile = read(&deploy("container/Dockerfile"));
        assert!(dockerfile.contains(&format!("--uid {uid}")));
    }
}

/// The value of `name`'s `value:` line in a manifest's env.
fn env_value(manifest: &str, name: &str) -> String {
    let mut lines = manifest.lines().map(str::trim);
    lines
        .by_ref()
        .find(|l| *l == format!("- name: {name}"))
        .unwrap_or_else(|| panic!("no env {name}"));
    let value = lines.next().unwrap().strip_prefix("value: ").unwrap();
    value.trim_matches('"').to_owned()
}

#[test]
fn each_fleet_index_verifies_its_cluster_and_pushes_its_status_under_its_label() {
    let fleet = read(&deploy("kubernetes/verify-fleet.yaml"));
    let script = block_scalar(&fleet, "- |");
    let clusters = env_value(&fleet, "PGPROOF_CLUSTERS");
    let sink = env_value(&fleet, "FLEET_SINK");
    let names: Vec<&str> = clusters.split_whitespace().collect();
    assert_eq!(names.len(), 3, "{clusters}");
    let completions: usize = fleet
        .lines()
        .find_map(|l| l.trim().strip_prefix("completions: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        completions % names.len(),
        0,
        "every cluster gets as many workers"
    );
    for index in 0..completions {
        let dir = tempfile::tempdir().unwrap();
        let bin = stubs(dir.path());
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let status = Command::new("/bin/sh")
            .arg("-c")
            .arg(&script)
            .env("PATH", path)
            .env("STUB_LOG", dir.path().join("log"))
            .env("STUB_VERIFY_EXIT", "3")
            .env("PGPROOF_CLUSTERS", &clusters)
            .env("FLEET_SINK", &sink)
            .env("JOB_COMPLETION_INDEX", index.to_string())
            .env("PUSHGATEWAY_URL", "http://pushgateway.test:9091")
            .env("TMPDIR", dir.path())
            .stdin(Stdio::null())
            .status()
            .unwrap();
        let log = read(&dir.path().join("log"));
        // The worker's verdict is the pod's; status is pushed all the same.
        assert_eq!(status.code(), Some(3), "{log}");
        let cluster = names[index % names.len()];
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines[0], "pgproof verify --stale 20h --worker", "{log}");
        assert_eq!(lines[1], format!("sink {sink}/{cluster}"), "{log}");
        assert!(
            lines[2].starts_with("pgproof status --prometheus "),
            "{log}"
        );
        assert!(
            lines[3].ends_with(&format!(
                "http://pushgateway.test:9091/metrics/job/pgproof/cluster/{cluster}"
            )),
            "{log}"
        );
    }
}

#[test]
fn the_verify_pools_settings_pass_config_check() {
    let yaml = read(&deploy("kubernetes/configmap.yaml"));
    let toml = block_scalar(&yaml, "pgproof.toml: |");
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path());
    let signing = dir.path().join("signing.key");
    signing_keygen(&signing);
    let file = dir.path().join("pgproof.toml");
    std::fs::write(
        &file,
        toml.replace(RECIPIENT_PLACEHOLDER, &public)
            .replace("/etc/pgproof/secret/age.key", key.to_str().unwrap())
            .replace("/etc/pgproof/secret/signing.key", signing.to_str().unwrap()),
    )
    .unwrap();
    let fleet = read(&deploy("kubernetes/verify-fleet.yaml"));
    let env: Vec<(String, String)> = ["PGPROOF_VERIFY__SCRATCH_URL", "PGPROOF_VERIFY__CLAIM_TTL"]
        .iter()
        .map(|k| ((*k).to_owned(), env_value(&fleet, k)))
        .chain([(
            "PGPROOF_SINK__URL".to_owned(),
            format!("{}/east-1", env_value(&fleet, "FLEET_SINK")),
        )])
        .collect();
    let out = config_check(&file, &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("claim_ttl"), "{}", text(&out));
    let job = read(&deploy("kubernetes/verify-workers.yaml"));
    assert_eq!(
        env_value(&job, "PGPROOF_VERIFY__CLAIM_TTL"),
        env_value(&fleet, "PGPROOF_VERIFY__CLAIM_TTL")
    );

    // A claim lifetime out of bounds is refused by name.
    let mut short = env.clone();
    short[1].1 = "1s".into();
    let out = config_check(&file, &short);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("verify.claim_ttl"), "{}", text(&out));
}
