//! The store's operations through its public API: upserts, versions,
//! bodies, the change log, retention, reads and the open/close contract.

mod common;

use std::sync::Arc;

use common::{changed, event, not_modified, state};
use polld_store::{
    ChangeKind, Outcome, Store, StoreError, StoreOptions, WatchStatus, hash_body, hex, parse_hex,
};

fn fresh() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("polld.redb")).unwrap();
    (dir, store)
}

#[test]
fn hash_and_hex_round_trip() {
    let h = hash_body(b"hello");
    assert_eq!(h, *blake3::hash(b"hello").as_bytes());
    let s = hex(&h);
    assert_eq!(s.len(), 64);
    assert_eq!(s, s.to_lowercase());
    assert_eq!(parse_hex(&s), Some(h));
    assert_eq!(parse_hex(&s.to_uppercase()), Some(h));
    assert_eq!(parse_hex(&s[1..]), None);
    assert_eq!(parse_hex(&format!("{}g", &s[1..])), None);
}

#[test]
fn status_and_kind_spellings() {
    let statuses = [
        (WatchStatus::Ok, "ok"),
        (WatchStatus::Error, "error"),
        (WatchStatus::RateLimited, "rate_limited"),
        (WatchStatus::Done, "done"),
        (WatchStatus::Removed, "removed"),
    ];
    for (s, name) in statuses {
        assert_eq!(s.as_str(), name);
    }
    let kinds = [
        (ChangeKind::NewVersion, "new_version"),
        (ChangeKind::WatchAdded, "watch_added"),
        (ChangeKind::WatchRemoved, "watch_removed"),
        (ChangeKind::ErrorStarted, "error_started"),
        (ChangeKind::ErrorCleared, "error_cleared"),
        (ChangeKind::Done, "done"),
    ];
    for (k, name) in kinds {
        assert_eq!(k.as_str(), name);
    }
}

#[test]
fn state_is_upserted_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dir/polld.redb");
    let store = Store::open(&path).unwrap();
    assert_eq!(store.watch("a").unwrap(), None);
    let committed = store.apply_blocking(vec![not_modified("a", 1)]).unwrap();
    assert_eq!(committed.len(), 1);
    assert!(committed[0].seqs.is_empty(), "a 304 appends no change");
    assert_eq!(committed[0].version, None);
    store.apply_blocking(vec![not_modified("a", 2)]).unwrap();
    let got = store.watch("a").unwrap().unwrap();
    assert_eq!(got.polls, 2);
    assert_eq!(got.etag.as_deref(), Some("\"v1\""));
    assert_eq!(store.last_seq(), 0);
    store.close().unwrap();

    let store = Store::open(&path).unwrap();
    let again = store.watch("a").unwrap().unwrap();
    assert_eq!(again, got);
    assert_eq!(store.stats().unwrap().watches, 1);
}

#[test]
fn every_state_field_is_kept() {
    let (_dir, store) = fresh();
    let mut s = state("full");
    s.last_modified = Some("Wed, 21 Oct 2015 07:28:00 GMT".into());
    s.cursor = Some("page=3".into());
    s.next_due_ms = Some(1_800_000_000_000);
    s.backoff_level = 4;
    s.consecutive_errors = 2;
    s.consecutive_moves = 1;
    s.last_status = Some(503);
    s.last_error = Some("503 Service Unavailable".into());
    s.status = WatchStatus::RateLimited;
    s.last_checked_ms = Some(7);
    s.last_changed_ms = Some(6);
    s.polls = 9;
    s.unchanged = 3;
    s.errors = 2;
    s.rate_limited = 1;
    s.bytes_received = 123_456;
    let o = Outcome {
        state: s.clone().into(),
        new_version: None,
        events: vec![],
        keep_versions: 3,
    };
    store.apply_blocking(vec![o]).unwrap();
    assert_eq!(store.watch("full").unwrap().unwrap(), s);
}

