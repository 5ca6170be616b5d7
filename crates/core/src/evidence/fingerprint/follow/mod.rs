//! The source's fingerprint taken in step with pg_dump, so each page is read from
//! disk once.
//!
//! pg_dump's COPY and the fingerprint both read every table. Run apart, on a database
//! larger than the server's memory, each reads every page from disk: twice the I/O
//! a bare pg_dump costs the server. Here a table is hashed while pg_dump copies it,
//! in pieces of [`PIECE_BYTES`] read by TID range scans from block 0 upward (the
//! order pg_dump's scan goes: it turns synchronized scans off), never more than
//! [`LEAD`] pieces ahead of the rows pg_dump's COPY has sent (`pg_stat_progress_copy`,
//! read on a connection of its own). Whichever of the two reads a page first reads
//! it from disk; the other finds it in the cache. Row hashes are summed, so the
//! pieces add up to exactly the fingerprint one scan would take: the method, the
//! snapshot and the verdicts do not change, only when each page is read.
//!
//! pg_dump's connections are told apart by their `application_name`. A table pg_dump
//! is never seen copying (small ones go by between two polls, or a COPY of a query)
//! is hashed once pg_dump has probably passed it — by name when pg_dump runs alone,
//! by size when it runs jobs, as pg_dump orders its work — or once pg_dump exits.
//! A wrong guess costs reads, never correctness: every table is hashed whole, in the
//! snapshot, whatever the order.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::pg::db_err;

use super::plan::{Blocks, TableToHash, finish, hash_sum};
use super::*;
use units::Unit;

mod units;

/// How often pg_dump's progress is read.
const POLL: Duration = Duration::from_millis(20);

/// A large table is hashed in pieces of this size.
pub const PIECE_BYTES: i64 = 8 << 20;

/// How many pieces the fingerprint may read ahead of the piece pg_dump is copying.
/// With two, at most about 16 MiB are read by one and not yet by the other.
pub const LEAD: usize = 2;

/// The dump program the fingerprint follows.
pub struct DumpWatch<'a> {
    /// A connection to the source outside the snapshot (each poll must see fresh
    /// progress, which a transaction would hold still).
    pub monitor: Client,
    /// The `application_name` the dump program's connections carry.
    pub application_name: String,
    /// Set once the dump program has exited: nothing more will be copied.
    pub finished: &'a AtomicBool,
}

impl Plan {
    /// [`compute_on`](Plan::compute_on), each table hashed as the dump program
    /// `dump` copies it. `helpers` are connections inside the same snapshot, which
    /// hash pieces of tables beside `client`. Returns the fingerprint and the time
    /// the connections spent hashing.
    pub async fn compute_following(
        self,
        client: &Client,
        helpers: &[Client],
        dump: DumpWatch<'_>,
    ) -> Result<(Fingerprint, Duration)> {
        for helper in helpers {
            pin_settings(helper).await?;
        }
        // A piece read by a sequential scan would read the whole table: a database
        // or role that turns TID scans off must not turn pieces into that.
        for worker in [client].into_iter().chain(helpers) {
            worker
                .batch_execute("SET LOCAL enable_tidscan = on")
                .await
                .map_err(db_err("pinning TID range scans for the fingerprint"))?;
        }
        let block_size: i64 = client
            .query_one("SELECT current_setting('block_size')::int8", &[])
            .await
            .map_err(db_err("reading the block size"))?
            .get(0);
        let method = self.method;
        let mut fingerprint = Fingerprint {
            method: method.name().to_owned(),
            sequences: self.sequences,
            ..Fingerprint::default()
        };
        let names: Vec<(String, bool)> = self
            .tables
            .iter()
            .map(|t| (t.name.clone(), t.materialized))
            .collect();
        let follower = Follower {
            units: units::of(client, self.tables, method).await?,
            jobs: Mutex::new(Jobs::default()),
            busy_ms: AtomicU64::new(0),
            method,
            encoding: self.text_encoding,
            dump: &dump,
        };
        follower.plan_pieces(block_size);
        let workers = [client].into_iter().chain(helpers);
        futures::future::try_join(
            futures::future::try_join_all(workers.map(|c| follower.work(c))),
            follower.poll(),
        )
        .await?;
        let busy = Duration::from_millis(follower.busy_ms.load(Ordering::Relaxed));
        let jobs = follower
            .jobs
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        let mut totals: Vec<Option<TableFingerprint>> = vec![None; names.len()];
        for (unit, job) in follower.units.into_iter().zip(jobs.units) {
            let name = &names[unit.of].0;
            let mut hashed = job.total().map_err(|e| e.with_object(name.clone()))?;
            // As a whole scan counts them: per partition holding rows.
            if let Some(leaf) = unit.leaf
                && hashed.rows > 0
            {
                hashed.partitions.insert(leaf, hashed.rows);
            }
            totals[unit.of] = Some(match totals[unit.of].take() {
                Some(sum) => add(sum, hashed).map_err(|e| e.with_object(name.clone()))?,
                None => hashed,
            });
        }
        for ((name, materialized), total) in names.into_iter().zip(totals) {
            let total = total.ok_or_else(|| {
                Error::database("a table was not hashed").with_object(name.clone())
            })?;
            if materialized {
                fingerprint.materialized_views.insert(name, total);
            } else {
                fingerprint.tables.insert(name, total);
            }
        }
        Ok((finish(fingerprint, method, client).await?, busy))
    }
}

