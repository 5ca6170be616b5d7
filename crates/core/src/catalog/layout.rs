//! The sink's layout: where every object of a backup lives, and which keys are
//! catalog objects. Nothing else in pgproof spells a key; the signature gate
//! ([`trust`](super::trust)) classifies keys by [`Kind::of`], and so does every reader,
//! so an object the gate would pass through unchecked is read as nothing.
//!
//! ```text
//! <db>/_commit.lock                         lock
//! <db>/_index.json                          catalog index (a signed cache of the objects below)
//! <db>/<id>/manifest.json                   manifest (the commit point)
//! <db>/<id>/verify/<time>_<verdict>_r<ms>.json  record
//! <db>/<id>/tables/<time>_<verdict>.json    table proof (a rolling verification's)
//! <db>/<id>/pin/<time>-<unique>.json        pin
//! <db>/<id>/lease/<unique>.json             lease
//! <db>/<id>/claim/<generation>.json         claim (a verify worker's, 20 digits)
//! <db>/<id>/tombstone.json                  tombstone
//! <db>/<id>/adopted.json                    adoption
//! <db>/<id>/<dump file><codec suffixes>     the dump (directory format: <dump file>/<file>…)
//! <db>/<id>/settings.json.age               sealed settings
//! <db>/<id>/files-<set>.tar<suffixes>       a file set
//! <db>/<id>/<dump file>/chunks.json.zst     chunk list (a deduplicated dump's files, chunk by chunk)
//! <db>/<id>/<dump file>/chunks.pending      a deduplicated dump under way (until its chunk list)
//! .chunks/<db>/<chunk id>-<sha256>         a chunk of deduplicated dumps, shared by every backup
//!                                           of <db> that lists it (compressed and encrypted alone)
//! .cluster/<run>/cluster.json               cluster run (a `databases = "all"` run's set)
//! .cluster/<run>/globals.json<suffixes>     the cluster's globals (roles, tablespaces)
//! ```
//!
//! Cluster runs live under `.cluster/` and chunks under `.chunks/`, names no database
//! can have in a sink ([`check_database_name`](super::check_database_name) refuses a
//! leading `.`), so they never collide with a database's directory and no
//! per-database reader ([`Inventory`](super::Inventory), prune, check, status)
//! mistakes them for one.

/// The manifest's file name inside a backup's directory.
pub const MANIFEST_NAME: &str = "manifest.json";

/// The file name of a pruned backup's tombstone.
pub const TOMBSTONE_NAME: &str = "tombstone.json";

/// The name of the object that adopts a backup taken before catalogs were signed.
pub const ADOPTION_NAME: &str = "adopted.json";

const LOCK_NAME: &str = "_commit.lock";
const INDEX_NAME: &str = "_index.json";
const RECORDS: &str = "verify";
const PINS: &str = "pin";
const LEASES: &str = "lease";
const TABLE_PROOFS: &str = "tables";
/// The top-level directory of cluster runs.
pub const CLUSTER_DIR: &str = ".cluster";
/// The top-level directory of deduplicated dumps' chunks.
pub const CHUNKS_DIR: &str = ".chunks";
/// The chunk list's file name inside a backup's directory.
pub const CHUNK_LIST_NAME: &str = "chunks.json.zst";
const CLUSTER_RUN_NAME: &str = "cluster.json";
const CLAIMS: &str = "claim";

/// The kinds of object the catalog signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `<db>/<id>/manifest.json`.
    Manifest,
    /// `<db>/<id>/verify/<name>.json`.
    Record,
    /// `<db>/<id>/pin/<name>.json`.
    Pin,
    /// `<db>/<id>/lease/<name>.json`.
    Lease,
    /// `<db>/<id>/tables/<name>.json`.
    TableProof,
    /// `<db>/<id>/claim/<generation>.json`.
    Claim,
    /// `<db>/<id>/tombstone.json`.
    Tombstone,
    /// `<db>/<id>/adopted.json`.
    Adoption,
    /// `<db>/_commit.lock`.
    Lock,
    /// `<db>/_index.json`.
    Index,
    /// `.cluster/<run>/cluster.json`.
    ClusterRun,
}

impl Kind {
    /// The kind of catalog object `key` names, if it names one.
    pub fn of(key: &str) -> Option<Self> {
        let parts: Vec<&str> = key.split('/').collect();
        match parts.as_slice() {
            [CLUSTER_DIR, _, CLUSTER_RUN_NAME] => Some(Self::ClusterRun),
            // Chunks, and whatever else lies in a directory no database can have.
            [dir, ..] if dir.starts_with('.') => None,
            [_, LOCK_NAME] => Some(Self::Lock),
            [_, INDEX_NAME] => Some(Self::Index),
            [_, _, MANIFEST_NAME] => Some(Self::Manifest),
            [_, _, TOMBSTONE_NAME] => Some(Self::Tombstone),
            [_, _, ADOPTION_NAME] => Some(Self::Adoption),
            [_, _, dir, name] if name.ends_with(".json") => match *dir {
                RECORDS => Some(Self::Record),
                PINS => Some(Self::Pin),
                LEASES => Some(Self::Lease),
                TABLE_PROOFS => Some(Self::TableProof),
                CLAIMS => Some(Self::Claim),
                _ => None,
            },
            _ => None,
        }
    }

