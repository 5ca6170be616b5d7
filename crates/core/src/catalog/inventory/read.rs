//! Reading the catalog's small objects: fetched many at a time, each believed only
//! once its signature, its time and the manifest it is about are checked.

use super::*;
use crate::catalog::index::Entry;

/// The small catalog objects `load` reads (tombstones, manifests, the newest
/// verification record of each backup, leases, pins), fetched many at a time: on an
/// object store each read is a round trip, and a catalog of a thousand backups must
/// still list in seconds. Failures are kept per key: one object that is not trusted
/// must not hide the rest of the catalog. With `indexes`, what they cover is taken
/// from them, and what is read is kept for their next version.
pub(super) async fn prefetch(
    sink: &dyn Sink,
    grouped: &BTreeMap<String, BTreeMap<String, Vec<ObjectMeta>>>,
    mut indexes: Option<&mut Indexes<'_>>,
) -> Result<Fetched> {
    let keys: Vec<String> = grouped
        .values()
        .flat_map(|ids| {
            ids.values().flat_map(|objects| {
                let newest_record = records_newest_first(objects).next().map(str::to_owned);
                objects
                    .iter()
                    .filter_map(|o| {
                        // Classified by the gate's own rule, so nothing it would pass
                        // through unchecked is read as a catalog object.
                        let wanted = matches!(
                            Kind::of(&o.key),
                            Some(
                                Kind::Manifest
                                    | Kind::Tombstone
                                    | Kind::Lease
                                    | Kind::Pin
                                    | Kind::TableProof
                            )
                        );
                        wanted.then(|| o.key.clone())
                    })
                    .chain(newest_record)
            })
        })
        .collect();
    let mut out = HashMap::with_capacity(keys.len());
    let mut unindexed = Vec::with_capacity(keys.len());
    for key in keys {
        match indexes.as_deref_mut().and_then(|ix| ix.take(&key)) {
            Some(payload) => {
                out.insert(key, Ok(payload));
            }
            None => unindexed.push(key),
        }
    }
    let reader = indexes.as_deref();
    let fetched: Vec<(String, Result<Vec<u8>>, Option<Entry>)> = futures::stream::iter(unindexed)
        .map(|key| async move {
            let (got, entry) = match reader {
                Some(indexes) => indexes.read(&key).await,
                None => (sink.get_bytes(&key, MANIFEST_LIMIT).await, None),
            };
            (key, got, entry)
        })
        .buffer_unordered(CATALOG_READS_IN_FLIGHT)
        .collect()
        .await;
    for (key, got, entry) in fetched {
        if let (Some(indexes), Some(entry)) = (indexes.as_deref_mut(), entry) {
            indexes.keep(entry);
        }
        match got {
            Err(e) if !matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Integrity) => {
                return Err(e);
            }
            got => {
                out.insert(key, got);
            }
        }
    }
    Ok(out)
}

/// The keys of a backup's verification records, newest first (names begin with the
/// time of the verification).
fn records_newest_first(objects: &[ObjectMeta]) -> impl Iterator<Item = &str> {
    let mut records: Vec<&str> = objects
        .iter()
        .map(|o| o.key.as_str())
        .filter(|k| Kind::of(k) == Some(Kind::Record))
        .collect();
    records.sort_unstable_by(|a, b| b.cmp(a));
    records.into_iter()
}

/// Catalog reads in flight at once.
const CATALOG_READS_IN_FLIGHT: usize = 16;

