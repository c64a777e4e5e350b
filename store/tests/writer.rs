//! The batch writer: group commit by size and by timer, resolution only
//! after commit, failure reporting, and flush on drop.

mod common;

use std::time::Duration;

use common::{changed, event, not_modified};
use polld_store::{ChangeKind, Store, StoreError, WriterConfig};

fn fresh() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("polld.redb")).unwrap();
    (dir, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_close_by_size() {
    let (_dir, store) = fresh();
    // A timer that never fires within the test: only size closes batches.
    let (writer, task) = store.spawn_writer(WriterConfig {
        max_batch: 50,
        max_delay: Duration::from_secs(3600),
    });
    let mut submits = Vec::new();
    for i in 0..100 {
        let w = writer.clone();
        submits.push(tokio::spawn(async move {
            w.submit(changed(
                &format!("w{i}"),
                format!("body {i}").as_bytes(),
                10,
            ))
            .await
        }));
    }
    let mut seqs = Vec::new();
    for s in submits {
        let c = s.await.unwrap().unwrap();
        assert_eq!(c.version, Some(1));
        seqs.extend(c.seqs);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=100).collect::<Vec<u64>>());
    assert_eq!(
        store.stats().unwrap().commits,
        2,
        "100 outcomes in two transactions"
    );
    assert_eq!(store.last_seq(), 100);
    drop(writer);
    task.await.unwrap().unwrap();
    store.check().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_commit_is_reported_with_its_size() {
    use std::sync::{Arc, Mutex};
    let (_dir, store) = fresh();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&reports);
    let (writer, task) = store.spawn_writer_with(
        WriterConfig {
            max_batch: 30,
            max_delay: Duration::from_millis(20),
        },
        move |report| seen.lock().unwrap().push(report),
    );
    let submits: Vec<_> = (0..75)
        .map(|i| {
            let w = writer.clone();
            tokio::spawn(async move { w.submit(not_modified(&format!("w{i}"), 1)).await })
        })
        .collect();
    drop(writer);
    for s in submits {
        s.await.unwrap().unwrap();
    }
    task.await.unwrap().unwrap();
    let reports = reports.lock().unwrap();
    let sizes: Vec<usize> = reports.iter().map(|r| r.outcomes).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 75, "{sizes:?}");
    assert!(sizes.iter().all(|&n| n <= 30), "{sizes:?}");
    assert_eq!(
        reports.len() as u64,
        store.stats().unwrap().commits,
        "one report per commit"
    );
    assert!(reports.iter().all(|r| r.duration > Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn a_lone_outcome_commits_when_the_timer_runs_out() {
    let (_dir, store) = fresh();
    let (writer, task) = store.spawn_writer(WriterConfig {
        max_batch: 1000,
        max_delay: Duration::from_secs(60),
    });
    let start = tokio::time::Instant::now();
    // Paused time advances only while everything waits, so this measures
    // the writer's timer, not the machine.
    let c = writer
        .submit(event("w", ChangeKind::WatchAdded))
        .await
        .unwrap();
    assert_eq!(c.seqs, vec![1]);
    assert!(
        start.elapsed() >= Duration::from_secs(60),
        "waited {:?}",
        start.elapsed()
    );
    assert_eq!(store.stats().unwrap().commits, 1);
    drop(writer);
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn zero_delay_commits_at_once_and_resolves_after_the_commit() {
    let (_dir, store) = fresh();
    let (writer, task) = store.spawn_writer(WriterConfig {
        max_batch: 8,
        max_delay: Duration::ZERO,
    });
    for i in 1..=3u64 {
        let c = writer
            .submit(changed("w", format!("v{i}").as_bytes(), 10))
            .await
            .unwrap();
        assert_eq!(c.version, Some(i));
        // Resolved means committed: a read sees it, with no waiting.
        assert_eq!(store.watch("w").unwrap().unwrap().latest_version, Some(i));
        assert_eq!(store.last_seq(), i);
        assert_eq!(*store.subscribe().borrow(), i);
    }
    drop(writer);
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn invalid_outcome_is_refused_alone() {
    let (_dir, store) = fresh();
    let (writer, task) = store.spawn_writer(WriterConfig::default());
    let mut bad = changed("bad", b"x", 10);
    bad.new_version.as_mut().unwrap().hash = [0; 32];
    let (bad, good) = tokio::join!(writer.submit(bad), writer.submit(not_modified("good", 1)));
    assert!(
        matches!(bad, Err(StoreError::InvalidOutcome { .. })),
        "{bad:?}"
    );
    good.unwrap();
    assert!(store.watch("good").unwrap().is_some());
    assert!(store.health().is_ok());
    drop(writer);
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn dropping_the_writers_flushes_the_queue() {
    let (_dir, store) = fresh();
    let (writer, task) = store.spawn_writer(WriterConfig {
        max_batch: 16,
        max_delay: Duration::from_millis(50),
    });
    let mut pending = Vec::new();
    for i in 0..40 {
        let w = writer.clone();
        pending.push(tokio::spawn(async move {
            w.submit(not_modified(&format!("w{i:02}"), 1)).await
        }));
    }
    drop(writer);
    // The task ends only after every queued outcome was committed.
    task.await.unwrap().unwrap();
    assert_eq!(store.stats().unwrap().watches, 40);
    for p in pending {
        p.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_failed_commit_fails_its_batch_and_stops_the_writer() {
    let (_dir, store) = fresh();
    let (writer, task) = store.spawn_writer(WriterConfig {
        max_batch: 4,
        max_delay: Duration::ZERO,
    });
    writer.submit(not_modified("before", 1)).await.unwrap();
    // Closing the database under the writer makes its next commit fail.
    store.clone().close().unwrap();
    let err = writer.submit(not_modified("after", 1)).await.unwrap_err();
    match &err {
        StoreError::BatchFailed(cause) => {
            assert!(matches!(**cause, StoreError::Closed), "{cause:?}")
        }
        other => panic!("expected BatchFailed, got {other:?}"),
    }
    let ended = task.await.unwrap();
    assert!(
        matches!(ended, Err(StoreError::BatchFailed(_))),
        "{ended:?}"
    );
    let health = store.health().unwrap_err();
    assert!(
        health.contains("writer stopped") && health.contains("closed"),
        "{health}"
    );
    assert!(matches!(
        writer.submit(not_modified("later", 1)).await,
        Err(StoreError::WriterStopped)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_waiters_wake_on_one_commit() {
    let (_dir, store) = fresh();
    let (writer, task) = store.spawn_writer(WriterConfig::default());
    let waiters: Vec<_> = (0..50)
        .map(|_| {
            let mut rx = store.subscribe();
            tokio::spawn(async move { *rx.wait_for(|s| *s >= 1).await.unwrap() })
        })
        .collect();
    writer
        .submit(event("w", ChangeKind::WatchAdded))
        .await
        .unwrap();
    for w in waiters {
        assert_eq!(w.await.unwrap(), 1);
    }
    drop(writer);
    task.await.unwrap().unwrap();
}
