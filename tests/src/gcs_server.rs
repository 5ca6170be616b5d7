//! An in-process server for the Google Cloud Storage **XML API**, as object_store's
//! GCS client speaks it.
//!
//! No emulator available here handles that API (fake-gcs-server 1.54 and
//! gcp-storage-emulator fail on object PUT and multipart), so this one implements the
//! requests object_store 0.14 sends (read from `object_store::gcp::client`), with
//! GCS's status codes, headers and XML bodies:
//!
//! | request | answer |
//! |---|---|
//! | `PUT /b/o` (+ `x-goog-if-generation-match`) | 200 + `ETag`, `x-goog-generation`; 412 when the precondition fails |
//! | `GET`/`HEAD /b/o` (+ `Range`, `If-Match`, `If-None-Match`, `generation`) | 200/206 with `ETag`, `Last-Modified`, `x-goog-generation`; 304, 412, 416; 404 `NoSuchKey` |
//! | `DELETE /b/o` | 204; 404 `NoSuchKey` |
//! | `GET /b?list-type=2&prefix&delimiter&continuation-token&start-after&max-keys` | `ListBucketResult`, paginated |
//! | `POST /b/o?uploads` | `InitiateMultipartUploadResult` |
//! | `PUT /b/o?partNumber=N&uploadId=U` | 200 + part `ETag`; 404 `NoSuchUpload` |
//! | `POST /b/o?uploadId=U` + `CompleteMultipartUpload` | `CompleteMultipartUploadResult` + `x-goog-generation`; 400 `InvalidPart`, `InvalidPartOrder`, `EntityTooSmall` |
//! | `DELETE /b/o?uploadId=U` | 204; 404 `NoSuchUpload` |
//!
//! An unknown bucket answers 404 `NoSuchBucket`, a denied one 403 `AccessDenied`, an
//! `Authorization` header that is not a bearer token 401. Uploads in progress are never
//! listed. Tests can inject faults (answer N matching requests with a status), shrink
//! the list page size to exercise continuation, and inspect state and the request
//! log. Object names are percent-decoded from the path, as object_store encodes them.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use md5::{Digest, Md5};
use pgproof_sink_gcs::GoogleCloudStorageBuilder;
use pgproof_sink_object_store::ObjectStoreSink;
use pgproof_sink_object_store::SinkConfig;

/// GCS's minimum size for every part of a multipart upload but the last.
pub const MIN_PART_SIZE: usize = 5 << 20;
const XMLNS: &str = "http://doc.s3.amazonaws.com/2006-03-01";

#[derive(Clone, Debug)]
struct Object {
    data: Bytes,
    etag: String,
    generation: u64,
    content_type: String,
    modified: Timestamp,
}

#[derive(Debug)]
struct Upload {
    key: String,
    content_type: String,
    parts: BTreeMap<u32, (String, Bytes)>,
}

#[derive(Default, Debug)]
struct Bucket {
    objects: BTreeMap<String, Object>,
    uploads: HashMap<String, Upload>,
}

#[derive(Debug)]
struct Fault {
    matches: String,
    status: u16,
    remaining: usize,
}

#[derive(Debug)]
struct State {
    buckets: BTreeMap<String, Bucket>,
    denied: BTreeSet<String>,
    faults: Vec<Fault>,
    page_size: usize,
    generation: u64,
    upload_counter: u64,
    log: Vec<String>,
    base_url: String,
}

