//! A restore's tables fingerprinted while the restore still runs, each once its data
//! has committed, so the hash overlaps the rest of the restore (other tables' COPY,
//! index builds) instead of following it.
//!
//! Only a restore in several transactions shows a table before it ends (pg_restore
//! `--jobs` commits each table's `TRUNCATE; COPY` on its own). pg_restore writes a
//! table's rows with exactly one COPY, in one transaction: once any of its rows is
//! visible, all are, and nothing of the restore writes them again. So a table is
//! hashed here inside one REPEATABLE READ transaction that first finds a row in it;
//! a table found empty (empty, or its COPY not committed yet in that snapshot) is
//! left to the hash after the restore. Partitioned tables and partitions are left
//! there too: with `--load-via-partition-root` one partition's rows come from several
//! COPYs. The caller keeps these hashes only if the restore then succeeds, and only
//! for tables that nothing wrote or rewrote after their COPY ([`untouched`]): a restore runs
//! user code after loading tables (a materialized view's query on refresh may
//! insert rows), and the hash after the restore would have seen what it wrote.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_postgres::Client;

use crate::error::Result;
use crate::pg::{ConnParams, db_err};

use super::{Method, Plan, TableFingerprint};

/// How often the restore's COPY progress is read.
const POLL: Duration = Duration::from_millis(50);

/// How long the restore's sessions may take to end before the tables hashed while
/// it ran are hashed again instead.
const SESSIONS_GONE: Duration = Duration::from_secs(5);

/// How many polls a table whose COPY ended may still look empty before it is left to
/// the hash after the restore (its COMMIT follows the COPY by a round trip).
const EMPTY_RETRIES: u32 = 4;

/// A table fingerprinted while the restore ran, with the file its rows were read
/// from (a TRUNCATE or a rewrite after would give it another).
pub(crate) struct HashedEarly {
    fingerprint: TableFingerprint,
    relfilenode: u32,
}

/// How the tables are hashed while the restore runs.
pub(crate) struct Hashing {
    /// The backup's fingerprint method.
    pub method: Method,
    /// Connections hashing tables (one more watches the restore).
    pub workers: usize,
    /// Connections the restore program may open: never taken from it.
    pub beside: usize,
}

/// Fingerprints the tables of the database at `target` as the restore into it
/// commits them, until `restored` is set; returns the tables hashed, by name.
/// Anything that goes wrong (a server without `pg_stat_progress_copy`, a lost
/// connection, no connection to spare beside the restore's) ends it with what it
/// has, logged: the hash after the restore covers the rest.
pub(crate) async fn while_restoring(
    target: &ConnParams,
    hashing: Hashing,
    restored: &AtomicBool,
) -> BTreeMap<String, HashedEarly> {
    let Hashing {
        method,
        workers,
        beside,
    } = hashing;
    if method < Method::V2 {
        // v1 hashes partitions one by one, which a restore may fill from several
        // COPYs.
        return BTreeMap::new();
    }
    let watch = Watch {
        queue: Mutex::new(VecDeque::new()),
        hashed: Mutex::new(BTreeMap::new()),
        restored,
    };
    let monitor = match target.connect().await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "no connection to fingerprint tables while restoring");
            return BTreeMap::new();
        }
    };
    // Before 15 the statistics `untouched` reads arrive late (or not at all): every
    // table would be hashed twice.
    match monitor
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
    {
        Ok(row) if row.get::<_, i32>(0) >= 150000 => {}
        _ => return BTreeMap::new(),
    }
    // The restore program may not have opened all of its connections yet: the
    // hashing ones must never take a slot it needs (it would fail the restore).
    let workers = workers.max(1);
    match crate::pg::connections_free(&monitor).await {
        Ok(free) if free >= (workers + beside) as i64 => {}
        Ok(free) => {
            tracing::debug!(
                free,
                workers,
                beside,
                "no connections to spare beside the restore; fingerprinting after it"
            );
            return BTreeMap::new();
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot count the scratch server's free connections; fingerprinting after the restore");
            return BTreeMap::new();
        }
    }
    let mut connections = Vec::new();
    for _ in 0..workers {
        match target.connect().await {
            Ok(c) => connections.push(c),
            Err(e) => {
                tracing::debug!(error = %e, "no connection to fingerprint tables while restoring");
                return BTreeMap::new();
            }
        }
    }
    let hashing = futures::future::join_all(connections.iter().map(|c| watch.work(c, method)));
    let _ = futures::future::join(watch.poll(&monitor), hashing).await;
    let hashed = watch.hashed.into_inner().unwrap_or_else(|e| e.into_inner());
    tracing::debug!(tables = hashed.len(), "fingerprinted while restoring");
    hashed
}