#[test]
fn versions_are_numbered_and_bodies_read_back() {
    let (_dir, store) = fresh();
    let body1 =
        b"first body, long enough to be worth compressing: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            .to_vec();
    let body2 = vec![7u8; 10_000];
    let c1 = store
        .apply_blocking(vec![changed("w", &body1, 10)])
        .unwrap();
    let c2 = store
        .apply_blocking(vec![changed("w", &body2, 10)])
        .unwrap();
    assert_eq!(c1[0].version, Some(1));
    assert_eq!(c2[0].version, Some(2));
    assert_eq!(c1[0].seqs, vec![1]);
    assert_eq!(c2[0].seqs, vec![2]);

    let versions = store.versions("w").unwrap();
    assert_eq!(
        versions.iter().map(|v| v.number).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(versions[1].size, 10_000);
    assert_eq!(versions[1].hash, hash_body(&body2));
    assert_eq!(versions[1].content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        versions[1].headers,
        vec![("etag".to_owned(), "\"x\"".to_owned())]
    );
    assert_eq!(versions[1].fetched_at_ms, 1_000);

    let (v, b) = store.body("w", 2).unwrap().unwrap();
    assert_eq!(v, versions[1]);
    assert_eq!(b, body2);
    assert_eq!(store.body("w", 1).unwrap().unwrap().1, body1);
    assert_eq!(store.body("w", 3).unwrap(), None);
    assert_eq!(store.body("other", 1).unwrap(), None);
    assert_eq!(store.version("w", 1).unwrap().unwrap(), versions[0]);
    assert_eq!(store.version("w", 9).unwrap(), None);

    let s = store.watch("w").unwrap().unwrap();
    assert_eq!(
        (s.versions, s.latest_version, s.latest_hash),
        (2, Some(2), Some(hash_body(&body2)))
    );
    store.check().unwrap();
}

#[test]
fn incompressible_and_empty_bodies_round_trip() {
    let (_dir, store) = fresh();
    // A pseudo-random body: zstd cannot shrink it, so it is kept raw.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    store
        .apply_blocking(vec![changed("n", &noise, 10), changed("e", b"", 10)])
        .unwrap();
    assert_eq!(store.body("n", 1).unwrap().unwrap().1, noise);
    assert_eq!(store.body("e", 1).unwrap().unwrap().1, Vec::<u8>::new());
    store.check().unwrap();
}

#[test]
fn identical_bodies_are_stored_once() {
    let (_dir, store) = fresh();
    let body = b"same everywhere".to_vec();
    store
        .apply_blocking(vec![
            changed("a", &body, 10),
            changed("b", &body, 10),
            changed("a", b"other", 10),
            changed("a", &body, 10),
        ])
        .unwrap();
    let stats = store.stats().unwrap();
    assert_eq!(stats.versions, 4);
    assert_eq!(stats.bodies, 2, "two distinct bodies");
    assert_eq!(store.body("b", 1).unwrap().unwrap().1, body);
    assert_eq!(store.body("a", 3).unwrap().unwrap().1, body);
    store.check().unwrap();
}

#[test]
fn store_owns_version_counters_in_the_state() {
    let (_dir, store) = fresh();
    store
        .apply_blocking(vec![changed("w", b"one", 10)])
        .unwrap();
    // The engine hands in stale or made-up values: they are ignored.
    let mut o = not_modified("w", 2);
    Arc::make_mut(&mut o.state).versions = 99;
    Arc::make_mut(&mut o.state).latest_version = Some(42);
    Arc::make_mut(&mut o.state).latest_hash = Some([1; 32]);
    store.apply_blocking(vec![o]).unwrap();
    let s = store.watch("w").unwrap().unwrap();
    assert_eq!(
        (s.versions, s.latest_version, s.latest_hash),
        (1, Some(1), Some(hash_body(b"one")))
    );
}

#[test]
fn events_follow_the_version_in_order_and_carry_no_version() {
    let (_dir, store) = fresh();
    let mut o = changed("w", b"body", 10);
    o.events = vec![ChangeKind::ErrorCleared, ChangeKind::Done];
    let c = store
        .apply_blocking(vec![event("w", ChangeKind::WatchAdded), o])
        .unwrap();
    assert_eq!(c[0].seqs, vec![1]);
    assert_eq!(c[1].seqs, vec![2, 3, 4]);
    assert_eq!(store.last_seq(), 4);
    let log = store.changes_after(0, 100).unwrap();
    let got: Vec<_> = log
        .iter()
        .map(|c| (c.seq, c.watch.as_str(), c.version, c.kind))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "w", None, ChangeKind::WatchAdded),
            (2, "w", Some(1), ChangeKind::NewVersion),
            (3, "w", None, ChangeKind::ErrorCleared),
            (4, "w", None, ChangeKind::Done),
        ]
    );
    assert_eq!(
        log[1].at_ms, 1_000,
        "a version's change is dated by its fetch"
    );
    assert!(
        log[0].at_ms > 1_600_000_000_000,
        "events are dated by the commit"
    );
    // Paging.
    let page: Vec<u64> = store
        .changes_after(1, 2)
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(page, vec![2, 3]);
    assert!(store.changes_after(4, 10).unwrap().is_empty());
}