/// A running server; stopped when dropped.
pub struct GcsServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl GcsServer {
    /// Starts a server on a free port of 127.0.0.1, on a thread of its own (so tests
    /// may block while a `pgproof` process talks to it).
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the GCS server");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            buckets: BTreeMap::new(),
            denied: BTreeSet::new(),
            faults: Vec::new(),
            page_size: 1000,
            generation: 1_700_000_000_000_000,
            upload_counter: 0,
            log: Vec::new(),
            base_url: format!("http://{addr}"),
        }));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let state = shared.clone();
                            tokio::spawn(async move {
                                let service = service_fn(move |req| {
                                    let state = state.clone();
                                    async move { Ok::<_, Infallible>(handle(&state, req).await) }
                                });
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        Self {
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates an empty bucket.
    pub fn create_bucket(&self, name: &str) {
        self.state
            .lock()
            .unwrap()
            .buckets
            .entry(name.to_owned())
            .or_default();
    }

    /// Makes every request on `bucket` answer 403 AccessDenied.
    pub fn deny_bucket(&self, name: &str) {
        self.state.lock().unwrap().denied.insert(name.to_owned());
    }

    /// Answers the next `count` requests whose `METHOD /path?query` line contains
    /// `matches` with `status` (and an XML error body).
    pub fn fail_next(&self, matches: &str, status: u16, count: usize) {
        self.state.lock().unwrap().faults.push(Fault {
            matches: matches.to_owned(),
            status,
            remaining: count,
        });
    }

    /// Caps list pages at `n` entries (GCS's own cap is 1000).
    pub fn set_page_size(&self, n: usize) {
        self.state.lock().unwrap().page_size = n.max(1);
    }

    /// Keys of multipart uploads started and neither completed nor aborted.
    pub fn pending_uploads(&self, bucket: &str) -> Vec<String> {
        let state = self.state.lock().unwrap();
        let mut keys: Vec<String> = state
            .buckets
            .get(bucket)
            .map(|b| b.uploads.values().map(|u| u.key.clone()).collect())
            .unwrap_or_default();
        keys.sort();
        keys
    }

    /// Names of the objects in `bucket`.
    pub fn object_names(&self, bucket: &str) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state
            .buckets
            .get(bucket)
            .map(|b| b.objects.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Every request so far, as `METHOD /path?query [precondition]`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    /// The `[sink]` config for `bucket/prefix` on this server; few, quick retries.
    pub fn sink_config(
        &self,
        bucket: &str,
        prefix: &str,
        part_size_mib: u64,
        in_flight: usize,
    ) -> SinkConfig {
        SinkConfig {
            url: Some(format!("gs://{bucket}/{prefix}")),
            endpoint: Some(self.base_url()),
            allow_http: true,
            service_account_file: Some(self.service_account_file(self.dir.path())),
            part_size_mib,
            parts_in_flight: in_flight,
            max_retries: 2,
            retry_timeout_secs: 5,
            ..SinkConfig::default()
        }
    }

    /// A GCS sink on `bucket/prefix` of this server.
    pub fn sink(
        &self,
        bucket: &str,
        prefix: &str,
        part_size_mib: u64,
        in_flight: usize,
    ) -> ObjectStoreSink {
        pgproof_sink_gcs::from_builder(
            &self.sink_config(bucket, prefix, part_size_mib, in_flight),
            GoogleCloudStorageBuilder::new(),
        )
        .expect("GCS sink on the test server")
    }

    /// Writes the service-account file object_store needs to talk to this server
    /// (`gcs_base_url`, OAuth disabled) into `dir` and returns its path.
    pub fn service_account_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("gcs-test-service-account.json");
        let json = serde_json::json!({
            "gcs_base_url": self.base_url(),
            "disable_oauth": true,
            "client_email": "",
            "private_key": "",
            "private_key_id": "",
        });
        std::fs::write(&path, json.to_string()).unwrap();
        path
    }
}

impl Drop for GcsServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type Reply = Response<Full<Bytes>>;

async fn handle(state: &Mutex<State>, req: hyper::Request<Incoming>) -> Reply {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "IncompleteBody",
                "Request body incomplete.",
                "",
            );
        }
    };
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let mut state = state.lock().unwrap();
    let mut line = format!("{} {path}", parts.method);
    if !query.is_empty() {
        line.push('?');
        line.push_str(&query);
    }
    if let Some(v) = parts.headers.get("x-goog-if-generation-match") {
        line.push_str(&format!(
            " [x-goog-if-generation-match: {}]",
            v.to_str().unwrap_or("?")
        ));
    }
    state.log.push(line.clone());
    if let Some(fault) = state
        .faults
        .iter_mut()
        .find(|f| f.remaining > 0 && line.contains(&f.matches))
    {
        fault.remaining -= 1;
        let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return error(
            status,
            "InternalError",
            "We encountered an internal error. Please try again.",
            "injected fault",
        );
    }
    respond(
        &mut state,
        &parts.method,
        &path,
        &query,
        &parts.headers,
        body,
    )
}

