//! The age stage: recipients for backup, identities for restore, key generation.

use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use age::x25519;

use crate::error::{Error, Result, Setting};

/// Public keys a backup is encrypted to.
#[derive(Clone, Debug)]
pub struct Recipients {
    keys: Vec<x25519::Recipient>,
}

impl Recipients {
    /// Parses `age1…` public keys given inline (named `inline_origin[i]` in errors)
    /// and, if set, read from a recipients file (one key a line, `#` comments allowed,
    /// as `age -R` reads).
    pub fn load(inline: &[String], inline_origin: &str, file: Option<&Path>) -> Result<Self> {
        let mut keys = Vec::new();
        for (i, key) in inline.iter().enumerate() {
            keys.push(parse_recipient(
                key.trim(),
                &format!("{inline_origin}[{i}]"),
            )?);
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::config(format!(
                    "cannot read the age recipients file {}: {e}",
                    path.display()
                ))
                .with_setting(Setting::Recipients)
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                keys.push(parse_recipient(
                    line,
                    &format!("{} line {}", path.display(), n + 1),
                )?);
            }
        }
        if keys.is_empty() {
            return Err(Error::config(
                "no age recipient configured: give at least one age1… public key, or choose explicitly to store backups unencrypted",
            )
            .with_setting(Setting::Recipients));
        }
        Ok(Self { keys })
    }

    /// The public keys, as `age1…` strings (safe to record in a manifest).
    pub fn public_keys(&self) -> Vec<String> {
        self.keys.iter().map(ToString::to_string).collect()
    }

    /// Wraps `output` so what is written to the result is age-encrypted to these
    /// recipients. Call `finish()` on the writer, or the object is truncated.
    pub fn encrypt<W: Write>(&self, output: W) -> Result<age::stream::StreamWriter<W>> {
        let encryptor =
            age::Encryptor::with_recipients(self.keys.iter().map(|k| k as &dyn age::Recipient))
                .map_err(|e| {
                    Error::config(format!("cannot encrypt to the configured recipients: {e}"))
                        .with_setting(Setting::Recipients)
                })?;
        encryptor
            .wrap_output(output)
            .map_err(|e| Error::io("writing the age header", e))
    }
}

fn parse_recipient(text: &str, origin: &str) -> Result<x25519::Recipient> {
    if text.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
        // Never echo it: the message says where it is, not what it is.
        return Err(Error::config(format!(
            "{origin} holds an age secret key, not a public key: put its public key (age1…) there, keep the secret key in the identity file, and treat this one as exposed"
        ))
        .with_setting(Setting::Recipients));
    }
    x25519::Recipient::from_str(text).map_err(|e| {
        Error::config(format!(
            "{origin} is not an age X25519 public key ({e}); it must look like age1…"
        ))
        .with_setting(Setting::Recipients)
    })
}

/// Private keys that can open backups.
#[derive(Clone)]
pub struct Identities {
    keys: std::sync::Arc<Vec<Box<dyn age::Identity + Send + Sync>>>,
    origin: String,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({} from {})", self.keys.len(), self.origin)
    }
}

impl Identities {
    /// Reads an age identity file (as written by `pgproof keygen` or `age-keygen`).
    pub fn load(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::config(format!(
                "age identity file {} does not exist; name the file that holds the AGE-SECRET-KEY-1… line",
                path.display()
            ))
            .with_setting(Setting::Identity),
            _ => Error::io(
                format!("cannot open age identity file {}", path.display()),
                e,
            ),
        })?;
        if let Ok(meta) = file.metadata()
            && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0
        {
            tracing::warn!(file = %path.display(), "the age identity file is readable by group or others; chmod 600 it");
        }
        let parsed = age::IdentityFile::from_buffer(BufReader::new(file))
            .map_err(|e| {
                Error::config(format!(
                    "{} is not an age identity file: {e}",
                    path.display()
                ))
                .with_setting(Setting::Identity)
            })?
            .into_identities()
            .map_err(|e| {
                Error::config(format!(
                    "{} holds an identity pgproof cannot use: {e}",
                    path.display()
                ))
                .with_setting(Setting::Identity)
            })?;
        if parsed.is_empty() {
            return Err(Error::config(format!(
                "{} holds no age identity (AGE-SECRET-KEY-1… line)",
                path.display()
            ))
            .with_setting(Setting::Identity));
        }
        Ok(Self {
            keys: std::sync::Arc::new(parsed),
            origin: path.display().to_string(),
        })
    }

    /// Opens an age stream; the returned reader authenticates every 64 KiB chunk before
    /// handing it out, and fails at the end if the stream was truncated.
    pub fn decrypt<R: Read>(&self, input: R) -> Result<age::stream::StreamReader<R>> {
        let decryptor = age::Decryptor::new(input).map_err(|e| self.decrypt_error(e))?;
        decryptor
            .decrypt(self.keys.iter().map(|k| k.as_ref() as &dyn age::Identity))
            .map_err(|e| self.decrypt_error(e))
    }

    fn decrypt_error(&self, e: age::DecryptError) -> Error {
        match e {
            age::DecryptError::NoMatchingKeys => Error::key(format!(
                "no identity in {} can open this backup: it was encrypted to other recipients (the manifest lists their public keys)",
                self.origin
            ))
            .with_setting(Setting::Identity),
            age::DecryptError::Io(e) => Error::io("reading the backup object", e),
            other => Error::integrity(format!(
                "the backup object is not a valid age file or was altered ({other}); it cannot be restored"
            )),
        }
    }
}

