//! `polld-tests` holds the end-to-end tests of polld (in `tests/`): a real
//! `polld` binary run against wiremock and other servers on loopback. This
//! library holds what those tests share: finding the binary, writing a
//! watch list, starting, signalling and stopping the daemon.
//!
//! The binary is `target/<profile>/polld`, which `cargo test --workspace`
//! builds; set `POLLD_BIN` to test another one.

pub mod hostile;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The polld binary under test.
pub fn polld_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("POLLD_BIN") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>/polld
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let bin = profile_dir.join("polld");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build -p polld` (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running `polld run` with its own state directory and watch list.
#[derive(Debug)]
pub struct Polld {
    child: Option<Child>,
    /// The temporary directory holding the watch list and the state.
    pub dir: tempfile::TempDir,
    /// The API's base URL.
    pub api: String,
    /// Everything the daemon wrote to stderr so far.
    pub log: Arc<Mutex<String>>,
    /// Disconnected once the thread copying the process's stderr into `log`
    /// has read it to its end.
    log_read: Option<std::sync::mpsc::Receiver<()>>,
}

impl Polld {
    /// Writes `watches` (TOML: [defaults] and [[watch]] tables) below a
    /// generated [daemon] table and starts `polld run` on it.
    pub fn start(watches: &str) -> Polld {
        Polld::start_with("", watches)
    }

    /// Like [`Polld::start`], with extra `[daemon]` keys (TOML lines); a
    /// `{dir}` in them stands for the test's temporary directory.
    pub fn start_with(daemon_keys: &str, watches: &str) -> Polld {
        let mut polld = Polld::prepare_with(daemon_keys, watches);
        polld.spawn();
        polld
    }

    /// Writes the watch list of [`Polld::start_with`] without starting the
    /// process (then [`Polld::spawn`] or [`Polld::spawn_wrapped`]).
    pub fn prepare_with(daemon_keys: &str, watches: &str) -> Polld {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let daemon_keys = daemon_keys.replace("{dir}", &dir.path().display().to_string());
        let config = format!(
            "[daemon]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\nconcurrency = 16\nper_host = 4\n{daemon_keys}\n\n{watches}",
            dir.path().join("state").display()
        );
        std::fs::write(dir.path().join("watchlist.toml"), config).expect("write watch list");
        Polld {
            child: None,
            dir,
            api: format!("http://127.0.0.1:{port}"),
            log: Arc::default(),
            log_read: None,
        }
    }

    /// The watch-list file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("watchlist.toml")
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("state").join("polld.redb")
    }

    /// Starts (or restarts) the process.
    pub fn spawn(&mut self) {
        self.spawn_command(
            &[],
            "polld=debug,polld_daemon=debug,polld_store=info,polld_api=info",
        );
    }

    /// Starts `wrapper... polld run --config ...`, collecting stderr into the log.
    fn spawn_command(&mut self, wrapper: &[&str], rust_log: &str) {
        let bin = polld_bin();
        let (program, wrapper_args) = match wrapper.split_first() {
            Some((program, args)) => (std::ffi::OsStr::new(*program), args),
            None => (bin.as_os_str(), &[][..]),
        };
        let mut command = Command::new(program);
        command.args(wrapper_args);
        if !wrapper.is_empty() {
            command.arg(&bin);
        }
        let mut child = command
            .args(["run", "--config"])
            .arg(self.config_path())
            .env("RUST_LOG", rust_log)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn polld");
        let stderr = child.stderr.take().expect("stderr");
        let log = self.log.clone();
        let (read, log_read) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let _read = read;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        self.log_read = Some(log_read);
        self.child = Some(child);
    }

    /// The process id.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// Sends a signal.
    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("kill");
    }

    /// Waits up to `limit` for the process to exit. Once it has, `log`
    /// holds all it wrote (its last lines, such as "stopped", may still have
    /// been in the pipe when it exited).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                if let Some(log_read) = self.log_read.take() {
                    // Bounded: a child of polld that kept the pipe open
                    // must not hang the test.
                    let _ = log_read.recv_timeout(Duration::from_secs(5));
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for the exit (at most 20 s).
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("polld did not stop within 20 s; log:\n{}", self.log()))
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Opens the store (the daemon must be stopped: the file is locked).
    pub fn open_store(&self) -> polld_store::Store {
        polld_store::Store::open(&self.db_path()).expect("open the store")
    }
}

impl Drop for Polld {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` every 20 ms until it returns Some, or panics after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Polld {
    /// Like [`Polld::spawn`], under a wrapper that `exec`s the daemon (for
    /// example `fiu-run -x -c SPEC`), so that the pid is still polld's.
    pub fn spawn_wrapped(&mut self, wrapper: &[&str]) {
        self.spawn_command(wrapper, "polld=info,polld_store=info");
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn running(&mut self) -> bool {
        self.wait_exit(Duration::ZERO).is_none() && self.child.is_some()
    }

    /// Peak resident set size in KiB (`VmHWM` of /proc/PID/status).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

/// The change feed as a map: seq -> (watch, version).
pub type Feed = BTreeMap<u64, (String, Option<u64>)>;

/// Every change the feed reports now, or None when the API does not answer.
pub async fn feed(client: &reqwest::Client, api: &str) -> Option<Feed> {
    let mut all = BTreeMap::new();
    let mut after = "0".to_owned();
    for _ in 0..1000 {
        let response = client
            .get(format!("{api}/v1/changes?after={after}&limit=1000"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let page: serde_json::Value = serde_json::from_slice(&response.bytes().await.ok()?).ok()?;
        let changes = page["changes"].as_array()?;
        if changes.is_empty() {
            return Some(all);
        }
        for change in changes {
            all.insert(
                change["seq"].as_u64()?,
                (
                    change["watch"].as_str()?.to_owned(),
                    change["version"].as_u64(),
                ),
            );
        }
        after = page["next"].as_str()?.to_owned();
    }
    Some(all)
}
