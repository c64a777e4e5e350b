//! `polld run`: opens the store, starts the agent, the engine and the API,
//! and handles signals (SIGHUP reloads, SIGTERM / SIGINT drain and stop)
//! until shutdown. Returns the process exit code.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use polld_config::{Config, Listen};
use polld_store::{Store, StoreError, StoreOptions, WriterConfig};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, AgentOptions};
use crate::engine::{Engine, EngineHandle, EngineOptions, WallClock};
use crate::exit;
use crate::metrics::Metrics;
use crate::notify;
use crate::reload_cmd::ReloadStatus;
use crate::telemetry::{self, OtlpConfig};

/// The database file inside the state directory.
pub const DATABASE_FILE: &str = "polld.redb";

/// How long polls in flight may finish after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why `polld run` stopped early, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The database could not be opened, or a commit failed.
    #[error("{}", store_error_text(path, source))]
    Store {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// `store PATH: why: cause...`, naming the path once (most open errors
/// start with it) and every cause (EACCES, EROFS...), which the error's own
/// text leaves to its source chain.
fn store_error_text(path: &Path, source: &StoreError) -> String {
    let why = polld_store::error_chain(source);
    let path = path.display().to_string();
    if why.starts_with(&path) {
        format!("store {why}")
    } else {
        format!("store {path}: {why}")
    }
}

impl RunError {
    /// The exit code: 75 when another polld holds the store (try again
    /// later), 65 for a corrupted database (left untouched for the operator),
    /// 74 for other store I/O errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Store { source, .. } => match source {
                StoreError::Locked { .. } => exit::STORE_LOCKED,
                StoreError::Corrupted { .. } => exit::STORE_CORRUPTED,
                _ => exit::STORE_IO,
            },
            RunError::Other(_) => exit::FAILURE,
        }
    }
}

/// The engine as the API sees it.
struct ApiEngine(EngineHandle);

impl polld_api::Engine for ApiEngine {
    fn poll_now(&self, id: &str) -> polld_api::BoxFuture<bool> {
        let handle = self.0.clone();
        let id = id.to_owned();
        Box::pin(async move { handle.poll_now(&id).await })
    }

    fn is_running(&self) -> bool {
        self.0.is_running()
    }
}

/// The metrics registry as the API sees it.
struct ApiMetrics(Arc<Metrics>);

impl polld_api::MetricsSource for ApiMetrics {
    fn render(&self) -> String {
        self.0.render()
    }
}