/// A freshly generated key pair.
pub struct KeyPair {
    identity: x25519::Identity,
}

impl KeyPair {
    /// Generates a new X25519 identity.
    pub fn generate() -> Self {
        Self {
            identity: x25519::Identity::generate(),
        }
    }

    /// The public key (`age1…`), for `encryption.recipients`.
    pub fn public_key(&self) -> String {
        self.identity.to_public().to_string()
    }

    /// The public key as recipients, for a backup made with this pair.
    pub fn recipients(&self) -> Recipients {
        Recipients {
            keys: vec![self.identity.to_public()],
        }
    }

    /// The private key as identities, for restoring what [`recipients`](Self::recipients) encrypted.
    pub fn identities(&self) -> Identities {
        Identities {
            keys: std::sync::Arc::new(vec![Box::new(self.identity.clone())]),
            origin: "a key generated for this run".into(),
        }
    }

    /// Writes the identity file to `path`, create-only, mode 0600, in the format
    /// `age-keygen` writes.
    pub fn write_identity_file(&self, path: &Path) -> Result<()> {
        let created = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ");
        let secret = self.identity.to_string();
        let body = format!(
            "# created: {created}\n# public key: {}\n{}\n",
            self.public_key(),
            secret.expose_secret()
        );
        write_key_file(path, body.as_bytes())
    }
}

/// Writes a secret key to `path`: create-only, mode 0600, synced.
pub(crate) fn write_key_file(path: &Path, body: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => Error::already_exists(format!(
                "{} already exists; pgproof never overwrites a key (move it away first)",
                path.display()
            )),
            _ => Error::io(format!("cannot create {}", path.display()), e),
        })?;
    file.write_all(body)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn round_trip_and_wrong_key() {
        let dir = tempfile::tempdir().unwrap();
        let pair = KeyPair::generate();
        let key_path = dir.path().join("key");
        pair.write_identity_file(&key_path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key_path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            pair.write_identity_file(&key_path),
            Err(e) if e.kind() == ErrorKind::AlreadyExists
        ));

        let recipients = Recipients::load(&[pair.public_key()], "recipients", None).unwrap();
        let mut w = recipients.encrypt(Vec::new()).unwrap();
        w.write_all(b"secret rows").unwrap();
        let ct = w.finish().unwrap();
        assert!(ct.starts_with(b"age-encryption.org/v1\n"));

        let ids = Identities::load(&key_path).unwrap();
        let mut out = Vec::new();
        ids.decrypt(&ct[..]).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, b"secret rows");

        let other_path = dir.path().join("other");
        KeyPair::generate()
            .write_identity_file(&other_path)
            .unwrap();
        let other = Identities::load(&other_path).unwrap();
        assert!(matches!(other.decrypt(&ct[..]), Err(e) if e.kind() == ErrorKind::Key));
    }

    #[test]
    fn bad_recipient_names_where_it_came_from() {
        let err = Recipients::load(&["age1nope".into()], "recipients", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("recipients[0]"), "{err}");
        let err = Recipients::load(&[], "recipients", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unencrypted"), "{err}");
    }

    #[test]
    fn a_secret_key_among_recipients_is_refused_without_echoing_it() {
        let secret = KeyPair::generate().identity.to_string();
        let err = Recipients::load(&[secret.expose_secret().to_owned()], "recipients", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("recipients[0] holds an age secret key"),
            "{err}"
        );
        assert!(!err.contains(secret.expose_secret()), "{err}");
    }

    #[test]
    fn missing_identity_file_says_what_to_set() {
        let err = Identities::load(Path::new("/nonexistent/key")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert_eq!(err.setting(), Some(Setting::Identity));
    }
}
