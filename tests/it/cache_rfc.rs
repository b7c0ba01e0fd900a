//! The response cache against an origin that sends exact caching headers, one rule of
//! RFC 9111 / RFC 9213 per test: received `Age`, `Expires` against the origin's `Date`, `Date`
//! kept, malformed freshness, targeted fields, a route without `ttl`, statuses with explicit
//! freshness, `Authorization` on shared routes, invalidation by unsafe methods, and
//! stale-while-revalidate.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

/// The origin: the path says which headers to send; the body counts the requests served.
fn origin() -> Backend {
    let n = Arc::new(AtomicUsize::new(0));
    Backend::start("origin", move |r| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        let now = SystemTime::now();
        let path = r
            .path
            .split('?')
            .next()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string();
        let reply = Reply::status(200).body(format!("{} #{i}", r.path));
        match path.as_str() {
            "age-too-old" => reply
                .header("cache-control", "max-age=3600")
                .header("age", "7200"),
            "age-30" => reply
                .header("cache-control", "max-age=3600")
                .header("age", "30"),
            // The origin's clock runs 1000 s ahead; Expires is before its own Date.
            "expires-before-date" => reply
                .header("date", &http_date(now + Duration::from_secs(1000)))
                .header("expires", &http_date(now + Duration::from_secs(500))),
            // The origin's clock runs a minute behind.
            "fixed-date" => reply
                .header("date", &http_date(now - Duration::from_secs(60)))
                .header("cache-control", "max-age=3600"),
            "quoted-max-age" => reply.header("cache-control", "max-age=\"60\""),
            "negative-max-age" => reply.header("cache-control", "max-age=-1"),
            "two-expires" => reply
                .header("expires", &http_date(now + Duration::from_secs(600)))
                .header("expires", &http_date(now + Duration::from_secs(900))),
            "cdn-wins" => reply
                .header("cache-control", "no-store")
                .header("cdn-cache-control", "max-age=60"),
            "cdn-private" => reply
                .header("cache-control", "max-age=60")
                .header("cdn-cache-control", "private"),
            "own-no-store" => reply
                .header("cache-control", "max-age=60")
                .header("cdn-cache-control", "max-age=60")
                .header("tollgate-cache-control", "no-store"),
            "plain" => reply,
            "max-age" => reply.header("cache-control", "max-age=60"),
            "found" => Reply::status(302)
                .header("location", "/elsewhere")
                .header("cache-control", "max-age=60")
                .body(format!("moved #{i}")),
            "found-heuristic" => Reply::status(302)
                .header("location", "/x")
                .body(format!("#{i}")),
            "unavailable" => Reply::status(503)
                .header("cache-control", "max-age=60")
                .body(format!("down #{i}")),
            "auth-max-age" => reply.header("cache-control", "max-age=60"),
            "auth-public" => reply.header("cache-control", "public, max-age=60"),
            "auth-s-maxage" => reply.header("cache-control", "s-maxage=60"),
            "item" if r.method == "POST" => Reply::status(201).header("location", "/c/other"),
            "item" | "other" => reply.header("cache-control", "max-age=600"),
            "revalidate" if r.header("if-none-match") == Some("\"v1\"") => Reply::status(304)
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=60")
                .header("test-header", "new")
                .header("content-foo", "b"),
            "revalidate" => reply
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=1")
                .header("test-header", "old")
                .header("content-foo", "a"),
            "swr" => reply
                .header("cache-control", "max-age=1, stale-while-revalidate=30")
                .delay(if i == 0 {
                    Duration::ZERO
                } else {
                    Duration::from_millis(300)
                }),
            _ => Reply::status(404),
        }
    })
}

fn start(o: &Backend) -> Gateway {
    Gateway::start(&format!(
        r#"
[upstreams.origin]
targets = [{{ address = "{}" }}]

[[routes]]
name = "c"
path_prefix = "/c"
upstream = "origin"
[routes.cache]
ttl = "600s"

[[routes]]
name = "origin-only"
path_prefix = "/o"
upstream = "origin"
[routes.cache]

[[routes]]
name = "shared"
path_prefix = "/s"
upstream = "origin"
[routes.cache]
ttl = "600s"
authenticated = "shared"
"#,
        o.addr
    ))
}