/// Runs the daemon until SIGTERM / SIGINT.
pub async fn run(mut config: Config) -> Result<(), RunError> {
    // First of all: a SIGHUP's default action is to terminate, and a
    // SIGTERM during start-up must still end in a clean shutdown. Signals
    // that arrive before the loop below waits for them are kept.
    let signals = Signals::install()?;
    let config_path = config.path.clone();
    let state_dir = config.daemon.state_dir.clone();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state_dir {}", state_dir.display()))?;
    let token = match &config.daemon.api_token_file {
        Some(path) => Some(load_or_create_token(path)?),
        None => None,
    };
    let db_path = state_dir.join(DATABASE_FILE);
    let store = open_store(&db_path, config.daemon.keep_changes).await?;
    tracing::info!(path = %db_path.display(), "store open");

    let metrics = Metrics::new(config.daemon.metrics_per_watch);
    let commits = metrics.clone();
    let (writer, mut writer_task) = store.spawn_writer_with(
        WriterConfig {
            // Large batches: a commit rewrites every B-tree leaf its updates
            // touch, and 100,000 watches polled at random spread over all of
            // them; 16,384 outcomes per commit share leaves where 4,096 did not
            // (29k → 41k sustained polls/s in bench/engine).
            max_batch: 16384,
            // Every commit rewrites some pages whatever its size (the tables'
            // roots, the free-page tree, the header) and fsyncs; since the state
            // log (schema 6) that is half of what a poll writes at 10,000
            // polls/s. Waiting 50 ms rather than 5 for a batch halves the bytes
            // written per poll there (~950 → ~500, bench/engine); a change
            // reaches the feed about 45 ms later.
            max_delay: Duration::from_millis(50),
        },
        move |report| commits.commit(report),
    );
    let agent = Agent::new(AgentOptions {
        user_agent: config.daemon.user_agent.clone(),
        allow_private_redirects: false,
        idle_per_host: config.daemon.per_host,
    })
    .context("cannot build the HTTP client")?;
    let background = CancellationToken::new();
    let telemetry_stop = CancellationToken::new();
    let otlp = OtlpConfig::resolve(config.telemetry.otlp_endpoint.as_ref(), |name| {
        std::env::var(name).ok()
    })
    .map_err(anyhow::Error::msg)
    .context("OpenTelemetry settings")?;
    let (spans, telemetry_task) = match otlp {
        Some(otlp) => {
            let (sink, task) = telemetry::start(
                otlp,
                metrics.clone(),
                &config.daemon.user_agent,
                telemetry_stop.clone(),
            );
            (Some(sink), Some(task))
        }
        None => (None, None),
    };
    let watch_count = config.watches.len();
    let (engine, handle) = Engine::start(
        std::mem::take(&mut config.watches),
        &store,
        writer,
        agent,
        metrics.clone(),
        EngineOptions {
            concurrency: config.daemon.concurrency,
            per_host: config.daemon.per_host,
            grace: SHUTDOWN_GRACE,
            resume_window: Duration::from_secs(60),
            spans,
            clock: WallClock::System,
        },
    )
    .await
    .map_err(|source| RunError::Store {
        path: db_path.clone(),
        source,
    })?;

    let listener = api_listener(&config.daemon.listen).await?;
    let listen = listener
        .local_addr()
        .unwrap_or_else(|| config.daemon.listen.clone());
    let api_options = polld_api::ApiOptions::from_config(&config.daemon, token);
    let api_state = polld_api::ApiState::new(
        store.clone(),
        Arc::new(ApiEngine(handle.clone())),
        Arc::new(ApiMetrics(metrics.clone())),
        api_options,
    );
    let shutdown = CancellationToken::new();
    let api_task = {
        let closer = api_state.clone();
        let stop = shutdown.clone();
        tokio::spawn(listener.serve(
            polld_api::router(api_state),
            polld_api::ServeLimits::default(),
            async move {
                stop.cancelled().await;
                closer.close();
            },
        ))
    };
    let mut engine_task = tokio::spawn(engine.run(shutdown.clone()));
    tracing::info!(watches = watch_count, %listen, "polld running");
    notify::ready(&status_line(&metrics, 0, Duration::ZERO));
    let reload_status = crate::reload_cmd::status_path(&state_dir);
    write_reload_status(
        &reload_status,
        ReloadStatus::of_this_process(0, true, "started".to_owned()),
    )
    .await;
    let watchdog = {
        let handle = handle.clone();
        tokio::spawn(notify::watchdog(
            move || handle.progress(),
            background.clone(),
        ))
    };
    let status = tokio::spawn(status_updates(metrics.clone(), background.clone()));

    let stopped_early = tokio::select! {
        () = signals.wait(&config_path, &handle, &config, &reload_status) => None,
        result = &mut writer_task => Some(match result {
            // A failed commit: exit 74 (EX_IOERR) so that operators and
            // systemd can tell it from other failures.
            Ok(Err(source)) => RunError::Store { path: db_path.clone(), source },
            Ok(Ok(())) => RunError::Other(anyhow::anyhow!("the store writer stopped without error")),
            Err(err) => RunError::Other(anyhow::anyhow!("the store writer panicked: {err}")),
        }),
        result = &mut engine_task => Some(RunError::Other(anyhow::anyhow!("the engine stopped unexpectedly: {result:?}"))),
    };
    notify::stopping();
    // A `polld reload` from now on finds no daemon to ask, rather than a
    // status of one that is going.
    let _ = std::fs::remove_file(&reload_status);
    tracing::info!("shutting down");
    shutdown.cancel();
    background.cancel();
    let mut stopped_early = stopped_early;
    if stopped_early.is_none() {
        // Bounded: on a full disk the writer keeps retrying, and shutdown must
        // not wait for space forever (what is not committed was never
        // acknowledged).
        let drained = tokio::time::timeout(2 * SHUTDOWN_GRACE, async {
            engine_task.await.context("engine task panicked")?;
            // The engine dropped its writer: the writer flushes what it holds and ends.
            anyhow::Ok(writer_task.await)
        })
        .await;
        match drained {
            Ok(Ok(Ok(Ok(())))) => {}
            Ok(Ok(Ok(Err(source)))) => {
                stopped_early = Some(RunError::Store {
                    path: db_path.clone(),
                    source,
                });
            }
            Ok(Ok(Err(err))) => tracing::error!(error = %err, "store writer panicked"),
            Ok(Err(err)) => return Err(err.into()),
            Err(_) => {
                stopped_early = Some(RunError::Other(anyhow::anyhow!(
                    "the store could not commit the last outcomes before shutdown (disk full?); they were never acknowledged"
                )));
            }
        }
    }
    let _ = api_task.await;
    let _ = watchdog.await;
    let _ = status.await;
    telemetry_stop.cancel();
    if let Some(task) = telemetry_task {
        // The exporter flushes the last spans and metrics on cancel.
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    if let Some(err) = stopped_early {
        // Exit non-zero without closing cleanly: systemd restarts polld and
        // the next open repairs whatever the failed commit left.
        return Err(err);
    }
    tokio::task::spawn_blocking(move || store.close())
        .await
        .context("closing the store panicked")?
        .map_err(|source| RunError::Store {
            path: db_path,
            source,
        })?;
    tracing::info!("stopped");
    Ok(())
}

/// The API's listener: the socket systemd passed (socket activation,
/// `polld.socket`) when there is one, else `listen` bound here.
async fn api_listener(listen: &Listen) -> anyhow::Result<polld_api::Listener> {
    if let Some(listener) = polld_api::activated()? {
        tracing::info!(
            socket = %listener
                .local_addr()
                .map_or_else(|| "?".to_owned(), |l| l.to_string()),
            configured = %listen,
            "API on the socket passed by systemd; `listen` is not bound"
        );
        return Ok(listener);
    }
    // The error names the address already.
    Ok(polld_api::bind(listen).await?)
}

/// Warns when users other than the file's owner may read the token (they
/// can then use the whole API) or write it (they can then put in a token
/// of their own). A group may be deliberate (operators running `polld
/// status`), so it is a warning, not a refusal.
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o066 != 0 {
        let who = if mode & 0o006 != 0 {
            "every local user"
        } else {
            "its group"
        };
        let can = match (mode & 0o044 != 0, mode & 0o022 != 0) {
            (true, true) => "readable and writable",
            (true, false) => "readable",
            _ => "writable",
        };
        tracing::warn!(
            path = %path.display(),
            mode = %format_args!("{mode:04o}"),
            "the API token file is {can} by {who}, who can then use the whole API; chmod 600 it unless that is meant"
        );
    }
}

