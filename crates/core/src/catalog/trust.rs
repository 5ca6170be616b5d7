//! Signing and trust: the one gate every catalog object passes on its way into and out
//! of a sink.
//!
//! The sink is untrusted storage: whoever can write to the bucket can write any object
//! and knows every public key. So every object a later decision reads — manifests,
//! verification records, pins, leases, tombstones, commit locks, adoptions, catalog
//! indexes — is signed by the host that wrote it, and nothing of the kind is believed
//! on the way back unless a trusted key signed it *for that very object key*.
//!
//! # Format
//!
//! A signed object is its payload (JSON ending in a newline) followed by an OpenSSH
//! signature (`-----BEGIN SSH SIGNATURE-----`, PROTOCOL.sshsig, Ed25519, SHA-512) over
//! exactly the payload's bytes, with the object's key (`app/<id>/manifest.json`) as the
//! signature's namespace. The namespace is inside the signed data, so a valid signature
//! copied under another key (another backup, database or kind) does not verify.
//! `ssh-keygen -Y verify` checks one without pgproof:
//!
//! ```text
//! sed '/^-----BEGIN SSH SIGNATURE-----$/,$d' manifest.json > payload
//! sed -n '/^-----BEGIN SSH SIGNATURE-----$/,$p' manifest.json > payload.sig
//! ssh-keygen -Y verify -f allowed_signers -I pgproof -n app/<id>/manifest.json -s payload.sig < payload
//! ```
//!
//! OpenSSH signatures rather than minisign: `ssh-keygen` is on every host that has an
//! SSH client, keys are one line each in the format operators already manage
//! (`allowed_signers`, `authorized_keys`), and the namespace field is exactly the
//! binding to an object that a replay must break.
//!
//! [`SignedSink`] wraps any [`Sink`]: it signs what it puts and checks what it gets, so
//! no operation can read a catalog object around it. Objects that are not catalog
//! objects (dumps, file sets, sealed settings) pass through unchanged: the signed
//! manifest names each one's size and sha256, which every reader checks.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use crate::catalog::MANIFEST_LIMIT;
use crate::codec::sha256_hex;
use crate::error::{Error, ErrorKind, Result, Setting};
use crate::sink::{ByteStream, ObjectMeta, RetentionLock, Sink, SinkExt};

/// Where a signature starts: a line of its own after the payload.
const SIGNATURE_START: &[u8] = b"-----BEGIN SSH SIGNATURE-----";

pub use super::layout::{ADOPTION_NAME, Kind};

/// The secret key a host signs catalog objects with: an OpenSSH Ed25519 private key
/// (`pgproof keygen --signing`, or `ssh-keygen -t ed25519 -N ''`).
pub struct SigningKey {
    key: PrivateKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public_key().fingerprint())
    }
}

