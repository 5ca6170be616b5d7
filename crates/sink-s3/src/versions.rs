//! The few bucket-level S3 requests object_store does not make: reading a bucket's
//! versioning and Object Lock configuration, listing delete markers, and removing one
//! (which brings a hidden object back). Each request is presigned by object_store's
//! own S3 client, built from the same `[sink]` settings as the sink: the same
//! credential chain (environment, web identity, container credentials, instance
//! metadata), region, endpoint and path or virtual-hosted style. It is then sent with
//! reqwest; the signed URL never appears in an error.

use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::{Method, SignedUrlOptions, Signer, Url};
use pgproof_core::error::{Error, Result};
use pgproof_sink_object_store::{Location, SinkConfig, UploadOptions};

/// How long a presigned request stays valid: it is sent at once.
const EXPIRY: Duration = Duration::from_secs(300);

/// A bucket's versioning and Object Lock configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockConfiguration {
    /// Versioning is enabled (Object Lock needs it).
    pub versioning: bool,
    /// Object Lock is enabled on the bucket.
    pub object_lock: bool,
    /// The bucket's default retention, as `MODE N days|years`, if any.
    pub default_retention: Option<String>,
}

/// A key whose current version is a delete marker: hidden, its versions still there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hidden {
    /// The key, relative to the bucket.
    pub key: String,
    /// The delete marker's version id.
    pub marker: String,
}

/// Bucket-level requests on one bucket.
pub struct Bucket {
    store: AmazonS3,
    location: Location,
    client: reqwest::Client,
    /// The sink's retry budget: attempts, and the time after which none starts.
    retries: (usize, Duration),
}

impl Bucket {
    /// The bucket of the s3:// sink `config` describes, with credentials from the
    /// standard AWS environment and credential chain, as the sink gets them. No
    /// request is sent.
    pub fn from_config(config: &SinkConfig) -> Result<Self> {
        Self::from_builder(config, AmazonS3Builder::from_env())
    }

    /// Like [`Bucket::from_config`] on top of `builder`, which may carry credentials
    /// of the caller's choice; the config's bucket, endpoint, region and path style
    /// override it.
    pub fn from_builder(config: &SinkConfig, builder: AmazonS3Builder) -> Result<Self> {
        let (store, location) = crate::build(config, builder)?;
        let options = UploadOptions::from_config(config);
        pgproof_sink_object_store::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .connect_timeout(options.connect_timeout)
            .build()
            .map_err(|e| {
                Error::tool(format!("cannot build an HTTP client: {}", e.without_url()))
            })?;
        Ok(Self {
            store,
            location,
            client,
            retries: (options.max_retries, options.retry_timeout),
        })
    }

    /// Versioning and Object Lock as the bucket reports them.
    pub async fn lock_configuration(&self) -> Result<LockConfiguration> {
        let versioning = self.request(Method::GET, "", &[("versioning", "")]).await?;
        let lock = match self.request(Method::GET, "", &[("object-lock", "")]).await {
            Ok(body) => body,
            // No configuration at all is a 404 with this code.
            Err(e)
                if e.to_string()
                    .contains("ObjectLockConfigurationNotFoundError") =>
            {
                String::new()
            }
            Err(e) => return Err(e),
        };
        let retention = tag(&lock, "DefaultRetention").map(|r| {
            let mode = tag(r, "Mode").unwrap_or("?");
            match (tag(r, "Days"), tag(r, "Years")) {
                (Some(d), _) => format!("{mode} {d} days"),
                (_, Some(y)) => format!("{mode} {y} years"),
                _ => mode.to_owned(),
            }
        });
        Ok(LockConfiguration {
            versioning: tag(&versioning, "Status") == Some("Enabled"),
            object_lock: tag(&lock, "ObjectLockEnabled") == Some("Enabled"),
            default_retention: retention,
        })
    }

    /// Keys under `prefix` whose current version is a delete marker.
    pub async fn hidden(&self, prefix: &str) -> Result<Vec<Hidden>> {
        let mut found = Vec::new();
        let mut marker: Option<(String, String)> = None;
        loop {
            let mut query = vec![("versions", ""), ("prefix", prefix)];
            if let Some((key, version)) = &marker {
                query.push(("key-marker", key));
                query.push(("version-id-marker", version));
            }
            let body = self.request(Method::GET, "", &query).await?;
            for entry in body.split("<DeleteMarker>").skip(1) {
                let entry = entry.split("</DeleteMarker>").next().unwrap_or("");
                if tag(entry, "IsLatest") == Some("true")
                    && let (Some(key), Some(version)) = (tag(entry, "Key"), tag(entry, "VersionId"))
                {
                    found.push(Hidden {
                        key: unescape(key),
                        marker: version.to_owned(),
                    });
                }
            }
            if tag(&body, "IsTruncated") != Some("true") {
                return Ok(found);
            }
            marker = match (
                tag(&body, "NextKeyMarker"),
                tag(&body, "NextVersionIdMarker"),
            ) {
                (Some(k), Some(v)) => Some((unescape(k), v.to_owned())),
                _ => return Ok(found),
            };
        }
    }

