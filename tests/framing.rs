//! Strict framing and request limits, sent as raw bytes: ambiguous requests are refused
//! before routing (the recording backend proves nothing was smuggled through), oversized heads
//! and bodies are refused, and a slow-drip client gets 408 while others are served.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn gateway(backend: &Backend, limits: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[limits]
{limits}

[upstreams.app]
targets = [{{ address = "{}" }}]

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"

[[routes]]
name = "small"
path_prefix = "/small"
upstream = "app"
max_body_size = "16"
"#,
        backend.addr
    ))
}

fn status_of(reply: &str) -> Option<u16> {
    reply.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn ambiguous_framing_is_refused_before_routing() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend, "");
    let cases: &[(&str, &[u8], u16)] = &[
        (
            "CL and TE",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "duplicate CL",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
            400,
        ),
        ("listed CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd", 400),
        ("no Host", b"GET / HTTP/1.1\r\n\r\n", 400),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (
            "TE not ending in chunked",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            400,
        ),
    ];
    for (name, bytes, want) in cases {
        let reply = gw.raw(bytes, Duration::from_secs(5));
        assert_eq!(status_of(&reply), Some(*want), "{name}: {reply}");
        // Pingora's own parser answers these two before any hook runs.
        if !matches!(*name, "two Hosts" | "TE not ending in chunked") {
            assert!(
                reply.contains("\"request_id\""),
                "{name}: JSON error body: {reply}"
            );
        }
    }
    assert_eq!(backend.hits(), 0, "nothing reached the upstream");
    // The gateway still serves well-formed requests.
    let ok = gw.raw(
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&ok), Some(200), "{ok}");
}

#[test]
fn oversized_heads_get_431() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend, "");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let reply = gw.raw(big.as_bytes(), Duration::from_secs(5));
    assert_eq!(
        status_of(&reply),
        Some(431),
        "{}",
        &reply[..reply.len().min(200)]
    );

    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let reply = gw.raw(many.as_bytes(), Duration::from_secs(5));
    assert_eq!(status_of(&reply), Some(431), "{reply}");
    assert_eq!(backend.hits(), 0);
}

#[test]
fn oversized_bodies_get_413_by_length_and_while_streaming() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend, "max_body_size = \"1KiB\"");
    let c = client();
    let resp = c
        .post(gw.url("/upload"))
        .body(vec![b'x'; 2048])
        .send()
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["error"], "request body too large");

    // Chunked: no Content-Length, the gateway counts bytes as they stream.
    let mut req = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&[b'y'; 0x200]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let reply = gw.raw(&req, Duration::from_secs(5));
    assert_eq!(status_of(&reply), Some(413), "{reply}");

    // Per-route limit is tighter; bodies within limits pass.
    let resp = c
        .post(gw.url("/small"))
        .body(vec![b'x'; 17])
        .send()
        .unwrap();
    assert_eq!(resp.status(), 413);
    let resp = c
        .post(gw.url("/small"))
        .body(vec![b'x'; 16])
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = c
        .post(gw.url("/upload"))
        .body(vec![b'x'; 1000])
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(backend.last_request().body.len(), 1000);
}

#[test]
fn slow_drip_head_gets_408_while_others_are_served() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend, "header_timeout = \"1s\"");
    let mut slow = TcpStream::connect(gw.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    let head =
        b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Drip: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut reply = Vec::new();
    let c = client();
    for byte in head.iter().cycle() {
        // Keep sending one byte every 100 ms: each read is quick, the head never completes.
        if slow.write_all(&[*byte]).is_err() {
            break;
        }
        // Meanwhile another client is served promptly.
        assert_eq!(c.get(gw.url("/fast")).send().unwrap().status(), 200);
        let mut buf = [0u8; 1024];
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                reply.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no 408 after 15s"
        );
    }
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(status_of(&reply), Some(408), "{reply}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(backend.requests().iter().all(|r| r.path != "/slow"));
}

#[test]
fn connection_caps_per_ip() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend, "max_connections_per_ip = 2");
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(gw.addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
            let mut buf = [0u8; 512];
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            s
        })
        .collect();
    let reply = gw.raw(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Duration::from_secs(5));
    assert_eq!(status_of(&reply), Some(503), "{reply}");
    drop(held);
    // Slots free up when the held connections close.
    let ok = wait_for(Duration::from_secs(5), || {
        let r = gw.raw(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        );
        (status_of(&r) == Some(200)).then_some(())
    });
    assert!(ok.is_some());
    let metrics = client()
        .get(gw.admin_url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(metric(&metrics, "tollgate_connections_refused_total", &[]).unwrap() >= 1.0);
}

#[test]
fn a_stalled_request_body_times_out() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend, "body_timeout = \"1s\"");
    let started = Instant::now();
    // Ten bytes promised, two sent, then silence.
    let reply = gw.raw(
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab",
        Duration::from_secs(10),
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "the gateway gave up on the body: {took:?}"
    );
    assert_eq!(status_of(&reply), Some(408), "{reply}");
    assert!(reply.contains("request timed out"), "{reply}");
    // Other clients are still served.
    assert_eq!(client().get(gw.url("/x")).send().unwrap().status(), 200);
}
