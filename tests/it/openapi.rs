//! The routing table and the OpenAPI document made from the configuration: `GET /routes` and
//! `GET /openapi.json` on the admin listener of a running gateway (made once per generation,
//! so a reload changes them), `tollgate routes` and `tollgate openapi` printing the same, the
//! services' own files (`conf/openapi/`) merged under their routes, the document checked by
//! a validator written by others (`openapi-spec-validator`), and the gateway exercised with
//! the document by `schemathesis`: no 5xx of its own, every answer as documented.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A secret of 32 bytes for the HS256 provider.
const SECRET: &str = "openapi-test-secret-0123456789abcdef";

/// The platform's services' files, copied beside the configuration (`openapi/NAME.yaml`).
fn copy_fixtures(dir: &Path) {
    let to = dir.join("openapi");
    std::fs::create_dir_all(&to).unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/openapi");
    for name in [
        "users.yaml",
        "orders.yaml",
        "products.yaml",
        "payments.yaml",
        "notifications.yaml",
    ] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
}

/// The test preamble with a renamed request-id header.
fn preamble() -> String {
    PREAMBLE.replace(
        "[server]\n",
        "[server]\nrequest_id_header = \"X-Correlation-ID\"\n",
    )
}

/// Five services behind one upstream, each route with its service's file (paths relative to
/// the configuration), plus routes without one.
fn platform(backend: &Backend) -> String {
    format!(
        r#"
[openapi]
title = "Platform API"
version = "2.3.0"
description = "Users, orders, products, payments and notifications."
servers = ["https://api.example.com"]

[upstreams.svc]
targets = [{{ address = "{addr}" }}]

[auth.jwt.main]
algorithms = ["HS256"]
secret_file = "jwt.secret"

[consumers.partner]
keys = ["partner-key-0123456789"]
rate_limits = [{{ limit = 1000, window = "1m" }}]

[[routes]]
name = "auth"
path_prefix = "/api/v1/auth"
methods = ["POST"]
upstream = "svc"
rewrite_prefix = "/auth"
openapi = "openapi/users.yaml"

[[routes]]
name = "users"
path_prefix = "/api/v1/users"
upstream = "svc"
rewrite_prefix = "/users"
auth = ["jwt:main"]
openapi = "openapi/users.yaml"

[[routes]]
name = "orders"
path_prefix = "/api/v1/orders"
upstream = "svc"
rewrite_prefix = "/orders"
auth = ["jwt:main", "api_key"]
rate_limits = [{{ limit = 100, window = "1m", key = "consumer" }}]
openapi = "openapi/orders.yaml"

[[routes]]
name = "products"
path_prefix = "/api/v1/products"
upstream = "svc"
rewrite_prefix = "/products"
openapi = "openapi/products.yaml"
[routes.cache]
ttl = "30s"

[[routes]]
name = "payments"
path_prefix = "/api/v1/payments"
upstream = "svc"
rewrite_prefix = "/payments"
auth = ["jwt:main"]
roles = ["payments", "admin"]
openapi = "openapi/payments.yaml"

[[routes]]
name = "notifications"
path_prefix = "/api/v1/notifications"
upstream = "svc"
rewrite_prefix = "/notifications"
auth = ["jwt:main"]
openapi = "openapi/notifications.yaml"

[[routes]]
name = "legacy"
hosts = ["legacy.example.com"]
path_prefix = "/v0"
methods = ["GET"]
upstream = "svc"
strip_prefix = true
[routes.request_headers]
set = {{ "X-Legacy" = "1" }}

[[routes]]
name = "ping"
path = "/ping"
methods = ["GET"]
[routes.respond]
body = "pong"
"#,
        addr = backend.addr
    )
}

/// A gateway running [`platform`], its files beside its configuration.
fn start_platform(backend: &Backend) -> Gateway {
    Gateway::start_written(
        &format!("{}\n{}", preamble(), platform(backend)),
        |dir, text| {
            copy_fixtures(dir);
            std::fs::write(dir.join("jwt.secret"), SECRET)?;
            let path = dir.join("tollgate.toml");
            std::fs::write(&path, text).map(|_| path)
        },
    )
    .unwrap_or_else(|e| panic!("gateway did not start: {e}"))
}

fn get_json(url: &str) -> (u16, Option<String>, Value) {
    let r = client().get(url).send().unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    (status, ct, r.json().unwrap())
}

