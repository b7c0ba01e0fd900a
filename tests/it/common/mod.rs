//! Shared harness for the integration tests: start the real `tollgate` binary on free
//! loopback ports with a TOML body, wait until it listens, and kill it by pid on drop; plus
//! real upstream servers (see [`backend`]).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod backend;
pub mod redis;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use backend::{Backend, Recorded, Reply};

/// A loopback port that was free a moment ago, for TCP and UDP alike, for a server the test
/// starts (which binds it itself).
///
/// Never the same port twice in the test process (every module's tests share one counter),
/// and taken below the kernel's ephemeral range (`ip_local_port_range`), so that no socket
/// bound to port 0 and no outgoing connection can be given it before the server binds it. Handing out ports the kernel
/// had just released let it give the same one to a gateway's listener and its admin address,
/// which the gateway refuses (`admin.address ... is already used by listeners[0].address`).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    static HIGH: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let high = *HIGH.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
            .filter(|low_ephemeral| *low_ephemeral > LOW + 1_000)
            .unwrap_or(32_768)
    });
    let span = high - LOW;
    // Each run of the test binary starts somewhere else in the range: runs follow one another
    // (`scripts/conformance.sh` starts one per suite), and a gateway of the last one may still
    // be shutting down.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % span,
        Ordering::AcqRel,
        Ordering::Acquire,
    );
    for _ in 0..span {
        let port = (LOW + NEXT.fetch_add(1, Ordering::AcqRel) % span) as u16;
        // Free for UDP as well: a listener with `[listeners.quic]` binds both.
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{high}");
}

/// The binary under test: this build's, or `TOLLGATE_TEST_BIN` (to measure a release
/// build with the same tests, e.g. the reload latency printed by `tests/it/reload.rs`).
pub fn tollgate_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("TOLLGATE_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tollgate").into())
    })
}

/// A running gateway process.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

/// The `[server]`, listener, admin and access-log sections every test gateway gets; the test
/// supplies upstreams and routes. Placeholders: `{dir}`, `{listen}`, `{admin}`.
pub const PREAMBLE: &str = r#"
[server]
threads = 2
pid_file = "{dir}/tollgate.pid"
upgrade_sock = "{dir}/upgrade.sock"
grace_period = "1s"
graceful_shutdown_timeout = "1s"

[[listeners]]
address = "{listen}"

[admin]
address = "{admin}"

[access_log]
target = "{dir}/access.log"
"#;

/// [`PREAMBLE`] whose listener also takes HTTP/2 with prior knowledge (`h2c = true`).
pub fn h2c_preamble() -> String {
    PREAMBLE.replace(
        "address = \"{listen}\"",
        "address = \"{listen}\"\nh2c = true",
    )
}

