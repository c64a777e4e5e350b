//! The `polld` binary: parses the command line and hands it to the library.

use std::process::ExitCode;

use clap::Parser;
use polld_daemon::cli::{self, Cli};
use polld_daemon::exit;

// See the workspace Cargo.toml for why polld does not use the system allocator.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // Help and version go to stdout with 0; bad arguments are EX_CONFIG.
            let code = if err.use_stderr() {
                exit::CONFIG
            } else {
                exit::OK
            };
            let _ = err.print();
            return exit::code(code);
        }
    };
    cli::main(cli)
}