struct Got {
    status: u16,
    cache: String,
    age: Option<u64>,
    date: Option<String>,
    headers: reqwest::header::HeaderMap,
    body: String,
}

fn req(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> Got {
    let c = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut r = c.request(method.parse().unwrap(), gw.url(path));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().unwrap();
    let h = resp.headers().clone();
    let s = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_string());
    Got {
        status: resp.status().as_u16(),
        cache: s("x-cache").unwrap_or_default(),
        age: s("age").and_then(|a| a.parse().ok()),
        date: s("date"),
        headers: h.clone(),
        body: resp.text().unwrap(),
    }
}

fn get(gw: &Gateway, path: &str) -> Got {
    req(gw, "GET", path, &[])
}

/// Two GETs: whether the second came from the cache.
fn stored(gw: &Gateway, path: &str) -> bool {
    let first = get(gw, path);
    assert!(
        ["MISS", "BYPASS"].contains(&first.cache.as_str()),
        "{path}: {}",
        first.cache
    );
    get(gw, path).cache == "HIT"
}

#[test]
fn received_age_counts_against_freshness_and_is_carried_forward() {
    let o = origin();
    let gw = start(&o);
    assert!(
        !stored(&gw, "/c/age-too-old"),
        "max-age=3600 with Age: 7200 is stale"
    );
    get(&gw, "/c/age-30");
    let hit = get(&gw, "/c/age-30");
    assert_eq!(hit.cache, "HIT");
    assert!(
        hit.age.unwrap() >= 30,
        "Age {:?} forgets the origin's 30",
        hit.age
    );
}

#[test]
fn expires_is_judged_against_the_origin_date() {
    let o = origin();
    let gw = start(&o);
    assert!(!stored(&gw, "/c/expires-before-date"));
}

#[test]
fn date_from_the_origin_reaches_the_client_on_miss_and_hit() {
    let o = origin();
    let gw = start(&o);
    let miss = get(&gw, "/c/fixed-date");
    assert_eq!(miss.cache, "MISS");
    let origin_date = httpdate::parse_http_date(miss.date.as_deref().unwrap()).unwrap();
    let behind = SystemTime::now().duration_since(origin_date).unwrap();
    assert!(
        behind >= Duration::from_secs(55),
        "the client saw the gateway's clock"
    );
    let hit = get(&gw, "/c/fixed-date");
    assert_eq!(hit.cache, "HIT");
    assert_eq!(hit.date, miss.date, "a hit keeps the stored Date");
    // A response without Date still gets one.
    assert!(get(&gw, "/c/plain").date.is_some());
}

#[test]
fn malformed_freshness_is_not_fresh_for_the_route_ttl() {
    let o = origin();
    let gw = start(&o);
    for p in ["/c/quoted-max-age", "/c/negative-max-age", "/c/two-expires"] {
        assert!(!stored(&gw, p), "{p}");
    }
}

#[test]
fn targeted_cache_control_takes_precedence_and_is_stripped() {
    let o = origin();
    let gw = start(&o);
    assert!(
        stored(&gw, "/c/cdn-wins"),
        "CDN-Cache-Control max-age beats Cache-Control no-store"
    );
    let hit = get(&gw, "/c/cdn-wins");
    assert!(hit.headers.get("cdn-cache-control").is_none());
    assert_eq!(
        hit.headers["cache-control"], "no-store",
        "Cache-Control is for the client"
    );
    assert!(!stored(&gw, "/c/cdn-private"));
    assert!(
        !stored(&gw, "/c/own-no-store"),
        "Tollgate-Cache-Control beats both"
    );
    assert!(get(&gw, "/c/own-no-store")
        .headers
        .get("tollgate-cache-control")
        .is_none());
}

#[test]
fn a_route_without_ttl_stores_only_what_the_origin_allows() {
    let o = origin();
    let gw = start(&o);
    assert!(!stored(&gw, "/o/plain"));
    assert!(stored(&gw, "/o/max-age"));
    // With a ttl, the plain response is stored.
    assert!(stored(&gw, "/c/plain"));
}

