//! Azurite's blob service: a local Azure Blob Storage server for the tests, started
//! on a free port of 127.0.0.1 with a temporary workspace and killed when dropped.
//! `scripts/setup --tests` installs it (the npm package `azurite`) into `.azurite`;
//! `azurite-blob` on `PATH` works too. Its access log (one line per request) is kept,
//! so tests can check which requests object_store sent.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use pgproof_sink_azure::MicrosoftAzureBuilder;
use pgproof_sink_object_store::{ObjectStoreSink, SinkConfig};
use sha2::{Digest, Sha256};

use crate::missing_service;
use crate::moto::free_port;

/// The account Azurite serves.
pub const ACCOUNT: &str = "devstoreaccount1";
/// Azurite's published development key for [`ACCOUNT`]: the tests give it through
/// `AZURE_STORAGE_ACCOUNT_KEY` and assert it never shows up in output.
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A running Azurite blob service.
pub struct Azurite {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// `.azurite/node_modules/.bin/azurite-blob` in the repository, else `azurite-blob`
/// on `PATH`.
pub fn azurite_blob_bin() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let local = repo.join(".azurite/node_modules/.bin/azurite-blob");
    if local.is_file() {
        return Some(local);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("azurite-blob"))
        .find(|p| p.is_file())
}

impl Azurite {
    /// Starts Azurite on a free port, or returns `None` after [`missing_service`].
    pub fn start() -> Option<Self> {
        let Some(bin) = azurite_blob_bin() else {
            missing_service(
                "azurite-blob (the Azure Blob Storage test server; scripts/setup --tests installs it into .azurite)",
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("azurite.log");
        let out = std::fs::File::create(&log).expect("azurite log");
        let port = free_port();
        let mut command = Command::new(&bin);
        // PGPROOF_AZURITE_DEBUG=FILE: Azurite's own debug log, for diagnosing it.
        if let Some(debug) = std::env::var_os("PGPROOF_AZURITE_DEBUG") {
            command.arg("--debug").arg(debug);
        }
        let child = command
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir.path().join("data"))
            // object_store's x-ms-version (2023-11-03 in 0.14) may one day be newer
            // than this Azurite knows. No --loose: a header Azurite does not support
            // must fail the test, not be ignored (everything passes without it).
            .args(["--skipApiVersionCheck", "--disableTelemetry"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("azurite log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut azurite = Self {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = azurite.child.try_wait() {
                panic!("azurite-blob exited ({status}): {}", azurite.log_text());
            }
            // Any HTTP answer (400 for a request without an account) means it listens.
            if crate::moto::http(port, "GET", "/", b"").is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "azurite-blob did not answer within 60 s: {}",
                azurite.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(azurite)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`: Azurite's address, without the account.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a container (Create Container, signed with the account key).
    pub fn create_container(&self, container: &str) {
        let reply = self.signed("PUT", &format!("/{container}"), &[("restype", "container")]);
        assert!(
            reply.as_ref().is_some_and(|(status, _)| *status == 201),
            "create container {container}: {reply:?}"
        );
    }

    /// Names of the blobs in `container` that have only uncommitted blocks: block
    /// uploads that were never completed (Azure cannot abort them; they expire).
    pub fn uncommitted_blobs(&self, container: &str) -> Vec<String> {
        let committed = self.blob_names(container, false);
        self.blob_names(container, true)
            .into_iter()
            .filter(|name| !committed.contains(name))
            .collect()
    }

    /// Names of the blobs in `container` (List Blobs, one page of up to 5000), with the
    /// uncommitted ones when `uncommitted`.
    pub fn blob_names(&self, container: &str, uncommitted: bool) -> Vec<String> {
        let mut query = vec![("restype", "container"), ("comp", "list")];
        if uncommitted {
            query.push(("include", "uncommittedblobs"));
        }
        let (status, body) = self
            .signed("GET", &format!("/{container}"), &query)
            .expect("list blobs");
        assert_eq!(status, 200, "{body}");
        body.split("<Blob>")
            .skip(1)
            .filter_map(|b| {
                let start = b.find("<Name>")? + 6;
                let end = b.find("</Name>")?;
                Some(b[start..end].to_owned())
            })
            .collect()
    }

    /// One request to `/<account><path>?<query>` signed with the account's shared key.
    fn signed(&self, method: &str, path: &str, query: &[(&str, &str)]) -> Option<(u16, String)> {
        let date = jiff::Timestamp::now()
            .strftime("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let version = "2021-08-06";
        let full_path = format!("/{ACCOUNT}{path}");
        let mut sorted: Vec<_> = query.to_vec();
        sorted.sort();
        let resource: String = sorted.iter().map(|(k, v)| format!("\n{k}:{v}")).collect();
        // Verb, then Content-Encoding … Range (11 standard headers, all empty here),
        // the x-ms-* headers, then the resource.
        let to_sign = format!(
            "{method}\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}{full_path}{resource}"
        );
        let key = BASE64.decode(ACCOUNT_KEY).expect("account key is base64");
        let signature = BASE64.encode(hmac_sha256(&key, to_sign.as_bytes()));
        let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let head = format!(
            "{method} {full_path}?{} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nx-ms-date: {date}\r\nx-ms-version: {version}\r\nAuthorization: SharedKey {ACCOUNT}:{signature}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            query.join("&"),
            port = self.port,
        );
        let mut stream =
            TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_secs(2))
                .ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .ok()?;
        stream.write_all(head.as_bytes()).ok()?;
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

    /// A service SAS token for `container` (query string, no leading `?`) with
    /// `permissions` (in Azure's order, e.g. `racwdl`) until `expiry`
    /// (`2099-01-01T00:00:00Z`), signed with the account key (version 2019-12-12).
    ///
    /// A container SAS, not an account SAS: Azurite (3.35 to 3.37 at least) has no
    /// account-SAS permission for Blob Batch, which object_store's delete uses, and
    /// answers such a delete with HTTP 500.
    pub fn container_sas(&self, container: &str, permissions: &str, expiry: &str) -> String {
        let version = "2019-12-12";
        // permissions, start, expiry, resource, identifier, IP, protocol, version,
        // resource type, snapshot time, then five response-header overrides.
        let to_sign = format!(
            "{permissions}\n\n{expiry}\n/blob/{ACCOUNT}/{container}\n\n\n\n{version}\nc\n\n\n\n\n\n"
        );
        let key = BASE64.decode(ACCOUNT_KEY).expect("account key is base64");
        let signature = BASE64.encode(hmac_sha256(&key, to_sign.as_bytes()));
        let signature: String = signature
            .chars()
            .map(|c| match c {
                '+' => "%2B".to_owned(),
                '/' => "%2F".to_owned(),
                '=' => "%3D".to_owned(),
                c => c.to_string(),
            })
            .collect();
        format!("sv={version}&sr=c&sp={permissions}&se={expiry}&sig={signature}")
    }

    /// An Azure sink on `container/prefix` of this server, with the account key.
    pub fn sink(
        &self,
        container: &str,
        prefix: &str,
        part_size_mib: u64,
        in_flight: usize,
    ) -> ObjectStoreSink {
        let config = self.sink_config(container, prefix, part_size_mib, in_flight);
        pgproof_sink_azure::from_builder(
            &config,
            MicrosoftAzureBuilder::new().with_access_key(ACCOUNT_KEY),
        )
        .expect("Azure sink on Azurite")
    }

    /// The `[sink]` config for `container/prefix` on this server (emulator mode);
    /// few, quick retries.
    pub fn sink_config(
        &self,
        container: &str,
        prefix: &str,
        part_size_mib: u64,
        in_flight: usize,
    ) -> SinkConfig {
        SinkConfig {
            url: Some(format!("az://{container}/{prefix}")),
            endpoint: Some(self.endpoint()),
            use_emulator: true,
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

    /// What Azurite logged: its access log, one line per request.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.kill();
    }
}

/// HMAC-SHA256 (RFC 2104), for Shared Key signatures.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