fn respond(
    state: &mut State,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Reply {
    // object_store's emulator mode (`disable_oauth`) sends an empty bearer token on
    // writes and no Authorization header on reads, so anonymous requests pass; a
    // header that is not a bearer token is refused as GCS refuses it.
    if let Some(auth) = header(headers, "authorization")
        && !auth.starts_with("Bearer")
    {
        return error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationRequired",
            "Invalid Credentials",
            "",
        );
    }
    let query = parse_query(query);
    let Some(rest) = path.strip_prefix('/') else {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidURI",
            "Couldn't parse the specified URI.",
            "",
        );
    };
    let (bucket, object) = rest.split_once('/').unwrap_or((rest, ""));
    let (Some(bucket), Some(object)) =
        (percent_decode(bucket, false), percent_decode(object, false))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidURI",
            "Couldn't parse the specified URI.",
            "",
        );
    };
    if state.denied.contains(&bucket) {
        return error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Access denied.",
            &format!(
                "Caller does not have storage.objects access to the Google Cloud Storage bucket {bucket}."
            ),
        );
    }
    let base_url = state.base_url.clone();
    let page_size = state.page_size;
    if !state.buckets.contains_key(&bucket) {
        return error(
            StatusCode::NOT_FOUND,
            "NoSuchBucket",
            "The specified bucket does not exist.",
            "",
        );
    }
    if object.is_empty() {
        let b = &state.buckets[&bucket];
        return match *method {
            Method::GET => list(b, &bucket, &query, page_size),
            _ => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "The specified method is not allowed against this resource.",
                "",
            ),
        };
    }
    if object.len() > 1024 || object.contains(['\r', '\n']) {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidObjectName",
            "The specified object name is not valid.",
            "",
        );
    }
    match *method {
        Method::PUT if query.contains_key("uploadId") => {
            let b = state.buckets.get_mut(&bucket).unwrap();
            upload_part(b, &object, &query, body)
        }
        Method::PUT if headers.contains_key("x-goog-copy-source") => error(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            "Copy is not implemented by this test server.",
            "",
        ),
        Method::PUT => {
            state.generation += 1;
            let generation = state.generation;
            let b = state.buckets.get_mut(&bucket).unwrap();
            let content_type =
                header(headers, "content-type").unwrap_or("application/octet-stream");
            put_object(
                b,
                &object,
                headers,
                body,
                content_type.to_owned(),
                generation,
            )
        }
        Method::POST if query.contains_key("uploads") => {
            state.upload_counter += 1;
            let id = format!(
                "ABPnzm{}",
                hex::encode(Md5::digest(format!(
                    "{bucket}/{object}/{}",
                    state.upload_counter
                )))
            );
            let content_type = header(headers, "content-type")
                .unwrap_or("application/octet-stream")
                .to_owned();
            let b = state.buckets.get_mut(&bucket).unwrap();
            b.uploads.insert(
                id.clone(),
                Upload {
                    key: object.clone(),
                    content_type,
                    parts: BTreeMap::new(),
                },
            );
            xml(
                StatusCode::OK,
                format!(
                    "<InitiateMultipartUploadResult xmlns=\"{XMLNS}\"><Bucket>{}</Bucket><Key>{}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>",
                    escape(&bucket),
                    escape(&object)
                ),
            )
        }
        Method::POST if query.contains_key("uploadId") => {
            state.generation += 1;
            let generation = state.generation;
            let b = state.buckets.get_mut(&bucket).unwrap();
            complete(
                b, &base_url, &bucket, &object, &query, headers, &body, generation,
            )
        }
        Method::POST => error(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "Invalid argument.",
            "POST needs ?uploads or ?uploadId",
        ),
        Method::GET | Method::HEAD => {
            let b = &state.buckets[&bucket];
            get_object(
                b,
                &bucket,
                &object,
                &query,
                headers,
                *method == Method::HEAD,
            )
        }
        Method::DELETE if query.contains_key("uploadId") => {
            let b = state.buckets.get_mut(&bucket).unwrap();
            let id = &query["uploadId"];
            match b.uploads.get(id) {
                Some(u) if u.key == object => {
                    b.uploads.remove(id);
                    empty(StatusCode::NO_CONTENT)
                }
                _ => no_such_upload(),
            }
        }
        Method::DELETE => {
            let b = state.buckets.get_mut(&bucket).unwrap();
            match b.objects.remove(&object) {
                Some(_) => empty(StatusCode::NO_CONTENT),
                None => no_such_key(&bucket, &object),
            }
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The specified method is not allowed against this resource.",
            "",
        ),
    }
}

