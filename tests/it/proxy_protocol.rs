//! `[listeners.proxy_protocol]`: v1 and v2 headers on plain and TLS listeners; the client's
//! address from the header in IP rules, rate limits, `X-Forwarded-For` and the access log;
//! headers believed only from `from`; connections without one refused when required.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn listener(
    from: &str,
    required: bool,
    tls: Option<(&std::path::Path, &std::path::Path)>,
) -> String {
    let tls = tls.map_or(String::new(), |(c, k)| {
        format!(
            "[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
            c.display(),
            k.display()
        )
    });
    format!(
        r#"
[server]
threads = 2
pid_file = "{{dir}}/tollgate.pid"
upgrade_sock = "{{dir}}/upgrade.sock"
grace_period = "1s"
graceful_shutdown_timeout = "1s"

[[listeners]]
address = "{{listen}}"
{tls}[listeners.proxy_protocol]
from = ["{from}"]
required = {required}

[admin]
address = "{{admin}}"

[access_log]
target = "{{dir}}/access.log"

[limits]
header_timeout = "1s"
"#
    )
}

fn routes(backend: &Backend) -> String {
    format!(
        r#"
[upstreams.app]
targets = [{{ address = "{}" }}]

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
ip_deny = ["203.0.113.0/24"]

[[routes]]
name = "limited"
path_prefix = "/limited"
upstream = "app"
rate_limits = [{{ limit = 1, window = "60s", key = "ip" }}]
"#,
        backend.addr
    )
}

fn start(from: &str, required: bool, backend: &Backend) -> Gateway {
    Gateway::start_full(&format!(
        "{}{}",
        listener(from, required, None),
        routes(backend)
    ))
    .unwrap_or_else(|e| panic!("gateway did not start: {e}"))
}

fn v1(client: &str) -> Vec<u8> {
    let c: SocketAddr = client.parse().unwrap();
    let family = if c.is_ipv4() { "TCP4" } else { "TCP6" };
    let dst = if c.is_ipv4() {
        "10.0.0.1"
    } else {
        "2001:db8::1"
    };
    format!("PROXY {family} {} {dst} {} 443\r\n", c.ip(), c.port()).into_bytes()
}

fn v2(client: &str) -> Vec<u8> {
    let src: SocketAddr = client.parse().unwrap();
    let dst: SocketAddr = "10.0.0.1:443".parse().unwrap();
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (src, dst),
    )
    .write_tlv(ppp::v2::Type::NoOp, b"padding")
    .unwrap()
    .build()
    .unwrap()
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Status code and body of one raw exchange.
fn exchange(gw: &Gateway, preamble: &[u8], path: &str) -> (u16, String) {
    let reply = raw_request(
        gw.addr,
        &[preamble, &get(path)].concat(),
        Duration::from_secs(5),
    );
    parse(&reply)
}

