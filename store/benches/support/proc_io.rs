//! `/proc/self/io`, shared by the store's benchmarks and examples.

/// Bytes this process has caused to be written to disk so far (0 where
/// `/proc/self/io` cannot be read).
pub fn disk_writes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines().find_map(|l| {
                l.strip_prefix("write_bytes: ")
                    .and_then(|v| v.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}