/// Reads the API token; a missing file gets a new random token (mode 0600)
/// so that a first start works; an empty file is refused.
fn load_or_create_token(path: &Path) -> anyhow::Result<polld_api::ApiToken> {
    load_or_create_token_once(path, false)
}

/// [`load_or_create_token`]; `again` when another process seemed to create
/// the file first, so that a path that never reads (a symlink to nowhere)
/// is an error, not an endless retry.
fn load_or_create_token_once(path: &Path, again: bool) -> anyhow::Result<polld_api::ApiToken> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            warn_if_shared(path);
            polld_api::ApiToken::new(&text).with_context(|| {
                format!("the API token file {} is empty; write a token into it or remove the api_token_file key", path.display())
            })
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && again => Err(err).with_context(|| {
            format!(
                "cannot read the API token file {}: something is in its place (a symlink to a missing file?)",
                path.display()
            )
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let token: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            // Written whole to a temporary file, then linked into place: a
            // crash or a reader (a follower waiting for it) never sees an
            // empty token file, and a link, unlike a rename, does not
            // replace a token another polld wrote meanwhile.
            let tmp = path.with_file_name(format!(
                ".{}.{}.tmp",
                path.file_name().map_or_else(Default::default, |n| n.to_string_lossy()),
                std::process::id()
            ));
            let written = (|| {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                file.write_all(token.as_bytes())?;
                file.write_all(b"\n")?;
                file.sync_all()?;
                std::fs::hard_link(&tmp, path)
            })();
            let _ = std::fs::remove_file(&tmp);
            match written {
                Ok(()) => {}
                // Another process got there first: its token is the one.
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                    return load_or_create_token_once(path, true);
                }
                Err(err) => {
                    return Err(err).with_context(|| {
                        format!("cannot create the API token file {}", path.display())
                    });
                }
            }
            tracing::info!(path = %path.display(), "generated a new API token");
            Ok(polld_api::ApiToken::new(&token).expect("non-empty"))
        }
        Err(err) => Err(err).with_context(|| format!("cannot read the API token file {}", path.display())),
    }
}

/// `STATUS=` for systemd: watches, polls per minute, 304 ratio, errors.
fn status_line(metrics: &Metrics, polls_in_period: u64, period: Duration) -> String {
    let totals = metrics.totals();
    let per_minute = if period.is_zero() {
        0.0
    } else {
        polls_in_period as f64 * 60.0 / period.as_secs_f64()
    };
    let ratio = totals
        .ratio_304()
        .map_or_else(|| "-".to_owned(), |r| format!("{:.0}%", r * 100.0));
    format!(
        "{} watches, {per_minute:.0} polls/min, 304 ratio {ratio}, {} errors, {} rate limited",
        metrics.watch_count(),
        totals.errors,
        totals.rate_limited
    )
}

