//! Opening: locking against a second process, clean close, damaged files
//! (reported and left untouched), newer schemas (refused) and older ones
//! (migrated).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{changed, not_modified};
use polld_store::{SCHEMA_VERSION, Store, StoreError, StoreOptions};
use redb::{ReadableDatabase, TableDefinition};

const HOLDER_ENV: &str = "POLLD_STORE_TEST_HOLD";

/// Child process of the locking tests: opens the store named by
/// `$POLLD_STORE_TEST_HOLD`, says `OPEN`, and holds it until its stdin
/// closes, then closes it cleanly and says `CLOSED`.
#[test]
#[ignore = "child process of the locking tests; they run it"]
fn holder_child() {
    let path = PathBuf::from(std::env::var(HOLDER_ENV).expect("run by the locking tests"));
    let store = Store::open(&path).unwrap();
    store.apply_blocking(vec![not_modified("held", 1)]).unwrap();
    println!("OPEN");
    let mut sink = String::new();
    // Returns at EOF, when the parent drops our stdin.
    std::io::stdin().read_line(&mut sink).unwrap();
    store.close().unwrap();
    println!("CLOSED");
}

struct Holder {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Holder {
    fn start(path: &Path) -> Holder {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "holder_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HOLDER_ENV, path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Bounded by the child: it prints OPEN or exits (EOF). libtest may put
        // its own "test holder_child ... " before it on the same line.
        assert!(
            lines
                .by_ref()
                .map_while(Result::ok)
                .any(|l| l.ends_with("OPEN")),
            "the holder did not open the store"
        );
        Holder { child, lines }
    }

    /// Closes the child's stdin: it closes the store and exits.
    fn finish(mut self) {
        drop(self.child.stdin.take());
        assert!(
            self.lines
                .by_ref()
                .map_while(Result::ok)
                .any(|l| l.ends_with("CLOSED"))
        );
        assert!(self.child.wait().unwrap().success());
    }
}

/// Opens the file with plain redb and tells whether redb had to repair it,
/// i.e. whether it was left without a clean close.
fn needed_repair(path: &Path) -> bool {
    let repaired = Arc::new(AtomicBool::new(false));
    let flag = repaired.clone();
    let db = redb::Builder::new()
        .set_repair_callback(move |_| flag.store(true, Ordering::SeqCst))
        .open(path)
        .unwrap();
    drop(db);
    repaired.load(Ordering::SeqCst)
}

#[test]
fn a_second_process_gets_already_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("polld.redb");
    let holder = Holder::start(&path);
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(
        err.to_string().contains("already in use by another polld"),
        "{err}"
    );
    holder.finish();
    let store = Store::open(&path).unwrap();
    assert_eq!(store.watch("held").unwrap().unwrap().polls, 1);
}

#[test]
fn clean_close_needs_no_repair_and_a_kill_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("polld.redb");
    Holder::start(&path).finish();
    assert!(!needed_repair(&path), "closed cleanly by the holder");

    let store = Store::open(&path).unwrap();
    store
        .apply_blocking(vec![changed("w", b"body", 5)])
        .unwrap();
    store.close().unwrap();
    assert!(!needed_repair(&path), "closed cleanly by Store::close");

    // The check above can fail: a killed holder leaves a file to repair.
    let mut holder = Holder::start(&path);
    holder.child.kill().unwrap();
    holder.child.wait().unwrap();
    assert!(needed_repair(&path));
    // And the store opens it, with everything committed before the kill.
    let store = Store::open(&path).unwrap();
    assert_eq!(store.body("w", 1).unwrap().unwrap().1, b"body");
    store.check().unwrap();
}

/// A store with a few versions, closed; returns its path.
fn populated(dir: &Path, raw_body: &[u8]) -> PathBuf {
    let path = dir.join("polld.redb");
    let store = Store::open(&path).unwrap();
    let mut batch: Vec<_> = (0..50)
        .map(|i| {
            changed(
                &format!("w{i}"),
                format!("body {i}").repeat(40).as_bytes(),
                5,
            )
        })
        .collect();
    batch.push(changed("raw", raw_body, 5));
    store.apply_blocking(batch).unwrap();
    store.close().unwrap();
    path
}

/// Bytes that zstd cannot shrink, so the store keeps them verbatim.
fn noise(len: usize, mut x: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn assert_corrupted_and_untouched(path: &Path) {
    let before = std::fs::read(path).unwrap();
    let err = Store::open(path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupted { .. }), "{err:?}");
    assert!(err.to_string().contains("corrupted"), "{err}");
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "the file was modified"
    );
}