/// `tollgate ARGS`: exit code, stdout, stderr.
fn tollgate(args: &[&str], config: &Path) -> (i32, String, String) {
    let out = Command::new(tollgate_bin())
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_admin_listener_serves_the_routing_table_and_document_of_the_serving_generation() {
    let backend = Backend::echo("svc");
    let gw = start_platform(&backend);

    let (status, ct, routes) = get_json(&gw.admin_url("/routes"));
    assert_eq!(status, 200);
    assert_eq!(ct.as_deref(), Some("application/json"));
    let names: Vec<&str> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "auth",
            "users",
            "orders",
            "products",
            "payments",
            "notifications",
            "legacy",
            "ping"
        ]
    );
    let orders = &routes[2];
    assert_eq!(orders["path"], "/api/v1/orders");
    assert_eq!(orders["match"], "prefix");
    assert_eq!(orders["upstream"], "svc");
    assert_eq!(orders["auth"], json!(["jwt:main", "api_key"]));
    assert_eq!(orders["rate_limits"][0]["limit"], 100);
    assert_eq!(orders["rate_limits"][0]["window"], "1m");
    assert_eq!(orders["rate_limits"][0]["key"], "consumer");
    assert_eq!(orders["transforms"]["rewrite_prefix"], "/orders");
    let ops: Vec<String> = orders["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            format!(
                "{} {}",
                o["method"].as_str().unwrap(),
                o["path"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            "GET /api/v1/orders",
            "POST /api/v1/orders",
            "GET /api/v1/orders/{id}"
        ]
    );
    assert_eq!(routes[3]["cache"]["ttl"], "30s");
    assert_eq!(routes[4]["roles"], json!(["payments", "admin"]));
    assert_eq!(routes[6]["hosts"], json!(["legacy.example.com"]));
    assert_eq!(routes[6]["transforms"]["strip_prefix"], true);
    assert_eq!(
        routes[6]["transforms"]["request_headers"]["set"]["X-Legacy"],
        "1"
    );
    assert_eq!(routes[7]["action"], "respond");
    assert_eq!(routes[7]["respond"]["status"], 200);

    let (status, ct, doc) = get_json(&gw.admin_url("/openapi.json"));
    assert_eq!(status, 200);
    assert_eq!(ct.as_deref(), Some("application/json"));
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Platform API");
    assert_eq!(doc["info"]["version"], "2.3.0");
    assert_eq!(doc["servers"][0]["url"], "https://api.example.com");
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    for p in [
        "/api/v1/auth/login",
        "/api/v1/auth/register",
        "/api/v1/users/{id}",
        "/api/v1/orders",
        "/api/v1/orders/{id}",
        "/api/v1/products",
        "/api/v1/products/{id}",
        "/api/v1/products/{id}/inventory",
        "/api/v1/payments",
        "/api/v1/payments/{id}",
        "/api/v1/notifications",
        "/v0/{path}",
        "/ping",
    ] {
        assert!(
            paths.contains(&&p.to_string()),
            "{p} missing from {paths:?}"
        );
    }
    // The users service's file is behind two routes: each publishes only what it reaches.
    assert!(!paths.iter().any(|p| p.starts_with("/api/v1/auth/users")));
    assert!(!paths.iter().any(|p| p.starts_with("/api/v1/users/auth")));
    let login = &doc["paths"]["/api/v1/auth/login"]["post"];
    assert!(login.get("security").is_none(), "{login}");
    assert!(
        login["responses"].get("401").is_some(),
        "the service's own 401"
    );
    let payment = &doc["paths"]["/api/v1/payments/{id}"]["get"];
    assert_eq!(
        payment["security"],
        json!([{"jwt": ["payments"]}, {"jwt": ["admin"]}])
    );
    assert_eq!(payment["x-tollgate-route"], "payments");
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["jwt"]["bearerFormat"], "JWT");
    assert_eq!(schemes["api_key"]["name"], "X-API-Key");
    let bad = &doc["components"]["responses"]["BadRequest"];
    assert!(bad["headers"].get("X-Correlation-ID").is_some(), "{bad}");
    // Limits apply to orders only (and to the partner's key wherever it is accepted).
    assert!(doc["paths"]["/api/v1/orders"]["get"]["responses"]
        .get("429")
        .is_some());
    assert!(doc["paths"]["/api/v1/products"]["get"]["responses"]
        .get("429")
        .is_none());

    // Admin answers: GET only.
    let r = client().post(gw.admin_url("/routes")).send().unwrap();
    assert_eq!(r.status(), 405);

    // A reload makes both anew, with the new generation.
    let mut next = platform(&backend).replace("title = \"Platform API\"", "title = \"Next\"");
    next.push_str(
        "\n[[routes]]\nname = \"extra\"\npath = \"/extra\"\nupstream = \"svc\"\nmethods = [\"DELETE\"]\n",
    );
    gw.rewrite_config_full(&format!("{}\n{next}", preamble()));
    let (status, body) = gw.reload();
    assert_eq!(status, 200, "{body}");
    let (_, _, routes) = get_json(&gw.admin_url("/routes"));
    assert_eq!(routes.as_array().unwrap().len(), 9);
    assert_eq!(routes[8]["methods"], json!(["DELETE"]));
    let (_, _, doc) = get_json(&gw.admin_url("/openapi.json"));
    assert_eq!(doc["info"]["title"], "Next");
    assert!(doc["paths"]["/extra"]["delete"].is_object());

    // A service file gone: the reload is refused at the route's key, the old generation
    // keeps serving its document.
    std::fs::remove_file(gw.dir.path().join("openapi/payments.yaml")).unwrap();
    gw.rewrite_config_full(&format!("{}\n{}", preamble(), platform(&backend)));
    let (status, body) = gw.reload();
    assert_eq!(status, 400, "{body}");
    let problems = body["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["key"] == "routes[4].openapi"
            && p["problem"].as_str().unwrap().contains("cannot read")),
        "{body}"
    );
    let (_, _, doc) = get_json(&gw.admin_url("/openapi.json"));
    assert_eq!(doc["info"]["title"], "Next");
}

