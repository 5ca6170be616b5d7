//! Mapping object_store errors onto pgproof's error kinds, with messages that say
//! which service, bucket, operation and key, and what to check — and never a
//! credential: server answers are reduced to their status, error code and message.

use std::error::Error as StdError;

use object_store::client::{HttpError, HttpErrorKind};
use pgproof_core::error::Error;

use crate::UploadOptions;
use crate::location::{Location, Service};

/// What the sink was doing when a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// Storing an object in one request.
    Put,
    /// Checking that a key is absent before a multipart upload.
    CheckAbsent,
    /// Starting a multipart upload.
    StartUpload,
    /// Uploading a part.
    UploadPart,
    /// Completing a multipart upload.
    Complete,
    /// Aborting a multipart upload.
    Abort,
    /// Opening an object for reading.
    Get,
    /// Reading an object's body.
    Read,
    /// Listing objects.
    List,
    /// Deleting an object.
    Delete,
}

impl Op {
    fn describe(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::CheckAbsent => "create-only check (HEAD) before a multipart upload",
            Op::StartUpload => "start of a multipart upload",
            Op::UploadPart => "part upload",
            Op::Complete => "completion of a multipart upload",
            Op::Abort => "abort of a multipart upload",
            Op::Get => "get",
            Op::Read => "read",
            Op::List => "list",
            Op::Delete => "delete",
        }
    }

    fn target(self, location: &Location, key: &str) -> String {
        match self {
            Op::List => format!("{}*", location.url_of(key)),
            _ => location.url_of(key),
        }
    }
}

/// The error for a put refused because `key` exists.
pub(crate) fn already_exists(location: &Location, op: Op, key: &str) -> Error {
    Error::already_exists(format!(
        "{} object {} already exists and pgproof never overwrites ({} refused)",
        location.service.name(),
        location.url_of(key),
        op.describe()
    ))
}

/// What went wrong, in a few words, from an error chain.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Detail {
    /// HTTP status, e.g. `403 Forbidden`.
    pub status: Option<u16>,
    status_text: Option<String>,
    /// The service's error code, e.g. `AccessDenied`, `NoSuchBucket`.
    pub code: Option<String>,
    message: Option<String>,
    /// The transport failure, if the request got no answer.
    pub transport: Option<HttpErrorKind>,
    transport_cause: Option<String>,
    retries: Option<String>,
    other: String,
}

impl Detail {
    pub(crate) fn of(e: &(dyn StdError + 'static)) -> Self {
        let text = e.to_string();
        let mut detail = Detail::default();
        if let Some(rest) = after(&text, "status code: ") {
            let status = rest.split(':').next().unwrap_or("").trim();
            detail.status = status.split(' ').next().and_then(|s| s.parse().ok());
            detail.status_text = Some(status.to_owned());
        }
        detail.code = between(&text, "<Code>", "</Code>");
        // Azure appends "\nRequestId:…\nTime:…" to its messages: the first line says it.
        detail.message = between(&text, "<Message>", "</Message>")
            .map(|m| m.lines().next().unwrap_or("").trim().to_owned());
        detail.retries = after(&text, ", after ")
            .and_then(|rest| rest.split(" retries").next())
            .map(|n| n.trim().to_owned());
        let mut current: Option<&(dyn StdError + 'static)> = Some(e);
        while let Some(err) = current {
            if let Some(http) = err.downcast_ref::<HttpError>() {
                detail.transport = Some(http.kind());
                detail.transport_cause = Some(innermost(http));
            }
            current = err.source();
        }
        if detail.status.is_none() && detail.transport.is_none() {
            // Not an HTTP failure (a malformed answer, a credential provider, …): the
            // first line of the chain, which object_store builds without secrets.
            detail.other = text
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(300)
                .collect();
        }
        detail
    }

    fn is_transient(&self) -> bool {
        match (self.status, self.transport) {
            (Some(s), _) => s >= 500 || s == 429 || s == 408,
            (None, Some(kind)) => matches!(
                kind,
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            ),
            (None, None) => false,
        }
    }
}

impl std::fmt::Display for Detail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(status) = &self.status_text {
            write!(f, "HTTP {status}")?;
            match (&self.code, &self.message) {
                (Some(code), Some(message)) => write!(f, " ({code}: {message})")?,
                (Some(code), None) => write!(f, " ({code})")?,
                (None, Some(message)) => write!(f, " ({message})")?,
                (None, None) => {}
            }
        } else if let Some(kind) = self.transport {
            let what = match kind {
                HttpErrorKind::Connect => "cannot connect",
                HttpErrorKind::Timeout => "timed out",
                HttpErrorKind::Request | HttpErrorKind::Interrupted => "connection lost",
                HttpErrorKind::Decode => "unreadable answer",
                _ => "request failed",
            };
            write!(f, "{what}")?;
            if let Some(cause) = &self.transport_cause {
                write!(f, ": {cause}")?;
            }
        } else {
            write!(f, "{}", self.other)?;
        }
        if let Some(n) = &self.retries {
            write!(f, ", after {n} retries")?;
        }
        Ok(())
    }
}

