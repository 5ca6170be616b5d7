//! pgproof-sink-gcs: a [`Sink`] on a Google Cloud Storage bucket, through
//! [`object_store`]'s `GoogleCloudStorage` client (the GCS XML API).
//!
//! `sink.url = "gs://bucket/prefix"`; `[sink]` options `service_account_file`,
//! `endpoint` (a GCS-compatible server's base URL), `allow_http`, `part_size_mib`,
//! `parts_in_flight`, `max_retries`, `retry_timeout_secs` and `request_timeout_secs`
//! apply. Credentials never come from the config itself: [`from_config`]
//! uses the service-account key file named by `sink.service_account_file`, else the
//! standard chain (`GOOGLE_SERVICE_ACCOUNT`, `GOOGLE_SERVICE_ACCOUNT_KEY`,
//! `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's application-default credentials, then
//! the instance metadata server).
//!
//! Uploads stream as XML-API multipart uploads with bounded memory, small objects and
//! manifests are put with `x-goog-if-generation-match: 0`, and failures abort the
//! upload; see [`pgproof_sink_object_store`] for the guarantees and their limits.

use std::sync::Arc;

use object_store::ClientConfigKey;
pub use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::gcp::GoogleConfigKey;
use pgproof_core::error::{Error, Result};
use pgproof_sink_object_store::{
    Location, ObjectStoreSink, Service, SinkConfig, UploadOptions, check_endpoint,
};

/// Opens the sink `config` describes, with credentials from
/// `sink.service_account_file` or the standard Google chain. Reads the key file;
/// sends no request.
pub fn from_config(config: &SinkConfig) -> Result<ObjectStoreSink> {
    from_builder(config, GoogleCloudStorageBuilder::from_env())
}

/// Like [`from_config`] on top of `builder`; the config's
/// bucket, endpoint, key file, timeouts and retries override it.
pub fn from_builder(
    config: &SinkConfig,
    builder: GoogleCloudStorageBuilder,
) -> Result<ObjectStoreSink> {
    let url = config
        .url
        .as_deref()
        .ok_or_else(|| Error::config("sink.url is not set; write gs://bucket/prefix"))?;
    let location = Location::parse(Service::Gcs, url)?;
    for (set, key) in [
        (config.region.is_some(), "sink.region"),
        (config.path_style.is_some(), "sink.path_style"),
    ] {
        if set {
            return Err(Error::config(format!(
                "{key} applies to s3:// sinks only; remove it for {url}"
            )));
        }
    }
    for (set, key) in [
        (config.account.is_some(), "sink.account"),
        (config.use_emulator, "sink.use_emulator"),
    ] {
        if set {
            return Err(Error::config(format!(
                "{key} applies to az:// sinks only; remove it for {url}"
            )));
        }
    }
    let options = UploadOptions::from_config(config);
    let mut builder = builder
        .with_bucket_name(&location.bucket)
        .with_retry(options.retry_config())
        .with_http_connector(pgproof_sink_object_store::Transport)
        .with_config(
            GoogleConfigKey::Client(ClientConfigKey::Timeout),
            format!("{}s", options.request_timeout.as_secs()),
        )
        .with_config(
            GoogleConfigKey::Client(ClientConfigKey::ConnectTimeout),
            format!("{}s", options.connect_timeout.as_secs()),
        );
    if let Some(endpoint) = &config.endpoint {
        check_endpoint(endpoint, config.allow_http)?;
        builder = builder.with_base_url(endpoint);
    }
    if config.allow_http {
        builder = builder.with_config(GoogleConfigKey::Client(ClientConfigKey::AllowHttp), "true");
    }
    if let Some(file) = &config.service_account_file {
        if !file.is_file() {
            return Err(Error::config(format!(
                "sink.service_account_file {} does not exist; download a key for the service account or remove the option to use GOOGLE_APPLICATION_CREDENTIALS",
                file.display()
            )));
        }
        builder = builder.with_service_account_path(file.to_string_lossy());
    }
    let location = location.with_endpoint(config.endpoint.clone());
    pgproof_sink_object_store::install_crypto_provider();
    let store = builder.build().map_err(|e| {
        Error::config(format!(
            "cannot set up the GCS client for {}: {e}; check sink.service_account_file or the GOOGLE_* environment",
            location.describe()
        ))
    })?;
    Ok(ObjectStoreSink::new(Arc::new(store), location, options))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgproof_core::sink::Sink;

    #[test]
    fn builds_from_a_key_file_without_network() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("sa.json");
        std::fs::write(
            &key,
            r#"{"private_key": "", "private_key_id": "", "client_email": "", "disable_oauth": true}"#,
        )
        .unwrap();
        let config = SinkConfig {
            url: Some("gs://bucket/pre".into()),
            endpoint: Some("http://127.0.0.1:9".into()),
            allow_http: true,
            service_account_file: Some(key),
            ..SinkConfig::default()
        };
        let sink = from_builder(&config, GoogleCloudStorageBuilder::new()).unwrap();
        assert_eq!(
            sink.describe(),
            "gs://bucket/pre (endpoint http://127.0.0.1:9)"
        );
    }

    #[test]
    fn s3_options_and_missing_key_files_are_refused() {
        let config = SinkConfig {
            url: Some("gs://bucket".into()),
            region: Some("eu-west-1".into()),
            ..SinkConfig::default()
        };
        let e = from_builder(&config, GoogleCloudStorageBuilder::new()).unwrap_err();
        assert!(e.to_string().contains("sink.region"), "{e}");
        let config = SinkConfig {
            url: Some("gs://bucket".into()),
            service_account_file: Some("/nonexistent/sa.json".into()),
            ..SinkConfig::default()
        };
        let e = from_builder(&config, GoogleCloudStorageBuilder::new()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/sa.json"), "{e}");
    }
}
