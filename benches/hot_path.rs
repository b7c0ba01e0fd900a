//! Criterion benches of per-request hot functions: route matching at 10, 100 and 1,000
//! routes, header transforms, forwarding-header preparation pieces, access-log formatting,
//! cache-key building and request normalization.
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use std::hint::black_box;
use tollgate::config::FromConfig;
use tollgate::internals::HeaderTransform;
use tollgate::internals::{Entry, Time};
use tollgate::internals::{HostPattern, PathMatch, Route, RouteTable};

fn table(n: usize) -> RouteTable {
    let routes = (0..n)
        .map(|i| {
            let hosts = if i % 3 == 0 {
                vec![HostPattern::Exact(format!("svc{}.example.com", i % 10))]
            } else if i % 3 == 1 {
                vec![HostPattern::Suffix(format!(".zone{}.example.com", i % 7))]
            } else {
                vec![]
            };
            let path = PathMatch::Prefix(format!("/api/v{}/resource{}", i % 4, i));
            Route::direct(&format!("r{i}"), hosts, path, i)
        })
        .collect();
    RouteTable::new(routes)
}

fn route_matching(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_match");
    let headers = HeaderMap::new();
    for n in [10usize, 100, 1000] {
        let t = table(n);
        // A request that matches the last-declared catch-all-host route: the worst case scan.
        let last = n - 1 - ((n - 1) % 3) + 2;
        let last = if last >= n { n - 1 } else { last };
        let path = format!("/api/v{}/resource{}/items/42", last % 4, last);
        g.bench_with_input(BenchmarkId::new("any_host_deep", n), &n, |b, _| {
            b.iter(|| {
                black_box(t.find(
                    Some("unknown.example.org"),
                    black_box(&path),
                    &Method::GET,
                    &headers,
                ))
            })
        });
        g.bench_with_input(BenchmarkId::new("exact_host", n), &n, |b, _| {
            b.iter(|| {
                black_box(t.find(
                    Some("svc0.example.com"),
                    black_box("/api/v0/resource0/x"),
                    &Method::GET,
                    &headers,
                ))
            })
        });
        g.bench_with_input(BenchmarkId::new("miss", n), &n, |b, _| {
            b.iter(|| {
                black_box(t.find(
                    Some("nowhere.test"),
                    black_box("/nothing/here"),
                    &Method::GET,
                    &headers,
                ))
            })
        });
    }
    g.finish();
}

fn header_transforms(c: &mut Criterion) {
    let section: tollgate::config::file::HeaderEditsSection = toml::from_str(
        r#"
set = { x-env = "prod", x-gateway = "tollgate" }
append = { x-tag = "edge" }
remove = ["x-debug", "x-internal"]
rename = { x-old = "x-new" }
"#,
    )
    .unwrap();
    let t = HeaderTransform::from_config("bench", &section, &(), &mut Vec::new()).unwrap();
    let mut base = pingora::http::RequestHeader::build("GET", b"/api/users/42", None).unwrap();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "bench"),
        ("accept", "*/*"),
        ("x-old", "1"),
        ("x-debug", "1"),
    ] {
        base.insert_header(k, v).unwrap();
    }
    c.bench_function("header_transform/request_5_edits", |b| {
        b.iter(|| {
            let mut req = base.clone();
            t.apply(&mut req).unwrap();
            black_box(req)
        })
    });
    c.bench_function("request_id/generate", |b| {
        b.iter(|| black_box(tollgate::internals::new_request_id()))
    });
}

fn access_log(c: &mut Criterion) {
    let format = tollgate::internals::Format::default();
    c.bench_function("access_log/format_line", |b| {
        b.iter(|| {
            let e = Entry {
                time: Time(std::time::SystemTime::now()),
                request_id: "b2af676db8456bd302b19e736646a004",
                trace_id: None,
                client_ip: Some("203.0.113.9".parse().unwrap()),
                host: Some("api.example.com"),
                route: "api",
                method: "GET",
                path: "/api/users/42",
                query: Some("fields=name".into()),
                received: None,
                forwarded: None,
                protocol: "HTTP/1.1",
                tls_version: None,
                user_agent: Some("curl/8.5.0"),
                consumer: None,
                status: 200,
                upstream: Some("api"),
                target: Some("10.0.0.5:8080"),
                upstream_status: Some(200),
                attempts: 1,
                retries: &[],
                duration_us: 1860,
                upstream_us: Some(1290),
                bytes_in: 0,
                bytes_out: 270,
                cache: Some("HIT"),
                reason: None,
                shadow_refusal: None,
                error: None,
                upgraded: false,
                grpc_status: None,
            };
            black_box(format.line(&e))
        })
    });
}

fn cache_key(c: &mut Criterion) {
    use pingora::cache::key::CacheHashKey;
    let req = pingora::http::RequestHeader::build("GET", b"/api/users/42?fields=name,email", None)
        .unwrap();
    // The key as Pingora uses it: built, then hashed for the storage lookup.
    c.bench_function("cache/key_build_and_hash", |b| {
        b.iter(|| {
            let key = tollgate::internals::cache_key(
                black_box("api"),
                black_box(&req),
                Some("api.example.com"),
                None,
            );
            black_box(key.combined_bin())
        })
    });
}

fn normalization(c: &mut Criterion) {
    use tollgate::internals::{canonical_host, canonical_path};
    c.bench_function("normalize/path_already_canonical", |b| {
        b.iter(|| {
            canonical_path(black_box(b"/api/v1/users/42/orders"), true).map(|p| p.encoded_slash)
        })
    });
    c.bench_function("normalize/path_dots_and_escapes", |b| {
        b.iter(|| {
            canonical_path(black_box(b"/api/v1/../v2/%75sers//42/./orders"), true)
                .map(|p| p.path.len())
        })
    });
    c.bench_function("normalize/host_already_canonical", |b| {
        b.iter(|| canonical_host(black_box("api.example.com:8443")).map(|h| h.len()))
    });
}

criterion_group!(
    benches,
    route_matching,
    header_transforms,
    access_log,
    cache_key,
    normalization
);
criterion_main!(benches);
