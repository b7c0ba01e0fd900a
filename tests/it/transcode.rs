//! HTTP/JSON to gRPC transcoding against a real tonic server: bindings from the descriptor
//! set's `google.api.http` rules and from the route's explicit table, path captures, query
//! parameters and JSON bodies into request messages, replies and server streams back as JSON
//! and NDJSON, gRPC statuses as HTTP statuses, and the refusals a client's mistakes get.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tollgate_grpc_fixtures::{Server, DESCRIPTOR_SET};

struct Setup {
    gw: Gateway,
    _server: Server,
    _dir: tempfile::TempDir,
}

fn route(descriptor: &str) -> String {
    format!(
        r#"
[[routes]]
name = "books"
path_prefix = "/v1"
upstream = "books"
[routes.transcode]
descriptor = "{descriptor}"
services = ["tollgate.test.Bookstore"]
[[routes.transcode.methods]]
method = "DELETE"
path = "/v1/shelves/{{shelf}}/books/{{id}}"
grpc = "tollgate.test.Bookstore/DeleteBook"
"#
    )
}

fn setup() -> Setup {
    let server = Server::start(None);
    let dir = tempfile::tempdir().unwrap();
    let pb = dir.path().join("bookstore.pb");
    std::fs::write(&pb, DESCRIPTOR_SET).unwrap();
    let gw = Gateway::start(&format!(
        r#"
[upstreams.books]
targets = [{{ address = "{}" }}]
h2 = true
{}
"#,
        server.addr,
        route(&pb.display().to_string())
    ));
    Setup {
        gw,
        _server: server,
        _dir: dir,
    }
}

fn json_of(r: reqwest::blocking::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/json"), "{ct}");
    (status, r.json().unwrap())
}

#[test]
fn get_with_path_captures_and_query_maps_to_get_book() {
    let s = setup();
    let (status, body) = json_of(
        client()
            .get(s.gw.url("/v1/shelves/fiction/books/7?with_tags=true"))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    // proto3 JSON: int64 as a string, lowerCamelCase names.
    assert_eq!(
        body,
        json!({"id": "7", "title": "fiction book 7", "author": "Tollgate",
               "tags": ["tagged"], "pageCount": 107})
    );
}

#[test]
fn post_with_json_body_maps_to_create_book() {
    let s = setup();
    let (status, body) = json_of(
        client()
            .post(s.gw.url("/v1/shelves/sci/books"))
            .header("content-type", "application/json")
            .body(r#"{"title": "Dune", "tags": ["classic"], "pageCount": 412}"#)
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"id": "1003", "title": "Dune", "tags": ["classic"], "pageCount": 412})
    );
}

#[test]
fn explicit_mapping_binds_a_method_without_http_rule() {
    let s = setup();
    let (status, body) = json_of(
        client()
            .delete(s.gw.url("/v1/shelves/a/books/3"))
            .send()
            .unwrap(),
    );
    assert_eq!((status, body), (200, json!({"deleted": true})));
}

#[test]
fn grpc_statuses_become_http_statuses_with_the_message() {
    let s = setup();
    let (status, body) = json_of(
        client()
            .get(s.gw.url("/v1/shelves/x/books/500"))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "NOT_FOUND");
    assert_eq!(body["error"], "book 500 not found on shelf x");
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    let entry =
        s.gw.wait_access_log(|e| e["path"] == "/v1/shelves/x/books/500");
    assert_eq!(
        (entry["status"].clone(), entry["grpc_status"].clone()),
        (json!(404), json!(5))
    );

    let (status, body) = json_of(
        client()
            .post(s.gw.url("/v1/shelves/sci/books"))
            .body(r#"{"author": "nobody"}"#)
            .send()
            .unwrap(),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "INVALID_ARGUMENT");
    assert_eq!(body["error"], "title is required");
}

#[test]
fn client_mistakes_get_400_naming_the_field() {
    let s = setup();
    let post = |body: &str| {
        json_of(
            client()
                .post(s.gw.url("/v1/shelves/sci/books"))
                .body(body.to_string())
                .send()
                .unwrap(),
        )
    };
    let (status, body) = post(r#"{"title": "Dune", "colour": "red"}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("colour"), "{body}");

    let (status, body) = post(r#"{"title": "Dune", "pageCount": "many"}"#);
    assert_eq!(status, 400, "{body}");

    let (status, body) = post(r#"{"title": "Dune""#);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("malformed JSON"),
        "{body}"
    );

    let (status, body) = json_of(
        client()
            .get(s.gw.url("/v1/shelves/a/books/1?shade=blue"))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("shade"), "{body}");

    let (status, body) = json_of(
        client()
            .get(s.gw.url("/v1/shelves/a/books/not-a-number"))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 400, "{body}");

    let (status, body) = json_of(client().put(s.gw.url("/v1/nothing")).send().unwrap());
    assert_eq!(status, 404, "{body}");
}

#[test]
fn server_streaming_method_gives_ndjson() {
    let s = setup();
    let r = client()
        .get(s.gw.url("/v1/shelves/poetry/books?limit=3"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0]["title"], "poetry book 1");
    assert_eq!(lines[2]["id"], "3");
}

#[test]
fn an_upstream_gone_is_a_json_503_or_502() {
    let s = setup();
    drop(s._server);
    let r = client()
        .get(s.gw.url("/v1/shelves/x/books/1"))
        .timeout(Duration::from_secs(10))
        .send()
        .unwrap();
    let (status, body) = json_of(r);
    assert!(status == 502 || status == 503, "{status} {body}");
    assert!(body["code"].as_str().is_some(), "{body}");
}

#[test]
fn a_descriptor_that_does_not_load_fails_the_check_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("garbage.pb");
    std::fs::write(&bad, b"\xff\xff not a descriptor").unwrap();
    let missing = dir.path().join("missing.pb");
    for file in [&bad, &missing] {
        let (code, out) = check_config(&format!(
            "{PREAMBLE}\n[upstreams.books]\ntargets = [{{ address = \"127.0.0.1:9\" }}]\nh2 = true\n{}",
            route(&file.display().to_string())
        ));
        assert_ne!(code, 0);
        assert!(out.contains("routes[0].transcode.descriptor"), "{out}");
        assert!(out.contains(&file.display().to_string()), "{out}");
    }
}

#[test]
fn a_mapping_to_an_unknown_method_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let pb = dir.path().join("bookstore.pb");
    std::fs::write(&pb, DESCRIPTOR_SET).unwrap();
    let config = format!(
        "{PREAMBLE}\n[upstreams.books]\ntargets = [{{ address = \"127.0.0.1:9\" }}]\nh2 = true\n{}",
        route(&pb.display().to_string()).replace("DeleteBook", "BurnBook")
    );
    let (code, out) = check_config(&config);
    assert_ne!(code, 0);
    assert!(out.contains("routes[0].transcode.methods[0].grpc"), "{out}");
    assert!(out.contains("BurnBook"), "{out}");
    // The same route on a group without h2.
    let (code, out) = check_config(&config.replace("h2 = true", ""));
    assert_ne!(code, 0);
    assert!(out.contains("routes[0].transcode"), "{out}");
}