#[test]
fn watches_page_in_id_order() {
    let (_dir, store) = fresh();
    let ids = ["delta", "alpha", "echo", "charlie", "bravo"];
    store
        .apply_blocking(ids.iter().map(|id| not_modified(id, 1)).collect())
        .unwrap();
    let names = |v: Vec<polld_store::WatchState>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(names(store.watches(None, 2).unwrap()), ["alpha", "bravo"]);
    assert_eq!(
        names(store.watches(Some("bravo"), 2).unwrap()),
        ["charlie", "delta"]
    );
    assert_eq!(names(store.watches(Some("delta"), 2).unwrap()), ["echo"]);
    assert!(store.watches(Some("echo"), 2).unwrap().is_empty());
    // `after` need not be an existing id.
    assert_eq!(names(store.watches(Some("b"), 1).unwrap()), ["bravo"]);
    assert_eq!(store.all_watches().unwrap().len(), 5);
    assert!(store.watches(None, 0).unwrap().is_empty());
}

/// Reads through one view see one commit: the latest version found there
/// still has its body after a commit has made a newer one and pruned it
/// (`keep_versions = 1`). Separate reads answered 404 for `latest` then.
#[test]
fn a_versions_view_keeps_what_a_later_commit_prunes() {
    let (_dir, store) = fresh();
    store.apply_blocking(vec![changed("a", b"one", 1)]).unwrap();
    let (latest, body) = store
        .read_versions("a", |view| {
            let latest = view.latest()?.expect("version 1");
            store.apply_blocking(vec![changed("a", b"two", 1)]).unwrap();
            assert_eq!(view.list()?.len(), 1);
            let body = view.body(&latest)?;
            Ok((latest, body))
        })
        .unwrap();
    assert_eq!((latest.number, &body[..]), (1, &b"one"[..]));
    // Outside the view, version 1 is gone and 2 is the latest.
    assert_eq!(store.body("a", 1).unwrap(), None);
    let now = store.read_versions("a", |view| view.latest()).unwrap();
    assert_eq!(now.map(|v| v.number), Some(2));
    assert_eq!(
        store.read_versions("none", |view| view.latest()).unwrap(),
        None
    );
}