impl SigningKey {
    /// A new random key; `comment` names its holder (`backup@db1`).
    pub fn generate(comment: &str) -> Result<Self> {
        let mut key = PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519)
            .map_err(|e| Error::tool(format!("cannot generate a signing key: {e}")))?;
        key.set_comment(comment);
        Ok(Self { key })
    }

    /// Reads an unencrypted OpenSSH Ed25519 private key.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("cannot read the signing key {}", path.display()), e))?;
        Self::parse(&text).map_err(|e| {
            Error::new(
                ErrorKind::Key,
                format!("the signing key {}: {}", path.display(), e.message()),
            )
        })
    }

    /// Parses an unencrypted OpenSSH Ed25519 private key.
    pub fn parse(text: &str) -> Result<Self> {
        let key = PrivateKey::from_openssh(text.trim_start()).map_err(|e| {
            Error::new(
                ErrorKind::Key,
                format!("not an OpenSSH private key ({e}); give an unencrypted OpenSSH Ed25519 private key"),
            )
            .with_setting(Setting::SigningKey)
        })?;
        if key.is_encrypted() {
            return Err(Error::new(
                ErrorKind::Key,
                "is protected by a passphrase, which an unattended run cannot give; write an unprotected copy readable only by pgproof's user (ssh-keygen -p -N '')",
            ));
        }
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(Error::new(
                ErrorKind::Key,
                format!(
                    "is an {} key; pgproof signs with Ed25519 keys only",
                    key.algorithm()
                ),
            ));
        }
        Ok(Self { key })
    }

    /// The key in OpenSSH's private key format, to write to a file only its owner reads.
    pub fn to_openssh(&self) -> Result<zeroize::Zeroizing<String>> {
        self.key
            .to_openssh(LineEnding::LF)
            .map_err(|e| Error::tool(format!("cannot encode the signing key: {e}")))
    }

    /// Writes the key to `path`, readable by its owner only, never overwriting a file.
    pub fn write_file(&self, path: &Path) -> Result<()> {
        crate::codec::write_key_file(path, self.to_openssh()?.as_bytes())
    }

    /// A secret for `purpose` derived from the private key (HMAC-SHA256 keyed with
    /// its Ed25519 seed): a second host secret, such as the key of deduplicated
    /// chunks' ids, without a second key file; nobody without the private key can
    /// compute it, and it changes when the key does.
    pub fn derive_secret(&self, purpose: &str) -> Result<zeroize::Zeroizing<[u8; 32]>> {
        use hmac::{KeyInit, Mac};
        let pair =
            self.key.key_data().ed25519().ok_or_else(|| {
                Error::new(ErrorKind::Key, "the signing key is not an Ed25519 key")
            })?;
        let seed = zeroize::Zeroizing::new(pair.private.to_bytes());
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&*seed)
            .map_err(|e| Error::tool(format!("cannot key HMAC-SHA256: {e}")))?;
        mac.update(purpose.as_bytes());
        Ok(zeroize::Zeroizing::new(mac.finalize().into_bytes().into()))
    }

    /// Its public half, for every reader's `[trust] keys`.
    pub fn public_key(&self) -> TrustedKey {
        TrustedKey(self.key.public_key().clone())
    }

    fn sign(&self, namespace: &str, message: &[u8]) -> Result<String> {
        self.key
            .sign(namespace, HashAlg::Sha512, message)
            .and_then(|sig| sig.to_pem(LineEnding::LF))
            .map_err(|e| Error::tool(format!("cannot sign {namespace}: {e}")))
    }
}

/// A public key whose signatures a reader believes.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustedKey(PublicKey);

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustedKey({})", self.fingerprint())
    }
}

impl TrustedKey {
    /// Parses one OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
    pub fn parse(line: &str) -> Result<Self> {
        let key = PublicKey::from_openssh(line.trim()).map_err(|e| {
            Error::config(format!(
                "{:?} is not an OpenSSH public key ({e}); give the public key line of the signing key (ssh-ed25519 AAAA…)",
                crate::error::printable(line.trim())
            ))
            .with_setting(Setting::TrustedKeys)
        })?;
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(Error::config(format!(
                "the trusted key {} is an {} key; pgproof signs with Ed25519 keys only",
                key.fingerprint(HashAlg::Sha256),
                key.algorithm()
            )));
        }
        Ok(Self(key))
    }

    /// `SHA256:…`, as `ssh-keygen -l` shows it.
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint(HashAlg::Sha256).to_string()
    }

    /// Its comment (who holds the secret half).
    pub fn comment(&self) -> &str {
        self.0.comment()
    }

    /// The OpenSSH public key line.
    pub fn to_openssh(&self) -> String {
        self.0.to_openssh().unwrap_or_default()
    }
}

/// Who a verified object was signed by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signer {
    /// The key's fingerprint (`SHA256:…`).
    pub fingerprint: String,
    /// The key's comment, as the trusted key list has it.
    pub comment: String,
}

/// The signing key of this host, if it writes, and the keys it believes.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    signer: Option<Arc<SigningKey>>,
    trusted: Vec<TrustedKey>,
}

impl Keyring {
    /// A keyring that signs with `signer` (if any) and believes `trusted` plus the
    /// signer's own public key.
    pub fn new(signer: Option<SigningKey>, mut trusted: Vec<TrustedKey>) -> Self {
        if let Some(own) = signer.as_ref().map(SigningKey::public_key)
            && !trusted.iter().any(|k| k.0.key_data() == own.0.key_data())
        {
            trusted.push(own);
        }
        Self {
            signer: signer.map(Arc::new),
            trusted,
        }
    }

    /// The keys it believes.
    pub fn trusted(&self) -> &[TrustedKey] {
        &self.trusted
    }

