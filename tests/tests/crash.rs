//! The short form of the crash and bad-file faults: `polld run` killed with
//! SIGKILL at random moments keeps every change `/v1/changes` reported, with
//! the same seq, watch and version; a corrupted database stops polld with
//! exit 65 and is left untouched; a second polld on the same state directory
//! fails at once (exit 75) while the first keeps running.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use polld_tests::{Polld, eventually, feed};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers::path};

/// A new body on every request.
struct Changing(AtomicUsize);

impl Respond for Changing {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        ResponseTemplate::new(200)
            .set_body_string(format!("v{}", self.0.fetch_add(1, Ordering::SeqCst)))
    }
}

fn watches(server: &MockServer) -> String {
    (0..3)
        .map(|i| {
            format!(
                "[[watch]]\nid = \"w{i}\"\nurl = \"{}/c{i}\"\ninterval = \"100ms\"\nmin_interval = \"100ms\"\nmax_interval = \"100ms\"\nbackoff = 1.0\njitter = 0.0\n\n",
                server.uri()
            )
        })
        .collect()
}

async fn wait_ready(client: &reqwest::Client, api: &str) -> Duration {
    let started = Instant::now();
    eventually(
        Duration::from_secs(10),
        "/readyz after a restart",
        || async {
            let ok = client
                .get(format!("{api}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            ok.then_some(())
        },
    )
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_loses_no_acknowledged_change() {
    let server = MockServer::start().await;
    for i in 0..3 {
        Mock::given(path(format!("/c{i}")))
            .respond_with(Changing(AtomicUsize::new(0)))
            .mount(&server)
            .await;
    }
    let mut polld = Polld::start(&watches(&server));
    let client = reqwest::Client::new();
    let mut kept: BTreeMap<u64, (String, Option<u64>)> = BTreeMap::new();
    let mut slowest_restart = Duration::ZERO;
    // A fixed seed keeps failures reproducible; the moments still vary per kill.
    let mut moment = 0x2545_f491_4f6c_dd1du64;
    for round in 0..20 {
        slowest_restart = slowest_restart.max(wait_ready(&client, &polld.api).await);
        let now = feed(&client, &polld.api).await.expect("the feed answers");
        for (seq, change) in &kept {
            assert_eq!(
                now.get(seq),
                Some(change),
                "round {round}: acknowledged change {seq} lost or altered"
            );
        }
        let seqs: Vec<u64> = now.keys().copied().collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        if let (Some(old_max), Some(new_min_after)) = (
            kept.keys().max(),
            now.keys().find(|s| !kept.contains_key(s)),
        ) {
            assert!(
                new_min_after > old_max,
                "seq keeps increasing across restarts"
            );
        }
        kept = now;
        moment ^= moment << 13;
        moment ^= moment >> 7;
        moment ^= moment << 17;
        tokio::time::sleep(Duration::from_millis(50 + moment % 400)).await;
        polld.signal(Signal::SIGKILL);
        polld.wait_exit(Duration::from_secs(5)).expect("killed");
        polld.spawn();
    }
    slowest_restart = slowest_restart.max(wait_ready(&client, &polld.api).await);
    let last = feed(&client, &polld.api).await.unwrap();
    for (seq, change) in &kept {
        assert_eq!(
            last.get(seq),
            Some(change),
            "acknowledged change {seq} lost after the last kill"
        );
    }
    let versions = last.values().filter(|(_, v)| v.is_some()).count();
    assert!(
        versions >= 20,
        "the watches kept changing through the kills: {versions} versions"
    );
    assert!(
        slowest_restart < Duration::from_secs(5),
        "ready again within a few seconds: {slowest_restart:?}"
    );
    assert!(polld.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_database_exits_65_and_is_left_untouched() {
    let server = MockServer::start().await;
    Mock::given(path("/c0"))
        .respond_with(Changing(AtomicUsize::new(0)))
        .mount(&server)
        .await;
    let mut polld = Polld::start(watches(&server).split("\n\n").next().unwrap());
    let client = reqwest::Client::new();
    wait_ready(&client, &polld.api).await;
    assert!(polld.stop().success());
    let db = polld.db_path();
    let mut bytes = std::fs::read(&db).unwrap();
    // Scribble over the middle of the file.
    let (mid, len) = (bytes.len() / 2, bytes.len());
    for b in &mut bytes[mid..(mid + 4096).min(len)] {
        *b ^= 0x5a;
    }
    bytes.truncate(bytes.len() - 100);
    std::fs::write(&db, &bytes).unwrap();
    polld.spawn();
    let status = polld
        .wait_exit(Duration::from_secs(10))
        .expect("polld stops on a corrupted store");
    assert_eq!(status.code(), Some(65), "log:\n{}", polld.log());
    assert_eq!(
        std::fs::read(&db).unwrap(),
        bytes,
        "the damaged file is left as it was"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_polld_on_the_same_state_fails_at_once_and_the_first_keeps_running() {
    let server = MockServer::start().await;
    Mock::given(path("/c0"))
        .respond_with(Changing(AtomicUsize::new(0)))
        .mount(&server)
        .await;
    let first = Polld::start(watches(&server).split("\n\n").next().unwrap());
    let client = reqwest::Client::new();
    wait_ready(&client, &first.api).await;
    // Same state dir, another port.
    let config = std::fs::read_to_string(first.config_path()).unwrap();
    let port = polld_tests::free_port();
    let other_config = first.dir.path().join("second.toml");
    let api_port = first.api.rsplit(':').next().unwrap().to_owned();
    std::fs::write(
        &other_config,
        config.replace(
            &format!("127.0.0.1:{api_port}"),
            &format!("127.0.0.1:{port}"),
        ),
    )
    .unwrap();
    let started = Instant::now();
    let output = std::process::Command::new(polld_tests::polld_bin())
        .args(["run", "--config"])
        .arg(&other_config)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(5), "fails at once");
    assert!(String::from_utf8_lossy(&output.stderr).contains("already in use"));
    let ok = client
        .get(format!("{}/readyz", first.api))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "the first polld keeps running");
}

/// A database that cannot be opened for an OS reason (here the file is a
/// directory) exits 74 at once, and the message names the file and the
/// OS error behind it, not only "cannot open the database".
#[test]
fn a_store_that_cannot_be_opened_exits_74_naming_why() {
    let polld = Polld::prepare_with("", "");
    std::fs::create_dir_all(polld.db_path()).unwrap();
    let started = Instant::now();
    let output = std::process::Command::new(polld_tests::polld_bin())
        .args(["run", "--config"])
        .arg(polld.config_path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(74), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5), "fails at once");
    let path = polld.db_path().display().to_string();
    let line = stderr
        .lines()
        .find(|l| l.contains("polld stopped"))
        .unwrap_or_else(|| panic!("no stop line: {stderr}"));
    assert_eq!(line.matches(&path).count(), 1, "the file once: {line}");
    assert!(
        line.contains("Is a directory") || line.contains("os error"),
        "the OS cause: {line}"
    );
}