fn parse(reply: &str) -> (u16, String) {
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn forwarded_for(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["headers"]["x-forwarded-for"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Whether the gateway closed the connection without a byte of HTTP.
fn closed_silently(gw: &Gateway, first: &[u8]) -> bool {
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(first);
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

#[test]
fn v1_and_v2_client_address_reaches_upstream_rules_and_logs() {
    let b = Backend::echo("app");
    let gw = start("127.0.0.0/8", true, &b);
    for (preamble, client) in [
        (v1("198.51.100.7:40000"), "198.51.100.7"),
        (v2("198.51.100.8:40001"), "198.51.100.8"),
        (v1("[2001:db8::7]:40002"), "2001:db8::7"),
    ] {
        let (status, body) = exchange(&gw, &preamble, "/echo");
        assert_eq!(status, 200, "{body}");
        assert_eq!(forwarded_for(&body), client);
        gw.wait_access_log(|e| e["client_ip"] == client && e["status"] == 200);
    }
    // The route's IP rule sees the client from the header, not the balancer.
    let (status, _) = exchange(&gw, &v1("203.0.113.9:1234"), "/echo");
    assert_eq!(status, 403);
    // Rate limits are keyed by that client too: one client spends its own quota only.
    assert_eq!(exchange(&gw, &v2("192.0.2.1:1"), "/limited").0, 200);
    assert_eq!(exchange(&gw, &v2("192.0.2.1:2"), "/limited").0, 429);
    assert_eq!(exchange(&gw, &v2("192.0.2.2:1"), "/limited").0, 200);
    // A v2 LOCAL header (the balancer's own health check) keeps the peer address.
    let local = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Local,
        ppp::v2::Protocol::Unspecified,
        ppp::v2::Addresses::Unspecified,
    )
    .build()
    .unwrap();
    let (status, body) = exchange(&gw, &local, "/echo");
    assert_eq!(status, 200);
    assert_eq!(forwarded_for(&body), "127.0.0.1");
}

#[test]
fn header_arriving_in_pieces_is_read_whole_and_nothing_after_it_is_lost() {
    let b = Backend::echo("app");
    let gw = start("127.0.0.0/8", true, &b);
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let header = v1("198.51.100.20:5555");
    // Header split mid-way, the rest of it sent together with the request and a second one.
    s.write_all(&header[..9]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut rest = header[9..].to_vec();
    rest.extend_from_slice(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    s.write_all(&rest).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
    let paths: Vec<_> = b.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/one", "/two"]);
    assert!(b
        .requests()
        .iter()
        .all(|r| r.header("x-forwarded-for") == Some("198.51.100.20")));
}

#[test]
fn v2_header_before_tls_on_a_tls_listener() {
    let b = Backend::echo("app");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "tls.test");
    let gw = Gateway::start_full(&format!(
        "{}{}",
        listener("127.0.0.0/8", true, Some((&cert, &key))),
        routes(&b)
    ))
    .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    for preamble in [v2("198.51.100.30:7000"), v1("198.51.100.30:7000")] {
        let mut tcp = TcpStream::connect(gw.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.write_all(&preamble).unwrap();
        let mut c = SslConnector::builder(SslMethod::tls()).unwrap();
        c.set_verify(SslVerifyMode::NONE);
        let mut tls = c.build().connect("tls.test", tcp).unwrap();
        tls.write_all(&get("/echo")).unwrap();
        let mut out = String::new();
        let _ = tls.read_to_string(&mut out);
        let (status, body) = parse(&out);
        assert_eq!(status, 200, "{out}");
        assert_eq!(forwarded_for(&body), "198.51.100.30");
    }
    // Without the header, the TLS handshake never starts.
    let tcp = TcpStream::connect(gw.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut c = SslConnector::builder(SslMethod::tls()).unwrap();
    c.set_verify(SslVerifyMode::NONE);
    assert!(c.build().connect("tls.test", tcp).is_err());
}

#[test]
fn required_listener_refuses_missing_malformed_late_and_untrusted() {
    let b = Backend::echo("app");
    let gw = start("127.0.0.0/8", true, &b);
    assert!(closed_silently(&gw, &get("/echo")), "no header");
    assert!(closed_silently(
        &gw,
        b"PROXY TCP4 1.2.3.4 nonsense\r\nGET / HTTP/1.1\r\n\r\n"
    ));
    assert!(
        closed_silently(&gw, b"PROXY TCP4 1.2.3"),
        "header never finished"
    );
    let metrics = gw.metrics();
    for reason in ["missing", "malformed", "timeout"] {
        assert_eq!(
            metric(
                &metrics,
                "tollgate_proxy_protocol_refused_total",
                &[("reason", reason)]
            ),
            Some(1.0),
            "{reason}: {metrics}"
        );
    }
    assert_eq!(b.hits(), 0);

    // A peer outside `from` is refused even with a well-formed header.
    let gw = start("192.0.2.0/24", true, &b);
    let untrusted = || {
        metric(
            &gw.metrics(),
            "tollgate_proxy_protocol_refused_total",
            &[("reason", "untrusted_peer")],
        )
        .unwrap_or(0.0)
    };
    // The harness's readiness probes come from 127.0.0.1 too, and are refused as well,
    // counted as they are processed: start from a count that has settled.
    let before = wait_for(Duration::from_secs(5), || {
        let a = untrusted();
        std::thread::sleep(Duration::from_millis(300));
        (untrusted() == a).then_some(a)
    })
    .expect("the count settles");
    assert!(closed_silently(
        &gw,
        &[v1("198.51.100.1:1"), get("/echo")].concat()
    ));
    wait_for(Duration::from_secs(5), || {
        (untrusted() == before + 1.0).then_some(())
    })
    .unwrap_or_else(|| panic!("counted once: {} then {}", before, untrusted()));
    assert_eq!(b.hits(), 0);
}

#[test]
fn optional_listener_serves_direct_clients_as_themselves() {
    let b = Backend::echo("app");
    let gw = start("127.0.0.0/8", false, &b);
    let (status, body) = exchange(&gw, b"", "/echo");
    assert_eq!(status, 200);
    assert_eq!(forwarded_for(&body), "127.0.0.1");
    let (status, body) = exchange(&gw, &v1("198.51.100.40:1"), "/echo");
    assert_eq!(status, 200);
    assert_eq!(forwarded_for(&body), "198.51.100.40");
    // From an untrusted peer the header is not believed: it is not HTTP either, so 400.
    let gw = start("192.0.2.0/24", false, &b);
    let (status, _) = exchange(&gw, &v1("198.51.100.41:1"), "/echo");
    assert_eq!(status, 400);
    let (status, body) = exchange(&gw, b"", "/echo");
    assert_eq!(status, 200);
    assert_eq!(forwarded_for(&body), "127.0.0.1");
}

#[test]
fn proxy_protocol_config_mistakes() {
    let (code, out) = check_config(
        r#"
[[listeners]]
address = "127.0.0.1:0"
[listeners.proxy_protocol]
from = []
"#,
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("listeners[0].proxy_protocol.from: list the addresses"),
        "{out}"
    );
    let (code, out) = check_config(
        r#"
[[listeners]]
address = "127.0.0.1:0"
[listeners.proxy_protocol]
from = ["10.0.0.0/33", "10.1.2.3/8"]
"#,
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("listeners[0].proxy_protocol.from[0]"), "{out}");
}
