//! Proof certificates: what an auditor needs to check that a backup was taken and
//! proven, without pgproof's sink, the data, or the operator's word.
//!
//! A certificate carries, for each backup it covers, the manifest exactly as signed
//! (versions, sizes, sha256s, the per-table fingerprints taken in the dump's
//! snapshot) with its signature, and the newest trusted verification record exactly
//! as signed (every check with its figures, the measured restore time, the verifier's
//! tool version and time) with the verifier's signature. The whole is signed again by
//! the host that issued it, in the catalog's format (see [`trust`](crate::catalog::trust)) with
//! the namespace [`CERTIFICATE_NAMESPACE`]. Nothing in it is secret: manifests hold
//! public keys only, and setting values stay sealed in the sink.
//!
//! [`verify`] checks one offline against the keys an auditor trusts; each embedded
//! signature can also be checked with `ssh-keygen -Y verify` by hand.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::catalog::layout::{self, Kind};
use crate::catalog::trust::{Adoption, Keyring, SignedSink, Signer};
use crate::catalog::{Inventory, MANIFEST_LIMIT, Manifest, manifest_key};
use crate::codec::sha256_hex;
use crate::error::{Error, ErrorKind, Result};
use crate::sink::{Sink, SinkExt};
use crate::verify::Report;

/// The signature namespace of certificates.
pub const CERTIFICATE_NAMESPACE: &str = "pgproof-certificate";

/// Version of the certificate layout.
pub const CERTIFICATE_VERSION: u32 = 1;

/// A signed statement of which backups of a database were taken and proven.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// [`CERTIFICATE_VERSION`].
    pub certificate_version: u32,
    /// The database.
    pub database: String,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// The period it covers, for a bundle (`--since`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    /// Each backup covered, oldest first.
    pub backups: Vec<CertifiedBackup>,
}

/// One backup in a certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertifiedBackup {
    /// Its id.
    pub backup_id: crate::catalog::BackupId,
    /// sha256 of the manifest's signed content (what the next manifest links to).
    pub manifest_sha256: String,
    /// The manifest, as signed.
    pub manifest: SignedObject,
    /// For a backup taken before signing, the adoption that vouches for its manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adoption: Option<SignedObject>,
    /// The newest trusted verification record, as signed; `None`: never verified.
    pub verification: Option<SignedObject>,
}

/// A catalog object exactly as stored: its key, its content and its signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedObject {
    /// Its key in the sink (the signature's namespace).
    pub key: String,
    /// The signed content.
    pub payload: String,
    /// The OpenSSH signature (empty for an adopted, unsigned manifest).
    pub signature: String,
    /// Who signed it, as the issuer's keys knew it.
    pub signer: Signer,
}

/// What [`verify`] found: the certificate and who signed it.
#[derive(Debug)]
pub struct Checked {
    /// The certificate.
    pub certificate: Certificate,
    /// Its issuer.
    pub issuer: Signer,
    /// Per backup: the manifest, and the verification report if there is one.
    pub backups: Vec<(Manifest, Option<Report>)>,
}

