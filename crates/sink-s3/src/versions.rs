//! The few bucket-level S3 requests object_store does not make: reading a bucket's
//! versioning and Object Lock configuration, listing delete markers, and removing one
//! (which brings a hidden object back). Signed with AWS Signature Version 4 here,
//! path-style, with credentials from the environment only.

use std::fmt::Write as _;

use pgproof_core::error::{Error, Result};
use ring::digest::{SHA256, digest};
use ring::hmac;

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
    endpoint: String,
    region: String,
    bucket: String,
    access_key: String,
    secret_key: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl Bucket {
    /// The bucket `bucket` at `endpoint` (default: AWS's regional endpoint), with
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
    pub fn from_env(endpoint: Option<&str>, region: Option<&str>, bucket: &str) -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (Some(access_key), Some(secret_key)) =
            (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(Error::config(
                "reading a bucket's versions needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment",
            ));
        };
        let region = region
            .map(str::to_owned)
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let endpoint = endpoint
            .map(|e| e.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        pgproof_sink_object_store::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| Error::tool(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            endpoint,
            region,
            bucket: bucket.to_owned(),
            access_key,
            secret_key,
            token: var("AWS_SESSION_TOKEN"),
            client,
        })
    }

    /// Versioning and Object Lock as the bucket reports them.
    pub async fn lock_configuration(&self) -> Result<LockConfiguration> {
        let versioning = self.request("GET", "", &[("versioning", "")]).await?;
        let lock = match self.request("GET", "", &[("object-lock", "")]).await {
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
            let body = self.request("GET", "", &query).await?;
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
        self.request("DELETE", &hidden.key, &[("versionId", &hidden.marker)])
            .await
            .map(|_| ())
    }

    async fn request(&self, method: &str, key: &str, query: &[(&str, &str)]) -> Result<String> {
        let now = jiff::Timestamp::now();
        let amz_date = now.strftime("%Y%m%dT%H%M%SZ").to_string();
        let host = self
            .endpoint
            .split_once("://")
            .map_or(self.endpoint.as_str(), |(_, h)| h)
            .trim_end_matches('/')
            .to_owned();
        let mut path = format!("/{}", encode(&self.bucket, false));
        if !key.is_empty() {
            path.push('/');
            path.push_str(&encode(key, true));
        }
        let mut pairs: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (encode(k, false), encode(v, false)))
            .collect();
        pairs.sort();
        let canonical_query = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let (authorization, headers) = sign(&Signing {
            method,
            host: &host,
            path: &path,
            canonical_query: &canonical_query,
            amz_date: &amz_date,
            region: &self.region,
            access_key: &self.access_key,
            secret_key: &self.secret_key,
            token: self.token.as_deref(),
        });
        let url = if canonical_query.is_empty() {
            format!("{}{path}", self.endpoint)
        } else {
            format!("{}{path}?{canonical_query}", self.endpoint)
        };
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| Error::tool(format!("bad method: {e}")))?;
        let mut request = self
            .client
            .request(method, &url)
            .header("authorization", authorization);
        for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
            request = request.header(k, v);
        }
        let response = request.send().await.map_err(|e| {
            Error::transient(format!(
                "cannot reach the bucket {} at {}: {}",
                self.bucket,
                self.endpoint,
                if e.is_timeout() {
                    "timed out"
                } else {
                    "request failed"
                }
            ))
        })?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| Error::transient(format!("reading the bucket's answer: {e}")))?;
        if status.is_success() {
            return Ok(body);
        }
        let code = tag(&body, "Code").unwrap_or("");
        let message = format!(
            "S3 answered {status} ({code}) for {} on bucket {}",
            query.first().map_or("the object", |(k, _)| k),
            self.bucket
        );
        Err(match status.as_u16() {
            401 | 403 => Error::auth(format!(
                "{message}; the credentials need s3:GetBucketVersioning, s3:GetBucketObjectLockConfiguration, s3:ListBucketVersions and s3:DeleteObjectVersion"
            )),
            _ => Error::database(message),
        })
    }
}

/// What a SigV4 signature covers.
struct Signing<'a> {
    method: &'a str,
    host: &'a str,
    path: &'a str,
    canonical_query: &'a str,
    amz_date: &'a str,
    region: &'a str,
    access_key: &'a str,
    secret_key: &'a str,
    token: Option<&'a str>,
}

/// The `Authorization` header and the signed headers (an empty payload).
fn sign(s: &Signing<'_>) -> (String, Vec<(String, String)>) {
    let date = &s.amz_date[..8];
    let payload = hex(digest(&SHA256, b"").as_ref());
    let mut headers = vec![
        ("host".to_owned(), s.host.to_owned()),
        ("x-amz-content-sha256".to_owned(), payload.clone()),
        ("x-amz-date".to_owned(), s.amz_date.to_owned()),
    ];
    if let Some(token) = s.token {
        headers.push(("x-amz-security-token".to_owned(), token.to_owned()));
    }
    let signed = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let mut canonical = format!("{}\n{}\n{}\n", s.method, s.path, s.canonical_query);
    for (k, v) in &headers {
        let _ = writeln!(canonical, "{k}:{v}");
    }
    let _ = write!(canonical, "\n{signed}\n{payload}");
    let scope = format!("{date}/{}/s3/aws4_request", s.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        s.amz_date,
        hex(digest(&SHA256, canonical.as_bytes()).as_ref())
    );
    let mut key = format!("AWS4{}", s.secret_key).into_bytes();
    for part in [date, s.region, "s3", "aws4_request"] {
        key = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), part.as_bytes())
            .as_ref()
            .to_vec();
    }
    let signature =
        hex(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), to_sign.as_bytes()).as_ref());
    (
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            s.access_key
        ),
        headers,
    )
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

/// SigV4's URI encoding: unreserved characters as they are, `/` kept in paths.
fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's documented example (S3 API reference, "Signature Calculations for the
    /// Authorization Header", GET Bucket Lifecycle).
    #[test]
    fn signatures_match_aws_documented_example() {
        let (authorization, _) = sign(&Signing {
            method: "GET",
            host: "examplebucket.s3.amazonaws.com",
            path: "/",
            canonical_query: "lifecycle=",
            amz_date: "20130524T000000Z",
            region: "us-east-1",
            access_key: "AKIAIOSFODNN7EXAMPLE",
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            token: None,
        });
        assert!(
            authorization.ends_with(
                "Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
            ),
            "{authorization}"
        );
    }

    #[test]
    fn uri_encoding_follows_sigv4() {
        assert_eq!(encode("a b/c~d", true), "a%20b/c~d");
        assert_eq!(encode("a/b", false), "a%2Fb");
        assert_eq!(tag("<A><B>x</B></A>", "B"), Some("x"));
    }
}