#[test]
fn tollgate_routes_and_openapi_print_what_the_admin_listener_serves() {
    let backend = Backend::echo("svc");
    let gw = start_platform(&backend);

    let (code, table, err) = tollgate(&["routes"], &gw.config_path);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 9, "{table}");
    let header = lines[0];
    for column in [
        "ROUTE",
        "HOSTS",
        "PATH",
        "METHODS",
        "UPSTREAM",
        "AUTH",
        "ROLES",
        "LIMITS",
        "CACHE",
        "TRANSFORMS",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let orders = lines.iter().find(|l| l.starts_with("orders ")).unwrap();
    for cell in [
        "/api/v1/orders/*",
        "svc",
        "jwt:main|api_key",
        "100/1m by consumer",
        "rewrite_prefix /orders",
    ] {
        assert!(orders.contains(cell), "{cell} not in {orders}");
    }
    let products = lines.iter().find(|l| l.starts_with("products ")).unwrap();
    assert!(products.contains("ttl 30s"), "{products}");
    let ping = lines.iter().find(|l| l.starts_with("ping ")).unwrap();
    assert!(ping.contains("respond 200"), "{ping}");
    // Aligned: the PATH column starts at one offset on every line.
    let at = header.find("PATH").unwrap();
    for l in &lines[1..] {
        assert_eq!(&l[at - 2..at], "  ", "{table}");
        assert_ne!(&l[at..=at], " ", "{table}");
    }

    let (code, json_table, err) = tollgate(&["routes", "--json"], &gw.config_path);
    assert_eq!(code, 0, "{err}");
    let (_, _, served) = get_json(&gw.admin_url("/routes"));
    assert_eq!(serde_json::from_str::<Value>(&json_table).unwrap(), served);

    let (code, doc, err) = tollgate(&["openapi"], &gw.config_path);
    assert_eq!(code, 0, "{err}");
    let (_, _, served) = get_json(&gw.admin_url("/openapi.json"));
    assert_eq!(serde_json::from_str::<Value>(&doc).unwrap(), served);

    // A configuration whose service file is missing: both refuse it, as `-t` does.
    let bad = gw.dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&gw.config_path)
        .unwrap()
        .replace("openapi/orders.yaml", "openapi/missing.yaml");
    std::fs::write(&bad, text).unwrap();
    for args in [&["routes"][..], &["openapi"], &["-t"]] {
        let (code, out, err) = tollgate(args, &bad);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(
            err.contains("routes[2].openapi") && err.contains("missing.yaml"),
            "{args:?}: {err}"
        );
    }
}

