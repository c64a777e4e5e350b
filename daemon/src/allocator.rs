//! The global allocator's run-time options. The allocator itself (jemalloc)
//! is declared in `main.rs`; its build-time options are in
//! `.cargo/config.toml`.

/// Hands jemalloc's purging of freed pages (`dirty_decay_ms`) to its own
/// background threads. Done inline, a purge falls on whichever allocation
/// or free comes due: `madvise` and the TLB shootdowns it sends to the other
/// core stalled the answers to 10,000 long polls by 1.5–2 ms in about one
/// run of four (bench/api-waiters.md). Set at run time, not in the
/// build-time options: where jemalloc has no background threads (macOS) the
/// option there would make it fail to start; here it is refused and
/// purging stays inline.
pub(crate) fn purge_in_background() {
    match tikv_jemalloc_ctl::background_thread::write(true) {
        Ok(()) => tracing::debug!("jemalloc purges freed pages on its background threads"),
        Err(err) => {
            tracing::debug!(error = %err, "jemalloc purges freed pages inline (no background threads)");
        }
    }
}