/// Two parts of one table's rows, together.
fn add(a: TableFingerprint, b: TableFingerprint) -> Result<TableFingerprint> {
    let mut partitions = a.partitions;
    partitions.extend(b.partitions);
    Ok(TableFingerprint {
        rows: a.rows + b.rows,
        hash: (hash_sum(&a.hash)? + hash_sum(&b.hash)?).to_string(),
        partitions,
    })
}

struct Follower<'a> {
    units: Vec<Unit>,
    jobs: Mutex<Jobs>,
    busy_ms: AtomicU64,
    method: Method,
    encoding: &'static str,
    dump: &'a DumpWatch<'a>,
}

/// Which piece to hash next, and what pg_dump has been seen doing.
#[derive(Default)]
struct Jobs {
    units: Vec<TableJob>,
    /// Tables pg_dump is copying, by OID, with the rows it has sent so far.
    copying: HashMap<u32, i64>,
    /// Tables pg_dump was seen copying and no longer is.
    copied: HashSet<u32>,
    /// pg_dump was seen copying two tables at once: it runs jobs, largest first.
    parallel: bool,
    /// No more progress will come: pg_dump exited, or its progress cannot be read.
    finished: bool,
}

#[derive(Default)]
struct TableJob {
    /// Pieces: one for a small table, or one read whole.
    pieces: usize,
    blocks_per_piece: i64,
    issued: usize,
    hashed: Vec<Option<TableFingerprint>>,
    /// The SQL of its row hash, read once.
    row_hash: Option<String>,
}

impl TableJob {
    /// Rows in the first `n` pieces, if they are all hashed.
    fn rows_before(&self, n: usize) -> Option<i64> {
        self.hashed[..n]
            .iter()
            .map(|h| h.as_ref().map(|h| h.rows))
            .sum()
    }

    fn blocks(&self, piece: usize) -> Blocks {
        if self.pieces == 1 {
            return Blocks::All;
        }
        let from = piece as i64 * self.blocks_per_piece;
        let to = (piece + 1 < self.pieces).then(|| from + self.blocks_per_piece);
        Blocks::Range { from, to }
    }

    fn total(self) -> Result<TableFingerprint> {
        let mut total = TableFingerprint {
            rows: 0,
            hash: "0".into(),
            partitions: BTreeMap::new(),
        };
        for piece in self.hashed {
            let piece =
                piece.ok_or_else(|| Error::database("a piece of a table was not hashed"))?;
            total = add(total, piece)?;
        }
        Ok(total)
    }
}

enum Next {
    Hash { unit: usize, piece: usize },
    Wait,
    Done,
}