    /// Who this keyring signs as, if it signs.
    pub fn signer(&self) -> Option<Signer> {
        self.signer.as_ref().map(|s| {
            let public = s.public_key();
            Signer {
                fingerprint: public.fingerprint(),
                comment: public.comment().to_owned(),
            }
        })
    }

    /// The payload (given a final newline if it lacks one) followed by its signature
    /// for `key`.
    pub fn sign(&self, key: &str, payload: &[u8]) -> Result<Vec<u8>> {
        let Some(signer) = &self.signer else {
            return Err(Error::config(format!(
                "no signing key to sign {key} with: pgproof signs every catalog object it writes"
            ))
            .with_setting(Setting::SigningKey));
        };
        let mut out = Vec::with_capacity(payload.len() + 400);
        out.extend_from_slice(payload);
        if !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        let signature = signer.sign(key, &out)?;
        out.extend_from_slice(signature.as_bytes());
        Ok(out)
    }

    /// Checks that `stored` (read from `key`) was signed for `key` by a trusted key;
    /// returns the payload and who signed it. Any failure is an integrity finding
    /// naming the object.
    pub fn open(&self, key: &str, stored: &[u8]) -> Result<(Vec<u8>, Signer)> {
        let what = Kind::of(key).map_or("catalog object", Kind::as_str);
        let finding =
            |why: String| Error::integrity(format!("{what} {key} {why}")).with_object(key);
        let Some((payload, armored)) = split(stored) else {
            // Only a manifest can be adopted; any other unsigned object is just refused.
            let adoption = if Kind::of(key) == Some(Kind::Manifest) {
                " (if your backup logs show this host took it before pgproof signed its catalog, verify it and adopt it)"
            } else {
                ""
            };
            return Err(finding(format!(
                "is not signed: pgproof signs every catalog object it writes, so this one is not trusted{adoption}"
            )));
        };
        let signature = SshSig::from_pem(armored).map_err(|e| {
            finding(format!(
                "carries an unreadable signature ({e}); not trusted"
            ))
        })?;
        // Exactly as pgproof and ssh-keygen write it: base64 has spare bits, and the
        // version field is not covered by the signature (ssh-key accepts 0 and 1), yet
        // a stored object must not change by a byte without being refused.
        if signature.version() != SshSig::VERSION
            || signature
                .to_pem(LineEnding::LF)
                .ok()
                .is_none_or(|canonical| canonical.as_bytes() != armored)
        {
            return Err(finding(
                "carries a signature in an encoding pgproof does not write; not trusted".into(),
            ));
        }
        let Some(trusted) = self
            .trusted
            .iter()
            .find(|k| k.0.key_data() == signature.public_key())
        else {
            let fingerprint = ssh_key::PublicKey::from(signature.public_key().clone())
                .fingerprint(HashAlg::Sha256);
            return Err(finding(format!(
                "is signed by {fingerprint}, which is not a trusted key (trust.keys); not trusted"
            )));
        };
        if signature.namespace() != key {
            return Err(finding(format!(
                "carries a signature made for {:?}: copied from another object, not trusted",
                crate::error::printable(signature.namespace())
            )));
        }
        trusted.0.verify(key, payload, &signature).map_err(|_| {
            finding("does not match its signature: edited after it was signed; not trusted".into())
        })?;
        Ok((
            payload.to_vec(),
            Signer {
                fingerprint: trusted.fingerprint(),
                comment: trusted.comment().to_owned(),
            },
        ))
    }
}

/// Whether `stored` carries a signature of its own (an adopted manifest does not: its
/// adoption vouches for it).
pub(crate) fn carries_signature(stored: &[u8]) -> bool {
    split(stored).is_some()
}

