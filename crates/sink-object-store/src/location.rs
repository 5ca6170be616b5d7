//! Which service, bucket and key prefix a sink writes to, parsed from `sink.url`.

use pgproof_core::error::{Error, Result};
use pgproof_core::sink::validate_key;

/// The object-store services pgproof has sinks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Amazon S3 and S3-compatible servers.
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage (the bucket is a container of a storage account).
    Azure,
}

impl Service {
    /// URL scheme: `s3`, `gs` or `az`.
    pub fn scheme(self) -> &'static str {
        match self {
            Service::S3 => "s3",
            Service::Gcs => "gs",
            Service::Azure => "az",
        }
    }

    /// Other schemes [`Location::parse`] accepts for the service: `azure` for `az`.
    pub fn scheme_aliases(self) -> &'static [&'static str] {
        match self {
            Service::S3 | Service::Gcs => &[],
            Service::Azure => &["azure"],
        }
    }

    /// What the service calls a bucket, in messages.
    pub fn bucket_word(self) -> &'static str {
        match self {
            Service::S3 | Service::Gcs => "bucket",
            Service::Azure => "container",
        }
    }

    /// Name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Service::S3 => "S3",
            Service::Gcs => "GCS",
            Service::Azure => "Azure",
        }
    }

    /// What to check when the service refuses the credentials.
    pub(crate) fn auth_hint(self) -> &'static str {
        match self {
            Service::S3 => {
                "check the credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), or the web-identity, container or instance role, and that the bucket policy allows s3:PutObject, s3:GetObject, s3:ListBucket, s3:DeleteObject and s3:AbortMultipartUpload"
            }
            Service::Gcs => {
                "check sink.service_account_file or GOOGLE_SERVICE_ACCOUNT / GOOGLE_APPLICATION_CREDENTIALS (or the instance's service account), and that the account may create, read, list and delete objects in the bucket (e.g. roles/storage.objectAdmin)"
            }
            Service::Azure => {
                "check sink.account (or AZURE_STORAGE_ACCOUNT_NAME) and the credential in AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN (a SAS with read, add, create, write, delete and list permissions that has not expired), or the managed or workload identity (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE), which needs a role such as Storage Blob Data Contributor on the container"
            }
        }
    }

    /// What to check when the request itself is rejected (400, redirects).
    pub(crate) fn request_hint(self) -> &'static str {
        match self {
            Service::S3 => {
                "check sink.region (the bucket's region), sink.endpoint and sink.path_style"
            }
            Service::Gcs => "check sink.endpoint and the bucket name",
            Service::Azure => "check sink.account, sink.endpoint and the container name",
        }
    }
}

/// A bucket and key prefix on one service, plus a custom endpoint if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The service.
    pub service: Service,
    /// The bucket.
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// A non-default endpoint, for messages.
    pub endpoint: Option<String>,
}