    /// How messages name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manifest => "manifest",
            Self::Record => "verification record",
            Self::Pin => "pin",
            Self::Lease => "lease",
            Self::TableProof => "table proof",
            Self::Claim => "verify claim",
            Self::Tombstone => "tombstone",
            Self::Adoption => "adoption",
            Self::Lock => "commit lock",
            Self::Index => "catalog index",
            Self::ClusterRun => "cluster run",
        }
    }
}

/// `<db>/`: everything of one database.
pub fn database(db: &str) -> String {
    format!("{db}/")
}

/// `<db>/<id>`: the directory of one backup (no trailing `/`).
pub fn backup_dir(db: &str, id: &str) -> String {
    format!("{db}/{id}")
}

/// `<db>/<id>/manifest.json`.
pub fn manifest(db: &str, id: &str) -> String {
    format!("{db}/{id}/{MANIFEST_NAME}")
}

/// `<db>/<id>/tombstone.json`.
pub fn tombstone(db: &str, id: &str) -> String {
    format!("{db}/{id}/{TOMBSTONE_NAME}")
}

/// `<db>/<id>/adopted.json`.
pub fn adoption(db: &str, id: &str) -> String {
    format!("{db}/{id}/{ADOPTION_NAME}")
}

/// `<db>/_commit.lock`.
pub fn lock(db: &str) -> String {
    format!("{db}/{LOCK_NAME}")
}

/// `<db>/_index.json`.
pub fn index(db: &str) -> String {
    format!("{db}/{INDEX_NAME}")
}

/// `<db>/<id>/verify/<name>`.
pub fn record(db: &str, id: &str, name: &str) -> String {
    format!("{db}/{id}/{RECORDS}/{name}")
}

/// `<db>/<id>/verify/`.
pub fn records(db: &str, id: &str) -> String {
    format!("{db}/{id}/{RECORDS}/")
}

/// `<db>/<id>/tables/<name>`.
pub fn table_proof(db: &str, id: &str, name: &str) -> String {
    format!("{db}/{id}/{TABLE_PROOFS}/{name}")
}

/// `<db>/<id>/pin/<name>`.
pub fn pin(db: &str, id: &str, name: &str) -> String {
    format!("{db}/{id}/{PINS}/{name}")
}

/// `<db>/<id>/pin/`.
pub fn pins(db: &str, id: &str) -> String {
    format!("{db}/{id}/{PINS}/")
}

/// `<db>/<id>/lease/<name>`.
pub fn lease(db: &str, id: &str, name: &str) -> String {
    format!("{db}/{id}/{LEASES}/{name}")
}

/// `<db>/<id>/lease/`.
pub fn leases(db: &str, id: &str) -> String {
    format!("{db}/{id}/{LEASES}/")
}

/// `<db>/<id>/claim/<generation>.json`, the generation zero-padded to 20 digits so
/// that names sort as numbers.
pub fn claim(db: &str, id: &str, generation: u64) -> String {
    format!("{db}/{id}/{CLAIMS}/{generation:020}.json")
}

/// `<db>/<id>/claim/`.
pub fn claims(db: &str, id: &str) -> String {
    format!("{db}/{id}/{CLAIMS}/")
}

