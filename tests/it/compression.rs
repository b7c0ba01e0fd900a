//! `[routes.compression]`: gzip, brotli and zstd by `Accept-Encoding` with q-values, checked
//! with the real decoders of each format; the responses that must pass unchanged; a streamed
//! response compressed chunk by chunk; compression over cached entries.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::io::{Read, Write};
use std::time::Duration;

fn text_body() -> Vec<u8> {
    (0..200)
        .map(|i| format!("line {i}: the quick brown fox jumps over the lazy dog\n"))
        .collect::<String>()
        .into_bytes()
}

fn backend() -> Backend {
    Backend::start("app", |r| {
        let text = text_body();
        let path = r.path.as_str();
        match path {
            "/c/text" | "/cached/text" => Reply::status(200)
                .header("content-type", "text/plain; charset=utf-8")
                .header("cache-control", "max-age=60")
                .body(text),
            "/c/json" => Reply::status(200)
                .header("content-type", "Application/JSON")
                .body(serde_json::to_vec(&vec!["same value"; 200]).unwrap()),
            "/c/png" => Reply::status(200)
                .header("content-type", "image/png")
                .body(text),
            "/c/small" => Reply::status(200)
                .header("content-type", "text/plain")
                .body(&b"short"[..]),
            "/c/encoded" => Reply::status(200)
                .header("content-type", "text/plain")
                .header("content-encoding", "gzip")
                .body(gzip(&text)),
            "/c/range" => Reply::status(206)
                .header("content-type", "text/plain")
                .header(
                    "content-range",
                    &format!("bytes 0-{}/99999", text.len() - 1),
                )
                .body(text),
            "/c/no-transform" => Reply::status(200)
                .header("content-type", "text/plain")
                .header("cache-control", "public, no-transform")
                .body(text),
            "/c/etag" => Reply::status(200)
                .header("content-type", "text/html")
                .header("etag", "\"v1\"")
                .header("accept-ranges", "bytes")
                .header("vary", "Accept-Language")
                .body(text),
            _ => Reply::status(404),
        }
    })
}

fn gateway(backend: &Backend) -> Gateway {
    Gateway::start(&format!(
        r#"
[upstreams.app]
targets = [{{ address = "{}" }}]

[[routes]]
name = "compressed"
path_prefix = "/c"
upstream = "app"
[routes.compression]

[[routes]]
name = "gzip-only"
path_prefix = "/g"
upstream = "app"
rewrite_prefix = "/c"
[routes.compression]
algorithms = ["gzip"]
min_size = "4B"

[[routes]]
name = "cached"
path_prefix = "/cached"
upstream = "app"
[routes.cache]
ttl = "60s"
[routes.compression]

[[routes]]
name = "plain"
path_prefix = "/plain"
upstream = "app"
rewrite_prefix = "/c"
"#,
        backend.addr
    ))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Decode with the reference decoder of each coding; panics on a corrupt or truncated body.
fn decode(coding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(data, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::stream::decode_all(data).unwrap(),
        other => panic!("unexpected coding {other}"),
    }
    out
}

struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
    fn coding(&self) -> Option<&str> {
        self.header("content-encoding")
    }
    fn varies_on_accept_encoding(&self) -> bool {
        self.headers.get_all("vary").iter().any(|v| {
            v.to_str()
                .unwrap()
                .to_ascii_lowercase()
                .contains("accept-encoding")
        })
    }
}

fn get(gw: &Gateway, path: &str, accept: Option<&str>) -> Got {
    request(gw, reqwest::Method::GET, path, accept, &[])
}

