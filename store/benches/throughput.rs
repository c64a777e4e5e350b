//! Store throughput, batched through the writer as the engine uses it.
//!
//! Run: `cargo bench -p polld-store --bench throughput`
//!
//! Measured on the project's 2-core machine (release, writer max_batch 4096,
//! max_delay 5 ms, 8192 concurrent submitters, Durability::Immediate;
//! schema 6, 2026-12-01, against schema 5 in the same hour):
//! - state-only (304 path), 100,000 watches x 10 passes: 217,942 outcomes/s
//!   (schema 5: 155,278), 196 bytes written to disk per outcome (272);
//! - new 1 KiB versions (10,000 watches, zstd 3): 33,443 versions/s
//!   (29,248);
//! - file after the first 100,000 state-only updates: 17.0 MiB (all of it
//!   state log); after 1,000,000: 34.0 MiB (2.00x), flat from then on;
//! - open that folds the state log a kill left (177,730 states): 0.32 s;
//! - verified reopen (full checksum pass) of the 136 MiB file: 0.05 s.
//!
//! Batch size is what matters: with only 256 submitters in flight batches
//! cannot exceed 256 and state-only falls to ~26,000/s.
//!
//! Reports outcomes/s for state-only updates (the 304 path) over 100,000
//! watches, outcomes/s for new 1 KiB versions, and the file size after
//! the first 100,000 state-only updates versus after 1,000,000.

use std::time::{Duration, Instant};

use polld_store::{NewVersion, Outcome, Store, WatchState, WriterConfig, hash_body};

#[path = "support/proc_io.rs"]
mod proc_io;
use proc_io::disk_writes;

const WATCHES: usize = 100_000;
const PASSES: usize = 10;
const VERSIONS: usize = 100_000;
/// Concurrent submitters, like the engine's polls in flight.
const SUBMITTERS: usize = 8192;

fn state(i: usize, polls: u64) -> WatchState {
    WatchState {
        id: format!("watch-{i:06}"),
        url: format!("https://example.org/feeds/{i}.json"),
        fingerprint: i as u64,
        etag: Some(format!("\"{i:x}-{polls}\"")),
        last_modified: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
        next_due_ms: Some(1_800_000_000_000 + polls),
        interval_ms: 300_000,
        last_status: Some(304),
        polls,
        not_modified: polls,
        last_checked_ms: Some(1_700_000_000_000 + polls),
        ..WatchState::default()
    }
}

async fn run(
    writer: &polld_store::Writer,
    n: usize,
    make: impl Fn(usize) -> Outcome + Send + Sync + 'static,
) -> Duration {
    let make = std::sync::Arc::new(make);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..SUBMITTERS {
        let writer = writer.clone();
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = s;
            while i < n {
                writer.submit(make(i)).await.unwrap();
                i += SUBMITTERS;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("polld.redb");
    let store = Store::open(&path).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (writer, task) = store.spawn_writer(WriterConfig { max_batch: 4096, max_delay: Duration::from_millis(5) });
        let mut sizes = Vec::new();
        let mut total = Duration::ZERO;
        let mut written_after_first = 0;
        for pass in 0..PASSES {
            let written = disk_writes();
            let took = run(&writer, WATCHES, move |i| Outcome {
                state: state(i, pass as u64 + 1).into(),
                new_version: None,
                events: vec![],
                keep_versions: 100,
            })
            .await;
            total += took;
            let size = std::fs::metadata(&path).unwrap().len();
            sizes.push(size);
            let written = disk_writes() - written;
            if pass > 0 {
                written_after_first += written;
            }
            println!("state-only pass {}: {:>8.0} outcomes/s, file {:.1} MiB, {:.0} bytes written per outcome", pass + 1, WATCHES as f64 / took.as_secs_f64(), size as f64 / 1048576.0, written as f64 / WATCHES as f64);
        }
        println!(
            "state-only: {} outcomes in {:.2} s = {:.0} outcomes/s; file after 100k {:.1} MiB, after 1M {:.1} MiB ({:.2}x)",
            WATCHES * PASSES,
            total.as_secs_f64(),
            (WATCHES * PASSES) as f64 / total.as_secs_f64(),
            sizes[0] as f64 / 1048576.0,
            sizes[PASSES - 1] as f64 / 1048576.0,
            sizes[PASSES - 1] as f64 / sizes[0] as f64
        );
        println!(
            "state-only after the first pass: {:.0} bytes written to disk per outcome",
            written_after_first as f64 / (WATCHES * (PASSES - 1)) as f64
        );
        let before = std::fs::metadata(&path).unwrap().len();
        let took = run(&writer, VERSIONS, |i| {
            // 1 KiB of text that differs per version, like a small JSON feed.
            let body: Vec<u8> = format!("{{\"n\":{i},\"items\":[{}]}}", "\"item\",".repeat(150)).into_bytes()[..1024].to_vec();
            Outcome {
                state: state(i % 10_000, 1).into(),
                new_version: Some(NewVersion { hash: hash_body(&body), body, content_type: Some("application/json".into()), headers: vec![], fetched_at_ms: 1 }),
                events: vec![],
                keep_versions: 100,
            }
        })
        .await;
        let after = std::fs::metadata(&path).unwrap().len();
        println!(
            "new 1 KiB versions: {} in {:.2} s = {:.0} versions/s; file grew {:.1} MiB",
            VERSIONS,
            took.as_secs_f64(),
            VERSIONS as f64 / took.as_secs_f64(),
            (after.saturating_sub(before)) as f64 / 1048576.0
        );
        println!("commits: {}", store.stats().unwrap().commits);
        drop(writer);
        task.await.unwrap().unwrap();
    });
    // As after a crash: the state log stays on disk and the open folds it.
    let logged = store.stats().unwrap().state_log;
    drop(store);
    let t = Instant::now();
    let store = Store::open(&path).unwrap();
    println!(
        "open that folds a state log of {logged} states (as after a crash): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    store.close().unwrap();
    let store = Store::open(&path).unwrap();
    println!(
        "verified reopen of {:.1} MiB: {:.2} s",
        std::fs::metadata(&path).unwrap().len() as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );
    store.close().unwrap();
}
