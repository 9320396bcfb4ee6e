//! The `rhizome` binary: `rhizome serve` runs the server, `rhizome bench` the load generator.

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RHIZOME_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Bench(args) => runtime.block_on(rhizome_bench::run(args)).map_err(anyhow::Error::from),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path).with_context(|| format!("config {}", path.display()))?,
        None => FileConfig::default(),
    };
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
