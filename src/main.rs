use std::process::ExitCode;

use clap::Parser as _;
use emporium::{
    app::App,
    catalog::client::{self, OffersClient},
    config::{Cli, Command, Config, OffersCommand, ReauthArgs, SimArgs},
    db, graphql, telemetry,
};

// A GraphQL request allocates for every field it resolves; glibc's allocator took over a
// quarter of the catalog query's CPU, mimalloc a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    one_malloc_arena();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One clear line; no panic, no backtrace.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// SQLite (and the other C code) allocates with glibc's malloc, not mimalloc, and glibc
/// gives each thread that allocates an arena of its own, up to 8 per core: SQLite's
/// connections each run on a thread, and memory freed in one arena stays with it. One
/// arena: a 300 MB upload's ingestion peaked at 103 MiB instead of 150 and kept 72 MiB
/// instead of 117, no slower (bench notes in bench/RESULTS.md).
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first thing in `main`, before any other thread exists or allocates
    // through glibc; mallopt only sets an allocator parameter.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(config)) => serve(*config).await,
        Some(Command::Migrate(database)) => {
            telemetry::init_logging("text", "info");
            db::migrate(&database).await?;
            println!("migrations applied to {}", db::redact(&database.resolved_url()));
            Ok(())
        }
        Some(Command::Schema) => {
            print!("{}", graphql::sdl());
            Ok(())
        }
        Some(Command::Sim(args)) => simulate(args).await,
        Some(Command::Offers(OffersCommand::Reauth(args))) => offers_reauth(args).await,
    }
}

/// `emporium offers reauth`: replaces the deployment's offers token by hand.
async fn offers_reauth(args: ReauthArgs) -> anyhow::Result<()> {
    telemetry::init_logging("text", "warn");
    let db = db::connect(&args.database).await?;
    let Some(url) = args.offers_url else {
        match client::discard_token(&db).await? {
            Some(old) => println!(
                "dropped the offers access token {}; the next node that calls the service requests a new one",
                client::fingerprint(&old)
            ),
            None => println!("no offers access token was stored; the next node that calls the service requests one"),
        }
        return Ok(());
    };
    // A node name of its own, so its claim row is never mistaken for a node's.
    let node = format!("cli-{}", std::process::id());
    let offers = OffersClient::new(&url, &node, &args.catalog)?;
    let (old, new) =
        offers.reauthenticate(&db).await.map_err(|error| anyhow::anyhow!("re-authenticating failed: {error}"))?;
    match old {
        Some(old) if old != new => println!(
            "replaced the offers access token {} with {} for every node (nodes pick it up within a minute, \
             or at once if the old one is rejected)",
            client::fingerprint(&old),
            client::fingerprint(&new)
        ),
        Some(_) => println!("another node replaced the offers access token meanwhile; nothing to do"),
        None => println!("stored a new offers access token {} for every node", client::fingerprint(&new)),
    }
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    telemetry::init_logging(&config.log_format, &config.log_filter);
    let app = App::build(config).await?;
    app.run(shutdown_signal()).await
}

async fn simulate(args: SimArgs) -> anyhow::Result<()> {
    telemetry::init_logging("text", "info");
    let config = sim::SimConfig {
        offers_tick: args.offers_tick,
        feed_periods: args.feed_periods,
        feed_items: args.feed_items,
        seed: None,
    };
    let running = sim::Simulator::start(args.listen, config)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen on {}: {error}", args.listen))?;
    println!("simulator: offers service at {}", running.offers_url());
    for (url, period) in running.feed_urls() {
        println!("simulator: feed {url} every {}s", period.as_secs_f64());
    }
    shutdown_signal().await;
    running.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
