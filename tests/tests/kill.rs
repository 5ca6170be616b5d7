//! SIGKILL, which gives pgproof no chance to clean up (the OOM killer, `kill -9`): a
//! directory-format dump's pg_dump dies with it instead of writing the database's
//! plaintext to disk, the stage it wrote into is private, and the next run removes it.
//! A test binary of its own: the process checks must not see another test's programs.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use pgproof_tests::processes_matching as running;
use pgproof_tests::{Workspace, create_big_database, start_cluster, stderr};

fn stages(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("pgproof-dump-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_killed_directory_backup_leaves_no_dump_running_and_its_stage_is_reaped() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_big_database(&cluster, "big", 160).await;
    let ws = Workspace::new(&cluster, "big", "directory");
    let stage_parent = ws.dir.path().join("stage");
    std::fs::create_dir_all(&stage_parent).unwrap();
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&config.replace(
        "[dump]\n",
        &format!(
            "[dump]\njobs = 1\nstage_dir = \"{}\"\n",
            stage_parent.display()
        ),
    ));

    let mut child = ws
        .command(&["backup"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Until pg_dump has written table data into its stage.
    let deadline = Instant::now() + Duration::from_secs(60);
    let data_file = loop {
        assert!(
            Instant::now() < deadline,
            "no table data ever reached the stage"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended first"
        );
        let found = stages(&stage_parent).into_iter().find_map(|stage| {
            std::fs::read_dir(&stage).ok()?.flatten().find_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name.ends_with(".dat") && name != "toc.dat" && e.metadata().ok()?.len() > 0)
                    .then(|| e.path())
            })
        });
        if let Some(file) = found {
            break file;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stage = data_file.parent().unwrap().to_owned();
    // Private: the directory 0700, the files pg_dump writes 0600.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&stage), 0o700, "{}", stage.display());
    assert_eq!(mode(&data_file), 0o600, "{}", data_file.display());
    assert!(
        running(&stage.display().to_string()) > 0,
        "pg_dump is not running"
    );

    child.kill().unwrap(); // SIGKILL
    let _ = child.wait_with_output();
    // pg_dump (and its workers) die with pgproof.
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(&stage.display().to_string()) > 0 {
        assert!(
            Instant::now() < deadline,
            "pg_dump outlived pgproof by 10 s, writing plaintext into {}",
            stage.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        stage.exists(),
        "SIGKILL leaves the stage: nothing could remove it"
    );

    // The next run removes the dead run's stage before it starts its own.
    let out = ws.pgproof(&["backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stage.exists(), "the abandoned stage is still there");
    assert!(
        stages(&stage_parent).is_empty(),
        "{:?}",
        stages(&stage_parent)
    );
}
