//! Fixtures: a store in a tempdir, filled through its write API; a fake
//! engine and metrics source; helpers to send requests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use polld_api::{Api, ApiOptions, ApiState, BoxFuture, Engine, MetricsSource};
use polld_store::{
    ChangeKind, NewVersion, Outcome, Store, StoreOptions, WatchState, WatchStatus, hash_body,
};
use tower::ServiceExt;

pub(crate) struct FakeEngine {
    pub(crate) running: AtomicBool,
    /// Ids the engine polls.
    pub(crate) active: Vec<String>,
    pub(crate) polled: Mutex<Vec<String>>,
}

impl Engine for FakeEngine {
    fn poll_now(&self, id: &str) -> BoxFuture<bool> {
        let known = self.active.iter().any(|a| a == id);
        if known {
            self.polled.lock().unwrap().push(id.to_owned());
        }
        Box::pin(async move { known })
    }

    fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }
}

pub(crate) struct FakeMetrics(pub(crate) String);

impl MetricsSource for FakeMetrics {
    fn render(&self) -> String {
        self.0.clone()
    }
}

pub(crate) struct Fx {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) store: Store,
    pub(crate) state: ApiState,
    pub(crate) engine: Arc<FakeEngine>,
}

pub(crate) fn fixture() -> Fx {
    fixture_with(ApiOptions::new(), 10_000)
}

pub(crate) fn fixture_with(options: ApiOptions, max_changes: u64) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        max_changes,
        ..StoreOptions::default()
    };
    let store = opts.open(&dir.path().join("polld.redb")).unwrap();
    let engine = Arc::new(FakeEngine {
        running: AtomicBool::new(true),
        active: vec!["alpha".into(), "beta".into()],
        polled: Mutex::new(Vec::new()),
    });
    let metrics = Arc::new(FakeMetrics(
        "# HELP polld_watches Watches.\n# TYPE polld_watches gauge\npolld_watches 2\n# EOF\n"
            .into(),
    ));
    let state = ApiState::new(store.clone(), engine.clone(), metrics, options);
    Fx {
        _dir: dir,
        store,
        state,
        engine,
    }
}

impl Fx {
    pub(crate) fn router(&self) -> Api {
        polld_api::router(self.state.clone())
    }

    /// Commits one outcome for `id`: a new state, optionally a new body.
    pub(crate) fn commit(
        &self,
        id: &str,
        body: Option<(&[u8], &str)>,
        events: Vec<ChangeKind>,
    ) -> Vec<u64> {
        self.commit_state(state(id), body, events)
    }

    pub(crate) fn commit_state(
        &self,
        state: WatchState,
        body: Option<(&[u8], &str)>,
        events: Vec<ChangeKind>,
    ) -> Vec<u64> {
        let new_version = body.map(|(body, ct)| NewVersion {
            body: body.to_vec(),
            hash: hash_body(body),
            content_type: Some(ct.to_owned()),
            headers: vec![("etag".into(), "\"up\"".into())],
            fetched_at_ms: 1_700_000_000_000,
        });
        let out = self
            .store
            .apply_blocking(vec![Outcome {
                state: state.into(),
                new_version,
                events,
                keep_versions: 100,
            }])
            .unwrap();
        out.into_iter().flat_map(|c| c.seqs).collect()
    }
}

pub(crate) fn state(id: &str) -> WatchState {
    WatchState {
        id: id.to_owned(),
        url: format!("https://example.org/{id}"),
        interval_ms: 300_000,
        next_due_ms: Some(1_700_000_300_000),
        last_checked_ms: Some(1_700_000_000_000),
        last_status: Some(200),
        status: WatchStatus::Ok,
        polls: 5,
        not_modified: 3,
        unchanged: 1,
        changed: 1,
        ..WatchState::default()
    }
}

pub(crate) struct Res {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl Res {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Asserts an error status with a `{"error": "..."}` JSON body, returns
    /// the message.
    pub(crate) fn error(&self, status: StatusCode) -> String {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert!(
            self.header("content-type")
                .is_some_and(|ct| ct.starts_with("application/json")),
            "error without a JSON content type: {:?}",
            self.headers
        );
        let json = self.json();
        json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error string in {json}"))
            .to_owned()
    }
}

pub(crate) async fn send(router: &Api, req: Request<Body>) -> Res {
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    Res {
        status,
        headers,
        body,
    }
}

pub(crate) async fn get(router: &Api, uri: &str) -> Res {
    send(router, Request::get(uri).body(Body::empty()).unwrap()).await
}
