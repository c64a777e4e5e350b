//! `polld reload`: asks a running daemon to reload its watch list (SIGHUP)
//! and waits until it has, so that `systemctl reload polld` returns once the
//! new list runs, and fails, naming the problem, when the file is invalid.
//! A bare `kill -HUP` returns before the reload and succeeds either way.
//!
//! The daemon says how each reload ended in a small status file in its
//! `state_dir` ([`ReloadStatus`]), which it writes at start and after every
//! reload and removes when it stops.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cli::ConfigArgs;
use crate::exit;

/// The status file's name in `state_dir`.
const STATUS_FILE: &str = "reload-status.json";
/// How often `polld reload` looks at the status file.
const CHECK_EVERY: Duration = Duration::from_millis(50);

/// Flags of `polld reload`.
#[derive(Debug, clap::Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The daemon's process id (systemd's `$MAINPID`). Default: the one its
    /// status file names, when that process is still the one that wrote it.
    #[arg(long)]
    pub pid: Option<u32>,
    /// How long to wait for the reload to be applied (a watch list of
    /// 100,000 watches takes seconds). Stays under systemd's default
    /// `TimeoutSec=` of 90 s.
    #[arg(long, default_value = "80s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// How the daemon's last start or reload ended, as its status file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// The daemon's process id.
    pub pid: u32,
    /// When that process started (clock ticks since boot, as
    /// `/proc/PID/stat` says): a pid reused by another process does not
    /// match it.
    pub started: u64,
    /// Reloads handled since the start (0: none yet).
    pub generation: u64,
    /// The last reload was applied (or, at generation 0, the start).
    pub applied: bool,
    /// What happened, in one line: "reloaded: 1 added, …" or why not.
    pub message: String,
}

/// The status file of the daemon whose `state_dir` is `state_dir`.
pub fn status_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATUS_FILE)
}

impl ReloadStatus {
    /// This process's status at `generation`.
    pub fn of_this_process(generation: u64, applied: bool, message: String) -> ReloadStatus {
        let pid = std::process::id();
        ReloadStatus {
            pid,
            started: start_time(pid).unwrap_or(0),
            generation,
            applied,
            message,
        }
    }

    /// Writes the file whole (a temporary file renamed over it), so that a
    /// reader never sees half of it.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let temporary = path.with_extension("json.new");
        let text = serde_json::to_string(self).map_err(std::io::Error::other)?;
        std::fs::write(&temporary, text + "\n")?;
        std::fs::rename(&temporary, path)
    }

    /// The file's status; `None` when there is none (or it cannot be read).
    pub fn read(path: &Path) -> Option<ReloadStatus> {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/PID/stat`); `None` when there is no such process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses itself: count from the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Runs `polld reload`: exit 0 once the reload is applied, 1 when it was
/// refused (the reason on stderr), no daemon answers or the wait runs out,
/// 78 for an unreadable watch list.
pub fn run(args: &ReloadArgs) -> ExitCode {
    // Only `[daemon]` is read: its `state_dir` holds the status file, and
    // the rest of the file is the daemon's to judge.
    let daemon = match polld_config::DaemonConfig::load(&args.config.config) {
        Ok(daemon) => daemon,
        Err(err) => {
            crate::cli::report_config_error(&err);
            eprintln!(
                "polld: the daemon's status file is found through the watch list's state_dir"
            );
            return exit::code(exit::CONFIG);
        }
    };
    let path = status_path(&daemon.state_dir);
    match reload(&path, args.pid, args.timeout) {
        Ok(message) => {
            println!("{message}");
            exit::code(exit::OK)
        }
        Err(why) => {
            eprintln!("polld: {why}");
            exit::code(exit::FAILURE)
        }
    }
}

/// Signals the daemon and waits for its status file to report the reload.
fn reload(path: &Path, pid: Option<u32>, timeout: Duration) -> Result<String, String> {
    let before = ReloadStatus::read(path);
    let pid = match (pid, &before) {
        (Some(pid), _) => pid,
        (None, Some(status)) if start_time(status.pid) == Some(status.started) => status.pid,
        (None, Some(status)) => {
            return Err(format!(
                "{} names process {}, which is no longer the polld that wrote it: is polld running? (or pass --pid)",
                path.display(),
                status.pid
            ));
        }
        (None, None) => {
            return Err(format!(
                "no running polld found: {} does not exist (is polld running with this watch list? or pass --pid)",
                path.display()
            ));
        }
    };
    // The reload to wait for comes after what the file says now, if it
    // says it of this process (its pid and start time: a file a crash left
    // may name a reused pid); a daemon still starting writes generation 0
    // first, then handles the signal.
    let started = start_time(pid);
    let seen = before
        .filter(|status| status.pid == pid && Some(status.started) == started)
        .map(|status| status.generation);
    let target = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| format!("--pid {pid} is not a process id"))?;
    rustix::process::kill_process(target, rustix::process::Signal::HUP)
        .map_err(|err| format!("cannot signal process {pid}: {err}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = ReloadStatus::read(path)
            && status.pid == pid
            && Some(status.started) == started
            && seen.is_none_or(|seen| status.generation > seen)
            && status.generation > 0
        {
            return if status.applied {
                Ok(status.message)
            } else {
                Err(status.message)
            };
        }
        if rustix::process::test_kill_process(target).is_err() {
            return Err(format!(
                "process {pid} ended before reporting the reload; see its log"
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the reload was not reported within {}; it may still be applied: see the log",
                humantime::format_duration(timeout)
            ));
        }
        std::thread::sleep(CHECK_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_of_this_process_is_read_and_stays_the_same() {
        let mine = start_time(std::process::id()).expect("this process");
        assert!(mine > 0);
        assert_eq!(start_time(std::process::id()), Some(mine));
        assert_eq!(start_time(u32::MAX), None);
    }

    #[test]
    fn a_status_file_round_trips_and_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = status_path(dir.path());
        assert_eq!(ReloadStatus::read(&path), None);
        let first = ReloadStatus::of_this_process(0, true, "started".into());
        first.write(&path).unwrap();
        assert_eq!(ReloadStatus::read(&path), Some(first));
        let second = ReloadStatus::of_this_process(1, false, "reload refused: x".into());
        second.write(&path).unwrap();
        assert_eq!(ReloadStatus::read(&path), Some(second));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [STATUS_FILE], "no temporary file left");
    }

    #[test]
    fn a_stale_status_file_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = status_path(dir.path());
        let mut stale = ReloadStatus::of_this_process(3, true, "reloaded".into());
        stale.started += 1;
        stale.write(&path).unwrap();
        let err = reload(&path, None, Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("no longer the polld"), "{err}");
        let err = reload(&dir.path().join("none.json"), None, Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("no running polld"), "{err}");
    }
}
