//! `tollgate`: parse the command line, load and build the configuration, run the server (or
//! check the configuration, or signal a running server).

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc, called the way the standard library calls malloc: the plain entry points when the
/// alignment is one malloc gives anyway (16 bytes), the aligned ones only above that. The
/// `mimalloc` crate calls `mi_malloc_aligned` for every allocation, whose fast path covers
/// only small sizes: every allocation over 1 KiB (a request's future, its header buffers) took
/// the generic aligned path. Measured in `docs/performance.md` (issue 20).
#[cfg_attr(feature = "system-allocator", allow(dead_code))]
struct Allocator;

/// The alignment every mimalloc allocation has (`MI_MAX_ALIGN_SIZE`).
#[cfg_attr(feature = "system-allocator", allow(dead_code))]
const MI_MIN_ALIGN: usize = 16;

// SAFETY: each method forwards to the mimalloc function with the same contract; the plain
// ones are used only for alignments they guarantee.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        if layout.align() <= MI_MIN_ALIGN {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        if layout.align() <= MI_MIN_ALIGN {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        libmimalloc_sys::mi_free(ptr.cast());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys as mi;
        if layout.align() <= MI_MIN_ALIGN {
            mi::mi_realloc(ptr.cast(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

/// Not with the `system-allocator` feature: a build whose allocations a heap profiler that
/// sees only the C library's `malloc` can follow (`DHAT=1 benches/tls-idle-mem.sh`).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: Allocator = Allocator;

/// Tollgate: an edge API gateway built on Pingora.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Configuration file.
    #[arg(
        short = 'c',
        long = "config",
        global = true,
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
    /// Send a signal to the running instance (its pid from the configured pid file):
    /// `reload` re-reads the configuration in place, `reopen` reopens the access-log file.
    #[arg(short = 's', long = "signal", value_name = "SIGNAL")]
    signal: Option<Signal>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Print the JSON Schema of the configuration file (kept as docs/tollgate.schema.json).
    Schema,
    /// Print the routing table: each route's hosts, path, methods, upstream, auth, roles,
    /// limits, cache and transforms (what the admin listener's `GET /routes` serves).
    Routes {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the OpenAPI 3.1 document of the public surface (what the admin listener's
    /// `GET /openapi.json` serves), services' own files merged under their routes.
    Openapi,
    /// Show what the gateway would do with one request, without any network: the route and
    /// why others did not match, each policy step, the upstream and the request it would
    /// get, the response headers added.
    Explain {
        /// GET, POST, ...
        method: String,
        /// `http://host/path?query`, `https://...`, or `/path` (host from -H 'Host: ...').
        url: String,
        /// A request header, `-H 'Name: value'`; repeatable.
        #[arg(short = 'H', long = "header", value_name = "HEADER")]
        headers: Vec<String>,
        /// The client's address as the gateway's TCP peer.
        #[arg(long, default_value = "127.0.0.1")]
        client: std::net::IpAddr,
        /// The listener address the request arrives on (default: the first TLS listener for
        /// https, else the first plain one).
        #[arg(long)]
        listener: Option<String>,
        /// A header of the upstream's 200 response, `-R 'Cache-Control: max-age=60'`,
        /// for the cache decision; repeatable (default: no caching headers).
        #[arg(short = 'R', long = "upstream-header", value_name = "HEADER")]
        upstream_headers: Vec<String>,
        /// The request comes over HTTP/3 (to the first listener with `[listeners.quic]`,
        /// unless --listener names one).
        #[arg(long)]
        http3: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Signal {
    /// SIGHUP: reload the configuration in place.
    Reload,
    /// SIGUSR1: reopen the access-log file (after logrotate moved it).
    Reopen,
}

impl Signal {
    fn number(self) -> nix::sys::signal::Signal {
        match self {
            Signal::Reload => nix::sys::signal::Signal::SIGHUP,
            Signal::Reopen => nix::sys::signal::Signal::SIGUSR1,
        }
    }
}

/// Write `text` to standard output. A reader that went away (`tollgate schema | head`) ends
/// the output quietly, as for any Unix tool; `print!` would panic with a backtrace.
fn out(text: &str) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate: cannot write to standard output: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    tollgate::init_logging();
    let cli = Cli::parse();
    if let Some(Command::Schema) = cli.command {
        return out(&tollgate::config::schema());
    }
    if let Some(Command::Routes { .. } | Command::Openapi) = &cli.command {
        let assembled = match tollgate::load(&cli.config) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        };
        return match &cli.command {
            Some(Command::Routes { json }) => out(&tollgate::routes(&assembled, *json)),
            _ => out(&tollgate::openapi(&assembled)),
        };
    }
    if let Some(Command::Explain {
        method,
        url,
        headers,
        client,
        listener,
        upstream_headers,
        http3,
        json,
    }) = &cli.command
    {
        let assembled = match tollgate::load(&cli.config) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        };
        let query = tollgate::ExplainQuery {
            method: method.clone(),
            url: url.clone(),
            headers: headers.clone(),
            client: *client,
            listener: listener.clone(),
            upstream_headers: upstream_headers.clone(),
            http3: *http3,
        };
        return match tollgate::explain(&assembled, &query) {
            Ok(e) if *json => out(&format!(
                "{}\n",
                serde_json::to_string_pretty(&e).unwrap_or_default()
            )),
            Ok(e) => out(&e.to_string()),
            Err(e) => {
                eprintln!("tollgate explain: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(signal) = cli.signal {
        return match send_signal(&cli.config, signal.number()) {
            Ok(pid) => out(&format!("sent {} to {pid}\n", signal.number())),
            Err(e) => {
                eprintln!("{}: {e}", cli.config.display());
                ExitCode::from(1)
            }
        };
    }
    let assembled = match tollgate::load(&cli.config) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    tollgate::set_log_format(assembled.file.log.format);
    for w in &assembled.warnings {
        eprintln!(
            "{}: {}: warning: {}",
            cli.config.display(),
            w.path,
            w.message
        );
    }
    if cli.test {
        return out(&format!(
            "{}: configuration is valid\n",
            cli.config.display()
        ));
    }
    if !cli.upgrade {
        let problems = tollgate::check_listen_addresses(&assembled.file);
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
    // NOTE(pingora-0.9): pingora-core/src/server/mod.rs writes `pid_file` only with `daemon`.
    // Pingora writes the pid file only when it daemonizes; `-s reload` needs it either way.
    let pid_file = (!cli.daemon).then(|| assembled.file.server.pid_file.clone());
    if let Some(path) = &pid_file {
        if let Err(e) = std::fs::write(path, format!("{}\n", std::process::id())) {
            eprintln!(
                "{}: server.pid_file: cannot write {path}: {e}",
                cli.config.display()
            );
            return ExitCode::from(1);
        }
    }
    // Absolute but not resolved: a Kubernetes ConfigMap volume swaps the symlink behind the
    // name and deletes the old target, so a reload must read the name again.
    let config = std::path::absolute(&cli.config).unwrap_or(cli.config);
    let ran =
        tollgate::build_server(assembled, config.clone(), mode).and_then(tollgate::Prepared::run);
    // After an upgrade the file names the new instance: leave it alone then.
    if let Some(path) = pid_file {
        let ours = std::fs::read_to_string(&path)
            .is_ok_and(|t| t.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(path);
        }
    }
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: cannot listen: {e}", config.display());
            ExitCode::from(1)
        }
    }
}

/// `-s reload|reopen`: a signal to the pid in the configuration's pid file, as nginx's `-s`.
fn send_signal(config: &std::path::Path, signal: nix::sys::signal::Signal) -> Result<i32, String> {
    let (file, _) = tollgate::config::load(config).map_err(|e| e.to_string())?;
    let pid_file = &file.server.pid_file;
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| format!("cannot read the pid file {pid_file}: {e}; is tollgate running?"))?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("the pid file {pid_file} holds no pid"))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .map_err(|e| format!("cannot signal process {pid}: {e}"))?;
    Ok(pid)
}
