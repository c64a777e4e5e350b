//! The command line of `polld`: argument definitions (clap) and the
//! dispatch of each command. Help texts are written for operators.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use polld_config::{Config, ConfigError, DEFAULT_CONFIG_PATH, DaemonConfig};

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
    /// Show every watch with its state, counters and 304 ratio (a client of
    /// the local API of a running polld).
    Status(ClientArgs),
    /// Show what changed between two versions of a watch as a unified diff
    /// (the last two versions by default).
    Diff {
        #[command(flatten)]
        client: ClientArgs,
        /// The watch id.
        watch: String,
        /// Older version number.
        #[arg(long)]
        from: Option<u64>,
        /// Newer version number.
        #[arg(long)]
        to: Option<u64>,
    },
    /// Print the change log, one change a line; with --follow, keep printing
    /// new changes as they are committed.
    Changes {
        #[command(flatten)]
        client: ClientArgs,
        /// Keep waiting for new changes (long poll) until interrupted; a
        /// daemon that is down (not started yet, restarting) is retried,
        /// up to 10 failed requests in a row (about 3 minutes); an answer
        /// that waiting cannot change (401, 404, 410) ends it at once.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Poll one URL politely until conditions hold (the async-job pattern:
    /// 202/303 + Location + Retry-After), then print the final body. Exit 0
    /// when done, 1 on --fail-if or a permanent error, 2 on timeout.
    Await(crate::await_cmd::AwaitArgs),
    /// Ask the running daemon to reload its watch list (SIGHUP) and wait
    /// until it has: exit 0 once applied, 1 when refused (the file's
    /// problems on stderr) or when no daemon answers. The unit's
    /// `ExecReload=`, so that `systemctl reload polld` reports the outcome.
    Reload(crate::reload_cmd::ReloadArgs),
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

/// How the API clients find the daemon.
#[derive(Debug, Args)]
pub struct ClientArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The API's base URL (http://IP:PORT or unix:PATH). Default: the
    /// config's `listen`.
    #[arg(long, value_name = "URL")]
    pub api: Option<String>,
    /// A file with the API token. Default: the config's `api_token_file`.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
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
        Command::Status(client) => client_command(&client, false, |api, token| async move {
            crate::client::status(&api, token.as_deref()).await
        }),
        Command::Diff {
            client,
            watch,
            from,
            to,
        } => client_command(&client, false, |api, token| async move {
            crate::client::diff(&api, token.as_deref(), &watch, from, to).await
        }),
        Command::Changes { client, follow } => {
            client_command(&client, follow, |api, token| async move {
                crate::client::changes(&api, token.as_deref(), follow).await
            })
        }
        Command::Await(args) => crate::await_cmd::run(args),
        Command::Reload(args) => crate::reload_cmd::run(&args),
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

/// How long a follower waits for a token file that polld has not created
/// yet: about as long as it waits for the daemon itself.
const TOKEN_WAIT: std::time::Duration = std::time::Duration::from_secs(180);

/// Runs one API client command: finds the API and the token (flags first,
/// then the watch list), runs `body` on a small runtime. A `follower` waits
/// for a token file that does not exist yet (polld writes it at its first
/// start) as it waits for a daemon that is not up.
fn client_command<F, Fut>(args: &ClientArgs, follower: bool, body: F) -> ExitCode
where
    F: FnOnce(url::Url, Option<String>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let needs_config = args.api.is_none() || args.token_file.is_none();
    // Only `[daemon]` is read: the clients need its `listen` and
    // `api_token_file`, and a watch's `${VAR}` that only the daemon's
    // environment sets must not stop them.
    let daemon = if needs_config {
        match DaemonConfig::load(&args.config.config) {
            Ok(daemon) => Some(daemon),
            Err(err) if args.api.is_none() => {
                report_config_error(&err);
                eprintln!(
                    "polld: the API's address is read from the watch list's `listen`; \
                     without a readable watch list, pass --api URL (and --token-file if the API needs a token)"
                );
                return exit::code(exit::CONFIG);
            }
            // `--api` given: the watch list was only wanted for its token.
            // Absent is fine (an API without one, or a machine that is not
            // the daemon's); present but broken is said, so that a 401 that
            // follows is not a mystery.
            Err(err) => {
                if args.config.config.exists() {
                    report_config_error(&err);
                    eprintln!(
                        "polld: so no API token is read from it; pass --token-file if the API needs one"
                    );
                }
                None
            }
        }
    } else {
        None
    };
    let api = match &args.api {
        Some(text) => match url::Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https" | "unix") => url,
            // `localhost:8377` parses as a URL of scheme "localhost".
            Ok(url) => {
                let hint = if text.contains("://") {
                    String::new()
                } else {
                    format!(" (did you mean http://{text}?)")
                };
                eprintln!(
                    "polld: --api {text:?}: unsupported scheme {:?}; expected http://IP:PORT or unix:PATH{hint}",
                    url.scheme()
                );
                return exit::code(exit::CONFIG);
            }
            Err(err) => {
                eprintln!(
                    "polld: --api {text:?} is not a URL ({err}); expected http://IP:PORT or unix:PATH"
                );
                return exit::code(exit::CONFIG);
            }
        },
        None => crate::client::api_url(&daemon.as_ref().expect("loaded above").listen),
    };
    let token_file = args
        .token_file
        .clone()
        .or_else(|| daemon.as_ref().and_then(|d| d.api_token_file.clone()));
    let token = match token_file {
        Some(path) => match read_token(&path, follower) {
            // An empty token would be sent as `Bearer ` and refused: say so.
            Ok(text) if text.trim().is_empty() => {
                eprintln!("polld: the API token file {} is empty", path.display());
                return exit::code(exit::FAILURE);
            }
            Ok(text) => Some(text.trim().to_owned()),
            Err(err) => {
                eprintln!(
                    "polld: cannot read the API token file {}: {err}",
                    path.display()
                );
                return exit::code(exit::FAILURE);
            }
        },
        None => None,
    };
    let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(body(api, token)) {
        Ok(()) => exit::code(exit::OK),
        Err(err) => {
            eprintln!("polld: {err:#}");
            exit::code(exit::FAILURE)
        }
    }
}