#[test]
fn retention_prunes_old_versions_and_unreferenced_bodies() {
    let (_dir, store) = fresh();
    let shared = b"shared with watch b".to_vec();
    store
        .apply_blocking(vec![changed("b", &shared, 10)])
        .unwrap();
    store
        .apply_blocking(vec![changed("a", &shared, 2)])
        .unwrap(); // a/1
    store
        .apply_blocking(vec![changed("a", b"a-two", 2)])
        .unwrap(); // a/2
    store
        .apply_blocking(vec![changed("a", b"a-three", 2)])
        .unwrap(); // a/3 prunes a/1
    assert_eq!(
        store
            .versions("a")
            .unwrap()
            .iter()
            .map(|v| v.number)
            .collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(store.body("a", 1).unwrap(), None);
    // a/1's body is still named by b/1, so it stays.
    assert_eq!(store.body("b", 1).unwrap().unwrap().1, shared);
    assert_eq!(store.stats().unwrap().bodies, 3);

    store
        .apply_blocking(vec![changed("a", b"a-four", 2)])
        .unwrap(); // prunes a/2
    assert_eq!(
        store.stats().unwrap().bodies,
        3,
        "a-two's body went with its last version"
    );
    let s = store.watch("a").unwrap().unwrap();
    assert_eq!((s.versions, s.latest_version), (2, Some(4)));
    store.check().unwrap();

    // Lowering keep_versions on a state-only outcome prunes too; at least
    // one version always stays, and numbers are never reused.
    let mut o = not_modified("a", 5);
    o.keep_versions = 0;
    store.apply_blocking(vec![o]).unwrap();
    assert_eq!(
        store
            .versions("a")
            .unwrap()
            .iter()
            .map(|v| v.number)
            .collect::<Vec<_>>(),
        vec![4]
    );
    let c = store
        .apply_blocking(vec![changed("a", b"a-five", 1)])
        .unwrap();
    assert_eq!(c[0].version, Some(5));
    assert_eq!(store.versions("a").unwrap().len(), 1);
    store.check().unwrap();
}

#[test]
fn change_log_retention_advances_oldest_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("polld.redb");
    let opts = StoreOptions {
        max_changes: 5,
        ..StoreOptions::default()
    };
    let store = opts.open(&path).unwrap();
    assert_eq!((store.oldest_seq(), store.last_seq()), (1, 0), "empty log");
    for i in 0..4u64 {
        store
            .apply_blocking(vec![changed("w", format!("body {i}").as_bytes(), 100)])
            .unwrap();
    }
    assert_eq!((store.oldest_seq(), store.last_seq()), (1, 4));
    // One batch of 4 more: 8 appended, 5 kept.
    store
        .apply_blocking(
            (4..8)
                .map(|i| changed("w", format!("body {i}").as_bytes(), 100))
                .collect(),
        )
        .unwrap();
    assert_eq!((store.oldest_seq(), store.last_seq()), (4, 8));
    let seqs: Vec<u64> = store
        .changes_after(0, 100)
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(seqs, vec![4, 5, 6, 7, 8]);
    assert_eq!(store.stats().unwrap().changes, 5);
    store.check().unwrap();
    // Versions are governed by keep_versions, not by the log.
    assert_eq!(store.versions("w").unwrap().len(), 8);
    store.close().unwrap();
    let store = opts.open(&path).unwrap();
    assert_eq!(
        (store.oldest_seq(), store.last_seq()),
        (4, 8),
        "bounds survive reopen"
    );
}

#[test]
fn removed_watch_keeps_its_history() {
    let (_dir, store) = fresh();
    store
        .apply_blocking(vec![changed("gone", b"v1", 10)])
        .unwrap();
    let mut o = not_modified("gone", 3);
    Arc::make_mut(&mut o.state).status = WatchStatus::Removed;
    Arc::make_mut(&mut o.state).next_due_ms = None;
    o.events = vec![ChangeKind::WatchRemoved];
    let c = store.apply_blocking(vec![o]).unwrap();
    assert_eq!(c[0].seqs, vec![2]);
    let s = store.watch("gone").unwrap().unwrap();
    assert_eq!(s.status, WatchStatus::Removed);
    assert_eq!(s.versions, 1);
    assert_eq!(store.body("gone", 1).unwrap().unwrap().1, b"v1");
    assert_eq!(
        store.changes_after(1, 10).unwrap()[0].kind,
        ChangeKind::WatchRemoved
    );
}

#[test]
fn batch_is_atomic_and_invalid_outcomes_are_refused() {
    let (_dir, store) = fresh();
    let mut bad_hash = changed("x", b"body", 10);
    bad_hash.new_version.as_mut().unwrap().hash = hash_body(b"another body");
    let mut bad_event = event("x", ChangeKind::Done);
    bad_event.events.push(ChangeKind::NewVersion);
    let empty_id = not_modified("", 1);
    for bad in [bad_hash, bad_event, empty_id] {
        let err = store
            .apply_blocking(vec![not_modified("ok", 1), bad])
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidOutcome { .. }), "{err:?}");
    }
    // Nothing of those batches was stored, and no failure is reported as
    // ill health: the store itself is fine.
    assert_eq!(store.watch("ok").unwrap(), None);
    assert_eq!(store.last_seq(), 0);
    assert!(store.health().is_ok());
    assert_eq!(store.apply_blocking(vec![]).unwrap(), vec![]);
}

