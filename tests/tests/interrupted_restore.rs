//! A restore program killed while it is loading data leaves nothing (its single
//! transaction never commits). The archive is many times a pipe buffer, and the
//! program is killed only once the server has received megabytes of its COPY
//! (`pg_stat_progress_copy`): killed before it read anything, an empty target would
//! prove nothing about the transaction.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgproof_core::dump::Format;
use pgproof_tests::{connect, create_database, start_cluster};

const MIB: i64 = 1 << 20;

#[tokio::test]
async fn a_restore_program_killed_mid_copy_commits_nothing() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    // About 48 MiB of text in one table: fast to make, far past a pipe buffer.
    create_database(&cluster, "big")
        .await
        .batch_execute(
            "CREATE TABLE big (id int PRIMARY KEY, v text);
             INSERT INTO big SELECT g, repeat(md5(g::text), 24) FROM generate_series(1, 64000) g;",
        )
        .await
        .unwrap();
    let admin = connect(&cluster, "postgres").await;
    let pg_dump = cluster.tools().dir().join("pg_dump");

    for (format, dumper) in [
        ("custom", Format::Custom.dumper(6)),
        ("plain", Format::Plain.dumper(1)),
    ] {
        let out = Command::new(&pg_dump)
            .args([&format!("--format={format}"), "--compress=0", "--no-owner"])
            .arg(format!("--dbname={}", cluster.url("big")))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let archive = out.stdout;
        let target = format!("half_{format}");
        admin
            .batch_execute(&format!("CREATE DATABASE {target}"))
            .await
            .unwrap();

        let mut cmd = dumper.restore_command(cluster.tools(), &cluster.params(&target).unwrap());
        cmd.stdin(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let total = archive.len();
        let writer = std::thread::spawn(move || {
            // Fails with a broken pipe once the program is killed: expected.
            let _ = stdin.write_all(&archive);
        });

        // Wait until the server has taken megabytes of the COPY from the program.
        let deadline = Instant::now() + Duration::from_secs(60);
        let consumed = loop {
            let row = admin
                .query_opt(
                    "SELECT p.bytes_processed FROM pg_stat_progress_copy p \
                     JOIN pg_stat_activity a USING (pid) WHERE a.datname = $1",
                    &[&target],
                )
                .await
                .unwrap();
            if let Some(bytes) = row.map(|r| r.get::<_, i64>(0))
                && bytes >= 4 * MIB
            {
                break bytes;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "{format}: the restore ended before it could be killed"
            );
            assert!(Instant::now() < deadline, "{format}: no COPY under way");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        child.kill().unwrap();
        child.wait().unwrap();
        writer.join().unwrap();
        eprintln!(
            "{format}: killed after the server received {:.1} MiB of COPY data from a {:.1} MiB archive",
            consumed as f64 / MIB as f64,
            total as f64 / MIB as f64
        );
        assert!(
            (consumed as usize) < total,
            "{format}: the whole archive went through"
        );

        // The server ends the dead client's session, rolling its transaction back.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sessions: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                    &[&target],
                )
                .await
                .unwrap()
                .get(0);
            if sessions == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{format}: the session lingers");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left: i64 = connect(&cluster, &target)
            .await
            .query_one(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND n.nspname NOT LIKE 'pg\\_toast%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "{format}: the interrupted restore left relations");
    }
}
