//! End-to-end tests of the API clients `polld status`, `polld diff` and
//! `polld changes` as an operator runs them: a real `polld` binary against a
//! real `polld run` (or none), output to a pipe.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use polld_tests::{Polld, eventually, free_port, polld_bin};
use wiremock::{Mock, MockServer, ResponseTemplate, matchers::path};

/// A child process killed when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `polld ARGS` started, its output piped, `POLLD_CONFIG` ignored.
fn spawn_polld(args: &[&str]) -> Reaped {
    Reaped(
        Command::new(polld_bin())
            .args(args)
            .env_remove("POLLD_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn polld"),
    )
}

/// Runs `polld ARGS` to its end (at most 20 s).
fn polld(args: &[&str]) -> Output {
    let mut child = spawn_polld(args);
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.0.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "polld {args:?} ran for 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let Reaped(child) = &mut child;
    let mut out = Output {
        status: child.wait().expect("wait"),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    std::io::Read::read_to_end(&mut child.stdout.take().expect("stdout"), &mut out.stdout)
        .expect("read stdout");
    std::io::Read::read_to_end(&mut child.stderr.take().expect("stderr"), &mut out.stderr)
        .expect("read stderr");
    out
}

/// `polld changes --follow --api API --config CONFIG`: the test's own watch
/// list, so that no installed /etc/polld/watchlist.toml is read.
fn follower(api: &str, config: &Path) -> Reaped {
    let config = config.display().to_string();
    spawn_polld(&["changes", "--follow", "--api", api, "--config", &config])
}

/// The first line a follower says on stderr, checking that it then keeps
/// waiting rather than giving up; and what it says after that, read on
/// another thread for as long as it runs. Its stderr must stay open: it
/// says every retry there, and a closed pipe ends it (`eprintln!` panics on
/// EPIPE, exit 101) at its next retry, as when the token file appears a
/// moment before the daemon binds its API.
fn first_said_while_waiting(child: &mut Reaped) -> (String, Arc<Mutex<String>>) {
    let mut stderr = BufReader::new(child.0.stderr.take().expect("stderr"));
    let mut said = String::new();
    stderr.read_line(&mut said).expect("read stderr");
    assert!(
        child.0.try_wait().expect("try_wait").is_none(),
        "it gave up: {said:?}"
    );
    let later = Arc::new(Mutex::new(String::new()));
    std::thread::spawn({
        let later = later.clone();
        move || {
            for line in stderr.lines().map_while(Result::ok) {
                let mut later = later.lock().unwrap();
                later.push_str(&line);
                later.push('\n');
            }
        }
    });
    (said, later)
}

/// The first line a follower prints once the daemon has started. Read on
/// another thread, so that a follower that never prints fails the test
/// instead of hanging it; retries come 2, 6, 14, 30 and 62 s after the
/// first failure: room for a slow start on a loaded machine. `said` is
/// what it said on stderr meanwhile, for the failure message.
fn first_change_printed(child: &mut Reaped, said: &Mutex<String>) -> String {
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        let _ = BufReader::new(stdout).read_line(&mut first);
        let _ = tx.send(first);
    });
    let first = rx
        .recv_timeout(Duration::from_secs(70))
        .unwrap_or_else(|_| panic!("no change printed 70 s after the daemon started"));
    assert!(
        !first.is_empty(),
        "the follower ended without printing a change ({:?}); its stderr:\n{}",
        child.0.try_wait(),
        said.lock().unwrap()
    );
    first
}

/// A server that always answers the same body, and the watch list of one
/// hourly watch `w` on it.
async fn same_body_server() -> (MockServer, String) {
    let server = MockServer::start().await;
    Mock::given(path("/same"))
        .respond_with(ResponseTemplate::new(200).set_body_string("same\n"))
        .mount(&server)
        .await;
    let watches = format!(
        "[[watch]]\nid = \"w\"\nurl = \"{}/same\"\ninterval = \"1h\"\n",
        server.uri()
    );
    (server, watches)
}