/// A self-signed certificate for `tls.test` and `h2.test` with common name `cn`, written to
/// `dir` as `c.crt` and `c.key` (replacing what is there).
pub fn self_signed(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["tls.test".to_string(), "h2.test".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let cert = params.self_signed(&key).unwrap();
    let (crt, k) = (dir.join("c.crt"), dir.join("c.key"));
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (crt, k)
}

/// [`PREAMBLE`] with a TLS listener serving `cert` and `key` (placeholders as there).
pub fn tls_preamble(cert: &Path, key: &Path) -> String {
    format!(
        r#"
[server]
threads = 2
pid_file = "{{dir}}/tollgate.pid"
upgrade_sock = "{{dir}}/upgrade.sock"

[[listeners]]
address = "{{listen}}"
[listeners.tls]
certificates = [{{ cert = "{}", key = "{}" }}]

[admin]
address = "{{admin}}"
"#,
        cert.display(),
        key.display()
    )
}

impl Gateway {
    /// Start a gateway whose config is [`PREAMBLE`] followed by `body`; panics with the
    /// gateway's stderr if it does not come up.
    pub fn start(body: &str) -> Gateway {
        Self::start_full(&format!("{PREAMBLE}\n{body}"))
            .unwrap_or_else(|e| panic!("gateway did not start: {e}"))
    }

    /// Start a gateway from a complete config (placeholders still substituted).
    pub fn start_full(config: &str) -> Result<Gateway, String> {
        Self::start_written(config, |dir, text| {
            let path = dir.join("tollgate.toml");
            std::fs::write(&path, text).map(|_| path)
        })
    }

    /// Start a gateway whose config file `write` puts in the test directory (given the
    /// substituted text), returning the path to pass to `-c`.
    pub fn start_written(
        config: &str,
        write: impl FnOnce(&Path, &str) -> std::io::Result<PathBuf>,
    ) -> Result<Gateway, String> {
        Self::start_written_env(config, &[], write)
    }

    /// [`Gateway::start_full`] with extra environment variables (`RUST_LOG=info`, say).
    pub fn start_full_env(config: &str, env: &[(&str, &str)]) -> Result<Gateway, String> {
        Self::start_written_env(config, env, |dir, text| {
            let path = dir.join("tollgate.toml");
            std::fs::write(&path, text).map(|_| path)
        })
    }

    /// [`Gateway::start_written`] with extra environment variables.
    pub fn start_written_env(
        config: &str,
        env: &[(&str, &str)],
        write: impl FnOnce(&Path, &str) -> std::io::Result<PathBuf>,
    ) -> Result<Gateway, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let text = config
            .replace("{dir}", &dir.path().display().to_string())
            .replace("{listen}", &addr.to_string())
            .replace("{admin}", &admin.to_string());
        let config_path = write(dir.path(), &text).map_err(|e| e.to_string())?;
        let child = Command::new(tollgate_bin())
            .arg("-c")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::from(
                std::fs::File::create(dir.path().join("stdout.log")).unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("stderr.log")).unwrap(),
            ))
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut gw = Gateway {
            child,
            addr,
            admin,
            dir,
            config_path,
        };
        gw.wait_listening(&[addr, admin])?;
        Ok(gw)
    }

    fn wait_listening(&mut self, addrs: &[SocketAddr]) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        for a in addrs {
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Err(format!("exited with {status}: {}", self.stderr()));
                }
                if TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("{a} not listening after 20s: {}", self.stderr()));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Replace the config file with [`PREAMBLE`] followed by `body` (placeholders
    /// substituted as at start), for a reload.
    pub fn rewrite_config(&self, body: &str) {
        self.rewrite_config_full(&format!("{PREAMBLE}\n{body}"));
    }

    /// Replace the config file with `config` (placeholders substituted as at start).
    pub fn rewrite_config_full(&self, config: &str) {
        let text = config
            .replace("{dir}", &self.dir.path().display().to_string())
            .replace("{listen}", &self.addr.to_string())
            .replace("{admin}", &self.admin.to_string());
        std::fs::write(&self.config_path, text).unwrap();
    }

    /// `POST /config/reload`: the status and the JSON answer.
    pub fn reload(&self) -> (u16, serde_json::Value) {
        let r = client()
            .post(self.admin_url("/config/reload"))
            .send()
            .expect("POST /config/reload");
        let status = r.status().as_u16();
        (status, r.json().expect("JSON answer"))
    }

    /// The Prometheus text of the admin listener.
    pub fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .and_then(|r| r.text())
            .expect("GET /metrics")
    }

    /// The `/health` document.
    pub fn health(&self) -> serde_json::Value {
        client()
            .get(self.admin_url("/health"))
            .send()
            .and_then(|r| r.json())
            .expect("GET /health")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Access-log lines written so far, parsed.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Poll the access log until `pred` holds for some line (lines are written off the
    /// request path, so they can trail the response slightly).
    pub fn wait_access_log(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        wait_for(Duration::from_secs(20), || {
            self.access_log().into_iter().find(|l| pred(l))
        })
        .unwrap_or_else(|| {
            panic!(
                "no matching access-log line; log: {:?}; stderr: {}",
                self.access_log(),
                self.stderr()
            )
        })
    }

    /// Send raw bytes on a new connection and return everything read until the server closes
    /// or `timeout` passes.
    pub fn raw(&self, bytes: &[u8], timeout: Duration) -> String {
        raw_request(self.addr, bytes, timeout)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Send a signal to the gateway process.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("running kill");
        assert!(status.success());
    }

    /// Wait for the process to exit and return its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `tollgate -t -c FILE` on `config`; returns (exit code, stdout + stderr).
pub fn check_config(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.toml");
    std::fs::write(
        &path,
        config.replace("{dir}", &dir.path().display().to_string()),
    )
    .unwrap();
    check_config_file(&path)
}

pub fn check_config_file(path: &Path) -> (i32, String) {
    let out = Command::new(tollgate_bin())
        .arg("-t")
        .arg("-c")
        .arg(path)
        .output()
        .expect("running tollgate -t");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Send raw bytes and read the reply until close or timeout.
pub fn raw_request(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    String::from_utf8_lossy(&raw_request_bytes(addr, bytes, timeout)).into_owned()
}

/// [`raw_request`], the answer as the bytes sent (a compressed body is no UTF-8).
pub fn raw_request_bytes(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connecting to the gateway");
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// Poll `f` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HS256 token signed with `secret`: `claims` plus an `exp` an hour from now when they
/// carry none.
pub fn hs256_token(secret: &[u8], mut claims: serde_json::Value) -> String {
    if claims.get("exp").is_none() {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        claims["exp"] = exp.into();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A blocking HTTP client that never reuses a dead connection across tests.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The value of the sample of metric `name` whose labels include all of `labels`
/// (in any order), from Prometheus text.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        if !(rest.is_empty() || rest.starts_with('{')) {
            return None;
        }
        let all = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}