/// Splits a stored object at the line where its signature starts.
fn split(stored: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut from = 0;
    while let Some(pos) = find(&stored[from..], SIGNATURE_START).map(|p| p + from) {
        if pos == 0 || stored[pos - 1] == b'\n' {
            return Some((&stored[..pos], &stored[pos..]));
        }
        from = pos + 1;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What adopts a backup taken before catalogs were signed: the sha256 of its unsigned
/// manifest, signed after a verification of it passed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adoption {
    /// The database.
    pub database: String,
    /// The backup.
    pub backup_id: String,
    /// sha256 of the unsigned manifest's bytes.
    pub manifest_sha256: String,
    /// When it was adopted.
    pub adopted_at: jiff::Timestamp,
    /// The verification that proved it.
    pub verification: String,
}

/// A [`Sink`] that signs every catalog object it stores and refuses every catalog
/// object it reads that a trusted key did not sign for its key.
///
/// Other objects pass through untouched: the signed manifest lists their sizes and
/// sha256s, which readers check as they stream.
#[derive(Debug, Clone)]
pub struct SignedSink {
    inner: Arc<dyn Sink>,
    keys: Keyring,
    adopting: Option<String>,
}

impl SignedSink {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Sink>, keys: Keyring) -> Self {
        Self {
            inner,
            keys,
            adopting: None,
        }
    }

    /// The same sink, believing the unsigned manifest `<database>/<backup_id>` for one
    /// verification that may adopt it ([`adopt`]). Its signature is the only check
    /// waived: a signed manifest under that key must still verify.
    pub fn adopting(&self, database: &str, backup_id: &str) -> Self {
        Self {
            adopting: Some(super::layout::manifest(database, backup_id)),
            ..self.clone()
        }
    }

    /// The keyring.
    pub fn keys(&self) -> &Keyring {
        &self.keys
    }

    /// The sink beneath, for operations that copy stored bytes as they are.
    pub fn inner(&self) -> &Arc<dyn Sink> {
        &self.inner
    }

    /// Reads and checks the catalog object under `key`; returns the payload and its
    /// signer (for an adopted manifest, the adoption's).
    pub async fn get_signed(&self, key: &str) -> Result<(Vec<u8>, Signer)> {
        // A catalog index holds a whole database's small objects: it may be larger.
        let limit = match Kind::of(key) {
            Some(Kind::Index) => super::index::INDEX_LIMIT,
            _ => MANIFEST_LIMIT,
        };
        let stored = self.inner.get_bytes(key, limit).await?;
        self.open_stored(key, stored).await
    }

    /// Checks `stored`, read from `key`, as [`get_signed`](Self::get_signed) does:
    /// for callers that keep the stored bytes (a certificate carries the signature).
    pub async fn open_stored(&self, key: &str, stored: Vec<u8>) -> Result<(Vec<u8>, Signer)> {
        match self.keys.open(key, &stored) {
            Ok(opened) => Ok(opened),
            Err(e) if Kind::of(key) == Some(Kind::Manifest) && split(&stored).is_none() => {
                if self.adopting.as_deref() == Some(key) {
                    tracing::warn!(manifest = key, "reading an unsigned manifest to adopt it");
                    return Ok((
                        stored,
                        Signer {
                            fingerprint: "unsigned".into(),
                            comment: "adopting".into(),
                        },
                    ));
                }
                self.adopted(key, stored).await?.ok_or(e)
            }
            Err(e) => Err(e),
        }
    }

    /// An unsigned manifest that a signed adoption names by its sha256.
    async fn adopted(&self, key: &str, stored: Vec<u8>) -> Result<Option<(Vec<u8>, Signer)>> {
        let (Some(db), Some(id)) = (key.split('/').next(), key.split('/').nth(1)) else {
            return Ok(None);
        };
        let adoption_key = super::layout::adoption(db, id);
        let (payload, signer) = match Box::pin(self.get_signed(&adoption_key)).await {
            Ok(found) => found,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let adoption: Adoption = serde_json::from_slice(&payload).map_err(|e| {
            Error::integrity(format!("adoption {adoption_key} is not readable: {e}"))
                .with_object(&adoption_key)
        })?;
        if adoption.manifest_sha256 != sha256_hex(&stored) {
            return Err(Error::integrity(format!(
                "manifest {key} is unsigned and not the one {adoption_key} adopted (its sha256 differs): it was replaced or edited; not trusted"
            ))
            .with_object(key));
        }
        Ok(Some((stored, signer)))
    }
}

/// Records that the unsigned manifest of `database`/`backup_id`, whose bytes hash to
/// `manifest_sha256`, was proven by `verification` and is trusted from now on.
pub async fn adopt(
    sink: &dyn Sink,
    database: &str,
    backup_id: &str,
    manifest_sha256: &str,
    verification: &str,
) -> Result<Adoption> {
    let adoption = Adoption {
        database: database.to_owned(),
        backup_id: backup_id.to_owned(),
        manifest_sha256: manifest_sha256.to_owned(),
        adopted_at: jiff::Timestamp::now(),
        verification: verification.to_owned(),
    };
    let mut body = serde_json::to_vec_pretty(&adoption)
        .map_err(|e| Error::tool(format!("cannot serialize an adoption: {e}")))?;
    body.push(b'\n');
    crate::sink::SinkExt::put_bytes(
        sink,
        &super::layout::adoption(database, backup_id),
        Bytes::from(body),
    )
    .await?;
    Ok(adoption)
}

#[async_trait]
impl Sink for SignedSink {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn put(&self, key: &str, body: ByteStream) -> Result<u64> {
        if Kind::of(key).is_none() {
            return self.inner.put(key, body).await;
        }
        let payload: Vec<u8> = body
            .try_fold(Vec::new(), |mut acc, chunk| async move {
                acc.extend_from_slice(&chunk);
                Ok(acc)
            })
            .await?;
        let signed = self.keys.sign(key, &payload)?;
        self.inner
            .put(
                key,
                futures::stream::once(async move { Ok(Bytes::from(signed)) }).boxed(),
            )
            .await
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        if Kind::of(key).is_none() {
            return self.inner.get(key).await;
        }
        let (payload, _) = self.get_signed(key).await?;
        Ok(futures::stream::once(async move { Ok(Bytes::from(payload)) }).boxed())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }

    fn retention(&self) -> Option<RetentionLock> {
        self.inner.retention()
    }

    async fn extend_retention(&self, key: &str, lock: &RetentionLock) -> Result<()> {
        self.inner.extend_retention(key, lock).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring() -> Keyring {
        Keyring::new(Some(SigningKey::generate("test").unwrap()), Vec::new())
    }

    #[test]
    fn a_signature_holds_for_its_own_key_and_content_only() {
        let keys = keyring();
        let signed = keys.sign("app/1/manifest.json", b"{\"a\":1}").unwrap();
        let (payload, signer) = keys.open("app/1/manifest.json", &signed).unwrap();
        assert_eq!(payload, b"{\"a\":1}\n");
        assert_eq!(Some(signer), keys.signer());

        let replayed = keys.open("app/2/manifest.json", &signed).unwrap_err();
        assert_eq!(replayed.kind(), ErrorKind::Integrity);
        assert!(
            replayed.message().contains("copied from another object"),
            "{replayed}"
        );

        let mut edited = signed.clone();
        edited[5] = b'2';
        let e = keys.open("app/1/manifest.json", &edited).unwrap_err();
        assert!(e.message().contains("edited after it was signed"), "{e}");

        let e = keys
            .open("app/1/manifest.json", b"{\"a\":1}\n")
            .unwrap_err();
        assert!(e.message().contains("is not signed"), "{e}");
        assert!(e.message().contains("adopt it"), "{e}");
        // Only a manifest can be adopted: other objects are not offered it.
        let e = keys.open("app/_index.json", b"{}\n").unwrap_err();
        assert!(e.message().contains("is not signed"), "{e}");
        assert!(!e.message().contains("adopt"), "{e}");

        let stranger = keyring();
        let e = stranger.open("app/1/manifest.json", &signed).unwrap_err();
        assert!(e.message().contains("not a trusted key"), "{e}");

        let reader = Keyring::new(None, vec![keys.signer.as_ref().unwrap().public_key()]);
        assert!(reader.open("app/1/manifest.json", &signed).is_ok());
        assert!(reader.sign("app/1/manifest.json", b"x").is_err());
    }

    #[test]
    fn keys_round_trip_through_their_openssh_forms() {
        let key = SigningKey::generate("host").unwrap();
        let again = SigningKey::parse(&key.to_openssh().unwrap()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let public = TrustedKey::parse(&key.public_key().to_openssh()).unwrap();
        assert_eq!(public.fingerprint(), key.public_key().fingerprint());
        assert!(public.fingerprint().starts_with("SHA256:"));
        assert!(TrustedKey::parse("ssh-ed25519 garbage").is_err());
        assert!(SigningKey::parse("not a key").is_err());
    }
}
