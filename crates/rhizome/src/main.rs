//! The `rhizome` binary: `rhizome serve` runs the server, `rhizome bench` the load generator,
//! `rhizome sim` the reconnect-storm simulator.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use rhizome_server::config::FileConfig;
use rhizome_server::{Server, ServerOptions};
use std::net::SocketAddr;
use std::path::PathBuf;

// mimalloc: fewer cycles per allocation on the hot path and less fragmentation with many
// connections than glibc malloc. Without transparent huge pages: a 2 MiB page committed for one
// live allocation would dominate the memory of idle connections. Build with
// `--no-default-features` for glibc malloc (heap profilers such as heaptrack need it).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (its index in `mi_option_t`, mimalloc 2.x and 3.x).
#[cfg(feature = "mimalloc")]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Milliseconds before mimalloc returns freed pages to the OS. Returning them at once (0) made
/// a busy server fault the same pages back in for every batch of actions (page faults were
/// about 5% of a connection worker's time under load). A delay is checked only when the same
/// thread calls the allocator again, so a worker that goes quiet after a connection burst
/// would keep the burst's freed pages resident (about 0.2 KiB per idle connection at 2,000
/// with 10 ms, 0.4 with 100 ms): [`collect_on_park`] makes each worker collect them when it
/// goes idle, which keeps idle memory where returning pages at once did (1.79–1.88 KiB per
/// connection in five runs of scenario d, against 1.82–1.88). Five alternated runs of
/// `bench/run.sh` gave scenario b 357k against 339k actions/s on average, with 0.64 against
/// 0.70 s of server CPU.
///
/// Only for `rhizome serve`: the simulator's thousand clients allocate and free all the time,
/// and its own default (1 s) suits it.
#[cfg(feature = "mimalloc")]
const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// Least time between two collections by one worker thread.
#[cfg(feature = "mimalloc")]
const COLLECT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Run by each runtime worker when it parks: at most every [`COLLECT_INTERVAL`], returns the
/// thread's freed pages whose [`PURGE_DELAY_MS`] passed to the OS. A quiet server's workers
/// still wake (the deadline ticker), so the pages freed just before a worker went quiet go at
/// its next wake.
#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)]
fn collect_on_park() {
    use std::cell::Cell;
    use std::time::Instant;
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    if LAST.get().is_some_and(|last| now.duration_since(last) < COLLECT_INTERVAL) {
        return;
    }
    LAST.set(Some(now));
    // SAFETY: `mi_collect` takes no pointers; it only walks and trims the calling thread's
    // own heap, which mimalloc allows at any time outside an allocator call.
    unsafe { libmimalloc_sys::mi_collect(false) };
}

#[cfg(not(feature = "mimalloc"))]
fn collect_on_park() {}

/// Sets mimalloc's options for the server, unless the environment sets them
/// (`MIMALLOC_PURGE_DELAY`); runs in `main` before any other thread exists.
#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)]
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: `mi_option_set` takes no pointers and only stores an integer in mimalloc's option
    // table, which mimalloc reads atomically; any value is valid for `purge_delay`.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

#[cfg(not(feature = "mimalloc"))]
fn tune_allocator() {}

