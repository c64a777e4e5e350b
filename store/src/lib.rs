//! `polld-store` owns all persistence of polld, on redb: per-watch state,
//! content-addressed compressed bodies, the versions of each watch, the
//! global change log with its monotonic sequence, retention, and the batch
//! writer that commits poll outcomes in groups.
