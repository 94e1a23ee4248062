//! CLI and wiring: parse args, load config, build the server, run, final used_at flush.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use agentry_gateway::config::Config;
use agentry_gateway::keys::{generate_management_token, hash_secret};
use agentry_gateway::process::{self, reload::ConfigFile};
use agentry_gateway::StartMode;

/// mimalloc rather than the system allocator (feature `mimalloc`, on by default): a proxied
/// request makes about 80 heap allocations, most of them inside pingora. Against glibc's
/// malloc, both without huge pages: 12,000 fewer instructions per cache hit but the same CPU
/// time, 11% less CPU per cache miss, and less memory with the cache full (bench/HISTORY.md, tuning log).
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
        /// Take the listening sockets from the running gateway named by `server.pid_file`
        /// instead of binding them; send that process SIGQUIT within 5 s (README, Upgrade).
        #[arg(long)]
        upgrade: bool,
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
        upgrade: false,
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
        Command::Run {
            demo_upstream,
            upgrade,
        } => run(cli.config, demo_upstream, upgrade),
    }
}

/// Reads and validates the config file, keeping its text for reloads.
fn load_file(config: Option<PathBuf>) -> Result<(Config, ConfigFile), String> {
    let path = config.ok_or("--config FILE is required")?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    let config = Config::parse(&text, &path).map_err(|e| e.to_string())?;
    Ok((config, ConfigFile { path, text }))
}

fn run(config: Option<PathBuf>, demo_upstream: bool, upgrade: bool) -> ExitCode {
    let (config, file) = match load_file(config) {
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
    let mut addrs = vec![("server.listen", listen)];
    if let Some(m) = config.metrics_listen {
        addrs.push(("metrics.listen", m));
    }
    // With --upgrade the sockets come from the old process, which still holds the ports.
    if !upgrade {
        if let Err(e) = process::check_listen_addresses(&addrs) {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    }
    let demo_addrs = config
        .upstreams
        .first()
        .map(|u| u.addresses.clone())
        .unwrap_or_default();
    let drain = config.server.drain;
    let pid_path = PathBuf::from(&config.server.pid_file);
    let mut built = match agentry_gateway::build(config, &file, StartMode { upgrade }) {
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
    let finisher = process::Finisher::new(built.usage.clone());
    process::exit_on_listener_panic(finisher.clone());
    // Written once the sockets are ours: during an upgrade the file names the old process
    // until the handover is done.
    match process::PidFile::create(&pid_path) {
        Ok(p) => finisher.set_pid_file(p),
        Err(e) => {
            eprintln!(
                "error: server.pid_file: cannot write {}: {e}; choose a writable path",
                pid_path.display()
            );
            return ExitCode::from(1);
        }
    }
    finisher.exit_when_idle(
        built.server.watch_execution_phase(),
        built.lifecycle.clone(),
    );
    let reloader = built.reloader.clone();
    let signals = process::Signals {
        lifecycle: built.lifecycle.clone(),
        drain,
        on_hup: Box::new(move || reloader.reload_and_report()),
    };
    if upgrade {
        log::info!(
            "agentry-gateway listening on {listen} (sockets taken over from the old process)"
        );
    } else {
        log::info!("agentry-gateway listening on {listen}");
    }
    built.server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(signals),
    });
    // The server has stopped: write whatever used_at marks are still pending.
    ExitCode::from(finisher.finish(0))
}
