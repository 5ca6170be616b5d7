//! The audit chain in migrations/: installed by refinery, hashed injectively, verified
//! in seq order, and every kind of tampering reported at the right row.

#![allow(clippy::unwrap_used)]

use pgproof_core::evidence::audit::{migrate, verify_chain};
use pgproof_tests::{connect, start_cluster};
use tokio_postgres::Client;

/// Swaps the positions of rows 11 and 12; running it twice restores the order.
const SWAP_11_AND_12: &str = "UPDATE pgproof.audit_events SET seq = -seq WHERE seq IN (11, 12); \
     UPDATE pgproof.audit_events SET seq = 12 WHERE seq = -11; \
     UPDATE pgproof.audit_events SET seq = 11 WHERE seq = -12;";

async fn chain_db(cluster: &pgproof_core::scratch::EphemeralCluster, name: &str) -> Client {
    connect(cluster, "postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let mut client = connect(cluster, name).await;
    let applied = migrate(&mut client).await.unwrap();
    assert_eq!(applied, ["V1__audit_chain"]);
    assert!(
        migrate(&mut client).await.unwrap().is_empty(),
        "migrate is idempotent"
    );
    client
}

async fn insert_events(client: &Client, n: i64) {
    client
        .execute(
            "INSERT INTO pgproof.audit_events (actor, action, subject, details) \
             SELECT 'user' || g, (ARRAY['issue','renew','revoke','login'])[1 + g % 4], 'cert-' || g, \
                    jsonb_build_object('g', g) FROM generate_series(1, $1::int8) g",
            &[&n],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn chain_verifies_and_every_tamper_is_located() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let client = chain_db(&cluster, "chain").await;
    insert_events(&client, 20).await;

    let report = verify_chain(&client).await.unwrap().expect("chain present");
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(
        (report.rows_walked, report.head_seq, report.last_seq),
        (20, 20, 20)
    );

    // Write-once while the triggers are on.
    let refused = client
        .execute(
            "UPDATE pgproof.audit_events SET actor = 'x' WHERE seq = 3",
            &[],
        )
        .await;
    let refused = refused.unwrap_err();
    assert!(
        refused
            .as_db_error()
            .unwrap()
            .message()
            .contains("append-only"),
        "{refused:?}"
    );
    assert!(
        client
            .execute("DELETE FROM pgproof.audit_events WHERE seq = 3", &[])
            .await
            .is_err()
    );
    assert!(
        client
            .batch_execute("TRUNCATE pgproof.audit_events")
            .await
            .is_err()
    );
    assert!(
        client
            .batch_execute("DELETE FROM pgproof.audit_chain_head")
            .await
            .is_err(),
        "the head row cannot be deleted"
    );

    // An edited field breaks the chain at that row.
    client
        .batch_execute("ALTER TABLE pgproof.audit_events DISABLE TRIGGER audit_events_write_once")
        .await
        .unwrap();
    client
        .batch_execute("UPDATE pgproof.audit_events SET subject = 'cert-evil' WHERE seq = 7")
        .await
        .unwrap();
    let report = verify_chain(&client).await.unwrap().unwrap();
    let brk = report.first_break.clone().expect("edit detected");
    assert_eq!(brk.seq, 7);
    assert!(brk.reason.contains("row_hash"), "{brk:?}");
    client
        .batch_execute("UPDATE pgproof.audit_events SET subject = 'cert-7' WHERE seq = 7")
        .await
        .unwrap();
    assert!(verify_chain(&client).await.unwrap().unwrap().is_intact());

    // Swapping two rows' positions breaks the chain at the first of them.
    client.batch_execute(SWAP_11_AND_12).await.unwrap();
    let brk = verify_chain(&client)
        .await
        .unwrap()
        .unwrap()
        .first_break
        .expect("reorder detected");
    assert_eq!(brk.seq, 11, "{brk:?}");
    client.batch_execute(SWAP_11_AND_12).await.unwrap();
    assert!(verify_chain(&client).await.unwrap().unwrap().is_intact());

    // Deleting a middle row breaks the link at the next one.
    client
        .batch_execute("DELETE FROM pgproof.audit_events WHERE seq = 15")
        .await
        .unwrap();
    let brk = verify_chain(&client)
        .await
        .unwrap()
        .unwrap()
        .first_break
        .expect("gap detected");
    assert_eq!(brk.seq, 16, "{brk:?}");

    // Cutting the tail leaves every remaining link intact but the head mismatched.
    let client2 = chain_db(&cluster, "chain2").await;
    insert_events(&client2, 10).await;
    client2
        .batch_execute("ALTER TABLE pgproof.audit_events DISABLE TRIGGER audit_events_write_once")
        .await
        .unwrap();
    client2
        .batch_execute("DELETE FROM pgproof.audit_events WHERE seq > 8")
        .await
        .unwrap();
    let report = verify_chain(&client2).await.unwrap().unwrap();
    assert!(report.first_break.is_none());
    assert!(!report.head_matches);
    assert_eq!((report.last_seq, report.head_seq), (8, 10));
    assert!(!report.is_intact());
}

#[tokio::test]
async fn payload_is_injective_and_era_safe() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let client = chain_db(&cluster, "payload").await;
    let rest = "'s', '{}', '\\x00'";
    let bc = differ(
        &client,
        "'0044-03-15 12:00+00 BC', 'a', 'b'",
        "'0044-03-15 12:00+00', 'a', 'b'",
        rest,
    )
    .await;
    assert!(bc, "44 BC and 44 AD hash alike");
    let shifted = differ(
        &client,
        "'2026-01-01+00', 'ab', 'c'",
        "'2026-01-01+00', 'a', 'bc'",
        rest,
    )
    .await;
    assert!(shifted, "moving a field boundary keeps the payload");
    // The same instant written in two zones is one payload.
    let zones = differ(
        &client,
        "'2026-01-01 00:00+00', 'a', 'b'",
        "'2026-01-01 09:00+09', 'a', 'b'",
        rest,
    )
    .await;
    assert!(!zones, "time zone of the literal changed the payload");
}

async fn differ(client: &Client, a: &str, b: &str, rest: &str) -> bool {
    let id = "'00000000-0000-0000-0000-000000000001'";
    let sql = format!(
        "SELECT pgproof.audit_payload(1, {id}, {a}, {rest}) <> pgproof.audit_payload(1, {id}, {b}, {rest})"
    );
    client.query_one(&sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn duplicates_concurrency_and_empty_search_path_keep_the_chain_intact() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let client = chain_db(&cluster, "busy").await;

    // pg_dump's empty search_path must not break the trigger.
    client
        .batch_execute(
            "SET search_path = ''; \
             INSERT INTO pgproof.audit_events (id, actor, action, subject) \
             VALUES ('00000000-0000-0000-0000-0000000000aa', 'a', 'login', 's'); RESET search_path;",
        )
        .await
        .unwrap();
    // A duplicate id raises, even under ON CONFLICT DO NOTHING, and the head stays put.
    let dup = client
        .batch_execute(
            "INSERT INTO pgproof.audit_events (id, actor, action, subject) \
             VALUES ('00000000-0000-0000-0000-0000000000aa', 'a', 'login', 's') ON CONFLICT DO NOTHING",
        )
        .await;
    assert!(dup.is_err(), "duplicate accepted");

    // Concurrent writers each get distinct, gap-free seqs.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let writer = connect(&cluster, "busy").await;
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                writer
                    .execute(
                        "INSERT INTO pgproof.audit_events (actor, action, subject, occurred_at) \
                         VALUES ('w', 'renew', $1, now() - random() * interval '1 hour')",
                        &[&format!("s{i}")],
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = verify_chain(&client).await.unwrap().unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.rows_walked, 101);
}
