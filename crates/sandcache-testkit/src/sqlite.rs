//! Hostile SQLite files: a small database whose `-wal` claims it is huge.
//!
//! A WAL commit frame records the database's size in pages after the
//! commit, and SQLite takes it for the database's size (page 1's own count
//! is only believed when its change counters agree; here it says the same
//! lie). Nothing checks the claim against the pages the files hold: a
//! backup of it writes every missing page as zeros.

use std::fs;

use rusqlite::{Connection, OpenFlags};

/// The bytes of a database in WAL mode and of its `-wal`, a few KiB each,
/// whose last commit claims `pages` pages of 4096 bytes. Real SQLite writes
/// them; then page 1 (in the file and in every frame holding it) and the
/// commit frame's size field are changed to `pages`, and the frames'
/// checksums recomputed so that SQLite accepts them. Checked: SQLite reads
/// it back as `pages` pages.
pub fn wal_claiming(pages: u32) -> (Vec<u8>, Vec<u8>) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("db");
    let c = Connection::open(&path).unwrap();
    c.pragma_update(None, "page_size", 4096).unwrap();
    let mode: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    c.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    c.execute_batch("CREATE TABLE t (i INTEGER PRIMARY KEY, pad BLOB NOT NULL)").unwrap();
    for i in 0..16i64 {
        c.execute("INSERT INTO t VALUES (?1, ?2)", rusqlite::params![i, vec![i as u8; 1000]]).unwrap();
    }
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); UPDATE t SET pad = zeroblob(1000) WHERE i = 3").unwrap();
    // Read while the connection is open: closing it would checkpoint the
    // WAL and remove it.
    let mut db = fs::read(&path).unwrap();
    let mut wal = fs::read(tmp.path().join("db-wal")).unwrap();
    drop(c);

    const HEADER: usize = 32;
    const FRAME_HEADER: usize = 24;
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    let page_size = be(&wal[8..12]) as usize;
    assert_eq!(page_size, 4096);
    // The magic's low bit says in which byte order the checksum reads
    // words; the fields themselves are big-endian.
    let big_endian = be(&wal[0..4]) & 1 == 1;
    let word = |b: &[u8]| if big_endian { be(b) } else { u32::from_le_bytes(b.try_into().unwrap()) };
    // The WAL checksum: over pairs of 32-bit words, each frame's continuing
    // from the one before (the first from the header's).
    let checksum = |mut s: (u32, u32), data: &[u8]| {
        for pair in data.chunks_exact(8) {
            s.0 = s.0.wrapping_add(word(&pair[..4])).wrapping_add(s.1);
            s.1 = s.1.wrapping_add(word(&pair[4..])).wrapping_add(s.0);
        }
        s
    };
    db[28..32].copy_from_slice(&pages.to_be_bytes());
    let frames = (wal.len() - HEADER) / (FRAME_HEADER + page_size);
    let mut s = (be(&wal[24..28]), be(&wal[28..32]));
    for f in 0..frames {
        let at = HEADER + f * (FRAME_HEADER + page_size);
        let (head, page) = wal[at..at + FRAME_HEADER + page_size].split_at_mut(FRAME_HEADER);
        if be(&head[0..4]) == 1 {
            page[28..32].copy_from_slice(&pages.to_be_bytes());
        }
        if f == frames - 1 {
            assert_ne!(be(&head[4..8]), 0, "the last frame is a commit");
            head[4..8].copy_from_slice(&pages.to_be_bytes());
        }
        s = checksum(checksum(s, &head[..8]), page);
        head[16..20].copy_from_slice(&s.0.to_be_bytes());
        head[20..24].copy_from_slice(&s.1.to_be_bytes());
    }

    // SQLite believes it.
    let check = tmp.path().join("check");
    fs::create_dir(&check).unwrap();
    fs::write(check.join("db"), &db).unwrap();
    fs::write(check.join("db-wal"), &wal).unwrap();
    let c = Connection::open_with_flags(check.join("db"), OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let count: u32 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    assert_eq!(count, pages, "SQLite does not take the crafted WAL's claim");
    (db, wal)
}
