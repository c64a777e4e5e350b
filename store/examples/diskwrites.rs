//! Disk writes per outcome of the engine bench's steady case, without the
//! engine: 100,000 watches polled every 10 s (jitter 0.1), first polls
//! spread uniformly over the first interval and each a new version, then
//! 304s; the outcomes due in each `STEP` of simulated time are one commit
//! (the writer's 50 ms linger, ~600 outcomes). Time is simulated: commits
//! run back to back.
//!
//! Run: `cargo run --release -p polld-store --example diskwrites -- SEED
//! [INTERVALS] [STEP_MS] [DIR]`; prints, per simulated second, the bytes
//! written per outcome (`write_bytes` of /proc/self/io), the file size and
//! the rolling fold's position. DIR must be on a disk (not a tmpfs).
//!
//! The simulation is deterministic: two runs of one seed make the same
//! commits (the fold columns match line for line). What varies is the
//! kernel's page cache. Environment, to provoke what a run may meet:
//! - `DROP_AT=MS` (and `DROP_EVERY=MS`): evict the file's clean pages from
//!   the page cache at that simulated time (and again every MS after), as
//!   memory pressure would; with `CAT=1` then read the whole file with
//!   `cat`, as a backup would, which puts it in large folios;
//! - `REOPEN_AT=MS`: close, evict, open again (a cold start, verified);
//! - `CRASH_AT=MS`: exit there without closing the store (as a crash
//!   would leave it: the state log not folded) and keep the file; then
//!   `OPEN=path/to/polld.redb` (no other argument needed) times the
//!   open that folds it;
//! - `INSPECT=MS` and `FOLIOS=path/to/script`: every MS, run the script on
//!   the file (`store/examples/folios.py` prints its folio sizes).
//!
//! Measured (2026-12-02, 2-core VM, ext4, Linux 6.18, `read_ahead_kb`
//! 8192), steady windows after the warm-up, B/outcome:
//! - seeds 1-9: ~420-600 (seed 6 once 1,000-13,000 over the same commits,
//!   ~500 in its reruns);
//! - seed 2, `DROP_AT=25000 CAT=1`, before the store opened its file with
//!   `POSIX_FADV_RANDOM`: 19,000-33,000 for the rest of the run (the file
//!   in folios of up to 2 MiB); `DROP_AT=25000 DROP_EVERY=3000`: 580-1,000
//!   with folios of up to 16 pages, where with the advice every folio is a
//!   page and the windows match the run without drops.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use polld_store::{NewVersion, Outcome, Store, WatchState, hash_body};

#[path = "../benches/support/proc_io.rs"]
mod proc_io;
use proc_io::disk_writes;

const WATCHES: usize = 100_000;
const INTERVAL_MS: u64 = 10_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn state(i: usize, polls: u64, now: u64, due: u64) -> WatchState {
    WatchState {
        id: format!("w{i}"),
        url: format!("http://127.0.0.1:8080/{}/{i}.json", i % 100),
        fingerprint: i as u64,
        etag: Some(format!("\"674c1b2a-{:x}\"", 220 + i % 7)),
        last_modified: Some("Mon, 01 Dec 2026 10:00:00 GMT".into()),
        next_due_ms: Some(1_800_000_000_000 + due),
        interval_ms: INTERVAL_MS,
        base_interval_ms: Some(INTERVAL_MS),
        last_status: Some(if polls == 1 { 200 } else { 304 }),
        polls,
        not_modified: polls - 1,
        changed: 1,
        bytes_received: 230,
        last_checked_ms: Some(1_800_000_000_000 + now),
        last_changed_ms: Some(1_800_000_000_000),
        ..WatchState::default()
    }
}

