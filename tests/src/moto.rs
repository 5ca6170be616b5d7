//! moto in server mode: a real S3 server for the tests, started on a free port of
//! 127.0.0.1 and killed when dropped. `scripts/setup` installs it into `.venv`;
//! `moto_server` on `PATH` works too.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgproof_sink_object_store::ObjectStoreSink;
use pgproof_sink_object_store::SinkConfig;
use pgproof_sink_s3::AmazonS3Builder;

use crate::missing_service;

/// The access key the tests give moto (which accepts any).
pub const ACCESS_KEY: &str = "pgproof-test-key";
/// The secret the tests give moto; tests assert it never shows up in output.
pub const SECRET_KEY: &str = "pgproof-test-secret-8d3f1c";

/// A running moto server.
pub struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// `.venv/bin/moto_server` in the repository, else `moto_server` on `PATH`.
pub fn moto_server_bin() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let venv = repo.join(".venv/bin/moto_server");
    if venv.is_file() {
        return Some(venv);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("moto_server"))
        .find(|p| p.is_file())
}

/// A port no one listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

impl Moto {
    /// Starts moto on a free port, or returns `None` after [`missing_service`].
    pub fn start() -> Option<Self> {
        let Some(bin) = moto_server_bin() else {
            missing_service(
                "moto_server (the S3 test server; scripts/setup installs it into .venv)",
            );
            return None;
        };
        Some(Self::spawn(&bin, free_port()))
    }

    /// Starts moto again on `port` (after [`kill`](Self::kill)); moto keeps no state,
    /// so buckets must be created again.
    pub fn start_on(port: u16) -> Self {
        let bin = moto_server_bin().expect("moto_server was found before");
        Self::spawn(&bin, port)
    }

    fn spawn(bin: &Path, port: u16) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("moto.log");
        let out = std::fs::File::create(&log).expect("moto log");
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("moto log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut moto = Self {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited ({status}): {}", moto.log_text());
            }
            if http(port, "GET", "/", b"").is_some_and(|(status, _)| status == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer within 60 s: {}",
                moto.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket with a plain HTTP PUT.
    pub fn create_bucket(&self, bucket: &str) {
        let reply = http(self.port, "PUT", &format!("/{bucket}"), b"");
        assert!(
            reply.as_ref().is_some_and(|(status, _)| *status == 200),
            "create bucket {bucket}: {reply:?}"
        );
    }

    /// Keys of the multipart uploads in progress in `bucket` (ListMultipartUploads).
    pub fn pending_uploads(&self, bucket: &str) -> Vec<String> {
        let (status, body) =
            http(self.port, "GET", &format!("/{bucket}?uploads"), b"").expect("list uploads");
        assert_eq!(status, 200, "{body}");
        body.split("<Upload>")
            .skip(1)
            .filter_map(|u| {
                let start = u.find("<Key>")? + 5;
                let end = u.find("</Key>")?;
                Some(u[start..end].to_owned())
            })
            .collect()
    }

    /// Parts uploaded so far to the uploads in progress in `bucket`.
    pub fn pending_parts(&self, bucket: &str) -> usize {
        pending_parts(self.port, bucket)
    }

    /// An S3 sink on `bucket/prefix` of this server, with the test credentials.
    pub fn sink(
        &self,
        bucket: &str,
        prefix: &str,
        part_size_mib: u64,
        in_flight: usize,
    ) -> ObjectStoreSink {
        let config = self.sink_config(bucket, prefix, part_size_mib, in_flight);
        pgproof_sink_s3::from_builder(
            &config,
            AmazonS3Builder::new()
                .with_access_key_id(ACCESS_KEY)
                .with_secret_access_key(SECRET_KEY),
        )
        .expect("S3 sink on moto")
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
            url: Some(format!("s3://{bucket}/{prefix}")),
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            allow_http: true,
            part_size_mib,
            parts_in_flight: in_flight,
            max_retries: 2,
            retry_timeout_secs: 5,
            ..SinkConfig::default()
        }
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What moto logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Parts uploaded so far to the multipart uploads in progress in `bucket` of the
/// moto on `port` (ListMultipartUploads, then ListParts); 0 when it does not answer.
pub fn pending_parts(port: u16, bucket: &str) -> usize {
    let Some((200, body)) = http(port, "GET", &format!("/{bucket}?uploads"), b"") else {
        return 0;
    };
    let mut parts = 0;
    for upload in body.split("<Upload>").skip(1) {
        let field = |name: &str| {
            let start = upload.find(&format!("<{name}>"))? + name.len() + 2;
            let end = upload.find(&format!("</{name}>"))?;
            Some(upload[start..end].to_owned())
        };
        let (Some(key), Some(id)) = (field("Key"), field("UploadId")) else {
            continue;
        };
        let path = format!("/{bucket}/{}?uploadId={id}", encode_path(&key));
        if let Some((200, listing)) = http(port, "GET", &path, b"") {
            parts += listing.matches("<Part>").count();
        }
    }
    parts
}

fn encode_path(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One plain HTTP/1.1 request to 127.0.0.1:`port`: `(status, body)`, or `None` when
/// nothing answers.
pub fn http(port: u16, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).ok()?;
    let text = String::from_utf8_lossy(&reply).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Some((status, body))
}
