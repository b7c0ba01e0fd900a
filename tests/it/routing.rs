//! Routing: precedence, host matching, prefix strip and rewrite, direct responses, 404 shape.

use crate::common::*;

fn routes_config(a: &Backend, b: &Backend) -> String {
    format!(
        r#"
[upstreams.a]
targets = [{{ address = "{a}" }}]
[upstreams.b]
targets = [{{ address = "{b}" }}]

[[routes]]
name = "catch-all"
path_prefix = "/"
upstream = "a"

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "a"

[[routes]]
name = "api-users"
path_prefix = "/api/users"
upstream = "b"
strip_prefix = true

[[routes]]
name = "api-users-exact"
path = "/api/users/me"
upstream = "b"
rewrite_prefix = "/profile"

[[routes]]
name = "wild-host"
hosts = ["*.example.test"]
path_prefix = "/api"
upstream = "b"

[[routes]]
name = "exact-host"
hosts = ["shop.example.test"]
path_prefix = "/api"
upstream = "a"

[[routes]]
name = "post-only"
path_prefix = "/submit"
methods = ["POST"]
upstream = "b"

[[routes]]
name = "v2-header"
path_prefix = "/api"
headers = {{ "x-api-version" = "2" }}
upstream = "b"
rewrite_prefix = "/v2"

[[routes]]
name = "direct"
path = "/ping"
[routes.respond]
status = 202
headers = {{ "content-type" = "text/plain", "x-direct" = "yes" }}
body = "pong"
"#,
        a = a.addr,
        b = b.addr
    )
}

#[test]
fn most_specific_route_wins() {
    let a = Backend::echo("a");
    let b = Backend::echo("b");
    let gw = Gateway::start(&routes_config(&a, &b));
    let c = client();
    // (method, host, path, extra header, expected backend, expected upstream path)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Option<(&'a str, &'a str)>,
        &'a str,
        &'a str,
    );
    let cases: &[Case] = &[
        ("GET", "any.test", "/other", None, "a", "/other"),
        ("GET", "any.test", "/api/orders", None, "a", "/api/orders"),
        ("GET", "any.test", "/apiary", None, "a", "/apiary"),
        ("GET", "any.test", "/api/users/42?x=1", None, "b", "/42?x=1"),
        ("GET", "any.test", "/api/users", None, "b", "/"),
        ("GET", "any.test", "/api/users/me", None, "b", "/profile"),
        ("GET", "m.example.test", "/api/x", None, "b", "/api/x"),
        ("GET", "shop.example.test", "/api/x", None, "a", "/api/x"),
        (
            "GET",
            "SHOP.example.test:8443",
            "/api/x",
            None,
            "a",
            "/api/x",
        ),
        ("POST", "any.test", "/submit", None, "b", "/submit"),
        ("GET", "any.test", "/submit", None, "a", "/submit"),
        (
            "GET",
            "any.test",
            "/api/x",
            Some(("x-api-version", "2")),
            "b",
            "/v2/x",
        ),
        (
            "GET",
            "any.test",
            "/api/x",
            Some(("x-api-version", "3")),
            "a",
            "/api/x",
        ),
    ];
    for (method, host, path, header, want_backend, want_path) in cases {
        let mut req = c
            .request(method.parse().unwrap(), gw.url(path))
            .header("host", *host);
        if let Some((k, v)) = header {
            req = req.header(*k, *v);
        }
        let resp = req.send().unwrap();
        assert_eq!(resp.status(), 200, "{method} {host}{path}");
        assert_eq!(
            resp.headers()["x-backend"].to_str().unwrap(),
            *want_backend,
            "{method} {host}{path}"
        );
        let body: serde_json::Value = resp.json().unwrap();
        assert_eq!(body["path"], *want_path, "{method} {host}{path}");
    }
}

#[test]
fn direct_response_needs_no_upstream() {
    let a = Backend::echo("a");
    let b = Backend::echo("b");
    let gw = Gateway::start(&routes_config(&a, &b));
    let resp = client().get(gw.url("/ping")).send().unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["x-direct"], "yes");
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.text().unwrap(), "pong");
    assert_eq!(a.hits() + b.hits(), 0);
}

#[test]
fn no_route_is_404_json_with_request_id() {
    let a = Backend::echo("a");
    let gw = Gateway::start(&format!(
        r#"
[upstreams.a]
targets = [{{ address = "{}" }}]
[[routes]]
name = "only"
hosts = ["only.test"]
upstream = "a"
"#,
        a.addr
    ));
    let resp = client()
        .get(gw.url("/x"))
        .header("x-request-id", "req-404-check")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["x-request-id"], "req-404-check");
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["error"], "no route");
    assert_eq!(body["request_id"], "req-404-check");
    assert_eq!(a.hits(), 0);
}
