//! The command line of `polld`: argument definitions (clap) and the
//! dispatch of each command. Help texts are written for operators.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use polld_config::{Config, ConfigError, DEFAULT_CONFIG_PATH};

use crate::exit;
use crate::logging::LogFormat;

/// polld polls a watch list of HTTP URLs politely (conditional requests,
/// backoff, Retry-After) and keeps every change in an embedded store that a
/// local HTTP API serves.
#[derive(Debug, Parser)]
#[command(name = "polld", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of `polld`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground: poll every watch of the watch list
    /// and serve the local API. Stops on SIGTERM or Ctrl-C; SIGHUP reloads
    /// the watch list.
    Run(RunArgs),
    /// Check a watch list and print a one-line summary. Exits 0 when the
    /// file is valid and 78 after printing every problem with its
    /// FILE:LINE:COLUMN otherwise. Touches nothing else.
    CheckConfig(ConfigArgs),
    /// Print a shell completion script, e.g.
    /// `polld completions bash > /usr/share/bash-completion/completions/polld`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout.
    #[command(hide = true)]
    Man,
}

/// Where the watch list is.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The watch-list file. Without this flag, $POLLD_CONFIG, else
    /// /etc/polld/watchlist.toml.
    #[arg(long, short = 'c', value_name = "PATH", env = "POLLD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

/// Flags of `polld run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Log line format: text (no timestamps under journald) or json.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Runs the parsed command line and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::CheckConfig(args) => check_config(&args.config),
        Command::Run(args) => run(&args),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "polld", &mut std::io::stdout());
            exit::code(exit::OK)
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            match clap_mangen::Man::new(command).render(&mut std::io::stdout()) {
                Ok(()) => exit::code(exit::OK),
                Err(err) => {
                    eprintln!("polld: cannot write the man page: {err}");
                    exit::code(exit::FAILURE)
                }
            }
        }
    }
}

/// Loads the watch list, printing every problem to stderr on failure.
fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|err| {
        report_config_error(&err);
        exit::code(exit::CONFIG)
    })
}

/// Prints a config error: every problem on its own line, then a count.
pub fn report_config_error(err: &ConfigError) {
    match err {
        ConfigError::Invalid { problems } => {
            for problem in problems {
                eprintln!("{problem}");
            }
            let file = problems
                .first()
                .map(|p| p.path.display().to_string())
                .unwrap_or_default();
            let n = problems.len();
            eprintln!(
                "polld: {file}: {n} problem{} found; nothing was changed",
                if n == 1 { "" } else { "s" }
            );
        }
        other => eprintln!("polld: {other}"),
    }
}

fn check_config(path: &Path) -> ExitCode {
    match load_config(path) {
        Ok(config) => {
            println!("{}", config.summary());
            exit::code(exit::OK)
        }
        Err(code) => code,
    }
}

fn run(args: &RunArgs) -> ExitCode {
    crate::logging::init(args.log_format);
    let config = match load_config(&args.config.config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    eprintln!("{}", config.summary());
    eprintln!("polld run: the poll engine is not part of this build yet; nothing was started");
    exit::code(exit::FAILURE)
}
