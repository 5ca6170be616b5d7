//! The schedule's rules, without a server.

use super::*;

fn table(oid: u32, name: &str, blocks: i64) -> Unit {
    let read = TableToHash {
        oid,
        name: format!("public.{name}"),
        order: ("public".into(), name.into()),
        inherits: false,
        partitioned: false,
        materialized: false,
        pages: blocks,
        blocks,
    };
    Unit {
        of: oid as usize,
        hashed_as: read.clone(),
        read,
        leaf: None,
        anytime: false,
    }
}

fn jobs(tables: &[Unit], pieces: &[usize]) -> Jobs {
    assert_eq!(tables.len(), pieces.len());
    Jobs {
        units: pieces
            .iter()
            .map(|&n| TableJob {
                pieces: n,
                blocks_per_piece: 1024,
                hashed: vec![None; n],
                ..TableJob::default()
            })
            .collect(),
        ..Jobs::default()
    }
}

impl Jobs {
    fn hashed(&mut self, table: usize, piece: usize, rows: i64) {
        self.units[table].hashed[piece] = Some(TableFingerprint {
            rows,
            hash: "1".into(),
            partitions: BTreeMap::new(),
        });
    }
}

fn issued(next: Next) -> (usize, usize) {
    match next {
        Next::Hash { unit, piece } => (unit, piece),
        Next::Wait => panic!("waits"),
        Next::Done => panic!("done"),
    }
}

#[test]
fn nothing_is_read_before_pg_dump_reads_it() {
    let tables = [table(1, "a", 5000), table(2, "b", 10)];
    let mut jobs = jobs(&tables, &[5, 1]);
    assert!(matches!(jobs.next(&tables), Next::Wait));
    jobs.saw(HashMap::from([(1, 0)]));
    // LEAD pieces may go ahead of the COPY, then no more until it has sent the
    // first piece's rows.
    assert_eq!(issued(jobs.next(&tables)), (0, 0));
    assert_eq!(issued(jobs.next(&tables)), (0, 1));
    assert!(matches!(jobs.next(&tables), Next::Wait));
    jobs.hashed(0, 0, 100);
    jobs.saw(HashMap::from([(1, 99)]));
    assert!(matches!(jobs.next(&tables), Next::Wait));
    jobs.saw(HashMap::from([(1, 100)]));
    assert_eq!(issued(jobs.next(&tables)), (0, 2));
    // Once the COPY is over, the rest goes at once.
    jobs.saw(HashMap::new());
    assert_eq!(issued(jobs.next(&tables)), (0, 3));
    assert_eq!(issued(jobs.next(&tables)), (0, 4));
    // b sorts after a: pg_dump, alone, has not passed it yet.
    assert!(matches!(jobs.next(&tables), Next::Wait));
    jobs.finished = true;
    assert_eq!(issued(jobs.next(&tables)), (1, 0));
    assert!(matches!(jobs.next(&tables), Next::Done));
}

#[test]
fn tables_pg_dump_has_passed_go_before_the_rest() {
    let tables = [
        table(1, "a", 10),
        table(2, "b", 10),
        table(3, "c", 5000),
        table(4, "d", 10),
    ];
    let mut jobs = jobs(&tables, &[1, 1, 5, 1]);
    jobs.saw(HashMap::from([(3, 0)]));
    // c in step first, then a and b (before c by name), never d.
    assert_eq!(issued(jobs.next(&tables)), (2, 0));
    assert_eq!(issued(jobs.next(&tables)), (2, 1));
    assert_eq!(issued(jobs.next(&tables)), (0, 0));
    assert_eq!(issued(jobs.next(&tables)), (1, 0));
    assert!(matches!(jobs.next(&tables), Next::Wait));
}

#[test]
fn jobs_are_followed_largest_first() {
    let tables = [
        table(1, "a", 9000),
        table(2, "b", 10),
        table(3, "c", 5000),
        table(4, "d", 7000),
    ];
    let mut jobs = jobs(&tables, &[9, 1, 5, 7]);
    jobs.units[0].issued = 9;
    jobs.saw(HashMap::from([(1, 10), (3, 0)]));
    // Two at once: pg_dump runs jobs, largest first, so d (larger than c) was
    // dumped already while b (smaller) was not.
    assert!(jobs.parallel);
    let mut next = Vec::new();
    while let Next::Hash { unit, .. } = jobs.next(&tables) {
        next.push(unit);
    }
    assert!(next.contains(&3), "{next:?}");
    assert!(!next.contains(&1), "{next:?}");
}

#[test]
fn pieces_cover_the_table_with_the_last_one_open() {
    let job = TableJob {
        pieces: 3,
        blocks_per_piece: 1024,
        hashed: vec![None; 3],
        ..TableJob::default()
    };
    assert_eq!(
        job.blocks(0),
        Blocks::Range {
            from: 0,
            to: Some(1024)
        }
    );
    assert_eq!(
        job.blocks(1),
        Blocks::Range {
            from: 1024,
            to: Some(2048)
        }
    );
    assert_eq!(
        job.blocks(2),
        Blocks::Range {
            from: 2048,
            to: None
        }
    );
    let one = TableJob {
        pieces: 1,
        hashed: vec![None],
        ..TableJob::default()
    };
    assert_eq!(one.blocks(0), Blocks::All);
}

#[test]
fn pieces_add_up_and_an_unhashed_piece_is_an_error() {
    let mut job = TableJob {
        pieces: 2,
        hashed: vec![None; 2],
        ..TableJob::default()
    };
    job.hashed[0] = Some(TableFingerprint {
        rows: 2,
        hash: "-5".into(),
        partitions: BTreeMap::new(),
    });
    let missing = TableJob {
        hashed: job.hashed.clone(),
        ..TableJob::default()
    };
    assert!(missing.total().is_err());
    job.hashed[1] = Some(TableFingerprint {
        rows: 3,
        hash: "18446744073709551615".into(),
        partitions: BTreeMap::new(),
    });
    let total = job.total().unwrap();
    assert_eq!(
        (total.rows, total.hash.as_str()),
        (5, "18446744073709551610")
    );
}
