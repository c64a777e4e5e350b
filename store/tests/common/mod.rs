//! Helpers shared by the store's integration tests: outcomes built the way
//! the engine builds them.
#![allow(dead_code)]

use polld_store::{ChangeKind, NewVersion, Outcome, WatchState, hash_body};

pub fn state(id: &str) -> WatchState {
    WatchState {
        id: id.to_owned(),
        url: format!("https://example.org/{id}"),
        fingerprint: 42,
        interval_ms: 300_000,
        ..WatchState::default()
    }
}

/// A 304: state only.
pub fn not_modified(id: &str, polls: u64) -> Outcome {
    let mut s = state(id);
    s.polls = polls;
    s.not_modified = polls;
    s.etag = Some("\"v1\"".into());
    s.last_status = Some(304);
    Outcome {
        state: s.into(),
        new_version: None,
        events: Vec::new(),
        keep_versions: 100,
    }
}

pub fn new_version(body: &[u8], at: u64) -> NewVersion {
    NewVersion {
        body: body.to_vec(),
        hash: hash_body(body),
        content_type: Some("text/plain".into()),
        headers: vec![("etag".into(), "\"x\"".into())],
        fetched_at_ms: at,
    }
}

/// A 200 with a new body.
pub fn changed(id: &str, body: &[u8], keep: u32) -> Outcome {
    let mut s = state(id);
    s.changed = 1;
    s.last_status = Some(200);
    Outcome {
        state: s.into(),
        new_version: Some(new_version(body, 1_000)),
        events: Vec::new(),
        keep_versions: keep,
    }
}

pub fn event(id: &str, kind: ChangeKind) -> Outcome {
    Outcome {
        state: state(id).into(),
        new_version: None,
        events: vec![kind],
        keep_versions: 100,
    }
}