struct Watch<'a> {
    /// Tables whose COPY ended, with how many times each was found empty.
    queue: Mutex<VecDeque<(u32, u32)>>,
    hashed: Mutex<BTreeMap<String, HashedEarly>>,
    restored: &'a AtomicBool,
}

impl Watch<'_> {
    fn done(&self) -> bool {
        self.restored.load(Ordering::Acquire)
    }

    /// Queues each table whose COPY is no longer running.
    async fn poll(&self, monitor: &Client) {
        let sql = "SELECT relid FROM pg_stat_progress_copy \
                   WHERE datname = current_database() AND command = 'COPY FROM'";
        let mut copying: HashSet<u32> = HashSet::new();
        while !self.done() {
            let now: HashSet<u32> = match monitor.query(sql, &[]).await {
                Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the restore's COPY progress; fingerprinting after it");
                    return;
                }
            };
            self.queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(copying.difference(&now).map(|&oid| (oid, 0)));
            copying = now;
            tokio::time::sleep(POLL).await;
        }
    }

    /// Hashes queued tables on `client` until the restore ends.
    async fn work(&self, client: &Client, method: Method) {
        while !self.done() {
            let next = self
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
            let Some((oid, empty)) = next else {
                tokio::time::sleep(POLL / 2).await;
                continue;
            };
            match table_if_loaded(client, method, oid).await {
                Ok(Loaded::Hashed(name, hashed)) => {
                    self.hashed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(name, hashed);
                }
                Ok(Loaded::Empty) if empty < EMPTY_RETRIES => {
                    tokio::time::sleep(POLL).await;
                    self.queue
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back((oid, empty + 1));
                }
                Ok(Loaded::Empty | Loaded::NotHere) => {}
                Err(e) => {
                    tracing::debug!(error = %e, oid, "could not fingerprint a table while restoring; it is hashed after the restore");
                }
            }
        }
    }
}

enum Loaded {
    Hashed(String, HashedEarly),
    /// No row visible: empty, or its COPY not committed yet.
    Empty,
    /// Not a table hashed on its own here (partitioned, a partition, a view).
    NotHere,
}

/// One table's fingerprint, in a snapshot that sees its COPY committed.
async fn table_if_loaded(client: &Client, method: Method, oid: u32) -> Result<Loaded> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(db_err("starting a fingerprint transaction"))?;
    let loaded = async {
        // Partitions are not among the plan's relations (v2 on).
        let plan = Plan::prepare_only(client, method, &[oid]).await?;
        let [table] = plan.tables.as_slice() else {
            return Ok(Loaded::NotHere);
        };
        if table.partitioned || table.materialized {
            return Ok(Loaded::NotHere);
        }
        // In this snapshot: whether a row is there, and the file holding the rows.
        let row = client
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT FROM ONLY {}), c.relfilenode FROM pg_class c WHERE c.oid = $1",
                    table.name
                ),
                &[&oid],
            )
            .await
            .map_err(db_err("looking for a restored table's rows"))?;
        if !row.get::<_, bool>(0) {
            return Ok(Loaded::Empty);
        }
        let (name, relfilenode) = (table.name.clone(), row.get(1));
        let found = plan.tables_on(client, &[]).await?;
        Ok(match found.tables.into_iter().next() {
            Some((_, fingerprint)) => Loaded::Hashed(
                name,
                HashedEarly {
                    fingerprint,
                    relfilenode,
                },
            ),
            None => Loaded::NotHere,
        })
    }
    .await;
    client
        .batch_execute("COMMIT")
        .await
        .map_err(db_err("ending a fingerprint transaction"))?;
    loaded
}

