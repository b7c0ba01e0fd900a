//! Request validation against the route's OpenAPI operation (`validate = "request"`): a
//! violation is a 400 naming the field and the rule, before the upstream is called; a valid
//! body reaches the upstream whole, whether it came with a length or chunked.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::time::Duration;

const ORDERS: &str = r##"
openapi: "3.0.3"
info: { title: orders, version: "1" }
paths:
  /orders:
    get:
      parameters:
        - { name: limit, in: query, schema: { type: integer, minimum: 1, maximum: 100 } }
      responses: { "200": { description: ok } }
    post:
      parameters:
        - { name: X-Tenant, in: header, required: true, schema: { type: string } }
      requestBody:
        required: true
        content:
          application/json:
            schema: { $ref: "#/components/schemas/NewOrder" }
      responses: { "201": { description: created } }
  /orders/{id}:
    get:
      parameters:
        - { name: id, in: path, required: true, schema: { type: integer, minimum: 1 } }
      responses: { "200": { description: ok } }
components:
  schemas:
    NewOrder:
      type: object
      required: [sku, quantity]
      properties:
        sku: { type: string, minLength: 1 }
        quantity: { type: integer, minimum: 1 }
        note: { type: string }
"##;

fn gateway(backend: &Backend) -> Gateway {
    let body = format!(
        r#"
[upstreams.orders]
targets = [{{ address = "{}" }}]

[[routes]]
name = "orders"
path_prefix = "/api/v1/orders"
rewrite_prefix = "/orders"
upstream = "orders"
openapi = "orders.yaml"
validate = "request"
"#,
        backend.addr
    );
    Gateway::start_written(&format!("{PREAMBLE}\n{body}"), |dir, text| {
        std::fs::write(dir.join("orders.yaml"), ORDERS)?;
        let path = dir.join("tollgate.toml");
        std::fs::write(&path, text).map(|_| path)
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn refusal(resp: reqwest::blocking::Response) -> (u16, serde_json::Value) {
    (resp.status().as_u16(), resp.json().unwrap())
}

#[test]
fn a_valid_json_body_reaches_the_upstream_whole() {
    let backend = Backend::echo("orders");
    let gw = gateway(&backend);
    let body = r#"{"sku":"A-1","quantity":2,"note":"gift"}"#;
    let resp = client()
        .post(gw.url("/api/v1/orders"))
        .header("X-Tenant", "t1")
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = backend.last_request();
    assert_eq!(got.path, "/orders");
    assert_eq!(got.body, body.as_bytes());
    // Chunked, in pieces: read whole, checked, replayed.
    let raw = format!(
        "POST /api/v1/orders HTTP/1.1\r\nHost: a\r\nX-Tenant: t1\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\n{{\"sku\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        body.len() - 5,
        &body[5..]
    );
    let out = gw.raw(raw.as_bytes(), Duration::from_secs(5));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(backend.last_request().body, body.as_bytes());
}

#[test]
fn an_invalid_body_is_refused_naming_the_field_and_rule_before_the_upstream_is_called() {
    let backend = Backend::echo("orders");
    let gw = gateway(&backend);
    let post = |body: &str| {
        client()
            .post(gw.url("/api/v1/orders"))
            .header("X-Tenant", "t1")
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap()
    };
    let (status, e) = refusal(post(r#"{"sku":"A-1","quantity":0}"#));
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["reason"], "request_invalid");
    assert_eq!(e["field"], "body/quantity");
    assert!(e["rule"].as_str().unwrap().contains("minimum"), "{e}");
    assert!(e["request_id"].as_str().is_some());
    let (status, e) = refusal(post(r#"{"sku":"A-1"}"#));
    assert_eq!((status, e["field"].as_str()), (400, Some("body")), "{e}");
    assert!(e["rule"].as_str().unwrap().contains("quantity"), "{e}");
    let (status, e) = refusal(post("{not json"));
    assert_eq!(status, 400);
    assert!(e["rule"].as_str().unwrap().starts_with("not JSON"), "{e}");
    let (status, e) = refusal(post(""));
    assert_eq!((status, e["rule"].as_str()), (400, Some("required")), "{e}");
    assert_eq!(backend.hits(), 0);
    let line = gw.wait_access_log(|l| l["status"] == 400);
    assert_eq!(line["reason"], "request_invalid");
}

#[test]
fn parameters_and_required_headers_are_checked() {
    let backend = Backend::echo("orders");
    let gw = gateway(&backend);
    let (status, e) = refusal(
        client()
            .get(gw.url("/api/v1/orders?limit=500"))
            .send()
            .unwrap(),
    );
    assert_eq!(
        (status, e["field"].as_str()),
        (400, Some("query.limit")),
        "{e}"
    );
    let (status, e) = refusal(client().get(gw.url("/api/v1/orders/zero")).send().unwrap());
    assert_eq!((status, e["field"].as_str()), (400, Some("path.id")), "{e}");
    let (status, e) = refusal(
        client()
            .post(gw.url("/api/v1/orders"))
            .header("Content-Type", "application/json")
            .body(r#"{"sku":"A","quantity":1}"#)
            .send()
            .unwrap(),
    );
    assert_eq!(
        (status, e["field"].as_str()),
        (400, Some("header.x-tenant")),
        "{e}"
    );
    assert_eq!(backend.hits(), 0);
    assert_eq!(
        client()
            .get(gw.url("/api/v1/orders/7?x=1"))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(gw.url("/api/v1/orders?limit=5"))
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn undocumented_paths_and_methods_are_refused() {
    let backend = Backend::echo("orders");
    let gw = gateway(&backend);
    let (status, e) = refusal(
        client()
            .get(gw.url("/api/v1/orders/7/items"))
            .send()
            .unwrap(),
    );
    assert_eq!(
        (status, e["reason"].as_str()),
        (404, Some("no_operation")),
        "{e}"
    );
    let (status, e) = refusal(client().delete(gw.url("/api/v1/orders/7")).send().unwrap());
    assert_eq!(
        (status, e["reason"].as_str()),
        (405, Some("method_not_documented")),
        "{e}"
    );
    assert_eq!(backend.hits(), 0);
}

#[test]
fn a_body_too_large_to_validate_is_refused_unread() {
    let backend = Backend::echo("orders");
    let gw = gateway(&backend);
    let big = format!(
        r#"{{"sku":"A","quantity":1,"note":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let (status, e) = refusal(
        client()
            .post(gw.url("/api/v1/orders"))
            .header("X-Tenant", "t1")
            .header("Content-Type", "application/json")
            .body(big)
            .send()
            .unwrap(),
    );
    assert_eq!(
        (status, e["reason"].as_str()),
        (413, Some("body_too_large_to_validate")),
        "{e}"
    );
    assert_eq!(backend.hits(), 0);
}

#[test]
fn validate_without_an_openapi_file_fails_the_config_check() {
    let (code, out) = check_config(&format!(
        "{PREAMBLE}\n[upstreams.a]\ntargets = [{{ address = \"127.0.0.1:9\" }}]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"a\"\nvalidate = \"request\"\n"
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("routes[0].validate"), "{out}");
}
