//! HTTP/1 connections between requests. The server waits for a client's next request (and its
//! first) outside any request session, so an idle connection holds only its socket
//! (`patches/README.md`, pingora-core 6); these are the exchanges that wait must not break:
//! a request arriving late or in pieces, a slow head after the wait, a client that goes away
//! while idle, many idle clients at once.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn gateway(backend: &Backend, limits: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[limits]
{limits}

[upstreams.app]
targets = [{{ address = "{app}" }}]

[[routes]]
name = "app"
upstream = "app"
"#,
        app = backend.addr
    ))
}

fn connect(gw: &Gateway) -> TcpStream {
    let s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Read one response (head and `Content-Length` body); `None` if the connection closed first.
fn response(s: &mut TcpStream) -> Option<String> {
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => data.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&data).to_string();
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).ok()?;
    Some(head + &String::from_utf8_lossy(&body))
}

/// Bytes written to the peer after `pause`: a client that thinks between requests.
fn send_after(s: &mut TcpStream, pause: Duration, bytes: &[u8]) {
    std::thread::sleep(pause);
    s.write_all(bytes).unwrap();
}

#[test]
fn a_request_sent_after_an_idle_pause_in_pieces_is_answered() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend, "");
    let mut s = connect(&gw);
    send_after(
        &mut s,
        Duration::from_millis(300),
        b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let first = response(&mut s).expect("first answered");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(first.contains("/first"), "{first}");
    // Idle, then the next request in three writes with pauses between them.
    send_after(&mut s, Duration::from_millis(300), b"GET /sec");
    send_after(&mut s, Duration::from_millis(100), b"ond HTTP/1.1\r\nHo");
    send_after(&mut s, Duration::from_millis(100), b"st: t\r\n\r\n");
    let second = response(&mut s).expect("second answered on the same connection");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(second.contains("/second"), "{second}");
    assert_eq!(backend.hits(), 2);
}

/// The header timeout still starts at the first byte of a head, after the idle wait.
#[test]
fn a_slow_head_after_an_idle_wait_still_gets_408() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend, "header_timeout = \"1s\"");
    let mut s = connect(&gw);
    s.write_all(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert!(response(&mut s).unwrap().starts_with("HTTP/1.1 200"));
    // A second head that never ends.
    send_after(
        &mut s,
        Duration::from_millis(200),
        b"GET /two HTTP/1.1\r\nHost: t\r\n",
    );
    let reply = response(&mut s).expect("an answer before the close");
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert_eq!(backend.hits(), 1);
}

/// A client that closes while idle (before its first request, or between requests) gives its
/// connection back: the open-connections gauge returns to zero.
#[test]
fn clients_closing_idle_connections_free_them() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend, "");
    let open = || metric(&gw.metrics(), "tollgate_downstream_connections", &[]);
    let never_asked: Vec<TcpStream> = (0..3).map(|_| connect(&gw)).collect();
    let mut asked: Vec<TcpStream> = (0..3).map(|_| connect(&gw)).collect();
    for s in &mut asked {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert!(response(s).unwrap().starts_with("HTTP/1.1 200"));
    }
    assert_eq!(
        wait_for(Duration::from_secs(10), || (open() == Some(6.0))
            .then_some(())),
        Some(()),
        "six idle connections open: {:?}",
        open()
    );
    drop(never_asked);
    drop(asked);
    assert_eq!(
        wait_for(Duration::from_secs(10), || (open() == Some(0.0))
            .then_some(())),
        Some(()),
        "closed idle connections still counted: {:?}",
        open()
    );
}

/// Many idle keep-alive clients at once, then each sends its next request: all are answered.
#[test]
fn many_idle_clients_each_get_their_next_answer() {
    let backend = Backend::echo("app");
    let gw = gateway(&backend, "");
    let mut clients: Vec<TcpStream> = (0..200).map(|_| connect(&gw)).collect();
    for s in &mut clients {
        s.write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert!(response(s).unwrap().starts_with("HTTP/1.1 200"));
    }
    for s in &mut clients {
        s.write_all(b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    }
    for s in &mut clients {
        let r = response(s).expect("answered after idling");
        assert!(r.starts_with("HTTP/1.1 200") && r.contains("/b"), "{r}");
    }
    assert_eq!(backend.hits(), 400);
}