/// The document of [`platform`] (five services' files, routes of each kind), checked by
/// `openapi-spec-validator` (scripts/requirements-test.txt).
#[test]
fn the_generated_document_passes_openapi_spec_validator() {
    let backend = Backend::echo("svc");
    let dir = tempfile::tempdir().unwrap();
    copy_fixtures(dir.path());
    std::fs::write(dir.path().join("jwt.secret"), SECRET).unwrap();
    let config = dir.path().join("tollgate.toml");
    let mut text = format!("{}\n{}", preamble(), platform(&backend));
    // Routes of the other kinds: aggregation, header matching, an exact path, API keys only.
    text.push_str(
        r#"
[[routes]]
name = "summary"
path_prefix = "/api/v1/summary"
[routes.aggregate]
parts = [{ name = "orders", upstream = "svc", path = "/orders" }]

[[routes]]
name = "beta"
path_prefix = "/api/v2"
upstream = "svc"
headers = { "X-Beta" = "1" }
allow_content_types = ["application/json"]

[[routes]]
name = "partners"
path = "/api/v1/partners"
upstream = "svc"
auth = ["api_key"]
ip_allow = ["127.0.0.0/8"]
"#,
    );
    let text = text
        .replace("{dir}", &dir.path().display().to_string())
        .replace("{listen}", &format!("127.0.0.1:{}", free_port()))
        .replace("{admin}", &format!("127.0.0.1:{}", free_port()));
    std::fs::write(&config, text).unwrap();
    let (code, doc, err) = tollgate(&["openapi"], &config);
    assert_eq!(code, 0, "{err}");
    let parsed: Value = serde_json::from_str(&doc).unwrap();
    assert!(parsed["paths"]["/api/v2/{path}"]["get"]["responses"]
        .get("415")
        .is_some());
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &doc).unwrap();
    validate(&file);
}

