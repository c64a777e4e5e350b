//! `polld` (the daemon crate) wires polld together: the command line, the
//! polite HTTP agent, the scheduler and poll engine, reload and shutdown,
//! systemd notification and telemetry. `main.rs` only hands the parsed
//! command line to [`cli::main`].

pub mod agent;
mod allocator;
pub mod await_cmd;
pub mod cli;
pub mod client;
pub mod engine;
pub mod exit;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod reload_cmd;
// Shared with the API, which shows watch URLs as logs do.
pub use polld_config::redact;
pub mod run;
pub mod telemetry;