pub(super) async fn load_entry(
    sink: &dyn Sink,
    fetched: &mut Fetched,
    part: &mut DatabaseInventory,
    db: &str,
    id: BackupId,
    objects: Vec<ObjectMeta>,
) -> Result<CatalogEntry> {
    let manifest_key = layout::manifest(db, &id);
    let (manifest, manifest_sha256) = match fetched.get(&manifest_key) {
        Some(Ok(bytes)) => (
            match serde_json::from_slice::<Manifest>(bytes) {
                Ok(m) => m
                    .check_identity(db, &id)
                    .map(|()| m)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!(
                    "manifest {manifest_key} is not a valid pgproof manifest ({e}); it was damaged or edited"
                )),
            },
            sha256_hex(bytes),
        ),
        Some(Err(e)) if e.kind() == ErrorKind::Integrity => {
            part.find(&manifest_key, e);
            (Err(e.to_string()), String::new())
        }
        _ => {
            return Err(Error::not_found(format!(
                "manifest {manifest_key} disappeared while the catalog was read; run the command again"
            )));
        }
    };
    let now = Timestamp::now();
    let mut leases = Vec::new();
    let mut pins = Vec::new();
    for object in &objects {
        let kind = Kind::of(&object.key);
        if !matches!(kind, Some(Kind::Lease | Kind::Pin)) {
            continue;
        }
        match fetched.get(&object.key) {
            Some(Ok(body)) if kind == Some(Kind::Pin) => {
                match parse::<Pin>(&object.key, body)
                    .and_then(|p| p.check(now, &object.key).map(|()| p))
                {
                    Ok(p) => pins.push(p),
                    Err(e) => part.find(&object.key, &e),
                }
            }
            Some(Ok(body)) => {
                match parse::<Lease>(&object.key, body)
                    .and_then(|l| l.check(now, &object.key).map(|()| l))
                {
                    Ok(l) => leases.push(l),
                    Err(e) => part.find(&object.key, &e),
                }
            }
            Some(Err(e)) if e.kind() == ErrorKind::Integrity => part.find(&object.key, e),
            // Released or pruned since the listing: gone.
            _ => {}
        }
    }
    // The newest record that is trusted says whether the backup is proven; a name
    // says nothing (anyone can name an object `…_passed.json`). Older records are
    // read only when a newer one is not believed.
    let mut verifications = Vec::new();
    // A manifest that is not trusted has nothing a record could prove.
    let records = records_newest_first(&objects).filter(|_| manifest.is_ok());
    for key in records {
        let got = match fetched.remove(key) {
            Some(got) => got,
            None => sink.get_bytes(key, MANIFEST_LIMIT).await,
        };
        let record = got.and_then(|body| believed_record(key, &body, now, &manifest_sha256));
        match record {
            Ok(v) => {
                verifications.push(v);
                break;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) if e.kind() == ErrorKind::Integrity => part.find(key, &e),
            Err(e) => return Err(e),
        }
    }
    let table_proofs = if manifest.is_ok() {
        table_proofs(fetched, part, &objects, &manifest_sha256, now)
    } else {
        Vec::new()
    };
    Ok(CatalogEntry {
        backup_id: id,
        manifest,
        manifest_sha256,
        objects,
        verifications,
        leases,
        pins,
        table_proofs,
    })
}

/// The trusted table proofs among a backup's `objects` (prefetched), oldest first.
fn table_proofs(
    fetched: &Fetched,
    part: &mut DatabaseInventory,
    objects: &[ObjectMeta],
    manifest_sha256: &str,
    now: Timestamp,
) -> Vec<TableProof> {
    let mut proofs = Vec::new();
    for object in objects {
        if Kind::of(&object.key) != Some(Kind::TableProof) {
            continue;
        }
        let key = object.key.as_str();
        let proof = match fetched.get(key) {
            Some(Ok(body)) => parse::<TableProof>(key, body).and_then(|p| {
                p.check(now, key)?;
                about_manifest(key, body, manifest_sha256)?;
                Ok(p)
            }),
            Some(Err(e)) if e.kind() == ErrorKind::Integrity => Err(e.clone()),
            _ => continue,
        };
        match proof {
            Ok(p) => proofs.push(p),
            Err(e) => part.find(key, &e),
        }
    }
    proofs.sort_by_key(|p| p.verified_at);
    proofs
}

/// A verification record read from `key`, if it is believed: readable, not from the
/// future, named for what it says, and about the manifest whose stored bytes hash to
/// `manifest_sha256`.
fn believed_record(
    key: &str,
    body: &[u8],
    now: Timestamp,
    manifest_sha256: &str,
) -> Result<Verification> {
    let v = parse::<Verification>(key, body)?;
    v.check(now, key)?;
    about_manifest(key, body, manifest_sha256)?;
    Ok(v)
}

/// Refuses a record (a verification or a table proof) that is about another manifest
/// than the one whose stored bytes hash to `manifest_sha256`: a record proves the
/// manifest it read, not whatever now bears the name.
fn about_manifest(key: &str, body: &[u8], manifest_sha256: &str) -> Result<()> {
    let about: RecordBinding = parse(key, body)?;
    if about.manifest_sha256.as_deref() != Some(manifest_sha256) {
        return Err(refuse(
            key,
            "is about another manifest than the one now stored (it was replaced or edited since)"
                .into(),
        ));
    }
    Ok(())
}

/// The newest believed verification record of one backup whose manifest's stored
/// bytes hash to `manifest_sha256`, read fresh (one listing of its records, then
/// newest first until one is believed): what a verify worker re-checks after it
/// claimed a backup, without reading the whole catalog again. Records that are not
/// believed are logged and skipped.
pub async fn newest_verification(
    sink: &dyn Sink,
    backup: &BackupRef,
    manifest_sha256: &str,
) -> Result<Option<Verification>> {
    let objects = sink
        .list(&layout::records(&backup.database, &backup.backup_id))
        .await?;
    let now = Timestamp::now();
    for key in records_newest_first(&objects) {
        let record = sink
            .get_bytes(key, MANIFEST_LIMIT)
            .await
            .and_then(|body| believed_record(key, &body, now, manifest_sha256));
        match record {
            Ok(v) => return Ok(Some(v)),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) if e.kind() == ErrorKind::Integrity => {
                tracing::warn!(key, problem = %e, "catalog object not trusted");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}