fn after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    text.find(marker).map(|i| &text[i + marker.len()..])
}

fn between(text: &str, start: &str, end: &str) -> Option<String> {
    let rest = after(text, start)?;
    let value = &rest[..rest.find(end)?];
    let value: String = value.chars().take(200).collect();
    Some(
        value
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// The deepest cause of a transport error ("Connection refused (os error 111)"),
/// which, unlike the outer layers, carries no URL.
fn innermost(e: &(dyn StdError + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string().chars().take(200).collect()
}

/// Maps a failed `op` on `key` to a pgproof error that names the operation and the
/// object.
pub(crate) fn map(
    location: &Location,
    options: &UploadOptions,
    op: Op,
    key: &str,
    e: &object_store::Error,
) -> Error {
    classify(location, options, op, key, e)
        .with_operation(op.describe())
        .with_object(op.target(location, key))
}

fn classify(
    location: &Location,
    options: &UploadOptions,
    op: Op,
    key: &str,
    e: &object_store::Error,
) -> Error {
    use object_store::Error as E;
    let service = location.service.name();
    let bucket = &location.bucket;
    let target = op.target(location, key);
    let what = op.describe();
    let detail = Detail::of(e);
    let word = location.service.bucket_word();
    let via = match &location.endpoint {
        Some(endpoint) => format!(" at {endpoint}"),
        None => String::new(),
    };

    // S3's and GCS's code, and Azure's.
    if matches!(
        detail.code.as_deref(),
        Some("NoSuchBucket" | "ContainerNotFound")
    ) {
        let account = match location.service {
            Service::Azure => ", sink.account",
            Service::S3 | Service::Gcs => "",
        };
        return Error::config(format!(
            "{service} {word} {bucket:?}{via} does not exist ({what} of {target}: {detail}); check the {word} name in sink.url{account} and sink.endpoint"
        ));
    }
    match e {
        E::AlreadyExists { .. } | E::Precondition { .. } => {
            return already_exists(location, op, key);
        }
        E::NotFound { .. } => {
            return Error::not_found(format!(
                "{service} object {target} does not exist ({what}: {detail})"
            ));
        }
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            return Error::auth(format!(
                "{service} refused the {what} of {target} in {word} {bucket:?}{via}: {detail}; {}",
                location.service.auth_hint()
            ));
        }
        E::InvalidPath { .. } => {
            return Error::config(format!(
                "{service} {what} of {target}: an object name there is not a valid path ({detail}); remove or rename it"
            ));
        }
        _ => {}
    }
    if detail.is_transient() {
        let check = match detail.transport {
            Some(_) => format!("check that the endpoint{via} is up and reachable from this host"),
            None => format!("{service} kept failing; try again later"),
        };
        return Error::exhausted(format!(
            "{service} {what} of {target} failed: {detail}; {check} (retries: sink.max_retries = {}, sink.retry_timeout_secs = {})",
            options.max_retries,
            options.retry_timeout.as_secs()
        ));
    }
    match detail.status {
        Some(404) => Error::not_found(format!(
            "{service} object {target} does not exist ({what}: {detail})"
        )),
        Some(401 | 403) => Error::auth(format!(
            "{service} refused the {what} of {target} in {word} {bucket:?}{via}: {detail}; {}",
            location.service.auth_hint()
        )),
        Some(409 | 412) => already_exists(location, op, key),
        Some(_) => Error::config(format!(
            "{service} rejected the {what} of {target}{via}: {detail}; {}",
            location.service.request_hint()
        )),
        None => {
            let lower = detail.to_string().to_ascii_lowercase();
            if lower.contains("credential") || lower.contains("token") {
                Error::auth(format!(
                    "{service} {what} of {target}: cannot obtain credentials ({detail}); {}",
                    location.service.auth_hint()
                ))
            } else if lower.contains("redirect") {
                Error::config(format!(
                    "{service} {what} of {target}{via}: {detail}; {}",
                    location.service.request_hint()
                ))
            } else {
                Error::tool(format!(
                    "{service} {what} of {target}{via} failed: {detail}"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgproof_core::ErrorKind;

    fn location() -> Location {
        Location::parse(Service::S3, "s3://bkt/pre").unwrap()
    }

    fn generic(source: impl StdError + Send + Sync + 'static) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: Box::new(source),
        }
    }

    #[derive(Debug)]
    struct Text(String);
    impl std::fmt::Display for Text {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl StdError for Text {}

    #[test]
    fn refused_connections_are_transient_and_name_the_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = generic(HttpError::new(HttpErrorKind::Connect, io));
        let mapped = map(
            &location(),
            &UploadOptions::default(),
            Op::UploadPart,
            "db/x",
            &e,
        );
        let text = mapped.to_string();
        assert!(mapped.kind() == ErrorKind::Exhausted, "{mapped:?}");
        assert!(text.contains("s3://bkt/pre/db/x"), "{text}");
        assert!(text.contains("part upload"), "{text}");
        assert!(
            text.contains("cannot connect: Connection refused"),
            "{text}"
        );
    }

    #[test]
    fn status_bodies_are_reduced_to_code_and_message() {
        let body = "Error performing PUT http://h/bkt/pre/k in 3ms, after 2 retries, max_retries: 2, retry_timeout: 1s  - Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message><AWSAccessKeyId>AKIASECRETISH</AWSAccessKeyId><StringToSign>AWS4-HMAC-SHA256</StringToSign></Error>";
        let e = object_store::Error::PermissionDenied {
            path: "pre/k".into(),
            source: Box::new(Text(body.into())),
        };
        let mapped = map(&location(), &UploadOptions::default(), Op::Put, "k", &e);
        let text = mapped.to_string();
        assert!(mapped.kind() == ErrorKind::Auth, "{mapped:?}");
        assert!(text.contains("HTTP 403 Forbidden (SignatureDoesNotMatch: The request signature we calculated does not match)"), "{text}");
        assert!(text.contains("AWS_ACCESS_KEY_ID"), "{text}");
        assert!(!text.contains("AKIASECRETISH"), "{text}");
        assert!(!text.contains("StringToSign"), "{text}");
    }

    #[test]
    fn missing_buckets_are_config_errors_and_5xx_transient() {
        let body = "Error performing GET http://h/nob?list-type=2 in 1ms - Server returned non-2xx status code: 404 Not Found: <Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>";
        let mapped = map(
            &location(),
            &UploadOptions::default(),
            Op::List,
            "db/",
            &generic(Text(body.into())),
        );
        assert!(mapped.kind() == ErrorKind::Config, "{mapped:?}");
        assert!(mapped.to_string().contains("bucket \"bkt\""), "{mapped}");

        let azure = Location::parse(Service::Azure, "az://cont/pre").unwrap();
        let body = "Error performing GET http://h/acct/cont?restype=container&comp=list in 1ms - Server returned non-2xx status code: 404 Not Found: <?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>ContainerNotFound</Code><Message>The specified container does not exist.</Message></Error>";
        let mapped = map(
            &azure,
            &UploadOptions::default(),
            Op::List,
            "db/",
            &generic(Text(body.into())),
        );
        assert!(mapped.kind() == ErrorKind::Config, "{mapped:?}");
        assert!(
            mapped
                .to_string()
                .starts_with("Azure container \"cont\" does not exist (list of az://cont/pre/db/*"),
            "{mapped}"
        );
        assert!(mapped.to_string().contains("sink.account"), "{mapped}");

        let body = "Error performing PUT http://h/k in 1s, after 10 retries, max_retries: 10, retry_timeout: 180s  - Server returned non-2xx status code: 503 Service Unavailable: <Error><Code>SlowDown</Code></Error>";
        let mapped = map(
            &location(),
            &UploadOptions::default(),
            Op::Put,
            "k",
            &generic(Text(body.into())),
        );
        assert!(mapped.kind() == ErrorKind::Exhausted, "{mapped:?}");
        assert!(
            mapped
                .to_string()
                .contains("HTTP 503 Service Unavailable (SlowDown), after 10 retries"),
            "{mapped}"
        );
    }
}
