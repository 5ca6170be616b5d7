//! pgproof-sink-s3: a [`Sink`] on an Amazon S3 bucket or any S3-compatible server,
//! through [`object_store`]'s `AmazonS3` client.
//!
//! `sink.url = "s3://bucket/prefix"`; `[sink]` options `endpoint`, `region`,
//! `path_style`, `allow_http`, `part_size_mib`, `parts_in_flight`, `max_retries`,
//! `retry_timeout_secs` and `request_timeout_secs` apply. Credentials never come from
//! the config: [`from_config`] reads the standard AWS environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT`,
//! `AWS_ENDPOINT_URL_S3`, web identity, container credentials) and falls back to the
//! instance metadata service, and so does [`versions::Bucket::from_config`], for the
//! bucket-level requests behind `config check`, `list --hidden` and `undelete`.
//! (Shared-file profiles in `~/.aws/credentials` are not read.)
//!
//! Uploads stream as multipart uploads with bounded memory, small objects and
//! manifests are put with `If-None-Match: *`, and failures abort the upload; see
//! [`pgproof_sink_object_store`] for the guarantees and their limits.

pub use object_store::aws::AmazonS3Builder;
use object_store::aws::{AmazonS3, AmazonS3ConfigKey};
pub mod versions;

use object_store::aws::Checksum;
use object_store::{ClientConfigKey, ClientOptions};
use pgproof_core::error::{Error, Result};
use pgproof_core::sink::RetentionLock;
use pgproof_sink_object_store::{
    Location, ObjectStoreSink, Service, SinkConfig, UploadOptions, check_endpoint,
};
use reqwest::header::{HeaderMap, HeaderValue};

/// Opens the sink `config` describes, with credentials from the standard AWS
/// environment and credential chain. No request is sent.
pub fn from_config(config: &SinkConfig) -> Result<ObjectStoreSink> {
    from_builder(config, AmazonS3Builder::from_env())
}

/// Like [`from_config`] on top of `builder`, which may carry
/// credentials or client settings of the caller's choice; the config's bucket,
/// endpoint, region, path style, timeouts and retries override it.
pub fn from_builder(config: &SinkConfig, mut builder: AmazonS3Builder) -> Result<ObjectStoreSink> {
    let options = UploadOptions::from_config(config);
    // Object Lock: the lock headers on every request (S3 reads them on PutObject and
    // CreateMultipartUpload, ignores them elsewhere), and a checksum, which S3
    // requires on writes that carry them. Set before `build`, whose timeouts
    // would be dropped by a later `with_client_options`.
    let retention = config.object_lock.as_ref().map(|lock| RetentionLock {
        mode: lock.mode,
        retain_until: jiff::Timestamp::now()
            + jiff::SignedDuration::from_hours(24 * i64::from(lock.days)),
    });
    if let Some(lock) = &retention {
        let mut headers = HeaderMap::new();
        let value = |text: &str| {
            HeaderValue::from_str(text).map_err(|e| Error::config(format!("sink.object_lock: {e}")))
        };
        headers.insert(
            "x-amz-object-lock-mode",
            value(&lock.mode.as_str().to_ascii_uppercase())?,
        );
        headers.insert(
            "x-amz-object-lock-retain-until-date",
            value(&lock.retain_until.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())?,
        );
        // What AWS's SDKs send beside x-amz-checksum-sha256; moto (like older S3
        // endpoints) looks for it before it takes a locked object.
        headers.insert(
            "x-amz-sdk-checksum-algorithm",
            HeaderValue::from_static("SHA256"),
        );
        builder = builder
            .with_client_options(ClientOptions::new().with_default_headers(headers))
            .with_checksum_algorithm(Checksum::SHA256);
    }
    // A lock is extended by a request object_store does not make: the bucket's own
    // presigned one, signed the same way.
    let extender = match &retention {
        Some(_) => Some(std::sync::Arc::new(versions::Bucket::from_builder(
            config,
            builder.clone(),
        )?)
            as std::sync::Arc<dyn pgproof_sink_object_store::LockExtender>),
        None => None,
    };
    let (store, location) = build(config, builder)?;
    Ok(
        ObjectStoreSink::new(std::sync::Arc::new(store), location, options)
            .with_retention(retention, extender),
    )
}

