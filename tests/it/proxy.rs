//! Proxying: request ids, forwarding headers, hop-by-hop removal, timeouts, connect-failure
//! retries, malformed requests, upstreams dying mid-response, bodies passing through.
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::common::*;
use std::time::{Duration, Instant};

fn one_route(targets: &str, route_extra: &str) -> String {
    format!(
        r#"
[upstreams.app]
targets = [{targets}]

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
{route_extra}
"#
    )
}

fn target(b: &Backend) -> String {
    format!("{{ address = \"{}\" }}", b.addr)
}

#[test]
fn request_id_kept_when_sane_generated_otherwise() {
    let b = Backend::echo("app");
    let gw = Gateway::start(&one_route(&target(&b), ""));
    let c = client();
    let r = c
        .get(gw.url("/kept"))
        .header("x-request-id", "abc-123")
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    assert_eq!(b.last_request().header("x-request-id"), Some("abc-123"));

    for bad in ["has spaces in it", &"x".repeat(129)] {
        let r = c
            .get(gw.url("/generated"))
            .header("x-request-id", bad)
            .send()
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(b.last_request().header("x-request-id"), Some(id.as_str()));
        let line = gw.wait_access_log(|l| l["request_id"] == id.as_str());
        assert_eq!(line["path"], "/generated");
    }
}

#[test]
fn forwarded_headers_and_hop_by_hop_removal() {
    let b = Backend::start("app", |r| {
        common::backend::echo_reply("app", r)
            .header("keep-alive", "timeout=5")
            .header("connection", "x-upstream-hop")
            .header("x-upstream-hop", "secret")
            .header("x-end-to-end", "kept")
    });
    let gw = Gateway::start(&one_route(&target(&b), ""));
    let r = client()
        .get(gw.url("/fwd"))
        .header("host", "shop.example.test")
        .header("x-forwarded-for", "6.6.6.6")
        .header("connection", "x-secret-hop")
        .header("x-secret-hop", "1")
        .header("proxy-authorization", "Basic Zm9v")
        .header("te", "trailers")
        .header("x-custom", "passes")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-upstream-hop").is_none());
    assert!(r.headers().get("keep-alive").is_none());
    assert_eq!(r.headers()["x-end-to-end"], "kept");
    let seen = b.last_request();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "a client's XFF is not trusted"
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("shop.example.test"));
    assert_eq!(seen.header("host"), Some("shop.example.test"));
    assert_eq!(seen.header("x-secret-hop"), None);
    assert_eq!(seen.header("proxy-authorization"), None);
    assert_eq!(seen.header("te"), None);
    assert_eq!(seen.header("x-custom"), Some("passes"));
}

/// Pingora strips hop-by-hop request headers before Tollgate's filters run, after one pass
/// over the names present; each one alone, with nothing else hop-by-hop beside it, must still
/// go.
#[test]
fn each_hop_by_hop_request_header_alone_is_stripped() {
    let b = Backend::echo("app");
    let gw = Gateway::start(&one_route(&target(&b), ""));
    for (name, value) in [
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("proxy-authorization", "Basic Zm9v"),
        ("te", "trailers"),
        ("trailer", "x-checksum"),
        ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
    ] {
        let r = client()
            .get(gw.url("/alone"))
            .header(name, value)
            .header("x-custom", "passes")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let seen = b.last_request();
        assert_eq!(seen.header(name), None, "{name} reached the upstream");
        assert_eq!(seen.header("x-custom"), Some("passes"));
    }
}

#[test]
fn upstream_read_timeout_is_504_json() {
    let b = Backend::start("slow", |r| {
        common::backend::echo_reply("slow", r).delay(Duration::from_secs(3))
    });
    let gw = Gateway::start(&one_route(
        &target(&b),
        "read_timeout = \"300ms\"\nretries = 0",
    ));
    let started = Instant::now();
    let r = client().get(gw.url("/slow")).send().unwrap();
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(2));
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["error"], "upstream timed out");
    assert_eq!(body["request_id"], id.as_str());
}

/// Timers of different lengths registered in the same moments (Pingora's timer wheel
/// remembers the deadlines a thread registered last, `patches/README.md` pingora-timeout 1):
/// each request times out on its own route's deadline, not a neighbour's.
#[test]
fn read_timeouts_of_different_lengths_each_fire_on_their_own_deadline() {
    let b = Backend::start("slow", |r| {
        common::backend::echo_reply("slow", r).delay(Duration::from_millis(800))
    });
    let gw = Gateway::start(&format!(
        r#"
[upstreams.short]
targets = [{t}]
read_timeout = "200ms"
[upstreams.long]
targets = [{t}]
read_timeout = "5s"

[[routes]]
name = "short"
path_prefix = "/short"
upstream = "short"
retry_on = []
[[routes]]
name = "long"
path_prefix = "/long"
upstream = "long"
retry_on = []
"#,
        t = target(&b)
    ));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let url = gw.url(if i % 2 == 0 { "/short" } else { "/long" });
            std::thread::spawn(move || (i, client().get(url).send().unwrap().status()))
        })
        .collect();
    for t in threads {
        let (i, status) = t.join().unwrap();
        let want = if i % 2 == 0 { 504 } else { 200 };
        assert_eq!(status, want, "request {i}");
    }
}

