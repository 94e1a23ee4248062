//! CLI and wiring: parse args, load config, build the server, run, final used_at flush.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use agentry_gateway::config::Config;
use agentry_gateway::keys::{generate_management_token, hash_secret};

/// mimalloc rather than the system allocator (feature `mimalloc`, on by default): a proxied
/// request makes about 80 heap allocations, most of them inside pingora. Against glibc's
/// malloc, both without huge pages: 12,000 fewer instructions per cache hit but the same CPU
/// time, 11% less CPU per cache miss, and less memory with the cache full (README, tuning log).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "agentry-gateway",
    version,
    about = "API-key auth gateway on pingora"
)]
struct Cli {
    /// Config file (TOML); running the gateway is the default command.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Also answer on the first upstream group's addresses with a demo echo service, to
        /// try the proxy path without an inbox service (quick start only).
        #[arg(long)]
        demo_upstream: bool,
    },
    /// Validate a config file without starting.
    CheckConfig,
    /// Print a fresh management token (once) and the TOML lines that admit it.
    NewToken {
        /// Token name, as it will appear in the config.
        #[arg(long)]
        name: String,
    },
}

fn load(config: Option<PathBuf>) -> Result<Config, String> {
    let path = config.ok_or("--config FILE is required")?;
    Config::load(&path).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        // pingora's own debug/trace logs print whole request headers (Authorization, query
        // strings): capped at info whatever RUST_LOG says, so secrets never reach the logs.
        .filter_module("pingora_core", log::LevelFilter::Info)
        .filter_module("pingora_proxy", log::LevelFilter::Info)
        .filter_module("pingora_load_balancing", log::LevelFilter::Info)
        .init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run {
        demo_upstream: false,
    }) {
        Command::NewToken { name } => {
            let token = generate_management_token();
            let hash = hex::encode(hash_secret(token.as_bytes()));
            println!("# management token (shown once; store it in your secret manager):");
            println!("# {token}");
            println!("[[management.tokens]]");
            println!("name = {}", toml::Value::String(name));
            println!("sha256 = \"{hash}\"");
            println!("scope = \"all\"");
            ExitCode::SUCCESS
        }
        Command::CheckConfig => match load(cli.config) {
            Ok(_) => {
                println!("config ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run { demo_upstream } => run(cli.config, demo_upstream),
    }
}

fn run(config: Option<PathBuf>, demo_upstream: bool) -> ExitCode {
    let config = match load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = agentry_gateway::huge_pages(config.server.transparent_huge_pages) {
        log::warn!("could not turn transparent huge pages off for this process: {e}");
    }
    let listen = config.server.listen;
    let demo_addrs = config
        .upstreams
        .first()
        .map(|u| u.addresses.clone())
        .unwrap_or_default();
    let mut built = match agentry_gateway::build(config) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if demo_upstream {
        for a in &demo_addrs {
            log::warn!("demo upstream answering on {a} (--demo-upstream: for trying the gateway, not for production)");
        }
        built
            .server
            .add_service(agentry_gateway::demo_upstream::service(&demo_addrs));
    }
    log::info!("agentry-gateway listening on {listen}");
    built.server.run(pingora::server::RunArgs::default());
    // The server has stopped: write whatever used_at marks are still pending.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("final used_at flush: no runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(built.usage.flush()) {
        Ok(n) => {
            log::info!("final used_at flush wrote {n} marks; exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("final used_at flush failed: {e}");
            ExitCode::from(1)
        }
    }
}
