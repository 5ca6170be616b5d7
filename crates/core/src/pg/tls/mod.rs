//! TLS to PostgreSQL with libpq's meaning of `sslmode`, `sslrootcert`, `sslcert` and
//! `sslkey`, for pgproof's own connections (rustls on ring, through tokio-postgres's
//! TLS hooks) and, through `PGSSL*` variables, for its child programs.
//!
//! tokio-postgres knows only disable/prefer/require and none of the file options, so
//! they are taken out of the connection string here and enforced by the certificate
//! verifier: `require` checks nothing (unless a root certificate is given, then it
//! acts as `verify-ca`, as in libpq), `verify-ca` checks the chain, `verify-full`
//! the chain and the host name.

mod verifiers;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::error::{Error, Result};

pub use verifiers::{RustlsConnect, RustlsConnector, RustlsStream};
use verifiers::{Unverified, Verify};

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain first, TLS if the server insists.
    Allow,
    /// TLS if the server offers it, unverified (libpq's default).
    #[default]
    Prefer,
    /// TLS or fail; the certificate is not checked unless a root certificate is given.
    Require,
    /// TLS, certificate chain checked against the root certificate.
    VerifyCa,
    /// As verify-ca, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    /// Parses libpq's spelling.
    pub fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::config(format!(
                    "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                )));
            }
        })
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The TLS options of one connection string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file, or `system` for the operating system's roots.
    pub root_cert: Option<String>,
    /// `sslcert`: the client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// `sslkey`: its unencrypted private key (PEM).
    pub key: Option<PathBuf>,
}

/// The option names taken out of a connection string.
const TLS_KEYS: [&str; 5] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword"];

impl TlsOptions {
    /// Takes the TLS options out of a libpq URI or `key=value` string, returning what
    /// is left for tokio-postgres and the options found (`None` where absent).
    pub fn split(url: &str) -> Result<(String, Vec<(String, String)>)> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let Some((base, query)) = url.split_once('?') else {
                return Ok((url.to_owned(), Vec::new()));
            };
            let mut kept = Vec::new();
            let mut taken = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                if TLS_KEYS.contains(&key) {
                    taken.push((key.to_owned(), percent_decode(value)?));
                } else {
                    kept.push(pair);
                }
            }
            let rest = if kept.is_empty() {
                base.to_owned()
            } else {
                format!("{base}?{}", kept.join("&"))
            };
            return Ok((rest, taken));
        }
        let mut kept = Vec::new();
        let mut taken = Vec::new();
        for (key, value) in key_values(url)? {
            if TLS_KEYS.contains(&key.as_str()) {
                taken.push((key, value));
            } else {
                kept.push(format!(
                    "{key}='{}'",
                    value.replace('\\', "\\\\").replace('\'', "\\'")
                ));
            }
        }
        Ok((kept.join(" "), taken))
    }

    /// Builds the options from those a connection string named, then `env`
    /// (`PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`) for the rest.
    pub fn resolve(
        from_url: &[(String, String)],
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let get = |key: &str, var: &str| {
            from_url
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .or_else(|| if var.is_empty() { None } else { env(var) })
                .filter(|v| !v.is_empty())
        };
        if get("sslpassword", "").is_some() {
            return Err(Error::config(
                "sslpassword is not supported: pgproof reads only unencrypted client keys; decrypt the key (openssl pkey -in key.enc -out key.pem) and protect the file instead",
            ));
        }
        Ok(Self {
            mode: match get("sslmode", "PGSSLMODE") {
                Some(mode) => SslMode::parse(&mode)?,
                None => SslMode::Prefer,
            },
            root_cert: get("sslrootcert", "PGSSLROOTCERT"),
            cert: get("sslcert", "PGSSLCERT").map(PathBuf::from),
            key: get("sslkey", "PGSSLKEY").map(PathBuf::from),
        })
    }

    /// The mode actually enforced: `require` with a root certificate verifies the
    /// chain, as libpq does.
    pub fn effective_mode(&self) -> SslMode {
        match (self.mode, &self.root_cert) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (mode, _) => mode,
        }
    }

    /// Environment for a libpq child program, so it connects exactly as pgproof does.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("PGSSLMODE", self.mode.as_str().to_owned())];
        if let Some(root) = &self.root_cert {
            env.push(("PGSSLROOTCERT", root.clone()));
        }
        if let Some(cert) = &self.cert {
            env.push(("PGSSLCERT", cert.display().to_string()));
        }
        if let Some(key) = &self.key {
            env.push(("PGSSLKEY", key.display().to_string()));
        }
        env
    }

    /// The rustls connector for these options.
    pub fn connector(&self) -> Result<RustlsConnector> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::config(format!("cannot set up TLS: {e}")))?;
        let mode = self.effective_mode();
        let verifier: Arc<dyn ServerCertVerifier> = match mode {
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = self.root_store()?;
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| {
                            Error::config(format!("cannot use the root certificates: {e}"))
                        })?;
                Arc::new(Verify {
                    webpki,
                    check_name: mode == SslMode::VerifyFull,
                    provider: provider.clone(),
                })
            }
            _ => Arc::new(Unverified { provider }),
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let certs = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                    .map_err(|e| {
                        Error::config(format!(
                            "cannot read the client certificate {} (sslcert): {e}",
                            cert.display()
                        ))
                    })?;
                let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    Error::config(format!(
                        "cannot read the client key {} (sslkey): {e}; it must be an unencrypted PEM key",
                        key.display()
                    ))
                })?;
                builder.with_client_auth_cert(certs, private).map_err(|e| {
                    Error::config(format!(
                        "the client certificate and key do not go together: {e}"
                    ))
                })?
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::config(
                    "a client certificate needs both sslcert and sslkey",
                ));
            }
            (None, None) => builder.with_no_client_auth(),
        };
        Ok(RustlsConnector {
            config: Arc::new(config),
        })
    }

    fn root_store(&self) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        let default_file = std::env::var_os("HOME")
            .map(|home| Path::new(&home).join(".postgresql/root.crt"))
            .filter(|p| p.is_file());
        match self.root_cert.as_deref() {
            Some("system") => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(Error::config(
                        "sslrootcert=system, but the system has no root certificates (install ca-certificates)",
                    ));
                }
            }
            root => {
                let file = match (root, default_file) {
                    (Some(path), _) => PathBuf::from(path),
                    (None, Some(default)) => default,
                    (None, None) => {
                        return Err(Error::config(format!(
                            "sslmode={} needs the CA certificate that signed the server's: set sslrootcert to its file (or to system)",
                            self.mode.as_str()
                        )));
                    }
                };
                let certs = CertificateDer::pem_file_iter(&file)
                    .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                    .map_err(|e| {
                        Error::config(format!(
                            "cannot read the root certificate {} (sslrootcert): {e}",
                            file.display()
                        ))
                    })?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(Error::config(format!(
                        "the root certificate file {} (sslrootcert) holds no certificate",
                        file.display()
                    )));
                }
            }
        }
        Ok(roots)
    }
}