/// Checks `x-goog-if-generation-match` against the current object, if the header
/// is present: `0` means "must not exist".
fn generation_precondition(headers: &HeaderMap, current: Option<&Object>) -> Option<Reply> {
    let wanted = header(headers, "x-goog-if-generation-match")?;
    let Ok(wanted) = wanted.parse::<u64>() else {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "Invalid argument.",
            "x-goog-if-generation-match",
        ));
    };
    let holds = match current {
        None => wanted == 0,
        Some(o) => o.generation == wanted,
    };
    (!holds).then(precondition_failed)
}

fn put_object(
    b: &mut Bucket,
    name: &str,
    headers: &HeaderMap,
    body: Bytes,
    content_type: String,
    generation: u64,
) -> Reply {
    if let Some(reply) = generation_precondition(headers, b.objects.get(name)) {
        return reply;
    }
    let etag = format!("\"{}\"", hex::encode(Md5::digest(&body)));
    let object = Object {
        data: body,
        etag,
        generation,
        content_type,
        modified: Timestamp::now(),
    };
    let reply = stored(&object, Full::default());
    b.objects.insert(name.to_owned(), object);
    reply
}

fn stored(object: &Object, body: Full<Bytes>) -> Reply {
    Response::builder()
        .status(StatusCode::OK)
        .header("ETag", &object.etag)
        .header("x-goog-generation", object.generation.to_string())
        .header("x-goog-metageneration", "1")
        .header(
            "x-goog-stored-content-length",
            object.data.len().to_string(),
        )
        .header("x-goog-stored-content-encoding", "identity")
        .body(body)
        .unwrap()
}

fn get_object(
    b: &Bucket,
    bucket: &str,
    name: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    head: bool,
) -> Reply {
    let Some(object) = b.objects.get(name) else {
        return if head {
            empty(StatusCode::NOT_FOUND)
        } else {
            no_such_key(bucket, name)
        };
    };
    if let Some(g) = query.get("generation")
        && g.parse::<u64>().ok() != Some(object.generation)
    {
        return if head {
            empty(StatusCode::NOT_FOUND)
        } else {
            no_such_key(bucket, name)
        };
    }
    if let Some(reply) = generation_precondition(headers, Some(object)) {
        return reply;
    }
    let etag_matches = |value: &str| {
        value
            .split(',')
            .any(|v| v.trim() == "*" || v.trim().trim_start_matches("W/") == object.etag)
    };
    if let Some(v) = header(headers, "if-match")
        && !etag_matches(v)
    {
        return precondition_failed();
    }
    if let Some(v) = header(headers, "if-none-match")
        && etag_matches(v)
    {
        return Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .header("ETag", &object.etag)
            .body(Full::default())
            .unwrap();
    }
    let size = object.data.len();
    let (status, range) = match header(headers, "range").map(|r| parse_range(r, size)) {
        None | Some(RangeSpec::Ignore) => (StatusCode::OK, 0..size),
        Some(RangeSpec::Satisfiable(r)) => (StatusCode::PARTIAL_CONTENT, r),
        Some(RangeSpec::Unsatisfiable) => {
            let mut reply = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "InvalidRange",
                "The requested range cannot be satisfied.",
                "",
            );
            reply
                .headers_mut()
                .insert("Content-Range", format!("bytes */{size}").parse().unwrap());
            return reply;
        }
    };
    let mut builder = Response::builder()
        .status(status)
        .header("Content-Type", &object.content_type)
        .header("Content-Length", range.len().to_string())
        .header("ETag", &object.etag)
        .header(
            "Last-Modified",
            object
                .modified
                .strftime("%a, %d %b %Y %H:%M:%S GMT")
                .to_string(),
        )
        .header("x-goog-generation", object.generation.to_string())
        .header("x-goog-metageneration", "1")
        .header("x-goog-stored-content-length", size.to_string())
        .header("x-goog-stored-content-encoding", "identity")
        .header("Accept-Ranges", "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            "Content-Range",
            format!(
                "bytes {}-{}/{size}",
                range.start,
                range.end.saturating_sub(1)
            ),
        );
    }
    let body = if head {
        Full::default()
    } else {
        Full::new(object.data.slice(range))
    };
    builder.body(body).unwrap()
}