#[derive(Parser, Debug)]
#[command(name = "rhizome", version, about = "Offline-first sync server speaking Logux protocol 5")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Run the protocol 5 load generator against any Logux server.
    Bench(rhizome_bench::BenchArgs),
    /// Simulate many offline clients with queued actions reconnecting at once.
    Sim(rhizome_sim::SimArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Config file (TOML); see examples/rhizome.toml.
    #[arg(long, env = "RHIZOME_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:31337].
    #[arg(long, env = "RHIZOME_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory of the SQLite log [default: ./rhizome-data].
    #[arg(long, env = "RHIZOME_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Development mode: headers {env: "development"} and debug frames.
    #[arg(long, env = "RHIZOME_DEVELOPMENT")]
    development: bool,
    /// Threads that run connections [default: one less than the CPUs, at least one].
    #[arg(long, env = "RHIZOME_WORKERS")]
    workers: Option<usize>,
    /// Makes this server an edge of the Rhizome node at this WebSocket URL (docs/edge.md).
    #[arg(long, env = "RHIZOME_UPSTREAM")]
    upstream: Option<String>,
    /// The edge link's node id, `<peer user>:<edge name>:link`.
    #[arg(long, env = "RHIZOME_UPSTREAM_NODE")]
    upstream_node: Option<String>,
    /// The edge link's token (a JWT whose user is a peer upstream).
    #[arg(long, env = "RHIZOME_UPSTREAM_TOKEN", hide_env_values = true)]
    upstream_token: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve(_)) {
        tune_allocator();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RHIZOME_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => {
            let file = match &args.config {
                Some(path) => FileConfig::load(path).with_context(|| format!("config {}", path.display()))?,
                None => FileConfig::default(),
            };
            let workers = args.workers.or(file.server.workers).unwrap_or_else(default_workers);
            anyhow::ensure!(workers > 0, "workers must be at least 1");
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .on_thread_park(collect_on_park)
                .enable_all()
                .build()?;
            runtime.block_on(serve(args, file))
        }
        Command::Bench(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(rhizome_bench::run(args)).map_err(anyhow::Error::from)
        }
        Command::Sim(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .max_blocking_threads(SIM_BLOCKING_THREADS)
                .enable_all()
                .build()?;
            runtime.block_on(rhizome_sim::run(args))?;
            Ok(())
        }
    }
}

/// Threads that run the simulator's SQLite work. Thousands of clients each wanting their log
/// at once would otherwise get a thread each (tokio's default allows 512), and those threads
/// spend the CPU the simulator is measured by on switching between them; each client's log
/// calls are short, so a few threads per CPU keep up.
const SIM_BLOCKING_THREADS: usize = 4;

/// One worker per CPU but one: the store's writer thread needs a CPU of its own under load, and
/// fewer workers keep fewer per-thread allocator pages around after a connection burst.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

async fn serve(args: ServeArgs, file: FileConfig) -> anyhow::Result<()> {
    let listen = match (args.listen, &file.server.listen) {
        (Some(a), _) => a,
        (None, Some(text)) => text.parse().with_context(|| format!("server.listen {text:?}"))?,
        (None, None) => SocketAddr::from(([127, 0, 0, 1], 31337)),
    };
    let data_dir =
        args.data_dir.or_else(|| file.server.data_dir.clone()).unwrap_or_else(|| "rhizome-data".into());
    let options = ServerOptions {
        listen,
        data_dir,
        subprotocol: file.server.subprotocol.unwrap_or(1),
        min_subprotocol: file.server.min_subprotocol.unwrap_or(0),
        development: args.development || file.server.development.unwrap_or(false),
        limits: file.limits.to_limits()?,
        app: file.app()?,
        wakeups: file.push.to_options()?,
        upstream: file.upstream.to_options(args.upstream, args.upstream_node, args.upstream_token)?,
    };
    let data_dir = options.data_dir.clone();
    let server = Server::start(options).await?;
    // A machine-readable line for scripts and tests (the port may have been chosen by the OS).
    println!("listening on ws://{} (data in {})", server.local_addr(), data_dir.display());
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(all(test, feature = "mimalloc"))]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)]
    fn the_tuned_option_is_the_purge_delay() {
        // SAFETY: as in `tune_allocator`; `mi_option_get` only reads the option table.
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // the operator's setting stands
        }
        // mimalloc 3's default for `purge_delay`; no other option of `mi_option_t` has it.
        assert_eq!(get(), 1000, "option {MI_OPTION_PURGE_DELAY} is not purge_delay");
        tune_allocator();
        assert_eq!(get(), PURGE_DELAY_MS);
    }
}
