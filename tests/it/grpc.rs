//! gRPC through the gateway with a real client and server (tonic): the four call shapes over
//! h2c and over TLS, trailers intact, the gateway's own refusals as gRPC statuses, the
//! `grpc-timeout` deadline, retries only on `UNAVAILABLE` before any message, and the
//! standard gRPC health check taking a `NOT_SERVING` target out.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::time::{Duration, Instant};
use tollgate_grpc_fixtures::proto::echo_client::EchoClient;
use tollgate_grpc_fixtures::proto::{EchoReply, EchoRequest};
use tollgate_grpc_fixtures::{Server, ServingStatus};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request};

/// A test CA and one leaf for `names`, PEM: (ca, cert, key).
fn pki(names: &[&str]) -> (String, String, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Tollgate gRPC test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

async fn h2c_client(gw: &Gateway) -> EchoClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{}", gw.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    EchoClient::new(channel)
}

/// A `grpc-timeout` value.
fn grpc_timeout(v: &str) -> Duration {
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().unwrap();
    match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => panic!("bad grpc-timeout {v:?}"),
    }
}

/// A blocking call (the admin API's client) from inside the async test.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn echo(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        ..Default::default()
    }
}

fn h2c_gateway(body: &str) -> Gateway {
    Gateway::start_full(&format!("{}\n{body}", h2c_preamble())).unwrap()
}

fn grpc_route(server: &Server, extra_group: &str, extra_route: &str) -> String {
    format!(
        r#"
[upstreams.grpc]
targets = [{{ address = "{}" }}]
h2 = true
{extra_group}

[[routes]]
name = "grpc"
path_prefix = "/"
upstream = "grpc"
{extra_route}
"#,
        server.addr
    )
}