/// `%XX` decoding for URI query values.
fn percent_decode(text: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            let byte = u8::from_str_radix(hex, 16).map_err(|_| {
                Error::config("a connection URL has a malformed %-escape in a TLS option")
            })?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::config("a connection URL's TLS option is not UTF-8"))
}

/// libpq's `key=value` form: values may be single-quoted, with backslash escapes.
fn key_values(text: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(Error::config(format!(
                "cannot parse the PostgreSQL connection string: {key:?} has no value; expected key=value pairs"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(Error::config(
                            "cannot parse the PostgreSQL connection string: an unterminated quoted value",
                        ));
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_come_out_of_uris_and_key_value_strings() {
        let (rest, taken) = TlsOptions::split(
            "postgres://u@h/d?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u@h/d?application_name=x");
        assert_eq!(
            taken,
            [
                ("sslmode".to_owned(), "verify-full".to_owned()),
                ("sslrootcert".to_owned(), "/etc/ca.pem".to_owned())
            ]
        );
        let (rest, taken) =
            TlsOptions::split("host=h dbname='my db' sslmode = require sslkey='/k y'").unwrap();
        assert_eq!(rest, "host='h' dbname='my db'");
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[1], ("sslkey".to_owned(), "/k y".to_owned()));
    }

    #[test]
    fn the_url_wins_over_the_environment_and_require_with_a_root_verifies_the_chain() {
        let env = |k: &str| match k {
            "PGSSLMODE" => Some("verify-full".to_owned()),
            "PGSSLROOTCERT" => Some("/env/ca.pem".to_owned()),
            _ => None,
        };
        let from_env = TlsOptions::resolve(&[], &env).unwrap();
        assert_eq!(from_env.mode, SslMode::VerifyFull);
        let url = [("sslmode".to_owned(), "require".to_owned())];
        let both = TlsOptions::resolve(&url, &env).unwrap();
        assert_eq!(both.mode, SslMode::Require);
        assert_eq!(both.effective_mode(), SslMode::VerifyCa);
        assert_eq!(
            TlsOptions::resolve(&[], &|_| None).unwrap().mode,
            SslMode::Prefer
        );
        let bad = [("sslmode".to_owned(), "verify".to_owned())];
        assert!(TlsOptions::resolve(&bad, &|_| None).is_err());
        let password = [("sslpassword".to_owned(), "x".to_owned())];
        let err = TlsOptions::resolve(&password, &|_| None).unwrap_err();
        assert!(!err.to_string().contains("=x"));
    }
}