/// The token file's text; for a follower, once the file exists (at most
/// [`TOKEN_WAIT`]).
fn read_token(path: &std::path::Path, follower: bool) -> std::io::Result<String> {
    let deadline = std::time::Instant::now() + TOKEN_WAIT;
    let mut said = false;
    loop {
        let read = std::fs::read_to_string(path);
        // Empty: a polld from before its token was written atomically may
        // be writing it this very moment.
        let not_yet = match &read {
            Err(err) => err.kind() == std::io::ErrorKind::NotFound,
            Ok(text) => text.trim().is_empty(),
        };
        if !(follower && not_yet && std::time::Instant::now() < deadline) {
            return read;
        }
        if !said {
            eprintln!(
                "polld: the API token file {} {} yet (polld writes it when it first starts); waiting",
                path.display(),
                if read.is_ok() {
                    "is empty"
                } else {
                    "does not exist"
                }
            );
            said = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// Builds a tokio runtime, or reports why not and gives the exit code.
pub fn runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|err| {
        eprintln!("polld: cannot start the async runtime: {err}");
        exit::code(exit::FAILURE)
    })
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
                "polld: {file}: {n} problem{} found",
                if n == 1 { "" } else { "s" }
            );
        }
        other => eprintln!("polld: {other}"),
    }
}

/// Whether `polld run`'s error log lines are shown (they go to stderr): if
/// so, printing the same error again on stderr would show it twice (once
/// more in the journal, or as a plain line in a JSON log stream).
fn errors_are_logged() -> bool {
    tracing::enabled!(tracing::Level::ERROR)
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
    crate::allocator::purge_in_background();

    let config = match Config::load(&args.config.config) {
        Ok(config) => config,
        Err(err) => {
            if errors_are_logged() {
                crate::run::log_config_error(&err, "cannot load the watch list");
                tracing::error!("polld not started");
            } else {
                report_config_error(&err);
            }
            return exit::code(exit::CONFIG);
        }
    };
    tracing::info!(summary = %config.summary(), "watch list loaded");
    let runtime = match runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(crate::run::run(config)) {
        Ok(()) => exit::code(exit::OK),
        Err(err) => {
            if errors_are_logged() {
                tracing::error!(error = format!("{err:#}"), "polld stopped");
            } else {
                eprintln!("polld: {err:#}");
            }
            exit::code(err.exit_code())
        }
    }
}
