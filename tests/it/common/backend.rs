//! Real upstream servers for the integration tests: HTTP/1.1 on `127.0.0.1:0`, keep-alive,
//! Content-Length and chunked request bodies. Each records what it received and answers with
//! a [`Reply`] chosen per request. `GET /healthz` answers 200 or 503 by [`Backend::set_healthy`]
//! and is counted apart from other requests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One request as the backend received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Lower-case names; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// What to answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
    /// Close the connection after sending only this many bytes of the response.
    pub cut_after: Option<usize>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![],
            body: vec![],
            delay: Duration::ZERO,
            cut_after: None,
        }
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Reply {
        self.body = body.into();
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
    pub fn cut_after(mut self, bytes: usize) -> Reply {
        self.cut_after = Some(bytes);
        self
    }
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;

struct Shared {
    name: String,
    handler: Box<Handler>,
    healthy: AtomicBool,
    hits: AtomicUsize,
    health_hits: AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
}

/// A running backend; stops accepting when dropped.
pub struct Backend {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// One runtime for every backend in the test process.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("building the backend runtime")
    })
}

impl Backend {
    /// A backend named `name` that answers 200 with a JSON echo of the request and an
    /// `x-backend: NAME` header.
    pub fn echo(name: &str) -> Backend {
        let n = name.to_string();
        Self::start(name, move |r| echo_reply(&n, r))
    }

    /// An echo backend bound to a chosen address, e.g. `127.0.0.2` and a port in use on
    /// `127.0.0.1` (every 127/8 address is local on Linux).
    pub fn echo_on(name: &str, ip: &str, port: u16) -> Backend {
        let n = name.to_string();
        Self::start_on(name, &format!("{ip}:{port}"), move |r| echo_reply(&n, r))
    }

    /// A backend answering with `handler`.
    pub fn start(
        name: &str,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Backend {
        Self::start_on(name, "127.0.0.1:0", handler)
    }

    /// A backend answering with `handler`, bound to `bind`.
    pub fn start_on(
        name: &str,
        bind: &str,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Backend {
        let shared = Arc::new(Shared {
            name: name.to_string(),
            handler: Box::new(handler),
            healthy: AtomicBool::new(true),
            hits: AtomicUsize::new(0),
            health_hits: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
        });
        let std_listener = std::net::TcpListener::bind(bind).expect("binding backend");
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let s = shared.clone();
        runtime().spawn(async move {
            let listener = TcpListener::from_std(std_listener).expect("tokio listener");
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            tokio::spawn(serve(stream, s.clone()));
                        }
                    }
                    _ = &mut rx => break,
                }
            }
        });
        Backend {
            addr,
            shared,
            stop: Some(tx),
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }
    /// Requests received, not counting health checks.
    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }
    pub fn health_hits(&self) -> usize {
        self.shared.health_hits.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }
    pub fn last_request(&self) -> Recorded {
        self.requests().pop().expect("backend received no request")
    }
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.healthy.store(healthy, Ordering::SeqCst);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub fn echo_reply(name: &str, r: &Recorded) -> Reply {
    let body = serde_json::json!({
        "backend": name,
        "method": r.method,
        "path": r.path,
        "headers": r.headers,
        "body": String::from_utf8_lossy(&r.body),
    });
    Reply::status(200)
        .header("content-type", "application/json")
        .header("x-backend", name)
        .body(body.to_string())
}

async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let Some(req) = read_request(&mut reader).await else {
            return;
        };
        let reply = if req.method == "GET" && req.path == "/healthz" {
            shared.health_hits.fetch_add(1, Ordering::SeqCst);
            Reply::status(if shared.healthy.load(Ordering::SeqCst) {
                200
            } else {
                503
            })
        } else {
            shared.hits.fetch_add(1, Ordering::SeqCst);
            let reply = (shared.handler)(&req);
            shared.requests.lock().unwrap().push(req.clone());
            reply
        };
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        let mut out = format!(
            "HTTP/1.1 {} X\r\ncontent-length: {}\r\n",
            reply.status,
            reply.body.len()
        );
        for (k, v) in &reply.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if req.method != "HEAD" {
            bytes.extend_from_slice(&reply.body);
        }
        if let Some(n) = reply.cut_after {
            let _ = write.write_all(&bytes[..n.min(bytes.len())]).await;
            let _ = write.shutdown().await;
            return;
        }
        if write.write_all(&bytes).await.is_err() {
            return;
        }
        if req
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            return;
        }
    }
}

async fn read_request(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<Recorded> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).await.ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers
            .entry(k.trim().to_ascii_lowercase())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(v.trim());
            })
            .or_insert_with(|| v.trim().to_string());
    }
    let mut body = Vec::new();
    if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).await.ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(len) = headers
        .get("content-length")
        .and_then(|l| l.parse::<usize>().ok())
    {
        body = vec![0; len];
        reader.read_exact(&mut body).await.ok()?;
    }
    Some(Recorded {
        method,
        path,
        headers,
        body,
    })
}
