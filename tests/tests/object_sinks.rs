//! The object-store sinks' failure paths: transient errors retried, permanent ones
//! reported at once with what to check, failed or dropped uploads aborted — on moto,
//! the in-process GCS server and Azurite — plus the conformance suite against real
//! S3, GCS and Azure when credentials are supplied.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use pgproof_core::sink::testkit::{self, LARGE, pattern};
use pgproof_core::sink::{ByteStream, SinkExt};
use pgproof_core::{ErrorKind, Sink};
use pgproof_sink_azure::{AzureConfigKey, MicrosoftAzureBuilder};
use pgproof_sink_object_store::SinkConfig;
use pgproof_tests::azurite::Azurite;
use pgproof_tests::gcs_server::GcsServer;
use pgproof_tests::moto::Moto;

fn count(log: &[String], needle: &str) -> usize {
    log.iter().filter(|l| l.contains(needle)).count()
}

#[tokio::test]
async fn gcs_transient_errors_are_retried_then_reported() {
    let server = GcsServer::start();
    server.create_bucket("bkt");
    let sink = server.sink("bkt", "pgproof", 5, 2);

    // Two 503s, then success: the put goes through on the third attempt.
    server.fail_next("PUT /bkt/pgproof%2Fretried", 503, 2);
    sink.put_bytes("retried", Bytes::from_static(b"x"))
        .await
        .expect("retried put");
    assert_eq!(count(&server.requests(), "PUT /bkt/pgproof%2Fretried"), 3);

    // A server that keeps failing: Exhausted, after the configured retries.
    server.fail_next("GET /bkt?", 500, 100);
    let started = Instant::now();
    let err = sink.list("").await.unwrap_err();
    let text = err.to_string();
    assert!(err.kind() == ErrorKind::Exhausted, "{err:?}");
    for needle in [
        "GCS list of gs://bkt/pgproof/",
        "HTTP 500",
        "after 2 retries",
        "sink.max_retries",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
    assert_eq!(
        count(&server.requests(), "GET /bkt?"),
        3,
        "one try and two retries"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "retries back off"
    );
}

#[tokio::test]
async fn gcs_forbidden_bucket_fails_at_once_saying_what_to_check() {
    let server = GcsServer::start();
    server.create_bucket("locked");
    server.deny_bucket("locked");
    let sink = server.sink("locked", "pgproof", 5, 2);
    let started = Instant::now();
    let err = sink
        .put_bytes("db/k", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(err.kind() == ErrorKind::Auth, "{err:?}");
    for needle in [
        "GCS refused the put of gs://locked/pgproof/db/k",
        "bucket \"locked\"",
        "HTTP 403 Forbidden (AccessDenied",
        "sink.service_account_file",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
    assert_eq!(
        count(&server.requests(), "PUT /locked/"),
        1,
        "403 is not retried"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn s3_missing_bucket_fails_at_once_naming_it() {
    let Some(moto) = Moto::start() else { return };
    let sink = moto.sink("absent-bucket", "pgproof", 5, 2);
    let started = Instant::now();
    let err = sink
        .put_bytes("db/k", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(err.kind() == ErrorKind::Config, "{err:?}");
    for needle in [
        "S3 bucket \"absent-bucket\"",
        "does not exist",
        "put of s3://absent-bucket/pgproof/db/k",
        "NoSuchBucket",
        "sink.url",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
    let err = sink.list("").await.unwrap_err();
    assert!(err.kind() == ErrorKind::Config, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "404 is not retried"
    );
    assert_eq!(moto.log_text().matches("PUT /absent-bucket/").count(), 1);
}

#[tokio::test]
async fn gcs_failed_part_aborts_the_upload() {
    let server = GcsServer::start();
    server.create_bucket("bkt");
    let sink = server.sink("bkt", "pgproof", 5, 2);
    server.fail_next("partNumber=2", 503, 100);
    let body: ByteStream = futures::stream::iter(pattern(LARGE, 7).into_iter().map(Ok)).boxed();
    let err = sink.put("db/big", body).await.unwrap_err();
    let text = err.to_string();
    assert!(err.kind() == ErrorKind::Exhausted, "{err:?}");
    for needle in [
        "GCS part upload of gs://bkt/pgproof/db/big",
        "HTTP 503",
        "after 2 retries",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
    assert!(
        server.pending_uploads("bkt").is_empty(),
        "upload not aborted"
    );
    assert!(server.object_names("bkt").is_empty());
    assert_eq!(
        count(
            &server.requests(),
            "DELETE /bkt/pgproof%2Fdb%2Fbig?uploadId="
        ),
        1
    );
}

#[tokio::test]
async fn dropped_put_aborts_its_upload() {
    let server = GcsServer::start();
    server.create_bucket("bkt");
    let sink = server.sink("bkt", "pgproof", 5, 1);
    // Six MiB, then a producer that never finishes: one part goes up, then the put
    // waits for data until its future is dropped.
    let body: ByteStream = futures::stream::iter(pattern(6 << 20, 9).into_iter().map(Ok))
        .chain(futures::stream::pending())
        .boxed();
    let task = tokio::spawn(async move { sink.put("db/cancelled", body).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&server.requests(), "partNumber=1") == 0 {
        assert!(Instant::now() < deadline, "no part was uploaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.pending_uploads("bkt"), ["pgproof/db/cancelled"]);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    while !server.pending_uploads("bkt").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the dropped upload was not aborted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.object_names("bkt").is_empty());
}

/// Says loudly that a test did not run: written to the process's stderr directly, so
/// the test harness's output capture does not swallow it. Real clouds need
/// credentials CI does not have, so this is not a failure even with
/// `PGPROOF_REQUIRE_SERVICES=1`.
fn skipped(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {what} ***");
}

/// A run-unique prefix under the bucket URL, so runs never meet.
fn unique(url: &str) -> String {
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%S%.6f");
    format!("{}/pgproof-conformance-{stamp}", url.trim_end_matches('/'))
}

fn real_config(url: String) -> SinkConfig {
    SinkConfig {
        url: Some(url),
        part_size_mib: 5,
        parts_in_flight: 2,
        ..SinkConfig::default()
    }
}

#[tokio::test]
async fn real_gcs_conforms_when_credentials_are_supplied() {
    let Ok(url) = std::env::var("PGPROOF_TEST_GCS_URL") else {
        skipped(
            "real GCS conformance not run; set PGPROOF_TEST_GCS_URL=gs://bucket/prefix and GOOGLE_APPLICATION_CREDENTIALS (or GOOGLE_SERVICE_ACCOUNT) to run it",
        );
        return;
    };
    let sink = pgproof_sink_gcs::from_config(&real_config(unique(&url))).expect("GCS sink");
    eprintln!("running the conformance suite against {}", sink.describe());
    testkit::run_all(&sink).await;
}

#[tokio::test]
async fn real_s3_conforms_when_credentials_are_supplied() {
    let Ok(url) = std::env::var("PGPROOF_TEST_S3_URL") else {
        skipped(
            "real S3 conformance not run; set PGPROOF_TEST_S3_URL=s3://bucket/prefix with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION to run it",
        );
        return;
    };
    let sink = pgproof_sink_s3::from_config(&real_config(unique(&url))).expect("S3 sink");
    eprintln!("running the conformance suite against {}", sink.describe());
    testkit::run_all(&sink).await;
}

#[tokio::test]
async fn real_azure_conforms_when_credentials_are_supplied() {
    let Ok(url) = std::env::var("PGPROOF_TEST_AZURE_URL") else {
        skipped(
            "real Azure conformance not run; set PGPROOF_TEST_AZURE_URL=az://container/prefix with AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_SAS_TOKEN, or a managed identity) to run it",
        );
        return;
    };
    let sink = pgproof_sink_azure::from_config(&real_config(unique(&url))).expect("Azure sink");
    eprintln!("running the conformance suite against {}", sink.describe());
    testkit::run_all(&sink).await;
}

fn azure_sas_sink(
    azurite: &Azurite,
    container: &str,
    sas: &str,
) -> pgproof_sink_object_store::ObjectStoreSink {
    pgproof_sink_azure::from_builder(
        &azurite.sink_config(container, "pgproof", 5, 2),
        MicrosoftAzureBuilder::new().with_config(AzureConfigKey::SasKey, sas),
    )
    .unwrap()
}

/// A SAS token (what AZURE_STORAGE_SAS_TOKEN carries) is enough for the whole
/// contract — deletes go through Blob Batch, which must accept it too. A token that
/// does not permit writes, or has expired, is refused at once as an auth failure that
/// says what to check and shows no signature; an unreachable endpoint is retried, then
/// reported as exhausted.
#[tokio::test]
async fn azure_sas_tokens_work_and_refusals_say_what_to_check_on_azurite() {
    let Some(azurite) = Azurite::start() else {
        return;
    };
    azurite.create_container("sas");
    let full = azurite.container_sas("sas", "racwdl", "2099-01-01T00:00:00Z");
    testkit::run_all(&azure_sas_sink(&azurite, "sas", &full)).await;

    let read_only = azurite.container_sas("sas", "rl", "2099-01-01T00:00:00Z");
    let sink = azure_sas_sink(&azurite, "sas", &read_only);
    assert!(sink.list("").await.unwrap().is_empty());
    let started = Instant::now();
    let err = sink
        .put_bytes("db/k", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(err.kind() == ErrorKind::Auth, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "not retried");
    for needle in [
        "Azure refused the put of az://sas/pgproof/db/k",
        "in container \"sas\"",
        "HTTP 403",
        "AZURE_STORAGE_SAS_TOKEN",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
    let signature = read_only.split("sig=").nth(1).unwrap();
    assert!(!text.contains(signature), "{text}");

    let expired = azurite.container_sas("sas", "racwdl", "2020-01-01T00:00:00Z");
    let err = azure_sas_sink(&azurite, "sas", &expired)
        .list("")
        .await
        .unwrap_err();
    assert!(err.kind() == ErrorKind::Auth, "{err:?}");
    assert!(!err.to_string().contains("sig="), "{err}");

    let mut gone = azurite.sink_config("sas", "pgproof", 5, 2);
    gone.endpoint = Some(format!(
        "http://127.0.0.1:{}",
        pgproof_tests::moto::free_port()
    ));
    gone.retry_timeout_secs = 2;
    let sink = pgproof_sink_azure::from_builder(&gone, MicrosoftAzureBuilder::new()).unwrap();
    let err = sink.list("").await.unwrap_err();
    let text = err.to_string();
    assert!(err.kind() == ErrorKind::Exhausted, "{err:?}");
    for needle in [
        "Azure list of az://sas/pgproof/*",
        "cannot connect",
        "after 2 retries",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
}

/// An endpoint that drops connection attempts (a listener whose accept queue is full:
/// the kernel ignores further SYNs) fails each attempt after the connect timeout, not
/// the request timeout, and the request gives up when the retry budget is spent.
#[tokio::test]
async fn an_endpoint_that_drops_connections_fails_by_the_connect_timeout() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let port = listener.local_addr().unwrap().port();
    // Fill the accept queue; nobody ever accepts.
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let config = SinkConfig {
        url: Some("s3://bucket/prefix".into()),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("us-east-1".into()),
        allow_http: true,
        connect_timeout_secs: 1,
        request_timeout_secs: 300,
        max_retries: 100,
        retry_timeout_secs: 3,
        ..SinkConfig::default()
    };
    let sink = pgproof_sink_s3::from_builder(
        &config,
        pgproof_sink_s3::AmazonS3Builder::new()
            .with_access_key_id("test")
            .with_secret_access_key("test"),
    )
    .unwrap();
    let started = Instant::now();
    let err = sink.list("").await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Exhausted, "{err}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    drop(fillers);
    drop(listener);
}