#[test]
fn several_outcomes_for_one_watch_in_one_batch() {
    let (_dir, store) = fresh();
    let c = store
        .apply_blocking(vec![
            changed("w", b"1", 2),
            changed("w", b"2", 2),
            not_modified("w", 3),
            changed("w", b"3", 2),
        ])
        .unwrap();
    assert_eq!(
        c.iter().map(|c| c.version).collect::<Vec<_>>(),
        vec![Some(1), Some(2), None, Some(3)]
    );
    assert_eq!(
        store
            .versions("w")
            .unwrap()
            .iter()
            .map(|v| v.number)
            .collect::<Vec<_>>(),
        vec![2, 3]
    );
    store.check().unwrap();
}

/// States are written in key order (fewer page rewrites), but the change
/// log keeps the order the outcomes were handed over in, and each
/// watch's own outcomes apply in order.
#[test]
fn a_batch_logs_changes_in_arrival_order_whatever_the_key_order() {
    let (_dir, store) = fresh();
    let mut last = not_modified("b", 7);
    Arc::make_mut(&mut last.state).etag = Some("\"last\"".into());
    let c = store
        .apply_blocking(vec![
            changed("z", b"z1", 10),
            event("a", ChangeKind::WatchAdded),
            changed("m", b"m1", 10),
            changed("a", b"a1", 10),
            changed("b", b"b1", 10),
            last,
        ])
        .unwrap();
    let seqs: Vec<Vec<u64>> = c.iter().map(|c| c.seqs.clone()).collect();
    assert_eq!(
        seqs,
        vec![vec![1], vec![2], vec![3], vec![4], vec![5], vec![]]
    );
    let logged: Vec<(String, ChangeKind, Option<u64>)> = store
        .changes_after(0, 100)
        .unwrap()
        .into_iter()
        .map(|ch| (ch.watch, ch.kind, ch.version))
        .collect();
    let expected = [
        ("z", ChangeKind::NewVersion, Some(1)),
        ("a", ChangeKind::WatchAdded, None),
        ("m", ChangeKind::NewVersion, Some(1)),
        ("a", ChangeKind::NewVersion, Some(1)),
        ("b", ChangeKind::NewVersion, Some(1)),
    ];
    assert_eq!(
        logged,
        expected
            .iter()
            .map(|(w, k, v)| ((*w).to_owned(), *k, *v))
            .collect::<Vec<_>>()
    );
    // b's 304 came after its new version: its state is the one kept, with
    // the version the store counted.
    let b = store.watch("b").unwrap().unwrap();
    assert_eq!(b.etag.as_deref(), Some("\"last\""));
    assert_eq!((b.polls, b.latest_version, b.versions), (7, Some(1), 1));
    store.check().unwrap();
}

#[tokio::test]
async fn subscribers_see_only_committed_seqs() {
    let (_dir, store) = fresh();
    let mut rx = store.subscribe();
    assert_eq!(*rx.borrow_and_update(), 0);
    let waiter = tokio::spawn(async move {
        // Bounded: the sender lives as long as the store.
        rx.wait_for(|seq| *seq >= 2).await.map(|s| *s)
    });
    let s2 = store.clone();
    tokio::task::spawn_blocking(move || {
        s2.apply_blocking(vec![event("w", ChangeKind::WatchAdded)])
            .unwrap();
        // A refused batch moves nothing.
        let mut bad = event("w", ChangeKind::Done);
        bad.events.push(ChangeKind::NewVersion);
        s2.apply_blocking(vec![bad]).unwrap_err();
        s2.apply_blocking(vec![event("w", ChangeKind::ErrorStarted)])
            .unwrap();
    })
    .await
    .unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), 2);
    let mut rx = store.subscribe();
    assert_eq!(
        *rx.borrow_and_update(),
        2,
        "a new subscriber starts at the last committed seq"
    );
    // A state-only commit does not move the seq, so nobody is woken for it.
    store.apply_blocking(vec![not_modified("w", 1)]).unwrap();
    assert!(!rx.has_changed().unwrap());
}