/// The S3 client for the bucket `config` names, and where it points: `builder` with
/// the config's bucket, endpoint, region, path style, timeouts and retries. Shared by
/// the sink and [`versions::Bucket`], so both address and sign the same way.
pub(crate) fn build(config: &SinkConfig, builder: AmazonS3Builder) -> Result<(AmazonS3, Location)> {
    let url = config
        .url
        .as_deref()
        .ok_or_else(|| Error::config("sink.url is not set; write s3://bucket/prefix"))?;
    let location = Location::parse(Service::S3, url)?;
    if config.service_account_file.is_some() {
        return Err(Error::config(
            "sink.service_account_file applies to gs:// sinks; S3 credentials come from the AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, …) or the instance role",
        ));
    }
    if config.account.is_some() || config.use_emulator {
        return Err(Error::config(format!(
            "sink.account and sink.use_emulator apply to az:// sinks only; remove them for {url}"
        )));
    }
    let options = UploadOptions::from_config(config);
    let mut builder = builder
        .with_bucket_name(&location.bucket)
        .with_retry(options.retry_config())
        .with_http_connector(pgproof_sink_object_store::Transport)
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
            format!("{}s", options.request_timeout.as_secs()),
        )
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            format!("{}s", options.connect_timeout.as_secs()),
        );
    if let Some(endpoint) = &config.endpoint {
        check_endpoint(endpoint, config.allow_http)?;
        builder = builder.with_endpoint(endpoint);
    }
    if config.allow_http {
        builder = builder.with_allow_http(true);
    }
    if let Some(region) = &config.region {
        builder = builder.with_region(region);
    }
    if let Some(path_style) = config.path_style {
        builder = builder.with_virtual_hosted_style_request(!path_style);
    }
    let endpoint = builder
        .get_config_value(&AmazonS3ConfigKey::Endpoint)
        .filter(|e| !e.contains('@'));
    let location = location.with_endpoint(endpoint);
    pgproof_sink_object_store::install_crypto_provider();
    let store = builder.build().map_err(|e| {
        Error::config(format!(
            "cannot set up the S3 client for {}: {e}; check the [sink] options and the AWS_* environment",
            location.describe()
        ))
    })?;
    Ok((store, location))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgproof_core::ErrorKind;
    use pgproof_core::sink::Sink;

    fn config(url: &str) -> SinkConfig {
        SinkConfig {
            url: Some(url.into()),
            ..SinkConfig::default()
        }
    }

    #[test]
    fn builds_without_network_and_describes_without_credentials() {
        let mut c = config("s3://bucket/backups/");
        c.endpoint = Some("http://127.0.0.1:9".into());
        c.allow_http = true;
        let builder = AmazonS3Builder::new()
            .with_access_key_id("AKIAEXAMPLE")
            .with_secret_access_key("s3cr3t-value");
        let sink = from_builder(&c, builder).unwrap();
        assert_eq!(
            sink.describe(),
            "s3://bucket/backups (endpoint http://127.0.0.1:9)"
        );
        let debug = format!("{sink:?}");
        assert!(!debug.contains("s3cr3t-value"), "{debug}");
    }

    #[test]
    fn options_that_do_not_apply_are_refused() {
        let mut c = config("s3://bucket");
        c.service_account_file = Some("/x.json".into());
        assert!(matches!(
            from_builder(&c, AmazonS3Builder::new()),
            Err(e) if e.kind() == ErrorKind::Config
        ));
        let mut c = config("s3://bucket");
        c.endpoint = Some("http://127.0.0.1:9".into());
        let e = from_builder(&c, AmazonS3Builder::new()).unwrap_err();
        assert!(e.to_string().contains("allow_http"), "{e}");
    }

    /// An endpoint that accepts connections and closes them at once (a server or
    /// load balancer coming back from an outage) is retried like a refused one,
    /// however the transport reports the closed connection.
    #[tokio::test]
    async fn connections_closed_before_the_request_are_retried() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        std::thread::spawn({
            let accepted = accepted.clone();
            move || {
                for conn in listener.incoming() {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    drop(conn);
                }
            }
        });
        let mut c = config("s3://bucket/backups");
        c.endpoint = Some(format!("http://127.0.0.1:{port}"));
        c.allow_http = true;
        c.max_retries = 3;
        c.retry_timeout_secs = 30;
        let builder = AmazonS3Builder::new()
            .with_access_key_id("AKIAEXAMPLE")
            .with_secret_access_key("secret");
        let sink = from_builder(&c, builder).unwrap();
        for attempt in 0..3 {
            let before = accepted.load(std::sync::atomic::Ordering::SeqCst);
            let e = sink.list("").await.unwrap_err();
            let tries = accepted.load(std::sync::atomic::Ordering::SeqCst) - before;
            assert_eq!(tries, 4, "attempt {attempt}: {tries} connections for {e}");
            assert!(e.to_string().contains("after 3 retries"), "{e}");
        }
    }
}