/// The tables of `hashed` that nothing wrote or rewrote after their COPY: once every
/// other session on the database at `target` is gone (the restore's: a session
/// flushes its statistics as it ends), each still has the file it was read from and
/// shows exactly the rows hashed as inserted, none updated or deleted, in two reads
/// [`POLL`] apart (a session leaves `pg_stat_activity` a moment before its
/// statistics are in). Anything else (a late writer, a TRUNCATE, statistics not in
/// within [`SESSIONS_GONE`]) drops the table, which is then hashed after the restore
/// like the rest.
pub(crate) async fn untouched(
    target: &ConnParams,
    hashed: BTreeMap<String, HashedEarly>,
) -> BTreeMap<String, TableFingerprint> {
    if hashed.is_empty() {
        return BTreeMap::new();
    }
    match confirm(target, &hashed).await {
        Ok(kept) => hashed
            .into_iter()
            .filter(|(name, _)| kept.contains(name))
            .map(|(name, early)| (name, early.fingerprint))
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "cannot confirm the tables hashed while restoring; hashing them again");
            BTreeMap::new()
        }
    }
}

/// What the statistics say of one table since the restore began.
#[derive(Debug, PartialEq, Eq)]
enum Since {
    /// The file read and exactly the rows hashed inserted, nothing else.
    AsHashed,
    /// Fewer rows counted than hashed, nothing else: statistics still coming.
    NotYet,
    /// Written or rewritten after the hash, or gone.
    Changed,
}

/// The names of the tables of `hashed` the statistics show unchanged twice running.
async fn confirm(
    target: &ConnParams,
    hashed: &BTreeMap<String, HashedEarly>,
) -> Result<BTreeSet<String>> {
    let client = target.connect().await?;
    let others = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                  AND pid <> pg_backend_pid() AND backend_type = 'client backend'";
    let mut waited = Duration::ZERO;
    loop {
        let n: i64 = client
            .query_one(others, &[])
            .await
            .map_err(db_err("waiting for the restore's sessions to end"))?
            .get(0);
        if n == 0 {
            break;
        }
        if waited >= SESSIONS_GONE {
            return Ok(BTreeSet::new());
        }
        tokio::time::sleep(POLL).await;
        waited += POLL;
    }
    let mut seen_once: BTreeSet<String> = BTreeSet::new();
    let mut kept: BTreeSet<String> = BTreeSet::new();
    let mut undecided: BTreeSet<&String> = hashed.keys().collect();
    while !undecided.is_empty() && waited < SESSIONS_GONE {
        tokio::time::sleep(POLL).await;
        waited += POLL;
        let rows = client
            .query(
                "SELECT format('%I.%I', schemaname, relname), pg_relation_filenode(relid), \
                        n_tup_ins, n_tup_upd, n_tup_del \
                 FROM pg_stat_user_tables",
                &[],
            )
            .await
            .map_err(db_err("reading the restored tables' statistics"))?;
        let counts: BTreeMap<String, (Option<u32>, i64, i64, i64)> = rows
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
            .collect();
        undecided.retain(|name| {
            let early = &hashed[*name];
            let since = match counts.get(*name) {
                Some(&(Some(file), inserted, 0, 0)) if file == early.relfilenode => {
                    match inserted.cmp(&early.fingerprint.rows) {
                        std::cmp::Ordering::Equal => Since::AsHashed,
                        std::cmp::Ordering::Less => Since::NotYet,
                        std::cmp::Ordering::Greater => Since::Changed,
                    }
                }
                _ => Since::Changed,
            };
            match since {
                Since::AsHashed if seen_once.contains(*name) => {
                    kept.insert((*name).clone());
                    false
                }
                Since::AsHashed => {
                    seen_once.insert((*name).clone());
                    true
                }
                Since::NotYet => {
                    seen_once.remove(*name);
                    true
                }
                Since::Changed => {
                    tracing::debug!(table = %name, found = ?counts.get(*name), rows = early.fingerprint.rows, "written after its COPY: hashed again");
                    false
                }
            }
        });
    }
    Ok(kept)
}
