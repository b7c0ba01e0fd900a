//! `tollgate`: parse the command line, load and compile the configuration, run the server.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tollgate: an edge API gateway built on Pingora.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Configuration file.
    #[arg(
        short = 'c',
        long = "config",
        default_value = "/etc/tollgate/tollgate.toml"
    )]
    config: PathBuf,
    /// Check the configuration and exit (0 valid, 1 invalid) without binding any port.
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Run in the background.
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Take over the listening sockets of a running instance (zero-downtime upgrade).
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let file = match tollgate::config::load(&cli.config) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let compiled = match tollgate::config::compile::compile(&file) {
        Ok(c) => c,
        Err(problems) => {
            let e = tollgate::config::ConfigError {
                file: cli.config.clone(),
                problems,
            };
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if cli.test {
        println!("{}: configuration is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    if !cli.upgrade {
        let problems = tollgate::check_listen_addresses(&compiled);
        if !problems.is_empty() {
            let e = tollgate::config::ConfigError {
                file: cli.config.clone(),
                problems,
            };
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    }
    let mode = tollgate::StartMode {
        daemon: cli.daemon,
        upgrade: cli.upgrade,
    };
    let server = tollgate::build_server(compiled, mode);
    server.run(pingora::server::RunArgs::default());
    ExitCode::SUCCESS
}