enum RangeSpec {
    Ignore,
    Satisfiable(std::ops::Range<usize>),
    Unsatisfiable,
}

/// One `bytes=` range, as GCS serves it (several ranges: the whole object).
fn parse_range(value: &str, size: usize) -> RangeSpec {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeSpec::Ignore;
    };
    if spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((start, end)) = spec.split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (start, end) = (start.trim(), end.trim());
    let range = match (start.parse::<usize>(), end.parse::<usize>()) {
        (Ok(s), Ok(e)) if s <= e => s..(e + 1).min(size),
        (Ok(s), Err(_)) if end.is_empty() => s..size,
        (Err(_), Ok(n)) if start.is_empty() => size.saturating_sub(n)..size,
        _ => return RangeSpec::Ignore,
    };
    if range.start >= size {
        RangeSpec::Unsatisfiable
    } else {
        RangeSpec::Satisfiable(range)
    }
}

fn upload_part(b: &mut Bucket, name: &str, query: &HashMap<String, String>, body: Bytes) -> Reply {
    let number = query.get("partNumber").and_then(|n| n.parse::<u32>().ok());
    let Some(number) = number.filter(|n| (1..=10_000).contains(n)) else {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "Part number must be an integer between 1 and 10000, inclusive.",
            "",
        );
    };
    let Some(upload) = b
        .uploads
        .get_mut(&query["uploadId"])
        .filter(|u| u.key == name)
    else {
        return no_such_upload();
    };
    let etag = format!("\"{}\"", hex::encode(Md5::digest(&body)));
    upload.parts.insert(number, (etag.clone(), body));
    Response::builder()
        .status(StatusCode::OK)
        .header("ETag", etag)
        .body(Full::default())
        .unwrap()
}

#[allow(clippy::too_many_arguments)]
fn complete(
    b: &mut Bucket,
    base_url: &str,
    bucket: &str,
    name: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
    generation: u64,
) -> Reply {
    let id = &query["uploadId"];
    if b.uploads.get(id).is_none_or(|u| u.key != name) {
        return no_such_upload();
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return malformed();
    };
    let Some(listed) = parse_complete(text) else {
        return malformed();
    };
    if listed.is_empty() {
        return malformed();
    }
    if listed.windows(2).any(|w| w[0].0 >= w[1].0) {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidPartOrder",
            "The list of parts was not in ascending order. The parts list must be specified in order by part number.",
            "",
        );
    }
    let upload = &b.uploads[id];
    let mut data = Vec::new();
    let mut digests = Vec::new();
    for (i, (number, etag)) in listed.iter().enumerate() {
        let Some((stored_etag, part)) = upload.parts.get(number) else {
            return invalid_part(*number);
        };
        if stored_etag.trim_matches('"') != etag.trim_matches('"') {
            return invalid_part(*number);
        }
        if i + 1 < listed.len() && part.len() < MIN_PART_SIZE {
            return error(
                StatusCode::BAD_REQUEST,
                "EntityTooSmall",
                "Your proposed upload is smaller than the minimum allowed object size.",
                &format!("part {number} has {} bytes", part.len()),
            );
        }
        data.extend_from_slice(part);
        digests.extend_from_slice(&hex::decode(stored_etag.trim_matches('"')).unwrap_or_default());
    }
    if let Some(reply) = generation_precondition(headers, b.objects.get(name)) {
        return reply;
    }
    let Some(upload) = b.uploads.remove(id) else {
        return no_such_upload();
    };
    let etag = format!(
        "\"{}-{}\"",
        hex::encode(Md5::digest(&digests)),
        listed.len()
    );
    b.objects.insert(
        name.to_owned(),
        Object {
            data: Bytes::from(data),
            etag: etag.clone(),
            generation,
            content_type: upload.content_type,
            modified: Timestamp::now(),
        },
    );
    let mut reply = xml(
        StatusCode::OK,
        format!(
            "<CompleteMultipartUploadResult xmlns=\"{XMLNS}\"><Location>{}/{}/{}</Location><Bucket>{}</Bucket><Key>{}</Key><ETag>{}</ETag></CompleteMultipartUploadResult>",
            escape(base_url),
            escape(bucket),
            escape(name),
            escape(bucket),
            escape(name),
            escape(&etag)
        ),
    );
    reply
        .headers_mut()
        .insert("x-goog-generation", generation.to_string().parse().unwrap());
    reply
}