fn request(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    accept: Option<&str>,
    extra: &[(&str, &str)],
) -> Got {
    let mut req = client().request(method, gw.url(path));
    if let Some(a) = accept {
        req = req.header("accept-encoding", a);
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = req.send().unwrap();
    Got {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.bytes().unwrap().to_vec(),
    }
}

#[test]
fn each_coding_decodes_to_the_upstream_body() {
    let b = backend();
    let gw = gateway(&b);
    for coding in ["gzip", "br", "zstd"] {
        let got = get(&gw, "/c/text", Some(coding));
        assert_eq!(got.status, 200);
        assert_eq!(got.coding(), Some(coding));
        assert!(got.varies_on_accept_encoding());
        assert!(got.header("content-length").is_none() || got.body.len() < text_body().len());
        assert!(
            got.body.len() < text_body().len() / 4,
            "{coding} did not shrink the body"
        );
        assert_eq!(decode(coding, &got.body), text_body(), "{coding}");
    }
    // Media types match without parameters and regardless of case.
    let json = get(&gw, "/c/json", Some("gzip"));
    assert_eq!(json.coding(), Some("gzip"));
    let decoded: Vec<String> = serde_json::from_slice(&decode("gzip", &json.body)).unwrap();
    assert_eq!(decoded.len(), 200);
}

#[test]
fn accept_encoding_q_values_choose_the_coding() {
    let b = backend();
    let gw = gateway(&b);
    for (accept, expected) in [
        ("gzip, deflate, br, zstd", Some("zstd")),
        ("gzip;q=1.0, br;q=0.8", Some("gzip")),
        ("gzip;q=0.5, br;q=0.9", Some("br")),
        ("zstd;q=0, br;q=0, gzip", Some("gzip")),
        ("*;q=0.3, zstd;q=0.1", Some("br")),
        ("gzip;q=0", None),
        ("identity", None),
        ("deflate", None),
    ] {
        let got = get(&gw, "/c/text", Some(accept));
        assert_eq!(got.coding(), expected, "Accept-Encoding: {accept}");
        assert!(got.varies_on_accept_encoding(), "{accept}");
        match expected {
            Some(c) => assert_eq!(decode(c, &got.body), text_body()),
            None => assert_eq!(got.body, text_body()),
        }
    }
    // No Accept-Encoding: sent as it is, still marked as varying.
    let none = get(&gw, "/c/text", None);
    assert_eq!(none.coding(), None);
    assert!(none.varies_on_accept_encoding());
    assert_eq!(none.body, text_body());
    // A route that offers only gzip never answers with another coding.
    assert_eq!(get(&gw, "/g/text", Some("br, zstd")).coding(), None);
    assert_eq!(
        get(&gw, "/g/small", Some("br, gzip")).coding(),
        Some("gzip")
    );
    // A route without [compression] passes the body untouched.
    let plain = get(&gw, "/plain/text", Some("gzip"));
    assert_eq!(plain.coding(), None);
    assert!(!plain.varies_on_accept_encoding());
}

#[test]
fn responses_that_must_stay_as_they_are_are_not_compressed() {
    let b = backend();
    let gw = gateway(&b);
    let all = Some("gzip, br, zstd");
    // Not a listed media type; below min_size; not varying on Accept-Encoding either.
    for path in ["/c/png", "/c/small"] {
        let got = get(&gw, path, all);
        assert_eq!(got.coding(), None, "{path}");
        assert!(!got.varies_on_accept_encoding(), "{path}");
    }
    // Already encoded by the upstream: passed through, never encoded twice.
    let encoded = get(&gw, "/c/encoded", all);
    assert_eq!(encoded.coding(), Some("gzip"));
    assert_eq!(decode("gzip", &encoded.body), text_body());
    // A range: the bytes are positions in the identity body.
    let range = get(&gw, "/c/range", all);
    assert_eq!(range.status, 206);
    assert_eq!(range.coding(), None);
    assert_eq!(range.body, text_body());
    // no-transform from the upstream or from the client.
    let nt = get(&gw, "/c/no-transform", all);
    assert_eq!(nt.coding(), None);
    assert_eq!(nt.body, text_body());
    let nt = request(
        &gw,
        reqwest::Method::GET,
        "/c/text",
        all,
        &[("cache-control", "no-transform")],
    );
    assert_eq!(nt.coding(), None);
    assert_eq!(nt.body, text_body());
    // HEAD: no body to compress, and the headers do not claim a coding.
    let head = request(&gw, reqwest::Method::HEAD, "/c/text", all, &[]);
    assert_eq!(head.status, 200);
    assert_eq!(head.coding(), None);
}

#[test]
fn compressing_weakens_a_strong_etag_and_drops_accept_ranges() {
    let b = backend();
    let gw = gateway(&b);
    let got = get(&gw, "/c/etag", Some("gzip"));
    assert_eq!(got.coding(), Some("gzip"));
    assert_eq!(got.header("etag"), Some("W/\"v1\""));
    assert!(got.header("accept-ranges").is_none());
    let vary: Vec<_> = got
        .headers
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        vary.iter().any(|v| v.contains("Accept-Language")),
        "{vary:?}"
    );
    // Sent uncompressed, the validator stays strong.
    let plain = get(&gw, "/c/etag", None);
    assert_eq!(plain.header("etag"), Some("\"v1\""));
}