async fn status_updates(metrics: Arc<Metrics>, cancel: CancellationToken) {
    const PERIOD: Duration = Duration::from_secs(10);
    let mut last = metrics.totals().polls();
    let mut ticker = tokio::time::interval(PERIOD);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = metrics.totals().polls();
        notify::status(&status_line(&metrics, now - last, PERIOD));
        last = now;
    }
}

async fn open_store(path: &Path, keep_changes: u64) -> Result<Store, RunError> {
    let owned = path.to_owned();
    let options = StoreOptions {
        max_changes: keep_changes,
        ..StoreOptions::default()
    };
    tokio::task::spawn_blocking(move || options.open(&owned))
        .await
        .context("opening the store panicked")?
        .map_err(|source| RunError::Store {
            path: path.to_owned(),
            source,
        })
}

/// The signals polld handles, installed before anything else starts.
struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            hangup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// Reloads on SIGHUP, saying how each ended in `reload_status` (for
    /// `polld reload`); returns on SIGTERM or SIGINT. `running` is what the
    /// process started with, for [`reload`] to name what it cannot apply.
    async fn wait(
        mut self,
        config_path: &Path,
        engine: &EngineHandle,
        running: &Config,
        reload_status: &Path,
    ) {
        let mut generation = 0;
        loop {
            tokio::select! {
                _ = self.terminate.recv() => return,
                _ = self.interrupt.recv() => return,
                _ = self.hangup.recv() => {
                    notify::reloading();
                    let result = reload(config_path, engine, running).await;
                    let status = match &result {
                        Ok(summary) => format!(
                            "reloaded: {} added, {} removed, {} changed",
                            summary.added, summary.removed, summary.changed
                        ),
                        Err(why) => format!("reload refused, the running watch list stays: {why}"),
                    };
                    generation += 1;
                    let said = ReloadStatus::of_this_process(generation, result.is_ok(), status.clone());
                    write_reload_status(reload_status, said).await;
                    // READY=1 ends the reload either way; the status line
                    // says which it was until the next periodic update.
                    notify::ready(&status);
                }
            }
        }
    }
}

/// Writes the status `polld reload` waits for; a failure is logged (the
/// reload itself is done).
async fn write_reload_status(path: &Path, status: ReloadStatus) {
    let target = path.to_owned();
    let written = tokio::task::spawn_blocking(move || status.write(&target)).await;
    if let Ok(Err(err)) = written {
        tracing::warn!(path = %path.display(), error = %err, "cannot write the reload status file; `polld reload` will not see this reload");
    }
}

/// Problems of an invalid watch list named in a reload's refusal (the log
/// has them all).
const PROBLEMS_NAMED: usize = 3;

/// Parses the watch list again and hands its watches to the engine; an
/// invalid file is logged problem by problem and the running list stays
/// untouched (`Err` says why, in one line). `[daemon]` and `[telemetry]`
/// settings are read at start only: an edited one is named in a warning, to
/// take effect at the next restart.
pub async fn reload(
    config_path: &Path,
    engine: &EngineHandle,
    running: &Config,
) -> Result<crate::engine::ReloadSummary, String> {
    tracing::info!(path = %config_path.display(), "SIGHUP: reloading the watch list");
    let path = config_path.to_owned();
    let loaded = tokio::task::spawn_blocking(move || Config::load(&path)).await;
    match loaded {
        Ok(Ok(config)) => {
            let pending = restart_only_changes(running, &config);
            if !pending.is_empty() {
                tracing::warn!(
                    keys = %pending.join(", "),
                    "these settings changed but apply only at the next restart (systemctl restart polld); the watch list is reloaded"
                );
            }
            // The engine logs what it added, removed and changed.
            engine.reload(config).await.ok_or_else(|| {
                let why =
                    "the engine is stopping, or could not read the stored states (see the log)";
                tracing::warn!("reload not applied: {why}");
                why.to_owned()
            })
        }
        Ok(Err(err)) => {
            log_config_error(&err, "cannot reload the watch list");
            tracing::error!("reload refused: the running watch list stays as it was");
            let problems = err.problems();
            Err(if problems.is_empty() {
                err.to_string()
            } else {
                let mut named: Vec<String> = problems
                    .iter()
                    .take(PROBLEMS_NAMED)
                    .map(ToString::to_string)
                    .collect();
                if problems.len() > PROBLEMS_NAMED {
                    named.push(format!(
                        "and {} more (see the log)",
                        problems.len() - PROBLEMS_NAMED
                    ));
                }
                named.join("; ")
            })
        }
        Err(err) => {
            tracing::error!(error = %err, "reload panicked");
            Err(format!("the reload panicked: {err}"))
        }
    }
}