/// A polld with one watch on a server that always answers the same body, so
/// that the change log holds two changes and then stays quiet.
async fn quiet_polld() -> (Polld, MockServer) {
    let (server, watches) = same_body_server().await;
    let polld = Polld::start(&watches);
    let client = reqwest::Client::new();
    // The first poll may be spread over the hour: ask for it now.
    eventually(Duration::from_secs(10), "a poll", || async {
        let res = client
            .post(format!("{}/v1/watches/w/poll", polld.api))
            .send()
            .await
            .ok()?;
        (res.status() == 202).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "the first version", || async {
        let res = client
            .get(format!("{}/v1/watches/w", polld.api))
            .send()
            .await
            .ok()?;
        let watch: serde_json::Value = serde_json::from_slice(&res.bytes().await.ok()?).ok()?;
        (watch["versions"].as_u64() == Some(1)).then_some(())
    })
    .await;
    (polld, server)
}

/// `polld changes --follow | head -1`: once the reader has gone, the
/// follower ends at once, quietly, instead of waiting for the next change
/// (which may never come) to find out.
#[tokio::test(flavor = "multi_thread")]
async fn changes_follow_ends_when_its_reader_goes() {
    let (polld, _server) = quiet_polld().await;
    let mut child = follower(&polld.api, &polld.config_path());
    let mut first = String::new();
    BufReader::new(child.0.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read a line");
    assert!(first.contains("watch_added"), "{first:?}");
    // The reader is dropped here: `head -1` has exited.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "polld changes --follow still runs 10 s after its reader went"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// No daemon: the error names the API as the operator gave it (the socket
/// path, not an internal http://localhost/), says what to check, exits 1.
#[test]
fn an_unreachable_api_is_named_with_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let tcp = format!("http://127.0.0.1:{}", free_port());
    let sock = format!("unix:{}", dir.path().join("api.sock").display());
    for (api, command) in [
        (&tcp, &["status"][..]),
        (&sock, &["status"]),
        (&sock, &["diff", "w"]),
        (&sock, &["changes"]),
    ] {
        let mut args = command.to_vec();
        args.extend(["--api", api]);
        let out = polld(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(
            stderr.starts_with(&format!("polld: cannot reach the polld API at {api}")),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("is polld running"), "{args:?}: {stderr}");
        assert!(!stderr.contains("localhost"), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
}

/// `polld changes --follow` started before the daemon (a unit ordered
/// before it, a script racing its start): it says it will retry and then
/// prints the changes once the daemon is up, instead of failing at once.
#[tokio::test(flavor = "multi_thread")]
async fn changes_follow_waits_for_a_daemon_that_is_not_up_yet() {
    let (_server, watches) = same_body_server().await;
    let mut polld = Polld::prepare_with("", &watches);
    let mut child = follower(&polld.api, &polld.config_path());
    let (said, later) = first_said_while_waiting(&mut child);
    assert!(
        said.starts_with(&format!(
            "polld: cannot reach the polld API at {}",
            polld.api
        )) && said.contains("retrying in"),
        "{said:?}"
    );

    polld.spawn();
    let first = first_change_printed(&mut child, &later);
    assert!(first.contains("watch_added"), "{first:?}");
}

/// A follower started before polld ever ran, on a list with a token file:
/// the file does not exist yet. It waits for it, as for the daemon, and
/// follows once polld has written it.
#[tokio::test(flavor = "multi_thread")]
async fn changes_follow_waits_for_the_token_file_of_a_first_start() {
    let (_server, watches) = same_body_server().await;
    let mut polld = Polld::prepare_with("api_token_file = \"{dir}/token\"", &watches);
    let mut child = follower(&polld.api, &polld.config_path());
    let (said, later) = first_said_while_waiting(&mut child);
    assert!(
        said.contains("token file") && said.contains("does not exist yet"),
        "{said:?}"
    );

    polld.spawn();
    let first = first_change_printed(&mut child, &later);
    assert!(first.contains("watch_added"), "{first:?}");
}

/// An answer that waiting cannot change (401 for a wrong token) ends a
/// follower at once with the API's message, instead of retrying it for
/// minutes.
#[tokio::test(flavor = "multi_thread")]
async fn changes_follow_does_not_retry_a_wrong_token() {
    let daemon = Polld::start_with("api_token_file = \"{dir}/token\"", "");
    // The daemon writes the token file before it binds the API: wait for
    // the listener, or the follower's first try is refused and retried.
    let listen = daemon.api.trim_start_matches("http://").to_owned();
    eventually(Duration::from_secs(10), "the API's listener", || {
        let listen = listen.clone();
        async move { tokio::net::TcpStream::connect(listen).await.ok() }
    })
    .await;
    let wrong = daemon.dir.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    // The helper fails the test if it runs for 20 s: the old follower
    // retried a 401 for about 3 minutes.
    let out = polld(&[
        "changes",
        "--follow",
        "--api",
        &daemon.api,
        "--config",
        &daemon.config_path().display().to_string(),
        "--token-file",
        &wrong.display().to_string(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    assert!(!stderr.contains("retrying"), "{stderr}");
}

/// The clients read `listen` and `api_token_file` from the watch list but
/// nothing else of it: a watch's `${VAR}` that only the daemon's unit sets
/// (a secret in its EnvironmentFile) does not make `polld status` in the
/// operator's shell fail as an invalid watch list.
#[tokio::test(flavor = "multi_thread")]
async fn status_reads_only_the_daemon_table_of_the_watch_list() {
    use wiremock::matchers::header;
    let api = MockServer::start().await;
    Mock::given(path("/v1/watches"))
        .and(header("authorization", "Bearer t0ken"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "watches": [{"id": "gh", "state": "ok", "last_status": 200}],
            "next": null,
        })))
        .mount(&api)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let config = dir.path().join("watchlist.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nlisten = \"{}\"\napi_token_file = \"{}\"\n[[watch]]\nid = \"gh\"\nurl = \"https://api.github.com/events\"\nheaders = {{ Authorization = \"Bearer ${{POLLD_TEST_UNSET_GH_TOKEN}}\" }}\n",
            api.address(),
            token.display()
        ),
    )
    .unwrap();
    let out = polld(&["status", "--config", &config.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.lines().nth(1).is_some_and(|l| l.starts_with("gh ")),
        "{stdout}"
    );
}

/// With `--api` and no `--token-file`, the watch list is read for its
/// token only: a broken one is named (the 401 that follows is no mystery),
/// an absent one is not an error.
#[tokio::test(flavor = "multi_thread")]
async fn api_with_a_broken_watch_list_says_why_no_token_was_sent() {
    let api = MockServer::start().await;
    Mock::given(path("/v1/watches"))
        .respond_with(ResponseTemplate::new(401).set_body_json(serde_json::json!({
            "error": "missing or wrong bearer token",
        })))
        .mount(&api)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("watchlist.toml");
    std::fs::write(
        &config,
        "[daemon]
concurrency = \"many\"\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let out = polld(&["status", "--api", &api.uri(), "--config", &config]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{config}:2:")), "{stderr}");
    assert!(stderr.contains("no API token is read from it"), "{stderr}");
    assert!(stderr.contains("pass --token-file"), "{stderr}");

    let absent = dir.path().join("absent.toml").display().to_string();
    let out = polld(&["status", "--api", &api.uri(), "--config", &absent]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(&absent), "{stderr}");
}

/// An empty token file is said to be empty, not sent as an empty token.
#[test]
fn an_empty_token_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "\n").unwrap();
    let token = token.display().to_string();
    let out = polld(&[
        "status",
        "--api",
        "http://127.0.0.1:9",
        "--token-file",
        &token,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{token} is empty")), "{stderr}");
}

/// A mistyped `--api` is a bad argument (78), named with what to write.
#[test]
fn a_mistyped_api_url_is_a_bad_argument() {
    for (api, said) in [
        ("localhost:8377", "did you mean http://localhost:8377?"),
        ("ftp://127.0.0.1:8377", "unsupported scheme \"ftp\""),
        ("http://[bad", "is not a URL"),
    ] {
        let out = polld(&["status", "--api", api, "--token-file", "/dev/null"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{api}: {stderr}");
        assert!(stderr.contains(said), "{api}: {stderr}");
    }
    // No --api and no watch list to read `listen` from: say how to go on.
    let out = polld(&["status", "--config", "/nonexistent/watchlist.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("pass --api URL"), "{stderr}");
}
