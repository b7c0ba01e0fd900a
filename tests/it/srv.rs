//! Targets from DNS SRV records served by a real `dnsmasq` on loopback: weights followed,
//! priority failover when the lower-priority targets die, a record change picked up after
//! its TTL, and the last good set kept while the name server is gone.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NAME: &str = "_http._tcp.orders.test";

/// A dnsmasq answering `records` (`(host, port, priority, weight)` under [`NAME`], every
/// host at 127.0.0.1) on `port`, with a TTL of `ttl` seconds. Killed by pid when dropped.
struct Dns {
    child: Child,
    port: u16,
}

impl Dns {
    fn start(port: u16, ttl: u32, records: &[(&str, u16, u16, u16)]) -> Dns {
        let hosts: Vec<(&str, &str)> = records.iter().map(|r| (r.0, "127.0.0.1")).collect();
        Self::start_with(port, ttl, records, &hosts)
    }

    /// SRV `records` and address records `hosts` (`(name, ip)`).
    fn start_with(
        port: u16,
        ttl: u32,
        records: &[(&str, u16, u16, u16)],
        hosts: &[(&str, &str)],
    ) -> Dns {
        let mut cmd = Command::new(dnsmasq());
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--pid-file=",
            "--log-facility=-",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--local-ttl={ttl}"));
        for (host, p, prio, weight) in records {
            cmd.arg(format!("--srv-host={NAME},{host},{p},{prio},{weight}"));
        }
        for (host, ip) in hosts {
            cmd.arg(format!("--host-record={host},{ip}"));
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dnsmasq (scripts/setup.sh installs dnsmasq-base)");
        // dnsmasq says "started" once its sockets are bound.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("started") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("dnsmasq started");
        Dns { child, port }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dnsmasq() -> &'static str {
    if std::path::Path::new("/usr/sbin/dnsmasq").exists() {
        "/usr/sbin/dnsmasq"
    } else {
        "dnsmasq"
    }
}

/// A port free for both UDP and TCP on 127.0.0.1.
fn dns_port() -> u16 {
    loop {
        let port = free_port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn gateway(dns: &Dns, health: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[resolver]
nameservers = ["127.0.0.1:{}"]
min_ttl = "100ms"

[upstreams.orders]
srv = "{NAME}"
{health}

[[routes]]
name = "orders"
path_prefix = "/"
upstream = "orders"
retries = 1
"#,
        dns.port
    ))
}

fn served_by(gw: &Gateway, c: &reqwest::blocking::Client) -> Option<String> {
    let r = c.get(gw.url("/x")).send().ok()?;
    if !r.status().is_success() {
        return None;
    }
    let v: serde_json::Value = r.json().ok()?;
    v["backend"].as_str().map(str::to_string)
}

#[test]
fn srv_weights_are_followed_within_five_percent() {
    let a = Backend::echo("a");
    let b = Backend::echo("b");
    let dns = Dns::start(
        dns_port(),
        30,
        &[
            ("a.orders.test", a.addr.port(), 0, 30),
            ("b.orders.test", b.addr.port(), 0, 10),
        ],
    );
    let gw = gateway(&dns, "");
    let h = gw.health();
    assert_eq!(h["upstreams"]["orders"]["discovery"]["provider"], "srv");
    assert_eq!(h["upstreams"]["orders"]["discovery"]["targets"], 2, "{h}");
    let c = client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..10_000 {
        *counts.entry(served_by(&gw, &c).unwrap()).or_default() += 1;
    }
    let share = counts["a"] as f64 / 10_000.0;
    assert!((share - 0.75).abs() < 0.05, "{counts:?}");
}

#[test]
fn srv_priority_fails_over_when_the_lower_priority_targets_die() {
    let a = Backend::echo("a");
    let b = Backend::echo("b");
    // Nothing listens here: a priority-0 target that refuses every connection.
    let dead = free_port();
    let dns = Dns::start(
        dns_port(),
        30,
        &[
            ("a.orders.test", a.addr.port(), 0, 10),
            ("dead.orders.test", dead, 0, 10),
            ("b.orders.test", b.addr.port(), 1, 10),
        ],
    );
    let gw = gateway(
        &dns,
        r#"[upstreams.orders.health_check]
path = "/healthz"
interval = "200ms"
healthy_threshold = 1
unhealthy_threshold = 1"#,
    );
    let c = client();
    // Priority 0 only; the dead target is out after its first failed check.
    wait_for(Duration::from_secs(5), || {
        let h = gw.health();
        let targets = h["upstreams"]["orders"]["targets"].as_array().cloned()?;
        let dead_out = targets
            .iter()
            .any(|t| t["address"] == format!("127.0.0.1:{dead}") && t["healthy"] == false);
        dead_out.then_some(())
    })
    .expect("the dead target taken out");
    for _ in 0..50 {
        assert_eq!(served_by(&gw, &c).as_deref(), Some("a"), "priority 0 only");
    }
    assert_eq!(b.hits(), 0);

    // Every priority-0 target down: priority 1 serves, with no failed request.
    a.set_healthy(false);
    wait_for(Duration::from_secs(5), || {
        (served_by(&gw, &c).as_deref() == Some("b")).then_some(())
    })
    .expect("failover to priority 1");
    for _ in 0..20 {
        assert_eq!(served_by(&gw, &c).as_deref(), Some("b"));
    }
    // And back when priority 0 recovers.
    a.set_healthy(true);
    wait_for(Duration::from_secs(5), || {
        (served_by(&gw, &c).as_deref() == Some("a")).then_some(())
    })
    .expect("back to priority 0");
}

#[test]
fn a_refused_connection_is_retried_on_the_next_priority() {
    let b = Backend::echo("b");
    let dead = free_port();
    let dns = Dns::start(
        dns_port(),
        30,
        &[
            ("dead.orders.test", dead, 0, 10),
            ("b.orders.test", b.addr.port(), 1, 10),
        ],
    );
    // No health check: the only way to b is the retry after the refused connection.
    let gw = gateway(&dns, "");
    let c = client();
    for _ in 0..10 {
        assert_eq!(served_by(&gw, &c).as_deref(), Some("b"));
    }
}

#[test]
fn srv_record_change_is_picked_up_after_its_ttl_and_dns_down_keeps_the_set() {
    let a = Backend::echo("a");
    let b = Backend::echo("b");
    let port = dns_port();
    let dns = Dns::start(port, 1, &[("a.orders.test", a.addr.port(), 0, 10)]);
    let gw = gateway(&dns, "");
    let c = client();
    assert_eq!(served_by(&gw, &c).as_deref(), Some("a"));

    // The record changes (dnsmasq restarted with new data on the same port).
    drop(dns);
    let changed = Instant::now();
    let dns = Dns::start(port, 1, &[("b.orders.test", b.addr.port(), 0, 10)]);
    let moved = wait_for(Duration::from_secs(10), || {
        (served_by(&gw, &c).as_deref() == Some("b")).then(|| changed.elapsed())
    })
    .expect("the new record applied");
    eprintln!("SRV record change to traffic moved: {moved:?} (TTL 1s)");
    assert!(moved < Duration::from_secs(5), "{moved:?}");

    // The name server goes away: the last set keeps serving, and /health says why.
    drop(dns);
    let error = wait_for(Duration::from_secs(10), || {
        gw.health()["upstreams"]["orders"]["discovery"]["error"]
            .as_str()
            .map(str::to_string)
    })
    .expect("the failed lookup is reported");
    assert!(error.contains(NAME), "{error}");
    for _ in 0..10 {
        assert_eq!(served_by(&gw, &c).as_deref(), Some("b"));
    }
}

#[test]
fn a_names_follow_their_ttl_through_the_configured_name_server() {
    // Two backends on one port, on two loopback addresses.
    let a = Backend::echo("a");
    let port = a.addr.port();
    let b = Backend::echo_on("b", "127.0.0.2", port);
    let dns_at = dns_port();
    let dns = Dns::start_with(dns_at, 1, &[], &[("svc.orders.test", "127.0.0.1")]);
    // dns_refresh is an hour: only the record's 1 s TTL can move the traffic.
    let gw = Gateway::start(&format!(
        r#"
[resolver]
nameservers = ["127.0.0.1:{dns_at}"]
min_ttl = "100ms"

[upstreams.svc]
targets = [{{ address = "svc.orders.test:{port}" }}]
dns_refresh = "1h"

[[routes]]
name = "svc"
path_prefix = "/"
upstream = "svc"
"#
    ));
    let c = client();
    assert_eq!(served_by(&gw, &c).as_deref(), Some("a"));
    drop(dns);
    let changed = Instant::now();
    let _dns = Dns::start_with(dns_at, 1, &[], &[("svc.orders.test", "127.0.0.2")]);
    let moved = wait_for(Duration::from_secs(10), || {
        (served_by(&gw, &c).as_deref() == Some("b")).then(|| changed.elapsed())
    })
    .expect("the new address applied within its TTL");
    eprintln!("A record change to traffic moved: {moved:?} (TTL 1s, dns_refresh 1h)");
    assert!(moved < Duration::from_secs(5), "{moved:?}");
    drop(b);
}

#[test]
fn bad_srv_and_resolver_settings_fail_the_check() {
    let (code, out) = check_config(&format!(
        "{PREAMBLE}\n[resolver]\nnameservers = [\"dns.example\"]\n[upstreams.o]\nsrv = \"not a name\"\n[[routes]]\nname = \"r\"\nupstream = \"o\"\n"
    ));
    assert_ne!(code, 0);
    for want in ["resolver.nameservers[0]", "upstreams.o.srv"] {
        assert!(out.contains(want), "{want}: {out}");
    }
}