/// Logs every problem of an invalid watch list, or `what` with the error
/// when it has none (the file could not be read).
pub(crate) fn log_config_error(err: &polld_config::ConfigError, what: &str) {
    for problem in err.problems() {
        tracing::error!(problem = %problem, "invalid watch list");
    }
    if err.problems().is_empty() {
        tracing::error!(error = %err, "{what}");
    }
}

/// The `[daemon]` and `[telemetry]` keys whose value in `new` differs from
/// the running one: a reload does not apply them.
fn restart_only_changes(running: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&running.daemon, &new.daemon);
    [
        ("daemon.listen", a.listen != b.listen),
        ("daemon.state_dir", a.state_dir != b.state_dir),
        ("daemon.concurrency", a.concurrency != b.concurrency),
        ("daemon.per_host", a.per_host != b.per_host),
        (
            "daemon.api_token_file",
            a.api_token_file != b.api_token_file,
        ),
        ("daemon.user_agent", a.user_agent != b.user_agent),
        (
            "daemon.metrics_per_watch",
            a.metrics_per_watch != b.metrics_per_watch,
        ),
        ("daemon.allowed_hosts", a.allowed_hosts != b.allowed_hosts),
        ("daemon.keep_changes", a.keep_changes != b.keep_changes),
        (
            "telemetry.otlp_endpoint",
            running.telemetry.otlp_endpoint != new.telemetry.otlp_endpoint,
        ),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_that_is_a_symlink_to_nowhere_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-token");
        std::os::unix::fs::symlink(dir.path().join("missing"), &path).unwrap();
        let err = load_or_create_token(&path).unwrap_err();
        assert!(
            format!("{err:#}").contains("a symlink to a missing file?"),
            "{err:#}"
        );
        // A plain missing file still gets a new token, mode 0600.
        let fresh = dir.path().join("fresh-token");
        load_or_create_token(&fresh).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    fn parse(text: &str) -> Config {
        Config::from_str_with_env(std::path::Path::new("watchlist.toml"), text, |_| None).unwrap()
    }

    #[test]
    fn a_reload_names_every_setting_it_cannot_apply() {
        let running =
            parse("[daemon]\nper_host = 4\n[[watch]]\nid = \"a\"\nurl = \"http://127.0.0.1/\"\n");
        let same_daemon =
            parse("[daemon]\nper_host = 4\n[[watch]]\nid = \"b\"\nurl = \"http://127.0.0.1/b\"\n");
        assert!(restart_only_changes(&running, &same_daemon).is_empty());
        let edited = parse(
            "[daemon]\nper_host = 8\nuser_agent = \"x/1\"\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\n",
        );
        assert_eq!(
            restart_only_changes(&running, &edited),
            [
                "daemon.per_host",
                "daemon.user_agent",
                "telemetry.otlp_endpoint"
            ]
        );
    }

    #[test]
    fn a_store_error_names_the_file_once() {
        let path = PathBuf::from("/var/lib/polld/polld.redb");
        let locked = RunError::Store {
            path: path.clone(),
            source: StoreError::Locked { path: path.clone() },
        };
        assert_eq!(
            locked.to_string(),
            "store /var/lib/polld/polld.redb: already in use by another polld"
        );
        // The OS error behind it is named too (it is the error's source).
        let denied = RunError::Store {
            path: path.clone(),
            source: StoreError::Io {
                path: path.clone(),
                source: std::io::Error::from_raw_os_error(13),
            },
        };
        assert!(
            denied
                .to_string()
                .starts_with("store /var/lib/polld/polld.redb: I/O error: Permission denied"),
            "{denied}"
        );
        let stopped = RunError::Store {
            path,
            source: StoreError::WriterStopped,
        };
        assert_eq!(
            stopped.to_string(),
            "store /var/lib/polld/polld.redb: the store writer has stopped"
        );
    }

    #[test]
    fn status_line_counts_every_poll_by_result() {
        let metrics = Metrics::new(false);
        metrics.set_watches(3);
        for result in ["not_modified", "not_modified", "not_modified", "changed"] {
            metrics.poll("w", result, Duration::from_millis(5), 0);
        }
        metrics.poll("w", "error", Duration::from_millis(5), 0);
        metrics.poll("w", "rate_limited", Duration::from_millis(5), 0);
        assert_eq!(metrics.totals().polls(), 6);
        assert_eq!(
            status_line(&metrics, 6, Duration::from_secs(10)),
            "3 watches, 36 polls/min, 304 ratio 75%, 1 errors, 1 rate limited"
        );
    }
}