/// `python3 -m openapi_spec_validator FILE` says OK.
fn validate(file: &Path) {
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(file)
        .output()
        .expect("python3 with openapi-spec-validator (scripts/setup.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("OK"), "{text}");
}

/// A JWT of the test provider with `roles`, valid for an hour.
fn token(roles: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "schemathesis", "roles": roles, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// schemathesis generates requests from the document of a gateway whose routes reach the
/// built-in demo backends, sends them to it, and checks the answers: no 5xx, every status,
/// content type, header and body as documented. The demo backends echo the request as JSON,
/// which no service's own response schema describes, so the routes here carry no service
/// file: what is checked is the gateway's own surface (its answers, their schema and headers,
/// the upstream's answers passed through).
#[test]
fn schemathesis_finds_no_gateway_5xx_and_only_documented_answers() {
    let (a, b) = (free_port(), free_port());
    let body = format!(
        r#"
[[demo]]
name = "svc-a"
address = "127.0.0.1:{a}"

[[demo]]
name = "svc-b"
address = "127.0.0.1:{b}"

[upstreams.a]
targets = [{{ address = "127.0.0.1:{a}" }}]

[upstreams.b]
targets = [{{ address = "127.0.0.1:{b}" }}]

[auth.jwt.main]
algorithms = ["HS256"]
secret_file = "{{dir}}/jwt.secret"

[consumers.tester]
keys = ["tester-key-0123456789"]

[[routes]]
name = "orders"
path_prefix = "/api/v1/orders"
methods = ["GET", "POST"]
upstream = "a"
rewrite_prefix = "/orders"
auth = ["jwt:main"]

[[routes]]
name = "products"
path_prefix = "/api/v1/products"
upstream = "b"
strip_prefix = true
[routes.cache]
ttl = "5s"

[[routes]]
name = "payments"
path_prefix = "/api/v1/payments"
upstream = "a"
auth = ["jwt:main"]
roles = ["admin"]

[[routes]]
name = "partners"
path_prefix = "/api/v1/partners"
upstream = "b"
auth = ["api_key"]
rate_limits = [{{ limit = 5, window = "1m", key = "consumer" }}]

[[routes]]
name = "search"
path = "/api/v1/search"
methods = ["GET"]
upstream = "a"

[[routes]]
name = "ping"
path = "/ping"
[routes.respond]
body = "pong"
headers = {{ "Content-Type" = "text/plain" }}

[[routes]]
name = "summary"
path = "/api/v1/summary"
methods = ["GET"]
[routes.aggregate]
parts = [
  {{ name = "orders", upstream = "a", path = "/orders" }},
  {{ name = "products", upstream = "b", path = "/products" }},
]

[[routes]]
name = "beta"
path_prefix = "/api/v2"
upstream = "a"
headers = {{ "X-Beta" = "1" }}
"#
    );
    let gw = Gateway::start_written(&format!("{}\n{body}", preamble()), |dir, text| {
        std::fs::write(dir.join("jwt.secret"), SECRET)?;
        let path = dir.join("tollgate.toml");
        std::fs::write(&path, text).map(|_| path)
    })
    .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    // The demo backends start with the gateway.
    for port in [a, b] {
        let up = wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(up.is_some(), "demo backend on {port}");
    }
    let r = client().get(gw.admin_url("/openapi.json")).send().unwrap();
    let doc = r.text().unwrap();
    let file = gw.dir.path().join("openapi.json");
    std::fs::write(&file, &doc).unwrap();
    validate(&file);

    let report = gw.dir.path().join("schemathesis");
    let schemathesis = |doc: &Path, checks: &str, examples: &str| {
        let mut st = Command::new("python3");
        st.args(["-m", "schemathesis.cli", "run"])
            .arg(doc)
            .args(["--url", &format!("http://{}", gw.addr)])
            .args(["--checks", checks])
            // Bounded: a few cases per operation, every phase but the stateful one (the
            // document has no links), one seed so a failure can be run again.
            .args(["--phases", "examples,coverage,fuzzing"])
            .args(["--max-examples", examples, "--seed", "33", "--workers", "2"])
            .args(["--request-timeout", "10"])
            .args([
                "--header",
                &format!("Authorization: Bearer {}", token(&["reader"])),
            ])
            .args(["--header", "X-API-Key: tester-key-0123456789"])
            .arg("--report-dir")
            .arg(&report)
            .env("NO_COLOR", "1")
            .current_dir(gw.dir.path());
        run_bounded(st, Duration::from_secs(240))
    };

    // The checks bite: with an error schema the gateway's answers do not meet, it fails.
    let mut wrong: Value = serde_json::from_str(&doc).unwrap();
    wrong["components"]["schemas"]["Error"]["required"] = json!(["error", "no_such_field"]);
    let wrong_file = gw.dir.path().join("wrong.json");
    std::fs::write(&wrong_file, wrong.to_string()).unwrap();
    let out = schemathesis(&wrong_file, "response_schema_conformance", "2");
    assert!(
        !out.status.success(),
        "schemathesis passed a wrong document:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = schemathesis(
        &file,
        "not_a_server_error,status_code_conformance,content_type_conformance,\
         response_headers_conformance,response_schema_conformance",
        "20",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis failed:\n{stdout}\n{stderr}"
    );
    // It did call the gateway: every route took requests, some refused by the gateway
    // itself (403 for the missing role, 429 past the limit), some proxied.
    let routes = [
        "orders", "products", "payments", "partners", "search", "ping", "summary", "beta",
    ];
    let log = wait_for(Duration::from_secs(5), || {
        let log = gw.access_log();
        routes
            .iter()
            .all(|r| log.iter().any(|e| e["route"] == *r))
            .then_some(log)
    })
    .unwrap_or_else(|| panic!("some route took no request:\n{stdout}"));
    let statuses: std::collections::BTreeSet<u64> =
        log.iter().filter_map(|e| e["status"].as_u64()).collect();
    for s in [200, 403, 429] {
        assert!(statuses.contains(&s), "no {s} in {statuses:?}");
    }
    assert!(statuses.iter().all(|s| *s < 500), "{statuses:?}");
}

/// Run `cmd`, killing it when it outlives `limit`.
fn run_bounded(mut cmd: Command, limit: Duration) -> std::process::Output {
    use std::process::Stdio;
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with schemathesis (scripts/setup.sh installs it)");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = tx.send(());
        out
    });
    if rx.recv_timeout(limit).is_err() {
        let _ = Command::new("kill").arg(pid.to_string()).status();
        panic!("schemathesis ran longer than {limit:?}");
    }
    waiter.join().unwrap().unwrap()
}