/// `(PartNumber, ETag)` pairs of a `CompleteMultipartUpload` body.
fn parse_complete(text: &str) -> Option<Vec<(u32, String)>> {
    let body = text.split_once("<CompleteMultipartUpload")?.1;
    let mut parts = Vec::new();
    for chunk in body.split("<Part>").skip(1) {
        let part = chunk.split("</Part>").next()?;
        let number = unescape(&element(part, "PartNumber")?)
            .trim()
            .parse()
            .ok()?;
        let etag = unescape(&element(part, "ETag")?);
        parts.push((number, etag));
    }
    Some(parts)
}

fn element(text: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&close)?;
    Some(text[start..end].to_owned())
}

fn list(b: &Bucket, bucket: &str, query: &HashMap<String, String>, page_size: usize) -> Reply {
    let prefix = query.get("prefix").cloned().unwrap_or_default();
    let delimiter = query.get("delimiter").filter(|d| !d.is_empty()).cloned();
    let max_keys = match query.get("max-keys").map(|m| m.parse::<usize>()) {
        None => 1000,
        Some(Ok(m)) => m.min(1000),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidArgument",
                "Invalid argument.",
                "max-keys",
            );
        }
    };
    let after = match query.get("continuation-token") {
        Some(token) => match hex::decode(token)
            .ok()
            .and_then(|v| String::from_utf8(v).ok())
        {
            Some(t) => Some(t),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InvalidArgument",
                    "Invalid argument.",
                    "continuation-token",
                );
            }
        },
        None => query.get("start-after").cloned(),
    };
    let limit = max_keys.min(page_size);
    let mut contents = String::new();
    let mut prefixes: Vec<String> = Vec::new();
    let mut count = 0;
    let mut last: Option<String> = None;
    let mut truncated = false;
    // Names sharing the prefix are contiguous in the ordered map, starting at it.
    for (name, object) in b.objects.range(prefix.clone()..) {
        if !name.starts_with(&prefix) {
            break;
        }
        // Resume after the token: past its key, and past a common prefix it names.
        if let Some(a) = &after
            && (name <= a
                || delimiter
                    .as_ref()
                    .is_some_and(|d| a.ends_with(d.as_str()) && name.starts_with(a.as_str())))
        {
            continue;
        }
        let common = delimiter.as_ref().and_then(|d| {
            name[prefix.len()..]
                .find(d.as_str())
                .map(|i| name[..prefix.len() + i + d.len()].to_owned())
        });
        if let Some(common) = &common
            && prefixes.last() == Some(common)
        {
            continue;
        }
        if count == limit {
            truncated = true;
            break;
        }
        count += 1;
        match common {
            Some(common) => {
                last = Some(common.clone());
                prefixes.push(common);
            }
            None => {
                last = Some(name.clone());
                contents.push_str(&format!(
                    "<Contents><Key>{}</Key><Generation>{}</Generation><MetaGeneration>1</MetaGeneration><LastModified>{}</LastModified><ETag>{}</ETag><Size>{}</Size></Contents>",
                    escape(name),
                    object.generation,
                    object.modified.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    escape(&object.etag),
                    object.data.len()
                ));
            }
        }
    }
    let mut out = format!(
        "<ListBucketResult xmlns=\"{XMLNS}\"><Name>{}</Name><Prefix>{}</Prefix><KeyCount>{count}</KeyCount><MaxKeys>{max_keys}</MaxKeys>",
        escape(bucket),
        escape(&prefix)
    );
    if let Some(d) = &delimiter {
        out.push_str(&format!("<Delimiter>{}</Delimiter>", escape(d)));
    }
    out.push_str(&format!("<IsTruncated>{truncated}</IsTruncated>"));
    out.push_str(&contents);
    for p in &prefixes {
        out.push_str(&format!(
            "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
            escape(p)
        ));
    }
    if truncated && let Some(last) = last {
        out.push_str(&format!(
            "<NextContinuationToken>{}</NextContinuationToken>",
            hex::encode(last)
        ));
    }
    out.push_str("</ListBucketResult>");
    xml(StatusCode::OK, out)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn xml(status: StatusCode, body: String) -> Reply {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/xml; charset=UTF-8")
        .body(Full::new(Bytes::from(format!(
            "<?xml version='1.0' encoding='UTF-8'?>{body}"
        ))))
        .unwrap()
}