#[test]
fn closed_store_refuses_operations_on_every_clone() {
    let (_dir, store) = fresh();
    let other = store.clone();
    store.close().unwrap();
    assert!(matches!(other.watch("a"), Err(StoreError::Closed)));
    assert!(matches!(
        other.apply_blocking(vec![not_modified("a", 1)]),
        Err(StoreError::Closed)
    ));
    assert!(other.health().is_ok(), "closing is not a failure");
    other.close().unwrap();
}

/// The seq channel outlives `close` (a clone holds it), so `closed()` is how
/// a waiter learns that nothing more will be committed: it resolves on every
/// clone, also for a waiter that started before the close, and at once after.
#[tokio::test]
async fn closed_resolves_on_every_clone_once_closed() {
    let (_dir, store) = fresh();
    let other = store.clone();
    assert!(!other.is_closed());
    let waiter = tokio::spawn({
        let other = other.clone();
        async move { other.closed().await }
    });
    // Let it register before the close.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!waiter.is_finished(), "resolved before the close");
    let commits = other.subscribe();
    tokio::task::spawn_blocking(move || store.close().unwrap())
        .await
        .unwrap();
    assert!(other.is_closed());
    tokio::time::timeout(std::time::Duration::from_secs(20), waiter)
        .await
        .expect("closed() still pending after close")
        .unwrap();
    other.closed().await;
    assert!(
        !commits.has_changed().unwrap(),
        "the seq channel neither moves nor closes"
    );
}

#[test]
fn second_open_in_the_same_process_is_locked() {
    let (dir, store) = fresh();
    let path = dir.path().join("polld.redb");
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(
        err.to_string().contains("already in use by another polld"),
        "{err}"
    );
    store.close().unwrap();
    Store::open(&path)
        .expect("free again after close")
        .close()
        .unwrap();
}

/// Watch states are appended to the state log and folded into `watches` a
/// few watches per commit. Whatever is folded and whatever is not, every
/// read sees each watch's newest state, paging merges both in id order, the
/// counts agree, and a store dropped without `close` (the log left on disk)
/// reopens to the same states.
#[test]
fn reads_see_the_newest_state_across_state_log_folds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("polld.redb");
    let opts = StoreOptions::default();
    let store = opts.open(&path).unwrap();
    let ids = ["a", "b", "c", "d", "e", "f", "g"];
    // The model: each watch's newest poll count.
    let mut want: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    let mut appended = 0;
    let mut last_log = 0;
    // Batches of varying shape: new watches, repeats of one watch in a
    // batch, watches folded long ago and polled again.
    let batches: [&[(&str, u64)]; 7] = [
        &[("c", 1), ("a", 1)],
        &[("a", 2), ("a", 3), ("e", 1)],
        &[("g", 1)],
        &[("b", 1), ("c", 2), ("d", 1), ("f", 1)],
        &[("a", 4)],
        &[("e", 2), ("g", 2), ("b", 2)],
        &[("f", 2)],
    ];
    // Three rounds: a cycle of the fold lasts `FOLD_EVERY` states a watch.
    let rounds = (0..3u64).flat_map(|round| batches.iter().map(move |b| (round, *b)));
    for (round, batch) in rounds {
        let batch: Vec<(&str, u64)> = batch.iter().map(|(id, n)| (*id, n + 10 * round)).collect();
        store
            .apply_blocking(batch.iter().map(|(id, n)| not_modified(id, *n)).collect())
            .unwrap();
        for (id, n) in &batch {
            want.insert(id, *n);
        }
        appended += batch.len() as u64;
        let stats = store.stats().unwrap();
        last_log = stats.state_log;
        assert_eq!(stats.watches, want.len() as u64);
        store.check().unwrap();
        for (id, n) in &want {
            assert_eq!(store.watch(id).unwrap().unwrap().polls, *n, "watch {id}");
        }
        assert_eq!(store.watch("zz").unwrap(), None);
        // Every page size walks all watches in id order, newest states.
        for limit in 1..=want.len() + 1 {
            let mut seen = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = store.watches(after.as_deref(), limit).unwrap();
                assert!(page.len() <= limit);
                let Some(last) = page.last() else { break };
                after = Some(last.id.clone());
                seen.extend(page.into_iter().map(|s| (s.id, s.polls)));
            }
            let expect: Vec<(String, u64)> =
                want.iter().map(|(id, n)| ((*id).to_owned(), *n)).collect();
            assert_eq!(seen, expect, "pages of {limit}");
        }
    }
    assert!(
        last_log < appended - 4,
        "folded states leave the log ({last_log} of {appended} remain)"
    );
    assert!(last_log > 0, "the last batches stay in the log");
    assert_eq!(want.len(), ids.len());

    // Dropped without close: the log stays on disk and the open folds it.
    let before = store.all_watches().unwrap();
    drop(store);
    let store = opts.open(&path).unwrap();
    assert_eq!(store.stats().unwrap().state_log, 0);
    assert_eq!(store.all_watches().unwrap(), before);
    store.check().unwrap();
    store.apply_blocking(vec![not_modified("a", 9)]).unwrap();
    assert_eq!(store.stats().unwrap().state_log, 1);
    // A clean close folds too.
    store.close().unwrap();
    let store = opts.open(&path).unwrap();
    assert_eq!(store.watch("a").unwrap().unwrap().polls, 9);
    assert_eq!(store.stats().unwrap().state_log, 0);
}