/// The generation a claim's key names, if it is one [`claim`] could have built.
pub fn claim_generation(key: &str) -> Option<u64> {
    if Kind::of(key) != Some(Kind::Claim) {
        return None;
    }
    let digits = key.rsplit('/').next()?.strip_suffix(".json")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// `<db>/<id>/<file><suffix>`: the dump object (or, for a directory archive, the
/// prefix of its files).
pub fn dump(db: &str, id: &str, file: &str, suffix: &str) -> String {
    format!("{db}/{id}/{file}{suffix}")
}

/// `<dir>/settings.json.age`, beside the dump in the backup directory `dir`.
pub fn sealed_settings(dir: &str) -> String {
    format!("{dir}/settings.json.age")
}

/// `<dir>/files-<set>.tar<suffix>`, in the backup directory `dir`.
pub fn file_set(dir: &str, set: &str, suffix: &str) -> String {
    format!("{dir}/files-{set}.tar{suffix}")
}

/// Whether `key` lies outside every database's directory (cluster runs, chunks: a
/// first segment no database name can have).
pub fn in_no_database(key: &str) -> bool {
    key.starts_with('.')
}

/// `<dir>/chunks.json.zst`, in a directory archive's directory `dir`.
pub fn chunk_list(dir: &str) -> String {
    format!("{dir}/{CHUNK_LIST_NAME}")
}

/// `<dir>/chunks.pending`, in a directory archive's directory `dir`: there from
/// before a deduplicated dump stores its first chunk until its chunk list is written,
/// so that prune sees a backup under way that may use chunks no list names yet.
pub fn chunks_pending(dir: &str) -> String {
    format!("{dir}/chunks.pending")
}

/// `.chunks/<db>/`: every chunk of the database's deduplicated dumps.
pub fn chunks(db: &str) -> String {
    format!("{CHUNKS_DIR}/{db}/")
}

/// `.chunks/<db>/<id>-<stored sha256>`: the chunk whose plaintext has the keyed id
/// `id`, stored as the bytes whose sha256 the key ends with. One key, one content: a
/// chunk stored again (after a sweep, or by a run that found no list to reuse) is
/// another encryption, so another key, and a copy never finds a same-named object
/// with other bytes.
pub fn chunk(db: &str, id: &str, stored_sha256: &str) -> String {
    format!("{CHUNKS_DIR}/{db}/{id}-{stored_sha256}")
}

/// `.cluster/`: every cluster run.
pub fn cluster_runs() -> String {
    format!("{CLUSTER_DIR}/")
}

/// `.cluster/<run>`: the directory of one cluster run (no trailing `/`).
pub fn cluster_dir(run: &str) -> String {
    format!("{CLUSTER_DIR}/{run}")
}

/// `.cluster/<run>/cluster.json`.
pub fn cluster_run(run: &str) -> String {
    format!("{CLUSTER_DIR}/{run}/{CLUSTER_RUN_NAME}")
}

/// `.cluster/<run>/globals.json<suffix>`.
pub fn cluster_globals(run: &str, suffix: &str) -> String {
    format!("{CLUSTER_DIR}/{run}/globals.json{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalog_key_is_known_by_its_kind() {
        assert_eq!(Kind::of(&manifest("app", "1")), Some(Kind::Manifest));
        assert_eq!(
            Kind::of(&record("app", "1", "x_passed.json")),
            Some(Kind::Record)
        );
        assert_eq!(Kind::of(&pin("app", "1", "x.json")), Some(Kind::Pin));
        assert_eq!(Kind::of(&lease("app", "1", "x.json")), Some(Kind::Lease));
        assert_eq!(
            Kind::of(&table_proof("app", "1", "x_passed.json")),
            Some(Kind::TableProof)
        );
        assert_eq!(Kind::of(&claim("app", "1", 7)), Some(Kind::Claim));
        assert_eq!(claim_generation(&claim("app", "1", 7)), Some(7));
        assert_eq!(
            claim_generation(&claim("app", "1", u64::MAX)),
            Some(u64::MAX)
        );
        for odd in [
            "app/1/claim/7.json",
            "app/1/claim/99999999999999999999.json",
            "app/1/lease/00000000000000000007.json",
        ] {
            assert_eq!(claim_generation(odd), None, "{odd}");
        }
        assert_eq!(Kind::of(&tombstone("app", "1")), Some(Kind::Tombstone));
        assert_eq!(Kind::of(&adoption("app", "1")), Some(Kind::Adoption));
        assert_eq!(Kind::of(&lock("app")), Some(Kind::Lock));
        assert_eq!(Kind::of(&index("app")), Some(Kind::Index));
        assert_eq!(Kind::of(&cluster_run("1")), Some(Kind::ClusterRun));
        assert!(in_no_database(&cluster_run("1")) && !in_no_database(&manifest("app", "1")));
        assert!(in_no_database(&chunk("app", "ab", "cd")));
        for other in [
            dump("app", "1", "dump.pgc", ".zst.age"),
            format!("{}/toc.dat.zst.age", dump("app", "1", "dump", "")),
            sealed_settings(&backup_dir("app", "1")),
            file_set(&backup_dir("app", "1"), "pki", ".gz.age"),
            "app/1/manifest.json/x".into(),
            "app/1/verify/verify/x.json".into(),
            "app/1/pin/forever".into(),
            "manifest.json".into(),
            cluster_globals("1", ".age"),
            // No database lives under the cluster runs' directory.
            format!("{CLUSTER_DIR}/1/manifest.json"),
            format!("{CLUSTER_DIR}/_commit.lock"),
            format!("{CLUSTER_DIR}/_index.json"),
            // Nor under the chunks' directory.
            chunk("app", "manifest", "json"),
            format!("{CHUNKS_DIR}/app/1/manifest.json"),
            format!("{CHUNKS_DIR}/_commit.lock"),
            chunk_list(&backup_dir("app", "1")),
            "app/1/_index.json".into(),
            format!("{CLUSTER_DIR}/1/verify/x.json"),
        ] {
            assert_eq!(Kind::of(&other), None, "{other}");
        }
    }
}