#[test]
fn cached_entries_are_stored_once_and_compressed_per_client() {
    let b = backend();
    let gw = gateway(&b);
    let first = get(&gw, "/cached/text", Some("gzip"));
    assert_eq!(first.coding(), Some("gzip"));
    let second = get(&gw, "/cached/text", Some("br"));
    assert_eq!(second.coding(), Some("br"));
    assert_eq!(second.header("x-cache"), Some("HIT"));
    let third = get(&gw, "/cached/text", None);
    assert_eq!(third.coding(), None);
    assert_eq!(decode("gzip", &first.body), text_body());
    assert_eq!(decode("br", &second.body), text_body());
    assert_eq!(third.body, text_body());
    assert_eq!(b.hits(), 1);
}

/// An upstream that sends one server-sent event, then waits for `release` before the second.
fn streaming_upstream() -> (std::net::SocketAddr, std::sync::mpsc::Sender<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (release, wait) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let first = "data: first event\n\n";
        write!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
             transfer-encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n",
            first.len()
        )
        .unwrap();
        s.flush().unwrap();
        let _ = wait.recv_timeout(Duration::from_secs(20));
        let second = "data: second event\n\n";
        write!(s, "{:x}\r\n{second}\r\n0\r\n\r\n", second.len()).unwrap();
        s.flush().unwrap();
    });
    (addr, release)
}

#[test]
fn streamed_response_is_compressed_chunk_by_chunk() {
    for coding in ["gzip", "br", "zstd"] {
        let (addr, release) = streaming_upstream();
        let gw = Gateway::start(&format!(
            r#"
[upstreams.events]
targets = [{{ address = "{addr}" }}]

[[routes]]
name = "events"
path = "/events"
upstream = "events"
[routes.compression]
algorithms = ["{coding}"]
"#
        ));
        let mut resp = client()
            .get(gw.url("/events"))
            .header("accept-encoding", coding)
            .send()
            .unwrap();
        assert_eq!(resp.headers()["content-encoding"], coding);
        // Read until the first event decodes, while the upstream still holds the second.
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        let decoded_so_far = |data: &[u8]| -> Vec<u8> {
            match coding {
                "gzip" => {
                    let mut d = flate2::write::GzDecoder::new(Vec::new());
                    let _ = d.write_all(data);
                    let _ = d.flush();
                    d.get_ref().clone()
                }
                "br" => {
                    let mut d = brotli::DecompressorWriter::new(Vec::new(), 4096);
                    let _ = d.write_all(data);
                    let _ = d.flush();
                    d.get_ref().clone()
                }
                _ => {
                    let mut d = zstd::stream::write::Decoder::new(Vec::new()).unwrap();
                    let _ = d.write_all(data);
                    let _ = d.flush();
                    d.get_ref().clone()
                }
            }
        };
        loop {
            let n = resp.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "{coding}: stream ended before the first event decoded"
            );
            received.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&decoded_so_far(&received)).into_owned();
            if text.contains("first event") {
                assert!(!text.contains("second"), "{coding}");
                break;
            }
        }
        release.send(()).unwrap();
        resp.read_to_end(&mut received).unwrap();
        let all = String::from_utf8(decode(coding, &received)).unwrap();
        assert!(all.ends_with("data: second event\n\n"), "{coding}: {all}");
    }
}

#[test]
fn compression_config_mistakes_are_refused_with_the_key() {
    let (code, out) = check_config(
        r#"
[[routes]]
name = "hello"
path = "/"
[routes.respond]
body = "hi"
[routes.compression]
algorithms = ["gzip", "gzip", "deflate"]
"#,
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(
            "routes[0].compression.algorithms[2]: unknown value `deflate` (valid: gzip, br, zstd)"
        ),
        "{out}"
    );
    let (code, out) = check_config(
        r#"
[[routes]]
name = "hello"
path = "/"
[routes.respond]
body = "hi"
[routes.compression]
algorithms = ["gzip", "gzip"]
"#,
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("routes[0].compression: applies only to proxied routes")
            && out.contains("routes[0].compression.algorithms[1]: \"gzip\" is listed twice"),
        "{out}"
    );
    let (code, out) = check_config(
        r#"
[upstreams.app]
targets = [{ address = "127.0.0.1:1" }]
[[routes]]
name = "app"
path = "/"
upstream = "app"
[routes.compression]
content_types = ["json"]
"#,
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("routes[0].compression.content_types[0]") && out.contains("type/subtype"),
        "{out}"
    );
}
