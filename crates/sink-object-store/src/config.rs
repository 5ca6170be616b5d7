//! The `[sink]` configuration: the sink's URL and the options every object-store sink
//! shares (S3-, GCS- and Azure-only options are marked), owned here rather than by the core,
//! which knows no object store.

use std::path::PathBuf;

use pgproof_core::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// `[sink]`: where backups go. Credentials are never part of it: object stores take
/// them from their standard environment and credential chains (or, for GCS, a
/// service-account file named here), so the config can be shown and stored safely.
/// (Azure's storage account name is not a credential and may be given here.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// `file:///path` or a plain path, `s3://bucket/prefix`, `gs://bucket/prefix` or
    /// `az://container/prefix` (also `azure://`).
    pub url: Option<String>,
    /// Object stores: the service endpoint, for S3-compatible servers
    /// (`http://127.0.0.1:9000`), a GCS emulator, or an Azure storage account's blob
    /// endpoint (`https://account.blob.core.windows.net`, a private endpoint; with
    /// `use_emulator`, Azurite's address such as `http://127.0.0.1:10000`); default:
    /// the service's own (`AWS_ENDPOINT` / `AWS_ENDPOINT_URL_S3` also set it for S3,
    /// `AZURE_STORAGE_ENDPOINT` for Azure).
    pub endpoint: Option<String>,
    /// S3: the bucket's region; default `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// S3: address buckets by path (`endpoint/bucket/key`, the default) or, when
    /// false, virtual-hosted style (`bucket.endpoint/key`).
    pub path_style: Option<bool>,
    /// Object stores: permit a plain `http://` endpoint (test servers only).
    pub allow_http: bool,
    /// GCS: a service-account key file; default: the standard chain
    /// (`GOOGLE_SERVICE_ACCOUNT`, `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's
    /// application-default credentials, the instance metadata server).
    pub service_account_file: Option<PathBuf>,
    /// Azure: the storage account's name; default `AZURE_STORAGE_ACCOUNT_NAME` (with
    /// `use_emulator`, Azurite's `devstoreaccount1`). Its key or SAS token only ever
    /// comes from the environment.
    pub account: Option<String>,
    /// Azure: talk to the Azurite emulator (test setups only): `endpoint` (default
    /// `AZURITE_BLOB_STORAGE_URL`, else `http://127.0.0.1:10000`) is Azurite's address,
    /// plain http is allowed, URLs carry the account in their path, and without
    /// credentials in the environment Azurite's published development key is used.
    /// `AZURE_STORAGE_USE_EMULATOR=true` sets it too.
    pub use_emulator: bool,
    /// Object stores: multipart part size in MiB, 5–5120. With the default 64, the
    /// 10,000-part limit caps one dump object at 625 GiB; raise it for larger
    /// databases (512 MiB parts hold 5 TiB). Memory used by an upload is at most
    /// `parts_in_flight × part_size_mib`.
    pub part_size_mib: u64,
    /// Object stores: parts held in memory at once (the one being filled plus those
    /// uploading), 1–64.
    pub parts_in_flight: usize,
    /// Object stores: most retries of a request that failed transiently (5xx, 429,
    /// timeouts, refused or reset connections), with jittered exponential backoff from
    /// 200 ms up to 15 s; `retry_timeout_secs` is the budget that normally ends them.
    /// Permanent errors (403, 404, 412, …) are never retried.
    pub max_retries: usize,
    /// Object stores: no new retry starts this many seconds after a request's first
    /// attempt.
    pub retry_timeout_secs: u64,
    /// Object stores: one request (a whole part upload included) may take this many
    /// seconds; a part of `part_size_mib` must go up faster than that.
    pub request_timeout_secs: u64,
    /// Object stores: establishing one connection (TCP and TLS) may take this many
    /// seconds; an endpoint that drops packets fails this fast and is retried, instead
    /// of waiting out `request_timeout_secs`.
    pub connect_timeout_secs: u64,
    /// S3: lock every object pgproof stores (S3 Object Lock) for `days` in `mode`
    /// (`governance` or `compliance`); the bucket must have Object Lock enabled.
    pub object_lock: Option<ObjectLockConfig>,
}

/// `sink.object_lock`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLockConfig {
    /// `governance` or `compliance`.
    pub mode: pgproof_core::sink::LockMode,
    /// Days from each backup's writing.
    pub days: u32,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            url: None,
            endpoint: None,
            region: None,
            path_style: None,
            allow_http: false,
            service_account_file: None,
            account: None,
            use_emulator: false,
            part_size_mib: 64,
            parts_in_flight: 4,
            max_retries: 100,
            retry_timeout_secs: 180,
            request_timeout_secs: 300,
            connect_timeout_secs: 10,
            object_lock: None,
        }
    }
}

/// Smallest multipart part S3 and GCS accept (all parts but the last); Azure's
/// blocks have no lower limit.
pub const MIN_PART_SIZE_MIB: u64 = 5;
/// Largest multipart part S3 and GCS accept (Azure's blocks: 4000 MiB, checked by its
/// sink).
pub const MAX_PART_SIZE_MIB: u64 = 5 << 10;
/// Most parts one multipart upload may have (S3 and GCS; Azure allows 50,000 blocks,
/// pgproof keeps to the common limit).
pub const MAX_PARTS: u64 = 10_000;

impl SinkConfig {
    /// Checks values serde cannot: ranges.
    pub fn validate(&self) -> Result<()> {
        if !(MIN_PART_SIZE_MIB..=MAX_PART_SIZE_MIB).contains(&self.part_size_mib) {
            return Err(Error::config(format!(
                "sink.part_size_mib = {} is out of range; S3 and GCS accept parts of {MIN_PART_SIZE_MIB} to {MAX_PART_SIZE_MIB} MiB",
                self.part_size_mib
            )));
        }
        if !(1..=64).contains(&self.parts_in_flight) {
            return Err(Error::config(format!(
                "sink.parts_in_flight = {} is out of range; use 1 to 64 (memory is parts_in_flight x part_size_mib)",
                self.parts_in_flight
            )));
        }
        if self.connect_timeout_secs == 0 {
            return Err(Error::config(
                "sink.connect_timeout_secs = 0 would fail every connection; use a positive number of seconds",
            ));
        }
        if let Some(lock) = &self.object_lock {
            if lock.days == 0 {
                return Err(Error::config(format!(
                    "sink.object_lock = {{ mode = \"{}\", days = {} }}: days is at least 1",
                    lock.mode, lock.days
                )));
            }
            if !self.url.as_deref().is_some_and(|u| u.starts_with("s3://")) {
                return Err(Error::config(
                    "sink.object_lock is built for s3:// sinks only (GCS retention and Azure immutability policies are not); set the bucket's own retention there",
                ));
            }
        }
        if self.request_timeout_secs == 0 {
            return Err(Error::config(
                "sink.request_timeout_secs = 0 would fail every request; use a positive number of seconds",
            ));
        }
        Ok(())
    }
}
