//! The shipped binary's allocator: jemalloc with the options of
//! `.cargo/config.toml`. Cargo reads that file only when it runs inside
//! this workspace, so a build from elsewhere would ship jemalloc's
//! defaults (and a peak RSS 15-20 MiB higher, BENCHMARKS.md) without a word.

use std::process::Command;

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
        stderr.contains(
            "(string specified via --with-malloc-conf): \"dirty_decay_ms:1000,background_thread:true\""
        ),
        "polld was built without .cargo/config.toml's JEMALLOC_SYS_WITH_MALLOC_CONF; \
         jemalloc said:\n{stderr}"
    );
}
