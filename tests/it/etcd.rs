//! Targets from a real etcd (Debian's `etcd-server`, installed by `scripts/setup.sh`):
//! instances registered and deregistered reach the traffic through the watch, a lease expiry
//! removes its instance, and etcd stopped keeps the last set serving until it is back.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PREFIX: &str = "/services/orders/";

/// A single-member etcd on loopback ports, its data in `dir`. Killed by pid when dropped.
struct Etcd {
    child: Child,
    url: String,
}

impl Etcd {
    fn start(dir: &std::path::Path, client: u16, peer: u16) -> Etcd {
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(dir)
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("t={peer_url}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (scripts/setup.sh installs etcd-server)");
        let etcd = Etcd { child, url };
        wait_for(Duration::from_secs(20), || {
            etcd.call("/v3/kv/range", serde_json::json!({"key": b64("x")}))
                .ok()
        })
        .expect("etcd answers");
        etcd
    }

    fn call(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value, String> {
        let r = client()
            .post(format!("{}{path}", self.url))
            .body(body.to_string())
            .timeout(Duration::from_secs(2))
            .send()
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(r.status().to_string());
        }
        r.json().map_err(|e| e.to_string())
    }

    /// Register `name` at `addr`, with a lease of `ttl` seconds when given.
    fn register(&self, name: &str, addr: std::net::SocketAddr, ttl: Option<u64>) {
        let mut put = serde_json::json!({
            "key": b64(&format!("{PREFIX}{name}")),
            "value": b64(&serde_json::json!({"address": addr.to_string(), "weight": 1}).to_string()),
        });
        if let Some(ttl) = ttl {
            let lease = self
                .call("/v3/lease/grant", serde_json::json!({"TTL": ttl}))
                .unwrap();
            put["lease"] = lease["ID"].clone();
        }
        self.call("/v3/kv/put", put).unwrap();
    }

    fn deregister(&self, name: &str) {
        self.call(
            "/v3/kv/deleterange",
            serde_json::json!({"key": b64(&format!("{PREFIX}{name}"))}),
        )
        .unwrap();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn gateway(etcd_url: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[upstreams.orders]
[upstreams.orders.etcd]
endpoints = ["{etcd_url}"]
prefix = "{PREFIX}"

[[routes]]
name = "orders"
path_prefix = "/"
upstream = "orders"
"#
    ))
}

/// The backends that answered `n` requests.
fn answering(gw: &Gateway, n: usize) -> HashSet<String> {
    let c = client();
    (0..n)
        .filter_map(|_| {
            let r = c.get(gw.url("/x")).send().ok()?;
            let v: serde_json::Value = r.json().ok()?;
            v["backend"].as_str().map(str::to_string)
        })
        .collect()
}

fn set(names: &[&str]) -> HashSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn etcd_instances_come_and_go_through_the_watch() {
    let a = Backend::echo("a");
    let b = Backend::echo("b");
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path(), free_port(), free_port());
    etcd.register("a", a.addr, None);
    let gw = gateway(&etcd.url);
    assert_eq!(answering(&gw, 4), set(&["a"]));
    let h = gw.health();
    assert_eq!(
        h["upstreams"]["orders"]["discovery"]["provider"], "etcd",
        "{h}"
    );

    let registered = Instant::now();
    etcd.register("b", b.addr, None);
    let took = wait_for(Duration::from_secs(5), || {
        (answering(&gw, 4) == set(&["a", "b"])).then(|| registered.elapsed())
    })
    .expect("the registered instance gets traffic");
    eprintln!("etcd register to traffic: {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");

    let removed = Instant::now();
    etcd.deregister("a");
    let took = wait_for(Duration::from_secs(5), || {
        (answering(&gw, 4) == set(&["b"])).then(|| removed.elapsed())
    })
    .expect("the deregistered instance leaves");
    eprintln!("etcd deregister to traffic gone: {took:?}");
}

#[test]
fn a_lease_expiry_removes_its_instance() {
    let a = Backend::echo("a");
    let b = Backend::echo("b");
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path(), free_port(), free_port());
    etcd.register("a", a.addr, None);
    etcd.register("b", b.addr, Some(2));
    let gw = gateway(&etcd.url);
    assert_eq!(answering(&gw, 4), set(&["a", "b"]));
    // Nobody keeps the lease alive: etcd deletes the key when it expires.
    wait_for(Duration::from_secs(15), || {
        (answering(&gw, 4) == set(&["a"])).then_some(())
    })
    .expect("the expired instance leaves");
}

#[test]
fn etcd_stopped_keeps_the_last_set_and_a_restart_resumes_the_watch() {
    let a = Backend::echo("a");
    let b = Backend::echo("b");
    let dir = tempfile::tempdir().unwrap();
    let (client_port, peer_port) = (free_port(), free_port());
    let etcd = Etcd::start(dir.path(), client_port, peer_port);
    etcd.register("a", a.addr, None);
    let gw = gateway(&etcd.url);
    assert_eq!(answering(&gw, 4), set(&["a"]));

    drop(etcd);
    let error = wait_for(Duration::from_secs(10), || {
        gw.health()["upstreams"]["orders"]["discovery"]["error"]
            .as_str()
            .map(str::to_string)
    })
    .expect("etcd down is reported");
    assert!(error.contains("127.0.0.1"), "{error}");
    assert_eq!(
        metric(
            &gw.metrics(),
            "tollgate_upstream_discovery_failing",
            &[("upstream", "orders")]
        ),
        Some(1.0)
    );
    assert_eq!(answering(&gw, 10), set(&["a"]), "the last set serves");

    // Back (same data): the watch resumes and sees what is registered now.
    let etcd = Etcd::start(dir.path(), client_port, peer_port);
    etcd.register("b", b.addr, None);
    wait_for(Duration::from_secs(15), || {
        (answering(&gw, 4) == set(&["a", "b"])).then_some(())
    })
    .expect("the watch resumed");
    wait_for(Duration::from_secs(5), || {
        gw.health()["upstreams"]["orders"]["discovery"]["error"]
            .is_null()
            .then_some(())
    })
    .expect("the error clears");
}

#[test]
fn bad_etcd_settings_fail_the_check() {
    let (code, out) = check_config(&format!(
        "{PREAMBLE}\n[upstreams.o]\n[upstreams.o.etcd]\nendpoints = [\"127.0.0.1:2379\"]\nprefix = \"\"\n[[routes]]\nname = \"r\"\nupstream = \"o\"\n"
    ));
    assert_ne!(code, 0);
    assert!(out.contains("upstreams.o.etcd.endpoints[0]"), "{out}");
    assert!(out.contains("upstreams.o.etcd.prefix"), "{out}");
}