fn main() {
    if let Ok(path) = std::env::var("OPEN") {
        let t = Instant::now();
        Store::open(std::path::Path::new(&path))
            .unwrap()
            .close()
            .unwrap();
        println!(
            "open after a crash, and close: {:.2} s",
            t.elapsed().as_secs_f64()
        );
        return;
    }
    let mut args = std::env::args().skip(1);
    let seed: u64 = args.next().map_or(1, |s| s.parse().unwrap());
    let intervals: u64 = args.next().map_or(5, |s| s.parse().unwrap());
    let step: u64 = args.next().map_or(60, |s| s.parse().unwrap());
    let dir = args.next().map_or_else(
        || tempfile::tempdir_in("/work").unwrap(),
        |d| tempfile::tempdir_in(d).unwrap(),
    );
    let path = dir.path().join("polld.redb");
    let mut store = Store::open(&path).unwrap();
    let mut rng = Rng(seed);
    let mut polls = vec![0u64; WATCHES];
    let mut due: BinaryHeap<Reverse<(u64, usize)>> = (0..WATCHES)
        .map(|i| Reverse(((rng.unit() * INTERVAL_MS as f64) as u64, i)))
        .collect();
    let end = INTERVAL_MS * (2 + intervals);
    let mut now = 0;
    let (mut w0, mut n0, mut c0, mut t0) = (disk_writes(), 0u64, 0u64, Instant::now());
    let (mut n, mut commits) = (0u64, 0u64);
    // DROP_AT=MS: at that simulated time, evict the file's clean pages from
    // the kernel's page cache (as memory pressure would).
    let drop_at: Option<u64> = std::env::var("DROP_AT").ok().map(|s| s.parse().unwrap());
    while now < end {
        now += step;
        let mut batch = Vec::new();
        while let Some(&Reverse((at, i))) = due.peek() {
            if at > now {
                break;
            }
            due.pop();
            polls[i] += 1;
            let p = polls[i];
            let factor = (1.0 + 0.1 * (2.0 * rng.unit() - 1.0)).min(1.0);
            let next = now + (INTERVAL_MS as f64 * factor) as u64;
            due.push(Reverse((next, i)));
            let new_version = (p == 1).then(|| {
                let body = format!("{{\"id\": {i}, \"payload\": \"{}\"}}\n", "x".repeat(200));
                NewVersion {
                    hash: hash_body(body.as_bytes()),
                    body: body.into_bytes(),
                    content_type: Some("application/json".into()),
                    headers: vec![("etag".into(), "\"x\"".into())],
                    fetched_at_ms: now,
                }
            });
            batch.push(Outcome {
                state: state(i, p, now, next).into(),
                new_version,
                events: Vec::new(),
                keep_versions: 10,
            });
        }
        n += batch.len() as u64;
        if !batch.is_empty() {
            store.apply_blocking(batch).unwrap();
            commits += 1;
        }
        if drop_at.is_some_and(|d| {
            now >= d
                && (now - d) % std::env::var("DROP_EVERY").map_or(u64::MAX, |e| e.parse().unwrap())
                    < step
        }) {
            let st = std::process::Command::new("python3")
                .args(["-c", "import os,sys; fd=os.open(sys.argv[1],os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED); os.environ.get('CAT') and os.system('cat '+sys.argv[1]+' >/dev/null')"])
                .arg(&path)
                .status()
                .unwrap();
            println!("dropped the page cache: {st}");
        }
        // INSPECT=MS, FOLIOS=script: every MS of simulated time, print the
        // sizes of the file's folios in the page cache.
        if let (Ok(every), Ok(script)) = (std::env::var("INSPECT"), std::env::var("FOLIOS"))
            && now % every.parse::<u64>().unwrap() < step
        {
            std::process::Command::new("python3")
                .arg(script)
                .arg(&path)
                .status()
                .unwrap();
        }
        if std::env::var("CRASH_AT").is_ok_and(|c| now >= c.parse::<u64>().unwrap()) {
            println!("exit without closing: {}", path.display());
            std::process::exit(0);
        }
        // REOPEN_AT=MS: close, evict the file from the page cache (a cold
        // start) and open it again, with the default full verification.
        if std::env::var("REOPEN_AT").is_ok_and(|r| {
            now >= r.parse::<u64>().unwrap() && now - r.parse::<u64>().unwrap() < step
        }) {
            let t = Instant::now();
            store.close().unwrap();
            println!("close (the log folded): {:.2} s", t.elapsed().as_secs_f64());
            std::process::Command::new("python3")
                .args(["-c", "import os,sys; fd=os.open(sys.argv[1],os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)"])
                .arg(&path)
                .status()
                .unwrap();
            let t = Instant::now();
            store = Store::open(&path).unwrap();
            println!(
                "cold reopen with verification: {:.2} s",
                t.elapsed().as_secs_f64()
            );
        }
        if now % 1000 < step {
            let w = disk_writes();
            let (cs, next, entries, indexed, cursor) = store.fold_progress();
            let size = std::fs::metadata(&path).unwrap().len();
            println!(
                "t={:>5.1}s {:>6} outcomes {:>3} commits {:>6.0} B/outcome {:>5.1} ms/commit file {:>6.1} MiB | cycle_start {cs} next {next} logged {entries} indexed {indexed} cursor {cursor:?}",
                now as f64 / 1000.0,
                n - n0,
                commits - c0,
                (w - w0) as f64 / (n - n0).max(1) as f64,
                t0.elapsed().as_secs_f64() * 1000.0 / (commits - c0).max(1) as f64,
                size as f64 / 1048576.0,
            );
            (w0, n0, c0, t0) = (w, n, commits, Instant::now());
        }
    }
    store.close().unwrap();
}