/// A version's counters, kept by the store, follow the watch's newest
/// state whether it sits in the log or in `watches`.
#[test]
fn version_counters_follow_the_newest_state_through_folds() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("polld.redb")).unwrap();
    for i in 0..6u64 {
        let body = format!("body {i}");
        store
            .apply_blocking(vec![changed("w", body.as_bytes(), 3), not_modified("x", i)])
            .unwrap();
        let w = store.watch("w").unwrap().unwrap();
        assert_eq!(w.latest_version, Some(i + 1));
        assert_eq!(w.versions, (i + 1).min(3));
        assert_eq!(w.latest_hash, Some(hash_body(body.as_bytes())));
        store.check().unwrap();
    }
}

/// The log packs states into chunks of a few KiB: a batch that fills
/// several, with each watch in many of them, still reads back each watch's
/// newest state, before and after the open folds the log.
#[test]
fn a_batch_larger_than_a_log_chunk_keeps_each_watch_newest_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("polld.redb");
    let store = Store::open(&path).unwrap();
    let ids: Vec<String> = (0..7).map(|i| format!("w{i}")).collect();
    // ~120 bytes a state: 700 states span about ten chunks.
    let batch: Vec<Outcome> = (0..700u64)
        .map(|n| not_modified(&ids[(n % 7) as usize], n))
        .collect();
    store.apply_blocking(batch).unwrap();
    store
        .apply_blocking(vec![not_modified("w3", 5000)])
        .unwrap();
    let newest = |id: &str| store.watch(id).unwrap().unwrap().polls;
    for (i, id) in ids.iter().enumerate() {
        let want = if i == 3 { 5000 } else { 693 + i as u64 };
        assert_eq!(newest(id), want, "{id}");
    }
    store.check().unwrap();
    assert_eq!(store.stats().unwrap().state_log, 701);
    let all = store.all_watches().unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.all_watches().unwrap(), all);
    assert_eq!(store.stats().unwrap().state_log, 0);
    store.check().unwrap();
}