/// Issues a certificate for `backup_ids` of `database` (or, with `since`, every
/// trusted backup of the database that started at or after it), signed with the
/// keyring of `sink`.
pub async fn issue(
    sink: &SignedSink,
    database: &str,
    backup_ids: &[crate::catalog::BackupId],
    since: Option<Timestamp>,
) -> Result<Vec<u8>> {
    let inventory = Inventory::load(sink, Some(database)).await?;
    let Some(part) = inventory.databases.get(database) else {
        return Err(Error::not_found(format!(
            "no backup of database {database} in {}",
            sink.describe()
        )));
    };
    // A bundle vouches for a period: a manifest it would leave out because it is not
    // trusted (a failing backup made unreadable, say) must stop it, not shrink it.
    if since.is_some()
        && let Some(f) = part
            .findings
            .iter()
            .find(|f| f.key.ends_with("/manifest.json"))
    {
        return Err(Error::integrity(format!(
            "{} is not trusted ({}); a certificate of the period would leave it out: find out who wrote it, remove it, then issue again",
            f.key, f.problem
        ))
        .with_object(f.key.clone()));
    }
    let mut backups = Vec::new();
    for entry in &part.backups {
        let Ok(manifest) = &entry.manifest else {
            continue;
        };
        let wanted = match since {
            Some(since) => manifest.started_at >= since,
            None => backup_ids.contains(&entry.backup_id),
        };
        if !wanted {
            continue;
        }
        let key = manifest_key(database, &entry.backup_id);
        let manifest = signed_object(sink, &key).await?;
        let adoption = if manifest.signature.is_empty() {
            Some(signed_object(sink, &layout::adoption(database, &entry.backup_id)).await?)
        } else {
            None
        };
        // The newest record a trusted key signed.
        let mut records: Vec<&str> = entry
            .objects
            .iter()
            .map(|o| o.key.as_str())
            .filter(|k| Kind::of(k) == Some(Kind::Record))
            .collect();
        records.sort_unstable_by(|a, b| b.cmp(a));
        let mut verification = None;
        let manifest_sha256 = sha256_hex(manifest.payload.as_bytes());
        for record in records {
            match signed_object(sink, record).await {
                // Only a record about this very manifest.
                Ok(found)
                    if serde_json::from_str::<Report>(&found.payload)
                        .is_ok_and(|r| r.manifest_sha256 == manifest_sha256) =>
                {
                    verification = Some(found);
                    break;
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::Integrity | ErrorKind::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        backups.push(CertifiedBackup {
            backup_id: entry.backup_id.clone(),
            manifest_sha256,
            manifest,
            adoption,
            verification,
        });
    }
    if backups.is_empty() {
        return Err(Error::not_found(match since {
            Some(since) => format!("no trusted backup of {database} started at or after {since}"),
            None => format!("no trusted backup {} of {database}", backup_ids.join(", ")),
        }));
    }
    let certificate = Certificate {
        certificate_version: CERTIFICATE_VERSION,
        database: database.to_owned(),
        issued_at: Timestamp::now(),
        since,
        backups,
    };
    let mut payload = serde_json::to_vec_pretty(&certificate)
        .map_err(|e| Error::tool(format!("cannot serialize the certificate: {e}")))?;
    payload.push(b'\n');
    sink.keys().sign(CERTIFICATE_NAMESPACE, &payload)
}

/// Reads `key` as stored and checks it through the sink's gate.
async fn signed_object(sink: &SignedSink, key: &str) -> Result<SignedObject> {
    let stored = sink.inner().get_bytes(key, MANIFEST_LIMIT).await?;
    let (payload, signer) = sink.open_stored(key, stored.clone()).await?;
    let signature = stored.get(payload.len()..).unwrap_or_default();
    let text = |bytes: &[u8]| {
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            Error::integrity(format!("{key} is not text; pgproof writes JSON")).with_object(key)
        })
    };
    Ok(SignedObject {
        key: key.to_owned(),
        payload: text(&payload)?,
        signature: text(signature)?,
        signer,
    })
}

/// Checks a certificate offline: its own signature and every embedded one against
/// `keys`, each manifest's sha256, and that each record and adoption is about the
/// backup it sits under. Any failure is an integrity error naming what failed.
pub fn verify(stored: &[u8], keys: &Keyring) -> Result<Checked> {
    let (payload, issuer) = keys.open(CERTIFICATE_NAMESPACE, stored)?;
    let certificate: Certificate = serde_json::from_slice(&payload)
        .map_err(|e| Error::integrity(format!("the certificate is not readable: {e}")))?;
    if certificate.certificate_version != CERTIFICATE_VERSION {
        return Err(Error::integrity(format!(
            "certificate version {} is not one this pgproof reads ({CERTIFICATE_VERSION})",
            certificate.certificate_version
        )));
    }
    let mut backups = Vec::new();
    let mut seen = BTreeMap::new();
    for b in &certificate.backups {
        let db = &certificate.database;
        let key = manifest_key(db, &b.backup_id);
        if b.manifest.key != key || seen.insert(b.backup_id.clone(), ()).is_some() {
            return Err(Error::integrity(format!(
                "the certificate's entry for {} carries the manifest {}",
                b.backup_id, b.manifest.key
            )));
        }
        match &b.adoption {
            None => embedded(keys, &b.manifest)?,
            Some(adoption) => {
                embedded(keys, adoption)?;
                let adopted: Adoption = serde_json::from_str(&adoption.payload)
                    .map_err(|e| Error::integrity(format!("adoption {}: {e}", adoption.key)))?;
                if adoption.key != layout::adoption(db, &b.backup_id)
                    || adopted.manifest_sha256 != sha256_hex(b.manifest.payload.as_bytes())
                {
                    return Err(Error::integrity(format!(
                        "the adoption of {} does not vouch for the manifest the certificate carries",
                        b.backup_id
                    )));
                }
            }
        }
        if sha256_hex(b.manifest.payload.as_bytes()) != b.manifest_sha256 {
            return Err(Error::integrity(format!(
                "the manifest of {} does not hash to the sha256 the certificate states",
                b.backup_id
            )));
        }
        let manifest: Manifest = serde_json::from_str(&b.manifest.payload)
            .map_err(|e| Error::integrity(format!("manifest of {}: {e}", b.backup_id)))?;
        manifest.check_identity(db, &b.backup_id)?;
        let report = match &b.verification {
            None => None,
            Some(record) => {
                embedded(keys, record)?;
                let report: Report = serde_json::from_str(&record.payload)
                    .map_err(|e| Error::integrity(format!("record {}: {e}", record.key)))?;
                if !record.key.starts_with(&layout::records(db, &b.backup_id))
                    || report.backup_id != b.backup_id
                    || report.database != *db
                    || report.manifest_sha256 != b.manifest_sha256
                {
                    return Err(Error::integrity(format!(
                        "the verification record {} is not about backup {}",
                        record.key, b.backup_id
                    )));
                }
                Some(report)
            }
        };
        backups.push((manifest, report));
    }
    Ok(Checked {
        certificate,
        issuer,
        backups,
    })
}

/// Checks one embedded object's signature as the sink's gate would.
fn embedded(keys: &Keyring, object: &SignedObject) -> Result<()> {
    let stored = format!("{}{}", object.payload, object.signature);
    let (payload, _) = keys.open(&object.key, stored.as_bytes())?;
    if payload != object.payload.as_bytes() {
        return Err(Error::integrity(format!(
            "{}: the certificate's copy does not match its signature",
            object.key
        )));
    }
    Ok(())
}