    /// Removes a delete marker, bringing the version under it back.
    pub async fn remove_marker(&self, hidden: &Hidden) -> Result<()> {
        self.request(
            Method::DELETE,
            &hidden.key,
            &[("versionId", &hidden.marker)],
        )
        .await
        .map(|_| ())
    }

    /// The URL of one request, presigned with the store's credentials, region and
    /// addressing. It carries the signature (and any session token): never show it.
    async fn presign(&self, method: Method, key: &str, query: &[(&str, &str)]) -> Result<Url> {
        let path = if key.is_empty() {
            Path::default()
        } else {
            Path::parse(key).map_err(|e| {
                Error::database(format!(
                    "S3 listed the key {key:?}, which is not a valid path: {e}"
                ))
            })?
        };
        let options = SignedUrlOptions::new().with_query(query.iter().copied());
        self.store
            .signed_url_opts(method, &path, EXPIRY, &options)
            .await
            .map_err(|e| {
                Error::auth(format!(
                    "cannot sign a request to {}: {e}; check the AWS_* environment or the instance role",
                    self.location.describe()
                ))
            })
    }

    async fn request(&self, method: Method, key: &str, query: &[(&str, &str)]) -> Result<String> {
        self.request_with(method, key, query, None).await
    }

    /// [`request`](Self::request) with an XML body, sent with its Content-MD5 (which
    /// S3 requires of Object Lock requests). A transient failure (no answer, 5xx,
    /// throttling) is tried again within the sink's retry budget: these requests
    /// are idempotent.
    async fn request_with(
        &self,
        method: Method,
        key: &str,
        query: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<String> {
        let (max_retries, budget) = self.retries;
        let started = std::time::Instant::now();
        let mut backoff = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            match self.attempt(method.clone(), key, query, body.clone()).await {
                Err(e) if e.kind() == pgproof_core::ErrorKind::Transient => {
                    attempt += 1;
                    if attempt > max_retries || started.elapsed() + backoff > budget {
                        return Err(Error::new(
                            pgproof_core::ErrorKind::Exhausted,
                            format!("{} (after {attempt} attempts)", e.message()),
                        ));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                outcome => return outcome,
            }
        }
    }

    /// Sends a presigned request; no answer is transient, and the error never
    /// carries the signed URL.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        request
            .send()
            .await
            .map_err(|e| self.unanswered("cannot reach", e))
    }

    /// A request without an answer (none came, or it broke off): transient, and
    /// without the signed URL.
    fn unanswered(&self, doing: &str, e: reqwest::Error) -> Error {
        let why = if e.is_timeout() {
            "timed out".to_owned()
        } else {
            chain(&e.without_url())
        };
        Error::transient(format!(
            "{doing} the bucket {}: {why}",
            self.location.describe()
        ))
    }

    async fn attempt(
        &self,
        method: Method,
        key: &str,
        query: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<String> {
        let url = self.presign(method.clone(), key, query).await?;
        let mut request = self.client.request(method, url);
        if let Some(body) = body {
            use base64::Engine;
            use md5::Digest;
            let digest = md5::Md5::digest(body.as_bytes());
            request = request
                .header(
                    "Content-MD5",
                    base64::engine::general_purpose::STANDARD.encode(digest),
                )
                .body(body);
        }
        let response = self.send(request).await?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| self.unanswered("reading the answer of", e))?;
        if status.is_success() {
            return Ok(body);
        }
        let code = tag(&body, "Code").unwrap_or("");
        let message = format!(
            "S3 answered {status} ({code}) for {} on bucket {}",
            query.first().map_or("the object", |(k, _)| k),
            self.location.bucket
        );
        Err(match status.as_u16() {
            429 | 500..=599 => Error::transient(message),
            404 => Error::new(pgproof_core::ErrorKind::NotFound, message),
            401 | 403 => Error::auth(format!(
                "{message}; the credentials need s3:GetBucketVersioning, s3:GetBucketObjectLockConfiguration, s3:ListBucketVersions, s3:DeleteObjectVersion and, with dedup and sink.object_lock, s3:PutObjectRetention and s3:GetObjectRetention"
            )),
            _ => Error::database(message),
        })
    }
}

/// Extends a stored object's lock with PutObjectRetention on its current version: a
/// deduplicated backup's shared chunks stay locked as long as the newest backup that
/// uses them. S3 itself refuses to shorten a lock in compliance mode; in governance
/// mode it refuses without the bypass permission, which pgproof never asks for.
#[async_trait::async_trait]
impl pgproof_sink_object_store::LockExtender for Bucket {
    async fn extend(&self, full_key: &str, lock: &pgproof_core::sink::RetentionLock) -> Result<()> {
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
            lock.mode.as_str().to_ascii_uppercase(),
            lock.retain_until.strftime("%Y-%m-%dT%H:%M:%SZ")
        );
        match self
            .request_with(Method::PUT, full_key, &[("retention", "")], Some(body))
            .await
        {
            Ok(_) => Ok(()),
            // Refused: S3 will not shorten a lock or weaken its mode (a lowered
            // `days`, compliance turned into governance, an overlapping backup that
            // locked the chunk later). What counts is that it is locked at least as
            // long, at least as strongly.
            Err(e) if e.kind() == pgproof_core::ErrorKind::Auth => {
                match self.current_lock(full_key).await? {
                    Some((mode, retain_until))
                        if (pgproof_core::sink::RetentionLock { mode, retain_until })
                            .covers(lock) =>
                    {
                        Ok(())
                    }
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }
}

impl Bucket {
    /// The lock on the current version of `full_key`, as HEAD shows it (`None`: no
    /// lock, or none S3 shows these credentials).
    async fn current_lock(
        &self,
        full_key: &str,
    ) -> Result<Option<(pgproof_core::sink::LockMode, jiff::Timestamp)>> {
        let url = self.presign(Method::HEAD, full_key, &[]).await?;
        let response = self.send(self.client.request(Method::HEAD, url)).await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let mode = match header("x-amz-object-lock-mode").as_deref() {
            Some("COMPLIANCE") => pgproof_core::sink::LockMode::Compliance,
            Some("GOVERNANCE") => pgproof_core::sink::LockMode::Governance,
            _ => return Ok(None),
        };
        let until = header("x-amz-object-lock-retain-until-date")
            .and_then(|d| d.parse::<jiff::Timestamp>().ok());
        Ok(until.map(|until| (mode, until)))
    }
}

/// An error and its causes, `: `-joined (reqwest's own text stops at the first).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The text of the first `<name>…</name>` in `xml`.
fn tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))?;
    Some(&xml[start..start + end])
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t-value";
    const TOKEN: &str = "session-t0ken-value";