#[test]
fn statuses_with_explicit_freshness_are_stored() {
    let o = origin();
    let gw = start(&o);
    let first = get(&gw, "/c/found");
    assert_eq!((first.status, first.cache.as_str()), (302, "MISS"));
    let second = get(&gw, "/c/found");
    assert_eq!((second.status, second.cache.as_str()), (302, "HIT"));
    assert_eq!(second.body, first.body);
    assert!(stored(&gw, "/c/unavailable"), "an explicitly fresh 503");
    // A 302 without explicit freshness is not heuristically cacheable.
    assert!(!stored(&gw, "/c/found-heuristic"));
}

#[test]
fn authorization_on_a_shared_route_needs_public_or_s_maxage() {
    let o = origin();
    let gw = start(&o);
    let auth = [("authorization", "Bearer anyone")];
    let twice = |p: &str| {
        req(&gw, "GET", p, &auth);
        req(&gw, "GET", p, &auth).cache
    };
    assert_ne!(
        twice("/s/auth-max-age"),
        "HIT",
        "max-age alone is not enough"
    );
    assert_eq!(twice("/s/auth-public"), "HIT");
    assert_eq!(twice("/s/auth-s-maxage"), "HIT");
}

#[test]
fn unsafe_methods_invalidate_the_target_and_its_location() {
    let o = origin();
    let gw = start(&o);
    assert!(stored(&gw, "/c/item"));
    assert!(stored(&gw, "/c/other"));
    let post = req(&gw, "POST", "/c/item", &[("content-length", "0")]);
    assert_eq!(post.status, 201);
    assert_eq!(
        get(&gw, "/c/item").cache,
        "MISS",
        "the POST's target is invalidated"
    );
    assert_eq!(
        get(&gw, "/c/other").cache,
        "MISS",
        "so is the Location it named"
    );
    assert_eq!(get(&gw, "/c/item").cache, "HIT");
}

#[test]
fn stale_while_revalidate_serves_stale_at_once_and_refreshes_once() {
    let o = origin();
    let gw = start(&o);
    let first = get(&gw, "/c/swr");
    assert_eq!(first.cache, "MISS");
    // Past max-age=1, inside stale-while-revalidate=30.
    std::thread::sleep(Duration::from_millis(1100));
    // STALE with the old body: answered from the entry, not after the (slow) refresh.
    let stale = get(&gw, "/c/swr");
    assert_eq!(stale.cache, "STALE");
    assert_eq!(stale.body, first.body);
    // The background refresh lands; then a fresh HIT with the new body, one more call.
    let fresh = wait_for(Duration::from_secs(5), || {
        let g = get(&gw, "/c/swr");
        (g.cache == "HIT" && g.body != first.body).then_some(g)
    })
    .expect("the refreshed entry is served");
    assert!(fresh.body.ends_with("#1"), "{}", fresh.body);
    let calls = o.requests().iter().filter(|r| r.path == "/c/swr").count();
    assert_eq!(calls, 2);
}

#[test]
fn a_304_updates_every_stored_header_it_carries() {
    let o = origin();
    let gw = start(&o);
    let first = get(&gw, "/c/revalidate");
    assert_eq!(first.headers["test-header"], "old");
    std::thread::sleep(Duration::from_millis(1100));
    let revalidated = get(&gw, "/c/revalidate");
    assert_eq!(revalidated.body, first.body, "the stored body is served");
    assert_eq!(revalidated.headers["test-header"], "new");
    assert_eq!(revalidated.headers["content-foo"], "b");
    let hit = get(&gw, "/c/revalidate");
    assert_eq!(hit.cache, "HIT");
    assert_eq!(hit.headers["test-header"], "new", "the update was stored");
    assert_eq!(hit.headers["content-foo"], "b");
    let calls: Vec<_> = o
        .requests()
        .iter()
        .filter(|r| r.path == "/c/revalidate")
        .map(|r| r.header("if-none-match").map(str::to_string))
        .collect();
    assert_eq!(calls, [None, Some("\"v1\"".to_string())]);
}