/// Every call shape against `client`.
async fn four_shapes(client: &mut EchoClient<Channel>) {
    let r = client.unary(echo("hello")).await.unwrap().into_inner();
    assert_eq!(r.message, "hello");

    let outbound = futures::stream::iter(vec![echo("a"), echo("b"), echo("c")]);
    let r = client.client_stream(outbound).await.unwrap().into_inner();
    assert_eq!((r.message.as_str(), r.index), ("a,b,c", 3));

    let mut stream = client
        .server_stream(EchoRequest {
            message: "n".into(),
            count: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        got.push(m.message);
    }
    assert_eq!(got, ["n 0", "n 1", "n 2"]);

    // Bidirectional: each reply comes back before the next message is sent.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = client
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for word in ["one", "two", "three"] {
        tx.send(echo(word)).await.unwrap();
        let reply: EchoReply = replies.message().await.unwrap().unwrap();
        assert_eq!(reply.message, word);
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_call_shapes_over_h2c_listener_and_h2c_upstream() {
    let server = Server::start(None);
    let gw = h2c_gateway(&grpc_route(&server, "", ""));
    let mut client = h2c_client(&gw).await;
    four_shapes(&mut client).await;
    // An HTTP/1 client on the same listener is still served.
    let r = client_get(&gw, "/plain");
    assert!(r.contains("HTTP/1.1"), "{r}");
}

fn client_get(gw: &Gateway, path: &str) -> String {
    raw_request(
        gw.addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_call_shapes_over_tls_both_ways() {
    let (up_ca, up_cert, up_key) = pki(&["grpc.test"]);
    let server = Server::start(Some((up_cert.into_bytes(), up_key.into_bytes())));
    let (ca, cert, key) = pki(&["tls.test"]);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p.display().to_string()
    };
    let (cert_file, key_file, up_ca_file) = (
        write("gw.crt", &cert),
        write("gw.key", &key),
        write("up-ca.crt", &up_ca),
    );
    let gw = Gateway::start_full(&format!(
        "{}\n{}",
        tls_preamble(cert_file.as_ref(), key_file.as_ref()),
        grpc_route(
            &server,
            &format!("[upstreams.grpc.tls]\nca_file = \"{up_ca_file}\"\nsni = \"grpc.test\""),
            ""
        )
    ))
    .unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("tls.test");
    let channel = Endpoint::from_shared(format!("https://{}", gw.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    four_shapes(&mut EchoClient::new(channel)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_statuses_and_trailers_pass_through() {
    let server = Server::start(None);
    let gw = h2c_gateway(&grpc_route(&server, "", ""));
    let mut client = h2c_client(&gw).await;
    // Trailers-only error.
    let status = client
        .unary(EchoRequest {
            fail_code: Code::NotFound as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "asked to fail");
    // Messages, then the status in trailers.
    let mut stream = client
        .server_stream(EchoRequest {
            message: "m".into(),
            count: 2,
            fail_code: Code::FailedPrecondition as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().message, "m 0");
    assert_eq!(stream.message().await.unwrap().unwrap().message, "m 1");
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "failed mid-stream");
    // The access log says each call's gRPC status: from the trailers, and trailers-only.
    gw.wait_access_log(|e| {
        e["path"] == "/tollgate.test.Echo/ServerStream" && e["grpc_status"] == 9
    });
    gw.wait_access_log(|e| e["path"] == "/tollgate.test.Echo/Unary" && e["grpc_status"] == 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_refusals_reach_grpc_clients_as_statuses() {
    let server = Server::start(None);
    let gw = h2c_gateway(&format!(
        r#"
[consumers.svc]
keys = ["svc-key-0123456789ab"]

{}
"#,
        grpc_route(
            &server,
            "",
            r#"auth = ["api_key"]
rate_limits = [{ limit = 1, window = "60s", key = "consumer" }]"#
        )
        .replace(
            "path_prefix = \"/\"",
            "path_prefix = \"/tollgate.test.Echo\""
        )
    ));
    let mut client = h2c_client(&gw).await;

    let status = client.unary(echo("no key")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let entry = gw.wait_access_log(|e| e["grpc_status"] == 16);
    assert_eq!(entry["status"], 200, "{entry}");

    let keyed = || {
        let mut r = Request::new(echo("keyed"));
        r.metadata_mut()
            .insert("x-api-key", "svc-key-0123456789ab".parse().unwrap());
        r
    };
    assert_eq!(
        client.unary(keyed()).await.unwrap().into_inner().message,
        "keyed"
    );
    let status = client.unary(keyed()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), "rate limit exceeded");
    assert!(status.metadata().get("retry-after").is_some());

    // No route for another service.
    let channel = Endpoint::from_shared(format!("http://{}", gw.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_shorter_than_the_upstream_gives_deadline_exceeded() {
    let server = Server::start(None);
    let gw = h2c_gateway(&grpc_route(&server, "read_timeout = \"30s\"", ""));
    let mut client = h2c_client(&gw).await;

    // The upstream hears the deadline that is left, never more than the client's.
    let mut req = Request::new(echo("deadline"));
    req.metadata_mut()
        .insert("grpc-timeout", "5000m".parse().unwrap());
    let r = client.unary(req).await.unwrap().into_inner();
    let forwarded = grpc_timeout(&r.grpc_timeout);
    assert!(
        forwarded > Duration::from_secs(4) && forwarded <= Duration::from_secs(5),
        "{forwarded:?}"
    );

    // Headers arrive at once, the message only after 3 s: the gateway ends the call at the
    // deadline with DEADLINE_EXCEEDED in the trailers (tonic's server applies its own
    // timeout only until the headers, so this is the gateway's doing).
    let mut req = Request::new(EchoRequest {
        message: "slow".into(),
        count: 1,
        delay_ms: 3000,
        ..Default::default()
    });
    req.metadata_mut()
        .insert("grpc-timeout", "400m".parse().unwrap());
    let started = Instant::now();
    let outcome = match client.server_stream(req).await {
        Ok(resp) => resp.into_inner().message().await.map(|_| ()),
        Err(status) => Err(status),
    };
    let took = started.elapsed();
    let status = outcome.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_millis(2500),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_before_any_message_is_retried_on_another_target() {
    let shedding = Server::start(None);
    shedding.set_unavailable(true);
    let healthy = Server::start(None);
    let gw = h2c_gateway(&format!(
        r#"
[upstreams.grpc]
targets = [{{ address = "{}" }}, {{ address = "{}" }}]
h2 = true

[[routes]]
name = "grpc"
path_prefix = "/"
upstream = "grpc"
retries = 1
"#,
        shedding.addr, healthy.addr
    ));
    let mut client = h2c_client(&gw).await;
    for i in 0..6 {
        let r = client.unary(echo(&format!("call {i}"))).await.unwrap();
        assert_eq!(r.into_inner().message, format!("call {i}"));
    }
    assert_eq!(healthy.served(), 6);
    let retries = metric(
        &blocking(|| gw.metrics()),
        "tollgate_upstream_retries_total",
        &[("route", "grpc")],
    );
    assert!(retries.unwrap_or(0.0) >= 1.0, "{retries:?}");

    // UNAVAILABLE after a message was relayed is the client's to handle: not retried.
    let mut stream = client
        .server_stream(EchoRequest {
            message: "s".into(),
            count: 1,
            fail_code: Code::Unavailable as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().message, "s 0");
    assert_eq!(
        stream.message().await.unwrap_err().code(),
        Code::Unavailable
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_take_a_not_serving_target_out() {
    let a = Server::start(None);
    let b = Server::start(None);
    let gw = h2c_gateway(&format!(
        r#"
[upstreams.grpc]
targets = [{{ address = "{}" }}, {{ address = "{}" }}]
h2 = true
[upstreams.grpc.health_check]
kind = "grpc"
interval = "200ms"
timeout = "1s"
healthy_threshold = 1
unhealthy_threshold = 1

[[routes]]
name = "grpc"
path_prefix = "/"
upstream = "grpc"
retries = 0
"#,
        a.addr, b.addr
    ));
    let healthy = |addr: std::net::SocketAddr| {
        let h = blocking(|| gw.health());
        h["upstreams"]["grpc"]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["address"] == addr.to_string())
            .map(|t| t["healthy"] == true)
    };
    blocking(|| {
        wait_for(Duration::from_secs(10), || {
            (healthy(a.addr) == Some(true) && healthy(b.addr) == Some(true)).then_some(())
        })
    })
    .unwrap_or_else(|| {
        blocking(|| panic!("both targets healthy: {}\n{}", gw.health(), gw.stderr()))
    });

    a.set_health(ServingStatus::NotServing).await;
    blocking(|| {
        wait_for(Duration::from_secs(10), || {
            (healthy(a.addr) == Some(false)).then_some(())
        })
    })
    .expect("NOT_SERVING target taken out");
    assert_eq!(healthy(b.addr), Some(true));
    let mut client = h2c_client(&gw).await;
    let before = a.served();
    for _ in 0..4 {
        client.unary(echo("x")).await.unwrap();
    }
    assert_eq!(a.served(), before, "no call reaches the NOT_SERVING target");

    // With no target serving, the gateway's 503 reaches the client as UNAVAILABLE.
    b.set_health(ServingStatus::NotServing).await;
    blocking(|| {
        wait_for(Duration::from_secs(10), || {
            (healthy(b.addr) == Some(false)).then_some(())
        })
    })
    .expect("second target taken out");
    let status = client.unary(echo("x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "no healthy upstream target");

    a.set_health(ServingStatus::Serving).await;
    blocking(|| {
        wait_for(Duration::from_secs(10), || {
            (healthy(a.addr) == Some(true)).then_some(())
        })
    })
    .expect("SERVING again brings it back");
    client.unary(echo("back")).await.unwrap();
}

#[test]
fn grpc_health_check_on_a_group_without_h2_fails_the_check() {
    let (code, out) = check_config(&format!(
        r#"{PREAMBLE}
[upstreams.grpc]
targets = [{{ address = "127.0.0.1:9" }}]
[upstreams.grpc.health_check]
kind = "grpc"

[[routes]]
name = "grpc"
upstream = "grpc"
"#
    ));
    assert_ne!(code, 0);
    assert!(out.contains("upstreams.grpc.health_check.kind"), "{out}");
    assert!(out.contains("h2 = true"), "{out}");
}

#[test]
fn h2c_on_a_tls_listener_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "tls.test");
    let config = tls_preamble(&cert, &key)
        .replace("[listeners.tls]", "h2c = true\n[listeners.tls]")
        + "\n[[routes]]\nname = \"r\"\n[routes.respond]\nstatus = 200\n";
    let (code, out) = check_config(&config);
    assert_ne!(code, 0);
    assert!(out.contains("listeners[0].h2c"), "{out}");
}

/// A length-prefixed gRPC frame of `msg`.
pub(crate) fn frame(flag: u8, msg: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// The frames of a gRPC-Web body: (flag, payload).
pub(crate) fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    assert!(body.is_empty(), "trailing bytes");
    out
}

fn grpc_web_gateway(server: &Server) -> Gateway {
    Gateway::start(&grpc_route(
        server,
        "",
        r#"grpc_web = true
[routes.cors]
allow_origins = ["https://app.test"]
allow_methods = ["POST"]
allow_headers = ["content-type", "x-grpc-web", "x-user-agent", "grpc-timeout"]
expose_headers = ["grpc-status", "grpc-message"]"#,
    ))
}

/// A browser-style gRPC-Web unary call over HTTP/1.1: (status, content type, frames).
fn grpc_web_call(gw: &Gateway, text: bool, req: &EchoRequest) -> (u16, String, Vec<(u8, Vec<u8>)>) {
    grpc_web_call_to(gw, "/tollgate.test.Echo/Unary", text, req)
}

/// [`grpc_web_call`] to any method of the echo service.
fn grpc_web_call_to(
    gw: &Gateway,
    path: &str,
    text: bool,
    req: &EchoRequest,
) -> (u16, String, Vec<(u8, Vec<u8>)>) {
    use base64::Engine;
    use prost::Message;
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = frame(0, &req.encode_to_vec());
    let (ct, body) = if text {
        ("application/grpc-web-text", b64.encode(body).into_bytes())
    } else {
        ("application/grpc-web+proto", body)
    };
    let resp = client()
        .post(gw.url(path))
        .header("content-type", ct)
        .header("x-grpc-web", "1")
        .header("origin", "https://app.test")
        .body(body)
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    let mut body = resp.bytes().unwrap().to_vec();
    if text {
        body = b64.decode(body).unwrap();
    }
    (status, ct, frames(&body))
}

#[test]
fn grpc_web_unary_call_in_both_content_types() {
    use prost::Message;
    let server = Server::start(None);
    let gw = grpc_web_gateway(&server);
    for text in [false, true] {
        let (status, ct, frames) = grpc_web_call(&gw, text, &echo("from the browser"));
        assert_eq!(status, 200);
        let want = if text {
            "application/grpc-web-text"
        } else {
            "application/grpc-web"
        };
        assert!(ct.starts_with(want), "{ct}");
        assert_eq!(frames.len(), 2, "a message and the trailer frame");
        assert_eq!(frames[0].0, 0);
        let reply = EchoReply::decode(&frames[0].1[..]).unwrap();
        assert_eq!(reply.message, "from the browser");
        assert_eq!(frames[1].0, 0x80);
        let trailers = String::from_utf8(frames[1].1.clone()).unwrap();
        assert!(trailers.contains("grpc-status:0"), "{trailers}");
    }
}

/// A server stream through the gRPC-Web bridge, in both content types: each message in its
/// own frame, in order, then the trailer frame.
#[test]
fn grpc_web_server_streaming_in_both_content_types() {
    use prost::Message;
    let server = Server::start(None);
    let gw = grpc_web_gateway(&server);
    for text in [false, true] {
        let req = EchoRequest {
            message: "n".into(),
            count: 3,
            ..Default::default()
        };
        let (status, _, frames) =
            grpc_web_call_to(&gw, "/tollgate.test.Echo/ServerStream", text, &req);
        assert_eq!(status, 200);
        assert_eq!(frames.len(), 4, "three messages and the trailer frame");
        let messages: Vec<String> = frames[..3]
            .iter()
            .map(|(flag, m)| {
                assert_eq!(*flag, 0);
                EchoReply::decode(&m[..]).unwrap().message
            })
            .collect();
        assert_eq!(messages, ["n 0", "n 1", "n 2"]);
        assert_eq!(frames[3].0, 0x80);
        let trailers = String::from_utf8(frames[3].1.clone()).unwrap();
        assert!(trailers.contains("grpc-status:0"), "{trailers}");
    }
}

#[test]
fn grpc_web_errors_and_cors_preflight() {
    let server = Server::start(None);
    let gw = grpc_web_gateway(&server);
    // An upstream error arrives trailers-only: the status is in the response headers.
    let resp = client()
        .post(gw.url("/tollgate.test.Echo/Unary"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(frame(
            0,
            &prost::Message::encode_to_vec(&EchoRequest {
                fail_code: Code::NotFound as i32,
                ..Default::default()
            }),
        ))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "5");

    // The browser's preflight for a gRPC-Web call.
    let resp = client()
        .request(
            reqwest::Method::OPTIONS,
            gw.url("/tollgate.test.Echo/Unary"),
        )
        .header("origin", "https://app.test")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-grpc-web,x-user-agent",
        )
        .send()
        .unwrap();
    assert_eq!(resp.status(), 204);
    let allowed = resp.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("x-grpc-web"), "{allowed}");
    // Actual responses expose the status headers to the page's script.
    let resp = client()
        .post(gw.url("/tollgate.test.Echo/Unary"))
        .header("content-type", "application/grpc-web+proto")
        .header("origin", "https://app.test")
        .body(frame(0, &prost::Message::encode_to_vec(&echo("x"))))
        .send()
        .unwrap();
    let exposed = resp.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("grpc-status"), "{exposed}");

    // A malformed text body is the client's error, said as a gRPC status.
    let resp = client()
        .post(gw.url("/tollgate.test.Echo/Unary"))
        .header("content-type", "application/grpc-web-text")
        .body("!!!not base64!!!")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "13", "{:?}", resp.headers());
}

#[test]
fn grpc_web_on_a_group_without_h2_fails_the_check() {
    let (code, out) = check_config(&format!(
        r#"{PREAMBLE}
[upstreams.grpc]
targets = [{{ address = "127.0.0.1:9" }}]

[[routes]]
name = "grpc"
upstream = "grpc"
grpc_web = true
"#
    ));
    assert_ne!(code, 0);
    assert!(out.contains("routes[0].grpc_web"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_size_on_an_h2_upstream_is_refused_not_hung() {
    let server = Server::start(None);
    let gw = h2c_gateway(&grpc_route(&server, "", "max_body_size = \"1KiB\""));
    let mut client = h2c_client(&gw).await;
    // One message over the limit (the limit is per message on a gRPC stream).
    let big = "x".repeat(1100);
    let outbound = futures::stream::iter(vec![echo("small"), echo(&big), echo("after")]);
    let started = Instant::now();
    let status = client.client_stream(outbound).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Regression: every gateway-made gRPC error reached grpcio (the C-core client behind Python,
/// Ruby, PHP, C++ and Objective-C gRPC) as `UNKNOWN` ("Stream removed"), and upstream down
/// as `CANCELLED`: the gateway sent HEADERS with `grpc-status` but without END_STREAM, then
/// an empty DATA frame. A Trailers-Only response is one HEADERS frame with END_STREAM; tonic
/// accepted both. Also: a gRPC client stream was limited by its total bytes, not per
/// message. Checked through grpcio itself (`tests/conformance/grpcio_client.py`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_made_grpc_errors_reached_grpcio_as_unknown() {
    let server = Server::start(None);
    let dead = free_port();
    let gw = h2c_gateway(&format!(
        r#"
[consumers.svc]
keys = ["svc-key-0123456789ab"]

[upstreams.grpc]
targets = [{{ address = "{addr}" }}]
h2 = true

[upstreams.slow]
targets = [{{ address = "{addr}" }}]
h2 = true
read_timeout = "300ms"

[[routes]]
name = "admin"
path = "/tollgate.test.Echo/Bidi"
upstream = "grpc"
auth = ["api_key"]
roles = ["admin"]

[[routes]]
name = "slow"
path_prefix = "/slow"
strip_prefix = true
upstream = "slow"

[upstreams.dead]
targets = [{{ address = "127.0.0.1:{dead}" }}]
h2 = true

[[routes]]
name = "grpc"
path_prefix = "/tollgate.test.Echo"
upstream = "grpc"
auth = ["api_key"]
rate_limits = [{{ limit = 3, window = "60s", key = "consumer" }}]
max_body_size = "64KiB"

[[routes]]
name = "stream"
path = "/tollgate.test.Echo/ClientStream"
upstream = "grpc"
max_body_size = "64KiB"

[[routes]]
name = "dead"
path_prefix = "/tollgate.test.Dead"
upstream = "dead"
"#,
        addr = server.addr
    ));
    let key = serde_json::json!([["x-api-key", "svc-key-0123456789ab"]]);
    let cases = serde_json::json!([
        {"name": "ok", "method": "/tollgate.test.Echo/Unary", "metadata": key, "message": "hi"},
        {"name": "no token", "method": "/tollgate.test.Echo/Unary", "message": "hi"},
        {"name": "too large", "method": "/tollgate.test.Echo/Unary", "metadata": key, "pad": 100000},
        {"name": "rate limit", "method": "/tollgate.test.Echo/Unary", "metadata": key, "repeat": 3},
        {"name": "no route", "method": "/grpc.health.v1.Health/Check"},
        {"name": "upstream down", "method": "/tollgate.test.Dead/Unary"},
        {"name": "missing role", "method": "/tollgate.test.Echo/Bidi", "metadata": key},
        {"name": "stripped prefix", "method": "/slow/tollgate.test.Echo/Unary", "message": "hi"},
        {"name": "upstream timeout", "method": "/slow/tollgate.test.Echo/Unary", "delay_ms": 2000},
    ]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/conformance/grpcio_client.py"
    );
    let addr = gw.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .arg(addr)
            .arg(cases.to_string())
            .output()
            .expect("python3 with grpcio (scripts/setup.sh installs it)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let code = |name: &str| {
        results
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| {
                (
                    r["code"].as_str().unwrap().to_string(),
                    r["details"].as_str().unwrap().to_string(),
                )
            })
            .unwrap()
    };
    assert_eq!(code("ok").0, "OK", "{results}");
    assert_eq!(code("no token").0, "UNAUTHENTICATED", "{results}");
    assert_eq!(
        code("too large"),
        (
            "RESOURCE_EXHAUSTED".into(),
            "message larger than max_body_size".into()
        ),
        "{results}"
    );
    assert_eq!(
        code("rate limit"),
        ("RESOURCE_EXHAUSTED".into(), "rate limit exceeded".into()),
        "{results}"
    );
    assert_eq!(code("no route").0, "UNIMPLEMENTED", "{results}");
    assert_eq!(code("upstream down").0, "UNAVAILABLE", "{results}");
    assert_eq!(code("missing role").0, "PERMISSION_DENIED", "{results}");
    // Regression: a route's strip or rewrite dropped the scheme and authority of an
    // HTTP/2 request's URI, and the HTTP/2 upstream call failed ("invalid upstream
    // response", UNKNOWN).
    assert_eq!(code("stripped prefix").0, "OK", "{results}");
    assert_eq!(code("upstream timeout").0, "DEADLINE_EXCEEDED", "{results}");

    // A client stream of 12 messages of 32 KiB (384 KiB in all) under a 64 KiB limit per
    // message passes; the total is no limit.
    let mut client = h2c_client(&gw).await;
    let messages: Vec<EchoRequest> = (0..12).map(|_| echo(&"m".repeat(32 * 1024))).collect();
    let reply = client
        .client_stream(futures::stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.index, 12);
    // One message over the limit ends the call with RESOURCE_EXHAUSTED.
    let messages = vec![echo("small"), echo(&"m".repeat(70 * 1024))];
    let status = client
        .client_stream(futures::stream::iter(messages))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

/// gRPC's interop test cases (the 14 of the conformance issue and a 4 MiB message), with
/// grpcio's client and server (a second implementation, `tests/conformance/grpc_interop.py`):
/// direct, through the gateway over h2c, and through it over TLS with ALPN h2. Every case
/// gives the same result all three ways.
#[test]
fn grpc_interop_cases_give_the_same_result_through_the_gateway() {
    use std::io::BufRead;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/conformance/grpc_interop.py"
    );
    // The server lives while its standard input is open: dropping the handle stops it.
    let mut server = std::process::Command::new("python3")
        .args([script, "server"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with grpcio and grpcio-tools (scripts/setup.sh installs them)");
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .strip_prefix("PORT ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("the interop server said {line:?}"));
    let route = format!(
        r#"
[upstreams.interop]
targets = [{{ address = "127.0.0.1:{port}" }}]
h2 = true

[[routes]]
name = "interop"
path_prefix = "/"
upstream = "interop"
"#
    );
    let h2c = h2c_gateway(&route);
    let (ca, cert, key) = pki(&["tls.test"]);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let (cert_file, key_file, ca_file) = (
        write("gw.crt", &cert),
        write("gw.key", &key),
        write("ca.crt", &ca),
    );
    let tls =
        Gateway::start_full(&format!("{}\n{route}", tls_preamble(&cert_file, &key_file))).unwrap();
    let run = |args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new("python3")
            .arg(script)
            .arg("client")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let direct = run(&[&format!("127.0.0.1:{port}")]);
    let via_h2c = run(&[&h2c.addr.to_string()]);
    let ca_path = ca_file.display().to_string();
    let via_tls = run(&[
        &tls.addr.to_string(),
        "--tls",
        &ca_path,
        "--authority",
        "tls.test",
    ]);
    assert_eq!(direct.as_object().unwrap().len(), 15, "{direct:#}");
    assert!(
        direct.as_object().unwrap().values().all(|v| v == "passed"),
        "every case passes direct: {direct:#}"
    );
    assert_eq!(via_h2c, direct, "through the gateway over h2c");
    assert_eq!(via_tls, direct, "through the gateway over TLS with ALPN h2");
    // Regression: a call the client cancelled before any answer was logged as a 500, as
    // if the gateway or the upstream had failed; it is nginx's 499 and says why.
    let cancelled = h2c.wait_access_log(|l| {
        l["path"] == "/grpc.testing.TestService/StreamingInputCall" && l["status"] == 499
    });
    assert_eq!(cancelled["reason"], "client_closed_request", "{cancelled}");
    drop(server.stdin.take());
    let _ = server.wait();
}