#[test]
fn connect_failure_retries_get_but_not_post() {
    let live = Backend::echo("live");
    let dead = format!("{{ address = \"127.0.0.1:{}\" }}", free_port());
    let gw = Gateway::start(&one_route(
        &format!("{dead}, {}", target(&live)),
        "retries = 1",
    ));
    let c = client();
    for i in 0..10 {
        let before = live.hits();
        assert_eq!(c.get(gw.url("/g")).send().unwrap().status(), 200, "GET {i}");
        assert_eq!(live.hits(), before + 1);
    }
    let mut failed = 0;
    let before = live.hits();
    for _ in 0..20 {
        match c
            .post(gw.url("/p"))
            .body("x")
            .send()
            .unwrap()
            .status()
            .as_u16()
        {
            200 => {}
            502 => failed += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        failed > 0,
        "round robin sends some POSTs to the dead target first"
    );
    assert_eq!(
        live.hits() - before,
        20 - failed,
        "failed POSTs were not retried"
    );
    let metrics = c
        .get(gw.admin_url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let retries = metric(
        &metrics,
        "tollgate_upstream_retries_total",
        &[("route", "app")],
    )
    .unwrap();
    assert!(retries >= 4.0, "GET retries counted: {retries}");
}

#[test]
fn malformed_request_line_is_400_and_the_gateway_keeps_serving() {
    let b = Backend::echo("app");
    let gw = Gateway::start(&one_route(&target(&b), ""));
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /x HTTP/9.9\r\nHost: a\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\r\n\r\n",
    ] {
        let reply = gw.raw(garbage, Duration::from_secs(5));
        assert!(
            reply.starts_with("HTTP/1.1 400"),
            "{garbage:?} -> {reply:?}"
        );
    }
    assert_eq!(b.hits(), 0);
    assert_eq!(client().get(gw.url("/ok")).send().unwrap().status(), 200);
}

#[test]
fn upstream_dying_mid_response_does_not_hurt_the_next_request() {
    let b = Backend::start("app", |r| {
        if r.path == "/cut" {
            Reply::status(200).body(vec![b'a'; 10_000]).cut_after(500)
        } else {
            common::backend::echo_reply("app", r)
        }
    });
    let gw = Gateway::start(&one_route(&target(&b), "retries = 0"));
    let c = client();
    let cut = c.get(gw.url("/cut")).send();
    if let Ok(r) = cut {
        let status = r.status();
        let body = r.bytes();
        assert!(
            status != 200 || body.is_err() || body.unwrap().len() < 10_000,
            "a truncated body is not a success"
        );
    }
    assert_eq!(c.get(gw.url("/ok")).send().unwrap().status(), 200);
}

#[test]
fn request_bodies_pass_through_intact() {
    let b = Backend::echo("app");
    let gw = Gateway::start(&one_route(&target(&b), ""));
    let json = r#"{"order":42,"items":["a","b"]}"#;
    let r = client()
        .post(gw.url("/orders"))
        .header("content-type", "application/json")
        .body(json)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(b.last_request().body, json.as_bytes());

    let mut raw = b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    raw.extend_from_slice(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    let reply = gw.raw(&raw, Duration::from_secs(5));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(b.last_request().body, b"hello world");
}

/// Regression (issue 36): reusing a pooled upstream connection asked the kernel for its peer
/// (`getpeername`) on every proxied request, to check the pool handed back a connection to
/// the right peer. The address its socket digest cached at the first ask answers the same;
/// the file descriptor here is invalid, so any kernel call would fail the match.
#[test]
#[cfg(unix)]
fn reusing_an_upstream_connection_made_a_getpeername_per_request() {
    use pingora::connectors::stream_matches_peer;
    use pingora::protocols::SocketDigest;
    use pingora::upstreams::peer::{BasicPeer, Peer};
    let peer = BasicPeer::new("127.0.0.1:8080");
    let digest = SocketDigest::from_raw_fd(-1);
    let _ = digest.peer_addr.set(Some(peer.address().clone()));
    assert!(stream_matches_peer(&peer, Some(&digest), -1));
    let other = BasicPeer::new("127.0.0.1:8081");
    assert!(!stream_matches_peer(&other, Some(&digest), -1));
    // Without a digest the kernel is asked, and an invalid descriptor matches nothing.
    assert!(!stream_matches_peer(&peer, None, -1));
}

/// Regression (issue 36): vendored pingora-core listed `tokio-test` as a normal dependency
/// (for its mock stream), which turned on tokio's `test-util` feature in the gateway's own
/// build: every `Instant::now` of tokio's timers then went through a mutex-guarded clock
/// that can be paused. The mock is behind pingora-core's `mock-io` feature now, which no
/// build of the gateway enables.
#[test]
fn tokio_test_util_was_linked_into_the_gateway() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["tree", "--locked", "--offline", "-e", "normal,features"])
        .args(["-i", "tokio", "--prefix", "none"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("tokio feature \"time\""), "{tree}");
    assert!(!tree.contains("test-util"), "{tree}");
    assert!(!tree.contains("tokio-test"), "{tree}");
}