/// The rolling fold over many commits of watches polled at random: after
/// every commit the tables and the index agree (`check`), every watch reads
/// its newest state and version counters (carried from state to state by
/// each commit, also for watches folded out of the log), and the log stays
/// within about two states a watch.
#[test]
fn the_rolling_fold_keeps_every_newest_state_and_bounds_the_log() {
    let (_dir, store) = fresh();
    let ids: Vec<String> = (0..300).map(|i| format!("w{i:03}")).collect();
    let mut want: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    // Versions made per watch, and the body of the newest.
    let mut made: std::collections::HashMap<&str, (u64, Vec<u8>)> =
        std::collections::HashMap::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut polls = 0;
    let mut largest_log = 0;
    for commit in 0..200 {
        // Batches of 1 to 64 outcomes; some watches twice in one batch.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 1 + (x % 64) as usize;
        let mut batch = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = &ids[(x % ids.len() as u64) as usize];
            polls += 1;
            // One poll in eight brings a new body: decided by other bits
            // than the id's, so that any watch may get versions.
            if (x >> 40).is_multiple_of(8) {
                let body = format!("body {polls}").into_bytes();
                let mut outcome = changed(id, &body, 3);
                Arc::make_mut(&mut outcome.state).polls = polls;
                batch.push(outcome);
                let e = made.entry(id).or_default();
                *e = (e.0 + 1, body);
            } else {
                batch.push(not_modified(id, polls));
            }
            want.insert(id, polls);
        }
        store.apply_blocking(batch).unwrap();
        store
            .check()
            .unwrap_or_else(|e| panic!("commit {commit}: {e}"));
        let stats = store.stats().unwrap();
        assert_eq!(stats.watches, want.len() as u64, "commit {commit}");
        largest_log = largest_log.max(stats.state_log);
    }
    for (id, n) in &want {
        let state = store.watch(id).unwrap().unwrap();
        assert_eq!(state.polls, *n, "watch {id}");
        let (count, body) = made.get(id).cloned().unwrap_or_default();
        assert_eq!(state.latest_version, (count > 0).then_some(count), "{id}");
        assert_eq!(state.versions, count.min(3), "{id}");
        assert_eq!(
            state.latest_hash,
            (count > 0).then(|| hash_body(&body)),
            "{id}"
        );
    }
    assert!(made.len() > 20, "versions of {} watches", made.len());
    let listed = store.all_watches().unwrap();
    assert_eq!(listed.len(), want.len());
    assert!(listed.iter().all(|s| want[s.id.as_str()] == s.polls));
    // Two cycles of the walk, each `FOLD_EVERY` states per watch in the
    // index, plus a batch.
    assert!(
        largest_log <= (2 * polld_store::FOLD_EVERY * want.len()) as u64 + 64,
        "the log grew to {largest_log} states for {} watches",
        want.len()
    );
    assert!(polls > largest_log, "states were folded out of the log");
}

/// Commits from several threads at once (`apply_blocking` is public and
/// `close` may race the writer): each must see the index as the commit
/// before it left it, or chunk keys are reused and states lost.
#[test]
fn concurrent_commits_keep_every_state() {
    let (_dir, store) = fresh();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for round in 1..=60u64 {
                    let batch = (0..5)
                        .map(|w| not_modified(&format!("t{t}-w{w}"), round))
                        .collect();
                    store.apply_blocking(batch).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    store.check().unwrap();
    let all = store.all_watches().unwrap();
    assert_eq!(all.len(), 20);
    assert!(
        all.iter().all(|s| s.polls == 60),
        "every watch at its last round"
    );
}

/// Many watches stored, few polled: the walk then keeps up with the appends
/// easily, and without a floor on a cycle's length every commit would end
/// one and fold the last commit's watches, one random row each, as before
/// the log. With the floor the log keeps about half a state per stored
/// watch.
#[test]
fn the_rolling_fold_keeps_a_cycle_of_states_in_the_log() {
    let (_dir, store) = fresh();
    let watches = 400;
    let first: Vec<_> = (0..watches)
        .map(|w| not_modified(&format!("w{w:03}"), 0))
        .collect();
    store.apply_blocking(first).unwrap();
    let mut smallest = u64::MAX;
    for round in 1..=200u64 {
        let batch = (0..8)
            .map(|i| not_modified(&format!("w{:03}", (round * 8 + i) % 10), round))
            .collect();
        store.apply_blocking(batch).unwrap();
        if round > 100 {
            smallest = smallest.min(store.stats().unwrap().state_log);
        }
    }
    store.check().unwrap();
    assert!(
        smallest >= watches as u64 / 4,
        "the log fell to {smallest} states for {watches} watches"
    );
}

/// `check` while commits land: it pairs the index with the snapshot of the
/// same commit, so a store in use never looks inconsistent.
#[test]
fn check_holds_while_commits_land() {
    let (_dir, store) = fresh();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for round in 1..=150u64 {
                let batch = (0..6)
                    .map(|w| not_modified(&format!("w{}", (round + w) % 40), round))
                    .collect();
                store.apply_blocking(batch).unwrap();
            }
        })
    };
    let mut checks = 0;
    while !writer.is_finished() {
        store
            .check()
            .unwrap_or_else(|e| panic!("check {checks}: {e}"));
        checks += 1;
    }
    writer.join().unwrap();
    store.check().unwrap();
    assert!(checks > 0);
}
