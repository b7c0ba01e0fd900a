//! Reload in place, with the real binary: the configuration is swapped under load with no
//! failed request; a broken file changes nothing and says why; limiter windows, cached
//! entries and target health carry over; open WebSocket and streaming connections keep
//! flowing; certificates are re-read; keys only an upgrade can apply are refused by name.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

fn app(backend: &Backend, extra_routes: &str) -> String {
    format!(
        r#"
[upstreams.app]
targets = [{{ address = "{}" }}]

[[routes]]
name = "a"
path_prefix = "/a"
upstream = "app"
{extra_routes}
"#,
        backend.addr
    )
}

const ROUTE_B: &str = r#"
[[routes]]
name = "b"
path_prefix = "/b"
upstream = "app"
"#;

fn status(url: &str) -> u16 {
    client().get(url).send().map_or(0, |r| r.status().as_u16())
}

/// p99 of a sorted list of durations.
fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() * 99 / 100).copied().unwrap_or_default()
}

#[test]
fn fifty_reloads_under_load_fail_no_request() {
    let backend = Backend::echo("app");
    let gw = Gateway::start(&app(&backend, ""));
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let reloading = Arc::new(AtomicBool::new(false));
    let latencies: Arc<Mutex<(Vec<Duration>, Vec<Duration>)>> = Arc::default();
    let url = gw.url("/a/x");
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let (stop, failed, reloading, latencies, url) = (
                stop.clone(),
                failed.clone(),
                reloading.clone(),
                latencies.clone(),
                url.clone(),
            );
            std::thread::spawn(move || {
                let keepalive = client();
                while !stop.load(Ordering::Relaxed) {
                    let during = reloading.load(Ordering::Relaxed);
                    let started = Instant::now();
                    // One worker opens a new connection per request, two keep theirs.
                    let result = if i == 0 {
                        client().get(&url).header("connection", "close").send()
                    } else {
                        keepalive.get(&url).send()
                    };
                    let took = started.elapsed();
                    match result.and_then(|r| r.error_for_status()) {
                        Ok(_) => {
                            let mut l = latencies.lock().unwrap();
                            if during || reloading.load(Ordering::Relaxed) {
                                l.0.push(took);
                            } else {
                                l.1.push(took);
                            }
                        }
                        Err(e) => {
                            eprintln!("failed: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    wait_for(Duration::from_secs(10), || {
        (backend.hits() > 50).then_some(())
    })
    .unwrap();
    for i in 0..50 {
        let with_b = i % 2 == 0;
        gw.rewrite_config(&app(&backend, if with_b { ROUTE_B } else { "" }));
        reloading.store(true, Ordering::Relaxed);
        let (code, body) = gw.reload();
        reloading.store(false, Ordering::Relaxed);
        assert_eq!(code, 200, "reload {i}: {body}");
        assert_eq!(body["generation"], i + 2);
        // The added route answers at once; the removed one is gone at once.
        let b = status(&gw.url("/b/x"));
        assert_eq!(b, if with_b { 200 } else { 404 }, "after reload {i}");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let (during, without) = std::mem::take(&mut *latencies.lock().unwrap());
    eprintln!(
        "50 reloads under load: {} requests during reloads (p99 {:?}), {} outside (p99 {:?})",
        during.len(),
        p99(during.clone()),
        without.len(),
        p99(without.clone())
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    let m = gw.metrics();
    assert_eq!(
        metric(&m, "tollgate_config_reloads_total", &[("result", "ok")]),
        Some(50.0)
    );
    assert_eq!(metric(&m, "tollgate_config_generation", &[]), Some(51.0));
    let health = gw.health();
    assert_eq!(health["config"]["generation"], 51);
    assert_eq!(health["config"]["sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn a_broken_file_keeps_the_running_config_and_names_file_and_key() {
    let backend = Backend::echo("app");
    let gw = Gateway::start(&app(&backend, ""));
    let before = gw.health()["config"]["sha256"].clone();
    gw.rewrite_config(&app(
        &backend,
        "[[routes]]\nname = \"b\"\npath_prefix = \"/b\"\nupstream = \"ghost\"\n[[routes]]\nname = \"c\"\nupstream = \"app\"\nretries = 99",
    ));
    let (code, body) = gw.reload();
    assert_eq!(code, 400, "{body}");
    let file = gw.config_path.display().to_string();
    assert_eq!(body["file"], file);
    let problems = body["problems"].as_array().unwrap();
    let keys: Vec<&str> = problems
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert!(keys.contains(&"routes[1].upstream"), "{body}");
    assert!(
        keys.contains(&"routes[2].retries"),
        "every problem at once: {body}"
    );
    assert_eq!(status(&gw.url("/a/x")), 200, "the old config serves");
    assert_eq!(status(&gw.url("/b/x")), 404);
    assert_eq!(gw.health()["config"]["sha256"], before);
    // A syntax error, by signal this time: logged with the file, counted.
    std::fs::write(&gw.config_path, "[[routes]\nname = ").unwrap();
    gw.signal("HUP");
    wait_for(Duration::from_secs(10), || {
        metric(
            &gw.metrics(),
            "tollgate_config_reloads_total",
            &[("result", "error")],
        )
        .filter(|n| *n >= 2.0)
    })
    .expect("the failed SIGHUP reload is counted");
    let stderr = gw.stderr();
    assert!(
        stderr.contains(&format!("{file}: routes[1].upstream")),
        "{stderr}"
    );
    assert!(stderr.contains("invalid TOML"), "{stderr}");
    assert_eq!(status(&gw.url("/a/x")), 200);
}

#[test]
fn sighup_and_dash_s_reload_apply_the_new_file() {
    let backend = Backend::echo("app");
    let gw = Gateway::start(&app(&backend, ""));
    gw.rewrite_config(&app(&backend, ROUTE_B));
    gw.signal("HUP");
    wait_for(Duration::from_secs(10), || {
        (status(&gw.url("/b/x")) == 200).then_some(())
    })
    .expect("SIGHUP applied the new route");
    gw.rewrite_config(&app(&backend, ""));
    let out = std::process::Command::new(tollgate_bin())
        .args(["-s", "reload", "-c"])
        .arg(&gw.config_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&gw.pid().to_string()));
    wait_for(Duration::from_secs(10), || {
        (status(&gw.url("/b/x")) == 404).then_some(())
    })
    .expect("tollgate -s reload applied the new file");
    assert_eq!(gw.health()["config"]["generation"], 3);
}

#[test]
fn a_listener_change_is_refused_by_name() {
    let backend = Backend::echo("app");
    let gw = Gateway::start(&app(&backend, ""));
    let moved = format!("127.0.0.1:{}", free_port());
    let config = format!("{PREAMBLE}\n{}", app(&backend, ROUTE_B))
        .replacen(
            "address = \"{listen}\"",
            &format!("address = \"{moved}\""),
            1,
        )
        .replace("threads = 2", "threads = 1");
    gw.rewrite_config_full(&config);
    let (code, body) = gw.reload();
    assert_eq!(code, 400, "{body}");
    let keys: Vec<&str> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["server.threads", "listeners[0].address"], "{body}");
    assert!(body["problems"][1]["problem"]
        .as_str()
        .unwrap()
        .contains("apply it with an upgrade (tollgate -u)"));
    assert_eq!(status(&gw.url("/b/x")), 404, "nothing of the file applied");
}

fn limited(backend: &Backend, limit: u64, extra: &str) -> String {
    app(
        backend,
        &format!(
            "[[routes]]\nname = \"limited\"\npath_prefix = \"/limited\"\nupstream = \"app\"\nrate_limits = [{{ limit = {limit}, window = \"1m\" }}]\n{extra}"
        ),
    )
}

#[test]
fn a_client_at_its_limit_stays_limited_until_the_limit_changes() {
    let backend = Backend::echo("app");
    let gw = Gateway::start(&limited(&backend, 3, ""));
    let url = gw.url("/limited/x");
    for _ in 0..3 {
        assert_eq!(status(&url), 200);
    }
    assert_eq!(status(&url), 429);
    // A reload that adds a route but leaves the window alone.
    gw.rewrite_config(&limited(&backend, 3, ROUTE_B));
    assert_eq!(gw.reload().0, 200);
    assert_eq!(status(&gw.url("/b/x")), 200);
    assert_eq!(status(&url), 429, "still limited after the reload");
    // A reload that changes the limit starts that window afresh.
    gw.rewrite_config(&limited(&backend, 5, ROUTE_B));
    assert_eq!(gw.reload().0, 200);
    for _ in 0..5 {
        assert_eq!(status(&url), 200);
    }
    assert_eq!(status(&url), 429);
}

#[test]
fn cached_entries_and_unhealthy_targets_survive_a_reload() {
    let backend = Backend::echo("app");
    let healthy = Backend::echo("healthy");
    let sick = Backend::echo("sick");
    let config = |extra: &str| {
        format!(
            r#"
[upstreams.app]
targets = [{{ address = "{app}" }}]

[upstreams.pair]
targets = [{{ address = "{healthy}" }}, {{ address = "{sick}" }}]
[upstreams.pair.health_check]
path = "/healthz"
interval = "100ms"
healthy_threshold = 50
unhealthy_threshold = 1

[[routes]]
name = "cached"
path_prefix = "/cached"
upstream = "app"
[routes.cache]
ttl = "60s"

[[routes]]
name = "pair"
path_prefix = "/pair"
upstream = "pair"
{extra}
"#,
            app = backend.addr,
            healthy = healthy.addr,
            sick = sick.addr
        )
    };
    let gw = Gateway::start(&config(""));
    let get = |path: &str| client().get(gw.url(path)).send().unwrap();
    assert_eq!(get("/cached/x").headers()["x-cache"], "MISS");
    assert_eq!(get("/cached/x").headers()["x-cache"], "HIT");
    sick.set_healthy(false);
    let target_healthy = |addr: &str| {
        gw.health()["upstreams"]["pair"]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["address"] == addr)
            .map(|t| t["healthy"].as_bool().unwrap())
    };
    let sick_addr = sick.addr.to_string();
    wait_for(Duration::from_secs(10), || {
        (target_healthy(&sick_addr) == Some(false)).then_some(())
    })
    .expect("the health check takes the sick target out");
    // It answers again, but needs 50 good checks (5 s) to come back: a reload must not
    // reset it to healthy.
    sick.set_healthy(true);
    gw.rewrite_config(&config(ROUTE_B.replace("\"app\"", "\"pair\"").as_str()));
    assert_eq!(gw.reload().0, 200);
    assert_eq!(
        target_healthy(&sick_addr),
        Some(false),
        "still out right after the reload"
    );
    let sick_before = sick.hits();
    for _ in 0..20 {
        assert_eq!(get("/pair/x").status(), 200);
    }
    assert_eq!(
        sick.hits(),
        sick_before,
        "no request reached the unhealthy target"
    );
    assert_eq!(
        get("/cached/x").headers()["x-cache"],
        "HIT",
        "the entry outlived the reload"
    );
    assert_eq!(backend.hits(), 1);
}

/// A WebSocket-speaking backend: answers the upgrade with 101, then echoes every byte.
fn websocket_echo() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let key = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("Sec-WebSocket-Key: ")
                            .or(l.strip_prefix("sec-websocket-key: "))
                    })
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let accept = openssl::base64::encode_block(&openssl::sha::sha1(
                    format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
                ));
                let reply = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
                if s.write_all(reply.as_bytes()).is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A backend whose response streams: the head and a first chunk, then the rest when told.
fn streaming() -> (std::net::SocketAddr, mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let _ =
            s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst \r\n");
        let _ = rx.recv_timeout(Duration::from_secs(20));
        let _ = s.write_all(b"4\r\nlast\r\n0\r\n\r\n");
        std::thread::sleep(Duration::from_millis(200));
    });
    (addr, tx)
}

#[test]
fn open_websocket_and_streaming_connections_outlive_reloads() {
    let ws = websocket_echo();
    let (stream_addr, finish) = streaming();
    let config = |extra: &str| {
        format!(
            r#"
[upstreams.ws]
targets = [{{ address = "{ws}" }}]
read_timeout = "30s"
[upstreams.stream]
targets = [{{ address = "{stream_addr}" }}]
read_timeout = "30s"

[[routes]]
name = "ws"
path_prefix = "/ws"
upstream = "ws"

[[routes]]
name = "stream"
path_prefix = "/stream"
upstream = "stream"
{extra}
"#
        )
    };
    let gw = Gateway::start(&config(""));
    let mut sock = TcpStream::connect(gw.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.write_all(b"GET /ws/chat HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(sock.read(&mut byte).unwrap(), 1, "upgrade answer");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    let echo = |sock: &mut TcpStream, msg: &[u8]| {
        sock.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        sock.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    };
    echo(&mut sock, b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");

    let mut streamed = TcpStream::connect(gw.addr).unwrap();
    streamed
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    streamed
        .write_all(b"GET /stream/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut first = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&first).contains("first") {
        let n = streamed.read(&mut buf).unwrap();
        assert!(n > 0, "the stream started");
        first.extend_from_slice(&buf[..n]);
    }

    for i in 0..10 {
        let extra = if i % 2 == 0 {
            ROUTE_B.replace("\"app\"", "\"ws\"")
        } else {
            String::new()
        };
        gw.rewrite_config(&config(&extra));
        assert_eq!(gw.reload().0, 200, "reload {i}");
        echo(&mut sock, format!("after reload {i}").as_bytes());
    }
    finish.send(()).unwrap();
    let mut rest = Vec::new();
    streamed.read_to_end(&mut rest).unwrap();
    let whole = String::from_utf8_lossy(&[first, rest].concat()).to_string();
    assert!(
        whole.contains("first") && whole.contains("last") && whole.ends_with("0\r\n\r\n"),
        "{whole}"
    );
}

fn served_common_name(gw: &Gateway) -> String {
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
    b.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let tls = b
        .build()
        .connect("tls.test", TcpStream::connect(gw.addr).unwrap())
        .unwrap();
    tls.ssl()
        .peer_certificate()
        .unwrap()
        .subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .unwrap()
        .data()
        .to_string()
        .unwrap()
}

#[test]
fn a_certificate_replaced_on_disk_is_served_after_a_reload() {
    let pki = tempfile::tempdir().unwrap();
    let (crt, key) = self_signed(pki.path(), "first");
    let config = format!(
        "{}\n[[routes]]\nname = \"ok\"\nrespond = {{ status = 200, body = \"ok\" }}\n",
        tls_preamble(&crt, &key)
    );
    let gw = Gateway::start_full(&config).unwrap();
    assert_eq!(served_common_name(&gw), "first");
    self_signed(pki.path(), "renewed");
    assert_eq!(
        served_common_name(&gw),
        "first",
        "nothing is re-read before the reload"
    );
    let (code, body) = gw.reload();
    assert_eq!(code, 200, "{body}");
    assert_eq!(served_common_name(&gw), "renewed");
}

/// A Kubernetes ConfigMap volume: `tollgate.toml -> ..data/tollgate.toml`, `..data -> ..TS`.
/// An update writes a new `..TS2`, swaps `..data` atomically and deletes `..TS`.
fn configmap_update(volume: &std::path::Path, generation: u32, text: &str) {
    let stamp = volume.join(format!("..2026_12_01_{generation}"));
    std::fs::create_dir(&stamp).unwrap();
    std::fs::write(stamp.join("tollgate.toml"), text).unwrap();
    let tmp = volume.join("..data_tmp");
    std::os::unix::fs::symlink(stamp.file_name().unwrap(), &tmp).unwrap();
    let old = std::fs::read_link(volume.join("..data")).ok();
    std::fs::rename(&tmp, volume.join("..data")).unwrap();
    if let Some(old) = old {
        std::fs::remove_dir_all(volume.join(old)).unwrap();
    }
}

#[test]
fn reload_after_a_configmap_update_reads_the_new_file_not_the_deleted_target() {
    let backend = Backend::echo("app");
    let config = format!("{PREAMBLE}\n{}", app(&backend, ""));
    let gw = Gateway::start_written(&config, |dir, text| {
        let volume = dir.join("config");
        std::fs::create_dir(&volume)?;
        configmap_update(&volume, 1, text);
        let link = volume.join("tollgate.toml");
        std::os::unix::fs::symlink("..data/tollgate.toml", &link)?;
        Ok(link)
    })
    .unwrap();
    assert_eq!(status(&gw.url("/b/x")), 404);
    let text = format!("{PREAMBLE}\n{}", app(&backend, ROUTE_B))
        .replace("{dir}", &gw.dir.path().display().to_string())
        .replace("{listen}", &gw.addr.to_string())
        .replace("{admin}", &gw.admin.to_string());
    configmap_update(&gw.dir.path().join("config"), 2, &text);
    let (code, answer) = gw.reload();
    assert_eq!(code, 200, "{answer}");
    assert_eq!(status(&gw.url("/b/x")), 200);
}