impl Location {
    /// Parses `<scheme>://bucket[/prefix]` (for Azure, `az://container[/prefix]` or
    /// `azure://…`). The URL is echoed in errors only when it cannot hold a credential.
    pub fn parse(service: Service, url: &str) -> Result<Self> {
        let scheme = service.scheme();
        let bucket_word = service.bucket_word();
        let Some(rest) = std::iter::once(scheme)
            .chain(service.scheme_aliases().iter().copied())
            .find_map(|s| url.strip_prefix(s)?.strip_prefix("://"))
        else {
            return Err(Error::config(format!(
                "sink.url {url:?} is not an {scheme}:// URL"
            )));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.contains('@') {
            return Err(Error::config(format!(
                "sink.url must not carry credentials (it has user information before the {bucket_word}); write {scheme}://{bucket_word}/prefix and supply credentials through the environment{}",
                match service {
                    Service::S3 => " (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)",
                    Service::Gcs => " or sink.service_account_file",
                    Service::Azure =>
                        " (AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN or a managed identity) and the storage account in sink.account or AZURE_STORAGE_ACCOUNT_NAME",
                }
            )));
        }
        if let Some(cut) = url.find(['?', '#']) {
            // Not echoed past the cut: a query may be a SAS token or a presigned URL's.
            return Err(Error::config(format!(
                "sink.url {:?} has a query or fragment; write {scheme}://{bucket_word}/prefix, put options in the [sink] section and credentials in the environment",
                &url[..cut]
            )));
        }
        let valid = match service {
            Service::S3 | Service::Gcs => valid_bucket(bucket),
            Service::Azure => valid_container(bucket),
        };
        if !valid {
            return Err(Error::config(match service {
                Service::S3 | Service::Gcs => format!(
                    "sink.url {url:?} does not name a valid bucket; write {scheme}://bucket/prefix with a bucket of 3 to 222 lowercase letters, digits, '.', '-' or '_'"
                ),
                Service::Azure => format!(
                    "sink.url {url:?} does not name a valid container; write az://container/prefix with a container of 3 to 63 lowercase letters, digits and single '-' between them"
                ),
            }));
        }
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty() && validate_key(prefix).is_err() {
            return Err(Error::config(format!(
                "sink.url {url:?} has an invalid key prefix {prefix:?}: use '/'-separated names without empty, '.' or '..' segments"
            )));
        }
        Ok(Self {
            service,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            endpoint: None,
        })
    }

    /// The same location reached through `endpoint`.
    pub fn with_endpoint(mut self, endpoint: Option<String>) -> Self {
        self.endpoint = endpoint;
        self
    }

    /// `s3://bucket/prefix`, plus the endpoint when it is not the service's own.
    pub fn describe(&self) -> String {
        let url = self.url_of("");
        let url = url.trim_end_matches('/');
        match &self.endpoint {
            Some(endpoint) => format!("{url} (endpoint {endpoint})"),
            None => url.to_owned(),
        }
    }

    /// `s3://bucket/prefix/key`.
    pub fn url_of(&self, key: &str) -> String {
        format!(
            "{}://{}/{}",
            self.service.scheme(),
            self.bucket,
            self.full_key(key)
        )
    }

    /// The object name of `key` inside the bucket.
    pub fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    /// What every object name of this sink starts with: `prefix/`, or nothing.
    pub fn root_prefix(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    /// The raw listing prefix for a sink-relative `prefix`.
    pub fn full_prefix(&self, prefix: &str) -> String {
        format!("{}{prefix}", self.root_prefix())
    }
}

fn valid_bucket(bucket: &str) -> bool {
    let bytes = bucket.as_bytes();
    (3..=222).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// Azure's container names: 3 to 63 lowercase letters, digits and hyphens, starting
/// and ending with a letter or digit, no two hyphens in a row.
fn valid_container(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && !name.contains("--")
}

/// Checks `sink.endpoint`: an http(s) URL without user information; plain http only
/// with `sink.allow_http`.
pub fn check_endpoint(endpoint: &str, allow_http: bool) -> Result<()> {
    if endpoint.contains('@') {
        return Err(Error::config(
            "sink.endpoint must not carry credentials (it has user information before the host); supply them through the environment",
        ));
    }
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return Err(Error::config(format!(
            "sink.endpoint {endpoint:?} is not a URL; write https://host[:port]"
        )));
    };
    if rest.split('/').next().unwrap_or("").is_empty() {
        return Err(Error::config(format!(
            "sink.endpoint {endpoint:?} names no host"
        )));
    }
    match scheme {
        "https" => Ok(()),
        "http" if allow_http => Ok(()),
        "http" => Err(Error::config(format!(
            "sink.endpoint {endpoint:?} is plain http; use https, or set sink.allow_http = true for a test server"
        ))),
        _ => Err(Error::config(format!(
            "sink.endpoint {endpoint:?} must start with https:// (or http:// with sink.allow_http)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgproof_core::ErrorKind;

    #[test]
    fn urls_parse_into_bucket_and_prefix() {
        let l = Location::parse(Service::S3, "s3://my-bucket/a/b/").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("my-bucket", "a/b"));
        assert_eq!(l.url_of("x/y"), "s3://my-bucket/a/b/x/y");
        assert_eq!(l.full_prefix(""), "a/b/");
        assert_eq!(l.describe(), "s3://my-bucket/a/b");
        let l = Location::parse(Service::Gcs, "gs://b_1").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("b_1", ""));
        assert_eq!(l.full_prefix("db/"), "db/");
        assert_eq!(l.describe(), "gs://b_1");
        assert_eq!(
            l.with_endpoint(Some("http://127.0.0.1:9".into()))
                .describe(),
            "gs://b_1 (endpoint http://127.0.0.1:9)"
        );
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_credentials() {
        for bad in [
            "s3://",
            "s3:///prefix",
            "s3://UPPER",
            "s3://b",
            "s3://bucket/a//b",
            "s3://bucket/../x",
            "s3://bucket?region=x",
            "gs://bucket",
        ] {
            assert!(Location::parse(Service::S3, bad).is_err(), "{bad} accepted");
        }
        let e = Location::parse(Service::S3, "s3://AKIAXX:s3cr3t@bucket/x").unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        assert!(e.kind() == ErrorKind::Config);
    }

    #[test]
    fn azure_urls_name_a_container_and_accept_both_schemes() {
        let l = Location::parse(Service::Azure, "az://backups/prod/pg/").unwrap();
        assert_eq!(
            (l.bucket.as_str(), l.prefix.as_str()),
            ("backups", "prod/pg")
        );
        assert_eq!(l.url_of("db/k"), "az://backups/prod/pg/db/k");
        let l = Location::parse(Service::Azure, "azure://backups").unwrap();
        assert_eq!(l.describe(), "az://backups");
        for bad in [
            "az://Upper",
            "az://a_b_c",
            "az://a.b.c",
            "az://ab",
            "az://-abc",
            "az://abc-",
            "az://a--b",
            "s3://backups",
            "az://backups?sv=2024",
        ] {
            assert!(
                Location::parse(Service::Azure, bad).is_err(),
                "{bad} accepted"
            );
        }
        let e = Location::parse(Service::Azure, "az://backups/x?sv=2024&sig=s3cr3t").unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        let e = Location::parse(Service::Azure, "az://backups@acct.blob.core.windows.net/x")
            .unwrap_err();
        assert!(e.to_string().contains("sink.account"), "{e}");
    }

    #[test]
    fn endpoints_need_a_scheme_and_no_credentials() {
        assert!(check_endpoint("https://s3.example", false).is_ok());
        assert!(check_endpoint("http://127.0.0.1:9000", true).is_ok());
        assert!(check_endpoint("http://127.0.0.1:9000", false).is_err());
        assert!(check_endpoint("127.0.0.1:9000", true).is_err());
        let e = check_endpoint("https://key:s3cr3t@host", false).unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
    }
}