    fn bucket(path_style: bool, endpoint: Option<&str>) -> Bucket {
        let config = SinkConfig {
            url: Some("s3://my-bucket/backups".into()),
            region: Some("eu-west-1".into()),
            path_style: Some(path_style),
            endpoint: endpoint.map(str::to_owned),
            allow_http: endpoint.is_some(),
            // An unreachable endpoint is tried again within this budget only.
            max_retries: 2,
            retry_timeout_secs: 1,
            ..SinkConfig::default()
        };
        let builder = AmazonS3Builder::new()
            .with_access_key_id("AKIAEXAMPLE")
            .with_secret_access_key(SECRET)
            .with_token(TOKEN);
        Bucket::from_builder(&config, builder).unwrap()
    }

    #[tokio::test]
    async fn requests_follow_the_configured_addressing_style() {
        let url = bucket(false, None)
            .presign(Method::GET, "", &[("versions", ""), ("prefix", "pg/")])
            .await
            .unwrap();
        assert_eq!(url.host_str(), Some("my-bucket.s3.eu-west-1.amazonaws.com"));
        assert_eq!(url.path(), "/");
        let query = url.query().unwrap();
        assert!(
            query.starts_with("versions=&prefix=pg%2F&X-Amz-Algorithm=AWS4-HMAC-SHA256&"),
            "{query}"
        );
        assert!(query.contains("X-Amz-Signature="), "{query}");

        let url = bucket(true, None)
            .presign(Method::DELETE, "pg/a b.dump", &[("versionId", "v1")])
            .await
            .unwrap();
        assert_eq!(url.host_str(), Some("s3.eu-west-1.amazonaws.com"));
        assert_eq!(url.path(), "/my-bucket/pg/a%20b.dump");
        assert!(url.query().unwrap().starts_with("versionId=v1&"), "{url}");
    }

    #[tokio::test]
    async fn errors_do_not_show_the_signed_url() {
        let e = bucket(true, Some("http://127.0.0.1:9"))
            .lock_configuration()
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("cannot reach the bucket"), "{text}");
        // Tried again within the sink's retry budget, then given up.
        assert_eq!(e.kind(), pgproof_core::ErrorKind::Exhausted, "{text}");
        assert!(text.contains("attempts"), "{text}");
        for secret in ["X-Amz-Signature", "X-Amz-Credential", SECRET, TOKEN] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }

    #[test]
    fn xml_is_read_by_tag() {
        assert_eq!(tag("<A><B>x</B></A>", "B"), Some("x"));
        assert_eq!(tag("<A></A>", "B"), None);
        assert_eq!(unescape("a&amp;lt;b&lt;"), "a&lt;b<");
    }
}