impl Follower<'_> {
    fn jobs(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn plan_pieces(&self, block_size: i64) {
        let per_piece = (PIECE_BYTES / block_size.max(1)).max(1);
        self.jobs().units = self
            .units
            .iter()
            .map(|u| {
                let pieces = if u.anytime || self.method < Method::V4 {
                    1
                } else {
                    (u.read.blocks.max(1) as usize).div_ceil(per_piece as usize)
                };
                TableJob {
                    pieces,
                    blocks_per_piece: per_piece,
                    hashed: vec![None; pieces],
                    ..TableJob::default()
                }
            })
            .collect();
    }

    /// Hashes pieces on `client` until none is left.
    async fn work(&self, client: &Client) -> Result<()> {
        loop {
            let next = self.jobs().next(&self.units);
            let (index, piece) = match next {
                Next::Hash { unit, piece } => (unit, piece),
                Next::Wait => {
                    tokio::time::sleep(POLL / 2).await;
                    continue;
                }
                Next::Done => return Ok(()),
            };
            let clock = Instant::now();
            let unit = &self.units[index];
            let cached = self.jobs().units[index].row_hash.clone();
            let row_hash = match cached {
                Some(sql) => sql,
                None => {
                    let sql = unit
                        .hashed_as
                        .row_hash(client, self.method, self.encoding)
                        .await?;
                    self.jobs().units[index].row_hash = Some(sql.clone());
                    sql
                }
            };
            let blocks = self.jobs().units[index].blocks(piece);
            let hashed = unit.read.hash(client, &row_hash, blocks).await?;
            self.jobs().units[index].hashed[piece] = Some(hashed);
            self.busy_ms
                .fetch_add(clock.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// Reads what pg_dump is copying until every piece is handed out.
    async fn poll(&self) -> Result<()> {
        let sql = "SELECT p.relid, p.tuples_processed FROM pg_stat_progress_copy p \
                   JOIN pg_stat_activity a ON a.pid = p.pid \
                   WHERE a.application_name = $1 AND p.command = 'COPY TO'";
        loop {
            if self.jobs().all_issued() {
                return Ok(());
            }
            if self.dump.finished.load(Ordering::Acquire) {
                self.jobs().finished = true;
                return Ok(());
            }
            match self
                .dump
                .monitor
                .query(sql, &[&self.dump.application_name])
                .await
            {
                Ok(rows) => {
                    let now = rows
                        .iter()
                        .map(|r| (r.get::<_, u32>(0), r.get::<_, i64>(1)))
                        .collect();
                    self.jobs().saw(now);
                }
                Err(e) => {
                    // Without progress every table is hashed at once, as before: more
                    // reads, the same fingerprint.
                    tracing::debug!(error = %e, "cannot read pg_dump's progress; fingerprinting without it");
                    self.jobs().finished = true;
                    return Ok(());
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Jobs {
    fn all_issued(&self) -> bool {
        self.units.iter().all(|j| j.issued == j.pieces)
    }

    fn saw(&mut self, now: HashMap<u32, i64>) {
        self.parallel |= now.len() > 1;
        let gone: Vec<u32> = self
            .copying
            .keys()
            .filter(|oid| !now.contains_key(oid))
            .copied()
            .collect();
        self.copied.extend(gone);
        self.copying = now;
    }

    /// The next piece worth reading now: first those of tables pg_dump is copying (in
    /// step with it), then tables it copied or has probably passed (likely still in
    /// the cache), then what pg_dump never reads as such (materialized views,
    /// partitioned tables read whole); everything once pg_dump has exited.
    fn next(&mut self, units: &[Unit]) -> Next {
        if self.all_issued() {
            return Next::Done;
        }
        // How far pg_dump has been seen going, in its own order: a table before that
        // was probably dumped already.
        let seen = units
            .iter()
            .map(|u| &u.read)
            .filter(|t| self.copying.contains_key(&t.oid) || self.copied.contains(&t.oid));
        let (mut furthest_name, mut smallest) = (None, None);
        for t in seen {
            furthest_name = furthest_name.max(Some(&t.order));
            smallest = Some(smallest.map_or(t.pages, |p: i64| p.min(t.pages)));
        }
        let passed = |t: &TableToHash| {
            if self.parallel {
                smallest.is_some_and(|p| t.pages > p)
            } else {
                furthest_name.is_some_and(|o| &t.order < o)
            }
        };
        let mut choice = None;
        for (i, job) in self.units.iter().enumerate() {
            if job.issued == job.pieces {
                continue;
            }
            let read = &units[i].read;
            let rank = if let Some(&sent) = self.copying.get(&read.oid) {
                let piece = job.issued;
                let ahead_ok = piece < LEAD
                    || job
                        .rows_before(piece + 1 - LEAD)
                        .is_some_and(|rows| rows <= sent);
                if !ahead_ok {
                    continue;
                }
                0
            } else if self.copied.contains(&read.oid) || self.finished {
                1
            } else if passed(read) {
                2
            } else if units[i].anytime {
                3
            } else {
                continue;
            };
            if choice.is_none_or(|(best, _)| rank < best) {
                choice = Some((rank, i));
            }
        }
        match choice {
            Some((rank, unit)) => {
                let job = &mut self.units[unit];
                let piece = job.issued;
                job.issued += 1;
                tracing::trace!(
                    table = %units[unit].read.name,
                    piece,
                    pieces = job.pieces,
                    rank,
                    pg_dump_sent = ?self.copying.get(&units[unit].read.oid),
                    "fingerprinting a piece"
                );
                Next::Hash { unit, piece }
            }
            None => Next::Wait,
        }
    }
}

#[cfg(test)]
mod tests;
