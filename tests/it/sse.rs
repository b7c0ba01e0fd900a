//! Server-sent events through the gateway: each event reaches the client before the upstream
//! sends the next one (nothing buffers: not the cache, not compression, not the JSON
//! transforms), and a stream that keeps sending outlives the group's `read_timeout`.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::mpsc;
use std::time::Duration;

/// An upstream sending `events` server-sent events: every `every`, or, when `every` is zero,
/// each when the test says so on the returned sender.
fn sse_upstream(events: usize, every: Duration) -> (std::net::SocketAddr, mpsc::Sender<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (release, wait) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        write!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
             transfer-encoding: chunked\r\n\r\n"
        )
        .unwrap();
        for i in 0..events {
            if every.is_zero() {
                if wait.recv_timeout(Duration::from_secs(20)).is_err() {
                    return;
                }
            } else if i > 0 {
                std::thread::sleep(every);
            }
            let event = format!("id: {i}\ndata: event {i}\n\n");
            if write!(s, "{:x}\r\n{event}\r\n", event.len()).is_err() {
                return;
            }
            s.flush().unwrap();
        }
        let _ = write!(s, "0\r\n\r\n");
    });
    (addr, release)
}

fn gateway(upstream: std::net::SocketAddr) -> Gateway {
    Gateway::start(&format!(
        r#"
[upstreams.events]
targets = [{{ address = "{upstream}" }}]
read_timeout = "1s"

[[routes]]
name = "events"
path_prefix = "/events"
upstream = "events"
json_rename_response = {{ "a" = "b" }}
[routes.cache]
ttl = "60s"
[routes.compression]
"#
    ))
}

/// Read one event (up to its blank line) from a chunked body reader.
fn next_event(lines: &mut impl BufRead) -> String {
    let mut event = String::new();
    loop {
        let mut line = String::new();
        assert!(lines.read_line(&mut line).unwrap() > 0, "stream ended");
        if line == "\n" && !event.is_empty() {
            return event;
        }
        if line.starts_with("id:") || line.starts_with("data:") {
            event.push_str(&line);
        }
    }
}

#[test]
fn each_event_arrives_before_the_next_is_sent() {
    let (addr, release) = sse_upstream(5, Duration::ZERO);
    let gw = gateway(addr);
    release.send(()).unwrap();
    let resp = client()
        .get(gw.url("/events/stream"))
        .header("accept", "text/event-stream")
        .header("accept-encoding", "identity")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut lines = BufReader::new(resp);
    for i in 0..5 {
        let event = next_event(&mut lines);
        assert_eq!(event, format!("id: {i}\ndata: event {i}\n"));
        // The upstream sends the next event only now.
        let _ = release.send(());
    }
}

#[test]
fn a_stream_that_keeps_sending_outlives_read_timeout() {
    // Eight events 300 ms apart: 2.1 s in all against a 1 s read_timeout.
    let (addr, _release) = sse_upstream(8, Duration::from_millis(300));
    let gw = gateway(addr);
    let resp = client().get(gw.url("/events/long")).send().unwrap();
    let started = std::time::Instant::now();
    let mut lines = BufReader::new(resp);
    for i in 0..8 {
        assert_eq!(
            next_event(&mut lines),
            format!("id: {i}\ndata: event {i}\n")
        );
    }
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the events were spread out"
    );
}