fn empty(status: StatusCode) -> Reply {
    Response::builder()
        .status(status)
        .body(Full::default())
        .unwrap()
}

fn error(status: StatusCode, code: &str, message: &str, details: &str) -> Reply {
    let details = if details.is_empty() {
        String::new()
    } else {
        format!("<Details>{}</Details>", escape(details))
    };
    xml(
        status,
        format!(
            "<Error><Code>{code}</Code><Message>{}</Message>{details}</Error>",
            escape(message)
        ),
    )
}

fn precondition_failed() -> Reply {
    error(
        StatusCode::PRECONDITION_FAILED,
        "PreconditionFailed",
        "At least one of the pre-conditions you specified did not hold.",
        "",
    )
}

fn no_such_key(bucket: &str, name: &str) -> Reply {
    error(
        StatusCode::NOT_FOUND,
        "NoSuchKey",
        "The specified key does not exist.",
        &format!("No such object: {bucket}/{name}"),
    )
}

fn no_such_upload() -> Reply {
    error(
        StatusCode::NOT_FOUND,
        "NoSuchUpload",
        "The requested upload was not found.",
        "",
    )
}

fn invalid_part(number: u32) -> Reply {
    error(
        StatusCode::BAD_REQUEST,
        "InvalidPart",
        "One or more of the specified parts could not be found. The part might not have been uploaded, or the specified entity tag might not have matched the part's entity tag.",
        &format!("part {number}"),
    )
}

fn malformed() -> Reply {
    error(
        StatusCode::BAD_REQUEST,
        "MalformedXML",
        "The XML you provided was not well-formed or did not validate against our published schema.",
        "",
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(k, true)?, percent_decode(v, true)?))
        })
        .collect()
}

/// Decodes `%XX` escapes (and `+` as a space in query strings); `None` for bad UTF-8.
fn percent_decode(text: &str, plus_is_space: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_and_ranges() {
        assert_eq!(percent_decode("d%C3%A4%2Fx+y", true).unwrap(), "dä/x y");
        assert_eq!(percent_decode("a+b%20", false).unwrap(), "a+b ");
        assert!(matches!(parse_range("bytes=2-4", 10), RangeSpec::Satisfiable(r) if r == (2..5)));
        assert!(matches!(parse_range("bytes=7-", 10), RangeSpec::Satisfiable(r) if r == (7..10)));
        assert!(matches!(parse_range("bytes=-3", 10), RangeSpec::Satisfiable(r) if r == (7..10)));
        assert!(matches!(
            parse_range("bytes=10-", 10),
            RangeSpec::Unsatisfiable
        ));
        let parts = parse_complete("<CompleteMultipartUpload><Part><ETag>\"a\"</ETag><PartNumber>1</PartNumber></Part><Part><ETag>&quot;b&quot;</ETag><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>").unwrap();
        assert_eq!(parts, [(1, "\"a\"".to_owned()), (2, "\"b\"".to_owned())]);
    }
}
