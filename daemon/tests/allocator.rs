//! The shipped binary's allocator: jemalloc with the build-time options of
//! `.cargo/config.toml` and the run-time ones of `daemon/src/allocator.rs`.
//! Cargo reads that file only when it runs inside this workspace, so a
//! build from elsewhere would ship jemalloc's defaults (and a peak RSS
//! 15-20 MiB higher, BENCHMARKS.md) without a word.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn polld_is_built_with_the_workspace_jemalloc_options() {
    // `confirm_conf` makes jemalloc print every option source at start.
    let output = Command::new(env!("CARGO_BIN_EXE_polld"))
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "confirm_conf:true")
        .output()
        .expect("polld runs");
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("(string specified via --with-malloc-conf): \"dirty_decay_ms:1000\""),
        "polld was built without .cargo/config.toml's JEMALLOC_SYS_WITH_MALLOC_CONF; \
         jemalloc said:\n{stderr}"
    );
}

/// The thread names of a process.
#[cfg(target_os = "linux")]
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|name| name.trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(target_os = "linux")]
#[test]
fn the_daemon_purges_freed_memory_on_jemalloc_background_threads() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("watchlist.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = {:?}\nlisten = \"127.0.0.1:0\"\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let mut polld = Command::new(env!("CARGO_BIN_EXE_polld"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("polld starts");
    let by = Instant::now() + Duration::from_secs(20);
    let mut names = Vec::new();
    while Instant::now() < by {
        names = thread_names(polld.id());
        if names.iter().any(|n| n == "jemalloc_bg_thd") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = polld.kill();
    let _ = polld.wait();
    assert!(
        names.iter().any(|n| n == "jemalloc_bg_thd"),
        "no jemalloc background thread in polld run; its threads: {names:?}"
    );
}