#[test]
fn truncated_file_is_corrupted_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path(), &noise(8192, 1));
    let len = std::fs::metadata(&path).unwrap().len();
    for cut in [len / 2, 1000, 3] {
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(cut).unwrap();
        drop(f);
        assert_corrupted_and_untouched(&path);
    }
}

#[test]
fn a_file_that_is_not_a_database_is_corrupted_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("polld.redb");
    std::fs::write(&path, b"[daemon]\nlisten = \"127.0.0.1:8377\"\n").unwrap();
    assert_corrupted_and_untouched(&path);
}

#[test]
fn damaged_page_is_corrupted_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let raw = noise(8192, 7);
    let path = populated(dir.path(), &raw);
    let mut bytes = std::fs::read(&path).unwrap();
    // The incompressible body is stored verbatim: damage a byte of it, in
    // a page redb must read.
    let at = bytes
        .windows(64)
        .position(|w| w == &raw[1000..1064])
        .expect("raw body in the file");
    bytes[at + 10] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    assert_corrupted_and_untouched(&path);
}

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const BODIES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("bodies");
const BODY_REFS: TableDefinition<&[u8; 32], u64> = TableDefinition::new("body_refs");

fn set_schema(path: &Path, version: u64) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(META)
        .unwrap()
        .insert("schema_version", version)
        .unwrap();
    txn.commit().unwrap();
    db.close().unwrap();
}

// The binding is needed: the guard must drop before the transaction.
#[allow(clippy::let_and_return)]
fn schema_of(path: &Path) -> u64 {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let v = txn
        .open_table(META)
        .unwrap()
        .get("schema_version")
        .unwrap()
        .unwrap()
        .value();
    v
}

#[test]
fn newer_schema_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path(), b"x");
    set_schema(&path, SCHEMA_VERSION + 1);
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path).unwrap_err();
    match &err {
        StoreError::NewerSchema {
            found, supported, ..
        } => {
            assert_eq!((*found, *supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    assert!(err.to_string().contains("newer polld"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // Also when the open skips the integrity check.
    let opts = StoreOptions {
        verify_on_open: false,
        ..StoreOptions::default()
    };
    assert!(matches!(
        opts.open(&path),
        Err(StoreError::NewerSchema { .. })
    ));
}

#[test]
fn schema_1_is_migrated_to_body_refcounts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("polld.redb");
    let store = Store::open(&path).unwrap();
    store
        .apply_blocking(vec![
            changed("a", b"shared", 10),
            changed("b", b"shared", 10),
            changed("a", b"a2", 10),
        ])
        .unwrap();
    store.close().unwrap();
    // Turn the file into schema 1's layout: no body_refs, and a body that
    // no version names (schema 1 deleted bodies lazily).
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        assert!(txn.delete_table(BODY_REFS).unwrap());
        txn.open_table(BODIES)
            .unwrap()
            .insert(&[5u8; 32], [0u8, b'x'].as_slice())
            .unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("schema_version", 1)
            .unwrap();
        txn.commit().unwrap();
        db.close().unwrap();
    }
    let store = Store::open(&path).unwrap();
    store.check().unwrap();
    assert_eq!(
        store.stats().unwrap().bodies,
        2,
        "the orphan body was dropped"
    );
    // The counted references drive pruning: a's versions go, the shared
    // body stays for b.
    store.apply_blocking(vec![changed("a", b"a3", 1)]).unwrap();
    assert_eq!(store.versions("a").unwrap().len(), 1);
    assert_eq!(store.body("b", 1).unwrap().unwrap().1, b"shared");
    assert_eq!(store.stats().unwrap().bodies, 2);
    store.check().unwrap();
    store.close().unwrap();
    assert_eq!(schema_of(&path), SCHEMA_VERSION);
}

#[test]
fn a_redb_file_of_another_program_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<u64, u64>::new("theirs"))
            .unwrap()
            .insert(1, 2)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Inconsistent(_)), "{err:?}");
}

#[test]
fn verified_and_unverified_opens_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path(), b"plain");
    let opts = StoreOptions {
        verify_on_open: false,
        cache_bytes: 1 << 20,
        ..StoreOptions::default()
    };
    let store = opts.open(&path).unwrap();
    assert_eq!(
        store.body("w7", 1).unwrap().unwrap().1,
        "body 7".repeat(40).as_bytes()
    );
    store.check().unwrap();
    let mut out = std::io::stdout();
    writeln!(out, "{store:?}").unwrap();
}
